// Rotation of the mesh root with `--state consul`, without a restart. The operator asks for each
// phase (`signalbox ca rotate --phase start|switch|finish`), which records a request in the shared
// state (`ca-rotation`, check-and-set); the leader carries it out, writing the `ca` record (its
// keys sealed) with check-and-set; every replica follows `ca` and applies what it holds:
//
//   start   the leader makes the next root and a certificate of its key signed by the current
//           root (cross-signed); every replica adds the next root to the trust bundle it pushes,
//           still signing with the current one.
//   switch  the next root signs; the previous stays trusted. Every replica re-issues its live
//           workload certificates (spread over a couple of seconds) and its xDS server
//           certificate, sent with the cross-signed root so that a proxy whose bootstrap trusts
//           only the previous root still verifies it.
//   finish  the previous root leaves the trust bundle (the cross-signed root stays with server
//           certificates, for bootstraps not yet rewritten).
//
// The leader refuses a switch until every live replica trusts the next root and its proxies have
// ACKed that bundle, and a finish while any live replica still holds a workload certificate of the
// previous root (unless forced). All of it lives in Consul KV, so a new leader resumes a request
// the previous one left half done: each step checks whether it already happened before doing it.
import { randomBytes } from 'node:crypto';
import { ErrorCode, SignalboxError } from '../errors.js';
import type { RecordData, SharedState, StateLog } from '../state/shared.js';
import { type CertificateAuthority, crossSign, exportKeyPem, importKey, newRoot, SHARED_CA_RECORD, sharedCaMaterial } from './ca.js';
import { x509 } from './x509.js';

/** The operator's request, written by `signalbox ca rotate`, carried out by the leader. */
export const ROTATION_RECORD = 'ca-rotation';
/** Each replica's view of the CA: `replicas/ID/ca`. */
export const caReportRecord = (replica: string) => `replicas/${replica}/ca`;

export const PHASES = ['start', 'switch', 'finish'] as const;
export type Phase = (typeof PHASES)[number];

export interface RotationRequest {
  /** The rotation it belongs to (made by `start`). */
  id: string;
  phase: Phase;
  force: boolean;
  /** Tells two requests of the same phase apart (a refused one asked again). */
  nonce: string;
  requestedAt: string;
  status: 'pending' | 'done' | 'refused';
  reason?: string;
  doneAt?: string;
}

/** What a replica publishes about the CA it applies (every second when it changed). */
export interface ReplicaCaReport {
  rotation?: string;
  phase: 'none' | 'started' | 'switched';
  /** The subject of the root it signs with. */
  signing: string;
  /** The subjects of the roots in the trust bundle it pushes. */
  trusted: string[];
  /** Live workload certificates, and how many of them another root than `signing` signed. */
  certificates: number;
  oldCertificates: number;
  /** Its xDS server certificate was signed by another root than `signing`. */
  serverOld: boolean;
  /** Proxies that have not yet ACKed the secrets last sent to them (the trust bundle among them). */
  pendingProxies: number;
}

export interface RotationState {
  phase: 'none' | 'started' | 'switched';
  id?: string;
  /** The last rotation finished. */
  last?: string;
}

/** Where the `ca` record says a rotation is. */
export function rotationOf(ca: RecordData | undefined): RotationState {
  const r = ca?.rotation as { id?: unknown; phase?: unknown } | undefined;
  const last = (ca?.lastRotation as { id?: unknown } | undefined)?.id;
  const out: RotationState = { phase: 'none', last: typeof last === 'string' ? last : undefined };
  if (r && typeof r.id === 'string' && (r.phase === 'started' || r.phase === 'switched')) {
    out.phase = r.phase;
    out.id = r.id;
  }
  return out;
}

const NEXT_STEP: Record<RotationState['phase'], string> = {
  none: 'begin one with --phase start',
  started: 'go on with --phase switch',
  switched: 'go on with --phase finish',
};

