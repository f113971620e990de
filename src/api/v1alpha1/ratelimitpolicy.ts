// RateLimitPolicy: local (per-proxy) token buckets on a Gateway, an HTTPRoute, or a Service's
// sidecars (inbound).
import { z } from 'zod';
import { document, DURATION_JSON_SCHEMA, parseDuration, policyTargetRef } from './common.js';
import { MAX_DURATION_MESSAGE, MAX_DURATION_MS } from './envoy-limits.js';

const HEADER_NAME = /^[A-Za-z0-9!#$%&'*+\-.^_`|~]+$/;

/** Envoy refills token buckets at most every 50ms. */
export const MIN_RATE_WINDOW_MS = 50;

/** The window of a bucket: a duration such as `1s` or `1m` (typos like `1sec` or `second` are errors). */
const per = z
  .string()
  .superRefine((s, ctx) => {
    if (parseDuration(s) !== undefined) return;
    const hint = durationHint(s);
    ctx.addIssue({ code: 'custom', continue: false, message: `must be a duration such as "1s", "1m" or "1h" (a number followed by ms, s, m or h)${hint && hint !== s ? ` (did you mean "${hint}"?)` : ''}` });
  })
  .refine((s) => (parseDuration(s) ?? 0) >= MIN_RATE_WINDOW_MS, { message: `must be at least ${MIN_RATE_WINDOW_MS}ms` })
  .refine((s) => (parseDuration(s) ?? 0) <= MAX_DURATION_MS, { message: MAX_DURATION_MESSAGE })
  .meta(DURATION_JSON_SCHEMA);

export const rateLimitKey = z
  .strictObject({
    header: z.string().regex(HEADER_NAME, 'must be a valid HTTP header name').optional(),
    clientIP: z.literal(true, { message: 'must be true (or leave it out)' }).optional(),
  })
  .refine((k) => (k.header === undefined) !== (k.clientIP === undefined), { message: 'give exactly one of header or clientIP' })
  .transform((k): { header: string } | { clientIP: true } => (k.header !== undefined ? { header: k.header } : { clientIP: true }));

const UNIT_WORDS: [RegExp, string][] = [
  [/^(ms|msec|msecs|millis|millisecond|milliseconds)$/i, 'ms'],
  [/^(s|sec|secs|second|seconds)$/i, 's'],
  [/^(m|min|mins|minute|minutes)$/i, 'm'],
  [/^(h|hr|hrs|hour|hours)$/i, 'h'],
];

/** For a unit typo such as `1sec`, `10 seconds` or `minute`, the duration that was probably meant. */
export function durationHint(text: string): string | undefined {
  const m = /^\s*(\d+(?:\.\d+)?)?\s*([A-Za-z]+)\s*$/.exec(text);
  if (!m) return undefined;
  const unit = UNIT_WORDS.find(([re]) => re.test(m[2]!))?.[1];
  return unit ? `${m[1] ?? '1'}${unit}` : undefined;
}

export const rateLimitPolicySpec = z.strictObject({
  targetRef: policyTargetRef,
  local: z.strictObject({
    requests: z.number().int('must be a whole number').min(1, 'must be greater than zero').max(1_000_000_000, 'must be at most 1000000000'),
    per,
    /** One bucket per value of this key; absent: one bucket shared by every request. */
    by: rateLimitKey.optional(),
  }),
});

export const RateLimitPolicy = document('RateLimitPolicy', rateLimitPolicySpec);
export type RateLimitPolicy = z.infer<typeof RateLimitPolicy>;
