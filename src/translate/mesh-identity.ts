// SPIFFE identities and the cluster settings shared by every proxy that calls mesh services.
import { spiffeId } from '../ca/identities.js';
import type { IRCluster } from '../ir/types.js';
import type { Model, ServiceModel } from '../model/model.js';
import { deepFreeze } from '../ir/freeze.js';

export const DEFAULT_CONNECT_TIMEOUT_MS = 5_000;

export function meshTlsOn(model: Model): boolean {
  return model.mesh.mtls.mode !== 'disabled';
}

export function serviceIdentity(model: Model, service: string): string {
  return spiffeId(model.mesh.trustDomain, 'service', service);
}

export function gatewayIdentity(model: Model, gateway: string): string {
  return spiffeId(model.mesh.trustDomain, 'gateway', gateway);
}

/**
 * The clusters built for each ServiceModel, by cluster name and the Mesh settings they read. A
 * ServiceModel is the same object from one reload to the next while its Service document is
 * unchanged (model.ts), and frozen, so a reload reuses its clusters (deep-frozen) instead of
 * building them again, and the translator recognises them by identity (EncodeCache.reuseFor).
 */
const builtClusters = new WeakMap<ServiceModel, { mesh: string; byName: Map<string, IRCluster> }>();
/** Everything of the Mesh that buildCluster reads, as text, once per MeshModel. */
const meshKeys = new WeakMap<object, string>();

/** The cluster for a service (or one of its subsets) as seen by a calling proxy; deep-frozen, never to be changed. */
export function serviceCluster(model: Model, name: string): IRCluster {
  const slash = name.indexOf('/');
  const svc = model.services.get(slash < 0 ? name : name.slice(0, slash))!;
  if (!Object.isFrozen(svc)) return buildCluster(model, svc, name);
  let mesh = meshKeys.get(model.mesh);
  if (mesh === undefined) {
    mesh = `${model.mesh.mtls.mode}\u0000${model.mesh.trustDomain}`;
    meshKeys.set(model.mesh, mesh);
  }
  let built = builtClusters.get(svc);
  if (built?.mesh !== mesh) {
    built = { mesh, byName: new Map() };
    builtClusters.set(svc, built);
  }
  let c = built.byName.get(name);
  if (!c) {
    c = deepFreeze(buildCluster(model, svc, name));
    built.byName.set(name, c);
  }
  return c;
}

function buildCluster(model: Model, svc: ServiceModel, name: string): IRCluster {
  const [service, subsetName] = name.split('/') as [string, string | undefined];
  const subset = subsetName ? svc.subsets.find((s) => s.name === subsetName) : undefined;
  return {
    name,
    service,
    subset,
    protocol: svc.protocol,
    connectTimeoutMs: DEFAULT_CONNECT_TIMEOUT_MS,
    // Only services that can have sidecars (a sidecarPort, or discovery) need mTLS and its secrets.
    upstreamIdentity: meshTlsOn(model) && (svc.consul || svc.endpoints?.some((e) => e.sidecarPort)) ? serviceIdentity(model, service) : undefined,
    source: svc.source,
  };
}
