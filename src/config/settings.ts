// The control plane's own settings: every `signalbox serve` flag, its SIGNALBOX_* twin and its
// default, parsed once.
import { existsSync, readFileSync } from 'node:fs';
import { isIP } from 'node:net';
import { hostname } from 'node:os';
import { checkRedisUrl } from './redis-url.js';
import { parseDuration } from '../api/v1alpha1/common.js';
import { ErrorCode, SignalboxError } from '../errors.js';
import { DEFAULT_POLICY_LIMITS, type PolicyLimits } from '../sources/files/loader.js';

export interface Setting {
  flag: string;
  env: string;
  default: string;
  help: string;
  /** A flag that takes no value (`--xds-insecure`); its environment twin is "true" or "false". */
  boolean?: boolean;
}

export const SERVE_SETTINGS = {
  policies: { flag: 'policies', env: 'SIGNALBOX_POLICIES', default: 'policies', help: 'policy directory to load and watch' },
  xdsAddress: { flag: 'xds-address', env: 'SIGNALBOX_XDS_ADDRESS', default: '0.0.0.0', help: 'address the xDS gRPC server binds' },
  xdsPort: { flag: 'xds-port', env: 'SIGNALBOX_XDS_PORT', default: '18000', help: 'port of the xDS gRPC server (ADS, SotW and Delta)' },
  xdsSan: {
    flag: 'xds-san',
    env: 'SIGNALBOX_XDS_SAN',
    default: '',
    help: 'extra names (DNS names or IPs, comma-separated) in the xDS server certificate Signalbox issues itself; the host name, localhost, 127.0.0.1, ::1 and a non-wildcard --xds-address are always in it',
  },
  xdsCert: {
    flag: 'xds-cert',
    env: 'SIGNALBOX_XDS_CERT',
    default: '',
    help: 'xDS server certificate chain (PEM) from your PKI instead of one issued by the mesh CA; re-read when the file changes',
  },
  xdsKey: { flag: 'xds-key', env: 'SIGNALBOX_XDS_KEY', default: '', help: 'private key (PEM) of --xds-cert' },
  xdsInsecure: {
    flag: 'xds-insecure',
    env: 'SIGNALBOX_XDS_INSECURE',
    default: 'false',
    boolean: true,
    help: 'serve xDS and the ext_authz service in plain text (keys then cross the network in clear; logged as a warning and shown in /api/status)',
  },
  adminAddress: { flag: 'admin-address', env: 'SIGNALBOX_ADMIN_ADDRESS', default: '127.0.0.1', help: 'address the admin API binds' },
  adminPort: { flag: 'admin-port', env: 'SIGNALBOX_ADMIN_PORT', default: '18001', help: 'port of the admin API (health, metrics, proxies)' },
  adminTokenFile: {
    flag: 'admin-token-file',
    env: 'SIGNALBOX_ADMIN_TOKEN_FILE',
    default: '',
    help: 'file holding a bearer token the admin API requires (except /healthz and /readyz); needed to bind --admin-address to a non-loopback address',
  },
  authzPort: {
    flag: 'authz-port',
    env: 'SIGNALBOX_AUTHZ_PORT',
    default: '',
    help: 'port of the ext_authz gRPC service that checks JWTPolicies, bound on the xDS address (default: 18002, opened once a JWTPolicy exists and kept open for proxies still draining old routes; a port given here is always open; 0: any free port)',
  },
  authzAddressForProxies: {
    flag: 'authz-address-for-proxies',
    env: 'SIGNALBOX_AUTHZ_ADDRESS_FOR_PROXIES',
    default: '',
    help: 'IP:PORT at which proxies reach the ext_authz service, e.g. a standalone `signalbox authz` (default: the xDS address, 127.0.0.1 when that is a wildcard, and the bound --authz-port)',
  },
  ratelimitPort: {
    flag: 'ratelimit-port',
    env: 'SIGNALBOX_RATELIMIT_PORT',
    default: '',
    help: 'port of the rate-limit gRPC service that counts global RateLimitPolicy limits in Redis, bound on the xDS address (default: 18004, opened once a global limit exists; a port given here is always open; 0: any free port)',
  },
  ratelimitAddressForProxies: {
    flag: 'ratelimit-address-for-proxies',
    env: 'SIGNALBOX_RATELIMIT_ADDRESS_FOR_PROXIES',
    default: '',
    help: 'IP:PORT at which proxies reach the rate-limit service, e.g. a standalone `signalbox ratelimit` (default: the xDS address, 127.0.0.1 when that is a wildcard, and the bound --ratelimit-port)',
  },
  redisUrl: {
    flag: 'redis-url',
    env: 'REDIS_URL',
    default: 'redis://127.0.0.1:6379',
    help: 'the Redis that holds the global rate-limit counters: redis://[:PASSWORD@]HOST:PORT[/DB], rediss:// for TLS, or unix:///PATH/redis.sock (redis+unix://, ?db=N; password by file or REDIS_PASSWORD) on the same host; the password never shows in logs, /api/status or metrics',
  },
  redisPasswordFile: {
    flag: 'redis-password-file',
    env: 'SIGNALBOX_REDIS_PASSWORD_FILE',
    default: '',
    help: 'file holding the Redis password (trimmed), instead of putting it in --redis-url; REDIS_PASSWORD works too',
  },
  redisCa: { flag: 'redis-ca', env: 'SIGNALBOX_REDIS_CA', default: '', help: 'PEM roots to verify a rediss:// server with (default: the system roots)' },
  dataDir: { flag: 'data-dir', env: 'SIGNALBOX_DATA_DIR', default: '.data', help: 'folder for state Signalbox keeps (CA material)' },
  logLevel: { flag: 'log-level', env: 'SIGNALBOX_LOG_LEVEL', default: 'info', help: 'trace, debug, info, warn or error' },
  caCert: {
    flag: 'ca-cert',
    env: 'SIGNALBOX_CA_CERT',
    default: '',
    help: 'CA certificate (PEM) to sign with, e.g. an intermediate of your PKI (default: a root generated in --data-dir)',
  },
  caKey: { flag: 'ca-key', env: 'SIGNALBOX_CA_KEY', default: '', help: 'private key (PKCS#8 PEM, ECDSA P-256) of --ca-cert' },
  caBundle: {
    flag: 'ca-bundle',
    env: 'SIGNALBOX_CA_BUNDLE',
    default: '',
    help: 'extra trusted roots (PEM) sent to proxies, e.g. the next root during a rotation',
  },
  requireToken: {
    flag: 'require-token',
    env: 'SIGNALBOX_REQUIRE_TOKEN',
    default: 'all',
    help: 'what a proxy without a valid token for its identity gets: "all" (the default: nothing, the stream is refused) or "secrets" (configuration but no keys; a downgrade, logged as a warning)',
  },
  accessLogSampling: {
    flag: 'access-log-sampling',
    env: 'SIGNALBOX_ACCESS_LOG_SAMPLING',
    default: '100',
    help: 'percent of successful requests proxies report to the access log service (errors are always reported); "off" turns traffic reporting off',
  },
  jwtFastPath: {
    flag: 'jwt-fast-path',
    env: 'SIGNALBOX_JWT_FAST_PATH',
    default: 'on',
    help: '"on": on routes under one JWTPolicy reading one header, Envoy asks the ext_authz service once per token and repeats its allows itself (a Lua script); "module": the same, done by Signalbox\'s compiled filter (faster; every proxy\'s Envoy must load it, see docs/jwt.md); "off": every request goes through the ext_authz filter',
  },
  warmWaitMs: {
    flag: 'warm-wait-ms',
    env: 'SIGNALBOX_WARM_WAIT_MS',
    default: '5000',
    help: 'longest a listener or route change that names new clusters waits for the proxy to ACK those clusters and their endpoints (so no request meets a cluster still warming); past it the change is sent anyway and the wait counted as a timeout; 0: no waiting',
  },
  clusterDrainMs: {
    flag: 'cluster-drain-ms',
    env: 'SIGNALBOX_CLUSTER_DRAIN_MS',
    default: '5000',
    help: 'how long a cluster the routes no longer name stays on the proxy after it ACKed those routes, so requests already routed to it finish; 0: removed at once',
  },
  endpointPushIntervalMs: {
    flag: 'endpoint-push-interval-ms',
    env: 'SIGNALBOX_ENDPOINT_PUSH_INTERVAL_MS',
    default: '250',
    help: 'least time between two endpoint pushes while endpoint changes keep coming (a change after a quiet spell goes out at once); 0: push every change',
  },
  maxPolicyFileBytes: {
    flag: 'max-policy-file-bytes',
    env: 'SIGNALBOX_MAX_POLICY_FILE_BYTES',
    default: `${DEFAULT_POLICY_LIMITS.maxFileBytes / 1024 ** 2}MiB`,
    help: 'largest policy file read, in bytes (suffixes KiB, MiB, GiB); a bigger file is an error for that file and is not read',
  },
  maxPolicyDirBytes: {
    flag: 'max-policy-dir-bytes',
    env: 'SIGNALBOX_MAX_POLICY_DIR_BYTES',
    default: `${DEFAULT_POLICY_LIMITS.maxDirBytes / 1024 ** 2}MiB`,
    help: 'largest total of all policy files, in bytes (suffixes KiB, MiB, GiB); over it, nothing is read and the directory is rejected',
  },
  maxPolicyFiles: {
    flag: 'max-policy-files',
    env: 'SIGNALBOX_MAX_POLICY_FILES',
    default: String(DEFAULT_POLICY_LIMITS.maxFiles),
    help: 'most *.yaml / *.yml files in the policy directory and its folders; over it, nothing is read and the directory is rejected',
  },
  strict: {
    flag: 'strict',
    env: 'SIGNALBOX_STRICT',
    default: 'false',
    boolean: true,
    help: 'a YAML document in the policy directory that is not a Signalbox document (another apiVersion, or neither apiVersion nor kind, e.g. an Envoy bootstrap) is an error that rejects the directory, as in CI; without it such a document is skipped with a warning (/api/errors) and the rest applies',
  },
  preflightEnvoy: {
    flag: 'preflight-envoy',
    env: 'SIGNALBOX_PREFLIGHT_ENVOY',
    default: '',
    help: 'Envoy binary that checks each new configuration before it is applied (`envoy --mode validate`, as `signalbox validate --envoy`; only the proxy groups whose configuration changed, about 50-250 ms each): what it refuses rejects the load like a validation error and the last good configuration stays; default: off',
  },
  watchDebounceMs: {
    flag: 'watch-debounce-ms',
    env: 'SIGNALBOX_WATCH_DEBOUNCE_MS',
    default: '100',
    help: 'how long changes that keep coming are gathered into one reload (the first change after a quiet spell reloads at once)',
  },
  consulAddr: {
    flag: 'consul-addr',
    env: 'CONSUL_HTTP_ADDR',
    default: '',
    help: 'Consul HTTP API (HOST:PORT or http(s)://HOST:PORT); unset: static endpoints only. TLS and token from CONSUL_CACERT, CONSUL_CLIENT_CERT, CONSUL_CLIENT_KEY, CONSUL_HTTP_TOKEN',
  },
  consulDatacenter: {
    flag: 'consul-datacenter',
    env: 'SIGNALBOX_CONSUL_DATACENTER',
    default: '',
    help: "Consul datacenter to query when a Service does not name one (default: the agent's own)",
  },
  consulImport: {
    flag: 'consul-import',
    env: 'SIGNALBOX_CONSUL_IMPORT',
    default: '',
    help: '"all" or "tag=TAG": also import Consul services that no policy file declares',
  },
  state: {
    flag: 'state',
    env: 'SIGNALBOX_STATE',
    default: 'file',
    help: 'where the mesh CA, the token signing key, the revocation list and the xDS server certificate live: "file" (--data-dir, one replica) or "consul" (Consul KV under --state-prefix, shared by every replica; needs --consul-addr and the state key; docs/ha.md)',
  },
  statePrefix: {
    flag: 'state-prefix',
    env: 'SIGNALBOX_STATE_PREFIX',
    default: 'signalbox',
    help: 'with --state consul: the Consul KV folder of the shared state (one per mesh)',
  },
  stateKeyFile: {
    flag: 'state-key-file',
    env: 'SIGNALBOX_STATE_KEY_FILE',
    default: '',
    help: 'with --state consul: file holding the 256-bit key (64 hex digits or base64) that encrypts private keys in Consul; else SIGNALBOX_STATE_KEY holds the key itself. Every replica needs the same key',
  },
  stateStaleMax: {
    flag: 'state-stale-max',
    env: 'SIGNALBOX_STATE_STALE_MAX',
    default: '1h',
    help: 'with --state consul: once Consul has been unreadable this long (revocations and CA rotations made elsewhere unknown), this replica stops issuing and renewing workload certificates until Consul answers again; proxies keep the ones they hold (1s to 720h; docs/ha.md)',
  },
  replicaId: {
    flag: 'replica-id',
    env: 'SIGNALBOX_REPLICA_ID',
    default: '',
    help: "with --state consul: this replica's name among the replicas (default: HOST-XDSPORT)",
  },
} satisfies Record<string, Setting>;

