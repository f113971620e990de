// `npm run bench:churn`: what holding routes until their clusters are warm costs and buys (issue
// 21), through one real gateway Envoy fed by a real `signalbox serve` (not a test).
//
// Shape: 1,000 routes (`/r-0` … `/r-999`) over 200 Services, all on one loopback upstream. The
// first 50 routes move: each edit gives one of them two new weighted backends (two Services with
// new names, so two new clusters) and adds a probe route `/e-<edit>` on the first of them (the last
// 40 probe routes stay). The edit is one file, written under a temporary name and renamed into
// place. Traffic runs open loop at --rps over every `/r-*` route (those exist for the whole run);
// any answer but 200 is a failed request. Each edit's probe route is polled every 5 ms until it
// answers 200: edit to route live at the gateway, which is when Envoy has applied the route
// configuration (it ACKs right after) — the convergence figure, including the file watch.
//
// Every rate runs with the warm wait on (the default: --warm-wait-ms 5000 --cluster-drain-ms 5000)
// and off (both 0, the behaviour before), so the difference is the cost of waiting.
// Bounded: --seconds per run (60), at most 8 runs, edits at most 50/s, traffic at most 5,000/s.
//
//   npm run bench:churn [-- --seconds 60 --rates "4 20" --rps 1000 --delta --waits "on off" --json FILE]
import { renameSync, writeFileSync } from 'node:fs';
import http from 'node:http';
import os from 'node:os';
import type { AddressInfo } from 'node:net';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { provisionEnvoy } from '../test/helpers/envoy.js';
import { startGatewayEnv } from '../test/helpers/gateway-env.js';
import { waitFor } from '../test/helpers/net.js';
import { metricValue } from '../test/xds/fixture.js';
import { Conn, cpuSeconds, percentile } from './lib.js';

const { values: flags } = parseArgs({
  options: {
    seconds: { type: 'string', default: '60' },
    rates: { type: 'string', default: '4 20' },
    rps: { type: 'string', default: '1000' },
    delta: { type: 'boolean', default: false },
    waits: { type: 'string', default: 'on off' },
    json: { type: 'string' },
  },
});
const SECONDS = Math.min(Math.max(Number(flags.seconds), 5), 120);
const RATES = flags
  .rates!.split(/\s+/)
  .filter(Boolean)
  .map(Number)
  .map((r) => Math.min(Math.max(r, 0.5), 50));
const RPS = Math.min(Math.max(Number(flags.rps), 10), 5000);
const WAITS = flags.waits!.split(/\s+/).filter((w) => w === 'on' || w === 'off') as ('on' | 'off')[];
const ROUTES = 1000;
const SERVICES = 200;
const MOVING = 50;
const PROBES_KEPT = 40;
const CONNECTIONS = 64;
if (RATES.length * WAITS.length > 8) throw new Error('at most 8 runs');

const header = (kind: string, name: string) => `---\napiVersion: signalbox.dev/v1alpha1\nkind: ${kind}\nmetadata: { name: ${name} }\n`;

function baseFile(port: number, upstream: number): string {
  let y = `${header('Gateway', 'gateway')}spec:\n  listeners: [ { name: http, port: ${port}, protocol: HTTP } ]\n`;
  for (let s = 0; s < SERVICES; s++) y += `${header('Service', `svc-${s}`)}spec: { port: 8080, endpoints: [ { address: 127.0.0.1, port: ${upstream} } ] }\n`;
  for (let r = MOVING; r < ROUTES; r++) {
    y += `${header('HTTPRoute', `r-${r}`)}spec:\n  parentRefs: [ { kind: Gateway, name: gateway } ]\n  rules: [ { matches: [ { path: { type: Exact, value: /r-${r} } } ], backendRefs: [ { name: svc-${r % SERVICES} } ] } ]\n`;
  }
  return y;
}

