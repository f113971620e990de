// HTTP filters: one module each, and ONE table that fixes their order in every filter chain.
// The router is always last.
import type { IRHttpListener } from '../../../ir/types.js';
import type { envoy } from '../../resources/envoy-types.gen.js';
import { typed } from '../util.js';
import { rbacAllow, rbacDeny } from './rbac.js';
import { listenerRateLimit, routeRateLimit } from './local-ratelimit.js';
import { extAuthz } from './ext-authz.js';
import { jwtCheck } from './jwt-fast.js';
import { globalRateLimitAllow, globalRateLimitDeny } from './global-ratelimit.js';

type HttpFilter = envoy.extensions.filters.network.http_connection_manager.v3.HttpFilter;

export interface HttpFilterModule {
  /** Envoy's filter name, also the key of per-route configuration. */
  envoyName: string;
  /** The filter as it sits in the HTTP connection manager. */
  hcmEntry(listener: IRHttpListener): HttpFilter | undefined;
  /** When given, the filter joins any listener for which this is true (no need to list it in httpFilters). */
  wanted?(listener: IRHttpListener): boolean;
}

const fault: HttpFilterModule = {
  envoyName: 'envoy.filters.http.fault',
  // No fault by default: each route that asks for one carries it in typed_per_filter_config.
  hcmEntry: () => ({ name: 'envoy.filters.http.fault', typed_config: typed('envoy.extensions.filters.http.fault.v3.HTTPFault', {}) }),
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

export { fault as faultFilter };
