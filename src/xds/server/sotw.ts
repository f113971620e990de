// State-of-the-world ADS: each response carries every resource of a type the proxy subscribed to.
import type { Resource } from '../resources/resource.js';
import { PUSH_ORDER, TypeUrl } from '../resources/type-urls.js';
import type { ServerContext } from './context.js';
import type { WireNode } from './node.js';
import { XdsStream } from './stream.js';

export interface SotwRequest {
  version_info?: string;
  node?: WireNode | null;
  resource_names?: string[];
  type_url?: string;
  response_nonce?: string;
  error_detail?: { code?: number; message?: string } | null;
}

export interface SotwResponse {
  version_info: string;
  resources: { type_url: string; value: Uint8Array }[];
  type_url: string;
  nonce: string;
}

interface TypeState {
  wildcard: boolean;
  names: Set<string>;
  nonce?: string;
  version?: string;
  sentAt?: number;
  /** Clusters: the current response keeps clusters the snapshot dropped (make before break). */
  kept?: boolean;
  /** The cache generation of the type `version` was composed from (with the current names). */
  gen?: number;
  /** Clusters and endpoints: the names of the last responses not answered yet, by nonce, oldest first. */
  recent?: Map<string, ReadonlyMap<string, Resource>>;
  /** Listeners or routes: the changes held while waiting for warm clusters, oldest first (see push). */
  waiting?: { out: Map<string, Resource>; list: Resource[]; version: string }[];
  /** A type's first request came with the version the proxy already runs (a reconnect): see push. */
  resume?: string;
}

/** How many unanswered cluster or endpoint responses a stream remembers the names of. */
const RECENT_RESPONSES = 8;
/** How many held listener or route changes a stream keeps to choose from (see push). */
const MAX_HELD_CHANGES = 16;

const WILDCARD_TYPES = new Set<TypeUrl>([TypeUrl.Listener, TypeUrl.Cluster]);

export class SotwStream extends XdsStream {
  private readonly states = new Map<TypeUrl, TypeState>();

  constructor(
    ctx: ServerContext,
    peer: string,
    private readonly send: (r: SotwResponse) => void,
  ) {
    super(ctx, 'sotw', peer);
  }

  onRequest(req: SotwRequest): void {
    this.bind(req.node);
    const type = this.checkType(req.type_url ?? '');
    let st = this.states.get(type);
    // A stale nonce: the proxy answers an older response (or one never sent on this stream). The
    // request is ignored before any state is created, so a later first request is still "first".
    if (req.response_nonce && req.response_nonce !== st?.nonce) {
      // Still, an ACK of an earlier cluster or endpoint response says the proxy applied it: under
      // churn newer responses often go out before the ACK comes back, and routes waiting for
      // warm clusters would otherwise wait for a quiet moment.
      const earlier = !req.error_detail ? st?.recent?.get(req.response_nonce) : undefined;
      if (earlier) {
        this.acked.set(type, earlier);
        for (const n of st!.recent!.keys()) {
          st!.recent!.delete(n);
          if (n === req.response_nonce) break;
        }
        this.afterAnswer(type, false);
      }
      return;
    }
    const first = !st;
    if (!st) {
      st = { wildcard: false, names: new Set(), resume: req.version_info || undefined };
      this.states.set(type, st);
    }

    if (req.response_nonce) {
      if (req.error_detail) this.recordNack(type, st.version ?? '', req.error_detail.message ?? '');
      else {
        this.recordAck(type, req.version_info ?? '', st.sentAt ?? Date.now());
        // The nonce is the last response's: the proxy holds exactly what it carried.
        if (type === TypeUrl.Cluster || type === TypeUrl.Endpoint) this.acked.set(type, this.status!.sent.get(type) ?? new Map());
        st.recent?.clear();
      }
    }
    const names = req.resource_names ?? [];
    const wildcard = names.includes('*') || (names.length === 0 && WILDCARD_TYPES.has(type) && (first || st.wildcard));
    const nameSet = new Set(names.filter((n) => n !== '*'));
    const changed = wildcard !== st.wildcard || nameSet.size !== st.names.size || [...nameSet].some((n) => !st!.names.has(n));
    if (changed) st.gen = undefined;
    st.wildcard = wildcard;
    st.names = nameSet;
    if (first || changed) this.push(type, true);
    // Listeners and routes settled: clusters kept for make-before-break can go now.
    // Only when clusters were kept: recomposing every cluster on every ACK costs ~0.5 ms a proxy.
    if (req.response_nonce && !req.error_detail && (type === TypeUrl.Listener || type === TypeUrl.Route) && this.states.get(TypeUrl.Cluster)?.kept)
      this.push(TypeUrl.Cluster, false);
    // Clusters or endpoints answered: listener and route changes waiting for them may go.
    if (req.response_nonce) this.afterAnswer(type, !!req.error_detail);
  }

  protected subscribes(type: TypeUrl): boolean {
    return this.states.has(type);
  }

  protected retry(type: TypeUrl, force: boolean): void {
    this.push(type, force);
  }

  onChange(types: TypeUrl[]): void {
    for (const t of PUSH_ORDER) if (types.includes(t) && this.states.has(t)) this.push(t, false);
  }

  protected ownSecretsChanged(): void {
    this.push(TypeUrl.Secret, false);
  }

