// Resolves validated policy documents into one cross-referenced view of the mesh. Every broken
// reference or conflict becomes an error naming the file, document and field; a model is only
// produced when there are none.
import { parseDuration, type Gateway, type HTTPRoute, type Mesh, type Service } from '../api/v1alpha1/index.js';
import { ErrorCode, type PolicyError } from '../errors.js';
import type { LoadedDoc, PolicyFileResult, SourceRef } from '../api/documents.js';
import { didYouMean } from '../util/did-you-mean.js';
import { hostnameMatches } from './hostnames.js';
import { resolveAccessPolicies, type AccessModel } from './access.js';
import { resolveGlobalClaims, resolvePolicies, type PoliciesModel, type RuleDefaults } from './policies.js';
import { jwtPoliciesOn, resolveJwtPolicies, type JwtModel } from './jwt.js';

export type { PolicyFileResult, SourceRef };

export interface RetrySettings {
  attempts: number;
  perTryTimeoutMs?: number;
  retryOn: string[];
  retriableStatusCodes?: number[];
  backoff?: { baseIntervalMs: number; maxIntervalMs?: number };
}

export interface MeshModel {
  name: string;
  trustDomain: string;
  mtls: { mode: 'strict' | 'permissive' | 'disabled'; certTTLms: number };
  defaults: { timeoutMs: number; retries?: RetrySettings };
  /** Envoy tracing (Mesh.spec.tracing): OTLP over gRPC to this Service, sampling percent. */
  tracing?: { service: string; samplingPercent: number };
  source?: SourceRef;
}

export interface ServiceModel {
  name: string;
  protocol: Service['spec']['protocol'];
  port: number;
  endpoints?: NonNullable<Service['spec']['endpoints']>;
  consul?: NonNullable<Service['spec']['consul']>;
  subsets: { name: string; labels: Record<string, string> }[];
  source: SourceRef;
}

export interface GatewayListenerModel {
  name: string;
  port: number;
  protocol: 'HTTP' | 'HTTPS';
  hostnames: string[];
  /** PEM material read from the files the policy names. The key never leaves the gateway's own snapshot. */
  tls?: { certificateFile: string; certificatePem: string; privateKeyPem: string };
}

export interface GatewayModel {
  name: string;
  listeners: GatewayListenerModel[];
  source: SourceRef;
}

export interface RouteModel {
  name: string;
  spec: HTTPRoute['spec'];
  source: SourceRef;
  /** Per rule: the timeout and retries it inherits from TrafficPolicies (see policies.ts). */
  policyDefaults?: (RuleDefaults | undefined)[];
}

export interface Model {
  mesh: MeshModel;
  services: Map<string, ServiceModel>;
  gateways: Map<string, GatewayModel>;
  routes: RouteModel[];
  /** AccessPolicies by target Service. */
  access: Map<string, AccessModel>;
  /** TrafficPolicies by Service and RateLimitPolicies by target (see policies.ts). */
  policies: PoliciesModel;
  /** JWTPolicies by name and by target (see jwt.ts). */
  jwt?: JwtModel;
}

/** Built-in defaults, used where neither a route nor the Mesh says anything. */
export const BUILTIN_DEFAULTS = {
  trustDomain: 'signalbox.local',
  mtls: { mode: 'strict' as const, certTTLms: 24 * 3_600_000 },
  timeoutMs: 15_000,
};

export function retrySettings(r: NonNullable<Mesh['spec']['defaults']>['retries']): RetrySettings | undefined {
  if (!r) return undefined;
  return {
    attempts: r.attempts,
    perTryTimeoutMs: r.perTryTimeout ? parseDuration(r.perTryTimeout) : undefined,
    retryOn: r.retryOn ?? ['connect-failure', 'refused-stream', 'reset'],
    retriableStatusCodes: r.retriableStatusCodes,
    backoff: r.backoff
      ? { baseIntervalMs: parseDuration(r.backoff.baseInterval)!, maxIntervalMs: r.backoff.maxInterval ? parseDuration(r.backoff.maxInterval) : undefined }
      : undefined,
  };
}

