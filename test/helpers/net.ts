import net from 'node:net';

/** Ports this process was given already: the kernel may offer a just-released port again. */
const given = new Set<number>();

export async function freePort(): Promise<number> {
  for (;;) {
    const port = await new Promise<number>((resolve, reject) => {
      const s = net.createServer();
      s.once('error', reject);
      s.listen(0, '127.0.0.1', () => {
        const p = (s.address() as net.AddressInfo).port;
        s.close(() => resolve(p));
      });
    });
    // Two calls in a row (say, two listeners of one gateway) must never get the same port.
    if (!given.has(port)) {
      given.add(port);
      return port;
    }
  }
}

/** Polls `check` until it returns true (no fixed sleeps); throws after timeoutMs. */
export async function waitFor(check: () => Promise<boolean> | boolean, opts: { timeoutMs?: number; intervalMs?: number; what?: string } = {}): Promise<void> {
  const deadline = Date.now() + (opts.timeoutMs ?? 10_000);
  let lastError: unknown;
  for (;;) {
    try {
      if (await check()) return;
    } catch (e) {
      lastError = e;
      if ((e as Error).message?.startsWith('envoy exited early')) throw e;
    }
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${opts.what ?? 'condition'}${lastError ? `: ${(lastError as Error).message}` : ''}`);
    await new Promise((r) => setTimeout(r, opts.intervalMs ?? 50));
  }
}

/** One HTTP request through a proxy; never throws for HTTP statuses. */
export async function httpGet(url: string, init: RequestInit = {}): Promise<{ status: number; headers: Headers; body: string; json<T = any>(): T }> {
  const res = await fetch(url, { redirect: 'manual', ...init });
  const body = await res.text();
  return { status: res.status, headers: res.headers, body, json: <T>() => JSON.parse(body) as T };
}
