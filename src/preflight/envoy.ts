// `signalbox validate --envoy`: a real Envoy checks every proxy group's configuration before it is
// deployed, so that what Envoy would NACK proxy by proxy is reported at once, with the policy file
// and field it came from.
//
// Each group (every Gateway, and one sidecar per Service) is compiled as `signalbox serve` compiles
// it and written as a static bootstrap: route configurations inline instead of RDS, endpoints inline
// instead of EDS, secrets static instead of SDS (a static cluster whose TLS context uses SDS over
// ADS crashes `envoy --mode validate`), mesh identities as throwaway certificates. The bootstrap is
// binary protobuf, the same bytes xDS would carry, and `envoy --mode validate` checks it.
//
// Envoy stops at its first error and often does not say where it is ("Duration out-of-range"), so a
// refused group is narrowed down by running Envoy again on smaller bootstraps: without routes, then
// halving the routes (or listeners, clusters, secrets) to find the first one refused, then removing
// fields of that one to find the field refused. The refused value is then looked up in the policy
// documents, which gives the file, document, field path and line. Only refused groups pay for this.
import { execFile } from 'node:child_process';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { performance } from 'node:perf_hooks';
import { createHash, webcrypto } from 'node:crypto';
import protobuf from 'protobufjs';
import { parseDuration } from '../api/v1alpha1/index.js';
import { serverSpiffeId } from '../ca/server-tls.js';
import { DEFAULT_RATELIMIT_ENDPOINT } from '../translate/ratelimit.js';
import { x509 } from '../ca/x509.js';
import { ErrorCode, SignalboxError, type PolicyError } from '../errors.js';
import { IDENTITY_SECRET, TRUST_BUNDLE_SECRET, sidecarGroup, type IRProxyConfig } from '../ir/types.js';
import type { Model } from '../model/model.js';
import { EndpointStore, staticInstances } from '../sources/endpoints.js';
import { formatPath, type LoadedDoc, type SourceRef } from '../sources/files/loader.js';
import { ALS_CLUSTER } from '../protocol/access-log.js';
import { translate } from '../translate/gateway.js';
import { DEFAULT_AUTHZ_ENDPOINT } from '../translate/jwt.js';
import { lookupType } from '../xds/resources/protos.js';
import { clusterResource, endpointResource } from '../xds/translator/cluster.js';
import { listenerResource } from '../xds/translator/listener.js';
import { routeConfigResource } from '../xds/translator/route.js';
import { secretResource } from '../xds/translator/secret.js';

/** The code of an error found by Envoy. */
export const ENVOY_REJECTED = ErrorCode.ENVOY_REJECTED;

export type PreflightError = PolicyError & { groups: string[] };

export interface GroupReport {
  group: string;
  ok: boolean;
  /** Time of the first `envoy --mode validate` run: the cost of a group that passes. */
  checkMs: number;
  /** Every run for this group, narrowing down included. */
  runs: number;
  ms: number;
  /** What the group compiles to (its bootstrap's parts, test material aside), as a digest. */
  key: string;
  /** Not run: its key is the one in PreflightOptions.passed. */
  skipped?: boolean;
}

export interface PreflightReport {
  envoy: { binary: string; version: string };
  groups: GroupReport[];
  errors: PreflightError[];
  ms: number;
}

export interface PreflightOptions {
  /** The Envoy binary (a path, or a command on PATH). */
  envoy: string;
  /** Groups checked at once; default: the machine's parallelism. */
  concurrency?: number;
  /** Problems reported per group at most (each costs a narrowing down). */
  maxProblemsPerGroup?: number;
  /** Envoy runs per group at most, narrowing down included. */
  maxRunsPerGroup?: number;
  /** Envoy's version, when known already (skips `envoy --version`). */
  version?: string;
  /** Groups that passed before, with their key: a group whose key is unchanged is not checked again. */
  passed?: ReadonlyMap<string, string>;
}

/** Sidecar ports used for the one sidecar checked per Service (any free pair works). */
const SIDECAR_INBOUND_PORT = 15006;
const SIDECAR_OUTBOUND_PORT = 15001;

/** Where proxies send access logs and reach the control plane: in their bootstrap, not in xDS. */
const CONTROL_PLANE_CLUSTER = {
  name: ALS_CLUSTER,
  type: 'STATIC',
  connect_timeout: { seconds: 1, nanos: 0 },
  load_assignment: {
    cluster_name: ALS_CLUSTER,
    endpoints: [{ lb_endpoints: [{ endpoint: { address: { socket_address: { address: '127.0.0.1', port_value: 18000 } } } }] }],
  },
  typed_extension_protocol_options: {
    'envoy.extensions.upstreams.http.v3.HttpProtocolOptions': {
      '@type': 'type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions',
      explicit_http_config: { http2_protocol_options: {} },
    },
  },
};

interface RunResult {
  code: number | null;
  signal: string | null;
  timedOut: boolean;
  output: string;
  spawnError?: NodeJS.ErrnoException;
}

