// The translate step for JWTPolicy, run over every proxy group's IR once the gateway or sidecar
// step has built it. A listener gets an ext_authz check when any of its routes falls under a
// JWTPolicy: one on its Gateway (or that Gateway listener), on the HTTPRoute (or rule) behind the
// route, or on the Service whose sidecar inbound listener it is. Every route of such a listener
// names the policies it must satisfy; routes under none skip the check. The group then also gets
// the cluster that reaches Signalbox's ext_authz service.
import type { IRCluster, IRHttpListener, IRProxyConfig, IRRoute } from '../ir/types.js';
import { parseSidecarGroup } from '../ir/types.js';
import { jwtPoliciesOn, type JwtModel } from '../model/jwt.js';
import type { Model } from '../model/model.js';

/** The cluster name: a dot cannot appear in a Service name, so it never clashes with one. */
export const AUTHZ_CLUSTER = 'signalbox.authz';

/** Where proxies reach the ext_authz service (an IP address; the cluster is STATIC). */
export interface AuthzEndpoint {
  address: string;
  port: number;
}

export const DEFAULT_AUTHZ_ENDPOINT: AuthzEndpoint = { address: '127.0.0.1', port: 18002 };

/** Envoy's deadline for one decision; past it the request fails closed (503). */
export const EXT_AUTHZ_TIMEOUT_MS = 2_000;

/** IR route names are `<HTTPRoute>/<rule>/<match>`. */
function ruleOf(r: IRRoute): string | undefined {
  return r.name.split('/')[1];
}

/** Request headers the policies read their tokens from (cookie when any reads a cookie). */
function headersOf(jwt: JwtModel, names: Iterable<string>): string[] {
  const out = new Set<string>();
  for (const n of names) {
    for (const s of jwt.policies.get(n)?.from ?? []) {
      if ('header' in s) out.add(s.header);
      else if ('cookie' in s) out.add('cookie');
    }
  }
  return [...out].sort();
}

export function applyJwtPolicies(model: Model, ir: IRProxyConfig, endpoint: AuthzEndpoint = DEFAULT_AUTHZ_ENDPOINT): IRProxyConfig {
  const jwt = model.jwt;
  if (!jwt || jwt.policies.size === 0) return ir;

  // HTTPRoute documents by where they were written: IR routes keep their HTTPRoute's source.
  const routeAt = new Map(model.routes.map((r) => [`${r.source.file}#${r.source.doc}`, r.name]));
  const gateway = /^gateway\/(.+)$/.exec(ir.group)?.[1];
  const sidecar = parseSidecarGroup(ir.group);

  let checked = false;
  const listeners = ir.listeners.map((l): IRHttpListener => {
    let onListener: string[] = [];
    if (gateway !== undefined && (l.direction ?? 'gateway') === 'gateway') onListener = jwtPoliciesOn(jwt, 'Gateway', gateway, l.name.slice(gateway.length + 1));
    else if (sidecar && l.direction === 'inbound') onListener = jwtPoliciesOn(jwt, 'Service', sidecar.service);
    const policiesOf = (r: IRRoute): string[] => {
      const routeName = routeAt.get(`${r.source.file}#${r.source.doc}`);
      const own = routeName !== undefined ? jwtPoliciesOn(jwt, 'HTTPRoute', routeName, ruleOf(r)) : [];
      return [...new Set([...onListener, ...own])].sort();
    };
    const used = new Set<string>();
    const virtualHosts = l.routeConfig.virtualHosts.map((v) => ({
      ...v,
      routes: v.routes.map((r) => {
        const policies = policiesOf(r);
        for (const p of policies) used.add(p);
        return { ...r, jwt: { policies } };
      }),
    }));
    if (used.size === 0) return l;
    checked = true;
    return {
      ...l,
      routeConfig: { ...l.routeConfig, virtualHosts },
      extAuthz: { cluster: AUTHZ_CLUSTER, timeoutMs: EXT_AUTHZ_TIMEOUT_MS, headers: headersOf(jwt, used) },
    };
  });
  if (!checked) return ir;

  const first = jwt.policies.values().next().value!;
  const cluster: IRCluster = {
    name: AUTHZ_CLUSTER,
    service: AUTHZ_CLUSTER,
    protocol: 'grpc',
    connectTimeoutMs: 1_000,
    static: { address: endpoint.address, port: endpoint.port },
    source: first.source,
  };
  const clusters = [...ir.clusters.filter((c) => c.name !== AUTHZ_CLUSTER), cluster].sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
  return { ...ir, listeners, clusters };
}
