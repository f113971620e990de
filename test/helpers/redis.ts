// A real redis-server on a free loopback port, for the global rate-limit tests and benchmark. The
// binary comes from $SIGNALBOX_REDIS_BIN (scripts/test.mjs sets it from scripts/provision-redis.sh)
// or, when a test file runs by hand, from that script. No persistence; kill() stops it at once
// (an outage), start() brings it back on the same port (empty: counters start again). With
// unixSocket it also listens on a Unix socket in a fresh temporary directory (mode 0700).
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { repoRoot } from './envoy.js';
import { freePort, waitFor } from './net.js';

export interface RedisServer {
  port: number;
  url: string;
  /** With unixSocket: the socket's path and its URL (unix:///…). */
  socket?: string;
  socketUrl?: string;
  /** Starts it again (after kill) on the same port. */
  start(): Promise<void>;
  /** SIGKILL, resolves once it exited. */
  kill(): Promise<void>;
  /** One command over a fresh connection (RESP), e.g. ['DBSIZE']; the reply as text. */
  command(args: string[]): Promise<string>;
  logs(): string;
  stop(): Promise<void>;
}

let bin: string | undefined;

export function redisBinary(): string {
  if (bin) return bin;
  if (process.env.SIGNALBOX_REDIS_BIN) {
    bin = process.env.SIGNALBOX_REDIS_BIN;
    return bin;
  }
  const r = spawnSync('bash', [path.join(repoRoot(), 'scripts', 'provision-redis.sh')], { encoding: 'utf8' });
  const out = r.stdout.trim().split('\n').pop();
  if (r.status !== 0 || !out) throw new Error(`redis helper: scripts/provision-redis.sh failed (exit ${r.status}):\n${r.stderr}`);
  bin = out;
  return bin;
}

const live = new Set<ChildProcess>();
process.once('exit', () => {
  for (const c of live) c.kill('SIGKILL');
});

export async function startRedis(opts: { password?: string; unixSocket?: boolean } = {}): Promise<RedisServer> {
  const port = await freePort();
  const socketDir = opts.unixSocket ? mkdtempSync(path.join(os.tmpdir(), 'sb-redis-')) : undefined;
  const socket = socketDir ? path.join(socketDir, 'redis.sock') : undefined;
  let child: ChildProcess | undefined;
  let log = '';
  const launch = async () => {
    const args = [
      '--port',
      String(port),
      '--bind',
      '127.0.0.1',
      '--save',
      '',
      '--appendonly',
      'no',
      '--daemonize',
      'no',
      '--loglevel',
      'warning',
      ...(opts.password ? ['--requirepass', opts.password] : []),
      ...(socket ? ['--unixsocket', socket, '--unixsocketperm', '700'] : []),
    ];
    const c = spawn(redisBinary(), args, { stdio: ['ignore', 'pipe', 'pipe'] });
    child = c;
    live.add(c);
    c.on('exit', () => live.delete(c));
    const keep = (b: Buffer) => {
      log = (log + b.toString()).slice(-20_000);
    };
    c.stdout!.on('data', keep);
    c.stderr!.on('data', keep);
    await waitFor(
      async () => (await server.command(['PING']).catch(() => '')).includes('PONG') || (await server.command(['PING']).catch(() => '')).includes('NOAUTH'),
      { what: 'redis-server answering', timeoutMs: 10_000 },
    );
  };
  const server: RedisServer = {
    port,
    url: `redis://127.0.0.1:${port}`,
    ...(socket ? { socket, socketUrl: `unix://${socket}` } : {}),
    start: launch,
    kill: async () => {
      const c = child;
      if (!c || c.exitCode !== null || c.signalCode !== null) return;
      const done = new Promise((r) => c.once('exit', r));
      c.kill('SIGKILL');
      await done;
    },
    command: (args) =>
      new Promise((resolve, reject) => {
        const s = net.connect(port, '127.0.0.1');
        let text = '';
        const auth = opts.password ? `*2\r\n$4\r\nAUTH\r\n$${Buffer.byteLength(opts.password)}\r\n${opts.password}\r\n` : '';
        s.setTimeout(2_000, () => s.destroy(new Error('redis command timed out')));
        s.on('connect', () => s.write(`${auth}*${args.length}\r\n${args.map((a) => `$${Buffer.byteLength(a)}\r\n${a}\r\n`).join('')}`));
        s.on('data', (b) => {
          text += b.toString();
          const replies = text.split('\r\n').filter((l) => /^[+\-:$*]/.test(l)).length;
          if (replies >= (auth ? 2 : 1)) s.end();
        });
        s.on('close', () => resolve(auth ? text.replace(/^\+OK\r\n/, '') : text));
        s.on('error', reject);
      }),
    logs: () => log,
    stop: async () => {
      await server.kill();
      if (socketDir) rmSync(socketDir, { recursive: true, force: true });
    },
  };
  await launch();
  return server;
}
