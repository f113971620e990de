// The JWT fast path's contract test (docs/jwt-fast-path-protocol.md): one table of cases,
// test/contract/fast-path.cases.json, run against the three implementations of the protocol.
//
//   - the service (src/authz/server.ts, in this process, plain text): for every step the proxies
//     ask about, it is sent what the table says a proxy sends, with a real token of the case's
//     kind, and must answer exactly what the table says; reports and stray requests likewise.
//   - the Lua script and the compiled module, each on its own listener of one real Envoy (the
//     module built for that Envoy by scripts/provision-jwt-module.sh), configured with the strings
//     the translator writes (the script, routeCheckSpec, JWT_MODULE_CONFIG) and pointed at a
//     stand-in service that answers what the table says and records what it receives: each step
//     checks what the client gets, what the upstream gets, and what the service was sent.
//
// Together: the service writes the answers the table pins, and the proxies do with those answers
// what the table pins. A case one implementation cannot run is listed (with the table's reason)
// by that implementation's "cannot express" test; nothing is skipped.
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import http from 'node:http';
import http2 from 'node:http2';
import type { AddressInfo } from 'node:net';
import path from 'node:path';
import { after, before, describe, test, type TestContext } from 'node:test';
import prom from 'prom-client';
import YAML from 'yaml';
import { AuthzServer } from '../../src/authz/server.js';
import type { JwtPolicyModel } from '../../src/model/jwt.js';
import { createLogger } from '../../src/observability/logger.js';
import { AUTHZ_CLUSTER } from '../../src/translate/jwt.js';
import {
  FAST_PATH_ROUTE_KEY,
  JWT_CHECK_FILTER,
  JWT_CHECK_SCRIPT,
  JWT_MODULE,
  JWT_MODULE_CONFIG,
  routeCheckSpec,
} from '../../src/xds/translator/filters/jwt-fast.js';
import { envoyVersionUnderTest, staticCluster, repoRoot, startEnvoy, type Envoy } from '../helpers/envoy.js';
import { makeKey, signToken, type TestKey } from '../helpers/jwks-server.js';
import { freePort, waitFor } from '../helpers/net.js';
import { startUpstream, type Upstream } from '../helpers/upstream.js';

type Impl = 'service' | 'script' | 'module';
const IMPLS: readonly Impl[] = ['service', 'script', 'module'];

/** A header expectation: exact text, "/regex/", or null for "absent". */
type Expected = string | null;

interface Report {
  path: string;
  headers: Record<string, string>;
  body: string;
  status: number;
  counted: Record<string, number>;
  sample: { headers: Record<string, string>; body: string };
  again?: { status: number; counted: Record<string, number> };
}

interface Step {
  request: { path: string; headers: Record<string, string | string[]> };
  service: null | 'down' | { answer: string; status?: number; delayMs?: number };
  repeatUntilReport?: boolean;
  expect: {
    asked?: false | { path: string; headers: Record<string, Expected> };
    status: number;
    headers?: Record<string, string>;
    body?: string;
    upstream?: Record<string, Expected>;
    report?: Report;
  };
}

interface Wire {
  method: string;
  path: string;
  headers?: Record<string, string>;
  body?: string;
  bodyBytes?: number;
  status: number;
  counted?: Record<string, number>;
}

interface Case {
  id: string;
  title: string;
  token: string | null;
  notExpressible?: Partial<Record<Impl, string>>;
  steps?: Step[];
  wire?: Wire[];
}

interface PolicySpec {
  issuer: string;
  clockSkewSeconds: number;
  require: JwtPolicyModel['require'];
  forwardClaims: JwtPolicyModel['forwardClaims'];
  optional: boolean;
}

interface Table {
  protocol: number;
  spec: string;
  policies: Record<string, PolicySpec>;
  tokens: Record<string, { key?: string; claims?: Record<string, string | number>; raw?: string }>;
  cases: Case[];
}

