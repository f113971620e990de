// The one-way pipeline: policy directory -> model -> IR -> Envoy resources -> snapshot cache.
// A directory that fails validation never replaces the last good configuration. Endpoint changes
// rebuild only the ClusterLoadAssignments they touch.
import { EventEmitter } from 'node:events';
import { performance } from 'node:perf_hooks';
import { withSpan } from '../observability/tracing.js';
import { applyMeshTracing } from '../translate/tracing.js';
import { formatPolicyError, ErrorCode, type PolicyError } from '../errors.js';
import type { IRCluster, IRProxyConfig } from '../ir/types.js';
import { buildModel, type Model } from '../model/model.js';
import type { Logger } from '../observability/logger.js';
import type { Metrics } from '../observability/metrics.js';
import { EndpointStore, staticInstances } from '../sources/endpoints.js';
import { loadPolicyDir, PolicyParseCache, type LoadedDoc } from '../sources/files/loader.js';
import { translate } from '../translate/gateway.js';
import { checkConsistency, Snapshot, SnapshotCache } from '../xds/cache/snapshot-cache.js';
import { EncodeCache, type Resource } from '../xds/resources/resource.js';
import { TypeUrl } from '../xds/resources/type-urls.js';
import { configResources, endpointsResource, type ResourceMap } from '../xds/translator/index.js';
import type { IdentityManager } from '../ca/identities.js';
import { baseGroup, parseSidecarGroup, TRUST_BUNDLE_SECRET } from '../ir/types.js';
import type { AuthzEndpoint, JwtKeysOf } from '../translate/jwt.js';

interface GroupState {
  ir: IRProxyConfig;
  config: ResourceMap;
  endpoints: Map<string, Resource>;
  /** The mesh trust bundle (SDS), for groups with an identity; each proxy's own certificate is made per stream. */
  identity: Map<string, Resource>;
}

export interface ReloadResult {
  applied: boolean;
  errors: PolicyError[];
  durationMs: number;
}

export interface PipelineOptions {
  policyDir: string;
  /** The control plane's data directory: no policy may read a file under it. */
  dataDir?: string;
  /** More files or folders no policy may read (the CA key, the xDS server key, the admin token file). */
  forbiddenPaths?: string[];
  cache: SnapshotCache;
  logger: Logger;
  metrics?: Metrics;
  endpoints?: EndpointStore;
  /** The mesh CA's identities; without it no mesh TLS secrets are served. */
  identities?: IdentityManager;
  /** How long endpoint changes are gathered before one push (coalescing bursts). */
  endpointDebounceMs?: number;
  /**
   * Least time between two endpoint pushes. A change after a quiet spell goes out after the
   * debounce; changes that keep coming are gathered and pushed at most this often, so a flapping
   * catalog costs proxies and the control plane a bounded number of pushes.
   */
  endpointPushIntervalMs?: number;
  /** Every HTTP listener reports its requests to the access log service (successes sampled at this percent). */
  accessLog?: { successSamplePercent: number };
  /** Where proxies reach the ext_authz service (JWTPolicy); default 127.0.0.1:18002. */
  authz?: AuthzEndpoint;
  /** The keys each JWTPolicy verifies with now, for the fast path's versions (default: inline keys only). */
  jwtKeys?: JwtKeysOf;
  /** false: every JWT check goes to the ext_authz service. */
  jwtFastPath?: boolean;
  /** The fast path runs in Signalbox's compiled Envoy module (native/jwt-check) instead of Lua. */
  jwtFastPathModule?: boolean;
}

/** Default least time between endpoint pushes (see PipelineOptions.endpointPushIntervalMs). */
export const DEFAULT_ENDPOINT_PUSH_INTERVAL_MS = 250;

export class Pipeline extends EventEmitter<{ applied: [Model]; rejected: [PolicyError[]] }> {
  readonly endpoints: EndpointStore;
  readonly encoder = new EncodeCache();
  /** Reloads re-parse only the policy files whose text changed. */
  private readonly parsed = new PolicyParseCache();
  /**
   * Hook for discovery sources that add documents the policy files do not hold (Consul services
   * imported with --consul-import, see src/sources/consul/import.ts). Gets the files' documents,
   * returns the documents to build the model from.
   */
  extraDocs?: (fileDocs: LoadedDoc[]) => LoadedDoc[];
  model?: Model;
  errors: PolicyError[] = [];
  lastAppliedAt?: Date;
  lastRejectedAt?: Date;
  private groups = new Map<string, GroupState>();
  private pendingServices = new Set<string>();
  private endpointTimer?: NodeJS.Timeout;
  private lastEndpointPush = -Infinity;
  private running: Promise<ReloadResult> | undefined;
  private again = false;
  /** Sidecar groups proxies have asked for (their shape comes from the proxy's node metadata). */
  private readonly requestedGroups = new Set<string>();

