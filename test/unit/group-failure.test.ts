// One proxy group that cannot be compiled does not hold back the others: compileGroupsSettled
// reports it on its own policy documents (SB_TRANSLATE) and compiles the rest as if it were not
// there, and a running pipeline keeps that group's last good snapshot while the other groups take
// the new configuration.
import assert from 'node:assert/strict';
import { writeFileSync } from 'node:fs';
import path from 'node:path';
import { after, describe, test } from 'node:test';
import { compileGroups, compileGroupsSettled, InconsistentGroupError, printedGroup, routeFault } from '../../src/controller/compile-groups.js';
import { Pipeline } from '../../src/controller/pipeline.js';
import { compileCommand } from '../../src/cli/compile.js';
import { explainCommand } from '../../src/cli/explain.js';
import { Writable } from 'node:stream';
import { ErrorCode } from '../../src/errors.js';
import { createLogger } from '../../src/observability/logger.js';
import { SnapshotCache } from '../../src/xds/cache/snapshot-cache.js';
import { TypeUrl } from '../../src/xds/resources/type-urls.js';
import { doc, docs, policyDir, removePolicyDirs, validateDir } from './policy-dir.js';

after(removePolicyDirs);

const GATEWAYS = docs(
  doc('Service', 'shop', '{ port: 8080, endpoints: [ { address: 127.0.0.1, port: 9001 } ] }'),
  doc('Gateway', 'a', '{ listeners: [ { name: http, port: 8080, protocol: HTTP } ] }'),
  doc('Gateway', 'b', '{ listeners: [ { name: http, port: 8081, protocol: HTTP } ] }'),
);
const route = (name: string, gateway: string, p: string) =>
  doc(
    'HTTPRoute',
    name,
    `  parentRefs: [ { kind: Gateway, name: ${gateway} } ]\n  rules:\n    - matches: [ { path: { value: ${p} } } ]\n      backendRefs: [ { name: shop } ]`,
  );

