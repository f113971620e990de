// The last good configuration across restarts, in process: what is saved (0600, the applied texts
// only), that a second pipeline on the same data directory serves byte-identical resources under
// the same versions while the policy directory is invalid (a broken certificate included: the
// saved copy is used), that a damaged saved file is reported by name and serves nothing, and that
// `serve` still starts with one.
import assert from 'node:assert/strict';
import { chmodSync, existsSync, mkdtempSync, readFileSync, rmSync, statSync, unlinkSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { Writable } from 'node:stream';
import { after, describe, test } from 'node:test';
import { exportJWK, generateKeyPair, type JWK } from 'jose';
import pino from 'pino';
import { startServer } from '../../src/cli/serve.js';
import { resolveServeConfig } from '../../src/config/settings.js';
import { LAST_GOOD_FILE, LastGoodStore, TextKeepingParseCache } from '../../src/controller/last-good.js';
import { Pipeline } from '../../src/controller/pipeline.js';
import { policySettingsKey } from '../../src/model/jwt.js';
import { createLogger } from '../../src/observability/logger.js';
import { Metrics } from '../../src/observability/metrics.js';
import { displayPath } from '../../src/sources/files/loader.js';
import { SnapshotCache } from '../../src/xds/cache/snapshot-cache.js';
import type { JwtKeysOf } from '../../src/translate/jwt.js';
import { repoRoot } from '../helpers/envoy.js';
import { waitFor } from '../helpers/net.js';
import { doc, docs, policyDir, removePolicyDirs } from './policy-dir.js';

const silent = createLogger({ level: 'silent' });
const CERTS = path.join(repoRoot(), 'test/golden/cases/https-gateway/certs');
const CERT = readFileSync(path.join(CERTS, 'shop.crt'), 'utf8');
const KEY = readFileSync(path.join(CERTS, 'shop.key'), 'utf8');

const dirs: string[] = [];
after(() => {
  removePolicyDirs();
  for (const d of dirs) rmSync(d, { recursive: true, force: true });
});
function dataDir(): string {
  const d = mkdtempSync(path.join(os.tmpdir(), 'sb-lastgood-data-'));
  dirs.push(d);
  return d;
}

/** A policy directory with an HTTPS gateway (certificate files), a sidecar-capable Service and a JWTPolicy reading a JWKS file. */
async function policies(): Promise<{ dir: string; jwk: JWK }> {
  const { publicKey } = await generateKeyPair('ES256');
  const jwk = { ...(await exportJWK(publicKey)), kid: 'k1', alg: 'ES256', use: 'sig' };
  const dir = policyDir({
    'services.yaml': docs(
      doc('Service', 'shop', '{ port: 8080, endpoints: [ { address: 127.0.0.1, port: 9010 } ] }'),
      doc('Service', 'orders', '{ port: 8080, endpoints: [ { address: 127.0.0.1, port: 9011, sidecarPort: 15006 } ] }'),
    ),
    'gateway.yaml': doc(
      'Gateway',
      'public',
      `  listeners:
    - { name: http, port: 8080, protocol: HTTP }
    - { name: https, port: 8443, protocol: HTTPS, tls: { certificateFile: certs/shop.crt, privateKeyFile: certs/shop.key } }`,
    ),
    'routes/shop.yaml': docs(
      doc('HTTPRoute', 'shop', '{ parentRefs: [ { kind: Gateway, name: public } ], rules: [ { name: all, backendRefs: [ { name: shop } ] } ] }'),
      doc(
        'JWTPolicy',
        'shop-users',
        '{ targetRef: { kind: HTTPRoute, name: shop, sectionName: all }, issuer: "https://issuer.test/", jwks: { file: keys/jwks.json } }',
      ),
    ),
    'certs/shop.crt': CERT,
    'certs/shop.key': KEY,
    'keys/jwks.json': JSON.stringify({ keys: [jwk] }),
  });
  return { dir, jwk };
}

/**
 * The keys the authz service would hold: read from the policy's JWKS path now (a restored policy
 * that pointed at a copy that no longer exists would throw here).
 */
const fileKeys: JwtKeysOf = (p) =>
  p.jwks.kind === 'file' ? (JSON.parse(readFileSync(p.jwks.path, 'utf8')) as { keys: JWK[] }).keys : p.jwks.kind === 'inline' ? p.jwks.keys : undefined;

function pipelineOn(policyDirPath: string, data: string, extra: { logger?: pino.Logger; metrics?: Metrics } = {}) {
  const cache = new SnapshotCache();
  const metrics = extra.metrics ?? new Metrics();
  const pipeline = new Pipeline({
    policyDir: policyDirPath,
    dataDir: data,
    cache,
    logger: extra.logger ?? silent,
    metrics,
    persistLastGood: true,
    jwtKeys: fileKeys,
    jwtFastPath: true,
  });
  return { pipeline, cache, metrics };
}

/** Every group's per-type versions and the bytes of each resource, to compare two caches. */
function dump(cache: SnapshotCache): Record<string, { versions: Record<string, string>; bytes: Record<string, string> }> {
  const out: Record<string, { versions: Record<string, string>; bytes: Record<string, string> }> = {};
  for (const g of cache.groupNames()) {
    const s = cache.get(g);
    const bytes: Record<string, string> = {};
    for (const [type, map] of s.resources) for (const [name, r] of map) bytes[`${type}|${name}`] = Buffer.from(r.bytes).toString('base64');
    out[g] = { versions: Object.fromEntries(s.versions), bytes };
  }
  return out;
}

async function gauge(metrics: Metrics, name: string): Promise<number> {
  const m = await metrics.registry.getSingleMetric(name)!.get();
  return m.values[0]?.value ?? 0;
}

describe('last good configuration: save and restore', () => {
  test('a restart on an invalid directory (its certificate broken) serves the saved configuration: same bytes, same versions; a valid edit replaces it', async () => {
    const { dir } = await policies();
    const data = dataDir();
    const lines: string[] = [];
    const logger = pino(
      { level: 'debug' },
      new Writable({
        write: (c, _e, cb) => {
          lines.push(String(c));
          cb();
        },
      }),
    );

    const a = pipelineOn(dir, data, { logger });
    const first = await a.pipeline.reload();
    assert.equal(first.applied, true, JSON.stringify(first.errors));
    const before = dump(a.cache);
    assert.deepEqual(Object.keys(before), ['gateway/public']);
    const file = path.join(data, LAST_GOOD_FILE);
    assert.equal(statSync(file).mode & 0o777, 0o600, 'it holds the gateway private key: owner only');
    const saved = await new LastGoodStore({ dataDir: data, policyDir: dir }).read();
    assert.deepEqual(
      saved!.files.map((f) => f.file),
      ['gateway.yaml', 'routes/shop.yaml', 'services.yaml'],
    );
    assert.deepEqual(
      saved!.references.map((r) => r.file),
      ['certs/shop.crt', 'certs/shop.key', 'keys/jwks.json'],
    );
    assert.equal(saved!.references[1]!.text, KEY);
    assert.deepEqual(saved!.groups, { 'gateway/public': a.cache.get('gateway/public').version });

    // The certificate itself is the broken file: the restore must use the saved copy.
    writeFileSync(path.join(dir, 'certs/shop.crt'), 'not a certificate\n');
    const rejected = await a.pipeline.reload();
    assert.equal(rejected.applied, false);
    assert.deepEqual(dump(a.cache), before, 'the running process keeps its configuration');
    assert.deepEqual(await new LastGoodStore({ dataDir: data, policyDir: dir }).read(), saved, 'a rejected load does not overwrite the saved configuration');

    const b = pipelineOn(dir, data, { logger });
    const r = await b.pipeline.reload();
    assert.equal(r.applied, false);
    assert.equal(b.pipeline.ready, true, 'the restored configuration makes it ready');
    assert.deepEqual(
      r.errors.map((e) => [e.file, e.path, e.message]),
      [[displayPath(path.join(dir, 'gateway.yaml')), 'spec.listeners[1].tls.certificateFile', 'certs/shop.crt is not a PEM certificate']],
    );
    assert.deepEqual(dump(b.cache), before, 'byte-identical resources under the same versions');
    const policyA = a.pipeline.model!.jwt!.policies.get('shop-users')!;
    const policyB = b.pipeline.model!.jwt!.policies.get('shop-users')!;
    assert.equal(policySettingsKey(policyB), policySettingsKey(policyA), 'the JWT policy names the JWKS file in the policy directory, as before');
    const kept = b.pipeline.servingLastGood!;
    assert.ok(kept, 'serving the last good configuration');
    assert.equal(kept.restoredFrom, displayPath(file));
    assert.equal(kept.appliedAt?.toISOString(), saved!.appliedAt);
    assert.equal(await gauge(b.metrics, 'signalbox_serving_last_good'), 1);
    assert.equal(existsSync(path.join(data, 'last-good.files')), false, 'the scratch copy of the keys is gone once the model is built');
    assert.ok(!lines.some((l) => l.includes('BEGIN PRIVATE KEY') || l.includes(KEY.split('\n')[1]!)), 'no private key in any log line');

    // The next valid edit replaces it.
    writeFileSync(path.join(dir, 'certs/shop.crt'), CERT);
    const fixed = await b.pipeline.reload();
    assert.equal(fixed.applied, true, JSON.stringify(fixed.errors));
    assert.equal(b.pipeline.servingLastGood, undefined);
    assert.equal(await gauge(b.metrics, 'signalbox_serving_last_good'), 0);
    assert.deepEqual(dump(b.cache), before);
  });

  test('a running process that gets an invalid edit says it serves the last good configuration, and still builds a sidecar group first asked for now', async () => {
    const { dir } = await policies();
    const p = pipelineOn(dir, dataDir());
    assert.equal((await p.pipeline.reload()).applied, true);
    assert.equal(await gauge(p.metrics, 'signalbox_serving_last_good'), 0);
    writeFileSync(path.join(dir, 'broken.yaml'), 'apiVersion: signalbox.dev/v1alpha1\nkind: Service\nmetadata: { name: x }\nspec: { port: nope }\n');
    assert.equal((await p.pipeline.reload()).applied, false);
    const kept = p.pipeline.servingLastGood!;
    assert.ok(kept && kept.restoredFrom === undefined && kept.errors === 1);
    assert.equal(await gauge(p.metrics, 'signalbox_serving_last_good'), 1);
    const group = 'sidecar/orders/9011/15006/15001';
    p.cache.emit('demand', group);
    await waitFor(() => p.cache.has(group), { what: 'the sidecar group built from the last good model', timeoutMs: 5_000 });
    assert.ok(p.cache.get(group).versions.size > 0);
  });

  test('saves after one-file edits write what JSON.stringify writes, every file at its current text, with a checksum that holds', async () => {
    const { dir } = await policies();
    const data = dataDir();
    const p = pipelineOn(dir, data);
    assert.equal((await p.pipeline.reload()).applied, true);
    const store = new LastGoodStore({ dataDir: data, policyDir: dir });
    const names = ['gateway.yaml', 'routes/shop.yaml', 'services.yaml'];
    const check = async (what: string) => {
      const text = readFileSync(path.join(data, LAST_GOOD_FILE), 'utf8');
      assert.equal(text, `${JSON.stringify(JSON.parse(text))}\n`, `${what}: the bytes JSON.stringify gives`);
      const saved = (await store.read())!; // throws if the checksum does not hold
      assert.deepEqual(
        saved.files.map((f) => [f.file, f.text]),
        names.map((n) => [n, readFileSync(path.join(dir, n), 'utf8')]),
        `${what}: every file's current text`,
      );
    };
    await check('first load');
    const routes = path.join(dir, 'routes/shop.yaml');
    const services = path.join(dir, 'services.yaml');
    const edits: [string, (t: string) => string][] = [
      [routes, (t) => t.replace('name: all', 'name: all2').replace('sectionName: all', 'sectionName: all2')],
      [services, (t) => t.replace('port: 9010', 'port: 9012')],
      [routes, (t) => t.replace('name: all2', 'name: all3').replace('sectionName: all2', 'sectionName: all3')],
    ];
    for (const [i, [file, edit]] of edits.entries()) {
      writeFileSync(file, edit(readFileSync(file, 'utf8')));
      assert.equal((await p.pipeline.reload({ paths: new Set([file]), full: false })).applied, true);
      await check(`edit ${i + 1}`);
    }
    // Paths are kept per working directory: after a chdir the saved names are still the policy directory's.
    const cwd = process.cwd();
    try {
      process.chdir(path.join(dir, 'routes'));
      writeFileSync(services, readFileSync(services, 'utf8').replace('port: 9012', 'port: 9013'));
      assert.equal((await p.pipeline.reload({ paths: new Set([services]), full: false })).applied, true);
      await check('after a chdir');
    } finally {
      process.chdir(cwd);
    }
  });

  test('a save takes only the texts whose documents were applied', async () => {
    const { dir } = await policies();
    const data = dataDir();
    const p = pipelineOn(dir, data);
    assert.equal((await p.pipeline.reload()).applied, true);
    const store = new LastGoodStore({ dataDir: data, policyDir: dir });
    const model = p.pipeline.model!;
    const files = ['gateway.yaml', 'routes/shop.yaml', 'services.yaml'].map((f) => displayPath(path.join(dir, f)));
    const cache = new TextKeepingParseCache();
    for (const f of files) cache.parse(readFileSync(path.resolve(f), 'utf8'), f);
    const applied = files.flatMap((f) => cache.textOf(f)!.docs);
    // The cache has since parsed another text of one file (an edit after the load): not saved.
    const edited = new TextKeepingParseCache();
    for (const f of files) edited.parse(readFileSync(path.resolve(f), 'utf8'), f);
    edited.parse(readFileSync(path.resolve(files[0]!), 'utf8').replace('8443', '9443'), files[0]!);
    assert.equal(
      await store.save({ files, fileDocs: files.flatMap((f) => cache.textOf(f)!.docs), textOf: (f) => edited.textOf(f), model, groups: {} }),
      'changed-underneath',
    );
    // A file the cache never saw: not saved.
    assert.equal(
      await store.save({ files, fileDocs: applied, textOf: (f) => (f === files[1] ? undefined : cache.textOf(f)), model, groups: {} }),
      'changed-underneath',
    );
    assert.equal(await store.save({ files, fileDocs: applied, textOf: (f) => cache.textOf(f), model, groups: {} }), 'saved');
    assert.equal(
      await store.save({ files, fileDocs: applied, textOf: (f) => cache.textOf(f), model, groups: {} }),
      'unchanged',
      'the same inputs are not written again',
    );
    // A forgotten file is forgotten by the text keeper too.
    cache.retain(new Set(files.slice(1)));
    assert.equal(cache.textOf(files[0]!), undefined);
  });
});

describe('last good configuration: a damaged saved file', () => {
  /** A saved file from a real apply, then damaged by `damage`. */
  async function damaged(damage: (text: string) => string): Promise<{ dir: string; data: string; file: string }> {
    const { dir } = await policies();
    const data = dataDir();
    assert.equal((await pipelineOn(dir, data).pipeline.reload()).applied, true);
    const file = path.join(data, LAST_GOOD_FILE);
    writeFileSync(file, damage(readFileSync(file, 'utf8')));
    writeFileSync(path.join(dir, 'broken.yaml'), 'kind: [unclosed\n');
    return { dir, data, file };
  }

  const cases: [string, (t: string) => string, RegExp][] = [
    ['truncated', (t) => t.slice(0, Math.floor(t.length / 2)), /not JSON/],
    ['one byte of a policy changed', (t) => t.replace('port: 8080', 'port: 8081'), /checksum does not match/],
    ['another format', (t) => t.replace('signalbox.last-good/v1', 'signalbox.last-good/v0'), /not a saved configuration/],
    ['empty', () => '', /not JSON/],
  ];
  for (const [what, damage, message] of cases) {
    test(`${what}: detected at start, reported naming the file, nothing served`, async () => {
      const { dir, data, file } = await damaged(damage);
      const p = pipelineOn(dir, data);
      const r = await p.pipeline.reload();
      assert.equal(r.applied, false);
      assert.equal(p.pipeline.ready, false, 'nothing is served');
      assert.equal(p.cache.groupNames().length, 0);
      const problem = r.errors.find((e) => e.file === displayPath(file));
      assert.ok(problem, `an error names ${displayPath(file)}: ${JSON.stringify(r.errors)}`);
      assert.match(problem.message, message);
      assert.ok(
        r.errors.some((e) => e.file === displayPath(path.join(dir, 'broken.yaml'))),
        'the policy errors are listed too',
      );
      assert.equal(p.pipeline.servingLastGood, undefined);
      // It stays listed on later rejected loads, and a valid load clears it (and saves anew).
      assert.ok((await p.pipeline.reload()).errors.some((e) => e.file === displayPath(file)));
      unlinkSync(path.join(dir, 'broken.yaml'));
      const fixed = await p.pipeline.reload();
      assert.equal(fixed.applied, true, JSON.stringify(fixed.errors));
      assert.ok(await new LastGoodStore({ dataDir: data, policyDir: dir }).read(), 'a good file again');
    });
  }

  test('a saved path that leaves the policy directory is refused (the checksum matching does not make it safe)', async () => {
    const { dir, data, file } = await damaged((t) => t);
    const env = JSON.parse(readFileSync(file, 'utf8'));
    env.config.references[0].file = '../../outside.pem';
    const { createHash } = await import('node:crypto');
    env.sha256 = createHash('sha256').update(JSON.stringify(env.config)).digest('hex');
    writeFileSync(file, JSON.stringify(env));
    const p = pipelineOn(dir, data);
    const r = await p.pipeline.reload();
    assert.equal(p.pipeline.ready, false);
    assert.match(
      r.errors.find((e) => e.file === displayPath(file))?.message ?? '',
      /malformed: references\.0\.file: must be a relative path inside the policy directory/,
    );
    assert.equal(existsSync(path.join(data, '..', '..', 'outside.pem')), false);
  });

  test('a file saved for another policy directory is not served', async () => {
    const { data } = await damaged((t) => t);
    const other = policyDir({ 'broken.yaml': 'kind: [unclosed\n' });
    const p = pipelineOn(other, data);
    const r = await p.pipeline.reload();
    assert.equal(p.pipeline.ready, false);
    assert.match(r.errors.find((e) => e.file === displayPath(path.join(data, LAST_GOOD_FILE)))?.message ?? '', /saved for the policy directory .* not /);
  });

  test('`serve` with a damaged saved file and an invalid directory: starts, /readyz 503, /api/errors names the file; a valid edit serves and saves anew', async () => {
    const { dir, data, file } = await damaged((t) => t.slice(0, 100));
    chmodSync(file, 0o600);
    const cfg = resolveServeConfig(
      { policies: dir, 'xds-address': '127.0.0.1', 'xds-port': '0', 'admin-port': '0', 'data-dir': data, 'authz-port': '0', 'watch-debounce-ms': '20' },
      {},
    );
    const server = await startServer(cfg, silent);
    try {
      const admin = (p: string) => fetch(`http://127.0.0.1:${server.adminPort}${p}`);
      assert.equal((await admin('/readyz')).status, 503);
      const errors = (await (await admin('/api/errors')).json()) as { errors: { file: string; text: string }[] };
      const named = errors.errors.find((e) => e.file === displayPath(file));
      assert.ok(named, JSON.stringify(errors));
      assert.match(named.text, /last-good\.json: the last good configuration saved here cannot be served: it is not JSON/);
      assert.match(await (await admin('/metrics')).text(), /^signalbox_serving_last_good 0$/m);
      unlinkSync(path.join(dir, 'broken.yaml'));
      await waitFor(async () => (await admin('/readyz')).status === 200, { what: 'ready after the fix', timeoutMs: 10_000 });
      assert.deepEqual(((await (await admin('/api/errors')).json()) as { errors: unknown[] }).errors, []);
      // Saved once the configuration is applied (ready comes first: proxies are not kept waiting for the disk).
      await waitFor(async () => !!(await new LastGoodStore({ dataDir: data, policyDir: dir }).read().catch(() => undefined)), {
        what: 'saved anew',
        timeoutMs: 5_000,
      });
    } finally {
      await server.stop();
    }
  });
});
