// IR for traffic policies: plain data the xDS translator turns into cluster settings, route hash
// policies and local rate limit filters. No Envoy types here.
import type { SourceRef } from '../api/documents.js';
import type { LocalRateLimit } from '../api/v1alpha1/ratelimitpolicy.js';

/** What a RingHash balancer hashes on. */
export type IRHashOn = { header: string } | { sourceIP: true };

export interface IRLoadBalancer {
  type: 'RoundRobin' | 'LeastRequest' | 'Random' | 'RingHash';
  hashOn?: IRHashOn;
}

export interface IRCircuitBreaker {
  maxConnections?: number;
  maxPendingRequests?: number;
  maxRequests?: number;
  maxRetries?: number;
}

export interface IROutlierDetection {
  consecutive5xx: number;
  intervalMs: number;
  baseEjectionTimeMs: number;
  maxEjectionPercent: number;
}

export interface IRHealthCheck {
  path: string;
  intervalMs: number;
  timeoutMs: number;
  unhealthyThreshold: number;
  healthyThreshold: number;
}

/**
 * A local token bucket: `requests` per `perMs`, one bucket per value of `by` (or one shared); every
 * setting of the policy's `local` section as parsed, with the policy that set it.
 */
export type IRLocalRateLimit = LocalRateLimit & {
  /** The RateLimitPolicy's name (stat prefix and response header). */
  policy: string;
  source: SourceRef;
};

/** What a global limit counts by (a claim arrives in the header its JWTPolicy forwards it into). */
export type IRGlobalKey = { header: string } | { clientIP: true } | { path: true } | { claim: string; header: string };

/** One global limit: `requests` per fixed window of `unit`, counted by Signalbox's rate-limit service. */
export interface IRGlobalLimit {
  /** `<policy>/<index>`: the descriptor value Envoy sends and the service looks up. */
  id: string;
  requests: number;
  unit: 'second' | 'minute' | 'hour' | 'day';
  by?: IRGlobalKey;
}

/** A RateLimitPolicy's global section as it applies to one route. */
export interface IRGlobalRateLimit {
  policy: string;
  failureMode: 'allow' | 'deny';
  limits: IRGlobalLimit[];
  source: SourceRef;
}
