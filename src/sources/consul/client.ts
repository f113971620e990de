// A small HTTP client for Consul's API, on node:http/https (no extra dependency): keep-alive
// connections, per-request timeouts and cancellation, TLS from the CONSUL_* settings, the ACL token
// in a header (never in a URL or a log), and every failure classified into one reason word that is
// safe to use as a metric label.
import http from 'node:http';
import https from 'node:https';
import type { ConsulConnection } from './config.js';

export type ConsulErrorReason =
  | 'network' // connection refused/reset, DNS, TLS handshake
  | 'timeout' // no complete answer within the request deadline
  | 'forbidden' // 401/403: a missing or bad ACL token
  | 'not_found'
  | 'rate_limited' // 429
  | 'server' // 5xx (no leader, overloaded...)
  | 'http' // any other unexpected status
  | 'malformed' // a 200 whose body is not the JSON expected
  | 'aborted'; // the watch was stopped

export class ConsulError extends Error {
  constructor(
    readonly reason: ConsulErrorReason,
    message: string,
    readonly status?: number,
  ) {
    super(message);
    this.name = 'ConsulError';
  }
}

export interface ConsulResponse {
  status: number;
  /** X-Consul-Index as sent (undefined when absent). */
  index?: bigint;
  body: unknown;
  /** X-Consul-KnownLeader / X-Consul-LastContact, for status pages. */
  knownLeader?: boolean;
  lastContactMs?: number;
}

export interface GetOptions {
  query?: Record<string, string | undefined>;
  timeoutMs: number;
  signal?: AbortSignal;
}

/** Bodies larger than this are refused (a health answer for thousands of instances is a few MB). */
const MAX_BODY_BYTES = 64 * 1024 * 1024;

export class ConsulClient {
  private readonly agent: http.Agent;
  private readonly base: URL;
  /** Requests made, by path kind; read by the source's metrics. */
  onRequest?: (path: string) => void;

  constructor(readonly conn: ConsulConnection) {
    this.base = new URL(conn.baseUrl);
    const opts: https.AgentOptions = { keepAlive: true, keepAliveMsecs: 15_000, maxSockets: Infinity, maxFreeSockets: 64, scheduling: 'lifo' };
    if (this.base.protocol === 'https:') {
      const t = conn.tls;
      this.agent = new https.Agent({
        ...opts,
        ca: t?.ca,
        cert: t?.cert,
        key: t?.key,
        servername: t?.serverName,
        rejectUnauthorized: t?.rejectUnauthorized ?? true,
      });
    } else {
      this.agent = new http.Agent(opts);
    }
  }

  /** GET a JSON endpoint. Resolves only for a 200 with valid JSON; everything else is a ConsulError. */
  get(path: string, opts: GetOptions): Promise<ConsulResponse> {
    const url = new URL(path, this.base);
    for (const [k, v] of Object.entries(opts.query ?? {})) if (v !== undefined) url.searchParams.append(k, v);
    const lib = this.base.protocol === 'https:' ? https : http;
    const headers: Record<string, string> = { accept: 'application/json' };
    if (this.conn.token) headers['x-consul-token'] = this.conn.token;
    this.onRequest?.(path);
    return new Promise<ConsulResponse>((resolve, reject) => {
      let settled = false;
      const fail = (e: ConsulError) => {
        if (settled) return;
        settled = true;
        clearTimeout(timer);
        opts.signal?.removeEventListener('abort', onAbort);
        req.destroy();
        reject(e);
      };
      const req = lib.request(url, { method: 'GET', agent: this.agent, headers });
      const timer = setTimeout(() => fail(new ConsulError('timeout', `no answer from Consul within ${opts.timeoutMs} ms`)), opts.timeoutMs);
      const onAbort = () => fail(new ConsulError('aborted', 'stopped'));
      if (opts.signal?.aborted) return onAbort();
      opts.signal?.addEventListener('abort', onAbort, { once: true });
      req.on('error', (e: NodeJS.ErrnoException) => fail(new ConsulError('network', `cannot reach Consul at ${this.conn.baseUrl}: ${e.code ?? e.message}`)));
      req.on('response', (res) => {
        const chunks: Buffer[] = [];
        let size = 0;
        res.on('data', (c: Buffer) => {
          size += c.length;
          if (size > MAX_BODY_BYTES) fail(new ConsulError('malformed', `answer larger than ${MAX_BODY_BYTES} bytes`));
          else chunks.push(c);
        });
        res.on('error', (e: NodeJS.ErrnoException) => fail(new ConsulError('network', `connection to Consul broke: ${e.code ?? e.message}`)));
        res.on('aborted', () => fail(new ConsulError('network', 'connection to Consul closed mid-answer')));
        res.on('end', () => {
          if (settled) return;
          const status = res.statusCode ?? 0;
          const text = Buffer.concat(chunks).toString('utf8');
          if (status !== 200) {
            // Consul's error bodies are short plain text ("ACL not found", "No cluster leader").
            const detail = text.trim().slice(0, 200).replace(/\s+/g, ' ');
            const reason: ConsulErrorReason =
              status === 401 || status === 403
                ? 'forbidden'
                : status === 404
                  ? 'not_found'
                  : status === 429
                    ? 'rate_limited'
                    : status >= 500
                      ? 'server'
                      : 'http';
            return fail(new ConsulError(reason, `Consul answered ${status}${detail ? `: ${detail}` : ''}`, status));
          }
          let body: unknown;
          try {
            body = JSON.parse(text);
          } catch (e) {
            return fail(new ConsulError('malformed', `Consul answered 200 with a body that is not JSON: ${(e as Error).message}`, status));
          }
          const rawIndex = res.headers['x-consul-index'];
          let index: bigint | undefined;
          if (typeof rawIndex === 'string' && /^\d+$/.test(rawIndex.trim())) index = BigInt(rawIndex.trim());
          const lc = res.headers['x-consul-lastcontact'];
          settled = true;
          clearTimeout(timer);
          opts.signal?.removeEventListener('abort', onAbort);
          resolve({
            status,
            index,
            body,
            knownLeader: res.headers['x-consul-knownleader'] === undefined ? undefined : res.headers['x-consul-knownleader'] === 'true',
            lastContactMs: typeof lc === 'string' && /^\d+$/.test(lc) ? Number(lc) : undefined,
          });
        });
      });
      req.end();
    });
  }

  close(): void {
    this.agent.destroy();
  }
}
