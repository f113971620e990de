// The ext_authz service as `signalbox serve` embeds it: closed while no JWTPolicy exists and no
// port was given, opened (TLS, mesh certificate required) once one appears; an explicit port is
// bound at once; a port that cannot be bound makes readiness (and serve's /readyz) 503 naming the
// port, and is retried.
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import http2 from 'node:http2';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { after, describe, test } from 'node:test';
import prom from 'prom-client';
import { startEmbeddedAuthz, type EmbeddedAuthz } from '../../src/authz/index.js';
import { CertificateAuthority } from '../../src/ca/ca.js';
import type { JwtModel } from '../../src/model/jwt.js';
import { createLogger } from '../../src/observability/logger.js';
import { freePort, waitFor } from '../helpers/net.js';

const silent = createLogger({ level: 'silent' });
const TRUST_DOMAIN = 'signalbox.local';
const dirs: string[] = [];
const running: EmbeddedAuthz[] = [];
after(async () => {
  for (const a of running) await a.close();
  for (const d of dirs) rmSync(d, { recursive: true, force: true });
});

function tmp(prefix: string): string {
  const d = mkdtempSync(path.join(os.tmpdir(), prefix));
  dirs.push(d);
  return d;
}

const withPolicy: { jwt: JwtModel } = {
  jwt: {
    policies: new Map([
      [
        'p',
        {
          name: 'p',
          target: { kind: 'Gateway', name: 'g' },
          issuer: 'https://issuer.test/',
          audiences: [],
          algorithms: ['ES256'],
          clockSkewMs: 0,
          from: [{ header: 'authorization', prefix: 'Bearer ' }],
          require: [],
          forwardClaims: [],
          optional: false,
          maxTokenBytes: 8192,
          jwks: { kind: 'inline', keys: [] },
          unavailableStatus: 503,
          source: { file: 'p.yaml', doc: 1 },
        },
      ],
    ]) as JwtModel['policies'],
    byTarget: new Map(),
  },
};
const withoutPolicy: { jwt: JwtModel } = { jwt: { policies: new Map(), byTarget: new Map() } };

/** Whether something accepts TCP connections on 127.0.0.1:port. */
function accepting(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const s = net.connect(port, '127.0.0.1');
    s.once('connect', () => {
      s.destroy();
      resolve(true);
    });
    s.once('error', () => resolve(false));
  });
}

/** A fast-path request over TLS with a proxy certificate: the HTTP status, or the error. */
async function askOverTls(port: number, ca: CertificateAuthority): Promise<number | string> {
  const proxy = await ca.issue('spiffe://signalbox.local/gateway/g', 3_600_000);
  return new Promise((resolve) => {
    const session = http2.connect(`https://127.0.0.1:${port}`, { ca: ca.trustBundlePem, cert: proxy.certificatePem, key: proxy.privateKeyPem });
    const done = (v: number | string) => {
      session.destroy();
      resolve(v);
    };
    session.on('error', (e) => done(e.message));
    const s = session.request({ ':method': 'POST', ':path': '/signalbox.jwt/check/p' });
    s.on('error', (e) => done(e.message));
    s.on('response', (h) => done(Number(h[':status'])));
    s.end();
  });
}

/** Holds a port (as another process would). */
async function occupy(): Promise<{ port: number; release(): Promise<void> }> {
  const s = net.createServer();
  await new Promise<void>((resolve) => s.listen(0, '127.0.0.1', () => resolve()));
  return { port: (s.address() as net.AddressInfo).port, release: () => new Promise((resolve) => s.close(() => resolve())) };
}

