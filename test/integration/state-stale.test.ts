// --state-stale-max on a REAL Consul agent with REAL Envoy carrying REAL HTTP traffic over mesh
// mTLS: one replica with a 3 s limit, an app behind its sidecar, a gateway g1 holding its workload
// certificate; the Consul agent is stopped. Past the limit the replica says so (log, /api/status,
// /api/replicas, the gauge) and issues no certificate to a gateway g2 that connects meanwhile (it
// gets and ACKs its configuration, but cannot reach the sidecar without an identity), while g1
// keeps its certificate and its traffic. Consul started again, issuance resumes at once: g2 gets
// its certificate and its requests reach the app, the sidecar seeing g2's identity.
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { issueTokenCredentials } from '../../src/ca/tokens.js';
import { bootstrapYaml, XDS_CA_FILE } from '../../src/cli/bootstrap.js';
import { openSharedState } from '../../src/state/index.js';
import { startConsul, type ConsulAgent } from '../helpers/consul.js';
import { startEnvoy, type Envoy } from '../helpers/envoy.js';
import { freePort, httpGet, waitFor } from '../helpers/net.js';
import { startSignalbox, type SignalboxProcess } from '../helpers/signalbox.js';
import { startMeshApp, type MeshApp } from '../helpers/mesh-app.js';

interface ProxyRow {
  id: string;
  certificate?: { serial?: string };
  types: Record<string, { ackedVersion?: string }>;
}
interface Status {
  sharedState?: { readable: boolean; stale: boolean; staleMaxSeconds: number; certificatesWaiting: number; staleSince?: string };
  warnings: string[];
}

