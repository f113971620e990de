// One JWTPolicy, ready to check requests: find the token, verify its signature with jose against
// the policy's keys (allowed algorithms only), check iss, aud, exp, nbf and iat (with the clock
// skew), then the `require` rules; on success, the claims to forward as headers.
// Verified tokens are remembered (bounded, per key set generation) so a token seen again costs a
// map lookup plus the time and claim checks, which are always redone.
import { compactVerify, decodeProtectedHeader, errors, type JWTPayload, type ProtectedHeaderParameters } from 'jose';
import { performance } from 'node:perf_hooks';
import type { ClaimRule, JwtPolicyModel } from '../model/jwt.js';
import { extractToken, type RequestView } from './extract.js';
import type { JwksCache, KeySet } from './jwks.js';
import type { AuthzMetrics, DecisionReason } from './metrics.js';

export type Rfc6750Error = 'invalid_request' | 'invalid_token' | 'insufficient_scope';

export type PolicyResult =
  | {
      ok: true;
      reason: 'ok' | 'no_token_optional';
      /** Headers to set upstream (forwarded claims). */
      headers: { name: string; value: string }[];
      /**
       * With a token: the times (Unix seconds) between which the same token gets the same answer,
       * from its exp, nbf and iat and the clock skew (allowed while from <= now < until).
       */
      window?: { from?: number; until: number };
    }
  | {
      ok: false;
      reason: DecisionReason;
      status: 400 | 401 | 403 | 503;
      error?: Rfc6750Error;
      /** Short fixed text for error_description: never the token or a claim value. */
      description: string;
      /** For insufficient_scope on a scope claim: the scope that is missing. */
      scope?: string;
    };

const DESCRIPTION: Partial<Record<DecisionReason, string>> = {
  missing_token: 'no token',
  multiple_tokens: 'more than one token',
  token_too_large: 'token too large',
  malformed: 'malformed token',
  alg_not_allowed: 'algorithm not allowed',
  unknown_kid: 'unknown signing key',
  bad_signature: 'signature invalid',
  expired: 'token expired',
  not_yet_valid: 'token not yet valid',
  issued_in_future: 'token issued in the future',
  missing_exp: 'token has no expiry',
  wrong_issuer: 'wrong issuer',
  wrong_audience: 'wrong audience',
  claim_mismatch: 'required claim missing or not matching',
  jwks_unavailable: 'verification keys unavailable',
};

/** Longest forwarded header value; longer claims are not forwarded. */
const MAX_FORWARD_VALUE = 8192;
/** Verified tokens remembered per policy, by count and by total token bytes. */
export const TOKEN_CACHE_SIZE = 10_000;
export const TOKEN_CACHE_BYTES = 8 * 1024 * 1024;

function invalid(reason: DecisionReason, status: 400 | 401 = 401): PolicyResult {
  return { ok: false, reason, status, error: status === 400 ? 'invalid_request' : 'invalid_token', description: DESCRIPTION[reason] ?? reason };
}

/** A claim by name; a dotted name not present as such walks into nested objects (`realm.roles`). */
export function claimValue(payload: Record<string, unknown>, name: string): unknown {
  if (Object.prototype.hasOwnProperty.call(payload, name)) return payload[name];
  if (!name.includes('.')) return undefined;
  let v: unknown = payload;
  for (const part of name.split('.')) {
    if (!v || typeof v !== 'object' || Array.isArray(v) || !Object.prototype.hasOwnProperty.call(v, part)) return undefined;
    v = (v as Record<string, unknown>)[part];
  }
  return v;
}

export function ruleHolds(rule: ClaimRule, value: unknown): boolean {
  if (value === undefined || value === null) return false;
  if ('contains' in rule) {
    if (Array.isArray(value)) return value.some((x) => x === rule.contains);
    if (typeof value === 'string') return value.split(/\s+/).includes(rule.contains);
    return false;
  }
  if ('in' in rule) {
    const isIn = (x: unknown) => (typeof x === 'string' || typeof x === 'number' || typeof x === 'boolean') && rule.in.includes(x);
    return Array.isArray(value) ? value.some(isIn) : isIn(value);
  }
  return value === rule.equals;
}

