// JWTPolicy from YAML to Envoy JSON: schema and model errors (with field paths), which listeners get
// the ext_authz filter, per-route context extensions or `disabled`, the authz cluster, filter
// order, the serve flags.
import assert from 'node:assert/strict';
import { after, describe, test } from 'node:test';
import { compileDir, type CompiledGroups } from '../../src/cli/compile.js';
import { resolveServeConfig } from '../../src/config/settings.js';
import { ErrorCode } from '../../src/errors.js';
import { translate } from '../../src/translate/gateway.js';
import type { IRProxyConfig } from '../../src/ir/types.js';
import { sidecarGroup } from '../../src/ir/types.js';
import { AUTHZ_CLUSTER } from '../../src/translate/jwt.js';
import { JWT_CHECK_SCRIPT } from '../../src/xds/translator/filters/jwt-fast.js';
import { proxiesEndpoint } from '../../src/authz/index.js';
import { makeKey } from '../helpers/jwks-server.js';
import { doc, docs, policyDir, removePolicyDirs, validateDir } from './policy-dir.js';

after(removePolicyDirs);

type Json = Record<string, any>;

const BASE = docs(
  doc('Service', 'app', '{ port: 8080, endpoints: [ { address: 127.0.0.1, port: 9001 } ] }'),
  doc('Service', 'orders', '{ port: 8080, endpoints: [ { address: 127.0.0.1, port: 9002, sidecarPort: 21002 } ] }'),
  doc('Service', 'db', '{ protocol: tcp, port: 5432, endpoints: [ { address: 127.0.0.1, port: 5432 } ] }'),
  doc('Gateway', 'public', '{ listeners: [ { name: http, port: 8080, protocol: HTTP }, { name: admin, port: 8081, protocol: HTTP } ] }'),
  doc(
    'HTTPRoute',
    'api',
    `
  parentRefs: [ { kind: Gateway, name: public } ]
  rules:
    - { name: secure, matches: [ { path: { value: /secure } } ], backendRefs: [ { name: app } ] }
    - { name: open, matches: [ { path: { value: /open } } ], backendRefs: [ { name: app } ] }`,
  ),
);

function jwt(name: string, target: string, extra = '', jwks = '{ uri: "https://idp.example/jwks.json" }'): string {
  return doc('JWTPolicy', name, `\n  targetRef: ${target}\n  issuer: https://idp.example/\n  jwks: ${jwks}\n${extra}`);
}

async function errorsOf(files: Record<string, string>): Promise<[string, string, string][]> {
  const r = await validateDir(policyDir(files));
  return r.errors.map((e) => [e.code, e.path ?? '', e.message]);
}

async function compile(files: Record<string, string>): Promise<CompiledGroups> {
  const r = await compileDir(policyDir(files));
  if (!r.ok) assert.fail(r.errors.map((e) => `${e.path}: ${e.message}`).join('\n'));
  return r.groups;
}

function get(groups: CompiledGroups, group: string, type: string, name: string): Json {
  const r = groups[group]?.[type]?.find((x) => x.name === name);
  assert.ok(r, `${group} has no ${type} ${name}`);
  return r.resource as Json;
}

const filtersOf = (l: Json): Json[] => l.filter_chains[0].filters[0].typed_config.http_filters;
const perRoute = (rc: Json, route: string): Json | undefined =>
  rc.virtual_hosts.flatMap((v: Json) => v.routes).find((r: Json) => r.name === route)?.typed_per_filter_config?.['signalbox.ext_authz'];

