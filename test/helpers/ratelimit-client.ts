// Client side of rate limit tests: GETs from a chosen loopback source address, and bursts of
// LIMIT + 1 requests into a full token bucket, checked against Envoy's x-ratelimit-remaining.
import assert from 'node:assert/strict';
import http from 'node:http';
import { waitFor } from './net.js';

export interface Reply {
  status: number;
  headers: http.IncomingHttpHeaders;
  at: number;
}

const agent = new http.Agent({ keepAlive: true, maxSockets: 4 });

/** Closes the kept-alive client connections (call from `after`). */
export function closeClients(): void {
  agent.destroy();
}

/** A GET from a chosen loopback source address (so Envoy sees distinct client IPs). */
export function get(port: number, path: string, opts: { headers?: Record<string, string>; from?: string } = {}): Promise<Reply> {
  return new Promise((resolve, reject) => {
    const req = http.request({ host: '127.0.0.1', port, path, headers: opts.headers, localAddress: opts.from ?? '127.0.0.1', agent }, (res) => {
      res.resume();
      res.on('end', () => resolve({ status: res.statusCode ?? 0, headers: res.headers, at: performance.now() }));
    });
    req.on('error', reject);
    req.setTimeout(10_000, () => req.destroy(new Error(`GET ${path} timed out`)));
    req.end();
  });
}

export const burstStats = { retries: 0 };

/**
 * Sends limit + 1 requests back to back, the first into a full bucket. Envoy refills the bucket
 * continuously (one token every perMs/limit), so a token may come back during a burst; then the
 * last request is rightly allowed. Every burst must respect the limit (no more 200s than the
 * bucket plus the refill steps it spanned); bursts in which a token came back are repeated, and
 * the one returned is a burst in which none did.
 */
export async function burst(send: () => Promise<Reply>, limit: number, perMs = 1000, refusedStatus = 429): Promise<Reply[]> {
  const refillStepMs = perMs / limit;
  for (let attempt = 0; attempt < 6; attempt++) {
    // The first request must find a full bucket; probing slower than the refill lets it fill up.
    let first: Reply | undefined;
    let firstSentAt = 0;
    await waitFor(
      async () => {
        firstSentAt = performance.now();
        first = await send();
        return Number(first.headers['x-ratelimit-remaining']) === limit - 1;
      },
      { what: 'a full bucket', timeoutMs: 10_000, intervalMs: Math.max(300, refillStepMs * 3) },
    );
    const out: Reply[] = [first!];
    for (let i = 0; i < limit; i++) out.push(await send());
    const spanMs = out[limit]!.at - firstSentAt;
    const ok = out.filter((r) => r.status === 200).length;
    assert.ok(ok <= limit + Math.ceil(spanMs / refillStepMs), `${ok} requests allowed in ${spanMs.toFixed(0)}ms: more than the bucket plus its refill`);
    const remaining = out.map((r) => Number(r.headers['x-ratelimit-remaining']));
    const noRefill = remaining.every((v, i) => i === 0 || v === Math.max(0, remaining[i - 1]! - 1)) && out[limit]!.status === refusedStatus;
    if (noRefill) return out;
    burstStats.retries++;
  }
  throw new Error(`in 6 bursts a token always came back before request ${limit + 1}`);
}
