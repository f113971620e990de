// The rate-limit service: envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit, served by
// the small gRPC server the ext_authz service uses (src/grpc/unary-server.ts), with Envoy's own
// messages read and written by hand (codec.ts). It runs inside `signalbox serve`
// on its own port, or alone (`signalbox ratelimit`); both feed it the same compiled model.
//
// Each descriptor Envoy sends names one limit (`signalbox_limit` = `<policy>/<index>`, see
// src/xds/translator/filters/global-ratelimit.ts) and the value it counts by. Counting is a fixed
// window aligned to the clock: the Redis key holds the limit, the window's start and a hash of the
// value (so API keys and tokens never sit in Redis in clear), and expires with the window.
//
// A key seen over its limit is remembered here until its window ends: the counts of a fixed window
// only grow, so every later request for it is over the limit too, and a flood on one key is
// answered without a Redis command. Calls with nothing to count (unknown limits during a policy
// change) are answered OK at once.
//
// Redis unreachable or late: limits of failureMode allow answer OK (uncounted); if any limit of
// the call is failureMode deny the call fails with UNAVAILABLE, which Envoy's deny instance turns
// into a 503. Both show in signalbox_ratelimit_decisions_total.
import { hash } from 'node:crypto';
import type client from 'prom-client';
import type { Model } from '../model/model.js';
import type { Logger } from '../observability/logger.js';
import { GrpcError, GrpcStatus, UnaryGrpcServer } from '../grpc/unary-server.js';
import type { AuthzTls } from '../authz/server.js';
import { hasSelfSignedRoot } from '../authz/server.js';
import { LIMIT_ENTRY, RATELIMIT_DOMAIN } from '../protocol/services.js';
import { decodeRateLimitRequest, type DescriptorStatus, encodeRateLimitResponse, type RateLimitAnswer, UNIT } from './codec.js';
import { RateLimitMetrics, type DecisionResult } from './metrics.js';
import { RedisCounterStore, type RedisSettings, type RedisStatus } from './redis-store.js';

export const SHOULD_RATE_LIMIT_PATH = '/envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit';

/** Keys remembered as over their limit (each until its window ends). */
export const OVER_LIMIT_CACHE_SIZE = 10_000;
/** Extra life of a Redis key past its window, for clocks of service replicas that differ a little. */
const KEY_SLACK_MS = 1_000;

export interface LimitEntry {
  id: string;
  policy: string;
  requests: number;
  unit: 'second' | 'minute' | 'hour' | 'day';
  windowMs: number;
  failureMode: 'allow' | 'deny';
  by: 'header' | 'clientIP' | 'path' | 'claim' | 'none';
}

/** A descriptor to count in Redis: its index in the call, its limit, its key and window's end. */
interface Pending {
  i: number;
  limit: LimitEntry;
  key: string;
  windowEnd: number;
}

/** A limit a call is over, and when its window resets (ms from now). */
interface Over {
  limit: LimitEntry;
  resetMs: number;
}

/** The Redis histogram's labels, made once (not an object per command). */
const OK_LABELS = Object.freeze({ result: 'ok' });
const ERROR_LABELS = Object.freeze({ result: 'error' });

/** The status of a descriptor nothing was counted for (shared: the encoder only reads it). */
const OK_STATUS: DescriptorStatus = Object.freeze({ code: 'OK' });
const NO_HEADERS: RateLimitAnswer['headers'] = Object.freeze([]) as unknown as RateLimitAnswer['headers'];

/** What shouldRateLimit reads of a call (a RateLimitRequestView; tests may leave fields out). */
interface RequestShape {
  domain?: string;
  descriptors?: { entries?: { key?: string; value?: string }[] }[];
  hits_addend?: number;
}

function durationOf(ms: number): { seconds: number; nanos: number } {
  const m = Math.max(0, Math.ceil(ms));
  return { seconds: Math.floor(m / 1000), nanos: (m % 1000) * 1_000_000 };
}

