// Traffic reporting without Envoy: the narrow access-log decoder against protobufjs-encoded
// messages, the sampling weights, who counts a request (caller vs callee), the sliding window's
// rates and percentiles, the caps that bound memory, and the access logger the translator adds.
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { ALWAYS_LOGGED_FLAGS, logName, parseLogName } from '../../src/protocol/access-log.js';
import { decodeAccessLogMessage, Flag, type AccessRecord } from '../../src/telemetry/als-decode.js';
import { TrafficStore, serviceOfCluster, type ProxyRef } from '../../src/telemetry/traffic-store.js';
import { latencyBucket, LATENCY_BOUNDS_MS, Series, NF, F } from '../../src/telemetry/window.js';
import { accessLogs } from '../../src/xds/translator/access-log.js';
import { listenerResource } from '../../src/xds/translator/listener.js';
import { lookupType } from '../../src/xds/resources/protos.js';
import { assertRoundTrip } from '../../src/xds/resources/resource.js';
import { TypeUrl } from '../../src/xds/resources/type-urls.js';
import type { IRHttpListener } from '../../src/ir/types.js';

const MSG = 'envoy.service.accesslog.v3.StreamAccessLogsMessage';

function encode(obj: Record<string, unknown>): Uint8Array {
  const T = lookupType(MSG);
  return T.encode(T.fromObject(obj)).finish();
}

const d = (ms: number) => ({ seconds: Math.floor(ms / 1000), nanos: Math.round((ms % 1000) * 1e6) });

function entry(o: { route?: string; cluster?: string; status?: number; flags?: Record<string, unknown>; ms?: number; attempts?: number; peer?: string }) {
  return {
    common_properties: {
      downstream_remote_address: { socket_address: { address: '10.0.0.1', port_value: 4242 } },
      ...(o.peer
        ? {
            tls_properties: {
              tls_version: 'TLSv1_3',
              peer_certificate_properties: { subject_alt_name: [{ dns: 'ignored.example' }, { uri: o.peer }], subject: 'CN=x' },
            },
          }
        : {}),
      start_time: { seconds: 1_790_000_000, nanos: 5 },
      time_to_last_downstream_tx_byte: d((o.ms ?? 1) + 0.5),
      upstream_cluster: o.cluster ?? '',
      response_flags: o.flags ?? {},
      route_name: o.route ?? '',
      duration: d(o.ms ?? 1),
      upstream_request_attempt_count: o.attempts ?? 1,
      custom_tags: { a: 'b' },
    },
    protocol_version: 'HTTP11',
    request: { request_method: 'GET', path: '/x', authority: 'shop', request_headers: { 'x-a': 'b' } },
    response: o.status === undefined ? {} : { response_code: { value: o.status }, response_code_details: 'via_upstream' },
  };
}

