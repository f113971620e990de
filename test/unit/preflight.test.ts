// The cheap checks of what Envoy would refuse (src/api/v1alpha1/envoy-limits.ts): plain
// `signalbox validate` reports them with file, document, field and line, and values Envoy accepts
// still pass. Also the parts of the Envoy preflight that need no Envoy: reading Envoy's reasons.
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { MAX_DURATION_MS, RE2_MAX_PROGRAM_SIZE, re2ProgramSizeAtLeast } from '../../src/api/v1alpha1/envoy-limits.js';
import { ErrorCode, formatPolicyError, type PolicyError } from '../../src/errors.js';
import { envoyReason } from '../../src/preflight/envoy.js';
import { parsePolicyText } from '../../src/sources/files/loader.js';
import { doc, docs } from './policy-dir.js';

const formatted = (errors: PolicyError[]) => errors.map(formatPolicyError);

/** A file whose third document is an HTTPRoute with `rule` (YAML, indented as a list item's body) as its only rule. */
function routeFile(rule: string): string {
  return docs(
    doc('Service', 'orders', '{ port: 8080, endpoints: [ { address: 127.0.0.1, port: 9001 } ] }'),
    doc('Gateway', 'public', '{ listeners: [ { name: http, port: 8080, protocol: HTTP } ] }'),
    doc('HTTPRoute', 'orders', `  parentRefs: [ { kind: Gateway, name: public } ]\n  rules:\n    - ${rule.trim().replace(/\n/g, '\n      ')}`),
  );
}

/** Errors of one file, as `signalbox validate` prints them. */
function errorsOf(text: string): string[] {
  return formatted(parsePolicyText(text, 'p.yaml').errors);
}

describe('what the tester found Envoy refusing is caught without Envoy', () => {
  test('a path regex whose RE2 program is too large ([a-z]{300}: 304 instructions in Envoy, limit 100)', () => {
    const errors = parsePolicyText(
      routeFile(`matches: [ { path: { type: RegularExpression, value: "[a-z]{300}" } } ]\nbackendRefs: [ { name: orders } ]`),
      'p.yaml',
    ).errors;
    assert.equal(errors.length, 1, formatted(errors).join('\n'));
    const e = errors[0]!;
    assert.deepEqual([e.code, e.file, e.doc, e.path, e.line], [ErrorCode.SCHEMA, 'p.yaml', 3, 'spec.rules[0].matches[0].path.value', 17]);
    assert.match(e.message, /too large for Envoy: its RE2 program has at least (\d+) instructions and Envoy refuses more than 100/);
  });

  test('CR and LF (and NUL) in a header value a filter sets or adds', () => {
    const text = routeFile(`backendRefs: [ { name: orders } ]
filters:
  - type: RequestHeaderModifier
    requestHeaderModifier: { set: [ { name: x-a, value: "a\\r\\nb" } ], add: [ { name: x-b, value: "c\\0d" } ] }
  - type: ResponseHeaderModifier
    responseHeaderModifier: { set: [ { name: x-c, value: "e\\nf" } ] }`);
    assert.deepEqual(errorsOf(text), [
      'p.yaml#3 spec.rules[0].filters[0].requestHeaderModifier.set[0].value: must not contain CR, LF: Envoy refuses such header values (line 20)',
      'p.yaml#3 spec.rules[0].filters[0].requestHeaderModifier.add[0].value: must not contain NUL: Envoy refuses such header values (line 20)',
      'p.yaml#3 spec.rules[0].filters[1].responseHeaderModifier.set[0].value: must not contain LF: Envoy refuses such header values (line 22)',
    ]);
  });

  test('NUL in a path prefix (and in a rewritten prefix, and in an exact path)', () => {
    const text = routeFile(`matches:
  - path: { type: PathPrefix, value: "/nu\\0l" }
backendRefs: [ { name: orders } ]
filters: [ { type: URLRewrite, urlRewrite: { path: { replacePrefixMatch: "/v1\\0" } } } ]`);
    assert.deepEqual(errorsOf(text), [
      'p.yaml#3 spec.rules[0].matches[0].path.value: must not contain NUL: a path match compares the path alone, and Envoy refuses these in a path prefix (line 18)',
      'p.yaml#3 spec.rules[0].filters[0].urlRewrite.path.replacePrefixMatch: must not contain NUL: Envoy refuses it (line 20)',
    ]);
    assert.deepEqual(errorsOf(routeFile(`matches: [ { path: { type: Exact, value: "/a\\0" } } ]\nbackendRefs: [ { name: orders } ]`)), [
      'p.yaml#3 spec.rules[0].matches[0].path.value: must not contain NUL: a path match compares the path alone, and Envoy refuses these in a path prefix (line 17)',
    ]);
  });

  test('a 99999999999999999999h timeout', () => {
    const text = routeFile(`backendRefs: [ { name: orders } ]\ntimeout: 99999999999999999999h`);
    assert.deepEqual(errorsOf(text), [
      'p.yaml#3 spec.rules[0].timeout: must be shorter than 9223372036s (about 292 years): Envoy refuses longer durations (line 18)',
    ]);
  });
});

