// The ext_authz service's gRPC endpoint, spoken to by an independent gRPC implementation
// (@grpc/grpc-js as the client) over TLS with a proxy certificate from the mesh CA: Check allowed
// and denied, unknown methods, undecodable requests. Then its front door: the certificate it
// presents, callers without a certificate or with one from another CA refused in the handshake,
// plain text refused, forged fast-path reports refused (the metric does not move), renewal.
import assert from 'node:assert/strict';
import { EventEmitter } from 'node:events';
import { mkdtempSync, rmSync } from 'node:fs';
import http2 from 'node:http2';
import os from 'node:os';
import path from 'node:path';
import type tls from 'node:tls';
import { after, before, describe, test } from 'node:test';
import * as grpc from '@grpc/grpc-js';
import prom from 'prom-client';
import { AuthzServer } from '../../src/authz/server.js';
import { CertificateAuthority, type IssuedCert } from '../../src/ca/ca.js';
import { ServerCertificate } from '../../src/ca/server-tls.js';
import { createLogger } from '../../src/observability/logger.js';
import { lookupType } from '../../src/xds/resources/protos.js';
import { makeKey, signToken, type TestKey } from '../helpers/jwks-server.js';

const ISS = 'https://issuer.test/';
const TRUST_DOMAIN = 'signalbox.local';
const AUTHZ_ID = 'spiffe://signalbox.local/signalbox/authz';
const PROXY_ID = 'spiffe://signalbox.local/gateway/g';
const silent = createLogger({ level: 'silent' });
const tmpDirs: string[] = [];
after(() => {
  for (const d of tmpDirs) rmSync(d, { recursive: true, force: true });
});

/** A mesh CA in a fresh data folder (as `signalbox serve` keeps it). */
async function meshCa(dataDir = mkdtempSync(path.join(os.tmpdir(), 'sb-authz-ca-'))): Promise<CertificateAuthority> {
  tmpDirs.push(dataDir);
  return CertificateAuthority.open({ dataDir, trustDomain: TRUST_DOMAIN });
}

interface H2Answer {
  status?: number;
  body?: string;
  error?: string;
  peer?: tls.PeerCertificate;
}

/**
 * One HTTP/2 request to the service: over TLS trusting `ca` (with `cert` as the client certificate
 * if given), or in plain text. Never throws: a refused handshake or a reset is `error`.
 */
function h2(
  port: number,
  opts: { ca?: string; cert?: IssuedCert; plain?: boolean; path: string; headers?: Record<string, string>; body?: string },
): Promise<H2Answer> {
  return new Promise((resolve) => {
    const session = opts.plain
      ? http2.connect(`http://127.0.0.1:${port}`)
      : http2.connect(`https://127.0.0.1:${port}`, { ca: opts.ca, ...(opts.cert ? { cert: opts.cert.certificatePem, key: opts.cert.privateKeyPem } : {}) });
    let settled = false;
    const done = (a: H2Answer) => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      session.destroy();
      resolve(a);
    };
    const timer = setTimeout(() => done({ error: 'no answer in 5s' }), 5_000);
    session.on('error', (e) => done({ error: e.message }));
    session.on('close', () => done({ error: 'session closed without an answer' }));
    const s = session.request({ ':method': 'POST', ':path': opts.path, ...opts.headers });
    s.on('error', (e) => done({ error: e.message }));
    s.on('close', () => done({ error: 'stream closed without an answer' }));
    s.on('response', (h) => {
      const peer = opts.plain ? undefined : (session.socket as tls.TLSSocket).getPeerCertificate();
      let body = '';
      s.setEncoding('utf8');
      s.on('data', (c: string) => (body += c));
      s.on('end', () => done({ status: Number(h[':status']), body, peer }));
    });
    s.end(opts.body ?? '');
  });
}

