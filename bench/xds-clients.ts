// The client side of `npm run bench:xds`, run as its own process (forked by bench/xds.ts) so the
// simulated proxies do not share an event loop with the orchestrator, and so the server's own
// process measures only the server. It holds N ADS streams, one gRPC channel (one HTTP/2
// connection) each, that behave like Envoy: CDS and LDS wildcard, then EDS for the EDS clusters and
// RDS for the route configurations they receive, ACKing every response. Each stream presents its
// gateway's token (gRPC metadata); each channel is TLS, verifying the server with the CA the
// parent read from the server's data directory, unless the parent sent none (`--xds-insecure`).
//
// The parent drives it over IPC:
//   connect -> connected   open and sync every stream (ACKed CDS, EDS, LDS and RDS at least once)
//   arm     -> armed       remember how many RDS responses each stream has ACKed so far
//   wait    -> converged   resolve once every stream ACKed one more RDS response after `t0`,
//                          with each stream's latency (ACK time - t0, milliseconds)
//   close   -> closed      cancel every stream, close every channel
import * as grpc from '@grpc/grpc-js';
import { AdsClient, gatewayNode, type DeltaClientStream, type SotwClientStream } from '../test/helpers/xds-client.js';
import { TypeUrl } from '../src/xds/resources/type-urls.js';
import { wallNow, type ChildMsg, type ConnectMsg, type ParentMsg } from './protocol.js';

const ENVOY_HTTP2_WINDOW = 256 * 1024 * 1024;
const SYNC_TYPES = [TypeUrl.Cluster, TypeUrl.Endpoint, TypeUrl.Listener, TypeUrl.Route] as const;

interface Sim {
  client: AdsClient;
  stream: SotwClientStream | DeltaClientStream;
  gateway: string;
  /** Responses ACKed per type. */
  acks: Map<string, number>;
  /** RDS ACK count at `arm`. */
  baseline: number;
  /** Wall time of the first RDS ACK after `arm`. */
  firstAfter?: number;
  onSynced?: () => void;
  /** What the stream holds of RDS, as one string (for the consistency check). */
  rdsVersion: string;
}

const sims: Sim[] = [];
let onProgress: (() => void) | undefined;

function send(m: ChildMsg): void {
  process.send!(m);
}

function cpuMs(u: NodeJS.CpuUsage): number {
  return (u.user + u.system) / 1000;
}

function synced(s: Sim): boolean {
  return SYNC_TYPES.every((t) => (s.acks.get(t) ?? 0) > 0);
}

function open(i: number, m: ConnectMsg, ca: Buffer | undefined): Sim {
  const gateway = m.gateways[i % m.gateways.length]!;
  // Envoy's HTTP/2 windows default to 256 MiB (initial_stream_window_size and
  // initial_connection_window_size); Node's default of 64 KiB would make every 125 kB route
  // configuration wait for a WINDOW_UPDATE round trip, which no real proxy does.
  // One TLS session per channel, as each Envoy has its own; the token goes as metadata below.
  const client = new AdsClient(m.targets[i % m.targets.length]!, { 'grpc-node.flow_control_window': ENVOY_HTTP2_WINDOW }, ca ? { ca } : undefined);
  const metadata = new grpc.Metadata();
  const token = m.tokens[gateway];
  if (token) metadata.set('x-signalbox-token', token);
  const opts = { node: gatewayNode(`bench-${m.mode}-${String(i).padStart(5, '0')}`, gateway), autoAck: true, follow: true, keep: false, metadata };
  const stream = m.mode === 'sotw' ? client.sotw(opts) : client.delta(opts);
  const sim: Sim = { client, stream, gateway, acks: new Map(), baseline: 0, rdsVersion: '' };
  // `response` is emitted after the helper has reacted (followed dependencies and written the ACK).
  (stream as SotwClientStream).on('response', (r: { type_url: string; version_info?: string }) => {
    const at = wallNow();
    sim.acks.set(r.type_url, (sim.acks.get(r.type_url) ?? 0) + 1);
    if (r.type_url === TypeUrl.Route) {
      if (m.mode === 'sotw') sim.rdsVersion = r.version_info ?? '';
      else
        sim.rdsVersion = [...(stream as DeltaClientStream).holding(TypeUrl.Route)]
          .map(([n, v]) => `${n}=${v}`)
          .sort()
          .join(',');
      if (sim.firstAfter === undefined && (sim.acks.get(TypeUrl.Route) ?? 0) > sim.baseline) {
        sim.firstAfter = at;
        onProgress?.();
      }
    }
    if (sim.onSynced && synced(sim)) {
      const cb = sim.onSynced;
      sim.onSynced = undefined;
      cb();
    }
  });
  if (m.mode === 'sotw') {
    const s = stream as SotwClientStream;
    s.request(TypeUrl.Cluster, []);
    s.request(TypeUrl.Listener, []);
  } else {
    const s = stream as DeltaClientStream;
    s.subscribe(TypeUrl.Cluster, ['*']);
    s.subscribe(TypeUrl.Listener, ['*']);
  }
  return sim;
}

