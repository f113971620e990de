// The generated Envoy types (src/xds/resources/envoy-types.gen.ts, scripts/gen-envoy-types.ts):
// the committed file is current, and the generator writes the shape the encode path takes.
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { describe, test } from 'node:test';
import protobuf from 'protobufjs';
import { ANY_TYPES, collect, envoyTypesSource, GENERATED_FILE, RESOURCE_TYPES } from '../../scripts/gen-envoy-types.js';
import { envoyRoot } from '../../src/xds/resources/protos.js';
import { repoRoot } from '../helpers/envoy.js';

describe('generated Envoy types', () => {
  test(`${GENERATED_FILE} is what the generator writes (regenerate: npm run types:update)`, () => {
    const committed = readFileSync(path.join(repoRoot(), GENERATED_FILE), 'utf8');
    // Not assert.equal on the texts: a 2,600-line diff helps no one; the first differing line does.
    const want = envoyTypesSource().split('\n');
    const have = committed.split('\n');
    const at = want.findIndex((l, i) => l !== have[i]);
    assert.ok(
      at === -1 && want.length === have.length,
      `${GENERATED_FILE} is not current (first difference at line ${(at === -1 ? Math.min(want.length, have.length) : at) + 1}); run npm run types:update`,
    );
  });

  test('fields in the form fromObject takes: snake_case names, enum names, arrays, records, PackedAny', () => {
    const decls = collect(envoyRoot(), ['envoy.config.cluster.v3.Cluster']);
    const cluster = decls.get('envoy.config.cluster.v3.Cluster')!.body;
    assert.match(cluster, /^ {2}connect_timeout\?: google\.protobuf\.Duration;$/m);
    assert.match(cluster, /^ {2}lb_policy\?: envoy\.config\.cluster\.v3\.Cluster\.LbPolicy;$/m);
    assert.match(cluster, /^ {2}health_checks\?: envoy\.config\.core\.v3\.HealthCheck\[\];$/m);
    assert.match(cluster, /^ {2}typed_extension_protocol_options\?: \{ \[key: string\]: PackedAny \};$/m);
    assert.doesNotMatch(cluster, /connectTimeout/);
    const lb = decls.get('envoy.config.cluster.v3.Cluster.LbPolicy')!.body;
    assert.ok(lb.split(' | ').includes('"ROUND_ROBIN"') && lb.split(' | ').includes('"RING_HASH"'), lb);
    // 64-bit integers as numbers (the round-trip check decodes them so), Any is never declared.
    assert.equal(decls.get('google.protobuf.Duration')!.body, '{\n  seconds?: number;\n  nanos?: number;\n}');
    assert.equal(decls.has('google.protobuf.Any'), false);
    // A message without fields accepts only an empty object.
    assert.equal(decls.get('envoy.config.core.v3.AggregatedConfigSource')!.body, 'Record<string, never>');
    // protobufjs's own Struct keeps its camelCase field names, as it encodes them.
    assert.match(decls.get('google.protobuf.Value')!.body, /^ {2}stringValue\?: string;$/m);
  });

  test('a oneof member is an optional field like any other', () => {
    const root = envoyRoot();
    const t = root.lookupType('envoy.config.route.v3.RouteMatch');
    const prefix = t.fields.prefix!;
    assert.ok(prefix.partOf instanceof protobuf.OneOf);
    assert.match(collect(root, ['envoy.config.route.v3.RouteMatch']).get('envoy.config.route.v3.RouteMatch')!.body, /^ {2}prefix\?: string;$/m);
  });

  test('every resource and Any type the generator lists exists in the loaded protos', () => {
    const root = envoyRoot();
    for (const name of [...RESOURCE_TYPES, ...ANY_TYPES]) assert.ok(root.lookupType(name), name);
    assert.throws(() => collect(root, ['envoy.config.listener.v3.NoSuchMessage']), /no such type/i);
  });
});
