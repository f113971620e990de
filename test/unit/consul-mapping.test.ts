// Consul answers -> Signalbox instances: health, labels, locality, sidecars, bad registrations.
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { consulConnectionFromEnv, parseConsulAddress } from '../../src/sources/consul/config.js';
import { healthOf, labelsOf, mapConnectEntries, mapHealthEntries, selectInstances } from '../../src/sources/consul/mapping.js';
import { entry } from './consul-fake.js';

describe('consul health mapping', () => {
  const c = (CheckID: string, Status: string) => ({ CheckID, Status });
  test('passing -> HEALTHY, warning -> DEGRADED (or HEALTHY when asked), critical -> UNHEALTHY', () => {
    assert.equal(healthOf([c('serfHealth', 'passing'), c('service:a', 'passing')]), 'HEALTHY');
    assert.equal(healthOf([]), 'HEALTHY');
    assert.equal(healthOf([c('serfHealth', 'passing'), c('service:a', 'warning')]), 'DEGRADED');
    assert.equal(healthOf([c('service:a', 'warning')], { warningAs: 'HEALTHY' }), 'HEALTHY');
    assert.equal(healthOf([c('service:a', 'warning'), c('serfHealth', 'critical')]), 'UNHEALTHY');
    assert.equal(healthOf([c('service:a', 'bogus-status')]), 'UNHEALTHY', 'an unknown status is not passing');
  });
  test('node or service maintenance -> DRAINING, even though Consul marks the check critical', () => {
    assert.equal(healthOf([c('serfHealth', 'passing'), c('_node_maintenance', 'critical')]), 'DRAINING');
    assert.equal(healthOf([c('_service_maintenance:web-1', 'critical'), c('service:a', 'critical')]), 'DRAINING');
  });
  test('tags and Meta become labels; Meta wins over a tag of the same key', () => {
    assert.deepEqual(labelsOf(['prod', 'version=v1', 'zone=a'], { version: 'v2', team: 'shop' }), { prod: 'true', version: 'v2', zone: 'a', team: 'shop' });
  });
});

describe('consul instances', () => {
  test('maps id, address (service first, node as fallback), port, labels, health and locality', () => {
    const { instances, skipped } = mapHealthEntries([
      entry({ id: 'web-1', port: 9001, tags: ['prod'], meta: { version: 'v1', zone: 'eu-1a' }, nodeMeta: { region: 'eu' } }),
      entry({ id: 'web-2', node: 'node-2', address: '', nodeAddress: '10.0.0.2', port: 9002, checks: [{ status: 'critical' }] }),
    ]);
    assert.deepEqual(skipped, []);
    assert.equal(instances.length, 2);
    const [a, b] = instances;
    assert.deepEqual(
      { id: a!.id, address: a!.address, port: a!.port, health: a!.health, labels: a!.labels, locality: a!.locality },
      {
        id: 'node-1/web-1',
        address: '127.0.0.1',
        port: 9001,
        health: 'HEALTHY',
        labels: { prod: 'true', version: 'v1', zone: 'eu-1a' },
        locality: { region: 'eu', zone: 'eu-1a', subZone: 'node-1' },
      },
    );
    assert.equal(b!.address, '10.0.0.2');
    assert.equal(b!.health, 'UNHEALTHY');
    assert.equal(b!.locality, undefined, 'no zone or region known: no locality');
  });

  test('invalid address, invalid port, duplicate id and duplicate endpoint are skipped with a reason; the rest is kept', () => {
    const { instances, skipped } = mapHealthEntries([
      entry({ id: 'ok-1', port: 9001 }),
      entry({ id: 'dns', address: 'web.example.com', port: 9002 }),
      entry({ id: 'noaddr', address: '', nodeAddress: '', port: 9003 }),
      entry({ id: 'port0', port: 0 }),
      entry({ id: 'port-big', port: 70000 }),
      entry({ id: 'port-str', port: '9004' }),
      entry({ id: 'ok-1', port: 9005 }),
      entry({ id: 'same-endpoint', port: 9001 }),
      { Node: null, Service: { ID: 'x' } },
      'garbage',
      entry({ id: 'ok-2', port: 9006, address: '::1' }),
    ]);
    assert.deepEqual(
      instances.map((i) => i.id),
      ['node-1/ok-1', 'node-1/ok-2'],
    );
    assert.deepEqual(
      skipped.map((s) => s.reason),
      [
        'invalid_address',
        'invalid_address',
        'invalid_port',
        'invalid_port',
        'invalid_port',
        'invalid_entry',
        'invalid_entry',
        'duplicate_id',
        'duplicate_endpoint',
      ],
    );
    assert.match(skipped[0]!.detail, /node-1\/dns: address "web.example.com" is not an IP address/);
  });

  test('a body that is not an array is malformed as a whole', () => {
    assert.throws(
      () => mapHealthEntries({ error: 'x' }),
      (e: Error & { reason?: string }) => e.reason === 'malformed',
    );
    assert.throws(() => mapHealthEntries(null), /expected a JSON array, got null/);
  });

  test('connect-proxy sidecars are joined to their destination instance on the same node; health is the worse of both', () => {
    const { instances } = mapHealthEntries([
      entry({ id: 'web-1', port: 9001, tags: ['prod'] }),
      entry({ id: 'web-2', port: 9002, tags: ['prod'] }),
      entry({ id: 'web-3', port: 9003 }),
    ]);
    const { sidecars, skipped } = mapConnectEntries(
      [
        entry({
          id: 'web-1-sidecar-proxy',
          service: 'web-sidecar-proxy',
          kind: 'connect-proxy',
          port: 21001,
          proxy: { DestinationServiceName: 'web', DestinationServiceID: 'web-1' },
        }),
        entry({
          id: 'web-2-sidecar-proxy',
          service: 'web-sidecar-proxy',
          kind: 'connect-proxy',
          port: 21002,
          checks: [{ status: 'critical' }],
          proxy: { DestinationServiceName: 'web', DestinationServiceID: 'web-2' },
        }),
        // same destination id on another node: not this instance's sidecar
        entry({
          id: 'web-3-sidecar-proxy',
          node: 'node-9',
          service: 'web-sidecar-proxy',
          kind: 'connect-proxy',
          port: 21003,
          proxy: { DestinationServiceName: 'web', DestinationServiceID: 'web-3' },
        }),
        entry({
          id: 'bad-sidecar',
          service: 'web-sidecar-proxy',
          kind: 'connect-proxy',
          port: 0,
          proxy: { DestinationServiceName: 'web', DestinationServiceID: 'web-3' },
        }),
        entry({ id: 'native', service: 'web' }), // connect-native: ignored
      ],
      'web',
    );
    assert.equal(sidecars.length, 3);
    assert.deepEqual(
      skipped.map((s) => s.reason),
      ['invalid_sidecar'],
    );
    const all = selectInstances(instances, sidecars);
    assert.deepEqual(
      all.map((i) => [i.id, i.port, i.sidecar?.port, i.health]),
      [
        ['node-1/web-1', 9001, 21001, 'HEALTHY'],
        ['node-1/web-2', 9002, 21002, 'UNHEALTHY'],
        ['node-1/web-3', 9003, undefined, 'HEALTHY'],
      ],
    );
    assert.deepEqual(
      selectInstances(instances, sidecars, ['prod']).map((i) => i.id),
      ['node-1/web-1', 'node-1/web-2'],
      'tag filter: every tag must be present',
    );
  });
});

