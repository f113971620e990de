// Which resources, policy files, documents and fields a NACK is about, when Envoy's message does
// not name them. Envoy's messages often quote the offending value instead ("regex '[a-z]{300}'
// RE2 program size of 304 > ..."): resources whose config contains a quoted value are blamed, and
// their policy files narrowed to those whose text contains it. A response of one resource is
// blamed whole.
//
// A route configuration is made of routes from many files, so within one the blame goes down to
// the route, its policy document and field, in this order:
// - in-process, with the rules Envoy applies: RE2's errors ("invalid character class range:
//   \p{Garay}") name the offending piece of a regex, which only some regexes contain (re2js tells
//   which of them RE2 refuses); a quoted value is held by some routes only; Envoy's proto
//   validation gives the route's position (VirtualHosts[0] ... Routes[2]);
// - else, in the background, a real Envoy (`envoy --mode validate`, found as `validate --envoy`
//   finds it) checks the route configuration alone, then halves of its routes, then the refused
//   route without one field at a time (src/preflight/envoy.ts). Bounded: one check at a time, a
//   few a minute, a few waiting, a run budget each, one per route configuration version (the
//   answer is kept and shared by every proxy that NACKs it); the record is updated when it comes.
// The route's document and field are then found in its policy file, as `validate --envoy` finds
// them. "One of N" is said only when neither narrows it down, with the N files still suspected.
//
// The message comes from the proxy and may be megabytes long, so everything here is bounded: the
// message is cut before it is kept or logged, only its head is searched, for a few quoted values,
// within a budget of characters; each resource is turned into JSON once (not once per value), and
// each stream has a small allowance of NACKs searched per second (see NackRateLimit). Values are
// never put into the record or the log (they may be secrets): only files, documents and fields.
import { accessSync, constants as fsc, statSync } from 'node:fs';
import path from 'node:path';
import { performance } from 'node:perf_hooks';
import { regexSyntaxProblems } from '../../api/v1alpha1/envoy-limits.js';
import type { Logger } from '../../observability/logger.js';
import { formatPath, type LoadedDoc, type SourceRef } from '../../api/documents.js';
import type { Resource } from '../resources/resource.js';
import { TypeUrl } from '../resources/type-urls.js';

/** Longest NACK message kept (proxy status, admin API) and logged. Envoy's own are a few lines. */
export const MAX_NACK_MESSAGE = 4096;
/** Only this head of a message is searched for resource names and quoted values. */
export const BLAME_WINDOW = 16 * 1024;
/** Quoted values looked for, at most (the first distinct ones of the head). */
export const MAX_FRAGMENTS = 16;
/** Characters of resource JSON and policy text one NACK may search, all values together. */
export const MAX_SEARCH_CHARS = 16 << 20;
/** NACKs of one stream searched per second; the others are counted and recorded as they are. */
export const NACKS_BLAMED_PER_SECOND = 5;

/**
 * The message as kept and logged: at most `max` characters, then a marker saying how much was cut.
 * A copy, not a slice: V8 keeps a sliced string's parent alive, which would hold on to the whole
 * message for as long as the proxy status keeps the cut one.
 */
export function cutMessage(message: string, max = MAX_NACK_MESSAGE): { text: string; cut: number } {
  if (message.length <= max) return { text: message, cut: 0 };
  let end = max;
  const last = message.charCodeAt(end - 1);
  if (last >= 0xd800 && last <= 0xdbff) end--; // never split a surrogate pair
  const cut = message.length - end;
  return { text: Buffer.from(`${message.slice(0, end)} ... [${cut} more characters cut]`, 'utf8').toString('utf8'), cut };
}

/** The part of a message that is searched. */
function head(message: string): string {
  return message.length > BLAME_WINDOW ? message.slice(0, BLAME_WINDOW) : message;
}

/** Quoted fragments of a message's head ('...' or "..."), at least 3 characters long, the first `max` distinct ones. */
export function quotedFragments(message: string, max = MAX_FRAGMENTS): string[] {
  const out = new Set<string>();
  for (const m of head(message).matchAll(/'([^'\n]{3,200})'|"([^"\n]{3,200})"/g)) {
    out.add((m[1] ?? m[2])!);
    if (out.size >= max) break;
  }
  return [...out];
}

