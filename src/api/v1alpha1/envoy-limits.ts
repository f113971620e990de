// What Envoy refuses in values that Signalbox passes through unchanged (header values, paths,
// durations, regular expressions). Checked with the schema, so that `signalbox validate` and every
// reload report them with file, field and line, instead of each proxy NACKing the configuration.
// Each limit was measured against Envoy 1.36 (`envoy --mode validate`); `signalbox validate
// --envoy` (src/preflight/envoy.ts) asks Envoy itself about everything else.
import { createRequire } from 'node:module';
import type * as Re2js from 're2js';

/**
 * Longest duration Envoy accepts: it converts durations to 64-bit nanoseconds, so 9223372036s
 * (about 292 years) and more are refused ("Duration out-of-range"), for every duration field.
 */
export const MAX_DURATION_MS = 9_223_372_035_999;
export const MAX_DURATION_MESSAGE = 'must be shorter than 9223372036s (about 292 years): Envoy refuses longer durations';

/** Envoy's HeaderValue: key and value at most 16 KiB, and no NUL, CR or LF (HTTP_HEADER_VALUE). */
export const MAX_HEADER_BYTES = 16_384;
const FORBIDDEN_IN_HEADER = /[\0\r\n]/;

/**
 * A header value Envoy adds is a substitution format: `%COMMAND%` or `%COMMAND(arg)%` (optionally
 * `:LENGTH`) insert request data and `%%` is a literal `%`; anything else after a `%` is refused
 * ("Couldn't find valid command"). Unknown command names are left to Envoy (`validate --envoy`).
 */
const FORMAT_STRING = /^(?:[^%]|%%|%[A-Z][A-Z0-9_]*(?:\([^)]*\))?(?::\d+)?%)*$/;

/** Problems of a header value Envoy will add to a request or response (empty: none). */
export function headerValueProblems(value: string): string[] {
  const out: string[] = [];
  if (FORBIDDEN_IN_HEADER.test(value)) out.push(`must not contain ${forbiddenNames(value)}: Envoy refuses such header values`);
  if (Buffer.byteLength(value) > MAX_HEADER_BYTES) out.push(`must be at most ${MAX_HEADER_BYTES} bytes`);
  if (!FORMAT_STRING.test(value))
    out.push('a "%" starts an Envoy format command such as %DOWNSTREAM_REMOTE_ADDRESS% or %REQ(x-id)%; write "%%" for a literal "%"');
  return out;
}

/** Problems of a header value a match compares with: one Envoy could never see can never match. */
export function matchedHeaderValueProblems(value: string): string[] {
  return FORBIDDEN_IN_HEADER.test(value) ? [`must not contain ${forbiddenNames(value)}: no request carries it, so the match could never be true`] : [];
}

/**
 * Envoy refuses to modify or remove pseudo-headers and Host ("':-prefixed or host headers may not
 * be modified"); the Host is changed with URLRewrite's hostname instead.
 */
export function modifiableHeaderProblems(name: string): string[] {
  if (name.startsWith(':')) return ['pseudo-headers (":...") cannot be set, added or removed: Envoy refuses it'];
  if (name.toLowerCase() === 'host') return ['Host cannot be set, added or removed here (Envoy refuses it): use a URLRewrite filter with hostname'];
  return [];
}

/**
 * Problems of an Exact or PathPrefix path (match, access policy). NUL, CR and LF never reach a
 * route; `?` and `#` are not part of a path (Envoy compares the path without its query string, and
 * refuses them in the segment-wise prefix Signalbox uses: `^[^?#]+[^?#/]$`).
 */
