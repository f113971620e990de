// The mesh certificate authority: a root generated on first start and kept in the data folder
// (key file mode 0600), or an existing CA (e.g. an intermediate of your PKI) loaded from files.
// It issues short-lived ECDSA P-256 leaf certificates carrying one SPIFFE ID each.
import { webcrypto } from 'node:crypto';
import { EventEmitter } from 'node:events';
import { promises as fs } from 'node:fs';
import path from 'node:path';
import { x509 } from './x509.js';
import { ErrorCode, SignalboxError } from '../errors.js';
import { ensureFolder, readError, writeDataFile } from '../util/data-dir.js';
import type { SharedState } from '../state/shared.js';

const EC = { name: 'ECDSA', namedCurve: 'P-256' } as const;
const SIGN = { name: 'ECDSA', hash: 'SHA-256' } as const;

export interface IssuedCert {
  spiffeId: string;
  certificatePem: string;
  /** PKCS#8 PEM. Never logged, never in a config dump. */
  privateKeyPem: string;
  serial: string;
  /** The subject of the root that signed it (each root a rotation makes has its own). */
  issuer: string;
  notBefore: Date;
  notAfter: Date;
}

export interface CaFiles {
  certFile: string;
  keyFile: string;
  /** Extra trusted roots (e.g. the next root during a rotation), PEM, optional. */
  bundleFile?: string;
}

export async function importKey(pem: string): Promise<CryptoKey> {
  const der = x509.PemConverter.decode(pem)[0];
  if (!der) throw new Error('no PEM block');
  return (await webcrypto.subtle.importKey('pkcs8', der, EC, true, ['sign'])) as unknown as CryptoKey;
}

export async function exportKeyPem(key: CryptoKey): Promise<string> {
  const der = await webcrypto.subtle.exportKey('pkcs8', key as unknown as webcrypto.CryptoKey);
  return x509.PemConverter.encode(der, 'PRIVATE KEY');
}

/** Whether `file` exists; ENOENT is "no", any other fault an error naming the file and the cause. */
async function present(file: string, what: string): Promise<boolean> {
  try {
    await fs.lstat(file);
    return true;
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'ENOENT') return false;
    throw readError(ErrorCode.CA, what, file, e);
  }
}

const PEM_BLOCK = /-----BEGIN ([A-Z0-9 ]+)-----\r?\n([\s\S]*?)-----END \1-----/g;

/**
 * The extra trusted roots in `file`: one or more PEM CA certificates (text between the blocks,
 * such as comments, is allowed). Anything else is refused, naming the file: a damaged bundle
 * would otherwise reach every proxy as its trust anchors. A missing data-folder bundle is none;
 * a missing --ca-bundle (`required`) is an error.
 */
async function readExtraBundle(file: string, required: boolean): Promise<x509.X509Certificate[]> {
  let text: string;
  try {
    text = await fs.readFile(file, 'utf8');
  } catch (e) {
    if (!required && (e as NodeJS.ErrnoException).code === 'ENOENT') return [];
    throw readError(ErrorCode.CA, 'the extra trust bundle', file, e);
  }
  const fix = required ? 'fix the file given to --ca-bundle' : `fix it or remove it`;
  const bad = (why: string) =>
    new SignalboxError(
      ErrorCode.CA,
      `the extra trust bundle ${file} ${why}; it must hold one or more PEM CA certificates ("-----BEGIN CERTIFICATE-----"): ${fix}`,
    );
  const blocks = [...text.matchAll(PEM_BLOCK)];
  if ((text.match(/-----BEGIN /g) ?? []).length !== blocks.length) throw bad('has a PEM block without its END line (cut short?)');
  if (!blocks.length) throw bad(text.trim() ? 'holds no PEM block' : 'is empty');
  return blocks.map((b, n) => {
    // Only the block's label is named, never its content: a key pasted here by mistake stays unprinted.
    if (b[1] !== 'CERTIFICATE')
      throw bad(
        `has a ${b[1]} block (number ${n + 1}), not a certificate${/PRIVATE KEY/.test(b[1]!) ? ' (a private key has no place in a bundle sent to every proxy)' : ''}`,
      );
    let cert: x509.X509Certificate;
    try {
      cert = new x509.X509Certificate(b[0]);
    } catch {
      throw bad(`has a CERTIFICATE block (number ${n + 1}) that is not a valid X.509 certificate`);
    }
    if (!cert.getExtension(x509.BasicConstraintsExtension)?.ca)
      throw bad(`has a certificate (number ${n + 1}, ${cert.subject}) that is not a CA certificate (basicConstraints CA:TRUE is missing)`);
    return cert;
  });
}