describe('ext_authz gRPC endpoint', () => {
  let server: AuthzServer;
  let port: number;
  let key: TestKey;
  let client: grpc.Client & Record<string, (...args: any[]) => unknown>;
  let Client: grpc.ServiceClientConstructor;
  let ca: CertificateAuthority;
  let serverCert: ServerCertificate;
  let proxy: IssuedCert;
  const registry = new prom.Registry();
  const req = lookupType('envoy.service.auth.v3.CheckRequest');
  const res = lookupType('envoy.service.auth.v3.CheckResponse');

  before(async () => {
    key = await makeKey('ES256', 'k');
    ca = await meshCa();
    serverCert = await ServerCertificate.start({ ca, trustDomain: TRUST_DOMAIN, server: 'authz', bindAddress: '127.0.0.1', sans: [], logger: silent });
    proxy = await ca.issue(PROXY_ID, 3_600_000);
    server = new AuthzServer({ logger: silent, registry });
    server.update({
      jwt: {
        policies: new Map([
          [
            'p',
            {
              name: 'p',
              target: { kind: 'Gateway', name: 'g' },
              issuer: ISS,
              audiences: [],
              algorithms: ['ES256'],
              clockSkewMs: 0,
              from: [{ header: 'authorization', prefix: 'Bearer ' }],
              require: [],
              forwardClaims: [{ claim: 'sub', header: 'x-user-id' }],
              optional: false,
              maxTokenBytes: 8192,
              jwks: { kind: 'inline', keys: [key.jwk] },
              unavailableStatus: 503,
              source: { file: 'p.yaml', doc: 1 },
            },
          ],
        ]),
        byTarget: new Map(),
      },
    });
    port = await server.listen('127.0.0.1:0', { certificate: serverCert, clientCaPem: ca.trustBundlePem });
    const method = (path: string) => ({
      path,
      requestStream: false,
      responseStream: false,
      requestSerialize: (v: object | Buffer) => (Buffer.isBuffer(v) ? v : Buffer.from(req.encode(req.fromObject(v)).finish())),
      requestDeserialize: (b: Buffer) => b,
      responseSerialize: (v: Buffer) => v,
      responseDeserialize: (b: Buffer) => res.toObject(res.decode(b), { enums: String, defaults: false }),
    });
    Client = grpc.makeGenericClientConstructor(
      { Check: method('/envoy.service.auth.v3.Authorization/Check'), Other: method('/envoy.service.auth.v3.Authorization/Other') },
      'Authorization',
    );
    client = new Client(
      `127.0.0.1:${port}`,
      grpc.credentials.createSsl(Buffer.from(ca.trustBundlePem), Buffer.from(proxy.privateKeyPem), Buffer.from(proxy.certificatePem)),
    ) as grpc.Client & Record<string, (...args: any[]) => unknown>;
  });

  after(async () => {
    client?.close();
    await server?.close();
    serverCert?.stop();
  });

  const call = (name: string, body: object | Buffer, via = client) =>
    new Promise<{ err: grpc.ServiceError | null; res?: Record<string, any> }>((resolve) =>
      (via as grpc.Client & Record<string, (...args: any[]) => unknown>)[name]!(body, (err: grpc.ServiceError | null, r: Record<string, any>) =>
        resolve({ err, res: r }),
      ),
    );

  const check = (headers: Record<string, string>) =>
    call('Check', { attributes: { request: { http: { headers, path: '/x', method: 'GET' } }, context_extensions: { 'signalbox.jwt.policies': 'p' } } });

  test('a valid token: OK with the forwarded claim', async () => {
    const { err, res: r } = await check({ authorization: `Bearer ${await signToken(key, { iss: ISS, sub: 'alice' })}`, 'x-user-id': 'root' });
    assert.equal(err, null);
    assert.equal(r!.status?.code ?? 0, 0);
    assert.deepEqual(r!.ok_response.headers, [{ header: { key: 'x-user-id', value: 'alice' }, append: { value: false } }]);
  });

  test('no token: denied with 401 and the challenge', async () => {
    const { err, res: r } = await check({});
    assert.equal(err, null);
    assert.equal(r!.status.code, 16);
    assert.equal(r!.denied_response.status.code, 'Unauthorized');
    assert.match(r!.denied_response.headers.find((h: any) => h.header.key === 'www-authenticate').header.value, /^Bearer error="invalid_token"/);
  });

  test('an unknown method is UNIMPLEMENTED; bytes that are not a CheckRequest are INVALID_ARGUMENT', async () => {
    const other = await call('Other', {});
    assert.equal(other.err?.code, grpc.status.UNIMPLEMENTED);
    const junk = await call('Check', Buffer.from([0xff, 0xff, 0xff, 0xff, 0x0f]));
    assert.equal(junk.err?.code, grpc.status.INVALID_ARGUMENT);
    // The server still answers afterwards.
    assert.equal((await check({})).err, null);
  });

  test('it presents the authz SPIFFE ID (what proxies verify), from the mesh CA; a proxy certificate gets fast-path answers', async () => {
    assert.equal(server.secure, true);
    const a = await h2(port, { ca: ca.trustBundlePem, cert: proxy, path: '/signalbox.jwt/check/p' });
    assert.equal(a.error, undefined);
    assert.equal(a.status, 200);
    assert.match(a.body!, /^deny 401\n/);
    assert.ok((a.peer!.subjectaltname ?? '').split(', ').includes(`URI:${AUTHZ_ID}`), a.peer!.subjectaltname);
    assert.equal(a.peer!.issuer.O, TRUST_DOMAIN);
  });

  test('a caller without a certificate fails the handshake: no Check answer, no fast-path answer', async () => {
    const anonymous = new Client(`127.0.0.1:${port}`, grpc.credentials.createSsl(Buffer.from(ca.trustBundlePem))) as grpc.Client &
      Record<string, (...args: any[]) => unknown>;
    try {
      const r = await call('Check', { attributes: { context_extensions: { 'signalbox.jwt.policies': 'p' } } }, anonymous);
      assert.equal(r.res, undefined);
      assert.equal(r.err?.code, grpc.status.UNAVAILABLE, String(r.err));
    } finally {
      anonymous.close();
    }
    const a = await h2(port, { ca: ca.trustBundlePem, path: '/signalbox.jwt/check/p' });
    assert.equal(a.status, undefined);
    assert.ok(a.error, 'refused');
  });

  test('a certificate from another CA is refused, even one naming a mesh identity', async () => {
    const otherCa = await meshCa();
    const forged = await otherCa.issue(PROXY_ID, 3_600_000);
    const a = await h2(port, { ca: ca.trustBundlePem, cert: forged, path: '/signalbox.jwt/check/p' });
    assert.equal(a.status, undefined);
    assert.ok(a.error, 'refused');
    const stranger = new Client(
      `127.0.0.1:${port}`,
      grpc.credentials.createSsl(Buffer.from(ca.trustBundlePem), Buffer.from(forged.privateKeyPem), Buffer.from(forged.certificatePem)),
    ) as grpc.Client & Record<string, (...args: any[]) => unknown>;
    try {
      const r = await call('Check', { attributes: { context_extensions: { 'signalbox.jwt.policies': 'p' } } }, stranger);
      assert.equal(r.err?.code, grpc.status.UNAVAILABLE, String(r.err));
    } finally {
      stranger.close();
    }
  });

  test('a trust bundle without a root is noticed (Node TLS cannot end a chain at an intermediate)', async () => {
    const { hasSelfSignedRoot } = await import('../../src/authz/server.js');
    assert.equal(hasSelfSignedRoot(ca.trustBundlePem), true);
    assert.equal(hasSelfSignedRoot(proxy.certificatePem), false, 'a certificate issued by another is no root');
    assert.equal(hasSelfSignedRoot(`${proxy.certificatePem}\n${ca.trustBundlePem}`), true);
    assert.equal(hasSelfSignedRoot('not PEM'), false);
  });

  test('plain text is not served', async () => {
    const a = await h2(port, { plain: true, path: '/signalbox.jwt/check/p' });
    assert.equal(a.status, undefined);
    assert.ok(a.error);
  });

  test("a forged fast-path report without a proxy certificate is refused and the metric does not move; a proxy's report counts", async () => {
    const allows = async () => Number(/signalbox_authz_fast_path_allows_total\{policy="p"\} (\d+)/.exec(await registry.metrics())?.[1] ?? 0);
    const before = await allows();
    const forged = { path: '/signalbox.jwt/report', headers: { 'x-signalbox-report-id': '00000000000000ff-1' }, body: 'p 1000000000\n' };
    const otherCa = await meshCa();
    for (const attempt of [
      await h2(port, { ...forged, plain: true }),
      await h2(port, { ...forged, ca: ca.trustBundlePem }),
      await h2(port, { ...forged, ca: ca.trustBundlePem, cert: await otherCa.issue(PROXY_ID, 3_600_000) }),
      // The older per-policy form too.
      await h2(port, { path: '/signalbox.jwt/report/p', headers: { 'x-signalbox-allows': '1000000000' }, ca: ca.trustBundlePem }),
    ]) {
      assert.equal(attempt.status, undefined, 'no answer');
      assert.ok(attempt.error);
    }
    assert.equal(await allows(), before, 'the forged reports counted nothing');
    // The same report from a proxy holding a mesh certificate is taken: the check above can fail.
    const real = await h2(port, { ...forged, body: 'p 5\n', ca: ca.trustBundlePem, cert: proxy });
    assert.equal(real.status, 200);
    assert.equal(await allows(), before + 5);
  });

  test('a renewed certificate is what new handshakes get; close() stops following it', async () => {
    const issue = () => ca.issueServer({ spiffeId: AUTHZ_ID, dns: ['localhost'], ips: ['127.0.0.1'], ttlMs: 3_600_000 });
    const first = await issue();
    const cert = Object.assign(new EventEmitter<{ changed: [] }>(), { certPem: first.certificatePem, keyPem: first.privateKeyPem });
    const renewing = new AuthzServer({ logger: silent });
    const p = await renewing.listen('127.0.0.1:0', { certificate: cert, clientCaPem: ca.trustBundlePem });
    try {
      const serial = async () => (await h2(p, { ca: ca.trustBundlePem, cert: proxy, path: '/nowhere' })).peer?.serialNumber;
      assert.equal((await serial())?.toLowerCase(), first.serial.toLowerCase());
      const next = await issue();
      cert.certPem = next.certificatePem;
      cert.keyPem = next.privateKeyPem;
      cert.emit('changed');
      assert.equal((await serial())?.toLowerCase(), next.serial.toLowerCase());
    } finally {
      await renewing.close();
    }
    assert.equal(cert.listenerCount('changed'), 0);
  });
});