function run(bin: string, args: string[], timeoutMs: number): Promise<RunResult> {
  return new Promise((resolve) => {
    execFile(bin, args, { timeout: timeoutMs, maxBuffer: 16 << 20, encoding: 'utf8' }, (err, stdout, stderr) => {
      const e = err as (NodeJS.ErrnoException & { code?: number | string; signal?: string | null; killed?: boolean }) | null;
      if (e && typeof e.code === 'string') return resolve({ code: null, signal: null, timedOut: false, output: '', spawnError: e });
      resolve({ code: e ? ((e.code as number | undefined) ?? null) : 0, signal: e?.signal ?? null, timedOut: !!e?.killed, output: `${stdout}${stderr}` });
    });
  });
}

/** Envoy's version ("1.36.2"); a SignalboxError when the binary cannot be run. */
export async function envoyVersion(bin: string): Promise<string> {
  const r = await run(bin, ['--version'], 30_000);
  if (r.spawnError) {
    const why = r.spawnError.code === 'ENOENT' ? 'not found' : r.spawnError.code;
    throw new SignalboxError(ErrorCode.BAD_FLAG, `cannot run Envoy "${bin}": ${why} (give --envoy PATH or set SIGNALBOX_ENVOY_BIN)`);
  }
  const version = /version: [0-9a-f]+\/(\d+\.\d+\.\d+)/.exec(r.output)?.[1];
  if (r.code !== 0 || !version)
    throw new SignalboxError(ErrorCode.BAD_FLAG, `"${bin}" does not look like Envoy: --version printed ${JSON.stringify(r.output.trim().slice(0, 200))}`);
  return version;
}

/**
 * The sidecar groups checked besides every Gateway: one per Service, at its first sidecarPort if it
 * has one (the ports only name listeners; a Service's sidecars differ in nothing else).
 */
export function sidecarGroupsOf(model: Model): string[] {
  return [...model.services.values()].map((s) => {
    const inboundPort = s.endpoints?.find((e) => e.sidecarPort !== undefined)?.sidecarPort ?? SIDECAR_INBOUND_PORT;
    const outboundPort = inboundPort === SIDECAR_OUTBOUND_PORT ? SIDECAR_OUTBOUND_PORT + 1 : SIDECAR_OUTBOUND_PORT;
    return sidecarGroup({ service: s.name, appPort: s.port, inboundPort, outboundPort });
  });
}

// ---------------------------------------------------------------------------------------------
// A group as separate parts, so that a bootstrap can be written from any subset of them.

type Json = Record<string, unknown>;

interface Part {
  json: Json;
  source?: SourceRef;
  /** How Envoy's part is called in messages: `route "orders/rule-0/match-0"`. */
  what: string;
}

interface ListenerPart extends Part {
  /** The route configuration without routes; the selected routes are put back in. */
  routeConfig: Json;
}

interface RoutePart extends Part {
  listener: number;
  vhost: number;
  /** The route's name (`<HTTPRoute>/<rule>/match-N`, ...). */
  name: string;
}

interface GroupParts {
  group: string;
  /** The document the group is for (a Gateway, or the Service of a sidecar). */
  source?: SourceRef;
  listeners: ListenerPart[];
  routes: RoutePart[];
  clusters: Part[];
  secrets: Part[];
}

const KINDS = ['routes', 'listeners', 'clusters', 'secrets'] as const;
type Kind = (typeof KINDS)[number];

interface Selection {
  routes: number[];
  listeners: number[];
  clusters: number[];
  secrets: number[];
  /** One part replaced (a field removed), while narrowing a refused part down to its field. */
  replace?: { kind: Kind; index: number; json: Json };
}

const clone = <T>(v: T): T => structuredClone(v);

/** Test material for the SDS secrets a proxy gets at run time (its identity and the trust bundle). */
async function throwawayIdentity(trustDomain: string): Promise<{ certificatePem: string; privateKeyPem: string }> {
  const alg = { name: 'ECDSA', namedCurve: 'P-256' } as const;
  const keys = (await webcrypto.subtle.generateKey(alg, true, ['sign', 'verify'])) as unknown as CryptoKeyPair;
  const now = Date.now();
  const cert = await x509.X509CertificateGenerator.createSelfSigned({
    name: 'CN=signalbox-preflight',
    keys,
    notBefore: new Date(now - 60_000),
    notAfter: new Date(now + 3_600_000),
    signingAlgorithm: { name: 'ECDSA', hash: 'SHA-256' },
    extensions: [
      new x509.BasicConstraintsExtension(true, undefined, true),
      new x509.SubjectAlternativeNameExtension([{ type: 'url', value: `spiffe://${trustDomain}/preflight` }]),
    ],
  });
  const der = await webcrypto.subtle.exportKey('pkcs8', keys.privateKey as unknown as webcrypto.CryptoKey);
  return { certificatePem: cert.toString('pem'), privateKeyPem: x509.PemConverter.encode(der, 'PRIVATE KEY') };
}