/** Why `phase` may not be asked for now, or undefined. Pure: the CLI and the leader both check. */
export function refusal(ca: RecordData | undefined, current: RotationRequest | undefined, phase: Phase): string | undefined {
  if (!ca) return 'there is no mesh CA in the shared state yet: start a replica first (its leader makes it)';
  if (current?.status === 'pending')
    return `a request is already waiting for the leader (phase ${current.phase} of rotation ${current.id}, asked ${current.requestedAt}): see signalbox ca status, and ask again once it is done or refused`;
  const r = rotationOf(ca);
  if (phase === 'start' && r.phase !== 'none') return `rotation ${r.id} is already running (phase ${r.phase}): ${NEXT_STEP[r.phase]}`;
  if (phase === 'switch' && r.phase !== 'started')
    return r.phase === 'none' ? `no rotation is running: ${NEXT_STEP.none}` : `rotation ${r.id} has already switched: ${NEXT_STEP.switched}`;
  if (phase === 'finish' && r.phase !== 'switched')
    return r.phase === 'none' ? `no rotation is running: ${NEXT_STEP.none}` : `the next root of rotation ${r.id} does not sign yet: ${NEXT_STEP.started} first`;
  return undefined;
}

function newRotationId(now: Date): string {
  return `${now
    .toISOString()
    .replace(/[-:]/g, '')
    .replace(/\.\d+Z$/, 'Z')}-${randomBytes(2).toString('hex')}`;
}

/**
 * Records the operator's request for `phase` with check-and-set (two operators at once: one wins,
 * the other is refused). Refused with a message, changing nothing, when the phase does not follow.
 */
export async function requestRotation(shared: SharedState, phase: Phase, force: boolean, now = new Date()): Promise<RotationRequest> {
  if (!PHASES.includes(phase)) throw new SignalboxError(ErrorCode.BAD_FLAG, `--phase must be one of ${PHASES.join(', ')}, got "${String(phase).slice(0, 50)}"`);
  const ca = (await shared.read(SHARED_CA_RECORD))?.data;
  let made: RotationRequest | undefined;
  await shared.update(ROTATION_RECORD, (cur) => {
    const why = refusal(ca, cur as RotationRequest | undefined, phase);
    if (why) throw new SignalboxError(ErrorCode.STATE, `cannot ${phase} a CA rotation: ${why}`);
    const r = rotationOf(ca);
    made = {
      id: phase === 'start' ? newRotationId(now) : r.id!,
      phase,
      force,
      nonce: randomBytes(8).toString('hex'),
      requestedAt: now.toISOString(),
      status: 'pending',
    };
    return { ...made };
  });
  return made!;
}

/** Waits until the leader carried out (or refused) request `nonce`; undefined when `timeoutMs` passed first. */
export async function awaitRequest(shared: SharedState, nonce: string, timeoutMs: number): Promise<RotationRequest | undefined> {
  const deadline = Date.now() + timeoutMs;
  let index = 0;
  while (Date.now() < deadline) {
    const r = await shared.kv.get(shared.keyOf(ROTATION_RECORD), { index, waitMs: Math.max(100, Math.min(5_000, deadline - Date.now())) });
    index = r.index;
    const req = (await shared.read(ROTATION_RECORD))?.data as RotationRequest | undefined;
    if (req?.nonce !== nonce) return { ...(req as RotationRequest), status: 'refused', reason: 'another request replaced it' };
    if (req.status !== 'pending') return req;
  }
  return undefined;
}

/** The replicas alive now (their session holds `replicas/ID/info`), sorted. */
export async function aliveReplicas(shared: SharedState): Promise<string[]> {
  const base = `${shared.keyOf('replicas')}/`;
  const out: string[] = [];
  for (const e of await shared.kv.list(base)) {
    const [id, what] = e.key.slice(base.length).split('/');
    if (id && what === 'info' && e.session) out.push(id);
  }
  return out.sort();
}

/** Each replica's report (undefined when it wrote none). */
export async function replicaReports(shared: SharedState, ids: string[]): Promise<Map<string, ReplicaCaReport | undefined>> {
  const out = new Map<string, ReplicaCaReport | undefined>();
  for (const id of ids) out.set(id, (await shared.read(caReportRecord(id)).catch(() => undefined))?.data as ReplicaCaReport | undefined);
  return out;
}

export type Step = { kind: 'none' } | { kind: 'done' } | { kind: 'refuse'; reason: string } | { kind: 'start' | 'switch' | 'finish' };

/**
 * What the leader does about request `req` given the `ca` record and the live replicas' reports
 * (pure). A step that already happened (a leader stopped between writing `ca` and marking the
 * request) is `done`, never done twice.
 */
