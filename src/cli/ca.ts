// `signalbox ca rotate --phase P` and `signalbox ca status`: the operator's side of a rotation of
// the mesh root with --state consul. This command only records a request (check-and-set) and
// waits for the leader to carry it out: it never makes a root itself (src/ca/rotation.ts).
import { SHARED_CA_RECORD } from '../ca/ca.js';
import { x509 } from '../ca/x509.js';
import {
  aliveReplicas,
  awaitRequest,
  PHASES,
  type Phase,
  refusal,
  replicaReports,
  requestRotation,
  ROTATION_RECORD,
  type RotationRequest,
  rotationOf,
} from '../ca/rotation.js';
import { ErrorCode, SignalboxError } from '../errors.js';
import type { SharedState } from '../state/index.js';
import { CA_COMMAND } from './commands.js';
import { parseFlags } from './flags.js';
import { sharedStateFromFlags } from './state.js';

/** How long `ca rotate` waits for the leader. */
const WAIT_MS = 30_000;

const NEXT: Record<Phase, string> = {
  start: 'once `signalbox ca status` shows every replica trusting the next root with 0 proxies pending, run --phase switch',
  switch: 'once `signalbox ca status` shows 0 certificates from the previous root on every replica, and every bootstrap is rewritten, run --phase finish',
  finish: 'the previous root is no longer trusted; rewrite the bootstraps that still trust only it (signalbox bootstrap) before the next rotation',
};

export async function caCommand(args: string[]): Promise<number> {
  const flags = parseFlags(CA_COMMAND.flags, args, true);
  const [sub, ...more] = flags.positionals;
  if (sub !== 'rotate' && sub !== 'status')
    throw new SignalboxError(
      ErrorCode.BAD_FLAG,
      `usage: signalbox ca rotate --phase ${PHASES.join('|')} | signalbox ca status${sub ? ` (not "${sub.slice(0, 50)}")` : ''}`,
    );
  if (more.length) throw new SignalboxError(ErrorCode.BAD_FLAG, `unexpected argument "${more[0]!.slice(0, 100)}"; see signalbox ca --help`);
  const phase = flags.str('phase');
  if (sub === 'rotate' && phase === undefined) throw new SignalboxError(ErrorCode.BAD_FLAG, `ca rotate needs --phase ${PHASES.join('|')}`);
  if (sub === 'rotate' && !PHASES.includes(phase as Phase))
    throw new SignalboxError(ErrorCode.BAD_FLAG, `--phase must be one of ${PHASES.join(', ')}, got "${phase!.slice(0, 50)}"`);
  if (sub === 'status' && (phase !== undefined || flags.bool('force'))) throw new SignalboxError(ErrorCode.BAD_FLAG, '--phase and --force go with ca rotate');
  const shared = await sharedStateFromFlags(flags.values);
  if (!shared)
    throw new SignalboxError(
      ErrorCode.BAD_FLAG,
      'signalbox ca works on the shared state of replicas: give --state consul (with --consul-addr and the state key); one replica with --data-dir rotates as docs/mtls.md says',
    );
  try {
    if (sub === 'status') return await status(shared, flags.bool('json'));
    return await rotate(shared, phase as Phase, flags.bool('force'));
  } finally {
    shared.close();
  }
}

async function rotate(shared: SharedState, phase: Phase, force: boolean): Promise<number> {
  let req: RotationRequest;
  try {
    req = await requestRotation(shared, phase, force);
  } catch (e) {
    if (!(e instanceof SignalboxError) || e.code !== ErrorCode.STATE) throw e;
    process.stderr.write(`signalbox ca: ${e.message}\n`);
    return 1;
  }
  process.stderr.write(`requested phase ${phase} of CA rotation ${req.id}${force ? ' (forced)' : ''}; waiting for the leader\n`);
  const done = await awaitRequest(shared, req.nonce, WAIT_MS);
  if (!done) {
    process.stderr.write(
      `the leader has not carried it out within ${WAIT_MS / 1000} s (is a replica running? is Consul reachable?); the request stays recorded and the leader carries it out when it can: see signalbox ca status\n`,
    );
    return 1;
  }
  if (done.status === 'refused') {
    process.stderr.write(`the leader refused phase ${phase}: ${done.reason ?? 'no reason given'}\n`);
    return 1;
  }
  process.stderr.write(`phase ${phase} of CA rotation ${req.id} done: ${NEXT[phase]}\n`);
  return 0;
}

