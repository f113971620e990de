// One CLI convention: every command's flags come from one table (src/cli/commands.ts) that both
// parses them and prints `--help` (flags, defaults, environment variables); a usage error exits 2
// on every command; a flag several commands take means the same there.
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { describe, test } from 'node:test';
import { COMMANDS } from '../../src/cli/commands.js';
import { commandHelp, parseFlags, parseOptions } from '../../src/cli/flags.js';
import { repoRoot } from '../helpers/envoy.js';

const cli = (args: string[]) =>
  spawnSync(process.execPath, ['bin/signalbox.js', ...args], {
    cwd: repoRoot(),
    encoding: 'utf8',
    timeout: 30_000,
    env: { ...process.env, SIGNALBOX_POLICIES: undefined },
  });

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
        const entry = r.stdout
          .slice(at)
          .split(/\n {2}--/)[0]!
          .replace(/\s+/g, ' ');
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

describe('one flag name, one meaning', () => {
  /**
   * Names that mean something else on another command, each for a reason: serve binds what the
   * proxy's bootstrap dials, and opens the ext_authz and rate-limit ports on demand where `authz`
   * and `ratelimit` always open them; the two standalone services each have their own metrics port
   * and --insecure switch (own variables, own defaults), since both may run on one host.
   * (bootstrap's --admin-port and --admin-address are the old spellings of --envoy-admin-port and
   * --envoy-admin-address, kept so that existing scripts work.)
   */
  const DIFFERENT_ON_PURPOSE = new Set([
    'serve/bootstrap --xds-address',
    'serve/bootstrap --admin-port',
    'serve/bootstrap --admin-address',
    'serve/authz --authz-port',
    'serve/ratelimit --ratelimit-port',
    'authz/ratelimit --metrics-address',
    'authz/ratelimit --metrics-port',
    'authz/ratelimit --insecure',
  ]);

  test('a flag several commands take has the same value form, environment variable and default on each', () => {
    const seen = new Map<string, { command: string; value?: string; env?: string; default?: string }>();
    const clashes: string[] = [];
    for (const c of COMMANDS) {
      for (const f of c.flags) {
        const first = seen.get(f.name);
        if (!first) {
          seen.set(f.name, { command: c.name, value: f.value, env: f.env, default: f.default });
          continue;
        }
        const same = first.env === f.env && (first.default || '') === (f.default || '') && (first.value === undefined) === (f.value === undefined);
        if (!same) clashes.push(`${first.command}/${c.name} --${f.name}`);
      }
    }
    assert.deepEqual(
      clashes.filter((c) => !DIFFERENT_ON_PURPOSE.has(c)),
      [],
    );
    assert.deepEqual(clashes.sort(), [...DIFFERENT_ON_PURPOSE].sort(), 'the list of exceptions is exact');
  });

  test('--instance is taken by bootstrap and token alike; --policies by every command that reads policies', () => {
    const takes = (flag: string) => COMMANDS.filter((c) => c.flags.some((f) => f.name === flag)).map((c) => c.name);
    assert.deepEqual(takes('instance'), ['bootstrap', 'token']);
    assert.deepEqual(takes('gateway'), ['bootstrap', 'token']);
    assert.deepEqual(takes('service'), ['bootstrap', 'token']);
    assert.deepEqual(takes('ttl'), ['bootstrap', 'token']);
    assert.deepEqual(takes('policies'), ['serve', 'validate', 'compile', 'explain', 'authz', 'ratelimit']);
    assert.deepEqual(takes('data-dir'), ['serve', 'authz', 'ratelimit', 'bootstrap', 'token']);
  });
});

describe("token takes bootstrap's --instance, meaning the same proxy", () => {
  test('token --instance writes the token where bootstrap with the same flags looks for it; --out still wins', async () => {
    const { mkdtempSync, existsSync, statSync, writeFileSync } = await import('node:fs');
    const os = await import('node:os');
    const path = await import('node:path');
    const { proxyCredentialsDir, XDS_CA_FILE } = await import('../../src/cli/bootstrap.js');
    const dataDir = mkdtempSync(path.join(os.tmpdir(), 'sb-token-'));
    const r = cli(['token', '--service', 'orders', '--instance', 'orders-v1', '--ttl', '1h', '--data-dir', dataDir]);
    assert.equal(r.status, 0, r.stderr);
    assert.equal(r.stdout, '', 'the files, not a printed JWT');
    const dir = proxyCredentialsDir(dataDir, { service: 'orders', instance: 'orders-v1' });
    assert.equal(dir, path.join(dataDir, 'proxies', 'service-orders-v1'));
    assert.match(r.stderr, /^token [0-9a-f-]{36} for service\/orders \(instance orders-v1\), expires/);
    assert.ok(r.stderr.includes(path.join(dir, 'token.crt')), r.stderr);
    assert.equal(statSync(path.join(dir, 'token.key')).mode & 0o777, 0o600);
    // bootstrap with the same --service and --instance (and --credentials pointing at nothing else) names that folder.
    writeFileSync(path.join(dataDir, XDS_CA_FILE), '-----BEGIN CERTIFICATE-----\n-----END CERTIFICATE-----\n');
    const b = cli([
      'bootstrap',
      '--service',
      'orders',
      '--instance',
      'orders-v1',
      '--app-port',
      '9001',
      '--inbound-port',
      '21001',
      '--data-dir',
      dataDir,
      '--credentials',
      dir,
    ]);
    assert.equal(b.status, 0, b.stderr);
    assert.match(b.stdout, new RegExp(`filename: ${path.join(dir, 'token.crt').replace(/[.*+?^${}()|[\]\\/]/g, '\\$&')}`));
    assert.match(b.stderr, /node id orders-v1 /);
    const gw = cli(['token', '--gateway', 'edge', '--instance', 'host-a', '--data-dir', dataDir]);
    assert.equal(gw.status, 0, gw.stderr);
    assert.ok(existsSync(path.join(dataDir, 'proxies', 'gateway-edge-host-a', 'token.crt')));
    const out = path.join(dataDir, 'elsewhere');
    assert.equal(cli(['token', '--service', 'orders', '--instance', 'orders-v1', '--out', out, '--data-dir', dataDir]).status, 0);
    assert.ok(existsSync(path.join(out, 'token.jwt')));
    const bad = cli(['token', '--service', 'orders', '--instance', 'a b', '--data-dir', dataDir]);
    assert.equal(bad.status, 2);
    assert.match(bad.stderr, /--instance must be 1 to 256 printable characters without spaces/);
    const noInstance = cli(['token', '--service', 'orders', '--data-dir', dataDir]);
    assert.equal(noInstance.status, 0, noInstance.stderr);
    assert.match(noInstance.stdout, /^ey[\w-]+\.[\w-]+\.[\w-]+\n$/, 'without --instance or --out: the JWT, as before');
  });
});
