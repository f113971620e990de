// Building blocks shared by every policy kind of signalbox.dev/v1alpha1.
import { z } from 'zod';
import { MAX_DURATION_MESSAGE, MAX_DURATION_MS, regexSizeProblems, regexSyntaxProblems } from './envoy-limits.js';

export const API_VERSION = 'signalbox.dev/v1alpha1';

export const DNS_LABEL = /^[a-z0-9]([-a-z0-9]*[a-z0-9])?$/;

export const name = z
  .string()
  .max(63, 'must be at most 63 characters')
  .regex(DNS_LABEL, 'must be a DNS label: lower-case letters, digits and "-", starting and ending with a letter or digit')
  .meta({ patternErrorMessage: 'must be a DNS label: lower-case letters, digits and "-", starting and ending with a letter or digit' });

const DURATION = /^(\d+(\.\d+)?(ms|s|m|h))+$/;

/** What the JSON Schema (`signalbox schema`) says of a duration: editors flag `5 sec` as they type. */
export const DURATION_JSON_SCHEMA = {
  pattern: DURATION.source,
  description: 'a duration: a number followed by ms, s, m or h ("250ms", "5s", "1m30s", "24h")',
  // VS Code's and yaml-language-server's message for a failed pattern (other validators ignore it).
  patternErrorMessage: 'must be a duration such as "250ms", "5s", "1m" or "24h"',
} as const;
const UNIT_MS: Record<string, number> = { ms: 1, s: 1000, m: 60_000, h: 3_600_000 };

/** Parses a duration such as `250ms`, `5s`, `1m30s` or `24h` into milliseconds. */
export function parseDuration(text: string): number | undefined {
  if (!DURATION.test(text)) return undefined;
  let total = 0;
  for (const m of text.matchAll(/(\d+(?:\.\d+)?)(ms|s|m|h)/g)) total += Number(m[1]) * UNIT_MS[m[2]!]!;
  return Math.round(total);
}

/** A duration string, validated and kept as text (the model converts it with parseDuration). */
export const duration = z
  .string()
  .refine((s) => parseDuration(s) !== undefined, {
    message: 'must be a duration such as "250ms", "5s", "1m" or "24h"',
    abort: true, // a malformed duration gets one error, not also "must be greater than zero"
  })
  .refine((s) => (parseDuration(s) ?? 0) > 0, { message: 'must be greater than zero' })
  .refine((s) => (parseDuration(s) ?? 0) <= MAX_DURATION_MS, { message: MAX_DURATION_MESSAGE })
  .meta(DURATION_JSON_SCHEMA);

export const port = z.number().int('must be a whole number').min(1, 'must be a port from 1 to 65535').max(65535, 'must be a port from 1 to 65535');

export const percent = z.number().min(0, 'must be a percentage from 0 to 100').max(100, 'must be a percentage from 0 to 100');

export const labels = z.record(z.string().min(1).max(253), z.string().max(253));

export const metadata = z.strictObject({
  name,
  labels: labels.optional(),
  annotations: z.record(z.string(), z.string()).optional(),
});

/** Accepts a regular expression Envoy's RE2 is likely to accept: re2js checks the RE2 syntax and estimates the size. */
export const regex = z
  .string()
  .min(1)
  .superRefine((s, ctx) => {
    const syntax = regexSyntaxProblems(s);
    for (const message of syntax) ctx.addIssue({ code: 'custom', message });
    if (syntax.length) return;
    for (const message of regexSizeProblems(s)) ctx.addIssue({ code: 'custom', message });
  });

export function document<K extends string, S extends z.ZodType>(kind: K, spec: S) {
  return z.strictObject({
    apiVersion: z.literal(API_VERSION),
    kind: z.literal(kind),
    metadata,
    spec,
  });
}

/** The target of a policy that applies to traffic: a Gateway (or one listener), an HTTPRoute (or one named rule), or a Service. */
export const policyTargetRef = z
  .strictObject({
    kind: z.enum(['Gateway', 'HTTPRoute', 'Service']),
    name,
    /** A Gateway's listener, or an HTTPRoute's named rule; absent: all of them. */
    sectionName: name.optional(),
  })
  .refine((t) => t.kind !== 'Service' || t.sectionName === undefined, {
    message: 'sectionName is for a Gateway listener or an HTTPRoute rule, not a Service',
    path: ['sectionName'],
  });