/** The trust bundle proxies get: the signing CA's certificate, then the extra roots (as re-encoded PEM). */
function bundleOf(cert: x509.X509Certificate, extra: x509.X509Certificate[]): string {
  if (!extra.length) return cert.toString('pem');
  return `${[cert, ...extra].map((c) => c.toString('pem').trim()).join('\n')}\n`;
}

/**
 * A new self-signed mesh root (ten years). `label` (a rotation's) goes into its common name, so
 * each root a rotation makes has a subject of its own and a leaf's issuer names its root.
 */
export async function newRoot(trustDomain: string, label?: string): Promise<{ keys: CryptoKeyPair; cert: x509.X509Certificate }> {
  const keys = (await webcrypto.subtle.generateKey(EC, true, ['sign', 'verify'])) as unknown as CryptoKeyPair;
  const now = Date.now();
  const cert = await x509.X509CertificateGenerator.createSelfSigned({
    name: `CN=Signalbox mesh root${label ? ` ${label}` : ''}, O=${trustDomain}`,
    keys,
    notBefore: new Date(now - 60_000),
    notAfter: new Date(now + 10 * 365 * 24 * 3_600_000),
    signingAlgorithm: SIGN,
    extensions: [
      new x509.BasicConstraintsExtension(true, 1, true),
      new x509.KeyUsagesExtension(x509.KeyUsageFlags.keyCertSign | x509.KeyUsageFlags.cRLSign, true),
      await x509.SubjectKeyIdentifierExtension.create(keys.publicKey),
    ],
  });
  return { keys, cert };
}

/**
 * A certificate for `next`'s key and subject signed by `prev`'s key: a proxy that trusts only the
 * previous root verifies a chain leaf -> this -> previous root, one that trusts the next root stops
 * at it. Valid while both roots are.
 */
export async function crossSign(prev: { cert: x509.X509Certificate; key: CryptoKey }, next: x509.X509Certificate): Promise<x509.X509Certificate> {
  const now = Date.now();
  const until = Math.min(prev.cert.notAfter.getTime(), next.notAfter.getTime());
  return x509.X509CertificateGenerator.create({
    subject: next.subject,
    issuer: prev.cert.subject,
    publicKey: next.publicKey,
    signingKey: prev.key,
    notBefore: new Date(now - 60_000),
    notAfter: new Date(until),
    signingAlgorithm: SIGN,
    extensions: [
      new x509.BasicConstraintsExtension(true, 0, true),
      new x509.KeyUsagesExtension(x509.KeyUsageFlags.keyCertSign | x509.KeyUsageFlags.cRLSign, true),
      await x509.SubjectKeyIdentifierExtension.create(next.publicKey),
      await x509.AuthorityKeyIdentifierExtension.create(prev.cert.publicKey),
    ],
  });
}

/** Whether `key` signs what `cert`'s public key verifies. */
export async function keyMatches(cert: x509.X509Certificate, key: CryptoKey): Promise<boolean> {
  const probe = new TextEncoder().encode('signalbox-ca-probe');
  const sig = await webcrypto.subtle.sign(SIGN, key as unknown as webcrypto.CryptoKey, probe);
  try {
    const pub = await cert.publicKey.export(EC, ['verify']);
    return await webcrypto.subtle.verify(SIGN, pub as unknown as webcrypto.CryptoKey, sig, probe);
  } catch {
    return false; // a certificate whose key is not P-256 cannot belong to a P-256 key
  }
}

/** The shared state record holding the mesh CA (`--state consul`). */
export const SHARED_CA_RECORD = 'ca';

/** What a rotation under way adds to the shared CA (`--state consul`, see rotation.ts). */
export interface RotationView {
  id: string;
  phase: 'started' | 'switched';
  /** The root not yet signing (started) or no longer signing (switched): trusted either way. */
  other: x509.X509Certificate;
}

/** The CA's material at one moment: what signs, what proxies trust, what goes along with a server certificate. */
export interface CaMaterial {
  certificate: x509.X509Certificate;
  key: CryptoKey;
  trustBundlePem: string;
  /** Certificates sent after a server certificate (a cross-signed root during and after a rotation), PEM, or ''. */
  chainPem: string;
  rotation?: RotationView;
}

export class CertificateAuthority extends EventEmitter<{ changed: [] }> {
  private constructor(
    private current: CaMaterial,
    readonly source: 'generated' | 'loaded' | 'files' | 'shared',
  ) {
    super();
  }

  /** The root that signs now. */
  get certificate(): x509.X509Certificate {
    return this.current.certificate;
  }

