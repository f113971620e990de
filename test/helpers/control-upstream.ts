// A test upstream the suite steers at runtime: fail the next N requests with a status, delay or
// hold responses, reset connections, fail its health path. It counts what it receives, reports
// the headers it saw, and names itself in every response (`x-upstream`), so a test can tell which
// instance answered and how many attempts Envoy made.
import http from 'node:http';
import type { AddressInfo, Socket } from 'node:net';

export interface ControlSeen {
  method: string;
  path: string;
  headers: http.IncomingHttpHeaders;
  /** 1-based position among the non-health requests this upstream received. */
  n: number;
  /** What the upstream did with it. */
  outcome: 'ok' | 'status' | 'reset' | 'delayed' | 'held';
}

export interface ControlUpstreamOptions {
  /** Path answered as the health check (not counted in `count`). Default `/healthz`. */
  healthPath?: string;
  host?: string;
  port?: number;
}

export interface ControlUpstream {
  name: string;
  port: number;
  /** Non-health requests received since start or the last `reset()`. */
  readonly count: number;
  /** Health-path requests received since start or the last `reset()`. */
  readonly healthCount: number;
  /** Requests being served right now (non-health), and the most seen at once. */
  readonly inFlight: number;
  readonly maxInFlight: number;
  /** Every non-health request, in arrival order (bounded to the last 10,000). */
  readonly seen: readonly ControlSeen[];
  /** The next `n` requests get `status` (default 503) instead of 200. */
  failNext(n: number, status?: number): void;
  /** Every request gets `status` until `reset()` (or `setStatus(200)`). */
  setStatus(status: number): void;
  /** Every response waits `ms` first. */
  setDelay(ms: number): void;
  /** The next `n` requests wait `ms` before answering; later ones are not delayed. */
  delayNext(n: number, ms: number): void;
  /** The next `n` requests have their connection destroyed instead of an answer. */
  resetNext(n: number): void;
  /** Requests are held (not answered) until `release()`. */
  hold(): void;
  /** Answers every held request and stops holding. */
  release(): void;
  /** The health path answers 200 (true) or 503 (false). */
  setHealthy(ok: boolean): void;
  /** Resolves when `count` reaches `n` (polling, bounded). */
  waitForCount(n: number, timeoutMs?: number): Promise<void>;
  /** Back to a plain healthy upstream with zero counters (held requests are released). */
  reset(): void;
  close(): Promise<void>;
}

const MAX_SEEN = 10_000;

export async function startControlUpstream(name: string, opts: ControlUpstreamOptions = {}): Promise<ControlUpstream> {
  const healthPath = opts.healthPath ?? '/healthz';
  let count = 0;
  let healthCount = 0;
  let inFlight = 0;
  let maxInFlight = 0;
  let seen: ControlSeen[] = [];
  let failQueue: { n: number; status: number } = { n: 0, status: 503 };
  let alwaysStatus = 200;
  let delayMs = 0;
  let delayQueue = { n: 0, ms: 0 };
  let resetQueue = 0;
  let holding = false;
  let held: (() => void)[] = [];
  let healthy = true;
  const sockets = new Set<Socket>();

  const server = http.createServer((req, res) => {
    const url = req.url ?? '';
    if (url === healthPath || url.startsWith(`${healthPath}?`)) {
      healthCount++;
      req.resume();
      const status = healthy ? 200 : 503;
      res.writeHead(status, { 'content-type': 'text/plain', 'x-upstream': name });
      res.end(healthy ? 'ok' : 'unhealthy');
      return;
    }
    count++;
    const entry: ControlSeen = { method: req.method ?? '', path: url, headers: req.headers, n: count, outcome: 'ok' };
    seen.push(entry);
    if (seen.length > MAX_SEEN) seen = seen.slice(-MAX_SEEN / 2);
    req.resume();

    if (resetQueue > 0) {
      resetQueue--;
      entry.outcome = 'reset';
      req.socket.destroy();
      return;
    }
    let status = alwaysStatus;
    if (failQueue.n > 0) {
      failQueue.n--;
      status = failQueue.status;
    }
    if (status !== 200) entry.outcome = 'status';
    let wait = delayMs;
    if (delayQueue.n > 0) {
      delayQueue.n--;
      wait = Math.max(wait, delayQueue.ms);
    }
    if (wait > 0 && entry.outcome === 'ok') entry.outcome = 'delayed';

    inFlight++;
    maxInFlight = Math.max(maxInFlight, inFlight);
    let finished = false;
    const finish = () => {
      if (finished) return;
      finished = true;
      inFlight--;
      if (res.destroyed || res.writableEnded) return;
      const body = JSON.stringify({ upstream: name, n: entry.n, method: entry.method, path: entry.path, headers: entry.headers });
      res.writeHead(status, {
        'content-type': 'application/json',
        'x-upstream': name,
        'x-upstream-count': String(entry.n),
        'content-length': Buffer.byteLength(body),
      });
      res.end(body);
    };
    // A client (Envoy) that gives up closes the connection: stop counting the request as in flight.
    res.on('close', () => {
      if (!finished) {
        finished = true;
        inFlight--;
      }
    });
    const answer = () => (wait > 0 ? setTimeout(finish, wait) : finish());
    if (holding) {
      entry.outcome = 'held';
      held.push(answer);
    } else answer();
  });
  server.keepAliveTimeout = 60_000;
  server.on('connection', (s) => {
    sockets.add(s);
    s.on('close', () => sockets.delete(s));
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(opts.port ?? 0, opts.host ?? '127.0.0.1', () => resolve());
  });

  const release = () => {
    holding = false;
    const list = held;
    held = [];
    for (const a of list) a();
  };

  const up: ControlUpstream = {
    name,
    port: (server.address() as AddressInfo).port,
    get count() {
      return count;
    },
    get healthCount() {
      return healthCount;
    },
    get inFlight() {
      return inFlight;
    },
    get maxInFlight() {
      return maxInFlight;
    },
    get seen() {
      return seen;
    },
    failNext(n, status = 503) {
      failQueue = { n, status };
    },
    setStatus(status) {
      alwaysStatus = status;
    },
    setDelay(ms) {
      delayMs = ms;
    },
    delayNext(n, ms) {
      delayQueue = { n, ms };
    },
    resetNext(n) {
      resetQueue = n;
    },
    hold() {
      holding = true;
    },
    release,
    setHealthy(ok) {
      healthy = ok;
    },
    async waitForCount(n, timeoutMs = 10_000) {
      const deadline = Date.now() + timeoutMs;
      while (count < n) {
        if (Date.now() > deadline) throw new Error(`upstream ${name}: saw ${count} requests, waited for ${n}`);
        await new Promise((r) => setTimeout(r, 10));
      }
    },
    reset() {
      release();
      count = 0;
      healthCount = 0;
      maxInFlight = inFlight;
      seen = [];
      failQueue = { n: 0, status: 503 };
      alwaysStatus = 200;
      delayMs = 0;
      delayQueue = { n: 0, ms: 0 };
      resetQueue = 0;
      healthy = true;
    },
    close: () =>
      new Promise<void>((resolve) => {
        release();
        for (const s of sockets) s.destroy();
        server.close(() => resolve());
      }),
  };
  return up;
}
