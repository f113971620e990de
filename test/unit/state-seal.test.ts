// The sealing of private keys kept in shared state: a wrong key, a value moved to another place
// and an altered value are each told apart, and nothing of the key or the plain text leaks.
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { describe, test } from 'node:test';
import { ErrorCode, SignalboxError } from '../../src/errors.js';
import { StateKey } from '../../src/state/seal.js';
import { checkStatePrefix } from '../../src/state/shared.js';

const PEM = '-----BEGIN PRIVATE KEY-----\nMIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQg\n-----END PRIVATE KEY-----\n';
const keyText = () => randomBytes(32).toString('base64');

describe('state key and sealing', () => {
  test('a sealed value opens with the same key at the same place, and holds no plain text', () => {
    const k = StateKey.parse(keyText(), 'test');
    const sealed = k.seal(PEM, 'ca#privateKey');
    assert.ok(!sealed.includes('PRIVATE KEY') && !sealed.includes('MIGHAgEA'), 'ciphertext only');
    assert.equal(k.open(sealed, 'ca#privateKey'), PEM);
    assert.notEqual(k.seal(PEM, 'ca#privateKey'), sealed, 'a fresh IV each time');
  });

  test("a key in hex and the same key in base64 are one key (same id, each opens the other's values)", () => {
    const raw = randomBytes(32);
    const hex = StateKey.parse(raw.toString('hex'), 'hex');
    const b64 = StateKey.parse(`${raw.toString('base64')}\n`, 'b64');
    assert.equal(hex.id, b64.id);
    assert.match(hex.id, /^[0-9a-f]{16}$/);
    assert.equal(b64.open(hex.seal('x', 'p'), 'p'), 'x');
  });

  test('a wrong key is an error naming both key ids, never a plain-text leak', () => {
    const a = StateKey.parse(keyText(), 'a');
    const b = StateKey.parse(keyText(), 'b');
    const sealed = a.seal(PEM, 'tokens/signing#privateKey');
    assert.throws(
      () => b.open(sealed, 'tokens/signing#privateKey'),
      (e: unknown) =>
        e instanceof SignalboxError &&
        e.code === ErrorCode.STATE &&
        e.message.includes(a.id) &&
        e.message.includes(b.id) &&
        /another state key/.test(e.message) &&
        !e.message.includes('PRIVATE'),
    );
  });

  test('a value moved to another place, or altered, does not open', () => {
    const k = StateKey.parse(keyText(), 'k');
    const sealed = k.seal(PEM, 'ca#privateKey');
    assert.throws(() => k.open(sealed, 'replicas/r1/xds-server#privateKey'), /does not decrypt/);
    const parts = sealed.split(':');
    const ct = Buffer.from(parts[3]!, 'base64');
    ct[0]! ^= 1;
    assert.throws(() => k.open([...parts.slice(0, 3), ct.toString('base64')].join(':'), 'ca#privateKey'), /does not decrypt/);
    assert.throws(() => k.open('-----BEGIN PRIVATE KEY-----', 'ca#privateKey'), /not a sealed value/);
    assert.throws(() => k.open(`${parts.slice(0, 3).join(':')}:AAAA`, 'ca#privateKey'), /cut short/);
  });

  test('key text that is not 256 bits is refused without echoing it', () => {
    for (const bad of ['', 'short', randomBytes(16).toString('hex'), randomBytes(31).toString('base64'), `${randomBytes(32).toString('hex')}00`]) {
      assert.throws(
        () => StateKey.parse(bad, 'SIGNALBOX_STATE_KEY'),
        (e: unknown) =>
          e instanceof SignalboxError &&
          e.code === ErrorCode.BAD_FLAG &&
          /SIGNALBOX_STATE_KEY must hold a 256-bit key/.test(e.message) &&
          (bad.length < 6 || !e.message.includes(bad)),
        JSON.stringify(bad),
      );
    }
  });

  test('load: the file first, else SIGNALBOX_STATE_KEY, else an error naming both ways', () => {
    const dir = mkdtempSync(path.join(os.tmpdir(), 'state-key-'));
    const file = path.join(dir, 'key');
    const text = keyText();
    writeFileSync(file, `${text}\n`, { mode: 0o600 });
    const other = keyText();
    assert.equal(StateKey.load(file, { SIGNALBOX_STATE_KEY: other }).id, StateKey.parse(text, 'x').id);
    assert.equal(StateKey.load(undefined, { SIGNALBOX_STATE_KEY: other }).id, StateKey.parse(other, 'x').id);
    assert.throws(() => StateKey.load(undefined, {}), /--state-key-file FILE .*SIGNALBOX_STATE_KEY/);
    assert.throws(() => StateKey.load(path.join(dir, 'missing'), {}), /cannot read the state key file .*missing.*ENOENT/);
  });

  test('--state-prefix must be a plain KV path', () => {
    assert.equal(checkStatePrefix('signalbox'), 'signalbox');
    assert.equal(checkStatePrefix('/mesh/prod/'), 'mesh/prod');
    for (const bad of ['', 'a//b', 'a/../b', 'a b', 'a?x=1']) assert.throws(() => checkStatePrefix(bad), /--state-prefix must be a Consul KV path/, bad);
  });
});