  /** Every root a proxy should trust (the signing CA's root plus any extra, and the other root during a rotation). */
  get trustBundlePem(): string {
    return this.current.trustBundlePem;
  }

  /** What a server certificate is sent with (a cross-signed root, so proxies bootstrapped with an older root verify it), or ''. */
  get chainPem(): string {
    return this.current.chainPem;
  }

  get rotation(): RotationView | undefined {
    return this.current.rotation;
  }

  /**
   * Takes new material from the shared state (a rotation's phase): new certificates are issued
   * with it from now on. Says what changed; listeners of `changed` are told.
   */
  adopt(next: CaMaterial): { signing: boolean; bundle: boolean; chain: boolean } {
    const prev = this.current;
    const what = {
      signing: prev.certificate.toString('pem') !== next.certificate.toString('pem'),
      bundle: prev.trustBundlePem !== next.trustBundlePem,
      chain: prev.chainPem !== next.chainPem,
    };
    this.current = next;
    if (what.signing || what.bundle || what.chain || prev.rotation?.phase !== next.rotation?.phase) this.emit('changed');
    return what;
  }

  get certificatePem(): string {
    return this.certificate.toString('pem');
  }

  /**
   * Loads the CA from `files`, or from `<dataDir>/ca/`, generating a new root there if neither
   * root.key nor root.crt exists. Half a root (one file without the other, an empty or damaged
   * file, a key of another certificate) is an error naming the file and the way out, never a
   * new root: a new root changes every proxy certificate and the CA file bootstraps verify with.
   */
  static async open(opts: { dataDir: string; trustDomain: string; files?: CaFiles; shared?: SharedState }): Promise<CertificateAuthority> {
    if (opts.files) return CertificateAuthority.fromFiles(opts.files, 'files');
    if (opts.shared) return CertificateAuthority.fromShared(opts.shared, opts.trustDomain);
    const dir = path.join(opts.dataDir, 'ca');
    const certFile = path.join(dir, 'root.crt');
    const keyFile = path.join(dir, 'root.key');
    const bundleFile = path.join(dir, 'trust-bundle-extra.pem');
    const [hasCert, hasKey] = [await present(certFile, 'the CA certificate'), await present(keyFile, 'the CA private key')];
    const startOver = `restore it from a backup, or remove ${keyFile} and ${certFile} to generate a new root (every proxy certificate changes, and bootstraps need the new ${path.join(opts.dataDir, 'xds-ca.pem')})`;
    if (hasKey && !hasCert) {
      throw new SignalboxError(
        ErrorCode.CA,
        `the CA certificate ${certFile} is missing but its key ${keyFile} exists (a first start stopped between writing the two?); refusing to make a new root while a root key exists: ${startOver}`,
      );
    }
    if (hasCert && !hasKey) {
      throw new SignalboxError(ErrorCode.CA, `the CA private key ${keyFile} is missing but ${certFile} exists; refusing to make a new root: ${startOver}`);
    }
    if (hasCert) return CertificateAuthority.fromFiles({ certFile, keyFile, bundleFile }, 'loaded', startOver);
    return CertificateAuthority.generate(opts.trustDomain, dir, keyFile, certFile, bundleFile);
  }

  /**
   * Makes a new root in `dir`. The key is written first and the certificate last: root.crt is
   * what says "a root exists", so a crash between the two leaves a key without a certificate,
   * which the next start reports (see open). A write that fails here (a full disk) removes the
   * key this call wrote, as no certificate was ever issued with it: once the fault is fixed the
   * next start generates a root as if it were the first.
   */
  private static async generate(trustDomain: string, dir: string, keyFile: string, certFile: string, bundleFile: string): Promise<CertificateAuthority> {
    // The extra bundle may be put in place before the first start: checked before anything is written.
    const extra = await readExtraBundle(bundleFile, false);
    const { keys, cert } = await newRoot(trustDomain);
    await ensureFolder(dir, ErrorCode.CA);
    await writeDataFile(keyFile, await exportKeyPem(keys.privateKey), 0o600, ErrorCode.CA);
    try {
      await writeDataFile(certFile, cert.toString('pem'), 0o644, ErrorCode.CA);
    } catch (e) {
      const removed = await fs.rm(keyFile, { force: true }).then(
        () => true,
        () => false,
      );
      const tail = removed
        ? `${keyFile} was removed again, so the next start makes a new root`
        : `${keyFile} could not be removed: remove it before starting again`;
      throw new SignalboxError(ErrorCode.CA, `${(e as Error).message}. No root was made: ${tail}`);
    }
    return new CertificateAuthority({ certificate: cert, key: keys.privateKey, trustBundlePem: bundleOf(cert, extra), chainPem: '' }, 'generated');
  }

