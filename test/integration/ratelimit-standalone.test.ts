// `signalbox ratelimit`, the rate-limit service run alone (a real child process), against a real
// Redis (with a password, given by file) and a real Envoy gateway: the control plane points the
// gateway's rate-limit cluster at the standalone service (--ratelimit-address-for-proxies), over
// mTLS with the mesh CA. Real HTTP traffic through the gateway is counted by the standalone service
// in Redis (the control plane's embedded service is never called); ShouldRateLimit answers over
// its port to a caller with a mesh certificate and to nobody else; the password shows nowhere.
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { createHash } from 'node:crypto';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import http2 from 'node:http2';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { CertificateAuthority, type IssuedCert } from '../../src/ca/ca.js';
import { BUILTIN_DEFAULTS } from '../../src/model/model.js';
import { SHOULD_RATE_LIMIT_PATH } from '../../src/ratelimit/service.js';
import { LIMIT_ENTRY, RATELIMIT_DOMAIN } from '../../src/xds/translator/filters/global-ratelimit.js';
import { lookupType } from '../../src/xds/resources/protos.js';
import { startControlUpstream, type ControlUpstream } from '../helpers/control-upstream.js';
import { repoRoot, startEnvoy, type Envoy } from '../helpers/envoy.js';
import { freePort, waitFor } from '../helpers/net.js';
import { closeClients, get } from '../helpers/ratelimit-client.js';
import { startRedis, type RedisServer } from '../helpers/redis.js';
import { startSignalbox, type SignalboxProcess } from '../helpers/signalbox.js';

const PASSWORD = 'pw-standalone-2b8e61d4';
const PER_MINUTE = 3;

function policies(p: { gw: number; backend: number }): string {
  return `apiVersion: signalbox.dev/v1alpha1
kind: Service
metadata: { name: backend }
spec:
  port: 8080
  endpoints: [ { address: 127.0.0.1, port: ${p.backend} } ]
---
apiVersion: signalbox.dev/v1alpha1
kind: Gateway
metadata: { name: gw }
spec:
  listeners: [ { name: http, port: ${p.gw}, protocol: HTTP } ]
---
apiVersion: signalbox.dev/v1alpha1
kind: HTTPRoute
metadata: { name: api }
spec:
  parentRefs: [ { kind: Gateway, name: gw } ]
  rules:
    - name: keyed
      matches: [ { path: { value: /keyed } } ]
      backendRefs: [ { name: backend } ]
---
apiVersion: signalbox.dev/v1alpha1
kind: RateLimitPolicy
metadata: { name: per-key }
spec:
  targetRef: { kind: HTTPRoute, name: api, sectionName: keyed }
  global:
    failureMode: deny
    limits: [ { requests: ${PER_MINUTE}, per: minute, by: { header: x-api-key } } ]
`;
}

/** The windows are whole minutes of the clock: a run that would straddle a boundary waits for it. */
async function clearOfMinuteBoundary(): Promise<void> {
  if (Date.now() % 60_000 > 55_000) await new Promise((r) => setTimeout(r, 60_000 - (Date.now() % 60_000) + 50));
}

interface GrpcAnswer {
  grpcStatus?: string;
  body?: Buffer;
  error?: string;
}

/** One unary gRPC call over HTTP/2 (TLS with `cert`, or none): the grpc-status and the message. */
function grpcCall(port: number, ca: string, cert: IssuedCert | undefined, message: Uint8Array): Promise<GrpcAnswer> {
  return new Promise((resolve) => {
    const session = http2.connect(`https://127.0.0.1:${port}`, { ca, ...(cert ? { cert: cert.certificatePem, key: cert.privateKeyPem } : {}) });
    let settled = false;
    let status: string | undefined;
    const chunks: Buffer[] = [];
    const done = (a: GrpcAnswer) => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      session.destroy();
      resolve(a);
    };
    const timer = setTimeout(() => done({ error: 'no answer in 5s' }), 5_000);
    session.on('error', (e) => done({ error: e.message }));
    session.on('close', () => done({ error: 'session closed without an answer' }));
    const s = session.request({ ':method': 'POST', ':path': SHOULD_RATE_LIMIT_PATH, 'content-type': 'application/grpc', te: 'trailers' });
    s.on('error', (e) => done({ error: e.message }));
    s.on('response', (h) => (status = h['grpc-status'] as string | undefined));
    s.on('trailers', (t) => (status = (t['grpc-status'] as string | undefined) ?? status));
    s.on('data', (c: Buffer) => chunks.push(c));
    s.on('end', () => {
      const all = Buffer.concat(chunks);
      done({ grpcStatus: status, body: all.length >= 5 ? all.subarray(5, 5 + all.readUInt32BE(1)) : undefined });
    });
    const frame = Buffer.alloc(5 + message.length);
    frame.writeUInt32BE(message.length, 1);
    Buffer.from(message).copy(frame, 5);
    s.end(frame);
  });
}

