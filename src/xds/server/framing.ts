// Pre-framed responses: a response shared by the streams of a group (responses.ts) is encoded once
// and given its 5-byte gRPC prefix once, and every stream writes those same bytes.
//
// grpc-js frames each message itself, per stream: its server call's serializeMessage allocates a
// new buffer of 5 + the message's length and copies the message into it, and offers no way to
// write bytes already framed. For a ~126 kB RouteConfiguration pushed to 1,000 streams that is
// 126 MB copied and left as garbage per change. Here the codec builds the framed bytes once and
// hands grpc-js a view of the message inside them; serializeMessage, wrapped below, recognises
// such a view and returns the framed bytes it lives in. Anything else (every other service's
// messages, a grpc-js whose internals moved) is framed exactly as grpc-js does.
import { BaseServerInterceptingCall } from '@grpc/grpc-js/build/src/server-interceptors.js';

/** A message's bytes (a view) -> the framed bytes it is the tail of. */
const framedOf = new WeakMap<Buffer, Buffer>();

/** The message's encoding, inside framed bytes built once: the prefix (uncompressed, length), then the message. */
export function preframe(message: Uint8Array): Buffer {
  const framed = Buffer.allocUnsafe(5 + message.byteLength);
  framed[0] = 0;
  framed.writeUInt32BE(message.byteLength, 1);
  framed.set(message, 5);
  const view = framed.subarray(5);
  framedOf.set(view, framed);
  return view;
}

interface CallInternals {
  handler: { serialize(value: unknown): Buffer };
}

let installed: boolean | undefined;

/**
 * Makes grpc-js write pre-framed messages as they are (once per process). False when grpc-js no
 * longer has the method this wraps: messages are then framed per stream as before (still correct).
 */
export function installPreframedWrites(): boolean {
  if (installed !== undefined) return installed;
  const proto = (BaseServerInterceptingCall as unknown as { prototype: Record<string, unknown> } | undefined)?.prototype;
  installed = typeof proto?.serializeMessage === 'function';
  if (!proto || !installed) return installed;
  proto.serializeMessage = function serializeMessage(this: CallInternals, value: unknown): Buffer {
    const message = this.handler.serialize(value);
    const framed = framedOf.get(message);
    if (framed) return framed;
    // What grpc-js does (response compression is not supported there either).
    const out = Buffer.allocUnsafe(message.byteLength + 5);
    out.writeUInt8(0, 0);
    out.writeUInt32BE(message.byteLength, 1);
    message.copy(out, 5);
    return out;
  };
  return installed;
}
