// docker-compose.yml cannot run on the CI machines (no container runtime), so this checks what
// can be checked without one: every file, port, image and command it references exists and agrees
// with `npm run demo` (scripts/demo-topology.ts, policies/), the Prometheus, Grafana and
// OpenTelemetry files it mounts agree with it and with the documented /metrics series, and the
// security defaults hold there too: xDS over TLS with a certificate naming what the Envoys dial,
// a token certificate per Envoy, an admin token for the admin API it binds beyond loopback, and
// Prometheus scraping with that token.
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { X509Certificate } from 'node:crypto';
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { createServer, request } from 'node:http';
import os from 'node:os';
import path from 'node:path';
import { after, describe, test } from 'node:test';
import YAML from 'yaml';
import { checkAdminBind } from '../../src/admin/server.js';
import { CertificateAuthority } from '../../src/ca/ca.js';
import { serverNames } from '../../src/ca/server-tls.js';
import { TokenVerifier } from '../../src/ca/tokens.js';
import { XDS_CA_FILE } from '../../src/cli/bootstrap.js';
import { DEFAULT_AUTHZ_PORT, resolveServeConfig } from '../../src/config/settings.js';
import { BUILTIN_DEFAULTS } from '../../src/model/model.js';
import { bootstrapArgs, DEMO, demoProxies, proxyId, tokenSubject, writeBootstrap, type DemoProxy } from '../../scripts/demo-topology.js';
import { repoRoot } from '../helpers/envoy.js';

const root = repoRoot();
const read = (f: string) => readFileSync(path.join(root, f), 'utf8');

interface ComposeService {
  image?: string;
  user?: string;
  command?: string | string[];
  environment?: Record<string, string>;
  volumes?: string[];
  secrets?: string[];
  ports?: string[];
  network_mode?: string;
  depends_on?: Record<string, { condition: string }> | string[];
  healthcheck?: { test: string[] };
}

const compose = YAML.parse(read('docker-compose.yml'), { merge: true }) as {
  services: Record<string, ComposeService>;
  volumes: Record<string, unknown>;
  secrets: Record<string, { file: string }>;
};
const services = compose.services;
const cmd = (s: ComposeService): string[] => (Array.isArray(s.command) ? s.command : (s.command ?? '').split(/\s+/).filter(Boolean));
/** The admin token: a compose secret, mounted (short syntax) at /run/secrets/<name>. */
const ADMIN_SECRET = 'signalbox-admin-token';
const ADMIN_TOKEN_PATH = `/run/secrets/${ADMIN_SECRET}`;
/** `HOST:CONTAINER` or `IP:HOST:CONTAINER`. */
const publishedPorts = () =>
  (services.consul!.ports ?? []).map((p) => {
    const parts = p.split(':');
    return { ip: parts.length === 3 ? parts[0]! : '0.0.0.0', host: Number(parts.at(-2)), container: Number(parts.at(-1)) };
  });

