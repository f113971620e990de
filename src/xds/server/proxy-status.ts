// What the control plane knows about each connected proxy: who it is, what it was sent, what it
// ACKed, and what it rejected (NACK) with Envoy's own message.
import type { Resource } from '../resources/resource.js';
import { SHORT_NAME, TypeUrl } from '../resources/type-urls.js';
import { envoySupport } from './envoy-versions.js';
import type { NackAttribution } from './nack-blame.js';

export interface NodeIdentity {
  id: string;
  role: 'gateway' | 'sidecar';
  /** Sidecars: the service instance it fronts. */
  instance?: string;
  name: string;
  group: string;
  cluster?: string;
  userAgent?: string;
  /** The Envoy release the node reports (user_agent_build_version), major.minor.patch. */
  envoyVersion?: string;
  /** Set when the node asked for the compiled JWT filter but its Envoy has no build of it: why. */
  jwtModuleFallback?: string;
}

/** Which JWT fast path a proxy runs, read from the listeners it was sent. */
export type JwtEngine = 'module' | 'script' | 'none';

const engineOfListener = new WeakMap<Resource, JwtEngine>();

function listenerEngine(r: Resource): JwtEngine {
  let e = engineOfListener.get(r);
  if (e === undefined) {
    const text = JSON.stringify(r.printable);
    e = text.includes('"signalbox.jwt_check"') ? (text.includes('dynamic_modules.v3.DynamicModuleFilter') ? 'module' : 'script') : 'none';
    engineOfListener.set(r, e);
  }
  return e;
}

/** A proxy the server refused for its Envoy version (kept so that /api/proxies can say why). */
export interface RefusedProxy {
  id: string;
  role: 'gateway' | 'sidecar';
  name: string;
  envoyVersion?: string;
  peer: string;
  reason: string;
  at: string;
  /** Refusals of this node id since it was first refused. */
  attempts: number;
}

export interface TypeStatus {
  sent?: { version: string; nonce: string; at: number; resources: number };
  acked?: { version: string; at: number };
  /**
   * The last NACK: Envoy's message (cut to MAX_NACK_MESSAGE; `cut` characters were dropped) and what
   * it blames. `rateLimited`: the stream was over its allowance of searched NACKs, so the blame is
   * carried over from the previous NACK of the same version and message, or empty.
   */
  nack?: { version: string; message: string; at: number; resources: string[]; sources: string[]; cut?: number; rateLimited?: boolean } & Partial<
    Omit<NackAttribution, 'sources'>
  >;
  /** NACKs received on this stream, and how many of them were over the allowance (not searched). */
  nacks?: number;
  nacksRateLimited?: number;
  pushes: number;
}

/**
 * The one vocabulary for a proxy's sync state, used by the admin API, the dashboard and
 * `signalbox status`: SYNCED (every type's last sent version ACKed), PENDING (a newer version sent,
 * not ACKed yet, or held back until the clusters it names are warm on the proxy), NACKED (the newest version of some type was rejected by the proxy).
 */
export const PROXY_STATES = ['SYNCED', 'PENDING', 'NACKED'] as const;
export type ProxyState = (typeof PROXY_STATES)[number];

let nextStreamId = 1;

/** How many cluster names `waitingForClusters` lists (the count says how many there are). */
const MAX_LISTED_CLUSTERS = 20;

export class ProxyStatus {
  readonly streamId = nextStreamId++;
  readonly connectedAt = Date.now();
  readonly types = new Map<TypeUrl, TypeStatus>();
  /** The resources last sent per type (shared objects, not copies). */
  readonly sent = new Map<TypeUrl, Map<string, Resource>>();
  /** Whether the proxy proved its identity with a token (only then does it receive secrets). */
  secretsAllowed = false;
  /** The token the proxy presented: its id, subject and expiry (never the token itself). */
  token?: { id: string; subject: string; expiresAt?: string };
  /** This instance's own certificate (serial and expiry; never the key). */
  certificate?: { identity: string; serial: string; notAfter: string };
  /** Listener or route changes held back now until the clusters they name are warm on the proxy. */
  waiting?: { since: number; types: TypeUrl[]; clusters: string[] };
  /** Changes held back for warm clusters on this stream, and how many were sent after the wait's bound instead. */
  warmWaits = 0;
  warmWaitTimeouts = 0;
  /** Clusters the routes no longer name, kept on the proxy until their drain period ends. */
  draining = 0;