/**
 * Printable JSON of each resource, made once per Resource object. Resources are immutable and
 * shared by every stream (and by successive snapshots while unchanged), so this is the index of
 * every version sent; entries go with their resource.
 */
const printableJson = new WeakMap<Resource, string>();

function jsonOf(r: Resource): string {
  let json = printableJson.get(r);
  if (json === undefined) {
    json = JSON.stringify(r.printable);
    printableJson.set(r, json);
  }
  return json;
}

type Json = Record<string, unknown>;
type FieldPath = (string | number)[];

/** A route an Envoy refuses when it checks a route configuration alone (see NackPolicySide). */
export interface RefusedRoute {
  /** Position in the route configuration: virtual host and route index. */
  vhost: number;
  route: number;
  name: string;
  /** The refused field of Envoy's route; empty when no single field was found. */
  field: FieldPath;
  /** Envoy's reason for refusing the route on its own. */
  message: string;
}

/**
 * What NACK attribution needs from the policy side, handed in by whoever wires the server
 * (src/controller/nack-policy-side.ts, for `serve`): the policy files as they are now, where a
 * route's value sits in their documents, and an Envoy that checks a route configuration alone.
 * The server reads no policy file and runs no Envoy itself; without a policy side a NACK is still
 * blamed on its resources and the files they came from, but not narrowed to a document and field.
 */
export interface NackPolicySide {
  /** A policy file's current text; undefined when it cannot be read or is too large. */
  policyText(file: string): string | undefined;
  /** The documents of a policy file's text. */
  parse(text: string, file: string): LoadedDoc[];
  /** Where `value` (at `field` of the route named `routeName`) came from in `docs`, as `validate --envoy` finds it. */
  routeValueSource(
    docs: LoadedDoc[],
    own: LoadedDoc | undefined,
    routeName: string,
    field: FieldPath,
    value: unknown,
    message: string,
  ): { source: SourceRef; path: FieldPath; exact: boolean } | undefined;
  /** The version an Envoy binary reports; throws when it cannot run. */
  envoyVersion(bin: string): Promise<string>;
  /** Which route of a route configuration (printable JSON) Envoy `bin` refuses, within a budget of runs. */
  isolateRefusedRoute(
    bin: string,
    routeConfig: Record<string, unknown>,
    opts: { maxRuns: number; runTimeoutMs: number },
  ): Promise<{ refused?: RefusedRoute; reason?: string; runs: number; ms: number }>;
}

let policySide: NackPolicySide | undefined;

/** Hands NACK attribution its policy side, for the whole process (undefined: resources and files only). */
export function useNackPolicySide(side: NackPolicySide | undefined): void {
  policySide = side;
  parsed.clear();
}

function policyText(file: string): string | undefined {
  return policySide?.policyText(file);
}

/**
 * The document and field a NACK is blamed on, in the one policy file of its `sources`. No values
 * (they may be secrets), and no path (the file is `sources[0]`, shown relative to the policy directory).
 */
export interface NackCulprit {
  /** The document in that file (1-based), its kind and name. */
  doc: number;
  kind: string;
  name: string;
  /** The field holding the refused value (spec.rules[0].matches[0].path.value); the rule when the file no longer holds the value. */
  path?: string;
  line?: number;
  /** Envoy's refused route, and its field there (match.safe_regex.regex). */
  route: string;
  envoyField?: string;
  /**
   * What narrowed it down: RE2's error quotes a piece of that one regex ('re2'), the message
   * quotes that value ('quoted'), Envoy's proto validation gives the route's position ('index'),
   * an Envoy checked the route configuration's parts ('envoy').
   */
  by: 're2' | 'quoted' | 'index' | 'envoy';
}

/** What a NACK record says about its blame, besides the resources. */
export interface NackAttribution {
  /** The policy files blamed: one when narrowed down. */
  sources: string[];
  culprit?: NackCulprit;
  /** Files still suspected (sources.length): 1 once narrowed down. */
  candidates: number;
  /** How it was narrowed down, or why it is "one of N" (no values, no paths). */
  attribution?: string;
}

export interface Blame extends NackAttribution {
  resources: Resource[];
  /** The search budget ran out: the resources found until then. */
  limited: boolean;
  /**
   * Present when an Envoy may narrow the blame down in the background: call it with a function
   * that updates the NACK record (if it is still the same NACK) when the answer comes.
   */
  narrow?: (apply: (update: NackAttribution) => void, log?: Logger) => void;
}