describe('durations', () => {
  test("the bound is Envoy's: 9223372035s passes, 9223372036s does not (Envoy 1.36, every duration field)", () => {
    assert.deepEqual(errorsOf(routeFile(`backendRefs: [ { name: orders } ]\ntimeout: 9223372035s`)), []);
    assert.equal(errorsOf(routeFile(`backendRefs: [ { name: orders } ]\ntimeout: 9223372036s`)).length, 1);
    assert.ok(MAX_DURATION_MS < 9_223_372_036_000);
  });

  test('in TrafficPolicy, Mesh defaults, retries, fault delays and rate limit windows too', () => {
    const huge = '3000000h';
    const text = docs(
      doc('TrafficPolicy', 't', `  targetRef: { kind: Service, name: orders }\n  connectTimeout: ${huge}\n  outlierDetection: { interval: ${huge} }`),
      doc('Mesh', 'default', `  defaults: { timeout: ${huge}, retries: { attempts: 1, perTryTimeout: ${huge} } }`),
      doc('RateLimitPolicy', 'r', `  targetRef: { kind: Gateway, name: public }\n  local: { requests: 10, per: ${huge} }`),
      doc('JWTPolicy', 'j', `  targetRef: { kind: Gateway, name: public }\n  issuer: me\n  jwks: { uri: "https://example.com/jwks", cooldown: ${huge} }`),
    );
    assert.deepEqual(
      parsePolicyText(text, 'p.yaml').errors.map((e) => `#${e.doc} ${e.path}`),
      [
        '#1 spec.connectTimeout',
        '#1 spec.outlierDetection.interval',
        '#2 spec.defaults.timeout',
        '#2 spec.defaults.retries.perTryTimeout',
        '#3 spec.local.per',
        '#4 spec.jwks.cooldown',
      ],
    );
  });
});

