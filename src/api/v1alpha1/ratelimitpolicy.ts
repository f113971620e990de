// RateLimitPolicy: local (per-proxy) token buckets on a Gateway, an HTTPRoute, or a Service's
// sidecars (inbound).
import { z } from 'zod';
import { document, name, parseDuration } from './common.js';

const HEADER_NAME = /^[A-Za-z0-9!#$%&'*+\-.^_`|~]+$/;

/** Envoy refills token buckets at most every 50ms. */
export const MIN_RATE_WINDOW_MS = 50;

/** The window of a bucket: a duration such as `1s` or `1m` (typos like `1sec` or `second` are errors). */
const per = z
  .string()
  .refine((s) => parseDuration(s) !== undefined, {
    message: 'must be a duration such as "1s", "1m" or "1h" (a number followed by ms, s, m or h)',
    abort: true,
  })
  .refine((s) => (parseDuration(s) ?? 0) >= MIN_RATE_WINDOW_MS, { message: `must be at least ${MIN_RATE_WINDOW_MS}ms` });

export const rateLimitKey = z.union([
  z.strictObject({ header: z.string().regex(HEADER_NAME, 'must be a valid HTTP header name') }),
  z.strictObject({ clientIP: z.literal(true) }),
]);

export const rateLimitPolicySpec = z.strictObject({
  targetRef: z.strictObject({ kind: z.enum(['Gateway', 'HTTPRoute', 'Service']), name }),
  local: z.strictObject({
    requests: z.number().int('must be a whole number').min(1, 'must be greater than zero').max(1_000_000_000, 'must be at most 1000000000'),
    per,
    /** One bucket per value of this key; absent: one bucket shared by every request. */
    by: rateLimitKey.optional(),
  }),
});

export const RateLimitPolicy = document('RateLimitPolicy', rateLimitPolicySpec);
export type RateLimitPolicy = z.infer<typeof RateLimitPolicy>;