export type SettingName = keyof typeof SERVE_SETTINGS;

/**
 * What the two standalone services (`signalbox authz`, `signalbox ratelimit`) take alike: logging,
 * reload pacing and the control plane's CA. Spread into both tables at the same place, so their
 * flags and `--help` keep their order.
 */
const STANDALONE_SHARED_SETTINGS = {
  logLevel: { flag: 'log-level', env: 'SIGNALBOX_LOG_LEVEL', default: 'info', help: 'trace, debug, info, warn or error' },
  watchDebounceMs: {
    flag: 'watch-debounce-ms',
    env: 'SIGNALBOX_WATCH_DEBOUNCE_MS',
    default: '100',
    help: 'quiet time after a policy file change before reloading',
  },
  dataDir: {
    flag: 'data-dir',
    env: 'SIGNALBOX_DATA_DIR',
    default: '.data',
    help: "the control plane's data folder: its mesh CA issues this service's certificate and verifies callers (never generated here)",
  },
  caCert: {
    flag: 'ca-cert',
    env: 'SIGNALBOX_CA_CERT',
    default: '',
    help: 'the CA certificate `signalbox serve --ca-cert` signs with (instead of the one in --data-dir)',
  },
  caKey: { flag: 'ca-key', env: 'SIGNALBOX_CA_KEY', default: '', help: 'private key of --ca-cert' },
  caBundle: { flag: 'ca-bundle', env: 'SIGNALBOX_CA_BUNDLE', default: '', help: 'extra trusted roots (PEM), as given to `signalbox serve --ca-bundle`' },
  state: {
    ...SERVE_SETTINGS.state,
    help: 'where the mesh CA is: "file" (--data-dir, or --ca-cert/--ca-key) or "consul" (the shared state of `signalbox serve --state consul` replicas, read at start; needs --consul-addr and the state key; docs/ha.md)',
  },
  statePrefix: SERVE_SETTINGS.statePrefix,
  stateKeyFile: SERVE_SETTINGS.stateKeyFile,
  consulAddr: {
    ...SERVE_SETTINGS.consulAddr,
    help: 'with --state consul: the Consul HTTP API (HOST:PORT or http(s)://HOST:PORT). TLS and token from CONSUL_CACERT, CONSUL_CLIENT_CERT, CONSUL_CLIENT_KEY, CONSUL_HTTP_TOKEN',
  },
} as const;

