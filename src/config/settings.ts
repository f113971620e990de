// The control plane's own settings: every `signalbox serve` flag, its SIGNALBOX_* twin and its
// default, parsed once.
import { ErrorCode, SignalboxError } from '../errors.js';

export interface Setting {
  flag: string;
  env: string;
  default: string;
  help: string;
}

export const SERVE_SETTINGS = {
  policies: { flag: 'policies', env: 'SIGNALBOX_POLICIES', default: 'policies', help: 'policy directory to load and watch' },
  xdsAddress: { flag: 'xds-address', env: 'SIGNALBOX_XDS_ADDRESS', default: '0.0.0.0', help: 'address the xDS gRPC server binds' },
  xdsPort: { flag: 'xds-port', env: 'SIGNALBOX_XDS_PORT', default: '18000', help: 'port of the xDS gRPC server (ADS, SotW and Delta)' },
  adminAddress: { flag: 'admin-address', env: 'SIGNALBOX_ADMIN_ADDRESS', default: '127.0.0.1', help: 'address the admin API binds' },
  adminPort: { flag: 'admin-port', env: 'SIGNALBOX_ADMIN_PORT', default: '18001', help: 'port of the admin API (health, metrics, proxies)' },
  dataDir: { flag: 'data-dir', env: 'SIGNALBOX_DATA_DIR', default: '.data', help: 'folder for state Signalbox keeps (CA material)' },
  logLevel: { flag: 'log-level', env: 'SIGNALBOX_LOG_LEVEL', default: 'info', help: 'trace, debug, info, warn or error' },
  caCert: { flag: 'ca-cert', env: 'SIGNALBOX_CA_CERT', default: '', help: 'CA certificate (PEM) to sign with, e.g. an intermediate of your PKI (default: a root generated in --data-dir)' },
  caKey: { flag: 'ca-key', env: 'SIGNALBOX_CA_KEY', default: '', help: 'private key (PKCS#8 PEM, ECDSA P-256) of --ca-cert' },
  caBundle: { flag: 'ca-bundle', env: 'SIGNALBOX_CA_BUNDLE', default: '', help: 'extra trusted roots (PEM) sent to proxies, e.g. the next root during a rotation' },
  requireToken: { flag: 'require-token', env: 'SIGNALBOX_REQUIRE_TOKEN', default: 'secrets', help: 'what a proxy without a valid token gets: "secrets" (config but no keys) or "all" (nothing)' },
  watchDebounceMs: { flag: 'watch-debounce-ms', env: 'SIGNALBOX_WATCH_DEBOUNCE_MS', default: '100', help: 'quiet time after a policy file change before reloading' },
  consulAddr: { flag: 'consul-addr', env: 'CONSUL_HTTP_ADDR', default: '', help: 'Consul HTTP API (HOST:PORT or http(s)://HOST:PORT); unset: static endpoints only. TLS and token from CONSUL_CACERT, CONSUL_CLIENT_CERT, CONSUL_CLIENT_KEY, CONSUL_HTTP_TOKEN' },
  consulDatacenter: { flag: 'consul-datacenter', env: 'SIGNALBOX_CONSUL_DATACENTER', default: '', help: 'Consul datacenter to query when a Service does not name one (default: the agent\'s own)' },
  consulImport: { flag: 'consul-import', env: 'SIGNALBOX_CONSUL_IMPORT', default: '', help: '"all" or "tag=TAG": also import Consul services that no policy file declares' },
} satisfies Record<string, Setting>;

export type SettingName = keyof typeof SERVE_SETTINGS;

export interface ServeConfig {
  policies: string;
  xdsAddress: string;
  xdsPort: number;
  adminAddress: string;
  adminPort: number;
  dataDir: string;
  logLevel: string;
  watchDebounceMs: number;
  /** Consul HTTP address; empty: no Consul discovery. */
  consulAddr: string;
  consulDatacenter: string;
  consulImport: string;
  ca?: { certFile: string; keyFile: string; bundleFile?: string };
  requireToken: 'secrets' | 'all';
}

function portOf(name: string, v: string): number {
  const n = Number(v);
  if (!/^\d+$/.test(v) || !Number.isInteger(n) || n < 0 || n > 65535) throw new SignalboxError(ErrorCode.BAD_FLAG, `--${name} must be a port from 0 to 65535, got "${v}"`);
  return n;
}

function caOf(cert: string, key: string, bundle: string): ServeConfig['ca'] {
  if (!cert && !key) return undefined;
  if (!cert || !key) throw new SignalboxError(ErrorCode.BAD_FLAG, '--ca-cert and --ca-key go together');
  return { certFile: cert, keyFile: key, bundleFile: bundle || undefined };
}

function requireTokenOf(v: string): 'secrets' | 'all' {
  if (v !== 'secrets' && v !== 'all') throw new SignalboxError(ErrorCode.BAD_FLAG, '--require-token must be "secrets" or "all"');
  return v;
}

function consulImportOf(v: string): string {
  if (v !== '' && v !== 'all' && !/^tag=[^,\s]+(,[^,\s]+)*$/.test(v)) throw new SignalboxError(ErrorCode.BAD_FLAG, `--consul-import must be "all" or "tag=TAG[,TAG...]", got "${v}"`);
  return v;
}

/** Flag value, else environment twin, else default. */
export function resolveServeConfig(flags: Record<string, string | boolean | undefined>, env: NodeJS.ProcessEnv = process.env): ServeConfig {
  const get = (k: SettingName): string => {
    const s = SERVE_SETTINGS[k];
    const f = flags[s.flag];
    if (typeof f === 'string') return f;
    return env[s.env] ?? s.default;
  };
  const debounce = Number(get('watchDebounceMs'));
  if (!Number.isFinite(debounce) || debounce < 0) throw new SignalboxError(ErrorCode.BAD_FLAG, '--watch-debounce-ms must be a number of milliseconds');
  const level = get('logLevel');
  if (!['trace', 'debug', 'info', 'warn', 'error', 'fatal', 'silent'].includes(level)) throw new SignalboxError(ErrorCode.BAD_FLAG, `--log-level must be one of trace, debug, info, warn, error`);
  return {
    policies: get('policies'),
    xdsAddress: get('xdsAddress'),
    xdsPort: portOf('xds-port', get('xdsPort')),
    adminAddress: get('adminAddress'),
    adminPort: portOf('admin-port', get('adminPort')),
    dataDir: get('dataDir'),
    logLevel: level,
    watchDebounceMs: debounce,
    consulAddr: get('consulAddr'),
    consulDatacenter: get('consulDatacenter'),
    consulImport: consulImportOf(get('consulImport')),
    ca: caOf(get('caCert'), get('caKey'), get('caBundle')),
    requireToken: requireTokenOf(get('requireToken')),
  };
}
