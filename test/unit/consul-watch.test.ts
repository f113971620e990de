// The blocking-query loop against a fake Consul: index semantics, rate limit, backoff, errors.
import assert from 'node:assert/strict';
import { after, describe, test } from 'node:test';
import { ConsulClient, ConsulError } from '../../src/sources/consul/client.js';
import { parseConsulAddress } from '../../src/sources/consul/config.js';
import { backoffDelay, BlockingWatch, type WatchInfo } from '../../src/sources/consul/watch.js';
import { startFakeConsul, until, type FakeConsul } from './consul-fake.js';

const fakes: FakeConsul[] = [];
const clients: ConsulClient[] = [];
const watches: BlockingWatch<unknown>[] = [];
after(async () => {
  await Promise.all(watches.map((w) => w.stop()));
  for (const c of clients) c.close();
  await Promise.all(fakes.map((f) => f.close()));
});

async function setup(
  opts: { minIntervalMs?: number; waitMs?: number; backoff?: { baseMs: number; maxMs: number }; nonBlockingTimeoutMs?: number; token?: string } = {},
) {
  const fake = await startFakeConsul();
  fakes.push(fake);
  const client = new ConsulClient({ baseUrl: parseConsulAddress(fake.addr), token: opts.token });
  clients.push(client);
  /** When the watch sent each request, by the client's own clock (server arrival times jitter under load). */
  const sentAt: number[] = [];
  client.onRequest = () => sentAt.push(performance.now());
  const data: { body: unknown; info: WatchInfo }[] = [];
  const errors: { err: ConsulError; n: number; retry: number }[] = [];
  const watch = new BlockingWatch<unknown>({
    client,
    path: '/v1/health/service/web',
    query: { dc: 'dc1' },
    waitMs: opts.waitMs ?? 30_000,
    minIntervalMs: opts.minIntervalMs ?? 0,
    backoff: opts.backoff ?? { baseMs: 20, maxMs: 100 },
    nonBlockingTimeoutMs: opts.nonBlockingTimeoutMs,
    parse: (b) => {
      if (!Array.isArray(b)) throw new ConsulError('malformed', 'not an array');
      return b;
    },
    onData: (body, info) => data.push({ body, info }),
    onError: (err, n, retry) => errors.push({ err, n, retry }),
  });
  watches.push(watch);
  return { fake, client, watch, data, errors, sentAt };
}

describe('backoff', () => {
  test('doubles from the base, is capped, and is jittered between half and all of the step', () => {
    const b = { baseMs: 100, maxMs: 1000 };
    assert.deepEqual(
      [1, 2, 3, 4, 5, 6, 50].map((n) => backoffDelay(n, b, () => 1)),
      [100, 200, 400, 800, 1000, 1000, 1000],
    );
    assert.deepEqual(
      [1, 2, 3, 4, 5].map((n) => backoffDelay(n, b, () => 0)),
      [50, 100, 200, 400, 500],
    );
    for (let i = 0; i < 200; i++) {
      const d = backoffDelay(3, b);
      assert.ok(d >= 200 && d <= 400, `jittered delay ${d} outside [200, 400]`);
    }
  });
});

describe('blocking query index semantics', () => {
  test('first query is non-blocking; later ones send the last index and a wait', async () => {
    const { fake, watch, data } = await setup({ waitMs: 5_000 });
    fake.health.set('web', [1]);
    watch.start();
    await until(() => data.length === 1, 'first answer');
    await until(() => fake.seen.length === 2, 'blocking query sent');
    assert.equal(fake.seen[0]!.index, undefined, 'first query has no index');
    assert.equal(fake.seen[0]!.dc, 'dc1');
    assert.equal(fake.seen[1]!.index, '10');
    assert.equal(fake.seen[1]!.wait, '5s');
    fake.setHealth('web', [1, 2]);
    await until(() => data.length === 2, 'change delivered');
    assert.deepEqual(data[1]!.body, [1, 2]);
    assert.equal(data[1]!.info.index, 11n);
    await until(() => fake.seen.length === 3, 'next blocking query');
    assert.equal(fake.seen[2]!.index, '11');
  });

  test('an index that goes backwards resets the loop: reported as a reset, next query non-blocking', async () => {
    const { fake, watch, data } = await setup();
    const answers = [
      ['100', '["old"]'],
      ['5', '["fresh"]'],
      ['5', '["fresh"]'],
    ];
    fake.override = (_q, res) => {
      const a = answers.shift();
      if (!a) return false; // then the fake's own blocking behaviour (index 10 > 5: answers at once... so set it)
      res.writeHead(200, { 'x-consul-index': a[0]! }).end(a[1]);
      return true;
    };
    fake.index = 5n;
    watch.start();
    await until(() => fake.seen.length >= 4, 'four queries');
    assert.deepEqual(
      fake.seen.slice(0, 4).map((q) => q.index),
      [undefined, '100', undefined, '5'],
    );
    assert.deepEqual(
      data.map((d) => [d.body, d.info.index, d.info.reset]),
      [
        [['old'], 100n, false],
        [['fresh'], 5n, true],
      ],
    );
    assert.equal(data.length, 2, 'the non-blocking re-read after the reset had the same index and data: not reported again');
  });

  test('index 0 in an answer is never sent back: the next query blocks on index 1', async () => {
    const { fake, watch, data } = await setup();
    fake.override = (q, res) => {
      if (q.index === undefined) {
        res.writeHead(200, { 'x-consul-index': '0' }).end('[]');
        return true;
      }
      return false;
    };
    fake.index = 1n;
    watch.start();
    await until(() => fake.seen.length >= 2, 'second query');
    assert.equal(data.length, 1);
    assert.equal(fake.seen[1]!.index, '1', 'index 0 becomes 1');
    // index 1 equal to Consul's index: the query blocks (no busy loop)
    await new Promise((r) => setTimeout(r, 200));
    assert.equal(fake.seen.length, 2, 'a query with index 1 blocks while Consul is at 1');
  });

  test('a 200 without X-Consul-Index is an error (not a busy loop of non-blocking queries)', async () => {
    const { fake, watch, errors } = await setup({ backoff: { baseMs: 50, maxMs: 50 } });
    fake.override = (_q, res) => {
      res.writeHead(200).end('[]');
      return true;
    };
    watch.start();
    await until(() => errors.length >= 2, 'errors');
    assert.equal(errors[0]!.err.reason, 'malformed');
    assert.match(errors[0]!.err.message, /X-Consul-Index/);
  });

  test('an unchanged index after a wait timeout is not reported again', async () => {
    const { fake, watch, data } = await setup({ waitMs: 1_000 });
    fake.health.set('web', [1]);
    watch.start();
    await until(() => fake.seen.length >= 3, 'two blocking queries (one timed out at 1 s)', 5_000);
    assert.equal(data.length, 1);
  });

  test('queries are rate limited to one per minIntervalMs even when every answer is new', async () => {
    const { fake, watch, data, sentAt } = await setup({ minIntervalMs: 100 });
    fake.override = (_q, res) => {
      fake.index++;
      res.writeHead(200, { 'x-consul-index': fake.index.toString() }).end('[]');
      return true;
    };
    const t0 = Date.now();
    watch.start();
    await until(() => data.length >= 5, 'five answers');
    const elapsed = Date.now() - t0;
    assert.ok(elapsed >= 4 * 100 - 20, `5 queries took ${elapsed} ms: the minimum interval was not kept`);
    const gaps = sentAt.slice(1, 5).map((t, i) => t - sentAt[i]!);
    assert.ok(
      gaps.every((g) => g >= 98),
      `gaps ${gaps.map(Math.round).join(',')} ms`,
    );
  });
});

