// The ext_authz service's gRPC endpoint, spoken to by an independent gRPC implementation
// (@grpc/grpc-js as the client): Check allowed and denied, unknown methods, undecodable requests.
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import * as grpc from '@grpc/grpc-js';
import { AuthzServer } from '../../src/authz/server.js';
import { createLogger } from '../../src/observability/logger.js';
import { lookupType } from '../../src/xds/resources/protos.js';
import { makeKey, signToken, type TestKey } from '../helpers/jwks-server.js';

const ISS = 'https://issuer.test/';

describe('ext_authz gRPC endpoint', () => {
  let server: AuthzServer;
  let port: number;
  let key: TestKey;
  let client: grpc.Client & Record<string, Function>;
  const req = lookupType('envoy.service.auth.v3.CheckRequest');
  const res = lookupType('envoy.service.auth.v3.CheckResponse');

  before(async () => {
    key = await makeKey('ES256', 'k');
    server = new AuthzServer({ logger: createLogger({ level: 'silent' }) });
    server.update({
      jwt: {
        policies: new Map([
          [
            'p',
            {
              name: 'p',
              target: { kind: 'Gateway', name: 'g' },
              issuer: ISS,
              audiences: [],
              algorithms: ['ES256'],
              clockSkewMs: 0,
              from: [{ header: 'authorization', prefix: 'Bearer ' }],
              require: [],
              forwardClaims: [{ claim: 'sub', header: 'x-user-id' }],
              optional: false,
              maxTokenBytes: 8192,
              jwks: { kind: 'inline', keys: [key.jwk] },
              unavailableStatus: 503,
              source: { file: 'p.yaml', doc: 1 },
            },
          ],
        ]),
        byTarget: new Map(),
      },
    });
    port = await server.listen('127.0.0.1:0');
    const method = (path: string) => ({
      path,
      requestStream: false,
      responseStream: false,
      requestSerialize: (v: object | Buffer) => (Buffer.isBuffer(v) ? v : Buffer.from(req.encode(req.fromObject(v)).finish())),
      requestDeserialize: (b: Buffer) => b,
      responseSerialize: (v: Buffer) => v,
      responseDeserialize: (b: Buffer) => res.toObject(res.decode(b), { enums: String, defaults: false }),
    });
    const Client = grpc.makeGenericClientConstructor({ Check: method('/envoy.service.auth.v3.Authorization/Check'), Other: method('/envoy.service.auth.v3.Authorization/Other') }, 'Authorization');
    client = new Client(`127.0.0.1:${port}`, grpc.credentials.createInsecure()) as grpc.Client & Record<string, Function>;
  });

  after(async () => {
    client?.close();
    await server?.close();
  });

  const call = (name: string, body: object | Buffer) =>
    new Promise<{ err: grpc.ServiceError | null; res?: Record<string, any> }>((resolve) => client[name]!(body, (err: grpc.ServiceError | null, r: Record<string, any>) => resolve({ err, res: r })));

  const check = (headers: Record<string, string>) => call('Check', { attributes: { request: { http: { headers, path: '/x', method: 'GET' } }, context_extensions: { 'signalbox.jwt.policies': 'p' } } });

  test('a valid token: OK with the forwarded claim', async () => {
    const { err, res: r } = await check({ authorization: `Bearer ${await signToken(key, { iss: ISS, sub: 'alice' })}`, 'x-user-id': 'root' });
    assert.equal(err, null);
    assert.equal(r!.status?.code ?? 0, 0);
    assert.deepEqual(r!.ok_response.headers, [{ header: { key: 'x-user-id', value: 'alice' }, append: { value: false } }]);
  });

  test('no token: denied with 401 and the challenge', async () => {
    const { err, res: r } = await check({});
    assert.equal(err, null);
    assert.equal(r!.status.code, 16);
    assert.equal(r!.denied_response.status.code, 'Unauthorized');
    assert.match(r!.denied_response.headers.find((h: any) => h.header.key === 'www-authenticate').header.value, /^Bearer error="invalid_token"/);
  });

  test('an unknown method is UNIMPLEMENTED; bytes that are not a CheckRequest are INVALID_ARGUMENT', async () => {
    const other = await call('Other', {});
    assert.equal(other.err?.code, grpc.status.UNIMPLEMENTED);
    const junk = await call('Check', Buffer.from([0xff, 0xff, 0xff, 0xff, 0x0f]));
    assert.equal(junk.err?.code, grpc.status.INVALID_ARGUMENT);
    // The server still answers afterwards.
    assert.equal((await check({})).err, null);
  });
});

