// Responses shared by the streams of a group. When a snapshot changes, every proxy of a group gets
// the same resources: one response object (and, through the codec's memo, one encoding) serves
// them all, instead of protobufjs writing the same ~126 kB RouteConfiguration into a new buffer
// per stream. The nonce belongs to the shared response: a proxy's ACK still names the response it
// answers, and two responses with the same nonce carry the same content.
//
// Measured before this (peers benchmark, 1,000 streams, 2026-12-04): copying the shared resource
// bytes into each stream's response was ~7 % of the CPU of a push and most of its garbage.
import { createHash } from 'node:crypto';
import type { Resource } from '../resources/resource.js';

/** Most bytes of resources the cached responses hold references to (their encodings come on top). */
export const SHARED_RESPONSE_BYTES = 64 * 1024 * 1024;
/** Most responses kept. */
export const SHARED_RESPONSE_COUNT = 1024;

/** Keys longer than this are hashed (a first Delta sync names every resource). */
const MAX_PLAIN_KEY = 512;

interface Entry<T> {
  response: T;
  bytes: number;
}

/**
 * Content-addressed responses, least recently used first out. `key` must determine the content
 * except for the nonce (type, version, and for Delta what is sent and removed).
 */
export class SharedResponses {
  private readonly entries = new Map<string, Entry<unknown>>();
  private held = 0;
  private seq = 0;
  hits = 0;
  misses = 0;

  constructor(private readonly limits = { bytes: SHARED_RESPONSE_BYTES, count: SHARED_RESPONSE_COUNT }) {}

  get<T>(key: string, resources: readonly Resource[], build: (nonce: string) => T): T {
    const k = key.length > MAX_PLAIN_KEY ? createHash('sha256').update(key).digest('base64') : key;
    const hit = this.entries.get(k);
    if (hit) {
      this.hits++;
      // Most recently used last.
      this.entries.delete(k);
      this.entries.set(k, hit);
      return hit.response as T;
    }
    this.misses++;
    let bytes = 0;
    for (const r of resources) bytes += r.bytes.byteLength;
    // Shared nonces start with "s": a stream's own nonces are plain numbers.
    const response = build(`s${++this.seq}`);
    if (bytes > this.limits.bytes) return response;
    this.entries.set(k, { response, bytes });
    this.held += bytes;
    for (const [old, e] of this.entries) {
      if (this.held <= this.limits.bytes && this.entries.size <= this.limits.count) break;
      this.entries.delete(old);
      this.held -= e.bytes;
    }
    return response;
  }

  get size(): number {
    return this.entries.size;
  }
}
