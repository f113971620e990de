// The JWKS cache against a loopback JWKS server and files: Cache-Control within bounds, background
// refresh of a stale set, rate-limited refetch for unknown kids, cached keys kept when the endpoint
// is down, nothing to serve when it never answered, file reload on change. The clock is injected.
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, describe, test } from 'node:test';
import client from 'prom-client';
import { cacheTtlMs, JwksCache } from '../../src/authz/jwks.js';
import { usableKeys, type JwksModel } from '../../src/model/jwt.js';
import { AuthzMetrics } from '../../src/authz/metrics.js';
import { waitFor } from '../helpers/net.js';
import { makeKey, startJwksServer, type JwksServer } from '../helpers/jwks-server.js';

const servers: JwksServer[] = [];
const dirs: string[] = [];
after(async () => {
  for (const s of servers) await s.close();
  for (const d of dirs) rmSync(d, { recursive: true, force: true });
});

function uriSpec(url: string, over: Partial<Extract<JwksModel, { kind: 'uri' }>> = {}): JwksModel {
  return { kind: 'uri', uri: url, timeoutMs: 1000, minCacheMs: 10_000, maxCacheMs: 60_000, cooldownMs: 5_000, ...over };
}

describe('Cache-Control within bounds', () => {
  const b = { minCacheMs: 10_000, maxCacheMs: 60_000 };
  test('max-age is honoured inside [min, max]; no-cache/no-store mean min; none means the default, bounded', () => {
    assert.equal(cacheTtlMs('public, max-age=30', b), 30_000);
    assert.equal(cacheTtlMs('max-age=1', b), 10_000);
    assert.equal(cacheTtlMs('max-age=86400', b), 60_000);
    assert.equal(cacheTtlMs('no-cache', b), 10_000);
    assert.equal(cacheTtlMs('no-store, max-age=50', b), 10_000);
    assert.equal(cacheTtlMs(null, b), 60_000, 'default 10 minutes, capped at max');
    assert.equal(cacheTtlMs(null, { minCacheMs: 1000, maxCacheMs: 3_600_000 }), 600_000);
  });
  test('only public signing keys are kept', async () => {
    const k = await makeKey('ES256', 'a');
    const kept = usableKeys({ keys: [k.jwk, { ...k.jwk, kid: 'enc', use: 'enc' }, { ...k.jwk, kid: 'priv', d: 'x' }, { kty: 'oct', k: 'c2VjcmV0' }, 'junk'] });
    assert.deepEqual(
      kept.map((x) => x.kid),
      ['a'],
    );
    assert.throws(() => usableKeys({ nokeys: true }), /no "keys" array/);
  });
});

