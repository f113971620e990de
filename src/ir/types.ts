// The intermediate representation: plain, serialisable data describing what each proxy should do.
// It holds no Envoy types; the xDS translator turns it into Envoy resources.
import type { SourceRef } from '../api/documents.js';
import type { IRCircuitBreaker, IRHashOn, IRHealthCheck, IRLoadBalancer, IRGlobalRateLimit, IRLocalRateLimit, IROutlierDetection } from './traffic.js';
import type { IRExtAuthz, IRRouteJwt } from './jwt.js';
import { formatGroup, JWT_MODULE_GROUP_SUFFIX, parseGroup, type GroupKey, type RouteKey, type SidecarShape } from './names.js';

export { formatGroup, formatRouteName, gatewayListenerName, JWT_MODULE_GROUP_SUFFIX, parseGroup, parseRouteName, ruleLabel, ruleName } from './names.js';
export type { GroupKey, RouteKey, RuleRef, SidecarShape } from './names.js';

export type Health = 'HEALTHY' | 'UNHEALTHY' | 'DRAINING' | 'DEGRADED' | 'UNKNOWN';

/** One reachable instance of a service, from static endpoints or a discovery source. */
export interface Instance {
  id: string;
  address: string;
  port: number;
  labels: Record<string, string>;
  health: Health;
  /** Where the instance's sidecar accepts mTLS, when it has one. */
  sidecar?: { address: string; port: number };
  locality?: { region?: string; zone?: string; subZone?: string };
}

export interface IRStringMatch {
  type: 'Exact' | 'RegularExpression' | 'Present';
  name: string;
  value?: string;
}

export interface IRRouteMatch {
  path: { type: 'Exact' | 'PathPrefix' | 'RegularExpression'; value: string };
  method?: string;
  headers: IRStringMatch[];
  queryParams: IRStringMatch[];
}

export interface IRRetry {
  attempts: number;
  perTryTimeoutMs?: number;
  retryOn: string[];
  retriableStatusCodes?: number[];
  backoff?: { baseIntervalMs: number; maxIntervalMs?: number };
}

export interface IRHeaderMods {
  set: { name: string; value: string }[];
  add: { name: string; value: string }[];
  remove: string[];
}

export interface IRFault {
  delay?: { fixedMs: number; percent: number };
  abort?: { httpStatus: number; percent: number };
}

export interface IRForward {
  kind: 'forward';
  backends: { cluster: string; weight: number }[];
  timeoutMs: number;
  retry?: IRRetry;
  rewrite?: { prefix?: string; fullPath?: string; hostname?: string };
  /** Hash keys for RingHash backends (consistent hashing is keyed per route in Envoy). */
  hashOn?: IRHashOn[];
}

export interface IRRedirect {
  kind: 'redirect';
  scheme?: 'http' | 'https';
  hostname?: string;
  port?: number;
  path?: { prefix?: string; fullPath?: string };
  statusCode: 301 | 302 | 303 | 307 | 308;
}

export interface IRRoute {
  /** What the route is (an HTTPRoute rule's match, a sidecar's default or inbound route). */
  key: RouteKey;
  /** formatRouteName(key), e.g. `<HTTPRoute>/<rule name or #index>/match-<N>`: stable and readable in stats and dumps. */
  name: string;
  match: IRRouteMatch;
  action: IRForward | IRRedirect;
  requestHeaders?: IRHeaderMods;
  responseHeaders?: IRHeaderMods;
  fault?: IRFault;
  /** A local rate limit for this route only (RateLimitPolicy on its HTTPRoute). */
  rateLimit?: IRLocalRateLimit;
  /**
   * Global limits counted by Signalbox's rate-limit service: the listener's (Gateway, listener or
   * Service) first, then the route's own (HTTPRoute or rule).
   */
  globalRateLimits?: IRGlobalRateLimit[];
  /** JWT policies checked by the ext_authz service (set on every route of a listener that has extAuthz). */
  jwt?: IRRouteJwt;
  source: SourceRef;
}

export interface IRVirtualHost {
  name: string;
  domains: string[];
  routes: IRRoute[];
}

/** One RBAC policy: who (SPIFFE IDs) may (or may not) do what (methods, paths); no permissions = anything. */
export interface IRRbacPolicy {
  name: string;
  principals: string[];
  permissions?: { methods?: string[]; paths?: { type: 'Exact' | 'PathPrefix' | 'RegularExpression'; value: string }[] }[];
}

/** Access control on an inbound listener: deny policies first, then allow policies (if defaultDeny). */
export interface IRRbac {
  deny: IRRbacPolicy[];
  allow: IRRbacPolicy[];
  defaultDeny: boolean;
}

export const IDENTITY_SECRET = 'signalbox/identity';
export const TRUST_BUNDLE_SECRET = 'signalbox/trust-bundle';

