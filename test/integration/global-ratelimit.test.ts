// RateLimitPolicy `global` through real Envoys and a real Redis (never mocked): one counter shared
// by two gateway Envoys and a sidecar; Redis killed under traffic (failureMode allow lets every
// request through, deny answers 503; counting resumes when Redis is back); a local bucket in front
// of a global limit answers before the rate-limit service is asked. Redis runs with a password,
// which must not show in /api/status, /metrics or the log.
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { startControlUpstream, type ControlUpstream } from '../helpers/control-upstream.js';
import { startEnvoy, type Envoy } from '../helpers/envoy.js';
import { startMeshApp, type MeshApp } from '../helpers/mesh-app.js';
import { freePort, waitFor } from '../helpers/net.js';
import { closeClients, get, type Reply } from '../helpers/ratelimit-client.js';
import { startRedis, type RedisServer } from '../helpers/redis.js';
import { startSignalbox, type SignalboxProcess } from '../helpers/signalbox.js';
import http from 'node:http';

const LIMIT = 10;
const PASSWORD = 'pw-7f3a9c1e5b';

function policies(p: { a: number; b: number; appPort: number; inbound: number; backend: number }): string {
  return `apiVersion: signalbox.dev/v1alpha1
kind: Service
metadata: { name: backend }
spec:
  port: 8080
  endpoints: [ { address: 127.0.0.1, port: ${p.backend} } ]
---
apiVersion: signalbox.dev/v1alpha1
kind: Service
metadata: { name: client }
spec:
  port: 8080
  endpoints: [ { address: 127.0.0.1, port: ${p.appPort}, sidecarPort: ${p.inbound} } ]
---
apiVersion: signalbox.dev/v1alpha1
kind: Gateway
metadata: { name: gw-a }
spec:
  listeners: [ { name: http, port: ${p.a}, protocol: HTTP } ]
---
apiVersion: signalbox.dev/v1alpha1
kind: Gateway
metadata: { name: gw-b }
spec:
  listeners: [ { name: http, port: ${p.b}, protocol: HTTP } ]
---
apiVersion: signalbox.dev/v1alpha1
kind: HTTPRoute
metadata: { name: api }
spec:
  parentRefs: [ { kind: Gateway, name: gw-a }, { kind: Gateway, name: gw-b }, { kind: Service, name: backend } ]
  rules:
    - name: keyed
      matches: [ { path: { value: /keyed } } ]
      backendRefs: [ { name: backend } ]
    - name: allow
      matches: [ { path: { value: /allow } } ]
      backendRefs: [ { name: backend } ]
    - name: deny
      matches: [ { path: { value: /deny } } ]
      backendRefs: [ { name: backend } ]
    - name: combined
      matches: [ { path: { value: /combined } } ]
      backendRefs: [ { name: backend } ]
---
apiVersion: signalbox.dev/v1alpha1
kind: RateLimitPolicy
metadata: { name: per-key }
spec:
  targetRef: { kind: HTTPRoute, name: api, sectionName: keyed }
  global:
    limits: [ { requests: ${LIMIT}, per: second, by: { header: x-api-key } } ]
---
apiVersion: signalbox.dev/v1alpha1
kind: RateLimitPolicy
metadata: { name: open-on-failure }
spec:
  targetRef: { kind: HTTPRoute, name: api, sectionName: allow }
  global:
    failureMode: allow
    limits: [ { requests: 3, per: minute, by: { header: x-api-key } } ]
---
apiVersion: signalbox.dev/v1alpha1
kind: RateLimitPolicy
metadata: { name: closed-on-failure }
spec:
  targetRef: { kind: HTTPRoute, name: api, sectionName: deny }
  global:
    failureMode: deny
    limits: [ { requests: 3, per: minute, by: { header: x-api-key } } ]
---
apiVersion: signalbox.dev/v1alpha1
kind: RateLimitPolicy
metadata: { name: shielded }
spec:
  targetRef: { kind: HTTPRoute, name: api, sectionName: combined }
  local: { requests: 3, per: 1m }
  global:
    limits: [ { requests: 1000, per: minute } ]
`;
}