describe('--state-stale-max: no workload certificate from a replica that has not read Consul for too long', () => {
  let consul: ConsulAgent;
  let sb: SignalboxProcess;
  let app: MeshApp;
  const gateways: Envoy[] = [];
  const ports = { g1: 0, g2: 0, inbound: 0, outbound: 0 };
  const boots: Record<string, (adminPort: number) => string> = {};

  const proxies = async () => (await sb.admin<ProxyRow[] | { proxies: ProxyRow[] }>('/api/proxies')) as ProxyRow[] | { proxies: ProxyRow[] };
  const proxy = async (id: string) => {
    const p = await proxies();
    return (Array.isArray(p) ? p : p.proxies).find((x) => x.id === id);
  };
  const issuedTotal = async () =>
    [...(await sb.adminText('/metrics')).matchAll(/^signalbox_certificates_total\{[^}]*\} (\d+)/gm)].reduce((n, m) => n + Number(m[1]), 0);
  const gauge = async (name: string) => Number(new RegExp(`^${name} (\\S+)`, 'm').exec(await sb.adminText('/metrics'))?.[1]);
  const get = (port: number) => httpGet(`http://127.0.0.1:${port}/`).catch(() => ({ status: 0, body: '' }));

  before(async () => {
    consul = await startConsul({ persistent: true });
    app = await startMeshApp('app', () => ports.outbound);
    for (const k of ['g1', 'g2', 'inbound', 'outbound'] as const) ports[k] = await freePort();
    const policies = mkdtempSync(path.join(os.tmpdir(), 'stale-policies-'));
    writeFileSync(
      path.join(policies, 'mesh.yaml'),
      `apiVersion: signalbox.dev/v1alpha1
kind: Mesh
metadata: { name: default }
spec: { trustDomain: signalbox.local, mtls: { mode: strict } }
---
apiVersion: signalbox.dev/v1alpha1
kind: Service
metadata: { name: app }
spec:
  port: 8080
  endpoints: [ { address: 127.0.0.1, port: ${app.port}, sidecarPort: ${ports.inbound} } ]
${['g1', 'g2']
  .map(
    (g) => `---
apiVersion: signalbox.dev/v1alpha1
kind: Gateway
metadata: { name: ${g} }
spec:
  listeners: [ { name: http, port: ${ports[g as 'g1' | 'g2']}, protocol: HTTP } ]
---
apiVersion: signalbox.dev/v1alpha1
kind: HTTPRoute
metadata: { name: ${g}-app }
spec:
  parentRefs: [ { kind: Gateway, name: ${g} } ]
  rules: [ { backendRefs: [ { name: app } ] } ]
`,
  )
  .join('')}`,
    );
    const key = randomBytes(32).toString('base64');
    sb = await startSignalbox({
      policies,
      extraArgs: ['--state', 'consul', '--consul-addr', consul.httpAddr, '--state-prefix', 'stale', '--replica-id', 'r1', '--state-stale-max', '3s'],
      env: { SIGNALBOX_STATE_KEY: key },
    });
    // Every proxy's token now, while Consul answers.
    const shared = await openSharedState({ consulAddr: consul.httpAddr, prefix: 'stale', env: { SIGNALBOX_STATE_KEY: key } });
    const tlsFor = async (subject: string) => {
      const cred = await issueTokenCredentials(shared, subject, '1h', mkdtempSync(path.join(os.tmpdir(), 'stale-cred-')));
      return { caFile: path.join(sb.dataDir, XDS_CA_FILE), certFile: cred.certFile, keyFile: cred.keyFile };
    };
    const xdsAddress = `127.0.0.1:${sb.xdsPort}`;
    for (const g of ['g1', 'g2']) {
      const tls = await tlsFor(`gateway/${g}`);
      boots[g] = (adminPort) => bootstrapYaml({ gateway: g, id: `${g}-1`, xdsAddress, delta: true, tls, adminPort });
    }
    const sidecarTls = await tlsFor('service/app');
    shared.close();
    const sidecar = { service: 'app', instance: 'app-1', appPort: app.port, inboundPort: ports.inbound, outboundPort: ports.outbound };
    gateways.push(
      await startEnvoy({ name: 'stale-app', bootstrapYaml: (adminPort) => bootstrapYaml({ sidecar, xdsAddress, delta: true, tls: sidecarTls, adminPort }) }),
    );
    gateways.push(await startEnvoy({ name: 'stale-g1', bootstrapYaml: boots.g1! }));
  });

  after(async () => {
    for (const g of gateways) await g.stop();
    await sb?.kill('SIGKILL');
    await app?.close();
    await consul?.stop();
  });

  test('past the limit: said once, no certificate issued, traffic and configuration go on; Consul back: issued at once', async (t) => {
    await waitFor(async () => (await get(ports.g1)).status === 200, { what: 'traffic through g1 and the sidecar (mTLS)', timeoutMs: 30_000 });
    assert.match((await get(ports.g1)).body, /URI=spiffe:\/\/signalbox\.local\/gateway\/g1/, "the sidecar saw g1's identity");
    const g1Serial = (await proxy('g1-1'))!.certificate!.serial;
    const fresh = (await sb.admin<Status>('/api/status')).sharedState!;
    assert.deepEqual([fresh.readable, fresh.stale, fresh.staleMaxSeconds], [true, false, 3]);
    assert.equal(await gauge('signalbox_certificate_issuance_stopped'), 0);

    await consul.stop();
    const stoppedAt = Date.now();
    await waitFor(async () => (await sb.admin<Status>('/api/status')).sharedState?.stale === true, { what: 'stale', timeoutMs: 20_000 });
    const staleAfter = Date.now() - stoppedAt;
    t.diagnostic(`issuance stopped ${staleAfter} ms after the Consul agent stopped (limit 3 s)`);
    assert.ok(staleAfter >= 3_000, `not before the limit (${staleAfter} ms)`);
    const status = await sb.admin<Status>('/api/status');
    assert.ok(status.warnings.some((w) => /workload certificates are not issued nor renewed: Consul unreadable since .*--state-stale-max \(3 s\)/.test(w)));
    assert.equal(await gauge('signalbox_certificate_issuance_stopped'), 1);
    assert.ok((await gauge('signalbox_state_unreadable_seconds')) >= 3);
    const replicas = await fetch(`http://127.0.0.1:${sb.adminPort}/api/replicas`);
    assert.equal(replicas.status, 503);
    assert.equal(((await replicas.json()) as { freshness: { stale: boolean } }).freshness.stale, true);
    const issuedBefore = await issuedTotal();

    // A gateway that connects now gets its configuration and ACKs it, but no certificate: without an
    // identity it cannot reach the sidecar.
    gateways.push(await startEnvoy({ name: 'stale-g2', bootstrapYaml: boots.g2! }));
    await waitFor(async () => !!(await proxy('g2-1'))?.types.listener?.ackedVersion, { what: "g2's listeners ACKed", timeoutMs: 30_000 });
    const tries: number[] = [];
    for (let i = 0; i < 6; i++) {
      tries.push((await get(ports.g2)).status);
      await new Promise((r) => setTimeout(r, 250));
    }
    assert.ok(!tries.includes(200), `g2 reaches no sidecar without its certificate: ${tries.join(',')}`);
    assert.equal((await proxy('g2-1'))?.certificate, undefined, 'no certificate for g2');
    assert.equal(await issuedTotal(), issuedBefore, 'no certificate issued after the limit');
    assert.equal((await sb.admin<Status>('/api/status')).sharedState!.certificatesWaiting, 1);
    assert.equal((await proxy('g1-1'))!.certificate!.serial, g1Serial, 'g1 keeps its certificate');
    assert.equal((await get(ports.g1)).status, 200, 'and its traffic');
    const told = sb.logs().match(/Consul has been unreadable for longer than --state-stale-max/g) ?? [];
    assert.equal(told.length, 1, 'said once in the log');

    // Consul back: issuance resumes at once, the waiting gateway gets its certificate.
    const restartedAt = Date.now();
    await consul.restart();
    await waitFor(async () => !!(await proxy('g2-1'))?.certificate?.serial, { what: "g2's certificate once Consul is back", timeoutMs: 15_000 });
    t.diagnostic(`g2's certificate ${Date.now() - restartedAt} ms after Consul was started again (restart included)`);
    assert.equal((await sb.admin<Status>('/api/status')).sharedState!.stale, false);
    assert.equal(await gauge('signalbox_certificate_issuance_stopped'), 0);
    assert.ok((await issuedTotal()) > issuedBefore);
    assert.match(sb.logs(), /Consul answers again: workload certificates are issued and renewed again/);
    await waitFor(async () => (await get(ports.g2)).status === 200, { what: 'traffic through g2 once it has its certificate', timeoutMs: 15_000 });
    assert.match((await get(ports.g2)).body, /URI=spiffe:\/\/signalbox\.local\/gateway\/g2/, "the sidecar saw g2's identity");
    assert.doesNotMatch(sb.logs(), /BEGIN|PRIVATE KEY/);
  });
});
