// Small HTTP upstreams for tests and the demo: each answers with its name and what it saw.
import http from 'node:http';
import type { AddressInfo } from 'node:net';

export interface SeenRequest {
  method: string;
  path: string;
  headers: http.IncomingHttpHeaders;
  /** Bytes of request body received (set once the request has ended). */
  bodyBytes?: number;
}

export interface Upstream {
  name: string;
  port: number;
  seen: SeenRequest[];
  close(): Promise<void>;
}

export async function startUpstream(name: string, port = 0, host = '127.0.0.1'): Promise<Upstream> {
  const seen: SeenRequest[] = [];
  const server = http.createServer((req, res) => {
    const entry: SeenRequest = { method: req.method ?? '', path: req.url ?? '', headers: req.headers };
    seen.push(entry);
    let bytes = 0;
    req.on('data', (c: Buffer) => (bytes += c.length));
    req.on('end', () => {
      entry.bodyBytes = bytes;
      const body = JSON.stringify({ upstream: name, ...entry });
      res.writeHead(200, { 'content-type': 'application/json', 'x-upstream': name, 'content-length': Buffer.byteLength(body) });
      res.end(body);
    });
  });
  server.keepAliveTimeout = 60_000;
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, host, () => resolve());
  });
  return {
    name,
    port: (server.address() as AddressInfo).port,
    seen,
    close: () =>
      new Promise<void>((resolve) => {
        server.closeAllConnections();
        server.close(() => resolve());
      }),
  };
}
