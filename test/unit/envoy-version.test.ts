// The Envoy a proxy runs: read from its node (user_agent_build_version), refused below the oldest
// supported version with FAILED_PRECONDITION and a record in /api/proxies, and the compiled JWT
// filter given only to proxies on an Envoy it is built for (the others run the Lua fast path).
import * as grpc from '@grpc/grpc-js';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { checkVersionList, compareSemver, envoySupport, envoyVersionList, parseSemver } from '../../src/xds/server/envoy-versions.js';
import { envoyRefusal, envoyVersionOf, identify, type WireNode } from '../../src/xds/server/node.js';
import { ProxyRegistry, ProxyStatus } from '../../src/xds/server/proxy-status.js';
import { JWT_MODULE } from '../../src/xds/translator/filters/jwt-fast.js';
import { repoRoot } from '../helpers/envoy.js';
import { makeNode, type WireNodeSpec } from '../helpers/xds-client.js';
import { CDS, LDS, startSignalbox, type Signalbox } from '../xds/fixture.js';

const list = envoyVersionList();
const pinned = list.versions.find((v) => v.role === 'pinned')!.version;
const newest = list.versions.find((v) => v.role === 'newest')!.version;

/** A node as Envoy sends it: user_agent_name "envoy" and the build version (keepCase fields). */
function envoyNode(id: string, version: string | undefined, metadata: Record<string, string> = {}): WireNodeSpec {
  const n = makeNode({ id, gateway: 'edge', metadata }) as WireNodeSpec & Record<string, unknown>;
  delete n.user_agent_version;
  n.user_agent_name = 'envoy';
  if (version) {
    const [major_number, minor_number, patch] = version.split('.').map(Number);
    n.user_agent_build_version = { version: { major_number, minor_number, patch } };
  }
  return n;
}

const wire = (n: WireNodeSpec) => n as unknown as WireNode;

describe('Envoy versions', () => {
  test('the list: one pinned and one newest, both above the minimum, each with a module ABI', () => {
    const raw = JSON.parse(readFileSync(path.join(repoRoot(), 'envoy-versions.json'), 'utf8'));
    assert.deepEqual(checkVersionList(raw), list);
    assert.ok(compareSemver(parseSemver(newest)!, parseSemver(pinned)!) > 0);
    assert.equal(list.minimum, `${pinned.split('.').slice(0, 2).join('.')}.0`, 'the minimum is the oldest release line the suite runs on');
    for (const v of list.versions) assert.ok(v.jwtModule, `${v.version} has a module build`);
    assert.throws(() => checkVersionList({ minimum: '1.36.0', versions: [{ version: '1.35.9', role: 'pinned' }] }), /below the minimum/);
    assert.throws(() => checkVersionList({ minimum: '1.36', versions: [] }), /minimum/);
    assert.throws(() => checkVersionList({ minimum: '1.36.0', versions: [{ version: '1.36.2', role: 'newest' }] }), /pinned/);
  });

  test("parsing: semver numerically, the node's build version only from Envoy", () => {
    assert.deepEqual(parseSemver('1.40.0'), [1, 40, 0]);
    assert.equal(parseSemver('1.40'), undefined);
    assert.equal(parseSemver('v1.40.0'), undefined);
    assert.ok(compareSemver([1, 9, 0], [1, 10, 0]) < 0, 'numeric, not text');
    assert.equal(envoyVersionOf(wire(envoyNode('a', '1.40.0'))), '1.40.0');
    assert.equal(envoyVersionOf(wire(envoyNode('a', undefined))), undefined, 'Envoy without a build version');
    assert.equal(envoyVersionOf(wire(makeNode({ id: 'a', gateway: 'edge' }))), undefined, 'another xDS client');
    assert.equal(
      envoyVersionOf({ id: 'a', user_agent_name: 'envoy', user_agent_build_version: { version: { major_number: 1, minor_number: -1, patch: 0 } } }),
      undefined,
    );
    assert.equal(identify(wire(envoyNode('a', '1.36.2'))).envoyVersion, '1.36.2');
  });

  test('support: below the minimum refused with the range; tested and module builds by exact version', () => {
    assert.deepEqual(envoySupport(pinned), { supported: true, tested: true, jwtModule: true });
    assert.deepEqual(envoySupport(newest), { supported: true, tested: true, jwtModule: true });
    assert.deepEqual(envoySupport('1.39.3'), { supported: true, tested: false, jwtModule: false });
    assert.deepEqual(envoySupport('1.41.0'), { supported: true, tested: false, jwtModule: false }, 'newer: accepted (untested)');
    const old = envoySupport('1.35.3');
    assert.equal(old.supported, false);
    assert.match(
      old.reason!,
      new RegExp(`Envoy 1\\.35\\.3 is not supported: Signalbox needs Envoy ${list.minimum.replace(/\./g, '\\.')} or later \\(tested: ${pinned}, ${newest}\\)`),
    );
    assert.match(envoyRefusal(identify(wire(envoyNode('old-1', '1.35.3'))))!, /^node "old-1" refused: Envoy 1\.35\.3 is not supported/);
    assert.equal(envoyRefusal(identify(wire(envoyNode('ok-1', list.minimum)))), undefined);
    assert.equal(envoyRefusal(identify(wire(makeNode({ id: 'client', gateway: 'edge' })))), undefined, 'a client that does not say is not refused');
  });

  test('the compiled JWT filter: only on an Envoy it is built for; otherwise the script, with the reason', () => {
    const ask = { 'signalbox.jwt_module': JWT_MODULE.name };
    assert.equal(identify(wire(envoyNode('m1', newest, ask))).group, 'gateway/edge+jwt-module');
    assert.equal(identify(wire(envoyNode('m2', pinned, ask))).group, 'gateway/edge+jwt-module');
    const other = identify(wire(envoyNode('m3', '1.39.3', ask)));
    assert.equal(other.group, 'gateway/edge', 'no module build for 1.39.3: the Lua fast path');
    assert.match(other.jwtModuleFallback!, /built for Envoy .*not 1\.39\.3: this proxy runs the Lua fast path/);
    assert.equal(
      identify(wire(makeNode({ id: 'm4', gateway: 'edge', metadata: ask }))).group,
      'gateway/edge+jwt-module',
      'no version reported: taken at its word',
    );
    const json = new ProxyStatus(other, 'sotw', 'peer').toJSON();
    assert.deepEqual(json.envoy, { version: '1.39.3', tested: false, jwtModule: false });
    assert.equal(json.jwtEngine, 'none', 'nothing sent yet');
    assert.equal(json.jwtEngineNote, other.jwtModuleFallback);
  });

  test('the registry remembers refusals, bounded, until the node connects', () => {
    const r = new ProxyRegistry();
    const node = identify(wire(envoyNode('old', '1.35.0')));
    r.refuse(node, 'p', 'why');
    r.refuse(node, 'p', 'why');
    assert.equal(r.refused().length, 1);
    assert.equal(r.refusal('old')!.attempts, 2);
    for (let i = 0; i < 300; i++) r.refuse({ ...node, id: `n${i}` }, 'p', 'why');
    assert.equal(r.refused().length, 256);
    assert.equal(r.refusal('old'), undefined, 'the oldest is forgotten first');
    r.add(new ProxyStatus({ ...node, id: 'n299' }, 'sotw', 'p'));
    assert.equal(r.refusal('n299'), undefined);
  });
});

