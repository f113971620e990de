// The ext_authz decision logic without Envoy: token extraction, signature and claim checks,
// require rules, forwarded claims, several policies on one route, and the CheckResponse shape.
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { exportJWK, FlattenedSign, generateKeyPair, SignJWT } from 'jose';
import { fastPathAnswer, policyOfPath } from '../../src/authz/fast-path.js';
import { AuthzEngine, challenge, type Decision } from '../../src/authz/engine.js';
import { extractToken } from '../../src/authz/extract.js';
import { checkClaims, claimValue, headerValue, ruleHolds } from '../../src/authz/policy.js';
import { checkResponse } from '../../src/authz/server.js';
import type { JwtModel, JwtPolicyModel } from '../../src/model/jwt.js';
import { lookupType } from '../../src/xds/resources/protos.js';
import { asAlg, hmacWithPublicKey, makeKey, signToken, unsignedToken, type TestKey } from '../helpers/jwks-server.js';

const ISS = 'https://issuer.test/';
const now = () => Math.floor(Date.now() / 1000);

function policy(name: string, keys: TestKey[], over: Partial<JwtPolicyModel> = {}): JwtPolicyModel {
  return {
    name,
    target: { kind: 'HTTPRoute', name: 'r' },
    issuer: ISS,
    audiences: ['api'],
    algorithms: ['RS256', 'ES256', 'EdDSA'],
    clockSkewMs: 30_000,
    from: [{ header: 'authorization', prefix: 'Bearer ' }],
    require: [],
    forwardClaims: [],
    optional: false,
    maxTokenBytes: 8192,
    jwks: { kind: 'inline', keys: keys.map((k) => k.jwk) },
    unavailableStatus: 503,
    source: { file: 'p.yaml', doc: 1 },
    ...over,
  };
}

function model(...ps: JwtPolicyModel[]): JwtModel {
  return { policies: new Map(ps.map((p) => [p.name, p])), byTarget: new Map() };
}

const req = (headers: Record<string, string>, policies: string[] | undefined = ['p'], path = '/x') => ({ headers, path, policies });

function denied(d: Decision): Extract<Decision, { allow: false }> {
  assert.equal(d.allow, false, `expected a denial, got ${JSON.stringify(d)}`);
  return d as Extract<Decision, { allow: false }>;
}

describe('token extraction', () => {
  const header = [{ header: 'authorization', prefix: 'Bearer ' }];
  test('header with prefix (case-insensitive scheme), other schemes are no token', () => {
    assert.deepEqual(extractToken({ headers: { authorization: 'Bearer a.b.c' }, path: '/' }, header, 100), { kind: 'token', token: 'a.b.c' });
    assert.deepEqual(extractToken({ headers: { authorization: 'bearer   a.b.c ' }, path: '/' }, header, 100), { kind: 'token', token: 'a.b.c' });
    assert.deepEqual(extractToken({ headers: { authorization: 'Basic abc' }, path: '/' }, header, 100), { kind: 'none' });
    assert.deepEqual(extractToken({ headers: {}, path: '/' }, header, 100), { kind: 'none' });
  });
  test('two Authorization headers (joined by Envoy with a comma) are two tokens', () => {
    assert.deepEqual(extractToken({ headers: { authorization: 'Bearer a.b.c,Bearer d.e.f' }, path: '/' }, header, 100), { kind: 'multiple' });
    assert.deepEqual(extractToken({ headers: { authorization: 'Basic x,Bearer d.e.f' }, path: '/' }, header, 100), { kind: 'multiple' });
  });
  test('cookie and query, in the order given; duplicates are refused', () => {
    const sources = [{ cookie: 'session' }, { query: 'access_token' }];
    assert.deepEqual(extractToken({ headers: { cookie: 'a=1; session="t.o.k"' }, path: '/' }, sources, 100), { kind: 'token', token: 't.o.k' });
    assert.deepEqual(extractToken({ headers: {}, path: '/p?x=1&access_token=q.u.e' }, sources, 100), { kind: 'token', token: 'q.u.e' });
    assert.deepEqual(extractToken({ headers: { cookie: 'session=c.o.k' }, path: '/p?access_token=q.u.e' }, sources, 100), { kind: 'token', token: 'c.o.k' });
    assert.deepEqual(extractToken({ headers: { cookie: 'session=a; session=b' }, path: '/' }, sources, 100), { kind: 'multiple' });
    assert.deepEqual(extractToken({ headers: {}, path: '/?access_token=a&access_token=b' }, sources, 100), { kind: 'multiple' });
    assert.deepEqual(extractToken({ headers: { cookie: 'other=x' }, path: '/?token=x' }, sources, 100), { kind: 'none' });
  });
  test('tokens over the size limit are refused before parsing', () => {
    assert.deepEqual(extractToken({ headers: { authorization: `Bearer ${'a'.repeat(300)}` }, path: '/' }, header, 256), { kind: 'too_large' });
    assert.deepEqual(extractToken({ headers: {}, path: `/?t=${'a'.repeat(300)}` }, [{ query: 't' }], 256), { kind: 'too_large' });
    assert.deepEqual(extractToken({ headers: { authorization: `Bearer ${'a'.repeat(256)}` }, path: '/' }, header, 256), {
      kind: 'token',
      token: 'a'.repeat(256),
    });
  });
});

