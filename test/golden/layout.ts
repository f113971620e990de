// Where the golden files live and how they are written and read back (golden.test.ts).
//
// The inputs are the policy directories test/golden/cases/<case>/. What each must produce lives in
// a tree of its own, test/golden/expected/<case>/ (the policy loader reads every YAML file below a
// policy directory, so the goldens cannot sit inside it), in two stages:
//
//   ir/<group>.yaml                      policy -> IR: the group's IR, and the instances of every
//                                        service its EDS clusters name (the translator's other input)
//   envoy/<group>/listeners.yaml         IR -> Envoy: the translator's output for the committed IR
//   envoy/<group>/routes.yaml              above, one file per resource type (a type the group has
//   envoy/<group>/clusters.yaml            no resource of has no file), each a list of the resources
//   envoy/<group>/endpoints.yaml           as printed (secrets redacted), sorted by name
//   envoy/<group>/secrets.yaml
//   envoy/<group>/versions.yaml          every resource's version (content hash), by type and name
//
// A group such as `gateway/edge` is a folder path (ir/gateway/edge.yaml). A variant of a case
// (cases/<case>/variants.json) has the same tree under expected/<case>/variants/<variant>/.
//
// YAML with keys sorted at every level and no line folding: one changed field is one changed line,
// and multi-line strings (the JWT fast path's Lua script, certificates) are block scalars whose
// lines diff one by one. Versions sit in a file of their own so that a field change shows as that
// field in the resource file plus one hash per changed resource in versions.yaml.
import { readdirSync, readFileSync, statSync } from 'node:fs';
import path from 'node:path';
import { parse, stringify } from 'yaml';
import type { PrintedGroup } from '../../src/controller/compile-groups.js';
import type { Instance, IRProxyConfig } from '../../src/ir/types.js';
import { PUSH_ORDER, SHORT_NAME } from '../../src/xds/resources/type-urls.js';
import { displayPath } from '../../src/sources/files/loader.js';
import { REDACTED } from '../../src/xds/translator/secret.js';
import { repoRoot } from '../helpers/envoy.js';

export const CASES = path.join(repoRoot(), 'test', 'golden', 'cases');
export const EXPECTED = path.join(repoRoot(), 'test', 'golden', 'expected');

/** The file of each resource type in envoy/<group>/, in push order. */
export const TYPE_FILES: readonly { short: string; file: string }[] = PUSH_ORDER.map((t) => ({ short: SHORT_NAME[t], file: `${SHORT_NAME[t]}s.yaml` }));
export const VERSIONS_FILE = 'versions.yaml';

/** Where a case's (or one of its variants') goldens live. */
export function goldenRoot(name: string, variant: string): string {
  return variant ? path.join(EXPECTED, name, 'variants', variant) : path.join(EXPECTED, name);
}

/** A group's name as a relative path; refuses a name that could leave its folder. */
export function groupPath(group: string): string {
  const parts = group.split('/');
  if (parts.some((p) => p === '' || p === '.' || p === '..' || p.startsWith('.') || /[\\\0]/.test(p)))
    throw new Error(`proxy group "${group}" cannot be a golden file path`);
  return parts.join('/');
}

export function sortKeys(v: unknown): unknown {
  if (Array.isArray(v)) return v.map(sortKeys);
  if (v && typeof v === 'object') {
    const o = v as Record<string, unknown>;
    return Object.fromEntries(
      Object.keys(o)
        .sort()
        .filter((k) => o[k] !== undefined)
        .map((k) => [k, sortKeys(o[k])]),
    );
  }
  return v;
}

/** The golden form of a value: YAML, keys sorted, no folding, no anchors. */
export function yamlText(v: unknown): string {
  return stringify(sortKeys(v), { lineWidth: 0, minContentWidth: 0, aliasDuplicateObjects: false });
}

/** Every file below dir, as relative '/'-separated paths, sorted ([] when dir does not exist). */
export function filesBelow(dir: string): string[] {
  const out: string[] = [];
  const walk = (d: string, rel: string) => {
    let names: string[];
    try {
      names = readdirSync(d);
    } catch {
      return;
    }
    for (const n of names) {
      const full = path.join(d, n);
      if (statSync(full).isDirectory()) walk(full, rel ? `${rel}/${n}` : n);
      else out.push(rel ? `${rel}/${n}` : n);
    }
  };
  walk(dir, '');
  return out.sort();
}

// --- policy -> IR ---------------------------------------------------------------------------------

/** The translator's input for one group: its IR and the instances of the services its EDS clusters name. */
export interface IRGolden {
  ir: IRProxyConfig;
  instances: Record<string, readonly Instance[]>;
}

const keyMark = (file: string) => `${REDACTED} (the case's ${file})`;
const KEY_MARK = new RegExp(`^${REDACTED.replace(/[[\]()]/g, '\\$&')} \\(the case's (.+)\\)$`);

