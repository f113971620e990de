// Routes wait for warm clusters, and clusters leave after a drain (issue 21), at the protocol level,
// in SotW and Delta: a client that behaves like Envoy (follows CDS -> EDS and LDS -> RDS) but
// answers only when the test says so. The real-Envoy proof under traffic is
// test/integration/route-churn.test.ts.
import assert from 'node:assert/strict';
import { setTimeout as delay } from 'node:timers/promises';
import { after, before, describe, test } from 'node:test';
import { gatewayNode, type DeltaDiscoveryResponse, type DiscoveryResponse, type StreamOptions } from '../helpers/xds-client.js';
import { waitFor } from '../helpers/net.js';
import { CDS, EDS, fence, LDS, policies, RDS, routeByPrefix, byName, deltaByName, SERVICES, startSignalbox, waitSynced, type Signalbox } from './fixture.js';

const WARM_WAIT_MS = 1500;
const CATALOG3 = `apiVersion: signalbox.dev/v1alpha1
kind: Service
metadata: { name: catalog3 }
spec:
  port: 8080
  endpoints: [ { address: 127.0.0.3, port: 9005 } ]
`;
const DRAIN_MS = 1000;

type Res = DiscoveryResponse | DeltaDiscoveryResponse;

/** One stream, either protocol, seen the same way by the tests. */
interface Client {
  setAutoAck(on: boolean): void;
  history: Res[];
  next(type: string, timeoutMs?: number): Promise<Res>;
  ack(r: Res): void;
  nack(r: Res, message: string): void;
  /** Names a response carries, and (Delta) names it removes. */
  names(r: Res): string[];
  removed(r: Res): string[];
  /** The /catalog route's cluster in a route response (undefined when the response lacks edge/web). */
  catalogCluster(r: Res): string | undefined;
  cancel(): void;
  /** The underlying stream (for the fixture's fence). */
  raw: Parameters<typeof fence>[1];
}

function connect(sb: Signalbox, protocol: 'sotw' | 'delta', id: string): Client {
  const opts: StreamOptions = { node: gatewayNode(id, 'edge'), follow: true, autoAck: true };
  if (protocol === 'sotw') {
    const s = sb.ads.sotw(opts);
    s.request(CDS);
    s.request(LDS);
    return {
      setAutoAck: (on) => s.setAutoAck(on),
      history: s.history,
      next: (t, ms) => s.nextOf(t, ms),
      ack: (r) => s.ack(r as DiscoveryResponse),
      nack: (r, m) => s.nack(r as DiscoveryResponse, m),
      names: (r) => [...byName(r as DiscoveryResponse).keys()].sort(),
      removed: () => [],
      catalogCluster: (r) => {
        const rc = byName(r as DiscoveryResponse).get('edge/web');
        return rc ? routeByPrefix(rc, '/catalog')?.route?.cluster : undefined;
      },
      cancel: () => s.cancel(),
      raw: s,
    };
  }
  const s = sb.ads.delta(opts);
  s.subscribe(CDS, []);
  s.subscribe(LDS, []);
  return {
    setAutoAck: (on) => s.setAutoAck(on),
    history: s.history,
    next: (t, ms) => s.nextOf(t, ms),
    ack: (r) => s.ack(r as DeltaDiscoveryResponse),
    nack: (r, m) => s.nack(r as DeltaDiscoveryResponse, m),
    names: (r) => (r as DeltaDiscoveryResponse).resources.map((x) => x.name).sort(),
    removed: (r) => [...(r as DeltaDiscoveryResponse).removed_resources].sort(),
    catalogCluster: (r) => {
      const rc = deltaByName(r as DeltaDiscoveryResponse).get('edge/web');
      return rc ? routeByPrefix(rc, '/catalog')?.route?.cluster : undefined;
    },
    cancel: () => s.cancel(),
    raw: s,
  };
}

interface ProxyWait {
  state: string;
  waitingForClusters?: { types: string[]; clusters: string[]; count: number };
  warmWaits: number;
  warmWaitTimeouts: number;
  drainingClusters: number;
}

