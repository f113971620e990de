// `signalbox diff OLD_DIR NEW_DIR`: compiles both policy directories offline, as `serve` would
// (compileDir -> compileGroups: access logging, Mesh tracing, JWT checks, trust bundle), and
// reports, per proxy group, the Envoy resources added, removed and changed, with a field-level diff
// of each change. Serve's settings that change what proxies get are flags, for both sides or one
// (`--old-access-log-sampling 100 --new-access-log-sampling 10`: what that flag change does).
// For CI on policy repositories: exit 0 when identical, 1 when different (2 when a side is invalid).
import path from 'node:path';
import { formatPolicyError, SignalboxError } from '../errors.js';
import { resolveGroup } from '../explain/provenance.js';
import { canonicalJson } from '../xds/resources/resource.js';
import { DIFF_COMMAND } from './commands.js';
import { compileDir, serveLikeOptions, type CompiledGroups } from './compile.js';
import { parseFlags } from './flags.js';

export type Change =
  | { op: 'add'; path: string; value: unknown }
  | { op: 'remove'; path: string; value: unknown }
  | { op: 'change'; path: string; from: unknown; to: unknown };

export interface ResourceDiff {
  type: string;
  name: string;
  status: 'added' | 'removed' | 'changed';
  changes: Change[];
}

export interface GroupDiff {
  group: string;
  status: 'added' | 'removed' | 'changed';
  resources: ResourceDiff[];
}

function isObject(v: unknown): v is Record<string, unknown> {
  return v !== null && typeof v === 'object' && !Array.isArray(v);
}

function join(path: string, key: string | number): string {
  if (typeof key === 'number') return `${path}[${key}]`;
  return /^[A-Za-z_@][\w@.-]*$/.test(key) && !key.includes('.') ? (path ? `${path}.${key}` : key) : `${path}[${JSON.stringify(key)}]`;
}

/** Lists of objects that all have a distinct `name` are compared by name, not by position. */
function byName(list: unknown[]): Map<string, unknown> | undefined {
  if (list.length === 0 || !list.every((x) => isObject(x) && typeof x.name === 'string')) return undefined;
  const m = new Map(list.map((x) => [(x as { name: string }).name, x]));
  return m.size === list.length ? m : undefined;
}

/** Field-level differences between two JSON values. */
export function diffJson(a: unknown, b: unknown, path = ''): Change[] {
  if (canonicalJson(a) === canonicalJson(b)) return [];
  if (isObject(a) && isObject(b)) {
    const out: Change[] = [];
    for (const k of [...new Set([...Object.keys(a), ...Object.keys(b)])].sort()) {
      if (!(k in b)) out.push({ op: 'remove', path: join(path, k), value: a[k] });
      else if (!(k in a)) out.push({ op: 'add', path: join(path, k), value: b[k] });
      else out.push(...diffJson(a[k], b[k], join(path, k)));
    }
    return out;
  }
  if (Array.isArray(a) && Array.isArray(b)) {
    const na = byName(a);
    const nb = byName(b);
    if (na && nb) {
      const out: Change[] = [];
      for (const k of [...new Set([...na.keys(), ...nb.keys()])]) {
        const p = `${path}[name=${k}]`;
        if (!nb.has(k)) out.push({ op: 'remove', path: p, value: na.get(k) });
        else if (!na.has(k)) out.push({ op: 'add', path: p, value: nb.get(k) });
        else out.push(...diffJson(na.get(k), nb.get(k), p));
      }
      return out;
    }
    if (a.length === b.length) return a.flatMap((x, i) => diffJson(x, b[i], join(path, i)));
  }
  return [{ op: 'change', path: path || '(whole value)', from: a, to: b }];
}

