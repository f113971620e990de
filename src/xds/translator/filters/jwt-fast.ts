// The JWT fast path: Envoy decides a valid token itself, and only the rest go to ext_authz.
//
//   jwt_authn  - Envoy's own filter checks the token's signature with the keys Signalbox hands it
//                (pinned to the policy's algorithms). It never refuses anything itself
//                (`allow_missing_or_failed`); on success it leaves the token's header and payload
//                in dynamic metadata.
//   jwt check  - a fixed Lua script re-checks everything else the policy says, exactly as the
//                ext_authz service would: one token, in the one place the policy names, of the
//                allowed size and shape; exp/nbf/iat with the clock skew; iss; aud; `require`
//                rules. Only when every check passes does it set the forwarded-claim headers
//                (removing client copies) and mark the request `signalbox.jwt/verdict = pass:<policy>`.
//   ext_authz  - skips requests marked `pass` (filter_enabled_metadata); everything else (no
//                token, a bad token, an unknown kid, anything the script is unsure of) is decided
//                by the service, with its status codes, challenges and key refetching.
//
// The script's logic is a constant. Each policy gets its own copy whose first line binds `C` to the
// policy's parameters, written as a Lua table literal by `luaLiteral` (every string byte-escaped, so
// a policy value can never become code). The table is built once when Envoy loads the script, not
// per request; each fast-path route names its policy's script (LuaPerRoute.name).
// Whenever the script cannot be sure the service would allow the request with the same headers,
// it does nothing, and the service decides: the fast path can only ever agree with ext_authz.
import type { IRJwtFastCheck } from '../../../ir/jwt.js';
import type { IRHttpListener, IRRoute } from '../../../ir/types.js';
import { typed } from '../util.js';
import type { HttpFilterModule } from './index.js';

export const JWT_AUTHN_FILTER = 'envoy.filters.http.jwt_authn';
export const JWT_CHECK_FILTER = 'signalbox.jwt_check';
/**
 * The dynamic metadata the check script writes for a passed request: `verdict` is `pass:<policy>`
 * (the ext_authz filter skips on the prefix; access logs carry the policy to Signalbox's metrics).
 */
export const FAST_PATH_METADATA = { namespace: 'signalbox.jwt', key: 'verdict', pass: 'pass:' } as const;