function groupParts(ir: IRProxyConfig, model: Model, store: EndpointStore, identity: { certificatePem: string; privateKeyPem: string }): GroupParts {
  const listeners: ListenerPart[] = [];
  const routes: RoutePart[] = [];
  ir.listeners.forEach((l, li) => {
    const rc = routeConfigResource(l);
    const vhosts = rc.virtual_hosts as Json[];
    vhosts.forEach((vh, vi) => {
      (vh.routes as Json[]).forEach((json, ri) => {
        const r = l.routeConfig.virtualHosts[vi]!.routes[ri]!;
        routes.push({ json, listener: li, vhost: vi, name: r.name, source: r.source, what: `route "${r.name}"` });
      });
      vh.routes = [];
    });
    listeners.push({ json: listenerResource(l), routeConfig: rc, source: l.source, what: `listener "${l.name}"` });
  });
  const clusters: Part[] = ir.clusters.map((c) => {
    const json = clusterResource(c);
    if (json.type === 'EDS') {
      // The endpoints EDS would send, inline: static endpoints, or none for discovered services.
      delete json.eds_cluster_config;
      json.type = 'STATIC';
      json.load_assignment = endpointResource(c, store.get(c.service));
    }
    return { json, source: c.source, what: `cluster "${c.name}"` };
  });
  clusters.push({ json: CONTROL_PLANE_CLUSTER, what: `cluster "${ALS_CLUSTER}" (the control plane)` });
  const secrets: Part[] = ir.secrets.map((s) => ({ json: secretResource(s), source: s.source, what: `secret "${s.name}"` }));
  secrets.push(
    {
      json: {
        name: IDENTITY_SECRET,
        tls_certificate: { certificate_chain: { inline_string: identity.certificatePem }, private_key: { inline_string: identity.privateKeyPem } },
      },
      what: 'the proxy identity (test material)',
    },
    {
      json: { name: TRUST_BUNDLE_SECRET, validation_context: { trusted_ca: { inline_string: identity.certificatePem } } },
      what: 'the trust bundle (test material)',
    },
  );
  const gateway = /^gateway\/(.+)$/.exec(ir.group)?.[1];
  const sidecar = /^sidecar\/([^/]+)\//.exec(ir.group)?.[1];
  const source = gateway ? model.gateways.get(gateway)?.source : sidecar ? model.services.get(sidecar)?.source : undefined;
  return { group: ir.group, source, listeners, routes, clusters, secrets };
}

/** A digest of what Envoy is given for a group, but the throwaway identity (new at each run). */
function keyOf(parts: GroupParts): string {
  const json = (ps: Part[]) => ps.map((p) => p.json);
  const content = [parts.listeners.map((l) => [l.json, l.routeConfig]), json(parts.routes), json(parts.clusters), json(parts.secrets.slice(0, -2))];
  return createHash('sha256').update(JSON.stringify(content)).digest('base64url');
}

/** Every selected part, everything referring to the control plane made static. */
function bootstrapOf(parts: GroupParts, sel: Selection): Uint8Array {
  const pick = (kind: Kind, i: number): Json => (sel.replace && sel.replace.kind === kind && sel.replace.index === i ? sel.replace.json : parts[kind][i]!.json);
  const listeners = sel.listeners.map((li) => {
    const json = clone(pick('listeners', li));
    const rc = clone(parts.listeners[li]!.routeConfig);
    const vhosts = rc.virtual_hosts as Json[];
    for (const ri of sel.routes) {
      const r = parts.routes[ri]!;
      if (r.listener === li) (vhosts[r.vhost]!.routes as Json[]).push(pick('routes', ri));
    }
    inlineRoutes(json, rc);
    return json;
  });
  const clusters = sel.clusters.map((i) => staticSecrets(clone(pick('clusters', i))));
  const secrets = sel.secrets.map((i) => pick('secrets', i));
  const encode = (type: string, json: Json) => {
    const t = lookupType(type);
    return t.encode(t.fromObject(json)).finish();
  };
  // Bootstrap (envoy.config.bootstrap.v3) is not among the types Signalbox loads; its few fields
  // used here are written by number: node = 1, static_resources = 2 { listeners = 1, clusters = 2, secrets = 3 }.
  const resources = protobuf.Writer.create();
  for (const l of listeners) resources.uint32((1 << 3) | 2).bytes(encode('envoy.config.listener.v3.Listener', staticSecrets(l)));
  for (const c of clusters) resources.uint32((2 << 3) | 2).bytes(encode('envoy.config.cluster.v3.Cluster', c));
  for (const s of secrets) resources.uint32((3 << 3) | 2).bytes(encode('envoy.extensions.transport_sockets.tls.v3.Secret', s));
  const out = protobuf.Writer.create();
  out.uint32((1 << 3) | 2).bytes(encode('envoy.config.core.v3.Node', { id: 'signalbox-preflight', cluster: parts.group }));
  out.uint32((2 << 3) | 2).bytes(resources.finish());
  return out.finish();
}

/** Replaces each HTTP connection manager's RDS source with the route configuration itself. */
function inlineRoutes(v: unknown, rc: Json): void {
  if (Array.isArray(v)) for (const x of v) inlineRoutes(x, rc);
  else if (v && typeof v === 'object') {
    const o = v as Json;
    if (o.rds && typeof o['@type'] === 'string' && (o['@type'] as string).endsWith('.HttpConnectionManager')) {
      delete o.rds;
      o.route_config = rc;
    }
    for (const x of Object.values(o)) inlineRoutes(x, rc);
  }
}