/** The limits of a model's global sections, by descriptor id. */
export function limitTable(model: Pick<Model, 'policies'>): Map<string, LimitEntry> {
  const out = new Map<string, LimitEntry>();
  for (const g of model.policies?.globalRateLimits.values() ?? []) {
    for (const l of g.limits) {
      const by = !l.by ? 'none' : 'clientIP' in l.by ? 'clientIP' : 'path' in l.by ? 'path' : 'claim' in l.by ? 'claim' : 'header';
      out.set(l.id, { id: l.id, policy: g.policy, requests: l.requests, unit: l.unit, windowMs: l.windowMs, failureMode: g.failureMode, by });
    }
  }
  return out;
}

/** Decisions taken for one policy's limits since the service started (one per limit checked). */
export interface PolicyDecisions {
  allowed: number;
  limited: number;
  /** Redis unreachable, failureMode allow: let through uncounted. */
  failureAllowed: number;
  /** Redis unreachable, failureMode deny: refused (503). */
  failureDenied: number;
}

const DECISION_FIELD: Record<DecisionResult, keyof PolicyDecisions> = {
  allowed: 'allowed',
  limited: 'limited',
  failure_allowed: 'failureAllowed',
  failure_denied: 'failureDenied',
};

export interface RateLimitServiceOptions {
  logger: Logger;
  redis: RedisSettings;
  /** Where the metrics go (the control plane's registry when embedded). */
  registry?: client.Registry;
  now?: () => number;
}

export class RateLimitService {
  readonly metrics?: RateLimitMetrics;
  readonly store: RedisCounterStore;
  private limits = new Map<string, LimitEntry>();
  private readonly overLimit = new Map<string, number>();
  private readonly now: () => number;
  private server?: UnaryGrpcServer;
  private stopFollowing?: () => void;
  private connected = false;
  /** ShouldRateLimit calls answered, for /api/status and the benchmark. */
  calls = 0;
  /** Decisions per policy name since start (kept across edits while the policy exists), for /api/ratelimit and the dashboard. */
  private readonly decisions = new Map<string, PolicyDecisions>();
  port?: number;

  constructor(private readonly opts: RateLimitServiceOptions) {
    this.metrics = opts.registry ? new RateLimitMetrics(opts.registry) : undefined;
    this.now = opts.now ?? Date.now;
    this.store = new RedisCounterStore(opts.redis, opts.logger, {
      onCommand: (s, ok, reason) => {
        this.metrics?.redisSeconds.observe(ok ? OK_LABELS : ERROR_LABELS, s);
        if (!ok) this.metrics?.redisErrors.inc({ reason: reason ?? 'other' });
      },
      onUp: (up) => this.metrics?.redisUp.set(up ? 1 : 0),
    });
    this.metrics?.redisUp.set(0);
  }

  /** Takes the global limits of a newly applied model; connects to Redis once there are any. */
  update(model: Pick<Model, 'policies'>): void {
    this.limits = limitTable(model);
    this.overLimit.clear();
    this.metrics?.failureMode.reset();
    const seen = new Set<string>();
    for (const l of this.limits.values()) {
      if (seen.has(l.policy)) continue;
      seen.add(l.policy);
      this.metrics?.failureMode.set({ policy: l.policy, failure_mode: l.failureMode }, 1);
    }
    // Counts of policies that are gone are dropped (their names are not bounded over a long run).
    for (const name of this.decisions.keys()) if (!seen.has(name)) this.decisions.delete(name);
    if (this.limits.size > 0) this.connect();
  }

  /** Connects to Redis now (else on the first model with a global limit). */
  connect(): void {
    if (this.connected) return;
    this.connected = true;
    this.store.connect();
  }

