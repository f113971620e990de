// Incremental (Delta) ADS conformance against a real Signalbox (policy files -> pipeline -> xDS).
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { setTimeout as delay } from 'node:timers/promises';
import { waitFor } from '../helpers/net.js';
import { gatewayNode, shortType, type DeltaClientStream, type DeltaDiscoveryResponse } from '../helpers/xds-client.js';
import {
  CDS,
  deltaByName,
  EDS,
  endpointsOf,
  fence,
  LDS,
  policies,
  RDS,
  routeByPrefix,
  seconds,
  startSignalbox,
  waitSynced,
  type Signalbox,
} from './fixture.js';

const QUIET_MS = 250;

function show(r: DeltaDiscoveryResponse): string {
  return `${shortType(r.type_url)}(+${r.resources.map((x) => x.name).join(',')} -${r.removed_resources.join(',')})`;
}

function added(r: DeltaDiscoveryResponse): string[] {
  return r.resources.map((x) => x.name).sort();
}

/** Asserts that, once everything the server pushed has arrived, nothing more comes. */
async function assertQuiet(sb: Signalbox, s: DeltaClientStream, id: string, mark: number, what: string): Promise<void> {
  await fence(sb, s, id);
  await delay(QUIET_MS);
  await fence(sb, s, id);
  assert.deepEqual(s.history.slice(mark).map(show), [], what);
}

/** A stream that behaves like Envoy (wildcard CDS/LDS, follows EDS/RDS) and ACKs everything. */
function envoyLike(sb: Signalbox, id: string): DeltaClientStream {
  const s = sb.ads.delta({ node: gatewayNode(id, 'edge'), follow: true, autoAck: true });
  s.subscribe(CDS, []);
  s.subscribe(LDS, []);
  return s;
}

function webRoute(r: DeltaDiscoveryResponse, prefix: string): any {
  const rc = deltaByName(r).get('edge/web');
  return rc && routeByPrefix(rc, prefix);
}

