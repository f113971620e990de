// `npm run demo`: the control plane on policies/, a real Envoy gateway, and demo upstreams on the
// ports policies/services.yaml names. Prints a curl line to try; Ctrl-C stops everything.
import path from 'node:path';
import { bootstrapYaml } from '../src/cli/bootstrap.js';
import { startServer } from '../src/cli/serve.js';
import { resolveServeConfig } from '../src/config/settings.js';
import { issueToken } from '../src/ca/tokens.js';
import { repoRoot, startEnvoy } from '../test/helpers/envoy.js';
import { startUpstream } from '../test/helpers/upstream.js';

const root = repoRoot();
const upstreams = await Promise.all([startUpstream('orders-v1', 9001), startUpstream('orders-v2', 9002), startUpstream('catalog', 9003)]);
const cfg = resolveServeConfig({ policies: path.join(root, 'policies') });
const server = await startServer(cfg);
const { token } = await issueToken(path.resolve(cfg.dataDir), 'gateway/public');
const envoy = await startEnvoy({
  name: 'demo-gateway',
  bootstrapYaml: (adminPort) => bootstrapYaml({ gateway: 'public', xdsAddress: `127.0.0.1:${server.xdsPort}`, adminPort, id: 'public-demo', token }),
});
process.stdout.write(`
Signalbox demo is running.
  gateway (Envoy):    http://127.0.0.1:8080     Envoy admin: http://127.0.0.1:${envoy.adminPort}
  control plane:      xDS 127.0.0.1:${server.xdsPort}, admin http://127.0.0.1:${server.adminPort}

Try:
  curl -i http://127.0.0.1:8080/orders/42
  curl -i -H 'x-canary: true' http://127.0.0.1:8080/orders/42
  curl -i http://127.0.0.1:8080/catalog/books
  curl -s http://127.0.0.1:${server.adminPort}/api/proxies
Edit a file in policies/ and watch the routes change. Ctrl-C stops the demo.
`);
const stop = async () => {
  await envoy.stop();
  await server.stop();
  await Promise.all(upstreams.map((u) => u.close()));
  process.exit(0);
};
process.once('SIGINT', () => void stop());
process.once('SIGTERM', () => void stop());
