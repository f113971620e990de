// The Consul discovery source. For every Consul service that a policy Service references
// (`spec.consul`), ONE pair of blocking queries runs — /v1/health/service/<name> for the instances
// and their checks, /v1/health/connect/<name> for their connect-proxy sidecars — however many
// policy Services or proxies use it. Each answer is mapped to instances and handed to the
// EndpointStore under the policy Service's name; the store says what changed and the pipeline
// pushes EDS-only updates to the proxies that use it.
//
// Outages: on any error the last known instances stay in the store (nothing is ever wiped because
// Consul blinked), the watch is marked stale, and it retries with backoff. After Consul comes back
// with a lower index (a fresh agent), instances missing from the new answer are kept for
// `resyncGraceMs` so that a Consul still being re-populated does not drop endpoints that exist.
//
// Replacements: a new instance is held back briefly (sidecarSettleMs, waiting for its sidecar's
// registration); an instance that leaves meanwhile keeps serving until the new one goes out, so
// swapping one instance for another never publishes an empty endpoint set.
import client from 'prom-client';
import type { Instance } from '../../ir/types.js';
import type { Model } from '../../model/model.js';
import type { Logger } from '../../observability/logger.js';
import type { EndpointStore } from '../endpoints.js';
import { ConsulClient, type ConsulError } from './client.js';
import type { ConsulConnection } from './config.js';
import { mapConnectEntries, mapHealthEntries, selectInstances, type ConsulInstance, type SidecarInfo, type Skipped, type WarningAs } from './mapping.js';
import { BlockingWatch, type Backoff, type WatchInfo } from './watch.js';
import { withSpanSync } from '../../observability/tracing.js';

export interface ConsulSourceOptions {
  connection: ConsulConnection;
  store: EndpointStore;
  logger: Logger;
  /** Prometheus registry for the signalbox_consul_* series (absent: not exported). */
  registry?: client.Registry;
  /** Longest hold of a blocking query. Default 60 s. */
  waitMs?: number;
  /** Minimum time between two queries of one watch. Default 100 ms. */
  minIntervalMs?: number;
  /** Error backoff. Default 250 ms doubling to 10 s, with jitter. */
  backoff?: Backoff;
  /** Consul `warning` maps to DEGRADED (default: used only when healthy instances are too few) or HEALTHY. */
  warningAs?: WarningAs;
  /** How long a new instance without a sidecar is held back in case its sidecar registration follows (instances that leave meanwhile keep serving until it is published). Default 250 ms. */
  sidecarSettleMs?: number;
  /** After an index reset, how long instances missing from Consul's answers are kept. Default 30 s. */
  resyncGraceMs?: number;
  random?: () => number;
  /** Request deadlines: non-blocking queries, and the margin on top of wait + wait/16 for blocking ones. */
  timeouts?: { nonBlockingMs?: number; marginMs?: number };
}

export class ConsulMetrics {
  readonly requests: client.Counter<'endpoint'>;
  readonly errors: client.Counter<'endpoint' | 'reason'>;
  readonly skipped: client.Counter<'reason'>;
  readonly resets: client.Counter;
  readonly stale: client.Gauge;
  readonly staleWatches: client.Gauge;
  readonly watches: client.Gauge;
  readonly synced: client.Gauge;
  readonly lastSuccess: client.Gauge;
  readonly updates: client.Counter;

