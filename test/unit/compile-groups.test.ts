// One function says what a proxy group gets (compileGroups): the tools built on it show access
// logging and Mesh tracing as serve sends them, `diff` reports their changes, translation never
// edits an IR it has handed out, and the names it builds have one formatter and one parser, with
// unnamed rules named in a form no user name can take.
import assert from 'node:assert/strict';
import { Writable } from 'node:stream';
import { after, describe, test } from 'node:test';
import fc from 'fast-check';
import { DNS_LABEL } from '../../src/api/v1alpha1/common.js';
import { compileCommand, compileDir } from '../../src/cli/compile.js';
import { diffCommand } from '../../src/cli/diff.js';
import { explainCommand } from '../../src/cli/explain.js';
import { compileGroups, DEFAULT_ACCESS_LOG, printedGroup } from '../../src/controller/compile-groups.js';
import type { Explained } from '../../src/explain/provenance.js';
import { formatGroup, formatRouteName, parseGroup, parseRouteName, ruleLabel, type GroupKey, type RouteKey } from '../../src/ir/names.js';
import type { IRProxyConfig } from '../../src/ir/types.js';
import { translate } from '../../src/translate/gateway.js';
import { applyMeshTracing, withMeshTracing } from '../../src/translate/tracing.js';
import { configResources } from '../../src/xds/translator/index.js';
import { EncodeCache } from '../../src/xds/resources/resource.js';
import { doc, docs, policyDir, removePolicyDirs, validateDir } from './policy-dir.js';

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

async function runCli(cmd: typeof diffCommand, args: string[]): Promise<{ code: number; out: string; err: string }> {
  const out = sink();
  const err = sink();
  const code = await cmd(args, out.stream, err.stream);
  return { code, out: out.text(), err: err.text() };
}

const SERVICES = docs(
  doc('Service', 'shop', '{ port: 8080, endpoints: [ { address: 127.0.0.1, port: 9001 } ] }'),
  doc('Service', 'otel', '{ protocol: grpc, port: 4317, endpoints: [ { address: 127.0.0.1, port: 4317 } ] }'),
  doc('Gateway', 'edge', '{ listeners: [ { name: http, port: 8080, protocol: HTTP } ] }'),
);
const ROUTES = doc(
  'HTTPRoute',
  'app',
  `  parentRefs: [ { kind: Gateway, name: edge } ]
  rules:
    - name: rule-1
      matches: [ { path: { value: /limited } } ]
      backendRefs: [ { name: shop } ]
    - matches: [ { path: { value: /open } } ]
      backendRefs: [ { name: shop } ]`,
);
const LIMIT = doc('RateLimitPolicy', 'rule-one', '{ targetRef: { kind: HTTPRoute, name: app, sectionName: rule-1 }, local: { requests: 2, per: 1m } }');
const TRACING = doc('Mesh', 'default', '  tracing: { otlp: { service: otel, sampling: 25 } }');

/** Freezes a value and everything it holds: any later write throws (ES modules are strict). */
function deepFreeze<T>(v: T): T {
  if (v && typeof v === 'object' && !Object.isFrozen(v)) {
    Object.freeze(v);
    for (const x of Object.values(v)) deepFreeze(x);
  }
  return v;
}

