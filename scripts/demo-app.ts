// One demo service instance (a small HTTP server that names itself in every answer), as
// docker-compose.yml runs it; `npm run demo` starts the same servers in its own process.
// Usage: node dist/scripts/demo-app.js NAME PORT
import { startUpstream } from '../test/helpers/upstream.js';

const [name, port] = process.argv.slice(2);
if (!name || !port || !/^\d+$/.test(port)) {
  process.stderr.write('usage: node dist/scripts/demo-app.js NAME PORT\n');
  process.exit(2);
}
const app = await startUpstream(name, Number(port));
process.stderr.write(`demo app ${name} on 127.0.0.1:${app.port}\n`);
const stop = () => void app.close().then(() => process.exit(0));
process.once('SIGINT', stop);
process.once('SIGTERM', stop);
