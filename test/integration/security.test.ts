// The control plane's front door with a real Envoy: a gateway bootstrapped as `signalbox
// bootstrap` writes it talks to Signalbox through a byte relay that records every byte both ways.
// The gateway serves HTTPS with a key Signalbox sends it over SDS and carries real traffic; the
// relay never sees PEM, a key, or the token. Revoking the gateway's token (the CLI) closes its
// stream within about a second, and Envoy keeps serving the configuration it has.
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { mkdirSync, mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import https from 'node:https';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { CertificateAuthority } from '../../src/ca/ca.js';
import { bootstrapYaml } from '../../src/cli/bootstrap.js';
import { bootstrapTls } from '../helpers/credentials.js';
import { repoRoot, startEnvoy, type Envoy } from '../helpers/envoy.js';
import { freePort, httpGet, waitFor } from '../helpers/net.js';
import { startSignalbox, type SignalboxProcess } from '../helpers/signalbox.js';
import { startUpstream, type Upstream } from '../helpers/upstream.js';

/** A TCP relay to `target` that keeps every byte it forwards, both ways. */
async function startRelay(target: number): Promise<{ port: number; bytes(): Buffer; close(): Promise<void> }> {
  const chunks: Buffer[] = [];
  const sockets = new Set<net.Socket>();
  const server = net.createServer((client) => {
    const upstream = net.connect(target, '127.0.0.1');
    for (const s of [client, upstream]) {
      sockets.add(s);
      s.on('error', () => undefined);
      s.on('close', () => sockets.delete(s));
    }
    client.on('data', (b: Buffer) => {
      chunks.push(Buffer.from(b));
      upstream.write(b);
    });
    upstream.on('data', (b: Buffer) => {
      chunks.push(Buffer.from(b));
      client.write(b);
    });
    client.on('close', () => upstream.destroy());
    upstream.on('close', () => client.destroy());
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  return {
    port: (server.address() as net.AddressInfo).port,
    bytes: () => Buffer.concat(chunks),
    close: async () => {
      for (const s of sockets) s.destroy();
      await new Promise<void>((r) => server.close(() => r()));
    },
  };
}

function httpsGet(port: number, ca: string): Promise<{ status: number; body: string }> {
  return new Promise((resolve, reject) => {
    const req = https.get(
      { host: '127.0.0.1', port, path: '/items', servername: 'shop.example.com', headers: { host: 'shop.example.com' }, ca, agent: false },
      (res) => {
        let body = '';
        res.on('data', (c) => (body += c));
        res.on('end', () => resolve({ status: res.statusCode ?? 0, body }));
      },
    );
    req.on('error', reject);
    req.setTimeout(5_000, () => req.destroy(new Error('timeout')));
  });
}

describe('the xDS connection of a real Envoy (TLS, token certificate, relay, revocation)', () => {
  let sb: SignalboxProcess;
  let envoy: Envoy | undefined;
  let upstream: Upstream;
  let relay: Awaited<ReturnType<typeof startRelay>>;
  let tls: Awaited<ReturnType<typeof bootstrapTls>>;
  let ports: { http: number; https: number };
  let shopCertPem: string;
  let shopKeyPem: string;

  before(async () => {
    upstream = await startUpstream('shop');
    ports = { http: await freePort(), https: await freePort() };
    const dir = mkdtempSync(path.join(os.tmpdir(), 'sb-sec-'));
    mkdirSync(path.join(dir, 'certs'));
    // The gateway's own HTTPS certificate, in files next to the policies.
    const webCa = await CertificateAuthority.open({ dataDir: mkdtempSync(path.join(os.tmpdir(), 'sb-web-ca-')), trustDomain: 'web' });
    const web = await webCa.issueServer({ spiffeId: 'spiffe://web/shop', dns: ['shop.example.com'], ips: [], ttlMs: 3_600_000 });
    shopCertPem = web.certificatePem;
    shopKeyPem = web.privateKeyPem;
    writeFileSync(path.join(dir, 'certs', 'shop.crt'), `${web.certificatePem.trim()}\n${webCa.certificatePem.trim()}\n`);
    writeFileSync(path.join(dir, 'certs', 'shop.key'), web.privateKeyPem, { mode: 0o600 });
    writeFileSync(path.join(dir, 'ca.pem'), webCa.certificatePem);
    writeFileSync(
      path.join(dir, 'policies.yaml'),
      `apiVersion: signalbox.dev/v1alpha1
kind: Service
metadata: { name: shop }
spec:
  port: 8080
  endpoints: [ { address: 127.0.0.1, port: ${upstream.port} } ]
---
apiVersion: signalbox.dev/v1alpha1
kind: Gateway
metadata: { name: public }
spec:
  listeners:
    - { name: http, port: ${ports.http}, protocol: HTTP, hostnames: ["*"] }
    - { name: https, port: ${ports.https}, protocol: HTTPS, hostnames: ["shop.example.com"], tls: { certificateFile: certs/shop.crt, privateKeyFile: certs/shop.key } }
---
apiVersion: signalbox.dev/v1alpha1
kind: HTTPRoute
metadata: { name: shop }
spec:
  parentRefs: [ { kind: Gateway, name: public } ]
  rules:
    - backendRefs: [ { name: shop } ]
`,
    );
    sb = await startSignalbox({ policies: dir });
    relay = await startRelay(sb.xdsPort);
    tls = await bootstrapTls(sb.dataDir, 'gateway/public');
    envoy = await startEnvoy({
      name: 'relayed-gw',
      // Delta xDS, through the relay.
      bootstrapYaml: (adminPort) => bootstrapYaml({ gateway: 'public', id: 'relayed-gw', delta: true, tls, xdsAddress: `127.0.0.1:${relay.port}`, adminPort }),
    });
    await waitFor(async () => (await httpsGet(ports.https, readFileSync(path.join(dir, 'ca.pem'), 'utf8')).catch(() => ({ status: 0 }))).status === 200, {
      what: 'HTTPS through the gateway',
      timeoutMs: 20_000,
    });
  });

  after(async () => {
    await envoy?.stop();
    await relay?.close();
    await sb?.kill();
    await upstream?.close();
  });

  test('real traffic flows over HTTPS with the key that crossed the relay, and the relay saw no PEM, key or token', async (t) => {
    const r = await httpGet(`http://127.0.0.1:${ports.http}/plain`);
    assert.equal(r.status, 200);
    assert.equal(r.json().upstream, 'shop');
    const dump = await envoy!.admin('/config_dump?include_eds');
    assert.match(dump, /dynamic_active_secrets|signalbox/);
    const seen = relay.bytes();
    assert.ok(seen.length > 4_000, `the relay carried the configuration (${seen.length} bytes)`);
    t.diagnostic(`relay carried ${seen.length} bytes`);
    const text = seen.toString('latin1');
    const keyBody = shopKeyPem
      .split('\n')
      .filter((l) => l && !l.startsWith('-----'))
      .join('');
    const certBody = shopCertPem
      .split('\n')
      .filter((l) => l && !l.startsWith('-----'))
      .join('');
    for (const [what, needle] of [
      ['PEM armour', '-----BEGIN'],
      ['a private key header', 'PRIVATE KEY'],
      ['the gateway key (base64)', keyBody.slice(20, 80)],
      ['the gateway certificate (base64)', certBody.slice(40, 100)],
      ['the token id', tls.id],
      ['the token URN', 'urn:signalbox:token'],
      ['a policy name', 'signalbox.gateway'],
    ] as const) {
      assert.ok(!text.includes(needle), `the relay saw ${what}`);
    }
    // Nor does Envoy's own config dump show the token: its bootstrap names files.
    assert.ok(!dump.includes('BEGIN PRIVATE KEY') && !dump.includes('x-signalbox-token'), 'no key or token in config_dump');
    assert.match(dump, /token\.crt/); // the bootstrap names files; Envoy redacts even the key file name
  });

  test('`signalbox token revoke` closes the gateway stream within about a second; Envoy keeps its last configuration', async (t) => {
    const connected = async () => Number(/control_plane\.connected_state: (\d+)/.exec(await envoy!.admin('/stats?filter=control_plane.connected_state'))?.[1]);
    assert.equal(await connected(), 1);
    const t0 = Date.now();
    execFileSync(process.execPath, [path.join(repoRoot(), 'bin/signalbox.js'), 'token', 'revoke', tls.id, '--data-dir', sb.dataDir], { stdio: 'pipe' });
    await waitFor(async () => !((await sb.admin('/api/proxies')).proxies as { id: string }[]).some((p) => p.id === 'relayed-gw'), {
      what: 'the revoked proxy gone',
      timeoutMs: 5_000,
      intervalMs: 50,
    });
    const took = Date.now() - t0;
    assert.ok(took < 2_000, `stream closed ${took} ms after the revocation`);
    t.diagnostic(`stream gone from /api/proxies ${took} ms after \`token revoke\` started (includes the CLI's own start)`);
    // The child's log reaches us through a pipe, possibly after the API already answers.
    await waitFor(() => new RegExp(`token ${tls.id} was revoked`).test(sb.logs()), { what: 'the revocation logged', timeoutMs: 5_000 });
    // Envoy's reconnects are refused from now on, and it serves what it had.
    await waitFor(async () => (await connected()) === 0, { what: 'Envoy disconnected', timeoutMs: 5_000 });
    const r = await httpGet(`http://127.0.0.1:${ports.http}/after`);
    assert.equal(r.status, 200);
    await waitFor(() => /xDS stream refused.*revoked/.test(sb.logs()), { what: 'a reconnect refused', timeoutMs: 10_000 });
  });
});
