import type { Logger } from '../../observability/logger.js';
import type { Metrics } from '../../observability/metrics.js';
import type { SnapshotCache } from '../cache/snapshot-cache.js';
import type { ProxyRegistry } from './proxy-status.js';
import type { TokenVerifier } from '../../ca/tokens.js';
import type { IdentityManager } from '../../ca/identities.js';
import type { SharedResponses } from './responses.js';

/** What a stream handler may see: the cache, the registry of proxies, metrics and the logger. */
export interface ServerContext {
  cache: SnapshotCache;
  registry: ProxyRegistry;
  metrics: Metrics;
  logger: Logger;
  /** Verifies proxy tokens; without it no proxy is authenticated and none receives secrets. */
  tokens?: TokenVerifier;
  /** What a proxy without a valid token for its identity gets: config without secrets, or nothing. */
  requireToken?: 'secrets' | 'all';
  /** Issues each authenticated proxy instance its own certificate (the SDS secret signalbox/identity). */
  identities?: IdentityManager;
  /** The SPIFFE ID a group's proxies hold, if any. */
  identityOf?: (group: string) => string | undefined;
  /** Whether the model declares the gateway or service a node claims (undefined: no model yet). */
  declares?: (role: 'gateway' | 'sidecar', name: string) => boolean | undefined;
  /**
   * Longest a listener or route change waits for the clusters it names to be warm on the proxy
   * (ACKed with their endpoints) before it is sent anyway; 0 sends at once (no waiting).
   */
  warmWaitMs?: number;
  /** How long a cluster the proxy's routes no longer name stays, after those routes are ACKed, so requests already routed to it finish; 0: removed at once. */
  clusterDrainMs?: number;
  /** Responses shared by the streams that get the same content (one encoding for all of them). */
  responses?: SharedResponses;
}
