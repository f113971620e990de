// Incremental (Delta) ADS: only resources whose version the proxy lacks are sent, and removals are
// named explicitly.
import { versionOf, type Resource } from '../resources/resource.js';
import { PUSH_ORDER, TypeUrl } from '../resources/type-urls.js';
import type { ServerContext } from './context.js';
import type { WireNode } from './node.js';
import { XdsStream } from './stream.js';

export interface DeltaRequest {
  node?: WireNode | null;
  type_url?: string;
  resource_names_subscribe?: string[];
  resource_names_unsubscribe?: string[];
  initial_resource_versions?: Record<string, string>;
  response_nonce?: string;
  error_detail?: { code?: number; message?: string } | null;
}

export interface DeltaResponse {
  system_version_info: string;
  resources: { name: string; version: string; resource: { type_url: string; value: Uint8Array } }[];
  type_url: string;
  removed_resources: string[];
  nonce: string;
}

interface TypeState {
  wildcard: boolean;
  subscribed: Set<string>;
  /** What the proxy holds (or was last sent): name -> version. */
  known: Map<string, string>;
  /** Names the proxy was told do not exist. */
  toldMissing: Set<string>;
  /** Responses not answered yet, by nonce: the version, when, and the names sent and removed. */
  pending: Map<string, { version: string; sentAt: number; names: string[]; removed: string[] }>;
  /** Clusters: names whose removal is held back until the proxy runs the current listeners and routes. */
  withheld: Set<string>;
  /**
   * The resources the proxy holds (the last sent of each known name), kept up to date in place: it
   * is the stream's `sent` map of the type once something was sent.
   */
  current: Map<string, Resource>;
  /** Names whose entry in `current` is not the snapshot's object (or the snapshot lacks it). */
  stale: Set<string>;
  /**
   * The cache generation of the type this state was last reconciled with (see push): only names
   * changed since then, and withheld ones, can need anything. Undefined: diff the whole type.
   */
  gen?: number;
  /** Listeners or routes: the changes held while waiting for warm clusters, oldest first (see push). */
  waiting?: { resources: Resource[]; removed: string[] }[];
}

/** What a proxy lacks of a type, from the names looked at. */
interface Diff {
  /** The names looked at, each with the resource the proxy should hold (undefined: none). */
  looked: Map<string, Resource | undefined>;
  changedResources: Resource[];
  removed: string[];
  withheld: Set<string>;
  /** Whether every name of the type was looked at (the reference path). */
  full: boolean;
}

const WILDCARD_TYPES = new Set<TypeUrl>([TypeUrl.Listener, TypeUrl.Cluster]);

export class DeltaStream extends XdsStream {
  private readonly states = new Map<TypeUrl, TypeState>();
  /**
   * Look only at the names changed since the last push (the default). False: diff every resource
   * of the type on every push, the reference the incremental path must agree with (tests).
   */
  incremental = true;

  constructor(
    ctx: ServerContext,
    peer: string,
    private readonly send: (r: DeltaResponse) => void,
  ) {
    super(ctx, 'delta', peer);
  }

