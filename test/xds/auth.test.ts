// The xDS port's front door, tried as an attacker on the same network would: plain text, TLS
// without a token, a token for someone else, a name no policy declares. Each gets zero resources
// and a gRPC status that says why, the refusal is counted, and the server keeps serving. Tokens
// live: a revoked or expired token closes its open stream. Each instance gets its own key.
import * as grpc from '@grpc/grpc-js';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { after, before, describe, test } from 'node:test';
import { issueToken, issueTokenCredentials, revokeToken } from '../../src/ca/tokens.js';
import { x509 } from '../../src/ca/x509.js';
import { bootstrapTls, signTokenSync, xdsCa } from '../helpers/credentials.js';
import { AdsClient, decodeAny, gatewayNode, makeNode, type DiscoveryResponse, type SotwClientStream, type DeltaClientStream } from '../helpers/xds-client.js';
import { CDS, LDS, SDS, startSignalbox, waitSynced, type Signalbox } from './fixture.js';
import { mkdtempSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';

const IDENTITY = 'signalbox/identity';

function sidecarNode(id: string, service: string) {
  return makeNode({
    id,
    role: 'sidecar',
    gateway: null,
    metadata: { 'signalbox.service': service, 'signalbox.instance': id, 'signalbox.app_port': '9001', 'signalbox.inbound_port': '21001' },
  });
}

function withToken(token: string): grpc.Metadata {
  const m = new grpc.Metadata();
  m.set('x-signalbox-token', token);
  return m;
}

/** The certificate in an identity Secret of a SotW response. */
function identityCert(r: DiscoveryResponse): x509.X509Certificate | undefined {
  for (const any of r.resources) {
    const s = decodeAny<{ name: string; tls_certificate?: { certificate_chain?: { inline_string?: string } } }>(any);
    const pem = s.name === IDENTITY ? s.tls_certificate?.certificate_chain?.inline_string : undefined;
    if (pem) return new x509.X509Certificate(pem);
  }
  return undefined;
}

describe('xDS authentication', () => {
  let sb: Signalbox;
  let survivor: SotwClientStream;

  before(async () => {
    sb = await startSignalbox();
    survivor = sb.ads.sotw({ node: gatewayNode('survivor', 'edge'), follow: true, autoAck: true });
    survivor.request(CDS);
    survivor.request(LDS);
    await waitSynced(sb, 'survivor');
  });
  after(async () => {
    await sb.stop();
  });

  const refusals = (reason: string) => sb.metric('signalbox_xds_stream_errors_total', { reason });

  /** The server still answers its healthy proxy and its admin API. */
  let probes = 0;
  async function stillServing(): Promise<void> {
    survivor.request(SDS, [IDENTITY, `probe-${++probes}`]); // a new name: the server must answer
    await survivor.next((r) => r.type_url === SDS);
    assert.equal(survivor.ended, false);
    assert.equal((await fetch(`http://127.0.0.1:${sb.server.adminPort}/healthz`)).status, 200);
  }

  async function refused(s: SotwClientStream | DeltaClientStream, code: grpc.status, details: RegExp): Promise<void> {
    const st = await s.closed();
    assert.equal(grpc.status[st.code], grpc.status[code], `${grpc.status[st.code]}: ${st.details}`);
    assert.match(st.details, details);
    assert.equal(s.history.length, 0, 'a refused stream receives zero resources');
  }

  test('a plain-text client gets no connection at all, let alone resources', async () => {
    const plain = new AdsClient(sb.target);
    try {
      const s = plain.sotw({ node: gatewayNode('plain', 'edge'), metadata: withToken(signTokenSync(sb.dataDir, 'gateway/edge')), timeoutMs: 3_000 });
      s.request(CDS);
      const st = await s.closed(5_000);
      assert.equal(grpc.status[st.code], 'UNAVAILABLE', st.details);
      assert.equal(s.history.length, 0);
    } finally {
      plain.close();
    }
    await stillServing();
  });

  test('TLS without a token: UNAUTHENTICATED, zero resources, counted (SotW and Delta)', async () => {
    const before = await refusals('unauthenticated');
    const anon = new AdsClient(sb.target, {}, { ca: xdsCa(sb.dataDir) });
    try {
      const s = anon.sotw({ node: gatewayNode('anon-sotw', 'edge') });
      s.request(CDS);
      await refused(s, grpc.status.UNAUTHENTICATED, /no token/);
      const d = anon.delta({ node: sidecarNode('anon-delta', 'orders') });
      d.subscribe(CDS, []);
      await refused(d, grpc.status.UNAUTHENTICATED, /no token/);
      // A token from another control plane's key is no token at all.
      const foreign = mkdtempSync(path.join(os.tmpdir(), 'sb-foreign-'));
      await issueToken(foreign, 'gateway/edge');
      const f = anon.sotw({ node: gatewayNode('foreign', 'edge'), metadata: withToken(signTokenSync(foreign, 'gateway/edge')) });
      f.request(CDS);
      await refused(f, grpc.status.UNAUTHENTICATED, /not signed by this control plane/);
    } finally {
      anon.close();
    }
    assert.equal(await refusals('unauthenticated'), before + 3);
    const groups = (await sb.get<{ groups: { group: string }[] }>('/api/groups')).groups.map((g) => g.group);
    assert.ok(!groups.some((g) => g.startsWith('sidecar/')), `no group compiled for a refused claim: ${groups}`);
    await stillServing();
  });

  test('a token for gateway A claiming gateway B, or for one service claiming another: PERMISSION_DENIED', async () => {
    await sb.writePolicy(
      'more.yaml',
      `apiVersion: signalbox.dev/v1alpha1
kind: Gateway
metadata: { name: other }
spec:
  listeners: [ { name: web, port: 9090, protocol: HTTP, hostnames: ["*"] } ]
`,
    );
    const before = await refusals('out-of-scope');
    const s = sb.ads.sotw({ node: gatewayNode('claims-other', 'other'), metadata: withToken(signTokenSync(sb.dataDir, 'gateway/edge')) });
    s.request(CDS);
    await refused(s, grpc.status.PERMISSION_DENIED, /token is for gateway\/edge, the node claims gateway\/other/);
    const d = sb.ads.delta({ node: sidecarNode('claims-catalog', 'catalog'), metadata: withToken(signTokenSync(sb.dataDir, 'service/orders')) });
    d.subscribe(CDS, []);
    await refused(d, grpc.status.PERMISSION_DENIED, /token is for service\/orders, the node claims service\/catalog/);
    assert.equal(await refusals('out-of-scope'), before + 2);
    await stillServing();
  });

  test('a name no policy declares, or a node that is too long, creates no group', async () => {
    const s = sb.ads.sotw({ node: gatewayNode('ghost', 'ghost') }); // a valid token for gateway/ghost
    s.request(CDS);
    await refused(s, grpc.status.NOT_FOUND, /Gateway "ghost", which no policy declares/);
    const huge = sb.ads.sotw({ node: gatewayNode('x'.repeat(100_000), 'edge') });
    huge.request(CDS);
    await refused(huge, grpc.status.INVALID_ARGUMENT, /1 to 256 printable characters/);
    const groups = (await sb.get<{ groups: { group: string }[] }>('/api/groups')).groups.map((g) => g.group);
    assert.ok(!groups.includes('gateway/ghost'), `${groups}`);
    await stillServing();
  });

  test('a token certificate authenticates as its subject, and only as its subject', async () => {
    const dir = mkdtempSync(path.join(os.tmpdir(), 'sb-cred-'));
    const c = await issueTokenCredentials(sb.dataDir, 'gateway/edge', '1h', dir);
    const client = new AdsClient(sb.target, {}, { ca: xdsCa(sb.dataDir), cert: { certChain: readFileSync(c.certFile), privateKey: readFileSync(c.keyFile) } });
    try {
      const ok = client.sotw({ node: gatewayNode('cert-edge', 'edge'), follow: true, autoAck: true });
      ok.request(CDS);
      ok.request(LDS);
      await waitSynced(sb, 'cert-edge');
      const p = await sb.proxy('cert-edge');
      assert.equal((p as unknown as { token: { id: string } }).token.id, c.id);
      const no = client.sotw({ node: gatewayNode('cert-other', 'other') });
      no.request(CDS);
      await refused(no, grpc.status.PERMISSION_DENIED, /token is for gateway\/edge/);
    } finally {
      client.close();
    }
    // The same files as a bootstrap names them (bootstrapTls) carry the same rules.
    const tls = await bootstrapTls(sb.dataDir, 'service/orders');
    assert.match(readFileSync(tls.certFile, 'utf8'), /BEGIN CERTIFICATE/);
  });

  test('two instances of one service hold different keys and serials under one SPIFFE ID', async () => {
    const a = sb.ads.sotw({ node: sidecarNode('orders-a', 'orders'), follow: true, autoAck: true });
    const b = sb.ads.delta({ node: sidecarNode('orders-b', 'orders'), follow: true, autoAck: true });
    a.request(SDS, [IDENTITY]);
    b.subscribe(SDS, [IDENTITY]);
    const ra = await a.next((r) => r.type_url === SDS && identityCert(r) !== undefined);
    const rb = await b.next((r) => r.type_url === SDS && r.resources.some((x) => x.name === IDENTITY));
    const ca = identityCert(ra)!;
    const pem = decodeAny<{ tls_certificate: { certificate_chain: { inline_string: string } } }>(rb.resources.find((x) => x.name === IDENTITY)!.resource!)
      .tls_certificate.certificate_chain.inline_string;
    const cb = new x509.X509Certificate(pem);
    assert.notEqual(ca.serialNumber, cb.serialNumber);
    assert.notEqual(Buffer.from(ca.publicKey.rawData).toString('hex'), Buffer.from(cb.publicKey.rawData).toString('hex'));
    const sans = (c: x509.X509Certificate) => c.getExtension(x509.SubjectAlternativeNameExtension)!.names.items.map((n) => n.value);
    assert.deepEqual(sans(ca), ['spiffe://signalbox.local/service/orders']);
    assert.deepEqual(sans(cb), sans(ca));
    // The admin API tells each instance's serial, never a key.
    const cert = (id: string) => sb.get<{ certificate?: { serial: string } }>(`/api/proxies/${id}`);
    assert.equal((await cert('orders-a')).certificate?.serial, ca.serialNumber);
    assert.equal((await cert('orders-b')).certificate?.serial, cb.serialNumber);
    const config = JSON.stringify(await sb.get(`/api/config/orders-a`));
    assert.ok(!config.includes('PRIVATE KEY'), 'config dumps carry no key');
    a.cancel();
    b.cancel();
  });

  test('revoking a token closes its open stream within about a second; nothing is sent after', async (t) => {
    const { token, id } = await issueToken(sb.dataDir, 'service/orders', '1h');
    const other = sb.ads.sotw({ node: sidecarNode('orders-kept', 'orders'), follow: true, autoAck: true });
    other.request(SDS, [IDENTITY]);
    await other.next((r) => r.type_url === SDS && identityCert(r) !== undefined);
    const s = sb.ads.sotw({ node: sidecarNode('orders-revoked', 'orders'), metadata: withToken(token), follow: true, autoAck: true });
    s.request(SDS, [IDENTITY]);
    await s.next((r) => r.type_url === SDS && identityCert(r) !== undefined);
    const received = s.history.length;
    const t0 = Date.now();
    await revokeToken(sb.dataDir, id);
    const st = await s.closed(5_000);
    const took = Date.now() - t0;
    assert.equal(grpc.status[st.code], 'UNAUTHENTICATED', st.details);
    assert.match(st.details, new RegExp(`token ${id} was revoked`));
    assert.ok(took < 1_500, `closed ${took} ms after the revocation`);
    t.diagnostic(`stream closed ${took} ms after the revocation was written`);
    assert.equal(s.history.length, received, 'nothing was sent after the revocation');
    assert.equal(other.ended, false, 'another instance of the same service is untouched');
    // Reconnecting with the revoked token gets nothing.
    const again = sb.ads.sotw({ node: sidecarNode('orders-revoked', 'orders'), metadata: withToken(token) });
    again.request(CDS);
    await refused(again, grpc.status.UNAUTHENTICATED, /revoked/);
    other.cancel();
  });

  test('the access log service on the same port takes reports only from authenticated proxies', async () => {
    const method = '/envoy.service.accesslog.v3.AccessLogService/StreamAccessLogs';
    const call = (metadata: grpc.Metadata) =>
      new Promise<grpc.ServiceError | null>((resolve) => {
        const c = sb.ads.client.makeClientStreamRequest(
          method,
          (b: Buffer) => b,
          (b: Buffer) => b,
          metadata,
          (err) => resolve(err),
        );
        c.end();
      });
    const anonymous = await call(new grpc.Metadata());
    assert.equal(anonymous?.code, grpc.status.UNAUTHENTICATED, anonymous?.details);
    assert.equal(await call(withToken(signTokenSync(sb.dataDir, 'gateway/edge'))), null, 'an authenticated report stream is taken');
  });

  test('an expired token closes its stream when it expires', async () => {
    const s = sb.ads.sotw({
      node: gatewayNode('short-lived', 'edge'),
      metadata: withToken(signTokenSync(sb.dataDir, 'gateway/edge', { ttlSeconds: 2 })),
      follow: true,
      autoAck: true,
    });
    s.request(CDS);
    s.request(LDS);
    await waitSynced(sb, 'short-lived');
    const st = await s.closed(5_000);
    assert.equal(grpc.status[st.code], 'UNAUTHENTICATED');
    assert.match(st.details, /expired/);
    await stillServing();
  });
});
