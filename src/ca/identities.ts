// Keeps one current certificate per SPIFFE identity and renews each at two thirds of its life.
// Renewal only replaces the SDS secret: Envoy uses the new certificate for new connections and
// keeps serving the open ones, so rotation drops nothing.
import { EventEmitter } from 'node:events';
import type { Logger } from '../observability/logger.js';
import type { CertificateAuthority, IssuedCert } from './ca.js';

export const MIN_CERT_TTL_MS = 10_000;
export const MAX_CERT_TTL_MS = 90 * 24 * 3_600_000;

export interface IdentityMetrics {
  issued(kind: 'issued' | 'renewed'): void;
}

export function spiffeId(trustDomain: string, kind: 'service' | 'gateway', name: string): string {
  return `spiffe://${trustDomain}/${kind}/${name}`;
}

export class IdentityManager extends EventEmitter<{ rotated: [string] }> {
  private readonly certs = new Map<string, IssuedCert>();
  private readonly timers = new Map<string, NodeJS.Timeout>();
  private readonly inflight = new Map<string, Promise<IssuedCert>>();
  private ttlMs: number;

  constructor(readonly ca: CertificateAuthority, opts: { ttlMs: number; logger: Logger; metrics?: IdentityMetrics }, private readonly logger = opts.logger, private readonly metrics = opts.metrics) {
    super();
    this.ttlMs = opts.ttlMs;
  }

  current(id: string): IssuedCert | undefined {
    return this.certs.get(id);
  }

  /** Changes the TTL; certificates issued under another TTL are renewed now. */
  async setTtl(ttlMs: number): Promise<void> {
    if (ttlMs === this.ttlMs) return;
    this.ttlMs = ttlMs;
    await Promise.all([...this.certs.keys()].map((id) => this.renew(id)));
  }

  /** The identity's certificate, issued now if it has none. */
  ensure(id: string): Promise<IssuedCert> {
    const have = this.certs.get(id);
    if (have) return Promise.resolve(have);
    let p = this.inflight.get(id);
    if (!p) {
      p = this.issue(id, 'issued').finally(() => this.inflight.delete(id));
      this.inflight.set(id, p);
    }
    return p;
  }

  private async issue(id: string, kind: 'issued' | 'renewed'): Promise<IssuedCert> {
    const cert = await this.ca.issue(id, this.ttlMs);
    this.certs.set(id, cert);
    this.metrics?.issued(kind);
    this.logger.info({ identity: id, serial: cert.serial, notAfter: cert.notAfter.toISOString() }, kind === 'issued' ? 'certificate issued' : 'certificate renewed');
    clearTimeout(this.timers.get(id));
    const life = cert.notAfter.getTime() - Date.now();
    const t = setTimeout(() => void this.renew(id).catch((e) => this.logger.error({ identity: id, err: e }, 'certificate renewal failed; retrying')), Math.max(1_000, (life * 2) / 3));
    t.unref();
    this.timers.set(id, t);
    return cert;
  }

  private async renew(id: string): Promise<void> {
    await this.issue(id, 'renewed');
    this.emit('rotated', id);
  }

  /** Identities with their serial and expiry (never the key). */
  list(): { identity: string; serial: string; notBefore: string; notAfter: string }[] {
    return [...this.certs.values()]
      .map((c) => ({ identity: c.spiffeId, serial: c.serial, notBefore: c.notBefore.toISOString(), notAfter: c.notAfter.toISOString() }))
      .sort((a, b) => (a.identity < b.identity ? -1 : 1));
  }

  /** Seconds until the nearest expiry, for the metrics. */
  nearestExpirySeconds(): number | undefined {
    let min: number | undefined;
    for (const c of this.certs.values()) {
      const s = (c.notAfter.getTime() - Date.now()) / 1000;
      if (min === undefined || s < min) min = s;
    }
    return min;
  }

  stop(): void {
    for (const t of this.timers.values()) clearTimeout(t);
    this.timers.clear();
  }
}
