// TrafficPolicy and RateLimitPolicy: resolve their targets, merge several policies on one target
// field by field (two that set the same field conflict, naming both files), and work out, for each
// HTTPRoute rule, the timeout and retries it inherits from the TrafficPolicy of its backends.
// Precedence: route settings > TrafficPolicy > Mesh defaults > built-in defaults.
import { parseDuration, type Mesh, type RateLimitPolicy, type TrafficPolicy } from '../api/v1alpha1/index.js';
import { GLOBAL_UNIT_MS, type GlobalRateLimitKey, type GlobalUnit, type LocalRateLimit } from '../api/v1alpha1/ratelimitpolicy.js';
import { TRAFFIC_FIELDS, type TrafficField } from '../api/v1alpha1/trafficpolicy.js';
import { ErrorCode } from '../errors.js';
import type { LoadedDoc, SourceRef } from '../api/documents.js';
import { didYouMean } from '../util/did-you-mean.js';
import { retrySettings, type GatewayModel, type MeshModel, type RetrySettings, type RouteModel, type ServiceModel } from './model.js';

/** A setting and the policy document it came from. */
export interface Sourced<T> {
  value: T;
  kind: 'TrafficPolicy' | 'RateLimitPolicy' | 'Mesh';
  policy: string;
  source: SourceRef;
}

export type HashOn = { header: string } | { sourceIP: true };

export interface LoadBalancerSettings {
  type: 'RoundRobin' | 'LeastRequest' | 'Random' | 'RingHash';
  hashOn?: HashOn;
}

export interface CircuitBreakerSettings {
  maxConnections?: number;
  maxPendingRequests?: number;
  maxRequests?: number;
  maxRetries?: number;
}

export interface OutlierDetectionSettings {
  consecutive5xx: number;
  intervalMs: number;
  baseEjectionTimeMs: number;
  maxEjectionPercent: number;
}

export interface HealthCheckSettings {
  path: string;
  intervalMs: number;
  timeoutMs: number;
  unhealthyThreshold: number;
  healthyThreshold: number;
}

/** The merged TrafficPolicy settings of one Service. */
export interface TrafficPolicyModel {
  service: string;
  connectTimeoutMs?: Sourced<number>;
  timeoutMs?: Sourced<number>;
  retries?: Sourced<RetrySettings>;
  loadBalancer?: Sourced<LoadBalancerSettings>;
  circuitBreaker?: Sourced<CircuitBreakerSettings>;
  outlierDetection?: Sourced<OutlierDetectionSettings>;
  healthCheck?: Sourced<HealthCheckSettings>;
}

export type RateLimitTargetKind = 'Gateway' | 'HTTPRoute' | 'Service';

/** A local limit on its target: the policy's settings as parsed (LocalRateLimit), not copied by name. */
export interface RateLimitModel {
  policy: string;
  target: { kind: RateLimitTargetKind; name: string; sectionName?: string };
  limit: LocalRateLimit;
  source: SourceRef;
}

/**
 * What a global limit counts by, resolved: a claim names the header its JWTPolicy forwards it
 * into (set once the JWTPolicies are known, see resolveGlobalClaims).
 */
export type GlobalKeyModel = Exclude<GlobalRateLimitKey, { claim: string }> | { claim: string; header: string };

export interface GlobalLimitModel {
  /** `<policy>/<index>`: the descriptor Envoy sends for it and the rate-limit service looks up. */
  id: string;
  requests: number;
  unit: GlobalUnit;
  windowMs: number;
  by?: GlobalKeyModel;
}

/** A RateLimitPolicy's global section: counters shared by every proxy (Redis). */
export interface GlobalRateLimitModel {
  policy: string;
  target: { kind: RateLimitTargetKind; name: string; sectionName?: string };
  /** What the service answers while Redis cannot be reached (default allow, see docs/policy-api.md). */
  failureMode: 'allow' | 'deny';
  limits: GlobalLimitModel[];
  source: SourceRef;
}

