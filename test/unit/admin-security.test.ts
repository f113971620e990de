// The admin API's guards: the Host header check against DNS rebinding (421), the bearer token
// (401; /healthz and /readyz stay open), /api/status with the warnings serve hands it, and serve's
// refusal to bind beyond loopback without a token.
import assert from 'node:assert/strict';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { after, describe, test } from 'node:test';
import type { FastifyInstance } from 'fastify';
import { adminSecurityOf, buildAdmin, checkAdminBind, hostOf, isLoopbackAddress, readAdminToken, type AdminDeps } from '../../src/admin/server.js';
import { Pipeline } from '../../src/controller/pipeline.js';
import { ErrorCode, SignalboxError } from '../../src/errors.js';
import { createLogger } from '../../src/observability/logger.js';
import { Metrics } from '../../src/observability/metrics.js';
import { SnapshotCache } from '../../src/xds/cache/snapshot-cache.js';
import { ProxyRegistry } from '../../src/xds/server/proxy-status.js';

const TOKEN = 's3cret-admin-token-0123456789';

function admin(extra: Partial<AdminDeps> = {}): FastifyInstance {
  const logger = createLogger({ level: 'silent' });
  const cache = new SnapshotCache();
  const pipeline = new Pipeline({ policyDir: '/nonexistent', cache, logger });
  return buildAdmin({ pipeline, cache, registry: new ProxyRegistry(), metrics: new Metrics(), logger, ...extra });
}

describe('admin API: Host header check', async () => {
  const app = admin({ security: { adminAddress: '127.0.0.1' } });
  await app.ready();
  after(() => app.close());

  test('a foreign Host name is refused with 421 (DNS rebinding)', async () => {
    for (const host of [
      'evil.example',
      'evil.example:18001',
      '127.0.0.1.evil.example',
      'localhost.evil.example:18001',
      '10.0.0.5:18001',
      'localhost:abc',
      '::1',
    ]) {
      const res = await app.inject({ url: '/api/proxies', headers: { host } });
      assert.equal(res.statusCode, 421, host);
      assert.match(res.json().error, /misdirected/);
    }
  });

  test('loopback names are answered, with or without port', async () => {
    for (const host of ['127.0.0.1:18001', '127.0.0.1', 'localhost:18001', 'LOCALHOST', '[::1]:18001', '[::1]']) {
      const res = await app.inject({ url: '/api/proxies', headers: { host } });
      assert.equal(res.statusCode, 200, host);
    }
  });

  test('/healthz and /readyz answer any Host (probes send the pod address)', async () => {
    assert.equal((await app.inject({ url: '/healthz', headers: { host: 'evil.example' } })).statusCode, 200);
    const ready = await app.inject({ url: '/readyz', headers: { host: 'evil.example' } });
    assert.equal(ready.statusCode, 503, 'reached the handler: nothing compiled yet');
    assert.equal(ready.json().ready, false);
  });

  test('the dashboard and unknown paths are guarded too', async () => {
    assert.equal((await app.inject({ url: '/', headers: { host: 'evil.example' } })).statusCode, 421);
    assert.equal((await app.inject({ url: '/nope', headers: { host: 'evil.example' } })).statusCode, 421);
    assert.equal((await app.inject({ url: '/healthz/../api/proxies', headers: { host: 'evil.example' } })).statusCode, 421);
  });
});

describe('admin API: bound address and extra names', async () => {
  // Without a token: the Host name is what guards the API.
  const specific = admin({ security: { adminAddress: '10.0.0.5', allowedHosts: ['Signalbox.Internal'] } });
  const wildcard = admin({ security: { adminAddress: '0.0.0.0' } });
  const noSecurity = admin();
  await Promise.all([specific.ready(), wildcard.ready(), noSecurity.ready()]);
  after(() => Promise.all([specific.close(), wildcard.close(), noSecurity.close()]));
  const auth = { authorization: `Bearer ${TOKEN}` };

  test('the configured address and the allowed names are answered', async () => {
    for (const host of ['10.0.0.5:18001', 'signalbox.internal', 'signalbox.internal.:18001', '127.0.0.1:18001']) {
      assert.equal((await specific.inject({ url: '/api/proxies', headers: { host, ...auth } })).statusCode, 200, host);
    }
    assert.equal((await specific.inject({ url: '/api/proxies', headers: { host: '10.0.0.6', ...auth } })).statusCode, 421);
  });

  test('a wildcard bind address is no Host name', async () => {
    assert.equal((await wildcard.inject({ url: '/api/proxies', headers: { host: '0.0.0.0:18001', ...auth } })).statusCode, 421);
    assert.equal((await wildcard.inject({ url: '/api/proxies', headers: { host: 'localhost:18001', ...auth } })).statusCode, 200);
  });

  test('without security deps: loopback names only, no token', async () => {
    assert.equal((await noSecurity.inject({ url: '/api/proxies', headers: { host: '127.0.0.1:18001' } })).statusCode, 200);
    assert.equal((await noSecurity.inject({ url: '/api/proxies', headers: { host: 'evil.example' } })).statusCode, 421);
  });
});

