// The certificate Signalbox's own servers present to proxies: the xDS port (ADS and the access log
// service) and the ext_authz service. By default the mesh CA issues it, for the names proxies dial
// (the host name, loopback, the bind address, --xds-san) plus the SPIFFE ID
// `spiffe://<trustDomain>/signalbox/<server>`, and renews it in memory at two thirds of its life;
// or it comes from the user's PKI (--xds-cert/--xds-key), re-read when the files change. Servers
// take new material without a restart: open connections keep theirs, new handshakes get the new.
import { EventEmitter } from 'node:events';
import { readFileSync, statSync } from 'node:fs';
import { hostname } from 'node:os';
import { isIP } from 'node:net';
import { createPrivateKey, X509Certificate } from 'node:crypto';
import * as grpc from '@grpc/grpc-js';
import type { CertificateAuthority } from './ca.js';
import type { Logger } from '../observability/logger.js';
import { ErrorCode, SignalboxError } from '../errors.js';
import { setLongTimeout, type LongTimeout } from '../util/timers.js';

type CaListener = Parameters<grpc.experimental.CertificateProvider['addCaCertificateListener']>[0];
type IdentityListener = Parameters<grpc.experimental.CertificateProvider['addIdentityCertificateListener']>[0];

/** Life of a server certificate the mesh CA issues; renewed at two thirds. */
export const SERVER_CERT_TTL_MS = 30 * 24 * 3_600_000;
/** How often --xds-cert/--xds-key are looked at for changes. */
const FILE_POLL_MS = 5_000;

export function serverSpiffeId(trustDomain: string, server: 'xds' | 'authz' | 'ratelimit'): string {
  return `spiffe://${trustDomain}/signalbox/${server}`;
}

const WILDCARDS = new Set(['', '0.0.0.0', '::', '[::]']);

/** The names a server certificate carries: always the host name, localhost and loopback, plus the bind address and extras. */
export function serverNames(bindAddress: string, extra: string[]): { dns: string[]; ips: string[] } {
  const dns = new Set<string>(['localhost']);
  const ips = new Set<string>(['127.0.0.1', '::1']);
  const host = hostname();
  if (host && /^[A-Za-z0-9.-]+$/.test(host)) dns.add(host.toLowerCase());
  for (const n of [...(WILDCARDS.has(bindAddress) ? [] : [bindAddress]), ...extra]) {
    const bare = n.replace(/^\[|\]$/g, '');
    if (isIP(bare)) ips.add(bare);
    else dns.add(bare.toLowerCase());
  }
  return { dns: [...dns].sort(), ips: [...ips].sort() };
}

/** Where a mesh-CA server certificate is kept between starts (the replicas' shared state); absent: issued anew at each start. */
export interface StoredServerCert {
  load(): Promise<{ certificatePem: string; privateKeyPem: string } | undefined>;
  save(c: { certificatePem: string; privateKeyPem: string }): Promise<void>;
}

export interface ServerTlsStatus {
  source: 'mesh-ca' | 'files';
  notAfter: string;
  names: string[];
}

/**
 * Whether a kept server certificate can serve again: issued by this CA, with the same SPIFFE ID
 * and names, its key its own, and more than a third of its life left (else it would be renewed
 * at once anyway).
 */
function usableStored(
  c: { certificatePem: string; privateKeyPem: string },
  ca: CertificateAuthority,
  spiffeId: string,
  names: { dns: string[]; ips: string[] },
): boolean {
  try {
    const x = new X509Certificate(c.certificatePem);
    if (!x.checkIssued(new X509Certificate(ca.certificatePem)) || !x.verify(new X509Certificate(ca.certificatePem).publicKey)) return false;
    if (!x.checkPrivateKey(createPrivateKey(c.privateKeyPem))) return false;
    const sans = (x.subjectAltName ?? '').split(', ').filter(Boolean);
    if (sans.length !== 1 + names.dns.length + names.ips.length || !sans.includes(`URI:${spiffeId}`)) return false;
    if (!names.dns.every((d) => x.checkHost(d, { wildcards: false, subject: 'never' }) === d) || !names.ips.every((ip) => x.checkIP(ip) === ip)) return false;
    const from = new Date(x.validFrom).getTime();
    const to = new Date(x.validTo).getTime();
    return to - Date.now() > (to - from) / 3;
  } catch {
    return false;
  }
}

