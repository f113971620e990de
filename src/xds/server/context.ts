import type { Logger } from '../../observability/logger.js';
import type { Metrics } from '../../observability/metrics.js';
import type { SnapshotCache } from '../cache/snapshot-cache.js';
import type { ProxyRegistry } from './proxy-status.js';

/** What a stream handler may see: the cache, the registry of proxies, metrics and the logger. */
export interface ServerContext {
  cache: SnapshotCache;
  registry: ProxyRegistry;
  metrics: Metrics;
  logger: Logger;
}
