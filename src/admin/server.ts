// The admin API (fastify): health, readiness, Prometheus metrics, proxies and their sync status,
// what each proxy was sent, the current validation errors and the control plane's security posture.
// Guarded by a Host header check (DNS rebinding) and, when configured, a bearer token.
import { createHash, timingSafeEqual } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import { isIP } from 'node:net';
import Fastify, { type FastifyBaseLogger, type FastifyInstance, type FastifyReply, type FastifyRequest } from 'fastify';
import type { Pipeline } from '../controller/pipeline.js';
import { ErrorCode, formatPolicyError, SignalboxError } from '../errors.js';
import type { Logger } from '../observability/logger.js';
import type { Metrics } from '../observability/metrics.js';
import type { SnapshotCache } from '../xds/cache/snapshot-cache.js';
import { SHORT_NAME, PUSH_ORDER } from '../xds/resources/type-urls.js';
import type { ProxyRegistry, ProxyStatus } from '../xds/server/proxy-status.js';
import type { IdentityManager } from '../ca/identities.js';
import { hashText } from '../xds/resources/resource.js';
import { explainGroup } from '../explain/provenance.js';
import type { TrafficStore } from '../telemetry/traffic-store.js';
import { registerDashboard, relativeToPolicyDir } from './dashboard/routes.js';
import { remoteProxies, replicaRows, type ReplicaSource } from './replicas.js';

export interface AdminDeps {
  pipeline: Pipeline;
  cache: SnapshotCache;
  registry: ProxyRegistry;
  metrics: Metrics;
  logger: Logger;
  identities?: IdentityManager;
  /** Extra status sections (e.g. discovery sources), by name. */
  sources?: () => unknown;
  /** Extra readiness conditions (e.g. a discovery source's first full sync). */
  readiness?: () => { ready: boolean; reason?: string };
  /** Traffic reported by the proxies (access log service), for the dashboard. */
  traffic?: TrafficStore;
  /**
   * Who may talk to the admin API. Requests whose Host header is not a loopback name, the bind
   * address (unless a wildcard) or one of `allowedHosts` get 421; with a token, every request
   * except /healthz and /readyz needs `Authorization: Bearer <token>`. Absent: loopback names only,
   * no token.
   */
  security?: AdminSecurity;
  /** The control plane's security posture and state for /api/status (xds, proxyAuth, authz, warnings). */
  status?: () => Record<string, unknown>;
  /** The policy directory, so policy file names (NACK sources) are shown relative to it, as the user wrote them. */
  policyDir?: string;
  /** With `--state consul`: this replica's id and the replicas from Consul, for `/api/proxies?scope=all` and the dashboard. */
  replicas?: ReplicaSource;
}

export interface AdminSecurity {
  /** The address the admin API binds (--admin-address). */
  adminAddress: string;
  /** The bearer token every request but /healthz and /readyz must carry (--admin-token-file). */
  token?: string;
  /** Further Host names (without port) the admin API answers to, e.g. a DNS name behind a proxy. */
  allowedHosts?: string[];
}

/** Paths open to any Host and without a token: liveness and readiness probes (they send pod IPs as Host). */
const OPEN_PATHS = new Set(['/healthz', '/readyz']);

const LOOPBACK_HOSTS = ['localhost', '127.0.0.1', '::1'];
const WILDCARDS = new Set(['', '0.0.0.0', '::', '::0', '0:0:0:0:0:0:0:0']);

/** Lower-cased, brackets and trailing dot removed: `[::1]` → `::1`, `Example.COM.` → `example.com`. */
function normalizeHost(h: string): string {
  let v = h.trim().toLowerCase();
  if (v.startsWith('[') && v.endsWith(']')) v = v.slice(1, -1);
  if (v.endsWith('.')) v = v.slice(0, -1);
  return v;
}

