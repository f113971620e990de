// RateLimitPolicy (local token buckets) proven through real Envoy: per-header buckets on an
// HTTPRoute rule, a shared bucket on another rule, per-client-IP buckets on one Gateway listener;
// 429 with x-ratelimit-* headers; another key unaffected; the bucket refills.
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { startControlUpstream, type ControlUpstream } from '../helpers/control-upstream.js';
import { startGatewayEnv, type GatewayEnv } from '../helpers/gateway-env.js';
import { freePort, waitFor } from '../helpers/net.js';
import { burst as burstOf, burstStats, closeClients, get, type Reply } from '../helpers/ratelimit-client.js';

const LIMIT = 10;
const burst = (send: () => Promise<Reply>) => burstOf(send, LIMIT);

function policies(api: number, edge: number, up: ControlUpstream): Record<string, string> {
  return {
    'app.yaml': `apiVersion: signalbox.dev/v1alpha1
kind: Service
metadata: { name: app }
spec:
  port: 8080
  endpoints: [ { address: 127.0.0.1, port: ${up.port} } ]
---
apiVersion: signalbox.dev/v1alpha1
kind: Gateway
metadata: { name: gateway }
spec:
  listeners:
    - { name: api, port: ${api}, protocol: HTTP }
    - { name: edge, port: ${edge}, protocol: HTTP }
---
apiVersion: signalbox.dev/v1alpha1
kind: HTTPRoute
metadata: { name: app }
spec:
  parentRefs: [ { kind: Gateway, name: gateway } ]
  rules:
    - name: keyed
      matches: [ { path: { value: /keyed } } ]
      backendRefs: [ { name: app } ]
    - name: shared
      matches: [ { path: { value: /shared } } ]
      backendRefs: [ { name: app } ]
    - name: open
      matches: [ { path: { value: /open } } ]
      backendRefs: [ { name: app } ]
    - name: overload
      matches: [ { path: { value: /overload } } ]
      backendRefs: [ { name: app } ]
`,
    'limits.yaml': `apiVersion: signalbox.dev/v1alpha1
kind: RateLimitPolicy
metadata: { name: per-key }
spec:
  targetRef: { kind: HTTPRoute, name: app, sectionName: keyed }
  local: { requests: ${LIMIT}, per: 1s, by: { header: x-api-key } }
---
apiVersion: signalbox.dev/v1alpha1
kind: RateLimitPolicy
metadata: { name: shared }
spec:
  targetRef: { kind: HTTPRoute, name: app, sectionName: shared }
  local: { requests: ${LIMIT}, per: 1s }
---
apiVersion: signalbox.dev/v1alpha1
kind: RateLimitPolicy
metadata: { name: per-client }
spec:
  targetRef: { kind: Gateway, name: gateway, sectionName: edge }
  local: { requests: ${LIMIT}, per: 1s, by: { clientIP: true } }
---
apiVersion: signalbox.dev/v1alpha1
kind: RateLimitPolicy
metadata: { name: overload }
spec:
  targetRef: { kind: HTTPRoute, name: app, sectionName: overload }
  local: { requests: ${LIMIT}, per: 1s, statusCode: 503 }
`,
  };
}

