// Reloads reuse what did not change (parsed files, IR routes, translated routes and clusters,
// encodings). Whatever the sequence of edits, a reload told which files changed must serve exactly
// what a from-scratch compile of the same files serves: the same groups, and per type the same
// resource names, versions, bytes and sources. Random sequences of edits (routes, services,
// traffic and rate-limit policies, the Mesh defaults and the Gateway, including edits that make
// the directory invalid and later valid again) are applied one at a time to a long-lived pipeline,
// and each step is compared with a new pipeline that reads the directory afresh.
//
// Deterministic: a fixed seed and a bounded number of runs. SIGNALBOX_FUZZ_SEED and
// SIGNALBOX_FUZZ_RUNS explore further; a failure prints the seed and the shrunk sequence.
import assert from 'node:assert/strict';
import { mkdirSync, mkdtempSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { test } from 'node:test';
import fc from 'fast-check';
import { Pipeline } from '../../src/controller/pipeline.js';
import { formatPolicyError } from '../../src/errors.js';
import { createLogger } from '../../src/observability/logger.js';
import { SnapshotCache } from '../../src/xds/cache/snapshot-cache.js';
import { served } from '../helpers/served.js';

const SEED = Number(process.env.SIGNALBOX_FUZZ_SEED ?? 20261205);
const RUNS = Number(process.env.SIGNALBOX_FUZZ_RUNS ?? 25);

const ROUTES = 5;
const SERVICES = 3;

// ---- the files, as text made from small choices ------------------------------------------------------

const header = (kind: string, name: string) => `apiVersion: signalbox.dev/v1alpha1\nkind: ${kind}\nmetadata: { name: ${name} }\n`;

function routeText(i: number, v: number): string {
  const svc = `svc-${(i + v) % SERVICES}`;
  const host = v % 3 === 0 ? '' : `  hostnames: [ h${v % 2}.example.com ]\n`;
  let rules = `    - name: main\n      matches:\n        - path: { type: PathPrefix, value: /r${i}/${v % 4} }\n      backendRefs: [ { name: ${svc}${v % 2 ? ', subset: v1' : ''} } ]\n`;
  if (v % 5 !== 4) rules += `      timeout: ${1 + (v % 7)}s\n`;
  if (v % 4 === 1)
    rules += `    - matches:\n        - path: { type: Exact, value: /old${i} }\n      filters:\n        - { type: RequestRedirect, requestRedirect: { path: { replaceFullPath: /r${i} }, statusCode: 301 } }\n`;
  if (v % 3 === 2)
    rules += `    - name: split\n      matches:\n        - path: { type: RegularExpression, value: "/r${i}/[0-9]+" }\n          headers: [ { name: x-v, type: Exact, value: "${v}" } ]\n      backendRefs:\n        - { name: ${svc}, subset: v1, weight: 80 }\n        - { name: svc-${(i + 1) % SERVICES}, weight: 20 }\n`;
  return `${header('HTTPRoute', `r${i}`)}spec:\n  parentRefs: [ { kind: Gateway, name: edge } ]\n${host}  rules:\n${rules}`;
}

function serviceText(j: number, v: number): string {
  const port = 20000 + j * 10 + (v % 3);
  return `${header('Service', `svc-${j}`)}spec:\n  protocol: ${v % 4 === 3 ? 'http2' : 'http'}\n  port: 8080\n  endpoints:\n    - { address: 127.0.0.1, port: ${port}, labels: { version: v1 } }\n    - { address: 127.0.0.1, port: ${port + 5}, labels: { version: v${1 + (v % 2)} } }\n  subsets:\n    - { name: v1, labels: { version: v1 } }\n`;
}

function trafficText(j: number, v: number): string {
  const lb = v % 2 ? '  loadBalancer: { type: RingHash, hashOn: { header: x-user } }\n' : '  loadBalancer: { type: LeastRequest }\n';
  return `${header('TrafficPolicy', `tp-${j}`)}spec:\n  targetRef: { kind: Service, name: svc-${j} }\n  timeout: ${2 + (v % 3)}s\n${v % 3 === 1 ? '  retries: { attempts: 3, retryOn: [5xx] }\n' : ''}${lb}`;
}

function rateLimitText(i: number, v: number): string {
  return `${header('RateLimitPolicy', `rl-${i}`)}spec:\n  targetRef: { kind: HTTPRoute, name: r${i} }\n  local: { requests: ${10 + v}, per: 1s }\n`;
}

const meshText = (v: number) =>
  `${header('Mesh', 'default')}spec:\n  defaults:\n    timeout: ${10 + v}s\n${v % 2 ? '    retries: { attempts: 1, retryOn: [reset] }\n' : ''}`;
const gatewayText = (v: number) =>
  `${header('Gateway', 'edge')}spec:\n  listeners:\n    - { name: http, port: ${[8080, 80, 8443][v % 3]}, protocol: HTTP, hostnames: ["*.example.com"] }\n`;

// ---- edits, as plain data (printed and shrunk by fast-check) -----------------------------------------

type Edit =
  | { op: 'route'; i: number; v: number }
  | { op: 'service'; j: number; v: number }
  | { op: 'traffic'; j: number; v: number }
  | { op: 'rateLimit'; i: number; v: number }
  | { op: 'mesh'; v: number }
  | { op: 'gateway'; v: number }
  | { op: 'remove'; what: 'route' | 'service' | 'traffic' | 'rateLimit'; n: number }
  | { op: 'break'; what: 'route' | 'service'; n: number; how: number };

const v = fc.nat(11);
const edit: fc.Arbitrary<Edit> = fc.oneof(
  { weight: 5, arbitrary: fc.record({ op: fc.constant('route' as const), i: fc.nat(ROUTES - 1), v }) },
  { weight: 2, arbitrary: fc.record({ op: fc.constant('service' as const), j: fc.nat(SERVICES - 1), v }) },
  { weight: 2, arbitrary: fc.record({ op: fc.constant('traffic' as const), j: fc.nat(SERVICES - 1), v }) },
  { weight: 1, arbitrary: fc.record({ op: fc.constant('rateLimit' as const), i: fc.nat(ROUTES - 1), v }) },
  { weight: 1, arbitrary: fc.record({ op: fc.constant('mesh' as const), v }) },
  { weight: 1, arbitrary: fc.record({ op: fc.constant('gateway' as const), v }) },
  {
    weight: 2,
    arbitrary: fc.record({
      op: fc.constant('remove' as const),
      what: fc.constantFrom('route' as const, 'service' as const, 'traffic' as const, 'rateLimit' as const),
      n: fc.nat(ROUTES - 1),
    }),
  },
  {
    weight: 2,
    arbitrary: fc.record({
      op: fc.constant('break' as const),
      what: fc.constantFrom('route' as const, 'service' as const),
      n: fc.nat(ROUTES - 1),
      how: fc.nat(2),
    }),
  },
);

/** Writes or removes one file of the directory; returns its path. */
function apply(dir: string, e: Edit): string {
  const file = (sub: string, name: string) => path.join(dir, sub, `${name}.yaml`);
  const write = (f: string, text: string) => {
    // As editors save: the new text under another name (not a policy file), renamed into place.
    writeFileSync(`${f}.next`, text);
    renameSync(`${f}.next`, f);
    return f;
  };
  switch (e.op) {
    case 'route':
      return write(file('routes', `r${e.i}`), routeText(e.i, e.v));
    case 'service':
      return write(file('services', `svc-${e.j}`), serviceText(e.j, e.v));
    case 'traffic':
      return write(file('policies', `tp-${e.j}`), trafficText(e.j, e.v));
    case 'rateLimit':
      return write(file('policies', `rl-${e.i}`), rateLimitText(e.i, e.v));
    case 'mesh':
      return write(path.join(dir, 'mesh.yaml'), meshText(e.v));
    case 'gateway':
      return write(path.join(dir, 'gateway.yaml'), gatewayText(e.v));
    case 'remove': {
      const f =
        e.what === 'route'
          ? file('routes', `r${e.n}`)
          : e.what === 'service'
            ? file('services', `svc-${e.n % SERVICES}`)
            : e.what === 'traffic'
              ? file('policies', `tp-${e.n % SERVICES}`)
              : file('policies', `rl-${e.n}`);
      rmSync(f, { force: true });
      return f;
    }
    case 'break': {
      // A YAML syntax error, a schema error, or a reference to nothing.
      const f = e.what === 'route' ? file('routes', `r${e.n}`) : file('services', `svc-${e.n % SERVICES}`);
      const text = e.what === 'route' ? routeText(e.n, 0) : serviceText(e.n % SERVICES, 0);
      return write(
        f,
        e.how === 0
          ? 'kind: [\n'
          : e.how === 1
            ? text.replace('port: 8080', 'port: -1').replace('rules:', 'rulez:')
            : text.replace(/name: svc-\d/g, 'name: nowhere'),
      );
    }
  }
}

function initial(dir: string): void {
  for (const sub of ['routes', 'services', 'policies']) mkdirSync(path.join(dir, sub));
  writeFileSync(path.join(dir, 'mesh.yaml'), meshText(0));
  writeFileSync(path.join(dir, 'gateway.yaml'), gatewayText(0));
  for (let j = 0; j < SERVICES; j++) writeFileSync(path.join(dir, 'services', `svc-${j}.yaml`), serviceText(j, j));
  for (let i = 0; i < ROUTES; i++) writeFileSync(path.join(dir, 'routes', `r${i}.yaml`), routeText(i, i));
}

const logger = createLogger({ level: 'silent' });

test('incremental reloads serve exactly what a from-scratch compile of the same files serves, after every edit', { timeout: 300_000 }, async () => {
  let steps = 0;
  let rejected = 0;
  await fc.assert(
    fc.asyncProperty(fc.array(edit, { minLength: 1, maxLength: 12 }), async (edits) => {
      const dir = mkdtempSync(path.join(tmpdir(), 'sb-equiv-'));
      try {
        initial(dir);
        const cache = new SnapshotCache();
        const live = new Pipeline({ policyDir: dir, cache, logger });
        assert.ok((await live.reload()).applied, 'the starting directory is valid');
        for (const e of edits) {
          const changed = apply(dir, e);
          const r = await live.reload({ paths: new Set([changed]), full: false });
          const freshCache = new SnapshotCache();
          const fresh = await new Pipeline({ policyDir: dir, cache: freshCache, logger }).reload();
          steps++;
          assert.deepEqual(r.errors.map(formatPolicyError), fresh.errors.map(formatPolicyError), `the same verdict after ${JSON.stringify(e)}`);
          assert.equal(r.applied, fresh.applied);
          if (!fresh.applied) {
            rejected++;
            continue;
          }
          assert.deepEqual(served(cache), served(freshCache), `the same resources after ${JSON.stringify(e)}`);
        }
      } finally {
        rmSync(dir, { recursive: true, force: true });
      }
    }),
    { seed: SEED, numRuns: RUNS },
  );
  // The sequences reached both sides: invalid directories, and valid ones compared.
  assert.ok(rejected > 0 && steps - rejected > RUNS, `${steps} steps, ${rejected} rejected`);
});