/** Differences between two compilations, optionally limited to some groups. */
export function diffGroups(oldGroups: CompiledGroups, newGroups: CompiledGroups, only?: (group: string) => boolean): GroupDiff[] {
  const out: GroupDiff[] = [];
  const names = [...new Set([...Object.keys(oldGroups), ...Object.keys(newGroups)])].filter((g) => !only || only(g)).sort();
  for (const group of names) {
    const a = oldGroups[group];
    const b = newGroups[group];
    const resources: ResourceDiff[] = [];
    for (const type of [...new Set([...Object.keys(a ?? {}), ...Object.keys(b ?? {})])]) {
      const ra = new Map((a?.[type] ?? []).map((r) => [r.name, r]));
      const rb = new Map((b?.[type] ?? []).map((r) => [r.name, r]));
      for (const name of [...new Set([...ra.keys(), ...rb.keys()])].sort()) {
        const x = ra.get(name);
        const y = rb.get(name);
        if (!y) resources.push({ type, name, status: 'removed', changes: [] });
        else if (!x) resources.push({ type, name, status: 'added', changes: [] });
        else if (x.version !== y.version) resources.push({ type, name, status: 'changed', changes: diffJson(x.resource, y.resource) });
      }
    }
    if (resources.length) out.push({ group, status: !a ? 'added' : !b ? 'removed' : 'changed', resources });
  }
  return out;
}

function short(v: unknown): string {
  const text = JSON.stringify(v);
  return text.length > 200 ? `${text.slice(0, 197)}...` : text;
}

const MARK = { added: '+', removed: '-', changed: '~' } as const;

/** The readable form, e.g. `~ cluster orders` followed by `    lb_policy: "ROUND_ROBIN" -> "LEAST_REQUEST"`. */
export function diffText(diffs: GroupDiff[]): string {
  if (diffs.length === 0) return 'no differences\n';
  const lines: string[] = [];
  for (const g of diffs) {
    lines.push(`${MARK[g.status]} proxy group ${g.group}`);
    for (const r of g.resources) {
      lines.push(`  ${MARK[r.status]} ${r.type} ${r.name}`);
      for (const c of r.changes) {
        if (c.op === 'change') lines.push(`      ${c.path}: ${short(c.from)} -> ${short(c.to)}`);
        else lines.push(`      ${c.op === 'add' ? '+' : '-'} ${c.path}: ${short(c.value)}`);
      }
    }
  }
  const count = diffs.reduce((n, g) => n + g.resources.length, 0);
  lines.push(`${count} resource(s) differ in ${diffs.length} proxy group(s)`);
  return `${lines.join('\n')}\n`;
}

/** `signalbox diff`: both directories compiled offline; exit 0 identical, 1 different, 2 invalid. */
export async function diffCommand(args: string[], out: NodeJS.WritableStream = process.stdout, err: NodeJS.WritableStream = process.stderr): Promise<number> {
  const flags = parseFlags(DIFF_COMMAND.flags, args, true);
  const positionals = flags.positionals;
  const values = { ...flags.values, proxy: flags.str('proxy'), json: flags.bool('json') };
  if (positionals.length !== 2) throw new SignalboxError('SB_BAD_FLAG', 'give two policy directories: OLD_DIR NEW_DIR');
  const sidecars = values.proxy ? [values.proxy] : []; // (sidecar groups and +jwt-module variants are built on request)
  const settings = (side: 'old' | 'new') =>
    serveLikeOptions({ ...values, 'access-log-sampling': flags.str(`${side}-access-log-sampling`) ?? flags.str('access-log-sampling') });
  const sides = await Promise.all(positionals.map((d, i) => compileDir(path.resolve(d), sidecars, settings(i === 0 ? 'old' : 'new'))));
  let invalid = false;
  sides.forEach((s, i) => {
    if (s.ok) return;
    invalid = true;
    err.write(`${positionals[i]} does not compile:\n${s.errors.map((e) => `  ${formatPolicyError(e)}`).join('\n')}\n`);
  });
  if (invalid) return 2;
  const [a, b] = sides as { ok: true; groups: CompiledGroups }[];
  let only: ((g: string) => boolean) | undefined;
  if (values.proxy) {
    const all = [...new Set([...Object.keys(a!.groups), ...Object.keys(b!.groups)])];
    const group = resolveGroup(values.proxy, all);
    if (!group) {
      err.write(`signalbox diff: no proxy group "${values.proxy}" on either side (have: ${all.join(', ') || 'none'})\n`);
      return 2;
    }
    only = (g) => g === group;
  }
  const diffs = diffGroups(a!.groups, b!.groups, only);
  out.write(values.json ? `${JSON.stringify({ identical: diffs.length === 0, groups: diffs }, null, 2)}\n` : diffText(diffs));
  return diffs.length ? 1 : 0;
}
