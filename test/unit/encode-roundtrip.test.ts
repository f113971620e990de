// The round-trip check (assertRoundTrip, EncodeCache roundTrip): a field protobufjs drops is an error
// naming the resource and the field's path, never showing a value; `compile` and `validate` check
// every resource even without SIGNALBOX_STRICT_ENCODE.
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import path from 'node:path';
import { describe, test } from 'node:test';
import { pathToFileURL } from 'node:url';
import { lookupType } from '../../src/xds/resources/protos.js';
import { assertRoundTrip, EncodeCache, RoundTripError } from '../../src/xds/resources/resource.js';
import { messageName, TypeUrl } from '../../src/xds/resources/type-urls.js';
import { repoRoot } from '../helpers/envoy.js';

const encode = (type: TypeUrl, json: Record<string, unknown>) => {
  const t = lookupType(messageName(type));
  return t.encode(t.fromObject(json)).finish();
};

function roundTripError(type: TypeUrl, name: string, json: Record<string, unknown>): RoundTripError {
  try {
    assertRoundTrip(type, name, json, encode(type, json));
  } catch (e) {
    if (e instanceof RoundTripError) return e;
    throw e;
  }
  assert.fail('no RoundTripError');
}

describe('round-trip check', () => {
  test('a dropped field is named by its path in the resource', () => {
    const rc = { name: 'rc', virtual_hosts: [{ name: 'v', domains: ['*'], routes: [{ match: { prefix: '/' }, route: { clustr: 'x' } }] }] };
    const e = roundTripError(TypeUrl.Route, 'public/http', rc);
    assert.equal(e.resource, 'RouteConfiguration "public/http"');
    assert.deepEqual(e.fields, [
      { path: 'virtual_hosts[0].routes[0].route.clustr', problem: 'was dropped (no such field there, or a value protobufjs cannot encode)' },
    ]);
    assert.match(e.message, /^RouteConfiguration "public\/http" does not survive encoding .*: virtual_hosts\[0\]\.routes\[0\]\.route\.clustr was dropped/);
  });

  test('inside an Any and under a map key that is not a plain name', () => {
    const listener = {
      name: 'l',
      filter_chains: [
        {
          filters: [
            {
              name: 'hcm',
              typed_config: {
                '@type': 'type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager',
                stat_prefx: 'x',
              },
            },
          ],
        },
      ],
      metadata: { filter_metadata: { 'signalbox.jwt_check': { fields: { check: { string_value: 'p' } } } } },
    };
    const e = roundTripError(TypeUrl.Listener, 'l', listener);
    assert.deepEqual(e.fields.map((f) => f.path).sort(), [
      'filter_chains[0].filters[0].typed_config.stat_prefx',
      'metadata.filter_metadata["signalbox.jwt_check"].fields.check.string_value',
    ]);
  });

  test('a value of the wrong kind is a changed field; the value itself is never shown (a Secret holds a private key)', () => {
    const key = '-----BEGIN PRIVATE KEY-----\nMIGHAgEAsecret\n-----END PRIVATE KEY-----\n';
    const secret = { name: 's', tls_certificate: { private_key: { inline_string: key }, certificate_chian: { inline_string: key } } };
    const e = roundTripError(TypeUrl.Secret, 's', secret);
    assert.deepEqual(
      e.fields.map((f) => f.path),
      ['tls_certificate.certificate_chian'],
    );
    assert.doesNotMatch(e.message, /PRIVATE KEY|MIGHAgEAsecret/);
    // A uint32 given more than 32 bits decodes to another number.
    const c = roundTripError(TypeUrl.Cluster, 'c', { name: 'c', per_connection_buffer_limit_bytes: { value: 2 ** 33 + 5 } });
    assert.deepEqual(c.fields, [
      { path: 'per_connection_buffer_limit_bytes.value', problem: 'was written as a number and decodes as a number of another value' },
    ]);
  });

  test('many differences: the first five are listed and the rest counted', () => {
    const json: Record<string, unknown> = { name: 'c' };
    for (let i = 0; i < 8; i++) json[`bogus_${i}`] = 'x';
    const e = roundTripError(TypeUrl.Cluster, 'c', json);
    assert.equal(e.fields.length, 5);
    assert.match(e.message, /; and 3 more$/);
  });

  test('a correct resource passes, with zero values and empty lists left out by the encoding', () => {
    const good = {
      name: 'c',
      type: 'EDS',
      connect_timeout: { seconds: 1, nanos: 0 },
      health_checks: [],
      eds_cluster_config: { eds_config: { ads: {}, resource_api_version: 'V3' } },
    };
    assert.doesNotThrow(() => assertRoundTrip(TypeUrl.Cluster, 'c', good, encode(TypeUrl.Cluster, good)));
  });

  test('EncodeCache checks when roundTrip is on, and only then', () => {
    const bad = { name: 'c', conect_timeout: { seconds: 1, nanos: 0 } };
    assert.throws(
      () => new EncodeCache({ roundTrip: true }).make(TypeUrl.Cluster, 'c', bad),
      /Cluster "c" does not survive encoding.*conect_timeout was dropped/,
    );
    assert.doesNotThrow(() => new EncodeCache({ roundTrip: false }).make(TypeUrl.Cluster, 'c', bad));
    const split = { name: 'rc', virtual_hosts: [{ name: 'v', domains: ['*'], routes: [{ match: { prefx: '/' } }] }] };
    assert.throws(
      () =>
        new EncodeCache({ roundTrip: true }).makeSplit(TypeUrl.Route, 'rc', split, {
          key: 'virtual_hosts',
          field: 2,
          message: 'envoy.config.route.v3.VirtualHost',
        }),
      /virtual_hosts\[0\]\.routes\[0\]\.match\.prefx was dropped/,
    );
  });

  // In a child process without SIGNALBOX_STRICT_ENCODE (the test runner sets it), with the
  // translator's listener given a misspelt field on its way into the encoder.
  function cli(command: 'compile' | 'validate', misspell: boolean): { code: number; stdout: string; stderr: string } {
    const dist = path.join(repoRoot(), 'dist', 'src');
    const script = `
      const { EncodeCache } = await import(${JSON.stringify(pathToFileURL(path.join(dist, 'xds/resources/resource.js')).href)});
      if (${misspell}) {
        const make = EncodeCache.prototype.make;
        EncodeCache.prototype.make = function (type, name, json, opts) {
          return make.call(this, type, name, type.endsWith('.Listener') ? { ...json, listener_filters_timout: { seconds: 1 } } : json, opts);
        };
      }
      const { run } = await import(${JSON.stringify(pathToFileURL(path.join(dist, 'cli/main.js')).href)});
      process.exitCode = await run([${JSON.stringify(command)}, ${JSON.stringify(path.join(repoRoot(), 'test/golden/cases/basic-routing'))}]);`;
    const env = { ...process.env };
    delete env.SIGNALBOX_STRICT_ENCODE;
    const r = spawnSync(process.execPath, ['--input-type=module', '-e', script], { env, encoding: 'utf8', timeout: 60_000 });
    return { code: r.status ?? -1, stdout: r.stdout, stderr: r.stderr };
  }

  for (const command of ['compile', 'validate'] as const) {
    test(`${command} reports a dropped field without SIGNALBOX_STRICT_ENCODE`, () => {
      const ok = cli(command, false);
      assert.equal(ok.code, 0, ok.stderr);
      const bad = cli(command, true);
      assert.equal(bad.code, 1, bad.stderr);
      assert.match(bad.stderr, /Listener "[^"]+" does not survive encoding .*: listener_filters_timout was dropped/);
      if (command === 'compile') assert.equal(bad.stdout, '');
    });
  }
});
