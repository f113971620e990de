// The streams of a group share one response per content: same object (so one encoding), a nonce of
// its own that every stream's ACK still matches, and never a proxy's own secret.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { createLogger } from '../../src/observability/logger.js';
import { Metrics } from '../../src/observability/metrics.js';
import { Snapshot, SnapshotCache } from '../../src/xds/cache/snapshot-cache.js';
import { hashText, type Resource } from '../../src/xds/resources/resource.js';
import { PUSH_ORDER, TypeUrl } from '../../src/xds/resources/type-urls.js';
import type { ServerContext } from '../../src/xds/server/context.js';
import { DeltaStream, type DeltaResponse } from '../../src/xds/server/delta.js';
import { ProxyRegistry } from '../../src/xds/server/proxy-status.js';
import { SharedResponses } from '../../src/xds/server/responses.js';
import { SotwStream, type SotwResponse } from '../../src/xds/server/sotw.js';
import { gatewayNode } from '../helpers/xds-client.js';

const GROUP = 'gateway/edge';

function resource(type: TypeUrl, name: string, content: string): Resource {
  return { type, name, version: hashText(`${type}\n${name}\n${content}`), bytes: Buffer.from(content), printable: { content }, sources: [] };
}

function snapshot(route: string, secret = 's'): Snapshot {
  const m = new Map<TypeUrl, Map<string, Resource>>();
  for (const t of PUSH_ORDER) m.set(t, new Map());
  m.get(TypeUrl.Cluster)!.set('c0', resource(TypeUrl.Cluster, 'c0', 'cluster'));
  m.get(TypeUrl.Listener)!.set('l0', resource(TypeUrl.Listener, 'l0', 'listener'));
  m.get(TypeUrl.Route)!.set('r0', resource(TypeUrl.Route, 'r0', route));
  m.get(TypeUrl.Secret)!.set('t0', resource(TypeUrl.Secret, 't0', secret));
  return new Snapshot(m);
}

function context(cache: SnapshotCache): ServerContext {
  return {
    cache,
    registry: new ProxyRegistry(),
    metrics: new Metrics(),
    logger: createLogger({ level: 'silent' }),
    requireToken: 'secrets',
    responses: new SharedResponses(),
  };
}

const auth = { ok: true as const, claims: { subject: 'gateway/edge', id: 't', expiresAt: new Date(Date.now() + 3_600_000) } };

test('SotW: the streams of a group get one response object per change; each ACK still matches', () => {
  const cache = new SnapshotCache();
  cache.set(GROUP, snapshot('v1'));
  const ctx = context(cache);
  const got: SotwResponse[][] = [[], []];
  const streams = [0, 1].map((i) => new SotwStream(ctx, `p${i}`, (r) => got[i]!.push(r)));
  streams.forEach((s, i) => {
    s.auth = auth;
    s.onRequest({ node: gatewayNode(`edge-${i}`, 'edge'), type_url: TypeUrl.Route, resource_names: ['r0'] });
    s.onRequest({ type_url: TypeUrl.Secret, resource_names: ['t0'] });
  });
  assert.equal(got[0]![0], got[1]![0], 'the first route response is one object for both streams');
  assert.match(got[0]![0]!.nonce, /^s\d+$/);
  assert.notEqual(got[0]![1], got[1]![1], 'secret responses are never shared');
  assert.match(got[0]![1]!.nonce, /^\d+$/);

  cache.set(GROUP, snapshot('v2'));
  for (const s of streams) s.onChange([TypeUrl.Route]);
  const [a, b] = [got[0]!.at(-1)!, got[1]!.at(-1)!];
  assert.equal(a, b);
  assert.notEqual(a.nonce, got[0]![0]!.nonce, 'a new content gets a new nonce');
  assert.equal(Buffer.from(a.resources[0]!.value).toString(), 'v2');
  streams.forEach((s, i) => {
    s.onRequest({ type_url: TypeUrl.Route, resource_names: ['r0'], version_info: a.version_info, response_nonce: a.nonce });
    assert.equal(s.status!.type(TypeUrl.Route).acked?.version, a.version_info, `stream ${i} recorded its ACK`);
  });
  assert.equal(ctx.responses!.misses, 2, 'two route contents, each built once (secrets are not cached)');
  assert.equal(ctx.responses!.hits, 2);
});

test('Delta: streams that hold the same get one response; a stream that already holds it gets none', () => {
  const cache = new SnapshotCache();
  cache.set(GROUP, snapshot('v1'));
  const ctx = context(cache);
  const got: DeltaResponse[][] = [[], [], []];
  const streams = [0, 1, 2].map((i) => new DeltaStream(ctx, `p${i}`, (r) => got[i]!.push(r)));
  const r0v1 = resource(TypeUrl.Route, 'r0', 'v1').version;
  streams.forEach((s, i) => {
    s.auth = auth;
    // The third proxy starts holding r0 at v1 already: it is sent nothing new for it.
    s.onRequest({
      node: gatewayNode(`edge-${i}`, 'edge'),
      type_url: TypeUrl.Route,
      resource_names_subscribe: ['r0'],
      initial_resource_versions: i === 2 ? { r0: r0v1 } : {},
    });
  });
  assert.equal(got[0]![0], got[1]![0]);
  assert.equal(got[0]!.length, 1);
  assert.deepEqual(got[2], [], 'a proxy resuming with current versions gets no response at all (not an empty one)');
  for (const [i, s] of streams.entries()) if (got[i]![0]) s.onRequest({ type_url: TypeUrl.Route, response_nonce: got[i]![0]!.nonce });

  cache.set(GROUP, snapshot('v2'));
  for (const s of streams) s.onChange([TypeUrl.Route]);
  const last = got.map((g) => g.at(-1)!);
  assert.equal(last[0], last[1]);
  assert.equal(last[1], last[2], 'all three now lack the same: one response');
  for (const [i, s] of streams.entries()) {
    s.onRequest({ type_url: TypeUrl.Route, response_nonce: last[i]!.nonce });
    assert.equal(s.status!.type(TypeUrl.Route).acked?.version, last[i]!.system_version_info, `stream ${i} recorded its ACK`);
  }
});

test('SharedResponses: least recently used out past the count, too big never kept', () => {
  const shared = new SharedResponses({ bytes: 100, count: 2 });
  const r = (n: number) => [resource(TypeUrl.Route, 'r', 'x'.repeat(n))];
  let built = 0;
  const make = (nonce: string) => ({ nonce, n: ++built });
  const a = shared.get('a', r(10), make);
  shared.get('b', r(10), make);
  assert.equal(shared.get('a', r(10), make), a, 'a hit');
  shared.get('c', r(10), make); // evicts b, the least recently used
  assert.equal(shared.size, 2);
  assert.equal(shared.get('a', r(10), make), a);
  const b2 = shared.get('b', r(10), make);
  assert.equal(b2.n, 4, 'b was built again');
  const big1 = shared.get('big', r(200), make);
  const big2 = shared.get('big', r(200), make);
  assert.notEqual(big1, big2, 'a response over the byte bound is not kept');
  assert.notEqual(big1.nonce, big2.nonce);
  const long = 'k'.repeat(5000);
  assert.equal(shared.get(long, r(1), make), shared.get(long, r(1), make), 'long keys (hashed) still hit');
});
