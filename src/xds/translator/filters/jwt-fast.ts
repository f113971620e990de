// The JWT fast path: Envoy remembers the ext_authz service's answers for tokens it allowed.
// Its protocol (this file's configuration strings, the script's requests, the service's answers)
// is specified in docs/jwt-fast-path-protocol.md, version 1, and held by test/contract/.
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
// Refusals are never remembered. One script serves every policy: a fast-path route's metadata
// (`signalbox.jwt_check` / `check`) names its policy, token header and version (a digest of the
// policy's settings and keys), and remembered answers are kept under the version, so new
// settings or keys (an RDS update, the listener is untouched) start afresh. A route whose
// metadata cannot be read fails closed, and so does a route that has neither the metadata nor
// the script disabled (every other route of the listener has it disabled); a request no route
// matches is left to Envoy (404).
// Allows taken from memory are counted per worker and policy and reported about once a second
// (an asynchronous POST /signalbox.jwt/report/<policy>) into signalbox_authz_fast_path_allows_total.
// The script is a constant: nothing from a policy ever becomes code.
//
// `--jwt-fast-path module` runs the same check in Signalbox's compiled filter instead (an Envoy
// dynamic module, native/jwt-check/jwt_check.c, which Envoy loads as libsignalbox_jwt_check.so
// from ENVOY_DYNAMIC_MODULES_SEARCH_PATH). It costs Envoy about what its own jwt_authn filter
// costs, where any Lua script costs more (docs/benchmarks.md). Each route names its check in the
// filter's per-route config rather than in metadata: "<policy> <header> <version>", or "skip" on
// every other route of the listener; a route with no per-route config gets 503 (fails closed).
// Its allows from memory are reported in one request per second for all policies, with an id
// the service counts once (POST /signalbox.jwt/report, "<policy> <count>" lines).
import type { IRJwtFastCheck } from '../../../ir/jwt.js';
import { AUTHZ_CLUSTER, EXT_AUTHZ_TIMEOUT_MS, FAST_PATH_HTTP, JWT_MODULE } from '../../../protocol/jwt-fast-path.js';
import type { IRHttpListener } from '../../../ir/types.js';
import { typed } from '../util.js';
import type { HttpFilterModule } from './index.js';

export const JWT_CHECK_FILTER = 'signalbox.jwt_check';

// The names the script, the module, the service and the xDS server share: src/protocol/jwt-fast-path.ts.
export { FAST_PATH_HTTP, JWT_MODULE };

/** The longest the script keeps an answer, whatever the token's expiry (bounds a revoked key's reach). */
export const CACHE_MAX_SECONDS = 300;

/** The route metadata key (under the filter's name) that names a fast-path route's check. */
export const FAST_PATH_ROUTE_KEY = 'check';

