// The two messages of every ShouldRateLimit call, by hand: the RateLimitRequest fields the service
// reads and the RateLimitResponse it answers with (envoy.service.ratelimit.v3, rls.proto).
//
// Why not protobufjs, as before: the rate-limit service sits in the path of every request under a
// global limit, and protobufjs builds a message object per request, per descriptor and per entry,
// then a tree of plain objects and a writer per answer. This reader walks the bytes once and keeps
// the domain, each descriptor's entries and hits_addend, skipping every other field by its length
// (a descriptor's `limit` override, fields a newer Envoy may add); the writer emits the bytes
// protobufjs emitted for the same answer (test/unit/ratelimit-codec.test.ts compares them over
// generated messages).
//
// Semantics kept from protobufjs's generated decoder: a string field seen twice keeps the last
// value; each occurrence of a repeated message field is one more element; a missing string is ''
// and a missing hits_addend 0; hits_addend, a uint32, keeps the low 32 bits of its varint.
// Stricter than protobufjs, which reads a string cut short by the end of the buffer as a shorter
// string and a nested message past its declared end: here anything malformed (truncation, a
// length past its message's end, a known field with another wire type than the schema's, groups,
// which proto3 messages never hold) throws WireError, and the service answers INVALID_ARGUMENT
// with the reason, rather than counting a key read from damaged bytes.
import { expectWireType, Reader, readKeyValue, varintSize, Writer } from '../grpc/wire.js';

/** One descriptor entry as Envoy sends it (RateLimitDescriptor.Entry). */
export interface DescriptorEntry {
  key: string;
  value: string;
}

/** What the service reads of a RateLimitRequest. */
export interface RateLimitRequestView {
  domain: string;
  descriptors: { entries: DescriptorEntry[] }[];
  hits_addend: number;
}

/** RateLimitResponse.Code and RateLimit.Unit values (rls.proto). */
export const CODE = { OK: 1, OVER_LIMIT: 2 } as const;
export const UNIT = { second: 1, minute: 2, hour: 3, day: 4 } as const;

/** One DescriptorStatus of an answer; the optional parts are written only when present. */
export interface DescriptorStatus {
  code: 'OK' | 'OVER_LIMIT';
  current_limit?: { name: string; requests_per_unit: number; unit: number };
  limit_remaining?: number;
  duration_until_reset?: { seconds: number; nanos: number };
}

/** A ShouldRateLimit answer, as plain data. */
export interface RateLimitAnswer {
  overall: 'OK' | 'OVER_LIMIT';
  statuses: DescriptorStatus[];
  headers: { key: string; value: string }[];
}

/** RateLimitDescriptor: entries (1); the limit override (2) and anything else skipped. */
function descriptor(r: Reader): { entries: DescriptorEntry[] } {
  const outer = r.enter();
  const entries: DescriptorEntry[] = [];
  while (r.pos < r.end) {
    const tag = r.varint();
    const wt = tag & 7;
    if (tag >>> 3 === 1) {
      expectWireType(wt, 2);
      entries.push(readKeyValue(r, { key: '', value: '' })); // RateLimitDescriptor.Entry: key (1), value (2)
    } else r.skip(wt);
  }
  r.leave(outer);
  return { entries };
}

/** Reads a RateLimitRequest; throws WireError on anything malformed. */
export function decodeRateLimitRequest(bytes: Uint8Array): RateLimitRequestView {
  const buf = Buffer.isBuffer(bytes) ? bytes : Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const r = new Reader(buf);
  const out: RateLimitRequestView = { domain: '', descriptors: [], hits_addend: 0 };
  while (r.pos < r.end) {
    const tag = r.varint();
    const field = tag >>> 3;
    const wt = tag & 7;
    if (field === 1) {
      expectWireType(wt, 2);
      out.domain = r.string();
    } else if (field === 2) {
      expectWireType(wt, 2);
      out.descriptors.push(descriptor(r));
    } else if (field === 3) {
      expectWireType(wt, 0);
      out.hits_addend = r.varint() % 2 ** 32;
    } else r.skip(wt);
  }
  return out;
}

