// Global rate limits: Envoy's ratelimit HTTP filter asking Signalbox's rate-limit service
// (envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit), twice in the chain: one instance
// for the limits of policies with failureMode allow, one for failureMode deny. Envoy decides what
// a failed call means per filter instance (failure_mode_deny), so a policy's descriptors go to the
// instance of its failure mode, told apart by stage:
// - stage 2, failure_mode_deny false: the service unreachable or late, the request passes;
// - stage 3, failure_mode_deny true: it gets 503 (status_on_error), as the service itself answers
//   for a deny policy while Redis is down.
// Stages 0 and 1 belong to the local rate limit filter (local-ratelimit.ts); each filter reads only
// the rate_limits entries of its own stage, so both kinds sit side by side on one route.
//
// Every limit is one descriptor on the route (RouteAction.rate_limits): the limit's id as a
// generic_key entry, then the key it counts by (a request header, the client address, the path,
// or the header a JWTPolicy forwards a claim into). A request without that key produces no
// descriptor for the limit (Envoy drops the whole entry), so it is not counted by it.
import type { IRHttpListener, IRRoute } from '../../../ir/types.js';
import type { IRGlobalLimit } from '../../../ir/traffic.js';
import type { envoy } from '../../resources/envoy-types.gen.js';
import { duration, typed } from '../util.js';
import type { HttpFilterModule } from './index.js';
import { LIMIT_ENTRY, RATELIMIT_DOMAIN } from '../../../protocol/services.js';

type RateLimit = envoy.config.route.v3.RateLimit;

const TYPE = 'envoy.extensions.filters.http.ratelimit.v3.RateLimit';
export const GLOBAL_RATELIMIT_ALLOW_FILTER = 'signalbox.ratelimit.allow';
export const GLOBAL_RATELIMIT_DENY_FILTER = 'signalbox.ratelimit.deny';
export const GLOBAL_STAGE = { allow: 2, deny: 3 } as const;
// The domain and the limit's descriptor entry, shared with the rate-limit service: src/protocol/services.ts.
export { LIMIT_ENTRY, RATELIMIT_DOMAIN };
/** The descriptor entry keys of what a limit counts by. */
export const KEY_ENTRY = { header: 'header', clientIP: 'remote_address', path: 'path', claim: 'claim' } as const;

function routesWith(l: IRHttpListener, mode: 'allow' | 'deny'): boolean {
  return l.routeConfig.virtualHosts.some((v) => v.routes.some((r) => r.globalRateLimits?.some((g) => g.failureMode === mode)));
}

function filterOf(mode: 'allow' | 'deny'): HttpFilterModule {
  const name = mode === 'allow' ? GLOBAL_RATELIMIT_ALLOW_FILTER : GLOBAL_RATELIMIT_DENY_FILTER;
  return {
    envoyName: name,
    wanted: (l) => l.globalRateLimit !== undefined && routesWith(l, mode),
    // Both instances read the one rate_limits list, each the entries of its stage; the allow
    // instance writes all of them, so that they stay in the order of the route's policies.
    ...(mode === 'allow' ? { routeFields: appendGlobalRateLimits } : {}),
    hcmEntry: (l) => {
      const g = l.globalRateLimit;
      if (!g || !routesWith(l, mode)) return undefined;
      return {
        name,
        typed_config: typed(TYPE, {
          domain: RATELIMIT_DOMAIN,
          stage: GLOBAL_STAGE[mode],
          timeout: duration(g.timeoutMs),
          failure_mode_deny: mode === 'deny',
          rate_limit_service: { grpc_service: { envoy_grpc: { cluster_name: g.cluster } }, transport_api_version: 'V3' },
          enable_x_ratelimit_headers: 'DRAFT_VERSION_03',
          ...(mode === 'deny' ? { status_on_error: { code: 'ServiceUnavailable' } } : {}),
          stat_prefix: `global_${mode}`,
        }),
      };
    },
  };
}

export const globalRateLimitAllow = filterOf('allow');
export const globalRateLimitDeny = filterOf('deny');

function keyAction(l: IRGlobalLimit): envoy.config.route.v3.RateLimit.Action | undefined {
  const by = l.by;
  if (!by) return undefined;
  if ('clientIP' in by) return { remote_address: {} };
  if ('path' in by) return { request_headers: { header_name: ':path', descriptor_key: KEY_ENTRY.path } };
  if ('claim' in by) return { request_headers: { header_name: by.header, descriptor_key: KEY_ENTRY.claim } };
  return { request_headers: { header_name: by.header, descriptor_key: KEY_ENTRY.header } };
}

/** The rate_limits entries of a route's global limits (one descriptor per limit). */
export function globalRateLimitEntries(r: IRRoute): RateLimit[] {
  return (r.globalRateLimits ?? []).flatMap((g) =>
    g.limits.map((l) => {
      const key = keyAction(l);
      return {
        stage: { value: GLOBAL_STAGE[g.failureMode] },
        actions: [{ generic_key: { descriptor_key: LIMIT_ENTRY, descriptor_value: l.id } }, ...(key ? [key] : [])],
      };
    }),
  );
}

/** Route-level additions: the descriptors, after any local limit's own entries. */
function appendGlobalRateLimits(_l: IRHttpListener, r: IRRoute, out: envoy.config.route.v3.Route): void {
  const entries = globalRateLimitEntries(r);
  const route = out.route;
  if (!entries.length || !route) return;
  route.rate_limits = [...(route.rate_limits ?? []), ...entries];
}
