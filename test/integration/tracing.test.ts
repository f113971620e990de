// OpenTelemetry in Signalbox: off by default; with the standard OTEL_* environment it exports
// spans over OTLP for compile, push and ext_authz check, and an ext_authz check continues the
// trace context of the request Envoy is checking. The OTLP receiver is a small HTTP server here.
import assert from 'node:assert/strict';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, describe, test } from 'node:test';
import * as grpc from '@grpc/grpc-js';
import { lookupType } from '../../src/xds/resources/protos.js';
import { waitFor } from '../helpers/net.js';
import { startSignalbox, type SignalboxProcess } from '../helpers/signalbox.js';
import { startGatewayEnv } from '../helpers/gateway-env.js';
import { startEnvoy } from '../helpers/envoy.js';
import { CertificateAuthority } from '../../src/ca/ca.js';
import { freePort } from '../helpers/net.js';
import { startUpstream } from '../helpers/upstream.js';
import { httpGet } from '../helpers/net.js';

interface OtlpSpan {
  name: string;
  traceId: string;
  parentSpanId?: string;
  attributes: { key: string; value: Record<string, unknown> }[];
}

async function otlpReceiver() {
  const spans: OtlpSpan[] = [];
  let posts = 0;
  const server = http.createServer((req, res) => {
    let body = '';
    req.setEncoding('utf8');
    req.on('data', (c: string) => (body += c));
    req.on('end', () => {
      posts++;
      if (req.url === '/v1/traces') {
        const json = JSON.parse(body) as { resourceSpans: { scopeSpans: { spans: OtlpSpan[] }[] }[] };
        for (const rs of json.resourceSpans ?? []) for (const ss of rs.scopeSpans ?? []) spans.push(...(ss.spans ?? []));
      }
      res.writeHead(200, { 'content-type': 'application/json' });
      res.end('{}');
    });
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
  return { spans, posts: () => posts, port: (server.address() as AddressInfo).port, close: () => new Promise<void>((r) => server.close(() => r())) };
}

const POLICY =
  'apiVersion: signalbox.dev/v1alpha1\nkind: Service\nmetadata: { name: shop }\nspec:\n  port: 8080\n  endpoints: [ { address: 127.0.0.1, port: 9 } ]\n---\napiVersion: signalbox.dev/v1alpha1\nkind: Gateway\nmetadata: { name: edge }\nspec:\n  listeners: [ { name: http, port: 18999, protocol: HTTP } ]\n';

/** One Check call as a proxy makes it: over TLS, with a workload certificate of the mesh CA in `dataDir`. */
async function authzCheck(port: number, dataDir: string, headers: Record<string, string>): Promise<void> {
  const ca = await CertificateAuthority.open({ dataDir, trustDomain: 'signalbox.local' });
  const leaf = await ca.issue('spiffe://signalbox.local/gateway/edge', 60_000);
  const creds = grpc.credentials.createSsl(Buffer.from(ca.trustBundlePem), Buffer.from(leaf.privateKeyPem), Buffer.from(leaf.certificatePem));
  const req = lookupType('envoy.service.auth.v3.CheckRequest');
  const Client = grpc.makeGenericClientConstructor(
    {
      Check: {
        path: '/envoy.service.auth.v3.Authorization/Check',
        requestStream: false,
        responseStream: false,
        requestSerialize: (v: object) => Buffer.from(req.encode(req.fromObject(v)).finish()),
        requestDeserialize: (b: Buffer) => b,
        responseSerialize: (b: Buffer) => b,
        responseDeserialize: (b: Buffer) => b,
      },
    },
    'Authorization',
  );
  const client = new Client(`127.0.0.1:${port}`, creds) as unknown as { Check(v: object, cb: (e: Error | null) => void): void; close(): void };
  return new Promise((resolve, reject) =>
    client.Check({ attributes: { request: { http: { headers, path: '/x', method: 'GET' } } } }, (e) => {
      client.close();
      if (e) reject(e);
      else resolve();
    }),
  );
}

describe('OpenTelemetry tracing of the control plane', () => {
  const dirs: string[] = [];
  const procs: SignalboxProcess[] = [];
  let receiver: Awaited<ReturnType<typeof otlpReceiver>>;
  after(async () => {
    for (const p of procs) await p.kill();
    await receiver?.close();
    for (const d of dirs) rmSync(d, { recursive: true, force: true });
  });
  const policyDir = () => {
    const d = mkdtempSync(path.join(os.tmpdir(), 'sb-otel-'));
    dirs.push(d);
    writeFileSync(path.join(d, 'p.yaml'), POLICY);
    return d;
  };

  test('off by default: nothing is exported', async () => {
    receiver = await otlpReceiver();
    const dir = policyDir();
    const sb = await startSignalbox({
      policies: dir,
      env: {
        OTEL_TRACES_EXPORTER: undefined,
        OTEL_EXPORTER_OTLP_ENDPOINT: undefined,
        OTEL_EXPORTER_OTLP_TRACES_ENDPOINT: undefined,
        OTEL_BSP_SCHEDULE_DELAY: '50',
      },
    });
    procs.push(sb);
    writeFileSync(path.join(dir, 'p.yaml'), POLICY.replace('port: 9 }', 'port: 10 }'));
    // At least a second reload: a watcher may see the write's truncation and its content apart.
    const applied = async () => Number(/signalbox_policy_reloads_total\{result="applied"\} (\d+)/.exec(await sb.adminText('/metrics'))?.[1] ?? 0);
    await waitFor(async () => (await applied()) >= 2, {
      what: 'second reload',
      timeoutMs: 10_000,
    });
    assert.doesNotMatch(sb.logs(), /OpenTelemetry tracing on/);
    assert.equal(receiver.posts(), 0);
    await sb.kill();
  });

  test("with OTEL_* set: compile, push and ext_authz spans, the check continuing the caller's trace", async () => {
    const dir = policyDir();
    const sb = await startSignalbox({
      policies: dir,
      env: {
        OTEL_TRACES_EXPORTER: 'otlp',
        OTEL_EXPORTER_OTLP_PROTOCOL: 'http/json',
        OTEL_EXPORTER_OTLP_ENDPOINT: `http://127.0.0.1:${receiver.port}`,
        OTEL_BSP_SCHEDULE_DELAY: '50',
        OTEL_SERVICE_NAME: 'signalbox-test',
      },
    });
    procs.push(sb);
    assert.match(sb.logs(), /OpenTelemetry tracing on/);
    writeFileSync(path.join(dir, 'p.yaml'), POLICY.replace('port: 9 }', 'port: 11 }'));
    await waitFor(() => receiver.spans.some((s) => s.name === 'signalbox.compile') && receiver.spans.some((s) => s.name === 'signalbox.xds.push'), {
      what: 'compile and push spans',
      timeoutMs: 15_000,
    });
    const compile = receiver.spans.find((s) => s.name === 'signalbox.compile')!;
    assert.ok(compile.attributes.some((a) => a.key === 'signalbox.applied'));
    const push = receiver.spans.find((s) => s.name === 'signalbox.xds.push')!;
    assert.ok(push.attributes.some((a) => a.key === 'signalbox.group' && a.value.stringValue === 'gateway/edge'));

    const m = /"authz":"127\.0\.0\.1:(\d+)",("tls":\w+,)?"msg":"ext_authz service listening/.exec(sb.logs());
    assert.ok(m, 'the ext_authz port is logged');
    const traceId = '4bf92f3577b34da6a3ce929d0e0e4736';
    await authzCheck(Number(m[1]), sb.dataDir, { traceparent: `00-${traceId}-00f067aa0ba902b7-01` });
    await waitFor(() => receiver.spans.some((s) => s.name === 'signalbox.authz.check'), { what: 'authz span', timeoutMs: 10_000 });
    const check = receiver.spans.find((s) => s.name === 'signalbox.authz.check')!;
    assert.equal(check.traceId, traceId, 'same trace as the checked request');
    assert.equal(check.parentSpanId, '00f067aa0ba902b7');
    // No secret in span attributes.
    assert.doesNotMatch(JSON.stringify(receiver.spans), /PRIVATE KEY|Bearer /);
  });

  test('Mesh.spec.tracing: a real Envoy exports OTLP spans to the named Service and passes traceparent upstream', async () => {
    // A stand-in OTLP/gRPC collector: counts Export calls and keeps their bytes.
    const exports: Buffer[] = [];
    const collector = new grpc.Server();
    collector.addService(
      {
        Export: {
          path: '/opentelemetry.proto.collector.trace.v1.TraceService/Export',
          requestStream: false,
          responseStream: false,
          requestSerialize: (b: Buffer) => b,
          requestDeserialize: (b: Buffer) => b,
          responseSerialize: (b: Buffer) => b,
          responseDeserialize: (b: Buffer) => b,
        },
      },
      {
        Export: (call: grpc.ServerUnaryCall<Buffer, Buffer>, cb: grpc.sendUnaryData<Buffer>) => {
          exports.push(call.request);
          cb(null, Buffer.alloc(0));
        },
      },
    );
    const collectorPort = await new Promise<number>((resolve, reject) =>
      collector.bindAsync('127.0.0.1:0', grpc.ServerCredentials.createInsecure(), (e, p) => (e ? reject(e) : resolve(p))),
    );
    const app = await startUpstream('traced');
    const env = await startGatewayEnv({
      name: 'tracing',
      files: (gw) => ({
        'mesh.yaml':
          'apiVersion: signalbox.dev/v1alpha1\nkind: Mesh\nmetadata: { name: default }\nspec:\n  tracing: { otlp: { service: otel, sampling: 100 } }\n',
        'p.yaml': `apiVersion: signalbox.dev/v1alpha1
kind: Service
metadata: { name: otel }
spec:
  protocol: grpc
  port: 4317
  endpoints: [ { address: 127.0.0.1, port: ${collectorPort} } ]
---
apiVersion: signalbox.dev/v1alpha1
kind: Service
metadata: { name: app }
spec:
  port: 8080
  endpoints: [ { address: 127.0.0.1, port: ${app.port} } ]
---
apiVersion: signalbox.dev/v1alpha1
kind: Gateway
metadata: { name: gateway }
spec:
  listeners: [ { name: http, port: ${gw}, protocol: HTTP } ]
---
apiVersion: signalbox.dev/v1alpha1
kind: HTTPRoute
metadata: { name: app }
spec:
  parentRefs: [ { kind: Gateway, name: gateway } ]
  rules: [ { name: all, matches: [ { path: { type: PathPrefix, value: / } } ], backendRefs: [ { name: app } ] } ]
`,
      }),
    });
    try {
      await env.synced();
      await waitFor(async () => (await httpGet(env.url('/hello'))).status === 200, { what: 'route served', timeoutMs: 15_000 });
      for (let i = 0; i < 10; i++) assert.equal((await httpGet(env.url(`/hello/${i}`))).status, 200);
      const seen = app.seen.at(-1)!;
      assert.match(String(seen.headers.traceparent), /^00-[0-9a-f]{32}-[0-9a-f]{16}-01$/, 'Envoy passes W3C trace context upstream');
      await waitFor(() => exports.length > 0, { what: 'Envoy to export spans', timeoutMs: 20_000 });
      assert.ok(Buffer.concat(exports).includes('gateway-gateway'), 'spans name the proxy group');
      const tracing = (await env.envoy.adminJson<any>('/config_dump?resource=dynamic_listeners')).configs[0].active_state.listener.filter_chains[0].filters[0]
        .typed_config.tracing;
      assert.equal(tracing.provider.name, 'envoy.tracers.opentelemetry');
    } catch (e) {
      throw new Error(`${(e as Error).message}\n--- envoy log ---\n${env.envoy.logs().slice(-3000)}`);
    } finally {
      await env.stop();
      await app.close();
      collector.forceShutdown();
    }
  });

  test("Envoy's ext_authz call carries its trace into Signalbox's check span", async () => {
    const exports: Buffer[] = [];
    const collector = new grpc.Server();
    collector.addService(
      {
        Export: {
          path: '/opentelemetry.proto.collector.trace.v1.TraceService/Export',
          requestStream: false,
          responseStream: false,
          requestSerialize: (b: Buffer) => b,
          requestDeserialize: (b: Buffer) => b,
          responseSerialize: (b: Buffer) => b,
          responseDeserialize: (b: Buffer) => b,
        },
      },
      {
        Export: (call: grpc.ServerUnaryCall<Buffer, Buffer>, cb: grpc.sendUnaryData<Buffer>) => {
          exports.push(call.request);
          cb(null, Buffer.alloc(0));
        },
      },
    );
    const collectorPort = await new Promise<number>((resolve, reject) =>
      collector.bindAsync('127.0.0.1:0', grpc.ServerCredentials.createInsecure(), (e, p) => (e ? reject(e) : resolve(p))),
    );
    const app = await startUpstream('guarded');
    const gw = await freePort();
    const dead = await freePort();
    const dir = policyDir();
    writeFileSync(
      path.join(dir, 'mesh.yaml'),
      'apiVersion: signalbox.dev/v1alpha1\nkind: Mesh\nmetadata: { name: default }\nspec:\n  tracing: { otlp: { service: otel, sampling: 100 } }\n',
    );
    writeFileSync(
      path.join(dir, 'p.yaml'),
      `apiVersion: signalbox.dev/v1alpha1
kind: Service
metadata: { name: otel }
spec:
  protocol: grpc
  port: 4317
  endpoints: [ { address: 127.0.0.1, port: ${collectorPort} } ]
---
apiVersion: signalbox.dev/v1alpha1
kind: Service
metadata: { name: shop }
spec:
  port: 8080
  endpoints: [ { address: 127.0.0.1, port: ${app.port} } ]
---
apiVersion: signalbox.dev/v1alpha1
kind: Gateway
metadata: { name: edge }
spec:
  listeners: [ { name: http, port: ${gw}, protocol: HTTP } ]
---
apiVersion: signalbox.dev/v1alpha1
kind: HTTPRoute
metadata: { name: api }
spec:
  parentRefs: [ { kind: Gateway, name: edge } ]
  rules: [ { name: all, matches: [ { path: { type: PathPrefix, value: / } } ], backendRefs: [ { name: shop } ] } ]
---
apiVersion: signalbox.dev/v1alpha1
kind: JWTPolicy
metadata: { name: users }
spec:
  targetRef: { kind: HTTPRoute, name: api }
  issuer: https://issuer.test/
  jwks: { uri: "http://127.0.0.1:${dead}/jwks.json", timeout: 500ms }
`,
    );
    const before = receiver.spans.length;
    const sb = await startSignalbox({
      policies: dir,
      env: {
        OTEL_TRACES_EXPORTER: 'otlp',
        OTEL_EXPORTER_OTLP_PROTOCOL: 'http/json',
        OTEL_EXPORTER_OTLP_ENDPOINT: `http://127.0.0.1:${receiver.port}`,
        OTEL_BSP_SCHEDULE_DELAY: '50',
      },
    });
    procs.push(sb);
    const envoy = await startEnvoy({ name: 'authz-trace', bootstrapYaml: await sb.bootstrap({ gateway: 'edge', id: 'authz-trace' }) });
    try {
      await waitFor(async () => (await httpGet(`http://127.0.0.1:${gw}/x`)).status === 401, { what: 'the JWTPolicy to answer 401', timeoutMs: 20_000 });
      for (let i = 0; i < 6; i++) await httpGet(`http://127.0.0.1:${gw}/x/${i}`);
      await waitFor(() => receiver.spans.slice(before).some((s) => s.name === 'signalbox.authz.check' && s.parentSpanId), {
        what: 'a check span with a parent',
        timeoutMs: 15_000,
      });
      await waitFor(() => exports.length > 0, { what: 'Envoy spans', timeoutMs: 20_000 });
      const inEnvoyTrace = () => {
        const envoyBytes = Buffer.concat(exports);
        return receiver.spans
          .slice(before)
          .filter((s) => s.name === 'signalbox.authz.check' && s.parentSpanId)
          .some((c) => envoyBytes.includes(Buffer.from(c.traceId, 'hex')));
      };
      await waitFor(inEnvoyTrace, { what: "a check span in one of Envoy's traces", timeoutMs: 20_000 });
    } catch (e) {
      throw new Error(`${(e as Error).message}\n--- envoy log ---\n${envoy.logs().slice(-3000)}`);
    } finally {
      await envoy.stop();
      await app.close();
      collector.forceShutdown();
    }
  });
});
