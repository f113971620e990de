// Consul discovery end to end: a REAL Consul agent (built by scripts/provision-consul.sh), a real
// `signalbox serve --consul-addr`, a real Envoy gateway (Delta ADS) and real HTTP upstreams.
import assert from 'node:assert/strict';
import { mkdirSync, mkdtempSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { startConsul, type ConsulAgent } from '../helpers/consul.js';
import { repoRoot, startEnvoy, type Envoy } from '../helpers/envoy.js';
import { freePort, httpGet, waitFor } from '../helpers/net.js';
import { startSignalbox, type SignalboxProcess } from '../helpers/signalbox.js';
import { startUpstream, type Upstream } from '../helpers/upstream.js';

function policies(gwPort: number): string {
  return `apiVersion: signalbox.dev/v1alpha1
kind: Mesh
metadata: { name: default }
spec:
  mtls: { mode: disabled }   # the gateway speaks plain HTTP to sidecar ports (mTLS to sidecars is tested elsewhere)
---
apiVersion: signalbox.dev/v1alpha1
kind: Service
metadata: { name: web }
spec:
  port: 8080
  consul: { service: web, tags: [prod] }
---
apiVersion: signalbox.dev/v1alpha1
kind: Service
metadata: { name: billing }
spec:
  port: 8080
  consul: { service: billing }
---
apiVersion: signalbox.dev/v1alpha1
kind: Service
metadata: { name: steady }
spec:
  port: 8080
  consul: { service: steady }
---
apiVersion: signalbox.dev/v1alpha1
kind: Service
metadata: { name: swap }
spec:
  port: 8080
  consul: { service: swap }   # one instance at a time: replaced under traffic
---
apiVersion: signalbox.dev/v1alpha1
kind: Gateway
metadata: { name: edge }
spec:
  listeners: [ { name: http, port: ${gwPort}, protocol: HTTP } ]
---
apiVersion: signalbox.dev/v1alpha1
kind: HTTPRoute
metadata: { name: edge }
spec:
  parentRefs: [ { kind: Gateway, name: edge } ]
  rules:
    - name: web
      matches: [ { path: { type: PathPrefix, value: /web } } ]
      backendRefs: [ { name: web } ]
    - name: billing
      matches: [ { path: { type: PathPrefix, value: /billing } } ]
      backendRefs: [ { name: billing } ]
    - name: steady
      matches: [ { path: { type: PathPrefix, value: /steady } } ]
      backendRefs: [ { name: steady } ]
    - name: swap
      matches: [ { path: { type: PathPrefix, value: /swap } } ]
      backendRefs: [ { name: swap } ]
`;
}

describe('Consul discovery with a real Consul, a real Envoy gateway and real traffic', () => {
  let consul: ConsulAgent;
  let sb: SignalboxProcess;
  let envoy: Envoy;
  let gw: number;
  const ups = new Map<string, Upstream>();
  const proxyId = 'edge-consul';
  const url = (p: string) => `http://127.0.0.1:${gw}${p}`;

  const consulApi = async (method: string, p: string, body?: unknown) => {
    const res = await fetch(`http://${consul.httpAddr}${p}`, { method, body: body === undefined ? undefined : JSON.stringify(body) });
    const text = await res.text();
    if (!res.ok) throw new Error(`consul ${method} ${p}: ${res.status} ${text}`);
    return text;
  };
  const register = (id: string, port: number, extra: Record<string, unknown> = {}) =>
    consulApi('PUT', '/v1/agent/service/register', {
      ID: id,
      Name: 'web',
      Address: '127.0.0.1',
      Port: port,
      Tags: ['prod'],
      Meta: { instance: id },
      Check: { CheckID: `${id}-ttl`, TTL: '300s', Status: 'passing' },
      ...extra,
    });
  const upstream = async (name: string) => {
    const u = await startUpstream(name);
    ups.set(name, u);
    return u;
  };
  const hits = (name: string) => ups.get(name)!.seen.length;
  /** Sends n sequential requests; returns how many each upstream answered and how many failed. */
  const send = async (n: number, p = '/web') => {
    const by: Record<string, number> = {};
    let failed = 0;
    for (let i = 0; i < n; i++) {
      const r = await httpGet(url(p)).catch(() => ({ status: 0, headers: new Headers() }));
      if (r.status !== 200) failed++;
      else {
        const who = r.headers.get('x-upstream') ?? '?';
        by[who] = (by[who] ?? 0) + 1;
      }
    }
    return { by, failed };
  };
  /**
   * Sends batches of 9 requests (round robin over at most 4 hosts: every host gets some) until a
   * batch has none for `name`, or the deadline passes. No request may fail meanwhile.
   */
  const untilNoTraffic = async (name: string, deadline: number) => {
    while (Date.now() < deadline) {
      const before = hits(name);
      const { failed } = await send(9);
      assert.equal(failed, 0, 'no request fails while an instance leaves the rotation');
      if (hits(name) === before) return true;
    }
    return false;
  };
  const untilTraffic = async (name: string, deadline: number) => {
    while (Date.now() < deadline) {
      const before = hits(name);
      assert.equal((await send(3)).failed, 0);
      if (hits(name) > before) return true;
    }
    return false;
  };
  const pushes = async () => {
    const s = await sb.admin(`/api/proxies/${proxyId}`);
    return Object.fromEntries(Object.entries(s.types as Record<string, { pushes: number }>).map(([k, v]) => [k, v.pushes]));
  };
  const sentEndpoints = async () => {
    const cfg = await sb.admin(`/api/config/${proxyId}`);
    return cfg.resources.endpoint as { name: string; version: string; resource: any }[];
  };

  before(async () => {
    gw = await freePort();
    consul = await startConsul({ persistent: true });
    const [a, b, c] = [await upstream('web-1'), await upstream('web-2'), await upstream('web-3')];
    await register('web-1', a.port);
    await register('web-2', b.port);
    await register('web-3', c.port);
    // Instances without a TTL check: Consul re-arms TTL checks as critical when it restarts (until
    // the application's next heartbeat), so the restart tests send their traffic here.
    for (const n of ['steady-1', 'steady-2'])
      await consulApi('PUT', '/v1/agent/service/register', { ID: n, Name: 'steady', Address: '127.0.0.1', Port: (await upstream(n)).port });
    const dir = mkdtempSync(path.join(os.tmpdir(), 'sb-consul-'));
    writeFileSync(path.join(dir, 'policies.yaml'), policies(gw));
    sb = await startSignalbox({ policies: dir, extraArgs: ['--consul-addr', consul.httpAddr, '--data-dir', path.join(dir, '.data')] });
    envoy = await startEnvoy({ name: proxyId, bootstrapYaml: await sb.bootstrap({ gateway: 'edge', id: proxyId, delta: true }) });
    await waitFor(async () => (await httpGet(url('/web'))).status === 200, { what: 'first request through the gateway', timeoutMs: 15_000 });
  });

  after(async () => {
    // Kept for post-mortems (test-artifacts/ is git-ignored).
    mkdirSync(path.join(repoRoot(), 'test-artifacts'), { recursive: true });
    writeFileSync(
      path.join(repoRoot(), 'test-artifacts', 'consul.test.log'),
      `--- signalbox ---\n${sb?.logs()}\n--- envoy ---\n${envoy?.logs()}\n--- consul ---\n${consul?.logs().slice(-100_000)}\n`,
    );
    await envoy?.stop();
    await sb?.kill();
    await consul?.stop();
    await Promise.all([...ups.values()].map((u) => u.close()));
  });

  test('three registered instances all receive traffic; /api/sources shows the watch synced', async () => {
    const { by, failed } = await send(30);
    assert.equal(failed, 0);
    assert.deepEqual(Object.keys(by).sort(), ['web-1', 'web-2', 'web-3'], JSON.stringify(by));
    const src = await sb.admin('/api/sources');
    const c = src.sources[0];
    assert.equal(c.name, 'consul');
    assert.equal(c.synced, true);
    assert.equal(c.stale, false);
    const web = c.watches.find((w: { consulService: string }) => w.consulService === 'web');
    assert.deepEqual(web.policyServices, ['web']);
    assert.equal(web.instances, 3);
    // Tags and Meta became labels; the endpoint is at the instance's port.
    const cla = (await sentEndpoints()).find((e) => e.name === 'web');
    assert.equal(cla?.resource.endpoints[0].lb_endpoints.length, 3);
  });

  test('a TTL check turned critical stops traffic to that instance within 2 s; passing brings it back within 2 s', async () => {
    const t0 = Date.now();
    await consulApi('PUT', '/v1/agent/check/fail/web-2-ttl?note=test');
    assert.ok(await untilNoTraffic('web-2', t0 + 2_000), 'web-2 still received traffic 2 s after its check turned critical');
    const removedAfterMs = Date.now() - t0;
    const stillBefore = hits('web-2');
    const { by, failed } = await send(30);
    assert.equal(failed, 0);
    assert.equal(hits('web-2'), stillBefore, `web-2 got traffic while critical: ${JSON.stringify(by)}`);
    assert.ok((by['web-1'] ?? 0) > 0 && (by['web-3'] ?? 0) > 0);
    const cla = (await sentEndpoints()).find((e) => e.name === 'web')!;
    assert.deepEqual(cla.resource.endpoints[0].lb_endpoints.map((e: any) => e.health_status).sort(), ['HEALTHY', 'HEALTHY', 'UNHEALTHY']);

    const t1 = Date.now();
    await consulApi('PUT', '/v1/agent/check/pass/web-2-ttl');
    assert.ok(await untilTraffic('web-2', t1 + 2_000), 'web-2 got no traffic 2 s after its check passed again');
    process.stderr.write(`consul: critical -> no traffic after ${removedAfterMs} ms; passing -> traffic after ${Date.now() - t1} ms\n`);
  });

  test('maintenance mode drains an instance (DRAINING) within 2 s and disabling it restores traffic', async () => {
    const t0 = Date.now();
    await consulApi('PUT', '/v1/agent/service/maintenance/web-3?enable=true&reason=deploy');
    assert.ok(await untilNoTraffic('web-3', t0 + 2_000), 'web-3 still received traffic 2 s after maintenance was enabled');
    const cla = (await sentEndpoints()).find((e) => e.name === 'web')!;
    assert.ok(
      cla.resource.endpoints[0].lb_endpoints.some((e: any) => e.health_status === 'DRAINING'),
      JSON.stringify(cla.resource),
    );
    const before = hits('web-3');
    assert.equal((await send(15)).failed, 0);
    assert.equal(hits('web-3'), before, 'a draining instance gets no new requests');
    const t1 = Date.now();
    await consulApi('PUT', '/v1/agent/service/maintenance/web-3?enable=false');
    assert.ok(await untilTraffic('web-3', t1 + 2_000), 'web-3 got no traffic 2 s after maintenance ended');
  });

  test('a deregistered instance is removed; a new one is added with endpoint pushes only (no listener, route or cluster push)', async () => {
    const edsUpdates = async (cluster: string) =>
      Number(/: (\d+)/.exec(await envoy.admin(`/stats?filter=^cluster\\.${cluster}\\.update_success$`))?.[1] ?? NaN);
    const p0 = await pushes();
    const [web0, billing0] = [await edsUpdates('web'), await edsUpdates('billing')];
    const t0 = Date.now();
    await consulApi('PUT', '/v1/agent/service/deregister/web-1');
    assert.ok(await untilNoTraffic('web-1', t0 + 2_000), 'web-1 still received traffic 2 s after it was deregistered');
    const before = hits('web-1');
    assert.equal((await send(15)).failed, 0);
    assert.equal(hits('web-1'), before, 'a deregistered instance gets no traffic');
    assert.equal((await sentEndpoints()).find((e) => e.name === 'web')!.resource.endpoints[0].lb_endpoints.length, 2);

    const d = await upstream('web-4');
    const t1 = Date.now();
    await register('web-4', d.port);
    assert.ok(await untilTraffic('web-4', t1 + 2_000), 'web-4 got no traffic 2 s after it was registered');
    const p1 = await pushes();
    assert.ok(p1.endpoint! > p0.endpoint!, `endpoint pushes ${p0.endpoint} -> ${p1.endpoint}`);
    for (const t of ['listener', 'route', 'cluster']) assert.equal(p1[t], p0[t], `${t} pushes changed ${p0[t]} -> ${p1[t]}: endpoint changes must be EDS-only`);
    await waitFor(async () => (await sb.admin(`/api/proxies/${proxyId}`)).state === 'SYNCED', { what: 'endpoint update ACKed' });
    // Delta: only the changed ClusterLoadAssignment was sent; Envoy saw no update for billing's.
    assert.ok((await edsUpdates('web')) >= web0 + 2, `web EDS updates ${web0} -> ${await edsUpdates('web')}`);
    assert.equal(await edsUpdates('billing'), billing0, 'the unchanged billing ClusterLoadAssignment was not re-sent');
  });

  test('an instance replaced (deregistered, its replacement registered at once) under traffic: 0 failed requests, 5 switches', async () => {
    const registerSwap = (id: string, port: number) =>
      consulApi('PUT', '/v1/agent/service/register', { ID: id, Name: 'swap', Address: '127.0.0.1', Port: port });
    let current = await upstream('swap-0');
    await registerSwap('swap-0', current.port);
    await waitFor(async () => (await httpGet(url('/swap'))).status === 200, { what: 'swap-0 serving', timeoutMs: 5_000 });
    // Two clients send requests back to back for the whole test; every answer must be a 200.
    let stop = false;
    const statuses: Record<number, number> = {};
    const client = async () => {
      while (!stop) {
        const r = await httpGet(url('/swap')).catch(() => ({ status: 0 }));
        statuses[r.status] = (statuses[r.status] ?? 0) + 1;
      }
    };
    const clients = [client(), client()];
    const switchMs: number[] = [];
    try {
      for (let n = 1; n <= 5; n++) {
        const next = await upstream(`swap-${n}`);
        const t0 = Date.now();
        // The order a redeploy's scripts often use: the old one out, then the new one in.
        await consulApi('PUT', `/v1/agent/service/deregister/swap-${n - 1}`);
        await registerSwap(`swap-${n}`, next.port);
        await waitFor(async () => next.seen.length > 0, { what: `traffic reaches swap-${n}`, timeoutMs: 5_000 });
        switchMs.push(Date.now() - t0);
        // The old instance shuts down once it gets no more requests (its in-flight ones are done).
        const before = current.seen.length;
        await new Promise((r) => setTimeout(r, 300));
        assert.equal(current.seen.length, before, `swap-${n - 1} still gets requests after swap-${n} took over`);
        await current.close();
        ups.delete(`swap-${n - 1}`);
        current = next;
      }
    } finally {
      stop = true;
      await Promise.all(clients);
    }
    const total = Object.values(statuses).reduce((a, b) => a + b, 0);
    process.stderr.write(
      `consul: 5 replacements under traffic, ${total} requests, statuses ${JSON.stringify(statuses)}, switch times ${switchMs.join(', ')} ms\n`,
    );
    assert.deepEqual(Object.keys(statuses), ['200'], `every request succeeded during the replacements: ${JSON.stringify(statuses)}`);
    assert.ok(total > 100, `traffic flowed (${total} requests)`);
  });

  test('a service registered with a connect-proxy sidecar is routed to the sidecar port', async () => {
    const app = await upstream('billing-app');
    const sidecar = await upstream('billing-sidecar');
    await consulApi('PUT', '/v1/agent/service/register', {
      ID: 'billing-1',
      Name: 'billing',
      Address: '127.0.0.1',
      Port: app.port,
      Check: { CheckID: 'billing-1-ttl', TTL: '300s', Status: 'passing' },
    });
    await consulApi('PUT', '/v1/agent/service/register', {
      ID: 'billing-1-sidecar-proxy',
      Name: 'billing-sidecar-proxy',
      Kind: 'connect-proxy',
      Address: '127.0.0.1',
      Port: sidecar.port,
      Proxy: { DestinationServiceName: 'billing', DestinationServiceID: 'billing-1', LocalServiceAddress: '127.0.0.1', LocalServicePort: app.port },
      Check: { CheckID: 'billing-1-sidecar-ttl', TTL: '300s', Status: 'passing' },
    });
    // Envoy has exactly one billing host, at the sidecar's port.
    await waitFor(
      async () =>
        (await envoy.admin('/clusters'))
          .split('\n')
          .filter((l) => /^billing::\d.*::health_flags::/.test(l))
          .join() === `billing::127.0.0.1:${sidecar.port}::health_flags::healthy`,
      { what: 'billing host at the sidecar port', timeoutMs: 5_000 },
    );
    const { by, failed } = await send(10, '/billing');
    assert.equal(failed, 0);
    assert.deepEqual(by, { 'billing-sidecar': 10 }, 'traffic goes to the sidecar, never straight to the app port');
    assert.equal(app.seen.length, 0);
    const src = await sb.admin('/api/sources');
    assert.equal(src.sources[0].watches.find((w: { consulService: string }) => w.consulService === 'billing').sidecars, 1);
    // The sidecar's health counts: a critical sidecar takes its instance out of rotation.
    await consulApi('PUT', '/v1/agent/check/fail/billing-1-sidecar-ttl');
    await waitFor(async () => (await httpGet(url('/billing'))).status === 503, { what: 'instance with a critical sidecar out of rotation', timeoutMs: 2_000 });
    await consulApi('PUT', '/v1/agent/check/pass/billing-1-sidecar-ttl');
    await waitFor(async () => (await httpGet(url('/billing'))).status === 200, { what: 'sidecar passing again', timeoutMs: 2_000 });
  });

  test('a registration with an unusable address is skipped, logged and counted; the rest is kept', async () => {
    await consulApi('PUT', '/v1/agent/service/register', { ID: 'web-bad', Name: 'web', Address: 'not-an-ip.example', Port: 9, Tags: ['prod'] });
    await waitFor(async () => /signalbox_consul_skipped_instances_total\{reason="invalid_address"\} [1-9]/.test(await sb.adminText('/metrics')), {
      what: 'skip counted',
    });
    assert.match(sb.logs(), /skipped registration .*web-bad: address \\"not-an-ip.example\\" is not an IP address/);
    const { by, failed } = await send(12);
    assert.equal(failed, 0);
    assert.deepEqual(Object.keys(by).sort(), ['web-2', 'web-3', 'web-4']);
    await consulApi('PUT', '/v1/agent/service/deregister/web-bad');
  });

  test('Consul killed while traffic flows: no failed request, endpoints unchanged, source stale; restarted: resync', async () => {
    let ok = 0;
    let failed = 0;
    let running = true;
    const traffic = (async () => {
      while (running) {
        const r = await httpGet(url('/steady')).catch(() => ({ status: 0 }));
        if (r.status === 200) ok++;
        else failed++;
      }
    })();
    try {
      await waitFor(() => ok > 20, { what: 'traffic flowing' });
      const endpointsBefore = (await sentEndpoints()).map((e) => [e.name, e.version]);
      const clustersBefore = await envoy.admin('/clusters');
      const hostsOf = (text: string) =>
        text
          .split('\n')
          .filter((l) => /^(web|steady)::\d/.test(l) && /::health_flags::/.test(l))
          .sort();
      await consul.kill();
      await waitFor(async () => (await sb.admin('/api/sources')).sources[0].stale === true, { what: 'source marked stale', timeoutMs: 5_000 });
      const src = (await sb.admin('/api/sources')).sources[0];
      const web = src.watches.find((w: { consulService: string }) => w.consulService === 'web');
      assert.equal(web.stale, true);
      assert.equal(web.lastError.reason, 'network');
      assert.equal(web.instances, 3, 'last known instances kept');
      assert.match(await sb.adminText('/metrics'), /^signalbox_consul_stale 1$/m);
      assert.match(await sb.adminText('/metrics'), /signalbox_consul_errors_total\{endpoint="health",reason="network"\} [1-9]/);
      const readyz = await fetch(`http://127.0.0.1:${sb.adminPort}/readyz`);
      assert.equal(readyz.status, 200, 'readiness stays true once a first full sync happened');
      const during = ok;
      await waitFor(() => ok > during + 50, { what: 'traffic during the Consul outage' });
      assert.deepEqual(
        (await sentEndpoints()).map((e) => [e.name, e.version]),
        endpointsBefore,
        'no endpoint change sent while Consul is down',
      );
      assert.deepEqual(hostsOf(await envoy.admin('/clusters')), hostsOf(clustersBefore), 'Envoy keeps the same hosts');

      await consul.restart();
      await waitFor(async () => (await sb.admin('/api/sources')).sources[0].stale === false, {
        what: 'source fresh again after Consul restart',
        timeoutMs: 20_000,
      });
      // Resynced: a change made after the restart reaches Envoy.
      const e = await upstream('web-5');
      await register('web-5', e.port);
      // (web's other instances have TTL checks, which Consul re-arms as critical on restart: /web
      // may answer 503 until web-5 arrives, so its requests are not part of the steady count.)
      await waitFor(async () => (await httpGet(url('/web'))).headers.get('x-upstream') === 'web-5', {
        what: 'web-5 (registered after the restart) receives traffic',
        timeoutMs: 10_000,
      });
    } finally {
      running = false;
      await traffic;
    }
    assert.equal(failed, 0, `${failed} of ${ok + failed} requests failed across the Consul outage and restart`);
    process.stderr.write(`consul outage: ${ok} requests, ${failed} failed\n`);
  });
  test('Signalbox restarted while Consul is down: Envoy keeps its endpoints (no empty endpoint set is served); xDS resumes once Consul answers', async () => {
    let ok = 0;
    let failed = 0;
    let running = true;
    const traffic = (async () => {
      while (running) {
        const r = await httpGet(url('/steady')).catch(() => ({ status: 0 }));
        if (r.status === 200) ok++;
        else failed++;
      }
    })();
    try {
      await waitFor(() => ok > 20, { what: 'traffic flowing' });
      await consul.kill();
      await sb.kill('SIGKILL');
      const restarting = sb.restart(); // resolves when /readyz answers: only after Consul is back
      await waitFor(async () => /control_plane.connected_state: 0/.test(await envoy.admin('/stats?filter=control_plane.connected_state')), {
        what: 'envoy lost the control plane',
      });
      const during = ok;
      await waitFor(() => ok > during + 100, { what: 'traffic while both Consul and Signalbox are down' });
      assert.match(
        await envoy.admin('/stats?filter=control_plane.connected_state'),
        /connected_state: 0/,
        'the new Signalbox does not serve xDS before its first Consul sync',
      );
      await consul.restart();
      await restarting;
      await waitFor(async () => /control_plane.connected_state: 1/.test(await envoy.admin('/stats?filter=control_plane.connected_state')), {
        what: 'envoy reconnected',
        timeoutMs: 15_000,
      });
      await waitFor(async () => (await sb.admin(`/api/proxies/${proxyId}`).catch(() => ({}))).state === 'SYNCED', { what: 'proxy re-synced' });
      const after = ok;
      await waitFor(() => ok > after + 50, { what: 'traffic after the restart' });
      assert.match(sb.logs(), /waiting for the first answer for every watched service before serving xDS|first full sync done/);
    } finally {
      running = false;
      await traffic;
    }
    assert.equal(failed, 0, `${failed} of ${ok + failed} requests failed`);
  });
});

describe('a Consul restarted without its data (-dev) resyncs without dropping endpoints that still exist', () => {
  let consul: ConsulAgent;
  let sb: SignalboxProcess;
  let envoy: Envoy;
  let gw: number;
  const ups: Upstream[] = [];
  const url = (p: string) => `http://127.0.0.1:${gw}${p}`;
  const register = async (id: string, port: number) => {
    const res = await fetch(`http://${consul.httpAddr}/v1/agent/service/register`, {
      method: 'PUT',
      body: JSON.stringify({
        ID: id,
        Name: 'web',
        Address: '127.0.0.1',
        Port: port,
        Tags: ['prod'],
        Check: { CheckID: `${id}-ttl`, TTL: '300s', Status: 'passing' },
      }),
    });
    assert.equal(res.status, 200, await res.text());
  };
  const webHosts = async () => (await envoy.admin('/clusters')).split('\n').filter((l) => /^web::\d.*::health_flags::healthy$/.test(l)).length;

  before(async () => {
    gw = await freePort();
    consul = await startConsul();
    ups.push(await startUpstream('dev-a'), await startUpstream('dev-b'));
    await register('dev-a', ups[0]!.port);
    await register('dev-b', ups[1]!.port);
    const dir = mkdtempSync(path.join(os.tmpdir(), 'sb-consul-dev-'));
    writeFileSync(path.join(dir, 'policies.yaml'), policies(gw));
    sb = await startSignalbox({
      policies: dir,
      extraArgs: ['--consul-addr', consul.httpAddr, '--data-dir', path.join(dir, '.data')],
      env: { SIGNALBOX_CONSUL_RESYNC_GRACE_MS: '3000', SIGNALBOX_CONSUL_BACKOFF_MAX_MS: '1000' },
    });
    envoy = await startEnvoy({ name: 'edge-consul-dev', bootstrapYaml: await sb.bootstrap({ gateway: 'edge', id: 'edge-consul-dev', delta: false }) });
    await waitFor(async () => (await webHosts()) === 2, { what: 'two web hosts in Envoy', timeoutMs: 15_000 });
  });

  after(async () => {
    mkdirSync(path.join(repoRoot(), 'test-artifacts'), { recursive: true });
    writeFileSync(
      path.join(repoRoot(), 'test-artifacts', 'consul-dev.test.log'),
      `--- signalbox ---\n${sb?.logs()}\n--- envoy ---\n${envoy?.logs()}\n--- consul ---\n${consul?.logs().slice(-100_000)}\n`,
    );
    await envoy?.stop();
    await sb?.kill();
    await consul?.stop();
    await Promise.all(ups.map((u) => u.close()));
  });

  test('empty fresh catalog: endpoints kept; re-registered ones stay; the one never re-registered goes after the grace period', async () => {
    let ok = 0;
    let failed = 0;
    let running = true;
    const traffic = (async () => {
      while (running) {
        const r = await httpGet(url('/web')).catch(() => ({ status: 0 }));
        if (r.status === 200) ok++;
        else failed++;
      }
    })();
    try {
      await waitFor(() => ok > 10, { what: 'traffic flowing' });
      await consul.restart(); // -dev: the catalog comes back empty, with a fresh index
      await waitFor(async () => (await sb.admin('/api/sources')).sources[0].stale === false, { what: 'source fresh after the restart', timeoutMs: 20_000 });
      const web = (await sb.admin('/api/sources')).sources[0].watches.find((w: { consulService: string }) => w.consulService === 'web');
      assert.ok(web.resyncGraceUntil, `a resync grace period is running: ${JSON.stringify(web)}`);
      assert.equal(await webHosts(), 2, 'nothing dropped although the fresh Consul lists no instance');
      await register('dev-a', ups[0]!.port); // dev-b never comes back
      const before = ok;
      await waitFor(() => ok > before + 20, { what: 'traffic after the resync' });
      await waitFor(async () => (await webHosts()) === 1, { what: 'dev-b dropped after the grace period', timeoutMs: 10_000 });
      const b = ups[1]!.seen.length;
      const a = ups[0]!.seen.length;
      await waitFor(() => ups[0]!.seen.length > a + 10, { what: 'traffic to dev-a' });
      assert.equal(ups[1]!.seen.length, b, 'dev-b gets no traffic once dropped');
    } finally {
      running = false;
      await traffic;
    }
    assert.equal(failed, 0, `${failed} of ${ok + failed} requests failed`);
  });
});

describe('--consul-import imports Consul services that no policy file declares', () => {
  let consul: ConsulAgent;
  let sb: SignalboxProcess;
  let envoy: Envoy;
  let gw: number;
  const ups: Upstream[] = [];
  const url = (p: string) => `http://127.0.0.1:${gw}${p}`;
  const register = async (body: Record<string, unknown>) => {
    const res = await fetch(`http://${consul.httpAddr}/v1/agent/service/register`, { method: 'PUT', body: JSON.stringify(body) });
    assert.equal(res.status, 200, await res.text());
  };

  before(async () => {
    gw = await freePort();
    consul = await startConsul();
    ups.push(await startUpstream('shop-api'), await startUpstream('internal'));
    await register({ ID: 'shop-1', Name: 'Shop_API', Address: '127.0.0.1', Port: ups[0]!.port, Tags: ['edge'] });
    await register({ ID: 'internal-1', Name: 'internal', Address: '127.0.0.1', Port: ups[1]!.port, Tags: ['private'] });
    const dir = mkdtempSync(path.join(os.tmpdir(), 'sb-consul-import-'));
    // No Service documents at all: the route's backend comes from Consul.
    writeFileSync(
      path.join(dir, 'edge.yaml'),
      `apiVersion: signalbox.dev/v1alpha1
kind: Gateway
metadata: { name: edge }
spec:
  listeners: [ { name: http, port: ${gw}, protocol: HTTP } ]
---
apiVersion: signalbox.dev/v1alpha1
kind: HTTPRoute
metadata: { name: shop }
spec:
  parentRefs: [ { kind: Gateway, name: edge } ]
  rules: [ { backendRefs: [ { name: shop-api } ] } ]
`,
    );
    sb = await startSignalbox({
      policies: dir,
      extraArgs: ['--consul-addr', consul.httpAddr, '--consul-import', 'tag=edge', '--data-dir', path.join(dir, '.data')],
    });
    envoy = await startEnvoy({ name: 'edge-consul-import', bootstrapYaml: await sb.bootstrap({ gateway: 'edge', id: 'edge-consul-import', delta: true }) });
  });

  after(async () => {
    await envoy?.stop();
    await sb?.kill();
    await consul?.stop();
    await Promise.all(ups.map((u) => u.close()));
  });

  test('a tagged Consul service is routable by its (DNS-label) name; untagged ones are not imported; the list follows Consul', async () => {
    await waitFor(async () => (await httpGet(url('/'))).headers.get('x-upstream') === 'shop-api', { what: 'imported service served', timeoutMs: 15_000 });
    assert.match(sb.logs(), /"first full sync done"|first full sync done/);
    assert.doesNotMatch(sb.logs(), /policy directory rejected/, 'the first load waited for the imported list');
    const imp = (await sb.admin('/api/sources')).sources[0].extra.import;
    assert.deepEqual(imp.services, { 'shop-api': 'Shop_API' });
    assert.equal(imp.mode, 'tag=edge');
    await register({ ID: 'late-1', Name: 'late', Address: '127.0.0.1', Port: ups[1]!.port, Tags: ['edge'] });
    await waitFor(async () => (await sb.admin('/api/sources')).sources[0].extra.import.services.late === 'late', {
      what: 'late service imported',
      timeoutMs: 5_000,
    });
    await waitFor(
      async () =>
        (await sb.admin('/api/sources')).sources[0].watches.some((w: { consulService: string; synced: boolean }) => w.consulService === 'late' && w.synced),
      { what: 'late service watched' },
    );
  });
});
