// The JWT fast path: Envoy remembers the ext_authz service's answers for tokens it allowed.
//
// A route under one JWTPolicy that reads its token from one header gets a small Lua script instead
// of Envoy's ext_authz filter. The service still makes every decision; the script only avoids
// asking it the same question twice:
//   - a request whose token header holds exactly a value the service allowed before (under this
//     policy, these settings and these keys), inside the time window that answer holds for (from
//     the token's exp, nbf and iat with the clock skew, one second narrower at each end, and at
//     most CACHE_MAX_SECONDS), gets the same answer again: the forwarded-claim headers set, client
//     copies removed, passed on. Nothing else is looked at, so it cannot differ from the service.
//   - anything else (no token, a token not seen, one refused before, an answer past its window) is
//     sent to the service (POST /signalbox.jwt/check/<policy> on the ext_authz port, the policy's
//     header joined as Envoy's ext_authz filter joins it); the service's answer is applied: an allow
//     sets and removes headers and is remembered when it judged a token, a refusal is sent to the
//     client as the service wrote it (status, WWW-Authenticate, body).
//   - no answer in time, an answer it cannot read, or any error in the script: 503, as the ext_authz
//     filter fails closed. The script runs under pcall, so an error can never let a request through.
// Refusals are never remembered. The script's state lives as long as its configuration: the
// script embeds a digest of the policy's settings and keys (IRJwtFastCheck.version), so new
// settings or keys reach Envoy as a new script that starts empty.
// Allows taken from memory are counted per worker and reported about once a second (an
// asynchronous POST /signalbox.jwt/report/<policy>) into signalbox_authz_fast_path_allows_total.
//
// The script is a constant. Each policy gets its own copy whose first line binds `C` to the
// policy's parameters, written as a Lua table literal by `luaLiteral` (every string byte-escaped, so
// a policy value can never become code); each fast-path route names its policy's copy
// (LuaPerRoute.name).
import type { IRJwtFastCheck } from '../../../ir/jwt.js';
import type { IRHttpListener, IRRoute } from '../../../ir/types.js';
import { typed } from '../util.js';
import type { HttpFilterModule } from './index.js';

export const JWT_CHECK_FILTER = 'signalbox.jwt_check';

/** The service's plain-HTTP endpoints for the script (beside the gRPC Check on the same port). */
export const FAST_PATH_HTTP = { check: '/signalbox.jwt/check/', report: '/signalbox.jwt/report/', countHeader: 'x-signalbox-allows' } as const;

/** The longest the script keeps an answer, whatever the token's expiry (bounds a revoked key's reach). */
export const CACHE_MAX_SECONDS = 300;

export const JWT_CHECK_SCRIPT = `-- Signalbox JWT fast path (see src/xds/translator/filters/jwt-fast.ts); C: the policy.
local CACHE, CACHE_N, CACHE_BYTES = {}, 0, 0
local CACHE_MAX_N, CACHE_MAX_BYTES, CACHE_MAX_SECONDS = 10000, 8388608, ${CACHE_MAX_SECONDS}
local ALLOWS, REPORTED_AT = 0, 0
local AUTHORITY = "signalbox-authz"

local function remember(raw, e)
  if CACHE_N >= CACHE_MAX_N or CACHE_BYTES + #raw > CACHE_MAX_BYTES then
    CACHE, CACHE_N, CACHE_BYTES = {}, 0, 0
  end
  if CACHE[raw] == nil then
    CACHE_N = CACHE_N + 1
    CACHE_BYTES = CACHE_BYTES + #raw
  end
  CACHE[raw] = e
end

local function apply(headers, e)
  for _, h in ipairs(e.set) do headers:replace(h[1], h[2]) end
  for _, name in ipairs(e.remove) do headers:remove(name) end
end

-- The service's answer to one check (see src/authz/fast-path.ts):
--   allow                       deny <status>
--   cache <from|-> <last>       header <name> <value>   (any number)
--   set <name> <value>          body
--   remove <name>               <the body, to the end>
local function ask(handle, headers, raw, now)
  local request = { [":method"] = "POST", [":path"] = C.checkPath, [":authority"] = AUTHORITY }
  if raw ~= nil then request[C.header] = raw end
  local traceparent = headers:get("traceparent")
  if traceparent ~= nil then
    request["traceparent"] = traceparent
    request["tracestate"] = headers:get("tracestate")
  end
  local answer, body = handle:httpCall(C.cluster, request, "", C.timeoutMs)
  if answer[":status"] ~= "200" or body == nil then error("no answer from the service", 0) end
  local verdict = string.match(body, "^[^\\n]*")
  if verdict == "allow" then
    local e = { set = {}, remove = {} }
    local first, last
    for line in string.gmatch(body, "[^\\n]+") do
      local kind, rest = string.match(line, "^(%S+) (.*)$")
      if kind == "set" then
        local name, value = string.match(rest, "^(%S+) (.*)$")
        e.set[#e.set + 1] = { name, value }
      elseif kind == "remove" then
        e.remove[#e.remove + 1] = rest
      elseif kind == "cache" then
        first, last = string.match(rest, "^(%S+) (%S+)$")
      end
    end
    apply(handle:headers(), e) -- (header objects from before the call are no longer valid)
    last = tonumber(last)
    if raw ~= nil and last ~= nil then
      e.from = tonumber(first) or -math.huge
      e.last = math.min(last, now + CACHE_MAX_SECONDS)
      remember(raw, e)
    end
    return
  end
  local status = verdict and string.match(verdict, "^deny (%d%d%d)$")
  if status == nil then error("unreadable answer from the service", 0) end
  local reply = { [":status"] = status }
  local at = string.find(body, "\\nbody\\n", 1, true)
  for name, value in string.gmatch(at and string.sub(body, 1, at) or body, "\\nheader (%S+) ([^\\n]*)") do reply[name] = value end
  handle:respond(reply, at and string.sub(body, at + 6) or "")
end

local function report(handle, now)
  REPORTED_AT = now
  local n = ALLOWS
  ALLOWS = 0
  handle:httpCall(C.cluster, { [":method"] = "POST", [":path"] = C.reportPath, [":authority"] = AUTHORITY, ["${FAST_PATH_HTTP.countHeader}"] = tostring(n) }, "", C.timeoutMs, true)
end

local function decide(handle)
  local headers = handle:headers()
  local raw = headers:get(C.header)
  local now = os.time()
  local e = raw and CACHE[raw]
  if e and e.from <= now and now <= e.last then
    apply(headers, e)
    ALLOWS = ALLOWS + 1
    if now ~= REPORTED_AT then pcall(report, handle, now) end
    return
  end
  ask(handle, headers, raw, now)
end

function envoy_on_request(handle)
  local ok, err = pcall(decide, handle)
  if not ok then
    handle:logWarn("signalbox jwt check failed closed: " .. tostring(err))
    handle:respond({ [":status"] = "503" }, "")
  end
end
`;