  /** The policies' failure modes, limits and decisions so far, for /api/status and the dashboard. */
  policies(): {
    policy: string;
    failureMode: 'allow' | 'deny';
    limits: { id: string; requests: number; per: string; by: string }[];
    decisions: PolicyDecisions;
  }[] {
    const byPolicy = new Map<
      string,
      { policy: string; failureMode: 'allow' | 'deny'; limits: { id: string; requests: number; per: string; by: string }[]; decisions: PolicyDecisions }
    >();
    for (const l of this.limits.values()) {
      let p = byPolicy.get(l.policy);
      const decisions = { allowed: 0, limited: 0, failureAllowed: 0, failureDenied: 0, ...this.decisions.get(l.policy) };
      if (!p) {
        p = { policy: l.policy, failureMode: l.failureMode, limits: [], decisions };
        byPolicy.set(l.policy, p);
      }
      p.limits.push({ id: l.id, requests: l.requests, per: l.unit, by: l.by });
    }
    return [...byPolicy.values()].sort((a, b) => (a.policy < b.policy ? -1 : 1));
  }

  redisStatus(): RedisStatus {
    return this.store.status();
  }

  private decided(l: LimitEntry, result: DecisionResult): void {
    this.metrics?.decided(l.policy, result);
    let d = this.decisions.get(l.policy);
    if (!d) {
      d = { allowed: 0, limited: 0, failureAllowed: 0, failureDenied: 0 };
      this.decisions.set(l.policy, d);
    }
    d[DECISION_FIELD[result]]++;
  }

  private remember(key: string, until: number): void {
    if (this.overLimit.size >= OVER_LIMIT_CACHE_SIZE) {
      const now = this.now();
      for (const [k, t] of this.overLimit) if (t <= now) this.overLimit.delete(k);
      // Still full: the oldest entries go (Map order is insertion order).
      while (this.overLimit.size >= OVER_LIMIT_CACHE_SIZE) this.overLimit.delete(this.overLimit.keys().next().value!);
    }
    this.overLimit.set(key, until);
  }

  /** Decides one call (exposed for tests and the benchmark). */
  async shouldRateLimit(request: RequestShape): Promise<RateLimitAnswer> {
    return this.decide(request);
  }

  /**
   * Decides one call: at once when it needs no Redis command (nothing to count, a key already
   * over its limit), so the server answers in the same turn of the event loop; else once Redis
   * has counted.
   *
   * Written to allocate little (plain loops, no closure per descriptor, arrays only when there is
   * something to count): at 1,000 calls/s every object a call leaves behind is young-generation
   * garbage, and serve's scavenges were the tail of the calls (docs/benchmarks.md).
   */
  private decide(request: RequestShape): RateLimitAnswer | Promise<RateLimitAnswer> {
    if ((request.domain ?? '') !== RATELIMIT_DOMAIN)
      throw new GrpcError(GrpcStatus.INVALID_ARGUMENT, `unknown domain "${String(request.domain).slice(0, 100)}" (this service answers "${RATELIMIT_DOMAIN}")`);
    const hits = Math.min(Math.max(1, Math.floor(Number(request.hits_addend) || 0)), 1_000_000);
    const now = this.now();
    const descriptors = request.descriptors ?? [];
    if (descriptors.length > 64) throw new GrpcError(GrpcStatus.INVALID_ARGUMENT, 'too many descriptors');
    const statuses: DescriptorStatus[] = new Array(descriptors.length);
    let pending: Pending[] | undefined;
    let over: Over[] | undefined;
    for (let i = 0; i < descriptors.length; i++) {
      statuses[i] = OK_STATUS;
      const entries = descriptors[i]!.entries ?? [];
      // The limit's id (the first signalbox_limit entry) and the value counted by (the first other entry).
      let id: string | undefined;
      let idSeen = false;
      let by: { value?: string } | undefined;
      for (let k = 0; k < entries.length; k++) {
        const e = entries[k]!;
        if (e.key !== LIMIT_ENTRY) by ??= e;
        else if (!idSeen) {
          idSeen = true;
          id = e.value;
        }
      }
      const limit = this.limits.get(id ?? '');
      if (!limit) continue; // unknown (a policy just removed): not counted
      let digest = '-';
      if (limit.by !== 'none') {
        if (!by?.value) continue;
        const value = limit.by === 'path' ? by.value.split('?', 1)[0]! : by.value;
        digest = hash('sha256', value, 'base64url').slice(0, 22);
      }
      const windowStart = Math.floor(now / limit.windowMs) * limit.windowMs;
      const windowEnd = windowStart + limit.windowMs;
      const key = `signalbox:rl:${limit.id}:${windowStart}:${digest}`;
      const cached = this.overLimit.get(key);
      if (cached !== undefined && cached > now) {
        this.metrics?.cacheHit();
        statuses[i] = this.status(limit, 'OVER_LIMIT', 0, windowEnd - now);
        over ??= [];
        over.push({ limit, resetMs: windowEnd - now });
        continue;
      }
      pending ??= [];
      pending.push({ i, limit, key, windowEnd });
    }
    if (over) {
      // A key already over its limit: the call is refused without a Redis command.
      for (const o of over) this.decided(o.limit, 'limited');
      return this.answer(statuses, over);
    }
    if (!pending) return this.answer(statuses, undefined);
    return this.count(pending, hits, now, statuses);
  }

