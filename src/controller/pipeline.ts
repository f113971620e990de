// The one-way pipeline: policy directory -> model -> IR -> Envoy resources -> snapshot cache.
// A directory that fails validation never replaces the last good configuration. Endpoint changes
// rebuild only the ClusterLoadAssignments they touch.
import { EventEmitter } from 'node:events';
import { performance } from 'node:perf_hooks';
import { withSpan } from '../observability/tracing.js';
import { formatPolicyError, ErrorCode, type PolicyError } from '../errors.js';
import type { Instance, IRCluster, IRProxyConfig } from '../ir/types.js';
import { deepFreeze } from '../ir/freeze.js';
import { buildModel } from './build-model.js';
import type { Model } from '../model/model.js';
import type { Logger } from '../observability/logger.js';
import type { Metrics } from '../observability/metrics.js';
import { EndpointStore, staticInstances } from '../sources/endpoints.js';
import { loadPolicyDir, type PolicyParseCache, type LoadedDoc, type LoadHint, type PolicyLimits } from '../sources/files/loader.js';
import type { PolicyChanges } from '../sources/files/watcher.js';
import { Snapshot, type SnapshotCache } from '../xds/cache/snapshot-cache.js';
import { EncodeCache, type Resource } from '../xds/resources/resource.js';
import { endpointsResource, type ResourceMap } from '../xds/translator/index.js';
import type { IdentityManager } from '../ca/identities.js';
import { baseGroup, parseSidecarGroup } from '../ir/types.js';
import type { AuthzEndpoint, JwtKeysOf } from '../translate/jwt.js';
import type { RateLimitEndpoint } from '../translate/ratelimit.js';
import { LastGoodStore, TextKeepingParseCache } from './last-good.js';
import { compileGroupsSettled, groupResources, type CompileGroupsOptions } from './compile-groups.js';

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
  /** Where proxies reach the rate-limit service (global RateLimitPolicy limits); default 127.0.0.1:18003. */
  rateLimit?: RateLimitEndpoint;
  /** The keys each JWTPolicy verifies with now, for the fast path's versions (default: inline keys only). */
  jwtKeys?: JwtKeysOf;
  /** false: every JWT check goes to the ext_authz service. */
  jwtFastPath?: boolean;
  /** The fast path runs in Signalbox's compiled Envoy module (native/jwt-check) instead of Lua. */
  jwtFastPathModule?: boolean;
  /** Bounds on reading the policy directory (default: DEFAULT_POLICY_LIMITS). */
  policyLimits?: Partial<PolicyLimits>;
  /**
   * A document in the policy directory that is not a Signalbox document is an error, which rejects
   * the load (`serve --strict`); by default it is skipped with a warning (`warnings`).
   */
  strictPolicies?: boolean;
  /**
   * Keep the last good configuration across restarts (needs dataDir): its inputs are saved there
   * each time one is applied, and served at start while the policy directory is invalid (last-good.ts).
   */
  persistLastGood?: boolean;
  /**
   * Most sidecar groups (distinct service and port shapes) compiled because proxies asked; a proxy
   * of a new shape past it is refused unless an idle group makes room. Default DEFAULT_MAX_REQUESTED_GROUPS.
   */
  maxRequestedGroups?: number;
  /** How long a requested group stays compiled after its last proxy left. Default DEFAULT_IDLE_GROUP_GRACE_MS. */
  idleGroupGraceMs?: number;
  /**
   * An Envoy binary that checks each valid model before it is applied, as `signalbox validate
   * --envoy` does (src/preflight/envoy.ts): the groups whose configuration changed since the last
   * applied one run `envoy --mode validate`; what Envoy refuses rejects the load like a validation
   * error (SB_ENVOY_REJECTED, with file and field). Default: off (it costs ~50-250 ms per group checked).
   */
  preflightEnvoy?: string;
  /** Called before each group is translated; throwing fails that group (fault injection for tests, see CompileGroupsOptions). */
  beforeGroup?: CompileGroupsOptions['beforeGroup'];
}

