// The Delta server looks, on each push, only at the names that changed in the snapshot since the
// stream's last push (SnapshotCache generations). This drives two DeltaStreams side by side with
// the same randomized sequence of snapshots and proxy requests (subscribe, unsubscribe, wildcard,
// initial_resource_versions, ACK, NACK, unanswered responses, late or skipped change
// notifications, group deleted and rebuilt): one incremental, one diffing every resource of the
// type on every push (the reference). Every response (resources, versions, removals,
// system_version_info, nonce) and what each stream records as sent must be identical. At the end
// of each run the proxy, once it has answered everything, holds exactly what the snapshot offers.
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { createLogger } from '../../src/observability/logger.js';
import { Metrics } from '../../src/observability/metrics.js';
import { changedNames, Snapshot, SnapshotCache } from '../../src/xds/cache/snapshot-cache.js';
import { hashText, type Resource } from '../../src/xds/resources/resource.js';
import { PUSH_ORDER, SHORT_NAME, TypeUrl } from '../../src/xds/resources/type-urls.js';
import type { ServerContext } from '../../src/xds/server/context.js';
import { DeltaStream, type DeltaRequest, type DeltaResponse } from '../../src/xds/server/delta.js';
import { ProxyRegistry } from '../../src/xds/server/proxy-status.js';
import { gatewayNode } from '../helpers/xds-client.js';

const GROUP = 'gateway/edge';
const CDS = TypeUrl.Cluster;
const EDS = TypeUrl.Endpoint;
const LDS = TypeUrl.Listener;
const RDS = TypeUrl.Route;
const SDS = TypeUrl.Secret;

/** Names each type draws from (a few more than a snapshot holds, so names come and go). */
const POOL: Record<TypeUrl, string[]> = {
  [CDS]: Array.from({ length: 12 }, (_, i) => `c${i}`),
  [EDS]: Array.from({ length: 12 }, (_, i) => `c${i}`),
  [LDS]: ['l0', 'l1', 'l2', 'l3'],
  [RDS]: ['r0', 'r1', 'r2', 'r3'],
  [SDS]: ['s0', 's1', 's2'],
};

/** mulberry32: a small seeded generator, so a failing seed can be replayed. */
function rng(seed: number) {
  let a = seed >>> 0;
  const next = () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
  return {
    next,
    chance: (p: number) => next() < p,
    int: (n: number) => Math.floor(next() * n),
    pick<T>(xs: readonly T[]): T {
      return xs[Math.floor(next() * xs.length)]!;
    },
    some<T>(xs: readonly T[], p: number): T[] {
      return xs.filter(() => next() < p);
    },
  };
}
type Rng = ReturnType<typeof rng>;

/** A resource whose version is the hash of its content (a new object each call, like the encoder). */
function resource(type: TypeUrl, name: string, content: string): Resource {
  return { type, name, version: hashText(`${type}\n${name}\n${content}`), bytes: Buffer.from(content), printable: { content }, sources: [`${content}.yaml`] };
}

/** The next snapshot: per type unchanged (same map), or names added, removed, changed, re-made. */
function evolve(r: Rng, prev: ReadonlyMap<TypeUrl, ReadonlyMap<string, Resource>>): Map<TypeUrl, ReadonlyMap<string, Resource>> {
  const out = new Map<TypeUrl, ReadonlyMap<string, Resource>>();
  for (const t of PUSH_ORDER) {
    const old = prev.get(t) ?? new Map<string, Resource>();
    if (r.chance(0.5)) {
      out.set(t, old);
      continue;
    }
    const m = new Map(old);
    for (const n of POOL[t]) {
      const x = r.next();
      const cur = m.get(n);
      if (x < 0.12) m.delete(n);
      else if (x < 0.3)
        m.set(n, resource(t, n, `v${r.int(4)}`)); // often the same content again
      else if (x < 0.4 && cur)
        m.set(n, resource(t, n, String(cur.printable.content))); // same version, new object
      else if (x < 0.5 && !cur) m.set(n, resource(t, n, `v${r.int(4)}`));
    }
    out.set(t, m);
  }
  return out;
}

function context(cache: SnapshotCache): ServerContext {
  // 'secrets': a stream without a token still gets configuration, so both kinds are compared.
  return { cache, registry: new ProxyRegistry(), metrics: new Metrics(), logger: createLogger({ level: 'silent' }), requireToken: 'secrets' };
}

