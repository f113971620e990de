// Model -> IR for edge gateways: one HTTP listener per Gateway listener, virtual hosts per
// hostname, and only the clusters that this gateway's routes reference.
import type { IRCluster, IRHttpListener, IRProxyConfig, IRRoute, IRSecret, IRVirtualHost } from '../ir/types.js';
import { baseGroup, gatewayGroup, parseGatewayGroup, parseSidecarGroup } from '../ir/types.js';
import { translateSidecar } from './sidecar.js';
import type { GatewayModel, Model } from '../model/model.js';
import { hostnameMatches } from '../model/hostnames.js';
import { compareRoutes, routesOf } from './routes.js';
import { applyPolicies } from './policies.js';
import { applyJwtPolicies, type AuthzEndpoint, type JwtKeysOf } from './jwt.js';
import { gatewayIdentity, meshTlsOn, serviceCluster } from './mesh-identity.js';


/** Hostnames a route serves on a listener: its own that the listener covers, or the listener's. */
function effectiveHostnames(routeHosts: string[] | undefined, listenerHosts: string[]): string[] {
  if (!routeHosts) return listenerHosts;
  const out = new Set<string>();
  for (const h of routeHosts) {
    for (const l of listenerHosts) {
      if (hostnameMatches(l, h)) out.add(h);
      else if (hostnameMatches(h, l)) out.add(l);
    }
  }
  return [...out].sort();
}

/**
 * A redirect that names neither scheme nor port keeps the listener's port (as the Gateway API
 * asks); the HCM strips the port from Host before routing, so it is set explicitly.
 */
function withListenerPort(r: IRRoute, port: number): IRRoute {
  if (r.action.kind !== 'redirect' || r.action.port || r.action.scheme || port === 80 || port === 443) return r;
  return { ...r, action: { ...r.action, port } };
}

export function translateGateway(model: Model, gateway: GatewayModel): IRProxyConfig {
  const listeners: IRHttpListener[] = [];
  const clusters = new Map<string, IRCluster>();
  const secrets: IRSecret[] = [];

  for (const l of gateway.listeners) {
    const byHost = new Map<string, IRRoute[]>();
    for (const route of model.routes) {
      const attached = route.spec.parentRefs.some((p) => p.kind === 'Gateway' && p.name === gateway.name && (!p.sectionName || p.sectionName === l.name));
      if (!attached) continue;
      const hosts = effectiveHostnames(route.spec.hostnames, l.hostnames);
      if (hosts.length === 0) continue;
      const irRoutes = routesOf(route, model.mesh).map((r) => withListenerPort(r, l.port));
      for (const h of hosts) byHost.set(h, [...(byHost.get(h) ?? []), ...irRoutes]);
      for (const r of irRoutes) {
        if (r.action.kind !== 'forward') continue;
        for (const b of r.action.backends) {
          if (clusters.has(b.cluster)) continue;
          clusters.set(b.cluster, serviceCluster(model, b.cluster));
        }
      }
    }
    const virtualHosts: IRVirtualHost[] = [...byHost.keys()].sort().map((h) => ({
      name: h === '*' ? 'any-host' : h,
      domains: [h],
      routes: [...byHost.get(h)!].sort(compareRoutes),
    }));
    const name = `${gateway.name}/${l.name}`;
    let tls: IRHttpListener['tls'];
    if (l.tls) {
      const secretName = `${gateway.name}/${l.name}/cert`;
      secrets.push({ name: secretName, certificatePem: l.tls.certificatePem, privateKeyPem: l.tls.privateKeyPem, source: gateway.source });
      tls = { secretName };
    }
    const needsFault = virtualHosts.some((v) => v.routes.some((r) => r.fault));
    listeners.push({
      name,
      address: '0.0.0.0',
      port: l.port,
      tls,
      direction: 'gateway',
      routeConfig: { name, virtualHosts },
      httpFilters: needsFault ? ['fault'] : [],
      source: gateway.source,
    });
  }
  return {
    group: gatewayGroup(gateway.name),
    identity: meshTlsOn(model) ? gatewayIdentity(model, gateway.name) : undefined,
    listeners,
    clusters: [...clusters.values()].sort((a, b) => (a.name < b.name ? -1 : 1)),
    secrets,
  };
}

/**
 * The IR of every gateway, plus the groups that proxies have asked for: sidecar groups, and the
 * `+jwt-module` variants of gateway and sidecar groups (proxies that load Signalbox's compiled
 * JWT filter; `jwtFastPathModule` gives every group the compiled filter).
 */
export function translate(model: Model, requestedGroups: Iterable<string> = [], opts: { authz?: AuthzEndpoint; jwtKeys?: JwtKeysOf; jwtFastPath?: boolean; jwtFastPathModule?: boolean } = {}): Map<string, IRProxyConfig> {
  const jwt = { endpoint: opts.authz, keys: opts.jwtKeys, fastPath: opts.jwtFastPath, fastPathModule: opts.jwtFastPathModule };
  // Each group is translated on its own (a variant shares no objects with its base group).
  const build = (group: string): IRProxyConfig | undefined => {
    const base = baseGroup(group);
    const shape = parseSidecarGroup(base);
    const name = parseGatewayGroup(base);
    const gateway = name === undefined ? undefined : model.gateways.get(name);
    const ir = shape ? translateSidecar(model, shape) : gateway ? translateGateway(model, gateway) : undefined;
    if (!ir) return undefined;
    const checked = applyJwtPolicies(model, applyPolicies(model, ir), base === group ? jwt : { ...jwt, fastPathModule: true });
    return base === group ? checked : { ...checked, group };
  };
  const groups = new Set([...requestedGroups].filter((g) => parseSidecarGroup(baseGroup(g)) || baseGroup(g) !== g));
  for (const g of model.gateways.values()) groups.add(gatewayGroup(g.name));
  const out = new Map<string, IRProxyConfig>();
  for (const group of [...groups].sort()) {
    const ir = build(group);
    if (ir) out.set(group, ir);
  }
  return out;
}
