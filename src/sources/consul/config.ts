// How Signalbox reaches Consul, configured the way Consul's own CLI is: CONSUL_HTTP_ADDR,
// CONSUL_HTTP_TOKEN (or CONSUL_HTTP_TOKEN_FILE), CONSUL_CACERT, CONSUL_CLIENT_CERT,
// CONSUL_CLIENT_KEY, CONSUL_TLS_SERVER_NAME, CONSUL_HTTP_SSL, CONSUL_HTTP_SSL_VERIFY.
// The token and the private key never appear in logs, errors or status output.
import { readFileSync } from 'node:fs';
import { ErrorCode, SignalboxError } from '../../errors.js';

export interface ConsulTls {
  ca?: Buffer;
  cert?: Buffer;
  key?: Buffer;
  serverName?: string;
  rejectUnauthorized: boolean;
}

export interface ConsulConnection {
  /** `http://host:port` or `https://host:port` (no path, no credentials). */
  baseUrl: string;
  token?: string;
  tls?: ConsulTls;
  /** Datacenter for queries whose Service does not name one; absent: the agent's own. */
  datacenter?: string;
}

function readFileSetting(name: string, file: string): Buffer {
  try {
    return readFileSync(file);
  } catch (e) {
    throw new SignalboxError(ErrorCode.BAD_FLAG, `${name}: cannot read ${file}: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`);
  }
}

function truthy(v: string | undefined): boolean | undefined {
  if (v === undefined || v === '') return undefined;
  return ['1', 'true', 'yes', 'on'].includes(v.toLowerCase());
}

/** Parses CONSUL_HTTP_ADDR's forms: `host:port`, `http://host:port`, `https://host:port`, `[::1]:8500`. */
export function parseConsulAddress(addr: string, forceTls = false): string {
  const text = addr.trim();
  if (text === '') throw new SignalboxError(ErrorCode.BAD_FLAG, '--consul-addr is empty');
  const withScheme = /^[a-z][a-z0-9+.-]*:\/\//i.test(text) ? text : `${forceTls ? 'https' : 'http'}://${text}`;
  let url: URL;
  try {
    url = new URL(withScheme);
  } catch {
    throw new SignalboxError(ErrorCode.BAD_FLAG, `--consul-addr must be HOST:PORT or http(s)://HOST:PORT, got "${addr}"`);
  }
  if (url.protocol !== 'http:' && url.protocol !== 'https:')
    throw new SignalboxError(ErrorCode.BAD_FLAG, `--consul-addr: unsupported scheme "${url.protocol}" (use http or https)`);
  if (url.username || url.password) throw new SignalboxError(ErrorCode.BAD_FLAG, '--consul-addr must not carry credentials; use CONSUL_HTTP_TOKEN');
  if (url.pathname !== '/' && url.pathname !== '') throw new SignalboxError(ErrorCode.BAD_FLAG, `--consul-addr must not have a path, got "${url.pathname}"`);
  return `${url.protocol}//${url.host}`;
}

/** The connection settings from a flag value (or CONSUL_HTTP_ADDR) plus the CONSUL_* environment. */
export function consulConnectionFromEnv(addr: string, datacenter: string | undefined, env: NodeJS.ProcessEnv = process.env): ConsulConnection {
  const forceTls = truthy(env.CONSUL_HTTP_SSL) === true;
  const baseUrl = parseConsulAddress(addr, forceTls);
  let token = env.CONSUL_HTTP_TOKEN || undefined;
  if (!token && env.CONSUL_HTTP_TOKEN_FILE) token = readFileSetting('CONSUL_HTTP_TOKEN_FILE', env.CONSUL_HTTP_TOKEN_FILE).toString('utf8').trim() || undefined;
  const conn: ConsulConnection = { baseUrl, token, datacenter: datacenter || undefined };
  if (baseUrl.startsWith('https:')) {
    if (!!env.CONSUL_CLIENT_CERT !== !!env.CONSUL_CLIENT_KEY)
      throw new SignalboxError(ErrorCode.BAD_FLAG, 'CONSUL_CLIENT_CERT and CONSUL_CLIENT_KEY must be given together');
    conn.tls = {
      ca: env.CONSUL_CACERT ? readFileSetting('CONSUL_CACERT', env.CONSUL_CACERT) : undefined,
      cert: env.CONSUL_CLIENT_CERT ? readFileSetting('CONSUL_CLIENT_CERT', env.CONSUL_CLIENT_CERT) : undefined,
      key: env.CONSUL_CLIENT_KEY ? readFileSetting('CONSUL_CLIENT_KEY', env.CONSUL_CLIENT_KEY) : undefined,
      serverName: env.CONSUL_TLS_SERVER_NAME || undefined,
      rejectUnauthorized: truthy(env.CONSUL_HTTP_SSL_VERIFY) !== false,
    };
  }
  return conn;
}