const table = JSON.parse(readFileSync(path.join(repoRoot(), 'test/contract/fast-path.cases.json'), 'utf8')) as Table;
const silent = createLogger({ level: 'silent' });
const CHECK_PREFIX = '/signalbox.jwt/check/';
const runs = (c: Case, impl: Impl) => c.notExpressible?.[impl] === undefined;

/** {token}, {T+n} and {T-n} filled in. */
function fill(s: string, v: { T: number; token: string }): string {
  return s.replace(/\{token\}/g, v.token).replace(/\{T([+-]\d+)?\}/g, (_, n: string | undefined) => String(v.T + Number(n ?? 0)));
}

/** Whether a value meets an expectation ("/re/" is a regular expression; null: absent). */
function meets(actual: string | undefined, expected: Expected, v: { T: number; token: string }): boolean {
  if (expected === null) return actual === undefined;
  if (actual === undefined) return false;
  if (expected.length > 1 && expected.startsWith('/') && expected.endsWith('/')) return new RegExp(expected.slice(1, -1)).test(actual);
  return actual === fill(expected, v);
}

function assertHeaders(
  actual: Record<string, string | string[] | undefined>,
  expected: Record<string, Expected>,
  v: { T: number; token: string },
  what: string,
): void {
  for (const [name, want] of Object.entries(expected)) {
    const got = actual[name];
    const text = Array.isArray(got) ? got.join(',') : got;
    assert.ok(meets(text, want, v), `${what}: header ${name} is ${JSON.stringify(text)}, expected ${want === null ? 'absent' : JSON.stringify(fill(want, v))}`);
  }
}

function assertBody(actual: string, expected: string, v: { T: number; token: string }, what: string): void {
  assert.ok(meets(actual, expected, v), `${what}: body ${JSON.stringify(actual)}, expected ${JSON.stringify(expected)}`);
}

// ------------------------------------------------------------------------------ the table itself

describe(`the fast-path contract table (protocol ${table.protocol})`, () => {
  test('every case runs on every implementation or says why it cannot; every case has something to run', () => {
    assert.ok(table.cases.length >= 20);
    assert.equal(new Set(table.cases.map((c) => c.id)).size, table.cases.length, 'case ids are unique');
    for (const c of table.cases) {
      for (const [impl, reason] of Object.entries(c.notExpressible ?? {})) {
        assert.ok(IMPLS.includes(impl as Impl), `${c.id}: unknown implementation ${impl}`);
        assert.ok(typeof reason === 'string' && reason.length > 10, `${c.id}: ${impl} needs a reason`);
      }
      assert.ok(
        IMPLS.some((i) => runs(c, i)),
        `${c.id} runs nowhere`,
      );
      if (runs(c, 'script') || runs(c, 'module')) assert.ok(c.steps?.length, `${c.id}: the proxies need steps`);
      if (runs(c, 'service'))
        assert.ok(
          c.wire?.length || c.steps?.some((s) => typeof s.service === 'object' && s.service !== null) || c.steps?.some((s) => s.expect.report),
          `${c.id}: nothing for the service to answer`,
        );
    }
    assert.ok(existsIn(table.spec), `${table.spec} specifies protocol version ${table.protocol}`);
  });
});

/** Whether the specification the table names states the table's protocol version. */
function existsIn(file: string): boolean {
  try {
    return readFileSync(path.join(repoRoot(), file), 'utf8').includes(`Protocol version: ${table.protocol}\n`);
  } catch {
    return false;
  }
}

function listUnexpressible(impl: Impl): void {
  test(`cases ${impl} cannot express, each with its reason`, (t: TestContext) => {
    const out = table.cases.filter((c) => !runs(c, impl));
    for (const c of out) t.diagnostic(`${c.id}: ${c.notExpressible![impl]}`);
    assert.ok(out.every((c) => (c.notExpressible![impl] ?? '').length > 10));
  });
}

// ------------------------------------------------------------------------------ the service

