// Hostile and broken policy input never takes the control plane down (issue 14): every case here
// once crashed, hung or was accepted. Directory loads run in a child process bounded by a timeout,
// because a synchronous hang (a FIFO read) or a native abort (std::bad_alloc, a fatal V8 error)
// cannot be caught or timed out inside the test process; a load that ends must print its result.
// Also: the limits as serve settings, the watcher not following symlinked folders, and a running
// `serve` that gets hostile files while it runs.
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:net';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { resolvePolicyLimits, resolveServeConfig } from '../../src/config/settings.js';
import { ErrorCode, SignalboxError, type PolicyError } from '../../src/errors.js';
import { DEFAULT_POLICY_LIMITS, parsePolicyText, type PolicyLimits } from '../../src/sources/files/loader.js';
import { watchPolicies } from '../../src/sources/files/watcher.js';
import { repoRoot } from '../helpers/envoy.js';
import { waitFor } from '../helpers/net.js';
import { startSignalbox, type SignalboxProcess } from '../helpers/signalbox.js';
import { policies, SERVICES } from '../xds/fixture.js';
import { doc, policyDir, removePolicyDirs } from './policy-dir.js';

after(removePolicyDirs);

const run = promisify(execFile);
const LOADER = fileURLToPath(new URL('../../src/sources/files/loader.js', import.meta.url));
/** Generous for a busy machine; every case here ends in well under a second when it is handled. */
const CHILD_TIMEOUT_MS = 20_000;
const TEST_TIMEOUT_MS = 30_000;

const SERVICE = doc('Service', 'orders', '{ port: 8080, endpoints: [ { address: 127.0.0.1, port: 9001 } ] }');

/**
 * The classic "billion laughs": nine aliases per level, six levels (531,441 strings once expanded).
 * With a kind (last, so the lines stay put): a document with neither apiVersion nor kind is not a
 * Signalbox document and is skipped without being expanded (ALIAS_BOMB_FOREIGN below).
 */
const ALIAS_BOMB_FOREIGN = `${['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]', ...'bcdef'.split('').map((l, i) => `${l}: &${l} [${Array(9).fill(`*${'abcde'[i]}`).join(',')}]`)].join('\n')}\n`;
const ALIAS_BOMB = `${ALIAS_BOMB_FOREIGN}kind: Service\n`;

interface ChildLoad {
  errors: PolicyError[];
  warnings: PolicyError[];
  documents: number;
}

/** loadPolicyDir(dir, undefined, limits) in a child process; fails the test if it crashes or does not end. */
async function loadInChild(dir: string, limits: Partial<PolicyLimits> = {}): Promise<ChildLoad> {
  const script = `import { loadPolicyDir } from ${JSON.stringify(LOADER)};
const r = await loadPolicyDir(process.argv[1], undefined, JSON.parse(process.argv[2]));
process.stdout.write(JSON.stringify({ errors: r.errors, warnings: r.warnings, documents: r.docs.length }));`;
  try {
    const { stdout } = await run(process.execPath, ['--input-type=module', '-e', script, dir, JSON.stringify(limits)], {
      timeout: CHILD_TIMEOUT_MS,
      killSignal: 'SIGKILL',
      maxBuffer: 64 * 1024 * 1024,
    });
    return JSON.parse(stdout) as ChildLoad;
  } catch (e) {
    const err = e as { killed?: boolean; signal?: string; code?: number; stderr?: string };
    if (err.killed) assert.fail(`loading ${dir} did not end within ${CHILD_TIMEOUT_MS} ms (a hang)`);
    assert.fail(`loading ${dir} took the process down (exit ${err.code ?? ''} ${err.signal ?? ''}): ${String(err.stderr ?? e).slice(-1500)}`);
  }
}

/** The one error of a load, checked to name `file` (a path ending) with `code`. */
function onlyError(r: ChildLoad, file: string, code: string): PolicyError {
  assert.equal(r.errors.length, 1, `exactly one error expected, got ${JSON.stringify(r.errors, null, 1)}`);
  const e = r.errors[0]!;
  assert.equal(e.code, code);
  assert.ok(e.file.endsWith(file), `the error names ${file}: ${e.file}`);
  return e;
}