describe('Delta ADS on a running Signalbox', () => {
  let sb: Signalbox;
  before(async () => {
    sb = await startSignalbox();
  });
  after(async () => {
    await sb.stop();
  });

  test("initial wildcard CDS (empty subscribe) and LDS ('*'), named EDS and RDS, a missing name is removed", async () => {
    const id = 'delta-initial';
    const s = sb.ads.delta({ node: gatewayNode(id, 'edge') });
    s.subscribe(CDS, []);
    const cds = await s.nextOf(CDS);
    assert.deepEqual(added(cds), ['catalog', 'orders', 'status']);
    assert.deepEqual(cds.removed_resources, []);
    for (const x of cds.resources) {
      assert.match(x.version, /^[0-9a-f]{16}$/);
      assert.equal(x.resource?.type_url, CDS);
    }
    assert.equal(deltaByName(cds).get('orders').name, 'orders');
    assert.match(cds.system_version_info, /^[0-9a-f]{16}$/);

    s.subscribe(LDS, ['*']);
    const lds = await s.nextOf(LDS);
    assert.deepEqual(added(lds), ['edge/ops', 'edge/web']);
    assert.equal(deltaByName(lds).get('edge/ops').address.socket_address.port_value, 8081);

    s.subscribe(EDS, ['orders', 'no-such-cluster']);
    const eds = await s.nextOf(EDS);
    assert.deepEqual(added(eds), ['orders'], 'only the subscribed endpoint set');
    assert.deepEqual(eds.removed_resources, ['no-such-cluster'], 'a subscribed name that does not exist is reported removed');
    assert.deepEqual(endpointsOf(deltaByName(eds).get('orders')), ['127.0.0.1:9001', '127.0.0.1:9002']);

    s.subscribe(RDS, ['edge/web']);
    const rds = await s.nextOf(RDS);
    assert.deepEqual(added(rds), ['edge/web']);
    assert.equal(seconds(webRoute(rds, '/orders').route.timeout), 5);

    // Subscribing one more name sends only that one (what the proxy has is not re-sent).
    s.subscribe(EDS, ['status']);
    const eds2 = await s.nextOf(EDS);
    assert.deepEqual(added(eds2), ['status']);
    assert.deepEqual(eds2.removed_resources, [], '"no-such-cluster" was already reported');

    // The versions handed out are the ones the server shows for the proxy.
    await fence(sb, s, id);
    const dump = await sb.get<{ resources: Record<string, { name: string; version: string }[]> }>(`/api/config/${encodeURIComponent(id)}`);
    assert.deepEqual(
      dump.resources.cluster!.map((r) => [r.name, r.version]),
      cds.resources.map((x) => [x.name, x.version]),
    );
    s.cancel();
  });

  test('ACKs are recorded per type: ackedVersion == sentVersion == system_version_info received', async () => {
    const id = 'delta-acker';
    const s = envoyLike(sb, id);
    const p = await waitSynced(sb, id);
    assert.equal(p.protocol, 'delta');
    assert.equal(p.state, 'SYNCED');
    await fence(sb, s, id);
    for (const [short, type] of [
      ['cluster', CDS],
      ['endpoint', EDS],
      ['listener', LDS],
      ['route', RDS],
    ] as const) {
      const last = [...s.history].reverse().find((r) => r.type_url === type)!;
      const t = (await sb.proxy(id))!.types[short]!;
      assert.equal(t.sentVersion, last.system_version_info, `${short} sentVersion`);
      assert.equal(t.ackedVersion, last.system_version_info, `${short} ackedVersion`);
    }
    assert.deepEqual([...s.holding(EDS).keys()].sort(), ['catalog', 'orders', 'status']);
    assert.deepEqual([...s.holding(RDS).keys()].sort(), ['edge/ops', 'edge/web']);
    assert.ok((await sb.metric('signalbox_connected_proxies', { role: 'gateway', protocol: 'delta' })) >= 1);
    await assertQuiet(sb, s, id, s.history.length, 'ACKs must not be answered');
    s.cancel();
  });

  test('initial_resource_versions are honoured: what the proxy already has is not re-sent', async () => {
    const a = envoyLike(sb, 'delta-first-life');
    await waitSynced(sb, 'delta-first-life');
    const clusters = Object.fromEntries(a.holding(CDS));
    const endpoints = Object.fromEntries(a.holding(EDS));
    a.cancel();

    // Reconnect with everything current: nothing is re-sent.
    const id = 'delta-reconnect';
    const b = sb.ads.delta({ node: gatewayNode(id, 'edge') });
    b.subscribe(CDS, [], { initial_resource_versions: clusters });
    b.subscribe(EDS, ['orders', 'catalog'], { initial_resource_versions: { orders: endpoints.orders!, catalog: endpoints.catalog! } });
    await fence(sb, b, id);
    await delay(QUIET_MS);
    await fence(sb, b, id);
    assert.deepEqual(
      b.history.filter((r) => r.type_url === CDS || r.type_url === EDS).map(show),
      [],
      'no response at all, not even an empty one (Envoy would apply its unchanged configuration again)',
    );

    // Reconnect with one stale version and one resource that no longer exists.
    const id2 = 'delta-reconnect-stale';
    const c = sb.ads.delta({ node: gatewayNode(id2, 'edge') });
    c.subscribe(CDS, [], { initial_resource_versions: { ...clusters, orders: '0000000000000000', retired: '1111111111111111' } });
    const cds = await c.nextOf(CDS);
    assert.deepEqual(added(cds), ['orders'], 'only the stale resource is re-sent');
    assert.equal(cds.resources[0]!.version, clusters.orders);
    assert.deepEqual(cds.removed_resources, ['retired'], 'a resource the proxy has but that no longer exists is removed');
    c.subscribe(EDS, ['orders', 'catalog'], { initial_resource_versions: { orders: endpoints.orders! } });
    const eds = await c.nextOf(EDS);
    assert.deepEqual(added(eds), ['catalog'], 'only the endpoint set the proxy lacks');
    b.cancel();
    c.cancel();
  });

  test('unsubscribe, then subscribe again: the resource is sent again', async () => {
    const id = 'delta-resub';
    const s = sb.ads.delta({ node: gatewayNode(id, 'edge'), autoAck: true });
    s.subscribe(RDS, ['edge/web']);
    const first = await s.nextOf(RDS);
    assert.deepEqual(added(first), ['edge/web']);
    s.unsubscribe(RDS, ['edge/web']);
    await assertQuiet(sb, s, id, s.history.length, 'an unsubscribe is not answered');
    s.subscribe(RDS, ['edge/web']);
    const again = await s.nextOf(RDS);
    assert.deepEqual(added(again), ['edge/web'], 'the proxy dropped it, so it is sent again');
    assert.equal(again.resources[0]!.version, first.resources[0]!.version);
    s.cancel();
  });

  test('versions are deterministic: a replica on the same policy files hands out identical versions', async () => {
    const replica = await startSignalbox(Object.fromEntries(['services.yaml', 'policies.yaml'].map((f) => [f, readFileSync(path.join(sb.dir, f), 'utf8')])));
    try {
      const a = envoyLike(sb, 'delta-det-a');
      const b = envoyLike(replica, 'delta-det-b');
      await waitSynced(sb, 'delta-det-a');
      await waitSynced(replica, 'delta-det-b');
      for (const type of [CDS, EDS, LDS, RDS]) {
        assert.deepEqual([...a.holding(type)].sort(), [...b.holding(type)].sort(), `${shortType(type)} resource versions`);
        const last = (s: DeltaClientStream) => [...s.history].reverse().find((r) => r.type_url === type)!.system_version_info;
        assert.equal(last(a), last(b), `${shortType(type)} system_version_info`);
      }
      a.cancel();
      b.cancel();
    } finally {
      await replica.stop();
    }
  });
});

