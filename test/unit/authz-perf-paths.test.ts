// The ext_authz service's fast per-call paths give the answers the general ones gave:
// - jws.ts (node:crypto, keys imported once) against jose's compactVerify + createLocalJWKSet, as
//   policy.ts used them before, on valid tokens of every algorithm and on many kinds of bad ones;
// - check-codec.ts against protobufjs: the CheckRequest fields read, and the CheckResponse bytes;
// - the decision is synchronous once keys are loaded, and waits (a promise) only when it must;
// - a Check over gRPC with an odd but valid message (a field protobufjs skips but the narrow
//   reader does not expect) still gets its answer, and garbage still gets INVALID_ARGUMENT.
// No timing is asserted here: speed is measured by `npm run bench:authz`.
import assert from 'node:assert/strict';
import { KeyObject, constants, generateKeyPairSync, sign as cryptoSign } from 'node:crypto';
import http2 from 'node:http2';
import { after, describe, test } from 'node:test';
import { compactVerify, createLocalJWKSet, decodeProtectedHeader, errors, type CryptoKey, type JWK } from 'jose';
import prom from 'prom-client';
import { decodeCheckRequest, encodeCheckResponse } from '../../src/authz/check-codec.js';
import { AuthzEngine, type Decision } from '../../src/authz/engine.js';
import { parseJws, prepareKeys, verifyJws } from '../../src/authz/jws.js';
import { AuthzServer, checkAnswer, checkResponse } from '../../src/authz/server.js';
import { JWT_POLICIES_KEY } from '../../src/ir/jwt.js';
import { FAST_PATH_HTTP } from '../../src/xds/translator/filters/jwt-fast.js';
import type { JwtModel, JwtPolicyModel } from '../../src/model/jwt.js';
import { createLogger } from '../../src/observability/logger.js';
import { lookupType } from '../../src/xds/resources/protos.js';
import { makeKey, signToken, startJwksServer, type TestAlg, type TestKey } from '../helpers/jwks-server.js';

const ISS = 'https://issuer.test/';
const silent = createLogger({ level: 'silent' });
const b64 = (v: unknown) => Buffer.from(typeof v === 'string' ? v : JSON.stringify(v)).toString('base64url');
const nowSec = () => Math.floor(Date.now() / 1000);

/** A token with any header, signed by hand (so headers jose would not write can be made). */
function rawToken(key: TestKey, header: Record<string, unknown>, claims: Record<string, unknown>, alg: TestAlg = key.alg): string {
  const input = `${b64(header)}.${b64(claims)}`;
  const k = (key.privateKey as unknown) instanceof KeyObject ? (key.privateKey as unknown as KeyObject) : KeyObject.from(key.privateKey);
  const digest = alg === 'EdDSA' ? null : `sha${alg.slice(2)}`;
  const opts = alg.startsWith('PS')
    ? { key: k, padding: constants.RSA_PKCS1_PSS_PADDING, saltLength: Number(alg.slice(2)) / 8 }
    : alg.startsWith('ES')
      ? { key: k, dsaEncoding: 'ieee-p1363' as const }
      : k;
  return `${input}.${cryptoSign(digest, Buffer.from(input), opts).toString('base64url')}`;
}

/** What policy.ts answered before jws.ts: jose's verification, with its errors in decision words. */
async function joseAnswer(token: string, keys: JWK[], algorithms: string[]): Promise<string> {
  if (token.split('.').length !== 3) return 'malformed';
  let header: Record<string, unknown>;
  try {
    header = decodeProtectedHeader(token) as Record<string, unknown>;
  } catch {
    return 'malformed';
  }
  if (typeof header.alg !== 'string' || !algorithms.includes(header.alg)) return 'alg_not_allowed';
  if (header.b64 === false) return 'malformed';
  const ok = (payload: Uint8Array) => `ok ${Buffer.from(payload).toString('utf8')}`;
  try {
    return ok((await compactVerify(token, createLocalJWKSet({ keys }), { algorithms })).payload);
  } catch (e) {
    if (e instanceof errors.JWKSMultipleMatchingKeys) {
      for await (const key of e as unknown as AsyncIterable<CryptoKey>) {
        try {
          return ok((await compactVerify(token, key, { algorithms })).payload);
        } catch {
          /* the next key */
        }
      }
      return 'bad_signature';
    }
    if (e instanceof errors.JWKSNoMatchingKey) return 'unknown_kid';
    if (e instanceof errors.JWSSignatureVerificationFailed) return 'bad_signature';
    if (e instanceof errors.JOSEAlgNotAllowed || e instanceof errors.JOSENotSupported) return 'alg_not_allowed';
    return 'malformed';
  }
}

