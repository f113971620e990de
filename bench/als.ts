// `npm run bench:als`: what traffic reporting (Envoy's gRPC access log service -> Signalbox)
// costs at a given request rate (not a test).
//
// For each mode (reporting off, every request, successes sampled at 10%) it starts a fresh
// `signalbox serve` child process and a real Envoy gateway (one worker thread; its bootstrap
// connects over TLS with a token certificate, as `signalbox bootstrap` writes it, so the access
// logs travel over TLS as they do by default), drives
// --rate requests/s for --seconds through the gateway to a route Envoy answers itself (a
// RequestRedirect, so no upstream process competes for the two cores), and reads:
//   - achieved request rate and client-side latency p50/p99;
//   - CPU of the Signalbox process and of Envoy (/proc/<pid>/stat), as % of one core;
//   - access-log entries received and the event-loop time Signalbox spent decoding and
//     aggregating them (signalbox_access_log_process_seconds_total);
//   - Signalbox's event-loop lag p99 (prom-client) and RSS.
// Then a micro-benchmark compares the narrow decoder with a full protobufjs decode.
//
// Flags: --rate N (5000) --seconds S (10) --modes off,100,10 --concurrency C (64) --json FILE
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import http from 'node:http';
import os from 'node:os';
import path from 'node:path';
import { performance } from 'node:perf_hooks';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { bootstrapYaml } from '../src/cli/bootstrap.js';
import { decodeAccessLogMessage } from '../src/telemetry/als-decode.js';
import { lookupType } from '../src/xds/resources/protos.js';
import { startEnvoy, type Envoy } from '../test/helpers/envoy.js';
import { bootstrapTls } from '../test/helpers/credentials.js';
import { freePort, waitFor } from '../test/helpers/net.js';

const here = path.dirname(fileURLToPath(import.meta.url));
const ROOT = path.resolve(here, '..', '..');
const BIN = path.join(ROOT, 'bin', 'signalbox.js');

const { values: flags } = parseArgs({
  options: {
    rate: { type: 'string', default: '5000' },
    seconds: { type: 'string', default: '10' },
    modes: { type: 'string', default: 'off,100,10' },
    concurrency: { type: 'string', default: '64' },
    json: { type: 'string' },
  },
});
const RATE = Number(flags.rate);
const SECONDS = Number(flags.seconds);
const CONCURRENCY = Number(flags.concurrency);
const MODES = flags.modes!.split(',');

const TICK = 100; // USER_HZ (clock ticks per second in /proc/<pid>/stat) on Linux
function cpuSeconds(pid: number): number {
  const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  return (Number(fields[11]) + Number(fields[12])) / TICK; // utime + stime
}
function rssMb(pid: number): number {
  const m = /VmRSS:\s+(\d+)/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
  return m ? Number(m[1]) / 1024 : 0;
}

function policies(gwPort: number): string {
  return `apiVersion: signalbox.dev/v1alpha1
kind: Service
metadata: { name: shop }
spec:
  port: 8080
  endpoints: [ { address: 127.0.0.1, port: 9 } ]
---
apiVersion: signalbox.dev/v1alpha1
kind: Gateway
metadata: { name: bench }
spec:
  listeners: [ { name: http, port: ${gwPort}, protocol: HTTP } ]
---
apiVersion: signalbox.dev/v1alpha1
kind: HTTPRoute
metadata: { name: shop }
spec:
  parentRefs: [ { kind: Gateway, name: bench } ]
  rules:
    - name: moved
      matches: [ { path: { type: PathPrefix, value: /old } } ]
      filters:
        - { type: RequestRedirect, requestRedirect: { path: { replaceFullPath: /new }, statusCode: 302 } }
`;
}

async function metric(adminPort: number, name: string): Promise<number> {
  const text = await (await fetch(`http://127.0.0.1:${adminPort}/metrics`)).text();
  let sum = 0;
  for (const line of text.split('\n')) if (line.startsWith(`${name} `) || line.startsWith(`${name}{`)) sum += Number(line.slice(line.lastIndexOf(' ') + 1));
  return sum;
}

interface Load {
  sent: number;
  ok: number;
  failed: number;
  p50: number;
  p99: number;
  seconds: number;
}

