import type { IRHeaderMods, IRRoute, IRRouteMatch, IRStringMatch, IRHttpListener } from '../../ir/types.js';
import { applyRouteHooks, routeFacets, virtualHostFields } from './filters/index.js';
import { deepFreeze } from '../../ir/freeze.js';
import { duration } from './util.js';
import type { envoy } from '../resources/envoy-types.gen.js';
import { partKey } from '../resources/resource.js';

type Route = envoy.config.route.v3.Route;
type RouteAction = envoy.config.route.v3.RouteAction;
type HeaderValueOption = envoy.config.core.v3.HeaderValueOption;

/** A header or query parameter matcher (the two messages share these fields). */
function stringMatch(m: IRStringMatch): envoy.config.route.v3.HeaderMatcher & envoy.config.route.v3.QueryParameterMatcher {
  if (m.type === 'Present') return { name: m.name, present_match: true };
  if (m.type === 'RegularExpression') return { name: m.name, string_match: { safe_regex: { regex: m.value } } };
  return { name: m.name, string_match: { exact: m.value } };
}

function routeMatch(m: IRRouteMatch): envoy.config.route.v3.RouteMatch {
  const out: envoy.config.route.v3.RouteMatch = {};
  const { type, value } = m.path;
  if (type === 'Exact') out.path = value;
  else if (type === 'RegularExpression') out.safe_regex = { regex: value };
  // PathPrefix matches whole path segments: "/orders" takes "/orders" and "/orders/1", not "/ordersx".
  else if (value === '/' || value.endsWith('/')) out.prefix = value;
  else out.path_separated_prefix = value;
  const headers = m.headers.map(stringMatch);
  if (m.method) headers.unshift({ name: ':method', string_match: { exact: m.method } });
  if (headers.length) out.headers = headers;
  if (m.queryParams.length) out.query_parameters = m.queryParams.map(stringMatch);
  return out;
}

function headerOptions(mods: IRHeaderMods | undefined, prefix: 'request' | 'response'): Route {
  if (!mods) return {};
  const add = [
    ...mods.set.map((h): HeaderValueOption => ({ header: { key: h.name, value: h.value }, append_action: 'OVERWRITE_IF_EXISTS_OR_ADD' })),
    ...mods.add.map((h): HeaderValueOption => ({ header: { key: h.name, value: h.value }, append_action: 'APPEND_IF_EXISTS_OR_ADD' })),
  ];
  const out: Route = {};
  if (add.length) out[`${prefix}_headers_to_add`] = add;
  if (mods.remove.length) out[`${prefix}_headers_to_remove`] = mods.remove;
  return out;
}

/**
 * replacePrefixMatch. Envoy's prefix_rewrite "/" on the prefix "/orders" turns "/orders/1" into
 * "//1"; the Gateway API wants "/1", so that case strips the prefix and its slashes by regex.
 */
function prefixRewrite(m: IRRouteMatch, prefix: string): Pick<RouteAction, 'prefix_rewrite' | 'regex_rewrite'> {
  if (prefix !== '/' || m.path.type !== 'PathPrefix' || m.path.value === '/') return { prefix_rewrite: prefix };
  const escaped = m.path.value.replace(/\/+$/, '').replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
  return { regex_rewrite: { pattern: { regex: `^${escaped}/*` }, substitution: '/' } };
}

const REDIRECT_CODE = { 301: 'MOVED_PERMANENTLY', 302: 'FOUND', 303: 'SEE_OTHER', 307: 'TEMPORARY_REDIRECT', 308: 'PERMANENT_REDIRECT' } as const;

function routeResource(l: IRHttpListener, r: IRRoute): Route {
  const out: Route = { name: r.name, match: routeMatch(r.match) };
  const a = r.action;
  if (a.kind === 'redirect') {
    const redirect: envoy.config.route.v3.RedirectAction = { response_code: REDIRECT_CODE[a.statusCode] };
    if (a.scheme === 'https') redirect.https_redirect = true;
    else if (a.scheme) redirect.scheme_redirect = a.scheme;
    if (a.hostname) redirect.host_redirect = a.hostname;
    if (a.port) redirect.port_redirect = a.port;
    if (a.path?.fullPath) redirect.path_redirect = a.path.fullPath;
    if (a.path?.prefix) Object.assign(redirect, prefixRewrite(r.match, a.path.prefix));
    out.redirect = redirect;
  } else {
    const route: RouteAction = {};
    if (a.backends.length === 1) route.cluster = a.backends[0]!.cluster;
    else route.weighted_clusters = { clusters: a.backends.map((b) => ({ name: b.cluster, weight: { value: b.weight } })) };
    route.timeout = duration(a.timeoutMs);
    if (a.rewrite?.prefix) Object.assign(route, prefixRewrite(r.match, a.rewrite.prefix));
    if (a.rewrite?.fullPath) route.regex_rewrite = { pattern: { regex: '^.*$' }, substitution: a.rewrite.fullPath };
    if (a.rewrite?.hostname) route.host_rewrite_literal = a.rewrite.hostname;
    if (a.retry) {
      const retry: envoy.config.route.v3.RetryPolicy = { retry_on: a.retry.retryOn.join(','), num_retries: { value: a.retry.attempts } };
      if (a.retry.perTryTimeoutMs) retry.per_try_timeout = duration(a.retry.perTryTimeoutMs);
      if (a.retry.retriableStatusCodes) retry.retriable_status_codes = a.retry.retriableStatusCodes;
      if (a.retry.backoff) {
        retry.retry_back_off = {
          base_interval: duration(a.retry.backoff.baseIntervalMs),
          ...(a.retry.backoff.maxIntervalMs ? { max_interval: duration(a.retry.backoff.maxIntervalMs) } : {}),
        };
      }
      route.retry_policy = retry;
    }
    // The consistent-hash key of RingHash backends (a TrafficPolicy's hashOn).
    if (a.hashOn?.length)
      route.hash_policy = a.hashOn.map((h) =>
        'header' in h ? { header: { header_name: h.header.toLowerCase() } } : { connection_properties: { source_ip: true } },
      );
    out.route = route;
  }
  Object.assign(out, headerOptions(r.requestHeaders, 'request'), headerOptions(r.responseHeaders, 'response'));
  applyRouteHooks(l, r, out);
  return out;
}