function nodeAnswer(token: string, keys: JWK[], algorithms: string[]): string {
  const parsed = parseJws(token, algorithms);
  if (typeof parsed === 'string') return parsed;
  const r = verifyJws(parsed, prepareKeys(keys));
  return typeof r === 'string' ? r : `ok ${r.toString('utf8')}`;
}

describe("jws.ts gives jose's answers", async () => {
  const algs: TestAlg[] = ['RS256', 'RS384', 'RS512', 'PS256', 'PS384', 'PS512', 'ES256', 'ES384', 'EdDSA'];
  const keys = await Promise.all(algs.map((a) => makeKey(a, `k-${a}`)));
  const rsa = keys[0]!;
  const es = keys[6]!;
  const other = await makeKey('RS256', 'k-RS256');
  // jose will not make a key under 2048 bits; node:crypto will.
  const weak = (() => {
    const { privateKey, publicKey } = generateKeyPairSync('rsa', { modulusLength: 1024 });
    return {
      kid: 'weak',
      alg: 'RS256' as const,
      privateKey: privateKey as unknown as CryptoKey,
      publicKey: publicKey as unknown as CryptoKey,
      jwk: { ...(publicKey.export({ format: 'jwk' }) as JWK), kid: 'weak', alg: 'RS256' },
    };
  })();
  const claims = { iss: ISS, aud: 'api', sub: 'alice', exp: nowSec() + 300 };
  const all = ['RS256', 'RS384', 'RS512', 'PS256', 'PS384', 'PS512', 'ES256', 'ES384', 'EdDSA'];

  const cases: { what: string; token: string; keys: JWK[]; algorithms?: string[] }[] = [];
  for (const k of keys) cases.push({ what: `valid ${k.alg}`, token: await signToken(k, claims), keys: keys.map((x) => x.jwk) });
  for (const k of keys)
    cases.push({ what: `${k.alg} signed by another key of the kid`, token: rawToken(k, { alg: k.alg, kid: 'k-RS256' }, claims), keys: [rsa.jwk] });
  const noKid = rawToken(other, { alg: 'RS256' }, claims);
  const push = (what: string, token: string, ks: JWK[], algorithms?: string[]) => cases.push({ what, token, keys: ks, algorithms });
  push('wrong key, same kid', rawToken(other, { alg: 'RS256', kid: 'k-RS256' }, claims), [rsa.jwk]);
  push('unknown kid', rawToken(rsa, { alg: 'RS256', kid: 'nope' }, claims), [rsa.jwk]);
  push('numeric kid', rawToken(rsa, { alg: 'RS256', kid: 7 }, claims), [rsa.jwk]);
  push('no kid, two RSA keys, the second verifies', noKid, [rsa.jwk, { ...other.jwk, kid: 'x' }]);
  push('no kid, two RSA keys, none verifies', rawToken(await makeKey('RS256', 'z'), { alg: 'RS256' }, claims), [rsa.jwk, { ...other.jwk, kid: 'x' }]);
  push('no kid, one key', rawToken(rsa, { alg: 'RS256' }, claims), [rsa.jwk]);
  push('a key without kid, token with kid', rawToken(rsa, { alg: 'RS256', kid: 'k-RS256' }, claims), [{ ...rsa.jwk, kid: undefined }]);
  push('key alg differs from the token alg', rawToken(rsa, { alg: 'PS256', kid: 'k-RS256' }, claims, 'PS256'), [rsa.jwk]);
  push('key without alg, PS256 with an RSA key', rawToken(rsa, { alg: 'PS256', kid: 'k-RS256' }, claims, 'PS256'), [{ ...rsa.jwk, alg: undefined }]);
  push('key use enc', rawToken(rsa, { alg: 'RS256', kid: 'k-RS256' }, claims), [{ ...rsa.jwk, use: 'enc' }]);
  push('key_ops without verify', rawToken(rsa, { alg: 'RS256', kid: 'k-RS256' }, claims), [{ ...rsa.jwk, key_ops: ['encrypt'] }]);
  push('key_ops with verify', rawToken(rsa, { alg: 'RS256', kid: 'k-RS256' }, claims), [{ ...rsa.jwk, key_ops: ['verify'] }]);
  push('key_ops repeated', rawToken(rsa, { alg: 'RS256', kid: 'k-RS256' }, claims), [{ ...rsa.jwk, key_ops: ['verify', 'verify'] }]);
  push('ext not a boolean', rawToken(rsa, { alg: 'RS256', kid: 'k-RS256' }, claims), [{ ...rsa.jwk, ext: 'yes' } as unknown as JWK]);
  push('an RSA key under 2048 bits', rawToken(weak as unknown as TestKey, { alg: 'RS256', kid: 'weak' }, claims), [weak.jwk]);
  push('an RSA key that does not import', rawToken(rsa, { alg: 'RS256', kid: 'k-RS256' }, claims), [{ ...rsa.jwk, n: 'AQAB' }]);
  push('ES256 token, P-384 key only', rawToken(es, { alg: 'ES256', kid: 'k-ES256' }, claims), [keys[7]!.jwk]);
  push(
    'ES256 signature one byte short',
    (() => {
      const t = rawToken(es, { alg: 'ES256', kid: 'k-ES256' }, claims);
      const sig = Buffer.from(t.split('.')[2]!, 'base64url');
      return `${t.split('.').slice(0, 2).join('.')}.${sig.subarray(1).toString('base64url')}`;
    })(),
    [es.jwk],
  );
  push(
    'ES256 signature in DER',
    (() => {
      const t = rawToken(es, { alg: 'ES256', kid: 'k-ES256' }, claims);
      const input = t.split('.').slice(0, 2).join('.');
      return `${input}.${cryptoSign('sha256', Buffer.from(input), KeyObject.from(es.privateKey)).toString('base64url')}`;
    })(),
    [es.jwk],
  );
  push('alg none', `${b64({ alg: 'none' })}.${b64(claims)}.`, [rsa.jwk]);
  push(
    'alg not in the policy',
    await signToken(es, claims),
    keys.map((k) => k.jwk),
    ['RS256'],
  );
  push('HS256', `${b64({ alg: 'HS256', kid: 'k-RS256' })}.${b64(claims)}.c2ln`, [rsa.jwk], [...all, 'HS256']);
  push('alg missing', rawToken(rsa, { kid: 'k-RS256' }, claims), [rsa.jwk]);
  push('crit names an unknown extension', rawToken(rsa, { alg: 'RS256', kid: 'k-RS256', crit: ['exp'], exp: 1 }, claims), [rsa.jwk]);
  push('crit empty', rawToken(rsa, { alg: 'RS256', kid: 'k-RS256', crit: [] }, claims), [rsa.jwk]);
  push('crit not a list', rawToken(rsa, { alg: 'RS256', kid: 'k-RS256', crit: 'b64' }, claims), [rsa.jwk]);
  push('crit b64 without b64', rawToken(rsa, { alg: 'RS256', kid: 'k-RS256', crit: ['b64'] }, claims), [rsa.jwk]);
  push('crit b64 with b64 true', rawToken(rsa, { alg: 'RS256', kid: 'k-RS256', crit: ['b64'], b64: true }, claims), [rsa.jwk]);
  push('b64 a string', rawToken(rsa, { alg: 'RS256', kid: 'k-RS256', crit: ['b64'], b64: 'no' }, claims), [rsa.jwk]);
  push('b64 false', rawToken(rsa, { alg: 'RS256', kid: 'k-RS256', b64: false }, claims), [rsa.jwk]);
  push('header an array', `${b64([1])}.${b64(claims)}.c2ln`, [rsa.jwk]);
  push('header not JSON', `${b64('{nope')}.${b64(claims)}.c2ln`, [rsa.jwk]);
  push('header not UTF-8', `${Buffer.from([0x7b, 0xff, 0x7d]).toString('base64url')}.${b64(claims)}.c2ln`, [rsa.jwk]);
  push('empty header', `.${b64(claims)}.c2ln`, [rsa.jwk]);
  push('two segments', `${b64({ alg: 'RS256' })}.${b64(claims)}`, [rsa.jwk]);
  push('four segments', `${rawToken(rsa, { alg: 'RS256', kid: 'k-RS256' }, claims)}.x`, [rsa.jwk]);
  push(
    'payload not ASCII',
    (() => {
      const [h, , s] = rawToken(rsa, { alg: 'RS256', kid: 'k-RS256' }, claims).split('.');
      return `${h}.é.${s}`;
    })(),
    [rsa.jwk],
  );
  push(
    'payload not base64url but signed',
    (() => {
      const input = `${b64({ alg: 'RS256', kid: 'k-RS256' })}.a$b`;
      return `${input}.${cryptoSign('sha256', Buffer.from(input), KeyObject.from(rsa.privateKey)).toString('base64url')}`;
    })(),
    [rsa.jwk],
  );
  push(
    'payload not base64url',
    (() => {
      const [h, , s] = rawToken(rsa, { alg: 'RS256', kid: 'k-RS256' }, claims).split('.');
      return `${h}.a$b.${s}`;
    })(),
    [rsa.jwk],
  );
  push(
    'signature not base64url',
    (() => {
      const [h, p] = rawToken(rsa, { alg: 'RS256', kid: 'k-RS256' }, claims).split('.');
      return `${h}.${p}.a$b`;
    })(),
    [rsa.jwk],
  );
  push(
    'payload tampered',
    (() => {
      const [h, , s] = rawToken(rsa, { alg: 'RS256', kid: 'k-RS256' }, claims).split('.');
      return `${h}.${b64({ ...claims, sub: 'mallory' })}.${s}`;
    })(),
    [rsa.jwk],
  );
  push('payload not JSON but signed', rawToken(rsa, { alg: 'RS256', kid: 'k-RS256' }, 'x' as unknown as Record<string, unknown>), [rsa.jwk]);
  push('EdDSA with an Ed448-like crv', rawToken(keys[8]!, { alg: 'EdDSA', kid: 'k-EdDSA' }, claims), [{ ...keys[8]!.jwk, crv: 'Ed448' }]);

  test('every case: the same answer (and the same payload bytes when it verifies)', async () => {
    assert.ok(cases.length > 40);
    for (const c of cases) {
      const algorithms = c.algorithms ?? all;
      assert.equal(nodeAnswer(c.token, c.keys, algorithms), await joseAnswer(c.token, c.keys, algorithms), c.what);
    }
  });

  test('padded segments as jose read them; white space inside a segment is malformed (RFC 7515)', async () => {
    const t = rawToken(rsa, { alg: 'RS256', kid: 'k-RS256' }, claims);
    const [h, p, s] = t.split('.');
    assert.equal(nodeAnswer(t, [rsa.jwk], all).startsWith('ok '), true);
    for (const odd of [`${h}=.${p}.${s}`, `${h}.${p}=.${s}`, `${h}.${p}.${s}==`, `${h}.${p}.${s}=`, `${h}.${p}.${s}===`])
      assert.equal(nodeAnswer(odd, [rsa.jwk], all), await joseAnswer(odd, [rsa.jwk], all), odd.slice(-8));
    assert.equal(nodeAnswer(`${h}.${p}.${s.slice(0, 10)} ${s.slice(10)}`, [rsa.jwk], all), 'malformed', 'jose skipped the space');
  });

  test('keys are imported once per key set, not per token', () => {
    const prepared = prepareKeys(keys.map((k) => k.jwk));
    assert.ok(prepared.every((k) => k.key !== undefined));
    const t = rawToken(rsa, { alg: 'RS256', kid: 'k-RS256' }, claims);
    const p = parseJws(t, all);
    assert.notEqual(typeof p, 'string');
    for (let i = 0; i < 3; i++) assert.ok(Buffer.isBuffer(verifyJws(p as Exclude<typeof p, string>, prepared)));
    assert.equal(prepareKeys([{ kty: 'EC', crv: 'P-256', x: 'AA', y: 'AA' }])[0]!.key, undefined, 'a key that does not import is kept, unusable');
  });
});