/** Open-loop load at `rate` requests/s with at most `concurrency` in flight. */
async function drive(port: number, rate: number, seconds: number, concurrency: number): Promise<Load> {
  const agent = new http.Agent({ keepAlive: true, maxSockets: concurrency });
  const lat: number[] = [];
  let sent = 0;
  let ok = 0;
  let failed = 0;
  let inflight = 0;
  const t0 = performance.now();
  const one = () => {
    inflight++;
    sent++;
    const start = performance.now();
    const req = http.request({ host: '127.0.0.1', port, path: `/old/${sent % 1000}`, agent }, (res) => {
      res.resume();
      res.on('end', () => {
        inflight--;
        if (res.statusCode === 302) ok++;
        else failed++;
        if (lat.length < 200_000) lat.push(performance.now() - start);
      });
    });
    req.on('error', () => {
      inflight--;
      failed++;
    });
    req.end();
  };
  await new Promise<void>((resolve) => {
    const timer = setInterval(() => {
      const elapsed = (performance.now() - t0) / 1000;
      if (elapsed >= seconds) {
        clearInterval(timer);
        resolve();
        return;
      }
      const due = Math.floor(rate * elapsed) - sent;
      for (let i = 0; i < due && inflight < concurrency; i++) one();
    }, 2);
  });
  await waitFor(() => inflight === 0, { timeoutMs: 10_000, what: 'requests in flight to finish' });
  const took = (performance.now() - t0) / 1000;
  agent.destroy();
  lat.sort((a, b) => a - b);
  return { sent, ok, failed, p50: lat[Math.floor(lat.length * 0.5)] ?? 0, p99: lat[Math.floor(lat.length * 0.99)] ?? 0, seconds: took };
}

async function runMode(mode: string) {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'sb-bench-als-'));
  const gwPort = await freePort();
  const xdsPort = await freePort();
  const adminPort = await freePort();
  writeFileSync(path.join(dir, 'bench.yaml'), policies(gwPort));
  const dataDir = path.join(dir, 'data');
  const sb: ChildProcess = spawn(
    process.execPath,
    [
      BIN,
      'serve',
      '--policies',
      dir,
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
      '--access-log-sampling',
      mode,
    ],
    { stdio: ['ignore', 'ignore', 'inherit'] },
  );
  let envoy: Envoy | undefined;
  let credentialsDir: string | undefined;
  try {
    await waitFor(async () => (await fetch(`http://127.0.0.1:${adminPort}/readyz`).catch(() => undefined))?.status === 200, {
      timeoutMs: 20_000,
      what: 'signalbox ready',
    });
    // The CA file is written before the xDS port opens; the token certificate is the gateway's.
    const tls = await bootstrapTls(dataDir, 'gateway/bench');
    credentialsDir = path.dirname(tls.certFile);
    envoy = await startEnvoy({
      name: `bench-als-${mode}`,
      bootstrapYaml: (p) =>
        bootstrapYaml({
          gateway: 'bench',
          xdsAddress: `127.0.0.1:${xdsPort}`,
          adminPort: p,
          id: 'bench-gw',
          tls: { caFile: tls.caFile, certFile: tls.certFile, keyFile: tls.keyFile },
        }),
    });
    await waitFor(async () => (await fetch(`http://127.0.0.1:${gwPort}/old/x`, { redirect: 'manual' }).catch(() => undefined))?.status === 302, {
      timeoutMs: 20_000,
      what: 'route served',
    });
    await drive(gwPort, Math.min(RATE, 1000), 2, CONCURRENCY); // warm up
    await new Promise((r) => setTimeout(r, 1500)); // let the warm-up's logs flush (1 s buffer)
    const before = {
      sb: cpuSeconds(sb.pid!),
      envoy: cpuSeconds(envoy.process.pid!),
      entries: await metric(adminPort, 'signalbox_access_log_entries_total'),
      proc: await metric(adminPort, 'signalbox_access_log_process_seconds_total'),
    };
    await metric(adminPort, 'signalbox_process_nodejs_eventloop_lag_p99_seconds'); // prom-client resets the lag histogram per scrape
    const load = await drive(gwPort, RATE, SECONDS, CONCURRENCY);
    await new Promise((r) => setTimeout(r, 1500)); // the last batch
    const after = {
      sb: cpuSeconds(sb.pid!),
      envoy: cpuSeconds(envoy.process.pid!),
      entries: await metric(adminPort, 'signalbox_access_log_entries_total'),
      proc: await metric(adminPort, 'signalbox_access_log_process_seconds_total'),
    };
    const lagP99 = await metric(adminPort, 'signalbox_process_nodejs_eventloop_lag_p99_seconds');
    const wall = load.seconds + 1.5;
    const entries = after.entries - before.entries;
    return {
      mode: mode === 'off' ? 'reporting off' : `sampling ${mode}%`,
      rate: Math.round(load.ok / load.seconds),
      failed: load.failed,
      clientP50ms: +load.p50.toFixed(2),
      clientP99ms: +load.p99.toFixed(2),
      signalboxCpuPct: +((100 * (after.sb - before.sb)) / wall).toFixed(1),
      envoyCpuPct: +((100 * (after.envoy - before.envoy)) / wall).toFixed(1),
      entriesPerSecond: Math.round(entries / wall),
      alsEventLoopMsPerSecond: +((1000 * (after.proc - before.proc)) / wall).toFixed(2),
      alsMicrosecondsPerEntry: entries ? +((1e6 * (after.proc - before.proc)) / entries).toFixed(2) : 0,
      eventLoopLagP99ms: +(lagP99 * 1000).toFixed(2),
      signalboxRssMb: +rssMb(sb.pid!).toFixed(0),
    };
  } finally {
    await envoy?.stop();
    sb.kill('SIGTERM');
    if (sb.exitCode === null && sb.signalCode === null) await new Promise((r) => sb.once('exit', r));
    rmSync(dir, { recursive: true, force: true });
    if (credentialsDir) rmSync(credentialsDir, { recursive: true, force: true });
  }
}

