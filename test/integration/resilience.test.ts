// HTTPRoute retries, timeouts and fault injection, proven against real Envoy and upstreams the
// test steers at runtime (fail the next N, delay, reset).
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { startControlUpstream, type ControlUpstream } from '../helpers/control-upstream.js';
import { pool, startGatewayEnv, timedGet, type GatewayEnv } from '../helpers/gateway-env.js';
import { waitFor } from '../helpers/net.js';

const ROUTE_TIMEOUT_MS = 500;
const PER_TRY_TIMEOUT_MS = 300;
const FAULT_DELAY_MS = 200;
const FAULT_DELAY_PERCENT = 10;
const FAULT_ABORT_PERCENT = 5;

function service(name: string, port: number): string {
  return `apiVersion: signalbox.dev/v1alpha1
kind: Service
metadata: { name: ${name} }
spec:
  port: 8080
  endpoints: [ { address: 127.0.0.1, port: ${port} } ]
`;
}

function policies(gw: number, up: Record<'retry' | 'slow' | 'pertry' | 'fault', ControlUpstream>): Record<string, string> {
  return {
    'services.yaml': [service('retry', up.retry.port), service('slow', up.slow.port), service('pertry', up.pertry.port), service('fault', up.fault.port)].join(
      '---\n',
    ),
    'gateway.yaml': `apiVersion: signalbox.dev/v1alpha1
kind: Gateway
metadata: { name: gateway }
spec:
  listeners: [ { name: http, port: ${gw}, protocol: HTTP } ]
`,
    'routes.yaml': `apiVersion: signalbox.dev/v1alpha1
kind: HTTPRoute
metadata: { name: resilience }
spec:
  parentRefs: [ { kind: Gateway, name: gateway } ]
  rules:
    - name: retry
      matches: [ { path: { value: /retry } } ]
      backendRefs: [ { name: retry } ]
      timeout: 5s
      retries:
        attempts: 2
        retryOn: [retriable-status-codes, reset]
        retriableStatusCodes: [503]
        backoff: { baseInterval: 10ms, maxInterval: 50ms }
    - name: slow
      matches: [ { path: { value: /slow } } ]
      backendRefs: [ { name: slow } ]
      timeout: ${ROUTE_TIMEOUT_MS}ms
    - name: pertry
      matches: [ { path: { value: /pertry } } ]
      backendRefs: [ { name: pertry } ]
      timeout: 3s
      retries: { attempts: 1, perTryTimeout: ${PER_TRY_TIMEOUT_MS}ms, retryOn: [gateway-error] }
    - name: fault
      matches: [ { path: { value: /fault } } ]
      backendRefs: [ { name: fault } ]
      filters:
        - type: FaultInjection
          faultInjection:
            delay: { fixed: ${FAULT_DELAY_MS}ms, percent: ${FAULT_DELAY_PERCENT} }
            abort: { httpStatus: 503, percent: ${FAULT_ABORT_PERCENT} }
`,
  };
}

