// `npm run bench:consul`: Consul discovery benchmark (not a test).
//
// Starts a real Consul agent (-dev, the pinned build of scripts/provision-consul.sh) and registers
// S services x I instances (default 200 x 10) with TTL checks; starts `signalbox serve
// --consul-addr` as a child process (so its CPU is its own) with one Service per Consul service
// and one gateway routing to all of them; connects C simulated Delta ADS clients (default 200)
// that subscribe like Envoy (CDS/LDS wildcard, EDS for every cluster, RDS) and ACK everything,
// over TLS (the server's default: each client verifies it with the CA in <data-dir>/xds-ca.pem)
// and each presenting a token for the gateway (gRPC metadata x-signalbox-token).
// Then, for D seconds (default 60), it flips the TTL check of a random instance R times a second
// (default 10; a service is not flipped again before the previous flip of it converged) and
// measures, per flip:
//   - Consul change -> ALL clients ACKed an EDS response carrying that service's
//     ClusterLoadAssignment: p50 / p99 / max (measured from just before the PUT to Consul);
// and over the window: HTTP requests per second Signalbox made to Consul
// (signalbox_consul_requests_total), Signalbox CPU (utime+stime from /proc, percent of one core,
// and its user / system split), the CPU of this process (the simulated clients, which share the
// machine), and the clients' own view (responses and ACKs).
//
// Flags: --services S --instances I --clients C --duration-s D --rate R --json FILE
//        --server-node-args="--cpu-prof --cpu-prof-dir=DIR" (profile the Signalbox process)
// Consul's per-client connection limit (limits.http_max_conns_per_client, default 200) must allow
// 2 blocking queries per service: the agent is started with 1000 here (see docs/consul.md).
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { provisionConsul } from '../test/helpers/consul.js';
import { AdsClient, gatewayNode, type DeltaClientStream } from '../test/helpers/xds-client.js';
import { signTokenSync, xdsCa } from '../test/helpers/credentials.js';
import { TypeUrl } from '../src/xds/resources/type-urls.js';
import { freePort } from '../test/helpers/net.js';
import { cpuTimes, percentile } from './lib.js';

const here = path.dirname(fileURLToPath(import.meta.url));
const ROOT = path.resolve(here, '..', '..');
const BIN = path.join(ROOT, 'bin', 'signalbox.js');

const { values: flags } = parseArgs({
  options: {
    services: { type: 'string', default: '200' },
    instances: { type: 'string', default: '10' },
    clients: { type: 'string', default: '200' },
    'duration-s': { type: 'string', default: '60' },
    rate: { type: 'string', default: '10' },
    json: { type: 'string' },
    'server-node-args': { type: 'string', default: '' },
    help: { type: 'boolean', default: false },
  },
});
if (flags.help) {
  process.stdout.write('usage: node dist/bench/consul.js [--services 200] [--instances 10] [--clients 200] [--duration-s 60] [--rate 10] [--json FILE]\n');
  process.exit(0);
}
const S = Number(flags.services);
const I = Number(flags.instances);
const C = Number(flags.clients);
const DURATION_MS = Number(flags['duration-s']) * 1000;
const RATE = Number(flags.rate);

const tmp = mkdtempSync(path.join(os.tmpdir(), 'sb-bench-consul-'));
const children = new Set<ChildProcess>();
function cleanup(): void {
  for (const c of children) c.kill('SIGKILL');
  rmSync(tmp, { recursive: true, force: true });
}
process.on('exit', cleanup);
process.on('SIGINT', () => process.exit(130));

const svc = (i: number) => `svc-${String(i).padStart(3, '0')}`;
const inst = (s: number, k: number) => `${svc(s)}-${k}`;

async function until(what: string, timeoutMs: number, f: () => Promise<boolean> | boolean, everyMs = 50): Promise<void> {
  const end = Date.now() + timeoutMs;
  for (;;) {
    try {
      if (await f()) return;
    } catch {
      // not yet
    }
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, everyMs));
  }
}

