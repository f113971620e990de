// The service's side of the JWT fast path (the script in src/xds/translator/filters/jwt-fast.ts):
// two plain HTTP/2 requests on the ext_authz port, beside the gRPC Check. The protocol, version 1,
// is specified in docs/jwt-fast-path-protocol.md (test/contract/ holds its cases); this is a
// summary.
//
//   POST /signalbox.jwt/check/<policy>   the policy's token header (as Envoy joins it), nothing
//                                        else: the same decision a Check for that route makes,
//                                        as text the script reads without a parser of its own.
//   POST /signalbox.jwt/report/<policy>  x-signalbox-allows: N, the allows the script took from
//                                        its memory since its last report (counted, nothing else).
//
// The answer is always HTTP 200 with a text body (the status the client gets is inside it):
//   allow                               deny <status>
//   cache <first|-> <last>              header <name> <value>   (zero or more)
//   set <name> <value>   (zero or more) body
//   remove <name>        (zero or more) <the response body, to the end>
// `cache` is there only when the answer judged a token: the whole seconds (Unix time, as Lua's
// os.time() counts them) during every instant of which the same token gets the same answer.
// Header values never hold a line break (forwarded claims with control characters are not
// forwarded; challenges are fixed text), so one line per header is exact.
import type { Decision } from './engine.js';

/** The script's answer to one check (see the file comment). */
export function fastPathAnswer(d: Decision): string {
  if (d.allow) {
    const lines = ['allow'];
    if (d.window) {
      // from <= t and t + 1 <= until for an integer second t: t in [ceil(from), floor(until) - 1].
      const first = d.window.from === undefined ? '-' : String(Math.ceil(d.window.from));
      const last = Math.floor(d.window.until) - 1;
      if (Number.isFinite(last)) lines.push(`cache ${first} ${last}`);
    }
    for (const h of d.headers) lines.push(`set ${h.name} ${h.value}`);
    for (const h of d.removeHeaders) lines.push(`remove ${h}`);
    return `${lines.join('\n')}\n`;
  }
  const lines = [`deny ${d.status}`, ...d.headers.map((h) => `header ${h.name} ${h.value}`), 'body'];
  return `${lines.join('\n')}\n${d.body}`;
}

/** The policy a fast-path request names (`<prefix><policy>`), or undefined. */
export function policyOfPath(path: string, prefix: string): string | undefined {
  if (!path.startsWith(prefix)) return undefined;
  try {
    const name = decodeURIComponent(path.slice(prefix.length));
    return name.length > 0 && name.length <= 253 ? name : undefined;
  } catch {
    return undefined;
  }
}