describe('access log decoder', () => {
  test('reads identifier, route, cluster, status, flags, duration, attempts and peer; skips the rest', () => {
    const bytes = encode({
      identifier: {
        node: { id: 'edge-1', cluster: 'edge', metadata: { fields: { 'signalbox.role': { string_value: 'gateway' } } }, locality: { zone: 'z' } },
        log_name: logName(25),
      },
      http_logs: {
        log_entry: [
          entry({ route: 'shop/browse/match-0', cluster: 'shop/v1', status: 200, ms: 12.5, attempts: 1 }),
          entry({
            route: 'shop/browse/match-0',
            cluster: 'shop',
            status: 503,
            flags: { upstream_overflow: true, upstream_remote_reset: true, delay_injected: true },
            ms: 1500,
            attempts: 3,
          }),
          entry({
            route: 'inbound/shop',
            cluster: 'inbound/shop',
            status: 403,
            flags: { unauthorized_details: { reason: 'EXTERNAL_SERVICE' } },
            peer: 'spiffe://signalbox.local/service/web',
          }),
          entry({ flags: { no_route_found: true }, status: 404 }),
          entry({ route: 'x', cluster: 'y', flags: { downstream_connection_termination: true } }),
        ],
      },
    });
    const m = decodeAccessLogMessage(bytes);
    assert.deepEqual(m.identifier, { nodeId: 'edge-1', nodeCluster: 'edge', logName: 'signalbox?sample=25' });
    assert.equal(m.http.length, 5);
    const [a, b, c, nr, reset] = m.http as [AccessRecord, AccessRecord, AccessRecord, AccessRecord, AccessRecord];
    assert.deepEqual(a, { route: 'shop/browse/match-0', cluster: 'shop/v1', status: 200, flags: 0, durationMs: 12.5, attempts: 1, peer: '' });
    assert.equal(b.status, 503);
    assert.equal(b.flags, Flag.Overflow | Flag.RemoteReset, 'DI is not one of the counted flags');
    assert.equal(b.durationMs, 1500);
    assert.equal(b.attempts, 3);
    assert.equal(c.peer, 'spiffe://signalbox.local/service/web', 'the URI SAN, not the DNS one');
    assert.equal(c.flags, Flag.Unauthorized);
    assert.equal(nr.flags, Flag.NoRoute);
    assert.equal(nr.route, '');
    assert.equal(reset.status, 0, 'no response code sent');
  });

  test('falls back to time_to_last_downstream_tx_byte without a duration; counts TCP entries', () => {
    const T = lookupType(MSG);
    const bytes = T.encode(
      T.fromObject({
        http_logs: {
          log_entry: [{ common_properties: { time_to_last_downstream_tx_byte: d(7), route_name: 'r' }, response: { response_code: { value: 204 } } }],
        },
      }),
    ).finish();
    assert.equal(decodeAccessLogMessage(bytes).http[0]!.durationMs, 7);
    const tcp = T.encode(T.fromObject({ tcp_logs: { log_entry: [{ common_properties: {} }, { common_properties: {} }] } })).finish();
    assert.deepEqual(decodeAccessLogMessage(tcp), { http: [], tcp: 2 });
  });

  test('agrees with a full protobufjs decode on many random entries', () => {
    const T = lookupType(MSG);
    let seed = 7;
    const rnd = (n: number) => {
      seed = (seed * 1103515245 + 12345) & 0x7fffffff;
      return seed % n;
    };
    const entries = Array.from({ length: 300 }, (_, _i) =>
      entry({
        route: `r${rnd(5)}/rule/match-${rnd(3)}`,
        cluster: rnd(4) ? `svc${rnd(3)}` : '',
        status: [200, 201, 302, 404, 429, 503, 401][rnd(7)],
        ms: rnd(100000) / 10,
        attempts: 1 + rnd(3),
        flags: rnd(3) ? {} : { upstream_overflow: true },
      }),
    );
    const bytes = encode({ http_logs: { log_entry: entries } });
    const full = T.toObject(T.decode(bytes), { longs: Number }) as { http_logs: { log_entry: any[] } };
    const narrow = decodeAccessLogMessage(bytes).http;
    full.http_logs.log_entry.forEach((e, i) => {
      const n = narrow[i]!;
      assert.equal(n.route, e.common_properties.route_name ?? '');
      assert.equal(n.cluster, e.common_properties.upstream_cluster ?? '');
      assert.equal(n.status, e.response?.response_code?.value ?? 0);
      assert.equal(n.attempts, e.common_properties.upstream_request_attempt_count ?? 0);
      assert.equal(Boolean(n.flags & Flag.Overflow), Boolean(e.common_properties.response_flags?.upstream_overflow));
      const dur = e.common_properties.duration;
      assert.ok(Math.abs(n.durationMs - ((dur?.seconds ?? 0) * 1000 + (dur?.nanos ?? 0) / 1e6)) < 1e-6);
    });
  });

  test('truncated or garbage bytes throw (the stream is closed, the process is not)', () => {
    const bytes = encode({ http_logs: { log_entry: [entry({ route: 'a', status: 200 })] } });
    assert.throws(() => decodeAccessLogMessage(bytes.subarray(0, bytes.length - 3)));
    assert.throws(() => decodeAccessLogMessage(Uint8Array.from([0x12, 0xff, 0xff, 0xff, 0x0f])));
  });

  test('the sampling rate rides in the log name', () => {
    assert.equal(parseLogName(logName(10)).sample, 10);
    assert.equal(parseLogName('signalbox').sample, 100);
    assert.equal(parseLogName('signalbox?sample=0').sample, 100, 'nonsense means unsampled');
  });
});

const gw: ProxyRef = { id: 'edge-1', role: 'gateway', name: 'edge', group: 'gateway/edge' };
const web: ProxyRef = { id: 'web-1', role: 'sidecar', name: 'web', group: 'sidecar/web/1/2/3' };
const shopSidecar: ProxyRef = { id: 'shop-1', role: 'sidecar', name: 'shop', group: 'sidecar/shop/1/2/3' };
const rec = (o: Partial<AccessRecord>): AccessRecord => ({
  route: 'shop/browse/match-0',
  cluster: 'shop',
  status: 200,
  flags: 0,
  durationMs: 1,
  attempts: 1,
  peer: '',
  ...o,
});