/** `signalbox ratelimit`'s flags (here, not in the command, so the CLI's flag tables load nothing else). */
export const RATELIMIT_SETTINGS = {
  policies: { flag: 'policies', env: 'SIGNALBOX_POLICIES', default: 'policies', help: "policy directory to load and watch (the control plane's)" },
  ratelimitAddress: { flag: 'ratelimit-address', env: 'SIGNALBOX_RATELIMIT_ADDRESS', default: '0.0.0.0', help: 'address the rate-limit gRPC service binds' },
  ratelimitPort: { flag: 'ratelimit-port', env: 'SIGNALBOX_RATELIMIT_PORT', default: '18004', help: 'port of the rate-limit gRPC service (0: any free port)' },
  metricsAddress: {
    flag: 'metrics-address',
    env: 'SIGNALBOX_RATELIMIT_METRICS_ADDRESS',
    default: '127.0.0.1',
    help: 'address of the /metrics, /healthz, /readyz and /api/ratelimit endpoint',
  },
  metricsPort: {
    flag: 'metrics-port',
    env: 'SIGNALBOX_RATELIMIT_METRICS_PORT',
    default: '18005',
    help: 'port of the /metrics, /healthz, /readyz and /api/ratelimit endpoint ("off": none)',
  },
  redisUrl: {
    flag: 'redis-url',
    env: 'REDIS_URL',
    default: 'redis://127.0.0.1:6379',
    help: "the Redis holding the counters (the control plane's): redis://[:PASSWORD@]HOST:PORT[/DB], rediss:// for TLS, or unix:///PATH/redis.sock (redis+unix://, ?db=N) on the same host",
  },
  redisPasswordFile: {
    flag: 'redis-password-file',
    env: 'SIGNALBOX_REDIS_PASSWORD_FILE',
    default: '',
    help: 'file holding the Redis password (trimmed), instead of putting it in --redis-url; REDIS_PASSWORD works too',
  },
  redisCa: { flag: 'redis-ca', env: 'SIGNALBOX_REDIS_CA', default: '', help: 'PEM roots to verify a rediss:// server with (default: the system roots)' },
  ...STANDALONE_SHARED_SETTINGS,
  insecure: {
    flag: 'insecure',
    env: 'SIGNALBOX_RATELIMIT_INSECURE',
    default: 'false',
    boolean: true,
    help: 'plain text, no caller certificate (anyone who reaches the port can call it); for a control plane run with --xds-insecure',
  },
} as const;

