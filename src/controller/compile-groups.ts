// What each proxy group gets, in one place: model -> IR (translate: routes, policies, JWT checks,
// Mesh tracing, access logging) -> Envoy resources (listeners, routes, clusters, endpoints, the
// policies' secrets and the mesh trust bundle), checked for consistency. `serve` (the pipeline),
// `compile`, `diff`, `explain` (CLI; the admin API's explains the pipeline's IR) and the golden
// tests all call compileGroups, so what they show is what a connected proxy receives (but for its
// own identity certificate, which is issued per proxy when its stream asks for it;
// test/xds/compile-equals-serve.test.ts checks it byte for byte).
import type { Instance, IRProxyConfig } from '../ir/types.js';
import { parseGatewayGroup, routeClusters, TRUST_BUNDLE_SECRET } from '../ir/types.js';
import type { Model } from '../model/model.js';
import { staticInstances } from '../sources/endpoints.js';
import { ErrorCode, type PolicyError } from '../errors.js';
import { groupKeys, groupSources, translateGroup, type AccessLogSettings } from '../translate/gateway.js';
import type { AuthzEndpoint, JwtKeysOf } from '../translate/jwt.js';
import type { RateLimitEndpoint } from '../translate/ratelimit.js';
import { checkConsistency, Snapshot } from '../xds/cache/snapshot-cache.js';
import { EncodeCache, type Resource } from '../xds/resources/resource.js';
import { PUSH_ORDER, SHORT_NAME, TypeUrl } from '../xds/resources/type-urls.js';
import { configResources, endpointsResource, type ResourceMap } from '../xds/translator/index.js';

export type { AccessLogSettings };

/** `serve`'s default: every HTTP listener reports every request (SERVE_SETTINGS.accessLogSampling). */
export const DEFAULT_ACCESS_LOG: AccessLogSettings = { successSamplePercent: 100 };

export interface CompileGroupsOptions {
  /** Sidecar groups and `+jwt-module` variants proxies asked for; every gateway's group is always built. */
  groups?: Iterable<string>;
  /** Access logging on every HTTP listener; absent: off (`--access-log-sampling off`). */
  accessLog?: AccessLogSettings;
  /** Where proxies reach the ext_authz service (default: DEFAULT_AUTHZ_ENDPOINT). */
  authz?: AuthzEndpoint;
  /** Where proxies reach the rate-limit service (default: DEFAULT_RATELIMIT_ENDPOINT). */
  rateLimit?: RateLimitEndpoint;
  /** The keys each JWTPolicy verifies with now (default: keys written in the policy only). */
  jwtKeys?: JwtKeysOf;
  /** false: every JWT check goes to the ext_authz service. */
  jwtFastPath?: boolean;
  /** Every group runs the JWT fast path in Signalbox's compiled Envoy module. */
  jwtFastPathModule?: boolean;
  /** The mesh CA's trust bundle (PEM): groups whose proxies hold an identity get it as a secret. Absent: no trust bundle. */
  trustBundlePem?: string;
  /** Encodes resources once per content (default: a new cache). */
  encoder?: EncodeCache;
  /** The instances of a service (the endpoint store); default: the model's static endpoints. */
  instancesOf?: (service: string) => readonly Instance[];
  /**
   * Called before each group is translated; what it throws fails that group like a translation
   * error. Tests use it to break one group's translation on purpose (see SIGNALBOX_FAULT_TRANSLATE_ROUTE).
   */
  beforeGroup?: (group: string, model: Model) => void;
}

/** A group that could not be compiled: why, and the errors that say so on its policy documents. */
export interface GroupFailure {
  group: string;
  /** What was thrown (an InconsistentGroupError for a failed consistency check). */
  cause: Error;
  /** SB_TRANSLATE on each policy document the group is built from, naming the group. */
  errors: PolicyError[];
}

/** Every group's outcome: the ones compiled and the ones that failed, each on its own. */
export interface SettledGroups {
  groups: Map<string, CompiledGroup>;
  failed: Map<string, GroupFailure>;
}