describe('RateLimitPolicy through real Envoy', () => {
  let env: GatewayEnv;
  let up: ControlUpstream;
  let edgePort: number;

  before(async () => {
    up = await startControlUpstream('app');
    edgePort = await freePort();
    env = await startGatewayEnv({ name: 'ratelimit', files: (api) => policies(api, edgePort, up) });
    await waitFor(async () => (await get(env.gatewayPort, '/open')).status === 200 && (await get(edgePort, '/open')).status === 200, {
      what: 'both listeners serving',
      timeoutMs: 15_000,
    });
  });

  after(async () => {
    await env?.stop();
    await up?.close();
    closeClients();
    console.log(`bursts repeated because a token came back mid-burst: ${burstStats.retries}`);
  });

  test(`per header: with ${LIMIT} requests/s the 11th is 429, another key is unaffected, the bucket refills`, async () => {
    const replies = await burst(() => get(env.gatewayPort, '/keyed', { headers: { 'x-api-key': 'alice' } }));
    assert.deepEqual(
      replies.map((r) => r.status),
      [...Array(LIMIT).fill(200), 429],
    );
    const limited = replies[LIMIT]!;
    assert.equal(limited.headers['x-ratelimit-limit'], String(LIMIT));
    assert.equal(limited.headers['x-ratelimit-remaining'], '0');
    assert.ok(limited.headers['x-ratelimit-reset'] !== undefined, 'x-ratelimit-reset is sent');
    assert.equal(limited.headers['x-ratelimit-policy'], 'per-key');
    assert.equal(replies[0]!.headers['x-ratelimit-remaining'], String(LIMIT - 1), 'allowed responses carry the headers too');
    // Another key has its own bucket.
    const bob = await get(env.gatewayPort, '/keyed', { headers: { 'x-api-key': 'bob' } });
    assert.equal(bob.status, 200);
    assert.equal(bob.headers['x-ratelimit-remaining'], String(LIMIT - 1));
    // alice is limited until tokens come back: Envoy refills continuously, LIMIT per window.
    const t429 = limited.at;
    let refilled: Reply | undefined;
    await waitFor(
      async () => {
        const r = await get(env.gatewayPort, '/keyed', { headers: { 'x-api-key': 'alice' } });
        if (r.status === 200) refilled = r;
        else assert.equal(r.status, 429);
        return r.status === 200;
      },
      { what: 'alice refilled', timeoutMs: 3_000, intervalMs: 20 },
    );
    const waited = refilled!.at - t429;
    console.log(`rate limit per header: 11th request 429 (remaining 0, limit ${LIMIT}); other key 200; refilled ${waited.toFixed(0)}ms after the 429`);
    assert.ok(waited <= 1_200, `refilled ${waited.toFixed(0)}ms after the 429; the window is 1s`);
    assert.equal(refilled!.headers['x-ratelimit-limit'], String(LIMIT));
  });

  test('shared bucket: every caller draws from one bucket, whatever its headers', async () => {
    let i = 0;
    const replies = await burst(() => get(env.gatewayPort, '/shared', { headers: { 'x-api-key': `k${i++}` } }));
    assert.deepEqual(
      replies.map((r) => r.status),
      [...Array(LIMIT).fill(200), 429],
    );
    assert.equal(replies[LIMIT]!.headers['x-ratelimit-policy'], 'shared');
    // Rules without a policy are not limited.
    for (let k = 0; k < LIMIT + 5; k++) assert.equal((await get(env.gatewayPort, '/open')).status, 200);
  });

  test("statusCode: a refused request gets the policy's status instead of 429, with the same headers", async () => {
    const replies = await burstOf(() => get(env.gatewayPort, '/overload'), LIMIT, 1000, 503);
    assert.deepEqual(
      replies.map((r) => r.status),
      [...Array(LIMIT).fill(200), 503],
    );
    // Envoy adds x-ratelimit-policy only to the answers its limiter refused: the 503 is the limiter's, not the upstream's.
    assert.equal(replies[LIMIT]!.headers['x-ratelimit-policy'], 'overload');
    assert.equal(replies[LIMIT]!.headers['x-ratelimit-remaining'], '0');
  });

  test('per client IP on one Gateway listener: one address is limited, another is not, the other listener is not', async () => {
    const replies = await burst(() => get(edgePort, '/open', { from: '127.0.0.1' }));
    assert.deepEqual(
      replies.map((r) => r.status),
      [...Array(LIMIT).fill(200), 429],
    );
    assert.equal(replies[LIMIT]!.headers['x-ratelimit-policy'], 'per-client');
    const other = await get(edgePort, '/open', { from: '127.0.0.2' });
    assert.equal(other.status, 200, 'a different client address has its own bucket');
    assert.equal(other.headers['x-ratelimit-remaining'], String(LIMIT - 1));
    // The listener-wide limit applies to every route of the listener, and only to that listener.
    assert.equal((await get(edgePort, '/shared', { from: '127.0.0.1' })).status, 429);
    assert.equal((await get(env.gatewayPort, '/open', { from: '127.0.0.1' })).status, 200);
  });
});
