// Model -> IR -> Envoy JSON: route precedence, path matching, backends and subsets, timeouts and
// retries, redirects, determinism, and the strict encoding check.
import assert from 'node:assert/strict';
import { after, describe, test } from 'node:test';
import { compileDir, type CompiledGroups } from '../../src/cli/compile.js';
import type { IRForward, IRProxyConfig } from '../../src/ir/types.js';
import { translate } from '../../src/translate/gateway.js';
import { lookupType } from '../../src/xds/resources/protos.js';
import { assertRoundTrip } from '../../src/xds/resources/resource.js';
import { messageName, TypeUrl } from '../../src/xds/resources/type-urls.js';
import { doc, docs, policyDir, removePolicyDirs, validateDir } from './policy-dir.js';

after(removePolicyDirs);

type Json = Record<string, any>;

const SERVICES = docs(
  doc(
    'Service',
    'orders',
    `
  port: 8080
  endpoints:
    - { address: 127.0.0.1, port: 9001, labels: { version: v1, zone: a } }
    - { address: 127.0.0.1, port: 9002, labels: { version: v2, zone: a } }
    - { address: 127.0.0.2, port: 9002, labels: { version: v2, zone: b } }
  subsets:
    - { name: v1, labels: { version: v1 } }
    - { name: v2, labels: { version: v2 } }
    - { name: v2-b, labels: { version: v2, zone: b } }
    - { name: v3, labels: { version: v3 } }`,
  ),
  doc('Service', 'catalog', '{ port: 8080, endpoints: [ { address: 127.0.0.1, port: 9003 } ] }'),
  doc('Service', 'grpc-api', '{ protocol: grpc, port: 8080, endpoints: [ { address: 127.0.0.1, port: 9004 } ] }'),
);
const GATEWAY = doc('Gateway', 'public', '{ listeners: [ { name: http, port: 8080, protocol: HTTP } ] }');

/** An HTTPRoute on Gateway "public" with the given rules (YAML list items, indented by 4). */
function route(name: string, rules: string, extra = ''): string {
  return doc('HTTPRoute', name, `  parentRefs: [ { kind: Gateway, name: public } ]\n${extra}  rules:\n${rules.replace(/^\n/, '')}`);
}