describe('route retries, timeouts and fault injection through real Envoy', () => {
  let env: GatewayEnv;
  let up: Record<'retry' | 'slow' | 'pertry' | 'fault', ControlUpstream>;

  before(async () => {
    const [retry, slow, pertry, fault] = await Promise.all(['retry', 'slow', 'pertry', 'fault'].map((n) => startControlUpstream(n)));
    up = { retry: retry!, slow: slow!, pertry: pertry!, fault: fault! };
    env = await startGatewayEnv({ name: 'resilience', files: (gw) => policies(gw, up) });
    await waitFor(async () => (await timedGet(env.url('/retry'))).status === 200, { what: 'routes served', timeoutMs: 15_000 });
  });

  after(async () => {
    await env?.stop();
    await Promise.all(Object.values(up ?? {}).map((u) => u.close()));
  });

  test('an upstream 503 on the first attempt still gives the client 200; the upstream saw 2 attempts', async () => {
    up.retry.reset();
    const retriesBefore = await env.stat('cluster.retry.upstream_rq_retry');
    up.retry.failNext(1, 503);
    const r = await timedGet(env.url('/retry/a'));
    assert.equal(r.status, 200, r.body);
    assert.equal(r.headers.get('x-upstream-count'), '2', 'the 200 came from the second attempt');
    assert.equal(up.retry.count, 2);
    assert.deepEqual(
      up.retry.seen.map((s) => s.outcome),
      ['status', 'ok'],
    );
    assert.equal((await env.stat('cluster.retry.upstream_rq_retry')) - retriesBefore, 1, 'Envoy counted one retry');
  });

  test('a connection reset on the first attempt is retried (retryOn: reset)', async () => {
    up.retry.reset();
    up.retry.resetNext(1);
    const r = await timedGet(env.url('/retry/b'));
    assert.equal(r.status, 200, r.body);
    assert.equal(up.retry.count, 2);
    assert.deepEqual(
      up.retry.seen.map((s) => s.outcome),
      ['reset', 'ok'],
    );
  });

  test('retries never exceed attempts: an upstream that always fails sees 1 + attempts requests', async () => {
    for (const path of ['/retry/c', '/retry/d']) {
      up.retry.reset();
      up.retry.failNext(100, 503);
      const r = await timedGet(env.url(path));
      assert.equal(r.status, 503, 'the last failure reaches the client');
      assert.equal(up.retry.count, 3, `attempts: 2 means 1 try + 2 retries, upstream saw ${up.retry.count}`);
    }
    // A status the route does not retry on is returned at once.
    up.retry.reset();
    up.retry.failNext(100, 500);
    const r = await timedGet(env.url('/retry/e'));
    assert.equal(r.status, 500);
    assert.equal(up.retry.count, 1, '500 is not in retriableStatusCodes');
  });

  test(`a slow upstream gives 504 at the route timeout (${ROUTE_TIMEOUT_MS}ms +-20%)`, async () => {
    up.slow.reset();
    up.slow.setDelay(5_000);
    const times: number[] = [];
    for (let i = 0; i < 3; i++) {
      const r = await timedGet(env.url(`/slow/${i}`));
      assert.equal(r.status, 504, r.body);
      assert.match(r.body, /upstream request timeout/);
      times.push(r.ms);
    }
    console.log(`route timeout ${ROUTE_TIMEOUT_MS}ms: 504 after ${times.map((t) => t.toFixed(0)).join(', ')}ms`);
    for (const ms of times) {
      assert.ok(
        ms >= ROUTE_TIMEOUT_MS * 0.8 && ms <= ROUTE_TIMEOUT_MS * 1.2,
        `504 after ${ms.toFixed(0)}ms, want ${ROUTE_TIMEOUT_MS}ms +-20% (all: ${times.map((t) => t.toFixed(0)).join(', ')})`,
      );
    }
    assert.equal(up.slow.count, 3, 'no retries on a route without retries');
    up.slow.setDelay(0);
    assert.equal((await timedGet(env.url('/slow/fast'))).status, 200);
  });

  test('perTryTimeout cuts a slow attempt short and the retry answers', async () => {
    up.pertry.reset();
    up.pertry.delayNext(1, 2_500);
    const r = await timedGet(env.url('/pertry/x'));
    assert.equal(r.status, 200, r.body);
    assert.equal(up.pertry.count, 2, 'the slow first attempt was abandoned and retried');
    assert.equal(r.headers.get('x-upstream-count'), '2');
    assert.ok(r.ms < 2_500, `answered after ${r.ms.toFixed(0)}ms: Envoy did not wait for the slow attempt`);
  });

  test(`fault injection: ${FAULT_DELAY_PERCENT}% delayed and ${FAULT_ABORT_PERCENT}% aborted over 1,000 requests, within 3 points`, async () => {
    up.fault.reset();
    const delaysBefore = await env.stat('http.gateway_http.fault.delays_injected');
    const abortsBefore = await env.stat('http.gateway_http.fault.aborts_injected');
    const n = 1000;
    const results = await pool(n, 10, (i) => timedGet(env.url(`/fault/${i}`)));
    const aborted = results.filter((r) => r.status === 503 && /fault filter abort/.test(r.body)).length;
    // Envoy's timers may fire a little early: a delayed response takes at least ~95% of the delay.
    const slow = results.filter((r) => r.ms >= FAULT_DELAY_MS * 0.95).length;
    const other = results.filter((r) => r.status !== 200 && r.status !== 503);
    assert.deepEqual(
      other.map((r) => r.status),
      [],
      'only 200 and injected 503',
    );
    const delayed = (await env.stat('http.gateway_http.fault.delays_injected')) - delaysBefore;
    const abortStat = (await env.stat('http.gateway_http.fault.aborts_injected')) - abortsBefore;
    const delayPct = (delayed / n) * 100;
    const abortPct = (aborted / n) * 100;
    console.log(
      `fault injection over ${n} requests: ${delayPct.toFixed(1)}% delayed (Envoy's count; ${slow} responses took >= ${FAULT_DELAY_MS * 0.95}ms at the client), ${abortPct.toFixed(1)}% aborted (Envoy: ${abortStat})`,
    );
    // Which requests Envoy delayed is known from its counter (client timings alone cannot tell a
    // delayed request from one slowed by a busy machine); every delay it counts was really served:
    // at least that many clients waited the full delay.
    assert.ok(Math.abs(delayPct - FAULT_DELAY_PERCENT) <= 3, `${delayPct}% delayed, want ${FAULT_DELAY_PERCENT}% +-3`);
    assert.ok(slow >= delayed, `${delayed} delays injected but only ${slow} responses took ${FAULT_DELAY_MS * 0.95}ms or more`);
    assert.ok(Math.abs(abortPct - FAULT_ABORT_PERCENT) <= 3, `${abortPct}% aborted, want ${FAULT_ABORT_PERCENT}% +-3`);
    assert.equal(abortStat, aborted, 'every injected abort reached the client as 503');
    assert.equal(up.fault.count, n - aborted, 'aborted requests never reach the upstream');
  });
});
