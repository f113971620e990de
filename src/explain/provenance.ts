// Provenance: the effective settings of each listener, route and cluster of one proxy group, field
// by field, each with the policy document it came from (or "default"). Used by `signalbox explain`
// (offline, from a policy directory) and the admin API's /api/explain/:proxy (live).
import type { IRForward, IRProxyConfig, IRRoute } from '../ir/types.js';
import { gatewayGroup, ruleName } from '../ir/types.js';
import type { Model, RouteModel } from '../model/model.js';
import type { IRLocalRateLimit } from '../ir/traffic.js';
import type { RateLimitModel, Sourced } from '../model/policies.js';
import type { SourceRef } from '../api/documents.js';

/** Where a value came from. */
export interface Origin {
  kind: 'HTTPRoute' | 'TrafficPolicy' | 'RateLimitPolicy' | 'JWTPolicy' | 'Mesh' | 'Service' | 'Gateway' | 'setting' | 'default';
  name?: string;
  file?: string;
  doc?: number;
}

export interface Setting {
  value: unknown;
  from: Origin;
}

export interface ExplainedRoute {
  name: string;
  listener: string;
  virtualHost: string;
  settings: Record<string, Setting>;
}

export interface ExplainedCluster {
  name: string;
  service: string;
  settings: Record<string, Setting>;
}

export interface Explained {
  group: string;
  listeners: { name: string; port: number; settings: Record<string, Setting> }[];
  routes: ExplainedRoute[];
  clusters: ExplainedCluster[];
}

const DEFAULT: Origin = { kind: 'default' };

function at(kind: Origin['kind'], name: string, source: SourceRef): Origin {
  return { kind, name, file: source.file, doc: source.doc };
}

function fromSourced<T>(s: Sourced<T>): Origin {
  return at(s.kind, s.policy, s.source);
}

/** The limit the IR carries, with the target its RateLimitPolicy names. */
function rateLimitSetting(model: Model, r: IRLocalRateLimit): Setting {
  // Every setting the limit carries, whatever the policy language adds, without its bookkeeping.
  const { policy: _policy, source: _source, ...limit } = r;
  const policy: RateLimitModel | undefined = [...model.policies.rateLimits.values()].find((m) => m.policy === r.policy);
  return {
    value: { ...limit, by: r.by ?? 'shared bucket', target: policy?.target },
    from: at('RateLimitPolicy', r.policy, r.source),
  };
}

function explainRoute(model: Model, ir: IRProxyConfig, listener: string, virtualHost: string, r: IRRoute): ExplainedRoute {
  const settings: Record<string, Setting> = {};
  const key = r.key.kind === 'rule' ? r.key : undefined;
  const routeModel: RouteModel | undefined = key ? model.routes.find((m) => m.name === key.httpRoute) : undefined;
  const section = key ? ruleName(key.rule) : undefined;
  const ri = !routeModel || !key ? -1 : 'index' in key.rule ? key.rule.index : routeModel.spec.rules.findIndex((rule) => rule.name === section);
  const rule = ri >= 0 ? routeModel!.spec.rules[ri] : undefined;
  const routeOrigin = routeModel ? at('HTTPRoute', routeModel.name, routeModel.source) : at('Service', r.source.file, r.source);
  settings.match = { value: r.match, from: routeOrigin };
  const a = r.action;
  if (a.kind === 'redirect') {
    settings.redirect = { value: a, from: routeOrigin };
  } else {
    settings.backends = { value: a.backends, from: routeOrigin };
    const inherited = ri >= 0 ? routeModel!.policyDefaults?.[ri] : undefined;
    const services = [...new Set(a.backends.flatMap((b) => ir.clusters.filter((c) => c.name === b.cluster && !c.static).map((c) => c.service)))];
    const tp = services.length === 1 ? model.policies?.traffic.get(services[0]!) : undefined;
    // timeout: the rule, then the backends' TrafficPolicy, then the Mesh, then built-in.
    let timeoutFrom: Origin;
    if (rule?.timeout) timeoutFrom = routeOrigin;
    else if (inherited?.timeoutMs) timeoutFrom = fromSourced(inherited.timeoutMs);
    else if (!routeModel && tp?.timeoutMs) timeoutFrom = fromSourced(tp.timeoutMs);
    else timeoutFrom = model.policies.meshDefaults.timeoutMs ? fromSourced(model.policies.meshDefaults.timeoutMs) : DEFAULT;
    settings.timeout = { value: `${a.timeoutMs}ms`, from: timeoutFrom };
    let retryFrom: Origin;
    if (rule?.retries) retryFrom = routeOrigin;
    else if (inherited?.retries) retryFrom = fromSourced(inherited.retries);
    else if (!routeModel && tp?.retries) retryFrom = fromSourced(tp.retries);
    else retryFrom = model.policies.meshDefaults.retries ? fromSourced(model.policies.meshDefaults.retries) : DEFAULT;
    settings.retries = { value: a.retry ?? 'none', from: retryFrom };
    if (a.hashOn?.length) {
      const lbFrom = services.map((s) => model.policies?.traffic.get(s)?.loadBalancer).find((x) => x?.value.type === 'RingHash');
      settings.hashOn = { value: a.hashOn, from: lbFrom ? fromSourced(lbFrom) : DEFAULT };
    }
    if (a.rewrite) settings.rewrite = { value: a.rewrite, from: routeOrigin };
  }
  if (r.requestHeaders) settings.requestHeaders = { value: r.requestHeaders, from: routeOrigin };
  if (r.responseHeaders) settings.responseHeaders = { value: r.responseHeaders, from: routeOrigin };
  if (r.fault) settings.fault = { value: r.fault, from: routeOrigin };
  if (r.rateLimit) settings.rateLimit = rateLimitSetting(model, r.rateLimit);
  if (r.jwt?.policies.length) {
    const first = model.jwt?.policies.get(r.jwt.policies[0]!);
    settings.jwt = {
      value: {
        policies: r.jwt.policies,
        checkedBy: r.jwt.fast
          ? 'the ext_authz service, once per token: Envoy repeats its allows for the same token (fast path)'
          : `the ext_authz service: ${r.jwt.slowReason ?? 'no fast path'}`,
      },
      from: first ? at('JWTPolicy', first.name, first.source) : DEFAULT,
    };
  }
  return { name: r.name, listener, virtualHost, settings };
}