describe('header modifiers', () => {
  const modifier = (body: string) =>
    routeFile(`backendRefs: [ { name: orders } ]\nfilters:\n  - { type: RequestHeaderModifier, requestHeaderModifier: ${body} }`);

  test('pseudo-headers and Host cannot be set, added or removed (Envoy: ":-prefixed or host headers may not be modified")', () => {
    assert.deepEqual(
      parsePolicyText(
        modifier('{ set: [ { name: ":path", value: /x } ], add: [ { name: Host, value: a } ], remove: [ ":authority", host ] }'),
        'p.yaml',
      ).errors.map((e) => e.path),
      [
        'spec.rules[0].filters[0].requestHeaderModifier.set[0].name',
        'spec.rules[0].filters[0].requestHeaderModifier.add[0].name',
        'spec.rules[0].filters[0].requestHeaderModifier.remove[0]',
        'spec.rules[0].filters[0].requestHeaderModifier.remove[1]',
      ],
    );
  });

  test('a "%" that starts no Envoy format command is refused; %% and well-formed commands pass', () => {
    assert.deepEqual(errorsOf(modifier('{ set: [ { name: x-a, value: "50%" } ] }')), [
      'p.yaml#3 spec.rules[0].filters[0].requestHeaderModifier.set[0].value: a "%" starts an Envoy format command such as %DOWNSTREAM_REMOTE_ADDRESS% or %REQ(x-id)%; write "%%" for a literal "%" (line 19)',
    ]);
    for (const value of ['50%%', '%DOWNSTREAM_REMOTE_ADDRESS%', '%REQ(x-id)%', '%REQ(x-id):10% and %%', 'plain, with "quotes" and \\t tabs']) {
      assert.deepEqual(errorsOf(modifier(`{ set: [ { name: x-a, value: ${JSON.stringify(value)} } ] }`)), [], value);
    }
  });

  test("a header value over 16 KiB (Envoy's HeaderValue limit)", () => {
    assert.equal(errorsOf(modifier(`{ set: [ { name: x-a, value: "${'a'.repeat(16_385)}" } ] }`)).length, 1);
    assert.deepEqual(errorsOf(modifier(`{ set: [ { name: x-a, value: "${'a'.repeat(16_384)}" } ] }`)), []);
  });
});

describe('paths', () => {
  test('"?" and "#" in an Exact or PathPrefix path (Envoy refuses them in the segment-wise prefix)', () => {
    const text = routeFile(
      `matches:\n  - path: { type: PathPrefix, value: "/search?q" }\n  - path: { type: Exact, value: "/a#b" }\nbackendRefs: [ { name: orders } ]`,
    );
    assert.deepEqual(
      parsePolicyText(text, 'p.yaml').errors.map((e) => [e.path, e.message]),
      [
        ['spec.rules[0].matches[0].path.value', 'must not contain "?": a path match compares the path alone, and Envoy refuses these in a path prefix'],
        ['spec.rules[0].matches[1].path.value', 'must not contain "#": a path match compares the path alone, and Envoy refuses these in a path prefix'],
      ],
    );
  });

  test('an AccessPolicy path and a health check path are checked too', () => {
    const text = docs(
      doc(
        'AccessPolicy',
        'a',
        `  targetRef: { kind: Service, name: orders }\n  rules: [ { from: [ { service: web } ], action: Allow, to: [ { paths: [ { type: PathPrefix, value: "/a\\nb" }, { type: RegularExpression, value: "[0-9]{400}" } ] } ] } ]`,
      ),
      doc('TrafficPolicy', 't', `  targetRef: { kind: Service, name: orders }\n  healthCheck: { path: "/health\\r" }`),
    );
    assert.deepEqual(
      parsePolicyText(text, 'p.yaml').errors.map((e) => `#${e.doc} ${e.path}`),
      ['#1 spec.rules[0].to[0].paths[0].value', '#1 spec.rules[0].to[0].paths[1].value', '#2 spec.healthCheck.path'],
    );
  });
});

