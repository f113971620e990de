// The data directory is crash-safe: half-written CA state is reported (naming the file and the
// way out) and never replaced by a new root; damaged extra trust bundles are refused; folder and
// disk faults say what is wrong and where.
//
// How faults are simulated: the tests run as root, where chmod blocks nothing. A path under a
// FILE gives a real ENOTDIR. EROFS, EACCES and ENOSPC are injected by wrapping node:fs for paths
// inside the test's own temporary folder only: `fs.promises.mkdir` behaves as Node does on a
// read-only parent (a recursive mkdir reports ENOENT, a plain one EROFS), and `fs.open` (what
// write-file-atomic uses to create its temporary file) fails with the chosen code for the file
// under test. (Checked by hand on real tmpfs mounts too: a 16 KiB one for ENOSPC, a read-only
// one for EROFS; same messages.)
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import fs, { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterEach, describe, test } from 'node:test';
import { CertificateAuthority } from '../../src/ca/ca.js';
import { TokenVerifier } from '../../src/ca/tokens.js';
import { writeDataFile } from '../../src/util/data-dir.js';
import { ErrorCode } from '../../src/errors.js';

const tmp = (p: string) => mkdtempSync(path.join(os.tmpdir(), p));
const TD = 'data-dir.test';
const repo = path.resolve(import.meta.dirname, '..', '..', '..');

function errno(code: string, syscall: string, p: string): NodeJS.ErrnoException {
  return Object.assign(new Error(`${code}: simulated, ${syscall} '${p}'`), { code, syscall, path: p });
}

const restores: (() => void)[] = [];
afterEach(() => {
  for (const r of restores.splice(0).reverse()) r();
});

/** fs.open (callback form, used by write-file-atomic) fails with `code` for files whose name starts with `prefix`. */
function failOpen(prefix: string, code: string): void {
  const orig = fs.open;
  (fs as { open: unknown }).open = (p: fs.PathLike, ...rest: unknown[]) => {
    const cb = rest[rest.length - 1] as (e: Error | null) => void;
    if (String(p).startsWith(prefix)) return process.nextTick(cb, errno(code, 'open', String(p)));
    return (orig as (...a: unknown[]) => void)(p, ...rest);
  };
  restores.push(() => ((fs as { open: unknown }).open = orig));
}

/** `root` acts as a read-only file system: mkdir inside it fails as Node reports it (ENOENT when recursive, EROFS when not). */
function readOnly(root: string): void {
  const orig = fs.promises.mkdir;
  fs.promises.mkdir = (async (p: fs.PathLike, opts?: fs.MakeDirectoryOptions) => {
    const s = String(p);
    if (s.startsWith(root + path.sep)) {
      if (existsSync(s)) return opts?.recursive ? undefined : Promise.reject(errno('EEXIST', 'mkdir', s));
      throw errno(opts?.recursive ? 'ENOENT' : 'EROFS', 'mkdir', s);
    }
    return orig(p, opts);
  }) as typeof fs.promises.mkdir;
  restores.push(() => (fs.promises.mkdir = orig));
}

/** Records the order in which files are renamed into place (write-file-atomic's last step). */
function recordRenames(): string[] {
  const seen: string[] = [];
  const orig = fs.rename;
  (fs as { rename: unknown }).rename = (from: fs.PathLike, to: fs.PathLike, cb: (e: Error | null) => void) => {
    seen.push(path.basename(String(to)));
    return orig(from, to, cb);
  };
  restores.push(() => ((fs as { rename: unknown }).rename = orig));
  return seen;
}

const open = (dataDir: string) => CertificateAuthority.open({ dataDir, trustDomain: TD });

/** A data folder with a generated root; returns its paths and the key's bytes. */
async function generated() {
  const dir = tmp('sb-dd-');
  await open(dir);
  const ca = path.join(dir, 'ca');
  const keyFile = path.join(ca, 'root.key');
  const certFile = path.join(ca, 'root.crt');
  return {
    dir,
    keyFile,
    certFile,
    bundleFile: path.join(ca, 'trust-bundle-extra.pem'),
    key: readFileSync(keyFile, 'utf8'),
    cert: readFileSync(certFile, 'utf8'),
  };
}

