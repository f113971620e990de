// State-of-the-World ADS conformance against a real Signalbox (policy files -> pipeline -> xDS).
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { setTimeout as delay } from 'node:timers/promises';
import { waitFor } from '../helpers/net.js';
import { gatewayNode, routeConfigNames, shortType, type DiscoveryResponse, type SotwClientStream } from '../helpers/xds-client.js';
import {
  byName,
  CDS,
  EDS,
  endpointsOf,
  fence,
  LDS,
  namesOf,
  policies,
  RDS,
  routeByPrefix,
  seconds,
  SERVICES,
  startSignalbox,
  waitSynced,
  type Signalbox,
} from './fixture.js';

/** How long "nothing more arrives" is watched after a fence (bounded; no timing is asserted). */
const QUIET_MS = 250;

/** Asserts that, once everything the server pushed has arrived, nothing more comes. */
async function assertQuiet(sb: Signalbox, s: SotwClientStream, id: string, mark: number, what: string): Promise<void> {
  await fence(sb, s, id);
  await delay(QUIET_MS);
  await fence(sb, s, id);
  assert.deepEqual(s.history.slice(mark).map(show), [], what);
}

function show(r: DiscoveryResponse): string {
  return `${shortType(r.type_url)} v=${r.version_info.slice(0, 8)} [${namesOf(r).join(',')}]`;
}

/** A stream that behaves like Envoy (follows CDS->EDS and LDS->RDS) and ACKs everything. */
function envoyLike(sb: Signalbox, id: string): SotwClientStream {
  const s = sb.ads.sotw({ node: gatewayNode(id, 'edge'), follow: true, autoAck: true });
  s.request(CDS);
  s.request(LDS);
  return s;
}

function lastOf(s: SotwClientStream, type: string): DiscoveryResponse {
  const r = [...s.history].reverse().find((x) => x.type_url === type);
  assert.ok(r, `no ${shortType(type)} response received`);
  return r;
}

/** The decoded route of a path prefix in the route configuration edge/web of an RDS response. */
function webRoute(r: DiscoveryResponse, prefix: string): any {
  return routeByPrefix(byName(r).get('edge/web'), prefix);
}