/** What one HTTPRoute rule inherits because it said nothing itself. */
export interface RuleDefaults {
  timeoutMs?: Sourced<number>;
  retries?: Sourced<RetrySettings>;
}

export interface PoliciesModel {
  /** Merged TrafficPolicy settings by Service name. */
  traffic: Map<string, TrafficPolicyModel>;
  /** RateLimitPolicies' local limits by target, keyed `<kind>/<name>`. */
  rateLimits: Map<string, RateLimitModel>;
  /** RateLimitPolicies' global limits by target, keyed as rateLimits. */
  globalRateLimits: Map<string, GlobalRateLimitModel>;
  /** The Mesh defaults a Mesh document actually wrote (for provenance; absent: built-in). */
  meshDefaults: { timeoutMs?: Sourced<number>; retries?: Sourced<RetrySettings> };
}

type Report = (d: LoadedDoc, path: (string | number)[], code: ErrorCode, message: string) => void;

/** `<kind>/<name>`, or `<kind>/<name>/<section>` for one Gateway listener or one HTTPRoute rule. */
export function rateLimitKey(kind: RateLimitTargetKind, name: string, sectionName?: string): string {
  return sectionName ? `${kind}/${name}/${sectionName}` : `${kind}/${name}`;
}

function where(d: LoadedDoc): string {
  return `${d.source.file}#${d.source.doc}`;
}

function trafficValue(field: TrafficField, spec: TrafficPolicy['spec']): unknown {
  switch (field) {
    case 'connectTimeout':
      return parseDuration(spec.connectTimeout!)!;
    case 'timeout':
      return parseDuration(spec.timeout!)!;
    case 'retries':
      return retrySettings(spec.retries)!;
    case 'loadBalancer':
      return { type: spec.loadBalancer!.type, ...(spec.loadBalancer!.hashOn ? { hashOn: spec.loadBalancer!.hashOn } : {}) } satisfies LoadBalancerSettings;
    case 'circuitBreaker': {
      const c = spec.circuitBreaker!;
      const out: CircuitBreakerSettings = {};
      if (c.maxConnections !== undefined) out.maxConnections = c.maxConnections;
      if (c.maxPendingRequests !== undefined) out.maxPendingRequests = c.maxPendingRequests;
      if (c.maxRequests !== undefined) out.maxRequests = c.maxRequests;
      if (c.maxRetries !== undefined) out.maxRetries = c.maxRetries;
      return out;
    }
    case 'outlierDetection': {
      const o = spec.outlierDetection!;
      return {
        consecutive5xx: o.consecutive5xx,
        intervalMs: parseDuration(o.interval)!,
        baseEjectionTimeMs: parseDuration(o.baseEjectionTime)!,
        maxEjectionPercent: o.maxEjectionPercent,
      } satisfies OutlierDetectionSettings;
    }
    case 'healthCheck': {
      const h = spec.healthCheck!;
      return {
        path: h.path,
        intervalMs: parseDuration(h.interval)!,
        timeoutMs: parseDuration(h.timeout)!,
        unhealthyThreshold: h.unhealthyThreshold,
        healthyThreshold: h.healthyThreshold,
      } satisfies HealthCheckSettings;
    }
  }
}

const MODEL_KEY: Record<TrafficField, keyof Omit<TrafficPolicyModel, 'service'>> = {
  connectTimeout: 'connectTimeoutMs',
  timeout: 'timeoutMs',
  retries: 'retries',
  loadBalancer: 'loadBalancer',
  circuitBreaker: 'circuitBreaker',
  outlierDetection: 'outlierDetection',
  healthCheck: 'healthCheck',
};