describe('docker-compose.yml', () => {
  const tmp: string[] = [];
  after(() => {
    for (const d of tmp) rmSync(d, { recursive: true, force: true });
  });

  test("has the issue's services, each image pinned to a version", () => {
    for (const name of ['consul', 'redis', 'signalbox', 'gateway', 'prometheus', 'grafana', 'otel-collector', 'dashboard'])
      assert.ok(services[name], `service ${name}`);
    // Global rate limits: serve counts in the compose Redis, a 7.0 as the tests' Debian package.
    assert.match(services.redis!.image!, /^redis:7\.0/);
    assert.equal((services.signalbox as { environment?: Record<string, string> }).environment?.REDIS_URL, 'redis://127.0.0.1:6379');
    for (const [name, s] of Object.entries(services)) {
      assert.ok(s.image, `${name} has an image`);
      assert.match(s.image!, /^[a-z0-9./-]+:v?\d+\.\d+(\.\d+)?[-a-z0-9.]*$/, `${name}: "${s.image}" is pinned to a version`);
      assert.doesNotMatch(s.image!, /:latest$/);
    }
    const envoyImage = services.gateway!.image!;
    const pinned = (JSON.parse(read('envoy-versions.json')) as { versions: { version: string; role: string }[] }).versions.find(
      (v) => v.role === 'pinned',
    )!.version;
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
      for (const sec of s.secrets ?? []) assert.ok(compose.secrets?.[sec], `${name} uses secret ${sec}, which is not declared`);
    }
    for (const [name, sec] of Object.entries(compose.secrets ?? {}))
      assert.ok(existsSync(path.join(root, sec.file)), `secret ${name}: ${sec.file} does not exist`);
  });

  test('every container shares one network namespace, and no two things listen on one port', () => {
    const hub = Object.entries(services).filter(([, s]) => !s.network_mode);
    assert.deepEqual(
      hub.map(([n]) => n),
      ['consul'],
    );
    for (const [name, s] of Object.entries(services)) if (name !== 'consul') assert.equal(s.network_mode, 'service:consul', name);
    const listening = [
      DEMO.xdsPort,
      DEMO.adminPort,
      DEMO.authzPort,
      DEMO.gateway.listenPort,
      DEMO.gateway.envoyAdminPort,
      ...DEMO.sidecars.flatMap((s) => [s.appPort, s.inboundPort, s.outboundPort, s.envoyAdminPort]),
      DEMO.consulPort,
      8300,
      8301,
      8302,
      8502,
      8600,
      DEMO.prometheusPort,
      DEMO.grafanaPort,
      DEMO.otlpGrpcPort,
      DEMO.otlpHttpPort,
      DEMO.dashboardPort,
    ];
    assert.equal(new Set(listening).size, listening.length, `a port is used twice: ${listening.join(', ')}`);
    const published = publishedPorts();
    for (const { host, container } of published) assert.equal(host, container);
    const pub = new Map(published.map((p) => [p.host, p.ip]));
    for (const p of [DEMO.gateway.listenPort, DEMO.adminPort, DEMO.prometheusPort, DEMO.grafanaPort, DEMO.consulPort, DEMO.dashboardPort])
      assert.ok(pub.has(p), `port ${p} is published`);
    // The admin API (placeholder token) and the dashboard (no token) reach the host's loopback only.
    assert.equal(pub.get(DEMO.adminPort), '127.0.0.1');
    assert.equal(pub.get(DEMO.dashboardPort), '127.0.0.1');
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
    // Like the demo: the ext_authz port opens (on 18002) only once a JWTPolicy exists.
    assert.equal(env.SIGNALBOX_AUTHZ_PORT, undefined);
    assert.equal(cfg.authzPort, undefined);
    assert.equal(DEFAULT_AUTHZ_PORT, DEMO.authzPort);
    // The demo runs serve with its defaults: the same ports.
    const defaults = resolveServeConfig({}, {});
    assert.equal(defaults.xdsPort, DEMO.xdsPort);
    assert.equal(defaults.adminPort, DEMO.adminPort);
    assert.match(read('scripts/demo.ts'), /resolveServeConfig\(\{ policies: path\.join\(root, 'policies'\) \}\)/);
    assert.equal(env.CONSUL_HTTP_ADDR, `127.0.0.1:${DEMO.consulPort}`);
    assert.match(services.consul!.command as string, new RegExp(`-http-port ${DEMO.consulPort}`));
    assert.match(sb.healthcheck!.test.join(' '), new RegExp(`127\\.0\\.0\\.1:${DEMO.adminPort}/readyz`));
  });

  test('the security defaults hold: xDS over TLS, every proxy authenticated, an admin token for an admin API beyond loopback', () => {
    const sb = services.signalbox!;
    const cfg = resolveServeConfig({}, sb.environment!);
    assert.ok(cfg.xdsTls, 'xDS over TLS (no SIGNALBOX_XDS_INSECURE)');
    assert.equal(cfg.xdsTls!.files, undefined, 'the certificate is issued by the mesh CA, whose CA serve writes for the bootstraps');
    assert.equal(cfg.requireToken, 'all');
    // A non-loopback admin address needs a token file: serve would refuse to start without one.
    assert.equal(cfg.adminAddress, '0.0.0.0');
    assert.throws(() => checkAdminBind(cfg.adminAddress, undefined), /not a loopback address/);
    assert.equal(cfg.adminTokenFile, ADMIN_TOKEN_PATH);
    assert.ok(sb.secrets?.includes(ADMIN_SECRET), 'the token file is mounted into signalbox');
    const token = readFileSync(path.join(root, compose.secrets[ADMIN_SECRET]!.file), 'utf8').trim();
    assert.ok(token.length >= 32, 'the token file holds a token');
    assert.match(token, /replace/i, 'the committed token says it is a placeholder');
    assert.doesNotThrow(() => checkAdminBind(cfg.adminAddress, token));
    assert.match(read('docker-compose.yml'), /REPLACE IT/);
    // The xDS certificate names the address every bootstrap dials (the Envoys share one network namespace).
    const names = serverNames(cfg.xdsAddress, cfg.xdsTls!.sans);
    for (const p of demoProxies()) {
      const args = bootstrapArgs(p, { credentials: `/bootstrap/${proxyId(p)}`, xdsCa: `/bootstrap/${XDS_CA_FILE}` });
      const dialed = args[args.indexOf('--xds-address') + 1]!.replace(/:\d+$/, '');
      assert.ok(
        [...names.ips, ...names.dns].includes(dialed),
        `${proxyId(p)} dials ${dialed}, which the xDS certificate does not name (${[...names.ips, ...names.dns].join(', ')})`,
      );
    }
    // The bootstrap service hands the Envoys' key files to the user they run as.
    const owner = cmd(services.bootstrap!)[cmd(services.bootstrap!).indexOf('--owner') + 1];
    for (const [name, s] of Object.entries(services).filter(([, s]) => cmd(s)[0] === 'envoy'))
      assert.equal(s.user, owner, `${name} runs as ${owner}, the owner of its credentials`);
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
    assert.deepEqual(apps.map(([n, s]) => [n, cmd(s).slice(2)]).sort(), DEMO.sidecars.map((sc) => [sc.instance, [sc.instance, String(sc.appPort)]]).sort());
    for (const [n, s] of apps) assert.deepEqual(s.volumes, ['.:/app:ro'], `${n} mounts no keys (neither Signalbox's data nor the proxies' credentials)`);
    // npm run demo starts the same apps.
    assert.match(read('scripts/demo.ts'), /DEMO\.sidecars\.map\(\(s\) => startUpstream\(s\.instance, s\.appPort\)\)/);
    assert.match(read('scripts/demo.ts'), /for \(const p of demoProxies\(\)\)/);
    assert.match(JSON.parse(read('package.json')).scripts.demo, /dist\/scripts\/demo\.js/);
    assert.deepEqual(cmd(services.bootstrap!), ['node', 'dist/scripts/demo-bootstrap.js', '/bootstrap', '/data', '--owner', '101:101']);
    assert.ok(services.bootstrap!.volumes!.includes('signalbox-data:/data') && services.bootstrap!.volumes!.includes('bootstrap:/bootstrap'));
    assert.deepEqual(services.bootstrap!.depends_on, { signalbox: { condition: 'service_healthy' } }, 'serve has written /data/xds-ca.pem');
    assert.equal(services.signalbox!.environment!.SIGNALBOX_DATA_DIR, '/data', 'tokens are signed with the key Signalbox verifies');
  });

  test('one Envoy per demo proxy, each started on the bootstrap `signalbox bootstrap` writes for it', async () => {
    const envoys = Object.entries(services).filter(([, s]) => cmd(s)[0] === 'envoy');
    const files = envoys.map(([, s]) => cmd(s)[cmd(s).indexOf('-c') + 1]).sort();
    assert.deepEqual(
      files,
      demoProxies()
        .map((p) => `/bootstrap/${proxyId(p)}.yaml`)
        .sort(),
    );
    for (const [name, s] of envoys) {
      assert.deepEqual(
        s.volumes,
        ['bootstrap:/bootstrap:ro'],
        `${name} mounts the bootstraps and credentials, and not Signalbox's data (its CA and token keys)`,
      );
      assert.deepEqual(s.depends_on, { bootstrap: { condition: 'service_completed_successfully' } }, name);
    }
    // Run the same commands the `bootstrap` service runs, after what serve writes to its data
    // directory (the mesh CA, xds-ca.pem), and read what they write.
    const dir = mkdtempSync(path.join(os.tmpdir(), 'sb-compose-'));
    tmp.push(dir);
    const data = path.join(dir, 'data');
    const ca = await CertificateAuthority.open({ dataDir: data, trustDomain: BUILTIN_DEFAULTS.trustDomain });
    writeFileSync(path.join(data, XDS_CA_FILE), ca.trustBundlePem);
    const out = path.join(dir, 'bootstrap');
    const verifier = await TokenVerifier.open(data);
    try {
      for (const p of demoProxies()) {
        const b = YAML.parse(await writeBootstrap(p, out, data, { owner: { uid: process.getuid!(), gid: process.getgid!() } }));
        checkBootstrap(p, b, out);
        // The token certificate is one serve accepts, for this proxy's identity.
        const check = await verifier.verifyCertificate(new X509Certificate(readFileSync(path.join(out, proxyId(p), 'token.crt'))).raw);
        assert.ok(check.ok, `${proxyId(p)}: ${check.ok ? '' : check.reason}`);
        assert.equal(check.ok && check.claims.subject, tokenSubject(p));
        for (const f of [path.join(out, proxyId(p), 'token.key'), path.join(out, `${proxyId(p)}.yaml`)]) assert.equal(statSync(f).mode & 0o777, 0o600, f);
      }
    } finally {
      verifier.close();
    }
    assert.equal(readFileSync(path.join(out, XDS_CA_FILE), 'utf8'), ca.trustBundlePem, 'the CA the Envoys verify the xDS server with');
  });

  test('the policies name the demo ports: gateway listener, apps and their sidecars', () => {
    const gw = YAML.parse(read('policies/gateway.yaml'));
    assert.equal(gw.metadata.name, DEMO.gateway.gateway);
    assert.deepEqual(
      gw.spec.listeners.map((l: { port: number }) => l.port),
      [DEMO.gateway.listenPort],
    );
    const svcs = YAML.parseAllDocuments(read('policies/services.yaml')).map((d) => d.toJSON());
    const endpoints = svcs.flatMap((s) =>
      s.spec.endpoints.map((e: { address: string; port: number; sidecarPort: number }) => [s.metadata.name, e.address, e.port, e.sidecarPort]),
    );
    assert.deepEqual(endpoints.sort(), DEMO.sidecars.map((s) => [s.service, '127.0.0.1', s.appPort, s.inboundPort]).sort());
  });

  test('Prometheus scrapes Signalbox and every demo Envoy at their ports', () => {
    const prom = YAML.parse(read('examples/prometheus/prometheus.yml'));
    const job = (n: string) => prom.scrape_configs.find((j: { job_name: string }) => j.job_name === n);
    assert.deepEqual(job('signalbox').static_configs[0].targets, [`127.0.0.1:${DEMO.adminPort}`]);
    assert.equal(job('signalbox').metrics_path, '/metrics');
    // With the admin token: Bearer (Prometheus' default type), read from the mounted secret.
    assert.deepEqual(job('signalbox').authorization, { credentials_file: ADMIN_TOKEN_PATH });
    assert.ok(services.prometheus!.secrets?.includes(ADMIN_SECRET));
    assert.equal(services.signalbox!.environment!.SIGNALBOX_ADMIN_TOKEN_FILE, ADMIN_TOKEN_PATH);
    const envoyTargets = job('envoy').static_configs.map((c: { targets: string[]; labels: { proxy: string } }) => [c.labels.proxy, c.targets[0]]);
    assert.deepEqual(
      envoyTargets.sort(),
      demoProxies()
        .map((p) => [proxyId(p), `127.0.0.1:${p.envoyAdminPort}`])
        .sort(),
    );
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

  test('the dashboard service forwards reads to the admin API with the token, for loopback Host names only', async () => {
    const d = services.dashboard!;
    assert.deepEqual(cmd(d), ['node', '/dashboard-proxy.mjs']);
    assert.ok(d.volumes!.includes('./examples/compose/dashboard-proxy.mjs:/dashboard-proxy.mjs:ro'));
    assert.ok(d.secrets?.includes(ADMIN_SECRET));
    assert.equal(d.environment!.ADMIN_TOKEN_FILE, ADMIN_TOKEN_PATH);
    assert.equal(d.environment!.ADMIN_URL, `http://127.0.0.1:${DEMO.adminPort}`);
    assert.equal(d.environment!.LISTEN_PORT, String(DEMO.dashboardPort));
    // Run it against a stand-in admin API.
    const dir = mkdtempSync(path.join(os.tmpdir(), 'sb-dashboard-'));
    tmp.push(dir);
    writeFileSync(path.join(dir, 'token'), 'the-admin-token\n');
    const seen: { auth?: string; host?: string; url?: string }[] = [];
    const admin = createServer((req, res) => {
      seen.push({ auth: req.headers.authorization, host: req.headers.host, url: req.url });
      res.writeHead(200, { 'content-type': 'application/json' }).end('{"ok":true}');
    });
    await new Promise<void>((r) => admin.listen(0, '127.0.0.1', r));
    const child = spawn(process.execPath, [path.join(root, 'examples/compose/dashboard-proxy.mjs')], {
      env: {
        ...process.env,
        LISTEN_PORT: '0',
        LISTEN_ADDRESS: '127.0.0.1',
        ADMIN_URL: `http://127.0.0.1:${(admin.address() as { port: number }).port}`,
        ADMIN_TOKEN_FILE: path.join(dir, 'token'),
      },
      stdio: ['ignore', 'ignore', 'pipe'],
    });
    try {
      const port = await new Promise<number>((resolve, reject) => {
        let err = '';
        child.stderr!.on('data', (b: Buffer) => {
          err += b.toString();
          const m = /http:\/\/127\.0\.0\.1:(\d+)\//.exec(err);
          if (m) resolve(Number(m[1]));
        });
        child.once('exit', (c) => reject(new Error(`dashboard-proxy exited ${c}: ${err}`)));
      });
      const get = (p: string, host: string, method = 'GET') =>
        new Promise<{ status: number; body: string }>((resolve, reject) => {
          const r = request({ host: '127.0.0.1', port, path: p, method, headers: { host } }, (res) => {
            let body = '';
            res.on('data', (c: Buffer) => (body += c.toString()));
            res.on('end', () => resolve({ status: res.statusCode!, body }));
          });
          r.on('error', reject);
          r.end();
        });
      const ok = await get('/api/status?x=1', `127.0.0.1:${port}`);
      assert.equal(ok.status, 200);
      assert.deepEqual(seen.at(-1), {
        auth: 'Bearer the-admin-token',
        host: `127.0.0.1:${(admin.address() as { port: number }).port}`,
        url: '/api/status?x=1',
      });
      assert.equal((await get('/', `localhost:${port}`)).status, 200);
      const n = seen.length;
      assert.equal((await get('/api/status', `evil.example:${port}`)).status, 421, 'a foreign Host name (DNS rebinding) is refused');
      assert.equal((await get('/api/status', `127.0.0.1:${port}`, 'POST')).status, 405, 'only reads pass');
      assert.equal(seen.length, n, 'neither reached the admin API');
    } finally {
      child.kill('SIGTERM');
      await new Promise((r) => admin.close(r));
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

function checkBootstrap(p: DemoProxy, b: any, dir: string): void {
  const id = proxyId(p);
  assert.equal(b.node.id, id);
  assert.equal(b.admin.address.socket_address.port_value, p.envoyAdminPort, `${id}: Envoy admin on the port Prometheus scrapes`);
  const xds = b.static_resources.clusters.find((c: { name: string }) => c.name === 'signalbox-xds');
  assert.deepEqual(xds.load_assignment.endpoints[0].lb_endpoints[0].endpoint.address.socket_address, { address: '127.0.0.1', port_value: DEMO.xdsPort });
  const meta = b.node.metadata;
  // TLS to Signalbox, verifying the name dialled against the CA serve wrote, presenting the
  // token certificate from files in the same (in compose: the Envoys' read-only /bootstrap) folder.
  assert.equal(xds.transport_socket.name, 'envoy.transport_sockets.tls', `${id} reaches Signalbox over TLS`);
  const tls = xds.transport_socket.typed_config.common_tls_context;
  assert.deepEqual(tls.tls_certificates, [
    { certificate_chain: { filename: path.join(dir, id, 'token.crt') }, private_key: { filename: path.join(dir, id, 'token.key') } },
  ]);
  assert.equal(tls.validation_context.trusted_ca.filename, path.join(dir, XDS_CA_FILE));
  assert.deepEqual(tls.validation_context.match_typed_subject_alt_names, [{ san_type: 'IP_ADDRESS', matcher: { exact: '127.0.0.1' } }]);
  assert.equal(b.dynamic_resources.ads_config.grpc_services[0].initial_metadata, undefined, `${id}: no token inline in the bootstrap`);
  assert.doesNotMatch(JSON.stringify(b), /x-signalbox-token|BEGIN .*PRIVATE KEY/);
  if (p.kind === 'gateway') {
    assert.equal(meta['signalbox.gateway'], p.gateway);
  } else {
    assert.equal(meta['signalbox.service'], p.service);
    assert.equal(meta['signalbox.app_port'], String(p.appPort));
    assert.equal(meta['signalbox.inbound_port'], String(p.inboundPort));
    assert.equal(meta['signalbox.outbound_port'], String(p.outboundPort));
  }
}
