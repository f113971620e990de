// A reload told which files changed reads only those, and gives what a full read gives; the
// watcher reloads the first change after a quiet spell at once and a save-then-rename once.
import assert from 'node:assert/strict';
import { mkdirSync, mkdtempSync, renameSync, rmSync, symlinkSync, unlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { after, describe, test } from 'node:test';
import { Pipeline } from '../../src/controller/pipeline.js';
import { createLogger } from '../../src/observability/logger.js';
import { loadPolicyDir, PolicyParseCache } from '../../src/sources/files/loader.js';
import { watchPolicies, type PolicyChanges } from '../../src/sources/files/watcher.js';
import { SnapshotCache } from '../../src/xds/cache/snapshot-cache.js';
import { PUSH_ORDER } from '../../src/xds/resources/type-urls.js';
import { routeFile, writePolicyDir, DEFAULT_SHAPE } from '../../bench/policy-gen.js';
import { waitFor } from '../helpers/net.js';

const dirs: string[] = [];
after(() => {
  for (const d of dirs) rmSync(d, { recursive: true, force: true });
});
function tempDir(): string {
  const d = mkdtempSync(path.join(tmpdir(), 'sb-incr-'));
  dirs.push(d);
  return d;
}

const SHAPE = { ...DEFAULT_SHAPE, services: 12, routes: 40, gateways: 2, hostnames: 4 };

/** What a load gave, in a form to compare (documents with their sources, and errors). */
function summary(r: Awaited<ReturnType<typeof loadPolicyDir>>) {
  return {
    docs: r.docs.map((d) => `${d.source.file}#${d.source.doc} ${d.kind}/${d.name} ${JSON.stringify(d.value)}`),
    errors: r.errors.map((e) => `${e.file} ${e.message}`),
    files: r.files,
  };
}

describe('a load told which files changed', () => {
  test('re-reads only those and equals a full load; anything else falls back to a full load', async () => {
    const dir = tempDir();
    const { changeFile } = writePolicyDir(dir, SHAPE);
    const cache = new PolicyParseCache();
    await loadPolicyDir(dir, cache);
    assert.ok(cache.last, 'a clean full load is the starting point of hinted loads');

    writeFileSync(changeFile, routeFile(0, SHAPE, 7000));
    const hinted = await loadPolicyDir(dir, cache, {}, { changed: new Set([path.resolve(changeFile)]) });
    assert.deepEqual(summary(hinted), summary(await loadPolicyDir(dir, new PolicyParseCache())));
    assert.ok(
      hinted.docs.some((d) => JSON.stringify(d.value).includes('7s') || JSON.stringify(d.value).includes('7000')),
      'the edit is read',
    );

    // A hint that is stale or incomplete still cannot hide a change it does not name: an added file,
    // a removed one, and an invalid edit are each seen, because each forces or is a real read.
    writeFileSync(path.join(dir, 'routes', 'added.yaml'), routeFile(1, SHAPE).replace('name: svc-001', 'name: added'));
    const added = await loadPolicyDir(dir, cache, {}, { changed: new Set([path.join(dir, 'routes', 'added.yaml')]) });
    assert.ok(
      added.docs.some((d) => d.name === 'added'),
      'a file the last load did not have: full load',
    );
    unlinkSync(path.join(dir, 'routes', 'added.yaml'));
    const removed = await loadPolicyDir(dir, cache, {}, { changed: new Set([path.join(dir, 'routes', 'added.yaml')]) });
    assert.ok(!removed.docs.some((d) => d.name === 'added'), 'a file gone: full load');
    writeFileSync(changeFile, 'kind: [');
    const broken = await loadPolicyDir(dir, cache, {}, { changed: new Set([changeFile]) });
    assert.ok(
      broken.errors.some((e) => e.file.endsWith('svc-000.yaml')),
      'the edit is parsed and its error reported',
    );
    assert.deepEqual(summary(broken), summary(await loadPolicyDir(dir, new PolicyParseCache())));
  });

  test('a run of hinted loads keeps equalling a full load as the changed file gains, loses and breaks documents', async () => {
    const dir = tempDir();
    const { changeFile } = writePolicyDir(dir, SHAPE);
    const other = path.join(path.dirname(changeFile), 'svc-003.yaml');
    const cache = new PolicyParseCache();
    await loadPolicyDir(dir, cache);
    const second = routeFile(1, SHAPE).replace('name: svc-001', 'name: second');
    // Each step's text for the changed file: plain edits (documents swapped in place), a second
    // document (every file after it moves), back to one, a syntax error and a fix, then two files at once.
    const steps: [string, string][] = [
      [changeFile, routeFile(0, SHAPE, 7001)],
      [changeFile, routeFile(0, SHAPE, 7002)],
      [changeFile, `${routeFile(0, SHAPE, 7003)}\n---\n${second}`],
      [changeFile, `${routeFile(0, SHAPE, 7004)}\n---\n${second}`],
      [changeFile, routeFile(0, SHAPE, 7005)],
      [changeFile, 'kind: ['],
      [changeFile, routeFile(0, SHAPE, 7006)],
      [other, routeFile(3, SHAPE, 7007)],
      [other, routeFile(3, SHAPE, 7008)],
    ];
    for (const [i, [file, text]] of steps.entries()) {
      writeFileSync(file, text);
      const hinted = await loadPolicyDir(dir, cache, {}, { changed: new Set([file]) });
      assert.deepEqual(summary(hinted), summary(await loadPolicyDir(dir, new PolicyParseCache())), `step ${i + 1}`);
      assert.ok(cache.last, `step ${i + 1}: the next load can start from this one`);
    }
    // What a hinted load hands out is the caller's: changing it does not change the next load.
    const a = await loadPolicyDir(dir, cache, {}, { changed: new Set([other]) });
    a.docs.length = 0;
    a.files.length = 0;
    const b = await loadPolicyDir(dir, cache, {}, { changed: new Set([other]) });
    assert.deepEqual(summary(b), summary(await loadPolicyDir(dir, new PolicyParseCache())));
    // Paths are shown relative to the working directory: a load after it moved shows them anew.
    const cwd = process.cwd();
    try {
      process.chdir(dir);
      const moved = await loadPolicyDir(dir, cache, {}, { changed: new Set([other]) });
      assert.ok(moved.files.includes(path.join('routes', 'svc-003.yaml')), 'shown relative to the new working directory');
      assert.deepEqual(summary(moved), summary(await loadPolicyDir(dir, new PolicyParseCache())));
    } finally {
      process.chdir(cwd);
    }
  });

  test('a directory holding a symbolic link is always read whole (a link target changes without an event for the link)', async () => {
    const dir = tempDir();
    writePolicyDir(dir, SHAPE);
    mkdirSync(path.join(dir, 'real'));
    writeFileSync(path.join(dir, 'real', 'extra.yml'), routeFile(2, SHAPE).replace('name: svc-002', 'name: linked'));
    symlinkSync(path.join(dir, 'real', 'extra.yml'), path.join(dir, 'routes', 'link.yaml'));
    const cache = new PolicyParseCache();
    await loadPolicyDir(dir, cache);
    assert.equal(cache.last, undefined);
  });
});

describe('the watcher', { timeout: 30_000 }, () => {
  test('reloads the first change after a quiet spell without waiting out the debounce, and a save-then-rename once', async () => {
    const dir = tempDir();
    writeFileSync(path.join(dir, 'a.yaml'), '# a\n');
    const seen: PolicyChanges[] = [];
    // A debounce far longer than the test waits: only the quiet-spell path can deliver in time.
    const w = watchPolicies(dir, 20_000, (c) => seen.push(c));
    try {
      await w.ready;
      // An editor's safe save: the new text under a temporary name, then renamed over the file.
      writeFileSync(path.join(dir, 'a.yaml.tmp'), '# a, edited\n');
      renameSync(path.join(dir, 'a.yaml.tmp'), path.join(dir, 'a.yaml'));
      await waitFor(() => seen.length > 0, { timeoutMs: 5_000, what: 'the change to be delivered' });
      await new Promise((r) => setTimeout(r, 500));
      assert.equal(seen.length, 1, 'one callback for a save-then-rename');
      assert.deepEqual([...seen[0]!.paths], [path.join(dir, 'a.yaml')]);
      assert.equal(seen[0]!.full, false);
    } finally {
      await w.close();
    }
  });

  test('every rename onto a file is reported, however soon after the last one', async () => {
    const dir = tempDir();
    const file = path.join(dir, 'a.yaml');
    writeFileSync(file, '# 0\n');
    let calls = 0;
    const w = watchPolicies(dir, 20, (c) => {
      if (c.full || c.paths.has(file)) calls++;
    });
    try {
      await w.ready;
      // As a tool that writes a temporary file and renames it into place does, one edit at a time:
      // each waits for its own report (chokidar alone missed ~1 in 30 of these).
      let missed = 0;
      for (let i = 1; i <= 200; i++) {
        const before = calls;
        writeFileSync(path.join(dir, '.a.yaml.tmp'), `# ${i}\n`);
        renameSync(path.join(dir, '.a.yaml.tmp'), file);
        try {
          await waitFor(() => calls > before, { timeoutMs: 300, intervalMs: 2, what: `rename ${i} reported` });
        } catch {
          missed++;
        }
      }
      assert.equal(missed, 0, `${missed} of 200 renames were never reported`);
    } finally {
      await w.close();
    }
  });

  test('changes that keep coming are gathered; a new folder asks for a full read', async () => {
    const dir = tempDir();
    writeFileSync(path.join(dir, 'a.yaml'), '# a\n');
    const seen: PolicyChanges[] = [];
    const w = watchPolicies(dir, 400, (c) => seen.push(c));
    try {
      await w.ready;
      writeFileSync(path.join(dir, 'a.yaml'), '# 1\n');
      await waitFor(() => seen.length === 1, { timeoutMs: 5_000, what: 'the first change' });
      // Right after a reload: these are gathered over the debounce into one callback.
      for (let i = 0; i < 5; i++) writeFileSync(path.join(dir, `b${i}.yaml`), `# ${i}\n`);
      mkdirSync(path.join(dir, 'sub'));
      await waitFor(() => seen.length >= 2, { timeoutMs: 5_000, what: 'the gathered changes' });
      await new Promise((r) => setTimeout(r, 600));
      assert.equal(seen.length, 2, 'the burst after a reload is one callback');
      assert.equal(seen[1]!.full, true, 'a folder event asks for a full read');
      assert.ok([0, 1, 2, 3, 4].every((i) => seen[1]!.paths.has(path.join(dir, `b${i}.yaml`))));
    } finally {
      await w.close();
    }
  });
});

test('a burst of hinted reloads ends on the resources and versions one full reload of the final files gives', async () => {
  const dir = tempDir();
  const { changeFile } = writePolicyDir(dir, SHAPE);
  const logger = createLogger({ level: 'silent' });
  const live = new Pipeline({ policyDir: dir, cache: new SnapshotCache(), logger });
  await live.reload();
  const other = path.join(dir, 'routes', 'svc-003.yaml');
  const reloads: Promise<unknown>[] = [];
  for (let i = 0; i < 20; i++) {
    const file = i % 3 === 0 ? other : changeFile;
    writeFileSync(`${file}.next`, routeFile(file === other ? 3 : 0, SHAPE, 6000 + i));
    renameSync(`${file}.next`, file);
    // Not awaited: reloads overlap and are coalesced, their hints merged.
    reloads.push(live.reload({ paths: new Set([file]), full: false }));
  }
  await Promise.all(reloads);
  await waitFor(async () => (await live.reload()).applied, { timeoutMs: 10_000, what: 'a last reload' });
  const fresh = new Pipeline({ policyDir: dir, cache: new SnapshotCache(), logger });
  await fresh.reload();
  const versions = (p: Pipeline) => Object.fromEntries([...p.irGroups().keys()].map((g) => [g, p['opts'].cache.get(g).version]));
  assert.deepEqual(versions(live), versions(fresh));
  assert.ok(Object.keys(versions(live)).length >= 2);
  // And the same resources: per group and type, every name with its version and bytes.
  const resources = (p: Pipeline) =>
    Object.fromEntries(
      [...p.irGroups().keys()].map((g) => {
        const snap = p['opts'].cache.get(g);
        return [g, PUSH_ORDER.map((t) => [...snap.get(t).values()].map((r) => `${r.name} ${r.version} ${Buffer.from(r.bytes).toString('base64')}`).sort())];
      }),
    );
  assert.deepEqual(resources(live), resources(fresh));
});