async function connect(m: ConnectMsg): Promise<void> {
  const t0 = wallNow();
  const cpu0 = process.cpuUsage();
  let next = 0;
  let failed = 0;
  const ca = m.ca ? Buffer.from(m.ca) : undefined;
  await new Promise<void>((resolve, reject) => {
    let inFlight = 0;
    let done = 0;
    const timer = setTimeout(() => reject(new Error(`only ${done} of ${m.clients} streams synced within ${m.timeoutMs} ms`)), m.timeoutMs);
    const launch = () => {
      while (inFlight < m.concurrency && next < m.clients) {
        const sim = open(next++, m, ca);
        sims.push(sim);
        inFlight++;
        const finish = () => {
          inFlight--;
          done++;
          if (done === m.clients) {
            clearTimeout(timer);
            resolve();
          } else launch();
        };
        sim.onSynced = finish;
        void sim.stream.status.then((st) => {
          if (sim.onSynced) {
            failed++;
            sim.onSynced = undefined;
            process.stderr.write(`bench client ${sims.indexOf(sim)}: stream ended before syncing: ${st.details}\n`);
            finish();
          }
        });
      }
    };
    launch();
  });
  send({ type: 'connected', ms: wallNow() - t0, streams: sims.filter((s) => !s.stream.ended).length, failed, cpuMs: cpuMs(process.cpuUsage(cpu0)) });
}

let waitCpu0: NodeJS.CpuUsage | undefined;

function arm(): void {
  for (const s of sims) {
    s.baseline = s.acks.get(TypeUrl.Route) ?? 0;
    s.firstAfter = undefined;
  }
  waitCpu0 = process.cpuUsage();
  send({ type: 'armed' });
}

function wait(t0: number, timeoutMs: number): void {
  const live = sims.filter((s) => !s.stream.ended);
  const report = () => {
    clearTimeout(timer);
    onProgress = undefined;
    const versions: Record<string, number> = {};
    for (const s of live) {
      const key = `${s.gateway} ${s.rdsVersion.length > 40 ? `${s.rdsVersion.slice(0, 40)}…` : s.rdsVersion}`;
      versions[key] = (versions[key] ?? 0) + 1;
    }
    const latencies = live.filter((s) => s.firstAfter !== undefined).map((s) => s.firstAfter! - t0);
    send({
      type: 'converged',
      latenciesMs: latencies,
      missing: live.length - latencies.length,
      versions,
      cpuMs: waitCpu0 ? cpuMs(process.cpuUsage(waitCpu0)) : 0,
    });
  };
  const timer = setTimeout(report, timeoutMs);
  let pending = live.filter((s) => s.firstAfter === undefined).length;
  if (pending === 0) {
    report();
    return;
  }
  onProgress = () => {
    if (--pending === 0) report();
  };
}

function close(): void {
  for (const s of sims) s.client.close();
  sims.length = 0;
  send({ type: 'closed' });
}

process.on('message', (m: ParentMsg) => {
  try {
    if (m.cmd === 'connect') connect(m).catch((e: Error) => send({ type: 'error', message: e.message }));
    else if (m.cmd === 'arm') arm();
    else if (m.cmd === 'wait') wait(m.t0, m.timeoutMs);
    else if (m.cmd === 'close') close();
  } catch (e) {
    send({ type: 'error', message: (e as Error).message });
  }
});
// The parent going away (even killed) closes the IPC channel: stop too, never linger.
process.on('disconnect', () => process.exit(0));
