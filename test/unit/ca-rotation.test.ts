// The CA rotation's state machine (src/ca/rotation.ts) against an in-memory Consul KV: which
// phase may follow which, refusals that change nothing, the leader alone making a root, a request
// left half done resumed without a second root, Consul down making the rotation wait, and the
// material each phase hands the replicas (trust bundle, signing root, cross-signed chain).
import assert from 'node:assert/strict';
import { randomBytes, X509Certificate } from 'node:crypto';
import { describe, test } from 'node:test';
import { CertificateAuthority, SHARED_CA_RECORD, sharedCaMaterial } from '../../src/ca/ca.js';
import {
  CaFollower,
  caReportRecord,
  planStep,
  type ReplicaCaReport,
  refusal,
  requestRotation,
  ROTATION_RECORD,
  RotationLeader,
  type RotationRequest,
  rotationOf,
} from '../../src/ca/rotation.js';
import { SharedState, StateKey } from '../../src/state/index.js';
import { consulConnectionFromEnv } from '../../src/sources/consul/config.js';

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** Consul KV as SharedState uses it: get (blocking with an index), list, check-and-set; `down` makes every call fail. */
class FakeKv {
  index = 1;
  down = false;
  readonly data = new Map<string, { value: string; modifyIndex: number; session?: string }>();
  writes = 0;
  private fail(): void {
    if (this.down) throw new Error('Consul read failed: connect ECONNREFUSED');
  }
  async get(key: string, opts: { index?: number; waitMs?: number; signal?: AbortSignal } = {}) {
    this.fail();
    if (opts.index !== undefined && opts.index > 0) {
      const until = Date.now() + Math.min(opts.waitMs ?? 0, 200);
      while (this.index <= opts.index && Date.now() < until && !opts.signal?.aborted) await sleep(5);
      if (opts.signal?.aborted) throw new Error('stopped');
      this.fail();
    }
    const e = this.data.get(key);
    return { entry: e && { ...e }, index: this.index };
  }
  async list(prefix: string) {
    this.fail();
    return [...this.data].filter(([k]) => k.startsWith(prefix)).map(([key, e]) => ({ key, ...e }));
  }
  async cas(key: string, value: string, modifyIndex: number) {
    this.fail();
    const e = this.data.get(key);
    if ((e?.modifyIndex ?? 0) !== modifyIndex) return false;
    this.index++;
    this.writes++;
    this.data.set(key, { value, modifyIndex: this.index, session: e?.session });
    return true;
  }
  close() {}
}

const waitFor = async (what: string, ok: () => boolean | Promise<boolean>, ms = 5_000) => {
  const until = Date.now() + ms;
  while (!(await ok())) {
    if (Date.now() > until) throw new Error(`timed out: ${what}`);
    await sleep(10);
  }
};

async function setup() {
  const kv = new FakeKv();
  const key = StateKey.load(undefined, { SIGNALBOX_STATE_KEY: randomBytes(32).toString('base64') });
  const shared = new SharedState({ conn: consulConnectionFromEnv('127.0.0.1:1', undefined, {}), prefix: 'mesh', key });
  Object.assign(shared, { kv });
  const ca = await CertificateAuthority.open({ dataDir: '/nonexistent', trustDomain: 'signalbox.local', shared });
  // One live replica, r1 (its session holds its info key).
  kv.data.set('mesh/replicas/r1/info', { value: '{"id":"r1"}', modifyIndex: ++kv.index, session: 's1' });
  const logs: string[] = [];
  const logger = {
    info: (_o: object, m: string) => logs.push(m),
    warn: (o: object, m: string) => logs.push(`${m} ${JSON.stringify(o)}`),
    error: (o: object, m: string) => logs.push(`${m} ${JSON.stringify(o)}`),
  };
  return { kv, shared, ca, logs, logger };
}

const report = (shared: SharedState, r: Partial<ReplicaCaReport> & Pick<ReplicaCaReport, 'phase'>, id = 'r1') =>
  shared.update(caReportRecord(id), () => ({ signing: '', trusted: [], certificates: 0, oldCertificates: 0, serverOld: false, pendingProxies: 0, ...r }));

const requestOf = async (shared: SharedState) => (await shared.read(ROTATION_RECORD))?.data as RotationRequest | undefined;
const caOf = async (shared: SharedState) => (await shared.read(SHARED_CA_RECORD))!.data;
const rootsIn = (pem: string) =>
  [...pem.matchAll(/-----BEGIN CERTIFICATE-----[\s\S]*?-----END CERTIFICATE-----/g)].map((m) => new X509Certificate(m[0]).subject.replace(/\n/g, ', '));

