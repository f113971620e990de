// The translate step for TrafficPolicy and RateLimitPolicy, run over every proxy group's IR once
// the gateway or sidecar step has built it:
// - clusters of a Service with a TrafficPolicy get its connect timeout, load balancer, circuit
//   breaker, outlier detection and health check (a sidecar's local-app cluster is left alone);
// - routes to a RingHash Service get its hash key;
// - routes of an HTTPRoute with a RateLimitPolicy get a per-route local rate limit; a Gateway's
//   listeners, and the inbound listener of a Service's sidecars, get a listener-wide one.
// Route timeouts and retries inherited from TrafficPolicies are resolved where routes are built
// (routes.ts), from the model's per-rule defaults.
import type { IRCluster, IRHttpListener, IRProxyConfig, IRRetry, IRRoute } from '../ir/types.js';
import { ruleName } from '../ir/types.js';
import type { IRHashOn, IRLocalRateLimit } from '../ir/traffic.js';
import type { Model } from '../model/model.js';
import { rateLimitKey, type RateLimitModel, type TrafficPolicyModel } from '../model/policies.js';

function irRateLimit(r: RateLimitModel | undefined): IRLocalRateLimit | undefined {
  if (!r) return undefined;
  return { policy: r.policy, ...r.limit, source: r.source };
}

export function clusterWithPolicy(c: IRCluster, tp: TrafficPolicyModel | undefined): IRCluster {
  if (!tp || c.static) return c;
  const out: IRCluster = { ...c };
  if (tp.connectTimeoutMs) out.connectTimeoutMs = tp.connectTimeoutMs.value;
  if (tp.loadBalancer) out.loadBalancer = { ...tp.loadBalancer.value };
  if (tp.circuitBreaker) out.circuitBreaker = { ...tp.circuitBreaker.value };
  if (tp.outlierDetection) out.outlierDetection = { ...tp.outlierDetection.value };
  if (tp.healthCheck) out.healthCheck = { ...tp.healthCheck.value };
  return out;
}

/**
 * `list.map(f)`, but `list` itself when `f` returns every element unchanged: an array the
 * translator keys caches by (a virtual host's routes) stays the same object.
 */
function mapKeeping<T>(list: T[], f: (x: T) => T): T[] {
  let out: T[] | undefined;
  for (let i = 0; i < list.length; i++) {
    const y = f(list[i]!);
    if (y !== list[i] && !out) out = list.slice(0, i);
    out?.push(y);
  }
  return out ?? list;
}

function hashKey(h: IRHashOn): string {
  return 'header' in h ? `header:${h.header.toLowerCase()}` : 'sourceIP';
}

export function applyPolicies(model: Model, ir: IRProxyConfig): IRProxyConfig {
  const policies = model.policies;
  if (!policies || (policies.traffic.size === 0 && policies.rateLimits.size === 0)) return ir;

  const clusters = ir.clusters.map((c) => clusterWithPolicy(c, policies.traffic.get(c.service)));
  const byName = new Map(clusters.map((c) => [c.name, c]));

  const patchRoute = (r: IRRoute): IRRoute => {
    let out = r;
    if (r.action.kind === 'forward') {
      const keys = new Map<string, IRHashOn>();
      for (const b of r.action.backends) {
        const lb = byName.get(b.cluster)?.loadBalancer;
        if (lb?.type === 'RingHash' && lb.hashOn) keys.set(hashKey(lb.hashOn), lb.hashOn);
      }
      if (keys.size) out = { ...out, action: { ...r.action, hashOn: [...keys.keys()].sort().map((k) => keys.get(k)!) } };
    }
    // A rule's own limit beats the route's; an unnamed rule has no limit of its own.
    const rule = r.key.kind === 'rule' ? r.key : undefined;
    const section = rule && ruleName(rule.rule);
    const rl = rule
      ? irRateLimit(
          (section !== undefined ? policies.rateLimits.get(rateLimitKey('HTTPRoute', rule.httpRoute, section)) : undefined) ??
            policies.rateLimits.get(rateLimitKey('HTTPRoute', rule.httpRoute)),
        )
      : undefined;
    if (rl) out = { ...out, rateLimit: rl };
    return out;
  };

  const listenerLimit = (l: IRHttpListener): IRLocalRateLimit | undefined => {
    if (ir.key.kind === 'gateway' && (l.direction ?? 'gateway') === 'gateway') {
      // A listener's own limit beats the Gateway's.
      const gateway = ir.key.gateway;
      const own = l.gatewayListener !== undefined ? policies.rateLimits.get(rateLimitKey('Gateway', gateway, l.gatewayListener)) : undefined;
      return irRateLimit(own ?? policies.rateLimits.get(rateLimitKey('Gateway', gateway)));
    }
    if (ir.key.kind === 'sidecar' && l.direction === 'inbound') return irRateLimit(policies.rateLimits.get(rateLimitKey('Service', ir.key.service)));
    return undefined;
  };

  const listeners = ir.listeners.map((l): IRHttpListener => {
    const virtualHosts = l.routeConfig.virtualHosts.map((v) => ({ ...v, routes: mapKeeping(v.routes, patchRoute) }));
    const rateLimit = listenerLimit(l);
    return { ...l, routeConfig: { ...l.routeConfig, virtualHosts }, ...(rateLimit ? { rateLimit } : {}) };
  });
  return { ...ir, listeners, clusters };
}

/**
 * Timeout and retries of traffic to `service` that no HTTPRoute describes (a sidecar's default
 * route to a destination): its TrafficPolicy, else the Mesh defaults.
 */
export function destinationDefaults(model: Model, service: string): { timeoutMs: number; retry?: IRRetry } {
  const tp = model.policies?.traffic.get(service);
  const retry = tp?.retries ? tp.retries.value : model.mesh.defaults.retries;
  return { timeoutMs: tp?.timeoutMs?.value ?? model.mesh.defaults.timeoutMs, ...(retry && retry.attempts > 0 ? { retry } : {}) };
}