/**
 * The IR golden of a group. Source files are written relative to the case's folder; a secret's
 * private key is never written: it is replaced by the name of the case's file that holds it (the
 * IR -> Envoy stage reads it back from there, so the Secret's version is the served one).
 */
export function irGoldenText(g: IRGolden, caseDir: string): string {
  const keyFiles = new Map<string, string>();
  for (const f of filesBelow(caseDir)) keyFiles.set(readFileSync(path.join(caseDir, f), 'utf8'), f);
  const ir = mapSources(g.ir, (file) => path.relative(caseDir, file).split(path.sep).join('/')) as IRProxyConfig;
  const secrets = ir.secrets.map((s) => {
    const file = keyFiles.get(s.privateKeyPem);
    if (file === undefined) throw new Error(`${ir.group}: the private key of secret ${s.name} is not a file of the case, so the IR golden cannot name it`);
    return { ...s, privateKeyPem: keyMark(file) };
  });
  const instances = Object.fromEntries(
    Object.keys(g.instances)
      .sort()
      .map((s) => [s, g.instances[s]]),
  );
  // `ir` before `instances`; within each, keys sorted.
  return stringify({ ir: sortKeys({ ...ir, secrets }), instances: sortKeys(instances) }, { lineWidth: 0, minContentWidth: 0, aliasDuplicateObjects: false });
}

/** An IR golden read back as the translator's input: source files named as the loader names them, private keys from their files. */
export function parseIRGolden(text: string, caseDir: string): IRGolden {
  const doc = parse(text) as { ir?: IRProxyConfig; instances?: Record<string, Instance[]> } | null;
  if (!doc?.ir || typeof doc.ir !== 'object') throw new Error('an IR golden has the keys ir and instances');
  // As the loader names files: relative to the working directory when below it.
  const ir = mapSources(doc.ir, (file) => displayPath(path.join(caseDir, file))) as IRProxyConfig;
  ir.secrets = (ir.secrets ?? []).map((s) => {
    const m = KEY_MARK.exec(s.privateKeyPem);
    if (!m) throw new Error(`${ir.group}: secret ${s.name}: the private key must be written as "${keyMark('FILE')}"`);
    const file = path.resolve(caseDir, m[1]!);
    if (path.relative(caseDir, file).startsWith('..')) throw new Error(`${ir.group}: secret ${s.name}: ${m[1]} is not a file of the case`);
    return { ...s, privateKeyPem: readFileSync(file, 'utf8') };
  });
  return { ir, instances: doc.instances ?? {} };
}

/** A copy with every SourceRef's file ({ file, doc }) mapped. */
function mapSources(v: unknown, f: (file: string) => string): unknown {
  if (Array.isArray(v)) return v.map((x) => mapSources(x, f));
  if (v && typeof v === 'object') {
    const o = v as Record<string, unknown>;
    const isSource = typeof o.file === 'string' && typeof o.doc === 'number' && Object.keys(o).length === 2;
    if (isSource) return { file: f(o.file as string), doc: o.doc };
    return Object.fromEntries(Object.entries(o).map(([k, x]) => [k, mapSources(x, f)]));
  }
  return v;
}

// --- IR -> Envoy ----------------------------------------------------------------------------------

/** A group's Envoy goldens, by file name in envoy/<group>/. */
export function envoyGoldenFiles(g: PrintedGroup): Map<string, string> {
  const out = new Map<string, string>();
  const versions: Record<string, Record<string, string>> = {};
  for (const { short, file } of TYPE_FILES) {
    const list = g[short] ?? [];
    if (!list.length) continue;
    out.set(file, yamlText(list.map((r) => r.resource)));
    versions[file.replace(/\.yaml$/, '')] = Object.fromEntries(list.map((r) => [r.name, r.version]));
  }
  out.set(VERSIONS_FILE, yamlText(versions));
  return out;
}

/** A group's printed resources read back from its Envoy goldens (the inverse of envoyGoldenFiles). */
export function readEnvoyGoldens(dir: string): PrintedGroup {
  const versions = (parse(readFileSync(path.join(dir, VERSIONS_FILE), 'utf8')) ?? {}) as Record<string, Record<string, string>>;
  const out: PrintedGroup = {};
  for (const { short, file } of TYPE_FILES) {
    const byName = Object.entries(versions[file.replace(/\.yaml$/, '')] ?? {});
    const resources = byName.length ? (parse(readFileSync(path.join(dir, file), 'utf8')) as unknown[]) : [];
    if (resources.length !== byName.length) throw new Error(`${dir}: ${file} has ${resources.length} resources, ${VERSIONS_FILE} names ${byName.length}`);
    out[short] = byName.map(([name, version], i) => ({ name, version, resource: resources[i] }));
  }
  return out;
}
