// `npm run bench:authz`: what a JWT check costs through a real Envoy (not a test).
//
// Three configurations in one run on this machine, each on its own listener, the same route (a
// RequestRedirect Envoy answers itself, so no upstream process competes for the cores) and the
// same RS256 keys and tokens:
//   baseline  - a Signalbox-fed gateway listener with no policy (no auth), on its own Envoy (a
//               proxy that loads the compiled filter keeps it on every listener, so the baseline
//               gateway is served to an Envoy that does not);
//   jwt_authn - a second Envoy (static bootstrap) running the baseline listener as Signalbox
//               compiled it (copied from the gateway's config dump) with Envoy's in-process
//               jwt_authn filter added, the public key inline, its JWT cache on;
//   Signalbox - a Signalbox-fed gateway listener under a JWTPolicy, as Signalbox compiles it: the
//               fast path (in Envoy, Signalbox's compiled filter with --fast-path module, the
//               default: the gateway's bootstrap says it loads the module, as `signalbox
//               bootstrap --jwt-module` writes it; or the Lua script with --fast-path script) asks the ext_authz service
//               once per token and repeats its allow for that token; the warm-up asks about
//               every token);
//   ext_authz only - the same policy on another listener, made to read its token from two places
//               (header or query), which the fast path does not take: every request asks the
//               ext_authz service inside the `signalbox serve` child process over gRPC.
// The Signalbox-fed Envoys connect to the xDS port over TLS with a token certificate each (as
// `signalbox bootstrap` writes it), and reach the ext_authz service over mTLS with their
// identities: the control plane's defaults.
// Both Envoys run one worker thread. For each configuration, after a warm-up:
//   - saturated: a closed loop at --concurrency for --seconds: throughput and latency;
//   - fixed rate: an open loop at --rate requests/s for --seconds: latency p50/p99 (measured
//     from the moment each request is written).
// Every answer must be the redirect (301); anything else is counted and reported.
//
// Tokens: by default the --tokens tokens are used over and over (what a steady set of clients
// sends; the service's verified-token cache and Envoy's JWT caches answer most of them). With
// --fresh every measured request carries a token no earlier request of that configuration carried
// (a new user or a refreshed token each time: every check verifies a signature). The fresh tokens
// are signed before Signalbox starts (node:crypto, on worker threads), so signing is not in the
// measured loop; one set per round, shared by the configurations of the round (each keeps its own
// caches: jwt_authn its Envoy's, the fast path the gateway's filter and the service's cache of
// policy `bench`, ext_authz only the service's cache of policy `bench-slow`). A fresh saturated
// phase ends after --seconds or --fresh-saturated requests, whichever comes first; the warm-ups
// use the repeated tokens. The summary then also gives the service's distinct-token checks per
// CPU-second of the `signalbox serve` process (all its threads) in the saturated phase.
//
// Flags: --seconds S (6) --rounds R (3) --concurrency C (32) --rate R (1000) --tokens N (100) --json FILE
//        --fast-path module|script (module: what `signalbox serve --jwt-fast-path module` runs)
//        --fresh (a new token per measured request) --fresh-saturated N (12000)
//        --configs baseline,jwt_authn,fast,ext_authz (which configurations run; the baseline always)
//        --steady (the fixed-rate phase first, after a warm-up at that rate, so that it does not
//        inherit the garbage of a saturated phase: a service that runs at that rate; by default
//        it follows the saturated phase, whose collections can land in it)
//        --diagnose (first: sequential latency, Envoy's authz cluster stats, Signalbox's check time)
//        --gc: measures garbage in `serve` during each fixed-rate phase (bench/gc-probe.ts preloaded
//        into it): bytes allocated per request, scavenges per 10,000 requests, each scavenge's
//        survivors and cost, and where the bytes came from. These do not move with the machine's
//        load, where p99 does; the latencies of a --gc run are not comparable (the sampling
//        profiler costs CPU). --serve-node-options OPTS: NODE_OPTIONS for the `serve` child only.
// The fixed-rate phase also gives `serve`'s CPU per request (all its threads), from /proc.
// Everything runs on loopback; every phase is bounded in time (and count), and the run ends by itself.
// SIGNALBOX_BENCH_NODE_ARGS passes node flags to the control plane (e.g. --cpu-prof).
import { spawn, type ChildProcess } from 'node:child_process';
import { KeyObject } from 'node:crypto';
import { appendFileSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import http from 'node:http';
import os from 'node:os';
import path from 'node:path';
import { performance } from 'node:perf_hooks';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { parseArgs } from 'node:util';
import { Worker } from 'node:worker_threads';
import YAML from 'yaml';
import { exportJWK, generateKeyPair, SignJWT } from 'jose';
import { bootstrapYaml } from '../src/cli/bootstrap.js';
import { startEnvoy, type Envoy } from '../test/helpers/envoy.js';
import { bootstrapTls } from '../test/helpers/credentials.js';
import { freePort, waitFor } from '../test/helpers/net.js';
import { Conn, cpuSeconds, percentile } from './lib.js';
import { type Garbage, toggleProbe } from './gc-report.js';

const here = path.dirname(fileURLToPath(import.meta.url));
const ROOT = path.resolve(here, '..', '..');
const BIN = path.join(ROOT, 'bin', 'signalbox.js');

const { values: flags } = parseArgs({
  options: {
    seconds: { type: 'string', default: '6' },
    rounds: { type: 'string', default: '3' },
    concurrency: { type: 'string', default: '32' },
    rate: { type: 'string', default: '1000' },
    tokens: { type: 'string', default: '100' },
    json: { type: 'string' },
    diagnose: { type: 'boolean' },
    'fast-path': { type: 'string', default: 'module' },
    fresh: { type: 'boolean' },
    steady: { type: 'boolean' },
    'fresh-saturated': { type: 'string', default: '12000' },
    configs: { type: 'string', default: 'baseline,jwt_authn,fast,ext_authz' },
    gc: { type: 'boolean' },
    'serve-node-options': { type: 'string' },
  },
});
const SECONDS = Number(flags.seconds);
const ROUNDS = Number(flags.rounds);
const CONCURRENCY = Number(flags.concurrency);
const RATE = Number(flags.rate);
const TOKENS = Number(flags.tokens);
const FAST_PATH = flags['fast-path'];
if (FAST_PATH !== 'module' && FAST_PATH !== 'script') throw new Error('--fast-path must be "module" or "script"');
const FRESH = flags.fresh === true;
const STEADY = flags.steady === true;
const FRESH_SATURATED = Number(flags['fresh-saturated']);
const CONFIGS = new Set([
  'baseline',
  ...flags
    .configs!.split(',')
    .map((c) => c.trim())
    .filter(Boolean),
]);
for (const c of CONFIGS) if (!['baseline', 'jwt_authn', 'fast', 'ext_authz'].includes(c)) throw new Error(`--configs: unknown configuration "${c}"`);
if (!(SECONDS > 0 && SECONDS <= 600 && ROUNDS >= 1 && ROUNDS <= 20 && RATE > 0 && RATE <= 20_000 && FRESH_SATURATED > 0 && FRESH_SATURATED <= 200_000))
  throw new Error('--seconds, --rounds, --rate or --fresh-saturated out of range');
const ISS = 'https://auth.bench.local/';
const AUD = 'bench-api';

/** One line per phase: KiB per request, collections per 10,000 requests, the top allocation sites. */
function garbageText(g: Garbage, requests: number): string {
  const per = (n: number) => ((n * 10_000) / requests).toFixed(1);
  const kinds = Object.entries(g.collections)
    .filter(([, c]) => c.count > 0)
    .map(([k, c]) => `${k} ${per(c.count)} (${c.ms.toFixed(0)} ms, longest ${c.maxMs.toFixed(1)} ms)`)
    .join(', ');
  const y = g.young;
  const top = g.byOwner
    .slice(0, 12)
    .map(([o, b]) => `    ${(b / requests).toFixed(0).padStart(6)} B/request  ${o}`)
    .join('\n');
  return `  serve allocated ${(g.bytes / requests / 1024).toFixed(2)} KiB per request; collections per 10,000 requests: ${kinds || 'none'}; per scavenge: new space ${(y.newSpaceBefore / 1024 / 1024).toFixed(1)} MiB before, ${(y.survived / 1024).toFixed(0)} KiB survived, ${(y.promoted / 1024).toFixed(0)} KiB promoted, ${y.costMs.toFixed(2)} ms\n${top}\n`;
}

const agent = new http.Agent({ keepAlive: true, maxSockets: 8 });

/** A pool of connections to one port; `get` takes a free one (opening one if none is free). */
class Pool {
  private free: Conn[] = [];
  private all: Conn[] = [];
  constructor(private readonly port: number) {}
  async get(token: string): Promise<number> {
    const c = this.free.pop() ?? this.open();
    const status = await c.get(token);
    if (status === 0) {
      c.close();
      this.all = this.all.filter((x) => x !== c);
    } else this.free.push(c);
    return status;
  }
  private open(): Conn {
    const c = new Conn(this.port);
    this.all.push(c);
    return c;
  }
  close(): void {
    for (const c of this.all) c.close();
  }
}

const pools = new Map<number, Pool>();
function get(port: number, token: string): Promise<number> {
  let p = pools.get(port);
  if (!p) {
    p = new Pool(port);
    pools.set(port, p);
  }
  return p.get(token);
}

interface Phase {
  requests: number;
  seconds: number;
  rps: number;
  p50: number;
  p99: number;
  bad: number;
}

/**
 * A closed loop for `seconds`. `once`: each token is sent once, and the phase ends early when they
 * are used up (a fresh phase).
 */
async function saturated(port: number, tokens: string[], seconds: number, once = false): Promise<Phase> {
  const lat: number[] = [];
  let bad = 0;
  let i = 0;
  const t0 = performance.now();
  const end = t0 + seconds * 1000;
  const worker = async () => {
    while (performance.now() < end && (!once || i < tokens.length)) {
      const s = performance.now();
      const status = await get(port, tokens[i++ % tokens.length]!);
      lat.push(performance.now() - s);
      if (status !== 301) bad++;
    }
  };
  await Promise.all(Array.from({ length: CONCURRENCY }, worker));
  const took = (performance.now() - t0) / 1000;
  lat.sort((a, b) => a - b);
  return { requests: lat.length, seconds: took, rps: lat.length / took, p50: percentile(lat, 50), p99: percentile(lat, 99), bad };
}

async function fixedRate(port: number, tokens: string[], rate: number, seconds: number): Promise<Phase> {
  const lat: number[] = [];
  const pending: Promise<void>[] = [];
  let bad = 0;
  let sent = 0;
  const t0 = performance.now();
  const total = Math.round(rate * seconds);
  while (sent < total) {
    const due = Math.min(total, Math.floor(((performance.now() - t0) * rate) / 1000));
    while (sent < due) {
      const s = performance.now();
      const token = tokens[sent % tokens.length]!;
      sent++;
      pending.push(
        get(port, token).then((status) => {
          lat.push(performance.now() - s);
          if (status !== 301) bad++;
        }),
      );
    }
    await new Promise((r) => setTimeout(r, 1));
  }
  await Promise.all(pending);
  const took = (performance.now() - t0) / 1000;
  lat.sort((a, b) => a - b);
  return { requests: lat.length, seconds: took, rps: lat.length / took, p50: percentile(lat, 50), p99: percentile(lat, 99), bad };
}

// biome-ignore lint/suspicious/noExplicitAny: Envoy's config dump, read loosely for a few known paths
type Json = Record<string, any>;

/**
 * The jwt_authn configuration: the baseline listener exactly as Signalbox compiled it (taken from
 * the gateway's config dump: connection manager settings, route configuration, listener buffer
 * limit), with Envoy's jwt_authn filter in front of its filters. The two then differ only in the
 * filter, so the comparison measures the filter and not two ways of writing a listener.
 */
function jwtAuthnBootstrap(adminPort: number, listenPort: number, jwks: string, plain: { listener: Json; routeConfig: Json }): string {
  const hcmOf = (l: Json) => l.filter_chains[0].filters[0].typed_config as Json;
  const { rds: _rds, access_log: _log, tracing: _tracing, ...settings } = hcmOf(plain.listener);
  const { '@type': _type, ...routeConfig } = plain.routeConfig;
  const hcm = {
    ...settings,
    route_config: routeConfig,
    http_filters: [
      {
        name: 'envoy.filters.http.jwt_authn',
        typed_config: {
          '@type': 'type.googleapis.com/envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication',
          providers: {
            bench: {
              issuer: ISS,
              audiences: [AUD],
              local_jwks: { inline_string: jwks },
              forward: true,
              clock_skew_seconds: 30,
              jwt_cache_config: { jwt_cache_size: TOKENS },
            },
          },
          rules: [{ match: { prefix: '/' }, requires: { provider_name: 'bench' } }],
        },
      },
      ...settings.http_filters,
    ],
  };
  return YAML.stringify({
    admin: { address: { socket_address: { address: '127.0.0.1', port_value: adminPort } } },
    static_resources: {
      listeners: [
        {
          name: 'jwt_authn',
          address: { socket_address: { address: '127.0.0.1', port_value: listenPort } },
          ...(plain.listener.per_connection_buffer_limit_bytes ? { per_connection_buffer_limit_bytes: plain.listener.per_connection_buffer_limit_bytes } : {}),
          filter_chains: [{ filters: [{ name: 'envoy.filters.network.http_connection_manager', typed_config: hcm }] }],
        },
      ],
    },
  });
}

/** The baseline listener and its route configuration, as the gateway Envoy runs them. */
async function plainListenerOf(gateway: Envoy, name: string): Promise<{ listener: Json; routeConfig: Json }> {
  const listeners = (await gateway.adminJson<Json>('/config_dump?resource=dynamic_listeners')).configs as Json[];
  const listener = listeners.find((l) => l.name === name)?.active_state?.listener;
  if (!listener) throw new Error(`the gateway has no listener ${name}`);
  const routeName = listener.filter_chains[0].filters[0].typed_config.rds.route_config_name;
  const routes = (await gateway.adminJson<Json>('/config_dump?resource=dynamic_route_configs')).configs as Json[];
  const routeConfig = routes.find((r) => r.route_config?.name === routeName)?.route_config;
  if (!routeConfig) throw new Error(`the gateway has no route configuration ${routeName}`);
  return { listener, routeConfig };
}

/**
 * `count` distinct RS256 tokens for the bench issuer, signed with node:crypto on worker threads
 * (one per core, at most 4): what --fresh sends, one per request.
 */
async function signFresh(privateKey: KeyObject, count: number, tag: string, now: number): Promise<string[]> {
  const pem = privateKey.export({ type: 'pkcs8', format: 'pem' }) as string;
  const threads = Math.max(1, Math.min(4, os.cpus().length));
  const code = `
    const { parentPort, workerData } = require('node:worker_threads');
    const crypto = require('node:crypto');
    const { pem, from, to, iss, aud, tag, now } = workerData;
    const key = crypto.createPrivateKey(pem);
    const b64 = (o) => Buffer.from(JSON.stringify(o)).toString('base64url');
    const head = b64({ alg: 'RS256', kid: 'bench-1', typ: 'JWT' });
    const out = [];
    for (let i = from; i < to; i++) {
      const input = head + '.' + b64({ iss, aud, sub: 'user-' + tag + '-' + i, jti: tag + '-' + i, scope: 'orders.read', iat: now, exp: now + 3600 });
      out.push(input + '.' + crypto.sign('sha256', Buffer.from(input), key).toString('base64url'));
    }
    parentPort.postMessage(out);`;
  const per = Math.ceil(count / threads);
  const parts = await Promise.all(
    Array.from({ length: threads }, (_, t) => {
      const from = t * per;
      const to = Math.min(count, from + per);
      return new Promise<string[]>((resolve, reject) => {
        const w = new Worker(code, { eval: true, workerData: { pem, from, to, iss: ISS, aud: AUD, tag, now } });
        w.once('message', (m: string[]) => resolve(m));
        w.once('error', reject);
        w.once('exit', (c) => (c === 0 ? undefined : reject(new Error(`signing worker exited with ${c}`))));
      });
    }),
  );
  return parts.flat();
}

async function main(): Promise<void> {
  const load0 = os.loadavg()[0]!.toFixed(2);
  const { privateKey, publicKey } = await generateKeyPair('RS256', { extractable: true });
  const jwk = { ...(await exportJWK(publicKey)), kid: 'bench-1', alg: 'RS256', use: 'sig' };
  const jwks = JSON.stringify({ keys: [jwk] });
  const now = Math.floor(Date.now() / 1000);
  const tokens = await Promise.all(
    Array.from({ length: TOKENS }, (_, i) =>
      new SignJWT({ iss: ISS, aud: AUD, sub: `user-${i}`, scope: 'orders.read', iat: now, exp: now + 3600 })
        .setProtectedHeader({ alg: 'RS256', kid: 'bench-1', typ: 'JWT' })
        .sign(privateKey),
    ),
  );
  // --fresh: per round, the saturated phase's tokens, then the fixed-rate phase's.
  const fixedCount = Math.round(RATE * SECONDS);
  const freshRounds: { saturated: string[]; fixed: string[] }[] = [];
  if (FRESH) {
    const t0 = performance.now();
    const key = KeyObject.from(privateKey);
    for (let r = 0; r < ROUNDS; r++) {
      const all = await signFresh(key, FRESH_SATURATED + fixedCount, `r${r}`, now);
      freshRounds.push({ saturated: all.slice(0, FRESH_SATURATED), fixed: all.slice(FRESH_SATURATED) });
    }
    process.stderr.write(
      `signed ${ROUNDS * (FRESH_SATURATED + fixedCount)} fresh tokens in ${((performance.now() - t0) / 1000).toFixed(1)} s (not measured)\n`,
    );
  }

  /** The same policy on one listener of the bench gateway (`extra`: more spec lines). */
  const jwtPolicy = (name: string, listener: string, extra = '') => `---
apiVersion: signalbox.dev/v1alpha1
kind: JWTPolicy
metadata: { name: ${name} }
spec:
  targetRef: { kind: Gateway, name: bench, sectionName: ${listener} }
  issuer: ${ISS}
  audiences: [${AUD}]
  algorithms: [RS256]
  jwks: { inline: ${jwks} }
${extra}`;
  const [xdsPort, adminPort, authzPort, plainPort, authPort, jwtPort, slowPort] = await Promise.all([
    freePort(),
    freePort(),
    freePort(),
    freePort(),
    freePort(),
    freePort(),
    freePort(),
  ]);
  const dir = mkdtempSync(path.join(os.tmpdir(), 'sb-bench-authz-'));
  const dataDir = mkdtempSync(path.join(os.tmpdir(), 'sb-bench-authz-data-'));
  writeFileSync(
    path.join(dir, 'bench.yaml'),
    `apiVersion: signalbox.dev/v1alpha1
kind: Mesh
metadata: { name: default }
spec: { mtls: { mode: disabled } }
---
apiVersion: signalbox.dev/v1alpha1
kind: Gateway
metadata: { name: base }
spec:
  listeners:
    - { name: plain, port: ${plainPort}, protocol: HTTP }
---
apiVersion: signalbox.dev/v1alpha1
kind: Gateway
metadata: { name: bench }
spec:
  listeners:
    - { name: auth, port: ${authPort}, protocol: HTTP }
    - { name: slow, port: ${slowPort}, protocol: HTTP }
---
apiVersion: signalbox.dev/v1alpha1
kind: HTTPRoute
metadata: { name: bench }
spec:
  parentRefs: [ { kind: Gateway, name: base }, { kind: Gateway, name: bench } ]
  rules:
    - filters: [ { type: RequestRedirect, requestRedirect: { path: { replaceFullPath: /moved }, statusCode: 301 } } ]
${jwtPolicy('bench', 'auth')}${jwtPolicy('bench-slow', 'slow', '  from: [ { header: authorization, prefix: "Bearer " }, { query: access_token } ]\n')}`,
  );

  // SIGNALBOX_GC_PROBE_DIR set: the probe's reports (and with SIGNALBOX_GC_PROBE_RAW=1 its raw heap profiles) stay there.
  const keepProbe = process.env.SIGNALBOX_GC_PROBE_DIR;
  const probeDir = flags.gc ? (keepProbe ?? mkdtempSync(path.join(os.tmpdir(), 'sb-bench-gc-'))) : undefined;
  let probes = 0;
  let sb: ChildProcess | undefined;
  const envoys: Envoy[] = [];
  const credentialDirs: string[] = [];
  let sbLog = '';
  try {
    // SIGNALBOX_BENCH_NODE_ARGS, e.g. "--cpu-prof --cpu-prof-dir=/tmp/prof", profiles the control plane.
    const nodeArgs = (process.env.SIGNALBOX_BENCH_NODE_ARGS ?? '').split(' ').filter(Boolean);
    const probeModule = path.join(here, 'gc-probe.js');
    const serveNodeOptions = [flags['serve-node-options'] ?? '', probeDir ? `--import=${pathToFileURL(probeModule).href}` : ''].join(' ').trim();
    sb = spawn(
      process.execPath,
      [
        ...nodeArgs,
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
        '--authz-port',
        String(authzPort),
        '--data-dir',
        dataDir,
        '--log-level',
        'warn',
        '--access-log-sampling',
        'off',
      ],
      {
        stdio: ['ignore', 'pipe', 'pipe'],
        env: {
          ...process.env,
          ...(serveNodeOptions ? { NODE_OPTIONS: serveNodeOptions } : {}),
          ...(probeDir ? { SIGNALBOX_GC_PROBE_DIR: probeDir } : {}),
        },
      },
    );
    // SIGNALBOX_BENCH_SERVE_LOG=FILE: everything `serve` writes (e.g. with --serve-node-options=--trace-gc) also goes there.
    const serveLog = process.env.SIGNALBOX_BENCH_SERVE_LOG;
    if (serveLog) {
      writeFileSync(serveLog, '');
      for (const out of [sb.stdout!, sb.stderr!]) out.on('data', (b: Buffer) => appendFileSync(serveLog, b));
    }
    sb.stdout!.on('data', (b: Buffer) => (sbLog = (sbLog + b.toString()).slice(-20_000)));
    sb.stderr!.on('data', (b: Buffer) => (sbLog = (sbLog + b.toString()).slice(-20_000)));
    await waitFor(async () => (await fetch(`http://127.0.0.1:${adminPort}/readyz`).catch(() => undefined))?.status === 200, {
      timeoutMs: 30_000,
      what: 'signalbox ready',
    });
    /** TLS to the xDS port (the CA `serve` wrote before opening it) with a token certificate for the gateway. */
    const tlsFor = async (gatewayName: string) => {
      const t = await bootstrapTls(dataDir, `gateway/${gatewayName}`);
      credentialDirs.push(path.dirname(t.certFile));
      return { caFile: t.caFile, certFile: t.certFile, keyFile: t.keyFile };
    };
    const gatewayTls = await tlsFor('bench');
    const gateway = await startEnvoy({
      name: 'bench-gw',
      bootstrapYaml: (p) =>
        bootstrapYaml({
          gateway: 'bench',
          id: 'bench-gw',
          xdsAddress: `127.0.0.1:${xdsPort}`,
          adminPort: p,
          jwtModule: FAST_PATH === 'module',
          tls: gatewayTls,
        }),
    });
    envoys.push(gateway);
    const baseTls = await tlsFor('base');
    const baseEnvoy = await startEnvoy({
      name: 'bench-base',
      bootstrapYaml: (p) => bootstrapYaml({ gateway: 'base', id: 'bench-base', xdsAddress: `127.0.0.1:${xdsPort}`, adminPort: p, tls: baseTls }),
    });
    envoys.push(baseEnvoy);
    await waitFor(async () => (await get(plainPort, tokens[0]!)) === 301, { timeoutMs: 20_000, what: 'baseline listener answering' });
    const plain = await plainListenerOf(baseEnvoy, 'base/plain');
    if (JSON.stringify(plain).includes('signalbox.jwt_check')) throw new Error('the baseline listener carries a JWT filter');
    const jwtEnvoy = await startEnvoy({ name: 'bench-jwt-authn', bootstrapYaml: (p) => jwtAuthnBootstrap(p, jwtPort, jwks, plain) });
    envoys.push(jwtEnvoy);
    for (const port of [plainPort, authPort, jwtPort, slowPort]) {
      await waitFor(async () => (await get(port, tokens[0]!)) === 301, { timeoutMs: 20_000, what: `listener ${port} answering` });
    }
    const want = FAST_PATH === 'module' ? 'envoy.extensions.filters.http.dynamic_modules.v3.DynamicModuleFilter' : 'envoy.extensions.filters.http.lua.v3.Lua';
    if (!(await gateway.admin('/config_dump?resource=dynamic_listeners')).includes(want)) throw new Error(`the gateway does not run the fast path as ${want}`);
    // A request without a token must be refused on the two auth listeners (the filters are on).
    for (const port of [authPort, jwtPort, slowPort]) {
      const status = await new Promise<number>((resolve) =>
        http.get({ host: '127.0.0.1', port, path: '/bench', agent }, (r) => {
          r.resume();
          resolve(r.statusCode ?? 0);
        }),
      );
      if (status !== 401) throw new Error(`listener ${port} let a request without a token through (${status})`);
    }

    if (flags.diagnose) {
      for (let i = 0; i < 500; i++) await get(authPort, tokens[i % tokens.length]!);
      const t0 = performance.now();
      for (let i = 0; i < 500; i++) await get(authPort, tokens[i % tokens.length]!);
      const seq = (performance.now() - t0) / 500;
      const t1 = performance.now();
      for (let i = 0; i < 500; i++) await get(plainPort, tokens[i % tokens.length]!);
      const seqBase = (performance.now() - t1) / 500;
      process.stderr.write(`sequential: ext_authz ${seq.toFixed(3)} ms/request, baseline ${seqBase.toFixed(3)} ms/request\n`);
      process.stderr.write(
        `${await gateway.admin('/stats?filter=signalbox.authz.*(upstream_rq_time|upstream_cx_total|upstream_cx_active|upstream_rq_total)')}\n`,
      );
      const m = await (await fetch(`http://127.0.0.1:${adminPort}/metrics`)).text();
      process.stderr.write(
        `${m
          .split('\n')
          .filter((l) => l.startsWith('signalbox_authz_check_duration_seconds_sum') || l.startsWith('signalbox_authz_check_duration_seconds_count'))
          .join('\n')}\n`,
      );
      const samples: string[] = [];
      const timer = setInterval(() => {
        void gateway.admin('/stats?filter=signalbox.authz.*(upstream_rq_active|upstream_rq_pending_active)$').then((t) => samples.push(t.replace(/\n/g, ' ')));
      }, 500);
      const g0 = process.cpuUsage();
      const sat = await saturated(authPort, tokens, 4);
      const g = process.cpuUsage(g0);
      clearInterval(timer);
      process.stderr.write(
        `saturated ${sat.rps.toFixed(0)} rps; generator CPU ${(((g.user + g.system) / 1e6 / sat.seconds) * 100).toFixed(0)}%\n${samples.slice(0, 6).join('\n')}\n`,
      );
    }
    const configs = [
      { key: 'baseline', name: 'baseline (no auth)', port: plainPort },
      { key: 'jwt_authn', name: 'Envoy jwt_authn', port: jwtPort },
      { key: 'fast', name: `Signalbox (fast path, ${FAST_PATH === 'module' ? 'compiled filter' : 'Lua script'})`, port: authPort },
      { key: 'ext_authz', name: 'Signalbox, ext_authz only', port: slowPort },
    ].filter((c) => CONFIGS.has(c.key));
    const checks = async () => {
      const m = await (await fetch(`http://127.0.0.1:${adminPort}/metrics`)).text();
      return Number(/^signalbox_authz_check_duration_seconds_count\{result="allow"\} (\d+)/m.exec(m)?.[1] ?? 0);
    };
    /**
     * The control plane's own view of a phase, from its default metrics: the event loop's delay
     * (p99 and max since the previous scrape: prom-client resets it on each) and its garbage
     * collections (count and seconds by kind), as counters to subtract.
     */
    const loopAndGc = async () => {
      const m = await (await fetch(`http://127.0.0.1:${adminPort}/metrics`)).text();
      const one = (name: string) => Number(new RegExp(`^signalbox_process_${name} (\\S+)`, 'm').exec(m)?.[1] ?? NaN);
      const gc: Record<string, { count: number; seconds: number }> = {};
      for (const x of m.matchAll(/^signalbox_process_nodejs_gc_duration_seconds_(sum|count)\{kind="(\w+)"\} (\S+)/gm)) {
        gc[x[2]!] ??= { count: 0, seconds: 0 };
        const k = gc[x[2]!]!;
        if (x[1] === 'sum') k.seconds = Number(x[3]);
        else k.count = Number(x[3]);
      }
      return { lagP99Ms: one('nodejs_eventloop_lag_p99_seconds') * 1000, lagMaxMs: one('nodejs_eventloop_lag_max_seconds') * 1000, gc };
    };
    const gcText = (a: Awaited<ReturnType<typeof loopAndGc>>, b: Awaited<ReturnType<typeof loopAndGc>>) =>
      Object.keys(b.gc)
        .map((k) => `${k} ${b.gc[k]!.count - (a.gc[k]?.count ?? 0)} / ${((b.gc[k]!.seconds - (a.gc[k]?.seconds ?? 0)) * 1000).toFixed(0)} ms`)
        .join(', ');
    type Run = {
      saturated: Phase;
      fixed: Phase;
      cpu: { envoy: number; signalbox: number };
      sbCpuSeconds: number;
      serviceChecks: number;
      saturatedChecks: number;
      fixedLoop: { lagP99Ms: number; lagMaxMs: number; gc: string };
      fixedCpuUsPerRequest: number;
      fixedGarbage?: { kibPerRequest: number; scavengesPer10k: number; scavengeMs: number; survivedKiB: number };
    };
    const runs: Run[][] = configs.map(() => []);
    // Rounds, each running every configuration once, starting with a different one each round:
    // figures on a small shared machine drift by tens of percent over minutes; medians of
    // interleaved rounds compare the configurations under the same conditions.
    for (let round = 0; round < ROUNDS; round++) {
      for (let k = 0; k < configs.length; k++) {
        const ci = (k + round) % configs.length;
        const c = configs[ci]!;
        const envoyPid = (c.port === jwtPort ? jwtEnvoy : c.port === plainPort ? baseEnvoy : gateway).process.pid!;
        const saturatedPhase = async () => {
          const checks0 = await checks();
          const cpu0 = { envoy: cpuSeconds(envoyPid), sb: cpuSeconds(sb!.pid!) };
          const sat = FRESH ? await saturated(c.port, freshRounds[round]!.saturated, SECONDS, true) : await saturated(c.port, tokens, SECONDS);
          const cpu1 = { envoy: cpuSeconds(envoyPid), sb: cpuSeconds(sb!.pid!) };
          return { sat, cpu0, cpu1, checks: (await checks()) - checks0 };
        };
        const fixedPhase = async () => {
          const loop0 = await loopAndGc();
          const checks0 = await checks();
          if (probeDir) await toggleProbe(sb!.pid!, probeDir, probes, false);
          const cpu0 = cpuSeconds(sb!.pid!);
          const fixed = await fixedRate(c.port, FRESH ? freshRounds[round]!.fixed : tokens, RATE, SECONDS);
          const cpu1 = cpuSeconds(sb!.pid!);
          const garbage = probeDir ? await toggleProbe(sb!.pid!, probeDir, probes++, true) : undefined;
          const loop1 = await loopAndGc();
          return { fixed, loop0, loop1, checks: (await checks()) - checks0, cpuUsPerRequest: ((cpu1 - cpu0) * 1e6) / fixed.requests, garbage };
        };
        let s: Awaited<ReturnType<typeof saturatedPhase>>;
        let f: Awaited<ReturnType<typeof fixedPhase>>;
        if (STEADY) {
          await fixedRate(c.port, tokens, RATE, 2); // warm-up at the fixed rate (repeated tokens)
          f = await fixedPhase();
          s = await saturatedPhase();
        } else {
          await saturated(c.port, tokens, 2); // warm-up (repeated tokens)
          s = await saturatedPhase();
          f = await fixedPhase();
        }
        const { sat, cpu0, cpu1 } = s;
        const { fixed, loop0, loop1 } = f;
        const serviceChecks = s.checks + f.checks;
        const fixedLoop = { lagP99Ms: loop1.lagP99Ms, lagMaxMs: loop1.lagMaxMs, gc: gcText(loop0, loop1) };
        runs[ci]!.push({
          saturated: sat,
          fixed,
          cpu: { envoy: (100 * (cpu1.envoy - cpu0.envoy)) / sat.seconds, signalbox: (100 * (cpu1.sb - cpu0.sb)) / sat.seconds },
          sbCpuSeconds: cpu1.sb - cpu0.sb,
          serviceChecks,
          saturatedChecks: s.checks,
          fixedLoop,
          fixedCpuUsPerRequest: f.cpuUsPerRequest,
          fixedGarbage: f.garbage
            ? {
                kibPerRequest: f.garbage.bytes / fixed.requests / 1024,
                scavengesPer10k: (f.garbage.young.count * 10_000) / fixed.requests,
                scavengeMs: f.garbage.young.costMs,
                survivedKiB: f.garbage.young.survived / 1024,
              }
            : undefined,
        });
        process.stderr.write(
          `round ${round + 1}, ${c.name}: saturated ${sat.rps.toFixed(0)} req/s (p50 ${sat.p50.toFixed(2)} ms, p99 ${sat.p99.toFixed(2)} ms, ${sat.requests} requests in ${sat.seconds.toFixed(1)} s); ${RATE}/s: p50 ${fixed.p50.toFixed(2)} ms, p99 ${fixed.p99.toFixed(2)} ms, serve CPU ${f.cpuUsPerRequest.toFixed(0)} µs per request; non-301: ${sat.bad + fixed.bad}; ext_authz service checks: ${serviceChecks} (saturated ${s.checks}, Signalbox CPU ${(cpu1.sb - cpu0.sb).toFixed(2)} s); signalbox during the ${RATE}/s phase: event-loop delay p99 ${fixedLoop.lagP99Ms.toFixed(1)} ms, max ${fixedLoop.lagMaxMs.toFixed(1)} ms; GC (count / time) ${fixedLoop.gc}\n${f.garbage ? garbageText(f.garbage, fixed.requests) : ''}`,
        );
      }
    }
    const median = (xs: number[]) =>
      percentile(
        [...xs].sort((a, b) => a - b),
        50,
      );
    const results = configs.map((c, ci) => {
      const rs = runs[ci]!;
      const m = (f: (r: Run) => number) => median(rs.map(f));
      const phase = (f: (r: Run) => Phase): Phase => ({
        requests: m((r) => f(r).requests),
        seconds: m((r) => f(r).seconds),
        rps: m((r) => f(r).rps),
        p50: m((r) => f(r).p50),
        p99: m((r) => f(r).p99),
        bad: rs.reduce((n, r) => n + f(r).bad, 0),
      });
      // Checks the service answered per CPU-second of the whole `signalbox serve` process, saturated phase.
      const checksPerCpuSecond = m((r) => (r.sbCpuSeconds > 0 ? r.saturatedChecks / r.sbCpuSeconds : 0));
      return {
        key: c.key,
        name: c.name,
        saturated: phase((r) => r.saturated),
        fixed: phase((r) => r.fixed),
        cpu: { envoy: m((r) => r.cpu.envoy), signalbox: m((r) => r.cpu.signalbox) },
        serviceChecks: rs.reduce((n, r) => n + r.serviceChecks, 0),
        checksPerCpuSecond,
        rounds: rs.map((r) => r.saturated.rps),
        fixedLoop: rs.map((r) => r.fixedLoop),
        fixedCpuUsPerRequest: m((r) => r.fixedCpuUsPerRequest),
        fixedGarbage: rs.map((r) => r.fixedGarbage),
      };
    });
    const byKey = (key: string) => results.find((r) => r.key === key);
    const base = byKey('baseline')!;
    const authn = byKey('jwt_authn');
    const ext = byKey('fast');
    const only = byKey('ext_authz');
    const f2 = (n: number) => n.toFixed(2);
    const authnIndex = configs.findIndex((c) => c.key === 'jwt_authn');
    const perRound = (key: string) =>
      runs[configs.findIndex((c) => c.key === key)]!.map((r, i) => `${((100 * r.saturated.rps) / runs[authnIndex]![i]!.saturated.rps).toFixed(0)}%`).join(', ');
    const tokensText = FRESH
      ? `a new RS256 token per measured request (saturated phases capped at ${FRESH_SATURATED} requests)`
      : `${TOKENS} distinct RS256 tokens, repeated`;
    const lines = [
      `Machine: ${os.cpus().length} x ${os.cpus()[0]?.model ?? 'cpu'}, Node ${process.version}, Envoy 1 worker thread each (baseline, jwt_authn and Signalbox on three Envoys); medians of ${ROUNDS} interleaved rounds; ${SECONDS}s per phase, closed loop at concurrency ${CONCURRENCY}, open loop at ${RATE} req/s${STEADY ? ' (run first, after a warm-up at that rate)' : ' (after the closed loop)'}, ${tokensText}. Load average before / after: ${load0} / ${os.loadavg()[0]!.toFixed(2)} (other processes compete for the same cores).`,
      '',
      `| configuration | saturated req/s | p50 ms (saturated) | p99 ms (saturated) | p50 ms at ${RATE}/s | p99 ms at ${RATE}/s | Envoy CPU % / µs per request (saturated) | Signalbox CPU % / µs per request (saturated) | ext_authz service checks (saturated + fixed) | non-301 answers |`,
      '| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |',
      ...results.map(
        (r) =>
          `| ${r.name} | ${r.saturated.rps.toFixed(0)} | ${f2(r.saturated.p50)} | ${f2(r.saturated.p99)} | ${f2(r.fixed.p50)} | ${f2(r.fixed.p99)} | ${r.cpu.envoy.toFixed(0)} / ${((r.cpu.envoy * 10_000) / r.saturated.rps).toFixed(0)} | ${r.cpu.signalbox.toFixed(0)} / ${((r.cpu.signalbox * 10_000) / r.saturated.rps).toFixed(0)} | ${r.serviceChecks} | ${r.saturated.bad + r.fixed.bad} |`,
      ),
      '',
      ...(ext
        ? [
            `Signalbox (fast path) p99 at ${RATE}/s minus baseline: ${f2(ext.fixed.p99 - base.fixed.p99)} ms (target <= 1 ms: ${ext.fixed.p99 - base.fixed.p99 <= 1 ? 'met' : 'NOT met'}).`,
          ]
        : []),
      ...(ext && authn
        ? [
            `Signalbox (fast path) saturated throughput / jwt_authn: ${((100 * ext.saturated.rps) / authn.saturated.rps).toFixed(0)}% (target >= 80%: ${ext.saturated.rps >= 0.8 * authn.saturated.rps ? 'met' : 'NOT met'}); round by round: ${perRound('fast')}.`,
          ]
        : []),
      ...(only
        ? [
            `ext_authz only: p99 at ${RATE}/s minus baseline ${f2(only.fixed.p99 - base.fixed.p99)} ms${FRESH ? ` (target with a new token per request <= 2 ms: ${only.fixed.p99 - base.fixed.p99 <= 2 ? 'met' : 'NOT met'})` : ''}${authn ? `; saturated throughput / jwt_authn ${((100 * only.saturated.rps) / authn.saturated.rps).toFixed(0)}%` : ''}.`,
            `ext_authz only: ${only.checksPerCpuSecond.toFixed(0)} ${FRESH ? 'distinct-token ' : ''}checks per CPU-second of the signalbox process (saturated phase, median of rounds)${FRESH ? ` (target >= 3,000: ${only.checksPerCpuSecond >= 3000 ? 'met' : 'NOT met'})` : ''}.`,
            `ext_authz only at ${RATE}/s: serve CPU ${only.fixedCpuUsPerRequest.toFixed(0)} µs per request (baseline ${base.fixedCpuUsPerRequest.toFixed(0)}), median of rounds.`,
          ]
        : []),
    ];
    process.stdout.write(`${lines.join('\n')}\n`);
    if (flags.json)
      writeFileSync(
        flags.json,
        JSON.stringify(
          {
            seconds: SECONDS,
            rounds: ROUNDS,
            concurrency: CONCURRENCY,
            rate: RATE,
            tokens: TOKENS,
            fresh: FRESH,
            steady: STEADY,
            freshSaturated: FRESH ? FRESH_SATURATED : undefined,
            results,
          },
          null,
          2,
        ),
      );
  } catch (e) {
    process.stderr.write(`bench:authz failed: ${(e as Error).message}\n--- signalbox log ---\n${sbLog}\n`);
    process.exitCode = 1;
  } finally {
    agent.destroy();
    for (const p of pools.values()) p.close();
    for (const e of envoys) await e.stop();
    if (sb && sb.exitCode === null) {
      const done = new Promise((r) => sb!.once('exit', r));
      sb.kill('SIGTERM');
      await done;
    }
    rmSync(dir, { recursive: true, force: true });
    rmSync(dataDir, { recursive: true, force: true });
    for (const d of credentialDirs) rmSync(d, { recursive: true, force: true });
    if (probeDir && !keepProbe) rmSync(probeDir, { recursive: true, force: true });
  }
}

await main();
