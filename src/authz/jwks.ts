// The verification keys of one JWTPolicy: a small cache of the key set, each key imported once
// (a node:crypto KeyObject, see jws.ts) when the set is loaded, never per check.
// - uri: fetched when first needed (and when the policy is loaded); reused for the Cache-Control
//   max-age of the response, kept within the policy's min/max bounds; refreshed in the background
//   once stale while the old keys keep serving; a failed fetch keeps the cached keys.
// - file: read at load and again whenever the file changes, each time through the policy
//   directory's confinement (policyFileReader): a file swapped for a link to, say, the CA key is
//   refused with the one refusal message, never read.
// - inline: the policy's own keys.
// A token naming a key the set lacks triggers one extra load per cooldown (key rotation without a
// restart, without letting made-up kids hammer the JWKS endpoint).
import { unwatchFile, watchFile, type Stats } from 'node:fs';
import path from 'node:path';
import type { JWK } from 'jose';
import { usableKeys, type JwksModel } from '../model/jwt.js';
import { POLICY_FILE_REFUSED, type PolicyFileResult } from '../model/model.js';
import { policyFileReader } from '../sources/files/policy-files.js';
import type { Logger } from '../observability/logger.js';
import type { AuthzMetrics } from './metrics.js';
import { prepareKeys, type PreparedKey } from './jws.js';

/** Largest JWKS document accepted. */
export const MAX_JWKS_BYTES = 1 << 20;
/** Reuse period of a fetched key set whose response names none (kept within the policy's bounds). */
export const DEFAULT_JWKS_TTL_MS = 10 * 60_000;
/** At most one load attempt per this interval after a failure (and per cooldown, if shorter). */
export const RETRY_AFTER_FAILURE_MS = 2_000;
/** Longest wait between scheduled reloads of a fetched set that keeps failing. */
export const MAX_SCHEDULED_RETRY_MS = 60_000;

export interface KeySet {
  /** The keys, imported once (jws.ts selects among them by kid, alg, kty, use as jose does). */
  prepared: readonly PreparedKey[];
  /** Changes whenever the keys change; verified-token caches compare it. */
  generation: number;
  /** The usable keys themselves (public members as published). */
  keys: readonly JWK[];
}

export interface JwksStatus {
  source: string;
  keys: number;
  loadedAt?: string;
  expiresAt?: string;
  lastError?: string;
}

/** How long to reuse a fetched set: Cache-Control max-age within [min, max]; no-cache/no-store: min. */
export function cacheTtlMs(cacheControl: string | null, bounds: { minCacheMs: number; maxCacheMs: number }): number {
  let ttl = DEFAULT_JWKS_TTL_MS;
  if (cacheControl) {
    const directives = cacheControl
      .toLowerCase()
      .split(',')
      .map((d) => d.trim());
    const maxAge = directives.map((d) => /^max-age\s*=\s*"?(\d+)"?$/.exec(d)).find((m) => m);
    if (directives.includes('no-store') || directives.includes('no-cache')) ttl = 0;
    else if (maxAge) ttl = Number(maxAge[1]) * 1000;
  }
  return Math.min(bounds.maxCacheMs, Math.max(bounds.minCacheMs, ttl));
}

function withTimeout<T>(p: Promise<T>, ms: number): Promise<T | undefined> {
  if (ms <= 0) return Promise.resolve(undefined);
  let timer: NodeJS.Timeout | undefined;
  const t = new Promise<undefined>((resolve) => {
    timer = setTimeout(() => resolve(undefined), ms);
    timer.unref();
  });
  return Promise.race([p, t]).finally(() => clearTimeout(timer));
}

/**
 * Reads a key set file with the rules the model applied (a new reader each time, so the checks see
 * the file system as it is now). A hand-made spec without `confine` stays in the file's own folder.
 */
function readKeyFile(spec: Extract<JwksModel, { kind: 'file' }>): Promise<PolicyFileResult> {
  const c = spec.confine;
  if (!c) return policyFileReader(path.dirname(spec.path))(path.basename(spec.path));
  return policyFileReader(c.policyDir, { dataDir: c.dataDir, forbidden: c.forbidden })(spec.file);
}

/** Where the keys come from, for logs and status (a URL without its query, which may hold a key). */
function describeSource(spec: JwksModel): string {
  if (spec.kind === 'inline') return 'inline';
  if (spec.kind === 'file') return `file ${spec.file}`;
  const u = new URL(spec.uri);
  return `${u.origin}${u.pathname}`;
}