describe('check-codec.ts against protobufjs', () => {
  const req = lookupType('envoy.service.auth.v3.CheckRequest');
  const res = lookupType('envoy.service.auth.v3.CheckResponse');
  const long = 'v'.repeat(300);

  test('CheckResponse bytes are the ones protobufjs wrote, for allows and every kind of refusal', () => {
    const decisions: Decision[] = [
      { allow: true, reason: 'ok', headers: [], removeHeaders: [] },
      { allow: true, reason: 'ok', headers: [{ name: 'x-user-id', value: 'alice' }], removeHeaders: ['x-email'] },
      {
        allow: true,
        reason: 'ok',
        headers: [
          { name: 'x-user-id', value: 'José, the 1st ✓' },
          { name: 'x-long', value: long },
          { name: 'x-empty-next', value: '' },
        ],
        removeHeaders: ['a', 'b', 'x'.repeat(200)],
        window: { until: 5 },
      },
      { allow: true, reason: 'no_token_optional', headers: [], removeHeaders: ['x-user-id'] },
    ];
    for (const [status, reason] of [
      [400, 'multiple_tokens'],
      [401, 'expired'],
      [403, 'claim_mismatch'],
      [503, 'jwks_unavailable'],
    ] as const) {
      decisions.push({
        allow: false,
        status,
        reason,
        headers: [
          { name: 'content-type', value: 'application/json' },
          { name: 'www-authenticate', value: `Bearer error="invalid_token", error_description="${long}"` },
        ],
        body: JSON.stringify({ error: 'x', error_description: long }),
      });
    }
    decisions.push({ allow: false, status: 401, reason: 'malformed', headers: [], body: '' });
    for (const d of decisions) {
      const want = Buffer.from(res.encode(res.fromObject(checkResponse(d))).finish());
      assert.deepEqual(encodeCheckResponse(checkAnswer(d)), want, JSON.stringify(d).slice(0, 80));
    }
  });

  /** A CheckRequest as Envoy sends one, with the parts the service skips filled in. */
  const full = (over: Record<string, unknown> = {}) => ({
    attributes: {
      source: {
        address: { socket_address: { address: '10.0.0.1', port_value: 5555 } },
        principal: 'spiffe://x/y',
        certificate: 'C'.repeat(2000),
        labels: { a: 'b' },
      },
      destination: { address: { socket_address: { address: '10.0.0.2', port_value: 8080 } }, service: 'svc' },
      request: {
        time: { seconds: 1_700_000_000, nanos: 5 },
        http: {
          id: '123',
          method: 'GET',
          headers: { authorization: 'Bearer a.b.c', ':path': '/x?y=1', 'x-long': long, 'x-utf8': 'é✓' },
          path: '/x?y=1',
          host: 'h',
          scheme: 'https',
          size: -1,
          protocol: 'HTTP/1.1',
          raw_body: Buffer.from([1, 2, 3]),
          header_map: { headers: [{ key: 'authorization', raw_value: Buffer.from('Bearer z') }] },
        },
      },
      context_extensions: { 'signalbox.jwt': 'a,b', other: 'x' },
      metadata_context: { filter_metadata: { f: { fields: { k: { string_value: 'v' } } } } },
      tls_session: { sni: 'sni.example' },
      ...over,
    },
  });
  const view = (bytes: Uint8Array) => {
    const m = req.decode(bytes) as unknown as {
      attributes?: { request?: { http?: { headers?: Record<string, string>; path?: string } }; context_extensions?: Record<string, string> };
    };
    const http = m.attributes?.request?.http;
    return {
      headers: http?.headers ? { ...http.headers } : undefined,
      path: http?.path,
      contextExtensions:
        m.attributes?.context_extensions && Object.keys(m.attributes.context_extensions).length ? { ...m.attributes.context_extensions } : undefined,
    };
  };
  const mine = (bytes: Uint8Array) => {
    const v = decodeCheckRequest(bytes);
    return { headers: v.headers ? { ...v.headers } : undefined, path: v.path, contextExtensions: v.contextExtensions ? { ...v.contextExtensions } : undefined };
  };

  test('the fields read are the ones protobufjs decoded, whatever else the message holds', () => {
    const messages = [
      full(),
      full({ request: { http: { headers: {} } } }),
      full({ request: { http: { path: '/only' } } }),
      full({ request: {} }),
      full({ context_extensions: {} }),
      { attributes: {} },
      {},
    ];
    for (const m of messages) {
      const bytes = req.encode(req.fromObject(m)).finish();
      assert.deepEqual(mine(bytes), view(bytes), JSON.stringify(m).slice(0, 120));
    }
  });

  test('repeated fields as protobufjs read them: a later message replaces, a later map key wins', () => {
    const a = Buffer.from(req.encode(req.fromObject(full())).finish());
    const b = Buffer.from(
      req
        .encode(
          req.fromObject({ attributes: { request: { http: { headers: { authorization: 'Bearer second' } } }, context_extensions: { 'signalbox.jwt': 'c' } } }),
        )
        .finish(),
    );
    const both = Buffer.concat([a, b]);
    assert.deepEqual(mine(both), view(both));
    assert.equal(decodeCheckRequest(both).headers!.authorization, 'Bearer second');
  });

  test('unexpected shapes throw (the server then asks protobufjs), truncation too', () => {
    const bytes = Buffer.from(req.encode(req.fromObject(full())).finish());
    assert.throws(() => decodeCheckRequest(bytes.subarray(0, bytes.length - 3)));
    assert.throws(() => decodeCheckRequest(Buffer.from([0x0b, 0x0c])), 'a group');
    assert.throws(() => decodeCheckRequest(Buffer.from([0x08, 0x01])), 'attributes as a varint');
    assert.deepEqual(decodeCheckRequest(Buffer.alloc(0)), { headers: undefined, path: undefined, contextExtensions: undefined });
  });
});

