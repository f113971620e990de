// The admin API (fastify): health, readiness, Prometheus metrics, proxies and their sync status,
// what each proxy was sent, and the current validation errors.
import Fastify, { type FastifyBaseLogger, type FastifyInstance } from 'fastify';
import type { Pipeline } from '../controller/pipeline.js';
import { formatPolicyError } from '../errors.js';
import type { Logger } from '../observability/logger.js';
import type { Metrics } from '../observability/metrics.js';
import type { SnapshotCache } from '../xds/cache/snapshot-cache.js';
import { SHORT_NAME, PUSH_ORDER } from '../xds/resources/type-urls.js';
import type { ProxyRegistry } from '../xds/server/proxy-status.js';
import type { IdentityManager } from '../ca/identities.js';
import { hashText } from '../xds/resources/resource.js';
import { explainGroup } from '../explain/provenance.js';
import type { TrafficStore } from '../telemetry/traffic-store.js';
import { registerDashboard } from './dashboard/routes.js';

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
}

export function buildAdmin(deps: AdminDeps): FastifyInstance {
  // Request logs are info-level; the admin logger keeps warnings and errors only.
  const app = Fastify({ loggerInstance: deps.logger.child({ component: 'admin' }, { level: 'warn' }) as unknown as FastifyBaseLogger });
  const { pipeline, cache, registry, metrics } = deps;

  app.get('/healthz', async () => ({ status: 'ok' }));

  app.get('/readyz', async (_req, reply) => {
    if (!pipeline.ready) return reply.code(503).send({ ready: false, reason: 'no valid configuration compiled yet', errors: pipeline.errors.length });
    const extra = deps.readiness?.();
    if (extra && !extra.ready) return reply.code(503).send({ ready: false, reason: extra.reason });
    return { ready: true };
  });

  app.get('/metrics', async (_req, reply) => {
    reply.header('content-type', metrics.registry.contentType);
    return metrics.registry.metrics();
  });

  /** A proxy's status plus the certificate of its identity (serial, expiry; never the key). */
  const withCert = (p: ReturnType<ProxyRegistry['all']>[number]) => {
    const json = p.toJSON();
    const identity = pipeline.irGroups().get(p.node.group)?.identity;
    const cert = identity ? deps.identities?.current(identity) : undefined;
    return {
      ...json,
      certificate: cert
        ? { identity, serial: cert.serial, notAfter: cert.notAfter.toISOString(), trustBundleVersion: hashText(deps.identities!.ca.trustBundlePem), secretsServed: p.secretsAllowed }
        : undefined,
    };
  };

  app.get('/api/proxies', async () => ({ proxies: registry.all().map(withCert) }));

  app.get('/api/certificates', async () => ({ certificates: deps.identities?.list() ?? [] }));

  app.get<{ Params: { id: string } }>('/api/proxies/:id', async (req, reply) => {
    const p = registry.byId(req.params.id);
    if (!p) return reply.code(404).send({ error: `no connected proxy "${req.params.id}"` });
    return withCert(p);
  });

  app.get<{ Params: { id: string } }>('/api/config/:id', async (req, reply) => {
    const p = registry.byId(req.params.id);
    if (!p) return reply.code(404).send({ error: `no connected proxy "${req.params.id}"` });
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
    const p = registry.byId(req.params.id);
    const group = p?.node.group ?? req.params.id;
    const ir = pipeline.irGroups().get(group) ?? pipeline.irGroups().get(`gateway/${group}`);
    if (!ir || !pipeline.model) return reply.code(404).send({ error: `no connected proxy or proxy group "${req.params.id}"` });
    return { id: p?.node.id, ...explainGroup(pipeline.model, ir, { route: req.query.route }) };
  });

  app.get('/api/groups', async () => ({
    groups: cache.groupNames().map((g) => {
      const s = cache.get(g);
      return { group: g, version: s.version, types: Object.fromEntries(PUSH_ORDER.map((t) => [SHORT_NAME[t], { version: s.versions.get(t), resources: s.get(t).size }])) };
    }),
  }));

  app.get('/api/errors', async () => ({
    valid: pipeline.errors.length === 0,
    lastAppliedAt: pipeline.lastAppliedAt?.toISOString(),
    lastRejectedAt: pipeline.lastRejectedAt?.toISOString(),
    errors: pipeline.errors.map((e) => ({ ...e, text: formatPolicyError(e) })),
  }));

  app.get('/api/sources', async () => deps.sources?.() ?? { sources: [] });

  registerDashboard(app, { pipeline, registry, identities: deps.identities, traffic: deps.traffic });

  return app;
}
