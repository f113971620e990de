// The translate step for RateLimitPolicy `global` sections, run over every proxy group's IR once
// the gateway or sidecar step (and the local limits) built it. Each forwarding route gets the
// global limits that cover it: its listener's (a Gateway, one Gateway listener, or the Service of
// a sidecar's inbound listener) first, then its HTTPRoute's (or rule's: a rule's own section beats
// its route's, as for local limits). A listener with any such route gets Envoy's ratelimit filter
// (after the local buckets and the JWT checks), and the group gets the cluster that reaches
// Signalbox's rate-limit service: over TLS with the proxy's own identity certificate (unless the
// control plane runs insecure), like the ext_authz cluster, so the group gets an identity even
// when mesh mTLS is off.
import type { IRGlobalRateLimit } from '../ir/traffic.js';
import type { IRCluster, IRHttpListener, IRProxyConfig, IRRoute } from '../ir/types.js';
import { ruleName } from '../ir/types.js';
import { BUILTIN_DEFAULTS, type Model } from '../model/model.js';
import { rateLimitKey, type GlobalRateLimitModel } from '../model/policies.js';
import { serverSpiffeId } from '../ca/server-tls.js';
import { DEFAULT_RATELIMIT_PORT, type RateLimitEndpoint } from '../protocol/services.js';
import { gatewayIdentity, serviceIdentity } from './mesh-identity.js';

/** The cluster name: a dot cannot appear in a Service name, so it never clashes with one. */
export const RATELIMIT_CLUSTER = 'signalbox.ratelimit';

export { DEFAULT_RATELIMIT_PORT, type RateLimitEndpoint };

export const RATELIMIT_SERVER_ID = serverSpiffeId(BUILTIN_DEFAULTS.trustDomain, 'ratelimit');

/** What `signalbox serve` gives proxies by default (TLS); `signalbox compile` shows this. */
export const DEFAULT_RATELIMIT_ENDPOINT: RateLimitEndpoint = { address: '127.0.0.1', port: DEFAULT_RATELIMIT_PORT, tls: { serverId: RATELIMIT_SERVER_ID } };

/**
 * Envoy's deadline for one ShouldRateLimit call. The service gives Redis 100 ms and then answers
 * by the policy's failureMode itself; this leaves it time to do so before Envoy gives up.
 */
export const RATELIMIT_TIMEOUT_MS = 250;

function irGlobal(g: GlobalRateLimitModel | undefined): IRGlobalRateLimit | undefined {
  if (!g || g.limits.length === 0) return undefined;
  return {
    policy: g.policy,
    failureMode: g.failureMode,
    limits: g.limits.map((l) => ({ id: l.id, requests: l.requests, unit: l.unit, ...(l.by ? { by: { ...l.by } } : {}) })),
    source: g.source,
  };
}

export function applyGlobalRateLimits(model: Model, ir: IRProxyConfig, endpoint: RateLimitEndpoint = DEFAULT_RATELIMIT_ENDPOINT): IRProxyConfig {
  const global = model.policies?.globalRateLimits;
  if (!global || global.size === 0) return ir;
  const gateway = ir.key.kind === 'gateway' ? ir.key.gateway : undefined;
  const sidecar = ir.key.kind === 'sidecar' ? ir.key : undefined;

  const listenerLimit = (l: IRHttpListener): IRGlobalRateLimit | undefined => {
    if (gateway !== undefined && (l.direction ?? 'gateway') === 'gateway') {
      const own = l.gatewayListener !== undefined ? global.get(rateLimitKey('Gateway', gateway, l.gatewayListener)) : undefined;
      return irGlobal(own ?? global.get(rateLimitKey('Gateway', gateway)));
    }
    if (sidecar && l.direction === 'inbound') return irGlobal(global.get(rateLimitKey('Service', sidecar.service)));
    return undefined;
  };
  const routeLimit = (r: IRRoute): IRGlobalRateLimit | undefined => {
    if (r.key.kind !== 'rule') return undefined;
    const section = ruleName(r.key.rule);
    return irGlobal(
      (section !== undefined ? global.get(rateLimitKey('HTTPRoute', r.key.httpRoute, section)) : undefined) ??
        global.get(rateLimitKey('HTTPRoute', r.key.httpRoute)),
    );
  };

  let any = false;
  const listeners = ir.listeners.map((l): IRHttpListener => {
    const onListener = listenerLimit(l);
    let used = false;
    const virtualHosts = l.routeConfig.virtualHosts.map((v) => ({
      ...v,
      routes: v.routes.map((r): IRRoute => {
        // Descriptors ride on the route action: a redirect has none, so it is never counted.
        if (r.action.kind !== 'forward') return r;
        const limits = [onListener, routeLimit(r)].filter((x): x is IRGlobalRateLimit => x !== undefined);
        if (limits.length === 0) return r;
        used = true;
        return { ...r, globalRateLimits: limits };
      }),
    }));
    if (!used) return l;
    any = true;
    return { ...l, routeConfig: { ...l.routeConfig, virtualHosts }, globalRateLimit: { cluster: RATELIMIT_CLUSTER, timeoutMs: RATELIMIT_TIMEOUT_MS } };
  });
  if (!any) return ir;

  const first = [...global.values()].sort((a, b) => (a.policy < b.policy ? -1 : 1))[0]!;
  const cluster: IRCluster = {
    name: RATELIMIT_CLUSTER,
    service: RATELIMIT_CLUSTER,
    protocol: 'grpc',
    connectTimeoutMs: 1_000,
    static: { address: endpoint.address, port: endpoint.port },
    ...(endpoint.tls ? { upstreamTls: { spiffeId: endpoint.tls.serverId } } : {}),
    source: first.source,
  };
  const clusters = [...ir.clusters.filter((c) => c.name !== RATELIMIT_CLUSTER), cluster].sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
  // The service answers only proxies that present a mesh certificate: the group must hold one.
  const own = gateway !== undefined ? gatewayIdentity(model, gateway) : sidecar ? serviceIdentity(model, sidecar.service) : undefined;
  const identity = ir.identity ?? (endpoint.tls ? own : undefined);
  return { ...ir, ...(identity !== undefined ? { identity } : {}), listeners, clusters };
}