const describe = (pem: unknown) => {
  if (typeof pem !== 'string') return undefined;
  const c = new x509.X509Certificate(pem);
  return { subject: c.subject, serial: c.serialNumber, notAfter: c.notAfter.toISOString() };
};

async function status(shared: SharedState, json: boolean): Promise<number> {
  const ca = (await shared.read(SHARED_CA_RECORD))?.data;
  const request = (await shared.read(ROTATION_RECORD))?.data as RotationRequest | undefined;
  const alive = await aliveReplicas(shared);
  const reports = await replicaReports(shared, alive);
  const r = rotationOf(ca);
  const rot = ca?.rotation as { startedAt?: string; switchedAt?: string; nextCertificate?: string; previousCertificate?: string } | undefined;
  const last = ca?.lastRotation as { id?: string; finishedAt?: string } | undefined;
  const view = {
    rotation: r.phase === 'none' ? undefined : { id: r.id, phase: r.phase, startedAt: rot?.startedAt, switchedAt: rot?.switchedAt },
    lastRotation: last?.id ? { id: last.id, finishedAt: last.finishedAt } : undefined,
    signingRoot: describe(ca?.certificate),
    nextRoot: describe(rot?.nextCertificate),
    previousRoot: describe(rot?.previousCertificate),
    request: request
      ? { phase: request.phase, rotation: request.id, status: request.status, reason: request.reason, requestedAt: request.requestedAt }
      : undefined,
    nextPhase: (['start', 'switch', 'finish'] as const).find((p) => !refusal(ca, undefined, p)),
    replicas: [...reports].map(([id, rep]) => ({ id, ...(rep ?? { report: 'none yet' }) })),
  };
  if (json) {
    process.stdout.write(`${JSON.stringify(view, null, 2)}\n`);
    return 0;
  }
  const out: string[] = [];
  out.push(
    view.rotation
      ? `rotation ${view.rotation.id}: phase ${view.rotation.phase} (started ${view.rotation.startedAt}${view.rotation.switchedAt ? `, switched ${view.rotation.switchedAt}` : ''})`
      : `no rotation running${view.lastRotation ? ` (last: ${view.lastRotation.id}, finished ${view.lastRotation.finishedAt})` : ''}`,
  );
  if (view.signingRoot) out.push(`signing root:  ${view.signingRoot.subject} (serial ${view.signingRoot.serial}, until ${view.signingRoot.notAfter})`);
  if (view.nextRoot) out.push(`next root:     ${view.nextRoot.subject} (serial ${view.nextRoot.serial}): trusted, not signing yet`);
  if (view.previousRoot) out.push(`previous root: ${view.previousRoot.subject} (serial ${view.previousRoot.serial}): still trusted, no longer signing`);
  if (view.request)
    out.push(
      `last request:  phase ${view.request.phase} of ${view.request.rotation}, ${view.request.status}${view.request.reason ? `: ${view.request.reason}` : ''} (asked ${view.request.requestedAt})`,
    );
  out.push(`next phase:    ${view.nextPhase ?? '-'}`, 'live replicas:');
  for (const [id, rep] of reports) {
    if (!rep) {
      out.push(`  ${id}: no report yet`);
      continue;
    }
    out.push(
      `  ${id}: ${rep.phase === 'none' ? 'no rotation' : `${rep.rotation} ${rep.phase}`}; trusts ${rep.trusted.length} root(s); ${rep.certificates} workload certificate(s), ${rep.oldCertificates} from another root than the signing one; xDS server certificate ${rep.serverOld ? 'from another root' : 'current'}; ${rep.pendingProxies} proxy(ies) with secrets not ACKed`,
    );
  }
  process.stdout.write(`${out.join('\n')}\n`);
  return 0;
}