export class ServerCertificate extends EventEmitter<{ changed: [] }> {
  private cert = '';
  private key = '';
  private info?: X509Certificate;
  /** Re-reads --xds-cert/--xds-key (files). */
  private poll?: NodeJS.Timeout;
  /** The next renewal (mesh CA). */
  private renewal?: LongTimeout;
  private fileStamp = '';

  private constructor(
    readonly source: 'mesh-ca' | 'files',
    private readonly logger: Logger,
    private readonly issue?: () => Promise<{ certificatePem: string; privateKeyPem: string }>,
    private readonly files?: { certFile: string; keyFile: string },
  ) {
    super();
  }

  /** Issued by the mesh CA (for `server`) or read from files; renewed or re-read from then on. */
  static async start(opts: {
    ca: CertificateAuthority;
    trustDomain: string;
    server: 'xds' | 'authz' | 'ratelimit';
    bindAddress: string;
    sans: string[];
    files?: { certFile: string; keyFile: string };
    stored?: StoredServerCert;
    logger: Logger;
  }): Promise<ServerCertificate> {
    if (opts.files) {
      const sc = new ServerCertificate('files', opts.logger, undefined, opts.files);
      sc.readFiles(true);
      sc.poll = setInterval(() => sc.readFiles(false), FILE_POLL_MS).unref();
      return sc;
    }
    const names = serverNames(opts.bindAddress, opts.sans);
    const spiffeId = serverSpiffeId(opts.trustDomain, opts.server);
    let reuse = opts.stored ? await opts.stored.load() : undefined;
    if (reuse && !usableStored(reuse, opts.ca, spiffeId, names)) reuse = undefined;
    const sc = new ServerCertificate('mesh-ca', opts.logger, async () => {
      if (reuse) {
        const kept = reuse;
        reuse = undefined; // only once: a renewal issues a new one
        return kept;
      }
      const c = await opts.ca.issueServer({ spiffeId, ...names, ttlMs: SERVER_CERT_TTL_MS });
      // Proxies verify the chain to the trust bundle: an intermediate CA goes along, and after a
      // rotation (--state consul) the new root cross-signed by the previous one, so a proxy whose
      // bootstrap trusts only the previous root still verifies this certificate.
      const extra = opts.ca.source === 'files' ? opts.ca.certificatePem : opts.ca.chainPem;
      const chain = extra ? `${c.certificatePem.trim()}\n${extra.trim()}\n` : c.certificatePem;
      const made = { certificatePem: chain, privateKeyPem: c.privateKeyPem };
      await opts.stored
        ?.save(made)
        .catch((e: unknown) =>
          opts.logger.warn({ err: (e as Error).message }, 'cannot keep the server certificate in the shared state; it is issued anew at the next start'),
        );
      return made;
    });
    await sc.renew();
    return sc;
  }

  get certPem(): string {
    return this.cert;
  }

  get keyPem(): string {
    return this.key;
  }

  status(): ServerTlsStatus {
    const names = (this.info?.subjectAltName ?? '').split(', ').filter(Boolean);
    return { source: this.source, notAfter: this.info ? new Date(this.info.validTo).toISOString() : '', names };
  }

  private set(cert: string, key: string): void {
    this.cert = cert;
    this.key = key;
    this.info = new X509Certificate(cert);
    this.emit('changed');
  }

  /** Issues a new certificate now (the mesh CA's signing root changed). */
  async reissue(): Promise<void> {
    if (this.source === 'mesh-ca') await this.renew();
  }

  /** Whether the certificate in use was signed by another root than `ca`'s signing root. */
  signedByOtherThan(ca: CertificateAuthority): boolean {
    if (this.source !== 'mesh-ca' || !this.info) return false;
    const root = new X509Certificate(ca.certificatePem);
    return !(this.info.checkIssued(root) && this.info.verify(root.publicKey));
  }

  private async renew(): Promise<void> {
    const c = await this.issue!();
    this.set(c.certificatePem, c.privateKeyPem);
    const life = new Date(this.info!.validTo).getTime() - Date.now();
    this.logger.info({ server: this.status().names, notAfter: this.status().notAfter }, 'server certificate issued by the mesh CA');
    this.renewal?.clear();
    this.renewal = setLongTimeout(
      () => void this.renew().catch((e) => this.logger.error({ err: e }, 'server certificate renewal failed')),
      Math.max(1_000, (life * 2) / 3),
    );
  }

