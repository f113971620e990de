// The import scan behind test/unit/layering.test.ts: every module specifier a TypeScript file under
// a source root names (static imports and re-exports, type-only ones included, dynamic `import(...)`
// calls and `import('...')` types), the layer each side belongs to, and the rule of the layering
// table in docs/architecture.md that an import breaks. The table is read from the document itself,
// so the rules the docs state are the rules the test applies.
import { readdirSync, readFileSync, statSync } from 'node:fs';
import path from 'node:path';
import ts from 'typescript';

/** One row of the layering table: a layer (a folder or file under src/, slash-separated) and what it may import. */
export interface LayerRule {
  layer: string;
  mayImport: string[];
}

/** Files a layer may import although its rule says no: `file -> target` (both relative to src/). */
export type Exceptions = Set<string>;

export interface ImportSite {
  /** The specifier as written. */
  specifier: string;
  line: number;
  kind: 'import' | 'import type' | 'export from' | 'dynamic import()' | 'import() type' | 'require';
}

export interface Violation {
  /** The importing file, relative to the source root. */
  file: string;
  line: number;
  specifier: string;
  kind: ImportSite['kind'];
  /** Why it breaks the rules, naming the rule. */
  rule: string;
}

const LAYER = /^`([^`]+)`$/;

/**
 * The rules in the Markdown table that follows `heading`: the first column names the layer in
 * backticks, the last column lists what it may import as backticked names ("—" or nothing: only
 * itself). Throws when the table is missing or a row cannot be read, so a broken table never passes
 * as "no rules".
 */
export function parseLayerRules(markdown: string, heading = /^## Layering/): LayerRule[] {
  const lines = markdown.split('\n');
  const start = lines.findIndex((l) => heading.test(l));
  if (start < 0) throw new Error(`no heading matching ${heading}`);
  let i = lines.findIndex((l, j) => j > start && l.startsWith('| layer'));
  if (i < 0) throw new Error(`no "| layer ..." table after ${heading}`);
  const rules: LayerRule[] = [];
  for (i += 2; i < lines.length && lines[i]!.startsWith('|'); i++) {
    const cells = lines[i]!.slice(1, -1)
      .split('|')
      .map((c) => c.trim());
    const m = LAYER.exec(cells[0]!);
    if (!m) throw new Error(`layering table row ${JSON.stringify(lines[i])}: the first cell must be one layer in backticks`);
    const allowed = [...cells[cells.length - 1]!.matchAll(/`([^`]+)`/g)].map((x) => x[1]!);
    rules.push({ layer: m[1]!, mayImport: allowed });
  }
  if (rules.length === 0) throw new Error('the layering table has no rows');
  const seen = new Set<string>();
  for (const r of rules) {
    if (seen.has(r.layer)) throw new Error(`layer ${r.layer} appears twice in the layering table`);
    seen.add(r.layer);
  }
  for (const r of rules) for (const a of r.mayImport) if (!seen.has(a)) throw new Error(`layer ${r.layer} may import ${a}, which is not a layer of the table`);
  return rules;
}

/** The exceptions listed after `heading` as "- `file` -> `target`" lines (both relative to src/). */
export function parseExceptions(markdown: string, heading = /^### Known exceptions/): Exceptions {
  const lines = markdown.split('\n');
  const start = lines.findIndex((l) => heading.test(l));
  const out = new Set<string>();
  if (start < 0) return out;
  for (let i = start + 1; i < lines.length && !lines[i]!.startsWith('#'); i++) {
    const m = /^- `([^`]+)` -> `([^`]+)`/.exec(lines[i]!);
    if (m) out.add(`${m[1]} -> ${m[2]}`);
  }
  return out;
}

/** A cycle among the rules' layers (each rule an edge to what it may import), or undefined. */
export function ruleCycle(rules: LayerRule[]): string[] | undefined {
  const next = new Map(rules.map((r) => [r.layer, r.mayImport]));
  const state = new Map<string, 'open' | 'done'>();
  const stack: string[] = [];
  const visit = (l: string): string[] | undefined => {
    if (state.get(l) === 'done') return undefined;
    if (state.get(l) === 'open') return [...stack.slice(stack.indexOf(l)), l];
    state.set(l, 'open');
    stack.push(l);
    for (const n of next.get(l) ?? []) {
      const c = visit(n);
      if (c) return c;
    }
    stack.pop();
    state.set(l, 'done');
    return undefined;
  };
  for (const r of rules) {
    const c = visit(r.layer);
    if (c) return c;
  }
  return undefined;
}

