// Regression (issue 15): an unnamed rule used to be called `rule-<index>`, so an HTTPRoute with a
// rule named `rule-1` and an unnamed second rule gave both the route name `app/rule-1/match-0`, and
// a RateLimitPolicy aimed at `sectionName: rule-1` limited the second rule as well. Proven through
// real Envoy: the limit hits rule `rule-1` only; the unnamed rule (now `app/#1/match-0`) is not
// limited, and Envoy holds two distinct route names.
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { startControlUpstream, type ControlUpstream } from '../helpers/control-upstream.js';
import { startGatewayEnv, type GatewayEnv } from '../helpers/gateway-env.js';
import { waitFor } from '../helpers/net.js';
import { closeClients, get } from '../helpers/ratelimit-client.js';

/** A bucket this small and this slow to refill cannot refill during the test. */
const LIMIT = 3;

function policies(port: number, up: ControlUpstream): Record<string, string> {
  return {
    'app.yaml': `apiVersion: signalbox.dev/v1alpha1
kind: Service
metadata: { name: app }
spec:
  port: 8080
  endpoints: [ { address: 127.0.0.1, port: ${up.port} } ]
---
apiVersion: signalbox.dev/v1alpha1
kind: Gateway
metadata: { name: gateway }
spec:
  listeners: [ { name: http, port: ${port}, protocol: HTTP } ]
---
apiVersion: signalbox.dev/v1alpha1
kind: HTTPRoute
metadata: { name: app }
spec:
  parentRefs: [ { kind: Gateway, name: gateway } ]
  rules:
    - name: rule-1
      matches: [ { path: { value: /limited } } ]
      backendRefs: [ { name: app } ]
    - matches: [ { path: { value: /open } } ]
      backendRefs: [ { name: app } ]
---
apiVersion: signalbox.dev/v1alpha1
kind: RateLimitPolicy
metadata: { name: rule-one }
spec:
  targetRef: { kind: HTTPRoute, name: app, sectionName: rule-1 }
  local: { requests: ${LIMIT}, per: 1h }
`,
  };
}

describe('sectionName rule-1 through real Envoy, beside an unnamed rule', () => {
  let env: GatewayEnv;
  let up: ControlUpstream;

  before(async () => {
    up = await startControlUpstream('app');
    env = await startGatewayEnv({ name: 'rule-names', files: (port) => policies(port, up) });
    await waitFor(async () => (await get(env.gatewayPort, '/open')).status === 200, { what: 'the gateway serving', timeoutMs: 15_000 });
  });

  after(async () => {
    await env?.stop();
    await up?.close();
    closeClients();
  });

  test("Envoy holds two distinct route names: the user's rule-1 and the unnamed rule #1", async () => {
    const dump = JSON.parse(await env.envoy.admin('/config_dump?resource=dynamic_route_configs')) as {
      configs: { route_config: { virtual_hosts: { routes: { name: string }[] }[] } }[];
    };
    const names = dump.configs.flatMap((c) => c.route_config.virtual_hosts.flatMap((v) => v.routes.map((r) => r.name))).sort();
    assert.deepEqual(names, ['app/#1/match-0', 'app/rule-1/match-0']);
  });

  test('the limit hits rule rule-1 only: the unnamed rule is never limited', async () => {
    const limited = [];
    for (let i = 0; i <= LIMIT; i++) limited.push(await get(env.gatewayPort, '/limited'));
    assert.deepEqual(
      limited.map((r) => r.status),
      [...Array(LIMIT).fill(200), 429],
      'rule-1 allows its bucket, then 429',
    );
    assert.equal(limited[LIMIT]!.headers['x-ratelimit-policy'], 'rule-one');
    // Many more requests than the bucket holds, on the unnamed rule, while rule-1's bucket is empty.
    for (let i = 0; i < 4 * LIMIT; i++) {
      const r = await get(env.gatewayPort, '/open');
      assert.equal(r.status, 200, `request ${i + 1} to the unnamed rule`);
      assert.equal(r.headers['x-ratelimit-policy'], undefined, 'no limit applies to the unnamed rule');
    }
    assert.equal((await get(env.gatewayPort, '/limited')).status, 429, 'rule-1 is still limited');
  });
});