describe('claims and rules', () => {
  const p = { issuer: ISS, audiences: ['api'], clockSkewMs: 30_000 };
  const t = 1_700_000_000;
  test('exp, nbf and iat with clock skew; exp is required', () => {
    const base = { iss: ISS, aud: 'api' };
    assert.equal(checkClaims({ ...base, exp: t + 1 }, p, t), undefined);
    assert.equal(checkClaims({ ...base, exp: t - 29 }, p, t), undefined, 'within skew');
    assert.equal(checkClaims({ ...base, exp: t - 30 }, p, t), 'expired');
    assert.equal(checkClaims({ ...base, exp: t + 60, nbf: t + 29 }, p, t), undefined);
    assert.equal(checkClaims({ ...base, exp: t + 60, nbf: t + 31 }, p, t), 'not_yet_valid');
    assert.equal(checkClaims({ ...base, exp: t + 60, iat: t + 31 }, p, t), 'issued_in_future');
    assert.equal(checkClaims({ ...base }, p, t), 'missing_exp');
    assert.equal(checkClaims({ ...base, exp: '123' }, p, t), 'malformed');
    assert.equal(checkClaims({ ...base, exp: t + 60 }, { ...p, clockSkewMs: 0 }, t), undefined);
  });
  test('issuer exact, audience string or array', () => {
    assert.equal(checkClaims({ iss: ISS.slice(0, -1), aud: 'api', exp: t + 60 }, p, t), 'wrong_issuer');
    assert.equal(checkClaims({ iss: ISS, aud: ['x', 'api'], exp: t + 60 }, p, t), undefined);
    assert.equal(checkClaims({ iss: ISS, aud: ['x'], exp: t + 60 }, p, t), 'wrong_audience');
    assert.equal(checkClaims({ iss: ISS, exp: t + 60 }, p, t), 'wrong_audience');
    assert.equal(checkClaims({ iss: ISS, exp: t + 60 }, { ...p, audiences: [] }, t), undefined, 'no audiences: aud not checked');
  });
  test('contains: space-separated strings and arrays; in: scalars and arrays; equals: exact', () => {
    assert.equal(ruleHolds({ claim: 'scope', contains: 'a' }, 'b a c'), true);
    assert.equal(ruleHolds({ claim: 'scope', contains: 'a' }, 'ab c'), false);
    assert.equal(ruleHolds({ claim: 'scope', contains: 'a' }, ['b', 'a']), true);
    assert.equal(ruleHolds({ claim: 'scope', contains: 'a' }, undefined), false);
    assert.equal(ruleHolds({ claim: 'role', in: ['admin', 'staff'] }, 'staff'), true);
    assert.equal(ruleHolds({ claim: 'role', in: ['admin', 'staff'] }, ['guest', 'admin']), true);
    assert.equal(ruleHolds({ claim: 'role', in: ['admin'] }, { admin: true }), false);
    assert.equal(ruleHolds({ claim: 'level', in: [1, 2] }, '1'), false, 'no type coercion');
    assert.equal(ruleHolds({ claim: 'email_verified', equals: true }, true), true);
    assert.equal(ruleHolds({ claim: 'email_verified', equals: true }, 'true'), false);
  });
  test('claim names: top-level first, then a dotted path', () => {
    const payload = { 'https://x/roles': ['a'], realm: { roles: ['r'] }, 'a.b': 1, a: { b: 2 } };
    assert.deepEqual(claimValue(payload, 'https://x/roles'), ['a']);
    assert.deepEqual(claimValue(payload, 'realm.roles'), ['r']);
    assert.equal(claimValue(payload, 'a.b'), 1);
    assert.equal(claimValue(payload, 'realm.missing'), undefined);
  });
  test('forwarded values: strings, numbers, lists; control characters and absent claims are not forwarded', () => {
    assert.equal(headerValue('alice'), 'alice');
    assert.equal(headerValue(42), '42');
    assert.equal(headerValue(['a', 'b']), 'a,b');
    assert.equal(headerValue({ k: 1 }), '{"k":1}');
    assert.equal(headerValue('a\r\nx-admin: 1'), undefined);
    assert.equal(headerValue(undefined), undefined);
    assert.equal(headerValue(''), undefined);
  });
  test('challenges follow RFC 6750', () => {
    assert.equal(challenge('invalid_token', 'token expired'), 'Bearer error="invalid_token", error_description="token expired"');
    assert.equal(challenge('insufficient_scope', 'x', 'orders.read'), 'Bearer error="insufficient_scope", error_description="x", scope="orders.read"');
  });
});

