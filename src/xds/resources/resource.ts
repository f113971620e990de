// A resource ready to serve: its content hash (the version), its encoded bytes (shared by every
// proxy that receives it) and the JSON it was built from (the printable form, secrets redacted).
import { createHash } from 'node:crypto';
import { lookupType } from './protos.js';
import { messageName, type TypeUrl } from './type-urls.js';

export interface Resource {
  type: TypeUrl;
  name: string;
  /** Content hash of the resource's JSON: the resource's version in Delta xDS. */
  version: string;
  bytes: Uint8Array;
  /** What a config dump shows. For secrets the private key is replaced. */
  printable: Record<string, unknown>;
  /** The policy files the resource came from. */
  sources: string[];
}

/** JSON with object keys sorted at every level: the same value always gives the same text. */
export function canonicalJson(value: unknown): string {
  return JSON.stringify(value, (_k, v: unknown) => {
    if (v && typeof v === 'object' && !Array.isArray(v) && !(v instanceof Uint8Array)) {
      const o = v as Record<string, unknown>;
      return Object.fromEntries(
        Object.keys(o)
          .sort()
          .map((k) => [k, o[k]]),
      );
    }
    return v;
  });
}

export function hashText(text: string): string {
  return createHash('sha256').update(text).digest('hex').slice(0, 16);
}

/** The key of one element of a split message (EncodeCache.makeSplit): its message type and JSON text, hashed. */
export function partKey(message: string, text: string): string {
  return hashText(`${message}\n${text}`);
}

/** The tests' switch: every EncodeCache checks what it encodes unless told otherwise. */
const STRICT = process.env.SIGNALBOX_STRICT_ENCODE === '1';

/** Drops values protobuf does not carry on the wire (zero, false, empty string and list). */
function wireShape(v: unknown): unknown {
  if (Array.isArray(v)) return v.length ? v.map(wireShape) : undefined;
  if (v && typeof v === 'object') {
    const out: Record<string, unknown> = {};
    for (const [k, x] of Object.entries(v)) {
      const w = wireShape(x);
      if (w !== undefined) out[k] = w;
    }
    return out;
  }
  return v === 0 || v === false || v === '' ? undefined : v;
}

/** A resource that does not decode to what was written: a field protobufjs dropped or changed. */
export class RoundTripError extends Error {
  constructor(
    /** `Listener "edge/http"` */
    readonly resource: string,
    /** Each difference: the field's path in the resource and what happened to it. */
    readonly fields: { path: string; problem: string }[],
    more: number,
  ) {
    const list = fields.map((f) => `${f.path} ${f.problem}`).join('; ');
    super(`${resource} does not survive encoding (a misspelt field name, or a value of the wrong type): ${list}${more ? `; and ${more} more` : ''}`);
  }
}

/** How many differences a RoundTripError lists. */
const MAX_LISTED = 5;

const pathKey = (k: string): string => (/^[A-Za-z_@][\w@]*$/.test(k) ? `.${k}` : `[${JSON.stringify(k)}]`);

/** The kind of a value, for messages that must not show the value itself (it may be a private key). */
function kindOf(v: unknown): string {
  return Array.isArray(v) ? 'a list' : v === null ? 'null' : typeof v === 'object' ? 'a message' : `a ${typeof v}`;
}

/**
 * Differences between what was written and what decodes (both in wire shape), by field path: the
 * first `max` are put in `out`, the return value counts them all.
 */
function differences(want: unknown, got: unknown, at: string, out: { path: string; problem: string }[], max: number): number {
  if (want === got) return 0;
  const report = (path: string, problem: string): number => {
    if (out.length < max) out.push({ path: path.replace(/^\./, '') || '(the resource)', problem });
    return 1;
  };
  const isMessage = (v: unknown): v is Record<string, unknown> => v !== null && typeof v === 'object' && !Array.isArray(v);
  if (Array.isArray(want) && Array.isArray(got)) {
    let n = want.length === got.length ? 0 : report(at, `has ${want.length} entries written and ${got.length} decoded`);
    for (let i = 0; i < Math.min(want.length, got.length); i++) n += differences(want[i], got[i], `${at}[${i}]`, out, max);
    return n;
  }
  if (isMessage(want) && isMessage(got)) {
    let n = 0;
    for (const k of Object.keys(want)) {
      if (k in got) n += differences(want[k], got[k], at + pathKey(k), out, max);
      else n += report(at + pathKey(k), 'was dropped (no such field there, or a value protobufjs cannot encode)');
    }
    for (const k of Object.keys(got)) if (!(k in want)) n += report(at + pathKey(k), 'was not written but decodes');
    return n;
  }
  return report(at, `was written as ${kindOf(want)} and decodes as ${kindOf(got)}${kindOf(want) === kindOf(got) ? ' of another value' : ''}`);
}

