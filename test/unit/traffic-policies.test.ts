// TrafficPolicy and RateLimitPolicy: precise validation errors for bad input (nothing applied),
// conflicts naming both files, precedence (route > TrafficPolicy > Mesh defaults), and what the
// translator makes of them.
import assert from 'node:assert/strict';
import path from 'node:path';
import { after, describe, test } from 'node:test';
import { ErrorCode, formatPolicyError, type PolicyError } from '../../src/errors.js';
import type { IRForward, IRProxyConfig } from '../../src/ir/types.js';
import { sidecarGroup } from '../../src/ir/types.js';
import { parsePolicyText } from '../../src/sources/files/loader.js';
import { translate } from '../../src/translate/gateway.js';
import { clusterResource } from '../../src/xds/translator/cluster.js';
import { listenerResource } from '../../src/xds/translator/listener.js';
import { routeConfigResource } from '../../src/xds/translator/route.js';
import { envoyRoot } from '../../src/xds/resources/protos.js';
import { REFUSAL_STATUS_CODES } from '../../src/api/v1alpha1/ratelimitpolicy.js';
import { doc, docs, policyDir, removePolicyDirs, validateDir } from './policy-dir.js';

after(removePolicyDirs);

const formatted = (errors: PolicyError[]) => errors.map(formatPolicyError);

const ORDERS = doc('Service', 'orders', '{ port: 8080, endpoints: [ { address: 127.0.0.1, port: 9001 }, { address: 127.0.0.1, port: 9002 } ] }');
const CARTS = doc('Service', 'carts', '{ port: 8080, endpoints: [ { address: 127.0.0.1, port: 9003 } ] }');
const PUBLIC = doc('Gateway', 'public', '{ listeners: [ { name: http, port: 8080, protocol: HTTP }, { name: admin, port: 9090, protocol: HTTP } ] }');

function route(name: string, rules: string): string {
  return doc('HTTPRoute', name, `  parentRefs: [ { kind: Gateway, name: public } ]\n  rules:\n${rules.replace(/^\n/, '')}`);
}

function tp(name: string, spec: string): string {
  return doc('TrafficPolicy', name, spec);
}

function rl(name: string, spec: string): string {
  return doc('RateLimitPolicy', name, spec);
}

/** Schema errors of one document, as `path: message`. */
function schemaErrors(kind: string, spec: string): string[] {
  const r = parsePolicyText(doc(kind, 'p', spec), 'p.yaml');
  assert.equal(r.docs.length, r.errors.length ? 0 : 1);
  return r.errors.map((e) => `${e.path}: ${e.message}`);
}

async function irOf(files: Record<string, string>, sidecars: string[] = []): Promise<Map<string, IRProxyConfig>> {
  const { errors, model } = await validateDir(policyDir(files));
  assert.deepEqual(formatted(errors), []);
  return translate(model!, sidecars);
}

