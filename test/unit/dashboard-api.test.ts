// The dashboard's server side with 1,000 proxies: paged and searched on the server, NACKED first,
// live summaries that do not grow with the proxy count, and a page served with a strict CSP.
import assert from 'node:assert/strict';
import { describe, test, after } from 'node:test';
import Fastify from 'fastify';
import { configHeadline, registerDashboard, relativeToPolicyDir } from '../../src/admin/dashboard/routes.js';
import { buildAdmin } from '../../src/admin/server.js';
import { Pipeline } from '../../src/controller/pipeline.js';
import { Metrics } from '../../src/observability/metrics.js';
import { createLogger } from '../../src/observability/logger.js';
import { TrafficStore } from '../../src/telemetry/traffic-store.js';
import { SnapshotCache } from '../../src/xds/cache/snapshot-cache.js';
import { TypeUrl } from '../../src/xds/resources/type-urls.js';
import { PROXY_STATES, ProxyRegistry, ProxyStatus } from '../../src/xds/server/proxy-status.js';

function registryOf(n: number): ProxyRegistry {
  const reg = new ProxyRegistry();
  for (let i = 0; i < n; i++) {
    const id = `proxy-${String(i).padStart(4, '0')}`;
    const sidecar = i % 10 !== 0;
    const p = new ProxyStatus(
      sidecar
        ? { id, role: 'sidecar', name: `svc-${i % 50}`, group: `sidecar/svc-${i % 50}/1/2/3` }
        : { id, role: 'gateway', name: 'edge', group: 'gateway/edge' },
      'sotw',
      '127.0.0.1:1',
    );
    const t = p.type(TypeUrl.Route);
    t.sent = { version: `v${i}`, nonce: '1', at: 1, resources: 1 };
    if (i % 100 === 7) t.nack = { version: `v${i}`, message: `bad route in proxy ${i}`, at: 2, resources: ['r'], sources: ['policies/routes.yaml'] };
    else if (i % 100 !== 8) t.acked = { version: `v${i}`, at: 2 };
    reg.add(p);
  }
  return reg;
}

describe('dashboard API with 1,000 proxies', async () => {
  const app = Fastify();
  const pipeline = new Pipeline({ policyDir: '/nonexistent', cache: new SnapshotCache(), logger: createLogger({ level: 'silent' }) });
  const traffic = new TrafficStore();
  traffic.record(
    { id: 'proxy-0003', role: 'sidecar', name: 'svc-3', group: 'g' },
    { route: 'a/b/match-0', cluster: 'svc-9', status: 200, flags: 0, durationMs: 3, attempts: 1, peer: '' },
  );
  registerDashboard(app, { pipeline, registry: registryOf(1000), traffic });
  await app.ready();
  after(() => app.close());

  test('pages of 50, NACKED first, then PENDING, then by id', async () => {
    const r = (await app.inject('/api/dashboard/proxies')).json();
    assert.equal(r.total, 1000);
    assert.equal(r.pages, 20);
    assert.equal(r.proxies.length, 50);
    assert.deepEqual(
      r.proxies.slice(0, 10).map((p: { state: string }) => p.state),
      Array(10).fill('NACKED'),
    );
    assert.equal(r.proxies[0].id, 'proxy-0007');
    assert.deepEqual(r.proxies[0].nack, {
      type: 'route',
      message: 'bad route in proxy 7',
      sources: ['policies/routes.yaml'],
      resources: ['r'],
      at: new Date(2).toISOString(),
    });
    assert.equal(r.proxies[10].state, 'PENDING');
    const last = (await app.inject('/api/dashboard/proxies?page=20')).json();
    assert.equal(last.proxies.length, 50);
    assert.equal(last.proxies.at(-1).id, 'proxy-0999');
    assert.equal((await app.inject('/api/dashboard/proxies?page=999')).json().page, 20, 'past the end: the last page');
  });

  test('search, state and role filters run on the server', async () => {
    const one = (await app.inject('/api/dashboard/proxies?q=proxy-0003')).json();
    assert.equal(one.total, 1);
    assert.equal(one.proxies[0].traffic.requests, 1, 'with its traffic');
    assert.equal((await app.inject('/api/dashboard/proxies?state=NACKED')).json().total, 10);
    assert.equal((await app.inject('/api/dashboard/proxies?role=gateway')).json().total, 100);
    assert.equal((await app.inject('/api/dashboard/proxies?q=svc-7&role=sidecar&size=500')).json().total, 20);
    assert.equal((await app.inject('/api/dashboard/proxies?size=100000')).json().proxies.length, 200, 'page size is capped');
  });

  test('the live summary counts proxies without listing them', async () => {
    const res = await app.inject('/api/dashboard/summary');
    const s = res.json();
    assert.deepEqual(s.proxies.states, { SYNCED: 980, PENDING: 10, NACKED: 10 });
    assert.deepEqual(Object.keys(s.proxies.states), [...PROXY_STATES], "the summary counts exactly the API's states");
    assert.equal(s.config.live, false);
    assert.deepEqual(s.config.notLive, { PENDING: 10, NACKED: 10 });
    assert.match(s.config.headline, /not live on 20 proxies \(10 NACKED, 10 PENDING\)/);
    assert.doesNotMatch(s.config.headline, /^valid$/);
    assert.deepEqual(s.proxies.roles, { gateway: 100, sidecar: 900 });
    assert.equal(s.map.services.length, 45, 'svc-0, svc-10, ... would only come from gateways, which are named edge');
    assert.equal(s.map.gateways[0].proxies, 100);
    assert.ok(res.body.length < 10_000, `summary is ${res.body.length} bytes`);
  });

  test('the page and its assets, with a strict content security policy and no inline script', async () => {
    for (const p of ['/', '/dashboard']) {
      const res = await app.inject(p);
      assert.equal(res.statusCode, 200);
      assert.match(String(res.headers['content-type']), /text\/html/);
      assert.match(String(res.headers['content-security-policy']), /script-src 'self'/);
      assert.doesNotMatch(res.body, /<script>(?!<\/script>)|on(click|load)=/i);
    }
    assert.match(String((await app.inject('/dashboard/app.js')).headers['content-type']), /javascript/);
    assert.match(String((await app.inject('/dashboard/style.css')).headers['content-type']), /css/);
    const js = (await app.inject('/dashboard/app.js')).body;
    assert.doesNotMatch(js, /innerHTML|outerHTML|insertAdjacentHTML|document\.write/, 'server data is only ever inserted as text');
  });
});

