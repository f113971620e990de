// IR -> Envoy resources for one proxy group. Endpoints are built separately (per cluster) so that
// a discovery change re-encodes only the ClusterLoadAssignments it touches.
import type { Instance, IRCluster, IRProxyConfig, IRRoute } from '../../ir/types.js';
import type { EncodeCache, Resource } from '../resources/resource.js';
import { TypeUrl } from '../resources/type-urls.js';
import { clusterResource, endpointResource } from './cluster.js';
import { listenerResource } from './listener.js';
import { routeConfig } from './route.js';
import { redactSecret, secretResource } from './secret.js';

export type ResourceMap = Map<TypeUrl, Map<string, Resource>>;

/** RouteConfiguration.virtual_hosts (field 2): encoded one virtual host at a time (EncodeCache.makeSplit). */
const VIRTUAL_HOSTS = { key: 'virtual_hosts', field: 2, message: 'envoy.config.route.v3.VirtualHost' };

export function emptyResourceMap(): ResourceMap {
  return new Map([TypeUrl.Cluster, TypeUrl.Endpoint, TypeUrl.Listener, TypeUrl.Route, TypeUrl.Secret].map((t) => [t, new Map()]));
}

/** The policy files of a virtual host's routes, once per frozen array of routes (reused while unchanged). */
const routeFiles = new WeakMap<readonly IRRoute[], readonly string[]>();

function filesOf(routes: readonly IRRoute[]): readonly string[] {
  let files = routeFiles.get(routes);
  if (!files) {
    files = [...new Set(routes.map((r) => r.source.file))];
    if (Object.isFrozen(routes)) routeFiles.set(routes, files);
  }
  return files;
}

/** Listeners, routes, clusters and secrets of a group (everything but endpoints). */
export function configResources(ir: IRProxyConfig, enc: EncodeCache): ResourceMap {
  const out = emptyResourceMap();
  const put = (r: Resource) => out.get(r.type)!.set(r.name, r);
  for (const l of ir.listeners) {
    put(enc.make(TypeUrl.Listener, l.name, listenerResource(l), { sources: [l.source.file] }));
    const files = [...new Set(l.routeConfig.virtualHosts.flatMap((v) => filesOf(v.routes)))].sort();
    const rc = routeConfig(l);
    put(enc.makeSplit(TypeUrl.Route, l.routeConfig.name, rc.json, VIRTUAL_HOSTS, { sources: files, partTexts: rc.vhostTexts, partKeys: rc.vhostKeys }));
  }
  // clusterResource reads nothing but the IR cluster: a frozen one (serviceCluster's, reused while
  // its Service document is unchanged) is the key itself; another's key is its JSON text (source included).
  for (const c of ir.clusters) {
    const make = () => enc.make(TypeUrl.Cluster, c.name, clusterResource(c), { sources: [c.source.file] });
    put(Object.isFrozen(c) ? enc.reuseFor(c, make) : enc.reuse(`${TypeUrl.Cluster}\n${JSON.stringify(c)}`, make));
  }
  for (const s of ir.secrets) {
    const json = secretResource(s);
    put(enc.make(TypeUrl.Secret, s.name, json, { printable: redactSecret(json), sources: [s.source.file] }));
  }
  return out;
}

/**
 * ClusterLoadAssignments by the instance list they were made from. The endpoint store keeps a
 * service's list (the same array) while its instances do not change, so a reload that leaves a
 * service's endpoints alone reuses its ClusterLoadAssignments instead of building, hashing and
 * looking them up again (600 of them at 1,000 routes, 2,000 at 10,000).
 */
const assignments = new WeakMap<readonly Instance[], Map<string, Resource>>();

/** The last ClusterLoadAssignment of each frozen IR cluster, with the instance list it was made from. */
const lastAssignment = new WeakMap<IRCluster, { instances: readonly Instance[]; resource: Resource }>();

export function endpointsResource(c: IRCluster, instances: readonly Instance[], enc: EncodeCache): Resource {
  // A frozen cluster cannot change: with the same instance list, the resource is the one made last time.
  const last = lastAssignment.get(c);
  if (last?.instances === instances) return last.resource;
  const r = assignment(c, instances, enc);
  if (Object.isFrozen(c)) lastAssignment.set(c, { instances, resource: r });
  return r;
}

function assignment(c: IRCluster, instances: readonly Instance[], enc: EncodeCache): Resource {
  // Everything of the cluster that endpointResource reads, and the resource's source.
  const key = `${c.name}\u0000${c.subset ? JSON.stringify(c.subset.labels) : ''}\u0000${c.upstreamIdentity !== undefined}\u0000${c.source.file}`;
  let byCluster = assignments.get(instances);
  const hit = byCluster?.get(key);
  if (hit) return hit;
  const r = enc.make(TypeUrl.Endpoint, c.name, endpointResource(c, instances), { sources: [c.source.file] });
  if (!byCluster) {
    byCluster = new Map();
    assignments.set(instances, byCluster);
  }
  byCluster.set(key, r);
  return r;
}
