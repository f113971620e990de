// The replicas as Consul knows them, for /api/replicas and `signalbox status`: each replica writes
// `replicas/ID/info` (its addresses, its start) locked by its session, so the lock says whether it
// is alive (a dead replica's session expires and the lock goes), and `replicas/ID/proxies`, the
// node ids of the proxies whose stream it holds and a compact status of each (its sync state word,
// versions, NACK: what `signalbox status` prints; written when it changes, at most once a second).
// Any replica can then answer for all of them from Consul alone, without reaching its peers' admin
// APIs (which are loopback-only by default). The details are the caller's plain JSON: this layer
// knows only each one's node id and state word, and keeps the record within PROXIES_BUDGET bytes.
import type { Leadership } from './leader.js';
import type { SharedState, StateLog } from './shared.js';

export interface ReplicaInfo {
  id: string;
  /** Where proxies reach its xDS server (HOST:PORT as bound). */
  xds: string;
  startedAt: string;
}

/**
 * What a replica publishes of one proxy it holds: its node id, its sync state word and further
 * details (plain JSON made by the caller; never a secret).
 */
export interface PublishedProxy {
  id: string;
  state: string;
}

/**
 * The most bytes of proxy details one replica's record holds (Consul refuses a value over 512 KiB).
 * Past it, the remaining proxies are published brief: their top-level text fields only (id, state,
 * names; some 150 bytes), with `brief: true`. The caller orders them (problems first) so that what
 * is cut is what matters least.
 */
export const PROXIES_BUDGET = 256 * 1024;

/** The proxies as published: in full while they fit in `budget` bytes, then brief. */
export function withinBudget(proxies: readonly PublishedProxy[], budget = PROXIES_BUDGET): PublishedProxy[] {
  let used = 0;
  return proxies.map((p) => {
    const full = Buffer.byteLength(JSON.stringify(p)) + 1;
    if (used + full <= budget) {
      used += full;
      return p;
    }
    const brief: PublishedProxy & Record<string, unknown> = { id: p.id, state: p.state };
    for (const [k, v] of Object.entries(p)) if (typeof v === 'string') brief[k] = v;
    brief.brief = true;
    used += Buffer.byteLength(JSON.stringify(brief)) + 1;
    return brief;
  });
}

export interface ReplicaView extends ReplicaInfo {
  /** Its session holds its info key: it is running (or died less than about 2 s ago, see leader.ts). */
  alive: boolean;
  leader: boolean;
  /** Node ids of the proxies on a stream to it, as it last wrote them. */
  proxies: string[];
  proxiesAt?: string;
  /** With `list({ details: true })`: what it published of each proxy (objects with a string `id` and `state`; the rest unchecked). */
  details?: PublishedProxy[];
}

export class ReplicaDirectory {
  private timer?: NodeJS.Timeout;
  private lastProxies = '';
  private busy = false;

  constructor(
    private readonly shared: SharedState,
    private readonly leadership: Leadership,
    private readonly info: ReplicaInfo,
    private readonly proxies: () => readonly PublishedProxy[],
    private readonly logger?: StateLog,
  ) {}

  private infoKey(id: string): string {
    return this.shared.keyOf(`replicas/${id}/info`);
  }

  /** Registers this replica and keeps its registration and proxy list current (every second). */
  async start(): Promise<void> {
    await this.tick();
    this.timer = setInterval(() => void this.tick(), 1_000);
    this.timer.unref();
  }

  private async tick(): Promise<void> {
    if (this.busy) return;
    this.busy = true;
    try {
      const session = this.leadership.sessionId;
      if (session) {
        const { entry } = await this.shared.kv.get(this.infoKey(this.info.id));
        if (entry?.session !== session) await this.shared.kv.acquire(this.infoKey(this.info.id), JSON.stringify(this.info), session);
      }
      const published = withinBudget(this.proxies());
      const ids = [...new Set(published.map((p) => p.id))].sort();
      const text = JSON.stringify([ids, published]);
      if (text !== this.lastProxies) {
        await this.shared.update(`replicas/${this.info.id}/proxies`, () => ({ ids, at: new Date().toISOString(), proxies: published }));
        this.lastProxies = text;
      }
    } catch (e) {
      this.logger?.warn({ err: (e as Error).message }, 'cannot publish this replica in Consul; retrying');
    } finally {
      this.busy = false;
    }
  }

  /** Every replica Consul knows of under the prefix, sorted by id; with `details`, what each published of its proxies. */
  async list(opts: { details?: boolean } = {}): Promise<{ self: string; leader?: string; replicas: ReplicaView[] }> {
    const entries = await this.shared.kv.list(`${this.shared.keyOf('replicas')}/`);
    const leader = await this.leadership.leader();
    const byId = new Map<string, ReplicaView>();
    const base = `${this.shared.keyOf('replicas')}/`;
    for (const e of entries) {
      const [id, what] = e.key.slice(base.length).split('/');
      if (!id || (what !== 'info' && what !== 'proxies')) continue;
      const view = byId.get(id) ?? { id, xds: '', startedAt: '', alive: false, leader: id === leader, proxies: [] };
      byId.set(id, view);
      try {
        if (what === 'info') {
          const i = JSON.parse(e.value) as ReplicaInfo;
          Object.assign(view, { xds: String(i.xds ?? ''), startedAt: String(i.startedAt ?? ''), alive: !!e.session });
        } else {
          const p = (JSON.parse(e.value) as { data?: { ids?: unknown; at?: unknown; proxies?: unknown } }).data;
          view.proxies = Array.isArray(p?.ids) ? p.ids.filter((x): x is string => typeof x === 'string') : [];
          view.proxiesAt = typeof p?.at === 'string' ? p.at : undefined;
          if (opts.details)
            view.details = Array.isArray(p?.proxies)
              ? p.proxies.filter((x): x is PublishedProxy => typeof (x as PublishedProxy)?.id === 'string' && typeof (x as PublishedProxy).state === 'string')
              : [];
        }
      } catch {
        // a damaged entry shows as a replica without details
      }
    }
    // A dead replica's proxy list is stale: its proxies moved (or are moving) to a live one.
    for (const v of byId.values()) {
      if (v.alive) continue;
      v.proxies = [];
      if (v.details) v.details = [];
    }
    return { self: this.info.id, leader, replicas: [...byId.values()].filter((v) => v.xds || v.proxies.length).sort((a, b) => (a.id < b.id ? -1 : 1)) };
  }

  stop(): void {
    clearInterval(this.timer);
  }
}
