// Pre-framed responses (src/xds/server/framing.ts): grpc-js writes the bytes framed once, for every
// stream, instead of copying each message into a new framed buffer per stream; every other message
// is framed as grpc-js frames it. If a grpc-js upgrade moves what framing.ts wraps, the first test
// fails (the fan-out would silently go back to a copy per stream).
import assert from 'node:assert/strict';
import { test } from 'node:test';
import * as grpc from '@grpc/grpc-js';
import { BaseServerInterceptingCall } from '@grpc/grpc-js/build/src/server-interceptors.js';
import { installPreframedWrites, preframe } from '../../src/xds/server/framing.js';

type Serialize = (this: unknown, value: unknown) => Buffer;
const serializeMessage = () => (BaseServerInterceptingCall.prototype as unknown as { serializeMessage: Serialize }).serializeMessage;

test('a pre-framed message is written as the framed bytes built once; any other is framed per call', () => {
  assert.equal(installPreframedWrites(), true, 'this grpc-js still has the method framing.ts wraps');
  const message = Buffer.from('a shared RouteConfiguration');
  const view = preframe(message);
  assert.deepEqual(view, message, 'the codec hands grpc-js the message itself');
  const call = (m: Buffer) => ({ handler: { serialize: () => m } });
  const first = serializeMessage().call(call(view), {});
  const second = serializeMessage().call(call(view), {});
  assert.equal(first, second, 'every stream writes the same framed bytes (no copy per stream)');
  assert.deepEqual(first, Buffer.concat([Buffer.from([0, 0, 0, 0, message.length]), message]));
  assert.equal(first.buffer, view.buffer, 'the message is the tail of the framed bytes');

  const plain = Buffer.from('an access log message');
  const framed = serializeMessage().call(call(plain), {});
  assert.deepEqual(framed, Buffer.concat([Buffer.from([0, 0, 0, 0, plain.length]), plain]));
  plain[0] = 0x41; // 'a' -> 'A': the frame holds a copy, as grpc-js makes
  assert.equal(framed.subarray(5).toString(), 'an access log message', 'a message not pre-framed is copied into its frame');
});

test('through grpc-js: two streams receive the same pre-framed message intact, and a plain one too', async () => {
  installPreframedWrites();
  const shared = preframe(Buffer.from('x'.repeat(200_000)));
  const def: grpc.ServiceDefinition = {
    Watch: {
      path: '/test.Framing/Watch',
      requestStream: false,
      responseStream: true,
      requestSerialize: (b: Buffer) => b,
      requestDeserialize: (b: Buffer) => b,
      responseSerialize: (b: Buffer) => b,
      responseDeserialize: (b: Buffer) => b,
    },
  };
  const server = new grpc.Server();
  server.addService(def, {
    Watch: (call: grpc.ServerWritableStream<Buffer, Buffer>) => {
      call.write(shared);
      call.write(Buffer.from('own'));
      call.end();
    },
  });
  const port = await new Promise<number>((resolve, reject) =>
    server.bindAsync('127.0.0.1:0', grpc.ServerCredentials.createInsecure(), (e, p) => (e ? reject(e) : resolve(p))),
  );
  const Client = grpc.makeGenericClientConstructor(def, 'Framing');
  const client = new Client(`127.0.0.1:${port}`, grpc.credentials.createInsecure(), { 'grpc.max_receive_message_length': -1 });
  try {
    const read = () =>
      new Promise<Buffer[]>((resolve, reject) => {
        const got: Buffer[] = [];
        const s = (client as unknown as { Watch(req: Buffer): grpc.ClientReadableStream<Buffer> }).Watch(Buffer.alloc(0));
        s.on('data', (b: Buffer) => got.push(b));
        s.on('error', reject);
        s.on('end', () => resolve(got));
      });
    const [a, b] = await Promise.all([read(), read()]);
    for (const got of [a, b]) {
      assert.equal(got.length, 2);
      assert.deepEqual(got[0], shared);
      assert.equal(got[1]!.toString(), 'own');
    }
  } finally {
    client.close();
    server.forceShutdown();
  }
});
