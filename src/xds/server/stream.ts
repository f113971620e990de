// What SotW and Delta streams share: binding the stream to one node, recording ACKs and NACKs,
// knowing when listeners and routes have settled (for make-before-break cluster removal), holding
// listener and route changes back until the clusters they name are warm on the proxy, and keeping
// clusters the routes left for a drain period.
import { versionOf, type Resource } from '../resources/resource.js';
import { blameNack, cutMessage, NACKS_BLAMED_PER_SECOND, NackRateLimit } from './nack-blame.js';
import { isKnownTypeUrl, SHORT_NAME, TypeUrl } from '../resources/type-urls.js';
import type { ServerContext } from './context.js';
import { envoyRefusal, identify, NodeError, type WireNode } from './node.js';
import { ProxyStatus, type NodeIdentity } from './proxy-status.js';
import type { TokenCheck } from '../../ca/tokens.js';
import type { InstanceCertificate } from '../../ca/identities.js';
import type { IssuedCert } from '../../ca/ca.js';
import { IDENTITY_SECRET } from '../../ir/types.js';
import { EncodeCache } from '../resources/resource.js';
import { redactSecret } from '../resources/redact.js';
import { SharedResponses } from './responses.js';
import { clustersNamedBy } from './warmup.js';

/** gRPC status codes a refused stream ends with. */
export const GrpcCode = { INVALID_ARGUMENT: 3, NOT_FOUND: 5, PERMISSION_DENIED: 7, FAILED_PRECONDITION: 9, INTERNAL: 13, UNAUTHENTICATED: 16 } as const;

export class StreamError extends Error {
  constructor(
    readonly reason: string,
    message: string,
    readonly code?: number,
  ) {
    super(message);
  }
}

/** Per-stream secrets are encoded outside the shared cache: one instance's key is never kept for another. */
function instanceSecret(cert: IssuedCert, caPem: string | undefined): Resource {
  const chain = caPem ? `${cert.certificatePem.trim()}\n${caPem.trim()}\n` : cert.certificatePem;
  const json = { name: IDENTITY_SECRET, tls_certificate: { certificate_chain: { inline_string: chain }, private_key: { inline_string: cert.privateKeyPem } } };
  return new EncodeCache().make(TypeUrl.Secret, IDENTITY_SECRET, json, { printable: redactSecret(json) });
}

export abstract class XdsStream {
  status?: ProxyStatus;
  /** The result of checking the token the proxy sent with the stream (set before the first request). */
  auth?: TokenCheck;
  private nonceCounter = 0;
  closed = false;
  /** This instance's own certificate (SDS signalbox/identity), made for this stream alone. */
  private own?: Resource;
  private instanceCert?: InstanceCertificate;
  private issuing = false;
  private overlay?: { base: ReadonlyMap<string, Resource>; own: Resource; map: Map<string, Resource> };

  /**
   * Clusters and endpoints: the names the proxy has ACKed (holds and accepted). SotW keeps the
   * map of the ACKed response itself (no copy per ACK); Delta a set it updates per response.
   */
  protected readonly acked = new Map<TypeUrl, { has(name: string): boolean }>();
  /** Listener and route changes held back until the clusters they name are warm: per type, whether its push was forced, and the cold clusters. */
  private held?: { since: number; types: Map<TypeUrl, { force: boolean; cold: string[] }>; timer: NodeJS.Timeout };
  /** Set while held changes are sent regardless: why (the wait's bound passed, or the clusters were refused). */
  private releasing?: 'timeout' | 'nack';
  /** Clusters the routes no longer name, kept until their drain ends: name -> end (ms). */
  private readonly leaving = new Map<string, number>();
  private drainTimer?: { at: number; timer: NodeJS.Timeout };

  /** Responses shared with the other streams (the server's), or this stream's own without a server. */
  protected readonly shared: SharedResponses;

  constructor(
    protected readonly ctx: ServerContext,
    readonly protocol: 'sotw' | 'delta',
    readonly peer: string,
  ) {
    this.shared = ctx.responses ?? new SharedResponses();
  }

