// RateLimitPolicy `global`: precise validation errors for bad input (nothing applied), the claim a
// limit counts by must be forwarded by a JWTPolicy on the same target, conflicts, and what the
// translator makes of it (descriptors per route, one filter per failure mode, the cluster, the
// proxy's identity).
import assert from 'node:assert/strict';
import path from 'node:path';
import { after, describe, test } from 'node:test';
import { formatPolicyError, type PolicyError } from '../../src/errors.js';
import { parsePolicyText } from '../../src/sources/files/loader.js';
import { translate } from '../../src/translate/gateway.js';
import { RATELIMIT_CLUSTER } from '../../src/translate/ratelimit.js';
import { listenerResource } from '../../src/xds/translator/listener.js';
import { routeConfigResource } from '../../src/xds/translator/route.js';
import { doc, docs, policyDir, removePolicyDirs, validateDir } from './policy-dir.js';

after(removePolicyDirs);

const formatted = (errors: PolicyError[]) => errors.map(formatPolicyError);
const ORDERS = doc('Service', 'orders', '{ port: 8080, endpoints: [ { address: 127.0.0.1, port: 9001 } ] }');
const PUBLIC = doc('Gateway', 'public', '{ listeners: [ { name: http, port: 8080, protocol: HTTP } ] }');
const ROUTE = doc(
  'HTTPRoute',
  'shop',
  '  parentRefs: [ { kind: Gateway, name: public } ]\n  rules:\n    - name: browse\n      matches: [ { path: { value: /browse } } ]\n      backendRefs: [ { name: orders } ]\n    - matches: [ { path: { value: /other } } ]\n      backendRefs: [ { name: orders } ]',
);
const JWT = (target: string, forward: string) =>
  doc(
    'JWTPolicy',
    'users',
    `{ targetRef: ${target}, issuer: https://auth.example.com/, jwks: { inline: { keys: [ { kty: EC, crv: P-256, kid: k1, x: f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU, y: x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0 } ] } }, forwardClaims: ${forward} }`,
  );

function schemaErrors(spec: string): string[] {
  const r = parsePolicyText(doc('RateLimitPolicy', 'p', spec), 'p.yaml');
  return r.errors.map((e) => `${e.path}: ${e.message}`);
}

describe('RateLimitPolicy global: schema', () => {
  const t = 'targetRef: { kind: Gateway, name: public }';
  test('a window is a unit word; durations get a hint', () => {
    const msg = 'must be one of second, minute, hour, day (a global limit counts in fixed windows of one unit)';
    assert.deepEqual(schemaErrors(`{ ${t}, global: { limits: [ { requests: 10, per: 1s } ] } }`), [
      `spec.global.limits[0].per: ${msg} (did you mean "second"?)`,
    ]);
    assert.deepEqual(schemaErrors(`{ ${t}, global: { limits: [ { requests: 10, per: minutes } ] } }`), [
      `spec.global.limits[0].per: ${msg} (did you mean "minute"?)`,
    ]);
    assert.deepEqual(schemaErrors(`{ ${t}, global: { limits: [ { requests: 10, per: 24h } ] } }`), [`spec.global.limits[0].per: ${msg} (did you mean "day"?)`]);
    assert.deepEqual(schemaErrors(`{ ${t}, global: { limits: [ { requests: 10, per: fortnight } ] } }`), [`spec.global.limits[0].per: ${msg}`]);
  });
  test('keys, counts, failure modes and empty sections', () => {
    assert.deepEqual(schemaErrors(`{ ${t}, global: { limits: [ { requests: 10, per: second, by: { header: x-key, path: true } } ] } }`), [
      'spec.global.limits[0].by: give exactly one of header, clientIP, path or claim',
    ]);
    assert.deepEqual(schemaErrors(`{ ${t}, global: { limits: [ { requests: 0, per: second } ] } }`), [
      'spec.global.limits[0].requests: must be greater than zero',
    ]);
    assert.deepEqual(schemaErrors(`{ ${t}, global: { failureMode: open, limits: [ { requests: 1, per: second } ] } }`), [
      'spec.global.failureMode: must be one of "allow", "deny"',
    ]);
    assert.deepEqual(schemaErrors(`{ ${t}, global: { limits: [] } }`), ['spec.global.limits: give at least one limit']);
    assert.deepEqual(schemaErrors(`{ ${t} }`), ['spec: give local, global or both']);
    assert.deepEqual(schemaErrors(`{ ${t}, global: { limits: [ { requests: 1, per: second, by: { claim: "a b" } } ] } }`), [
      'spec.global.limits[0].by.claim: must be a JWT claim name (letters, digits, "_", ".", ":", "-")',
    ]);
    // The local shape written under global: every misplaced field is named.
    assert.deepEqual(schemaErrors(`{ ${t}, global: { requests: 1, per: second } }`), [
      'spec.global.limits: required',
      'spec.global.requests: unknown field "requests"',
      'spec.global.per: unknown field "per"',
    ]);
  });
});

