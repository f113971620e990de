// Per-group snapshots of resources, versioned by content hash. The cache stores; it does not
// compile. Subscribers (the xDS server) hear which types of which group changed, and can ask which
// resource names changed since a generation they saw (so a Delta push looks only at those).
import { EventEmitter } from 'node:events';
import type { Resource } from '../resources/resource.js';
import { versionOf } from '../resources/resource.js';
import { PUSH_ORDER, TypeUrl } from '../resources/type-urls.js';

/**
 * Version of each resource map already hashed. Snapshots built one after another share the maps of
 * the types that did not change (an endpoint change keeps the listeners, routes and clusters), so
 * those are not hashed again. Maps must not be mutated once in a snapshot.
 */
const mapVersions = new WeakMap<ReadonlyMap<string, Resource>, string>();

function mapVersion(m: ReadonlyMap<string, Resource>): string {
  let v = mapVersions.get(m);
  if (v === undefined) {
    v = versionOf(m.values());
    mapVersions.set(m, v);
  }
  return v;
}

export class Snapshot {
  private typeVersions?: Map<TypeUrl, string>;
  constructor(readonly resources: ReadonlyMap<TypeUrl, ReadonlyMap<string, Resource>>) {}
  /**
   * Each type's version, hashed on first use: a snapshot made only to be checked for consistency
   * (compileGroups) is never hashed, and one stored is hashed once.
   */
  get versions(): ReadonlyMap<TypeUrl, string> {
    if (!this.typeVersions) {
      this.typeVersions = new Map();
      for (const t of PUSH_ORDER) this.typeVersions.set(t, mapVersion(this.resources.get(t) ?? EMPTY));
    }
    return this.typeVersions;
  }
  get(type: TypeUrl): ReadonlyMap<string, Resource> {
    return this.resources.get(type) ?? EMPTY;
  }
  /** A one-line summary of the whole snapshot's version (hash of the per-type versions). */
  get version(): string {
    return PUSH_ORDER.map((t) => this.versions.get(t)!.slice(0, 6)).join('.');
  }
}

const EMPTY: ReadonlyMap<string, Resource> = new Map();
const NO_NAMES: ReadonlySet<string> = new Set();
export const EMPTY_SNAPSHOT = new Snapshot(new Map());

export interface SnapshotChange {
  group: string;
  types: TypeUrl[];
}

/**
 * Checks that a snapshot is self-consistent: every route config a listener names, every cluster a
 * route sends to, and every endpoint set an EDS cluster needs is present. A snapshot that fails
 * is never stored.
 */
export function checkConsistency(
  s: Snapshot,
  refs: { routeConfigs: Iterable<string>; clustersUsed: Iterable<string>; edsClusters: Iterable<string>; secretsUsed: Iterable<string> },
): string[] {
  const problems: string[] = [];
  for (const r of refs.routeConfigs) if (!s.get(TypeUrl.Route).has(r)) problems.push(`route configuration "${r}" is missing`);
  for (const c of refs.clustersUsed) if (!s.get(TypeUrl.Cluster).has(c)) problems.push(`cluster "${c}" is referenced but missing`);
  for (const c of refs.edsClusters) if (!s.get(TypeUrl.Endpoint).has(c)) problems.push(`endpoints of cluster "${c}" are missing`);
  for (const n of refs.secretsUsed) if (!s.get(TypeUrl.Secret).has(n)) problems.push(`secret "${n}" is missing`);
  return problems;
}

/** Generations of one type kept per group: a stream further behind gets a full diff instead. */
const LOG_LENGTH = 8;

/**
 * Names of a type whose resource differs between two maps: added, removed, or another Resource
 * object (identity, not version: a stream then also picks up the new object's sources).
 */
export function changedNames(prev: ReadonlyMap<string, Resource>, next: ReadonlyMap<string, Resource>): Set<string> {
  const out = new Set<string>();
  if (prev === next) return out;
  for (const [n, r] of next) if (prev.get(n) !== r) out.add(n);
  for (const n of prev.keys()) if (!next.has(n)) out.add(n);
  return out;
}

