// Proxy credentials for tests: tokens signed with a control plane's key (synchronously, so a raw
// ADS stream can be opened in one call), token certificates in files for Envoy bootstraps, and
// the CA a client verifies the xDS server with.
import { createPrivateKey, randomUUID, sign } from 'node:crypto';
import { mkdtempSync, readFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { issueTokenCredentials } from '../../src/ca/tokens.js';
import { XDS_CA_FILE } from '../../src/cli/bootstrap.js';
import type { WireNodeSpec } from './xds-client.js';

const b64 = (v: Buffer | string) => Buffer.from(v).toString('base64url');

/** An ES256 JWT as `signalbox token` makes it, for `subject`, signed by the key in `dataDir`. */
export function signTokenSync(dataDir: string, subject: string, opts: { ttlSeconds?: number; id?: string } = {}): string {
  const key = createPrivateKey(readFileSync(path.join(dataDir, 'tokens', 'signing.key'), 'utf8'));
  const now = Math.floor(Date.now() / 1000);
  const header = b64(JSON.stringify({ alg: 'ES256' }));
  const payload = b64(
    JSON.stringify({ iss: 'signalbox', aud: 'signalbox-xds', sub: subject, jti: opts.id ?? randomUUID(), iat: now, exp: now + (opts.ttlSeconds ?? 3600) }),
  );
  const sig = sign('sha256', Buffer.from(`${header}.${payload}`), { key, dsaEncoding: 'ieee-p1363' });
  return `${header}.${payload}.${b64(sig)}`;
}

/** The token subject a node claims (`gateway/NAME`, `service/NAME`), if it claims one. */
export function subjectOf(node: WireNodeSpec): string | undefined {
  const f = (k: string) => (node.metadata?.fields?.[k] as { stringValue?: string } | undefined)?.stringValue;
  const role = f('signalbox.role');
  if (role === 'gateway' && f('signalbox.gateway')) return `gateway/${f('signalbox.gateway')}`;
  if (role === 'sidecar' && f('signalbox.service')) return `service/${f('signalbox.service')}`;
  return undefined;
}

/** The CA (PEM) that signed the xDS server certificate of the control plane using `dataDir`. */
export function xdsCa(dataDir: string): Buffer {
  return readFileSync(path.join(dataDir, XDS_CA_FILE));
}

/** What a bootstrap's `tls` option needs: a token certificate for `subject` in a fresh folder. */
export async function bootstrapTls(dataDir: string, subject: string, ttl?: string): Promise<{ caFile: string; certFile: string; keyFile: string; id: string }> {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'signalbox-proxy-'));
  const c = await issueTokenCredentials(dataDir, subject, ttl, dir);
  return { caFile: path.join(dataDir, XDS_CA_FILE), certFile: c.certFile, keyFile: c.keyFile, id: c.id };
}
