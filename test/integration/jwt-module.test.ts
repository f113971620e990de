// Signalbox's compiled JWT fast-path filter (native/jwt-check, an Envoy dynamic module) in a real
// Envoy, against a scripted stand-in for the ext_authz service's fast-path endpoints (the real
// service is exercised through the module by jwt.test.ts): what it does with each kind of answer,
// with routes that name no check, with repeated headers, a slow service, and how it reports.
// Then, through Signalbox: proxies whose bootstrap says they load the module get it, others the
// script; one that says so but cannot load it rejects the listener, and the rejection is shown
// (nothing is let through unchecked). `npm test` runs this file on every Envoy version in
// envoy-versions.json, each with the module built for it; /api/proxies shows each proxy's Envoy
// version and the engine it runs.
import assert from 'node:assert/strict';
import http from 'node:http';
import http2 from 'node:http2';
import type { AddressInfo } from 'node:net';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import YAML from 'yaml';
import { JWT_CHECK_FILTER, JWT_MODULE } from '../../src/xds/translator/filters/jwt-fast.js';
import { envoyVersionUnderTest, staticCluster, startEnvoy, type Envoy } from '../helpers/envoy.js';
import { freePort, waitFor } from '../helpers/net.js';
import { startSignalbox } from '../helpers/signalbox.js';
import { startUpstream, type Upstream } from '../helpers/upstream.js';
import { makeKey, signToken } from '../helpers/jwks-server.js';

interface Asked {
  path: string;
  headers: http2.IncomingHttpHeaders;
  body: string;
}

function get(
  port: number,
  p: string,
  headers: http.OutgoingHttpHeaders = {},
  agent: http.Agent | false = false,
): Promise<{ status: number; headers: http.IncomingHttpHeaders; body: string; reused: boolean }> {
  return new Promise((resolve, reject) => {
    const req = http.request({ host: '127.0.0.1', port, path: p, headers, agent }, (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (c: string) => (body += c));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, headers: res.headers, body, reused: req.reusedSocket }));
    });
    req.on('error', reject);
    req.end();
  });
}