describe('signalbox authz (standalone)', () => {
  test('loads and watches the policy directory, answers Check, serves metrics; a broken edit keeps the last good policies', async () => {
    const { startStandaloneAuthz } = await import('../../src/cli/authz.js');
    const { mkdtempSync, rmSync, writeFileSync } = await import('node:fs');
    const os = await import('node:os');
    const path = await import('node:path');
    const { waitFor } = await import('../helpers/net.js');
    const key = await makeKey('EdDSA', 'ed');
    const dir = mkdtempSync(path.join(os.tmpdir(), 'sb-authz-standalone-'));
    const policy = (issuer: string) => `apiVersion: signalbox.dev/v1alpha1
kind: Gateway
metadata: { name: gw }
spec: { listeners: [ { name: http, port: 8080, protocol: HTTP } ] }
---
apiVersion: signalbox.dev/v1alpha1
kind: JWTPolicy
metadata: { name: edge }
spec:
  targetRef: { kind: Gateway, name: gw }
  issuer: ${issuer}
  jwks: { inline: ${JSON.stringify({ keys: [key.jwk] })} }
`;
    writeFileSync(path.join(dir, 'p.yaml'), policy(ISS));
    // The control plane's data folder: the standalone service uses its mesh CA, never makes one.
    const dataDir = path.join(dir, 'data');
    const flags = { policies: dir, 'authz-address': '127.0.0.1', 'authz-port': '0', 'metrics-port': '0', 'watch-debounce-ms': '20', 'data-dir': dataDir };
    await assert.rejects(startStandaloneAuthz(flags, {}, silent), /no mesh CA in .*--insecure/);
    // --insecure reads no CA: a CA flag beside it is refused, not ignored.
    await assert.rejects(
      startStandaloneAuthz({ ...flags, insecure: true, state: 'consul', 'consul-addr': '127.0.0.1:1' }, {}, silent),
      /--insecure .* so --state consul would be ignored/,
    );
    const ca = await meshCa(dataDir);
    const proxy = await ca.issue(PROXY_ID, 3_600_000);
    const running = await startStandaloneAuthz(flags, {}, silent);
    try {
      assert.equal(running.tls, true);
      const check = async (token: string) =>
        running.server.check({
          attributes: {
            request: { http: { headers: { authorization: `Bearer ${token}` }, path: '/' } },
            context_extensions: { 'signalbox.jwt.policies': 'edge' },
          },
        });
      const good = await signToken(key, { iss: ISS });
      assert.equal((await check(good)).allow, true);
      const metrics = `http://127.0.0.1:${running.metricsPort}`;
      assert.equal((await fetch(`${metrics}/readyz`)).status, 200);
      assert.match(await (await fetch(`${metrics}/metrics`)).text(), /signalbox_authz_decisions_total\{policy="edge",result="allow",reason="ok"\} 1/);
      assert.equal(((await (await fetch(`${metrics}/api/authz`)).json()) as { policies: Record<string, { keys: number }> }).policies.edge!.keys, 1);
      // The compiled filter's reports: a report sent again under its id counts once; a name that is
      // not a policy counts as "unknown"; a report without a proper id is refused.
      // Over TLS with a proxy certificate only; the certificate it presents comes from the same CA.
      assert.ok((await h2(running.authzPort, { ca: ca.trustBundlePem, path: '/signalbox.jwt/report' })).error, 'no certificate, no report');
      const session = http2.connect(`https://127.0.0.1:${running.authzPort}`, { ca: ca.trustBundlePem, cert: proxy.certificatePem, key: proxy.privateKeyPem });
      const report = (id: string | undefined, body: string) =>
        new Promise<number>((resolve, reject) => {
          const s = session.request({ ':method': 'POST', ':path': '/signalbox.jwt/report', ...(id ? { 'x-signalbox-report-id': id } : {}) });
          s.on('response', (h) => resolve(Number(h[':status'])));
          s.on('error', reject);
          s.resume();
          s.end(body);
        });
      try {
        assert.equal(await report('0123456789abcdef-1', 'edge 3\nno%20such 2\n'), 200);
        assert.equal(await report('0123456789abcdef-1', 'edge 3\nno%20such 2\n'), 200);
        assert.equal(await report('0123456789abcdef-2', 'edge 4\n'), 200);
        assert.equal(await report(undefined, 'edge 100\n'), 400);
      } finally {
        session.close();
      }
      const text = await (await fetch(`${metrics}/metrics`)).text();
      assert.match(text, /signalbox_authz_fast_path_allows_total\{policy="edge"\} 7\n/);
      assert.match(text, /signalbox_authz_fast_path_allows_total\{policy="unknown"\} 2\n/);
      // A broken file changes nothing; a valid edit takes effect.
      writeFileSync(path.join(dir, 'p.yaml'), 'kind: JWTPolicy\nspec: [');
      assert.equal(await running.reload(), false);
      assert.equal((await check(good)).allow, true);
      writeFileSync(path.join(dir, 'p.yaml'), policy('https://other.test/'));
      await waitFor(async () => !(await check(good)).allow, { what: 'new issuer in force' });
      assert.equal((await check(await signToken(key, { iss: 'https://other.test/' }))).allow, true);
    } finally {
      await running.stop();
      rmSync(dir, { recursive: true, force: true });
    }
  });

  test('--insecure: plain text, a warning on stderr', async () => {
    const { startStandaloneAuthz } = await import('../../src/cli/authz.js');
    const dir = mkdtempSync(path.join(os.tmpdir(), 'sb-authz-insecure-'));
    tmpDirs.push(dir);
    const written: string[] = [];
    const write = process.stderr.write.bind(process.stderr);
    process.stderr.write = ((chunk: string | Uint8Array, ...rest: never[]) => {
      written.push(String(chunk));
      return write(chunk, ...rest);
    }) as typeof process.stderr.write;
    let running: Awaited<ReturnType<typeof startStandaloneAuthz>> | undefined;
    try {
      running = await startStandaloneAuthz(
        { policies: dir, 'authz-address': '127.0.0.1', 'authz-port': '0', 'metrics-port': 'off', 'data-dir': path.join(dir, 'none'), insecure: true },
        {},
        silent,
      );
    } finally {
      process.stderr.write = write;
    }
    try {
      assert.equal(running.tls, false);
      assert.ok(
        written.some((w) => /warning: .*--insecure.*plain text/.test(w)),
        written.join(''),
      );
      const a = await h2(running.authzPort, { plain: true, path: '/signalbox.jwt/check/none' });
      assert.equal(a.status, 200);
      // The environment twin, and a bad value.
      await assert.rejects(
        startStandaloneAuthz({ policies: dir, 'authz-port': '0', 'metrics-port': 'off' }, { SIGNALBOX_AUTHZ_INSECURE: 'yes' }, silent),
        /SIGNALBOX_AUTHZ_INSECURE must be "true" or "false"/,
      );
    } finally {
      await running.stop();
    }
  });
});
