// TrafficPolicy proven against real Envoy and misbehaving upstreams: circuit breaker overflow,
// outlier ejection, active health checks, RingHash stickiness, and the precedence of route
// settings over TrafficPolicy over Mesh defaults.
import assert from 'node:assert/strict';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { startControlUpstream, type ControlUpstream } from '../helpers/control-upstream.js';
import { startGatewayEnv, timedGet, type GatewayEnv } from '../helpers/gateway-env.js';
import { waitFor } from '../helpers/net.js';

const POLICY_TIMEOUT_MS = 400;

function service(name: string, ups: ControlUpstream[]): string {
  return `apiVersion: signalbox.dev/v1alpha1
kind: Service
metadata: { name: ${name} }
spec:
  port: 8080
  endpoints:
${ups.map((u) => `    - { address: 127.0.0.1, port: ${u.port} }`).join('\n')}
`;
}

type Ups = Record<'cb' | 'odA' | 'odB' | 'hcA' | 'hcB' | 'rh1' | 'rh2' | 'rh3' | 'prec', ControlUpstream>;

function policies(gw: number, u: Ups): Record<string, string> {
  const rule = (name: string, path: string, backend: string, extra = '') =>
    `    - name: ${name}\n      matches: [ { path: { value: ${path} } } ]\n      backendRefs: [ { name: ${backend} } ]\n${extra}`;
  return {
    'mesh.yaml': `apiVersion: signalbox.dev/v1alpha1
kind: Mesh
metadata: { name: default }
spec:
  defaults:
    timeout: 7s
    retries: { attempts: 1, retryOn: [connect-failure] }
`,
    'services.yaml': [
      service('cb', [u.cb]),
      service('od', [u.odA, u.odB]),
      service('hc', [u.hcA, u.hcB]),
      service('rh', [u.rh1, u.rh2, u.rh3]),
      service('prec', [u.prec]),
    ].join('---\n'),
    'gateway.yaml': `apiVersion: signalbox.dev/v1alpha1
kind: Gateway
metadata: { name: gateway }
spec:
  listeners: [ { name: http, port: ${gw}, protocol: HTTP } ]
`,
    'routes.yaml': `apiVersion: signalbox.dev/v1alpha1
kind: HTTPRoute
metadata: { name: traffic }
spec:
  parentRefs: [ { kind: Gateway, name: gateway } ]
  rules:
${rule('cb', '/cb', 'cb', '      retries: { attempts: 0 }\n')}${rule('od', '/od', 'od', '      retries: { attempts: 0 }\n')}${rule('hc', '/hc', 'hc')}${rule('rh', '/rh', 'rh')}${rule('prec-policy', '/prec/policy', 'prec')}${rule('prec-route', '/prec/route', 'prec', '      timeout: 3s\n      retries: { attempts: 2, retryOn: [reset] }\n')}`,
    // Two policies on one Service are merged when they set different fields.
    'traffic-a.yaml': `apiVersion: signalbox.dev/v1alpha1
kind: TrafficPolicy
metadata: { name: cb-limits }
spec:
  targetRef: { kind: Service, name: cb }
  circuitBreaker: { maxConnections: 1, maxPendingRequests: 1, maxRequests: 1 }
---
apiVersion: signalbox.dev/v1alpha1
kind: TrafficPolicy
metadata: { name: od-eject }
spec:
  targetRef: { kind: Service, name: od }
  outlierDetection: { consecutive5xx: 3, interval: 1s, baseEjectionTime: 60s, maxEjectionPercent: 50 }
---
apiVersion: signalbox.dev/v1alpha1
kind: TrafficPolicy
metadata: { name: hc-probe }
spec:
  targetRef: { kind: Service, name: hc }
  healthCheck: { path: /healthz, interval: 400ms, timeout: 350ms, unhealthyThreshold: 2, healthyThreshold: 1 }
---
apiVersion: signalbox.dev/v1alpha1
kind: TrafficPolicy
metadata: { name: rh-sticky }
spec:
  targetRef: { kind: Service, name: rh }
  loadBalancer: { type: RingHash, hashOn: { header: x-user } }
`,
    'traffic-b.yaml': `apiVersion: signalbox.dev/v1alpha1
kind: TrafficPolicy
metadata: { name: prec-timeouts }
spec:
  targetRef: { kind: Service, name: prec }
  timeout: ${POLICY_TIMEOUT_MS}ms
---
apiVersion: signalbox.dev/v1alpha1
kind: TrafficPolicy
metadata: { name: prec-connect }
spec:
  targetRef: { kind: Service, name: prec }
  connectTimeout: 750ms
`,
  };
}

