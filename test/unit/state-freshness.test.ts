// --state-stale-max, without Consul and with a fake clock: how long the shared state has been
// unreadable, the moment it is too long (said once in the log, once as an event), the return the
// moment a read succeeds; and workload certificates held back meanwhile (new ones and renewals
// wait, nothing is issued) and issued at once on resume. test/integration/state-stale.test.ts stops
// a real Consul agent under a replica with a short limit.
import assert from 'node:assert/strict';
import { mkdtempSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { describe, test } from 'node:test';
import { CertificateAuthority } from '../../src/ca/ca.js';
import { IdentityManager } from '../../src/ca/identities.js';
import { resolveServeConfig } from '../../src/config/settings.js';
import { createLogger } from '../../src/observability/logger.js';
import { DEFAULT_STATE_STALE_MAX_MS, PROBE_HANG_MS, StateFreshness } from '../../src/state/freshness.js';

function clockAndProbe() {
  let now = Date.UTC(2026, 0, 1);
  let answer: 'ok' | 'fail' | 'hang' = 'ok';
  const logs: string[] = [];
  const logger = {
    info: (_o: object, m: string) => logs.push(`info ${m}`),
    warn: (_o: object, m: string) => logs.push(`warn ${m}`),
    error: (_o: object, m: string) => logs.push(`error ${m}`),
  };
  const probe = () =>
    answer === 'ok' ? Promise.resolve() : answer === 'fail' ? Promise.reject(new Error('connect ECONNREFUSED')) : new Promise<void>(() => {});
  const f = new StateFreshness(probe, 60_000, { now: () => now, logger });
  const changes: boolean[] = [];
  f.on('change', (stale) => changes.push(stale));
  return {
    f,
    logs,
    changes,
    at: (ms: number) => {
      now = Date.UTC(2026, 0, 1) + ms;
    },
    answer: (a: typeof answer) => {
      answer = a;
    },
  };
}

describe('how long Consul has been unreadable, against --state-stale-max', () => {
  test('stale only past the limit from the first failed read; said once; back the moment a read succeeds', async () => {
    const c = clockAndProbe();
    await c.f.check();
    assert.deepEqual(c.f.status(), { readable: true, unreadableSeconds: 0, staleMaxSeconds: 60, stale: false });
    c.at(10_000);
    c.answer('fail');
    await c.f.check();
    c.at(40_000);
    await c.f.check();
    assert.deepEqual(c.f.status(), {
      readable: false,
      unreadableSince: '2026-01-01T00:00:10.000Z',
      unreadableSeconds: 30,
      staleMaxSeconds: 60,
      stale: false,
    });
    c.at(70_000); // exactly the limit: not yet
    await c.f.check();
    assert.equal(c.f.stale, false);
    c.at(70_001);
    await c.f.check();
    assert.equal(c.f.stale, true);
    for (const t of [75_000, 80_000, 3_600_000]) {
      c.at(t);
      await c.f.check();
    }
    assert.deepEqual(c.changes, [true], 'one event');
    assert.deepEqual(c.logs, [
      'warn Consul has been unreadable for longer than --state-stale-max: workload certificates are no longer issued nor renewed (proxies keep the ones they hold; configuration is still served) until Consul answers',
    ]);
    assert.equal(c.f.status().staleSince, '2026-01-01T00:01:10.001Z');
    assert.equal(c.f.status().unreadableSeconds, 3_590);
    c.answer('ok');
    c.at(3_600_500);
    await c.f.check();
    assert.deepEqual(c.changes, [true, false]);
    assert.equal(c.logs.length, 2);
    assert.match(c.logs[1]!, /^info Consul answers again/);
    assert.deepEqual(c.f.status(), { readable: true, unreadableSeconds: 0, staleMaxSeconds: 60, stale: false });
    // A short failure after that starts a new count: not stale before a full limit again.
    c.answer('fail');
    c.at(3_601_000);
    await c.f.check();
    c.at(3_650_000);
    await c.f.check();
    assert.equal(c.f.stale, false);
  });

  test('a read that never answers counts as failing from when it was sent', async () => {
    const c = clockAndProbe();
    c.answer('hang');
    c.at(1_000);
    void c.f.check(); // never settles
    c.at(1_000 + PROBE_HANG_MS);
    await c.f.check();
    assert.equal(c.f.status().readable, true, 'not yet: it may still answer');
    c.at(1_001 + PROBE_HANG_MS);
    await c.f.check();
    assert.equal(c.f.status().unreadableSince, '2026-01-01T00:00:01.000Z');
    c.at(61_001);
    await c.f.check();
    assert.equal(c.f.stale, true);
  });

  test('--state-stale-max: one hour by default, a duration from 1s to 720h, else a clear error', () => {
    const base = { state: 'consul', 'consul-addr': '127.0.0.1:8500', 'replica-id': 'r1' };
    assert.equal(DEFAULT_STATE_STALE_MAX_MS, 3_600_000);
    assert.equal(resolveServeConfig(base, {}).state!.staleMaxMs, DEFAULT_STATE_STALE_MAX_MS);
    assert.equal(resolveServeConfig({ ...base, 'state-stale-max': '90s' }, {}).state!.staleMaxMs, 90_000);
    assert.equal(resolveServeConfig(base, { SIGNALBOX_STATE_STALE_MAX: '2h' }).state!.staleMaxMs, 7_200_000);
    for (const bad of ['0s', '500ms', 'soon', '721h', ''])
      assert.throws(
        () => resolveServeConfig({ ...base, 'state-stale-max': bad }, {}),
        /--state-stale-max must be a duration from 1s to 720h \(such as 90s, 30m, 1h\), got/,
        bad,
      );
  });
});

describe('workload certificates while issuance is halted', () => {
  const silent = createLogger({ level: 'silent' });
  const settled = async (p: Promise<unknown>) => {
    let done = false;
    void p.then(
      () => {
        done = true;
      },
      () => {
        done = true;
      },
    );
    await new Promise((r) => setTimeout(r, 50));
    return done;
  };

  test('nothing is issued nor renewed while halted, what waited is issued at once on resume, and a TTL change does not block', async () => {
    const ca = await CertificateAuthority.open({ dataDir: mkdtempSync(path.join(os.tmpdir(), 'sb-fresh-')), trustDomain: 't' });
    const issued: string[] = [];
    const ids = new IdentityManager(ca, { ttlMs: 60_000, logger: silent, metrics: { issued: (k) => issued.push(k) } });
    const held = await ids.issueInstance('spiffe://t/service/web', 'web-1');
    const before = held.current.serial;
    assert.deepEqual(issued, ['issued']);
    ids.halt('Consul unreadable since X, longer than --state-stale-max (60 s)');
    const fresh = ids.issueInstance('spiffe://t/service/orders', 'orders-1');
    const renewed: string[] = [];
    held.on('renewed', (c) => renewed.push(c.serial));
    const renewal = held.renew();
    assert.equal(await settled(fresh), false, 'a new proxy waits for its certificate');
    assert.equal(await settled(renewal), false, 'a renewal waits');
    assert.equal(await settled(ids.setTtl(120_000)), true, 'a TTL change (a reload) is not held up');
    assert.deepEqual(issued, ['issued'], 'nothing issued while halted');
    assert.deepEqual(ids.halted, { reason: 'Consul unreadable since X, longer than --state-stale-max (60 s)', waiting: 3 });
    assert.equal(held.current.serial, before, 'the proxy keeps the certificate it holds');
    ids.resume();
    const handle = await fresh;
    await renewal;
    assert.equal(ids.halted, undefined);
    assert.equal(handle.current.notAfter.getTime() - handle.current.notBefore.getTime() >= 60_000, true);
    assert.ok(renewed.length >= 1 && held.current.serial !== before, 'renewed once resumed');
    for (let i = 0; i < 100 && issued.length < 4; i++) await new Promise((r) => setTimeout(r, 20)); // the TTL change's renewal, not awaited
    assert.deepEqual([...issued].sort(), ['issued', 'issued', 'renewed', 'renewed']);
    ids.stop();
  });
});