export interface IRHttpListener {
  name: string;
  /** On a gateway's listener: the Gateway listener's own name (what a policy's `sectionName` names). */
  gatewayListener?: string;
  /** gateway: edge listener; inbound: a sidecar's mTLS listener; outbound: a sidecar's local listener. */
  direction?: 'gateway' | 'inbound' | 'outbound';
  /** Inbound mesh TLS: terminate with the proxy's own identity and require a mesh client certificate. */
  meshTls?: { mode: 'strict' | 'permissive' };
  rbac?: IRRbac;
  /** Pass the verified peer identity to the app in x-forwarded-client-cert. */
  forwardClientCert?: boolean;
  address: string;
  port: number;
  tls?: { secretName: string };
  routeConfig: { name: string; virtualHosts: IRVirtualHost[] };
  /** HTTP filters the listener needs besides the router, by name from the filter order table. */
  httpFilters: string[];
  /** A local rate limit over every request of the listener (RateLimitPolicy on a Gateway or Service). */
  rateLimit?: IRLocalRateLimit;
  /** Routes of this listener have global limits: Envoy's ratelimit filter asks this cluster. */
  globalRateLimit?: { cluster: string; timeoutMs: number };
  /** Report requests to the control plane's access log service (errors always, successes sampled). */
  accessLog?: { successSamplePercent: number };
  /** Envoy tracing (Mesh.spec.tracing): OpenTelemetry over gRPC to `cluster`. */
  tracing?: { cluster: string; samplingPercent: number; serviceName: string };
  /** Ask Signalbox's ext_authz service (JWTPolicy on a route, Gateway or Service of this listener). */
  extAuthz?: IRExtAuthz;
  /**
   * The listener's proxies load Signalbox's compiled JWT filter: the fast path runs in it rather
   * than in the Lua script, and it stays on the listener even while no route has a check, so a
   * policy added later is a route change, which connections opened before see together with the
   * filter that checks it.
   */
  jwtModule?: boolean;
  source: SourceRef;
}

export interface IRCluster {
  name: string;
  service: string;
  subset?: { name: string; labels: Record<string, string> };
  protocol: 'http' | 'http2' | 'grpc' | 'tcp';
  connectTimeoutMs: number;
  /** A fixed local endpoint (a sidecar's own app) instead of discovered instances. */
  static?: { address: string; port: number };
  /** SPIFFE ID to verify when an instance is reached over mTLS at its sidecar. */
  upstreamIdentity?: string;
  /**
   * Every endpoint is reached over TLS (one of Signalbox's own servers, e.g. the ext_authz
   * service): the proxy presents its identity certificate (SDS) and verifies the server's
   * certificate against the mesh trust bundle and this SPIFFE ID (URI SAN).
   */
  upstreamTls?: { spiffeId: string };
  /** TrafficPolicy settings (absent: Envoy's defaults, round robin). */
  loadBalancer?: IRLoadBalancer;
  circuitBreaker?: IRCircuitBreaker;
  outlierDetection?: IROutlierDetection;
  healthCheck?: IRHealthCheck;
  source: SourceRef;
}

export interface IRSecret {
  name: string;
  certificatePem: string;
  privateKeyPem: string;
  source: SourceRef;
}

/** Everything one group of identical proxies (e.g. every Envoy of one gateway) receives. */
export interface IRProxyConfig {
  /** formatGroup(key). */
  group: string;
  key: GroupKey;
  /** The SPIFFE ID of the proxies in this group; they receive this identity's certificate only. */
  identity?: string;
  listeners: IRHttpListener[];
  clusters: IRCluster[];
  secrets: IRSecret[];
}

/** The group a (possibly `+jwt-module`) group is a variant of. */
export function baseGroup(group: string): string {
  return group.endsWith(JWT_MODULE_GROUP_SUFFIX) ? group.slice(0, -JWT_MODULE_GROUP_SUFFIX.length) : group;
}

/** Proxy groups are keyed `gateway/<name>` and `sidecar/<service>/<appPort>/<inboundPort>/<outboundPort>` (names.ts). */
export function gatewayGroup(name: string): string {
  return formatGroup({ kind: 'gateway', gateway: name });
}

/** The gateway name of a `gateway/<name>` group (not a variant), or undefined. */
export function parseGatewayGroup(group: string): string | undefined {
  const k = parseGroup(group);
  return k?.kind === 'gateway' && !k.jwtModule ? k.gateway : undefined;
}

export function sidecarGroup(s: SidecarShape): string {
  return formatGroup({ kind: 'sidecar', service: s.service, appPort: s.appPort, inboundPort: s.inboundPort, outboundPort: s.outboundPort });
}

/** The shape of a `sidecar/...` group (not a variant), or undefined. */
export function parseSidecarGroup(group: string): SidecarShape | undefined {
  const k = parseGroup(group);
  if (k?.kind !== 'sidecar' || k.jwtModule) return undefined;
  return { service: k.service, appPort: k.appPort, inboundPort: k.inboundPort, outboundPort: k.outboundPort };
}

/** The clusters a list of IR routes forwards to, first use first; computed once per frozen list. */
const clustersOfRouteList = new WeakMap<readonly IRRoute[], readonly string[]>();

export function routeClusters(routes: readonly IRRoute[]): readonly string[] {
  let out = clustersOfRouteList.get(routes);
  if (!out) {
    const used = new Set<string>();
    for (const r of routes) if (r.action.kind === 'forward') for (const b of r.action.backends) used.add(b.cluster);
    out = [...used];
    // Only a frozen list is known not to change under the memo; the translate step freezes the lists
    // it hands on, and hands the same one again while a hostname's routes are unchanged.
    if (Object.isFrozen(routes)) clustersOfRouteList.set(routes, out);
  }
  return out;
}
