// Proxy tokens. `signalbox token` issues a token naming one identity (`service/<name>` or
// `gateway/<name>`) with an id and an expiry; a proxy presents it on its xDS stream and only then
// receives that identity's secrets. Tokens can be revoked by id.
//
// A token takes two forms, signed by the same ECDSA P-256 key pair in `<dataDir>/tokens/`:
// - a JWT (ES256), sent as gRPC metadata by non-Envoy clients;
// - a TLS client certificate (`token.crt` + `token.key`, read from files by Envoy so the token
//   never appears in its bootstrap or config_dump), issued by a small self-signed CA
//   ("Signalbox proxy tokens", `tokens/ca.crt`) backed by that key pair. It is NOT the mesh CA:
//   a token certificate is never valid for mesh mTLS.
//
// Files: signing.key (0600), signing.pub (0644), ca.crt (0644), revoked.json (0600), all written
// atomically. A missing half of the key pair is an error, never a reason to make a new pair
// (that would silently invalidate every token issued so far).
import { randomUUID, webcrypto } from 'node:crypto';
import { EventEmitter } from 'node:events';
import { promises as fs } from 'node:fs';
import path from 'node:path';
import { type JWTPayload, jwtVerify, SignJWT } from 'jose';
import { parseDuration } from '../api/v1alpha1/index.js';
import { ErrorCode, SignalboxError } from '../errors.js';
import type { Logger } from '../observability/logger.js';
import { writeStateFile } from '../util/files.js';
import { ensureFolder, readError, writeDataFile } from '../util/data-dir.js';
import { x509 } from './x509.js';
import type { RecordData, SharedState } from '../state/shared.js';

const ISSUER = 'signalbox';
const AUDIENCE = 'signalbox-xds';
const ALG = 'ES256';
const EC = { name: 'ECDSA', namedCurve: 'P-256' } as const;
const SIGN = { name: 'ECDSA', hash: 'SHA-256' } as const;
const CA_NAME = 'CN=Signalbox proxy tokens';
const CA_LIFE_MS = 10 * 365 * 24 * 3_600_000;
const URN_PREFIX = 'urn:signalbox:token:';
const SUBJECT = /^(service|gateway)\/[a-z0-9]([-a-z0-9]*[a-z0-9])?$/;
const TOKEN_ID = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;
const MAX_CERT_BYTES = 16 * 1024;

/** Where tokens' keys and revocations live: a data directory (a path) or the replicas' shared state. */
export type TokenStore = string | SharedState;

/** Shared state records (`--state consul`): the signing key pair with its CA, and the revocations. */
export const SHARED_TOKEN_KEYS_RECORD = 'tokens/signing';
export const SHARED_REVOKED_RECORD = 'tokens/revoked';

/** The lifetime of a token when `--ttl` is not given. */
export const DEFAULT_TOKEN_TTL = '720h';

export interface TokenClaims {
  /** `service/<name>` or `gateway/<name>`. */
  subject: string;
  /** A UUID; what `signalbox token revoke` takes. */
  id: string;
  expiresAt: Date;
}

export type TokenCheck = { ok: true; claims: TokenClaims } | { ok: false; reason: string };

export interface TokenCredentials {
  id: string;
  subject: string;
  expiresAt: Date;
  /** Absolute path of the leaf certificate (PEM, 0644). */
  certFile: string;
  /** Absolute path of its private key (PKCS#8 PEM, 0600). */
  keyFile: string;
}

interface Paths {
  dir: string;
  priv: string;
  pub: string;
  ca: string;
  revoked: string;
  lock: string;
}

function tokenPaths(dataDir: string): Paths {
  const dir = path.join(path.resolve(dataDir), 'tokens');
  return {
    dir,
    priv: path.join(dir, 'signing.key'),
    pub: path.join(dir, 'signing.pub'),
    ca: path.join(dir, 'ca.crt'),
    revoked: path.join(dir, 'revoked.json'),
    lock: path.join(dir, '.lock'),
  };
}

const errCode = (e: unknown) => (e as NodeJS.ErrnoException).code ?? 'error';
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/**
 * Runs `fn` holding `<tokens>/.lock` (exclusive create), so two commands (or `serve` and a
 * command) never create two key pairs or lose each other's revocation.
 */