function resolveTraffic(docs: LoadedDoc[], services: ReadonlyMap<string, ServiceModel>, err: Report): Map<string, TrafficPolicyModel> {
  const out = new Map<string, TrafficPolicyModel>();
  const owner = new Map<string, LoadedDoc>(); // `<service>/<field>` -> the document that set it
  for (const d of docs) {
    const spec = (d.value as TrafficPolicy).spec;
    const target = spec.targetRef.name;
    const svc = services.get(target);
    if (!svc) {
      err(d, ['spec', 'targetRef', 'name'], ErrorCode.UNKNOWN_REFERENCE, `unknown Service "${target}"${didYouMean(target, services.keys())}`);
      continue;
    }
    if (svc.protocol === 'tcp') {
      for (const f of ['timeout', 'retries', 'healthCheck'] as const) {
        if (spec[f] !== undefined) err(d, ['spec', f], ErrorCode.CONFLICT, `Service "${target}" speaks tcp; ${f} needs an HTTP service`);
      }
      if (spec.loadBalancer?.hashOn && 'header' in spec.loadBalancer.hashOn)
        err(d, ['spec', 'loadBalancer', 'hashOn'], ErrorCode.CONFLICT, `Service "${target}" speaks tcp; hash on sourceIP instead of a header`);
    }
    const model = out.get(target) ?? { service: target };
    for (const field of TRAFFIC_FIELDS) {
      if (spec[field] === undefined) continue;
      const key = `${target}/${field}`;
      const first = owner.get(key);
      if (first) {
        err(
          d,
          ['spec', field],
          ErrorCode.CONFLICT,
          `conflicts with TrafficPolicy "${first.name}" in ${where(first)}, which also sets ${field} for Service "${target}"; set each field in one policy only`,
        );
        continue;
      }
      owner.set(key, d);
      (model as unknown as Record<string, Sourced<unknown>>)[MODEL_KEY[field]] = {
        value: trafficValue(field, spec),
        kind: 'TrafficPolicy',
        policy: d.name,
        source: d.source,
      };
    }
    out.set(target, model);
  }
  return out;
}

