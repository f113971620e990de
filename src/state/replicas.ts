// The replicas as Consul knows them, for /api/replicas and `signalbox status`: each replica writes
// `replicas/ID/info` (its addresses, its start) locked by its session, so the lock says whether it
// is alive (a dead replica's session expires and the lock goes), and `replicas/ID/proxies`, the
// node ids of the proxies whose stream it holds and a compact status of each (its sync state word,
// versions, NACK: what `signalbox status` prints; written when it changes, at most once a second).
// Any replica can then answer for all of them from Consul alone, without reaching its peers' admin
// APIs (which are loopback-only by default). The details are the caller's plain JSON: this layer
// knows only each one's node id and state word.
//
// The proxies record has no size of its own: the list is compressed (brotli), cut into parts of at
// most PART_CHARS characters (Consul refuses a value over 512 KiB) written under a folder named by
// their digest, `replicas/ID/parts/DIGEST/N`, and then `replicas/ID/proxies` (the head, written
// with check-and-set) names the digest and the number of parts. Parts first, head last, stale
// parts deleted after: a reader, who lists the replicas in one read, sees a head whose parts are
// all there, or the previous one's. A head, part or digest that does not match is left out.
import { createHash } from 'node:crypto';
import { promisify } from 'node:util';
import zlib from 'node:zlib';
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
 * withinBudget's default: bytes of proxy details kept in full. Past it, the remaining proxies are
 * brief: their top-level text fields only (id, state, names; some 150 bytes), with `brief: true`.
 * The caller orders them (problems first) so that what is cut is what matters least. A record
 * uses it only when its list is over the record's limits (encodeProxies).
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

/** The most characters of one part (base64 of the compressed list): well under Consul's 512 KiB per value. */
export const PART_CHARS = 256 * 1024;
/** The most parts of one replica's record: what it publishes is kept within MAX_PARTS × PART_CHARS (8 MiB). */
export const MAX_PARTS = 32;
/** The most bytes of JSON a record holds once decompressed (a reader never inflates more). */
export const MAX_RAW = 64 * 1024 * 1024;

export interface RecordLimits {
  partChars: number;
  maxParts: number;
  maxRaw: number;
}
const LIMITS: RecordLimits = { partChars: PART_CHARS, maxParts: MAX_PARTS, maxRaw: MAX_RAW };

/** What `replicas/ID/proxies` holds (format 2): where its parts are and what they make. */
export interface ProxiesHead {
  format: 2;
  at: string;
  /** Proxies the replica holds. */
  count: number;
  /** Of those, how many were left out to stay within the limits (0 but for tens of thousands). */
  omitted: number;
  encoding: 'br';
  /** sha256 of the parts joined (hex, 32 digits): names their folder and checks them. */
  digest: string;
  parts: number;
}

export interface EncodedProxies {
  head: ProxiesHead;
  parts: string[];
  /** The proxies as published (some brief, some left out, when over the limits). */
  published: PublishedProxy[];
}

const brotli = promisify(zlib.brotliCompress);
const unbrotli = promisify(zlib.brotliDecompress);

async function compress(raw: string): Promise<string> {
  const buf = Buffer.from(raw);
  const z = await brotli(buf, {
    params: {
      [zlib.constants.BROTLI_PARAM_QUALITY]: 5,
      [zlib.constants.BROTLI_PARAM_LGWIN]: 24,
      [zlib.constants.BROTLI_PARAM_SIZE_HINT]: buf.length,
    },
  });
  return z.toString('base64');
}

const digestOf = (text: string) => createHash('sha256').update(text).digest('hex').slice(0, 32);

/**
 * The proxies as the parts and head of a record: compressed, in parts of at most `partChars`,
 * at most `maxParts` of them, at most `maxRaw` bytes once inflated. Past those bounds the last
 * proxies (the caller orders them, problems first) are published brief, then all of them, then
 * the last are left out and counted in `omitted`. Deterministic: the same list gives the same parts.
 */