describe('TrafficPolicy validation', () => {
  const target = 'targetRef: { kind: Service, name: orders }';

  test('zero, negative and fractional circuit breaker limits', () => {
    assert.deepEqual(
      schemaErrors('TrafficPolicy', `{ ${target}, circuitBreaker: { maxConnections: 0, maxPendingRequests: -1, maxRequests: 1.5, maxRetries: 3 } }`),
      [
        'spec.circuitBreaker.maxConnections: must be greater than zero',
        'spec.circuitBreaker.maxPendingRequests: must be greater than zero',
        'spec.circuitBreaker.maxRequests: must be a whole number',
      ],
    );
    assert.deepEqual(schemaErrors('TrafficPolicy', `{ ${target}, circuitBreaker: {} }`), [
      'spec.circuitBreaker: give at least one of maxConnections, maxPendingRequests, maxRequests, maxRetries',
    ]);
  });

  test('percent above 100 and zero thresholds in outlier detection and health checks', () => {
    assert.deepEqual(schemaErrors('TrafficPolicy', `{ ${target}, outlierDetection: { consecutive5xx: 0, maxEjectionPercent: 101 } }`), [
      'spec.outlierDetection.consecutive5xx: must be greater than zero',
      'spec.outlierDetection.maxEjectionPercent: must be a percentage from 1 to 100',
    ]);
    assert.deepEqual(schemaErrors('TrafficPolicy', `{ ${target}, healthCheck: { path: healthz, interval: 1s, timeout: 2s, healthyThreshold: 0 } }`), [
      'spec.healthCheck.path: must start with "/"',
      'spec.healthCheck.healthyThreshold: must be greater than zero',
      'spec.healthCheck.timeout: 2s is longer than the interval 1s',
    ]);
    assert.deepEqual(schemaErrors('TrafficPolicy', `{ ${target}, connectTimeout: 0s }`), ['spec.connectTimeout: must be greater than zero']);
  });

  test('RingHash without a hash key; a hash key on another balancer; a bad key', () => {
    assert.deepEqual(schemaErrors('TrafficPolicy', `{ ${target}, loadBalancer: { type: RingHash } }`), [
      'spec.loadBalancer.hashOn: required for RingHash: give { header: NAME } or { sourceIP: true } (without a key every request would hash alike)',
    ]);
    assert.deepEqual(schemaErrors('TrafficPolicy', `{ ${target}, loadBalancer: { type: LeastRequest, hashOn: { header: x-user } } }`), [
      'spec.loadBalancer.hashOn: only used by RingHash, not by LeastRequest',
    ]);
    assert.deepEqual(schemaErrors('TrafficPolicy', `{ ${target}, loadBalancer: { type: RingHash, hashOn: { header: x-user, sourceIP: true } } }`), [
      'spec.loadBalancer.hashOn: give exactly one of header or sourceIP',
    ]);
    assert.deepEqual(schemaErrors('TrafficPolicy', `{ ${target}, loadBalancer: { type: RingHash, hashOn: { header: "bad header" } } }`), [
      'spec.loadBalancer.hashOn.header: must be a valid HTTP header name',
    ]);
    assert.deepEqual(schemaErrors('TrafficPolicy', `{ ${target}, loadBalancer: { type: Maglev } }`), [
      'spec.loadBalancer.type: must be one of "RoundRobin", "LeastRequest", "Random", "RingHash"',
    ]);
  });

  test('a policy that sets nothing, and perTryTimeout above its own timeout', () => {
    assert.deepEqual(schemaErrors('TrafficPolicy', `{ ${target} }`), [
      'spec: sets nothing: give at least one of connectTimeout, timeout, retries, loadBalancer, circuitBreaker, outlierDetection, healthCheck',
    ]);
    assert.deepEqual(schemaErrors('TrafficPolicy', `{ ${target}, timeout: 1s, retries: { attempts: 2, perTryTimeout: 1500ms } }`), [
      "spec.retries.perTryTimeout: 1500ms is longer than the policy's timeout 1s",
    ]);
  });

  test('an unknown target Service, with a suggestion', async () => {
    const dir = policyDir({ 'a.yaml': docs(ORDERS, tp('t', '{ targetRef: { kind: Service, name: ordrs }, connectTimeout: 1s }')) });
    const { errors, model } = await validateDir(dir);
    assert.equal(model, undefined, 'nothing is applied');
    assert.deepEqual(formatted(errors), [`${path.join(dir, 'a.yaml')}#2 spec.targetRef.name: unknown Service "ordrs" (did you mean "orders"?) (line 9)`]);
  });

  test('two policies on one Service setting the same field: an error naming both files', async () => {
    const dir = policyDir({
      'a.yaml': docs(ORDERS, tp('first', '{ targetRef: { kind: Service, name: orders }, circuitBreaker: { maxConnections: 10 }, connectTimeout: 1s }')),
      'b.yaml': tp('second', '{ targetRef: { kind: Service, name: orders }, circuitBreaker: { maxRequests: 5 }, healthCheck: { path: /h } }'),
    });
    const { errors, model } = await validateDir(dir);
    assert.equal(model, undefined);
    assert.deepEqual(
      errors.map((e) => [e.code, e.file, e.doc, e.path]),
      [[ErrorCode.CONFLICT, path.join(dir, 'b.yaml'), 1, 'spec.circuitBreaker']],
    );
    assert.equal(
      errors[0]!.message,
      `conflicts with TrafficPolicy "first" in ${path.join(dir, 'a.yaml')}#2, which also sets circuitBreaker for Service "orders"; set each field in one policy only`,
    );
  });

  test('two policies on one Service setting different fields are merged', async () => {
    const dir = policyDir({
      'a.yaml': docs(ORDERS, tp('first', '{ targetRef: { kind: Service, name: orders }, connectTimeout: 1s }')),
      'b.yaml': tp('second', '{ targetRef: { kind: Service, name: orders }, circuitBreaker: { maxRequests: 5 } }'),
    });
    const { errors, model } = await validateDir(dir);
    assert.deepEqual(errors, []);
    const merged = model!.policies.traffic.get('orders')!;
    assert.equal(merged.connectTimeoutMs!.value, 1000);
    assert.equal(merged.connectTimeoutMs!.policy, 'first');
    assert.deepEqual(merged.circuitBreaker!.value, { maxRequests: 5 });
    assert.equal(merged.circuitBreaker!.policy, 'second');
  });

  test("an inherited perTryTimeout longer than the rule's own timeout", async () => {
    const dir = policyDir({
      'a.yaml': docs(ORDERS, PUBLIC, route('r', '    - backendRefs: [ { name: orders } ]\n      timeout: 1s')),
      'b.yaml': tp('t', '{ targetRef: { kind: Service, name: orders }, retries: { attempts: 2, perTryTimeout: 2s } }'),
    });
    const { errors } = await validateDir(dir);
    assert.deepEqual(formatted(errors), [
      `${path.join(dir, 'a.yaml')}#3 spec.rules[0]: perTryTimeout 2000ms (from TrafficPolicy "t" (${path.join(dir, 'b.yaml')}#1)) is longer than the timeout 1000ms (from the rule) (line 17)`,
    ]);
  });

  test('backends whose TrafficPolicies give different timeouts make the rule ambiguous', async () => {
    const dir = policyDir({
      'a.yaml': docs(ORDERS, CARTS, PUBLIC, route('r', '    - backendRefs: [ { name: orders }, { name: carts } ]')),
      'b.yaml': docs(
        tp('o', '{ targetRef: { kind: Service, name: orders }, timeout: 2s }'),
        tp('c', '{ targetRef: { kind: Service, name: carts }, timeout: 3s }'),
      ),
    });
    const { errors } = await validateDir(dir);
    assert.equal(errors.length, 1, formatted(errors).join('\n'));
    assert.equal(errors[0]!.path, 'spec.rules[0].backendRefs');
    assert.match(
      errors[0]!.message,
      /get different timeout from their TrafficPolicies \(carts: TrafficPolicy "c" .*b\.yaml#2\), orders: TrafficPolicy "o" .*b\.yaml#1\)\); set timeout on the rule/,
    );
  });
});

describe('RateLimitPolicy validation', () => {
  test('unit typos in `per` are errors, with the duration probably meant', () => {
    const t = 'targetRef: { kind: Gateway, name: public }';
    const msg = 'must be a duration such as "1s", "1m" or "1h" (a number followed by ms, s, m or h)';
    assert.deepEqual(schemaErrors('RateLimitPolicy', `{ ${t}, local: { requests: 10, per: 1sec } }`), [`spec.local.per: ${msg} (did you mean "1s"?)`]);
    assert.deepEqual(schemaErrors('RateLimitPolicy', `{ ${t}, local: { requests: 10, per: minute } }`), [`spec.local.per: ${msg} (did you mean "1m"?)`]);
    assert.deepEqual(schemaErrors('RateLimitPolicy', `{ ${t}, local: { requests: 10, per: "10 seconds" } }`), [`spec.local.per: ${msg} (did you mean "10s"?)`]);
    assert.deepEqual(schemaErrors('RateLimitPolicy', `{ ${t}, local: { requests: 10, per: 1d } }`), [`spec.local.per: ${msg}`]);
    assert.deepEqual(schemaErrors('RateLimitPolicy', `{ ${t}, local: { requests: 10, per: 1s, unit: second } }`), ['spec.local.unit: unknown field "unit"']);
  });

  test('zero or negative request counts, and windows below 50ms', () => {
    const t = 'targetRef: { kind: Gateway, name: public }';
    assert.deepEqual(schemaErrors('RateLimitPolicy', `{ ${t}, local: { requests: 0, per: 1s } }`), ['spec.local.requests: must be greater than zero']);
    assert.deepEqual(schemaErrors('RateLimitPolicy', `{ ${t}, local: { requests: -5, per: 1s } }`), ['spec.local.requests: must be greater than zero']);
    assert.deepEqual(schemaErrors('RateLimitPolicy', `{ ${t}, local: { requests: 10, per: 10ms } }`), ['spec.local.per: must be at least 50ms']);
  });

  test('statusCode: only a refusal status Envoy can send', () => {
    const t = 'targetRef: { kind: Gateway, name: public }';
    const msg = 'must be an HTTP status Envoy can refuse with: 400-417, 421-424, 426, 428, 429, 431, 500-508, 510 or 511';
    for (const code of [418, 430, 200, 509, 600]) {
      assert.deepEqual(schemaErrors('RateLimitPolicy', `{ ${t}, local: { requests: 10, per: 1s, statusCode: ${code} } }`), [`spec.local.statusCode: ${msg}`]);
    }
    assert.deepEqual(schemaErrors('RateLimitPolicy', `{ ${t}, local: { requests: 10, per: 1s, statusCode: 503.5 } }`), [
      'spec.local.statusCode: must be a whole number',
    ]);
    for (const code of [400, 417, 421, 429, 431, 503, 511]) {
      assert.deepEqual(schemaErrors('RateLimitPolicy', `{ ${t}, local: { requests: 10, per: 1s, statusCode: ${code} } }`), []);
    }
  });

  test("statusCode: the codes admitted are exactly the 4xx and 5xx of Envoy's StatusCode enum", () => {
    const envoyCodes = Object.values(envoyRoot().lookupEnum('envoy.type.v3.StatusCode').values).filter((c) => c >= 400 && c <= 599);
    assert.deepEqual([...REFUSAL_STATUS_CODES].sort(), envoyCodes.sort());
  });

  test('keys: exactly one of header or clientIP; no sectionName on a Service', () => {
    assert.deepEqual(
      schemaErrors(
        'RateLimitPolicy',
        '{ targetRef: { kind: Gateway, name: public }, local: { requests: 10, per: 1s, by: { header: x-key, clientIP: true } } }',
      ),
      ['spec.local.by: give exactly one of header or clientIP'],
    );
    assert.deepEqual(schemaErrors('RateLimitPolicy', '{ targetRef: { kind: Service, name: orders, sectionName: x }, local: { requests: 10, per: 1s } }'), [
      'spec.targetRef.sectionName: sectionName is for a Gateway listener or an HTTPRoute rule, not a Service',
    ]);
  });

  test('unknown targets and sections are reported with suggestions', async () => {
    const dir = policyDir({
      'a.yaml': docs(
        ORDERS,
        PUBLIC,
        route('shop', '    - name: browse\n      backendRefs: [ { name: orders } ]'),
        rl('a', '{ targetRef: { kind: HTTPRoute, name: shp }, local: { requests: 1, per: 1s } }'),
        rl('b', '{ targetRef: { kind: Gateway, name: public, sectionName: admn }, local: { requests: 1, per: 1s } }'),
        rl('c', '{ targetRef: { kind: HTTPRoute, name: shop, sectionName: brows }, local: { requests: 1, per: 1s } }'),
      ),
    });
    const { errors, model } = await validateDir(dir);
    assert.equal(model, undefined);
    assert.deepEqual(
      errors.map((e) => `#${e.doc} ${e.path}: ${e.message}`),
      [
        '#4 spec.targetRef.name: unknown HTTPRoute "shp" (did you mean "shop"?)',
        '#5 spec.targetRef.sectionName: Gateway "public" has no listener named "admn" (did you mean "admin"?)',
        '#6 spec.targetRef.sectionName: HTTPRoute "shop" has no rule named "brows" (did you mean "browse"?)',
      ],
    );
  });

  test('two limits on one target: an error naming both files', async () => {
    const dir = policyDir({
      'a.yaml': docs(ORDERS, PUBLIC, rl('one', '{ targetRef: { kind: Gateway, name: public }, local: { requests: 10, per: 1s } }')),
      'b.yaml': rl('two', '{ targetRef: { kind: Gateway, name: public }, local: { requests: 20, per: 1s } }'),
    });
    const { errors } = await validateDir(dir);
    assert.deepEqual(formatted(errors), [
      `${path.join(dir, 'b.yaml')}#1 spec.local: conflicts with RateLimitPolicy "one" in ${path.join(dir, 'a.yaml')}#3, which also sets local for Gateway "public"; one local limit per target (line 4)`,
    ]);
  });
});

describe('FaultInjection validation', () => {
  test('percentages above 100 are refused', () => {
    const r = parsePolicyText(
      route(
        'f',
        '    - backendRefs: [ { name: orders } ]\n      filters: [ { type: FaultInjection, faultInjection: { delay: { fixed: 1s, percent: 101 }, abort: { httpStatus: 503, percent: 150 } } } ]',
      ),
      'p.yaml',
    );
    assert.deepEqual(
      r.errors.map((e) => `${e.path}: ${e.message}`),
      [
        'spec.rules[0].filters[0].faultInjection.delay.percent: must be a percentage from 0 to 100',
        'spec.rules[0].filters[0].faultInjection.abort.percent: must be a percentage from 0 to 100',
      ],
    );
  });
});

describe('translation of traffic policies', () => {
  const files = () => ({
    'mesh.yaml': doc('Mesh', 'default', '{ defaults: { timeout: 9s, retries: { attempts: 1 } } }'),
    'a.yaml': docs(
      ORDERS,
      CARTS,
      PUBLIC,
      route(
        'shop',
        `    - name: own
      matches: [ { path: { value: /own } } ]
      backendRefs: [ { name: orders } ]
      timeout: 2s
      retries: { attempts: 4 }
    - name: inherit
      matches: [ { path: { value: /inherit } } ]
      backendRefs: [ { name: orders } ]
    - name: mesh
      matches: [ { path: { value: /mesh } } ]
      backendRefs: [ { name: carts } ]`,
      ),
    ),
    'b.yaml': docs(
      tp(
        'orders',
        '{ targetRef: { kind: Service, name: orders }, timeout: 3s, retries: { attempts: 2 }, loadBalancer: { type: RingHash, hashOn: { header: X-User } }, connectTimeout: 250ms }',
      ),
      rl('shop', '{ targetRef: { kind: HTTPRoute, name: shop, sectionName: inherit }, local: { requests: 5, per: 1s, by: { header: x-key } } }'),
      rl('admin', '{ targetRef: { kind: Gateway, name: public, sectionName: admin }, local: { requests: 50, per: 1m, by: { clientIP: true } } }'),
      rl('orders-inbound', '{ targetRef: { kind: Service, name: orders }, local: { requests: 7, per: 1s } }'),
    ),
  });

  test('precedence: rule > TrafficPolicy > Mesh defaults', async () => {
    const ir = (await irOf(files())).get('gateway/public')!;
    const routes = ir.listeners[0]!.routeConfig.virtualHosts.flatMap((v) => v.routes);
    const action = (n: string) => routes.find((r) => r.name === n)!.action as IRForward;
    assert.equal(action('shop/own/match-0').timeoutMs, 2000);
    assert.equal(action('shop/own/match-0').retry!.attempts, 4);
    assert.equal(action('shop/inherit/match-0').timeoutMs, 3000);
    assert.equal(action('shop/inherit/match-0').retry!.attempts, 2);
    assert.equal(action('shop/mesh/match-0').timeoutMs, 9000);
    assert.equal(action('shop/mesh/match-0').retry!.attempts, 1);
  });

  test('cluster settings, route hash keys, and where each rate limit lands', async () => {
    const ir = (await irOf(files())).get('gateway/public')!;
    const orders = ir.clusters.find((c) => c.name === 'orders')!;
    assert.equal(orders.connectTimeoutMs, 250);
    assert.deepEqual(orders.loadBalancer, { type: 'RingHash', hashOn: { header: 'X-User' } });
    assert.equal(ir.clusters.find((c) => c.name === 'carts')!.loadBalancer, undefined);
    const [http, admin] = [ir.listeners.find((l) => l.name === 'public/http')!, ir.listeners.find((l) => l.name === 'public/admin')!];
    assert.equal(http.rateLimit, undefined, 'the Gateway limit names the admin listener only');
    assert.equal(admin.rateLimit!.policy, 'admin');
    const routes = http.routeConfig.virtualHosts.flatMap((v) => v.routes);
    assert.deepEqual(routes.find((r) => r.name === 'shop/inherit/match-0')!.rateLimit!.by, { header: 'x-key' });
    assert.equal(routes.find((r) => r.name === 'shop/own/match-0')!.rateLimit, undefined, 'the route limit names one rule');

    const clusterJson = clusterResource(orders);
    assert.equal(clusterJson.lb_policy, 'RING_HASH');
    assert.deepEqual(clusterJson.connect_timeout, { seconds: 0, nanos: 250_000_000 });
    const rc = routeConfigResource(http) as { virtual_hosts: { routes: { name: string; route?: Record<string, unknown> }[] }[] };
    const inherit = rc.virtual_hosts[0]!.routes.find((r) => r.name === 'shop/inherit/match-0')!;
    assert.deepEqual(inherit.route!.hash_policy, [{ header: { header_name: 'x-user' } }]);
    assert.deepEqual(inherit.route!.rate_limits, [
      { stage: { value: 0 }, actions: [{ request_headers: { header_name: 'x-key', descriptor_key: 'signalbox_key' } }] },
    ]);
    const mesh = rc.virtual_hosts[0]!.routes.find((r) => r.name === 'shop/mesh/match-0')!;
    assert.equal(mesh.route!.hash_policy, undefined);
  });

  test('rate limit filters sit after access control and before fault injection and the router', async () => {
    const ir = (await irOf(files())).get('gateway/public')!;
    const names = (l: (typeof ir.listeners)[number]) =>
      ((listenerResource(l) as any).filter_chains[0].filters[0].typed_config.http_filters as { name: string }[]).map((f) => f.name);
    assert.deepEqual(names(ir.listeners.find((l) => l.name === 'public/admin')!), [
      'signalbox.local_ratelimit.listener',
      'signalbox.local_ratelimit.route',
      'envoy.filters.http.router',
    ]);
    assert.deepEqual(names(ir.listeners.find((l) => l.name === 'public/http')!), ['signalbox.local_ratelimit.route', 'envoy.filters.http.router']);
  });

  test("a Service target limits its sidecars' inbound listener only", async () => {
    const group = sidecarGroup({ service: 'orders', appPort: 9001, inboundPort: 21001, outboundPort: 15001 });
    const irs = await irOf(files(), [group]);
    const sidecar = irs.get(group);
    assert.ok(sidecar, 'the sidecar group is translated');
    const inbound = sidecar.listeners.find((l) => l.direction === 'inbound')!;
    assert.equal(inbound.rateLimit!.policy, 'orders-inbound');
    assert.equal(inbound.rateLimit!.requests, 7);
    const outbound = sidecar.listeners.find((l) => l.direction === 'outbound')!;
    assert.equal(outbound.rateLimit, undefined);
    // Traffic to a destination no HTTPRoute describes still follows its TrafficPolicy.
    const toOrders = outbound.routeConfig.virtualHosts.find((v) => v.name === 'orders')!.routes[0]!.action as IRForward;
    assert.equal(toOrders.timeoutMs, 3000);
    assert.equal(toOrders.retry!.attempts, 2);
    assert.deepEqual(toOrders.hashOn, [{ header: 'X-User' }]);
    const toCarts = outbound.routeConfig.virtualHosts.find((v) => v.name === 'carts')!.routes[0]!.action as IRForward;
    assert.equal(toCarts.timeoutMs, 9000, 'Mesh default');
    // The sidecar's cluster for its own app is not a destination: no TrafficPolicy settings on it.
    const local = sidecar.clusters.find((c) => c.static);
    assert.ok(local);
    assert.equal(local.loadBalancer, undefined);
  });
});