describe('regular expressions are checked with RE2 syntax, as Envoy compiles them', () => {
  const pathRegex = (value: string) =>
    routeFile(`matches: [ { path: { type: RegularExpression, value: ${JSON.stringify(value)} } } ]\nbackendRefs: [ { name: orders } ]`);

  for (const [pattern, reason] of [
    ['\\u00e9', 'invalid escape sequence \\u; write \\x{00e9}'],
    ['/caf\\u00e9/\\Z', 'invalid escape sequence \\u; write \\x{00e9}'],
    ['/a\\Z', 'invalid escape sequence \\Z; write \\z (end of text) or $'],
    ['(a)\\1', 'invalid escape sequence \\1; lookaround and back-references are not supported by RE2'],
    ['/x(?=x)', 'invalid or unsupported Perl syntax: `(?=`; lookaround and back-references are not supported by RE2'],
    ['(?<!x)/y', 'invalid or unsupported Perl syntax: `(?<!`; lookaround and back-references are not supported by RE2'],
    ['/(?>a)', 'invalid or unsupported Perl syntax: `(?>`; atomic groups and possessive repeats (++, *+, ?+) are not supported by RE2'],
    ['/a++', 'invalid nested repetition operator: `++`; atomic groups and possessive repeats (++, *+, ?+) are not supported by RE2'],
  ] as const) {
    test(`${pattern} in an HTTPRoute path regex is an error naming the field`, () => {
      const errors = parsePolicyText(pathRegex(pattern), 'p.yaml').errors;
      assert.equal(errors.length, 1, formatted(errors).join('\n'));
      const e = errors[0]!;
      assert.deepEqual([e.code, e.file, e.doc, e.path, e.line], [ErrorCode.SCHEMA, 'p.yaml', 3, 'spec.rules[0].matches[0].path.value', 17]);
      assert.equal(e.message, `not a valid RE2 regular expression (Envoy uses RE2): ${reason}`);
    });
  }

  test('in header and query parameter matches and in AccessPolicy paths too', () => {
    const route = routeFile(`matches:
  - headers: [ { name: x-id, type: RegularExpression, value: "[0-9]+\\\\Z" } ]
    queryParams: [ { name: q, type: RegularExpression, value: "(?<=a)b" } ]
backendRefs: [ { name: orders } ]`);
    assert.deepEqual(errorsOf(route), [
      'p.yaml#3 spec.rules[0].matches[0].headers[0].value: not a valid RE2 regular expression (Envoy uses RE2): invalid escape sequence \\Z; write \\z (end of text) or $ (line 18)',
      'p.yaml#3 spec.rules[0].matches[0].queryParams[0].value: not a valid RE2 regular expression (Envoy uses RE2): invalid or unsupported Perl syntax: `(?<=`; lookaround and back-references are not supported by RE2 (line 19)',
    ]);
    const access = doc(
      'AccessPolicy',
      'orders',
      `  targetRef: { kind: Service, name: orders }\n  rules: [ { from: [ { service: web } ], action: Allow, to: [ { paths: [ { type: RegularExpression, value: "/caf\\\\u00e9" } ] } ] } ]`,
    );
    assert.deepEqual(formatted(parsePolicyText(access, 'a.yaml').errors), [
      'a.yaml#1 spec.rules[0].to[0].paths[0].value: not a valid RE2 regular expression (Envoy uses RE2): invalid escape sequence \\u; write \\x{00e9} (line 6)',
    ]);
  });

  test('valid RE2 that JavaScript reads differently or refuses passes', () => {
    for (const pattern of ['^/api/v[0-9]+/', '/caf\\x{00e9}', '/\\p{L}+', '(?i)abc', '/[[:alpha:]]+\\z', '/(?P<id>[0-9]+)']) {
      assert.deepEqual(errorsOf(pathRegex(pattern)), [], pattern);
    }
  });
});

describe('valid values still pass', () => {
  test('ordinary regexes, paths, header values and durations give no error', () => {
    const text = routeFile(`matches:
  - path: { type: RegularExpression, value: "/api/v[0-9]+/orders/[a-z0-9-]{1,40}" }
    headers: [ { name: x-id, type: RegularExpression, value: "^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$" }, { name: x-env, value: "prod" } ]
  - path: { type: PathPrefix, value: "/orders/" }
  - path: { type: Exact, value: "/a b/%41;x=1" }
backendRefs: [ { name: orders } ]
timeout: 2562047h
retries: { attempts: 2, perTryTimeout: 1s, backoff: { baseInterval: 25ms, maxInterval: 1m } }
filters:
  - type: URLRewrite
    urlRewrite: { path: { replaceFullPath: /v1/orders } }
  - type: RequestHeaderModifier
    requestHeaderModifier: { set: [ { name: x-forwarded-for-me, value: "%DOWNSTREAM_REMOTE_ADDRESS%" } ], remove: [ x-debug ] }`);
    assert.deepEqual(errorsOf(text), []);
  });

  test('a header match may still match pseudo-headers such as :authority', () => {
    assert.deepEqual(
      errorsOf(routeFile(`matches: [ { headers: [ { name: ":authority", value: shop.example.com } ] } ]\nbackendRefs: [ { name: orders } ]`)),
      [],
    );
  });
});