export const JWT_CHECK_SCRIPT = `-- Signalbox JWT fast path check (see src/xds/translator/filters/jwt-fast.ts); C: the policy.
local NS_JWT = "envoy.filters.http.jwt_authn"
local NS_OUT = "${FAST_PATH_METADATA.namespace}"
local MAX_FORWARD = 8192
local UNKNOWN = {}

local function is_array(t)
  if type(t) ~= "table" then return false end
  local n = #t
  if n == 0 then return false end
  local count = 0
  for _ in pairs(t) do count = count + 1 end
  return count == n
end

local function finite(x)
  return type(x) == "number" and x == x and x ~= math.huge and x ~= -math.huge
end

local function scalar(x)
  local t = type(x)
  return t == "string" or t == "number" or t == "boolean"
end

local function split_dots(name)
  local parts, start = {}, 1
  while true do
    local i = string.find(name, ".", start, true)
    if not i then
      parts[#parts + 1] = string.sub(name, start)
      return parts
    end
    parts[#parts + 1] = string.sub(name, start, i - 1)
    start = i + 1
  end
end

local function claim_value(payload, name)
  local v = payload[name]
  if v ~= nil then return v end
  if not string.find(name, ".", 1, true) then return nil end
  v = payload
  for _, part in ipairs(split_dots(name)) do
    if type(v) ~= "table" or is_array(v) then return nil end
    v = v[part]
    if v == nil then return nil end
  end
  return v
end

local function rule_holds(rule, value)
  if value == nil then return false end
  local op, want = rule.op, rule.value
  if op == "contains" then
    if type(value) == "table" then
      if not is_array(value) then return false end
      for _, x in ipairs(value) do if x == want then return true end end
      return false
    end
    if type(value) == "string" then
      for w in string.gmatch(value, "%S+") do if w == want then return true end end
    end
    return false
  elseif op == "in" then
    local function is_in(x)
      if not scalar(x) then return false end
      for _, y in ipairs(want) do if x == y then return true end end
      return false
    end
    if type(value) == "table" then
      if not is_array(value) then return false end
      for _, x in ipairs(value) do if is_in(x) then return true end end
      return false
    end
    return is_in(value)
  elseif op == "equals" then
    return value == want
  end
  return false
end

-- A scalar as the service would write it; UNKNOWN when this script cannot be sure.
local function scalar_text(x)
  local t = type(x)
  if t == "string" then return x end
  if t == "boolean" then return x and "true" or "false" end
  if t == "number" then
    if finite(x) and x == math.floor(x) and math.abs(x) < 1e15 then return string.format("%d", x) end
    return UNKNOWN
  end
  return UNKNOWN
end

-- A claim as a header value: text, false (not forwarded) or UNKNOWN.
local function header_value(v)
  if v == nil then return false end
  local text
  if type(v) == "table" then
    if not is_array(v) then return UNKNOWN end
    local parts = {}
    for i, x in ipairs(v) do
      local s = scalar_text(x)
      if s == UNKNOWN then return UNKNOWN end
      parts[i] = s
    end
    text = table.concat(parts, ",")
  else
    text = scalar_text(v)
    if text == UNKNOWN then return UNKNOWN end
  end
  if text == "" or string.find(text, "%c") then return false end
  if #text > MAX_FORWARD then return UNKNOWN end
  return text
end

-- Leading and trailing whitespace off (%s: space, \\t, \\n, \\v, \\f, \\r), looking only at the ends.
local function trim(s)
  local i, j = 1, #s
  local b = string.byte(s, i)
  while b == 32 or (b ~= nil and b >= 9 and b <= 13) do
    i = i + 1
    b = string.byte(s, i)
  end
  b = string.byte(s, j)
  while j >= i and (b == 32 or (b >= 9 and b <= 13)) do
    j = j - 1
    b = string.byte(s, j)
  end
  if i == 1 and j == #s then return s end
  return string.sub(s, i, j)
end

local function listed(list, x)
  for _, y in ipairs(list) do if y == x then return true end end
  return false
end

local B64URL = {}
do
  local alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
  for i = 1, 64 do B64URL[string.byte(alphabet, i)] = i - 1 end
end

-- base64url (no padding) to bytes; nil when not base64url.
local function b64url_decode(s)
  local out, acc, bits = {}, 0, 0
  for i = 1, #s do
    local v = B64URL[string.byte(s, i)]
    if v == nil then return nil end
    acc = acc * 64 + v
    bits = bits + 6
    if bits >= 8 then
      bits = bits - 8
      local p = 2 ^ bits
      local byte = math.floor(acc / p)
      out[#out + 1] = string.char(byte)
      acc = acc - byte * p
    end
  end
  return table.concat(out)
end

-- The token's protected header, read as text (no JSON parser, so it only ever steps aside): the
-- algorithm needs no check (every key Envoy has is pinned to an allowed one), but the service
-- (jose) refuses \`crit\` and \`b64\` headers, and a kid-less key verifies only kid-less tokens there.
-- Any escape sequence could spell those names another way: such headers step aside too.
local function header_ok(token, c)
  local dot = string.find(token, ".", 1, true)
  local hdr = dot and b64url_decode(string.sub(token, 1, dot - 1))
  if hdr == nil or string.find(hdr, "\\\\", 1, true) then return false end
  if string.find(hdr, "crit", 1, true) or string.find(hdr, "b64", 1, true) then return false end
  if c.kidless and string.find(hdr, '"kid"', 1, true) then return false end
  return true
end

local PREFIX = C.prefix or ""

-- The token in the policy's header (its only value, \`raw\`), exactly as the service would find
-- it; nil when unsure.
local function token_of(raw, c)
  if string.find(raw, ",", 1, true) then return nil end
  if #raw > c.maxBytes + #PREFIX + 16 then return nil end
  local v = trim(raw)
  if #PREFIX > 0 then
    if string.lower(string.sub(v, 1, #PREFIX)) ~= string.lower(PREFIX) then return nil end
    v = trim(string.sub(v, #PREFIX + 1))
  end
  if v == "" or #v > c.maxBytes then return nil end
  return v
end

-- What this policy concludes from a token jwt_authn verified on this request: its time claims and
-- the headers to set; nil when the service might not allow it.
local function evaluate(handle, c)
  local verified = handle:streamInfo():dynamicMetadata():get(NS_JWT)
  if type(verified) ~= "table" then return nil end
  local payload = verified[c.policy]
  if type(payload) ~= "table" then return nil end
  local exp, nbf, iat = payload.exp, payload.nbf, payload.iat
  if not finite(exp) then return nil end
  if nbf ~= nil and not finite(nbf) then return nil end
  if iat ~= nil and not finite(iat) then return nil end
  if payload.iss ~= c.issuer then return nil end
  if #c.audiences > 0 then
    local aud = payload.aud
    local list = type(aud) == "string" and { aud } or (is_array(aud) and aud or {})
    local ok = false
    for _, a in ipairs(list) do
      if type(a) == "string" and listed(c.audiences, a) then ok = true break end
    end
    if not ok then return nil end
  end
  for _, rule in ipairs(c.require) do
    if not rule_holds(rule, claim_value(payload, rule.claim)) then return nil end
  end
  local set = {}
  for i, f in ipairs(c.forward) do
    local value = header_value(claim_value(payload, f.claim))
    if value == UNKNOWN then return nil end
    set[i] = { f.header, value }
  end
  return { exp = exp, nbf = nbf, iat = iat, set = set }
end

-- Tokens this script already evaluated, by token. The script's state lives as long as this
-- configuration: new keys or new policy settings reach Envoy as a new listener, with a new state,
-- so a remembered token was verified with the keys in force. Bounded by count and bytes.
local VERDICT = "${FAST_PATH_METADATA.pass}" .. C.policy
local CACHE, CACHE_N, CACHE_BYTES = {}, 0, 0
local CACHE_MAX_N, CACHE_MAX_BYTES = 10000, 8388608

local function remember(token, e)
  if CACHE_N >= CACHE_MAX_N or CACHE_BYTES + #token > CACHE_MAX_BYTES then
    CACHE, CACHE_N, CACHE_BYTES = {}, 0, 0
  end
  CACHE[token] = e
  CACHE_N = CACHE_N + 1
  CACHE_BYTES = CACHE_BYTES + #token
end

function envoy_on_request(handle)
  local c = C
  local headers = handle:headers()
  if headers:getNumValues(c.header) ~= 1 then return end
  local raw = headers:get(c.header)
  if raw == nil then return end
  -- The usual shape, exactly "<prefix><token>", is looked up as is: a remembered token passed the
  -- careful path below, which would give that same token for this header.
  local token = string.sub(raw, 1, #PREFIX) == PREFIX and string.sub(raw, #PREFIX + 1) or nil
  local e = token and CACHE[token]
  if e == nil then
    token = token_of(raw, c)
    if token == nil then return end
    e = CACHE[token]
  end
  if e == nil then
    if not string.find(token, "^[%w_%-]+%.[%w_%-]+%.[%w_%-]+$") or not header_ok(token, c) then return end
    e = evaluate(handle, c)
    if e == nil then return end
    remember(token, e)
  end
  local now = os.time()
  if e.exp <= now + 1 - c.skewSeconds then return end
  if e.nbf ~= nil and e.nbf > now + c.skewSeconds then return end
  if e.iat ~= nil and e.iat > now + c.skewSeconds then return end
  for _, h in ipairs(e.set) do
    if h[2] == false then headers:remove(h[1]) else headers:replace(h[1], h[2]) end
  end
  handle:streamInfo():dynamicMetadata():set(NS_OUT, "${FAST_PATH_METADATA.key}", VERDICT)
end
`;

