// /metrics: every series docs/observability.md lists is exposed (and nothing undocumented), and
// label cardinality stays bounded however many routes, services, proxies and edges the traffic
// store sees. No proxy id ever becomes a label value.
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, describe, test } from 'node:test';
import client from 'prom-client';
import { startServer, type RunningServer } from '../../src/cli/serve.js';
import { resolveServeConfig } from '../../src/config/settings.js';
import { createLogger } from '../../src/observability/logger.js';
import { PROM_CAPS, registerMeshMetrics } from '../../src/telemetry/prometheus.js';
import { TrafficStore } from '../../src/telemetry/traffic-store.js';
import { repoRoot } from '../helpers/envoy.js';

/** name -> distinct label sets, from Prometheus text. */
function series(text: string): Map<string, Set<string>> {
  const out = new Map<string, Set<string>>();
  for (const line of text.split('\n')) {
    if (!line || line.startsWith('#')) continue;
    const m = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{.*\})? /.exec(line);
    assert.ok(m, `not a sample line: ${line}`);
    const name = m[1]!.replace(/_(bucket|sum|count)$/, '');
    if (!out.has(name)) out.set(name, new Set());
    out.get(name)!.add(m[2] ?? '');
  }
  return out;
}

function documented(): { all: string[]; consulOnly: Set<string> } {
  const doc = readFileSync(path.join(repoRoot(), 'docs', 'observability.md'), 'utf8');
  const all: string[] = [];
  const consulOnly = new Set<string>();
  for (const line of doc.split('\n')) {
    const m = /^\| `(signalbox_[a-z_]+)` \|/.exec(line);
    if (!m) continue;
    all.push(m[1]!);
    if (line.includes('with `--consul-addr`')) consulOnly.add(m[1]!);
  }
  return { all, consulOnly };
}

describe('/metrics', () => {
  let server: RunningServer | undefined;
  const dirs: string[] = [];
  after(async () => {
    await server?.stop();
    for (const d of dirs) rmSync(d, { recursive: true, force: true });
  });

  test('exposes exactly the documented series', async () => {
    const dir = mkdtempSync(path.join(os.tmpdir(), 'sb-metrics-'));
    dirs.push(dir);
    writeFileSync(
      path.join(dir, 'p.yaml'),
      'apiVersion: signalbox.dev/v1alpha1\nkind: Service\nmetadata: { name: shop }\nspec:\n  port: 8080\n  endpoints: [ { address: 127.0.0.1, port: 9 } ]\n',
    );
    const cfg = resolveServeConfig(
      { policies: dir, 'xds-address': '127.0.0.1', 'xds-port': '0', 'admin-port': '0', 'data-dir': path.join(dir, 'data'), 'authz-port': '0' },
      {},
    );
    server = await startServer(cfg, createLogger({ level: 'silent' }));
    const text = await (await fetch(`http://127.0.0.1:${server.adminPort}/metrics`)).text();
    const exposed = new Set([...text.matchAll(/^# TYPE (signalbox_[a-z_]+) /gm)].map((m) => m[1]!).filter((n) => !n.startsWith('signalbox_process_')));
    const { all, consulOnly } = documented();
    assert.ok(all.length > 20, 'the doc lists the series');
    for (const name of all) if (!consulOnly.has(name)) assert.ok(exposed.has(name), `${name} is documented but not exposed`);
    for (const name of exposed) assert.ok(all.includes(name), `${name} is exposed but not documented in docs/observability.md`);
  });

  test('mesh series stay bounded under a flood of routes, services, proxies and edges', async () => {
    const registry = new client.Registry();
    const store = new TrafficStore();
    registerMeshMetrics(registry, store);
    const proxyIds: string[] = [];
    for (let i = 0; i < 3000; i++) {
      const id = `proxy-${i}-secret-looking-id`;
      proxyIds.push(id);
      const role = i % 2 ? 'gateway' : 'sidecar';
      store.record(
        { id, role, name: `svc-${i % 1500}`, group: `g${i}` },
        {
          route: `route-${i}/rule/match-0`,
          cluster: `svc-${(i * 7) % 2500}`,
          status: [200, 404, 503, 429][i % 4]!,
          flags: 0,
          durationMs: i % 500,
          attempts: 1 + (i % 3),
          peer: '',
        },
      );
    }
    const text = await registry.metrics();
    const s = series(text);
    const count = (name: string) => s.get(name)?.size ?? 0;
    const buckets = 14; // 13 bounds + Inf
    assert.ok(count('signalbox_mesh_requests_total') <= (PROM_CAPS.services + 1) * 4);
    assert.ok(count('signalbox_mesh_events_total') <= (PROM_CAPS.services + 1) * 5);
    assert.ok(count('signalbox_mesh_request_duration_seconds') <= (PROM_CAPS.services + 1) * (buckets + 1)); // + the sum/count set
    assert.ok(count('signalbox_mesh_route_requests_total') <= (PROM_CAPS.routes + 1) * 4);
    assert.ok(count('signalbox_mesh_route_events_total') <= (PROM_CAPS.routes + 1) * 5);
    assert.ok(count('signalbox_mesh_route_request_duration_seconds') <= (PROM_CAPS.routes + 1) * (buckets + 1));
    assert.ok(count('signalbox_mesh_edge_requests_total') <= PROM_CAPS.edges + 1);
    const total = [...s.values()].reduce((a, v) => a + v.size, 0);
    assert.ok(total < 15_000, `${total} series in all`);
    assert.match(text, /service="\(other\)"/, 'the rest is summed, not dropped');
    for (const id of proxyIds.slice(0, 50)) assert.ok(!text.includes(id), 'no proxy id in any label');
    // Counts are kept: the (other) group plus the named ones add up to everything recorded.
    let sum = 0;
    for (const m of text.matchAll(/^signalbox_mesh_route_requests_total\{[^}]*\} (\d+)$/gm)) sum += Number(m[1]);
    assert.equal(sum, 3000);
  });
});