/** One HTTP/2 request in plain text; the status and body. */
function h2(port: number, o: { method: string; path: string; headers?: Record<string, string>; body?: string }): Promise<{ status: number; body: string }> {
  return new Promise((resolve, reject) => {
    const session = http2.connect(`http://127.0.0.1:${port}`);
    session.on('error', reject);
    const s = session.request({ ':method': o.method, ':path': o.path, ...o.headers });
    s.on('error', reject);
    s.on('response', (h) => {
      let body = '';
      s.setEncoding('utf8');
      s.on('data', (c: string) => (body += c));
      s.on('end', () => {
        session.close();
        resolve({ status: Number(h[':status']), body });
      });
    });
    // (A GET's stream is ended by the request itself.)
    if (o.method !== 'GET') s.end(o.body ?? '');
  });
}

describe('the contract on the service (src/authz/server.ts)', () => {
  const registry = new prom.Registry();
  const server = new AuthzServer({ logger: silent, registry });
  let port = 0;
  let key: TestKey;
  let other: TestKey;
  const T = Math.floor(Date.now() / 1000);

  before(async () => {
    key = await makeKey('ES256', 'k');
    other = await makeKey('ES256', 'k'); // the same kid, another key: the signature cannot verify
    const policies = new Map<string, JwtPolicyModel>();
    for (const [name, p] of Object.entries(table.policies)) {
      policies.set(name, {
        name,
        target: { kind: 'Gateway', name: 'g' },
        issuer: p.issuer,
        audiences: [],
        algorithms: ['ES256'],
        clockSkewMs: p.clockSkewSeconds * 1000,
        from: [{ header: 'authorization', prefix: 'Bearer ' }],
        require: p.require,
        forwardClaims: p.forwardClaims,
        optional: p.optional,
        maxTokenBytes: 8192,
        jwks: { kind: 'inline', keys: [key.jwk] },
        unavailableStatus: 503,
        source: { file: `${name}.yaml`, doc: 1 },
      });
    }
    server.update({ jwt: { policies, byTarget: new Map() } });
    port = await server.listen('127.0.0.1:0');
  });
  after(() => server.close());

  const tokens = new Map<string, string>();
  async function tokenOf(kind: string | null): Promise<string> {
    if (kind === null) return '';
    let t = tokens.get(kind);
    if (t === undefined) {
      const spec = table.tokens[kind];
      assert.ok(spec, `no token kind ${kind}`);
      if (spec.raw !== undefined) t = spec.raw;
      else {
        const claims = Object.fromEntries(
          Object.entries(spec.claims ?? {}).map(([k, v]) => [k, typeof v === 'string' && /^\{T[+-]\d+\}$/.test(v) ? Number(fill(v, { T, token: '' })) : v]),
        );
        t = await signToken(spec.key === 'other' ? other : key, claims);
      }
      tokens.set(kind, t);
    }
    return t;
  }

  async function counted(): Promise<Record<string, number>> {
    const m = await server.metrics!.fastPathAllows.get();
    return Object.fromEntries(m.values.map((v) => [String(v.labels.policy), v.value]));
  }

  async function assertCounted(beforeCounts: Record<string, number>, want: Record<string, number>, what: string): Promise<void> {
    const now = await counted();
    const delta = Object.fromEntries(
      Object.keys(now)
        .map((p) => [p, now[p]! - (beforeCounts[p] ?? 0)])
        .filter(([, d]) => d !== 0),
    );
    assert.deepEqual(delta, want, `${what}: allows counted`);
  }

  for (const c of table.cases.filter((c) => runs(c, 'service'))) {
    test(`${c.id}: ${c.title}`, async () => {
      const v = { T, token: await tokenOf(c.token) };
      for (const [i, step] of (c.steps ?? []).entries()) {
        const what = `${c.id} step ${i + 1}`;
        const asked = step.expect.asked;
        if (asked && typeof step.service === 'object' && step.service !== null) {
          // What the proxies send (the table pins it on them), with a real token.
          const headers: Record<string, string> = {};
          for (const [name, value] of Object.entries(asked.headers))
            if (value !== null && !name.startsWith(':') && !value.startsWith('/')) headers[name] = fill(value, v);
          const r = await h2(port, { method: 'POST', path: asked.path, headers });
          assert.equal(r.status, step.service.status ?? 200, `${what}: HTTP status`);
          assert.equal(r.body, fill(step.service.answer, v), `${what}: the answer`);
        }
        const report = step.expect.report;
        if (report) {
          const beforeCounts = await counted();
          const r = await h2(port, { method: 'POST', path: report.path, headers: report.sample.headers, body: report.sample.body });
          assert.equal(r.status, report.status, `${what}: report status`);
          await assertCounted(beforeCounts, report.counted, what);
          if (report.again) {
            const mid = await counted();
            const again = await h2(port, { method: 'POST', path: report.path, headers: report.sample.headers, body: report.sample.body });
            assert.equal(again.status, report.again.status, `${what}: the same report again`);
            await assertCounted(mid, report.again.counted, `${what} (again)`);
          }
        }
      }
      for (const [i, w] of (c.wire ?? []).entries()) {
        const what = `${c.id} request ${i + 1} (${w.method} ${w.path})`;
        const beforeCounts = await counted();
        const r = await h2(port, { method: w.method, path: w.path, headers: w.headers, body: w.bodyBytes ? 'x'.repeat(w.bodyBytes) : w.body });
        assert.equal(r.status, w.status, `${what}: HTTP status`);
        if (w.counted) await assertCounted(beforeCounts, w.counted, what);
      }
    });
  }
  listUnexpressible('service');
});