/** The host part of a Host header (port removed), normalized; undefined when malformed. */
export function hostOf(header: string | undefined): string | undefined {
  if (!header) return undefined;
  const v = header.trim();
  if (v.startsWith('[')) {
    const end = v.indexOf(']');
    if (end < 0) return undefined;
    const rest = v.slice(end + 1);
    if (rest !== '' && !/^:\d{1,5}$/.test(rest)) return undefined;
    return normalizeHost(v.slice(0, end + 1));
  }
  const colon = v.indexOf(':');
  if (colon >= 0 && v.indexOf(':', colon + 1) >= 0) return undefined; // a bare IPv6 address is not a valid Host
  const name = colon >= 0 ? v.slice(0, colon) : v;
  if (colon >= 0 && !/^\d{1,5}$/.test(v.slice(colon + 1))) return undefined;
  return name ? normalizeHost(name) : undefined;
}

/** A loopback address or name: localhost, 127.0.0.0/8, ::1 (also bracketed or IPv4-mapped). */
export function isLoopbackAddress(address: string): boolean {
  const a = normalizeHost(address);
  if (a === 'localhost' || a === '::1' || a === '0:0:0:0:0:0:0:1') return true;
  const v4 = a.startsWith('::ffff:') ? a.slice(7) : a;
  return isIP(v4) === 4 && v4.startsWith('127.');
}

/**
 * Refuses an admin API bound beyond loopback without a token: it would hand anyone on the network
 * the proxies' configuration and the mesh's state.
 */
export function checkAdminBind(address: string, token: string | undefined): void {
  if (token || isLoopbackAddress(address)) return;
  throw new SignalboxError(
    ErrorCode.BAD_FLAG,
    `--admin-address ${address || '(empty)'} is not a loopback address and no --admin-token-file is given: the admin API would answer anyone who can reach it. Give --admin-token-file FILE (a bearer token the admin API then requires), or bind --admin-address 127.0.0.1 and reach it through an authenticating proxy`,
  );
}

/** The admin token from --admin-token-file (trimmed; an unreadable or empty file is an error). */
export async function readAdminToken(file: string): Promise<string> {
  let text: string;
  try {
    text = await readFile(file, 'utf8');
  } catch (e) {
    throw new SignalboxError(ErrorCode.BAD_FLAG, `--admin-token-file ${file}: cannot read it (${(e as NodeJS.ErrnoException).code ?? (e as Error).message})`);
  }
  const token = text.trim();
  if (!token) throw new SignalboxError(ErrorCode.BAD_FLAG, `--admin-token-file ${file} is empty`);
  return token;
}

/** What serve passes as `security`: the token read (when a file is given) and the bind checked. */
export async function adminSecurityOf(adminAddress: string, tokenFile?: string): Promise<AdminSecurity> {
  const token = tokenFile ? await readAdminToken(tokenFile) : undefined;
  checkAdminBind(adminAddress, token);
  return { adminAddress, token };
}

const digest = (s: string) => createHash('sha256').update(s, 'utf8').digest();

/** The onRequest guard: Host check (421), then bearer token (401). */
function guard(security: AdminSecurity | undefined) {
  const allowed = new Set(LOOPBACK_HOSTS);
  const bind = security ? normalizeHost(security.adminAddress) : '';
  if (!WILDCARDS.has(bind)) allowed.add(bind);
  for (const h of security?.allowedHosts ?? []) allowed.add(normalizeHost(h));
  // Compared as SHA-256 digests: equal-length buffers whatever the presented token's length.
  const expected = security?.token ? digest(security.token) : undefined;
  return async (req: FastifyRequest, reply: FastifyReply) => {
    const path = req.url.split('?', 1)[0]!;
    if (OPEN_PATHS.has(path)) return;
    // The Host check stops DNS rebinding, which matters while nothing else guards the API; with
    // a bearer token (which no page on another origin can attach) any name may reach it, as a
    // Prometheus in another container or a load balancer must.
    const host = hostOf(req.headers.host);
    if (!expected && (!host || !allowed.has(host))) {
      return reply.code(421).send({ error: 'misdirected request: this admin API does not answer to that Host name' });
    }
    if (!expected) return;
    const m = /^Bearer[ \t]+(\S+)[ \t]*$/i.exec(req.headers.authorization ?? '');
    if (!m || !timingSafeEqual(digest(m[1]!), expected)) {
      return reply
        .code(401)
        .header('www-authenticate', 'Bearer realm="signalbox-admin"')
        .send({ error: 'unauthorized: send Authorization: Bearer <the token in --admin-token-file>' });
    }
  };
}