/** What a response looks like on the wire (resource bytes stand for themselves). */
function wire(r: DeltaResponse) {
  return {
    type: SHORT_NAME[r.type_url as TypeUrl],
    nonce: r.nonce,
    version: r.system_version_info,
    resources: r.resources.map((x) => `${x.name}@${x.version}:${Buffer.from(x.resource.value).toString()}`),
    removed: r.removed_resources,
  };
}

/** What a stream records as sent, per type: name -> version (and the object's sources). */
function sentOf(s: DeltaStream) {
  const out: Record<string, string[]> = {};
  for (const t of PUSH_ORDER) {
    const m = s.status?.sent.get(t);
    if (m) out[SHORT_NAME[t]] = [...m.values()].map((x) => `${x.name}@${x.version}/${x.sources.join()}`).sort();
  }
  const types: Record<string, unknown> = {};
  for (const [t, x] of s.status?.types ?? [])
    types[SHORT_NAME[t]] = { sent: x.sent?.version, acked: x.acked?.version, nack: x.nack?.version, pushes: x.pushes };
  return { sent: out, types };
}

/** One randomized run: returns how many responses were compared, and checked against the oracle. */
function run(seed: number, steps: number): { compared: number; oracleChecks: number } {
  const r = rng(seed);
  const cache = new SnapshotCache();
  const ctx = context(cache);
  const got = { inc: [] as DeltaResponse[], ref: [] as DeltaResponse[] };
  const inc = new DeltaStream(ctx, 'test-inc', (x) => got.inc.push(x));
  const ref = new DeltaStream(ctx, 'test-ref', (x) => got.ref.push(x));
  ref.incremental = false;
  const secrets = r.chance(0.7);
  for (const s of [inc, ref])
    s.auth = secrets ? { ok: true, claims: { subject: 'gateway/edge', id: 't', expiresAt: new Date(Date.now() + 3_600_000) } } : { ok: false, reason: 'test' };

  let resources = evolve(r, new Map());
  let stored = false;
  /** Change notifications not yet delivered (a fan-out that reaches the streams late). */
  const late = new Set<TypeUrl>();
  cache.on('change', ({ types }) => {
    for (const t of types) late.add(t);
  });
  const deliver = () => {
    if (late.size === 0) return;
    const types = PUSH_ORDER.filter((t) => late.has(t));
    late.clear();
    inc.onChange(types);
    ref.onChange(types);
  };
  /** The proxy: what it holds per type (name -> version), and the responses it has not answered yet. */
  const holds = new Map<TypeUrl, Map<string, string>>();
  /** Names the proxy holds because they were sent (not only named in initial_resource_versions). */
  const sentNames = new Map<TypeUrl, Set<string>>();
  const unanswered: DeltaResponse[] = [];
  const opened = new Set<TypeUrl>();
  let compared = 0;
  let oracleChecks = 0;
  let first = true;

  const request = (req: DeltaRequest, what: string) => {
    if (first) req.node = gatewayNode('delta-incremental', 'edge');
    first = false;
    inc.onRequest(req);
    ref.onRequest({ ...req });
    check(what);
  };
  const check = (what: string) => {
    const context = `seed ${seed}, after ${what}`;
    assert.deepEqual(got.inc.map(wire), got.ref.map(wire), `responses differ (${context})`);
    assert.deepEqual(sentOf(inc), sentOf(ref), `recorded state differs (${context})`);
    for (const x of got.inc) {
      const t = x.type_url as TypeUrl;
      const h = holds.get(t) ?? new Map<string, string>();
      const sentOfType = sentNames.get(t) ?? new Set<string>();
      holds.set(t, h);
      sentNames.set(t, sentOfType);
      for (const y of x.resources) {
        h.set(y.name, y.version);
        sentOfType.add(y.name);
      }
      for (const n of x.removed_resources) {
        h.delete(n);
        sentOfType.delete(n);
      }
      unanswered.push(x);
      // Independently of the server's code: system_version_info is the hash of what the proxy
      // holds (what was sent, and what it started with and the snapshot offers unchanged). Not
      // checked while it holds a name it started with that is out of scope now (a cluster whose
      // removal is held back): whether that counts depends on pushes the proxy cannot see.
      const st = inc['states'].get(t)!;
      const snapOfType = cache.get(GROUP).get(t);
      const offered = (n: string, v: string) => (st.wildcard || st.subscribed.has(n)) && snapOfType.get(n)?.version === v;
      const held = [...h].filter(([n, v]) => sentOfType.has(n) || offered(n, v));
      if ([...h].some(([n, v]) => !sentOfType.has(n) && !offered(n, v))) continue;
      oracleChecks++;
      assert.equal(
        x.system_version_info,
        hashText(
          held
            .map(([n, v]) => `${n}\u0000${v}`)
            .sort()
            .join('\n'),
        ),
        `system_version_info of ${SHORT_NAME[t]} ${x.nonce} (${context})`,
      );
    }
    compared += got.inc.length;
    got.inc.length = 0;
    got.ref.length = 0;
  };
  const answer = (x: DeltaResponse, nack: boolean) => {
    unanswered.splice(unanswered.indexOf(x), 1);
    request(
      { type_url: x.type_url, response_nonce: x.nonce, error_detail: nack ? { code: 3, message: 'rejected on purpose' } : null },
      `${nack ? 'NACK' : 'ACK'} of ${wire(x).type} ${x.nonce}`,
    );
  };

  for (let step = 0; step < steps; step++) {
    const x = r.next();
    if (x < 0.25) {
      // A new snapshot (or the group deleted, then built again).
      if (stored && r.chance(0.04)) {
        cache.delete(GROUP);
        stored = false;
      } else {
        resources = evolve(r, resources);
        cache.set(GROUP, new Snapshot(resources));
        stored = true;
      }
      if (r.chance(0.7)) deliver();
      check('a snapshot change');
    } else if (x < 0.35) {
      deliver();
      check('a late change notification');
    } else if (x < 0.42 || opened.size === 0) {
      // A type's first request, perhaps with the versions a previous stream left it.
      const t = r.pick(PUSH_ORDER);
      if (opened.has(t)) continue;
      opened.add(t);
      const initial: Record<string, string> = {};
      for (const n of r.some(POOL[t], 0.3)) initial[n] = r.chance(0.5) ? (resources.get(t)?.get(n)?.version ?? 'f00d') : hashText(`${n}${r.int(3)}`);
      const wildcardType = t === CDS || t === LDS;
      const sub = wildcardType && r.chance(0.6) ? (r.chance(0.5) ? [] : ['*']) : r.some(POOL[t], 0.4).concat(r.chance(0.2) ? ['nope'] : []);
      holds.set(t, new Map(Object.entries(initial)));
      request({ type_url: t, resource_names_subscribe: sub, initial_resource_versions: initial }, `first request for ${SHORT_NAME[t]} ${JSON.stringify(sub)}`);
    } else if (x < 0.5) {
      const t = r.pick([...opened]);
      const names = r.some([...POOL[t], '*', 'nope'], 0.25);
      request({ type_url: t, resource_names_subscribe: names }, `subscribe ${SHORT_NAME[t]} ${names}`);
    } else if (x < 0.56) {
      const t = r.pick([...opened]);
      const names = r.some([...POOL[t], '*'], 0.2);
      for (const n of names) {
        holds.get(t)?.delete(n);
        sentNames.get(t)?.delete(n);
      }
      request({ type_url: t, resource_names_unsubscribe: names }, `unsubscribe ${SHORT_NAME[t]} ${names}`);
    } else if (unanswered.length > 0) {
      // Answer a response (mostly the oldest; sometimes never: a lost answer, not for listeners
      // and routes, which would hold cluster removals back for good).
      const resp = r.chance(0.7) ? unanswered[0]! : r.pick(unanswered);
      if (r.chance(0.05) && resp.type_url !== LDS && resp.type_url !== RDS) unanswered.splice(unanswered.indexOf(resp), 1);
      else answer(resp, r.chance(0.12));
    }
  }

  // Settle: every change delivered, every response ACKed, until nothing more is sent.
  if (!stored) {
    cache.set(GROUP, new Snapshot(resources));
    stored = true;
  }
  deliver();
  check('the last change');
  const settle = () => {
    for (let i = 0; unanswered.length > 0; i++) {
      assert.ok(i < 1000, `seed ${seed}: the streams do not settle`);
      answer(unanswered[0]!, false);
    }
  };
  settle();
  // A push of every type sends what an unsubscribe left out; after that, pushes send nothing.
  inc.onChange([...PUSH_ORDER]);
  ref.onChange([...PUSH_ORDER]);
  check('a push of every type');
  settle();
  inc.onChange([...PUSH_ORDER]);
  ref.onChange([...PUSH_ORDER]);
  check('a redundant push');
  assert.equal(unanswered.length, 0, `seed ${seed}: a push without a change sent something`);
  // The proxy holds what the snapshot offers it (clusters held back for make-before-break aside;
  // endpoints of a cluster gone stay while subscribed).
  const snap = cache.get(GROUP);
  for (const t of opened) {
    if (t === SDS && !secrets) continue;
    const st = inc['states'].get(t)!;
    const want = new Map<string, string>();
    for (const [n, x] of snap.get(t)) if (st.wildcard || st.subscribed.has(n)) want.set(n, x.version);
    const have = new Map(holds.get(t) ?? []);
    for (const n of st.withheld) have.delete(n);
    if (t === EDS) for (const n of [...have.keys()]) if (!snap.get(t).has(n)) have.delete(n);
    assert.deepEqual(have, want, `seed ${seed}: ${SHORT_NAME[t]} held after settling`);
  }
  return { compared, oracleChecks };
}