  constructor(
    readonly node: NodeIdentity,
    readonly protocol: 'sotw' | 'delta',
    readonly peer: string,
  ) {}

  type(t: TypeUrl): TypeStatus {
    let s = this.types.get(t);
    if (!s) {
      s = { pushes: 0 };
      this.types.set(t, s);
    }
    return s;
  }

  /** Synced when every type's last sent version was ACKed; NACKED when any last response was rejected. */
  get state(): ProxyState {
    let pending = this.waiting !== undefined;
    for (const s of this.types.values()) {
      if (s.nack && s.sent && s.nack.version === s.sent.version) return 'NACKED';
      if (s.sent && s.acked?.version !== s.sent.version) pending = true;
    }
    return pending ? 'PENDING' : 'SYNCED';
  }

  /** The Envoy release the proxy reports, whether the suite runs on it, and whether the JWT module is built for it. */
  get envoy(): { version: string; tested: boolean; jwtModule: boolean } | undefined {
    const version = this.node.envoyVersion;
    if (version === undefined) return undefined;
    const { tested, jwtModule } = envoySupport(version);
    return { version, tested, jwtModule };
  }

  /** The JWT fast path in the listeners last sent: the compiled filter, the Lua script, or neither. */
  get jwtEngine(): JwtEngine {
    let engine: JwtEngine = 'none';
    for (const r of this.sent.get(TypeUrl.Listener)?.values() ?? []) {
      const e = listenerEngine(r);
      if (e === 'module') return e;
      if (e === 'script') engine = e;
    }
    return engine;
  }

  toJSON() {
    const types: Record<string, unknown> = {};
    for (const [t, s] of [...this.types].sort(([a], [b]) => (a < b ? -1 : 1))) {
      types[SHORT_NAME[t]] = {
        sentVersion: s.sent?.version,
        sentAt: s.sent ? new Date(s.sent.at).toISOString() : undefined,
        ackedVersion: s.acked?.version,
        ackedAt: s.acked ? new Date(s.acked.at).toISOString() : undefined,
        pushes: s.pushes,
        lastNack: s.nack
          ? {
              version: s.nack.version,
              message: s.nack.message,
              at: new Date(s.nack.at).toISOString(),
              resources: s.nack.resources,
              sources: s.nack.sources,
              culprit: s.nack.culprit,
              candidates: s.nack.candidates,
              attribution: s.nack.attribution,
              cut: s.nack.cut || undefined,
              rateLimited: s.nack.rateLimited || undefined,
            }
          : undefined,
        nacks: s.nacks,
        nacksRateLimited: s.nacksRateLimited || undefined,
      };
    }
    return {
      id: this.node.id,
      role: this.node.role,
      name: this.node.name,
      group: this.node.group,
      protocol: this.protocol,
      stream: this.streamId,
      peer: this.peer,
      userAgent: this.node.userAgent,
      envoy: this.envoy,
      jwtEngine: this.jwtEngine,
      jwtEngineNote: this.node.jwtModuleFallback,
      connectedAt: new Date(this.connectedAt).toISOString(),
      authenticated: this.secretsAllowed,
      token: this.token,
      state: this.state,
      waitingForClusters: this.waiting
        ? {
            since: new Date(this.waiting.since).toISOString(),
            types: this.waiting.types.map((t) => SHORT_NAME[t]),
            clusters: this.waiting.clusters.slice(0, MAX_LISTED_CLUSTERS),
            count: this.waiting.clusters.length,
          }
        : undefined,
      warmWaits: this.warmWaits,
      warmWaitTimeouts: this.warmWaitTimeouts,
      drainingClusters: this.draining,
      types,
    };
  }
}

