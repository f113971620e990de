// The SRE dashboard: a static page (plain HTML/JS/CSS, no build step) and the JSON/SSE endpoints
// it reads. Built for big meshes: proxies are searched and paged on the server, live updates carry
// summaries and the traffic tables (capped), never the whole proxy list.
import { existsSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import type { FastifyInstance, FastifyReply } from 'fastify';
import type { Pipeline } from '../../controller/pipeline.js';
import type { IdentityManager } from '../../ca/identities.js';
import type { TrafficStore } from '../../telemetry/traffic-store.js';
import { SHORT_NAME } from '../../xds/resources/type-urls.js';
import { PROXY_STATES, type ProxyRegistry, type ProxyState, type ProxyStatus } from '../../xds/server/proxy-status.js';
import { remoteProxies, replicaRows, type RemoteProxy, type ReplicaSource } from '../replicas.js';

export interface DashboardDeps {
  pipeline: Pipeline;
  registry: ProxyRegistry;
  identities?: IdentityManager;
  traffic?: TrafficStore;
  /** The policy directory, so file names are shown relative to it. */
  policyDir?: string;
  /** With `--state consul`: the other replicas' proxies join the list, each row naming its replica. */
  replicas?: ReplicaSource;
}

const ASSETS: Record<string, string> = {
  'index.html': 'text/html; charset=utf-8',
  'app.js': 'text/javascript; charset=utf-8',
  'style.css': 'text/css; charset=utf-8',
};

/** Where the page's files are: src/admin/dashboard/static (also when running from dist/). */
export function staticDir(): string {
  let dir = path.dirname(fileURLToPath(import.meta.url));
  for (;;) {
    if (existsSync(path.join(dir, 'package.json'))) return path.join(dir, 'src', 'admin', 'dashboard', 'static');
    const up = path.dirname(dir);
    if (up === dir) throw new Error('dashboard assets not found');
    dir = up;
  }
}

/** Content Security Policy: only this origin's script and style; nothing inline, no frames. */
const CSP =
  "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

const MAX_SSE_CLIENTS = 64;
const MAX_LIVE_ROUTES = 300;

export function registerDashboard(app: FastifyInstance, deps: DashboardDeps): void {
  const dir = staticDir();
  const assets = new Map(Object.entries(ASSETS).map(([f, type]) => [f, { type, body: readFileSync(path.join(dir, f)) }]));
  const send = (reply: FastifyReply, file: string) => {
    const a = assets.get(file)!;
    return reply
      .header('content-type', a.type)
      .header('content-security-policy', CSP)
      .header('x-content-type-options', 'nosniff')
      .header('cache-control', 'no-cache')
      .send(a.body);
  };
  app.get('/', (_req, reply) => send(reply, 'index.html'));
  app.get('/dashboard', (_req, reply) => send(reply, 'index.html'));
  app.get('/dashboard/', (_req, reply) => send(reply, 'index.html'));
  app.get('/dashboard/app.js', (_req, reply) => send(reply, 'app.js'));
  app.get('/dashboard/style.css', (_req, reply) => send(reply, 'style.css'));

  const rel = (f: string) => relativeToPolicyDir(deps.policyDir, f);

  /** The proxy's own instance certificate (each instance has its own). */
  const certOf = (p: ProxyStatus) => {
    const identity = deps.pipeline.irGroups().get(p.node.group)?.identity;
    const cert = p.certificate;
    return cert ? { identity: cert.identity, notAfter: cert.notAfter } : identity ? { identity } : undefined;
  };

  const proxyRow = (p: ProxyStatus) => {
    const types: Record<string, { sent?: string; acked?: string }> = {};
    let nack: { type: string; message: string; sources: string[]; resources: string[]; at: string } | undefined;
    for (const [t, s] of p.types) {
      types[SHORT_NAME[t]] = { sent: s.sent?.version, acked: s.acked?.version };
      if (s.nack && s.sent && s.nack.version === s.sent.version && (!nack || s.nack.at > Date.parse(nack.at))) {
        nack = {
          type: SHORT_NAME[t],
          message: s.nack.message,
          sources: s.nack.sources.map(rel),
          resources: s.nack.resources,
          at: new Date(s.nack.at).toISOString(),
        };
      }
    }
    const t = deps.traffic?.proxyView(p.node.id);
    return {
      id: p.node.id,
      role: p.node.role,
      name: p.node.name,
      instance: p.node.instance,
      group: p.node.group,
      protocol: p.protocol,
      state: p.state,
      connectedAt: new Date(p.connectedAt).toISOString(),
      types,
      nack,
      certificate: certOf(p),
      traffic: t ? { rps: t.rps, requests: t.totals.requests, c5xx: t.totals.c5xx, p99: t.p99, spark: t.spark } : undefined,
    };
  };

  /** A row for a proxy of another replica, from what that replica published (no traffic: its proxies report to it). */
  const remoteRow = (p: RemoteProxy) => {
    const types: Record<string, { sent?: string; acked?: string }> = {};
    let nack: { type: string; message: string; sources: string[]; resources: string[]; at: string } | undefined;
    for (const [t, v] of Object.entries(p.types)) {
      types[t] = { sent: v.sentVersion, acked: v.ackedVersion };
      const n = v.lastNack;
      if (n && n.version === v.sentVersion && (!nack || (n.at ?? '') > nack.at))
        nack = { type: t, message: n.message, sources: n.sources, resources: n.resources, at: n.at ?? '' };
    }
    return {
      id: p.id,
      role: p.role,
      name: p.name,
      group: p.group,
      protocol: p.protocol,
      state: p.state,
      connectedAt: p.connectedAt,
      types,
      nack,
      certificate: p.certificate,
      replica: p.replica,
      publishedAt: p.publishedAt,
      brief: p.brief,
    };
  };

  /** One entry per node id (its newest stream). */
  const proxies = (): ProxyStatus[] => {
    const newest = new Map<string, ProxyStatus>();
    for (const p of deps.registry.all()) {
      const cur = newest.get(p.node.id);
      if (!cur || p.streamId > cur.streamId) newest.set(p.node.id, p);
    }
    return [...newest.values()];
  };

  app.get<{ Querystring: { q?: string; state?: string; role?: string; page?: string; size?: string } }>('/api/dashboard/proxies', async (req) => {
    const q = (req.query.q ?? '').toLowerCase().slice(0, 200);
    const state = req.query.state ?? '';
    const role = req.query.role ?? '';
    const size = Math.min(200, Math.max(1, Number(req.query.size) || 50));
    // Rows as plain data with what the filters read; the other replicas' (--state consul) join them.
    type Row = { id: string; name: string; group: string; role: string; state: ProxyState; row: () => object };
    const source = deps.replicas;
    let list: Row[] = proxies().map((p) => ({
      id: p.node.id,
      name: p.node.name,
      group: p.node.group,
      role: p.node.role,
      state: p.state,
      row: () => (source ? { ...proxyRow(p), replica: source.self } : proxyRow(p)),
    }));
    let replicasError: string | undefined;
    if (source) {
      try {
        const remote = remoteProxies(await source.list(), new Set(list.map((r) => r.id)));
        list.push(...remote.map((p) => ({ id: p.id, name: p.name, group: p.group, role: p.role, state: p.state, row: () => remoteRow(p) })));
      } catch (e) {
        replicasError = `only this replica's proxies: the other replicas cannot be read from Consul (${(e as Error).message})`;
      }
    }
    if (q) list = list.filter((p) => p.id.toLowerCase().includes(q) || p.name.toLowerCase().includes(q) || p.group.toLowerCase().includes(q));
    if (state) list = list.filter((p) => p.state === state);
    if (role) list = list.filter((p) => p.role === role);
    // NACKED first, then PENDING, then by id: problems surface on the first page.
    const rank: Record<ProxyState, number> = { NACKED: 0, PENDING: 1, SYNCED: 2 };
    list.sort((a, b) => rank[a.state] - rank[b.state] || (a.id < b.id ? -1 : a.id > b.id ? 1 : 0));
    const pages = Math.max(1, Math.ceil(list.length / size));
    const page = Math.min(pages, Math.max(1, Number(req.query.page) || 1));
    const rows = list.slice((page - 1) * size, page * size).map((r) => r.row());
    return { total: list.length, page, pages, size, proxies: rows, ...(source ? { replica: source.self, replicasError } : {}) };
  });

  // The replicas panel (--state consul): each replica from Consul with its xDS address, whether it
  // lives and leads, and how many proxies it holds. `state: 'file'` (one replica) hides the panel.
  // Not in the live feed: it reads Consul, so the page asks for it with the banner, every 5 s.
  app.get('/api/dashboard/replicas', async () => {
    const source = deps.replicas;
    if (!source) return { state: 'file' };
    try {
      const view = await source.list();
      return { state: 'consul', self: source.self, leader: view.leader, replicas: replicaRows(view) };
    } catch (e) {
      return { state: 'consul', self: source.self, replicas: [], error: `the replicas cannot be read from Consul (${(e as Error).message})` };
    }
  });

  const summary = () => {
    const all = proxies();
    const states = Object.fromEntries(PROXY_STATES.map((st) => [st, 0])) as Record<ProxyState, number>;
    const roles = { gateway: 0, sidecar: 0 };
    const byGateway = new Map<string, { proxies: number; nacked: number }>();
    const bySidecarService = new Map<string, { proxies: number; nacked: number }>();
    let signature = '';
    for (const p of all) {
      const st = p.state;
      states[st]++;
      roles[p.node.role]++;
      const m = p.node.role === 'gateway' ? byGateway : bySidecarService;
      const e = m.get(p.node.name) ?? { proxies: 0, nacked: 0 };
      e.proxies++;
      if (st === 'NACKED') e.nacked++;
      m.set(p.node.name, e);
      signature += `${p.node.id}:${p.streamId}:${st};`;
    }
    const model = deps.pipeline.model;
    const gateways = new Set([...(model?.gateways.keys() ?? []), ...byGateway.keys()]);
    const services = new Set([...(model?.services.keys() ?? []), ...bySidecarService.keys()]);
    const certs = deps.identities?.list() ?? [];
    const nearest = certs.reduce<string | undefined>((m, c) => (!m || c.notAfter < m ? c.notAfter : m), undefined);
    return {
      at: new Date().toISOString(),
      proxies: { total: all.length, states, roles },
      /** Changes whenever a proxy connects, disconnects or changes state. */
      revision: hash(signature),
      config: {
        valid: deps.pipeline.errors.length === 0,
        errors: deps.pipeline.errors.length,
        /** Documents skipped as not Signalbox documents (listed with the errors). */
        warnings: deps.pipeline.warnings.length,
        /** Whether the newest configuration is live (SYNCED) on every connected proxy. */
        live: states.SYNCED === all.length,
        notLive: { PENDING: states.PENDING, NACKED: states.NACKED },
        headline: configHeadline(deps.pipeline.errors.length, all.length, states),
        lastAppliedAt: deps.pipeline.lastAppliedAt?.toISOString(),
        lastRejectedAt: deps.pipeline.lastRejectedAt?.toISOString(),
      },
      certificates: { count: certs.length, nearestExpiry: nearest },
      map: {
        gateways: [...gateways].sort().map((name) => ({ name, ...(byGateway.get(name) ?? { proxies: 0, nacked: 0 }) })),
        services: [...services]
          .sort()
          .map((name) => ({ name, sidecars: bySidecarService.get(name)?.proxies ?? 0, nacked: bySidecarService.get(name)?.nacked ?? 0 })),
      },
    };
  };

  const traffic = () => {
    const snap = deps.traffic?.snapshot();
    if (!snap)
      return {
        at: new Date().toISOString(),
        windowSeconds: 60,
        services: [],
        routes: [],
        edges: [],
        overflowed: { routes: 0, services: 0, proxies: 0, edges: 0 },
        routesShown: 0,
        routesTotal: 0,
      };
    const routesTotal = snap.routes.length;
    // Live updates carry the busiest routes; the full list is at /api/traffic.
    const routes =
      routesTotal > MAX_LIVE_ROUTES ? [...snap.routes].sort((a, b) => b.totals.requests - a.totals.requests).slice(0, MAX_LIVE_ROUTES) : snap.routes;
    return { ...snap, routes: routes.map((r) => ({ ...r, file: r.file ? rel(r.file) : undefined })), routesShown: routes.length, routesTotal };
  };

  app.get('/api/dashboard/summary', async () => summary());
  app.get('/api/traffic', async () => {
    const snap = deps.traffic?.snapshot();
    return snap ? { ...snap, routes: snap.routes.map((r) => ({ ...r, file: r.file ? rel(r.file) : undefined })) } : { services: [], routes: [], edges: [] };
  });

  let clients = 0;
  const open = new Set<() => void>();
  // Live streams never end on their own: end them before the server closes.
  app.addHook('preClose', (done) => {
    for (const end of [...open]) end();
    done();
  });
  app.get('/api/events', (req, reply) => {
    if (clients >= MAX_SSE_CLIENTS) return reply.code(503).send({ error: 'too many live dashboard clients' });
    clients++;
    reply.hijack();
    const raw = reply.raw;
    raw.writeHead(200, { 'content-type': 'text/event-stream', 'cache-control': 'no-cache', connection: 'keep-alive', 'x-accel-buffering': 'no' });
    const event = (name: string, data: unknown) => raw.write(`event: ${name}\ndata: ${JSON.stringify(data)}\n\n`);
    const tick = () => {
      if (raw.writableLength > 1 << 20) return; // a slow client skips updates instead of buffering them
      event('summary', summary());
      event('traffic', traffic());
    };
    const onConfig = () => event('config', { at: new Date().toISOString() });
    raw.write('retry: 2000\n\n');
    tick();
    const timer = setInterval(tick, 1000);
    deps.pipeline.on('applied', onConfig);
    deps.pipeline.on('rejected', onConfig);
    let closed = false;
    const close = () => {
      if (closed) return;
      closed = true;
      open.delete(end);
      clients--;
      clearInterval(timer);
      deps.pipeline.off('applied', onConfig);
      deps.pipeline.off('rejected', onConfig);
    };
    const end = () => {
      close();
      raw.end();
    };
    open.add(end);
    req.raw.on('close', close);
    raw.on('close', close);
    raw.on('error', close);
  });
}

/**
 * The config card's headline: whether the policy directory is valid and whether its newest
 * configuration is live on every proxy, e.g. "valid and live on all 3 proxies" or
 * "valid, not live on 1 proxy (NACKED)".
 */
export function configHeadline(errors: number, total: number, states: Record<ProxyState, number>): string {
  const n = (k: number) => `${k} ${k === 1 ? 'proxy' : 'proxies'}`;
  const head = errors ? `${errors} error(s)` : 'valid';
  if (total === 0) return errors ? head : 'valid (no proxies connected)';
  const notLive = states.NACKED + states.PENDING;
  if (notLive === 0) return errors ? `${head}; last good live on all ${n(total)}` : `valid and live on all ${n(total)}`;
  const why = (['NACKED', 'PENDING'] as const)
    .filter((st) => states[st])
    .map((st) => (states[st] === notLive ? st : `${states[st]} ${st}`))
    .join(', ');
  return `${head}, not live on ${n(notLive)} (${why})`;
}

/** A policy file as the user wrote it: relative to the policy directory when it is under it, else unchanged. */
export function relativeToPolicyDir(policyDir: string | undefined, f: string): string {
  if (!policyDir || !path.isAbsolute(f)) return f;
  const r = path.relative(policyDir, f);
  if (!r) return path.basename(f);
  return r.startsWith('..') || path.isAbsolute(r) ? f : r;
}

function hash(s: string): string {
  let h = 2166136261;
  for (let i = 0; i < s.length; i++) h = Math.imul(h ^ s.charCodeAt(i), 16777619);
  return (h >>> 0).toString(16);
}