test('a NACK is recorded with its message, the rejected resources are not re-sent, a later config is', async () => {
  const sb = await startSignalbox();
  try {
    const id = 'delta-nacker';
    const s = sb.ads.delta({ node: gatewayNode(id, 'edge'), follow: true });
    const message = 'Proto constraint validation failed: RouteConfiguration edge/web: invalid timeout';
    let rejectRoutes = true;
    s.on('response', (r) => (r.type_url === RDS && rejectRoutes ? s.nack(r, message) : s.ack(r)));
    s.subscribe(CDS, []);
    s.subscribe(LDS, []);
    const rejected = await s.nextOf(RDS);
    await waitFor(async () => (await sb.proxy(id))?.types.route?.lastNack !== undefined, { what: 'the NACK to be recorded' });
    const route = (await sb.proxy(id))!.types.route!;
    assert.equal((await sb.proxy(id))!.state, 'NACKED');
    assert.equal(route.lastNack!.message, message);
    assert.equal(route.lastNack!.version, rejected.system_version_info);
    assert.equal(route.ackedVersion, undefined);
    assert.deepEqual(route.lastNack!.resources, ['edge/web']);
    assert.equal(await sb.metric('signalbox_xds_nacks_total', { type: 'route' }), 1);

    await assertQuiet(sb, s, id, s.history.length, 'the rejected resources must not be re-sent');

    rejectRoutes = false;
    await sb.writePolicy('policies.yaml', policies({ ordersTimeout: '7s' }));
    const fixed = await s.nextOf(RDS);
    assert.deepEqual(added(fixed), ['edge/web'], 'only the changed route configuration');
    assert.notEqual(fixed.resources[0]!.version, rejected.resources.find((x) => x.name === 'edge/web')!.version);
    assert.equal(seconds(webRoute(fixed, '/orders').route.timeout), 7);
    const synced = await waitSynced(sb, id);
    assert.equal(synced.state, 'SYNCED');
  } finally {
    await sb.stop();
  }
});

describe('Delta pushes after policy edits', () => {
  let sb: Signalbox;
  let s: DeltaClientStream;
  const id = 'delta-editor';
  before(async () => {
    sb = await startSignalbox();
    s = envoyLike(sb, id);
    await waitSynced(sb, id);
    await fence(sb, s, id);
  });
  after(async () => {
    await sb.stop();
  });

  test('changing a route timeout sends only that route configuration', async () => {
    const mark = s.history.length;
    await sb.writePolicy('policies.yaml', policies({ ordersTimeout: '9s' }));
    await fence(sb, s, id);
    const pushed = s.history.slice(mark);
    assert.deepEqual(pushed.map(show), ['route(+edge/web -)']);
    assert.equal(seconds(webRoute(pushed[0]!, '/orders').route.timeout), 9);
    await waitSynced(sb, id);
  });

  test('a change to a resource the proxy unsubscribed from is not pushed', async () => {
    s.unsubscribe(RDS, ['edge/ops']);
    const mark = s.history.length;
    // The ops route's backend moves (new cluster, new route): RDS edge/ops is not wanted any more.
    await sb.writePolicy(
      'policies.yaml',
      policies({ ordersTimeout: '9s' }).replace('backendRefs: [ { name: status } ]', 'backendRefs: [ { name: status } ]\n      timeout: 3s'),
    );
    await assertQuiet(sb, s, id, mark, 'no RDS for an unsubscribed route configuration');
    s.subscribe(RDS, ['edge/ops']);
    const r = await s.nextOf(RDS);
    assert.deepEqual(added(r), ['edge/ops']);
    const rc = deltaByName(r).get('edge/ops');
    assert.equal(seconds(rc.virtual_hosts[0].routes[0].route.timeout), 3, 'the current version on re-subscription');
    await waitSynced(sb, id);
  });

  test('deleted resources are named in removed_resources; clusters go only after listeners and routes are ACKed', async () => {
    const mark = s.history.length;
    await sb.writePolicy('policies.yaml', policies({ ordersTimeout: '9s', ops: false }));
    const lds = await s.next((r) => r.type_url === LDS && r.removed_resources.includes('edge/ops'));
    assert.deepEqual(added(lds), []);
    const rds = await s.next((r) => r.type_url === RDS && r.removed_resources.includes('edge/ops'));
    const cds = await s.next((r) => r.type_url === CDS && r.removed_resources.includes('status'));
    assert.deepEqual(cds.removed_resources, ['status']);
    const since = s.history.slice(mark);
    const at = (r: DeltaDiscoveryResponse) => since.indexOf(r);
    assert.ok(at(cds) > at(lds) && at(cds) > at(rds), `clusters are removed after listeners and routes: ${since.map(show)}`);
    for (const r of since.slice(0, at(cds))) {
      assert.ok(!(r.type_url === CDS && r.removed_resources.includes('status')), 'no early cluster removal');
      assert.ok(!(r.type_url === EDS && r.removed_resources.includes('status')), 'no early endpoint removal');
    }
    // The ACKs of the listener and route updates were sent before the cluster removal arrived.
    for (const r of [lds, rds])
      assert.ok(
        s.sent.some((q) => !Buffer.isBuffer(q) && q.response_nonce === r.nonce && !q.error_detail),
        `${shortType(r.type_url)} ACKed`,
      );
    const p = await waitSynced(sb, id);
    assert.equal(p.state, 'SYNCED');
    assert.deepEqual([...s.holding(CDS).keys()].sort(), ['catalog', 'orders']);
    assert.deepEqual([...s.holding(LDS).keys()].sort(), ['edge/web']);
  });
});