export const jwtAuthn: HttpFilterModule = {
  envoyName: JWT_AUTHN_FILTER,
  wanted: (l: IRHttpListener) => (l.jwtProviders?.length ?? 0) > 0,
  hcmEntry: (l: IRHttpListener) => {
    if (!l.jwtProviders?.length) return undefined;
    const providers: Record<string, unknown> = {};
    const requirements: Record<string, unknown> = {};
    for (const p of l.jwtProviders) {
      providers[p.policy] = {
        local_jwks: { inline_string: p.jwks },
        from_headers: [{ name: p.header, ...(p.prefix ? { value_prefix: p.prefix } : {}) }],
        forward: true,
        payload_in_metadata: p.policy,
        clock_skew_seconds: p.clockSkewSeconds,
        jwt_cache_config: { jwt_cache_size: 1000 },
      };
      // Never refuse here: a token this filter cannot verify is the ext_authz service's to judge.
      requirements[p.policy] = { requires_any: { requirements: [{ provider_name: p.policy }, { allow_missing_or_failed: {} }] } };
    }
    return {
      name: JWT_AUTHN_FILTER,
      typed_config: typed('envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication', { providers, requirement_map: requirements }),
    };
  },
};

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

/** The check script of one policy. */
export function checkScript(check: IRJwtFastCheck): string {
  return `local C = ${luaLiteral(check)}\n${JWT_CHECK_SCRIPT}`;
}

