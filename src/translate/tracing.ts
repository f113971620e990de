// Mesh.spec.tracing -> IR: every HTTP listener of every proxy group traces with Envoy's
// OpenTelemetry tracer, exporting OTLP over gRPC to the named Service (whose cluster the group
// gets), sampling the given percent of requests. Envoy then propagates W3C trace context
// (traceparent) to the upstreams it calls.
import type { IRProxyConfig } from '../ir/types.js';
import { baseGroup, parseGatewayGroup, parseSidecarGroup } from '../ir/types.js';
import type { Model } from '../model/model.js';
import { serviceCluster } from './mesh-identity.js';

/** The service name a proxy group's spans carry: the sidecar's Service, or `<gateway>-gateway`. */
export function tracingServiceName(variant: string): string {
  const group = baseGroup(variant);
  const sidecar = parseSidecarGroup(group);
  if (sidecar) return sidecar.service;
  const gateway = parseGatewayGroup(group);
  return gateway !== undefined ? `${gateway}-gateway` : group;
}

export function applyMeshTracing(model: Model, irs: Map<string, IRProxyConfig>): void {
  const t = model.mesh.tracing;
  if (!t || !model.services.has(t.service)) return;
  for (const ir of irs.values()) {
    if (ir.listeners.length === 0) continue;
    if (!ir.clusters.some((c) => c.name === t.service)) {
      ir.clusters.push(serviceCluster(model, t.service));
      ir.clusters.sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
    }
    for (const l of ir.listeners) l.tracing = { cluster: t.service, samplingPercent: t.samplingPercent, serviceName: tracingServiceName(ir.group) };
  }
}