describe('admin API: bearer token', async () => {
  const app = admin({ security: { adminAddress: '127.0.0.1', token: TOKEN } });
  await app.ready();
  after(() => app.close());
  const host = '127.0.0.1:18001';

  test('no Authorization header: 401', async () => {
    const res = await app.inject({ url: '/api/proxies', headers: { host } });
    assert.equal(res.statusCode, 401);
    assert.match(res.headers['www-authenticate'] as string, /^Bearer /);
    assert.ok(!res.body.includes(TOKEN), 'the token is never echoed');
  });

  test('a wrong token (or another scheme): 401', async () => {
    for (const authorization of [
      'Bearer wrong',
      `Bearer ${TOKEN}x`,
      `Bearer ${TOKEN.slice(0, -1)}`,
      `Basic ${TOKEN}`,
      TOKEN,
      'Bearer ',
      `Bearer ${TOKEN} extra`,
    ]) {
      const res = await app.inject({ url: '/api/proxies', headers: { host, authorization } });
      assert.equal(res.statusCode, 401, authorization);
    }
  });

  test('the right token: 200, on the API, metrics and the dashboard', async () => {
    for (const url of ['/api/proxies', '/metrics', '/api/status', '/', '/dashboard/app.js']) {
      const res = await app.inject({ url, headers: { host, authorization: `Bearer ${TOKEN}` } });
      assert.equal(res.statusCode, 200, url);
    }
    assert.equal(
      (await app.inject({ url: '/api/proxies', headers: { host, authorization: `bearer  ${TOKEN}` } })).statusCode,
      200,
      'scheme is case-insensitive',
    );
  });

  test('/healthz and /readyz need no token', async () => {
    assert.equal((await app.inject({ url: '/healthz', headers: { host } })).statusCode, 200);
    assert.equal((await app.inject({ url: '/readyz', headers: { host } })).statusCode, 503, 'reached the handler');
    assert.equal((await app.inject({ url: '/healthz?x=1', headers: { host } })).statusCode, 200);
  });

  test('with a token any Host name is answered, and the token is what guards it', async () => {
    // (A scraper in another container dials the service name; a rebinding page cannot attach the token.)
    assert.equal((await app.inject({ url: '/api/proxies', headers: { host: 'signalbox:18001', authorization: `Bearer ${TOKEN}` } })).statusCode, 200);
    assert.equal((await app.inject({ url: '/api/proxies', headers: { host: 'evil.example' } })).statusCode, 401);
  });
});

