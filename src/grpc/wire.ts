// Protocol Buffers wire format, by hand, for the narrow codecs of the gRPC services (the ext_authz
// CheckRequest/CheckResponse, the rate-limit RateLimitRequest/RateLimitResponse): a reader that
// walks a message's bytes once without building objects, and a writer into a buffer sized exactly
// beforehand. Why by hand rather than protobufjs: see src/authz/check-codec.ts.
//
// Only what those codecs need: varints, length-delimited fields, skipping the other wire types.
// Anything else (groups, truncation, a length past the end) throws WireError.

/** Bytes that are not the message the reader expects (truncated, a wrong wire type, a group...). */
export class WireError extends Error {}

/**
 * A forward-only reader over one message's bytes. Nested messages are read in place: `enter`
 * narrows the end to the nested message and returns the outer end, which `leave` restores
 * (no object per field or per nested message).
 */
export class Reader {
  pos = 0;
  end: number;
  constructor(readonly buf: Buffer) {
    this.end = buf.length;
  }

  varint(): number {
    // Up to 2^53 without loss; tags and lengths in practice fit in 32 bits.
    let result = 0;
    let shift = 0;
    for (;;) {
      if (this.pos >= this.end) throw new WireError('truncated varint');
      const b = this.buf[this.pos++]!;
      if (shift < 49) result += (b & 0x7f) * 2 ** shift;
      if (b < 0x80) return result;
      shift += 7;
      if (shift > 63) throw new WireError('varint too long');
    }
  }

  /** Into a length-delimited field: the end becomes the field's; returns the end to restore. */
  enter(): number {
    const len = this.varint();
    const outer = this.end;
    const end = this.pos + len;
    if (end > outer) throw new WireError('length beyond the message');
    this.end = end;
    return outer;
  }

  /** Out of a field entered (read to its end). */
  leave(outer: number): void {
    this.pos = this.end;
    this.end = outer;
  }

  string(): string {
    const len = this.varint();
    const start = this.pos;
    const end = start + len;
    if (end > this.end) throw new WireError('length beyond the message');
    this.pos = end;
    return this.buf.toString('utf8', start, end);
  }

  skip(wireType: number): void {
    switch (wireType) {
      case 0:
        this.varint();
        return;
      case 1:
        this.pos += 8;
        break;
      case 2: {
        const len = this.varint();
        this.pos += len;
        break;
      }
      case 5:
        this.pos += 4;
        break;
      default:
        throw new WireError(`wire type ${wireType}`);
    }
    if (this.pos > this.end) throw new WireError('field beyond the message');
  }
}

/** Throws unless a field has the wire type its schema gives it. */
export function expectWireType(wireType: number, want: number): void {
  if (wireType !== want) throw new WireError('unexpected wire type');
}

/** A message of two strings, key (1) and value (2), as read by `readKeyValue`. */
export interface KeyValue {
  key: string;
  value: string;
}

/**
 * Reads a nested message of two strings, key (1) and value (2), into `out`: a map<string, string>
 * entry, or the rate-limit descriptor's Entry. A missing field reads as ''. `out` is the caller's,
 * so a hot loop can reuse one object.
 */
export function readKeyValue(r: Reader, out: KeyValue): KeyValue {
  const outer = r.enter();
  out.key = '';
  out.value = '';
  while (r.pos < r.end) {
    const tag = r.varint();
    const field = tag >>> 3;
    const wt = tag & 7;
    if (field === 1) {
      expectWireType(wt, 2);
      out.key = r.string();
    } else if (field === 2) {
      expectWireType(wt, 2);
      out.value = r.string();
    } else r.skip(wt);
  }
  r.leave(outer);
  return out;
}

/** Bytes of a varint. */
export function varintSize(n: number): number {
  let size = 1;
  while (n >= 0x80) {
    n = Math.floor(n / 128);
    size++;
  }
  return size;
}

/** A writer into a buffer sized exactly beforehand. */
export class Writer {
  pos = 0;
  constructor(readonly buf: Buffer) {}
  varint(n: number): void {
    while (n >= 0x80) {
      this.buf[this.pos++] = (n & 0x7f) | 0x80;
      n = Math.floor(n / 128);
    }
    this.buf[this.pos++] = n;
  }
  tag(field: number, wireType: number): void {
    this.varint((field << 3) | wireType);
  }
  /** A string field whose byte length was measured. */
  string(field: number, s: string, bytes: number): void {
    this.tag(field, 2);
    this.varint(bytes);
    this.pos += this.buf.write(s, this.pos, bytes, 'utf8');
  }
}
