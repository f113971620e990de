// Runs `signalbox serve` as a real child process (so tests can kill and restart it).
import { spawn, type ChildProcess } from 'node:child_process';
import path from 'node:path';
import { mkdtempSync } from 'node:fs';
import os from 'node:os';
import { issueToken } from '../../src/ca/tokens.js';
import { bootstrapYaml, type BootstrapOptions } from '../../src/cli/bootstrap.js';
import { bootstrapTls } from './credentials.js';
import { repoRoot } from './envoy.js';
import { freePort, waitFor } from './net.js';

export interface SignalboxProcess {
  xdsPort: number;
  dataDir: string;
  /** A proxy token for `service/NAME` or `gateway/NAME`, signed by this instance's key. */
  token(subject: string, ttl?: string): Promise<string>;
  /**
   * An Envoy bootstrap for this control plane as `signalbox bootstrap` writes it: TLS to the xDS
   * port, the proxy's token certificate in files (for its own identity, or `subject`).
   */
  bootstrap(o: Omit<BootstrapOptions, 'xdsAddress' | 'tls' | 'adminPort'> & { subject?: string; ttl?: string }): Promise<(adminPort: number) => string>;
  adminPort: number;
  admin<T = any>(p: string): Promise<T>;
  adminText(p: string): Promise<string>;
  logs(): string;
  /** The running process's id (undefined once it exited). */
  readonly pid: number | undefined;
  kill(signal?: NodeJS.Signals): Promise<void>;
  restart(): Promise<void>;
}

export async function startSignalbox(opts: {
  policies: string;
  dataDir?: string;
  xdsPort?: number;
  adminPort?: number;
  extraArgs?: string[];
  env?: NodeJS.ProcessEnv;
  waitReady?: boolean;
}): Promise<SignalboxProcess> {
  const xdsPort = opts.xdsPort ?? (await freePort());
  const adminPort = opts.adminPort ?? (await freePort());
  // A --data-dir among the extra flags is the one the process uses (it comes last and wins).
  const given = opts.extraArgs?.lastIndexOf('--data-dir') ?? -1;
  const dataDir = given >= 0 ? path.resolve(opts.extraArgs![given + 1]!) : (opts.dataDir ?? mkdtempSync(path.join(os.tmpdir(), 'signalbox-data-')));
  let child: ChildProcess | undefined;
  let log = '';
  let exited = true;
  const launch = async () => {
    child = spawn(
      process.execPath,
      [
        path.join(repoRoot(), 'bin/signalbox.js'),
        'serve',
        '--policies',
        opts.policies,
        '--xds-address',
        '127.0.0.1',
        '--xds-port',
        String(xdsPort),
        '--admin-port',
        String(adminPort),
        '--watch-debounce-ms',
        '50',
        '--data-dir',
        dataDir,
        '--authz-port',
        '0',
        ...(opts.extraArgs ?? []),
      ],
      { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, ...opts.env } },
    );
    exited = false;
    const keep = (b: Buffer) => {
      log += b.toString();
      if (log.length > 400_000) log = log.slice(-200_000);
    };
    child.stdout!.on('data', keep);
    child.stderr!.on('data', keep);
    child.on('exit', () => (exited = true));
    await waitFor(
      async () => {
        if (exited) throw new Error(`signalbox exited:\n${log}`);
        const r = await fetch(`http://127.0.0.1:${adminPort}/${opts.waitReady === false ? 'healthz' : 'readyz'}`).catch(() => undefined);
        return r?.status === 200;
      },
      { timeoutMs: 20_000, what: 'signalbox ready' },
    ).catch((e: Error) => {
      // Never leave a control plane behind that the caller cannot stop (it has no handle yet).
      if (!exited) child?.kill('SIGKILL');
      throw new Error(`${e.message}; its log ends:\n${log.slice(-4000)}`);
    });
  };
  await launch();
  const sb: SignalboxProcess = {
    xdsPort,
    dataDir,
    token: async (subject, ttl) => (await issueToken(dataDir, subject, ttl)).token,
    bootstrap: async ({ subject, ttl, ...o }) => {
      const tls = await bootstrapTls(dataDir, subject ?? (o.sidecar ? `service/${o.sidecar.service}` : `gateway/${o.gateway}`), ttl);
      return (adminPort) => bootstrapYaml({ ...o, tls, xdsAddress: `127.0.0.1:${xdsPort}`, adminPort });
    },
    adminPort,
    admin: async (p) => (await fetch(`http://127.0.0.1:${adminPort}${p}`)).json(),
    adminText: async (p) => (await fetch(`http://127.0.0.1:${adminPort}${p}`)).text(),
    logs: () => log,
    get pid() {
      return exited ? undefined : child?.pid;
    },
    kill: async (signal = 'SIGTERM') => {
      if (exited || !child) return;
      const done = new Promise((r) => child!.once('exit', r));
      child.kill(signal);
      await done;
    },
    restart: async () => {
      await sb.kill();
      await launch();
    },
  };
  return sb;
}
