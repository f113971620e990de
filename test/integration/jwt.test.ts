// JWTPolicy through real Envoy: a gateway and a sidecar (inbound, mTLS) fed by one `signalbox
// serve`, whose embedded ext_authz service checks tokens against a JWKS server the test controls
// (keys generated with jose: RS256, ES256, EdDSA; rotated, taken down). Every row of the token
// table is one request with its expected status; the table is printed at the end.
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import http from 'node:http';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { startEnvoy, type Envoy } from '../helpers/envoy.js';
import { asAlg, hmacWithPublicKey, makeKey, signToken, startJwksServer, unsignedToken, type JwksServer, type TestKey } from '../helpers/jwks-server.js';
import { freePort, waitFor } from '../helpers/net.js';
import { startSignalbox, type SignalboxProcess } from '../helpers/signalbox.js';
import { startUpstream, type Upstream } from '../helpers/upstream.js';

const ISS = 'https://auth.signalbox.test/';
const AUD = 'shop-api';

interface Reply {
  status: number;
  headers: http.IncomingHttpHeaders;
  body: string;
}

/** One request with exactly the headers given (arrays become repeated header lines). */
function request(port: number, p: string, headers: Record<string, string | string[]> = {}, method = 'GET', body?: string): Promise<Reply> {
  return new Promise((resolve, reject) => {
    const req = http.request({ host: '127.0.0.1', port, path: p, headers, agent: false, method }, (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (c: string) => (body += c));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, headers: res.headers, body }));
    });
    req.on('error', reject);
    req.setTimeout(10_000, () => req.destroy(new Error(`request ${p} timed out`)));
    req.end(body);
  });
}

const bearer = (t: string) => ({ authorization: `Bearer ${t}` });

/** Rules and forwarded claims of the parity policies: every claim type the checks treat differently. */
const PARITY = `  require: [ { claim: realm.roles, contains: reader }, { claim: level, in: [2, 3] }, { claim: active, equals: true } ]
  forwardClaims: [ { claim: sub, header: x-user-id }, { claim: groups, header: x-groups }, { claim: level, header: x-level }, { claim: realm.name, header: x-realm }, { claim: ratio, header: x-ratio }, { claim: obj, header: x-obj } ]
`;
const PARITY_HEADERS = ['x-user-id', 'x-groups', 'x-level', 'x-realm', 'x-ratio', 'x-obj'];

interface Row {
  via: 'gateway' | 'gateway (edge listener)' | 'gateway (service down)' | 'sidecar';
  name: string;
  expected: number;
  got: number;
}