export async function encodeProxies(proxies: readonly PublishedProxy[], at: string, limits: Partial<RecordLimits> = {}): Promise<EncodedProxies> {
  const { partChars, maxParts, maxRaw } = { ...LIMITS, ...limits };
  const maxChars = partChars * maxParts;
  let list: PublishedProxy[] = [...proxies];
  let budget = Number.POSITIVE_INFINITY;
  let cutting = false;
  for (let attempt = 0; attempt < 16; attempt++) {
    const raw = JSON.stringify(list);
    const rawBytes = Buffer.byteLength(raw);
    const text = rawBytes <= maxRaw * 4 ? await compress(raw) : '';
    const over = Math.max(text ? text.length / maxChars : Number.POSITIVE_INFINITY, rawBytes / maxRaw);
    if (over <= 1) {
      const parts: string[] = [];
      for (let i = 0; i < text.length || parts.length === 0; i += partChars) parts.push(text.slice(i, i + partChars));
      const head: ProxiesHead = {
        format: 2,
        at,
        count: proxies.length,
        omitted: proxies.length - list.length,
        encoding: 'br',
        digest: digestOf(text),
        parts: parts.length,
      };
      return { head, parts, published: list };
    }
    const shrink = Number.isFinite(over) ? 0.9 / over : 0.25;
    if (cutting) list = list.slice(0, Math.floor(list.length * shrink));
    else if (attempt < 6) {
      // Brief past a budget of JSON bytes, shrunk by how far over the last try was.
      budget = Math.floor(Math.min(budget, rawBytes) * shrink);
      list = withinBudget(proxies, budget);
    } else {
      list = withinBudget(proxies, 0);
      cutting = true;
    }
  }
  list = [];
  const text = await compress('[]');
  return {
    head: { format: 2, at, count: proxies.length, omitted: proxies.length, encoding: 'br', digest: digestOf(text), parts: 1 },
    parts: [text],
    published: list,
  };
}

const isPublished = (x: unknown): x is PublishedProxy => typeof (x as PublishedProxy)?.id === 'string' && typeof (x as PublishedProxy).state === 'string';

/** A format-2 head read back, field by field; undefined when it is not one. */
export function parseHead(data: Record<string, unknown> | undefined, limits: Partial<RecordLimits> = {}): ProxiesHead | undefined {
  const maxParts = limits.maxParts ?? MAX_PARTS;
  const d = data ?? {};
  if (d.format !== 2 || d.encoding !== 'br' || typeof d.digest !== 'string' || !/^[0-9a-f]{32}$/.test(d.digest)) return undefined;
  if (!Number.isInteger(d.parts) || (d.parts as number) < 1 || (d.parts as number) > maxParts) return undefined;
  const count = Number.isInteger(d.count) ? (d.count as number) : 0;
  const omitted = Number.isInteger(d.omitted) ? (d.omitted as number) : 0;
  return { format: 2, at: typeof d.at === 'string' ? d.at.slice(0, 64) : '', count, omitted, encoding: 'br', digest: d.digest, parts: d.parts as number };
}

/**
 * The proxies a head names, from its parts (`part(i)`: the value of part i, undefined if absent):
 * undefined when a part is missing or too long, the digest does not match, or what they make is
 * not a list; entries that are not proxies are dropped.
 */
export async function decodeProxies(
  head: ProxiesHead,
  part: (i: number) => string | undefined,
  limits: Partial<RecordLimits> = {},
): Promise<PublishedProxy[] | undefined> {
  const { partChars, maxRaw } = { ...LIMITS, ...limits };
  const pieces: string[] = [];
  for (let i = 0; i < head.parts; i++) {
    const p = part(i);
    if (p === undefined || p.length > Math.max(partChars, 512 * 1024)) return undefined;
    pieces.push(p);
  }
  const text = pieces.join('');
  if (digestOf(text) !== head.digest) return undefined;
  try {
    const raw = await unbrotli(Buffer.from(text, 'base64'), { maxOutputLength: maxRaw });
    const list = JSON.parse(raw.toString()) as unknown;
    return Array.isArray(list) ? list.filter(isPublished) : undefined;
  } catch {
    return undefined;
  }
}