  /**
   * Loads a CA from its files. `recovery` (data-folder roots) says how to get out of a damaged
   * file; for --ca-cert/--ca-key the files are the user's and the message asks to fix the flag.
   */
  private static async fromFiles(files: CaFiles, source: 'loaded' | 'files', recovery?: string): Promise<CertificateAuthority> {
    const fix = (flag: string) => recovery ?? `fix the file given to ${flag}`;
    const read = async (file: string, what: string) => {
      try {
        return await fs.readFile(file, 'utf8');
      } catch (e) {
        throw readError(ErrorCode.CA, what, file, e);
      }
    };
    const certPem = await read(files.certFile, 'the CA certificate');
    const keyPem = await read(files.keyFile, 'the CA private key');
    if (!certPem.trim())
      throw new SignalboxError(
        ErrorCode.CA,
        `the CA certificate ${files.certFile} is empty (a write cut short by a crash or a full disk?): ${fix('--ca-cert')}`,
      );
    if (!keyPem.trim())
      throw new SignalboxError(ErrorCode.CA, `the CA private key ${files.keyFile} is empty (a write cut short by a crash or a full disk?): ${fix('--ca-key')}`);
    let cert: x509.X509Certificate;
    try {
      cert = new x509.X509Certificate(certPem);
    } catch {
      throw new SignalboxError(ErrorCode.CA, `${files.certFile} is not a PEM certificate: ${fix('--ca-cert')}`);
    }
    let key: CryptoKey;
    try {
      key = await importKey(keyPem);
    } catch {
      // Never echo key material: only say which file failed.
      throw new SignalboxError(ErrorCode.CA, `${files.keyFile} is not a PKCS#8 ECDSA P-256 private key: ${fix('--ca-key')}`);
    }
    const bc = cert.getExtension(x509.BasicConstraintsExtension);
    if (!bc?.ca) throw new SignalboxError(ErrorCode.CA, `${files.certFile} is not a CA certificate (basicConstraints CA:TRUE is missing): ${fix('--ca-cert')}`);
    // The key must belong to the certificate: sign and verify a probe.
    if (!(await keyMatches(cert, key))) {
      throw new SignalboxError(
        ErrorCode.CA,
        `${files.keyFile} does not match the certificate ${files.certFile}: ${recovery ?? 'give --ca-key the key of --ca-cert'}`,
      );
    }
    const extra = files.bundleFile ? await readExtraBundle(files.bundleFile, source === 'files') : [];
    return new CertificateAuthority({ certificate: cert, key, trustBundlePem: bundleOf(cert, extra), chainPem: '' }, source);
  }

  /**
   * The CA shared by every replica (`--state consul`): read from the shared state, or made there
   * on first start (written only if still absent, so concurrent first starts agree on one root).
   * Its key is sealed in the store; a record that does not open or does not hold a matching pair
   * is an error, never a reason to make a new root.
   */
  private static async fromShared(shared: SharedState, trustDomain: string): Promise<CertificateAuthority> {
    const { data, created } = await shared.readOrCreate(SHARED_CA_RECORD, async () => {
      const { keys, cert } = await newRoot(trustDomain);
      return { certificate: cert.toString('pem'), privateKey: await exportKeyPem(keys.privateKey) };
    }, ['privateKey']);
    return new CertificateAuthority(await sharedCaMaterial(shared, data), created ? 'generated' : 'shared');
  }

  /** Issues a leaf certificate for one SPIFFE ID, valid for ttlMs. */
  async issue(spiffeId: string, ttlMs: number): Promise<IssuedCert> {
    return this.issueLeaf({ spiffeId, ttlMs, dns: [], ips: [] });
  }

  /**
   * Issues the certificate of one of Signalbox's own servers (the xDS port, the ext_authz
   * service): its SPIFFE ID (`spiffe://<td>/signalbox/<name>`, what proxies match) plus the DNS
   * names and IP addresses clients dial.
   */
  async issueServer(opts: { spiffeId: string; dns: string[]; ips: string[]; ttlMs: number }): Promise<IssuedCert> {
    return this.issueLeaf(opts);
  }

