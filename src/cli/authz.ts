// `signalbox authz`: the ext_authz service on its own, for scaling it apart from the control plane.
// It loads and watches the same policy directory and compiles the same model as `signalbox serve`
// (a directory that fails validation never replaces the last good one). Point the proxies at it
// with `signalbox serve --authz-address-for-proxies IP:PORT`.
import http from 'node:http';
import path from 'node:path';
import { parseArgs } from 'node:util';
import client from 'prom-client';
import { AuthzServer } from '../authz/server.js';
import { ErrorCode, formatPolicyError, SignalboxError } from '../errors.js';
import { buildModel } from '../model/model.js';
import { createLogger, type Logger } from '../observability/logger.js';
import { loadPolicyDir } from '../sources/files/loader.js';
import { watchPolicies } from '../sources/files/watcher.js';
import { envoyRoot } from '../xds/resources/protos.js';

export const AUTHZ_SETTINGS = {
  policies: { flag: 'policies', env: 'SIGNALBOX_POLICIES', default: 'policies', help: 'policy directory to load and watch (the control plane\'s)' },
  authzAddress: { flag: 'authz-address', env: 'SIGNALBOX_AUTHZ_ADDRESS', default: '0.0.0.0', help: 'address the ext_authz gRPC service binds' },
  authzPort: { flag: 'authz-port', env: 'SIGNALBOX_AUTHZ_PORT', default: '18002', help: 'port of the ext_authz gRPC service' },
  metricsAddress: { flag: 'metrics-address', env: 'SIGNALBOX_AUTHZ_METRICS_ADDRESS', default: '127.0.0.1', help: 'address of the /metrics, /healthz and /readyz endpoint' },
  metricsPort: { flag: 'metrics-port', env: 'SIGNALBOX_AUTHZ_METRICS_PORT', default: '18003', help: 'port of the /metrics, /healthz and /readyz endpoint ("off": none)' },
  logLevel: { flag: 'log-level', env: 'SIGNALBOX_LOG_LEVEL', default: 'info', help: 'trace, debug, info, warn or error' },
  watchDebounceMs: { flag: 'watch-debounce-ms', env: 'SIGNALBOX_WATCH_DEBOUNCE_MS', default: '100', help: 'quiet time after a policy file change before reloading' },
} as const;

export interface StandaloneAuthz {
  authzPort: number;
  metricsPort?: number;
  server: AuthzServer;
  reload(): Promise<boolean>;
  stop(): Promise<void>;
}

function portOf(name: string, v: string): number {
  const n = Number(v);
  if (!/^\d+$/.test(v) || n > 65535) throw new SignalboxError(ErrorCode.BAD_FLAG, `--${name} must be a port from 0 to 65535, got "${v}"`);
  return n;
}

function hostPort(host: string, port: number): string {
  return `${host.includes(':') ? `[${host}]` : host}:${port}`;
}

export async function startStandaloneAuthz(values: Record<string, string | undefined>, env: NodeJS.ProcessEnv = process.env, logger?: Logger): Promise<StandaloneAuthz> {
  const get = (k: keyof typeof AUTHZ_SETTINGS): string => values[AUTHZ_SETTINGS[k].flag] ?? env[AUTHZ_SETTINGS[k].env] ?? AUTHZ_SETTINGS[k].default;
  const log = logger ?? createLogger({ level: get('logLevel'), name: 'signalbox-authz' });
  const dir = path.resolve(get('policies'));
  const debounce = Number(get('watchDebounceMs'));
  if (!Number.isFinite(debounce) || debounce < 0) throw new SignalboxError(ErrorCode.BAD_FLAG, '--watch-debounce-ms must be a number of milliseconds');
  const metricsPortText = get('metricsPort');
  const metricsPort = metricsPortText === 'off' ? undefined : portOf('metrics-port', metricsPortText);
  const authzPort = portOf('authz-port', get('authzPort'));

  envoyRoot();
  const registry = new client.Registry();
  client.collectDefaultMetrics({ register: registry, prefix: 'signalbox_authz_process_' });
  const server = new AuthzServer({ logger: log, registry });
  let applied = false;
  const reload = async (): Promise<boolean> => {
    const loaded = await loadPolicyDir(dir);
    let errors = loaded.errors;
    if (errors.length === 0) {
      const built = await buildModel(loaded.docs, dir);
      errors = built.errors;
      if (built.model && errors.length === 0) {
        server.update(built.model);
        applied = true;
        return true;
      }
    }
    log.warn({ errors: errors.map(formatPolicyError), keptVersion: applied ? 'last good configuration' : 'none yet' }, `policy directory rejected: ${errors.length} error(s); nothing applied`);
    return false;
  };
  await reload();
  const watcher = watchPolicies(dir, debounce, () => void reload());
  const boundAuthz = await server.listen(hostPort(get('authzAddress'), authzPort));

  let metricsServer: http.Server | undefined;
  let boundMetrics: number | undefined;
  if (metricsPort !== undefined) {
    metricsServer = http.createServer((req, res) => {
      const url = req.url ?? '/';
      if (url === '/metrics') {
        void registry.metrics().then((text) => {
          res.writeHead(200, { 'content-type': registry.contentType });
          res.end(text);
        });
      } else if (url === '/healthz') {
        res.writeHead(200).end('ok\n');
      } else if (url === '/readyz') {
        res.writeHead(applied ? 200 : 503).end(applied ? 'ready\n' : 'no valid policy configuration yet\n');
      } else if (url === '/api/authz') {
        res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify(server.engine.status()));
      } else {
        res.writeHead(404).end();
      }
    });
    await new Promise<void>((resolve, reject) => {
      metricsServer!.once('error', reject);
      metricsServer!.listen(metricsPort, get('metricsAddress'), () => resolve());
    });
    boundMetrics = (metricsServer.address() as { port: number }).port;
  }
  log.info({ authz: hostPort(get('authzAddress'), boundAuthz), metrics: boundMetrics === undefined ? 'off' : `http://${hostPort(get('metricsAddress'), boundMetrics)}`, policies: dir }, 'signalbox authz serving');
  return {
    authzPort: boundAuthz,
    metricsPort: boundMetrics,
    server,
    reload,
    stop: async () => {
      await watcher.close();
      await server.close();
      if (metricsServer) {
        metricsServer.closeAllConnections();
        await new Promise<void>((resolve) => metricsServer!.close(() => resolve()));
      }
    },
  };
}

export async function authzCommand(args: string[]): Promise<number> {
  const options = Object.fromEntries(Object.values(AUTHZ_SETTINGS).map((s) => [s.flag, { type: 'string' as const }]));
  const { values } = parseArgs({ args, options, allowPositionals: false });
  const running = await startStandaloneAuthz(values as Record<string, string | undefined>);
  await new Promise<void>((resolve) => {
    const stop = () => void running.stop().then(resolve);
    process.once('SIGINT', stop);
    process.once('SIGTERM', stop);
  });
  return 0;
}