  constructor(registry?: client.Registry) {
    const registers = registry ? [registry] : [];
    this.requests = new client.Counter({
      name: 'signalbox_consul_requests_total',
      help: 'HTTP requests made to Consul, by endpoint (health, connect, catalog).',
      labelNames: ['endpoint'],
      registers,
    });
    this.errors = new client.Counter({
      name: 'signalbox_consul_errors_total',
      help: 'Failed Consul queries, by endpoint and reason (network, timeout, forbidden, server, malformed...).',
      labelNames: ['endpoint', 'reason'],
      registers,
    });
    this.skipped = new client.Counter({
      name: 'signalbox_consul_skipped_instances_total',
      help: 'Consul registrations skipped as unusable, by reason (invalid_address, invalid_port, duplicate_id...).',
      labelNames: ['reason'],
      registers,
    });
    this.resets = new client.Counter({
      name: 'signalbox_consul_index_resets_total',
      help: 'Blocking-query index resets (the index Consul returned went backwards).',
      registers,
    });
    this.stale = new client.Gauge({
      name: 'signalbox_consul_stale',
      help: '1 while any Consul watch is serving its last known answer because its latest query failed.',
      registers,
    });
    this.staleWatches = new client.Gauge({ name: 'signalbox_consul_stale_watches', help: 'Consul service watches whose latest query failed.', registers });
    this.watches = new client.Gauge({
      name: 'signalbox_consul_watches',
      help: 'Consul services watched (each one health + one connect blocking query).',
      registers,
    });
    this.synced = new client.Gauge({
      name: 'signalbox_consul_synced',
      help: '1 once every Consul service watched at start-up answered once (stays 1).',
      registers,
    });
    this.lastSuccess = new client.Gauge({ name: 'signalbox_consul_last_success_timestamp_seconds', help: 'When a Consul query last succeeded.', registers });
    this.updates = new client.Counter({ name: 'signalbox_consul_endpoint_updates_total', help: 'Endpoint sets changed by a Consul answer.', registers });
  }
}

interface Subscriber {
  tags: string[];
}

interface HealthData {
  instances: ConsulInstance[];
  skipped: Skipped[];
}

interface ConnectData {
  sidecars: SidecarInfo[];
  skipped: Skipped[];
}

function sameTags(a: string[], b: string[]): boolean {
  return a.length === b.length && a.every((t, i) => t === b[i]);
}

/** Both blocking queries of one Consul service (in one datacenter), shared by every policy Service using it. */
class ServiceWatch {
  readonly subscribers = new Map<string, Subscriber>();
  readonly health: BlockingWatch<HealthData>;
  readonly connect: BlockingWatch<ConnectData>;
  instances?: ConsulInstance[];
  sidecars?: SidecarInfo[];
  connectSettled = false;
  /** Set once instances were handed to the store (first full sync of this watch). */
  published = false;
  graceUntil = 0;
  private graceTimer?: NodeJS.Timeout;
  /** When each instance id was first seen (0: present at the first sync). */
  private firstSeen = new Map<string, number>();
  private settleTimer?: NodeJS.Timeout;
  /** When each instance that left Consul's answers left, for sidecarSettleMs (see publishIfReady). */
  private leftAt = new Map<string, number>();
  /** A query failed at the connection level since the last answer (Consul down or restarting). */
  private outage = false;
  private loggedSkips = new Map<'health' | 'connect', Set<string>>();
  private stopped = false;

  constructor(
    readonly service: string,
    readonly datacenter: string | undefined,
    private readonly src: ConsulSource,
    clientOf: ConsulClient,
  ) {
    const o = src.opts;
    const base = {
      client: clientOf,
      query: { dc: datacenter },
      waitMs: o.waitMs ?? 60_000,
      minIntervalMs: o.minIntervalMs ?? 100,
      backoff: o.backoff ?? { baseMs: 250, maxMs: 10_000 },
      random: o.random,
      nonBlockingTimeoutMs: o.timeouts?.nonBlockingMs,
      timeoutMarginMs: o.timeouts?.marginMs,
    };
    const enc = encodeURIComponent(service);
    this.health = new BlockingWatch<HealthData>({
      ...base,
      path: `/v1/health/service/${enc}`,
      parse: (body) => mapHealthEntries(body, { warningAs: o.warningAs }),
      onData: (d, info) => {
        this.noteSkipped('health', d.skipped);
        this.instances = d.instances;
        withSpanSync('signalbox.consul.sync', { 'signalbox.consul.service': service, 'signalbox.consul.endpoint': 'health' }, () =>
          this.onAnswer('health', info),
        );
      },
      onError: (e, n, retry) => this.onError('health', e, n, retry),
    });
    this.connect = new BlockingWatch<ConnectData>({
      ...base,
      path: `/v1/health/connect/${enc}`,
      parse: (body) => mapConnectEntries(body, service, { warningAs: o.warningAs }),
      onData: (d, info) => {
        this.noteSkipped('connect', d.skipped);
        this.sidecars = d.sidecars;
        this.connectSettled = true;
        withSpanSync('signalbox.consul.sync', { 'signalbox.consul.service': service, 'signalbox.consul.endpoint': 'connect' }, () =>
          this.onAnswer('connect', info),
        );
      },
      onError: (e, n, retry) => {
        this.connectSettled = true; // sidecars unknown: publish instances rather than nothing
        this.onError('connect', e, n, retry);
        this.publishIfReady();
      },
    });
  }

