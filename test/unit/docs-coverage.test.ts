// The docs say what the code does: every admin route a running `serve` registers is in the README's
// admin table (and every path there is registered), every `serve` flag is in the README's flags
// table with its environment variable (and nothing else is), the README's CLI table shows each
// command's flags exactly, and docs/architecture.md's folder table names the folders under src/.
// Adding a route, a flag or a folder without its line in the docs fails here.
import assert from 'node:assert/strict';
import { mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, describe, test } from 'node:test';
import { COMMANDS } from '../../src/cli/commands.js';
import { startServer, type RunningServer } from '../../src/cli/serve.js';
import { resolveServeConfig, SERVE_SETTINGS } from '../../src/config/settings.js';
import { createLogger } from '../../src/observability/logger.js';
import { repoRoot } from '../helpers/envoy.js';

/** The rows of the first Markdown table at or after the line matching `heading` (cells trimmed, header and rule left out). */
function tableAfter(markdown: string, heading: RegExp): { header: string[]; rows: string[][] } {
  const lines = markdown.split('\n');
  const start = lines.findIndex((l) => heading.test(l));
  assert.ok(start >= 0, `no line matching ${heading}`);
  const first = lines.findIndex((l, i) => i >= start && l.startsWith('|'));
  assert.ok(first >= start, `no table at or after ${heading}`);
  const table: string[][] = [];
  for (let i = first; i < lines.length && lines[i]!.startsWith('|'); i++) {
    // Split on pipes that are not escaped (`on\|off`).
    table.push(
      lines[i]!.slice(1, lines[i]!.trimEnd().endsWith('|') ? lines[i]!.trimEnd().length - 1 : undefined)
        .split(/(?<!\\)\|/)
        .map((c) => c.trim()),
    );
  }
  return { header: table[0]!, rows: table.slice(2) };
}

const readme = () => readFileSync(path.join(repoRoot(), 'README.md'), 'utf8');
const codeSpans = (cell: string) => [...cell.matchAll(/`([^`]+)`/g)].map((m) => m[1]!);

describe('the README documents what serve registers and takes', async () => {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'sb-docs-'));
  let server: RunningServer | undefined;
  after(async () => {
    await server?.stop();
    rmSync(dir, { recursive: true, force: true });
  });

  test('every admin route is in the admin table, and every path in the table is a route', async () => {
    writeFileSync(
      path.join(dir, 'p.yaml'),
      'apiVersion: signalbox.dev/v1alpha1\nkind: Service\nmetadata: { name: shop }\nspec:\n  port: 8080\n  endpoints: [ { address: 127.0.0.1, port: 9 } ]\n',
    );
    const cfg = resolveServeConfig(
      {
        policies: dir,
        'xds-address': '127.0.0.1',
        'xds-port': '0',
        'admin-port': '0',
        'data-dir': path.join(dir, 'data'),
        'authz-port': '0',
        'ratelimit-port': '0',
      },
      {},
    );
    server = await startServer(cfg, createLogger({ level: 'silent' }));
    const routes = server.adminRoutes();
    assert.ok(routes.includes('/api/proxies/:id') && routes.includes('/api/authz') && routes.includes('/api/ratelimit'), `routes seen: ${routes.join(' ')}`);
    const { rows } = tableAfter(readme(), /^## Admin API/);
    const documented = new Set(rows.flatMap((r) => codeSpans(r[0]!)));
    const undocumented = routes.filter((r) => !documented.has(r));
    assert.deepEqual(undocumented, [], `admin routes missing from the README's admin table: ${undocumented.join(', ')}`);
    const stale = [...documented].filter((d) => !routes.includes(d));
    assert.deepEqual(stale, [], `paths in the README's admin table that serve does not register: ${stale.join(', ')}`);
  });

  test('every serve flag is in the flags table with its environment variable, and every flag there exists', () => {
    const { header, rows } = tableAfter(readme(), /^\| `serve` flag \|/);
    assert.deepEqual(header.slice(0, 3), ['`serve` flag', 'environment', 'default']);
    const rowOf = new Map<string, string[]>();
    for (const r of rows) for (const m of r[0]!.matchAll(/--([a-z0-9-]+)/g)) rowOf.set(m[1]!, r);
    const missing: string[] = [];
    for (const s of Object.values(SERVE_SETTINGS)) {
      const row = rowOf.get(s.flag);
      if (!row) missing.push(`--${s.flag}`);
      else assert.ok(codeSpans(row[1]!).includes(s.env), `--${s.flag}: the environment column names ${s.env}, not "${row[1]}"`);
    }
    assert.deepEqual(missing, [], `serve flags missing from the README's flags table: ${missing.join(', ')}`);
    const known = new Set(Object.values(SERVE_SETTINGS).map((s) => s.flag));
    const stale = [...rowOf.keys()].filter((f) => !known.has(f));
    assert.deepEqual(stale, [], `flags in the README's serve table that serve does not take: ${stale.join(', ')}`);
  });
});