/** An assertion that the error names `file`, says how to start over, and prints no key material. */
function refusal(file: string, what: RegExp, keyPem?: string) {
  return (e: Error) => {
    assert.ok(e.message.includes(file), `names ${file}: ${e.message}`);
    assert.match(e.message, what);
    assert.match(
      e.message,
      /restore it from a backup, or remove .*root\.key and .*root\.crt to generate a new root \(every proxy certificate changes, and bootstraps need the new .*xds-ca\.pem\)/,
    );
    assert.ok(!e.message.includes('PRIVATE KEY') && (!keyPem || !e.message.includes(keyPem.split('\n')[1]!.slice(0, 20))), 'no key material');
    return true;
  };
}

describe('partial CA state is detected at start, never replaced by a new root', () => {
  test('a first start writes root.key before root.crt, so a crash between them leaves a key without a certificate', async () => {
    const renames = recordRenames();
    const dir = tmp('sb-dd-order-');
    await open(dir);
    assert.deepEqual(
      renames.filter((f) => f.startsWith('root.')),
      ['root.key', 'root.crt'],
    );
  });

  test('root.key without root.crt (a crash between the two writes): an error naming root.crt; the key is kept', async () => {
    const s = await generated();
    rmSync(s.certFile);
    await assert.rejects(
      open(s.dir),
      refusal(s.certFile, /the CA certificate .*root\.crt is missing but its key .*root\.key exists.*refusing to make a new root/, s.key),
    );
    assert.equal(readFileSync(s.keyFile, 'utf8'), s.key, 'the key is untouched');
    assert.equal(existsSync(s.certFile), false, 'no new certificate made');
  });

  test('root.crt without root.key: an error naming root.key; the certificate is kept', async () => {
    const s = await generated();
    rmSync(s.keyFile);
    await assert.rejects(open(s.dir), refusal(s.keyFile, /the CA private key .*root\.key is missing but .*root\.crt exists; refusing to make a new root/));
    assert.equal(readFileSync(s.certFile, 'utf8'), s.cert);
    assert.equal(existsSync(s.keyFile), false);
  });

  test('an empty root.crt next to root.key (the full-disk report): an error naming root.crt, not a new root', async () => {
    const s = await generated();
    writeFileSync(s.certFile, '');
    await assert.rejects(open(s.dir), refusal(s.certFile, /the CA certificate .*root\.crt is empty/, s.key));
    assert.equal(readFileSync(s.keyFile, 'utf8'), s.key);
    assert.equal(readFileSync(s.certFile, 'utf8'), '');
  });

  test('an empty root.key: an error naming root.key', async () => {
    const s = await generated();
    writeFileSync(s.keyFile, '\n');
    await assert.rejects(open(s.dir), refusal(s.keyFile, /the CA private key .*root\.key is empty/));
  });

  test('a root.crt that is not PEM: an error naming it', async () => {
    const s = await generated();
    writeFileSync(s.certFile, 'garbage\n');
    await assert.rejects(open(s.dir), refusal(s.certFile, /root\.crt is not a PEM certificate/, s.key));
  });

  test('a root.key of another root: an error naming both files, without key material', async () => {
    const s = await generated();
    const other = await generated();
    writeFileSync(s.keyFile, other.key);
    await assert.rejects(open(s.dir), refusal(s.keyFile, /root\.key does not match the certificate .*root\.crt/, other.key));
  });

  test('following the advice (remove root.key and root.crt) generates a new root', async () => {
    const s = await generated();
    writeFileSync(s.certFile, '');
    await assert.rejects(open(s.dir));
    rmSync(s.keyFile);
    rmSync(s.certFile);
    const ca = await open(s.dir);
    assert.equal(ca.source, 'generated');
    assert.notEqual(readFileSync(s.keyFile, 'utf8'), s.key);
  });
});

