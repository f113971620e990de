// Model -> IR for edge gateways: one HTTP listener per Gateway listener, virtual hosts per
// hostname, and only the clusters that this gateway's routes reference.
import type { GroupKey, IRCluster, IRHttpListener, IRProxyConfig, IRRoute, IRSecret, IRVirtualHost } from '../ir/types.js';
import { formatGroup, gatewayListenerName, parseGroup, routeClusters } from '../ir/types.js';
import { translateSidecar } from './sidecar.js';
import type { GatewayListenerModel, GatewayModel, Model, RouteModel, SourceRef } from '../model/model.js';
import { hostnameMatches } from '../model/hostnames.js';
import { compareRoutes, routesOf } from './routes.js';
import { applyPolicies } from './policies.js';
import { applyJwtPolicies, type AuthzEndpoint, type JwtKeysOf } from './jwt.js';
import { applyGlobalRateLimits, type RateLimitEndpoint } from './ratelimit.js';
import { gatewayIdentity, meshTlsOn, serviceCluster } from './mesh-identity.js';
import { withMeshTracing } from './tracing.js';
import { deepFreeze } from '../ir/freeze.js';

/** Hostnames a route serves on a listener: its own that the listener covers, or the listener's. */
function effectiveHostnames(routeHosts: string[] | undefined, listenerHosts: string[]): string[] {
  if (!routeHosts) return listenerHosts;
  const out = new Set<string>();
  for (const h of routeHosts) {
    for (const l of listenerHosts) {
      if (hostnameMatches(l, h)) out.add(h);
      else if (hostnameMatches(h, l)) out.add(l);
    }
  }
  return [...out].sort();
}

/**
 * A redirect that names neither scheme nor port keeps the listener's port (as the Gateway API
 * asks); the HCM strips the port from Host before routing, so it is set explicitly.
 */
function withListenerPort(r: IRRoute, port: number): IRRoute {
  if (r.action.kind !== 'redirect' || r.action.port || r.action.scheme || port === 80 || port === 443) return r;
  // Once per route (frozen, see routesOf) and port, so that a reload reuses it as it reuses the route.
  let byPort = withPort.get(r);
  if (!byPort) {
    byPort = new Map();
    withPort.set(r, byPort);
  }
  let out = byPort.get(port);
  if (!out) {
    out = deepFreeze({ ...r, action: { ...r.action, port } });
    byPort.set(port, out);
  }
  return out;
}
const withPort = new WeakMap<IRRoute, Map<number, IRRoute>>();

/** `routes` with withListenerPort applied: the same (frozen) array when no route changes, as it is for most. */
function routesOnPort(routes: readonly IRRoute[], port: number): readonly IRRoute[] {
  let out: IRRoute[] | undefined;
  for (let i = 0; i < routes.length; i++) {
    const r = withListenerPort(routes[i]!, port);
    if (r !== routes[i] && !out) out = routes.slice(0, i);
    out?.push(r);
  }
  return out ?? routes;
}

/**
 * Each gateway listener's virtual hosts as last sorted: per hostname, the routes in the order they
 * were gathered and the same routes sorted (frozen). A reload whose routes for a hostname are the
 * very same objects in the same order (routesOf reuses an unchanged HTTPRoute's) reuses the sorted
 * array, and with it what the translator keyed by that array (the virtual host's JSON text and its
 * hash, see xds/translator/route.ts). The sort depends only on that sequence, so the result is the
 * same whichever edits led to it. Only the hostnames of a listener's last translation are kept.
 */
const lastSorted = new Map<string, Map<string, { gathered: IRRoute[]; sorted: readonly IRRoute[] }>>();
/** Bound on lastSorted (gateway listeners, including ones since removed): past it, it starts over. */
const MAX_SORTED_LISTENERS = 4096;

function sortedRoutes(
  last: Map<string, { gathered: IRRoute[]; sorted: readonly IRRoute[] }> | undefined,
  host: string,
  gathered: IRRoute[],
): { gathered: IRRoute[]; sorted: readonly IRRoute[] } {
  const hit = last?.get(host);
  if (hit && hit.gathered.length === gathered.length && hit.gathered.every((r, i) => r === gathered[i])) return hit;
  return { gathered, sorted: Object.freeze([...gathered].sort(compareRoutes)) };
}

/** What one HTTPRoute gives one gateway listener: the hostnames it serves there, its IR routes on that port, their clusters. */
interface RouteOnListener {
  /** routesOf's (frozen) result these were derived from (a different one: the route changed); undefined when not asked. */
  readonly from: readonly IRRoute[] | undefined;
  /** Undefined: the route is not attached to the listener, or shares no hostname with it. */
  readonly on: { readonly hosts: readonly string[]; readonly routes: readonly IRRoute[]; readonly clusters: readonly string[] } | undefined;
}

