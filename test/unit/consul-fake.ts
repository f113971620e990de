// A fake Consul HTTP API on loopback for unit tests of the Consul source: it speaks the blocking
// query protocol (index + wait, X-Consul-Index) for /v1/health/service and /v1/health/connect,
// and lets a test inject any answer (bad JSON, 403, 500, a hang, an index going backwards).
import http from 'node:http';
import type { AddressInfo } from 'node:net';

export interface SeenQuery {
  path: string;
  index?: string;
  wait?: string;
  dc?: string;
  token?: string;
  at: number;
}

/** Returns true when it answered the request itself; false falls through to the catalog. */
export type Override = (q: SeenQuery, res: http.ServerResponse) => boolean;

export interface FakeConsul {
  addr: string;
  seen: SeenQuery[];
  index: bigint;
  /** health entries per service name; connect entries per destination service name. */
  health: Map<string, unknown[]>;
  connect: Map<string, unknown[]>;
  /** Replace a service's entries (and bump the index, waking blocked queries). */
  setHealth(service: string, entries: unknown[]): void;
  setConnect(service: string, entries: unknown[]): void;
  /** Set the index directly (e.g. lower, as after a restart) and wake blocked queries. */
  setIndex(i: bigint): void;
  /** Answer every held blocking query now with the current state, as if its wait ran out. */
  release(): void;
  override?: Override;
  close(): Promise<void>;
}

export function entry(o: {
  node?: string;
  id: string;
  service?: string;
  address?: string;
  nodeAddress?: string;
  port?: unknown;
  tags?: string[];
  meta?: Record<string, string>;
  nodeMeta?: Record<string, string>;
  checks?: { id?: string; status: string; serviceId?: string }[];
  kind?: string;
  proxy?: Record<string, unknown>;
}): unknown {
  const node = o.node ?? 'node-1';
  return {
    Node: { ID: 'x', Node: node, Address: o.nodeAddress ?? '127.0.0.1', Datacenter: 'dc1', Meta: o.nodeMeta ?? {} },
    Service: {
      ...(o.kind ? { Kind: o.kind } : {}),
      ID: o.id,
      Service: o.service ?? 'web',
      Tags: o.tags ?? [],
      Address: o.address ?? '127.0.0.1',
      Meta: o.meta ?? null,
      Port: o.port ?? 8080,
      ...(o.proxy ? { Proxy: o.proxy } : {}),
    },
    Checks: (o.checks ?? [{ status: 'passing' }]).map((c, i) => ({
      Node: node,
      CheckID: c.id ?? `service:${o.id}:${i}`,
      Status: c.status,
      ServiceID: c.serviceId ?? o.id,
    })),
  };
}

export async function startFakeConsul(): Promise<FakeConsul> {
  let waiters: ((force?: boolean) => void)[] = [];
  const wake = (force = false) => {
    const w = waiters;
    waiters = [];
    for (const f of w) f(force);
  };
  const fake: FakeConsul = {
    addr: '',
    seen: [],
    index: 10n,
    health: new Map(),
    connect: new Map(),
    setHealth(s, e) {
      fake.health.set(s, e);
      fake.index++;
      wake();
    },
    setConnect(s, e) {
      fake.connect.set(s, e);
      fake.index++;
      wake();
    },
    setIndex(i) {
      fake.index = i;
      wake();
    },
    release() {
      wake(true);
    },
    close: async () => {
      wake();
      server.closeAllConnections();
      await new Promise<void>((r) => server.close(() => r()));
    },
  };
  const server = http.createServer((req, res) => {
    const url = new URL(req.url ?? '/', 'http://x');
    const q: SeenQuery = {
      path: url.pathname,
      index: url.searchParams.get('index') ?? undefined,
      wait: url.searchParams.get('wait') ?? undefined,
      dc: url.searchParams.get('dc') ?? undefined,
      token: req.headers['x-consul-token'] as string | undefined,
      at: Date.now(),
    };
    fake.seen.push(q);
    if (fake.override?.(q, res)) return;
    const m = /^\/v1\/health\/(service|connect)\/(.+)$/.exec(url.pathname);
    if (!m) {
      res.writeHead(404).end('not found');
      return;
    }
    const answer = () => {
      const body = JSON.stringify((m[1] === 'service' ? fake.health : fake.connect).get(decodeURIComponent(m[2]!)) ?? []);
      if (!res.destroyed) res.writeHead(200, { 'content-type': 'application/json', 'x-consul-index': fake.index.toString() }).end(body);
    };
    const want = q.index ? BigInt(q.index) : 0n;
    if (want > 0n && want >= fake.index) {
      // Block until the index moves past `want` or `wait` elapses (the fake ignores Consul's jitter).
      const waitMs = q.wait ? Number(q.wait.replace(/s$/, '')) * 1000 : 300_000;
      const timer = setTimeout(() => {
        waiters = waiters.filter((w) => w !== done);
        answer();
      }, waitMs);
      const done = (force?: boolean) => {
        if (force || fake.index > want) {
          clearTimeout(timer);
          answer();
        } else waiters.push(done);
      };
      waiters.push(done);
      return;
    }
    answer();
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
  fake.addr = `127.0.0.1:${(server.address() as AddressInfo).port}`;
  return fake;
}

/** Polls until check() is true; throws after timeoutMs. */
export async function until(check: () => boolean, what: string, timeoutMs = 5000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!check()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 10));
  }
}
