// Which resources (and policy files) a NACK is about, when Envoy's message does not name the
// resource. Envoy's messages often quote the offending value instead ("regex '[a-z]{300}' RE2
// program size of 304 > ..."): resources whose config contains a quoted value are blamed, and
// their policy files narrowed to those whose text contains it. A response of one resource is
// blamed whole.
//
// The message comes from the proxy and may be megabytes long, so everything here is bounded: the
// message is cut before it is kept or logged, only its head is searched, for a few quoted values,
// within a budget of characters; each resource is turned into JSON once (not once per value), and
// each stream has a small allowance of NACKs searched per second (see NackRateLimit).
import { readFileSync, statSync } from 'node:fs';
import path from 'node:path';
import { performance } from 'node:perf_hooks';
import type { Resource } from '../resources/resource.js';

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
  if (json === undefined) printableJson.set(r, (json = JSON.stringify(r.printable)));
  return json;
}

function policyText(file: string): string | undefined {
  try {
    const full = path.resolve(file);
    if (statSync(full).size > 4 << 20) return undefined;
    return readFileSync(full, 'utf8');
  } catch {
    return undefined;
  }
}

export interface Blame {
  resources: Resource[];
  sources: string[];
  /** The search budget ran out: the resources found until then. */
  limited: boolean;
}

export function blameNack(sent: ReadonlyMap<string, Resource>, message: string): Blame {
  const text = head(message);
  const all = [...sent.values()];
  let budget = MAX_SEARCH_CHARS;
  let limited = false;
  const spend = (n: number): boolean => {
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
  if (named.length === 0 && all.length === 1) named = all;
  let sources = [...new Set(named.flatMap((r) => r.sources))].sort();
  if (sources.length > 1 && fragments.length) {
    const narrowed = sources.filter((f) => {
      const policy = policyText(f);
      return policy !== undefined && fragments.some((q) => spend(policy.length) && policy.includes(q));
    });
    if (narrowed.length) sources = narrowed;
  }
  return { resources: named, sources, limited };
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
