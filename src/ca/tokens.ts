// Proxy tokens: `signalbox token` signs a JWT (ES256, key kept in the data folder, mode 0600)
// naming one identity; a proxy presents it on its xDS stream and only then receives that
// identity's secrets. Tokens can be revoked by id.
import { randomUUID } from 'node:crypto';
import { promises as fs } from 'node:fs';
import path from 'node:path';
import { exportPKCS8, exportSPKI, generateKeyPair, importPKCS8, importSPKI, jwtVerify, SignJWT } from 'jose';
import { parseDuration } from '../api/v1alpha1/index.js';
import { ErrorCode, SignalboxError } from '../errors.js';

const ISSUER = 'signalbox';
const AUDIENCE = 'signalbox-xds';
const ALG = 'ES256';

export interface TokenClaims {
  /** `service/<name>` or `gateway/<name>`. */
  subject: string;
  id: string;
  expiresAt?: Date;
}

async function keyPaths(dataDir: string) {
  const dir = path.join(dataDir, 'tokens');
  return { dir, priv: path.join(dir, 'signing.key'), pub: path.join(dir, 'signing.pub'), revoked: path.join(dir, 'revoked.json') };
}

/** The signing key pair, created on first use. */
async function signingKeys(dataDir: string) {
  const p = await keyPaths(dataDir);
  try {
    const [priv, pub] = await Promise.all([fs.readFile(p.priv, 'utf8'), fs.readFile(p.pub, 'utf8')]);
    return { privateKey: await importPKCS8(priv, ALG), publicKey: await importSPKI(pub, ALG) };
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code !== 'ENOENT') throw new SignalboxError(ErrorCode.TOKEN, `cannot read the token signing key in ${p.dir}`);
  }
  const { privateKey, publicKey } = await generateKeyPair(ALG, { extractable: true });
  await fs.mkdir(p.dir, { recursive: true, mode: 0o700 });
  await fs.writeFile(p.priv, await exportPKCS8(privateKey), { mode: 0o600 });
  await fs.writeFile(p.pub, await exportSPKI(publicKey), { mode: 0o644 });
  return { privateKey, publicKey };
}

export async function issueToken(dataDir: string, subject: string, ttl?: string): Promise<{ token: string; id: string }> {
  if (!/^(service|gateway)\/[a-z0-9]([-a-z0-9]*[a-z0-9])?$/.test(subject)) throw new SignalboxError(ErrorCode.TOKEN, `bad token subject "${subject}"`);
  const { privateKey } = await signingKeys(dataDir);
  const id = randomUUID();
  let jwt = new SignJWT({}).setProtectedHeader({ alg: ALG }).setIssuer(ISSUER).setAudience(AUDIENCE).setSubject(subject).setJti(id).setIssuedAt();
  if (ttl) {
    const ms = parseDuration(ttl);
    if (!ms) throw new SignalboxError(ErrorCode.TOKEN, `--ttl must be a duration such as 24h, got "${ttl}"`);
    jwt = jwt.setExpirationTime(Math.floor((Date.now() + ms) / 1000));
  }
  return { token: await jwt.sign(privateKey), id };
}

export async function revokeToken(dataDir: string, id: string): Promise<void> {
  const p = await keyPaths(dataDir);
  const list = await readRevoked(p.revoked);
  if (!list.includes(id)) list.push(id);
  await fs.mkdir(p.dir, { recursive: true, mode: 0o700 });
  await fs.writeFile(p.revoked, JSON.stringify(list.sort(), null, 2) + '\n', { mode: 0o600 });
}

async function readRevoked(file: string): Promise<string[]> {
  try {
    const v = JSON.parse(await fs.readFile(file, 'utf8')) as unknown;
    return Array.isArray(v) ? v.filter((x): x is string => typeof x === 'string') : [];
  } catch {
    return [];
  }
}

export type TokenCheck = { ok: true; claims: TokenClaims } | { ok: false; reason: string };

/** Verifies proxy tokens against the data folder's key and revocation list. */
export class TokenVerifier {
  private revoked = new Set<string>();
  private revokedMtime = -1;

  private constructor(private readonly publicKey: CryptoKey | Uint8Array, private readonly revokedFile: string) {}

  static async open(dataDir: string): Promise<TokenVerifier> {
    const { publicKey } = await signingKeys(dataDir);
    return new TokenVerifier(publicKey, (await keyPaths(dataDir)).revoked);
  }

  private async refreshRevoked(): Promise<void> {
    const st = await fs.stat(this.revokedFile).catch(() => undefined);
    const mtime = st?.mtimeMs ?? 0;
    if (mtime === this.revokedMtime) return;
    this.revokedMtime = mtime;
    this.revoked = new Set(st ? await readRevoked(this.revokedFile) : []);
  }

  async verify(token: string | undefined): Promise<TokenCheck> {
    if (!token) return { ok: false, reason: 'no token' };
    if (token.length > 4096) return { ok: false, reason: 'token too large' };
    try {
      const { payload } = await jwtVerify(token, this.publicKey, { issuer: ISSUER, audience: AUDIENCE, algorithms: [ALG] });
      await this.refreshRevoked();
      if (!payload.sub || !payload.jti) return { ok: false, reason: 'token without subject or id' };
      if (this.revoked.has(payload.jti)) return { ok: false, reason: `token ${payload.jti} is revoked` };
      return { ok: true, claims: { subject: payload.sub, id: payload.jti, expiresAt: payload.exp ? new Date(payload.exp * 1000) : undefined } };
    } catch (e) {
      const code = (e as { code?: string }).code ?? 'invalid';
      return { ok: false, reason: code === 'ERR_JWT_EXPIRED' ? 'token expired' : code === 'ERR_JWS_SIGNATURE_VERIFICATION_FAILED' ? 'token not signed by this control plane' : `invalid token (${code})` };
    }
  }
}