describe('Delta pushes look only at changed names', () => {
  test('changedNames: added, removed and replaced (by identity) names', () => {
    const a = resource(CDS, 'a', 'x');
    const b = resource(CDS, 'b', 'x');
    const prev = new Map([
      ['a', a],
      ['b', b],
    ]);
    assert.deepEqual([...changedNames(prev, prev)], []);
    assert.deepEqual([...changedNames(prev, new Map(prev))], []);
    const next = new Map([
      ['a', a],
      ['b', resource(CDS, 'b', 'x')],
      ['c', resource(CDS, 'c', 'y')],
    ]);
    assert.deepEqual([...changedNames(prev, next)].sort(), ['b', 'c']);
    assert.deepEqual([...changedNames(next, prev)].sort(), ['b', 'c']);
  });

  test('SnapshotCache generations: move only with a change; changedSince unions the last few, else undefined', () => {
    const cache = new SnapshotCache();
    assert.equal(cache.generation(GROUP, CDS), 0);
    const m0 = new Map([['a', resource(CDS, 'a', '0')]]);
    cache.set(GROUP, new Snapshot(new Map([[CDS, m0]])));
    const g0 = cache.generation(GROUP, CDS);
    const e0 = cache.generation(GROUP, EDS);
    assert.ok(g0 > 0);
    assert.deepEqual([...cache.changedSince(GROUP, CDS, g0)!], []);
    cache.set(GROUP, new Snapshot(new Map([[CDS, new Map(m0)]])));
    assert.equal(cache.generation(GROUP, CDS), g0, 'same resources in a new map: same generation');
    const m1 = new Map([...m0, ['b', resource(CDS, 'b', '0')]]);
    cache.set(GROUP, new Snapshot(new Map([[CDS, m1]])));
    const g1 = cache.generation(GROUP, CDS);
    assert.ok(g1 > g0);
    assert.equal(cache.generation(GROUP, EDS), e0, 'another type does not move');
    assert.deepEqual([...cache.changedSince(GROUP, CDS, g0)!], ['b']);
    cache.set(GROUP, new Snapshot(new Map([[CDS, new Map([['b', m1.get('b')!]])]])));
    assert.deepEqual([...cache.changedSince(GROUP, CDS, g0)!].sort(), ['a', 'b']);
    assert.deepEqual([...cache.changedSince(GROUP, CDS, g1)!], ['a']);
    for (let i = 0; i < 10; i++) cache.set(GROUP, new Snapshot(new Map([[CDS, new Map([['b', resource(CDS, 'b', String(i))]])]])));
    assert.equal(cache.changedSince(GROUP, CDS, g0), undefined, 'too far behind: diff everything');
    assert.equal(cache.changedSince(GROUP, CDS, 12345678), undefined);
    cache.delete(GROUP);
    assert.equal(cache.generation(GROUP, CDS), 0);
    cache.set(GROUP, new Snapshot(new Map([[CDS, m0]])));
    assert.ok(cache.generation(GROUP, CDS) > g1, 'a rebuilt group never reuses a generation');
    assert.equal(cache.changedSince(GROUP, CDS, g1), undefined);
  });

  test('randomized: the incremental push sends exactly what a full diff sends', () => {
    let compared = 0;
    let oracleChecks = 0;
    for (let seed = 1; seed <= 300; seed++) {
      const n = run(seed, 150);
      compared += n.compared;
      oracleChecks += n.oracleChecks;
    }
    assert.ok(compared > 5000 && oracleChecks > compared / 2, `only ${compared} responses compared, ${oracleChecks} checked against the oracle`);
  });
});
