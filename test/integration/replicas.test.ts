// Several replicas on one REAL Consul agent (`--state consul`), with REAL Envoys carrying REAL
// HTTP traffic: a gateway on replica 1 and a sidecar on replica 2 talk mTLS with certificates of
// the one shared CA; a `token revoke` (the CLI, through the shared state) closes a stream held by
// replica 3 within ~2 s; and under steady traffic the replica each proxy is connected to is
// SIGKILLed in turn: the proxies (bootstrapped with all three addresses) move to a live replica,
// the failed requests are counted (0 required), and no unchanged listener or cluster is re-sent.
import assert from 'node:assert/strict';
import { execFile, spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { cpSync, mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import { after, before, describe, test } from 'node:test';
import { issueTokenCredentials } from '../../src/ca/tokens.js';
import { bootstrapYaml, XDS_CA_FILE, type BootstrapOptions } from '../../src/cli/bootstrap.js';
import { openSharedState, type SharedState } from '../../src/state/index.js';
import { startConsul, type ConsulAgent } from '../helpers/consul.js';
import { repoRoot, startEnvoy, type Envoy } from '../helpers/envoy.js';
import { startMeshApp, type MeshApp } from '../helpers/mesh-app.js';
import { freePort, httpGet, waitFor } from '../helpers/net.js';
import { startSignalbox, type SignalboxProcess } from '../helpers/signalbox.js';

const run = promisify(execFile);

describe('replicas sharing one CA through Consul', () => {
  let consul: ConsulAgent;
  let shared: SharedState;
  const key = randomBytes(32).toString('base64');
  const replicas: SignalboxProcess[] = [];
  /** Each replica's own copy of the policy directory. */
  const policyDirs: string[] = [];
  const envoys: Envoy[] = [];
  let app: MeshApp;
  let inbound: number;
  let outbound: number;
  let gwPort: number;
  let gw2Port: number;

  const stateArgs = () => ['--state', 'consul', '--consul-addr', consul.httpAddr, '--state-prefix', 'mesh'];
  const addr = (r: SignalboxProcess) => `127.0.0.1:${r.xdsPort}`;
  /** A bootstrap with a token from the shared state (as `signalbox bootstrap --state consul` makes it). */
  const boot = async (o: Omit<BootstrapOptions, 'tls' | 'adminPort'>, subject: string) => {
    const dir = mkdtempSync(path.join(os.tmpdir(), 'replica-proxy-'));
    const c = await issueTokenCredentials(shared, subject, '1h', dir);
    const tls = { caFile: path.join(replicas[0]!.dataDir, XDS_CA_FILE), certFile: c.certFile, keyFile: c.keyFile };
    return { id: c.id, yaml: (adminPort: number) => bootstrapYaml({ ...o, tls, adminPort }) };
  };
  /** Which replicas have proxy `id` on a stream. */
  const holders = async (id: string) => {
    const out: number[] = [];
    for (const [i, r] of replicas.entries()) {
      if (!r.pid) continue;
      const list = ((await r.admin('/api/proxies').catch(() => ({ proxies: [] }))).proxies ?? []) as { id: string }[];
      if (list.some((p) => p.id === id)) out.push(i);
    }
    return out;
  };

  before(async () => {
    consul = await startConsul();
    inbound = await freePort();
    outbound = await freePort();
    gwPort = await freePort();
    gw2Port = await freePort();
    app = await startMeshApp('web', () => outbound);
    const policies = mkdtempSync(path.join(os.tmpdir(), 'replica-policies-'));
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
---
apiVersion: signalbox.dev/v1alpha1
kind: Gateway
metadata: { name: edge }
spec:
  listeners: [ { name: http, port: ${gwPort}, protocol: HTTP } ]
---
apiVersion: signalbox.dev/v1alpha1
kind: Gateway
metadata: { name: edge2 }
spec:
  listeners: [ { name: http, port: ${gw2Port}, protocol: HTTP } ]
---
apiVersion: signalbox.dev/v1alpha1
kind: HTTPRoute
metadata: { name: web }
spec:
  parentRefs: [ { kind: Gateway, name: edge }, { kind: Gateway, name: edge2 } ]
  rules: [ { backendRefs: [ { name: web } ] } ]
`,
    );
    // Each replica has its own copy of the policy directory and its own data directory.
    for (let i = 1; i <= 3; i++) {
      const own = mkdtempSync(path.join(os.tmpdir(), `replica-${i}-policies-`));
      cpSync(policies, own, { recursive: true });
      policyDirs.push(own);
      replicas.push(await startSignalbox({ policies: own, extraArgs: [...stateArgs(), '--replica-id', `r${i}`], env: { SIGNALBOX_STATE_KEY: key } }));
    }
    shared = await openSharedState({ consulAddr: consul.httpAddr, prefix: 'mesh', env: { SIGNALBOX_STATE_KEY: key } });
  });

  after(async () => {
    for (const e of envoys) await e.stop();
    for (const r of replicas) await r.kill('SIGKILL');
    shared?.close();
    await app?.close();
    await consul?.stop();
  });

  test('a gateway on replica 1 and a sidecar on replica 2 talk mTLS with the shared CA', async () => {
    const sidecar = await boot(
      {
        sidecar: { service: 'web', instance: 'web-1', appPort: app.port, inboundPort: inbound, outboundPort: outbound },
        xdsAddress: addr(replicas[1]!),
        delta: true,
      },
      'service/web',
    );
    envoys.push(await startEnvoy({ name: 'web-sidecar', bootstrapYaml: sidecar.yaml }));
    const gateway = await boot({ gateway: 'edge', id: 'edge-1', xdsAddress: addr(replicas[0]!), delta: true }, 'gateway/edge');
    envoys.push(await startEnvoy({ name: 'edge', bootstrapYaml: gateway.yaml }));
    await waitFor(async () => (await httpGet(`http://127.0.0.1:${gwPort}/hello`).catch(() => ({ status: 0 }))).status === 200, {
      what: 'gateway (replica 1) -> sidecar (replica 2)',
      timeoutMs: 30_000,
    });
    const r = await httpGet(`http://127.0.0.1:${gwPort}/hello`);
    assert.match(r.json().xfcc, /URI=spiffe:\/\/signalbox\.local\/gateway\/edge/, "the sidecar saw the gateway's mesh identity");
    assert.deepEqual(await holders('edge-1'), [0]);
    assert.deepEqual(await holders('web-1'), [1]);
    const ca = (i: number) => replicas[i]!.adminText('/api/status').then((t) => JSON.parse(t));
    assert.ok(await ca(0));
    assert.match(replicas[0]!.logs() + replicas[1]!.logs() + replicas[2]!.logs(), /this replica leads/);
  });

  test('/api/replicas on any replica shows every replica, the leader and the proxies each holds (from Consul)', async () => {
    type View = { self: string; leader: string; replicas: { id: string; alive: boolean; leader: boolean; xds: string; proxies: string[] }[] };
    for (const [i, r] of replicas.entries()) {
      // Each replica rewrites its list within a second of a change.
      await waitFor(
        async () => JSON.stringify((await r.admin<View>('/api/replicas')).replicas.map((x) => x.proxies)) === JSON.stringify([['edge-1'], ['web-1'], []]),
        { what: 'proxy lists published', timeoutMs: 5_000 },
      );
      const v = await r.admin<View>('/api/replicas');
      assert.equal(v.self, `r${i + 1}`);
      assert.equal(v.leader, 'r1', 'the first replica to start leads');
      assert.deepEqual(
        v.replicas.map((x) => [x.id, x.alive, x.leader, x.xds]),
        replicas.map((rr, j) => [`r${j + 1}`, true, j === 0, addr(rr)]),
      );
      assert.deepEqual(
        v.replicas.map((x) => x.proxies),
        [['edge-1'], ['web-1'], []],
      );
    }
  });

  test('`token revoke` through the shared state closes the stream on the replica that holds it within ~2 s', async (t) => {
    // The bootstrap as an operator makes it on another machine: `signalbox bootstrap --state consul`
    // signs its token with the shared key and writes the shared CA next to it.
    const cliData = mkdtempSync(path.join(os.tmpdir(), 'replica-cli-'));
    let stderr = '';
    const envoy = await startEnvoy({
      name: 'edge2-revoked',
      bootstrapYaml: (adminPort) => {
        const out = path.join(cliData, 'bootstrap.yaml');
        const r = spawnSync(
          process.execPath,
          [
            path.join(repoRoot(), 'bin/signalbox.js'),
            'bootstrap',
            '--gateway',
            'edge2',
            '--id',
            'edge2-revoked',
            '--xds-address',
            addr(replicas[2]!),
            '--delta',
            '--state',
            'consul',
            '--consul-addr',
            consul.httpAddr,
            '--state-prefix',
            'mesh',
            '--data-dir',
            cliData,
            '--envoy-admin-port',
            String(adminPort),
            '--out',
            out,
          ],
          { env: { ...process.env, SIGNALBOX_STATE_KEY: key }, encoding: 'utf8' },
        );
        stderr = r.stderr;
        if (r.status !== 0) throw new Error(`signalbox bootstrap failed: ${r.stderr}`);
        return readFileSync(out, 'utf8');
      },
    });
    envoys.push(envoy);
    assert.equal(
      readFileSync(path.join(cliData, XDS_CA_FILE), 'utf8'),
      readFileSync(path.join(replicas[0]!.dataDir, XDS_CA_FILE), 'utf8'),
      'bootstrap wrote the shared CA',
    );
    const victim = { id: /token ([0-9a-f-]{36}) for gateway\/edge2/.exec(stderr)?.[1] ?? '' };
    assert.ok(victim.id, stderr);
    await waitFor(async () => (await holders('edge2-revoked')).length === 1, { what: 'the proxy on replica 3', timeoutMs: 20_000 });
    assert.deepEqual(await holders('edge2-revoked'), [2]);
    await run(
      process.execPath,
      [
        path.join(repoRoot(), 'bin/signalbox.js'),
        'token',
        'revoke',
        victim.id,
        '--state',
        'consul',
        '--consul-addr',
        consul.httpAddr,
        '--state-prefix',
        'mesh',
      ],
      { env: { ...process.env, SIGNALBOX_STATE_KEY: key } },
    );
    const t0 = Date.now();
    await waitFor(async () => (await holders('edge2-revoked')).length === 0, { what: 'the revoked stream closed', timeoutMs: 5_000, intervalMs: 50 });
    const took = Date.now() - t0;
    t.diagnostic(`stream closed on replica 3 ${took} ms after \`token revoke\` returned`);
    assert.ok(took < 2_000, `${took} ms`);
    assert.match(replicas[2]!.logs(), new RegExp(`token ${victim.id} was revoked`));
    await envoy.stop();
  });

  test('under steady traffic each replica in turn is SIGKILLed: proxies move to a live one, 0 failed requests, no unchanged listener or cluster re-sent', async (t) => {
    // The proxies pinned to one replica make way for two that know all three: the gateway on Delta,
    // the sidecar on state of the world (versions compared on its first requests).
    for (const e of envoys.splice(0)) await e.stop();
    const all = replicas.map(addr).join(',');
    const sidecar = await boot(
      { sidecar: { service: 'web', instance: 'web-2', appPort: app.port, inboundPort: inbound, outboundPort: outbound }, xdsAddress: all, delta: false },
      'service/web',
    );
    const side = await startEnvoy({ name: 'web-sidecar-2', bootstrapYaml: sidecar.yaml });
    envoys.push(side);
    const gateway = await boot({ gateway: 'edge', id: 'edge-2', xdsAddress: all, delta: true }, 'gateway/edge');
    const gw = await startEnvoy({ name: 'edge-2', bootstrapYaml: gateway.yaml });
    envoys.push(gw);
    await waitFor(async () => (await httpGet(`http://127.0.0.1:${gwPort}/hello`).catch(() => ({ status: 0 }))).status === 200, {
      what: 'gateway -> sidecar',
      timeoutMs: 30_000,
    });
    await waitFor(async () => (await holders('edge-2')).length === 1 && (await holders('web-2')).length === 1, {
      what: 'both proxies on a replica',
      timeoutMs: 10_000,
    });
    const updates = async (e: Envoy) => {
      const stats = await e.admin('/stats?filter=^(listener_manager\\.lds|cluster_manager\\.cds)\\.update_success$');
      return Object.fromEntries([...stats.matchAll(/^(\S+): (\d+)$/gm)].map((m) => [m[1]!, Number(m[2])]));
    };
    // Settled: what each proxy has applied before the first kill.
    await new Promise((r) => setTimeout(r, 1_000));
    const before = { gw: await updates(gw), side: await updates(side) };

    let sent = 0;
    let failed = 0;
    const failures: string[] = [];
    let stop = false;
    const traffic = (async () => {
      while (!stop) {
        sent++;
        const r = await httpGet(`http://127.0.0.1:${gwPort}/steady/${sent}`).catch((e: Error) => ({ status: 0, body: e.message }));
        if (r.status !== 200) {
          failed++;
          if (failures.length < 5) failures.push(`${r.status} ${String(r.body).slice(0, 120)}`);
        }
        await new Promise((res) => setTimeout(res, 5));
      }
    })();
    try {
      for (let i = 0; i < replicas.length; i++) {
        const on = { gw: await holders('edge-2'), side: await holders('web-2') };
        const t0 = Date.now();
        await replicas[i]!.kill('SIGKILL');
        // Every proxy is on a live replica (one that was not just killed).
        await waitFor(
          async () => {
            const [g, s] = [await holders('edge-2'), await holders('web-2')];
            return g.length === 1 && s.length === 1 && g[0] !== i && s[0] !== i;
          },
          { what: `proxies on a live replica after replica ${i + 1} was killed`, timeoutMs: 15_000, intervalMs: 100 },
        );
        t.diagnostic(
          `replica ${i + 1} killed (it held${on.gw.includes(i) ? ' the gateway' : ''}${on.side.includes(i) ? ' the sidecar' : ''}${!on.gw.includes(i) && !on.side.includes(i) ? ' no proxy' : ''}); both proxies on live replicas (gateway r${(await holders('edge-2'))[0]! + 1}, sidecar r${(await holders('web-2'))[0]! + 1}) after ${Date.now() - t0} ms`,
        );
        await new Promise((r) => setTimeout(r, 1_000));
        await replicas[i]!.restart();
      }
      await new Promise((r) => setTimeout(r, 1_000));
    } finally {
      stop = true;
      await traffic;
    }
    t.diagnostic(`requests: ${sent} sent, ${failed} failed${failures.length ? ` (${failures.join('; ')})` : ''}`);
    assert.equal(failed, 0, `failed requests: ${failures.join('; ')}`);
    assert.ok(sent > 100, `steady traffic: ${sent}`);
    const afterUpdates = { gw: await updates(gw), side: await updates(side) };
    t.diagnostic(
      `listener/cluster updates applied, before -> after the kills: gateway ${JSON.stringify(before.gw)} -> ${JSON.stringify(afterUpdates.gw)}, sidecar ${JSON.stringify(before.side)} -> ${JSON.stringify(afterUpdates.side)}`,
    );
    assert.deepEqual(afterUpdates, before, 'reconnecting to another replica re-sent no unchanged listener or cluster');
  });

  test('a policy edit reaching every replica (each its own copy) converges every proxy to one version', async () => {
    type Groups = { groups: { group: string; types: Record<string, { version: string }> }[] };
    const routeVersions = async () =>
      Promise.all(replicas.map(async (r) => (await r.admin<Groups>('/api/groups')).groups.find((g) => g.group === 'gateway/edge')?.types.route?.version));
    const before = await routeVersions();
    assert.equal(new Set(before).size, 1, `one route version on every replica before: ${before}`);
    // The same edit lands on each replica's copy at a slightly different time, as a deployment would.
    for (const dir of policyDirs) {
      const file = path.join(dir, 'mesh.yaml');
      const text = readFileSync(file, 'utf8').replace(
        '  rules: [ { backendRefs: [ { name: web } ] } ]',
        '  rules:\n    - backendRefs: [ { name: web } ]\n      filters:\n        - { type: ResponseHeaderModifier, responseHeaderModifier: { add: [ { name: x-edited, value: "yes" } ] } }',
      );
      assert.notEqual(text, readFileSync(file, 'utf8'));
      writeFileSync(file, text);
      await new Promise((r) => setTimeout(r, 200));
    }
    await waitFor(
      async () => {
        const now = await routeVersions();
        return new Set(now).size === 1 && now[0] !== before[0];
      },
      { what: 'every replica compiled the edit', timeoutMs: 10_000 },
    );
    const [version] = await routeVersions();
    await waitFor(async () => (await httpGet(`http://127.0.0.1:${gwPort}/after-edit`)).headers.get('x-edited') === 'yes', {
      what: 'the gateway applies the edit',
      timeoutMs: 10_000,
    });
    const holder = replicas[(await holders('edge-2'))[0]!]!;
    const p = await holder.admin<{ types: Record<string, { ackedVersion?: string }> }>('/api/proxies/edge-2');
    assert.equal(p.types.route?.ackedVersion, version, 'the gateway runs the one version every replica compiled');
  });
});