/** One group's compiled configuration. The IR is never changed after translation. */
export interface CompiledGroup {
  ir: IRProxyConfig;
  /** Listeners, routes, clusters and the policies' secrets. */
  config: ResourceMap;
  /** ClusterLoadAssignments by cluster (rebuilt alone when endpoints change). */
  endpoints: Map<string, Resource>;
  /** The mesh trust bundle (SDS), for groups with an identity; each proxy's own certificate is made per stream. */
  identity: Map<string, Resource>;
}

/** The proxies of a group get a configuration that references something missing. */
export class InconsistentGroupError extends Error {
  constructor(
    readonly group: string,
    readonly problems: string[],
  ) {
    super(`${group}: ${problems.join('; ')}`);
  }
}

/**
 * Every proxy group's configuration for a valid model. Throws InconsistentGroupError (and
 * returns nothing) when a group would reference a route configuration, cluster, endpoint set or
 * secret it does not get.
 */
export function compileGroups(model: Model, opts: CompileGroupsOptions = {}): Map<string, CompiledGroup> {
  const { groups, failed } = compileGroupsSettled(model, opts);
  const first = failed.values().next().value;
  if (first) throw first.cause;
  return groups;
}

/**
 * Every proxy group's configuration for a valid model, each group on its own: a group whose
 * translation throws, or whose result fails the consistency check, is listed in `failed` with
 * SB_TRANSLATE errors on the policy documents it is built from, and the other groups are compiled
 * as if it did not exist. Nothing is shared between groups but encoded bytes of equal content.
 */
export function compileGroupsSettled(model: Model, opts: CompileGroupsOptions = {}): SettledGroups {
  const enc = opts.encoder ?? new EncodeCache();
  const instancesOf = opts.instancesOf ?? staticInstancesOf(model);
  const translateOpts = {
    authz: opts.authz,
    rateLimit: opts.rateLimit,
    jwtKeys: opts.jwtKeys,
    jwtFastPath: opts.jwtFastPath,
    jwtFastPathModule: opts.jwtFastPathModule,
    accessLog: opts.accessLog,
  };
  const groups = new Map<string, CompiledGroup>();
  const failed = new Map<string, GroupFailure>();
  for (const [group, key] of groupKeys(model, opts.groups ?? [])) {
    try {
      opts.beforeGroup?.(group, model);
      const ir = translateGroup(model, key, translateOpts);
      if (!ir) continue;
      groups.set(group, compileGroupIR(ir, { instancesOf, trustBundlePem: opts.trustBundlePem, encoder: enc }));
    } catch (e) {
      const cause = e instanceof Error ? e : new Error(String(e));
      const what =
        cause instanceof InconsistentGroupError
          ? `its configuration would be inconsistent: ${cause.problems.join('; ')}`
          : `translation failed: ${cause.message}`;
      const message = `proxy group "${group}" cannot be compiled (${what}); it is built from this document`;
      const sources = groupSources(model, key);
      const errors: PolicyError[] = sources.length
        ? sources.map((s) => ({ code: ErrorCode.TRANSLATE, file: s.file, doc: s.doc, message, group }))
        : [{ code: ErrorCode.TRANSLATE, file: group, message, group }];
      failed.set(group, { group, cause, errors });
    }
  }
  return { groups, failed };
}

/**
 * The IR -> Envoy stage for one group, as compileGroups runs it on each group's IR (the golden
 * tests run it on the committed IR goldens). Throws InconsistentGroupError as compileGroups does.
 */
export function compileGroupIR(
  ir: IRProxyConfig,
  opts: Pick<CompileGroupsOptions, 'trustBundlePem' | 'encoder'> & { instancesOf: (service: string) => readonly Instance[] },
): CompiledGroup {
  const enc = opts.encoder ?? new EncodeCache();
  const endpoints = new Map<string, Resource>();
  for (const c of ir.clusters) if (!c.static) endpoints.set(c.name, endpointsResource(c, opts.instancesOf(c.service), enc));
  const compiled: CompiledGroup = { ir, config: configResources(ir, enc), endpoints, identity: trustBundle(ir, opts.trustBundlePem, enc) };
  const problems = checkConsistency(new Snapshot(groupResources(compiled)), refsOf(ir));
  if (problems.length) throw new InconsistentGroupError(ir.group, problems);
  return compiled;
}