/** A group whose configuration could not be compiled: it keeps serving what it had (if anything). */
export interface GroupFailureState {
  since: Date;
  /** SB_TRANSLATE on the documents the group is built from. */
  errors: PolicyError[];
  /** Whether the group still serves an earlier snapshot (false: it never compiled, nothing is served). */
  servingLastGood: boolean;
}

/** Default least time between endpoint pushes (see PipelineOptions.endpointPushIntervalMs). */
export const DEFAULT_ENDPOINT_PUSH_INTERVAL_MS = 250;
/**
 * Default cap on requested sidecar groups. Each costs a compile on every reload; real meshes have
 * a few shapes per service, and node metadata (the ports) is the proxy's to choose.
 */
export const DEFAULT_MAX_REQUESTED_GROUPS = 1000;
/** Default grace period of an idle requested group: long enough for a proxy's restart or reconnect. */
export const DEFAULT_IDLE_GROUP_GRACE_MS = 60_000;

/**
 * Whether two maps serve the same: the same names, each with the same version (a hash of its
 * content, so the same bytes) and the same sources. Mostly the very same Resource objects.
 */
function sameResources(a: ReadonlyMap<string, Resource>, b: ReadonlyMap<string, Resource>): boolean {
  if (a === b) return true;
  if (a.size !== b.size) return false;
  for (const [name, r] of a) {
    const o = b.get(name);
    if (o === r) continue;
    if (!o || o.version !== r.version || o.sources.length !== r.sources.length || o.sources.some((f, i) => f !== r.sources[i])) return false;
  }
  return true;
}

/**
 * Puts the previous state's map of each type in place of a new one that serves the same. The snapshot cache then finds the type unchanged by identity (no names diffed) and its
 * version already hashed: a one-route edit does not hash the versions of 6,000 Clusters and
 * ClusterLoadAssignments again. The maps are never mutated once in a snapshot.
 */
function keepUnchangedMaps(next: GroupState, prev: GroupState): void {
  for (const [type, m] of next.config) {
    const old = prev.config.get(type);
    if (old && old !== m && sameResources(m, old)) next.config.set(type, old);
  }
  if (sameResources(next.endpoints, prev.endpoints)) next.endpoints = prev.endpoints;
  if (sameResources(next.identity, prev.identity)) next.identity = prev.identity;
}

/** Requested groups that count toward the cap: sidecar shapes (a gateway's module variant is bounded by the model). */
function isSidecarShape(group: string): boolean {
  return parseSidecarGroup(baseGroup(group)) !== undefined;
}

export class Pipeline extends EventEmitter<{ applied: [Model]; rejected: [PolicyError[]] }> {
  readonly endpoints: EndpointStore;
  readonly encoder = new EncodeCache();
  /**
   * Reloads re-parse only the policy files whose text changed. It also keeps the text each file's
   * documents came from: a save of the last good configuration takes that, not a second read.
   */
  private readonly parsed: PolicyParseCache & Pick<TextKeepingParseCache, 'textOf'> = new TextKeepingParseCache();
  /**
   * Hook for discovery sources that add documents the policy files do not hold (Consul services
   * imported with --consul-import, see src/sources/consul/import.ts). Gets the files' documents,
   * returns the documents to build the model from.
   */
  extraDocs?: (fileDocs: LoadedDoc[]) => LoadedDoc[];
  model?: Model;
  errors: PolicyError[] = [];
  /**
   * What the last load skipped: documents that are not Signalbox documents (SB_NOT_SIGNALBOX). They
   * never reject a load, so they are kept apart from `errors`: a directory with warnings and no
   * errors is valid, applied, and not "serving the last good configuration".
   */
  warnings: PolicyError[] = [];
  lastAppliedAt?: Date;
  lastRejectedAt?: Date;
  private groups = new Map<string, GroupState>();
  /** Groups whose last compile failed while the model applied (see apply): each keeps its last good snapshot. */
  private failures = new Map<string, GroupFailureState>();
  /** Static endpoint lists (Service documents' own) already put in the endpoint store, by list. */
  private readonly staticPut = new WeakMap<object, { service: string; instances: readonly Instance[] }>();
  private pendingServices = new Set<string>();
  private endpointTimer?: NodeJS.Timeout;
  private lastEndpointPush = -Infinity;
  private running: Promise<ReloadResult> | undefined;
  private again = false;
  /** Files changed since the last load began (undefined: no reload asked; null: read every file). */
  private hint?: Set<string> | null;
  /** Sidecar groups proxies have asked for (their shape comes from the proxy's node metadata). */
  private readonly requestedGroups = new Set<string>();
  /** Saves and restores the last good configuration (persistLastGood). */
  readonly lastGoodStore?: LastGoodStore;
  /** Since when an older configuration is served because the policy directory is invalid. */
  private lastGoodSince?: Date;
  /** Set while the configuration served came from the saved file at start. */
  private restored?: { file: string; appliedAt: Date };
  /** The saved configuration is read once, at the first rejected load without a model; its problem stays listed until a valid load. */
  private restoreTried = false;
  private restoreProblem?: PolicyError;
  /** Requested groups whose last proxy left, each with the timer that drops it; oldest first. */
  private readonly idleGroups = new Map<string, NodeJS.Timeout>();
  private groupLimits: { maxRequestedGroups: number; idleGroupGraceMs: number };
  /** preflightEnvoy: the key of each group as last applied (a group with the same key is not checked again), and Envoy's version. */
  private preflightPassed = new Map<string, string>();
  private preflightVersion?: string;