  /** What a response of this type would carry now, and its version. */
  private compose(type: TypeUrl, st: TypeState): { out: Map<string, Resource>; list: Resource[]; version: string; kept: boolean } {
    const snap = this.resources(type);
    const previous = this.status!.sent.get(type);
    const out = new Map<string, Resource>();
    if (st.wildcard) for (const [n, r] of snap) out.set(n, r);
    for (const n of st.names) {
      const r = snap.get(n) ?? (type === TypeUrl.Endpoint ? previous?.get(n) : undefined);
      if (r) out.set(n, r);
    }
    let kept = false;
    if (type === TypeUrl.Cluster && previous) {
      // Make before break: keep clusters that routes Envoy still runs may point at, then for the
      // drain period after those routes moved away, so requests already routed there finish.
      let current: boolean | undefined;
      for (const [n, r] of previous) {
        if (out.has(n)) continue;
        current ??= this.routesCurrent();
        if (!current || this.draining(n)) {
          out.set(n, r);
          kept = true;
        }
      }
      this.pruneDraining((n) => out.has(n) && !snap.has(n));
    }
    const list = [...out.values()].sort((a, b) => (a.name < b.name ? -1 : 1));
    const version = this.versionFor(type, out);
    return { out, list, version, kept };
  }

  /**
   * True when the proxy runs (has ACKed) the listeners and routes of the current snapshot. Only
   * then may clusters go: while newer listeners or routes are still to be sent or ACKed, the ones
   * Envoy runs may point at a cluster the snapshot no longer has.
   */
  private routesCurrent(): boolean {
    if (!this.routesSettled()) return false;
    for (const t of [TypeUrl.Listener, TypeUrl.Route]) {
      const st = this.states.get(t);
      if (st?.version === undefined) continue;
      // Composed from the same resources with the same names: the same version, no need to look.
      if (st.gen !== undefined && st.gen === this.ctx.cache.generation(this.status!.node.group, t)) continue;
      if (this.compose(t, st).version !== st.version) return false;
    }
    return true;
  }

  private push(type: TypeUrl, force: boolean): void {
    const st = this.states.get(type);
    if (!st || this.closed) return;
    // A group not compiled yet gets nothing (not an empty config); its first snapshot is pushed whole.
    if (!this.ctx.cache.has(this.status!.node.group)) return;
    if (this.secretsBlocked(type)) return;
    const { out, list, version, kept } = this.compose(type, st);
    const resume = st.resume;
    st.resume = undefined;
    if (resume !== undefined && resume === version && st.version === undefined) {
      // A proxy that reconnects (to this replica or another: versions are content hashes) already
      // runs exactly this: nothing is sent, and the stream starts as if it had sent and been ACKed it.
      st.version = version;
      st.kept = kept;
      st.gen = this.ctx.cache.generation(this.status!.node.group, type);
      this.status!.sent.set(type, out);
      const t = this.status!.type(type);
      t.sent = { version, nonce: '', at: Date.now(), resources: list.length };
      t.acked = { version, at: Date.now() };
      if (type === TypeUrl.Cluster || type === TypeUrl.Endpoint) this.acked.set(type, out);
      return;
    }
    if (!force && version === st.version) {
      st.waiting = undefined;
      this.unhold(type);
      st.kept = kept;
      st.gen = this.ctx.cache.generation(this.status!.node.group, type);
      return;
    }
    // Routes that name clusters the proxy has not warmed yet wait for them (afterAnswer sends them).
    if (this.mustWaitForClusters(type, list, force)) {
      // Under steady churn the newest change can name new clusters faster than the proxy warms
      // them, and would wait until the bound. The changes held on the way are kept (the last
      // few): the newest of them whose clusters are all warm goes, so the proxy keeps moving
      // forward, and the later ones wait on.
      st.waiting ??= [];
      const held = st.waiting;
      if (held.at(-1)?.version !== version) held.push({ out, list, version });
      if (held.length > MAX_HELD_CHANGES) held.shift();
      for (let i = held.length - 2; i >= 0; i--) {
        const h = held[i]!;
        if (h.version === st.version) break;
        if (this.allWarm(h.list)) {
          held.splice(0, i + 1);
          this.sendComposed(type, st, h.out, h.list, h.version);
          st.gen = undefined; // not the snapshot's: routesCurrent must compose again
          this.progressed();
          break;
        }
      }
      return;
    }
    st.waiting = undefined;
    st.kept = kept;
    st.gen = this.ctx.cache.generation(this.status!.node.group, type);
    this.sendComposed(type, st, out, list, version);
  }

  private sendComposed(type: TypeUrl, st: TypeState, out: Map<string, Resource>, list: Resource[], version: string): void {
    const build = (nonce: string): SotwResponse => ({
      version_info: version,
      resources: list.map((r) => ({ type_url: type, value: r.bytes })),
      type_url: type,
      nonce,
    });
    // The version names the content (a hash of every name and resource version): the streams that
    // get this version share one response. A stream's own secret is never in a shared one.
    const response = type === TypeUrl.Secret ? build(this.nextNonce()) : this.shared.get(`sotw\n${type}\n${version}`, list, build);
    if (type === TypeUrl.Cluster || type === TypeUrl.Endpoint) {
      // The names each unanswered response carried, in order (the last few): see onRequest.
      st.recent ??= new Map();
      st.recent.set(response.nonce, out); // composed for this response, never changed after
      if (st.recent.size > RECENT_RESPONSES) st.recent.delete(st.recent.keys().next().value!);
    }
    st.nonce = response.nonce;
    st.version = version;
    st.sentAt = Date.now();
    this.recordSent(type, version, response.nonce, out, list.length);
    this.send(response);
  }
}
