// `signalbox explain` (where each effective setting came from) and `signalbox diff` (what a policy
// change would do to each proxy's Envoy resources, as a CI check).
import assert from 'node:assert/strict';
import path from 'node:path';
import { Writable } from 'node:stream';
import { after, describe, test } from 'node:test';
import { diffCommand, diffJson } from '../../src/cli/diff.js';
import { explainCommand } from '../../src/cli/explain.js';
import type { Explained } from '../../src/explain/provenance.js';
import { doc, docs, policyDir, removePolicyDirs } from './policy-dir.js';

after(removePolicyDirs);

function sink(): { stream: Writable; text: () => string } {
  let text = '';
  const stream = new Writable({
    write(chunk, _enc, cb) {
      text += String(chunk);
      cb();
    },
  });
  return { stream, text: () => text };
}

async function runCli(cmd: typeof explainCommand, args: string[]): Promise<{ code: number; out: string; err: string }> {
  const out = sink();
  const err = sink();
  const code = await cmd(args, out.stream, err.stream);
  return { code, out: out.text(), err: err.text() };
}

const BASE = {
  'mesh.yaml': doc('Mesh', 'default', '{ defaults: { retries: { attempts: 1, retryOn: [reset] } } }'),
  'services.yaml': docs(
    doc('Service', 'orders', '{ port: 8080, endpoints: [ { address: 10.0.0.1, port: 8080 } ] }'),
    doc('Service', 'carts', '{ port: 8080, endpoints: [ { address: 10.0.0.2, port: 8080 } ] }'),
    doc('Gateway', 'public', '{ listeners: [ { name: http, port: 8080, protocol: HTTP } ] }'),
  ),
  'routes.yaml': doc(
    'HTTPRoute',
    'shop',
    `  parentRefs: [ { kind: Gateway, name: public } ]
  rules:
    - name: orders
      matches: [ { path: { value: /orders } } ]
      backendRefs: [ { name: orders } ]
    - name: carts
      matches: [ { path: { value: /carts } } ]
      backendRefs: [ { name: carts } ]
      timeout: 2s`,
  ),
  'traffic.yaml': docs(
    doc('TrafficPolicy', 'orders-tp', '{ targetRef: { kind: Service, name: orders }, timeout: 3s, connectTimeout: 1s }'),
    doc('RateLimitPolicy', 'edge', '{ targetRef: { kind: Gateway, name: public }, local: { requests: 50, per: 1s } }'),
  ),
};