describe('RE2 program size estimate', () => {
  // Envoy 1.36's own count (from "RE2 program size of N") for each expression, measured with
  // `envoy --mode validate` and re2.max_program_size.error_level = 1. The estimate must never
  // exceed it (that would refuse what Envoy accepts) and must catch the clear cases.
  const MEASURED: [string, number][] = [
    ['[a-z]{300}', 304],
    ['[a-z]{98}', 102],
    ['/api/.*', 17],
    ['^/orders/[0-9]+$', 6],
    ['(foo|bar)+baz', 16],
    ['.', 12],
    ['\\p{L}+', 1201],
    ['(?:abc){3,5}', 21],
    ['x{0,50}', 104],
    ['/users/[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}', 79],
    ['(?:v1(?i:ab)*){5,11}$', 55],
    ['(bar+bar|x{15}){8,16}(\\s|foo*/)', 405],
    ['^/api/v1/(?i:ab){4}[a-z]{18}$', 30],
  ];

  for (const [pattern, envoy] of MEASURED) {
    test(`${pattern}: at most Envoy's ${envoy}`, () => {
      const atLeast = re2ProgramSizeAtLeast(pattern);
      assert.ok(atLeast !== undefined && atLeast <= envoy, `estimate ${atLeast} > Envoy's ${envoy}`);
    });
  }

  test('expressions far over the limit are certainly refused', () => {
    assert.ok(re2ProgramSizeAtLeast('[a-z]{300}')! > RE2_MAX_PROGRAM_SIZE);
    assert.ok(re2ProgramSizeAtLeast('(bar+bar|x{15}){8,16}(\\s|foo*/)')! > RE2_MAX_PROGRAM_SIZE);
  });

  test('an expression re2js cannot compile gets no estimate (no claim, no error)', () => {
    assert.equal(re2ProgramSizeAtLeast('a)'), undefined);
  });
});

describe("Envoy's reasons", () => {
  test('a proto constraint violation is cut to its rule and where it sits, without the dump of the message', () => {
    const output = `error initializing configuration '/tmp/x.pb': stat_prefix: "x"\nroute_config {\n  name: "secret stuff"\n}\n: Proto constraint validation failed (HttpConnectionManagerValidationError.RouteConfig: embedded message failed validation | caused by RouteValidationError.RequestHeadersToAdd[0]: embedded message failed validation | caused by HeaderValueValidationError.Value: value does not match regex pattern "^[^\\x00\\n\\r]*$")\n`;
    assert.equal(
      envoyReason(output),
      'HeaderValueValidationError.Value: value does not match regex pattern "^[^\\x00\\n\\r]*$" (HttpConnectionManagerValidationError.RouteConfig > RouteValidationError.RequestHeadersToAdd[0] > HeaderValueValidationError.Value)',
    );
  });

  test('other reasons keep their first line; key material is never repeated', () => {
    assert.equal(envoyReason("error initializing configuration '/tmp/x.pb': invalid repetition size: {30}\n"), 'invalid repetition size: {30}');
    const leaked = envoyReason("error initializing configuration '/tmp/x.pb': bad key -----BEGIN PRIVATE KEY----- MIGHAgEAMBMG -----END PRIVATE KEY-----");
    assert.doesNotMatch(leaked, /MIGHAgEAMBMG/);
    assert.match(leaked, /\[redacted\]/);
  });
});