export function planStep(ca: RecordData | undefined, req: RotationRequest | undefined, reports: Map<string, ReplicaCaReport | undefined>): Step {
  if (req?.status !== 'pending') return { kind: 'none' };
  const r = rotationOf(ca);
  if (!ca) return { kind: 'refuse', reason: 'there is no mesh CA in the shared state' };
  const notReady = (ok: (rep: ReplicaCaReport) => boolean, say: (rep: ReplicaCaReport | undefined) => string) => {
    const bad = [...reports].filter(([, rep]) => !rep || rep.rotation !== req.id || !ok(rep));
    return bad.map(([id, rep]) => `${id} (${say(rep)})`).join(', ');
  };
  switch (req.phase) {
    case 'start':
      if (r.id === req.id || r.last === req.id) return { kind: 'done' };
      if (r.phase !== 'none') return { kind: 'refuse', reason: `rotation ${r.id} is already running (phase ${r.phase})` };
      return { kind: 'start' };
    case 'switch': {
      if ((r.id === req.id && r.phase === 'switched') || r.last === req.id) return { kind: 'done' };
      if (r.id !== req.id || r.phase !== 'started')
        return { kind: 'refuse', reason: `rotation ${req.id} is not in phase started (${r.phase}${r.id ? ` ${r.id}` : ''})` };
      if (req.force) return { kind: 'switch' };
      const waiting = notReady(
        (rep) => rep.phase === 'started' && rep.pendingProxies === 0,
        (rep) =>
          !rep || rep.rotation !== req.id || rep.phase !== 'started'
            ? 'does not trust the next root yet'
            : `${rep.pendingProxies} proxy(ies) have not ACKed the new trust bundle`,
      );
      if (waiting) return { kind: 'refuse', reason: `not every live replica has pushed the next root to its proxies: ${waiting}; ask again in a few seconds` };
      return { kind: 'switch' };
    }
    case 'finish': {
      if (r.last === req.id && r.phase === 'none') return { kind: 'done' };
      if (r.id !== req.id || r.phase !== 'switched')
        return { kind: 'refuse', reason: `rotation ${req.id} is not in phase switched (${r.phase}${r.id ? ` ${r.id}` : ''})` };
      if (req.force) return { kind: 'finish' };
      const waiting = notReady(
        (rep) => rep.phase === 'switched' && rep.oldCertificates === 0 && !rep.serverOld,
        (rep) =>
          !rep || rep.rotation !== req.id || rep.phase !== 'switched'
            ? 'has not switched to the next root yet'
            : `${rep.oldCertificates} live workload certificate(s)${rep.serverOld ? ' and its xDS server certificate' : ''} still from the previous root`,
      );
      if (waiting)
        return {
          kind: 'refuse',
          reason: `certificates of the previous root are still live: ${waiting}; wait for the re-issue (seconds) or give --force (their proxies then fail mTLS until renewed)`,
        };
      return { kind: 'finish' };
    }
  }
}

/** The `ca` fields that hold private keys (sealed in Consul KV). */
export function caSealedFields(d: RecordData): string[] {
  return ['privateKey', ...(typeof d.nextPrivateKey === 'string' ? ['nextPrivateKey'] : [])];
}

/** The `ca` record without the fields of a rotation. */
function withoutRotation(d: RecordData): RecordData {
  const { rotation: _r, nextPrivateKey: _n, ...rest } = d;
  return rest;
}

/**
 * The leader's side: follows the request record and carries out a pending request while this
 * replica leads (and again whenever it becomes leader: a request another leader left is resumed).
 * Consul out of reach: retried every two seconds; the rotation waits.
 */
export class RotationLeader {
  private stopWatch?: () => void;
  private running?: Promise<void>;
  private again = false;
  private retry?: NodeJS.Timeout;
  private stopped = false;

  constructor(
    private readonly shared: SharedState,
    private readonly opts: { isLeader: () => boolean; trustDomain: string; logger?: StateLog },
  ) {}

  start(): void {
    this.stopWatch = this.shared.watch(
      ROTATION_RECORD,
      () => this.kick(),
      (e) => this.opts.logger?.error({ err: e.message }, 'the CA rotation request in the shared state does not decode'),
    );
  }

