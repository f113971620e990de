// RateLimitPolicy on a Service: enforced on the inbound listener of its sidecars. A real gateway
// calls the Service through its real sidecar over mTLS; the 11th request of a burst is refused by
// the sidecar (429) and never reaches the app; another Service is not limited.
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { startEnvoy, type Envoy } from '../helpers/envoy.js';
import { startMeshApp, type MeshApp } from '../helpers/mesh-app.js';
import { freePort, waitFor } from '../helpers/net.js';
import { burst, closeClients, get } from '../helpers/ratelimit-client.js';
import { startSignalbox, type SignalboxProcess } from '../helpers/signalbox.js';

const LIMIT = 10;
const SERVICES = ['limited', 'open'] as const;
type Svc = (typeof SERVICES)[number];

describe('RateLimitPolicy on a Service, at its sidecars', () => {
  let dir: string;
  let sb: SignalboxProcess;
  let gwPort: number;
  const apps = {} as Record<Svc, MeshApp>;
  const sidecars: Envoy[] = [];
  let gateway: Envoy;

  before(async () => {
    const inbound = {} as Record<Svc, number>;
    const outbound = {} as Record<Svc, number>;
    for (const s of SERVICES) {
      inbound[s] = await freePort();
      outbound[s] = await freePort();
      apps[s] = await startMeshApp(s, () => outbound[s]);
    }
    gwPort = await freePort();
    dir = mkdtempSync(path.join(os.tmpdir(), 'sb-rl-sidecar-'));
    writeFileSync(
      path.join(dir, 'policies.yaml'),
      [
        ...SERVICES.map(
          (s) => `apiVersion: signalbox.dev/v1alpha1
kind: Service
metadata: { name: ${s} }
spec:
  port: 8080
  endpoints: [ { address: 127.0.0.1, port: ${apps[s].port}, sidecarPort: ${inbound[s]} } ]
`,
        ),
        `apiVersion: signalbox.dev/v1alpha1
kind: Gateway
metadata: { name: edge }
spec:
  listeners: [ { name: http, port: ${gwPort}, protocol: HTTP } ]
`,
        `apiVersion: signalbox.dev/v1alpha1
kind: HTTPRoute
metadata: { name: edge }
spec:
  parentRefs: [ { kind: Gateway, name: edge } ]
  rules:
    - { matches: [ { path: { value: /limited } } ], backendRefs: [ { name: limited } ] }
    - { matches: [ { path: { value: /open } } ], backendRefs: [ { name: open } ] }
`,
        `apiVersion: signalbox.dev/v1alpha1
kind: RateLimitPolicy
metadata: { name: limited-inbound }
spec:
  targetRef: { kind: Service, name: limited }
  local: { requests: ${LIMIT}, per: 1s }
`,
      ].join('---\n'),
    );
    sb = await startSignalbox({ policies: dir });
    for (const s of SERVICES) {
      sidecars.push(
        await startEnvoy({
          name: `${s}-rl-sidecar`,
          bootstrapYaml: await sb.bootstrap({
            sidecar: { service: s, instance: `${s}-1`, appPort: apps[s].port, inboundPort: inbound[s], outboundPort: outbound[s] },
          }),
        }),
      );
    }
    gateway = await startEnvoy({ name: 'rl-edge', bootstrapYaml: await sb.bootstrap({ gateway: 'edge', id: 'rl-edge-1' }) });
    await waitFor(async () => (await get(gwPort, '/open')).status === 200 && (await get(gwPort, '/limited')).status === 200, {
      what: 'gateway -> sidecars',
      timeoutMs: 20_000,
    });
  });

  after(async () => {
    closeClients();
    for (const e of [gateway, ...sidecars]) await e?.stop();
    await sb?.kill();
    for (const a of Object.values(apps)) await a?.close();
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  test(`the ${LIMIT + 1}th request in the window is refused by the sidecar and never reaches the app`, async () => {
    const appBefore = apps.limited.requests;
    let allowed = 0;
    let refused = 0;
    const replies = await burst(async () => {
      const r = await get(gwPort, '/limited');
      if (r.status === 200) allowed++;
      else refused++;
      return r;
    }, LIMIT);
    assert.deepEqual(
      replies.map((r) => r.status),
      [...Array(LIMIT).fill(200), 429],
    );
    const limited = replies[LIMIT]!;
    assert.equal(limited.headers['x-ratelimit-policy'], 'limited-inbound');
    assert.equal(limited.headers['x-ratelimit-limit'], String(LIMIT));
    assert.equal(limited.headers['x-ratelimit-remaining'], '0');
    assert.ok(refused >= 1);
    assert.equal(apps.limited.requests - appBefore, allowed, 'the app saw exactly the allowed requests; refused ones stopped at the sidecar');
    // Another Service behind the same gateway has no limit.
    for (let i = 0; i < LIMIT + 5; i++) assert.equal((await get(gwPort, '/open')).status, 200);
  });
});
