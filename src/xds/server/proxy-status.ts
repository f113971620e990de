// What the control plane knows about each connected proxy: who it is, what it was sent, what it
// ACKed, and what it rejected (NACK) with Envoy's own message.
import type { Resource } from '../resources/resource.js';
import { SHORT_NAME, type TypeUrl } from '../resources/type-urls.js';
import type { NackAttribution } from './nack-blame.js';

export interface NodeIdentity {
  id: string;
  role: 'gateway' | 'sidecar';
  /** Sidecars: the service instance it fronts. */
  instance?: string;
  name: string;
  group: string;
  cluster?: string;
  userAgent?: string;
}

export interface TypeStatus {
  sent?: { version: string; nonce: string; at: number; resources: number };
  acked?: { version: string; at: number };
  /**
   * The last NACK: Envoy's message (cut to MAX_NACK_MESSAGE; `cut` characters were dropped) and what
   * it blames. `rateLimited`: the stream was over its allowance of searched NACKs, so the blame is
   * carried over from the previous NACK of the same version and message, or empty.
   */
  nack?: { version: string; message: string; at: number; resources: string[]; sources: string[]; cut?: number; rateLimited?: boolean } & Partial<Omit<NackAttribution, 'sources'>>;
  /** NACKs received on this stream, and how many of them were over the allowance (not searched). */
  nacks?: number;
  nacksRateLimited?: number;
  pushes: number;
}

/**
 * The one vocabulary for a proxy's sync state, used by the admin API, the dashboard and
 * `signalbox status`: SYNCED (every type's last sent version ACKed), PENDING (a newer version sent,
 * not ACKed yet), NACKED (the newest version of some type was rejected by the proxy).
 */
export const PROXY_STATES = ['SYNCED', 'PENDING', 'NACKED'] as const;
export type ProxyState = (typeof PROXY_STATES)[number];

let nextStreamId = 1;

export class ProxyStatus {
  readonly streamId = nextStreamId++;
  readonly connectedAt = Date.now();
  readonly types = new Map<TypeUrl, TypeStatus>();
  /** The resources last sent per type (shared objects, not copies). */
  readonly sent = new Map<TypeUrl, Map<string, Resource>>();
  /** Whether the proxy proved its identity with a token (only then does it receive secrets). */
  secretsAllowed = false;
  /** The token the proxy presented: its id, subject and expiry (never the token itself). */
  token?: { id: string; subject: string; expiresAt?: string };
  /** This instance's own certificate (serial and expiry; never the key). */
  certificate?: { identity: string; serial: string; notAfter: string };

  constructor(readonly node: NodeIdentity, readonly protocol: 'sotw' | 'delta', readonly peer: string) {}

  type(t: TypeUrl): TypeStatus {
    let s = this.types.get(t);
    if (!s) this.types.set(t, (s = { pushes: 0 }));
    return s;
  }

  /** Synced when every type's last sent version was ACKed; NACKED when any last response was rejected. */
  get state(): ProxyState {
    let pending = false;
    for (const s of this.types.values()) {
      if (s.nack && s.sent && s.nack.version === s.sent.version) return 'NACKED';
      if (s.sent && s.acked?.version !== s.sent.version) pending = true;
    }
    return pending ? 'PENDING' : 'SYNCED';
  }

  toJSON() {
    const types: Record<string, unknown> = {};
    for (const [t, s] of [...this.types].sort(([a], [b]) => (a < b ? -1 : 1))) {
      types[SHORT_NAME[t]] = {
        sentVersion: s.sent?.version,
        sentAt: s.sent ? new Date(s.sent.at).toISOString() : undefined,
        ackedVersion: s.acked?.version,
        ackedAt: s.acked ? new Date(s.acked.at).toISOString() : undefined,
        pushes: s.pushes,
        lastNack: s.nack ? { version: s.nack.version, message: s.nack.message, at: new Date(s.nack.at).toISOString(), resources: s.nack.resources, sources: s.nack.sources, culprit: s.nack.culprit, candidates: s.nack.candidates, attribution: s.nack.attribution, cut: s.nack.cut || undefined, rateLimited: s.nack.rateLimited || undefined } : undefined,
        nacks: s.nacks,
        nacksRateLimited: s.nacksRateLimited || undefined,
      };
    }
    return {
      id: this.node.id,
      role: this.node.role,
      name: this.node.name,
      group: this.node.group,
      protocol: this.protocol,
      stream: this.streamId,
      peer: this.peer,
      userAgent: this.node.userAgent,
      connectedAt: new Date(this.connectedAt).toISOString(),
      authenticated: this.secretsAllowed,
      token: this.token,
      state: this.state,
      types,
    };
  }
}

export class ProxyRegistry {
  private readonly streams = new Map<number, ProxyStatus>();

  add(p: ProxyStatus): void {
    this.streams.set(p.streamId, p);
  }

  remove(p: ProxyStatus): void {
    this.streams.delete(p.streamId);
  }

  all(): ProxyStatus[] {
    return [...this.streams.values()].sort((a, b) => (a.node.id < b.node.id ? -1 : a.node.id > b.node.id ? 1 : a.streamId - b.streamId));
  }

  /** The newest stream of a node id. */
  byId(id: string): ProxyStatus | undefined {
    let found: ProxyStatus | undefined;
    for (const p of this.streams.values()) if (p.node.id === id && (!found || p.streamId > found.streamId)) found = p;
    return found;
  }

  get size(): number {
    return this.streams.size;
  }
}
