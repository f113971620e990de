// What a reload reuses from the one before, and what each kind of edit must invalidate. For every
// kind of document (HTTPRoute, Service, Gateway, a TrafficPolicy on a backend, a RateLimitPolicy on
// a route) one edit is applied to a long-lived pipeline and the result is checked two ways: it
// serves exactly what a from-scratch compile of the same files serves, and the caches kept (or
// dropped) what that edit touches: a resource map, a Cluster, a virtual host.
import assert from 'node:assert/strict';
import { mkdirSync, mkdtempSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { after, test } from 'node:test';
import { Pipeline } from '../../src/controller/pipeline.js';
import { createLogger } from '../../src/observability/logger.js';
import { SnapshotCache } from '../../src/xds/cache/snapshot-cache.js';
import { served } from '../helpers/served.js';
import { TypeUrl } from '../../src/xds/resources/type-urls.js';

const dirs: string[] = [];
after(() => {
  for (const d of dirs) rmSync(d, { recursive: true, force: true });
});

const header = (kind: string, name: string) => `apiVersion: signalbox.dev/v1alpha1\nkind: ${kind}\nmetadata: { name: ${name} }\n`;
const service = (j: number, port = 20000 + j * 10, protocol = 'http') =>
  `${header('Service', `svc-${j}`)}spec:\n  protocol: ${protocol}\n  port: 8080\n  endpoints:\n    - { address: 127.0.0.1, port: ${port}, labels: { version: v1 } }\n  subsets:\n    - { name: v1, labels: { version: v1 } }\n`;
const route = (i: number, timeout = '5s', host = `h${i % 2}.example.com`) =>
  `${header('HTTPRoute', `r${i}`)}spec:\n  parentRefs: [ { kind: Gateway, name: edge } ]\n  hostnames: [ ${host} ]\n  rules:\n    - name: main\n      matches:\n        - path: { type: PathPrefix, value: /r${i} }\n      backendRefs: [ { name: svc-${i % 3}, subset: v1 } ]\n      timeout: ${timeout}\n    - matches:\n        - path: { type: Exact, value: /r${i}/x }\n      backendRefs: [ { name: svc-${(i + 1) % 3} } ]\n`;
const gateway = (port = 8080) =>
  `${header('Gateway', 'edge')}spec:\n  listeners:\n    - { name: http, port: ${port}, protocol: HTTP, hostnames: ["*.example.com"] }\n`;
const traffic = (connectTimeout = '2s') =>
  `${header('TrafficPolicy', 'tp-1')}spec:\n  targetRef: { kind: Service, name: svc-1 }\n  connectTimeout: ${connectTimeout}\n`;
const rateLimit = (requests = 10) =>
  `${header('RateLimitPolicy', 'rl-0')}spec:\n  targetRef: { kind: HTTPRoute, name: r0 }\n  local: { requests: ${requests}, per: 1s }\n`;

const files = {
  gateway: 'gateway.yaml',
  svc0: 'services/svc-0.yaml',
  svc1: 'services/svc-1.yaml',
  r0: 'routes/r0.yaml',
  r1: 'routes/r1.yaml',
  traffic: 'policies/tp-1.yaml',
  rateLimit: 'policies/rl-0.yaml',
};

function write(dir: string, rel: string, text: string): string {
  const f = path.join(dir, rel);
  writeFileSync(`${f}.next`, text);
  renameSync(`${f}.next`, f);
  return f;
}

function directory(): string {
  const dir = mkdtempSync(path.join(tmpdir(), 'sb-reuse-'));
  dirs.push(dir);
  for (const sub of ['routes', 'services', 'policies']) mkdirSync(path.join(dir, sub));
  writeFileSync(path.join(dir, files.gateway), gateway());
  for (let j = 0; j < 3; j++) writeFileSync(path.join(dir, `services/svc-${j}.yaml`), service(j));
  for (let i = 0; i < 4; i++) writeFileSync(path.join(dir, `routes/r${i}.yaml`), route(i));
  writeFileSync(path.join(dir, files.traffic), traffic());
  writeFileSync(path.join(dir, files.rateLimit), rateLimit());
  return dir;
}

const logger = createLogger({ level: 'silent' });
const GROUP = 'gateway/edge';

/** A pipeline on a fresh directory, one edit applied as a hinted reload; what was served before and after, and a cold compile's. */
async function edited(rel: string, text: string) {
  const dir = directory();
  const cache = new SnapshotCache();
  const live = new Pipeline({ policyDir: dir, cache, logger });
  assert.ok((await live.reload()).applied);
  // A second, unchanged reload: what it reuses is what the first one built.
  assert.ok((await live.reload({ paths: new Set([path.join(dir, files.r1)]), full: false })).applied);
  const before = cache.get(GROUP);
  const irBefore = live.irGroups().get(GROUP)!;
  assert.ok(cache.has(GROUP));
  const file = write(dir, rel, text);
  const r = await live.reload({ paths: new Set([file]), full: false });
  assert.ok(r.applied, JSON.stringify(r.errors));
  const after = cache.get(GROUP);
  const irAfter = live.irGroups().get(GROUP)!;
  const freshCache = new SnapshotCache();
  assert.ok((await new Pipeline({ policyDir: dir, cache: freshCache, logger }).reload()).applied);
  assert.deepEqual(served(cache), served(freshCache), 'the incremental reload serves what a cold compile serves');
  /** Whether the type's map is the very one served before (nothing of the type rebuilt or re-hashed). */
  const kept = (t: TypeUrl) => before.get(t) === after.get(t);
  const sameResource = (t: TypeUrl, name: string) => {
    const a = before.get(t).get(name);
    assert.ok(a, `${name} was served`);
    return a === after.get(t).get(name);
  };
  /** Whether the IR cluster is the very object built before (the Cluster cache, keyed by its Service document). */
  const sameCluster = (name: string) => {
    const a = irBefore.clusters.find((c) => c.name === name);
    assert.ok(a, `cluster ${name} was built`);
    return a === irAfter.clusters.find((c) => c.name === name);
  };
  /**
   * Whether a virtual host is the one built before: its sorted routes the same array in the IR
   * (translate's sort cache) and its Envoy JSON the same object (the translator's, which keeps its
   * text and hash with it).
   */
  const hostParts = (host: string) => {
    const routesOf = (ir: typeof irBefore) => ir.listeners[0]!.routeConfig.virtualHosts.find((v) => v.name === host)?.routes;
    const jsonOf = (snap: typeof before) =>
      ((snap.get(TypeUrl.Route).get('edge/http')!.printable.virtual_hosts as { name: string }[]) ?? []).find((v) => v.name === host);
    assert.ok(routesOf(irBefore) && jsonOf(before), `virtual host ${host} was built`);
    const parts = { routes: routesOf(irBefore) === routesOf(irAfter), json: jsonOf(before) === jsonOf(after) };
    assert.ok(parts.routes || !parts.json, `${host}: the JSON is reused only if the routes are`);
    return parts;
  };
  const sameHost = (host: string) => {
    const p = hostParts(host);
    return p.routes && p.json;
  };
  return { before, after, kept, sameResource, sameCluster, sameHost, hostParts };
}

test('an unchanged reload keeps every resource map', async () => {
  const { kept } = await edited(files.r1, route(1));
  for (const t of [TypeUrl.Cluster, TypeUrl.Endpoint, TypeUrl.Listener, TypeUrl.Route]) assert.ok(kept(t), t);
});

test('an HTTPRoute edit rebuilds its route configuration only; Clusters and endpoints stay the same maps', async () => {
  const { kept, sameCluster, sameHost } = await edited(files.r0, route(0, '7s'));
  assert.ok(!kept(TypeUrl.Route), 'the route configuration changed');
  assert.ok(!sameHost('h0.example.com'), "the edited route's virtual host is built again");
  assert.ok(sameHost('h1.example.com'), 'the other virtual host is the same');
  assert.ok(sameCluster('svc-0/v1') && sameCluster('svc-2'), 'the clusters are the same objects');
  assert.ok(kept(TypeUrl.Cluster) && kept(TypeUrl.Endpoint) && kept(TypeUrl.Listener));
});

test('a route edit that moves it to another hostname rebuilds both virtual hosts', async () => {
  const { sameHost } = await edited(files.r0, route(0, '5s', 'h1.example.com'));
  assert.ok(!sameHost('h0.example.com') && !sameHost('h1.example.com'));
});

test('a Service edit rebuilds what that Service gives: its endpoints (a port) or its Clusters (a protocol)', async () => {
  const port = await edited(files.svc0, service(0, 29999));
  assert.ok(!port.kept(TypeUrl.Endpoint) && !port.sameResource(TypeUrl.Endpoint, 'svc-0/v1'));
  assert.ok(port.sameResource(TypeUrl.Endpoint, 'svc-1/v1'), "another Service's endpoints are the same resource");
  assert.ok(port.kept(TypeUrl.Cluster), 'the Clusters did not change');
  const protocol = await edited(files.svc0, service(0, 20000, 'http2'));
  assert.ok(!protocol.kept(TypeUrl.Cluster) && !protocol.sameResource(TypeUrl.Cluster, 'svc-0/v1') && !protocol.sameResource(TypeUrl.Cluster, 'svc-0'));
  assert.ok(protocol.sameResource(TypeUrl.Cluster, 'svc-1'), "another Service's Cluster is the same resource");
  assert.ok(
    !protocol.sameCluster('svc-0') && !protocol.sameCluster('svc-0/v1') && !port.sameCluster('svc-0/v1'),
    "the edited Service's clusters are built again",
  );
  assert.ok(protocol.sameCluster('svc-2') && protocol.sameCluster('svc-2/v1'), "the other Services' clusters are the same objects");
});

test('a Gateway edit rebuilds its listener and keeps the Clusters', async () => {
  const { kept, sameHost } = await edited(files.gateway, gateway(8081));
  assert.ok(!kept(TypeUrl.Listener));
  // (h0's routes include r0's, which its RateLimitPolicy gives new objects on every reload.)
  assert.ok(sameHost('h1.example.com'), 'no route changed: the virtual host is the same');
  assert.ok(kept(TypeUrl.Cluster) && kept(TypeUrl.Endpoint));
});

test("a Gateway edit of a listener's hostnames moves an unchanged route that names none to the listener's hostnames", async () => {
  const dir = directory();
  write(dir, 'routes/r2.yaml', route(2).replace(/ {2}hostnames: .*\n/, ''));
  const cache = new SnapshotCache();
  const live = new Pipeline({ policyDir: dir, cache, logger });
  const first = await live.reload();
  assert.ok(first.applied, JSON.stringify(first.errors));
  const hosts = () => ((cache.get(GROUP).get(TypeUrl.Route).get('edge/http')!.printable.virtual_hosts as { name: string }[]) ?? []).map((v) => v.name);
  assert.deepEqual(hosts(), ['*.example.com', 'h0.example.com', 'h1.example.com']);
  const file = write(dir, files.gateway, gateway().replace('"*.example.com"', '"h0.example.com", "h1.example.com"'));
  const r = await live.reload({ paths: new Set([file]), full: false });
  assert.ok(r.applied, JSON.stringify(r.errors));
  assert.deepEqual(hosts(), ['h0.example.com', 'h1.example.com'], "r2 now serves on the listener's two hostnames");
  const fresh = new SnapshotCache();
  assert.ok((await new Pipeline({ policyDir: dir, cache: fresh, logger }).reload()).applied);
  assert.deepEqual(served(cache), served(fresh), 'the incremental reload serves what a cold compile serves');
});

test("a TrafficPolicy edit rebuilds its Service's Clusters and no other", async () => {
  const { kept, sameResource, sameHost } = await edited(files.traffic, traffic('3s'));
  // (h0's routes include r0's, which its RateLimitPolicy gives new objects on every reload.)
  assert.ok(sameHost('h1.example.com'), 'no route changed: the virtual host is the same');
  assert.ok(!kept(TypeUrl.Cluster) && !sameResource(TypeUrl.Cluster, 'svc-1'));
  assert.ok(sameResource(TypeUrl.Cluster, 'svc-0') && sameResource(TypeUrl.Cluster, 'svc-2/v1'));
  assert.ok(kept(TypeUrl.Endpoint));
});

test("a RateLimitPolicy edit on a route rebuilds that route's configuration and keeps the Clusters", async () => {
  const { kept, sameHost } = await edited(files.rateLimit, rateLimit(20));
  assert.ok(!kept(TypeUrl.Route));
  assert.ok(!sameHost('h0.example.com'), "the limited route's virtual host is built again");
  assert.ok(sameHost('h1.example.com'), 'the other virtual host is the same');
  assert.ok(kept(TypeUrl.Cluster) && kept(TypeUrl.Endpoint));
});

test("a Mesh edit of the trust domain rebuilds every Service's clusters (their upstream identity)", async () => {
  const dir = directory();
  // svc-2 runs a sidecar: its clusters carry the mesh identity.
  writeFileSync(path.join(dir, 'services/svc-2.yaml'), service(2).replace('labels: { version: v1 } }', 'labels: { version: v1 }, sidecarPort: 15006 }'));
  writeFileSync(path.join(dir, 'mesh.yaml'), `${header('Mesh', 'default')}spec:\n  trustDomain: one.example\n`);
  const cache = new SnapshotCache();
  const live = new Pipeline({ policyDir: dir, cache, logger });
  assert.ok((await live.reload()).applied);
  const before = live
    .irGroups()
    .get(GROUP)!
    .clusters.find((c) => c.name === 'svc-2')!;
  const file = write(dir, 'mesh.yaml', `${header('Mesh', 'default')}spec:\n  trustDomain: two.example\n`);
  assert.ok((await live.reload({ paths: new Set([file]), full: false })).applied);
  const after = live
    .irGroups()
    .get(GROUP)!
    .clusters.find((c) => c.name === 'svc-2')!;
  assert.notEqual(after, before);
  assert.match(String(after.upstreamIdentity), /two\.example/);
  const freshCache = new SnapshotCache();
  assert.ok((await new Pipeline({ policyDir: dir, cache: freshCache, logger }).reload()).applied);
  assert.deepEqual(served(cache), served(freshCache));
});

test("a Gateway's keyed RateLimitPolicy rebuilds every virtual host (their rate_limits) though no route changed", async () => {
  const docHeader = header;
  const gatewayLimit = (key: string) =>
    `${docHeader('RateLimitPolicy', 'rl-edge')}spec:\n  targetRef: { kind: Gateway, name: edge }\n  local: { requests: 100, per: 1s, by: { header: ${key} } }\n`;
  const { hostParts, after } = await edited('policies/rl-edge.yaml', gatewayLimit('x-api-key'));
  // h1's routes are the same objects; what the listener adds to its virtual hosts is not.
  assert.deepEqual(hostParts('h1.example.com'), { routes: true, json: false });
  const h1 = (after.get(TypeUrl.Route).get('edge/http')!.printable.virtual_hosts as { name: string; rate_limits?: unknown }[]).find(
    (v) => v.name === 'h1.example.com',
  );
  assert.ok(h1?.rate_limits, 'the virtual host carries the listener-wide key');
});

/**
 * The model keeps each HTTPRoute's passed cross-reference checks while what they read is the same
 * (model.ts, policies.ts): an edit elsewhere that breaks the route must still be found. One edit
 * applied as a hinted reload; its verdict is a cold load's, and it names the route.
 */
async function verdict(rel: string, text: string, extra: Record<string, string> = {}) {
  const dir = directory();
  for (const [f, t] of Object.entries(extra)) writeFileSync(path.join(dir, f), t);
  const live = new Pipeline({ policyDir: dir, cache: new SnapshotCache(), logger });
  assert.ok((await live.reload()).applied);
  // Twice, so that the checks kept by the first reload are what the edit meets.
  assert.ok((await live.reload({ paths: new Set([path.join(dir, files.r1)]), full: false })).applied);
  const r = await live.reload({ paths: new Set([write(dir, rel, text)]), full: false });
  const fresh = await new Pipeline({ policyDir: dir, cache: new SnapshotCache(), logger }).reload();
  const show = (errors: typeof r.errors) => errors.map((e) => `${path.basename(e.file)} ${e.path ?? ''} ${e.message}`);
  assert.deepEqual(show(r.errors), show(fresh.errors), 'the same verdict as a cold load');
  assert.equal(r.applied, fresh.applied);
  return show(r.errors);
}

test("a Service edit that drops a subset a route uses is found on the route (the route's check is not kept)", async () => {
  const errors = await verdict(files.svc0, service(0).replace(/ {2}subsets:\n.*\n/, ''));
  assert.ok(
    errors.some((e) => e.startsWith('r0.yaml spec.rules[0].backendRefs[0].subset') && e.includes('no subset "v1"')),
    errors.join('\n'),
  );
});

test('a Gateway edit that stops serving a hostname routes ask for is found on those routes', async () => {
  const errors = await verdict(files.gateway, gateway().replace('*.example.com', '*.example.org'));
  assert.ok(
    errors.some((e) => e.startsWith('r0.yaml spec.hostnames') && e.includes('none of these hostnames')),
    errors.join('\n'),
  );
});

test("a Mesh edit that makes a route's per-try timeout too long is found on the route", async () => {
  const retrying = `${header('HTTPRoute', 'r9')}spec:\n  parentRefs: [ { kind: Gateway, name: edge } ]\n  rules:\n    - backendRefs: [ { name: svc-2 } ]\n      retries: { attempts: 2, perTryTimeout: 3s }\n`;
  const mesh = (timeout: string) => `${header('Mesh', 'default')}spec:\n  defaults:\n    timeout: ${timeout}\n`;
  // Without a TrafficPolicy the rule inherits nothing: the check that is kept then reads only the rule and the Mesh.
  const errors = await verdict('mesh.yaml', mesh('2s'), { 'mesh.yaml': mesh('10s'), 'routes/r9.yaml': retrying, [files.traffic]: '' });
  assert.ok(
    errors.some((e) => e.startsWith('r9.yaml spec.rules[0]') && e.includes('perTryTimeout 3000ms')),
    errors.join('\n'),
  );
});
