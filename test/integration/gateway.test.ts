// A real Envoy gateway fed by a real `signalbox serve` process, carrying real HTTP traffic, in
// both state-of-the-world and Delta ADS. Also: an Envoy bootstrap saved into the policy directory
// is skipped with a warning and later edits still reach Envoy; under `serve --strict` it holds them back.
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { promisify } from 'node:util';
import { repoRoot, startEnvoy, type Envoy } from '../helpers/envoy.js';
import { startGatewayEnv, type GatewayEnv } from '../helpers/gateway-env.js';
import { freePort, httpGet, waitFor } from '../helpers/net.js';
import { startSignalbox, type SignalboxProcess } from '../helpers/signalbox.js';
import { startUpstream, type Upstream } from '../helpers/upstream.js';

interface Ports {
  gw: number;
  a: number;
  b: number;
  c: number;
  d: number;
}

function servicesYaml(p: Ports): string {
  return `apiVersion: signalbox.dev/v1alpha1
kind: Service
metadata: { name: shop }
spec:
  port: 8080
  endpoints:
    - { address: 127.0.0.1, port: ${p.a}, labels: { version: v1 } }
    - { address: 127.0.0.1, port: ${p.b}, labels: { version: v2 } }
  subsets:
    - { name: v1, labels: { version: v1 } }
    - { name: v2, labels: { version: v2 } }
---
apiVersion: signalbox.dev/v1alpha1
kind: Service
metadata: { name: search }
spec:
  port: 8080
  endpoints: [ { address: 127.0.0.1, port: ${p.c} } ]
---
apiVersion: signalbox.dev/v1alpha1
kind: Service
metadata: { name: admin }
spec:
  port: 8080
  endpoints: [ { address: 127.0.0.1, port: ${p.d} } ]
---
apiVersion: signalbox.dev/v1alpha1
kind: Gateway
metadata: { name: edge }
spec:
  listeners: [ { name: http, port: ${p.gw}, protocol: HTTP } ]
`;
}

/** What `signalbox bootstrap --gateway NAME > policies/envoy.yaml` writes into the policy directory: the real command's output. */
async function savedBootstrap(sb: SignalboxProcess, gateway: string): Promise<string> {
  const { stdout } = await promisify(execFile)(process.execPath, [
    path.join(repoRoot(), 'bin/signalbox.js'),
    'bootstrap',
    '--gateway',
    gateway,
    '--data-dir',
    sb.dataDir,
    '--xds-address',
    `127.0.0.1:${sb.xdsPort}`,
  ]);
  assert.match(stdout, /^node:/m, 'an Envoy bootstrap');
  return stdout;
}

function routesYaml(opts: { splitV1: number; splitV2: number; searchBackend?: string }): string {
  return `apiVersion: signalbox.dev/v1alpha1
kind: HTTPRoute
metadata: { name: shop }
spec:
  parentRefs: [ { kind: Gateway, name: edge } ]
  rules:
    - name: split
      matches: [ { path: { type: PathPrefix, value: /shop } } ]
      backendRefs:
        - { name: shop, subset: v1, weight: ${opts.splitV1} }
        - { name: shop, subset: v2, weight: ${opts.splitV2} }
    - name: beta
      matches: [ { path: { type: PathPrefix, value: /shop }, headers: [ { name: x-beta, value: "yes" } ] } ]
      backendRefs: [ { name: shop, subset: v2 } ]
---
apiVersion: signalbox.dev/v1alpha1
kind: HTTPRoute
metadata: { name: search }
spec:
  parentRefs: [ { kind: Gateway, name: edge } ]
  rules:
    - name: exact
      matches: [ { path: { type: Exact, value: /search } } ]
      backendRefs: [ { name: ${opts.searchBackend ?? 'search'} } ]
      filters:
        - { type: URLRewrite, urlRewrite: { path: { replaceFullPath: /internal/query } } }
        - { type: RequestHeaderModifier, requestHeaderModifier: { set: [ { name: x-env, value: test } ], add: [ { name: x-added, value: one } ], remove: [ x-secret-debug ] } }
    - name: api
      matches: [ { path: { type: PathPrefix, value: /api/search } } ]
      backendRefs: [ { name: search } ]
      filters:
        - { type: URLRewrite, urlRewrite: { path: { replacePrefixMatch: /v2 } } }
        - { type: ResponseHeaderModifier, responseHeaderModifier: { set: [ { name: x-route, value: api } ] } }
---
apiVersion: signalbox.dev/v1alpha1
kind: HTTPRoute
metadata: { name: admin }
spec:
  parentRefs: [ { kind: Gateway, name: edge } ]
  rules:
    - name: writes
      matches: [ { path: { type: PathPrefix, value: /admin }, method: POST } ]
      backendRefs: [ { name: admin } ]
`;
}