const ROUTES = new WeakMap<FastifyInstance, Set<string>>();

/** Every path registered on an admin API built by buildAdmin, including routes added to it later (serve's). */
export function registeredRoutes(app: FastifyInstance): string[] {
  return [...(ROUTES.get(app) ?? [])].sort();
}

export function buildAdmin(deps: AdminDeps): FastifyInstance {
  // Request logs are info-level; the admin logger keeps warnings and errors only.
  const app = Fastify({ loggerInstance: deps.logger.child({ component: 'admin' }, { level: 'warn' }) as unknown as FastifyBaseLogger });
  const routes = new Set<string>();
  ROUTES.set(app, routes);
  app.addHook('onRoute', (r) => void routes.add(r.url));
  const { pipeline, cache, registry, metrics } = deps;

  app.addHook('onRequest', guard(deps.security));

  app.get('/healthz', async () => ({ status: 'ok' }));

  app.get('/readyz', async (_req, reply) => {
    if (!pipeline.ready) return reply.code(503).send({ ready: false, reason: 'no valid configuration compiled yet', errors: pipeline.errors.length });
    const extra = deps.readiness?.();
    if (extra && !extra.ready) return reply.code(503).send({ ready: false, reason: extra.reason });
    // Ready (proxies get a valid configuration) but degraded: it is not the policy directory's.
    const kept = pipeline.servingLastGood;
    if (kept) {
      const origin = kept.restoredFrom ? `restored from ${kept.restoredFrom} at start` : `kept since ${kept.since.toISOString()}`;
      return {
        ready: true,
        degraded: true,
        reason: `the policy directory is invalid (${kept.errors} error(s), see /api/errors); serving the last good configuration, applied ${kept.appliedAt?.toISOString() ?? 'earlier'}, ${origin}`,
      };
    }
    const failed = [...pipeline.failedGroups.keys()];
    if (failed.length)
      return {
        ready: true,
        degraded: true,
        reason: `${failed.length} proxy group(s) could not be compiled and keep their last good configuration (see /api/errors): ${failed.join(', ')}`,
      };
    return { ready: true };
  });

  app.get('/metrics', async (_req, reply) => {
    reply.header('content-type', metrics.registry.contentType);
    return metrics.registry.metrics();
  });

  /** A policy file as the user knows it: relative to the policy directory when under it. */
  const rel = (f: string) => relativeToPolicyDir(deps.policyDir, f);

  /** A proxy's status plus its own instance certificate (serial, expiry; never the key). */
  const groupFailedOf = (group: string) => {
    const f = pipeline.failedGroups.get(group);
    return f ? { groupFailed: { since: f.since.toISOString(), servingLastGood: f.servingLastGood, errors: f.errors.length } } : {};
  };
  const withCert = (p: ReturnType<ProxyRegistry['all']>[number]) => {
    const json = p.toJSON();
    const cert = p.certificate;
    const types = Object.fromEntries(
      Object.entries(json.types).map(([t, v]) => {
        const s = v as { lastNack?: { sources: string[] } };
        return [t, s.lastNack ? { ...s, lastNack: { ...s.lastNack, sources: s.lastNack.sources.map(rel) } } : s];
      }),
    );
    return {
      ...json,
      types,
      certificate:
        cert && deps.identities ? { ...cert, trustBundleVersion: hashText(deps.identities.ca.trustBundlePem), secretsServed: p.secretsAllowed } : undefined,
      // Its group's last compile failed: the proxy is SYNCED to that group's last good snapshot, not to the policies now.
      ...groupFailedOf(p.node.group),
    };
  };

  // `scope=all` with --state consul: this replica's proxies (in full, live) and every other live
  // replica's as it published them in Consul, each with the replica holding it. Without shared
  // state there is one replica and `all` is this one: the answer is the same as without `scope`.
  app.get<{ Querystring: { scope?: string } }>('/api/proxies', async (req, reply) => {
    const scope = req.query.scope ?? 'local';
    if (scope !== 'local' && scope !== 'all') return reply.code(400).send({ error: `scope must be "local" or "all", got "${String(scope).slice(0, 40)}"` });
    const local = registry.all().map(withCert);
    const source = deps.replicas;
    if (scope === 'local' || !source) return { proxies: local, refused: registry.refused() };
    const mine = local.map((p) => ({ ...p, replica: source.self }));
    try {
      const view = await source.list();
      const proxies = [...mine, ...remoteProxies(view, new Set(local.map((p) => p.id)))].sort((a, b) => (a.id < b.id ? -1 : a.id > b.id ? 1 : 0));
      return { scope: 'all', self: source.self, leader: view.leader, replicas: replicaRows(view), proxies, refused: registry.refused() };
    } catch (e) {
      // Consul cannot be read: this replica's own proxies, and why the others are missing.
      return {
        scope: 'all',
        self: source.self,
        replicas: [],
        proxies: mine,
        refused: registry.refused(),
        error: `only this replica's proxies: the other replicas cannot be read from Consul (${(e as Error).message})`,
      };
    }
  });

  app.get('/api/certificates', async () => ({ certificates: deps.identities?.list() ?? [] }));

  /**
   * The proxy a URL's `:id` names: a node id, or the name of a gateway or service with exactly one
   * connected proxy. Several: 409 with their ids; none: 404. (Undefined once the reply is sent.)
   */
  const proxyOf = (key: string, reply: FastifyReply): ProxyStatus | undefined => {
    const found = registry.resolve(key);
    if (found.kind === 'found') return found.proxy;
    if (found.kind === 'ambiguous') {
      const ids = found.proxies.map((p) => p.node.id);
      void reply.code(409).send({
        error: `"${key}" names ${ids.length} connected proxies (${[...new Set(found.proxies.map((p) => `${p.node.role}/${p.node.name}`))].join(', ')}); ask for one by its node id: ${ids.join(', ')}`,
        ids,
      });
      return undefined;
    }
    void reply.code(404).send({ error: `no connected proxy "${key}" (neither a node id nor the name of a gateway or service with a connected proxy)` });
    return undefined;
  };

  app.get<{ Params: { id: string } }>('/api/proxies/:id', async (req, reply) => {
    const refused = registry.byId(req.params.id) ? undefined : registry.refusal(req.params.id);
    if (refused) return reply.code(409).send({ error: refused.reason, refused });
    const p = proxyOf(req.params.id, reply);
    return p ? withCert(p) : reply;
  });

  app.get<{ Params: { id: string } }>('/api/config/:id', async (req, reply) => {
    const p = proxyOf(req.params.id, reply);
    if (!p) return reply;
    const resources: Record<string, unknown[]> = {};
    for (const t of PUSH_ORDER) {
      const sent = p.sent.get(t);
      if (!sent) continue;
      resources[SHORT_NAME[t]] = [...sent.values()]
        .sort((a, b) => (a.name < b.name ? -1 : 1))
        .map((r) => ({ name: r.name, version: r.version, sources: r.sources, resource: r.printable }));
    }
    return { id: p.node.id, group: p.node.group, protocol: p.protocol, state: p.state, resources };
  });

  /** Provenance: each route's and cluster's effective settings and the policy each came from. */
  app.get<{ Params: { id: string }; Querystring: { route?: string } }>('/api/explain/:id', async (req, reply) => {
    const key = req.params.id;
    const groupsNow = pipeline.irGroups();
    // A node id; else a proxy group's name (gateway/NAME, sidecar/...); else a gateway or service name.
    const found = registry.byId(key) || !groupsNow.has(key) ? registry.resolve(key) : ({ kind: 'none' } as const);
    // Several proxies of one name that share a group explain alike; in different groups (sidecars
    // with other ports, the JWT module's variant) the name is ambiguous.
    const named = found.kind === 'ambiguous' ? found.proxies : [];
    const groups = [...new Set(named.map((x) => x.node.group))];
    if (groups.length > 1) {
      const ids = named.map((x) => x.node.id);
      return reply.code(409).send({
        error: `"${key}" names ${ids.length} connected proxies in ${groups.length} proxy groups (${groups.join(', ')}); ask for one by its node id or group: ${ids.join(', ')}`,
        ids,
        groups,
      });
    }
    const p = found.kind === 'found' ? found.proxy : undefined;
    const group = p?.node.group ?? groups[0] ?? key;
    const ir = groupsNow.get(group) ?? groupsNow.get(`gateway/${group}`);
    if (!ir || !pipeline.model) return reply.code(404).send({ error: `no connected proxy or proxy group "${key}"` });
    return { id: p?.node.id, ...explainGroup(pipeline.model, ir, { route: req.query.route }) };
  });

  // A group whose last compile failed says so (`failed`): what it serves is its last good snapshot, or nothing.
  const failedOf = (g: string) => {
    const f = pipeline.failedGroups.get(g);
    return f ? { failed: { since: f.since.toISOString(), servingLastGood: f.servingLastGood, errors: f.errors.map(formatPolicyError) } } : {};
  };
  app.get('/api/groups', async () => {
    const served = cache.groupNames();
    const unserved = [...pipeline.failedGroups.keys()].filter((g) => !served.includes(g)).sort();
    return {
      groups: [
        ...served.map((g) => {
          const s = cache.get(g);
          return {
            group: g,
            version: s.version,
            types: Object.fromEntries(PUSH_ORDER.map((t) => [SHORT_NAME[t], { version: s.versions.get(t), resources: s.get(t).size }])),
            ...failedOf(g),
          };
        }),
        ...unserved.map((g) => ({ group: g, ...failedOf(g) })),
      ],
    };
  });

  // Errors reject a load; warnings (documents skipped as not Signalbox's) never do: `valid` counts
  // errors only, and each entry says which it is.
  app.get('/api/errors', async () => ({
    valid: pipeline.errors.length === 0,
    lastAppliedAt: pipeline.lastAppliedAt?.toISOString(),
    lastRejectedAt: pipeline.lastRejectedAt?.toISOString(),
    errors: pipeline.errors.map((e) => ({ ...e, severity: 'error', text: formatPolicyError(e) })),
    warnings: pipeline.warnings.map((w) => ({ ...w, severity: 'warning', text: formatPolicyError(w) })),
  }));

  app.get('/api/sources', async () => deps.sources?.() ?? { sources: [] });

  /** Present only while the last good configuration is served (so a healthy status stays as it was). */
  const lastGoodStatus = () => {
    const kept = pipeline.servingLastGood;
    if (!kept) return {};
    return {
      servingLastGood: true,
      since: kept.since.toISOString(),
      appliedAt: kept.appliedAt?.toISOString(),
      restoredFrom: kept.restoredFrom,
      errors: kept.errors,
    };
  };

  /** Security posture and state; the warnings are what the dashboard shows as a banner. */
  app.get('/api/status', async () => {
    const given = deps.status?.() ?? {};
    const warnings = Array.isArray(given.warnings) ? given.warnings.filter((w): w is string => typeof w === 'string') : [];
    return {
      ...given,
      admin: { hostCheck: !deps.security?.token, tokenRequired: Boolean(deps.security?.token) },
      config: { valid: pipeline.errors.length === 0, ready: pipeline.ready, ...lastGoodStatus() },
      warnings,
    };
  });

  registerDashboard(app, { pipeline, registry, identities: deps.identities, traffic: deps.traffic, policyDir: deps.policyDir, replicas: deps.replicas });

  return app;
}
