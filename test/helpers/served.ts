// What a snapshot cache serves, in full and in a stable order: every group's version and, per type,
// each resource's name, version, bytes and sources. Tests that compare an incremental reload with a
// cold compile of the same files compare these values.
import type { SnapshotCache } from '../../src/xds/cache/snapshot-cache.js';
import { PUSH_ORDER } from '../../src/xds/resources/type-urls.js';

export function served(cache: SnapshotCache): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  for (const group of [...cache.groupNames()].sort()) {
    const snap = cache.get(group);
    const types: Record<string, unknown> = { version: snap.version };
    for (const t of PUSH_ORDER) {
      types[t] = [...snap.get(t).values()]
        .sort((a, b) => (a.name < b.name ? -1 : 1))
        .map((r) => ({ name: r.name, version: r.version, bytes: Buffer.from(r.bytes).toString('base64'), sources: r.sources }));
    }
    out[group] = types;
  }
  return out;
}
