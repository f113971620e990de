// docker-compose.yml cannot run on the CI machines (no container runtime), so this checks what
// can be checked without one: every file, port, image and command it references exists and agrees
// with `npm run demo` (scripts/demo-topology.ts, policies/), and the Prometheus, Grafana and
// OpenTelemetry files it mounts agree with it and with the documented /metrics series.
import assert from 'node:assert/strict';
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, describe, test } from 'node:test';
import YAML from 'yaml';
import { resolveServeConfig } from '../../src/config/settings.js';
import { DEMO, demoProxies, proxyId, writeBootstrap, type DemoProxy } from '../../scripts/demo-topology.js';
import { repoRoot } from '../helpers/envoy.js';

const root = repoRoot();
const read = (f: string) => readFileSync(path.join(root, f), 'utf8');

interface ComposeService {
  image?: string;
  command?: string | string[];
  environment?: Record<string, string>;
  volumes?: string[];
  ports?: string[];
  network_mode?: string;
  depends_on?: Record<string, { condition: string }> | string[];
  healthcheck?: { test: string[] };
}

const compose = YAML.parse(read('docker-compose.yml'), { merge: true }) as { services: Record<string, ComposeService>; volumes: Record<string, unknown> };
const services = compose.services;
const cmd = (s: ComposeService): string[] => (Array.isArray(s.command) ? s.command : (s.command ?? '').split(/\s+/).filter(Boolean));