export const JWT_CHECK_SCRIPT = `-- Signalbox JWT fast path (see src/xds/translator/filters/jwt-fast.ts).
-- The route's metadata names its check: "<policy, URL-encoded> <token header> <version>".
local CLUSTER, TIMEOUT_MS, AUTHORITY = "${AUTHZ_CLUSTER}", ${EXT_AUTHZ_TIMEOUT_MS}, "signalbox-authz"
local CHECK_PATH, REPORT_PATH = "${FAST_PATH_HTTP.check}", "${FAST_PATH_HTTP.report}"
local CACHE, CACHE_N, CACHE_BYTES = {}, 0, 0
local CACHE_MAX_N, CACHE_MAX_BYTES, CACHE_MAX_SECONDS = 10000, 8388608, ${CACHE_MAX_SECONDS}
local CHECKS, CHECKS_N = {}, 0
local ALLOWS, REPORTED_AT = {}, 0

-- A route's check, parsed from its metadata value (callers look in CHECKS first).
local function check_of(spec)
  local policy, header, version = string.match(spec, "^(%S+) (%S+) (%S+)$")
  if policy == nil then error("unreadable route check", 0) end
  local c = { policy = policy, header = header, version = version }
  if CHECKS_N >= 10000 then CHECKS, CHECKS_N = {}, 0 end
  CHECKS[spec] = c
  CHECKS_N = CHECKS_N + 1
  return c
end

-- Remembered allows: CACHE[version][header value]. Bounded by count and bytes (then emptied).
local function remember(version, raw, e)
  if CACHE_N >= CACHE_MAX_N or CACHE_BYTES + #raw > CACHE_MAX_BYTES then
    CACHE, CACHE_N, CACHE_BYTES = {}, 0, 0
  end
  local bucket = CACHE[version]
  if bucket == nil then
    bucket = {}
    CACHE[version] = bucket
  end
  if bucket[raw] == nil then
    CACHE_N = CACHE_N + 1
    CACHE_BYTES = CACHE_BYTES + #raw
  end
  bucket[raw] = e
end

-- An HTTP header name (an RFC 9110 token), or an error: an answer with anything else is unreadable.
local function name_of(s)
  if s == nil or string.find(s, "^[%w!#$%%&'*+%-.^_\`|~]+$") == nil then error("unreadable answer from the service", 0) end
  return s
end

local function apply(headers, e)
  for _, h in ipairs(e.set) do headers:replace(h[1], h[2]) end
  for _, name in ipairs(e.remove) do headers:remove(name) end
end

-- The service's answer to one check (see src/authz/fast-path.ts):
--   allow                       deny <status>
--   cache <first|-> <last>      header <name> <value>   (any number)
--   set <name> <value>          body
--   remove <name>               <the body, to the end>
local function ask(handle, headers, c, raw, now)
  local request = { [":method"] = "POST", [":path"] = CHECK_PATH .. c.policy, [":authority"] = AUTHORITY }
  if raw ~= nil then request[c.header] = raw end
  local traceparent = headers:get("traceparent")
  if traceparent ~= nil then
    request["traceparent"] = traceparent
    request["tracestate"] = headers:get("tracestate")
  end
  local answer, body = handle:httpCall(CLUSTER, request, "", TIMEOUT_MS)
  if answer[":status"] ~= "200" or body == nil then error("no answer from the service", 0) end
  local verdict = string.match(body, "^[^\\n]*")
  if string.sub(body, 1, 6) == "allow\\n" then
    local e = { set = {}, remove = {}, policy = c.policy, changes = false }
    local first, last
    for line in string.gmatch(body, "[^\\n]+") do
      local kind, rest = string.match(line, "^(%S+) (.*)$")
      if kind == "set" then
        local name, value = string.match(rest, "^(%S+) (.*)$")
        if name == nil then error("unreadable answer from the service", 0) end
        e.set[#e.set + 1] = { name_of(name), value }
      elseif kind == "remove" then
        e.remove[#e.remove + 1] = name_of(rest)
      elseif kind == "cache" then
        -- "<first|-> <last>", whole numbers; anything else makes the whole answer unreadable.
        first, last = string.match(rest, "^(%-?%d+) (%-?%d+)$")
        if first == nil then last = string.match(rest, "^%- (%-?%d+)$") end
        if last == nil then error("unreadable answer from the service", 0) end
      end
    end
    e.changes = #e.set + #e.remove > 0
    apply(handle:headers(), e) -- (header objects from before the call are no longer valid)
    last = tonumber(last)
    if raw ~= nil and last ~= nil then
      e.from = tonumber(first) or -math.huge
      e.last = math.min(last, now + CACHE_MAX_SECONDS)
      remember(c.version, raw, e)
    end
    return
  end
  local status = verdict and string.match(verdict, "^deny (%d%d%d)$")
  if status == nil then error("unreadable answer from the service", 0) end
  local reply = { [":status"] = status }
  local at = string.find(body, "\\nbody\\n", 1, true)
  for name, value in string.gmatch(at and string.sub(body, 1, at) or body, "\\nheader (%S+) ([^\\n]*)") do reply[name_of(name)] = value end
  handle:respond(reply, at and string.sub(body, at + 6) or "")
end

-- Allows repeated from memory since the last report, per policy; at most once a second.
local function report(handle, now)
  REPORTED_AT = now
  local counts = ALLOWS
  ALLOWS = {}
  for policy, n in pairs(counts) do
    handle:httpCall(CLUSTER, { [":method"] = "POST", [":path"] = REPORT_PATH .. policy, [":authority"] = AUTHORITY, ["${FAST_PATH_HTTP.countHeader}"] = tostring(n) }, "", TIMEOUT_MS, true)
  end
end

local function decide(handle)
  local spec = handle:metadata():get("${FAST_PATH_ROUTE_KEY}")
  if spec == nil then
    -- No route: Envoy's router answers (404). A route without its check: fail closed, as the
    -- module does (Signalbox gives every other route of the listener a disabled script).
    if handle:streamInfo():routeName() == "" then return end
    error("route has no check", 0)
  end
  local c = CHECKS[spec] or check_of(spec)
  local headers = handle:headers()
  local raw = headers:get(c.header)
  local now = os.time()
  local bucket = CACHE[c.version]
  local e = bucket and raw and bucket[raw]
  if e and e.from <= now and now <= e.last then
    if e.changes then apply(headers, e) end
    ALLOWS[e.policy] = (ALLOWS[e.policy] or 0) + 1
    if now ~= REPORTED_AT then pcall(report, handle, now) end
    return
  end
  ask(handle, headers, c, raw, now)
end

function envoy_on_request(handle)
  local ok, err = pcall(decide, handle)
  if not ok then
    handle:logWarn("signalbox jwt check failed closed: " .. tostring(err))
    handle:respond({ [":status"] = "503" }, "")
  end
end
`;

