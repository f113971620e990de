// Which clusters a listener or route configuration sends traffic to, and the per-proxy bookkeeping
// that lets a route change wait until those clusters are warm on that proxy (issue 21).
//
// Envoy answers 503 to a request whose route names a cluster it does not have, or has but is still
// warming: a new EDS cluster only subscribes to its endpoints after the cluster arrives, and stays
// warming until they do. Sending clusters before routes is therefore not enough; a route change
// that names a new cluster waits until the proxy has ACKed the cluster and (for EDS clusters) its
// ClusterLoadAssignment. Envoy's ACK of the endpoints comes after it applied them, and applying
// them is what ends the cluster's warming, so both ACKs mean the cluster is usable.
import type { Resource } from '../resources/resource.js';

const named = new WeakMap<Resource, readonly string[]>();

/**
 * The cluster names a resource refers to: route actions (`cluster`, `weighted_clusters`), request
 * mirrors, TCP proxies, and any other `cluster` field (an HTTP URI's, for example). Names the
 * snapshot does not hold (clusters of the bootstrap) are the caller's to ignore. Memoized per
 * resource object (resources are immutable once made).
 */
export function clustersNamedBy(r: Resource): readonly string[] {
  let out = named.get(r);
  if (out) return out;
  const found = new Set<string>();
  const walk = (v: unknown, key: string | undefined, parentKey: string | undefined): void => {
    if (Array.isArray(v)) {
      for (const x of v) walk(x, key, parentKey);
      return;
    }
    if (v === null || typeof v !== 'object') {
      if (typeof v === 'string' && key === 'cluster') found.add(v);
      return;
    }
    const o = v as Record<string, unknown>;
    // weighted_clusters: { clusters: [ { name, weight } ] }
    if (key === 'clusters' && parentKey === 'weighted_clusters' && typeof o.name === 'string') found.add(o.name);
    for (const [k, x] of Object.entries(o)) walk(x, k, key);
  };
  walk(r.printable, undefined, undefined);
  out = [...found].sort();
  named.set(r, out);
  return out;
}
