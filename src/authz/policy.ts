// One JWTPolicy, ready to check requests: find the token, verify its signature against the
// policy's keys (allowed algorithms only; jws.ts, node:crypto with keys imported once), check iss,
// aud, exp, nbf and iat (with the clock skew), then the `require` rules; on success, the claims to
// forward as headers.
// Verified tokens are remembered (bounded, per key set generation) so a token seen again costs a
// map lookup plus the time and claim checks, which are always redone. A token is remembered from
// its second verification on: the first only notes a 31-bit hash of it. A service asked about a
// new token per request (new users, refreshed tokens, the fast path's one question per token)
// would otherwise fill the cache with entries never read again, each ~1 kB that survives the
// young generation and is copied into the old one: measured with `bench:authz --fresh`, that
// made every scavenge ~0.5-1 ms longer (580 kB promoted per scavenge instead of ~115 kB) and
// the scavenge pauses are what the p99 at 1,000 requests/s is made of.
// With the keys loaded (the steady state) a check runs start to end without waiting on anything:
// checkNow answers synchronously. Only a check that must wait for keys (none loaded yet, or a
// token naming a key the set lacks, which may be worth a reload) takes the asynchronous path.
import { performance } from 'node:perf_hooks';
import type { ClaimRule, JwtPolicyModel } from '../model/jwt.js';
import { extractToken, type RequestView } from './extract.js';
import type { JwksCache, KeySet } from './jwks.js';
import { parseJws, verifyJws } from './jws.js';
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
  if (Object.hasOwn(payload, name)) return payload[name];
  if (!name.includes('.')) return undefined;
  let v: unknown = payload;
  for (const part of name.split('.')) {
    if (!v || typeof v !== 'object' || Array.isArray(v) || !Object.hasOwn(v, part)) return undefined;
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
  // biome-ignore lint/suspicious/noControlCharactersInRegex: control characters are exactly what this refuses
  if (text === '' || text.length > MAX_FORWARD_VALUE || /[\u0000-\u001f\u007f]/.test(text)) return undefined;
  return text;
}

function isNumericDate(v: unknown): v is number {
  return typeof v === 'number' && Number.isFinite(v);
}

/** iss, aud, exp, nbf, iat against the policy, at `nowSec` (seconds). */
export function checkClaims(
  payload: Record<string, unknown>,
  p: Pick<JwtPolicyModel, 'issuer' | 'audiences' | 'clockSkewMs'>,
  nowSec: number,
): DecisionReason | undefined {
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
  // (Written out: this runs on every allowed check.)
  const from = typeof nbf === 'number' ? (typeof iat === 'number' ? Math.max(nbf, iat) : nbf) : typeof iat === 'number' ? iat : undefined;
  return from === undefined ? { until: exp + skew } : { from: from - skew, until: exp + skew };
}

const utf8 = new TextDecoder('utf-8', { fatal: true });

interface Verified {
  payload: Record<string, unknown>;
  generation: number;
}

export interface PolicyOptions {
  metrics?: AuthzMetrics;
  now?: () => number;
}

/** A 31-bit hash of a token's last 32 characters (its signature's: enough to tell tokens apart). */
function tokenHash(token: string): number {
  let h = 0x811c9dc5;
  for (let i = Math.max(0, token.length - 32); i < token.length; i++) h = Math.imul(h ^ token.charCodeAt(i), 0x01000193);
  return h >>> 1;
}

