// Aggregates access-log records into bounded series per service, route, proxy and edge of the
// mesh map, named after the policies (Service names, HTTPRoute/rule/match names), not Envoy's.
//
// Who counts a request: the first Signalbox proxy on its path. A gateway or a sidecar's outbound
// listener reports the call to the destination service; the destination sidecar's inbound
// listener reports it again, so inbound records count for the service only when the caller was
// not a mesh proxy (no SPIFFE client certificate), and always for the proxy and route.
import { ALWAYS_LOGGED_MASK, Flag, type AccessRecord } from './als-decode.js';
import { F, NF, SeriesSet, type Field, type Series, type WindowStats } from './window.js';

export interface ProxyRef {
  id: string;
  role: 'gateway' | 'sidecar';
  /** Gateway name, or the sidecar's service. */
  name: string;
  group: string;
}

export interface RouteInfo {
  /** The destination service of the route (when it has exactly one). */
  service?: string;
  /** The policy file the route came from. */
  file?: string;
}

export interface SeriesView extends WindowStats {
  key: string;
  totals: Record<Field, number>;
}

export interface RouteView extends SeriesView {
  httpRoute: string;
  rule: string;
  match: string;
  service?: string;
  file?: string;
}

export interface EdgeView {
  from: string;
  to: string;
  rps: number;
  errorRate: number;
  totals: Record<Field, number>;
}

export interface TrafficSnapshot {
  at: string;
  windowSeconds: number;
  services: SeriesView[];
  routes: RouteView[];
  edges: EdgeView[];
  /** Series dropped into "(other)" because a cap was reached. */
  overflowed: { routes: number; services: number; proxies: number; edges: number };
}

export interface TrafficStoreOptions {
  maxRoutes?: number;
  maxServices?: number;
  maxProxies?: number;
  maxEdges?: number;
  now?: () => number;
}

const NO_ROUTE = '(no route)';
const CLIENTS = 'clients';

export class TrafficStore {
  readonly services: SeriesSet;
  readonly routes: SeriesSet;
  readonly proxies: SeriesSet;
  readonly edges: SeriesSet;
  /** Resolves a route name to its service and file (set by the wiring from the compiled config). */
  routeInfo: (route: string) => RouteInfo | undefined = () => undefined;
  private readonly now: () => number;
  private readonly counts = new Float64Array(NF);
  private readonly sample = { counts: this.counts, latencyMs: 0, weight: 1 };
  /** Requests recorded (weighted), for the store's own metrics. */
  recorded = 0;

  constructor(opts: TrafficStoreOptions = {}) {
    this.services = new SeriesSet(opts.maxServices ?? 1000);
    this.routes = new SeriesSet(opts.maxRoutes ?? 2000);
    this.proxies = new SeriesSet(opts.maxProxies ?? 5000);
    this.edges = new SeriesSet(opts.maxEdges ?? 5000, false);
    this.now = opts.now ?? Date.now;
  }

  /** The weight of a record reported under `samplePercent` sampling of successful requests. */
  static weightOf(rec: AccessRecord, samplePercent: number): number {
    if (samplePercent >= 100) return 1;
    if (rec.status >= 400 || (rec.flags & ALWAYS_LOGGED_MASK) !== 0) return 1;
    return 100 / samplePercent;
  }

  record(proxy: ProxyRef, rec: AccessRecord, weight = 1, nowMs = this.now()): void {
    const c = this.counts;
    c.fill(0);
    c[F.requests] = 1;
    const s = rec.status;
    if (s >= 200 && s < 300) c[F.c2xx] = 1;
    else if (s >= 300 && s < 400) c[F.c3xx] = 1;
    else if (s >= 400 && s < 500) c[F.c4xx] = 1;
    else if (s >= 500) c[F.c5xx] = 1;
    if (rec.attempts > 1) c[F.retries] = rec.attempts - 1;
    if (s === 429) c[F.rateLimited] = 1;
    if (s === 401 || s === 403) c[F.authzDenied] = 1;
    if (rec.flags & Flag.Overflow) c[F.overflow] = 1;
    if (rec.flags & (Flag.RemoteReset | Flag.ConnectionTermination)) c[F.resets] = 1;
    this.sample.latencyMs = rec.durationMs;
    this.sample.weight = weight;
    this.recorded += weight;

