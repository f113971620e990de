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

const POLICY = 'apiVersion: signalbox.dev/v1alpha1\nkind: Service\nmetadata: { name: shop }\nspec:\n  port: 8080\n  endpoints: [ { address: 127.0.0.1, port: 9 } ]\n---\napiVersion: signalbox.dev/v1alpha1\nkind: Gateway\nmetadata: { name: edge }\nspec:\n  listeners: [ { name: http, port: 18999, protocol: HTTP } ]\n';

function authzCheck(port: number, headers: Record<string, string>): Promise<void> {
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
  const client = new Client(`127.0.0.1:${port}`, grpc.credentials.createInsecure()) as unknown as { Check(v: object, cb: (e: Error | null) => void): void; close(): void };
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
    const sb = await startSignalbox({ policies: dir, env: { OTEL_TRACES_EXPORTER: undefined, OTEL_EXPORTER_OTLP_ENDPOINT: undefined, OTEL_EXPORTER_OTLP_TRACES_ENDPOINT: undefined, OTEL_BSP_SCHEDULE_DELAY: '50' } });
    procs.push(sb);
    writeFileSync(path.join(dir, 'p.yaml'), POLICY.replace('port: 9 }', 'port: 10 }'));
    await waitFor(async () => (await sb.adminText('/metrics')).includes('signalbox_policy_reloads_total{result="applied"} 2'), { what: 'second reload', timeoutMs: 10_000 });
    assert.doesNotMatch(sb.logs(), /OpenTelemetry tracing on/);
    assert.equal(receiver.posts(), 0);
    await sb.kill();
  });

  test('with OTEL_* set: compile, push and ext_authz spans, the check continuing the caller\'s trace', async () => {
    const dir = policyDir();
    const sb = await startSignalbox({
      policies: dir,
      env: { OTEL_TRACES_EXPORTER: 'otlp', OTEL_EXPORTER_OTLP_PROTOCOL: 'http/json', OTEL_EXPORTER_OTLP_ENDPOINT: `http://127.0.0.1:${receiver.port}`, OTEL_BSP_SCHEDULE_DELAY: '50', OTEL_SERVICE_NAME: 'signalbox-test' },
    });
    procs.push(sb);
    assert.match(sb.logs(), /OpenTelemetry tracing on/);
    writeFileSync(path.join(dir, 'p.yaml'), POLICY.replace('port: 9 }', 'port: 11 }'));
    await waitFor(() => receiver.spans.some((s) => s.name === 'signalbox.compile') && receiver.spans.some((s) => s.name === 'signalbox.xds.push'), { what: 'compile and push spans', timeoutMs: 15_000 });
    const compile = receiver.spans.find((s) => s.name === 'signalbox.compile')!;
    assert.ok(compile.attributes.some((a) => a.key === 'signalbox.applied'));
    const push = receiver.spans.find((s) => s.name === 'signalbox.xds.push')!;
    assert.ok(push.attributes.some((a) => a.key === 'signalbox.group' && a.value.stringValue === 'gateway/edge'));

    const m = /"authz":"127\.0\.0\.1:(\d+)","msg":"ext_authz service listening"/.exec(sb.logs());
    assert.ok(m, 'the ext_authz port is logged');
    const traceId = '4bf92f3577b34da6a3ce929d0e0e4736';
    await authzCheck(Number(m[1]), { traceparent: `00-${traceId}-00f067aa0ba902b7-01` });
    await waitFor(() => receiver.spans.some((s) => s.name === 'signalbox.authz.check'), { what: 'authz span', timeoutMs: 10_000 });
    const check = receiver.spans.find((s) => s.name === 'signalbox.authz.check')!;
    assert.equal(check.traceId, traceId, 'same trace as the checked request');
    assert.equal(check.parentSpanId, '00f067aa0ba902b7');
    // No secret in span attributes.
    assert.doesNotMatch(JSON.stringify(receiver.spans), /PRIVATE KEY|Bearer /);
  });
});
