// Documents that are not Signalbox documents (issue 18, item 4): an Envoy bootstrap saved into the
// policy directory (`signalbox bootstrap > policies/envoy.yaml`), a Kubernetes manifest. They are
// skipped with a warning naming the file and document, the rest of the directory applies, and
// `--strict` makes them errors. The incremental reload and the last good configuration treat the
// warning like a full load does.
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync, unlinkSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, describe, test } from 'node:test';
import { bootstrapYaml } from '../../src/cli/bootstrap.js';
import { resolveServeConfig, resolveStrict } from '../../src/config/settings.js';
import { LastGoodStore } from '../../src/controller/last-good.js';
import { Pipeline } from '../../src/controller/pipeline.js';
import { ErrorCode, formatPolicyError, SignalboxError, type PolicyError } from '../../src/errors.js';
import { createLogger } from '../../src/observability/logger.js';
import { Metrics } from '../../src/observability/metrics.js';
import { loadPolicyDir, parsePolicyText, PolicyParseCache, YAML_LIMITS } from '../../src/sources/files/loader.js';
import { SnapshotCache } from '../../src/xds/cache/snapshot-cache.js';
import { TypeUrl } from '../../src/xds/resources/type-urls.js';
import { repoRoot } from '../helpers/envoy.js';
import { doc, docs, policyDir, removePolicyDirs } from './policy-dir.js';

const dataDirs: string[] = [];
after(() => {
  removePolicyDirs();
  for (const d of dataDirs) rmSync(d, { recursive: true, force: true });
});

/** What `signalbox bootstrap --gateway public` prints (TLS files named, not read). */
const ENVOY_BOOTSTRAP = bootstrapYaml({
  gateway: 'public',
  id: 'public-1',
  xdsAddress: '127.0.0.1:18000',
  adminPort: 9901,
  tls: { caFile: '/tmp/xds-ca.pem', certFile: '/tmp/token.crt', keyFile: '/tmp/token.key' },
});
const K8S_SERVICE = 'apiVersion: v1\nkind: Service\nmetadata: { name: orders }\nspec:\n  ports: [ { port: 80 } ]\n';

const SERVICE = doc('Service', 'orders', '{ port: 8080, endpoints: [ { address: 127.0.0.1, port: 9001 } ] }');
const GATEWAY = doc('Gateway', 'public', '{ listeners: [ { name: http, port: 8080, protocol: HTTP } ] }');
const route = (service: string) =>
  doc('HTTPRoute', 'orders', `  parentRefs: [ { kind: Gateway, name: public } ]\n  rules:\n    - backendRefs: [ { name: ${service} } ]`);
const OTHER = doc('Service', 'other', '{ port: 8080, endpoints: [ { address: 127.0.0.1, port: 9002 } ] }');

const formatted = (list: PolicyError[]) => list.map(formatPolicyError);
const silent = createLogger({ level: 'silent' });

