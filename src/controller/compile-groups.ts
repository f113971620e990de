// What each proxy group gets, in one place: model -> IR (translate: routes, policies, JWT checks,
// Mesh tracing, access logging) -> Envoy resources (listeners, routes, clusters, endpoints, the
// policies' secrets and the mesh trust bundle), checked for consistency. `serve` (the pipeline),
// `compile`, `diff`, `explain` (CLI; the admin API's explains the pipeline's IR) and the golden
// tests all call compileGroups, so what they show is what a connected proxy receives (but for its
// own identity certificate, which is issued per proxy when its stream asks for it;
// test/xds/compile-equals-serve.test.ts checks it byte for byte).
import type { Instance, IRProxyConfig } from '../ir/types.js';
import { TRUST_BUNDLE_SECRET } from '../ir/types.js';
import type { Model } from '../model/model.js';
import { staticInstances } from '../sources/endpoints.js';
import { translate, type AccessLogSettings } from '../translate/gateway.js';
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
  const enc = opts.encoder ?? new EncodeCache();
  const instancesOf = opts.instancesOf ?? staticInstancesOf(model);
  const irs = translate(model, opts.groups ?? [], { authz: opts.authz, rateLimit: opts.rateLimit, jwtKeys: opts.jwtKeys, jwtFastPath: opts.jwtFastPath, jwtFastPathModule: opts.jwtFastPathModule, accessLog: opts.accessLog });
  const out = new Map<string, CompiledGroup>();
  for (const [group, ir] of irs) out.set(group, compileGroupIR(ir, { instancesOf, trustBundlePem: opts.trustBundlePem, encoder: enc }));
  return out;
}

/**
 * The IR -> Envoy stage for one group, as compileGroups runs it on each group's IR (the golden
 * tests run it on the committed IR goldens). Throws InconsistentGroupError as compileGroups does.
 */
export function compileGroupIR(ir: IRProxyConfig, opts: Pick<CompileGroupsOptions, 'trustBundlePem' | 'encoder'> & { instancesOf: (service: string) => readonly Instance[] }): CompiledGroup {
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
  for (const l of ir.listeners) for (const v of l.routeConfig.virtualHosts) for (const r of v.routes) if (r.action.kind === 'forward') for (const b of r.action.backends) clustersUsed.add(b.cluster);
  return {
    routeConfigs: ir.listeners.map((l) => l.routeConfig.name),
    clustersUsed,
    edsClusters: ir.clusters.filter((c) => !c.static).map((c) => c.name),
    secretsUsed: ir.listeners.flatMap((l) => (l.tls ? [l.tls.secretName] : [])),
  };
}