/** Budget of one blame: every character of JSON and policy text searched counts. */
type Spend = (n: number) => boolean;

export function blameNack(sent: ReadonlyMap<string, Resource>, message: string): Blame {
  const text = head(message);
  const all = [...sent.values()];
  let budget = MAX_SEARCH_CHARS;
  let limited = false;
  const spend: Spend = (n) => {
    if (budget <= 0) {
      limited = true;
      return false;
    }
    budget -= n;
    return true;
  };
  let named: Resource[] = [];
  for (const r of all) {
    if (!spend(text.length)) break;
    if (text.includes(r.name)) named.push(r);
  }
  const fragments = quotedFragments(text);
  if (named.length === 0 && fragments.length) {
    // Each value as written and as it appears inside a JSON string (quotes and backslashes escaped).
    const needles = [...new Set(fragments.flatMap((f) => [f, JSON.stringify(f).slice(1, -1)]))];
    search: for (const r of all) {
      const json = jsonOf(r);
      for (const n of needles) {
        if (!spend(json.length)) break search;
        if (json.includes(n)) {
          named.push(r);
          break;
        }
      }
    }
  }
  // Route configurations: the route at fault, in-process (before any guess by file text).
  const routeConfigs = (named.length ? named : all).filter((r) => r.type === TypeUrl.Route);
  const found = routeConfigs.length ? findRoutes(routeConfigs, text, fragments, spend) : undefined;
  if (named.length === 0 && found) named = [...new Set(found.hits.map((h) => h.resource))];
  if (named.length === 0 && all.length === 1) named = all;
  let sources = [...new Set(named.flatMap((r) => r.sources))].sort();
  const answer = found ? answerOf(found, sources, text, spend) : undefined;
  if (answer?.culprit) return { resources: named, limited, ...answer };
  let why = "Envoy's message names no value";
  if (answer) {
    // Several routes hold what the message names, and nothing tells which one Envoy refused.
    sources = answer.sources;
    why = answer.attribution!;
  } else if (sources.length > 1 && fragments.length) {
    const narrowed = sources.filter((f) => {
      const policy = policyText(f);
      return policy !== undefined && fragments.some((q) => spend(policy.length) && policy.includes(q));
    });
    if (narrowed.length) sources = narrowed;
  }
  const blame: Blame = { resources: named, sources, limited, candidates: sources.length };
  // Not narrowed down in-process: a route configuration of several routes can be checked by Envoy
  // (for the document and field even when it comes from one file).
  const checkable = named.filter((r) => r.type === TypeUrl.Route && routeCount(r) > 1);
  if (sources.length > 1 || (sources.length === 1 && checkable.length)) {
    const before: NackAttribution = { sources, candidates: sources.length, attribution: oneOf(sources.length, why) };
    if (checkable.length === 0 || checkable.length > MAX_ROUTE_CONFIGS_CHECKED) {
      blame.attribution = checkable.length
        ? `${before.attribution}, in ${checkable.length} route configurations (more than an Envoy checks)`
        : before.attribution;
    } else {
      const key = checkable.map((r) => `${r.name}\u0000${r.version}`).join('\n');
      const known = envoyNarrowing.outcome(key);
      if (known) Object.assign(blame, resolveOutcome(known, before, text));
      else if (!envoyNarrowing.available()) {
        blame.attribution = `${before.attribution}; no Envoy is available to check the parts with (${envoyNarrowing.unavailableReason()})`;
      } else {
        blame.attribution = `${before.attribution}; an Envoy is checking the route configuration's parts`;
        blame.narrow = (apply, log) => envoyNarrowing.request(key, checkable, (o) => apply(resolveOutcome(o, before, text)), log);
      }
    }
  }
  return blame;
}

function oneOf(n: number, why: string): string {
  return n > 1 ? `one of ${n} files: ${why}` : why;
}

// ---------------------------------------------------------------------------------------------
// In-process: the routes a message points at.

interface RouteHit {
  resource: Resource;
  vhost: number;
  route: number;
  name: string;
  json: Json;
  /** The field of the route holding the value (empty: the route as a whole). */
  field: FieldPath;
  value: unknown;
}

