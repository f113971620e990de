// A bad stream is closed alone, with a gRPC status that says why; the server keeps serving every
// other stream (including streams on the same HTTP/2 connection) and counts the refusals.
import * as grpc from '@grpc/grpc-js';
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { waitFor } from '../helpers/net.js';
import { encodeSotwRequest, gatewayNode, makeNode, type DeltaClientStream, type SotwClientStream } from '../helpers/xds-client.js';
import { CDS, EDS, LDS, namesOf, startSignalbox, waitSynced, type Signalbox } from './fixture.js';
import { signTokenSync } from '../helpers/credentials.js';

/** Bytes that are not a protobuf message of either request type. */
const GARBAGE = [Buffer.from('GET / HTTP/1.1\r\nHost: signalbox\r\n\r\n'), Buffer.alloc(11, 0xff)];

describe('xDS stream robustness', () => {
  let sb: Signalbox;
  let sotwSurvivor: SotwClientStream;
  let deltaSurvivor: DeltaClientStream;
  let probe = 0;

  before(async () => {
    sb = await startSignalbox();
    // Two healthy proxies on the same channel (same HTTP/2 connection) as every bad stream below.
    sotwSurvivor = sb.ads.sotw({ node: gatewayNode('survivor-sotw', 'edge'), follow: true, autoAck: true });
    sotwSurvivor.request(CDS);
    sotwSurvivor.request(LDS);
    deltaSurvivor = sb.ads.delta({ node: gatewayNode('survivor-delta', 'edge'), follow: true, autoAck: true });
    deltaSurvivor.subscribe(CDS, []);
    deltaSurvivor.subscribe(LDS, []);
    await waitSynced(sb, 'survivor-sotw');
    await waitSynced(sb, 'survivor-delta');
  });
  after(async () => {
    await sb.stop();
  });

  /** The healthy streams still get answers and are still listed. */
  async function survivorsServe(): Promise<void> {
    const n = ++probe;
    sotwSurvivor.request(EDS, ['orders', `probe-${n}`]);
    const r = await sotwSurvivor.next((x) => x.type_url === EDS && namesOf(x).join() === 'orders');
    assert.deepEqual(namesOf(r), ['orders']);
    deltaSurvivor.subscribe(EDS, [`probe-${n}`]);
    await deltaSurvivor.next((x) => x.type_url === EDS && x.removed_resources.includes(`probe-${n}`));
    assert.equal(sotwSurvivor.ended || deltaSurvivor.ended, false);
    const ids = (await sb.get<{ proxies: { id: string }[] }>('/api/proxies')).proxies.map((p) => p.id);
    assert.ok(ids.includes('survivor-sotw') && ids.includes('survivor-delta'), `survivors listed: ${ids}`);
  }

  async function errors(reason: string): Promise<number> {
    return sb.metric('signalbox_xds_stream_errors_total', { reason });
  }

  async function expectClosed(s: SotwClientStream | DeltaClientStream, code: grpc.status, details: RegExp): Promise<void> {
    const st = await s.closed();
    assert.equal(grpc.status[st.code], grpc.status[code], `status ${grpc.status[st.code]}: ${st.details}`);
    assert.match(st.details, details);
  }

  test('garbage bytes as the first request: INTERNAL, counted, only that stream closes (SotW and Delta)', async () => {
    const before = await errors('undecodable');
    for (const bytes of GARBAGE) {
      const s = sb.ads.sotw({ node: gatewayNode('garbage-sotw', 'edge') });
      s.sendRaw(bytes);
      await expectClosed(s, grpc.status.INTERNAL, /does not decode/);
      const d = sb.ads.delta({ node: gatewayNode('garbage-delta', 'edge') });
      d.sendRaw(bytes);
      await expectClosed(d, grpc.status.INTERNAL, /does not decode/);
    }
    assert.equal(await errors('undecodable'), before + 2 * GARBAGE.length);
    await survivorsServe();
  });

  test('garbage after a valid exchange closes the stream and removes the proxy', async () => {
    const id = 'garbage-later';
    const s = sb.ads.sotw({ node: gatewayNode(id, 'edge') });
    s.request(CDS);
    await s.nextOf(CDS);
    assert.ok(await sb.proxy(id));
    // A real request cut short: the length prefix promises more than there is.
    const whole = encodeSotwRequest({ type_url: EDS, resource_names: ['orders', 'catalog', 'status'] });
    s.sendRaw(Buffer.concat([whole.subarray(0, whole.length - 4), Buffer.alloc(11, 0xff)]));
    await expectClosed(s, grpc.status.INTERNAL, /does not decode/);
    await waitFor(async () => (await sb.proxy(id)) === undefined, { what: `${id} to leave /api/proxies` });
    await survivorsServe();
  });

  test('an unknown type_url, or none: INVALID_ARGUMENT, counted (SotW and Delta)', async () => {
    const unknown = await errors('unknown-type-url');
    const none = await errors('no-type-url');
    const s = sb.ads.sotw({ node: gatewayNode('unknown-type-sotw', 'edge') });
    s.request(CDS);
    await s.nextOf(CDS);
    s.request('type.googleapis.com/envoy.config.route.v3.ScopedRouteConfiguration', ['x']);
    await expectClosed(s, grpc.status.INVALID_ARGUMENT, /unsupported type_url "type\.googleapis\.com\/envoy\.config\.route\.v3\.ScopedRouteConfiguration"/);
    const d = sb.ads.delta({ node: gatewayNode('unknown-type-delta', 'edge') });
    d.subscribe('type.googleapis.com/google.protobuf.Empty', ['x']);
    await expectClosed(d, grpc.status.INVALID_ARGUMENT, /unsupported type_url/);
    const n = sb.ads.sotw({ node: gatewayNode('no-type-sotw', 'edge') });
    n.request('');
    await expectClosed(n, grpc.status.INVALID_ARGUMENT, /type_url/);
    assert.equal(await errors('unknown-type-url'), unknown + 2);
    assert.equal(await errors('no-type-url'), none + 1);
    assert.equal(await sb.proxy('unknown-type-sotw'), undefined, 'the refused proxy is no longer listed');
    await survivorsServe();
  });

  test('a first request without a node: INVALID_ARGUMENT, counted (SotW and Delta)', async () => {
    const before = await errors('bad-node');
    const s = sb.ads.sotw({ node: gatewayNode('unused', 'edge') });
    s.sendRaw({ type_url: CDS, resource_names: [] });
    await expectClosed(s, grpc.status.INVALID_ARGUMENT, /no node id/);
    const d = sb.ads.delta({ node: gatewayNode('unused', 'edge') });
    d.sendRaw({ type_url: CDS, resource_names_subscribe: [] });
    await expectClosed(d, grpc.status.INVALID_ARGUMENT, /no node id/);
    const e = sb.ads.sotw({ node: makeNode({ id: '', gateway: 'edge' }) });
    e.request(CDS);
    await expectClosed(e, grpc.status.INVALID_ARGUMENT, /no node id/);
    assert.equal(await errors('bad-node'), before + 3);
    await survivorsServe();
  });

  test('a node Signalbox cannot place is refused with INVALID_ARGUMENT that says why', async () => {
    const before = await errors('bad-node');
    const cases: [ReturnType<typeof makeNode>, RegExp][] = [
      [makeNode({ id: 'no-role', role: null, gateway: 'edge' }), /no signalbox\.role/],
      [makeNode({ id: 'odd-role', role: 'toaster', gateway: 'edge' }), /unknown signalbox\.role "toaster"/],
      [makeNode({ id: 'nameless-gateway', role: 'gateway', gateway: null }), /no signalbox\.gateway/],
    ];
    // Each presents a valid token, so what is refused is the node's shape.
    const metadata = new grpc.Metadata();
    metadata.set('x-signalbox-token', signTokenSync(sb.dataDir, 'gateway/edge'));
    for (const [node, why] of cases) {
      const s = sb.ads.sotw({ node, metadata });
      s.request(CDS);
      await expectClosed(s, grpc.status.INVALID_ARGUMENT, why);
      const d = sb.ads.delta({ node, metadata });
      d.subscribe(CDS, []);
      await expectClosed(d, grpc.status.INVALID_ARGUMENT, why);
      assert.equal(s.history.length + d.history.length, 0, 'a refused node is sent no configuration');
    }
    assert.equal(await errors('bad-node'), before + 2 * cases.length);
    const ids = (await sb.get<{ proxies: { id: string }[] }>('/api/proxies')).proxies.map((p) => p.id);
    for (const [node] of cases) assert.ok(!ids.includes(node.id!), `${node.id} not listed`);
    await survivorsServe();
  });

  test('a stream whose later request names another node id is refused (SotW and Delta)', async () => {
    const before = await errors('node-changed');
    const s = sb.ads.sotw({ node: gatewayNode('first-identity', 'edge') });
    s.request(CDS);
    await s.nextOf(CDS);
    // The same node again is fine (set_node_on_first_message_only off).
    s.sendRaw({ node: gatewayNode('first-identity', 'edge'), type_url: LDS, resource_names: [] });
    await s.nextOf(LDS);
    s.sendRaw({ node: gatewayNode('second-identity', 'edge'), type_url: EDS, resource_names: ['orders'] });
    await expectClosed(s, grpc.status.INVALID_ARGUMENT, /"first-identity".*"second-identity"/);
    assert.equal(s.history.filter((r) => r.type_url === EDS).length, 0, 'the other node gets nothing');

    const d = sb.ads.delta({ node: gatewayNode('first-identity-d', 'edge') });
    d.subscribe(CDS, []);
    await d.nextOf(CDS);
    d.sendRaw({ node: gatewayNode('second-identity-d', 'edge'), type_url: EDS, resource_names_subscribe: ['orders'] });
    await expectClosed(d, grpc.status.INVALID_ARGUMENT, /second-identity-d/);
    assert.equal(await errors('node-changed'), before + 2);
    for (const id of ['first-identity', 'first-identity-d', 'second-identity', 'second-identity-d'])
      assert.equal(await sb.proxy(id), undefined, `${id} not listed`);
    await survivorsServe();
  });

  test('a client that disconnects mid-stream is forgotten; nothing else is disturbed', async () => {
    const gauge = () => sb.metric('signalbox_connected_proxies', { role: 'gateway' });
    const baseline = await gauge();
    const errorsBefore = await sb.metric('signalbox_xds_stream_errors_total');
    // 1: gone mid-stream, right after asking for more, while the server is answering. (It is
    // first seen by the server: a grpc-js client call cancelled in the tick it was created may
    // still open its HTTP/2 stream and never reset it, which no server could notice.)
    const early = sb.ads.sotw({ node: gatewayNode('gone-early', 'edge') });
    early.request(CDS);
    await waitFor(async () => (await sb.proxy('gone-early')) !== undefined, { what: 'gone-early to connect' });
    early.request(LDS);
    early.request(EDS, ['orders', 'catalog', 'status']);
    early.cancel();
    // 2: gone after it was fully configured (and with responses possibly in flight).
    const synced = sb.ads.delta({ node: gatewayNode('gone-synced', 'edge'), follow: true, autoAck: true });
    synced.subscribe(CDS, []);
    synced.subscribe(LDS, []);
    await waitSynced(sb, 'gone-synced');
    synced.subscribe(EDS, ['no-such-thing']);
    synced.cancel();
    assert.equal((await early.closed()).code, grpc.status.CANCELLED);
    assert.equal((await synced.closed()).code, grpc.status.CANCELLED);
    await waitFor(async () => (await sb.proxy('gone-early')) === undefined && (await sb.proxy('gone-synced')) === undefined, {
      what: 'the disconnected proxies to leave /api/proxies',
    });
    await waitFor(async () => (await gauge()) === baseline, { what: 'signalbox_connected_proxies to return to its baseline' });
    assert.equal(await sb.metric('signalbox_xds_stream_errors_total'), errorsBefore, 'a disconnect is not a protocol error');
    await survivorsServe();
  });

  test('a client that half-closes gets an OK status and is forgotten', async () => {
    const s = sb.ads.sotw({ node: gatewayNode('half-closer', 'edge') });
    s.request(CDS);
    await s.nextOf(CDS);
    s.end();
    const st = await s.closed();
    assert.equal(st.code, grpc.status.OK);
    await waitFor(async () => (await sb.proxy('half-closer')) === undefined, { what: 'half-closer to leave /api/proxies' });
    await survivorsServe();
  });

  test('many streams share one channel; each is served and accounted for', async () => {
    const n = 50;
    const streams = Array.from({ length: n }, (_, i) => {
      const s =
        i % 2 ? sb.ads.sotw({ node: gatewayNode(`fan-${i}`, 'edge'), autoAck: true }) : sb.ads.delta({ node: gatewayNode(`fan-${i}`, 'edge'), autoAck: true });
      if ('request' in s) s.request(CDS);
      else s.subscribe(CDS, []);
      return s;
    });
    await Promise.all(streams.map((s) => s.next((r) => r.type_url === CDS)));
    await waitFor(async () => (await sb.get<{ proxies: { id: string }[] }>('/api/proxies')).proxies.filter((p) => p.id.startsWith('fan-')).length === n, {
      what: `${n} proxies listed`,
    });
    for (const s of streams) s.cancel();
    await waitFor(async () => (await sb.get<{ proxies: { id: string }[] }>('/api/proxies')).proxies.filter((p) => p.id.startsWith('fan-')).length === 0, {
      what: 'all fan-out proxies gone',
    });
    await survivorsServe();
  });
});