describe('the extra trust bundle must be a list of PEM CA certificates', () => {
  const withBundle = async (content: string) => {
    const s = await generated();
    writeFileSync(s.bundleFile, content);
    return s;
  };
  const refused = (file: string, why: RegExp) => (e: Error) => {
    assert.equal((e as { code?: string }).code, ErrorCode.CA);
    assert.ok(e.message.includes(`the extra trust bundle ${file}`), e.message);
    assert.match(e.message, why);
    return true;
  };

  test('garbage, empty, cut short, a private key, a leaf: each refused, naming the file', async () => {
    const next = await generated();
    const nextPem = next.cert.trim();
    const leaf = await (await open(next.dir)).issue(`spiffe://${TD}/service/x`, 60_000);
    const cases: [string, RegExp][] = [
      ['this is not a certificate\n', /holds no PEM block/],
      ['', /is empty/],
      [nextPem.slice(0, nextPem.length - 40), /has a PEM block without its END line/],
      [`${nextPem}\n${next.key}`, /has a PRIVATE KEY block \(number 2\), not a certificate \(a private key has no place/],
      ['-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydA==\n-----END CERTIFICATE-----\n', /block \(number 1\) that is not a valid X\.509 certificate/],
      [leaf.certificatePem, /not a CA certificate/],
    ];
    for (const [content, why] of cases) {
      const s = await withBundle(content);
      await assert.rejects(open(s.dir), refused(s.bundleFile, why));
      await assert.rejects(open(s.dir), (e: Error) => !e.message.includes(next.key.split('\n')[1]!.slice(0, 20)), 'no key material from the bundle');
    }
  });

  test('a valid bundle (with comments between blocks) is accepted and every root reaches the trust bundle', async () => {
    const a = await generated();
    const b = await generated();
    const s = await withBundle(`# next root\n${a.cert}\n# and another\n${b.cert}`);
    const ca = await open(s.dir);
    assert.equal((ca.trustBundlePem.match(/-----BEGIN CERTIFICATE-----/g) ?? []).length, 3);
    assert.ok(!ca.trustBundlePem.includes('#'), 'comments are not sent to proxies');
  });

  test('a garbage bundle put in place before the first start is refused before any root is written', async () => {
    const dir = tmp('sb-dd-first-');
    mkdirSync(path.join(dir, 'ca'));
    writeFileSync(path.join(dir, 'ca', 'trust-bundle-extra.pem'), 'garbage');
    await assert.rejects(open(dir), /trust-bundle-extra\.pem holds no PEM block/);
    assert.equal(existsSync(path.join(dir, 'ca', 'root.key')), false);
  });

  test('--ca-bundle: garbage or a missing file is refused naming the file', async () => {
    const s = await generated();
    const bundle = path.join(s.dir, 'bundle.pem');
    writeFileSync(bundle, 'nope');
    const files = { certFile: s.certFile, keyFile: s.keyFile, bundleFile: bundle };
    await assert.rejects(
      CertificateAuthority.open({ dataDir: s.dir, trustDomain: TD, files }),
      /the extra trust bundle .*bundle\.pem holds no PEM block.*fix the file given to --ca-bundle/,
    );
    rmSync(bundle);
    await assert.rejects(
      CertificateAuthority.open({ dataDir: s.dir, trustDomain: TD, files }),
      /cannot read the extra trust bundle .*bundle\.pem: ENOENT \(no such file or folder\)/,
    );
  });
});

describe('folder and disk faults name the place and the cause', () => {
  test('a read-only file system: EROFS and the folder, not "ENOENT: mkdir"', async () => {
    const root = tmp('sb-dd-ro-');
    readOnly(root);
    const dataDir = path.join(root, 'data');
    await assert.rejects(open(dataDir), (e: Error) => {
      assert.equal(
        e.message,
        `cannot create the folder ${dataDir}/ca: creating ${dataDir} failed with EROFS (read-only file system); remount ${root} read-write or give a writable --data-dir`,
      );
      return true;
    });
    await assert.rejects(TokenVerifier.open(dataDir), new RegExp(`cannot create the folder ${dataDir}/tokens: creating ${dataDir} failed with EROFS`));
  });

  test('a data folder under a file (ENOTDIR): names the file in the way', async () => {
    const root = tmp('sb-dd-notdir-');
    const file = path.join(root, 'afile');
    writeFileSync(file, 'x');
    await assert.rejects(open(path.join(file, 'data')), (e: Error) => {
      assert.equal(
        e.message,
        `cannot read the CA certificate ${file}/data/ca/root.crt: ${file} is a file, not a folder; give another --data-dir, or move ${file} away if it is in the way`,
      );
      return true;
    });
    await assert.rejects(TokenVerifier.open(path.join(file, 'data')), new RegExp(`${file} is a file, not a folder`));
    // The data folder itself is a file.
    await assert.rejects(open(file), new RegExp(`${file} is a file, not a folder`));
  });

  test('a full disk between the key and the certificate (ENOSPC): names root.crt and the cause; the key is removed; the next start makes a root', async () => {
    const dir = tmp('sb-dd-full-');
    const certFile = path.join(dir, 'ca', 'root.crt');
    failOpen(certFile, 'ENOSPC');
    await assert.rejects(open(dir), (e: Error) => {
      assert.equal((e as { code?: string }).code, ErrorCode.CA);
      assert.match(
        e.message,
        new RegExp(
          `^cannot write ${certFile}: ENOSPC \\(no space left on device\\); free space on the file system holding ${dir}/ca, then start again\\. No root was made: ${dir}/ca/root.key was removed again`,
        ),
      );
      return true;
    });
    assert.equal(existsSync(path.join(dir, 'ca', 'root.key')), false, 'no key left without its certificate');
    assert.equal(existsSync(certFile), false);
    for (const r of restores.splice(0)) r(); // the disk has space again
    assert.equal((await open(dir)).source, 'generated');
  });

  test('permission denied on the key (EACCES): names root.key and says who must be able to write the folder', async () => {
    const dir = tmp('sb-dd-acces-');
    failOpen(path.join(dir, 'ca', 'root.key'), 'EACCES');
    await assert.rejects(
      open(dir),
      new RegExp(
        `: cannot write ${dir}/ca/root\\.key: EACCES \\(permission denied\\); let the user Signalbox runs as \\(uid \\d+\\) write ${dir}/ca, or give another --data-dir$`,
      ),
    );
    assert.equal(existsSync(path.join(dir, 'ca', 'root.crt')), false);
  });

  test('a full disk while making the token key pair: no half pair is left behind', async () => {
    const dir = tmp('sb-dd-tok-');
    failOpen(path.join(dir, 'tokens', 'signing.pub'), 'ENOSPC');
    await assert.rejects(TokenVerifier.open(dir), /cannot write .*signing\.pub: ENOSPC \(no space left on device\); free space/);
    assert.equal(existsSync(path.join(dir, 'tokens', 'signing.key')), false);
    for (const r of restores.splice(0)) r();
    (await TokenVerifier.open(dir)).close();
  });

  test('a state file that cannot be written keeps its old content (xds-ca.pem at start)', async () => {
    const dir = tmp('sb-dd-xds-');
    const file = path.join(dir, 'xds-ca.pem');
    writeFileSync(file, 'old');
    failOpen(file, 'ENOSPC');
    await assert.rejects(writeDataFile(file, 'new', 0o644, ErrorCode.CA), new RegExp(`cannot write ${file}: ENOSPC`));
    assert.equal(readFileSync(file, 'utf8'), 'old');
  });

  test('signalbox serve refuses to start on half a root and says why on stderr', () => {
    const s = { dir: tmp('sb-dd-serve-') };
    mkdirSync(path.join(s.dir, 'ca'));
    writeFileSync(path.join(s.dir, 'ca', 'root.key'), '-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n');
    const r = spawnSync(
      process.execPath,
      [path.join(repo, 'bin', 'signalbox.js'), 'serve', '--data-dir', s.dir, '--policies', s.dir, '--xds-port', '0', '--admin-port', '0'],
      { encoding: 'utf8', timeout: 20_000 },
    );
    assert.equal(r.status, 1, r.stderr);
    assert.match(r.stderr, new RegExp(`cannot start: the CA certificate ${s.dir}/ca/root\\.crt is missing but its key ${s.dir}/ca/root\\.key exists`));
    assert.ok(!r.stderr.includes('AAAA'));
  });
});