async function withLock<T>(p: Paths, fn: () => Promise<T>): Promise<T> {
  await ensureFolder(p.dir, ErrorCode.TOKEN); // a read-only or full data folder: a true message, not "ENOENT: mkdir"
  const deadline = Date.now() + 10_000;
  for (;;) {
    try {
      await (await fs.open(p.lock, 'wx', 0o600)).close();
      break;
    } catch (e) {
      if (errCode(e) !== 'EEXIST') throw new SignalboxError(ErrorCode.TOKEN, `cannot create the lock file ${p.lock}: ${errCode(e)}`);
      const st = await fs.stat(p.lock).catch(() => undefined);
      if (st && Date.now() - st.mtimeMs > 30_000) {
        await fs.rm(p.lock, { force: true }); // left by a command that crashed
        continue;
      }
      if (Date.now() > deadline) throw new SignalboxError(ErrorCode.TOKEN, `${p.lock} is held by another signalbox command; if none is running, delete it`);
      await sleep(20);
    }
  }
  try {
    return await fn();
  } finally {
    await fs.rm(p.lock, { force: true });
  }
}

async function exists(file: string): Promise<boolean> {
  try {
    await fs.lstat(file);
    return true;
  } catch (e) {
    if (errCode(e) === 'ENOENT') return false;
    throw readError(ErrorCode.TOKEN, 'the token key file', file, e); // e.g. ENOTDIR: names the file in the way
  }
}

async function readText(file: string, what: string): Promise<string> {
  try {
    return await fs.readFile(file, 'utf8');
  } catch (e) {
    throw new SignalboxError(ErrorCode.TOKEN, `cannot read the token ${what} ${file}: ${errCode(e)}`);
  }
}

function pemDer(pem: string): ArrayBuffer {
  const der = x509.PemConverter.decode(pem)[0];
  if (!der) throw new Error('no PEM block');
  return der;
}

interface TokenKeys {
  privateKey: CryptoKey;
  publicKey: CryptoKey;
  caCert: x509.X509Certificate;
  caPem: string;
  caFile: string;
}

async function createCaCert(privateKey: CryptoKey, publicKey: CryptoKey): Promise<x509.X509Certificate> {
  const now = Date.now();
  return x509.X509CertificateGenerator.createSelfSigned({
    name: CA_NAME,
    keys: { privateKey, publicKey } as CryptoKeyPair,
    notBefore: new Date(now - 60_000),
    notAfter: new Date(now + CA_LIFE_MS),
    signingAlgorithm: SIGN,
    extensions: [
      new x509.BasicConstraintsExtension(true, 0, true),
      new x509.KeyUsagesExtension(x509.KeyUsageFlags.keyCertSign | x509.KeyUsageFlags.digitalSignature, true),
      await x509.SubjectKeyIdentifierExtension.create(publicKey),
    ],
  });
}

/**
 * Loads the signing key pair and the tokens CA certificate. With `create`, makes what is missing:
 * a new key pair only when BOTH key files are missing; ca.crt whenever it is missing, unreadable,
 * expired or not made from this key pair (re-creating it from the same key keeps every issued
 * certificate valid). Without `create`, returns undefined when something would have to be made.
 */
