// The rate-limit codec (src/ratelimit/codec.ts) against protobufjs on Envoy's own rls.proto, over
// generated messages: the request fields read are the ones protobufjs decodes, the response bytes
// are the ones protobufjs encodes, and bytes that are not a RateLimitRequest (random, truncated,
// corrupted) are read as a well-formed message would be or refused with a WireError, never
// anything else; through the gRPC server, such bytes get INVALID_ARGUMENT and the service keeps
// answering.
import assert from 'node:assert/strict';
import http2 from 'node:http2';
import { after, describe, test } from 'node:test';
import fc from 'fast-check';
import { createLogger } from '../../src/observability/logger.js';
import { WireError } from '../../src/grpc/wire.js';
import { CODE, decodeRateLimitRequest, encodeRateLimitResponse, type RateLimitAnswer, type RateLimitRequestView } from '../../src/ratelimit/codec.js';
import { RateLimitService, SHOULD_RATE_LIMIT_PATH } from '../../src/ratelimit/service.js';
import { lookupType } from '../../src/xds/resources/protos.js';
import { doc, docs, policyDir, removePolicyDirs, validateDir } from './policy-dir.js';

after(removePolicyDirs);

const Req = lookupType('envoy.service.ratelimit.v3.RateLimitRequest');
const Res = lookupType('envoy.service.ratelimit.v3.RateLimitResponse');

/** What protobufjs makes of the bytes, in the codec's shape (throws where protobufjs throws). */
function protobufjsView(bytes: Uint8Array): RateLimitRequestView {
  const m = Req.decode(bytes) as unknown as { domain: string; descriptors: { entries: { key: string; value: string }[] }[]; hits_addend: number };
  return {
    domain: m.domain,
    descriptors: m.descriptors.map((d) => ({ entries: d.entries.map((e) => ({ key: e.key, value: e.value })) })),
    hits_addend: m.hits_addend,
  };
}

/** The response as the service encoded it before the codec (protobufjs on a plain object). */
function protobufjsResponse(a: RateLimitAnswer): Buffer {
  return Buffer.from(
    Res.encode({ overall_code: CODE[a.overall], statuses: a.statuses.map((s) => ({ ...s, code: CODE[s.code] })), response_headers_to_add: a.headers }).finish(),
  );
}

// Well-formed text (what Envoy sends: header values, paths, claims), including multi-byte characters.
const text = fc.oneof(
  fc.string({ maxLength: 30 }),
  fc.string({ unit: 'grapheme', maxLength: 12 }),
  fc.constantFrom('', 'signalbox', 'signalbox_limit', 'gw/0', 'x-api-key'),
);
const uint32 = fc.nat({ max: 2 ** 32 - 1 });

const requestObject = fc.record(
  {
    domain: text,
    descriptors: fc.array(
      fc.record(
        {
          entries: fc.array(fc.record({ key: text, value: text }, { requiredKeys: [] }), { maxLength: 4 }),
          // A per-request override Envoy may send: a field the reader skips.
          limit: fc.record({ requests_per_unit: uint32, unit: fc.integer({ min: 0, max: 6 }) }),
        },
        { requiredKeys: [] },
      ),
      { maxLength: 5 },
    ),
    hits_addend: uint32,
  },
  { requiredKeys: [] },
);

/** Fields a newer Envoy might add, appended at the top level: varint, fixed64, bytes, fixed32. */
const unknownFields = fc.array(
  fc.oneof(
    fc.tuple(fc.integer({ min: 4, max: 2000 }), fc.nat()).map(([f, v]) => Buffer.concat([varint((f << 3) | 0), varint(v)])),
    fc.integer({ min: 4, max: 2000 }).map((f) => Buffer.concat([varint((f << 3) | 1), Buffer.alloc(8, 7)])),
    fc
      .tuple(fc.integer({ min: 4, max: 2000 }), fc.uint8Array({ maxLength: 20 }))
      .map(([f, b]) => Buffer.concat([varint((f << 3) | 2), varint(b.length), Buffer.from(b)])),
    fc.integer({ min: 4, max: 2000 }).map((f) => Buffer.concat([varint((f << 3) | 5), Buffer.alloc(4, 9)])),
  ),
  { maxLength: 3 },
);

function varint(n: number): Buffer {
  const out: number[] = [];
  while (n >= 0x80) {
    out.push((n & 0x7f) | 0x80);
    n = Math.floor(n / 128);
  }
  out.push(n);
  return Buffer.from(out);
}

