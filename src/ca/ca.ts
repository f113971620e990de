// The mesh certificate authority: a root generated on first start and kept in the data folder
// (key file mode 0600), or an existing CA (e.g. an intermediate of your PKI) loaded from files.
// It issues short-lived ECDSA P-256 leaf certificates carrying one SPIFFE ID each.
import { webcrypto } from 'node:crypto';
import { promises as fs } from 'node:fs';
import path from 'node:path';
import { x509 } from './x509.js';
import { ErrorCode, SignalboxError } from '../errors.js';
import { writeStateFile } from '../util/files.js';


const EC = { name: 'ECDSA', namedCurve: 'P-256' } as const;
const SIGN = { name: 'ECDSA', hash: 'SHA-256' } as const;

export interface IssuedCert {
  spiffeId: string;
  certificatePem: string;
  /** PKCS#8 PEM. Never logged, never in a config dump. */
  privateKeyPem: string;
  serial: string;
  notBefore: Date;
  notAfter: Date;
}

export interface CaFiles {
  certFile: string;
  keyFile: string;
  /** Extra trusted roots (e.g. the next root during a rotation), PEM, optional. */
  bundleFile?: string;
}

async function importKey(pem: string): Promise<CryptoKey> {
  const der = x509.PemConverter.decode(pem)[0];
  if (!der) throw new Error('no PEM block');
  return (await webcrypto.subtle.importKey('pkcs8', der, EC, true, ['sign'])) as unknown as CryptoKey;
}

async function exportKeyPem(key: CryptoKey): Promise<string> {
  const der = await webcrypto.subtle.exportKey('pkcs8', key as unknown as webcrypto.CryptoKey);
  return x509.PemConverter.encode(der, 'PRIVATE KEY');
}

export class CertificateAuthority {
  private constructor(
    readonly certificate: x509.X509Certificate,
    private readonly key: CryptoKey,
    /** Every root a proxy should trust (the signing CA's root plus any extra during rotation). */
    readonly trustBundlePem: string,
    readonly source: 'generated' | 'loaded' | 'files',
  ) {}

  get certificatePem(): string {
    return this.certificate.toString('pem');
  }

  /** Loads the CA from `files`, or from `<dataDir>/ca/`, generating a new root there if none. */
  static async open(opts: { dataDir: string; trustDomain: string; files?: CaFiles }): Promise<CertificateAuthority> {
    if (opts.files) return CertificateAuthority.fromFiles(opts.files, 'files');
    const dir = path.join(opts.dataDir, 'ca');
    const certFile = path.join(dir, 'root.crt');
    const keyFile = path.join(dir, 'root.key');
    const bundleFile = path.join(dir, 'trust-bundle-extra.pem');
    try {
      await fs.access(certFile);
      return await CertificateAuthority.fromFiles({ certFile, keyFile, bundleFile }, 'loaded');
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'ENOENT') throw e;
    }
    const keys = (await webcrypto.subtle.generateKey(EC, true, ['sign', 'verify'])) as unknown as CryptoKeyPair;
    const now = Date.now();
    const cert = await x509.X509CertificateGenerator.createSelfSigned({
      name: `CN=Signalbox mesh root, O=${opts.trustDomain}`,
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
    await fs.mkdir(dir, { recursive: true, mode: 0o700 });
    await writeStateFile(keyFile, await exportKeyPem(keys.privateKey), 0o600);
    await writeStateFile(certFile, cert.toString('pem'), 0o644);
    return new CertificateAuthority(cert, keys.privateKey, cert.toString('pem'), 'generated');
  }

  private static async fromFiles(files: CaFiles, source: 'loaded' | 'files'): Promise<CertificateAuthority> {
    const read = async (file: string, what: string) => {
      try {
        return await fs.readFile(file, 'utf8');
      } catch (e) {
        throw new SignalboxError(ErrorCode.CA, `cannot read the CA ${what} ${file}: ${(e as NodeJS.ErrnoException).code ?? 'error'}`);
      }
    };
    const certPem = await read(files.certFile, 'certificate');
    const keyPem = await read(files.keyFile, 'private key');
    let cert: x509.X509Certificate;
    try {
      cert = new x509.X509Certificate(certPem);
    } catch {
      throw new SignalboxError(ErrorCode.CA, `${files.certFile} is not a PEM certificate`);
    }
    let key: CryptoKey;
    try {
      key = await importKey(keyPem);
    } catch {
      // Never echo key material: only say which file failed.
      throw new SignalboxError(ErrorCode.CA, `${files.keyFile} is not a PKCS#8 ECDSA P-256 private key`);
    }
    const bc = cert.getExtension(x509.BasicConstraintsExtension);
    if (!bc?.ca) throw new SignalboxError(ErrorCode.CA, `${files.certFile} is not a CA certificate (basicConstraints CA:TRUE is missing)`);
    // The key must belong to the certificate: sign and verify a probe.
    const probe = new TextEncoder().encode('signalbox-ca-probe');
    const sig = await webcrypto.subtle.sign(SIGN, key as unknown as webcrypto.CryptoKey, probe);
    const pub = await cert.publicKey.export(EC, ['verify']);
    if (!(await webcrypto.subtle.verify(SIGN, pub as unknown as webcrypto.CryptoKey, sig, probe))) {
      throw new SignalboxError(ErrorCode.CA, `${files.keyFile} does not match the certificate ${files.certFile}`);
    }
    let bundle = cert.toString('pem');
    if (files.bundleFile) {
      const extra = await fs.readFile(files.bundleFile, 'utf8').catch(() => '');
      if (extra.trim()) bundle = `${bundle.trim()}\n${extra.trim()}\n`;
    }
    return new CertificateAuthority(cert, key, bundle, source);
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
    const keys = (await webcrypto.subtle.generateKey(EC, true, ['sign', 'verify'])) as unknown as CryptoKeyPair;
    const now = Date.now();
    const notBefore = new Date(now - 30_000);
    const notAfter = new Date(now + ttlMs);
    const cert = await x509.X509CertificateGenerator.create({
      subject: `O=${new URL(spiffeId).host}`,
      issuer: this.certificate.subject,
      publicKey: keys.publicKey,
      signingKey: this.key,
      notBefore,
      notAfter,
      signingAlgorithm: SIGN,
      extensions: [
        new x509.BasicConstraintsExtension(false, undefined, true),
        new x509.KeyUsagesExtension(x509.KeyUsageFlags.digitalSignature | x509.KeyUsageFlags.keyAgreement, true),
        new x509.ExtendedKeyUsageExtension([x509.ExtendedKeyUsage.serverAuth, x509.ExtendedKeyUsage.clientAuth]),
        new x509.SubjectAlternativeNameExtension([{ type: 'url', value: spiffeId }, ...o.dns.map((value) => ({ type: 'dns' as const, value })), ...o.ips.map((value) => ({ type: 'ip' as const, value }))], true),
        await x509.AuthorityKeyIdentifierExtension.create(this.certificate.publicKey),
      ],
    });
    return {
      spiffeId,
      certificatePem: cert.toString('pem'),
      privateKeyPem: await exportKeyPem(keys.privateKey),
      serial: cert.serialNumber,
      notBefore,
      notAfter,
    };
  }
}
