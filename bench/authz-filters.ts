// `npm run bench:authz-filters`: what each piece of the JWT fast path costs Envoy (not a test).
//
// One real Envoy per variant (static bootstrap, one worker thread, a redirect route so no upstream
// runs), the same 100 RS256 tokens, a closed loop of 16 keep-alive connections; the figure is
// Envoy's CPU time per request (from /proc), which is what bounds a one-worker Envoy's throughput.
// Variants: no filter; Envoy's jwt_authn; a Lua filter doing nothing (the fixed cost of any
// script); the fast path as Signalbox compiles it (the policy's script, repeating remembered
// allows: during the warm-up it asks a stub service, which allows every token, once per token);
// the same fast path in Signalbox's compiled filter (native/jwt-check, an Envoy dynamic module).
// Every variant runs --rounds times; the lowest figure is reported (the least disturbed by
// whatever else runs on the machine). No control plane runs here (static bootstraps, no xDS), so
// the TLS and token defaults of `signalbox serve` do not apply; the stub service is plain-text
// HTTP/2 and is asked only during the warm-up (once per token), never in the measured requests.
//
// --instructions counts instead the instructions Envoy executes per request, under valgrind's
// callgrind (counted only while the measured requests run): slow, but the same figure every
// run, where CPU time on a small shared machine moves by tens of percent. Needs valgrind.
//
// Flags: --requests N per connection (3000; 200 with --instructions) --rounds R (3) --instructions
import os from 'node:os';
import { parseArgs } from 'node:util';
import YAML from 'yaml';
import { exportJWK, generateKeyPair, SignJWT } from 'jose';
import { execFileSync, spawn } from 'node:child_process';
import { mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { provisionEnvoy, provisionJwtModule, startEnvoy } from '../test/helpers/envoy.js';
import { freePort, waitFor } from '../test/helpers/net.js';
import { Conn, cpuSeconds } from './lib.js';
import http2 from 'node:http2';
import type net from 'node:net';
import { FAST_PATH_ROUTE_KEY, JWT_CHECK_FILTER, JWT_CHECK_SCRIPT, routeCheckSpec } from '../src/xds/translator/filters/jwt-fast.js';
import type { IRJwtFastCheck } from '../src/ir/jwt.js';

const { values: flags } = parseArgs({ options: { requests: { type: 'string' }, rounds: { type: 'string', default: '3' }, instructions: { type: 'boolean' } } });
const INSTRUCTIONS = flags.instructions === true;
const REQUESTS = Number(flags.requests ?? (INSTRUCTIONS ? 200 : 3000));
const ROUNDS = INSTRUCTIONS ? 1 : Number(flags.rounds);
const CONNECTIONS = 16;
const ISS = 'https://auth.bench.local/';
const AUD = 'bench-api';

type Json = Record<string, unknown>;

async function main(): Promise<void> {
  const { privateKey, publicKey } = await generateKeyPair('RS256');
  const jwk = { ...(await exportJWK(publicKey)), kid: 'bench-1', alg: 'RS256' };
  const jwks = JSON.stringify({ keys: [jwk] });
  const now = Math.floor(Date.now() / 1000);
  const tokens = await Promise.all(
    Array.from({ length: 100 }, (_, i) =>
      new SignJWT({ iss: ISS, aud: AUD, sub: `user-${i}`, iat: now, exp: now + 3600 }).setProtectedHeader({ alg: 'RS256', kid: 'bench-1' }).sign(privateKey),
    ),
  );
  const check: IRJwtFastCheck = { policy: 'bench', header: 'authorization', version: 'bench' };
  // The stub service: every token allowed, remembered until an hour from now.
  const stub = http2.createServer();
  stub.on('stream', (stream) => {
    stream.on('error', () => undefined); // a report cut off with its request: Envoy 1.40 resets it with INTERNAL_ERROR
    stream.resume();
    stream.on('end', () => {
      stream.respond({ ':status': 200 });
      stream.end(`allow\ncache - ${now + 3600}\n`);
    });
  });
  await new Promise<void>((resolve) => stub.listen(0, '127.0.0.1', resolve));
  const stubPort = (stub.address() as net.AddressInfo).port;
  const authzCluster = {
    name: 'signalbox.authz',
    type: 'STATIC',
    connect_timeout: '1s',
    typed_extension_protocol_options: {
      'envoy.extensions.upstreams.http.v3.HttpProtocolOptions': {
        '@type': 'type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions',
        explicit_http_config: { http2_protocol_options: {} },
      },
    },
    load_assignment: {
      cluster_name: 'signalbox.authz',
      endpoints: [{ lb_endpoints: [{ endpoint: { address: { socket_address: { address: '127.0.0.1', port_value: stubPort } } } }] }],
    },
  };

  const provider = {
    issuer: ISS,
    audiences: [AUD],
    local_jwks: { inline_string: jwks },
    forward: true,
    clock_skew_seconds: 30,
    jwt_cache_config: { jwt_cache_size: 100 },
    from_headers: [{ name: 'authorization', value_prefix: 'Bearer ' }],
  };
  const strict = {
    name: 'envoy.filters.http.jwt_authn',
    typed_config: {
      '@type': 'type.googleapis.com/envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication',
      providers: { bench: provider },
      rules: [{ match: { prefix: '/' }, requires: { provider_name: 'bench' } }],
    },
  };
  const lua = (code: string) => ({
    name: JWT_CHECK_FILTER,
    typed_config: { '@type': 'type.googleapis.com/envoy.extensions.filters.http.lua.v3.Lua', default_source_code: { inline_string: code } },
  });
  const moduleConfig = { name: 'signalbox_jwt_check', do_not_close: true };
  const jwtModule = {
    name: JWT_CHECK_FILTER,
    typed_config: {
      '@type': 'type.googleapis.com/envoy.extensions.filters.http.dynamic_modules.v3.DynamicModuleFilter',
      dynamic_module_config: moduleConfig,
      filter_name: 'jwt_check',
      filter_config: { '@type': 'type.googleapis.com/google.protobuf.StringValue', value: 'signalbox.authz 2000 300' },
    },
  };
  const modulePerRoute = (value: string) => ({
    '@type': 'type.googleapis.com/envoy.extensions.filters.http.dynamic_modules.v3.DynamicModuleFilterPerRoute',
    dynamic_module_config: moduleConfig,
    per_route_config_name: 'jwt_check',
    filter_config: { '@type': 'type.googleapis.com/google.protobuf.StringValue', value },
  });
  // Each variant: its filters, and the route's per-filter config. The compiled filter also runs on
  // a route that has no check ("skip"): what a module proxy's listener without JWT policies pays
  // for keeping the filter.
  const variants: [string, Json[], Json?][] = [
    ['no filter (baseline)', []],
    ["Envoy's jwt_authn", [strict]],
    ['a Lua filter doing nothing', [lua('function envoy_on_request(handle) end')]],
    ['the fast-path script, remembered tokens (Signalbox)', [lua(JWT_CHECK_SCRIPT)]],
    ['the fast-path module, remembered tokens (Signalbox)', [jwtModule], { [JWT_CHECK_FILTER]: modulePerRoute(routeCheckSpec(check)) }],
    ['the fast-path module on a route without a check ("skip")', [jwtModule], { [JWT_CHECK_FILTER]: modulePerRoute('skip') }],
  ];

  const results: [string, number][] = [];
  for (const [name, filters, perRoute] of variants) {
    let best = Infinity;
    for (let round = 0; round < ROUNDS; round++) {
      const port = await freePort();
      const hcm = {
        '@type': 'type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager',
        stat_prefix: 'bench',
        route_config: {
          virtual_hosts: [
            {
              name: 'any',
              domains: ['*'],
              routes: [
                {
                  match: { prefix: '/' },
                  redirect: { path_redirect: '/moved' },
                  typed_per_filter_config: perRoute,
                  metadata: { filter_metadata: { [JWT_CHECK_FILTER]: { [FAST_PATH_ROUTE_KEY]: routeCheckSpec(check) } } } /* static bootstrap: plain JSON */,
                },
              ],
            },
          ],
        },
        http_filters: [
          ...filters,
          { name: 'envoy.filters.http.router', typed_config: { '@type': 'type.googleapis.com/envoy.extensions.filters.http.router.v3.Router' } },
        ],
      };
      const bootstrapYaml = (adminPort: number) =>
        YAML.stringify({
          admin: { address: { socket_address: { address: '127.0.0.1', port_value: adminPort } } },
          static_resources: {
            clusters: [authzCluster],
            listeners: [
              {
                name: 'bench',
                address: { socket_address: { address: '127.0.0.1', port_value: port } },
                filter_chains: [{ filters: [{ name: 'envoy.filters.network.http_connection_manager', typed_config: hcm }] }],
              },
            ],
          },
        });
      const run = (n: number) => Promise.all(Array.from({ length: CONNECTIONS }, (_, c) => loop(port, n, (i) => tokens[(c * 7 + i) % tokens.length]!)));
      if (INSTRUCTIONS) {
        const ir = await instructionsPerRequest(bootstrapYaml, run);
        best = Math.min(best, ir);
        continue;
      }
      const envoy = await startEnvoy({ name: 'bench-filters', bootstrapYaml });
      try {
        await run(300); // warm-up: connections, JWT caches
        const cpu0 = cpuSeconds(envoy.process.pid!);
        const bad = (await run(REQUESTS)).reduce((a, b) => a + b, 0);
        const us = ((cpuSeconds(envoy.process.pid!) - cpu0) * 1e6) / (CONNECTIONS * REQUESTS);
        if (bad > 0) throw new Error(`${name}: ${bad} answers were not the redirect`);
        best = Math.min(best, us);
      } finally {
        await envoy.stop();
      }
    }
    results.push([name, best]);
    process.stderr.write(`${name}: ${best.toFixed(0)} ${INSTRUCTIONS ? 'instructions' : 'µs'}\n`);
  }
  stub.close();
  const base = results[0]![1];
  const unit = INSTRUCTIONS ? 'Envoy instructions per request (callgrind)' : 'Envoy CPU µs per request';
  const lines = [
    `Machine: ${os.cpus().length} x ${os.cpus()[0]?.model ?? 'cpu'}; Envoy 1 worker; ${CONNECTIONS} connections x ${REQUESTS} requests; ${INSTRUCTIONS ? 'instructions counted by callgrind' : `lowest of ${ROUNDS} rounds`}; load average ${os.loadavg()[0]!.toFixed(2)} at the end.`,
    '',
    `| filters | ${unit} | over no filter | of jwt_authn's |`,
    '| --- | ---: | ---: | ---: |',
    ...results.map(([n, v]) => `| ${n} | ${v.toFixed(0)} | +${(v - base).toFixed(0)} | ${((100 * v) / results[1]![1]).toFixed(0)} % |`),
  ];
  process.stdout.write(`${lines.join('\n')}\n`);
}

/**
 * Envoy under callgrind: instrumentation off while it starts and warms up, on for `run(REQUESTS)`
 * only; the instructions counted, divided by the requests.
 */
async function instructionsPerRequest(bootstrapYaml: (adminPort: number) => string, run: (n: number) => Promise<number[]>): Promise<number> {
  const bin = await provisionEnvoy();
  const adminPort = await freePort();
  const dir = mkdtempSync(path.join(os.tmpdir(), 'bench-callgrind-'));
  const config = path.join(dir, 'bootstrap.yaml');
  writeFileSync(config, bootstrapYaml(adminPort));
  const child = spawn(
    'valgrind',
    [
      '--tool=callgrind',
      '--instr-atstart=no',
      `--callgrind-out-file=${dir}/out.%p`,
      bin,
      '-c',
      config,
      '--disable-hot-restart',
      '--concurrency',
      '1',
      '-l',
      'error',
    ],
    { stdio: 'ignore', env: { ...process.env, ENVOY_DYNAMIC_MODULES_SEARCH_PATH: await provisionJwtModule() } },
  );
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  const control = (...args: string[]) => execFileSync('callgrind_control', [...args, String(child.pid)], { stdio: 'ignore' });
  try {
    await waitFor(async () => (await fetch(`http://127.0.0.1:${adminPort}/ready`).catch(() => undefined))?.status === 200, {
      timeoutMs: 300_000,
      intervalMs: 1000,
      what: 'envoy under callgrind ready',
    });
    await run(50); // warm-up, not counted
    control('-i', 'on');
    const bad = (await run(REQUESTS)).reduce((a, b) => a + b, 0);
    control('-i', 'off');
    control('-d');
    if (bad > 0) throw new Error(`${bad} answers were not the redirect`);
  } finally {
    child.kill('SIGTERM');
    await exited;
  }
  let total = 0;
  for (const f of readdirSync(dir).filter((n) => n.startsWith('out.'))) {
    for (const m of readFileSync(path.join(dir, f), 'utf8').matchAll(/^totals: (\d+)/gm)) total += Number(m[1]);
  }
  rmSync(dir, { recursive: true, force: true });
  return total / (CONNECTIONS * REQUESTS);
}

/** One keep-alive connection sending `n` requests one after another; resolves to the non-301 count. */
async function loop(port: number, n: number, token: (i: number) => string): Promise<number> {
  const conn = new Conn(port);
  let bad = 0;
  try {
    for (let i = 0; i < n; i++) if ((await conn.get(token(i))) !== 301) bad++;
  } finally {
    conn.close();
  }
  return bad;
}

await main();
