// `npm run bench:ratelimit`: what a global rate limit adds to a request, through a real Envoy,
// the rate-limit service embedded in a real `signalbox serve` child process, and a real Redis
// (all on loopback; not a test).
//
// One gateway listener, three routes to one small upstream (in this process), each under a
// RateLimitPolicy with the same local bucket (far above the load, so it never refuses):
//   local  - the local bucket only: the baseline;
//   global - the local bucket and a global limit per x-api-key (far above the load: every request
//            is counted in Redis and allowed), 100 keys in turn;
//   flood  - the local bucket and a global limit of 10 per minute for everyone: after the first 10,
//            every request is over the limit and answered 429 from the service's cache of keys
//            over their limit (no Redis command).
// For each, after a warm-up, an open loop at --rate requests/s for --seconds (latency measured from
// the moment a request is written), --rounds times in turn. Reported per phase: p50 / p99, the
// Redis commands per request (Redis's own INFO commandstats: EVALSHA + EVAL calls), and the CPU
// the `signalbox serve` process used (its own process metrics), and Redis's (INFO cpu). The added
// p99 is global minus local; the service's CPU is serve's CPU in a global phase minus in a local
// phase (serve does nothing else meanwhile: no policy change, no proxy joining), per second and per
// call (serve's CPU over the phase's requests: it moves less with other work on the machine than
// the p99 does).
//
// Flags: --seconds S (10) --rounds R (3) --rate R (1000) --routes local,global,flood --json FILE
// --serve-node-options OPTS: NODE_OPTIONS for the serve child only (e.g. --max-semi-space-size=N).
// --redis-unix: serve reaches Redis over its Unix socket (unix:///…) instead of loopback TCP.
// --gc: measures garbage instead of time (bench/gc-probe.ts preloaded into serve): per phase, the
// bytes serve allocated per request, its collections per 10,000 requests, and where the bytes came
// from. These do not move with the load on the machine, where p99 does; the latencies of a --gc
// run are not comparable (the sampling profiler costs CPU).
// Everything runs on loopback; every phase is bounded in time and count, and the run ends by itself.
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import http from 'node:http';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { performance } from 'node:perf_hooks';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { parseArgs } from 'node:util';
import { startEnvoy, type Envoy } from '../test/helpers/envoy.js';
import { freePort, waitFor } from '../test/helpers/net.js';
import { startRedis, type RedisServer } from '../test/helpers/redis.js';
import { startSignalbox, type SignalboxProcess } from '../test/helpers/signalbox.js';
import { percentile } from './lib.js';
import { toggleProbe } from './gc-report.js';

const { values: flags } = parseArgs({
  options: {
    seconds: { type: 'string' },
    rounds: { type: 'string' },
    rate: { type: 'string' },
    routes: { type: 'string' },
    gc: { type: 'boolean' },
    'serve-node-options': { type: 'string' },
    'redis-unix': { type: 'boolean' },
    json: { type: 'string' },
  },
});
const SECONDS = Math.min(60, Math.max(1, Number(flags.seconds ?? 10)));
const ROUNDS = Math.min(5, Math.max(1, Number(flags.rounds ?? 3)));
const RATE = Math.min(5_000, Math.max(10, Number(flags.rate ?? 1000)));
const KEYS = 100;
const ROUTES = (flags.routes ?? 'local,global,flood').split(',').map((r) => `/${r.trim()}`);
for (const r of ROUTES) if (!['/local', '/global', '/flood'].includes(r)) throw new Error(`--routes: unknown route ${r} (local, global, flood)`);