describe('RateLimitPolicy global: model', () => {
  test('a claim must be forwarded by a JWTPolicy on the same target', async () => {
    const dir = policyDir({
      'a.yaml': docs(ORDERS, PUBLIC, ROUTE, JWT('{ kind: HTTPRoute, name: shop, sectionName: browse }', '[ { claim: tenant, header: x-tenant } ]')),
      'b.yaml': docs(
        doc(
          'RateLimitPolicy',
          'by-sub',
          '{ targetRef: { kind: HTTPRoute, name: shop, sectionName: browse }, global: { limits: [ { requests: 5, per: minute, by: { claim: sub } } ] } }',
        ),
        doc(
          'RateLimitPolicy',
          'gw',
          '{ targetRef: { kind: Gateway, name: public }, global: { limits: [ { requests: 5, per: minute, by: { claim: tenant } } ] } }',
        ),
      ),
    });
    const { errors } = await validateDir(dir);
    assert.deepEqual(formatted(errors), [
      `${path.join(dir, 'b.yaml')}#1 spec.global.limits[0].by.claim: no JWTPolicy on HTTPRoute "shop" rule "browse" forwards claim "sub" (JWTPolicy "users" on it forwards only "tenant"); add forwardClaims: [{ claim: sub, header: x-... }] to a JWTPolicy with the same targetRef (line 4)`,
      `${path.join(dir, 'b.yaml')}#2 spec.global.limits[0].by.claim: no JWTPolicy on Gateway "public" forwards claim "tenant" (no JWTPolicy targets it); add forwardClaims: [{ claim: tenant, header: x-... }] to a JWTPolicy with the same targetRef (line 9)`,
    ]);
  });

  test('two globals on one target conflict; a local and a global on one target do not', async () => {
    const dir = policyDir({
      'a.yaml': docs(
        ORDERS,
        PUBLIC,
        ROUTE,
        doc(
          'RateLimitPolicy',
          'one',
          '{ targetRef: { kind: Gateway, name: public }, local: { requests: 10, per: 1s }, global: { limits: [ { requests: 10, per: second } ] } }',
        ),
      ),
      'b.yaml': docs(
        doc('RateLimitPolicy', 'two', '{ targetRef: { kind: Gateway, name: public }, global: { limits: [ { requests: 20, per: second } ] } }'),
        doc(
          'RateLimitPolicy',
          'three',
          '{ targetRef: { kind: HTTPRoute, name: shop }, global: { limits: [ { requests: 20, per: second }, { requests: 30, per: second } ] } }',
        ),
      ),
    });
    const { errors } = await validateDir(dir);
    const text = formatted(errors);
    assert.equal(text.length, 2, text.join('\n'));
    assert.match(
      text[0]!,
      /b\.yaml#1 spec\.global: conflicts with RateLimitPolicy "one" in .*a\.yaml#4, which also sets global for Gateway "public"; one global limit per target/,
    );
    assert.match(text[1]!, /b\.yaml#2 spec\.global\.limits\[1\]: counts per second by the same key as limits\[0\]; give one limit per window and key/);
  });
});

describe('RateLimitPolicy global: translation', () => {
  test('descriptors per route, a filter per failure mode after the local one, the cluster and an identity', async () => {
    const dir = policyDir({
      'a.yaml': docs(
        ORDERS,
        PUBLIC,
        ROUTE,
        JWT('{ kind: HTTPRoute, name: shop, sectionName: browse }', '[ { claim: sub, header: x-user-id } ]'),
        doc(
          'RateLimitPolicy',
          'gw',
          '{ targetRef: { kind: Gateway, name: public }, local: { requests: 100, per: 1s }, global: { failureMode: deny, limits: [ { requests: 10, per: second, by: { header: X-Api-Key } } ] } }',
        ),
        doc(
          'RateLimitPolicy',
          'users',
          '{ targetRef: { kind: HTTPRoute, name: shop, sectionName: browse }, global: { limits: [ { requests: 5, per: hour, by: { claim: sub } } ] } }',
        ),
      ),
    });
    const { errors, model } = await validateDir(dir);
    assert.deepEqual(formatted(errors), []);
    const ir = translate(model!).get('gateway/public')!;
    assert.ok(ir.identity, 'the group gets an identity to present to the rate-limit service');
    const cluster = ir.clusters.find((c) => c.name === RATELIMIT_CLUSTER)!;
    assert.deepEqual(cluster.static, { address: '127.0.0.1', port: 18004 });
    assert.equal(cluster.upstreamTls?.spiffeId, 'spiffe://signalbox.local/signalbox/ratelimit');
    const listener = listenerResource(ir.listeners[0]!) as any;
    const hcm = listener.filter_chains?.[0]?.filters[0]?.typed_config ?? listener.default_filter_chain.filters[0].typed_config;
    const names = hcm.http_filters.map((f: { name: string }) => f.name);
    assert.deepEqual(
      names.filter((n: string) => /ratelimit/.test(n)),
      ['signalbox.local_ratelimit.listener', 'signalbox.ratelimit.allow', 'signalbox.ratelimit.deny'],
    );
    const deny = hcm.http_filters.find((f: { name: string }) => f.name === 'signalbox.ratelimit.deny').typed_config;
    assert.equal(deny.failure_mode_deny, true);
    assert.equal(deny.stage, 3);
    const routes = (routeConfigResource(ir.listeners[0]!) as any).virtual_hosts[0].routes;
    const browse = routes.find((r: { name: string }) => r.name.startsWith('shop/browse'));
    assert.deepEqual(browse.route.rate_limits, [
      {
        stage: { value: 3 },
        actions: [
          { generic_key: { descriptor_key: 'signalbox_limit', descriptor_value: 'gw/0' } },
          { request_headers: { header_name: 'x-api-key', descriptor_key: 'header' } },
        ],
      },
      {
        stage: { value: 2 },
        actions: [
          { generic_key: { descriptor_key: 'signalbox_limit', descriptor_value: 'users/0' } },
          { request_headers: { header_name: 'x-user-id', descriptor_key: 'claim' } },
        ],
      },
    ]);
    const other = routes.find((r: { name: string }) => r.name.startsWith('shop/#1'));
    assert.deepEqual(
      other.route.rate_limits.map((e: { stage: { value: number } }) => e.stage.value),
      [3],
    );
  });

  test('no global section: no filter, no cluster', async () => {
    const { model } = await validateDir(
      policyDir({
        'a.yaml': docs(ORDERS, PUBLIC, ROUTE, doc('RateLimitPolicy', 'l', '{ targetRef: { kind: Gateway, name: public }, local: { requests: 1, per: 1s } }')),
      }),
    );
    const ir = translate(model!).get('gateway/public')!;
    assert.equal(
      ir.clusters.some((c) => c.name === RATELIMIT_CLUSTER),
      false,
    );
    assert.equal(ir.listeners[0]!.globalRateLimit, undefined);
  });
});