// ------------------------------------------------------------------------------ the proxies

interface Received {
  path: string;
  headers: http2.IncomingHttpHeaders;
  body: string;
}

/** The stand-in service: answers what the current step says, records what it receives. */
class StandIn {
  received: Received[] = [];
  current: Step['service'] = null;
  vars = { T: 0, token: '' };
  reportStatus = new Map<string, number>();
  private server = http2.createServer();
  port = 0;

  async start(): Promise<void> {
    this.server.on('stream', (stream, headers) => {
      stream.on('error', () => undefined);
      let body = '';
      stream.setEncoding('utf8');
      stream.on('data', (c: string) => (body += c));
      stream.on('end', () => {
        const p = String(headers[':path']);
        this.received.push({ path: p, headers, body });
        if (!p.startsWith(CHECK_PREFIX)) {
          stream.respond({ ':status': this.reportStatus.get(p) ?? 200 });
          return stream.end();
        }
        const s = this.current;
        if (s === 'down') return stream.session?.destroy();
        // Asked when it must not be: an answer no case expects, so the step fails visibly.
        const a = s ?? { answer: 'deny 418\nbody\nasked unexpectedly' };
        setTimeout(() => {
          if (stream.destroyed || stream.closed) return;
          stream.respond({ ':status': a.status ?? 200 });
          stream.end(fill(a.answer, this.vars));
        }, a.delayMs ?? 0);
      });
    });
    await new Promise<void>((resolve) => this.server.listen(0, '127.0.0.1', resolve));
    this.port = (this.server.address() as AddressInfo).port;
  }

  close(): void {
    this.server.close();
  }
}

function get(
  port: number,
  p: string,
  headers: Record<string, string | string[]>,
): Promise<{ status: number; headers: http.IncomingHttpHeaders; body: string }> {
  return new Promise((resolve, reject) => {
    const req = http.request({ host: '127.0.0.1', port, path: p, headers, agent: false }, (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (c: string) => (body += c));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, headers: res.headers, body }));
    });
    req.on('error', reject);
    req.end();
  });
}

const VERSION = 'contract-v1';
const CHECKED_ROUTES = { '/checked': 'users', '/guests': 'guests', '/retired': 'retired' } as const;

