// `signalbox serve --consul-import all` (or `tag=prod[,edge]`): every Consul service (or every one
// carrying all the given tags) becomes a Service of the model without a policy file, discovered
// from Consul. One blocking query on /v1/catalog/services (connect proxies filtered out by Consul)
// follows the list; a change of the list reloads the pipeline, which calls back `docsFor` through
// its `extraDocs` hook. A policy file's own Service of the same name always wins.
//
// Consul names are not always DNS labels: `Web_API` is imported as `web-api`; a name that cannot
// be turned into one, or that collides with another after the conversion, is skipped and logged.
import { Service } from '../../api/v1alpha1/service.js';
import { DNS_LABEL } from '../../api/v1alpha1/common.js';
import type { LoadedDoc } from '../../api/documents.js';
import { ConsulError } from './client.js';
import type { ConsulSource } from './source.js';
import { BlockingWatch } from './watch.js';

export type ImportMode = { kind: 'all' } | { kind: 'tags'; tags: string[] };

export function parseImportMode(v: string): ImportMode | undefined {
  if (v === '') return undefined;
  if (v === 'all') return { kind: 'all' };
  const m = /^tag=(.+)$/.exec(v);
  if (!m) throw new Error(`--consul-import must be "all" or "tag=TAG[,TAG...]", got "${v}"`);
  return { kind: 'tags', tags: m[1]!.split(',').filter(Boolean).sort() };
}

/** A Consul service name as a policy name (DNS label), or undefined when it cannot be one. */
export function policyNameOf(consulName: string): string | undefined {
  const n = consulName
    .toLowerCase()
    .replace(/[^a-z0-9-]+/g, '-')
    .replace(/^-+|-+$/g, '')
    .replace(/-{2,}/g, '-');
  return n.length > 0 && n.length <= 63 && DNS_LABEL.test(n) ? n : undefined;
}

/** The services to import from a /v1/catalog/services answer ({name: tags}). */
export function selectImported(body: unknown, mode: ImportMode): { imported: Map<string, string>; skipped: string[] } {
  if (typeof body !== 'object' || body === null || Array.isArray(body))
    throw new ConsulError('malformed', 'catalog answer: expected a JSON object of service names');
  const imported = new Map<string, string>(); // policy name -> consul name
  const skipped: string[] = [];
  for (const [name, tags] of Object.entries(body as Record<string, unknown>).sort(([a], [b]) => (a < b ? -1 : 1))) {
    if (name === 'consul') continue;
    const list = Array.isArray(tags) ? tags.filter((t): t is string => typeof t === 'string') : [];
    if (mode.kind === 'tags' && !mode.tags.every((t) => list.includes(t))) continue;
    const policy = policyNameOf(name);
    if (!policy) {
      skipped.push(`${name}: not usable as a Service name`);
      continue;
    }
    const other = imported.get(policy);
    if (other !== undefined) {
      skipped.push(`${name}: becomes "${policy}" like "${other}"`);
      continue;
    }
    imported.set(policy, name);
  }
  return { imported, skipped };
}

export class ConsulImporter {
  private imported = new Map<string, string>();
  private skipped: string[] = [];
  private watch: BlockingWatch<ReturnType<typeof selectImported>>;
  synced = false;
  private firstAnswer?: () => void;

  constructor(
    readonly source: ConsulSource,
    readonly mode: ImportMode,
    private readonly onChange: () => void,
  ) {
    const o = source.opts;
    this.watch = new BlockingWatch({
      client: source.client,
      path: '/v1/catalog/services',
      // Consul's filter drops connect proxies (Kind connect-proxy), gateways and the like.
      query: { dc: o.connection.datacenter, filter: 'ServiceKind == ""' },
      waitMs: o.waitMs ?? 60_000,
      minIntervalMs: Math.max(o.minIntervalMs ?? 100, 250),
      backoff: o.backoff ?? { baseMs: 250, maxMs: 10_000 },
      random: o.random,
      parse: (body) => selectImported(body, mode),
      onData: (d) => {
        const before = JSON.stringify([...this.imported]);
        this.imported = d.imported;
        for (const s of d.skipped) if (!this.skipped.includes(s)) source.logger.warn({ import: true }, `consul: service not imported: ${s}`);
        this.skipped = d.skipped;
        const first = !this.synced;
        this.synced = true;
        this.firstAnswer?.();
        if (first || JSON.stringify([...this.imported]) !== before) {
          source.logger.info({ services: [...this.imported.keys()] }, 'consul: imported service list changed; reloading');
          this.onChange();
        }
      },
      onError: (e, failures, retryInMs) => {
        source.metrics.errors.inc({ endpoint: 'catalog', reason: e.reason });
        if (failures === 1 || failures % 10 === 0)
          source.logger.warn({ reason: e.reason, failures, retryInMs }, `consul: service list query failed, keeping the imported services: ${e.message}`);
      },
    });
    source.extraStatus.set('import', () => this.status());
    source.beforeFirstLoad.push(new Promise<void>((r) => (this.firstAnswer = r)));
    source.readinessChecks.push(() => this.synced || !this.watch.running);
  }

  start(): this {
    this.watch.start();
    return this;
  }

  stop(): Promise<void> {
    return this.watch.stop();
  }

  /** The pipeline's extraDocs hook: the files' documents plus a Service per imported name they do not declare. */
  docsFor(fileDocs: LoadedDoc[]): LoadedDoc[] {
    const declared = new Set(fileDocs.filter((d) => d.kind === 'Service').map((d) => d.name));
    const extra: LoadedDoc[] = [];
    for (const [policy, consulName] of this.imported) {
      if (declared.has(policy)) continue;
      const value = Service.parse({
        apiVersion: 'signalbox.dev/v1alpha1',
        kind: 'Service',
        metadata: { name: policy },
        // port: the application port is not known from the catalog and not used for discovered
        // services; 80 stands in.
        spec: { port: 80, consul: { service: consulName, ...(this.mode.kind === 'tags' ? { tags: this.mode.tags } : {}) } },
      });
      extra.push({ kind: 'Service', name: policy, source: { file: `consul-import:${consulName}`, doc: 1 }, value, lineOf: () => undefined } as LoadedDoc);
    }
    return [...fileDocs, ...extra];
  }

  status() {
    return {
      mode: this.mode.kind === 'all' ? 'all' : `tag=${this.mode.tags.join(',')}`,
      synced: this.synced,
      stale: this.watch.failures > 0,
      services: Object.fromEntries(this.imported),
      skipped: this.skipped,
      lastError: this.watch.lastError ? { ...this.watch.lastError, at: new Date(this.watch.lastError.at).toISOString() } : undefined,
    };
  }
}