  /** Counts the pending descriptors in Redis, then answers (by the limits' failureMode when Redis cannot). */
  private count(pending: Pending[], hits: number, now: number, statuses: DescriptorStatus[]): Promise<RateLimitAnswer> {
    const keys: string[] = new Array(pending.length);
    const addends: number[] = new Array(pending.length);
    const windows: number[] = new Array(pending.length);
    for (let k = 0; k < pending.length; k++) {
      keys[k] = pending[k]!.key;
      addends[k] = hits;
      windows[k] = pending[k]!.windowEnd - now + KEY_SLACK_MS;
    }
    return this.store.count(keys, addends, windows).then(
      (counts) => this.counted(pending, counts, now, statuses),
      () => {
        let deny = false;
        for (const p of pending) {
          if (p.limit.failureMode === 'deny') deny = true;
          this.decided(p.limit, p.limit.failureMode === 'deny' ? 'failure_denied' : 'failure_allowed');
        }
        if (deny) throw new GrpcError(GrpcStatus.UNAVAILABLE, 'the rate-limit store (Redis) cannot be reached');
        return this.answer(statuses, undefined);
      },
    );
  }

  /** The answer once Redis has counted: each descriptor's status by its count. */
  private counted(pending: Pending[], counts: number[], now: number, statuses: DescriptorStatus[]): RateLimitAnswer {
    let over: Over[] | undefined;
    for (let k = 0; k < pending.length; k++) {
      const p = pending[k]!;
      const n = Number(counts[k]);
      const isOver = n > p.limit.requests;
      const left = Math.max(0, p.limit.requests - n);
      statuses[p.i] = this.status(p.limit, isOver ? 'OVER_LIMIT' : 'OK', left, p.windowEnd - now);
      this.decided(p.limit, isOver ? 'limited' : 'allowed');
      if (isOver) {
        this.remember(p.key, p.windowEnd);
        over ??= [];
        over.push({ limit: p.limit, resetMs: p.windowEnd - now });
      }
    }
    return this.answer(statuses, over);
  }

  private status(l: LimitEntry, code: 'OK' | 'OVER_LIMIT', remaining: number, resetMs: number): DescriptorStatus {
    return {
      code,
      current_limit: { name: l.policy, requests_per_unit: l.requests, unit: UNIT[l.unit] },
      limit_remaining: remaining,
      duration_until_reset: durationOf(resetMs),
    };
  }

