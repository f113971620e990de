// The two messages of every ext_authz Check, by hand: the CheckRequest fields the service reads
// and the CheckResponse it answers with.
//
// Why not protobufjs, as before: a CheckRequest carries much the service never reads (source and
// destination peers with their certificates, the request's time, id, method, host, protocol,
// metadata), and protobufjs builds an object for all of it on every call; its
// fromObject + encode of the answer builds two more object trees. In the profile of the service
// under load (`bench:authz`, repeated tokens) decode and encode were ~6 % of the CPU, with the
// garbage collector, which their object trees feed, at ~15 %. This reader walks the bytes once and
// keeps three things (the headers Envoy sent, the path, the context extensions), skipping every
// other field by its length; the writer emits the same bytes protobufjs emitted for the same
// answer (the unit tests compare them). The wire-format reader and writer are src/grpc/wire.ts.
//
// Anything this reader does not expect (a field with another wire type than the schema's, groups,
// truncation) makes `decodeCheckRequest` throw; the caller then decodes with protobufjs, so an odd
// but valid message gets exactly the old treatment and a broken one the old error.
//
// Semantics kept from protobufjs's generated decoder: a repeated singular message field replaces
// the earlier one (no merge); in a map, the last entry of a key wins and a missing key or value is
// the empty string.

import { expectWireType, type KeyValue, Reader, readKeyValue, varintSize, Writer } from '../grpc/wire.js';

/** What the service reads of a CheckRequest (header names as Envoy sends them: lower case). */
export interface CheckRequestView {
  /** attributes.request.http.headers (null prototype); undefined when the message has no http request. */
  headers: Record<string, string> | undefined;
  /** attributes.request.http.path: '' when the http request has none (protobufjs's default), undefined without an http request. */
  path: string | undefined;
  /** attributes.context_extensions (null prototype); undefined when there are none. */
  contextExtensions: Record<string, string> | undefined;
}

/** A map<string, string> entry into `into`. */
/** readKeyValue's target while decoding (no object per header). */
const scratch: KeyValue = { key: '', value: '' };
function mapEntry(r: Reader, into: Record<string, string>): void {
  const { key, value } = readKeyValue(r, scratch);
  into[key] = value;
}

/** Where decoding puts what it keeps. */
interface Found {
  headers: Record<string, string> | undefined;
  path: string | undefined;
  ext: Record<string, string> | undefined;
}

/** AttributeContext.HttpRequest: headers (3) and path (4); replaces any earlier one. */
function httpRequest(r: Reader, out: Found): void {
  const outer = r.enter();
  const headers: Record<string, string> = Object.create(null);
  let path = '';
  while (r.pos < r.end) {
    const tag = r.varint();
    const field = tag >>> 3;
    const wt = tag & 7;
    if (field === 3) {
      expectWireType(wt, 2);
      mapEntry(r, headers);
    } else if (field === 4) {
      expectWireType(wt, 2);
      path = r.string();
    } else r.skip(wt);
  }
  r.leave(outer);
  out.headers = headers;
  out.path = path;
}

/** AttributeContext.Request: http (2); replaces any earlier one (a later request without http has none). */
function request(r: Reader, out: Found): void {
  const outer = r.enter();
  out.headers = undefined;
  out.path = undefined;
  while (r.pos < r.end) {
    const tag = r.varint();
    const wt = tag & 7;
    if (tag >>> 3 === 2) {
      expectWireType(wt, 2);
      httpRequest(r, out);
    } else r.skip(wt);
  }
  r.leave(outer);
}

/** AttributeContext: request (4) and context_extensions (10); replaces any earlier one. */
function attributes(r: Reader, out: Found): void {
  const outer = r.enter();
  out.headers = undefined;
  out.path = undefined;
  out.ext = undefined;
  while (r.pos < r.end) {
    const tag = r.varint();
    const field = tag >>> 3;
    const wt = tag & 7;
    if (field === 4) {
      expectWireType(wt, 2);
      request(r, out);
    } else if (field === 10) {
      expectWireType(wt, 2);
      out.ext ??= Object.create(null) as Record<string, string>;
      mapEntry(r, out.ext);
    } else r.skip(wt);
  }
  r.leave(outer);
}