async function loadKeys(p: Paths, create: boolean): Promise<TokenKeys | undefined> {
  const [hasPriv, hasPub] = [await exists(p.priv), await exists(p.pub)];
  let privateKey: CryptoKey;
  let publicKey: CryptoKey;
  let fresh = false;
  if (!hasPriv && !hasPub) {
    if (!create) return undefined;
    const pair = (await webcrypto.subtle.generateKey(EC, true, ['sign', 'verify'])) as unknown as CryptoKeyPair;
    const privDer = await webcrypto.subtle.exportKey('pkcs8', pair.privateKey as unknown as webcrypto.CryptoKey);
    const pubDer = await webcrypto.subtle.exportKey('spki', pair.publicKey as unknown as webcrypto.CryptoKey);
    await writeDataFile(p.priv, x509.PemConverter.encode(privDer, 'PRIVATE KEY'), 0o600, ErrorCode.TOKEN);
    // If the public half cannot be written (a full disk), the private half made just now signed
    // nothing: remove it, so the next start makes a pair instead of reporting half of one.
    await writeDataFile(p.pub, x509.PemConverter.encode(pubDer, 'PUBLIC KEY'), 0o644, ErrorCode.TOKEN).catch(async (e: unknown) => {
      await fs.rm(p.priv, { force: true }).catch(() => undefined);
      throw e;
    });
    ({ privateKey, publicKey } = pair);
    fresh = true;
  } else if (!hasPub) {
    throw new SignalboxError(
      ErrorCode.TOKEN,
      `the token public key ${p.pub} is missing but ${p.priv} exists; refusing to make a new signing key pair (every token issued so far would stop working). ` +
        `Restore ${p.pub} from a backup or recreate it with: openssl pkey -in ${p.priv} -pubout -out ${p.pub}`,
    );
  } else if (!hasPriv) {
    throw new SignalboxError(
      ErrorCode.TOKEN,
      `the token signing key ${p.priv} is missing but ${p.pub} exists; refusing to make a new signing key pair (every token issued so far would stop working). ` +
        `Restore ${p.priv} from a backup, or delete ${p.pub} (and ${p.ca}) to start over with a new pair and reissue every token`,
    );
  } else {
    const privPem = await readText(p.priv, 'signing key');
    const pubPem = await readText(p.pub, 'public key');
    try {
      privateKey = (await webcrypto.subtle.importKey('pkcs8', pemDer(privPem), EC, false, ['sign'])) as unknown as CryptoKey;
    } catch {
      // Never echo key material: only say which file is wrong.
      throw new SignalboxError(ErrorCode.TOKEN, `${p.priv} is not a PKCS#8 ECDSA P-256 private key`);
    }
    try {
      publicKey = (await webcrypto.subtle.importKey('spki', pemDer(pubPem), EC, true, ['verify'])) as unknown as CryptoKey;
    } catch {
      throw new SignalboxError(ErrorCode.TOKEN, `${p.pub} is not an ECDSA P-256 public key (SPKI PEM)`);
    }
    const probe = new TextEncoder().encode('signalbox-token-probe');
    const sig = await webcrypto.subtle.sign(SIGN, privateKey as unknown as webcrypto.CryptoKey, probe);
    if (!(await webcrypto.subtle.verify(SIGN, publicKey as unknown as webcrypto.CryptoKey, sig, probe))) {
      throw new SignalboxError(ErrorCode.TOKEN, `${p.pub} is not the public key of ${p.priv}`);
    }
  }

  let caCert: x509.X509Certificate | undefined;
  if (!fresh) {
    const pem = await fs.readFile(p.ca, 'utf8').catch((e: unknown) => {
      if (errCode(e) === 'ENOENT') return undefined;
      throw new SignalboxError(ErrorCode.TOKEN, `cannot read the tokens CA certificate ${p.ca}: ${errCode(e)}`);
    });
    if (pem !== undefined) {
      try {
        const cert = new x509.X509Certificate(pem);
        const certSpki = Buffer.from(cert.publicKey.rawData);
        const ourSpki = Buffer.from(await webcrypto.subtle.exportKey('spki', publicKey as unknown as webcrypto.CryptoKey));
        const usable = certSpki.equals(ourSpki) && cert.subject === CA_NAME && cert.notAfter.getTime() > Date.now() + 24 * 3_600_000;
        if (usable) caCert = cert;
      } catch {
        caCert = undefined; // not a certificate: made again below, from the same key
      }
    }
  }
  if (!caCert) {
    if (!create) return undefined;
    caCert = await createCaCert(privateKey, publicKey);
    await writeDataFile(p.ca, caCert.toString('pem'), 0o644, ErrorCode.TOKEN);
  }
  return { privateKey, publicKey, caCert, caPem: caCert.toString('pem'), caFile: p.ca };
}

/**
 * The signing key pair and tokens CA of the shared state: made once by whichever replica (or
 * command) comes first, written only if still absent; the private key sealed. A record that does
 * not open or whose halves do not match is an error, never a new pair.
 */
async function sharedTokenKeys(shared: SharedState): Promise<TokenKeys> {
  const { data } = await shared.readOrCreate(SHARED_TOKEN_KEYS_RECORD, async () => {
    const pair = (await webcrypto.subtle.generateKey(EC, true, ['sign', 'verify'])) as unknown as CryptoKeyPair;
    const privDer = await webcrypto.subtle.exportKey('pkcs8', pair.privateKey as unknown as webcrypto.CryptoKey);
    const cert = await createCaCert(pair.privateKey, pair.publicKey);
    return { privateKey: x509.PemConverter.encode(privDer, 'PRIVATE KEY'), caCertificate: cert.toString('pem') };
  }, ['privateKey']);
  const where = shared.keyOf(SHARED_TOKEN_KEYS_RECORD);
  const bad = (what: string) =>
    new SignalboxError(
      ErrorCode.STATE,
      `${where} in Consul KV ${what}: restore it from a backup; removing it makes a new pair at the next start and every token issued so far stops working`,
    );
  if (typeof data.privateKey !== 'string' || typeof data.caCertificate !== 'string') throw bad('lacks the private key or the tokens CA certificate');
  let privateKey: CryptoKey;
  let caCert: x509.X509Certificate;
  try {
    privateKey = (await webcrypto.subtle.importKey('pkcs8', pemDer(data.privateKey), EC, false, ['sign'])) as unknown as CryptoKey;
  } catch {
    throw bad('holds a private key that is not PKCS#8 ECDSA P-256');
  }
  try {
    caCert = new x509.X509Certificate(data.caCertificate);
  } catch {
    throw bad('holds a tokens CA certificate that is not PEM X.509');
  }
  const publicKey = (await caCert.publicKey.export(EC, ['verify'])) as unknown as CryptoKey;
  const probe = new TextEncoder().encode('signalbox-token-probe');
  const sig = await webcrypto.subtle.sign(SIGN, privateKey as unknown as webcrypto.CryptoKey, probe);
  if (!(await webcrypto.subtle.verify(SIGN, publicKey as unknown as webcrypto.CryptoKey, sig, probe)))
    throw bad("holds a private key that is not the tokens CA certificate's");
  return { privateKey, publicKey, caCert, caPem: caCert.toString('pem'), caFile: where };
}

