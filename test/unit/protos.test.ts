// protos/ (issue 18, item 5): the messages Signalbox declares itself are .proto files loaded with
// protobufjs at run time, found from the sources' layout and the compiled one, and they encode
// exactly the bytes the field-by-field TypeScript declaration they replace encoded. Envoy's own
// API stays in the registry package, never in protos/.
import assert from 'node:assert/strict';
import { existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import os from 'node:os';
import path from 'node:path';
import { after, describe, test } from 'node:test';
import protobuf from 'protobufjs';
import type { IRHttpListener, IRRoute } from '../../src/ir/types.js';
import { envoyRoot, lookupType, protosDir, SIGNALBOX_PROTO_FILES } from '../../src/xds/resources/protos.js';
import { JWT_MODULE, JWT_MODULE_CONFIG, jwtCheck } from '../../src/xds/translator/filters/jwt-fast.js';
import { repoRoot } from '../helpers/envoy.js';

const temp: string[] = [];
after(() => {
  for (const d of temp) rmSync(d, { recursive: true, force: true });
});

const FILTER = 'envoy.extensions.filters.http.dynamic_modules.v3.DynamicModuleFilter';
const PER_ROUTE = 'envoy.extensions.filters.http.dynamic_modules.v3.DynamicModuleFilterPerRoute';
const MODULE = 'envoy.extensions.dynamic_modules.v3.DynamicModuleConfig';

// ---- an encoder of our own, field by field, to check protobufjs's bytes against ----------------
function varint(n: number): Buffer {
  const out: number[] = [];
  while (n > 0x7f) {
    out.push((n & 0x7f) | 0x80);
    n >>>= 7;
  }
  out.push(n);
  return Buffer.from(out);
}
const bytesField = (num: number, payload: Buffer) => Buffer.concat([varint((num << 3) | 2), varint(payload.length), payload]);
const stringField = (num: number, s: string) => (s === '' ? Buffer.alloc(0) : bytesField(num, Buffer.from(s, 'utf8')));
const boolField = (num: number, b: boolean) => (b ? Buffer.from([(num << 3) | 0, 1]) : Buffer.alloc(0));
const stringValueAny = (s: string) => Buffer.concat([stringField(1, 'type.googleapis.com/google.protobuf.StringValue'), bytesField(2, stringField(1, s))]);
const moduleConfig = (name: string, doNotClose: boolean) => Buffer.concat([stringField(1, name), boolField(3, doNotClose)]);

/** The declaration the .proto files replace (src/xds/resources/protos.ts before issue 18), as it was. */
function formerDeclaration(): protobuf.Root {
  const root = new protobuf.Root();
  root.loadSync('google/protobuf/any.proto', { keepCase: true });
  const { Type, Field } = protobuf;
  root
    .define('envoy.extensions.dynamic_modules.v3')
    .add(new Type('DynamicModuleConfig').add(new Field('name', 1, 'string')).add(new Field('do_not_close', 3, 'bool')));
  const config = '.envoy.extensions.dynamic_modules.v3.DynamicModuleConfig';
  root
    .define('envoy.extensions.filters.http.dynamic_modules.v3')
    .add(
      new Type('DynamicModuleFilter')
        .add(new Field('dynamic_module_config', 1, config))
        .add(new Field('filter_name', 2, 'string'))
        .add(new Field('filter_config', 3, '.google.protobuf.Any')),
    )
    .add(
      new Type('DynamicModuleFilterPerRoute')
        .add(new Field('dynamic_module_config', 1, config))
        .add(new Field('per_route_config_name', 2, 'string'))
        .add(new Field('filter_config', 3, '.google.protobuf.Any')),
    );
  root.resolveAll();
  return root;
}

/** What the translator writes for a listener and a route under `--jwt-fast-path module`. */
function moduleShapes(): { filter: Record<string, unknown>; checked: Record<string, unknown>; skipped: Record<string, unknown> } {
  const listener = { jwtModule: true, routeConfig: { name: 'r', virtualHosts: [] } } as unknown as IRHttpListener;
  const filter = (jwtCheck.hcmEntry!(listener) as { typed_config: Record<string, unknown> }).typed_config;
  const perRoute = (route: Partial<IRRoute>) => jwtCheck.perRouteConfig!(listener, route as IRRoute) as unknown as Record<string, unknown>;
  const checked = perRoute({ jwt: { fast: { policy: 'shop users', header: 'authorization', version: 'v1a2b3' } } } as unknown as Partial<IRRoute>);
  return { filter, checked, skipped: perRoute({}) };
}

const withoutType = (o: Record<string, unknown>) => Object.fromEntries(Object.entries(o).filter(([k]) => k !== '@type'));

describe('protos/', () => {
  test("found from the sources' layout and from the compiled one: the protos/ folder at the package root", () => {
    const want = path.join(repoRoot(), 'protos');
    assert.equal(protosDir(path.join(repoRoot(), 'src', 'xds', 'resources')), want, 'from src/xds/resources (the .ts module)');
    assert.equal(protosDir(path.join(repoRoot(), 'dist', 'src', 'xds', 'resources')), want, 'from dist/src/xds/resources (the .js module)');
    assert.equal(protosDir(), want, 'from this running module');
    for (const f of SIGNALBOX_PROTO_FILES) assert.ok(statSync(path.join(want, f)).isFile(), f);
  });

  test('a package without them is a clear error naming the missing path, not a crash later', () => {
    const root = mkdtempSync(path.join(os.tmpdir(), 'sb-protos-'));
    temp.push(root);
    writeFileSync(path.join(root, 'package.json'), '{}');
    mkdirSync(path.join(root, 'dist', 'src'), { recursive: true });
    assert.throws(
      () => protosDir(path.join(root, 'dist', 'src')),
      (e: Error) => e.message.includes(path.join(root, 'protos', SIGNALBOX_PROTO_FILES[0]!)) && /ship in the package's protos\/ folder/.test(e.message),
    );
  });

  test("the dynamic-module messages in the root are the .proto files' (names, numbers, types)", () => {
    envoyRoot();
    const fields = (name: string) =>
      Object.fromEntries(
        lookupType(name)
          .fieldsArray.map((f) => [f.name, `${f.id} ${f.type.replace(/^\./, '')}`])
          .sort(),
      );
    for (const name of [FILTER, PER_ROUTE, MODULE]) {
      const file = lookupType(name).filename ?? '';
      assert.ok(file.startsWith(path.join(repoRoot(), 'protos', 'signalbox') + path.sep), `${name} comes from protos/signalbox: ${file}`);
    }
    assert.deepEqual(fields(MODULE), { do_not_close: '3 bool', name: '1 string' });
    assert.deepEqual(fields(FILTER), { dynamic_module_config: `1 ${MODULE}`, filter_config: '3 google.protobuf.Any', filter_name: '2 string' });
    assert.deepEqual(fields(PER_ROUTE), { dynamic_module_config: `1 ${MODULE}`, filter_config: '3 google.protobuf.Any', per_route_config_name: '2 string' });
  });

  test('what the translator writes encodes to the same bytes as before, field by field', () => {
    const { filter, checked, skipped } = moduleShapes();
    const any = lookupType('google.protobuf.Any');
    const encodeAny = (o: Record<string, unknown>) => Buffer.from(any.encode(any.fromObject(o)).finish());
    const mod = moduleConfig(JWT_MODULE.name, true);
    assert.deepEqual(
      encodeAny(filter),
      Buffer.concat([
        stringField(1, `type.googleapis.com/${FILTER}`),
        bytesField(2, Buffer.concat([bytesField(1, mod), stringField(2, JWT_MODULE.filter), bytesField(3, stringValueAny(JWT_MODULE_CONFIG))])),
      ]),
    );
    for (const [shape, spec] of [
      [checked, 'shop%20users authorization v1a2b3'],
      [skipped, 'skip'],
    ] as const) {
      assert.deepEqual(
        encodeAny(shape),
        Buffer.concat([
          stringField(1, `type.googleapis.com/${PER_ROUTE}`),
          bytesField(2, Buffer.concat([bytesField(1, mod), stringField(2, JWT_MODULE.filter), bytesField(3, stringValueAny(spec))])),
        ]),
        spec,
      );
    }
  });

  test('every message, including unset and default values, encodes as the former TypeScript declaration did', () => {
    const former = formerDeclaration();
    const { filter, checked, skipped } = moduleShapes();
    const cases: [string, Record<string, unknown>][] = [
      [FILTER, withoutType(filter)],
      [PER_ROUTE, withoutType(checked)],
      [PER_ROUTE, withoutType(skipped)],
      [MODULE, { name: 'signalbox_jwt_check', do_not_close: true }],
      [MODULE, { name: '', do_not_close: false }],
      [MODULE, {}],
      [FILTER, { filter_name: 'x' }],
      [PER_ROUTE, { dynamic_module_config: {}, per_route_config_name: '' }],
    ];
    for (const [name, body] of cases) {
      // The Any inside is written out (type URL and encoded StringValue), so both roots encode the same input.
      const input = { ...body };
      const fc = input.filter_config as { '@type'?: string; value?: string } | undefined;
      if (fc?.['@type']) input.filter_config = { type_url: fc['@type'], value: stringField(1, fc.value ?? '') };
      const now = lookupType(name);
      const then = former.lookupType(name);
      assert.deepEqual(
        Buffer.from(now.encode(now.fromObject(input)).finish()),
        Buffer.from(then.encode(then.fromObject(input)).finish()),
        `${name} ${JSON.stringify(body)}`,
      );
    }
  });

  test("only Signalbox's own files: nothing of Envoy's API is copied into protos/", () => {
    const dir = path.join(repoRoot(), 'protos');
    const files: string[] = [];
    const walk = (d: string) => {
      for (const e of readdirSync(d)) {
        const full = path.join(d, e);
        if (statSync(full).isDirectory()) walk(full);
        else files.push(path.relative(dir, full));
      }
    };
    walk(dir);
    const protos = files.filter((f) => f.endsWith('.proto')).sort();
    assert.deepEqual(protos, [...SIGNALBOX_PROTO_FILES].sort(), 'every .proto here is loaded, and only these');
    for (const f of protos) {
      assert.ok(f.startsWith(`signalbox${path.sep}`), `${f} is under protos/signalbox/`);
      const text = readFileSync(path.join(dir, f), 'utf8');
      assert.match(text, /Written by Signalbox, not copied from Envoy/, f);
      assert.doesNotMatch(text, /Copyright|option go_package|udpa\.annotations|validate\.rules/, `${f} holds nothing of Envoy's files`);
    }
    // These exist because the registry package lacks the messages; once it has them, its files win.
    const deps = path.join(path.dirname(createRequire(import.meta.url).resolve('@grpc/grpc-js-xds/package.json')), 'deps', 'envoy-api');
    assert.ok(existsSync(path.join(deps, 'envoy', 'config', 'listener', 'v3', 'listener.proto')), "the registry package's Envoy API is where protos.ts looks");
    assert.equal(
      existsSync(path.join(deps, 'envoy', 'extensions', 'filters', 'http', 'dynamic_modules')),
      false,
      '@grpc/grpc-js-xds now ships the dynamic-module filter: use its file (ENTRY_FILES) and delete protos/signalbox/envoy_subset (protos/README.md)',
    );
  });
});
