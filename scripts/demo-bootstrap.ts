// Writes the token credentials and Envoy bootstrap of every demo proxy into a folder
// (docker-compose.yml's one-shot `bootstrap` service; `npm run demo` calls the same writeBootstrap
// for each proxy). Signalbox must be serving on DATA_DIR already: its xds-ca.pem is copied along.
// Usage: node dist/scripts/demo-bootstrap.js OUT_DIR [DATA_DIR] [--owner UID:GID]
import path from 'node:path';
import { parseArgs } from 'node:util';
import { demoProxies, proxyId, writeBootstrap } from './demo-topology.js';

const usage = () => {
  process.stderr.write('usage: node dist/scripts/demo-bootstrap.js OUT_DIR [DATA_DIR] [--owner UID:GID]\n');
  process.exit(2);
};
const { values, positionals } = parseArgs({ allowPositionals: true, options: { owner: { type: 'string' } } });
const [out, dataDir = process.env.SIGNALBOX_DATA_DIR ?? '.data'] = positionals;
if (!out || positionals.length > 2) usage();
const m = values.owner === undefined ? undefined : /^(\d+):(\d+)$/.exec(values.owner);
if (values.owner !== undefined && !m) usage();
const owner = m ? { uid: Number(m[1]), gid: Number(m[2]) } : undefined;
for (const p of demoProxies()) {
  await writeBootstrap(p, path.resolve(out!), path.resolve(dataDir), { owner });
  process.stderr.write(`wrote ${path.join(out!, `${proxyId(p)}.yaml`)} and its token credentials in ${path.join(out!, proxyId(p))}/\n`);
}