/** The signing key pair and tokens CA, created on first use (under the lock). */
async function tokenKeys(store: TokenStore): Promise<TokenKeys> {
  if (typeof store !== 'string') return sharedTokenKeys(store);
  const dataDir = store;
  const p = tokenPaths(dataDir);
  const loaded = await loadKeys(p, false);
  if (loaded) return loaded;
  return withLock(p, async () => (await loadKeys(p, true))!);
}

function checkSubject(subject: string): void {
  if (!SUBJECT.test(subject)) throw new SignalboxError(ErrorCode.TOKEN, `bad token subject "${subject.slice(0, 100)}": want service/<name> or gateway/<name>`);
}

/** The expiry of a token issued now with `ttl` (default DEFAULT_TOKEN_TTL), in whole seconds. */
function expiryFor(ttl: string | undefined): Date {
  const text = ttl ?? DEFAULT_TOKEN_TTL;
  const ms = parseDuration(text);
  if (!ms || ms < 1000) throw new SignalboxError(ErrorCode.TOKEN, `--ttl must be a duration of at least 1s such as 24h, got "${text.slice(0, 100)}"`);
  // Whole seconds: what both a JWT `exp` and an X.509 notAfter can say, so both forms agree.
  return new Date(Math.floor((Date.now() + ms) / 1000) * 1000);
}

/**
 * Signs a JWT for `subject`. `ttl` defaults to DEFAULT_TOKEN_TTL. `opts` gives the id and expiry
 * explicitly (to pair the JWT with certificate credentials issued by issueTokenCredentials).
 */
export async function issueToken(
  dataDir: TokenStore,
  subject: string,
  ttl?: string,
  opts: { id?: string; expiresAt?: Date } = {},
): Promise<{ token: string; id: string; expiresAt: Date }> {
  checkSubject(subject);
  if (opts.id !== undefined && !TOKEN_ID.test(opts.id)) throw new SignalboxError(ErrorCode.TOKEN, 'a token id is a lower-case UUID');
  const expiresAt = opts.expiresAt ?? expiryFor(ttl);
  const { privateKey } = await tokenKeys(dataDir);
  const id = opts.id ?? randomUUID();
  const token = await new SignJWT({})
    .setProtectedHeader({ alg: ALG })
    .setIssuer(ISSUER)
    .setAudience(AUDIENCE)
    .setSubject(subject)
    .setJti(id)
    .setIssuedAt()
    .setExpirationTime(Math.floor(expiresAt.getTime() / 1000))
    .sign(privateKey);
  await noteIssued(dataDir, id, subject, expiresAt);
  return { token, id, expiresAt };
}

/**
 * Issues token credentials as a TLS client certificate: writes `outDir/token.crt` (0644, the
 * leaf, signed by the tokens CA) and `outDir/token.key` (0600, a fresh P-256 key, PKCS#8 PEM).
 * `outDir` is created with mode 0700 if missing.
 */