interface Found {
  hits: RouteHit[];
  /** hits[0] is surely the one Envoy refused (else Envoy may have refused any of them). */
  sure: boolean;
  by: NackCulprit['by'];
}

/** The routes of a route configuration as sent, in Envoy's order. */
function* routesOf(r: Resource): Generator<{ vhost: number; route: number; json: Json; name: string }> {
  const vhosts = (r.printable.virtual_hosts as Json[] | undefined) ?? [];
  for (let vi = 0; vi < vhosts.length; vi++) {
    const routes = (vhosts[vi]!.routes as Json[] | undefined) ?? [];
    for (let ri = 0; ri < routes.length; ri++) {
      const json = routes[ri]!;
      yield { vhost: vi, route: ri, json, name: typeof json.name === 'string' ? json.name : `#${ri}` };
    }
  }
}

function routeCount(r: Resource): number {
  let n = 0;
  for (const _ of routesOf(r)) n++;
  return n;
}

/** Every string below `v` with its path; `key`: only those of that key. */
function* stringsOf(v: unknown, at: FieldPath = [], key?: string): Generator<[FieldPath, string]> {
  if (typeof v === 'string') {
    if (key === undefined || at[at.length - 1] === key) yield [at, v];
  } else if (Array.isArray(v)) for (let i = 0; i < v.length; i++) yield* stringsOf(v[i], [...at, i], key);
  else if (v && typeof v === 'object') for (const [k, x] of Object.entries(v)) if (k !== '@type') yield* stringsOf(x, [...at, k], key);
}

/**
 * RE2's error texts (RegexpStatus::CodeText), which Envoy's message repeats, followed by ": " and
 * the offending piece of the regex as written. Longest first (one is the start of another).
 */
const RE2_ERRORS = [
  'invalid escape sequence',
  'invalid character class range',
  'invalid character class',
  'missing ]',
  'missing )',
  'unexpected )',
  'trailing \\',
  'no argument for repetition operator',
  'missing argument to repetition operator',
  'invalid repetition size',
  'bad repetition operator',
  'invalid perl operator',
  'invalid UTF-8',
  'invalid named capture group',
].sort((a, b) => b.length - a.length);
const RE2_ERROR = new RegExp(`(?:^|[\\s:(])(${RE2_ERRORS.map((e) => e.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')).join('|')})(?:: ([^\\n]*))?`);

/** Regexes checked with re2js for one NACK, at most. */
const MAX_REGEXES_CHECKED = 200;
/** Route configurations an Envoy checks for one NACK, at most. */
const MAX_ROUTE_CONFIGS_CHECKED = 4;

/** The routes of `routeConfigs` that the message points at, if it points at some. */
export function findRoutes(routeConfigs: Resource[], message: string, fragments: string[], spend: Spend = () => true): Found | undefined {
  for (const r of routeConfigs) if (!spend(jsonOf(r).length)) return undefined;
  return byIndex(routeConfigs, message) ?? byRe2(routeConfigs, message) ?? byQuote(routeConfigs, fragments);
}

/**
 * Envoy's proto validation names the route's position: "RouteConfigurationValidationError.VirtualHosts[0]:
 * ... | caused by VirtualHostValidationError.Routes[2]: ... | caused by RouteValidationError.Route: ...
 * | caused by RouteActionValidationError.Timeout: ...".
 */
function byIndex(routeConfigs: Resource[], message: string): Found | undefined {
  if (routeConfigs.length !== 1) return undefined;
  const m = /RouteConfigurationValidationError\.VirtualHosts\[(\d+)\][\s\S]*?VirtualHostValidationError\.Routes\[(\d+)\]([\s\S]*)$/.exec(message);
  if (!m) return undefined;
  const resource = routeConfigs[0]!;
  const route = [...routesOf(resource)].find((x) => x.vhost === Number(m[1]) && x.route === Number(m[2]));
  if (!route) return undefined;
  const field: FieldPath = [];
  for (const c of m[3]!.matchAll(/caused by \w+ValidationError\.(\w+)(?:\[(\d+)\])?/g)) {
    field.push(c[1]!.replace(/(?<=[a-z0-9])([A-Z])/g, '_$1').toLowerCase());
    if (c[2] !== undefined) field.push(Number(c[2]));
  }
  let value: unknown = route.json;
  for (const k of field) value = value && typeof value === 'object' ? (value as Record<string | number, unknown>)[k] : undefined;
  const known = value !== undefined;
  return { hits: [{ resource, ...route, field: known ? field : [], value: known ? value : undefined }], sure: true, by: 'index' };
}