function byName<T extends { name: string }>(a: T, b: T): number {
  return a.name < b.name ? -1 : a.name > b.name ? 1 : 0;
}

/**
 * The ServiceModel of each Service document, by the document's parsed value: the parse cache hands
 * the same value out again only while its file's text is unchanged, so an unchanged Service gives
 * the very same ServiceModel from one reload to the next, and what the translator builds from it
 * (its Clusters, see translate/mesh-identity.ts) is reused by identity. Frozen (what it holds of
 * the document is never changed either).
 */
const serviceModels = new WeakMap<object, ServiceModel>();

/**
 * HTTPRoute specs whose cross-references were checked and passed, with what the check read: each
 * Gateway's listeners (names and hostnames, as text) and each Service's model (the same frozen
 * object while its document is unchanged). A spec is frozen (routesOf in translate/routes.ts) and
 * handed out again only while its file's text is unchanged, so while all of these are the same
 * the check would pass again and is skipped: a one-route edit checks one route, not all of them.
 */
const checkedRoutes = new WeakMap<
  object,
  { file: string; doc: number; gateways: [string, string | undefined][]; services: [string, ServiceModel | undefined][] }
>();

function serviceModel(d: LoadedDoc<'Service'>): ServiceModel {
  const hit = serviceModels.get(d.value);
  if (hit && hit.name === d.name && hit.source.file === d.source.file && hit.source.doc === d.source.doc) return hit;
  const s = d.value.spec as Service['spec'];
  const subsets = (s.subsets ?? []).map((x) => Object.freeze({ name: x.name, labels: x.labels })).sort(byName);
  const model: ServiceModel = Object.freeze({
    name: d.name,
    protocol: s.protocol,
    port: s.port,
    endpoints: s.endpoints,
    consul: s.consul,
    subsets: Object.freeze(subsets) as ServiceModel['subsets'],
    source: d.source,
  });
  serviceModels.set(d.value, model);
  return model;
}

/**
 * The one message for every refused file reference: it must not tell a policy author whether a file
 * outside the policy directory (say the CA's root.key) exists, or what it is.
 */
export const POLICY_FILE_REFUSED = 'must be a relative path to a regular file inside the policy directory (at most 1 MiB)';

/**
 * Reads a file a policy names at document `d`, field `at`, reporting any problem there (refusals
 * with POLICY_FILE_REFUSED). undefined: it could not be had, and an error was reported.
 */
export type PolicyFileRead = (d: LoadedDoc, at: (string | number)[], rel: string) => Promise<string | undefined>;

/** The files policies name (TLS files, JWKS files), as the caller reads them: the model reads none itself. */
export interface PolicyFiles {
  /** The policy directory, where relative references resolve (recorded for JWKS files the authz service re-reads). */
  dir: string;
  read(rel: string): Promise<PolicyFileResult>;
}

export interface BuildResult {
  model?: Model;
  errors: PolicyError[];
}

export interface BuildOptions {
  /**
   * The control plane's data directory (CA and token keys). Files a policy names are refused when
   * they resolve under it, which matters when it sits inside the policy directory.
   */
  dataDir?: string;
  /**
   * More files or folders no policy may read (the CA key, the xDS server key, the admin token file...),
   * refused like dataDir: by path and real path, and for a file also by inode (a hard link to it).
   * Relative paths are taken from the working directory.
   */
  forbidden?: string[];
}

/**
 * Cross-references the documents. The files they name (TLS files, JWKS files) come from `files`,
 * which resolves them in the policy directory and confines them there (the file source's
 * policyFileReader); the caller wires it, so the model never touches the file system.
 */
