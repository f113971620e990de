// RateLimitPolicy on a Gateway, an HTTPRoute, or a Service's sidecars (inbound): `local` token
// buckets each proxy keeps alone, and `global` counters every proxy shares (Signalbox's rate-limit
// service, backed by Redis). A policy has one or both; local runs first, as a cheap shield.
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
    ctx.addIssue({
      code: 'custom',
      continue: false,
      message: `must be a duration such as "1s", "1m" or "1h" (a number followed by ms, s, m or h)${hint && hint !== s ? ` (did you mean "${hint}"?)` : ''}`,
    });
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

/** The windows of a global limit: fixed windows aligned to the clock (UTC), as Envoy's rate-limit API names them. */
export const GLOBAL_UNITS = ['second', 'minute', 'hour', 'day'] as const;
export type GlobalUnit = (typeof GLOBAL_UNITS)[number];
export const GLOBAL_UNIT_MS: Record<GlobalUnit, number> = { second: 1_000, minute: 60_000, hour: 3_600_000, day: 86_400_000 };

const GLOBAL_UNIT_HINTS: [RegExp, GlobalUnit][] = [
  [/^(1\s*)?(s|sec|secs|seconds?)$/i, 'second'],
  [/^(1\s*)?(m|min|mins|minutes?)$/i, 'minute'],
  [/^(1\s*)?(h|hr|hrs|hours?)$/i, 'hour'],
  [/^(1\s*)?(d|days?|24\s*h)$/i, 'day'],
];

const globalPer = z.string().superRefine((s, ctx) => {
  if ((GLOBAL_UNITS as readonly string[]).includes(s)) return;
  const hint = GLOBAL_UNIT_HINTS.find(([re]) => re.test(s.trim()))?.[1];
  ctx.addIssue({
    code: 'custom',
    message: `must be one of second, minute, hour, day (a global limit counts in fixed windows of one unit)${hint ? ` (did you mean "${hint}"?)` : ''}`,
  });
});

/** A JWT claim name as JWTPolicy forwardClaims names it. */
const CLAIM = /^[A-Za-z0-9_.:-]{1,128}$/;

/** What a global limit counts by: a header, the client IP, the path, a forwarded JWT claim. */
export const globalRateLimitKey = z
  .strictObject({
    header: z.string().regex(HEADER_NAME, 'must be a valid HTTP header name').optional(),
    clientIP: z.literal(true, { message: 'must be true (or leave it out)' }).optional(),
    path: z.literal(true, { message: 'must be true (or leave it out)' }).optional(),
    claim: z.string().regex(CLAIM, 'must be a JWT claim name (letters, digits, "_", ".", ":", "-")').optional(),
  })
  .refine((k) => [k.header, k.clientIP, k.path, k.claim].filter((v) => v !== undefined).length === 1, {
    message: 'give exactly one of header, clientIP, path or claim',
  })
  .transform(
    (k): GlobalRateLimitKey =>
      k.header !== undefined ? { header: k.header } : k.clientIP ? { clientIP: true } : k.path ? { path: true } : { claim: k.claim! },
  );
export type GlobalRateLimitKey = { header: string } | { clientIP: true } | { path: true } | { claim: string };

const requests = z.number().int('must be a whole number').min(1, 'must be greater than zero').max(1_000_000_000, 'must be at most 1000000000');

/** Most limits in one policy's global section (each is one descriptor, one Redis key per request). */
export const MAX_GLOBAL_LIMITS = 8;

export const globalRateLimit = z.strictObject({
  /** allow (default): while Redis cannot be reached, requests pass uncounted; deny: they get 503. */
  failureMode: z.enum(['allow', 'deny'], { message: 'must be "allow" or "deny"' }).optional(),
  limits: z
    .array(
      z.strictObject({
        requests,
        per: globalPer,
        /** One counter per value of this key; absent: one counter shared by every request. */
        by: globalRateLimitKey.optional(),
      }),
    )
    .min(1, 'give at least one limit')
    .max(MAX_GLOBAL_LIMITS, `at most ${MAX_GLOBAL_LIMITS} limits per policy`),
});

/**
 * The refusal statuses Envoy can send (its HttpStatus takes only the codes of envoy.type.v3.StatusCode
 * and answers 429 for anything below 400): 400-417, 421-424, 426, 428, 429, 431, 500-508, 510, 511.
 */
export const REFUSAL_STATUS_CODES: readonly number[] = [
  ...Array.from({ length: 18 }, (_, i) => 400 + i),
  421,
  422,
  423,
  424,
  426,
  428,
  429,
  431,
  ...Array.from({ length: 9 }, (_, i) => 500 + i),
  510,
  511,
];

const refusalStatus = z
  .number()
  .int('must be a whole number')
  .refine((c) => REFUSAL_STATUS_CODES.includes(c), {
    message: 'must be an HTTP status Envoy can refuse with: 400-417, 421-424, 426, 428, 429, 431, 500-508, 510 or 511',
  })
  .meta({ enum: [...REFUSAL_STATUS_CODES], description: 'the HTTP status of a refused request (default 429)' });

/**
 * A local limit, parsed into the shape the rest of Signalbox carries unchanged (the model, the IR,
 * explain): the window in milliseconds, every other setting as written. A new setting added here
 * reaches the filter module without being copied by name on the way.
 */
export const localRateLimit = z
  .strictObject({
    requests,
    per,
    /** One bucket per value of this key; absent: one bucket shared by every request. */
    by: rateLimitKey.optional(),
    /** The status of a refused request (default 429); e.g. 503 for clients that back off only on it. */
    statusCode: refusalStatus.optional(),
  })
  .transform(({ requests, per, ...rest }) => ({ requests, perMs: parseDuration(per)!, ...rest }));
export type LocalRateLimit = z.output<typeof localRateLimit>;

export const rateLimitPolicySpec = z
  .strictObject({
    targetRef: policyTargetRef,
    local: localRateLimit.optional(),
    global: globalRateLimit.optional(),
  })
  .refine((s) => s.local !== undefined || s.global !== undefined, { message: 'give local, global or both' });

export const RateLimitPolicy = document('RateLimitPolicy', rateLimitPolicySpec);
export type RateLimitPolicy = z.infer<typeof RateLimitPolicy>;