  constructor(private readonly opts: PipelineOptions) {
    super();
    this.endpoints = opts.endpoints ?? new EndpointStore();
    this.endpoints.on('change', (services) => this.onEndpointChange(services));
    opts.cache.on('demand', (group) => void this.demand(group));
  }

  /** The SPIFFE ID the proxies of a group hold (undefined: the group gets no certificate). */
  identityOf(group: string): string | undefined {
    return this.groups.get(group)?.ir.identity;
  }

  /**
   * Whether the current model declares the gateway or service a proxy claims to be; undefined
   * before the first valid configuration (nothing to check against yet).
   */
  declares(role: 'gateway' | 'sidecar', name: string): boolean | undefined {
    if (!this.model) return undefined;
    return role === 'gateway' ? this.model.gateways.has(name) : this.model.services.has(name);
  }

  /**
   * Builds a group on first demand: a sidecar group (when the model knows its service), or the
   * `+jwt-module` variant of a gateway or sidecar group.
   */
  private async demand(group: string): Promise<void> {
    const base = baseGroup(group);
    if ((!parseSidecarGroup(base) && base === group) || this.requestedGroups.has(group)) return;
    this.requestedGroups.add(group);
    if (this.model || this.running) await this.reload();
  }

  private identityResources(id: string | undefined): Map<string, Resource> {
    const out = new Map<string, Resource>();
    const ids = this.opts.identities;
    if (!ids || !id) return out;
    const bundle = { name: TRUST_BUNDLE_SECRET, validation_context: { trusted_ca: { inline_string: ids.ca.trustBundlePem } } };
    out.set(TRUST_BUNDLE_SECRET, this.encoder.make(TypeUrl.Secret, TRUST_BUNDLE_SECRET, bundle));
    return out;
  }

  get ready(): boolean {
    return this.model !== undefined;
  }

  /** Loads the policy directory and applies it if valid. Concurrent calls are coalesced. */
  reload(): Promise<ReloadResult> {
    if (this.running) {
      this.again = true;
      return this.running;
    }
    this.running = withSpan('signalbox.compile', { 'signalbox.policy_dir': this.opts.policyDir }, async (span) => {
      const r = await this.doReload();
      span.setAttributes({ 'signalbox.applied': r.applied, 'signalbox.errors': r.errors.length, 'signalbox.groups': this.groups.size });
      return r;
    }).finally(() => {
      this.running = undefined;
      if (this.again) {
        this.again = false;
        void this.reload();
      }
    });
    return this.running;
  }

  private async doReload(): Promise<ReloadResult> {
    const { logger, metrics } = this.opts;
    const t0 = performance.now();
    const loaded = await loadPolicyDir(this.opts.policyDir, this.parsed);
    let errors = loaded.errors;
    let model: Model | undefined;
    if (errors.length === 0) {
      const built = await buildModel(this.extraDocs ? this.extraDocs(loaded.docs) : loaded.docs, this.opts.policyDir, { dataDir: this.opts.dataDir, forbidden: this.opts.forbiddenPaths });
      errors = built.errors;
      model = built.model;
    }
    if (model && errors.length === 0) {
      try {
        await this.opts.identities?.setTtl(model.mesh.mtls.certTTLms);
        await this.apply(model);
      } catch (e) {
        errors = [{ code: ErrorCode.CONFLICT, file: this.opts.policyDir, message: `internal: the compiled configuration is inconsistent: ${(e as Error).message}` }];
      }
    }
    const durationMs = performance.now() - t0;
    this.errors = errors;
    metrics?.policyErrors.set(errors.length);
    if (errors.length > 0) {
      this.lastRejectedAt = new Date();
      metrics?.reloads.inc({ result: 'rejected' });
      logger.warn({ errors: errors.map(formatPolicyError), keptVersion: this.model ? 'last good configuration' : 'none yet' }, `policy directory rejected: ${errors.length} error(s); nothing applied`);
      this.emit('rejected', errors);
      return { applied: false, errors, durationMs };
    }
    metrics?.compileSeconds.observe(durationMs / 1000);
    metrics?.reloads.inc({ result: 'applied' });
    metrics?.configApplied.set(Date.now() / 1000);
    this.lastAppliedAt = new Date();
    logger.info({ durationMs: Math.round(durationMs * 10) / 10, groups: [...this.groups.keys()] }, 'policy configuration applied');
    this.emit('applied', model!);
    return { applied: true, errors, durationMs };
  }