  private answer(statuses: DescriptorStatus[], over: Over[] | undefined): RateLimitAnswer {
    if (!over?.length) return { overall: 'OK', statuses, headers: NO_HEADERS };
    // The client may retry once every limit it is over has reset.
    let wait = 0;
    for (const o of over) wait = Math.max(wait, o.resetMs);
    return {
      overall: 'OVER_LIMIT',
      statuses,
      headers: [
        { key: 'retry-after', value: String(Math.max(1, Math.ceil(wait / 1000))) },
        { key: 'x-ratelimit-policy', value: over[0]!.limit.policy },
      ],
    };
  }

  /** One call's bytes to the answer's bytes (synchronously when the decision needs no Redis command). */
  private handle(bytes: Uint8Array): Uint8Array | Promise<Uint8Array> {
    let request: RequestShape;
    try {
      request = decodeRateLimitRequest(bytes);
    } catch (e) {
      this.metrics?.called('error');
      throw new GrpcError(GrpcStatus.INVALID_ARGUMENT, `request does not decode as a RateLimitRequest (${(e as Error).message})`);
    }
    this.calls++;
    let a: RateLimitAnswer | Promise<RateLimitAnswer>;
    try {
      a = this.decide(request);
    } catch (e) {
      throw this.refused(e);
    }
    if (a instanceof Promise) {
      return a.then(
        (x) => this.encoded(x),
        (e) => {
          throw this.refused(e);
        },
      );
    }
    return this.encoded(a);
  }

  private encoded(a: RateLimitAnswer): Uint8Array {
    this.metrics?.called(a.overall === 'OK' ? 'ok' : 'over_limit');
    return encodeRateLimitResponse(a);
  }

  /** Counts a call that ends in an error; the error, to throw. */
  private refused(e: unknown): unknown {
    this.metrics?.called(e instanceof GrpcError && e.code === GrpcStatus.UNAVAILABLE ? 'unavailable' : 'error');
    return e;
  }

  get secure(): boolean {
    return this.server?.secure ?? false;
  }

  /** Binds `address` (HOST:PORT, port 0 for any); resolves to the bound port. With `tls`: callers need a mesh certificate. */
  async listen(address: string, tls?: AuthzTls): Promise<number> {
    const m = /^\[?([^\]]*?)\]?:(\d+)$/.exec(address);
    if (!m) throw new Error(`rate-limit service address must be HOST:PORT, got "${address}"`);
    if (this.server) throw new Error('the rate-limit service is listening already');
    const material = () => ({ cert: tls!.certificate.certPem, key: tls!.certificate.keyPem, clientCa: tls!.clientCaPem });
    const server = new UnaryGrpcServer([{ path: SHOULD_RATE_LIMIT_PATH, handle: (bytes) => this.handle(bytes) }], {
      onError: (e) => this.opts.logger.error({ err: { message: e.message } }, 'rate-limit service: ShouldRateLimit failed'),
      tls: tls ? material() : undefined,
      onTlsError: (e, remote) =>
        this.opts.logger.debug(
          { peer: remote, reason: e.message },
          'rate-limit service: TLS handshake refused (a caller needs a certificate from the mesh CA)',
        ),
    });
    const port = await server.listen(m[1]!, Number(m[2]));
    if (tls && !hasSelfSignedRoot(tls.clientCaPem)) {
      this.opts.logger.warn(
        'the mesh trust bundle holds no root (self-signed) certificate: the rate-limit service cannot verify proxy certificates; add the root with --ca-bundle',
      );
    }
    if (tls) {
      const follow = () => server.setSecureContext(material());
      tls.certificate.on('changed', follow);
      this.stopFollowing = () => tls.certificate.off('changed', follow);
    }
    this.server = server;
    this.port = port;
    return port;
  }

  async close(): Promise<void> {
    const server = this.server;
    this.server = undefined;
    this.stopFollowing?.();
    await server?.close();
    await this.store.close();
  }
}