/** RE2's error names a piece of the regex: the regexes holding it; re2js tells which of them RE2 refuses. */
function byRe2(routeConfigs: Resource[], message: string): Found | undefined {
  const m = RE2_ERROR.exec(message);
  if (!m) return undefined;
  const piece = (m[2] ?? '').trim();
  const hits: RouteHit[] = [];
  for (const resource of routeConfigs) {
    for (const route of routesOf(resource)) {
      for (const [field, value] of stringsOf(route.json, [], 'regex')) {
        if (piece === '' || value.includes(piece)) hits.push({ resource, ...route, field, value });
      }
    }
  }
  if (hits.length === 0) return undefined;
  const refused = hits.slice(0, MAX_REGEXES_CHECKED).filter((h) => regexSyntaxProblems(h.value as string).length > 0);
  // RE2 refuses each of `refused`: Envoy stopped at the first. (re2js's Unicode tables are not
  // RE2's: it accepts \p{Garay}, which Envoy 1.36 refuses; then only the piece tells.)
  if (refused.length) return { hits: refused, sure: true, by: 're2' };
  return { hits, sure: hits.length === 1, by: 're2' };
}

/** The message quotes a value: the routes holding it. */
function byQuote(routeConfigs: Resource[], fragments: string[]): Found | undefined {
  if (!fragments.length) return undefined;
  const hits: RouteHit[] = [];
  for (const resource of routeConfigs) {
    for (const route of routesOf(resource)) {
      for (const [field, value] of stringsOf(route.json)) {
        if (field[0] !== 'name' && fragments.includes(value)) {
          hits.push({ resource, ...route, field, value });
          break;
        }
      }
    }
  }
  return hits.length ? { hits, sure: hits.length === 1, by: 'quoted' } : undefined;
}

/**
 * What a NACK is blamed on, from the routes found: the first one's document and field when it is
 * surely the one (or all of them come from one file and the first is sure); else the files of the
 * routes found, "one of N". Undefined when none of them can be found in the policy files.
 */
function answerOf(found: Found, sources: string[], message: string, spend: Spend): Omit<Blame, 'resources' | 'limited'> | undefined {
  const first = found.hits[0]!;
  if (found.sure) {
    const origin = originOf(first, sources, message, spend);
    if (origin) return { sources: [origin.file], culprit: culpritOf(first, origin, found.by), candidates: 1, attribution: HOW[found.by] };
    return undefined;
  }
  const files = new Set<string>();
  for (const h of found.hits.slice(0, 16)) {
    const o = originOf(h, sources, message, spend);
    if (o) files.add(o.file);
  }
  if (files.size === 0) return undefined;
  const list = [...files].sort();
  return { sources: list, candidates: list.length, attribution: `${found.hits.length} routes hold what Envoy's message names` };
}

const HOW: Record<NackCulprit['by'], string> = {
  re2: "narrowed down in-process: RE2's error names a piece of this one regex",
  quoted: 'narrowed down in-process: the message quotes the value this route holds',
  index: "narrowed down in-process: Envoy's validation error gives the route's position",
  envoy: "narrowed down by an Envoy checking the route configuration's parts",
};

// ---------------------------------------------------------------------------------------------
// From an Envoy route back to its policy document and field.

/** Parsed policy files, by path, while their text is unchanged (a few: NACKs name few files). */
const parsed = new Map<string, { text: string; docs: LoadedDoc[] }>();
const MAX_PARSED_FILES = 32;
/** Larger policy files are not parsed here (the file is still blamed, without document and field). */
const MAX_PARSED_BYTES = 1 << 20;

function docsOf(file: string, text: string): LoadedDoc[] {
  const hit = parsed.get(file);
  if (hit && hit.text === text) return hit.docs;
  const docs = policySide!.parse(text, file);
  parsed.delete(file);
  parsed.set(file, { text, docs });
  if (parsed.size > MAX_PARSED_FILES) parsed.delete(parsed.keys().next().value!);
  return docs;
}