async function metrics(adminPort: number): Promise<Map<string, number>> {
  const text = await (await fetch(`http://127.0.0.1:${adminPort}/metrics`)).text();
  const out = new Map<string, number>();
  for (const line of text.split('\n')) {
    if (!line || line.startsWith('#')) continue;
    const sp = line.lastIndexOf(' ');
    out.set(line.slice(0, sp), Number(line.slice(sp + 1)));
  }
  return out;
}
const consulRequests = (m: Map<string, number>) => [...m].filter(([k]) => k.startsWith('signalbox_consul_requests_total')).reduce((a, [, v]) => a + v, 0);

async function startConsulAgent(): Promise<{ addr: string; proc: ChildProcess }> {
  const bin = await provisionConsul();
  const [http, server, lan, wan] = [await freePort(), await freePort(), await freePort(), await freePort()];
  const args = [
    'agent',
    '-dev',
    '-node',
    'bench',
    '-bind',
    '127.0.0.1',
    '-client',
    '127.0.0.1',
    '-http-port',
    String(http),
    '-server-port',
    String(server),
    '-serf-lan-port',
    String(lan),
    '-serf-wan-port',
    String(wan),
    '-dns-port',
    '-1',
    '-grpc-port',
    '-1',
    '-grpc-tls-port',
    '-1',
    '-log-level',
    'warn',
    '-hcl',
    'limits { http_max_conns_per_client = 1000 }',
  ];
  const proc = spawn(bin, args, { stdio: ['ignore', 'ignore', 'pipe'] });
  children.add(proc);
  const addr = `127.0.0.1:${http}`;
  await until('consul leader', 30_000, async () => {
    const r = await fetch(`http://${addr}/v1/status/leader`);
    return r.ok && ((await r.json()) as string) !== '';
  });
  await until(
    'consul catalog writable',
    30_000,
    async () =>
      (await fetch(`http://${addr}/v1/catalog/node/bench`)).ok &&
      ((await (await fetch(`http://${addr}/v1/catalog/node/bench`)).json()) as { Node?: unknown } | null)?.Node != null,
  );
  return { addr, proc };
}

