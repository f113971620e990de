// The ext_authz service as `signalbox serve` embeds it: bound on the xDS address and its own port,
// fed by the pipeline's applied models, its metrics on the control plane's registry. A port that
// cannot be bound is logged and the control plane keeps serving xDS; routes under a JWTPolicy then
// fail closed (503) until the service is reachable.
import { isIP } from 'node:net';
import type client from 'prom-client';
import type { Model } from '../model/model.js';
import type { Logger } from '../observability/logger.js';
import type { AuthzEndpoint } from '../translate/jwt.js';
import { AuthzServer } from './server.js';

export { AuthzServer } from './server.js';

export interface EmbeddedAuthz {
  server: AuthzServer;
  /** The bound port (undefined when binding failed). */
  port?: number;
  /** Where proxies are told to reach the service. */
  endpoint: AuthzEndpoint;
  /** Call with every applied model. */
  update(model: Model): void;
  close(): Promise<void>;
}

function hostPort(host: string, port: number): string {
  return `${host.includes(':') ? `[${host}]` : host}:${port}`;
}

/** The address proxies use: the given one, else the bind address (loopback for a wildcard) and port. */
export function proxiesEndpoint(bindAddress: string, port: number, given?: AuthzEndpoint): AuthzEndpoint {
  if (given) return given;
  const wildcard = bindAddress === '' || bindAddress === '0.0.0.0' || bindAddress === '::' || isIP(bindAddress) === 0;
  return { address: wildcard ? '127.0.0.1' : bindAddress, port };
}

export async function startEmbeddedAuthz(opts: { bindAddress: string; port: number; addressForProxies?: AuthzEndpoint; logger: Logger; registry: client.Registry; onKeysChanged?: () => void }): Promise<EmbeddedAuthz> {
  const logger = opts.logger.child({ component: 'authz' });
  const server = new AuthzServer({ logger, registry: opts.registry, onKeysChanged: opts.onKeysChanged });
  let port: number | undefined;
  try {
    port = await server.listen(hostPort(opts.bindAddress, opts.port));
    logger.info({ authz: hostPort(opts.bindAddress, port) }, 'ext_authz service listening');
  } catch (e) {
    logger.error({ authz: hostPort(opts.bindAddress, opts.port), reason: (e as Error).message }, 'ext_authz service could not listen; routes under a JWTPolicy will fail closed (503) until it can');
  }
  const endpoint = proxiesEndpoint(opts.bindAddress, port ?? opts.port, opts.addressForProxies);
  return {
    server,
    port,
    endpoint,
    update: (model) => server.update(model),
    close: () => server.close(),
  };
}
