// Files a policy names (a Gateway's tls.certificateFile / privateKeyFile, a JWTPolicy's jwks.file)
// stay inside the policy directory: a policy must not get the control plane to read, and send to a
// proxy or trust as keys, its CA key or any other file outside it, nor a file it was told is
// forbidden. Refusals share one message so an error does not tell whether an outside file exists.
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { linkSync, mkdirSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { after, describe, test } from 'node:test';
import { JwksCache } from '../../src/authz/jwks.js';
import { ErrorCode, type PolicyError } from '../../src/errors.js';
import { buildModel } from '../../src/controller/build-model.js';
import { POLICY_FILE_REFUSED, type BuildOptions, type Model } from '../../src/model/model.js';
import { POLICY_FILE_MAX_BYTES } from '../../src/sources/files/policy-files.js';
import { loadPolicyDir } from '../../src/sources/files/loader.js';
import { makeKey } from '../helpers/jwks-server.js';
import { doc, policyDir, removePolicyDirs } from './policy-dir.js';

after(removePolicyDirs);

const CERT = '-----BEGIN CERTIFICATE-----\nMIIBcert\n-----END CERTIFICATE-----\n';
const KEY = '-----BEGIN PRIVATE KEY-----\nTOP-SECRET-ROOT-KEY\n-----END PRIVATE KEY-----\n';
const KEY_FIELD = 'spec.listeners[0].tls.privateKeyFile';
const CERT_FIELD = 'spec.listeners[0].tls.certificateFile';

/** A Gateway with one HTTPS listener; the file names are JSON-quoted (valid YAML) so any byte survives. */
function gateway(certificateFile: string, privateKeyFile: string): string {
  return doc(
    'Gateway',
    'edge',
    `
  listeners:
    - name: https
      port: 8443
      protocol: HTTPS
      tls:
        certificateFile: ${JSON.stringify(certificateFile)}
        privateKeyFile: ${JSON.stringify(privateKeyFile)}`,
  );
}

/**
 * A temp dir holding `outside/` (files a policy must not reach) and `policies/` (the policy dir,
 * with a good certificate at certs/edge.crt). Returns both paths.
 */
function layout(policyFiles: Record<string, string> = {}): { root: string; dir: string; outside: string } {
  const files: Record<string, string> = { 'outside/root.key': KEY, 'policies/certs/edge.crt': CERT };
  for (const [rel, text] of Object.entries(policyFiles)) files[path.join('policies', rel)] = text;
  const root = policyDir(files);
  return { root, dir: path.join(root, 'policies'), outside: path.join(root, 'outside') };
}

async function build(dir: string, opts?: BuildOptions): Promise<{ errors: PolicyError[]; model?: Model }> {
  const loaded = await loadPolicyDir(dir);
  assert.deepEqual(loaded.errors, []);
  return buildModel(loaded.docs, dir, opts);
}

/** Builds a policy dir whose Gateway names `keyFile`, and returns its errors as [code, path, message]. */
async function keyErrors(dir: string, keyFile: string, opts?: BuildOptions): Promise<[string, string | undefined, string][]> {
  writeFileSync(path.join(dir, 'g.yaml'), gateway('certs/edge.crt', keyFile));
  const { errors, model } = await build(dir, opts);
  if (errors.length) assert.equal(model, undefined);
  assert.doesNotMatch(JSON.stringify(errors), /TOP-SECRET/);
  return errors.map((e) => [e.code, e.path, e.message]);
}

const REFUSED: [string, string, string][] = [[ErrorCode.FILE_READ, KEY_FIELD, POLICY_FILE_REFUSED]];

describe('Gateway TLS files are confined to the policy directory', () => {
  test('a valid relative certificate and key are read', async () => {
    const { dir } = layout({ 'certs/edge.key': KEY });
    assert.deepEqual(await keyErrors(dir, 'certs/edge.key'), []);
    const { model } = await build(dir);
    const tls = model!.gateways.get('edge')!.listeners[0]!.tls!;
    assert.equal(tls.certificatePem, CERT);
    assert.equal(tls.privateKeyPem, KEY);
    assert.equal(tls.certificateFile, 'certs/edge.crt');
  });

  test('a ./ prefix and a symlink to another file inside the policy directory are fine', async () => {
    const { dir } = layout({ 'keys/real.key': KEY });
    symlinkSync('../keys/real.key', path.join(dir, 'certs', 'edge.key'));
    assert.deepEqual(await keyErrors(dir, './certs/edge.key'), []);
  });

  test('the refusal is a normal policy error: file, document, field and line', async () => {
    const { dir, outside } = layout();
    writeFileSync(path.join(dir, 'g.yaml'), gateway('certs/edge.crt', path.join(outside, 'root.key')));
    const { errors } = await build(dir);
    assert.deepEqual(errors, [{ code: ErrorCode.FILE_READ, file: path.join(dir, 'g.yaml'), doc: 1, path: KEY_FIELD, line: 11, message: POLICY_FILE_REFUSED }]);
  });

  test('an absolute path is refused', async () => {
    const { dir, outside } = layout();
    assert.deepEqual(await keyErrors(dir, path.join(outside, 'root.key')), REFUSED);
    // Also an absolute path that happens to point into the policy directory itself.
    assert.deepEqual(await keyErrors(dir, path.join(dir, 'certs', 'edge.crt')), REFUSED);
  });

  test('a path with a .. segment is refused, even one that would land back inside', async () => {
    const { dir } = layout({ 'certs/edge.key': KEY });
    assert.deepEqual(await keyErrors(dir, '../outside/root.key'), REFUSED);
    assert.deepEqual(await keyErrors(dir, 'certs/../../outside/root.key'), REFUSED);
    assert.deepEqual(await keyErrors(dir, 'certs/../certs/edge.key'), REFUSED);
  });

  test('a NUL byte is refused', async () => {
    const { dir } = layout({ 'certs/edge.key': KEY });
    assert.deepEqual(await keyErrors(dir, 'certs/edge.key\0.txt'), REFUSED);
  });

  test('a symlink inside the policy directory pointing outside is refused', async () => {
    const { dir, outside } = layout();
    symlinkSync(path.join(outside, 'root.key'), path.join(dir, 'certs', 'abs-link.key'));
    symlinkSync('../../outside/root.key', path.join(dir, 'certs', 'rel-link.key'));
    symlinkSync(outside, path.join(dir, 'linked-dir'));
    assert.deepEqual(await keyErrors(dir, 'certs/abs-link.key'), REFUSED);
    assert.deepEqual(await keyErrors(dir, 'certs/rel-link.key'), REFUSED);
    assert.deepEqual(await keyErrors(dir, 'linked-dir/root.key'), REFUSED);
  });

  test('a FIFO is refused without blocking on it', { timeout: 10_000 }, async () => {
    const { dir } = layout();
    execFileSync('mkfifo', [path.join(dir, 'certs', 'edge.key')]);
    assert.deepEqual(await keyErrors(dir, 'certs/edge.key'), REFUSED);
  });

  test('a directory or a device is refused', async () => {
    const { dir } = layout();
    mkdirSync(path.join(dir, 'certs', 'dir.key'));
    symlinkSync('/dev/zero', path.join(dir, 'certs', 'zero.key'));
    assert.deepEqual(await keyErrors(dir, 'certs/dir.key'), REFUSED);
    assert.deepEqual(await keyErrors(dir, 'certs'), REFUSED);
    assert.deepEqual(await keyErrors(dir, '.'), REFUSED);
    assert.deepEqual(await keyErrors(dir, 'certs/zero.key'), REFUSED);
  });

  test('a file over 1 MiB is refused; exactly 1 MiB is read', async () => {
    const pad = (size: number) => KEY + '#'.repeat(size - KEY.length);
    const { dir } = layout({ 'certs/big.key': pad(POLICY_FILE_MAX_BYTES + 1), 'certs/limit.key': pad(POLICY_FILE_MAX_BYTES) });
    assert.deepEqual(await keyErrors(dir, 'certs/big.key'), REFUSED);
    assert.deepEqual(await keyErrors(dir, 'certs/limit.key'), []);
  });

  test('a file under a dataDir inside the policy directory is refused', async () => {
    const { dir } = layout({ '.data/ca/root.key': KEY });
    const dataDir = path.join(dir, '.data');
    symlinkSync('../.data/ca/root.key', path.join(dir, 'certs', 'via-link.key'));
    assert.deepEqual(await keyErrors(dir, '.data/ca/root.key', { dataDir }), REFUSED);
    assert.deepEqual(await keyErrors(dir, 'certs/via-link.key', { dataDir }), REFUSED);
    // A missing file there must not answer differently from root.key, which exists.
    assert.deepEqual(await keyErrors(dir, '.data/ca/none.key', { dataDir }), REFUSED);
    assert.deepEqual(await keyErrors(dir, '.data/none/none.key', { dataDir }), REFUSED);
    // A relative dataDir is taken from the working directory, as `serve` resolves --data-dir.
    assert.deepEqual(await keyErrors(dir, '.data/ca/root.key', { dataDir: path.relative(process.cwd(), dataDir) }), REFUSED);
    // Without a dataDir only the policy-directory rule applies (the default for offline commands).
    assert.deepEqual(await keyErrors(dir, '.data/ca/root.key'), []);
  });

  test('a dataDir reached through a symlink is refused by its real location too', async () => {
    const { root, dir } = layout({ 'state/ca/root.key': KEY });
    symlinkSync(path.join(dir, 'state'), path.join(root, 'data-link'));
    assert.deepEqual(await keyErrors(dir, 'state/ca/root.key', { dataDir: path.join(root, 'data-link') }), REFUSED);
  });

  test('the message is the same whether the outside target exists or not', async () => {
    const { dir, outside } = layout();
    symlinkSync(path.join(outside, 'root.key'), path.join(dir, 'certs', 'to-existing.key'));
    symlinkSync(path.join(outside, 'missing.key'), path.join(dir, 'certs', 'to-missing.key'));
    symlinkSync(path.join(outside, 'no-such-dir'), path.join(dir, 'to-missing-dir'));
    symlinkSync(outside, path.join(dir, 'to-outside-dir'));
    const pairs: [string, string][] = [
      [path.join(outside, 'root.key'), path.join(outside, 'missing.key')],
      ['../outside/root.key', '../outside/missing.key'],
      ['certs/to-existing.key', 'certs/to-missing.key'],
      ['to-outside-dir/root.key', 'to-outside-dir/missing.key'],
      ['to-outside-dir/root.key', 'to-missing-dir/missing.key'],
      ['certs/to-existing.key', 'certs/to-existing.key/x'],
    ];
    for (const [exists, missing] of pairs) {
      const a = await keyErrors(dir, exists);
      const b = await keyErrors(dir, missing);
      assert.deepEqual(a, REFUSED, exists);
      assert.deepEqual(b, a, `${missing} vs ${exists}`);
    }
  });

  test('a file that is simply missing inside the policy directory keeps its own message', async () => {
    const { dir } = layout();
    assert.deepEqual(await keyErrors(dir, 'certs/none.key'), [
      [ErrorCode.FILE_READ, KEY_FIELD, 'cannot read certs/none.key (relative to the policy directory): ENOENT'],
    ]);
    assert.deepEqual(await keyErrors(dir, 'nowhere/none.key'), [
      [ErrorCode.FILE_READ, KEY_FIELD, 'cannot read nowhere/none.key (relative to the policy directory): ENOENT'],
    ]);
  });

  test('the certificate field is checked the same way', async () => {
    const { dir, outside } = layout({ 'certs/edge.key': KEY });
    writeFileSync(path.join(dir, 'g.yaml'), gateway(path.join(outside, 'root.key'), 'certs/edge.key'));
    const { errors } = await build(dir);
    assert.deepEqual(
      errors.map((e) => [e.code, e.path, e.message]),
      [[ErrorCode.FILE_READ, CERT_FIELD, POLICY_FILE_REFUSED]],
    );
  });

  test('a policy directory reached through a symlink still works', async () => {
    const { root, dir } = layout({ 'certs/edge.key': KEY });
    const link = path.join(root, 'policies-link');
    symlinkSync(dir, link);
    writeFileSync(path.join(dir, 'g.yaml'), gateway('certs/edge.crt', 'certs/edge.key'));
    const { errors } = await build(link);
    assert.deepEqual(errors, []);
  });
});

/** A Gateway with one HTTP listener and a JWTPolicy on it whose key set is `file` (JSON-quoted). */
function jwtPolicy(file: string): string {
  return `${doc('Gateway', 'web', '{ listeners: [ { name: http, port: 8080, protocol: HTTP } ] }')}---\n${doc(
    'JWTPolicy',
    'p',
    `
  targetRef: { kind: Gateway, name: web }
  issuer: https://idp.example/
  jwks:
    file: ${JSON.stringify(file)}`,
  )}`;
}

const JWKS_FIELD = 'spec.jwks.file';
const JWKS_REFUSED: [string, string, string][] = [[ErrorCode.FILE_READ, JWKS_FIELD, POLICY_FILE_REFUSED]];

describe('JWTPolicy jwks.file is confined the same way', async () => {
  const [inside, outsideKey] = await Promise.all([makeKey('ES256', 'inside'), makeKey('ES256', 'outside-kid')]);
  const GOOD = JSON.stringify({ keys: [inside.jwk] });
  /** An outside key set that would load if it were read: a refusal must not depend on that. */
  const OUTSIDE = JSON.stringify({ keys: [outsideKey.jwk] });

  function jwtLayout(policyFiles: Record<string, string> = {}): { root: string; dir: string; outside: string } {
    const l = layout({ 'keys/jwks.json': GOOD, ...policyFiles });
    writeFileSync(path.join(l.outside, 'jwks.json'), OUTSIDE);
    writeFileSync(path.join(l.outside, 'broken.json'), '{ not json');
    return l;
  }

  async function jwksErrors(dir: string, file: string, opts?: BuildOptions): Promise<[string, string | undefined, string][]> {
    writeFileSync(path.join(dir, 'j.yaml'), jwtPolicy(file));
    const { errors, model } = await build(dir, opts);
    if (errors.length) assert.equal(model, undefined);
    assert.doesNotMatch(JSON.stringify(errors), /TOP-SECRET|outside-kid/);
    return errors.map((e) => [e.code, e.path, e.message]);
  }

  test('a valid relative jwks.file is read, and the authz engine reads it too', async () => {
    const { dir } = jwtLayout();
    writeFileSync(path.join(dir, 'j.yaml'), jwtPolicy('keys/jwks.json'));
    const { errors, model } = await build(dir);
    assert.deepEqual(errors, []);
    const jwks = model!.jwt!.policies.get('p')!.jwks;
    assert.equal(jwks.kind, 'file');
    assert.equal(jwks.kind === 'file' && jwks.file, 'keys/jwks.json');
    const cache = new JwksCache(jwks, { policy: 'p' });
    try {
      assert.deepEqual(
        (await cache.current(2000))?.keys.map((k) => k.kid),
        ['inside'],
      );
      assert.equal(cache.status().lastError, undefined);
    } finally {
      cache.close();
    }
  });

  test('the refusal is a normal policy error: file, document, field and line', async () => {
    const { dir, outside } = jwtLayout();
    writeFileSync(path.join(dir, 'j.yaml'), jwtPolicy(path.join(outside, 'jwks.json')));
    const { errors } = await build(dir);
    assert.deepEqual(errors, [{ code: ErrorCode.FILE_READ, file: path.join(dir, 'j.yaml'), doc: 2, path: JWKS_FIELD, line: 13, message: POLICY_FILE_REFUSED }]);
  });

  test('absolute, .. and outside-symlink paths are refused with the one message', async () => {
    const { dir, outside } = jwtLayout();
    symlinkSync(path.join(outside, 'jwks.json'), path.join(dir, 'keys', 'abs-link.json'));
    symlinkSync('../../outside/jwks.json', path.join(dir, 'keys', 'rel-link.json'));
    symlinkSync(outside, path.join(dir, 'linked-dir'));
    for (const file of [
      path.join(outside, 'jwks.json'),
      path.join(dir, 'keys', 'jwks.json'), // absolute, even into the policy directory
      '../outside/jwks.json',
      'keys/../../outside/jwks.json',
      'keys/../keys/jwks.json',
      'keys/abs-link.json',
      'keys/rel-link.json',
      'linked-dir/jwks.json',
      'keys/jwks.json\0',
      'keys',
      '.',
    ]) {
      assert.deepEqual(await jwksErrors(dir, file), JWKS_REFUSED, JSON.stringify(file));
    }
  });

  test('the message is the same whether the outside file exists, is JSON, or not', async () => {
    const { dir, outside } = jwtLayout();
    symlinkSync(path.join(outside, 'jwks.json'), path.join(dir, 'to-jwks.json'));
    symlinkSync(path.join(outside, 'broken.json'), path.join(dir, 'to-broken.json'));
    symlinkSync(path.join(outside, 'root.key'), path.join(dir, 'to-key.json'));
    symlinkSync(path.join(outside, 'missing.json'), path.join(dir, 'to-missing.json'));
    symlinkSync(outside, path.join(dir, 'to-outside'));
    for (const name of ['jwks.json', 'broken.json', 'root.key', 'missing.json', 'missing/x.json']) {
      assert.deepEqual(await jwksErrors(dir, path.join(outside, name)), JWKS_REFUSED, `absolute ${name}`);
      assert.deepEqual(await jwksErrors(dir, `../outside/${name}`), JWKS_REFUSED, `../ ${name}`);
      assert.deepEqual(await jwksErrors(dir, `to-outside/${name}`), JWKS_REFUSED, `dir link ${name}`);
    }
    for (const link of ['to-jwks.json', 'to-broken.json', 'to-key.json', 'to-missing.json']) {
      assert.deepEqual(await jwksErrors(dir, link), JWKS_REFUSED, link);
    }
  });

  test('inside the policy directory, a missing file or one that is not JSON keeps its own message', async () => {
    const { dir } = jwtLayout({ 'keys/broken.json': '{ not json' });
    assert.deepEqual(await jwksErrors(dir, 'keys/none.json'), [
      [ErrorCode.FILE_READ, JWKS_FIELD, 'cannot read keys/none.json (relative to the policy directory): ENOENT'],
    ]);
    assert.deepEqual(await jwksErrors(dir, 'keys/broken.json'), [[ErrorCode.FILE_READ, JWKS_FIELD, 'keys/broken.json is not JSON']]);
  });

  test('a file under the dataDir is refused', async () => {
    const { dir } = jwtLayout({ '.data/tokens/jwks.json': GOOD });
    assert.deepEqual(await jwksErrors(dir, '.data/tokens/jwks.json', { dataDir: path.join(dir, '.data') }), JWKS_REFUSED);
    assert.deepEqual(await jwksErrors(dir, '.data/tokens/none.json', { dataDir: path.join(dir, '.data') }), JWKS_REFUSED);
    assert.deepEqual(await jwksErrors(dir, '.data/tokens/jwks.json'), []);
  });

  test('a forbidden file inside the policy directory is refused, however it is reached', async () => {
    const { dir, outside } = jwtLayout({ 'secret/admin.json': GOOD, 'secret/other.json': GOOD });
    const forbidden = [path.join(dir, 'secret', 'admin.json')];
    symlinkSync('../secret/admin.json', path.join(dir, 'keys', 'via-link.json'));
    linkSync(path.join(dir, 'secret', 'admin.json'), path.join(dir, 'keys', 'hard-link.json'));
    assert.deepEqual(await jwksErrors(dir, 'secret/admin.json', { forbidden }), JWKS_REFUSED);
    assert.deepEqual(await jwksErrors(dir, './secret/admin.json', { forbidden }), JWKS_REFUSED);
    assert.deepEqual(await jwksErrors(dir, 'keys/via-link.json', { forbidden }), JWKS_REFUSED);
    assert.deepEqual(await jwksErrors(dir, 'keys/hard-link.json', { forbidden }), JWKS_REFUSED);
    // Its neighbours are not forbidden; nor is anything without the option.
    assert.deepEqual(await jwksErrors(dir, 'secret/other.json', { forbidden }), []);
    assert.deepEqual(await jwksErrors(dir, 'secret/admin.json'), []);
    // A forbidden folder covers everything below it, existing or not; a relative entry is taken from the working directory.
    const folder = { forbidden: [path.relative(process.cwd(), path.join(dir, 'secret'))] };
    assert.deepEqual(await jwksErrors(dir, 'secret/other.json', folder), JWKS_REFUSED);
    assert.deepEqual(await jwksErrors(dir, 'secret/none.json', folder), JWKS_REFUSED);
    // A hard link inside the policy directory to a forbidden file outside it is refused too.
    linkSync(path.join(outside, 'jwks.json'), path.join(dir, 'keys', 'outside-hard.json'));
    assert.deepEqual(await jwksErrors(dir, 'keys/outside-hard.json', { forbidden: [path.join(outside, 'jwks.json')] }), JWKS_REFUSED);
    // dataDir and forbidden together.
    assert.deepEqual(await jwksErrors(dir, 'secret/admin.json', { dataDir: path.join(dir, '.data'), forbidden }), JWKS_REFUSED);
  });

  test('forbidden applies to Gateway TLS files as well', async () => {
    const { dir } = layout({ 'certs/edge.key': KEY });
    assert.deepEqual(await keyErrors(dir, 'certs/edge.key', { forbidden: [path.join(dir, 'certs', 'edge.key')] }), REFUSED);
    assert.deepEqual(await keyErrors(dir, 'certs/edge.key', { forbidden: [path.join(dir, 'certs')] }), [
      [ErrorCode.FILE_READ, CERT_FIELD, POLICY_FILE_REFUSED],
      [ErrorCode.FILE_READ, KEY_FIELD, POLICY_FILE_REFUSED],
    ]);
    assert.deepEqual(await keyErrors(dir, 'certs/edge.key', { forbidden: [path.join(dir, 'elsewhere')] }), []);
  });

  test('the authz engine re-reads through the same confinement (a file swapped for an outside link)', async () => {
    const { dir, outside } = jwtLayout();
    const secret = path.join(dir, 'keys', 'secret.json');
    writeFileSync(secret, GOOD);
    writeFileSync(path.join(dir, 'j.yaml'), jwtPolicy('keys/jwks.json'));
    const { errors, model } = await build(dir, { forbidden: [secret] });
    assert.deepEqual(errors, []);
    const jwks = model!.jwt!.policies.get('p')!.jwks;
    const loads = async (): Promise<{ kids?: (string | undefined)[]; lastError?: string }> => {
      const cache = new JwksCache(jwks, { policy: 'p' });
      try {
        const set = await cache.current(2000);
        return { kids: set?.keys.map((k) => k.kid), lastError: cache.status().lastError };
      } finally {
        cache.close();
      }
    };
    assert.deepEqual(await loads(), { kids: ['inside'], lastError: undefined });
    const file = path.join(dir, 'keys', 'jwks.json');
    const refused = { kids: undefined, lastError: POLICY_FILE_REFUSED };
    for (const target of [path.join(outside, 'jwks.json'), path.join(outside, 'broken.json'), path.join(outside, 'missing.json'), secret]) {
      rmSync(file);
      symlinkSync(target, file);
      assert.deepEqual(await loads(), refused, target);
    }
    rmSync(file);
    writeFileSync(file, GOOD);
    assert.deepEqual(await loads(), { kids: ['inside'], lastError: undefined });
  });
});
