// Local (per-proxy) rate limits: Envoy's local_ratelimit HTTP filter, twice in the chain.
// - The listener instance carries a listener-wide bucket (RateLimitPolicy on a Gateway, or on a
//   Service for its sidecars' inbound listener). Its keys come from the virtual hosts (stage 1).
// - The route instance has no bucket of its own; routes of an HTTPRoute with a RateLimitPolicy
//   carry theirs in typed_per_filter_config, keys from the route (stage 0).
// Both can apply to one request: a Gateway limit and a route limit are independent buckets.
// Keyed buckets use wildcard descriptors (an entry with a key and no value): Envoy keeps one
// bucket per distinct value. Requests without the key share the default bucket of the same size.
// Both modules take any IRHttpListener, so sidecar listeners get them the same way gateways do.
import type { IRHttpListener } from '../../../ir/types.js';
import type { IRLocalRateLimit } from '../../../ir/traffic.js';
import type { envoy, PackedAny } from '../../resources/envoy-types.gen.js';
import { envoyRoot } from '../../resources/protos.js';
import { duration, typed } from '../util.js';
import type { HttpFilterModule } from './index.js';

const TYPE = 'envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit';
export const LISTENER_RATELIMIT_FILTER = 'signalbox.local_ratelimit.listener';
export const ROUTE_RATELIMIT_FILTER = 'signalbox.local_ratelimit.route';
const LISTENER_STAGE = 1;
const ROUTE_STAGE = 0;
const HEADER_KEY = 'signalbox_key';
const ALWAYS: envoy.config.core.v3.RuntimeFractionalPercent = { default_value: { numerator: 100, denominator: 'HUNDRED' } };

function bucket(rl: IRLocalRateLimit): envoy.type.v3.TokenBucket {
  return { max_tokens: rl.requests, tokens_per_fill: { value: rl.requests }, fill_interval: duration(rl.perMs) };
}

function statPrefix(rl: IRLocalRateLimit, where: 'listener' | 'route'): string {
  return `ratelimit_${where}_${rl.policy.replace(/[^A-Za-z0-9_]/g, '_')}`;
}

/** Envoy's enum name for an HTTP status (the schema admits only codes the enum has). */
function statusCodeName(code: number): envoy.type.v3.StatusCode {
  const name = envoyRoot().lookupEnum('envoy.type.v3.StatusCode').valuesById[code];
  if (name === undefined) throw new Error(`HTTP status ${code} is not in envoy.type.v3.StatusCode`);
  return name as envoy.type.v3.StatusCode;
}

/** The descriptor key a request produces for this limit. */
function descriptorKey(rl: IRLocalRateLimit): string | undefined {
  if (!rl.by) return undefined;
  return 'header' in rl.by ? HEADER_KEY : 'remote_address';
}

/** The full filter configuration of one limit. */
export function localRateLimitConfig(rl: IRLocalRateLimit, where: 'listener' | 'route'): PackedAny {
  const key = descriptorKey(rl);
  return typed(TYPE, {
    stat_prefix: statPrefix(rl, where),
    token_bucket: bucket(rl),
    ...(rl.statusCode !== undefined ? { status: { code: statusCodeName(rl.statusCode) } } : {}),
    filter_enabled: ALWAYS,
    filter_enforced: ALWAYS,
    enable_x_ratelimit_headers: 'DRAFT_VERSION_03',
    response_headers_to_add: [{ header: { key: 'x-ratelimit-policy', value: rl.policy }, append_action: 'OVERWRITE_IF_EXISTS_OR_ADD' }],
    stage: where === 'listener' ? LISTENER_STAGE : ROUTE_STAGE,
    // The listener instance reads its keys from the virtual host even when a route has its own.
    vh_rate_limits: where === 'listener' ? 'INCLUDE' : 'IGNORE',
    // Keyed: a request with the key draws from its key's bucket only (Envoy would otherwise also
    // draw from the default bucket, which then acts as a shared limit over all keys).
    ...(key ? { descriptors: [{ entries: [{ key }], token_bucket: bucket(rl) }], always_consume_default_token_bucket: { value: false } } : {}),
  });
}

/** The rate limit actions that produce a request's descriptor (none for a shared bucket). */
export function rateLimitActions(rl: IRLocalRateLimit, where: 'listener' | 'route'): envoy.config.route.v3.RateLimit[] {
  if (!rl.by) return [];
  const action: envoy.config.route.v3.RateLimit.Action =
    'header' in rl.by ? { request_headers: { header_name: rl.by.header.toLowerCase(), descriptor_key: HEADER_KEY } } : { remote_address: {} };
  return [{ stage: { value: where === 'listener' ? LISTENER_STAGE : ROUTE_STAGE }, actions: [action] }];
}

function hasRouteLimit(l: IRHttpListener): boolean {
  return l.routeConfig.virtualHosts.some((v) => v.routes.some((r) => r.rateLimit));
}

export const listenerRateLimit: HttpFilterModule = {
  envoyName: LISTENER_RATELIMIT_FILTER,
  wanted: (l) => l.rateLimit !== undefined,
  hcmEntry: (l) => (l.rateLimit ? { name: LISTENER_RATELIMIT_FILTER, typed_config: localRateLimitConfig(l.rateLimit, 'listener') } : undefined),
  // A listener-wide keyed limit takes its key from the virtual hosts.
  virtualHost: (l) => {
    const actions = l.rateLimit ? rateLimitActions(l.rateLimit, 'listener') : [];
    return actions.length ? { rate_limits: actions } : {};
  },
};

export const routeRateLimit: HttpFilterModule = {
  envoyName: ROUTE_RATELIMIT_FILTER,
  wanted: hasRouteLimit,
  // No bucket here: the filter does nothing on routes without their own configuration.
  hcmEntry: (l) => (hasRouteLimit(l) ? { name: ROUTE_RATELIMIT_FILTER, typed_config: typed(TYPE, { stat_prefix: 'ratelimit_route' }) } : undefined),
  // The route's own bucket.
  perRouteConfig: (_l, r) => (r.rateLimit ? localRateLimitConfig(r.rateLimit, 'route') : undefined),
  // Its key action. Keys come from RouteAction.rate_limits, so only forwarding routes can be
  // keyed; a redirect rule counts against the shared default bucket.
  routeFields: (_l, r, out) => {
    const actions = r.rateLimit ? rateLimitActions(r.rateLimit, 'route') : [];
    if (actions.length && out.route) out.route.rate_limits = actions;
  },
};