// The whole table runs twice: with the fast path in Signalbox's compiled Envoy filter (the
// dynamic module) and in the Lua script.
for (const engine of ['module', 'script'] as const)
  describe(`JWTPolicy through real Envoy (gateway and sidecar), fast path in the ${engine}`, () => {
    const rows: Row[] = [];
    const issued: string[] = [];
    let dir: string;
    let sb: SignalboxProcess;
    let gateway: Envoy;
    let sidecar: Envoy;
    let app: Upstream;
    let meshApp: Upstream;
    let jwks: JwksServer;
    let gwPort: number;
    let edgePort: number;
    let inboundPort: number;
    let rsa: TestKey;
    let ec: TestKey;
    let ed: TestKey;
    let rsa2: TestKey;
    let stranger: TestKey;

    /** A token from `key` with the standard claims of the main policies, `extra` merged over them. */
    const token = async (key: TestKey, extra: Record<string, unknown> = {}, header: Record<string, unknown> = {}) => {
      const t = await signToken(key, { iss: ISS, aud: AUD, sub: 'alice', ...extra }, header);
      issued.push(t);
      return t;
    };

    /** Sends one request, records the row, and returns the reply for further checks. */
    const row = async (
      via: Row['via'],
      name: string,
      expected: number,
      port: number,
      p: string,
      headers: Record<string, string | string[]> = {},
    ): Promise<Reply> => {
      const r = await request(port, p, headers);
      rows.push({ via, name, expected, got: r.status });
      assert.equal(r.status, expected, `${via}: ${name}: expected ${expected}, got ${r.status} ${r.body}`);
      return r;
    };
    const gw = (name: string, expected: number, p: string, headers: Record<string, string | string[]> = {}) =>
      row('gateway', name, expected, gwPort, p, headers);
    const lastSeen = (u: Upstream) => u.seen[u.seen.length - 1]!;

    before(async () => {
      [rsa, ec, ed, rsa2, stranger] = await Promise.all([
        makeKey('RS256', 'rsa-1'),
        makeKey('ES256', 'ec-1'),
        makeKey('EdDSA', 'ed-1'),
        makeKey('RS256', 'rsa-2'),
        makeKey('RS256', 'rsa-1'),
      ]);
      jwks = await startJwksServer([rsa.jwk, ec.jwk, ed.jwk], { cacheControl: 'max-age=1' });
      const deadPort = await freePort(); // nothing listens here: a JWKS endpoint that is down from the start
      app = await startUpstream('app');
      meshApp = await startUpstream('secure');
      gwPort = await freePort();
      edgePort = await freePort();
      inboundPort = await freePort();
      const outboundPort = await freePort();
      const authzPort = await freePort();
      const main = (name: string, target: string, extra = '') => `apiVersion: signalbox.dev/v1alpha1
kind: JWTPolicy
metadata: { name: ${name} }
spec:
  targetRef: ${target}
  issuer: ${ISS}
  audiences: [${AUD}]
  jwks: { uri: "${jwks.url}", cacheDuration: { min: 1s, max: 2s }, cooldown: 1s }
  algorithms: [RS256, ES256, EdDSA]
  clockSkew: 30s
${extra}`;
      dir = mkdtempSync(path.join(os.tmpdir(), 'sb-jwt-'));
      writeFileSync(
        path.join(dir, 'mesh.yaml'),
        `apiVersion: signalbox.dev/v1alpha1
kind: Mesh
metadata: { name: default }
spec: { mtls: { mode: strict } }
---
apiVersion: signalbox.dev/v1alpha1
kind: Service
metadata: { name: app }
spec:
  port: 8080
  endpoints: [ { address: 127.0.0.1, port: ${app.port} } ]
---
apiVersion: signalbox.dev/v1alpha1
kind: Service
metadata: { name: secure }
spec:
  port: 8080
  endpoints: [ { address: 127.0.0.1, port: ${meshApp.port}, sidecarPort: ${inboundPort} } ]
---
apiVersion: signalbox.dev/v1alpha1
kind: Gateway
metadata: { name: gateway }
spec:
  listeners:
    - { name: http, port: ${gwPort}, protocol: HTTP }
    - { name: edge, port: ${edgePort}, protocol: HTTP }
---
apiVersion: signalbox.dev/v1alpha1
kind: HTTPRoute
metadata: { name: api }
spec:
  parentRefs: [ { kind: Gateway, name: gateway } ]
  rules:
    - { name: secure, matches: [ { path: { value: /secure } } ], backendRefs: [ { name: app } ] }
    - { name: scoped, matches: [ { path: { value: /scoped } } ], backendRefs: [ { name: app } ] }
    - { name: roles, matches: [ { path: { value: /roles } } ], backendRefs: [ { name: app } ] }
    - { name: admin, matches: [ { path: { value: /admin } } ], backendRefs: [ { name: app } ] }
    - { name: optional, matches: [ { path: { value: /optional } } ], backendRefs: [ { name: app } ] }
    - { name: browser, matches: [ { path: { value: /browser } } ], backendRefs: [ { name: app } ] }
    - { name: nokeys, matches: [ { path: { value: /nokeys } } ], backendRefs: [ { name: app } ] }
    - { name: public, matches: [ { path: { value: /public } } ], backendRefs: [ { name: app } ] }
    - { name: parity-fast, matches: [ { path: { value: /pf } } ], backendRefs: [ { name: app } ] }
    - { name: parity-slow, matches: [ { path: { value: /ps } } ], backendRefs: [ { name: app } ] }
    - { name: mesh, matches: [ { path: { value: /mesh } } ], backendRefs: [ { name: secure } ] }
`,
      );
      writeFileSync(
        path.join(dir, 'jwt.yaml'),
        [
          main('users', '{ kind: HTTPRoute, name: api, sectionName: secure }', '  forwardClaims: [ { claim: sub, header: x-user-id } ]\n'),
          main('orders-read', '{ kind: HTTPRoute, name: api, sectionName: scoped }', '  require: [ { claim: scope, contains: orders.read } ]\n'),
          main('staff', '{ kind: HTTPRoute, name: api, sectionName: roles }', '  require: [ { claim: role, in: [admin, staff] } ]\n'),
          main('admins', '{ kind: HTTPRoute, name: api, sectionName: admin }', '  require: [ { claim: role, equals: admin } ]\n'),
          main('orders-write', '{ kind: HTTPRoute, name: api, sectionName: admin }', '  require: [ { claim: scp, contains: orders.write } ]\n'),
          main('maybe', '{ kind: HTTPRoute, name: api, sectionName: optional }', '  optional: true\n  forwardClaims: [ { claim: sub, header: x-user-id } ]\n'),
          main('browser', '{ kind: HTTPRoute, name: api, sectionName: browser }', '  from: [ { cookie: session }, { query: access_token } ]\n'),
          // Two policies that differ only in where else they may read a token: the first can take the
          // fast path, the second (two token sources) always asks the ext_authz service.
          main('parity-fast', '{ kind: HTTPRoute, name: api, sectionName: parity-fast }', PARITY),
          main(
            'parity-slow',
            '{ kind: HTTPRoute, name: api, sectionName: parity-slow }',
            `${PARITY}  from: [ { header: authorization, prefix: "Bearer " }, { query: never_sent } ]\n`,
          ),
          `apiVersion: signalbox.dev/v1alpha1
kind: JWTPolicy
metadata: { name: dead }
spec:
  targetRef: { kind: HTTPRoute, name: api, sectionName: nokeys }
  issuer: ${ISS}
  jwks: { uri: "http://127.0.0.1:${deadPort}/.well-known/jwks.json", timeout: 500ms }
`,
          main('edge', '{ kind: Gateway, name: gateway, sectionName: edge }'),
          main(
            'mesh-users',
            '{ kind: Service, name: secure }',
            '  require: [ { claim: scope, contains: mesh.read } ]\n  forwardClaims: [ { claim: sub, header: x-user-id } ]\n',
          ),
        ].join('---\n'),
      );
      sb = await startSignalbox({ policies: dir, extraArgs: ['--authz-port', String(authzPort), '--jwt-fast-path', engine === 'module' ? 'module' : 'on'] });
      gateway = await startEnvoy({ name: 'jwt-gw', bootstrapYaml: await sb.bootstrap({ gateway: 'gateway', id: 'jwt-gw' }) });
      sidecar = await startEnvoy({
        name: 'jwt-sidecar',
        bootstrapYaml: await sb.bootstrap({ sidecar: { service: 'secure', instance: 'secure-1', appPort: meshApp.port, inboundPort, outboundPort } }),
      });
      await waitFor(async () => (await request(gwPort, '/public')).status === 200, { what: 'gateway serving /public', timeoutMs: 20_000 });
      const warm = await token(rsa);
      await waitFor(async () => (await request(gwPort, '/secure', bearer(warm))).status === 200, {
        what: 'gateway accepting a valid token',
        timeoutMs: 20_000,
      });
      const meshWarm = await token(rsa, { scope: 'mesh.read' });
      await waitFor(async () => (await request(gwPort, '/mesh', bearer(meshWarm))).status === 200, {
        what: 'gateway -> sidecar accepting a valid token',
        timeoutMs: 20_000,
      });
      // The fast path runs where the flag says, on the gateway and the sidecar.
      for (const envoy of [gateway, sidecar]) {
        const listeners = await envoy.admin('/config_dump?resource=dynamic_listeners');
        const want = engine === 'module' ? 'envoy.extensions.filters.http.dynamic_modules.v3.DynamicModuleFilter' : 'envoy.extensions.filters.http.lua.v3.Lua';
        assert.ok(listeners.includes(want), `the fast path is a ${want} filter`);
      }
    });

    after(async () => {
      const width = Math.max(...rows.map((r) => r.name.length));
      console.log(
        `\nJWT token table, fast path in the ${engine} (${rows.length} cases through real Envoy)\n${rows.map((r, i) => `${String(i + 1).padStart(2)}  ${r.via.padEnd(24)} ${r.name.padEnd(width)}  expected ${r.expected}  got ${r.got}${r.expected === r.got ? '' : '  <-- MISMATCH'}`).join('\n')}`,
      );
      await gateway?.stop();
      await sidecar?.stop();
      await sb?.kill();
      await app?.close();
      await meshApp?.close();
      await jwks?.close();
      if (dir) rmSync(dir, { recursive: true, force: true });
    });

    test('valid tokens: RS256, ES256 and EdDSA pass, and the subject reaches the upstream', async () => {
      await gw('valid RS256', 200, '/secure', bearer(await token(rsa)));
      assert.equal(lastSeen(app).headers['x-user-id'], 'alice');
      await gw('valid ES256', 200, '/secure', bearer(await token(ec, { sub: 'bob' })));
      assert.equal(lastSeen(app).headers['x-user-id'], 'bob');
      await gw('valid EdDSA', 200, '/secure', bearer(await token(ed, { sub: 'carol' })));
      assert.equal(lastSeen(app).headers['x-user-id'], 'carol');
      assert.equal(lastSeen(app).headers.authorization?.startsWith('Bearer '), true, 'the token itself is passed on');
    });

    test("fast path: the service is asked once per token; Envoy repeats its allow (forwarded claims over client copies) until the token's window ends", async () => {
      const metric = async (re: RegExp) => Number(re.exec(await sb.adminText('/metrics'))?.[1] ?? 0);
      const decisions = (result: 'allow' | 'deny') =>
        metric(new RegExp(`signalbox_authz_decisions_total\\{policy="users",result="${result}",reason="(?:ok|expired)"\\} (\\d+)`));
      const allowsBefore = await decisions('allow');
      for (const [i, key] of [rsa, ec, ed, rsa, ec].entries()) {
        const t = await token(key, { sub: `fast-${i}` });
        for (let round = 1; round <= 3; round++) {
          await gw(`fast path: valid token ${i + 1} of 5, request ${round} of 3, spoofed x-user-id`, 200, '/secure', { ...bearer(t), 'x-user-id': 'admin' });
          assert.equal(lastSeen(app).headers['x-user-id'], `fast-${i}`, 'the forwarded claim replaced the client copy');
        }
      }
      assert.equal((await decisions('allow')) - allowsBefore, 5, 'the service was asked once per token, not once per request');
      // The allows Envoy repeated are reported by the proxies (with a later request, about once a second).
      const repeated = () => metric(/signalbox_authz_fast_path_allows_total\{policy="users"\} (\d+)/);
      const again = await token(rsa, { sub: 'reporter' });
      await waitFor(
        async () => {
          await request(gwPort, '/secure', bearer(again));
          return (await repeated()) >= 10;
        },
        { what: 'repeated allows reported', timeoutMs: 10_000, intervalMs: 300 },
      );
      // Refusals are never remembered: the same expired token asked twice is refused by the service twice.
      const denialsBefore = await metric(/signalbox_authz_decisions_total\{policy="users",result="deny",reason="expired"\} (\d+)/);
      const expired = await token(rsa, { exp: Math.floor(Date.now() / 1000) - 120 });
      for (let i = 0; i < 2; i++) {
        const r = await gw('fast path: expired token, refused by the service', 401, '/secure', bearer(expired));
        assert.match(String(r.headers['www-authenticate']), /error_description="token expired"/);
      }
      assert.equal((await metric(/signalbox_authz_decisions_total\{policy="users",result="deny",reason="expired"\} (\d+)/)) - denialsBefore, 2);
      // A remembered allow ends with the token's window: a token that expires (with the 30 s skew) in
      // about a second passes, then, asked again after it, is refused by the service.
      const edge = await token(rsa, { sub: 'edge', exp: Math.floor(Date.now() / 1000) - 29 });
      const first = await request(gwPort, '/secure', bearer(edge));
      if (first.status === 200) {
        await new Promise((r) => setTimeout(r, 2_500));
        await gw('fast path: a remembered token past its window goes back to the service', 401, '/secure', bearer(edge));
      } else assert.equal(first.status, 401, 'at a second boundary the token may already be refused');
    });

    test('fast path and ext_authz agree: the same tokens through a fast-path route and a service-only route give the same status and upstream headers', async () => {
      const now = Math.floor(Date.now() / 1000);
      const good = { realm: { roles: ['reader'], name: 'r1' }, level: 2, active: true, groups: ['a', 'b'] };
      const cases: [string, Record<string, unknown>, Record<string, string>?][] = [
        ['all rules hold', good],
        ['a non-integer claim forwarded', { ...good, ratio: 0.5 }],
        ['an object claim forwarded', { ...good, obj: { a: 1 } }],
        ['an integer subject', { ...good, sub: 12345 }],
        ['level not in the list', { ...good, level: 4 }],
        ['level as a string', { ...good, level: '2' }],
        ['active as a string', { ...good, active: 'true' }],
        ['roles as a space-separated string', { ...good, realm: { roles: 'writer reader', name: 'r2' } }],
        ['a flat dotted claim name', { ...good, realm: undefined, 'realm.roles': ['reader'] }],
        ['roles missing', { ...good, realm: { name: 'r3' } }],
        ['groups empty', { ...good, groups: [] }],
        ['groups with a control character', { ...good, groups: ['a\u0001b'] }],
        ['groups missing, client sends a copy', { ...good, groups: undefined }, { 'x-groups': 'admins' }],
        ['issued in the future', { ...good, iat: now + 120 }],
        ['expiry with a fraction of a second', { ...good, exp: now + 300.5 }],
        ['wrong audience', { ...good, aud: 'other' }],
      ];
      const allows = async () =>
        Number(/signalbox_authz_decisions_total\{policy="parity-fast",result="allow",reason="ok"\} (\d+)/.exec(await sb.adminText('/metrics'))?.[1] ?? 0);
      const before = await allows();
      let allowed = 0;
      for (const [name, claims, extra] of cases) {
        const t = await token(rsa, claims);
        const seen: Record<string, unknown>[] = [];
        const statuses: number[] = [];
        // The fast-path route twice: the service's answer, then the one Envoy remembered.
        for (const route of ['/pf', '/pf', '/ps']) {
          const n = app.seen.length;
          const r = await request(gwPort, route, { ...bearer(t), ...(extra ?? {}) });
          statuses.push(r.status);
          seen.push(app.seen.length > n ? Object.fromEntries(PARITY_HEADERS.map((h) => [h, lastSeen(app).headers[h]])) : {});
        }
        rows.push({ via: 'gateway', name: `parity: ${name}`, expected: statuses[2]!, got: statuses[1]! });
        for (const i of [0, 1]) {
          assert.equal(statuses[i], statuses[2], `${name}: fast-path route answered ${statuses[i]} (request ${i + 1}), service-only route ${statuses[2]}`);
          assert.deepEqual(seen[i], seen[2], `${name}: the upstream saw different headers (request ${i + 1})`);
        }
        if (statuses[0] === 200) allowed++;
      }
      assert.equal((await allows()) - before, allowed, 'the fast-path route asked the service once per allowed token');
      // A token whose header lists a critical extension (jose refuses it): refused on both routes.
      const now2 = Math.floor(Date.now() / 1000);
      const critHeader = Buffer.from(JSON.stringify({ alg: 'RS256', kid: rsa.kid, crit: ['urn:example:x'], 'urn:example:x': 1 })).toString('base64url');
      const critPayload = Buffer.from(JSON.stringify({ iss: ISS, aud: AUD, sub: 'crit', iat: now2, exp: now2 + 300, ...good })).toString('base64url');
      const critSig = Buffer.from(await crypto.subtle.sign('RSASSA-PKCS1-v1_5', rsa.privateKey, Buffer.from(`${critHeader}.${critPayload}`))).toString(
        'base64url',
      );
      const crit = `${critHeader}.${critPayload}.${critSig}`;
      for (const route of ['/pf', '/ps']) assert.equal((await request(gwPort, route, bearer(crit))).status, 401, `a crit token on ${route}`);
      // A lowercase scheme: the service finds the token all the same.
      const lower = await request(gwPort, '/pf', { authorization: `bearer ${await token(rsa, good)}` });
      assert.equal(lower.status, 200);
      // Extra spaces after the scheme: another header value, so another question to the service,
      // with the same answer as for the token seen with one space.
      const seenBefore = await token(rsa, { ...good, sub: 'spaced' });
      assert.equal((await request(gwPort, '/pf', bearer(seenBefore))).status, 200);
      for (const route of ['/pf', '/ps']) {
        assert.equal((await request(gwPort, route, { authorization: `Bearer   ${seenBefore}` })).status, 200, route);
        assert.equal(lastSeen(app).headers['x-user-id'], 'spaced', route);
      }
      assert.ok(allowed >= 6, `${allowed} of the cases were allowed`);
    });

    test('no token: 401 with an RFC 6750 challenge', async () => {
      const r = await gw('no token', 401, '/secure');
      assert.match(String(r.headers['www-authenticate']), /^Bearer error="invalid_token"/);
      assert.equal(JSON.parse(r.body).error, 'invalid_token');
      const basic = await gw('Basic credentials instead of a Bearer token', 401, '/secure', { authorization: 'Basic YWxpY2U6c2VjcmV0' });
      assert.match(String(basic.headers['www-authenticate']), /Bearer/);
    });

    test('time claims: expired, not yet valid, issued in the future are refused; within the clock skew passes', async () => {
      const now = Math.floor(Date.now() / 1000);
      const expired = await gw('expired (exp 2 minutes ago)', 401, '/secure', bearer(await token(rsa, { iat: now - 600, exp: now - 120 })));
      assert.match(String(expired.headers['www-authenticate']), /error_description="token expired"/);
      await gw('not yet valid (nbf in 2 minutes)', 401, '/secure', bearer(await token(rsa, { nbf: now + 120 })));
      await gw('issued in the future (iat in 2 minutes)', 401, '/secure', bearer(await token(rsa, { iat: now + 120, exp: now + 600 })));
      await gw('expired 10s ago, within the 30s clock skew', 200, '/secure', bearer(await token(rsa, { iat: now - 600, exp: now - 10 })));
      await gw('nbf in 10s, within the 30s clock skew', 200, '/secure', bearer(await token(rsa, { nbf: now + 10 })));
      await gw('no exp at all', 401, '/secure', bearer(await token(rsa, { exp: undefined })));
    });

    test('issuer, audience and signature', async () => {
      await gw('wrong issuer', 401, '/secure', bearer(await token(rsa, { iss: 'https://evil.example/' })));
      await gw('wrong audience', 401, '/secure', bearer(await token(rsa, { aud: 'another-api' })));
      await gw('audience in an array with the right one', 200, '/secure', bearer(await token(rsa, { aud: ['other', AUD] })));
      // Same kid and alg, signed by a key the JWKS does not have.
      await gw('bad signature (same kid, other key)', 401, '/secure', bearer(await token(stranger)));
      const good = await token(rsa);
      const tampered = good.split('.');
      tampered[1] = Buffer.from(JSON.stringify({ iss: ISS, aud: AUD, sub: 'mallory', exp: Math.floor(Date.now() / 1000) + 300 })).toString('base64url');
      await gw('payload changed after signing', 401, '/secure', bearer(tampered.join('.')));
    });

    test('forged algorithms: alg none, HS256 signed with the public key, an algorithm outside the allow-list', async () => {
      const claims = { iss: ISS, aud: AUD, sub: 'mallory', exp: Math.floor(Date.now() / 1000) + 300 };
      await gw('alg none', 401, '/secure', bearer(unsignedToken(claims, 'rsa-1')));
      await gw('HS256 signed with the RSA public key', 401, '/secure', bearer(await hmacWithPublicKey(rsa, claims)));
      // PS256 with the RSA key the JWKS holds: a valid signature, but PS256 is not allowed.
      const ps = await signToken(await asAlg(rsa, 'PS256'), claims);
      await gw('PS256 (valid signature, not in algorithms)', 401, '/secure', bearer(ps));
    });

    test('malformed tokens, tokens in the wrong place, two Authorization headers, oversized tokens', async () => {
      await gw('malformed: two segments', 401, '/secure', bearer('eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ4In0'));
      await gw('malformed: garbage segments', 401, '/secure', bearer('not.a.jwt'));
      await gw('malformed: JWE-like five segments', 401, '/secure', bearer('a.b.c.d.e'));
      const t = await token(rsa);
      await gw('token in a cookie where the policy reads the header', 401, '/secure', { cookie: `session=${t}` });
      await gw('token in the query where the policy reads the header', 401, `/secure?access_token=${t}`);
      const two = await gw('two Authorization headers', 400, '/secure', { authorization: [`Bearer ${t}`, `Bearer ${t}`] });
      assert.match(String(two.headers['www-authenticate']), /error="invalid_request"/);
      const big = await token(rsa, { pad: 'x'.repeat(10_000) });
      assert.ok(big.length > 10_000);
      const r = await gw('oversized token (over 8 KiB)', 401, '/secure', bearer(big));
      assert.match(String(r.headers['www-authenticate']), /token too large/);
    });

    test('require rules: scope word, scope array, claim in a list, equality; several policies on one rule must all pass', async () => {
      const missing = await gw('missing required scope', 403, '/scoped', bearer(await token(rsa, { scope: 'orders.list profile' })));
      assert.match(String(missing.headers['www-authenticate']), /error="insufficient_scope".*scope="orders.read"/);
      await gw('scope present in a space-separated string', 200, '/scoped', bearer(await token(rsa, { scope: 'profile orders.read' })));
      await gw('scope present in an array', 200, '/scoped', bearer(await token(rsa, { scope: ['profile', 'orders.read'] })));
      await gw('claim in list (role staff)', 200, '/roles', bearer(await token(rsa, { role: 'staff' })));
      await gw('claim not in list (role guest)', 403, '/roles', bearer(await token(rsa, { role: 'guest' })));
      await gw('claim array with one element in the list', 200, '/roles', bearer(await token(rsa, { role: ['guest', 'admin'] })));
      await gw('two policies: both satisfied', 200, '/admin', bearer(await token(rsa, { role: 'admin', scp: ['orders.write'] })));
      await gw('two policies: only the first satisfied', 403, '/admin', bearer(await token(rsa, { role: 'admin', scp: ['orders.read'] })));
      await gw('two policies: only the second satisfied', 403, '/admin', bearer(await token(rsa, { role: 'staff', scp: ['orders.write'] })));
    });

    test('forwarded claims: a client-supplied copy of the header never reaches the upstream', async () => {
      await gw('forwarded claim header spoofed by the client', 200, '/secure', { ...bearer(await token(rsa, { sub: 'alice' })), 'x-user-id': 'admin' });
      assert.equal(lastSeen(app).headers['x-user-id'], 'alice');
      await gw('optional policy, no token, spoofed header', 200, '/optional', { 'x-user-id': 'admin' });
      assert.equal(lastSeen(app).headers['x-user-id'], undefined, 'the spoofed header is stripped');
    });

    test('optional policy: no token passes, a bad token is refused, a good one is used', async () => {
      await gw('optional policy with no token', 200, '/optional');
      await gw('optional policy with a bad token', 401, '/optional', bearer(await token(stranger)));
      await gw('optional policy with an expired token', 401, '/optional', bearer(await token(rsa, { exp: Math.floor(Date.now() / 1000) - 120 })));
      await gw('optional policy with a valid token', 200, '/optional', bearer(await token(rsa, { sub: 'dave' })));
      assert.equal(lastSeen(app).headers['x-user-id'], 'dave');
    });

    test('token sources: cookie and query parameter', async () => {
      const t = await token(ec);
      await gw('token in the cookie the policy names', 200, '/browser', { cookie: `theme=dark; session=${t}` });
      await gw('token in the query parameter the policy names', 200, `/browser?x=1&access_token=${t}`);
      await gw('token in the Authorization header where the policy reads cookie and query', 401, '/browser', bearer(t));
    });

    test('routes without a policy skip the check; a Gateway-listener policy covers every route of that listener', async () => {
      const checks = async () =>
        Number(/signalbox_authz_check_duration_seconds_count\{[^}]*result="allow"[^}]*\} (\d+)/.exec(await sb.adminText('/metrics'))?.[1] ?? 0);
      const before = await checks();
      for (let i = 0; i < 3; i++) await gw('route without a policy, no token', 200, '/public');
      assert.equal(await checks(), before, 'the ext_authz service was not asked for /public');
      await row('gateway (edge listener)', 'listener policy, no token', 401, edgePort, '/public');
      await row('gateway (edge listener)', 'listener policy, valid token', 200, edgePort, '/public', bearer(await token(ed)));
      // Route policy and listener policy both apply on that listener.
      await row('gateway (edge listener)', 'listener + route policy, token lacks the scope', 403, edgePort, '/scoped', bearer(await token(ed)));
    });

    test('sidecar inbound (gateway -> sidecar over mTLS): the Service policy is checked at the sidecar', async () => {
      const via = (name: string, expected: number, headers: Record<string, string> = {}) => row('sidecar', name, expected, gwPort, '/mesh/orders', headers);
      await via('valid token with the scope', 200, { ...bearer(await token(rsa, { sub: 'erin', scope: 'mesh.read' })), 'x-user-id': 'root' });
      assert.equal(lastSeen(meshApp).headers['x-user-id'], 'erin', 'the sidecar replaced the spoofed header');
      assert.match(String(lastSeen(meshApp).headers['x-forwarded-client-cert']), /spiffe:\/\/signalbox\.local\/gateway\/gateway/, 'the request came over mTLS');
      const none = await via('no token', 401);
      assert.match(String(none.headers['www-authenticate']), /invalid_token/);
      await via('expired token', 401, bearer(await token(rsa, { scope: 'mesh.read', exp: Math.floor(Date.now() / 1000) - 120 })));
      await via('valid token without the scope', 403, bearer(await token(rsa, { scope: 'orders.read' })));
      await via('valid EdDSA token with the scope', 200, bearer(await token(ed, { scope: 'mesh.read' })));
      // The sidecar itself asked the service (its fast-path script, over its own authz cluster).
      const stats = await sidecar.admin('/stats?filter=signalbox.authz');
      assert.match(stats, /cluster\.signalbox\.authz\.upstream_rq_completed: [1-9]/, stats);
    });

    test('key rotation: an unknown kid is refused until the JWKS publishes it, then passes without a restart', async () => {
      const t = await token(rsa2, { sub: 'frank' });
      await gw('unknown kid (not in the JWKS yet)', 401, '/secure', bearer(t));
      jwks.setKeys([rsa.jwk, ec.jwk, ed.jwk, rsa2.jwk]);
      // The refetch for unknown kids is rate-limited (cooldown 1s): poll until it happens.
      await waitFor(async () => (await request(gwPort, '/secure', bearer(t))).status === 200, {
        what: 'rotated key accepted',
        timeoutMs: 10_000,
        intervalMs: 200,
      });
      await gw('unknown kid after the JWKS was rotated to include it', 200, '/secure', bearer(t));
      assert.equal(lastSeen(app).headers['x-user-id'], 'frank');
    });

    test('JWKS endpoint down: cached keys keep serving; a policy that never got keys answers 503', async () => {
      const fetchErrors = async () =>
        Number(/signalbox_authz_jwks_fetches_total\{policy="users",result="error"\} (\d+)/.exec(await sb.adminText('/metrics'))?.[1] ?? 0);
      const errorsBefore = await fetchErrors();
      await jwks.down();
      // The cached set expires within 2s; a refresh is then tried (and fails) on the next check.
      await waitFor(
        async () => {
          await request(gwPort, '/secure', bearer(await token(rsa)));
          return (await fetchErrors()) > errorsBefore;
        },
        { what: 'a failed JWKS refresh', timeoutMs: 10_000, intervalMs: 200 },
      );
      await gw('JWKS server down, cached keys (RS256)', 200, '/secure', bearer(await token(rsa)));
      await gw('JWKS server down, cached keys (EdDSA)', 200, '/secure', bearer(await token(ed)));
      const r = await gw('JWKS server down, no keys ever fetched', 503, '/nokeys', bearer(await token(rsa)));
      assert.equal(r.headers['www-authenticate'], undefined, 'not a token problem: no challenge');
      await jwks.up();
    });

    test('metrics count decisions by policy and reason; tokens never reach the logs', async () => {
      const text = await sb.adminText('/metrics');
      for (const re of [
        /signalbox_authz_decisions_total\{policy="browser",result="allow",reason="ok"\} [1-9]/,
        /signalbox_authz_decisions_total\{policy="users",result="deny",reason="expired"\} [1-9]/,
        /signalbox_authz_decisions_total\{policy="users",result="deny",reason="alg_not_allowed"\} [1-9]/,
        /signalbox_authz_decisions_total\{policy="orders-read",result="deny",reason="claim_mismatch"\} [1-9]/,
        /signalbox_authz_decisions_total\{policy="dead",result="deny",reason="jwks_unavailable"\} [1-9]/,
        /signalbox_authz_jwks_keys\{policy="users"\} 4/,
        /signalbox_authz_check_duration_seconds_bucket/,
      ])
        assert.match(text, re);
      const status = await sb.admin('/api/authz');
      assert.equal(status.policies.users.keys, 4);
      assert.equal(status.policies.dead.keys, 0);
      assert.ok(status.policies.dead.lastError, 'the unreachable JWKS is reported');
      assert.equal(status.endpointForProxies.address, '127.0.0.1');
      const logs = sb.logs();
      const leaked = issued.filter((t) => logs.includes(t) || logs.includes(t.split('.')[2]!));
      assert.equal(leaked.length, 0, 'a token appeared in the control plane log');
      assert.ok(rows.length >= 25, `the token table has ${rows.length} rows`);
    });

    test('a policy change reaches remembered tokens: the same token is asked about again under the new settings (routes only, the listener stays)', async () => {
      const listenerVersion = async () => {
        const dump = await gateway.adminJson<{ configs: { dynamic_listeners?: { name: string; active_state?: { version_info: string } }[] }[] }>(
          '/config_dump?resource=dynamic_listeners',
        );
        return JSON.stringify(dump);
      };
      const t = await token(rsa, { role: 'staff' });
      for (let i = 0; i < 2; i++) await gw('fast path: role staff, allowed (then remembered)', 200, '/roles', bearer(t));
      const listenersBefore = await listenerVersion();
      const file = path.join(dir, 'jwt.yaml');
      const original = readFileSync(file, 'utf8');
      assert.ok(original.includes('in: [admin, staff]'));
      writeFileSync(file, original.replace('in: [admin, staff]', 'in: [admin]'));
      try {
        await waitFor(async () => (await request(gwPort, '/roles', bearer(t))).status === 403, {
          what: 'the remembered token refused under the new rule',
          timeoutMs: 15_000,
          intervalMs: 100,
        });
        rows.push({ via: 'gateway', name: 'policy changed: a remembered token no longer satisfies it', expected: 403, got: 403 });
        assert.equal(await listenerVersion(), listenersBefore, 'the change reached Envoy as routes only: listeners untouched');
      } finally {
        writeFileSync(file, original);
        await waitFor(async () => (await request(gwPort, '/roles', bearer(t))).status === 200, {
          what: 'the original rule back',
          timeoutMs: 15_000,
          intervalMs: 100,
        });
      }
    });

    // Last: it stops the control plane (and with it the ext_authz service).
    test('service unreachable: Envoy fails closed (503) on fast-path and ext_authz routes; a request body still reaches the upstream while the script asks', async () => {
      const posted = await token(rsa, { sub: 'poster' });
      const post = await request(gwPort, '/secure', { ...bearer(posted), 'content-type': 'text/plain' }, 'POST', 'x'.repeat(100_000));
      assert.equal(post.status, 200);
      assert.equal(lastSeen(app).method, 'POST');
      assert.equal(lastSeen(app).bodyBytes, 100_000, 'the body waited for the answer and went on whole');
      const remembered = await token(rsa, { sub: 'remembered' });
      await gw('valid token, service up', 200, '/secure', bearer(remembered));
      await sb.kill();
      // A jti of its own: RS256 signatures are deterministic, so the same claims signed in the same
      // second as an earlier request's token would be that (remembered) token.
      await row(
        'gateway (service down)',
        'fast path, a token not seen before',
        503,
        gwPort,
        '/secure',
        bearer(await token(rsa, { jti: `unseen-${randomUUID()}` })),
      );
      await row('gateway (service down)', 'fast path, no token', 503, gwPort, '/secure');
      await row('gateway (service down)', 'ext_authz route, token in the cookie', 503, gwPort, '/browser', { cookie: `session=${await token(ec)}` });
      // An allow the script remembers holds for its window (at most five minutes) without the service.
      await row('gateway (service down)', 'fast path, a token allowed before', 200, gwPort, '/secure', bearer(remembered));
    });
  });
