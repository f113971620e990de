// Three replicas on one REAL Consul agent (`--state consul`), a REAL Envoy gateway and three REAL
// Envoy sidecars (web, orders, payments) spread across them: the gateway and web's sidecar on r1,
// orders' on r2, payments' on r3. Real HTTP traffic crosses replicas over mTLS (gateway -> orders,
// orders -> payments, web -> orders), each receiving sidecar seeing the caller's SPIFFE identity.
// Then `signalbox status` (the CLI, as a user runs it) against r2 alone lists all four proxies with
// the replica holding each, `/api/proxies?scope=all` on r3 agrees, and the dashboard served by r3
// shows the replicas panel and each proxy's replica in a real browser.
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { cpSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import { after, before, describe, test } from 'node:test';
import { issueTokenCredentials } from '../../src/ca/tokens.js';
import { bootstrapYaml, XDS_CA_FILE, type BootstrapOptions } from '../../src/cli/bootstrap.js';
import { openSharedState, type SharedState } from '../../src/state/index.js';
import { openBrowser, type Browser } from '../helpers/browser.js';
import { startConsul, type ConsulAgent } from '../helpers/consul.js';
import { repoRoot, startEnvoy, type Envoy } from '../helpers/envoy.js';
import { startMeshApp, type MeshApp } from '../helpers/mesh-app.js';
import { freePort, httpGet, waitFor } from '../helpers/net.js';
import { startSignalbox, type SignalboxProcess } from '../helpers/signalbox.js';

const run = promisify(execFile);

const SERVICES = ['web', 'orders', 'payments'] as const;
type Svc = (typeof SERVICES)[number];
/** Which replica (index) each proxy is bootstrapped to. */
const ON: Record<Svc | 'edge', number> = { edge: 0, web: 0, orders: 1, payments: 2 };
const PROXIES = { 'edge-1': 'r1', 'web-1': 'r1', 'orders-1': 'r2', 'payments-1': 'r3' };
/** Requests of each kind sent across replicas. */
const ROUNDS = 25;
const LIMIT = { timeout: 120_000 };

describe('three sidecars and a gateway across three replicas', () => {
  let consul: ConsulAgent;
  let shared: SharedState;
  const key = randomBytes(32).toString('base64');
  const replicas: SignalboxProcess[] = [];
  const temp: string[] = [];
  const envoys: Envoy[] = [];
  const apps = {} as Record<Svc, MeshApp>;
  const inbound = {} as Record<Svc, number>;
  const outbound = {} as Record<Svc, number>;
  let gwPort: number;
  let browser: Browser | undefined;

  const tmp = (prefix: string) => {
    const d = mkdtempSync(path.join(os.tmpdir(), prefix));
    temp.push(d);
    return d;
  };
  const gw = (p: string, headers: Record<string, string> = {}) => httpGet(`http://127.0.0.1:${gwPort}${p}`, { headers });
  const call = (host: string, p: string) => `/call?host=${host}&method=GET&path=${encodeURIComponent(p)}`;
  /** A bootstrap pinned to one replica, with a token from the shared state (as `signalbox bootstrap --state consul` makes it). */
  const boot = async (o: Omit<BootstrapOptions, 'tls' | 'adminPort' | 'xdsAddress'>, on: number, subject: string) => {
    const c = await issueTokenCredentials(shared, subject, '1h', tmp('replicas-mesh-proxy-'));
    const tls = { caFile: path.join(replicas[0]!.dataDir, XDS_CA_FILE), certFile: c.certFile, keyFile: c.keyFile };
    return (adminPort: number) => bootstrapYaml({ ...o, xdsAddress: `127.0.0.1:${replicas[on]!.xdsPort}`, tls, adminPort });
  };
  type Row = { id: string; replica?: string; state: string; types: Record<string, { sentVersion?: string; ackedVersion?: string }> };
  type All = { scope: string; self: string; leader: string; replicas: { id: string; alive: boolean; leader: boolean; proxies: number }[]; proxies: Row[] };
  const allOn = (i: number) => replicas[i]!.admin<All>('/api/proxies?scope=all');

  before(async () => {
    consul = await startConsul();
    gwPort = await freePort();
    for (const s of SERVICES) {
      inbound[s] = await freePort();
      outbound[s] = await freePort();
      apps[s] = await startMeshApp(s, () => outbound[s]);
    }
    const policies = tmp('replicas-mesh-policies-');
    writeFileSync(
      path.join(policies, 'mesh.yaml'),
      `apiVersion: signalbox.dev/v1alpha1
kind: Mesh
metadata: { name: default }
spec:
  trustDomain: signalbox.local
  mtls: { mode: strict }
---
${SERVICES.map(
  (s) => `apiVersion: signalbox.dev/v1alpha1
kind: Service
metadata: { name: ${s} }
spec:
  port: 8080
  endpoints: [ { address: 127.0.0.1, port: ${apps[s].port}, sidecarPort: ${inbound[s]} } ]
`,
).join('---\n')}---
apiVersion: signalbox.dev/v1alpha1
kind: Gateway
metadata: { name: edge }
spec:
  listeners: [ { name: http, port: ${gwPort}, protocol: HTTP } ]
---
apiVersion: signalbox.dev/v1alpha1
kind: HTTPRoute
metadata: { name: edge }
spec:
  parentRefs: [ { kind: Gateway, name: edge } ]
  rules:
    - matches: [ { headers: [ { name: x-to, type: Exact, value: web } ] } ]
      backendRefs: [ { name: web } ]
    - backendRefs: [ { name: orders } ]
`,
    );
    // Each replica has its own copy of the policy directory and its own data directory.
    for (let i = 1; i <= 3; i++) {
      const own = tmp(`replicas-mesh-r${i}-`);
      cpSync(policies, own, { recursive: true });
      replicas.push(
        await startSignalbox({
          policies: own,
          extraArgs: ['--state', 'consul', '--consul-addr', consul.httpAddr, '--state-prefix', 'vis', '--replica-id', `r${i}`],
          env: { SIGNALBOX_STATE_KEY: key },
        }),
      );
    }
    shared = await openSharedState({ consulAddr: consul.httpAddr, prefix: 'vis', env: { SIGNALBOX_STATE_KEY: key } });
    for (const s of SERVICES) {
      const yaml = await boot(
        { sidecar: { service: s, instance: `${s}-1`, appPort: apps[s].port, inboundPort: inbound[s], outboundPort: outbound[s] }, delta: s !== 'web' },
        ON[s],
        `service/${s}`,
      );
      envoys.push(await startEnvoy({ name: `${s}-sidecar`, bootstrapYaml: yaml }));
    }
    envoys.push(await startEnvoy({ name: 'edge', bootstrapYaml: await boot({ gateway: 'edge', id: 'edge-1', delta: true }, ON.edge, 'gateway/edge') }));
    await waitFor(async () => (await gw(call('payments', '/ready')).catch(() => ({ status: 0, body: '' }))).body.includes('"app":"payments"'), {
      what: 'gateway (r1) -> orders (r2) -> payments (r3)',
      timeoutMs: 40_000,
    });
  }, LIMIT);

  after(async () => {
    await browser?.close();
    for (const e of envoys) await e.stop();
    for (const r of replicas) await r.kill();
    shared?.close();
    for (const a of Object.values(apps)) await a.close();
    await consul?.stop();
    for (const d of [...temp, ...replicas.map((r) => r.dataDir)]) rmSync(d, { recursive: true, force: true });
  });

  test('each proxy is on the replica it was bootstrapped to', LIMIT, async () => {
    const on = async (i: number) => ((await replicas[i]!.admin<{ proxies: { id: string }[] }>('/api/proxies')).proxies ?? []).map((p) => p.id).sort();
    const want = (i: number) =>
      Object.entries(PROXIES)
        .filter(([, r]) => r === `r${i + 1}`)
        .map(([id]) => id)
        .sort();
    await waitFor(async () => (await Promise.all([0, 1, 2].map(on))).every((ids, i) => JSON.stringify(ids) === JSON.stringify(want(i))), {
      what: 'each proxy on its replica',
      timeoutMs: 20_000,
    }).catch(async (e: Error) => {
      throw new Error(`${e.message}: ${JSON.stringify(await Promise.all([0, 1, 2].map(on)))}`);
    });
  });

  test('real traffic across replicas over mTLS: gateway -> orders, orders -> payments, web -> orders', LIMIT, async (t) => {
    const seen = { gatewayToOrders: 0, ordersToPayments: 0, webToOrders: 0 };
    for (let i = 0; i < ROUNDS; i++) {
      // The gateway (r1) to orders (r2), and through orders' sidecar to payments (r3).
      const r = await gw(call('payments', `/charge/${i}`));
      assert.equal(r.status, 200, r.body);
      const orders = r.json();
      assert.equal(orders.app, 'orders');
      assert.match(orders.xfcc, /URI=spiffe:\/\/signalbox\.local\/gateway\/edge/, "orders' sidecar saw the gateway's identity");
      assert.match(orders.xfcc, /By=spiffe:\/\/signalbox\.local\/service\/orders/);
      seen.gatewayToOrders++;
      assert.equal(orders.status, 200, JSON.stringify(orders));
      assert.equal(orders.response.app, 'payments');
      assert.equal(orders.response.path, `/charge/${i}`);
      assert.match(orders.response.xfcc, /URI=spiffe:\/\/signalbox\.local\/service\/orders/, "payments' sidecar saw orders' identity");
      assert.match(orders.response.xfcc, /By=spiffe:\/\/signalbox\.local\/service\/payments/);
      seen.ordersToPayments++;
      // The gateway to web (both r1), and web's sidecar (r1) out to orders (r2).
      const w = await gw(call('orders', `/from-web/${i}`), { 'x-to': 'web' });
      assert.equal(w.status, 200, w.body);
      const web = w.json();
      assert.equal(web.app, 'web');
      assert.equal(web.status, 200, JSON.stringify(web));
      assert.equal(web.response.app, 'orders');
      assert.match(web.response.xfcc, /URI=spiffe:\/\/signalbox\.local\/service\/web/, "orders' sidecar saw web's identity");
      seen.webToOrders++;
    }
    t.diagnostic(
      `requests across replicas, all 200 over mTLS: gateway(r1)->orders(r2) ${seen.gatewayToOrders}, orders(r2)->payments(r3) ${seen.ordersToPayments}, web(r1)->orders(r2) ${seen.webToOrders}`,
    );
    // The receiving sidecars completed TLS handshakes on their inbound listeners.
    for (const s of ['orders', 'payments'] as const) {
      const e = envoys[SERVICES.indexOf(s)]!;
      const stats = await e.admin(`/stats?filter=^listener\\.0\\.0\\.0\\.0_${inbound[s]}\\.ssl\\.handshake$`);
      assert.ok(Number(/ssl\.handshake: (\d+)/.exec(stats)?.[1] ?? 0) >= 1, `${s} inbound TLS handshakes: ${stats}`);
    }
  });

  test('`signalbox status` against r2 alone lists all four proxies with the replica holding each', LIMIT, async (t) => {
    const status = () =>
      run(process.execPath, [path.join(repoRoot(), 'bin/signalbox.js'), 'status', '--admin', `http://127.0.0.1:${replicas[1]!.adminPort}`], {
        timeout: 15_000,
      }).then(
        (ok) => ({ code: 0, stdout: ok.stdout, stderr: ok.stderr }),
        (e: { code: number; stdout: string; stderr: string }) => ({ code: e.code, stdout: e.stdout, stderr: e.stderr }),
      );
    // Each replica publishes its proxies' status within about a second of a change.
    let out = { code: -1, stdout: '', stderr: '' };
    await waitFor(
      async () => {
        out = await status();
        return out.code === 0 && /^4 proxies: 4 synced/m.test(out.stdout);
      },
      { what: 'status to list four synced proxies', timeoutMs: 15_000, intervalMs: 250 },
    ).catch((e: Error) => {
      throw new Error(`${e.message}; last output (exit ${out.code}):\n${out.stdout}${out.stderr}`);
    });
    t.diagnostic(`signalbox status --admin (r2):\n${out.stdout}`);
    assert.match(out.stdout, /^PROXY\s+ROLE\s+REPLICA\s+XDS\s+CDS\s+EDS\s+LDS\s+RDS\s+SDS\s+STATUS\s+CERT EXPIRES$/m);
    const rows = out.stdout
      .split('\n')
      .slice(1)
      .filter((l) => /^\S+\s+(gateway|sidecar)\//.test(l))
      .map((l) => l.split(/\s+/));
    assert.deepEqual(
      rows.map((c) => [c[0], c[2], c.at(-2)]),
      Object.entries(PROXIES)
        .sort(([a], [b]) => (a < b ? -1 : 1))
        .map(([id, r]) => [id, r, 'SYNCED']),
      'every proxy, the replica holding it, synced',
    );
    // Each sidecar's own workload certificate (from the one shared CA), as the replica holding it issued it.
    for (const c of rows.filter((c) => c[1]!.startsWith('sidecar/'))) assert.match(c.at(-1)!, /^\d+(d\d+h|h\d+m|m\d+s)$/, `${c[0]} certificate expiry`);
    assert.match(out.stdout, /^replicas: r1 leader: 2 proxies, r2 \(asked\): 1 proxy, r3: 1 proxy$/m);
    assert.equal(out.stderr, '');
  });

  test('/api/proxies?scope=all on r3 agrees, with the versions each holder reports', LIMIT, async () => {
    const all = await allOn(2);
    assert.equal(all.scope, 'all');
    assert.equal(all.self, 'r3');
    assert.equal(all.leader, 'r1');
    assert.deepEqual(
      all.proxies.map((p) => [p.id, p.replica, p.state]),
      Object.entries(PROXIES)
        .sort(([a], [b]) => (a < b ? -1 : 1))
        .map(([id, r]) => [id, r, 'SYNCED']),
    );
    assert.deepEqual(
      all.replicas.map((r) => [r.id, r.alive, r.leader, r.proxies]),
      [
        ['r1', true, true, 2],
        ['r2', true, false, 1],
        ['r3', true, false, 1],
      ],
    );
    // What r3 shows of another replica's proxy is what that replica itself reports.
    for (const p of all.proxies) {
      const holder = replicas[Number(p.replica!.slice(1)) - 1]!;
      const own = await holder.admin<Row>(`/api/proxies/${p.id}`);
      for (const t of ['cluster', 'listener', 'route'])
        assert.equal(p.types[t]?.ackedVersion, own.types[t]?.ackedVersion, `${p.id} ${t} version as ${p.replica} reports it`);
    }
    // The same answer from r1 and r2: any replica answers for all.
    for (const i of [0, 1])
      assert.deepEqual(
        (await allOn(i)).proxies.map((p) => [p.id, p.replica]),
        all.proxies.map((p) => [p.id, p.replica]),
      );
    // Nothing secret in what the other replicas published: no key, nothing of the proxies' tokens
    // (r3's own proxy is its live status, which names its token's id as /api/proxies always has).
    const published = JSON.stringify(all.proxies.filter((p) => p.replica !== 'r3'));
    assert.match(published, /"edge-1"/);
    assert.doesNotMatch(published, /PRIVATE KEY|"token"|"serial"/);
  });

  test('the dashboard served by r3 shows the replicas and the replica of each proxy', LIMIT, async () => {
    browser = await openBrowser();
    const page = browser.page;
    await page.goto(`http://127.0.0.1:${replicas[2]!.adminPort}/`);
    await page.waitForSelector('#replicas:not([hidden]) tr[data-replica="r3"]', { timeout: 15_000 });
    const replicaCells = await page.$$eval('#replicas-table tbody tr', (trs) =>
      trs.map((tr) => [
        tr.getAttribute('data-replica'),
        tr.querySelector('[data-field="xds"]')?.textContent,
        tr.querySelector('[data-field="alive"]')?.getAttribute('data-value'),
        tr.querySelector('[data-field="leader"]')?.getAttribute('data-value'),
        tr.querySelector('[data-field="proxies"]')?.getAttribute('data-value'),
      ]),
    );
    assert.deepEqual(
      replicaCells,
      replicas.map((r, i) => [`r${i + 1}`, `127.0.0.1:${r.xdsPort}`, 'true', i === 0 ? 'true' : 'false', i === 0 ? '2' : '1']),
    );
    assert.equal((await page.textContent('#replicas-self'))?.trim(), 'r3');
    await page.waitForSelector('tr[data-proxy="edge-1"] td[data-field="replica"]', { timeout: 15_000 });
    assert.ok(await page.isVisible('#proxies-replica'), 'the replica column is shown');
    const proxyCells = await page.$$eval('#proxies tbody tr', (trs) =>
      trs.map((tr) => [tr.getAttribute('data-proxy'), tr.querySelector('[data-field="replica"]')?.textContent]),
    );
    assert.deepEqual(
      proxyCells,
      Object.entries(PROXIES).sort(([a], [b]) => (a < b ? -1 : 1)),
    );
    assert.deepEqual(browser.consoleErrors, [], 'no script errors in the page');
    assert.doesNotMatch(await page.content(), /PRIVATE KEY/);
  });
});
