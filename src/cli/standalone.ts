// What the standalone services (`signalbox authz`, `signalbox ratelimit`) share: keeping a model
// of the watched policy directory current (a rejected edit keeps the last good one), and the small
// HTTP endpoint for /metrics, /healthz, /readyz and the service's own status.
import http from 'node:http';
import type client from 'prom-client';
import { formatPolicyError } from '../errors.js';
import { buildModel } from '../controller/build-model.js';
import type { Model } from '../model/model.js';
import type { Logger } from '../observability/logger.js';
import { loadPolicyDir } from '../sources/files/loader.js';
import { watchPolicies } from '../sources/files/watcher.js';

export interface WatchedModel {
  /** Reads the directory again; true when its model was applied. */
  reload(): Promise<boolean>;
  /** Whether any valid model was applied yet. */
  readonly applied: boolean;
  close(): Promise<void>;
}

/**
 * Watches `dir` and hands each valid model to `apply`; an invalid directory is logged and changes
 * nothing. The watcher is ready before the first read, so an edit made meanwhile is not lost.
 */
export async function watchModel(dir: string, debounceMs: number, log: Logger, apply: (model: Model) => void): Promise<WatchedModel> {
  let applied = false;
  const reload = async (): Promise<boolean> => {
    const loaded = await loadPolicyDir(dir);
    let errors = loaded.errors;
    if (errors.length === 0) {
      const built = await buildModel(loaded.docs, dir);
      errors = built.errors;
      if (built.model && errors.length === 0) {
        apply(built.model);
        applied = true;
        return true;
      }
    }
    log.warn(
      { errors: errors.map(formatPolicyError), keptVersion: applied ? 'last good configuration' : 'none yet' },
      `policy directory rejected: ${errors.length} error(s); nothing applied`,
    );
    return false;
  };
  const watcher = watchPolicies(dir, debounceMs, () => void reload());
  await watcher.ready;
  await reload();
  return {
    reload,
    get applied() {
      return applied;
    },
    close: () => watcher.close(),
  };
}

/**
 * /metrics (the registry), /healthz, /readyz (503 until `ready()`) and `statusPath` (JSON of
 * `status()`), on `address:port`. Resolves with the bound port once listening.
 */
export async function startStatusServer(o: {
  registry: client.Registry;
  address: string;
  port: number;
  ready: () => boolean;
  statusPath: string;
  status: () => unknown;
}): Promise<{ port: number; close(): Promise<void> }> {
  const server = http.createServer((req, res) => {
    const url = req.url ?? '/';
    if (url === '/metrics') {
      void o.registry.metrics().then((text) => {
        res.writeHead(200, { 'content-type': o.registry.contentType });
        res.end(text);
      });
    } else if (url === '/healthz') {
      res.writeHead(200).end('ok\n');
    } else if (url === '/readyz') {
      const ready = o.ready();
      res.writeHead(ready ? 200 : 503).end(ready ? 'ready\n' : 'no valid policy configuration yet\n');
    } else if (url === o.statusPath) {
      res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify(o.status()));
    } else {
      res.writeHead(404).end();
    }
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(o.port, o.address, () => resolve());
  });
  return {
    port: (server.address() as { port: number }).port,
    close: async () => {
      server.closeAllConnections();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}