describe('docker-compose.yml', () => {
  const tmp: string[] = [];
  after(() => tmp.forEach((d) => rmSync(d, { recursive: true, force: true })));

  test('has the issue\'s services, each image pinned to a version', () => {
    for (const name of ['consul', 'signalbox', 'gateway', 'prometheus', 'grafana', 'otel-collector']) assert.ok(services[name], `service ${name}`);
    for (const [name, s] of Object.entries(services)) {
      assert.ok(s.image, `${name} has an image`);
      assert.match(s.image!, /^[a-z0-9./-]+:v?\d+\.\d+(\.\d+)?[-a-z0-9.]*$/, `${name}: "${s.image}" is pinned to a version`);
      assert.doesNotMatch(s.image!, /:latest$/);
    }
    const envoyImage = services.gateway!.image!;
    const pinned = /ENVOY_VERSION="\$\{ENVOY_VERSION:-([0-9.]+)\}"/.exec(read('scripts/provision-envoy.sh'))![1]!;
    assert.equal(envoyImage, `envoyproxy/envoy:v${pinned}`, 'the same Envoy as the tests');
    assert.match(read('scripts/provision-consul.sh'), new RegExp(services.consul!.image!.split(':')[1]!.replace(/\./g, '\\.')), 'the same Consul as the tests');
  });

  test('every mounted file and folder exists; named volumes are declared', () => {
    for (const [name, s] of Object.entries(services)) {
      for (const v of s.volumes ?? []) {
        const [src] = v.split(':') as [string];
        if (src.startsWith('.')) assert.ok(existsSync(path.join(root, src)), `${name} mounts ${src}, which does not exist`);
        else assert.ok(src in compose.volumes, `${name} uses volume ${src}, which is not declared`);
      }
    }
  });

  test('every container shares one network namespace, and no two things listen on one port', () => {
    const hub = Object.entries(services).filter(([, s]) => !s.network_mode);
    assert.deepEqual(hub.map(([n]) => n), ['consul']);
    for (const [name, s] of Object.entries(services)) if (name !== 'consul') assert.equal(s.network_mode, 'service:consul', name);
    const listening = [
      DEMO.xdsPort, DEMO.adminPort, DEMO.authzPort, DEMO.gateway.listenPort, DEMO.gateway.envoyAdminPort,
      ...DEMO.sidecars.flatMap((s) => [s.appPort, s.inboundPort, s.outboundPort, s.envoyAdminPort]),
      DEMO.consulPort, 8300, 8301, 8302, 8502, 8600, DEMO.prometheusPort, DEMO.grafanaPort, DEMO.otlpGrpcPort, DEMO.otlpHttpPort,
    ];
    assert.equal(new Set(listening).size, listening.length, `a port is used twice: ${listening.join(', ')}`);
    const published = (services.consul!.ports ?? []).map((p) => p.split(':').map(Number));
    for (const [host, container] of published) assert.equal(host, container);
    const pub = new Set(published.map(([p]) => p));
    for (const p of [DEMO.gateway.listenPort, DEMO.adminPort, DEMO.prometheusPort, DEMO.grafanaPort, DEMO.consulPort]) assert.ok(pub.has(p), `port ${p} is published`);
  });

  test('Signalbox runs `signalbox serve` on the demo policies and ports', () => {
    const sb = services.signalbox!;
    const c = cmd(sb).join(' ');
    assert.match(c, /node bin\/signalbox\.js serve$/);
    assert.ok(existsSync(path.join(root, 'bin/signalbox.js')));
    const env = sb.environment!;
    const cfg = resolveServeConfig({}, env);
    assert.equal(path.normalize(cfg.policies), DEMO.policies);
    assert.equal(cfg.xdsPort, DEMO.xdsPort);
    assert.equal(cfg.adminPort, DEMO.adminPort);
    assert.equal(env.SIGNALBOX_AUTHZ_PORT, String(DEMO.authzPort));
    // The demo runs serve with its defaults: the same ports.
    const defaults = resolveServeConfig({}, {});
    assert.equal(defaults.xdsPort, DEMO.xdsPort);
    assert.equal(defaults.adminPort, DEMO.adminPort);
    assert.match(read('scripts/demo.ts'), /resolveServeConfig\(\{ policies: path\.join\(root, 'policies'\) \}\)/);
    assert.equal(env.CONSUL_HTTP_ADDR, `127.0.0.1:${DEMO.consulPort}`);
    assert.match(services.consul!.command as string, new RegExp(`-http-port ${DEMO.consulPort}`));
    assert.match(sb.healthcheck!.test.join(' '), new RegExp(`127\\.0\\.0\\.1:${DEMO.adminPort}/readyz`));
  });

  test('every node command runs a script that exists, and the demo apps match the topology', () => {
    for (const [name, s] of Object.entries(services)) {
      const c = cmd(s);
      for (const arg of c) {
        const m = /^dist\/(.+)\.js$/.exec(arg);
        if (m) assert.ok(existsSync(path.join(root, `${m[1]}.ts`)), `${name} runs ${arg}, built from ${m[1]}.ts, which does not exist`);
      }
    }
    const apps = Object.entries(services).filter(([, s]) => cmd(s).includes('dist/scripts/demo-app.js'));
    assert.deepEqual(
      apps.map(([n, s]) => [n, cmd(s).slice(2)]).sort(),
      DEMO.sidecars.map((sc) => [sc.instance, [sc.instance, String(sc.appPort)]]).sort(),
    );
    // npm run demo starts the same apps.
    assert.match(read('scripts/demo.ts'), /DEMO\.sidecars\.map\(\(s\) => startUpstream\(s\.instance, s\.appPort\)\)/);
    assert.match(read('scripts/demo.ts'), /for \(const p of demoProxies\(\)\)/);
    assert.match(JSON.parse(read('package.json')).scripts.demo, /dist\/scripts\/demo\.js/);
    assert.deepEqual(cmd(services.bootstrap!), ['node', 'dist/scripts/demo-bootstrap.js', '/bootstrap', '/data']);
    assert.equal(services.signalbox!.environment!.SIGNALBOX_DATA_DIR, '/data', 'tokens are signed with the key Signalbox verifies');
  });

  test('one Envoy per demo proxy, each started on the bootstrap `signalbox bootstrap` writes for it', async () => {
    const envoys = Object.entries(services).filter(([, s]) => cmd(s)[0] === 'envoy');
    const files = envoys.map(([, s]) => cmd(s)[cmd(s).indexOf('-c') + 1]).sort();
    assert.deepEqual(files, demoProxies().map((p) => `/bootstrap/${proxyId(p)}.yaml`).sort());
    for (const [name, s] of envoys) {
      assert.ok((s.volumes ?? []).includes('bootstrap:/bootstrap:ro'), name);
      assert.deepEqual(s.depends_on, { bootstrap: { condition: 'service_completed_successfully' } }, name);
    }
    // Run the same bootstrap commands the `bootstrap` service runs and read what they write.
    const dir = mkdtempSync(path.join(os.tmpdir(), 'sb-compose-'));
    tmp.push(dir);
    for (const p of demoProxies()) {
      const b = YAML.parse(await writeBootstrap(p, path.join(dir, 'bootstrap'), path.join(dir, 'data')));
      checkBootstrap(p, b);
    }
  });

  test('the policies name the demo ports: gateway listener, apps and their sidecars', () => {
    const gw = YAML.parse(read('policies/gateway.yaml'));
    assert.equal(gw.metadata.name, DEMO.gateway.gateway);
    assert.deepEqual(gw.spec.listeners.map((l: { port: number }) => l.port), [DEMO.gateway.listenPort]);
    const svcs = YAML.parseAllDocuments(read('policies/services.yaml')).map((d) => d.toJSON());
    const endpoints = svcs.flatMap((s) => s.spec.endpoints.map((e: { address: string; port: number; sidecarPort: number }) => [s.metadata.name, e.address, e.port, e.sidecarPort]));
    assert.deepEqual(endpoints.sort(), DEMO.sidecars.map((s) => [s.service, '127.0.0.1', s.appPort, s.inboundPort]).sort());
  });

  test('Prometheus scrapes Signalbox and every demo Envoy at their ports', () => {
    const prom = YAML.parse(read('examples/prometheus/prometheus.yml'));
    const job = (n: string) => prom.scrape_configs.find((j: { job_name: string }) => j.job_name === n);
    assert.deepEqual(job('signalbox').static_configs[0].targets, [`127.0.0.1:${DEMO.adminPort}`]);
    assert.equal(job('signalbox').metrics_path, '/metrics');
    const envoyTargets = job('envoy').static_configs.map((c: { targets: string[]; labels: { proxy: string } }) => [c.labels.proxy, c.targets[0]]);
    assert.deepEqual(envoyTargets.sort(), demoProxies().map((p) => [proxyId(p), `127.0.0.1:${p.envoyAdminPort}`]).sort());
    assert.ok(cmd(services.prometheus!).includes(`--web.listen-address=0.0.0.0:${DEMO.prometheusPort}`));
    assert.ok(services.prometheus!.volumes!.includes('./examples/prometheus/prometheus.yml:/etc/prometheus/prometheus.yml:ro'));
  });

  test('Grafana is provisioned with the Prometheus datasource and dashboards that use documented series only', () => {
    const g = services.grafana!;
    assert.equal(g.environment!.GF_SERVER_HTTP_PORT, String(DEMO.grafanaPort));
    const ds = YAML.parse(read('examples/grafana/provisioning/datasources/prometheus.yaml')).datasources[0];
    assert.equal(ds.url, `http://127.0.0.1:${DEMO.prometheusPort}`);
    const provider = YAML.parse(read('examples/grafana/provisioning/dashboards/signalbox.yaml')).providers[0];
    const mount = g.volumes!.find((v) => v.startsWith('./examples/grafana/dashboards:'))!;
    assert.equal(mount.split(':')[1], provider.options.path);
    const documented = new Set([...read('docs/observability.md').matchAll(/^\| `(signalbox_[a-z_]+)` \|/gm)].map((m) => m[1]!));
    const dir = path.join(root, 'examples/grafana/dashboards');
    const files = readdirSync(dir).filter((f) => f.endsWith('.json'));
    assert.deepEqual(files.sort(), ['signalbox-control-plane.json', 'signalbox-mesh.json']);
    for (const f of files) {
      const d = JSON.parse(readFileSync(path.join(dir, f), 'utf8'));
      assert.ok(d.uid && d.title && Array.isArray(d.panels) && d.panels.length > 5, f);
      const ids = d.panels.map((p: { id: number }) => p.id);
      assert.equal(new Set(ids).size, ids.length, `${f}: panel ids are unique`);
      for (const p of d.panels) {
        for (const t of p.targets) {
          assert.equal(t.datasource.uid, ds.uid, `${f} "${p.title}" uses the provisioned datasource`);
          for (const m of t.expr.matchAll(/\b(signalbox_[a-z_]+?)(_bucket|_sum|_count)?\b/g)) {
            const name = m[1]!.startsWith('signalbox_process_') ? undefined : m[2] && !documented.has(m[1] + m[2]) ? m[1] : m[0];
            if (name) assert.ok(documented.has(name), `${f} "${p.title}" uses ${name}, which docs/observability.md does not list`);
          }
        }
      }
    }
  });

  test('the OpenTelemetry collector receives where Signalbox sends', () => {
    const col = YAML.parse(read('examples/otel-collector/config.yaml'));
    assert.equal(col.receivers.otlp.protocols.grpc.endpoint, `127.0.0.1:${DEMO.otlpGrpcPort}`);
    assert.equal(col.receivers.otlp.protocols.http.endpoint, `127.0.0.1:${DEMO.otlpHttpPort}`);
    assert.equal(services.signalbox!.environment!.OTEL_EXPORTER_OTLP_ENDPOINT, `http://127.0.0.1:${DEMO.otlpHttpPort}`);
    assert.ok(services['otel-collector']!.volumes!.includes('./examples/otel-collector/config.yaml:/etc/otelcol/config.yaml:ro'));
    assert.ok(statSync(path.join(root, 'examples/otel-collector/config.yaml')).size > 0);
  });
});

function checkBootstrap(p: DemoProxy, b: any): void {
  const id = proxyId(p);
  assert.equal(b.node.id, id);
  assert.equal(b.admin.address.socket_address.port_value, p.envoyAdminPort, `${id}: Envoy admin on the port Prometheus scrapes`);
  const xds = b.static_resources.clusters.find((c: { name: string }) => c.name === 'signalbox-xds');
  assert.deepEqual(xds.load_assignment.endpoints[0].lb_endpoints[0].endpoint.address.socket_address, { address: '127.0.0.1', port_value: DEMO.xdsPort });
  const meta = b.node.metadata;
  const token = b.dynamic_resources.ads_config.grpc_services[0].initial_metadata?.find((m: { key: string }) => m.key === 'x-signalbox-token');
  assert.ok(token?.value?.length > 20, `${id} presents a token`);
  if (p.kind === 'gateway') {
    assert.equal(meta['signalbox.gateway'], p.gateway);
  } else {
    assert.equal(meta['signalbox.service'], p.service);
    assert.equal(meta['signalbox.app_port'], String(p.appPort));
    assert.equal(meta['signalbox.inbound_port'], String(p.inboundPort));
    assert.equal(meta['signalbox.outbound_port'], String(p.outboundPort));
  }
}