export function pathValueProblems(value: string): string[] {
  const bad = value.match(/[\0\r\n?#]/g);
  if (!bad) return [];
  return [`must not contain ${[...new Set(bad)].map(charName).join(', ')}: a path match compares the path alone, and Envoy refuses these in a path prefix`];
}

/** Problems of a path Envoy writes (rewrite, redirect, health check): Envoy refuses NUL, CR and LF. */
export function writtenPathProblems(value: string): string[] {
  return FORBIDDEN_IN_HEADER.test(value) ? [`must not contain ${forbiddenNames(value)}: Envoy refuses it`] : [];
}

function charName(c: string): string {
  return c === '\0' ? 'NUL' : c === '\r' ? 'CR' : c === '\n' ? 'LF' : `"${c}"`;
}

function forbiddenNames(value: string): string {
  return [...new Set(value.match(/[\0\r\n]/g) ?? [])].map(charName).join(', ');
}

/** Envoy's default limit on the size of a compiled RE2 program (the runtime key re2.max_program_size.error_level). */
export const RE2_MAX_PROGRAM_SIZE = 100;

/*
 * No npm library reports the program size of Google's C++ RE2, which Envoy uses: the WebAssembly
 * builds (re2-wasm, @adguard/re2-wasm) do not expose it, nor does the native `re2` binding (whose
 * current releases also need Node 22). re2js (a port of RE2/J) compiles the same syntax to a
 * program of its own. On 500 random expressions measured against Envoy 1.36, Envoy's count was at
 * least 0.86 times re2js's, except that C++ RE2 matches a literal prefix after `^` outside the
 * program; it is far larger wherever UTF-8 matters (`.` is 12 instructions, `\p{L}+` 1201, where re2js counts 3 and 4). So
 * 0.75 times re2js's count, less the pattern's length when it has a `^`, is a safe lower bound: this
 * check only catches expressions that are certainly too large; `validate --envoy` has Envoy's count.
 */
const require = createRequire(import.meta.url);
let re2js: typeof Re2js | undefined;

/** re2js, loaded on first use: it adds ~50 ms to start-up. */
function loadRe2js(): typeof Re2js {
  re2js ??= require('re2js') as typeof Re2js;
  return re2js;
}

/** A number of instructions Envoy's RE2 program for `pattern` is certain to exceed or match; undefined when re2js cannot compile it. */
export function re2ProgramSizeAtLeast(pattern: string): number | undefined {
  let size: number;
  try {
    size = loadRe2js().RE2JS.compile(pattern).programSize();
  } catch {
    return undefined; // a syntax RE2/J does not share with C++ RE2: nothing is claimed
  }
  // An anchored literal prefix is at most as long as the pattern itself.
  const prefixAllowance = pattern.includes('^') ? [...pattern].length : 0;
  return Math.max(0, Math.floor((size - prefixAllowance) * 0.75));
}

/** The problem of a regular expression Envoy would refuse as too large, if it certainly would. */
export function regexSizeProblems(pattern: string): string[] {
  const atLeast = re2ProgramSizeAtLeast(pattern);
  if (atLeast === undefined || atLeast <= RE2_MAX_PROGRAM_SIZE) return [];
  return [
    `too large for Envoy: its RE2 program has at least ${atLeast} instructions and Envoy refuses more than ${RE2_MAX_PROGRAM_SIZE} (use smaller repeat counts such as {1,20}, or fewer alternatives)`,
  ];
}

/*
 * Envoy compiles every regular expression with RE2, whose syntax is not JavaScript's: RE2 has no
 * back-references, lookaround, atomic groups or possessive repeats, and writes `\x{00e9}` where
 * JavaScript writes `\u00e9`; but it has `(?i)`, `\p{L}`, `\z` and `[[:alpha:]]`. re2js parses
 * RE2's syntax, so a pattern it refuses Envoy refuses too ("invalid regex"); the one exception
 * known is `\C` (any byte), which only C++ RE2 has, so it is left to `validate --envoy`.
 */
const SYNTAX_PREFIX = 'not a valid RE2 regular expression (Envoy uses RE2)';

/** The problem of a regular expression RE2 (so Envoy) cannot parse, with a hint where JavaScript habits are the cause. */
export function regexSyntaxProblems(pattern: string): string[] {
  const { RE2JS } = loadRe2js();
  try {
    RE2JS.compile(pattern);
    return [];
  } catch (e) {
    const raw = (e instanceof Error ? e.message : String(e)).replace(/^error parsing regexp: /, '');
    if (raw === 'invalid escape sequence: `\\C`') return [];
    const escaped = /^invalid escape sequence: `(\\.)`$/.exec(raw)?.[1];
    const lookbehind = /^invalid named capture: `(\(\?<[=!])/.exec(raw)?.[1]; // re2js's words for a lookbehind
    const reason = escaped ? `invalid escape sequence ${escaped}` : lookbehind ? `invalid or unsupported Perl syntax: \`${lookbehind}\`` : raw;
    const hint = re2Hint(pattern, raw, escaped);
    return [`${SYNTAX_PREFIX}: ${reason}${hint ? `; ${hint}` : ''}`];
  }
}

function re2Hint(pattern: string, raw: string, escaped: string | undefined): string | undefined {
  switch (escaped?.[1]) {
    case 'u': {
      const code = /\\u(?:\{([0-9A-Fa-f]+)\}|([0-9A-Fa-f]{4}))/.exec(pattern);
      return `write \\x{${code ? (code[1] ?? code[2]) : '00e9'}}`;
    }
    case 'Z':
      return 'write \\z (end of text) or $';
    case 'c':
      return 'write a control character as \\x{01}';
    case 'k':
    case '1':
    case '2':
    case '3':
    case '4':
    case '5':
    case '6':
    case '7':
    case '8':
    case '9':
      return 'lookaround and back-references are not supported by RE2';
  }
  if (/`\(\?(=|!|<=|<!)/.test(raw)) return 'lookaround and back-references are not supported by RE2';
  if (/`\(\?>/.test(raw) || /invalid nested repetition operator: `[*+?}]\+`/.test(raw)) {
    return 'atomic groups and possessive repeats (++, *+, ?+) are not supported by RE2';
  }
  if (raw.startsWith('invalid repeat count')) return 'RE2 allows at most 1000 repetitions, counting nested repeats together';
  return undefined;
}