describe('TrafficPolicy through real Envoy', () => {
  let env: GatewayEnv;
  let u: Ups;

  before(async () => {
    const names = ['cb', 'odA', 'odB', 'hcA', 'hcB', 'rh1', 'rh2', 'rh3', 'prec'] as const;
    const started = await Promise.all(names.map((n) => startControlUpstream(n)));
    u = Object.fromEntries(names.map((n, i) => [n, started[i]!])) as Ups;
    env = await startGatewayEnv({ name: 'traffic', files: (gw) => policies(gw, u) });
    await waitFor(async () => (await timedGet(env.url('/cb'))).status === 200, { what: 'routes served', timeoutMs: 15_000 });
  });

  after(async () => {
    await env?.stop();
    await Promise.all(Object.values(u ?? {}).map((x) => x.close()));
  });

  test('a flood beyond the circuit breaker gets fast 503s marked x-envoy-overloaded', async () => {
    u.cb.reset();
    // One warm request leaves one idle upstream connection (maxConnections: 1).
    assert.equal((await timedGet(env.url('/cb/warm'))).status, 200);
    const overflowBefore = await env.stat('cluster.cb.upstream_rq_pending_overflow');
    u.cb.reset();
    u.cb.hold();
    const n = 8;
    let settled = 0;
    const results = Array.from({ length: n }, (_, i) =>
      timedGet(env.url(`/cb/${i}`)).then((r) => {
        settled++;
        return r;
      }),
    );
    // The upstream holds the one request the breaker lets through; the overflow is answered by
    // Envoy while that request is still held.
    await waitFor(() => u.cb.inFlight === 1 && settled >= 1, { what: 'one request at the upstream, overflow answered', timeoutMs: 5_000 });
    await waitFor(async () => settled + u.cb.inFlight + (await env.stat('cluster.cb.upstream_rq_pending_active')) === n, {
      what: 'every request either held, pending or answered',
      timeoutMs: 5_000,
    });
    const early = settled;
    assert.equal(u.cb.count, 1, 'only one request reached the held upstream');
    u.cb.release();
    const all = await Promise.all(results);
    const overloaded = all.filter((r) => r.status === 503);
    const ok = all.filter((r) => r.status === 200);
    assert.equal(ok.length + overloaded.length, n, `statuses: ${all.map((r) => r.status).join(',')}`);
    assert.equal(overloaded.length, early, 'every 503 was answered before the upstream released anything');
    assert.ok(overloaded.length >= n - 2, `${overloaded.length} of ${n} overflowed; 1 active + 1 pending fit`);
    for (const r of overloaded) assert.equal(r.headers.get('x-envoy-overloaded'), 'true');
    assert.equal(u.cb.maxInFlight, 1, 'the upstream never saw more than maxRequests at once');
    assert.equal((await env.stat('cluster.cb.upstream_rq_pending_overflow')) - overflowBefore, overloaded.length, "Envoy's overflow counter matches");
    console.log(`circuit breaker: ${overloaded.length} of ${n} concurrent requests overflowed (503 x-envoy-overloaded), ${ok.length} served`);
  });

  test('outlier detection ejects the instance returning 5xx and traffic shifts to the healthy one', async () => {
    u.odA.reset();
    u.odB.reset();
    u.odB.setStatus(500);
    let errors = 0;
    let sent = 0;
    await waitFor(
      async () => {
        sent++;
        const r = await timedGet(env.url(`/od/${sent}`));
        if (r.status === 500) errors++;
        return (await env.stat('cluster.od.outlier_detection.ejections_active')) === 1;
      },
      { what: 'odB ejected', timeoutMs: 10_000, intervalMs: 1 },
    );
    assert.equal(errors, 3, `consecutive5xx: 3 ejects after exactly 3 errors (saw ${errors} in ${sent} requests)`);
    const bBefore = u.odB.count;
    for (let i = 0; i < 40; i++) {
      const r = await timedGet(env.url(`/od/after/${i}`));
      assert.equal(r.status, 200);
      assert.equal(r.headers.get('x-upstream'), 'odA');
    }
    assert.equal(u.odB.count, bBefore, 'the ejected instance got no traffic');
    console.log(`outlier detection: ejected after ${errors} errors in ${sent} requests; next 40 requests all served by the healthy instance`);
  });

  test('an instance failing its health path stops getting traffic, and gets it back when healthy', async () => {
    u.hcA.reset();
    u.hcB.reset();
    await waitFor(async () => (await env.stat('cluster.hc.membership_healthy')) === 2, { what: 'both instances healthy', timeoutMs: 10_000 });
    // Envoy probes both instances on their health path.
    await waitFor(() => u.hcA.healthCount > 0 && u.hcB.healthCount > 0, { what: 'health probes at both instances', timeoutMs: 5_000 });
    u.hcB.setHealthy(false);
    await waitFor(async () => (await env.stat('cluster.hc.membership_healthy')) === 1, { what: 'hcB marked unhealthy', timeoutMs: 10_000 });
    const bBefore = u.hcB.count;
    for (let i = 0; i < 30; i++) {
      const r = await timedGet(env.url(`/hc/${i}`));
      assert.equal(r.status, 200);
      assert.equal(r.headers.get('x-upstream'), 'hcA');
    }
    assert.equal(u.hcB.count, bBefore, 'the unhealthy instance got no traffic');
    u.hcB.setHealthy(true);
    await waitFor(async () => (await env.stat('cluster.hc.membership_healthy')) === 2, { what: 'hcB healthy again', timeoutMs: 10_000 });
    // Envoy delivers health changes after the first within its update merge window (1s by
    // default), so the recovered instance gets traffic again shortly after.
    const bAgain = u.hcB.count;
    let i = 0;
    await waitFor(async () => (await timedGet(env.url(`/hc/back/${i++}`))).status === 200 && u.hcB.count > bAgain, {
      what: 'traffic back at hcB',
      timeoutMs: 10_000,
      intervalMs: 20,
    });
  });

  test('RingHash keeps one key on one instance', async () => {
    const placement = new Map<string, Set<string>>();
    for (let k = 0; k < 20; k++) {
      const user = `user-${k}`;
      for (let i = 0; i < 8; i++) {
        const r = await timedGet(env.url(`/rh/${i}`), { headers: { 'x-user': user } });
        assert.equal(r.status, 200);
        placement.set(user, (placement.get(user) ?? new Set()).add(r.headers.get('x-upstream')!));
      }
    }
    for (const [user, where] of placement) assert.equal(where.size, 1, `${user} went to ${[...where].join(', ')}`);
    const used = new Set([...placement.values()].map((s) => [...s][0]));
    assert.ok(used.size >= 2, `20 keys spread over ${used.size} instance(s)`);
    console.log(`RingHash: 20 keys x 8 requests, each key on one instance; keys spread over ${used.size} of 3 instances`);
  });

  test('precedence: the route beats the TrafficPolicy, which beats the Mesh defaults', async () => {
    // The TrafficPolicy's timeout is enforced on the route that says nothing itself.
    u.prec.reset();
    u.prec.setDelay(5_000);
    const r = await timedGet(env.url('/prec/policy/x'));
    assert.equal(r.status, 504);
    assert.ok(r.ms >= POLICY_TIMEOUT_MS * 0.8 && r.ms <= POLICY_TIMEOUT_MS * 1.2, `504 after ${r.ms.toFixed(0)}ms, want ${POLICY_TIMEOUT_MS}ms +-20%`);
    u.prec.reset();
    // What Envoy was given, route by route.
    const dump = await env.envoy.adminJson<any>('/config_dump?resource=dynamic_route_configs');
    const routes = dump.configs.flatMap((c: any) => c.route_config.virtual_hosts.flatMap((v: any) => v.routes));
    const byName = (n: string) => routes.find((x: any) => x.name === n).route;
    assert.equal(byName('traffic/prec-policy/match-0').timeout, '0.400s', 'TrafficPolicy timeout over the Mesh default');
    assert.equal(byName('traffic/prec-route/match-0').timeout, '3s', 'route timeout over the TrafficPolicy');
    assert.equal(byName('traffic/hc/match-0').timeout, '7s', 'Mesh default where nothing else says');
    assert.equal(byName('traffic/hc/match-0').retry_policy.retry_on, 'connect-failure', 'Mesh default retries');
    assert.equal(byName('traffic/prec-route/match-0').retry_policy.num_retries, 2, 'route retries');
    const clusters = await env.envoy.adminJson<any>('/config_dump?resource=dynamic_active_clusters');
    const prec = clusters.configs.find((c: any) => c.cluster.name === 'prec').cluster;
    assert.equal(prec.connect_timeout, '0.750s', 'connectTimeout from the second policy on the same Service');
    const rh = clusters.configs.find((c: any) => c.cluster.name === 'rh').cluster;
    assert.equal(rh.lb_policy, 'RING_HASH');
    // The admin API says where each of those values came from, for this connected proxy.
    const explained = await env.sb.admin(`/api/explain/${env.proxyId}?route=traffic/prec-policy`);
    assert.equal(explained.group, 'gateway/gateway');
    const setting = explained.routes[0].settings;
    assert.deepEqual(
      [setting.timeout.value, setting.timeout.from.kind, setting.timeout.from.name, path.basename(setting.timeout.from.file)],
      ['400ms', 'TrafficPolicy', 'prec-timeouts', 'traffic-b.yaml'],
    );
    assert.deepEqual([setting.retries.from.kind, path.basename(setting.retries.from.file)], ['Mesh', 'mesh.yaml']);
    const precCluster = explained.clusters.find((c: any) => c.name === 'prec').settings;
    assert.deepEqual([precCluster.connectTimeout.value, precCluster.connectTimeout.from.name], ['750ms', 'prec-connect']);
    assert.equal(precCluster.loadBalancer.from.kind, 'default');
  });
});
