// `npm run bench:xds`: xDS convergence benchmark (not a test).
//
// Generates a policy directory (default 1,000 routes over 200 services with static endpoints on
// 127.0.0.1, two gateways) in a temporary folder, starts Signalbox as a child process
// (`node bin/signalbox.js serve`, so its RSS and CPU are its own), and connects N simulated ADS
// clients from a second child process (bench/xds-clients.ts) over loopback: over TLS, as the
// server's default is, each client verifying the server with the CA the server wrote to
// `<data-dir>/xds-ca.pem`, and each stream presenting its gateway's token (with --xds-insecure the
// server and the clients use plain text, tokens still presented: what TLS costs). Then, for SotW
// and for Delta, it measures:
//   - compile time of the full configuration (signalbox_compile_duration_seconds): the first,
//     cold compile; warm reloads with no client connected; and the reloads during the pushes;
//   - RSS growth of the Signalbox process per connected client (VmRSS from /proc/<pid>/status);
//   - the time from a policy file write (one route's timeout rewritten) to every client having
//     ACKed a route configuration carrying it, p50 / p99 / max over K changes, measured client-side;
//   - event-loop lag in Signalbox during each push (prom-client's monitorEventLoopDelay histogram,
//     which prom-client resets at every scrape: scraped just before the write and after the last ACK).
//
// Flags: --clients N (1000) --mode sotw|delta|both (both) --changes K (10) --gateways G (2)
//        --routes R (1000) --services S (200) --concurrency C (100 streams syncing at once)
//        --timeout-s T (hard limit for the whole run, 900) --round-timeout-s T (per change, 60)
//        --json FILE (also write the results) --server-node-args="--cpu-prof --cpu-prof-dir=DIR"
//        --xds-insecure (serve and connect in plain text).
//        --replicas R (1): R > 1 starts one real Consul agent (test/helpers/consul.ts) and R
//        `signalbox serve` replicas with `--state consul` on it (one state key, each replica its
//        own copy of the policy directory, its own ports); client i connects to replica i mod R; a
//        change is written to every copy in turn, and convergence runs from the first write to the
//        last ACK on any replica. Also reports, per replica, its clients, RSS growth per client and
//        CPU per change, and checks that every replica serves the same route versions.
// Results and method: docs/benchmarks.md.
// Everything runs on loopback, stops by itself and removes its temporary folder and children.
import { fork, spawn, execFileSync, type ChildProcess } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { cpSync, mkdtempSync, readFileSync, rmSync, writeFileSync, existsSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { DEFAULT_SHAPE, gatewayName, routeFile, writePolicyDir, type PolicyShape } from './policy-gen.js';
import { wallNow, type ChildMsg, type Mode, type ParentMsg } from './protocol.js';
import { cpuSeconds, percentile } from './lib.js';
import { freePort } from '../test/helpers/net.js';
import { xdsCa } from '../test/helpers/credentials.js';
import { startConsul, type ConsulAgent } from '../test/helpers/consul.js';

const here = path.dirname(fileURLToPath(import.meta.url));
// dist/bench/xds.js -> repository root two levels up.
const ROOT = path.resolve(here, '..', '..');
const BIN = path.join(ROOT, 'bin', 'signalbox.js');
const CLIENTS_JS = path.join(here, 'xds-clients.js');

const { values: flags } = parseArgs({
  options: {
    clients: { type: 'string', default: '1000' },
    mode: { type: 'string', default: 'both' },
    changes: { type: 'string', default: '10' },
    gateways: { type: 'string', default: String(DEFAULT_SHAPE.gateways) },
    routes: { type: 'string', default: String(DEFAULT_SHAPE.routes) },
    services: { type: 'string', default: String(DEFAULT_SHAPE.services) },
    concurrency: { type: 'string', default: '100' },
    'timeout-s': { type: 'string', default: '900' },
    'round-timeout-s': { type: 'string', default: '60' },
    json: { type: 'string' },
    'server-node-args': { type: 'string', default: '' },
    'xds-insecure': { type: 'boolean', default: false },
    replicas: { type: 'string', default: '1' },
    help: { type: 'boolean', default: false },
  },
});
if (flags.help) {
  process.stdout.write(
    'usage: node dist/bench/xds.js [--clients N] [--mode sotw|delta|both] [--changes K] [--gateways G] [--routes R] [--services S] [--concurrency C] [--timeout-s T] [--json FILE] [--server-node-args="--cpu-prof --cpu-prof-dir=DIR"] [--xds-insecure] [--replicas R]\n',
  );
  process.exit(0);
}
function intFlag(name: string, v: string | undefined, min: number, max: number): number {
  const n = Number(v);
  if (!Number.isInteger(n) || n < min || n > max) {
    process.stderr.write(`bench: --${name} must be an integer from ${min} to ${max}, got "${v}"\n`);
    process.exit(2);
  }
  return n;
}
const N = intFlag('clients', flags.clients, 1, 20000);
/** TLS on the xDS port (the server's default); off with --xds-insecure. */
const TLS = !flags['xds-insecure'];
/** Signalbox replicas (R > 1: shared state in a real Consul agent). */
const R = intFlag('replicas', flags.replicas, 1, 16);
const K = intFlag('changes', flags.changes, 1, 1000);
const CONCURRENCY = intFlag('concurrency', flags.concurrency, 1, 10000);
const HARD_TIMEOUT_MS = intFlag('timeout-s', flags['timeout-s'], 10, 86400) * 1000;
const ROUND_TIMEOUT_MS = intFlag('round-timeout-s', flags['round-timeout-s'], 1, 3600) * 1000;
const shape: PolicyShape = {
  ...DEFAULT_SHAPE,
  gateways: intFlag('gateways', flags.gateways, 1, 50),
  routes: intFlag('routes', flags.routes, 1, 100000),
  services: intFlag('services', flags.services, 1, 999),
};
if (shape.routes < shape.services) {
  process.stderr.write('bench: --routes must be at least --services (each service has one HTTPRoute with at least one rule)\n');
  process.exit(2);
}
const modes: Mode[] = flags.mode === 'both' ? ['sotw', 'delta'] : flags.mode === 'sotw' || flags.mode === 'delta' ? [flags.mode] : [];
if (modes.length === 0) {
  process.stderr.write(`bench: --mode must be sotw, delta or both, got "${flags.mode}"\n`);
  process.exit(2);
}
if (!existsSync(CLIENTS_JS) || !existsSync(BIN)) {
  process.stderr.write(`bench: ${CLIENTS_JS} or ${BIN} is missing; run \`npm run build\` first\n`);
  process.exit(2);
}

// ---------------------------------------------------------------------------------------------
// Cleanup: every child we start is tracked by pid and killed on any exit; the temp folder removed.

const tmp = mkdtempSync(path.join(os.tmpdir(), 'signalbox-bench-'));
const children = new Set<ChildProcess>();
/** The Consul agent of a run with --replicas > 1 (its helper also kills it when this process exits). */
let consul: ConsulAgent | undefined;
/** The shared state's key (--replicas > 1): given to the replicas and the CLI in the environment only. */
const STATE_KEY = randomBytes(32).toString('base64');
const STATE_PREFIX = 'signalbox-bench';
let cleaned = false;
function cleanup(): void {
  if (cleaned) return;
  cleaned = true;
  for (const c of children) if (c.exitCode === null && c.signalCode === null) c.kill('SIGKILL');
  void consul?.kill();
  rmSync(tmp, { recursive: true, force: true });
}
/** Flags that put a Signalbox process (server or CLI) on the shared state; none with one replica. */
const stateArgs = (): string[] => (consul ? ['--state', 'consul', '--consul-addr', consul.httpAddr, '--state-prefix', STATE_PREFIX] : []);
const stateEnv = (): NodeJS.ProcessEnv => (consul ? { ...process.env, SIGNALBOX_STATE_KEY: STATE_KEY } : process.env);
process.on('exit', cleanup);
for (const sig of ['SIGINT', 'SIGTERM'] as const) {
  process.once(sig, () => {
    process.stderr.write(`bench: ${sig}, stopping\n`);
    cleanup();
    process.exit(130);
  });
}
const hardTimer = setTimeout(() => {
  process.stderr.write(`bench: hard timeout of ${HARD_TIMEOUT_MS / 1000} s reached, stopping\n`);
  cleanup();
  process.exit(3);
}, HARD_TIMEOUT_MS);

// ---------------------------------------------------------------------------------------------
// Small helpers

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

const median = (xs: number[]) =>
  percentile(
    [...xs].sort((a, b) => a - b),
    50,
  );

function rssKiB(pid: number): number {
  const m = /VmRSS:\s+(\d+)\s+kB/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
  if (!m) throw new Error(`no VmRSS for pid ${pid}`);
  return Number(m[1]);
}

/** The median of three RSS readings 200 ms apart. */
async function rssMedian(pid: number): Promise<number> {
  const xs = [rssKiB(pid)];
  for (let i = 0; i < 2; i++) {
    await sleep(200);
    xs.push(rssKiB(pid));
  }
  return median(xs);
}

/** CPU time (user + system) of a process in milliseconds. */
const cpuMsOf = (pid: number) => cpuSeconds(pid) * 1000;

type Metrics = Map<string, number>;
async function scrape(adminPort: number): Promise<Metrics> {
  const res = await fetch(`http://127.0.0.1:${adminPort}/metrics`);
  const text = await res.text();
  const out: Metrics = new Map();
  for (const line of text.split('\n')) {
    if (!line || line.startsWith('#')) continue;
    const sp = line.lastIndexOf(' ');
    out.set(line.slice(0, sp), Number(line.slice(sp + 1)));
  }
  return out;
}
const metric = (m: Metrics, name: string) => m.get(name) ?? NaN;
const compileCount = (m: Metrics) => metric(m, 'signalbox_compile_duration_seconds_count');
const compileSum = (m: Metrics) => metric(m, 'signalbox_compile_duration_seconds_sum');
const appliedReloads = (m: Metrics) => metric(m, 'signalbox_policy_reloads_total{result="applied"}');

async function until<T>(what: string, timeoutMs: number, f: () => Promise<T | undefined>, everyMs = 20): Promise<T> {
  const end = Date.now() + timeoutMs;
  for (;;) {
    try {
      const v = await f();
      if (v !== undefined) return v;
    } catch {
      /* not yet */
    }
    if (Date.now() > end) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await sleep(everyMs);
  }
}

/** When the server recorded the newest route ACK of any proxy (epoch ms). */
async function lastRouteAck(adminPort: number): Promise<number> {
  const res = await fetch(`http://127.0.0.1:${adminPort}/api/proxies`);
  const body = (await res.json()) as { proxies: { types: Record<string, { ackedAt?: string }> }[] };
  let last = 0;
  for (const p of body.proxies) {
    const at = p.types.route?.ackedAt;
    if (at) last = Math.max(last, Date.parse(at));
  }
  return last;
}

const fmt = (ms: number, digits = 0) => (Number.isFinite(ms) ? ms.toFixed(digits) : 'n/a');

// ---------------------------------------------------------------------------------------------
// The Signalbox child and the client child

interface Server {
  proc: ChildProcess;
  pid: number;
  xdsPort: number;
  adminPort: number;
  dataDir: string;
  output: string[];
}

async function startSignalbox(policyDir: string, mode: Mode, replica = 0): Promise<Server> {
  const [xdsPort, adminPort] = [await freePort(), await freePort()];
  const dataDir = path.join(tmp, R === 1 ? `data-${mode}` : `data-${mode}-r${replica + 1}`);
  const args = [
    BIN,
    'serve',
    '--policies',
    policyDir,
    '--xds-address',
    '127.0.0.1',
    '--xds-port',
    String(xdsPort),
    '--admin-address',
    '127.0.0.1',
    '--admin-port',
    String(adminPort),
    '--data-dir',
    dataDir,
    '--log-level',
    'warn',
    ...(TLS ? [] : ['--xds-insecure']),
    ...(consul ? [...stateArgs(), '--replica-id', `r${replica + 1}`] : []),
  ];
  const nodeArgs = flags['server-node-args']!.split(' ').filter(Boolean); // e.g. "--cpu-prof --cpu-prof-dir=/tmp/prof"
  const proc = spawn(process.execPath, [...nodeArgs, ...args], {
    cwd: ROOT,
    stdio: ['ignore', 'pipe', 'pipe'],
    env: { ...stateEnv(), SIGNALBOX_STRICT_ENCODE: '' },
  });
  children.add(proc);
  proc.once('exit', () => children.delete(proc));
  const output: string[] = [];
  const keep = (b: Buffer) => {
    output.push(b.toString());
    if (output.length > 200) output.splice(0, output.length - 200);
  };
  proc.stdout!.on('data', keep);
  proc.stderr!.on('data', keep);
  const server: Server = { proc, pid: proc.pid!, xdsPort, adminPort, dataDir, output };
  try {
    await until(
      'Signalbox /readyz',
      120_000,
      async () => {
        if (proc.exitCode !== null) throw Object.assign(new Error('exited'), { fatal: true });
        const r = await fetch(`http://127.0.0.1:${adminPort}/readyz`);
        return r.status === 200 ? true : undefined;
      },
      50,
    );
  } catch (e) {
    if (proc.exitCode === null && proc.signalCode === null) proc.kill('SIGKILL');
    throw new Error(`Signalbox did not become ready: ${(e as Error).message}\n${output.join('')}`);
  }
  return server;
}

async function stopChild(proc: ChildProcess, graceMs = 5000): Promise<void> {
  if (proc.exitCode !== null || proc.signalCode !== null) return;
  const exited = new Promise<void>((r) => proc.once('exit', () => r()));
  proc.kill('SIGTERM');
  const t = setTimeout(() => proc.kill('SIGKILL'), graceMs);
  await exited;
  clearTimeout(t);
}

/** Issues a proxy token per gateway with the CLI, as an operator would (into the run's data dir). */
function tokensFor(dataDir: string): Record<string, string> {
  const out: Record<string, string> = {};
  for (let g = 0; g < shape.gateways; g++) {
    const name = gatewayName(g);
    // Retried: a concurrent `npm run build` rewriting dist/ can make one invocation fail.
    for (let attempt = 1; ; attempt++) {
      try {
        out[name] = execFileSync(process.execPath, [BIN, 'token', '--gateway', name, '--data-dir', dataDir, ...stateArgs()], {
          cwd: ROOT,
          env: stateEnv(),
          stdio: ['ignore', 'pipe', 'pipe'],
          timeout: 60_000,
        })
          .toString()
          .trim();
        break;
      } catch (e) {
        const err = e as Error & { stderr?: Buffer };
        if (attempt >= 3) throw new Error(`signalbox token failed: ${err.stderr?.toString().trim() || err.message}`);
        process.stderr.write(`bench: signalbox token failed (attempt ${attempt}), retrying: ${err.stderr?.toString().trim().split('\n')[0] ?? err.message}\n`);
      }
    }
  }
  return out;
}

class ClientProc {
  readonly proc: ChildProcess;
  private waiting: ((m: ChildMsg) => void) | undefined;
  private exitError: Error | undefined;

  constructor() {
    this.proc = fork(CLIENTS_JS, [], { stdio: ['ignore', 'inherit', 'inherit', 'ipc'], execArgv: ['--max-old-space-size=4096'] });
    children.add(this.proc);
    this.proc.on('message', (m: ChildMsg) => {
      const w = this.waiting;
      this.waiting = undefined;
      w?.(m);
    });
    this.proc.once('exit', (code, sig) => {
      children.delete(this.proc);
      this.exitError = new Error(`client process exited (${code ?? sig})`);
      const w = this.waiting;
      this.waiting = undefined;
      w?.({ type: 'error', message: this.exitError.message });
    });
  }

  request<T extends ChildMsg['type']>(m: ParentMsg, expect: T, timeoutMs: number): Promise<Extract<ChildMsg, { type: T }>> {
    if (this.exitError) return Promise.reject(this.exitError);
    return new Promise((resolve, reject) => {
      const t = setTimeout(() => {
        this.waiting = undefined;
        reject(new Error(`client process: no "${expect}" within ${timeoutMs} ms`));
      }, timeoutMs);
      this.waiting = (r) => {
        clearTimeout(t);
        if (r.type === expect) resolve(r as Extract<ChildMsg, { type: T }>);
        else reject(new Error(`client process: ${r.type === 'error' ? r.message : `unexpected ${r.type}`}`));
      };
      this.proc.send(m);
    });
  }
}

// ---------------------------------------------------------------------------------------------
// One run (one protocol)

interface Round {
  convergenceMs: { p50: number; p99: number; max: number; min: number };
  /** File write -> signalbox_config_last_applied_timestamp_seconds (reload done, first pushes queued). */
  appliedMs: number;
  /** File write -> the last route ACK as the server recorded it (/api/proxies, millisecond precision). */
  serverSideMs: number;
  compileMs: number;
  lagP99Ms: number;
  lagMaxMs: number;
  serverCpuMs: number;
  clientCpuMs: number;
  missing: number;
  distinctVersions: number;
  /** Per replica (in order): CPU of the change, ms. */
  replicaCpuMs: number[];
  /** Whether every replica's proxies ACKed the same set of route versions (content hashes). */
  sameVersions: boolean;
  /** The route versions the proxies of each replica ACKed (with --replicas > 1). */
  routeVersions?: string[];
}

interface ReplicaResult {
  replica: string;
  clients: number;
  rssBeforeMiB: number;
  rssAfterMiB: number;
  rssPerClientKiB: number;
  cpuPerChangeMs: number;
}

interface RunResult {
  mode: Mode;
  /** xDS over TLS (false: --xds-insecure). */
  tls: boolean;
  clients: number;
  connectedStreams: number;
  connectMs: number;
  connectServerCpuMs: number;
  connectClientCpuMs: number;
  compileColdMs: number;
  compileWarmNoClientsMs: number;
  compileWarmCpuMs: number;
  rssBeforeMiB: number;
  rssAfterMiB: number;
  rssPerClientKiB: number;
  heapBeforeMiB: number;
  heapAfterMiB: number;
  idleLagP99Ms: number;
  rounds: Round[];
  summary: {
    p50: number;
    p99: number;
    max: number;
    compileDuringPushMs: number;
    lagP99Ms: number;
    lagMaxMs: number;
    appliedMs: number;
    serverSideMs: number;
    pooled: { samples: number; p50: number; p99: number };
  };
  /** Load averages (1, 5, 15 min) when the run started and ended: other work on the machine skews wall-clock figures. */
  load: { start: number[]; end: number[] };
  /** Share of the run's wall time during which some runnable task waited for a CPU (/proc/pressure/cpu "some"). */
  cpuStallPercent?: number;
  /** With --replicas > 1: one entry per replica. */
  replicas?: ReplicaResult[];
}

let timeoutMsCounter = 6000;
/** Rewrites service 0's route with a new timeout (unique per edit, so every edit changes the config). */
function editRoute(files: string[]): void {
  timeoutMsCounter += 1;
  // Every replica's copy, one after another, as a deploy tool would.
  for (const file of files) writeFileSync(file, routeFile(0, shape, timeoutMsCounter));
}

/** The route versions the proxies of one replica last ACKed (sorted, distinct). */
async function routeVersions(adminPort: number): Promise<string> {
  const res = await fetch(`http://127.0.0.1:${adminPort}/api/proxies`);
  const body = (await res.json()) as { proxies: { types: Record<string, { ackedVersion?: string }> }[] };
  const versions = body.proxies.map((p) => p.types.route?.ackedVersion);
  if (versions.length === 0 || versions.some((v) => !v)) throw new Error('a proxy without an ACKed route version');
  return [...new Set(versions)].sort().join(',');
}

const sum = (xs: number[]) => xs.reduce((a, b) => a + b, 0);
const connectedProxies = (m: Metrics) => [...m].filter(([k]) => k.startsWith('signalbox_connected_proxies{')).reduce((a, [, v]) => a + v, 0);

async function runMode(mode: Mode, policyDirs: string[], changeFiles: string[]): Promise<RunResult> {
  const loadStart = os.loadavg();
  const stall0 = cpuStallUs();
  const wall0 = Date.now();
  console.log(
    `\n== ${mode.toUpperCase()}: starting Signalbox${R > 1 ? ` (${R} replicas on Consul ${consul!.httpAddr})` : ''} (load average ${loadStart.map((l) => l.toFixed(2)).join(' ')})`,
  );
  const servers: Server[] = [];
  const clients = new ClientProc();
  try {
    for (let i = 0; i < R; i++) {
      // Retried once: a concurrent `npm run build` rewriting dist/ can break one start.
      servers.push(
        await startSignalbox(policyDirs[i]!, mode, i).catch((e: Error) => {
          process.stderr.write(`bench: Signalbox did not start, retrying once: ${e.message.split('\n')[0]}\n`);
          return startSignalbox(policyDirs[i]!, mode, i);
        }),
      );
    }
    // Compile figures, RSS and lag of the single server (R = 1) or of replica 1.
    const server = servers[0]!;
    await sleep(1000); // let the policy watcher finish its initial scan
    let m = await scrape(server.adminPort);
    const compileColdMs = (compileSum(m) / compileCount(m)) * 1000;
    console.log(`   first (cold) compile: ${fmt(compileColdMs)} ms`);

    // Warm reloads with nobody connected: the compile alone, no push fan-out inside it.
    const warm: number[] = [];
    const warmCpu: number[] = [];
    for (let i = 0; i < 8; i++) {
      const befores = await Promise.all(servers.map((sv) => scrape(sv.adminPort)));
      const before = befores[0]!;
      const cpu0 = cpuMsOf(server.pid);
      editRoute(changeFiles);
      // Signalbox starts watching after its first compile; an edit made before the watcher is set
      // up is not seen. Write again if nothing happened after 5 s.
      let lastWrite = Date.now();
      m = await until('a reload', 60_000, async () => {
        const xs = await Promise.all(servers.map((sv) => scrape(sv.adminPort)));
        if (xs.every((x, i) => appliedReloads(x) > appliedReloads(befores[i]!))) return xs[0]!;
        if (Date.now() - lastWrite > 5000) {
          editRoute(changeFiles);
          lastWrite = Date.now();
        }
        return undefined;
      });
      warm.push((compileSum(m) - compileSum(before)) * 1000);
      warmCpu.push(cpuMsOf(server.pid) - cpu0);
      await sleep(200);
    }
    // The first reloads after start run colder code: the figure is the median of the last five.
    const compileWarmNoClientsMs = median(warm.slice(-5));
    const compileWarmCpuMs = median(warmCpu.slice(-5));
    console.log(
      `   warm compile, no clients: median of the last 5: ${fmt(compileWarmNoClientsMs)} ms (all: ${warm.map((x) => fmt(x)).join(', ')}); server CPU per reload (10 ms ticks, includes the file watch and two /metrics scrapes) median ${fmt(compileWarmCpuMs)} ms`,
    );

    // Idle baseline.
    await sleep(1500);
    await scrape(server.adminPort); // resets the lag histogram
    await sleep(1000);
    m = await scrape(server.adminPort);
    const idleLagP99Ms = metric(m, 'signalbox_process_nodejs_eventloop_lag_p99_seconds') * 1000;
    const rssBefores: number[] = [];
    for (const sv of servers) rssBefores.push(await rssMedian(sv.pid));
    const rssBefore = rssBefores[0]!;
    const heapBefore = metric(m, 'signalbox_process_nodejs_heap_size_used_bytes');

    // Connect.
    console.log(`   connecting ${N} ${mode} clients (${CONCURRENCY} at a time)…`);
    const tokens = tokensFor(server.dataDir);
    // Written by the server before its xDS port opens (so present once /readyz answered).
    const ca = TLS ? xdsCa(server.dataDir).toString('utf8') : undefined;
    const connectCpu0 = sum(servers.map((sv) => cpuMsOf(sv.pid)));
    const conn = await clients.request(
      {
        cmd: 'connect',
        targets: servers.map((sv) => `127.0.0.1:${sv.xdsPort}`),
        mode,
        clients: N,
        gateways: Array.from({ length: shape.gateways }, (_, g) => gatewayName(g)),
        tokens,
        ca,
        concurrency: CONCURRENCY,
        timeoutMs: 300_000,
      },
      'connected',
      310_000,
    );
    const connectServerCpuMs = sum(servers.map((sv) => cpuMsOf(sv.pid))) - connectCpu0;
    console.log(
      `   ${conn.streams} streams synced in ${fmt(conn.ms)} ms${conn.failed ? `, ${conn.failed} FAILED` : ''} (CPU server ${fmt(connectServerCpuMs)} ms, clients ${fmt(conn.cpuMs)} ms)`,
    );
    await sleep(3000);
    const perReplica = await Promise.all(servers.map((sv) => scrape(sv.adminPort)));
    m = perReplica[0]!;
    const replicaClients = perReplica.map(connectedProxies);
    const connected = sum(replicaClients);
    const rssAfters: number[] = [];
    for (const sv of servers) rssAfters.push(await rssMedian(sv.pid));
    const rssAfter = rssAfters[0]!;
    const heapAfter = metric(m, 'signalbox_process_nodejs_heap_size_used_bytes');
    // With replicas: replica 1's growth over replica 1's clients.
    const rssPerClientKiB = (rssAfter - rssBefore) / (R === 1 ? N : replicaClients[0]!);
    console.log(`   idle event-loop lag p99 before connecting: ${fmt(idleLagP99Ms, 1)} ms (the histogram samples every 10 ms; an idle loop reads about 10 ms)`);
    console.log(
      `   ${R === 1 ? 'server sees' : 'replicas see'} ${connected} proxies; RSS ${fmt(rssBefore / 1024, 1)} -> ${fmt(rssAfter / 1024, 1)} MiB: ${fmt(rssPerClientKiB, 1)} KiB per client; heap used ${fmt(heapBefore / 2 ** 20, 1)} -> ${fmt(heapAfter / 2 ** 20, 1)} MiB${R === 1 ? '' : ' (replica 1)'}`,
    );
    if (R > 1)
      for (const [i] of servers.entries())
        console.log(
          `   replica r${i + 1}: ${replicaClients[i]} proxies; RSS ${fmt(rssBefores[i]! / 1024, 1)} -> ${fmt(rssAfters[i]! / 1024, 1)} MiB: ${fmt((rssAfters[i]! - rssBefores[i]!) / replicaClients[i]!, 1)} KiB per client`,
        );

    // Changes.
    const rounds: Round[] = [];
    const pooled: number[] = [];
    for (let k = 0; k < K; k++) {
      await clients.request({ cmd: 'arm' }, 'armed', 10_000);
      const befores = await Promise.all(servers.map((sv) => scrape(sv.adminPort))); // also resets the lag histograms
      const before = befores[0]!;
      const cpu0 = servers.map((sv) => cpuMsOf(sv.pid));
      const t0 = wallNow();
      editRoute(changeFiles);
      const res = await clients.request({ cmd: 'wait', t0, timeoutMs: ROUND_TIMEOUT_MS }, 'converged', ROUND_TIMEOUT_MS + 10_000);
      const afters = await Promise.all(servers.map((sv) => scrape(sv.adminPort)));
      const after = afters[0]!;
      const replicaCpuMs = servers.map((sv, i) => cpuMsOf(sv.pid) - cpu0[i]!);
      const serverSideMs = await Promise.all(servers.map((sv) => lastRouteAck(sv.adminPort)))
        .then((ats) => Math.max(...ats) - t0)
        .catch(() => NaN);
      const versionsPerReplica = await Promise.all(servers.map((sv) => routeVersions(sv.adminPort))).catch(() => [] as string[]);
      const sameVersions = versionsPerReplica.length === R && versionsPerReplica.every((v) => v === versionsPerReplica[0]);
      const lat = [...res.latenciesMs].sort((a, b) => a - b);
      pooled.push(...lat);
      const r: Round = {
        convergenceMs: { min: lat[0] ?? NaN, p50: percentile(lat, 50), p99: percentile(lat, 99), max: lat[lat.length - 1] ?? NaN },
        appliedMs: Math.max(...afters.map((a) => metric(a, 'signalbox_config_last_applied_timestamp_seconds') * 1000)) - t0,
        serverSideMs,
        compileMs: compileCount(after) - compileCount(before) === 1 ? (compileSum(after) - compileSum(before)) * 1000 : NaN,
        lagP99Ms: Math.max(...afters.map((a) => metric(a, 'signalbox_process_nodejs_eventloop_lag_p99_seconds') * 1000)),
        lagMaxMs: Math.max(...afters.map((a) => metric(a, 'signalbox_process_nodejs_eventloop_lag_max_seconds') * 1000)),
        serverCpuMs: sum(replicaCpuMs),
        clientCpuMs: res.cpuMs,
        missing: res.missing,
        distinctVersions: Object.keys(res.versions).length,
        replicaCpuMs,
        sameVersions,
        routeVersions: R > 1 ? versionsPerReplica : undefined,
      };
      rounds.push(r);
      console.log(
        `   change ${String(k + 1).padStart(2)}: all ${lat.length} ACKed: p50 ${fmt(r.convergenceMs.p50)} p99 ${fmt(r.convergenceMs.p99)} max ${fmt(r.convergenceMs.max)} ms` +
          ` | server saw the last ACK at ${fmt(r.serverSideMs)} ms | reload applied at ${fmt(r.appliedMs)} ms (compile ${fmt(r.compileMs)} ms) | loop lag p99 ${fmt(r.lagP99Ms, 1)} max ${fmt(r.lagMaxMs, 1)} ms` +
          ` | CPU server ${fmt(r.serverCpuMs)} client ${fmt(r.clientCpuMs)} ms` +
          (r.missing ? ` | ${r.missing} DID NOT ACK within ${ROUND_TIMEOUT_MS} ms` : '') +
          (r.distinctVersions !== shape.gateways ? ` | ${r.distinctVersions} distinct route versions (expected ${shape.gateways})` : '') +
          (R > 1
            ? ` | CPU per replica ${replicaCpuMs.map((c) => fmt(c)).join(' / ')} ms | replicas serve ${r.sameVersions ? 'the same route versions' : `DIFFERENT route versions: ${versionsPerReplica.join(' | ')}`}`
            : ''),
      );
      await sleep(500);
    }
    const res: RunResult = {
      mode,
      tls: TLS,
      clients: N,
      connectedStreams: conn.streams,
      connectMs: conn.ms,
      connectServerCpuMs,
      connectClientCpuMs: conn.cpuMs,
      compileColdMs,
      compileWarmNoClientsMs,
      compileWarmCpuMs,
      rssBeforeMiB: rssBefore / 1024,
      rssAfterMiB: rssAfter / 1024,
      rssPerClientKiB,
      heapBeforeMiB: heapBefore / 2 ** 20,
      heapAfterMiB: heapAfter / 2 ** 20,
      idleLagP99Ms,
      rounds,
      summary: {
        p50: median(rounds.map((r) => r.convergenceMs.p50)),
        p99: median(rounds.map((r) => r.convergenceMs.p99)),
        max: Math.max(...rounds.map((r) => r.convergenceMs.max)),
        compileDuringPushMs: median(rounds.map((r) => r.compileMs)),
        lagP99Ms: median(rounds.map((r) => r.lagP99Ms)),
        lagMaxMs: Math.max(...rounds.map((r) => r.lagMaxMs)),
        appliedMs: median(rounds.map((r) => r.appliedMs)),
        pooled: (() => {
          const all = pooled.sort((a, b) => a - b);
          return { samples: all.length, p50: percentile(all, 50), p99: percentile(all, 99) };
        })(),
        serverSideMs: median(rounds.map((r) => r.serverSideMs)),
      },
      load: { start: loadStart, end: os.loadavg() },
      cpuStallPercent: stall0 === undefined ? undefined : ((cpuStallUs()! - stall0) / 1000 / (Date.now() - wall0)) * 100,
      replicas:
        R === 1
          ? undefined
          : servers.map((_, i) => ({
              replica: `r${i + 1}`,
              clients: replicaClients[i]!,
              rssBeforeMiB: rssBefores[i]! / 1024,
              rssAfterMiB: rssAfters[i]! / 1024,
              rssPerClientKiB: (rssAfters[i]! - rssBefores[i]!) / replicaClients[i]!,
              cpuPerChangeMs: median(rounds.map((r) => r.replicaCpuMs[i]!)),
            })),
    };
    await clients.request({ cmd: 'close' }, 'closed', 30_000).catch(() => undefined);
    return res;
  } catch (e) {
    for (const [i, server] of servers.entries()) {
      const out = server.output.join('').trim();
      if (out) process.stderr.write(`--- Signalbox${R > 1 ? ` r${i + 1}` : ''} output (last lines) ---\n${out.split('\n').slice(-40).join('\n')}\n`);
    }
    throw e;
  } finally {
    await stopChild(clients.proc, 2000);
    for (const server of servers) await stopChild(server.proc);
  }
}

// ---------------------------------------------------------------------------------------------

/** Microseconds some task waited for a CPU since boot (Linux PSI), or undefined without PSI. */
function cpuStallUs(): number | undefined {
  try {
    const m = /^some .*total=(\d+)/m.exec(readFileSync('/proc/pressure/cpu', 'utf8'));
    return m ? Number(m[1]) : undefined;
  } catch {
    return undefined;
  }
}

function machine() {
  const cpu = /model name\s*:\s*(.*)/.exec(readFileSync('/proc/cpuinfo', 'utf8'))?.[1] ?? 'unknown';
  return { nproc: os.availableParallelism(), cpu, memGiB: os.totalmem() / 2 ** 30, node: process.version, load: os.loadavg() };
}

async function main(): Promise<void> {
  const policyDir = path.join(tmp, 'policies');
  const { changeFile } = writePolicyDir(policyDir, shape);
  // Each replica its own copy of the policy directory, as replicas in production have.
  const policyDirs = [policyDir];
  for (let i = 1; i < R; i++) {
    const own = path.join(tmp, `policies-r${i + 1}`);
    cpSync(policyDir, own, { recursive: true });
    policyDirs.push(own);
  }
  const changeFiles = policyDirs.map((d) => path.join(d, path.relative(policyDir, changeFile)));
  if (R > 1) {
    consul = await startConsul().catch((e: Error) => {
      throw new Error(`--replicas ${R} needs a real Consul agent, which could not be started: ${e.message}`);
    });
  }
  const mach = machine();
  console.log(
    `signalbox xDS benchmark: ${N} clients, ${shape.routes} routes / ${shape.services} services / ${shape.gateways} gateways, ${K} changes, modes ${modes.join(' + ')}, xDS ${TLS ? 'over TLS' : 'in plain text (--xds-insecure)'}`,
  );
  console.log(
    `machine: ${mach.nproc} CPUs (${mach.cpu}), ${fmt(mach.memGiB, 1)} GiB, node ${mach.node}, load average ${mach.load.map((l) => l.toFixed(2)).join(' ')}`,
  );
  const results: RunResult[] = [];
  for (const mode of modes) results.push(await runMode(mode, policyDirs, changeFiles));

  console.log(
    `\n== Summary, xDS ${TLS ? 'over TLS' : 'in plain text (--xds-insecure)'} (per change: p50 / p99 / max over clients; shown: the median change, max: the worst change)`,
  );
  console.log(
    '| mode | clients | compile ms: cold / warm, no clients / during pushes | RSS per client | convergence ms: p50 / p99 / max | pooled p50 / p99 | server saw last ACK | reload applied | loop lag ms: p99 / max | load avg | CPU stall |',
  );
  console.log('| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |');
  for (const r of results) {
    console.log(
      `| ${r.mode} | ${r.connectedStreams} | ${fmt(r.compileColdMs)} / ${fmt(r.compileWarmNoClientsMs)} / ${fmt(r.summary.compileDuringPushMs)} | ${fmt(r.rssPerClientKiB, 1)} KiB | ${fmt(r.summary.p50)} / ${fmt(r.summary.p99)} / ${fmt(r.summary.max)} | ${fmt(r.summary.pooled.p50)} / ${fmt(r.summary.pooled.p99)} | ${fmt(r.summary.serverSideMs)} ms | ${fmt(r.summary.appliedMs)} ms | ${fmt(r.summary.lagP99Ms, 1)} / ${fmt(r.summary.lagMaxMs, 1)} | ${r.load.start[0]!.toFixed(1)} -> ${r.load.end[0]!.toFixed(1)} | ${r.cpuStallPercent === undefined ? 'n/a' : `${r.cpuStallPercent.toFixed(0)} %`} |`,
    );
  }
  if (R > 1) {
    console.log(`\n== Per replica (${R} replicas sharing state in Consul; CPU per change: median over the changes)`);
    console.log('| mode | replica | clients | RSS MiB before -> after | RSS per client | CPU per change | same route versions on every replica |');
    console.log('| --- | --- | --- | --- | --- | --- | --- |');
    for (const r of results)
      for (const x of r.replicas ?? [])
        console.log(
          `| ${r.mode} | ${x.replica} | ${x.clients} | ${fmt(x.rssBeforeMiB, 1)} -> ${fmt(x.rssAfterMiB, 1)} | ${fmt(x.rssPerClientKiB, 1)} KiB | ${fmt(x.cpuPerChangeMs)} ms | ${r.rounds.every((k) => k.sameVersions) ? `yes, all ${r.rounds.length} changes` : `NO (${r.rounds.filter((k) => !k.sameVersions).length} changes differ)`} |`,
        );
  }
  console.log(
    `load average at the end: ${os
      .loadavg()
      .map((l) => l.toFixed(2))
      .join(' ')}`,
  );
  if (flags.json) writeFileSync(flags.json, `${JSON.stringify({ machine: mach, shape, clients: N, changes: K, tls: TLS, replicas: R, results }, null, 2)}\n`);
}

main()
  .then(() => {
    clearTimeout(hardTimer);
    cleanup();
    process.exit(0);
  })
  .catch((e: Error) => {
    process.stderr.write(`bench failed: ${e.stack ?? e.message}\n`);
    cleanup();
    process.exit(1);
  });