describe('traffic store', () => {
  test('counts classes, retries, 429, 401/403, overflows and resets per service, route, proxy and edge', () => {
    const st = new TrafficStore({ now: () => 1_000_000 });
    st.record(gw, rec({ status: 200, attempts: 3 }));
    st.record(gw, rec({ status: 503, flags: Flag.Overflow }));
    st.record(gw, rec({ status: 503, flags: Flag.ConnectionTermination }));
    st.record(gw, rec({ status: 429, cluster: '' }));
    st.record(gw, rec({ status: 401, cluster: '', flags: Flag.Unauthorized }));
    st.record(gw, rec({ status: 404, route: '', cluster: '', flags: Flag.NoRoute }));
    st.routeInfo = (r) => (r === 'shop/browse/match-0' ? { service: 'shop', file: 'routes.yaml' } : undefined);
    st.record(gw, rec({ status: 403, cluster: '' }));
    const snap = st.snapshot();
    const shop = snap.services.find((s) => s.key === 'shop')!;
    assert.deepEqual(
      shop.totals,
      { requests: 4, c2xx: 1, c3xx: 0, c4xx: 1, c5xx: 2, retries: 2, rateLimited: 0, authzDenied: 1, overflow: 1, resets: 1 },
      'local replies without a cluster count only once the route resolves to the service',
    );
    const route = snap.routes.find((r) => r.key === 'shop/browse/match-0')!;
    assert.equal(route.totals.requests, 6);
    assert.equal(route.totals.rateLimited, 1);
    assert.equal(route.totals.authzDenied, 2);
    assert.deepEqual([route.httpRoute, route.rule, route.match, route.service, route.file], ['shop', 'browse', 'match-0', 'shop', 'routes.yaml']);
    assert.equal(snap.routes.find((r) => r.key === '(no route)')!.totals.requests, 1);
    assert.equal(st.proxyView('edge-1')!.totals.requests, 7);
    const clients = snap.edges.find((e) => e.from === 'clients' && e.to === 'gateway/edge')!;
    assert.equal(clients.totals.requests, 7);
    assert.equal(snap.edges.find((e) => e.from === 'gateway/edge' && e.to === 'service/shop')!.totals.requests, 4);
  });

  test('a mesh call is counted once for the service: by the caller, not again by the callee sidecar', () => {
    const st = new TrafficStore({ now: () => 5_000 });
    st.record(web, rec({ route: 'shop/default', cluster: 'shop' }));
    st.record(shopSidecar, rec({ route: 'inbound/shop', cluster: 'inbound/shop', peer: 'spiffe://signalbox.local/service/web' }));
    st.record(shopSidecar, rec({ route: 'inbound/shop', cluster: 'inbound/shop', peer: '' })); // a plain-text client (permissive)
    const snap = st.snapshot();
    assert.equal(snap.services.find((s) => s.key === 'shop')!.totals.requests, 2);
    assert.deepEqual(
      snap.edges.map((e) => `${e.from}>${e.to}=${e.totals.requests}`),
      ['clients>service/shop=1', 'service/web>service/shop=1'],
    );
    assert.equal(st.proxyView('shop-1')!.totals.requests, 2, 'the proxy counts everything it served');
  });

  test('sampled successes are weighted back up; errors and flagged requests are not', () => {
    assert.equal(TrafficStore.weightOf(rec({ status: 200 }), 10), 10);
    assert.equal(TrafficStore.weightOf(rec({ status: 302 }), 25), 4);
    assert.equal(TrafficStore.weightOf(rec({ status: 503 }), 10), 1);
    assert.equal(TrafficStore.weightOf(rec({ status: 200, flags: Flag.Overflow }), 10), 1);
    assert.equal(TrafficStore.weightOf(rec({ status: 200 }), 100), 1);
    // Envoy's filter and the weights agree on which flags are always reported.
    assert.deepEqual([...ALWAYS_LOGGED_FLAGS].sort(), ['LR', 'NR', 'RL', 'UAEX', 'UC', 'UF', 'UH', 'UO', 'UR', 'URX', 'UT']);
    const st = new TrafficStore({ now: () => 0 });
    for (let i = 0; i < 10; i++) st.record(gw, rec({}), TrafficStore.weightOf(rec({}), 10));
    st.record(gw, rec({ status: 500 }), 1);
    assert.equal(st.snapshot().services[0]!.totals.requests, 101);
  });

  test('caps: past the limit new keys share one "(other)" series; idle series are swept', () => {
    let now = 0;
    const st = new TrafficStore({ maxRoutes: 3, now: () => now });
    for (let i = 0; i < 10; i++) st.record(gw, rec({ route: `r${i}/x/match-0` }));
    const keys = st.snapshot().routes.map((r) => r.key);
    assert.equal(keys.length, 4);
    assert.ok(keys.includes('(other)'));
    assert.equal(st.snapshot().routes.find((r) => r.key === '(other)')!.totals.requests, 7);
    now = 20 * 60_000;
    st.sweep(15 * 60_000);
    st.record(gw, rec({ route: 'fresh/x/match-0' }));
    assert.deepEqual(
      st.snapshot().routes.map((r) => r.key),
      ['fresh/x/match-0'],
    );
  });

  test('cluster names map to services', () => {
    assert.equal(serviceOfCluster('orders'), 'orders');
    assert.equal(serviceOfCluster('orders/v2'), 'orders');
    assert.equal(serviceOfCluster('inbound/orders'), 'orders');
    assert.equal(serviceOfCluster(''), undefined);
  });
});