describe('reading a policy directory is bounded and total', { timeout: 120_000 }, () => {
  test('an alias bomb is an error naming the file, not an exception', { timeout: TEST_TIMEOUT_MS }, async () => {
    const dir = policyDir({ 'services.yaml': SERVICE, 'bomb.yaml': ALIAS_BOMB });
    const e = onlyError(await loadInChild(dir), 'bomb.yaml', ErrorCode.YAML_SYNTAX);
    assert.equal(e.doc, 1);
    assert.equal(e.line, 2, 'the line of the first alias');
    assert.match(e.message, /aliases expand too much/);
  });

  test('an alias bomb in a document that is not a Signalbox document is skipped with a warning, never expanded', { timeout: TEST_TIMEOUT_MS }, async () => {
    const dir = policyDir({ 'services.yaml': SERVICE, 'bomb.yaml': ALIAS_BOMB_FOREIGN });
    const r = await loadInChild(dir);
    assert.deepEqual(r.errors, []);
    assert.equal(r.documents, 1, 'the Service still loads');
    assert.deepEqual(
      r.warnings.map((w) => [w.code, path.basename(w.file), w.doc]),
      [[ErrorCode.NOT_SIGNALBOX, 'bomb.yaml', 1]],
    );
  });

  test('a symlink to /dev/urandom is an error, never read', { timeout: TEST_TIMEOUT_MS }, async () => {
    const dir = policyDir({ 'services.yaml': SERVICE });
    symlinkSync('/dev/urandom', path.join(dir, 'random.yaml'));
    const e = onlyError(await loadInChild(dir), 'random.yaml', ErrorCode.FILE_READ);
    assert.match(e.message, /symbolic link leading outside the policy directory/);
  });

  test('a symlink to /dev/zero is an error, never read', { timeout: TEST_TIMEOUT_MS }, async () => {
    const dir = policyDir({ 'services.yaml': SERVICE });
    symlinkSync('/dev/zero', path.join(dir, 'zero.yaml'));
    const e = onlyError(await loadInChild(dir), 'zero.yaml', ErrorCode.FILE_READ);
    assert.match(e.message, /symbolic link leading outside the policy directory/);
  });

  test('a FIFO named x.yaml is an error and never opened (no hang)', { timeout: TEST_TIMEOUT_MS }, async () => {
    const dir = policyDir({ 'services.yaml': SERVICE });
    await run('mkfifo', [path.join(dir, 'x.yaml')]);
    const e = onlyError(await loadInChild(dir), 'x.yaml', ErrorCode.FILE_READ);
    assert.match(e.message, /named pipe \(FIFO\), not a regular file/);
  });

  test('a symlink inside the directory to a FIFO inside it is an error (no hang)', { timeout: TEST_TIMEOUT_MS }, async () => {
    const dir = policyDir({ 'services.yaml': SERVICE });
    await run('mkfifo', [path.join(dir, 'pipe')]);
    symlinkSync('pipe', path.join(dir, 'linked.yaml'));
    const e = onlyError(await loadInChild(dir), 'linked.yaml', ErrorCode.FILE_READ);
    assert.match(e.message, /named pipe \(FIFO\) \(through a symbolic link\)/);
  });

  test('a unix socket named s.yaml is an error and never opened', { timeout: TEST_TIMEOUT_MS }, async () => {
    const dir = policyDir({ 'services.yaml': SERVICE });
    const server = createServer();
    await new Promise<void>((resolve) => server.listen(path.join(dir, 's.yaml'), resolve));
    try {
      const e = onlyError(await loadInChild(dir), 's.yaml', ErrorCode.FILE_READ);
      assert.match(e.message, /is a socket, not a regular file/);
    } finally {
      server.close();
    }
  });

  test('a directory named d.yaml is an error, not a folder of policies', { timeout: TEST_TIMEOUT_MS }, async () => {
    const dir = policyDir({
      'services.yaml': SERVICE,
      'd.yaml/more.yaml': doc('Service', 'hidden', '{ port: 80, endpoints: [ { address: 127.0.0.1, port: 1 } ] }'),
    });
    const e = onlyError(await loadInChild(dir), 'd.yaml', ErrorCode.FILE_READ);
    assert.match(e.message, /is a directory, not a regular file/);
  });

  test('a symlink escaping the directory is an error, even to a valid policy', { timeout: TEST_TIMEOUT_MS }, async () => {
    const root = policyDir({
      'outside/ok.yaml': doc('Service', 'elsewhere', '{ port: 80, endpoints: [ { address: 127.0.0.1, port: 1 } ] }'),
      'policies/services.yaml': SERVICE,
    });
    const dir = path.join(root, 'policies');
    symlinkSync('../outside/ok.yaml', path.join(dir, 'escape.yaml'));
    const e = onlyError(await loadInChild(dir), 'escape.yaml', ErrorCode.FILE_READ);
    assert.match(e.message, /outside the policy directory/);
  });

  test('a symlink to a regular file inside the directory is read (links are not refused as such)', { timeout: TEST_TIMEOUT_MS }, async () => {
    const dir = policyDir({
      'services.yaml': SERVICE,
      'shared/route-source.yml.txt': doc('Service', 'linked', '{ port: 80, endpoints: [ { address: 127.0.0.1, port: 1 } ] }'),
    });
    symlinkSync('shared/route-source.yml.txt', path.join(dir, 'linked.yaml'));
    const r = await loadInChild(dir);
    assert.deepEqual(r.errors, []);
    assert.equal(r.documents, 2);
  });

  test('a file over the per-file limit is an error naming the limit, and is not parsed', { timeout: TEST_TIMEOUT_MS }, async () => {
    // Valid YAML but broken policy: were it parsed, schema errors would show up too.
    const big = `kind: Nope\npadding: "${'x'.repeat(3000)}"\n`;
    const dir = policyDir({ 'services.yaml': SERVICE, 'big.yaml': big });
    const e = onlyError(await loadInChild(dir, { maxFileBytes: 2048 }), 'big.yaml', ErrorCode.FILE_READ);
    assert.match(e.message, /^is 3\.0 KiB, over the limit of 2 KiB per policy file \(--max-policy-file-bytes, SIGNALBOX_MAX_POLICY_FILE_BYTES\); not read$/);
  });

  test('a directory over the per-directory limit is one error naming the limit; no file is read', { timeout: TEST_TIMEOUT_MS }, async () => {
    const files: Record<string, string> = {};
    for (let i = 0; i < 4; i++) files[`s${i}.yaml`] = `kind: Nope\n${'#'.repeat(1500)}\n`; // each would be a schema error
    const dir = policyDir(files);
    const r = await loadInChild(dir, { maxDirBytes: 4096 });
    const e = onlyError(r, path.basename(dir), ErrorCode.FILE_READ);
    assert.match(
      e.message,
      /^policy files total 5\.9 KiB, over the limit of 4 KiB per policy directory \(--max-policy-dir-bytes, SIGNALBOX_MAX_POLICY_DIR_BYTES\); nothing was read$/,
    );
  });

  test('more policy files than the limit is one error; no file is read', { timeout: TEST_TIMEOUT_MS }, async () => {
    const files: Record<string, string> = {};
    for (let i = 0; i < 5; i++) files[`sub/s${i}.yaml`] = 'kind: Nope\n';
    const dir = policyDir(files);
    const e = onlyError(await loadInChild(dir, { maxFiles: 3 }), path.basename(dir), ErrorCode.FILE_READ);
    assert.match(e.message, /^more than 3 policy files, the limit \(--max-policy-files, SIGNALBOX_MAX_POLICY_FILES\); nothing was read$/);
  });

  test('a 20 MB annotation is refused by the default per-file limit', { timeout: TEST_TIMEOUT_MS }, async () => {
    const annotated = SERVICE.replace('metadata: { name: orders }', `metadata:\n  name: orders\n  annotations:\n    note: "${'a'.repeat(20_000_000)}"`);
    const dir = policyDir({ 'services.yaml': annotated });
    const e = onlyError(await loadInChild(dir), 'services.yaml', ErrorCode.FILE_READ);
    assert.equal(DEFAULT_POLICY_LIMITS.maxFileBytes, 4 * 1024 * 1024);
    assert.match(e.message, /^is 19\.1 MiB, over the limit of 4 MiB per policy file/);
  });

  test('YAML nested 10,000 levels deep is an error (it aborted the process with a fatal V8 error)', { timeout: TEST_TIMEOUT_MS }, async () => {
    const dir = policyDir({ 'services.yaml': SERVICE, 'deep.yaml': `${'- '.repeat(10_000)}x\n` });
    const e = onlyError(await loadInChild(dir), 'deep.yaml', ErrorCode.YAML_SYNTAX);
    assert.match(e.message, /nested more than 64 levels deep/);
  });

  test('a file that is not UTF-8 text is an error', { timeout: TEST_TIMEOUT_MS }, async () => {
    const dir = policyDir({ 'services.yaml': SERVICE });
    writeFileSync(path.join(dir, 'binary.yaml'), Buffer.from([0x6b, 0x69, 0x6e, 0x64, 0x3a, 0x20, 0xff, 0xfe, 0x00, 0xc3]));
    const e = onlyError(await loadInChild(dir), 'binary.yaml', ErrorCode.FILE_READ);
    assert.match(e.message, /not UTF-8 text/);
  });

  test('a kind hiding control characters is shown escaped, not as a known kind', () => {
    const r = parsePolicyText(SERVICE.replace('kind: Service', 'kind: "Service\\0"'), 'p.yaml');
    assert.equal(r.errors.length, 1);
    assert.match(r.errors[0]!.message, /^unknown kind "Service\\u0000" \(did you mean "Service"\?\)/);
  });

  test('`signalbox validate DIR` on an alias bomb exits 1 with a clear message, no stack trace', { timeout: TEST_TIMEOUT_MS }, async () => {
    const dir = policyDir({ 'services.yaml': SERVICE, 'bomb.yaml': ALIAS_BOMB });
    const got = await run(process.execPath, [path.join(repoRoot(), 'bin/signalbox.js'), 'validate', dir], { timeout: CHILD_TIMEOUT_MS }).then(
      () => ({ code: 0, stderr: '' }),
      (e: { code?: number; stderr?: string }) => ({ code: e.code, stderr: e.stderr ?? '' }),
    );
    assert.equal(got.code, 1, got.stderr);
    assert.match(got.stderr, /bomb\.yaml#1: YAML: aliases expand too much \(more than the limit of 100; an "alias bomb"\?\)/);
    assert.match(got.stderr, /1 error\(s\) in /);
    assert.doesNotMatch(got.stderr, /^\s+at /m, 'no stack trace');
  });
});

describe('the limits are settings of serve (and validate)', () => {
  test('defaults, flags, environment twins and binary suffixes', () => {
    assert.deepEqual(resolveServeConfig({}, {}).policyLimits, { maxFileBytes: 4 * 1024 * 1024, maxDirBytes: 16 * 1024 * 1024, maxFiles: 10_000 });
    assert.deepEqual(
      resolveServeConfig(
        { 'max-policy-file-bytes': '512KiB', 'max-policy-files': '7' },
        { SIGNALBOX_MAX_POLICY_DIR_BYTES: '1GiB', SIGNALBOX_MAX_POLICY_FILE_BYTES: '1' },
      ).policyLimits,
      {
        maxFileBytes: 512 * 1024,
        maxDirBytes: 1024 ** 3,
        maxFiles: 7,
      },
    );
    assert.deepEqual(resolvePolicyLimits({}, { SIGNALBOX_MAX_POLICY_FILE_BYTES: '2048' }).maxFileBytes, 2048);
  });

  test('a bad value is SB_BAD_FLAG naming the flag and the value', () => {
    for (const [flag, bad] of [
      ['max-policy-file-bytes', '4MB'],
      ['max-policy-file-bytes', '0'],
      ['max-policy-dir-bytes', '-1'],
      ['max-policy-dir-bytes', '1.5MiB'],
      ['max-policy-dir-bytes', '99999999999GiB'],
      ['max-policy-files', 'many'],
      ['max-policy-files', '0'],
    ] as const) {
      assert.throws(
        () => resolveServeConfig({ [flag]: bad }, {}),
        (e: unknown) =>
          e instanceof SignalboxError && e.code === ErrorCode.BAD_FLAG && e.message.startsWith(`--${flag} must be`) && e.message.endsWith(`got "${bad}"`),
        `${flag} ${bad}`,
      );
    }
  });
});

describe('watching the policy directory', { timeout: 60_000 }, () => {
  test('a symlinked folder is not followed out of the directory (a link to / would watch the whole disk)', { timeout: 30_000 }, async () => {
    const root = policyDir({ 'policies/services.yaml': SERVICE, 'outside/keep.txt': 'x' });
    const dir = path.join(root, 'policies');
    symlinkSync('../outside', path.join(dir, 'elsewhere'));
    let changes = 0;
    const w = watchPolicies(dir, 20, () => changes++);
    try {
      // A change inside is seen (the watcher is running), then a change through the link is not.
      await waitFor(
        () => {
          writeFileSync(path.join(dir, 'touch.yaml'), `# ${Date.now()}\n`);
          return changes > 0;
        },
        { timeoutMs: 10_000, intervalMs: 200, what: 'the watcher to see a change inside the directory' },
      );
      await new Promise((r) => setTimeout(r, 300));
      changes = 0;
      writeFileSync(path.join(root, 'outside', 'new.yaml'), SERVICE);
      await new Promise((r) => setTimeout(r, 1_000));
      assert.equal(changes, 0, 'a file written behind the symlinked folder is not watched');
    } finally {
      await w.close();
    }
  });
});

describe('a running control plane given hostile policy files keeps serving', { timeout: 120_000 }, () => {
  let sb: SignalboxProcess;
  let dir: string;
  const admin = async (p: string) => {
    const res = await fetch(`http://127.0.0.1:${sb.adminPort}${p}`);
    return { status: res.status, body: (await res.json()) as any };
  };
  const versions = async () => JSON.stringify((await admin('/api/groups')).body.groups);

  before(async () => {
    dir = policyDir({ 'services.yaml': SERVICES, 'policies.yaml': policies() });
    sb = await startSignalbox({ policies: dir });
  });
  after(async () => {
    await sb?.kill();
  });

  /** Waits until /api/errors lists exactly the files in `files` (path endings), then checks the server's health. */
  async function rejectedWith(files: string[], good: string): Promise<any[]> {
    let errors: any[] = [];
    await waitFor(
      async () => {
        errors = (await admin('/api/errors')).body.errors;
        return files.every((f) => errors.some((e) => e.file.endsWith(f)));
      },
      { timeoutMs: 15_000, what: `/api/errors to list ${files.join(', ')}` },
    ).catch((e: Error) => assert.fail(`${e.message}; the server's log ends:\n${sb.logs().slice(-3000)}`));
    assert.equal((await admin('/healthz')).status, 200);
    const ready = await admin('/readyz');
    assert.equal(ready.status, 200, 'still ready: proxies keep the last good configuration');
    assert.equal(await versions(), good, 'the groups still hold the last good configuration');
    return errors;
  }

  test('an alias bomb dropped into the directory is reported; /healthz answers and the last good config stays', { timeout: 60_000 }, async () => {
    const good = await versions();
    assert.notEqual(good, '[]');
    writeFileSync(path.join(dir, 'bomb.yaml'), ALIAS_BOMB);
    const errors = await rejectedWith(['bomb.yaml'], good);
    assert.equal(errors.length, 1);
    assert.match(errors[0].message, /aliases expand too much/);
  });

  test('then a FIFO and a symlink to /dev/urandom: both reported, nothing hangs', { timeout: 60_000 }, async () => {
    const good = await versions();
    await run('mkfifo', [path.join(dir, 'pipe.yaml')]);
    symlinkSync('/dev/urandom', path.join(dir, 'random.yaml'));
    const errors = await rejectedWith(['bomb.yaml', 'pipe.yaml', 'random.yaml'], good);
    assert.equal(errors.length, 3, JSON.stringify(errors));
  });

  test('once the hostile files are gone the directory is valid again (the watcher and reloads still work)', { timeout: 60_000 }, async () => {
    for (const f of ['bomb.yaml', 'pipe.yaml', 'random.yaml']) rmSync(path.join(dir, f));
    await waitFor(async () => (await admin('/api/errors')).body.valid === true, { timeoutMs: 15_000, what: 'the directory to be valid again' });
    assert.equal((await admin('/readyz')).body.degraded, undefined);
  });
});
