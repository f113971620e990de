// HTTPRoute rules -> IR routes: matches, actions, filters, and the precedence order Envoy needs
// (Envoy takes the first matching route, so the most specific must come first).
import { parseDuration, type RouteRule } from '../api/v1alpha1/index.js';
import type { IRForward, IRHeaderMods, IRRedirect, IRRoute, IRRouteMatch, IRRetry } from '../ir/types.js';
import { formatRouteName, type RouteKey, type RuleRef } from '../ir/names.js';
import { retrySettings, type MeshModel, type RouteModel } from '../model/model.js';
import type { RuleDefaults } from '../model/policies.js';
import { deepFreeze } from '../ir/freeze.js';

export function clusterName(service: string, subset?: string): string {
  return subset ? `${service}/${subset}` : service;
}

function headerMods(m: { set?: { name: string; value: string }[]; add?: { name: string; value: string }[]; remove?: string[] }): IRHeaderMods {
  return { set: m.set ?? [], add: m.add ?? [], remove: m.remove ?? [] };
}

/** Precedence: the rule's own retries, then its backends' TrafficPolicy, then the Mesh default. */
function retryFor(rule: RouteRule, mesh: MeshModel, inherited?: RuleDefaults): IRRetry | undefined {
  const r = rule.retries ? retrySettings(rule.retries) : (inherited?.retries?.value ?? mesh.defaults.retries);
  return r && r.attempts > 0 ? r : undefined;
}

/**
 * The last IR routes built for each HTTPRoute spec, with the key of everything else they were
 * built from. A spec is the parsed document's own value, which the parse cache hands out again
 * only while its file's text is unchanged; it is deep-frozen before it becomes a key, so the same
 * object always means the same content. A reload that leaves a file alone thus reuses its routes
 * (the same frozen objects, which the translator's own caches then recognise).
 */
const builtRoutes = new WeakMap<object, { name: string; file: string; doc: number; defaults: string; mesh: string; routes: readonly IRRoute[] }>();

/** The text of each MeshModel's defaults (a model has one MeshModel; written out once, not once per route). */
const meshDefaultsText = new WeakMap<MeshModel, string>();

/** Builds the IR routes of one HTTPRoute (one IR route per match of each rule); deep-frozen, never to be changed. */
export function routesOf(route: RouteModel, mesh: MeshModel): IRRoute[] {
  // Everything besides the spec that buildRoutes reads: the route's name and source, the defaults
  // it inherits from policies (as text; most routes have none), the Mesh defaults (as text).
  let meshText = meshDefaultsText.get(mesh);
  if (meshText === undefined) {
    meshText = JSON.stringify(mesh.defaults);
    meshDefaultsText.set(mesh, meshText);
  }
  const defaults = route.policyDefaults ? JSON.stringify(route.policyDefaults) : '';
  const hit = builtRoutes.get(deepFreeze(route.spec));
  if (hit && hit.name === route.name && hit.file === route.source.file && hit.doc === route.source.doc && hit.defaults === defaults && hit.mesh === meshText)
    return hit.routes as IRRoute[];
  const routes = deepFreeze(buildRoutes(route, mesh));
  builtRoutes.set(route.spec, { name: route.name, file: route.source.file, doc: route.source.doc, defaults, mesh: meshText, routes });
  return routes;
}