describe('SotW ADS on a running Signalbox', () => {
  let sb: Signalbox;
  before(async () => {
    sb = await startSignalbox();
  });
  after(async () => {
    await sb.stop();
  });

  test('initial wildcard CDS and LDS, then named EDS and RDS subscriptions', async () => {
    const s = sb.ads.sotw({ node: gatewayNode('sotw-initial', 'edge') });
    s.request(CDS);
    const cds = await s.nextOf(CDS);
    assert.deepEqual(namesOf(cds), ['catalog', 'orders', 'status']);
    assert.match(cds.version_info, /^[0-9a-f]{16}$/);
    assert.ok(cds.nonce.length > 0);
    for (const a of cds.resources) assert.equal(a.type_url, CDS);
    const orders = byName(cds).get('orders');
    assert.equal(orders.type, 'EDS');
    assert.ok(orders.eds_cluster_config.eds_config.ads, 'clusters load their endpoints over ADS');

    s.request(EDS, ['orders']);
    const eds = await s.nextOf(EDS);
    assert.deepEqual(namesOf(eds), ['orders'], 'only the requested endpoint set');
    assert.deepEqual(endpointsOf(byName(eds).get('orders')), ['127.0.0.1:9001', '127.0.0.1:9002']);

    s.request(LDS);
    const lds = await s.nextOf(LDS);
    assert.deepEqual(namesOf(lds), ['edge/ops', 'edge/web']);
    assert.equal(byName(lds).get('edge/web').address.socket_address.port_value, 8080);
    assert.equal(byName(lds).get('edge/ops').address.socket_address.port_value, 8081);
    assert.deepEqual([...new Set(lds.resources.flatMap(routeConfigNames))].sort(), ['edge/ops', 'edge/web'], 'listeners load their routes over RDS');

    s.request(RDS, ['edge/web']);
    const rds = await s.nextOf(RDS);
    assert.deepEqual(namesOf(rds), ['edge/web'], 'only the requested route configuration');
    assert.equal(webRoute(rds, '/orders').route.cluster, 'orders');
    assert.equal(seconds(webRoute(rds, '/orders').route.timeout), 5);

    // A changed subscription is answered with exactly the new set, wider or narrower.
    s.request(EDS, ['orders', 'status']);
    const eds2 = await s.nextOf(EDS);
    assert.deepEqual(namesOf(eds2), ['orders', 'status']);
    assert.deepEqual(endpointsOf(byName(eds2).get('status')), ['127.0.0.1:9005']);
    s.request(EDS, ['status']);
    assert.deepEqual(namesOf(await s.nextOf(EDS)), ['status']);
    // A name that does not exist is simply absent.
    s.request(EDS, ['status', 'no-such-cluster']);
    assert.deepEqual(namesOf(await s.nextOf(EDS)), ['status']);
    s.cancel();
  });

  test('ACKs are recorded per type: ackedVersion == sentVersion == what the proxy received', async () => {
    const id = 'sotw-acker';
    const s = envoyLike(sb, id);
    const p = await waitSynced(sb, id);
    assert.equal(p.protocol, 'sotw');
    assert.equal(p.state, 'SYNCED');
    await fence(sb, s, id);
    for (const [short, type] of [
      ['cluster', CDS],
      ['endpoint', EDS],
      ['listener', LDS],
      ['route', RDS],
    ] as const) {
      const last = lastOf(s, type);
      const now = (await sb.proxy(id))!.types[short]!;
      assert.equal(now.sentVersion, last.version_info, `${short}: sentVersion is the version the proxy got`);
      assert.equal(now.ackedVersion, last.version_info, `${short}: ackedVersion`);
    }
    // The follow-ups asked for every dependency.
    assert.deepEqual(s.subscriptions.get(EDS), ['catalog', 'orders', 'status']);
    assert.deepEqual(s.subscriptions.get(RDS), ['edge/ops', 'edge/web']);
    assert.ok((await sb.metric('signalbox_connected_proxies', { role: 'gateway', protocol: 'sotw' })) >= 1);
    assert.ok((await sb.metric('signalbox_xds_pushes_total', { type: 'route', protocol: 'sotw' })) >= 1);
    // ACKs are not answered: nothing more arrives.
    await assertQuiet(sb, s, id, s.history.length, 'ACKs must not be answered');
    s.cancel();
    await waitFor(async () => (await sb.proxy(id)) === undefined, { what: 'the closed stream to leave /api/proxies' });
  });

  test('a request with a stale nonce is ignored; one with the current nonce is served', async () => {
    const id = 'sotw-stale';
    const s = sb.ads.sotw({ node: gatewayNode(id, 'edge') });
    s.request(EDS, ['orders']);
    const r1 = await s.nextOf(EDS);
    s.request(EDS, ['orders', 'status']); // carries r1's nonce, the current one
    const r2 = await s.nextOf(EDS);
    assert.notEqual(r1.nonce, r2.nonce);
    // r1's nonce is stale now: neither its subscription change nor its "ACK" may count.
    s.request(EDS, ['catalog'], { response_nonce: r1.nonce, version_info: r1.version_info });
    s.request(EDS, ['catalog'], { response_nonce: 'never-sent', version_info: r2.version_info });
    // The current nonce is served: the next response answers this request, not the stale ones.
    s.request(EDS, ['status'], { response_nonce: r2.nonce, version_info: r2.version_info });
    const r3 = await s.nextOf(EDS);
    assert.deepEqual(namesOf(r3), ['status'], 'the stale requests changed nothing');
    const p = await fence(sb, s, id);
    assert.equal(p.types.endpoint!.pushes, 3);
    assert.equal(p.types.endpoint!.ackedVersion, r2.version_info, 'only the current-nonce request counted as an ACK');
    s.cancel();
  });

  test('a reconnect with the versions the proxy runs gets nothing; a stale version gets the current one', async () => {
    const first = envoyLike(sb, 'sotw-first-life');
    await waitSynced(sb, 'sotw-first-life');
    const cds = lastOf(first, CDS);
    const eds = lastOf(first, EDS);
    const edsNames = namesOf(eds);
    first.cancel();

    // Another stream (as to another replica: versions are content hashes) naming what it runs.
    const id = 'sotw-resumed';
    const b = sb.ads.sotw({ node: gatewayNode(id, 'edge') });
    b.request(CDS, [], { version_info: cds.version_info });
    b.request(EDS, edsNames, { version_info: eds.version_info });
    await assertQuiet(sb, b, id, 0, 'current versions: no response at all');
    const p = (await sb.proxy(id))!;
    assert.equal(p.types.cluster!.pushes, 0);
    assert.equal(p.types.cluster!.ackedVersion, cds.version_info, 'shown as running the version it named');
    b.cancel();

    const id2 = 'sotw-resumed-stale';
    const c = sb.ads.sotw({ node: gatewayNode(id2, 'edge') });
    c.request(CDS, [], { version_info: 'not-the-current-version' });
    const again = await c.nextOf(CDS);
    assert.equal(again.version_info, cds.version_info, 'a stale version is answered with the current one');
    c.cancel();
  });

  test("a nonce never sent on a type does not swallow that type's first request", async () => {
    const id = 'sotw-stale-first';
    const s = sb.ads.sotw({ node: gatewayNode(id, 'edge') });
    s.request(CDS, [], { response_nonce: 'from-another-stream' }); // ignored
    s.request(CDS, [], { response_nonce: '' });
    const cds = await s.nextOf(CDS);
    assert.deepEqual(namesOf(cds), ['catalog', 'orders', 'status'], 'the first real request is still a wildcard request');
    assert.equal((await fence(sb, s, id)).types.cluster!.pushes, 1);
    s.cancel();
  });

  test('versions are deterministic: a replica on the same policy files hands out identical versions and bytes', async () => {
    // The same files in another directory: a second replica.
    const replica = await startSignalbox(Object.fromEntries(['services.yaml', 'policies.yaml'].map((f) => [f, readFileSync(path.join(sb.dir, f), 'utf8')])));
    try {
      const a = envoyLike(sb, 'sotw-det-a');
      const b = envoyLike(replica, 'sotw-det-b');
      await waitSynced(sb, 'sotw-det-a');
      await waitSynced(replica, 'sotw-det-b');
      for (const type of [CDS, EDS, LDS, RDS]) {
        const ra = lastOf(a, type);
        const rb = lastOf(b, type);
        assert.equal(ra.version_info, rb.version_info, `${shortType(type)} version_info`);
        assert.deepEqual(namesOf(ra), namesOf(rb));
        const hex = (r: DiscoveryResponse) => r.resources.map((x) => Buffer.from(x.value).toString('hex'));
        assert.deepEqual(hex(ra), hex(rb), `${shortType(type)} resource bytes`);
      }
      a.cancel();
      b.cancel();
    } finally {
      await replica.stop();
    }
  });
});

