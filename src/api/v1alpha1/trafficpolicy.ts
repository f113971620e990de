// TrafficPolicy: how callers talk to a destination Service (Envoy cluster settings), plus the
// route timeout and retries used by routes to that Service that do not set their own.
import { z } from 'zod';
import { document, duration, name, parseDuration } from './common.js';
import { retries } from './mesh.js';
import { writtenPathProblems } from './envoy-limits.js';

const HEADER_NAME = /^[A-Za-z0-9!#$%&'*+\-.^_`|~]+$/;

/** A whole number of at least 1: limits of 0 or below would block all traffic or mean nothing. */
export const positiveCount = z.number().int('must be a whole number').min(1, 'must be greater than zero').max(4_294_967_295, 'must be at most 4294967295');

/** A percentage that must let something through: 1 to 100. */
const ejectionPercent = z.number().int('must be a whole number').min(1, 'must be a percentage from 1 to 100').max(100, 'must be a percentage from 1 to 100');

export const hashOn = z
  .strictObject({
    header: z.string().regex(HEADER_NAME, 'must be a valid HTTP header name').optional(),
    sourceIP: z.literal(true, { message: 'must be true (or leave it out)' }).optional(),
  })
  .refine((h) => (h.header === undefined) !== (h.sourceIP === undefined), { message: 'give exactly one of header or sourceIP' })
  .transform((h): { header: string } | { sourceIP: true } => (h.header !== undefined ? { header: h.header } : { sourceIP: true }));

export const LB_TYPES = ['RoundRobin', 'LeastRequest', 'Random', 'RingHash'] as const;

const loadBalancer = z
  .strictObject({
    type: z.enum(LB_TYPES),
    /** What a RingHash balancer hashes: a request header, or the client's IP address. */
    hashOn: hashOn.optional(),
  })
  .superRefine((lb, ctx) => {
    if (lb.type === 'RingHash' && !lb.hashOn) {
      ctx.addIssue({
        code: 'custom',
        path: ['hashOn'],
        message: 'required for RingHash: give { header: NAME } or { sourceIP: true } (without a key every request would hash alike)',
      });
    }
    if (lb.type !== 'RingHash' && lb.hashOn) {
      ctx.addIssue({ code: 'custom', path: ['hashOn'], message: `only used by RingHash, not by ${lb.type}` });
    }
  });

const circuitBreaker = z
  .strictObject({
    maxConnections: positiveCount.optional(),
    maxPendingRequests: positiveCount.optional(),
    maxRequests: positiveCount.optional(),
    maxRetries: positiveCount.optional(),
  })
  .refine((c) => Object.values(c).some((v) => v !== undefined), {
    message: 'give at least one of maxConnections, maxPendingRequests, maxRequests, maxRetries',
  });

const outlierDetection = z.strictObject({
  consecutive5xx: positiveCount.default(5),
  interval: duration.default('10s'),
  baseEjectionTime: duration.default('30s'),
  maxEjectionPercent: ejectionPercent.default(10),
});

const healthCheck = z
  .strictObject({
    path: z
      .string()
      .startsWith('/', 'must start with "/"')
      .superRefine((p, ctx) => {
        for (const message of writtenPathProblems(p)) ctx.addIssue({ code: 'custom', message });
      }),
    interval: duration.default('5s'),
    timeout: duration.default('1s'),
    unhealthyThreshold: positiveCount.default(3),
    healthyThreshold: positiveCount.default(2),
  })
  .superRefine((h, ctx) => {
    const interval = parseDuration(h.interval);
    const timeout = parseDuration(h.timeout);
    if (interval !== undefined && timeout !== undefined && timeout > interval) {
      ctx.addIssue({ code: 'custom', path: ['timeout'], message: `${h.timeout} is longer than the interval ${h.interval}` });
    }
  });

export const trafficPolicySpec = z
  .strictObject({
    targetRef: z.strictObject({ kind: z.literal('Service'), name }),
    connectTimeout: duration.optional(),
    /** Route timeout for routes to this Service that do not set one (a Mesh default otherwise). */
    timeout: duration.optional(),
    /** Retries for routes to this Service that do not set their own. */
    retries: retries.optional(),
    loadBalancer: loadBalancer.optional(),
    circuitBreaker: circuitBreaker.optional(),
    outlierDetection: outlierDetection.optional(),
    healthCheck: healthCheck.optional(),
  })
  .superRefine((spec, ctx) => {
    const { targetRef: _t, ...settings } = spec;
    if (Object.values(settings).every((v) => v === undefined)) {
      ctx.addIssue({
        code: 'custom',
        path: [],
        message: 'sets nothing: give at least one of connectTimeout, timeout, retries, loadBalancer, circuitBreaker, outlierDetection, healthCheck',
      });
    }
    const timeout = spec.timeout ? parseDuration(spec.timeout) : undefined;
    const perTry = spec.retries?.perTryTimeout ? parseDuration(spec.retries.perTryTimeout) : undefined;
    if (timeout !== undefined && perTry !== undefined && perTry > timeout) {
      ctx.addIssue({
        code: 'custom',
        path: ['retries', 'perTryTimeout'],
        message: `${spec.retries!.perTryTimeout} is longer than the policy's timeout ${spec.timeout}`,
      });
    }
    if (spec.retries?.retriableStatusCodes && !(spec.retries.retryOn ?? []).includes('retriable-status-codes')) {
      ctx.addIssue({
        code: 'custom',
        path: ['retries', 'retryOn'],
        message: 'retriableStatusCodes is given, so retryOn must include "retriable-status-codes"',
      });
    }
    const backoff = spec.retries?.backoff;
    if (backoff?.maxInterval && (parseDuration(backoff.maxInterval) ?? 0) < (parseDuration(backoff.baseInterval) ?? 0)) {
      ctx.addIssue({ code: 'custom', path: ['retries', 'backoff', 'maxInterval'], message: `must not be shorter than baseInterval ${backoff.baseInterval}` });
    }
  });

/** The settings a TrafficPolicy may carry: each one is owned by at most one policy per Service. */
export const TRAFFIC_FIELDS = ['connectTimeout', 'timeout', 'retries', 'loadBalancer', 'circuitBreaker', 'outlierDetection', 'healthCheck'] as const;
export type TrafficField = (typeof TRAFFIC_FIELDS)[number];

export const TrafficPolicy = document('TrafficPolicy', trafficPolicySpec);
export type TrafficPolicy = z.infer<typeof TrafficPolicy>;