describe('the decision waits only when it must', async () => {
  const rsa = await makeKey('RS256', 'rsa');
  const policy = (jwks: JwtPolicyModel['jwks']): JwtPolicyModel => ({
    name: 'p',
    target: { kind: 'HTTPRoute', name: 'r' },
    issuer: ISS,
    audiences: ['api'],
    algorithms: ['RS256'],
    clockSkewMs: 30_000,
    from: [{ header: 'authorization', prefix: 'Bearer ' }],
    require: [],
    forwardClaims: [{ claim: 'sub', header: 'x-user-id' }],
    optional: false,
    maxTokenBytes: 8192,
    jwks,
    unavailableStatus: 503,
    source: { file: 'p.yaml', doc: 1 },
  });
  const model = (p: JwtPolicyModel): JwtModel => ({ policies: new Map([[p.name, p]]), byTarget: new Map() });
  const input = (token: string) => ({ headers: { authorization: `Bearer ${token}` }, path: '/', policies: ['p'] });
  const engines: AuthzEngine[] = [];
  after(() => {
    for (const e of engines) e.close();
  });

  test('keys loaded: answered synchronously, allows and refusals alike; distinct tokens each verified', async () => {
    const e = new AuthzEngine();
    engines.push(e);
    e.update(model(policy({ kind: 'inline', keys: [rsa.jwk] })));
    for (let i = 0; i < 20; i++) {
      const d = e.checkNow(input(await signToken(rsa, { iss: ISS, aud: 'api', sub: `user-${i}` })));
      assert.ok(!(d instanceof Promise), 'no promise');
      assert.equal(d.allow, true);
      assert.deepEqual(d.allow && d.headers, [{ name: 'x-user-id', value: `user-${i}` }]);
    }
    const refused = e.checkNow(input(await signToken(rsa, { iss: ISS, aud: 'other' })));
    assert.ok(!(refused instanceof Promise));
    assert.equal(refused.allow === false && refused.reason, 'wrong_audience');
    const unknownKid = e.checkNow(input(await signToken(rsa, { iss: ISS, aud: 'api' }, { kid: 'nope' })));
    assert.ok(!(unknownKid instanceof Promise), 'inline keys: an unknown kid cannot be fetched, no wait');
    assert.equal(unknownKid.allow === false && unknownKid.reason, 'unknown_kid');
  });

  test('keys from a URL: the first check waits for them, later ones do not; an unknown kid waits for one reload', async () => {
    const server = await startJwksServer([rsa.jwk]);
    const e = new AuthzEngine();
    engines.push(e);
    try {
      e.update(model(policy({ kind: 'uri', uri: server.url, timeoutMs: 2000, minCacheMs: 60_000, maxCacheMs: 60_000, cooldownMs: 10_000 })));
      const token = await signToken(rsa, { iss: ISS, aud: 'api' });
      const first = e.checkNow(input(token));
      assert.equal((await first).allow, true);
      const second = e.checkNow(input(await signToken(rsa, { iss: ISS, aud: 'api', sub: 'bob' })));
      assert.ok(!(second instanceof Promise), 'keys loaded: no promise');
      assert.equal(second.allow, true);
      const rotated = await makeKey('RS256', 'rotated');
      server.setKeys([rsa.jwk, rotated.jwk]);
      const before = server.requests;
      const d = e.checkNow(input(await signToken(rotated, { iss: ISS, aud: 'api' })));
      assert.ok(d instanceof Promise, 'an unknown kid may be a rotation: it waits for a reload');
      assert.equal((await d).allow, true);
      assert.equal(server.requests, before + 1);
    } finally {
      await server.close();
    }
  });
});

