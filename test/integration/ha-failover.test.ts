// Leader failover and the standalone services on the replicas' shared state, on a REAL Consul
// agent with REAL Envoy carrying REAL HTTP traffic:
// - `signalbox authz` and `signalbox ratelimit` (real child processes) started with --state consul
//   take the mesh CA from Consul KV: a gateway whose bootstrap lists the three replicas trusts
//   their certificates and they trust its own (a valid JWT passes, others get 401; the fourth
//   request of a key in a minute gets 429); a wrong state key stops them at start, with a message.
// - SIGKILL the leading replica: another leads, and the dead one shows as not alive, within a few
//   seconds (each replica's session is tied to a 2 s TTL check on its agent, not to a 10 s session
//   TTL); the times are printed. A clean stop removes the replica's check from the agent.
import assert from 'node:assert/strict';
import { type ChildProcess, spawn, spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { cpSync, mkdtempSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { issueTokenCredentials } from '../../src/ca/tokens.js';
import { bootstrapYaml, XDS_CA_FILE } from '../../src/cli/bootstrap.js';
import { REPLICA_SERVICE } from '../../src/state/leader.js';
import { openSharedState, type SharedState } from '../../src/state/index.js';
import { startConsul, type ConsulAgent } from '../helpers/consul.js';
import { repoRoot, startEnvoy, type Envoy } from '../helpers/envoy.js';
import { makeKey, signToken, type TestKey } from '../helpers/jwks-server.js';
import { freePort, httpGet, waitFor } from '../helpers/net.js';
import { startRedis, type RedisServer } from '../helpers/redis.js';
import { startSignalbox, type SignalboxProcess } from '../helpers/signalbox.js';
import { startUpstream, type Upstream } from '../helpers/upstream.js';

const ISS = 'https://issuer.ha.test/';
const PER_MINUTE = 3;

interface Service {
  metricsPort: number;
  logs(): string;
  stop(): Promise<void>;
}

/** `signalbox authz|ratelimit ARGS` as a child process, ready once its /readyz answers 200. */
async function startService(command: 'authz' | 'ratelimit', args: string[], env: NodeJS.ProcessEnv): Promise<Service> {
  const metricsPort = await freePort();
  const child: ChildProcess = spawn(
    process.execPath,
    [path.join(repoRoot(), 'bin/signalbox.js'), command, ...args, '--metrics-port', String(metricsPort), '--watch-debounce-ms', '50'],
    { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, ...env } },
  );
  let log = '';
  let exited = false;
  child.on('exit', () => (exited = true));
  const keep = (b: Buffer) => {
    log = (log + b.toString()).slice(-200_000);
  };
  child.stdout!.on('data', keep);
  child.stderr!.on('data', keep);
  await waitFor(
    async () => {
      if (exited) throw new Error(`signalbox ${command} exited:\n${log}`);
      return (await fetch(`http://127.0.0.1:${metricsPort}/readyz`).catch(() => undefined))?.status === 200;
    },
    { what: `signalbox ${command} ready`, timeoutMs: 30_000 },
  ).catch((e: Error) => {
    if (!exited) child.kill('SIGKILL');
    throw e;
  });
  return {
    metricsPort,
    logs: () => log,
    stop: async () => {
      if (exited) return;
      const done = new Promise((r) => child.once('exit', r));
      child.kill('SIGTERM');
      await done;
    },
  };
}

describe('replicas on Consul: fast leader failover, standalone services on the shared state', () => {
  let consul: ConsulAgent;
  let shared: SharedState;
  let redis: RedisServer;
  let app: Upstream;
  let jwtKey: TestKey;
  let gateway: Envoy;
  let authz: Service;
  let ratelimit: Service;
  let policies: string;
  const key = randomBytes(32).toString('base64');
  const replicas: SignalboxProcess[] = [];
  const ports = { gw: 0, authz: 0, ratelimit: 0 };

  const stateArgs = () => ['--state', 'consul', '--consul-addr', consul.httpAddr, '--state-prefix', 'ha'];
  const live = () => replicas.filter((r) => r.pid !== undefined);
  const view = async (r: SignalboxProcess) =>
    (await r.admin('/api/replicas')) as { leader?: string; self: string; replicas: { id: string; alive: boolean; proxies: string[] }[] };
  const agentChecks = async () =>
    (await (await fetch(`http://${consul.httpAddr}/v1/agent/checks`)).json()) as Record<string, { Status: string; ServiceName: string }>;
  const agentServices = async () => (await (await fetch(`http://${consul.httpAddr}/v1/agent/services`)).json()) as Record<string, { Service: string }>;
  const get = (p: string, headers: Record<string, string> = {}) => httpGet(`http://127.0.0.1:${ports.gw}${p}`, { headers }).catch(() => ({ status: 0 }));

  before(async () => {
    consul = await startConsul();
    redis = await startRedis();
    app = await startUpstream('app');
    jwtKey = await makeKey('ES256', 'ha-1');
    ports.gw = await freePort();
    ports.authz = await freePort();
    ports.ratelimit = await freePort();
    policies = mkdtempSync(path.join(os.tmpdir(), 'ha-policies-'));
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
  endpoints: [ { address: 127.0.0.1, port: ${app.port} } ]
---
apiVersion: signalbox.dev/v1alpha1
kind: Gateway
metadata: { name: edge }
spec:
  listeners: [ { name: http, port: ${ports.gw}, protocol: HTTP } ]
---
apiVersion: signalbox.dev/v1alpha1
kind: HTTPRoute
metadata: { name: api }
spec:
  parentRefs: [ { kind: Gateway, name: edge } ]
  rules:
    - { name: secure, matches: [ { path: { value: /secure } } ], backendRefs: [ { name: app } ] }
    - { name: keyed, matches: [ { path: { value: /keyed } } ], backendRefs: [ { name: app } ] }
---
apiVersion: signalbox.dev/v1alpha1
kind: JWTPolicy
metadata: { name: users }
spec:
  targetRef: { kind: HTTPRoute, name: api, sectionName: secure }
  issuer: ${ISS}
  jwks: { inline: ${JSON.stringify({ keys: [jwtKey.jwk] })} }
---
apiVersion: signalbox.dev/v1alpha1
kind: RateLimitPolicy
metadata: { name: per-key }
spec:
  targetRef: { kind: HTTPRoute, name: api, sectionName: keyed }
  global:
    failureMode: deny
    limits: [ { requests: ${PER_MINUTE}, per: minute, by: { header: x-api-key } } ]
`,
    );
    // Three replicas, each with its own copy of the policies; proxies are sent to the standalone services.
    for (let i = 1; i <= 3; i++) {
      const own = mkdtempSync(path.join(os.tmpdir(), `ha-${i}-policies-`));
      cpSync(policies, own, { recursive: true });
      replicas.push(
        await startSignalbox({
          policies: own,
          extraArgs: [
            ...stateArgs(),
            '--replica-id',
            `r${i}`,
            '--jwt-fast-path',
            'off',
            '--authz-address-for-proxies',
            `127.0.0.1:${ports.authz}`,
            '--ratelimit-port',
            '0',
            '--ratelimit-address-for-proxies',
            `127.0.0.1:${ports.ratelimit}`,
            '--redis-url',
            redis.url,
          ],
          env: { SIGNALBOX_STATE_KEY: key },
        }),
      );
    }
    shared = await openSharedState({ consulAddr: consul.httpAddr, prefix: 'ha', env: { SIGNALBOX_STATE_KEY: key } });
    // The standalone services: no data directory of any replica, only the shared state.
    const empty = mkdtempSync(path.join(os.tmpdir(), 'ha-empty-data-'));
    authz = await startService(
      'authz',
      ['--policies', policies, '--authz-address', '127.0.0.1', '--authz-port', String(ports.authz), '--data-dir', empty, ...stateArgs()],
      { SIGNALBOX_STATE_KEY: key },
    );
    ratelimit = await startService(
      'ratelimit',
      [
        '--policies',
        policies,
        '--ratelimit-address',
        '127.0.0.1',
        '--ratelimit-port',
        String(ports.ratelimit),
        '--redis-url',
        redis.url,
        '--data-dir',
        empty,
        ...stateArgs(),
      ],
      { SIGNALBOX_STATE_KEY: key },
    );
    // A gateway that knows the three replicas (its token from the shared state).
    const dir = mkdtempSync(path.join(os.tmpdir(), 'ha-gateway-'));
    const cred = await issueTokenCredentials(shared, 'gateway/edge', '1h', dir);
    const tls = { caFile: path.join(replicas[0]!.dataDir, XDS_CA_FILE), certFile: cred.certFile, keyFile: cred.keyFile };
    const xdsAddress = replicas.map((r) => `127.0.0.1:${r.xdsPort}`).join(',');
    gateway = await startEnvoy({
      name: 'ha-edge',
      bootstrapYaml: (adminPort: number) => bootstrapYaml({ gateway: 'edge', id: 'edge-1', xdsAddress, delta: true, tls, adminPort }),
    });
  });

  after(async () => {
    await gateway?.stop();
    await authz?.stop();
    await ratelimit?.stop();
    for (const r of replicas) await r.kill('SIGKILL');
    shared?.close();
    await app?.close();
    await redis?.stop();
    await consul?.stop();
  });

  test('standalone authz and ratelimit with --state consul: the shared CA on both sides of the gateway, real traffic', async (t) => {
    const good = await signToken(jwtKey, { iss: ISS, sub: 'alice' });
    const stranger = await signToken(await makeKey('ES256', 'ha-1'), { iss: ISS, sub: 'mallory' });
    await waitFor(async () => (await get('/secure', { authorization: `Bearer ${good}` })).status === 200, {
      what: 'a valid token through the gateway and the standalone authz',
      timeoutMs: 30_000,
    });
    assert.equal((await get('/secure')).status, 401, 'no token');
    assert.equal((await get('/secure', { authorization: `Bearer ${stranger}` })).status, 401, 'a token signed by another key');
    assert.equal((await get('/secure', { authorization: `Bearer ${good}` })).status, 200);
    // The standalone service decided (the replicas' own services are on ports no proxy is told about).
    const metrics = await (await fetch(`http://127.0.0.1:${authz.metricsPort}/metrics`)).text();
    const decided = (result: string) =>
      [...metrics.matchAll(new RegExp(`^signalbox_authz_decisions_total\\{[^}]*result="${result}"[^}]*\\} (\\d+)`, 'gm'))].reduce(
        (n, m) => n + Number(m[1]),
        0,
      );
    assert.ok(decided('allow') >= 2 && decided('deny') >= 2, `standalone authz decisions: ${decided('allow')} allow, ${decided('deny')} deny`);
    assert.match(authz.logs(), /signalbox authz serving/);
    assert.doesNotMatch(authz.logs() + ratelimit.logs(), /BEGIN|PRIVATE KEY/, 'no key material in the logs');

    // The standalone rate-limit service counts: the fourth request of a key within a minute is refused.
    if (Date.now() % 60_000 > 55_000) await new Promise((r) => setTimeout(r, 60_000 - (Date.now() % 60_000) + 50));
    const statuses: number[] = [];
    for (let i = 0; i <= PER_MINUTE; i++) statuses.push((await get('/keyed', { 'x-api-key': 'k-ha' })).status);
    assert.deepEqual(statuses, [...Array(PER_MINUTE).fill(200), 429]);
    const rl = (await (await fetch(`http://127.0.0.1:${ratelimit.metricsPort}/api/ratelimit`)).json()) as { tls: boolean; calls: number };
    assert.equal(rl.tls, true);
    assert.ok(rl.calls >= PER_MINUTE + 1, `standalone ratelimit calls: ${rl.calls}`);
    let holder: string | undefined;
    await waitFor(
      async () => {
        holder = (await view(replicas[0]!)).replicas.find((r) => r.proxies.includes('edge-1'))?.id;
        return holder !== undefined;
      },
      { what: "the gateway's replica in /api/replicas", timeoutMs: 10_000 },
    );
    t.diagnostic(`gateway on replica ${holder}; authz ${decided('allow')} allow / ${decided('deny')} deny; rate limit ${statuses.join(',')}`);
  });

  test('a wrong state key stops the standalone services at start, with a clear message', () => {
    for (const command of ['authz', 'ratelimit']) {
      const r = spawnSync(
        process.execPath,
        [path.join(repoRoot(), 'bin/signalbox.js'), command, '--policies', policies, `--${command}-port`, '0', '--metrics-port', 'off', ...stateArgs()],
        { env: { ...process.env, SIGNALBOX_STATE_KEY: randomBytes(32).toString('hex') }, encoding: 'utf8', timeout: 30_000 },
      );
      assert.notEqual(r.status, 0, `${command} exits`);
      assert.match(r.stderr, /ha\/state-key#check was encrypted with another state key \(key id [0-9a-f]{16}; the key given has id [0-9a-f]{16}\)/, r.stderr);
      assert.doesNotMatch(r.stderr + r.stdout, /serving|BEGIN/);
    }
  });

  test('a SIGKILLed leader is replaced within a few seconds, and shows as not alive; a clean stop removes its check', async (t) => {
    const before = await view(replicas[0]!);
    assert.ok(before.leader, 'a replica leads');
    assert.deepEqual(
      before.replicas.map((r) => [r.id, r.alive]),
      [
        ['r1', true],
        ['r2', true],
        ['r3', true],
      ],
    );
    const checks = await agentChecks();
    const ours = Object.entries(checks).filter(([, c]) => c.ServiceName === REPLICA_SERVICE);
    assert.equal(ours.length, 3, 'one liveness check per replica');
    assert.ok(ours.every(([, c]) => c.Status === 'passing'));

    const deadId = before.leader!;
    const dead = replicas[Number(deadId.slice(1)) - 1]!;
    const watcher = replicas.find((r) => r !== dead)!;
    const t0 = Date.now();
    await dead.kill('SIGKILL');
    let newLeaderMs: number | undefined;
    let notAliveMs: number | undefined;
    let newLeader: string | undefined;
    await waitFor(
      async () => {
        const v = await view(watcher).catch(() => undefined);
        if (!v) return false;
        if (newLeaderMs === undefined && v.leader && v.leader !== deadId) {
          newLeaderMs = Date.now() - t0;
          newLeader = v.leader;
        }
        if (notAliveMs === undefined && v.replicas.find((r) => r.id === deadId)?.alive === false) notAliveMs = Date.now() - t0;
        return newLeaderMs !== undefined && notAliveMs !== undefined;
      },
      { what: 'a new leader, and the dead replica not alive', timeoutMs: 30_000, intervalMs: 50 },
    );
    t.diagnostic(`SIGKILL of leader ${deadId}: ${newLeader} leads after ${newLeaderMs} ms; ${deadId} shown not alive after ${notAliveMs} ms`);
    assert.ok(newLeaderMs! < 6_000, `a new leader after ${newLeaderMs} ms`);
    assert.ok(notAliveMs! < 6_000, `not alive after ${notAliveMs} ms`);
    // Exactly one of the survivors leads, and both say so.
    const views = await Promise.all(live().map(view));
    assert.deepEqual(new Set(views.map((v) => v.leader)), new Set([newLeader]));
    const deadCheck = Object.values(await agentChecks()).filter((c) => c.ServiceName === REPLICA_SERVICE && c.Status !== 'passing');
    assert.equal(deadCheck.length, 1, "the dead replica's check is critical (the agent removes it a minute later)");

    // Traffic still flows through the gateway, with the standalone services, after the failover.
    const good = await signToken(jwtKey, { iss: ISS, sub: 'alice' });
    await waitFor(async () => (await get('/secure', { authorization: `Bearer ${good}` })).status === 200, {
      what: 'traffic after the failover',
      timeoutMs: 10_000,
    });

    // A clean stop of the new leader: the lock is released at once and its service leaves the agent.
    const leaving = replicas[Number(newLeader!.slice(1)) - 1]!;
    const last = live().find((r) => r !== leaving)!;
    const t1 = Date.now();
    await leaving.kill('SIGTERM');
    await waitFor(async () => (await view(last)).leader === `r${replicas.indexOf(last) + 1}`, {
      what: 'the last replica leads',
      timeoutMs: 10_000,
      intervalMs: 50,
    });
    const handover = Date.now() - t1;
    t.diagnostic(`clean stop of ${newLeader}: the last replica leads ${handover} ms after SIGTERM`);
    const services = Object.values(await agentServices()).filter((s) => s.Service === REPLICA_SERVICE);
    assert.equal(services.length, 2, 'the cleanly stopped replica deregistered its service (the killed one awaits the reaper)');
    await waitFor(async () => (await get('/secure', { authorization: `Bearer ${good}` })).status === 200, {
      what: 'traffic on one replica',
      timeoutMs: 10_000,
    });
  });
});
