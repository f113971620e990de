// The last good configuration survives a restart, with real Envoys and real traffic: a gateway
// (HTTP, and HTTPS with a certificate from files) serves requests through Signalbox; an invalid
// file lands in the policy directory; `serve` is killed and restarted while requests keep flowing.
// Nothing fails, the restarted process serves the same resources under the same versions and says
// it is degraded (/readyz, /api/status, the metric, /api/errors), a sidecar started only after the
// restart gets its configuration and carries traffic, and fixing the file clears the state.
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { mkdirSync, mkdtempSync, readFileSync, rmSync, statSync, unlinkSync, writeFileSync } from 'node:fs';
import https from 'node:https';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { promisify } from 'node:util';
import { exportJWK, generateKeyPair } from 'jose';
import { chromium, type BrowserContext } from 'playwright-core';
import { LAST_GOOD_FILE } from '../../src/controller/last-good.js';
import { repoRoot, startEnvoy, type Envoy } from '../helpers/envoy.js';
import { startMeshApp, type MeshApp } from '../helpers/mesh-app.js';
import { freePort, httpGet, waitFor } from '../helpers/net.js';
import { startSignalbox, type SignalboxProcess } from '../helpers/signalbox.js';
import { startUpstream, type Upstream } from '../helpers/upstream.js';

const CERTS = path.join(repoRoot(), 'test/golden/cases/https-gateway/certs');
const CERT = readFileSync(path.join(CERTS, 'shop.crt'), 'utf8'); // self-signed, for shop.example.com

