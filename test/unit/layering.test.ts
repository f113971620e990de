// The layering of docs/architecture.md holds: every import under src/ stays within what its layer
// may import (the table is read from the document), and the scan itself finds each form of import
// on a small tree that breaks the rules.
import assert from 'node:assert/strict';
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, describe, test } from 'node:test';
import { checkLayering, formatViolation, importsOf, layerOf, parseExceptions, parseLayerRules, ruleCycle, sourceFiles } from '../helpers/layering.js';
import { repoRoot } from '../helpers/envoy.js';

const architecture = readFileSync(path.join(repoRoot(), 'docs', 'architecture.md'), 'utf8');

describe('layering of src/', () => {
  const rules = parseLayerRules(architecture);

  test('the documented rules have no cycle', () => {
    assert.equal(ruleCycle(rules)?.join(' -> '), undefined);
  });

  test('every file under src/ belongs to a layer and imports only what its layer may', () => {
    const src = path.join(repoRoot(), 'src');
    assert.ok(sourceFiles(src).length > 50, 'the scan sees the source tree');
    const violations = checkLayering(src, rules, parseExceptions(architecture));
    assert.deepEqual(violations.map(formatViolation), []);
  });

  test('the table keeps the pipeline one way', () => {
    const order = ['sources/files', 'model', 'translate', 'ir', 'xds/translator', 'xds/resources', 'xds/cache', 'xds/server'];
    const may = new Map(rules.map((r) => [r.layer, new Set(r.mayImport)]));
    for (const [i, layer] of order.entries()) {
      assert.ok(may.has(layer), `${layer} is in the table`);
      // A stage may know the type of its own output (the next stage: translate writes the IR), nothing further on.
      for (const later of order.slice(i + 2)) assert.ok(!may.get(layer)!.has(later), `${layer} may not import the later stage ${later}`);
    }
    // The plain-data stages stand alone: the loader's documents, the model and the IR import no other stage.
    for (const layer of ['sources/files', 'model', 'ir']) for (const other of order) assert.ok(!may.get(layer)!.has(other), `${layer} may not import ${other}`);
  });
});

describe('the import scan', () => {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'signalbox-layering-'));
  after(() => rmSync(dir, { recursive: true, force: true }));
  const write = (rel: string, text: string) => {
    mkdirSync(path.dirname(path.join(dir, rel)), { recursive: true });
    writeFileSync(path.join(dir, rel), text);
  };
  const rules = parseLayerRules(
    [
      '## Layering',
      '',
      '| layer | role | may import |',
      '| --- | --- | --- |',
      '| `errors.ts` | cross-cutting | — |',
      '| `model` | pipeline | `errors.ts` |',
      '| `sources/files` | pipeline | `errors.ts` |',
      '| `sources` | discovery | `model` |',
      '| `xds/server` | pipeline | — |',
      '| `xds/translator` | pipeline | — |',
      '',
    ].join('\n'),
  );

  test('finds every form of import, with its line', () => {
    const sites = importsOf(
      'a.ts',
      [
        "import { a } from './a.js';",
        "import type { B } from '../b.js';",
        "export { c } from './c.js';",
        "export * from './d.js';",
        "const e = await import('./e.js');",
        "let f: typeof import('./f.js');",
        "// import { no } from './comment.js';",
        'const s = "import { no } from \'./string.js\'";',
        "import g = require('./g.js');",
        'const h = await import(name);',
        "import 'node:fs';",
      ].join('\n'),
    );
    assert.deepEqual(
      sites.map((s) => `${s.line} ${s.kind} ${s.specifier}`),
      [
        '1 import ./a.js',
        '2 import type ../b.js',
        '3 export from ./c.js',
        '4 export from ./d.js',
        '5 dynamic import() ./e.js',
        '6 import() type ./f.js',
        '9 require ./g.js',
        '10 dynamic import() <computed: name>',
        '11 import node:fs',
      ],
    );
  });

  test('a layer is the longest row holding the file', () => {
    assert.equal(layerOf('sources/files/loader.ts', rules), 'sources/files');
    assert.equal(layerOf('sources/endpoints.ts', rules), 'sources');
    assert.equal(layerOf('errors.ts', rules), 'errors.ts');
    assert.equal(layerOf('errorsx.ts', rules), undefined);
    assert.equal(layerOf('modelling/x.ts', rules), undefined);
  });

  test('names the file, the import and the rule broken; allowed imports pass', () => {
    write('errors.ts', 'export const E = 1;\n');
    write('sources/files/loader.ts', "import { E } from '../../errors.js';\nexport interface LoadedDoc { e: typeof E }\n");
    write(
      'model/model.ts',
      "import { E } from '../errors.js';\nimport type { LoadedDoc } from '../sources/files/loader.js';\nexport const m = (d: LoadedDoc) => E;\n",
    );
    write('model/lazy.ts', "export async function f() { return (await import('../xds/server/node.js')).x; }\n");
    write('xds/server/node.ts', "import { JWT } from '../translator/jwt-fast.js';\nexport const x = JWT;\n");
    write('xds/translator/jwt-fast.ts', 'export const JWT = 1;\n');
    write('sources/endpoints.ts', "import { m } from '../model/model.js';\nexport const y = m;\n");
    write('stray/x.ts', 'export {};\n');
    const got = checkLayering(dir, rules).map(formatViolation);
    assert.deepEqual(got, [
      "model/lazy.ts:1: dynamic import() '../xds/server/node.js': model may import errors.ts; not xds/server",
      "model/model.ts:2: import type '../sources/files/loader.js': model may import errors.ts; not sources/files",
      "stray/x.ts:1: import '': stray/x.ts is in no layer of the layering table",
      "xds/server/node.ts:1: import '../translator/jwt-fast.js': xds/server may import nothing outside itself; not xds/translator",
    ]);
  });

  test('a listed exception lets its import pass, and an unused one is reported', () => {
    const exceptions = parseExceptions(
      ['### Known exceptions', '', '- `xds/server/node.ts` -> `xds/translator/jwt-fast.ts`: why', '- `model/gone.ts` -> `errors.ts`: why', ''].join('\n'),
    );
    const got = checkLayering(dir, rules, exceptions).map(formatViolation);
    assert.ok(!got.some((v) => v.startsWith('xds/server/node.ts:1')), got.join('\n'));
    assert.ok(
      got.some((v) => v.includes('the known exception "model/gone.ts -> errors.ts" matches no import any more')),
      got.join('\n'),
    );
  });

  test('a cycle in the rules, an unknown layer and a missing table are errors', () => {
    const table = (rows: string[]) => ['## Layering', '| layer | role | may import |', '| --- | --- | --- |', ...rows, ''].join('\n');
    assert.deepEqual(ruleCycle(parseLayerRules(table(['| `a` | x | `b` |', '| `b` | x | `c` |', '| `c` | x | `a` |']))), ['a', 'b', 'c', 'a']);
    assert.equal(ruleCycle(rules), undefined);
    assert.throws(() => parseLayerRules(table(['| `a` | x | `nowhere` |'])), /a may import nowhere, which is not a layer/);
    assert.throws(() => parseLayerRules('# nothing here\n'), /no heading matching/);
    assert.throws(() => parseLayerRules(table(['| a | x | — |'])), /first cell must be one layer in backticks/);
  });
});