describe("the README's CLI table", () => {
  test('shows, for each flag of a command other than serve, exactly the commands that take it, its variable and its default', () => {
    const { header, rows } = tableAfter(readme(), /^### Flags of every command/);
    const columns = header.map((h) => h.replace(/`/g, ''));
    assert.deepEqual(
      columns.slice(1, 1 + COMMANDS.length),
      COMMANDS.map((c) => c.name),
      'one column per command, in order',
    );
    assert.deepEqual(columns.slice(1 + COMMANDS.length), ['environment', 'default']);
    const byFlag = new Map<string, string[]>();
    for (const r of rows) {
      const name = /^`--([a-z0-9-]+)/.exec(r[0]!)?.[1];
      assert.ok(name, `a row starts with its flag: ${r.join(' | ')}`);
      assert.ok(!byFlag.has(name), `--${name} has one row`);
      byFlag.set(name, r);
    }
    const expected = new Set(COMMANDS.filter((c) => c.name !== 'serve').flatMap((c) => c.flags.map((f) => f.name)));
    const missing = [...expected].filter((f) => !byFlag.has(f));
    assert.deepEqual(missing, [], `flags missing from the README's CLI table: ${missing.join(', ')}`);
    const stale = [...byFlag.keys()].filter((f) => !expected.has(f));
    assert.deepEqual(stale, [], `flags in the CLI table that only serve takes (the serve table has them) or no command takes: ${stale.join(', ')}`);
    for (const [name, r] of byFlag) {
      const takers = COMMANDS.filter((c) => c.flags.some((f) => f.name === name));
      const marked = COMMANDS.filter((_, i) => r[1 + i] !== '');
      assert.deepEqual(
        marked.map((c) => c.name),
        takers.map((c) => c.name),
        `--${name}: the commands marked are the commands that take it`,
      );
      // Where commands differ (listed in cli-convention.test.ts), the cell names each value.
      const flags = takers.map((c) => c.flags.find((f) => f.name === name)!);
      const values = (pick: (f: (typeof flags)[number]) => string | undefined) => [...new Set(flags.map(pick).filter((v): v is string => !!v))].sort();
      assert.deepEqual(
        [...new Set(codeSpans(r[1 + COMMANDS.length]!))].sort(),
        values((f) => f.env),
        `--${name}: environment`,
      );
      assert.deepEqual(
        [...new Set(codeSpans(r[2 + COMMANDS.length]!).map((v) => v.replace(/\\\|/g, '|')))].sort(),
        values((f) => f.default),
        `--${name}: default`,
      );
    }
  });
});

describe('docs/architecture.md', () => {
  test('the folder table names every folder under src/, and only folders that exist', () => {
    const text = readFileSync(path.join(repoRoot(), 'docs', 'architecture.md'), 'utf8');
    const { rows } = tableAfter(text, /^\| folder \| job \|/);
    const listed = rows.flatMap((r) => codeSpans(r[0]!));
    const top = readdirSync(path.join(repoRoot(), 'src'), { withFileTypes: true })
      .filter((d) => d.isDirectory())
      .map((d) => `src/${d.name}`);
    const uncovered = top.filter((f) => !listed.some((l) => l === f || l.startsWith(`${f}/`)));
    assert.deepEqual(uncovered, [], `folders under src/ missing from docs/architecture.md: ${uncovered.join(', ')}`);
    const gone = listed.filter((l) => {
      try {
        return !readdirSync(path.join(repoRoot(), l));
      } catch {
        return true;
      }
    });
    assert.deepEqual(gone, [], `folders in docs/architecture.md that do not exist: ${gone.join(', ')}`);
  });
});
