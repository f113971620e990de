// What SotW and Delta streams share: binding the stream to one node, recording ACKs and NACKs,
// and knowing when listeners and routes have settled (for make-before-break cluster removal).
import { versionOf, type Resource } from '../resources/resource.js';
import { blameNack } from './nack-blame.js';
import { isKnownTypeUrl, SHORT_NAME, TypeUrl } from '../resources/type-urls.js';
import type { ServerContext } from './context.js';
import { identify, NodeError, type WireNode } from './node.js';
import { ProxyStatus, type NodeIdentity } from './proxy-status.js';
import type { TokenCheck } from '../../ca/tokens.js';

export class StreamError extends Error {
  constructor(readonly reason: string, message: string) {
    super(message);
  }
}

export abstract class XdsStream {
  status?: ProxyStatus;
  /** The result of checking the token the proxy sent with the stream (set before the first request). */
  auth?: TokenCheck;
  private nonceCounter = 0;
  closed = false;

  constructor(protected readonly ctx: ServerContext, readonly protocol: 'sotw' | 'delta', readonly peer: string) {}

  protected nextNonce(): string {
    return String(++this.nonceCounter);
  }

  /** Binds the stream to the node of its first request; later requests must not name another. */
  protected bind(node: WireNode | null | undefined): ProxyStatus {
    if (this.status) {
      if (node?.id && node.id !== this.status.node.id) throw new StreamError('node-changed', `stream of "${this.status.node.id}" sent a request for node "${node.id}"`);
      return this.status;
    }
    let identity;
    try {
      identity = identify(node);
    } catch (e) {
      if (e instanceof NodeError) throw new StreamError('bad-node', e.message);
      throw e;
    }
    const allowed = this.authorize(identity);
    const status = new ProxyStatus(identity, this.protocol, this.peer);
    status.secretsAllowed = allowed;
    this.status = status;
    this.ctx.registry.add(status);
    this.ctx.cache.request(identity.group);
    this.ctx.metrics.connectedProxies.inc({ role: identity.role, protocol: this.protocol });
    this.ctx.logger.info({ proxy: identity.id, group: identity.group, protocol: this.protocol, peer: this.peer }, 'proxy connected');
    return status;
  }

  /** Whether the stream's token names this node's identity; refuses the stream if tokens are required for all config. */
  private authorize(identity: NodeIdentity): boolean {
    const want = `${identity.role === 'gateway' ? 'gateway' : 'service'}/${identity.name}`;
    const auth = this.auth ?? { ok: false as const, reason: 'no token verifier configured' };
    let problem: string | undefined;
    if (!auth.ok) problem = auth.reason;
    else if (auth.claims.subject !== want) problem = `token is for ${auth.claims.subject}, the node claims ${want}`;
    if (!problem) return true;
    if (this.ctx.requireToken === 'all') throw new StreamError('unauthenticated', `node "${identity.id}" (${want}) refused: ${problem}`);
    this.ctx.logger.warn({ proxy: identity.id, identity: want, peer: this.peer, reason: problem }, 'proxy not authenticated: it gets configuration but no secrets');
    return false;
  }

  /** Secrets go only to a proxy whose token names its own identity. */
  protected secretsBlocked(type: TypeUrl): boolean {
    if (type !== TypeUrl.Secret || this.status?.secretsAllowed) return false;
    if (!this.secretRefusalLogged) {
      this.secretRefusalLogged = true;
      this.ctx.logger.warn({ proxy: this.status?.node.id, peer: this.peer }, 'secret request refused: the proxy has no valid token for its identity');
    }
    return true;
  }
  private secretRefusalLogged = false;

  protected checkType(typeUrl: string): TypeUrl {
    if (!typeUrl) throw new StreamError('no-type-url', 'request without type_url (ADS needs one)');
    if (!isKnownTypeUrl(typeUrl)) throw new StreamError('unknown-type-url', `unsupported type_url "${typeUrl.slice(0, 200)}"`);
    return typeUrl;
  }

  protected recordSent(type: TypeUrl, version: string, nonce: string, sent: Map<string, Resource>, count: number): void {
    const s = this.status!;
    const t = s.type(type);
    t.sent = { version, nonce, at: Date.now(), resources: count };
    t.pushes++;
    s.sent.set(type, sent);
    this.ctx.metrics.pushes.inc({ type: SHORT_NAME[type], protocol: this.protocol });
  }

  protected recordAck(type: TypeUrl, version: string, sentAt: number): void {
    const t = this.status!.type(type);
    t.acked = { version, at: Date.now() };
    this.ctx.metrics.pushAck.observe({ type: SHORT_NAME[type] }, (Date.now() - sentAt) / 1000);
  }

  protected recordNack(type: TypeUrl, version: string, message: string): void {
    const s = this.status!;
    const t = s.type(type);
    const sent = s.sent.get(type) ?? new Map<string, Resource>();
    // Name the resources (and the policy files behind them) that Envoy's message mentions or quotes.
    const blamed = blameNack(sent, message);
    const resources = blamed.resources.map((r) => r.name).sort();
    const sources = blamed.sources;
    t.nack = { version, message, at: Date.now(), resources, sources };
    this.ctx.metrics.nacks.inc({ type: SHORT_NAME[type] });
    this.ctx.logger.warn({ proxy: s.node.id, type: SHORT_NAME[type], version, resources, sources, envoyMessage: message }, 'proxy rejected configuration (NACK); it keeps its last accepted version');
  }

  /** True when the listeners and routes last sent were ACKed (or none were sent). */
  protected routesSettled(): boolean {
    for (const t of [TypeUrl.Listener, TypeUrl.Route]) {
      const s = this.status?.types.get(t);
      if (s?.sent && s.acked?.version !== s.sent.version) return false;
    }
    return true;
  }

  /**
   * Version of a set of resources sent for one type. When the set is exactly the snapshot's (the
   * common case) the snapshot's precomputed version is reused instead of hashing again per stream;
   * both are the same hash of sorted name/version pairs (versionOf).
   */
  protected versionFor(type: TypeUrl, resources: ReadonlyMap<string, Resource>): string {
    const snap = this.ctx.cache.get(this.status!.node.group);
    const all = snap.get(type);
    if (all.size === resources.size) {
      let same = true;
      for (const [n, r] of resources) {
        if (all.get(n) !== r) {
          same = false;
          break;
        }
      }
      if (same) return snap.versions.get(type)!;
    }
    return versionOf(resources.values());
  }

  /** Called when the snapshot of this stream's group changed. */
  abstract onChange(types: TypeUrl[]): void;

  close(): void {
    if (this.closed) return;
    this.closed = true;
    if (this.status) {
      this.ctx.registry.remove(this.status);
      this.ctx.metrics.connectedProxies.dec({ role: this.status.node.role, protocol: this.protocol });
      this.ctx.logger.info({ proxy: this.status.node.id, protocol: this.protocol }, 'proxy disconnected');
    }
  }
}
