// The record in which a replica publishes its proxies (`replicas/ID/proxies` and its parts), without
// Consul: any number of proxies publishes with every value under Consul's 512 KiB and reads back
// equal; what is published is bounded and deterministic; a reader never sees a half-written set;
// damaged parts, heads of another format and records of an earlier version are handled without a
// throw and never shown as they are. test/integration/shared-state.test.ts runs 5,000 on a real Consul.
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { describe, test } from 'node:test';
import { brotliCompressSync } from 'node:zlib';
import type { Leadership } from '../../src/state/leader.js';
import {
  decodeProxies,
  encodeProxies,
  MAX_PARTS,
  PART_CHARS,
  parseHead,
  ReplicaDirectory,
  type ProxiesHead,
  type PublishedProxy,
} from '../../src/state/replicas.js';
import { SharedState, StateKey } from '../../src/state/index.js';
import { consulConnectionFromEnv } from '../../src/sources/consul/config.js';

const CONSUL_MAX_VALUE = 512 * 1024;

/** Consul KV as the directory uses it; `failOn` makes writes of matching keys throw (Consul refusing them). */
class FakeKv {
  index = 1;
  failOn?: RegExp;
  readonly data = new Map<string, { value: string; modifyIndex: number; session?: string }>();
  async get(key: string) {
    const e = this.data.get(key);
    return { entry: e && { ...e }, index: this.index };
  }
  async list(prefix: string) {
    return [...this.data]
      .filter(([k]) => k.startsWith(prefix))
      .sort(([a], [b]) => (a < b ? -1 : 1))
      .map(([key, e]) => ({ key, ...e }));
  }
  async keys(prefix: string) {
    return [...this.data.keys()].filter((k) => k.startsWith(prefix)).sort();
  }
  async cas(key: string, value: string, modifyIndex: number) {
    if (this.failOn?.test(key)) throw new Error(`Consul write of ${key} failed: Request body too large`);
    const e = this.data.get(key);
    if ((e?.modifyIndex ?? 0) !== modifyIndex) return false;
    this.data.set(key, { value, modifyIndex: ++this.index, session: e?.session });
    return true;
  }
  async acquire(key: string, value: string, session: string) {
    this.data.set(key, { value, modifyIndex: ++this.index, session });
    return true;
  }
  async deleteTree(prefix: string) {
    for (const k of [...this.data.keys()]) if (k.startsWith(prefix)) this.data.delete(k);
  }
  close() {}
}

function sharedOn(kv: FakeKv): SharedState {
  const key = StateKey.load(undefined, { SIGNALBOX_STATE_KEY: randomBytes(32).toString('base64') });
  const shared = new SharedState({ conn: consulConnectionFromEnv('127.0.0.1:1', undefined, {}), prefix: 'mesh', key });
  Object.assign(shared, { kv });
  return shared;
}
const leadership = (session: string) => ({ leader: async () => 'r1', sessionId: session }) as unknown as Leadership;

const hex = (s: string) => createHash('sha256').update(s).digest('hex');
/**
 * `n` proxies as serve publishes them, made to compress badly: a version of its own per proxy and
 * type (16 hex digits), a connection time and certificate expiry each, every tenth NACKed with a
 * 500-character message of its own.
 */
function summaries(n: number, seed = 'a'): PublishedProxy[] {
  return Array.from({ length: n }, (_, i) => {
    const name = `svc${i % 50}`;
    const v = (t: string) => hex(`${seed}/${i}/${t}`).slice(0, 16);
    const nacked = i % 10 === 0;
    const types: Record<string, unknown> = {};
    for (const t of ['cluster', 'endpoint', 'listener', 'route', 'secret'])
      types[t] = { sentVersion: v(t), ackedVersion: nacked && t === 'route' ? v('old') : v(t) };
    if (nacked)
      (types.route as Record<string, unknown>).lastNack = {
        version: v('route'),
        message: Array.from({ length: 8 }, (_, k) => hex(`${seed}/${i}/m${k}`))
          .join(' ')
          .slice(0, 500),
        at: new Date(Date.UTC(2026, 0, 1) + i * 1000).toISOString(),
        sources: [`routes/${name}.yaml`],
        resources: [`route-${i}`],
      };
    return {
      id: `${name}-${String(i).padStart(5, '0')}-${v('id').slice(0, 8)}`,
      role: 'sidecar',
      name,
      group: `sidecar/${name}/1/2/3`,
      protocol: i % 2 ? 'delta' : 'sotw',
      state: nacked ? 'NACKED' : 'SYNCED',
      connectedAt: new Date(Date.UTC(2026, 0, 1) + i * 1000).toISOString(),
      types,
      certificate: { identity: `spiffe://signalbox.local/service/${name}`, notAfter: new Date(Date.UTC(2026, 0, 2) + i * 1000).toISOString() },
    } as PublishedProxy;
  });
}

