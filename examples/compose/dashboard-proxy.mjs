// The Signalbox dashboard for a browser in `docker compose up` (docker-compose.yml's `dashboard`).
// There the admin API binds 0.0.0.0 and so requires a bearer token, which a browser does not send:
// this forwards GET and HEAD requests to it with the token added (responses stream, so the live
// feed works). Like the admin API without a token, it answers loopback Host names only (against
// DNS rebinding), and nothing but reads pass. Compose publishes it on the host's loopback only.
// Environment: LISTEN_PORT (18081), LISTEN_ADDRESS (0.0.0.0), ADMIN_URL (http://127.0.0.1:18001),
// ADMIN_TOKEN_FILE (/run/secrets/signalbox-admin-token). Plain Node, no dependencies.
import { readFileSync } from 'node:fs';
import http from 'node:http';

const listenPort = Number(process.env.LISTEN_PORT ?? 18081);
const listenAddress = process.env.LISTEN_ADDRESS ?? '0.0.0.0';
const admin = new URL(process.env.ADMIN_URL ?? 'http://127.0.0.1:18001');
const tokenFile = process.env.ADMIN_TOKEN_FILE ?? '/run/secrets/signalbox-admin-token';
const token = readFileSync(tokenFile, 'utf8').trim();
if (!token) throw new Error(`${tokenFile} is empty`);
const LOOPBACK = new Set(['localhost', '127.0.0.1', '[::1]']);

const server = http.createServer((req, res) => {
  const host = (req.headers.host ?? '').toLowerCase().replace(/:\d+$/, '');
  if (!LOOPBACK.has(host)) {
    res.writeHead(421, { 'content-type': 'text/plain' }).end('open the dashboard at a loopback address, e.g. http://127.0.0.1:PORT/\n');
    return;
  }
  if (req.method !== 'GET' && req.method !== 'HEAD') {
    res.writeHead(405, { allow: 'GET, HEAD', 'content-type': 'text/plain' }).end('the dashboard only reads\n');
    return;
  }
  const upstream = http.request(
    { host: admin.hostname, port: admin.port || 80, path: req.url, method: req.method, headers: { ...req.headers, host: admin.host, authorization: `Bearer ${token}` } },
    (r) => {
      res.writeHead(r.statusCode ?? 502, r.headers);
      r.pipe(res);
    },
  );
  upstream.on('error', (e) => {
    if (res.headersSent) res.destroy();
    else res.writeHead(502, { 'content-type': 'text/plain' }).end(`the Signalbox admin API at ${admin.origin} is not reachable: ${e.message}\n`);
  });
  res.on('close', () => upstream.destroy()); // a closed tab ends the live feed upstream too
  upstream.end();
});
server.listen(listenPort, listenAddress, () => process.stderr.write(`the Signalbox dashboard: http://127.0.0.1:${server.address().port}/ (admin API ${admin.origin})\n`));
const stop = () => {
  server.close(() => process.exit(0));
  server.closeAllConnections(); // open live feeds too
};
process.once('SIGINT', stop);
process.once('SIGTERM', stop);
