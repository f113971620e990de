// `--policies DIR` on every command that reads a policy directory (validate, compile, explain), as
// serve and authz take it; the positional DIR is still accepted, and two different directories
// are a usage error (exit 2) rather than a silent choice.
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { after, describe, test } from 'node:test';
import { policyDirArg } from '../../src/cli/policies-flag.js';
import { SignalboxError } from '../../src/errors.js';
import { repoRoot } from '../helpers/envoy.js';
import { doc, policyDir, removePolicyDirs } from './policy-dir.js';

after(removePolicyDirs);

const cli = (args: string[], env: NodeJS.ProcessEnv = {}) =>
  spawnSync(process.execPath, ['bin/signalbox.js', ...args], {
    cwd: repoRoot(),
    encoding: 'utf8',
    timeout: 30_000,
    env: { ...process.env, SIGNALBOX_POLICIES: undefined, ...env },
  });

describe('policyDirArg', () => {
  test("the flag, else the positional, else SIGNALBOX_POLICIES, else serve's default", () => {
    assert.equal(policyDirArg([], 'a', { SIGNALBOX_POLICIES: 'e' }), 'a');
    assert.equal(policyDirArg(['b'], undefined, { SIGNALBOX_POLICIES: 'e' }), 'b');
    assert.equal(policyDirArg(['a'], 'a', {}), 'a');
    assert.equal(policyDirArg([], undefined, { SIGNALBOX_POLICIES: 'e' }), 'e');
    assert.equal(policyDirArg([], undefined, {}), 'policies');
  });
  test('two different directories, two positionals or an empty flag are usage errors', () => {
    assert.throws(
      () => policyDirArg(['b'], 'a', {}),
      (e: unknown) => e instanceof SignalboxError && /two policy directories: --policies "a" and "b"/.test(e.message),
    );
    assert.throws(
      () => policyDirArg(['a', 'b'], undefined, {}),
      (e: unknown) => e instanceof SignalboxError && /one policy directory, not 2/.test(e.message),
    );
    assert.throws(
      () => policyDirArg([], '', {}),
      (e: unknown) => e instanceof SignalboxError && /--policies needs a directory/.test(e.message),
    );
  });
});

describe('validate, compile and explain take --policies DIR', () => {
  const broken = policyDir({ 'a.yaml': doc('Service', 'orders', '{ port: 8080 }') });

  test('validate: --policies, the positional and SIGNALBOX_POLICIES name the directory read', () => {
    for (const [args, env] of [
      [['validate', '--policies', broken], {}],
      [['validate', broken], {}],
      [['validate'], { SIGNALBOX_POLICIES: broken }],
    ] as const) {
      const r = cli([...args], env);
      assert.equal(r.status, 1, `${args.join(' ')}: ${r.stdout}${r.stderr}`);
      assert.match(r.stderr, /spec\.endpoints: required: give static endpoints or a consul section/);
    }
    assert.equal(cli(['validate', '--policies', 'policies']).status, 0);
  });

  test('compile and explain: --policies reads the given directory', () => {
    const c = cli(['compile', '--policies', broken]);
    assert.equal(c.status, 1);
    assert.match(c.stderr, /spec\.endpoints: required/);
    const ok = cli(['compile', '--policies', 'policies', '--group', 'gateway/public']);
    assert.equal(ok.status, 0, ok.stderr);
    assert.ok(JSON.parse(ok.stdout)['gateway/public']);
    const e = cli(['explain', '--policies', broken, '--proxy', 'public']);
    assert.equal(e.status, 1);
    assert.match(e.stderr, /spec\.endpoints: required/);
    const eok = cli(['explain', '--policies', 'policies', '--proxy', 'public']);
    assert.equal(eok.status, 0, eok.stderr);
    assert.match(eok.stdout, /^proxy group gateway\/public/);
  });

  test('two directories: exit 2 with the reason, for each command', () => {
    for (const command of ['validate', 'compile', 'explain']) {
      const r = cli([command, '--policies', 'policies', broken, ...(command === 'explain' ? ['--proxy', 'public'] : [])]);
      assert.equal(r.status, 2, `${command}: ${r.stderr}`);
      assert.match(r.stderr, new RegExp(`^signalbox ${command}: two policy directories`));
    }
  });
});
