// A RouteConfiguration encoded one virtual host at a time decodes to the message a whole encoding
// gives, and an edit re-encodes only the virtual host it touched.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { lookupType } from '../../src/xds/resources/protos.js';
import { EncodeCache } from '../../src/xds/resources/resource.js';
import { TypeUrl } from '../../src/xds/resources/type-urls.js';

test('a RouteConfiguration encoded one virtual host at a time decodes to what a whole encoding gives', () => {
  const json = {
    name: 'http-8080',
    virtual_hosts: [
      { name: 'a', domains: ['a.example.com'], routes: [{ name: 'r1', match: { prefix: '/' }, route: { cluster: 'c1', timeout: { seconds: 5, nanos: 0 } } }] },
      { name: 'b', domains: ['b.example.com', 'b2.example.com'], routes: [{ name: 'r2', match: { path: '/x' }, direct_response: { status: 404 } }] },
    ],
    validate_clusters: { value: false },
  };
  const enc = new EncodeCache();
  const split = enc.makeSplit(TypeUrl.Route, json.name, json, { key: 'virtual_hosts', field: 2, message: 'envoy.config.route.v3.VirtualHost' });
  const whole = new EncodeCache().make(TypeUrl.Route, json.name, json);
  const t = lookupType('envoy.config.route.v3.RouteConfiguration');
  const asObject = (b: Uint8Array) => t.toObject(t.decode(b), { enums: String, longs: Number, defaults: false });
  assert.deepEqual(asObject(split.bytes), asObject(whole.bytes));
  // One virtual host edited: its encoding is new, the other's is reused, and the version moves.
  const edited = { ...json, virtual_hosts: [json.virtual_hosts[0]!, { ...json.virtual_hosts[1]!, domains: ['b.example.com'] }] };
  const before = enc.misses;
  const next = enc.makeSplit(TypeUrl.Route, json.name, edited, { key: 'virtual_hosts', field: 2, message: 'envoy.config.route.v3.VirtualHost' });
  assert.notEqual(next.version, split.version);
  assert.equal(enc.misses, before + 1);
  assert.deepEqual(asObject(next.bytes), asObject(new EncodeCache().make(TypeUrl.Route, json.name, edited).bytes));
  // The same input: the same bytes and version.
  assert.equal(
    enc.makeSplit(TypeUrl.Route, json.name, edited, { key: 'virtual_hosts', field: 2, message: 'envoy.config.route.v3.VirtualHost' }).version,
    next.version,
  );
});