/** The listener's routes for one engine, as the translator writes them. */
function routes(engine: 'script' | 'module'): unknown[] {
  const mod = { name: JWT_MODULE.name, do_not_close: true };
  const check = (policy: string) => routeCheckSpec({ policy, header: 'authorization', version: VERSION });
  const moduleRoute = (value: string) => ({
    typed_per_filter_config: {
      [JWT_CHECK_FILTER]: {
        '@type': 'type.googleapis.com/envoy.extensions.filters.http.dynamic_modules.v3.DynamicModuleFilterPerRoute',
        dynamic_module_config: mod,
        per_route_config_name: JWT_MODULE.filter,
        filter_config: { '@type': 'type.googleapis.com/google.protobuf.StringValue', value },
      },
    },
  });
  const route = (name: string, prefix: string, extra: object) => ({ name, match: { prefix }, route: { cluster: 'app' }, ...extra });
  const out: unknown[] = [];
  for (const [prefix, policy] of Object.entries(CHECKED_ROUTES)) {
    out.push(
      route(
        policy,
        prefix,
        engine === 'module' ? moduleRoute(check(policy)) : { metadata: { filter_metadata: { [JWT_CHECK_FILTER]: { [FAST_PATH_ROUTE_KEY]: check(policy) } } } },
      ),
    );
  }
  out.push(
    route(
      'skip',
      '/skip',
      engine === 'module'
        ? moduleRoute('skip')
        : {
            typed_per_filter_config: {
              [JWT_CHECK_FILTER]: { '@type': 'type.googleapis.com/envoy.extensions.filters.http.lua.v3.LuaPerRoute', disabled: true },
            },
          },
    ),
  );
  out.push(route('bare', '/bare', {}));
  return out;
}

function listener(engine: 'script' | 'module', port: number): unknown {
  const filter =
    engine === 'module'
      ? {
          '@type': 'type.googleapis.com/envoy.extensions.filters.http.dynamic_modules.v3.DynamicModuleFilter',
          dynamic_module_config: { name: JWT_MODULE.name, do_not_close: true },
          filter_name: JWT_MODULE.filter,
          filter_config: { '@type': 'type.googleapis.com/google.protobuf.StringValue', value: JWT_MODULE_CONFIG },
        }
      : { '@type': 'type.googleapis.com/envoy.extensions.filters.http.lua.v3.Lua', default_source_code: { inline_string: JWT_CHECK_SCRIPT } };
  return {
    name: engine,
    address: { socket_address: { address: '127.0.0.1', port_value: port } },
    filter_chains: [
      {
        filters: [
          {
            name: 'envoy.filters.network.http_connection_manager',
            typed_config: {
              '@type': 'type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager',
              stat_prefix: engine,
              route_config: { name: engine, virtual_hosts: [{ name: 'any', domains: ['*'], routes: routes(engine) }] },
              http_filters: [
                { name: JWT_CHECK_FILTER, typed_config: filter },
                { name: 'envoy.filters.http.router', typed_config: { '@type': 'type.googleapis.com/envoy.extensions.filters.http.router.v3.Router' } },
              ],
            },
          },
        ],
      },
    ],
  };
}

interface Proxies {
  standIn: StandIn;
  upstream: Upstream;
  envoy: Envoy;
  ports: Record<'script' | 'module', number>;
}

let proxies: Promise<Proxies> | undefined;
/** One Envoy for both engines (a listener each), the stand-in service and an upstream. */
function startProxies(): Promise<Proxies> {
  proxies ??= (async () => {
    const standIn = new StandIn();
    await standIn.start();
    const upstream = await startUpstream('app');
    const ports = { script: await freePort(), module: await freePort() };
    const envoy = await startEnvoy({
      name: 'fast-path-contract',
      bootstrapYaml: (adminPort) =>
        YAML.stringify({
          admin: { address: { socket_address: { address: '127.0.0.1', port_value: adminPort } } },
          static_resources: {
            clusters: [staticCluster(AUTHZ_CLUSTER, standIn.port, true), staticCluster('app', upstream.port, false)],
            listeners: [listener('script', ports.script), listener('module', ports.module)],
          },
        }),
    });
    return { standIn, upstream, envoy, ports };
  })();
  return proxies;
}