describe('signalbox ratelimit (standalone): real Redis, real Envoy', () => {
  let dir: string;
  let secrets: string;
  let redis: RedisServer;
  let sb: SignalboxProcess;
  let backend: ControlUpstream;
  let gateway: Envoy;
  let child: ChildProcess | undefined;
  let childLog = '';
  let childExited = true;
  const ports = { gw: 0, ratelimit: 0, metrics: 0 };
  const standalone = async <T = any>(p: string): Promise<T> => (await fetch(`http://127.0.0.1:${ports.metrics}${p}`)).json() as Promise<T>;
  const standaloneText = async (p: string): Promise<string> => (await fetch(`http://127.0.0.1:${ports.metrics}${p}`)).text();
  /** The limit's counters in Redis: key -> count. */
  const redisCounters = async (): Promise<Map<string, number>> => {
    const keys = (await redis.command(['KEYS', 'signalbox:rl:per-key/0:*'])).split('\r\n').filter((l) => l.startsWith('signalbox:rl:'));
    return new Map(await Promise.all(keys.map(async (k) => [k, Number((await redis.command(['GET', k])).split('\r\n')[1])] as [string, number])));
  };

  const launch = async () => {
    const c = spawn(
      process.execPath,
      [
        path.join(repoRoot(), 'bin/signalbox.js'),
        'ratelimit',
        '--policies',
        dir,
        '--data-dir',
        sb.dataDir,
        '--ratelimit-address',
        '127.0.0.1',
        '--ratelimit-port',
        String(ports.ratelimit),
        '--metrics-port',
        String(ports.metrics),
        // Over Redis's Unix socket (same host), the password from its file: the counters below are
        // read back over TCP, so they prove the socket reached the same Redis.
        '--redis-url',
        `redis+unix://${redis.socket}`,
        '--redis-password-file',
        path.join(secrets, 'redis-password'),
        '--watch-debounce-ms',
        '50',
      ],
      { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, REDIS_URL: '', REDIS_PASSWORD: '' } },
    );
    child = c;
    childExited = false;
    c.on('exit', () => (childExited = true));
    const keep = (b: Buffer) => {
      childLog = (childLog + b.toString()).slice(-200_000);
    };
    c.stdout!.on('data', keep);
    c.stderr!.on('data', keep);
    await waitFor(
      async () => {
        if (childExited) throw new Error(`signalbox ratelimit exited:\n${childLog}`);
        return (await fetch(`http://127.0.0.1:${ports.metrics}/readyz`).catch(() => undefined))?.status === 200;
      },
      { what: 'signalbox ratelimit ready', timeoutMs: 20_000 },
    );
  };
  const stopChild = async () => {
    if (!child || childExited) return;
    const done = new Promise((r) => child!.once('exit', r));
    child.kill('SIGTERM');
    await done;
  };

  before(async () => {
    redis = await startRedis({ password: PASSWORD, unixSocket: true });
    backend = await startControlUpstream('backend');
    ports.gw = await freePort();
    ports.ratelimit = await freePort();
    ports.metrics = await freePort();
    dir = mkdtempSync(path.join(os.tmpdir(), 'sb-rl-standalone-'));
    secrets = mkdtempSync(path.join(os.tmpdir(), 'sb-rl-secrets-'));
    writeFileSync(path.join(secrets, 'redis-password'), `${PASSWORD}\n`, { mode: 0o600 });
    writeFileSync(path.join(dir, 'policies.yaml'), policies({ gw: ports.gw, backend: backend.port }));
    // The control plane: its own service on a port nobody is told about; proxies use the standalone one.
    sb = await startSignalbox({
      policies: dir,
      extraArgs: [
        '--ratelimit-port',
        '0',
        '--ratelimit-address-for-proxies',
        `127.0.0.1:${ports.ratelimit}`,
        '--redis-url',
        redis.url,
        '--redis-password-file',
        path.join(secrets, 'redis-password'),
      ],
    });
    await launch();
    gateway = await startEnvoy({ name: 'rl-standalone-gw', bootstrapYaml: await sb.bootstrap({ gateway: 'gw', id: 'rl-standalone-gw' }) });
    await waitFor(async () => (await get(ports.gw, '/keyed', { headers: { 'x-api-key': 'warm-up' } }).catch(() => undefined))?.status === 200, {
      what: 'the gateway serving through the standalone service',
      timeoutMs: 30_000,
    });
    await waitFor(async () => (await standalone('/api/ratelimit')).redis.up === true, { what: 'the standalone service connected to Redis', timeoutMs: 10_000 });
  });

  after(async () => {
    closeClients();
    await gateway?.stop();
    await stopChild();
    await sb?.kill();
    await redis?.stop();
    await backend?.close();
    if (dir) rmSync(dir, { recursive: true, force: true });
    if (secrets) rmSync(secrets, { recursive: true, force: true });
  });

  test('HTTP traffic through a real gateway is counted by the standalone service in Redis, not by the control plane', async () => {
    await clearOfMinuteBoundary();
    const callsBefore = (await standalone('/api/ratelimit')).calls as number;
    const statuses: number[] = [];
    for (let i = 0; i < PER_MINUTE + 2; i++) statuses.push((await get(ports.gw, '/keyed', { headers: { 'x-api-key': 'through-envoy' } })).status);
    console.log(`standalone service, ${PER_MINUTE}/min per key through a real gateway: statuses ${statuses.join(',')}`);
    assert.deepEqual(statuses, [...Array(PER_MINUTE).fill(200), 429, 429]);
    const rl = await standalone('/api/ratelimit');
    assert.equal(rl.calls - callsBefore, PER_MINUTE + 2, 'every request reached the standalone service');
    assert.equal(rl.tls, true);
    assert.deepEqual(
      rl.policies.map((p: { policy: string; failureMode: string }) => [p.policy, p.failureMode]),
      [['per-key', 'deny']],
    );
    const embedded = await sb.admin('/api/ratelimit');
    assert.equal(embedded.calls, 0, "the control plane's own service was never called");
    assert.equal(embedded.endpointForProxies.port, ports.ratelimit);
    // The counter is in Redis (the API key hashed, never in clear), with a TTL within its window.
    // The request after the one that went over is answered from the service's over-limit cache.
    const counters = await redisCounters();
    assert.ok(
      [...counters.keys()].every((k) => !k.includes('through-envoy')),
      'the API key is not in Redis in clear',
    );
    const key = [...counters].find(([, n]) => n === PER_MINUTE + 1)?.[0];
    assert.ok(key, `a counter holding ${PER_MINUTE + 1}: ${JSON.stringify([...counters])}`);
    const ttl = Number(/^:(-?\d+)/.exec(await redis.command(['PTTL', key]))?.[1]);
    assert.ok(ttl > 0 && ttl <= 61_000, `the counter expires with its window (PTTL ${ttl})`);
    const metrics = await standaloneText('/metrics');
    assert.match(metrics, /signalbox_ratelimit_decisions_total\{policy="per-key",result="limited"\} 2\n/);
    assert.match(metrics, /signalbox_ratelimit_local_cache_hits_total 1\n/);
    assert.match(metrics, /signalbox_ratelimit_redis_up 1\n/);
  });

  test('ShouldRateLimit over its port: a mesh certificate gets answers counted in Redis; no certificate, no answer', async () => {
    const ca = await CertificateAuthority.open({ dataDir: sb.dataDir, trustDomain: BUILTIN_DEFAULTS.trustDomain });
    const proxy = await ca.issue(`spiffe://${BUILTIN_DEFAULTS.trustDomain}/gateway/gw`, 3_600_000);
    const Req = lookupType('envoy.service.ratelimit.v3.RateLimitRequest');
    const Res = lookupType('envoy.service.ratelimit.v3.RateLimitResponse');
    const key = `direct-${Date.now()}`;
    const request = Req.encode(
      Req.fromObject({
        domain: RATELIMIT_DOMAIN,
        descriptors: [
          {
            entries: [
              { key: LIMIT_ENTRY, value: 'per-key/0' },
              { key: 'x-api-key', value: key },
            ],
          },
        ],
        hits_addend: 1,
      }),
    ).finish();
    await clearOfMinuteBoundary();
    const codes: string[] = [];
    for (let i = 0; i < PER_MINUTE + 1; i++) {
      const a = await grpcCall(ports.ratelimit, ca.trustBundlePem, proxy, request);
      assert.equal(a.grpcStatus, '0', `call ${i}: ${a.error ?? ''}`);
      const o = Res.toObject(Res.decode(a.body!), { enums: String }) as { overall_code: string; statuses: { limit_remaining?: number }[] };
      codes.push(o.overall_code);
    }
    assert.deepEqual(codes, [...Array(PER_MINUTE).fill('OK'), 'OVER_LIMIT']);
    const hashed = createHash('sha256').update(key).digest('base64url').slice(0, 22);
    const mine = [...(await redisCounters())].filter(([k]) => k.endsWith(`:${hashed}`));
    assert.deepEqual(
      mine.map(([, n]) => n),
      [PER_MINUTE + 1],
      `the Redis counter of this key holds the ${PER_MINUTE + 1} calls`,
    );
    // Without a client certificate the TLS handshake is refused: no answer, nothing counted.
    const refused = await grpcCall(ports.ratelimit, ca.trustBundlePem, undefined, request);
    assert.equal(refused.grpcStatus, undefined);
    assert.ok(refused.error, 'no answer without a mesh certificate');
  });

  test('the gateway depends on the standalone service: stopped, failureMode deny answers 503; restarted, counting resumes', async () => {
    await stopChild();
    const down: number[] = [];
    for (let i = 0; i < 3; i++) down.push((await get(ports.gw, '/keyed', { headers: { 'x-api-key': `down-${i}` } })).status);
    assert.deepEqual(down, [503, 503, 503], 'failureMode deny while the service the gateway was pointed at is gone');
    await launch();
    const key = `after-restart-${Date.now()}`;
    await waitFor(async () => (await get(ports.gw, '/keyed', { headers: { 'x-api-key': `${key}-probe` } })).status === 200, {
      what: 'the gateway reaching the restarted service',
      timeoutMs: 20_000,
    });
    assert.equal((await get(ports.gw, '/keyed', { headers: { 'x-api-key': key } })).status, 200);
    assert.ok((await standalone('/api/ratelimit')).calls >= 1);
  });

  test('a policy edit reaches the standalone service; a broken edit changes nothing; the password shows nowhere', async () => {
    const file = path.join(dir, 'policies.yaml');
    const good = policies({ gw: ports.gw, backend: backend.port });
    writeFileSync(file, `${good}kind: [broken\n`);
    await waitFor(() => /policy directory rejected/.test(childLog), { what: 'the broken edit rejected', timeoutMs: 10_000 });
    assert.deepEqual(
      (await standalone('/api/ratelimit')).policies.map((p: { policy: string }) => p.policy),
      ['per-key'],
      'the last good policies are kept',
    );
    writeFileSync(file, good.replace('failureMode: deny', 'failureMode: allow'));
    await waitFor(async () => (await standalone('/api/ratelimit')).policies[0]?.failureMode === 'allow', { what: 'the edit applied', timeoutMs: 10_000 });
    const api = await standaloneText('/api/ratelimit');
    const metrics = await standaloneText('/metrics');
    for (const [what, text] of [
      ['/api/ratelimit', api],
      ['/metrics', metrics],
      ['log', childLog],
    ] as const)
      assert.ok(!text.includes(PASSWORD), `${what} holds the password`);
    assert.match(childLog, /signalbox ratelimit serving/);
  });
});