test('a NACK is recorded with its message, the rejected version is not re-sent, a later config is', async () => {
  const sb = await startSignalbox();
  try {
    const id = 'sotw-nacker';
    const s = sb.ads.sotw({ node: gatewayNode(id, 'edge'), follow: true });
    const message = 'Proto constraint validation failed: RouteConfiguration edge/web: invalid timeout';
    let rejectRoutes = true;
    s.on('response', (r) => (r.type_url === RDS && rejectRoutes ? s.nack(r, message) : s.ack(r)));
    s.request(CDS);
    s.request(LDS);
    const rejected = await s.nextOf(RDS);
    await waitFor(async () => (await sb.proxy(id))?.types.route?.lastNack !== undefined, { what: 'the NACK to be recorded' });
    const p = (await sb.proxy(id))!;
    assert.equal(p.state, 'NACKED');
    const route = p.types.route!;
    assert.equal(route.lastNack!.message, message);
    assert.equal(route.lastNack!.version, rejected.version_info);
    assert.equal(route.sentVersion, rejected.version_info);
    assert.equal(route.ackedVersion, undefined, 'a NACK is not an ACK');
    assert.deepEqual(route.lastNack!.resources, ['edge/web'], "the resource named in Envoy's message");
    assert.ok(
      route.lastNack!.sources.some((f) => f.endsWith('policies.yaml')),
      `sources: ${route.lastNack!.sources}`,
    );
    assert.equal(await sb.metric('signalbox_xds_nacks_total', { type: 'route' }), 1);
    assert.equal(await sb.metric('signalbox_xds_nacks_total', { type: 'cluster' }), 0);

    // The NACK was handled (it is recorded): nothing is re-sent for it.
    await assertQuiet(sb, s, id, s.history.length, 'the rejected version must not be re-sent');
    assert.equal((await sb.proxy(id))!.types.route!.pushes, 1);

    // A different configuration is sent (and this time accepted).
    rejectRoutes = false;
    await sb.writePolicy('policies.yaml', policies({ ordersTimeout: '7s' }));
    const fixed = await s.nextOf(RDS);
    assert.notEqual(fixed.version_info, rejected.version_info);
    assert.equal(seconds(webRoute(fixed, '/orders').route.timeout), 7);
    const synced = await waitSynced(sb, id);
    assert.equal(synced.state, 'SYNCED');
    assert.equal(synced.types.route!.ackedVersion, fixed.version_info);
    assert.equal(await sb.metric('signalbox_xds_nacks_total', { type: 'route' }), 1);
  } finally {
    await sb.stop();
  }
});