const statusArb = fc.record(
  {
    code: fc.constantFrom('OK' as const, 'OVER_LIMIT' as const),
    current_limit: fc.record({ name: text, requests_per_unit: uint32, unit: fc.integer({ min: 0, max: 6 }) }),
    limit_remaining: uint32,
    duration_until_reset: fc.record({ seconds: fc.nat({ max: 2 ** 40 }), nanos: fc.nat({ max: 999_999_999 }) }),
  },
  { requiredKeys: ['code'] },
);
const answerArb: fc.Arbitrary<RateLimitAnswer> = fc.record({
  overall: fc.constantFrom('OK' as const, 'OVER_LIMIT' as const),
  statuses: fc.array(statusArb, { maxLength: 5 }),
  headers: fc.array(fc.record({ key: text, value: text }), { maxLength: 3 }),
});

describe('rate-limit codec against protobufjs', () => {
  test('RateLimitRequest: the fields read are the ones protobufjs decodes, whatever else the message holds', () => {
    fc.assert(
      fc.property(requestObject, unknownFields, (o, extra) => {
        const bytes = Buffer.concat([Buffer.from(Req.encode(Req.fromObject(o)).finish()), ...extra]);
        const view = decodeRateLimitRequest(bytes);
        assert.deepEqual(view, protobufjsView(bytes));
      }),
      { numRuns: 500 },
    );
  });

  test('RateLimitRequest: fields repeated as protobufjs reads them (the last string wins, each descriptor counts)', () => {
    const a = Buffer.from(Req.encode(Req.fromObject({ domain: 'first', descriptors: [{ entries: [{ key: 'k', value: '1' }] }], hits_addend: 3 })).finish());
    const b = Buffer.from(Req.encode(Req.fromObject({ domain: 'signalbox', descriptors: [{ entries: [{ key: 'k', value: '2' }] }] })).finish());
    const both = Buffer.concat([a, b]);
    assert.deepEqual(decodeRateLimitRequest(both), {
      domain: 'signalbox',
      descriptors: [{ entries: [{ key: 'k', value: '1' }] }, { entries: [{ key: 'k', value: '2' }] }],
      hits_addend: 3,
    });
    assert.deepEqual(decodeRateLimitRequest(both), protobufjsView(both));
    // hits_addend keeps the low 32 bits of a longer varint, as protobufjs's uint32 does.
    const big = Buffer.concat([Buffer.from([0x18]), varint(2 ** 32 + 7)]);
    assert.equal(decodeRateLimitRequest(big).hits_addend, 7);
    assert.equal(protobufjsView(big).hits_addend, 7);
  });

  const valid = fc.tuple(requestObject, unknownFields).map(([o, extra]) => Buffer.concat([Buffer.from(Req.encode(Req.fromObject(o)).finish()), ...extra]));

  /** The narrow reader's view, or undefined when it refused the bytes with a WireError (any other error fails the test). */
  function narrowOrRefused(bytes: Buffer): RateLimitRequestView | undefined {
    try {
      return decodeRateLimitRequest(bytes);
    } catch (e) {
      assert.ok(e instanceof WireError, `a WireError, not ${String(e)}`);
      return undefined;
    }
  }

  test('RateLimitRequest cut short: refused, or (cut between fields) read as protobufjs reads it', () => {
    let refused = 0;
    fc.assert(
      fc.property(valid, fc.nat(), (b, n) => {
        const cut = b.subarray(0, b.length ? n % b.length : 0);
        const view = narrowOrRefused(cut);
        if (view) assert.deepEqual(view, protobufjsView(cut));
        else refused++;
      }),
      { numRuns: 1000 },
    );
    assert.ok(refused > 0, 'some cuts fall inside a field');
  });

  test('RateLimitRequest from random or corrupted bytes: refused with a WireError, or read as the well-formed message it then is', () => {
    const damaged = fc.oneof(
      fc.uint8Array({ maxLength: 64 }).map((b) => Buffer.from(b)),
      fc.tuple(valid, fc.nat(), fc.integer({ min: 0, max: 255 })).map(([b, i, v]) => {
        const c = Buffer.from(b);
        if (c.length) c[i % c.length] = v;
        return c;
      }),
    );
    fc.assert(
      fc.property(damaged, (bytes) => {
        const view = narrowOrRefused(bytes);
        // protobufjs is laxer (it reads strings cut short, nested messages past their end), so the
        // check is that what was read is a message: written again by protobufjs, it reads the same.
        if (view) assert.deepEqual(decodeRateLimitRequest(Buffer.from(Req.encode(Req.fromObject(view)).finish())), view);
      }),
      { numRuns: 3000 },
    );
    // Damage protobufjs lets through: a string cut short by the end of the buffer, a nested message read past its end.
    assert.throws(() => decodeRateLimitRequest(Buffer.from([0x0a, 0x20, 0x61])), WireError);
    assert.equal(protobufjsView(Buffer.from([0x0a, 0x20, 0x61])).domain, 'a');
    assert.throws(() => decodeRateLimitRequest(Buffer.from([0x12, 0x03, 0x0a, 0x05, 0x0a, 0x01, 0x61, 0x12, 0x00])), WireError);
  });

  test('RateLimitResponse: the bytes protobufjs encodes, for every kind of answer', () => {
    fc.assert(
      fc.property(answerArb, (a) => {
        const bytes = encodeRateLimitResponse(a);
        assert.deepEqual(bytes, protobufjsResponse(a));
        const back = Res.toObject(Res.decode(bytes), { defaults: false }) as { overall_code: number; statuses?: unknown[] };
        assert.equal(back.overall_code, CODE[a.overall]);
        assert.equal(back.statuses?.length ?? 0, a.statuses.length);
      }),
      { numRuns: 500 },
    );
  });
});

