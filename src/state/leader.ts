// One leader among the replicas, for the work that must happen once (making the CA on a first
// start, pruning expired revocations): a Consul session lock on `<prefix>/leader`.
//
// How a dead replica is noticed fast: each replica registers a service on its Consul agent with a
// TTL check of 2 s, which it passes every 0.5 s, and ties its session to that check. A replica
// that dies (SIGKILL, a crash, a host gone) stops passing it; 2 s later the agent turns it
// critical, Consul ends the session on the spot and releases its locks. The followers, waiting on
// the lock key with a blocking query, take it at once: the session has no lock delay. (A session
// TTL would not do: Consul's minimum is 10 s and it waits up to twice that.) A clean stop releases
// the lock and deregisters the service; a dead replica's registration is removed by the agent a
// minute after its check turned critical.
//
// No lock delay is safe because the leader's work is safe to do twice or at once: records made
// once are written with check-and-set "only if absent" (two makers agree on the first one
// written), and pruning rewrites the revocation list with check-and-set on its ModifyIndex,
// removing only entries expired for ten minutes. A lock delay guards work that is not.
// Everything else (issuing certificates, verifying tokens, serving xDS) every replica does.
import { EventEmitter } from 'node:events';
import type { SharedState, StateLog } from './shared.js';

export const LEADER_RECORD = 'leader';

/** The Consul service every replica registers on its agent, with its liveness check. */
export const REPLICA_SERVICE = 'signalbox-control-plane';

export interface LeaderOptions {
  /** TTL of the liveness check in seconds. A dead leader is replaced within about this. */
  checkTtlS?: number;
  /** How often the check is passed. */
  beatMs?: number;
  /** Longest wait of one blocking query on the lock key. */
  waitMs?: number;
}

export class Leadership extends EventEmitter<{ change: [leading: boolean] }> {
  private session?: string;
  private leading = false;
  private stopped = false;
  private readonly ac = new AbortController();
  private beatTimer?: NodeJS.Timeout;
  private beating = false;
  private beats = 0;
  private down = false;
  private loop?: Promise<void>;
  private readonly checkTtlS: number;
  private readonly beatMs: number;
  private readonly waitMs: number;

  constructor(
    private readonly shared: SharedState,
    readonly replicaId: string,
    private readonly logger?: StateLog,
    opts: LeaderOptions = {},
  ) {
    super();
    this.checkTtlS = Math.max(1, opts.checkTtlS ?? 2);
    this.beatMs = Math.max(100, opts.beatMs ?? 500);
    this.waitMs = opts.waitMs ?? 10_000;
  }

  get isLeader(): boolean {
    return this.leading;
  }

  /** This replica's Consul session (undefined before start and after stop): other keys may be tied to its life. */
  get sessionId(): string | undefined {
    return this.session;
  }

  /** This replica's service on its Consul agent (unique per state prefix and replica). */
  get serviceId(): string {
    return `signalbox-${this.shared.prefix.replace(/\//g, '.')}-${this.replicaId}`;
  }

  /** The TTL check the session is tied to. */
  get checkId(): string {
    return `${this.serviceId}-alive`;
  }

  /** The lock key's full name. */
  get key(): string {
    return this.shared.keyOf(LEADER_RECORD);
  }

  /**
   * Registers the liveness check, makes the session and tries the lock once (so a lone first
   * replica leads before it goes on), then keeps the check passing and the lock tried in the background.
   */
  async start(): Promise<void> {
    await this.register();
    await this.newSession();
    await this.tryAcquire();
    this.beatTimer = setInterval(() => void this.beat(), this.beatMs);
    this.beatTimer.unref();
    this.loop = this.follow();
  }

  /** The replica id the lock names, or undefined when no replica leads. */
  async leader(): Promise<string | undefined> {
    const { entry } = await this.shared.kv.get(this.key);
    if (!entry?.session) return undefined;
    try {
      return (JSON.parse(entry.value) as { replica?: string }).replica;
    } catch {
      return undefined;
    }
  }