/** `signalbox authz`'s settings (the ext_authz service on its own). */
export const AUTHZ_SETTINGS = {
  policies: { flag: 'policies', env: 'SIGNALBOX_POLICIES', default: 'policies', help: "policy directory to load and watch (the control plane's)" },
  authzAddress: { flag: 'authz-address', env: 'SIGNALBOX_AUTHZ_ADDRESS', default: '0.0.0.0', help: 'address the ext_authz gRPC service binds' },
  authzPort: { flag: 'authz-port', env: 'SIGNALBOX_AUTHZ_PORT', default: '18002', help: 'port of the ext_authz gRPC service' },
  metricsAddress: {
    flag: 'metrics-address',
    env: 'SIGNALBOX_AUTHZ_METRICS_ADDRESS',
    default: '127.0.0.1',
    help: 'address of the /metrics, /healthz and /readyz endpoint',
  },
  metricsPort: {
    flag: 'metrics-port',
    env: 'SIGNALBOX_AUTHZ_METRICS_PORT',
    default: '18003',
    help: 'port of the /metrics, /healthz and /readyz endpoint ("off": none)',
  },
  ...STANDALONE_SHARED_SETTINGS,
  insecure: {
    flag: 'insecure',
    env: 'SIGNALBOX_AUTHZ_INSECURE',
    default: 'false',
    boolean: true,
    help: 'plain text, no caller certificate (anyone who reaches the port can call it); for a control plane run with --xds-insecure',
  },
} satisfies Record<string, Setting>;

