// `npm run demo`: the control plane on policies/, a real Envoy gateway, and three demo apps on the
// ports policies/services.yaml names, each behind a real Envoy sidecar (mTLS): the topology of
// docker-compose.yml as local processes (scripts/demo-topology.ts). Every Envoy reaches Signalbox
// over TLS and presents a token certificate of its own. Prints curl lines to try; Ctrl-C stops
// everything.
import path from 'node:path';
import YAML from 'yaml';
import { startServer } from '../src/cli/serve.js';
import { resolveServeConfig } from '../src/config/settings.js';
import { mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import { DEMO, demoProxies, proxyId, writeBootstrap } from './demo-topology.js';
import { repoRoot, startEnvoy, type Envoy } from '../test/helpers/envoy.js';
import { startUpstream } from '../test/helpers/upstream.js';

const root = repoRoot();
const upstreams = await Promise.all(DEMO.sidecars.map((s) => startUpstream(s.instance, s.appPort)));
const cfg = resolveServeConfig({ policies: path.join(root, 'policies') });
const server = await startServer(cfg);
// The gateway and one sidecar per app, each with its own token credentials and a TLS bootstrap
// (`signalbox bootstrap --credentials DIR --xds-ca FILE`), as docker-compose.yml's `bootstrap`
// service writes them (scripts/demo-topology.ts). The folder holds keys: removed on exit.
const bootstrapDir = mkdtempSync(path.join(os.tmpdir(), 'signalbox-demo-'));
const envoys: Envoy[] = [];
for (const p of demoProxies()) {
  const bootstrap = YAML.parse(await writeBootstrap(p, bootstrapDir, path.resolve(cfg.dataDir)));
  envoys.push(
    await startEnvoy({
      name: proxyId(p),
      // Envoy's admin on a free port (the compose file gives each its fixed one).
      bootstrapYaml: (adminPort) => YAML.stringify({ ...bootstrap, admin: { address: { socket_address: { address: '127.0.0.1', port_value: adminPort } } } }),
    }),
  );
}
const envoy = envoys[0]!;
process.stdout.write(`
Signalbox demo is running.
  gateway (Envoy):    http://127.0.0.1:${DEMO.gateway.listenPort}     Envoy admin: http://127.0.0.1:${envoy.adminPort}
  sidecars (Envoy):   ${DEMO.sidecars.map((s, i) => `${s.instance} mTLS :${s.inboundPort} -> app :${s.appPort} (admin :${envoys[i + 1]!.adminPort})`).join('\n                      ')}
  control plane:      xDS 127.0.0.1:${server.xdsPort} (TLS, token certificates), admin http://127.0.0.1:${server.adminPort}
  dashboard:          http://127.0.0.1:${server.adminPort}/   (node bin/signalbox.js status --admin http://127.0.0.1:${server.adminPort})

Try:
  curl -i http://127.0.0.1:8080/orders/42
  curl -i -H 'x-canary: true' http://127.0.0.1:8080/orders/42
  curl -i http://127.0.0.1:8080/catalog/books
  curl -s http://127.0.0.1:${server.adminPort}/api/proxies
Edit a file in policies/ and watch the routes change. Ctrl-C stops the demo.
`);
const stop = async () => {
  await Promise.all(envoys.map((e) => e.stop()));
  await server.stop();
  await Promise.all(upstreams.map((u) => u.close()));
  rmSync(bootstrapDir, { recursive: true, force: true });
  process.exit(0);
};
process.once('SIGINT', () => void stop());
process.once('SIGTERM', () => void stop());
