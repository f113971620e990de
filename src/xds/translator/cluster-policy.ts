// TrafficPolicy settings of a cluster (IR) as Envoy Cluster fields: load balancer, circuit
// breaker thresholds, outlier detection and active HTTP health checks.
import type { IRCluster } from '../../ir/types.js';
import type { envoy } from '../resources/envoy-types.gen.js';
import { duration } from './util.js';

type Cluster = envoy.config.cluster.v3.Cluster;

const LB_POLICY = { RoundRobin: 'ROUND_ROBIN', LeastRequest: 'LEAST_REQUEST', Random: 'RANDOM', RingHash: 'RING_HASH' } as const;

const u32 = (value: number) => ({ value });

/** The fields to merge into the Cluster resource; empty when the cluster has no TrafficPolicy. */
export function clusterPolicyFields(c: IRCluster): Cluster {
  const out: Cluster = {};
  if (c.loadBalancer) out.lb_policy = LB_POLICY[c.loadBalancer.type];
  if (c.circuitBreaker) {
    const cb = c.circuitBreaker;
    const t: envoy.config.cluster.v3.CircuitBreakers.Thresholds = { priority: 'DEFAULT' };
    if (cb.maxConnections !== undefined) t.max_connections = u32(cb.maxConnections);
    if (cb.maxPendingRequests !== undefined) t.max_pending_requests = u32(cb.maxPendingRequests);
    if (cb.maxRequests !== undefined) t.max_requests = u32(cb.maxRequests);
    if (cb.maxRetries !== undefined) t.max_retries = u32(cb.maxRetries);
    out.circuit_breakers = { thresholds: [t] };
  }
  if (c.outlierDetection) {
    const o = c.outlierDetection;
    out.outlier_detection = {
      consecutive_5xx: u32(o.consecutive5xx),
      interval: duration(o.intervalMs),
      base_ejection_time: duration(o.baseEjectionTimeMs),
      max_ejection_percent: u32(o.maxEjectionPercent),
    };
  }
  if (c.healthCheck) {
    const h = c.healthCheck;
    const http2 = c.protocol === 'http2' || c.protocol === 'grpc';
    out.health_checks = [
      {
        timeout: duration(h.timeoutMs),
        interval: duration(h.intervalMs),
        // Envoy checks idle clusters only every 60s by default; a policy's interval is meant always.
        no_traffic_interval: duration(h.intervalMs),
        unhealthy_threshold: u32(h.unhealthyThreshold),
        healthy_threshold: u32(h.healthyThreshold),
        http_health_check: { path: h.path, ...(http2 ? { codec_client_type: 'HTTP2' } : {}) },
      },
    ];
  }
  return out;
}