/**
 * routeOnListener's last answer per HTTPRoute spec (frozen, handed out again only while its file's
 * text is unchanged, see routesOf) and listener signature (gateway name, listener name, port and
 * hostnames, as JSON text): everything the answer reads besides routesOf's result, which is
 * compared by identity. A one-route edit thus works out attachment, hostnames, port and clusters
 * for one route instead of for every route on every listener.
 */
const onListener = new WeakMap<object, Map<string, RouteOnListener>>();
/** Bound on the signatures kept per spec (listeners it was seen on, including ones since changed). */
const MAX_LISTENER_SIGS = 16;

function routesOnListener(from: readonly IRRoute[], hosts: readonly string[], port: number): NonNullable<RouteOnListener['on']> {
  const routes = routesOnPort(from, port);
  return Object.freeze({ hosts, routes, clusters: routeClusters(routes) });
}

function routeOnListener(route: RouteModel, model: Model, gatewayName: string, l: GatewayListenerModel, sig: string): RouteOnListener['on'] {
  let bySig = onListener.get(route.spec);
  const hit = bySig?.get(sig);
  // Not attached, or no hostname in common: read from the spec and the signature alone.
  if (hit && !hit.on) return undefined;
  let from: readonly IRRoute[] | undefined;
  let on: RouteOnListener['on'];
  if (hit) {
    from = routesOf(route, model.mesh);
    if (hit.from === from) return hit.on;
    on = routesOnListener(from, hit.on!.hosts, l.port);
  } else {
    const attached = route.spec.parentRefs.some((p) => p.kind === 'Gateway' && p.name === gatewayName && (!p.sectionName || p.sectionName === l.name));
    const hosts = attached ? effectiveHostnames(route.spec.hostnames, l.hostnames) : [];
    if (hosts.length > 0) {
      from = routesOf(route, model.mesh);
      on = routesOnListener(from, Object.freeze([...hosts]), l.port);
    }
  }
  if (!Object.isFrozen(route.spec)) return on;
  if (!bySig) {
    bySig = new Map();
    onListener.set(route.spec, bySig);
  } else if (!hit && bySig.size >= MAX_LISTENER_SIGS) bySig.clear();
  bySig.set(sig, { from, on });
  return on;
}

export function translateGateway(model: Model, gateway: GatewayModel): IRProxyConfig {
  const listeners: IRHttpListener[] = [];
  const clusters = new Map<string, IRCluster>();
  const secrets: IRSecret[] = [];

  for (const l of gateway.listeners) {
    const byHost = new Map<string, IRRoute[]>();
    const sig = JSON.stringify([gateway.name, l.name, l.port, l.hostnames]);
    for (const route of model.routes) {
      const on = routeOnListener(route, model, gateway.name, l, sig);
      if (!on) continue;
      for (const h of on.hosts) {
        const list = byHost.get(h);
        if (list) list.push(...on.routes);
        else byHost.set(h, [...on.routes]);
      }
      for (const c of on.clusters) if (!clusters.has(c)) clusters.set(c, serviceCluster(model, c));
    }
    const name = gatewayListenerName(gateway.name, l.name);
    const last = lastSorted.get(name);
    const sorted = new Map<string, { gathered: IRRoute[]; sorted: readonly IRRoute[] }>();
    const virtualHosts: IRVirtualHost[] = [...byHost.keys()].sort().map((h) => {
      const s = sortedRoutes(last, h, byHost.get(h)!);
      sorted.set(h, s);
      return { name: h === '*' ? 'any-host' : h, domains: [h], routes: s.sorted as IRRoute[] };
    });
    if (!last && lastSorted.size >= MAX_SORTED_LISTENERS) lastSorted.clear();
    lastSorted.set(name, sorted);
    let tls: IRHttpListener['tls'];
    if (l.tls) {
      const secretName = `${name}/cert`;
      secrets.push({ name: secretName, certificatePem: l.tls.certificatePem, privateKeyPem: l.tls.privateKeyPem, source: gateway.source });
      tls = { secretName };
    }
    const needsFault = virtualHosts.some((v) => v.routes.some((r) => r.fault));
    listeners.push({
      name,
      gatewayListener: l.name,
      address: '0.0.0.0',
      port: l.port,
      tls,
      direction: 'gateway',
      routeConfig: { name, virtualHosts },
      httpFilters: needsFault ? ['fault'] : [],
      source: gateway.source,
    });
  }
  const key: GroupKey = { kind: 'gateway', gateway: gateway.name };
  return {
    group: formatGroup(key),
    key,
    identity: meshTlsOn(model) ? gatewayIdentity(model, gateway.name) : undefined,
    listeners,
    clusters: [...clusters.values()].sort((a, b) => (a.name < b.name ? -1 : 1)),
    secrets,
  };
}