/** A lean keep-alive HTTP/1.1 connection, one request in flight (node's client costs far more CPU). */
class Conn {
  private socket: net.Socket;
  private buf: Buffer = Buffer.alloc(0);
  private waiting?: (status: number) => void;
  private ready: Promise<void>;
  constructor(port: number) {
    this.socket = net.connect(port, '127.0.0.1');
    this.socket.setNoDelay(true);
    this.ready = new Promise((resolve, reject) => {
      this.socket.once('connect', () => resolve());
      this.socket.once('error', reject);
    });
    this.socket.on('data', (d: Buffer) => {
      this.buf = this.buf.length ? Buffer.concat([this.buf, d]) : d;
      for (;;) {
        const end = this.buf.indexOf('\r\n\r\n');
        if (end < 0) return;
        const head = this.buf.subarray(0, end).toString('latin1');
        const m = /\r\ncontent-length:\s*(\d+)/i.exec(head);
        const total = end + 4 + (m ? Number(m[1]) : 0);
        if (this.buf.length < total) return;
        this.buf = this.buf.subarray(total);
        const w = this.waiting;
        this.waiting = undefined;
        w?.(Number(head.slice(9, 12)));
      }
    });
    const fail = () => {
      const w = this.waiting;
      this.waiting = undefined;
      w?.(0);
    };
    this.socket.on('error', fail);
    this.socket.on('close', fail);
  }
  busy = false;
  async get(p: string, key: string): Promise<number> {
    await this.ready;
    return new Promise((resolve) => {
      this.waiting = resolve;
      this.socket.write(`GET ${p} HTTP/1.1\r\nhost: bench\r\nx-api-key: ${key}\r\n\r\n`);
    });
  }
  close(): void {
    this.socket.destroy();
  }
}

interface Phase {
  route: string;
  requests: number;
  p50: number;
  p99: number;
  statuses: Record<string, number>;
  redisCommandsPerRequest: number;
  serveCpuMsPerSecond: number;
  /** serve's CPU divided by the requests of the phase: less sensitive to a busy machine than p99. */
  serveCpuMsPerRequest: number;
  redisCpuMsPerSecond: number;
  /** With --gc: bytes serve allocated per request, and its young-generation collections per 10,000 requests. */
  garbageBytesPerRequest?: number;
  minorGcPer10k?: number;
}

async function openLoop(conns: Conn[], route: string, seconds: number): Promise<{ lat: number[]; statuses: Record<string, number>; took: number }> {
  const lat: number[] = [];
  const statuses: Record<string, number> = {};
  const pending: Promise<void>[] = [];
  const total = Math.round(RATE * seconds);
  let sent = 0;
  const t0 = performance.now();
  while (sent < total) {
    const due = Math.min(total, Math.floor(((performance.now() - t0) * RATE) / 1000));
    while (sent < due) {
      const c = conns.find((x) => !x.busy);
      if (!c) break; // every connection busy: the request waits for the next tick (counted late)
      c.busy = true;
      const s = performance.now();
      const key = `key-${sent % KEYS}`;
      sent++;
      pending.push(
        c.get(route, key).then((status) => {
          c.busy = false;
          lat.push(performance.now() - s);
          statuses[status] = (statuses[status] ?? 0) + 1;
        }),
      );
    }
    await new Promise((r) => setTimeout(r, 1));
  }
  await Promise.all(pending);
  return { lat: lat.sort((a, b) => a - b), statuses, took: (performance.now() - t0) / 1000 };
}

function metric(text: string, name: string): number {
  const m = new RegExp(`^${name} ([0-9.e+-]+)$`, 'm').exec(text);
  return m ? Number(m[1]) : NaN;
}

/** serve's garbage collection between two scrapes, by kind: count and total ms. */
function gcMs(m0: string, m1: string): string {
  const kinds = ['minor', 'major', 'incremental'];
  return kinds
    .map((k) => {
      const series = (t: string, what: string) => metric(t, `signalbox_process_nodejs_gc_duration_seconds_${what}\\{kind="${k}"\\}`);
      const n = series(m1, 'count') - series(m0, 'count');
      const ms = (series(m1, 'sum') - series(m0, 'sum')) * 1000;
      return `${k} ${Number.isNaN(n) ? 0 : n}x ${Number.isNaN(ms) ? 0 : ms.toFixed(0)} ms`;
    })
    .join(', ');
}