export interface JwksCacheOptions {
  policy: string;
  metrics?: AuthzMetrics;
  logger?: Logger;
  now?: () => number;
  /** Called after the keys changed (a first load counts). */
  onChange?: () => void;
}

export class JwksCache {
  private set?: KeySet & { text: string; loadedAt: number; expiresAt: number };
  private inflight?: Promise<boolean>;
  private retryAt = 0;
  private unknownKidAt = -Infinity;
  private generations = 0;
  private watching?: (cur: Stats, prev: Stats) => void;
  private closed = false;
  /** The next scheduled load of a fetched set (see schedule). */
  private timer?: NodeJS.Timeout;
  /** Loads that failed in a row. */
  private failures = 0;
  lastError?: string;
  readonly source: string;

  constructor(
    readonly spec: JwksModel,
    private readonly opts: JwksCacheOptions,
  ) {
    this.source = describeSource(spec);
  }

  private now(): number {
    return (this.opts.now ?? Date.now)();
  }

  /** Loads the keys now (without waiting) and, for a file, watches it. */
  start(): void {
    void this.refresh();
    if (this.spec.kind === 'file' && !this.watching) {
      const file = this.spec.path;
      this.watching = (cur, prev) => {
        if (cur.mtimeMs !== prev.mtimeMs || cur.size !== prev.size || cur.ino !== prev.ino) void this.refresh();
      };
      watchFile(file, { interval: 250, persistent: false }, this.watching);
    }
  }

  close(): void {
    this.closed = true;
    clearTimeout(this.timer);
    if (this.watching && this.spec.kind === 'file') unwatchFile(this.spec.path, this.watching);
    this.watching = undefined;
  }

  /**
   * The keys to verify with. With keys cached this never waits (a stale set is refreshed in the
   * background). Without, it waits for a load at most `budgetMs`. undefined: no keys to be had.
   */
  async current(budgetMs: number): Promise<KeySet | undefined> {
    const set = this.available();
    if (set) return set;
    if (!this.inflight && this.now() >= this.retryAt) void this.refresh();
    if (this.inflight) await withTimeout(this.inflight, budgetMs);
    return this.set;
  }

  /**
   * The keys to verify with when they are loaded, without waiting (the common case: a check then
   * needs no promise); a stale set is refreshed in the background. undefined: none loaded yet.
   */
  available(): KeySet | undefined {
    const set = this.set;
    if (set) {
      const now = this.now();
      if (now >= set.expiresAt && now >= this.retryAt) void this.refresh();
    }
    return set;
  }

  /**
   * A token names a key the set lacks: load the set again, unless that was done for an unknown
   * key within the cooldown. Resolves true when the keys changed.
   */
  async refetchForUnknownKey(budgetMs: number): Promise<boolean> {
    if (this.spec.kind === 'inline') return false;
    const before = this.set?.generation;
    if (!this.inflight) {
      const now = this.now();
      if (now - this.unknownKidAt < this.spec.cooldownMs) return false;
      this.unknownKidAt = now;
      void this.refresh();
    }
    await withTimeout(this.inflight ?? Promise.resolve(false), budgetMs);
    return this.set !== undefined && this.set.generation !== before;
  }

  status(): JwksStatus {
    return {
      source: this.source,
      keys: this.set?.keys.length ?? 0,
      ...(this.set
        ? {
            loadedAt: new Date(this.set.loadedAt).toISOString(),
            expiresAt: Number.isFinite(this.set.expiresAt) ? new Date(this.set.expiresAt).toISOString() : undefined,
          }
        : {}),
      ...(this.lastError ? { lastError: this.lastError } : {}),
    };
  }

  /** The keys in use now (undefined before the first load). */
  keys(): readonly JWK[] | undefined {
    return this.set?.keys;
  }

  /** Seconds since the keys were last loaded (undefined before the first load). */
  ageSeconds(): number | undefined {
    return this.set ? (this.now() - this.set.loadedAt) / 1000 : undefined;
  }

