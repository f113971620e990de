// `signalbox status`: the table it prints from /api/proxies (pure rendering; the real command
// against real Envoys runs in test/integration/dashboard.test.ts).
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { renderStatus, statusWord, untilText, type ProxyJson } from '../../src/cli/status.js';

const NOW = Date.parse('2026-01-01T00:00:00Z');

const proxies: ProxyJson[] = [
  {
    id: 'public-a',
    role: 'gateway',
    name: 'public',
    group: 'gateway/public',
    protocol: 'sotw',
    state: 'SYNCED',
    types: { cluster: { sentVersion: 'aaaaaaaa11', ackedVersion: 'aaaaaaaa11' }, listener: { sentVersion: 'bbbbbbbb22', ackedVersion: 'bbbbbbbb22' } },
    certificate: { identity: 'spiffe://signalbox.local/gateway/public', notAfter: '2026-01-01T05:30:00Z' },
  },
  {
    id: 'orders-1',
    role: 'sidecar',
    name: 'orders',
    group: 'sidecar/orders/1/2/3',
    protocol: 'delta',
    state: 'PENDING',
    types: { cluster: { sentVersion: 'cccccccc33', ackedVersion: 'dddddddd44' }, route: { sentVersion: 'eeeeeeee55' } },
    certificate: { notAfter: '2026-01-03T02:00:00Z' },
  },
  {
    id: 'lab-1',
    role: 'gateway',
    name: 'lab',
    group: 'gateway/lab',
    protocol: 'sotw',
    state: 'NACKED',
    types: { route: { sentVersion: 'ffffffff66', ackedVersion: '1111111177', lastNack: { version: 'ffffffff66', message: "regex '[a-z]{300}'\n RE2 program size", sources: ['policies/lab.yaml'], resources: ['lab/http'] } } },
  },
];

describe('signalbox status', () => {
  test('one row per proxy with ACKed versions, SYNCED / STALE / NACKED and certificate expiry', () => {
    const out = renderStatus(proxies, NOW);
    const lines = out.split('\n');
    assert.match(lines[0]!, /^PROXY\s+ROLE\s+XDS\s+CDS\s+EDS\s+LDS\s+RDS\s+SDS\s+STATUS\s+CERT EXPIRES$/);
    assert.match(lines[1]!, /^public-a\s+gateway\/public\s+sotw\s+aaaaaaaa\s+-\s+bbbbbbbb\s+-\s+-\s+SYNCED\s+5h30m$/);
    assert.match(lines[2]!, /^orders-1\s+sidecar\/orders\s+delta\s+dddddddd\*\s+-\s+-\s+none\*\s+-\s+STALE\s+2d2h$/);
    assert.match(lines[3]!, /^lab-1\s+gateway\/lab\s+sotw\s+-\s+-\s+-\s+11111111!\s+-\s+NACKED\s+-$/);
    assert.match(out, /3 proxies: 1 synced, 1 stale, 1 NACKed/);
    assert.match(out, /lab-1: route ffffffff NACKED \(from policies\/lab\.yaml\)\n  regex '\[a-z\]\{300\}' RE2 program size/);
    // Columns line up.
    const statusCol = lines[0]!.indexOf('STATUS');
    for (const l of lines.slice(1, 4)) assert.match(l.slice(statusCol), /^(SYNCED|STALE|NACKED)/);
  });

  test('words and durations', () => {
    assert.equal(statusWord(proxies[1]!), 'STALE');
    assert.equal(untilText('2025-12-31T00:00:00Z', NOW), 'EXPIRED');
    assert.equal(untilText('2026-01-01T00:04:05Z', NOW), '4m5s');
    assert.equal(untilText(undefined, NOW), '-');
  });
});
