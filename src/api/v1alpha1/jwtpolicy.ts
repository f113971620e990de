// JWTPolicy: requests to a Gateway (or one of its listeners), an HTTPRoute (or one of its rules) or
// a Service (the inbound listener of its sidecars) must carry a JWT that this policy accepts. The
// checks are made by Signalbox's ext_authz service; Envoy asks it before routing the request.
import { z } from 'zod';
import { document, DURATION_JSON_SCHEMA, parseDuration, policyTargetRef } from './common.js';
import { MAX_DURATION_MESSAGE, MAX_DURATION_MS } from './envoy-limits.js';

const HEADER_NAME = /^[A-Za-z0-9!#$%&'*+\-.^_`|~]+$/;
const COOKIE_NAME = /^[A-Za-z0-9!#$%&'*+\-.^_`|~]+$/;

/** Asymmetric JWS algorithms only: HMAC would need a shared secret and `none` checks nothing. */
export const JWT_ALGORITHMS = ['RS256', 'RS384', 'RS512', 'PS256', 'PS384', 'PS512', 'ES256', 'ES384', 'EdDSA'] as const;
export type JwtAlgorithm = (typeof JWT_ALGORITHMS)[number];

/** Headers a claim may not be forwarded into: hop-by-hop, framing, routing and credentials. */
export const RESERVED_FORWARD_HEADERS = [
  'host',
  'authorization',
  'cookie',
  'content-length',
  'content-type',
  'transfer-encoding',
  'connection',
  'keep-alive',
  'proxy-connection',
  'te',
  'trailer',
  'upgrade',
  'expect',
];

export const DEFAULT_TOKEN_SOURCE = { header: 'authorization', prefix: 'Bearer ' } as const;
export const DEFAULT_MAX_TOKEN_SIZE = 8192;

/** A duration that may also be zero (`0s`), for a clock skew. */
const durationOrZero = z
  .string()
  .refine((s) => parseDuration(s) !== undefined, { message: 'must be a duration such as "0s", "30s" or "1m"', abort: true })
  .refine((s) => parseDuration(s)! <= MAX_DURATION_MS, { message: MAX_DURATION_MESSAGE })
  .meta(DURATION_JSON_SCHEMA);

const positiveDuration = durationOrZero.refine((s) => (parseDuration(s) ?? 0) > 0, { message: 'must be greater than zero' });

const headerName = z.string().regex(HEADER_NAME, 'must be a valid HTTP header name');

const tokenSource = z
  .strictObject({
    header: headerName.optional(),
    /** Text before the token in the header, e.g. "Bearer " (compared case-insensitively). */
    prefix: z.string().max(64).optional(),
    cookie: z.string().regex(COOKIE_NAME, 'must be a valid cookie name').optional(),
    query: z
      .string()
      .min(1)
      .max(128)
      .regex(/^[A-Za-z0-9._~-]+$/, 'must be a plain query parameter name')
      .optional(),
  })
  .superRefine((s, ctx) => {
    const given = [s.header, s.cookie, s.query].filter((x) => x !== undefined).length;
    if (given !== 1) ctx.addIssue({ code: 'custom', message: 'give exactly one of header, cookie or query' });
    if (s.prefix !== undefined && s.header === undefined) ctx.addIssue({ code: 'custom', path: ['prefix'], message: 'only a header has a prefix' });
  })
  .transform((s): { header: string; prefix?: string } | { cookie: string } | { query: string } =>
    s.header !== undefined
      ? { header: s.header.toLowerCase(), ...(s.prefix ? { prefix: s.prefix } : {}) }
      : s.cookie !== undefined
        ? { cookie: s.cookie }
        : { query: s.query! },
  );

const scalar = z.union([z.string(), z.number(), z.boolean()]);

const claimName = z.string().min(1).max(256);

const requireRule = z
  .strictObject({
    claim: claimName,
    /** The claim is an array holding this value, or a space-separated string (like `scope`) holding it as a word. */
    contains: z.string().min(1).optional(),
    /** The claim (or, for an array claim, one of its elements) is one of these values. */
    in: z.array(scalar).min(1).optional(),
    /** The claim is exactly this value. */
    equals: scalar.optional(),
  })
  .refine((r) => [r.contains, r.in, r.equals].filter((x) => x !== undefined).length === 1, { message: 'give exactly one of contains, in or equals' })
  .transform(
    (r): { claim: string; contains: string } | { claim: string; in: (string | number | boolean)[] } | { claim: string; equals: string | number | boolean } =>
      r.contains !== undefined
        ? { claim: r.claim, contains: r.contains }
        : r.in !== undefined
          ? { claim: r.claim, in: r.in }
          : { claim: r.claim, equals: r.equals! },
  );

const forwardClaim = z.strictObject({
  claim: claimName,
  header: headerName.refine((h) => !RESERVED_FORWARD_HEADERS.includes(h.toLowerCase()), {
    message: `must not be one of ${RESERVED_FORWARD_HEADERS.join(', ')}`,
  }),
});

const jwkSet = z.strictObject({ keys: z.array(z.record(z.string(), z.unknown())).min(1, 'a key set needs at least one key') });

const jwks = z
  .strictObject({
    /** An https URL (plain http only on loopback) serving a JSON Web Key Set. */
    uri: z.url({ protocol: /^https?$/, message: 'must be an http(s) URL' }).optional(),
    /** A JWKS file, relative to the policy directory; re-read when it changes. */
    file: z.string().min(1).optional(),
    /** The key set itself. */
    inline: jwkSet.optional(),
    /** Per fetch of `uri`. */
    timeout: positiveDuration.optional(),
    /** Bounds on how long a fetched key set is used before it is fetched again (Cache-Control max-age is honoured within them). */
    cacheDuration: z.strictObject({ min: positiveDuration.optional(), max: positiveDuration.optional() }).optional(),
    /** At most one extra fetch per this interval when a token names a key the set does not have. */
    cooldown: positiveDuration.optional(),
    /** Status when no key can be had (endpoint down and nothing cached): 503 (default) or 401. */
    unavailableStatus: z.union([z.literal(503), z.literal(401)]).optional(),
  })
  .superRefine((j, ctx) => {
    const given = [j.uri, j.file, j.inline].filter((x) => x !== undefined).length;
    if (given !== 1) ctx.addIssue({ code: 'custom', message: 'give exactly one of uri, file or inline' });
    if (j.uri === undefined) {
      for (const f of ['timeout', 'cacheDuration'] as const) if (j[f] !== undefined) ctx.addIssue({ code: 'custom', path: [f], message: 'only used with uri' });
    }
    const u = j.uri !== undefined && URL.canParse(j.uri) ? new URL(j.uri) : undefined; // a bad URL is reported by the field
    if (u) {
      const loopback = u.hostname === 'localhost' || u.hostname === '[::1]' || /^127\.\d+\.\d+\.\d+$/.test(u.hostname);
      if (u.protocol === 'http:' && !loopback)
        ctx.addIssue({ code: 'custom', path: ['uri'], message: 'must be https (plain http is only allowed on loopback)' });
      if (u.username || u.password) ctx.addIssue({ code: 'custom', path: ['uri'], message: 'must not carry credentials' });
    }
    const min = j.cacheDuration?.min ? parseDuration(j.cacheDuration.min) : undefined;
    const max = j.cacheDuration?.max ? parseDuration(j.cacheDuration.max) : undefined;
    if (min !== undefined && max !== undefined && max < min)
      ctx.addIssue({ code: 'custom', path: ['cacheDuration', 'max'], message: `must not be shorter than min ${j.cacheDuration!.min}` });
  });

export const jwtPolicySpec = z.strictObject({
  targetRef: policyTargetRef,
  /** The exact `iss` a token must carry. */
  issuer: z.string().min(1),
  /** A token's `aud` must hold at least one of these; absent: `aud` is not checked. */
  audiences: z.array(z.string().min(1)).min(1).optional(),
  jwks,
  algorithms: z
    .array(
      z.string().superRefine((a, ctx) => {
        if ((JWT_ALGORITHMS as readonly string[]).includes(a)) return;
        const why = /^HS\d+$/.test(a)
          ? 'HMAC needs a shared secret; JWTs are verified here with public keys only'
          : a.toLowerCase() === 'none'
            ? '"none" means no signature at all'
            : 'not a supported JWS algorithm';
        ctx.addIssue({ code: 'custom', message: `${why}: use one of ${JWT_ALGORITHMS.join(', ')}` });
      }),
    )
    .min(1)
    .transform((list) => list as JwtAlgorithm[])
    .optional(),
  /** Leeway for exp, nbf and iat. */
  clockSkew: durationOrZero.refine((s) => (parseDuration(s) ?? 0) <= 300_000, { message: 'must be at most 5m' }).optional(),
  /** Where the token is looked for, in order; default: the Authorization header with "Bearer ". */
  from: z.array(tokenSource).min(1).optional(),
  require: z.array(requireRule).optional(),
  forwardClaims: z.array(forwardClaim).optional(),
  /** true: a request without a token passes (a bad token is still rejected). */
  optional: z.boolean().optional(),
  /** Longest token accepted, in bytes; longer ones are rejected before any parsing. */
  maxTokenSize: z.number().int('must be a whole number').min(256, 'must be at least 256').max(65_536, 'must be at most 65536').optional(),
});

export const JWTPolicy = document('JWTPolicy', jwtPolicySpec);
export type JWTPolicy = z.infer<typeof JWTPolicy>;
