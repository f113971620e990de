// Rotation of the mesh root with `--state consul`, without a restart: three replicas on one REAL
// Consul agent, REAL Envoys carrying REAL HTTP traffic (gateway on replica 2 -> sidecar on replica
// 3, mTLS) through every phase, each asked with `signalbox ca rotate --phase P` (the CLI, through
// the shared state; the leader carries it out; the leader is SIGKILLed between start and switch,
// and the next leader carries out the switch). Checked: 0 failed requests; after `switch` every
// live workload certificate on every replica is issued by the new root; after `finish` the trust
// bundle the proxies hold is one root, the new one; a proxy whose bootstrap trusts only the OLD
// root reconnects to another replica after its replica is killed (the cross-signed root), and a
// proxy bootstrapped after finish (new root only) connects too.
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { randomBytes, X509Certificate } from 'node:crypto';
import { copyFileSync, cpSync, mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { issueTokenCredentials } from '../../src/ca/tokens.js';
import { bootstrapYaml, XDS_CA_FILE, type BootstrapOptions } from '../../src/cli/bootstrap.js';
import { openSharedState, type SharedState } from '../../src/state/index.js';
import { startConsul, type ConsulAgent } from '../helpers/consul.js';
import { repoRoot, startEnvoy, type Envoy } from '../helpers/envoy.js';
import { startMeshApp, type MeshApp } from '../helpers/mesh-app.js';
import { freePort, httpGet, waitFor } from '../helpers/net.js';
import { makeKey, signToken } from '../helpers/jwks-server.js';
import { startSignalbox, type SignalboxProcess } from '../helpers/signalbox.js';
import { startUpstream } from '../helpers/upstream.js';

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const subjects = (pem: string) =>
  [...pem.matchAll(/-----BEGIN CERTIFICATE-----[\s\S]*?-----END CERTIFICATE-----/g)].map((m) => new X509Certificate(m[0]).subject.replace(/\n/g, ', '));

describe('CA rotation with shared state, no restart, under traffic', () => {
  let consul: ConsulAgent;
  let shared: SharedState;
  const key = randomBytes(32).toString('base64');
  const replicas: SignalboxProcess[] = [];
  const envoys: Envoy[] = [];
  let app: MeshApp;
  let inbound: number;
  let outbound: number;
  const ports = { edge: 0, edge2: 0, edge3: 0 };
  /** The xDS CA file as bootstraps had it before the rotation (the old root only). */
  let oldCaFile: string;

  const stateArgs = ['--state', 'consul', '--consul-addr', '', '--state-prefix', 'mesh'];
  const addr = (r: SignalboxProcess) => `127.0.0.1:${r.xdsPort}`;
  const cli = (args: string[], prefix = 'mesh') =>
    new Promise<{ code: number; stdout: string; stderr: string }>((resolve) => {
      execFile(
        process.execPath,
        [path.join(repoRoot(), 'bin/signalbox.js'), ...args, ...stateArgs.map((a) => (a === 'mesh' ? prefix : a || consul.httpAddr))],
        { env: { ...process.env, SIGNALBOX_STATE_KEY: key }, encoding: 'utf8', timeout: 60_000 },
        (err, stdout, stderr) => resolve({ code: err ? ((err as { code?: number }).code ?? 1) : 0, stdout, stderr }),
      );
    });
  const boot = async (o: Omit<BootstrapOptions, 'tls' | 'adminPort'>, subject: string, caFile: string, store: SharedState = shared) => {
    const dir = mkdtempSync(path.join(os.tmpdir(), 'rotation-proxy-'));
    const c = await issueTokenCredentials(store, subject, '1h', dir);
    const tls = { caFile, certFile: c.certFile, keyFile: c.keyFile };
    return (adminPort: number) => bootstrapYaml({ ...o, tls, adminPort });
  };
  const holders = async (id: string) => {
    const out: number[] = [];
    for (const [i, r] of replicas.entries()) {
      if (!r.pid) continue;
      const list = ((await r.admin('/api/proxies').catch(() => ({ proxies: [] }))).proxies ?? []) as { id: string }[];
      if (list.some((p) => p.id === id)) out.push(i);
    }
    return out;
  };
  /** The roots in the trust bundle (SDS signalbox/trust-bundle) an Envoy holds. */
  const envoyTrust = async (e: Envoy) => {
    const dump = JSON.parse(await e.admin('/config_dump?resource=dynamic_active_secrets')) as {
      configs: { name: string; secret?: { validation_context?: { trusted_ca?: { inline_string?: string } } } }[];
    };
    const pem = dump.configs.find((c) => c.name === 'signalbox/trust-bundle')?.secret?.validation_context?.trusted_ca?.inline_string ?? '';
    return subjects(pem);
  };
  /** Asks for a phase until the leader carries it out (it refuses while replicas are not ready). */
  const phase = async (p: string, log: (s: string) => void, prefix = 'mesh') => {
    let last = '';
    for (let i = 0; i < 20; i++) {
      const r = await cli(['ca', 'rotate', '--phase', p], prefix);
      if (r.code === 0) {
        log(`ca rotate --phase ${p}: done after ${i} refusal(s): ${r.stderr.trim().split('\n').at(-1)}`);
        return;
      }
      assert.equal(r.code, 1, r.stderr);
      last = r.stderr;
      await sleep(1_000);
    }
    throw new Error(`phase ${p} never carried out: ${last}`);
  };

  before(async () => {
    consul = await startConsul();
    inbound = await freePort();
    outbound = await freePort();
    for (const k of Object.keys(ports) as (keyof typeof ports)[]) ports[k] = await freePort();
    app = await startMeshApp('web', () => outbound);
    const policies = mkdtempSync(path.join(os.tmpdir(), 'rotation-policies-'));
    const gateways = (Object.keys(ports) as (keyof typeof ports)[])
      .map(
        (g) => `---
apiVersion: signalbox.dev/v1alpha1
kind: Gateway
metadata: { name: ${g} }
spec:
  listeners: [ { name: http, port: ${ports[g]}, protocol: HTTP } ]
`,
      )
      .join('');
    writeFileSync(
      path.join(policies, 'mesh.yaml'),
      `apiVersion: signalbox.dev/v1alpha1
kind: Mesh
metadata: { name: default }
spec:
  trustDomain: signalbox.local
  mtls: { mode: strict }
---
apiVersion: signalbox.dev/v1alpha1
kind: Service
metadata: { name: web }
spec:
  port: 8080
  endpoints: [ { address: 127.0.0.1, port: ${app.port}, sidecarPort: ${inbound} } ]
${gateways}---
apiVersion: signalbox.dev/v1alpha1
kind: HTTPRoute
metadata: { name: web }
spec:
  parentRefs: [ { kind: Gateway, name: edge }, { kind: Gateway, name: edge2 }, { kind: Gateway, name: edge3 } ]
  rules: [ { backendRefs: [ { name: web } ] } ]
`,
    );
    for (let i = 1; i <= 3; i++) {
      const own = mkdtempSync(path.join(os.tmpdir(), `rotation-${i}-policies-`));
      cpSync(policies, own, { recursive: true });
      replicas.push(
        await startSignalbox({
          policies: own,
          extraArgs: [...stateArgs.map((a) => a || consul.httpAddr), '--replica-id', `r${i}`],
          env: { SIGNALBOX_STATE_KEY: key },
        }),
      );
    }
    shared = await openSharedState({ consulAddr: consul.httpAddr, prefix: 'mesh', env: { SIGNALBOX_STATE_KEY: key } });
    oldCaFile = path.join(mkdtempSync(path.join(os.tmpdir(), 'rotation-old-ca-')), XDS_CA_FILE);
    copyFileSync(path.join(replicas[0]!.dataDir, XDS_CA_FILE), oldCaFile);
  });

  after(async () => {
    for (const e of envoys) await e.stop();
    for (const r of replicas) await r.kill('SIGKILL');
    shared?.close();
    await app?.close();
    await consul?.stop();
  });

  test('start, switch, finish under steady traffic: 0 failed requests; new serials on every replica; one root left; old and new bootstraps connect', async (t) => {
    const oldRoot = subjects(readFileSync(oldCaFile, 'utf8'));
    assert.equal(oldRoot.length, 1);
    // Bootstrapped before the rotation, with the old root only: the sidecar on replica 2, a
    // gateway on replica 1, and a second gateway that knows all three replicas.
    const side = await startEnvoy({
      name: 'web-sidecar',
      bootstrapYaml: await boot(
        {
          sidecar: { service: 'web', instance: 'web-1', appPort: app.port, inboundPort: inbound, outboundPort: outbound },
          xdsAddress: addr(replicas[2]!),
          delta: true,
        },
        'service/web',
        oldCaFile,
      ),
    });
    envoys.push(side);
    const gw = await startEnvoy({
      name: 'edge',
      bootstrapYaml: await boot({ gateway: 'edge', id: 'edge-1', xdsAddress: addr(replicas[1]!) }, 'gateway/edge', oldCaFile),
    });
    envoys.push(gw);
    const gw2 = await startEnvoy({
      name: 'edge2',
      bootstrapYaml: await boot({ gateway: 'edge2', id: 'edge2-1', xdsAddress: replicas.map(addr).join(','), delta: true }, 'gateway/edge2', oldCaFile),
    });
    envoys.push(gw2);
    for (const g of [ports.edge, ports.edge2])
      await waitFor(async () => (await httpGet(`http://127.0.0.1:${g}/hello`).catch(() => ({ status: 0 }))).status === 200, {
        what: `gateway ${g} -> sidecar`,
        timeoutMs: 30_000,
      });
    assert.deepEqual([await holders('edge-1'), await holders('web-1')], [[1], [2]], 'gateway on replica 2, sidecar on replica 3');
    assert.deepEqual(await envoyTrust(side), oldRoot);

    // Refused before anything runs, changing nothing.
    const early = await cli(['ca', 'rotate', '--phase', 'switch']);
    assert.equal(early.code, 1);
    assert.match(early.stderr, /cannot switch a CA rotation: no rotation is running: begin one with --phase start/);

    let sent = 0;
    let failed = 0;
    const failures: string[] = [];
    let stop = false;
    const traffic = (async () => {
      while (!stop) {
        sent++;
        const port = sent % 2 ? ports.edge : ports.edge2;
        const r = await httpGet(`http://127.0.0.1:${port}/steady/${sent}`).catch((e: Error) => ({ status: 0, body: e.message }));
        if (r.status !== 200) {
          failed++;
          if (failures.length < 5) failures.push(`${port}: ${r.status} ${String(r.body).slice(0, 120)}`);
        }
        await sleep(5);
      }
    })();
    const counts: Record<string, number> = {};
    const mark = (what: string) => {
      counts[what] = sent;
    };
    let newRoot = '';
    try {
      // 1. start: every proxy trusts both roots; the old one still signs.
      await phase('start', (s) => t.diagnostic(s));
      const status = JSON.parse((await cli(['ca', 'status', '--json'])).stdout) as { rotation: { id: string; phase: string }; nextRoot: { subject: string } };
      assert.equal(status.rotation.phase, 'started');
      newRoot = status.nextRoot.subject;
      assert.match(newRoot, new RegExp(`Signalbox mesh root ${status.rotation.id}`));
      for (const e of [side, gw, gw2]) await waitFor(async () => (await envoyTrust(e)).length === 2, { what: 'proxies trust both roots', timeoutMs: 15_000 });
      assert.deepEqual((await envoyTrust(side)).sort(), [...oldRoot, newRoot].sort());
      const again = await cli(['ca', 'rotate', '--phase', 'start']);
      assert.equal(again.code, 1);
      assert.match(again.stderr, /rotation \S+ is already running \(phase started\): go on with --phase switch/);
      await sleep(1_000);
      mark('start');

      // The leader (replica 1, the first started) is SIGKILLed between two phases: the switch,
      // asked at once, waits for the next leader, which carries it out from the state in Consul.
      type Replicas = { leader?: string };
      assert.equal((await replicas[1]!.admin<Replicas>('/api/replicas')).leader, 'r1');
      await replicas[0]!.kill('SIGKILL');
      const killedAt = Date.now();

      // 2. switch: the new root signs; every replica re-issues what it holds.
      await phase('switch', (s) => t.diagnostic(s));
      const newLeader = (await replicas[1]!.admin<Replicas>('/api/replicas')).leader;
      assert.ok(newLeader === 'r2' || newLeader === 'r3', `a new leader: ${newLeader}`);
      assert.match(replicas[Number(newLeader!.slice(1)) - 1]!.logs(), /CA rotation: phase switch carried out/);
      assert.doesNotMatch(replicas[0]!.logs(), /phase switch carried out/);
      t.diagnostic(`leader r1 killed after start; switch carried out by ${newLeader} ${Date.now() - killedAt} ms later`);
      await replicas[0]!.restart();
      type Certs = { certificates: { instance: string; serial: string; issuer: string }[] };
      for (const [i, r] of replicas.entries())
        await waitFor(async () => (await r.admin<Certs>('/api/certificates')).certificates.every((c) => c.issuer === newRoot), {
          what: `replica ${i + 1} re-issued its certificates from the new root`,
          timeoutMs: 15_000,
        });
      const held = await Promise.all(replicas.map((r) => r.admin<Certs>('/api/certificates')));
      assert.ok(held[1]!.certificates.some((c) => c.instance === 'edge-1'));
      assert.ok(held[2]!.certificates.some((c) => c.instance === 'web-1'));
      t.diagnostic(
        `after switch: ${held.map((h, i) => `r${i + 1} ${h.certificates.map((c) => `${c.instance}#${c.serial.slice(0, 8)}`).join(' ') || '(none)'}`).join('; ')}`,
      );
      for (const h of held) for (const c of h.certificates) assert.equal(c.issuer, newRoot);
      // The proxies present the new serials (Envoy's /certs).
      const presented = JSON.parse(await side.admin('/certs')) as { certificates: { cert_chain?: { serial_number: string }[] }[] };
      const serialOf = held[2]!.certificates
        .find((c) => c.instance === 'web-1')!
        .serial.toLowerCase()
        .replace(/^0+/, '');
      await waitFor(
        async () =>
          (JSON.parse(await side.admin('/certs')) as typeof presented).certificates.some((c) =>
            c.cert_chain?.some((x) => x.serial_number.toLowerCase().replace(/^0+/, '') === serialOf),
          ),
        { what: 'the sidecar presents its new certificate', timeoutMs: 10_000 },
      );
      await sleep(1_000);
      mark('switch');

      // 3. finish: the old root leaves every proxy's trust bundle.
      await phase('finish', (s) => t.diagnostic(s));
      for (const e of [side, gw, gw2]) await waitFor(async () => (await envoyTrust(e)).length === 1, { what: 'one root left', timeoutMs: 15_000 });
      for (const e of [side, gw, gw2]) assert.deepEqual(await envoyTrust(e), [newRoot]);
      assert.deepEqual(subjects(readFileSync(path.join(replicas[0]!.dataDir, XDS_CA_FILE), 'utf8')), [newRoot], 'new bootstraps get the new root');
      await sleep(1_000);
      mark('finish');

      // 4. A proxy bootstrapped with the OLD root only: its replica dies, it reconnects to another
      // (whose xDS certificate, from the new root, goes with the root cross-signed by the old one).
      const on = await holders('edge2-1');
      assert.equal(on.length, 1);
      await replicas[on[0]!]!.kill('SIGKILL');
      await waitFor(
        async () => {
          const h = await holders('edge2-1');
          return h.length === 1 && h[0] !== on[0];
        },
        { what: 'the old-bootstrap gateway on another replica', timeoutMs: 20_000, intervalMs: 100 },
      );
      const moved = (await holders('edge2-1'))[0]!;
      type Proxy = { types: Record<string, { ackedVersion?: string; sentVersion?: string }> };
      await waitFor(
        async () => {
          const q = await replicas[moved]!.admin<Proxy>('/api/proxies/edge2-1');
          return !!q.types.secret?.ackedVersion && q.types.secret.ackedVersion === q.types.secret.sentVersion;
        },
        { what: 'the moved gateway ACKed its secrets', timeoutMs: 10_000 },
      );
      // The replica it moved to serves xDS with a certificate of the new root (not the old one the bootstrap trusts).
      const view = JSON.parse((await cli(['ca', 'status', '--json'])).stdout) as { replicas: { id: string; serverOld: boolean; signing: string }[] };
      const there = view.replicas.find((r) => r.id === `r${moved + 1}`)!;
      assert.deepEqual([there.serverOld, there.signing], [false, newRoot]);
      t.diagnostic(`old-bootstrap gateway moved from r${on[0]! + 1} to r${moved + 1} after finish`);
      await replicas[on[0]!]!.restart();
      // 5. A proxy bootstrapped after finish (the new root only) connects as well.
      const gw3 = await startEnvoy({
        name: 'edge3',
        bootstrapYaml: await boot(
          { gateway: 'edge3', id: 'edge3-1', xdsAddress: addr(replicas[2]!) },
          'gateway/edge3',
          path.join(replicas[2]!.dataDir, XDS_CA_FILE),
        ),
      });
      envoys.push(gw3);
      await waitFor(async () => (await httpGet(`http://127.0.0.1:${ports.edge3}/hello`).catch(() => ({ status: 0 }))).status === 200, {
        what: 'new-bootstrap gateway -> sidecar',
        timeoutMs: 30_000,
      });
      await sleep(1_000);
    } finally {
      stop = true;
      await traffic;
    }
    t.diagnostic(
      `requests: ${sent} sent (${counts.start} by the end of start, ${counts.switch} of switch, ${counts.finish} of finish), ${failed} failed${failures.length ? ` (${failures.join('; ')})` : ''}`,
    );
    assert.equal(failed, 0, `failed requests: ${failures.join('; ')}`);
    assert.ok(sent > 200, `steady traffic: ${sent}`);
    const st = await cli(['ca', 'status']);
    assert.equal(st.code, 0, st.stderr);
    assert.match(st.stdout, /no rotation running \(last: \S+, finished/);
    assert.match(st.stdout, new RegExp(`signing root: +${newRoot.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}`));
  });
  test('the ext_authz service embedded in serve follows the rotation: JWT-checked requests pass in every phase, and a proxy started after finish reaches it', async (t) => {
    // One replica on its own prefix, the JWT fast path off: every request to /secure is decided
    // by the embedded ext_authz service, over mTLS with the gateway's workload certificate.
    const ISS = 'https://issuer.rotation.test';
    const jwtKey = await makeKey('ES256', 'rotation-1');
    const upstream = await startUpstream('api');
    const gwPorts = [await freePort(), await freePort()];
    const policies = mkdtempSync(path.join(os.tmpdir(), 'rotation-authz-'));
    writeFileSync(
      path.join(policies, 'mesh.yaml'),
      `apiVersion: signalbox.dev/v1alpha1
kind: Mesh
metadata: { name: default }
spec: { trustDomain: signalbox.local, mtls: { mode: strict } }
---
apiVersion: signalbox.dev/v1alpha1
kind: Service
metadata: { name: api }
spec:
  port: 8080
  endpoints: [ { address: 127.0.0.1, port: ${upstream.port} } ]
${gwPorts
  .map(
    (port, i) => `---
apiVersion: signalbox.dev/v1alpha1
kind: Gateway
metadata: { name: api-gw${i} }
spec:
  listeners: [ { name: http, port: ${port}, protocol: HTTP } ]
`,
  )
  .join('')}---
apiVersion: signalbox.dev/v1alpha1
kind: HTTPRoute
metadata: { name: api }
spec:
  parentRefs: [ { kind: Gateway, name: api-gw0 }, { kind: Gateway, name: api-gw1 } ]
  rules:
    - { name: secure, matches: [ { path: { value: /secure } } ], backendRefs: [ { name: api } ] }
---
apiVersion: signalbox.dev/v1alpha1
kind: JWTPolicy
metadata: { name: users }
spec:
  targetRef: { kind: HTTPRoute, name: api, sectionName: secure }
  issuer: ${ISS}
  jwks: { inline: ${JSON.stringify({ keys: [jwtKey.jwk] })} }
`,
    );
    const solo = await startSignalbox({
      policies,
      extraArgs: [
        '--state',
        'consul',
        '--consul-addr',
        consul.httpAddr,
        '--state-prefix',
        'solo',
        '--replica-id',
        's1',
        '--authz-port',
        String(await freePort()),
        '--jwt-fast-path',
        'off',
      ],
      env: { SIGNALBOX_STATE_KEY: key },
    });
    const soloState = await openSharedState({ consulAddr: consul.httpAddr, prefix: 'solo', env: { SIGNALBOX_STATE_KEY: key } });
    const stops: (() => Promise<void>)[] = [async () => soloState.close(), () => solo.kill('SIGKILL'), () => upstream.close()];
    try {
      const good = await signToken(jwtKey, { iss: ISS, sub: 'alice' });
      const get = (port: number, token?: string) =>
        httpGet(`http://127.0.0.1:${port}/secure`, { headers: token ? { authorization: `Bearer ${token}` } : {} }).catch((e: Error) => ({
          status: 0,
          body: e.message,
        }));
      const gw0 = await startEnvoy({
        name: 'api-gw0',
        bootstrapYaml: await boot({ gateway: 'api-gw0', xdsAddress: addr(solo) }, 'gateway/api-gw0', path.join(solo.dataDir, XDS_CA_FILE), soloState),
      });
      stops.unshift(() => gw0.stop());
      await waitFor(async () => (await get(gwPorts[0]!, good)).status === 200, { what: 'a valid JWT passes', timeoutMs: 30_000 });
      assert.equal((await get(gwPorts[0]!)).status, 401, 'no token: refused by the ext_authz service');
      let sent = 0;
      let failed = 0;
      const failures: string[] = [];
      let stop = false;
      const traffic = (async () => {
        while (!stop) {
          sent++;
          const r = await get(gwPorts[0]!, good);
          if (r.status !== 200) {
            failed++;
            if (failures.length < 5) failures.push(`${r.status} ${String(r.body).slice(0, 120)}`);
          }
          await sleep(5);
        }
      })();
      try {
        for (const p of ['start', 'switch', 'finish']) {
          await phase(p, (m) => t.diagnostic(m), 'solo');
          await sleep(1_500);
        }
        // A gateway bootstrapped now trusts the new root only: it reaches the ext_authz service
        // (whose certificate is from the new root) and is accepted by it (its certificate too).
        const gw1 = await startEnvoy({
          name: 'api-gw1',
          bootstrapYaml: await boot({ gateway: 'api-gw1', xdsAddress: addr(solo) }, 'gateway/api-gw1', path.join(solo.dataDir, XDS_CA_FILE), soloState),
        });
        stops.unshift(() => gw1.stop());
        assert.equal(subjects(readFileSync(path.join(solo.dataDir, XDS_CA_FILE), 'utf8')).length, 1);
        await waitFor(async () => (await get(gwPorts[1]!, good)).status === 200, { what: 'the new gateway: a valid JWT passes', timeoutMs: 30_000 });
        assert.equal((await get(gwPorts[1]!)).status, 401, 'no token: refused by the ext_authz service');
      } finally {
        stop = true;
        await traffic;
      }
      t.diagnostic(`JWT-checked requests through the rotation: ${sent} sent, ${failed} failed${failures.length ? ` (${failures.join('; ')})` : ''}`);
      assert.equal(failed, 0, failures.join('; '));
      assert.ok(sent > 100, `steady traffic: ${sent}`);
    } finally {
      for (const s of stops) await s();
    }
  });
});