describe('sliding window', () => {
  const sample = (ms: number, weight = 1) => {
    const counts = new Float64Array(NF);
    counts[F.requests] = 1;
    return { counts, latencyMs: ms, weight };
  };

  test('requests/s over the last 10 complete seconds, a 60-point sparkline, and old seconds forgotten', () => {
    const s = new Series('x');
    for (let sec = 100; sec < 130; sec++) for (let i = 0; i < 5; i++) s.add(sample(1), sec * 1000 + i);
    const st = s.stats(130_500);
    assert.equal(st.rps, 5);
    assert.equal(st.spark.length, 60);
    assert.equal(st.window.requests, 150);
    assert.equal(s.stats(300_000).window.requests, 0, 'a minute later the window is empty');
    assert.equal(s.totals[F.requests], 150, 'totals stay');
  });

  test('percentiles within one bucket (25%) of the truth', () => {
    const s = new Series('x');
    for (let i = 1; i <= 1000; i++) s.add(sample(i / 10), 50_000); // 0.1 .. 100 ms
    const st = s.stats(50_100);
    for (const [p, want] of [
      [st.p50!, 50],
      [st.p90!, 90],
      [st.p99!, 99],
    ] as const)
      assert.ok(Math.abs(p - want) / want < 0.25, `${p} vs ${want}`);
    assert.ok(latencyBucket(LATENCY_BOUNDS_MS[3]!) === 3 && latencyBucket(LATENCY_BOUNDS_MS[3]! + 1e-6) === 4);
    assert.equal(latencyBucket(1e9), LATENCY_BOUNDS_MS.length, 'beyond the last bound: +Inf');
  });
});

describe('the access logger in every HTTP connection manager', () => {
  const listener = (accessLog?: IRHttpListener['accessLog']): IRHttpListener => ({
    name: 'edge/http',
    direction: 'gateway',
    address: '0.0.0.0',
    port: 8080,
    routeConfig: { name: 'edge/http', virtualHosts: [] },
    httpFilters: [],
    accessLog,
    source: { file: 'g.yaml', doc: 0 },
  });
  const hcmOf = (l: Record<string, any>) => l.filter_chains[0].filters[0].typed_config;

  test('reports to the bootstrap control-plane cluster; no filter when every request is reported', () => {
    const json = listenerResource(listener({ successSamplePercent: 100 }));
    const [log] = hcmOf(json).access_log;
    assert.equal(log.name, 'envoy.access_loggers.http_grpc');
    assert.equal(log.typed_config.common_config.grpc_service.envoy_grpc.cluster_name, 'signalbox-xds');
    assert.equal(log.typed_config.common_config.log_name, 'signalbox?sample=100');
    assert.equal(log.filter, undefined);
    assertRoundTrip(TypeUrl.Listener, 'edge/http', json, encodeListener(json));
  });

  test('sampling: errors (>= 400) and failure flags always, successes at the percent', () => {
    const json = listenerResource(listener({ successSamplePercent: 10 }));
    const [log] = hcmOf(json).access_log;
    const filters = log.filter.or_filter.filters;
    assert.equal(filters[0].status_code_filter.comparison.value.default_value, 400);
    assert.deepEqual(filters[1].response_flag_filter.flags, [...ALWAYS_LOGGED_FLAGS]);
    assert.deepEqual(filters[2].runtime_filter.percent_sampled, { numerator: 100_000, denominator: 'MILLION' });
    assert.equal(log.typed_config.common_config.log_name, 'signalbox?sample=10');
    assertRoundTrip(TypeUrl.Listener, 'edge/http', json, encodeListener(json));
    assert.equal(accessLogs({ successSamplePercent: 0 })[0]!.filter !== undefined, true, '0%: errors only');
  });

  test('absent from the IR: no access log (e.g. `--access-log-sampling off`)', () => {
    assert.equal(hcmOf(listenerResource(listener())).access_log, undefined);
  });
});

function encodeListener(json: Record<string, unknown>): Uint8Array {
  const T = lookupType('envoy.config.listener.v3.Listener');
  return T.encode(T.fromObject(json)).finish();
}
