// Writes the token and Envoy bootstrap of every demo proxy into a folder (docker-compose.yml's
// one-shot `bootstrap` service; `npm run demo` calls the same writeBootstrap for each proxy).
// Usage: node dist/scripts/demo-bootstrap.js OUT_DIR [DATA_DIR]
import path from 'node:path';
import { demoProxies, proxyId, writeBootstrap } from './demo-topology.js';

const [out, dataDir = process.env.SIGNALBOX_DATA_DIR ?? '.data'] = process.argv.slice(2);
if (!out) {
  process.stderr.write('usage: node dist/scripts/demo-bootstrap.js OUT_DIR [DATA_DIR]\n');
  process.exit(2);
}
for (const p of demoProxies()) {
  await writeBootstrap(p, path.resolve(out), path.resolve(dataDir));
  process.stderr.write(`wrote ${path.join(out, `${proxyId(p)}.yaml`)}\n`);
}