/** How many refused proxies are remembered (the oldest is forgotten first). */
export const MAX_REFUSED = 256;

export class ProxyRegistry {
  private readonly streams = new Map<number, ProxyStatus>();
  private readonly refusedById = new Map<string, RefusedProxy>();

  add(p: ProxyStatus): void {
    this.streams.set(p.streamId, p);
    this.refusedById.delete(p.node.id);
  }

  /** Records a proxy refused for its Envoy version; it stays listed until it connects or is pushed out. */
  refuse(node: NodeIdentity, peer: string, reason: string): void {
    const before = this.refusedById.get(node.id);
    this.refusedById.delete(node.id);
    this.refusedById.set(node.id, {
      id: node.id,
      role: node.role,
      name: node.name,
      envoyVersion: node.envoyVersion,
      peer,
      reason,
      at: new Date().toISOString(),
      attempts: (before?.attempts ?? 0) + 1,
    });
    if (this.refusedById.size > MAX_REFUSED) this.refusedById.delete(this.refusedById.keys().next().value!);
  }

  /** Proxies refused for their Envoy version, by node id. */
  refused(): RefusedProxy[] {
    return [...this.refusedById.values()].sort((a, b) => (a.id < b.id ? -1 : a.id > b.id ? 1 : 0));
  }

  refusal(id: string): RefusedProxy | undefined {
    return this.refusedById.get(id);
  }

  remove(p: ProxyStatus): void {
    this.streams.delete(p.streamId);
  }

  all(): ProxyStatus[] {
    return [...this.streams.values()].sort((a, b) => (a.node.id < b.node.id ? -1 : a.node.id > b.node.id ? 1 : a.streamId - b.streamId));
  }

  /** The newest stream of a node id. */
  byId(id: string): ProxyStatus | undefined {
    let found: ProxyStatus | undefined;
    for (const p of this.streams.values()) if (p.node.id === id && (!found || p.streamId > found.streamId)) found = p;
    return found;
  }

  /**
   * What an admin URL's `:id` names: the proxy with that node id; else the connected proxies of the
   * gateway or service of that name (`gateway/NAME` or `service/NAME` to pick the role), one per node
   * id (its newest stream). One is `found`; several are `ambiguous` (sorted by id); none is `none`.
   */
  resolve(key: string): ProxyLookup {
    const exact = this.byId(key);
    if (exact) return { kind: 'found', proxy: exact };
    const m = /^(gateway|service)\/([^/]+)$/.exec(key);
    const role = m ? (m[1] === 'gateway' ? 'gateway' : 'sidecar') : undefined;
    const name = m ? m[2]! : key;
    const newest = new Map<string, ProxyStatus>();
    for (const p of this.streams.values()) {
      if (p.node.name !== name || (role !== undefined && p.node.role !== role)) continue;
      const cur = newest.get(p.node.id);
      if (!cur || p.streamId > cur.streamId) newest.set(p.node.id, p);
    }
    const found = [...newest.values()].sort((a, b) => (a.node.id < b.node.id ? -1 : a.node.id > b.node.id ? 1 : 0));
    if (found.length === 1) return { kind: 'found', proxy: found[0]!, byName: true };
    if (found.length > 1) return { kind: 'ambiguous', proxies: found };
    return { kind: 'none' };
  }

  get size(): number {
    return this.streams.size;
  }
}

export type ProxyLookup = { kind: 'found'; proxy: ProxyStatus; byName?: boolean } | { kind: 'ambiguous'; proxies: ProxyStatus[] } | { kind: 'none' };