/** SDS references without a config source name static secrets of the bootstrap. */
function staticSecrets<T>(v: T): T {
  if (Array.isArray(v)) for (const x of v) staticSecrets(x);
  else if (v && typeof v === 'object') {
    const o = v as Json;
    if (typeof o.name === 'string' && o.sds_config) delete o.sds_config;
    for (const x of Object.values(o)) staticSecrets(x);
  }
  return v;
}

// ---------------------------------------------------------------------------------------------
// Running Envoy, and narrowing a refusal down.

interface Verdict {
  ok: boolean;
  message: string;
}

/** Envoy's reason, without the text dump of the message it refused (which may hold key material). */
export function envoyReason(output: string): string {
  const after = /error initializing configuration '[^']*': ([\s\S]*)$/.exec(output)?.[1] ?? output;
  const pgv = /Proto constraint validation failed \(([\s\S]*)\)\s*$/.exec(after);
  let reason: string;
  if (pgv) {
    // "A: embedded message failed validation | caused by B: ... | caused by C: the actual rule"
    const chain = pgv[1]!.split(' | caused by ');
    reason = `${chain[chain.length - 1]!.trim()} (${chain.map((c) => c.split(':')[0]!.trim()).join(' > ')})`;
  } else {
    reason = after.trim().split('\n')[0]!.trim();
  }
  if (/PRIVATE KEY/.test(reason)) reason = reason.replace(/-----BEGIN [^-]*PRIVATE KEY-----[\s\S]*?(-----END [^-]*PRIVATE KEY-----|$)/g, '[redacted]');
  return reason.length > 600 ? `${reason.slice(0, 600)}...` : reason;
}

class GroupChecker {
  runs = 0;
  /** Duration of the first run: what checking the whole group costs. */
  firstMs = 0;
  constructor(
    private readonly parts: GroupParts,
    private readonly bin: string,
    private readonly dir: string,
    private readonly maxRuns: number,
    private readonly timeoutMs = 120_000,
  ) {}

  get exhausted(): boolean {
    return this.runs >= this.maxRuns;
  }

  async check(sel: Selection): Promise<Verdict> {
    const file = path.join(this.dir, `${this.parts.group.replace(/[^A-Za-z0-9_.-]/g, '_')}-${this.runs}.pb`);
    await writeFile(file, bootstrapOf(this.parts, sel), { mode: 0o600 }); // may hold a gateway's private key
    const t0 = performance.now();
    this.runs++;
    const r = await run(this.bin, ['--mode', 'validate', '-c', file, '--disable-hot-restart', '-l', 'critical', '--log-format', '%v'], this.timeoutMs);
    if (this.runs === 1) this.firstMs = performance.now() - t0;
    await rm(file, { force: true });
    if (r.spawnError) throw new SignalboxError(ErrorCode.BAD_FLAG, `cannot run Envoy "${this.bin}": ${r.spawnError.code}`);
    if (r.code === 0) return { ok: true, message: '' };
    const message = r.timedOut
      ? `Envoy did not finish validating this configuration within ${Math.round(this.timeoutMs / 1000)}s`
      : r.signal
        ? `Envoy crashed (${r.signal}) validating this configuration${r.output.trim() ? `: ${envoyReason(r.output)}` : ''}`
        : envoyReason(r.output);
    return { ok: false, message };
  }
}

function all(parts: GroupParts): Selection {
  return {
    routes: parts.routes.map((_, i) => i),
    listeners: parts.listeners.map((_, i) => i),
    clusters: parts.clusters.map((_, i) => i),
    secrets: parts.secrets.map((_, i) => i),
  };
}

interface Culprit {
  kind: Kind;
  index: number;
  /** The smallest selection found that Envoy refuses because of this part. */
  failing: Selection;
  message: string;
}

/**
 * The first part Envoy refuses in `sel` (which it refuses with `message`): the kinds are removed
 * one after the other (routes first: they hold most policy values) until Envoy accepts, then the
 * last kind removed is halved until one part is left.
 */
async function isolate(checker: GroupChecker, sel: Selection, message: string): Promise<Culprit | undefined> {
  let base = sel;
  let baseMessage = message;
  for (const kind of KINDS) {
    if (base[kind].length === 0) continue;
    const without: Selection = { ...base, [kind]: [] };
    if (checker.exhausted) return undefined;
    const r = await checker.check(without);
    if (!r.ok) {
      base = without;
      baseMessage = r.message;
      continue;
    }
    // `without` passes and `base` fails: the first part of `kind` that makes it fail is the culprit.
    const items = base[kind];
    let lo = 0;
    let hi = items.length;
    let hiMessage = baseMessage;
    while (hi - lo > 1 && !checker.exhausted) {
      const mid = (lo + hi) >> 1;
      const m = await checker.check({ ...without, [kind]: items.slice(0, mid) });
      if (m.ok) lo = mid;
      else {
        hi = mid;
        hiMessage = m.message;
      }
    }
    if (hi - lo > 1) return undefined;
    return { kind, index: items[hi - 1]!, failing: { ...without, [kind]: items.slice(0, hi) }, message: hiMessage };
  }
  return undefined;
}

