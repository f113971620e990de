// Every proxy of every replica (`--state consul`), for `/api/proxies?scope=all`, `signalbox status`
// and the dashboard. Each replica publishes a compact status of the proxies it holds in its
// `replicas/ID/proxies` record in Consul (what `publishedProxies` makes: node id, role, group,
// protocol, sync state word, versions per type, the NACK with its policy file; never a key or a
// token); a replica asked for all of them merges its own proxies (live, in full) with what the
// live others published. What comes from Consul is checked field by field (`parseSummary`): a
// damaged or foreign entry is dropped, never shown as it is.
import { PROXY_STATES, type ProxyRegistry, type ProxyState, type ProxyStatus } from '../xds/server/proxy-status.js';
import { SHORT_NAME } from '../xds/resources/type-urls.js';

/** A NACK as published: Envoy's message cut to this many characters (`signalbox status` prints 500). */
export const PUBLISHED_NACK_MESSAGE = 500;
/** The rejected resources a published NACK names (the count is in the replica's own /api/proxies). */
const PUBLISHED_NACK_RESOURCES = 20;

export interface PublishedNack {
  version: string;
  message: string;
  at?: string;
  sources: string[];
  resources: string[];
  culprit?: { doc: number; path?: string; line?: number };
}

export interface PublishedType {
  sentVersion?: string;
  ackedVersion?: string;
  lastNack?: PublishedNack;
}

/** One proxy as a replica publishes it; `brief` when its record was full and only the top-level text fields fit (no versions). */
export interface ProxySummary {
  id: string;
  role: 'gateway' | 'sidecar';
  name: string;
  group: string;
  protocol: string;
  state: ProxyState;
  connectedAt?: string;
  types: Record<string, PublishedType>;
  certificate?: { identity?: string; notAfter?: string };
  brief?: true;
}

/** The replicas as the state layer lists them (src/state/replicas.ts), with what each published. */
export interface ReplicasView {
  self: string;
  leader?: string;
  replicas: { id: string; xds: string; alive: boolean; leader: boolean; proxies: string[]; proxiesAt?: string; details?: unknown[] }[];
}

/** What serve hands the admin API with `--state consul`: this replica's id and the replicas from Consul. */
export interface ReplicaSource {
  self: string;
  list(): Promise<ReplicasView>;
}

/** A proxy of another replica: its summary, the replica holding it and when that replica published it. */
export type RemoteProxy = ProxySummary & { replica: string; publishedAt?: string };

const PRIVATE_KEY = /-----BEGIN [^-]*PRIVATE KEY-----[\s\S]*?(-----END [^-]*PRIVATE KEY-----|$)/g;

function summaryOf(p: ProxyStatus, rel: (f: string) => string): ProxySummary {
  const types: Record<string, PublishedType> = {};
  for (const [t, s] of [...p.types].sort(([a], [b]) => (SHORT_NAME[a] < SHORT_NAME[b] ? -1 : 1))) {
    const n = s.nack;
    types[SHORT_NAME[t]] = {
      sentVersion: s.sent?.version,
      ackedVersion: s.acked?.version,
      lastNack: n
        ? {
            version: n.version,
            message: n.message.replace(PRIVATE_KEY, '[redacted]').slice(0, PUBLISHED_NACK_MESSAGE),
            at: new Date(n.at).toISOString(),
            sources: n.sources.map(rel),
            resources: n.resources.slice(0, PUBLISHED_NACK_RESOURCES),
            culprit: n.culprit ? { doc: n.culprit.doc, path: n.culprit.path, line: n.culprit.line } : undefined,
          }
        : undefined,
    };
  }
  return {
    id: p.node.id,
    role: p.node.role,
    name: p.node.name,
    group: p.node.group,
    protocol: p.protocol,
    state: p.state,
    connectedAt: new Date(p.connectedAt).toISOString(),
    types,
    certificate: p.certificate ? { identity: p.certificate.identity, notAfter: p.certificate.notAfter } : undefined,
  };
}

const RANK: Record<ProxyState, number> = { NACKED: 0, PENDING: 1, SYNCED: 2 };

/**
 * What this replica publishes of its proxies: one summary per node id (its newest stream), NACKED
 * first, then PENDING, then by id, so that a record too big for Consul cuts the synced ones first.
 * JSON round trip: undefined fields are dropped, so an unchanged status gives the same text.
 */
