// `signalbox serve`: wires the pipeline, the xDS server and the admin API together.
import path from 'node:path';
import { buildAdmin } from '../admin/server.js';
import type { ServeConfig } from '../config/settings.js';
import { Pipeline } from '../controller/pipeline.js';
import { formatPolicyError } from '../errors.js';
import { createLogger, type Logger } from '../observability/logger.js';
import { Metrics } from '../observability/metrics.js';
import { watchPolicies } from '../sources/files/watcher.js';
import { SnapshotCache } from '../xds/cache/snapshot-cache.js';
import { envoyRoot } from '../xds/resources/protos.js';
import { XdsServer } from '../xds/server/server.js';

export interface RunningServer {
  xdsPort: number;
  adminPort: number;
  pipeline: Pipeline;
  xds: XdsServer;
  logger: Logger;
  stop(): Promise<void>;
}

export async function startServer(cfg: ServeConfig, logger = createLogger({ level: cfg.logLevel })): Promise<RunningServer> {
  envoyRoot(); // load Envoy's types once, before the first stream arrives
  const metrics = new Metrics();
  const cache = new SnapshotCache();
  const policyDir = path.resolve(cfg.policies);
  const pipeline = new Pipeline({ policyDir, cache, logger, metrics });
  const xds = new XdsServer({ cache, metrics, logger });
  const first = await pipeline.reload();
  if (!first.applied) {
    logger.error({ errors: first.errors.map(formatPolicyError) }, 'the policy directory is invalid; serving no configuration until it is fixed');
  }
  const watcher = watchPolicies(policyDir, cfg.watchDebounceMs, () => void pipeline.reload());
  const xdsPort = await xds.listen(`${cfg.xdsAddress.includes(':') ? `[${cfg.xdsAddress}]` : cfg.xdsAddress}:${cfg.xdsPort}`);
  const admin = buildAdmin({ pipeline, cache, registry: xds.registry, metrics, logger });
  await admin.listen({ host: cfg.adminAddress, port: cfg.adminPort });
  const adminPort = (admin.server.address() as { port: number }).port;
  logger.info({ xds: `${cfg.xdsAddress}:${xdsPort}`, admin: `http://${cfg.adminAddress}:${adminPort}`, policies: policyDir }, 'signalbox serving');
  return {
    xdsPort,
    adminPort,
    pipeline,
    xds,
    logger,
    stop: async () => {
      await watcher.close();
      await admin.close();
      await xds.close();
    },
  };
}