/** Publishes `list` as replica r1 (one tick) and returns what replica r2 reads of r1. */
async function publishAndRead(kv: FakeKv, list: () => PublishedProxy[], limits = {}) {
  const writer = new ReplicaDirectory(sharedOn(kv), leadership('s1'), { id: 'r1', xds: '10.0.0.1:18000', startedAt: 't' }, list, undefined, limits);
  await (writer as unknown as { tick(): Promise<void> }).tick();
  return readR1(kv, limits);
}
async function readR1(kv: FakeKv, limits = {}) {
  const reader = new ReplicaDirectory(sharedOn(kv), leadership('s2'), { id: 'r2', xds: '', startedAt: '' }, () => [], undefined, limits);
  const view = await reader.list({ details: true });
  return view.replicas.find((r) => r.id === 'r1')!;
}
const headOf = (kv: FakeKv) => (JSON.parse(kv.data.get('mesh/replicas/r1/proxies')!.value) as { data: ProxiesHead }).data;
const partKeys = (kv: FakeKv) => [...kv.data.keys()].filter((k) => k.startsWith('mesh/replicas/r1/parts/')).sort();

describe('a replica publishes any number of proxies', () => {
  for (const n of [1, 1_000, 5_000, 20_000]) {
    test(`${n.toLocaleString('en')} proxies: every value under 512 KiB, read back equal by another replica`, async (t) => {
      const kv = new FakeKv();
      const list = summaries(n);
      const r1 = await publishAndRead(kv, () => list);
      const head = headOf(kv);
      for (const [k, e] of kv.data) assert.ok(Buffer.byteLength(e.value) < CONSUL_MAX_VALUE, `${k}: ${Buffer.byteLength(e.value)} bytes`);
      for (const k of partKeys(kv)) assert.ok(kv.data.get(k)!.value.length <= PART_CHARS);
      assert.equal(partKeys(kv).length, head.parts);
      assert.ok(head.parts <= MAX_PARTS);
      assert.deepEqual([head.count, head.omitted], [n, 0]);
      assert.equal(r1.alive, true);
      assert.deepEqual(r1.details, list, 'every proxy in full, in the order published');
      assert.deepEqual(r1.proxies, list.map((p) => p.id).sort());
      assert.equal(r1.proxiesAt, head.at);
      const raw = Buffer.byteLength(JSON.stringify(list));
      t.diagnostic(
        `${n} proxies: ${raw} bytes of JSON, ${head.parts} part(s), ${partKeys(kv).reduce((s, k) => s + kv.data.get(k)!.value.length, 0)} characters in Consul`,
      );
      if (n === 20_000) assert.ok(head.parts > 1, 'the largest is cut into several parts');
    });
  }

  test('deterministic: the same list makes the same parts and digest; another list another digest', async () => {
    const list = summaries(3_000);
    const a = await encodeProxies(list, 'at');
    const b = await encodeProxies(JSON.parse(JSON.stringify(list)) as PublishedProxy[], 'at');
    assert.deepEqual(a, b);
    const c = await encodeProxies(summaries(3_000, 'b'), 'at');
    assert.notEqual(c.head.digest, a.head.digest);
  });

  test('bounded: past the limits the last proxies go brief, then are left out and counted; every part within its size', async () => {
    const list = summaries(5_000);
    const limits = { partChars: 8_192, maxParts: 4 };
    const enc = await encodeProxies(list, 'at', limits);
    assert.ok(enc.parts.length <= 4 && enc.parts.every((p) => p.length <= 8_192));
    assert.equal(enc.head.count, 5_000);
    assert.ok(enc.head.omitted > 0 && enc.head.omitted < 5_000, `${enc.head.omitted} left out`);
    assert.equal(enc.published.length, 5_000 - enc.head.omitted);
    assert.deepEqual(
      enc.published.map((p) => p.id),
      list.slice(0, enc.published.length).map((p) => p.id),
      'the first ones kept (problems first), in order',
    );
    assert.ok(enc.published.every((p) => (p as { brief?: boolean }).brief === true));
    assert.deepEqual(await decodeProxies(enc.head, (i) => enc.parts[i], limits), enc.published);
    // A smaller excess: brief past a point, the NACKed (first) kept in full, none left out.
    const some = await encodeProxies(list, 'at', { partChars: 64 * 1024, maxParts: 6 });
    assert.equal(some.head.omitted, 0);
    assert.ok(some.published.some((p) => (p as { brief?: boolean }).brief === true));
    assert.ok(!('brief' in some.published[0]!));
    // Published through the directory with the limits: the log says it once, the reader gets what fit.
    const kv = new FakeKv();
    const warned: string[] = [];
    const logger = { info() {}, warn: (_o: object, m: string) => warned.push(m), error() {} };
    const writer = new ReplicaDirectory(sharedOn(kv), leadership('s1'), { id: 'r1', xds: 'x', startedAt: 't' }, () => list, logger, limits);
    await (writer as unknown as { tick(): Promise<void> }).tick();
    assert.equal(warned.length, 1);
    assert.match(warned[0]!, /too many proxies to publish each in full/);
    assert.deepEqual((await readR1(kv, limits)).details, enc.published);
  });
});