  get key(): string {
    return watchKey(this.service, this.datacenter);
  }

  get stale(): boolean {
    return this.health.failures > 0 || this.connect.failures > 0;
  }

  start(): void {
    this.health.start();
    this.connect.start();
  }

  async stop(): Promise<void> {
    this.stopped = true;
    clearTimeout(this.graceTimer);
    clearTimeout(this.settleTimer);
    await Promise.all([this.health.stop(), this.connect.stop()]);
  }

  /** Counts every skipped registration; logs each one once while it stays in Consul's answers. */
  private noteSkipped(endpoint: 'health' | 'connect', skipped: Skipped[]): void {
    const now = new Set<string>();
    const before = this.loggedSkips.get(endpoint);
    for (const s of skipped) {
      this.src.metrics.skipped.inc({ reason: s.reason });
      const key = `${s.reason} ${s.detail}`;
      now.add(key);
      if (!before?.has(key)) this.src.logger.warn({ consulService: this.service, endpoint, reason: s.reason }, `consul: skipped registration ${s.detail}`);
    }
    this.loggedSkips.set(endpoint, now);
  }

  private onAnswer(endpoint: 'health' | 'connect', info: WatchInfo): void {
    const { logger, metrics } = this.src;
    metrics.lastSuccess.set(Date.now() / 1000);
    // A fresh Consul (restarted without its data) answers at once, possibly before its agents
    // re-registered everything. After an index reset, or after an outage at the connection level
    // (where a fresh restart cannot always be told by the index), instances missing from the new
    // answers are kept for a grace period; instances present are updated at once.
    const afterOutage = info.recovered && this.outage;
    if (info.recovered) this.outage = false;
    if (info.reset) metrics.resets.inc();
    if (info.reset || afterOutage) {
      const grace = this.src.opts.resyncGraceMs ?? 30_000;
      if (this.published && grace > 0) {
        this.graceUntil = Date.now() + grace;
        clearTimeout(this.graceTimer);
        this.graceTimer = setTimeout(() => {
          this.graceUntil = 0;
          this.publishIfReady();
        }, grace + 5);
        this.graceTimer.unref?.();
      }
      if (info.reset)
        logger.warn(
          { consulService: this.service, endpoint, index: info.index.toString() },
          'consul: index went backwards (Consul restarted or restored); resyncing, keeping missing instances for the grace period',
        );
    }
    if (info.recovered) logger.info({ consulService: this.service, endpoint, index: info.index.toString() }, 'consul: watch recovered');
    this.src.refreshStale();
    this.publishIfReady();
  }

  private onError(endpoint: 'health' | 'connect', e: ConsulError, failures: number, retryInMs: number): void {
    const { logger, metrics } = this.src;
    metrics.errors.inc({ endpoint, reason: e.reason });
    if (e.reason === 'network' || e.reason === 'timeout' || e.reason === 'server') this.outage = true;
    // The first failure, then every 10th, so a long outage does not flood the log.
    if (failures === 1 || failures % 10 === 0) {
      logger.warn(
        { consulService: this.service, endpoint, reason: e.reason, status: e.status, failures, retryInMs, keeping: this.instances?.length ?? 0 },
        `consul: query failed, keeping the last known endpoints: ${e.message}`,
      );
    }
    this.src.refreshStale();
  }