describe('AuthzEngine with inline keys', async () => {
  const [rsa, ec, ed, other] = await Promise.all([makeKey('RS256', 'rsa'), makeKey('ES256', 'ec'), makeKey('EdDSA', 'ed'), makeKey('RS256', 'rsa')]);
  const tok = (k: TestKey, extra: Record<string, unknown> = {}, header: Record<string, unknown> = {}) =>
    signToken(k, { iss: ISS, aud: 'api', sub: 'alice', ...extra }, header);
  const engine = (...ps: JwtPolicyModel[]) => {
    const e = new AuthzEngine();
    e.update(model(...ps));
    return e;
  };

  test('valid RS256, ES256 and EdDSA tokens pass and forward claims; client copies are stripped', async () => {
    const e = engine(
      policy('p', [rsa, ec, ed], {
        forwardClaims: [
          { claim: 'sub', header: 'x-user-id' },
          { claim: 'email', header: 'x-email' },
        ],
      }),
    );
    for (const k of [rsa, ec, ed]) {
      const now = Math.floor(Date.now() / 1000);
      const d = await e.check(req({ authorization: `Bearer ${await tok(k, { iat: now - 10, nbf: now - 20, exp: now + 100 })}`, 'x-user-id': 'root' }));
      assert.ok(d.allow);
      const { window, ...rest } = d;
      assert.deepEqual(rest, { allow: true, reason: 'ok', headers: [{ name: 'x-user-id', value: 'alice' }], removeHeaders: ['x-email'] });
      // The same token gets this answer from the later of nbf and iat to exp, widened by the skew.
      const skew = 30; // the policy's clockSkewMs
      assert.deepEqual(window, { from: now - 10 - skew, until: now + 100 + skew });
    }
    e.close();
  });

  test('alg none, HS256 with the public key, algorithms outside the list, b64=false are refused', async () => {
    const e = engine(policy('p', [rsa], { algorithms: ['RS256'] }));
    const claims = { iss: ISS, aud: 'api', exp: now() + 60 };
    for (const t of [unsignedToken(claims, 'rsa'), await hmacWithPublicKey(rsa, claims), await signToken(await asAlg(rsa, 'PS256'), claims)]) {
      const d = denied(await e.check(req({ authorization: `Bearer ${t}` })));
      assert.equal(d.status, 401);
      assert.equal(d.reason, 'alg_not_allowed');
    }
    // Unencoded payload (RFC 7797): never a JWT.
    const flat = await new FlattenedSign(new TextEncoder().encode('{"exp":9999999999}'))
      .setProtectedHeader({ alg: 'RS256', kid: 'rsa', b64: false, crit: ['b64'] })
      .sign(rsa.privateKey);
    const raw = `${flat.protected}.${flat.payload}.${flat.signature}`;
    assert.equal(raw.split('.').length, 3);
    const d = denied(await e.check(req({ authorization: `Bearer ${raw}` })));
    assert.deepEqual([d.status, d.reason], [401, 'malformed']);
    e.close();
  });

  test('bad signature, unknown kid, no kid with several candidate keys', async () => {
    const e = engine(
      policy(
        'p',
        [rsa, other].map((k, i) => ({ ...k, jwk: { ...k.jwk, kid: `k${i}` } })),
      ),
    );
    assert.equal(denied(await e.check(req({ authorization: `Bearer ${await tok(rsa, {}, { kid: 'k1' })}` }))).reason, 'bad_signature');
    assert.equal(denied(await e.check(req({ authorization: `Bearer ${await tok(rsa, {}, { kid: 'nope' })}` }))).reason, 'unknown_kid');
    // No kid: both RSA keys are candidates; the one that verifies wins.
    const noKid = await new SignJWT({ iss: ISS, aud: 'api', exp: now() + 60 }).setProtectedHeader({ alg: 'RS256' }).sign(other.privateKey);
    assert.equal((await e.check(req({ authorization: `Bearer ${noKid}` }))).allow, true);
    e.close();
  });

  test('several policies: all must pass, the first refusal answers; unknown policy 503; no policy 403', async () => {
    const e = engine(policy('a', [rsa]), policy('b', [rsa], { require: [{ claim: 'scope', contains: 'w' }] }));
    assert.equal((await e.check(req({ authorization: `Bearer ${await tok(rsa, { scope: 'r w' })}` }, ['a', 'b']))).allow, true);
    const d = denied(await e.check(req({ authorization: `Bearer ${await tok(rsa, { scope: 'r' })}` }, ['a', 'b'])));
    assert.equal(d.status, 403);
    assert.equal(d.policy, 'b');
    assert.match(d.headers.find((h) => h.name === 'www-authenticate')!.value, /insufficient_scope/);
    assert.equal(denied(await e.check(req({}, ['a', 'zzz']))).status, 401, 'a refuses first');
    assert.equal(denied(await e.check(req({ authorization: `Bearer ${await tok(rsa)}` }, ['a', 'zzz']))).status, 503);
    assert.equal(denied(await e.check({ headers: {}, path: '/', policies: undefined })).status, 403);
    assert.equal(denied(await e.check({ headers: {}, path: '/', policies: [] })).status, 403);
    e.close();
  });

  test('optional: no token passes (forwarded headers stripped); a bad token does not', async () => {
    const e = engine(policy('p', [rsa], { optional: true, forwardClaims: [{ claim: 'sub', header: 'x-user-id' }] }));
    assert.deepEqual(await e.check(req({ 'x-user-id': 'root' })), { allow: true, reason: 'no_token_optional', headers: [], removeHeaders: ['x-user-id'] });
    assert.equal(denied(await e.check(req({ authorization: 'Bearer x.y.z' }))).status, 401);
    assert.equal(denied(await e.check(req({ authorization: `Bearer ${await tok(other)}` }))).reason, 'bad_signature');
    e.close();
  });

  test('a removed policy answers for a grace period; a changed one takes effect at once', async () => {
    let clock = Date.now();
    const e = new AuthzEngine({ now: () => clock });
    e.update(model(policy('p', [rsa])));
    const good = await tok(rsa);
    assert.equal((await e.check(req({ authorization: `Bearer ${good}` }))).allow, true);
    e.update(model(policy('p', [rsa], { require: [{ claim: 'role', equals: 'admin' }] })));
    assert.equal(denied(await e.check(req({ authorization: `Bearer ${good}` }))).status, 403, 'the cached verification does not skip the new rule');
    e.update(model());
    assert.equal(denied(await e.check(req({ authorization: `Bearer ${good}` }))).status, 403, 'still answered during the grace period');
    clock += 61_000;
    e.update(model());
    assert.equal(denied(await e.check(req({ authorization: `Bearer ${good}` }))).status, 503);
    e.close();
  });

  test('CheckResponse: OK with headers to set (append false) and to remove; denials carry status, headers and body', () => {
    const res = lookupType('envoy.service.auth.v3.CheckResponse');
    const roundTrip = (d: Decision) =>
      res.toObject(res.decode(res.encode(res.fromObject(checkResponse(d))).finish()), { enums: String, defaults: false }) as Record<string, any>;
    const ok = roundTrip({ allow: true, reason: 'ok', headers: [{ name: 'x-user-id', value: 'alice' }], removeHeaders: ['x-email'] });
    assert.equal(ok.status?.code ?? 0, 0);
    assert.deepEqual(ok.ok_response.headers, [{ header: { key: 'x-user-id', value: 'alice' }, append: { value: false } }]);
    assert.deepEqual(ok.ok_response.headers_to_remove, ['x-email']);
    const no = roundTrip({
      allow: false,
      status: 401,
      reason: 'expired',
      headers: [{ name: 'www-authenticate', value: 'Bearer error="invalid_token"' }],
      body: '{}',
    });
    assert.equal(no.status.code, 16);
    assert.equal(no.denied_response.status.code, 'Unauthorized');
    assert.equal(no.denied_response.headers[0].header.key, 'www-authenticate');
  });

  test('fast-path answers: allows with the whole seconds they hold for, refusals as the client gets them', () => {
    const allow = (window?: { from?: number; until: number }) =>
      fastPathAnswer({
        allow: true,
        reason: 'ok',
        headers: [{ name: 'x-user-id', value: 'José, the 1st' }],
        removeHeaders: ['x-email'],
        ...(window ? { window } : {}),
      });
    assert.equal(allow({ from: 100.5, until: 200 }), 'allow\ncache 101 199\nset x-user-id José, the 1st\nremove x-email\n');
    assert.equal(allow({ from: 100, until: 200.7 }), 'allow\ncache 100 199\nset x-user-id José, the 1st\nremove x-email\n');
    assert.equal(allow({ until: 50 }).split('\n')[1], 'cache - 49');
    assert.equal(allow().split('\n')[1], 'set x-user-id José, the 1st', 'no token judged: nothing to remember');
    const deny = fastPathAnswer({
      allow: false,
      status: 401,
      reason: 'expired',
      headers: [{ name: 'www-authenticate', value: 'Bearer error="invalid_token"' }],
      body: '{"a":"b\\nbody\\n"}',
    });
    assert.equal(deny, 'deny 401\nheader www-authenticate Bearer error="invalid_token"\nbody\n{"a":"b\\nbody\\n"}');
    assert.equal(policyOfPath('/signalbox.jwt/check/users%2Dapi', '/signalbox.jwt/check/'), 'users-api');
    assert.equal(policyOfPath('/signalbox.jwt/check/', '/signalbox.jwt/check/'), undefined);
    assert.equal(policyOfPath('/signalbox.jwt/check/%E0', '/signalbox.jwt/check/'), undefined);
    assert.equal(policyOfPath('/other/x', '/signalbox.jwt/check/'), undefined);
  });

  test('a key set with only an unrelated key type gives unknown_kid, not a crash', async () => {
    const { publicKey } = await generateKeyPair('ES384');
    const e = engine(policy('p', [], { jwks: { kind: 'inline', keys: [{ ...(await exportJWK(publicKey)), kid: 'x' }] }, algorithms: ['RS256', 'ES384'] }));
    assert.equal(denied(await e.check(req({ authorization: `Bearer ${await tok(rsa)}` }))).reason, 'unknown_kid');
    e.close();
  });
});