describe(`the compiled JWT filter in a real Envoy ${envoyVersionUnderTest()}`, () => {
  const asked: Asked[] = [];
  /** What the stand-in service answers to a check, by the token header's value. */
  const answers = new Map<string, { status?: number; text: string; delayMs?: number }>();
  let service: http2.Http2Server;
  let upstream: Upstream;
  let envoy: Envoy;
  let port: number;
  const now = () => Math.floor(Date.now() / 1000);

  before(async () => {
    service = http2.createServer();
    service.on('stream', (stream, headers) => {
      let body = '';
      stream.setEncoding('utf8');
      stream.on('data', (c: string) => (body += c));
      stream.on('end', () => {
        asked.push({ path: String(headers[':path']), headers, body });
        if (headers[':path'] === '/signalbox.jwt/report') {
          stream.respond({ ':status': 200 });
          return stream.end();
        }
        const a = answers.get(String(headers.authorization ?? '')) ?? { text: 'deny 401\nheader www-authenticate Bearer\nbody\n' };
        setTimeout(() => {
          if (stream.destroyed) return;
          stream.respond({ ':status': a.status ?? 200 });
          stream.end(a.text);
        }, a.delayMs ?? 0);
      });
      stream.on('error', () => undefined);
    });
    await new Promise<void>((resolve) => service.listen(0, '127.0.0.1', resolve));
    const servicePort = (service.address() as AddressInfo).port;
    upstream = await startUpstream('app');
    port = await freePort();
    const module = { name: JWT_MODULE.name, do_not_close: true };
    const perRoute = (value: string) => ({
      [JWT_CHECK_FILTER]: {
        '@type': 'type.googleapis.com/envoy.extensions.filters.http.dynamic_modules.v3.DynamicModuleFilterPerRoute',
        dynamic_module_config: module,
        per_route_config_name: JWT_MODULE.filter,
        filter_config: { '@type': 'type.googleapis.com/google.protobuf.StringValue', value },
      },
    });
    const route = (name: string, prefix: string, check?: string) => ({
      name,
      match: { prefix },
      route: { cluster: 'app' },
      ...(check ? { typed_per_filter_config: perRoute(check) } : {}),
    });
    const hcm = {
      '@type': 'type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager',
      stat_prefix: 'module',
      route_config: {
        virtual_hosts: [
          {
            name: 'any',
            domains: ['*'],
            routes: [route('checked', '/checked', 'users%2Fv1 authorization v1'), route('skipped', '/skipped', 'skip'), route('bare', '/bare')],
          },
        ],
      },
      http_filters: [
        // A 700 ms budget for the service here (Signalbox gives it 2 s), so "too slow" is quick to show.
        {
          name: JWT_CHECK_FILTER,
          typed_config: {
            '@type': 'type.googleapis.com/envoy.extensions.filters.http.dynamic_modules.v3.DynamicModuleFilter',
            dynamic_module_config: module,
            filter_name: JWT_MODULE.filter,
            filter_config: { '@type': 'type.googleapis.com/google.protobuf.StringValue', value: 'authz 700 300' },
          },
        },
        { name: 'envoy.filters.http.router', typed_config: { '@type': 'type.googleapis.com/envoy.extensions.filters.http.router.v3.Router' } },
      ],
    };
    envoy = await startEnvoy({
      name: 'jwt-module',
      bootstrapYaml: (adminPort) =>
        YAML.stringify({
          admin: { address: { socket_address: { address: '127.0.0.1', port_value: adminPort } } },
          static_resources: {
            clusters: [staticCluster('authz', servicePort, true), staticCluster('app', upstream.port, false)],
            listeners: [
              {
                name: 'l',
                address: { socket_address: { address: '127.0.0.1', port_value: port } },
                filter_chains: [{ filters: [{ name: 'envoy.filters.network.http_connection_manager', typed_config: hcm }] }],
              },
            ],
          },
        }),
    });
  });

  after(async () => {
    await envoy?.stop();
    await upstream?.close();
    service?.close();
  });

  const checks = () => asked.filter((a) => a.path.startsWith('/signalbox.jwt/check/'));

  test('an allow is applied and remembered: the same token passes again without a call, with the forwarded claim over the client copy', async () => {
    answers.set('Bearer good', { text: `allow\ncache - ${now() + 60}\nset x-user-id alice\nremove x-email\n` });
    const before = checks().length;
    for (let i = 0; i < 3; i++) {
      const r = await get(port, '/checked', { authorization: 'Bearer good', 'x-user-id': 'mallory', 'x-email': 'm@evil' });
      assert.equal(r.status, 200);
      const seen = upstream.seen[upstream.seen.length - 1]!;
      assert.equal(seen.headers['x-user-id'], 'alice');
      assert.equal(seen.headers['x-email'], undefined);
    }
    const calls = checks().slice(before);
    assert.equal(calls.length, 1, 'asked once, then repeated from memory');
    assert.equal(calls[0]!.path, '/signalbox.jwt/check/users%2Fv1', 'the policy as the route names it');
    assert.equal(calls[0]!.headers.authorization, 'Bearer good');
    assert.equal(calls[0]!.headers['x-user-id'], undefined, 'only the token header goes to the service');
  });

  test('a refusal reaches the client as the service wrote it and is never remembered', async () => {
    answers.set('Bearer expired', { text: 'deny 401\nheader www-authenticate Bearer error="invalid_token"\nbody\n{"error":"expired"}' });
    const before = checks().length;
    for (let i = 0; i < 2; i++) {
      const r = await get(port, '/checked', { authorization: 'Bearer expired' });
      assert.equal(r.status, 401);
      assert.equal(r.headers['www-authenticate'], 'Bearer error="invalid_token"');
      assert.equal(r.body, '{"error":"expired"}');
    }
    assert.equal(checks().length - before, 2);
    const none = await get(port, '/checked');
    assert.equal(none.status, 401, 'no token: asked, refused');
    assert.equal(checks()[checks().length - 1]!.headers.authorization, undefined);
  });

  test('an allow outside its window is asked again; an allow without a window is not remembered', async () => {
    answers.set('Bearer later', { text: `allow\ncache ${now() + 100} ${now() + 200}\n` });
    answers.set('Bearer nowindow', { text: 'allow\n' });
    const before = checks().length;
    for (const t of ['Bearer later', 'Bearer later', 'Bearer nowindow', 'Bearer nowindow'])
      assert.equal((await get(port, '/checked', { authorization: t })).status, 200);
    assert.equal(checks().length - before, 4);
  });

  test('repeated token headers go to the service joined with ","', async () => {
    const r = await get(port, '/checked', { authorization: ['Bearer a', 'Bearer b'] as unknown as string });
    assert.equal(r.status, 401);
    assert.equal(checks()[checks().length - 1]!.headers.authorization, 'Bearer a,Bearer b');
  });

  test('fails closed: an unreadable answer, a non-200 answer, no answer in time give 503', async () => {
    answers.set('Bearer garbage', { text: 'perhaps\n' });
    answers.set('Bearer broken', { status: 500, text: 'allow\n' });
    answers.set('Bearer slow', { text: 'allow\n', delayMs: 1_500 });
    answers.set('Bearer badstatus', { text: 'deny 42\nbody\n' });
    for (const t of ['Bearer garbage', 'Bearer broken', 'Bearer slow', 'Bearer badstatus']) {
      const r = await get(port, '/checked', { authorization: t });
      assert.equal(r.status, 503, t);
      assert.doesNotMatch(envoy.logs(), /Bearer (garbage|broken|slow)/, 'no token in the log');
    }
    assert.match(envoy.logs(), /signalbox jwt check failed closed/);
  });

  test('routes: "skip" passes without a call; a route without per-route config fails closed; no route is Envoy\'s 404', async () => {
    const before = asked.length;
    assert.equal((await get(port, '/skipped')).status, 200);
    assert.equal((await get(port, '/bare', { authorization: 'Bearer good' })).status, 503);
    assert.equal((await get(port, '/elsewhere')).status, 404);
    assert.equal(asked.filter((a, i) => i >= before && a.path.startsWith('/signalbox.jwt/check/')).length, 0);
  });

  test('allows from memory are reported about once a second, with an id and a line per policy', async () => {
    const reports = () => asked.filter((a) => a.path === '/signalbox.jwt/report');
    const before = reports().length;
    await waitFor(
      async () => {
        await get(port, '/checked', { authorization: 'Bearer good' });
        return reports().length > before;
      },
      { what: 'a report', timeoutMs: 5_000, intervalMs: 200 },
    );
    const r = reports()[reports().length - 1]!;
    assert.match(String(r.headers['x-signalbox-report-id']), /^[0-9a-f]{16}-\d+$/);
    assert.match(r.body, /^users%2Fv1 \d+\n$/);
  });
});