export async function resolveModel(docs: LoadedDoc[], files: PolicyFiles, opts: BuildOptions = {}): Promise<BuildResult> {
  const errors: PolicyError[] = [];
  const baseDir = files.dir;
  const readFile = (rel: string) => files.read(rel);
  const err = (d: LoadedDoc, p: (string | number)[], code: ErrorCode, message: string) =>
    errors.push({
      code,
      file: d.source.file,
      doc: d.source.doc,
      path: p
        .map((s) => (typeof s === 'number' ? `[${s}]` : s))
        .join('.')
        .replace(/\.\[/g, '['),
      line: d.lineOf(p),
      message,
    });
  /** Every file a policy names is read through here: one set of rules, one refusal message. */
  const readPolicyFile: PolicyFileRead = async (d, at, rel) => {
    const got = await readFile(rel);
    if ('refused' in got) {
      err(d, at, ErrorCode.FILE_READ, POLICY_FILE_REFUSED);
      return undefined;
    }
    if ('error' in got) {
      err(d, at, ErrorCode.FILE_READ, `cannot read ${rel} (relative to the policy directory): ${got.error}`);
      return undefined;
    }
    return got.text;
  };

  // Names are unique per kind.
  const seen = new Map<string, LoadedDoc>();
  const unique: LoadedDoc[] = [];
  for (const d of docs) {
    const key = `${d.kind}/${d.name}`;
    const first = seen.get(key);
    if (first) {
      err(d, ['metadata', 'name'], ErrorCode.DUPLICATE_NAME, `${d.kind} "${d.name}" is already defined in ${first.source.file}#${first.source.doc}`);
      continue;
    }
    seen.set(key, d);
    unique.push(d);
  }
  const of = <K extends LoadedDoc['kind']>(kind: K) => unique.filter((d): d is LoadedDoc<K> => d.kind === kind);

  // Mesh: at most one.
  const meshes = of('Mesh');
  for (const extra of meshes.slice(1)) {
    err(
      extra,
      ['metadata', 'name'],
      ErrorCode.CONFLICT,
      `at most one Mesh is allowed; ${meshes[0]!.source.file}#${meshes[0]!.source.doc} already defines "${meshes[0]!.name}"`,
    );
  }
  const meshDoc = meshes[0];
  const meshSpec = meshDoc?.value.spec as Mesh['spec'] | undefined;
  const mesh: MeshModel = {
    name: meshDoc?.name ?? 'default',
    trustDomain: meshSpec?.trustDomain ?? BUILTIN_DEFAULTS.trustDomain,
    mtls: {
      mode: meshSpec?.mtls?.mode ?? BUILTIN_DEFAULTS.mtls.mode,
      certTTLms: meshSpec?.mtls?.certTTL ? parseDuration(meshSpec.mtls.certTTL)! : BUILTIN_DEFAULTS.mtls.certTTLms,
    },
    defaults: {
      timeoutMs: meshSpec?.defaults?.timeout ? parseDuration(meshSpec.defaults.timeout)! : BUILTIN_DEFAULTS.timeoutMs,
      retries: retrySettings(meshSpec?.defaults?.retries),
    },
    tracing: meshSpec?.tracing ? { service: meshSpec.tracing.otlp.service, samplingPercent: meshSpec.tracing.otlp.sampling } : undefined,
    source: meshDoc?.source,
  };

  const services = new Map<string, ServiceModel>();
  for (const d of of('Service')) services.set(d.name, serviceModel(d));
  if (mesh.tracing && meshDoc) {
    const t = services.get(mesh.tracing.service);
    const at = ['spec', 'tracing', 'otlp', 'service'];
    if (!t) err(meshDoc, at, ErrorCode.UNKNOWN_REFERENCE, `unknown Service "${mesh.tracing.service}"${didYouMean(mesh.tracing.service, services.keys())}`);
    else if (t.protocol !== 'grpc' && t.protocol !== 'http2')
      err(meshDoc, at, ErrorCode.UNKNOWN_REFERENCE, `Service "${t.name}" receives OTLP over gRPC: give it protocol: grpc (it has ${t.protocol ?? 'http'})`);
  }

  const gateways = new Map<string, GatewayModel>();
  for (const d of of('Gateway')) {
    const g = d.value as Gateway;
    const listeners: GatewayListenerModel[] = [];
    for (const [i, l] of g.spec.listeners.entries()) {
      let tls: GatewayListenerModel['tls'];
      if (l.tls) {
        const read = async (field: 'certificateFile' | 'privateKeyFile'): Promise<string | undefined> => {
          const at = ['spec', 'listeners', i, 'tls', field];
          const text = await readPolicyFile(d, at, l.tls![field]);
          if (text === undefined) return undefined;
          const expect = field === 'certificateFile' ? /-----BEGIN CERTIFICATE-----/ : /-----BEGIN ([A-Z]+ )?PRIVATE KEY-----/;
          if (!expect.test(text)) {
            err(d, at, ErrorCode.FILE_READ, `${l.tls![field]} is not a PEM ${field === 'certificateFile' ? 'certificate' : 'private key'}`);
            return undefined;
          }
          return text;
        };
        const certificatePem = await read('certificateFile');
        const privateKeyPem = await read('privateKeyFile');
        if (certificatePem && privateKeyPem) tls = { certificateFile: l.tls.certificateFile, certificatePem, privateKeyPem };
      }
      listeners.push({ name: l.name, port: l.port, protocol: l.protocol, hostnames: [...(l.hostnames ?? ['*'])].sort(), tls });
    }
    gateways.set(d.name, { name: d.name, listeners: listeners.sort(byName), source: d.source });
  }

  const routes: RouteModel[] = [];
  const gatewaySigs = new Map<string, string | undefined>();
  /** What a route's check reads of a Gateway: its listeners' names and hostnames. */
  const gatewaySig = (name: string): string | undefined => {
    if (gatewaySigs.has(name)) return gatewaySigs.get(name);
    const g = gateways.get(name);
    const sig = g?.listeners.map((l) => `${l.name}\u0000${l.hostnames.join('\u0000')}`).join('\u0001');
    gatewaySigs.set(name, sig);
    return sig;
  };
  for (const d of of('HTTPRoute')) {
    const r = d.value as HTTPRoute;
    const hit = checkedRoutes.get(r.spec);
    if (
      hit &&
      hit.file === d.source.file &&
      hit.doc === d.source.doc &&
      hit.gateways.every(([n, sig]) => gatewaySig(n) === sig) &&
      hit.services.every(([n, svc]) => services.get(n) === svc)
    ) {
      routes.push({ name: d.name, spec: r.spec, source: d.source });
      continue;
    }
    const errorsBefore = errors.length;
    r.spec.parentRefs.forEach((p, i) => {
      if (p.kind === 'Gateway') {
        const g = gateways.get(p.name);
        if (!g) {
          err(d, ['spec', 'parentRefs', i, 'name'], ErrorCode.UNKNOWN_REFERENCE, `unknown Gateway "${p.name}"${didYouMean(p.name, gateways.keys())}`);
          return;
        }
        const candidates = p.sectionName ? g.listeners.filter((l) => l.name === p.sectionName) : g.listeners;
        if (p.sectionName && candidates.length === 0) {
          err(
            d,
            ['spec', 'parentRefs', i, 'sectionName'],
            ErrorCode.UNKNOWN_REFERENCE,
            `Gateway "${p.name}" has no listener "${p.sectionName}"${didYouMean(
              p.sectionName,
              g.listeners.map((l) => l.name),
            )}`,
          );
          return;
        }
        if (r.spec.hostnames) {
          const ok = candidates.some((l) => r.spec.hostnames!.some((h) => l.hostnames.some((lh) => hostnameMatches(lh, h) || hostnameMatches(h, lh))));
          if (!ok) {
            err(
              d,
              ['spec', 'hostnames'],
              ErrorCode.CONFLICT,
              `none of these hostnames is served by ${p.sectionName ? `listener "${p.sectionName}" of ` : ''}Gateway "${p.name}" (it serves ${[...new Set(candidates.flatMap((l) => l.hostnames))].join(', ')})`,
            );
          }
        }
      } else if (!services.has(p.name)) {
        err(d, ['spec', 'parentRefs', i, 'name'], ErrorCode.UNKNOWN_REFERENCE, `unknown Service "${p.name}"${didYouMean(p.name, services.keys())}`);
      }
    });
    r.spec.rules.forEach((rule, ri) => {
      rule.backendRefs?.forEach((b, bi) => {
        const svc = services.get(b.name);
        if (!svc) {
          err(
            d,
            ['spec', 'rules', ri, 'backendRefs', bi, 'name'],
            ErrorCode.UNKNOWN_REFERENCE,
            `unknown Service "${b.name}"${didYouMean(b.name, services.keys())}`,
          );
          return;
        }
        if (b.subset && !svc.subsets.some((s) => s.name === b.subset)) {
          err(
            d,
            ['spec', 'rules', ri, 'backendRefs', bi, 'subset'],
            ErrorCode.UNKNOWN_REFERENCE,
            `Service "${b.name}" has no subset "${b.subset}"${didYouMean(
              b.subset,
              svc.subsets.map((s) => s.name),
            )}`,
          );
        }
        if (svc.protocol === 'tcp') {
          err(
            d,
            ['spec', 'rules', ri, 'backendRefs', bi, 'name'],
            ErrorCode.CONFLICT,
            `Service "${b.name}" speaks tcp; an HTTPRoute can only send to http, http2 or grpc services`,
          );
        }
      });
      const timeout = rule.timeout ? parseDuration(rule.timeout)! : undefined;
      const perTry = rule.retries?.perTryTimeout ? parseDuration(rule.retries.perTryTimeout)! : undefined;
      if (timeout !== undefined && perTry !== undefined && perTry > timeout) {
        err(
          d,
          ['spec', 'rules', ri, 'retries', 'perTryTimeout'],
          ErrorCode.CONFLICT,
          `${rule.retries!.perTryTimeout} is longer than the rule's timeout ${rule.timeout}`,
        );
      }
      const backoff = rule.retries?.backoff;
      if (backoff?.maxInterval && parseDuration(backoff.maxInterval)! < parseDuration(backoff.baseInterval)!) {
        err(d, ['spec', 'rules', ri, 'retries', 'backoff', 'maxInterval'], ErrorCode.CONFLICT, `must not be shorter than baseInterval ${backoff.baseInterval}`);
      }
      if (rule.retries?.retriableStatusCodes && !(rule.retries.retryOn ?? []).includes('retriable-status-codes')) {
        err(
          d,
          ['spec', 'rules', ri, 'retries', 'retryOn'],
          ErrorCode.CONFLICT,
          'retriableStatusCodes is given, so retryOn must include "retriable-status-codes"',
        );
      }
    });
    routes.push({ name: d.name, spec: r.spec, source: d.source });
    // Kept only when it passed: it then holds for as long as what it read is the same.
    if (errors.length === errorsBefore && Object.isFrozen(r.spec)) {
      const refGateways = new Set(r.spec.parentRefs.filter((p) => p.kind === 'Gateway').map((p) => p.name));
      const refServices = new Set([
        ...r.spec.parentRefs.filter((p) => p.kind !== 'Gateway').map((p) => p.name),
        ...r.spec.rules.flatMap((rule) => (rule.backendRefs ?? []).map((b) => b.name)),
      ]);
      checkedRoutes.set(r.spec, {
        file: d.source.file,
        doc: d.source.doc,
        gateways: [...refGateways].map((n) => [n, gatewaySig(n)]),
        services: [...refServices].map((n) => [n, services.get(n)]),
      });
    }
  }

  const policies = resolvePolicies(unique, { mesh, services, gateways, routes }, err);
  const access = resolveAccessPolicies(of('AccessPolicy'), new Set(services.keys()), new Set(gateways.keys()), err);
  const jwt = await resolveJwtPolicies(unique, { services, gateways, routes }, baseDir, err, readPolicyFile, opts);
  resolveGlobalClaims(
    policies.globalRateLimits,
    unique,
    (kind, name, sectionName) =>
      jwtPoliciesOn(jwt, kind, name, sectionName).map((p) => ({ policy: p, forwardClaims: jwt?.policies.get(p)?.forwardClaims ?? [] })),
    err,
  );

  if (errors.length > 0) return { errors };
  return { model: { mesh, services, gateways, routes: routes.sort(byName), access, policies, jwt }, errors };
}
