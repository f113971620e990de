// A JWKS endpoint under the test's control (loopback HTTP): serve any key set, rotate it, set its
// Cache-Control, take it down and bring it back on the same port. Plus signing keys made with jose
// and token builders, including deliberately broken tokens (alg none, HMAC with the public key).
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { exportJWK, exportSPKI, generateKeyPair, importJWK, SignJWT, type CryptoKey, type JWK, type JWTPayload } from 'jose';

export type TestAlg = 'RS256' | 'RS384' | 'RS512' | 'PS256' | 'PS384' | 'PS512' | 'ES256' | 'ES384' | 'EdDSA';

export interface TestKey {
  kid: string;
  alg: TestAlg;
  privateKey: CryptoKey;
  publicKey: CryptoKey;
  /** The public JWK as a JWKS serves it (kid, alg, use). */
  jwk: JWK;
}

export async function makeKey(alg: TestAlg, kid: string): Promise<TestKey> {
  const { privateKey, publicKey } = await generateKeyPair(alg, { extractable: true, ...(alg === 'EdDSA' ? { crv: 'Ed25519' } : {}) });
  const jwk = { ...(await exportJWK(publicKey)), kid, alg, use: 'sig' };
  return { kid, alg, privateKey, publicKey, jwk };
}

/** The same key pair used with another algorithm of its type (e.g. an RS256 RSA key for PS256). */
export async function asAlg(key: TestKey, alg: TestAlg): Promise<TestKey> {
  const privateKey = (await importJWK(await exportJWK(key.privateKey), alg)) as CryptoKey;
  return { ...key, alg, privateKey };
}

const b64 = (v: unknown) => Buffer.from(typeof v === 'string' ? v : JSON.stringify(v)).toString('base64url');

/** A signed JWT; `claims` is merged over iat=now, exp=now+5m. */
export async function signToken(key: TestKey, claims: JWTPayload & Record<string, unknown>, header: Record<string, unknown> = {}): Promise<string> {
  const now = Math.floor(Date.now() / 1000);
  return new SignJWT({ iat: now, exp: now + 300, ...claims }).setProtectedHeader({ alg: key.alg, kid: key.kid, typ: 'JWT', ...header }).sign(key.privateKey);
}

/** An unsecured token: alg "none", no signature. */
export function unsignedToken(claims: Record<string, unknown>, kid?: string): string {
  return `${b64({ alg: 'none', typ: 'JWT', ...(kid ? { kid } : {}) })}.${b64(claims)}.`;
}

/** The classic confusion attack: HS256 with the RSA public key (PEM text) as the HMAC secret. */
export async function hmacWithPublicKey(key: TestKey, claims: Record<string, unknown>): Promise<string> {
  const pem = await exportSPKI(key.publicKey);
  const now = Math.floor(Date.now() / 1000);
  return new SignJWT({ iat: now, exp: now + 300, ...claims })
    .setProtectedHeader({ alg: 'HS256', kid: key.kid, typ: 'JWT' })
    .sign(new TextEncoder().encode(pem));
}

export interface JwksServer {
  port: number;
  /** The JWKS URL. */
  url: string;
  /** Requests served (or refused with an error status) since start. */
  requests: number;
  setKeys(keys: JWK[]): void;
  /** Cache-Control of responses (undefined: none). */
  cacheControl: string | undefined;
  /** Answer with this status and no keys (undefined: serve the keys). */
  failStatus: number | undefined;
  /** Stop listening: connections are refused until up(). */
  down(): Promise<void>;
  up(): Promise<void>;
  close(): Promise<void>;
}

export async function startJwksServer(keys: JWK[] = [], opts: { cacheControl?: string } = {}): Promise<JwksServer> {
  let current = keys;
  let server: http.Server | undefined;
  let port = 0;
  const state: JwksServer = {
    port: 0,
    url: '',
    requests: 0,
    cacheControl: opts.cacheControl,
    failStatus: undefined,
    setKeys: (k) => {
      current = k;
    },
    down: async () => {
      const s = server;
      server = undefined;
      if (!s) return;
      s.closeAllConnections();
      await new Promise<void>((resolve) => s.close(() => resolve()));
    },
    up: async () => {
      if (server) return;
      const s = http.createServer((req, res) => {
        state.requests++;
        if (req.url !== '/.well-known/jwks.json') {
          res.writeHead(404).end();
          return;
        }
        if (state.failStatus !== undefined) {
          res.writeHead(state.failStatus).end('unavailable');
          return;
        }
        const body = JSON.stringify({ keys: current });
        res.writeHead(200, {
          'content-type': 'application/json',
          'content-length': Buffer.byteLength(body),
          ...(state.cacheControl ? { 'cache-control': state.cacheControl } : {}),
        });
        res.end(body);
      });
      await new Promise<void>((resolve, reject) => {
        s.once('error', reject);
        s.listen(port, '127.0.0.1', () => resolve());
      });
      port = (s.address() as AddressInfo).port;
      state.port = port;
      state.url = `http://127.0.0.1:${port}/.well-known/jwks.json`;
      server = s;
    },
    close: () => state.down(),
  };
  await state.up();
  return state;
}
