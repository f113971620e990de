// One Consul blocking query, repeated forever (until stopped), with the index rules Consul's
// documentation asks of every client:
//  - the first query (and the first after any error) is non-blocking: a Consul that restarted
//    with a fresh, lower index answers at once instead of holding us for the whole `wait`;
//  - an index that goes backwards resets the loop (index 0: the next query is non-blocking);
//  - an index of 0 (or missing from a 200) is never sent back as is: 0 becomes 1, so a buggy or
//    empty answer cannot turn the loop into a busy loop;
//  - queries are at least `minIntervalMs` apart, whatever Consul answers (rate limit);
//  - errors back off exponentially with jitter (`backoffDelay`), reset by the next success;
//  - an unchanged index after a wait timeout is not parsed or reported again.
import { ConsulError, type ConsulClient } from './client.js';

export interface Backoff {
  baseMs: number;
  maxMs: number;
}

/**
 * Delay before retry number `attempt` (1 = first retry): exponential, capped, "equal jitter" —
 * half fixed, half random — so retries of many watches spread out but never drop to zero.
 */
export function backoffDelay(attempt: number, b: Backoff, random: () => number = Math.random): number {
  const exp = Math.min(b.maxMs, b.baseMs * 2 ** Math.max(0, Math.min(attempt - 1, 30)));
  return Math.round(exp / 2 + random() * (exp / 2));
}

export interface WatchInfo {
  index: bigint;
  /** The index went backwards (Consul restarted, snapshot restored, or a different server). */
  reset: boolean;
  /** First answer after one or more failed queries. */
  recovered: boolean;
}

export interface WatchOptions<T> {
  client: ConsulClient;
  path: string;
  query?: Record<string, string | undefined>;
  /** Longest time Consul may hold a blocking query (Consul adds up to wait/16 of jitter). */
  waitMs: number;
  minIntervalMs: number;
  backoff: Backoff;
  /** Extra time on top of wait + wait/16 before a blocking request counts as timed out. Default 5 s. */
  timeoutMarginMs?: number;
  /** Deadline of a non-blocking request. Default 10 s. */
  nonBlockingTimeoutMs?: number;
  /** Validates and converts a 200 body; throws ConsulError('malformed') when it cannot. */
  parse(body: unknown): T;
  onData(data: T, info: WatchInfo): void;
  onError(err: ConsulError, consecutiveFailures: number, retryInMs: number): void;
  random?: () => number;
}

export class BlockingWatch<T> {
  /** The index the next blocking query will send (0: non-blocking). */
  index = 0n;
  /** The last index seen in an answer (kept across errors, for spotting resets). */
  lastSeenIndex = 0n;
  failures = 0;
  requests = 0;
  lastSuccessAt?: number;
  lastError?: { reason: string; message: string; at: number };
  private stopped = false;
  private haveData = false;
  private controller = new AbortController();
  private sleepTimer?: NodeJS.Timeout;
  private wake?: () => void;
  private loop?: Promise<void>;

  constructor(private readonly o: WatchOptions<T>) {}

  start(): this {
    this.loop ??= this.run();
    return this;
  }

  /** Stops the loop and cancels the query in flight. Resolves when the loop has ended. */
  async stop(): Promise<void> {
    this.stopped = true;
    this.controller.abort();
    clearTimeout(this.sleepTimer);
    this.wake?.();
    await this.loop;
  }

  get running(): boolean {
    return !this.stopped;
  }

  private sleep(ms: number): Promise<void> {
    if (ms <= 0 || this.stopped) return Promise.resolve();
    return new Promise((resolve) => {
      this.wake = resolve;
      this.sleepTimer = setTimeout(resolve, ms);
    });
  }

  private async run(): Promise<void> {
    const { o } = this;
    let lastStart = -Infinity;
    let afterError = false;
    while (!this.stopped) {
      const since = performance.now() - lastStart;
      if (since < o.minIntervalMs) await this.sleep(o.minIntervalMs - since);
      if (this.stopped) break;
      lastStart = performance.now();
      const blocking = this.index > 0n;
      const query: Record<string, string | undefined> = { ...o.query };
      if (blocking) {
        query.index = this.index.toString();
        query.wait = `${Math.max(1, Math.round(o.waitMs / 1000))}s`;
      }
      const timeoutMs = blocking ? o.waitMs + Math.ceil(o.waitMs / 16) + (o.timeoutMarginMs ?? 5_000) : (o.nonBlockingTimeoutMs ?? 10_000);
      try {
        this.requests++;
        const res = await o.client.get(o.path, { query, timeoutMs, signal: this.controller.signal });
        if (this.stopped) break;
        if (res.index === undefined) throw new ConsulError('malformed', 'Consul answered without an X-Consul-Index header; this endpoint cannot be watched');
        let next = res.index < 1n ? 1n : res.index;
        const reset = this.lastSeenIndex > 0n && next < this.lastSeenIndex;
        const unchanged = this.haveData && !afterError && !reset && next === this.lastSeenIndex;
        if (!unchanged) {
          const data = o.parse(res.body); // throws 'malformed': the index is then not advanced
          const recovered = afterError;
          this.haveData = true;
          this.lastSeenIndex = next;
          if (reset) next = 0n; // restart the loop: the next query is non-blocking
          this.index = next;
          this.failures = 0;
          afterError = false;
          this.lastSuccessAt = Date.now();
          o.onData(data, { index: this.lastSeenIndex, reset, recovered });
        } else {
          this.index = next; // e.g. the non-blocking re-read after a reset: block from here on
          this.lastSuccessAt = Date.now();
        }
      } catch (e) {
        if (this.stopped) break;
        const err = e instanceof ConsulError ? e : new ConsulError('malformed', (e as Error).message);
        this.failures++;
        afterError = true;
        this.index = 0n; // after an error, ask without blocking: Consul may have restarted fresh
        this.lastError = { reason: err.reason, message: err.message, at: Date.now() };
        const delay = backoffDelay(this.failures, o.backoff, o.random);
        try {
          o.onError(err, this.failures, delay);
        } catch {
          // a listener's bug must not end the watch
        }
        await this.sleep(delay);
      }
    }
  }
}