/**
 * One type of one group: its current generation and, for the last few, the names each changed.
 * A generation moves only when some resource of the type changed; generation numbers are unique
 * in the process (a group deleted and built again never reuses one).
 */
interface TypeLog {
  gen: number;
  /** The generation before entries[0]. */
  floor: number;
  entries: { gen: number; changed: ReadonlySet<string> }[];
}

let lastGeneration = 0;

export class SnapshotCache extends EventEmitter<{ change: [SnapshotChange]; demand: [string]; idle: [string] }> {
  private readonly groups = new Map<string, Snapshot>();
  private readonly logs = new Map<string, Map<TypeUrl, TypeLog>>();
  private admission?: (group: string) => string | undefined;

  get(group: string): Snapshot {
    return this.groups.get(group) ?? EMPTY_SNAPSHOT;
  }

  has(group: string): boolean {
    return this.groups.has(group);
  }

  groupNames(): string[] {
    return [...this.groups.keys()].sort();
  }

  /**
   * A proxy of `group` connected: whoever compiles may build that group if it can. Emitted for
   * every stream, not only for a group not built yet: a group waiting to be dropped is in use again.
   */
  request(group: string): void {
    this.emit('demand', group);
  }

  /** The last stream of `group` left (the xDS server tells): whoever compiles may drop it later. */
  release(group: string): void {
    this.emit('idle', group);
  }

  /** Whoever compiles says which groups it will not build now (a limit), and why. */
  setAdmission(check: (group: string) => string | undefined): void {
    this.admission = check;
  }

  /** Why a proxy of `group` is not served (asked after `request`), or undefined when it is. */
  refusal(group: string): string | undefined {
    return this.admission?.(group);
  }

  /**
   * The generation of a type's resources in a group's current snapshot: it changes exactly when a
   * resource of the type was added, removed or replaced. 0 for a group not stored.
   */
  generation(group: string, type: TypeUrl): number {
    return this.logs.get(group)?.get(type)?.gen ?? 0;
  }

  /**
   * Names of a type that changed in a group since generation `gen` (added, removed or replaced),
   * or undefined when `gen` is not one of the last few generations (the caller diffs everything).
   */
  changedSince(group: string, type: TypeUrl, gen: number): ReadonlySet<string> | undefined {
    const log = this.logs.get(group)?.get(type);
    if (!log || gen <= 0) return undefined;
    if (gen === log.gen) return NO_NAMES;
    const { entries } = log;
    let from = -1;
    if (gen === log.floor) from = 0;
    else {
      for (let i = entries.length - 1; i >= 0 && from < 0; i--) if (entries[i]!.gen === gen) from = i + 1;
    }
    if (from < 0 || from >= entries.length) return undefined;
    if (from === entries.length - 1) return entries[from]!.changed;
    const out = new Set<string>();
    for (let i = from; i < entries.length; i++) for (const n of entries[i]!.changed) out.add(n);
    return out;
  }

  /** Stores a group's snapshot; emits a change naming the types whose version moved (all, for a new group). */
  set(group: string, next: Snapshot): TypeUrl[] {
    const prev = this.groups.get(group);
    this.groups.set(group, next);
    let logs = this.logs.get(group);
    if (!prev || !logs) {
      logs = new Map();
      for (const t of PUSH_ORDER) {
        const gen = ++lastGeneration;
        logs.set(t, { gen, floor: gen, entries: [] });
      }
      this.logs.set(group, logs);
    } else {
      for (const t of PUSH_ORDER) {
        const changed = changedNames(prev.get(t), next.get(t));
        if (changed.size === 0) continue;
        const log = logs.get(t)!;
        log.gen = ++lastGeneration;
        log.entries.push({ gen: log.gen, changed });
        if (log.entries.length > LOG_LENGTH) log.floor = log.entries.shift()!.gen;
      }
    }
    const types = prev ? PUSH_ORDER.filter((t) => prev.versions.get(t) !== next.versions.get(t)) : [...PUSH_ORDER];
    if (types.length > 0) this.emit('change', { group, types });
    return types;
  }

  delete(group: string): void {
    if (!this.groups.delete(group)) return;
    this.logs.delete(group);
    this.emit('change', { group, types: [...PUSH_ORDER] });
  }
}