  /** Hands the current instances to the store for every subscriber, once both queries settled. */
  publishIfReady(only?: string): void {
    if (this.stopped || !this.instances || !this.connectSettled) return;
    const first = !this.published;
    this.published = true;
    const now = Date.now();
    const inGrace = this.graceUntil > now;
    // A new instance and its sidecar are two registrations that two queries see one after the
    // other: a new instance without a sidecar is held back for sidecarSettleMs, so that it is not
    // first sent at its own (plain-text) port and then moved to its sidecar.
    const settle = this.src.opts.sidecarSettleMs ?? 250;
    const seen = new Map<string, number>();
    let holdUntil = 0;
    const withSidecar = new Set((this.sidecars ?? []).map((s) => `${s.node}/${s.destinationId}`));
    const held = new Set<string>();
    for (const i of this.instances) {
      const t = first ? 0 : (this.firstSeen.get(i.id) ?? now);
      seen.set(i.id, t);
      if (settle > 0 && !withSidecar.has(i.id) && this.connect.failures === 0 && now - t < settle) {
        held.add(i.id);
        holdUntil = Math.max(holdUntil, t + settle);
      }
    }
    // When each instance that left Consul's answer left: a replacement registered just after the
    // old one was deregistered is seen one answer later, and is then held too (see below).
    for (const id of this.firstSeen.keys()) if (!seen.has(id) && !this.leftAt.has(id)) this.leftAt.set(id, now);
    for (const [id, t] of this.leftAt) {
      if (seen.has(id) || now - t >= settle) this.leftAt.delete(id);
      else holdUntil = Math.max(holdUntil, t + settle); // re-publish when its time is up
    }
    this.firstSeen = seen;
    if (holdUntil > 0 && !this.settleTimer) {
      this.settleTimer = setTimeout(
        () => {
          this.settleTimer = undefined;
          this.publishIfReady();
        },
        holdUntil - now + 1,
      );
      this.settleTimer.unref?.();
    }
    for (const [name, sub] of this.subscribers) {
      if (only !== undefined && name !== only) continue;
      let next = selectInstances(this.instances, this.sidecars ?? [], sub.tags);
      const published = this.src.store.get(name);
      const had = new Set(published.map((i) => i.id));
      const heldHere = next.some((i) => held.has(i.id) && !had.has(i.id));
      if (held.size) next = next.filter((i) => !held.has(i.id) || had.has(i.id));
      // Replacing an instance must never empty the set. Instances that left keep serving:
      // - while a new instance of this Service is held (the old one deregistered and the new one
      //   registered, seen in one answer or the new one first), until the push that brings it in;
      // - for sidecarSettleMs after they left when no routable instance would be left otherwise
      //   (the old one deregistered first: its replacement may be one answer away).
      // One that was failing (UNHEALTHY) or draining when it left takes no traffic anyway: it goes
      // at once. A last instance that really goes is dropped sidecarSettleMs later.
      const present = new Set(next.map((i) => i.id));
      const leaving = published.filter((p) => !present.has(p.id) && routable(p));
      if (leaving.length && (heldHere || !next.some(routable))) {
        for (const p of leaving) if (heldHere || this.leftAt.has(p.id)) next.push(p);
      }
      if (inGrace) next = mergeKeepingMissing(next, this.src.store.get(name));
      if (this.src.store.set(name, next, 'consul')) this.src.metrics.updates.inc();
    }
    if (first) this.src.onWatchSynced();
  }
}

/** Whether Envoy would send requests to the instance (it skips UNHEALTHY and DRAINING hosts). */
const routable = (i: Instance) => i.health !== 'UNHEALTHY' && i.health !== 'DRAINING';

/** During a resync grace period: what Consul says now, plus what it said before that it has not re-listed yet. */
function mergeKeepingMissing(fresh: Instance[], previous: readonly Instance[]): Instance[] {
  const byId = new Map(fresh.map((i) => [i.id, i]));
  for (const p of previous) {
    const f = byId.get(p.id);
    if (!f) byId.set(p.id, p);
    else if (!f.sidecar && p.sidecar) byId.set(p.id, { ...f, sidecar: p.sidecar });
  }
  return [...byId.values()];
}

export function watchKey(service: string, datacenter: string | undefined): string {
  return `${datacenter ?? ''}\u0000${service}`;
}

export interface ConsulSourceStatus {
  name: 'consul';
  address: string;
  datacenter?: string;
  /** Some watch's latest query failed: its endpoints are the last known ones. */
  stale: boolean;
  /** Every watch present at start-up answered once (sticky). */
  synced: boolean;
  lastSuccessAt?: string;
  requests: number;
  watches: {
    consulService: string;
    datacenter?: string;
    policyServices: string[];
    stale: boolean;
    synced: boolean;
    instances: number;
    sidecars: number;
    index: string;
    consecutiveFailures: number;
    lastSuccessAt?: string;
    lastError?: { reason: string; message: string; at: string };
    resyncGraceUntil?: string;
  }[];
  extra?: Record<string, unknown>;
}

