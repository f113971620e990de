// Golden tests: each folder of test/golden/cases is a policy directory; compiling it must give
// exactly its expected.json (every proxy group's resources, printable form, keys sorted). The
// compile is compileDir -> compileGroups, the function `serve` compiles with (so access logging,
// Mesh tracing and the trust bundle are in); test/xds/compile-equals-serve.test.ts checks that a
// connected proxy receives exactly these resources.
// `UPDATE_GOLDEN=1 node scripts/test.mjs --golden` rewrites the expected files instead; review the
// diff before committing it.
import assert from 'node:assert/strict';
import { existsSync, readdirSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { describe, test } from 'node:test';
import { compileDir, TRUST_BUNDLE_PLACEHOLDER, type CompiledGroups } from '../../src/cli/compile.js';
import { formatPolicyError } from '../../src/errors.js';
import { REDACTED } from '../../src/xds/translator/secret.js';
import { repoRoot } from '../helpers/envoy.js';

const CASES = path.join(repoRoot(), 'test', 'golden', 'cases');
const UPDATE = process.env.UPDATE_GOLDEN === '1';
const EXPECTED = 'expected.json';

/** The cases this suite must have; a folder added under cases/ is picked up as well. */
const REQUIRED = ['basic-routing', 'filters', 'https-gateway', 'mesh-defaults', 'mesh-tracing', 'multi-gateway', 'rule-names', 'weighted-split'];

function sortKeys(v: unknown): unknown {
  if (Array.isArray(v)) return v.map(sortKeys);
  if (v && typeof v === 'object') {
    const o = v as Record<string, unknown>;
    return Object.fromEntries(Object.keys(o).sort().map((k) => [k, sortKeys(o[k])]));
  }
  return v;
}

/** Pretty JSON with keys sorted at every level: stable text, readable diffs. */
function goldenText(groups: CompiledGroups): string {
  return `${JSON.stringify(sortKeys(groups), null, 2)}\n`;
}

const cases = readdirSync(CASES)
  .filter((c) => statSync(path.join(CASES, c)).isDirectory())
  .sort();

/**
 * A case may also be compiled with other serve settings: its variants.json maps a variant name to
 * compile options, and each variant has its own expected.<variant>.json.
 */
function variantsOf(name: string): [string, Parameters<typeof compileDir>[2]][] {
  const file = path.join(CASES, name, 'variants.json');
  const extra = existsSync(file) ? Object.entries(JSON.parse(readFileSync(file, 'utf8')) as Record<string, Parameters<typeof compileDir>[2]>) : [];
  return [['', {}], ...extra];
}

async function compileCase(name: string, opts: Parameters<typeof compileDir>[2] = {}): Promise<CompiledGroups> {
  const r = await compileDir(path.join(CASES, name), [], opts);
  if (!r.ok) assert.fail(`golden case ${name} does not compile:\n${r.errors.map(formatPolicyError).join('\n')}`);
  return r.groups;
}

describe('golden', () => {
  test('every required case is present', () => {
    assert.deepEqual(
      REQUIRED.filter((c) => !cases.includes(c)),
      [],
    );
  });

  for (const name of cases) for (const [variant, opts] of variantsOf(name)) {
    const EXPECTED = variant ? `expected.${variant}.json` : 'expected.json';
    test(variant ? `${name} (${variant})` : name, async () => {
      const text = goldenText(await compileCase(name, opts));
      assert.doesNotMatch(text, /PRIVATE KEY/, 'a private key reached the printable output');
      const file = path.join(CASES, name, EXPECTED);
      if (UPDATE) {
        writeFileSync(file, text);
        return;
      }
      assert.ok(existsSync(file), `${path.relative(repoRoot(), file)} is missing; generate it with UPDATE_GOLDEN=1 node scripts/test.mjs --golden`);
      const want = readFileSync(file, 'utf8');
      if (text !== want) {
        // Show a structural diff first (readable), then insist on the exact text.
        assert.deepEqual(JSON.parse(text), JSON.parse(want), `${name}: output differs from ${EXPECTED} (UPDATE_GOLDEN=1 regenerates it)`);
        assert.equal(text, want, `${name}: ${EXPECTED} is not in canonical form (UPDATE_GOLDEN=1 rewrites it)`);
      }
    });
  }

  test('no expected.json holds a private key', () => {
    let seen = 0;
    for (const name of cases) {
      const file = path.join(CASES, name, EXPECTED);
      if (!existsSync(file)) continue;
      seen++;
      assert.doesNotMatch(readFileSync(file, 'utf8'), /PRIVATE KEY/, file);
    }
    assert.equal(seen, cases.length, 'every case has an expected.json');
  });

  test('https-gateway: the certificate is served, the private key is redacted', async () => {
    const groups = await compileCase('https-gateway');
    const secrets = groups['gateway/public']!.secret!;
    assert.deepEqual(
      secrets.map((s) => s.name),
      ['public/https/cert', 'signalbox/trust-bundle'],
      "the gateway's certificate, and the mesh trust bundle its proxies get (mesh mTLS is on)",
    );
    assert.equal((secrets[1]!.resource as { validation_context: { trusted_ca: { inline_string: string } } }).validation_context.trusted_ca.inline_string, TRUST_BUNDLE_PLACEHOLDER);
    const tls = (secrets[0]!.resource as { tls_certificate: Record<string, { inline_string: string }> }).tls_certificate;
    assert.equal(tls.private_key!.inline_string, REDACTED);
    const pem = readFileSync(path.join(CASES, 'https-gateway', 'certs', 'shop.crt'), 'utf8');
    assert.equal(tls.certificate_chain!.inline_string, pem);
    assert.match(readFileSync(path.join(CASES, 'https-gateway', 'certs', 'shop.key'), 'utf8'), /PRIVATE KEY/, 'the fixture key is real, so the redaction above means something');
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
    const vh = (routes[0]!.resource as { virtual_hosts: { routes: { name: string; typed_per_filter_config?: Record<string, unknown> }[] }[] }).virtual_hosts[0]!;
    const byName = new Map(vh.routes.map((r) => [r.name, r]));
    assert.deepEqual([...byName.keys()].sort(), ['app/#1/match-0', 'app/rule-1/match-0']);
    const filters = (name: string) => JSON.stringify(byName.get(name)!.typed_per_filter_config ?? {});
    assert.match(filters('app/rule-1/match-0'), /rule-one/, 'the limit of sectionName rule-1 is on rule-1');
    assert.doesNotMatch(filters('app/#1/match-0'), /rule-one/, 'the unnamed second rule has neither the limit nor the JWT check of rule-1');
  });
});
