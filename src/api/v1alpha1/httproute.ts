import { z } from 'zod';
import { document, duration, name, percent, port, regex } from './common.js';
import { headerValueProblems, matchedHeaderValueProblems, modifiableHeaderProblems, pathValueProblems, writtenPathProblems } from './envoy-limits.js';
import { hostname } from './gateway.js';
import { retries } from './mesh.js';

const HEADER_NAME = /^:?[A-Za-z0-9!#$%&'*+\-.^_`|~]+$/;
const headerName = z.string().regex(HEADER_NAME, 'must be a valid HTTP header name');

export const pathMatch = z
  .strictObject({
    type: z.enum(['Exact', 'PathPrefix', 'RegularExpression']).default('PathPrefix'),
    value: z.string().min(1),
  })
  .superRefine((p, ctx) => {
    if (p.type === 'RegularExpression') {
      const r = regex.safeParse(p.value);
      if (!r.success) for (const i of r.error.issues) ctx.addIssue({ code: 'custom', path: ['value'], message: i.message });
    } else if (!p.value.startsWith('/')) {
      ctx.addIssue({ code: 'custom', path: ['value'], message: 'must start with "/"' });
    } else {
      for (const message of pathValueProblems(p.value)) ctx.addIssue({ code: 'custom', path: ['value'], message });
    }
  });

const valueMatch = z
  .strictObject({
    name: headerName,
    type: z.enum(['Exact', 'RegularExpression', 'Present']).default('Exact'),
    value: z.string().optional(),
  })
  .superRefine((m, ctx) => {
    if (m.type !== 'Present' && m.value === undefined) ctx.addIssue({ code: 'custom', path: ['value'], message: `required for type ${m.type}` });
    if (m.type === 'RegularExpression' && m.value !== undefined) {
      const r = regex.safeParse(m.value);
      if (!r.success) for (const i of r.error.issues) ctx.addIssue({ code: 'custom', path: ['value'], message: i.message });
    }
    if (m.type === 'Exact' && m.value !== undefined)
      for (const message of matchedHeaderValueProblems(m.value)) ctx.addIssue({ code: 'custom', path: ['value'], message });
  });

export const routeMatch = z.strictObject({
  path: pathMatch.optional(),
  method: z.enum(['GET', 'HEAD', 'POST', 'PUT', 'DELETE', 'CONNECT', 'OPTIONS', 'TRACE', 'PATCH']).optional(),
  headers: z.array(valueMatch).optional(),
  queryParams: z.array(valueMatch).optional(),
});

/** A path Envoy writes into the request (rewrite) or the Location header (redirect). */
const writtenPath = z
  .string()
  .startsWith('/')
  .superRefine((p, ctx) => {
    for (const message of writtenPathProblems(p)) ctx.addIssue({ code: 'custom', message });
  });

const pathModifier = z
  .strictObject({ replacePrefixMatch: writtenPath.optional(), replaceFullPath: writtenPath.optional() })
  .refine((p) => (p.replacePrefixMatch === undefined) !== (p.replaceFullPath === undefined), {
    message: 'give exactly one of replacePrefixMatch or replaceFullPath',
  });

/** A header Envoy may set, add or remove (not a pseudo-header, not Host). */
const modifiableHeaderName = headerName.superRefine((n, ctx) => {
  for (const message of modifiableHeaderProblems(n)) ctx.addIssue({ code: 'custom', message });
});
const header = z.strictObject({
  name: modifiableHeaderName,
  value: z.string().superRefine((v, ctx) => {
    for (const message of headerValueProblems(v)) ctx.addIssue({ code: 'custom', message });
  }),
});
const headerModifier = z
  .strictObject({ set: z.array(header).optional(), add: z.array(header).optional(), remove: z.array(modifiableHeaderName).optional() })
  .refine((h) => (h.set?.length ?? 0) + (h.add?.length ?? 0) + (h.remove?.length ?? 0) > 0, { message: 'must set, add or remove at least one header' });

export const routeFilter = z.discriminatedUnion('type', [
  z.strictObject({
    type: z.literal('URLRewrite'),
    urlRewrite: z.strictObject({ hostname: hostname.optional(), path: pathModifier.optional() }),
  }),
  z.strictObject({ type: z.literal('RequestHeaderModifier'), requestHeaderModifier: headerModifier }),
  z.strictObject({ type: z.literal('ResponseHeaderModifier'), responseHeaderModifier: headerModifier }),
  z.strictObject({
    type: z.literal('RequestRedirect'),
    requestRedirect: z.strictObject({
      scheme: z.enum(['http', 'https']).optional(),
      hostname: hostname.optional(),
      port: port.optional(),
      path: pathModifier.optional(),
      statusCode: z.union([z.literal(301), z.literal(302), z.literal(303), z.literal(307), z.literal(308)]).default(302),
    }),
  }),
  z.strictObject({
    type: z.literal('FaultInjection'),
    faultInjection: z
      .strictObject({
        delay: z.strictObject({ fixed: duration, percent }).optional(),
        abort: z.strictObject({ httpStatus: z.number().int().min(200).max(599), percent }).optional(),
      })
      .refine((f) => f.delay || f.abort, { message: 'give a delay, an abort, or both' }),
  }),
]);

export const backendRef = z.strictObject({
  kind: z.literal('Service').default('Service'),
  name,
  subset: name.optional(),
  weight: z.number().int().min(0, 'must be 0 or more').max(1_000_000).default(1),
});

export const parentRef = z.strictObject({
  kind: z.enum(['Gateway', 'Service']),
  name,
  sectionName: name.optional(),
});

export const routeRule = z
  .strictObject({
    name: name.optional(),
    matches: z.array(routeMatch).min(1).optional(),
    backendRefs: z.array(backendRef).min(1).optional(),
    timeout: duration.optional(),
    retries: retries.optional(),
    filters: z.array(routeFilter).optional(),
  })
  .superRefine((rule, ctx) => {
    const types = (rule.filters ?? []).map((f) => f.type);
    const redirect = types.includes('RequestRedirect');
    types.forEach((t, i) => {
      if (types.indexOf(t) !== i && t !== 'RequestHeaderModifier' && t !== 'ResponseHeaderModifier') {
        ctx.addIssue({ code: 'custom', path: ['filters', i, 'type'], message: `${t} may appear only once per rule` });
      }
    });
    if (redirect && rule.backendRefs)
      ctx.addIssue({ code: 'custom', path: ['backendRefs'], message: 'a rule with a RequestRedirect filter must not have backendRefs' });
    if (redirect && types.includes('URLRewrite'))
      ctx.addIssue({ code: 'custom', path: ['filters'], message: 'RequestRedirect and URLRewrite cannot be combined' });
    if (!redirect && !rule.backendRefs)
      ctx.addIssue({ code: 'custom', path: ['backendRefs'], message: 'required (at least one backend) unless the rule redirects' });
    if (rule.backendRefs?.every((b) => b.weight === 0))
      ctx.addIssue({ code: 'custom', path: ['backendRefs'], message: 'at least one backend needs a weight above 0' });
    const prefixRewrite = (rule.filters ?? []).some(
      (f) =>
        (f.type === 'URLRewrite' && f.urlRewrite.path?.replacePrefixMatch !== undefined) ||
        (f.type === 'RequestRedirect' && f.requestRedirect.path?.replacePrefixMatch !== undefined),
    );
    if (prefixRewrite && (rule.matches ?? []).some((m) => m.path && m.path.type !== 'PathPrefix')) {
      ctx.addIssue({ code: 'custom', path: ['filters'], message: 'replacePrefixMatch needs every match of the rule to use a PathPrefix path' });
    }
  });

export const httpRouteSpec = z
  .strictObject({
    parentRefs: z.array(parentRef).min(1),
    hostnames: z.array(hostname).min(1).optional(),
    rules: z.array(routeRule).min(1),
  })
  .superRefine((spec, ctx) => {
    const names = new Map<string, number>();
    spec.rules.forEach((r, i) => {
      if (!r.name) return;
      if (names.has(r.name))
        ctx.addIssue({ code: 'custom', path: ['rules', i, 'name'], message: `duplicate rule name "${r.name}" (also rules[${names.get(r.name)}])` });
      else names.set(r.name, i);
    });
  });

export const HTTPRoute = document('HTTPRoute', httpRouteSpec);
export type HTTPRoute = z.infer<typeof HTTPRoute>;
export type RouteRule = z.infer<typeof routeRule>;
export type RouteMatch = z.infer<typeof routeMatch>;
export type RouteFilter = z.infer<typeof routeFilter>;