/** The moving routes after `gen` edits: edit g moved route g % MOVING to Services m<g>-a and m<g>-b. */
function movingFile(upstream: number, gen: number): string {
  let y = '';
  const svc = (name: string) => `${header('Service', name)}spec: { port: 8080, endpoints: [ { address: 127.0.0.1, port: ${upstream} } ] }\n`;
  for (let r = 0; r < MOVING; r++) {
    // The last edit that moved route r, if any.
    const g = gen - ((((gen - r) % MOVING) + MOVING) % MOVING);
    if (g > 0) {
      const w = 10 + ((g * 37) % 80);
      y += svc(`m${g}-a`) + svc(`m${g}-b`);
      y += `${header('HTTPRoute', `r-${r}`)}spec:\n  parentRefs: [ { kind: Gateway, name: gateway } ]\n  rules: [ { matches: [ { path: { type: Exact, value: /r-${r} } } ], backendRefs: [ { name: m${g}-a, weight: ${w} }, { name: m${g}-b, weight: ${100 - w} } ] } ]\n`;
    } else {
      y += `${header('HTTPRoute', `r-${r}`)}spec:\n  parentRefs: [ { kind: Gateway, name: gateway } ]\n  rules: [ { matches: [ { path: { type: Exact, value: /r-${r} } } ], backendRefs: [ { name: svc-${r % SERVICES} } ] } ]\n`;
    }
  }
  // A probe names the first new Service of its own edit, which exists while its route has not moved
  // again (MOVING edits later): PROBES_KEPT < MOVING.
  for (let g = Math.max(1, gen - PROBES_KEPT + 1); g <= gen; g++) {
    y += `${header('HTTPRoute', `e-${g}`)}spec:\n  parentRefs: [ { kind: Gateway, name: gateway } ]\n  rules: [ { matches: [ { path: { type: Exact, value: /e-${g} } } ], backendRefs: [ { name: m${g}-a } ] } ]\n`;
  }
  return y;
}

interface Run {
  protocol: 'sotw' | 'delta';
  wait: 'on' | 'off';
  rate: number;
  seconds: number;
  edits: number;
  requests: number;
  failed: number;
  failedByStatus: Record<string, number>;
  /** Requests the generator could not start on time (all connections busy): the offered load fell short by this many. */
  late: number;
  convergeMs: { p50: number; p99: number; max: number; n: number; neverLive: number };
  pushesPerEdit: Record<string, number>;
  warmWaits: number;
  warmWaitTimeouts: number;
  cpuSignalbox: number;
  cpuEnvoy: number;
  load: number[];
}

async function startUpstream(): Promise<{ port: number; close(): Promise<void> }> {
  const server = http.createServer((_req, res) => {
    res.writeHead(200, { 'content-length': 2 });
    res.end('ok');
  });
  server.keepAliveTimeout = 120_000;
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  return {
    port: (server.address() as AddressInfo).port,
    close: () =>
      new Promise<void>((resolve) => {
        server.closeAllConnections();
        server.close(() => resolve());
      }),
  };
}

async function pushes(admin: (p: string) => Promise<string>, protocol: string): Promise<Record<string, number>> {
  const text = await admin('/metrics');
  const out: Record<string, number> = {};
  for (const t of ['listener', 'route', 'cluster', 'endpoint', 'secret']) out[t] = metricValue(text, 'signalbox_xds_pushes_total', { type: t, protocol });
  return out;
}