describe('readers never see a half-written set, nor a damaged one', () => {
  test('a write cut before the head: the reader keeps the previous set; the next write lands and the stale parts go', async () => {
    const kv = new FakeKv();
    let list = summaries(2_000, 'one');
    await publishAndRead(kv, () => list);
    const first = headOf(kv);
    const warned: string[] = [];
    const logger = { info() {}, warn: (o: object, m: string) => warned.push(`${m} ${JSON.stringify(o)}`), error() {} };
    const writer = new ReplicaDirectory(sharedOn(kv), leadership('s1'), { id: 'r1', xds: 'x', startedAt: 't' }, () => list, logger);
    list = summaries(2_000, 'two');
    kv.failOn = /replicas\/r1\/proxies$/; // the parts are written, the head is refused
    await (writer as unknown as { tick(): Promise<void> }).tick();
    assert.match(warned[0]!, /cannot publish this replica in Consul; retrying/);
    assert.ok(
      partKeys(kv).some((k) => !k.includes(first.digest)),
      "the new set's parts are there",
    );
    assert.deepEqual((await readR1(kv)).details, summaries(2_000, 'one'), 'the reader gets the previous set, whole');
    kv.failOn = undefined;
    await (writer as unknown as { tick(): Promise<void> }).tick();
    assert.deepEqual((await readR1(kv)).details, list);
    const head = headOf(kv);
    assert.deepEqual(
      partKeys(kv),
      Array.from({ length: head.parts }, (_, i) => `mesh/replicas/r1/parts/${head.digest}/${String(i).padStart(3, '0')}`),
      'only the current set is left',
    );
    // Unchanged: nothing written again.
    const index = kv.index;
    await (writer as unknown as { tick(): Promise<void> }).tick();
    assert.equal(kv.index, index);
  });

  test('a damaged or missing part, a wrong digest, a later format: the replica shows no proxies, and nothing throws', async () => {
    const kv = new FakeKv();
    const list = summaries(5_000);
    await publishAndRead(kv, () => list);
    const head = headOf(kv);
    const keys = partKeys(kv);
    const saved = new Map(keys.map((k) => [k, kv.data.get(k)!]));
    const restore = () => {
      for (const [k, e] of saved) kv.data.set(k, e);
    };
    const shows = async () => {
      const r1 = await readR1(kv);
      return [r1.alive, r1.proxies.length, r1.details!.length];
    };
    assert.deepEqual(await shows(), [true, 5_000, 5_000]);
    // One character changed in one part.
    const k1 = keys[1]!;
    const v = saved.get(k1)!.value;
    kv.data.set(k1, { ...saved.get(k1)!, value: `${v.slice(0, 100)}${v[100] === 'A' ? 'B' : 'A'}${v.slice(101)}` });
    assert.deepEqual(await shows(), [true, 0, 0]);
    restore();
    // A part missing.
    kv.data.delete(keys.at(-1)!);
    assert.deepEqual(await shows(), [true, 0, 0]);
    restore();
    // A head whose digest names no parts, one of a later format, one that is no record.
    const setHead = (data: unknown) => kv.data.set('mesh/replicas/r1/proxies', { value: JSON.stringify({ v: 1, data, sealed: [] }), modifyIndex: ++kv.index });
    setHead({ ...head, digest: '0'.repeat(32) });
    assert.deepEqual(await shows(), [true, 0, 0]);
    setHead({ ...head, format: 3 });
    assert.deepEqual(await shows(), [true, 0, 0]);
    setHead({ ...head, parts: MAX_PARTS + 1 });
    assert.deepEqual(await shows(), [true, 0, 0]);
    kv.data.set('mesh/replicas/r1/proxies', { value: '{not json', modifyIndex: ++kv.index });
    assert.deepEqual(await shows(), [true, 0, 0]);
    setHead(head);
    assert.deepEqual(await shows(), [true, 5_000, 5_000], 'the intact record reads again');
  });

  test('parts that match their digest but inflate past the bound or to something else are left out', async () => {
    const big = await encodeProxies(summaries(1_000), 'at');
    assert.equal(await decodeProxies(big.head, (i) => big.parts[i], { maxRaw: 64 * 1024 }), undefined, 'inflates past maxRaw');
    // JSON that is no list, in parts that match their digest.
    const obj = brotliCompressSync(Buffer.from('{"id":"x","state":"SYNCED"}')).toString('base64');
    const objHead: ProxiesHead = { ...big.head, parts: 1, digest: hex(obj).slice(0, 32) };
    assert.equal(await decodeProxies(objHead, () => obj), undefined);
    const mixed = await encodeProxies([{ id: 'ok-1', state: 'SYNCED' }, { state: 'SYNCED' }, 'x', null] as unknown as PublishedProxy[], 'at');
    assert.deepEqual(await decodeProxies(mixed.head, (i) => mixed.parts[i]), [{ id: 'ok-1', state: 'SYNCED' }], 'entries that are no proxy are dropped');
    assert.equal(parseHead({ ...big.head, encoding: 'gzip' }), undefined);
    assert.equal(parseHead({ ...big.head, digest: 'ZZ' }), undefined);
    assert.equal(parseHead(undefined), undefined);
  });

  test('a record of an earlier version (the list in the head) is read as before; the new head carries no list an earlier reader would misread', async () => {
    const kv = new FakeKv();
    kv.data.set('mesh/replicas/r1/info', { value: JSON.stringify({ id: 'r1', xds: 'x', startedAt: 't' }), modifyIndex: 1, session: 's1' });
    const old = summaries(3);
    kv.data.set('mesh/replicas/r1/proxies', {
      value: JSON.stringify({ v: 1, data: { ids: old.map((p) => p.id).sort(), at: 'a0', proxies: old }, sealed: [] }),
      modifyIndex: 2,
    });
    const r1 = await readR1(kv);
    assert.deepEqual([r1.proxies, r1.details, r1.proxiesAt], [old.map((p) => p.id).sort(), old, 'a0']);
    await publishAndRead(kv, () => old);
    const head = headOf(kv) as unknown as Record<string, unknown>;
    assert.deepEqual(Object.keys(head).sort(), ['at', 'count', 'digest', 'encoding', 'format', 'omitted', 'parts']);
  });
});