function buildRoutes(route: RouteModel, mesh: MeshModel): IRRoute[] {
  const out: IRRoute[] = [];
  route.spec.rules.forEach((rule, ri) => {
    // An unnamed rule is known by its index, in a form no rule name can take (names.ts).
    const ruleRef: RuleRef = rule.name !== undefined ? { name: rule.name } : { index: ri };
    const matches = rule.matches ?? [{}];
    let action: IRForward | IRRedirect;
    const redirect = rule.filters?.find((f) => f.type === 'RequestRedirect');
    if (redirect && redirect.type === 'RequestRedirect') {
      const r = redirect.requestRedirect;
      action = {
        kind: 'redirect',
        scheme: r.scheme,
        hostname: r.hostname,
        port: r.port,
        path: r.path ? { prefix: r.path.replacePrefixMatch, fullPath: r.path.replaceFullPath } : undefined,
        statusCode: r.statusCode,
      };
    } else {
      const rewrite = rule.filters?.find((f) => f.type === 'URLRewrite');
      const backends = new Map<string, number>();
      for (const b of rule.backendRefs ?? []) {
        if (b.weight === 0) continue;
        const c = clusterName(b.name, b.subset);
        backends.set(c, (backends.get(c) ?? 0) + b.weight);
      }
      action = {
        kind: 'forward',
        backends: [...backends].map(([cluster, weight]) => ({ cluster, weight })),
        timeoutMs: rule.timeout ? parseDuration(rule.timeout)! : (route.policyDefaults?.[ri]?.timeoutMs?.value ?? mesh.defaults.timeoutMs),
        retry: retryFor(rule, mesh, route.policyDefaults?.[ri]),
        rewrite:
          rewrite && rewrite.type === 'URLRewrite'
            ? { prefix: rewrite.urlRewrite.path?.replacePrefixMatch, fullPath: rewrite.urlRewrite.path?.replaceFullPath, hostname: rewrite.urlRewrite.hostname }
            : undefined,
      };
    }
    const reqMods = rule.filters?.filter((f) => f.type === 'RequestHeaderModifier') ?? [];
    const resMods = rule.filters?.filter((f) => f.type === 'ResponseHeaderModifier') ?? [];
    const merge = (mods: IRHeaderMods[]): IRHeaderMods | undefined =>
      mods.length === 0 ? undefined : { set: mods.flatMap((m) => m.set), add: mods.flatMap((m) => m.add), remove: mods.flatMap((m) => m.remove) };
    const fault = rule.filters?.find((f) => f.type === 'FaultInjection');
    matches.forEach((m, mi) => {
      const match: IRRouteMatch = {
        path: m.path ? { type: m.path.type, value: m.path.value } : { type: 'PathPrefix', value: '/' },
        method: m.method,
        headers: (m.headers ?? []).map((h) => ({ type: h.type, name: h.name.toLowerCase(), value: h.value })),
        queryParams: (m.queryParams ?? []).map((q) => ({ type: q.type, name: q.name, value: q.value })),
      };
      const key: RouteKey = { kind: 'rule', httpRoute: route.name, rule: ruleRef, match: mi };
      out.push({
        key,
        name: formatRouteName(key),
        match,
        action,
        requestHeaders: merge(reqMods.map((f) => (f.type === 'RequestHeaderModifier' ? headerMods(f.requestHeaderModifier) : headerMods({})))),
        responseHeaders: merge(resMods.map((f) => (f.type === 'ResponseHeaderModifier' ? headerMods(f.responseHeaderModifier) : headerMods({})))),
        fault:
          fault && fault.type === 'FaultInjection'
            ? {
                delay: fault.faultInjection.delay
                  ? { fixedMs: parseDuration(fault.faultInjection.delay.fixed)!, percent: fault.faultInjection.delay.percent }
                  : undefined,
                abort: fault.faultInjection.abort
                  ? { httpStatus: fault.faultInjection.abort.httpStatus, percent: fault.faultInjection.abort.percent }
                  : undefined,
              }
            : undefined,
        source: route.source,
      });
    });
  });
  return out;
}

const PATH_RANK = { Exact: 0, RegularExpression: 1, PathPrefix: 2 } as const;

/**
 * Precedence (as in the Gateway API): exact path, then regular expression, then the longest
 * prefix; then a method match; then more header matches; then more query matches; then the
 * order the routes were written in (file, document, rule, match), which is stable.
 */
export function compareRoutes(a: IRRoute, b: IRRoute): number {
  const pa = a.match.path;
  const pb = b.match.path;
  if (PATH_RANK[pa.type] !== PATH_RANK[pb.type]) return PATH_RANK[pa.type] - PATH_RANK[pb.type];
  if (pa.value.length !== pb.value.length) return pb.value.length - pa.value.length;
  if (!!a.match.method !== !!b.match.method) return a.match.method ? -1 : 1;
  if (a.match.headers.length !== b.match.headers.length) return b.match.headers.length - a.match.headers.length;
  if (a.match.queryParams.length !== b.match.queryParams.length) return b.match.queryParams.length - a.match.queryParams.length;
  if (a.source.file !== b.source.file) return a.source.file < b.source.file ? -1 : 1;
  if (a.source.doc !== b.source.doc) return a.source.doc - b.source.doc;
  // Same HTTPRoute: keep the written order of rules and matches (Array.prototype.sort is stable).
  return 0;
}
