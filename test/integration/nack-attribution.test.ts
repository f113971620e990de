// A NACK is blamed on the one policy file, document and field at fault, even when Envoy's message
// quotes no value. A real Envoy gateway, three policy files contributing routes to its one
// RouteConfiguration, and one value that Signalbox's validation accepts and Envoy refuses: the
// path regex `\p{Garay}` (a Unicode 16 script: re2js's tables know it, Envoy 1.36's RE2 does not,
// and Envoy says only "invalid character class range: \p{Garay}").
// 1. RE2's error names a piece of one regex: narrowed down in-process, on the first NACK.
// 2. A second regex that holds the same piece but is valid for RE2 (`\\p{Garay}`: a backslash and
//    letters) makes the piece ambiguous: "one of 2 files" until an Envoy checking the route
//    configuration's parts in the background names the one route, file, document and field.
// /api/proxies and `signalbox status` name only that file, relative to the policy directory.
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import { after, before, describe, test } from 'node:test';
import { provisionEnvoy, repoRoot, startEnvoy, type Envoy } from '../helpers/envoy.js';
import { freePort, waitFor } from '../helpers/net.js';
import { startSignalbox, type SignalboxProcess } from '../helpers/signalbox.js';

const run = promisify(execFile);

interface LastNack {
  version: string;
  message: string;
  sources: string[];
  resources: string[];
  candidates?: number;
  attribution?: string;
  culprit?: { doc: number; kind: string; name: string; path?: string; line?: number; route: string; envoyField?: string; by: string };
}

const storefront = (port: number) => `apiVersion: signalbox.dev/v1alpha1
kind: Gateway
metadata: { name: public }
spec:
  listeners: [ { name: http, port: ${port}, protocol: HTTP } ]
---
apiVersion: signalbox.dev/v1alpha1
kind: Service
metadata: { name: shop }
spec:
  port: 8080
  endpoints: [ { address: 127.0.0.1, port: 9 } ]
---
apiVersion: signalbox.dev/v1alpha1
kind: HTTPRoute
metadata: { name: storefront }
spec:
  parentRefs: [ { kind: Gateway, name: public } ]
  rules:
    - name: home
      matches: [ { path: { type: RegularExpression, value: '/shop/[a-z]+' } } ]
      backendRefs: [ { name: shop } ]
`;

const payments = (decoy: boolean) => `apiVersion: signalbox.dev/v1alpha1
kind: HTTPRoute
metadata: { name: payments }
spec:
  parentRefs: [ { kind: Gateway, name: public } ]
  rules:
    - name: pay
      matches: [ { path: { type: PathPrefix, value: /pay }, headers: [ { name: x-tenant, type: RegularExpression, value: '[a-z]{1,8}' } ] } ]
      backendRefs: [ { name: shop } ]
${
  decoy
    ? `    - name: docs
      matches: [ { path: { type: RegularExpression, value: '/docs/\\\\p{Garay}' } } ]
      backendRefs: [ { name: shop } ]
`
    : ''
}`;

// The bad value is in the second document of legacy.yaml.
const LEGACY = `apiVersion: signalbox.dev/v1alpha1
kind: HTTPRoute
metadata: { name: old-api }
spec:
  parentRefs: [ { kind: Gateway, name: public } ]
  rules:
    - name: v1
      matches: [ { path: { type: PathPrefix, value: /v1 } } ]
      backendRefs: [ { name: shop } ]
---
apiVersion: signalbox.dev/v1alpha1
kind: HTTPRoute
metadata: { name: legacy }
spec:
  parentRefs: [ { kind: Gateway, name: public } ]
  rules:
    - name: names
      matches: [ { path: { type: RegularExpression, value: '/names/\\p{Garay}+' } } ]
      backendRefs: [ { name: shop } ]
`;
const BAD_LINE = LEGACY.split('\n').findIndex((l) => l.includes('p{Garay}')) + 1;

