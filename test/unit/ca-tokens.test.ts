// The mesh CA and proxy tokens: what they issue, what they refuse, and that no key leaks into an error.
import assert from 'node:assert/strict';
import { execFileSync, spawnSync } from 'node:child_process';
import { X509Certificate as NodeX509, createPrivateKey } from 'node:crypto';
import { existsSync, mkdtempSync, readFileSync, rmSync, statSync, truncateSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { test } from 'node:test';
import { x509 } from '../../src/ca/x509.js';
import { CertificateAuthority } from '../../src/ca/ca.js';
import { Writable } from 'node:stream';
import { importPKCS8, SignJWT } from 'jose';
import pino from 'pino';
import { DEFAULT_TOKEN_TTL, issueToken, issueTokenCredentials, revokeToken, TokenVerifier } from '../../src/ca/tokens.js';
import { createLogger, type Logger } from '../../src/observability/logger.js';

const tmp = (p: string) => mkdtempSync(path.join(os.tmpdir(), p));
const _silent = createLogger({ level: 'silent' });
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const HOUR = 3_600_000;

/** A logger that keeps its records, to count what was logged. */
function capturingLogger(): { logger: Logger; records: { level: number; msg: string }[] } {
  const records: { level: number; msg: string }[] = [];
  const stream = new Writable({
    write(chunk: Buffer, _enc, cb) {
      for (const line of chunk.toString().split('\n').filter(Boolean)) records.push(JSON.parse(line) as { level: number; msg: string });
      cb();
    },
  });
  return { logger: pino({ level: 'info' }, stream), records };
}

/** The DER bytes of a PEM certificate file. */
const derOf = (certFile: string) => Buffer.from(new x509.X509Certificate(readFileSync(certFile, 'utf8')).rawData);

test('a generated root persists with a 0600 key and is loaded again on the next start', async () => {
  const dir = tmp('sb-ca-');
  const a = await CertificateAuthority.open({ dataDir: dir, trustDomain: 'example.org' });
  assert.equal(a.source, 'generated');
  assert.equal(statSync(path.join(dir, 'ca', 'root.key')).mode & 0o777, 0o600);
  const b = await CertificateAuthority.open({ dataDir: dir, trustDomain: 'example.org' });
  assert.equal(b.source, 'loaded');
  assert.equal(b.certificatePem, a.certificatePem);
});

test('leaf certificates carry exactly one SPIFFE ID, chain to the root, and expire after the TTL', async () => {
  const ca = await CertificateAuthority.open({ dataDir: tmp('sb-ca-'), trustDomain: 'example.org' });
  const leaf = await ca.issue('spiffe://example.org/service/orders', 60_000);
  const cert = new x509.X509Certificate(leaf.certificatePem);
  const san = cert.getExtension(x509.SubjectAlternativeNameExtension)!;
  assert.deepEqual(san.names.toJSON(), [{ type: 'url', value: 'spiffe://example.org/service/orders' }]);
  assert.ok(await cert.verify({ publicKey: ca.certificate.publicKey, signatureOnly: true }));
  const life = cert.notAfter.getTime() - Date.now();
  assert.ok(life > 55_000 && life <= 60_000, `life ${life}`);
  assert.equal(cert.getExtension(x509.BasicConstraintsExtension)?.ca, false);
  assert.match(leaf.privateKeyPem, /BEGIN PRIVATE KEY/);
});

test('CA files that are unreadable, not a CA, or mismatched are refused with a clear error and no key material', async () => {
  const dir = tmp('sb-ca-files-');
  const other = tmp('sb-ca-other-');
  const a = await CertificateAuthority.open({ dataDir: dir, trustDomain: 't' });
  await CertificateAuthority.open({ dataDir: other, trustDomain: 't' });
  const certFile = path.join(dir, 'ca', 'root.crt');
  const keyFile = path.join(dir, 'ca', 'root.key');
  const otherKey = path.join(other, 'ca', 'root.key');
  await assert.rejects(
    CertificateAuthority.open({ dataDir: dir, trustDomain: 't', files: { certFile: '/nonexistent.crt', keyFile } }),
    /cannot read the CA certificate \/nonexistent\.crt: ENOENT/,
  );
  await assert.rejects(
    CertificateAuthority.open({ dataDir: dir, trustDomain: 't', files: { certFile, keyFile: otherKey } }),
    (e: Error) => /does not match the certificate/.test(e.message) && !e.message.includes('PRIVATE KEY'),
  );
  const garbage = path.join(dir, 'garbage.key');
  writeFileSync(garbage, '-----BEGIN PRIVATE KEY-----\nbm90IGEga2V5\n-----END PRIVATE KEY-----\n');
  await assert.rejects(
    CertificateAuthority.open({ dataDir: dir, trustDomain: 't', files: { certFile, keyFile: garbage } }),
    (e: Error) => /is not a PKCS#8 ECDSA P-256 private key/.test(e.message) && !e.message.includes('bm90IGEga2V5'),
  );
  // A leaf certificate is not a CA.
  const leaf = await a.issue('spiffe://t/service/x', 60_000);
  const leafCert = path.join(dir, 'leaf.crt');
  const leafKey = path.join(dir, 'leaf.key');
  writeFileSync(leafCert, leaf.certificatePem);
  writeFileSync(leafKey, leaf.privateKeyPem);
  await assert.rejects(CertificateAuthority.open({ dataDir: dir, trustDomain: 't', files: { certFile: leafCert, keyFile: leafKey } }), /not a CA certificate/);
});

test('an existing CA loaded from files signs leaves and extra roots join the trust bundle', async () => {
  const dir = tmp('sb-ca-pki-');
  const keyFile = path.join(dir, 'ca.key');
  const certFile = path.join(dir, 'ca.crt');
  execFileSync(
    'openssl',
    [
      'req',
      '-x509',
      '-newkey',
      'ec',
      '-pkeyopt',
      'ec_paramgen_curve:P-256',
      '-nodes',
      '-keyout',
      keyFile,
      '-out',
      certFile,
      '-days',
      '2',
      '-subj',
      '/CN=corp intermediate',
      '-addext',
      'basicConstraints=critical,CA:TRUE',
      '-addext',
      'keyUsage=critical,keyCertSign,cRLSign',
    ],
    { stdio: 'ignore' },
  );
  const nextRoot = await CertificateAuthority.open({ dataDir: tmp('sb-ca-next-'), trustDomain: 't' });
  const bundleFile = path.join(dir, 'next-root.pem');
  writeFileSync(bundleFile, nextRoot.certificatePem);
  const ca = await CertificateAuthority.open({ dataDir: dir, trustDomain: 't', files: { certFile, keyFile, bundleFile } });
  assert.equal(ca.source, 'files');
  assert.equal((ca.trustBundlePem.match(/BEGIN CERTIFICATE/g) ?? []).length, 2);
  const leaf = await ca.issue('spiffe://t/gateway/edge', 60_000);
  assert.ok(await new x509.X509Certificate(leaf.certificatePem).verify({ publicKey: ca.certificate.publicKey, signatureOnly: true }));
  assert.equal(new x509.X509Certificate(readFileSync(certFile, 'utf8')).serialNumber, ca.certificate.serialNumber);
});

test('tokens: valid, wrong signer, expired, revoked, garbage', async () => {
  const dir = tmp('sb-tok-');
  const verifier = await TokenVerifier.open(dir);
  const { token, id } = await issueToken(dir, 'service/orders');
  const ok = await verifier.verify(token);
  assert.ok(ok.ok && ok.claims.subject === 'service/orders' && ok.claims.id === id);
  assert.ok(verifier.isRevoked(id) === false);

  const foreign = (await issueToken(tmp('sb-tok-other-'), 'service/orders')).token;
  assert.deepEqual(await verifier.verify(foreign), { ok: false, reason: 'token not signed by this control plane' });

  const short = (await issueToken(dir, 'gateway/edge', '1s')).token;
  await new Promise((r) => setTimeout(r, 2_100));
  assert.deepEqual(await verifier.verify(short), { ok: false, reason: 'token expired' });

  await revokeToken(dir, id);
  assert.deepEqual(await verifier.verify(token), { ok: false, reason: `token ${id} is revoked` });

  const garbage = await verifier.verify('not.a.token');
  assert.equal(garbage.ok, false);
  assert.deepEqual(await verifier.verify(undefined), { ok: false, reason: 'no token' });
  await assert.rejects(issueToken(dir, 'root'), /bad token subject/);
  await assert.rejects(issueToken(dir, 'service/orders', '3 days'), /--ttl must be a duration/);
  assert.equal(statSync(path.join(dir, 'tokens', 'signing.key')).mode & 0o777, 0o600);
  assert.equal(statSync(path.join(dir, 'tokens', 'revoked.json')).mode & 0o777, 0o600);
  assert.equal(statSync(path.join(dir, 'tokens')).mode & 0o777, 0o700);
  assert.ok(verifier.isRevoked(id));
  verifier.close();
});

test('tokens expire after 720h unless --ttl says otherwise; the JWT and the certificate agree', async () => {
  const dir = tmp('sb-tok-ttl-');
  assert.equal(DEFAULT_TOKEN_TTL, '720h');
  const verifier = await TokenVerifier.open(dir);
  const jwt = await issueToken(dir, 'service/orders');
  const life = jwt.expiresAt.getTime() - Date.now();
  assert.ok(life > 720 * HOUR - 5_000 && life <= 720 * HOUR, `life ${life}`);
  const checked = await verifier.verify(jwt.token);
  assert.ok(checked.ok);
  assert.equal(checked.claims.expiresAt.getTime(), jwt.expiresAt.getTime());

  const cred = await issueTokenCredentials(dir, 'gateway/edge', undefined, path.join(dir, 'out'));
  const certLife = cred.expiresAt.getTime() - Date.now();
  assert.ok(certLife > 720 * HOUR - 5_000 && certLife <= 720 * HOUR, `life ${certLife}`);
  assert.equal(new x509.X509Certificate(readFileSync(cred.certFile, 'utf8')).notAfter.getTime(), cred.expiresAt.getTime());

  const short = await issueToken(dir, 'service/orders', '2h');
  assert.ok(Math.abs(short.expiresAt.getTime() - Date.now() - 2 * HOUR) < 5_000);
  // The JWT twin of a credential carries the same id and expiry.
  const twin = await issueToken(dir, 'gateway/edge', undefined, { id: cred.id, expiresAt: cred.expiresAt });
  const twinCheck = await verifier.verify(twin.token);
  assert.ok(twinCheck.ok);
  assert.deepEqual(twinCheck.claims, { subject: 'gateway/edge', id: cred.id, expiresAt: cred.expiresAt });
  await assert.rejects(issueTokenCredentials(dir, 'service/x', '0s', path.join(dir, 'o2')), /--ttl must be a duration/);
  verifier.close();
});

test('a JWT without an expiry (issued by an older Signalbox) is refused', async () => {
  const dir = tmp('sb-tok-noexp-');
  const verifier = await TokenVerifier.open(dir);
  const key = await importPKCS8(readFileSync(path.join(dir, 'tokens', 'signing.key'), 'utf8'), 'ES256');
  const old = await new SignJWT({})
    .setProtectedHeader({ alg: 'ES256' })
    .setIssuer('signalbox')
    .setAudience('signalbox-xds')
    .setSubject('service/a')
    .setJti(crypto.randomUUID())
    .setIssuedAt()
    .sign(key);
  const r = await verifier.verify(old);
  assert.equal(r.ok, false);
  assert.match((r as { reason: string }).reason, /without expiry/);
  verifier.close();
});

test('token credentials: a client certificate from the tokens CA, files and modes, verified, never a mesh certificate', async () => {
  const dir = tmp('sb-tok-cert-');
  const out = path.join(tmp('sb-tok-out-'), 'creds');
  const cred = await issueTokenCredentials(dir, 'service/orders', '1h', out);
  assert.equal(cred.subject, 'service/orders');
  assert.match(cred.id, /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/);
  assert.equal(cred.certFile, path.join(out, 'token.crt'));
  assert.equal(cred.keyFile, path.join(out, 'token.key'));
  assert.equal(statSync(out).mode & 0o777, 0o700);
  assert.equal(statSync(cred.keyFile).mode & 0o777, 0o600);
  assert.equal(statSync(cred.certFile).mode & 0o777, 0o644);
  assert.equal(statSync(path.join(dir, 'tokens', 'signing.key')).mode & 0o777, 0o600);
  assert.equal(statSync(path.join(dir, 'tokens', 'ca.crt')).mode & 0o777, 0o644);
  const keyPem = readFileSync(cred.keyFile, 'utf8');
  assert.match(keyPem, /^-----BEGIN PRIVATE KEY-----/);

  const certPem = readFileSync(cred.certFile, 'utf8');
  const leaf = new NodeX509(certPem);
  assert.ok(leaf.checkPrivateKey(createPrivateKey(keyPem)), 'token.key belongs to token.crt');
  assert.equal(leaf.ca, false);
  assert.deepEqual(leaf.keyUsage, ['1.3.6.1.5.5.7.3.2'], 'clientAuth only');
  assert.equal(leaf.subjectAltName, `URI:urn:signalbox:token:${cred.id}:service/orders`);
  const ca = new NodeX509(readFileSync(path.join(dir, 'tokens', 'ca.crt')));
  assert.ok(ca.ca);
  assert.match(ca.subject, /CN=Signalbox proxy tokens/);
  assert.ok(leaf.checkIssued(ca) && leaf.verify(ca.publicKey), 'signed by the tokens CA');

  // The mesh CA of the same data folder did not sign it.
  const mesh = await CertificateAuthority.open({ dataDir: dir, trustDomain: 't' });
  assert.equal(leaf.verify(new NodeX509(mesh.certificatePem).publicKey), false);
  assert.notEqual(leaf.issuer, new NodeX509(mesh.certificatePem).subject);

  const verifier = await TokenVerifier.open(dir);
  assert.equal(verifier.caPem.trim(), readFileSync(path.join(dir, 'tokens', 'ca.crt'), 'utf8').trim());
  const ok = await verifier.verifyCertificate(derOf(cred.certFile));
  assert.deepEqual(ok, { ok: true, claims: { subject: 'service/orders', id: cred.id, expiresAt: cred.expiresAt } });
  // Buffer or plain Uint8Array.
  assert.equal((await verifier.verifyCertificate(new Uint8Array(derOf(cred.certFile)))).ok, true);

  // A mesh leaf (right shape, wrong CA) and garbage are refused without echoing anything.
  const meshLeaf = await mesh.issue('spiffe://t/service/orders', 60_000);
  assert.deepEqual(await verifier.verifyCertificate(Buffer.from(new x509.X509Certificate(meshLeaf.certificatePem).rawData)), {
    ok: false,
    reason: "client certificate not issued by this control plane's token CA",
  });
  assert.deepEqual(await verifier.verifyCertificate(Buffer.from('garbage')), { ok: false, reason: 'client certificate is not X.509 (DER)' });
  assert.deepEqual(await verifier.verifyCertificate(Buffer.alloc(0)), { ok: false, reason: 'no client certificate' });
  verifier.close();
});

test('client certificates: another data folder, expired, revoked are refused', async () => {
  const dir = tmp('sb-tok-certs-');
  const other = tmp('sb-tok-certs-other-');
  const verifier = await TokenVerifier.open(dir);
  const foreign = await issueTokenCredentials(other, 'service/orders', '1h', path.join(other, 'out'));
  // Same subject name, same CA name, different key: refused.
  assert.deepEqual(await verifier.verifyCertificate(derOf(foreign.certFile)), {
    ok: false,
    reason: "client certificate not issued by this control plane's token CA",
  });

  // 2s: expiries are whole seconds (rounded down), so a 1s token can be expired the moment it is made.
  const short = await issueTokenCredentials(dir, 'gateway/edge', '2s', path.join(dir, 'short'));
  assert.equal((await verifier.verifyCertificate(derOf(short.certFile))).ok, true);
  await sleep(Math.max(0, short.expiresAt.getTime() - Date.now()) + 50);
  assert.deepEqual(await verifier.verifyCertificate(derOf(short.certFile)), { ok: false, reason: `token ${short.id} expired` });

  const cred = await issueTokenCredentials(dir, 'service/orders', '1h', path.join(dir, 'long'));
  assert.equal((await verifier.verifyCertificate(derOf(cred.certFile))).ok, true);
  await revokeToken(dir, cred.id);
  const r = await verifier.verifyCertificate(derOf(cred.certFile));
  assert.deepEqual(r, { ok: false, reason: `token ${cred.id} is revoked` });
  assert.ok(!r.reason.includes('BEGIN'), 'no certificate text in the reason');
  verifier.close();
});

test('a revocation reaches an open verifier within a second, as an event naming only the new ids', async () => {
  const dir = tmp('sb-tok-event-');
  const first = await issueToken(dir, 'service/a');
  await revokeToken(dir, first.id); // revoked before the verifier opened: no event for it
  const verifier = await TokenVerifier.open(dir);
  assert.ok(verifier.isRevoked(first.id));
  const second = await issueTokenCredentials(dir, 'service/a', '1h', path.join(dir, 'out'));
  const events: Set<string>[] = [];
  verifier.on('revoked', (ids) => events.push(ids));
  const hold = setTimeout(() => undefined, 5_000); // the poll timer is unref'd
  const got = new Promise<Set<string>>((resolve) => verifier.once('revoked', resolve));
  const start = Date.now();
  await revokeToken(dir, second.id); // nobody calls verify(): the poll must notice
  const ids = await Promise.race([got, sleep(1_000).then(() => undefined)]);
  clearTimeout(hold);
  assert.ok(ids, 'no revoked event within 1 s');
  assert.ok(Date.now() - start < 1_000);
  assert.deepEqual([...ids], [second.id]);
  assert.ok(verifier.isRevoked(second.id));
  await sleep(400);
  assert.equal(events.length, 1, 'one event per change');
  // After close() the poll stops; verify still reads the list.
  verifier.close();
  const third = await issueTokenCredentials(dir, 'service/a', '1h', path.join(dir, 'out3'));
  await revokeToken(dir, third.id);
  await sleep(400);
  assert.equal(events.length, 1, 'no event after close()');
  assert.deepEqual(await verifier.verifyCertificate(derOf(third.certFile)), { ok: false, reason: `token ${third.id} is revoked` });
});

test('a corrupt or truncated revocation list fails closed, is logged once per change, and recovers when fixed', async () => {
  const dir = tmp('sb-tok-corrupt-');
  const { logger, records } = capturingLogger();
  const verifier = await TokenVerifier.open(dir, { logger });
  const jwt = await issueToken(dir, 'service/orders', '1h');
  const cred = await issueTokenCredentials(dir, 'service/orders', '1h', path.join(dir, 'out'));
  const revokedOne = await issueToken(dir, 'service/orders', '1h');
  await revokeToken(dir, revokedOne.id);
  const file = path.join(dir, 'tokens', 'revoked.json');
  assert.equal((await verifier.verify(jwt.token)).ok, true);
  const unreadable = [] as string[];
  verifier.on('unreadable', (r) => unreadable.push(r));

  const expectRefused = async (why: RegExp) => {
    for (const r of [await verifier.verify(jwt.token), await verifier.verifyCertificate(derOf(cred.certFile))]) {
      assert.equal(r.ok, false);
      const reason = (r as { reason: string }).reason;
      assert.ok(reason.startsWith(`revocation list ${file} is unreadable: `), reason);
      assert.match(reason, why);
      assert.match(reason, /every token is refused until it is fixed$/);
      assert.ok(!reason.includes(jwt.token));
    }
  };
  const errors = () => records.filter((r) => r.level >= 50 && r.msg.includes('revocation list')).length;

  // Truncated mid-write.
  const good = readFileSync(file, 'utf8');
  truncateSync(file, 10);
  await expectRefused(/not JSON/);
  await expectRefused(/not JSON/);
  await sleep(500); // several polls of an unchanged file
  assert.equal(errors(), 1, 'logged once for one change');
  assert.equal(unreadable.length, 1);
  await assert.rejects(revokeToken(dir, jwt.id), /is unreadable/, 'revoking more never overwrites a list it cannot read');
  assert.equal(readFileSync(file, 'utf8').length, 10);

  // Not an array of strings.
  writeFileSync(file, JSON.stringify({ revoked: [jwt.id] }));
  await expectRefused(/not a JSON array/);
  writeFileSync(file, JSON.stringify([jwt.id, 42]));
  await expectRefused(/not an array of strings/);
  assert.equal(errors(), 3, 'one log per change');

  // Fixed (as revokeToken would write it): accepted again, and the list applies again.
  writeFileSync(file, good);
  assert.deepEqual(await verifier.verify(jwt.token), { ok: true, claims: { subject: 'service/orders', id: jwt.id, expiresAt: jwt.expiresAt } });
  assert.equal((await verifier.verifyCertificate(derOf(cred.certFile))).ok, true);
  assert.deepEqual(await verifier.verify(revokedOne.token), { ok: false, reason: `token ${revokedOne.id} is revoked` });
  assert.equal(verifier.revocationProblem, undefined);

  // Broken again, noticed by the poll alone; then deleted: a missing list means no revocations.
  writeFileSync(file, '[');
  await sleep(500);
  assert.equal(errors(), 4);
  assert.match(verifier.revocationProblem ?? '', /unreadable/);
  rmSync(file);
  assert.equal((await verifier.verify(revokedOne.token)).ok, true);
  verifier.close();
});

test('a missing half of the signing key pair is an error, never a new key pair', async () => {
  const dir = tmp('sb-tok-keys-');
  const before = await issueToken(dir, 'service/a');
  const keyFile = path.join(dir, 'tokens', 'signing.key');
  const pubFile = path.join(dir, 'tokens', 'signing.pub');
  const keyBytes = readFileSync(keyFile);
  const pubBytes = readFileSync(pubFile);

  rmSync(pubFile);
  await assert.rejects(
    TokenVerifier.open(dir),
    (e: Error) => e.name === 'SignalboxError' && e.message.includes(`${pubFile} is missing`) && !e.message.includes('PRIVATE'),
  );
  await assert.rejects(issueToken(dir, 'service/a'), /signing\.pub is missing/);
  await assert.rejects(issueTokenCredentials(dir, 'service/a', '1h', path.join(dir, 'out')), /signing\.pub is missing/);
  assert.deepEqual(readFileSync(keyFile), keyBytes, 'the signing key is unchanged');
  assert.equal(existsSync(pubFile), false, 'no new public key was made');
  assert.equal(existsSync(path.join(dir, 'out')), false);

  writeFileSync(pubFile, pubBytes);
  rmSync(keyFile);
  await assert.rejects(TokenVerifier.open(dir), /signing\.key is missing/);
  assert.equal(existsSync(keyFile), false);
  assert.deepEqual(readFileSync(pubFile), pubBytes);

  // Restored: tokens issued before still verify.
  writeFileSync(keyFile, keyBytes, { mode: 0o600 });
  const verifier = await TokenVerifier.open(dir);
  assert.equal((await verifier.verify(before.token)).ok, true);

  // A mismatched pair is named too.
  const other = tmp('sb-tok-keys-other-');
  await TokenVerifier.open(other).then((v) => v.close());
  writeFileSync(pubFile, readFileSync(path.join(other, 'tokens', 'signing.pub')));
  await assert.rejects(TokenVerifier.open(dir), /signing\.pub is not the public key of .*signing\.key/);
  writeFileSync(pubFile, pubBytes);
  verifier.close();
});

test('a missing ca.crt is made again from the existing key: issued certificates stay valid', async () => {
  const dir = tmp('sb-tok-ca-');
  const cred = await issueTokenCredentials(dir, 'service/a', '1h', path.join(dir, 'out'));
  const keyFile = path.join(dir, 'tokens', 'signing.key');
  const caFile = path.join(dir, 'tokens', 'ca.crt');
  const keyBytes = readFileSync(keyFile);
  const oldCa = readFileSync(caFile, 'utf8');
  rmSync(caFile);
  const verifier = await TokenVerifier.open(dir);
  assert.ok(existsSync(caFile));
  assert.equal(statSync(caFile).mode & 0o777, 0o644);
  assert.deepEqual(readFileSync(keyFile), keyBytes, 'not a key regeneration');
  assert.equal(
    new NodeX509(oldCa).publicKey
      .export({ type: 'spki', format: 'der' })
      .equals(new NodeX509(verifier.caPem).publicKey.export({ type: 'spki', format: 'der' })),
    true,
  );
  assert.equal((await verifier.verifyCertificate(derOf(cred.certFile))).ok, true);
  assert.ok(new NodeX509(readFileSync(cred.certFile)).checkIssued(new NodeX509(verifier.caPem)));
  verifier.close();
});

test('signalbox token --out writes the certificate, key and JWT twin; revoke refuses a non-id', async () => {
  const dir = tmp('sb-tok-cli-');
  const out = path.join(dir, 'creds');
  const bin = path.resolve('bin/signalbox.js');
  const run = (...args: string[]) => spawnSync(process.execPath, [bin, ...args], { encoding: 'utf8' });
  const r = run('token', '--service', 'orders', '--ttl', '2h', '--data-dir', dir, '--out', out);
  assert.equal(r.status, 0, r.stderr);
  assert.equal(r.stdout, '', 'nothing secret on stdout with --out');
  const id = /token ([0-9a-f-]{36}) for service\/orders, expires (\S+) \(revoke: signalbox token revoke \1\)/.exec(r.stderr);
  assert.ok(id, r.stderr);
  assert.equal(statSync(path.join(out, 'token.key')).mode & 0o777, 0o600);
  assert.equal(statSync(path.join(out, 'token.jwt')).mode & 0o777, 0o600);
  assert.equal(statSync(path.join(out, 'token.crt')).mode & 0o777, 0o644);
  const verifier = await TokenVerifier.open(dir);
  const viaCert = await verifier.verifyCertificate(derOf(path.join(out, 'token.crt')));
  const viaJwt = await verifier.verify(readFileSync(path.join(out, 'token.jwt'), 'utf8').trim());
  assert.ok(viaCert.ok && viaJwt.ok);
  assert.deepEqual(viaJwt.claims, viaCert.claims);
  assert.equal(viaCert.claims.id, id[1]);
  assert.equal(viaCert.claims.expiresAt.toISOString(), id[2]);

  const plain = run('token', '--gateway', 'edge', '--data-dir', dir);
  assert.equal(plain.status, 0, plain.stderr);
  assert.equal((await verifier.verify(plain.stdout.trim())).ok, true);
  assert.match(plain.stderr, /, expires \d{4}-/);

  assert.equal(run('token', 'revoke', id[1]!, '--data-dir', dir).status, 0);
  assert.equal((await verifier.verifyCertificate(derOf(path.join(out, 'token.crt')))).ok, false);
  const bad = run('token', 'revoke', 'not-an-id', '--data-dir', dir);
  assert.notEqual(bad.status, 0);
  assert.match(bad.stderr, /is not a token id/);
  verifier.close();
});
