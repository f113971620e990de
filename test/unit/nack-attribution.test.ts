// Narrowing a NACK down to the one policy file, document and field (src/xds/server/nack-blame.ts):
// in-process (RE2's error names a piece of one regex, a quoted value, proto validation's route
// position), "one of N" only when that cannot tell, and the background Envoy check's bounds (a
// stand-in Envoy script counts its runs). The real-Envoy path is test/integration/nack-attribution.test.ts.
import assert from 'node:assert/strict';
import { chmodSync, readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { after, afterEach, describe, test } from 'node:test';
import { EncodeCache, type Resource } from '../../src/xds/resources/resource.js';
import { TypeUrl } from '../../src/xds/resources/type-urls.js';
import { nackPolicySide } from '../../src/controller/nack-policy-side.js';
import {
  blameNack,
  EnvoyNarrowing,
  envoyNarrowing,
  NARROWING_LIMITS,
  sameReason,
  useNackPolicySide,
  type NackAttribution,
  type NarrowingOutcome,
} from '../../src/xds/server/nack-blame.js';
import { doc, docs, policyDir, removePolicyDirs } from './policy-dir.js';

const route = (name: string, path: unknown, extra: Record<string, unknown> = {}) => ({
  name,
  match: path,
  route: { cluster: 'shop', timeout: { seconds: 15, nanos: 0 } },
  ...extra,
});
const rule = (name: string, match: string) => `    - name: ${name}\n      matches: [ ${match} ]\n      backendRefs: [ { name: shop } ]`;
const httpRoute = (name: string, ...rules: string[]) =>
  doc('HTTPRoute', name, `  parentRefs: [ { kind: Gateway, name: public } ]\n  rules:\n${rules.join('\n')}`);

/** Three files, one route configuration: storefront (doc 3), payments (doc 1), legacy (doc 2 holds `badRegex`). */
function setup(opts: { badRegex?: string; decoy?: string } = {}) {
  const bad = opts.badRegex ?? '/names/\\p{Garay}+';
  const dir = policyDir({
    'storefront.yaml': docs(
      doc('Gateway', 'public', '{ listeners: [ { name: http, port: 8080, protocol: HTTP } ] }'),
      doc('Service', 'shop', '{ port: 8080, endpoints: [ { address: 127.0.0.1, port: 9001 } ] }'),
      httpRoute('storefront', rule('home', "{ path: { type: RegularExpression, value: '/shop/[a-z]+' } }")),
    ),
    'payments.yaml': httpRoute(
      'payments',
      rule('pay', "{ path: { type: PathPrefix, value: /pay }, headers: [ { name: x-tenant, type: RegularExpression, value: '[a-z]{1,8}' } ] }"),
      ...(opts.decoy ? [rule('docs', `{ path: { type: RegularExpression, value: '${opts.decoy}' } }`)] : []),
    ),
    'legacy.yaml': docs(
      httpRoute('old-api', rule('v1', '{ path: { type: PathPrefix, value: /v1 } }')),
      httpRoute('legacy', rule('names', `{ path: { type: RegularExpression, value: '${bad}' } }`)),
    ),
  });
  const file = (f: string) => path.join(dir, f);
  const routes = [
    route('legacy/names/match-0', { safe_regex: { regex: bad } }),
    route('storefront/home/match-0', { safe_regex: { regex: '/shop/[a-z]+' } }),
    route('payments/pay/match-0', { path_separated_prefix: '/pay', headers: [{ name: 'x-tenant', string_match: { safe_regex: { regex: '[a-z]{1,8}' } } }] }),
    ...(opts.decoy ? [route('payments/docs/match-0', { safe_regex: { regex: opts.decoy } })] : []),
    route('old-api/v1/match-0', { path_separated_prefix: '/v1' }),
  ];
  const rc = new EncodeCache().make(
    TypeUrl.Route,
    'public/http',
    { name: 'public/http', virtual_hosts: [{ name: 'any-host', domains: ['*'], routes }] },
    { sources: ['legacy.yaml', 'payments.yaml', 'storefront.yaml'].map(file) },
  );
  const sent = new Map<string, Resource>([[rc.name, rc]]);
  const lineOf = (needle: string, f = 'legacy.yaml') =>
    readFileSync(file(f), 'utf8')
      .split('\n')
      .findIndex((l) => l.includes(needle)) + 1;
  return { dir, file, rc, sent, lineOf };
}

// As `serve` wires it: the server is handed the policy side (file source and preflight).
useNackPolicySide(nackPolicySide);
after(() => removePolicyDirs());
afterEach(() => envoyNarrowing.configure(undefined));

describe('in-process narrowing', () => {
  test("RE2's error names a piece of one regex: that file, its document and field", () => {
    envoyNarrowing.configure(false);
    const s = setup();
    const b = blameNack(s.sent, 'invalid character class range: \\p{Garay}');
    assert.deepEqual(
      b.resources.map((r) => r.name),
      ['public/http'],
    );
    assert.deepEqual(b.sources, [s.file('legacy.yaml')]);
    assert.equal(b.candidates, 1);
    assert.deepEqual(b.culprit, {
      doc: 2,
      kind: 'HTTPRoute',
      name: 'legacy',
      path: 'spec.rules[0].matches[0].path.value',
      line: s.lineOf('Garay'),
      route: 'legacy/names/match-0',
      envoyField: 'match.safe_regex.regex',
      by: 're2',
    });
    assert.equal(b.narrow, undefined, 'no Envoy check needed');
  });

  test('without a policy side the server blames resources and files only, reading no policy file', () => {
    envoyNarrowing.configure(false);
    const s = setup();
    useNackPolicySide(undefined);
    try {
      const b = blameNack(s.sent, 'invalid character class range: \\p{Garay}');
      assert.deepEqual(
        b.resources.map((r) => r.name),
        ['public/http'],
      );
      assert.equal(b.culprit, undefined);
      assert.ok(b.sources.includes(s.file('legacy.yaml')), b.sources.join(', '));
    } finally {
      useNackPolicySide(nackPolicySide);
    }
  });

  test('a quoted value held by one route', () => {
    envoyNarrowing.configure(false);
    // (Signalbox's estimate of \p{L}+ is small; Envoy's RE2 counts 1201 instructions.)
    const s = setup({ badRegex: '/names/\\p{L}+' });
    const b = blameNack(s.sent, "regex '/names/\\p{L}+' RE2 program size of 1208 > max program size of 100 set for the error level threshold.");
    assert.deepEqual(b.sources, [s.file('legacy.yaml')]);
    assert.deepEqual([b.culprit?.doc, b.culprit?.path, b.culprit?.by], [2, 'spec.rules[0].matches[0].path.value', 'quoted']);
  });

  test("proto validation's route position (VirtualHosts[0] ... Routes[2]) and field", () => {
    envoyNarrowing.configure(false);
    const s = setup();
    const message =
      'Proto constraint validation failed (RouteConfigurationValidationError.VirtualHosts[0]: embedded message failed validation | caused by VirtualHostValidationError.Routes[2]: embedded message failed validation | caused by RouteValidationError.Match: embedded message failed validation | caused by RouteMatchValidationError.Headers[0]: embedded message failed validation | caused by HeaderMatcherValidationError.StringMatch: value is required)';
    const b = blameNack(s.sent, message);
    assert.deepEqual(b.sources, [s.file('payments.yaml')]);
    assert.deepEqual(b.culprit, {
      doc: 1,
      kind: 'HTTPRoute',
      name: 'payments',
      path: 'spec.rules[0].matches[0].headers[0].value',
      line: s.lineOf('x-tenant', 'payments.yaml'),
      route: 'payments/pay/match-0',
      envoyField: 'match.headers[0].string_match',
      by: 'index',
    });
  });

  test('"one of N" only when nothing tells, with the candidates left and why', () => {
    envoyNarrowing.configure(false);
    const s = setup();
    const nothing = blameNack(s.sent, 'route: something Envoy did not like');
    assert.equal(nothing.culprit, undefined);
    assert.equal(nothing.candidates, 3);
    assert.equal(nothing.sources.length, 3);
    assert.match(
      nothing.attribution!,
      /^one of 3 files: Envoy's message names no value; no Envoy is available to check the parts with \(checking with Envoy is off\)$/,
    );
    // Two regexes hold the piece and re2js accepts both (its Unicode tables know \p{Garay}): two candidates.
    const two = setup({ decoy: '/docs/\\\\p{Garay}' });
    const b = blameNack(two.sent, 'invalid character class range: \\p{Garay}');
    assert.equal(b.culprit, undefined);
    assert.deepEqual(b.sources, [two.file('legacy.yaml'), two.file('payments.yaml')]);
    assert.equal(b.candidates, 2);
    assert.match(b.attribution!, /^one of 2 files: 2 routes hold what Envoy's message names; no Envoy/);
  });

  test('no values in the blame (they may be secrets)', () => {
    envoyNarrowing.configure(false);
    const s = setup();
    const b = blameNack(s.sent, 'invalid character class range: \\p{Garay}');
    assert.doesNotMatch(JSON.stringify({ culprit: b.culprit, attribution: b.attribution }), /Garay/);
  });

  test('sameReason: the checking Envoy refuses for the reason the proxy gave', () => {
    assert.ok(sameReason('invalid character class range: \\p{Garay}', 'route: invalid character class range: \\p{Garay}'));
    assert.ok(!sameReason('Duration out-of-range', 'invalid character class range: \\p{Garay}'));
  });
});

/** A stand-in Envoy: `--version`, and `--mode validate -c FILE` refusing any bootstrap that holds BAD_MARK; each run appends a line to `runs`. */
function fakeEnvoy(dir: string, delayMs = 0): { bin: string; runs: () => number } {
  const bin = path.join(dir, 'fake-envoy.sh');
  const runs = path.join(dir, 'runs');
  writeFileSync(runs, '');
  writeFileSync(
    bin,
    `#!/bin/sh
if [ "$1" = "--version" ]; then echo "envoy  version: 0123abcd/1.36.2/Clean/RELEASE/BoringSSL"; exit 0; fi
echo run >> ${runs}
${delayMs ? `sleep ${delayMs / 1000}` : ''}
while [ $# -gt 0 ]; do if [ "$1" = "-c" ]; then f="$2"; fi; shift; done
if grep -q 'BAD_MARK' "$f"; then echo "error initializing configuration '$f': invalid thing: BAD_MARK"; exit 1; fi
exit 0
`,
  );
  chmodSync(bin, 0o755);
  return { bin, runs: () => readFileSync(runs, 'utf8').split('\n').filter(Boolean).length };
}

describe('the background Envoy check', () => {
  test('names the route, file, document and field; the answer is kept per route configuration version', async () => {
    const s = setup({ badRegex: '/BAD_MARK/x' });
    const fake = fakeEnvoy(s.dir);
    envoyNarrowing.configure(fake.bin);
    const message = 'route: invalid thing: BAD_MARK';
    const b = blameNack(s.sent, message);
    assert.equal(b.candidates, 3);
    assert.match(b.attribution!, /^one of 3 files: Envoy's message names no value; an Envoy is checking/);
    assert.ok(b.narrow);
    const update = await new Promise<NackAttribution>((resolve) => b.narrow!(resolve));
    assert.deepEqual(update.sources, [s.file('legacy.yaml')]);
    assert.equal(update.candidates, 1);
    assert.deepEqual(update.culprit, {
      doc: 2,
      kind: 'HTTPRoute',
      name: 'legacy',
      path: 'spec.rules[0].matches[0].path.value',
      line: s.lineOf('BAD_MARK'),
      route: 'legacy/names/match-0',
      envoyField: 'match.safe_regex.regex',
      by: 'envoy',
    });
    const runs = fake.runs();
    assert.ok(runs > 2 && runs <= NARROWING_LIMITS.maxRuns, `${runs} runs`);
    // Another proxy NACKing the same version: answered at once from what was found, no Envoy run.
    const again = blameNack(s.sent, message);
    assert.equal(again.narrow, undefined);
    assert.deepEqual(again.sources, [s.file('legacy.yaml')]);
    assert.equal(again.culprit?.by, 'envoy');
    assert.equal(fake.runs(), runs);
  });

  test('an Envoy that refuses for another reason than the proxy names nothing', async () => {
    const s = setup({ badRegex: '/BAD_MARK/y' }); // (another version: not the one checked above)
    envoyNarrowing.configure(fakeEnvoy(s.dir).bin);
    const b = blameNack(s.sent, 'route: Duration out-of-range');
    const update = await new Promise<NackAttribution>((resolve) => b.narrow!(resolve));
    assert.equal(update.culprit, undefined);
    assert.equal(update.candidates, 3);
    assert.match(update.attribution!, /refuses route "legacy\/names\/match-0" for another reason than the proxy/);
  });

  test('bounded: one at a time, a few waiting, a few a minute; the same version is checked once', async () => {
    const s = setup({ badRegex: '/BAD_MARK/x' });
    const fake = fakeEnvoy(s.dir, 50);
    const n = new EnvoyNarrowing({ ...NARROWING_LIMITS, burst: 2, perMinute: 1, queued: 1 });
    n.configure(fake.bin);
    const answers: Record<string, NarrowingOutcome[]> = {};
    const ask = (key: string) =>
      new Promise<NarrowingOutcome>((resolve) =>
        n.request(key, [s.rc], (o) => {
          answers[key] ??= [];
          answers[key].push(o);
          resolve(o);
        }),
      );
    // a starts at once; b waits; c finds the queue full; a's twin joins a.
    const a = ask('a');
    const a2 = ask('a');
    const b = ask('b');
    const c = await ask('c');
    assert.match(c.reason!, /not checked: more NACKs to check than the limit/);
    const [ra, ra2, rb] = await Promise.all([a, a2, b]);
    assert.equal(ra, ra2, 'the twin gets the same answer');
    assert.equal(ra.refused?.route.name, 'legacy/names/match-0');
    assert.equal(rb.refused?.route.name, 'legacy/names/match-0');
    // The bucket (2) is spent: a new version waits for the next minute's allowance.
    const d = await ask('d');
    assert.match(d.reason!, /not checked/);
    assert.deepEqual(n.counts, { started: 2, refused: 2, answered: 2 });
    assert.ok(fake.runs() <= 2 * NARROWING_LIMITS.maxRuns);
  });

  test('an Envoy that cannot run is not tried again on every NACK', async () => {
    const s = setup();
    const n = new EnvoyNarrowing();
    n.configure(path.join(s.dir, 'no-such-envoy'));
    const o = await new Promise<NarrowingOutcome>((resolve) => n.request('k', [s.rc], resolve));
    assert.match(o.reason!, /the checking Envoy cannot run/);
    assert.equal(n.available(), false);
  });
});