/**
 * protobufjs ignores fields it does not know. Decodes a resource's bytes and compares them with what
 * was meant, so a misspelt field fails loudly (RoundTripError, naming each field's path) instead of
 * vanishing. Values are never shown: a Secret's would be its private key.
 */
export function assertRoundTrip(type: TypeUrl, name: string, json: Record<string, unknown>, bytes: Uint8Array): void {
  const t = lookupType(messageName(type));
  const back = t.toObject(t.decode(bytes), { enums: String, longs: Number, json: true, defaults: false });
  const fields: { path: string; problem: string }[] = [];
  const n = differences(wireShape(json), wireShape(back), '', fields, MAX_LISTED);
  if (n) throw new RoundTripError(`${messageName(type).split('.').pop()} "${name}"`, fields, n - fields.length);
}

/** Strict mode: a JSON text handed in with its value is what JSON.stringify gives. */
function assertText(what: string, value: unknown, text: string | undefined): void {
  const want = JSON.stringify(value);
  if (text !== want) throw new Error(`${what}: the JSON text handed in is not the value's.\nwant ${want}\ngot  ${text}`);
}

/** Encoded bytes by content hash: identical resources are encoded once per process. */
export class EncodeCache {
  private entries = new Map<string, Uint8Array>();
  private live = new Set<string>();
  /** Resources by the text of their inputs (reuse), and the keys used since the last sweep. */
  private made = new Map<string, Resource>();
  private madeLive = new Set<string>();
  /** Resources by a frozen input object (reuseFor). */
  private byObject = new WeakMap<object, Resource>();
  hits = 0;
  misses = 0;
  /** Whether each newly encoded resource is decoded again and compared (assertRoundTrip). */
  readonly roundTrip: boolean;

  /** roundTrip: default on under SIGNALBOX_STRICT_ENCODE=1, else off; `compile` and `validate` always turn it on. */
  constructor(opts: { roundTrip?: boolean } = {}) {
    this.roundTrip = opts.roundTrip ?? STRICT;
  }

  make(type: TypeUrl, name: string, json: Record<string, unknown>, opts: { printable?: Record<string, unknown>; sources?: string[] } = {}): Resource {
    // The translator builds every object the same way from the same inputs, so plain JSON text is
    // already deterministic; sorting keys at every level (canonicalJson) cost ~5x more per reload.
    const key = hashText(`${type}\n${JSON.stringify(json)}`);
    this.live.add(key);
    let bytes = this.entries.get(key);
    if (bytes) this.hits++;
    else {
      this.misses++;
      const t = lookupType(messageName(type));
      bytes = t.encode(t.fromObject(json)).finish();
      if (this.roundTrip) assertRoundTrip(type, name, json, bytes);
      this.entries.set(key, bytes);
    }
    return { type, name, version: key, bytes, printable: opts.printable ?? json, sources: opts.sources ?? [] };
  }