/** A GET to a sidecar's outbound listener, as its app would send it (Host names the Service). */
function viaSidecar(port: number, p: string, headers: Record<string, string>): Promise<Reply> {
  return new Promise((resolve, reject) => {
    const req = http.request({ host: '127.0.0.1', port, path: p, headers: { host: 'backend', ...headers } }, (res) => {
      res.resume();
      res.on('end', () => resolve({ status: res.statusCode ?? 0, headers: res.headers, at: performance.now() }));
    });
    req.on('error', reject);
    req.setTimeout(10_000, () => req.destroy(new Error('sidecar GET timed out')));
    req.end();
  });
}

describe('global rate limits: real Envoys, real Redis', () => {
  let dir: string;
  let redis: RedisServer;
  let sb: SignalboxProcess;
  let backend: ControlUpstream;
  let app: MeshApp;
  const envoys: Envoy[] = [];
  const ports = { a: 0, b: 0, appPort: 0, inbound: 0, outbound: 0, backend: 0 };

  const calls = async (): Promise<number> => (await sb.admin('/api/ratelimit')).calls as number;

  before(async () => {
    redis = await startRedis({ password: PASSWORD });
    backend = await startControlUpstream('backend');
    ports.a = await freePort();
    ports.b = await freePort();
    ports.inbound = await freePort();
    ports.outbound = await freePort();
    app = await startMeshApp('client', () => ports.outbound);
    ports.appPort = app.port;
    ports.backend = backend.port;
    dir = mkdtempSync(path.join(os.tmpdir(), 'sb-global-rl-'));
    writeFileSync(path.join(dir, 'policies.yaml'), policies(ports));
    const url = `redis://:${PASSWORD}@127.0.0.1:${redis.port}`;
    sb = await startSignalbox({ policies: dir, extraArgs: ['--ratelimit-port', '0', '--redis-url', url] });
    envoys.push(await startEnvoy({ name: 'grl-gw-a', bootstrapYaml: await sb.bootstrap({ gateway: 'gw-a', id: 'grl-gw-a' }) }));
    envoys.push(await startEnvoy({ name: 'grl-gw-b', bootstrapYaml: await sb.bootstrap({ gateway: 'gw-b', id: 'grl-gw-b' }) }));
    envoys.push(
      await startEnvoy({
        name: 'grl-sidecar',
        bootstrapYaml: await sb.bootstrap({
          sidecar: { service: 'client', instance: 'client-1', appPort: ports.appPort, inboundPort: ports.inbound, outboundPort: ports.outbound },
        }),
      }),
    );
    await waitFor(
      async () =>
        (await get(ports.a, '/keyed', { headers: { 'x-api-key': 'warm-a' } }).catch(() => undefined))?.status === 200 &&
        (await get(ports.b, '/keyed', { headers: { 'x-api-key': 'warm-b' } }).catch(() => undefined))?.status === 200 &&
        (await viaSidecar(ports.outbound, '/keyed', { 'x-api-key': 'warm-s' }).catch(() => undefined))?.status === 200,
      { what: 'both gateways and the sidecar serving', timeoutMs: 30_000 },
    );
    await waitFor(async () => (await sb.admin('/api/ratelimit')).redis.up === true, { what: 'Redis connected', timeoutMs: 10_000 });
  });

  after(async () => {
    closeClients();
    for (const e of envoys) await e.stop();
    await sb?.kill();
    await redis?.stop();
    await backend?.close();
    await app?.close();
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  test(`one key hammered through two gateways and a sidecar: at most ${LIMIT} (+1) allowed per second in total; another key is unaffected; the window resets`, async () => {
    const senders: (() => Promise<Reply>)[] = [
      () => get(ports.a, '/keyed', { headers: { 'x-api-key': 'alice' } }),
      () => get(ports.b, '/keyed', { headers: { 'x-api-key': 'alice' } }),
      () => viaSidecar(ports.outbound, '/keyed', { 'x-api-key': 'alice' }),
    ];
    // Start just after a second boundary (the windows are aligned to the clock), for ~3.2 s.
    await new Promise((r) => setTimeout(r, 1000 - (Date.now() % 1000) + 20));
    const end = Date.now() + 3_200;
    // The service decided somewhere between send (t0) and answer (t1). Under load an answer can
    // come well after its second ended, so a request counts for second S as "surely in S" only
    // when both ends lie in S (for the upper bound), and as "maybe in S" when either does (for the
    // lower bound): neither bound can fail because of where a slow answer fell.
    const seen: { second: number; t0: number; t1: number; status: number; via: number; reply: Reply }[] = [];
    await Promise.all(
      senders.map(async (send, via) => {
        while (Date.now() < end) {
          const t0 = Date.now();
          const reply = await send();
          const t1 = Date.now();
          seen.push({ second: Math.floor(t0 / 1000), t0, t1, status: reply.status, via, reply });
        }
      }),
    );
    const seconds = [...new Set(seen.map((s) => s.second))].sort();
    const full = seconds.slice(0, 3); // the last second is only partly sent in
    const surely = (s: (typeof seen)[number], sec: number) => Math.floor(s.t0 / 1000) === sec && Math.floor(s.t1 / 1000) === sec;
    const maybe = (s: (typeof seen)[number], sec: number) => Math.floor(s.t0 / 1000) <= sec && Math.floor(s.t1 / 1000) >= sec;
    const perSecond = full.map((sec) => ({
      sec,
      allowed: seen.filter((s) => surely(s, sec) && s.status === 200).length,
      maybeAllowed: seen.filter((s) => maybe(s, sec) && s.status === 200).length,
      limited: seen.filter((s) => maybe(s, sec) && s.status === 429).length,
      byVia: [0, 1, 2].map((v) => seen.filter((s) => surely(s, sec) && s.status === 200 && s.via === v).length),
    }));
    console.log(
      `global limit ${LIMIT}/s per key, 2 gateways + 1 sidecar: ${perSecond.map((p) => `${p.allowed} allowed (gw-a ${p.byVia[0]}, gw-b ${p.byVia[1]}, sidecar ${p.byVia[2]}) / ${p.limited} limited`).join('; ')}; ${seen.length} requests`,
    );
    assert.deepEqual(
      seen.filter((s) => s.status !== 200 && s.status !== 429).map((s) => s.status),
      [],
      'only 200 and 429',
    );
    for (const p of perSecond) {
      assert.ok(p.allowed <= LIMIT + 1, `second ${p.sec}: ${p.allowed} allowed, more than ${LIMIT} + 1`);
      assert.ok(p.limited > 0, `second ${p.sec}: the load was above the limit`);
      // The window resets on time: every second lets requests through again.
      assert.ok(p.maybeAllowed >= LIMIT - 1, `second ${p.sec}: only ${p.maybeAllowed} allowed after the window reset`);
    }
    assert.ok(
      perSecond.some((p) => p.byVia.filter((n) => n > 0).length >= 2),
      'allowed requests came through more than one proxy in a second (one shared counter)',
    );
    const limited = seen.find((s) => s.status === 429)!.reply;
    assert.match(String(limited.headers['x-ratelimit-limit']), new RegExp(`^${LIMIT}\\b`));
    assert.equal(limited.headers['x-ratelimit-remaining'], '0');
    assert.ok(['0', '1'].includes(String(limited.headers['x-ratelimit-reset'])), `x-ratelimit-reset ${limited.headers['x-ratelimit-reset']}`);
    assert.equal(limited.headers['retry-after'], '1');
    assert.equal(limited.headers['x-ratelimit-policy'], 'per-key');
    // Another key has its own counter, in the same second.
    const bob = await get(ports.a, '/keyed', { headers: { 'x-api-key': 'bob' } });
    assert.equal(bob.status, 200);
    assert.match(String(bob.headers['x-ratelimit-remaining']), /^\d+$/);
  });

  test('a local bucket in front of a global limit answers before the rate-limit service is called', async () => {
    const before = await calls();
    const statuses: number[] = [];
    for (let i = 0; i < 10; i++) statuses.push((await get(ports.a, '/combined')).status);
    const after = await calls();
    console.log(`local 3/min + global 1000/min: statuses ${statuses.join(',')}; rate-limit service calls ${after - before}`);
    assert.deepEqual(statuses, [200, 200, 200, 429, 429, 429, 429, 429, 429, 429]);
    assert.equal(after - before, 3, 'only the requests the local bucket let through reached the service');
  });

  test('the Redis password shows nowhere: /api/status, /api/ratelimit, /metrics, the log', async () => {
    const status = await sb.adminText('/api/status');
    const rl = await sb.adminText('/api/ratelimit');
    const metrics = await sb.adminText('/metrics');
    for (const [what, text] of [
      ['/api/status', status],
      ['/api/ratelimit', rl],
      ['/metrics', metrics],
      ['log', sb.logs()],
    ] as const)
      assert.ok(!text.includes(PASSWORD), `${what} holds the password`);
    assert.match(rl, /redis:\/\/:\*\*\*@127\.0\.0\.1/);
    assert.match(metrics, /signalbox_ratelimit_policy_failure_mode\{policy="closed-on-failure",failure_mode="deny"\} 1/);
    assert.match(metrics, /signalbox_ratelimit_decisions_total\{policy="per-key",result="limited"\} [1-9]/);
    assert.match(metrics, /signalbox_ratelimit_redis_up 1/);
    // Each counting command's time, in the histogram the service observes with shared label objects.
    assert.match(metrics, /signalbox_ratelimit_redis_duration_seconds_count\{result="ok"\} [1-9]/);
    assert.match(metrics, /signalbox_ratelimit_redis_duration_seconds_bucket\{le="0\.25",result="ok"\} [1-9]/);
  });

  test('Redis killed under traffic: failureMode allow lets every request through, deny answers 503; no crash; counting resumes after Redis returns', async () => {
    let n = 0;
    let stop = false;
    const allowStatuses: number[] = [];
    const denyStatuses: number[] = [];
    // Fresh keys each request: nothing is over its limit, so every refusal is the outage's.
    const traffic = Promise.all([
      (async () => {
        while (!stop) allowStatuses.push((await get(ports.a, '/allow', { headers: { 'x-api-key': `k${n++}` } })).status);
      })(),
      (async () => {
        while (!stop) denyStatuses.push((await get(ports.b, '/deny', { headers: { 'x-api-key': `k${n++}` } })).status);
      })(),
    ]);
    await new Promise((r) => setTimeout(r, 300));
    const beforeKill = { allow: allowStatuses.length, deny: denyStatuses.length };
    await redis.kill();
    await waitFor(async () => (await sb.admin('/api/ratelimit')).redis.up === false, { what: 'Redis seen down', timeoutMs: 5_000 });
    await new Promise((r) => setTimeout(r, 800));
    const down = await sb.admin('/api/status');
    const duringDeny = denyStatuses.slice(beforeKill.deny);
    await redis.start();
    await waitFor(async () => (await sb.admin('/api/ratelimit')).redis.up === true, { what: 'Redis seen up again', timeoutMs: 10_000 });
    await new Promise((r) => setTimeout(r, 300));
    stop = true;
    await traffic;
    const count = (xs: number[], s: number) => xs.filter((x) => x === s).length;
    console.log(
      `Redis down: allow route ${allowStatuses.length} requests, ${count(allowStatuses, 200)} x 200, failed ${allowStatuses.length - count(allowStatuses, 200)}; ` +
        `deny route ${denyStatuses.length} requests, ${count(denyStatuses, 200)} x 200, ${count(denyStatuses, 503)} x 503 (${count(duringDeny, 503)} of ${duringDeny.length} while down)`,
    );
    assert.equal(allowStatuses.length - count(allowStatuses, 200), 0, 'failureMode allow: not one request failed');
    assert.ok(count(duringDeny, 503) > 0, 'failureMode deny: 503 while Redis is down');
    assert.deepEqual(
      denyStatuses.filter((s) => s !== 200 && s !== 503),
      [],
      'deny route: only 200 or 503',
    );
    assert.ok(
      down.warnings.some((w: string) => /Redis .* cannot be reached/.test(w) && /closed-on-failure \(failureMode deny\) get 503/.test(w)),
      'the outage is a warning in /api/status',
    );
    assert.ok(!JSON.stringify(down).includes(PASSWORD));
    // No crash: the control plane still answers.
    assert.equal((await fetch(`http://127.0.0.1:${sb.adminPort}/healthz`)).status, 200);
    // Counting resumes: 3 per minute per key, on both failure modes.
    for (const [port, p] of [
      [ports.a, '/allow'],
      [ports.b, '/deny'],
    ] as const) {
      const statuses: number[] = [];
      for (let i = 0; i < 5; i++) statuses.push((await get(port, p, { headers: { 'x-api-key': 'after-outage' } })).status);
      assert.deepEqual(statuses, [200, 200, 200, 429, 429], `${p} after Redis returned`);
    }
    const metrics = await sb.adminText('/metrics');
    assert.match(metrics, /signalbox_ratelimit_decisions_total\{policy="open-on-failure",result="failure_allowed"\} [1-9]/);
    assert.match(metrics, /signalbox_ratelimit_decisions_total\{policy="closed-on-failure",result="failure_denied"\} [1-9]/);
    assert.match(metrics, /signalbox_ratelimit_redis_errors_total\{reason="[a-z]+"\} [1-9]/);
  });
});
