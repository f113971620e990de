// Names of proxy groups, gateway listeners and routes. Each is a structured value with one
// formatter and one parser; translation carries the structured value in the IR, so nothing in
// the pipeline splits a name to find out what it names. The parsers are for names that arrive
// from outside (node metadata, Envoy's route names in access logs and NACKs).

/** The ports of one sidecar shape (from the proxy's node metadata). */
export interface SidecarShape {
  service: string;
  appPort: number;
  inboundPort: number;
  outboundPort: number;
}

/**
 * A proxy group: every Envoy of one gateway, or the sidecars of one service with one port shape.
 * `jwtModule`: the variant for proxies that load Signalbox's compiled JWT filter.
 */
export type GroupKey = ({ kind: 'gateway'; gateway: string } | ({ kind: 'sidecar' } & SidecarShape)) & { jwtModule?: boolean };

/**
 * The group of proxies that carry Signalbox's compiled JWT filter (their node metadata says
 * `signalbox.jwt_module`): the same configuration as `<group>`, with the JWT fast path in the
 * compiled filter instead of the Lua script.
 */
export const JWT_MODULE_GROUP_SUFFIX = '+jwt-module';

/** `gateway/<name>` or `sidecar/<service>/<appPort>/<inboundPort>/<outboundPort>`, then `+jwt-module` for the variant. */
export function formatGroup(k: GroupKey): string {
  const base = k.kind === 'gateway' ? `gateway/${k.gateway}` : `sidecar/${k.service}/${k.appPort}/${k.inboundPort}/${k.outboundPort}`;
  return k.jwtModule ? base + JWT_MODULE_GROUP_SUFFIX : base;
}

/** The inverse of formatGroup; undefined for anything else. */
export function parseGroup(group: string): GroupKey | undefined {
  const jwtModule = group.endsWith(JWT_MODULE_GROUP_SUFFIX);
  const base = jwtModule ? group.slice(0, -JWT_MODULE_GROUP_SUFFIX.length) : group;
  const variant = jwtModule ? { jwtModule: true } : {};
  const gw = /^gateway\/([^/+]+)$/.exec(base);
  if (gw) return { kind: 'gateway', gateway: gw[1]!, ...variant };
  const sc = /^sidecar\/([a-z0-9-]+)\/(\d+)\/(\d+)\/(\d+)$/.exec(base);
  if (sc) return { kind: 'sidecar', service: sc[1]!, appPort: Number(sc[2]), inboundPort: Number(sc[3]), outboundPort: Number(sc[4]), ...variant };
  return undefined;
}

/** A Gateway listener's name in Envoy (listener and route configuration): `<Gateway>/<listener>`. */
export function gatewayListenerName(gateway: string, listener: string): string {
  return `${gateway}/${listener}`;
}

/** Which rule of an HTTPRoute: its own name, or, for an unnamed rule, its index in `spec.rules`. */
export type RuleRef = { name: string } | { index: number };

/**
 * What an IR route is: one match of one HTTPRoute rule; a sidecar's route to a destination no
 * HTTPRoute describes; or a sidecar's inbound route to its local app.
 */
export type RouteKey =
  | { kind: 'rule'; httpRoute: string; rule: RuleRef; match: number }
  | { kind: 'default'; service: string }
  | { kind: 'inbound'; service: string };

/**
 * How a rule appears in route names: its name, or `#<index>` when it has none. Rule names are
 * DNS labels (src/api/v1alpha1/common.ts: lower-case letters, digits and "-"), so no name a user
 * writes can look like an unnamed rule's.
 */
export function ruleLabel(r: RuleRef): string {
  return 'name' in r ? r.name : `#${r.index}`;
}

/** The rule's own name (what a policy's `sectionName` can name); undefined for an unnamed rule. */
export function ruleName(r: RuleRef): string | undefined {
  return 'name' in r ? r.name : undefined;
}

/**
 * The route's name in Envoy (stats, access logs, dumps): `<HTTPRoute>/<rule>/match-<N>` (rule as
 * ruleLabel), `<service>/default` or `inbound/<service>`.
 */
export function formatRouteName(k: RouteKey): string {
  switch (k.kind) {
    case 'rule':
      return `${k.httpRoute}/${ruleLabel(k.rule)}/match-${k.match}`;
    case 'default':
      return `${k.service}/default`;
    case 'inbound':
      return `inbound/${k.service}`;
  }
}

/**
 * The inverse of formatRouteName, for route names that come back from Envoy. `inbound/default`
 * (a sidecar's inbound route of a Service named "default", or its route to a Service named
 * "inbound") reads as the former.
 */
export function parseRouteName(name: string): RouteKey | undefined {
  const parts = name.split('/');
  if (parts.length === 3) {
    const [httpRoute, rule, match] = parts as [string, string, string];
    const m = /^match-(\d+)$/.exec(match);
    if (!httpRoute || !rule || !m) return undefined;
    const index = /^#(\d+)$/.exec(rule);
    return { kind: 'rule', httpRoute, rule: index ? { index: Number(index[1]) } : { name: rule }, match: Number(m[1]) };
  }
  if (parts.length === 2 && parts[0] && parts[1]) {
    if (parts[0] === 'inbound') return { kind: 'inbound', service: parts[1] };
    if (parts[1] === 'default') return { kind: 'default', service: parts[0] };
  }
  return undefined;
}
