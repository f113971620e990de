/**
 * Test helper: provision and run a real Consul agent (v1.14.x, MPL-2.0) on
 * loopback ports for integration tests.
 *
 *   const consul = await startConsul();            // in-memory -dev agent
 *   const consul = await startConsul({ persistent: true }); // state survives restart()
 *   ... talk HTTP to `http://${consul.httpAddr}` ...
 *   await consul.stop();
 *
 * The binary comes from scripts/provision-consul.sh (built from source once and
 * cached; the first build takes several minutes).
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { createSocket } from 'node:dgram';
import { existsSync, rmSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, isAbsolute, join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { fileURLToPath } from 'node:url';
import { freePort } from './net.js';

export interface ConsulAgent {
  /** "127.0.0.1:PORT" of the agent's HTTP API. */
  httpAddr: string;
  /**
   * Data directory of a persistent agent. Empty string for the default
   * (in-memory, -dev) agent, whose state is lost on restart().
   */
  dataDir: string;
  /** Graceful stop (SIGTERM, SIGKILL after a grace period); resolves once the process has exited. */
  stop(): Promise<void>;
  /** SIGKILL; resolves once the process has exited. */
  kill(): Promise<void>;
  /** Stop (if running) and start again on the same ports and data dir; resolves once a leader is elected. */
  restart(): Promise<void>;
  /** Recent stdout+stderr of the agent (bounded), across restarts. */
  logs(): string;
}

const READY_TIMEOUT_MS = 30_000;
const POLL_INTERVAL_MS = 100;
const STOP_GRACE_MS = 10_000;
const MAX_LOG_CHARS = 512 * 1024;
const START_ATTEMPTS = 3;

// ---------------------------------------------------------------------------
// Repo root and provisioning

function findRepoRoot(): string {
  let dir = dirname(fileURLToPath(import.meta.url));
  for (;;) {
    if (existsSync(join(dir, 'package.json'))) return dir;
    const parent = dirname(dir);
    if (parent === dir) {
      throw new Error(`consul helper: no package.json found above ${dirname(fileURLToPath(import.meta.url))}`);
    }
    dir = parent;
  }
}

let provisioning: Promise<string> | undefined;

/**
 * Runs scripts/provision-consul.sh and returns the absolute path of the consul
 * binary. Concurrent and repeated calls share one run per process. Progress of
 * a (slow) cold build is forwarded to this process's stderr.
 */
export async function provisionConsul(): Promise<string> {
  provisioning ??= runProvisionScript().catch((err: unknown) => {
    provisioning = undefined; // allow a later retry
    throw err;
  });
  return provisioning;
}