function httpsGet(port: number, p: string): Promise<{ status: number; body: string }> {
  return new Promise((resolve, reject) => {
    const req = https.get(
      { host: '127.0.0.1', port, path: p, servername: 'shop.example.com', headers: { host: 'shop.example.com' }, ca: CERT, agent: false },
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

/** Debian's Chromium (scripts/provision-chromium.sh), as the dashboard test gets it; fails loudly. */
async function chromiumPath(): Promise<string> {
  if (process.env.SIGNALBOX_CHROMIUM_BIN) return process.env.SIGNALBOX_CHROMIUM_BIN;
  const { stdout } = await promisify(execFile)('bash', [path.join(repoRoot(), 'scripts/provision-chromium.sh')], { maxBuffer: 1 << 20 });
  return stdout.trim().split('\n').pop()!;
}

type Versions = Record<string, Record<string, string>>;
/** Every group's per-type versions, from /api/groups. */
async function groupVersions(sb: SignalboxProcess): Promise<Versions> {
  const { groups } = await sb.admin<{ groups: { group: string; types: Record<string, { version: string }> }[] }>('/api/groups');
  return Object.fromEntries(groups.map((g) => [g.group, Object.fromEntries(Object.entries(g.types).map(([t, v]) => [t, v.version]))]));
}

async function metric(sb: SignalboxProcess, name: string): Promise<number | undefined> {
  const m = new RegExp(`^${name} (\\S+)$`, 'm').exec(await sb.adminText('/metrics'));
  return m ? Number(m[1]) : undefined;
}

describe('the last good configuration survives a restart (real Envoy, real traffic)', () => {
  let dir: string;
  let sb: SignalboxProcess;
  let shop: Upstream;
  let orders: MeshApp;
  let gateway: Envoy;
  let sidecar: Envoy | undefined;
  let browser: BrowserContext | undefined;
  let profile: string | undefined;
  const ports = { http: 0, https: 0, inbound: 0, outbound: 0, authz: 0 };
  const http = (p: string) => httpGet(`http://127.0.0.1:${ports.http}${p}`);

  before(async () => {
    shop = await startUpstream('shop');
    for (const k of Object.keys(ports) as (keyof typeof ports)[]) ports[k] = await freePort();
    orders = await startMeshApp('orders', () => ports.outbound);
    const { publicKey } = await generateKeyPair('ES256');
    const jwk = { ...(await exportJWK(publicKey)), kid: 'k1', alg: 'ES256', use: 'sig' };
    dir = mkdtempSync(path.join(os.tmpdir(), 'sb-last-good-'));
    mkdirSync(path.join(dir, 'certs'));
    mkdirSync(path.join(dir, 'keys'));
    writeFileSync(path.join(dir, 'certs/shop.crt'), CERT);
    writeFileSync(path.join(dir, 'certs/shop.key'), readFileSync(path.join(CERTS, 'shop.key')), { mode: 0o600 });
    writeFileSync(path.join(dir, 'keys/jwks.json'), JSON.stringify({ keys: [jwk] }));
    writeFileSync(
      path.join(dir, 'policies.yaml'),
      `apiVersion: signalbox.dev/v1alpha1
kind: Service
metadata: { name: shop }
spec:
  port: 8080
  endpoints: [ { address: 127.0.0.1, port: ${shop.port} } ]
---
apiVersion: signalbox.dev/v1alpha1
kind: Service
metadata: { name: orders }
spec:
  port: 8080
  endpoints: [ { address: 127.0.0.1, port: ${orders.port}, sidecarPort: ${ports.inbound} } ]
---
apiVersion: signalbox.dev/v1alpha1
kind: Gateway
metadata: { name: edge }
spec:
  listeners:
    - { name: http, port: ${ports.http}, protocol: HTTP }
    - { name: https, port: ${ports.https}, protocol: HTTPS, hostnames: ["shop.example.com"], tls: { certificateFile: certs/shop.crt, privateKeyFile: certs/shop.key } }
---
apiVersion: signalbox.dev/v1alpha1
kind: HTTPRoute
metadata: { name: edge }
spec:
  parentRefs: [ { kind: Gateway, name: edge } ]
  rules:
    - name: orders
      matches: [ { path: { value: /orders } } ]
      backendRefs: [ { name: orders } ]
    - name: secure
      matches: [ { path: { value: /secure } } ]
      backendRefs: [ { name: shop } ]
    - name: shop
      backendRefs: [ { name: shop } ]
---
apiVersion: signalbox.dev/v1alpha1
kind: JWTPolicy
metadata: { name: secure }
spec:
  targetRef: { kind: HTTPRoute, name: edge, sectionName: secure }
  issuer: https://issuer.test/
  jwks: { file: keys/jwks.json }
`,
    );
    // A fixed ext_authz port: its address is in the gateway's configuration, and so in its versions.
    sb = await startSignalbox({ policies: dir, extraArgs: ['--authz-port', String(ports.authz)] });
    gateway = await startEnvoy({ name: 'last-good-gw', bootstrapYaml: await sb.bootstrap({ gateway: 'edge', id: 'edge-1' }) });
    await waitFor(async () => (await http('/shop/1')).status === 200 && (await httpsGet(ports.https, '/shop/1').catch(() => ({ status: 0 }))).status === 200, {
      what: 'HTTP and HTTPS through the gateway',
      timeoutMs: 20_000,
    });
    await waitFor(async () => (await sb.admin('/api/proxies/edge-1'))?.state === 'SYNCED', { what: 'the gateway synced', timeoutMs: 15_000 });
  });

  after(async () => {
    await browser?.close();
    if (profile) rmSync(profile, { recursive: true, force: true });
    await sidecar?.stop();
    await gateway?.stop();
    await sb?.kill();
    await shop?.close();
    await orders?.close();
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  test('an invalid file, then a restart under traffic: 0 failed requests, the same versions, degraded and saying why; a sidecar started after it is served; a fix clears it', async (t) => {
    // The JWT policy's versions follow the keys the authz service loaded: wait until they are in.
    await waitFor(async () => (await http('/secure/x')).status === 401, { what: 'the JWT route enforced', timeoutMs: 15_000 });
    const before = await groupVersions(sb);
    assert.deepEqual(Object.keys(before), ['gateway/edge']);
    const saved = path.join(sb.dataDir, LAST_GOOD_FILE);
    assert.equal(statSync(saved).mode & 0o777, 0o600, 'the saved configuration (it holds the gateway key) is owner-only');

    // The invalid file: the running process rejects it and keeps serving.
    writeFileSync(
      path.join(dir, 'broken.yaml'),
      'apiVersion: signalbox.dev/v1alpha1\nkind: HTTPRoute\nmetadata: { name: broken }\nspec:\n  parentRefs: [ { kind: Gateway, name: egde } ]\n  rules: [ { backendRefs: [ { name: shop } ] } ]\n',
    );
    await waitFor(async () => (await sb.admin('/api/errors')).errors.length > 0, { what: 'the invalid file rejected', timeoutMs: 10_000 });
    assert.equal(await metric(sb, 'signalbox_serving_last_good'), 1, 'the running process already serves the last good configuration');

    // Requests keep flowing (HTTP and HTTPS) while serve is killed and started again.
    let stop = false;
    let sent = 0;
    const failures: string[] = [];
    const loop = async (i: number) => {
      while (!stop) {
        sent++;
        const tls = i % 2 === 1;
        const r = await (tls ? httpsGet(ports.https, `/shop/${sent}`) : http(`/shop/${sent}`)).catch((e: Error) => ({ status: 0, body: e.message }));
        if (r.status !== 200) failures.push(`${tls ? 'https' : 'http'} ${r.status} ${r.body.slice(0, 120)}`);
      }
    };
    const loops = [0, 1, 2, 3].map(loop);
    await new Promise((r) => setTimeout(r, 500));
    const sentBeforeKill = sent;
    const t0 = performance.now();
    await sb.kill();
    const downMs = performance.now() - t0;
    await sb.restart(); // resolves once /readyz answers 200: without the saved configuration it never would
    const restartMs = performance.now() - t0;
    // Keep going while the gateway reconnects and is sent its configuration again.
    await waitFor(async () => (await sb.admin('/api/proxies/edge-1').catch(() => undefined))?.state === 'SYNCED', {
      what: 'the gateway reconnected and synced',
      timeoutMs: 15_000,
    });
    await new Promise((r) => setTimeout(r, 1_000));
    stop = true;
    await Promise.all(loops);
    t.diagnostic(
      `requests during the restart: ${sent} sent (${sentBeforeKill} before the kill), ${failures.length} failed; serve stopped in ${downMs.toFixed(0)} ms, ready again ${restartMs.toFixed(0)} ms after the kill`,
    );
    assert.deepEqual(failures, [], `${failures.length} of ${sent} requests failed`);
    assert.ok(sent > 100, `only ${sent} requests sent`);

    // Ready, but degraded, and it says why.
    const ready = await fetch(`http://127.0.0.1:${sb.adminPort}/readyz`);
    assert.equal(ready.status, 200);
    const body = (await ready.json()) as { ready: boolean; degraded?: boolean; reason?: string };
    assert.equal(body.degraded, true, JSON.stringify(body));
    assert.match(body.reason ?? '', /policy directory is invalid \(1 error\(s\).*last good configuration.*restored from .*last-good\.json at start/);
    assert.equal(await metric(sb, 'signalbox_serving_last_good'), 1);
    const errors = (await sb.admin('/api/errors')).errors as { file: string; text: string }[];
    assert.equal(errors.length, 1, JSON.stringify(errors));
    assert.ok(errors[0]!.file.endsWith('broken.yaml'), errors[0]!.text);
    assert.match(errors[0]!.text, /spec.parentRefs\[0\].name: unknown Gateway "egde" \(did you mean "edge"\?\)/);
    const status = await sb.admin('/api/status');
    assert.equal(status.config.servingLastGood, true);
    assert.equal(status.config.errors, 1);
    assert.ok(Date.parse(status.config.since) > Date.now() - 60_000);
    assert.match(status.warnings.join('\n'), /proxies get the last good configuration/);

    // The dashboard says it too: a line in the policy configuration card and the warning banner.
    profile = mkdtempSync(path.join(os.tmpdir(), 'sb-last-good-chromium-'));
    browser = await chromium.launchPersistentContext(profile, {
      executablePath: await chromiumPath(),
      headless: true,
      args: [
        '--headless',
        '--no-sandbox',
        '--disable-gpu',
        '--no-first-run',
        '--disable-background-networking',
        '--disable-component-update',
        '--disable-sync',
      ],
      timeout: 60_000,
    });
    const page = browser.pages()[0] ?? (await browser.newPage());
    await page.goto(`http://127.0.0.1:${sb.adminPort}/`);
    await page.waitForSelector('#card-config-sub[data-serving-last-good="true"]', { timeout: 15_000 });
    assert.match((await page.textContent('#card-config-sub')) ?? '', /^serving the last good configuration \(applied .+, restored at start\)$/);
    assert.match((await page.textContent('#card-config')) ?? '', /1 error/);
    assert.match((await page.textContent('#warnings')) ?? '', /the policy directory is invalid .*proxies get the last good configuration/);

    // The same resources under the same versions (the JWT route's once the authz service has read
    // its keys again, which takes a moment after the start).
    let after = await groupVersions(sb);
    const equalAtOnce = JSON.stringify(after) === JSON.stringify(before);
    await waitFor(
      async () => {
        after = await groupVersions(sb);
        return JSON.stringify(after) === JSON.stringify(before);
      },
      { what: 'versions equal to those before the restart', timeoutMs: 10_000 },
    ).catch(() => undefined);
    assert.deepEqual(after, before);
    t.diagnostic(`versions after the restart equal those before: ${equalAtOnce ? 'at the first look' : 'once the JWKS file was read again'}`);
    assert.equal((await sb.admin('/api/proxies/edge-1')).state, 'SYNCED');
    assert.equal((await http('/secure/x')).status, 401, 'the JWT policy is enforced by the restarted authz service');

    // A sidecar that starts now gets its configuration from the restored model and carries traffic.
    sidecar = await startEnvoy({
      name: 'orders-sidecar',
      bootstrapYaml: await sb.bootstrap({
        sidecar: { service: 'orders', instance: 'orders-1', appPort: orders.port, inboundPort: ports.inbound, outboundPort: ports.outbound },
      }),
    });
    await waitFor(async () => (await http('/orders/42')).status === 200, { what: 'gateway -> orders sidecar (mTLS) -> app', timeoutMs: 20_000 });
    const viaSidecar = (await http('/orders/42')).json();
    assert.equal(viaSidecar.app, 'orders');
    assert.match(viaSidecar.xfcc, /URI=spiffe:\/\/signalbox\.local\/gateway\/edge/, 'the sidecar checked the gateway over mTLS');
    assert.equal((await sb.admin('/api/proxies/orders-1')).state, 'SYNCED');

    // The next valid edit replaces it.
    unlinkSync(path.join(dir, 'broken.yaml'));
    await waitFor(async () => (await sb.admin('/api/errors')).errors.length === 0, { what: 'the fix applied', timeoutMs: 10_000 });
    const healthy = (await (await fetch(`http://127.0.0.1:${sb.adminPort}/readyz`)).json()) as Record<string, unknown>;
    assert.deepEqual(healthy, { ready: true });
    assert.equal(await metric(sb, 'signalbox_serving_last_good'), 0);
    assert.equal((await sb.admin('/api/status')).config.servingLastGood, undefined);
    assert.equal((await http('/shop/after-fix')).status, 200);
    await page.waitForSelector('#card-config-sub[data-serving-last-good="false"]', { timeout: 15_000 });
    assert.match((await page.textContent('#card-config-sub')) ?? '', /^applied /);
    await page.waitForSelector('#warnings', { state: 'hidden', timeout: 15_000 });
  });
});