export function publishedProxies(registry: ProxyRegistry, rel: (file: string) => string): ProxySummary[] {
  const newest = new Map<string, ProxyStatus>();
  for (const p of registry.all()) {
    const cur = newest.get(p.node.id);
    if (!cur || p.streamId > cur.streamId) newest.set(p.node.id, p);
  }
  const list = [...newest.values()].map((p) => summaryOf(p, rel));
  list.sort((a, b) => RANK[a.state] - RANK[b.state] || (a.id < b.id ? -1 : a.id > b.id ? 1 : 0));
  return JSON.parse(JSON.stringify(list)) as ProxySummary[];
}

const str = (v: unknown, max = 1024): string | undefined => (typeof v === 'string' ? v.slice(0, max) : undefined);
const strs = (v: unknown, max: number): string[] => (Array.isArray(v) ? v.filter((x): x is string => typeof x === 'string').slice(0, max) : []);
const obj = (v: unknown): Record<string, unknown> | undefined =>
  typeof v === 'object' && v !== null && !Array.isArray(v) ? (v as Record<string, unknown>) : undefined;
const SHORT_NAMES = new Set<string>(Object.values(SHORT_NAME));

/** A published summary read back from Consul, field by field; undefined when it is not one. */
export function parseSummary(x: unknown): ProxySummary | undefined {
  const o = obj(x);
  const id = str(o?.id, 256);
  const state = o?.state as ProxyState;
  const role = o?.role;
  if (!o || !id || !PROXY_STATES.includes(state) || (role !== 'gateway' && role !== 'sidecar')) return undefined;
  const types: Record<string, PublishedType> = {};
  for (const [t, v] of Object.entries(obj(o.types) ?? {})) {
    const tv = obj(v);
    if (!SHORT_NAMES.has(t) || !tv) continue;
    const n = obj(tv.lastNack);
    const c = obj(n?.culprit);
    types[t] = {
      sentVersion: str(tv.sentVersion, 128),
      ackedVersion: str(tv.ackedVersion, 128),
      lastNack:
        n && typeof n.version === 'string'
          ? {
              version: n.version.slice(0, 128),
              message: (str(n.message, PUBLISHED_NACK_MESSAGE) ?? '').replace(PRIVATE_KEY, '[redacted]'),
              at: str(n.at, 64),
              sources: strs(n.sources, 64),
              resources: strs(n.resources, PUBLISHED_NACK_RESOURCES),
              culprit:
                c && typeof c.doc === 'number' ? { doc: c.doc, path: str(c.path, 512), line: typeof c.line === 'number' ? c.line : undefined } : undefined,
            }
          : undefined,
    };
  }
  const cert = obj(o.certificate);
  return {
    id,
    role,
    name: str(o.name, 256) ?? '',
    group: str(o.group, 512) ?? '',
    protocol: str(o.protocol, 16) ?? '',
    state,
    connectedAt: str(o.connectedAt, 64),
    types,
    certificate: cert ? { identity: str(cert.identity, 512), notAfter: str(cert.notAfter, 64) } : undefined,
    ...(o.brief === true ? { brief: true as const } : {}),
  };
}

/**
 * The proxies the live replicas other than this one published, one per node id: a proxy this
 * replica holds itself is left out (its own view is live), and a node id two others list (it
 * moved; the one it left has not rewritten its record yet) is taken from the newest connection.
 */
export function remoteProxies(view: ReplicasView, here: ReadonlySet<string>): RemoteProxy[] {
  const byId = new Map<string, RemoteProxy>();
  for (const r of view.replicas) {
    if (r.id === view.self || !r.alive) continue;
    for (const d of r.details ?? []) {
      const s = parseSummary(d);
      if (!s || here.has(s.id)) continue;
      const cur = byId.get(s.id);
      if (cur && (cur.connectedAt ?? '') >= (s.connectedAt ?? '')) continue;
      byId.set(s.id, { ...s, replica: r.id, publishedAt: r.proxiesAt });
    }
  }
  return [...byId.values()].sort((a, b) => (a.id < b.id ? -1 : a.id > b.id ? 1 : 0));
}

/** The replicas in a short form (no proxy lists): id, xDS address, alive, leader, how many proxies. */
export function replicaRows(view: ReplicasView): { id: string; xds: string; alive: boolean; leader: boolean; proxies: number; self: boolean }[] {
  return view.replicas.map((r) => ({ id: r.id, xds: r.xds, alive: r.alive, leader: r.leader, proxies: r.proxies.length, self: r.id === view.self }));
}