describe('parsing one file', () => {
  test('an Envoy bootstrap is one warning naming the file and document; nothing of it is read as policy', () => {
    assert.match(ENVOY_BOOTSTRAP, /^node:/m, 'the fixture is a real bootstrap');
    const r = parsePolicyText(ENVOY_BOOTSTRAP, 'policies/envoy.yaml');
    assert.deepEqual(r.errors, []);
    assert.deepEqual(r.docs, []);
    assert.deepEqual(formatted(r.warnings), [
      'policies/envoy.yaml#1: not a Signalbox document (it has neither apiVersion nor kind; Signalbox documents have apiVersion: signalbox.dev/v1alpha1): skipped; keep other YAML out of the policy directory (--strict refuses it) (line 1)',
    ]);
    assert.equal(r.warnings[0]!.code, ErrorCode.NOT_SIGNALBOX);
  });

  test('a document of another API group is skipped and its apiVersion quoted; the Signalbox documents around it load', () => {
    const r = parsePolicyText(docs(SERVICE, K8S_SERVICE, OTHER), 'mixed.yaml');
    assert.deepEqual(r.errors, []);
    assert.deepEqual(
      r.docs.map((d) => [d.name, d.source.doc]),
      [
        ['orders', 1],
        ['other', 3],
      ],
    );
    assert.deepEqual(
      r.warnings.map((w) => [w.file, w.doc, w.line]),
      [['mixed.yaml', 2, 6]],
      'document 2 starts on line 6',
    );
    assert.match(r.warnings[0]!.message, /^not a Signalbox document \(its apiVersion is "v1"; /);
    for (const other of ['apps/v1', 'gateway.networking.k8s.io/v1', 'networking.istio.io/v1beta1']) {
      const w = parsePolicyText(K8S_SERVICE.replace('apiVersion: v1', `apiVersion: ${other}`), 'k.yaml');
      assert.deepEqual([w.errors.length, w.warnings.length], [0, 1], other);
    }
  });

  test('what is meant to be a Signalbox document stays an error: a wrong version, a typo, a kind without apiVersion, no kind, not a mapping', () => {
    const cases: [string, string, RegExp][] = [
      ['another version of signalbox.dev', SERVICE.replace('v1alpha1', 'v1'), /apiVersion: must be "signalbox\.dev\/v1alpha1"/],
      ['a misspelt group', SERVICE.replace('signalbox.dev', 'signalbx.dev'), /apiVersion: must be "signalbox\.dev\/v1alpha1"/],
      ['a misspelt version', SERVICE.replace('v1alpha1', 'v1apha1'), /apiVersion: must be "signalbox\.dev\/v1alpha1"/],
      ['another spelling of the name', SERVICE.replace('signalbox.dev', 'SignalBox.io'), /apiVersion: must be "signalbox\.dev\/v1alpha1"/],
      ['a kind without apiVersion', SERVICE.replace('apiVersion: signalbox.dev/v1alpha1\n', ''), /apiVersion: must be "signalbox\.dev\/v1alpha1"/],
      [
        'a misspelt kind without apiVersion',
        SERVICE.replace('apiVersion: signalbox.dev/v1alpha1\n', '').replace('kind: Service', 'kind: Servce'),
        /unknown kind "Servce"/,
      ],
      ['a Signalbox apiVersion without kind', 'apiVersion: signalbox.dev/v1alpha1\nmetadata: { name: a }\n', /kind: required/],
      ['an apiVersion that is not a string', SERVICE.replace('apiVersion: signalbox.dev/v1alpha1', 'apiVersion: [ v1 ]'), /apiVersion: must be/],
      ['a list', '- a\n- b\n', /must be a mapping/],
    ];
    for (const [what, text, want] of cases) {
      const r = parsePolicyText(text, 'p.yaml');
      assert.deepEqual(r.warnings, [], what);
      assert.ok(r.errors.length > 0, `${what}: an error`);
      assert.match(formatted(r.errors).join('\n'), want, what);
    }
  });

  test('strict: the same document is an SB_NOT_SIGNALBOX error, and the file still loads its other documents', () => {
    const r = parsePolicyText(docs(SERVICE, ENVOY_BOOTSTRAP), 'p.yaml', { strict: true });
    assert.deepEqual(r.warnings, []);
    assert.deepEqual(
      r.docs.map((d) => d.name),
      ['orders'],
    );
    assert.deepEqual(
      r.errors.map((e) => [e.code, e.doc]),
      [[ErrorCode.NOT_SIGNALBOX, 2]],
    );
    assert.match(r.errors[0]!.message, /not a Signalbox document \(it has neither apiVersion nor kind; .*\): refused under --strict/);
  });

  test('a skipped document is not judged: duplicate keys and aliases in it are its own business', () => {
    const r = parsePolicyText('a: 1\na: 2\nb: &x [1]\nc: *x\n', 'p.yaml');
    assert.deepEqual(r.errors, []);
    assert.equal(r.warnings.length, 1);
  });

  test('a file of many foreign documents lists the first 100 and counts the rest', () => {
    const text = Array.from({ length: 250 }, (_, i) => `name: n${i}\n`).join('---\n');
    const r = parsePolicyText(text, 'many.yaml');
    assert.equal(r.warnings.length, YAML_LIMITS.maxErrorsPerFile + 1);
    assert.equal(r.warnings.at(-1)!.message, '150 more documents that are not Signalbox documents were skipped (250 in all)');
  });
});

describe('loading a directory', () => {
  test('the rest of the directory loads; a directory of nothing but foreign documents is an error (it would empty every proxy)', async () => {
    const dir = policyDir({ 'services.yaml': SERVICE, 'envoy.yaml': ENVOY_BOOTSTRAP });
    const r = await loadPolicyDir(dir);
    assert.deepEqual(r.errors, []);
    assert.deepEqual(
      r.docs.map((d) => d.name),
      ['orders'],
    );
    assert.deepEqual(
      r.warnings.map((w) => [path.basename(w.file), w.doc]),
      [['envoy.yaml', 1]],
    );

    const only = await loadPolicyDir(policyDir({ 'envoy.yaml': ENVOY_BOOTSTRAP, 'k8s.yaml': K8S_SERVICE }));
    assert.deepEqual(
      only.errors.map((e) => e.code),
      [ErrorCode.NO_POLICIES],
    );
    assert.match(only.errors[0]!.message, /no Signalbox documents/);
    assert.equal(only.warnings.length, 2);

    const strict = await loadPolicyDir(dir, undefined, {}, undefined, { strict: true });
    assert.deepEqual(strict.warnings, []);
    assert.deepEqual(
      strict.errors.map((e) => [e.code, path.basename(e.file), e.doc]),
      [[ErrorCode.NOT_SIGNALBOX, 'envoy.yaml', 1]],
    );
  });

  test('a load told which files changed keeps the warnings of the files it did not read, and equals a full load', async () => {
    const dir = policyDir({
      'services.yaml': docs(SERVICE, OTHER),
      'gateway.yaml': GATEWAY,
      'route.yaml': route('orders'),
      'envoy.yaml': ENVOY_BOOTSTRAP,
      'k8s.yaml': K8S_SERVICE,
    });
    const summary = (r: Awaited<ReturnType<typeof loadPolicyDir>>) => ({
      docs: r.docs.map((d) => `${d.source.file}#${d.source.doc} ${JSON.stringify(d.value)}`),
      errors: formatted(r.errors),
      warnings: formatted(r.warnings),
    });
    const cache = new PolicyParseCache();
    const first = await loadPolicyDir(dir, cache);
    assert.equal(first.warnings.length, 2);
    assert.ok(cache.last, 'a load with warnings is a complete load: the next edit is read alone');

    // An edit of a policy file: only it is read; the bootstrap's warning is carried over.
    writeFileSync(path.join(dir, 'route.yaml'), route('other'));
    const hinted = await loadPolicyDir(dir, cache, {}, { changed: new Set([path.join(dir, 'route.yaml')]) });
    assert.deepEqual(summary(hinted), summary(await loadPolicyDir(dir)));
    assert.equal(hinted.warnings.length, 2);

    // An edit of the foreign file that makes it a (broken) Signalbox document: read, an error now.
    writeFileSync(path.join(dir, 'k8s.yaml'), K8S_SERVICE.replace('apiVersion: v1', 'apiVersion: signalbox.dev/v1alpha1'));
    const turned = await loadPolicyDir(dir, cache, {}, { changed: new Set([path.join(dir, 'k8s.yaml')]) });
    assert.deepEqual(summary(turned), summary(await loadPolicyDir(dir)));
    assert.equal(turned.warnings.length, 1);
    assert.ok(turned.errors.some((e) => e.file.endsWith('k8s.yaml')));

    // The same cache asked for a strict load: every file is read again (the cached outcomes were lenient).
    writeFileSync(path.join(dir, 'k8s.yaml'), K8S_SERVICE);
    const strict = await loadPolicyDir(dir, cache, {}, { changed: new Set([path.join(dir, 'k8s.yaml')]) }, { strict: true });
    assert.deepEqual(summary(strict), summary(await loadPolicyDir(dir, undefined, {}, undefined, { strict: true })));
    assert.deepEqual(strict.errors.map((e) => path.basename(e.file)).sort(), ['envoy.yaml', 'k8s.yaml']);
    const lenient = await loadPolicyDir(dir, cache, {}, { changed: new Set([path.join(dir, 'route.yaml')]) });
    assert.deepEqual(summary(lenient), summary(await loadPolicyDir(dir)));
    assert.deepEqual(lenient.errors, []);
  });
});

describe('the pipeline', () => {
  function pipelineOn(dir: string, opts: { strict?: boolean; dataDir?: string } = {}) {
    const cache = new SnapshotCache();
    const metrics = new Metrics();
    const pipeline = new Pipeline({
      policyDir: dir,
      cache,
      logger: silent,
      metrics,
      strictPolicies: opts.strict,
      dataDir: opts.dataDir,
      persistLastGood: opts.dataDir !== undefined,
    });
    return { pipeline, cache, metrics };
  }
  const routeVersion = (cache: SnapshotCache) => cache.get('gateway/public').versions.get(TypeUrl.Route);
  const gauge = async (metrics: Metrics, name: string) => (await metrics.registry.getSingleMetric(name)!.get()).values[0]?.value ?? 0;

  test('a bootstrap saved into the directory: later edits still apply, the warning stays listed, and it is never "serving the last good configuration"', async () => {
    const data = mkdtempSync(path.join(os.tmpdir(), 'sb-foreign-data-'));
    dataDirs.push(data);
    const dir = policyDir({ 'services.yaml': docs(SERVICE, OTHER), 'gateway.yaml': GATEWAY, 'route.yaml': route('orders') });
    const { pipeline, cache, metrics } = pipelineOn(dir, { dataDir: data });
    assert.equal((await pipeline.reload()).applied, true);
    const v1 = routeVersion(cache);

    writeFileSync(path.join(dir, 'envoy.yaml'), ENVOY_BOOTSTRAP);
    const withBootstrap = await pipeline.reload({ paths: new Set([path.join(dir, 'envoy.yaml')]), full: false });
    assert.equal(withBootstrap.applied, true, formatted(withBootstrap.errors).join('\n'));
    assert.deepEqual(
      pipeline.warnings.map((w) => [path.basename(w.file), w.doc, w.code]),
      [['envoy.yaml', 1, ErrorCode.NOT_SIGNALBOX]],
    );
    assert.equal(routeVersion(cache), v1, 'the bootstrap changes nothing proxies get');
    assert.equal(await gauge(metrics, 'signalbox_policy_warnings'), 1);
    assert.equal(await gauge(metrics, 'signalbox_policy_errors'), 0);

    // The edit that used to be ignored: applied, through the incremental path (only route.yaml read).
    writeFileSync(path.join(dir, 'route.yaml'), route('other'));
    const edit = await pipeline.reload({ paths: new Set([path.join(dir, 'route.yaml')]), full: false });
    assert.equal(edit.applied, true);
    assert.notEqual(routeVersion(cache), v1);
    assert.equal(pipeline.warnings.length, 1, 'the warning of the file not re-read is still listed');
    assert.equal(pipeline.servingLastGood, undefined);

    // The saved last good configuration holds the policy files, not the bootstrap's text.
    const saved = await new LastGoodStore({ dataDir: data, policyDir: dir }).read();
    assert.deepEqual(
      saved!.files.map((f) => f.file),
      ['gateway.yaml', 'route.yaml', 'services.yaml'],
    );

    // An invalid edit next to it: rejected as before, the warning still apart from the errors.
    writeFileSync(path.join(dir, 'route.yaml'), route('nope'));
    const bad = await pipeline.reload({ paths: new Set([path.join(dir, 'route.yaml')]), full: false });
    assert.equal(bad.applied, false);
    assert.ok(bad.errors.every((e) => e.code !== ErrorCode.NOT_SIGNALBOX));
    assert.ok(pipeline.servingLastGood, 'an error (not the warning) is what makes it serve the last good configuration');
    assert.equal(pipeline.warnings.length, 1);

    // Removing the bootstrap clears the warning.
    writeFileSync(path.join(dir, 'route.yaml'), route('orders'));
    unlinkSync(path.join(dir, 'envoy.yaml'));
    const clean = await pipeline.reload({ paths: new Set([path.join(dir, 'envoy.yaml'), path.join(dir, 'route.yaml')]), full: false });
    assert.equal(clean.applied, true);
    assert.deepEqual(pipeline.warnings, []);
    assert.equal(routeVersion(cache), v1);
    assert.equal(await gauge(metrics, 'signalbox_policy_warnings'), 0);
  });

  test('strict: the bootstrap rejects the directory and the edit made next to it is not applied', async () => {
    const dir = policyDir({ 'services.yaml': docs(SERVICE, OTHER), 'gateway.yaml': GATEWAY, 'route.yaml': route('orders') });
    const { pipeline, cache } = pipelineOn(dir, { strict: true });
    assert.equal((await pipeline.reload()).applied, true);
    const v1 = routeVersion(cache);
    writeFileSync(path.join(dir, 'envoy.yaml'), ENVOY_BOOTSTRAP);
    writeFileSync(path.join(dir, 'route.yaml'), route('other'));
    const r = await pipeline.reload();
    assert.equal(r.applied, false);
    assert.deepEqual(
      r.errors.map((e) => [path.basename(e.file), e.code]),
      [['envoy.yaml', ErrorCode.NOT_SIGNALBOX]],
    );
    assert.deepEqual(pipeline.warnings, []);
    assert.equal(routeVersion(cache), v1, 'the last good configuration stays');
    assert.ok(pipeline.servingLastGood);
  });
});

describe('--strict as a setting', () => {
  test('serve: flag, SIGNALBOX_STRICT, default off; a bad value is SB_BAD_FLAG', () => {
    assert.equal(resolveServeConfig({}, {}).strict, false);
    assert.equal(resolveServeConfig({ strict: true }, {}).strict, true);
    assert.equal(resolveServeConfig({}, { SIGNALBOX_STRICT: 'true' }).strict, true);
    assert.equal(resolveStrict({ strict: false }, { SIGNALBOX_STRICT: 'true' }), false, 'a flag beats its environment twin');
    assert.throws(
      () => resolveStrict({}, { SIGNALBOX_STRICT: 'yes' }),
      (e: unknown) => e instanceof SignalboxError && e.code === ErrorCode.BAD_FLAG && /SIGNALBOX_STRICT must be "true" or "false", got "yes"/.test(e.message),
    );
  });
});

describe('signalbox validate and compile', () => {
  const dir = () => policyDir({ 'services.yaml': docs(SERVICE, OTHER), 'gateway.yaml': GATEWAY, 'route.yaml': route('orders'), 'envoy.yaml': ENVOY_BOOTSTRAP });

  test('validate: exit 0 with the warning on stderr; --strict: exit 1 with it as an error', () => {
    const d = dir();
    const cleanEnv = (...args: string[]) =>
      spawnSync(process.execPath, [path.join(repoRoot(), 'bin/signalbox.js'), ...args], {
        encoding: 'utf8',
        env: { ...process.env, SIGNALBOX_STRICT: 'false' },
      });
    const ok = cleanEnv('validate', d);
    assert.equal(ok.status, 0, ok.stderr);
    assert.match(ok.stderr, /^warning: .*envoy\.yaml#1: not a Signalbox document \(it has neither apiVersion nor kind/m);
    assert.match(ok.stdout, /: valid \(4 documents: .*; 1 document\(s\) skipped, not Signalbox documents\)/);
    const strict = cleanEnv('validate', '--strict', d);
    assert.equal(strict.status, 1);
    assert.match(strict.stderr, /envoy\.yaml#1: not a Signalbox document .*refused under --strict/);
    assert.match(strict.stderr, /1 error\(s\) in /);
    const env = spawnSync(process.execPath, [path.join(repoRoot(), 'bin/signalbox.js'), 'validate', d], {
      encoding: 'utf8',
      env: { ...process.env, SIGNALBOX_STRICT: 'true' },
    });
    assert.equal(env.status, 1, 'SIGNALBOX_STRICT=true, as serve reads it');
  });

  test('validate --format json lists the warnings apart; --format github writes them as ::warning', () => {
    const d = dir();
    const env = { ...process.env, SIGNALBOX_STRICT: 'false' };
    const json = spawnSync(process.execPath, [path.join(repoRoot(), 'bin/signalbox.js'), 'validate', d, '--format', 'json'], { encoding: 'utf8', env });
    assert.equal(json.status, 0, json.stderr);
    const out = JSON.parse(json.stdout) as { valid: boolean; errors: PolicyError[]; warnings: PolicyError[] };
    assert.equal(out.valid, true);
    assert.deepEqual(out.errors, []);
    assert.deepEqual(
      out.warnings.map((w) => [w.code, path.basename(w.file), w.doc, w.line]),
      [[ErrorCode.NOT_SIGNALBOX, 'envoy.yaml', 1, 1]],
    );
    const gh = spawnSync(process.execPath, [path.join(repoRoot(), 'bin/signalbox.js'), 'validate', d, '--format', 'github'], { encoding: 'utf8', env });
    assert.equal(gh.status, 0, gh.stderr);
    assert.match(gh.stdout, /^::warning file=.*envoy\.yaml,line=1,title=SB_NOT_SIGNALBOX::document 1: not a Signalbox document/m);
    assert.doesNotMatch(gh.stdout, /^::error/m);
  });

  test('compile: the warning on stderr and the JSON on stdout; --strict: exit 1', () => {
    const d = dir();
    const env = { ...process.env, SIGNALBOX_STRICT: 'false' };
    const ok = spawnSync(process.execPath, [path.join(repoRoot(), 'bin/signalbox.js'), 'compile', d], { encoding: 'utf8', env });
    assert.equal(ok.status, 0, ok.stderr);
    assert.ok(JSON.parse(ok.stdout)['gateway/public']);
    assert.match(ok.stderr, /^warning: .*envoy\.yaml#1: not a Signalbox document/m);
    const strict = spawnSync(process.execPath, [path.join(repoRoot(), 'bin/signalbox.js'), 'compile', '--strict', d], { encoding: 'utf8', env });
    assert.equal(strict.status, 1);
    assert.match(strict.stderr, /envoy\.yaml#1: not a Signalbox document .*refused under --strict/);
  });
});
