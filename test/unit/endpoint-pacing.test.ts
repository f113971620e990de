// Endpoint pushes are paced: a change after a quiet spell goes out after the short debounce; changes
// that keep coming are gathered and pushed at most once per interval, each push carrying every
// change made meanwhile.
import assert from 'node:assert/strict';
import { after, test } from 'node:test';
import { Pipeline } from '../../src/controller/pipeline.js';
import { resolveServeConfig } from '../../src/config/settings.js';
import type { Instance } from '../../src/ir/types.js';
import { createLogger } from '../../src/observability/logger.js';
import { SnapshotCache } from '../../src/xds/cache/snapshot-cache.js';
import { TypeUrl } from '../../src/xds/resources/type-urls.js';
import { waitFor } from '../helpers/net.js';
import { doc, docs, policyDir, removePolicyDirs } from './policy-dir.js';

after(removePolicyDirs);

const inst = (port: number): Instance => ({ id: `i-${port}`, address: '127.0.0.1', port, labels: {}, health: 'HEALTHY' });

test('a burst of endpoint changes is pushed at most once per interval, nothing lost', async () => {
  const dir = policyDir({
    'a.yaml': docs(
      doc('Service', 'app', '{ port: 8080, endpoints: [ { address: 127.0.0.1, port: 9000 } ] }'),
      doc('Gateway', 'public', '{ listeners: [ { name: http, port: 8080, protocol: HTTP } ] }'),
      doc('HTTPRoute', 'r', '\n  parentRefs: [ { kind: Gateway, name: public } ]\n  rules: [ { backendRefs: [ { name: app } ] } ]'),
    ),
  });
  const cache = new SnapshotCache();
  const pipeline = new Pipeline({ policyDir: dir, cache, logger: createLogger({ level: 'silent' }), endpointDebounceMs: 1, endpointPushIntervalMs: 400 });
  assert.equal((await pipeline.reload()).applied, true);
  const pushes: number[] = [];
  const ports = () => {
    const r = cache.get('gateway/public')!.resources.get(TypeUrl.Endpoint)!.get('app')!;
    return ((r.printable.endpoints as { lb_endpoints: { endpoint: { address: { socket_address: { port_value: number } } } }[] }[])[0]?.lb_endpoints ?? []).map(
      (e) => e.endpoint.address.socket_address.port_value,
    );
  };
  cache.on('change', (c: { group: string; types: string[] }) => {
    if (c.group === 'gateway/public' && c.types.includes(TypeUrl.Endpoint)) pushes.push(ports().length);
  });

  // After a quiet spell: pushed after the debounce.
  pipeline.endpoints.set('app', [inst(9001)], 'test');
  await waitFor(async () => pushes.length === 1, { what: 'the first push' });
  // Changes right after it wait for the interval, and go out together.
  pipeline.endpoints.set('app', [inst(9001), inst(9002)], 'test');
  pipeline.endpoints.set('app', [inst(9001), inst(9002), inst(9003)], 'test');
  await new Promise((r) => setTimeout(r, 50));
  assert.equal(pushes.length, 1, 'no second push inside the interval');
  await waitFor(async () => pushes.length === 2, { what: 'the paced push', timeoutMs: 5_000 });
  assert.deepEqual(pushes, [1, 3], 'the paced push carries every change made meanwhile');
  assert.deepEqual(ports(), [9001, 9002, 9003]);
});

test('--endpoint-push-interval-ms (SIGNALBOX_ENDPOINT_PUSH_INTERVAL_MS): 250 by default, 0 allowed, checked', () => {
  assert.equal(resolveServeConfig({}, {}).endpointPushIntervalMs, 250);
  assert.equal(resolveServeConfig({ 'endpoint-push-interval-ms': '0' }, {}).endpointPushIntervalMs, 0);
  assert.equal(resolveServeConfig({}, { SIGNALBOX_ENDPOINT_PUSH_INTERVAL_MS: '1000' }).endpointPushIntervalMs, 1000);
  assert.throws(() => resolveServeConfig({ 'endpoint-push-interval-ms': '-5' }, {}), /--endpoint-push-interval-ms must be a whole number of milliseconds/);
});
