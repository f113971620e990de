// JWTPolicy: resolve targets, apply defaults, check key sets given in files or inline, and work out
// which policies apply to which Gateway listeners, HTTPRoute rules and Services. Several policies on
// one target are all enforced (a request must satisfy each); two that forward different claims into
// one header on the same target conflict.
import path from 'node:path';
import { importJWK, type JWK } from 'jose';
import { parseDuration, type JWTPolicy } from '../api/v1alpha1/index.js';
import { DEFAULT_MAX_TOKEN_SIZE, DEFAULT_TOKEN_SOURCE, JWT_ALGORITHMS, type JwtAlgorithm } from '../api/v1alpha1/jwtpolicy.js';
import { ErrorCode } from '../errors.js';
import type { LoadedDoc, SourceRef } from '../api/documents.js';
import { didYouMean } from '../util/did-you-mean.js';
import type { BuildOptions, GatewayModel, PolicyFileRead, RouteModel, ServiceModel } from './model.js';

export type JwtTargetKind = 'Gateway' | 'HTTPRoute' | 'Service';

export type TokenSource = { header: string; prefix?: string } | { cookie: string } | { query: string };

export type ClaimRule =
  | { claim: string; contains: string }
  | { claim: string; in: (string | number | boolean)[] }
  | { claim: string; equals: string | number | boolean };

export type JwksModel =
  | { kind: 'uri'; uri: string; timeoutMs: number; minCacheMs: number; maxCacheMs: number; cooldownMs: number }
  /**
   * `path` is absolute; `file` is as written in the policy. `confine`: where later reads (the authz
   * engine re-reads the file when it changes) stay, with the rules of policyFileReader: `file`
   * relative to `policyDir`, never under `dataDir` or `forbidden` (all absolute). Without it (a
   * hand-made model) the file may not leave its own folder.
   */
  | { kind: 'file'; file: string; path: string; cooldownMs: number; confine?: JwksFileConfinement }
  | { kind: 'inline'; keys: JWK[] };

export interface JwksFileConfinement {
  policyDir: string;
  dataDir?: string;
  forbidden?: string[];
}

export interface JwtPolicyModel {
  name: string;
  target: { kind: JwtTargetKind; name: string; sectionName?: string };
  issuer: string;
  /** Empty: `aud` is not checked. */
  audiences: string[];
  algorithms: JwtAlgorithm[];
  clockSkewMs: number;
  from: TokenSource[];
  require: ClaimRule[];
  forwardClaims: { claim: string; header: string }[];
  optional: boolean;
  maxTokenBytes: number;
  jwks: JwksModel;
  /** Status when no verification key can be had. */
  unavailableStatus: 401 | 503;
  source: SourceRef;
}

export interface JwtModel {
  /** By name, in name order. */
  policies: Map<string, JwtPolicyModel>;
  /** Policy names by target key (see jwtTargetKey), each list in name order. */
  byTarget: Map<string, string[]>;
}

export const JWKS_DEFAULTS = { timeoutMs: 5_000, minCacheMs: 60_000, maxCacheMs: 24 * 3_600_000, cooldownMs: 10_000, clockSkewMs: 30_000 };

/** `<kind>/<name>`, or `<kind>/<name>/<section>` for one Gateway listener or one HTTPRoute rule. */
export function jwtTargetKey(kind: JwtTargetKind, name: string, sectionName?: string): string {
  return sectionName ? `${kind}/${name}/${sectionName}` : `${kind}/${name}`;
}

/** Names of the policies on a target and, when `sectionName` is given, on that section too. */
export function jwtPoliciesOn(jwt: JwtModel | undefined, kind: JwtTargetKind, name: string, sectionName?: string): string[] {
  if (!jwt) return [];
  const out = new Set(jwt.byTarget.get(jwtTargetKey(kind, name)) ?? []);
  if (sectionName) for (const p of jwt.byTarget.get(jwtTargetKey(kind, name, sectionName)) ?? []) out.add(p);
  return [...out].sort();
}

type Report = (d: LoadedDoc, path: (string | number)[], code: ErrorCode, message: string) => void;

const PRIVATE_MEMBERS = ['d', 'p', 'q', 'dp', 'dq', 'qi', 'oth', 'k'];