/** The port the ext_authz service takes when --authz-port is not given. */
export const DEFAULT_AUTHZ_PORT = 18002;

export interface XdsTlsConfig {
  /** Extra DNS names and IP addresses for the certificate Signalbox issues itself. */
  sans: string[];
  /** A certificate and key from the user's PKI (watched for changes) instead of one issued by the mesh CA. */
  files?: { certFile: string; keyFile: string };
}

export interface ServeConfig {
  policies: string;
  xdsAddress: string;
  xdsPort: number;
  /** TLS on the xDS (and ext_authz) port; undefined with --xds-insecure. */
  xdsTls?: XdsTlsConfig;
  adminAddress: string;
  adminPort: number;
  /** File holding the admin API's bearer token. */
  adminTokenFile?: string;
  /** The ext_authz port; undefined: 18002, opened only while a JWTPolicy exists. */
  authzPort?: number;
  /** Where proxies reach the ext_authz service, when not derived from the xDS address and authz port. */
  authzAddressForProxies?: { address: string; port: number };
  /** The rate-limit service's port; undefined: 18004, opened only while a global limit exists. */
  ratelimitPort?: number;
  ratelimitAddressForProxies?: { address: string; port: number };
  /** The Redis of the global rate limits (URL checked; password apart when given by file or REDIS_PASSWORD). */
  redis: { url: string; password?: string; caFile?: string };
  dataDir: string;
  logLevel: string;
  watchDebounceMs: number;
  /** Bounds on reading the policy directory (--max-policy-file-bytes, --max-policy-dir-bytes, --max-policy-files). */
  policyLimits: PolicyLimits;
  /** --strict: documents that are not Signalbox documents are errors, not skipped with a warning. */
  strict: boolean;
  /** See XdsServerOptions.warmWaitMs and clusterDrainMs. */
  warmWaitMs: number;
  clusterDrainMs: number;
  /** See PipelineOptions.endpointPushIntervalMs. */
  endpointPushIntervalMs: number;
  /** See PipelineOptions.preflightEnvoy; undefined: off. */
  preflightEnvoy?: string;
  /** Consul HTTP address; empty: no Consul discovery. */
  consulAddr: string;
  consulDatacenter: string;
  consulImport: string;
  ca?: { certFile: string; keyFile: string; bundleFile?: string };
  /** --state consul: the shared state's place in Consul KV; undefined: the data directory. */
  state?: SharedStateConfig;
  requireToken: 'secrets' | 'all';
  /** Percent of successful requests reported over the access log service; undefined: off. */
  accessLogSampling?: number;
  /** Envoy decides valid JWTs itself where it can (see src/xds/translator/filters/jwt-fast.ts). */
  jwtFastPath: boolean;
  /** The fast path runs in Signalbox's compiled Envoy module instead of the Lua script. */
  jwtFastPathModule: boolean;
}

function portOf(name: string, v: string): number {
  const n = Number(v);
  if (!/^\d+$/.test(v) || !Number.isInteger(n) || n < 0 || n > 65535)
    throw new SignalboxError(ErrorCode.BAD_FLAG, `--${name} must be a port from 0 to 65535, got "${v}"`);
  return n;
}

function ipPortOf(name: string, v: string): { address: string; port: number } | undefined {
  if (v === '') return undefined;
  const m = /^\[?([^\]]+?)\]?:(\d+)$/.exec(v);
  const port = m ? Number(m[2]) : NaN;
  if (!m || isIP(m[1]!) === 0 || !Number.isInteger(port) || port < 1 || port > 65535)
    throw new SignalboxError(ErrorCode.BAD_FLAG, `--${name} must be IP:PORT (proxies reach it through a static cluster), got "${v}"`);
  return { address: m[1]!, port };
}

