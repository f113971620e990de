// HTTP filters: one module each, and ONE table that fixes their order in every filter chain.
// The router is always last. A module has every hook a filter can need: its HCM entry, its
// per-route configuration and the route fields it owns, and what it adds to a virtual host;
// route.ts calls them through this table and knows no filter by name. (No filter brings Envoy
// resources of its own: the clusters they call, authz and rate limit, are in the IR already.)
import type { IRHttpListener, IRRoute } from '../../../ir/types.js';
import type { envoy, PackedAny } from '../../resources/envoy-types.gen.js';
import { duration, fractionalPercent, typed } from '../util.js';
import { rbacAllow, rbacDeny } from './rbac.js';
import { listenerRateLimit, routeRateLimit } from './local-ratelimit.js';
import { extAuthz } from './ext-authz.js';
import { jwtCheck } from './jwt-fast.js';
import { globalRateLimitAllow, globalRateLimitDeny } from './global-ratelimit.js';

type HttpFilter = envoy.extensions.filters.network.http_connection_manager.v3.HttpFilter;
type Route = envoy.config.route.v3.Route;
type VirtualHost = envoy.config.route.v3.VirtualHost;

export interface HttpFilterModule {
  /** Envoy's filter name, also the key of per-route configuration. */
  envoyName: string;
  /** The filter as it sits in the HTTP connection manager. */
  hcmEntry(listener: IRHttpListener): HttpFilter | undefined;
  /** When given, the filter joins any listener for which this is true (no need to list it in httpFilters). */
  wanted?(listener: IRHttpListener): boolean;
  /** The route's typed_per_filter_config entry for this filter (under envoyName), if any. */
  perRouteConfig?(listener: IRHttpListener, route: IRRoute): PackedAny | undefined;
  /** Route fields the filter owns (rate_limits of the route action, metadata), written into `out`. */
  routeFields?(listener: IRHttpListener, route: IRRoute, out: Route): void;
  /**
   * What the two route hooks read of the listener, as a short string. Routes are built once and
   * reused while this stays the same (route.ts), so a hook that reads the listener must say so here.
   */
  routeFacet?(listener: IRHttpListener): string;
  /** Fields the filter adds to every virtual host of the listener (rate_limits, ...). */
  virtualHost?(listener: IRHttpListener): VirtualHost;
}

const FAULT_FILTER = 'envoy.filters.http.fault';

const fault: HttpFilterModule = {
  envoyName: FAULT_FILTER,
  // No fault by default: each route that asks for one carries it in typed_per_filter_config.
  hcmEntry: () => ({ name: FAULT_FILTER, typed_config: typed('envoy.extensions.filters.http.fault.v3.HTTPFault', {}) }),
  perRouteConfig: (_l, r) => {
    if (!r.fault) return undefined;
    const config: envoy.extensions.filters.http.fault.v3.HTTPFault = {};
    if (r.fault.delay) config.delay = { fixed_delay: duration(r.fault.delay.fixedMs), percentage: fractionalPercent(r.fault.delay.percent) };
    if (r.fault.abort) config.abort = { http_status: r.fault.abort.httpStatus, percentage: fractionalPercent(r.fault.abort.percent) };
    return typed('envoy.extensions.filters.http.fault.v3.HTTPFault', config);
  },
};

const router: HttpFilterModule = {
  envoyName: 'envoy.filters.http.router',
  hcmEntry: () => ({ name: 'envoy.filters.http.router', typed_config: typed('envoy.extensions.filters.http.router.v3.Router', {}) }),
};

/** The order of HTTP filters. Add new filters here, in the position they must run. */
export const FILTER_ORDER: readonly [string, HttpFilterModule][] = [
  ['rbac-deny', rbacDeny],
  ['rbac-allow', rbacAllow],
  ['local-ratelimit-listener', listenerRateLimit],
  ['local-ratelimit-route', routeRateLimit],
  // After the rate limits, so that a flood is shed before any JWT work. Fast-path routes are
  // checked by the script (asking the service about new tokens); the others by ext_authz.
  ['jwt-check', jwtCheck],
  ['ext-authz', extAuthz],
  // Global limits after the JWT checks: a limit keyed by a claim reads the header they forward it
  // into, and requests the checks refuse are never counted. The local buckets above still shed a
  // flood before any of it costs a call.
  ['global-ratelimit-allow', globalRateLimitAllow],
  ['global-ratelimit-deny', globalRateLimitDeny],
  ['fault', fault],
  ['router', router],
];

export function httpFilters(listener: IRHttpListener): HttpFilter[] {
  const wanted = new Set([...listener.httpFilters, ...FILTER_ORDER.filter(([, m]) => m.wanted?.(listener)).map(([n]) => n), 'router']);
  for (const name of wanted) {
    if (!FILTER_ORDER.some(([n]) => n === name)) throw new Error(`unknown HTTP filter "${name}" in listener ${listener.name}`);
  }
  return FILTER_ORDER.filter(([n]) => wanted.has(n))
    .map(([, m]) => m.hcmEntry(listener))
    .filter((e): e is HttpFilter => e !== undefined);
}

const moduleNamed = (name: string): HttpFilterModule => FILTER_ORDER.find(([n]) => n === name)![1];

/**
 * The order the route hooks run in: typed_per_filter_config keys and rate_limits entries are
 * written in this order. It is the order route.ts wrote them in before the hooks existed, kept so
 * that no emitted byte (and so no resource version) changed; the local limit's rate_limits
 * entries come before the global ones. Filters not named here follow in chain order.
 */
const ROUTE_HOOK_FIRST = ['fault', 'local-ratelimit-route', 'ext-authz', 'jwt-check'];
const ROUTE_HOOKS: readonly HttpFilterModule[] = [
  ...ROUTE_HOOK_FIRST.map(moduleNamed),
  ...FILTER_ORDER.filter(([n]) => !ROUTE_HOOK_FIRST.includes(n)).map(([, m]) => m),
].filter((m) => m.perRouteConfig || m.routeFields);

/** Every filter's route-level additions to one route: per-route config, then the fields it owns. */
export function applyRouteHooks(l: IRHttpListener, r: IRRoute, out: Route): void {
  for (const m of ROUTE_HOOKS) {
    const config = m.perRouteConfig?.(l, r);
    if (config) out.typed_per_filter_config = { ...(out.typed_per_filter_config ?? {}), [m.envoyName]: config };
    m.routeFields?.(l, r, out);
  }
}

/** What the route hooks read of the listener (the key of reused routes, see route.ts). */
export function routeFacets(l: IRHttpListener): string {
  return FILTER_ORDER.map(([, m]) => m.routeFacet?.(l) ?? '').join('/');
}

/** Every filter's additions to the listener's virtual hosts. */
export function virtualHostFields(l: IRHttpListener): VirtualHost {
  return Object.assign({}, ...FILTER_ORDER.map(([, m]) => m.virtualHost?.(l) ?? {}));
}