/** Public signing keys of a set; private, symmetric and encryption keys are dropped. */
/** A policy's settings as text (everything but where it was written): equal text, same checks. */
export function policySettingsKey(p: JwtPolicyModel): string {
  const { source: _source, ...settings } = p;
  return JSON.stringify(settings);
}

export function usableKeys(value: unknown): JWK[] {
  if (!value || typeof value !== 'object' || !Array.isArray((value as { keys?: unknown }).keys)) throw new Error('not a JSON Web Key Set (no "keys" array)');
  return ((value as { keys: unknown[] }).keys as unknown[]).filter((k): k is JWK => {
    if (!k || typeof k !== 'object' || Array.isArray(k)) return false;
    const jwk = k as Record<string, unknown>;
    if (!['RSA', 'EC', 'OKP'].includes(jwk.kty as string)) return false;
    if (PRIVATE_MEMBERS.some((m) => m in jwk)) return false;
    return jwk.use === undefined || jwk.use === 'sig';
  });
}

/** The algorithm a public JWK would verify, for an import check. */
function algForKey(jwk: Record<string, unknown>): JwtAlgorithm | undefined {
  if (typeof jwk.alg === 'string' && (JWT_ALGORITHMS as readonly string[]).includes(jwk.alg)) return jwk.alg as JwtAlgorithm;
  if (jwk.kty === 'RSA') return 'RS256';
  if (jwk.kty === 'EC') return jwk.crv === 'P-384' ? 'ES384' : 'ES256';
  if (jwk.kty === 'OKP') return 'EdDSA';
  return undefined;
}

/** Which algorithms can a key verify (by type and curve; narrowed by its own `alg`). */
export function keyAlgorithms(jwk: Record<string, unknown>): JwtAlgorithm[] {
  let algs: JwtAlgorithm[] = [];
  if (jwk.kty === 'RSA') algs = ['RS256', 'RS384', 'RS512', 'PS256', 'PS384', 'PS512'];
  else if (jwk.kty === 'EC' && jwk.crv === 'P-256') algs = ['ES256'];
  else if (jwk.kty === 'EC' && jwk.crv === 'P-384') algs = ['ES384'];
  else if (jwk.kty === 'OKP' && jwk.crv === 'Ed25519') algs = ['EdDSA'];
  if (typeof jwk.alg === 'string') algs = algs.filter((a) => a === jwk.alg);
  return algs;
}

/**
 * Problems with a key set given in a file or inline: not a set, private or symmetric key
 * material, keys that do not import, or no key usable with the policy's algorithms.
 */
export async function jwksProblems(value: unknown, algorithms: readonly JwtAlgorithm[]): Promise<string[]> {
  if (!value || typeof value !== 'object' || !Array.isArray((value as { keys?: unknown }).keys))
    return ['must be a JSON Web Key Set: an object with a "keys" array'];
  const keys = (value as { keys: unknown[] }).keys;
  if (keys.length === 0) return ['the key set has no keys'];
  const problems: string[] = [];
  let usable = 0;
  for (const [i, k] of keys.entries()) {
    if (!k || typeof k !== 'object' || Array.isArray(k)) {
      problems.push(`keys[${i}]: must be a JSON Web Key (an object)`);
      continue;
    }
    const jwk = k as Record<string, unknown>;
    if (jwk.kty === 'oct') {
      problems.push(`keys[${i}]: symmetric (oct) keys are not accepted; JWTs must be signed with RSA, EC or Ed25519 keys`);
      continue;
    }
    const priv = PRIVATE_MEMBERS.filter((m) => m in jwk);
    if (priv.length) {
      problems.push(`keys[${i}]: holds private key material (${priv.join(', ')}); publish only public keys`);
      continue;
    }
    if (jwk.use !== undefined && jwk.use !== 'sig') continue; // an encryption key: ignored, as verifiers do
    const alg = algForKey(jwk);
    if (!alg) {
      problems.push(`keys[${i}]: unsupported key type ${JSON.stringify(jwk.kty)} (expected RSA, EC or OKP)`);
      continue;
    }
    try {
      await importJWK(jwk as JWK, alg);
    } catch (e) {
      problems.push(`keys[${i}]${typeof jwk.kid === 'string' ? ` (kid "${jwk.kid}")` : ''}: does not import as a ${alg} public key: ${(e as Error).message}`);
      continue;
    }
    if (keyAlgorithms(jwk).some((a) => algorithms.includes(a))) usable++;
  }
  if (problems.length === 0 && usable === 0) problems.push(`no key in the set can verify any of the policy's algorithms (${algorithms.join(', ')})`);
  return problems;
}