/**
 * Envoy's own timing of the calls to the rate-limit service (the cluster's upstream_rq_time over
 * its last stats flush interval, 5 s): what the call costs from Envoy's side, apart from the rest
 * of the request. Envoy's histogram buckets are coarse (0.5, 1, 5, 10 ms), its quantiles
 * interpolated between them.
 */
async function rateLimitCallTime(envoy: Envoy | undefined): Promise<{ p50: number; p99: number } | undefined> {
  if (!envoy) return undefined;
  type Histograms = { histograms?: { supported_quantiles: number[]; computed_quantiles: { name: string; values: { interval: number | null }[] }[] } };
  const stats = await envoy.adminJson<{ stats: Histograms[] }>('/stats?format=json&filter=^cluster%5C.signalbox%5C.ratelimit%5C.upstream_rq_time$');
  const h = stats.stats.find((x) => x.histograms)?.histograms;
  const q = h?.computed_quantiles.find((c) => c.name === 'cluster.signalbox.ratelimit.upstream_rq_time');
  if (!h || !q) return undefined;
  const at = (quantile: number) => q.values[h.supported_quantiles.indexOf(quantile)]?.interval ?? Number.NaN;
  return { p50: at(50), p99: at(99) };
}

async function redisScripts(redis: RedisServer): Promise<number> {
  const info = await redis.command(['INFO', 'commandstats']);
  let n = 0;
  for (const m of info.matchAll(/^cmdstat_(?:evalsha|eval):calls=(\d+)/gm)) n += Number(m[1]);
  return n;
}

async function redisCpu(redis: RedisServer): Promise<number> {
  const info = await redis.command(['INFO', 'cpu']);
  return Number(/used_cpu_user:([0-9.]+)/.exec(info)?.[1] ?? NaN) + Number(/used_cpu_sys:([0-9.]+)/.exec(info)?.[1] ?? NaN);
}