async function compile(files: Record<string, string>): Promise<CompiledGroups> {
  const r = await compileDir(policyDir(files));
  if (!r.ok) assert.fail(`compile failed:\n${r.errors.map((e) => `${e.file}#${e.doc} ${e.path}: ${e.message}`).join('\n')}`);
  return r.groups;
}

async function irOf(files: Record<string, string>): Promise<Map<string, IRProxyConfig>> {
  const { errors, model } = await validateDir(policyDir(files));
  assert.deepEqual(errors, []);
  return translate(model!);
}

function resource(groups: CompiledGroups, group: string, type: string, name: string): Json {
  const r = groups[group]?.[type]?.find((x) => x.name === name);
  assert.ok(r, `${group} has no ${type} "${name}" (has ${groups[group]?.[type]?.map((x) => x.name).join(', ')})`);
  return r.resource as Json;
}

/** The routes of the single virtual host of gateway/public's listener "http". */
function routesOf(groups: CompiledGroups, group = 'gateway/public', rc = 'public/http'): Json[] {
  const vhosts = resource(groups, group, 'route', rc).virtual_hosts as Json[];
  assert.equal(vhosts.length, 1);
  return vhosts[0]!.routes as Json[];
}

const byName = (routes: Json[], name: string): Json => {
  const r = routes.find((x) => x.name === name);
  assert.ok(r, `no route ${name} in ${routes.map((x) => x.name).join(', ')}`);
  return r;
};

describe('route precedence', () => {
  test('exact > regex > longest prefix > method > more headers > more query params, regardless of written order', async () => {
    const rules = `
    - name: root
      matches: [ { path: { type: PathPrefix, value: / } } ]
      backendRefs: [ { name: catalog } ]
    - name: api
      matches: [ { path: { type: PathPrefix, value: /api } } ]
      backendRefs: [ { name: catalog } ]
    - name: api-1h
      matches: [ { path: { type: PathPrefix, value: /api }, headers: [ { name: x-a, value: "1" } ] } ]
      backendRefs: [ { name: catalog } ]
    - name: api-2h
      matches: [ { path: { type: PathPrefix, value: /api }, headers: [ { name: x-a, value: "1" }, { name: x-b, type: Present } ] } ]
      backendRefs: [ { name: catalog } ]
    - name: api-1q
      matches: [ { path: { type: PathPrefix, value: /api }, queryParams: [ { name: debug, value: "1" } ] } ]
      backendRefs: [ { name: catalog } ]
    - name: api-get
      matches: [ { path: { type: PathPrefix, value: /api }, method: GET } ]
      backendRefs: [ { name: catalog } ]
    - name: api-get-1h
      matches: [ { path: { type: PathPrefix, value: /api }, method: GET, headers: [ { name: x-a, value: "1" } ] } ]
      backendRefs: [ { name: catalog } ]
    - name: api-v1
      matches: [ { path: { type: PathPrefix, value: /api/v1 } } ]
      backendRefs: [ { name: catalog } ]
    - name: regex
      matches: [ { path: { type: RegularExpression, value: "/api/[0-9]+" } } ]
      backendRefs: [ { name: catalog } ]
    - name: exact
      matches: [ { path: { type: Exact, value: /api/v1/items } } ]
      backendRefs: [ { name: catalog } ]`;
    const groups = await compile({ 'a.yaml': docs(SERVICES, GATEWAY, route('r', rules)) });
    assert.deepEqual(
      routesOf(groups).map((r) => r.name),
      [
        'r/exact/match-0',
        'r/regex/match-0',
        'r/api-v1/match-0',
        'r/api-get-1h/match-0',
        'r/api-get/match-0',
        'r/api-2h/match-0',
        'r/api-1h/match-0',
        'r/api-1q/match-0',
        'r/api/match-0',
        'r/root/match-0',
      ],
    );
  });

  test('precedence holds across HTTPRoutes in different files, and each match of a rule is its own route', async () => {
    const groups = await compile({
      'a.yaml': docs(SERVICES, GATEWAY),
      'b-short.yaml': route(
        'short',
        '    - matches: [ { path: { value: /shop } }, { path: { type: Exact, value: /shop/cart } } ]\n      backendRefs: [ { name: catalog } ]',
      ),
      'c-long.yaml': route('long', '    - matches: [ { path: { value: /shop/orders } } ]\n      backendRefs: [ { name: orders } ]'),
    });
    assert.deepEqual(
      routesOf(groups).map((r) => r.name),
      ['short/#0/match-1', 'long/#0/match-0', 'short/#0/match-0'],
    );
  });

  test('within one HTTPRoute, equally specific rules and matches keep their written order (not their names)', async () => {
    const same = (name: string) =>
      `    - ${name ? `name: ${name}\n      ` : ''}matches: [ { path: { value: /same }, headers: [ { name: x-${name || 'n'}, type: Present } ] } ]\n      backendRefs: [ { name: catalog } ]`;
    const rules = ['zeta', 'alpha', ...Array.from({ length: 10 }, () => '')].map(same).join('\n');
    const names = routesOf(await compile({ 'a.yaml': docs(SERVICES, GATEWAY, route('r', rules)) })).map((r) => r.name);
    assert.deepEqual(names, ['r/zeta/match-0', 'r/alpha/match-0', ...Array.from({ length: 10 }, (_, i) => `r/#${i + 2}/match-0`)]);
    const matches = await compile({
      'a.yaml': docs(
        SERVICES,
        GATEWAY,
        route('m', '    - matches: [ { path: { value: /b }, method: GET }, { path: { value: /a }, method: PUT } ]\n      backendRefs: [ { name: catalog } ]'),
      ),
    });
    assert.deepEqual(
      routesOf(matches).map((r) => r.name),
      ['m/#0/match-0', 'm/#0/match-1'],
    );
  });

  test('equally specific routes keep the order they were written in', async () => {
    const groups = await compile({
      'a.yaml': docs(SERVICES, GATEWAY),
      'b.yaml': route('zeta', '    - matches: [ { path: { value: /same } } ]\n      backendRefs: [ { name: catalog } ]'),
      'c.yaml': route('alpha', '    - matches: [ { path: { value: /same } } ]\n      backendRefs: [ { name: orders } ]'),
    });
    assert.deepEqual(
      routesOf(groups).map((r) => r.name),
      ['zeta/#0/match-0', 'alpha/#0/match-0'],
    );
  });
});

describe('path, header and query matching', () => {
  test('PathPrefix matches whole segments (path_separated_prefix) except "/" and a trailing slash', async () => {
    const rules = `
    - name: seg
      matches: [ { path: { type: PathPrefix, value: /orders } } ]
      backendRefs: [ { name: orders } ]
    - name: slash
      matches: [ { path: { type: PathPrefix, value: /static/ } } ]
      backendRefs: [ { name: catalog } ]
    - name: root
      matches: [ { path: { type: PathPrefix, value: / } } ]
      backendRefs: [ { name: catalog } ]
    - name: nomatch
      backendRefs: [ { name: catalog } ]
    - name: exact
      matches: [ { path: { type: Exact, value: /healthz } } ]
      backendRefs: [ { name: catalog } ]
    - name: regex
      matches: [ { path: { type: RegularExpression, value: "/items/[a-z]+" } } ]
      backendRefs: [ { name: catalog } ]`;
    const routes = routesOf(await compile({ 'a.yaml': docs(SERVICES, GATEWAY, route('r', rules)) }));
    assert.deepEqual(byName(routes, 'r/seg/match-0').match, { path_separated_prefix: '/orders' });
    assert.deepEqual(byName(routes, 'r/slash/match-0').match, { prefix: '/static/' });
    assert.deepEqual(byName(routes, 'r/root/match-0').match, { prefix: '/' });
    assert.deepEqual(byName(routes, 'r/nomatch/match-0').match, { prefix: '/' }, 'a rule without matches matches everything');
    assert.deepEqual(byName(routes, 'r/exact/match-0').match, { path: '/healthz' });
    assert.deepEqual(byName(routes, 'r/regex/match-0').match, { safe_regex: { regex: '/items/[a-z]+' } });
  });

  test('method, header and query matches', async () => {
    const rules = `
    - matches:
        - path: { value: /x }
          method: POST
          headers: [ { name: X-Canary, value: "true" }, { name: x-id, type: RegularExpression, value: "[0-9]+" }, { name: x-p, type: Present } ]
          queryParams: [ { name: Debug, value: "1" } ]
      backendRefs: [ { name: catalog } ]`;
    const routes = routesOf(await compile({ 'a.yaml': docs(SERVICES, GATEWAY, route('r', rules)) }));
    assert.deepEqual(routes[0]!.match, {
      path_separated_prefix: '/x',
      headers: [
        { name: ':method', string_match: { exact: 'POST' } },
        { name: 'x-canary', string_match: { exact: 'true' } },
        { name: 'x-id', string_match: { safe_regex: { regex: '[0-9]+' } } },
        { name: 'x-p', present_match: true },
      ],
      query_parameters: [{ name: 'Debug', string_match: { exact: '1' } }],
    });
  });
});

describe('backends and clusters', () => {
  test('weighted backends become weighted_clusters; one backend is a plain cluster', async () => {
    const rules = `
    - name: split
      matches: [ { path: { value: /orders } } ]
      backendRefs:
        - { name: orders, subset: v1, weight: 90 }
        - { name: orders, subset: v2, weight: 10 }
        - { name: catalog, weight: 0 }
    - name: single
      backendRefs: [ { name: catalog, weight: 5 } ]
    - name: merged
      matches: [ { path: { value: /m } } ]
      backendRefs: [ { name: orders, weight: 1 }, { name: orders, weight: 2 }, { name: grpc-api, weight: 3 } ]`;
    const groups = await compile({ 'a.yaml': docs(SERVICES, GATEWAY, route('r', rules)) });
    const routes = routesOf(groups);
    assert.deepEqual(byName(routes, 'r/split/match-0').route.weighted_clusters, {
      clusters: [
        { name: 'orders/v1', weight: { value: 90 } },
        { name: 'orders/v2', weight: { value: 10 } },
      ],
    });
    assert.equal(byName(routes, 'r/split/match-0').route.cluster, undefined);
    assert.equal(byName(routes, 'r/single/match-0').route.cluster, 'catalog');
    assert.equal(byName(routes, 'r/single/match-0').route.weighted_clusters, undefined);
    assert.deepEqual(byName(routes, 'r/merged/match-0').route.weighted_clusters, {
      clusters: [
        { name: 'orders', weight: { value: 3 } },
        { name: 'grpc-api', weight: { value: 3 } },
      ],
    });
    // Only referenced clusters exist; the weight-0 backend's use does not add one by itself,
    // but "catalog" is used by another rule.
    assert.deepEqual(
      groups['gateway/public']!.cluster!.map((c) => c.name),
      ['catalog', 'grpc-api', 'orders', 'orders/v1', 'orders/v2'],
    );
    assert.deepEqual(
      groups['gateway/public']!.endpoint!.map((c) => c.name),
      ['catalog', 'grpc-api', 'orders', 'orders/v1', 'orders/v2'],
    );
  });

  test('a backend with weight 0 gets no cluster when nothing else uses it', async () => {
    const rules = `
    - backendRefs: [ { name: orders, weight: 1 }, { name: catalog, weight: 0 } ]`;
    const groups = await compile({ 'a.yaml': docs(SERVICES, GATEWAY, route('r', rules)) });
    assert.deepEqual(
      groups['gateway/public']!.cluster!.map((c) => c.name),
      ['orders'],
    );
    assert.equal(routesOf(groups)[0]!.route.cluster, 'orders');
  });

  test('subset clusters hold only the endpoints whose labels match, all of them', async () => {
    const rules = `
    - backendRefs: [ { name: orders, weight: 1 }, { name: orders, subset: v1, weight: 1 }, { name: orders, subset: v2, weight: 1 }, { name: orders, subset: v2-b, weight: 1 }, { name: orders, subset: v3, weight: 1 } ]`;
    const groups = await compile({ 'a.yaml': docs(SERVICES, GATEWAY, route('r', rules)) });
    const addresses = (cluster: string) =>
      ((resource(groups, 'gateway/public', 'endpoint', cluster).endpoints as Json[]) ?? []).flatMap((l) =>
        (l.lb_endpoints as Json[]).map((e) => `${e.endpoint.address.socket_address.address}:${e.endpoint.address.socket_address.port_value}`),
      );
    assert.deepEqual(addresses('orders'), ['127.0.0.1:9001', '127.0.0.1:9002', '127.0.0.2:9002']);
    assert.deepEqual(addresses('orders/v1'), ['127.0.0.1:9001']);
    assert.deepEqual(addresses('orders/v2'), ['127.0.0.1:9002', '127.0.0.2:9002']);
    assert.deepEqual(addresses('orders/v2-b'), ['127.0.0.2:9002'], 'every label of the subset must match');
    assert.deepEqual(addresses('orders/v3'), [], 'a subset nothing matches has no endpoints (not all of them)');
    assert.equal(resource(groups, 'gateway/public', 'endpoint', 'orders/v1').cluster_name, 'orders/v1');
    assert.equal(resource(groups, 'gateway/public', 'cluster', 'orders/v2').type, 'EDS');
  });

  test('http2 and grpc services get HTTP/2 upstream options; http does not', async () => {
    const groups = await compile({
      'a.yaml': docs(SERVICES, GATEWAY, route('r', '    - backendRefs: [ { name: grpc-api, weight: 1 }, { name: catalog, weight: 1 } ]')),
    });
    const grpc = resource(groups, 'gateway/public', 'cluster', 'grpc-api');
    const opts = grpc.typed_extension_protocol_options['envoy.extensions.upstreams.http.v3.HttpProtocolOptions'];
    assert.deepEqual(opts.explicit_http_config, { http2_protocol_options: {} });
    assert.equal(resource(groups, 'gateway/public', 'cluster', 'catalog').typed_extension_protocol_options, undefined);
  });
});

describe('timeouts and retries', () => {
  const mesh = doc('Mesh', 'default', '{ defaults: { timeout: 7s, retries: { attempts: 2, retryOn: [5xx, reset] } } }');
  const rules = `
    - name: plain
      matches: [ { path: { value: /plain } } ]
      backendRefs: [ { name: catalog } ]
    - name: own-timeout
      matches: [ { path: { value: /own-timeout } } ]
      backendRefs: [ { name: catalog } ]
      timeout: 2500ms
    - name: no-retries
      matches: [ { path: { value: /no-retries } } ]
      backendRefs: [ { name: catalog } ]
      retries: { attempts: 0 }
    - name: own-retries
      matches: [ { path: { value: /own-retries } } ]
      backendRefs: [ { name: catalog } ]
      timeout: 3s
      retries: { attempts: 4, perTryTimeout: 500ms, retryOn: [retriable-status-codes], retriableStatusCodes: [503, 502], backoff: { baseInterval: 25ms, maxInterval: 1s } }
    - name: default-retry-on
      matches: [ { path: { value: /default-retry-on } } ]
      backendRefs: [ { name: catalog } ]
      retries: { attempts: 1 }`;

  test('Mesh defaults apply where a route says nothing; route settings win', async () => {
    const routes = routesOf(await compile({ 'a.yaml': docs(SERVICES, GATEWAY, mesh, route('r', rules)) }));
    const plain = byName(routes, 'r/plain/match-0').route;
    assert.deepEqual(plain.timeout, { seconds: 7, nanos: 0 });
    assert.deepEqual(plain.retry_policy, { retry_on: '5xx,reset', num_retries: { value: 2 } });

    const ownTimeout = byName(routes, 'r/own-timeout/match-0').route;
    assert.deepEqual(ownTimeout.timeout, { seconds: 2, nanos: 500_000_000 });
    assert.deepEqual(ownTimeout.retry_policy, { retry_on: '5xx,reset', num_retries: { value: 2 } }, 'the mesh retries still apply');

    const none = byName(routes, 'r/no-retries/match-0').route;
    assert.equal(none.retry_policy, undefined, 'attempts: 0 switches retries off');
    assert.deepEqual(none.timeout, { seconds: 7, nanos: 0 });

    assert.deepEqual(byName(routes, 'r/own-retries/match-0').route.retry_policy, {
      retry_on: 'retriable-status-codes',
      num_retries: { value: 4 },
      per_try_timeout: { seconds: 0, nanos: 500_000_000 },
      retriable_status_codes: [503, 502],
      retry_back_off: { base_interval: { seconds: 0, nanos: 25_000_000 }, max_interval: { seconds: 1, nanos: 0 } },
    });
    assert.deepEqual(byName(routes, 'r/default-retry-on/match-0').route.retry_policy, {
      retry_on: 'connect-failure,refused-stream,reset',
      num_retries: { value: 1 },
    });
  });

  test('without a Mesh: the built-in 15s timeout and no retries', async () => {
    const routes = routesOf(await compile({ 'a.yaml': docs(SERVICES, GATEWAY, route('r', rules)) }));
    const plain = byName(routes, 'r/plain/match-0').route;
    assert.deepEqual(plain.timeout, { seconds: 15, nanos: 0 });
    assert.equal(plain.retry_policy, undefined);
    assert.deepEqual(byName(routes, 'r/own-timeout/match-0').route.timeout, { seconds: 2, nanos: 500_000_000 });
  });
});

describe('filters', () => {
  test('redirects keep the listener port unless a scheme or port is given', async () => {
    const redirect = (name: string, r: string) =>
      `    - name: ${name}\n      matches: [ { path: { type: Exact, value: /${name} } } ]\n      filters: [ { type: RequestRedirect, requestRedirect: ${r} } ]`;
    const rules = [
      redirect('path-only', '{ path: { replaceFullPath: /new } }'),
      redirect('host', '{ hostname: example.org, statusCode: 301 }'),
      redirect('https', '{ scheme: https, statusCode: 308 }'),
      redirect('port', '{ port: 9443, statusCode: 307 }'),
      redirect('prefix', '{ path: { replacePrefixMatch: /v2 }, statusCode: 303 }').replace('type: Exact', 'type: PathPrefix'),
    ].join('\n');
    const gateways = doc(
      'Gateway',
      'public',
      '{ listeners: [ { name: http, port: 8080, protocol: HTTP, hostnames: [a.example.com] }, { name: web, port: 80, protocol: HTTP, hostnames: [b.example.com] } ] }',
    );
    const groups = await compile({ 'a.yaml': docs(SERVICES, gateways, route('r', rules)) });
    const on8080 = routesOf(groups, 'gateway/public', 'public/http');
    assert.deepEqual(byName(on8080, 'r/path-only/match-0').redirect, { response_code: 'FOUND', port_redirect: 8080, path_redirect: '/new' });
    assert.deepEqual(byName(on8080, 'r/host/match-0').redirect, { response_code: 'MOVED_PERMANENTLY', host_redirect: 'example.org', port_redirect: 8080 });
    assert.deepEqual(byName(on8080, 'r/https/match-0').redirect, { response_code: 'PERMANENT_REDIRECT', https_redirect: true });
    assert.deepEqual(byName(on8080, 'r/port/match-0').redirect, { response_code: 'TEMPORARY_REDIRECT', port_redirect: 9443 });
    assert.deepEqual(byName(on8080, 'r/prefix/match-0').redirect, { response_code: 'SEE_OTHER', port_redirect: 8080, prefix_rewrite: '/v2' });
    assert.equal(byName(on8080, 'r/path-only/match-0').route, undefined, 'a redirect does not also forward');
    const on80 = routesOf(groups, 'gateway/public', 'public/web');
    assert.deepEqual(byName(on80, 'r/path-only/match-0').redirect, { response_code: 'FOUND', path_redirect: '/new' }, 'port 80 is the default: not written');
  });

  test('URL rewrites, header modifiers and fault injection', async () => {
    const rules = `
    - name: rw
      matches: [ { path: { value: /old } } ]
      backendRefs: [ { name: catalog } ]
      filters:
        - { type: URLRewrite, urlRewrite: { hostname: internal.local, path: { replacePrefixMatch: /new } } }
        - { type: RequestHeaderModifier, requestHeaderModifier: { set: [ { name: x-env, value: prod } ], add: [ { name: x-tag, value: a } ] } }
        - { type: RequestHeaderModifier, requestHeaderModifier: { remove: [x-debug] } }
        - { type: ResponseHeaderModifier, responseHeaderModifier: { add: [ { name: x-served-by, value: signalbox } ], remove: [server] } }
    - name: full
      matches: [ { path: { type: Exact, value: /full } } ]
      backendRefs: [ { name: catalog } ]
      filters: [ { type: URLRewrite, urlRewrite: { path: { replaceFullPath: /replaced } } } ]
    - name: fault
      matches: [ { path: { value: /fault } } ]
      backendRefs: [ { name: catalog } ]
      filters: [ { type: FaultInjection, faultInjection: { delay: { fixed: 1500ms, percent: 12.5 }, abort: { httpStatus: 503, percent: 100 } } } ]`;
    const groups = await compile({ 'a.yaml': docs(SERVICES, GATEWAY, route('r', rules)) });
    const routes = routesOf(groups);
    const rw = byName(routes, 'r/rw/match-0');
    assert.equal(rw.route.prefix_rewrite, '/new');
    assert.equal(rw.route.host_rewrite_literal, 'internal.local');
    assert.deepEqual(rw.request_headers_to_add, [
      { header: { key: 'x-env', value: 'prod' }, append_action: 'OVERWRITE_IF_EXISTS_OR_ADD' },
      { header: { key: 'x-tag', value: 'a' }, append_action: 'APPEND_IF_EXISTS_OR_ADD' },
    ]);
    assert.deepEqual(rw.request_headers_to_remove, ['x-debug']);
    assert.deepEqual(rw.response_headers_to_add, [{ header: { key: 'x-served-by', value: 'signalbox' }, append_action: 'APPEND_IF_EXISTS_OR_ADD' }]);
    assert.deepEqual(rw.response_headers_to_remove, ['server']);
    assert.deepEqual(byName(routes, 'r/full/match-0').route.regex_rewrite, { pattern: { regex: '^.*$' }, substitution: '/replaced' });
    const fault = byName(routes, 'r/fault/match-0').typed_per_filter_config['envoy.filters.http.fault'];
    assert.deepEqual(fault, {
      '@type': 'type.googleapis.com/envoy.extensions.filters.http.fault.v3.HTTPFault',
      delay: { fixed_delay: { seconds: 1, nanos: 500_000_000 }, percentage: { numerator: 125_000, denominator: 'MILLION' } },
      abort: { http_status: 503, percentage: { numerator: 1_000_000, denominator: 'MILLION' } },
    });
    const hcm = resource(groups, 'gateway/public', 'listener', 'public/http').filter_chains[0].filters[0].typed_config;
    assert.deepEqual(
      (hcm.http_filters as Json[]).map((f) => f.name),
      ['envoy.filters.http.fault', 'envoy.filters.http.router'],
      'the fault filter is installed before the router when a route needs it',
    );
  });

  test('replacePrefixMatch "/" strips the prefix and its slash instead of leaving "//"', async () => {
    const strip = (name: string, path: string, filter: string) =>
      `    - name: ${name}\n      matches: [ { path: { type: PathPrefix, value: ${path} } } ]\n${filter.startsWith('{ type: RequestRedirect') ? '' : '      backendRefs: [ { name: catalog } ]\n'}      filters: [ ${filter} ]`;
    const rules = [
      strip('strip', '/orders', '{ type: URLRewrite, urlRewrite: { path: { replacePrefixMatch: / } } }'),
      strip('strip-slash', '/api/', '{ type: URLRewrite, urlRewrite: { path: { replacePrefixMatch: / } } }'),
      strip('strip-dots', '/v1.0', '{ type: URLRewrite, urlRewrite: { path: { replacePrefixMatch: / } } }'),
      strip('root', '/', '{ type: URLRewrite, urlRewrite: { path: { replacePrefixMatch: / } } }'),
      strip('redirect-strip', '/old', '{ type: RequestRedirect, requestRedirect: { path: { replacePrefixMatch: / } } }'),
    ].join('\n');
    const routes = routesOf(await compile({ 'a.yaml': docs(SERVICES, GATEWAY, route('r', rules)) }));
    const rx = (name: string) => byName(routes, `r/${name}/match-0`);
    assert.deepEqual(rx('strip').route.regex_rewrite, { pattern: { regex: '^/orders/*' }, substitution: '/' });
    assert.equal(rx('strip').route.prefix_rewrite, undefined);
    assert.deepEqual(rx('strip-slash').route.regex_rewrite, { pattern: { regex: '^/api/*' }, substitution: '/' });
    assert.deepEqual(rx('strip-dots').route.regex_rewrite, { pattern: { regex: '^/v1\\.0/*' }, substitution: '/' });
    assert.equal(rx('root').route.prefix_rewrite, '/', 'on the prefix "/" a plain prefix_rewrite is right');
    assert.deepEqual(rx('redirect-strip').redirect.regex_rewrite, { pattern: { regex: '^/old/*' }, substitution: '/' });
    // What the regex does to real paths, as RE2 would (these patterns mean the same in JavaScript).
    const apply = (re: string, p: string) => p.replace(new RegExp(re), '/');
    assert.deepEqual(
      ['/orders', '/orders/', '/orders/1', '/orders//1/x'].map((p) => apply('^/orders/*', p)),
      ['/', '/', '/1', '/1/x'],
    );
  });

  test('no fault filter in the chain when no route injects faults', async () => {
    const groups = await compile({ 'a.yaml': docs(SERVICES, GATEWAY, route('r', '    - backendRefs: [ { name: catalog } ]')) });
    const hcm = resource(groups, 'gateway/public', 'listener', 'public/http').filter_chains[0].filters[0].typed_config;
    assert.deepEqual(
      (hcm.http_filters as Json[]).map((f) => f.name),
      ['envoy.filters.http.router'],
    );
  });
});

describe('IR', () => {
  test('a gateway only gets the routes attached to it, per listener (sectionName) and hostname', async () => {
    const gateways = docs(
      doc(
        'Gateway',
        'public',
        '{ listeners: [ { name: http, port: 8080, protocol: HTTP, hostnames: ["*.example.com"] }, { name: alt, port: 8081, protocol: HTTP } ] }',
      ),
      doc('Gateway', 'internal', '{ listeners: [ { name: http, port: 9080, protocol: HTTP } ] }'),
    );
    const attach = (name: string, parent: string, hosts = '') =>
      doc(
        'HTTPRoute',
        name,
        `  parentRefs: [ ${parent} ]\n${hosts}  rules:\n    - backendRefs: [ { name: ${name === 'to-internal' ? 'orders' : 'catalog'} } ]`,
      );
    const ir = await irOf({
      'a.yaml': docs(
        SERVICES,
        gateways,
        attach('everywhere', '{ kind: Gateway, name: public }'),
        attach('alt-only', '{ kind: Gateway, name: public, sectionName: alt }'),
        attach('shop', '{ kind: Gateway, name: public }', '  hostnames: [shop.example.com]\n'),
        attach('to-internal', '{ kind: Gateway, name: internal }'),
      ),
    });
    assert.deepEqual([...ir.keys()], ['gateway/internal', 'gateway/public']);
    const pub = ir.get('gateway/public')!;
    const summary = pub.listeners.map((l) => ({
      name: l.name,
      vhosts: l.routeConfig.virtualHosts.map((v) => `${v.domains.join(',')}: ${v.routes.map((r) => r.name.split('/')[0]).join(',')}`),
    }));
    // One virtual host per hostname; a route without hostnames takes the listener's. Envoy picks
    // the most specific virtual host for a request's Host.
    assert.deepEqual(summary, [
      { name: 'public/alt', vhosts: ['*: everywhere,alt-only', 'shop.example.com: shop'] },
      { name: 'public/http', vhosts: ['*.example.com: everywhere', 'shop.example.com: shop'] },
    ]);
    assert.deepEqual(
      pub.clusters.map((c) => c.name),
      ['catalog'],
    );
    assert.deepEqual(
      ir.get('gateway/internal')!.clusters.map((c) => c.name),
      ['orders'],
      'a gateway only gets the clusters its own routes use',
    );
    const fwd = pub.listeners[0]!.routeConfig.virtualHosts[0]!.routes[0]!.action as IRForward;
    assert.equal(fwd.kind, 'forward');
  });
});

describe('determinism', () => {
  const route1 = route(
    'orders',
    `    - name: canary
      matches: [ { path: { value: /orders }, headers: [ { name: x-canary, value: "true" } ] } ]
      backendRefs: [ { name: orders, subset: v2 } ]
    - name: split
      matches: [ { path: { value: /orders } } ]
      backendRefs: [ { name: orders, subset: v1, weight: 90 }, { name: orders, subset: v2, weight: 10 } ]
      filters: [ { type: FaultInjection, faultInjection: { abort: { httpStatus: 503, percent: 1 } } } ]`,
  );
  const route2 = route(
    'catalog',
    `    - matches: [ { path: { value: /catalog }, method: GET } ]
      backendRefs: [ { name: catalog } ]
    - matches: [ { path: { type: Exact, value: /shop } } ]
      filters: [ { type: RequestRedirect, requestRedirect: { path: { replaceFullPath: /catalog } } } ]`,
  );
  const gateways = docs(
    doc('Gateway', 'public', '{ listeners: [ { name: http, port: 8080, protocol: HTTP, hostnames: [a.example.com, b.example.com] } ] }'),
    doc('Gateway', 'second', '{ listeners: [ { name: http, port: 8090, protocol: HTTP } ] }'),
  );
  const route3 = doc('HTTPRoute', 'second', '  parentRefs: [ { kind: Gateway, name: second } ]\n  rules:\n    - backendRefs: [ { name: grpc-api } ]');
  const mesh = doc('Mesh', 'default', '{ defaults: { timeout: 9s } }');

  test('compiling the same directory twice gives byte-identical JSON and identical versions', async () => {
    const dir = policyDir({ 'a.yaml': docs(SERVICES, gateways, mesh), 'routes.yaml': docs(route1, route2, route3) });
    const one = await compileDir(dir);
    const two = await compileDir(dir);
    assert.ok(one.ok && two.ok);
    assert.equal(JSON.stringify(two.groups), JSON.stringify(one.groups));
    const versions = (g: CompiledGroups) => Object.values(g).flatMap((types) => Object.values(types).flatMap((list) => list.map((r) => r.version)));
    assert.ok(versions(one.groups).length > 10);
    assert.ok(versions(one.groups).every((v) => /^[0-9a-f]{16}$/.test(v)));
  });

  test('shuffling documents and files (names, order, split) does not change the output', async () => {
    const all = [SERVICES, gateways, mesh, route1, route2, route3];
    const a = await compile({ 'a.yaml': docs(...all) });
    const b = await compile({
      'z.yaml': docs(route3, route1),
      'm/y.yml': docs(mesh, route2),
      'b.yaml': docs(gateways, SERVICES),
    });
    const c = await compile(Object.fromEntries([...all].reverse().map((d, i) => [`f${i}.yaml`, d])));
    assert.equal(JSON.stringify(b), JSON.stringify(a));
    assert.equal(JSON.stringify(c), JSON.stringify(a));
  });

  test('a change in one route changes only the versions of the resources it affects', async () => {
    const before = await compile({ 'a.yaml': docs(SERVICES, gateways, mesh, route1, route2, route3) });
    const after = await compile({ 'a.yaml': docs(SERVICES, gateways, mesh, route1, route2.replace('/catalog }, method', '/catalog2 }, method'), route3) });
    const flat = (g: CompiledGroups) =>
      Object.fromEntries(
        Object.entries(g).flatMap(([group, types]) => Object.entries(types).flatMap(([t, list]) => list.map((r) => [`${group} ${t} ${r.name}`, r.version]))),
      );
    const x = flat(before);
    const y = flat(after);
    assert.deepEqual(Object.keys(y), Object.keys(x));
    const changed = Object.keys(x).filter((k) => x[k] !== y[k]);
    assert.deepEqual(changed, ['gateway/public route public/http']);
  });
});

describe('strict encoding (assertRoundTrip)', () => {
  const cluster = lookupType(messageName(TypeUrl.Cluster));
  const encode = (t: typeof cluster, json: Json) => t.encode(t.fromObject(json)).finish();

  test('a correct resource survives encoding', () => {
    const good = {
      name: 'c',
      type: 'EDS',
      connect_timeout: { seconds: 1, nanos: 0 },
      eds_cluster_config: { eds_config: { ads: {}, resource_api_version: 'V3' } },
    };
    assert.doesNotThrow(() => assertRoundTrip(TypeUrl.Cluster, 'c', good, encode(cluster, good)));
  });

  test('a misspelt top-level field throws instead of vanishing', () => {
    const bad = { name: 'c', type: 'EDS', conect_timeout: { seconds: 1, nanos: 0 } };
    assert.throws(() => assertRoundTrip(TypeUrl.Cluster, 'c', bad, encode(cluster, bad)), /Cluster "c" does not survive encoding/);
  });

  test('a misspelt nested field throws too', () => {
    const routeType = lookupType(messageName(TypeUrl.Route));
    const bad = { name: 'rc', virtual_hosts: [{ name: 'v', domains: ['*'], routes: [{ match: { prefix: '/' }, route: { clustr: 'x' } }] }] };
    assert.throws(() => assertRoundTrip(TypeUrl.Route, 'rc', bad, encode(routeType, bad)), /RouteConfiguration "rc" does not survive encoding/);
  });

  test('every resource compiled from a realistic policy set survives encoding', async () => {
    const groups = await compile({
      'a.yaml': docs(
        SERVICES,
        GATEWAY,
        route(
          'r',
          '    - backendRefs: [ { name: orders, subset: v1 }, { name: grpc-api } ]\n      filters: [ { type: FaultInjection, faultInjection: { delay: { fixed: 1s, percent: 5 } } } ]',
        ),
      ),
    });
    const types: Record<string, string> = {
      cluster: TypeUrl.Cluster,
      endpoint: TypeUrl.Endpoint,
      listener: TypeUrl.Listener,
      route: TypeUrl.Route,
      secret: TypeUrl.Secret,
    };
    let checked = 0;
    for (const [type, list] of Object.entries(groups['gateway/public']!)) {
      const t = lookupType(messageName(types[type]!));
      for (const r of list) {
        const json = r.resource as Json;
        assert.doesNotThrow(() => assertRoundTrip(types[type] as TypeUrl, r.name, json, encode(t, json)), `${type} ${r.name}`);
        checked++;
      }
    }
    assert.ok(checked >= 6);
  });
});