after(async () => {
  if (!proxies) return;
  const p = await proxies;
  await p.envoy.stop();
  await p.upstream.close();
  p.standIn.close();
});

async function runStep(p: Proxies, engine: 'script' | 'module', c: Case, step: Step, i: number): Promise<void> {
  const what = `${engine} ${c.id} step ${i + 1}`;
  const v = { T: Math.floor(Date.now() / 1000), token: `tok-${engine}-${c.id}` };
  p.standIn.vars = v;
  p.standIn.current = step.service;
  if (step.expect.report) p.standIn.reportStatus.set(step.expect.report.path, step.expect.report.status);
  const headers = Object.fromEntries(Object.entries(step.request.headers).map(([k, x]) => [k, Array.isArray(x) ? x.map((y) => fill(y, v)) : fill(x, v)]));
  const from = p.standIn.received.length;
  const seenFrom = p.upstream.seen.length;
  let r = await get(p.ports[engine], step.request.path, headers);
  const reports = () => p.standIn.received.slice(from).filter((x) => x.path === step.expect.report?.path);
  if (step.repeatUntilReport) {
    await waitFor(
      async () => {
        if (reports().length > 0) return true;
        r = await get(p.ports[engine], step.request.path, headers);
        assert.equal(r.status, step.expect.status, `${what}: status while waiting for a report`);
        return false;
      },
      { what: `${what}: a report`, timeoutMs: 6_000, intervalMs: 100 },
    );
  }
  const checks = p.standIn.received.slice(from).filter((x) => x.path.startsWith(CHECK_PREFIX));
  const asked = step.expect.asked;
  if (asked === false) assert.equal(checks.length, 0, `${what}: the service must not be asked`);
  else if (asked) {
    assert.equal(checks.length, 1, `${what}: the service is asked once`);
    assert.equal(checks[0]!.path, asked.path, `${what}: the check's path`);
    assertHeaders(checks[0]!.headers, asked.headers, v, `${what}: the check`);
    assert.equal(checks[0]!.body, '', `${what}: a check has no body`);
  }
  assert.equal(r.status, step.expect.status, `${what}: the client's status (body ${JSON.stringify(r.body.slice(0, 200))})`);
  if (step.expect.headers) assertHeaders(r.headers, step.expect.headers, v, `${what}: the client's answer`);
  if (step.expect.body !== undefined) assertBody(r.body, step.expect.body, v, `${what}: the client's answer`);
  if (step.expect.upstream) {
    assert.ok(p.upstream.seen.length > seenFrom, `${what}: the request reached the upstream`);
    assertHeaders(p.upstream.seen[p.upstream.seen.length - 1]!.headers, step.expect.upstream, v, `${what}: the upstream request`);
  }
  if (step.expect.report) {
    const rep = reports()[0]!;
    assertHeaders(rep.headers, step.expect.report.headers, v, `${what}: the report`);
    assertBody(rep.body, step.expect.report.body, v, `${what}: the report`);
  }
}

for (const engine of ['script', 'module'] as const) {
  describe(`the contract on the ${engine === 'script' ? 'Lua script' : 'compiled module'} in a real Envoy ${envoyVersionUnderTest()}`, () => {
    for (const c of table.cases.filter((c) => runs(c, engine))) {
      test(`${c.id}: ${c.title}`, async () => {
        const p = await startProxies();
        for (const [i, step] of c.steps!.entries()) await runStep(p, engine, c, step, i);
        assert.doesNotMatch(p.envoy.logs(), /tok-(script|module)-/, "no token in Envoy's log");
      });
    }
    listUnexpressible(engine);
  });
}
