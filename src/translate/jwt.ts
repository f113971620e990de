// The translate step for JWTPolicy, run over every proxy group's IR once the gateway or sidecar
// step has built it. A listener gets an ext_authz check when any of its routes falls under a
// JWTPolicy: one on its Gateway (or that Gateway listener), on the HTTPRoute (or rule) behind the
// route, or on the Service whose sidecar inbound listener it is. Every route of such a listener
// names the policies it must satisfy; routes under none skip the check. The group then also gets
// the cluster that reaches Signalbox's ext_authz service: over TLS (unless the control plane runs
// insecure), the proxy presenting its own identity certificate, so the group gets an identity even
// when mesh mTLS is off.
import { createHash } from 'node:crypto';
import type { JWK } from 'jose';
import type { IRJwtFastCheck } from '../ir/jwt.js';
import type { IRCluster, IRHttpListener, IRProxyConfig, IRRoute } from '../ir/types.js';
import { ruleName } from '../ir/types.js';
import { jwtPoliciesOn, policySettingsKey, type JwtModel, type JwtPolicyModel } from '../model/jwt.js';
import { BUILTIN_DEFAULTS, type Model } from '../model/model.js';
import { serverSpiffeId } from '../ca/server-tls.js';
import { AUTHZ_CLUSTER, EXT_AUTHZ_TIMEOUT_MS } from '../protocol/jwt-fast-path.js';
import type { AuthzEndpoint } from '../protocol/services.js';
import { gatewayIdentity, serviceIdentity } from './mesh-identity.js';

export { AUTHZ_CLUSTER, EXT_AUTHZ_TIMEOUT_MS, type AuthzEndpoint };

/** The ext_authz service's SPIFFE ID as `signalbox serve` and `signalbox authz` run it. */
export const AUTHZ_SERVER_ID = serverSpiffeId(BUILTIN_DEFAULTS.trustDomain, 'authz');

/** What `signalbox serve` gives proxies by default (TLS); `signalbox compile` shows this. */
export const DEFAULT_AUTHZ_ENDPOINT: AuthzEndpoint = { address: '127.0.0.1', port: 18002, tls: { serverId: AUTHZ_SERVER_ID } };

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

/** The keys a policy verifies with right now (undefined: none known yet). */
export type JwtKeysOf = (policy: JwtPolicyModel) => readonly JWK[] | undefined;

/** Without a running key cache (e.g. `signalbox compile`): only keys written in the policy. */
export const inlineKeysOnly: JwtKeysOf = (p) => (p.jwks.kind === 'inline' ? p.jwks.keys : undefined);

export interface JwtTranslateOptions {
  endpoint?: AuthzEndpoint;
  keys?: JwtKeysOf;
  /** Let Envoy decide valid tokens itself where it can (default true). */
  fastPath?: boolean;
  /** The fast path runs in Signalbox's compiled Envoy module instead of the Lua script. */
  fastPathModule?: boolean;
}

/**
 * The fast path of one policy, or why it cannot have one. `keys` (the keys the policy verifies
 * with now, if known) only go into the version: new keys make Envoy forget what it remembered.
 */
export function fastPathOf(p: JwtPolicyModel, keys: readonly JWK[] | undefined): IRJwtFastCheck | { reason: string } {
  const only = p.from.length === 1 ? p.from[0]! : undefined;
  if (!only || !('header' in only)) return { reason: 'the token may come from a cookie, a query parameter or several places' };
  const version = createHash('sha256')
    .update(`${policySettingsKey(p)}\n${JSON.stringify(keys ?? null)}`)
    .digest('hex')
    .slice(0, 16);
  return { policy: p.name, header: only.header, version };
}

export function applyJwtPolicies(model: Model, ir: IRProxyConfig, opts: JwtTranslateOptions = {}): IRProxyConfig {
  const checkedIr = applyJwtPoliciesToRoutes(model, ir, opts);
  // Proxies that load the compiled filter run the fast path in it, and keep it on every HTTP
  // listener (its per-route "skip" costs little), so that a policy added later never needs a
  // listener change: connections that Envoy keeps on the old listener while it drains would
  // otherwise reach the new routes unchecked.
  if (!opts.fastPathModule || opts.fastPath === false) return checkedIr;
  return { ...checkedIr, listeners: checkedIr.listeners.map((l) => ({ ...l, jwtModule: true })) };
}

