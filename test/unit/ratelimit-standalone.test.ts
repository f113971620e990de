// `signalbox ratelimit` without Redis: every bad flag is refused before anything listens (the port
// stays free) with a message that never holds the Redis password; --insecure serves plain text
// with a warning; with Redis unreachable it still starts, shows Redis down with the URL redacted,
// and answers by the policy's failureMode. (With a real Redis and a real Envoy:
// test/integration/ratelimit-standalone.test.ts.)
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import http2 from 'node:http2';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { after, describe, test } from 'node:test';
import { startStandaloneRateLimit } from '../../src/cli/ratelimit.js';
import { run } from '../../src/cli/main.js';
import { createLogger } from '../../src/observability/logger.js';
import { SHOULD_RATE_LIMIT_PATH } from '../../src/ratelimit/service.js';
import { lookupType } from '../../src/xds/resources/protos.js';
import { freePort } from '../helpers/net.js';
import { doc, docs, policyDir, removePolicyDirs } from './policy-dir.js';

const silent = createLogger({ level: 'silent' });
const SECRET = 'hunter2-standalone';
const tmp: string[] = [];
after(() => {
  removePolicyDirs();
  for (const d of tmp) rmSync(d, { recursive: true, force: true });
});

const FILES = {
  'a.yaml': docs(
    doc('Gateway', 'public', '{ listeners: [ { name: http, port: 8080, protocol: HTTP } ] }'),
    doc(
      'RateLimitPolicy',
      'closed',
      '{ targetRef: { kind: Gateway, name: public }, global: { failureMode: deny, limits: [ { requests: 5, per: minute, by: { header: x-key } } ] } }',
    ),
  ),
};

/** Whether nothing listens on the port (it can be bound). */
function portFree(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const s = net.createServer();
    s.once('error', () => resolve(false));
    s.listen(port, '127.0.0.1', () => s.close(() => resolve(true)));
  });
}

/** One plain-text unary gRPC call: the grpc-status it ends with. */
function grpcStatus(port: number, message: Uint8Array): Promise<string | undefined> {
  return new Promise((resolve, reject) => {
    const session = http2.connect(`http://127.0.0.1:${port}`);
    session.on('error', reject);
    const s = session.request({ ':method': 'POST', ':path': SHOULD_RATE_LIMIT_PATH, 'content-type': 'application/grpc', te: 'trailers' });
    let status: string | undefined;
    s.on('response', (h) => (status = h['grpc-status'] as string | undefined));
    s.on('trailers', (t) => (status = (t['grpc-status'] as string | undefined) ?? status));
    s.on('error', reject);
    s.resume();
    s.on('close', () => {
      session.close();
      resolve(status);
    });
    const frame = Buffer.alloc(5 + message.length);
    frame.writeUInt32BE(message.length, 1);
    Buffer.from(message).copy(frame, 5);
    s.end(frame);
  });
}

