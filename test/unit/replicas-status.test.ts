// Every proxy of every replica (`--state consul`), without Consul: what a replica publishes of its
// proxies (within its budget, never a secret), how the directory reads the replicas back (dead ones
// contribute nothing, damaged entries are dropped), `/api/proxies?scope=all` on the admin API, and
// `signalbox status` with and without the REPLICA column. Consul is faked here (a stand-in
// SharedState, or a ReplicaSource); test/integration/replicas-mesh.test.ts runs it on a real one.
import assert from 'node:assert/strict';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { after, before, describe, test } from 'node:test';
import Fastify, { type FastifyInstance } from 'fastify';
import { registerDashboard } from '../../src/admin/dashboard/routes.js';
import { publishedProxies, remoteProxies, replicaRows, type ReplicaSource, type ReplicasView } from '../../src/admin/replicas.js';
import { buildAdmin } from '../../src/admin/server.js';
import { renderStatus, status, type ProxyJson, type ReplicasJson } from '../../src/cli/status.js';
import { Pipeline } from '../../src/controller/pipeline.js';
import { createLogger } from '../../src/observability/logger.js';
import { Metrics } from '../../src/observability/metrics.js';
import type { Leadership } from '../../src/state/leader.js';
import { PROXIES_BUDGET, ReplicaDirectory, withinBudget, type PublishedProxy } from '../../src/state/replicas.js';
import type { SharedState } from '../../src/state/shared.js';
import { SnapshotCache } from '../../src/xds/cache/snapshot-cache.js';
import { TypeUrl } from '../../src/xds/resources/type-urls.js';
import { ProxyRegistry, ProxyStatus } from '../../src/xds/server/proxy-status.js';
import { STATUS_NOW, STATUS_PROXIES } from '../helpers/status-fixture.js';

const PEM_KEY = '-----BEGIN PRIVATE KEY-----\nMIIEvQIBADANBgkqhkiG9w0BAQEFAASCBKcwggSjAgEAAoIBAQC7\n-----END PRIVATE KEY-----';

/** A proxy as the xDS server holds it: versions sent / ACKed, a NACK whose message quotes a key, its token and certificate. */
function proxyStatus(o: { id: string; role?: 'gateway' | 'sidecar'; name?: string; acked?: boolean; nack?: string }): ProxyStatus {
  const role = o.role ?? 'sidecar';
  const name = o.name ?? 'web';
  const p = new ProxyStatus({ id: o.id, role, name, group: role === 'gateway' ? `gateway/${name}` : `sidecar/${name}/1/2/3` }, 'delta', '127.0.0.1:1');
  const c = p.type(TypeUrl.Cluster);
  c.sent = { version: `c-${o.id}-0123456789`, nonce: '1', at: 1000, resources: 2 };
  if (o.acked !== false) c.acked = { version: c.sent.version, at: 2000 };
  if (o.nack) {
    const r = p.type(TypeUrl.Route);
    r.sent = { version: `r-${o.id}-0123456789`, nonce: '2', at: 3000, resources: 1 };
    r.nack = { version: r.sent.version, message: o.nack, at: 4000, resources: ['a', 'b'], sources: ['/policies/routes.yaml'] };
  }
  p.token = { id: 'tok-1', subject: `service/${name}`, expiresAt: '2030-01-01T00:00:00.000Z' };
  p.certificate = { identity: `spiffe://signalbox.local/service/${name}`, serial: '0a0b', notAfter: '2030-01-01T00:00:00.000Z' };
  return p;
}

function registryOf(...ps: ProxyStatus[]): ProxyRegistry {
  const reg = new ProxyRegistry();
  for (const p of ps) reg.add(p);
  return reg;
}

const bytes = (p: unknown) => Buffer.byteLength(JSON.stringify(p)) + 1;