  private async issueLeaf(o: { spiffeId: string; dns: string[]; ips: string[]; ttlMs: number }): Promise<IssuedCert> {
    const { spiffeId, ttlMs } = o;
    const signer = this.current; // one root for the whole leaf, even if a rotation switches meanwhile
    const keys = (await webcrypto.subtle.generateKey(EC, true, ['sign', 'verify'])) as unknown as CryptoKeyPair;
    const now = Date.now();
    const notBefore = new Date(now - 30_000);
    const notAfter = new Date(now + ttlMs);
    const cert = await x509.X509CertificateGenerator.create({
      subject: `O=${new URL(spiffeId).host}`,
      issuer: signer.certificate.subject,
      publicKey: keys.publicKey,
      signingKey: signer.key,
      notBefore,
      notAfter,
      signingAlgorithm: SIGN,
      extensions: [
        new x509.BasicConstraintsExtension(false, undefined, true),
        new x509.KeyUsagesExtension(x509.KeyUsageFlags.digitalSignature | x509.KeyUsageFlags.keyAgreement, true),
        new x509.ExtendedKeyUsageExtension([x509.ExtendedKeyUsage.serverAuth, x509.ExtendedKeyUsage.clientAuth]),
        new x509.SubjectAlternativeNameExtension(
          [
            { type: 'url', value: spiffeId },
            ...o.dns.map((value) => ({ type: 'dns' as const, value })),
            ...o.ips.map((value) => ({ type: 'ip' as const, value })),
          ],
          true,
        ),
        await x509.AuthorityKeyIdentifierExtension.create(signer.certificate.publicKey),
      ],
    });
    return {
      spiffeId,
      certificatePem: cert.toString('pem'),
      privateKeyPem: await exportKeyPem(keys.privateKey),
      serial: cert.serialNumber,
      issuer: signer.certificate.subject,
      notBefore,
      notAfter,
    };
  }
}

/**
 * The CA material a shared `ca` record holds: the signing root and its key, the roots trusted
 * beside it (the other root of a rotation under way, any extra bundle), the cross-signed root a
 * server certificate goes with. A record that does not hold a matching pair is an error naming the
 * key, never a reason to make a new root.
 */
export async function sharedCaMaterial(shared: SharedState, data: Record<string, unknown>): Promise<CaMaterial> {
  const where = shared.keyOf(SHARED_CA_RECORD);
  const fix = `restore ${where} from a backup (consul kv export / snapshot); removing it makes a new root at the next start (every proxy certificate changes)`;
  const bad = (what: string) => new SignalboxError(ErrorCode.STATE, `${where} in Consul KV ${what}: ${fix}`);
  if (typeof data.certificate !== 'string' || typeof data.privateKey !== 'string') throw bad('lacks the certificate or the private key');
  const certOf = (pem: unknown, what: string) => {
    try {
      const c = new x509.X509Certificate(String(pem));
      if (!c.getExtension(x509.BasicConstraintsExtension)?.ca) throw new Error('not a CA');
      return c;
    } catch {
      throw bad(`holds ${what} that is not a PEM X.509 CA certificate`);
    }
  };
  const cert = certOf(data.certificate, 'a certificate');
  let key: CryptoKey;
  try {
    key = await importKey(data.privateKey);
  } catch {
    throw bad('holds a private key that is not PKCS#8 ECDSA P-256');
  }
  if (!(await keyMatches(cert, key))) throw bad('holds a private key that does not match its certificate');
  const extra: x509.X509Certificate[] = [];
  let rotation: RotationView | undefined;
  const r = data.rotation as { id?: unknown; phase?: unknown; nextCertificate?: unknown; previousCertificate?: unknown } | undefined;
  if (r !== undefined) {
    if (typeof r !== 'object' || r === null || typeof r.id !== 'string' || (r.phase !== 'started' && r.phase !== 'switched'))
      throw bad('holds a rotation that is not { id, phase: started|switched }');
    const other = certOf(r.phase === 'started' ? r.nextCertificate : r.previousCertificate, `a ${r.phase === 'started' ? 'next' : 'previous'} root`);
    rotation = { id: r.id, phase: r.phase, other };
    extra.push(other);
  }
  if (typeof data.trustBundleExtra === 'string' && data.trustBundleExtra.trim()) {
    for (const b of data.trustBundleExtra.matchAll(PEM_BLOCK)) {
      try {
        extra.push(new x509.X509Certificate(b[0]));
      } catch {
        throw bad('holds an extra trust bundle with a block that is not a certificate');
      }
    }
  }
  // The cross-signed root goes with server certificates only while it certifies the signing key.
  let chainPem = '';
  if (typeof data.crossCertificate === 'string') {
    const cross = certOf(data.crossCertificate, 'a cross-signed root');
    if (Buffer.from(cross.publicKey.rawData).equals(Buffer.from(cert.publicKey.rawData))) chainPem = cross.toString('pem');
  }
  return { certificate: cert, key, trustBundlePem: bundleOf(cert, extra), chainPem, rotation };
}
