/** Whether `pattern` ("*", "*.example.com" or an exact name) covers `host`. */
export function hostnameMatches(pattern: string, host: string): boolean {
  if (pattern === '*') return true;
  if (pattern.startsWith('*.')) {
    const suffix = pattern.slice(1);
    return host.endsWith(suffix) && host.length > suffix.length && !host.startsWith('*');
  }
  return pattern === host;
}