  protected nextNonce(): string {
    return String(++this.nonceCounter);
  }

  /** Binds the stream to the node of its first request; later requests must not name another. */
  protected bind(node: WireNode | null | undefined): ProxyStatus {
    if (this.status) {
      if (node?.id && node.id !== this.status.node.id)
        throw new StreamError('node-changed', `stream of "${this.status.node.id}" sent a request for node "${node.id}"`);
      return this.status;
    }
    let identity: ReturnType<typeof identify>;
    try {
      identity = identify(node);
    } catch (e) {
      if (e instanceof NodeError) throw new StreamError('bad-node', e.message);
      throw e;
    }
    const allowed = this.authorize(identity);
    // A name the policies do not declare never makes a group: proxies cannot grow the server.
    if (this.ctx.declares?.(identity.role, identity.name) === false) {
      throw new StreamError(
        'unknown-name',
        `node "${identity.id}" claims ${identity.role === 'gateway' ? 'Gateway' : 'Service'} "${identity.name}", which no policy declares`,
        GrpcCode.NOT_FOUND,
      );
    }
    // An Envoy older than the oldest Signalbox supports gets nothing (listed in /api/proxies `refused`).
    const tooOld = envoyRefusal(identity);
    if (tooOld) {
      this.ctx.registry.refuse(identity, this.peer, tooOld);
      throw new StreamError('envoy-version', tooOld, GrpcCode.FAILED_PRECONDITION);
    }
    const status = new ProxyStatus(identity, this.protocol, this.peer);
    status.secretsAllowed = allowed;
    if (this.auth?.ok) status.token = { id: this.auth.claims.id, subject: this.auth.claims.subject, expiresAt: this.auth.claims.expiresAt?.toISOString() };
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
    let code: number = GrpcCode.UNAUTHENTICATED;
    if (!auth.ok) problem = auth.reason;
    else if (auth.claims.subject !== want) {
      problem = `token is for ${auth.claims.subject}, the node claims ${want}`;
      code = GrpcCode.PERMISSION_DENIED;
    }
    if (!problem) return true;
    if (this.ctx.requireToken !== 'secrets')
      throw new StreamError(
        code === GrpcCode.PERMISSION_DENIED ? 'out-of-scope' : 'unauthenticated',
        `node "${identity.id}" (${want}) refused: ${problem}`,
        code,
      );
    this.ctx.logger.warn(
      { proxy: identity.id, identity: want, peer: this.peer, reason: problem },
      'proxy not authenticated: it gets configuration but no secrets',
    );
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

  /**
   * What this stream's proxy should hold of a type: the group's snapshot, and for secrets the
   * proxy's own certificate on top (issued on first need, renewed while the stream lives).
   */
  protected resources(type: TypeUrl): ReadonlyMap<string, Resource> {
    const base = this.ctx.cache.get(this.status!.node.group).get(type);
    if (type !== TypeUrl.Secret) return base;
    this.ensureInstanceCert();
    if (!this.own) return base;
    if (this.overlay?.base === base && this.overlay.own === this.own) return this.overlay.map;
    const map = new Map(base);
    map.set(IDENTITY_SECRET, this.own);
    this.overlay = { base, own: this.own, map };
    return map;
  }

  private ensureInstanceCert(): void {
    const ids = this.ctx.identities;
    const status = this.status;
    if (!ids || !status?.secretsAllowed || this.issuing || this.closed) return;
    const spiffe = this.ctx.identityOf?.(status.node.group);
    if (!spiffe && this.instanceCert) {
      // The group no longer has an identity (mesh TLS turned off): the proxy's key goes too.
      this.instanceCert.stop();
      this.instanceCert = undefined;
      this.own = undefined;
      status.certificate = undefined;
    }
    if (!spiffe || this.instanceCert?.spiffeId === spiffe) return;
    this.issuing = true;
    const caPem = ids.ca.source === 'files' ? ids.ca.certificatePem : undefined;
    ids.issueInstance(spiffe, status.node.id).then(
      (handle) => {
        this.issuing = false;
        if (this.closed) return handle.stop();
        this.instanceCert?.stop();
        this.instanceCert = handle;
        const use = (cert: IssuedCert) => {
          this.own = instanceSecret(cert, caPem);
          status.certificate = { identity: spiffe, serial: cert.serial, notAfter: cert.notAfter.toISOString() };
        };
        use(handle.current);
        handle.on('renewed', (cert) => {
          if (this.closed) return;
          use(cert);
          this.ownSecretsChanged();
        });
        this.ownSecretsChanged();
      },
      (e: unknown) => {
        this.issuing = false;
        this.ctx.logger.error({ proxy: status.node.id, identity: spiffe, err: e }, 'could not issue the proxy its certificate');
      },
    );
  }

  /** The proxy's own secrets changed (issued or renewed): push secrets again. */
  protected abstract ownSecretsChanged(): void;

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

  /** How many of this stream's NACKs are searched for what they blame (the rest are only counted). */
  private readonly nackLimit = new NackRateLimit();

  protected recordNack(type: TypeUrl, version: string, message: string): void {
    const s = this.status!;
    const t = s.type(type);
    const short = SHORT_NAME[type];
    // Envoy's message is the proxy's to choose: kept and logged cut (its head says what went wrong).
    const { text, cut } = cutMessage(message);
    t.nacks = (t.nacks ?? 0) + 1;
    this.ctx.metrics.nacks.inc({ type: short });
    const turn = this.nackLimit.take();
    if (turn !== 'search') {
      // Over the allowance: recorded without a search. The same version and message blame the same.
      const prev = t.nack;
      const same = prev !== undefined && prev.version === version && prev.message === text;
      t.nack = same
        ? { ...prev, at: Date.now(), cut, rateLimited: true }
        : { version, message: text, at: Date.now(), resources: [], sources: [], cut, rateLimited: true };
      t.nacksRateLimited = (t.nacksRateLimited ?? 0) + 1;
      this.ctx.metrics.nacksRateLimited.inc({ type: short });
      if (turn === 'first-over')
        this.ctx.logger.warn(
          { proxy: s.node.id, type: short, version, limit: NACKS_BLAMED_PER_SECOND },
          'proxy NACKs faster than the allowance: further NACKs this second are rate limited (counted and recorded, not attributed or logged)',
        );
      return;
    }
    const sent = s.sent.get(type) ?? new Map<string, Resource>();
    // Name the resources (and the policy files behind them) that Envoy's message mentions or quotes.
    const blamed = blameNack(sent, message);
    const resources = blamed.resources.map((r) => r.name).sort();
    const sources = blamed.sources;
    t.nack = {
      version,
      message: text,
      at: Date.now(),
      resources,
      sources,
      cut,
      culprit: blamed.culprit,
      candidates: blamed.candidates,
      attribution: blamed.attribution,
    };
    this.ctx.logger.warn(
      {
        proxy: s.node.id,
        type: short,
        version,
        resources,
        sources,
        culprit: blamed.culprit,
        attribution: blamed.attribution,
        envoyMessage: text,
        cut: cut || undefined,
        searchLimited: blamed.limited || undefined,
      },
      'proxy rejected configuration (NACK); it keeps its last accepted version',
    );
    // Not narrowed down in-process: an Envoy checks the parts in the background (bounded); the answer updates this NACK's record if it is still the last.
    blamed.narrow?.((u) => t.nack?.version === version && t.nack.message === text && Object.assign(t.nack, u), this.ctx.logger);
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
    if (this.resources(type) !== all) return versionOf(resources.values());
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

  /** Whether the proxy asked for this type on this stream. */
  protected abstract subscribes(type: TypeUrl): boolean;

  /** Pushes one type again (after a wait for warm clusters or a drain period ended). */
  protected abstract retry(type: TypeUrl, force: boolean): void;

  /** Delta's set of ACKed names of a type (only clusters and endpoints are tracked: see acked). */
  protected ackedNames(type: TypeUrl): Set<string> | undefined {
    if (type !== TypeUrl.Cluster && type !== TypeUrl.Endpoint) return undefined;
    // The caller is about to change the set in place: what allClustersWarm found no longer holds.
    this.ackedEpoch++;
    let s = this.acked.get(type) as Set<string> | undefined;
    if (!s) {
      s = new Set();
      this.acked.set(type, s);
    }
    return s;
  }

  /**
   * Whether cluster `c` is warm on the proxy. An EDS cluster (one with a ClusterLoadAssignment in
   * the snapshot) is warm once the proxy ACKed a response holding its endpoints: Envoy asks for a
   * cluster's endpoints only once it holds the cluster, and applying them ends its warming. This
   * does not wait for the cluster's own ACK, which Envoy may send hundreds of milliseconds later
   * while cluster updates keep coming. Any other cluster is warm once ACKed. A cluster the proxy
   * already holds under the same name counts as warm even if it changed: Envoy keeps serving the
   * old one until the new one has warmed.
   */
  private warm(
    c: string,
    endpoints: ReadonlyMap<string, Resource>,
    ackedClusters?: { has(name: string): boolean },
    ackedEndpoints?: { has(name: string): boolean },
  ): boolean {
    return endpoints.has(c) ? (ackedEndpoints?.has(c) ?? false) : (ackedClusters?.has(c) ?? false);
  }

  /** Bumped whenever Delta changes an ACKed set in place (SotW replaces the whole map instead). */
  private ackedEpoch = 0;
  /** What allClustersWarm last found, and everything that answer depended on. */
  private warmMemo?: {
    clusterGen: number;
    endpointGen: number;
    ackedClusters: object | undefined;
    ackedEndpoints: object | undefined;
    epoch: number;
    all: boolean;
  };

  /**
   * Whether every cluster of the group's snapshot is warm on the proxy (see warm). Found once and
   * kept until the snapshot's clusters or endpoints (their cache generations) or what the proxy
   * ACKed change: a route-only change (the common edit) then costs nothing here per stream,
   * where looking up every cluster a route configuration names (600 for 1,000 routes) in three
   * maps, per stream and per push, was ~24 % of the CPU of a 1,000-stream SotW fan-out.
   */
  private allClustersWarm(): boolean {
    const group = this.status!.node.group;
    const clusterGen = this.ctx.cache.generation(group, TypeUrl.Cluster);
    const endpointGen = this.ctx.cache.generation(group, TypeUrl.Endpoint);
    const ackedClusters = this.acked.get(TypeUrl.Cluster);
    const ackedEndpoints = this.acked.get(TypeUrl.Endpoint);
    const m = this.warmMemo;
    if (
      m &&
      m.clusterGen === clusterGen &&
      m.endpointGen === endpointGen &&
      m.ackedClusters === ackedClusters &&
      m.ackedEndpoints === ackedEndpoints &&
      m.epoch === this.ackedEpoch
    )
      return m.all;
    const snap = this.ctx.cache.get(group);
    const endpoints = snap.get(TypeUrl.Endpoint);
    let all = true;
    for (const c of snap.get(TypeUrl.Cluster).keys()) {
      if (!this.warm(c, endpoints, ackedClusters, ackedEndpoints)) {
        all = false;
        break;
      }
    }
    this.warmMemo = { clusterGen, endpointGen, ackedClusters, ackedEndpoints, epoch: this.ackedEpoch, all };
    return all;
  }

  /** The clusters these resources name that are not warm on the proxy (see warm). */
  protected coldClusters(resources: Iterable<Resource>): string[] {
    // Only clusters of the snapshot can be cold: when all of them are warm, none of these is.
    if (this.allClustersWarm()) return [];
    const snap = this.ctx.cache.get(this.status!.node.group);
    const clusters = snap.get(TypeUrl.Cluster);
    const endpoints = snap.get(TypeUrl.Endpoint);
    const ackedClusters = this.acked.get(TypeUrl.Cluster);
    const ackedEndpoints = this.acked.get(TypeUrl.Endpoint);
    const cold = new Set<string>();
    for (const r of resources) {
      for (const c of clustersNamedBy(r)) {
        if (!clusters.has(c) || cold.has(c)) continue;
        if (!this.warm(c, endpoints, ackedClusters, ackedEndpoints)) cold.add(c);
      }
    }
    return [...cold].sort();
  }

  /**
   * Whether every cluster these resources name is warm on the proxy now, strictly: a cluster the
   * snapshot no longer has counts only if the proxy ACKed it. For a change held earlier (see
   * SotW and Delta push), which may name clusters a later edit removed.
   */
  protected allWarm(resources: Iterable<Resource>): boolean {
    const endpoints = this.ctx.cache.get(this.status!.node.group).get(TypeUrl.Endpoint);
    const ackedClusters = this.acked.get(TypeUrl.Cluster);
    const ackedEndpoints = this.acked.get(TypeUrl.Endpoint);
    for (const r of resources) {
      for (const c of clustersNamedBy(r)) {
        if (!this.warm(c, endpoints, ackedClusters, ackedEndpoints)) return false;
      }
    }
    return true;
  }

  /**
   * Whether a listener or route change must wait because it names clusters that are not warm on
   * the proxy yet (true: not sent now; it goes when they are, see afterAck). Not for other types,
   * not for the first response of a type (Envoy's own initialization waits for its clusters), and
   * never longer than ctx.warmWaitMs: then held changes are sent regardless (releaseHeld).
   */
  protected mustWaitForClusters(type: TypeUrl, resources: Iterable<Resource>, force: boolean): boolean {
    if (type !== TypeUrl.Listener && type !== TypeUrl.Route) return false;
    const bound = this.ctx.warmWaitMs ?? 0;
    // A stream that never asked for clusters gets them elsewhere: nothing here can tell they are warm.
    if (bound <= 0 || this.releasing || !this.status!.types.get(type)?.sent || !this.subscribes(TypeUrl.Cluster)) return false;
    const cold = this.coldClusters(resources);
    if (cold.length === 0) {
      this.unhold(type, 'warm');
      return false;
    }
    const status = this.status!;
    if (!this.held) {
      const timer = setTimeout(() => this.releaseHeld('timeout'), bound);
      timer.unref?.();
      this.held = { since: Date.now(), types: new Map(), timer };
      status.warmWaits++;
    }
    const before = this.held.types.get(type);
    this.held.types.set(type, { force: force || (before?.force ?? false), cold });
    status.waiting = {
      since: this.held.since,
      types: [...this.held.types.keys()],
      clusters: [...new Set([...this.held.types.values()].flatMap((h) => h.cold))].sort(),
    };
    return true;
  }

  /**
   * A change held earlier went out while a newer one waits on (see SotW and Delta push): the proxy
   * moved forward, so that wait ended warm and the newer change's wait starts now, with its own
   * bound. Without this, steady churn would keep one wait open until the bound and then send cold
   * routes.
   */
  protected progressed(): void {
    const h = this.held;
    if (!h) return;
    const now = Date.now();
    this.ctx.metrics.warmWait.observe({ outcome: 'warm' }, (now - h.since) / 1000);
    clearTimeout(h.timer);
    h.timer = setTimeout(() => this.releaseHeld('timeout'), this.ctx.warmWaitMs ?? 0);
    h.timer.unref?.();
    h.since = now;
    this.status!.warmWaits++;
    if (this.status!.waiting) this.status!.waiting = { ...this.status!.waiting, since: now };
  }

  /** The type has nothing held any more (sent, or nothing left to send). */
  protected unhold(type: TypeUrl, outcome: 'warm' | 'timeout' | 'nack' | 'closed' = 'warm'): void {
    const h = this.held;
    if (!h?.types.delete(type)) return;
    if (h.types.size > 0) {
      this.status!.waiting = { since: h.since, types: [...h.types.keys()], clusters: [...new Set([...h.types.values()].flatMap((x) => x.cold))].sort() };
      return;
    }
    clearTimeout(h.timer);
    this.held = undefined;
    this.status!.waiting = undefined;
    // A push made while releasing ends the wait for the release's reason, not because the clusters warmed.
    this.ctx.metrics.warmWait.observe({ outcome: this.releasing ?? outcome }, (Date.now() - h.since) / 1000);
  }

  /** Sends held changes regardless: the wait's bound passed, the proxy refused the clusters, or the stream closes. */
  private releaseHeld(outcome: 'timeout' | 'nack' | 'closed'): void {
    const h = this.held;
    if (!h) return;
    const status = this.status!;
    if (outcome === 'closed') {
      for (const t of [...h.types.keys()]) this.unhold(t, outcome);
      return;
    }
    const clusters = [...new Set([...h.types.values()].flatMap((x) => x.cold))].sort();
    if (outcome === 'timeout') status.warmWaitTimeouts++;
    this.ctx.logger.warn(
      { proxy: status.node.id, waitedMs: Date.now() - h.since, clusters: clusters.slice(0, 20), count: clusters.length },
      outcome === 'timeout'
        ? 'clusters did not become warm on the proxy in time (no ACK of them or of their endpoints): listener and route changes sent anyway; requests to those clusters may fail until they warm'
        : 'the proxy refused the clusters a held listener or route change names: the change is sent anyway',
    );
    this.releasing = outcome;
    try {
      for (const t of [TypeUrl.Listener, TypeUrl.Route]) {
        const x = h.types.get(t);
        if (x) this.retry(t, x.force);
      }
    } finally {
      this.releasing = undefined;
    }
    for (const t of [...h.types.keys()]) this.unhold(t, outcome);
  }

  /**
   * After an ACK or NACK of `type`: held listener and route changes may go now (their clusters
   * warmed), or must go regardless (the proxy refused clusters or endpoints, so they will not warm).
   */
  protected afterAnswer(type: TypeUrl, nack: boolean): void {
    const h = this.held;
    if (!h || (type !== TypeUrl.Cluster && type !== TypeUrl.Endpoint)) return;
    if (nack) {
      this.releaseHeld('nack');
      return;
    }
    for (const t of [TypeUrl.Listener, TypeUrl.Route]) {
      const x = this.held?.types.get(t);
      if (x) this.retry(t, x.force);
    }
  }

  /**
   * Whether a cluster the proxy's current routes no longer name must still stay (its drain period,
   * counted from the first time this is asked once the routes moved away, has not ended). Arms a
   * timer that pushes clusters again when it ends.
   */
  protected draining(name: string): boolean {
    const ms = this.ctx.clusterDrainMs ?? 0;
    if (ms <= 0) return false;
    const now = Date.now();
    let end = this.leaving.get(name);
    if (end === undefined) {
      end = now + ms;
      this.leaving.set(name, end);
    }
    if (end <= now) return false;
    if (!this.drainTimer || this.drainTimer.at > end) {
      if (this.drainTimer) clearTimeout(this.drainTimer.timer);
      const timer = setTimeout(
        () => {
          this.drainTimer = undefined;
          if (!this.closed) this.retry(TypeUrl.Cluster, false);
        },
        end - now + 1,
      );
      timer.unref?.();
      this.drainTimer = { at: end, timer };
    }
    return true;
  }

  /** Forgets drains of clusters that are gone from the proxy or are in the snapshot again. */
  protected pruneDraining(stillLeaving: (name: string) => boolean): void {
    for (const n of this.leaving.keys()) if (!stillLeaving(n)) this.leaving.delete(n);
    if (this.status) this.status.draining = this.leaving.size;
  }

  close(): void {
    if (this.closed) return;
    this.releaseHeld('closed');
    if (this.drainTimer) clearTimeout(this.drainTimer.timer);
    this.drainTimer = undefined;
    this.closed = true;
    this.instanceCert?.stop();
    this.own = undefined;
    this.overlay = undefined;
    if (this.status) {
      this.ctx.registry.remove(this.status);
      this.ctx.metrics.connectedProxies.dec({ role: this.status.node.role, protocol: this.protocol });
      this.ctx.logger.info({ proxy: this.status.node.id, protocol: this.protocol }, 'proxy disconnected');
    }
  }
}