function resolveRateLimits(
  docs: LoadedDoc[],
  known: { services: ReadonlyMap<string, ServiceModel>; gateways: ReadonlyMap<string, GatewayModel>; routes: readonly RouteModel[] },
  err: Report,
): { local: Map<string, RateLimitModel>; global: Map<string, GlobalRateLimitModel> } {
  const out = new Map<string, RateLimitModel>();
  const global = new Map<string, GlobalRateLimitModel>();
  const owner = { local: new Map<string, LoadedDoc>(), global: new Map<string, LoadedDoc>() };
  const names: Record<RateLimitTargetKind, string[]> = {
    Gateway: [...known.gateways.keys()],
    HTTPRoute: known.routes.map((r) => r.name),
    Service: [...known.services.keys()],
  };
  for (const d of docs) {
    const spec = (d.value as RateLimitPolicy).spec;
    const { kind, name, sectionName } = spec.targetRef;
    if (!names[kind].includes(name)) {
      err(d, ['spec', 'targetRef', 'name'], ErrorCode.UNKNOWN_REFERENCE, `unknown ${kind} "${name}"${didYouMean(name, names[kind])}`);
      continue;
    }
    if (sectionName !== undefined) {
      const sections =
        kind === 'Gateway'
          ? known.gateways.get(name)!.listeners.map((l) => l.name)
          : known.routes.find((r) => r.name === name)!.spec.rules.flatMap((r) => (r.name ? [r.name] : []));
      if (!sections.includes(sectionName)) {
        err(
          d,
          ['spec', 'targetRef', 'sectionName'],
          ErrorCode.UNKNOWN_REFERENCE,
          `${kind} "${name}" has no ${kind === 'Gateway' ? 'listener' : 'rule'} named "${sectionName}"${didYouMean(sectionName, sections)}`,
        );
        continue;
      }
    }
    if (kind === 'Service' && known.services.get(name)!.protocol === 'tcp') {
      err(d, ['spec', 'targetRef', 'name'], ErrorCode.CONFLICT, `Service "${name}" speaks tcp; a rate limit counts HTTP requests`);
      continue;
    }
    const key = rateLimitKey(kind, name, sectionName);
    const target = { kind, name, ...(sectionName ? { sectionName } : {}) };
    const what = sectionName ? `${kind} "${name}" ${kind === 'Gateway' ? 'listener' : 'rule'} "${sectionName}"` : `${kind} "${name}"`;
    for (const section of ['local', 'global'] as const) {
      if (spec[section] === undefined) continue;
      const first = owner[section].get(key);
      if (first) {
        err(
          d,
          ['spec', section],
          ErrorCode.CONFLICT,
          `conflicts with RateLimitPolicy "${first.name}" in ${where(first)}, which also sets ${section} for ${what}; one ${section} limit per target`,
        );
        continue;
      }
      owner[section].set(key, d);
      if (section === 'local') {
        out.set(key, { policy: d.name, target, limit: spec.local!, source: d.source });
        continue;
      }
      const g = spec.global!;
      const seen = new Map<string, number>();
      const limits: GlobalLimitModel[] = [];
      g.limits.forEach((l, i) => {
        const same = JSON.stringify([l.per, l.by ?? null]);
        const before = seen.get(same);
        if (before !== undefined) {
          err(
            d,
            ['spec', 'global', 'limits', i],
            ErrorCode.CONFLICT,
            `counts per ${l.per} by the same key as limits[${before}]; give one limit per window and key`,
          );
          return;
        }
        seen.set(same, i);
        // A claim's header is filled in once the JWTPolicies are known.
        const by: GlobalKeyModel | undefined =
          l.by === undefined
            ? undefined
            : 'claim' in l.by
              ? { claim: l.by.claim, header: '' }
              : 'header' in l.by
                ? { header: l.by.header.toLowerCase() }
                : l.by;
        limits.push({
          id: `${d.name}/${i}`,
          requests: l.requests,
          unit: l.per as GlobalUnit,
          windowMs: GLOBAL_UNIT_MS[l.per as GlobalUnit],
          ...(by ? { by } : {}),
        });
      });
      global.set(key, { policy: d.name, target, failureMode: g.failureMode ?? 'allow', limits, source: d.source });
    }
  }
  return { local: out, global };
}

/**
 * A global limit keyed by a JWT claim counts by the header a JWTPolicy on the same target forwards
 * that claim into (its `forwardClaims`). Only a JWTPolicy on that very target (or on all of it)
 * will do: elsewhere the header would be whatever the client sent, and a client could pick its own
 * counter. `forwarders(kind, name, sectionName)` gives, in name order, the forwardClaims of the
 * JWTPolicies that cover the target.
 */
export function resolveGlobalClaims(
  global: ReadonlyMap<string, GlobalRateLimitModel>,
  docs: readonly LoadedDoc[],
  forwarders: (kind: RateLimitTargetKind, name: string, sectionName?: string) => { policy: string; forwardClaims: { claim: string; header: string }[] }[],
  err: Report,
): void {
  for (const g of global.values()) {
    g.limits.forEach((l, i) => {
      if (!l.by || !('claim' in l.by)) return;
      const claim = l.by.claim;
      const policies = forwarders(g.target.kind, g.target.name, g.target.sectionName);
      const found = policies.flatMap((p) => p.forwardClaims.filter((f) => f.claim === claim).map((f) => f.header))[0];
      if (found !== undefined) {
        l.by = { claim, header: found };
        return;
      }
      const d = docs.find((x) => x.kind === 'RateLimitPolicy' && x.name === g.policy);
      if (!d) return;
      const target = `${g.target.kind} "${g.target.name}"${g.target.sectionName ? ` ${g.target.kind === 'Gateway' ? 'listener' : 'rule'} "${g.target.sectionName}"` : ''}`;
      const hint = policies.length
        ? `JWTPolicy ${policies.map((p) => `"${p.policy}"`).join(', ')} on it forwards ${policies.some((p) => p.forwardClaims.length) ? `only ${[...new Set(policies.flatMap((p) => p.forwardClaims.map((f) => `"${f.claim}"`)))].join(', ')}` : 'no claim'}`
        : 'no JWTPolicy targets it';
      err(
        d,
        ['spec', 'global', 'limits', i, 'by', 'claim'],
        ErrorCode.UNKNOWN_REFERENCE,
        `no JWTPolicy on ${target} forwards claim "${claim}" (${hint}); add forwardClaims: [{ claim: ${claim}, header: x-... }] to a JWTPolicy with the same targetRef`,
      );
    });
  }
}