for (const mode of ['sotw', 'delta'] as const) {
  describe(`real Envoy gateway over ${mode === 'sotw' ? 'state-of-the-world' : 'Delta'} ADS`, () => {
    let dir: string;
    let ports: Ports;
    let ups: Record<'a' | 'b' | 'c' | 'd', Upstream>;
    let sb: SignalboxProcess;
    let envoy: Envoy;
    const url = (p: string) => `http://127.0.0.1:${ports.gw}${p}`;
    const proxyId = `edge-${mode}`;

    before(async () => {
      const [a, b, c, d] = await Promise.all([startUpstream('shop-v1'), startUpstream('shop-v2'), startUpstream('search'), startUpstream('admin')]);
      ups = { a: a!, b: b!, c: c!, d: d! };
      ports = { gw: await freePort(), a: a!.port, b: b!.port, c: c!.port, d: d!.port };
      dir = mkdtempSync(path.join(os.tmpdir(), `sb-gw-${mode}-`));
      writeFileSync(path.join(dir, 'services.yaml'), servicesYaml(ports));
      writeFileSync(path.join(dir, 'routes.yaml'), routesYaml({ splitV1: 80, splitV2: 20 }));
      sb = await startSignalbox({ policies: dir });
      envoy = await startEnvoy({
        name: proxyId,
        bootstrapYaml: await sb.bootstrap({ gateway: 'edge', id: proxyId, delta: mode === 'delta' }),
      });
      await waitFor(async () => (await httpGet(url('/search'))).status === 200, { what: 'first route served' });
    });

    after(async () => {
      await envoy?.stop();
      await sb?.kill();
      await Promise.all(Object.values(ups ?? {}).map((u) => u.close()));
    });

    const upstreamOf = async (p: string, init: RequestInit = {}) => {
      const r = await httpGet(url(p), init);
      return { status: r.status, upstream: r.headers.get('x-upstream'), r };
    };

    test('routes by path prefix, exact path, header and method', async () => {
      assert.equal((await upstreamOf('/search')).upstream, 'search');
      assert.equal((await upstreamOf('/search/more')).status, 404, 'Exact /search must not match /search/more');
      assert.equal((await upstreamOf('/shop/cart', { headers: { 'x-beta': 'yes' } })).upstream, 'shop-v2');
      assert.equal((await upstreamOf('/shopping')).status, 404, 'PathPrefix /shop matches whole segments only');
      assert.equal((await upstreamOf('/admin/users', { method: 'POST' })).upstream, 'admin');
      assert.equal((await upstreamOf('/admin/users', { method: 'GET' })).status, 404, 'GET is not routed by a POST-only rule');
    });

    test('a weighted 80/20 split over 1,000 requests lands within 5 points', async () => {
      let v1 = 0;
      const n = 1000;
      for (let i = 0; i < n; i++) {
        const { upstream, status } = await upstreamOf(`/shop/item/${i}`);
        assert.equal(status, 200);
        if (upstream === 'shop-v1') v1++;
      }
      const share = (v1 / n) * 100;
      process.stderr.write(`weighted split (${mode}): v1 got ${v1} of ${n} requests (${share.toFixed(1)}%, want 80 +- 5)\n`);
      assert.ok(Math.abs(share - 80) <= 5, `v1 got ${share}% of requests, want 80% +- 5`);
    });

    test('URLRewrite and header modifiers are visible at the upstream', async () => {
      const before = ups.c.seen.length;
      const r = await httpGet(url('/search?q=envoy'), { headers: { 'x-secret-debug': '1', 'x-env': 'prod' } });
      assert.equal(r.status, 200);
      const seen = ups.c.seen[before]!;
      assert.equal(seen.path, '/internal/query?q=envoy');
      assert.equal(seen.headers['x-env'], 'test');
      assert.equal(seen.headers['x-added'], 'one');
      assert.equal(seen.headers['x-secret-debug'], undefined);
      const api = await httpGet(url('/api/search/items?x=1'));
      assert.equal(api.status, 200);
      assert.equal(api.json().path, '/v2/items?x=1');
      assert.equal(api.headers.get('x-route'), 'api');
    });

    test('a policy edit changes routing without restarting Envoy and is ACKed', async () => {
      const pidBefore = envoy.process.pid;
      const stats = await envoy.admin('/stats?filter=^server.uptime$');
      writeFileSync(path.join(dir, 'routes.yaml'), routesYaml({ splitV1: 80, splitV2: 20, searchBackend: 'admin' }));
      await waitFor(async () => (await upstreamOf('/search')).upstream === 'admin', { what: 'edited route live', timeoutMs: 10_000 });
      assert.equal(envoy.process.pid, pidBefore);
      assert.ok(stats.includes('server.uptime'));
      // Envoy's own view of the route configuration agrees with what Signalbox says it ACKed.
      await waitFor(async () => (await sb.admin(`/api/proxies/${proxyId}`)).state === 'SYNCED', { what: 'proxy synced' });
      const status = await sb.admin(`/api/proxies/${proxyId}`);
      const route = status.types.route;
      assert.equal(route.ackedVersion, route.sentVersion);
      assert.equal(status.protocol, mode);
      const config = await sb.admin(`/api/config/${proxyId}`);
      const sentRoute = config.resources.route.find((r: { name: string }) => r.name === 'edge/http');
      assert.ok(JSON.stringify(sentRoute.resource).includes('"cluster":"admin"'));
      const dump = await envoy.adminJson<any>('/config_dump?resource=dynamic_route_configs');
      const envoyRoute = dump.configs.find((c: any) => c.route_config.name === 'edge/http');
      const expected = mode === 'sotw' ? route.ackedVersion : sentRoute.version;
      assert.equal(envoyRoute.version_info, expected, 'Envoy runs the version Signalbox recorded as ACKed');
    });

    test('an invalid edit changes nothing and shows up in /api/errors', async () => {
      const versionBefore = (await sb.admin(`/api/proxies/${proxyId}`)).types.route.ackedVersion;
      writeFileSync(path.join(dir, 'routes.yaml'), routesYaml({ splitV1: 80, splitV2: 20, searchBackend: 'serch' }));
      await waitFor(async () => (await sb.admin('/api/errors')).valid === false, { what: 'error reported' });
      const errors = await sb.admin('/api/errors');
      assert.ok(
        errors.errors.some((e: { text: string }) =>
          e.text.includes('routes.yaml#2 spec.rules[0].backendRefs[0].name: unknown Service "serch" (did you mean "search"?)'),
        ),
        JSON.stringify(errors),
      );
      const metrics = await sb.adminText('/metrics');
      assert.match(metrics, /^signalbox_policy_errors [1-9]/m);
      assert.equal((await upstreamOf('/search')).upstream, 'admin', 'routing unchanged');
      assert.equal((await sb.admin(`/api/proxies/${proxyId}`)).types.route.ackedVersion, versionBefore);
      // Fixing the file applies again.
      writeFileSync(path.join(dir, 'routes.yaml'), routesYaml({ splitV1: 80, splitV2: 20 }));
      await waitFor(async () => (await upstreamOf('/search')).upstream === 'search', { what: 'fixed route live' });
      assert.equal((await sb.admin('/api/errors')).valid, true);
    });

    test('an Envoy bootstrap saved into the policy directory is a warning in /api/errors; a route edit made next to it reaches Envoy', async () => {
      writeFileSync(path.join(dir, 'envoy.yaml'), await savedBootstrap(sb, 'edge'));
      await waitFor(async () => (await sb.admin('/api/errors')).warnings.length > 0, { what: 'the bootstrap listed as a warning' });
      const listed = await sb.admin('/api/errors');
      assert.equal(listed.valid, true);
      assert.deepEqual(listed.errors, []);
      assert.deepEqual(
        listed.warnings.map((w: { file: string; doc: number; code: string; severity: string }) => [path.basename(w.file), w.doc, w.code, w.severity]),
        [['envoy.yaml', 1, 'SB_NOT_SIGNALBOX', 'warning']],
      );
      assert.match(listed.warnings[0].text, /envoy\.yaml#1: not a Signalbox document \(it has neither apiVersion nor kind/);
      assert.match(await sb.adminText('/metrics'), /^signalbox_policy_warnings 1$/m);
      // The edit that a bootstrap in the directory used to hold back: live, and traffic follows it.
      writeFileSync(path.join(dir, 'routes.yaml'), routesYaml({ splitV1: 80, splitV2: 20, searchBackend: 'admin' }));
      await waitFor(async () => (await upstreamOf('/search')).upstream === 'admin', { what: 'the route edit live next to the bootstrap', timeoutMs: 10_000 });
      for (let i = 0; i < 10; i++) assert.equal((await upstreamOf('/search')).upstream, 'admin');
      await waitFor(async () => (await sb.admin(`/api/proxies/${proxyId}`)).state === 'SYNCED', { what: 'proxy synced' });
      const later = await sb.admin('/api/errors');
      assert.equal(later.valid, true);
      assert.equal(later.warnings.length, 1, 'still listed after the incremental reload of routes.yaml alone');
      // Back as the other tests expect it.
      rmSync(path.join(dir, 'envoy.yaml'));
      writeFileSync(path.join(dir, 'routes.yaml'), routesYaml({ splitV1: 80, splitV2: 20 }));
      await waitFor(async () => (await upstreamOf('/search')).upstream === 'search' && (await sb.admin('/api/errors')).warnings.length === 0, {
        what: 'bootstrap gone, route restored',
      });
    });

    test('killing and restarting Signalbox drops no request and Envoy re-syncs', async () => {
      let ok = 0;
      let failed = 0;
      let running = true;
      const traffic = (async () => {
        while (running) {
          const r = await httpGet(url(`/shop/k`)).catch(() => ({ status: 0 }));
          if (r.status === 200) ok++;
          else failed++;
        }
      })();
      await waitFor(() => ok > 20, { what: 'traffic flowing' });
      await sb.kill('SIGKILL');
      await waitFor(async () => /control_plane.connected_state: 0/.test(await envoy.admin('/stats?filter=control_plane.connected_state')), {
        what: 'envoy notices the control plane is gone',
      });
      const duringOutage = ok;
      await waitFor(() => ok > duringOutage + 20, { what: 'traffic served while the control plane is down' });
      await sb.restart();
      await waitFor(async () => /control_plane.connected_state: 1/.test(await envoy.admin('/stats?filter=control_plane.connected_state')), {
        what: 'envoy reconnected',
        timeoutMs: 15_000,
      });
      await waitFor(async () => (await sb.admin(`/api/proxies/${proxyId}`).catch(() => ({}))).state === 'SYNCED', { what: 'proxy re-synced' });
      const afterRestart = ok;
      await waitFor(() => ok > afterRestart + 20, { what: 'traffic after restart' });
      running = false;
      await traffic;
      assert.equal(failed, 0, `${failed} of ${ok + failed} requests failed`);
      assert.ok(ok > 60);
    });
  });
}

describe('serve --strict: a document that is not a Signalbox document holds every edit back', () => {
  let env: GatewayEnv;
  let ups: Upstream[];
  const services = (port: number) => `apiVersion: signalbox.dev/v1alpha1
kind: Service
metadata: { name: first }
spec: { port: 8080, endpoints: [ { address: 127.0.0.1, port: ${ups[0]!.port} } ] }
---
apiVersion: signalbox.dev/v1alpha1
kind: Service
metadata: { name: second }
spec: { port: 8080, endpoints: [ { address: 127.0.0.1, port: ${ups[1]!.port} } ] }
---
apiVersion: signalbox.dev/v1alpha1
kind: Gateway
metadata: { name: gateway }
spec: { listeners: [ { name: http, port: ${port}, protocol: HTTP } ] }
`;
  const route = (backend: string) => `apiVersion: signalbox.dev/v1alpha1
kind: HTTPRoute
metadata: { name: r }
spec:
  parentRefs: [ { kind: Gateway, name: gateway } ]
  rules: [ { matches: [ { path: { type: PathPrefix, value: /r } } ], backendRefs: [ { name: ${backend} } ] } ]
`;
  const upstreamOf = async () => (await httpGet(env.url('/r'))).headers.get('x-upstream');

  before(async () => {
    ups = await Promise.all([startUpstream('first'), startUpstream('second')]);
    env = await startGatewayEnv({
      name: 'strict',
      serveArgs: ['--strict'],
      files: (port) => ({ 'services.yaml': services(port), 'route.yaml': route('first') }),
    });
    await waitFor(async () => (await upstreamOf()) === 'first', { what: 'first route served' });
  });
  after(async () => {
    await env?.stop();
    await Promise.all((ups ?? []).map((u) => u.close()));
  });

  test('the bootstrap is an error; the route edit made next to it never reaches Envoy until the bootstrap is gone', async () => {
    await env.synced();
    const routeBefore = (await env.sb.admin(`/api/proxies/${env.proxyId}`)).types.route.ackedVersion;
    env.write('envoy.yaml', await savedBootstrap(env.sb, 'gateway'));
    await waitFor(async () => (await env.sb.admin('/api/errors')).valid === false, { what: 'the bootstrap refused' });
    // The file's creation and its content can be two reloads: wait until no further one comes, so
    // the next rejection seen is the one that read the route edit.
    let refused = await env.sb.admin('/api/errors');
    for (;;) {
      await new Promise((r) => setTimeout(r, 600));
      const now = await env.sb.admin('/api/errors');
      if (now.lastRejectedAt === refused.lastRejectedAt) break;
      refused = now;
    }
    assert.deepEqual(
      refused.errors.map((e: { file: string; doc: number; code: string; severity: string }) => [path.basename(e.file), e.doc, e.code, e.severity]),
      [['envoy.yaml', 1, 'SB_NOT_SIGNALBOX', 'error']],
    );
    assert.match(refused.errors[0].text, /refused under --strict/);
    assert.deepEqual(refused.warnings, []);

    env.write('route.yaml', route('second'));
    // The edit is read (a second rejected load) and rejected with the directory: Envoy keeps the old route.
    await waitFor(async () => (await env.sb.admin('/api/errors')).lastRejectedAt !== refused.lastRejectedAt, { what: 'the edit read and rejected' });
    for (let i = 0; i < 10; i++) assert.equal(await upstreamOf(), 'first', 'routing unchanged under --strict');
    assert.equal((await env.sb.admin(`/api/proxies/${env.proxyId}`)).types.route.ackedVersion, routeBefore);

    // The edit itself was good: without the bootstrap it applies.
    rmSync(path.join(env.dir, 'envoy.yaml'));
    await waitFor(async () => (await upstreamOf()) === 'second', { what: 'the edit live once the bootstrap is gone', timeoutMs: 10_000 });
    assert.equal((await env.sb.admin('/api/errors')).valid, true);
  });
});
