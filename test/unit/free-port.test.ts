import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { describe, test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { freePort } from '../helpers/net.js';

const claims = path.join(os.tmpdir(), 'signalbox-test-ports');
const here = path.dirname(fileURLToPath(import.meta.url));

describe('test ports', () => {
  test('come from below the ephemeral range, are never repeated, and are claimed for other test processes', async () => {
    const low = Number(readFileSync('/proc/sys/net/ipv4/ip_local_port_range', 'utf8').trim().split(/\s+/)[0]);
    const ports = [];
    for (let i = 0; i < 50; i++) ports.push(await freePort());
    assert.equal(new Set(ports).size, 50);
    for (const p of ports) {
      assert.ok(p >= 10_000 && p < low, `port ${p} outside 10000-${low - 1}`);
      assert.equal(readFileSync(path.join(claims, String(p)), 'utf8'), String(process.pid));
    }
    // Another process asking for 3,000 ports (without claims, 50 of ours would collide with near certainty) never gets one of ours, and releases its own on exit.
    const helper = path.join(here, '..', 'helpers', 'net.js');
    const out = execFileSync(
      process.execPath,
      [
        '--input-type=module',
        '-e',
        `const { freePort } = await import(${JSON.stringify(helper)}); const a = []; for (let i = 0; i < 3000; i++) a.push(await freePort()); console.log(a.join(','));`,
      ],
      { encoding: 'utf8' },
    );
    const theirs = out.trim().split(',').map(Number);
    assert.equal(theirs.length, 3000);
    for (const p of theirs) {
      assert.ok(!ports.includes(p), `port ${p} given to two processes`);
      assert.ok(!existsSync(path.join(claims, String(p))), `claim on ${p} not released at exit`);
    }
  });
});