const partName = (i: number) => String(i).padStart(3, '0');

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
  private toldFull = false;

  constructor(
    private readonly shared: SharedState,
    private readonly leadership: Leadership,
    private readonly info: ReplicaInfo,
    private readonly proxies: () => readonly PublishedProxy[],
    private readonly logger?: StateLog,
    private readonly limits: Partial<RecordLimits> = {},
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
      const proxies = this.proxies();
      const text = JSON.stringify(proxies);
      if (text !== this.lastProxies) {
        await this.publish(proxies);
        this.lastProxies = text;
      }
    } catch (e) {
      this.logger?.warn({ err: (e as Error).message }, 'cannot publish this replica in Consul; retrying');
    } finally {
      this.busy = false;
    }
  }

  /**
   * Writes this replica's proxies: the parts (each only if absent: a folder is named by its
   * content, so a part already there is the same text, else it is replaced with check-and-set),
   * then the head with check-and-set, then deletes the folders of other digests.
   */
  private async publish(proxies: readonly PublishedProxy[]): Promise<void> {
    const enc = await encodeProxies(proxies, new Date().toISOString(), this.limits);
    const folder = `${this.shared.keyOf(`replicas/${this.info.id}/parts`)}/`;
    for (const [i, value] of enc.parts.entries()) {
      const key = `${folder}${enc.head.digest}/${partName(i)}`;
      if (await this.shared.kv.cas(key, value, 0)) continue;
      const { entry } = await this.shared.kv.get(key);
      if (entry?.value !== value && !(await this.shared.kv.cas(key, value, entry?.modifyIndex ?? 0))) throw new Error(`${key} changed while it was written`);
    }
    await this.shared.update(`replicas/${this.info.id}/proxies`, () => ({ ...enc.head }));
    const stale = new Set((await this.shared.kv.keys(folder)).map((k) => k.slice(folder.length).split('/')[0]!).filter((d) => d && d !== enc.head.digest));
    for (const d of [...stale].sort()) await this.shared.kv.deleteTree(`${folder}${d}/`);
    if (enc.head.omitted || enc.published.some((p) => (p as { brief?: unknown }).brief === true)) {
      if (!this.toldFull)
        this.logger?.warn(
          { proxies: enc.head.count, omitted: enc.head.omitted, parts: enc.head.parts },
          'this replica holds too many proxies to publish each in full in Consul: the last are published brief, or left out',
        );
      this.toldFull = true;
    } else this.toldFull = false;
  }

  /** Every replica Consul knows of under the prefix, sorted by id; with `details`, what each published of its proxies. */
  async list(opts: { details?: boolean } = {}): Promise<{ self: string; leader?: string; replicas: ReplicaView[] }> {
    const entries = await this.shared.kv.list(`${this.shared.keyOf('replicas')}/`);
    const leader = await this.leadership.leader();
    const byId = new Map<string, ReplicaView>();
    const base = `${this.shared.keyOf('replicas')}/`;
    // Parts by "ID/DIGEST/N", and the heads to read them by; all from the one list (one snapshot).
    const parts = new Map<string, string>();
    const heads: [ReplicaView, ProxiesHead][] = [];
    for (const e of entries) {
      const [id, what, ...rest] = e.key.slice(base.length).split('/');
      if (id && what === 'parts' && rest.length === 2) parts.set(`${id}/${rest.join('/')}`, e.value);
      if (!id || (what !== 'info' && what !== 'proxies') || rest.length) continue;
      const view = byId.get(id) ?? { id, xds: '', startedAt: '', alive: false, leader: id === leader, proxies: [], ...(opts.details ? { details: [] } : {}) };
      byId.set(id, view);
      try {
        if (what === 'info') {
          const i = JSON.parse(e.value) as ReplicaInfo;
          Object.assign(view, { xds: String(i.xds ?? ''), startedAt: String(i.startedAt ?? ''), alive: !!e.session });
          continue;
        }
        const p = (JSON.parse(e.value) as { data?: { ids?: unknown; at?: unknown; proxies?: unknown } }).data;
        view.proxiesAt = typeof p?.at === 'string' ? p.at : undefined;
        const head = parseHead(p, this.limits);
        if (head) heads.push([view, head]);
        else if (p && !('format' in p)) {
          // Written by a replica of an earlier version (the list in the record itself).
          view.proxies = Array.isArray(p.ids) ? p.ids.filter((x): x is string => typeof x === 'string') : [];
          if (opts.details) view.details = Array.isArray(p.proxies) ? p.proxies.filter(isPublished) : [];
        }
        // any other format (a later version's): a replica without proxies, not an error
      } catch {
        // a damaged entry shows as a replica without details
      }
    }
    for (const [view, head] of heads) {
      const list = await decodeProxies(head, (i) => parts.get(`${view.id}/${head.digest}/${partName(i)}`), this.limits);
      if (!list) continue; // a part missing or damaged: shown without proxies, never as it is
      view.proxies = [...new Set(list.map((p) => p.id))].sort();
      if (opts.details) view.details = list;
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