  onRequest(req: DeltaRequest): void {
    this.bind(req.node);
    const type = this.checkType(req.type_url ?? '');
    let st = this.states.get(type);
    const first = !st;
    if (!st) {
      st = {
        wildcard: false,
        subscribed: new Set(),
        known: new Map(),
        toldMissing: new Set(),
        pending: new Map(),
        withheld: new Set(),
        current: new Map(),
        stale: new Set(),
      };
      this.states.set(type, st);
      // A proxy that reconnects holds (and runs, warm) what it names here.
      const acked = this.ackedNames(type);
      for (const [n, v] of Object.entries(req.initial_resource_versions ?? {})) {
        st.known.set(n, v);
        acked?.add(n);
      }
    }
    let answered: 'ack' | 'nack' | undefined;
    if (req.response_nonce) {
      const p = st.pending.get(req.response_nonce);
      if (p) {
        st.pending.delete(req.response_nonce);
        if (req.error_detail) {
          this.recordNack(type, p.version, req.error_detail.message ?? '');
          answered = 'nack';
        } else {
          this.recordAck(type, p.version, p.sentAt);
          const acked = this.ackedNames(type);
          if (acked) {
            for (const n of p.names) acked.add(n);
            for (const n of p.removed) acked.delete(n);
          }
          answered = 'ack';
        }
      }
    }
    const sub = req.resource_names_subscribe ?? [];
    const unsub = req.resource_names_unsubscribe ?? [];
    // The subscription moves: the next push looks at every name again.
    if (sub.length > 0 || unsub.length > 0) st.gen = undefined;
    let changed = false;
    for (const n of sub) {
      if (n === '*') {
        if (!st.wildcard) changed = true;
        st.wildcard = true;
      } else if (!st.subscribed.has(n)) {
        st.subscribed.add(n);
        changed = true;
      }
    }
    for (const n of unsub) {
      if (n === '*') st.wildcard = false;
      else {
        st.subscribed.delete(n);
        st.toldMissing.delete(n);
      }
      st.known.delete(n);
    }
    if (first && sub.length === 0 && WILDCARD_TYPES.has(type)) st.wildcard = true;
    // A type's first request is answered even when there is nothing to send (Envoy's start waits
    // for it), except from a proxy that reconnects holding resources of that type: it is running,
    // and an empty answer would only make it apply its unchanged configuration again (a proxy
    // failing over to another replica with current versions gets nothing).
    const resumed = first && Object.keys(req.initial_resource_versions ?? {}).length > 0;
    if (first || changed) this.push(type, first && !resumed);
    // Only when removals were held back (the withheld names are all a cluster push then looks at).
    if (
      req.response_nonce &&
      !req.error_detail &&
      (type === TypeUrl.Listener || type === TypeUrl.Route) &&
      (this.states.get(TypeUrl.Cluster)?.withheld.size ?? 0) > 0
    )
      this.push(TypeUrl.Cluster, false);
    // Clusters or endpoints answered: listener and route changes waiting for them may go.
    if (answered) this.afterAnswer(type, answered === 'nack');
  }

  protected subscribes(type: TypeUrl): boolean {
    return this.states.has(type);
  }

  protected retry(type: TypeUrl, force: boolean): void {
    this.push(type, force);
  }

  protected ownSecretsChanged(): void {
    const st = this.states.get(TypeUrl.Secret);
    if (!st) return;
    st.gen = undefined; // the cache's change log does not know this stream's own secret: look at every name
    this.push(TypeUrl.Secret, false);
  }

  onChange(types: TypeUrl[]): void {
    for (const t of PUSH_ORDER) if (types.includes(t) && this.states.has(t)) this.push(t, false);
  }

  /**
   * True when the proxy runs (has ACKed) the listeners and routes of the current snapshot: nothing
   * of theirs is unsent, unanswered or rejected. Only then may clusters be removed.
   */
  private routesCurrent(): boolean {
    if (!this.routesSettled()) return false;
    for (const t of [TypeUrl.Listener, TypeUrl.Route]) {
      const st = this.states.get(t);
      if (!st) continue;
      if (st.pending.size > 0) return false;
      const { changedResources, removed } = this.diff(t, st);
      if (changedResources.length > 0 || removed.length > 0) return false;
    }
    return true;
  }

  /**
   * The names a diff must look at: those changed in the snapshot since the state was last
   * reconciled, and the withheld ones (their fate depends on the routes, not on the snapshot).
   * Undefined when that is not known (a new or moved subscription, a stream far behind): all names.
   */
  private candidates(type: TypeUrl, st: TypeState): Iterable<string> | undefined {
    if (!this.incremental || st.gen === undefined) return undefined;
    const changed = this.ctx.cache.changedSince(this.status!.node.group, type, st.gen);
    if (!changed) return undefined;
    if (st.withheld.size === 0) return changed;
    if (changed.size === 0) return st.withheld;
    return new Set([...changed, ...st.withheld]);
  }