export async function issueTokenCredentials(dataDir: TokenStore, subject: string, ttl: string | undefined, outDir: string): Promise<TokenCredentials> {
  checkSubject(subject);
  const expiresAt = expiryFor(ttl);
  const keys = await tokenKeys(dataDir);
  if (expiresAt.getTime() > keys.caCert.notAfter.getTime()) {
    throw new SignalboxError(
      ErrorCode.TOKEN,
      `--ttl reaches past the expiry of the tokens CA ${keys.caFile} (${keys.caCert.notAfter.toISOString()}); give a shorter --ttl`,
    );
  }
  const id = randomUUID();
  const leafKeys = (await webcrypto.subtle.generateKey(EC, true, ['sign', 'verify'])) as unknown as CryptoKeyPair;
  const cert = await x509.X509CertificateGenerator.create({
    subject: `CN=${subject}`,
    issuer: keys.caCert.subject,
    publicKey: leafKeys.publicKey,
    signingKey: keys.privateKey,
    notBefore: new Date(Math.floor(Date.now() / 1000) * 1000 - 30_000),
    notAfter: expiresAt,
    signingAlgorithm: SIGN,
    extensions: [
      new x509.BasicConstraintsExtension(false, undefined, true),
      new x509.KeyUsagesExtension(x509.KeyUsageFlags.digitalSignature, true),
      new x509.ExtendedKeyUsageExtension([x509.ExtendedKeyUsage.clientAuth]),
      new x509.SubjectAlternativeNameExtension([{ type: 'url', value: `${URN_PREFIX}${id}:${subject}` }]),
      await x509.AuthorityKeyIdentifierExtension.create(keys.publicKey),
    ],
  });
  const keyDer = await webcrypto.subtle.exportKey('pkcs8', leafKeys.privateKey as unknown as webcrypto.CryptoKey);
  const dir = path.resolve(outDir);
  await fs.mkdir(dir, { recursive: true, mode: 0o700 });
  const keyFile = path.join(dir, 'token.key');
  const certFile = path.join(dir, 'token.crt');
  // The key first: a reader never finds a new certificate next to a key that does not match it
  // for longer than the two renames take.
  await writeStateFile(keyFile, x509.PemConverter.encode(keyDer, 'PRIVATE KEY'), 0o600);
  await writeStateFile(certFile, cert.toString('pem'), 0o644);
  await noteIssued(dataDir, id, subject, expiresAt);
  return { id, subject, expiresAt, certFile, keyFile };
}

/** Parses revoked.json strictly: a JSON array of strings. Throws a short description otherwise. */
function parseRevoked(text: string): string[] {
  let v: unknown;
  try {
    v = JSON.parse(text);
  } catch (e) {
    throw new Error(`not JSON (${(e as Error).message.slice(0, 120)})`);
  }
  if (!Array.isArray(v)) throw new Error('not a JSON array of token ids');
  if (!v.every((x) => typeof x === 'string')) throw new Error('not an array of strings');
  return v as string[];
}

/** Shared state: each token's expiry by id (`tokens/issued/ID`), so a revocation can be pruned once the token has expired. */
const ISSUED_PREFIX = 'tokens/issued';

async function noteIssued(store: TokenStore, id: string, subject: string, expiresAt: Date): Promise<void> {
  if (typeof store === 'string') return;
  await store.update(`${ISSUED_PREFIX}/${id}`, (cur) =>
    cur?.expiresAt === expiresAt.toISOString() ? undefined : { subject, expiresAt: expiresAt.toISOString() },
  );
}

/** How long after its token expired a revocation is kept (clocks of replicas may differ a little). */
export const REVOCATION_PRUNE_MARGIN_MS = 10 * 60_000;

/**
 * The leader's chore (shared state): drops revocations of tokens that have expired (past a
 * margin; an expired token is refused anyway) and the expiry notes of expired tokens. Revocations
 * of tokens whose expiry is unknown (issued before this note existed) are kept. Returns the ids pruned.
 */
export async function pruneExpiredRevocations(shared: SharedState, now = Date.now()): Promise<string[]> {
  const cutoff = now - REVOCATION_PRUNE_MARGIN_MS;
  const pruned: string[] = [];
  await shared.update(SHARED_REVOKED_RECORD, (current) => {
    pruned.length = 0;
    let revoked: Record<string, string>;
    try {
      revoked = sharedRevoked(current);
    } catch {
      return undefined; // a damaged list is left for a person to fix (every token is refused meanwhile)
    }
    const expires = (current?.expires ?? {}) as Record<string, string>;
    const keep = Object.entries(revoked).filter(([id]) => {
      const t = Date.parse(expires[id] ?? '');
      if (Number.isFinite(t) && t < cutoff) {
        pruned.push(id);
        return false;
      }
      return true;
    });
    if (!pruned.length) return undefined;
    const left = new Set(keep.map(([id]) => id));
    return { ...current, revoked: Object.fromEntries(keep), expires: Object.fromEntries(Object.entries(expires).filter(([id]) => left.has(id))) };
  });
  for (const e of await shared.kv.list(`${shared.keyOf(ISSUED_PREFIX)}/`)) {
    try {
      const t = Date.parse((JSON.parse(e.value) as { data?: { expiresAt?: string } }).data?.expiresAt ?? '');
      if (Number.isFinite(t) && t < cutoff) await shared.kv.deleteCas(e.key, e.modifyIndex);
    } catch {
      // not ours to judge: left alone
    }
  }
  return pruned;
}

/** The revoked ids in a shared revocation record (`{ revoked: { id: revokedAt } }`); throws a short description otherwise. */
function sharedRevoked(data: RecordData | undefined): Record<string, string> {
  if (data === undefined) return {};
  const r = data.revoked;
  if (typeof r !== 'object' || r === null || Array.isArray(r) || !Object.values(r).every((v) => typeof v === 'string'))
    throw new Error('not a map of token ids');
  return r as Record<string, string>;
}

