// Routes and their backends churn under steady traffic through a real Envoy gateway (issue 21), in
// SotW and in Delta. `/stable` never changes; `/moving` always exists, but every ~250 ms its two
// weighted backends are replaced by two Services with new names (so new clusters appear and the old
// ones go), its weights change, and 1-5 extra routes come and go. The policy file is written under
// a temporary name and renamed into place, as editors and config tools do.
//
// Envoy answers 503 (empty body) to a request whose route names a cluster it does not have yet or
// that is still warming, and a request in flight to a cluster that is removed can fail too. Routes
// must therefore wait until the proxy has ACKed the clusters they name and their endpoints, and
// clusters must leave only after the routes moved away (plus a drain). Required: 0 failed requests
// on both routes, every edit applied, and the final edit live.
import assert from 'node:assert/strict';
import http from 'node:http';
import { renameSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { after, describe, test } from 'node:test';
import { startGatewayEnv, type GatewayEnv } from '../helpers/gateway-env.js';
import { waitFor } from '../helpers/net.js';
import { startUpstream, type Upstream } from '../helpers/upstream.js';

const SECONDS = Number(process.env.SIGNALBOX_CHURN_SECONDS ?? 15);
const EDIT_MS = 250;
const CLIENTS = 4;

function policy(port: number, ups: Upstream[], gen: number): string {
  const a = `m${gen}-a`;
  const b = `m${gen}-b`;
  const w = 10 + ((gen * 37) % 80);
  const extras = 1 + (gen % 5);
  let y = `apiVersion: signalbox.dev/v1alpha1
kind: Gateway
metadata: { name: gateway }
spec:
  listeners: [ { name: http, port: ${port}, protocol: HTTP } ]
---
apiVersion: signalbox.dev/v1alpha1
kind: Service
metadata: { name: stable }
spec: { port: 8080, endpoints: [ { address: 127.0.0.1, port: ${ups[0]!.port} } ] }
---
apiVersion: signalbox.dev/v1alpha1
kind: Service
metadata: { name: ${a} }
spec: { port: 8080, endpoints: [ { address: 127.0.0.1, port: ${ups[1]!.port} } ] }
---
apiVersion: signalbox.dev/v1alpha1
kind: Service
metadata: { name: ${b} }
spec: { port: 8080, endpoints: [ { address: 127.0.0.1, port: ${ups[2]!.port} } ] }
---
apiVersion: signalbox.dev/v1alpha1
kind: HTTPRoute
metadata: { name: stable }
spec:
  parentRefs: [ { kind: Gateway, name: gateway } ]
  rules: [ { matches: [ { path: { value: /stable } } ], backendRefs: [ { name: stable } ] } ]
---
apiVersion: signalbox.dev/v1alpha1
kind: HTTPRoute
metadata: { name: moving }
spec:
  parentRefs: [ { kind: Gateway, name: gateway } ]
  rules:
    - matches: [ { path: { value: /moving } } ]
      backendRefs: [ { name: ${a}, weight: ${w} }, { name: ${b}, weight: ${100 - w} } ]
`;
  for (let i = 0; i < extras; i++) {
    y += `---
apiVersion: signalbox.dev/v1alpha1
kind: HTTPRoute
metadata: { name: extra-${gen}-${i} }
spec:
  parentRefs: [ { kind: Gateway, name: gateway } ]
  rules: [ { matches: [ { path: { value: /extra-${gen}-${i} } } ], backendRefs: [ { name: ${i % 2 ? a : b} } ] } ]
`;
  }
  return y;
}

interface Tally {
  ok: number;
  failed: number;
  statuses: Map<string, number>;
}

function get(agent: http.Agent, port: number, p: string): Promise<string> {
  return new Promise((resolve) => {
    const req = http.get({ host: '127.0.0.1', port, path: p, agent }, (res) => {
      res.resume();
      res.on('end', () => resolve(String(res.statusCode)));
      res.on('error', () => resolve('response-error'));
    });
    req.on('error', (e: NodeJS.ErrnoException) => resolve(e.code ?? 'error'));
  });
}

async function churn(mode: 'sotw' | 'delta'): Promise<{ tallies: Record<string, Tally>; edits: number; env: GatewayEnv; ups: Upstream[]; lastGen: number }> {
  const ups = [await startUpstream('stable'), await startUpstream('a'), await startUpstream('b')];
  let gen = 0;
  const env = await startGatewayEnv({ name: `churn-${mode}`, delta: mode === 'delta', files: (port) => ({ 'routes.yaml': policy(port, ups, gen) }) });
  const port = env.gatewayPort;
  await waitFor(async () => (await get(new http.Agent(), port, '/moving')) === '200', { what: 'the gateway serving /moving', timeoutMs: 20_000 });

  const tallies: Record<string, Tally> = { '/stable': { ok: 0, failed: 0, statuses: new Map() }, '/moving': { ok: 0, failed: 0, statuses: new Map() } };
  const deadline = Date.now() + SECONDS * 1000;
  let stop = false;
  const client = async () => {
    const agent = new http.Agent({ keepAlive: true, maxSockets: 1 });
    let i = 0;
    while (!stop) {
      const p = i++ % 2 ? '/stable' : '/moving';
      const s = await get(agent, port, p);
      const t = tallies[p]!;
      if (s === '200') t.ok++;
      else {
        t.failed++;
        t.statuses.set(s, (t.statuses.get(s) ?? 0) + 1);
      }
    }
    agent.destroy();
  };
  const clients = Array.from({ length: CLIENTS }, client);
  let edits = 0;
  const file = path.join(env.dir, 'routes.yaml');
  while (Date.now() < deadline) {
    await new Promise((r) => setTimeout(r, EDIT_MS));
    gen++;
    const tmp = path.join(env.dir, `.routes.yaml.${gen}.tmp`);
    writeFileSync(tmp, policy(port, ups, gen));
    renameSync(tmp, file);
    edits++;
  }
  // Traffic goes on until the last edit is live, so the final pushes are under load too.
  const lastGen = gen;
  await waitFor(async () => (await get(new http.Agent(), port, `/extra-${lastGen}-0`)) === '200', { what: 'the last edit live', timeoutMs: 20_000 });
  stop = true;
  await Promise.all(clients);
  return { tallies, edits, env, ups, lastGen };
}

function show(t: Tally): string {
  return `${t.failed} failed of ${t.ok + t.failed}${t.failed ? ` (${[...t.statuses].map(([s, n]) => `${s}: ${n}`).join(', ')})` : ''}`;
}

for (const mode of ['sotw', 'delta'] as const) {
  describe(`route churn under traffic through real Envoy (${mode})`, () => {
    let run: Awaited<ReturnType<typeof churn>> | undefined;
    after(async () => {
      await run?.env.stop();
      for (const u of run?.ups ?? []) await u.close();
    });

    test(`${SECONDS} s of edits every ${EDIT_MS} ms: 0 failed requests on /stable and /moving`, async () => {
      run = await churn(mode);
      const { tallies, edits } = run;
      process.stderr.write(`route churn (${mode}, ${SECONDS} s, ${edits} edits): /stable ${show(tallies['/stable']!)}; /moving ${show(tallies['/moving']!)}\n`);
      assert.ok(edits >= (SECONDS * 1000) / EDIT_MS / 2, `at least half the planned edits were made (${edits})`);
      assert.ok(tallies['/moving']!.ok > 100 && tallies['/stable']!.ok > 100, 'traffic flowed on both routes');
      assert.equal(tallies['/stable']!.failed, 0, `/stable: ${show(tallies['/stable']!)}`);
      assert.equal(tallies['/moving']!.failed, 0, `/moving: ${show(tallies['/moving']!)}`);
    });

    test('the proxy ends on the last edit, and the clusters of earlier edits are gone after the drain', async () => {
      assert.ok(run, 'the churn ran');
      const { env, lastGen } = run;
      await env.synced();
      await waitFor(
        async () => {
          const dump = JSON.parse(await env.envoy.admin('/config_dump?resource=dynamic_active_clusters')) as { configs: { cluster: { name: string } }[] };
          const names = dump.configs.map((c) => c.cluster.name).filter((n) => /m\d+-[ab]/.test(n));
          return names.length === 2 && names.every((n) => n.includes(`m${lastGen}-`));
        },
        { what: `only the clusters of edit ${lastGen} left`, timeoutMs: 20_000 },
      );
    });
  });
}
