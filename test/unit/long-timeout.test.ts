import assert from 'node:assert/strict';
import { describe, mock, test } from 'node:test';
import { MAX_TIMEOUT_MS, setLongTimeout } from '../../src/util/timers.js';

describe('setLongTimeout', () => {
  test('a delay past 24.8 days does not fire at once (Node would fire it after 1 ms) nor warn', async () => {
    const warnings: string[] = [];
    const onWarning = (w: Error) => warnings.push(w.name);
    process.on('warning', onWarning);
    let fired = 0;
    const timers = [MAX_TIMEOUT_MS + 1, 60 * 86_400_000, 2160 * 3_600_000].map((ms) => setLongTimeout(() => fired++, ms));
    await new Promise((r) => setTimeout(r, 100));
    process.off('warning', onWarning);
    for (const t of timers) t.clear();
    assert.equal(fired, 0);
    assert.deepEqual(warnings, []);
  });

  test('fires once at its deadline, across several maximal waits; clear() cancels', () => {
    mock.timers.enable({ apis: ['setTimeout', 'Date'], now: 0 });
    try {
      const calls: number[] = [];
      const day = 86_400_000;
      setLongTimeout(() => calls.push(Date.now()), 60 * day);
      const cancelled = setLongTimeout(() => calls.push(-1), 30 * day);
      mock.timers.tick(MAX_TIMEOUT_MS);
      assert.deepEqual(calls, []);
      cancelled.clear();
      cancelled.clear();
      mock.timers.tick(60 * day - MAX_TIMEOUT_MS - 1);
      assert.deepEqual(calls, []);
      mock.timers.tick(1);
      assert.deepEqual(calls, [60 * day]);
      mock.timers.tick(100 * day);
      assert.deepEqual(calls, [60 * day]);
    } finally {
      mock.timers.reset();
    }
  });

  test('a short, zero, negative or non-finite delay fires as soon as possible, once', () => {
    mock.timers.enable({ apis: ['setTimeout', 'Date'], now: 0 });
    try {
      let n = 0;
      for (const ms of [0, -5, Number.NaN, Number.POSITIVE_INFINITY]) setLongTimeout(() => n++, ms);
      setLongTimeout(() => (n += 10), 250);
      mock.timers.tick(0);
      assert.equal(n, 4);
      mock.timers.tick(250);
      assert.equal(n, 14);
    } finally {
      mock.timers.reset();
    }
  });
});
