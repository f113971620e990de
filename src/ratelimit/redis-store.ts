// The counters of global rate limits, in Redis (ioredis). One check is one command: a Lua script
// (EVALSHA; sent again as EVAL, which loads it, when Redis answers NOSCRIPT, e.g. after a restart)
// that adds each descriptor's hits to its key and, for a key it just created, sets the key's
// expiry to the end of its window, so keys vanish by themselves and an INCRBY is never left
// without a TTL. Checks that arrive while a command is in flight are merged into one command
// (see count), which is what keeps the cost per request flat under load.
//
// The command is built here (ioredis's Command, handed to sendCommand) rather than through
// ioredis's defineCommand: its script wrapper builds, per call, a copy of the arguments, a
// closure, a second promise to catch NOSCRIPT and a callback adapter, and at 1,000 checks/s that
// garbage is a measurable part of serve's young-generation collections (docs/benchmarks.md).
//
// While Redis cannot be reached a check fails at once (no offline queue: a queued check would
// only answer after Envoy gave up) or after COMMAND_TIMEOUT_MS; the caller then answers by the
// policy's failureMode. ioredis reconnects by itself, with a short capped backoff.
//
// The URL may carry a password (redis://:secret@host:6379); it is never logged, returned by
// status(), or put in an error message: only redactRedisUrl's form leaves this module.
import { createHash } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { performance } from 'node:perf_hooks';
import { Command, Redis, type RedisOptions } from 'ioredis';
import type { Logger } from '../observability/logger.js';
import { checkRedisUrl, redactRedisUrl, redisSocketOf } from '../config/redis-url.js';

export { checkRedisUrl, redactRedisUrl };

/** How long one check waits for Redis before the policy's failureMode answers. */
export const COMMAND_TIMEOUT_MS = 100;

/** Successful commands whose time status() summarises (the most recent ones). */
export const LATENCY_SAMPLES = 512;

/**
 * KEYS: one counter per descriptor. ARGV: hits, window length (ms) per key, in pairs.
 * Returns each key's count after the hits were added.
 */
/** Most calls merged into one command under load (each adds its keys to the script's). */
export const MAX_MERGED_CALLS = 64;

interface QueuedCall {
  keys: string[];
  hits: number[];
  windowsMs: number[];
  resolve(counts: number[]): void;
  reject(e: unknown): void;
}

const SCRIPT = `
local out = {}
for i = 1, #KEYS do
  local hits = tonumber(ARGV[2 * i - 1])
  local n = redis.call('INCRBY', KEYS[i], hits)
  if n == hits then redis.call('PEXPIRE', KEYS[i], ARGV[2 * i]) end
  out[i] = n
end
return out
`;

export interface RedisSettings {
  /** redis://[user:password@]host:port[/db], rediss:// (TLS), or unix:///path.sock (redis+unix://; ?db=N). */
  url: string;
  /** A password that is not in the URL (--redis-password-file, REDIS_PASSWORD). */
  password?: string;
  /** PEM roots to verify a rediss:// server with (default: Node's). */
  caFile?: string;
}

export interface RedisStatus {
  /** The URL with any password replaced by `***`. */
  url: string;
  tls: boolean;
  up: boolean;
  /** Counting commands sent since start (each check that reached for Redis is one). */
  commands: number;
  /** Checks that shared a command with others because they came while one was in flight. */
  merged: number;
  /** Of those, the ones that failed, and by reason (timeout, connection, auth, server, other). */
  errors: number;
  errorsByReason: Record<string, number>;
  /** Time to answer of the last LATENCY_SAMPLES successful commands, in milliseconds (absent before the first). */
  latencyMs?: { p50: number; p99: number; max: number; samples: number };
  /** The last error while down (never holds the password). */
  lastError?: string;
  lastErrorAt?: string;
}

export interface StoreHooks {
  /** Each command's time to answer, ok or failed. */
  onCommand?(seconds: number, ok: boolean, reason?: string): void;
  onUp?(up: boolean): void;
}

/** Shortens ioredis error messages to a word for metric labels (bounded). */
function reasonOf(e: Error): string {
  const m = e.message;
  if (/timed out/i.test(m)) return 'timeout';
  if (/writeable|connection|ECONNREFUSED|ECONNRESET|closed|EPIPE/i.test(m)) return 'connection';
  if (/NOAUTH|WRONGPASS|auth/i.test(m)) return 'auth';
  if (/OOM|READONLY|LOADING|BUSY/i.test(m)) return 'server';
  return 'other';
}