function caOf(cert: string, key: string, bundle: string): ServeConfig['ca'] {
  if (!cert && !key) return undefined;
  if (!cert || !key) throw new SignalboxError(ErrorCode.BAD_FLAG, '--ca-cert and --ca-key go together');
  return { certFile: cert, keyFile: key, bundleFile: bundle || undefined };
}

function xdsTlsOf(insecure: string, cert: string, key: string, san: string): XdsTlsConfig | undefined {
  if (insecure !== 'true' && insecure !== 'false')
    throw new SignalboxError(ErrorCode.BAD_FLAG, `SIGNALBOX_XDS_INSECURE must be "true" or "false", got "${insecure}"`);
  if (insecure === 'true') {
    if (cert || key) throw new SignalboxError(ErrorCode.BAD_FLAG, '--xds-insecure cannot go with --xds-cert/--xds-key');
    return undefined;
  }
  if (!cert !== !key) throw new SignalboxError(ErrorCode.BAD_FLAG, '--xds-cert and --xds-key go together');
  const sans = san
    .split(',')
    .map((s) => s.trim())
    .filter(Boolean);
  for (const n of sans) {
    if (isIP(n) === 0 && !/^(\*\.)?[A-Za-z0-9]([-A-Za-z0-9]{0,61}[A-Za-z0-9])?(\.[A-Za-z0-9]([-A-Za-z0-9]{0,61}[A-Za-z0-9])?)*$/.test(n))
      throw new SignalboxError(ErrorCode.BAD_FLAG, `--xds-san takes DNS names and IP addresses, got "${n.slice(0, 100)}"`);
  }
  return { sans, files: cert ? { certFile: cert, keyFile: key } : undefined };
}

export interface SharedStateConfig {
  prefix: string;
  /** --state-key-file; undefined: SIGNALBOX_STATE_KEY. */
  keyFile?: string;
  replicaId: string;
  /** --state-stale-max: Consul unreadable longer than this stops workload certificate issuance. */
  staleMaxMs: number;
}

/** --state and its companions, checked before anything starts. */
export function stateOf(
  kind: string,
  prefix: string,
  keyFile: string,
  replicaId: string,
  consulAddr: string,
  ca: ServeConfig['ca'],
  defaultReplica: () => string,
  staleMax = '1h',
): SharedStateConfig | undefined {
  if (kind !== 'file' && kind !== 'consul') throw new SignalboxError(ErrorCode.BAD_FLAG, `--state must be "file" or "consul", got "${kind.slice(0, 100)}"`);
  if (kind === 'file') return undefined;
  if (!consulAddr) throw new SignalboxError(ErrorCode.BAD_FLAG, '--state consul needs --consul-addr (or CONSUL_HTTP_ADDR)');
  if (ca)
    throw new SignalboxError(ErrorCode.BAD_FLAG, '--state consul cannot go with --ca-cert/--ca-key: the shared state holds the CA every replica signs with');
  const id = replicaId || defaultReplica();
  if (!/^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$/.test(id))
    throw new SignalboxError(ErrorCode.BAD_FLAG, `--replica-id must be 1 to 63 letters, digits, ".", "_" or "-", got "${id.slice(0, 100)}"`);
  const staleMaxMs = parseDuration(staleMax);
  if (staleMaxMs === undefined || staleMaxMs < 1_000 || staleMaxMs > 720 * 3_600_000)
    throw new SignalboxError(
      ErrorCode.BAD_FLAG,
      `--state-stale-max must be a duration from 1s to 720h (such as 90s, 30m, 1h), got "${staleMax.slice(0, 100)}"`,
    );
  return { prefix, keyFile: keyFile || undefined, replicaId: id, staleMaxMs };
}

function requireTokenOf(v: string): 'secrets' | 'all' {
  if (v !== 'secrets' && v !== 'all') throw new SignalboxError(ErrorCode.BAD_FLAG, '--require-token must be "secrets" or "all"');
  return v;
}

/** CONSUL_HTTP_ADDR's forms: HOST:PORT, [IPv6]:PORT, http(s)://HOST[:PORT]; checked here so a typo fails before anything starts. */
function consulAddrOf(v: string): string {
  if (v !== '' && !/^(https?:\/\/)?(\[[0-9a-fA-F:.]+\]|[^\s/@:[\]]+)(:\d{1,5})?\/?$/.test(v.trim()))
    throw new SignalboxError(ErrorCode.BAD_FLAG, `--consul-addr must be HOST:PORT or http(s)://HOST:PORT, got "${v}"`);
  return v.trim();
}

