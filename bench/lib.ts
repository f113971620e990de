// Small helpers the benchmarks share: process CPU time from /proc, nearest-rank percentiles, and a
// lean keep-alive HTTP/1.1 client for load generation.
import { readFileSync } from 'node:fs';
import net from 'node:net';

const TICK = 100; // USER_HZ: clock ticks per second in /proc/<pid>/stat on Linux

/** CPU time a process has used so far, in seconds (user and system, and their sum). */
export function cpuTimes(pid: number): { user: number; system: number; total: number } {
  const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
  const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  const user = Number(f[11]) / TICK;
  const system = Number(f[12]) / TICK;
  return { user, system, total: user + system };
}

/** CPU seconds (user + system) a process has used so far. */
export function cpuSeconds(pid: number): number {
  return cpuTimes(pid).total;
}

/** Nearest-rank percentile of an ascending list (NaN when empty). */
export function percentile(sorted: number[], p: number): number {
  if (sorted.length === 0) return NaN;
  return sorted[Math.min(sorted.length - 1, Math.max(0, Math.ceil((p / 100) * sorted.length) - 1))]!;
}

/**
 * A lean HTTP/1.1 keep-alive connection (one request in flight): `GET /bench` with a bearer token,
 * resolving to the status (0 when the connection failed). Node's http client costs several times
 * more CPU per request; on a small machine the load generator would take the cores the measured
 * processes need.
 */
export class Conn {
  private socket: net.Socket;
  private buf: Buffer = Buffer.alloc(0);
  private waiting?: (status: number) => void;
  private ready: Promise<void>;

  constructor(port: number) {
    this.socket = net.connect(port, '127.0.0.1');
    this.socket.setNoDelay(true);
    this.ready = new Promise((resolve, reject) => {
      this.socket.once('connect', () => resolve());
      this.socket.once('error', reject);
    });
    this.socket.on('data', (d: Buffer) => this.onData(d));
    this.socket.on('error', () => this.finish(0));
    this.socket.on('close', () => this.finish(0));
  }

  private finish(status: number): void {
    const w = this.waiting;
    this.waiting = undefined;
    w?.(status);
  }

  private onData(d: Buffer): void {
    this.buf = this.buf.length ? Buffer.concat([this.buf, d]) : d;
    for (;;) {
      const end = this.buf.indexOf('\r\n\r\n');
      if (end < 0) return;
      const head = this.buf.subarray(0, end).toString('latin1');
      const status = Number(head.slice(9, 12));
      const m = /\r\ncontent-length:\s*(\d+)/i.exec(head);
      const total = end + 4 + (m ? Number(m[1]) : 0);
      if (this.buf.length < total) return;
      this.buf = this.buf.subarray(total);
      this.finish(status);
    }
  }

  get(token: string): Promise<number> {
    return this.send(`GET /bench HTTP/1.1\r\nhost: bench\r\nauthorization: Bearer ${token}\r\n\r\n`);
  }

  /** `GET path` without credentials. */
  getPath(p: string): Promise<number> {
    return this.send(`GET ${p} HTTP/1.1\r\nhost: bench\r\n\r\n`);
  }

  private async send(head: string): Promise<number> {
    await this.ready.catch(() => undefined);
    if (this.socket.destroyed) return 0;
    return new Promise((resolve) => {
      this.waiting = resolve;
      this.socket.write(head);
    });
  }

  /** False once the connection failed or closed (a new Conn is needed). */
  get alive(): boolean {
    return !this.socket.destroyed;
  }

  close(): void {
    this.socket.destroy();
  }
}