describe('what a replica publishes of its proxies', () => {
  const reg = registryOf(
    proxyStatus({ id: 'web-1' }),
    proxyStatus({ id: 'orders-1', name: 'orders', acked: false }),
    proxyStatus({ id: 'edge-1', role: 'gateway', name: 'edge', nack: `bad listener: ${PEM_KEY}\n${'x'.repeat(900)}` }),
  );
  const published = publishedProxies(reg, (f) => f.replace(/^\/policies\//, ''));

  test('a compact status per proxy, problems first, NACK cut and relative, never a key or a token', () => {
    assert.deepEqual(
      published.map((p) => [p.id, p.state]),
      [
        ['edge-1', 'NACKED'],
        ['orders-1', 'PENDING'],
        ['web-1', 'SYNCED'],
      ],
    );
    const edge = published[0]!;
    assert.deepEqual(Object.keys(edge).sort(), ['certificate', 'connectedAt', 'group', 'id', 'name', 'protocol', 'role', 'state', 'types']);
    assert.deepEqual(edge.certificate, { identity: 'spiffe://signalbox.local/service/edge', notAfter: '2030-01-01T00:00:00.000Z' });
    const nack = edge.types.route!.lastNack!;
    assert.equal(nack.message.length, 500, 'cut to 500 characters');
    assert.match(nack.message, /^bad listener: \[redacted\]\nx+$/);
    assert.deepEqual(nack.sources, ['routes.yaml']);
    const text = JSON.stringify(published);
    assert.doesNotMatch(text, /PRIVATE KEY|MIIEvQ/);
    assert.ok(!text.includes('tok-1') && !text.includes('"token"'), 'nothing of the token the proxy presented');
    assert.doesNotMatch(text, /serial|0a0b/, 'only identity and expiry of the certificate');
  });

  test('withinBudget: in full while they fit, then brief (top-level text only, flagged), still never a secret', () => {
    assert.deepEqual(withinBudget(published), published, 'far under the budget: unchanged');
    assert.equal(PROXIES_BUDGET, 256 * 1024);
    // Room for exactly the first two in full.
    const budget = bytes(published[0]) + bytes(published[1]);
    const cut = withinBudget(published, budget);
    assert.equal(cut[0], published[0]);
    assert.equal(cut[1], published[1]);
    assert.deepEqual(cut[2], {
      id: 'web-1',
      state: 'SYNCED',
      role: 'sidecar',
      name: 'web',
      group: 'sidecar/web/1/2/3',
      protocol: 'delta',
      connectedAt: published[2]!.connectedAt,
      brief: true,
    });
    // One byte short: the second goes brief, and so does every one after it (the order is kept).
    const shorter = withinBudget(published, budget - 1);
    assert.deepEqual(
      shorter.map((p) => [p.id, (p as { brief?: boolean }).brief === true]),
      [
        ['edge-1', false],
        ['orders-1', true],
        ['web-1', true],
      ],
    );
    // Nothing fits: all brief, ids and states kept; no versions, no NACK text, no certificate.
    const none = withinBudget(published, 0);
    assert.deepEqual(
      none.map((p) => [p.id, p.state]),
      published.map((p) => [p.id, p.state]),
    );
    for (const p of none) assert.deepEqual(Object.keys(p).sort(), ['brief', 'connectedAt', 'group', 'id', 'name', 'protocol', 'role', 'state']);
    // A secret-bearing field the caller put at the top level would be a string and kept: the caller
    // never publishes one (above); and objects (versions, NACKs) are dropped whole.
    const withObject: PublishedProxy & Record<string, unknown> = { id: 'x', state: 'SYNCED', nested: { key: PEM_KEY } };
    assert.doesNotMatch(JSON.stringify(withinBudget([withObject], 0)), /PRIVATE KEY/);
  });

  test('one thousand proxies stay within the budget once published', () => {
    const many = Array.from({ length: 1000 }, (_, i) =>
      proxyStatus({ id: `svc-${String(i).padStart(4, '0')}-instance-with-a-long-name`, nack: i % 10 === 0 ? 'y'.repeat(2000) : undefined }),
    );
    const all = publishedProxies(registryOf(...many), (f) => f);
    const out = withinBudget(all);
    const size = out.reduce((n, p) => n + bytes(p), 0);
    assert.ok(all.reduce((n, p) => n + bytes(p), 0) > PROXIES_BUDGET, 'the input is over the budget');
    assert.ok(size < 512 * 1024, `${size} bytes: under what Consul accepts`);
    assert.ok(
      out.slice(0, 100).every((p) => p.state === 'NACKED' && !('brief' in p)),
      'the NACKed proxies (first) are kept in full',
    );
    assert.ok(out.some((p) => 'brief' in p));
  });
});

/** A stand-in for Consul KV under `mesh/`: the entries `list` returns, and what `update` writes. */
function fakeShared(entries: { key: string; value: string; session?: string }[]) {
  const writes: { name: string; data: unknown }[] = [];
  const shared = {
    keyOf: (n: string) => `mesh/${n}`,
    kv: {
      list: async (prefix: string) => entries.filter((e) => e.key.startsWith(prefix)).map((e) => ({ ...e, modifyIndex: 1 })),
      get: async () => ({ index: 1 }),
      acquire: async () => true,
    },
    update: async (name: string, fn: () => unknown) => {
      writes.push({ name, data: fn() });
    },
  };
  return { shared: shared as unknown as SharedState, writes };
}
const leadership = (leader: string) => ({ leader: async () => leader, sessionId: undefined }) as unknown as Leadership;
const record = (data: unknown) => JSON.stringify({ v: 1, data, sealed: [] });
const summary = (id: string, o: Record<string, unknown> = {}) => ({
  id,
  role: 'sidecar',
  name: id.split('-')[0],
  group: `sidecar/${id.split('-')[0]}/1/2/3`,
  protocol: 'sotw',
  state: 'SYNCED',
  connectedAt: '2026-01-01T00:00:00.000Z',
  types: { cluster: { sentVersion: 'v1', ackedVersion: 'v1' } },
  ...o,
});

describe('the replicas read back from Consul', () => {
  const entries = [
    { key: 'mesh/replicas/r1/info', value: JSON.stringify({ id: 'r1', xds: '10.0.0.1:18000', startedAt: 't1' }), session: 's1' },
    { key: 'mesh/replicas/r1/proxies', value: record({ ids: ['edge-1'], at: 'a1', proxies: [summary('edge-1', { role: 'gateway' })] }) },
    // r2 died: its session no longer holds its info key, and its list is stale.
    { key: 'mesh/replicas/r2/info', value: JSON.stringify({ id: 'r2', xds: '10.0.0.2:18000', startedAt: 't2' }) },
    { key: 'mesh/replicas/r2/proxies', value: record({ ids: ['ghost-1'], at: 'a2', proxies: [summary('ghost-1')] }) },
    { key: 'mesh/replicas/r3/info', value: JSON.stringify({ id: 'r3', xds: '10.0.0.3:18000', startedAt: 't3' }), session: 's3' },
    {
      key: 'mesh/replicas/r3/proxies',
      value: record({
        ids: ['orders-1', 'payments-1', 'edge-1', 7],
        at: 'a3',
        proxies: [
          summary('orders-1', { types: { cluster: { sentVersion: 'v2', ackedVersion: 'v1' } }, state: 'PENDING' }),
          summary('payments-1', { types: { cluster: { sentVersion: 'v1', ackedVersion: 'v1' }, 'not-a-type': { sentVersion: 'z' } } }),
          // r1 holds edge-1 now; r3 has not rewritten its list yet.
          summary('edge-1', { role: 'gateway', connectedAt: '2025-12-31T00:00:00.000Z' }),
          // Damaged or foreign entries.
          summary('bad-state', { state: 'ASLEEP' }),
          summary('bad-role', { role: 'admin' }),
          { state: 'SYNCED' },
          'web-9',
          null,
        ],
      }),
    },
    // Not JSON at all, and keys of no replica record.
    { key: 'mesh/replicas/r4/info', value: '{not json', session: 's4' },
    { key: 'mesh/replicas/r4/proxies', value: record({ ids: 'edge-1', proxies: 'no' }) },
    { key: 'mesh/replicas/r5/xds-server', value: record({ cert: 'x' }) },
  ];

  test('ReplicaDirectory.list: dead replicas hold no proxies, damaged entries leave a replica without details', async () => {
    const { shared } = fakeShared(entries);
    const dir = new ReplicaDirectory(shared, leadership('r1'), { id: 'r1', xds: '10.0.0.1:18000', startedAt: 't1' }, () => []);
    const view = await dir.list({ details: true });
    assert.equal(view.self, 'r1');
    assert.equal(view.leader, 'r1');
    assert.deepEqual(
      view.replicas.map((r) => [r.id, r.xds, r.alive, r.leader, r.proxies, r.details?.length]),
      [
        ['r1', '10.0.0.1:18000', true, true, ['edge-1'], 1],
        ['r2', '10.0.0.2:18000', false, false, [], 0],
        ['r3', '10.0.0.3:18000', true, false, ['orders-1', 'payments-1', 'edge-1'], 5],
      ],
    );
    const plain = await dir.list();
    assert.equal(plain.replicas[2]!.details, undefined, 'details only when asked for');
  });

  test('remoteProxies: the live others, own proxies not duplicated, dead replicas and damaged entries ignored', async () => {
    const { shared } = fakeShared(entries);
    const view = await new ReplicaDirectory(shared, leadership('r1'), { id: 'r1', xds: '', startedAt: '' }, () => []).list({ details: true });
    const remote = remoteProxies(view, new Set(['edge-1']));
    assert.deepEqual(
      remote.map((p) => [p.id, p.replica, p.state, p.publishedAt]),
      [
        ['orders-1', 'r3', 'PENDING', 'a3'],
        ['payments-1', 'r3', 'SYNCED', 'a3'],
      ],
    );
    assert.deepEqual(Object.keys(remote[1]!.types), ['cluster'], 'an unknown type name is dropped');
    assert.ok(!remote.some((p) => p.id === 'ghost-1'), "a dead replica's stale list contributes nothing");
    // Asked on r3 (which does not hold edge-1 itself): edge-1 comes from r1, its live holder, and r3's own are left out.
    const fromR3 = remoteProxies({ ...view, self: 'r3' }, new Set(['orders-1', 'payments-1']));
    assert.deepEqual(
      fromR3.map((p) => [p.id, p.replica]),
      [['edge-1', 'r1']],
    );
    // Two live replicas list one node id (it moved): the newer connection wins.
    const moved: ReplicasView = {
      self: 'r9',
      replicas: [
        { id: 'r1', xds: 'a', alive: true, leader: true, proxies: ['m-1'], details: [summary('m-1', { connectedAt: '2026-01-02T00:00:00.000Z' })] },
        { id: 'r2', xds: 'b', alive: true, leader: false, proxies: ['m-1'], details: [summary('m-1', { connectedAt: '2026-01-01T00:00:00.000Z' })] },
        // A view where a dead replica still carries what it published: remoteProxies leaves it out itself.
        {
          id: 'r3',
          xds: 'c',
          alive: false,
          leader: false,
          proxies: ['m-1', 'dead-1'],
          details: [summary('m-1', { connectedAt: '2027-01-01T00:00:00.000Z' }), summary('dead-1')],
        },
      ],
    };
    assert.deepEqual(
      remoteProxies(moved, new Set()).map((p) => [p.id, p.replica]),
      [['m-1', 'r1']],
    );
    assert.equal(remoteProxies(moved, new Set())[0]!.replica, 'r1');
    assert.equal(remoteProxies({ ...moved, replicas: [...moved.replicas].reverse() }, new Set())[0]!.replica, 'r1', 'whatever the order');
  });

  test('replicaRows: id, xDS address, alive, leader and a proxy count per replica', async () => {
    const { shared } = fakeShared(entries);
    const view = await new ReplicaDirectory(shared, leadership('r3'), { id: 'r3', xds: '', startedAt: '' }, () => []).list({ details: true });
    assert.deepEqual(replicaRows(view), [
      { id: 'r1', xds: '10.0.0.1:18000', alive: true, leader: false, proxies: 1, self: false },
      { id: 'r2', xds: '10.0.0.2:18000', alive: false, leader: false, proxies: 0, self: false },
      { id: 'r3', xds: '10.0.0.3:18000', alive: true, leader: true, proxies: 3, self: true },
    ]);
  });
});

const logger = createLogger({ level: 'silent' });
function admin(registry: ProxyRegistry, replicas?: ReplicaSource): FastifyInstance {
  const cache = new SnapshotCache();
  return buildAdmin({ pipeline: new Pipeline({ policyDir: '/nonexistent', cache, logger }), cache, registry, metrics: new Metrics(), logger, replicas });
}
const viewOf = (self: string): ReplicasView => ({
  self,
  leader: 'r1',
  replicas: [
    { id: 'r1', xds: '10.0.0.1:18000', alive: true, leader: true, proxies: ['edge-1'], proxiesAt: 'a1', details: [summary('edge-1', { role: 'gateway' })] },
    { id: 'r2', xds: '10.0.0.2:18000', alive: true, leader: false, proxies: ['orders-1'], proxiesAt: 'a2', details: [summary('orders-1')] },
    { id: 'r3', xds: '10.0.0.3:18000', alive: false, leader: false, proxies: [], details: [] },
  ],
});

describe('/api/proxies?scope=all', () => {
  test('a bad scope is a 400 naming the choices', async () => {
    const app = admin(registryOf(proxyStatus({ id: 'edge-1', role: 'gateway', name: 'edge' })));
    try {
      for (const q of ['scope=everything', 'scope=', 'scope=ALL']) {
        const res = await app.inject(`/api/proxies?${q}`);
        assert.equal(res.statusCode, 400, q);
        assert.match(res.json().error, /^scope must be "local" or "all", got "/);
      }
      const long = await app.inject(`/api/proxies?scope=${'z'.repeat(500)}`);
      assert.ok(long.body.length < 200, 'the bad value is cut');
      assert.equal((await app.inject('/api/proxies')).json().proxies.length, 1, 'nothing changed');
    } finally {
      await app.close();
    }
  });

  test('without shared state, scope=all is the same answer as scope=local and as no scope', async () => {
    const app = admin(registryOf(proxyStatus({ id: 'edge-1', role: 'gateway', name: 'edge' }), proxyStatus({ id: 'web-1' })));
    try {
      const plain = (await app.inject('/api/proxies')).body;
      assert.equal((await app.inject('/api/proxies?scope=all')).body, plain);
      assert.equal((await app.inject('/api/proxies?scope=local')).body, plain);
      assert.doesNotMatch(plain, /"replica"|"scope"/);
    } finally {
      await app.close();
    }
  });

  test("with shared state: this replica's proxies and the live others', each with its replica, and the replicas", async () => {
    let asked = 0;
    const app = admin(registryOf(proxyStatus({ id: 'edge-1', role: 'gateway', name: 'edge' })), {
      self: 'r1',
      list: async () => {
        asked++;
        return viewOf('r1');
      },
    });
    try {
      const local = (await app.inject('/api/proxies?scope=local')).json();
      assert.equal(asked, 0, 'scope=local does not read Consul');
      assert.deepEqual(
        local.proxies.map((p: { id: string }) => p.id),
        ['edge-1'],
      );
      const all = (await app.inject('/api/proxies?scope=all')).json();
      assert.equal(all.scope, 'all');
      assert.equal(all.self, 'r1');
      assert.equal(all.leader, 'r1');
      assert.deepEqual(
        all.proxies.map((p: { id: string; replica: string }) => [p.id, p.replica]),
        [
          ['edge-1', 'r1'],
          ['orders-1', 'r2'],
        ],
      );
      assert.equal(all.proxies[0].stream > 0, true, 'its own proxies in full (live)');
      assert.deepEqual(all.replicas, [
        { id: 'r1', xds: '10.0.0.1:18000', alive: true, leader: true, proxies: 1, self: true },
        { id: 'r2', xds: '10.0.0.2:18000', alive: true, leader: false, proxies: 1, self: false },
        { id: 'r3', xds: '10.0.0.3:18000', alive: false, leader: false, proxies: 0, self: false },
      ]);
      assert.equal(all.error, undefined);
    } finally {
      await app.close();
    }
  });

  test("when Consul cannot be read: 200 with this replica's own proxies and an error", async () => {
    const app = admin(registryOf(proxyStatus({ id: 'edge-1', role: 'gateway', name: 'edge' })), {
      self: 'r2',
      list: async () => {
        throw new Error('Consul KV list of mesh/replicas/ failed: connect ECONNREFUSED 127.0.0.1:8500');
      },
    });
    try {
      const res = await app.inject('/api/proxies?scope=all');
      assert.equal(res.statusCode, 200);
      const body = res.json();
      assert.deepEqual(
        body.proxies.map((p: { id: string; replica: string }) => [p.id, p.replica]),
        [['edge-1', 'r2']],
      );
      assert.deepEqual(body.replicas, []);
      assert.equal(body.scope, 'all');
      assert.equal(
        body.error,
        "only this replica's proxies: the other replicas cannot be read from Consul (Consul KV list of mesh/replicas/ failed: connect ECONNREFUSED 127.0.0.1:8500)",
      );
    } finally {
      await app.close();
    }
  });
});

// `signalbox status` with a fixed input: the file-state table is byte for byte what it was before
// replicas existed (this text is what the previous renderStatus printed for it).
const NOW = STATUS_NOW;
const FIXTURE = [...STATUS_PROXIES];
const FILE_STATE_TABLE =
  'PROXY     ROLE            XDS    CDS        EDS  LDS       RDS        SDS  STATUS   CERT EXPIRES\n' +
  'public-a  gateway/public  sotw   aaaaaaaa   -    bbbbbbbb  -          -    SYNCED   5h30m\n' +
  'orders-1  sidecar/orders  delta  dddddddd*  -    -         none*      -    PENDING  2d2h\n' +
  'lab-1     gateway/lab     sotw   -          -    -         11111111!  -    NACKED   -\n' +
  '\n' +
  '3 proxies: 1 synced, 1 pending, 1 NACKed   (versions: ACKed; * newer sent, not ACKed yet; ! newest NACKed)\n' +
  '\n' +
  'lab-1: route ffffffff NACKED (from policies/lab.yaml)\n' +
  "  regex '[a-z]{300}' RE2 program size\n";

describe('signalbox status with and without replicas', () => {
  const REPLICAS: ReplicasJson = {
    self: 'r2',
    leader: 'r1',
    replicas: [
      { id: 'r1', alive: true, leader: true, proxies: 2 },
      { id: 'r2', alive: true, leader: false, proxies: 1 },
      { id: 'r3', alive: false, leader: false, proxies: 0 },
    ],
  };
  const onReplicas = FIXTURE.map((p, i) => ({ ...p, replica: ['r1', 'r2', 'r1'][i] }));

  test('file state: byte for byte the table it always printed', () => {
    assert.equal(renderStatus(FIXTURE, NOW), FILE_STATE_TABLE);
    assert.equal(renderStatus(onReplicas, NOW), FILE_STATE_TABLE, 'a stray replica field changes nothing without the replicas');
  });

  test('--state consul: a REPLICA column, the replicas named, and the NACK says where', () => {
    const out = renderStatus(onReplicas, NOW, REPLICAS);
    assert.equal(
      out,
      'PROXY     ROLE            REPLICA  XDS    CDS        EDS  LDS       RDS        SDS  STATUS   CERT EXPIRES\n' +
        'public-a  gateway/public  r1       sotw   aaaaaaaa   -    bbbbbbbb  -          -    SYNCED   5h30m\n' +
        'orders-1  sidecar/orders  r2       delta  dddddddd*  -    -         none*      -    PENDING  2d2h\n' +
        'lab-1     gateway/lab     r1       sotw   -          -    -         11111111!  -    NACKED   -\n' +
        '\n' +
        'replicas: r1 leader: 2 proxies, r2 (asked): 1 proxy, r3 DOWN: 0 proxies\n' +
        '\n' +
        '3 proxies: 1 synced, 1 pending, 1 NACKed   (versions: ACKed; * newer sent, not ACKed yet; ! newest NACKed)\n' +
        '\n' +
        'lab-1 (on r1): route ffffffff NACKED (from policies/lab.yaml)\n' +
        "  regex '[a-z]{300}' RE2 program size\n",
    );
  });

  test('brief entries show ? for versions and say why; an error is a warning line', () => {
    const brief = [{ ...onReplicas[0]!, types: {}, brief: true }];
    const out = renderStatus(brief, NOW, { ...REPLICAS, error: "only this replica's proxies: ..." });
    assert.match(out, /^public-a\s+gateway\/public\s+r1\s+sotw\s+\?\s+\?\s+\?\s+\?\s+\?\s+SYNCED\s+5h30m$/m);
    assert.match(out, /^warning: only this replica's proxies: \.\.\.$/m);
    assert.match(out, /^\? a replica's record in Consul was full: these proxies are listed without versions \(ask that replica\)$/m);
  });
});

describe('signalbox status against an admin API', () => {
  let server: Server;
  let base = '';
  let answer: unknown;
  const paths: string[] = [];
  before(async () => {
    server = createServer((req, res) => {
      paths.push(req.url ?? '');
      res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify(answer));
    });
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    base = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  });
  after(() => new Promise<void>((r) => server.close(() => r())));

  async function run(args: string[]): Promise<{ code: number; out: string; err: string }> {
    let out = '';
    let err = '';
    const code = await status(['--admin', base, ...args], { out: (t) => (out += t), err: (t) => (err += t) });
    return { code, out, err };
  }
  const synced = (p: ProxyJson) => ({ ...p, state: 'SYNCED' as const, types: { cluster: { sentVersion: 'a', ackedVersion: 'a' } }, certificate: undefined });

  test('file state (a real admin API without shared state): the table and --json as before, no REPLICA', async () => {
    const app = admin(registryOf(proxyStatus({ id: 'edge-1', role: 'gateway', name: 'edge' })));
    await app.listen({ host: '127.0.0.1', port: 0 });
    try {
      const port = (app.server.address() as AddressInfo).port;
      let out = '';
      const code = await status(['--admin', `http://127.0.0.1:${port}`], { out: (t) => (out += t), err: () => {} });
      assert.equal(code, 0);
      const proxies = (await app.inject('/api/proxies')).json().proxies as ProxyJson[];
      assert.equal(out, renderStatus(proxies), 'what renderStatus prints without replicas');
      assert.doesNotMatch(out, /REPLICA|replicas:/);
      let json = '';
      await status(['--admin', `http://127.0.0.1:${port}`, '--json'], { out: (t) => (json += t), err: () => {} });
      assert.deepEqual(Object.keys(JSON.parse(json)[0]), ['id', 'role', 'name', 'status', 'types'], 'no replica key (no certificate: no CA here)');
    } finally {
      await app.close();
    }
  });

  test('an answer for all replicas: the REPLICA column, exit 0 when every proxy is synced', async () => {
    answer = {
      scope: 'all',
      self: 'r2',
      leader: 'r1',
      replicas: REPLICA_ROWS,
      proxies: [synced({ ...FIXTURE[0]!, replica: 'r1' }), synced({ ...FIXTURE[1]!, replica: 'r2' })],
    };
    const r = await run([]);
    assert.equal(paths.at(-1), '/api/proxies?scope=all');
    assert.equal(r.code, 0, r.err);
    assert.match(r.out, /^PROXY\s+ROLE\s+REPLICA\s+XDS\s/);
    assert.match(r.out, /^public-a\s+gateway\/public\s+r1\s+sotw\s/m);
    assert.match(r.out, /^orders-1\s+sidecar\/orders\s+r2\s+delta\s/m);
    assert.match(r.out, /^replicas: r1 leader: 1 proxy, r2 \(asked\): 1 proxy$/m);
    const json = JSON.parse((await run(['--json'])).out);
    assert.deepEqual(
      json.map((p: { id: string; replica: string }) => [p.id, p.replica]),
      [
        ['public-a', 'r1'],
        ['orders-1', 'r2'],
      ],
    );
    const sidecars = await run(['--role', 'sidecar']);
    assert.match(sidecars.out, /^orders-1\s/m);
    assert.doesNotMatch(sidecars.out, /^public-a\s/m);
  });

  test('Consul could not be read: the own proxies, the reason on stderr, exit 1', async () => {
    answer = {
      scope: 'all',
      self: 'r2',
      replicas: [],
      proxies: [synced({ ...FIXTURE[1]!, replica: 'r2' })],
      error: "only this replica's proxies: the other replicas cannot be read from Consul (x)",
    };
    const r = await run([]);
    assert.equal(r.code, 1);
    assert.match(r.out, /^orders-1\s+sidecar\/orders\s+r2\s/m);
    assert.match(r.out, /^replicas: \(none listed\)$/m);
    assert.equal(r.err, "signalbox status: only this replica's proxies: the other replicas cannot be read from Consul (x)\n");
  });
});

const REPLICA_ROWS = [
  { id: 'r1', xds: '10.0.0.1:18000', alive: true, leader: true, proxies: 1, self: false },
  { id: 'r2', xds: '10.0.0.2:18000', alive: true, leader: false, proxies: 1, self: true },
];

describe('the dashboard with replicas', () => {
  const dashboard = async (replicas?: ReplicaSource) => {
    const app = Fastify();
    const cache = new SnapshotCache();
    registerDashboard(app, {
      pipeline: new Pipeline({ policyDir: '/nonexistent', cache, logger }),
      registry: registryOf(proxyStatus({ id: 'edge-1', role: 'gateway', name: 'edge' })),
      replicas,
    });
    await app.ready();
    return app;
  };

  test('one replica (file state): the panel is off and the proxy rows name no replica', async () => {
    const app = await dashboard();
    try {
      assert.deepEqual((await app.inject('/api/dashboard/replicas')).json(), { state: 'file' });
      const list = (await app.inject('/api/dashboard/proxies')).json();
      assert.equal(list.replica, undefined);
      assert.equal(list.proxies[0].replica, undefined);
      const page = (await app.inject('/')).body;
      assert.match(page, /<section id="replicas" hidden>/, 'the panel starts hidden');
      assert.match(page, /<th class="text" id="proxies-replica" hidden>replica<\/th>/, 'and so does the replica column');
    } finally {
      await app.close();
    }
  });

  test('--state consul: each replica with its address, liveness, leadership and proxy count; every proxy with its replica', async () => {
    const app = await dashboard({ self: 'r1', list: async () => viewOf('r1') });
    try {
      assert.deepEqual((await app.inject('/api/dashboard/replicas')).json(), {
        state: 'consul',
        self: 'r1',
        leader: 'r1',
        replicas: [
          { id: 'r1', xds: '10.0.0.1:18000', alive: true, leader: true, proxies: 1, self: true },
          { id: 'r2', xds: '10.0.0.2:18000', alive: true, leader: false, proxies: 1, self: false },
          { id: 'r3', xds: '10.0.0.3:18000', alive: false, leader: false, proxies: 0, self: false },
        ],
      });
      const list = (await app.inject('/api/dashboard/proxies')).json();
      assert.equal(list.replica, 'r1');
      assert.equal(list.total, 2);
      assert.deepEqual(
        list.proxies.map((p: { id: string; replica: string; state: string }) => [p.id, p.replica, p.state]),
        [
          ['edge-1', 'r1', 'SYNCED'],
          ['orders-1', 'r2', 'SYNCED'],
        ],
      );
      assert.equal(list.proxies[1].publishedAt, 'a2');
      assert.equal((await app.inject('/api/dashboard/proxies?q=orders')).json().total, 1, 'the search covers the other replicas');
    } finally {
      await app.close();
    }
  });

  test("--state consul, Consul unreadable: the panel says so, the list keeps this replica's proxies", async () => {
    const app = await dashboard({
      self: 'r1',
      list: async () => {
        throw new Error('Consul KV list of mesh/replicas/ failed: 503');
      },
    });
    try {
      assert.deepEqual((await app.inject('/api/dashboard/replicas')).json(), {
        state: 'consul',
        self: 'r1',
        replicas: [],
        error: 'the replicas cannot be read from Consul (Consul KV list of mesh/replicas/ failed: 503)',
      });
      const list = (await app.inject('/api/dashboard/proxies')).json();
      assert.deepEqual(
        list.proxies.map((p: { id: string; replica: string }) => [p.id, p.replica]),
        [['edge-1', 'r1']],
      );
      assert.match(list.replicasError, /cannot be read from Consul/);
    } finally {
      await app.close();
    }
  });
});
