// Traffic reporting, wired: the access log service on the xDS gRPC server, the traffic store it
// feeds, the route -> service/file index rebuilt on every applied configuration, mesh series on
// /metrics, and a sweep that keeps memory bounded.
import type * as grpc from '@grpc/grpc-js';
import type client from 'prom-client';
import type { Pipeline } from '../controller/pipeline.js';
import type { IRProxyConfig } from '../ir/types.js';
import type { Logger } from '../observability/logger.js';
import type { ProxyRegistry } from '../xds/server/proxy-status.js';
import { AccessLogService, alsDefinition, alsMetrics } from './als-service.js';
import { registerMeshMetrics } from './prometheus.js';
import { TrafficStore, type RouteInfo } from './traffic-store.js';

export { TrafficStore } from './traffic-store.js';

export interface Telemetry {
  store: TrafficStore;
  service: AccessLogService;
  stop(): void;
}

/** Route name -> its single destination service (if one) and policy file, over every group. */
export function routeIndex(groups: ReadonlyMap<string, IRProxyConfig>): Map<string, RouteInfo> {
  const out = new Map<string, RouteInfo>();
  for (const ir of groups.values()) {
    const serviceOf = new Map(ir.clusters.map((c) => [c.name, c.service]));
    for (const l of ir.listeners) {
      for (const vh of l.routeConfig.virtualHosts) {
        for (const r of vh.routes) {
          if (out.has(r.name)) continue;
          const services = r.action.kind === 'forward' ? [...new Set(r.action.backends.map((b) => serviceOf.get(b.cluster) ?? b.cluster.split('/')[0]!))] : [];
          out.set(r.name, { service: services.length === 1 ? services[0] : undefined, file: r.source.file });
        }
      }
    }
  }
  return out;
}

export function attachTelemetry(opts: {
  pipeline: Pipeline;
  registry: ProxyRegistry;
  promRegistry: client.Registry;
  logger: Logger;
  /** Registers a gRPC service on the server proxies already reach (the xDS server). */
  addService: (def: grpc.ServiceDefinition, impl: grpc.UntypedServiceImplementation) => void;
}): Telemetry {
  const store = new TrafficStore();
  let index = routeIndex(opts.pipeline.irGroups());
  store.routeInfo = (route) => index.get(route);
  const onApplied = () => (index = routeIndex(opts.pipeline.irGroups()));
  opts.pipeline.on('applied', onApplied);
  const metrics = alsMetrics(opts.promRegistry);
  registerMeshMetrics(opts.promRegistry, store);
  const service = new AccessLogService({
    store,
    logger: opts.logger.child({ component: 'access-log' }),
    metrics,
    resolveProxy: (id) => {
      const p = opts.registry.byId(id);
      return p ? { id: p.node.id, role: p.node.role, name: p.node.name, group: p.node.group } : undefined;
    },
  });
  opts.addService(
    alsDefinition((s) => metrics.processSeconds.inc(s)),
    service.implementation(),
  );
  const sweep = setInterval(() => store.sweep(), 60_000);
  sweep.unref();
  return {
    store,
    service,
    stop: () => {
      clearInterval(sweep);
      opts.pipeline.off('applied', onApplied);
    },
  };
}