  /** Reads --xds-cert/--xds-key; at start a bad pair is an error, later it is logged and the last good pair kept. */
  private readFiles(first: boolean): void {
    const f = this.files!;
    try {
      const stamp = [f.certFile, f.keyFile]
        .map((p) => {
          const s = statSync(p);
          return `${s.ino}:${s.size}:${s.mtimeMs}`;
        })
        .join('|');
      if (stamp === this.fileStamp) return;
      const cert = readFileSync(f.certFile, 'utf8');
      const key = readFileSync(f.keyFile, 'utf8');
      const x = new X509Certificate(cert);
      if (!x.checkPrivateKey(createPrivateKey(key))) throw new Error(`${f.keyFile} is not the key of ${f.certFile}`);
      this.fileStamp = stamp;
      this.set(cert, key);
      this.logger.info({ certFile: f.certFile, notAfter: this.status().notAfter }, first ? 'xDS server certificate loaded' : 'xDS server certificate reloaded');
    } catch (e) {
      // Never echo key material: the message names files only.
      const msg =
        e instanceof Error && /is not the key of/.test(e.message)
          ? e.message
          : `cannot read the server certificate ${f.certFile} / key ${f.keyFile} (${(e as NodeJS.ErrnoException).code ?? 'not PEM'})`;
      if (first) throw new SignalboxError(ErrorCode.BAD_FLAG, msg);
      this.logger.error({ certFile: f.certFile }, `${msg}; keeping the certificate loaded before`);
    }
  }

  /**
   * gRPC server credentials that follow this certificate. Clients may present a certificate
   * (verified against `clientCaPem`) but need not: a stream without one is refused by the
   * handler with a gRPC status, not by a failed handshake, so the client is told why.
   */
  grpcCredentials(clientCaPem: () => string): grpc.ServerCredentials {
    const caListeners = new Set<CaListener>();
    const idListeners = new Set<IdentityListener>();
    const identity = () => ({ certificate: Buffer.from(this.cert), privateKey: Buffer.from(this.key) });
    const ca = () => ({ caCertificate: Buffer.from(clientCaPem()) });
    this.on('changed', () => {
      for (const l of idListeners) l(identity());
    });
    const provider: grpc.experimental.CertificateProvider = {
      // The current material is delivered on the next tick: grpc-js registers its own watcher
      // only after adding these listeners, and an update delivered before that would be lost.
      addCaCertificateListener: (l) => {
        caListeners.add(l);
        process.nextTick(() => caListeners.has(l) && l(ca()));
      },
      removeCaCertificateListener: (l) => void caListeners.delete(l),
      addIdentityCertificateListener: (l) => {
        idListeners.add(l);
        process.nextTick(() => idListeners.has(l) && l(identity()));
      },
      removeIdentityCertificateListener: (l) => void idListeners.delete(l),
    };
    // One object plays both roles: grpc-js's argument names for the two providers do not match
    // the order its constructor reads them in, and a single provider is immune to that.
    return grpc.experimental.createCertificateProviderServerCredentials(provider, provider, false);
  }

  stop(): void {
    this.renewal?.clear();
    clearInterval(this.poll);
  }
}

/** What an embedded mesh service's TLS server takes: its certificate and the callers' trust bundle. */
export interface MeshServiceTls {
  certificate: ServerCertificate;
  /** Read on every handshake's material refresh: the bundle changes during a CA rotation. */
  readonly clientCaPem: string;
}

/**
 * A server certificate from the mesh CA for an embedded service (ext_authz, rate limit) that
 * follows a CA rotation (--state consul): re-issued from the new signing root when the CA changes,
 * with the callers' trust bundle read from the CA each time it is asked for. `stop` ends both.
 */
export async function meshServiceTls(opts: {
  ca: CertificateAuthority;
  trustDomain: string;
  server: 'authz' | 'ratelimit';
  bindAddress: string;
  logger: Logger;
}): Promise<{ tls: MeshServiceTls; stop(): void }> {
  const { ca, logger } = opts;
  const certificate = await ServerCertificate.start({
    ca,
    trustDomain: opts.trustDomain,
    server: opts.server,
    bindAddress: opts.bindAddress,
    sans: [],
    logger,
  });
  const onCaChanged = () =>
    void certificate.reissue().catch((e: unknown) => logger.error({ err: (e as Error).message }, 'cannot re-issue the server certificate after a CA change'));
  ca.on('changed', onCaChanged);
  return {
    tls: {
      certificate,
      get clientCaPem() {
        return ca.trustBundlePem;
      },
    },
    stop() {
      ca.off('changed', onCaChanged);
      certificate.stop();
    },
  };
}