/** Access logging on every HTTP listener: errors always, successful requests sampled at this percent. */
export interface AccessLogSettings {
  successSamplePercent: number;
}

export interface TranslateOptions {
  authz?: AuthzEndpoint;
  /** Where proxies reach the rate-limit service (global limits); default DEFAULT_RATELIMIT_ENDPOINT. */
  rateLimit?: RateLimitEndpoint;
  jwtKeys?: JwtKeysOf;
  jwtFastPath?: boolean;
  jwtFastPathModule?: boolean;
  /** Every HTTP listener reports its requests to the control plane's access log service; absent: off. */
  accessLog?: AccessLogSettings;
}

/**
 * The IR of every gateway, plus the groups that proxies have asked for: sidecar groups, and the
 * `+jwt-module` variants of gateway and sidecar groups (proxies that load Signalbox's compiled
 * JWT filter; `jwtFastPathModule` gives every group the compiled filter). Complete: access
 * logging and Mesh tracing are part of it, and nothing edits the IR afterwards.
 */
export function translate(model: Model, requestedGroups: Iterable<string> = [], opts: TranslateOptions = {}): Map<string, IRProxyConfig> {
  const out = new Map<string, IRProxyConfig>();
  for (const [group, key] of groupKeys(model, requestedGroups)) {
    const ir = translateGroup(model, key, opts);
    if (ir) out.set(group, ir);
  }
  return out;
}

/** The groups a model gives, sorted by name: every gateway's, and the sidecar shapes and `+jwt-module` variants asked for. */
export function groupKeys(model: Model, requestedGroups: Iterable<string> = []): Map<string, GroupKey> {
  const groups = new Map<string, GroupKey>();
  for (const g of requestedGroups) {
    const key = parseGroup(g);
    if (key && (key.kind === 'sidecar' || key.jwtModule)) groups.set(formatGroup(key), key);
  }
  for (const g of model.gateways.values()) groups.set(formatGroup({ kind: 'gateway', gateway: g.name }), { kind: 'gateway', gateway: g.name });
  return new Map([...groups].sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0)));
}

/**
 * One group's IR (undefined: the model has no such gateway). Each group is translated on its own
 * (a variant shares no objects with its base group), so one group's failure says nothing of another's.
 */
export function translateGroup(model: Model, key: GroupKey, opts: TranslateOptions = {}): IRProxyConfig | undefined {
  const jwt = { endpoint: opts.authz, keys: opts.jwtKeys, fastPath: opts.jwtFastPath, fastPathModule: opts.jwtFastPathModule };
  const accessLog = opts.accessLog ? { successSamplePercent: opts.accessLog.successSamplePercent } : undefined;
  const gateway = key.kind === 'gateway' ? model.gateways.get(key.gateway) : undefined;
  const ir = key.kind === 'sidecar' ? translateSidecar(model, key) : gateway ? translateGateway(model, gateway) : undefined;
  if (!ir) return undefined;
  const checked = applyJwtPolicies(
    model,
    applyGlobalRateLimits(model, applyPolicies(model, ir), opts.rateLimit),
    key.jwtModule ? { ...jwt, fastPathModule: true } : jwt,
  );
  const traced = withMeshTracing(model, checked);
  const logged = accessLog ? { ...traced, listeners: traced.listeners.map((l) => ({ ...l, accessLog })) } : traced;
  return key.jwtModule ? { ...logged, group: formatGroup(key), key } : logged;
}

/**
 * The policy documents a group is built from: its Gateway and the HTTPRoutes attached to it, or
 * its Service and the HTTPRoutes attached to Services (a sidecar routes to every Service). What a
 * failure to translate the group is attributed to.
 */
export function groupSources(model: Model, key: GroupKey): SourceRef[] {
  const out: SourceRef[] = [];
  if (key.kind === 'gateway') {
    const g = model.gateways.get(key.gateway);
    if (g) out.push(g.source);
    for (const r of model.routes) if (r.spec.parentRefs.some((p) => p.kind === 'Gateway' && p.name === key.gateway)) out.push(r.source);
  } else {
    const s = model.services.get(key.service);
    if (s) out.push(s.source);
    for (const r of model.routes) if (r.spec.parentRefs.some((p) => p.kind === 'Service')) out.push(r.source);
  }
  const seen = new Set<string>();
  return out
    .filter((s) => !seen.has(`${s.file}#${s.doc}`) && !!seen.add(`${s.file}#${s.doc}`))
    .sort((a, b) => (a.file < b.file ? -1 : a.file > b.file ? 1 : a.doc - b.doc));
}
