// The Consul source against a fake Consul: what reaches the EndpointStore, and what does not,
// when Consul answers well, badly, or not at all.
import assert from 'node:assert/strict';
import { after, describe, test } from 'node:test';
import client from 'prom-client';
import type { Instance } from '../../src/ir/types.js';
import type { Model, ServiceModel } from '../../src/model/model.js';
import { createLogger } from '../../src/observability/logger.js';
import { EndpointStore } from '../../src/sources/endpoints.js';
import { parseConsulAddress } from '../../src/sources/consul/config.js';
import { ConsulSource, type ConsulSourceOptions } from '../../src/sources/consul/source.js';
import { entry, startFakeConsul, until } from './consul-fake.js';

const cleanups: (() => Promise<void>)[] = [];
after(async () => {
  for (const c of cleanups.reverse()) await c();
});

function model(services: { name: string; consul?: { service: string; tags?: string[]; datacenter?: string } }[]): Model {
  const map = new Map<string, ServiceModel>();
  for (const s of services)
    map.set(s.name, {
      name: s.name,
      protocol: 'http',
      port: 8080,
      consul: s.consul,
      subsets: [],
      source: { file: 'x.yaml', doc: 1 },
    } as unknown as ServiceModel);
  return { services: map } as unknown as Model;
}

async function setup(opts: Partial<ConsulSourceOptions> = {}) {
  const fake = await startFakeConsul();
  const store = new EndpointStore();
  const changes: string[] = [];
  store.on('change', (s) => changes.push(...s));
  const registry = new client.Registry();
  const logs: string[] = [];
  const logger = createLogger({ level: 'silent' });
  const spy = Object.assign(Object.create(logger), {
    child: () => spy,
    warn: (_o: unknown, msg: string) => logs.push(msg),
    info: () => {},
  });
  const source = new ConsulSource({
    connection: { baseUrl: parseConsulAddress(fake.addr) },
    store,
    logger: spy,
    registry,
    minIntervalMs: 0,
    backoff: { baseMs: 20, maxMs: 80 },
    sidecarSettleMs: 0,
    timeouts: { nonBlockingMs: 1000 },
    ...opts,
  });
  cleanups.push(async () => {
    await source.stop();
    await fake.close();
  });
  const metric = async (name: string, labels = '') => {
    const text = await registry.metrics();
    const m = new RegExp(`^${name}${labels.replace(/[{}]/g, '\\$&')} (\\S+)$`, 'm').exec(text);
    return m ? Number(m[1]) : undefined;
  };
  return { fake, store, changes, source, registry, logs, metric };
}

const ids = (list: readonly Instance[]) => list.map((i) => `${i.id}:${i.health}`);

