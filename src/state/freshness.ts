// How long this replica has been unable to read the shared state, and whether that is longer than
// is safe for it to go on issuing workload certificates (`--state-stale-max`, docs/ha.md "When
// Consul is unavailable"). A replica that cannot read Consul learns neither revocations made
// elsewhere nor a CA rotation; past the limit it stops issuing and renewing (the caller holds the
// issuances back) and resumes as soon as a read succeeds again. Consul is probed with a consistent
// read (it needs the Raft leader) every second; the clock is injectable for tests.
import { EventEmitter } from 'node:events';
import type { StateLog } from './shared.js';

/** Default of --state-stale-max: one hour (see docs/ha.md for why). */
export const DEFAULT_STATE_STALE_MAX_MS = 3_600_000;
/** A probe unanswered this long counts as a failure from when it was sent (a hung connection). */
export const PROBE_HANG_MS = 5_000;

export interface FreshnessStatus {
  /** Consul answered the last probe. */
  readable: boolean;
  /** Since when reads have failed (ISO), while they fail. */
  unreadableSince?: string;
  unreadableSeconds: number;
  /** --state-stale-max in seconds. */
  staleMaxSeconds: number;
  /** Unreadable for longer than the limit: workload certificates are not issued nor renewed. */
  stale: boolean;
  /** Since when issuance is stopped (ISO), while stale. */
  staleSince?: string;
}

export class StateFreshness extends EventEmitter<{ change: [stale: boolean, status: FreshnessStatus] }> {
  private downSince?: number;
  private staleAt?: number;
  private probeStarted?: number;
  private timer?: NodeJS.Timeout;
  private readonly now: () => number;

  constructor(
    private readonly probe: () => Promise<unknown>,
    readonly limitMs: number,
    private readonly opts: { now?: () => number; logger?: StateLog; intervalMs?: number } = {},
  ) {
    super();
    this.now = opts.now ?? Date.now;
  }

  get stale(): boolean {
    return this.staleAt !== undefined;
  }

  start(): void {
    this.timer = setInterval(() => void this.check(), this.opts.intervalMs ?? 1_000);
    this.timer.unref();
  }

  stop(): void {
    clearInterval(this.timer);
  }

  /** One probe (skipped while the last is unanswered), then the verdict. */
  async check(): Promise<void> {
    if (this.probeStarted !== undefined) {
      if (this.now() - this.probeStarted > PROBE_HANG_MS) this.failed(this.probeStarted);
      this.judge();
      return;
    }
    const started = this.now();
    this.probeStarted = started;
    try {
      await this.probe();
      this.downSince = undefined;
    } catch {
      this.failed(started);
    } finally {
      this.probeStarted = undefined;
    }
    this.judge();
  }

  private failed(at: number): void {
    this.downSince ??= at;
  }

  private judge(): void {
    const now = this.now();
    const stale = this.downSince !== undefined && now - this.downSince > this.limitMs;
    if (stale === this.stale) return;
    this.staleAt = stale ? now : undefined;
    const status = this.status();
    if (stale)
      this.opts.logger?.warn(
        { unreadableSince: status.unreadableSince, staleMaxSeconds: status.staleMaxSeconds },
        'Consul has been unreadable for longer than --state-stale-max: workload certificates are no longer issued nor renewed (proxies keep the ones they hold; configuration is still served) until Consul answers',
      );
    else this.opts.logger?.info({ staleMaxSeconds: status.staleMaxSeconds }, 'Consul answers again: workload certificates are issued and renewed again');
    this.emit('change', stale, status);
  }

  status(): FreshnessStatus {
    const now = this.now();
    return {
      readable: this.downSince === undefined,
      ...(this.downSince !== undefined ? { unreadableSince: new Date(this.downSince).toISOString() } : {}),
      unreadableSeconds: this.downSince === undefined ? 0 : Math.max(0, Math.round((now - this.downSince) / 1000)),
      staleMaxSeconds: Math.round(this.limitMs / 1000),
      stale: this.stale,
      ...(this.staleAt !== undefined ? { staleSince: new Date(this.staleAt).toISOString() } : {}),
    };
  }
}