describe('Check over gRPC: odd messages still answered', async () => {
  const rsa = await makeKey('RS256', 'rsa');
  const server = new AuthzServer({ logger: silent, registry: new prom.Registry() });
  server.update({
    jwt: {
      policies: new Map([
        [
          'p',
          {
            name: 'p',
            target: { kind: 'HTTPRoute', name: 'r' },
            issuer: ISS,
            audiences: ['api'],
            algorithms: ['RS256'],
            clockSkewMs: 30_000,
            from: [{ header: 'authorization', prefix: 'Bearer ' }],
            require: [],
            forwardClaims: [{ claim: 'sub', header: 'x-user-id' }],
            optional: false,
            maxTokenBytes: 8192,
            jwks: { kind: 'inline', keys: [rsa.jwk] },
            unavailableStatus: 503,
            source: { file: 'p.yaml', doc: 1 },
          },
        ],
      ]),
      byTarget: new Map(),
    },
  });
  const port = await server.listen('127.0.0.1:0');
  after(() => server.close());
  const req = lookupType('envoy.service.auth.v3.CheckRequest');
  const res = lookupType('envoy.service.auth.v3.CheckResponse');

  /** One Check in plain text (h2c): the response message and grpc-status. */
  function call(message: Buffer): Promise<{ status: string; body: Buffer }> {
    return new Promise((resolve, reject) => {
      const session = http2.connect(`http://127.0.0.1:${port}`);
      session.on('error', reject);
      const s = session.request({
        ':method': 'POST',
        ':path': '/envoy.service.auth.v3.Authorization/Check',
        'content-type': 'application/grpc',
        te: 'trailers',
      });
      const chunks: Buffer[] = [];
      let status = '';
      s.on('response', (h) => (status = String(h['grpc-status'] ?? '')));
      s.on('trailers', (t) => (status = String(t['grpc-status'] ?? status)));
      s.on('data', (c: Buffer) => chunks.push(c));
      s.on('end', () => {
        session.close();
        const all = Buffer.concat(chunks);
        resolve({ status, body: all.length >= 5 ? all.subarray(5) : all });
      });
      const frame = Buffer.alloc(5 + message.length);
      frame.writeUInt32BE(message.length, 1);
      message.copy(frame, 5);
      s.end(frame);
    });
  }

  test('a plain message, one with a group protobufjs skips, and garbage', async () => {
    const token = await signToken(rsa, { iss: ISS, aud: 'api', sub: 'alice' });
    const plain = Buffer.from(
      req
        .encode(
          req.fromObject({
            attributes: { request: { http: { headers: { authorization: `Bearer ${token}` }, path: '/' } }, context_extensions: { [JWT_POLICIES_KEY]: 'p' } },
          }),
        )
        .finish(),
    );
    // Field 99 as a group (start 99/3, end 99/4): valid protobuf the narrow reader does not take.
    const group = Buffer.concat([Buffer.from([0x9b, 0x06, 0x9c, 0x06]), plain]);
    assert.throws(() => decodeCheckRequest(group));
    for (const m of [plain, group]) {
      const r = await call(m);
      assert.equal(r.status, '0');
      const answer = res.toObject(res.decode(r.body), { defaults: false }) as { ok_response?: { headers?: { header: { key: string; value: string } }[] } };
      assert.ok(answer.ok_response, JSON.stringify(answer));
      assert.deepEqual(
        answer.ok_response?.headers?.map((h) => [h.header.key, h.header.value]),
        [['x-user-id', 'alice']],
      );
    }
    assert.equal((await call(Buffer.from([0xff, 0xff, 0xff]))).status, '3', 'INVALID_ARGUMENT');
  });

  test('calls and fast-path reports the caller resets before their end are dropped; the service keeps answering', async () => {
    const token = await signToken(rsa, { iss: ISS, aud: 'api', sub: 'alice' });
    const message = Buffer.from(
      req
        .encode(
          req.fromObject({
            attributes: { request: { http: { headers: { authorization: `Bearer ${token}` }, path: '/' } }, context_extensions: { [JWT_POLICIES_KEY]: 'p' } },
          }),
        )
        .finish(),
    );
    const frame = Buffer.alloc(5 + message.length);
    frame.writeUInt32BE(message.length, 1);
    message.copy(frame, 5);
    const session = http2.connect(`http://127.0.0.1:${port}`);
    session.on('error', () => undefined);
    await new Promise((resolve) => session.once('connect', resolve));
    for (let i = 0; i < 100; i++) {
      const check = session.request({ ':method': 'POST', ':path': '/envoy.service.auth.v3.Authorization/Check', 'content-type': 'application/grpc' });
      const report = session.request({ ':method': 'POST', ':path': FAST_PATH_HTTP.reports, [FAST_PATH_HTTP.reportId]: `abc-${i}` });
      for (const [s, body] of [
        [check, frame],
        [report, Buffer.from('p 1\n')],
      ] as const) {
        s.on('error', () => undefined);
        s.write(body);
        // Reset before the request ends, with NO_ERROR as Envoy resets a call it gave up on: node
        // then ends the request for the service with the stream already closed.
        s.close(http2.constants.NGHTTP2_NO_ERROR);
      }
    }
    // A ping answered after all that: the service has read every frame before it.
    await new Promise<void>((resolve, reject) => session.ping((e) => (e ? reject(e) : resolve())));
    session.destroy();
    const r = await call(message);
    assert.equal(r.status, '0', 'still serving');
  });
});
