// The SRE dashboard in a real browser (playwright-core driving Debian's Chromium, headless) while
// real traffic flows through a real Envoy gateway: the request and error counts the page shows
// for a route match what the load generator sent (the proxies report them over the gRPC access
// log service), a proxy whose configuration Envoy rejected shows as NACKED with Envoy's message
// and the policy file, the global rate-limit panel shows each policy's allowed / limited counts
// and Redis's state (and what failureMode does while a real Redis is killed), the replicas panel is
// hidden with one replica (test/integration/replicas-mesh.test.ts shows it on three), and a
// screenshot is kept under test-artifacts/.
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import { after, before, describe, test } from 'node:test';
import type { Page } from 'playwright-core';
import { TypeUrl } from '../../src/xds/resources/type-urls.js';
import { signTokenSync, xdsCa } from '../helpers/credentials.js';
import { AdsClient, makeNode } from '../helpers/xds-client.js';
import { openBrowser, type Browser } from '../helpers/browser.js';
import { startControlUpstream, type ControlUpstream } from '../helpers/control-upstream.js';
import { repoRoot, startEnvoy, type Envoy } from '../helpers/envoy.js';
import { pool } from '../helpers/gateway-env.js';
import { freePort, httpGet, waitFor } from '../helpers/net.js';
import { startRedis, type RedisServer } from '../helpers/redis.js';
import { startSignalbox, type SignalboxProcess } from '../helpers/signalbox.js';

const run = promisify(execFile);

const BROWSE_REQUESTS = 1000;
const BROWSE_FAILURES = 50;
const FLAKY_REQUESTS = 20;
const QUOTA = 3;
const REDIS_PASSWORD = 'pw-dashboard-5c0ffee';

function policies(p: { edge: number; lab: number; quota: number; shop: number; flaky: number }): Record<string, string> {
  return {
    'services.yaml': `apiVersion: signalbox.dev/v1alpha1
kind: Service
metadata: { name: shop }
spec:
  port: 8080
  endpoints: [ { address: 127.0.0.1, port: ${p.shop} } ]
---
apiVersion: signalbox.dev/v1alpha1
kind: Service
metadata: { name: flaky }
spec:
  port: 8080
  endpoints: [ { address: 127.0.0.1, port: ${p.flaky} } ]
`,
    'gateways.yaml': `apiVersion: signalbox.dev/v1alpha1
kind: Gateway
metadata: { name: edge }
spec:
  listeners: [ { name: http, port: ${p.edge}, protocol: HTTP } ]
---
apiVersion: signalbox.dev/v1alpha1
kind: Gateway
metadata: { name: lab }
spec:
  listeners: [ { name: http, port: ${p.lab}, protocol: HTTP } ]
`,
    'shop-routes.yaml': `apiVersion: signalbox.dev/v1alpha1
kind: HTTPRoute
metadata: { name: shop }
spec:
  parentRefs: [ { kind: Gateway, name: edge } ]
  rules:
    - name: browse
      matches: [ { path: { type: PathPrefix, value: /shop } } ]
      backendRefs: [ { name: shop } ]
    - name: flaky
      matches: [ { path: { type: PathPrefix, value: /flaky } } ]
      backendRefs: [ { name: flaky } ]
      retries: { attempts: 1, retryOn: [5xx] }
`,
    // A gateway of its own (the others use no secret; this one needs an identity for the
    // rate-limit service's mTLS), with a global limit counted in Redis.
    'quota.yaml': `apiVersion: signalbox.dev/v1alpha1
kind: Gateway
metadata: { name: quota }
spec:
  listeners: [ { name: http, port: ${p.quota}, protocol: HTTP } ]
---
apiVersion: signalbox.dev/v1alpha1
kind: HTTPRoute
metadata: { name: quota }
spec:
  parentRefs: [ { kind: Gateway, name: quota } ]
  rules:
    - name: metered
      matches: [ { path: { type: PathPrefix, value: /quota } } ]
      backendRefs: [ { name: shop } ]
---
apiVersion: signalbox.dev/v1alpha1
kind: RateLimitPolicy
metadata: { name: quota-per-key }
spec:
  targetRef: { kind: HTTPRoute, name: quota }
  global:
    failureMode: allow
    limits: [ { requests: ${QUOTA}, per: minute, by: { header: x-api-key } } ]
`,
    // Valid to plain `validate`, rejected by Envoy: an RE2 program of 105 (max 100), which only the
    // real Envoy measures (`validate --envoy` catches it). (Not a Unicode class: Envoy 1.40 sizes
    // those far smaller than 1.36 and takes them.)
    'lab-routes.yaml': `apiVersion: signalbox.dev/v1alpha1
kind: HTTPRoute
metadata: { name: lab }
spec:
  parentRefs: [ { kind: Gateway, name: lab } ]
  rules:
    - name: tagged
      matches: [ { path: { type: PathPrefix, value: /lab }, headers: [ { name: x-tag, type: RegularExpression, value: '[a-z]{98}' } ] } ]
      backendRefs: [ { name: shop } ]
`,
  };
}