async function run(protocol: 'sotw' | 'delta', wait: 'on' | 'off', rate: number): Promise<Run> {
  const upstream = await startUpstream();
  let gen = 0;
  const serveArgs = wait === 'off' ? ['--warm-wait-ms', '0', '--cluster-drain-ms', '0'] : [];
  const env = await startGatewayEnv({
    name: `churn-bench-${protocol}-${wait}`,
    delta: protocol === 'delta',
    serveArgs,
    files: (port) => ({ 'base.yaml': baseFile(port, upstream.port), 'moving.yaml': movingFile(upstream.port, gen) }),
  });
  const port = env.gatewayPort;
  try {
    const probe = new Conn(port);
    await waitFor(async () => (await probe.getPath(`/r-${ROUTES - 1}`)) === 200 && (await probe.getPath('/r-0')) === 200, {
      what: 'the gateway serving every route',
      timeoutMs: 60_000,
    });
    probe.close();
    await env.synced();

    const before = await pushes(env.sb.adminText.bind(env.sb), protocol);
    const sbPid = env.sb.pid;
    const envoyPid = env.envoy.process.pid;
    const cpu0 = { sb: sbPid ? cpuSeconds(sbPid) : NaN, envoy: envoyPid ? cpuSeconds(envoyPid) : NaN };

    // Open-loop traffic: every 10 ms, the requests due by now, each on a free connection.
    let requests = 0;
    let failed = 0;
    let late = 0;
    const failedByStatus: Record<string, number> = {};
    const idle: Conn[] = Array.from({ length: CONNECTIONS }, () => new Conn(port));
    let inFlight = 0;
    let issued = 0;
    const t0 = Date.now();
    let stopTraffic = false;
    const fire = (c: Conn) => {
      const p = `/r-${issued++ % ROUTES}`;
      inFlight++;
      void c.getPath(p).then((status) => {
        inFlight--;
        requests++;
        if (status !== 200) {
          failed++;
          failedByStatus[String(status)] = (failedByStatus[String(status)] ?? 0) + 1;
        }
        idle.push(c.alive ? c : new Conn(port));
      });
    };
    const ticker = setInterval(() => {
      if (stopTraffic) return;
      const due = Math.floor(((Date.now() - t0) * RPS) / 1000);
      while (issued + late < due) {
        const c = idle.pop();
        if (!c) {
          late += due - issued - late;
          break;
        }
        fire(c);
      }
    }, 10);

    // Edits, each with its probe.
    const converge: number[] = [];
    let neverLive = 0;
    const probes: Promise<void>[] = [];
    const file = path.join(env.dir, 'moving.yaml');
    const interval = 1000 / rate;
    const end = t0 + SECONDS * 1000;
    let next = t0 + interval;
    while (next < end) {
      await new Promise((r) => setTimeout(r, Math.max(0, next - Date.now())));
      next += interval;
      gen++;
      const g = gen;
      const tmp = path.join(env.dir, `.moving.yaml.${g}.tmp`);
      writeFileSync(tmp, movingFile(upstream.port, g));
      const at = performance.now();
      renameSync(tmp, file);
      probes.push(
        (async () => {
          const c = new Conn(port);
          const deadline = at + 15_000;
          // The probe route exists until PROBES_KEPT later edits; past that it is never live.
          while (performance.now() < deadline && gen - g < PROBES_KEPT) {
            if ((await c.getPath(`/e-${g}`)) === 200) {
              converge.push(performance.now() - at);
              c.close();
              return;
            }
            await new Promise((r) => setTimeout(r, 5));
          }
          neverLive++;
          c.close();
        })(),
      );
    }
    const edits = gen;
    await Promise.all(probes);
    stopTraffic = true;
    clearInterval(ticker);
    await waitFor(async () => inFlight === 0, { what: 'requests in flight to finish', timeoutMs: 10_000 });
    for (const c of idle) c.close();

    const after = await pushes(env.sb.adminText.bind(env.sb), protocol);
    const proxy = await env.sb.admin(`/api/proxies/${env.proxyId}`);
    const sorted = converge.sort((a, b) => a - b);
    const round = (x: number) => Math.round(x * 10) / 10;
    return {
      protocol,
      wait,
      rate,
      seconds: SECONDS,
      edits,
      requests,
      failed,
      failedByStatus,
      late,
      convergeMs: { p50: round(percentile(sorted, 50)), p99: round(percentile(sorted, 99)), max: round(sorted.at(-1) ?? NaN), n: sorted.length, neverLive },
      pushesPerEdit: Object.fromEntries(Object.keys(after).map((t) => [t, Math.round(((after[t]! - before[t]!) / Math.max(1, edits)) * 100) / 100])),
      warmWaits: proxy.warmWaits ?? 0,
      warmWaitTimeouts: proxy.warmWaitTimeouts ?? 0,
      cpuSignalbox: sbPid ? Math.round((cpuSeconds(sbPid) - cpu0.sb) * 10) / 10 : NaN,
      cpuEnvoy: envoyPid ? Math.round((cpuSeconds(envoyPid) - cpu0.envoy) * 10) / 10 : NaN,
      load: os.loadavg().map((x) => Math.round(x * 100) / 100),
    };
  } finally {
    await env.stop();
    await upstream.close();
  }
}

await provisionEnvoy();
const protocol = flags.delta ? 'delta' : 'sotw';
const results: Run[] = [];
console.log(
  `route churn: ${ROUTES} routes, ${SERVICES} services, ${MOVING} moving; ${RPS} req/s for ${SECONDS} s per run; ${protocol}; ${os.cpus().length} cores, load ${os
    .loadavg()
    .map((x) => x.toFixed(2))
    .join(' ')}`,
);
for (const rate of RATES) {
  for (const wait of WAITS) {
    const r = await run(protocol, wait, rate);
    results.push(r);
    const byStatus = Object.entries(r.failedByStatus)
      .map(([s, n]) => `${s}: ${n}`)
      .join(', ');
    console.log(
      `${protocol} wait ${wait.padEnd(3)} ${String(rate).padStart(2)} edits/s: ${r.edits} edits; failed ${r.failed} of ${r.requests}${byStatus ? ` (${byStatus})` : ''}${r.late ? `, ${r.late} late` : ''}; ` +
        `edit -> route live p50 ${r.convergeMs.p50} ms p99 ${r.convergeMs.p99} ms max ${r.convergeMs.max} ms (${r.convergeMs.n} live, ${r.convergeMs.neverLive} superseded first); ` +
        `pushes/edit ${Object.entries(r.pushesPerEdit)
          .filter(([, v]) => v > 0)
          .map(([t, v]) => `${t} ${v}`)
          .join(' ')}; warm waits ${r.warmWaits} (${r.warmWaitTimeouts} timed out); ` +
        `CPU s signalbox ${r.cpuSignalbox} envoy ${r.cpuEnvoy}; load ${r.load.join(' ')}`,
    );
  }
}
if (flags.json) writeFileSync(flags.json, JSON.stringify(results, null, 2));