export class ConsulSource {
  readonly client: ConsulClient;
  readonly metrics: ConsulMetrics;
  readonly logger: Logger;
  readonly store: EndpointStore;
  private readonly watches = new Map<string, ServiceWatch>();
  private syncedOnce = false;
  private modelSeen = false;
  private requests = 0;
  private stopped = false;
  /** Extra status sections (e.g. the catalog importer). */
  readonly extraStatus = new Map<string, () => unknown>();
  /** Extra conditions of the first full sync (e.g. the imported service list answered once). */
  readonly readinessChecks: (() => boolean)[] = [];
  /** Stopped with the source. */
  readonly companions: { stop(): Promise<void> }[] = [];
  /** Work to wait for (bounded) before the first policy load, e.g. the first imported service list. */
  readonly beforeFirstLoad: Promise<void>[] = [];

  private readonly syncWaiters: (() => void)[] = [];

  /**
   * Resolves once every watched Consul service answered once (the first full sync), logging every
   * `logEveryMs` while it waits. `signalbox serve` opens its xDS port only then: a proxy that
   * reconnects to a freshly started Signalbox while Consul is unreachable must keep the endpoints
   * it has rather than be handed empty ClusterLoadAssignments.
   */
  async firstSync(logEveryMs = 10_000): Promise<void> {
    if (this.syncedOnce) return;
    const t0 = Date.now();
    const timer = setInterval(() => {
      const failing = [...this.watches.values()]
        .filter((w) => !w.published)
        .map((w) => ({ consulService: w.service, lastError: w.health.lastError?.message ?? w.connect.lastError?.message }));
      this.logger.warn({ waitingMs: Date.now() - t0, failing }, 'consul: waiting for the first answer for every watched service before serving xDS');
    }, logEveryMs);
    timer.unref?.();
    try {
      await new Promise<void>((r) => this.syncWaiters.push(r));
    } finally {
      clearInterval(timer);
    }
  }

  /** Names of the policy Services fed by Consul now. */
  fedServices(): Set<string> {
    return new Set([...this.watches.values()].flatMap((w) => [...w.subscribers.keys()]));
  }

  /** Resolves when what the first policy load needs from Consul is known, or after timeoutMs. */
  async prepared(timeoutMs = 5_000): Promise<void> {
    let timer: NodeJS.Timeout | undefined;
    await Promise.race([Promise.all(this.beforeFirstLoad), new Promise<void>((r) => (timer = setTimeout(r, timeoutMs)))]);
    clearTimeout(timer);
  }

  constructor(readonly opts: ConsulSourceOptions) {
    this.client = new ConsulClient(opts.connection);
    this.metrics = new ConsulMetrics(opts.registry);
    this.logger = opts.logger.child({ component: 'consul' });
    this.store = opts.store;
    this.client.onRequest = (path) => {
      this.requests++;
      this.metrics.requests.inc({
        endpoint: path.startsWith('/v1/health/connect/')
          ? 'connect'
          : path.startsWith('/v1/health/')
            ? 'health'
            : path.startsWith('/v1/catalog/')
              ? 'catalog'
              : 'other',
      });
    };
  }

  /**
   * Follows a newly applied model: starts a watch for each Consul service now referenced, stops
   * the ones no longer referenced, and re-publishes to policy Services whose tag filter changed.
   */
  sync(model: Model): void {
    if (this.stopped) return;
    const desired = new Map<string, { service: string; dc?: string; subs: Map<string, Subscriber> }>();
    for (const svc of model.services.values()) {
      if (!svc.consul) continue;
      const dc = svc.consul.datacenter ?? this.opts.connection.datacenter;
      const key = watchKey(svc.consul.service, dc);
      let d = desired.get(key);
      if (!d) {
        d = { service: svc.consul.service, dc, subs: new Map() };
        desired.set(key, d);
      }
      d.subs.set(svc.name, { tags: [...(svc.consul.tags ?? [])].sort() });
    }
    const stillFed = new Set([...desired.values()].flatMap((d) => [...d.subs.keys()]));
    const wasFed = new Set([...this.watches.values()].flatMap((w) => [...w.subscribers.keys()]));
    for (const [key, w] of this.watches) {
      if (desired.has(key)) continue;
      this.watches.delete(key);
      void w.stop();
      this.logger.info({ consulService: w.service, datacenter: w.datacenter }, 'consul: no policy references this service any more; watch stopped');
    }
    // Policy Services that are gone from the model altogether lose their Consul instances.
    for (const name of wasFed) if (!stillFed.has(name) && !model.services.has(name)) this.store.delete(name);
    for (const [key, d] of desired) {
      let w = this.watches.get(key);
      if (!w) {
        w = new ServiceWatch(d.service, d.dc, this, this.client);
        this.watches.set(key, w);
        for (const [name, sub] of d.subs) w.subscribers.set(name, sub);
        w.start();
        this.logger.info({ consulService: d.service, datacenter: d.dc, policyServices: [...d.subs.keys()] }, 'consul: watching service');
        continue;
      }
      for (const name of [...w.subscribers.keys()]) if (!d.subs.has(name)) w.subscribers.delete(name);
      for (const [name, sub] of d.subs) {
        const had = w.subscribers.get(name);
        w.subscribers.set(name, sub);
        if (!had || !sameTags(had.tags, sub.tags)) w.publishIfReady(name);
      }
    }
    this.modelSeen = true;
    this.metrics.watches.set(this.watches.size);
    this.refreshStale();
    this.onWatchSynced();
  }