describe('dashboard in a real browser, real Envoy traffic', () => {
  let dir: string;
  let sb: SignalboxProcess;
  let edge: Envoy;
  let lab: Envoy;
  let quota: Envoy;
  let quotaPort: number;
  let redis: RedisServer;
  let shop: ControlUpstream;
  let flaky: ControlUpstream;
  let browser: Browser;
  let page: Page;
  let edgePort: number;
  let consoleErrors: string[] = [];

  before(async () => {
    shop = await startControlUpstream('shop');
    flaky = await startControlUpstream('flaky');
    edgePort = await freePort();
    const labPort = await freePort();
    quotaPort = await freePort();
    redis = await startRedis({ password: REDIS_PASSWORD });
    dir = mkdtempSync(path.join(os.tmpdir(), 'sb-dashboard-'));
    for (const [f, text] of Object.entries(policies({ edge: edgePort, lab: labPort, quota: quotaPort, shop: shop.port, flaky: flaky.port })))
      writeFileSync(path.join(dir, f), text);
    sb = await startSignalbox({ policies: dir, extraArgs: ['--redis-url', `redis://:${REDIS_PASSWORD}@127.0.0.1:${redis.port}`] });
    edge = await startEnvoy({ name: 'edge-gw', bootstrapYaml: await sb.bootstrap({ gateway: 'edge', id: 'edge-gw' }) });
    lab = await startEnvoy({ name: 'lab-gw', bootstrapYaml: await sb.bootstrap({ gateway: 'lab', id: 'lab-gw', delta: true }) });
    quota = await startEnvoy({ name: 'quota-gw', bootstrapYaml: await sb.bootstrap({ gateway: 'quota', id: 'quota-gw' }) });
    await waitFor(async () => (await httpGet(`http://127.0.0.1:${edgePort}/shop/ready`)).status === 200, { what: 'edge gateway serving', timeoutMs: 15_000 });
    await waitFor(async () => (await httpGet(`http://127.0.0.1:${quotaPort}/quota/ready`, { headers: { 'x-api-key': 'warm-up' } })).status === 200, {
      what: 'quota gateway serving',
      timeoutMs: 20_000,
    });
    browser = await openBrowser();
    page = browser.page;
    consoleErrors = browser.consoleErrors;
  });

  after(async () => {
    await browser?.close();
    await edge?.stop();
    await lab?.stop();
    await quota?.stop();
    await sb?.kill();
    await redis?.stop();
    await shop?.close();
    await flaky?.close();
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  /** The number a table cell carries (data-value), or undefined while the row is not there. */
  const cell = (rowSelector: string, field: string) =>
    page.evaluate(
      ([row, f]) => {
        const td = document.querySelector(`${row} td[data-field="${f}"]`);
        const v = td?.getAttribute('data-value');
        return v === null || v === undefined || v === '' ? undefined : Number(v);
      },
      [rowSelector, field] as const,
    );

  test('route counts on the page match what the load generator sent, live', async () => {
    await page.goto(`http://127.0.0.1:${sb.adminPort}/`);
    await page.waitForSelector('#live[data-state="live"]', { timeout: 15_000 });
    const startedWith = (await sb.admin('/api/traffic')).routes.find((r: { key: string }) => r.key === 'shop/browse/match-0')?.totals.requests ?? 0;

    // The load, while the page is open: BROWSE_FAILURES of the browse requests fail with 503.
    shop.failNext(BROWSE_FAILURES, 503);
    const statuses = await pool(BROWSE_REQUESTS, 16, async (i) => (await httpGet(`http://127.0.0.1:${edgePort}/shop/item/${i}`)).status);
    const sent5xx = statuses.filter((s) => s >= 500).length;
    const sent2xx = statuses.filter((s) => s >= 200 && s < 300).length;
    assert.ok(sent5xx >= BROWSE_FAILURES, `the load generator saw the failures it asked for (${sent5xx})`);
    // Retries: each flaky request fails once at the upstream and succeeds on its retry.
    for (let i = 0; i < FLAKY_REQUESTS; i++) {
      flaky.failNext(1, 503);
      assert.equal((await httpGet(`http://127.0.0.1:${edgePort}/flaky/${i}`)).status, 200);
    }

    const row = 'tr[data-route="shop/browse/match-0"]';
    const want = startedWith + BROWSE_REQUESTS;
    // The page updates itself (SSE): poll what it shows, never reload.
    await waitFor(async () => ((await cell(row, 'requests')) ?? 0) >= want * 0.98, { what: 'the page to show the browse requests', timeoutMs: 20_000 });
    const shown = (await cell(row, 'requests'))!;
    const shown5xx = (await cell(row, 'c5xx'))!;
    const shown2xx = (await cell(row, 'c2xx'))!;
    assert.ok(Math.abs(shown - want) <= want * 0.02, `requests shown ${shown}, sent ${want}`);
    assert.ok(Math.abs(shown5xx - sent5xx) <= Math.max(1, sent5xx * 0.02), `5xx shown ${shown5xx}, the load generator got ${sent5xx}`);
    assert.ok(Math.abs(shown2xx - (startedWith + sent2xx)) <= want * 0.02, `2xx shown ${shown2xx}, the load generator got ${sent2xx}`);
    assert.match((await page.textContent(`${row} td:nth-child(4)`)) ?? '', /shop/, 'the route names its service');

    const flakyRow = 'tr[data-route="shop/flaky/match-0"]';
    await waitFor(async () => (await cell(flakyRow, 'requests')) === FLAKY_REQUESTS, { what: 'flaky route requests', timeoutMs: 15_000 });
    assert.equal(await cell(flakyRow, 'retries'), FLAKY_REQUESTS, 'one retry per flaky request');
    assert.equal(await cell(flakyRow, 'c5xx'), 0);

    // The service row and the mesh map show the same traffic.
    await waitFor(async () => ((await cell('tr[data-service="shop"]', 'requests')) ?? 0) >= want * 0.98, { what: 'service row', timeoutMs: 10_000 });
    assert.ok(await page.$('[data-node="gateway/edge"]'), 'the map shows the gateway');
    assert.ok(await page.$('[data-edge="gateway/edge>service/shop"]'), 'the map shows the gateway -> shop edge');
    const rps = await cell(row, 'rps');
    assert.ok(rps !== undefined && rps >= 0, 'a request rate is shown');
  });

  test('a proxy whose config Envoy rejected shows as NACKED with the message and the policy file', async () => {
    await waitFor(async () => (await sb.admin('/api/proxies/lab-gw'))?.state === 'NACKED', { what: 'lab-gw NACKED', timeoutMs: 15_000 });
    // Find it with the search box (the list is paged on the server).
    await page.fill('#proxy-search', 'lab');
    const stateCell = 'tr[data-proxy="lab-gw"] td[data-field="state"]';
    await page.waitForSelector(stateCell, { timeout: 10_000 });
    await waitFor(async () => /NACKED/.test((await page.textContent(stateCell)) ?? ''), { what: 'NACKED shown', timeoutMs: 10_000 });
    const files = (await page.textContent('tr[data-proxy="lab-gw"] [data-field="nack-files"]')) ?? '';
    assert.match(files, /lab-routes\.yaml/, `the policy file behind the rejected resource: ${files}`);
    // As the user wrote it: relative to the policy directory, not the absolute temp path.
    assert.match(files.trim(), /^lab-routes\.yaml$/, `relative to the policy directory: ${files}`);
    assert.doesNotMatch(files, /\/tmp\/|^\//);
    assert.doesNotMatch(files, /shop-routes\.yaml/);
    const nack = (await page.textContent('tr[data-proxy="lab-gw"] [data-field="nack"]')) ?? '';
    assert.match(nack, /RE2 program size/, "Envoy's own message");
    await waitFor(async () => (await page.$('tr[data-proxy="edge-gw"]')) === null, { what: 'the search to filter the other proxy out', timeoutMs: 10_000 });
    await page.fill('#proxy-search', '');
    await page.waitForSelector('tr[data-proxy="edge-gw"]', { timeout: 10_000 });
    assert.match((await page.textContent('tr[data-proxy="edge-gw"] td[data-field="state"]')) ?? '', /SYNCED/);
    // One replica (the file state): no replicas panel, and no replica column in the proxy list.
    assert.deepEqual(await sb.admin('/api/dashboard/replicas'), { state: 'file' });
    assert.ok(await page.isHidden('#replicas'), 'no replicas panel');
    assert.ok(await page.isHidden('#proxies-replica'), 'no replica column');
    assert.equal(await page.$('tr[data-proxy="edge-gw"] td[data-field="replica"]'), null);
    // NACKED proxies are listed first.
    const first = await page.getAttribute('#proxies tbody tr:first-child', 'data-proxy');
    assert.equal(first, 'lab-gw');
    assert.match((await page.textContent('#card-proxy-states')) ?? '', /1 NACKed/);
    // A truthful headline: valid, but not live on the NACKED proxy, and not green.
    await waitFor(async () => /not live on 1 proxy \(NACKED\)/.test((await page.textContent('#card-config')) ?? ''), {
      what: 'the config card to say the NACKED proxy runs an older configuration',
      timeoutMs: 10_000,
    });
    assert.equal(((await page.textContent('#card-config')) ?? '').trim(), 'valid, not live on 1 proxy (NACKED)');
    assert.doesNotMatch((await page.getAttribute('#card-config', 'class')) ?? '', /state-SYNCED/, 'not green');
    const summary = await sb.admin('/api/dashboard/summary');
    assert.equal(summary.config.live, false);
    // /api/proxies shows NACK sources relative to the policy directory too.
    const lab = await sb.admin('/api/proxies/lab-gw');
    const sources = Object.values(lab.types as Record<string, { lastNack?: { sources: string[] } }>).flatMap((t) => t.lastNack?.sources ?? []);
    assert.ok(sources.includes('lab-routes.yaml'), `relative NACK sources: ${sources.join(', ')}`);
    assert.ok(
      sources.every((f) => !f.startsWith('/')),
      `no absolute paths: ${sources.join(', ')}`,
    );
  });

  test('the rate-limit panel: allowed / limited per policy, Redis up and down, and what failureMode does meanwhile', async () => {
    const panel = (sel: string) => page.textContent(`#ratelimit ${sel}`).then((t) => (t ?? '').trim());
    const row = 'tr[data-policy="quota-per-key"]';
    await page.waitForSelector('#ratelimit:not([hidden])', { timeout: 15_000 });
    await waitFor(async () => (await panel('#rl-redis-state')) === 'up', { what: 'the panel to show Redis up', timeoutMs: 15_000 });
    const before = (await sb.admin('/api/ratelimit')).policies.find((p: { policy: string }) => p.policy === 'quota-per-key').decisions;
    // One key over its limit: QUOTA allowed, 2 limited (the windows are whole minutes: not across a boundary).
    if (Date.now() % 60_000 > 55_000) await new Promise((r) => setTimeout(r, 60_000 - (Date.now() % 60_000) + 50));
    const key = `dash-${Date.now()}`;
    const statuses: number[] = [];
    for (let i = 0; i < QUOTA + 2; i++) statuses.push((await httpGet(`http://127.0.0.1:${quotaPort}/quota/x`, { headers: { 'x-api-key': key } })).status);
    assert.deepEqual(statuses, [...Array(QUOTA).fill(200), 429, 429]);
    // The service's own counts: QUOTA let through, 2 refused. (On a loaded machine one Redis command
    // may miss its 100 ms deadline: that request passes by failureMode allow, uncounted here but
    // still counted in Redis, so the statuses above do not change.)
    const after = (await sb.admin('/api/ratelimit')).policies.find((p: { policy: string }) => p.policy === 'quota-per-key').decisions;
    assert.equal(after.allowed + after.failureAllowed - before.allowed - before.failureAllowed, QUOTA);
    assert.equal(after.limited - before.limited, 2);
    // The page shows them.
    await waitFor(
      async () =>
        (await cell(row, 'allowed')) === after.allowed &&
        (await cell(row, 'limited')) === after.limited &&
        (await cell(row, 'failureAllowed')) === after.failureAllowed,
      {
        what: `the panel to show ${after.allowed} allowed, ${after.limited} limited, ${after.failureAllowed} failure allowed`,
        timeoutMs: 15_000,
      },
    );
    assert.equal(await cell(row, 'failureDenied'), 0);
    assert.equal(await panel(`${row} [data-field="failureMode"]`), 'allow');
    assert.equal(await panel(`${row} [data-field="inEffect"]`), 'counted in Redis');
    assert.match(await panel(`${row} td:nth-child(2)`), /^3\/min by header$/);
    assert.match(await panel('#rl-redis-latency'), /^p50 [\d.]+ ms · p99 [\d.]+ ms \(last \d+ commands\)$/);
    assert.match(await panel('#rl-redis-url'), new RegExp(`^redis://:\\*\\*\\*@127\\.0\\.0\\.1:${redis.port}`));
    assert.match(await panel('#rl-service'), /mTLS · \d+ calls/);

    // Redis killed: the panel says so, and that failureMode allow lets requests through uncounted.
    const errorsBefore = Number(await page.getAttribute('#rl-redis-errors', 'data-value'));
    await redis.kill();
    const during: number[] = [];
    for (let i = 0; i < 3; i++) during.push((await httpGet(`http://127.0.0.1:${quotaPort}/quota/x`, { headers: { 'x-api-key': `${key}-down-${i}` } })).status);
    assert.deepEqual(during, [200, 200, 200], 'failureMode allow while Redis is down');
    await waitFor(async () => (await panel('#rl-redis-state')) === 'down' && (await cell(row, 'failureAllowed')) === after.failureAllowed + 3, {
      what: 'the panel to show Redis down and 3 let through',
      timeoutMs: 15_000,
    });
    assert.equal(await panel(`${row} [data-field="inEffect"]`), 'Redis down: let through uncounted (failureMode allow)');
    assert.match((await page.getAttribute(`${row} [data-field="inEffect"]`, 'class')) ?? '', /warn/);
    assert.ok(Number(await page.getAttribute('#rl-redis-errors', 'data-value')) > errorsBefore, 'Redis errors counted');
    assert.match(await panel('#rl-redis-error'), /last Redis error/);
    assert.match((await page.textContent('#warnings')) ?? '', /Redis .* cannot be reached/);

    // Back: counted again.
    await redis.start();
    await waitFor(async () => (await panel('#rl-redis-state')) === 'up', { what: 'the panel to show Redis up again', timeoutMs: 20_000 });
    assert.equal(await panel(`${row} [data-field="inEffect"]`), 'counted in Redis');
    assert.ok(await page.isHidden('#rl-redis-error'));
    assert.ok(!(await page.content()).includes(REDIS_PASSWORD), 'the Redis password is not on the page');
  });

  test('`signalbox status` prints the same proxies as a terminal table', async () => {
    const r = await run(process.execPath, [path.join(repoRoot(), 'bin/signalbox.js'), 'status', '--admin', `http://127.0.0.1:${sb.adminPort}`]).then(
      (ok) => ({ code: 0, stdout: ok.stdout }),
      (e: { code: number; stdout: string }) => ({ code: e.code, stdout: e.stdout }),
    );
    assert.equal(r.code, 1, 'not every proxy is synced');
    assert.match(r.stdout, /^PROXY\s+ROLE\s+XDS\s+CDS\s+EDS\s+LDS\s+RDS\s+SDS\s+STATUS\s+CERT EXPIRES$/m);
    // Neither gateway uses a secret, so neither was issued a certificate (each instance gets its own when it asks).
    assert.match(r.stdout, /^edge-gw\s+gateway\/edge\s+sotw\s+.*SYNCED\s+-$/m);
    assert.match(r.stdout, /^lab-gw\s+gateway\/lab\s+delta\s+.*NACKED\s+-$/m);
    assert.match(
      r.stdout,
      /lab-gw: route \w+ NACKED \(from lab-routes\.yaml#1 spec\.rules\[0\]\.matches\[0\]\.headers\[0\]\.value \(line \d+\)\)/,
      'relative to the policy directory, with the document and field at fault',
    );
    assert.doesNotMatch(r.stdout, /\/tmp\//);
    assert.match(r.stdout, /proxies: \d+ synced, \d+ pending, 1 NACKed/);
    assert.doesNotMatch(r.stdout, /stale/i);
  });

  test('certificates, validation errors, and a screenshot', async () => {
    // An instance of shop asks for its identity (as a sidecar's SDS does): its certificate is listed.
    const ads = new AdsClient(`127.0.0.1:${sb.xdsPort}`, {}, { ca: xdsCa(sb.dataDir), token: () => signTokenSync(sb.dataDir, 'service/shop') });
    const node = makeNode({
      id: 'shop-1',
      role: 'sidecar',
      gateway: null,
      metadata: { 'signalbox.service': 'shop', 'signalbox.app_port': '9001', 'signalbox.inbound_port': '21001' },
    });
    const sidecar = ads.sotw({ node, autoAck: true });
    sidecar.request(TypeUrl.Secret, ['signalbox/identity']);
    await sidecar.next((x) => x.type_url === TypeUrl.Secret && x.resources.length === 1, 10_000);
    // (The quota gateway's certificate is listed already: wait for shop's.)
    await waitFor(async () => /spiffe:\/\/signalbox\.local\/service\/shop/.test((await page.textContent('#certs tbody')) ?? ''), {
      what: "shop's certificate listed",
      timeoutMs: 10_000,
    });
    ads.close();
    // An invalid edit shows up in the page (and changes nothing that is served).
    writeFileSync(
      path.join(dir, 'broken.yaml'),
      'apiVersion: signalbox.dev/v1alpha1\nkind: HTTPRoute\nmetadata: { name: broken }\nspec:\n  parentRefs: [ { kind: Gateway, name: nowhere } ]\n  rules: []\n',
    );
    await waitFor(async () => /broken\.yaml/.test((await page.textContent('#errors')) ?? ''), { what: 'validation error shown', timeoutMs: 15_000 });
    await waitFor(async () => /1 error/.test((await page.textContent('#card-config')) ?? ''), { what: 'the summary card to count it', timeoutMs: 10_000 });
    assert.equal((await httpGet(`http://127.0.0.1:${edgePort}/shop/still`)).status, 200, 'the last good config still serves');
    const out = path.join(repoRoot(), 'test-artifacts');
    mkdirSync(out, { recursive: true });
    const file = path.join(out, 'dashboard.png');
    await page.screenshot({ path: file, fullPage: true });
    process.stderr.write(`dashboard screenshot: ${file}\n`);
    assert.deepEqual(consoleErrors, [], 'no script errors in the page');
    // Nothing secret reaches the page.
    const html = await page.content();
    assert.doesNotMatch(html, /PRIVATE KEY/);
  });
});