  /**
   * Like make, for a message with one large repeated field (a RouteConfiguration's virtual hosts):
   * each element is hashed and encoded on its own and the message's bytes are its other fields
   * followed by the elements' encodings, each framed as field `part.field`. Protobuf lets a
   * repeated field's elements come after other fields, so the bytes decode to the same message;
   * a one-route edit then encodes one virtual host, not the whole configuration.
   */
  makeSplit(
    type: TypeUrl,
    name: string,
    json: Record<string, unknown>,
    part: { key: string; field: number; message: string },
    opts: { printable?: Record<string, unknown>; sources?: string[]; partTexts?: readonly string[]; partKeys?: readonly string[] } = {},
  ): Resource {
    const elements = (json[part.key] as Record<string, unknown>[] | undefined) ?? [];
    const head: Record<string, unknown> = { ...json };
    delete head[part.key];
    const headKey = hashText(`${type}\n${JSON.stringify(head)}`);
    // partTexts: the elements' JSON.stringify texts, when the caller has them already.
    const texts = opts.partTexts ?? elements.map((e) => JSON.stringify(e));
    if (STRICT) {
      elements.forEach((e, i) => {
        assertText(`${messageName(type)} "${name}" ${part.key}[${i}]`, e, texts[i]);
      });
    }
    // partKeys: the elements' partKey, when the caller kept them (it hashed an unchanged element before).
    const keys = opts.partKeys ?? texts.map((t) => partKey(part.message, t));
    if (STRICT && opts.partKeys) {
      texts.forEach((t, i) => {
        if (keys[i] !== partKey(part.message, t)) throw new Error(`${messageName(type)} "${name}" ${part.key}[${i}]: the key handed in is not its text's`);
      });
    }
    const key = hashText(`${type}\n${headKey}\n${part.key}\n${keys.join('\n')}`);
    this.live.add(key);
    let bytes = this.entries.get(key);
    if (bytes) this.hits++;
    else {
      this.misses++;
      const chunks: Uint8Array[] = [this.encoded(headKey, messageName(type), head)];
      const tag = (part.field << 3) | 2;
      elements.forEach((e, i) => {
        const b = this.encoded(keys[i]!, part.message, e);
        chunks.push(varint(tag), varint(b.byteLength), b);
      });
      bytes = Buffer.concat(chunks);
      if (this.roundTrip) assertRoundTrip(type, name, json, bytes);
      this.entries.set(key, bytes);
    }
    this.live.add(headKey);
    for (const k of keys) this.live.add(k);
    return { type, name, version: key, bytes, printable: opts.printable ?? json, sources: opts.sources ?? [] };
  }

  /**
   * The resource `make` gives, reused while `inputKey` stays in use: `inputKey` must hold
   * everything `make` reads (the JSON text of the IR it translates). A reload then looks up an
   * unchanged resource by its inputs instead of building, writing out and hashing it again, and
   * hands out the same Resource object (so the snapshot cache sees it as unchanged).
   */
  reuse(inputKey: string, make: () => Resource): Resource {
    let r = this.made.get(inputKey);
    if (!r) {
      r = make();
      this.made.set(inputKey, r);
    }
    this.madeLive.add(inputKey);
    this.live.add(r.version);
    return r;
  }

  /**
   * Like reuse, keyed by a frozen object that holds everything `make` reads (an IR cluster): the
   * same object stands for the same content, so no text of it is written out to look it up.
   * Kept while the object lives.
   */
  reuseFor(input: object, make: () => Resource): Resource {
    let r = this.byObject.get(input);
    if (!r) {
      r = make();
      this.byObject.set(input, r);
    }
    this.live.add(r.version);
    return r;
  }

  /** The encoding of one message by its key, from the cache or encoded now. */
  private encoded(key: string, message: string, json: Record<string, unknown>): Uint8Array {
    let b = this.entries.get(key);
    if (!b) {
      const t = lookupType(message);
      b = t.encode(t.fromObject(json)).finish();
      this.entries.set(key, b);
    }
    return b;
  }

  /** Forgets entries not used since the last sweep (called after each full compile). */
  sweep(): void {
    for (const k of this.entries.keys()) if (!this.live.has(k)) this.entries.delete(k);
    this.live = new Set();
    for (const k of this.made.keys()) if (!this.madeLive.has(k)) this.made.delete(k);
    this.madeLive = new Set();
  }

  get size(): number {
    return this.entries.size;
  }
}

/** A protobuf base-128 varint (tags and lengths; values below 2^31). */
function varint(n: number): Uint8Array {
  const out: number[] = [];
  while (n > 0x7f) {
    out.push((n & 0x7f) | 0x80);
    n >>>= 7;
  }
  out.push(n);
  return Uint8Array.from(out);
}

/** Version of a set of resources: a hash over their sorted names and content hashes. */
export function versionOf(resources: Iterable<Resource>): string {
  const parts = [...resources].map((r) => `${r.name}\u0000${r.version}`).sort();
  return hashText(parts.join('\n'));
}
