// The Redis URL of the global rate limits, checked and shown without its password. Here, with the
// settings, because a typo in --redis-url is a start error found while the flags are parsed; the
// rate-limit service uses the same functions when it connects.
//
// Forms: redis://[user:password@]host:port[/db], rediss://… (TLS), and for a Redis on the same
// host its Unix socket, unix:///path/redis.sock or redis+unix:///path/redis.sock, with ?db=N for a
// database. A socket URL carries no credentials (the password comes from --redis-password-file or
// REDIS_PASSWORD) and no TLS (the socket never leaves the host; its file mode guards it).

/** The URL as it may be shown: user kept, password replaced. */
export function redactRedisUrl(url: string): string {
  try {
    const u = new URL(url);
    if (u.password) u.password = '***';
    return u.toString();
  } catch {
    return '(not a valid URL)';
  }
}

/** A Unix-socket Redis URL: its socket path and database, else undefined (a TCP URL). */
export function redisSocketOf(url: string): { path: string; db: number } | undefined {
  const u = new URL(url);
  if (u.protocol !== 'unix:' && u.protocol !== 'redis+unix:') return undefined;
  return { path: decodeURIComponent(u.pathname), db: Number(u.searchParams.get('db') ?? 0) };
}

/** Checks a Redis URL (scheme, host, port, db; a socket's path) without connecting; throws with a clear message. */
export function checkRedisUrl(url: string): void {
  let u: URL;
  try {
    u = new URL(url);
  } catch {
    throw new Error(
      `--redis-url must be a URL such as redis://127.0.0.1:6379, rediss://:PASSWORD@redis.internal:6380 or unix:///run/redis/redis.sock, got "${redactRedisUrl(url)}"`,
    );
  }
  if (u.protocol === 'unix:' || u.protocol === 'redis+unix:') {
    if (u.username || u.password)
      throw new Error('--redis-url: a Unix socket URL carries no credentials; give the password with --redis-password-file or REDIS_PASSWORD');
    if (u.hostname) throw new Error(`--redis-url: a Unix socket URL names no host (${u.protocol}///path/redis.sock), got host "${u.hostname}"`);
    if (!u.pathname.startsWith('/') || u.pathname === '/')
      throw new Error(`--redis-url: ${u.protocol}// needs the socket's absolute path, e.g. ${u.protocol}///run/redis/redis.sock`);
    for (const k of u.searchParams.keys()) if (k !== 'db') throw new Error(`--redis-url: a Unix socket URL takes only ?db=N, got "?${k}"`);
    const db = u.searchParams.get('db');
    if (db !== null && !/^\d{1,2}$/.test(db)) throw new Error(`--redis-url: ?db= is a database number (0-15), got "${db.slice(0, 20)}"`);
    return;
  }
  if (u.protocol !== 'redis:' && u.protocol !== 'rediss:')
    throw new Error(`--redis-url must start with redis://, rediss:// (TLS), unix:// or redis+unix:// (a local socket), got "${u.protocol}//"`);
  if (!u.hostname) throw new Error('--redis-url names no host');
  const db = u.pathname.replace(/^\//, '');
  if (db !== '' && !/^\d{1,2}$/.test(db)) throw new Error(`--redis-url: the path is a database number (0-15), got "/${db}"`);
}