  /** What the proxy lacks of a type: resources to send and names to remove. */
  private diff(type: TypeUrl, st: TypeState): Diff {
    const snap = this.resources(type);
    let names = this.candidates(type, st);
    const full = names === undefined;
    if (names === undefined) {
      const all = new Set<string>(st.subscribed);
      if (st.wildcard) for (const n of snap.keys()) all.add(n);
      for (const n of st.known.keys()) all.add(n);
      names = all;
    }
    const looked = new Map<string, Resource | undefined>();
    const changedResources: Resource[] = [];
    const gone: string[] = [];
    for (const n of names) {
      let r = snap.get(n);
      if (r) {
        if (!st.wildcard && !st.subscribed.has(n)) r = undefined;
      } else if (type === TypeUrl.Endpoint && st.subscribed.has(n) && st.known.has(n)) {
        // Endpoints of a cluster gone from the snapshot stay while the proxy still subscribes to
        // them: the cluster may be kept (make before break) until the routes moved away from it.
        r = st.current.get(n);
      }
      looked.set(n, r);
      if (r) {
        if (st.known.get(n) !== r.version) changedResources.push(r);
      } else if (st.known.has(n) || (st.subscribed.has(n) && !st.toldMissing.has(n))) gone.push(n);
    }
    changedResources.sort((a, b) => (a.name < b.name ? -1 : 1));
    const removed: string[] = [];
    const withheld = new Set<string>();
    if (gone.length > 0) {
      // Make before break, then a drain period once the routes moved away (see stream.draining).
      const keepForRoutes = type === TypeUrl.Cluster && !this.routesCurrent();
      for (const n of gone) {
        // A name the proxy only claimed on reconnecting (never sent on this stream) goes at once, as before.
        if (type === TypeUrl.Cluster && st.known.has(n) && (keepForRoutes || (st.current.has(n) && this.draining(n)))) withheld.add(n);
        else removed.push(n);
      }
    }
    return { looked, changedResources, removed, withheld, full };
  }

  private push(type: TypeUrl, force: boolean): void {
    const st = this.states.get(type);
    if (!st || this.closed) return;
    const group = this.status!.node.group;
    // A group not compiled yet gets nothing (not an empty config); its first snapshot is pushed whole.
    if (!this.ctx.cache.has(group)) return;
    if (this.secretsBlocked(type)) return;
    const d = this.diff(type, st);
    const { changedResources, removed } = d;
    const send = force || changedResources.length > 0 || removed.length > 0;
    if (!send) this.unhold(type);
    // Routes that name clusters the proxy has not warmed yet wait for them (afterAnswer sends
    // them). Nothing is recorded: the next push diffs from the same state again.
    else if (!force && changedResources.length > 0 && this.mustWaitForClusters(type, changedResources, force)) {
      // Under steady churn the newest change can name new clusters faster than the proxy warms
      // them, and would wait until the bound. The changes held on the way are kept (the last
      // few): the newest of them whose clusters are all warm goes, so the proxy keeps moving
      // forward, and the later ones wait on.
      st.waiting ??= [];
      const held = st.waiting;
      const last = held.at(-1);
      if (!last || !sameChange(last, changedResources, removed)) held.push({ resources: changedResources, removed });
      if (held.length > MAX_HELD_CHANGES) held.shift();
      for (let i = held.length - 2; i >= 0; i--) {
        const h = held[i]!;
        if (this.allWarm(h.resources)) {
          held.splice(0, i + 1);
          this.sendEarlier(type, st, h);
          this.progressed();
          break;
        }
      }
      return;
    } else this.unhold(type);
    st.waiting = undefined;
    removed.sort();
    for (const r of changedResources) st.known.set(r.name, r.version);
    for (const n of removed) {
      st.known.delete(n);
      if (st.subscribed.has(n)) st.toldMissing.add(n);
    }
    for (const r of changedResources) st.toldMissing.delete(r.name);
    this.reconcile(type, st, d);
    if (type === TypeUrl.Cluster) this.pruneDraining((n) => st.known.has(n) && !this.resources(type).has(n));
    if (!send) return;
    this.sendDelta(type, st, changedResources, removed);
  }

