// For every golden case (and variant): what `signalbox compile` prints is what a proxy connected
// to `signalbox serve` receives. A real Signalbox serves the case's directory with the serve flags
// of the variant; a raw ADS client (Delta, TLS, token) subscribes as a gateway proxy of each
// group, and every resource it receives is compared with the compile of the same directory: same
// names per type, same versions, the same bytes, and the same decoded message as `compile`'s
// printed JSON (secrets: with the private key redacted, as printed). The compile is given what
// only the running server knows: the ext_authz port it bound and its mesh CA's trust bundle.
// Each proxy's own identity certificate (made per stream) is not part of a group's configuration.
import assert from 'node:assert/strict';
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { describe, test } from 'node:test';
import { compileDir, compileGroupsOptions, type ServeLikeOptions } from '../../src/cli/compile.js';
import { startServer } from '../../src/cli/serve.js';
import { resolveServeConfig } from '../../src/config/settings.js';
import { compileGroups, groupResources, type PrintedGroup } from '../../src/controller/compile-groups.js';
import { formatPolicyError } from '../../src/errors.js';
import { buildModel } from '../../src/controller/build-model.js';
import { loadPolicyDir } from '../../src/sources/files/loader.js';
import { AUTHZ_SERVER_ID } from '../../src/translate/jwt.js';
import { lookupType } from '../../src/xds/resources/protos.js';
import { messageName, PUSH_ORDER, SHORT_NAME, TypeUrl } from '../../src/xds/resources/type-urls.js';
import { redactSecret } from '../../src/xds/translator/secret.js';
import { xdsCa } from '../helpers/credentials.js';
import { repoRoot } from '../helpers/envoy.js';
import { waitFor } from '../helpers/net.js';
import { AdsClient, gatewayNode, type AnyMsg } from '../helpers/xds-client.js';
import { tokenFor } from './fixture.js';

const CASES = path.join(repoRoot(), 'test', 'golden', 'cases');

/** Each case with its variants (test/golden/cases/<case>/variants.json: compile options by name). */
function casesWithVariants(): { name: string; variant: string; opts: ServeLikeOptions }[] {
  const out: { name: string; variant: string; opts: ServeLikeOptions }[] = [];
  for (const name of readdirSync(CASES).sort()) {
    if (!statSync(path.join(CASES, name)).isDirectory()) continue;
    out.push({ name, variant: '', opts: {} });
    const file = path.join(CASES, name, 'variants.json');
    if (!existsSync(file)) continue;
    for (const [variant, opts] of Object.entries(JSON.parse(readFileSync(file, 'utf8')) as Record<string, ServeLikeOptions>)) out.push({ name, variant, opts });
  }
  return out;
}

/** The serve flags that give what the compile options describe. */
function serveFlags(opts: ServeLikeOptions): Record<string, string> {
  const flags: Record<string, string> = {};
  if (opts.accessLogSampling !== undefined) flags['access-log-sampling'] = String(opts.accessLogSampling);
  if (opts.jwtFastPathModule) flags['jwt-fast-path'] = 'module';
  else if (opts.jwtFastPath === false) flags['jwt-fast-path'] = 'off';
  return flags;
}

/** A message decoded as plain JSON (the form both sides are compared in). */
function decoded(type: string, bytes: Uint8Array): unknown {
  const t = lookupType(messageName(type));
  return t.toObject(t.decode(bytes), { enums: String, longs: Number, json: true, defaults: false });
}

/** `compile`'s printed JSON, through the same encoding (protobuf drops defaults; the JSON form is canonical). */
function normalized(type: string, json: Record<string, unknown>): unknown {
  const t = lookupType(messageName(type));
  return decoded(type, t.encode(t.fromObject(json)).finish());
}