describe('consul source', () => {
  test('one watch per Consul service, shared by policy Services with different tag filters', async () => {
    const { fake, store, source } = await setup();
    fake.setHealth('web', [entry({ id: 'web-1', port: 9001, tags: ['prod'] }), entry({ id: 'web-2', port: 9002, tags: ['canary'] })]);
    assert.equal(source.readiness().ready, false);
    source.sync(
      model([{ name: 'web-all', consul: { service: 'web' } }, { name: 'web-prod', consul: { service: 'web', tags: ['prod'] } }, { name: 'static-one' }]),
    );
    await until(() => store.get('web-prod').length === 1 && store.get('web-all').length === 2, 'both fed');
    assert.deepEqual(ids(store.get('web-prod')), ['node-1/web-1:HEALTHY']);
    assert.equal(source.readiness().ready, true);
    const paths = new Set(fake.seen.map((q) => q.path));
    assert.deepEqual([...paths].sort(), ['/v1/health/connect/web', '/v1/health/service/web'], 'one health + one connect query for the shared service');
    assert.equal(fake.seen.filter((q) => q.path === '/v1/health/service/web' && q.index === undefined).length, 1);
    const st = source.status();
    assert.deepEqual(
      st.watches.map((w) => [w.consulService, w.policyServices, w.instances]),
      [['web', ['web-all', 'web-prod'], 2]],
    );
  });

  test('health changes reach the store; a critical instance is kept as UNHEALTHY', async () => {
    const { fake, store, source, changes } = await setup();
    fake.setHealth('web', [entry({ id: 'a', port: 9001 }), entry({ id: 'b', port: 9002 })]);
    source.sync(model([{ name: 'web', consul: { service: 'web' } }]));
    await until(() => store.get('web').length === 2, 'synced');
    const n = changes.length;
    fake.setHealth('web', [entry({ id: 'a', port: 9001 }), entry({ id: 'b', port: 9002, checks: [{ status: 'critical' }] })]);
    await until(() => ids(store.get('web')).includes('node-1/b:UNHEALTHY'), 'b unhealthy');
    assert.equal(changes.length, n + 1, 'one change event');
  });

  test('errors keep the last known endpoints, mark the source stale (status + metric), readiness stays; recovery clears it', async () => {
    const { fake, store, source, metric } = await setup();
    fake.setHealth('web', [entry({ id: 'a', port: 9001 })]);
    source.sync(model([{ name: 'web', consul: { service: 'web' } }]));
    await until(() => store.get('web').length === 1, 'synced');
    let mode: 'ok' | '500' | '403' | 'badjson' = '500';
    fake.override = (_q, res) => {
      if (mode === '500') res.writeHead(500).end('No cluster leader');
      else if (mode === '403') res.writeHead(403).end('ACL not found');
      else if (mode === 'badjson') res.writeHead(200, { 'x-consul-index': '999' }).end('{not json');
      else return false;
      return true;
    };
    fake.setHealth('web', [entry({ id: 'a', port: 9001 })]); // wake the blocked query into the failing path
    await until(() => source.stale, 'stale');
    for (const m of ['403', 'badjson'] as const) {
      mode = m;
      await until(() => source.status().watches[0]!.lastError?.reason === (m === '403' ? 'forbidden' : 'malformed'), `error ${m}`);
    }
    assert.deepEqual(ids(store.get('web')), ['node-1/a:HEALTHY'], 'last known endpoints kept');
    assert.equal(source.readiness().ready, true, 'ready once synced, stale or not');
    assert.equal(await metric('signalbox_consul_stale'), 1);
    assert.ok((await metric('signalbox_consul_errors_total', '{endpoint="health",reason="server"}'))! >= 1);
    assert.ok((await metric('signalbox_consul_errors_total', '{endpoint="health",reason="forbidden"}'))! >= 1);
    assert.ok((await metric('signalbox_consul_errors_total', '{endpoint="health",reason="malformed"}'))! >= 1);
    const st = source.status();
    assert.equal(st.stale, true);
    assert.ok(st.watches[0]!.consecutiveFailures >= 3);
    mode = 'ok';
    fake.setHealth('web', [entry({ id: 'a', port: 9001 }), entry({ id: 'b', port: 9002 })]);
    await until(() => !source.stale && store.get('web').length === 2, 'recovered');
    assert.equal(await metric('signalbox_consul_stale'), 0);
  });

  test('a failure for one service never wipes another; the failing one keeps its endpoints', async () => {
    const { fake, store, source } = await setup();
    fake.setHealth('web', [entry({ id: 'w', port: 9001 })]);
    fake.setHealth('api', [entry({ id: 'x', service: 'api', port: 9101 })]);
    source.sync(
      model([
        { name: 'web', consul: { service: 'web' } },
        { name: 'api', consul: { service: 'api' } },
      ]),
    );
    await until(() => store.get('web').length === 1 && store.get('api').length === 1, 'synced');
    fake.override = (q, res) => {
      if (q.path !== '/v1/health/service/api') return false;
      res.writeHead(500).end('boom');
      return true;
    };
    fake.setHealth('web', [entry({ id: 'w', port: 9001 }), entry({ id: 'w2', port: 9002 })]);
    await until(() => store.get('web').length === 2, 'web still updates');
    await until(() => source.status().watches.find((w) => w.consulService === 'api')!.stale, 'api stale');
    assert.deepEqual(ids(store.get('api')), ['node-1/x:HEALTHY']);
    assert.equal(source.status().watches.find((w) => w.consulService === 'web')!.stale, false);
  });

  test('bad registrations are skipped, logged once and counted; the rest is kept', async () => {
    const { fake, store, source, logs, metric } = await setup();
    fake.setHealth('web', [
      entry({ id: 'ok', port: 9001 }),
      entry({ id: 'bad-addr', address: 'db.internal', port: 9002 }),
      entry({ id: 'bad-port', port: 0 }),
      entry({ id: 'ok', port: 9003 }),
    ]);
    source.sync(model([{ name: 'web', consul: { service: 'web' } }]));
    await until(() => store.get('web').length === 1, 'synced');
    assert.equal(await metric('signalbox_consul_skipped_instances_total', '{reason="invalid_address"}'), 1);
    assert.equal(await metric('signalbox_consul_skipped_instances_total', '{reason="invalid_port"}'), 1);
    assert.equal(await metric('signalbox_consul_skipped_instances_total', '{reason="duplicate_id"}'), 1);
    assert.equal(logs.filter((l) => l.includes('bad-addr')).length, 1, logs.join('\n'));
    // a later answer with the same bad entry: counted again, not logged again
    fake.setHealth('web', [entry({ id: 'ok', port: 9001 }), entry({ id: 'bad-addr', address: 'db.internal', port: 9002 }), entry({ id: 'ok2', port: 9004 })]);
    await until(() => store.get('web').length === 2, 'second answer');
    assert.equal(logs.filter((l) => l.includes('bad-addr')).length, 1);
  });

  test('after the index goes backwards, instances missing from the fresh answer are kept for the grace period, then dropped', async () => {
    const { fake, store, source } = await setup({ resyncGraceMs: 600 });
    fake.index = 500n;
    fake.setHealth('web', [entry({ id: 'a', port: 9001 }), entry({ id: 'b', port: 9002 })]);
    source.sync(model([{ name: 'web', consul: { service: 'web' } }]));
    await until(() => store.get('web').length === 2, 'synced');
    // Consul restarted empty: index back to 3, then only `a` re-registers.
    await until(() => fake.seen.filter((q) => q.path === '/v1/health/service/web' && q.index !== undefined).length > 0, 'blocking');
    fake.health.set('web', []);
    fake.index = 3n;
    fake.release(); // the held query answers with the lower index and the empty catalog
    await until(() => source.status().watches[0]!.resyncGraceUntil !== undefined, 'reset seen');
    assert.deepEqual(ids(store.get('web')), ['node-1/a:HEALTHY', 'node-1/b:HEALTHY'], 'nothing dropped on the empty fresh answer');
    fake.setHealth('web', [entry({ id: 'a', port: 9001, checks: [{ status: 'warning' }] })]);
    await until(() => ids(store.get('web')).includes('node-1/a:DEGRADED'), 'fresh data for a applied at once');
    assert.ok(ids(store.get('web')).includes('node-1/b:HEALTHY'), 'b kept during grace');
    await until(() => store.get('web').length === 1, 'b dropped after the grace period', 3000);
  });

  test('a new instance is held back briefly so that it is never sent without its sidecar', async () => {
    const { fake, store, source } = await setup({ sidecarSettleMs: 400 });
    fake.setHealth('web', [entry({ id: 'a', port: 9001 })]);
    source.sync(model([{ name: 'web', consul: { service: 'web' } }]));
    await until(() => store.get('web').length === 1, 'synced');
    const seen: Instance[][] = [];
    store.on('change', () => seen.push([...store.get('web')]));
    fake.setHealth('web', [entry({ id: 'a', port: 9001 }), entry({ id: 'b', port: 9002 })]);
    await new Promise((r) => setTimeout(r, 50));
    fake.setConnect('web', [
      entry({
        id: 'b-sidecar',
        service: 'web-sidecar-proxy',
        kind: 'connect-proxy',
        port: 21002,
        proxy: { DestinationServiceName: 'web', DestinationServiceID: 'b' },
      }),
    ]);
    await until(() => store.get('web').some((i) => i.id === 'node-1/b' && i.sidecar?.port === 21002), 'b with its sidecar');
    assert.ok(
      seen.every((list) => list.every((i) => i.id !== 'node-1/b' || i.sidecar)),
      'b never published without its sidecar',
    );
    // an instance that really has no sidecar still arrives, after the settle time
    fake.setHealth('web', [entry({ id: 'a', port: 9001 }), entry({ id: 'b', port: 9002 }), entry({ id: 'c', port: 9003 })]);
    await until(() => store.get('web').some((i) => i.id === 'node-1/c' && !i.sidecar), 'c without sidecar', 2000);
  });

  test('an instance replaced by a new one (one Consul answer) keeps serving until the held replacement is published: never an empty set', async () => {
    const settle = 300;
    const { fake, store, source } = await setup({ sidecarSettleMs: settle });
    fake.setHealth('web', [entry({ id: 'old', port: 9000 })]);
    source.sync(
      model([
        { name: 'web', consul: { service: 'web' } },
        { name: 'web-canary', consul: { service: 'web', tags: ['canary'] } },
      ]),
    );
    await until(() => store.get('web').length === 1, 'synced');
    const published: string[][] = [];
    store.on('change', (services) => {
      if (services.includes('web')) published.push(store.get('web').map((i) => i.id));
    });
    // Five switches, as in the report: the old instance deregistered and its replacement
    // registered, seen in one answer.
    let previous = 'old';
    for (let n = 1; n <= 5; n++) {
      const t0 = Date.now();
      fake.setHealth('web', [entry({ id: `new-${n}`, port: 9000 + n })]);
      await new Promise((r) => setTimeout(r, settle / 2));
      assert.deepEqual(ids(store.get('web')), [`node-1/${previous}:HEALTHY`], `switch ${n}: the leaving instance still serves while its replacement is held`);
      await until(() => store.get('web').some((i) => i.id === `node-1/new-${n}`), `switch ${n}: replacement published`, 3000);
      assert.ok(Date.now() - t0 >= settle - 20, `switch ${n}: the replacement appears after the settle time (${Date.now() - t0} ms)`);
      assert.deepEqual(ids(store.get('web')), [`node-1/new-${n}:HEALTHY`], `switch ${n}: the leaving instance goes in the same push`);
      previous = `new-${n}`;
    }
    assert.deepEqual(
      published,
      [1, 2, 3, 4, 5].map((n) => [`node-1/new-${n}`]),
      'one push per switch, straight from the old instance to the new one',
    );
    assert.equal(store.get('web-canary').length, 0, 'a Service whose tag filter matches neither instance gets nothing kept');
  });

  test('deregistered first, its replacement registered a moment later: the old instance serves until the new one is published; a last instance that really goes is dropped after the settle time', async () => {
    const settle = 300;
    const { fake, store, source } = await setup({ sidecarSettleMs: settle });
    fake.setHealth('web', [entry({ id: 'old', port: 9000 })]);
    source.sync(model([{ name: 'web', consul: { service: 'web' } }]));
    await until(() => store.get('web').length === 1, 'synced');
    const published: string[][] = [];
    store.on('change', () => published.push(store.get('web').map((i) => i.id)));
    fake.setHealth('web', []); // two Consul answers: the deregistration, then the registration
    await new Promise((r) => setTimeout(r, 100));
    assert.deepEqual(ids(store.get('web')), ['node-1/old:HEALTHY'], 'the leaving instance still serves');
    fake.setHealth('web', [entry({ id: 'new', port: 9001 })]);
    await until(() => store.get('web').some((i) => i.id === 'node-1/new'), 'replacement published', 3000);
    assert.deepEqual(published, [['node-1/new']], 'straight from the old instance to the new one');
    // No replacement this time: the set empties once the settle time has passed.
    const t0 = Date.now();
    fake.setHealth('web', []);
    await until(() => store.get('web').length === 0, 'last instance dropped', 3000);
    assert.ok(Date.now() - t0 >= settle - 20, `dropped after the settle time (${Date.now() - t0} ms)`);
    assert.deepEqual(published, [['node-1/new'], []]);
  });

  test('a replaced instance that was critical or draining when it left goes at once; its replacement after the settle time', async () => {
    const settle = 300;
    const { fake, store, source } = await setup({ sidecarSettleMs: settle });
    fake.setHealth('web', [entry({ id: 'old', port: 9000 }), entry({ id: 'drain', port: 9009 })]);
    source.sync(model([{ name: 'web', consul: { service: 'web' } }]));
    await until(() => store.get('web').length === 2, 'synced');
    fake.setHealth('web', [
      entry({ id: 'old', port: 9000, checks: [{ status: 'critical' }] }),
      entry({ id: 'drain', port: 9009, checks: [{ id: '_node_maintenance', status: 'critical' }] }),
    ]);
    await until(() => ids(store.get('web')).join() === 'node-1/drain:DRAINING,node-1/old:UNHEALTHY', 'old unhealthy, drain draining');
    const t0 = Date.now();
    fake.setHealth('web', [entry({ id: 'new', port: 9001 })]);
    await until(() => store.get('web').length === 0, 'failing instances dropped at once', settle - 50);
    await until(() => store.get('web').length === 1, 'replacement published', 3000);
    assert.ok(Date.now() - t0 >= settle - 20, `replacement held for the settle time (${Date.now() - t0} ms)`);
    assert.deepEqual(ids(store.get('web')), ['node-1/new:HEALTHY']);
  });

  test('a policy Service removed from the model: its watch stops and its endpoints are forgotten', async () => {
    const { fake, store, source } = await setup();
    fake.setHealth('web', [entry({ id: 'a', port: 9001 })]);
    fake.setHealth('api', [entry({ id: 'x', service: 'api', port: 9101 })]);
    source.sync(
      model([
        { name: 'web', consul: { service: 'web' } },
        { name: 'api', consul: { service: 'api', datacenter: 'dc2' } },
      ]),
    );
    await until(() => store.get('web').length === 1 && store.get('api').length === 1, 'synced');
    assert.ok(
      fake.seen.some((q) => q.path === '/v1/health/service/api' && q.dc === 'dc2'),
      'datacenter sent as dc',
    );
    const sentFor: string[] = [];
    const count = source.client.onRequest!;
    source.client.onRequest = (p) => {
      sentFor.push(p);
      count(p);
    };
    source.sync(model([{ name: 'web', consul: { service: 'web' } }]));
    assert.equal(store.has('api'), false);
    fake.setHealth('api', [entry({ id: 'x', service: 'api', port: 9101 }), entry({ id: 'y', service: 'api', port: 9102 })]);
    fake.setHealth('web', [entry({ id: 'a', port: 9001 }), entry({ id: 'b', port: 9002 })]);
    await until(() => store.get('web').length === 2, 'web still live');
    assert.deepEqual(
      sentFor.filter((p) => p.endsWith('/api')),
      [],
      'no query for api after it was dropped',
    );
    assert.equal(source.status().watches.length, 1);
  });
});