const PATH_SPECIFIERS = ['prefix', 'path', 'safe_regex', 'path_separated_prefix', 'connect_matcher', 'path_match_policy'];
/** Fields whose removal cannot be what fixes a part (they name it or point at what it serves). */
const KEPT = new Set(['name', '@type', 'cluster', 'weighted_clusters', 'cluster_name', 'route_config_name']);

const isDuration = (v: unknown): v is { seconds: number; nanos?: number } =>
  !!v && typeof v === 'object' && !Array.isArray(v) && 'seconds' in v && Object.keys(v).every((k) => k === 'seconds' || k === 'nanos');

function getAt(v: unknown, p: (string | number)[]): unknown {
  for (const k of p) v = (v as Record<string | number, unknown>)[k];
  return v;
}

/** `json` without the field at `p` (a path specifier of a route match becomes the catch-all prefix "/"). */
function removeField(json: Json, p: (string | number)[]): Json {
  const copy = clone(json);
  const parent = getAt(copy, p.slice(0, -1)) as Record<string | number, unknown>;
  const key = p[p.length - 1]!;
  if (Array.isArray(parent)) parent.splice(key as number, 1);
  else delete parent[key];
  if (p.length === 2 && p[0] === 'match' && PATH_SPECIFIERS.includes(String(key))) parent.prefix = '/';
  return copy;
}

/**
 * The field of a refused part that Envoy refuses: removing it makes Envoy accept. At each level the
 * fields are removed one at a time; the first whose removal helps is searched further. When none
 * helps (a route's `match` cannot go: a route needs one), the search goes on inside each of them.
 */
async function refusedField(checker: GroupChecker, parts: GroupParts, c: Culprit): Promise<(string | number)[]> {
  const json = parts[c.kind][c.index]!.json;
  const helps = async (at: (string | number)[]) =>
    !checker.exhausted && (await checker.check({ ...c.failing, replace: { kind: c.kind, index: c.index, json: removeField(json, at) } })).ok;
  const childrenOf = (at: (string | number)[]): (string | number)[] => {
    const node = getAt(json, at);
    if (!node || typeof node !== 'object' || isDuration(node)) return [];
    return Array.isArray(node) ? node.map((_, i) => i) : Object.keys(node).filter((k) => !KEPT.has(k));
  };
  /** The deepest field below `at` whose removal helps, if any does. */
  const search = async (at: (string | number)[], depth: number): Promise<(string | number)[] | undefined> => {
    const children = childrenOf(at);
    for (const k of children) {
      if (await helps([...at, k])) return (await search([...at, k], depth + 1)) ?? [...at, k];
    }
    if (depth >= 6) return undefined;
    for (const k of children) {
      const found = await search([...at, k], depth + 1);
      if (found) return found;
    }
    return undefined;
  };
  return (await search([], 0)) ?? [];
}

// ---------------------------------------------------------------------------------------------
// From Envoy's part back to the policy documents.

type Leaf = { kind: 'string'; value: string } | { kind: 'duration'; ms: number };

/** The values in `v` (type URLs aside). */
function leavesOf(v: unknown, out: Leaf[] = [], key = ''): Leaf[] {
  if (typeof v === 'string') {
    if (key !== '@type') out.push({ kind: 'string', value: v });
  } else if (isDuration(v)) out.push({ kind: 'duration', ms: Number(v.seconds) * 1000 + Number(v.nanos ?? 0) / 1e6 });
  else if (Array.isArray(v)) for (const x of v) leavesOf(x, out, key);
  else if (v && typeof v === 'object') for (const [k, x] of Object.entries(v)) leavesOf(x, out, k);
  return out;
}

function* fields(v: unknown, at: (string | number)[]): Generator<[(string | number)[], unknown]> {
  yield [at, v];
  if (Array.isArray(v)) for (let i = 0; i < v.length; i++) yield* fields(v[i], [...at, i]);
  else if (v && typeof v === 'object') for (const [k, x] of Object.entries(v)) yield* fields(x, [...at, k]);
}

function sameMs(a: number, b: number): boolean {
  return Math.abs(a - b) <= Math.max(1, Math.abs(b) * 1e-9);
}

function matches(leaf: Leaf, v: unknown, caseless: boolean): boolean {
  if (typeof v !== 'string') return false;
  if (leaf.kind === 'duration') {
    const ms = parseDuration(v);
    return ms !== undefined && sameMs(ms, leaf.ms);
  }
  return caseless ? v.toLowerCase() === leaf.value.toLowerCase() : v === leaf.value;
}