const SCRIPT_SHA = createHash('sha1').update(SCRIPT).digest('hex');

export class RedisCounterStore {
  private readonly client: Redis;
  private up = false;
  private lastError?: { message: string; at: number };
  readonly tls: boolean;
  readonly url: string;
  /** Commands sent (one per check that reaches Redis, fewer under load: see count). */
  commands = 0;
  /** Checks that shared a command with others (sent while one was in flight). */
  merged = 0;
  private inflight = 0;
  private queued: QueuedCall[] = [];
  private flushScheduled = false;
  /** Commands that failed, by reason. */
  private readonly failures: Record<string, number> = {};
  /** The last LATENCY_SAMPLES successful commands' times (ms), a ring. */
  private readonly latencies = new Float64Array(LATENCY_SAMPLES);
  private latencyCount = 0;

  constructor(
    settings: RedisSettings,
    private readonly logger: Logger,
    private readonly hooks: StoreHooks = {},
  ) {
    checkRedisUrl(settings.url);
    const u = new URL(settings.url);
    this.tls = u.protocol === 'rediss:';
    this.url = redactRedisUrl(settings.url);
    const options: RedisOptions = {
      lazyConnect: true,
      // Not ioredis's auto-pipelining: it builds a pipeline object per event-loop turn, and at
      // 1,000 calls/s (about one command per turn) that garbage alone made serve's young-generation
      // collections the tail of every call (bench:ratelimit: added p99 7-10 ms with it, 2 ms
      // without). Calls that arrive while a command is in flight share one command instead (count).
      enableAutoPipelining: false,
      enableOfflineQueue: false,
      maxRetriesPerRequest: 0,
      commandTimeout: COMMAND_TIMEOUT_MS,
      connectTimeout: 1_000,
      // Reconnect soon after an outage (50 ms, growing to 1 s): counting resumes quickly.
      retryStrategy: (times) => Math.min(50 * times, 1_000),
      ...(settings.password !== undefined && !u.password ? { password: settings.password } : {}),
      ...(this.tls ? { tls: settings.caFile ? { ca: readFileSync(settings.caFile, 'utf8') } : {} } : {}),
    };
    // A Unix socket (Redis on the same host): a cheaper write and wake-up than loopback TCP.
    const socket = redisSocketOf(settings.url);
    this.client = socket ? new Redis({ ...options, path: socket.path, db: socket.db }) : new Redis(settings.url, options);
    this.client.on('ready', () => this.setUp(true));
    this.client.on('end', () => this.setUp(false));
    this.client.on('close', () => this.setUp(false));
    this.client.on('error', (e: Error) => this.noteError(e));
  }

  private setUp(up: boolean): void {
    if (this.up === up) return;
    this.up = up;
    this.hooks.onUp?.(up);
    if (up) this.logger.info({ redis: this.url }, 'rate-limit service: Redis connected; global limits are counted');
    else
      this.logger.warn(
        { redis: this.url, reason: this.lastError?.message },
        'rate-limit service: Redis unreachable; global limits answer by their failureMode until it is back',
      );
  }

  private noteError(e: Error): void {
    // ioredis messages hold host and port at most, never the password; the URL is printed redacted.
    this.lastError = { message: e.message.slice(0, 300), at: Date.now() };
  }

  /** Starts connecting (and keeps trying in the background). */
  connect(): void {
    this.client.connect().catch((e: Error) => this.noteError(e));
  }

  /**
   * Adds `hits[i]` to counter `keys[i]` (created with a TTL of `windowsMs[i]`); the counts after.
   * Rejects when Redis cannot answer in time. With no command in flight the call is sent at once;
   * under load, calls that arrive while one is in flight are merged into one command at the end of
   * the event loop's turn (the script counts their keys in order, so each gets its own counts):
   * fewer commands and socket writes as the load grows, no added wait when it is light.
   */
  count(keys: string[], hits: number[], windowsMs: number[]): Promise<number[]> {
    if (this.inflight === 0 && this.queued.length === 0) return this.send(keys, hits, windowsMs);
    return new Promise<number[]>((resolve, reject) => {
      this.queued.push({ keys, hits, windowsMs, resolve, reject });
      if (this.queued.length >= MAX_MERGED_CALLS) this.flush();
      else if (!this.flushScheduled) {
        this.flushScheduled = true;
        setImmediate(() => {
          this.flushScheduled = false;
          this.flush();
        });
      }
    });
  }

