// The rate-limit service without Redis: its answers decode as Envoy's RateLimitResponse, the
// limit table follows the model, bad calls are refused with a gRPC status (never a crash), and
// with Redis unreachable a call answers by its limits' failureMode.
import assert from 'node:assert/strict';
import { after, describe, test } from 'node:test';
import prom from 'prom-client';
import { GrpcError, GrpcStatus } from '../../src/grpc/unary-server.js';
import { createLogger } from '../../src/observability/logger.js';
import { encodeRateLimitResponse } from '../../src/ratelimit/codec.js';
import { limitTable, RateLimitService } from '../../src/ratelimit/service.js';
import { redactRedisUrl } from '../../src/ratelimit/redis-store.js';
import { lookupType } from '../../src/xds/resources/protos.js';
import { doc, docs, policyDir, removePolicyDirs, validateDir } from './policy-dir.js';

after(removePolicyDirs);

const FILES = {
  'a.yaml': docs(
    doc('Service', 'orders', '{ port: 8080, endpoints: [ { address: 127.0.0.1, port: 9001 } ] }'),
    doc('Gateway', 'public', '{ listeners: [ { name: http, port: 8080, protocol: HTTP } ] }'),
    doc(
      'RateLimitPolicy',
      'open',
      '{ targetRef: { kind: Gateway, name: public }, global: { limits: [ { requests: 5, per: minute, by: { header: x-key } }, { requests: 100, per: day } ] } }',
    ),
    doc(
      'RateLimitPolicy',
      'closed',
      '{ targetRef: { kind: Service, name: orders }, global: { failureMode: deny, limits: [ { requests: 1, per: second, by: { path: true } } ] } }',
    ),
  ),
};

