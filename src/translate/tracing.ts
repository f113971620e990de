// Mesh.spec.tracing -> IR: every HTTP listener of every proxy group traces with Envoy's
// OpenTelemetry tracer, exporting OTLP over gRPC to the named Service (whose cluster the group
// gets), sampling the given percent of requests. Envoy then propagates W3C trace context
// (traceparent) to the upstreams it calls. Part of translation (translate() in gateway.ts): the
// IR it returns is new, never an edit of the one it was given.
import type { GroupKey, IRProxyConfig } from '../ir/types.js';
import { parseGroup } from '../ir/types.js';
import type { Model } from '../model/model.js';
import { serviceCluster } from './mesh-identity.js';

/** The service name a proxy group's spans carry: the sidecar's Service, or `<gateway>-gateway`. */
export function tracingServiceNameOf(key: GroupKey): string {
  return key.kind === 'sidecar' ? key.service : `${key.gateway}-gateway`;
}

/** tracingServiceNameOf for a group name (a `+jwt-module` variant traces as its group). */
export function tracingServiceName(group: string): string {
  const key = parseGroup(group);
  return key ? tracingServiceNameOf(key) : group;
}

/** The group's IR with Mesh tracing on every listener and the collector's cluster (the same IR without Mesh tracing). */
export function withMeshTracing(model: Model, ir: IRProxyConfig): IRProxyConfig {
  const t = model.mesh.tracing;
  if (!t || !model.services.has(t.service) || ir.listeners.length === 0) return ir;
  const tracing = { cluster: t.service, samplingPercent: t.samplingPercent, serviceName: tracingServiceNameOf(ir.key) };
  const traced = (l: IRProxyConfig['listeners'][number]) =>
    l.tracing?.cluster === tracing.cluster && l.tracing.samplingPercent === tracing.samplingPercent && l.tracing.serviceName === tracing.serviceName;
  if (ir.listeners.every(traced) && ir.clusters.some((c) => c.name === t.service)) return ir;
  const clusters = ir.clusters.some((c) => c.name === t.service)
    ? ir.clusters
    : [...ir.clusters, serviceCluster(model, t.service)].sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
  return { ...ir, clusters, listeners: ir.listeners.map((l) => ({ ...l, tracing })) };
}

/**
 * withMeshTracing on each group of a map, replacing its entries (the IR objects themselves are not
 * changed). translate() already applies Mesh tracing, so on its output this changes nothing; kept
 * for tests that build the IR some other way.
 */
export function applyMeshTracing(model: Model, irs: Map<string, IRProxyConfig>): void {
  for (const [group, ir] of irs) irs.set(group, withMeshTracing(model, ir));
}