  /** Looks at the request now (called on leadership change too). */
  kick(): void {
    if (this.stopped) return;
    if (this.running) {
      this.again = true;
      return;
    }
    this.running = this.step()
      .catch((e: unknown) => {
        this.opts.logger?.warn({ err: (e as Error).message }, 'cannot carry out the CA rotation request now; retrying');
        clearTimeout(this.retry);
        this.retry = setTimeout(() => this.kick(), 2_000).unref();
      })
      .finally(() => {
        this.running = undefined;
        if (this.again) {
          this.again = false;
          this.kick();
        }
      });
  }

  private async step(): Promise<void> {
    if (!this.opts.isLeader()) return;
    const req = (await this.shared.read(ROTATION_RECORD))?.data as RotationRequest | undefined;
    if (req?.status !== 'pending') return;
    const ca = (await this.shared.read(SHARED_CA_RECORD))?.data;
    const reports = await replicaReports(this.shared, await aliveReplicas(this.shared));
    const plan = planStep(ca, req, reports);
    const log = this.opts.logger;
    if (plan.kind === 'none') return;
    if (plan.kind === 'refuse') return this.mark(req, 'refused', plan.reason);
    if (plan.kind !== 'done') {
      if (!this.opts.isLeader()) return;
      await this.apply(plan.kind, req, ca!);
      log?.info({ rotation: req.id, phase: plan.kind, forced: req.force || undefined }, `CA rotation: phase ${plan.kind} carried out`);
    }
    await this.mark(req, 'done');
  }

  private async mark(req: RotationRequest, status: 'done' | 'refused', reason?: string): Promise<void> {
    if (status === 'refused') this.opts.logger?.warn({ rotation: req.id, phase: req.phase, reason }, 'CA rotation request refused');
    await this.shared.update(ROTATION_RECORD, (cur) =>
      cur?.nonce === req.nonce && cur.status === 'pending' ? { ...cur, status, ...(reason ? { reason } : {}), doneAt: new Date().toISOString() } : undefined,
    );
  }

  private async apply(kind: 'start' | 'switch' | 'finish', req: RotationRequest, base: RecordData): Promise<void> {
    const now = new Date().toISOString();
    let change: (cur: RecordData | undefined) => RecordData | undefined;
    if (kind === 'start') {
      // The next root and its cross-signed certificate, made before the check-and-set (keys are made asynchronously).
      const prevCert = new x509.X509Certificate(String(base.certificate));
      const prevKey = await importKey(String(base.privateKey));
      const { keys, cert } = await newRoot(this.opts.trustDomain, req.id);
      const cross = await crossSign({ cert: prevCert, key: prevKey }, cert);
      const nextPrivateKey = await exportKeyPem(keys.privateKey);
      change = (cur) => {
        if (!cur) throw new Error('the mesh CA record disappeared');
        const r = rotationOf(cur);
        if (r.id === req.id) return undefined; // already started (another leader, a retry)
        if (r.phase !== 'none') throw new Error(`rotation ${r.id} is running`);
        if (cur.certificate !== base.certificate) throw new Error('the mesh CA changed meanwhile');
        return {
          ...cur,
          rotation: { id: req.id, phase: 'started', startedAt: now, nextCertificate: cert.toString('pem'), nextCrossCertificate: cross.toString('pem') },
          nextPrivateKey,
        };
      };
    } else if (kind === 'switch') {
      change = (cur) => {
        const r = rotationOf(cur);
        if (r.id === req.id && r.phase === 'switched') return undefined;
        if (!cur || r.id !== req.id || r.phase !== 'started') throw new Error(`rotation ${req.id} is not in phase started`);
        const rot = cur.rotation as { startedAt: string; nextCertificate: string; nextCrossCertificate: string };
        if (typeof cur.nextPrivateKey !== 'string') throw new Error(`${this.shared.keyOf(SHARED_CA_RECORD)} lacks the next root's key`);
        return {
          ...withoutRotation(cur),
          certificate: rot.nextCertificate,
          privateKey: cur.nextPrivateKey,
          crossCertificate: rot.nextCrossCertificate,
          rotation: { id: req.id, phase: 'switched', startedAt: rot.startedAt, switchedAt: now, previousCertificate: cur.certificate },
        };
      };
    } else {
      change = (cur) => {
        const r = rotationOf(cur);
        if (r.last === req.id && r.phase === 'none') return undefined;
        if (!cur || r.id !== req.id || r.phase !== 'switched') throw new Error(`rotation ${req.id} is not in phase switched`);
        const rot = cur.rotation as { startedAt: string; switchedAt: string; previousCertificate: string };
        return {
          ...withoutRotation(cur),
          lastRotation: { id: req.id, startedAt: rot.startedAt, switchedAt: rot.switchedAt, finishedAt: now, previousCertificate: rot.previousCertificate },
        };
      };
    }
    await this.shared.update(SHARED_CA_RECORD, change, caSealedFields);
  }

