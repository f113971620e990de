// The JSON Schemas (`signalbox schema`, committed under schemas/): they are current, an independent
// validator (ajv) accepts every shipped example with them (policies/, examples/, the docs' yaml
// blocks) and the model accepts those too, both refuse the usual mistakes, and the places where
// the model is stricter than the schema are the ones docs/editors.md lists.
import assert from 'node:assert/strict';
import { cpSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { Writable } from 'node:stream';
import { after, describe, test } from 'node:test';
import { Ajv, type ValidateFunction } from 'ajv';
import addFormatsModule from 'ajv-formats';
import { parseAllDocuments } from 'yaml';
import { API_VERSION, KINDS, type Kind } from '../../src/api/v1alpha1/index.js';
import { schemaFileName, schemaFiles } from '../../src/api/v1alpha1/json-schema.js';
import { schemaCommand, staleSchemaFiles } from '../../src/cli/schema.js';
import { buildModel } from '../../src/controller/build-model.js';
import { loadPolicyDir, parsePolicyText } from '../../src/sources/files/loader.js';
import { repoRoot } from '../helpers/envoy.js';

const root = repoRoot();
const SCHEMAS = path.join(root, 'schemas');
const tmpDirs: string[] = [];
after(() => {
  for (const d of tmpDirs) rmSync(d, { recursive: true, force: true });
});

// ajv-formats is CommonJS; under NodeNext its default import is the module object.
const addFormats = ((addFormatsModule as unknown as { default?: unknown }).default ?? addFormatsModule) as (ajv: Ajv) => Ajv;

/** The committed schemas, compiled by ajv (strict: an unknown keyword or format in them is an error; type lists such as [string, number] are standard). */
function compiled(): { all: ValidateFunction; byKind: Map<Kind, ValidateFunction> } {
  const ajv = addFormats(new Ajv({ allErrors: true, strict: true, allowUnionTypes: true }));
  ajv.addVocabulary(['patternErrorMessage']); // an editor's message for a failed pattern; no validation meaning
  const read = (rel: string) => JSON.parse(readFileSync(path.join(SCHEMAS, rel), 'utf8')) as object;
  const byKind = new Map<Kind, ValidateFunction>();
  for (const kind of Object.keys(KINDS) as Kind[]) byKind.set(kind, ajv.compile(read(schemaFileName(kind))));
  return { all: ajv.compile(read(schemaFileName('all'))), byKind };
}

interface Example {
  where: string;
  text: string;
  value: Record<string, unknown>;
}

function filesBelow(dir: string, re: RegExp): string[] {
  const out: string[] = [];
  for (const name of readdirSync(dir).sort()) {
    const full = path.join(dir, name);
    if (statSync(full).isDirectory()) out.push(...filesBelow(full, re));
    else if (re.test(name)) out.push(full);
  }
  return out;
}

/** Every Signalbox document in YAML files below `dir` (other YAML there, e.g. Prometheus's, is not ours). */
function yamlExamples(dir: string): Example[] {
  const out: Example[] = [];
  for (const file of filesBelow(path.join(root, dir), /\.ya?ml$/)) {
    const text = readFileSync(file, 'utf8');
    parseAllDocuments(text).forEach((d, i) => {
      const value = d.toJS() as Record<string, unknown> | null;
      if (value && value.apiVersion === API_VERSION) out.push({ where: `${path.relative(root, file)}#${i + 1}`, text: String(d), value });
    });
  }
  return out;
}

/**
 * Every yaml block of the Markdown docs that is a whole policy document (a mapping with a kind of
 * ours); fragments (a `filters:` excerpt) are counted apart. The docs leave `apiVersion` out for
 * brevity ("every document has it"); it is added here when missing.
 */
function docExamples(): { examples: Example[]; fragments: string[] } {
  const examples: Example[] = [];
  const fragments: string[] = [];
  const mds = [path.join(root, 'README.md'), ...filesBelow(path.join(root, 'docs'), /\.md$/)];
  for (const md of mds) {
    const lines = readFileSync(md, 'utf8').split('\n');
    for (let i = 0; i < lines.length; i++) {
      if (lines[i]!.trim() !== '```yaml') continue;
      const start = i + 1;
      let end = start;
      while (end < lines.length && lines[end]!.trim() !== '```') end++;
      const block = `${lines.slice(start, end).join('\n')}\n`;
      i = end;
      const where = `${path.relative(root, md)}:${start + 1}`;
      for (const [n, d] of parseAllDocuments(block).entries()) {
        let value: unknown;
        try {
          value = d.errors.length ? undefined : d.toJS();
        } catch {
          value = undefined;
        }
        const v = value as Record<string, unknown> | undefined;
        if (!v || typeof v !== 'object' || !(typeof v.kind === 'string' && v.kind in KINDS)) {
          fragments.push(`${where}#${n + 1}`);
          continue;
        }
        const text = v.apiVersion === undefined ? `apiVersion: ${API_VERSION}\n${String(d)}` : String(d);
        examples.push({ where: `${where}#${n + 1}`, text, value: v.apiVersion === undefined ? { apiVersion: API_VERSION, ...v } : v });
      }
    }
  }
  return { examples, fragments };
}

/** A stream that keeps what is written to it. */
function sink(): Writable & { text(): string } {
  const chunks: string[] = [];
  return Object.assign(
    new Writable({
      write: (c: Buffer, _e: string, cb: () => void) => {
        chunks.push(String(c));
        cb();
      },
    }),
    { text: () => chunks.join('') },
  );
}

const ajvErrors = (v: ValidateFunction) =>
  (v.errors ?? []).map((e) => `${e.instancePath || '/'} ${e.message}${e.params ? ` ${JSON.stringify(e.params)}` : ''}`).join('; ');

describe('committed schemas', () => {
  test('schemas/ is what `signalbox schema` generates (regenerate: npm run schema:update)', () => {
    const stale = staleSchemaFiles(SCHEMAS, schemaFiles());
    assert.deepEqual(stale, [], `stale schema files under schemas/: ${JSON.stringify(stale)}; run npm run schema:update`);
  });

  test('a stale copy is found: an edited, a missing and an extra file', () => {
    const dir = mkdtempSync(path.join(os.tmpdir(), 'signalbox-schemas-'));
    tmpDirs.push(dir);
    cpSync(SCHEMAS, dir, { recursive: true });
    writeFileSync(path.join(dir, schemaFileName('Mesh')), '{}\n');
    rmSync(path.join(dir, schemaFileName('Gateway')));
    writeFileSync(path.join(dir, 'v1alpha1', 'widget.json'), '{}\n');
    assert.deepEqual(
      staleSchemaFiles(dir, schemaFiles()).sort((a, b) => a.path.localeCompare(b.path)),
      [
        { path: 'v1alpha1/gateway.json', problem: 'missing' },
        { path: 'v1alpha1/mesh.json', problem: 'different' },
        { path: 'v1alpha1/widget.json', problem: 'not generated' },
      ],
    );
  });

  test('schema --out DIR --check exits 1 on a stale folder and 0 once --out has rewritten it', async () => {
    const dir = mkdtempSync(path.join(os.tmpdir(), 'signalbox-schemas-'));
    tmpDirs.push(dir);
    const err1 = sink();
    assert.equal(await schemaCommand(['--out', dir, '--check'], sink(), err1), 1);
    assert.match(err1.text(), /all\.json: missing/);
    assert.equal(await schemaCommand(['--out', dir], sink(), sink()), 0);
    const err2 = sink();
    assert.equal(await schemaCommand(['--out', dir, '--check'], sink(), err2), 0);
    assert.match(err2.text(), /are current/);
  });

  test('the combined schema and each kind schema print, and are deterministic', async () => {
    const outOf = async (args: string[]) => {
      const out = sink();
      assert.equal(await schemaCommand(args, out, sink()), 0);
      return out.text();
    };
    assert.equal(await outOf([]), readFileSync(path.join(SCHEMAS, schemaFileName('all')), 'utf8'));
    assert.equal(await outOf(['--kind', 'HTTPRoute']), readFileSync(path.join(SCHEMAS, schemaFileName('HTTPRoute')), 'utf8'));
    assert.equal(await outOf([]), await outOf([]));
  });
});

describe('every shipped example against the schema (ajv) and the model', () => {
  const { all, byKind } = compiled();
  const fromDirs = [...yamlExamples('policies'), ...yamlExamples('examples')];
  const docs = docExamples();
  const examples = [...fromDirs, ...docs.examples];

  test('there are examples to check (policies/, examples/, docs)', (t) => {
    t.diagnostic(
      `${fromDirs.length} documents in policies/ and examples/, ${docs.examples.length} in the docs' yaml blocks, ${docs.fragments.length} doc fragments not whole documents: ${docs.fragments.join(', ')}`,
    );
    assert.ok(yamlExamples('policies').length >= 5, 'policies/ has its documents');
    assert.ok(docs.examples.length >= 10, 'the docs have their examples');
    assert.deepEqual(new Set(examples.map((e) => e.value.kind)), new Set(Object.keys(KINDS)), 'every kind has an example');
  });

  test('ajv accepts each one with the combined schema and with its kind schema', () => {
    const refused: string[] = [];
    for (const e of examples) {
      const kind = e.value.kind as Kind;
      if (!all(e.value as unknown)) refused.push(`${e.where} (all.json): ${ajvErrors(all)}`);
      const one = byKind.get(kind)!;
      if (!one(e.value as unknown)) refused.push(`${e.where} (${schemaFileName(kind)}): ${ajvErrors(one)}`);
    }
    assert.deepEqual(refused, []);
  });

  test("the model's document validation accepts each one too", () => {
    const refused: string[] = [];
    for (const e of examples) {
      const r = parsePolicyText(e.text, e.where);
      if (r.errors.length || r.docs.length !== 1) refused.push(`${e.where}: ${JSON.stringify(r.errors)}`);
    }
    assert.deepEqual(refused, []);
  });

  test('policies/ as a whole builds a model (cross-references resolve)', async () => {
    const dir = path.join(root, 'policies');
    const loaded = await loadPolicyDir(dir);
    assert.deepEqual(loaded.errors, []);
    const built = await buildModel(loaded.docs, dir);
    assert.deepEqual(built.errors, []);
    assert.ok(built.model);
  });
});

/** A valid document of each kind to break, as the user would. */
const BASE: Record<string, string> = {
  Gateway: 'kind: Gateway\nmetadata: { name: public }\nspec:\n  listeners: [ { name: http, port: 8080, protocol: HTTP } ]\n',
  Service: 'kind: Service\nmetadata: { name: orders }\nspec: { port: 8080, endpoints: [ { address: 127.0.0.1, port: 9001 } ] }\n',
  HTTPRoute:
    'kind: HTTPRoute\nmetadata: { name: orders }\nspec:\n  parentRefs: [ { kind: Gateway, name: public } ]\n  rules: [ { backendRefs: [ { name: orders } ], timeout: 5s } ]\n',
  RateLimitPolicy: 'kind: RateLimitPolicy\nmetadata: { name: rl }\nspec: { targetRef: { kind: Service, name: orders }, local: { requests: 10, per: 1s } }\n',
};
const text = (s: string) => `apiVersion: ${API_VERSION}\n${s}`;
const value = (s: string) => parseAllDocuments(text(s))[0]!.toJS() as Record<string, unknown>;

describe('schema and model agree on the usual mistakes; the model is stricter where docs/editors.md says', () => {
  const { all } = compiled();

  test('the bases are valid for both', () => {
    for (const [kind, s] of Object.entries(BASE)) {
      assert.ok(all(value(s)), `${kind}: ${ajvErrors(all)}`);
      assert.deepEqual(parsePolicyText(text(s), 'base.yaml').errors, [], kind);
    }
  });

  const BOTH_REFUSE: [string, string][] = [
    ['a misspelt field', BASE.Gateway!.replace('listeners', 'listners')],
    ['an unknown field in metadata', BASE.Service!.replace('{ name: orders }', '{ name: orders, namespace: prod }')],
    ['a value outside an enum', BASE.Gateway!.replace('protocol: HTTP', 'protocol: TCP')],
    ['a duration with a spelled-out unit', BASE.HTTPRoute!.replace('timeout: 5s', 'timeout: 5 seconds')],
    ['a rate window in words', BASE.RateLimitPolicy!.replace('per: 1s', 'per: second')],
    ['a name that is not a DNS label', BASE.Service!.replace('name: orders', 'name: Orders_1')],
    ['a port out of range', BASE.Service!.replace('port: 9001', 'port: 70000')],
    ['a missing required field', BASE.Service!.replace('port: 8080, ', '')],
    ['a string where a number goes', BASE.Service!.replace('port: 8080', 'port: "8080"')],
    ['an unknown kind', BASE.Service!.replace('kind: Service', 'kind: Servce')],
    ['an unknown filter type', BASE.HTTPRoute!.replace('timeout: 5s', 'filters: [ { type: Rewrite } ]')],
  ];
  for (const [what, s] of BOTH_REFUSE) {
    test(`both refuse ${what}`, () => {
      assert.equal(all(value(s)), false, 'ajv accepted it');
      assert.notDeepEqual(parsePolicyText(text(s), 'x.yaml').errors, [], 'the model accepted it');
    });
  }

  // What only code can check: the schema accepts these, the model refuses them (docs/editors.md).
  const MODEL_STRICTER: [string, string][] = [
    ['an HTTPS listener without tls (a rule across fields)', BASE.Gateway!.replace('protocol: HTTP }', 'protocol: HTTPS }')],
    [
      'two listeners on one port (uniqueness within a list)',
      BASE.Gateway!.replace('protocol: HTTP }', 'protocol: HTTP }, { name: other, port: 8080, protocol: HTTP }'),
    ],
    ['both endpoints and consul (one of two fields)', BASE.Service!.replace('port: 8080,', 'port: 8080, consul: { service: orders },')],
    ['a zero duration (a value range of a string)', BASE.HTTPRoute!.replace('timeout: 5s', 'timeout: 0s')],
    ['a regular expression RE2 refuses', BASE.HTTPRoute!.replace('timeout: 5s', 'matches: [ { path: { type: RegularExpression, value: "/(?=x)" } } ]')],
    ['an endpoint address that is not an IP', BASE.Service!.replace('127.0.0.1', 'orders.internal')],
    ['a rate window under 50ms', BASE.RateLimitPolicy!.replace('per: 1s', 'per: 10ms')],
  ];
  for (const [what, s] of MODEL_STRICTER) {
    test(`the schema accepts and the model refuses ${what}`, () => {
      assert.equal(all(value(s)), true, `ajv refused it: ${ajvErrors(all)} (the schema got stricter: update docs/editors.md and this list)`);
      assert.notDeepEqual(parsePolicyText(text(s), 'x.yaml').errors, [], 'the model accepted it');
    });
  }

  test("cross-references are the model's alone: a route to an unknown Service passes the schema, not the model", async () => {
    const s = BASE.HTTPRoute!.replace('name: orders } ]', 'name: ordrs } ]');
    assert.equal(all(value(s)), true);
    const parsed = parsePolicyText([text(BASE.Gateway!), text(BASE.Service!), text(s)].join('---\n'), 'x.yaml');
    assert.deepEqual(parsed.errors, []);
    const built = await buildModel(parsed.docs, root);
    assert.match(built.errors.map((e) => e.message).join('\n'), /unknown Service "ordrs"/);
  });
});
