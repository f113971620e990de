// The Redis URL of the global rate limits, checked and shown without its password. Here, with the
// settings, because a typo in --redis-url is a start error found while the flags are parsed; the
// rate-limit service uses the same two functions when it connects.

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

/** Checks a Redis URL (scheme, host, port, db) without connecting; throws with a clear message. */
export function checkRedisUrl(url: string): void {
  let u: URL;
  try {
    u = new URL(url);
  } catch {
    throw new Error(`--redis-url must be a URL such as redis://127.0.0.1:6379 or rediss://:PASSWORD@redis.internal:6380, got "${redactRedisUrl(url)}"`);
  }
  if (u.protocol !== 'redis:' && u.protocol !== 'rediss:') throw new Error(`--redis-url must start with redis:// or rediss:// (TLS), got "${u.protocol}//"`);
  if (!u.hostname) throw new Error('--redis-url names no host');
  const db = u.pathname.replace(/^\//, '');
  if (db !== '' && !/^\d{1,2}$/.test(db)) throw new Error(`--redis-url: the path is a database number (0-15), got "/${db}"`);
}
