// The mesh CA and proxy tokens: what they issue, what they refuse, and that no key leaks into an error.
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { test } from 'node:test';
import { x509 } from '../../src/ca/x509.js';
import { CertificateAuthority } from '../../src/ca/ca.js';
import { IdentityManager } from '../../src/ca/identities.js';
import { issueToken, revokeToken, TokenVerifier } from '../../src/ca/tokens.js';
import { createLogger } from '../../src/observability/logger.js';

const tmp = (p: string) => mkdtempSync(path.join(os.tmpdir(), p));
const silent = createLogger({ level: 'silent' });

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
  await assert.rejects(CertificateAuthority.open({ dataDir: dir, trustDomain: 't', files: { certFile: '/nonexistent.crt', keyFile } }), /cannot read the CA certificate \/nonexistent\.crt: ENOENT/);
  await assert.rejects(
    CertificateAuthority.open({ dataDir: dir, trustDomain: 't', files: { certFile, keyFile: otherKey } }),
    (e: Error) => /does not match the certificate/.test(e.message) && !e.message.includes('PRIVATE KEY'),
  );
  const garbage = path.join(dir, 'garbage.key');
  writeFileSync(garbage, '-----BEGIN PRIVATE KEY-----\nbm90IGEga2V5\n-----END PRIVATE KEY-----\n');
  await assert.rejects(CertificateAuthority.open({ dataDir: dir, trustDomain: 't', files: { certFile, keyFile: garbage } }), (e: Error) => /is not a PKCS#8 ECDSA P-256 private key/.test(e.message) && !e.message.includes('bm90IGEga2V5'));
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
  execFileSync('openssl', ['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:P-256', '-nodes', '-keyout', keyFile, '-out', certFile, '-days', '2', '-subj', '/CN=corp intermediate', '-addext', 'basicConstraints=critical,CA:TRUE', '-addext', 'keyUsage=critical,keyCertSign,cRLSign'], { stdio: 'ignore' });
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

test('identities are renewed at two thirds of their life and announce it', async () => {
  const ca = await CertificateAuthority.open({ dataDir: tmp('sb-ca-'), trustDomain: 't' });
  const ids = new IdentityManager(ca, { ttlMs: 3_000, logger: silent });
  const first = await ids.ensure('spiffe://t/service/a');
  assert.equal(await ids.ensure('spiffe://t/service/a'), first, 'one certificate per identity until renewal');
  // Renewal timers do not hold the process open; this one does while the test waits.
  const hold = setTimeout(() => undefined, 10_000);
  const rotated = await new Promise<string>((resolve) => ids.once('rotated', resolve));
  clearTimeout(hold);
  assert.equal(rotated, 'spiffe://t/service/a');
  const second = ids.current('spiffe://t/service/a')!;
  assert.notEqual(second.serial, first.serial);
  assert.ok(Date.now() - first.notBefore.getTime() >= 1_900, 'not renewed before two thirds of the life');
  assert.ok(!JSON.stringify(ids.list()).includes('PRIVATE'), 'the listing carries no keys');
  ids.stop();
});

test('tokens: valid, wrong signer, expired, revoked, garbage', async () => {
  const dir = tmp('sb-tok-');
  const verifier = await TokenVerifier.open(dir);
  const { token, id } = await issueToken(dir, 'service/orders');
  const ok = await verifier.verify(token);
  assert.ok(ok.ok && ok.claims.subject === 'service/orders' && ok.claims.id === id);

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
});
