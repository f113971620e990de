// `--state consul` at the level of its parts, on a REAL Consul agent: two replicas' worth of
// shared state agree on one CA and one token key pair made once, Consul holds no usable private
// key, a wrong state key is an error that changes nothing, a token issued through one replica is
// valid on another, and a revocation written through one reaches the other's verifier by a
// blocking query within a second or two.
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { mkdtempSync, readFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { CertificateAuthority } from '../../src/ca/ca.js';
import { ServerCertificate } from '../../src/ca/server-tls.js';
import { issueToken, issueTokenCredentials, pruneExpiredRevocations, REVOCATION_PRUNE_MARGIN_MS, revokeToken, TokenVerifier } from '../../src/ca/tokens.js';
import { Leadership } from '../../src/state/leader.js';
import { ReplicaDirectory, type PublishedProxy } from '../../src/state/replicas.js';
import { ConsulKv } from '../../src/state/consul-kv.js';
import { openSharedState, type SharedState } from '../../src/state/index.js';
import { createLogger } from '../../src/observability/logger.js';
import { startConsul, type ConsulAgent } from '../helpers/consul.js';

const TD = 'signalbox.local';
const logger = createLogger({ level: 'silent' });

describe('shared state in a real Consul', () => {
  let consul: ConsulAgent;
  const key = randomBytes(32).toString('base64');
  const opened: SharedState[] = [];
  const open = async (prefix: string, k = key) => {
    const s = await openSharedState({ consulAddr: consul.httpAddr, prefix, env: { SIGNALBOX_STATE_KEY: k } });
    opened.push(s);
    return s;
  };
  const dataDir = mkdtempSync(path.join(os.tmpdir(), 'shared-state-'));

  before(async () => {
    consul = await startConsul();
  });
  after(async () => {
    for (const s of opened) s.close();
    await consul?.stop();
  });

  test('replicas starting together make one CA and one token key pair, and Consul holds no usable private key', async () => {
    const [a, b, c] = [await open('mesh1'), await open('mesh1'), await open('mesh1')];
    const cas = await Promise.all([a, b, c].map((shared) => CertificateAuthority.open({ dataDir, trustDomain: TD, shared })));
    assert.equal(new Set(cas.map((ca) => ca.certificatePem)).size, 1, 'one root for all');
    assert.deepEqual(cas.map((ca) => ca.source).sort(), ['generated', 'shared', 'shared'], 'made by exactly one of them');
    // Certificates issued by one replica chain to the root the others hand out.
    const leaf = await cas[1]!.issue('spiffe://signalbox.local/ns/default/sa/web', 60_000);
    const { X509Certificate } = await import('node:crypto');
    assert.ok(new X509Certificate(leaf.certificatePem).verify(new X509Certificate(cas[2]!.certificatePem).publicKey));

    const v1 = await TokenVerifier.open(a, { logger });
    const v2 = await TokenVerifier.open(b, { logger });
    assert.equal(v1.caPem, v2.caPem, 'one tokens CA');
    v1.close();
    v2.close();

    const raw = new ConsulKv(a.kv.conn);
    const all = await raw.list('mesh1/');
    raw.close();
    assert.deepEqual(all.map((e) => e.key).sort(), ['mesh1/ca', 'mesh1/state-key', 'mesh1/tokens/signing']);
    for (const e of all) {
      assert.ok(!/PRIVATE KEY|MIG[A-Za-z0-9+/]{20}/.test(e.value), `${e.key} holds no plain private key`);
      assert.match(e.value, /sb-sealed-v1:/, `${e.key} holds a sealed key`);
    }
  });

  test('a wrong state key is a clear error and never a new CA', async () => {
    const good = await open('mesh2');
    const ca = await CertificateAuthority.open({ dataDir, trustDomain: TD, shared: good });
    const before = await good.kv.get(good.keyOf('ca'));
    // The replica with the wrong key stops as it connects, before it reads or makes anything.
    await assert.rejects(
      open('mesh2', randomBytes(32).toString('hex')),
      (e: Error) =>
        /mesh2\/state-key#check was encrypted with another state key \(key id [0-9a-f]{16}; the key given has id [0-9a-f]{16}\)/.test(e.message) &&
        !/BEGIN/.test(e.message),
    );
    const list = await good.kv.list('mesh2/');
    assert.deepEqual(list.map((e) => e.key).sort(), ['mesh2/ca', 'mesh2/state-key'], 'no token key pair made under the wrong key');
    const afterRead = await good.kv.get(good.keyOf('ca'));
    assert.equal(afterRead.entry!.modifyIndex, before.entry!.modifyIndex, 'the record is untouched');
    assert.equal((await CertificateAuthority.open({ dataDir, trustDomain: TD, shared: good })).certificatePem, ca.certificatePem);
  });

  test('a token issued through one replica is valid on another; a revocation through either reaches the other within 2 s', async () => {
    const [a, b] = [await open('mesh3'), await open('mesh3')];
    const out = mkdtempSync(path.join(os.tmpdir(), 'shared-token-'));
    const cred = await issueTokenCredentials(a, 'service/web', '1h', out);
    const der = new (await import('node:crypto')).X509Certificate(readFileSync(cred.certFile)).raw;
    const onB = await TokenVerifier.open(b, { logger });
    try {
      const ok = await onB.verifyCertificate(der);
      assert.ok(ok.ok && ok.claims.id === cred.id && ok.claims.subject === 'service/web', JSON.stringify(ok));
      const seen = new Promise<number>((resolve) => onB.once('revoked', (ids) => ids.has(cred.id) && resolve(Date.now())));
      const t0 = Date.now();
      await revokeToken(a, cred.id);
      const took = (await seen) - t0;
      assert.ok(took < 2_000, `revocation applied on the other replica after ${took} ms`);
      const refused = await onB.verifyCertificate(der);
      assert.ok(!refused.ok && /revoked/.test(refused.reason));
      await revokeToken(b, cred.id); // twice: no change, no error
      const rec = await a.read('tokens/revoked');
      assert.deepEqual(Object.keys(rec!.data.revoked as object), [cred.id]);
    } finally {
      onB.close();
    }
  });

  test('a damaged revocation record fails closed on every replica; a fixed one opens again', async () => {
    const a = await open('mesh4');
    const out = mkdtempSync(path.join(os.tmpdir(), 'shared-token-'));
    const cred = await issueTokenCredentials(a, 'gateway/edge', '1h', out);
    const der = new (await import('node:crypto')).X509Certificate(readFileSync(cred.certFile)).raw;
    const v = await TokenVerifier.open(a, { logger });
    try {
      assert.ok((await v.verifyCertificate(der)).ok);
      const bad = new Promise<string>((r) => v.once('unreadable', r));
      await a.kv.cas(a.keyOf('tokens/revoked'), '{"v":1,"data":{"revoked":[1]},"sealed":[]}', 0);
      assert.match(await bad, /mesh4\/tokens\/revoked is unreadable/);
      assert.ok(!(await v.verifyCertificate(der)).ok, 'refused while the list is damaged');
      await assert.rejects(revokeToken(a, cred.id), /unreadable.*fix it before revoking/);
      const cur = await a.kv.get(a.keyOf('tokens/revoked'));
      await a.kv.cas(a.keyOf('tokens/revoked'), '{"v":1,"data":{"revoked":{}},"sealed":[]}', cur.entry!.modifyIndex);
      const t0 = Date.now();
      while (v.revocationProblem && Date.now() - t0 < 3_000) await new Promise((r) => setTimeout(r, 20));
      assert.ok((await v.verifyCertificate(der)).ok, 'accepted again once fixed');
    } finally {
      v.close();
    }
  });

  test("a replica's xDS server certificate is kept sealed in Consul and reused by its next start", async () => {
    const s = await open('mesh5');
    const ca = await CertificateAuthority.open({ dataDir, trustDomain: TD, shared: s });
    const stored = {
      load: async () => {
        const r = await s.read('replicas/r1/xds-server');
        return r && { certificatePem: r.data.certificate as string, privateKeyPem: r.data.privateKey as string };
      },
      save: async (c: { certificatePem: string; privateKeyPem: string }) =>
        void (await s.update('replicas/r1/xds-server', () => ({ certificate: c.certificatePem, privateKey: c.privateKeyPem }), ['privateKey'])),
    };
    const first = await ServerCertificate.start({ ca, trustDomain: TD, server: 'xds', bindAddress: '127.0.0.1', sans: [], stored, logger });
    const second = await ServerCertificate.start({ ca, trustDomain: TD, server: 'xds', bindAddress: '127.0.0.1', sans: [], stored, logger });
    const other = await ServerCertificate.start({ ca, trustDomain: TD, server: 'xds', bindAddress: '127.0.0.1', sans: ['xds.example'], stored, logger });
    first.stop();
    second.stop();
    other.stop();
    assert.equal(second.certPem, first.certPem, 'the same certificate after a restart');
    assert.notEqual(other.certPem, first.certPem, 'other names: a new certificate');
    const raw = await s.kv.get(s.keyOf('replicas/r1/xds-server'));
    assert.ok(!/PRIVATE KEY/.test(raw.entry!.value));
  });

  test('one leader at a time; when it stops, a follower leads within a second or two', async () => {
    const states = [await open('mesh6'), await open('mesh6'), await open('mesh6')];
    const ls = states.map((s, i) => new Leadership(s, `r${i + 1}`, undefined, { waitMs: 2_000 }));
    try {
      for (const l of ls) await l.start();
      assert.deepEqual(
        ls.map((l) => l.isLeader),
        [true, false, false],
        'the first to start leads',
      );
      assert.equal(await ls[2]!.leader(), 'r1');
      const changed = new Promise<number>((r) => {
        for (const l of ls.slice(1)) l.on('change', (leading) => leading && r(Date.now()));
      });
      const t0 = Date.now();
      await ls[0]!.stop();
      const took = (await changed) - t0;
      assert.ok(took < 2_000, `a new leader after ${took} ms`);
      assert.equal(ls.filter((l) => l.isLeader).length, 1, 'exactly one leader');
      const now = await ls[1]!.leader();
      assert.ok(now === 'r2' || now === 'r3', `leader: ${now}`);
    } finally {
      for (const l of ls) await l.stop();
    }
  });

  test('a follower waits for the leader to make the CA, and never makes one itself', async () => {
    const [lead, follow] = [await open('mesh7'), await open('mesh7')];
    const l1 = new Leadership(lead, 'r1');
    const l2 = new Leadership(follow, 'r2');
    try {
      await l1.start();
      await l2.start();
      lead.leadership = l1;
      follow.leadership = l2;
      assert.ok(l1.isLeader && !l2.isLeader);
      let followerDone = false;
      const waiting = CertificateAuthority.open({ dataDir, trustDomain: TD, shared: follow }).then((ca) => {
        followerDone = true;
        return ca;
      });
      await new Promise((r) => setTimeout(r, 1_500));
      assert.equal(followerDone, false, 'the follower waits');
      assert.equal((await lead.kv.get(lead.keyOf('ca'))).entry, undefined, 'and made nothing');
      const made = await CertificateAuthority.open({ dataDir, trustDomain: TD, shared: lead });
      const got = await waiting;
      assert.equal(made.source, 'generated');
      assert.equal(got.source, 'shared');
      assert.equal(got.certificatePem, made.certificatePem);
      // A follower left waiting by a leader that never makes it gives up with a message.
      follow.followerWaitMs = 1_000;
      await assert.rejects(
        TokenVerifier.open(follow, { logger }),
        /mesh7\/tokens\/signing is still missing in Consul KV after 1 s and this replica does not lead/,
      );
    } finally {
      await l1.stop();
      await l2.stop();
    }
  });

  test("the leader's pruning drops revocations of expired tokens only", async () => {
    const s = await open('mesh8');
    const out = mkdtempSync(path.join(os.tmpdir(), 'shared-token-'));
    const short = await issueTokenCredentials(s, 'service/web', '1s', out);
    const long = await issueToken(s, 'service/web', '24h');
    await revokeToken(s, short.id);
    await revokeToken(s, long.id);
    // A revocation whose token's expiry is unknown (no note) is kept.
    const unknown = '00000000-0000-4000-8000-000000000000';
    await revokeToken(s, unknown);
    assert.deepEqual(await pruneExpiredRevocations(s), [], 'nothing expired past the margin yet');
    const pruned = await pruneExpiredRevocations(s, Date.now() + REVOCATION_PRUNE_MARGIN_MS + 5_000);
    assert.deepEqual(pruned, [short.id]);
    const rec = await s.read('tokens/revoked');
    assert.deepEqual(Object.keys(rec!.data.revoked as object).sort(), [long.id, unknown].sort());
    assert.deepEqual(Object.keys(rec!.data.expires as object), [long.id]);
    const notes = (await s.kv.list('mesh8/tokens/issued/')).map((e) => e.key);
    assert.deepEqual(notes, [`mesh8/tokens/issued/${long.id}`], "the expired token's note is gone");
  });
  test("a replica holding 5,000 proxies publishes them all in parts under 512 KiB; another replica's reader gets all 5,000", async () => {
    const [s1, s2] = [await open('mesh9'), await open('mesh9')];
    const l1 = new Leadership(s1, 'r1');
    const l2 = new Leadership(s2, 'r2');
    await l1.start();
    await l2.start();
    // Synthetic entries as serve publishes them, each with versions and a certificate of its own (they compress badly).
    const hex = (x: string) => createHash('sha256').update(x).digest('hex');
    const make = (n: number, seed: string): PublishedProxy[] =>
      Array.from({ length: n }, (_, i) => {
        const v = (t: string) => hex(`${seed}/${i}/${t}`).slice(0, 16);
        const types = Object.fromEntries(['cluster', 'endpoint', 'listener', 'route', 'secret'].map((t) => [t, { sentVersion: v(t), ackedVersion: v(t) }]));
        const name = `svc${i % 50}`;
        return {
          id: `${name}-${String(i).padStart(5, '0')}-${v('id').slice(0, 8)}`,
          role: 'sidecar',
          name,
          group: `sidecar/${name}/1/2/3`,
          protocol: 'delta',
          state: 'SYNCED',
          connectedAt: new Date(Date.UTC(2026, 0, 1) + i * 1000).toISOString(),
          types,
          certificate: { identity: `spiffe://signalbox.local/service/${name}`, notAfter: new Date(Date.UTC(2026, 0, 2) + i * 1000).toISOString() },
        } as PublishedProxy;
      });
    let list = make(5_000, 'one');
    const d1 = new ReplicaDirectory(s1, l1, { id: 'r1', xds: '10.0.0.1:18000', startedAt: 't1' }, () => list, logger);
    const d2 = new ReplicaDirectory(s2, l2, { id: 'r2', xds: '10.0.0.2:18000', startedAt: 't2' }, () => [], logger);
    try {
      await d1.start();
      await d2.start();
      const raw = new ConsulKv(s1.kv.conn);
      const values = await raw.list('mesh9/replicas/r1/');
      raw.close();
      const parts = values.filter((e) => e.key.startsWith('mesh9/replicas/r1/parts/'));
      assert.ok(parts.length > 1, `${parts.length} parts`);
      for (const e of values) assert.ok(Buffer.byteLength(e.value) < 512 * 1024, `${e.key}: ${Buffer.byteLength(e.value)} bytes`);
      const r1 = (await d2.list({ details: true })).replicas.find((r) => r.id === 'r1')!;
      assert.equal(r1.alive, true);
      assert.equal(r1.proxies.length, 5_000);
      assert.deepEqual(r1.details, list, "r2 reads every one of r1's 5,000 entries, in full");
      // A change is published whole, and the previous parts are removed.
      list = make(4_000, 'two');
      await (d1 as unknown as { tick(): Promise<void> }).tick();
      const again = (await d2.list({ details: true })).replicas.find((r) => r.id === 'r1')!;
      assert.deepEqual(again.details, list);
      const digests = new Set((await s1.kv.keys('mesh9/replicas/r1/parts/')).map((k) => k.split('/')[4]));
      assert.equal(digests.size, 1, 'one set of parts left');
    } finally {
      d1.stop();
      d2.stop();
      await l1.stop();
      await l2.stop();
    }
  });
});
