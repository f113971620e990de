// `signalbox authz`: the ext_authz service on its own, for scaling it apart from the control plane.
// It loads and watches the same policy directory and compiles the same model as `signalbox serve`
// (a directory that fails validation never replaces the last good one). Point the proxies at it
// with `signalbox serve --authz-address-for-proxies IP:PORT`.
//
// Over TLS by default, as the embedded service: it opens the control plane's mesh CA (--data-dir,
// --ca-cert/--ca-key, or with --state consul the replicas' shared state), issues its own certificate (SPIFFE ID spiffe://<trust domain>/signalbox/authz,
// what proxies verify) and requires callers to present a certificate that chains to the mesh trust
// bundle. --insecure serves plain text (only with `serve --xds-insecure`, whose proxies expect it).
import { existsSync } from 'node:fs';
import path from 'node:path';
import { parseArgs } from 'node:util';
import client from 'prom-client';
import { AuthzServer } from '../authz/server.js';
import { ErrorCode, SignalboxError } from '../errors.js';
import { createLogger, type Logger } from '../observability/logger.js';
import { startStatusServer, watchModel } from './standalone.js';
import { envoyRoot } from '../xds/resources/protos.js';
import { CertificateAuthority } from '../ca/ca.js';
import { ServerCertificate } from '../ca/server-tls.js';
import { BUILTIN_DEFAULTS } from '../model/model.js';
import { AUTHZ_SETTINGS, type Setting } from '../config/settings.js';
import { AUTHZ_COMMAND } from './commands.js';
import { parseOptions } from './flags.js';

export { AUTHZ_SETTINGS };

type AuthzSetting = Setting;

export interface StandaloneAuthz {
  authzPort: number;
  metricsPort?: number;
  /** Whether the service speaks TLS (false with --insecure). */
  tls: boolean;
  server: AuthzServer;
  reload(): Promise<boolean>;
  stop(): Promise<void>;
}

export function portOf(name: string, v: string): number {
  const n = Number(v);
  if (!/^\d+$/.test(v) || n > 65535) throw new SignalboxError(ErrorCode.BAD_FLAG, `--${name} must be a port from 0 to 65535, got "${v}"`);
  return n;
}

export function hostPort(host: string, port: number): string {
  return `${host.includes(':') ? `[${host}]` : host}:${port}`;
}

type MeshCaSetting = 'caCert' | 'caKey' | 'caBundle' | 'dataDir' | 'state' | 'statePrefix' | 'stateKeyFile' | 'consulAddr';

/**
 * With --insecure the service reads no CA, so a CA flag beside it would be ignored without a word
 * (a user giving `--state consul` or `--ca-cert` expects TLS from it). Refused instead, naming both.
 */
export function refuseCaWhenInsecure(command: string, get: (k: MeshCaSetting) => string): void {
  const given = [get('state') === 'consul' ? '--state consul' : '', get('caCert') ? '--ca-cert' : '', get('caKey') ? '--ca-key' : ''].filter(Boolean);
  if (given.length)
    throw new SignalboxError(
      ErrorCode.BAD_FLAG,
      `${command} --insecure serves plain text and reads no CA, so ${given.join(' and ')} would be ignored: drop --insecure for TLS with that CA, or drop ${given.join(' and ')}`,
    );
}

/**
 * The mesh CA the control plane uses: its files, the one in its data folder (which must exist), or
 * with --state consul the one the replicas share in Consul KV (the state key is checked first; a
 * service started before any replica made the CA waits for it, as a follower does, then gives up
 * with a message). Shared by the standalone services (`signalbox authz`, `signalbox ratelimit`).
 */
export async function openMeshCa(get: (k: MeshCaSetting) => string, env: NodeJS.ProcessEnv = process.env, log?: Logger): Promise<CertificateAuthority> {
  const cert = get('caCert');
  const key = get('caKey');
  if (!cert !== !key) throw new SignalboxError(ErrorCode.BAD_FLAG, '--ca-cert and --ca-key go together');
  const state = get('state');
  if (state !== 'file' && state !== 'consul') throw new SignalboxError(ErrorCode.BAD_FLAG, `--state must be "file" or "consul", got "${state.slice(0, 100)}"`);
  if (state === 'consul') {
    if (cert)
      throw new SignalboxError(ErrorCode.BAD_FLAG, '--state consul cannot go with --ca-cert/--ca-key: the shared state holds the CA every replica signs with');
    if (!get('consulAddr')) throw new SignalboxError(ErrorCode.BAD_FLAG, '--state consul needs --consul-addr (or CONSUL_HTTP_ADDR)');
    const { openSharedState } = await import('../state/index.js');
    const shared = await openSharedState({
      consulAddr: get('consulAddr'),
      prefix: get('statePrefix'),
      keyFile: get('stateKeyFile') || undefined,
      logger: log,
      env,
    });
    try {
      // Never the maker: the replicas' leader makes the CA, this service waits for it.
      shared.leadership = { isLeader: false };
      return await CertificateAuthority.open({ dataDir: path.resolve(get('dataDir')), trustDomain: BUILTIN_DEFAULTS.trustDomain, shared });
    } finally {
      shared.close();
    }
  }
  const dataDir = path.resolve(get('dataDir'));
  if (!cert && !existsSync(path.join(dataDir, 'ca', 'root.crt'))) {
    // A root generated here would be one no proxy trusts, and that trusts no proxy.
    throw new SignalboxError(
      ErrorCode.BAD_FLAG,
      `no mesh CA in ${path.join(dataDir, 'ca')}: give --data-dir the control plane's data folder (or --ca-cert/--ca-key as given to serve, or --state consul for replicas sharing their state), or --insecure if the control plane runs with --xds-insecure`,
    );
  }
  return CertificateAuthority.open({
    dataDir,
    trustDomain: BUILTIN_DEFAULTS.trustDomain,
    files: cert ? { certFile: cert, keyFile: key, bundleFile: get('caBundle') || undefined } : undefined,
  });
}