describe('dashboard headline and paths', () => {
  test('the config headline says whether the newest configuration is live on every proxy', () => {
    assert.equal(configHeadline(0, 3, { SYNCED: 3, PENDING: 0, NACKED: 0 }), 'valid and live on all 3 proxies');
    assert.equal(configHeadline(0, 3, { SYNCED: 2, PENDING: 0, NACKED: 1 }), 'valid, not live on 1 proxy (NACKED)');
    assert.equal(configHeadline(0, 3, { SYNCED: 1, PENDING: 2, NACKED: 0 }), 'valid, not live on 2 proxies (PENDING)');
    assert.equal(configHeadline(0, 0, { SYNCED: 0, PENDING: 0, NACKED: 0 }), 'valid (no proxies connected)');
    assert.match(configHeadline(2, 3, { SYNCED: 2, PENDING: 0, NACKED: 1 }), /^2 error\(s\), not live on 1 proxy \(NACKED\)$/);
  });

  test('policy files are shown relative to the policy directory', () => {
    assert.equal(relativeToPolicyDir('/tmp/sb-x/policies', '/tmp/sb-x/policies/lab-routes.yaml'), 'lab-routes.yaml');
    assert.equal(relativeToPolicyDir('/tmp/sb-x/policies', '/tmp/sb-x/policies/team/a.yaml'), 'team/a.yaml');
    assert.equal(relativeToPolicyDir('/tmp/sb-x/policies', '/etc/other.yaml'), '/etc/other.yaml', 'outside the directory: unchanged');
    assert.equal(relativeToPolicyDir(undefined, '/tmp/a.yaml'), '/tmp/a.yaml');
    assert.equal(relativeToPolicyDir('/p', 'already/relative.yaml'), 'already/relative.yaml');
  });

  test('/api/dashboard/proxies shows NACK sources relative to the policy directory', async () => {
    const app = Fastify();
    const reg = new ProxyRegistry();
    const p = new ProxyStatus({ id: 'lab-gw', role: 'gateway', name: 'lab', group: 'gateway/lab' }, 'sotw', '127.0.0.1:1');
    const t = p.type(TypeUrl.Route);
    t.sent = { version: 'v1', nonce: '1', at: 1, resources: 1 };
    t.nack = { version: 'v1', message: 'bad regex', at: 2, resources: ['r'], sources: ['/tmp/sb-y/policies/lab-routes.yaml'] };
    reg.add(p);
    const pipeline = new Pipeline({ policyDir: '/tmp/sb-y/policies', cache: new SnapshotCache(), logger: createLogger({ level: 'silent' }) });
    registerDashboard(app, { pipeline, registry: reg, policyDir: '/tmp/sb-y/policies' });
    await app.ready();
    try {
      const r = (await app.inject('/api/dashboard/proxies')).json();
      assert.deepEqual(r.proxies[0].nack.sources, ['lab-routes.yaml']);
      const s = (await app.inject('/api/dashboard/summary')).json();
      assert.match(s.config.headline, /not live on 1 proxy \(NACKED\)$/);
      assert.equal(s.config.live, false);
    } finally {
      await app.close();
    }
  });

  test('/api/proxies (what `signalbox status` reads) shows NACK sources relative to the policy directory', async () => {
    const logger = createLogger({ level: 'silent' });
    const cache = new SnapshotCache();
    const reg = new ProxyRegistry();
    const p = new ProxyStatus({ id: 'lab-gw', role: 'gateway', name: 'lab', group: 'gateway/lab' }, 'sotw', '127.0.0.1:1');
    const t = p.type(TypeUrl.Route);
    t.sent = { version: 'v1', nonce: '1', at: 1, resources: 1 };
    t.nack = { version: 'v1', message: 'bad regex', at: 2, resources: ['r'], sources: ['/tmp/sb-z/policies/lab-routes.yaml'] };
    reg.add(p);
    const app = buildAdmin({
      pipeline: new Pipeline({ policyDir: '/tmp/sb-z/policies', cache, logger }),
      cache,
      registry: reg,
      metrics: new Metrics(),
      logger,
      policyDir: '/tmp/sb-z/policies',
    });
    await app.ready();
    try {
      const all = (await app.inject('/api/proxies')).json();
      assert.deepEqual(all.proxies[0].types.route.lastNack.sources, ['lab-routes.yaml']);
      assert.ok(PROXY_STATES.includes(all.proxies[0].state));
      const one = (await app.inject('/api/proxies/lab-gw')).json();
      assert.deepEqual(one.types.route.lastNack.sources, ['lab-routes.yaml']);
      assert.deepEqual(
        (await app.inject('/api/dashboard/proxies')).json().proxies[0].nack.sources,
        ['lab-routes.yaml'],
        'buildAdmin passes the policy directory to the dashboard',
      );
      assert.deepEqual(t.nack.sources, ['/tmp/sb-z/policies/lab-routes.yaml'], 'the registry keeps the absolute path');
    } finally {
      await app.close();
    }
  });
});