  private sendDelta(type: TypeUrl, st: TypeState, changedResources: Resource[], removed: string[]): void {
    const version = this.versionOfCurrent(type, st);
    const build = (nonce: string): DeltaResponse => ({
      system_version_info: version,
      resources: changedResources.map((r) => ({ name: r.name, version: r.version, resource: { type_url: type, value: r.bytes } })),
      type_url: type,
      removed_resources: removed,
      nonce,
    });
    // Streams that hold the same and lack the same share one response (the usual push after an
    // edit); the key names everything the response carries. A stream's own secret is never shared.
    const response =
      type === TypeUrl.Secret ? build(this.nextNonce()) : this.shared.get(deltaKey(type, version, changedResources, removed), changedResources, build);
    st.pending.set(response.nonce, { version, sentAt: Date.now(), names: changedResources.map((r) => r.name), removed });
    this.recordSent(type, version, response.nonce, st.current, changedResources.length);
    this.send(response);
  }

  /**
   * Sends a change held earlier, not the snapshot's: what of it the proxy does not hold yet. The
   * state then differs from the snapshot for those names, so the next push diffs every name.
   */
  private sendEarlier(type: TypeUrl, st: TypeState, earlier: { resources: Resource[]; removed: string[] }): void {
    const resources = earlier.resources.filter((r) => st.known.get(r.name) !== r.version);
    const removed = earlier.removed.filter((n) => st.known.has(n)).sort();
    if (resources.length === 0 && removed.length === 0) return;
    for (const r of resources) {
      st.known.set(r.name, r.version);
      st.toldMissing.delete(r.name);
      st.current.set(r.name, r);
      st.stale.add(r.name);
    }
    for (const n of removed) {
      st.known.delete(n);
      st.current.delete(n);
      st.stale.delete(n);
      if (st.subscribed.has(n)) st.toldMissing.add(n);
    }
    st.gen = undefined;
    this.sendDelta(type, st, resources, removed);
  }

  /**
   * After a push (sent or not) the state agrees with the current snapshot for every name the diff
   * looked at: `current` holds the snapshot's object of each name in scope the proxy holds, a
   * withheld name keeps what was sent, anything else is gone. Names not looked at did not change
   * in the snapshot since the last reconciliation, so they already agree. The generation recorded
   * lets the next push look only at names changed after it.
   */
  private reconcile(type: TypeUrl, st: TypeState, d: Diff): void {
    const group = this.status!.node.group;
    const snap = this.resources(type);
    if (d.full) {
      st.stale.clear();
      for (const n of st.current.keys()) if (!d.looked.has(n)) st.current.delete(n);
    }
    for (const [n, r] of d.looked) {
      if (r && st.known.has(n)) st.current.set(n, r);
      else if (!st.known.has(n)) st.current.delete(n);
      const c = st.current.get(n);
      if (c !== undefined && c !== snap.get(n)) st.stale.add(n);
      else st.stale.delete(n);
    }
    st.withheld = d.withheld;
    st.gen = this.ctx.cache.generation(group, type);
  }

  /**
   * system_version_info: the hash of what the proxy holds. When that is exactly the snapshot's
   * resources of the type (the common case) the snapshot's precomputed version is the same hash.
   */
  private versionOfCurrent(type: TypeUrl, st: TypeState): string {
    const snap = this.ctx.cache.get(this.status!.node.group);
    const all = this.resources(type);
    if (all === snap.get(type) && st.stale.size === 0 && st.current.size === all.size) return snap.versions.get(type)!;
    return versionOf(st.current.values());
  }
}

/** How many held listener or route changes a stream keeps to choose from (see push). */
const MAX_HELD_CHANGES = 16;

/** Whether a held change carries exactly these resources (the same objects) and removals. */
function sameChange(h: { resources: Resource[]; removed: string[] }, resources: Resource[], removed: string[]): boolean {
  return (
    h.resources.length === resources.length &&
    h.removed.length === removed.length &&
    h.resources.every((r, i) => r === resources[i]) &&
    h.removed.every((n, i) => n === removed[i])
  );
}

/** What a Delta response carries, but its nonce. */
function deltaKey(type: TypeUrl, version: string, sent: readonly Resource[], removed: readonly string[]): string {
  let key = `delta\n${type}\n${version}\n`;
  for (const r of sent) key += `${r.name}\u0000${r.version}\n`;
  key += '-';
  for (const n of removed) key += `\n${n}`;
  return key;
}
