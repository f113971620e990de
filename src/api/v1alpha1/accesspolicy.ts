import { z } from 'zod';
import { document, name } from './common.js';
import { pathMatch } from './httproute.js';

const source = z
  .strictObject({ service: name.optional(), gateway: name.optional() })
  .refine((s) => (s.service === undefined) !== (s.gateway === undefined), { message: 'give exactly one of service or gateway' });

const operation = z.strictObject({
  methods: z
    .array(z.enum(['GET', 'HEAD', 'POST', 'PUT', 'DELETE', 'CONNECT', 'OPTIONS', 'TRACE', 'PATCH']))
    .min(1)
    .optional(),
  paths: z.array(pathMatch).min(1).optional(),
});

export const accessPolicySpec = z.strictObject({
  targetRef: z.strictObject({ kind: z.literal('Service'), name }),
  default: z.enum(['Deny', 'Allow']).default('Deny'),
  rules: z
    .array(
      z.strictObject({
        from: z.array(source).min(1),
        action: z.enum(['Allow', 'Deny']),
        to: z.array(operation).min(1).optional(),
      }),
    )
    .default([]),
});

export const AccessPolicy = document('AccessPolicy', accessPolicySpec);
export type AccessPolicy = z.infer<typeof AccessPolicy>;
