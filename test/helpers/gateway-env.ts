// One real `signalbox serve` process and one real Envoy gateway fed by it, for tests that prove
// policies by their effect on traffic. Policies are written into a fresh temp directory.
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { startEnvoy, type Envoy } from './envoy.js';
import { freePort, waitFor } from './net.js';
import { startSignalbox, type SignalboxProcess } from './signalbox.js';

export interface GatewayEnv {
  dir: string;
  gatewayPort: number;
  sb: SignalboxProcess;
  envoy: Envoy;
  proxyId: string;
  url(p: string): string;
  /** Writes (or replaces) one policy file. */
  write(file: string, text: string): void;
  /** The value of one Envoy counter or gauge (0 when Envoy has not created it yet). */
  stat(name: string): Promise<number>;
  /** Resolves once Envoy has ACKed every resource type Signalbox sent it. */
  synced(): Promise<void>;
  stop(): Promise<void>;
}

function escapeRegex(s: string): string {
  return s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
}

/**
 * `files` gets the gateway port and returns the policy files (name -> YAML). The Gateway in them
 * must be called `gateway` (or pass `gateway`) and listen on the port it is given.
 */
export async function startGatewayEnv(opts: {
  name: string;
  gateway?: string;
  files: (gatewayPort: number) => Record<string, string>;
  delta?: boolean;
  serveArgs?: string[];
}): Promise<GatewayEnv> {
  const gatewayPort = await freePort();
  const dir = mkdtempSync(path.join(os.tmpdir(), `sb-${opts.name}-`));
  for (const [f, text] of Object.entries(opts.files(gatewayPort))) writeFileSync(path.join(dir, f), text);
  const sb = await startSignalbox({ policies: dir, extraArgs: opts.serveArgs });
  const proxyId = `${opts.name}-gw`;
  let envoy: Envoy;
  try {
    envoy = await startEnvoy({
      name: proxyId,
      bootstrapYaml: await sb.bootstrap({ gateway: opts.gateway ?? 'gateway', id: proxyId, delta: opts.delta }),
    });
  } catch (e) {
    await sb.kill();
    throw e;
  }
  const env: GatewayEnv = {
    dir,
    gatewayPort,
    sb,
    envoy,
    proxyId,
    url: (p) => `http://127.0.0.1:${gatewayPort}${p}`,
    write: (file, text) => writeFileSync(path.join(dir, file), text),
    stat: async (name) => {
      const text = await envoy.admin(`/stats?filter=${encodeURIComponent(`^${escapeRegex(name)}$`)}`);
      const m = text.match(/: (\d+)\s*$/m);
      return m ? Number(m[1]) : 0;
    },
    synced: () =>
      waitFor(
        async () => {
          const s = await sb.admin(`/api/proxies/${proxyId}`).catch(() => undefined);
          return s?.state === 'SYNCED';
        },
        { what: `${proxyId} synced`, timeoutMs: 15_000 },
      ),
    stop: async () => {
      await envoy.stop();
      await sb.kill();
      rmSync(dir, { recursive: true, force: true });
    },
  };
  return env;
}

/** Runs `n` jobs with at most `concurrency` in flight; results in job order. */
export async function pool<T>(n: number, concurrency: number, job: (i: number) => Promise<T>): Promise<T[]> {
  const out = new Array<T>(n);
  let next = 0;
  const worker = async () => {
    for (;;) {
      const i = next++;
      if (i >= n) return;
      out[i] = await job(i);
    }
  };
  await Promise.all(Array.from({ length: Math.min(concurrency, n) }, worker));
  return out;
}

/** One timed request (never throws for HTTP statuses). */
export async function timedGet(url: string, init: RequestInit = {}): Promise<{ status: number; headers: Headers; body: string; ms: number }> {
  const t0 = performance.now();
  const res = await fetch(url, { redirect: 'manual', ...init });
  const body = await res.text();
  return { status: res.status, headers: res.headers, body, ms: performance.now() - t0 };
}