interface Origin {
  file: string;
  doc: LoadedDoc;
  path: FieldPath;
}

/**
 * The policy document a route comes from and the field holding `hit.value`. Route names say whose
 * they are: `<HTTPRoute>/<rule>/match-N`, a sidecar's `<Service>/default`, `inbound/<Service>`.
 */
function originOf(hit: RouteHit, files: string[], message: string, spend: Spend): Origin | undefined {
  const side = policySide;
  if (!side) return undefined;
  const segments = hit.name.split('/');
  const owner = segments[0] === 'inbound' && segments.length === 2 ? segments[1]! : segments[0]!;
  const docs: LoadedDoc[] = [];
  for (const f of files) {
    const text = policyText(f);
    if (text === undefined || text.length > MAX_PARSED_BYTES || !text.includes(owner)) continue;
    if (!spend(text.length * 4)) break;
    docs.push(...docsOf(f, text));
  }
  const own = docs.find((d) => d.kind === 'HTTPRoute' && d.name === owner) ?? docs.find((d) => d.kind === 'Service' && d.name === owner);
  const at = side.routeValueSource(docs, own, hit.name, hit.field, hit.value, message);
  if (!at) return undefined;
  const doc = docs.find((d) => d.source.file === at.source.file && d.source.doc === at.source.doc);
  return doc ? { file: at.source.file, doc, path: at.path } : undefined;
}

function culpritOf(hit: RouteHit, o: Origin, by: NackCulprit['by']): NackCulprit {
  return {
    doc: o.doc.source.doc,
    kind: o.doc.kind,
    name: o.doc.name,
    path: o.path.length ? formatPath(o.path) : undefined,
    line: o.path.length ? o.doc.lineOf(o.path) : undefined,
    route: hit.name,
    envoyField: hit.field.length ? formatPath(hit.field) : undefined,
    by,
  };
}

// ---------------------------------------------------------------------------------------------
// In the background: an Envoy checks the route configuration's parts.

/** How much checking with Envoy NACKs may cause, for the whole process. */
export const NARROWING_LIMITS = {
  /** Checks started per minute (a token bucket of `burst`), whatever the proxies send. */
  perMinute: 6,
  burst: 3,
  /** Checks waiting for the one running; more are refused ("one of N" stays). */
  queued: 4,
  /** Envoy runs per check, and each run's time limit. */
  maxRuns: 40,
  runTimeoutMs: 10_000,
  /** Answers kept, by route configuration version. */
  kept: 128,
  /** NACK records waiting for one check's answer. */
  waiters: 1000,
};

export interface NarrowingOutcome {
  refused?: { resource: Resource; route: RefusedRoute };
  /** Why no route was found. */
  reason?: string;
  envoy?: string;
  runs: number;
  ms: number;
}

interface Job {
  key: string;
  routeConfigs: Resource[];
  waiters: ((o: NarrowingOutcome) => void)[];
  log?: Logger;
}

/** The Envoy binary `validate --envoy` would use: $SIGNALBOX_PREFLIGHT_ENVOY, $SIGNALBOX_ENVOY_BIN, else `envoy` on PATH. */
function discoverEnvoy(): string | undefined {
  const given = process.env.SIGNALBOX_PREFLIGHT_ENVOY || process.env.SIGNALBOX_ENVOY_BIN;
  if (given) return given;
  for (const dir of (process.env.PATH ?? '').split(path.delimiter)) {
    if (!dir) continue;
    const candidate = path.join(dir, 'envoy');
    try {
      accessSync(candidate, fsc.X_OK);
      if (statSync(candidate).isFile()) return candidate;
    } catch {
      // not there
    }
  }
  return undefined;
}

/** One at a time, a few a minute: a proxy cannot make the control plane run Envoys without bound. */
export class EnvoyNarrowing {
  private configured?: string | false;
  private discovered?: string | null;
  private version?: string;
  private failedUntil = 0;
  private failure?: string;
  private tokens: number;
  private refilledAt = performance.now();
  private running = false;
  private readonly queue: Job[] = [];
  private readonly jobs = new Map<string, Job>();
  private readonly outcomes = new Map<string, NarrowingOutcome>();
  /** Checks started, refused (rate or queue), answered: for tests and logs. */
  readonly counts = { started: 0, refused: 0, answered: 0 };