export const jwtCheck: HttpFilterModule = {
  envoyName: JWT_CHECK_FILTER,
  wanted: (l: IRHttpListener) => (l.jwtProviders?.length ?? 0) > 0,
  hcmEntry: (l: IRHttpListener) => {
    if (!l.jwtProviders?.length) return undefined;
    // One script per policy with a fast-path route on this listener, by policy name.
    const checks = new Map<string, IRJwtFastCheck>();
    for (const v of l.routeConfig.virtualHosts) for (const r of v.routes) if (r.jwt?.fast) checks.set(r.jwt.fast.policy, r.jwt.fast);
    const sourceCodes = Object.fromEntries([...checks.keys()].sort().map((p) => [p, { inline_string: checkScript(checks.get(p)!) }]));
    return { name: JWT_CHECK_FILTER, typed_config: typed('envoy.extensions.filters.http.lua.v3.Lua', { source_codes: sourceCodes }) };
  },
};

/** Route-level settings on a fast-path listener: the policy to verify, and its check script. */
export function patchRouteForJwtFastPath(l: IRHttpListener, r: IRRoute, out: Record<string, unknown>): void {
  if (!l.jwtProviders?.length) return;
  const fast = r.jwt?.fast;
  const perFilter = (out.typed_per_filter_config as Record<string, unknown> | undefined) ?? {};
  out.typed_per_filter_config = fast
    ? {
        ...perFilter,
        [JWT_AUTHN_FILTER]: typed('envoy.extensions.filters.http.jwt_authn.v3.PerRouteConfig', { requirement_name: fast.policy }),
        [JWT_CHECK_FILTER]: typed('envoy.extensions.filters.http.lua.v3.LuaPerRoute', { name: fast.policy }),
      }
    : {
        ...perFilter,
        [JWT_AUTHN_FILTER]: typed('envoy.extensions.filters.http.jwt_authn.v3.PerRouteConfig', { disabled: true }),
        [JWT_CHECK_FILTER]: typed('envoy.extensions.filters.http.lua.v3.LuaPerRoute', { disabled: true }),
      };
}