describe('compile output equals what serve sends a connected proxy', () => {
  for (const { name, variant, opts } of casesWithVariants()) {
    test(variant ? `${name} (${variant})` : name, async () => {
      const root = mkdtempSync(path.join(os.tmpdir(), 'signalbox-compile-serve-'));
      const dataDir = path.join(root, 'data');
      const dir = path.join(CASES, name);
      const server = await startServer(
        resolveServeConfig(
          {
            policies: dir,
            'data-dir': dataDir,
            'xds-address': '127.0.0.1',
            'xds-port': '0',
            'admin-address': '127.0.0.1',
            'admin-port': '0',
            'authz-port': '0',
            'log-level': 'silent',
            ...serveFlags(opts),
          },
          {},
        ),
      );
      const ads = new AdsClient(`127.0.0.1:${server.xdsPort}`, {}, { ca: xdsCa(dataDir), token: (node) => tokenFor(dataDir, node) });
      try {
        assert.deepEqual(server.pipeline.errors.map(formatPolicyError), [], 'serve accepts the case');
        // What only the running server knows: where its ext_authz service listens, its CA.
        const known: ServeLikeOptions = {
          ...opts,
          authz: { address: '127.0.0.1', port: server.authzPort!, tls: { serverId: AUTHZ_SERVER_ID } },
          trustBundlePem: xdsCa(dataDir).toString('utf8'),
        };
        const printed = await compileDir(dir, [], known);
        if (!printed.ok) assert.fail(printed.errors.map(formatPolicyError).join('\n'));
        const loaded = await loadPolicyDir(dir);
        const model = (await buildModel(loaded.docs, dir)).model!;
        const compiled = compileGroups(model, compileGroupsOptions(known));
        assert.deepEqual([...compiled.keys()], Object.keys(printed.groups), 'the same groups');

        for (const [group, g] of compiled) {
          const gateway = g.ir.key.kind === 'gateway' ? g.ir.key.gateway : assert.fail(`golden group ${group} is not a gateway's`);
          const want = groupResources(g);
          const s = ads.delta({ node: gatewayNode(`${name}-${variant || 'default'}-${gateway}`, gateway), autoAck: true });
          for (const t of PUSH_ORDER) {
            const names = [...want.get(t)!.keys()];
            if (t === TypeUrl.Cluster || t === TypeUrl.Listener) s.subscribe(t, ['*']);
            else if (names.length) s.subscribe(t, names);
          }
          const got = new Map<string, Map<string, { version: string; any: AnyMsg }>>(PUSH_ORDER.map((t) => [t, new Map()]));
          await waitFor(
            () => {
              for (const r of s.drain()) for (const x of r.resources) if (x.resource) got.get(r.type_url)!.set(x.name, { version: x.version, any: x.resource });
              return PUSH_ORDER.every((t) => [...want.get(t)!.keys()].every((n) => got.get(t)!.has(n)));
            },
            { timeoutMs: 10_000, what: `${group}: every resource compile lists (${s.summary()})` },
          );
          s.end();
          for (const t of PUSH_ORDER) {
            const type = SHORT_NAME[t];
            assert.deepEqual([...got.get(t)!.keys()].sort(), [...want.get(t)!.keys()].sort(), `${group}: the ${type} names`);
            const list: PrintedGroup[string] = printed.groups[group]![type]!;
            assert.deepEqual(
              list.map((r) => r.name),
              [...want.get(t)!.keys()].sort(),
              `${group}: compile prints every ${type}`,
            );
            for (const p of list) {
              const wire = got.get(t)!.get(p.name)!;
              const r = want.get(t)!.get(p.name)!;
              assert.equal(wire.any.type_url, t);
              assert.equal(wire.version, p.version, `${group}: ${type} ${p.name}: the version compile prints is the one served`);
              assert.ok(Buffer.from(wire.any.value).equals(Buffer.from(r.bytes)), `${group}: ${type} ${p.name}: the bytes served are compile's`);
              const received = decoded(t, wire.any.value) as Record<string, unknown>;
              const shown = t === TypeUrl.Secret ? redactSecret(received) : received;
              assert.deepEqual(
                shown,
                normalized(t, p.resource as Record<string, unknown>),
                `${group}: ${type} ${p.name}: decoded, what serve sent is what compile printed`,
              );
            }
          }
        }
      } finally {
        ads.close();
        await server.stop();
        rmSync(root, { recursive: true, force: true, maxRetries: 5, retryDelay: 50 });
      }
    });
  }
});