describe('consul connection settings', () => {
  test('CONSUL_HTTP_ADDR forms', () => {
    assert.equal(parseConsulAddress('127.0.0.1:8500'), 'http://127.0.0.1:8500');
    assert.equal(parseConsulAddress('https://consul.example:8501'), 'https://consul.example:8501');
    assert.equal(parseConsulAddress('[::1]:8500'), 'http://[::1]:8500');
    assert.equal(parseConsulAddress('consul:8501', true), 'https://consul:8501', 'CONSUL_HTTP_SSL=true without a scheme');
    assert.throws(() => parseConsulAddress('ftp://x:1'), /unsupported scheme/);
    assert.throws(() => parseConsulAddress('http://user:pw@x:1'), /must not carry credentials/);
    assert.throws(() => parseConsulAddress('http://x:1/v1'), /must not have a path/);
  });
  test('token from CONSUL_HTTP_TOKEN; client cert and key must come together', () => {
    const c = consulConnectionFromEnv('127.0.0.1:8500', 'dc2', { CONSUL_HTTP_TOKEN: 'secret-token' });
    assert.equal(c.token, 'secret-token');
    assert.equal(c.datacenter, 'dc2');
    assert.equal(c.tls, undefined);
    assert.throws(() => consulConnectionFromEnv('https://x:8501', undefined, { CONSUL_CLIENT_CERT: '/nonexistent' }), /go together|must be given together/);
    assert.throws(() => consulConnectionFromEnv('https://x:8501', undefined, { CONSUL_CACERT: '/nonexistent/ca.pem' }), /CONSUL_CACERT: cannot read/);
  });
});