describe('JWTPolicy validation', () => {
  test('a valid policy loads with its defaults', async () => {
    const r = await validateDir(policyDir({ 'a.yaml': docs(BASE, jwt('users', '{ kind: HTTPRoute, name: api }')) }));
    assert.deepEqual(r.errors, []);
    const p = r.model!.jwt!.policies.get('users')!;
    assert.deepEqual(p.from, [{ header: 'authorization', prefix: 'Bearer ' }]);
    assert.equal(p.clockSkewMs, 30_000);
    assert.equal(p.optional, false);
    assert.equal(p.maxTokenBytes, 8192);
    assert.equal(p.unavailableStatus, 503);
    assert.deepEqual(p.algorithms, ['RS256', 'RS384', 'RS512', 'PS256', 'PS384', 'PS512', 'ES256', 'ES384', 'EdDSA']);
    assert.deepEqual(p.jwks, {
      kind: 'uri',
      uri: 'https://idp.example/jwks.json',
      timeoutMs: 5000,
      minCacheMs: 60_000,
      maxCacheMs: 86_400_000,
      cooldownMs: 10_000,
    });
  });

  test('HMAC and none are not algorithms; http JWKS only on loopback; one key source; sane sources and rules', async () => {
    const errors = await errorsOf({
      'a.yaml': docs(
        BASE,
        jwt('a', '{ kind: HTTPRoute, name: api }', '  algorithms: [RS256, HS256, none]\n'),
        jwt('b', '{ kind: HTTPRoute, name: api }', '', '{ uri: "http://idp.example/jwks.json" }'),
        jwt('c', '{ kind: HTTPRoute, name: api }', '', '{ uri: "https://idp.example/jwks.json", file: k.json }'),
        jwt(
          'd',
          '{ kind: HTTPRoute, name: api }',
          '  from: [ { header: x-token, cookie: s }, { cookie: s, prefix: "B " } ]\n  require: [ { claim: role, in: [a], equals: b } ]\n',
        ),
        jwt('e', '{ kind: HTTPRoute, name: api }', '  forwardClaims: [ { claim: sub, header: Host } ]\n  clockSkew: 1h\n'),
        jwt('f', '{ kind: HTTPRoute, name: api }', '', '{ file: k.json, cacheDuration: { min: 1s } }'),
        jwt('g', '{ kind: HTTPRoute, name: api }', '', '{ uri: "not a url" }'),
      ),
    });
    const has = (path: string, re: RegExp) =>
      assert.ok(
        errors.some(([c, p, m]) => c === ErrorCode.SCHEMA && p === path && re.test(m)),
        `no error at ${path} matching ${re}:\n${errors.map((e) => e.join(' ')).join('\n')}`,
      );
    has('spec.algorithms[1]', /HMAC needs a shared secret.*use one of RS256/);
    has('spec.algorithms[2]', /"none" means no signature at all/);
    has('spec.jwks.uri', /must be https/);
    has('spec.jwks', /exactly one of uri, file or inline/);
    has('spec.from[0]', /exactly one of header, cookie or query/);
    has('spec.from[1].prefix', /only a header has a prefix/);
    has('spec.require[0]', /exactly one of contains, in or equals/);
    has('spec.forwardClaims[0].header', /must not be one of/);
    has('spec.clockSkew', /at most 5m/);
    has('spec.jwks.cacheDuration', /only used with uri/);
    assert.ok(
      errors.some(([, p, m]) => p === 'spec.jwks.uri' && /must be an http\(s\) URL/.test(m)),
      'a malformed URL is an error, not a crash',
    );
  });

  test('targets must exist (with suggestions), sections too; tcp Services cannot be targets', async () => {
    const errors = await errorsOf({
      'a.yaml': docs(
        BASE,
        jwt('a', '{ kind: HTTPRoute, name: apx }'),
        jwt('b', '{ kind: Gateway, name: public, sectionName: htp }'),
        jwt('c', '{ kind: Service, name: db }'),
      ),
    });
    const msgs = errors.map((e) => `${e[0]} ${e[1]}: ${e[2]}`);
    assert.ok(msgs.includes('SB_UNKNOWN_REFERENCE spec.targetRef.name: unknown HTTPRoute "apx" (did you mean "api"?)'), msgs.join('\n'));
    assert.ok(
      msgs.includes('SB_UNKNOWN_REFERENCE spec.targetRef.sectionName: Gateway "public" has no listener named "htp" (did you mean "http"?)'),
      msgs.join('\n'),
    );
    assert.ok(
      msgs.some((m) => m.startsWith('SB_CONFLICT spec.targetRef.name: Service "db" speaks tcp')),
      msgs.join('\n'),
    );
    const schema = (await errorsOf({ 'a.yaml': docs(BASE, jwt('d', '{ kind: Service, name: app, sectionName: x }')) })).map((e) => `${e[0]} ${e[1]}: ${e[2]}`);
    assert.deepEqual(schema, ['SB_SCHEMA spec.targetRef.sectionName: sectionName is for a Gateway listener or an HTTPRoute rule, not a Service']);
  });

  test('key sets in files and inline are checked: private keys, symmetric keys, no usable key, unreadable file', async () => {
    const rsa = await makeKey('RS256', 'r');
    const ec = await makeKey('ES256', 'e');
    const { exportJWK } = await import('jose');
    const priv = { ...(await exportJWK(rsa.privateKey)), kid: 'p' };
    const errors = await errorsOf({
      'keys/good.json': JSON.stringify({ keys: [rsa.jwk] }),
      'keys/private.json': JSON.stringify({ keys: [priv] }),
      'a.yaml': docs(
        BASE,
        jwt('ok', '{ kind: HTTPRoute, name: api }', '', '{ file: keys/good.json }'),
        jwt('priv', '{ kind: HTTPRoute, name: api }', '', '{ file: keys/private.json }'),
        jwt('oct', '{ kind: HTTPRoute, name: api }', '', '{ inline: { keys: [ { kty: oct, k: c2VjcmV0 } ] } }'),
        jwt('mismatch', '{ kind: HTTPRoute, name: api }', '  algorithms: [ES256]\n', `{ inline: ${JSON.stringify({ keys: [rsa.jwk] })} }`),
        jwt('missing', '{ kind: HTTPRoute, name: api }', '', '{ file: keys/nope.json }'),
        jwt('inline-ok', '{ kind: HTTPRoute, name: api }', '', `{ inline: ${JSON.stringify({ keys: [ec.jwk] })} }`),
      ),
    });
    const msgs = errors.map((e) => `${e[1]}: ${e[2]}`);
    assert.equal(msgs.length, 4, msgs.join('\n'));
    assert.ok(
      msgs.some((m) => /^spec\.jwks\.file: keys\/private\.json: keys\[0\]: holds private key material \(d, p, q, dp, dq, qi\)/.test(m)),
      msgs.join('\n'),
    );
    assert.ok(
      msgs.some((m) => /^spec\.jwks\.inline: keys\[0\]: symmetric \(oct\) keys are not accepted/.test(m)),
      msgs.join('\n'),
    );
    assert.ok(
      msgs.some((m) => /^spec\.jwks\.inline: no key in the set can verify any of the policy's algorithms \(ES256\)/.test(m)),
      msgs.join('\n'),
    );
    assert.ok(
      msgs.some((m) => /^spec\.jwks\.file: cannot read keys\/nope\.json .*ENOENT/.test(m)),
      msgs.join('\n'),
    );
  });

  test('two policies forwarding different claims into one header on one target conflict', async () => {
    const errors = await errorsOf({
      'a.yaml': docs(
        BASE,
        jwt('a', '{ kind: HTTPRoute, name: api }', '  forwardClaims: [ { claim: sub, header: x-user } ]\n'),
        jwt('b', '{ kind: HTTPRoute, name: api }', '  forwardClaims: [ { claim: email, header: X-User } ]\n'),
        jwt('c', '{ kind: HTTPRoute, name: api }', '  forwardClaims: [ { claim: sub, header: x-user } ]\n'),
      ),
    });
    assert.equal(errors.length, 1, JSON.stringify(errors));
    assert.equal(errors[0]![0], ErrorCode.CONFLICT);
    assert.match(errors[0]![2], /conflicts with JWTPolicy "a" in .*a\.yaml#6, which forwards claim "sub" into header "x-user"/);
  });
});

describe('JWTPolicy translation', () => {
  test('a rule policy: ext_authz on that listener only; the rule names its policies, other routes disable the check', async () => {
    const groups = await compile({
      'a.yaml': docs(
        BASE,
        jwt('users', '{ kind: HTTPRoute, name: api, sectionName: secure }', '  from: [ { header: x-token }, { cookie: s }, { query: t } ]\n'),
        jwt('audit', '{ kind: HTTPRoute, name: api, sectionName: secure }'),
      ),
    });
    const http = get(groups, 'gateway/public', 'listener', 'public/http');
    const names = filtersOf(http).map((f) => f.name);
    assert.ok(names.includes('signalbox.ext_authz'));
    assert.equal(names.at(-1), 'envoy.filters.http.router');
    const authz = filtersOf(http).find((f) => f.name === 'signalbox.ext_authz')!.typed_config;
    assert.equal(authz.failure_mode_allow, false);
    assert.deepEqual(authz.status_on_error, { code: 'ServiceUnavailable' });
    assert.equal(authz.grpc_service.envoy_grpc.cluster_name, AUTHZ_CLUSTER);
    assert.deepEqual(authz.grpc_service.timeout, { seconds: 2, nanos: 0 });
    assert.deepEqual(
      authz.allowed_headers.patterns.map((p: Json) => p.exact),
      ['authorization', 'cookie', 'x-token'],
    );
    const rc = get(groups, 'gateway/public', 'route', 'public/http');
    assert.deepEqual(perRoute(rc, 'api/secure/match-0')?.check_settings, { context_extensions: { 'signalbox.jwt.policies': 'audit,users' } });
    assert.equal(perRoute(rc, 'api/open/match-0')?.disabled, true);
    // The other listener of the gateway gets the policy too (the route is attached to both).
    assert.ok(filtersOf(get(groups, 'gateway/public', 'listener', 'public/admin')).some((f) => f.name === 'signalbox.ext_authz'));
    const cluster = get(groups, 'gateway/public', 'cluster', AUTHZ_CLUSTER);
    assert.equal(cluster.type, 'STATIC');
    assert.deepEqual(cluster.load_assignment.endpoints[0].lb_endpoints[0].endpoint.address.socket_address, { address: '127.0.0.1', port_value: 18002 });
    assert.ok(cluster.typed_extension_protocol_options, 'HTTP/2 to the gRPC service');
    // Over TLS: the proxy's own certificate and the mesh roots (SDS), the service's SPIFFE ID verified, ALPN h2.
    assert.equal(cluster.transport_socket.name, 'envoy.transport_sockets.tls');
    const tls = cluster.transport_socket.typed_config;
    assert.equal(tls['@type'], 'type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext');
    assert.deepEqual(
      tls.common_tls_context.tls_certificate_sds_secret_configs.map((s: Json) => s.name),
      ['signalbox/identity'],
    );
    assert.equal(tls.common_tls_context.combined_validation_context.validation_context_sds_secret_config.name, 'signalbox/trust-bundle');
    assert.deepEqual(tls.common_tls_context.combined_validation_context.default_validation_context.match_typed_subject_alt_names, [
      { san_type: 'URI', matcher: { exact: 'spiffe://signalbox.local/signalbox/authz' } },
    ]);
    assert.deepEqual(tls.common_tls_context.alpn_protocols, ['h2']);
  });

  test('the authz cluster gives the group an identity (its secrets) even with mesh mTLS off; plain text (insecure) needs none', async () => {
    const off = doc('Mesh', 'default', '{ mtls: { mode: disabled } }');
    const r = await validateDir(
      policyDir({ 'a.yaml': docs(BASE, off, jwt('edge', '{ kind: Gateway, name: public }'), jwt('svc', '{ kind: Service, name: orders }')) }),
    );
    assert.deepEqual(r.errors, []);
    const side = sidecarGroup({ service: 'orders', appPort: 9002, inboundPort: 21002, outboundPort: 15001 });
    const tls = { address: '127.0.0.1', port: 18002, tls: { serverId: 'spiffe://signalbox.local/signalbox/authz' } };
    const irs = translate(r.model!, [side, `${side}+jwt-module`], { authz: tls });
    assert.equal(irs.get('gateway/public')!.identity, 'spiffe://signalbox.local/gateway/public');
    assert.equal(irs.get(side)!.identity, 'spiffe://signalbox.local/service/orders');
    assert.equal(irs.get(`${side}+jwt-module`)!.identity, 'spiffe://signalbox.local/service/orders');
    assert.deepEqual(irs.get('gateway/public')!.clusters.find((c) => c.name === AUTHZ_CLUSTER)?.upstreamTls, {
      spiffeId: 'spiffe://signalbox.local/signalbox/authz',
    });
    // No JWTPolicy on a group: no cluster, and no identity with mTLS off.
    const other = await validateDir(policyDir({ 'a.yaml': docs(BASE, off, jwt('svc', '{ kind: Service, name: orders }')) }));
    assert.equal(translate(other.model!, [], { authz: tls }).get('gateway/public')!.identity, undefined);
    // Plain text (serve --xds-insecure): no transport socket, no identity needed.
    const plain = translate(r.model!, [side], { authz: { address: '127.0.0.1', port: 18002 } });
    assert.equal(plain.get('gateway/public')!.identity, undefined);
    const cluster = plain.get('gateway/public')!.clusters.find((c) => c.name === AUTHZ_CLUSTER)!;
    assert.equal(cluster.upstreamTls, undefined);
    const { clusterResource } = await import('../../src/xds/translator/cluster.js');
    assert.equal(clusterResource(cluster).transport_socket, undefined);
    assert.ok(clusterResource(irs.get(side)!.clusters.find((c) => c.name === AUTHZ_CLUSTER)!).transport_socket);
  });

  test('a Gateway-listener policy covers that listener only; no policy, no filter and no cluster', async () => {
    const groups = await compile({
      'a.yaml': docs(BASE, jwt('edge', '{ kind: Gateway, name: public, sectionName: admin }', '  from: [ { cookie: session } ]\n')),
    });
    assert.ok(
      !filtersOf(get(groups, 'gateway/public', 'listener', 'public/http')).some((f) => f.name === 'signalbox.ext_authz' || f.name === 'signalbox.jwt_check'),
    );
    assert.ok(filtersOf(get(groups, 'gateway/public', 'listener', 'public/admin')).some((f) => f.name === 'signalbox.ext_authz'));
    const rc = get(groups, 'gateway/public', 'route', 'public/admin');
    assert.equal(perRoute(rc, 'api/open/match-0')?.check_settings.context_extensions['signalbox.jwt.policies'], 'edge');
    assert.equal(perRoute(get(groups, 'gateway/public', 'route', 'public/http'), 'api/open/match-0'), undefined);
    // The same policy reading a header: the fast path's script on that listener instead.
    const fast = await compile({ 'a.yaml': docs(BASE, jwt('edge', '{ kind: Gateway, name: public, sectionName: admin }')) });
    assert.deepEqual(
      filtersOf(get(fast, 'gateway/public', 'listener', 'public/admin')).map((f) => f.name),
      ['signalbox.jwt_check', 'envoy.filters.http.router'],
    );
    assert.ok(!filtersOf(get(fast, 'gateway/public', 'listener', 'public/http')).some((f) => f.name === 'signalbox.jwt_check'));
    const none = await compile({ 'a.yaml': BASE });
    assert.ok(!none['gateway/public']!.cluster!.some((c) => c.name === AUTHZ_CLUSTER));
  });

  test('a Service policy: the inbound listener of its sidecars, after RBAC; the address for proxies is configurable', async () => {
    const r = await validateDir(
      policyDir({
        'a.yaml': docs(
          BASE,
          jwt('svc', '{ kind: Service, name: orders }'),
          doc('AccessPolicy', 'o', '{ targetRef: { kind: Service, name: orders }, default: Allow, rules: [ { from: [ { service: app } ], action: Deny } ] }'),
        ),
      }),
    );
    assert.deepEqual(r.errors, []);
    const group = sidecarGroup({ service: 'orders', appPort: 9002, inboundPort: 21002, outboundPort: 15001 });
    const ir = translate(r.model!, [group], { authz: { address: '10.0.0.5', port: 19002 } }).get(group)!;
    const inbound = ir.listeners.find((l) => l.name === 'inbound')!;
    const outbound = ir.listeners.find((l) => l.name === 'outbound')!;
    assert.equal(inbound.routeConfig.virtualHosts[0]!.routes[0]!.jwt?.fast?.policy, 'svc');
    assert.equal(inbound.extAuthz, undefined, 'every route of it has the fast path');
    assert.equal(outbound.extAuthz, undefined);
    assert.deepEqual(ir.clusters.find((c) => c.name === AUTHZ_CLUSTER)?.static, { address: '10.0.0.5', port: 19002 });
    const { httpFilters } = await import('../../src/xds/translator/filters/index.js');
    assert.deepEqual(
      httpFilters(inbound).map((f) => f.name),
      ['signalbox.rbac.deny', 'signalbox.jwt_check', 'envoy.filters.http.router'],
    );
    const slow = translate(r.model!, [group], { jwtFastPath: false })
      .get(group)!
      .listeners.find((l) => l.name === 'inbound')!;
    assert.deepEqual(
      httpFilters(slow).map((f) => f.name),
      ['signalbox.rbac.deny', 'signalbox.ext_authz', 'envoy.filters.http.router'],
    );
  });

  test('proxies that load the compiled filter: their node metadata puts them in the +jwt-module variant of their group, which alone gets the filter', async () => {
    const r = await validateDir(policyDir({ 'a.yaml': docs(BASE, jwt('svc', '{ kind: Service, name: orders }')) }));
    assert.deepEqual(r.errors, []);
    const group = sidecarGroup({ service: 'orders', appPort: 9002, inboundPort: 21002, outboundPort: 15001 });
    const { identify, NodeError } = await import('../../src/xds/server/node.js');
    const meta = (extra: Record<string, string>) => ({
      fields: Object.fromEntries(
        Object.entries({
          'signalbox.role': 'sidecar',
          'signalbox.service': 'orders',
          'signalbox.app_port': '9002',
          'signalbox.inbound_port': '21002',
          ...extra,
        }).map(([k, v]) => [k, { stringValue: v }]),
      ),
    });
    assert.equal(identify({ id: 'a', metadata: meta({}) }).group, group);
    const variant = identify({ id: 'b', metadata: meta({ 'signalbox.jwt_module': 'signalbox_jwt_check' }) }).group;
    assert.equal(variant, `${group}+jwt-module`);
    assert.throws(() => identify({ id: 'c', metadata: meta({ 'signalbox.jwt_module': 'other' }) }), NodeError);
    const irs = translate(r.model!, [group, variant]);
    const { httpFilters } = await import('../../src/xds/translator/filters/index.js');
    // The Envoy filter each group's listener gets for its JWT check.
    const checkFilter = (ir: IRProxyConfig, listener: string) =>
      (
        httpFilters(ir.listeners.find((l) => l.name === listener)!).find((f) => f.name === 'signalbox.jwt_check')?.typed_config as
          | { '@type'?: string }
          | undefined
      )?.['@type'];
    const LUA = 'type.googleapis.com/envoy.extensions.filters.http.lua.v3.Lua';
    const MODULE = 'type.googleapis.com/envoy.extensions.filters.http.dynamic_modules.v3.DynamicModuleFilter';
    const fastOf = (g: string) => irs.get(g)!.listeners.find((l) => l.name === 'inbound')!.routeConfig.virtualHosts[0]!.routes[0]!.jwt?.fast;
    assert.equal(checkFilter(irs.get(group)!, 'inbound'), LUA, 'the Lua script for proxies that did not say they load the module');
    assert.equal(checkFilter(irs.get(variant)!, 'inbound'), MODULE);
    assert.equal(checkFilter(irs.get(variant)!, 'outbound'), MODULE, 'kept on a listener without checks');
    assert.equal(checkFilter(irs.get(group)!, 'outbound'), undefined);
    assert.equal(irs.get(variant)!.group, variant);
    assert.equal(fastOf(variant)?.version, fastOf(group)?.version);
    // The variant alone is enough to build it (no proxy of the base group needed); a gateway's too.
    assert.ok(translate(r.model!, [variant]).has(variant));
    const gw = await validateDir(policyDir({ 'a.yaml': docs(BASE, jwt('edge', '{ kind: Gateway, name: public }')) }));
    assert.deepEqual(gw.errors, []);
    const gwIrs = translate(gw.model!, ['gateway/public+jwt-module']);
    assert.equal(checkFilter(gwIrs.get('gateway/public')!, 'public/http'), LUA);
    assert.equal(checkFilter(gwIrs.get('gateway/public+jwt-module')!, 'public/http'), MODULE);
    const { bootstrapConfig } = await import('../../src/cli/bootstrap.js');
    const node = bootstrapConfig({ gateway: 'gw', xdsAddress: '127.0.0.1:18000', jwtModule: true }).node as { metadata: Record<string, string> };
    assert.equal(node.metadata['signalbox.jwt_module'], 'signalbox_jwt_check');
  });

  test('an HTTPRoute on a Service: checked on the outbound listener of the calling sidecars', async () => {
    const meshRoute = doc(
      'HTTPRoute',
      'orders-api',
      `
  parentRefs: [ { kind: Service, name: orders } ]
  rules:
    - { name: write, matches: [ { path: { value: /write } } ], backendRefs: [ { name: orders } ] }
    - { name: read, matches: [ { path: { value: /read } } ], backendRefs: [ { name: orders } ] }`,
    );
    const r = await validateDir(policyDir({ 'a.yaml': docs(BASE, meshRoute, jwt('writers', '{ kind: HTTPRoute, name: orders-api, sectionName: write }')) }));
    assert.deepEqual(r.errors, []);
    const group = sidecarGroup({ service: 'app', appPort: 9001, inboundPort: 21001, outboundPort: 15001 });
    const ir = translate(r.model!, [group]).get(group)!;
    const outbound = ir.listeners.find((l) => l.name === 'outbound')!;
    const routes = outbound.routeConfig.virtualHosts.find((v) => v.name === 'orders')!.routes;
    assert.deepEqual(
      routes.map((x) => [x.name, x.jwt?.policies, x.jwt?.fast?.policy]),
      [
        ['orders-api/write/match-0', ['writers'], 'writers'],
        ['orders-api/read/match-0', [], undefined],
      ],
    );
    assert.equal(ir.listeners.find((l) => l.name === 'inbound')!.extAuthz, undefined);
  });

  test("fast path: a one-policy route reading a header runs its policy's script; ext_authz only where some route has no fast path", async () => {
    const rsa = await makeKey('RS256', 'r');
    const inline = `{ inline: { keys: [ ${JSON.stringify(rsa.jwk)} ] } }`;
    const files = {
      'a.yaml': docs(
        BASE,
        jwt(
          'users',
          '{ kind: HTTPRoute, name: api, sectionName: secure }',
          '  require: [ { claim: scope, contains: read } ]\n  forwardClaims: [ { claim: sub, header: x-user } ]\n',
          inline,
        ),
        jwt('edge', '{ kind: Gateway, name: public, sectionName: admin }', '  from: [ { cookie: session } ]\n', inline),
      ),
    };
    const groups = await compile(files);
    const l = get(groups, 'gateway/public', 'listener', 'public/http');
    assert.deepEqual(
      filtersOf(l).map((f) => f.name),
      ['signalbox.jwt_check', 'envoy.filters.http.router'],
    );
    const routes = get(groups, 'gateway/public', 'route', 'public/http').virtual_hosts[0].routes as Json[];
    const secure = routes.find((r) => r.name === 'api/secure/match-0')!;
    assert.equal(secure.typed_per_filter_config, undefined, 'the listener script runs; no ext_authz filter to disable');
    // The route's check in its metadata: the policy, the one header, a version of settings and keys.
    assert.match(secure.metadata.filter_metadata['signalbox.jwt_check'].fields.check.stringValue, /^users authorization [0-9a-f]{16}$/);
    const open = routes.find((r) => r.name === 'api/open/match-0')!;
    assert.equal(open.typed_per_filter_config['signalbox.jwt_check'].disabled, true);
    assert.equal(open.metadata?.filter_metadata?.['signalbox.jwt_check'], undefined);
    // One constant script for every policy: nothing from a policy is in it.
    const script: string = filtersOf(l)[0]!.typed_config.default_source_code.inline_string;
    assert.equal(script, JWT_CHECK_SCRIPT);
    assert.ok(!script.includes('users') && !script.includes('scope') && !script.includes('x-user'), 'claim rules stay in the service');
    // A cookie policy has no fast path: ext_authz on that listener, as before.
    const admin = get(groups, 'gateway/public', 'listener', 'public/admin');
    assert.deepEqual(
      filtersOf(admin).map((f) => f.name),
      ['signalbox.ext_authz', 'envoy.filters.http.router'],
    );
    // A listener with both kinds of route has both filters; a fast route skips ext_authz.
    const both = await compile({
      'a.yaml': docs(
        BASE,
        jwt('users', '{ kind: HTTPRoute, name: api, sectionName: secure }'),
        jwt('edge', '{ kind: HTTPRoute, name: api, sectionName: open }', '  from: [ { cookie: session } ]\n'),
      ),
    });
    assert.deepEqual(
      filtersOf(get(both, 'gateway/public', 'listener', 'public/http')).map((f) => f.name),
      ['signalbox.jwt_check', 'signalbox.ext_authz', 'envoy.filters.http.router'],
    );
    const rc = get(both, 'gateway/public', 'route', 'public/http');
    assert.equal(perRoute(rc, 'api/secure/match-0')?.disabled, true);
    assert.equal(perRoute(rc, 'api/open/match-0')?.check_settings.context_extensions['signalbox.jwt.policies'], 'edge');
  });

  test('fast path: why a route has none (several policies, switched off); its version follows the keys and settings', async () => {
    const rsa = await makeKey('RS256', 'r');
    const other = await makeKey('RS256', 'o');
    const inline = `{ inline: { keys: [ ${JSON.stringify(rsa.jwk)} ] } }`;
    const r = await validateDir(
      policyDir({
        'a.yaml': docs(
          BASE,
          jwt('a', '{ kind: HTTPRoute, name: api, sectionName: secure }', '', inline),
          jwt('b', '{ kind: HTTPRoute, name: api, sectionName: secure }', '', inline),
          jwt('c', '{ kind: HTTPRoute, name: api, sectionName: open }'),
        ),
      }),
    );
    assert.deepEqual(r.errors, []);
    const routesOf = (opts: Parameters<typeof translate>[2]) =>
      translate(r.model!, [], opts).get('gateway/public')!.listeners[0]!.routeConfig.virtualHosts[0]!.routes;
    const jwtOf = (opts: Parameters<typeof translate>[2]) => routesOf(opts).map((x) => [x.name, x.jwt?.fast?.policy ?? x.jwt?.slowReason]);
    assert.deepEqual(jwtOf({}), [
      ['api/secure/match-0', 'several policies apply to the route'],
      ['api/open/match-0', 'c'],
    ]);
    assert.deepEqual(jwtOf({ jwtKeys: () => [rsa.jwk], jwtFastPath: false })[1], ['api/open/match-0', 'the fast path is switched off']);
    // The version: the same keys give the same one; other keys (or none yet) another.
    const versionOf = (keys: Json[] | undefined) => routesOf({ jwtKeys: () => keys as never })[1]!.jwt!.fast!.version;
    assert.equal(versionOf([rsa.jwk]), versionOf([rsa.jwk]));
    assert.notEqual(versionOf([rsa.jwk]), versionOf([other.jwk]));
    assert.notEqual(versionOf([rsa.jwk]), versionOf(undefined));
    assert.match(versionOf(undefined), /^[0-9a-f]{16}$/);
    // A forwarded header that a route matches on: the script's header change would re-route.
    const routed = await validateDir(
      policyDir({
        'a.yaml': docs(
          BASE.replace(
            '- { name: open, matches: [ { path: { value: /open } } ]',
            '- { name: open, matches: [ { path: { value: /open }, headers: [ { name: X-User, value: root } ] } ]',
          ),
          jwt('c', '{ kind: HTTPRoute, name: api, sectionName: secure }', '  forwardClaims: [ { claim: sub, header: x-user } ]\n', inline),
        ),
      }),
    );
    assert.deepEqual(routed.errors, []);
    const secure = translate(routed.model!, [])
      .get('gateway/public')!
      .listeners[0]!.routeConfig.virtualHosts[0]!.routes.find((x) => x.name === 'api/secure/match-0')!;
    assert.equal(secure.jwt?.slowReason, 'a route of this listener matches on header "x-user", which the policy forwards a claim into');
  });

  test('serve flags: --jwt-fast-path', () => {
    assert.equal(resolveServeConfig({}, {}).jwtFastPath, true);
    assert.equal(resolveServeConfig({ 'jwt-fast-path': 'off' }, {}).jwtFastPath, false);
    assert.equal(resolveServeConfig({}, { SIGNALBOX_JWT_FAST_PATH: 'off' }).jwtFastPath, false);
    assert.deepEqual([resolveServeConfig({ 'jwt-fast-path': 'module' }, {})].map((c) => [c.jwtFastPath, c.jwtFastPathModule])[0], [true, true]);
    assert.equal(resolveServeConfig({}, {}).jwtFastPathModule, false);
    assert.throws(() => resolveServeConfig({ 'jwt-fast-path': 'fast' }, {}), /must be "on", "module" or "off"/);
    assert.throws(() => resolveServeConfig({ 'jwt-fast-path': 'maybe' }, {}), /--jwt-fast-path must be "on", "module" or "off"/);
  });

  test('serve flags: --authz-port and --authz-address-for-proxies', () => {
    assert.equal(resolveServeConfig({}, {}).authzPort, undefined, 'default: 18002, opened only once a JWTPolicy exists');
    assert.equal(resolveServeConfig({}, { SIGNALBOX_AUTHZ_PORT: '19002' }).authzPort, 19002);
    assert.deepEqual(resolveServeConfig({ 'authz-address-for-proxies': '10.1.2.3:18002' }, {}).authzAddressForProxies, { address: '10.1.2.3', port: 18002 });
    assert.throws(() => resolveServeConfig({ 'authz-address-for-proxies': 'authz.local:18002' }, {}), /must be IP:PORT/);
    assert.throws(() => resolveServeConfig({ 'authz-port': 'x' }, {}), /--authz-port must be a port/);
    assert.deepEqual(proxiesEndpoint('0.0.0.0', 18002), { address: '127.0.0.1', port: 18002 });
    assert.deepEqual(proxiesEndpoint('10.0.0.1', 5), { address: '10.0.0.1', port: 5 });
    assert.deepEqual(proxiesEndpoint('0.0.0.0', 5, { address: '10.9.9.9', port: 7 }), { address: '10.9.9.9', port: 7 });
  });
});