describe('CA rotation: which phase may follow which', () => {
  const ca = { certificate: 'x', privateKey: 'y' };
  const started = { ...ca, rotation: { id: 'R', phase: 'started' } };
  const switched = { ...ca, rotation: { id: 'R', phase: 'switched' } };
  test('start, then switch, then finish; anything else is refused with the way forward', () => {
    assert.equal(refusal(ca, undefined, 'start'), undefined);
    assert.match(refusal(ca, undefined, 'switch')!, /no rotation is running: begin one with --phase start/);
    assert.match(refusal(ca, undefined, 'finish')!, /no rotation is running/);
    assert.match(refusal(started, undefined, 'start')!, /rotation R is already running \(phase started\): go on with --phase switch/);
    assert.equal(refusal(started, undefined, 'switch'), undefined);
    assert.match(refusal(started, undefined, 'finish')!, /does not sign yet: go on with --phase switch first/);
    assert.match(refusal(switched, undefined, 'start')!, /already running \(phase switched\): go on with --phase finish/);
    assert.match(refusal(switched, undefined, 'switch')!, /already switched/);
    assert.equal(refusal(switched, undefined, 'finish'), undefined);
    assert.match(refusal(undefined, undefined, 'start')!, /no mesh CA in the shared state yet/);
  });
  test('a request still waiting for the leader refuses the next', () => {
    const pending: RotationRequest = { id: 'R', phase: 'start', force: false, nonce: 'n', requestedAt: 't', status: 'pending' };
    assert.match(refusal(ca, pending, 'start')!, /a request is already waiting for the leader \(phase start of rotation R/);
    assert.equal(refusal(ca, { ...pending, status: 'refused' }, 'start'), undefined);
  });
  test('the leader treats a step already taken as done (resumed after a crash), and gates switch and finish on the replicas', () => {
    const req = (phase: RotationRequest['phase'], force = false): RotationRequest => ({
      id: 'R',
      phase,
      force,
      nonce: 'n',
      requestedAt: 't',
      status: 'pending',
    });
    const ok = (r: Partial<ReplicaCaReport>) =>
      new Map([
        ['r1', { signing: '', trusted: [], certificates: 1, oldCertificates: 0, serverOld: false, pendingProxies: 0, rotation: 'R', ...r } as ReplicaCaReport],
      ]);
    assert.deepEqual(planStep(ca, req('start'), new Map()), { kind: 'start' });
    assert.deepEqual(planStep(started, req('start'), new Map()), { kind: 'done' });
    assert.deepEqual(planStep(switched, req('switch'), new Map()), { kind: 'done' });
    assert.deepEqual(planStep({ ...ca, lastRotation: { id: 'R' } }, req('finish'), new Map()), { kind: 'done' });
    assert.deepEqual(planStep(started, { ...req('start'), status: 'done' }, new Map()), { kind: 'none' });
    assert.match(
      (planStep(started, req('switch'), ok({ phase: 'none', rotation: undefined })) as { reason: string }).reason,
      /r1 \(does not trust the next root yet\)/,
    );
    assert.match(
      (planStep(started, req('switch'), ok({ phase: 'started', pendingProxies: 2 })) as { reason: string }).reason,
      /r1 \(2 proxy\(ies\) have not ACKed/,
    );
    assert.match((planStep(started, req('switch'), new Map([['r2', undefined]])) as { reason: string }).reason, /r2 \(does not trust/);
    assert.deepEqual(planStep(started, req('switch'), ok({ phase: 'started' })), { kind: 'switch' });
    assert.deepEqual(planStep(started, req('switch', true), new Map([['r2', undefined]])), { kind: 'switch' });
    assert.match(
      (planStep(switched, req('finish'), ok({ phase: 'switched', oldCertificates: 3 })) as { reason: string }).reason,
      /r1 \(3 live workload certificate\(s\) still from the previous root\)/,
    );
    assert.match(
      (planStep(switched, req('finish'), ok({ phase: 'switched', serverOld: true })) as { reason: string }).reason,
      /and its xDS server certificate/,
    );
    assert.deepEqual(planStep(switched, req('finish'), ok({ phase: 'switched' })), { kind: 'finish' });
    assert.deepEqual(planStep(switched, req('finish', true), ok({ phase: 'switched', oldCertificates: 3 })), { kind: 'finish' });
  });
});

describe('CA rotation through the shared state (in-memory Consul KV)', () => {
  test('only the leader makes the next root; every phase hands the replicas the right roots; finish is refused while old certificates live', async () => {
    const { shared, ca, kv, logger } = await setup();
    const oldRoot = ca.certificate.subject;
    let leading = false;
    const leader = new RotationLeader(shared, { isLeader: () => leading, trustDomain: 'signalbox.local', logger });
    leader.start();
    try {
      const req = await requestRotation(shared, 'start', false);
      await assert.rejects(requestRotation(shared, 'start', false), /cannot start a CA rotation: a request is already waiting for the leader/);
      // A follower (not leading) never carries it out.
      leader.kick();
      await sleep(300);
      assert.equal((await requestOf(shared))?.status, 'pending');
      assert.equal(rotationOf(await caOf(shared)).phase, 'none', 'no root made by a follower');
      leading = true;
      leader.kick();
      await waitFor('start done', async () => (await requestOf(shared))?.status === 'done');
      const started = await caOf(shared);
      assert.deepEqual(rotationOf(started), { phase: 'started', id: req.id, last: undefined });
      // The next root's key is sealed in KV, never in clear.
      const raw = kv.data.get('mesh/ca')!.value;
      assert.ok(!raw.includes('PRIVATE KEY'), 'keys sealed');
      assert.deepEqual(JSON.parse(raw).sealed, ['nextPrivateKey', 'privateKey']);
      const m1 = await sharedCaMaterial(shared, started);
      assert.equal(m1.certificate.subject, oldRoot, 'the current root still signs');
      assert.equal(rootsIn(m1.trustBundlePem).length, 2, 'both roots trusted');
      assert.equal(m1.chainPem, '');
      const nextRoot = rootsIn(m1.trustBundlePem)[1]!;
      assert.match(nextRoot, new RegExp(`CN=Signalbox mesh root ${req.id}`));

      // Switch: refused until the live replica (r1) says it pushed the next root, and the refusal changes nothing.
      const sw = await requestRotation(shared, 'switch', false);
      assert.equal(sw.id, req.id);
      await waitFor('switch refused', async () => (await requestOf(shared))?.status === 'refused');
      assert.match(
        (await requestOf(shared))!.reason!,
        /not every live replica has pushed the next root to its proxies: r1 \(does not trust the next root yet\)/,
      );
      assert.equal(rotationOf(await caOf(shared)).phase, 'started');
      await report(shared, { rotation: req.id, phase: 'started' });
      await requestRotation(shared, 'switch', false);
      await waitFor('switch done', async () => (await requestOf(shared))?.status === 'done');
      const switched = await caOf(shared);
      const m2 = await sharedCaMaterial(shared, switched);
      assert.equal(m2.certificate.subject, nextRoot, 'the next root signs');
      assert.deepEqual(rootsIn(m2.trustBundlePem), [nextRoot, oldRoot], 'the previous root stays trusted');
      // A leaf of the new root verifies through the cross-signed root up to the old root alone.
      ca.adopt(m2);
      const leaf = new X509Certificate((await ca.issue('spiffe://signalbox.local/service/web', 60_000)).certificatePem);
      const cross = new X509Certificate(m2.chainPem);
      const old = new X509Certificate(m1.certificate.toString('pem'));
      assert.ok(leaf.checkIssued(cross) && leaf.verify(cross.publicKey), 'leaf -> cross');
      assert.ok(cross.checkIssued(old) && cross.verify(old.publicKey), 'cross -> previous root');
      assert.ok(cross.subject.includes(req.id) && !cross.issuer.includes(req.id), 'the cross-signed root names the next root, issued by the previous');

      // Finish: refused while r1 counts a certificate of the previous root; then done; forced works too.
      await report(shared, { rotation: req.id, phase: 'switched', oldCertificates: 1 });
      await requestRotation(shared, 'finish', false);
      await waitFor('finish refused', async () => (await requestOf(shared))?.status === 'refused');
      assert.match((await requestOf(shared))!.reason!, /r1 \(1 live workload certificate\(s\) still from the previous root\); wait for the re-issue/);
      await report(shared, { rotation: req.id, phase: 'switched', oldCertificates: 0 });
      await requestRotation(shared, 'finish', false);
      await waitFor('finish done', async () => (await requestOf(shared))?.status === 'done');
      const finished = await caOf(shared);
      assert.deepEqual(rotationOf(finished), { phase: 'none', last: req.id });
      const m3 = await sharedCaMaterial(shared, finished);
      assert.deepEqual(rootsIn(m3.trustBundlePem), [nextRoot], 'one root left: the new one');
      assert.equal(m3.chainPem, m2.chainPem, 'the cross-signed root still goes with server certificates (old bootstraps)');
      assert.deepEqual(JSON.parse(kv.data.get('mesh/ca')!.value).sealed, ['privateKey']);
    } finally {
      leader.stop();
      shared.close();
    }
  });

  test('a new leader resumes a request left half done without making a second root; Consul down makes it wait', async () => {
    const { shared, kv, logger } = await setup();
    const leading = true;
    const leader = new RotationLeader(shared, { isLeader: () => leading, trustDomain: 'signalbox.local', logger });
    leader.start();
    try {
      const req = await requestRotation(shared, 'start', false);
      await waitFor('start done', async () => (await requestOf(shared))?.status === 'done');
      const next = ((await caOf(shared)).rotation as { nextCertificate: string }).nextCertificate;
      // The previous leader wrote `ca` and died before marking the request: it is pending again.
      await shared.update(ROTATION_RECORD, (cur) => ({ ...cur, status: 'pending' }));
      const writes = kv.writes;
      const other = new RotationLeader(shared, { isLeader: () => true, trustDomain: 'signalbox.local', logger });
      other.kick();
      await waitFor('resumed', async () => (await requestOf(shared))?.status === 'done');
      other.stop();
      assert.equal(((await caOf(shared)).rotation as { nextCertificate: string }).nextCertificate, next, 'the same next root');
      assert.equal(kv.writes, writes + 1, 'only the request was written');
      // Consul down: the switch waits and happens once Consul answers again.
      await report(shared, { rotation: req.id, phase: 'started' });
      await requestRotation(shared, 'switch', false);
      kv.down = true;
      leader.kick();
      await sleep(500);
      kv.down = false;
      assert.equal(rotationOf(await caOf(shared)).phase, 'started');
      await waitFor('switch done after Consul came back', async () => (await requestOf(shared))?.status === 'done', 8_000);
      assert.equal(rotationOf(await caOf(shared)).phase, 'switched');
    } finally {
      leader.stop();
      shared.close();
    }
  });

  test('a replica adopts each phase, and keeps its CA when the record is damaged', async () => {
    const { shared, ca, logger, logs } = await setup();
    const changes: string[] = [];
    // onChange (pushing to the proxies) is held until released: meanwhile no report says "started".
    let release = () => {};
    let held = false;
    const follower = new CaFollower(shared, ca, {
      replicaId: 'r1',
      logger,
      onChange: async (what) => {
        changes.push(JSON.stringify(what));
        held = true;
        await new Promise<void>((r) => {
          release = r;
        });
        held = false;
      },
      counts: () => ({ certificates: 0, oldCertificates: 0, serverOld: false, pendingProxies: 0 }),
    });
    follower.start();
    const leader = new RotationLeader(shared, { isLeader: () => true, trustDomain: 'signalbox.local', logger });
    leader.start();
    try {
      const before = ca.certificate.subject;
      const req = await requestRotation(shared, 'start', false);
      await waitFor('bundle of two roots', () => rootsIn(ca.trustBundlePem).length === 2);
      assert.equal(ca.certificate.subject, before);
      await waitFor('onChange running', () => held);
      await sleep(1_300); // more than the report's period
      assert.equal(
        ((await shared.read(caReportRecord('r1')))?.data as ReplicaCaReport | undefined)?.phase,
        'none',
        'no report of the phase before it was pushed',
      );
      release();
      await waitFor('report', async () => ((await shared.read(caReportRecord('r1')))?.data as ReplicaCaReport | undefined)?.phase === 'started');
      await requestRotation(shared, 'switch', false);
      await waitFor('onChange running (switch)', () => held);
      release();
      await waitFor('new root signs', () => ca.certificate.subject !== before);
      assert.match(ca.certificate.subject, new RegExp(req.id));
      assert.deepEqual(JSON.parse(changes.at(-1)!), { signing: true, bundle: true, chain: true });
      // A damaged record: logged, the CA in use kept.
      const signing = ca.certificate.subject;
      await shared.update(
        SHARED_CA_RECORD,
        (cur) => ({ ...cur, privateKey: (cur!.nextPrivateKey as string | undefined) ?? 'nope', certificate: cur!.certificate }),
        ['privateKey'],
      );
      await waitFor('logged', () => logs.some((l) => /cannot apply the shared mesh CA; keeping the CA in use/.test(l)));
      assert.equal(ca.certificate.subject, signing);
    } finally {
      leader.stop();
      follower.stop();
      shared.close();
    }
  });
});
