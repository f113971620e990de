// The proxies `signalbox status` is tested with: a synced gateway, a sidecar waiting for ACKs, and a
// gateway whose last route push was NACKed. status.test.ts renders them, and replicas-status.test.ts
// checks that the table without replicas stays byte for byte what it was before replicas existed.
import type { ProxyJson } from '../../src/cli/status.js';

/** The clock the fixture's certificate expiries are read against. */
export const STATUS_NOW = Date.parse('2026-01-01T00:00:00Z');

export const STATUS_PROXIES: readonly ProxyJson[] = [
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
    types: {
      route: {
        sentVersion: 'ffffffff66',
        ackedVersion: '1111111177',
        lastNack: { version: 'ffffffff66', message: "regex '[a-z]{300}'\n RE2 program size", sources: ['policies/lab.yaml'], resources: ['lab/http'] },
      },
    },
  },
];