describe('signalbox authz (standalone)', () => {
  test('loads and watches the policy directory, answers Check, serves metrics; a broken edit keeps the last good policies', async () => {
    const { startStandaloneAuthz } = await import('../../src/cli/authz.js');
    const { mkdtempSync, rmSync, writeFileSync } = await import('node:fs');
    const os = await import('node:os');
    const path = await import('node:path');
    const { waitFor } = await import('../helpers/net.js');
    const key = await makeKey('EdDSA', 'ed');
    const dir = mkdtempSync(path.join(os.tmpdir(), 'sb-authz-standalone-'));
    const policy = (issuer: string) => `apiVersion: signalbox.dev/v1alpha1
kind: Gateway
metadata: { name: gw }
spec: { listeners: [ { name: http, port: 8080, protocol: HTTP } ] }
---
apiVersion: signalbox.dev/v1alpha1
kind: JWTPolicy
metadata: { name: edge }
spec:
  targetRef: { kind: Gateway, name: gw }
  issuer: ${issuer}
  jwks: { inline: ${JSON.stringify({ keys: [key.jwk] })} }
`;
    writeFileSync(path.join(dir, 'p.yaml'), policy(ISS));
    const running = await startStandaloneAuthz({ policies: dir, 'authz-address': '127.0.0.1', 'authz-port': '0', 'metrics-port': '0', 'watch-debounce-ms': '20' }, {}, createLogger({ level: 'silent' }));
    try {
      const check = async (token: string) =>
        running.server.check({ attributes: { request: { http: { headers: { authorization: `Bearer ${token}` }, path: '/' } }, context_extensions: { 'signalbox.jwt.policies': 'edge' } } });
      const good = await signToken(key, { iss: ISS });
      assert.equal((await check(good)).allow, true);
      const metrics = `http://127.0.0.1:${running.metricsPort}`;
      assert.equal((await fetch(`${metrics}/readyz`)).status, 200);
      assert.match(await (await fetch(`${metrics}/metrics`)).text(), /signalbox_authz_decisions_total\{policy="edge",result="allow",reason="ok"\} 1/);
      assert.equal(((await (await fetch(`${metrics}/api/authz`)).json()) as { policies: Record<string, { keys: number }> }).policies.edge!.keys, 1);
      // The compiled filter's reports: a report sent again under its id counts once; a name that is
      // not a policy counts as "unknown"; a report without a proper id is refused.
      const http2 = await import('node:http2');
      const session = http2.connect(`http://127.0.0.1:${running.authzPort}`);
      const report = (id: string | undefined, body: string) =>
        new Promise<number>((resolve, reject) => {
          const s = session.request({ ':method': 'POST', ':path': '/signalbox.jwt/report', ...(id ? { 'x-signalbox-report-id': id } : {}) });
          s.on('response', (h) => resolve(Number(h[':status'])));
          s.on('error', reject);
          s.resume();
          s.end(body);
        });
      try {
        assert.equal(await report('0123456789abcdef-1', 'edge 3\nno%20such 2\n'), 200);
        assert.equal(await report('0123456789abcdef-1', 'edge 3\nno%20such 2\n'), 200);
        assert.equal(await report('0123456789abcdef-2', 'edge 4\n'), 200);
        assert.equal(await report(undefined, 'edge 100\n'), 400);
      } finally {
        session.close();
      }
      const text = await (await fetch(`${metrics}/metrics`)).text();
      assert.match(text, /signalbox_authz_fast_path_allows_total\{policy="edge"\} 7\n/);
      assert.match(text, /signalbox_authz_fast_path_allows_total\{policy="unknown"\} 2\n/);
      // A broken file changes nothing; a valid edit takes effect.
      writeFileSync(path.join(dir, 'p.yaml'), 'kind: JWTPolicy\nspec: [');
      assert.equal(await running.reload(), false);
      assert.equal((await check(good)).allow, true);
      writeFileSync(path.join(dir, 'p.yaml'), policy('https://other.test/'));
      await waitFor(async () => !(await check(good)).allow, { what: 'new issuer in force' });
      assert.equal((await check(await signToken(key, { iss: 'https://other.test/' }))).allow, true);
    } finally {
      await running.stop();
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