/** What a fast-path route's metadata says about its check (read by the script, see above). */
export function routeCheckSpec(check: IRJwtFastCheck): string {
  return `${encodeURIComponent(check.policy)} ${check.header} ${check.version}`;
}

/** The module's filter config: "<cluster> <timeout ms> <longest seconds an allow is repeated>". */
export const JWT_MODULE_CONFIG = `${AUTHZ_CLUSTER} ${EXT_AUTHZ_TIMEOUT_MS} ${CACHE_MAX_SECONDS}`;

const moduleRef = { name: JWT_MODULE.name, do_not_close: true };
const stringValue = (value: string) => typed('google.protobuf.StringValue', { value });

type FastPathKind = false | 'script' | 'module';
const fastListeners = new WeakMap<IRHttpListener, FastPathKind>();

/** Whether any route of the listener has the fast path, and in what form (once per IR listener). */
export function fastPathKind(l: IRHttpListener): FastPathKind {
  let v = fastListeners.get(l);
  if (v === undefined) {
    v = l.jwtModule ? 'module' : l.routeConfig.virtualHosts.some((vh) => vh.routes.some((r) => r.jwt?.fast)) ? 'script' : false;
    fastListeners.set(l, v);
  }
  return v;
}
const hasFastPath = (l: IRHttpListener): boolean => fastPathKind(l) !== false;

export const jwtCheck: HttpFilterModule = {
  envoyName: JWT_CHECK_FILTER,
  wanted: hasFastPath,
  routeFacet: (l) => fastPathKind(l) || '',
  // On a fast-path listener, every route says what the filter does there: under the module, its
  // check (or "skip") in per-route config; under the script, fast-path routes name their check in
  // metadata (routeFields) and the others switch the script off.
  perRouteConfig: (l, r) => {
    const kind = fastPathKind(l);
    if (!kind) return undefined;
    const fast = r.jwt?.fast;
    if (kind === 'module') {
      return typed('envoy.extensions.filters.http.dynamic_modules.v3.DynamicModuleFilterPerRoute', {
        dynamic_module_config: moduleRef,
        per_route_config_name: JWT_MODULE.filter,
        filter_config: stringValue(fast ? routeCheckSpec(fast) : 'skip'),
      });
    }
    return fast ? undefined : typed('envoy.extensions.filters.http.lua.v3.LuaPerRoute', { disabled: true });
  },
  routeFields: (l, r, out) => {
    const fast = r.jwt?.fast;
    if (fastPathKind(l) !== 'script' || !fast) return;
    const metadata = out.metadata ?? {};
    // (A google.protobuf.Struct in protobufjs's field naming.)
    out.metadata = {
      ...metadata,
      filter_metadata: {
        ...(metadata.filter_metadata ?? {}),
        [JWT_CHECK_FILTER]: { fields: { [FAST_PATH_ROUTE_KEY]: { stringValue: routeCheckSpec(fast) } } },
      },
    };
  },
  hcmEntry: (l: IRHttpListener) => {
    const kind = fastPathKind(l);
    if (!kind) return undefined;
    if (kind === 'module') {
      return {
        name: JWT_CHECK_FILTER,
        typed_config: typed('envoy.extensions.filters.http.dynamic_modules.v3.DynamicModuleFilter', {
          dynamic_module_config: moduleRef,
          filter_name: JWT_MODULE.filter,
          filter_config: stringValue(JWT_MODULE_CONFIG),
        }),
      };
    }
    // One script for every policy: each route's metadata says which check it runs, so routes and
    // keys can change (RDS) without touching the listener.
    return {
      name: JWT_CHECK_FILTER,
      typed_config: typed('envoy.extensions.filters.http.lua.v3.Lua', { default_source_code: { inline_string: JWT_CHECK_SCRIPT } }),
    };
  },
};
