// Model -> IR for a sidecar: an inbound listener (mTLS with the service's own identity, access
// policy as RBAC, forwarding to the local app) and an outbound listener on loopback that routes by
// Host to the services this one may reach — and only those, so config does not grow with the mesh.
import type { IRCluster, IRHttpListener, IRProxyConfig, IRRbac, IRRbacPolicy, IRRoute, IRVirtualHost, SidecarShape } from '../ir/types.js';
import { formatGroup, formatRouteName, type GroupKey, type RouteKey } from '../ir/names.js';
import { mayReach, type AccessModel } from '../model/access.js';
import type { Model } from '../model/model.js';
import { gatewayIdentity, meshTlsOn, serviceCluster, serviceIdentity, DEFAULT_CONNECT_TIMEOUT_MS } from './mesh-identity.js';
import { compareRoutes, routesOf } from './routes.js';
import { destinationDefaults } from './policies.js';

function rbacOf(model: Model, access: AccessModel | undefined): IRRbac | undefined {
  if (!access) return undefined;
  const policies = (action: 'Allow' | 'Deny'): IRRbacPolicy[] =>
    access.rules
      .map((r, i) => ({ r, i }))
      .filter(({ r }) => r.action === action)
      .map(({ r, i }) => ({
        name: `${access.service}/${action.toLowerCase()}-${i}`,
        principals: r.from.map((f) => (f.kind === 'service' ? serviceIdentity(model, f.name) : gatewayIdentity(model, f.name))).sort(),
        permissions: r.to?.map((op) => ({ methods: op.methods, paths: op.paths?.map((p) => ({ type: p.type, value: p.value })) })),
      }));
  return { deny: policies('Deny'), allow: policies('Allow'), defaultDeny: access.default === 'Deny' };
}

export function translateSidecar(model: Model, shape: SidecarShape): IRProxyConfig | undefined {
  const svc = model.services.get(shape.service);
  if (!svc) return undefined;
  const mtls = meshTlsOn(model);
  const clusters = new Map<string, IRCluster>();

  const localCluster = `inbound/${svc.name}`;
  clusters.set(localCluster, {
    name: localCluster,
    service: svc.name,
    protocol: svc.protocol,
    connectTimeoutMs: DEFAULT_CONNECT_TIMEOUT_MS,
    static: { address: '127.0.0.1', port: shape.appPort },
    source: svc.source,
  });
  const inboundKey: RouteKey = { kind: 'inbound', service: svc.name };
  const inboundRoute: IRRoute = {
    key: inboundKey,
    name: formatRouteName(inboundKey),
    match: { path: { type: 'PathPrefix', value: '/' }, headers: [], queryParams: [] },
    action: { kind: 'forward', backends: [{ cluster: localCluster, weight: 1 }], timeoutMs: model.mesh.defaults.timeoutMs },
    source: svc.source,
  };
  const inbound: IRHttpListener = {
    name: 'inbound',
    direction: 'inbound',
    address: '0.0.0.0',
    port: shape.inboundPort,
    meshTls: mtls ? { mode: model.mesh.mtls.mode as 'strict' | 'permissive' } : undefined,
    rbac: rbacOf(model, model.access.get(svc.name)),
    forwardClientCert: mtls,
    routeConfig: { name: 'inbound', virtualHosts: [{ name: 'local-app', domains: ['*'], routes: [inboundRoute] }] },
    httpFilters: [],
    source: svc.source,
  };

  const virtualHosts: IRVirtualHost[] = [];
  for (const dest of [...model.services.values()].sort((a, b) => (a.name < b.name ? -1 : 1))) {
    if (dest.protocol === 'tcp') continue;
    if (!mayReach(model.access, { kind: 'service', name: svc.name }, dest.name)) continue;
    const attached = model.routes.filter((r) => r.spec.parentRefs.some((p) => p.kind === 'Service' && p.name === dest.name));
    let routes: IRRoute[] = attached.flatMap((r) => routesOf(r, model.mesh));
    if (routes.length === 0) {
      const { timeoutMs, retry } = destinationDefaults(model, dest.name); // TrafficPolicy, else Mesh defaults
      const key: RouteKey = { kind: 'default', service: dest.name };
      routes = [
        {
          key,
          name: formatRouteName(key),
          match: { path: { type: 'PathPrefix', value: '/' }, headers: [], queryParams: [] },
          action: { kind: 'forward', backends: [{ cluster: dest.name, weight: 1 }], timeoutMs, retry },
          source: dest.source,
        },
      ];
    }
    for (const r of routes) {
      if (r.action.kind !== 'forward') continue;
      for (const b of r.action.backends) if (!clusters.has(b.cluster)) clusters.set(b.cluster, serviceCluster(model, b.cluster));
    }
    virtualHosts.push({ name: dest.name, domains: [dest.name], routes: routes.sort(compareRoutes) });
  }
  const outbound: IRHttpListener = {
    name: 'outbound',
    direction: 'outbound',
    address: '127.0.0.1',
    port: shape.outboundPort,
    routeConfig: { name: 'outbound', virtualHosts },
    httpFilters: virtualHosts.some((v) => v.routes.some((r) => r.fault)) ? ['fault'] : [],
    source: svc.source,
  };
  const rbacFilters = inbound.rbac ? ['rbac-deny', 'rbac-allow'] : [];
  inbound.httpFilters = rbacFilters;
  const key: GroupKey = { kind: 'sidecar', service: shape.service, appPort: shape.appPort, inboundPort: shape.inboundPort, outboundPort: shape.outboundPort };
  return {
    group: formatGroup(key),
    key,
    identity: mtls ? serviceIdentity(model, svc.name) : undefined,
    listeners: [inbound, outbound],
    clusters: [...clusters.values()].sort((a, b) => (a.name < b.name ? -1 : 1)),
    secrets: [],
  };
}