  private async register(): Promise<void> {
    await this.shared.kv.registerTtlService({
      id: this.serviceId,
      name: REPLICA_SERVICE,
      checkId: this.checkId,
      checkName: `Signalbox replica ${this.replicaId} alive`,
      ttlS: this.checkTtlS,
      deregisterAfter: '1m',
      meta: { replica: this.replicaId, 'state-prefix': this.shared.prefix },
    });
  }

  private async newSession(): Promise<void> {
    // Passed just before: a session cannot be tied to a check that is critical.
    if (!(await this.shared.kv.passCheck(this.checkId))) await this.register();
    this.session = await this.shared.kv.createSession(`signalbox ${this.replicaId}`, [this.checkId]);
  }

  private set(leading: boolean): void {
    if (leading === this.leading) return;
    this.leading = leading;
    this.logger?.info({ replica: this.replicaId, lock: this.key }, leading ? 'this replica leads (once-only work runs here)' : 'this replica no longer leads');
    this.emit('change', leading);
  }

  private async tryAcquire(): Promise<void> {
    if (!this.session || this.stopped) return;
    const got = await this.shared.kv.acquire(this.key, JSON.stringify({ replica: this.replicaId, since: new Date().toISOString() }), this.session);
    this.set(got);
  }

  /**
   * Passes the liveness check; every two seconds also makes sure the session still exists. A check
   * the agent no longer knows (it restarted without its state, or reaped it after Consul was out
   * of reach) is registered again; a session Consul ended (the check turned critical meanwhile)
   * loses the lead and is made again, and the lock is tried again.
   */
  private async beat(): Promise<void> {
    if (!this.session || this.stopped || this.beating) return;
    this.beating = true;
    try {
      const known = await this.shared.kv.passCheck(this.checkId);
      if (!known) await this.register();
      const probe = !known || ++this.beats % Math.max(1, Math.round(2_000 / this.beatMs)) === 0;
      if (probe && !this.stopped && !(await this.shared.kv.sessionAlive(this.session))) {
        this.set(false);
        this.logger?.warn({ replica: this.replicaId }, 'the Consul session of this replica ended (its liveness check went critical); making a new one');
        await this.newSession();
        await this.tryAcquire();
      }
      if (this.down) this.logger?.info({ replica: this.replicaId }, 'Consul reachable again: liveness check passing');
      this.down = false;
    } catch (e) {
      if (!this.down) this.logger?.warn({ err: (e as Error).message }, 'cannot pass the liveness check in Consul; retrying');
      this.down = true;
    } finally {
      this.beating = false;
    }
  }

  /** Waits on the lock key; whenever no session holds it, tries to take it. */
  private async follow(): Promise<void> {
    let index = 0;
    while (!this.stopped) {
      try {
        const r = await this.shared.kv.get(this.key, { index, waitMs: this.waitMs, signal: this.ac.signal });
        index = r.index < index ? 0 : r.index;
        const holder = r.entry?.session;
        if (!holder) await this.tryAcquire();
        else this.set(holder === this.session);
      } catch {
        if (this.stopped) return;
        index = 0;
        await new Promise((r) => setTimeout(r, 1_000).unref());
      }
    }
  }

  /** Gives the lead up (a follower takes it at once), ends the session and removes the liveness check. */
  async stop(): Promise<void> {
    if (this.stopped) return;
    this.stopped = true;
    this.ac.abort();
    clearInterval(this.beatTimer);
    await this.loop?.catch(() => undefined);
    const session = this.session;
    this.session = undefined;
    if (session) {
      if (this.leading)
        await this.shared.kv.release(this.key, JSON.stringify({ replica: this.replicaId, released: new Date().toISOString() }), session).catch(() => undefined);
      await this.shared.kv.destroySession(session).catch(() => undefined);
    }
    this.set(false);
    // Also ends a session a beat in flight may have just made (it is tied to this check).
    await this.shared.kv.deregisterService(this.serviceId).catch(() => undefined);
  }
}