/** A claim as a header value; undefined when it cannot be one (absent, control characters, too long). */
export function headerValue(value: unknown): string | undefined {
  let text: string;
  if (value === undefined || value === null) return undefined;
  if (typeof value === 'string') text = value;
  else if (typeof value === 'number' || typeof value === 'boolean') text = String(value);
  else if (Array.isArray(value) && value.every((x) => typeof x === 'string' || typeof x === 'number' || typeof x === 'boolean')) text = value.join(',');
  else text = JSON.stringify(value);
  // eslint-disable-next-line no-control-regex
  if (text === '' || text.length > MAX_FORWARD_VALUE || /[\u0000-\u001f\u007f]/.test(text)) return undefined;
  return text;
}

function isNumericDate(v: unknown): v is number {
  return typeof v === 'number' && Number.isFinite(v);
}

/** iss, aud, exp, nbf, iat against the policy, at `nowSec` (seconds). */
export function checkClaims(payload: Record<string, unknown>, p: Pick<JwtPolicyModel, 'issuer' | 'audiences' | 'clockSkewMs'>, nowSec: number): DecisionReason | undefined {
  const skew = p.clockSkewMs / 1000;
  const { exp, nbf, iat } = payload;
  if (exp === undefined) return 'missing_exp';
  if (!isNumericDate(exp) || (nbf !== undefined && !isNumericDate(nbf)) || (iat !== undefined && !isNumericDate(iat))) return 'malformed';
  if (exp <= nowSec - skew) return 'expired';
  if (nbf !== undefined && (nbf as number) > nowSec + skew) return 'not_yet_valid';
  if (iat !== undefined && (iat as number) > nowSec + skew) return 'issued_in_future';
  if (payload.iss !== p.issuer) return 'wrong_issuer';
  if (p.audiences.length) {
    const aud = payload.aud;
    const list = typeof aud === 'string' ? [aud] : Array.isArray(aud) ? aud : [];
    if (!list.some((a) => typeof a === 'string' && p.audiences.includes(a))) return 'wrong_audience';
  }
  return undefined;
}

/** When checkClaims lets a payload's time claims pass: from <= now < until (seconds). */
export function validityWindow(payload: Record<string, unknown>, skew: number): { from?: number; until: number } {
  const { exp, nbf, iat } = payload as { exp: number; nbf?: number; iat?: number };
  const starts = [nbf, iat].filter((x): x is number => typeof x === 'number').map((x) => x - skew);
  return { ...(starts.length ? { from: Math.max(...starts) } : {}), until: exp + skew };
}

interface Verified {
  payload: Record<string, unknown>;
  generation: number;
}

export interface PolicyOptions {
  metrics?: AuthzMetrics;
  now?: () => number;
}

export class CompiledPolicy {
  private readonly verified = new Map<string, Verified>();
  private verifiedBytes = 0;
  /** Forwarded headers, to strip client-supplied copies when nothing is forwarded. */
  readonly forwardHeaders: string[];

  constructor(
    readonly model: JwtPolicyModel,
    readonly jwks: JwksCache,
    private readonly opts: PolicyOptions = {},
  ) {
    this.forwardHeaders = model.forwardClaims.map((f) => f.header);
  }

  private now(): number {
    return (this.opts.now ?? Date.now)();
  }

  /** Checks one request; `budgetMs` bounds any wait for keys. */
  async check(req: RequestView, budgetMs: number): Promise<PolicyResult> {
    const m = this.model;
    const found = extractToken(req, m.from, m.maxTokenBytes);
    if (found.kind === 'none') return m.optional ? { ok: true, reason: 'no_token_optional', headers: [] } : invalid('missing_token');
    if (found.kind === 'multiple') return invalid('multiple_tokens', 400);
    if (found.kind === 'too_large') return invalid('token_too_large');

    const v = await this.verify(found.token, budgetMs);
    if ('reason' in v) return v.reason === 'jwks_unavailable' ? this.unavailable() : invalid(v.reason);
    const payload = v.payload;
    const bad = checkClaims(payload, m, this.now() / 1000);
    if (bad) return invalid(bad);
    for (const rule of m.require) {
      if (!ruleHolds(rule, claimValue(payload, rule.claim))) {
        const scope = 'contains' in rule && (rule.claim === 'scope' || rule.claim === 'scp') ? rule.contains : undefined;
        return { ok: false, reason: 'claim_mismatch', status: 403, error: 'insufficient_scope', description: DESCRIPTION.claim_mismatch!, ...(scope ? { scope } : {}) };
      }
    }
    const headers: { name: string; value: string }[] = [];
    for (const f of m.forwardClaims) {
      const value = headerValue(claimValue(payload, f.claim));
      if (value !== undefined) headers.push({ name: f.header, value });
    }
    return { ok: true, reason: 'ok', headers, window: validityWindow(payload, m.clockSkewMs / 1000) };
  }