  stop(): void {
    this.stopped = true;
    this.stopWatch?.();
    clearTimeout(this.retry);
  }
}

export interface CaFollowerOptions {
  replicaId: string;
  logger?: StateLog;
  /** Applies a change (pushes the bundle, re-issues certificates); resolves once proxies were sent it. */
  onChange(what: { signing: boolean; bundle: boolean; chain: boolean }): Promise<void>;
  /** This replica's certificates and proxies, for its report. */
  counts(): { certificates: number; oldCertificates: number; serverOld: boolean; pendingProxies: number };
}

const subjectsOf = (pem: string) =>
  [...pem.matchAll(/-----BEGIN CERTIFICATE-----[\s\S]*?-----END CERTIFICATE-----/g)].map((m) => new x509.X509Certificate(m[0]).subject);

/**
 * Every replica's side: follows the `ca` record, adopts what it holds (a record that does not
 * decode is logged and the CA in use kept) and publishes `replicas/ID/ca` whenever its view changes.
 */
export class CaFollower {
  private stopWatch?: () => void;
  private chain: Promise<void> = Promise.resolve();
  private timer?: NodeJS.Timeout;
  private last = '';
  private publishing = false;
  private applying = false;
  /** Set once the record's content was applied (the report says the phase only then). */
  private applied = false;

  constructor(
    private readonly shared: SharedState,
    private readonly ca: CertificateAuthority,
    private readonly opts: CaFollowerOptions,
  ) {}

  start(): void {
    this.stopWatch = this.shared.watch(
      SHARED_CA_RECORD,
      (data) => {
        this.chain = this.chain.then(() => this.apply(data));
      },
      (e) => this.opts.logger?.error({ err: e.message }, 'the shared mesh CA record does not decode; keeping the CA in use'),
    );
    this.timer = setInterval(() => void this.publish(), 1_000).unref();
  }

  private async apply(data: RecordData | undefined): Promise<void> {
    if (!data) {
      this.opts.logger?.error({ key: this.shared.keyOf(SHARED_CA_RECORD) }, 'the shared mesh CA record was removed; keeping the CA in use');
      return;
    }
    // No report while a change is being applied: the CA object holds the new phase before the
    // proxies were sent it, and a report then would let the leader move on too early.
    this.applying = true;
    try {
      const material = await sharedCaMaterial(this.shared, data);
      const what = this.ca.adopt(material);
      if (what.signing || what.bundle || what.chain) {
        this.opts.logger?.info(
          { rotation: material.rotation?.id, phase: material.rotation?.phase ?? 'none', root: material.certificate.subject, ...what },
          'mesh CA changed in the shared state: applying',
        );
        await this.opts.onChange(what);
      }
      this.applied = true;
    } catch (e) {
      this.opts.logger?.error({ err: (e as Error).message }, 'cannot apply the shared mesh CA; keeping the CA in use');
    } finally {
      this.applying = false;
    }
    await this.publish();
  }

  report(): ReplicaCaReport {
    const r = this.ca.rotation;
    return {
      ...(r ? { rotation: r.id } : {}),
      phase: r?.phase ?? 'none',
      signing: this.ca.certificate.subject,
      trusted: subjectsOf(this.ca.trustBundlePem),
      ...this.opts.counts(),
    };
  }

  private async publish(): Promise<void> {
    if (!this.applied || this.applying || this.publishing) return;
    this.publishing = true;
    try {
      const rep = this.report();
      const text = JSON.stringify(rep);
      if (text === this.last) return;
      await this.shared.update(caReportRecord(this.opts.replicaId), () => ({ ...rep, at: new Date().toISOString() }));
      this.last = text;
    } catch (e) {
      this.opts.logger?.warn({ err: (e as Error).message }, "cannot publish this replica's CA view in Consul; retrying");
    } finally {
      this.publishing = false;
    }
  }

  /** Waits for what was read so far to be applied (tests). */
  async settled(): Promise<void> {
    await this.chain;
  }

  stop(): void {
    this.stopWatch?.();
    clearInterval(this.timer);
  }
}