describe(`the compiled filter through Signalbox, per proxy (Envoy ${envoyVersionUnderTest()})`, () => {
  test('a proxy whose bootstrap says it loads the module gets it, others get the script; one that says so but cannot load it rejects the listener, shown as NACKED, and serves nothing unchecked', async () => {
    const [modPort, luaPort, openPort] = [await freePort(), await freePort(), await freePort()];
    const key = await makeKey('EdDSA', 'k');
    const app = await startUpstream('app');
    const dir = mkdtempSync(path.join(os.tmpdir(), 'sb-jwt-module-'));
    const gateway = (name: string, port: number, extra = '') => `---
apiVersion: signalbox.dev/v1alpha1
kind: Gateway
metadata: { name: ${name} }
spec: { listeners: [ { name: http, port: ${port}, protocol: HTTP }${extra} ] }
---
apiVersion: signalbox.dev/v1alpha1
kind: HTTPRoute
metadata: { name: ${name} }
spec:
  parentRefs: [ { kind: Gateway, name: ${name} } ]
  rules: [ { backendRefs: [ { name: app } ] } ]
---
apiVersion: signalbox.dev/v1alpha1
kind: JWTPolicy
metadata: { name: ${name} }
spec:
  targetRef: { kind: Gateway, name: ${name}, sectionName: http }
  issuer: https://issuer.test/
  jwks: { inline: ${JSON.stringify({ keys: [key.jwk] })} }
  forwardClaims: [ { claim: sub, header: x-user-id } ]
`;
    writeFileSync(
      path.join(dir, 'p.yaml'),
      `apiVersion: signalbox.dev/v1alpha1
kind: Service
metadata: { name: app }
spec: { port: 8080, endpoints: [ { address: 127.0.0.1, port: ${app.port} } ] }
${gateway('mod', modPort, `, { name: open, port: ${openPort}, protocol: HTTP }`)}${gateway('lua', luaPort)}`,
    );
    // The default fast path (the script); proxies that say they load the module get it.
    const sb = await startSignalbox({ policies: dir });
    const envoys: Envoy[] = [];
    try {
      const bootYaml = (gw: 'mod' | 'lua', id: string, jwtModule: boolean) => sb.bootstrap({ gateway: gw, id, jwtModule });

      // Says it loads the module, but its Envoy has none: the listener is rejected with Envoy's reason.
      const broken = await startEnvoy({ name: 'no-module', withoutModules: true, bootstrapYaml: await bootYaml('mod', 'no-module', true) });
      try {
        await waitFor(async () => (await sb.admin('/api/proxies/no-module'))?.state === 'NACKED', { what: 'the listener rejected', timeoutMs: 15_000 });
        const status = await sb.admin('/api/proxies/no-module');
        assert.equal(status.group, 'gateway/mod+jwt-module');
        assert.match(status.types.listener.lastNack.message, /dynamic module|ENVOY_DYNAMIC_MODULES_SEARCH_PATH/);
        await assert.rejects(get(modPort, '/'), 'no listener: nothing served, unchecked or otherwise');
      } finally {
        await broken.stop();
      }

      const withModule = await startEnvoy({ name: 'with-module', bootstrapYaml: await bootYaml('mod', 'with-module', true) });
      envoys.push(withModule);
      const withScript = await startEnvoy({ name: 'with-script', bootstrapYaml: await bootYaml('lua', 'with-script', false) });
      envoys.push(withScript);
      const good = await signToken(key, { iss: 'https://issuer.test/', sub: 'alice' });
      for (const [envoy, port, filter] of [
        [withModule, modPort, 'envoy.extensions.filters.http.dynamic_modules.v3.DynamicModuleFilter'],
        [withScript, luaPort, 'envoy.extensions.filters.http.lua.v3.Lua'],
      ] as const) {
        await waitFor(async () => (await get(port, '/').catch(() => ({ status: 0 }))).status === 401, {
          what: `port ${port} checking tokens`,
          timeoutMs: 15_000,
        });
        assert.ok((await envoy.admin('/config_dump?resource=dynamic_listeners')).includes(filter), `${filter} on port ${port}`);
        for (let i = 0; i < 2; i++) {
          const r = await get(port, '/', { authorization: `Bearer ${good}`, 'x-user-id': 'mallory' });
          assert.equal(r.status, 200);
          assert.equal(app.seen[app.seen.length - 1]!.headers['x-user-id'], 'alice');
        }
      }
      // Each proxy's Envoy version, as its node reports it, and the engine it runs.
      const withModuleStatus = await sb.admin('/api/proxies/with-module');
      assert.equal(withModuleStatus.group, 'gateway/mod+jwt-module');
      assert.deepEqual(withModuleStatus.envoy, { version: envoyVersionUnderTest(), tested: true, jwtModule: true });
      assert.equal(withModuleStatus.jwtEngine, 'module');
      const withScriptStatus = await sb.admin('/api/proxies/with-script');
      assert.equal(withScriptStatus.group, 'gateway/lua');
      assert.equal(withScriptStatus.envoy.version, envoyVersionUnderTest());
      assert.equal(withScriptStatus.jwtEngine, 'script');

      // A policy added to a listener that had none: on a module proxy the filter is already there,
      // so the change is routes only, and a connection opened before it is checked too.
      const listeners = async () => JSON.stringify((await withModule.adminJson<{ configs: unknown[] }>('/config_dump?resource=dynamic_listeners')).configs);
      const open = (await withModule.adminJson<{ configs: { name: string }[] }>('/config_dump?resource=dynamic_listeners')).configs.find(
        (c) => c.name === 'mod/open',
      );
      assert.ok(JSON.stringify(open).includes('DynamicModuleFilter'), 'the listener without a policy carries the filter');
      const agent = new http.Agent({ keepAlive: true, maxSockets: 1 });
      try {
        assert.equal((await get(openPort, '/', {}, agent)).status, 200, 'no policy yet');
        const before = await listeners();
        writeFileSync(
          path.join(dir, 'later.yaml'),
          `apiVersion: signalbox.dev/v1alpha1
kind: JWTPolicy
metadata: { name: later }
spec:
  targetRef: { kind: Gateway, name: mod, sectionName: open }
  issuer: https://issuer.test/
  jwks: { inline: ${JSON.stringify({ keys: [key.jwk] })} }
`,
        );
        let last = { status: 0, reused: false };
        await waitFor(
          async () => {
            last = await get(openPort, '/', {}, agent);
            return last.status === 401;
          },
          { what: 'the new policy in force', timeoutMs: 15_000, intervalMs: 100 },
        );
        assert.ok(last.reused, 'refused on the connection opened before the policy existed');
        assert.equal((await get(openPort, '/', { authorization: `Bearer ${good}` }, agent)).status, 200);
        assert.equal(await listeners(), before, 'routes only: the listener did not change');
      } finally {
        agent.destroy();
      }
    } finally {
      for (const e of envoys) await e.stop();
      await sb.kill();
      await app.close();
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