/** A message shaped like what Envoy sends: 100 entries with the fields a gateway fills in. */
function sampleMessage(): Uint8Array {
  const T = lookupType('envoy.service.accesslog.v3.StreamAccessLogsMessage');
  const addr = (port: number) => ({ socket_address: { address: '127.0.0.1', port_value: port } });
  const d = (ms: number) => ({ seconds: 0, nanos: ms * 1e6 });
  const entry = (i: number) => ({
    common_properties: {
      sample_rate: 1,
      downstream_remote_address: addr(40000 + i),
      downstream_local_address: addr(8080),
      downstream_direct_remote_address: addr(40000 + i),
      start_time: { seconds: 1_790_000_000 + i, nanos: 123_000_000 },
      time_to_last_rx_byte: d(0.05),
      time_to_first_upstream_tx_byte: d(0.2),
      time_to_last_upstream_tx_byte: d(0.2),
      time_to_first_upstream_rx_byte: d(1.4),
      time_to_last_upstream_rx_byte: d(1.5),
      time_to_first_downstream_tx_byte: d(1.45),
      time_to_last_downstream_tx_byte: d(1.6),
      upstream_remote_address: addr(9001),
      upstream_local_address: addr(50000 + i),
      upstream_cluster: 'orders/v1',
      response_flags: {},
      route_name: 'orders/split/match-0',
      duration: d(1.6),
      upstream_request_attempt_count: 1,
      stream_id: `9a1c6a0e-3f1b-4c2b-8f0e-${String(i).padStart(12, '0')}`,
      access_log_type: 'DownstreamEnd',
      downstream_wire_bytes_sent: 310,
      downstream_wire_bytes_received: 96,
      upstream_wire_bytes_sent: 420,
      upstream_wire_bytes_received: 300,
    },
    protocol_version: 'HTTP11',
    request: {
      request_method: 'GET',
      scheme: 'http',
      authority: '127.0.0.1:8080',
      path: `/orders/${i}`,
      user_agent: 'bench/1.0',
      request_id: `5f0c7a56-8d3e-4a8b-9b1e-${String(i).padStart(12, '0')}`,
      request_headers_bytes: 96,
    },
    response: { response_code: { value: 200 }, response_headers_bytes: 180, response_body_bytes: 130, response_code_details: 'via_upstream' },
  });
  const msg = T.fromObject({ http_logs: { log_entry: Array.from({ length: 100 }, (_, i) => entry(i)) } });
  return T.encode(msg).finish();
}

function microBench() {
  const bytes = sampleMessage();
  const T = lookupType('envoy.service.accesslog.v3.StreamAccessLogsMessage');
  const time = (fn: () => void) => {
    for (let i = 0; i < 200; i++) fn();
    const n = 2000;
    const t0 = performance.now();
    for (let i = 0; i < n; i++) fn();
    return ((performance.now() - t0) * 1000) / (n * 100); // µs per entry
  };
  return {
    bytesPerEntry: Math.round(bytes.length / 100),
    narrowDecodeMicrosecondsPerEntry: +time(() => decodeAccessLogMessage(bytes)).toFixed(3),
    protobufjsDecodeMicrosecondsPerEntry: +time(() => T.decode(bytes)).toFixed(3),
  };
}

const results = [];
for (const m of MODES) {
  process.stderr.write(`bench:als: mode ${m} at ${RATE} requests/s for ${SECONDS} s...\n`);
  results.push(await runMode(m));
}
const micro = microBench();
console.table(results);
console.table([micro]);
if (flags.json) writeFileSync(flags.json, `${JSON.stringify({ rate: RATE, seconds: SECONDS, cores: os.cpus().length, results, micro }, null, 2)}\n`);