function runProvisionScript(): Promise<string> {
  const root = findRepoRoot();
  const script = join(root, 'scripts', 'provision-consul.sh');
  return new Promise<string>((resolvePath, reject) => {
    const child = spawn('bash', [script], {
      cwd: root,
      env: process.env,
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let stdout = '';
    let stderr = '';
    child.stdout.setEncoding('utf8');
    child.stderr.setEncoding('utf8');
    child.stdout.on('data', (chunk: string) => {
      stdout += chunk;
    });
    child.stderr.on('data', (chunk: string) => {
      stderr += chunk;
      if (stderr.length > MAX_LOG_CHARS) stderr = stderr.slice(-MAX_LOG_CHARS);
      process.stderr.write(chunk);
    });
    child.once('error', (err) => {
      reject(new Error(`consul helper: could not run ${script}: ${err.message}`));
    });
    child.once('close', (code, signal) => {
      const lines = stdout
        .split('\n')
        .map((l) => l.trim())
        .filter((l) => l !== '');
      const bin = lines.length === 1 ? lines[0] : undefined;
      if (code !== 0 || bin === undefined || !isAbsolute(bin) || !existsSync(bin)) {
        const how = code !== null ? `exit code ${code}` : `signal ${signal ?? '?'}`;
        reject(new Error(`consul helper: ${script} failed (${how}); stdout: ${JSON.stringify(stdout.trim())}\n` + `--- stderr ---\n${stderr}`));
        return;
      }
      resolvePath(bin);
    });
  });
}

// ---------------------------------------------------------------------------
// Cleanup of anything still running when the test process exits

const liveChildren = new Set<ChildProcess>();
const ownedDirs = new Set<string>();
let exitHookInstalled = false;

function installExitHook(): void {
  if (exitHookInstalled) return;
  exitHookInstalled = true;
  process.once('exit', () => {
    for (const child of liveChildren) {
      try {
        child.kill('SIGKILL');
      } catch {
        // already gone
      }
    }
    for (const dir of ownedDirs) {
      try {
        rmSync(dir, { recursive: true, force: true });
      } catch {
        // best effort
      }
    }
  });
}

// ---------------------------------------------------------------------------
// Ports

interface Ports {
  http: number;
  server: number;
  serfLan: number;
  serfWan: number;
}

/** Serf also listens on UDP on its ports: check that the UDP side is free too. */
function udpFree(port: number): Promise<boolean> {
  return new Promise<boolean>((done) => {
    const sock = createSocket('udp4');
    sock.once('error', () => {
      sock.close();
      done(false);
    });
    sock.bind({ port, address: '127.0.0.1', exclusive: true }, () => {
      sock.close(() => done(true));
    });
  });
}

async function pickPorts(): Promise<Ports> {
  for (let attempt = 0; attempt < 20; attempt++) {
    // freePort never hands out a port twice, so the four are distinct.
    const [http, server, serfLan, serfWan] = [await freePort(), await freePort(), await freePort(), await freePort()];
    if ((await udpFree(serfLan)) && (await udpFree(serfWan))) return { http, server, serfLan, serfWan };
  }
  throw new Error('consul helper: could not find free loopback ports');
}

// ---------------------------------------------------------------------------
// Agent

class Agent implements ConsulAgent {
  readonly httpAddr: string;
  private child: ChildProcess | undefined;
  private exited: Promise<void> = Promise.resolve();
  private running = false;
  private buf = '';
  private readonly nodeName: string;

  constructor(
    private readonly bin: string,
    private readonly ports: Ports,
    readonly dataDir: string,
    private readonly persistent: boolean,
  ) {
    this.httpAddr = `127.0.0.1:${ports.http}`;
    this.nodeName = `signalbox-consul-${ports.http}`;
  }

  logs(): string {
    return this.buf;
  }

  private appendLog(text: string): void {
    this.buf += text;
    if (this.buf.length > MAX_LOG_CHARS) this.buf = this.buf.slice(-MAX_LOG_CHARS);
  }

  private args(): string[] {
    const p = this.ports;
    const common = [
      '-node',
      this.nodeName,
      '-bind',
      '127.0.0.1',
      '-client',
      '127.0.0.1',
      '-http-port',
      String(p.http),
      '-server-port',
      String(p.server),
      '-serf-lan-port',
      String(p.serfLan),
      '-serf-wan-port',
      String(p.serfWan),
      '-dns-port',
      '-1',
      '-grpc-port',
      '-1',
      // -dev binds gRPC-TLS to the fixed port 8503 by default; that would clash
      // between agents (and with anything else on the machine).
      '-grpc-tls-port',
      '-1',
      '-log-level',
      'info',
    ];
    if (!this.persistent) return ['agent', '-dev', ...common];
    return [
      'agent',
      '-server',
      '-bootstrap-expect=1',
      '-data-dir',
      this.dataDir,
      '-ui=false',
      // Dev-like raft timings so leader election after (re)start takes well under a second.
      '-hcl',
      'performance { raft_multiplier = 1 }',
      ...common,
    ];
  }

  /** Start the process and wait until it has a leader and has registered itself in the catalog. */
  async start(): Promise<void> {
    if (this.running) throw new Error('consul helper: agent is already running');
    installExitHook();
    this.appendLog(`--- signalbox: starting ${this.bin} ${this.args().join(' ')}\n`);
    const child = spawn(this.bin, this.args(), { stdio: ['ignore', 'pipe', 'pipe'] });
    this.child = child;
    this.running = true;
    liveChildren.add(child);
    child.stdout?.setEncoding('utf8');
    child.stderr?.setEncoding('utf8');
    child.stdout?.on('data', (chunk: string) => this.appendLog(chunk));
    child.stderr?.on('data', (chunk: string) => this.appendLog(chunk));
    let exitInfo: string | undefined;
    this.exited = new Promise<void>((done) => {
      const finish = (info: string): void => {
        if (exitInfo !== undefined) return;
        exitInfo = info;
        this.running = false;
        liveChildren.delete(child);
        this.appendLog(`--- signalbox: consul ${info}\n`);
        done();
      };
      child.once('exit', (code, signal) => finish(code !== null ? `exited with code ${code}` : `killed by ${signal ?? '?'}`));
      child.once('error', (err) => finish(`failed to start: ${err.message}`));
    });

    const deadline = Date.now() + READY_TIMEOUT_MS;
    for (;;) {
      if (exitInfo !== undefined) {
        throw new Error(`consul helper: agent ${exitInfo} before it was ready\n--- logs ---\n${this.buf}`);
      }
      if (await this.ready()) return;
      if (Date.now() >= deadline) {
        await this.kill();
        throw new Error(`consul helper: no leader within ${READY_TIMEOUT_MS / 1000} s on ${this.httpAddr}\n--- logs ---\n${this.buf}`);
      }
      await sleep(POLL_INTERVAL_MS);
    }
  }

  private async ready(): Promise<boolean> {
    try {
      const leaderRes = await fetch(`http://${this.httpAddr}/v1/status/leader`, {
        signal: AbortSignal.timeout(2_000),
      });
      if (!leaderRes.ok) return false;
      const leader: unknown = await leaderRes.json();
      if (typeof leader !== 'string' || leader === '') return false;
      // The leader is also able to serve writes once this agent's own node is in the catalog.
      const nodeRes = await fetch(`http://${this.httpAddr}/v1/catalog/node/${this.nodeName}`, {
        signal: AbortSignal.timeout(2_000),
      });
      if (!nodeRes.ok) return false;
      const node: unknown = await nodeRes.json();
      return typeof node === 'object' && node !== null && 'Node' in node && node.Node !== null;
    } catch {
      return false; // not listening yet, or a request timed out
    }
  }

  async stop(): Promise<void> {
    const child = this.child;
    if (child === undefined || !this.running) return this.exited;
    child.kill('SIGTERM');
    const timer = setTimeout(() => {
      if (this.running) child.kill('SIGKILL');
    }, STOP_GRACE_MS);
    try {
      await this.exited;
    } finally {
      clearTimeout(timer);
    }
  }

  async kill(): Promise<void> {
    const child = this.child;
    if (child === undefined || !this.running) return this.exited;
    child.kill('SIGKILL');
    await this.exited;
  }

  async restart(): Promise<void> {
    await this.stop();
    await this.start();
  }
}

/**
 * Start a Consul agent (single server) on free loopback ports and wait until it
 * has elected itself leader.
 *
 * - default: `consul agent -dev` (in-memory state; restart() starts empty).
 * - `{ persistent: true }`: `-server -bootstrap-expect=1 -data-dir <tmp dir>`;
 *   restart() keeps the state (KV, catalog, ...).
 *
 * The agent is killed (and its temp data dir removed) when the test process exits.
 */
export async function startConsul(opts: { persistent?: boolean } = {}): Promise<ConsulAgent> {
  const persistent = opts.persistent ?? false;
  const bin = await provisionConsul();
  let lastError: unknown;
  for (let attempt = 1; attempt <= START_ATTEMPTS; attempt++) {
    const ports = await pickPorts();
    let dataDir = '';
    if (persistent) {
      dataDir = await mkdtemp(join(tmpdir(), 'signalbox-consul-'));
      ownedDirs.add(dataDir);
    }
    const agent = new Agent(bin, ports, dataDir, persistent);
    try {
      await agent.start();
      return agent;
    } catch (err) {
      lastError = err;
      await agent.kill();
      if (dataDir !== '') {
        await rm(dataDir, { recursive: true, force: true });
        ownedDirs.delete(dataDir);
      }
      // A port taken between picking and binding: try again with new ports.
      if (!/address already in use/i.test(agent.logs())) break;
    }
  }
  throw lastError;
}
