// Golden tests: each folder of test/golden/cases is a policy directory; what it compiles to is
// committed in test/golden/expected/<case>/ in two stages, one file per group and resource type
// (layout.ts has the layout and why):
//   policy -> IR   the IR each proxy group gets, from compileGroups (the function `serve`, `compile`
//                  and `diff` compile with, so access logging, Mesh tracing and JWT checks are in);
//   IR -> Envoy    the translator's output (compileGroupIR, what compileGroups runs on each IR) for
//                  the committed IR goldens, not for a fresh compile: a change to translate shows
//                  in the IR files, a change to the translator in the Envoy files only.
// A third check reads the Envoy goldens back and compares them with what `compile` prints;
// test/xds/compile-equals-serve.test.ts checks that a connected proxy receives exactly that.
// `UPDATE_GOLDEN=1 node scripts/test.mjs --golden` (npm run golden:update) rewrites the golden
// files instead and removes the stale ones; review the diff before committing it.
import assert from 'node:assert/strict';
import { existsSync, mkdirSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { describe, test } from 'node:test';
import { compileDir, compileGroupsOptions, TRUST_BUNDLE_PLACEHOLDER, type CompiledGroups, type ServeLikeOptions } from '../../src/cli/compile.js';
import { compileGroupIR, compileGroups, printedGroup, staticInstancesOf } from '../../src/controller/compile-groups.js';
import { formatPolicyError } from '../../src/errors.js';
import type { Instance } from '../../src/ir/types.js';
import { buildModel } from '../../src/controller/build-model.js';
import { loadPolicyDir } from '../../src/sources/files/loader.js';
import { REDACTED } from '../../src/xds/translator/secret.js';
import { parse } from 'yaml';
import { repoRoot } from '../helpers/envoy.js';
import {
  CASES,
  envoyGoldenFiles,
  EXPECTED,
  filesBelow,
  goldenRoot,
  groupPath,
  irGoldenText,
  parseIRGolden,
  readEnvoyGoldens,
  VERSIONS_FILE,
} from './layout.js';

const UPDATE = process.env.UPDATE_GOLDEN === '1';
const HOW = 'UPDATE_GOLDEN=1 node scripts/test.mjs --golden (npm run golden:update)';

/** The cases this suite must have; a folder added under cases/ is picked up as well. */
const REQUIRED = ['basic-routing', 'filters', 'https-gateway', 'mesh-defaults', 'mesh-tracing', 'multi-gateway', 'rule-names', 'weighted-split'];

const cases = readdirSync(CASES)
  .filter((c) => statSync(path.join(CASES, c)).isDirectory())
  .sort();

/**
 * A case may also be compiled with other serve settings: its variants.json maps a variant name to
 * compile options, and each variant has its own goldens (expected/<case>/variants/<variant>/).
 */
function variantsOf(name: string): [string, ServeLikeOptions][] {
  const file = path.join(CASES, name, 'variants.json');
  const extra = existsSync(file) ? Object.entries(JSON.parse(readFileSync(file, 'utf8')) as Record<string, ServeLikeOptions>) : [];
  return [['', {}], ...extra];
}

async function compileCase(name: string, opts: ServeLikeOptions = {}): Promise<CompiledGroups> {
  const r = await compileDir(path.join(CASES, name), [], opts);
  if (!r.ok) assert.fail(`golden case ${name} does not compile:\n${r.errors.map(formatPolicyError).join('\n')}`);
  return r.groups;
}

const shown = (file: string) => path.relative(repoRoot(), file);

/** policy -> IR: ir/<group>.yaml for every group, by path below the case's (variant's) golden root. */
async function irStage(name: string, opts: ServeLikeOptions): Promise<Map<string, string>> {
  const dir = path.join(CASES, name);
  const loaded = await loadPolicyDir(dir);
  if (loaded.errors.length) assert.fail(`golden case ${name} does not load:\n${loaded.errors.map(formatPolicyError).join('\n')}`);
  const built = await buildModel(loaded.docs, dir);
  if (!built.model) assert.fail(`golden case ${name} is not valid:\n${built.errors.map(formatPolicyError).join('\n')}`);
  const instancesOf = staticInstancesOf(built.model);
  const files = new Map<string, string>();
  for (const [group, g] of compileGroups(built.model, compileGroupsOptions(opts))) {
    const instances: Record<string, readonly Instance[]> = {};
    for (const c of g.ir.clusters) if (!c.static) instances[c.service] = instancesOf(c.service);
    const text = irGoldenText({ ir: g.ir, instances }, dir);
    // The IR golden is the IR -> Envoy stage's whole input: reading it back must give this IR.
    assert.deepEqual(
      parseIRGolden(text, dir),
      JSON.parse(JSON.stringify({ ir: g.ir, instances })),
      `${name}: ${group}: the IR golden does not read back as the IR it was written from`,
    );
    files.set(`ir/${groupPath(group)}.yaml`, text);
  }
  return files;
}

/** IR -> Envoy, from the committed IR goldens: envoy/<group>/<type>.yaml and versions.yaml. */
function envoyStage(name: string, variant: string, opts: ServeLikeOptions): Map<string, string> {
  const dir = path.join(CASES, name);
  const irDir = path.join(goldenRoot(name, variant), 'ir');
  const files = new Map<string, string>();
  for (const f of filesBelow(irDir)) {
    const file = path.join(irDir, f);
    if (!f.endsWith('.yaml')) assert.fail(`${shown(file)}: an IR golden is a .yaml file`);
    const group = f.slice(0, -'.yaml'.length);
    let input: ReturnType<typeof parseIRGolden>;
    try {
      input = parseIRGolden(readFileSync(file, 'utf8'), dir);
    } catch (e) {
      assert.fail(`${shown(file)} cannot be read as an IR golden: ${(e as Error).message}`);
    }
    assert.equal(input.ir.group, group, `${shown(file)} holds the IR of group ${input.ir.group}`);
    const compiled = compileGroupIR(input.ir, { instancesOf: (s) => input.instances[s] ?? [], trustBundlePem: compileGroupsOptions(opts).trustBundlePem });
    for (const [type, text] of envoyGoldenFiles(printedGroup(compiled))) files.set(`envoy/${group}/${type}`, text);
  }
  return files;
}

/**
 * Compares (or, under UPDATE_GOLDEN, writes) the files of one stage: `sub` (ir or envoy) below
 * root must hold exactly `files`, no file missing, none extra, each byte for byte.
 */
function checkStage(root: string, sub: string, files: Map<string, string>, stage: string): void {
  const present = filesBelow(path.join(root, sub)).map((f) => `${sub}/${f}`);
  if (UPDATE) {
    for (const [f, text] of files) {
      mkdirSync(path.dirname(path.join(root, f)), { recursive: true });
      writeFileSync(path.join(root, f), text);
    }
    for (const f of present) if (!files.has(f)) rmSync(path.join(root, f));
    removeEmptyDirs(path.join(root, sub));
    return;
  }
  const missing = [...files.keys()].filter((f) => !present.includes(f)).map((f) => `${shown(path.join(root, f))} is missing`);
  const extra = present
    .filter((f) => !files.has(f))
    .map((f) => `${shown(path.join(root, f))} ${sub === 'ir' ? 'is the IR of no group of the case' : 'is not translated from the committed IR goldens'}`);
  assert.deepEqual([...missing, ...extra], [], `the ${stage} goldens do not match the files it produces (${HOW} writes and removes them)`);
  for (const [f, text] of files) {
    const file = path.join(root, f);
    assert.equal(text, readFileSync(file, 'utf8'), `${shown(file)} differs from what the ${stage} stage produces now (${HOW} rewrites it; review the diff)`);
  }
}

function removeEmptyDirs(dir: string): void {
  if (!existsSync(dir) || !statSync(dir).isDirectory()) return;
  for (const n of readdirSync(dir)) removeEmptyDirs(path.join(dir, n));
  if (readdirSync(dir).length === 0) rmSync(dir, { recursive: true });
}

describe('golden', () => {
  test('every required case is present', () => {
    assert.deepEqual(
      REQUIRED.filter((c) => !cases.includes(c)),
      [],
    );
  });

  for (const name of cases) {
    for (const [variant, opts] of variantsOf(name)) {
      const label = variant ? `${name} (${variant})` : name;
      const root = goldenRoot(name, variant);
      test(`${label}: policy -> IR`, async () => {
        checkStage(root, 'ir', await irStage(name, opts), `${label} policy -> IR`);
      });
      test(`${label}: IR -> Envoy, from the committed IR`, () => {
        checkStage(root, 'envoy', envoyStage(name, variant, opts), `${label} IR -> Envoy`);
      });
      test(`${label}: \`compile\` prints what the Envoy goldens hold`, async () => {
        // Both stages together, read back from the files: the goldens are compile's output, whole.
        const groups = await compileCase(name, opts);
        const envoy = path.join(root, 'envoy');
        const committed = Object.fromEntries(
          filesBelow(envoy)
            .filter((f) => f.endsWith(`/${VERSIONS_FILE}`))
            .map((f) => f.slice(0, -VERSIONS_FILE.length - 1))
            .map((g) => [g, readEnvoyGoldens(path.join(envoy, g))]),
        );
        assert.deepEqual(
          committed,
          JSON.parse(JSON.stringify(groups)),
          `${label}: the Envoy goldens are not what compile prints (the two stages above say which files)`,
        );
      });
    }
  }

  test('test/golden/expected holds the goldens of the cases and their variants only', () => {
    const allowed = cases.flatMap((name) =>
      variantsOf(name).flatMap(([variant]) =>
        ['ir', 'envoy'].map(
          (sub) =>
            `${path
              .relative(EXPECTED, path.join(goldenRoot(name, variant), sub))
              .split(path.sep)
              .join('/')}/`,
        ),
      ),
    );
    const stray = filesBelow(EXPECTED).filter((f) => !allowed.some((a) => f.startsWith(a)));
    if (UPDATE) {
      for (const f of stray) rmSync(path.join(EXPECTED, f));
      removeEmptyDirs(EXPECTED);
      return;
    }
    assert.deepEqual(
      stray.map((f) => shown(path.join(EXPECTED, f))),
      [],
      `files of no case or variant (${HOW} removes them)`,
    );
  });

  test('no golden file holds a private key; every case has its goldens', () => {
    for (const f of filesBelow(EXPECTED)) assert.doesNotMatch(readFileSync(path.join(EXPECTED, f), 'utf8'), /PRIVATE KEY/, shown(path.join(EXPECTED, f)));
    assert.deepEqual(
      cases.filter((name) => !filesBelow(path.join(goldenRoot(name, ''), 'ir')).length || !filesBelow(path.join(goldenRoot(name, ''), 'envoy')).length),
      [],
      'cases without goldens',
    );
  });

  test('https-gateway: the IR golden names the key file instead of holding the key', () => {
    const text = readFileSync(path.join(goldenRoot('https-gateway', ''), 'ir', 'gateway', 'public.yaml'), 'utf8');
    const secrets = (parse(text) as { ir: { secrets: { name: string; privateKeyPem: string }[] } }).ir.secrets;
    assert.deepEqual(
      secrets.map((s) => [s.name, s.privateKeyPem]),
      [['public/https/cert', `${REDACTED} (the case's certs/shop.key)`]],
    );
  });

  test('https-gateway: the certificate is served, the private key is redacted', async () => {
    const groups = await compileCase('https-gateway');
    const secrets = groups['gateway/public']!.secret!;
    assert.deepEqual(
      secrets.map((s) => s.name),
      ['public/https/cert', 'signalbox/trust-bundle'],
      "the gateway's certificate, and the mesh trust bundle its proxies get (mesh mTLS is on)",
    );
    assert.equal(
      (secrets[1]!.resource as { validation_context: { trusted_ca: { inline_string: string } } }).validation_context.trusted_ca.inline_string,
      TRUST_BUNDLE_PLACEHOLDER,
    );
    const tls = (secrets[0]!.resource as { tls_certificate: Record<string, { inline_string: string }> }).tls_certificate;
    assert.equal(tls.private_key!.inline_string, REDACTED);
    const pem = readFileSync(path.join(CASES, 'https-gateway', 'certs', 'shop.crt'), 'utf8');
    assert.equal(tls.certificate_chain!.inline_string, pem);
    assert.match(
      readFileSync(path.join(CASES, 'https-gateway', 'certs', 'shop.key'), 'utf8'),
      /PRIVATE KEY/,
      'the fixture key is real, so the redaction above means something',
    );
  });
  test('every HTTP listener reports to the access log service, as serve does by default', async () => {
    for (const name of cases) {
      for (const [group, g] of Object.entries(await compileCase(name))) {
        for (const l of g.listener ?? []) {
          const json = JSON.stringify(l.resource);
          assert.match(json, /envoy\.access_loggers\.http_grpc/, `${name}: ${group} listener ${l.name} has no access log`);
        }
      }
    }
    const off = await compileCase('mesh-tracing', { accessLogSampling: 'off' });
    assert.doesNotMatch(JSON.stringify(off), /access_log/, '--access-log-sampling off: no access log');
  });

  test('mesh-tracing: every listener traces to the collector, whose cluster the group gets', async () => {
    const g = (await compileCase('mesh-tracing'))['gateway/edge']!;
    assert.ok(g.cluster!.some((c) => c.name === 'otel'));
    for (const l of g.listener!) assert.match(JSON.stringify(l.resource), /envoy\.tracers\.opentelemetry.*"service_name":"edge-gateway"/);
  });

  test('rule-names: an unnamed rule never takes a name a user can write; sectionName rule-1 limits and checks that rule only', async () => {
    const routes = (await compileCase('rule-names'))['gateway/edge']!.route!;
    const vh = (routes[0]!.resource as { virtual_hosts: { routes: { name: string; typed_per_filter_config?: Record<string, unknown> }[] }[] })
      .virtual_hosts[0]!;
    const byName = new Map(vh.routes.map((r) => [r.name, r]));
    assert.deepEqual([...byName.keys()].sort(), ['app/#1/match-0', 'app/rule-1/match-0']);
    const filters = (name: string) => JSON.stringify(byName.get(name)!.typed_per_filter_config ?? {});
    assert.match(filters('app/rule-1/match-0'), /rule-one/, 'the limit of sectionName rule-1 is on rule-1');
    assert.doesNotMatch(filters('app/#1/match-0'), /rule-one/, 'the unnamed second rule has neither the limit nor the JWT check of rule-1');
  });
});
