// SPIFFE identities and the cluster settings shared by every proxy that calls mesh services.
import { spiffeId } from '../ca/identities.js';
import type { IRCluster } from '../ir/types.js';
import type { Model } from '../model/model.js';

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

/** The cluster for a service (or one of its subsets) as seen by a calling proxy. */
export function serviceCluster(model: Model, name: string): IRCluster {
  const [service, subsetName] = name.split('/') as [string, string | undefined];
  const svc = model.services.get(service)!;
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