function ms(text: string | undefined, fallback: number): number {
  return text === undefined ? fallback : parseDuration(text)!;
}

function sourceKey(s: TokenSource): string {
  return 'header' in s ? `header:${s.header}` : 'cookie' in s ? `cookie:${s.cookie}` : `query:${s.query}`;
}

export async function resolveJwtPolicies(
  docs: readonly LoadedDoc[],
  known: { services: ReadonlyMap<string, ServiceModel>; gateways: ReadonlyMap<string, GatewayModel>; routes: readonly RouteModel[] },
  baseDir: string,
  err: Report,
  readFile: PolicyFileRead,
  opts: BuildOptions = {},
): Promise<JwtModel> {
  const confine: JwksFileConfinement = {
    policyDir: path.resolve(baseDir),
    ...(opts.dataDir !== undefined ? { dataDir: path.resolve(opts.dataDir) } : {}),
    ...(opts.forbidden?.length ? { forbidden: opts.forbidden.map((f) => path.resolve(f)) } : {}),
  };
  const policies = new Map<string, JwtPolicyModel>();
  const byTarget = new Map<string, string[]>();
  const names: Record<JwtTargetKind, string[]> = {
    Gateway: [...known.gateways.keys()],
    HTTPRoute: known.routes.map((r) => r.name),
    Service: [...known.services.keys()],
  };
  /** `<target key>/<header>` -> the policy and claim that forward into it. */
  const forwarded = new Map<string, { doc: LoadedDoc; claim: string }>();
  const sorted = docs.filter((d) => d.kind === 'JWTPolicy').sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
  for (const d of sorted) {
    const spec = (d.value as JWTPolicy).spec;
    const { kind, name, sectionName } = spec.targetRef;
    let ok = true;
    if (!names[kind].includes(name)) {
      err(d, ['spec', 'targetRef', 'name'], ErrorCode.UNKNOWN_REFERENCE, `unknown ${kind} "${name}"${didYouMean(name, names[kind])}`);
      ok = false;
    } else if (sectionName !== undefined) {
      const sections =
        kind === 'Gateway'
          ? known.gateways.get(name)!.listeners.map((l) => l.name)
          : known.routes.find((r) => r.name === name)!.spec.rules.flatMap((r) => (r.name ? [r.name] : []));
      if (!sections.includes(sectionName)) {
        err(
          d,
          ['spec', 'targetRef', 'sectionName'],
          ErrorCode.UNKNOWN_REFERENCE,
          `${kind} "${name}" has no ${kind === 'Gateway' ? 'listener' : 'rule'} named "${sectionName}"${didYouMean(sectionName, sections)}`,
        );
        ok = false;
      }
    } else if (kind === 'Service' && known.services.get(name)!.protocol === 'tcp') {
      err(d, ['spec', 'targetRef', 'name'], ErrorCode.CONFLICT, `Service "${name}" speaks tcp; a JWT is checked on HTTP requests`);
      ok = false;
    }

    const algorithms = [...new Set(spec.algorithms ?? JWT_ALGORITHMS)];
    let jwks: JwksModel;
    const cooldownMs = ms(spec.jwks.cooldown, JWKS_DEFAULTS.cooldownMs);
    if (spec.jwks.uri !== undefined) {
      jwks = {
        kind: 'uri',
        uri: spec.jwks.uri,
        timeoutMs: ms(spec.jwks.timeout, JWKS_DEFAULTS.timeoutMs),
        minCacheMs: ms(spec.jwks.cacheDuration?.min, Math.min(JWKS_DEFAULTS.minCacheMs, ms(spec.jwks.cacheDuration?.max, Infinity))),
        maxCacheMs: ms(spec.jwks.cacheDuration?.max, Math.max(JWKS_DEFAULTS.maxCacheMs, ms(spec.jwks.cacheDuration?.min, 0))),
        cooldownMs,
      };
    } else if (spec.jwks.file !== undefined) {
      const abs = path.resolve(baseDir, spec.jwks.file);
      jwks = { kind: 'file', file: spec.jwks.file, path: abs, cooldownMs, confine };
      // Confined like every file a policy names (refusals: one message, see policyFileReader). Past
      // that the file is inside the policy directory, so saying it is not JSON reveals nothing.
      const text = await readFile(d, ['spec', 'jwks', 'file'], spec.jwks.file);
      let parsed: unknown;
      if (text === undefined) ok = false;
      else {
        try {
          parsed = JSON.parse(text);
        } catch {
          err(d, ['spec', 'jwks', 'file'], ErrorCode.FILE_READ, `${spec.jwks.file} is not JSON`);
          ok = false;
        }
      }
      if (parsed !== undefined) {
        for (const p of await jwksProblems(parsed, algorithms)) {
          err(d, ['spec', 'jwks', 'file'], ErrorCode.SCHEMA, `${spec.jwks.file}: ${p}`);
          ok = false;
        }
      }
    } else {
      jwks = { kind: 'inline', keys: spec.jwks.inline!.keys as JWK[] };
      for (const p of await jwksProblems(spec.jwks.inline, algorithms)) {
        err(d, ['spec', 'jwks', 'inline'], ErrorCode.SCHEMA, p);
        ok = false;
      }
    }

    const from = spec.from ?? [{ ...DEFAULT_TOKEN_SOURCE }];
    const seenSources = new Set<string>();
    from.forEach((s, i) => {
      const k = sourceKey(s);
      if (seenSources.has(k)) {
        err(d, ['spec', 'from', i], ErrorCode.CONFLICT, `${k.replace(':', ' ')} is listed twice`);
        ok = false;
      }
      seenSources.add(k);
    });

    const forwardClaims = (spec.forwardClaims ?? []).map((f) => ({ claim: f.claim, header: f.header.toLowerCase() }));
    const targetKey = jwtTargetKey(kind, name, sectionName);
    const ownHeaders = new Set<string>();
    forwardClaims.forEach((f, i) => {
      if (ownHeaders.has(f.header)) {
        err(d, ['spec', 'forwardClaims', i, 'header'], ErrorCode.CONFLICT, `header "${f.header}" is already given a claim by this policy`);
        ok = false;
        return;
      }
      ownHeaders.add(f.header);
      if (from.some((s) => 'header' in s && s.header === f.header)) {
        err(d, ['spec', 'forwardClaims', i, 'header'], ErrorCode.CONFLICT, `header "${f.header}" is where this policy reads its token from`);
        ok = false;
        return;
      }
      const other = forwarded.get(`${targetKey}/${f.header}`);
      if (other && other.claim !== f.claim) {
        err(
          d,
          ['spec', 'forwardClaims', i, 'header'],
          ErrorCode.CONFLICT,
          `conflicts with JWTPolicy "${other.doc.name}" in ${other.doc.source.file}#${other.doc.source.doc}, which forwards claim "${other.claim}" into header "${f.header}" on the same target`,
        );
        ok = false;
        return;
      }
      forwarded.set(`${targetKey}/${f.header}`, { doc: d, claim: f.claim });
    });
    if (!ok) continue;

    policies.set(d.name, {
      name: d.name,
      target: { kind, name, ...(sectionName ? { sectionName } : {}) },
      issuer: spec.issuer,
      audiences: [...new Set(spec.audiences ?? [])],
      algorithms,
      clockSkewMs: ms(spec.clockSkew, JWKS_DEFAULTS.clockSkewMs),
      from,
      require: spec.require ?? [],
      forwardClaims,
      optional: spec.optional ?? false,
      maxTokenBytes: spec.maxTokenSize ?? DEFAULT_MAX_TOKEN_SIZE,
      jwks,
      unavailableStatus: spec.jwks.unavailableStatus ?? 503,
      source: d.source,
    });
    byTarget.set(targetKey, [...(byTarget.get(targetKey) ?? []), d.name]);
  }
  return { policies, byTarget };
}