describe('compileGroups', () => {
  test('access logging (serve default) and Mesh tracing are part of translation; a frozen IR goes through every later step', async () => {
    const r = await validateDir(policyDir({ 'a.yaml': docs(SERVICES, ROUTES, TRACING) }));
    assert.deepEqual(r.errors, []);
    const model = r.model!;
    const groups = compileGroups(model, { accessLog: DEFAULT_ACCESS_LOG, groups: ['sidecar/shop/9001/21001/15001'], trustBundlePem: 'bundle' });
    assert.deepEqual([...groups.keys()], ['gateway/edge', 'sidecar/shop/9001/21001/15001']);
    for (const [group, g] of groups) {
      assert.ok(g.ir.listeners.length > 0);
      for (const l of g.ir.listeners) {
        assert.deepEqual(l.accessLog, DEFAULT_ACCESS_LOG, `${group} ${l.name}`);
        assert.equal(l.tracing?.cluster, 'otel', `${group} ${l.name}`);
      }
      assert.ok(g.ir.clusters.some((c) => c.name === 'otel'));
    }
    // Translation's output is final: freeze it, then run every step that used to edit it in place.
    const irs = deepFreeze(translate(model, ['sidecar/shop/9001/21001/15001'], { accessLog: { successSamplePercent: 5 } }));
    const before = JSON.stringify([...irs]);
    const copy = new Map(irs);
    applyMeshTracing(model, copy);
    for (const ir of irs.values()) {
      assert.equal(withMeshTracing(model, ir), ir, 'tracing already applied: the same IR');
      configResources(ir, new EncodeCache());
    }
    assert.equal(JSON.stringify([...irs]), before);
    assert.equal(JSON.stringify([...copy]), before);
  });

  test('an IR is a new object when tracing is added, never the one given', async () => {
    const r = await validateDir(policyDir({ 'a.yaml': docs(SERVICES, ROUTES) }));
    const plain = deepFreeze(translate(r.model!).get('gateway/edge')!) as IRProxyConfig;
    const traced = await validateDir(policyDir({ 'a.yaml': docs(SERVICES, ROUTES, TRACING) }));
    const out = withMeshTracing(traced.model!, plain);
    assert.notEqual(out, plain);
    assert.equal(plain.listeners[0]!.tracing, undefined);
    assert.equal(out.listeners[0]!.tracing?.serviceName, 'edge-gateway');
  });

  test("compile prints what compileGroups gives, with serve's defaults; --access-log-sampling as serve reads it", async () => {
    const dir = policyDir({ 'a.yaml': docs(SERVICES, ROUTES) });
    const r = await compileDir(dir);
    assert.ok(r.ok);
    const direct = compileGroups((await validateDir(dir)).model!, {
      accessLog: DEFAULT_ACCESS_LOG,
      trustBundlePem: "(the mesh CA's trust bundle, as the serving control plane holds it)",
    });
    assert.deepEqual(r.groups['gateway/edge'], printedGroup(direct.get('gateway/edge')!));
    const listenerOf = (out: string) => JSON.stringify(JSON.parse(out)['gateway/edge'].listener);
    const dflt = await runCli(compileCommand, [dir]);
    assert.equal(dflt.code, 0);
    assert.match(listenerOf(dflt.out), /signalbox\?sample=100/);
    const ten = await runCli(compileCommand, [dir, '--access-log-sampling', '10']);
    assert.match(listenerOf(ten.out), /signalbox\?sample=10"/);
    const off = await runCli(compileCommand, [dir, '--access-log-sampling', 'off']);
    assert.doesNotMatch(listenerOf(off.out), /access_log/);
    await assert.rejects(runCli(compileCommand, [dir, '--access-log-sampling', '200']), /--access-log-sampling must be a percent/);
    const sidecar = await runCli(compileCommand, [dir, '--group', 'sidecar/shop/9001/21001/15001']);
    assert.equal(sidecar.code, 0, sidecar.err);
    assert.deepEqual(Object.keys(JSON.parse(sidecar.out)), ['sidecar/shop/9001/21001/15001']);
  });
});

describe('signalbox diff shows what serve would change', () => {
  test('adding Mesh tracing: exit 1, the tracer on the listener and the collector cluster', async () => {
    const a = policyDir({ 'a.yaml': docs(SERVICES, ROUTES) });
    const b = policyDir({ 'a.yaml': docs(SERVICES, ROUTES, TRACING) });
    const r = await runCli(diffCommand, [a, b]);
    assert.equal(r.code, 1, r.out + r.err);
    assert.match(r.out, /~ proxy group gateway\/edge/);
    assert.match(r.out, /\+ cluster otel/);
    assert.match(r.out, /~ listener edge\/http\n.*\+ .*tracing: .*envoy\.tracers\.opentelemetry/);
    const json = JSON.parse((await runCli(diffCommand, [a, b, '--json'])).out);
    assert.equal(json.identical, false);
  });

  test('a change of access-log sampling: exit 1, the logger of every listener; the same setting on both sides: exit 0', async () => {
    const a = policyDir({ 'a.yaml': docs(SERVICES, ROUTES) });
    const same = await runCli(diffCommand, [a, a, '--access-log-sampling', '10']);
    assert.equal(same.code, 0, same.out);
    const r = await runCli(diffCommand, [a, a, '--old-access-log-sampling', '100', '--new-access-log-sampling', '10']);
    assert.equal(r.code, 1, r.out + r.err);
    assert.match(r.out, /~ listener edge\/http/);
    assert.match(r.out, /log_name: "signalbox\?sample=100" -> "signalbox\?sample=10"/);
    assert.match(r.out, /\+ .*access_log.*\.filter: \{"or_filter"/, 'successes sampled, errors always');
    const off = await runCli(diffCommand, [a, a, '--new-access-log-sampling', 'off']);
    assert.equal(off.code, 1);
    assert.match(off.out, /- .*access_log/);
  });
});

describe('signalbox explain shows the listener settings serve adds', () => {
  test('access logging (a control-plane setting) and tracing (the Mesh)', async () => {
    const dir = policyDir({ 'a.yaml': docs(SERVICES, ROUTES, TRACING) });
    const r = await runCli(explainCommand, [dir, '--proxy', 'edge', '--json', '--access-log-sampling', '7']);
    assert.equal(r.code, 0, r.err);
    const e = JSON.parse(r.out) as Explained;
    assert.deepEqual(e.listeners[0]!.settings.accessLog, {
      value: { successSamplePercent: 7, errors: 'always' },
      from: { kind: 'setting', name: '--access-log-sampling' },
    });
    assert.equal(e.listeners[0]!.settings.tracing!.from.kind, 'Mesh');
    assert.deepEqual(
      e.routes.map((x) => x.name),
      ['app/rule-1/match-0', 'app/#1/match-0'],
    );
  });
});

describe('names: one formatter, one parser; unnamed rules cannot collide', () => {
  test('the rate limit aimed at sectionName rule-1 is on rule-1 only, not on the unnamed second rule', async () => {
    const r = await validateDir(policyDir({ 'a.yaml': docs(SERVICES, ROUTES, LIMIT) }));
    const routes = translate(r.model!).get('gateway/edge')!.listeners[0]!.routeConfig.virtualHosts[0]!.routes;
    assert.deepEqual(
      routes.map((x) => [x.name, x.rateLimit?.policy]),
      [
        ['app/rule-1/match-0', 'rule-one'],
        ['app/#1/match-0', undefined],
      ],
    );
    assert.deepEqual(routes[1]!.key, { kind: 'rule', httpRoute: 'app', rule: { index: 1 }, match: 0 });
  });

  const label = fc.stringMatching(/^[a-z0-9]([-a-z0-9]{0,20}[a-z0-9])?$/).filter((s) => DNS_LABEL.test(s));

  test("no rule name a user can write is an unnamed rule's label", () => {
    fc.assert(fc.property(label, fc.nat(1000), (name, index) => ruleLabel({ name }) !== ruleLabel({ index })));
  });

  test('route and group names parse back to what they were formatted from', () => {
    const plain = <T>(v: T): T => JSON.parse(JSON.stringify(v)) as T; // (fast-check's records have no prototype)
    const routeKey: fc.Arbitrary<RouteKey> = fc.oneof(
      fc.record({
        kind: fc.constant('rule' as const),
        httpRoute: label,
        rule: fc.oneof(fc.record({ name: label }), fc.record({ index: fc.nat(99) })),
        match: fc.nat(99),
      }),
      fc.record({ kind: fc.constant('default' as const), service: label.filter((s) => s !== 'inbound') }),
      fc.record({ kind: fc.constant('inbound' as const), service: label }),
    );
    fc.assert(fc.property(routeKey, (k) => assert.deepEqual(parseRouteName(formatRouteName(k)), plain(k))));
    const port = fc.integer({ min: 1, max: 65535 });
    const groupKey: fc.Arbitrary<GroupKey> = fc.oneof(
      fc.record({ kind: fc.constant('gateway' as const), gateway: label }),
      fc.record({ kind: fc.constant('gateway' as const), gateway: label, jwtModule: fc.constant(true) }),
      fc.record({ kind: fc.constant('sidecar' as const), service: label, appPort: port, inboundPort: port, outboundPort: port }),
      fc.record({ kind: fc.constant('sidecar' as const), service: label, appPort: port, inboundPort: port, outboundPort: port, jwtModule: fc.constant(true) }),
    );
    fc.assert(fc.property(groupKey, (k) => assert.deepEqual(parseGroup(formatGroup(k)), plain(k))));
    assert.equal(parseGroup('gateway/a/b'), undefined);
    assert.equal(parseRouteName('app/rule-1/match-x'), undefined);
  });
});