function sameJson(a: unknown, b: unknown): boolean {
  return JSON.stringify(a) === JSON.stringify(b);
}

/**
 * The timeout and retries each rule of `route` inherits from its backends' TrafficPolicies (for
 * fields the rule leaves out). Backends whose policies disagree make the rule ambiguous: an error.
 */
function ruleDefaultsOf(
  d: LoadedDoc,
  route: RouteModel,
  mesh: MeshModel,
  traffic: ReadonlyMap<string, TrafficPolicyModel>,
  err: Report,
): (RuleDefaults | undefined)[] {
  return route.spec.rules.map((rule, ri) => {
    if (!(rule.backendRefs ?? []).some((b) => b.weight > 0)) return undefined;
    const out: RuleDefaults = {};
    // Without TrafficPolicies there is nothing to inherit (the common case: no list to build per rule).
    const services = traffic.size === 0 ? [] : [...new Set((rule.backendRefs ?? []).filter((b) => b.weight > 0).map((b) => b.name))].sort();
    for (const field of services.length ? (['timeoutMs', 'retries'] as const) : []) {
      const ruleSets = field === 'timeoutMs' ? rule.timeout !== undefined : rule.retries !== undefined;
      if (ruleSets) continue;
      const values = services.map((s) => traffic.get(s)?.[field]);
      const given = values.filter((v): v is NonNullable<typeof v> => v !== undefined);
      if (given.length === 0) continue;
      const differ = values.some((v) => !sameJson(v?.value, given[0]!.value));
      if (differ) {
        const what = field === 'timeoutMs' ? 'timeout' : 'retries';
        const detail = services
          .map(
            (s, i) => `${s}: ${values[i] ? `TrafficPolicy "${values[i]!.policy}" (${values[i]!.source.file}#${values[i]!.source.doc})` : 'no TrafficPolicy'}`,
          )
          .join(', ');
        err(
          d,
          ['spec', 'rules', ri, 'backendRefs'],
          ErrorCode.CONFLICT,
          `the backends of this rule get different ${what} from their TrafficPolicies (${detail}); set ${what} on the rule`,
        );
        continue;
      }
      (out as Record<string, unknown>)[field] = given[0];
    }
    // The effective per-try timeout must fit in the effective timeout, wherever each came from.
    // (Where each came from is written out only for a rule that breaks this: most rules have no per-try timeout.)
    const retries = rule.retries ? retrySettings(rule.retries) : out.retries ? out.retries.value : mesh.defaults.retries;
    const perTry = retries?.perTryTimeoutMs;
    if (perTry !== undefined) {
      const timeout = rule.timeout
        ? { ms: parseDuration(rule.timeout)!, from: 'the rule' }
        : out.timeoutMs
          ? { ms: out.timeoutMs.value, from: `TrafficPolicy "${out.timeoutMs.policy}" (${out.timeoutMs.source.file}#${out.timeoutMs.source.doc})` }
          : { ms: mesh.defaults.timeoutMs, from: mesh.source ? `Mesh "${mesh.name}"` : 'the built-in default' };
      const retriesFrom = rule.retries
        ? 'the rule'
        : out.retries
          ? `TrafficPolicy "${out.retries.policy}" (${out.retries.source.file}#${out.retries.source.doc})`
          : `Mesh "${mesh.name}"`;
      if (perTry > timeout.ms && timeout.from !== retriesFrom) {
        err(
          d,
          ['spec', 'rules', ri],
          ErrorCode.CONFLICT,
          `perTryTimeout ${perTry}ms (from ${retriesFrom}) is longer than the timeout ${timeout.ms}ms (from ${timeout.from})`,
        );
      }
    }
    return Object.keys(out).length ? out : undefined;
  });
}

/**
 * Resolves TrafficPolicies and RateLimitPolicies against the model built so far, reports every
 * problem through `err`, and records on each RouteModel what its rules inherit.
 */
/**
 * HTTPRoute specs (frozen, handed out again only while their file is unchanged) that inherit nothing
 * and passed ruleDefaultsOf's checks in a model without TrafficPolicies, by the Mesh settings those
 * checks read: while those are the same, checking again would give the same (nothing, no error).
 */
const inheritsNothing = new WeakMap<object, string>();
const errorCount = { n: 0 };
function counted(err: Report): Report {
  return (...args) => {
    errorCount.n++;
    err(...args);
  };
}

export function resolvePolicies(
  docs: readonly LoadedDoc[],
  known: { mesh: MeshModel; services: ReadonlyMap<string, ServiceModel>; gateways: ReadonlyMap<string, GatewayModel>; routes: RouteModel[] },
  err: Report,
): PoliciesModel {
  // In file order (the policies only: sorting every document cost more than the rest of this step).
  const inOrder = (kind: LoadedDoc['kind']) =>
    docs.filter((d) => d.kind === kind).sort((a, b) => (a.source.file < b.source.file ? -1 : a.source.file > b.source.file ? 1 : a.source.doc - b.source.doc));
  const traffic = resolveTraffic(inOrder('TrafficPolicy'), known.services, err);
  const { local: rateLimits, global: globalRateLimits } = resolveRateLimits(inOrder('RateLimitPolicy'), known, err);
  const routeDocs = new Map(docs.filter((d) => d.kind === 'HTTPRoute').map((d) => [d.name, d]));
  // Without TrafficPolicies a rule inherits nothing, and what is checked reads the rule and the Mesh only.
  const meshKey = traffic.size === 0 ? JSON.stringify([known.mesh.name, known.mesh.source ?? null, known.mesh.defaults]) : undefined;
  for (const route of known.routes) {
    const d = routeDocs.get(route.name);
    if (!d) continue;
    if (meshKey !== undefined && inheritsNothing.get(route.spec) === meshKey) continue;
    const errorsBefore = errorCount.n;
    const defaults = ruleDefaultsOf(d, route, known.mesh, traffic, counted(err));
    if (defaults.some((x) => x !== undefined)) route.policyDefaults = defaults;
    else if (meshKey !== undefined && errorCount.n === errorsBefore && Object.isFrozen(route.spec)) inheritsNothing.set(route.spec, meshKey);
  }
  const meshDoc = docs.find((d) => d.kind === 'Mesh');
  const meshSpec = (meshDoc?.value as Mesh | undefined)?.spec;
  const meshDefaults: PoliciesModel['meshDefaults'] = {};
  if (meshDoc && meshSpec?.defaults?.timeout)
    meshDefaults.timeoutMs = { value: known.mesh.defaults.timeoutMs, kind: 'Mesh', policy: meshDoc.name, source: meshDoc.source };
  if (meshDoc && meshSpec?.defaults?.retries && known.mesh.defaults.retries)
    meshDefaults.retries = { value: known.mesh.defaults.retries, kind: 'Mesh', policy: meshDoc.name, source: meshDoc.source };
  return { traffic, rateLimits, globalRateLimits, meshDefaults };
}