/** A string as a Lua literal: printable ASCII kept, everything else (and quotes, backslashes) as \ddd. */
function luaString(v: string): string {
  let out = '"';
  for (const b of Buffer.from(v, 'utf8')) out += b >= 0x20 && b < 0x7f && b !== 0x22 && b !== 0x5c ? String.fromCharCode(b) : `\\${String(b).padStart(3, '0')}`;
  return out + '"';
}

/** A JSON value as a Lua expression (objects as tables with string keys, arrays as sequences). */
export function luaLiteral(v: unknown): string {
  if (v === null || v === undefined) return 'nil';
  if (typeof v === 'string') return luaString(v);
  if (typeof v === 'boolean') return v ? 'true' : 'false';
  if (typeof v === 'number') {
    if (!Number.isFinite(v)) throw new Error('a policy number must be finite');
    return Object.is(v, -0) ? '0' : String(v);
  }
  if (Array.isArray(v)) return `{${v.map(luaLiteral).join(', ')}}`;
  const o = v as Record<string, unknown>;
  return `{${Object.keys(o).sort().filter((k) => o[k] !== undefined).map((k) => `[${luaString(k)}] = ${luaLiteral(o[k])}`).join(', ')}}`;
}

/** The script of one policy. */
export function checkScript(check: IRJwtFastCheck): string {
  const name = encodeURIComponent(check.policy);
  const c = { ...check, checkPath: FAST_PATH_HTTP.check + name, reportPath: FAST_PATH_HTTP.report + name };
  return `local C = ${luaLiteral(c)}\n${JWT_CHECK_SCRIPT}`;
}

const checksOf = new WeakMap<IRHttpListener, Map<string, IRJwtFastCheck>>();

/** The fast-path policies of a listener's routes (worked out once per IR listener). */
function fastChecks(l: IRHttpListener): Map<string, IRJwtFastCheck> {
  let checks = checksOf.get(l);
  if (!checks) {
    checks = new Map();
    for (const v of l.routeConfig.virtualHosts) for (const r of v.routes) if (r.jwt?.fast) checks.set(r.jwt.fast.policy, r.jwt.fast);
    checksOf.set(l, checks);
  }
  return checks;
}

export const jwtCheck: HttpFilterModule = {
  envoyName: JWT_CHECK_FILTER,
  wanted: (l: IRHttpListener) => fastChecks(l).size > 0,
  hcmEntry: (l: IRHttpListener) => {
    // One script per policy with a fast-path route on this listener, by policy name.
    const checks = fastChecks(l);
    if (checks.size === 0) return undefined;
    const sourceCodes = Object.fromEntries([...checks.keys()].sort().map((p) => [p, { inline_string: checkScript(checks.get(p)!) }]));
    return { name: JWT_CHECK_FILTER, typed_config: typed('envoy.extensions.filters.http.lua.v3.Lua', { source_codes: sourceCodes }) };
  },
};

/** Route-level settings on a fast-path listener: the policy's script, or none. */
export function patchRouteForJwtFastPath(l: IRHttpListener, r: IRRoute, out: Record<string, unknown>): void {
  if (fastChecks(l).size === 0) return;
  const fast = r.jwt?.fast;
  out.typed_per_filter_config = {
    ...((out.typed_per_filter_config as Record<string, unknown> | undefined) ?? {}),
    [JWT_CHECK_FILTER]: typed('envoy.extensions.filters.http.lua.v3.LuaPerRoute', fast ? { name: fast.policy } : { disabled: true }),
  };
}
