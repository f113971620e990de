// Which resources (and policy files) a NACK is about, when Envoy's message does not name the
// resource. Envoy's messages often quote the offending value instead ("regex '[a-z]{300}' RE2
// program size of 304 > ..."): resources whose config contains a quoted value are blamed, and
// their policy files narrowed to those whose text contains it. A response of one resource is
// blamed whole.
import { readFileSync, statSync } from 'node:fs';
import path from 'node:path';
import type { Resource } from '../resources/resource.js';

/** Quoted fragments of a message ('...' or "..."), at least 3 characters long. */
export function quotedFragments(message: string): string[] {
  const out = new Set<string>();
  for (const m of message.matchAll(/'([^'\n]{3,200})'|"([^"\n]{3,200})"/g)) out.add((m[1] ?? m[2])!);
  return [...out];
}

function contains(r: Resource, fragment: string): boolean {
  const json = JSON.stringify(r.printable);
  return json.includes(fragment) || json.includes(JSON.stringify(fragment).slice(1, -1));
}

function fileContains(file: string, fragment: string): boolean {
  try {
    const full = path.resolve(file);
    if (statSync(full).size > 4 << 20) return false;
    return readFileSync(full, 'utf8').includes(fragment);
  } catch {
    return false;
  }
}

export function blameNack(sent: ReadonlyMap<string, Resource>, message: string): { resources: Resource[]; sources: string[] } {
  const all = [...sent.values()];
  let named = all.filter((r) => message.includes(r.name));
  const fragments = quotedFragments(message);
  if (named.length === 0 && fragments.length) named = all.filter((r) => fragments.some((f) => contains(r, f)));
  if (named.length === 0 && all.length === 1) named = all;
  let sources = [...new Set(named.flatMap((r) => r.sources))].sort();
  if (sources.length > 1 && fragments.length) {
    const narrowed = sources.filter((f) => fragments.some((q) => fileContains(f, q)));
    if (narrowed.length) sources = narrowed;
  }
  return { resources: named, sources };
}