async function main(): Promise<void> {
  const machine = `${os.cpus().length} x ${os.cpus()[0]?.model ?? '?'}, Node ${process.version}`;
  process.stderr.write(`bench:consul ${S} services x ${I} instances, ${C} delta clients, ${RATE} flips/s for ${DURATION_MS / 1000} s on ${machine}\n`);
  const consul = await startConsulAgent();
  const put = async (p: string, body?: unknown) => {
    const r = await fetch(`http://${consul.addr}${p}`, { method: 'PUT', body: body === undefined ? undefined : JSON.stringify(body) });
    if (!r.ok) throw new Error(`consul PUT ${p}: ${r.status} ${await r.text()}`);
  };

  // Register S x I instances (20 at a time).
  const t0 = Date.now();
  const jobs: (() => Promise<void>)[] = [];
  for (let s = 0; s < S; s++)
    for (let k = 0; k < I; k++)
      jobs.push(() =>
        put('/v1/agent/service/register', {
          ID: inst(s, k),
          Name: svc(s),
          Address: '127.0.0.1',
          Port: 20000 + s * I + k,
          Meta: { version: `v${k % 2}` },
          Check: { CheckID: `${inst(s, k)}-ttl`, TTL: '3600s', Status: 'passing' },
        }),
      );
  await Promise.all(
    Array.from({ length: 20 }, async () => {
      for (let j = jobs.shift(); j; j = jobs.shift()) await j();
    }),
  );
  process.stderr.write(`registered ${S * I} instances in ${Date.now() - t0} ms\n`);

  // Policies: S consul Services, one gateway with one route per service.
  const policyDir = path.join(tmp, 'policies');
  const gwPort = await freePort();
  const docs = [
    `apiVersion: signalbox.dev/v1alpha1\nkind: Mesh\nmetadata: { name: default }\nspec: { mtls: { mode: disabled } }`,
    `apiVersion: signalbox.dev/v1alpha1\nkind: Gateway\nmetadata: { name: edge }\nspec:\n  listeners: [ { name: http, port: ${gwPort}, protocol: HTTP } ]`,
  ];
  const rules: string[] = [];
  for (let s = 0; s < S; s++) {
    docs.push(`apiVersion: signalbox.dev/v1alpha1\nkind: Service\nmetadata: { name: ${svc(s)} }\nspec: { port: 8080, consul: { service: ${svc(s)} } }`);
    rules.push(`    - { name: r${s}, matches: [ { path: { type: PathPrefix, value: /${svc(s)} } } ], backendRefs: [ { name: ${svc(s)} } ] }`);
  }
  docs.push(
    `apiVersion: signalbox.dev/v1alpha1\nkind: HTTPRoute\nmetadata: { name: edge }\nspec:\n  parentRefs: [ { kind: Gateway, name: edge } ]\n  rules:\n${rules.join('\n')}`,
  );
  const { mkdirSync } = await import('node:fs');
  mkdirSync(policyDir, { recursive: true });
  writeFileSync(path.join(policyDir, 'bench.yaml'), `${docs.join('\n---\n')}\n`);

  const [xdsPort, adminPort] = [await freePort(), await freePort()];
  const nodeArgs = flags['server-node-args']!.split(' ').filter(Boolean); // e.g. "--cpu-prof --cpu-prof-dir=/tmp/prof"
  const dataDir = path.join(tmp, 'data');
  const sb = spawn(
    process.execPath,
    [
      ...nodeArgs,
      BIN,
      'serve',
      '--policies',
      policyDir,
      '--xds-address',
      '127.0.0.1',
      '--xds-port',
      String(xdsPort),
      '--admin-port',
      String(adminPort),
      '--data-dir',
      dataDir,
      '--log-level',
      'warn',
      '--consul-addr',
      consul.addr,
    ],
    { cwd: ROOT, stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, SIGNALBOX_STRICT_ENCODE: '' } },
  );
  children.add(sb);
  let sbLog = '';
  sb.stdout!.on('data', (b: Buffer) => (sbLog = (sbLog + b.toString()).slice(-20_000)));
  sb.stderr!.on('data', (b: Buffer) => (sbLog = (sbLog + b.toString()).slice(-20_000)));
  await until('signalbox ready (first full Consul sync)', 120_000, async () => (await fetch(`http://127.0.0.1:${adminPort}/readyz`)).status === 200).catch(
    (e) => {
      throw new Error(`${(e as Error).message}\n${sbLog}`);
    },
  );

  // C delta clients; each remembers when it received each CLA. TLS with the CA the server wrote
  // (before its xDS port opened), and the gateway's token, as a proxy's bootstrap carries them.
  const token = signTokenSync(dataDir, 'gateway/edge');
  const auth = { ca: xdsCa(dataDir), token: () => token };
  const clients: { ads: AdsClient; stream: DeltaClientStream; got: Map<string, number>; edsResponses: number }[] = [];
  for (let c = 0; c < C; c++) {
    const ads = new AdsClient(`127.0.0.1:${xdsPort}`, {}, auth);
    const stream = ads.delta({ node: gatewayNode(`bench-consul-${c}`, 'edge'), autoAck: true, follow: true, keep: false });
    const me = { ads, stream, got: new Map<string, number>(), edsResponses: 0 };
    stream.on('response', (r: { type_url: string; resources: { name: string }[] }) => {
      if (r.type_url !== TypeUrl.Endpoint) return;
      me.edsResponses++;
      const at = performance.now(); // the ACK was written before 'response' is emitted
      for (const x of r.resources) me.got.set(x.name, at);
    });
    stream.subscribe(TypeUrl.Cluster, ['*']);
    stream.subscribe(TypeUrl.Listener, ['*']);
    clients.push(me);
  }
  await until(`${C} clients hold ${S} ClusterLoadAssignments`, 120_000, () => clients.every((c) => c.stream.holding(TypeUrl.Endpoint).size >= S), 100);
  process.stderr.write(`${C} delta clients synced\n`);

  // Flip loop.
  const state = new Map<string, boolean>(); // instance -> passing
  const busy = new Set<number>();
  const events: { service: number; t0: number; done?: number }[] = [];
  const m0 = await metrics(adminPort);
  const cpu0 = cpuTimes(sb.pid!);
  const benchCpu0 = process.cpuUsage();
  const wall0 = performance.now();
  let flips = 0;
  const interval = 1000 / RATE;
  let failedPuts = 0;
  while (performance.now() - wall0 < DURATION_MS) {
    const due = wall0 + flips * interval;
    const wait = due - performance.now();
    if (wait > 0) await new Promise((r) => setTimeout(r, wait));
    let s = Math.floor(Math.random() * S);
    for (let tries = 0; busy.has(s) && tries < S; tries++) s = (s + 1) % S;
    if (busy.has(s)) continue;
    const k = Math.floor(Math.random() * I);
    const id = inst(s, k);
    const passing = state.get(id) ?? true;
    busy.add(s);
    const ev: { service: number; t0: number; done?: number } = { service: s, t0: performance.now() };
    events.push(ev);
    flips++;
    put(`/v1/agent/check/${passing ? 'fail' : 'pass'}/${id}-ttl`).then(
      () => state.set(id, !passing),
      () => failedPuts++,
    );
    // Converged when every client received the CLA after t0.
    const name = svc(s);
    const check = () => {
      if (clients.every((c) => (c.got.get(name) ?? -1) >= ev.t0)) {
        ev.done = Math.max(...clients.map((c) => c.got.get(name)!));
        busy.delete(s);
        return true;
      }
      return false;
    };
    const poll = setInterval(() => {
      if (check() || performance.now() - ev.t0 > 30_000) {
        clearInterval(poll);
        busy.delete(s);
      }
    }, 5);
  }
  const wallMs = performance.now() - wall0;
  await until('last flips converged', 30_000, () => events.every((e) => e.done !== undefined || performance.now() - e.t0 > 30_000), 20).catch(() => undefined);
  const cpu1 = cpuTimes(sb.pid!);
  /** CPU seconds over the run, as % of one core. */
  const pctOfCore = (cpuS: number) => Math.round(((cpuS * 1000) / wallMs) * 1000) / 10;
  const benchCpu = process.cpuUsage(benchCpu0);
  const m1 = await metrics(adminPort);

  const lat = events
    .filter((e) => e.done !== undefined)
    .map((e) => e.done! - e.t0)
    .sort((a, b) => a - b);
  const result = {
    date: new Date().toISOString(),
    machine,
    shape: { services: S, instancesPerService: I, clients: C, flipsPerSecond: RATE, durationS: DURATION_MS / 1000 },
    flips: events.length,
    converged: lat.length,
    notConverged: events.length - lat.length,
    failedConsulWrites: failedPuts,
    changeToAllAckedMs: { p50: Math.round(percentile(lat, 50)), p99: Math.round(percentile(lat, 99)), max: Math.round(lat[lat.length - 1] ?? NaN) },
    consulRequestsPerSecond: Math.round(((consulRequests(m1) - consulRequests(m0)) / (wallMs / 1000)) * 10) / 10,
    signalboxCpuPercentOfOneCore: pctOfCore(cpu1.total - cpu0.total),
    signalboxCpuUserSystemPercent: [pctOfCore(cpu1.user - cpu0.user), pctOfCore(cpu1.system - cpu0.system)],
    benchClientsCpuPercentOfOneCore: Math.round(((benchCpu.user + benchCpu.system) / 1000 / wallMs) * 1000) / 10,
    consulErrors: [...m1].filter(([k, v]) => k.startsWith('signalbox_consul_errors_total') && v > 0).map(([k, v]) => `${k} ${v}`),
    edsResponsesPerClient: Math.round(clients.reduce((a, c) => a + c.edsResponses, 0) / C),
  };
  process.stdout.write(`${JSON.stringify(result, null, 2)}\n`);
  if (flags.json) writeFileSync(flags.json, `${JSON.stringify(result, null, 2)}\n`);
  for (const c of clients) c.ads.close();
  const exited = new Promise((r) => sb.once('exit', r));
  sb.kill('SIGTERM');
  await Promise.race([exited, new Promise((r) => setTimeout(r, 10_000))]); // lets --cpu-prof write its file
  consul.proc.kill('SIGTERM');
  process.exit(0);
}

main().catch((e) => {
  process.stderr.write(`bench:consul failed: ${(e as Error).stack ?? e}\n`);
  process.exit(1);
});
