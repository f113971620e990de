// The rate-limit service as `signalbox serve` embeds it: bound on the xDS address and its own port,
// fed by the pipeline's applied models, its metrics on the control plane's registry.
//
// It listens (and connects to Redis) only when needed: at once when a port was given
// (--ratelimit-port), else on the default port once an applied model has a global limit. Over TLS
// with a certificate the mesh CA issues for it (SPIFFE ID spiffe://<trust domain>/signalbox/ratelimit,
// which proxies verify); callers must present a certificate that chains to the mesh trust bundle;
// plain text with --xds-insecure. A port that cannot be bound is logged, retried, and makes /readyz
// answer 503; meanwhile Envoy answers by each policy's failureMode (its filter cannot reach us).
import type client from 'prom-client';
import type { CertificateAuthority } from '../ca/ca.js';
import { meshServiceTls, serverSpiffeId } from '../ca/server-tls.js';
import type { Model } from '../model/model.js';
import type { Logger } from '../observability/logger.js';
import { proxiesEndpoint, type Readiness } from '../authz/index.js';
import { DEFAULT_RATELIMIT_PORT, type RateLimitEndpoint } from '../protocol/services.js';
import type { RedisSettings, RedisStatus } from './redis-store.js';
import { RateLimitService } from './service.js';

export { RateLimitService } from './service.js';

export interface EmbeddedRateLimitStatus {
  port: number | null;
  listening: boolean;
  tls: boolean;
  endpointForProxies: RateLimitEndpoint;
  redis: RedisStatus;
  policies: ReturnType<RateLimitService['policies']>;
  calls: number;
  error?: string;
}

export interface EmbeddedRateLimit {
  service: RateLimitService;
  readonly port: number | undefined;
  endpoint: RateLimitEndpoint;
  update(model: Pick<Model, 'policies'>): void;
  settled(): Promise<void>;
  readiness(): Readiness;
  status(): EmbeddedRateLimitStatus;
  /** Warnings for /api/status and the dashboard's banner (Redis down while limits exist). */
  warnings(): string[];
  close(): Promise<void>;
}

export interface EmbeddedRateLimitOptions {
  bindAddress: string;
  port?: number;
  addressForProxies?: { address: string; port: number };
  tls?: { ca: CertificateAuthority; trustDomain: string };
  redis: RedisSettings;
  logger: Logger;
  registry: client.Registry;
  retryMs?: number;
}

function hostPort(host: string, port: number): string {
  return `${host.includes(':') ? `[${host}]` : host}:${port}`;
}

export async function startEmbeddedRateLimit(opts: EmbeddedRateLimitOptions): Promise<EmbeddedRateLimit> {
  const logger = opts.logger.child({ component: 'ratelimit' });
  const service = new RateLimitService({ logger, redis: opts.redis, registry: opts.registry });
  const wantPort = opts.port ?? DEFAULT_RATELIMIT_PORT;
  const where = (port: number) => hostPort(opts.bindAddress, port);
  const retryMs = opts.retryMs ?? 5_000;
  let needed = opts.port !== undefined;
  let port: number | undefined;
  let error: string | undefined;
  let mesh: Awaited<ReturnType<typeof meshServiceTls>> | undefined;
  let attempt: Promise<void> = Promise.resolve();
  let opening = false;
  let retry: NodeJS.Timeout | undefined;
  let closed = false;

  const open = async (): Promise<void> => {
    if (closed || port !== undefined || !needed) return;
    service.connect();
    try {
      // Over TLS, a certificate that follows a CA rotation (--state consul) and the callers' live trust bundle.
      if (opts.tls && !mesh)
        mesh = await meshServiceTls({ ca: opts.tls.ca, trustDomain: opts.tls.trustDomain, server: 'ratelimit', bindAddress: opts.bindAddress, logger });
      const tls = mesh?.tls;
      port = await service.listen(where(wantPort), tls);
      logger.info(
        { ratelimit: where(port), tls: tls !== undefined, redis: service.store.url },
        tls ? 'rate-limit service listening (TLS; callers need a mesh certificate)' : 'rate-limit service listening in PLAIN TEXT (--xds-insecure)',
      );
      error = undefined;
    } catch (e) {
      const first = error === undefined;
      error = `the rate-limit service cannot listen on ${where(wantPort)}: ${(e as Error).message}`;
      if (first)
        logger.error(
          { ratelimit: where(wantPort), reason: (e as Error).message },
          'rate-limit service could not listen; proxies answer global limits by their failureMode until it can (retrying)',
        );
      if (!closed && retryMs > 0) {
        clearTimeout(retry);
        retry = setTimeout(() => void start(), retryMs);
        retry.unref();
      }
    }
  };
  const start = (): Promise<void> => {
    if (opening) return attempt;
    opening = true;
    attempt = open().finally(() => {
      opening = false;
    });
    return attempt;
  };

  if (needed) await start();
  const base = proxiesEndpoint(opts.bindAddress, port ?? wantPort, opts.addressForProxies);
  const endpoint: RateLimitEndpoint = opts.tls ? { ...base, tls: { serverId: serverSpiffeId(opts.tls.trustDomain, 'ratelimit') } } : base;
  const readiness = (): Readiness => (needed && port === undefined && error !== undefined ? { ready: false, reason: error } : { ready: true });
  return {
    service,
    get port() {
      return port;
    },
    endpoint,
    update: (model) => {
      service.update(model);
      if (!needed && (model.policies?.globalRateLimits.size ?? 0) > 0) {
        needed = true;
        logger.info({ ratelimit: where(wantPort) }, 'a global rate limit exists: opening the rate-limit service');
      }
      if (needed && port === undefined) void start();
    },
    settled: () => attempt,
    readiness,
    status: () => ({
      port: port ?? null,
      listening: port !== undefined,
      tls: opts.tls !== undefined,
      endpointForProxies: endpoint,
      redis: service.redisStatus(),
      policies: service.policies(),
      calls: service.calls,
      ...(error !== undefined ? { error } : {}),
    }),
    warnings: () => {
      const policies = service.policies();
      if (policies.length === 0 || service.store.isUp) return [];
      const allow = policies.filter((p) => p.failureMode === 'allow').map((p) => p.policy);
      const deny = policies.filter((p) => p.failureMode === 'deny').map((p) => p.policy);
      const parts = [
        allow.length ? `requests under ${allow.join(', ')} (failureMode allow) pass uncounted` : '',
        deny.length ? `requests under ${deny.join(', ')} (failureMode deny) get 503` : '',
      ].filter(Boolean);
      return [`Redis (${service.store.url}) cannot be reached: global rate limits are not counted; ${parts.join('; ')}`];
    },
    close: async () => {
      closed = true;
      clearTimeout(retry);
      await attempt.catch(() => undefined);
      mesh?.stop();
      await service.close();
    },
  };
}
