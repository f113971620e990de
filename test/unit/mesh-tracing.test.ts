// Mesh.spec.tracing: validated against the Services (the collector must speak gRPC), and turned
// into Envoy's OpenTelemetry tracer on every HTTP listener plus the collector's cluster.
import assert from 'node:assert/strict';
import { after, describe, test } from 'node:test';
import { translate } from '../../src/translate/gateway.js';
import { applyMeshTracing, tracingServiceName } from '../../src/translate/tracing.js';
import { listenerResource } from '../../src/xds/translator/listener.js';
import { lookupType } from '../../src/xds/resources/protos.js';
import { assertRoundTrip } from '../../src/xds/resources/resource.js';
import { TypeUrl } from '../../src/xds/resources/type-urls.js';
import { doc, docs, policyDir, removePolicyDirs, validateDir } from './policy-dir.js';

after(removePolicyDirs);

const base = (collectorProtocol: string, tracingService = 'otel') =>
  docs(
    doc('Mesh', 'default', `  tracing: { otlp: { service: ${tracingService}, sampling: 25 } }`),
    doc('Service', 'otel', `{ protocol: ${collectorProtocol}, port: 4317, endpoints: [ { address: 127.0.0.1, port: 4317 } ] }`),
    doc('Service', 'shop', '{ port: 8080, endpoints: [ { address: 127.0.0.1, port: 9001 } ] }'),
    doc('Gateway', 'edge', '{ listeners: [ { name: http, port: 8080, protocol: HTTP } ] }'),
    doc('HTTPRoute', 'shop', `  parentRefs: [ { kind: Gateway, name: edge } ]\n  rules: [ { backendRefs: [ { name: shop } ] } ]`),
  );

describe('Mesh tracing', () => {
  test('every listener gets the OpenTelemetry tracer, every group the collector cluster', async () => {
    const r = await validateDir(policyDir({ 'p.yaml': base('grpc') }));
    assert.deepEqual(r.errors, []);
    const irs = translate(r.model!, ['sidecar/shop/9001/21001/15001']);
    applyMeshTracing(r.model!, irs);
    for (const ir of irs.values()) {
      assert.ok(
        ir.clusters.some((c) => c.name === 'otel' && c.protocol === 'grpc'),
        `${ir.group} has the collector cluster`,
      );
      for (const l of ir.listeners) {
        assert.deepEqual(l.tracing, { cluster: 'otel', samplingPercent: 25, serviceName: tracingServiceName(ir.group) });
        const json = listenerResource(l);
        const T = lookupType('envoy.config.listener.v3.Listener');
        assertRoundTrip(TypeUrl.Listener, l.name, json, T.encode(T.fromObject(json)).finish());
      }
    }
    assert.equal(tracingServiceName('gateway/edge'), 'edge-gateway');
    assert.equal(tracingServiceName('sidecar/shop/9001/21001/15001'), 'shop');
  });

  test('an unknown collector Service, or one that does not speak gRPC, is an error naming the field', async () => {
    const unknown = await validateDir(policyDir({ 'p.yaml': base('grpc', 'otle') }));
    assert.equal(unknown.errors.length, 1);
    assert.equal(unknown.errors[0]!.path, 'spec.tracing.otlp.service');
    assert.match(unknown.errors[0]!.message, /unknown Service "otle" \(did you mean "otel"\?\)/);
    const http = await validateDir(policyDir({ 'p.yaml': base('http') }));
    assert.equal(http.errors.length, 1);
    assert.match(http.errors[0]!.message, /protocol: grpc/);
  });
});