describe('compileGroupsSettled', () => {
  test('a group whose translation throws is reported on its documents; the others compile as without it', async () => {
    const dir = policyDir({
      'base.yaml': GATEWAYS,
      'a.yaml': docs(route('app-a', 'a', '/a'), route('boom', 'a', '/boom')),
      'b.yaml': route('app-b', 'b', '/b'),
    });
    const { model, errors } = await validateDir(dir);
    assert.deepEqual(errors, []);
    const settled = compileGroupsSettled(model!, { beforeGroup: routeFault('boom') });
    assert.deepEqual([...settled.groups.keys()], ['gateway/b']);
    assert.deepEqual([...settled.failed.keys()], ['gateway/a']);
    const failure = settled.failed.get('gateway/a')!;
    assert.match(failure.cause.message, /fault injected: HTTPRoute "boom"/);
    // Attributed to the documents gateway/a is built from: its Gateway and the routes attached to it, never b's.
    assert.deepEqual(
      failure.errors.map((e) => [e.code, path.basename(e.file), e.doc, e.group]),
      [
        [ErrorCode.TRANSLATE, 'a.yaml', 1, 'gateway/a'],
        [ErrorCode.TRANSLATE, 'a.yaml', 2, 'gateway/a'],
        [ErrorCode.TRANSLATE, 'base.yaml', 2, 'gateway/a'],
      ],
    );
    for (const e of failure.errors) assert.match(e.message, /^proxy group "gateway\/a" cannot be compiled \(translation failed: fault injected/);
    // gateway/b is byte for byte what it is when nothing fails.
    const whole = compileGroups(model!);
    assert.deepEqual(printedGroup(settled.groups.get('gateway/b')!), printedGroup(whole.get('gateway/b')!));
    // compileGroups (compile, diff, goldens) still refuses to print a partial result.
    assert.throws(() => compileGroups(model!, { beforeGroup: routeFault('boom') }), /fault injected/);
  });

  test('an inconsistent group is a failure of that group, with the problems named', async () => {
    const dir = policyDir({ 'base.yaml': GATEWAYS, 'b.yaml': route('app-b', 'b', '/b') });
    const { model } = await validateDir(dir);
    const settled = compileGroupsSettled(model!, {
      beforeGroup: (group) => {
        if (group === 'gateway/a') throw new InconsistentGroupError(group, ['route configuration "x" is missing']);
      },
    });
    assert.deepEqual([...settled.groups.keys()], ['gateway/b']);
    assert.match(settled.failed.get('gateway/a')!.errors[0]!.message, /its configuration would be inconsistent: route configuration "x" is missing/);
  });
});

describe('the command line with one broken group', () => {
  const sink = () => {
    let text = '';
    return {
      stream: new Writable({
        write: (c, _e, cb) => {
          text += String(c);
          cb();
        },
      }),
      text: () => text,
    };
  };
  test('compile refuses with SB_TRANSLATE on the documents; explain fails for that group only', async () => {
    const dir = policyDir({
      'base.yaml': GATEWAYS,
      'a.yaml': docs(route('app-a', 'a', '/a'), route('boom', 'a', '/boom')),
      'b.yaml': route('app-b', 'b', '/b'),
    });
    process.env.SIGNALBOX_FAULT_TRANSLATE_ROUTE = 'boom';
    try {
      const out = sink();
      const err = sink();
      assert.equal(await compileCommand([dir], out.stream, err.stream), 1);
      assert.equal(out.text(), '');
      assert.equal(
        err
          .text()
          .split('\n')
          .filter((l) => l.includes('SB_TRANSLATE') || l.includes('proxy group "gateway/a" cannot be compiled')).length,
        3,
        err.text(),
      );
      const explainedA = sink();
      assert.equal(await explainCommand([dir, '--proxy', 'a'], sink().stream, explainedA.stream), 1);
      assert.match(explainedA.text(), /proxy group "gateway\/a" cannot be compiled/);
      const explainedB = sink();
      assert.equal(await explainCommand([dir, '--proxy', 'b'], explainedB.stream, sink().stream), 0);
      assert.match(explainedB.text(), /app-b/);
    } finally {
      delete process.env.SIGNALBOX_FAULT_TRANSLATE_ROUTE;
    }
  });
});

describe('a pipeline with one broken group', () => {
  test('the broken group keeps its last good snapshot, the other takes its change, and the errors say which', async () => {
    const dir = policyDir({ 'base.yaml': GATEWAYS, 'a.yaml': route('app-a', 'a', '/a'), 'b.yaml': route('app-b', 'b', '/b') });
    const cache = new SnapshotCache();
    const pipeline = new Pipeline({ policyDir: dir, cache, logger: createLogger({ level: 'silent' }), beforeGroup: routeFault('boom') });
    const first = await pipeline.reload();
    assert.deepEqual(first.errors, []);
    const aBefore = cache.get('gateway/a').version;
    const bBefore = cache.get('gateway/b').version;

    // One edit breaks gateway/a's translation and changes gateway/b's routes.
    writeFileSync(path.join(dir, 'a.yaml'), docs(route('app-a', 'a', '/a'), route('boom', 'a', '/boom')));
    writeFileSync(path.join(dir, 'b.yaml'), route('app-b', 'b', '/b-new'));
    const second = await pipeline.reload();
    assert.equal(second.applied, true);
    assert.equal(cache.get('gateway/a').version, aBefore, 'gateway/a serves its last good snapshot');
    assert.notEqual(cache.get('gateway/b').version, bBefore, 'gateway/b took its change');
    const routesOfB = JSON.stringify([...cache.get('gateway/b').get(TypeUrl.Route).values()].map((r) => r.printable));
    assert.match(routesOfB, /\/b-new/);
    assert.deepEqual(new Set(second.errors.map((e) => `${e.code} ${e.group}`)), new Set([`${ErrorCode.TRANSLATE} gateway/a`]));
    assert.deepEqual(pipeline.errors, second.errors);
    const failed = pipeline.failedGroups.get('gateway/a');
    assert.equal(failed?.servingLastGood, true);
    assert.equal(pipeline.failedGroups.size, 1);

    // Fixed: gateway/a moves on and the errors clear.
    writeFileSync(path.join(dir, 'a.yaml'), route('app-a', 'a', '/a-new'));
    const third = await pipeline.reload();
    assert.deepEqual(third.errors, []);
    assert.equal(pipeline.failedGroups.size, 0);
    assert.notEqual(cache.get('gateway/a').version, aBefore);
  });
});
