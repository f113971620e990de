// `signalbox ratelimit`: the rate-limit service (envoy.service.ratelimit.v3.RateLimitService) on its
// own, for scaling it apart from the control plane, as `signalbox authz` does for ext_authz. It loads
// and watches the same policy directory and compiles the same model as `signalbox serve` (a
// directory that fails validation never replaces the last good one), and counts in the same Redis.
// Point the proxies at it with `signalbox serve --ratelimit-address-for-proxies IP:PORT`.
//
// Over TLS by default, as the embedded service: it opens the control plane's mesh CA (--data-dir,
// --ca-cert/--ca-key, or with --state consul the replicas' shared state), issues its own certificate (SPIFFE ID spiffe://<trust domain>/signalbox/ratelimit,
// what proxies verify) and requires callers to present a certificate that chains to the mesh trust
// bundle. --insecure serves plain text (only with `serve --xds-insecure`, whose proxies expect it).
//
// Every flag is checked before anything listens or connects: a bad Redis URL, an unreadable
// password file or a missing CA is a usage error, never an outage. The Redis password never
// leaves this process: logs, /api/ratelimit and errors show the URL with `***` in its place.
import path from 'node:path';
import { parseArgs } from 'node:util';
import client from 'prom-client';
import { ServerCertificate } from '../ca/server-tls.js';
import { RATELIMIT_SETTINGS, redisOf } from '../config/settings.js';

export { RATELIMIT_SETTINGS };
import { ErrorCode, SignalboxError } from '../errors.js';
import { BUILTIN_DEFAULTS } from '../model/model.js';
import { createLogger, type Logger } from '../observability/logger.js';
import { RateLimitService } from '../ratelimit/service.js';
import { startStatusServer, watchModel } from './standalone.js';
import { envoyRoot } from '../xds/resources/protos.js';
import { hostPort, openMeshCa, portOf, refuseCaWhenInsecure } from './authz.js';

interface RateLimitSetting {
  flag: string;
  env: string;
  default: string;
  help: string;
  boolean?: boolean;
}

export interface StandaloneRateLimit {
  ratelimitPort: number;
  metricsPort?: number;
  /** Whether the service speaks TLS (false with --insecure). */
  tls: boolean;
  service: RateLimitService;
  reload(): Promise<boolean>;
  stop(): Promise<void>;
}

export async function startStandaloneRateLimit(
  values: Record<string, string | boolean | undefined>,
  env: NodeJS.ProcessEnv = process.env,
  logger?: Logger,
): Promise<StandaloneRateLimit> {
  const get = (k: keyof typeof RATELIMIT_SETTINGS): string => {
    const s: RateLimitSetting = RATELIMIT_SETTINGS[k];
    const f = values[s.flag];
    if (typeof f === 'string') return f;
    if (typeof f === 'boolean' && s.boolean) return String(f);
    return env[s.env] ?? s.default;
  };
  const log = logger ?? createLogger({ level: get('logLevel'), name: 'signalbox-ratelimit' });
  const dir = path.resolve(get('policies'));
  const debounce = Number(get('watchDebounceMs'));
  if (!Number.isFinite(debounce) || debounce < 0) throw new SignalboxError(ErrorCode.BAD_FLAG, '--watch-debounce-ms must be a number of milliseconds');
  const metricsPortText = get('metricsPort');
  const metricsPort = metricsPortText === 'off' ? undefined : portOf('metrics-port', metricsPortText);
  const ratelimitPort = portOf('ratelimit-port', get('ratelimitPort'));
  const insecureText = get('insecure');
  if (insecureText !== 'true' && insecureText !== 'false')
    throw new SignalboxError(ErrorCode.BAD_FLAG, `SIGNALBOX_RATELIMIT_INSECURE must be "true" or "false", got "${insecureText}"`);
  const insecure = insecureText === 'true';
  if (insecure) refuseCaWhenInsecure('signalbox ratelimit', get);
  // Checked before anything connects; the messages show the URL redacted.
  const redis = redisOf(get('redisUrl'), get('redisPasswordFile'), get('redisCa'), env);
  const ca = insecure ? undefined : await openMeshCa(get, env, log);

  envoyRoot();
  const registry = new client.Registry();
  client.collectDefaultMetrics({ register: registry, prefix: 'signalbox_ratelimit_process_' });
  const service = new RateLimitService({ logger: log, redis, registry });
  const watched = await watchModel(dir, debounce, log, (model) => service.update(model));
  let certificate: ServerCertificate | undefined;
  let bound: number;
  try {
    if (ca)
      certificate = await ServerCertificate.start({
        ca,
        trustDomain: BUILTIN_DEFAULTS.trustDomain,
        server: 'ratelimit',
        bindAddress: get('ratelimitAddress'),
        sans: [],
        logger: log,
      });
    bound = await service.listen(
      hostPort(get('ratelimitAddress'), ratelimitPort),
      certificate && ca ? { certificate, clientCaPem: ca.trustBundlePem } : undefined,
    );
  } catch (e) {
    certificate?.stop();
    await watched.close();
    await service.close();
    throw e;
  }
  // Running alone, the service exists to count: connect now, policies or not (ioredis keeps retrying).
  service.connect();
  if (insecure) {
    const warning =
      'signalbox ratelimit --insecure: the rate-limit service speaks plain text and asks callers for no certificate; anyone who reaches its port can call it (and spend the counters)';
    process.stderr.write(`warning: ${warning}\n`);
    log.warn(warning);
  }

  const status = () => ({ port: bound, listening: true, tls: !insecure, redis: service.redisStatus(), policies: service.policies(), calls: service.calls });
  let metrics: { port: number; close(): Promise<void> } | undefined;
  if (metricsPort !== undefined) {
    try {
      metrics = await startStatusServer({
        registry,
        address: get('metricsAddress'),
        port: metricsPort,
        ready: () => watched.applied,
        statusPath: '/api/ratelimit',
        status: () => status(),
      });
    } catch (e) {
      // A half-started service must not linger: its gRPC port and Redis connection go too.
      certificate?.stop();
      await watched.close();
      await service.close();
      throw e;
    }
  }
  const boundMetrics = metrics?.port;
  log.info(
    {
      ratelimit: hostPort(get('ratelimitAddress'), bound),
      tls: !insecure,
      redis: service.store.url,
      metrics: boundMetrics === undefined ? 'off' : `http://${hostPort(get('metricsAddress'), boundMetrics)}`,
      policies: dir,
    },
    'signalbox ratelimit serving',
  );
  return {
    ratelimitPort: bound,
    metricsPort: boundMetrics,
    tls: !insecure,
    service,
    reload: watched.reload,
    stop: async () => {
      await watched.close();
      await service.close();
      certificate?.stop();
      await metrics?.close();
    },
  };
}

export async function ratelimitCommand(args: string[]): Promise<number> {
  const options = Object.fromEntries(
    Object.values(RATELIMIT_SETTINGS).map((s: RateLimitSetting) => [s.flag, { type: s.boolean ? ('boolean' as const) : ('string' as const) }]),
  );
  const { values } = parseArgs({ args, options, allowPositionals: false });
  const running = await startStandaloneRateLimit(values as Record<string, string | boolean | undefined>);
  await new Promise<void>((resolve) => {
    const stop = () => void running.stop().then(resolve);
    process.once('SIGINT', stop);
    process.once('SIGTERM', stop);
  });
  return 0;
}