/**
 * Adds `id` to `<dataDir>/tokens/revoked.json` (atomically, 0600), or to the shared revocation
 * record (check-and-set). Refuses to overwrite a list it cannot read.
 */
export async function revokeToken(dataDir: TokenStore, id: string): Promise<void> {
  if (!TOKEN_ID.test(id)) throw new SignalboxError(ErrorCode.TOKEN, `"${id.slice(0, 100)}" is not a token id (the UUID printed when the token was issued)`);
  if (typeof dataDir !== 'string') {
    const shared = dataDir;
    const issued = await shared.read(`${ISSUED_PREFIX}/${id}`);
    const expiresAt = typeof issued?.data.expiresAt === 'string' ? issued.data.expiresAt : undefined;
    await shared.update(SHARED_REVOKED_RECORD, (current) => {
      let revoked: Record<string, string>;
      try {
        revoked = sharedRevoked(current);
      } catch (e) {
        throw new SignalboxError(
          ErrorCode.TOKEN,
          `the revocation list ${shared.keyOf(SHARED_REVOKED_RECORD)} in Consul KV is unreadable: ${(e as Error).message}; fix it before revoking more tokens`,
        );
      }
      if (revoked[id]) return undefined;
      const sorted = (o: Record<string, string>) => Object.fromEntries(Object.entries(o).sort(([a], [b]) => (a < b ? -1 : 1)));
      const expires = (current?.expires ?? {}) as Record<string, string>;
      return {
        ...current,
        revoked: sorted({ ...revoked, [id]: new Date().toISOString() }),
        expires: sorted(expiresAt ? { ...expires, [id]: expiresAt } : expires),
      };
    });
    return;
  }
  const p = tokenPaths(dataDir);
  await withLock(p, async () => {
    let list: string[] = [];
    try {
      list = parseRevoked(await fs.readFile(p.revoked, 'utf8'));
    } catch (e) {
      if (errCode(e) !== 'ENOENT') {
        // Overwriting it would silently un-revoke every token it lists.
        const detail = (e as NodeJS.ErrnoException).code ?? (e as Error).message;
        throw new SignalboxError(
          ErrorCode.TOKEN,
          `revocation list ${p.revoked} is unreadable: ${detail}; fix it (a JSON array of token ids) before revoking more tokens`,
        );
      }
    }
    if (list.includes(id)) return;
    list.push(id);
    await writeStateFile(p.revoked, `${JSON.stringify(list.sort(), null, 2)}\n`, 0o600);
  });
}

export interface TokenVerifierEvents {
  /** Ids newly found in revoked.json (open streams presenting them should be closed). */
  revoked: [ids: Set<string>];
  /** revoked.json became unreadable or corrupt: every token is refused until it is fixed. */
  unreadable: [reason: string];
}

/**
 * Verifies proxy tokens (JWTs and client certificates) against the data folder's key pair and
 * revocation list. Polls revoked.json (fs.stat: size, mtime, inode; an atomic rename changes
 * the inode) and emits `revoked` with the ids newly revoked. A revocation list that exists but
 * cannot be read or parsed fails closed: every token is refused until it is fixed.
 */
export class TokenVerifier extends EventEmitter<TokenVerifierEvents> {
  /** The tokens CA certificate (PEM): the TLS server's trust for client certificates. */
  readonly caPem: string;
  /** Where caPem is stored. */
  readonly caFile: string;
  private readonly caCert: x509.X509Certificate;
  private readonly publicKey: CryptoKey;
  /** revoked.json, or (shared state) the revocation record's Consul key. */
  private readonly revokedFile: string;
  private readonly logger?: Logger;
  /** Shared state: revocations arrive by a watch instead of polling a file. */
  private stopWatch?: () => void;
  private revoked = new Set<string>();
  /** Set while revoked.json is unreadable or corrupt: the reason every token is refused. */
  private problem?: string;
  private statKey?: string;
  private loaded = false;
  private timer?: NodeJS.Timeout;
  private chain: Promise<void> = Promise.resolve();
  private queued?: Promise<void>;

  private constructor(keys: TokenKeys, revokedFile: string, logger?: Logger) {
    super();
    this.caPem = keys.caPem;
    this.caFile = keys.caFile;
    this.caCert = keys.caCert;
    this.publicKey = keys.publicKey;
    this.revokedFile = revokedFile;
    this.logger = logger;
  }

