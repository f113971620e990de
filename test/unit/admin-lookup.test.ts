// The admin API's per-proxy routes take a node id or, when exactly one proxy of that gateway or
// service is connected, its name: `/api/config/edge` works without looking the id up. A name shared
// by several proxies is a 409 that lists their ids; a name nobody has is a 404, as before.
import assert from 'node:assert/strict';
import { after, describe, test } from 'node:test';
import { buildAdmin } from '../../src/admin/server.js';
import { Pipeline } from '../../src/controller/pipeline.js';
import { createLogger } from '../../src/observability/logger.js';
import { Metrics } from '../../src/observability/metrics.js';
import { SnapshotCache } from '../../src/xds/cache/snapshot-cache.js';
import { type NodeIdentity, ProxyRegistry, ProxyStatus } from '../../src/xds/server/proxy-status.js';

const gw = (id: string, name: string): NodeIdentity => ({ id, role: 'gateway', name, group: `gateway/${name}` });
const sc = (id: string, name: string, ports = '1/2/3'): NodeIdentity => ({ id, role: 'sidecar', name, group: `sidecar/${name}/${ports}` });

describe('per-proxy admin routes: a node id, or an unambiguous gateway or service name', async () => {
  const reg = new ProxyRegistry();
  for (const n of [
    gw('edge', 'edge'),
    gw('internal-a', 'internal'),
    gw('internal-b', 'internal'),
    sc('orders-v1', 'orders'),
    sc('catalog-1', 'catalog'),
    sc('catalog-2', 'catalog', '4/5/6'),
    gw('shared-gw', 'shared'),
    sc('shared-sc', 'shared'),
  ]) {
    reg.add(new ProxyStatus(n, 'sotw', '127.0.0.1:1'));
  }
  // A reconnect: the same node id twice is still one proxy.
  reg.add(new ProxyStatus(gw('edge', 'edge'), 'delta', '127.0.0.1:2'));
  const logger = createLogger({ level: 'silent' });
  const cache = new SnapshotCache();
  const app = buildAdmin({ pipeline: new Pipeline({ policyDir: '/nonexistent', cache, logger }), cache, registry: reg, metrics: new Metrics(), logger });
  await app.ready();
  after(() => app.close());

  test('the registry resolves ids first, then names, then role/name', () => {
    const r = (k: string) => reg.resolve(k);
    const ok = (k: string) => {
      const x = r(k);
      assert.equal(x.kind, 'found', k);
      return x.kind === 'found' ? x.proxy.node.id : '';
    };
    assert.equal(ok('internal-a'), 'internal-a');
    assert.equal(ok('orders'), 'orders-v1');
    assert.equal(ok('edge'), 'edge');
    assert.equal(ok('gateway/shared'), 'shared-gw');
    assert.equal(ok('service/shared'), 'shared-sc');
    const amb = r('internal');
    assert.equal(amb.kind, 'ambiguous');
    assert.deepEqual(amb.kind === 'ambiguous' ? amb.proxies.map((p) => p.node.id) : [], ['internal-a', 'internal-b']);
    assert.equal(r('shared').kind, 'ambiguous', 'a gateway and a service of the same name');
    assert.equal(r('nobody').kind, 'none');
    assert.equal(r('gateway/orders').kind, 'none', 'orders is a service');
  });

  for (const route of ['/api/proxies', '/api/config']) {
    test(`${route}/:id by id and by name`, async () => {
      const byId = await app.inject(`${route}/orders-v1`);
      assert.equal(byId.statusCode, 200);
      assert.equal(byId.json().id, 'orders-v1');
      const byName = await app.inject(`${route}/orders`);
      assert.equal(byName.statusCode, 200, byName.body);
      assert.equal(byName.json().id, 'orders-v1');
      assert.equal((await app.inject(`${route}/edge`)).json().protocol, 'delta', 'the newest stream of a node id');
      assert.equal((await app.inject(`${route}/gateway%2Fshared`)).json().id, 'shared-gw');
    });

    test(`${route}/:id with a name several proxies share: 409 listing their ids`, async () => {
      const res = await app.inject(`${route}/internal`);
      assert.equal(res.statusCode, 409);
      const body = res.json();
      assert.deepEqual(body.ids, ['internal-a', 'internal-b']);
      assert.match(body.error, /"internal" names 2 connected proxies \(gateway\/internal\); ask for one by its node id: internal-a, internal-b/);
      const shared = (await app.inject(`${route}/shared`)).json();
      assert.deepEqual(shared.ids, ['shared-gw', 'shared-sc']);
    });

    test(`${route}/:id with an unknown id or name: 404`, async () => {
      const res = await app.inject(`${route}/nobody`);
      assert.equal(res.statusCode, 404);
      assert.match(res.json().error, /no connected proxy "nobody"/);
    });
  }

  test('/api/explain/:id: a name whose proxies sit in different groups is ambiguous', async () => {
    const res = await app.inject('/api/explain/catalog');
    assert.equal(res.statusCode, 409);
    assert.deepEqual(res.json().ids, ['catalog-1', 'catalog-2']);
    assert.deepEqual(res.json().groups, ['sidecar/catalog/1/2/3', 'sidecar/catalog/4/5/6']);
  });
});
