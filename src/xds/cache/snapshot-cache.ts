// Per-group snapshots of resources, versioned by content hash. The cache stores; it does not
// compile. Subscribers (the xDS server) hear which types of which group changed.
import { EventEmitter } from 'node:events';
import type { Resource } from '../resources/resource.js';
import { versionOf } from '../resources/resource.js';
import { PUSH_ORDER, TypeUrl } from '../resources/type-urls.js';

export class Snapshot {
  readonly versions = new Map<TypeUrl, string>();
  constructor(readonly resources: ReadonlyMap<TypeUrl, ReadonlyMap<string, Resource>>) {
    for (const t of PUSH_ORDER) this.versions.set(t, versionOf(resources.get(t)?.values() ?? []));
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

export class SnapshotCache extends EventEmitter<{ change: [SnapshotChange]; demand: [string] }> {
  private readonly groups = new Map<string, Snapshot>();

  get(group: string): Snapshot {
    return this.groups.get(group) ?? EMPTY_SNAPSHOT;
  }

  has(group: string): boolean {
    return this.groups.has(group);
  }

  groupNames(): string[] {
    return [...this.groups.keys()].sort();
  }

  /** A proxy of `group` connected: whoever compiles may build that group if it can. */
  request(group: string): void {
    if (!this.groups.has(group)) this.emit('demand', group);
  }

  /** Stores a group's snapshot; emits a change naming the types whose version moved (all, for a new group). */
  set(group: string, next: Snapshot): TypeUrl[] {
    const prev = this.groups.get(group);
    this.groups.set(group, next);
    const types = prev ? PUSH_ORDER.filter((t) => prev.versions.get(t) !== next.versions.get(t)) : [...PUSH_ORDER];
    if (types.length > 0) this.emit('change', { group, types });
    return types;
  }

  delete(group: string): void {
    if (!this.groups.delete(group)) return;
    this.emit('change', { group, types: [...PUSH_ORDER] });
  }
}