describe('SotW pushes after policy edits', () => {
  let sb: Signalbox;
  let s: SotwClientStream;
  const id = 'sotw-editor';
  before(async () => {
    sb = await startSignalbox();
    s = envoyLike(sb, id);
    await waitSynced(sb, id);
    await fence(sb, s, id);
  });
  after(async () => {
    await sb.stop();
  });

  test('changing a route timeout pushes RDS only (not CDS, EDS or LDS)', async () => {
    const before = (await fence(sb, s, id)).types;
    const mark = s.history.length;
    await sb.writePolicy('policies.yaml', policies({ ordersTimeout: '9s' }));
    const after = (await fence(sb, s, id)).types;
    const pushed = s.history.slice(mark);
    assert.deepEqual(
      pushed.map((r) => shortType(r.type_url)),
      ['route'],
    );
    assert.deepEqual(namesOf(pushed[0]!), ['edge/ops', 'edge/web'], 'SotW: every subscribed route configuration');
    assert.equal(seconds(webRoute(pushed[0]!, '/orders').route.timeout), 9);
    for (const t of ['cluster', 'endpoint', 'listener']) assert.equal(after[t]!.pushes, before[t]!.pushes, `${t} pushes`);
    assert.equal(after.route!.pushes, before.route!.pushes + 1);
    await waitSynced(sb, id);
  });

  test('rewriting a file without a semantic change pushes nothing', async () => {
    const applied = await sb.metric('signalbox_policy_reloads_total', { result: 'applied' });
    const mark = s.history.length;
    await sb.writePolicy('policies.yaml', policies({ ordersTimeout: '9s', comment: 'only a comment changed' }));
    assert.equal(await sb.metric('signalbox_policy_reloads_total', { result: 'applied' }), applied + 1, 'the edit was reloaded');
    await assertQuiet(sb, s, id, mark, 'a no-op edit must not push');
  });

  test('an edit this proxy does not use (an unreferenced service) pushes nothing', async () => {
    const mark = s.history.length;
    await sb.writePolicy('services.yaml', SERVICES.replace('127.0.0.2', '127.0.0.3'));
    await assertQuiet(sb, s, id, mark, 'an unrelated edit must not push');
  });

  test('an endpoint change pushes EDS only', async () => {
    const mark = s.history.length;
    await sb.writePolicy('services.yaml', SERVICES.replace('port: 9005', 'port: 9015'));
    await fence(sb, s, id);
    const pushed = s.history.slice(mark);
    assert.deepEqual(
      pushed.map((r) => shortType(r.type_url)),
      ['endpoint'],
    );
    assert.deepEqual(endpointsOf(byName(pushed[0]!).get('status')), ['127.0.0.1:9015']);
    await waitSynced(sb, id);
  });
});