describe('ShouldRateLimit over gRPC: bad bytes', async () => {
  const FILES = {
    'a.yaml': docs(
      doc('Gateway', 'public', '{ listeners: [ { name: http, port: 8080, protocol: HTTP } ] }'),
      doc(
        'RateLimitPolicy',
        'open',
        '{ targetRef: { kind: Gateway, name: public }, global: { limits: [ { requests: 5, per: minute, by: { header: x-key } } ] } }',
      ),
    ),
  };
  const { model } = await validateDir(policyDir(FILES));
  // Nothing listens on port 1: Redis is down at once, and failureMode allow answers OK.
  const svc = new RateLimitService({ logger: createLogger({ level: 'silent' }), redis: { url: 'redis://127.0.0.1:1' } });
  svc.update(model!);
  const port = await svc.listen('127.0.0.1:0');
  after(() => svc.close());

  /** One plain-text call: grpc-status, grpc-message and the response message. */
  function call(message: Buffer): Promise<{ status: string; message: string; body: Buffer }> {
    return new Promise((resolve, reject) => {
      const session = http2.connect(`http://127.0.0.1:${port}`);
      session.on('error', reject);
      const s = session.request({ ':method': 'POST', ':path': SHOULD_RATE_LIMIT_PATH, 'content-type': 'application/grpc', te: 'trailers' });
      const chunks: Buffer[] = [];
      let status = '';
      let msg = '';
      const take = (h: http2.IncomingHttpHeaders) => {
        if (h['grpc-status'] !== undefined) status = String(h['grpc-status']);
        if (h['grpc-message'] !== undefined) msg = decodeURIComponent(String(h['grpc-message']));
      };
      s.on('response', take);
      s.on('trailers', take);
      s.on('data', (c: Buffer) => chunks.push(c));
      s.on('error', reject);
      s.on('end', () => {
        session.close();
        const all = Buffer.concat(chunks);
        resolve({ status, message: msg, body: all.length >= 5 ? all.subarray(5) : all });
      });
      const frame = Buffer.alloc(5 + message.length);
      frame.writeUInt32BE(message.length, 1);
      message.copy(frame, 5);
      s.end(frame);
    });
  }

  test('garbage gets INVALID_ARGUMENT with a message that says so; a valid call after it is answered', async () => {
    for (const bad of [Buffer.from([0xff, 0xff, 0xff]), Buffer.from([0x0a, 0x20, 0x61]), Buffer.from([0x12, 0x05, 0x0a, 0x03, 0x0a, 0x7f])]) {
      const r = await call(bad);
      assert.equal(r.status, '3', `INVALID_ARGUMENT for ${bad.toString('hex')}`);
      assert.match(r.message, /does not decode as a RateLimitRequest/);
    }
    const good = Buffer.from(
      Req.encode(
        Req.fromObject({
          domain: 'signalbox',
          descriptors: [
            {
              entries: [
                { key: 'signalbox_limit', value: 'open/0' },
                { key: 'header', value: 'k' },
              ],
            },
          ],
        }),
      ).finish(),
    );
    const r = await call(good);
    assert.equal(r.status, '0');
    const answer = Res.toObject(Res.decode(r.body), { enums: String }) as { overall_code: string };
    assert.equal(answer.overall_code, 'OK', 'Redis down, failureMode allow');
    // A message of another domain decodes but is refused by the service, with its reason.
    const other = await call(Buffer.from(Req.encode(Req.fromObject({ domain: 'other' })).finish()));
    assert.equal(other.status, '3');
    assert.match(other.message, /unknown domain "other"/);
  });
});