describe('an Envoy below the minimum, through the xDS server', () => {
  let sb: Signalbox;
  before(async () => {
    sb = await startSignalbox();
  });
  after(async () => {
    await sb.stop();
  });

  test('refused with FAILED_PRECONDITION and the supported range; listed under refused in /api/proxies; a supported one is served', async () => {
    const old = sb.ads.sotw({ node: envoyNode('old-envoy', '1.35.3') });
    old.request(CDS);
    const st = await old.closed();
    assert.equal(grpc.status[st.code], grpc.status[grpc.status.FAILED_PRECONDITION], st.details);
    assert.match(st.details, new RegExp(`Envoy 1\\.35\\.3 is not supported: Signalbox needs Envoy ${list.minimum.replace(/\./g, '\\.')} or later`));
    assert.equal(old.history.length, 0, 'nothing is sent to it');
    const { proxies, refused } = await sb.get<{ proxies: { id: string }[]; refused: { id: string; envoyVersion: string; reason: string; attempts: number }[] }>(
      '/api/proxies',
    );
    assert.ok(!proxies.some((p) => p.id === 'old-envoy'));
    const r = refused.find((p) => p.id === 'old-envoy');
    assert.equal(r?.envoyVersion, '1.35.3');
    assert.match(r!.reason, /not supported/);
    assert.equal(await sb.metric('signalbox_xds_stream_errors_total', { reason: 'envoy-version' }), 1);

    const ok = sb.ads.sotw({ node: envoyNode('new-envoy', newest), follow: true, autoAck: true });
    ok.request(CDS);
    ok.request(LDS);
    await ok.nextOf(CDS);
    const p = await sb.get<{ envoy: { version: string; tested: boolean }; jwtEngine: string }>('/api/proxies/new-envoy');
    assert.deepEqual(p.envoy, { version: newest, tested: true, jwtModule: true });
    const gone = await fetch(`http://127.0.0.1:${sb.server.adminPort}/api/proxies/old-envoy`);
    assert.equal(gone.status, 409, 'the refused node by id: why');
    assert.match(((await gone.json()) as { error: string }).error, /not supported/);
    ok.cancel();

    // On an Envoy the module is not built for, a proxy that asks for it runs the script, and says why.
    const fb = sb.ads.sotw({ node: envoyNode('fallback-envoy', '1.39.3', { 'signalbox.jwt_module': JWT_MODULE.name }), follow: true, autoAck: true });
    fb.request(CDS);
    await fb.nextOf(CDS);
    const f = await sb.get<{ group: string; envoy: unknown; jwtEngineNote: string }>('/api/proxies/fallback-envoy');
    assert.equal(f.group, 'gateway/edge');
    assert.deepEqual(f.envoy, { version: '1.39.3', tested: false, jwtModule: false });
    assert.match(f.jwtEngineNote, /runs the Lua fast path/);
    fb.cancel();
  });
});
