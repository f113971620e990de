// Private keys kept in shared state (Consul KV) are sealed with AES-256-GCM under a key Signalbox
// is given out of band: a file (--state-key-file) or an environment variable (SIGNALBOX_STATE_KEY).
// A KV reader without that key gets ciphertext only. Each sealed value names the key it was sealed
// with by a short fingerprint, so a wrong key is told as such (never mistaken for a missing value,
// never a reason to make new keys), and is bound to its place in the store (additional data), so a
// value copied to another place does not open.
import { createCipheriv, createDecipheriv, createHash, randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { ErrorCode, SignalboxError } from '../errors.js';

const PREFIX = 'sb-sealed-v1';
const IV_BYTES = 12;
const TAG_BYTES = 16;

export class StateKey {
  private constructor(
    private readonly key: Buffer,
    /** A fingerprint of the key (not the key): 16 hex digits, safe to print. */
    readonly id: string,
  ) {}

  /** A key from its text: 32 bytes as 64 hex digits or as base64 (44 characters). `origin` names where it came from in errors. */
  static parse(text: string, origin: string): StateKey {
    const t = text.trim();
    let key: Buffer | undefined;
    if (/^[0-9a-fA-F]{64}$/.test(t)) key = Buffer.from(t, 'hex');
    else if (/^[A-Za-z0-9+/]{43}=$/.test(t)) key = Buffer.from(t, 'base64');
    // Never echo the value: a near-miss could still be most of a real key.
    if (key?.length !== 32)
      throw new SignalboxError(
        ErrorCode.BAD_FLAG,
        `${origin} must hold a 256-bit key as 64 hex digits or 44 base64 characters (make one with: openssl rand -base64 32); it holds something else (${t.length} characters)`,
      );
    const id = createHash('sha256').update('signalbox-state-key\0').update(key).digest('hex').slice(0, 16);
    return new StateKey(key, id);
  }

  /** The key from `file` if given, else from the environment variable SIGNALBOX_STATE_KEY; an error naming both when neither is set. */
  static load(file: string | undefined, env: NodeJS.ProcessEnv = process.env): StateKey {
    if (file) {
      let text: string;
      try {
        text = readFileSync(file, 'utf8');
      } catch (e) {
        throw new SignalboxError(
          ErrorCode.BAD_FLAG,
          `cannot read the state key file ${file} (--state-key-file): ${(e as NodeJS.ErrnoException).code ?? 'error'}`,
        );
      }
      return StateKey.parse(text, `the state key file ${file}`);
    }
    if (env.SIGNALBOX_STATE_KEY) return StateKey.parse(env.SIGNALBOX_STATE_KEY, 'SIGNALBOX_STATE_KEY');
    throw new SignalboxError(
      ErrorCode.BAD_FLAG,
      '--state consul needs the key that encrypts private keys in Consul: give --state-key-file FILE (SIGNALBOX_STATE_KEY_FILE) or SIGNALBOX_STATE_KEY (32 random bytes, e.g. openssl rand -base64 32); every replica needs the same key',
    );
  }

  /** Seals `plain` for the place `where` (e.g. "ca/key"). The result is printable text. */
  seal(plain: string, where: string): string {
    const iv = randomBytes(IV_BYTES);
    const c = createCipheriv('aes-256-gcm', this.key, iv);
    c.setAAD(Buffer.from(`${PREFIX}\0${where}`));
    const ct = Buffer.concat([c.update(plain, 'utf8'), c.final(), c.getAuthTag()]);
    return `${PREFIX}:${this.id}:${iv.toString('base64')}:${ct.toString('base64')}`;
  }

  /**
   * Opens a value sealed for `where`. A value sealed with another key, moved from another place,
   * or altered is an error saying which; its content is never printed.
   */
  open(sealed: string, where: string, label = where): string {
    const parts = sealed.split(':');
    if (parts.length !== 4 || parts[0] !== PREFIX)
      throw new SignalboxError(
        ErrorCode.STATE,
        `the shared state value ${label} is not a sealed value (${PREFIX}): it was written by something else or damaged`,
      );
    const [, id, ivText, ctText] = parts as [string, string, string, string];
    if (id !== this.id)
      throw new SignalboxError(
        ErrorCode.STATE,
        `the shared state value ${label} was encrypted with another state key (key id ${id.slice(0, 16)}; the key given has id ${this.id}): give every replica the same --state-key-file / SIGNALBOX_STATE_KEY`,
      );
    const iv = Buffer.from(ivText, 'base64');
    const ct = Buffer.from(ctText, 'base64');
    if (iv.length !== IV_BYTES || ct.length < TAG_BYTES) throw new SignalboxError(ErrorCode.STATE, `the shared state value ${label} is damaged (cut short)`);
    try {
      const d = createDecipheriv('aes-256-gcm', this.key, iv);
      d.setAAD(Buffer.from(`${PREFIX}\0${where}`));
      d.setAuthTag(ct.subarray(ct.length - TAG_BYTES));
      return Buffer.concat([d.update(ct.subarray(0, ct.length - TAG_BYTES)), d.final()]).toString('utf8');
    } catch {
      throw new SignalboxError(
        ErrorCode.STATE,
        `the shared state value ${label} does not decrypt with the state key (key id ${this.id}): it was altered or copied from another place; restore it from a backup`,
      );
    }
  }
}
