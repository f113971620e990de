import { z } from 'zod';
import { document, duration, parseDuration, percent } from './common.js';

export const RETRY_ON = [
  '5xx',
  'gateway-error',
  'reset',
  'reset-before-request',
  'connect-failure',
  'envoy-ratelimited',
  'retriable-4xx',
  'refused-stream',
  'retriable-status-codes',
  'retriable-headers',
  'http3-post-connect-failure',
] as const;

export const retries = z.strictObject({
  attempts: z.number().int().min(0, 'must be 0 or more').max(10, 'must be at most 10'),
  perTryTimeout: duration.optional(),
  retryOn: z.array(z.enum(RETRY_ON)).min(1).optional(),
  retriableStatusCodes: z.array(z.number().int().min(100).max(599)).min(1).optional(),
  backoff: z.strictObject({ baseInterval: duration, maxInterval: duration.optional() }).optional(),
});

export const meshSpec = z.strictObject({
  trustDomain: z
    .string()
    .regex(/^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$/, 'must be a lower-case DNS name')
    .default('signalbox.local'),
  mtls: z
    .strictObject({
      mode: z.enum(['strict', 'permissive', 'disabled']).default('strict'),
      // Renewal happens at two thirds of the TTL: below 10s proxies would churn, above 90 days a leaked key lives too long.
      certTTL: duration
        .refine((d) => (parseDuration(d) ?? 0) >= 10_000 && (parseDuration(d) ?? 0) <= 90 * 24 * 3_600_000, {
          message: 'must be between 10s and 2160h (90 days)',
        })
        .default('24h'),
    })
    .optional(),
  defaults: z
    .strictObject({
      timeout: duration.optional(),
      retries: retries.optional(),
    })
    .optional(),
  tracing: z
    .strictObject({
      otlp: z.strictObject({ service: z.string().min(1), sampling: percent.default(100) }),
    })
    .optional(),
});

export const Mesh = document('Mesh', meshSpec);
export type Mesh = z.infer<typeof Mesh>;
