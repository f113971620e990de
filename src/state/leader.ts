// One leader among the replicas, for the work that must happen once (making the CA on a first
// start, pruning expired revocations): a Consul session lock on `<prefix>/leader`. Each replica
// holds a session (TTL, renewed at a third of it); the one whose session holds the lock leads.
// When the leader dies its session expires (or is destroyed on a clean stop) and the lock is
// released; the followers, waiting on the lock key with a blocking query, take it at once.
// Everything else (issuing certificates, verifying tokens, serving xDS) every replica does.
import { EventEmitter } from 'node:events';
import type { SharedState, StateLog } from './shared.js';

export const LEADER_RECORD = 'leader';

export interface LeaderOptions {
  /** Session TTL in seconds (Consul's minimum is 10). A dead leader is replaced within about this. */
  ttlS?: number;
  /** Longest wait of one blocking query on the lock key. */
  waitMs?: number;
}

export class Leadership extends EventEmitter<{ change: [leading: boolean] }> {
  private session?: string;
  private leading = false;
  private stopped = false;
  private readonly ac = new AbortController();
  private renewTimer?: NodeJS.Timeout;
  private loop?: Promise<void>;
  private readonly ttlS: number;
  private readonly waitMs: number;

  constructor(
    private readonly shared: SharedState,
    readonly replicaId: string,
    private readonly logger?: StateLog,
    opts: LeaderOptions = {},
  ) {
    super();
    this.ttlS = Math.max(10, opts.ttlS ?? 10);
    this.waitMs = opts.waitMs ?? 10_000;
  }

  get isLeader(): boolean {
    return this.leading;
  }

  /** This replica's Consul session (undefined before start and after stop): other keys may be tied to its life. */
  get sessionId(): string | undefined {
    return this.session;
  }

  /** The lock key's full name. */
  get key(): string {
    return this.shared.keyOf(LEADER_RECORD);
  }

  /** Makes the session and tries the lock once (so a lone first replica leads before it goes on), then keeps trying in the background. */
  async start(): Promise<void> {
    await this.newSession();
    await this.tryAcquire();
    this.renewTimer = setInterval(() => void this.renew(), (this.ttlS * 1000) / 3);
    this.renewTimer.unref();
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

  private async newSession(): Promise<void> {
    this.session = await this.shared.kv.createSession(`signalbox ${this.replicaId}`, this.ttlS);
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

  /** Renews the session; a session Consul no longer knows (it expired while Consul was out of reach) loses the lead and is made again. */
  private async renew(): Promise<void> {
    if (!this.session || this.stopped) return;
    try {
      if (await this.shared.kv.renewSession(this.session)) return;
      this.set(false);
      await this.newSession();
      await this.tryAcquire();
    } catch (e) {
      this.logger?.warn({ err: (e as Error).message }, 'cannot renew the leader session in Consul; retrying');
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

  /** Gives the lead up (a follower takes it at once) and ends the session. */
  async stop(): Promise<void> {
    this.stopped = true;
    this.ac.abort();
    clearInterval(this.renewTimer);
    await this.loop?.catch(() => undefined);
    const session = this.session;
    this.session = undefined;
    if (!session) return;
    if (this.leading)
      await this.shared.kv.release(this.key, JSON.stringify({ replica: this.replicaId, released: new Date().toISOString() }), session).catch(() => undefined);
    this.set(false);
    await this.shared.kv.destroySession(session).catch(() => undefined);
  }
}