  /** Opens the verifier (creating the key pair and ca.crt on first use) and starts watching revoked.json. */
  static async open(dataDir: TokenStore, opts: { logger?: Logger; pollMs?: number } = {}): Promise<TokenVerifier> {
    if (typeof dataDir !== 'string') return TokenVerifier.openShared(dataDir, opts);
    const v = new TokenVerifier(await tokenKeys(dataDir), tokenPaths(dataDir).revoked, opts.logger);
    await v.refresh();
    v.loaded = true;
    v.timer = setInterval(() => void v.refresh(), opts.pollMs ?? 200);
    v.timer.unref();
    return v;
  }

  /**
   * The verifier of the shared state: revocations follow the shared record by a blocking query
   * (applied as soon as Consul answers). A record that does not parse fails closed, as a corrupt
   * revoked.json does; Consul out of reach keeps the list read last.
   */
  private static async openShared(shared: SharedState, opts: { logger?: Logger }): Promise<TokenVerifier> {
    const v = new TokenVerifier(await sharedTokenKeys(shared), shared.keyOf(SHARED_REVOKED_RECORD), opts.logger);
    v.chain = new Promise<void>((resolve) => {
      let first = true;
      v.stopWatch = shared.watch(
        SHARED_REVOKED_RECORD,
        (data) => {
          try {
            v.apply(new Set(Object.keys(sharedRevoked(data))));
          } catch (e) {
            v.fail((e as Error).message, false);
          }
          if (first) {
            first = false;
            resolve();
          }
        },
        (e) => {
          v.fail(e.message, false);
          if (first) {
            first = false;
            resolve();
          }
        },
      );
    });
    await v.chain;
    v.loaded = true;
    return v;
  }

  /** Stops watching revoked.json. verify() still reads it on each call. */
  close(): void {
    this.stopWatch?.();
    this.stopWatch = undefined;
    if (this.timer) clearInterval(this.timer);
    this.timer = undefined;
  }

  /** Whether `id` is in the revocation list as last read. */
  isRevoked(id: string): boolean {
    return this.revoked.has(id);
  }

  /** Why every token is refused right now (revoked.json unreadable), or undefined. */
  get revocationProblem(): string | undefined {
    return this.problem;
  }

  /** Re-reads revoked.json if it changed. Calls are serialised; a call always sees changes made before it. */
  private refresh(): Promise<void> {
    if (this.stopWatch) return Promise.resolve(); // shared state: the watch keeps the list current
    if (this.queued) return this.queued; // a check that has not started yet covers this call too
    const run: Promise<void> = this.chain
      .then(() => {
        if (this.queued === run) this.queued = undefined;
        return this.check();
      })
      .catch((e: unknown) => this.logger?.error({ err: e }, 'reading the token revocation list failed'));
    this.queued = run;
    this.chain = run;
    return run;
  }

  private async check(): Promise<void> {
    let key: string;
    try {
      const st = await fs.stat(this.revokedFile);
      key = `${st.size}:${st.mtimeMs}:${st.ino}`;
    } catch (e) {
      if (errCode(e) !== 'ENOENT') return this.fail(errCode(e), true);
      key = 'missing';
    }
    if (key === this.statKey) return;
    this.statKey = key;
    if (key === 'missing') return this.apply(new Set());
    let text: string;
    try {
      text = await fs.readFile(this.revokedFile, 'utf8');
    } catch (e) {
      if (errCode(e) === 'ENOENT') return this.apply(new Set());
      return this.fail(errCode(e), true);
    }
    let ids: string[];
    try {
      ids = parseRevoked(text);
    } catch (e) {
      return this.fail((e as Error).message, false);
    }
    this.apply(new Set(ids));
  }

  /**
   * Fails closed. A corrupt file is judged once per change of the file; an I/O error (which may
   * pass) is retried on every poll, logged again only when the reason changes.
   */
  private fail(detail: string, retry: boolean): void {
    const problem = `revocation list ${this.revokedFile} is unreadable: ${detail}; every token is refused until it is fixed`;
    if (retry) this.statKey = undefined;
    if (retry && problem === this.problem) return;
    this.problem = problem;
    this.logger?.error({ file: this.revokedFile }, problem);
    this.emitSafely('unreadable', problem);
  }

  private apply(ids: Set<string>): void {
    if (this.problem) {
      this.problem = undefined;
      this.logger?.warn({ file: this.revokedFile, revoked: ids.size }, 'token revocation list readable again; tokens are accepted again');
    }
    const added = new Set([...ids].filter((id) => !this.revoked.has(id)));
    this.revoked = ids;
    if (this.loaded && added.size > 0) {
      this.logger?.info({ ids: [...added] }, 'tokens revoked');
      this.emitSafely('revoked', added);
    }
  }

