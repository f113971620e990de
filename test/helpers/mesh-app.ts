// A tiny service for mesh tests: it reports who called it (the x-forwarded-client-cert its sidecar
// set) and, on /call, calls another service through its own sidecar's outbound listener.
import http from 'node:http';
import type { AddressInfo } from 'node:net';

export interface MeshApp {
  name: string;
  port: number;
  requests: number;
  close(): Promise<void>;
}

export async function startMeshApp(name: string, outboundPort: () => number): Promise<MeshApp> {
  const app: MeshApp = { name, port: 0, requests: 0, close: async () => {} };
  const server = http.createServer(async (req, res) => {
    app.requests++;
    const url = new URL(req.url ?? '/', 'http://local');
    req.resume();
    let body: unknown;
    if (url.pathname === '/call') {
      const host = url.searchParams.get('host') ?? '';
      const method = url.searchParams.get('method') ?? 'GET';
      const path = url.searchParams.get('path') ?? '/';
      try {
        // node's fetch does not let a caller set Host; http.request does.
        const r = await new Promise<{ status: number; text: string }>((resolve, reject) => {
          const out = http.request({ host: '127.0.0.1', port: outboundPort(), path, method, headers: { host } }, (res) => {
            let text = '';
            res.setEncoding('utf8');
            res.on('data', (c: string) => (text += c));
            res.on('end', () => resolve({ status: res.statusCode ?? 0, text }));
          });
          out.on('error', reject);
          out.end();
        });
        const text = r.text;
        let parsed: unknown = text;
        try {
          parsed = JSON.parse(text);
        } catch {
          /* plain text answer (e.g. Envoy's "RBAC: access denied") */
        }
        body = { app: name, called: host, status: r.status, response: parsed, xfcc: req.headers['x-forwarded-client-cert'] ?? null };
      } catch (e) {
        body = { app: name, called: host, status: 0, error: (e as Error).message };
      }
    } else {
      body = { app: name, method: req.method, path: url.pathname, xfcc: req.headers['x-forwarded-client-cert'] ?? null };
    }
    const text = JSON.stringify(body);
    res.writeHead(200, { 'content-type': 'application/json', 'x-app': name });
    res.end(text);
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', () => resolve()));
  app.port = (server.address() as AddressInfo).port;
  app.close = () =>
    new Promise<void>((resolve) => {
      server.closeAllConnections();
      server.close(() => resolve());
    });
  return app;
}
