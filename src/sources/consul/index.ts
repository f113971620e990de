// Consul discovery: wiring for `signalbox serve`.
import type { ServeConfig } from '../../config/settings.js';
import type { Pipeline } from '../../controller/pipeline.js';
import type { Logger } from '../../observability/logger.js';
import type { Metrics } from '../../observability/metrics.js';
import { consulConnectionFromEnv } from './config.js';
import { ConsulSource, type ConsulSourceOptions } from './source.js';

export { ConsulSource } from './source.js';
export { ConsulClient, ConsulError } from './client.js';
export { consulConnectionFromEnv, parseConsulAddress } from './config.js';

/**
 * Starts the Consul source when `--consul-addr` (or CONSUL_HTTP_ADDR) is set: it follows every
 * applied model and feeds the pipeline's EndpointStore. Returns undefined without an address.
 */
export function attachConsul(
  cfg: Pick<ServeConfig, 'consulAddr' | 'consulDatacenter'>,
  pipeline: Pipeline,
  metrics: Metrics,
  logger: Logger,
  overrides: Partial<ConsulSourceOptions> = {},
): ConsulSource | undefined {
  if (!cfg.consulAddr) return undefined;
  const connection = consulConnectionFromEnv(cfg.consulAddr, cfg.consulDatacenter);
  const source = new ConsulSource({ connection, store: pipeline.endpoints, logger, registry: metrics.registry, ...overrides });
  pipeline.on('applied', (model) => source.sync(model));
  if (pipeline.model) source.sync(pipeline.model);
  logger.info({ consul: connection.baseUrl, datacenter: connection.datacenter, tls: !!connection.tls, token: connection.token ? 'set' : 'none' }, 'consul discovery enabled');
  return source;
}