function explainCluster(model: Model, c: IRProxyConfig['clusters'][number]): ExplainedCluster {
  const tp = c.static ? undefined : model.policies?.traffic.get(c.service);
  const svc = model.services.get(c.service);
  const settings: Record<string, Setting> = {};
  if (svc) settings.protocol = { value: c.protocol, from: at('Service', svc.name, svc.source) };
  if (c.subset) settings.subset = { value: c.subset, from: svc ? at('Service', svc.name, svc.source) : DEFAULT };
  settings.connectTimeout = { value: `${c.connectTimeoutMs}ms`, from: tp?.connectTimeoutMs ? fromSourced(tp.connectTimeoutMs) : DEFAULT };
  settings.loadBalancer = { value: c.loadBalancer ?? { type: 'RoundRobin' }, from: tp?.loadBalancer ? fromSourced(tp.loadBalancer) : DEFAULT };
  settings.circuitBreaker = {
    value: c.circuitBreaker ?? "Envoy's defaults (1024 connections, 1024 pending, 1024 requests, 3 retries)",
    from: tp?.circuitBreaker ? fromSourced(tp.circuitBreaker) : DEFAULT,
  };
  settings.outlierDetection = { value: c.outlierDetection ?? 'off', from: tp?.outlierDetection ? fromSourced(tp.outlierDetection) : DEFAULT };
  settings.healthCheck = { value: c.healthCheck ?? 'off', from: tp?.healthCheck ? fromSourced(tp.healthCheck) : DEFAULT };
  return { name: c.name, service: c.service, settings };
}

export function explainGroup(model: Model, ir: IRProxyConfig, opts: { route?: string } = {}): Explained {
  const routes: ExplainedRoute[] = [];
  const listeners: Explained['listeners'] = [];
  for (const l of ir.listeners) {
    const settings: Record<string, Setting> = {};
    if (l.rateLimit) settings.rateLimit = rateLimitSetting(model, l.rateLimit);
    // A control-plane setting, not a policy: `serve --access-log-sampling` (on at 100 by default).
    settings.accessLog = {
      value: l.accessLog ? { successSamplePercent: l.accessLog.successSamplePercent, errors: 'always' } : 'off',
      from: { kind: 'setting', name: '--access-log-sampling' },
    };
    if (l.tracing) settings.tracing = { value: l.tracing, from: model.mesh.source ? at('Mesh', model.mesh.name, model.mesh.source) : DEFAULT };
    listeners.push({ name: l.name, port: l.port, settings });
    for (const v of l.routeConfig.virtualHosts) {
      for (const r of v.routes) {
        if (opts.route && r.name !== opts.route && !r.name.startsWith(`${opts.route}/`)) continue;
        routes.push(explainRoute(model, ir, l.name, v.name, r));
      }
    }
  }
  const wanted = opts.route
    ? new Set(routes.flatMap((r) => ((r.settings.backends?.value as IRForward['backends'] | undefined) ?? []).map((b) => b.cluster)))
    : undefined;
  const clusters = ir.clusters.filter((c) => !wanted || wanted.has(c.name)).map((c) => explainCluster(model, c));
  return { group: ir.group, listeners, routes, clusters };
}

function originText(o: Origin): string {
  if (o.kind === 'default') return 'default';
  if (o.kind === 'setting') return `control-plane setting ${o.name}`;
  return `${o.kind} "${o.name}" (${o.file}#${o.doc})`;
}

function valueText(v: unknown): string {
  if (typeof v === 'string') return v;
  return JSON.stringify(v);
}

function block(settings: Record<string, Setting>, indent: string): string[] {
  const keys = Object.keys(settings);
  const width = Math.max(0, ...keys.map((k) => k.length));
  return keys.map((k) => `${indent}${k.padEnd(width)}  ${valueText(settings[k]!.value)}\n${indent}${' '.repeat(width)}  <- ${originText(settings[k]!.from)}`);
}

/** The human-readable form: one block per listener, route and cluster. */
export function explainText(e: Explained): string {
  const lines: string[] = [`proxy group ${e.group}`];
  for (const l of e.listeners) {
    lines.push(`listener ${l.name} (port ${l.port})`);
    lines.push(...block(l.settings, '    '));
    for (const r of e.routes.filter((x) => x.listener === l.name)) {
      lines.push(`  route ${r.name} (virtual host ${r.virtualHost})`);
      lines.push(...block(r.settings, '    '));
    }
  }
  for (const c of e.clusters) {
    lines.push(`cluster ${c.name}`);
    lines.push(...block(c.settings, '    '));
  }
  return `${lines.join('\n')}\n`;
}

/** The group a proxy id, gateway name or group name designates, among `groups`. */
export function resolveGroup(proxy: string, groups: Iterable<string>): string | undefined {
  const all = [...groups];
  if (all.includes(proxy)) return proxy;
  if (all.includes(gatewayGroup(proxy))) return gatewayGroup(proxy);
  return undefined;
}
