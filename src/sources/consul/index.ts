// Consul discovery: wiring for `signalbox serve`.
import type { ServeConfig } from '../../config/settings.js';
import type { LoadedDoc } from '../../api/documents.js';
import type { Model } from '../../model/model.js';
import type { Logger } from '../../observability/logger.js';
import type { Metrics } from '../../observability/metrics.js';
import { consulConnectionFromEnv } from './config.js';
import { ConsulSource, type ConsulSourceOptions } from './source.js';
import type { EndpointStore } from '../endpoints.js';
import { ConsulImporter, parseImportMode } from './import.js';
import { ErrorCode, SignalboxError } from '../../errors.js';

export { ConsulSource } from './source.js';
export { ConsulClient, ConsulError } from './client.js';
export { consulConnectionFromEnv, parseConsulAddress } from './config.js';

/**
 * What Consul discovery needs of the pipeline that runs it (the controller's Pipeline is one): a
 * source is handed this by whoever wires it, and knows nothing else of the controller.
 */
export interface DiscoveryHost {
  readonly endpoints: EndpointStore;
  readonly model?: Model;
  /** Documents added to each load's (Consul's imported Services). */
  extraDocs?: (fileDocs: LoadedDoc[]) => LoadedDoc[];
  reload(): unknown;
  rebuildEndpoints(services: ReadonlySet<string>): unknown;
  on(event: 'applied', listener: (model: Model) => void): unknown;
}

/**
 * Starts the Consul source when `--consul-addr` (or CONSUL_HTTP_ADDR) is set: it follows every
 * applied model and feeds the pipeline's EndpointStore. Returns undefined without an address.
 */
export function attachConsul(
  cfg: Pick<ServeConfig, 'consulAddr' | 'consulDatacenter' | 'consulImport'>,
  pipeline: DiscoveryHost,
  metrics: Metrics,
  logger: Logger,
  overrides: Partial<ConsulSourceOptions> = {},
): ConsulSource | undefined {
  if (!cfg.consulAddr) return undefined;
  const connection = consulConnectionFromEnv(cfg.consulAddr, cfg.consulDatacenter);
  const source = new ConsulSource({ connection, store: pipeline.endpoints, logger, registry: metrics.registry, ...tuningFromEnv(), ...overrides });
  if (cfg.consulImport) {
    const importer = new ConsulImporter(source, parseImportMode(cfg.consulImport)!, () => void pipeline.reload());
    pipeline.extraDocs = (docs) => importer.docsFor(docs);
    source.companions.push(importer);
    importer.start();
  }
  pipeline.on('applied', (model) => source.sync(model));
  if (pipeline.model) source.sync(pipeline.model);
  logger.info(
    {
      consul: connection.baseUrl,
      datacenter: connection.datacenter,
      tls: !!connection.tls,
      aclToken: connection.token ? 'set' : 'none',
      import: cfg.consulImport || undefined,
    },
    'consul discovery enabled',
  );
  return source;
}

/**
 * Tuning knobs, environment only (the defaults suit production; tests and benchmarks shorten them):
 * SIGNALBOX_CONSUL_WAIT_MS, SIGNALBOX_CONSUL_MIN_INTERVAL_MS, SIGNALBOX_CONSUL_BACKOFF_MAX_MS,
 * SIGNALBOX_CONSUL_RESYNC_GRACE_MS, SIGNALBOX_CONSUL_SIDECAR_SETTLE_MS, SIGNALBOX_CONSUL_WARNING_AS.
 */
export function tuningFromEnv(env: NodeJS.ProcessEnv = process.env): Partial<ConsulSourceOptions> {
  const ms = (name: string, min: number): number | undefined => {
    const v = env[name];
    if (v === undefined || v === '') return undefined;
    const n = Number(v);
    if (!/^\d+$/.test(v) || n < min) throw new SignalboxError(ErrorCode.BAD_FLAG, `${name} must be a whole number of milliseconds >= ${min}, got "${v}"`);
    return n;
  };
  const out: Partial<ConsulSourceOptions> = {};
  const wait = ms('SIGNALBOX_CONSUL_WAIT_MS', 1000);
  if (wait !== undefined) out.waitMs = wait;
  const min = ms('SIGNALBOX_CONSUL_MIN_INTERVAL_MS', 0);
  if (min !== undefined) out.minIntervalMs = min;
  const backoffMax = ms('SIGNALBOX_CONSUL_BACKOFF_MAX_MS', 10);
  if (backoffMax !== undefined) out.backoff = { baseMs: Math.min(250, backoffMax), maxMs: backoffMax };
  const grace = ms('SIGNALBOX_CONSUL_RESYNC_GRACE_MS', 0);
  if (grace !== undefined) out.resyncGraceMs = grace;
  const settle = ms('SIGNALBOX_CONSUL_SIDECAR_SETTLE_MS', 0);
  if (settle !== undefined) out.sidecarSettleMs = settle;
  const w = env.SIGNALBOX_CONSUL_WARNING_AS;
  if (w !== undefined && w !== '') {
    const up = w.toUpperCase();
    if (up !== 'DEGRADED' && up !== 'HEALTHY')
      throw new SignalboxError(ErrorCode.BAD_FLAG, `SIGNALBOX_CONSUL_WARNING_AS must be DEGRADED or HEALTHY, got "${w}"`);
    out.warningAs = up;
  }
  return out;
}

/**
 * For `signalbox serve`, between the first policy load and opening the xDS port: waits for the
 * first full Consul sync (when a valid model references Consul), then compiles the endpoints at
 * once instead of after the pipeline's debounce, so the first proxy to connect gets them.
 */
export async function untilConsulSynced(source: ConsulSource | undefined, pipeline: DiscoveryHost): Promise<void> {
  if (!source || !pipeline.model) return;
  await source.firstSync();
  pipeline.rebuildEndpoints(source.fedServices());
}