export class CompiledPolicy {
  private readonly verified = new Map<string, Verified>();
  private verifiedBytes = 0;
  /**
   * Hashes of tokens verified once (not remembered yet), oldest first out: a ring and a set of
   * small integers, nothing per token that the collector has to copy. A collision only means a
   * token is remembered at its first verification.
   */
  private readonly seenOnce = new Set<number>();
  private readonly seenRing = new Int32Array(TOKEN_CACHE_SIZE);
  private seenNext = 0;
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
    return this.checkNow(req) ?? this.checkWaiting(req, budgetMs);
  }

  /** The answer when it needs no wait (keys loaded, no reload to try); undefined: call check. */
  checkNow(req: RequestView): PolicyResult | undefined {
    const found = this.found(req);
    if ('ok' in found) return found;
    const v = this.verifyNow(found.token);
    return v === undefined ? undefined : this.judge(v);
  }

  /** check's path after checkNow answered undefined: may wait up to `budgetMs` for keys. */
  async checkWaiting(req: RequestView, budgetMs: number): Promise<PolicyResult> {
    const found = this.found(req);
    if ('ok' in found) return found;
    return this.judge(await this.verifyWaiting(found.token, budgetMs));
  }

  /** The token of the request, or the answer when there is none to verify. */
  private found(req: RequestView): { token: string } | PolicyResult {
    const m = this.model;
    const found = extractToken(req, m.from, m.maxTokenBytes);
    if (found.kind === 'token') return { token: found.token };
    if (found.kind === 'none') return m.optional ? { ok: true, reason: 'no_token_optional', headers: [] } : invalid('missing_token');
    if (found.kind === 'multiple') return invalid('multiple_tokens', 400);
    return invalid('token_too_large');
  }

  /** Claims, rules and forwarded headers of a verified token (or the refusal). */
  private judge(v: Verified | { reason: DecisionReason }): PolicyResult {
    const m = this.model;
    if ('reason' in v) return v.reason === 'jwks_unavailable' ? this.unavailable() : invalid(v.reason);
    const payload = v.payload;
    const bad = checkClaims(payload, m, this.now() / 1000);
    if (bad) return invalid(bad);
    for (const rule of m.require) {
      if (!ruleHolds(rule, claimValue(payload, rule.claim))) {
        const scope = 'contains' in rule && (rule.claim === 'scope' || rule.claim === 'scp') ? rule.contains : undefined;
        return {
          ok: false,
          reason: 'claim_mismatch',
          status: 403,
          error: 'insufficient_scope',
          description: DESCRIPTION.claim_mismatch!,
          ...(scope ? { scope } : {}),
        };
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

  /**
   * The token's payload once its signature checks out, or why not; undefined when that needs a
   * wait (no keys loaded yet, or a key the set lacks and a reload may bring).
   */
  private verifyNow(token: string): Verified | { reason: DecisionReason } | undefined {
    const keys = this.jwks.available();
    const hit = this.verified.get(token);
    if (hit) {
      if (keys && keys.generation === hit.generation) {
        this.opts.metrics?.tokenCache.inc({ result: 'hit' });
        return hit;
      }
      this.forget(token);
    }
    this.opts.metrics?.tokenCache.inc({ result: 'miss' });
    const parsed = parseJws(token, this.model.algorithms);
    if (typeof parsed === 'string') return { reason: parsed };
    if (!keys) return undefined;
    const result = verifyJws(parsed, keys.prepared);
    if (result === 'unknown_kid' && this.model.jwks.kind !== 'inline') return undefined;
    return this.remember(token, result, keys);
  }

  /** verifyNow's path when it had to wait: keys loading, or one reload for an unknown key. */
  private async verifyWaiting(token: string, budgetMs: number): Promise<Verified | { reason: DecisionReason }> {
    const parsed = parseJws(token, this.model.algorithms);
    if (typeof parsed === 'string') return { reason: parsed };
    const deadline = performance.now() + budgetMs; // one budget for every wait of this check
    let keys = await this.jwks.current(budgetMs);
    if (!keys) return { reason: 'jwks_unavailable' };
    let result = verifyJws(parsed, keys.prepared);
    if (result === 'unknown_kid' && (await this.jwks.refetchForUnknownKey(Math.max(0, deadline - performance.now())))) {
      keys = this.jwks.available()!;
      result = verifyJws(parsed, keys.prepared);
    }
    return this.remember(token, result, keys);
  }

  /** A verified token's payload, parsed and remembered (or the reason it was refused). */
  private remember(token: string, result: Buffer | DecisionReason, keys: KeySet): Verified | { reason: DecisionReason } {
    if (typeof result === 'string') return { reason: result };
    let payload: unknown;
    try {
      payload = JSON.parse(utf8.decode(result));
    } catch {
      return { reason: 'malformed' };
    }
    if (!payload || typeof payload !== 'object' || Array.isArray(payload)) return { reason: 'malformed' };
    const entry: Verified = { payload: payload as Record<string, unknown>, generation: keys.generation };
    const h = tokenHash(token);
    if (!this.seenOnce.has(h)) {
      // First verification: noted, not remembered.
      if (this.seenOnce.size >= TOKEN_CACHE_SIZE) this.seenOnce.delete(this.seenRing[this.seenNext]!);
      this.seenRing[this.seenNext] = h;
      this.seenNext = (this.seenNext + 1) % TOKEN_CACHE_SIZE;
      this.seenOnce.add(h);
      return entry;
    }
    // Oldest first out, within both bounds.
    while (this.verified.size > 0 && (this.verified.size >= TOKEN_CACHE_SIZE || this.verifiedBytes + token.length > TOKEN_CACHE_BYTES))
      this.forget(this.verified.keys().next().value!);
    this.verified.set(token, entry);
    this.verifiedBytes += token.length;
    return entry;
  }

  private forget(token: string): void {
    if (this.verified.delete(token)) this.verifiedBytes -= token.length;
  }
}