  /**
   * A fetched set is also reloaded on a timer, when it goes stale (or, after a failure, when a
   * retry is due): Envoy's fast path repeats allows without asking this service, and its
   * remembered allows end when the keys change, so rotations and revocations must be seen even
   * when no request comes here.
   */
  private schedule(): void {
    clearTimeout(this.timer);
    if (this.closed || this.spec.kind !== 'uri') return;
    // After failures: back off (2 s, 4 s, ... up to a minute) rather than hammer a JWKS endpoint that is down.
    const backoff = Math.min(RETRY_AFTER_FAILURE_MS * 2 ** Math.max(0, this.failures - 1), MAX_SCHEDULED_RETRY_MS);
    const at = this.set && this.now() < this.set.expiresAt ? this.set.expiresAt : this.now() + (this.failures ? backoff : 1);
    const delay = Math.min(Math.max(0, at - this.now()), 2 ** 31 - 1);
    this.timer = setTimeout(() => void this.refresh(), delay);
    this.timer.unref();
  }

  private refresh(): Promise<boolean> {
    if (this.inflight) return this.inflight;
    this.inflight = this.load().finally(() => {
      this.inflight = undefined;
      this.schedule();
    });
    return this.inflight;
  }

  private async read(): Promise<{ value: unknown; ttlMs: number }> {
    const spec = this.spec;
    if (spec.kind === 'inline') return { value: { keys: spec.keys }, ttlMs: Infinity };
    if (spec.kind === 'file') {
      const got = await readKeyFile(spec);
      // Refused (outside, forbidden, not a regular file, over 1 MiB): one message whatever the reason.
      if ('refused' in got) throw new Error(POLICY_FILE_REFUSED);
      if ('error' in got) throw new Error(got.error);
      return { value: JSON.parse(got.text), ttlMs: Infinity };
    }
    const res = await fetch(spec.uri, {
      signal: AbortSignal.timeout(spec.timeoutMs),
      redirect: 'manual',
      headers: { accept: 'application/jwk-set+json, application/json' },
    });
    if (res.status !== 200) {
      await res.body?.cancel().catch(() => undefined);
      throw new Error(`HTTP ${res.status}`);
    }
    const length = Number(res.headers.get('content-length') ?? 0);
    if (length > MAX_JWKS_BYTES) {
      await res.body?.cancel().catch(() => undefined);
      throw new Error(`larger than ${MAX_JWKS_BYTES} bytes`);
    }
    const text = await res.text();
    if (text.length > MAX_JWKS_BYTES) throw new Error(`larger than ${MAX_JWKS_BYTES} bytes`);
    return { value: JSON.parse(text), ttlMs: cacheTtlMs(res.headers.get('cache-control'), spec) };
  }

  private async load(): Promise<boolean> {
    const { metrics, logger, policy } = this.opts;
    try {
      const { value, ttlMs } = await this.read();
      const keys = usableKeys(value);
      if (keys.length === 0) throw new Error('the key set holds no public signing key');
      const text = JSON.stringify(keys);
      const now = this.now();
      const changed = text !== this.set?.text;
      if (this.closed) return false;
      if (changed) {
        this.set = { prepared: prepareKeys(keys), generation: ++this.generations, keys, text, loadedAt: now, expiresAt: now + ttlMs };
        if (this.lastError || this.generations > 1) logger?.info({ policy, jwks: this.source, keys: keys.length }, 'JWKS loaded');
      } else {
        this.set!.loadedAt = now;
        this.set!.expiresAt = now + ttlMs;
      }
      this.retryAt = 0;
      this.failures = 0;
      this.lastError = undefined;
      metrics?.jwksFetches.inc({ policy, result: changed ? 'ok' : 'unchanged' });
      metrics?.jwksKeys.set({ policy }, keys.length);
      if (changed) this.opts.onChange?.();
      return changed;
    } catch (e) {
      const err = e as Error & { cause?: { code?: string } };
      this.lastError = err.name === 'TimeoutError' ? 'timed out' : (err.cause?.code ?? (err instanceof SyntaxError ? 'not JSON' : err.message));
      this.failures++;
      this.retryAt = this.now() + Math.min(RETRY_AFTER_FAILURE_MS, this.spec.kind === 'inline' ? RETRY_AFTER_FAILURE_MS : this.spec.cooldownMs);
      if (this.closed) return false;
      metrics?.jwksFetches.inc({ policy, result: 'error' });
      metrics?.jwksKeys.set({ policy }, this.set?.keys.length ?? 0);
      logger?.warn(
        { policy, jwks: this.source, reason: this.lastError },
        this.set ? 'JWKS refresh failed; the cached keys stay in use' : 'JWKS could not be loaded; checks of this policy answer "unavailable" until it can',
      );
      return false;
    }
  }
}