describe('signalbox explain', () => {
  test('every value names the file and document it came from, or "default"', async () => {
    const dir = policyDir(BASE);
    const r = await runCli(explainCommand, [dir, '--proxy', 'public', '--json']);
    assert.equal(r.code, 0, r.err);
    const e = JSON.parse(r.out) as Explained;
    assert.equal(e.group, 'gateway/public');
    const route = (n: string) => e.routes.find((x) => x.name === n)!.settings;
    const file = (f: string) => path.join(dir, f);
    assert.deepEqual(route('shop/orders/match-0').timeout, {
      value: '3000ms',
      from: { kind: 'TrafficPolicy', name: 'orders-tp', file: file('traffic.yaml'), doc: 1 },
    });
    assert.deepEqual(route('shop/carts/match-0').timeout, { value: '2000ms', from: { kind: 'HTTPRoute', name: 'shop', file: file('routes.yaml'), doc: 1 } });
    assert.deepEqual(route('shop/carts/match-0').retries!.from, { kind: 'Mesh', name: 'default', file: file('mesh.yaml'), doc: 1 });
    const cluster = (n: string) => e.clusters.find((c) => c.name === n)!.settings;
    assert.deepEqual(cluster('orders').connectTimeout, {
      value: '1000ms',
      from: { kind: 'TrafficPolicy', name: 'orders-tp', file: file('traffic.yaml'), doc: 1 },
    });
    assert.deepEqual(cluster('carts').connectTimeout, { value: '5000ms', from: { kind: 'default' } });
    assert.deepEqual(e.listeners[0]!.settings.rateLimit!.from, { kind: 'RateLimitPolicy', name: 'edge', file: file('traffic.yaml'), doc: 2 });
  });

  test('without a Mesh, no retries is the built-in default; the text form shows where each value came from', async () => {
    const { 'mesh.yaml': _m, ...rest } = BASE;
    const dir = policyDir(rest);
    const r = await runCli(explainCommand, [dir, '--proxy', 'gateway/public', '--route', 'shop/carts']);
    assert.equal(r.code, 0, r.err);
    assert.match(r.out, /route shop\/carts\/match-0/);
    assert.doesNotMatch(r.out, /route shop\/orders/, '--route keeps one route');
    assert.match(r.out, /timeout +2000ms\n +<- HTTPRoute "shop" \(.*routes\.yaml#1\)/);
    assert.match(r.out, /retries +none\n +<- default/);
    assert.match(r.out, /cluster carts/);
    assert.doesNotMatch(r.out, /cluster orders/, 'only the clusters the chosen route uses');
  });

  test('an unknown proxy group or route, and an invalid directory, exit 1', async () => {
    const dir = policyDir(BASE);
    const noGroup = await runCli(explainCommand, [dir, '--proxy', 'private']);
    assert.equal(noGroup.code, 1);
    assert.match(noGroup.err, /no proxy group "private" \(have: gateway\/public\)/);
    assert.equal((await runCli(explainCommand, [dir, '--proxy', 'public', '--route', 'nope'])).code, 1);
    const bad = policyDir({ ...BASE, 'traffic.yaml': doc('TrafficPolicy', 't', '{ targetRef: { kind: Service, name: ordrs }, timeout: 1s }') });
    const r = await runCli(explainCommand, [bad, '--proxy', 'public']);
    assert.equal(r.code, 1);
    assert.match(r.err, /unknown Service "ordrs"/);
  });
});

describe('signalbox diff', () => {
  test('identical directories: exit 0', async () => {
    const r = await runCli(diffCommand, [policyDir(BASE), policyDir(BASE)]);
    assert.deepEqual([r.code, r.out], [0, 'no differences\n']);
  });

  test('a changed policy: exit 1 and a field-level diff per proxy group', async () => {
    const next = policyDir({
      ...BASE,
      'traffic.yaml': docs(
        doc('TrafficPolicy', 'orders-tp', '{ targetRef: { kind: Service, name: orders }, timeout: 3s, connectTimeout: 1s, loadBalancer: { type: Random } }'),
        doc('RateLimitPolicy', 'edge', '{ targetRef: { kind: Gateway, name: public }, local: { requests: 50, per: 1s } }'),
      ),
    });
    const r = await runCli(diffCommand, [policyDir(BASE), next]);
    assert.equal(r.code, 1, r.err);
    assert.equal(
      r.out,
      ['~ proxy group gateway/public', '  ~ cluster orders', '      lb_policy: "ROUND_ROBIN" -> "RANDOM"', '1 resource(s) differ in 1 proxy group(s)', ''].join(
        '\n',
      ),
    );
    const json = JSON.parse((await runCli(diffCommand, [policyDir(BASE), next, '--json'])).out);
    assert.equal(json.identical, false);
    assert.deepEqual(json.groups[0].resources[0].changes, [{ op: 'change', path: 'lb_policy', from: 'ROUND_ROBIN', to: 'RANDOM' }]);
  });

  test('added and removed resources and groups', async () => {
    const withAdmin = policyDir({
      ...BASE,
      'admin.yaml': docs(
        doc('Gateway', 'admin', '{ listeners: [ { name: http, port: 9090, protocol: HTTP } ] }'),
        doc('HTTPRoute', 'admin', '{ parentRefs: [ { kind: Gateway, name: admin } ], rules: [ { backendRefs: [ { name: carts } ] } ] }'),
      ),
    });
    const r = await runCli(diffCommand, [policyDir(BASE), withAdmin, '--json']);
    assert.equal(r.code, 1);
    const groups = JSON.parse(r.out).groups as { group: string; status: string; resources: { type: string; name: string; status: string }[] }[];
    assert.deepEqual(
      groups.map((g) => [g.group, g.status]),
      [['gateway/admin', 'added']],
    );
    assert.ok(groups[0]!.resources.some((x) => x.type === 'listener' && x.name === 'admin/http' && x.status === 'added'));
    const back = await runCli(diffCommand, [withAdmin, policyDir(BASE)]);
    assert.match(back.out, /^- proxy group gateway\/admin\n {2}- cluster carts\n/);
    // --proxy limits the report to one group.
    assert.deepEqual([(await runCli(diffCommand, [policyDir(BASE), withAdmin, '--proxy', 'public'])).code], [0]);
  });

  test('an invalid side exits 2 and says why', async () => {
    const bad = policyDir({
      ...BASE,
      'traffic.yaml': doc('RateLimitPolicy', 'x', '{ targetRef: { kind: Gateway, name: public }, local: { requests: 5, per: 1sec } }'),
    });
    const r = await runCli(diffCommand, [policyDir(BASE), bad]);
    assert.equal(r.code, 2);
    assert.match(r.err, /does not compile:\n .*spec\.local\.per: must be a duration .*\(did you mean "1s"\?\)/);
  });

  test('lists of named objects are compared by name, other lists by position', () => {
    assert.deepEqual(
      diffJson(
        {
          l: [
            { name: 'a', v: 1 },
            { name: 'b', v: 2 },
          ],
        },
        {
          l: [
            { name: 'b', v: 3 },
            { name: 'a', v: 1 },
          ],
        },
      ),
      [{ op: 'change', path: 'l[name=b].v', from: 2, to: 3 }],
    );
    assert.deepEqual(diffJson({ l: [1, 2] }, { l: [1, 3] }), [{ op: 'change', path: 'l[1]', from: 2, to: 3 }]);
    assert.deepEqual(diffJson({ l: [1, 2] }, { l: [1] }), [{ op: 'change', path: 'l', from: [1, 2], to: [1] }]);
    assert.deepEqual(diffJson({ a: 1 }, { b: 1 }), [
      { op: 'remove', path: 'a', value: 1 },
      { op: 'add', path: 'b', value: 1 },
    ]);
  });
});
