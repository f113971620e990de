// `signalbox bootstrap` (the Envoy bootstrap a gateway proxy starts with) and the settings of
// `signalbox serve` (flag > SIGNALBOX_* environment > default).
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { describe, test } from 'node:test';
import YAML from 'yaml';
import { mkdtempSync, statSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { bootstrapConfig, bootstrapYaml, defaultNodeId, proxyCredentialsDir, splitHostPort, XDS_CA_FILE } from '../../src/cli/bootstrap.js';
import { resolveServeConfig, SERVE_SETTINGS } from '../../src/config/settings.js';
import { ErrorCode, SignalboxError } from '../../src/errors.js';
import { repoRoot } from '../helpers/envoy.js';

type Json = Record<string, any>;

function parsed(opts: Parameters<typeof bootstrapYaml>[0]): Json {
  return YAML.parse(bootstrapYaml(opts)) as Json;
}

describe('bootstrap', () => {
  test('node identity: id, cluster and signalbox metadata', () => {
    const b = parsed({ gateway: 'public', xdsAddress: '127.0.0.1:18000', id: 'public-1' });
    assert.deepEqual(b.node, { id: 'public-1', cluster: 'public', metadata: { 'signalbox.role': 'gateway', 'signalbox.gateway': 'public' } });
  });

  test('without --id the node id is the gateway or service name, with --instance NAME-INSTANCE: the same on every host', () => {
    const b = parsed({ gateway: 'edge', xdsAddress: '127.0.0.1:18000' });
    assert.equal(b.node.id, 'edge');
    assert.equal(b.node.metadata['signalbox.instance'], undefined);
    const replica = parsed({ gateway: 'edge', instance: 'host-a', xdsAddress: '127.0.0.1:18000' });
    assert.equal(replica.node.id, 'edge-host-a');
    assert.equal(replica.node.metadata['signalbox.instance'], 'host-a');
    const sidecar = (instance?: string) => parsed({ sidecar: { service: 'orders', instance, appPort: 1, inboundPort: 2 }, xdsAddress: '127.0.0.1:18000' }).node;
    assert.deepEqual([sidecar().id, sidecar().metadata['signalbox.instance']], ['orders', 'orders']);
    assert.equal(sidecar('7f9c').id, 'orders-7f9c');
    assert.equal(sidecar('orders-v1').id, 'orders-v1', 'an instance that already starts with the name is the id as it is');
    assert.equal(sidecar('orders').id, 'orders');
    assert.equal(
      parsed({ sidecar: { service: 'orders', instance: 'x', appPort: 1, inboundPort: 2 }, id: 'mine', xdsAddress: '127.0.0.1:18000' }).node.id,
      'mine',
      '--id overrides',
    );
    assert.equal(defaultNodeId('edge', 'edge-2'), 'edge-2');
    assert.equal(defaultNodeId('edge', 'edged'), 'edge-edged', 'a prefix only counts up to the dash');
  });

  test('ADS over SotW (GRPC) by default, DELTA_GRPC with --delta; CDS and LDS come from ADS', () => {
    const sotw = parsed({ gateway: 'public', xdsAddress: '127.0.0.1:18000' });
    const delta = parsed({ gateway: 'public', xdsAddress: '127.0.0.1:18000', delta: true });
    assert.equal(sotw.dynamic_resources.ads_config.api_type, 'GRPC');
    assert.equal(delta.dynamic_resources.ads_config.api_type, 'DELTA_GRPC');
    for (const b of [sotw, delta]) {
      const ads = b.dynamic_resources.ads_config;
      assert.equal(ads.transport_api_version, 'V3');
      assert.deepEqual(
        ads.grpc_services.map((g: Json) => g.envoy_grpc.cluster_name),
        ['signalbox-xds'],
      );
      assert.deepEqual(b.dynamic_resources.cds_config, { ads: {}, resource_api_version: 'V3' });
      assert.deepEqual(b.dynamic_resources.lds_config, { ads: {}, resource_api_version: 'V3' });
    }
  });

  test('the admin interface listens on 127.0.0.1 and the given port (9901 by default)', () => {
    assert.deepEqual(parsed({ gateway: 'g', xdsAddress: '127.0.0.1:1', adminPort: 19001 }).admin, {
      address: { socket_address: { address: '127.0.0.1', port_value: 19001 } },
    });
    assert.deepEqual(parsed({ gateway: 'g', xdsAddress: '127.0.0.1:1' }).admin.address.socket_address, { address: '127.0.0.1', port_value: 9901 });
  });

  test('the xds cluster is STATIC for an IP address and STRICT_DNS for a host name; HTTP/2 to the control plane', () => {
    const cluster = (xdsAddress: string) => {
      const clusters = parsed({ gateway: 'g', xdsAddress }).static_resources.clusters as Json[];
      assert.equal(clusters.length, 1);
      assert.equal(clusters[0]!.name, 'signalbox-xds');
      return clusters[0]!;
    };
    const ip = cluster('127.0.0.1:18000');
    assert.equal(ip.type, 'STATIC');
    assert.deepEqual(ip.load_assignment.endpoints[0].lb_endpoints[0].endpoint.address.socket_address, { address: '127.0.0.1', port_value: 18000 });
    assert.ok(ip.typed_extension_protocol_options['envoy.extensions.upstreams.http.v3.HttpProtocolOptions'].explicit_http_config.http2_protocol_options);

    const dns = cluster('signalbox.internal:18010');
    assert.equal(dns.type, 'STRICT_DNS');
    assert.deepEqual(dns.load_assignment.endpoints[0].lb_endpoints[0].endpoint.address.socket_address, { address: 'signalbox.internal', port_value: 18010 });

    const v6 = cluster('[::1]:18000');
    assert.equal(v6.type, 'STATIC');
    assert.equal(v6.load_assignment.endpoints[0].lb_endpoints[0].endpoint.address.socket_address.address, '::1');
  });

  test('several replicas: one endpoint per address, TCP health checks, no panic routing, every name accepted in the certificate', () => {
    const tls = { caFile: '/ca.pem', certFile: '/t.crt', keyFile: '/t.key' };
    const one = parsed({ gateway: 'g', xdsAddress: '127.0.0.1:18000', tls }).static_resources.clusters[0] as Json;
    assert.equal(one.health_checks, undefined, 'one IP address: as before, no health check');
    const three = parsed({ gateway: 'g', xdsAddress: '127.0.0.1:18000, 127.0.0.2:18001,[::1]:18002', tls }).static_resources.clusters[0] as Json;
    assert.equal(three.type, 'STATIC');
    assert.deepEqual(
      three.load_assignment.endpoints[0].lb_endpoints.map((e: Json) => e.endpoint.address.socket_address),
      [
        { address: '127.0.0.1', port_value: 18000 },
        { address: '127.0.0.2', port_value: 18001 },
        { address: '::1', port_value: 18002 },
      ],
    );
    assert.deepEqual(three.health_checks[0].tcp_health_check, {});
    assert.equal(three.health_checks[0].unhealthy_threshold, 1);
    assert.equal(three.common_lb_config.healthy_panic_threshold.value, 0);
    const ctx = three.transport_socket.typed_config;
    assert.equal(ctx.sni, undefined, 'no SNI for IP addresses');
    assert.deepEqual(
      ctx.common_tls_context.validation_context.match_typed_subject_alt_names.map((m: Json) => `${m.san_type}=${m.matcher.exact}`),
      ['IP_ADDRESS=127.0.0.1', 'IP_ADDRESS=127.0.0.2', 'IP_ADDRESS=::1'],
    );
    // One DNS name (which may resolve to several replicas): STRICT_DNS, health-checked, SNI the name.
    const dns = parsed({ gateway: 'g', xdsAddress: 'signalbox.internal:18000', tls }).static_resources.clusters[0] as Json;
    assert.equal(dns.type, 'STRICT_DNS');
    assert.ok(dns.health_checks[0].tcp_health_check);
    assert.equal(dns.transport_socket.typed_config.sni, 'signalbox.internal');
    assert.throws(() => bootstrapConfig({ gateway: 'g', xdsAddress: '127.0.0.1:1,127.0.0.1:1' }), /names 127.0.0.1:1 twice/);
    assert.throws(() => bootstrapConfig({ gateway: 'g', xdsAddress: '127.0.0.1:1,nope' }), /HOST:PORT/);
    assert.throws(() => bootstrapConfig({ gateway: 'g', xdsAddress: ' , ' }), /HOST:PORT/);
  });

  test('bootstrapYaml is the YAML of bootstrapConfig', () => {
    const o = { gateway: 'g', xdsAddress: '10.0.0.1:18000', delta: true, adminPort: 1234, id: 'x' };
    assert.deepEqual(YAML.parse(bootstrapYaml(o)), bootstrapConfig(o));
  });

  test('a bad --xds-address is refused', () => {
    assert.throws(() => splitHostPort('127.0.0.1'), /--xds-address must be HOST:PORT, got "127.0.0.1"/);
    assert.throws(() => splitHostPort('127.0.0.1:99999'), /port out of range: 99999/);
    assert.throws(() => splitHostPort('127.0.0.1:0'), /port out of range: 0/);
    assert.throws(() => bootstrapConfig({ gateway: 'g', xdsAddress: 'nope' }), /HOST:PORT/);
    assert.deepEqual(splitHostPort('[fd00::1]:443'), { host: 'fd00::1', port: 443 });
  });

  describe('CLI', () => {
    const cli = (...args: string[]) =>
      spawnSync(process.execPath, ['bin/signalbox.js', 'bootstrap', ...args], { cwd: repoRoot(), encoding: 'utf8', timeout: 30_000 });

    /** A data directory as `signalbox serve` leaves it: the CA proxies verify the xDS server with. */
    const servedDataDir = () => {
      const dir = mkdtempSync(path.join(os.tmpdir(), 'sb-boot-'));
      writeFileSync(path.join(dir, XDS_CA_FILE), '-----BEGIN CERTIFICATE-----\n-----END CERTIFICATE-----\n');
      return dir;
    };

    test('prints the bootstrap for the given flags: TLS to the server, a token of its own in files only its user reads', () => {
      const dataDir = servedDataDir();
      const r = cli('--gateway', 'public', '--xds-address', '127.0.0.1:18123', '--delta', '--admin-port', '19901', '--id', 'gw-1', '--data-dir', dataDir);
      assert.equal(r.status, 0, r.stderr);
      const b = YAML.parse(r.stdout) as Json;
      const tls = b.static_resources.clusters[0].transport_socket.typed_config.common_tls_context;
      const creds = path.join(dataDir, 'proxies', 'gateway-public');
      assert.deepEqual(tls.tls_certificates, [
        { certificate_chain: { filename: path.join(creds, 'token.crt') }, private_key: { filename: path.join(creds, 'token.key') } },
      ]);
      assert.equal(tls.validation_context.trusted_ca.filename, path.join(dataDir, XDS_CA_FILE));
      assert.deepEqual(tls.validation_context.match_typed_subject_alt_names, [{ san_type: 'IP_ADDRESS', matcher: { exact: '127.0.0.1' } }]);
      assert.equal(statSync(path.join(creds, 'token.key')).mode & 0o777, 0o600);
      assert.ok(!/BEGIN|x-signalbox-token/.test(r.stdout), 'no key, certificate or token inline');
      assert.match(r.stderr, /token [0-9a-f-]{36} for gateway\/public, valid until/);
      assert.match(r.stderr, /^signalbox bootstrap: node id gw-1; /m);
      assert.equal(b.node.id, 'gw-1');
      assert.equal(b.node.metadata['signalbox.gateway'], 'public');
      assert.equal(b.dynamic_resources.ads_config.api_type, 'DELTA_GRPC');
      assert.equal(b.admin.address.socket_address.port_value, 19901);
      assert.equal(b.static_resources.clusters[0].load_assignment.endpoints[0].lb_endpoints[0].endpoint.address.socket_address.port_value, 18123);
    });

    test('without the server CA (serve never ran with that data directory) it exits 2 naming --xds-ca', () => {
      const r = cli('--gateway', 'public', '--data-dir', mkdtempSync(path.join(os.tmpdir(), 'sb-boot-')));
      assert.equal(r.status, 2);
      assert.match(r.stderr, /the CA of the xDS server \(--xds-ca.*is missing/);
      assert.equal(r.stdout, '');
    });

    test('--out writes the bootstrap 0600; --xds-insecure puts a token inline and says so', () => {
      const dataDir = servedDataDir();
      const out = path.join(dataDir, 'envoy.yaml');
      assert.equal(cli('--gateway', 'public', '--data-dir', dataDir, '--out', out).status, 0);
      assert.equal(statSync(out).mode & 0o777, 0o600);
      const plain = cli('--gateway', 'public', '--data-dir', dataDir, '--xds-insecure');
      assert.equal(plain.status, 0, plain.stderr);
      assert.match(plain.stderr, /plain text/);
      const b = YAML.parse(plain.stdout) as Json;
      assert.equal(b.static_resources.clusters[0].transport_socket, undefined);
      assert.equal(b.dynamic_resources.ads_config.grpc_services[0].initial_metadata[0].key, 'x-signalbox-token');
    });

    test('a missing --gateway or a bad --admin-port exits 2 with a message', () => {
      const noGateway = cli('--xds-address', '127.0.0.1:18000');
      assert.equal(noGateway.status, 2);
      assert.match(noGateway.stderr, /^signalbox bootstrap: .*--gateway NAME/);
      assert.equal(noGateway.stdout, '');
      const badPort = cli('--gateway', 'g', '--xds-address', '127.0.0.1:18000', '--admin-port', '70000');
      assert.equal(badPort.status, 2);
      assert.match(badPort.stderr, /--admin-port must be a port/);
      assert.equal(badPort.stdout, '');
      const badNew = cli('--gateway', 'g', '--envoy-admin-port', '99999');
      assert.equal(badNew.status, 2);
      assert.match(badNew.stderr, /--envoy-admin-port must be a port/);
    });

    test('the node id it chose is printed on stderr, stdout stays the bootstrap; --instance names replicas and their token folder', () => {
      const dataDir = servedDataDir();
      const r = cli('--gateway', 'public', '--data-dir', dataDir, '--envoy-admin-port', '19902');
      assert.equal(r.status, 0, r.stderr);
      assert.match(r.stderr, /^signalbox bootstrap: node id public \(the gateway name; --id overrides it\); the admin API has it at \/api\/proxies\/public$/m);
      const b = YAML.parse(r.stdout) as Json;
      assert.equal(b.node.id, 'public');
      assert.equal(b.admin.address.socket_address.port_value, 19902);
      const again = YAML.parse(cli('--gateway', 'public', '--data-dir', dataDir).stdout) as Json;
      assert.equal(again.node.id, 'public', 'the same id on every run');
      const replica = cli('--gateway', 'public', '--instance', 'host-b', '--data-dir', dataDir);
      assert.equal(replica.status, 0, replica.stderr);
      assert.match(replica.stderr, /node id public-host-b \(the gateway name and --instance; --id overrides it\)/);
      const rb = YAML.parse(replica.stdout) as Json;
      assert.equal(rb.node.id, 'public-host-b');
      const creds = proxyCredentialsDir(dataDir, { gateway: 'public', instance: 'host-b' });
      assert.equal(creds, path.join(dataDir, 'proxies', 'gateway-public-host-b'));
      assert.equal(
        rb.static_resources.clusters[0].transport_socket.typed_config.common_tls_context.tls_certificates[0].certificate_chain.filename,
        path.join(creds, 'token.crt'),
      );
      const sidecar = cli('--service', 'orders', '--app-port', '9001', '--inbound-port', '21001', '--data-dir', dataDir);
      assert.equal(sidecar.status, 0, sidecar.stderr);
      assert.equal((YAML.parse(sidecar.stdout) as Json).node.id, 'orders');
      assert.match(sidecar.stderr, /node id orders \(the service name; --id overrides it\)/);
      const spaced = cli('--gateway', 'public', '--instance', 'a b', '--data-dir', dataDir);
      assert.equal(spaced.status, 2);
      assert.match(spaced.stderr, /--instance must be 1 to 256 printable characters without spaces/);
    });
  });
});

describe('resolveServeConfig', () => {
  test('defaults when neither a flag nor the environment says anything', () => {
    const cfg = resolveServeConfig({}, {}) as unknown as Record<string, unknown>;
    const want: Record<string, unknown> = {
      policies: 'policies',
      xdsAddress: '0.0.0.0',
      xdsPort: 18000,
      adminAddress: '127.0.0.1',
      adminPort: 18001,
      dataDir: '.data',
      logLevel: 'info',
      watchDebounceMs: 100,
    };
    for (const [k, v] of Object.entries(want)) assert.deepEqual(cfg[k], v, k);
  });

  test('SIGNALBOX_* environment variables override the defaults', () => {
    const cfg = resolveServeConfig(
      {},
      {
        SIGNALBOX_POLICIES: '/etc/sb',
        SIGNALBOX_XDS_PORT: '19000',
        SIGNALBOX_ADMIN_ADDRESS: '::1',
        SIGNALBOX_LOG_LEVEL: 'debug',
        SIGNALBOX_WATCH_DEBOUNCE_MS: '250',
      },
    );
    assert.equal(cfg.policies, '/etc/sb');
    assert.equal(cfg.xdsPort, 19000);
    assert.equal(cfg.adminAddress, '::1');
    assert.equal(cfg.logLevel, 'debug');
    assert.equal(cfg.watchDebounceMs, 250);
    assert.equal(cfg.adminPort, 18001, 'untouched settings keep their default');
  });

  test('a flag beats its environment twin', () => {
    const cfg = resolveServeConfig(
      { 'xds-port': '19500', policies: 'mine', 'admin-port': '0' },
      { SIGNALBOX_XDS_PORT: '19000', SIGNALBOX_POLICIES: 'env', SIGNALBOX_ADMIN_PORT: '18555' },
    );
    assert.equal(cfg.xdsPort, 19500);
    assert.equal(cfg.policies, 'mine');
    assert.equal(cfg.adminPort, 0, 'port 0 (pick a free port) is allowed');
  });

  test('every setting has a distinct flag and a distinct environment twin', () => {
    const settings = Object.values(SERVE_SETTINGS);
    assert.ok(settings.every((s) => /^[a-z][a-z0-9-]*$/.test(s.flag) && /^[A-Z][A-Z0-9_]*$/.test(s.env)));
    assert.equal(new Set(settings.map((s) => s.flag)).size, settings.length);
    assert.equal(new Set(settings.map((s) => s.env)).size, settings.length);
  });

  test('bad ports are rejected with SB_BAD_FLAG naming the flag and the value', () => {
    for (const bad of ['70000', '65536', '-1', '1.5', 'abc', '', '0x50', '1e3', ' 80']) {
      for (const [flags, env] of [
        [{ 'xds-port': bad }, {}],
        [{}, { SIGNALBOX_XDS_PORT: bad }],
      ] as const) {
        assert.throws(
          () => resolveServeConfig(flags, env),
          (e: unknown) =>
            e instanceof SignalboxError && e.code === ErrorCode.BAD_FLAG && e.message === `--xds-port must be a port from 0 to 65535, got "${bad}"`,
          `xds port ${JSON.stringify(bad)} from ${Object.keys(flags).length ? 'a flag' : 'the environment'}`,
        );
      }
    }
    assert.throws(() => resolveServeConfig({ 'admin-port': '99999' }, {}), /--admin-port must be a port from 0 to 65535, got "99999"/);
    assert.equal(resolveServeConfig({ 'xds-port': '65535' }, {}).xdsPort, 65535);
  });

  test('a bad log level or debounce is rejected', () => {
    assert.throws(
      () => resolveServeConfig({ 'log-level': 'loud' }, {}),
      (e: unknown) => e instanceof SignalboxError && e.code === ErrorCode.BAD_FLAG && /--log-level/.test(e.message),
    );
    assert.throws(() => resolveServeConfig({}, { SIGNALBOX_WATCH_DEBOUNCE_MS: '-5' }), /--watch-debounce-ms/);
    assert.throws(() => resolveServeConfig({ 'watch-debounce-ms': 'soon' }, {}), /--watch-debounce-ms/);
  });

  test('the real process environment is the default source', () => {
    const saved = process.env.SIGNALBOX_ADMIN_PORT;
    process.env.SIGNALBOX_ADMIN_PORT = '18777';
    try {
      assert.equal(resolveServeConfig({}).adminPort, 18777);
    } finally {
      if (saved === undefined) delete process.env.SIGNALBOX_ADMIN_PORT;
      else process.env.SIGNALBOX_ADMIN_PORT = saved;
    }
  });
});
