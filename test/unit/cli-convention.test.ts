// One CLI convention: every command's flags come from one table (src/cli/commands.ts) that both
// parses them and prints `--help` (flags, defaults, environment variables); a usage error exits 2
// on every command.
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { describe, test } from 'node:test';
import { COMMANDS } from '../../src/cli/commands.js';
import { commandHelp, parseFlags, parseOptions } from '../../src/cli/flags.js';
import { repoRoot } from '../helpers/envoy.js';

const cli = (args: string[]) => spawnSync(process.execPath, ['bin/signalbox.js', ...args], { cwd: repoRoot(), encoding: 'utf8', timeout: 30_000, env: { ...process.env, SIGNALBOX_POLICIES: undefined } });

describe('--help on every command', () => {
  for (const c of COMMANDS) {
    test(`signalbox ${c.name} --help lists every flag with its default and environment variable, and exits 0`, () => {
      const r = cli([c.name, '--help']);
      assert.equal(r.status, 0, r.stderr);
      assert.equal(r.stderr, '');
      assert.equal(r.stdout, commandHelp(c));
      assert.ok(c.flags.length > 0);
      for (const f of c.flags) {
        const at = r.stdout.indexOf(`  --${f.name}${f.value ? ` ${f.value}` : ''}`);
        assert.ok(at >= 0, `--${f.name} is listed`);
        // The flag's own entry runs to the next flag's.
        const entry = r.stdout.slice(at).split(/\n  --/)[0]!.replace(/\s+/g, ' ');
        if (f.default) assert.ok(entry.includes(`default ${f.default}`), `--${f.name}: default ${f.default} in "${entry}"`);
        if (f.env) assert.ok(entry.includes(`env ${f.env}`), `--${f.name}: env ${f.env} in "${entry}"`);
      }
      assert.match(r.stdout.replace(/\s+/g, ' '), /Exit codes: 0 success, 1 findings .*, 2 a usage error/);
      assert.equal(cli([c.name, '-h']).stdout, r.stdout, '-h is --help');
    });
  }

  test('signalbox --help names every command; signalbox alone is a usage error', () => {
    const r = cli(['--help']);
    assert.equal(r.status, 0);
    for (const c of COMMANDS) assert.match(r.stdout, new RegExp(`^  signalbox ${c.name}\\b`, 'm'));
    assert.match(r.stdout, /signalbox COMMAND --help lists the flags/);
    assert.equal(cli([]).status, 2);
    assert.equal(cli(['nonsense']).status, 2);
  });

  test('the table is what is parsed: every listed flag is accepted, nothing else', () => {
    for (const c of COMMANDS) {
      const options = parseOptions(c.flags);
      for (const f of c.flags) {
        if (f.custom) continue;
        assert.equal(options[f.name]?.type, f.value === undefined ? 'boolean' : 'string', `${c.name} --${f.name}`);
        const parsed = parseFlags(c.flags, f.value === undefined ? [`--${f.name}`] : [`--${f.name}`, 'x']);
        assert.equal(f.value === undefined ? parsed.bool(f.name) : parsed.str(f.name), f.value === undefined ? true : 'x');
      }
      assert.throws(() => parseFlags(c.flags, ['--not-a-flag']), { code: 'ERR_PARSE_ARGS_UNKNOWN_OPTION' });
    }
  });
});

describe('usage errors exit 2 on every command', () => {
  for (const c of COMMANDS) {
    test(`signalbox ${c.name} --not-a-flag`, () => {
      const r = cli([c.name, '--not-a-flag']);
      assert.equal(r.status, 2, r.stderr);
      assert.match(r.stderr, new RegExp(`^signalbox ${c.name}: .*--not-a-flag`));
      assert.match(r.stderr, new RegExp(`signalbox ${c.name} --help lists its flags`));
      assert.equal(r.stdout, '');
    });
  }
  for (const name of ['serve', 'schema', 'status', 'bootstrap', 'authz']) {
    test(`signalbox ${name} with an argument it does not take`, () => {
      const r = cli([name, 'stray']);
      assert.equal(r.status, 2, r.stderr);
      assert.match(r.stderr, /stray/);
    });
  }
  test('a flag without its value', () => {
    const r = cli(['compile', '--group']);
    assert.equal(r.status, 2);
    assert.match(r.stderr, /--group/);
  });
});