  /** Compiles a valid model into every group's snapshot. Throws (changing nothing) if inconsistent. */
  private async apply(model: Model): Promise<void> {
    for (const svc of model.services.values()) {
      if (svc.endpoints) this.endpoints.set(svc.name, staticInstances(svc), 'static', { quiet: true });
    }
    const irs = translate(model, this.requestedGroups, { authz: this.opts.authz, jwtKeys: this.opts.jwtKeys, jwtFastPath: this.opts.jwtFastPath, jwtFastPathModule: this.opts.jwtFastPathModule });
    if (this.opts.accessLog) for (const ir of irs.values()) for (const l of ir.listeners) l.accessLog = this.opts.accessLog;
    applyMeshTracing(model, irs);
    const next = new Map<string, GroupState>();
    const snapshots = new Map<string, Snapshot>();
    for (const [group, ir] of irs) {
      const config = configResources(ir, this.encoder);
      const endpoints = new Map<string, Resource>();
      for (const c of ir.clusters) if (!c.static) endpoints.set(c.name, endpointsResource(c, this.endpoints.get(c.service), this.encoder));
      const state: GroupState = { ir, config, endpoints, identity: this.identityResources(ir.identity) };
      const snap = this.snapshotOf(state);
      const problems = checkConsistency(snap, refsOf(ir));
      if (problems.length) throw new Error(`${group}: ${problems.join('; ')}`);
      next.set(group, state);
      snapshots.set(group, snap);
    }
    this.model = model;
    this.groups = next;
    for (const [group, snap] of snapshots) this.opts.cache.set(group, snap);
    for (const group of this.opts.cache.groupNames()) if (!next.has(group)) this.opts.cache.delete(group);
    this.encoder.sweep();
  }

  private snapshotOf(state: GroupState): Snapshot {
    const resources = new Map(state.config);
    resources.set(TypeUrl.Endpoint, state.endpoints);
    resources.set(TypeUrl.Secret, new Map([...state.config.get(TypeUrl.Secret)!, ...state.identity]));
    return new Snapshot(resources);
  }

  private onEndpointChange(services: string[]): void {
    for (const s of services) this.pendingServices.add(s);
    if (this.endpointTimer) return;
    const debounce = this.opts.endpointDebounceMs ?? 20;
    const interval = this.opts.endpointPushIntervalMs ?? DEFAULT_ENDPOINT_PUSH_INTERVAL_MS;
    const wait = Math.max(debounce, this.lastEndpointPush + interval - performance.now());
    this.endpointTimer = setTimeout(() => {
      this.endpointTimer = undefined;
      this.lastEndpointPush = performance.now();
      const changed = this.pendingServices;
      this.pendingServices = new Set();
      this.rebuildEndpoints(changed);
    }, wait);
  }

  /** Re-encodes the endpoint sets of the changed services, only in the groups that use them. */
  rebuildEndpoints(services: Set<string>): void {
    for (const [group, state] of this.groups) {
      const affected: IRCluster[] = state.ir.clusters.filter((c) => !c.static && services.has(c.service));
      if (affected.length === 0) continue;
      const endpoints = new Map(state.endpoints);
      for (const c of affected) endpoints.set(c.name, endpointsResource(c, this.endpoints.get(c.service), this.encoder));
      state.endpoints = endpoints;
      this.opts.cache.set(group, this.snapshotOf(state));
    }
    this.opts.metrics?.endpointUpdates.inc({ source: 'any' }, services.size);
  }

  /** Every group's IR, for tools that explain or diff configuration. */
  irGroups(): ReadonlyMap<string, IRProxyConfig> {
    return new Map([...this.groups].map(([k, v]) => [k, v.ir]));
  }
}

function refsOf(ir: IRProxyConfig) {
  const clustersUsed = new Set<string>();
  for (const l of ir.listeners) for (const v of l.routeConfig.virtualHosts) for (const r of v.routes) if (r.action.kind === 'forward') for (const b of r.action.backends) clustersUsed.add(b.cluster);
  return {
    routeConfigs: ir.listeners.map((l) => l.routeConfig.name),
    clustersUsed,
    edsClusters: ir.clusters.filter((c) => !c.static).map((c) => c.name),
    secretsUsed: ir.listeners.flatMap((l) => (l.tls ? [l.tls.secretName] : [])),
  };
}
