// Workload certificates, one per proxy instance: every xDS stream that may hold its identity's
// keys gets a key pair and certificate made for it alone (the same SPIFFE ID for every instance
// of a service, a different key and serial), renewed at two thirds of its life while the stream
// lives and forgotten when it ends. One leaked instance leaks one key, and cutting one instance
// off (its token revoked, its stream closed) stops its renewals without touching the others.
// Renewal only replaces the SDS secret: Envoy uses the new certificate for new connections and
// keeps serving open ones, so rotation drops nothing.
import { EventEmitter } from 'node:events';
import type { Logger } from '../observability/logger.js';
import type { CertificateAuthority, IssuedCert } from './ca.js';
import { setLongTimeout, type LongTimeout } from '../util/timers.js';

export const MIN_CERT_TTL_MS = 10_000;
export const MAX_CERT_TTL_MS = 90 * 24 * 3_600_000;

export interface IdentityMetrics {
  issued(kind: 'issued' | 'renewed'): void;
}

export function spiffeId(trustDomain: string, kind: 'service' | 'gateway', name: string): string {
  return `spiffe://${trustDomain}/${kind}/${name}`;
}

/** One proxy instance's certificate; emits `renewed` with each new one until stopped. */
export class InstanceCertificate extends EventEmitter<{ renewed: [IssuedCert] }> {
  private timer?: LongTimeout;
  stopped = false;

  constructor(
    private readonly manager: IdentityManager,
    readonly spiffeId: string,
    readonly instance: string,
    public current: IssuedCert,
  ) {
    super();
  }

  /** Schedules the renewal at two thirds of the current certificate's life. */
  schedule(): void {
    this.timer?.clear();
    if (this.stopped) return;
    const life = this.current.notAfter.getTime() - Date.now();
    this.timer = setLongTimeout(() => void this.renew(), Math.max(1_000, (life * 2) / 3));
  }

  async renew(): Promise<void> {
    if (this.stopped) return;
    try {
      const next = await this.manager.issueCert(this.spiffeId, this.instance, 'renewed');
      if (this.stopped) return; // the stream ended (or was revoked) meanwhile: nothing is sent
      this.current = next;
      this.schedule();
      this.emit('renewed', next);
    } catch (e) {
      this.manager.logger.error({ identity: this.spiffeId, instance: this.instance, err: e }, 'certificate renewal failed; retrying');
      this.timer = setLongTimeout(() => void this.renew(), 5_000);
    }
  }

  /** Ends renewals; the certificate is no longer listed. */
  stop(): void {
    this.stopped = true;
    this.timer?.clear();
    this.manager.forget(this);
  }
}

export class IdentityManager {
  private readonly live = new Set<InstanceCertificate>();
  /** Set while issuance is held back (halt): why, and what resume() releases. */
  private held?: { reason: string; released: Promise<void>; release: () => void };
  private waitingCount = 0;
  private ttlMs: number;
  readonly logger: Logger;
  private readonly metrics?: IdentityMetrics;

  constructor(
    readonly ca: CertificateAuthority,
    opts: { ttlMs: number; logger: Logger; metrics?: IdentityMetrics },
  ) {
    this.ttlMs = opts.ttlMs;
    this.logger = opts.logger;
    this.metrics = opts.metrics;
  }

  /** Changes the TTL; live certificates issued under another TTL are renewed now. */
  async setTtl(ttlMs: number): Promise<void> {
    if (ttlMs === this.ttlMs) return;
    this.ttlMs = ttlMs;
    const renewals = Promise.all([...this.live].map((c) => c.renew()));
    if (!this.held) await renewals; // while halted they wait for resume(); the caller (a reload) does not
  }

  /** Issues a certificate for one proxy instance (`instance` names it in logs and listings). */
  async issueInstance(spiffeId: string, instance: string): Promise<InstanceCertificate> {
    const cert = await this.issueCert(spiffeId, instance, 'issued');
    const handle = new InstanceCertificate(this, spiffeId, instance, cert);
    this.live.add(handle);
    handle.schedule();
    return handle;
  }

  /**
   * Stops issuing: new certificates and renewals wait (the proxies keep what they hold) until
   * resume(), which issues every one that waited at once. `reason` is shown in status.
   */
  halt(reason: string): void {
    if (this.held) {
      this.held.reason = reason;
      return;
    }
    let release!: () => void;
    const released = new Promise<void>((r) => {
      release = r;
    });
    this.held = { reason, released, release };
  }

  resume(): void {
    const h = this.held;
    this.held = undefined;
    h?.release();
  }

  /** Why issuance is stopped (undefined while it runs), and how many issuances wait for it. */
  get halted(): { reason: string; waiting: number } | undefined {
    return this.held && { reason: this.held.reason, waiting: this.waitingCount };
  }

  /** @internal */
  async issueCert(spiffeId: string, instance: string, kind: 'issued' | 'renewed'): Promise<IssuedCert> {
    while (this.held) {
      this.waitingCount++;
      try {
        await this.held.released;
      } finally {
        this.waitingCount--;
      }
    }
    const cert = await this.ca.issue(spiffeId, this.ttlMs);
    this.metrics?.issued(kind);
    this.logger.info(
      { identity: spiffeId, instance, serial: cert.serial, notAfter: cert.notAfter.toISOString() },
      kind === 'issued' ? 'certificate issued' : 'certificate renewed',
    );
    return cert;
  }

  /**
   * Issues every live certificate again (the signing root changed): one after the other, evenly
   * spread over `spreadMs`, so a replica holding many proxies does not sign them all in one tick.
   * Each proxy gets its new certificate pushed as at a renewal. Resolves when all were issued.
   */
  async reissueAll(spreadMs: number): Promise<number> {
    const handles = [...this.live].sort((a, b) => (a.instance < b.instance ? -1 : a.instance > b.instance ? 1 : 0));
    const gap = handles.length > 1 ? spreadMs / handles.length : 0;
    await Promise.all(
      handles.map(
        (h, i) =>
          new Promise<void>((resolve) => {
            setTimeout(() => void h.renew().finally(resolve), Math.round(i * gap)).unref();
          }),
      ),
    );
    return handles.length;
  }

  /** @internal */
  forget(handle: InstanceCertificate): void {
    this.live.delete(handle);
  }

  /** Live certificates with their instance, serial and expiry (never the key). */
  list(): { identity: string; instance: string; serial: string; issuer: string; notBefore: string; notAfter: string }[] {
    return [...this.live]
      .map((h) => ({
        identity: h.spiffeId,
        instance: h.instance,
        serial: h.current.serial,
        issuer: h.current.issuer,
        notBefore: h.current.notBefore.toISOString(),
        notAfter: h.current.notAfter.toISOString(),
      }))
      .sort((a, b) => (a.identity < b.identity ? -1 : a.identity > b.identity ? 1 : a.instance < b.instance ? -1 : 1));
  }

  /** Seconds until the nearest expiry, for the metrics. */
  nearestExpirySeconds(): number | undefined {
    let min: number | undefined;
    for (const h of this.live) {
      const s = (h.current.notAfter.getTime() - Date.now()) / 1000;
      if (min === undefined || s < min) min = s;
    }
    return min;
  }

  stop(): void {
    for (const h of [...this.live]) h.stop();
  }
}
