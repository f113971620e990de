// The dashboard's server side with 1,000 proxies: paged and searched on the server, NACKED first,
// live summaries that do not grow with the proxy count, and a page served with a strict CSP.
import assert from 'node:assert/strict';
import { describe, test, after } from 'node:test';
import Fastify from 'fastify';
import { registerDashboard } from '../../src/admin/dashboard/routes.js';
import { Pipeline } from '../../src/controller/pipeline.js';
import { createLogger } from '../../src/observability/logger.js';
import { TrafficStore } from '../../src/telemetry/traffic-store.js';
import { SnapshotCache } from '../../src/xds/cache/snapshot-cache.js';
import { TypeUrl } from '../../src/xds/resources/type-urls.js';
import { ProxyRegistry, ProxyStatus } from '../../src/xds/server/proxy-status.js';

function registryOf(n: number): ProxyRegistry {
  const reg = new ProxyRegistry();
  for (let i = 0; i < n; i++) {
    const id = `proxy-${String(i).padStart(4, '0')}`;
    const sidecar = i % 10 !== 0;
    const p = new ProxyStatus(
      sidecar ? { id, role: 'sidecar', name: `svc-${i % 50}`, group: `sidecar/svc-${i % 50}/1/2/3` } : { id, role: 'gateway', name: 'edge', group: 'gateway/edge' },
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
  traffic.record({ id: 'proxy-0003', role: 'sidecar', name: 'svc-3', group: 'g' }, { route: 'a/b/match-0', cluster: 'svc-9', status: 200, flags: 0, durationMs: 3, attempts: 1, peer: '' });
  registerDashboard(app, { pipeline, registry: registryOf(1000), traffic });
  await app.ready();
  after(() => app.close());

  test('pages of 50, NACKED first, then PENDING, then by id', async () => {
    const r = (await app.inject('/api/dashboard/proxies')).json();
    assert.equal(r.total, 1000);
    assert.equal(r.pages, 20);
    assert.equal(r.proxies.length, 50);
    assert.deepEqual(r.proxies.slice(0, 10).map((p: { state: string }) => p.state), Array(10).fill('NACKED'));
    assert.equal(r.proxies[0].id, 'proxy-0007');
    assert.deepEqual(r.proxies[0].nack, { type: 'route', message: 'bad route in proxy 7', sources: ['policies/routes.yaml'], resources: ['r'], at: new Date(2).toISOString() });
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