// --- the answer -----------------------------------------------------------------------------
// Every number written is a non-negative integer (as the service produces them); uint32 fields
// keep their low 32 bits, as protobufjs writes them.

const u32 = (n: number) => n >>> 0;

/** Length of a length-delimited field of `len` bytes, with its one-byte tag. */
const delimited = (len: number) => 1 + varintSize(len) + len;

interface StatusSizes {
  total: number;
  limit: number;
  name: number;
  duration: number;
}

function statusSizes(s: DescriptorStatus): StatusSizes {
  let total = 1 + varintSize(CODE[s.code]);
  let limit = 0;
  let name = 0;
  let duration = 0;
  if (s.current_limit !== undefined) {
    name = Buffer.byteLength(s.current_limit.name, 'utf8');
    limit = 1 + varintSize(u32(s.current_limit.requests_per_unit)) + 1 + varintSize(s.current_limit.unit) + delimited(name);
    total += delimited(limit);
  }
  if (s.limit_remaining !== undefined) total += 1 + varintSize(u32(s.limit_remaining));
  if (s.duration_until_reset !== undefined) {
    duration = 1 + varintSize(s.duration_until_reset.seconds) + 1 + varintSize(s.duration_until_reset.nanos);
    total += delimited(duration);
  }
  return { total, limit, name, duration };
}

/**
 * An envoy.service.ratelimit.v3.RateLimitResponse, byte for byte what protobufjs wrote for
 * `{ overall_code, statuses, response_headers_to_add }`: fields in number order, a field present
 * in the answer written even when zero or empty.
 */
export function encodeRateLimitResponse(a: RateLimitAnswer): Buffer {
  const sizes = a.statuses.map(statusSizes);
  const headers = a.headers.map((h) => ({ key: Buffer.byteLength(h.key, 'utf8'), value: Buffer.byteLength(h.value, 'utf8') }));
  let total = 1 + varintSize(CODE[a.overall]);
  for (const s of sizes) total += delimited(s.total);
  for (const h of headers) total += delimited(delimited(h.key) + delimited(h.value));
  const w = new Writer(Buffer.allocUnsafe(total));
  w.tag(1, 0);
  w.varint(CODE[a.overall]);
  for (let i = 0; i < a.statuses.length; i++) {
    const s = a.statuses[i]!;
    const z = sizes[i]!;
    w.tag(2, 2);
    w.varint(z.total);
    w.tag(1, 0);
    w.varint(CODE[s.code]);
    if (s.current_limit !== undefined) {
      w.tag(2, 2);
      w.varint(z.limit);
      w.tag(1, 0);
      w.varint(u32(s.current_limit.requests_per_unit));
      w.tag(2, 0);
      w.varint(s.current_limit.unit);
      w.string(3, s.current_limit.name, z.name);
    }
    if (s.limit_remaining !== undefined) {
      w.tag(3, 0);
      w.varint(u32(s.limit_remaining));
    }
    if (s.duration_until_reset !== undefined) {
      w.tag(4, 2);
      w.varint(z.duration);
      w.tag(1, 0);
      w.varint(s.duration_until_reset.seconds);
      w.tag(2, 0);
      w.varint(s.duration_until_reset.nanos);
    }
  }
  for (let i = 0; i < a.headers.length; i++) {
    const h = a.headers[i]!;
    const z = headers[i]!;
    w.tag(3, 2);
    w.varint(delimited(z.key) + delimited(z.value));
    w.string(1, h.key, z.key);
    w.string(2, h.value, z.value);
  }
  if (w.pos !== total) throw new Error(`RateLimitResponse size mismatch (${w.pos} of ${total} bytes)`);
  return w.buf;
}