describe('rate-limit service', () => {
  test('an answer encodes as the RateLimitResponse Envoy reads', () => {
    const bytes = encodeRateLimitResponse({
      overall: 'OVER_LIMIT',
      statuses: [
        {
          code: 'OVER_LIMIT',
          current_limit: { name: 'p', requests_per_unit: 10, unit: 1 },
          limit_remaining: 0,
          duration_until_reset: { seconds: 0, nanos: 250_000_000 },
        },
        { code: 'OK' },
      ],
      headers: [{ key: 'retry-after', value: '1' }],
    });
    const T = lookupType('envoy.service.ratelimit.v3.RateLimitResponse');
    const o = T.toObject(T.decode(bytes), { enums: String, defaults: false }) as any;
    assert.equal(o.overall_code, 'OVER_LIMIT');
    assert.equal(o.statuses[0].code, 'OVER_LIMIT');
    assert.deepEqual(o.statuses[0].current_limit, { name: 'p', requests_per_unit: 10, unit: 'SECOND' });
    assert.equal(o.statuses[0].duration_until_reset.nanos, 250_000_000);
    assert.equal(o.statuses[1].code, 'OK');
    assert.deepEqual(o.response_headers_to_add, [{ key: 'retry-after', value: '1' }]);
  });

  test('the limit table and failure modes come from the model', async () => {
    const { model } = await validateDir(policyDir(FILES));
    const t = limitTable(model!);
    assert.deepEqual([...t.keys()].sort(), ['closed/0', 'open/0', 'open/1']);
    assert.deepEqual(t.get('open/1'), { id: 'open/1', policy: 'open', requests: 100, unit: 'day', windowMs: 86_400_000, failureMode: 'allow', by: 'none' });
    assert.equal(t.get('closed/0')!.failureMode, 'deny');
  });

  test('Redis unreachable: allow limits answer OK, a deny limit makes the call UNAVAILABLE; a bad domain is INVALID_ARGUMENT', async () => {
    const { model } = await validateDir(policyDir(FILES));
    // Port 1 on loopback: nothing listens, every command fails at once (no offline queue).
    const svc = new RateLimitService({ logger: createLogger({ level: 'silent' }), redis: { url: 'redis://:hunter2@127.0.0.1:1' } });
    try {
      svc.update(model!);
      const allow = await svc.shouldRateLimit({
        domain: 'signalbox',
        descriptors: [
          {
            entries: [
              { key: 'signalbox_limit', value: 'open/0' },
              { key: 'header', value: 'k' },
            ],
          },
        ],
      });
      assert.equal(allow.overall, 'OK');
      await assert.rejects(
        svc.shouldRateLimit({
          domain: 'signalbox',
          descriptors: [
            {
              entries: [
                { key: 'signalbox_limit', value: 'closed/0' },
                { key: 'path', value: '/x?y=1' },
              ],
            },
          ],
        }),
        (e: unknown) => e instanceof GrpcError && e.code === GrpcStatus.UNAVAILABLE,
      );
      await assert.rejects(
        svc.shouldRateLimit({ domain: 'other', descriptors: [] }),
        (e: unknown) => e instanceof GrpcError && e.code === GrpcStatus.INVALID_ARGUMENT,
      );
      // An unknown limit (a policy just removed) is not counted and needs no Redis.
      assert.equal(
        (await svc.shouldRateLimit({ domain: 'signalbox', descriptors: [{ entries: [{ key: 'signalbox_limit', value: 'gone/0' }] }] })).overall,
        'OK',
      );
      assert.ok(!JSON.stringify(svc.redisStatus()).includes('hunter2'));
      assert.equal(svc.redisStatus().url, 'redis://:***@127.0.0.1:1');
      // What /api/ratelimit and the dashboard show: the decisions per policy, Redis's failed commands.
      const byPolicy = Object.fromEntries(svc.policies().map((p) => [p.policy, p.decisions]));
      assert.deepEqual(byPolicy, {
        closed: { allowed: 0, limited: 0, failureAllowed: 0, failureDenied: 1 },
        open: { allowed: 0, limited: 0, failureAllowed: 1, failureDenied: 0 },
      });
      const redis = svc.redisStatus();
      assert.equal(redis.commands, 2);
      assert.equal(redis.errors, 2);
      assert.equal(
        Object.values(redis.errorsByReason).reduce((a, b) => a + b, 0),
        2,
      );
      assert.equal(redis.latencyMs, undefined, 'no successful command, no latency');
      // A policy that is gone loses its counts; one that stays keeps them.
      const { model: without } = await validateDir(
        policyDir({
          'a.yaml': FILES['a.yaml']
            .split('---')
            .filter((d) => !/name: closed/.test(d))
            .join('---'),
        }),
      );
      svc.update(without!);
      assert.deepEqual(
        svc.policies().map((p) => [p.policy, p.decisions.failureAllowed]),
        [['open', 1]],
      );
    } finally {
      await svc.close();
    }
  });

  test('per-call counts reach /metrics when it is read, and stay after their policy is removed', async () => {
    const { model } = await validateDir(policyDir(FILES));
    const registry = new prom.Registry();
    const svc = new RateLimitService({ logger: createLogger({ level: 'silent' }), redis: { url: 'redis://127.0.0.1:1' }, registry });
    const Req = lookupType('envoy.service.ratelimit.v3.RateLimitRequest');
    const call = (o: object) => (svc as any).handle(Buffer.from(Req.encode(Req.fromObject({ domain: 'signalbox', ...o })).finish()));
    try {
      svc.update(model!);
      await call({
        descriptors: [
          {
            entries: [
              { key: 'signalbox_limit', value: 'open/0' },
              { key: 'header', value: 'k' },
            ],
          },
        ],
      });
      await call({
        descriptors: [
          {
            entries: [
              { key: 'signalbox_limit', value: 'open/0' },
              { key: 'header', value: 'k' },
            ],
          },
        ],
      });
      await assert.rejects(
        call({
          descriptors: [
            {
              entries: [
                { key: 'signalbox_limit', value: 'closed/0' },
                { key: 'path', value: '/x' },
              ],
            },
          ],
        }),
      );
      // Nothing to count (a limit just removed): answered in the same turn, no promise.
      const unknown = call({ descriptors: [{ entries: [{ key: 'signalbox_limit', value: 'gone/0' }] }] });
      assert.ok(unknown instanceof Uint8Array, 'answered synchronously');
      await assert.rejects(
        async () => (svc as any).handle(Buffer.from([0xff])),
        (e: unknown) => e instanceof GrpcError && e.code === GrpcStatus.INVALID_ARGUMENT,
      );
      let text = await registry.metrics();
      assert.match(text, /signalbox_ratelimit_decisions_total\{policy="open",result="failure_allowed"\} 2\n/);
      assert.match(text, /signalbox_ratelimit_decisions_total\{policy="closed",result="failure_denied"\} 1\n/);
      assert.doesNotMatch(text, /result="allowed"/, 'a result never decided has no series');
      assert.match(text, /signalbox_ratelimit_calls_total\{result="ok"\} 3\n/);
      assert.match(text, /signalbox_ratelimit_calls_total\{result="unavailable"\} 1\n/);
      assert.match(text, /signalbox_ratelimit_calls_total\{result="error"\} 1\n/);
      assert.match(text, /signalbox_ratelimit_local_cache_hits_total 0\n/);
      const { model: without } = await validateDir(
        policyDir({
          'a.yaml': FILES['a.yaml']
            .split('---')
            .filter((d) => !/name: closed/.test(d))
            .join('---'),
        }),
      );
      svc.update(without!);
      text = await registry.metrics();
      assert.match(text, /signalbox_ratelimit_decisions_total\{policy="closed",result="failure_denied"\} 1\n/, 'a counter keeps its series');
    } finally {
      await svc.close();
    }
  });

  test('the Redis URL is shown without its password', () => {
    assert.equal(redactRedisUrl('rediss://user:s3cret@redis.internal:6380/2'), 'rediss://user:***@redis.internal:6380/2');
    assert.equal(redactRedisUrl('not a url :s3cret'), '(not a valid URL)');
  });
});