async function main(): Promise<void> {
  const loadBefore = os.loadavg();
  const upstream = http.createServer((_req, res) => {
    res.writeHead(200, { 'content-length': '2' });
    res.end('ok');
  });
  upstream.keepAliveTimeout = 60_000;
  await new Promise<void>((r) => upstream.listen(0, '127.0.0.1', r));
  const upPort = (upstream.address() as net.AddressInfo).port;
  const gwPort = await freePort();
  const redis = await startRedis({ unixSocket: flags['redis-unix'] === true });
  const dir = mkdtempSync(path.join(os.tmpdir(), 'sb-bench-rl-'));
  const local = '{ requests: 1000000, per: 1s }';
  writeFileSync(
    path.join(dir, 'bench.yaml'),
    `apiVersion: signalbox.dev/v1alpha1
kind: Service
metadata: { name: up }
spec: { port: 8080, endpoints: [ { address: 127.0.0.1, port: ${upPort} } ] }
---
apiVersion: signalbox.dev/v1alpha1
kind: Gateway
metadata: { name: bench }
spec: { listeners: [ { name: http, port: ${gwPort}, protocol: HTTP } ] }
---
apiVersion: signalbox.dev/v1alpha1
kind: HTTPRoute
metadata: { name: bench }
spec:
  parentRefs: [ { kind: Gateway, name: bench } ]
  rules:
    - { name: local, matches: [ { path: { value: /local } } ], backendRefs: [ { name: up } ] }
    - { name: global, matches: [ { path: { value: /global } } ], backendRefs: [ { name: up } ] }
    - { name: flood, matches: [ { path: { value: /flood } } ], backendRefs: [ { name: up } ] }
---
apiVersion: signalbox.dev/v1alpha1
kind: RateLimitPolicy
metadata: { name: local-only }
spec: { targetRef: { kind: HTTPRoute, name: bench, sectionName: local }, local: ${local} }
---
apiVersion: signalbox.dev/v1alpha1
kind: RateLimitPolicy
metadata: { name: global }
spec:
  targetRef: { kind: HTTPRoute, name: bench, sectionName: global }
  local: ${local}
  global: { limits: [ { requests: 1000000000, per: minute, by: { header: x-api-key } } ] }
---
apiVersion: signalbox.dev/v1alpha1
kind: RateLimitPolicy
metadata: { name: flood }
spec:
  targetRef: { kind: HTTPRoute, name: bench, sectionName: flood }
  local: ${local}
  global: { limits: [ { requests: 10, per: minute } ] }
`,
  );
  // SIGNALBOX_GC_PROBE_DIR set: the probe's reports (and with SIGNALBOX_GC_PROBE_RAW=1 its raw heap profiles) stay there.
  const keepProbe = process.env.SIGNALBOX_GC_PROBE_DIR;
  const probeDir = flags.gc ? (keepProbe ?? mkdtempSync(path.join(os.tmpdir(), 'sb-bench-gc-'))) : undefined;
  let sb: SignalboxProcess | undefined;
  let envoy: Envoy | undefined;
  const conns: Conn[] = [];
  try {
    const probeModule = path.join(path.dirname(fileURLToPath(import.meta.url)), 'gc-probe.js');
    sb = await startSignalbox({
      policies: dir,
      env: {
        NODE_OPTIONS: [flags['serve-node-options'] ?? '', probeDir ? `--import=${pathToFileURL(probeModule).href}` : ''].join(' ').trim(),
        ...(probeDir ? { SIGNALBOX_GC_PROBE_DIR: probeDir } : {}),
      },
      extraArgs: ['--ratelimit-port', '0', '--redis-url', redis.socketUrl ?? redis.url, '--log-level', 'warn', '--access-log-sampling', 'off'],
    });
    envoy = await startEnvoy({ name: 'bench-rl', bootstrapYaml: await sb.bootstrap({ gateway: 'bench', id: 'bench-rl' }) });
    const probe = new Conn(gwPort);
    await waitFor(async () => (await probe.get('/global', 'probe').catch(() => 0)) === 200, { what: 'gateway serving /global', timeoutMs: 30_000 });
    probe.close();
    for (let i = 0; i < 64; i++) conns.push(new Conn(gwPort));
    const phases: Phase[] = [];
    const routes = ROUTES;
    let probes = 0;
    for (const r of routes) await openLoop(conns, r, 2); // warm-up
    for (let round = 0; round < ROUNDS; round++) {
      for (const route of routes) {
        const m0 = await sb.adminText('/metrics');
        const s0 = await redisScripts(redis);
        const c0 = await redisCpu(redis);
        if (probeDir) await toggleProbe(sb.pid!, probeDir, probes, false);
        const run = await openLoop(conns, route, SECONDS);
        const garbage = probeDir ? await toggleProbe(sb.pid!, probeDir, probes++, true) : undefined;
        if (garbage) {
          const minor = garbage.collections.minor ?? { count: 0, ms: 0, maxMs: 0 };
          const major = garbage.collections.major ?? { count: 0, ms: 0, maxMs: 0 };
          const per = (x: number) => ((x * 10_000) / run.lat.length).toFixed(1);
          console.log(
            `round ${round + 1} ${route.padEnd(7)} garbage: ${(garbage.bytes / run.lat.length / 1024).toFixed(2)} KiB allocated per request in serve (${(garbage.bytes / 2 ** 20).toFixed(0)} MiB over ${run.lat.length} requests); ` +
              `per 10,000 requests ${per(minor.count)} minor GCs (${per(minor.ms)} ms, longest ${minor.maxMs.toFixed(1)} ms), ${per(major.count)} major (${per(major.ms)} ms); ` +
              `each scavenge: ${(garbage.young.newSpaceBefore / 2 ** 20).toFixed(1)} MiB in use before, ${(garbage.young.survived / 1024).toFixed(0)} KiB survived, ${(garbage.young.promoted / 1024).toFixed(0)} KiB promoted, ${garbage.young.costMs.toFixed(2)} ms`,
          );
          const share = (b: number) => `${((100 * b) / garbage.bytes).toFixed(1).padStart(5)} %  ${(b / run.lat.length).toFixed(0).padStart(5)} B/req`;
          console.log(`  by the innermost frame in signalbox or a dependency:`);
          for (const [o, b] of garbage.byOwner.slice(0, 15)) console.log(`    ${share(b)}  ${o}`);
          console.log(`  by allocating function:`);
          for (const [f, b] of garbage.byFunction.slice(0, 15)) console.log(`    ${share(b)}  ${f}`);
        }
        const m1 = await sb.adminText('/metrics');
        const s1 = await redisScripts(redis);
        const c1 = await redisCpu(redis);
        // The service's own Redis round trips (its last 512 commands), to tell Redis's share of the tail.
        const redisRtt = ((await sb.admin('/api/ratelimit')) as { redis?: { latencyMs?: { p50: number; p99: number; max: number } } }).redis?.latencyMs;
        const envoyRtt = await rateLimitCallTime(envoy);
        const cpu = metric(m1, 'signalbox_process_process_cpu_seconds_total') - metric(m0, 'signalbox_process_process_cpu_seconds_total');
        const phase: Phase = {
          route,
          requests: run.lat.length,
          p50: percentile(run.lat, 50),
          p99: percentile(run.lat, 99),
          statuses: run.statuses,
          redisCommandsPerRequest: (s1 - s0) / run.lat.length,
          serveCpuMsPerSecond: (cpu * 1000) / run.took,
          serveCpuMsPerRequest: (cpu * 1000) / run.lat.length,
          redisCpuMsPerSecond: ((c1 - c0) * 1000) / run.took,
          ...(garbage
            ? { garbageBytesPerRequest: garbage.bytes / run.lat.length, minorGcPer10k: ((garbage.collections.minor?.count ?? 0) * 10_000) / run.lat.length }
            : {}),
        };
        phases.push(phase);
        console.log(
          `round ${round + 1} ${route.padEnd(7)} ${phase.requests} req at ${RATE}/s: p50 ${phase.p50.toFixed(3)} ms, p99 ${phase.p99.toFixed(3)} ms, statuses ${JSON.stringify(phase.statuses)}, Redis commands/request ${phase.redisCommandsPerRequest.toFixed(3)}, serve CPU ${phase.serveCpuMsPerSecond.toFixed(0)} ms/s (${phase.serveCpuMsPerRequest.toFixed(3)} ms/request), Redis CPU ${phase.redisCpuMsPerSecond.toFixed(0)} ms/s${route === '/global' && redisRtt ? `, Redis round trip in the service (last 512) p50 ${redisRtt.p50.toFixed(3)} / p99 ${redisRtt.p99.toFixed(3)} / max ${redisRtt.max.toFixed(3)} ms` : ''}${route !== '/local' ? `, serve's event loop over the phase p99 ${(metric(m1, 'signalbox_process_nodejs_eventloop_lag_p99_seconds') * 1000).toFixed(2)} / max ${(metric(m1, 'signalbox_process_nodejs_eventloop_lag_max_seconds') * 1000).toFixed(2)} ms, GC ${gcMs(m0, m1)}, heap used ${(metric(m0, 'signalbox_process_nodejs_heap_size_used_bytes') / 2 ** 20).toFixed(1)} -> ${(metric(m1, 'signalbox_process_nodejs_heap_size_used_bytes') / 2 ** 20).toFixed(1)} MiB` : ''}${route !== '/local' && envoyRtt ? `, the call as Envoy timed it (its histogram, last flush interval) p50 ${envoyRtt.p50} / p99 ${envoyRtt.p99} ms` : ''}`,
        );
      }
    }
    const med = (route: string, f: (p: Phase) => number) => {
      const xs = phases
        .filter((p) => p.route === route)
        .map(f)
        .sort((a, b) => a - b);
      const mid = Math.floor(xs.length / 2);
      return xs.length % 2 ? xs[mid]! : (xs[mid - 1]! + xs[mid]!) / 2;
    };
    const summary = {
      rate: RATE,
      seconds: SECONDS,
      rounds: ROUNDS,
      cores: os.cpus().length,
      loadBefore: loadBefore.map((x) => Number(x.toFixed(2))),
      loadAfter: os.loadavg().map((x) => Number(x.toFixed(2))),
      p99LocalMs: med('/local', (p) => p.p99),
      p99GlobalMs: med('/global', (p) => p.p99),
      addedP99Ms: med('/global', (p) => p.p99) - med('/local', (p) => p.p99),
      addedP50Ms: med('/global', (p) => p.p50) - med('/local', (p) => p.p50),
      redisCommandsPerRequest: med('/global', (p) => p.redisCommandsPerRequest),
      floodRedisCommandsPerRequest: med('/flood', (p) => p.redisCommandsPerRequest),
      serviceCpuMsPerSecond: med('/global', (p) => p.serveCpuMsPerSecond) - med('/local', (p) => p.serveCpuMsPerSecond),
      floodServiceCpuMsPerSecond: med('/flood', (p) => p.serveCpuMsPerSecond) - med('/local', (p) => p.serveCpuMsPerSecond),
      serviceCpuMsPerCall: med('/global', (p) => p.serveCpuMsPerRequest) - med('/local', (p) => p.serveCpuMsPerRequest),
      floodServiceCpuMsPerCall: med('/flood', (p) => p.serveCpuMsPerRequest) - med('/local', (p) => p.serveCpuMsPerRequest),
      redisCpuMsPerSecond: med('/global', (p) => p.redisCpuMsPerSecond),
      phases,
    };
    console.log(
      `\nsummary (medians of ${ROUNDS} rounds, ${RATE} req/s, ${SECONDS} s each; load average before ${summary.loadBefore.join(' ')}, after ${summary.loadAfter.join(' ')}, ${summary.cores} cores):\n` +
        `  p99 local-only ${summary.p99LocalMs.toFixed(3)} ms, local + global ${summary.p99GlobalMs.toFixed(3)} ms: added p99 ${summary.addedP99Ms.toFixed(3)} ms (added p50 ${summary.addedP50Ms.toFixed(3)} ms)\n` +
        `  Redis commands per request: ${summary.redisCommandsPerRequest.toFixed(3)} (flood of one key over its limit: ${summary.floodRedisCommandsPerRequest.toFixed(3)})\n` +
        `  rate-limit service CPU (serve's CPU, global minus local-only): ${summary.serviceCpuMsPerSecond.toFixed(0)} ms per second = ${(summary.serviceCpuMsPerSecond / 10).toFixed(1)} % of a core at ${RATE} req/s (flood: ${summary.floodServiceCpuMsPerSecond.toFixed(0)} ms/s); Redis ${summary.redisCpuMsPerSecond.toFixed(0)} ms/s\n` +
        `  rate-limit service CPU per call (serve's CPU per request, global minus local-only): ${summary.serviceCpuMsPerCall.toFixed(3)} ms (flood: ${summary.floodServiceCpuMsPerCall.toFixed(3)} ms)`,
    );
    if (flags.json) writeFileSync(flags.json, JSON.stringify(summary, null, 2));
  } finally {
    for (const c of conns) c.close();
    await envoy?.stop();
    await sb?.kill();
    await redis.stop();
    upstream.closeAllConnections();
    upstream.close();
    rmSync(dir, { recursive: true, force: true });
    if (probeDir && !keepProbe) rmSync(probeDir, { recursive: true, force: true });
  }
}

main().then(
  () => process.exit(0),
  (e: Error) => {
    console.error(e);
    process.exit(1);
  },
);