describe('embedded ext_authz service: listens only when needed', () => {
  test('closed without a JWTPolicy and without a port; opened (TLS, mesh certificate) once a JWTPolicy appears', async () => {
    const ca = await CertificateAuthority.open({ dataDir: tmp('sb-authz-emb-'), trustDomain: TRUST_DOMAIN });
    const port = await freePort();
    const authz = await startEmbeddedAuthz({
      bindAddress: '127.0.0.1',
      defaultPort: port,
      tls: { ca, trustDomain: TRUST_DOMAIN },
      logger: silent,
      registry: new prom.Registry(),
    });
    running.push(authz);
    // Proxies are told where it will be, and that it speaks TLS as spiffe://<td>/signalbox/authz.
    assert.deepEqual(authz.endpoint, { address: '127.0.0.1', port, tls: { serverId: 'spiffe://signalbox.local/signalbox/authz' } });
    assert.equal(authz.port, undefined);
    assert.equal(await accepting(port), false, 'nothing bound before any JWTPolicy');
    authz.update(withoutPolicy);
    await authz.settled();
    assert.equal(authz.port, undefined);
    assert.equal(await accepting(port), false, 'a model without JWTPolicy opens nothing');
    assert.deepEqual(authz.readiness(), { ready: true });
    assert.deepEqual({ ...authz.status(), endpointForProxies: undefined }, { port: null, listening: false, tls: true, endpointForProxies: undefined });
    authz.update(withPolicy);
    await authz.settled();
    assert.equal(authz.port, port);
    assert.equal(await accepting(port), true);
    assert.equal(await askOverTls(port, ca), 200);
    assert.equal(authz.status().listening, true);
    // The last JWTPolicy removed: it stays open (proxies draining old listeners may still ask).
    authz.update(withoutPolicy);
    assert.equal(await accepting(port), true);
  });

  test('an explicit port is bound at once, JWTPolicy or not; insecure mode is plain text', async () => {
    const authz = await startEmbeddedAuthz({ bindAddress: '127.0.0.1', port: 0, logger: silent, registry: new prom.Registry() });
    running.push(authz);
    assert.ok(authz.port! > 0);
    assert.deepEqual(authz.endpoint, { address: '127.0.0.1', port: authz.port });
    assert.equal(authz.server.secure, false);
    const status = await new Promise<number>((resolve, reject) => {
      const session = http2.connect(`http://127.0.0.1:${authz.port}`);
      session.on('error', reject);
      const s = session.request({ ':method': 'POST', ':path': '/nowhere' });
      s.on('response', (h) => {
        session.close();
        resolve(Number(h[':status']));
      });
      s.end();
    });
    assert.equal(status, 404);
  });

  test('a taken port: readiness 503 naming the port, retried until it is free', async () => {
    const held = await occupy();
    const authz = await startEmbeddedAuthz({ bindAddress: '127.0.0.1', port: held.port, logger: silent, registry: new prom.Registry(), retryMs: 50 });
    running.push(authz);
    assert.equal(authz.port, undefined);
    const r = authz.readiness();
    assert.equal(r.ready, false);
    assert.match(r.reason!, new RegExp(`127\\.0\\.0\\.1:${held.port}.*EADDRINUSE`));
    // Combined with another source's readiness: the first not ready wins.
    assert.deepEqual(authz.readinessWith(() => ({ ready: false, reason: 'consul' }))(), r);
    assert.equal(authz.status().port, null);
    assert.match(authz.status().error!, new RegExp(String(held.port)));
    await held.release();
    await waitFor(() => authz.port === held.port, { what: 'the retried bind' });
    assert.deepEqual(authz.readiness(), { ready: true });
    assert.deepEqual(authz.readinessWith(() => ({ ready: false, reason: 'consul' }))(), { ready: false, reason: 'consul' });
  });
});

describe('signalbox serve: the ext_authz port', () => {
  const policy =
    'apiVersion: signalbox.dev/v1alpha1\nkind: Service\nmetadata: { name: shop }\nspec:\n  port: 8080\n  endpoints: [ { address: 127.0.0.1, port: 9 } ]\n';

  test('no JWTPolicy and no --authz-port: nothing bound, /api/authz says port null; a taken --authz-port: /readyz 503 naming it', async () => {
    const { resolveServeConfig } = await import('../../src/config/settings.js');
    const { startServer } = await import('../../src/cli/serve.js');
    const dir = tmp('sb-authz-serve-');
    writeFileSync(path.join(dir, 'p.yaml'), policy);
    const base = { policies: dir, 'xds-address': '127.0.0.1', 'xds-port': '0', 'admin-port': '0', 'data-dir': path.join(dir, 'data') };
    const closed = await startServer(resolveServeConfig(base, {}), silent);
    try {
      assert.equal(closed.authzPort, undefined);
      const admin = `http://127.0.0.1:${closed.adminPort}`;
      const info = (await (await fetch(`${admin}/api/authz`)).json()) as {
        port: number | null;
        listening: boolean;
        tls: boolean;
        endpointForProxies: { port: number; tls?: unknown };
      };
      assert.equal(info.port, null);
      assert.equal(info.listening, false);
      assert.equal(info.tls, true);
      assert.equal(info.endpointForProxies.port, 18002);
      assert.equal((await fetch(`${admin}/readyz`)).status, 200);
    } finally {
      await closed.stop();
    }
    const held = await occupy();
    const blocked = await startServer(resolveServeConfig({ ...base, 'authz-port': String(held.port) }, {}), silent);
    try {
      assert.equal(blocked.authzPort, undefined);
      const res = await fetch(`http://127.0.0.1:${blocked.adminPort}/readyz`);
      assert.equal(res.status, 503);
      const body = (await res.json()) as { ready: boolean; reason: string };
      assert.match(body.reason, new RegExp(`ext_authz.*:${held.port}\\b`));
    } finally {
      await blocked.stop();
      await held.release();
    }
  });
});