  /** Called when a watch published for the first time; marks the source synced when all have. */
  onWatchSynced(): void {
    if (this.syncedOnce || !this.modelSeen) return;
    for (const w of this.watches.values()) if (!w.published) return;
    if (!this.readinessChecks.every((c) => c())) return;
    this.syncedOnce = true;
    for (const f of this.syncWaiters.splice(0)) f();
    this.metrics.synced.set(1);
    this.logger.info({ watches: this.watches.size }, 'consul: first full sync done');
  }

  refreshStale(): void {
    let n = 0;
    for (const w of this.watches.values()) if (w.stale) n++;
    this.metrics.staleWatches.set(n);
    this.metrics.stale.set(n > 0 ? 1 : 0);
  }

  get synced(): boolean {
    return this.syncedOnce;
  }

  get stale(): boolean {
    for (const w of this.watches.values()) if (w.stale) return true;
    return false;
  }

  /** Readiness: not ready until the first full sync; ready for good afterwards, stale or not. */
  readiness(): { ready: boolean; reason?: string } {
    return this.syncedOnce ? { ready: true } : { ready: false, reason: 'waiting for the first answer from Consul for every watched service' };
  }

  status(): ConsulSourceStatus {
    const iso = (t?: number) => (t === undefined ? undefined : new Date(t).toISOString());
    let last: number | undefined;
    const watches = [...this.watches.values()]
      .sort((a, b) => (a.key < b.key ? -1 : 1))
      .map((w) => {
        const lastSuccess = Math.min(w.health.lastSuccessAt ?? Infinity, w.connect.lastSuccessAt ?? Infinity);
        if (Number.isFinite(lastSuccess)) last = Math.max(last ?? 0, lastSuccess);
        const err = [w.health, w.connect].filter((x) => x.failures > 0).map((x) => x.lastError!)[0] ?? w.health.lastError ?? w.connect.lastError;
        return {
          consulService: w.service,
          ...(w.datacenter ? { datacenter: w.datacenter } : {}),
          policyServices: [...w.subscribers.keys()].sort(),
          stale: w.stale,
          synced: w.published,
          instances: w.instances?.length ?? 0,
          sidecars: w.sidecars?.length ?? 0,
          index: w.health.lastSeenIndex.toString(),
          consecutiveFailures: Math.max(w.health.failures, w.connect.failures),
          lastSuccessAt: Number.isFinite(lastSuccess) ? iso(lastSuccess) : undefined,
          lastError: err ? { reason: err.reason, message: err.message, at: iso(err.at)! } : undefined,
          resyncGraceUntil: w.graceUntil > Date.now() ? iso(w.graceUntil) : undefined,
        };
      });
    const extra = Object.fromEntries([...this.extraStatus].map(([k, f]) => [k, f()]));
    return {
      name: 'consul',
      address: this.opts.connection.baseUrl,
      ...(this.opts.connection.datacenter ? { datacenter: this.opts.connection.datacenter } : {}),
      stale: this.stale,
      synced: this.syncedOnce,
      lastSuccessAt: iso(last),
      requests: this.requests,
      watches,
      ...(Object.keys(extra).length ? { extra } : {}),
    };
  }

  async stop(): Promise<void> {
    this.stopped = true;
    const all = [...this.watches.values()];
    this.watches.clear();
    await Promise.all([...all.map((w) => w.stop()), ...this.companions.map((c) => c.stop())]);
    this.client.close();
  }
}