/** The index of an HTTPRoute rule named in an Envoy route name (`<route>/<rule name, rule-N or #N>/match-M`). */
function ruleOf(doc: LoadedDoc, routeName: string): { rule: number; match?: number } | undefined {
  const [route, rule, match] = routeName.split('/');
  if (doc.kind !== 'HTTPRoute' || route !== doc.name || rule === undefined) return undefined;
  const rules = (doc.value as { spec: { rules: { name?: string }[] } }).spec.rules;
  let i = rules.findIndex((r) => r.name === rule);
  const index = /^(?:rule-|#)(\d+)$/.exec(rule);
  if (i < 0 && index) i = Number(index[1]);
  if (i < 0 || i >= rules.length) return undefined;
  const m = /^match-(\d+)$/.exec(match ?? '');
  return { rule: i, match: m ? Number(m[1]) : undefined };
}

interface Blame {
  source?: SourceRef;
  path: (string | number)[];
}

/**
 * The policy field holding a refused value: the values of Envoy's refused field are looked up in
 * the part's own document (within its rule, first) and then in every other document (a timeout
 * may come from a TrafficPolicy or the Mesh). Without a match, the rule, listener or document.
 */
function blame(docs: LoadedDoc[], parts: GroupParts, c: Culprit, field: (string | number)[], message: string): Blame;
function blame(docs: LoadedDoc[], parts: GroupParts, c: Culprit, field: (string | number)[], message: string, onlyQuoted: true): Blame | undefined;
function blame(docs: LoadedDoc[], parts: GroupParts, c: Culprit, field: (string | number)[], message: string, onlyQuoted = false): Blame | undefined {
  const part = parts[c.kind][c.index]!;
  const own = part.source ? docs.find((d) => d.source.file === part.source!.file && d.source.doc === part.source!.doc) : undefined;
  let fallback: (string | number)[] = [];
  if (own) {
    if (c.kind === 'routes') {
      fallback = ruleFallback(own, (part as RoutePart).name, field);
    } else if (own.kind === 'Gateway' && (c.kind === 'listeners' || c.kind === 'secrets')) {
      const name = String(part.json.name ?? '').split('/')[1];
      const i = (own.value as { spec: { listeners: { name: string }[] } }).spec.listeners.findIndex((l) => l.name === name);
      if (i >= 0) fallback = c.kind === 'secrets' ? ['spec', 'listeners', i, 'tls'] : ['spec', 'listeners', i];
    }
  }
  // (The whole part's values, when no field of it was found, but not the name Signalbox gave it.)
  const value = field.length ? getAt(part.json, field) : { ...part.json, name: undefined };
  const found = locate(docs, own, fallback, value, message, onlyQuoted);
  if (found) return found;
  return onlyQuoted ? undefined : { source: part.source ?? parts.source, path: fallback };
}

/** The rule (and match, for a field of Envoy's `match`) an HTTPRoute document gives the route `routeName`; [] when it names none. */
function ruleFallback(own: LoadedDoc, routeName: string, field: (string | number)[]): (string | number)[] {
  const r = ruleOf(own, routeName);
  if (!r) return [];
  const out: (string | number)[] = ['spec', 'rules', r.rule];
  if (field[0] === 'match' && r.match !== undefined) out.push('matches', r.match);
  return out;
}

/**
 * The first field of the documents holding one of the values in `value`: within `own` under
 * `fallback` (its rule), then the rest of `own`, then the other documents; values Envoy quotes
 * in `message` first, then longer strings, then durations. Undefined when none holds any.
 */
function locate(
  docs: LoadedDoc[],
  own: LoadedDoc | undefined,
  fallback: (string | number)[],
  value: unknown,
  message: string,
  onlyQuoted: boolean,
): Blame | undefined {
  const scopes: { doc: LoadedDoc; under: (string | number)[] }[] = [];
  if (own) {
    if (fallback.length) scopes.push({ doc: own, under: fallback.slice(0, 3) });
    scopes.push({ doc: own, under: ['spec'] });
  }
  for (const d of docs) if (d !== own) scopes.push({ doc: d, under: ['spec'] });
  // Values Envoy quotes come first, then longer strings (more telling than "/"), then durations.
  const quoted = [...message.matchAll(/'([^'\n]{1,200})'|"([^"\n]{1,200})"/g)].map((m) => m[1] ?? m[2]!);
  const rank = (l: Leaf) => (l.kind === 'string' ? (quoted.some((q) => q === l.value) ? 1e9 : l.value.length) : 0);
  let leaves = leavesOf(value).sort((a, b) => rank(b) - rank(a));
  if (onlyQuoted) leaves = leaves.filter((l) => l.kind === 'string' && quoted.includes(l.value));
  for (const caseless of [false, true]) {
    for (const leaf of leaves) {
      for (const s of scopes) {
        for (const [p, v] of fields(getAt(s.doc.value, s.under), s.under)) {
          if (matches(leaf, v, caseless)) return { source: s.doc.source, path: p };
        }
      }
    }
  }
  return undefined;
}

/**
 * Where a value of an Envoy route came from: `value` (found at `field` of the route named
 * `routeName`) looked up in the route's own document `own` (within the rule its name designates
 * first) and then in the other documents, as `validate --envoy` does. `exact`: a field holding
 * the value was found; else the rule (or `own` itself) is what can be named.
 */
export function routeValueSource(
  docs: LoadedDoc[],
  own: LoadedDoc | undefined,
  routeName: string,
  field: (string | number)[],
  value: unknown,
  message = '',
): { source: SourceRef; path: (string | number)[]; exact: boolean } | undefined {
  const fallback = own ? ruleFallback(own, routeName, field) : [];
  const found = locate(docs, own, fallback, value, message, false);
  if (found?.source) return { source: found.source, path: found.path, exact: true };
  return own ? { source: own.source, path: fallback, exact: false } : undefined;
}

// ---------------------------------------------------------------------------------------------

async function checkGroup(
  parts: GroupParts,
  docs: LoadedDoc[],
  bin: string,
  dir: string,
  opts: Required<Pick<PreflightOptions, 'maxProblemsPerGroup' | 'maxRunsPerGroup'>>,
): Promise<{ report: GroupReport; errors: PreflightError[] }> {
  const checker = new GroupChecker(parts, bin, dir, opts.maxRunsPerGroup);
  const t0 = performance.now();
  const errors: PreflightError[] = [];
  let sel = all(parts);
  let verdict = await checker.check(sel);
  const ok = verdict.ok;
  const docOf = (s: SourceRef | undefined) => (s ? docs.find((d) => d.source.file === s.file && d.source.doc === s.doc) : undefined);
  while (!verdict.ok && errors.length < opts.maxProblemsPerGroup) {
    const culprit = await isolate(checker, sel, verdict.message);
    if (!culprit) {
      // Not narrowed down (the run budget, or a refusal no part explains): the group's own document.
      const s = parts.source;
      errors.push({
        code: ENVOY_REJECTED,
        file: s?.file ?? parts.group,
        doc: s?.doc,
        message: `Envoy rejects the configuration of ${parts.group}: ${verdict.message}`,
        groups: [parts.group],
      });
      break;
    }
    // A value Envoy quotes (a regex, say) names the field at once; else Envoy is asked which field it is.
    let field: (string | number)[] = [];
    let b = blame(docs, parts, culprit, field, culprit.message, true);
    if (!b) {
      field = await refusedField(checker, parts, culprit);
      b = blame(docs, parts, culprit, field, culprit.message);
    }
    const part = parts[culprit.kind][culprit.index]!;
    const s = b.source ?? parts.source;
    errors.push({
      code: ENVOY_REJECTED,
      file: s?.file ?? parts.group,
      doc: s?.doc,
      path: b.path.length ? formatPath(b.path) : undefined,
      line: b.path.length ? docOf(s)?.lineOf(b.path) : undefined,
      message: `Envoy rejects ${part.what}${field.length ? ` (${formatPath(field)})` : ''}: ${culprit.message}`,
      groups: [parts.group],
    });
    // Look for further problems without that part.
    sel = { ...sel, [culprit.kind]: sel[culprit.kind].filter((i) => i !== culprit.index) };
    if (checker.exhausted) break;
    verdict = await checker.check(sel);
  }
  return {
    report: { group: parts.group, ok, checkMs: Math.round(checker.firstMs), runs: checker.runs, ms: Math.round(performance.now() - t0), key: keyOf(parts) },
    errors,
  };
}

/** Checks every proxy group of a valid model with the Envoy binary `opts.envoy`. */
export async function preflightModel(model: Model, docs: LoadedDoc[], opts: PreflightOptions): Promise<PreflightReport> {
  const t0 = performance.now();
  const version = opts.version ?? (await envoyVersion(opts.envoy));
  const store = new EndpointStore();
  for (const s of model.services.values()) store.set(s.name, staticInstances(s), 'static', { quiet: true });
  // As `signalbox serve` compiles by default: ext_authz over TLS, access logs to the control plane, tracing.
  const irs = translate(model, sidecarGroupsOf(model), {
    authz: { ...DEFAULT_AUTHZ_ENDPOINT, tls: { serverId: serverSpiffeId(model.mesh.trustDomain, 'authz') } },
    rateLimit: { ...DEFAULT_RATELIMIT_ENDPOINT, tls: { serverId: serverSpiffeId(model.mesh.trustDomain, 'ratelimit') } },
    accessLog: { successSamplePercent: 100 },
  });
  const identity = await throwawayIdentity(model.mesh.trustDomain);
  const groups = [...irs.values()].map((ir) => groupParts(ir, model, store, identity));
  const dir = await mkdtemp(path.join(os.tmpdir(), 'signalbox-preflight-'));
  const limits = { maxProblemsPerGroup: opts.maxProblemsPerGroup ?? 5, maxRunsPerGroup: opts.maxRunsPerGroup ?? 80 };
  const results: Awaited<ReturnType<typeof checkGroup>>[] = new Array(groups.length);
  try {
    let next = 0;
    const worker = async () => {
      while (next < groups.length) {
        const i = next++;
        const parts = groups[i]!;
        const key = opts.passed?.get(parts.group);
        if (key !== undefined && key === keyOf(parts)) {
          results[i] = { report: { group: parts.group, ok: true, checkMs: 0, runs: 0, ms: 0, key, skipped: true }, errors: [] };
          continue;
        }
        results[i] = await checkGroup(parts, docs, opts.envoy, dir, limits);
      }
    };
    await Promise.all(Array.from({ length: Math.max(1, Math.min(opts.concurrency ?? os.availableParallelism(), groups.length)) }, worker));
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
  // A route shared by several groups (a mesh route is in every sidecar) is reported once.
  const errors = new Map<string, PreflightError>();
  for (const r of results) {
    for (const e of r.errors) {
      const key = JSON.stringify([e.file, e.doc, e.path, e.message.replace(e.groups[0]!, '')]);
      const seen = errors.get(key);
      if (seen) seen.groups.push(...e.groups);
      else errors.set(key, { ...e, groups: [...e.groups] });
    }
  }
  return {
    envoy: { binary: opts.envoy, version },
    groups: results.map((r) => r.report),
    errors: [...errors.values()].sort((a, b) => (a.file === b.file ? (a.doc ?? 0) - (b.doc ?? 0) : a.file < b.file ? -1 : 1)),
    ms: Math.round(performance.now() - t0),
  };
}

// ---------------------------------------------------------------------------------------------
// One route configuration a proxy rejected, when Envoy's NACK message does not say where the
// problem is (src/xds/server/nack-blame.ts): Envoy checks it alone, then without routes and with
// halves of them, to find the route it refuses, then that route without one field at a time.

/** What an Envoy check of one rejected route configuration may spend. */
export interface RouteConfigCheckOptions {
  /** Envoy runs at most (default 40). */
  maxRuns?: number;
  /** Each run's time limit (default 10 s). */
  runTimeoutMs?: number;
}

export interface RefusedRoute {
  /** Position in the route configuration: virtual host and route index. */
  vhost: number;
  route: number;
  name: string;
  /** The refused field of Envoy's route; empty when no single field was found. */
  field: (string | number)[];
  /** Envoy's reason for refusing the route on its own. */
  message: string;
}

export interface RouteConfigCheck {
  refused?: RefusedRoute;
  /** Why no route is named (Envoy accepts the route configuration on its own, the run budget ran out, ...). */
  reason?: string;
  runs: number;
  ms: number;
}

const HCM_TYPE = 'type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager';

/**
 * Which route of `routeConfig` (an Envoy RouteConfiguration as JSON, as it was sent) Envoy `bin`
 * refuses, and its field. The route configuration is put inline in a listener of its own with the
 * router filter only; its cluster references are not checked (clusters are another resource).
 */
export async function isolateRefusedRoute(bin: string, routeConfig: Record<string, unknown>, opts: RouteConfigCheckOptions = {}): Promise<RouteConfigCheck> {
  const t0 = performance.now();
  const rc = clone(routeConfig);
  rc.validate_clusters = { value: false };
  const routes: RoutePart[] = [];
  const at: { vhost: number; route: number }[] = [];
  ((rc.virtual_hosts as Json[] | undefined) ?? []).forEach((vh, vi) => {
    ((vh.routes as Json[] | undefined) ?? []).forEach((json, ri) => {
      const name = typeof json.name === 'string' ? json.name : `#${ri}`;
      routes.push({ json, listener: 0, vhost: vi, name, what: `route "${name}"` });
      at.push({ vhost: vi, route: ri });
    });
    vh.routes = [];
  });
  const listener: Json = {
    name: 'signalbox-nack-check',
    address: { socket_address: { address: '127.0.0.1', port_value: 10000 } },
    filter_chains: [
      {
        filters: [
          {
            name: 'envoy.filters.network.http_connection_manager',
            typed_config: {
              '@type': HCM_TYPE,
              stat_prefix: 'nack_check',
              rds: { route_config_name: String(rc.name ?? ''), config_source: { ads: {} } },
              http_filters: [
                { name: 'envoy.filters.http.router', typed_config: { '@type': 'type.googleapis.com/envoy.extensions.filters.http.router.v3.Router' } },
              ],
            },
          },
        ],
      },
    ],
  };
  const parts: GroupParts = {
    group: 'nack-check',
    listeners: [{ json: listener, routeConfig: rc, what: `route configuration "${String(rc.name ?? '')}"` }],
    routes,
    clusters: [],
    secrets: [],
  };
  const dir = await mkdtemp(path.join(os.tmpdir(), 'signalbox-nack-'));
  const checker = new GroupChecker(parts, bin, dir, opts.maxRuns ?? 40, opts.runTimeoutMs ?? 10_000);
  const done = (r: Omit<RouteConfigCheck, 'runs' | 'ms'>): RouteConfigCheck => ({ ...r, runs: checker.runs, ms: Math.round(performance.now() - t0) });
  try {
    const whole = await checker.check(all(parts));
    if (whole.ok) return done({ reason: 'the checking Envoy accepts the route configuration on its own' });
    const c = await isolate(checker, all(parts), whole.message);
    if (!c) return done({ reason: checker.exhausted ? 'the checking Envoy ran out of runs' : 'no single route explains the refusal' });
    if (c.kind !== 'routes') return done({ reason: 'the checking Envoy refuses the route configuration without any of its routes' });
    const field = await refusedField(checker, parts, c);
    const route = parts.routes[c.index]!;
    return done({ refused: { ...at[c.index]!, name: route.name, field, message: c.message } });
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
}
