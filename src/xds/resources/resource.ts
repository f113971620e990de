// A resource ready to serve: its content hash (the version), its encoded bytes (shared by every
// proxy that receives it) and the JSON it was built from (the printable form, secrets redacted).
import { createHash } from 'node:crypto';
import { lookupType } from './protos.js';
import { messageName, type TypeUrl } from './type-urls.js';

export interface Resource {
  type: TypeUrl;
  name: string;
  /** Content hash of the canonical JSON: the resource's version in Delta xDS. */
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
      return Object.fromEntries(Object.keys(o).sort().map((k) => [k, o[k]]));
    }
    return v;
  });
}

export function hashText(text: string): string {
  return createHash('sha256').update(text).digest('hex').slice(0, 16);
}

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

/**
 * protobufjs ignores fields it does not know. In strict mode (tests) every resource is decoded
 * again and compared with what was meant, so a misspelt field fails loudly instead of vanishing.
 */
export function assertRoundTrip(type: TypeUrl, name: string, json: Record<string, unknown>, bytes: Uint8Array): void {
  const t = lookupType(messageName(type));
  const back = t.toObject(t.decode(bytes), { enums: String, longs: Number, json: true, defaults: false });
  const want = canonicalJson(wireShape(json));
  const got = canonicalJson(wireShape(back));
  if (want !== got) throw new Error(`${messageName(type)} "${name}" does not survive encoding; check field names and types.\nwant ${want}\ngot  ${got}`);
}

/** Encoded bytes by content hash: identical resources are encoded once per process. */
export class EncodeCache {
  private entries = new Map<string, Uint8Array>();
  private live = new Set<string>();
  hits = 0;
  misses = 0;

  make(type: TypeUrl, name: string, json: Record<string, unknown>, opts: { printable?: Record<string, unknown>; sources?: string[] } = {}): Resource {
    const key = hashText(type + '\n' + canonicalJson(json));
    this.live.add(key);
    let bytes = this.entries.get(key);
    if (bytes) this.hits++;
    else {
      this.misses++;
      const t = lookupType(messageName(type));
      bytes = t.encode(t.fromObject(json)).finish();
      if (STRICT) assertRoundTrip(type, name, json, bytes);
      this.entries.set(key, bytes);
    }
    return { type, name, version: key, bytes, printable: opts.printable ?? json, sources: opts.sources ?? [] };
  }

  /** Forgets entries not used since the last sweep (called after each full compile). */
  sweep(): void {
    for (const k of this.entries.keys()) if (!this.live.has(k)) this.entries.delete(k);
    this.live = new Set();
  }

  get size(): number {
    return this.entries.size;
  }
}

/** Version of a set of resources: a hash over their sorted names and content hashes. */
export function versionOf(resources: Iterable<Resource>): string {
  const parts = [...resources].map((r) => `${r.name}\u0000${r.version}`).sort();
  return hashText(parts.join('\n'));
}
