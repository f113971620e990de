// Per-instance workload certificates: each instance its own key and serial under one SPIFFE ID,
// renewed at two thirds of its life until stopped, never listed with a key.
import assert from 'node:assert/strict';
import { mkdtempSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { test } from 'node:test';
import { CertificateAuthority } from '../../src/ca/ca.js';
import { IdentityManager } from '../../src/ca/identities.js';
import { x509 } from '../../src/ca/x509.js';
import { createLogger } from '../../src/observability/logger.js';

const silent = createLogger({ level: 'silent' });
const spki = (pem: string) => Buffer.from(new x509.X509Certificate(pem).publicKey.rawData).toString('hex');

test('two instances of one identity get different keys and serials with the same SPIFFE ID', async () => {
  const ca = await CertificateAuthority.open({ dataDir: mkdtempSync(path.join(os.tmpdir(), 'sb-id-')), trustDomain: 't' });
  const ids = new IdentityManager(ca, { ttlMs: 60_000, logger: silent });
  const a = await ids.issueInstance('spiffe://t/service/orders', 'orders-1');
  const b = await ids.issueInstance('spiffe://t/service/orders', 'orders-2');
  assert.notEqual(a.current.serial, b.current.serial);
  assert.notEqual(a.current.privateKeyPem, b.current.privateKeyPem);
  assert.notEqual(spki(a.current.certificatePem), spki(b.current.certificatePem));
  for (const c of [a, b]) {
    const san = new x509.X509Certificate(c.current.certificatePem).getExtension(x509.SubjectAlternativeNameExtension)!;
    assert.deepEqual(
      san.names.items.map((n) => n.value),
      ['spiffe://t/service/orders'],
    );
  }
  assert.deepEqual(
    ids.list().map((l) => l.instance),
    ['orders-1', 'orders-2'],
  );
  a.stop();
  assert.deepEqual(
    ids.list().map((l) => l.instance),
    ['orders-2'],
    'a stopped instance is forgotten',
  );
  ids.stop();
  assert.equal(ids.list().length, 0);
});

test('an instance certificate is renewed at two thirds of its life; a stopped one never again', async () => {
  const ca = await CertificateAuthority.open({ dataDir: mkdtempSync(path.join(os.tmpdir(), 'sb-id-')), trustDomain: 't' });
  const ids = new IdentityManager(ca, { ttlMs: 3_000, logger: silent });
  const live = await ids.issueInstance('spiffe://t/service/a', 'a-1');
  const cut = await ids.issueInstance('spiffe://t/service/a', 'a-2');
  let cutRenewals = 0;
  cut.on('renewed', () => cutRenewals++);
  cut.stop();
  const first = live.current;
  const hold = setTimeout(() => undefined, 10_000); // renewal timers do not hold the process open
  const second = await new Promise<typeof first>((resolve) => live.once('renewed', resolve));
  assert.notEqual(second.serial, first.serial);
  assert.ok(Date.now() - first.notBefore.getTime() >= 1_900, 'not renewed before two thirds of the life');
  await new Promise((r) => setTimeout(r, 500));
  clearTimeout(hold);
  assert.equal(cutRenewals, 0, 'a stopped instance (revoked, disconnected) gets no new certificate');
  assert.ok(!JSON.stringify(ids.list()).includes('PRIVATE'), 'the listing carries no keys');
  ids.stop();
});

test('a long certificate life (certTTL 2160h, renewal due after 60 days) is not renewed at once, over and over', async () => {
  const ca = await CertificateAuthority.open({ dataDir: mkdtempSync(path.join(os.tmpdir(), 'sb-id-')), trustDomain: 't' });
  const ids = new IdentityManager(ca, { ttlMs: 2160 * 3_600_000, logger: silent });
  const cert = await ids.issueInstance('spiffe://t/service/a', 'a-1');
  let renewals = 0;
  cert.on('renewed', () => renewals++);
  // A plain setTimeout of 60 days would fire after 1 ms and renew in a loop.
  await new Promise((r) => setTimeout(r, 300));
  assert.equal(renewals, 0);
  ids.stop();
});