  private emitSafely<K extends keyof TokenVerifierEvents>(event: K, ...args: TokenVerifierEvents[K]): void {
    try {
      (this.emit as (e: string, ...a: unknown[]) => boolean)(event, ...args);
    } catch (e) {
      this.logger?.error({ err: e, event }, 'a token verifier listener failed');
    }
  }

  /** Verifies a JWT presented as metadata. */
  async verify(token: string | undefined): Promise<TokenCheck> {
    if (!token) return { ok: false, reason: 'no token' };
    if (token.length > 4096) return { ok: false, reason: 'token too large' };
    await this.refresh();
    if (this.problem) return { ok: false, reason: this.problem };
    let payload: JWTPayload;
    try {
      ({ payload } = await jwtVerify(token, this.publicKey, { issuer: ISSUER, audience: AUDIENCE, algorithms: [ALG], requiredClaims: ['exp', 'jti', 'sub'] }));
    } catch (e) {
      const err = e as { code?: string; claim?: string; reason?: string };
      const code = err.code ?? 'invalid';
      if (code === 'ERR_JWT_EXPIRED') return { ok: false, reason: 'token expired' };
      if (code === 'ERR_JWS_SIGNATURE_VERIFICATION_FAILED') return { ok: false, reason: 'token not signed by this control plane' };
      if (code === 'ERR_JWT_CLAIM_VALIDATION_FAILED' && err.reason === 'missing' && err.claim === 'exp')
        return { ok: false, reason: 'token without expiry (issued by an older Signalbox); issue a new one' };
      if (code === 'ERR_JWT_CLAIM_VALIDATION_FAILED' && err.reason === 'missing') return { ok: false, reason: 'token without subject or id' };
      return { ok: false, reason: `invalid token (${code})` };
    }
    const { sub, jti, exp } = payload;
    if (!sub || !jti || exp === undefined) return { ok: false, reason: 'token without subject or id' };
    if (!SUBJECT.test(sub)) return { ok: false, reason: 'token with a bad subject' };
    if (this.revoked.has(jti)) return { ok: false, reason: `token ${jti} is revoked` };
    return { ok: true, claims: { subject: sub, id: jti, expiresAt: new Date(exp * 1000) } };
  }

  /** Verifies a client certificate (DER) presented on the TLS connection. */
  async verifyCertificate(der: Buffer | Uint8Array | undefined): Promise<TokenCheck> {
    if (!der || der.length === 0) return { ok: false, reason: 'no client certificate' };
    if (der.length > MAX_CERT_BYTES) return { ok: false, reason: 'client certificate too large' };
    await this.refresh();
    if (this.problem) return { ok: false, reason: this.problem };
    let cert: x509.X509Certificate;
    try {
      cert = new x509.X509Certificate(new Uint8Array(der));
    } catch {
      return { ok: false, reason: 'client certificate is not X.509 (DER)' };
    }
    let signed = false;
    try {
      signed = cert.issuer === this.caCert.subject && (await cert.verify({ publicKey: this.publicKey, signatureOnly: true }));
    } catch {
      signed = false;
    }
    if (!signed) return { ok: false, reason: "client certificate not issued by this control plane's token CA" };
    // Signed by us from here on: its contents can be trusted and named in a reason.
    if (cert.getExtension(x509.BasicConstraintsExtension)?.ca) return { ok: false, reason: 'client certificate is a CA certificate' };
    const eku = cert.getExtension(x509.ExtendedKeyUsageExtension);
    if (!eku?.usages.includes(x509.ExtendedKeyUsage.clientAuth)) return { ok: false, reason: 'client certificate is not for client authentication' };
    const urns = (cert.getExtension(x509.SubjectAlternativeNameExtension)?.names.toJSON() ?? [])
      .filter((n) => n.type === 'url' && n.value.startsWith(URN_PREFIX))
      .map((n) => n.value.slice(URN_PREFIX.length));
    const m = urns.length === 1 ? /^([0-9a-f-]{36}):(.+)$/.exec(urns[0]!) : null;
    if (!m || !TOKEN_ID.test(m[1]!) || !SUBJECT.test(m[2]!)) return { ok: false, reason: 'client certificate without a token id and subject' };
    const id = m[1]!;
    const subject = m[2]!;
    const now = Date.now();
    if (now < cert.notBefore.getTime()) return { ok: false, reason: `token ${id} is not valid yet` };
    if (now >= cert.notAfter.getTime()) return { ok: false, reason: `token ${id} expired` };
    if (this.revoked.has(id)) return { ok: false, reason: `token ${id} is revoked` };
    return { ok: true, claims: { subject, id, expiresAt: cert.notAfter } };
  }
}
