// One broken proxy group does not hold back another, through real Envoys carrying HTTP traffic. Two
// gateways, a and b, each with its own route to one upstream. One edit attaches an HTTPRoute to
// gateway a whose translation is made to fail (SIGNALBOX_FAULT_TRANSLATE_ROUTE, test-only) and
// moves gateway b's route to a new path: b's Envoy serves the new path, a's Envoy keeps its last
// good configuration (its old path still answers, the new route's path does not), and the admin
// API names the broken group and its documents with SB_TRANSLATE. Fixing a's file lets it move on.
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { startEnvoy, type Envoy } from '../helpers/envoy.js';
import { freePort, httpGet, waitFor } from '../helpers/net.js';
import { startSignalbox, type SignalboxProcess } from '../helpers/signalbox.js';
import { startUpstream, type Upstream } from '../helpers/upstream.js';

const HEAD = 'apiVersion: signalbox.dev/v1alpha1';

function base(up: Upstream, portA: number, portB: number): string {
  return `${HEAD}
kind: Service
metadata: { name: app }
spec:
  port: 8080
  endpoints: [ { address: 127.0.0.1, port: ${up.port} } ]
---
${HEAD}
kind: Gateway
metadata: { name: a }
spec:
  listeners: [ { name: http, port: ${portA}, protocol: HTTP } ]
---
${HEAD}
kind: Gateway
metadata: { name: b }
spec:
  listeners: [ { name: http, port: ${portB}, protocol: HTTP } ]
`;
}

function route(name: string, gateway: string, prefix: string): string {
  return `${HEAD}
kind: HTTPRoute
metadata: { name: ${name} }
spec:
  parentRefs: [ { kind: Gateway, name: ${gateway} } ]
  rules:
    - matches: [ { path: { type: PathPrefix, value: ${prefix} } } ]
      backendRefs: [ { name: app } ]
`;
}

describe('one broken group, through real Envoy', () => {
  let dir: string;
  let up: Upstream;
  let sb: SignalboxProcess;
  let envoyA: Envoy;
  let envoyB: Envoy;
  let portA: number;
  let portB: number;
  const status = async (port: number, p: string) => (await httpGet(`http://127.0.0.1:${port}${p}`).catch(() => ({ status: 0 }))).status;

  before(async () => {
    up = await startUpstream('app');
    portA = await freePort();
    portB = await freePort();
    dir = mkdtempSync(path.join(os.tmpdir(), 'sb-group-failure-'));
    writeFileSync(path.join(dir, 'base.yaml'), base(up, portA, portB));
    writeFileSync(path.join(dir, 'a.yaml'), route('app-a', 'a', '/a'));
    writeFileSync(path.join(dir, 'b.yaml'), route('app-b', 'b', '/b'));
    sb = await startSignalbox({ policies: dir, env: { SIGNALBOX_FAULT_TRANSLATE_ROUTE: 'boom' } });
    envoyA = await startEnvoy({ name: 'group-failure-a', bootstrapYaml: await sb.bootstrap({ gateway: 'a', id: 'gw-a' }) });
    envoyB = await startEnvoy({ name: 'group-failure-b', bootstrapYaml: await sb.bootstrap({ gateway: 'b', id: 'gw-b' }) });
    await waitFor(async () => (await status(portA, '/a/1')) === 200 && (await status(portB, '/b/1')) === 200, {
      what: 'both gateways serving',
      timeoutMs: 20_000,
    });
  });

  after(async () => {
    await envoyA?.stop();
    await envoyB?.stop();
    await sb?.kill();
    await up?.close();
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  test("an edit that breaks gateway a's translation: b takes its change, a keeps serving its last good configuration", async () => {
    const groupsBefore = await sb.admin<{ groups: { group: string; version: string }[] }>('/api/groups');
    const versionA = groupsBefore.groups.find((g) => g.group === 'gateway/a')!.version;

    writeFileSync(path.join(dir, 'a.yaml'), `${route('app-a', 'a', '/a')}---\n${route('boom', 'a', '/boom')}`);
    writeFileSync(path.join(dir, 'b.yaml'), route('app-b', 'b', '/b-new'));

    // b's Envoy serves its new path, and no longer the old one.
    await waitFor(async () => (await status(portB, '/b-new/1')) === 200, { what: 'gateway b serving /b-new', timeoutMs: 20_000 });
    assert.equal(await status(portB, '/b/1'), 404);

    // The errors name the broken group and its documents, with their own code.
    const errors = await sb.admin<{ valid: boolean; errors: { code: string; file: string; doc: number; group?: string; message: string }[] }>('/api/errors');
    assert.equal(errors.valid, false);
    assert.deepEqual(errors.errors.map((e) => [e.code, path.basename(e.file), e.doc, e.group]).sort(), [
      ['SB_TRANSLATE', 'a.yaml', 1, 'gateway/a'],
      ['SB_TRANSLATE', 'a.yaml', 2, 'gateway/a'],
      ['SB_TRANSLATE', 'base.yaml', 2, 'gateway/a'],
    ]);
    assert.match(errors.errors[0]!.message, /proxy group "gateway\/a" cannot be compiled \(translation failed: fault injected/);
    const groups = await sb.admin<{ groups: { group: string; version: string; failed?: { servingLastGood: boolean; errors: string[] } }[] }>('/api/groups');
    const a = groups.groups.find((g) => g.group === 'gateway/a')!;
    assert.equal(a.version, versionA, 'gateway/a keeps the snapshot it had');
    assert.equal(a.failed?.servingLastGood, true);
    assert.equal(groups.groups.find((g) => g.group === 'gateway/b')!.failed, undefined);
    const ready = await sb.admin<{ ready: boolean; degraded?: boolean; reason?: string }>('/readyz');
    assert.equal(ready.degraded, true);
    assert.match(ready.reason ?? '', /gateway\/a/);

    // a's Envoy still serves its last good configuration: the old route answers, the broken edit's does not.
    for (let i = 0; i < 5; i++) assert.equal(await status(portA, `/a/${i}`), 200);
    assert.equal(await status(portA, '/boom/1'), 404);
    // Its proxy is in sync with the snapshot it is served, and says that its group failed.
    const proxyA = await sb.admin<{ state: string; groupFailed?: { servingLastGood: boolean; errors: number } }>('/api/proxies/gw-a');
    assert.equal(proxyA.state, 'SYNCED');
    assert.deepEqual({ ...proxyA.groupFailed, since: undefined }, { since: undefined, servingLastGood: true, errors: 3 });
    assert.equal((await sb.admin<{ groupFailed?: unknown }>('/api/proxies/gw-b')).groupFailed, undefined);
  });

  test('fixing the broken file lets gateway a move on and clears the errors', async () => {
    writeFileSync(path.join(dir, 'a.yaml'), `${route('app-a', 'a', '/a')}---\n${route('fixed', 'a', '/fixed')}`);
    await waitFor(async () => (await status(portA, '/fixed/1')) === 200, { what: 'gateway a serving /fixed', timeoutMs: 20_000 });
    const errors = await sb.admin<{ valid: boolean; errors: unknown[] }>('/api/errors');
    assert.deepEqual(errors, { ...errors, valid: true, errors: [] });
    assert.equal((await sb.admin<{ groupFailed?: unknown }>('/api/proxies/gw-a')).groupFailed, undefined);
    assert.equal(await status(portB, '/b-new/1'), 200);
  });
});