describe('JwksCache (uri)', async () => {
  const [k1, k2] = await Promise.all([makeKey('RS256', 'k1'), makeKey('EdDSA', 'k2')]);

  test('fetches once, reuses until stale, then refreshes in the background while serving the old set', async () => {
    const srv = await startJwksServer([k1.jwk], { cacheControl: 'max-age=20' });
    servers.push(srv);
    let clock = 1_000_000;
    const registry = new client.Registry();
    const metrics = new AuthzMetrics(registry);
    const cache = new JwksCache(uriSpec(srv.url), { policy: 'p', now: () => clock, metrics });
    const first = await cache.current(2000);
    assert.equal(first?.keys.length, 1);
    assert.equal(srv.requests, 1);
    clock += 19_000;
    await cache.current(2000);
    assert.equal(srv.requests, 1, 'fresh for max-age=20s');
    srv.setKeys([k1.jwk, k2.jwk]);
    clock += 2_000;
    const stale = await cache.current(2000);
    assert.equal(stale?.keys.length, 1, 'the stale set answers at once');
    await waitFor(async () => (await cache.current(0))?.keys.length === 2, { what: 'background refresh' });
    assert.equal(srv.requests, 2);
    assert.notEqual((await cache.current(0))!.generation, first!.generation);
    const text = await registry.metrics();
    assert.match(text, /signalbox_authz_jwks_fetches_total\{policy="p",result="ok"\} 2/);
    assert.match(text, /signalbox_authz_jwks_keys\{policy="p"\} 2/);
    cache.close();
  });

  test('an unchanged set keeps its generation (verified tokens stay cached)', async () => {
    const srv = await startJwksServer([k1.jwk], { cacheControl: 'no-cache' });
    servers.push(srv);
    let clock = 0;
    const cache = new JwksCache(uriSpec(srv.url), { policy: 'p', now: () => clock });
    const g = (await cache.current(2000))!.generation;
    clock += 11_000;
    await cache.current(0);
    await waitFor(() => srv.requests === 2, { what: 'refresh' });
    await waitFor(async () => cache.status().loadedAt === new Date(clock).toISOString(), { what: 'refresh applied' });
    assert.equal((await cache.current(0))!.generation, g);
    cache.close();
  });

  test('unknown kid: one refetch per cooldown, however many tokens ask', async () => {
    const srv = await startJwksServer([k1.jwk], { cacheControl: 'max-age=3600' });
    servers.push(srv);
    let clock = 0;
    const cache = new JwksCache(uriSpec(srv.url, { cooldownMs: 5_000 }), { policy: 'p', now: () => clock });
    await cache.current(2000);
    assert.equal(await cache.refetchForUnknownKey(2000), false, 'fetched, nothing new');
    assert.equal(srv.requests, 2);
    for (let i = 0; i < 20; i++) assert.equal(await cache.refetchForUnknownKey(2000), false);
    assert.equal(srv.requests, 2, 'rate-limited');
    srv.setKeys([k1.jwk, k2.jwk]);
    clock += 5_000;
    assert.equal(await cache.refetchForUnknownKey(2000), true, 'after the cooldown the rotated set is fetched');
    assert.equal(srv.requests, 3);
    cache.close();
  });

  test('endpoint down: the cached keys keep serving and the failure is reported', async () => {
    const srv = await startJwksServer([k1.jwk], { cacheControl: 'max-age=1' });
    servers.push(srv);
    let clock = 0;
    const registry = new client.Registry();
    const cache = new JwksCache(uriSpec(srv.url, { minCacheMs: 1000 }), { policy: 'p', now: () => clock, metrics: new AuthzMetrics(registry) });
    await cache.current(2000);
    await srv.down();
    clock += 2_000;
    assert.equal((await cache.current(2000))?.keys.length, 1);
    await waitFor(() => cache.status().lastError !== undefined, { what: 'failed refresh' });
    assert.equal((await cache.current(2000))?.keys.length, 1, 'still serving the cached key');
    assert.match(await registry.metrics(), /signalbox_authz_jwks_fetches_total\{policy="p",result="error"\} 1/);
    // A server error answer is a failure too, and also keeps the keys.
    await srv.up();
    srv.failStatus = 500;
    clock += 10_000;
    await cache.current(0);
    await waitFor(() => cache.status().lastError === 'HTTP 500', { what: 'HTTP 500 seen' });
    assert.equal((await cache.current(0))?.keys.length, 1);
    cache.close();
  });

  test('a stale set is reloaded on a timer without any check asking (keys for Envoy), with back-off after failures', async () => {
    const srv = await startJwksServer([k1.jwk]);
    servers.push(srv);
    let changes = 0;
    const cache = new JwksCache(uriSpec(srv.url, { minCacheMs: 200, maxCacheMs: 200 }), { policy: 'p', onChange: () => changes++ });
    cache.start();
    await waitFor(async () => cache.keys()?.length === 1, { what: 'first load' });
    assert.equal(changes, 1);
    srv.setKeys([k1.jwk, k2.jwk]);
    // No current() call: only the timer can pick the new set up.
    await waitFor(async () => cache.keys()?.length === 2, { what: 'scheduled reload', timeoutMs: 5_000 });
    assert.equal(changes, 2);
    const before = srv.requests;
    srv.failStatus = 503;
    await waitFor(async () => cache.status().lastError === 'HTTP 503', { what: 'a failed scheduled reload', timeoutMs: 5_000 });
    assert.equal(cache.keys()?.length, 2, 'the cached keys stay');
    srv.failStatus = undefined;
    await waitFor(async () => cache.status().lastError === undefined, { what: 'recovery after back-off', timeoutMs: 10_000 });
    assert.equal(changes, 2, 'the same keys again are not a change');
    assert.ok(srv.requests - before < 10, `reloads are spaced (${srv.requests - before} requests)`);
    cache.close();
    const after = srv.requests;
    await new Promise((r) => setTimeout(r, 500));
    assert.equal(srv.requests, after, 'no reload after close');
  });

  test('never reachable: no keys; attempts are spaced, not made per request', async () => {
    const srv = await startJwksServer([k1.jwk]);
    servers.push(srv);
    srv.failStatus = 503;
    let clock = 0;
    const cache = new JwksCache(uriSpec(srv.url), { policy: 'p', now: () => clock });
    assert.equal(await cache.current(2000), undefined);
    for (let i = 0; i < 10; i++) assert.equal(await cache.current(2000), undefined);
    assert.equal(srv.requests, 1);
    srv.failStatus = undefined;
    clock += 2_000;
    assert.equal((await cache.current(2000))?.keys.length, 1, 'recovers once the endpoint answers');
    cache.close();
  });
});

describe('JwksCache (file)', async () => {
  const [k1, k2] = await Promise.all([makeKey('ES256', 'f1'), makeKey('ES256', 'f2')]);
  test('re-read when the file changes; a broken file keeps the last good keys', async () => {
    const dir = mkdtempSync(path.join(os.tmpdir(), 'sb-jwks-'));
    dirs.push(dir);
    const file = path.join(dir, 'jwks.json');
    writeFileSync(file, JSON.stringify({ keys: [k1.jwk] }));
    const cache = new JwksCache({ kind: 'file', file: 'jwks.json', path: file, cooldownMs: 1000 }, { policy: 'p' });
    cache.start();
    assert.equal((await cache.current(2000))?.keys.length, 1);
    writeFileSync(file, JSON.stringify({ keys: [k1.jwk, k2.jwk] }));
    await waitFor(async () => (await cache.current(0))?.keys.length === 2, { what: 'file reloaded', timeoutMs: 5_000 });
    writeFileSync(file, '{ not json');
    await waitFor(() => cache.status().lastError === 'not JSON', { what: 'broken file noticed', timeoutMs: 5_000 });
    assert.equal((await cache.current(0))?.keys.length, 2);
    cache.close();
  });
});