for (const protocol of ['sotw', 'delta'] as const) {
  describe(`routes wait for warm clusters (${protocol})`, () => {
    let sb: Signalbox;
    let n = 0;
    before(async () => {
      sb = await startSignalbox(
        { 'services.yaml': SERVICES, 'catalog3.yaml': CATALOG3, 'policies.yaml': policies() },
        { 'warm-wait-ms': String(WARM_WAIT_MS), 'cluster-drain-ms': String(DRAIN_MS) },
      );
    });
    after(async () => sb?.stop());

    /** A synced client on the fixture's first policies, answering nothing from now on. */
    async function quietClient(): Promise<{ c: Client; id: string }> {
      await sb.writePolicy('policies.yaml', policies({ comment: `reset ${++n}` }));
      const id = `${protocol}-warm-${n}`;
      const c = connect(sb, protocol, id);
      await waitSynced(sb, id);
      await fence(sb, c.raw, id);
      c.setAutoAck(false);
      return { c, id };
    }

    const proxy = async (id: string) => (await sb.proxy(id)) as unknown as ProxyWait & { types: Record<string, { pushes: number }> };

    test('a route change to a new cluster goes only after the proxy ACKed the cluster and its endpoints', async () => {
      const { c, id } = await quietClient();
      const mark = c.history.length;
      await sb.writePolicy('policies.yaml', policies({ catalogBackend: 'catalog2', comment: `move ${n}` }));
      const cds = await c.next(CDS);
      assert.ok(c.names(cds).includes('catalog2'), `the new cluster is pushed first: ${c.names(cds)}`);
      await delay(200);
      assert.deepEqual(
        c.history
          .slice(mark)
          .filter((r) => r.type_url === RDS)
          .map((r) => c.names(r)),
        [],
        `no route change while the cluster is not ACKed (${c.history
          .slice(mark)
          .map((r) => `${r.type_url.split('.').pop()} ${c.names(r)}`)
          .join('; ')})`,
      );
      const waiting = await proxy(id);
      assert.equal(waiting.state, 'PENDING');
      assert.deepEqual(waiting.waitingForClusters?.clusters, ['catalog2']);
      assert.deepEqual(waiting.waitingForClusters?.types, ['route']);

      c.ack(cds); // the client follows with an EDS request naming catalog2
      const eds = await c.next(EDS);
      assert.ok(c.names(eds).includes('catalog2'));
      await delay(200);
      assert.deepEqual(
        c.history
          .slice(mark)
          .filter((r) => r.type_url === RDS)
          .map((r) => c.names(r)),
        [],
        'no route change while its endpoints are not ACKed',
      );

      c.ack(eds);
      const rds = await c.next(RDS);
      assert.equal(c.catalogCluster(rds), 'catalog2', 'the route change arrives once the cluster is warm');
      const after = await proxy(id);
      assert.equal(after.waitingForClusters, undefined);
      assert.equal(after.warmWaits, 1);
      assert.equal(after.warmWaitTimeouts, 0);
      c.cancel();
    });

    test('the cluster the routes left goes only after the route ACK and the drain period', async () => {
      const { c, id } = await quietClient();
      await sb.writePolicy('policies.yaml', policies({ catalogBackend: 'catalog2', comment: `drain ${n}` }));
      const cds = await c.next(CDS);
      c.ack(cds);
      const eds = await c.next(EDS);
      c.ack(eds);
      const rds = await c.next(RDS);
      const mark = c.history.length;
      c.ack(rds);
      const ackedAt = Date.now();
      await waitFor(async () => (await proxy(id)).drainingClusters === 1, { what: 'catalog draining', timeoutMs: 2000 });
      assert.deepEqual(
        c.history.slice(mark).filter((r) => r.type_url === CDS),
        [],
        'catalog is still there right after the route ACK',
      );
      const removal = await c.next(CDS, DRAIN_MS + 3000);
      const waited = Date.now() - ackedAt;
      if (protocol === 'sotw') assert.ok(!c.names(removal).includes('catalog') && c.names(removal).includes('catalog2'), `catalog gone: ${c.names(removal)}`);
      else assert.deepEqual(c.removed(removal), ['catalog']);
      assert.ok(waited >= DRAIN_MS - 50, `removed ${waited} ms after the route ACK, drain is ${DRAIN_MS} ms`);
      c.ack(removal);
      await waitFor(async () => (await proxy(id)).drainingClusters === 0, { what: 'no cluster draining', timeoutMs: 2000 });
      c.cancel();
    });

    test('a route change that names no new cluster is not held', async () => {
      const { c, id } = await quietClient();
      await sb.writePolicy('policies.yaml', policies({ ordersTimeout: '7s', comment: `timeout ${n}` }));
      const rds = await c.next(RDS, 1000);
      assert.equal(c.catalogCluster(rds), 'catalog');
      assert.equal((await proxy(id)).warmWaits, 0);
      c.cancel();
    });

    test('after a route change found every cluster warm, a change to a new cluster still waits for it', async () => {
      // The stream keeps "every cluster is warm" between pushes (a route-only change then costs
      // nothing per stream); a new cluster in the snapshot must make it look again.
      const { c, id } = await quietClient();
      c.setAutoAck(true);
      await sb.writePolicy('policies.yaml', policies({ ordersTimeout: '7s', comment: `warm first ${n}` }));
      const first = await c.next(RDS, 1000);
      assert.equal(c.catalogCluster(first), 'catalog');
      await fence(sb, c.raw, id);
      c.setAutoAck(false);
      const mark = c.history.length;
      await sb.writePolicy('policies.yaml', policies({ ordersTimeout: '7s', catalogBackend: 'catalog2', comment: `then move ${n}` }));
      const cds = await c.next(CDS);
      assert.ok(c.names(cds).includes('catalog2'));
      await delay(200);
      assert.deepEqual(
        c.history.slice(mark).filter((r) => r.type_url === RDS),
        [],
        'no route change while the new cluster is not warm',
      );
      assert.deepEqual((await proxy(id)).waitingForClusters?.clusters, ['catalog2']);
      c.ack(cds);
      const eds = await c.next(EDS);
      c.ack(eds);
      const rds = await c.next(RDS);
      assert.equal(c.catalogCluster(rds), 'catalog2');
      assert.equal((await proxy(id)).warmWaits, 1);
      c.cancel();
    });

    test('under churn the change held first goes once its own clusters are warm, then the newest', async () => {
      const { c, id } = await quietClient();
      await sb.writePolicy('policies.yaml', policies({ catalogBackend: 'catalog2', comment: `first ${n}` }));
      const cds1 = await c.next(CDS);
      c.ack(cds1);
      const eds1 = await c.next(EDS);
      assert.ok(c.names(eds1).includes('catalog2'));
      // A second edit before catalog2's endpoints are ACKed: the newest names catalog3, cold too.
      await sb.writePolicy('policies.yaml', policies({ catalogBackend: 'catalog3', comment: `second ${n}` }));
      const cds2 = await c.next(CDS);
      assert.ok(c.names(cds2).includes('catalog3'), `catalog3 pushed: ${c.names(cds2)}`);
      // SotW: the client's request for catalog3's endpoints carries eds1's nonce, which ACKs it.
      if (protocol === 'delta') c.ack(eds1);
      const rds1 = await c.next(RDS, WARM_WAIT_MS - 500);
      assert.equal(c.catalogCluster(rds1), 'catalog2', 'the first change goes as soon as catalog2 is warm, without waiting for catalog3');
      c.ack(rds1);
      c.ack(cds2);
      const eds2 = await c.next(EDS);
      assert.ok(c.names(eds2).includes('catalog3'));
      c.ack(eds2);
      const rds2 = await c.next(RDS, WARM_WAIT_MS - 500);
      assert.equal(c.catalogCluster(rds2), 'catalog3', 'then the newest, once catalog3 is warm');
      const p = await proxy(id);
      assert.equal(p.warmWaitTimeouts, 0);
      assert.equal(p.waitingForClusters, undefined);
      c.cancel();
    });

    // SotW only: a Delta ACK names its own response, never a stale one.
    if (protocol === 'sotw') {
      test('an ACK that comes after a newer endpoint response (a stale nonce) still warms what it ACKs', async () => {
        const { c, id } = await quietClient();
        await sb.writePolicy('policies.yaml', policies({ catalogBackend: 'catalog2', comment: `stale ${n}` }));
        const cds = await c.next(CDS);
        const eds1 = await c.next(EDS); // the client's request for catalog2's endpoints
        assert.ok(c.names(eds1).includes('catalog2'));
        // Another endpoint change goes out before the proxy answers eds1: eds1's nonce is now stale.
        const mark = c.history.length;
        await sb.writePolicy('services.yaml', SERVICES.replace('port: 9002', 'port: 9003'));
        try {
          await c.next(EDS);
          assert.deepEqual(
            c.history.slice(mark).filter((r) => r.type_url === RDS),
            [],
            'the route change is still held',
          );
          c.ack(cds);
          c.ack(eds1);
          const rds = await c.next(RDS, WARM_WAIT_MS - 700);
          assert.equal(c.catalogCluster(rds), 'catalog2', 'the stale ACK of eds1 says catalog2 has its endpoints');
          assert.equal((await proxy(id)).warmWaitTimeouts, 0);
        } finally {
          await sb.writePolicy('services.yaml', SERVICES);
          c.cancel();
        }
      });
    }

    test('a proxy that never ACKs the cluster gets the route change when the wait bound passes', async () => {
      const { c, id } = await quietClient();
      const before = await sb.metric('signalbox_xds_warm_wait_seconds_count', { outcome: 'timeout' });
      await sb.writePolicy('policies.yaml', policies({ catalogBackend: 'catalog2', comment: `silent ${n}` }));
      const start = Date.now();
      await c.next(CDS);
      const rds = await c.next(RDS, WARM_WAIT_MS + 3000);
      assert.ok(Date.now() - start >= WARM_WAIT_MS - 100, 'held until the bound');
      assert.equal(c.catalogCluster(rds), 'catalog2');
      const p = await proxy(id);
      assert.equal(p.warmWaitTimeouts, 1);
      assert.equal(p.waitingForClusters, undefined);
      assert.equal(await sb.metric('signalbox_xds_warm_wait_seconds_count', { outcome: 'timeout' }), before + 1);
      c.cancel();
    });

    test('a NACK of the clusters releases the held route change at once', async () => {
      const { c, id } = await quietClient();
      await sb.writePolicy('policies.yaml', policies({ catalogBackend: 'catalog2', comment: `refused ${n}` }));
      const cds = await c.next(CDS);
      c.nack(cds, 'cluster refused (test)');
      const rds = await c.next(RDS, WARM_WAIT_MS - 500);
      assert.equal(c.catalogCluster(rds), 'catalog2');
      assert.equal((await proxy(id)).warmWaitTimeouts, 0);
      c.cancel();
    });
  });
}