describe('/api/status', async () => {
  const warnings = [
    'xDS is served in plain text (--xds-insecure): configuration and private keys cross the network in clear',
    '--require-token secrets: proxies without a valid token receive every configuration except keys',
  ];
  const withStatus = admin({
    security: { adminAddress: '127.0.0.1', token: TOKEN },
    status: () => ({ xds: { tls: false, insecure: true }, proxyAuth: { requireToken: 'secrets' }, authz: { port: 18002 }, warnings }),
  });
  const bare = admin();
  await Promise.all([withStatus.ready(), bare.ready()]);
  after(() => Promise.all([withStatus.close(), bare.close()]));

  test('passes the posture and the warnings serve gives it', async () => {
    const res = await withStatus.inject({ url: '/api/status', headers: { host: 'localhost:18001', authorization: `Bearer ${TOKEN}` } });
    assert.equal(res.statusCode, 200);
    const s = res.json();
    assert.deepEqual(s.warnings, warnings);
    assert.deepEqual(s.xds, { tls: false, insecure: true });
    assert.deepEqual(s.proxyAuth, { requireToken: 'secrets' });
    assert.deepEqual(s.authz, { port: 18002 });
    assert.deepEqual(s.admin, { hostCheck: false, tokenRequired: true });
    assert.ok(!res.body.includes(TOKEN));
  });

  test('without a status dep: what the admin API knows, no warnings', async () => {
    const s = (await bare.inject('/api/status')).json();
    assert.deepEqual(s.warnings, []);
    assert.deepEqual(s.admin, { hostCheck: true, tokenRequired: false });
    assert.deepEqual(s.config, { valid: true, ready: false });
  });

  test('the dashboard page has the banner the warnings go into', async () => {
    const page = (await bare.inject('/')).body;
    assert.match(page, /id="warnings"[^>]*role="alert"[^>]*hidden/);
    const js = (await bare.inject('/dashboard/app.js')).body;
    assert.match(js, /fetch\('\/api\/status'\)/);
  });
});

describe('serve: the admin bind address and token file', () => {
  test('loopback addresses', () => {
    for (const a of ['127.0.0.1', '127.1.2.3', 'localhost', '::1', '[::1]', '::ffff:127.0.0.1']) assert.ok(isLoopbackAddress(a), a);
    for (const a of ['0.0.0.0', '::', '', '10.0.0.5', 'example.com', '128.0.0.1', 'localhost.example.com']) assert.ok(!isLoopbackAddress(a), a);
  });

  test('Host headers', () => {
    assert.equal(hostOf('127.0.0.1:18001'), '127.0.0.1');
    assert.equal(hostOf('[::1]:18001'), '::1');
    assert.equal(hostOf('Example.COM.'), 'example.com');
    assert.equal(hostOf(undefined), undefined);
    assert.equal(hostOf('[::1'), undefined);
    assert.equal(hostOf('[::1]x'), undefined);
    assert.equal(hostOf('a:b:c'), undefined);
  });

  test('a non-loopback admin address without a token is refused (SB_BAD_FLAG, naming the flags)', () => {
    for (const a of ['0.0.0.0', '::', '10.0.0.5']) {
      assert.throws(
        () => checkAdminBind(a, undefined),
        (e: unknown) =>
          e instanceof SignalboxError &&
          e.code === ErrorCode.BAD_FLAG &&
          /--admin-address/.test(e.message) &&
          /--admin-token-file/.test(e.message) &&
          /loopback/.test(e.message),
      );
    }
    assert.doesNotThrow(() => checkAdminBind('0.0.0.0', TOKEN));
    assert.doesNotThrow(() => checkAdminBind('127.0.0.1', undefined));
    assert.doesNotThrow(() => checkAdminBind('::1', undefined));
  });

  test('the token file: trimmed, must exist and be non-empty', async () => {
    const dir = await mkdtemp(path.join(os.tmpdir(), 'sb-admin-token-'));
    try {
      const good = path.join(dir, 'token');
      await writeFile(good, `  ${TOKEN}\n`);
      assert.equal(await readAdminToken(good), TOKEN);
      const empty = path.join(dir, 'empty');
      await writeFile(empty, ' \n\n');
      await assert.rejects(
        readAdminToken(empty),
        (e: unknown) => e instanceof SignalboxError && e.code === ErrorCode.BAD_FLAG && /--admin-token-file .* is empty/.test(e.message),
      );
      await assert.rejects(
        readAdminToken(path.join(dir, 'missing')),
        (e: unknown) => e instanceof SignalboxError && e.code === ErrorCode.BAD_FLAG && /ENOENT/.test(e.message),
      );

      assert.deepEqual(await adminSecurityOf('0.0.0.0', good), { adminAddress: '0.0.0.0', token: TOKEN });
      assert.deepEqual(await adminSecurityOf('127.0.0.1'), { adminAddress: '127.0.0.1', token: undefined });
      await assert.rejects(adminSecurityOf('0.0.0.0'), (e: unknown) => e instanceof SignalboxError && e.code === ErrorCode.BAD_FLAG);
      await assert.rejects(adminSecurityOf('0.0.0.0', empty), (e: unknown) => e instanceof SignalboxError && /is empty/.test(e.message));
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });
});
