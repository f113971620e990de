// The rate-limit service's Redis counter store against a real Redis: a lone check is one command
// sent at once; checks that arrive while a command is in flight share one command, and each still
// gets its own count; a failure reaches every check that shared the command.
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { createLogger } from '../../src/observability/logger.js';
import { RedisCounterStore } from '../../src/ratelimit/redis-store.js';
import { waitFor } from '../helpers/net.js';
import { startRedis, type RedisServer } from '../helpers/redis.js';

describe('Redis counter store (real Redis)', () => {
  let redis: RedisServer;
  let store: RedisCounterStore;

  before(async () => {
    redis = await startRedis();
    store = new RedisCounterStore({ url: redis.url }, createLogger({ level: 'silent' }));
    store.connect();
    await waitFor(() => store.isUp, { what: 'Redis connected' });
  });

  after(async () => {
    await store?.close();
    await redis?.stop();
  });

  test('a lone check is one command of its own', async () => {
    const before = store.status();
    assert.deepEqual(await store.count(['lone'], [1], [60_000]), [1]);
    assert.deepEqual(await store.count(['lone'], [2], [60_000]), [3]);
    const now = store.status();
    assert.equal(now.commands - before.commands, 2);
    assert.equal(now.merged - before.merged, 0);
  });

  test('300 checks at once share commands; each gets its own count, in order, none lost', async () => {
    const before = store.status();
    const calls = Array.from({ length: 300 }, (_, i) => store.count(['burst', `other-${i % 7}`], [1, 2], [60_000, 60_000]));
    const counts = await Promise.all(calls);
    const burst = counts.map((c) => c[0]!).sort((a, b) => a - b);
    assert.deepEqual(
      burst,
      Array.from({ length: 300 }, (_, i) => i + 1),
      'every check counted once, and saw its own count',
    );
    for (let k = 0; k < 7; k++) {
      const seen = counts.filter((_, i) => i % 7 === k).map((c) => c[1]!);
      assert.deepEqual(
        [...seen].sort((a, b) => a - b),
        seen.map((_, j) => 2 * (j + 1)),
      );
    }
    assert.match(await redis.command(['GET', 'burst']), /\r\n300\r\n$/);
    const now = store.status();
    const commands = now.commands - before.commands;
    console.log(`300 concurrent checks: ${commands} Redis commands, ${now.merged - before.merged} checks merged`);
    assert.ok(commands < 300 / 10, `${commands} commands for 300 checks`);
    assert.ok(now.merged - before.merged >= 299 - 64, 'all but the first few shared a command');
    // The window's expiry was set once, by the check that created the key.
    assert.match(await redis.command(['PTTL', 'burst']), /^:[1-9]\d*\r\n$/);
  });

  test('a Redis that lost the script (SCRIPT FLUSH) gets it again: EVALSHA, then EVAL, and the count is right', async () => {
    assert.deepEqual(await store.count(['flushed'], [1], [60_000]), [1]);
    const stats0 = await redis.command(['INFO', 'commandstats']);
    assert.match(await redis.command(['SCRIPT', 'FLUSH']), /^\+OK/);
    assert.deepEqual(await store.count(['flushed'], [4], [60_000]), [5], 'counted once, by the EVAL after NOSCRIPT');
    const stats1 = await redis.command(['INFO', 'commandstats']);
    const calls = (text: string, cmd: string) => Number(new RegExp(`^cmdstat_${cmd}:calls=(\\d+)`, 'm').exec(text)?.[1] ?? 0);
    assert.equal(calls(stats1, 'eval') - calls(stats0, 'eval'), 1, 'one EVAL loaded the script again');
    assert.deepEqual(await store.count(['flushed'], [1], [60_000]), [6]);
    const stats2 = await redis.command(['INFO', 'commandstats']);
    assert.equal(calls(stats2, 'eval') - calls(stats1, 'eval'), 0, 'the next check is an EVALSHA again');
  });

  test('a failed command fails every check that shared it, and none is left waiting', async () => {
    await redis.kill();
    const results = await Promise.allSettled(Array.from({ length: 50 }, () => store.count(['down'], [1], [60_000])));
    assert.deepEqual(new Set(results.map((r) => r.status)), new Set(['rejected']));
    await redis.start();
    await waitFor(() => store.isUp, { what: 'Redis reconnected', timeoutMs: 10_000 });
    assert.deepEqual(await store.count(['down'], [1], [60_000]), [1]);
  });

  test('over a Unix socket (unix:// and redis+unix://, ?db=N, the password given apart): counts land in that database', async () => {
    const local = await startRedis({ password: 'pw-sock-51c2', unixSocket: true });
    const stores: RedisCounterStore[] = [];
    try {
      for (const [url, key] of [
        [`unix://${local.socket}?db=3`, 'sock-a'],
        [`redis+unix://${local.socket}`, 'sock-b'],
      ] as const) {
        const s = new RedisCounterStore({ url, password: 'pw-sock-51c2' }, createLogger({ level: 'silent' }));
        stores.push(s);
        s.connect();
        await waitFor(() => s.isUp, { what: `Redis connected over ${url}` });
        assert.deepEqual(await s.count([key], [2], [60_000]), [2]);
        assert.deepEqual(await s.count([key], [1], [60_000]), [3]);
        assert.equal(s.status().url, url, 'shown as given (no password in it)');
      }
      // Read back over TCP: db 3 holds sock-a, db 0 sock-b.
      assert.match(await local.command(['EVAL', "redis.call('SELECT', 3) return redis.call('GET', 'sock-a')", '0']), /\r\n3\r\n/);
      assert.match(await local.command(['GET', 'sock-b']), /\r\n3\r\n/);
      assert.match(await local.command(['GET', 'sock-a']), /^\$-1/);
    } finally {
      for (const s of stores) await s.close();
      await local.stop();
    }
  });
});