  private unavailable(): PolicyResult {
    if (this.model.unavailableStatus === 401) return invalid('jwks_unavailable');
    return { ok: false, reason: 'jwks_unavailable', status: 503, description: DESCRIPTION.jwks_unavailable! };
  }

  /** The token's payload once its signature checks out, or why not. */
  private async verify(token: string, budgetMs: number): Promise<{ payload: Record<string, unknown> } | { reason: DecisionReason }> {
    const hit = this.verified.get(token);
    if (hit) {
      const keys = await this.jwks.current(0);
      if (keys && keys.generation === hit.generation) {
        this.opts.metrics?.tokenCache.inc({ result: 'hit' });
        return hit;
      }
      this.forget(token);
    }
    this.opts.metrics?.tokenCache.inc({ result: 'miss' });

    if (token.split('.').length !== 3) return { reason: 'malformed' };
    let header: ProtectedHeaderParameters;
    try {
      header = decodeProtectedHeader(token);
    } catch {
      return { reason: 'malformed' };
    }
    // alg "none", HMAC (e.g. HS256 "signed" with the public key) and anything not listed stop here.
    if (typeof header.alg !== 'string' || !(this.model.algorithms as string[]).includes(header.alg)) return { reason: 'alg_not_allowed' };
    if (header.b64 === false) return { reason: 'malformed' };

    const deadline = performance.now() + budgetMs; // one budget for every wait of this check
    let keys = await this.jwks.current(budgetMs);
    if (!keys) return { reason: 'jwks_unavailable' };
    let result = await this.verifyWith(token, keys);
    if (result === 'unknown_kid' && (await this.jwks.refetchForUnknownKey(Math.max(0, deadline - performance.now())))) {
      keys = (await this.jwks.current(0))!;
      result = await this.verifyWith(token, keys);
    }
    if (typeof result === 'string') return { reason: result };
    let payload: unknown;
    try {
      payload = JSON.parse(new TextDecoder('utf-8', { fatal: true }).decode(result));
    } catch {
      return { reason: 'malformed' };
    }
    if (!payload || typeof payload !== 'object' || Array.isArray(payload)) return { reason: 'malformed' };
    const entry: Verified = { payload: payload as JWTPayload as Record<string, unknown>, generation: keys.generation };
    // Oldest first out, within both bounds.
    while (this.verified.size > 0 && (this.verified.size >= TOKEN_CACHE_SIZE || this.verifiedBytes + token.length > TOKEN_CACHE_BYTES)) this.forget(this.verified.keys().next().value!);
    this.verified.set(token, entry);
    this.verifiedBytes += token.length;
    return entry;
  }

  private forget(token: string): void {
    if (this.verified.delete(token)) this.verifiedBytes -= token.length;
  }

  private async verifyWith(token: string, keys: KeySet): Promise<Uint8Array | DecisionReason> {
    const algorithms = this.model.algorithms as string[];
    try {
      return (await compactVerify(token, keys.resolve, { algorithms })).payload;
    } catch (e) {
      if (e instanceof errors.JWKSMultipleMatchingKeys) {
        // No kid, several candidate keys: any one that verifies will do.
        for await (const key of e as unknown as AsyncIterable<CryptoKey>) {
          try {
            return (await compactVerify(token, key, { algorithms })).payload;
          } catch {
            /* try the next key */
          }
        }
        return 'bad_signature';
      }
      if (e instanceof errors.JWKSNoMatchingKey) return 'unknown_kid';
      if (e instanceof errors.JWSSignatureVerificationFailed) return 'bad_signature';
      if (e instanceof errors.JOSEAlgNotAllowed || e instanceof errors.JOSENotSupported) return 'alg_not_allowed';
      return 'malformed';
    }
  }
}