  constructor(private readonly opts: PipelineOptions) {
    super();
    if (opts.persistLastGood && opts.dataDir)
      this.lastGoodStore = new LastGoodStore({ dataDir: opts.dataDir, policyDir: opts.policyDir, forbidden: opts.forbiddenPaths });
    this.endpoints = opts.endpoints ?? new EndpointStore();
    this.endpoints.on('change', (services) => this.onEndpointChange(services));
    this.groupLimits = {
      maxRequestedGroups: opts.maxRequestedGroups ?? DEFAULT_MAX_REQUESTED_GROUPS,
      idleGroupGraceMs: opts.idleGroupGraceMs ?? DEFAULT_IDLE_GROUP_GRACE_MS,
    };
    opts.cache.on('demand', (group) => this.demand(group));
    opts.cache.on('idle', (group) => this.onIdle(group));
    opts.cache.setAdmission((group) => this.refusal(group));
  }

  /** Changes the limits on requested groups while running (tests; a timer already armed keeps its time). */
  setGroupLimits(limits: Partial<typeof this.groupLimits>): void {
    this.groupLimits = { ...this.groupLimits, ...limits };
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
   * `+jwt-module` variant of a gateway or sidecar group. A group waiting to be dropped is kept. At
   * the cap a new sidecar shape takes the place of the longest idle one, else it is not built
   * (the xDS server then refuses the stream with refusal()'s reason). Synchronous up to the reload,
   * so refusal() asked right after sees the decision.
   */
  private demand(group: string): void {
    const base = baseGroup(group);
    if (!parseSidecarGroup(base) && base === group) return;
    const idle = this.idleGroups.get(group);
    if (idle) {
      clearTimeout(idle);
      this.idleGroups.delete(group);
    }
    if (this.requestedGroups.has(group)) return;
    if (isSidecarShape(group) && this.sidecarShapes() >= this.groupLimits.maxRequestedGroups) {
      const oldest = [...this.idleGroups.keys()].find(isSidecarShape);
      if (!oldest) return;
      this.drop(oldest, 'evicted');
    }
    this.requestedGroups.add(group);
    this.opts.metrics?.requestedGroups.set(this.sidecarShapes());
    if (this.model || this.running) void this.reload();
  }

  private sidecarShapes(): number {
    let n = 0;
    for (const g of this.requestedGroups) if (isSidecarShape(g)) n++;
    return n;
  }

  /** Why a proxy of `group` is not served: its shape would pass the cap (see demand). */
  private refusal(group: string): string | undefined {
    if (!isSidecarShape(group) || this.requestedGroups.has(group)) return undefined;
    const max = this.groupLimits.maxRequestedGroups;
    return `sidecar group "${group}" refused: the limit of ${max} sidecar groups (distinct service and port shapes) in use is reached; it is served once another shape has had no proxy for ${Math.round(this.groupLimits.idleGroupGraceMs / 1000)} s`;
  }

  /** The last proxy of a group left: a requested group is dropped unless one comes back within the grace period. */
  private onIdle(group: string): void {
    if (!this.requestedGroups.has(group) || this.idleGroups.has(group)) return;
    const timer = setTimeout(() => this.drop(group, 'idle'), this.groupLimits.idleGroupGraceMs);
    timer.unref();
    this.idleGroups.set(group, timer);
  }

  /**
   * Stops compiling a requested group and removes its snapshot now, without a reload (which could
   * be rejected and keep it): the next reload's translate no longer sees it.
   */
  private drop(group: string, reason: 'idle' | 'evicted'): void {
    clearTimeout(this.idleGroups.get(group));
    this.idleGroups.delete(group);
    if (!this.requestedGroups.delete(group)) return;
    this.groups.delete(group);
    this.opts.cache.delete(group);
    this.opts.metrics?.requestedGroups.set(this.sidecarShapes());
    this.opts.metrics?.requestedGroupsDropped.inc({ reason });
    this.opts.logger.info(
      { group, reason },
      reason === 'idle' ? 'proxy group dropped: no proxy of it connected during the grace period' : 'idle proxy group dropped to make room for a new shape',
    );
  }

  /**
   * Set while the policy directory is invalid and proxies get an older, valid configuration: kept
   * from an earlier load, or restored from the data directory at start (`restoredFrom`).
   */
  get servingLastGood(): { since: Date; appliedAt?: Date; restoredFrom?: string; errors: number } | undefined {
    if (!this.model || this.errors.length === 0 || !this.lastGoodSince) return undefined;
    return {
      since: this.lastGoodSince,
      appliedAt: this.restored?.appliedAt ?? this.lastAppliedAt,
      restoredFrom: this.restored?.file,
      errors: this.errors.length,
    };
  }

  get ready(): boolean {
    return this.model !== undefined;
  }

  /**
   * Loads the policy directory and applies it if valid. Concurrent calls are coalesced. `changes`
   * (from the watcher) lets the load re-read only the files that changed; without it, or when the
   * changes are not plain edits of known files, every file is read.
   */
  reload(changes?: PolicyChanges): Promise<ReloadResult> {
    // What the next load may skip: the union of the hints gathered, or everything once one call has none.
    if (!changes || changes.full) this.hint = null;
    else if (this.hint !== null) {
      this.hint ??= new Set();
      for (const p of changes.paths) this.hint.add(p);
    }
    if (this.running) {
      this.again = true;
      return this.running;
    }
    this.running = withSpan('signalbox.compile', { 'signalbox.policy_dir': this.opts.policyDir }, async (span) => {
      const hint = this.hint;
      this.hint = undefined;
      const r = await this.doReload(hint ? { changed: hint } : undefined);
      span.setAttributes({ 'signalbox.applied': r.applied, 'signalbox.errors': r.errors.length, 'signalbox.groups': this.groups.size });
      return r;
    }).finally(() => {
      this.running = undefined;
      if (this.again) {
        this.again = false;
        const hint = this.hint;
        this.hint = undefined;
        void this.reload(hint ? { paths: hint, full: false } : undefined);
      }
    });
    return this.running;
  }

  private async doReload(hint?: LoadHint): Promise<ReloadResult> {
    const { logger, metrics } = this.opts;
    const t0 = performance.now();
    const loaded = await loadPolicyDir(this.opts.policyDir, this.parsed, this.opts.policyLimits, hint, { strict: this.opts.strictPolicies });
    this.setWarnings(loaded.warnings);
    let errors = loaded.errors;
    let model: Model | undefined;
    const docs = errors.length === 0 && this.extraDocs ? this.extraDocs(loaded.docs) : loaded.docs;
    if (errors.length === 0) {
      const built = await buildModel(docs, this.opts.policyDir, { dataDir: this.opts.dataDir, forbidden: this.opts.forbiddenPaths });
      errors = built.errors;
      model = built.model;
    }
    // What Envoy would refuse is refused here, before any proxy gets it (NACKs are per proxy and silent).
    const preflight = model && errors.length === 0 && this.opts.preflightEnvoy ? await this.preflight(model, docs) : undefined;
    if (preflight) errors = preflight.errors;
    if (model && errors.length === 0) {
      try {
        await this.opts.identities?.setTtl(model.mesh.mtls.certTTLms);
        await this.apply(model);
        if (preflight?.passed) this.preflightPassed = preflight.passed;
      } catch (e) {
        errors = [
          { code: ErrorCode.CONFLICT, file: this.opts.policyDir, message: `internal: the configuration could not be applied: ${(e as Error).message}` },
        ];
      }
    }
    // Rejected: the last good configuration stays served (restored from disk at start), compiled
    // for the groups proxies ask for now and with the keys the authz service holds now.
    if (errors.length > 0) errors = [...errors, ...(await this.keepLastGood())];
    const durationMs = performance.now() - t0;
    // Groups that failed to compile are listed whether the load applied or not: they are what is served.
    const groupErrors = this.groupFailureErrors();
    this.errors = [...errors, ...groupErrors];
    metrics?.policyErrors.set(this.errors.length);
    if (errors.length > 0) {
      this.lastRejectedAt = new Date();
      if (this.model) this.lastGoodSince ??= this.lastRejectedAt;
      metrics?.servingLastGood.set(this.model ? 1 : 0);
      metrics?.reloads.inc({ result: 'rejected' });
      logger.warn(
        { errors: errors.map(formatPolicyError), keptVersion: this.model ? 'last good configuration' : 'none yet' },
        `policy directory rejected: ${errors.length} error(s); nothing applied`,
      );
      this.emit('rejected', this.errors);
      return { applied: false, errors: this.errors, durationMs };
    }
    metrics?.compileSeconds.observe(durationMs / 1000);
    metrics?.reloads.inc({ result: 'applied' });
    metrics?.configApplied.set(Date.now() / 1000);
    this.lastAppliedAt = new Date();
    this.lastGoodSince = undefined;
    this.restored = undefined;
    metrics?.servingLastGood.set(0);
    logger.info({ durationMs: Math.round(durationMs * 10) / 10, groups: [...this.groups.keys()] }, 'policy configuration applied');
    if (groupErrors.length)
      logger.warn(
        { failedGroups: [...this.failures.keys()], errors: groupErrors.map(formatPolicyError) },
        `${this.failures.size} proxy group(s) could not be compiled: each keeps its last good configuration; the other groups applied`,
      );
    this.emit('applied', model!);
    // After the listeners (the authz service learns new policies before anything else waits). Only a
    // configuration every group compiled is saved: a restart never starts from a partial one.
    if (groupErrors.length === 0) await this.saveLastGood(loaded.files, loaded.docs, model!);
    return { applied: true, errors: this.errors, durationMs };
  }

  /** The last load's warnings: listed in /api/errors, counted in a metric, logged when they change. */
  private setWarnings(warnings: PolicyError[]): void {
    const text = warnings.map(formatPolicyError);
    const changed = text.join('\n') !== this.warnings.map(formatPolicyError).join('\n');
    this.warnings = warnings;
    this.opts.metrics?.policyWarnings.set(warnings.length);
    if (changed && warnings.length > 0)
      this.opts.logger.warn({ warnings: text }, `${warnings.length} document(s) in the policy directory skipped: not Signalbox documents`);
  }

  /**
   * Runs Envoy on the groups of `model` whose configuration changed since the last applied one.
   * Returns what Envoy refuses, and on success every group's key. An Envoy that cannot be run
   * rejects the load too: a check that was asked for is never skipped silently.
   */
  private async preflight(model: Model, docs: LoadedDoc[]): Promise<{ errors: PolicyError[]; passed?: Map<string, string> }> {
    const envoy = this.opts.preflightEnvoy!;
    try {
      const { envoyVersion, preflightModel } = await import('../preflight/envoy.js');
      this.preflightVersion ??= await envoyVersion(envoy);
      const r = await preflightModel(model, docs, { envoy, version: this.preflightVersion, passed: this.preflightPassed });
      const checked = r.groups.filter((g) => !g.skipped).length;
      this.opts.logger.info({ ms: r.ms, checked, unchanged: r.groups.length - checked, errors: r.errors.length }, 'Envoy preflight');
      return r.errors.length ? { errors: r.errors } : { errors: [], passed: new Map(r.groups.map((g) => [g.group, g.key])) };
    } catch (e) {
      return {
        errors: [
          { code: ErrorCode.ENVOY_REJECTED, file: this.opts.policyDir, message: `the Envoy preflight (${envoy}) could not run: ${(e as Error).message}` },
        ],
      };
    }
  }

  /**
   * After a rejected load. With a model: compile it again, so that a sidecar group first asked for
   * now, or JWKS keys loaded now, are served (the same model gives the same resources otherwise).
   * Without one (the start): restore the saved configuration, once. Returns the problem with the
   * saved file, listed with the policy errors until a valid load.
   */
  private async keepLastGood(): Promise<PolicyError[]> {
    if (this.model) {
      try {
        await this.apply(this.model);
      } catch (e) {
        this.opts.logger.warn(
          { err: (e as Error).message },
          'the last good configuration could not be compiled for the groups asked for now; it stays as it was',
        );
      }
      return [];
    }
    const store = this.lastGoodStore;
    if (!store) return [];
    if (!this.restoreTried) {
      this.restoreTried = true;
      this.restoreProblem = await this.restoreLastGood(store);
    }
    return this.restoreProblem ? [this.restoreProblem] : [];
  }

  private async restoreLastGood(store: LastGoodStore): Promise<PolicyError | undefined> {
    const { logger, metrics } = this.opts;
    const r = await store.restore(this.extraDocs);
    if (r.kind === 'none') return undefined;
    if (r.kind === 'error') {
      logger.error(
        { file: store.displayFile, error: r.error.message },
        'the last good configuration cannot be restored; serving nothing until the policy directory is valid',
      );
      return r.error;
    }
    try {
      await this.opts.identities?.setTtl(r.model.mesh.mtls.certTTLms);
      await this.apply(r.model);
    } catch (e) {
      const error: PolicyError = {
        code: ErrorCode.CONFLICT,
        file: store.displayFile,
        message: `the last good configuration saved here cannot be served: it compiles to an inconsistent configuration: ${(e as Error).message}`,
      };
      logger.error(
        { file: store.displayFile, error: error.message },
        'the last good configuration cannot be restored; serving nothing until the policy directory is valid',
      );
      return error;
    }
    this.restored = { file: store.displayFile, appliedAt: r.appliedAt };
    this.lastGoodSince = new Date();
    this.lastAppliedAt = r.appliedAt;
    metrics?.configApplied.set(r.appliedAt.getTime() / 1000);
    // Same inputs, same versions, for the operator to see. Not a verdict: a JWT fast path's versions
    // move once the authz service has loaded the keys (a recompile follows), and a new CA moves the
    // trust bundle's.
    const compared = Object.keys(r.groups).filter((g) => this.groups.has(g));
    const same = compared.filter((g) => this.opts.cache.get(g).version === r.groups[g]).length;
    logger.warn(
      { file: store.displayFile, appliedAt: r.appliedAt.toISOString(), groups: [...this.groups.keys()], versionsAsSaved: `${same}/${compared.length}` },
      'the policy directory is invalid: serving the last good configuration saved in the data directory until a valid edit',
    );
    this.emit('applied', r.model);
    return undefined;
  }

  /** Saves the inputs of the configuration just applied; a failure is logged and never fails the apply. */
  private async saveLastGood(files: readonly string[], fileDocs: readonly LoadedDoc[], model: Model): Promise<void> {
    const store = this.lastGoodStore;
    if (!store) return;
    const groups = Object.fromEntries([...this.groups.keys()].sort().map((g) => [g, this.opts.cache.get(g).version]));
    try {
      const r = await store.save({ files, fileDocs, textOf: (file) => this.parsed.textOf(file), model, groups });
      if (r === 'changed-underneath')
        this.opts.logger.debug('a policy file changed while it was applied; the last good configuration is saved at the next reload');
    } catch (e) {
      this.opts.logger.warn(
        { file: store.displayFile, err: (e as NodeJS.ErrnoException).code ?? (e as Error).message },
        'could not save the last good configuration; a restart with an invalid policy directory would serve the one saved before',
      );
    }
  }

  /** Compiles a valid model into every group's snapshot. Throws (changing nothing) if inconsistent. */
  private async apply(model: Model): Promise<void> {
    for (const svc of model.services.values()) {
      if (!svc.endpoints) continue;
      // staticInstances reads only the endpoints list: the parsed document's own, deep-frozen here.
      // When this list was put in the store for this service and the store still holds what it
      // kept then, setting it again would change nothing (the store would compare and keep it).
      const put = this.staticPut.get(deepFreeze(svc.endpoints));
      if (put?.service === svc.name && this.endpoints.get(svc.name) === put.instances) continue;
      this.endpoints.set(svc.name, staticInstances(svc), 'static', { quiet: true });
      this.staticPut.set(svc.endpoints, { service: svc.name, instances: this.endpoints.get(svc.name) });
    }
    // The one function that says what a proxy group gets (compile, diff, explain and the goldens call it too).
    const { groups: compiled, failed } = compileGroupsSettled(model, {
      groups: this.requestedGroups,
      accessLog: this.opts.accessLog,
      authz: this.opts.authz,
      rateLimit: this.opts.rateLimit,
      jwtKeys: this.opts.jwtKeys,
      jwtFastPath: this.opts.jwtFastPath,
      jwtFastPathModule: this.opts.jwtFastPathModule,
      trustBundlePem: this.opts.identities?.ca.trustBundlePem,
      encoder: this.encoder,
      instancesOf: (service) => this.endpoints.get(service),
      beforeGroup: this.opts.beforeGroup,
    });
    const next = new Map<string, GroupState>();
    const snapshots = new Map<string, Snapshot>();
    for (const [group, g] of compiled) {
      const state: GroupState = { ...g };
      const prev = this.groups.get(group);
      if (prev) keepUnchangedMaps(state, prev);
      next.set(group, state);
      snapshots.set(group, this.snapshotOf(state));
    }
    // A group that failed keeps its state and snapshot as they were (self-contained and checked
    // when they were made); one that never compiled gets none. The other groups move on.
    const failures = new Map<string, GroupFailureState>();
    for (const [group, f] of failed) {
      const kept = this.groups.get(group);
      if (kept) next.set(group, kept);
      failures.set(group, { since: this.failures.get(group)?.since ?? new Date(), errors: f.errors, servingLastGood: kept !== undefined });
      this.opts.logger.warn(
        { group, err: f.cause.message, servingLastGood: kept !== undefined },
        'proxy group could not be compiled; it keeps its last good configuration',
      );
    }
    this.failures = failures;
    this.model = model;
    this.groups = next;
    for (const [group, snap] of snapshots) this.opts.cache.set(group, snap);
    for (const group of this.opts.cache.groupNames()) if (!next.has(group)) this.opts.cache.delete(group);
    this.encoder.sweep();
  }

  private snapshotOf(state: GroupState): Snapshot {
    return new Snapshot(groupResources(state));
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

  /** Groups whose last compile failed (SB_TRANSLATE), by name: since when, why, and whether an earlier snapshot is served. */
  get failedGroups(): ReadonlyMap<string, GroupFailureState> {
    return this.failures;
  }

  private groupFailureErrors(): PolicyError[] {
    return [...this.failures.values()].flatMap((f) => f.errors);
  }

  /** Every group's IR, for tools that explain or diff configuration. */
  irGroups(): ReadonlyMap<string, IRProxyConfig> {
    return new Map([...this.groups].map(([k, v]) => [k, v.ir]));
  }
}