test('make-before-break (Delta): a replaced cluster and its endpoints stay until the routes are ACKed', async () => {
  // No drain: this checks make-before-break alone (the drain after the route ACK: warm-clusters.test.ts).
  const sb = await startSignalbox(undefined, { 'cluster-drain-ms': '0' });
  try {
    const id = 'delta-mbb';
    const s = sb.ads.delta({ node: gatewayNode(id, 'edge'), follow: true });
    let holdRoutes = false;
    s.on('response', (r) => {
      if (r.type_url === RDS && holdRoutes) return;
      s.ack(r);
    });
    s.subscribe(CDS, ['*']);
    s.subscribe(LDS, ['*']);
    await waitSynced(sb, id);
    await fence(sb, s, id);
    holdRoutes = true;
    const mark = s.history.length;

    await sb.writePolicy('policies.yaml', policies({ catalogBackend: 'catalog2' }));
    const moved = await s.next((r) => r.type_url === RDS && webRoute(r, '/catalog')?.route.cluster === 'catalog2');
    // The new cluster's endpoints answer the proxy's own follow-up subscription (a round trip).
    await s.next((r) => r.type_url === EDS && added(r).includes('catalog2'));
    await fence(sb, s, id);
    let since = s.history.slice(mark);
    const addCds = since.find((r) => r.type_url === CDS && added(r).includes('catalog2'));
    assert.ok(addCds, `the wildcard stream gets the new cluster: ${since.map(show)}`);
    assert.ok(since.indexOf(addCds) < since.indexOf(moved), 'clusters before routes');
    assert.ok(
      since.some((r) => r.type_url === EDS && added(r).includes('catalog2')),
      'the new cluster gets its endpoints',
    );
    for (const r of since) assert.ok(!r.removed_resources.includes('catalog'), `nothing of "catalog" removed before the routes are ACKed: ${since.map(show)}`);

    // A NACK of the routes keeps the old cluster.
    s.nack(moved, 'rejected on purpose');
    await waitFor(async () => (await sb.proxy(id))?.types.route?.lastNack !== undefined, { what: 'the NACK to be recorded' });
    await fence(sb, s, id);
    since = s.history.slice(mark);
    for (const r of since) assert.ok(!r.removed_resources.includes('catalog'), 'a NACK of the routes keeps the old cluster');

    holdRoutes = false;
    await sb.writePolicy('policies.yaml', policies({ catalogBackend: 'catalog2', ordersTimeout: '6s' }));
    const accepted = await s.next((r) => r.type_url === RDS && seconds(webRoute(r, '/orders')?.route.timeout) === 6);
    const removal = await s.next((r) => r.type_url === CDS && r.removed_resources.includes('catalog'));
    assert.ok(s.history.indexOf(removal) > s.history.indexOf(accepted));
    await waitSynced(sb, id);
    assert.deepEqual([...s.holding(CDS).keys()].sort(), ['catalog2', 'orders', 'status']);
    assert.ok(!s.subscribed.get(EDS)?.has('catalog'), 'the proxy stopped asking for the old endpoints');
  } finally {
    await sb.stop();
  }
});