function consulImportOf(v: string): string {
  if (v !== '' && v !== 'all' && !/^tag=[^,\s]+(,[^,\s]+)*$/.test(v))
    throw new SignalboxError(ErrorCode.BAD_FLAG, `--consul-import must be "all" or "tag=TAG[,TAG...]", got "${v}"`);
  return v;
}

function accessLogSamplingOf(v: string): number | undefined {
  if (v === 'off') return undefined;
  const n = Number(v);
  if (v.trim() === '' || !Number.isFinite(n) || n < 0 || n > 100)
    throw new SignalboxError(ErrorCode.BAD_FLAG, `--access-log-sampling must be a percent from 0 to 100, or "off", got "${v}"`);
  return n;
}

function millisOf(name: string, v: string): number {
  const n = Number(v);
  if (!/^\d+$/.test(v) || !Number.isSafeInteger(n))
    throw new SignalboxError(ErrorCode.BAD_FLAG, `--${name} must be a whole number of milliseconds, got "${v}"`);
  return n;
}

const BYTE_UNITS: Record<string, number> = { '': 1, KiB: 1024, MiB: 1024 ** 2, GiB: 1024 ** 3 };

/** A size in bytes: digits, optionally followed by KiB, MiB or GiB (binary units, so no KB/MB ambiguity). */
function bytesOf(name: string, v: string): number {
  const m = /^(\d+)(KiB|MiB|GiB)?$/.exec(v);
  const n = m ? Number(m[1]) * BYTE_UNITS[m[2] ?? '']! : NaN;
  if (!Number.isSafeInteger(n) || n < 1)
    throw new SignalboxError(ErrorCode.BAD_FLAG, `--${name} must be a size in bytes of at least 1, optionally with KiB, MiB or GiB (e.g. 4MiB), got "${v}"`);
  return n;
}

function countOf(name: string, v: string): number {
  const n = Number(v);
  if (!/^\d+$/.test(v) || !Number.isSafeInteger(n) || n < 1)
    throw new SignalboxError(ErrorCode.BAD_FLAG, `--${name} must be a whole number of at least 1, got "${v}"`);
  return n;
}

/**
 * The policy reading limits from flags, else their environment twins, else the defaults. Also what
 * `signalbox validate` uses (environment only), so it refuses what `serve` would.
 */
export function resolvePolicyLimits(flags: Record<string, string | boolean | undefined>, env: NodeJS.ProcessEnv = process.env): PolicyLimits {
  const get = (k: 'maxPolicyFileBytes' | 'maxPolicyDirBytes' | 'maxPolicyFiles'): string => {
    const s: Setting = SERVE_SETTINGS[k];
    const f = flags[s.flag];
    return typeof f === 'string' ? f : (env[s.env] ?? s.default);
  };
  return {
    maxFileBytes: bytesOf(SERVE_SETTINGS.maxPolicyFileBytes.flag, get('maxPolicyFileBytes')),
    maxDirBytes: bytesOf(SERVE_SETTINGS.maxPolicyDirBytes.flag, get('maxPolicyDirBytes')),
    maxFiles: countOf(SERVE_SETTINGS.maxPolicyFiles.flag, get('maxPolicyFiles')),
  };
}

/**
 * --strict from the flag, else SIGNALBOX_STRICT ("true" or "false"), else off. Also what `signalbox
 * validate` and `compile` use (with their own --strict), so they refuse what `serve` would.
 */
export function resolveStrict(flags: Record<string, string | boolean | undefined>, env: NodeJS.ProcessEnv = process.env): boolean {
  const s: Setting = SERVE_SETTINGS.strict;
  const f = flags[s.flag];
  if (typeof f === 'boolean') return f;
  const v = typeof f === 'string' ? f : (env[s.env] ?? s.default);
  if (v !== 'true' && v !== 'false') throw new SignalboxError(ErrorCode.BAD_FLAG, `${s.env} must be "true" or "false", got "${v.slice(0, 100)}"`);
  return v === 'true';
}

/** --jwt-fast-path: "on" (the Lua script), "module" (the compiled filter) or "off". */
function jwtFastPathOf(v: string): { jwtFastPath: boolean; jwtFastPathModule: boolean } {
  if (v === 'on' || v === 'module' || v === 'off') return { jwtFastPath: v !== 'off', jwtFastPathModule: v === 'module' };
  throw new SignalboxError(ErrorCode.BAD_FLAG, `--jwt-fast-path must be "on", "module" or "off", got "${v}"`);
}

function _onOff(name: string, v: string): boolean {
  if (v === 'on') return true;
  if (v === 'off') return false;
  throw new SignalboxError(ErrorCode.BAD_FLAG, `--${name} must be "on" or "off", got "${v}"`);
}

