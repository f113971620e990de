// Writes src/xds/resources/envoy-types.gen.ts: TypeScript types for every Envoy message the
// translator emits, read from the protobufjs Root that src/xds/resources/protos.ts loads (the
// .proto trees of the registry package @grpc/grpc-js-xds plus protos/). `npm run types:update`.
//
// Why a generator of our own: protobufjs's static generator (pbts, in protobufjs-cli) is not a
// dependency and none may be added, and its output describes protobufjs's generated classes
// (camelCase, Long, Uint8Array), not the plain objects the translator hands to
// `Type.fromObject`. What is written here is that plain shape, as the encode path takes it and as
// the round-trip check (src/xds/resources/resource.ts) reads it back:
// - field names as loaded (keepCase: Envoy's snake_case; protobufjs's built-in well-known types,
//   such as Struct's `stringValue`, keep their camelCase names);
// - every field optional (proto3; oneof members are plain optional fields);
// - enums as their names only: fromObject also takes numbers, but the round-trip check decodes
//   enums as names, so a number would be reported as a changed field;
// - 64-bit integers as numbers (the check decodes them with `longs: Number`); bytes as base64 text;
// - repeated fields as arrays, maps as string-keyed records;
// - google.protobuf.Any as PackedAny, which only `typed()` (src/xds/translator/util.ts) makes, so
//   the contents of every typed_config are checked against the type it names (AnyTypes below);
// - a message without fields as Record<string, never>, so an object with any field fails.
// Types are declared in namespaces that follow the proto packages (`envoy.config.listener.v3.Listener`);
// a nested message or enum sits in a namespace named after its parent message.
import { writeFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import protobuf from 'protobufjs';
import { envoyRoot } from '../src/xds/resources/protos.js';

/** The resources Signalbox serves. */
export const RESOURCE_TYPES = [
  'envoy.config.listener.v3.Listener',
  'envoy.config.route.v3.RouteConfiguration',
  'envoy.config.cluster.v3.Cluster',
  'envoy.config.endpoint.v3.ClusterLoadAssignment',
  'envoy.extensions.transport_sockets.tls.v3.Secret',
] as const;

/**
 * The messages the translator packs into an Any (typed_config, typed_per_filter_config, ...):
 * `typed(name, body)` takes exactly these names. Add one here and run `npm run types:update`.
 */
export const ANY_TYPES = [
  'envoy.config.trace.v3.OpenTelemetryConfig',
  'envoy.extensions.access_loggers.grpc.v3.HttpGrpcAccessLogConfig',
  'envoy.extensions.filters.http.dynamic_modules.v3.DynamicModuleFilter',
  'envoy.extensions.filters.http.dynamic_modules.v3.DynamicModuleFilterPerRoute',
  'envoy.extensions.filters.http.ext_authz.v3.ExtAuthz',
  'envoy.extensions.filters.http.ext_authz.v3.ExtAuthzPerRoute',
  'envoy.extensions.filters.http.fault.v3.HTTPFault',
  'envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit',
  'envoy.extensions.filters.http.lua.v3.Lua',
  'envoy.extensions.filters.http.lua.v3.LuaPerRoute',
  'envoy.extensions.filters.http.ratelimit.v3.RateLimit',
  'envoy.extensions.filters.http.rbac.v3.RBAC',
  'envoy.extensions.filters.http.router.v3.Router',
  'envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector',
  'envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager',
  'envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext',
  'envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext',
  'envoy.extensions.upstreams.http.v3.HttpProtocolOptions',
  'google.protobuf.StringValue',
] as const;

const ANY = 'google.protobuf.Any';

const SCALARS: Record<string, string> = {
  double: 'number',
  float: 'number',
  int32: 'number',
  uint32: 'number',
  sint32: 'number',
  fixed32: 'number',
  sfixed32: 'number',
  int64: 'number',
  uint64: 'number',
  sint64: 'number',
  fixed64: 'number',
  sfixed64: 'number',
  bool: 'boolean',
  string: 'string',
  bytes: 'string',
};

/** A reflection object's full name without protobufjs's leading dot. */
const fullName = (t: protobuf.ReflectionObject): string => t.fullName.replace(/^\./, '');

/** One declaration: its full name and the type it declares. */
interface Decl {
  name: string;
  body: string;
}

function fieldType(f: protobuf.Field): string {
  f.resolve();
  let t: string;
  if (f.resolvedType) t = fullName(f.resolvedType) === ANY ? 'PackedAny' : fullName(f.resolvedType);
  else {
    t = SCALARS[f.type]!;
    if (!t) throw new Error(`${fullName(f)}: unknown scalar type ${f.type}`);
  }
  if (f instanceof protobuf.MapField) return `{ [key: string]: ${t} }`;
  return f.repeated ? `${t}[]` : t;
}

/** Declarations of every message and enum reachable from `roots`, by full name (Any excluded). */
export function collect(root: protobuf.Root, roots: readonly string[]): Map<string, Decl> {
  const out = new Map<string, Decl>();
  const queue: protobuf.ReflectionObject[] = roots.map((n) => root.lookupTypeOrEnum(n));
  while (queue.length) {
    const t = queue.shift()!;
    const name = fullName(t);
    if (out.has(name) || name === ANY) continue;
    if (t instanceof protobuf.Enum) {
      const names = Object.keys(t.values).sort();
      out.set(name, { name, body: names.map((v) => JSON.stringify(v)).join(' | ') });
      continue;
    }
    const type = t as protobuf.Type;
    const fields = type.fieldsArray.slice().sort((a, b) => a.id - b.id);
    if (!fields.length) {
      out.set(name, { name, body: 'Record<string, never>' });
      continue;
    }
    const lines = fields.map((f) => {
      f.resolve();
      if (f.resolvedType) queue.push(f.resolvedType);
      return `  ${/^[A-Za-z_$][\w$]*$/.test(f.name) ? f.name : JSON.stringify(f.name)}?: ${fieldType(f)};`;
    });
    out.set(name, { name, body: `{\n${lines.join('\n')}\n}` });
  }
  return out;
}

interface Ns {
  decls: Decl[];
  children: Map<string, Ns>;
}

/** The generated file's text. */
export function envoyTypesSource(root: protobuf.Root = envoyRoot()): string {
  const decls = collect(root, [...RESOURCE_TYPES, ...ANY_TYPES]);
  const tree: Ns = { decls: [], children: new Map() };
  const tops = new Set<string>();
  for (const name of [...decls.keys()].sort()) {
    const parts = name.split('.');
    tops.add(parts[0]!);
    let ns = tree;
    for (const p of parts.slice(0, -1)) {
      if (!ns.children.has(p)) ns.children.set(p, { decls: [], children: new Map() });
      ns = ns.children.get(p)!;
    }
    ns.decls.push({ name: parts.at(-1)!, body: decls.get(name)!.body });
  }
  // References are written from the top (`envoy.config.core.v3.Address`), so no inner namespace
  // or type may take the name of a top-level namespace.
  for (const name of decls.keys()) {
    for (const p of name.split('.').slice(1)) if (tops.has(p)) throw new Error(`${name}: "${p}" would shadow the top-level namespace of that name`);
  }
  const lines: string[] = [];
  const emit = (ns: Ns, depth: number) => {
    const pad = '  '.repeat(depth);
    const names = new Set([...ns.decls.map((d) => d.name), ...ns.children.keys()]);
    for (const n of [...names].sort()) {
      const d = ns.decls.find((x) => x.name === n);
      if (d) lines.push(...`${pad}export type ${n} = ${d.body};`.split('\n').map((l, i) => (i ? pad + l : l)));
      const child = ns.children.get(n);
      if (child) {
        lines.push(`${pad}export namespace ${n} {`);
        emit(child, depth + 1);
        lines.push(`${pad}}`);
      }
    }
  };
  for (const [n, ns] of [...tree.children].sort(([a], [b]) => (a < b ? -1 : 1))) {
    lines.push(`export declare namespace ${n} {`);
    emit(ns, 1);
    lines.push('}', '');
  }
  const header = [
    '// GENERATED by scripts/gen-envoy-types.ts from the .proto files of @grpc/grpc-js-xds (and protos/),',
    '// as src/xds/resources/protos.ts loads them. Do not edit: run `npm run types:update`.',
    '// test/unit/envoy-types.test.ts fails when this file is not current.',
    '',
    '/** Only typed() (src/xds/translator/util.ts) makes a PackedAny. */',
    'export declare const packedAnyBrand: unique symbol;',
    '',
    "/** A google.protobuf.Any as protobufjs fromObject takes it: the type URL and the message's own fields. */",
    "export type PackedAny = { readonly '@type': string; readonly [packedAnyBrand]: true };",
    '',
    '/** The resources Signalbox serves, by message name. */',
    'export interface ResourceTypes {',
    ...RESOURCE_TYPES.map((n) => `  '${n}': ${n};`),
    '}',
    '',
    '/** What typed() packs into an Any, by message name. */',
    'export interface AnyTypes {',
    ...ANY_TYPES.map((n) => `  '${n}': ${n};`),
    '}',
    '',
  ];
  return [...header, ...lines].join('\n');
}

/** Where the generated file lives, from the repository root. */
export const GENERATED_FILE = 'src/xds/resources/envoy-types.gen.ts';

if (process.argv[1] && import.meta.url === pathToFileURL(process.argv[1]).href) {
  // dist/scripts/ -> the repository root
  const repo = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..', '..');
  const file = path.join(repo, GENERATED_FILE);
  const text = envoyTypesSource();
  writeFileSync(file, text);
  process.stdout.write(`wrote ${GENERATED_FILE} (${text.split('\n').length} lines)\n`);
}