/** Reads a CheckRequest; throws on anything unexpected (see the file comment: fall back to protobufjs). */
export function decodeCheckRequest(bytes: Uint8Array): CheckRequestView {
  const buf = Buffer.isBuffer(bytes) ? bytes : Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const r = new Reader(buf);
  const out: Found = { headers: undefined, path: undefined, ext: undefined };
  while (r.pos < r.end) {
    const tag = r.varint();
    const wt = tag & 7;
    if (tag >>> 3 === 1) {
      expectWireType(wt, 2);
      attributes(r, out);
    } else r.skip(wt);
  }
  return { headers: out.headers, path: out.path, contextExtensions: out.ext };
}

// --- the answer -----------------------------------------------------------------------------

/** One header of an answer (HeaderValueOption with append false, as the service always sets it). */
export interface AnswerHeader {
  name: string;
  value: string;
}

/** The answer to encode: OK with headers to set and remove, or a denial. */
export type CheckAnswer =
  | { allow: true; headers: readonly AnswerHeader[]; removeHeaders: readonly string[] }
  | { allow: false; grpcCode: number; httpStatus: number; headers: readonly AnswerHeader[]; body: string };

/** Sizes of one HeaderValueOption { header { key, value }, append { value: false } }. */
function headerSizes(h: AnswerHeader): { key: number; value: number; header: number; option: number } {
  const key = Buffer.byteLength(h.name, 'utf8');
  const value = Buffer.byteLength(h.value, 'utf8');
  const header = 1 + varintSize(key) + key + 1 + varintSize(value) + value;
  // header (field 1) + append (field 2): BoolValue { value: false } written as 08 00, as protobufjs writes a set false.
  const option = 1 + varintSize(header) + header + 1 + 1 + 2;
  return { key, value, header, option };
}

function writeHeader(w: Writer, field: number, h: AnswerHeader, s: ReturnType<typeof headerSizes>): void {
  w.tag(field, 2);
  w.varint(s.option);
  w.tag(1, 2);
  w.varint(s.header);
  w.string(1, h.name, s.key);
  w.string(2, h.value, s.value);
  w.tag(2, 2);
  w.varint(2);
  w.tag(1, 0);
  w.varint(0);
}

/**
 * An envoy.service.auth.v3.CheckResponse, byte for byte what protobufjs wrote for
 * `CheckResponse.fromObject(checkResponse(decision))`: status { code } (field 1, a zero code
 * written out), then denied_response (2) or ok_response (3).
 */
export function encodeCheckResponse(a: CheckAnswer): Buffer {
  const code = a.allow ? 0 : a.grpcCode;
  const statusInner = 1 + varintSize(code); // Status { code }
  const hs = a.headers.map(headerSizes);
  let inner = 0; // the ok_response or denied_response message
  for (const s of hs) inner += 1 + varintSize(s.option) + s.option;
  let removes: number[] = [];
  let bodyBytes = 0;
  let httpInner = 0;
  if (a.allow) {
    removes = a.removeHeaders.map((h) => Buffer.byteLength(h, 'utf8'));
    for (const n of removes) inner += 1 + varintSize(n) + n;
  } else {
    httpInner = 1 + varintSize(a.httpStatus); // HttpStatus { code }
    inner += 1 + varintSize(httpInner) + httpInner;
    bodyBytes = Buffer.byteLength(a.body, 'utf8');
    // protobufjs writes a string that is set, even empty.
    inner += 1 + varintSize(bodyBytes) + bodyBytes;
  }
  const total = 1 + varintSize(statusInner) + statusInner + 1 + varintSize(inner) + inner;
  const w = new Writer(Buffer.allocUnsafe(total));
  w.tag(1, 2);
  w.varint(statusInner);
  w.tag(1, 0);
  w.varint(code);
  if (a.allow) {
    w.tag(3, 2);
    w.varint(inner);
    for (let i = 0; i < a.headers.length; i++) writeHeader(w, 2, a.headers[i]!, hs[i]!);
    for (let i = 0; i < a.removeHeaders.length; i++) w.string(5, a.removeHeaders[i]!, removes[i]!);
  } else {
    w.tag(2, 2);
    w.varint(inner);
    w.tag(1, 2);
    w.varint(httpInner);
    w.tag(1, 0);
    w.varint(a.httpStatus);
    for (let i = 0; i < a.headers.length; i++) writeHeader(w, 2, a.headers[i]!, hs[i]!);
    w.string(3, a.body, bodyBytes);
  }
  if (w.pos !== total) throw new Error(`CheckResponse size mismatch (${w.pos} of ${total} bytes)`);
  return w.buf;
}
