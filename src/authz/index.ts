// The ext_authz service as `signalbox serve` embeds it: bound on the xDS address and its own port,
// fed by the pipeline's applied models, its metrics on the control plane's registry.
//
// It listens only when needed: at once when a port was given (--authz-port), else on the default
// port once an applied model has a JWTPolicy (and from then on until the control plane stops).
// Over TLS with a certificate the mesh CA issues for it (renewed in memory), callers must present a
// certificate that chains to the mesh trust bundle; plain text with --xds-insecure. A port that
// cannot be bound is logged, retried, and makes /readyz answer 503; the control plane keeps
// serving xDS, and routes under a JWTPolicy fail closed (503) until the service is reachable.
import { isIP } from 'node:net';
import type client from 'prom-client';
import type { CertificateAuthority } from '../ca/ca.js';
import { meshServiceTls, serverSpiffeId } from '../ca/server-tls.js';
import { DEFAULT_AUTHZ_PORT } from '../config/settings.js';
import type { Model } from '../model/model.js';
import type { Logger } from '../observability/logger.js';
import type { AuthzEndpoint } from '../protocol/services.js';
import { AuthzServer } from './server.js';

export { AuthzServer } from './server.js';

export interface Readiness {
  ready: boolean;
  reason?: string;
}

export interface EmbeddedAuthzStatus {
  /** The bound port; null while closed (no JWTPolicy yet, or binding failed). */
  port: number | null;
  listening: boolean;
  tls: boolean;
  endpointForProxies: AuthzEndpoint;
  /** Why it is not listening although needed (a failed bind). */
  error?: string;
}

export interface EmbeddedAuthz {
  server: AuthzServer;
  /** The bound port; undefined while closed (no JWTPolicy yet, or binding failed). */
  readonly port: number | undefined;
  /** Where (and how: TLS or not) proxies are told to reach the service. */
  endpoint: AuthzEndpoint;
  /** Call with every applied model (opens the port when the first JWTPolicy appears). */
  update(model: Pick<Model, 'jwt'>): void;
  /** Resolves once the latest attempt to open the port has succeeded or failed. */
  settled(): Promise<void>;
  /** Not ready while the service is needed but its port could not be bound. */
  readiness(): Readiness;
  /** This readiness and another (e.g. Consul's): the first that is not ready wins. */
  readinessWith(other?: () => Readiness): () => Readiness;
  status(): EmbeddedAuthzStatus;
  close(): Promise<void>;
}

export interface EmbeddedAuthzOptions {
  bindAddress: string;
  /** A port given explicitly (--authz-port; 0: any free port): bound at start, JWTPolicy or not. */
  port?: number;
  /** The port taken when the first JWTPolicy appears and none was given (default 18002). */
  defaultPort?: number;
  /** Where proxies reach the service (--authz-address-for-proxies); default: derived from the bind address. */
  addressForProxies?: { address: string; port: number };
  /** TLS from the mesh CA (absent: plain text, --xds-insecure). */
  tls?: { ca: CertificateAuthority; trustDomain: string };
  logger: Logger;
  registry: client.Registry;
  onKeysChanged?: () => void;
  /** How long after a failed bind it tries again, while the service is needed (default 5 s). */
  retryMs?: number;
}

function hostPort(host: string, port: number): string {
  return `${host.includes(':') ? `[${host}]` : host}:${port}`;
}

/** The address proxies use: the given one, else the bind address (loopback for a wildcard) and port. */
export function proxiesEndpoint(bindAddress: string, port: number, given?: { address: string; port: number }): AuthzEndpoint {
  if (given) return { address: given.address, port: given.port };
  const wildcard = bindAddress === '' || bindAddress === '0.0.0.0' || bindAddress === '::' || isIP(bindAddress) === 0;
  return { address: wildcard ? '127.0.0.1' : bindAddress, port };
}

/** Whether a model has any JWTPolicy (only then is the service needed). */
function hasJwtPolicy(model: Pick<Model, 'jwt'>): boolean {
  return (model.jwt?.policies.size ?? 0) > 0;
}

export async function startEmbeddedAuthz(opts: EmbeddedAuthzOptions): Promise<EmbeddedAuthz> {
  const logger = opts.logger.child({ component: 'authz' });
  const server = new AuthzServer({ logger, registry: opts.registry, onKeysChanged: opts.onKeysChanged });
  const wantPort = opts.port ?? opts.defaultPort ?? DEFAULT_AUTHZ_PORT;
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
    try {
      // Over TLS, a certificate that follows a CA rotation (--state consul) and the callers' live trust bundle.
      if (opts.tls && !mesh)
        mesh = await meshServiceTls({ ca: opts.tls.ca, trustDomain: opts.tls.trustDomain, server: 'authz', bindAddress: opts.bindAddress, logger });
      const tls = mesh?.tls;
      port = await server.listen(where(wantPort), tls);
      if (error !== undefined) logger.info({ authz: where(port) }, 'ext_authz service listening after all');
      else
        logger.info(
          { authz: where(port), tls: tls !== undefined },
          tls
            ? 'ext_authz service listening (TLS; callers need a mesh certificate)'
            : 'ext_authz service listening in PLAIN TEXT (--xds-insecure): anyone who reaches the port can call it',
        );
      error = undefined;
    } catch (e) {
      const first = error === undefined;
      error = `the ext_authz service cannot listen on ${where(wantPort)}: ${(e as Error).message}`;
      if (first)
        logger.error(
          { authz: where(wantPort), reason: (e as Error).message },
          'ext_authz service could not listen; routes under a JWTPolicy will fail closed (503) until it can (retrying)',
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
  const endpoint: AuthzEndpoint = opts.tls ? { ...base, tls: { serverId: serverSpiffeId(opts.tls.trustDomain, 'authz') } } : base;
  const readiness = (): Readiness => (needed && port === undefined && error !== undefined ? { ready: false, reason: error } : { ready: true });
  return {
    server,
    get port() {
      return port;
    },
    endpoint,
    update: (model) => {
      server.update(model);
      if (!needed && hasJwtPolicy(model)) {
        needed = true;
        logger.info({ authz: where(wantPort) }, 'a JWTPolicy exists: opening the ext_authz service');
      }
      if (needed && port === undefined) void start();
    },
    settled: () => attempt,
    readiness,
    readinessWith: (other) => () => {
      const mine = readiness();
      return mine.ready && other ? other() : mine;
    },
    status: () => ({
      port: port ?? null,
      listening: port !== undefined,
      tls: opts.tls !== undefined,
      endpointForProxies: endpoint,
      ...(error !== undefined ? { error } : {}),
    }),
    close: async () => {
      closed = true;
      clearTimeout(retry);
      await attempt.catch(() => undefined);
      mesh?.stop();
      await server.close();
    },
  };
}
