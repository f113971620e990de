// Mesh golden signals on /metrics, read from the traffic store at scrape time. Labels are policy
// names only (Service, HTTPRoute/rule/match, gateway), never proxy ids; each label's values are
// capped (series past the cap are summed under "(other)"), so cardinality stays bounded however
// many proxies, routes or clients there are.
import type client from 'prom-client';
import { F, PROM_BUCKETS_S, type Series } from './window.js';
import type { TrafficStore } from './traffic-store.js';

export const PROM_CAPS = { services: 200, routes: 300, edges: 400 } as const;

const CLASSES = [
  ['2xx', F.c2xx],
  ['3xx', F.c3xx],
  ['4xx', F.c4xx],
  ['5xx', F.c5xx],
] as const;

const EVENTS = [
  ['retry', F.retries],
  ['rate_limited', F.rateLimited],
  ['authz_denied', F.authzDenied],
  ['circuit_breaker_overflow', F.overflow],
  ['upstream_reset', F.resets],
] as const;

type Value = { value: number; labels: Record<string, string | number>; metricName?: string };

interface Group {
  label: string;
  totals: Float64Array;
  buckets: Float64Array;
  sum: number;
}

/** Sorted series, the first `cap` as they are, the rest summed into one "(other)" group. */
function capped(series: Iterable<Series>, cap: number): Group[] {
  const sorted = [...series].sort((a, b) => (a.key < b.key ? -1 : 1));
  const out: Group[] = sorted.slice(0, cap).map((s) => ({ label: s.key, totals: s.totals, buckets: s.promBuckets, sum: s.latencySumSeconds }));
  const rest = sorted.slice(cap);
  if (rest.length) {
    const g: Group = { label: '(other)', totals: new Float64Array(rest[0]!.totals.length), buckets: new Float64Array(PROM_BUCKETS_S.length + 1), sum: 0 };
    for (const s of rest) {
      for (const [i, v] of s.totals.entries()) g.totals[i]! += v;
      for (const [i, v] of s.promBuckets.entries()) g.buckets[i]! += v;
      g.sum += s.latencySumSeconds;
    }
    out.push(g);
  }
  return out;
}

function histogram(values: Value[], name: string, labels: Record<string, string>, g: Group): void {
  let acc = 0;
  PROM_BUCKETS_S.forEach((le, i) => {
    acc += g.buckets[i]!;
    values.push({ metricName: `${name}_bucket`, labels: { ...labels, le }, value: Math.round(acc) });
  });
  acc += g.buckets[PROM_BUCKETS_S.length]!;
  values.push({ metricName: `${name}_bucket`, labels: { ...labels, le: '+Inf' }, value: Math.round(acc) });
  values.push({ metricName: `${name}_sum`, labels, value: g.sum });
  values.push({ metricName: `${name}_count`, labels, value: Math.round(acc) });
}

function metric(name: string, help: string, type: 'counter' | 'histogram', build: () => Value[]) {
  return {
    name,
    help,
    type,
    aggregator: 'sum',
    get: async () => ({ name, help, type, aggregator: 'sum', values: build() }),
    reset: () => {},
  };
}

/** Registers the mesh series on `registry`. */
export function registerMeshMetrics(registry: client.Registry, store: TrafficStore): void {
  const reg = (m: ReturnType<typeof metric>) => registry.registerMetric(m as unknown as client.Metric);
  reg(
    metric('signalbox_mesh_requests_total', 'Requests to each Service reported by the proxies (access logs), by status class.', 'counter', () =>
      capped(store.services.values(), PROM_CAPS.services).flatMap((g) =>
        CLASSES.map(([cls, i]) => ({ labels: { service: g.label, code_class: cls }, value: Math.round(g.totals[i]!) })),
      ),
    ),
  );
  reg(
    metric(
      'signalbox_mesh_events_total',
      'Retries, rate-limited (429), authz denials (401/403), circuit-breaker overflows (UO) and upstream resets (UR/UC) per Service.',
      'counter',
      () =>
        capped(store.services.values(), PROM_CAPS.services).flatMap((g) =>
          EVENTS.map(([kind, i]) => ({ labels: { service: g.label, kind }, value: Math.round(g.totals[i]!) })),
        ),
    ),
  );
  reg(
    metric('signalbox_mesh_request_duration_seconds', 'Request duration per Service as its callers saw it.', 'histogram', () => {
      const values: Value[] = [];
      for (const g of capped(store.services.values(), PROM_CAPS.services))
        histogram(values, 'signalbox_mesh_request_duration_seconds', { service: g.label }, g);
      return values;
    }),
  );
  reg(
    metric('signalbox_mesh_route_requests_total', 'Requests per route (HTTPRoute/rule/match-N), by status class.', 'counter', () =>
      capped(store.routes.values(), PROM_CAPS.routes).flatMap((g) =>
        CLASSES.map(([cls, i]) => ({ labels: { route: g.label, code_class: cls }, value: Math.round(g.totals[i]!) })),
      ),
    ),
  );
  reg(
    metric('signalbox_mesh_route_events_total', 'Retries, rate-limited, authz denials, overflows and resets per route.', 'counter', () =>
      capped(store.routes.values(), PROM_CAPS.routes).flatMap((g) =>
        EVENTS.map(([kind, i]) => ({ labels: { route: g.label, kind }, value: Math.round(g.totals[i]!) })),
      ),
    ),
  );
  reg(
    metric('signalbox_mesh_route_request_duration_seconds', 'Request duration per route.', 'histogram', () => {
      const values: Value[] = [];
      for (const g of capped(store.routes.values(), PROM_CAPS.routes))
        histogram(values, 'signalbox_mesh_route_request_duration_seconds', { route: g.label }, g);
      return values;
    }),
  );
  reg(
    metric(
      'signalbox_mesh_edge_requests_total',
      'Requests along each edge of the mesh map (clients, gateway/NAME, service/NAME -> service/NAME).',
      'counter',
      () =>
        capped(store.edges.values(), PROM_CAPS.edges).map((g) => {
          const [source = '', destination = ''] = g.label === '(other)' ? ['(other)', '(other)'] : g.label.split('>');
          return { labels: { source, destination }, value: Math.round(g.totals[F.requests]!) };
        }),
    ),
  );
}
