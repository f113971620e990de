// Finding the token of a request where a policy says it is: a header (with its prefix, such as
// "Bearer "), a cookie or a query parameter, in the policy's order. Two tokens in one place (two
// Authorization headers, two cookies or parameters of the name) make the request malformed; a
// token longer than the policy allows is refused before it is looked at.
import type { TokenSource } from '../model/jwt.js';

/** What Envoy tells the service about the request (header names in lower case). */
export interface RequestView {
  headers: Readonly<Record<string, string>>;
  /** Path with query string, as received. */
  path: string;
}

export type Extracted = { kind: 'none' } | { kind: 'token'; token: string } | { kind: 'multiple' } | { kind: 'too_large' };

function startsWithIgnoringCase(s: string, prefix: string): boolean {
  return s.length >= prefix.length && s.slice(0, prefix.length).toLowerCase() === prefix.toLowerCase();
}

/** Values of one cookie (Envoy joins several Cookie headers with "; " or ","). */
function cookieValues(header: string | undefined, name: string): string[] {
  if (!header) return [];
  const out: string[] = [];
  for (const part of header.split(/[;,]/)) {
    const eq = part.indexOf('=');
    if (eq < 0 || part.slice(0, eq).trim() !== name) continue;
    let v = part.slice(eq + 1).trim();
    if (v.length >= 2 && v.startsWith('"') && v.endsWith('"')) v = v.slice(1, -1);
    out.push(v);
  }
  return out;
}

function queryValues(path: string, name: string, maxBytes: number): string[] | 'too_large' {
  const q = path.indexOf('?');
  if (q < 0) return [];
  const out: string[] = [];
  for (const pair of path.slice(q + 1).split('&')) {
    const eq = pair.indexOf('=');
    const key = eq < 0 ? pair : pair.slice(0, eq);
    if (key !== name) continue;
    const raw = eq < 0 ? '' : pair.slice(eq + 1);
    if (raw.length > maxBytes * 3) return 'too_large';
    try {
      out.push(decodeURIComponent(raw.replace(/\+/g, ' ')));
    } catch {
      out.push(raw);
    }
  }
  return out;
}

export function extractToken(req: RequestView, sources: readonly TokenSource[], maxBytes: number): Extracted {
  for (const s of sources) {
    let values: string[];
    if ('header' in s) {
      const raw = req.headers[s.header];
      if (raw === undefined) continue;
      // Envoy joins repeated headers with ","; a JWT never holds one: two credentials were sent.
      if (raw.includes(',')) return { kind: 'multiple' };
      if (raw.length > maxBytes + (s.prefix?.length ?? 0) + 16) return { kind: 'too_large' };
      const v = raw.trim();
      if (s.prefix && !startsWithIgnoringCase(v, s.prefix)) continue; // another scheme (e.g. Basic): no token here
      values = [(s.prefix ? v.slice(s.prefix.length) : v).trim()];
    } else if ('cookie' in s) {
      values = cookieValues(req.headers.cookie, s.cookie);
    } else {
      const q = queryValues(req.path, s.query, maxBytes);
      if (q === 'too_large') return { kind: 'too_large' };
      values = q;
    }
    values = values.filter((v) => v !== '');
    if (values.length === 0) continue;
    if (values.length > 1) return { kind: 'multiple' };
    const token = values[0]!;
    if (Buffer.byteLength(token) > maxBytes) return { kind: 'too_large' };
    return { kind: 'token', token };
  }
  return { kind: 'none' };
}
