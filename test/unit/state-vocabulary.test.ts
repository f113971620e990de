// One vocabulary for proxy states: the admin API, `signalbox status` and the dashboard all use the
// words in PROXY_STATES (SYNCED / PENDING / NACKED), and nothing else (no istioctl "STALE").
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { describe, test } from 'node:test';
import { staticDir } from '../../src/admin/dashboard/routes.js';
import { renderStatus, statusWord, type ProxyJson } from '../../src/cli/status.js';
import { TypeUrl } from '../../src/xds/resources/type-urls.js';
import { PROXY_STATES, ProxyStatus } from '../../src/xds/server/proxy-status.js';

const ROOT = path.resolve(staticDir(), '..', '..', '..', '..');
const read = (rel: string) => readFileSync(path.join(ROOT, rel), 'utf8');
const STATES = new Set<string>(PROXY_STATES);

/** Words that name a proxy's sync state somewhere (the allowed ones and known synonyms). */
const STATE_LIKE = /\b(SYNCED|PENDING|NACKED|STALE|SYNCING|NOT_SENT|OUT_OF_SYNC|UNSYNCED|REJECTED|UNKNOWN)\b/g;

function stateWordsIn(text: string): string[] {
  return [...new Set([...text.matchAll(STATE_LIKE)].map((m) => m[1]!))];
}

describe('proxy state vocabulary', () => {
  test("PROXY_STATES is the API's word set", () => {
    assert.deepEqual([...PROXY_STATES], ['SYNCED', 'PENDING', 'NACKED']);
  });

  test('the admin API (ProxyStatus.state) only says PROXY_STATES words', () => {
    const seen = new Set<string>();
    const p = new ProxyStatus({ id: 'a', role: 'gateway', name: 'g', group: 'gateway/g' }, 'sotw', '127.0.0.1:1');
    seen.add(p.toJSON().state); // nothing sent
    const t = p.type(TypeUrl.Route);
    t.sent = { version: 'v1', nonce: '1', at: 1, resources: 1 };
    seen.add(p.toJSON().state); // sent, not ACKed
    t.nack = { version: 'v1', message: 'no', at: 2, resources: [], sources: [] };
    seen.add(p.toJSON().state);
    t.nack = undefined;
    t.acked = { version: 'v1', at: 3 };
    seen.add(p.toJSON().state);
    assert.deepEqual([...seen].sort(), [...PROXY_STATES].sort());
  });

  test("signalbox status prints the API's words", () => {
    const proxies: ProxyJson[] = PROXY_STATES.map((state, i) => ({
      id: `p${i}`,
      role: 'gateway',
      name: 'g',
      group: 'gateway/g',
      protocol: 'sotw',
      state,
      types: {},
    }));
    for (const p of proxies) assert.ok(STATES.has(statusWord(p)), statusWord(p));
    const out = renderStatus(proxies);
    for (const w of stateWordsIn(out)) assert.ok(STATES.has(w), `status output says ${w}`);
    assert.doesNotMatch(out, /\bstale\b/i);
  });

  for (const file of [
    'src/cli/status.ts',
    'src/admin/dashboard/static/app.js',
    'src/admin/dashboard/static/index.html',
    'src/admin/dashboard/routes.ts',
    'src/xds/server/proxy-status.ts',
  ]) {
    test(`${file} names states only from PROXY_STATES`, () => {
      const text = read(file);
      for (const w of stateWordsIn(text)) assert.ok(STATES.has(w), `${file} says ${w}`);
      // CSS classes and lower-case labels used for states.
      for (const m of text.matchAll(/state-([A-Za-z_]+)/g)) assert.ok(STATES.has(m[1]!), `${file}: class state-${m[1]}`);
      // Count labels such as `${n} stale`.
      assert.doesNotMatch(text, /\}\s*stale\b/i, `${file}: a "stale" count label`);
      if (file === 'src/cli/status.ts') assert.doesNotMatch(text, /\bstale\b/i, 'status.ts: no "stale" at all');
    });
  }

  test('the docs describe the same states', () => {
    const doc = read('docs/observability.md');
    for (const w of PROXY_STATES) assert.match(doc, new RegExp(`\\| \`${w}\` \\|`), `docs/observability.md states table lists ${w}`);
    assert.doesNotMatch(doc, /\bSTALE\b/);
  });
});