describe('consul import and tuning', () => {
  test('Consul names become DNS labels; unusable or colliding names are skipped; tag mode needs every tag', async () => {
    const { policyNameOf, selectImported, parseImportMode } = await import('../../src/sources/consul/import.js');
    assert.equal(policyNameOf('Shop_API'), 'shop-api');
    assert.equal(policyNameOf('orders.v2'), 'orders-v2');
    assert.equal(policyNameOf('___'), undefined);
    assert.equal(policyNameOf('x'.repeat(64)), undefined);
    const body = { consul: [], web: ['prod', 'edge'], Web: ['edge'], Shop_API: ['edge'], internal: ['prod'], '***': ['edge'] };
    const all = selectImported(body, parseImportMode('all')!);
    assert.deepEqual(
      [...all.imported],
      [
        ['shop-api', 'Shop_API'],
        ['web', 'Web'],
        ['internal', 'internal'],
      ],
      'Consul itself is never imported',
    );
    assert.deepEqual(all.skipped, ['***: not usable as a Service name', 'web: becomes "web" like "Web"']);
    const edge = selectImported(body, parseImportMode('tag=edge,prod')!);
    assert.deepEqual([...edge.imported], [['web', 'web']]);
    assert.throws(() => selectImported([], { kind: 'all' }), /expected a JSON object/);
    assert.throws(() => parseImportMode('some'), /must be "all" or "tag=/);
  });

  test('imported Services are added to the policy documents unless a file declares the name', async () => {
    const { ConsulImporter } = await import('../../src/sources/consul/import.js');
    const fake = {
      opts: { connection: { baseUrl: 'http://127.0.0.1:1' } },
      client: {},
      logger: { warn() {}, info() {} },
      metrics: { errors: { inc() {} } },
      extraStatus: new Map(),
      readinessChecks: [],
      beforeFirstLoad: [],
    };
    const imp = new ConsulImporter(fake as never, { kind: 'tags', tags: ['edge'] }, () => {});
    (imp as unknown as { imported: Map<string, string> }).imported = new Map([
      ['shop-api', 'Shop_API'],
      ['orders', 'orders'],
    ]);
    const fileDoc = { kind: 'Service', name: 'orders' } as never;
    const docs = imp.docsFor([fileDoc]);
    assert.equal(docs.length, 2);
    assert.equal(docs[0], fileDoc, "the file's own Service wins");
    const added = docs[1] as unknown as {
      kind: string;
      name: string;
      value: { spec: { consul: { service: string; tags: string[] }; protocol: string } };
      source: { file: string };
    };
    assert.equal(added.name, 'shop-api');
    assert.deepEqual(added.value.spec.consul, { service: 'Shop_API', tags: ['edge'] });
    assert.equal(added.value.spec.protocol, 'http');
    assert.equal(added.source.file, 'consul-import:Shop_API');
  });

  test('tuning from the environment is validated', async () => {
    const { tuningFromEnv } = await import('../../src/sources/consul/index.js');
    assert.deepEqual(
      tuningFromEnv({
        SIGNALBOX_CONSUL_WAIT_MS: '5000',
        SIGNALBOX_CONSUL_RESYNC_GRACE_MS: '0',
        SIGNALBOX_CONSUL_WARNING_AS: 'healthy',
        SIGNALBOX_CONSUL_BACKOFF_MAX_MS: '2000',
      }),
      { waitMs: 5000, resyncGraceMs: 0, warningAs: 'HEALTHY', backoff: { baseMs: 250, maxMs: 2000 } },
    );
    assert.throws(() => tuningFromEnv({ SIGNALBOX_CONSUL_WAIT_MS: '10' }), /SIGNALBOX_CONSUL_WAIT_MS must be a whole number of milliseconds >= 1000/);
    assert.throws(() => tuningFromEnv({ SIGNALBOX_CONSUL_WARNING_AS: 'maybe' }), /DEGRADED or HEALTHY/);
  });
});

describe('consul serve flags', () => {
  test('--consul-addr (CONSUL_HTTP_ADDR), --consul-datacenter and --consul-import are parsed and checked up front', async () => {
    const { resolveServeConfig } = await import('../../src/config/settings.js');
    const none = resolveServeConfig({}, {});
    assert.deepEqual([none.consulAddr, none.consulDatacenter, none.consulImport], ['', '', ''], 'no Consul unless asked');
    const env = resolveServeConfig(
      {},
      { CONSUL_HTTP_ADDR: 'https://consul.example:8501', SIGNALBOX_CONSUL_DATACENTER: 'dc2', SIGNALBOX_CONSUL_IMPORT: 'tag=edge' },
    );
    assert.deepEqual([env.consulAddr, env.consulDatacenter, env.consulImport], ['https://consul.example:8501', 'dc2', 'tag=edge']);
    assert.equal(resolveServeConfig({ 'consul-addr': '127.0.0.1:8500' }, { CONSUL_HTTP_ADDR: 'other:1' }).consulAddr, '127.0.0.1:8500', 'the flag wins');
    assert.throws(() => resolveServeConfig({ 'consul-addr': 'ftp://x:1' }, {}), /--consul-addr must be HOST:PORT/);
    assert.throws(() => resolveServeConfig({ 'consul-import': 'everything' }, {}), /--consul-import must be "all" or "tag=TAG/);
  });
});
