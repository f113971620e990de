// Route-level effects of traffic policies: the consistent-hash key of RingHash backends and the
// per-route local rate limit.
import type { IRHttpListener, IRRoute } from '../../ir/types.js';
import { patchRouteForRateLimit, virtualHostRateLimits } from './filters/local-ratelimit.js';
import { patchRouteForGlobalRateLimit } from './filters/global-ratelimit.js';
import type { envoy } from '../resources/envoy-types.gen.js';

export function patchRoutePolicies(r: IRRoute, out: envoy.config.route.v3.Route): void {
  const route = out.route;
  if (r.action.kind === 'forward' && r.action.hashOn?.length && route) {
    route.hash_policy = r.action.hashOn.map((h) => ('header' in h ? { header: { header_name: h.header.toLowerCase() } } : { connection_properties: { source_ip: true } }));
  }
  patchRouteForRateLimit(r, out);
  patchRouteForGlobalRateLimit(r, out);
}

export function virtualHostPolicies(l: IRHttpListener): envoy.config.route.v3.VirtualHost {
  return virtualHostRateLimits(l);
}