/** --redis-url checked up front (a typo is a start error, not an outage); the password read from its file. */
export function redisOf(url: string, passwordFile: string, ca: string, env: NodeJS.ProcessEnv = process.env): ServeConfig['redis'] {
  try {
    checkRedisUrl(url);
  } catch (e) {
    throw new SignalboxError(ErrorCode.BAD_FLAG, (e as Error).message);
  }
  let password: string | undefined;
  if (passwordFile) {
    try {
      password = readFileSync(passwordFile, 'utf8').trim();
    } catch (e) {
      throw new SignalboxError(
        ErrorCode.BAD_FLAG,
        `--redis-password-file ${passwordFile} cannot be read: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`,
      );
    }
    if (!password) throw new SignalboxError(ErrorCode.BAD_FLAG, `--redis-password-file ${passwordFile} is empty`);
  } else if (env.REDIS_PASSWORD) password = env.REDIS_PASSWORD;
  if (ca && !existsSync(ca)) throw new SignalboxError(ErrorCode.BAD_FLAG, `--redis-ca ${ca} does not exist`);
  return { url, ...(password !== undefined ? { password } : {}), ...(ca ? { caFile: ca } : {}) };
}

/** Flag value, else environment twin, else default. */
export function resolveServeConfig(flags: Record<string, string | boolean | undefined>, env: NodeJS.ProcessEnv = process.env): ServeConfig {
  const get = (k: SettingName): string => {
    const s: Setting = SERVE_SETTINGS[k];
    const f = flags[s.flag];
    if (typeof f === 'string') return f;
    if (typeof f === 'boolean' && s.boolean) return String(f);
    return env[s.env] ?? s.default;
  };
  const debounce = Number(get('watchDebounceMs'));
  if (!Number.isFinite(debounce) || debounce < 0) throw new SignalboxError(ErrorCode.BAD_FLAG, '--watch-debounce-ms must be a number of milliseconds');
  const level = get('logLevel');
  if (!['trace', 'debug', 'info', 'warn', 'error', 'fatal', 'silent'].includes(level))
    throw new SignalboxError(ErrorCode.BAD_FLAG, `--log-level must be one of trace, debug, info, warn, error`);
  return {
    policies: get('policies'),
    xdsAddress: get('xdsAddress'),
    xdsPort: portOf('xds-port', get('xdsPort')),
    xdsTls: xdsTlsOf(get('xdsInsecure'), get('xdsCert'), get('xdsKey'), get('xdsSan')),
    adminAddress: get('adminAddress'),
    adminPort: portOf('admin-port', get('adminPort')),
    adminTokenFile: get('adminTokenFile') || undefined,
    authzPort: get('authzPort') === '' ? undefined : portOf('authz-port', get('authzPort')),
    authzAddressForProxies: ipPortOf('authz-address-for-proxies', get('authzAddressForProxies')),
    ratelimitPort: get('ratelimitPort') === '' ? undefined : portOf('ratelimit-port', get('ratelimitPort')),
    ratelimitAddressForProxies: ipPortOf('ratelimit-address-for-proxies', get('ratelimitAddressForProxies')),
    redis: redisOf(get('redisUrl'), get('redisPasswordFile'), get('redisCa'), env),
    dataDir: get('dataDir'),
    logLevel: level,
    watchDebounceMs: debounce,
    policyLimits: resolvePolicyLimits(flags, env),
    strict: resolveStrict(flags, env),
    warmWaitMs: millisOf('warm-wait-ms', get('warmWaitMs')),
    clusterDrainMs: millisOf('cluster-drain-ms', get('clusterDrainMs')),
    endpointPushIntervalMs: millisOf('endpoint-push-interval-ms', get('endpointPushIntervalMs')),
    preflightEnvoy: get('preflightEnvoy') || undefined,
    consulAddr: consulAddrOf(get('consulAddr')),
    consulDatacenter: get('consulDatacenter'),
    consulImport: consulImportOf(get('consulImport')),
    ca: caOf(get('caCert'), get('caKey'), get('caBundle')),
    state: stateOf(
      get('state'),
      get('statePrefix'),
      get('stateKeyFile'),
      get('replicaId'),
      get('consulAddr'),
      caOf(get('caCert'), get('caKey'), get('caBundle')),
      () => `${(hostname().split('.')[0] ?? 'replica').replace(/[^A-Za-z0-9._-]/g, '-') || 'replica'}-${get('xdsPort')}`,
      get('stateStaleMax'),
    ),
    requireToken: requireTokenOf(get('requireToken')),
    accessLogSampling: accessLogSamplingOf(get('accessLogSampling')),
    ...jwtFastPathOf(get('jwtFastPath')),
  };
}