/**
 * A listener's RouteConfiguration, for callers that take it apart (preflight): its virtual hosts
 * are copies (routeConfig's are kept and frozen); their routes' JSON is frozen.
 */
export function routeConfigResource(l: IRHttpListener): envoy.config.route.v3.RouteConfiguration {
  const json = routeConfig(l).json;
  return { ...json, virtual_hosts: (json.virtual_hosts ?? []).map((vh) => ({ ...vh })) };
}

/**
 * A listener's RouteConfiguration, with the JSON text of each of its virtual hosts (what
 * JSON.stringify gives, made from the routes' texts: a virtual host's routes are not written out
 * again when they did not change).
 */
export function routeConfig(l: IRHttpListener): {
  json: envoy.config.route.v3.RouteConfiguration;
  vhostTexts: string[];
  /** Each virtual host's encoding key (partKey of its text), for EncodeCache.makeSplit. */
  vhostKeys: string[];
} {
  // What routeResource reads of its listener besides the route: what the filters' route hooks read.
  const facets = routeFacets(l);
  const fields = virtualHostFields(l);
  const vhostTexts: string[] = [];
  const vhostKeys: string[] = [];
  const virtualHosts = l.routeConfig.virtualHosts.map((v) => {
    const head = JSON.stringify({ name: v.name, domains: v.domains, routes: [], ...fields });
    const frozen = Object.isFrozen(v.routes);
    const hit = frozen ? builtHosts.get(v.routes) : undefined;
    const built = hit?.facets === facets && hit.head === head ? hit : buildHost(l, facets, head, v.name, v.domains, v.routes, fields);
    if (frozen && built !== hit) builtHosts.set(v.routes, built);
    vhostTexts.push(built.text);
    vhostKeys.push(built.key);
    return built.json;
  });
  return { json: { name: l.routeConfig.name, virtual_hosts: virtualHosts, validate_clusters: { value: false } }, vhostTexts, vhostKeys };
}

interface BuiltHost {
  facets: string;
  /** The virtual host's JSON text without its routes: everything else it was built from. */
  head: string;
  json: envoy.config.route.v3.VirtualHost;
  text: string;
  key: string;
}

/**
 * Each virtual host's JSON, text and encoding key, by its (frozen) array of routes: the translate
 * step hands the same array again while the routes gathered for the hostname are the very same
 * objects in the same order (translate/gateway.ts), so a one-route edit writes out and hashes the
 * one virtual host it touches, not all of them (20 virtual hosts, ~1.2 MB at 10,000 routes).
 */
const builtHosts = new WeakMap<readonly IRRoute[], BuiltHost>();

function buildHost(
  l: IRHttpListener,
  facets: string,
  head: string,
  name: string,
  domains: string[],
  irRoutes: readonly IRRoute[],
  fields: envoy.config.route.v3.VirtualHost,
): BuiltHost {
  const routes = irRoutes.map((r) => builtRoute(l, facets, r));
  const json = { name, domains, routes: routes.map((r) => r.json), ...fields };
  // The routes' texts in the place JSON.stringify writes them (inside a string a quote is always escaped, so this is the key).
  const at = head.indexOf('"routes":[]');
  const text = `${head.slice(0, at)}"routes":[${routes.map((r) => r.text).join(',')}]${head.slice(at + '"routes":[]'.length)}`;
  // Kept and handed out again: frozen (its routes' JSON is, by builtRoute; its other fields are the listener's).
  if (Object.isFrozen(irRoutes)) Object.freeze(Object.freeze(json).routes);
  return { facets, head, json, text, key: partKey(VIRTUAL_HOST, text) };
}

const VIRTUAL_HOST = 'envoy.config.route.v3.VirtualHost';

/**
 * Each route's Envoy JSON (frozen) and text, for the listener facets it was made with. Only frozen
 * routes are kept (those of routesOf, reused by a reload while their HTTPRoute is unchanged): a
 * frozen route cannot change, so the same object always gives the same JSON.
 */
const builtRoutes = new WeakMap<IRRoute, { facets: string; json: Route; text: string }>();

function builtRoute(l: IRHttpListener, facets: string, r: IRRoute): { json: Route; text: string } {
  const frozen = Object.isFrozen(r);
  const hit = frozen ? builtRoutes.get(r) : undefined;
  if (hit?.facets === facets) return hit;
  const json = routeResource(l, r);
  const built = { facets, json, text: JSON.stringify(json) };
  if (frozen) builtRoutes.set(r, { ...built, json: deepFreeze(json) });
  return built;
}