  constructor(readonly limits = NARROWING_LIMITS) {
    this.tokens = limits.burst;
  }

  /** The Envoy binary (false: none, never check); undefined: discovered as `validate --envoy` does. */
  configure(envoy: string | false | undefined): void {
    this.configured = envoy;
    this.discovered = undefined;
    this.version = undefined;
    this.failedUntil = 0;
  }

  private binary(): string | undefined {
    if (this.configured === false) return undefined;
    if (this.configured) return this.configured;
    if (this.discovered === undefined) this.discovered = discoverEnvoy() ?? null;
    return this.discovered ?? undefined;
  }

  available(now = performance.now()): boolean {
    return this.binary() !== undefined && now >= this.failedUntil;
  }

  unavailableReason(): string {
    if (this.binary() === undefined) return this.configured === false ? 'checking with Envoy is off' : 'set SIGNALBOX_ENVOY_BIN, or put envoy on PATH';
    return this.failure ?? 'the checking Envoy could not run';
  }

  /** The answer already found for this route configuration version, if any. */
  outcome(key: string): NarrowingOutcome | undefined {
    return this.outcomes.get(key);
  }

  /** Checks `routeConfigs` (once per key, bounded); `done` gets the answer, or at once why there is none. */
  request(key: string, routeConfigs: Resource[], done: (o: NarrowingOutcome) => void, log?: Logger): void {
    const known = this.outcomes.get(key);
    if (known) {
      done(known);
      return;
    }
    const job = this.jobs.get(key);
    if (job) {
      if (job.waiters.length < this.limits.waiters) job.waiters.push(done);
      return;
    }
    const now = performance.now();
    this.tokens = Math.min(this.limits.burst, this.tokens + ((now - this.refilledAt) / 60_000) * this.limits.perMinute);
    this.refilledAt = now;
    if (this.tokens < 1 || this.queue.length >= this.limits.queued) {
      this.counts.refused++;
      done({ reason: `not checked: more NACKs to check than the limit (${this.limits.perMinute} a minute, ${this.limits.queued} waiting)`, runs: 0, ms: 0 });
      return;
    }
    this.tokens--;
    this.counts.started++;
    const j: Job = { key, routeConfigs, waiters: [done], log };
    this.jobs.set(key, j);
    this.queue.push(j);
    this.pump();
  }

  private pump(): void {
    if (this.running) return;
    const job = this.queue.shift();
    if (!job) return;
    this.running = true;
    void this.check(job)
      .catch((e: unknown): NarrowingOutcome => ({ reason: `the checking Envoy failed: ${(e as Error).message}`, runs: 0, ms: 0 }))
      .then((o) => {
        this.counts.answered++;
        this.jobs.delete(job.key);
        // Kept unless the limit or a failure to run said nothing about this configuration.
        if (o.refused || o.envoy) {
          this.outcomes.set(job.key, o);
          if (this.outcomes.size > this.limits.kept) this.outcomes.delete(this.outcomes.keys().next().value!);
        }
        job.log?.info(
          {
            routeConfigs: job.routeConfigs.map((r) => r.name),
            route: o.refused?.route.name,
            envoyField: o.refused?.route.field.length ? formatPath(o.refused.route.field) : undefined,
            reason: o.reason,
            runs: o.runs,
            ms: o.ms,
            envoy: o.envoy,
          },
          'NACK checked with Envoy',
        );
        for (const w of job.waiters) w(o);
      })
      .finally(() => {
        this.running = false;
        this.pump();
      });
  }

