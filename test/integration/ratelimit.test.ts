// RateLimitPolicy (local token buckets) proven through real Envoy: per-header buckets on an
// HTTPRoute rule, a shared bucket on another rule, per-client-IP buckets on one Gateway listener;
// 429 with x-ratelimit-* headers; another key unaffected; the bucket refills.
import assert from 'node:assert/strict';
import http from 'node:http';
import { after, before, describe, test } from 'node:test';
import { startControlUpstream, type ControlUpstream } from '../helpers/control-upstream.js';
import { startGatewayEnv, type GatewayEnv } from '../helpers/gateway-env.js';
import { freePort, waitFor } from '../helpers/net.js';

const LIMIT = 10;

interface Reply {
  status: number;
  headers: http.IncomingHttpHeaders;
  at: number;
}

const agent = new http.Agent({ keepAlive: true, maxSockets: 4 });

/** A GET from a chosen loopback source address (so Envoy sees distinct client IPs). */
function get(port: number, path: string, opts: { headers?: Record<string, string>; from?: string } = {}): Promise<Reply> {
  return new Promise((resolve, reject) => {
    const req = http.request({ host: '127.0.0.1', port, path, headers: opts.headers, localAddress: opts.from ?? '127.0.0.1', agent }, (res) => {
      res.resume();
      res.on('end', () => resolve({ status: res.statusCode ?? 0, headers: res.headers, at: performance.now() }));
    });
    req.on('error', reject);
    req.setTimeout(10_000, () => req.destroy(new Error(`GET ${path} timed out`)));
    req.end();
  });
}

/** Envoy refills continuously: one token every per/requests (100ms here). */
const REFILL_STEP_MS = 1000 / LIMIT;

/**
 * Sends LIMIT + 1 requests back to back, the first into a full bucket. Envoy refills the bucket
 * continuously, so a token may come back during a burst; then the 11th is rightly allowed. Every
 * burst must respect the limit (no more 200s than LIMIT plus the refill steps it spanned); bursts
 * in which a token came back are repeated, and the proof is a burst in which none did.
 */
let burstRetries = 0;
async function burst(send: () => Promise<Reply>): Promise<Reply[]> {
  for (let attempt = 0; attempt < 6; attempt++) {
    // The first request must find a full bucket; probing every 300ms lets it fill up.
    let first: Reply | undefined;
    const sentAt = performance.now();
    let firstSentAt = sentAt;
    await waitFor(
      async () => {
        firstSentAt = performance.now();
        first = await send();
        return Number(first.headers['x-ratelimit-remaining']) === LIMIT - 1;
      },
      { what: 'a full bucket', timeoutMs: 10_000, intervalMs: 300 },
    );
    const out: Reply[] = [first!];
    for (let i = 0; i < LIMIT; i++) out.push(await send());
    const spanMs = out[LIMIT]!.at - firstSentAt;
    const ok = out.filter((r) => r.status === 200).length;
    assert.ok(ok <= LIMIT + Math.ceil(spanMs / REFILL_STEP_MS), `${ok} requests allowed in ${spanMs.toFixed(0)}ms: more than the bucket plus its refill`);
    const remaining = out.map((r) => Number(r.headers['x-ratelimit-remaining']));
    const noRefill = remaining.every((v, i) => i === 0 || v === Math.max(0, remaining[i - 1]! - 1)) && out[LIMIT]!.status === 429;
    if (noRefill) return out;
    burstRetries++;
  }
  throw new Error('in 6 bursts a token always came back before the 11th request');
}

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
    await waitFor(async () => (await get(env.gatewayPort, '/open')).status === 200 && (await get(edgePort, '/open')).status === 200, { what: 'both listeners serving', timeoutMs: 15_000 });
  });

  after(async () => {
    await env?.stop();
    await up?.close();
    agent.destroy();
    console.log(`bursts repeated because a token came back mid-burst: ${burstRetries}`);
  });

  test(`per header: with ${LIMIT} requests/s the 11th is 429, another key is unaffected, the bucket refills`, async () => {
    const replies = await burst(() => get(env.gatewayPort, '/keyed', { headers: { 'x-api-key': 'alice' } }));
    assert.deepEqual(replies.map((r) => r.status), [...Array(LIMIT).fill(200), 429]);
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
    assert.deepEqual(replies.map((r) => r.status), [...Array(LIMIT).fill(200), 429]);
    assert.equal(replies[LIMIT]!.headers['x-ratelimit-policy'], 'shared');
    // Rules without a policy are not limited.
    for (let k = 0; k < LIMIT + 5; k++) assert.equal((await get(env.gatewayPort, '/open')).status, 200);
  });

  test('per client IP on one Gateway listener: one address is limited, another is not, the other listener is not', async () => {
    const replies = await burst(() => get(edgePort, '/open', { from: '127.0.0.1' }));
    assert.deepEqual(replies.map((r) => r.status), [...Array(LIMIT).fill(200), 429]);
    assert.equal(replies[LIMIT]!.headers['x-ratelimit-policy'], 'per-client');
    const other = await get(edgePort, '/open', { from: '127.0.0.2' });
    assert.equal(other.status, 200, 'a different client address has its own bucket');
    assert.equal(other.headers['x-ratelimit-remaining'], String(LIMIT - 1));
    // The listener-wide limit applies to every route of the listener, and only to that listener.
    assert.equal((await get(edgePort, '/shared', { from: '127.0.0.1' })).status, 429);
    assert.equal((await get(env.gatewayPort, '/open', { from: '127.0.0.1' })).status, 200);
  });
});