test('make-before-break: a replaced cluster stays until the routes that left it are ACKed', async () => {
  // No drain: this checks make-before-break alone (the drain after the route ACK: warm-clusters.test.ts).
  const sb = await startSignalbox(undefined, { 'cluster-drain-ms': '0' });
  try {
    const id = 'sotw-mbb';
    const s = sb.ads.sotw({ node: gatewayNode(id, 'edge'), follow: true });
    let holdRoutes = false;
    s.on('response', (r) => {
      if (r.type_url === RDS && holdRoutes) return; // the proxy is still "applying" its routes
      s.ack(r);
    });
    s.request(CDS);
    s.request(LDS);
    await waitSynced(sb, id);
    await fence(sb, s, id);
    holdRoutes = true;
    const mark = s.history.length;

    // /catalog moves from cluster "catalog" to "catalog2".
    await sb.writePolicy('policies.yaml', policies({ catalogBackend: 'catalog2' }));
    const movedRoutes = await s.next((r) => r.type_url === RDS && webRoute(r, '/catalog')?.route.cluster === 'catalog2');
    // The new cluster's endpoints answer the proxy's own follow-up request (a round trip).
    await s.next((r) => r.type_url === EDS && namesOf(r).includes('catalog2'));
    await fence(sb, s, id);
    let since = s.history.slice(mark);
    const firstCds = since.findIndex((r) => r.type_url === CDS);
    assert.ok(firstCds >= 0, `a CDS with the new cluster is sent; got ${since.map(show)}`);
    assert.deepEqual(namesOf(since[firstCds]!), ['catalog', 'catalog2', 'orders', 'status'], 'new cluster added, old one kept');
    assert.ok(firstCds < since.indexOf(movedRoutes), 'clusters are sent before the routes that use them');
    for (const r of since.filter((x) => x.type_url === CDS))
      assert.ok(namesOf(r).includes('catalog'), `no CDS drops the old cluster before the routes are ACKed: ${since.map(show)}`);
    for (const r of since.filter((x) => x.type_url === EDS)) assert.ok(namesOf(r).includes('catalog'), 'the kept cluster keeps its endpoints');
    assert.ok(
      since.some((r) => r.type_url === EDS && namesOf(r).includes('catalog2')),
      'the new cluster gets its endpoints',
    );
    assert.ok(!since.some((r) => r.type_url === LDS), 'listeners did not change');

    // The proxy rejects the new routes: it still runs the old ones, so the old cluster must stay.
    s.nack(movedRoutes, 'rejected on purpose');
    await waitFor(async () => (await sb.proxy(id))?.types.route?.lastNack !== undefined, { what: 'the NACK to be recorded' });
    await fence(sb, s, id);
    since = s.history.slice(mark);
    for (const r of since.filter((x) => x.type_url === CDS)) assert.ok(namesOf(r).includes('catalog'), 'a NACK of the routes keeps the old cluster');

    // A later configuration is accepted: only then does the old cluster go.
    holdRoutes = false;
    await sb.writePolicy('policies.yaml', policies({ catalogBackend: 'catalog2', ordersTimeout: '6s' }));
    const accepted = await s.next((r) => r.type_url === RDS && seconds(webRoute(r, '/orders')?.route.timeout) === 6);
    const dropped = await s.next((r) => r.type_url === CDS && !namesOf(r).includes('catalog'));
    assert.deepEqual(namesOf(dropped), ['catalog2', 'orders', 'status']);
    assert.ok(s.history.indexOf(dropped) > s.history.indexOf(accepted), 'the old cluster goes after the routes');
    assert.ok(
      s.sent.some((q) => !Buffer.isBuffer(q) && q.response_nonce === accepted.nonce && !q.error_detail),
      'the routes were ACKed',
    );
    // Envoy then stops asking for the old cluster's endpoints.
    const eds = await s.next((r) => r.type_url === EDS && !namesOf(r).includes('catalog'));
    assert.deepEqual(namesOf(eds), ['catalog2', 'orders', 'status']);
    await waitSynced(sb, id);
  } finally {
    await sb.stop();
  }
});