    const route = rec.route || NO_ROUTE;
    this.proxies.get(proxy.id).add(this.sample, nowMs);
    this.routes.get(route).add(this.sample, nowMs);

    const inbound = rec.cluster.startsWith('inbound/') || route.startsWith('inbound/');
    let service = serviceOfCluster(rec.cluster);
    if (!service) service = this.routeInfo(route)?.service;
    if (inbound) {
      // The callee's own report: counted for the service only if no mesh proxy called.
      if (rec.peer.startsWith('spiffe://')) return;
      service = service ?? proxy.name;
      this.services.get(service).add(this.sample, nowMs);
      this.edges.get(`${CLIENTS}>service/${service}`).add(this.sample, nowMs);
      return;
    }
    const from = proxy.role === 'gateway' ? `gateway/${proxy.name}` : `service/${proxy.name}`;
    if (proxy.role === 'gateway') this.edges.get(`${CLIENTS}>${from}`).add(this.sample, nowMs);
    if (!service) return;
    this.services.get(service).add(this.sample, nowMs);
    this.edges.get(`${from}>service/${service}`).add(this.sample, nowMs);
  }

  private view(s: Series, nowMs: number): SeriesView {
    return { key: s.key, totals: s.totalsObject(), ...s.stats(nowMs) };
  }

  proxyView(id: string, nowMs = this.now()): SeriesView | undefined {
    const s = this.proxies.peek(id);
    return s ? this.view(s, nowMs) : undefined;
  }

  snapshot(nowMs = this.now()): TrafficSnapshot {
    const byKey = <T extends { key: string }>(a: T, b: T) => (a.key < b.key ? -1 : a.key > b.key ? 1 : 0);
    const services = [...this.services.values()].map((s) => this.view(s, nowMs)).sort(byKey);
    const routes = [...this.routes.values()]
      .map((s): RouteView => {
        const [httpRoute = s.key, rule = '', match = ''] = s.key.split('/');
        const info = this.routeInfo(s.key);
        return { ...this.view(s, nowMs), httpRoute, rule, match, service: info?.service, file: info?.file };
      })
      .sort(byKey);
    const edges = [...this.edges.values()]
      .map((s): EdgeView => {
        const [from = '', to = ''] = s.key.split('>');
        const st = s.stats(nowMs);
        const errors = st.window.c5xx + st.window.c4xx;
        return { from, to, rps: st.rps, errorRate: st.window.requests ? errors / st.window.requests : 0, totals: s.totalsObject() };
      })
      .sort((a, b) => (a.from + a.to < b.from + b.to ? -1 : 1));
    return {
      at: new Date(nowMs).toISOString(),
      windowSeconds: 60,
      services,
      routes,
      edges,
      overflowed: { routes: this.routes.overflowed, services: this.services.overflowed, proxies: this.proxies.overflowed, edges: this.edges.overflowed },
    };
  }

  /** Forgets series idle for `idleMs` (default 15 minutes): memory stays bounded as the mesh changes. */
  sweep(idleMs = 15 * 60_000, nowMs = this.now()): void {
    for (const set of [this.services, this.routes, this.proxies, this.edges]) set.sweep(nowMs, idleMs);
  }
}

/** `orders`, `orders/v2` and `inbound/orders` are all the service `orders`. */
export function serviceOfCluster(cluster: string): string | undefined {
  if (!cluster) return undefined;
  const parts = cluster.split('/');
  if (parts[0] === 'inbound') return parts[1] || undefined;
  return parts[0] || undefined;
}