function applyJwtPoliciesToRoutes(model: Model, ir: IRProxyConfig, opts: JwtTranslateOptions): IRProxyConfig {
  const jwt = model.jwt;
  if (!jwt || jwt.policies.size === 0) return ir;
  const endpoint = opts.endpoint ?? DEFAULT_AUTHZ_ENDPOINT;
  const keysOf = opts.keys ?? inlineKeysOnly;
  // Once per policy and group, however many routes and listeners it covers.
  const fastPaths = new Map<string, ReturnType<typeof fastPathOf>>();
  const fastPath = (name: string) => {
    let f = fastPaths.get(name);
    if (!f) {
      const policy = jwt.policies.get(name)!;
      f = fastPathOf(policy, keysOf(policy));
      fastPaths.set(name, f);
    }
    return f;
  };

  const gateway = ir.key.kind === 'gateway' ? ir.key.gateway : undefined;
  const sidecar = ir.key.kind === 'sidecar' ? ir.key : undefined;

  let checked = false;
  const listeners = ir.listeners.map((l): IRHttpListener => {
    let onListener: string[] = [];
    if (gateway !== undefined && (l.direction ?? 'gateway') === 'gateway') onListener = jwtPoliciesOn(jwt, 'Gateway', gateway, l.gatewayListener);
    else if (sidecar && l.direction === 'inbound') onListener = jwtPoliciesOn(jwt, 'Service', sidecar.service);
    const policiesOf = (r: IRRoute): string[] => {
      // A rule's own policies add to its route's; an unnamed rule has none of its own.
      const own = r.key.kind === 'rule' ? jwtPoliciesOn(jwt, 'HTTPRoute', r.key.httpRoute, ruleName(r.key.rule)) : [];
      return [...new Set([...onListener, ...own])].sort();
    };
    const used = new Set<string>();
    let slow = false;
    // The script's header changes make Envoy match the route again (its Lua filter clears the route
    // cache). That must land on the same route, so a policy that forwards a claim into a header
    // some route of this listener matches on keeps to the ext_authz filter (whose answer does not
    // re-route).
    const matched = new Set(l.routeConfig.virtualHosts.flatMap((v) => v.routes.flatMap((r) => r.match.headers.map((h) => h.name.toLowerCase()))));
    const viaService = (r: IRRoute, policies: string[], slowReason: string): IRRoute => {
      slow = true;
      return { ...r, jwt: { policies, slowReason } };
    };
    const virtualHosts = l.routeConfig.virtualHosts.map((v) => ({
      ...v,
      routes: v.routes.map((r) => {
        const policies = policiesOf(r);
        for (const p of policies) used.add(p);
        if (policies.length === 0) return { ...r, jwt: { policies } };
        if (opts.fastPath === false) return viaService(r, policies, 'the fast path is switched off');
        if (policies.length > 1) return viaService(r, policies, 'several policies apply to the route');
        const f = fastPath(policies[0]!);
        if ('reason' in f) return viaService(r, policies, f.reason);
        const rematched = jwt.policies.get(f.policy)!.forwardClaims.find((x) => matched.has(x.header));
        if (rematched)
          return viaService(r, policies, `a route of this listener matches on header "${rematched.header}", which the policy forwards a claim into`);
        return { ...r, jwt: { policies, fast: f } };
      }),
    }));
    if (used.size === 0) return l;
    checked = true;
    return {
      ...l,
      routeConfig: { ...l.routeConfig, virtualHosts },
      // Envoy's ext_authz filter, for the routes without a fast path (only those send it requests).
      ...(slow ? { extAuthz: { cluster: AUTHZ_CLUSTER, timeoutMs: EXT_AUTHZ_TIMEOUT_MS, headers: headersOf(jwt, used) } } : {}),
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
    ...(endpoint.tls ? { upstreamTls: { spiffeId: endpoint.tls.serverId } } : {}),
    source: first.source,
  };
  const clusters = [...ir.clusters.filter((c) => c.name !== AUTHZ_CLUSTER), cluster].sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
  // The service only answers proxies presenting a mesh certificate: the group must get one (its
  // SDS secrets go to proxies with an identity), mesh mTLS or not.
  const own = gateway !== undefined ? gatewayIdentity(model, gateway) : sidecar ? serviceIdentity(model, sidecar.service) : undefined;
  const identity = ir.identity ?? (endpoint.tls ? own : undefined);
  return { ...ir, ...(identity !== undefined ? { identity } : {}), listeners, clusters };
}