  /** Sends the queued calls as one command and hands each its own counts (or the error). */
  private flush(): void {
    const calls = this.queued;
    if (calls.length === 0) return;
    this.queued = [];
    this.merged += calls.length;
    const keys: string[] = [];
    const hits: number[] = [];
    const windowsMs: number[] = [];
    for (const c of calls) {
      for (let i = 0; i < c.keys.length; i++) {
        keys.push(c.keys[i]!);
        hits.push(c.hits[i]!);
        windowsMs.push(c.windowsMs[i]!);
      }
    }
    this.send(keys, hits, windowsMs).then(
      (counts) => {
        let at = 0;
        for (const c of calls) {
          c.resolve(counts.slice(at, at + c.keys.length));
          at += c.keys.length;
        }
      },
      (e: unknown) => {
        for (const c of calls) c.reject(e);
      },
    );
  }

  /** One EVALSHA of the script over these keys (EVAL when Redis does not hold the script). */
  private send(keys: string[], hits: number[], windowsMs: number[]): Promise<number[]> {
    const n = keys.length;
    const args: (string | number)[] = new Array(2 + 3 * n);
    args[0] = SCRIPT_SHA;
    args[1] = n;
    for (let i = 0; i < n; i++) {
      args[2 + i] = keys[i]!;
      args[2 + n + 2 * i] = hits[i]!;
      args[3 + n + 2 * i] = windowsMs[i]!;
    }
    const t0 = performance.now();
    this.commands++;
    this.inflight++;
    return (this.client.sendCommand(new Command('evalsha', args)) as Promise<number[]>).then(
      (out) => this.answered(t0, out),
      (e: Error) => {
        if (!/NOSCRIPT/.test(e?.message ?? '')) return this.failed(t0, e);
        // Redis lost the script (a restart, SCRIPT FLUSH): EVAL sends it, and Redis keeps it for the next EVALSHA.
        args[0] = SCRIPT;
        return (this.client.sendCommand(new Command('eval', args)) as Promise<number[]>).then(
          (out) => this.answered(t0, out),
          (e2: Error) => this.failed(t0, e2),
        );
      },
    );
  }

  private answered(t0: number, out: number[]): number[] {
    this.inflight--;
    const ms = performance.now() - t0;
    this.latencies[this.latencyCount++ % LATENCY_SAMPLES] = ms;
    this.hooks.onCommand?.(ms / 1000, true);
    return out;
  }

  private failed(t0: number, e: Error): never {
    this.inflight--;
    this.noteError(e);
    const reason = reasonOf(e);
    this.failures[reason] = (this.failures[reason] ?? 0) + 1;
    this.hooks.onCommand?.((performance.now() - t0) / 1000, false, reason);
    throw e;
  }

  status(): RedisStatus {
    const errors = Object.values(this.failures).reduce((a, b) => a + b, 0);
    return {
      url: this.url,
      tls: this.tls,
      up: this.up,
      commands: this.commands,
      merged: this.merged,
      errors,
      errorsByReason: { ...this.failures },
      ...(this.latencyCount > 0 ? { latencyMs: this.latencySummary() } : {}),
      ...(this.lastError && !this.up ? { lastError: this.lastError.message, lastErrorAt: new Date(this.lastError.at).toISOString() } : {}),
    };
  }

  private latencySummary(): { p50: number; p99: number; max: number; samples: number } {
    const n = Math.min(this.latencyCount, LATENCY_SAMPLES);
    const sorted = Array.from(this.latencies.subarray(0, n)).sort((a, b) => a - b);
    const at = (q: number) => Math.round(sorted[Math.min(n - 1, Math.ceil(q * n) - 1)]! * 1000) / 1000;
    return { p50: at(0.5), p99: at(0.99), max: at(1), samples: n };
  }

  get isUp(): boolean {
    return this.up;
  }

  async close(): Promise<void> {
    this.client.disconnect();
  }
}