describe('errors and backoff in the loop', () => {
  test('403, 500, malformed JSON and timeouts are classified, backed off, and the next success recovers', async () => {
    const { fake, watch, data, errors, sentAt } = await setup({ backoff: { baseMs: 40, maxMs: 160 }, nonBlockingTimeoutMs: 1000, token: 'tkn' });
    const script = ['403', '500', 'badjson', 'hang', 'ok'];
    fake.override = (_q, res) => {
      const step = script.shift();
      if (step === '403') res.writeHead(403).end('ACL not found');
      else if (step === '500') res.writeHead(500).end('No cluster leader');
      else if (step === 'badjson') res.writeHead(200, { 'x-consul-index': '12' }).end('[{"Node": ');
      else if (step === 'hang')
        return true; // never answers: the client times out
      else return false;
      return true;
    };
    fake.health.set('web', ['ok']);
    watch.start();
    await until(() => data.length === 1, 'recovered', 10_000);
    assert.deepEqual(
      errors.map((e) => e.err.reason),
      ['forbidden', 'server', 'malformed', 'timeout'],
    );
    assert.deepEqual(
      errors.map((e) => e.n),
      [1, 2, 3, 4],
      'consecutive failures counted',
    );
    assert.match(errors[0]!.err.message, /403: ACL not found/);
    assert.equal(errors[1]!.err.status, 500);
    const step = (i: number) => Math.min(160, 40 * 2 ** i); // 40, 80, 160, 160 (capped); timers may fire up to 1 ms early
    assert.ok(
      errors.every((e, i) => e.retry >= step(i) / 2 && e.retry <= step(i)),
      `retries ${errors.map((e) => e.retry)}`,
    );
    // the retries really waited: requests are spread by the backoff, not hammered
    for (let i = 1; i < 4; i++)
      assert.ok(
        sentAt[i]! - sentAt[i - 1]! >= errors[i - 1]!.retry - 2,
        `request ${i} came ${sentAt[i]! - sentAt[i - 1]!} ms after a failure that asked for ${errors[i - 1]!.retry} ms`,
      );
    assert.equal(data[0]!.info.recovered, true);
    assert.equal(watch.failures, 0);
    assert.ok(
      fake.seen.every((q) => q.token === 'tkn'),
      'the token goes in X-Consul-Token',
    );
    assert.ok(
      fake.seen.slice(0, 5).every((q) => q.index === undefined),
      'after an error the query is non-blocking',
    );
  });

  test('connection refused: network error; stop() ends the loop and cancels the query in flight', async () => {
    const client = new ConsulClient({ baseUrl: 'http://127.0.0.1:1' });
    clients.push(client);
    const errors: ConsulError[] = [];
    const w = new BlockingWatch({
      client,
      path: '/v1/health/service/x',
      waitMs: 1000,
      minIntervalMs: 0,
      backoff: { baseMs: 10, maxMs: 20 },
      parse: (b) => b,
      onData: () => {},
      onError: (e) => errors.push(e),
    }).start();
    await until(() => errors.length >= 3, 'network errors');
    assert.equal(errors[0]!.reason, 'network');
    await w.stop();
    const n = errors.length;
    await new Promise((r) => setTimeout(r, 100));
    assert.equal(errors.length, n, 'no query after stop');
  });
});
