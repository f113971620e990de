import { z } from 'zod';
import { document, labels, name, port } from './common.js';
import { isIP } from 'node:net';

export const endpoint = z.strictObject({
  address: z.string().refine((a) => isIP(a) !== 0, { message: 'must be an IPv4 or IPv6 address' }),
  port,
  labels: labels.optional(),
  sidecarPort: port.optional(),
});

export const serviceSpec = z
  .strictObject({
    protocol: z.enum(['http', 'http2', 'grpc', 'tcp']).default('http'),
    port,
    endpoints: z.array(endpoint).optional(),
    consul: z
      .strictObject({
        service: z.string().min(1),
        tags: z.array(z.string().min(1)).optional(),
        datacenter: z.string().min(1).optional(),
      })
      .optional(),
    subsets: z.array(z.strictObject({ name, labels: labels.refine((l) => Object.keys(l).length > 0, { message: 'must name at least one label' }) })).optional(),
  })
  .superRefine((spec, ctx) => {
    if (spec.endpoints && spec.consul) {
      ctx.addIssue({ code: 'custom', path: ['consul'], message: 'give either endpoints (static) or consul (discovery), not both' });
    }
    if (!spec.endpoints && !spec.consul) {
      ctx.addIssue({ code: 'custom', path: ['endpoints'], message: 'required: give static endpoints or a consul section' });
    }
    const seen = new Map<string, number>();
    spec.endpoints?.forEach((e, i) => {
      const key = `${e.address}:${e.port}`;
      const first = seen.get(key);
      if (first !== undefined) ctx.addIssue({ code: 'custom', path: ['endpoints', i], message: `duplicate endpoint ${key} (also endpoints[${first}])` });
      else seen.set(key, i);
    });
    const names = new Set<string>();
    spec.subsets?.forEach((s, i) => {
      if (names.has(s.name)) ctx.addIssue({ code: 'custom', path: ['subsets', i, 'name'], message: `duplicate subset "${s.name}"` });
      names.add(s.name);
    });
  });

export const Service = document('Service', serviceSpec);
export type Service = z.infer<typeof Service>;