export async function startStandaloneAuthz(
  values: Record<string, string | boolean | undefined>,
  env: NodeJS.ProcessEnv = process.env,
  logger?: Logger,
): Promise<StandaloneAuthz> {
  const get = (k: keyof typeof AUTHZ_SETTINGS): string => {
    const s: AuthzSetting = AUTHZ_SETTINGS[k];
    const f = values[s.flag];
    if (typeof f === 'string') return f;
    if (typeof f === 'boolean' && s.boolean) return String(f);
    return env[s.env] ?? s.default;
  };
  const log = logger ?? createLogger({ level: get('logLevel'), name: 'signalbox-authz' });
  const dir = path.resolve(get('policies'));
  const debounce = Number(get('watchDebounceMs'));
  if (!Number.isFinite(debounce) || debounce < 0) throw new SignalboxError(ErrorCode.BAD_FLAG, '--watch-debounce-ms must be a number of milliseconds');
  const metricsPortText = get('metricsPort');
  const metricsPort = metricsPortText === 'off' ? undefined : portOf('metrics-port', metricsPortText);
  const authzPort = portOf('authz-port', get('authzPort'));
  const insecureText = get('insecure');
  if (insecureText !== 'true' && insecureText !== 'false')
    throw new SignalboxError(ErrorCode.BAD_FLAG, `SIGNALBOX_AUTHZ_INSECURE must be "true" or "false", got "${insecureText}"`);
  const insecure = insecureText === 'true';
  if (insecure) refuseCaWhenInsecure('signalbox authz', get);
  const ca = insecure ? undefined : await openMeshCa(get, env, log);

  envoyRoot();
  const registry = new client.Registry();
  client.collectDefaultMetrics({ register: registry, prefix: 'signalbox_authz_process_' });
  const server = new AuthzServer({ logger: log, registry });
  const watched = await watchModel(dir, debounce, log, (model) => server.update(model));
  let certificate: ServerCertificate | undefined;
  let boundAuthz: number;
  try {
    if (ca)
      certificate = await ServerCertificate.start({
        ca,
        trustDomain: BUILTIN_DEFAULTS.trustDomain,
        server: 'authz',
        bindAddress: get('authzAddress'),
        sans: [],
        logger: log,
      });
    boundAuthz = await server.listen(hostPort(get('authzAddress'), authzPort), certificate && ca ? { certificate, clientCaPem: ca.trustBundlePem } : undefined);
  } catch (e) {
    certificate?.stop();
    await watched.close();
    await server.close();
    throw e;
  }
  if (insecure) {
    const warning =
      'signalbox authz --insecure: the ext_authz service speaks plain text and asks callers for no certificate; anyone who reaches its port can call it (and post fast-path reports)';
    process.stderr.write(`warning: ${warning}\n`);
    log.warn(warning);
  }

  let metrics: { port: number; close(): Promise<void> } | undefined;
  if (metricsPort !== undefined) {
    metrics = await startStatusServer({
      registry,
      address: get('metricsAddress'),
      port: metricsPort,
      ready: () => watched.applied,
      statusPath: '/api/authz',
      status: () => ({ tls: !insecure, ...server.engine.status() }),
    });
  }
  const boundMetrics = metrics?.port;
  log.info(
    {
      authz: hostPort(get('authzAddress'), boundAuthz),
      tls: !insecure,
      metrics: boundMetrics === undefined ? 'off' : `http://${hostPort(get('metricsAddress'), boundMetrics)}`,
      policies: dir,
    },
    'signalbox authz serving',
  );
  return {
    authzPort: boundAuthz,
    metricsPort: boundMetrics,
    tls: !insecure,
    server,
    reload: watched.reload,
    stop: async () => {
      await watched.close();
      await server.close();
      certificate?.stop();
      await metrics?.close();
    },
  };
}

export async function authzCommand(args: string[]): Promise<number> {
  const { values } = parseArgs({ args, options: parseOptions(AUTHZ_COMMAND.flags), allowPositionals: false });
  const running = await startStandaloneAuthz(values as Record<string, string | boolean | undefined>);
  await new Promise<void>((resolve) => {
    const stop = () => void running.stop().then(resolve);
    process.once('SIGINT', stop);
    process.once('SIGTERM', stop);
  });
  return 0;
}
