// `signalbox status`: the table it prints from /api/proxies (pure rendering), and the bearer token
// it sends with --admin-token-file (against a stand-in admin API; the real command against real
// Envoys runs in test/integration/dashboard.test.ts).
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { createServer, type Server } from 'node:http';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { renderStatus, status, statusWord, untilText } from '../../src/cli/status.js';
import { STATUS_NOW, STATUS_PROXIES } from '../helpers/status-fixture.js';

const NOW = STATUS_NOW;

const proxies = [...STATUS_PROXIES];

describe('signalbox status', () => {
  test('one row per proxy with ACKed versions, SYNCED / PENDING / NACKED (the API words) and certificate expiry', () => {
    const out = renderStatus(proxies, NOW);
    const lines = out.split('\n');
    assert.match(lines[0]!, /^PROXY\s+ROLE\s+XDS\s+CDS\s+EDS\s+LDS\s+RDS\s+SDS\s+STATUS\s+CERT EXPIRES$/);
    assert.match(lines[1]!, /^public-a\s+gateway\/public\s+sotw\s+aaaaaaaa\s+-\s+bbbbbbbb\s+-\s+-\s+SYNCED\s+5h30m$/);
    assert.match(lines[2]!, /^orders-1\s+sidecar\/orders\s+delta\s+dddddddd\*\s+-\s+-\s+none\*\s+-\s+PENDING\s+2d2h$/);
    assert.match(lines[3]!, /^lab-1\s+gateway\/lab\s+sotw\s+-\s+-\s+-\s+11111111!\s+-\s+NACKED\s+-$/);
    assert.match(out, /3 proxies: 1 synced, 1 pending, 1 NACKed/);
    assert.match(out, /lab-1: route ffffffff NACKED \(from policies\/lab\.yaml\)\n {2}regex '\[a-z\]\{300\}' RE2 program size/);
    // Columns line up.
    const statusCol = lines[0]!.indexOf('STATUS');
    for (const l of lines.slice(1, 4)) assert.match(l.slice(statusCol), /^(SYNCED|PENDING|NACKED)/);
  });

  test('words and durations', () => {
    assert.equal(statusWord(proxies[1]!), 'PENDING', 'the same word as /api/proxies and the dashboard');
    assert.doesNotMatch(renderStatus(proxies, NOW), /stale/i);
    assert.equal(untilText('2025-12-31T00:00:00Z', NOW), 'EXPIRED');
    assert.equal(untilText('2026-01-01T00:04:05Z', NOW), '4m5s');
    assert.equal(untilText(undefined, NOW), '-');
  });
});

describe('signalbox status --admin-token-file', () => {
  const TOKEN = 'status-test-token-0123456789';
  let server: Server;
  let base = '';
  let dir = '';
  const seen: (string | undefined)[] = [];

  before(async () => {
    dir = mkdtempSync(path.join(os.tmpdir(), 'sb-status-'));
    // Like the admin API with --admin-token-file: 401 without the token.
    server = createServer((req, res) => {
      seen.push(req.headers.authorization);
      if (req.headers.authorization !== `Bearer ${TOKEN}`) {
        res.writeHead(401, { 'content-type': 'application/json', 'www-authenticate': 'Bearer realm="signalbox-admin"' }).end('{"error":"unauthorized"}');
        return;
      }
      res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify({ proxies: [proxies[0]] }));
    });
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    base = `http://127.0.0.1:${(server.address() as { port: number }).port}`;
  });
  after(async () => {
    await new Promise((r) => server.close(r));
    rmSync(dir, { recursive: true, force: true });
  });

  /** Runs `status` with its output captured and SIGNALBOX_ADMIN_TOKEN_FILE set as given. */
  async function runStatus(args: string[], envFile?: string): Promise<{ code: number; out: string; err: string }> {
    let out = '';
    let err = '';
    const saved = process.env.SIGNALBOX_ADMIN_TOKEN_FILE;
    if (envFile === undefined) delete process.env.SIGNALBOX_ADMIN_TOKEN_FILE;
    else process.env.SIGNALBOX_ADMIN_TOKEN_FILE = envFile;
    try {
      const code = await status(args, { out: (t) => (out += t), err: (t) => (err += t) });
      return { code, out, err };
    } finally {
      if (saved === undefined) delete process.env.SIGNALBOX_ADMIN_TOKEN_FILE;
      else process.env.SIGNALBOX_ADMIN_TOKEN_FILE = saved;
    }
  }

  test("sends the file's trimmed content as a bearer token, from the flag or SIGNALBOX_ADMIN_TOKEN_FILE", async () => {
    const file = path.join(dir, 'admin-token');
    writeFileSync(file, `${TOKEN}\n`, { mode: 0o600 });
    const r = await runStatus(['--admin', base, '--admin-token-file', file]);
    assert.equal(r.code, 0, r.err);
    assert.match(r.out, /^public-a\s+gateway\/public\s+sotw/m);
    assert.equal(seen.at(-1), `Bearer ${TOKEN}`);
    const viaEnv = await runStatus(['--admin', base, '--json'], file);
    assert.equal(viaEnv.code, 0, viaEnv.err);
    assert.equal(JSON.parse(viaEnv.out)[0].id, 'public-a');
    assert.equal(seen.at(-1), `Bearer ${TOKEN}`);
  });

  test('without the token, or with a wrong one, exits 2 and says what to do', async () => {
    const none = await runStatus(['--admin', base]);
    assert.equal(none.code, 2);
    assert.equal(seen.at(-1), undefined, 'no Authorization header without a token file');
    assert.match(none.err, /answered 401: the admin API requires a bearer token; give --admin-token-file FILE/);
    const wrong = path.join(dir, 'wrong-token');
    writeFileSync(wrong, 'not-the-token\n');
    const bad = await runStatus(['--admin', base, '--admin-token-file', wrong]);
    assert.equal(bad.code, 2);
    assert.match(bad.err, /answered 401: the token in --admin-token-file is not the one/);
  });

  test('an empty or missing token file is a flag error, before any request', async () => {
    const empty = path.join(dir, 'empty');
    writeFileSync(empty, ' \n');
    const requests = seen.length;
    await assert.rejects(runStatus(['--admin', base, '--admin-token-file', empty]), /--admin-token-file .* is empty/);
    await assert.rejects(runStatus(['--admin', base, '--admin-token-file', path.join(dir, 'absent')]), /cannot read it \(ENOENT\)/);
    assert.equal(seen.length, requests);
  });
});