  private async check(job: Job): Promise<NarrowingOutcome> {
    const bin = this.binary();
    const side = policySide;
    if (!side) return { reason: 'no policy side to check with (the server was started without one)', runs: 0, ms: 0 };
    if (!bin || performance.now() < this.failedUntil) return { reason: `no Envoy to check with (${this.unavailableReason()})`, runs: 0, ms: 0 };
    if (!this.version) {
      try {
        this.version = await side.envoyVersion(bin);
      } catch (e) {
        // Not tried again for a while (a missing binary is not a reason to spawn on every NACK).
        this.failedUntil = performance.now() + 10 * 60_000;
        this.failure = (e as Error).message;
        return { reason: `the checking Envoy cannot run: ${this.failure}`, runs: 0, ms: 0 };
      }
    }
    let runs = 0;
    let ms = 0;
    let reason = 'no route configuration to check';
    for (const resource of job.routeConfigs) {
      const left = this.limits.maxRuns - runs;
      if (left <= 0) {
        reason = 'the checking Envoy ran out of runs';
        break;
      }
      const r = await side.isolateRefusedRoute(bin, resource.printable, { maxRuns: left, runTimeoutMs: this.limits.runTimeoutMs });
      runs += r.runs;
      ms += r.ms;
      if (r.refused) return { refused: { resource, route: r.refused }, envoy: this.version, runs, ms };
      reason = r.reason ?? reason;
    }
    return { reason, envoy: this.version, runs, ms };
  }
}

/** The process's one narrowing queue (its limits hold for every stream together). */
export const envoyNarrowing = new EnvoyNarrowing();

/** Words of a message, to tell whether Envoy refused a part for the reason the proxy gave. */
function words(s: string): Set<string> {
  return new Set(s.toLowerCase().match(/[a-z0-9_]{3,}/g) ?? []);
}

/** Whether `checked` (the checking Envoy's reason) says what the NACK `message` says: most of its words are in it. */
export function sameReason(checked: string, message: string): boolean {
  const a = words(checked);
  if (a.size === 0) return false;
  const b = words(head(message));
  let n = 0;
  for (const w of a) if (b.has(w)) n++;
  return n / a.size >= 0.6;
}

/** The record's blame once the Envoy check answered (`before`: what it said until then). */
function resolveOutcome(o: NarrowingOutcome, before: NackAttribution, message: string): NackAttribution {
  const n = before.sources.length;
  if (!o.refused)
    return {
      sources: before.sources,
      candidates: n,
      attribution: `${before.attribution ?? oneOf(n, 'not narrowed down')}; ${o.reason ?? 'the checking Envoy found nothing'}`,
    };
  const { resource, route } = o.refused;
  if (!sameReason(route.message, message)) {
    return {
      sources: before.sources,
      candidates: n,
      attribution: `${before.attribution ?? oneOf(n, 'not narrowed down')}; the checking Envoy${o.envoy ? ` ${o.envoy}` : ''} refuses route "${route.name}" for another reason than the proxy`,
    };
  }
  const json = [...routesOf(resource)].find((x) => x.vhost === route.vhost && x.route === route.route)?.json ?? {};
  let value: unknown = json;
  for (const k of route.field) value = value && typeof value === 'object' ? (value as Record<string | number, unknown>)[k] : undefined;
  const hit: RouteHit = { resource, vhost: route.vhost, route: route.route, name: route.name, json, field: route.field, value };
  let budget = MAX_SEARCH_CHARS;
  const origin = originOf(hit, resource.sources, message, (c) => {
    budget -= c;
    return budget > 0;
  });
  if (!origin)
    return {
      sources: before.sources,
      candidates: n,
      attribution: `${before.attribution ?? oneOf(n, 'not narrowed down')}; the checking Envoy refuses route "${route.name}", which no policy file names now`,
    };
  return {
    sources: [origin.file],
    culprit: culpritOf(hit, origin, 'envoy'),
    candidates: 1,
    attribution: `${HOW.envoy} (Envoy${o.envoy ? ` ${o.envoy}` : ''}, ${o.runs} runs, ${o.ms} ms)`,
  };
}

/**
 * How many NACKs of one stream get searched: NACKS_BLAMED_PER_SECOND per one-second window. A
 * proxy may NACK the same response over and over; past the allowance a NACK is only counted and
 * recorded, so a flood costs a counter increment each.
 */
export class NackRateLimit {
  private windowStart = -Infinity;
  private used = 0;

  constructor(private readonly perSecond = NACKS_BLAMED_PER_SECOND) {}

  /** 'search' within the allowance; 'first-over' for the first NACK past it in a window (worth one log line); 'over' after. */
  take(now = performance.now()): 'search' | 'first-over' | 'over' {
    if (now - this.windowStart >= 1000) {
      this.windowStart = now;
      this.used = 0;
    }
    this.used++;
    if (this.used <= this.perSecond) return 'search';
    return this.used === this.perSecond + 1 ? 'first-over' : 'over';
  }
}