describe('signalbox ratelimit (standalone)', () => {
  test('bad flags are refused before anything listens, and the password never shows in the message', async () => {
    const dir = policyDir(FILES);
    const port = await freePort();
    const base = { policies: dir, 'ratelimit-address': '127.0.0.1', 'ratelimit-port': String(port), 'metrics-port': 'off', insecure: true };
    const empty = mkdtempSync(path.join(os.tmpdir(), 'sb-rl-flags-'));
    tmp.push(empty);
    writeFileSync(path.join(empty, 'empty'), '\n');
    const cases: [Record<string, string | boolean>, NodeJS.ProcessEnv, RegExp][] = [
      [{ 'redis-url': `http://:${SECRET}@127.0.0.1:6379` }, {}, /--redis-url must start with redis:\/\/, rediss:\/\/ \(TLS\), unix:\/\/ or redis\+unix:\/\//],
      [{ 'redis-url': `redis+unix://u:${SECRET}@localhost/tmp/redis.sock` }, {}, /a Unix socket URL carries no credentials/],
      [{ 'redis-url': 'unix:///tmp/redis.sock?db=x' }, {}, /\?db= is a database number/],
      [{ 'redis-url': 'unix://redis.internal/tmp/redis.sock' }, {}, /a Unix socket URL names no host/],
      [{ 'redis-url': `redis://:${SECRET}@127.0.0.1:6379/x` }, {}, /the path is a database number/],
      [{}, { REDIS_URL: `not a url ${SECRET}` }, /--redis-url must be a URL/],
      [{ 'redis-password-file': path.join(empty, 'missing') }, {}, /--redis-password-file .* cannot be read: ENOENT/],
      [{ 'redis-password-file': path.join(empty, 'empty') }, {}, /--redis-password-file .* is empty/],
      [{ 'redis-ca': path.join(empty, 'no-ca.pem') }, {}, /--redis-ca .* does not exist/],
      [{ 'ratelimit-port': '70000' }, {}, /--ratelimit-port must be a port/],
      [{ 'metrics-port': 'x' }, {}, /--metrics-port must be a port/],
      [{ 'watch-debounce-ms': '-1' }, {}, /--watch-debounce-ms/],
      [{ insecure: false, 'data-dir': path.join(empty, 'no-data') }, {}, /no mesh CA in .*--insecure/],
      [{ state: 'consul', 'consul-addr': '127.0.0.1:1' }, {}, /--insecure serves plain text and reads no CA, so --state consul would be ignored/],
      [{ 'ca-cert': path.join(empty, 'ca.crt'), 'ca-key': path.join(empty, 'ca.key') }, {}, /so --ca-cert and --ca-key would be ignored/],
    ];
    for (const [flags, env, message] of cases) {
      await assert.rejects(startStandaloneRateLimit({ ...base, ...flags }, env, silent), (e: Error) => {
        assert.match(e.message, message);
        assert.ok(!e.message.includes(SECRET), `the password in: ${e.message}`);
        return true;
      });
      assert.ok(await portFree(port), `nothing listens after ${JSON.stringify(flags)}`);
    }
    await assert.rejects(
      startStandaloneRateLimit({ ...base, insecure: undefined as unknown as boolean }, { SIGNALBOX_RATELIMIT_INSECURE: 'yes' }, silent),
      /SIGNALBOX_RATELIMIT_INSECURE must be "true" or "false"/,
    );
    // Through the command: a usage error (exit 2), the message on stderr without the password.
    const written: string[] = [];
    const write = process.stderr.write.bind(process.stderr);
    process.stderr.write = ((chunk: string | Uint8Array) => {
      written.push(String(chunk));
      return true;
    }) as typeof process.stderr.write;
    let code: number;
    try {
      code = await run(['ratelimit', '--policies', dir, '--redis-url', `redis://:${SECRET}@127.0.0.1:6379/abc`, '--insecure', '--metrics-port', 'off']);
    } finally {
      process.stderr.write = write;
    }
    assert.equal(code, 2);
    assert.match(written.join(''), /^signalbox ratelimit: --redis-url: the path is a database number/);
    assert.ok(!written.join('').includes(SECRET));
  });

  test('--insecure with Redis unreachable: starts, warns, shows Redis down (URL redacted), answers by failureMode', async () => {
    const dir = policyDir(FILES);
    const written: string[] = [];
    const write = process.stderr.write.bind(process.stderr);
    process.stderr.write = ((chunk: string | Uint8Array, ...rest: never[]) => {
      written.push(String(chunk));
      return write(chunk, ...rest);
    }) as typeof process.stderr.write;
    let running: Awaited<ReturnType<typeof startStandaloneRateLimit>> | undefined;
    try {
      // Port 1 on loopback: nothing listens there, so every Redis command fails at once.
      running = await startStandaloneRateLimit(
        {
          policies: dir,
          'ratelimit-address': '127.0.0.1',
          'ratelimit-port': '0',
          'metrics-port': '0',
          'redis-url': `redis://:${SECRET}@127.0.0.1:1`,
          insecure: true,
        },
        {},
        silent,
      );
    } finally {
      process.stderr.write = write;
    }
    try {
      assert.equal(running.tls, false);
      assert.ok(
        written.some((w) => /warning: signalbox ratelimit --insecure: .*plain text/.test(w)),
        written.join(''),
      );
      const metrics = `http://127.0.0.1:${running.metricsPort}`;
      assert.equal((await fetch(`${metrics}/readyz`)).status, 200);
      const text = await (await fetch(`${metrics}/api/ratelimit`)).text();
      const api = JSON.parse(text);
      assert.equal(api.redis.up, false);
      assert.equal(api.redis.url, 'redis://:***@127.0.0.1:1');
      assert.deepEqual(
        api.policies.map((p: { policy: string; failureMode: string }) => [p.policy, p.failureMode]),
        [['closed', 'deny']],
      );
      assert.ok(!text.includes(SECRET));
      // A deny limit with Redis unreachable: UNAVAILABLE (14), which Envoy's deny instance turns into 503.
      const Req = lookupType('envoy.service.ratelimit.v3.RateLimitRequest');
      const msg = Req.encode(
        Req.fromObject({
          domain: 'signalbox',
          descriptors: [
            {
              entries: [
                { key: 'signalbox_limit', value: 'closed/0' },
                { key: 'x-key', value: 'k' },
              ],
            },
          ],
        }),
      ).finish();
      assert.equal(await grpcStatus(running.ratelimitPort, msg), '14');
      const m = await (await fetch(`${metrics}/metrics`)).text();
      assert.match(m, /signalbox_ratelimit_decisions_total\{policy="closed",result="failure_denied"\} 1\n/);
      assert.match(m, /signalbox_ratelimit_redis_up 0\n/);
      assert.ok(!m.includes(SECRET));
    } finally {
      await running.stop();
    }
  });
});
