#!/usr/bin/env node
// The whole test suite: type-check and build, provision the real peers (Envoy, Consul), then run
// every test with node's test runner. A peer that cannot be provisioned fails the run; nothing is
// skipped. Flags: --unit (unit tests only), --golden (golden tests only), --only-files a,b.
import { execFileSync, spawnSync } from 'node:child_process';
import { readdirSync, statSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const args = process.argv.slice(2);
const unitOnly = args.includes('--unit');
const goldenOnly = args.includes('--golden');

function step(title, cmd, cmdArgs, opts = {}) {
  process.stderr.write(`\n== ${title}\n`);
  const r = spawnSync(cmd, cmdArgs, { cwd: root, stdio: ['ignore', opts.capture ? 'pipe' : 'inherit', 'inherit'], encoding: 'utf8', env: process.env });
  if (r.status !== 0) {
    process.stderr.write(`\n${title} FAILED (exit ${r.status ?? r.signal})\n`);
    process.exit(1);
  }
  return (r.stdout ?? '').trim();
}

step('build (tsc, strict)', 'npx', ['tsc', '-p', 'tsconfig.json']);

const env = { ...process.env, SIGNALBOX_STRICT_ENCODE: '1' };
if (!unitOnly && !goldenOnly) {
  env.SIGNALBOX_ENVOY_BIN = step('provision real Envoy', 'bash', ['scripts/provision-envoy.sh'], { capture: true }).split('\n').pop();
  step("build Signalbox's JWT filter for that Envoy (C, against Envoy's module ABI header from the Go module proxy)", 'bash', ['scripts/provision-jwt-module.sh'], { capture: true });
  env.SIGNALBOX_CONSUL_BIN = step('provision real Consul', 'bash', ['scripts/provision-consul.sh'], { capture: true }).split('\n').pop();
  env.SIGNALBOX_CHROMIUM_BIN = step('provision Chromium (Debian package, for the dashboard browser test)', 'bash', ['scripts/provision-chromium.sh'], { capture: true }).split('\n').pop();
  process.stderr.write(`envoy: ${env.SIGNALBOX_ENVOY_BIN}\nconsul: ${env.SIGNALBOX_CONSUL_BIN}\nchromium: ${env.SIGNALBOX_CHROMIUM_BIN}\n`);
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

const dirs = unitOnly ? ['unit'] : goldenOnly ? ['golden'] : ['unit', 'golden', 'xds', 'integration'];
const files = dirs.flatMap((d) => find(path.join(root, 'dist', 'test', d)));
if (files.length === 0) {
  process.stderr.write('no test files found\n');
  process.exit(1);
}
process.stderr.write(`\n== ${files.length} test files\n`);
const r = spawnSync(process.execPath, ['--test', '--test-concurrency=2', '--test-reporter=spec', ...files], { cwd: root, stdio: 'inherit', env });
process.exit(r.status ?? 1);