describe('NACK attribution: the one file, document and field, with a real Envoy', () => {
  let dir: string;
  let sb: SignalboxProcess;
  let gw: Envoy;

  const lastNack = async (): Promise<LastNack | undefined> => (await sb.admin('/api/proxies/public-gw'))?.types?.route?.lastNack;

  before(async () => {
    const envoyBin = await provisionEnvoy();
    dir = mkdtempSync(path.join(os.tmpdir(), 'sb-nack-'));
    writeFileSync(path.join(dir, 'storefront.yaml'), storefront(await freePort()));
    writeFileSync(path.join(dir, 'payments.yaml'), payments(false));
    writeFileSync(path.join(dir, 'legacy.yaml'), LEGACY);
    // The Envoy the background check uses (as `validate --envoy` finds it); serve's own preflight stays off.
    sb = await startSignalbox({ policies: dir, env: { SIGNALBOX_ENVOY_BIN: envoyBin, SIGNALBOX_PREFLIGHT_ENVOY: '' } });
    gw = await startEnvoy({ name: 'public-gw', bootstrapYaml: await sb.bootstrap({ gateway: 'public', id: 'public-gw' }), withoutModules: true });
  });
  after(async () => {
    await gw?.stop();
    await sb?.kill();
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  test('plain validation accepts the value; the one route configuration has routes from all three files', async () => {
    const r = await run(process.execPath, [path.join(repoRoot(), 'bin/signalbox.js'), 'validate', dir]);
    assert.match(r.stdout, /valid/);
    const config = await sb.admin(`/api/config/public-gw`);
    const routeConfigs = config.resources.route as { name: string; sources: string[] }[];
    assert.equal(routeConfigs.length, 1);
    assert.deepEqual(routeConfigs[0]!.sources.map((f) => path.basename(f)).sort(), ['legacy.yaml', 'payments.yaml', 'storefront.yaml']);
  });

  test("RE2's error names a piece of one regex: the NACK names legacy.yaml, its second document and the field", async (t) => {
    await waitFor(async () => (await sb.admin('/api/proxies/public-gw'))?.state === 'NACKED', { what: 'public-gw NACKED', timeoutMs: 20_000 });
    const nack = (await lastNack())!;
    t.diagnostic(`Envoy's message: ${nack.message}`);
    t.diagnostic(`blame: ${JSON.stringify({ sources: nack.sources, culprit: nack.culprit, candidates: nack.candidates, attribution: nack.attribution })}`);
    assert.match(nack.message, /invalid character class range: \\p\{Garay\}/);
    assert.doesNotMatch(nack.message, /'[^']*Garay[^']*'|"[^"]*Garay[^"]*"/, 'the message quotes no value');
    assert.deepEqual(nack.sources, ['legacy.yaml'], 'only that file, relative to the policy directory');
    assert.equal(nack.candidates, 1);
    assert.deepEqual(nack.culprit, {
      doc: 2,
      kind: 'HTTPRoute',
      name: 'legacy',
      path: 'spec.rules[0].matches[0].path.value',
      line: BAD_LINE,
      route: 'legacy/names/match-0',
      envoyField: 'match.safe_regex.regex',
      by: 're2',
    });
    assert.doesNotMatch(JSON.stringify(nack.culprit) + nack.attribution, /Garay/, 'no values in the blame');

    const status = await run(process.execPath, [path.join(repoRoot(), 'bin/signalbox.js'), 'status', '--admin', `http://127.0.0.1:${sb.adminPort}`]).then(
      (ok) => ok.stdout,
      (e: { stdout: string }) => e.stdout,
    );
    t.diagnostic(`signalbox status:\n${status}`);
    assert.match(status, /^public-gw: route \w+ NACKED \(from legacy\.yaml#2 spec\.rules\[0\]\.matches\[0\]\.path\.value \(line \d+\)\)$/m);
    assert.doesNotMatch(status, /payments\.yaml|storefront\.yaml/);
  });

  test('a second regex holding the same piece: "one of 2 files" until an Envoy checks the parts, then the one file, document and field', async (t) => {
    const first = (await lastNack())!;
    writeFileSync(path.join(dir, 'payments.yaml'), payments(true));
    const seen: LastNack[] = [];
    await waitFor(
      async () => {
        const n = await lastNack();
        if (!n || n.version === first.version) return false;
        if (!seen.length || JSON.stringify(seen.at(-1)) !== JSON.stringify(n)) seen.push(n);
        return n.culprit !== undefined || (/checking Envoy|no Envoy/.test(n.attribution ?? '') && !/is checking/.test(n.attribution ?? ''));
      },
      { what: 'the new version NACKed and checked', timeoutMs: 60_000, intervalMs: 20 },
    );
    for (const n of seen)
      t.diagnostic(`blame: ${JSON.stringify({ sources: n.sources, candidates: n.candidates, attribution: n.attribution, culprit: n.culprit })}`);
    const pending = seen.find((n) => !n.culprit);
    if (pending) {
      // (Seen when the poll was quicker than the check.)
      assert.deepEqual(pending.sources, ['legacy.yaml', 'payments.yaml']);
      assert.equal(pending.candidates, 2);
      assert.match(pending.attribution!, /^one of 2 files: 2 routes hold what Envoy's message names; an Envoy is checking/);
    }
    const done = seen.at(-1)!;
    assert.deepEqual(done.sources, ['legacy.yaml']);
    assert.equal(done.candidates, 1);
    assert.deepEqual(done.culprit, {
      doc: 2,
      kind: 'HTTPRoute',
      name: 'legacy',
      path: 'spec.rules[0].matches[0].path.value',
      line: BAD_LINE,
      route: 'legacy/names/match-0',
      envoyField: 'match.safe_regex',
      by: 'envoy',
    });
    assert.match(done.attribution!, /narrowed down by an Envoy checking the route configuration's parts \(Envoy \d+\.\d+\.\d+, \d+ runs, \d+ ms\)/);
    const checks = () =>
      sb
        .logs()
        .split('\n')
        .filter((l) => l.includes('NACK checked with Envoy'));
    // The child's log reaches us through a pipe, possibly after the API already shows the result.
    await waitFor(() => checks().length > 0, { what: 'the check logged', timeoutMs: 5_000 });
    const logs = checks();
    assert.equal(logs.length, 1, 'one check for that route configuration version');
    t.diagnostic(logs[0]!);
    assert.ok(readFileSync(path.join(dir, 'payments.yaml'), 'utf8').includes('\\\\p{Garay}'));
  });
});