/** Every module specifier in one file's text, with its line and the form it takes. */
export function importsOf(fileName: string, text: string): ImportSite[] {
  const sf = ts.createSourceFile(fileName, text, ts.ScriptTarget.Latest, true, ts.ScriptKind.TS);
  const out: ImportSite[] = [];
  const add = (spec: ts.Expression | undefined, kind: ImportSite['kind'], at: ts.Node): void => {
    const line = sf.getLineAndCharacterOfPosition(at.getStart(sf)).line + 1;
    if (spec && ts.isStringLiteralLike(spec)) out.push({ specifier: spec.text, line, kind });
    // A specifier computed at run time cannot be checked, so it is reported as one.
    else out.push({ specifier: spec ? `<computed: ${spec.getText(sf)}>` : '<none>', line, kind });
  };
  const visit = (n: ts.Node): void => {
    if (ts.isImportDeclaration(n)) add(n.moduleSpecifier, n.importClause?.isTypeOnly ? 'import type' : 'import', n);
    else if (ts.isExportDeclaration(n) && n.moduleSpecifier) add(n.moduleSpecifier, 'export from', n);
    else if (ts.isImportEqualsDeclaration(n) && ts.isExternalModuleReference(n.moduleReference)) add(n.moduleReference.expression, 'require', n);
    else if (ts.isCallExpression(n) && n.expression.kind === ts.SyntaxKind.ImportKeyword) add(n.arguments[0], 'dynamic import()', n);
    else if (ts.isImportTypeNode(n) && ts.isLiteralTypeNode(n.argument)) add(n.argument.literal as ts.Expression, 'import() type', n);
    ts.forEachChild(n, visit);
  };
  visit(sf);
  return out;
}

/** The layer a path (relative to the source root, slash-separated) belongs to: the longest layer that is it or a folder holding it. */
export function layerOf(rel: string, rules: LayerRule[]): string | undefined {
  let best: string | undefined;
  for (const r of rules) {
    if ((rel === r.layer || rel.startsWith(`${r.layer}/`)) && (best === undefined || r.layer.length > best.length)) best = r.layer;
  }
  return best;
}

/** The TypeScript files under a folder (not .d.ts), sorted, relative and slash-separated. */
export function sourceFiles(root: string, dir = ''): string[] {
  const out: string[] = [];
  for (const e of readdirSync(path.join(root, dir)).sort()) {
    const rel = dir ? `${dir}/${e}` : e;
    if (statSync(path.join(root, rel)).isDirectory()) out.push(...sourceFiles(root, rel));
    else if (e.endsWith('.ts') && !e.endsWith('.d.ts')) out.push(rel);
  }
  return out;
}

/** The source file a relative specifier names (`./x.js` is `x.ts`), relative to the root, or undefined when it leaves the root. */
function target(fromRel: string, specifier: string): string | undefined {
  const joined = path.posix.normalize(path.posix.join(path.posix.dirname(fromRel), specifier));
  if (joined.startsWith('../') || joined === '..') return undefined;
  return joined.replace(/\.js$/, '.ts');
}

/**
 * Every import under `root` that breaks `rules`: a file in no layer, an import that leaves the
 * root, one into a layer its own layer may not import, and a computed dynamic import. Imports of
 * packages (`node:fs`, `yaml`) are not layering's business. `exceptions` lets named imports pass;
 * an exception that matches nothing is reported too, so the list only shrinks.
 */
export function checkLayering(root: string, rules: LayerRule[], exceptions: Exceptions = new Set()): Violation[] {
  const byLayer = new Map(rules.map((r) => [r.layer, new Set(r.mayImport)]));
  const out: Violation[] = [];
  const used = new Set<string>();
  for (const file of sourceFiles(root)) {
    const from = layerOf(file, rules);
    const sites = importsOf(file, readFileSync(path.join(root, file), 'utf8'));
    if (from === undefined) {
      out.push({ file, line: 1, specifier: '', kind: 'import', rule: `${file} is in no layer of the layering table` });
      continue;
    }
    for (const s of sites) {
      if (s.specifier.startsWith('<')) {
        out.push({ file, line: s.line, specifier: s.specifier, kind: s.kind, rule: 'an import must name its module literally so its layer can be checked' });
        continue;
      }
      if (!s.specifier.startsWith('.')) continue;
      const to = target(file, s.specifier);
      if (to === undefined) {
        out.push({ file, line: s.line, specifier: s.specifier, kind: s.kind, rule: 'imports outside src/ are not allowed' });
        continue;
      }
      const toLayer = layerOf(to, rules);
      if (toLayer === from) continue;
      if (toLayer !== undefined && byLayer.get(from)!.has(toLayer)) continue;
      const key = `${file} -> ${to}`;
      if (exceptions.has(key)) {
        used.add(key);
        continue;
      }
      const allowed = [...byLayer.get(from)!];
      out.push({
        file,
        line: s.line,
        specifier: s.specifier,
        kind: s.kind,
        rule:
          toLayer === undefined
            ? `${to} is in no layer of the layering table`
            : `${from} may import ${allowed.length ? allowed.join(', ') : 'nothing outside itself'}; not ${toLayer}`,
      });
    }
  }
  for (const e of [...exceptions].sort()) {
    if (!used.has(e))
      out.push({
        file: e.split(' -> ')[0]!,
        line: 0,
        specifier: e.split(' -> ')[1]!,
        kind: 'import',
        rule: `the known exception "${e}" matches no import any more: remove it from the list`,
      });
  }
  return out;
}

/** One line per violation: file:line, the import and the rule it breaks. */
export function formatViolation(v: Violation): string {
  return `${v.file}:${v.line}: ${v.kind} '${v.specifier}': ${v.rule}`;
}