/** Everything a group's snapshot holds, by type (what its proxies are served). */
export function groupResources(g: Pick<CompiledGroup, 'config' | 'endpoints' | 'identity'>): ResourceMap {
  const resources: ResourceMap = new Map(g.config);
  resources.set(TypeUrl.Endpoint, g.endpoints);
  resources.set(TypeUrl.Secret, new Map([...(g.config.get(TypeUrl.Secret) ?? []), ...g.identity]));
  return resources;
}

/** A group's resources as printed by `compile` and compared by `diff`: per type, sorted by name; secrets redacted. */
export type PrintedGroup = Record<string, { name: string; version: string; resource: unknown }[]>;

export function printedGroup(g: Pick<CompiledGroup, 'config' | 'endpoints' | 'identity'>): PrintedGroup {
  const resources = groupResources(g);
  const out: PrintedGroup = {};
  for (const t of PUSH_ORDER) {
    const list = [...(resources.get(t)?.values() ?? [])].sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
    out[SHORT_NAME[t]] = list.map((r) => ({ name: r.name, version: r.version, resource: r.printable }));
  }
  return out;
}

/** The instances of each service as its static endpoints give them (compileGroups' default). */
export function staticInstancesOf(model: Model): (service: string) => readonly Instance[] {
  const cache = new Map<string, readonly Instance[]>();
  return (service) => {
    let list = cache.get(service);
    if (!list) {
      const svc = model.services.get(service);
      list = svc?.endpoints ? staticInstances(svc) : [];
      cache.set(service, list);
    }
    return list;
  };
}

function trustBundle(ir: IRProxyConfig, pem: string | undefined, enc: EncodeCache): Map<string, Resource> {
  const out = new Map<string, Resource>();
  if (pem === undefined || !ir.identity) return out;
  const bundle = { name: TRUST_BUNDLE_SECRET, validation_context: { trusted_ca: { inline_string: pem } } };
  out.set(TRUST_BUNDLE_SECRET, enc.make(TypeUrl.Secret, TRUST_BUNDLE_SECRET, bundle));
  return out;
}

/** What a group's resources reference, for checkConsistency. */
function refsOf(ir: IRProxyConfig) {
  const clustersUsed = new Set<string>();
  for (const l of ir.listeners) for (const v of l.routeConfig.virtualHosts) for (const c of routeClusters(v.routes)) clustersUsed.add(c);
  return {
    routeConfigs: ir.listeners.map((l) => l.routeConfig.name),
    clustersUsed,
    edsClusters: ir.clusters.filter((c) => !c.static).map((c) => c.name),
    secretsUsed: ir.listeners.flatMap((l) => (l.tls ? [l.tls.secretName] : [])),
  };
}

/**
 * Fault injection for tests (`serve` reads SIGNALBOX_FAULT_TRANSLATE_ROUTE): a beforeGroup hook under
 * which translating a gateway's group fails while the HTTPRoute `route` is attached to it. Nothing
 * else is affected, so a test can break one group with an ordinary policy edit.
 */
export function routeFault(route: string): NonNullable<CompileGroupsOptions['beforeGroup']> {
  return (group, model) => {
    const gateway = parseGatewayGroup(group);
    if (gateway === undefined) return;
    if (model.routes.some((r) => r.name === route && r.spec.parentRefs.some((p) => p.kind === 'Gateway' && p.name === gateway))) {
      throw new Error(`fault injected: HTTPRoute "${route}" is attached (SIGNALBOX_FAULT_TRANSLATE_ROUTE)`);
    }
  };
}

/** The fault SIGNALBOX_FAULT_TRANSLATE_ROUTE asks for (serve, compile, diff, explain), or undefined. */
export function routeFaultFromEnv(env: NodeJS.ProcessEnv = process.env): CompileGroupsOptions['beforeGroup'] {
  const route = env.SIGNALBOX_FAULT_TRANSLATE_ROUTE;
  return route ? routeFault(route) : undefined;
}
