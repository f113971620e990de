import { z } from 'zod';
import { document, name, port } from './common.js';

export const HOSTNAME = /^(\*|(\*\.)?[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*)$/;
export const hostname = z.string().regex(HOSTNAME, 'must be "*", a host name, or a wildcard like "*.example.com"');

export const gatewayListener = z
  .strictObject({
    name,
    port,
    protocol: z.enum(['HTTP', 'HTTPS']),
    hostnames: z.array(hostname).min(1).optional(),
    tls: z.strictObject({ certificateFile: z.string().min(1), privateKeyFile: z.string().min(1) }).optional(),
  })
  .superRefine((l, ctx) => {
    if (l.protocol === 'HTTPS' && !l.tls) ctx.addIssue({ code: 'custom', path: ['tls'], message: 'required for an HTTPS listener' });
    if (l.protocol === 'HTTP' && l.tls) ctx.addIssue({ code: 'custom', path: ['tls'], message: 'only allowed on an HTTPS listener' });
  });

export const gatewaySpec = z.strictObject({ listeners: z.array(gatewayListener).min(1) }).superRefine((spec, ctx) => {
  const names = new Map<string, number>();
  const ports = new Map<number, number>();
  spec.listeners.forEach((l, i) => {
    if (names.has(l.name))
      ctx.addIssue({ code: 'custom', path: ['listeners', i, 'name'], message: `duplicate listener name "${l.name}" (also listeners[${names.get(l.name)}])` });
    else names.set(l.name, i);
    if (ports.has(l.port))
      ctx.addIssue({ code: 'custom', path: ['listeners', i, 'port'], message: `port ${l.port} is already used by listeners[${ports.get(l.port)}]` });
    else ports.set(l.port, i);
  });
});

export const Gateway = document('Gateway', gatewaySpec);
export type Gateway = z.infer<typeof Gateway>;
