// A minimal gRPC server for unary methods, straight on node:http2, shared by the ext_authz service
// (src/authz) and the rate-limit service (src/ratelimit). Both sit in the request path of every
// request they check, so per-call cost matters: measured on this project's machines,
// @grpc/grpc-js spent about twice the CPU per Check of this server (its per-call metadata,
// channelz and call objects), for a protocol Envoy uses in its plainest form (one uncompressed
// message each way, no metadata that matters).
//
// What it does: POST, content-type application/grpc, one length-prefixed message (compressed
// messages are refused), a response as HEADERS + DATA + trailers (grpc-status 0), or a
// trailers-only error. Unknown methods get UNIMPLEMENTED; requests that are not gRPC go to the
// `plain` handler. TCP_NODELAY is on (Envoy waits for each answer; small writes must not sit in
// Nagle's buffer).
//
// With `tls` it serves HTTP/2 over TLS (ALPN h2) and requires a client certificate that chains to
// `tls.clientCa`: a client without one, or with one from another CA, fails the handshake and never
// reaches a handler. `setSecureContext` swaps the certificate (renewal) for new handshakes.
import http2 from 'node:http2';
import type net from 'node:net';
import type tls from 'node:tls';

export const GrpcStatus = {
  OK: 0,
  CANCELLED: 1,
  UNKNOWN: 2,
  INVALID_ARGUMENT: 3,
  RESOURCE_EXHAUSTED: 8,
  UNIMPLEMENTED: 12,
  INTERNAL: 13,
  UNAVAILABLE: 14,
} as const;

export interface UnaryMethod {
  /** Full path, e.g. /envoy.service.auth.v3.Authorization/Check. */
  path: string;
  /**
   * Decodes the request message, handles it, encodes the response message: synchronously when it
   * can (the answer goes out in the same turn of the event loop), else a promise. A GrpcError,
   * thrown or rejected, is the call's status.
   */
  handle(request: Uint8Array, headers: http2.IncomingHttpHeaders): Uint8Array | Promise<Uint8Array>;
}

/** Response headers and trailers of every OK call (node copies them into each stream's frame). */
const RESPONSE_HEADERS = Object.freeze({ ':status': 200, 'content-type': 'application/grpc' });
const OK_TRAILERS = Object.freeze({ 'grpc-status': '0' });

const WAIT_FOR_TRAILERS = Object.freeze({ waitForTrailers: true });

// Listeners shared by every stream (a closure per stream would be garbage on every call).
const ignore = (): void => undefined;
/** 'wantTrailers' (emitted once per stream, after its last DATA frame): status OK. */
function sendOkTrailers(this: http2.ServerHttp2Stream): void {
  if (!this.closed && !this.destroyed) this.sendTrailers(OK_TRAILERS);
}

export class GrpcError extends Error {
  constructor(
    readonly code: number,
    message: string,
  ) {
    super(message);
  }
}

/** The server's TLS material: what it presents, and the roots client certificates must chain to. */
export interface ServerTlsMaterial {
  /** PEM certificate chain. */
  cert: string;
  /** PEM private key of `cert`. */
  key: string;
  /** PEM roots a client certificate must chain to (clients without one are refused). */
  clientCa: string;
}

export interface UnaryServerOptions {
  maxMessageBytes?: number;
  /** Serve over TLS, client certificate required; absent: plain text (h2c). */
  tls?: ServerTlsMaterial;
  /** A TLS handshake that failed (no client certificate, an untrusted one, not TLS at all...). */
  onTlsError?(err: Error, remote: string | undefined): void;
  /** Requests that are not gRPC (any other content type): answered here, else 415. */
  plain?(stream: http2.ServerHttp2Stream, headers: http2.IncomingHttpHeaders): void;
  onError?(err: Error): void;
}

export class UnaryGrpcServer {
  private readonly server: http2.Http2Server | http2.Http2SecureServer;
  private readonly sessions = new Set<http2.ServerHttp2Session>();
  private readonly methods = new Map<string, UnaryMethod>();
  private readonly maxBytes: number;

  constructor(
    methods: UnaryMethod[],
    private readonly opts: UnaryServerOptions = {},
  ) {
    for (const m of methods) this.methods.set(m.path, m);
    this.maxBytes = opts.maxMessageBytes ?? 4 * 1024 * 1024;
    const common = { settings: { maxConcurrentStreams: 4096 }, maxSessionMemory: 64 };
    this.server = opts.tls
      ? http2.createSecureServer({ ...common, ...secureContextOf(opts.tls), requestCert: true, rejectUnauthorized: true, minVersion: 'TLSv1.2' })
      : http2.createServer(common);
    // Both kinds are a net.Server emitting the same events; typed once through the plain one.
    const server = this.server as http2.Http2Server;
    server.on('connection', (socket: net.Socket) => socket.setNoDelay(true));
    server.on('session', (session) => {
      this.sessions.add(session);
      session.on('close', () => this.sessions.delete(session));
      session.on('error', () => undefined);
    });
    server.on('stream', (stream, headers) => this.onStream(stream, headers));
    if (opts.tls) {
      (this.server as http2.Http2SecureServer).on('tlsClientError', (err: Error, socket: tls.TLSSocket) => opts.onTlsError?.(err, socket.remoteAddress));
    }
  }

  /** Whether the server speaks TLS. */
  get secure(): boolean {
    return this.opts.tls !== undefined;
  }

  /** New certificate (and roots) for handshakes from now on; open connections keep theirs. */
  setSecureContext(material: ServerTlsMaterial): void {
    if (!this.opts.tls) throw new Error('not a TLS server');
    (this.server as http2.Http2SecureServer).setSecureContext(secureContextOf(material));
  }

  private trailersOnly(stream: http2.ServerHttp2Stream, code: number, message: string): void {
    if (!open(stream)) return;
    try {
      stream.respond(
        { ':status': 200, 'content-type': 'application/grpc', 'grpc-status': String(code), 'grpc-message': encodeURIComponent(message) },
        { endStream: true },
      );
    } catch {
      stream.destroy();
    }
  }

  private onStream(stream: http2.ServerHttp2Stream, headers: http2.IncomingHttpHeaders): void {
    stream.on('error', ignore);
    const method = this.methods.get(String(headers[':path']));
    const type = String(headers['content-type'] ?? '');
    if (headers[':method'] !== 'POST' || !type.startsWith('application/grpc')) {
      if (this.opts.plain) {
        this.opts.plain(stream, headers);
        return;
      }
      if (open(stream)) stream.respond({ ':status': 415 }, { endStream: true });
      return;
    }
    if (!method) {
      stream.resume();
      this.trailersOnly(stream, GrpcStatus.UNIMPLEMENTED, `unknown method ${String(headers[':path']).slice(0, 200)}`);
      return;
    }
    const chunks: Buffer[] = [];
    let size = 0;
    stream.on('data', (c: Buffer) => {
      size += c.length;
      if (size > this.maxBytes + 5) {
        this.trailersOnly(stream, GrpcStatus.RESOURCE_EXHAUSTED, 'message too large');
        stream.close(http2.constants.NGHTTP2_CANCEL);
        return;
      }
      chunks.push(c);
    });
    stream.on('end', () => {
      if (!open(stream)) return;
      const body = chunks.length === 1 ? chunks[0]! : Buffer.concat(chunks);
      if (body.length < 5) return this.trailersOnly(stream, GrpcStatus.INTERNAL, 'no request message');
      if (body[0] !== 0) return this.trailersOnly(stream, GrpcStatus.UNIMPLEMENTED, 'compressed messages are not supported');
      const len = body.readUInt32BE(1);
      if (len !== body.length - 5) return this.trailersOnly(stream, GrpcStatus.INTERNAL, 'expected exactly one request message');
      let out: Uint8Array | Promise<Uint8Array>;
      try {
        out = method.handle(body.subarray(5), headers);
      } catch (e) {
        return this.failed(stream, e as Error);
      }
      if (out instanceof Promise)
        out.then(
          (o) => this.answer(stream, o),
          (e: Error) => this.failed(stream, e),
        );
      else this.answer(stream, out);
    });
  }

  /** The response message, then the trailers with status OK. */
  private answer(stream: http2.ServerHttp2Stream, out: Uint8Array): void {
    if (!open(stream)) return; // Envoy gave up (timeout) or went away
    const frame = Buffer.allocUnsafe(5 + out.length);
    frame[0] = 0;
    frame.writeUInt32BE(out.length, 1);
    frame.set(out, 5);
    try {
      stream.respond(RESPONSE_HEADERS, WAIT_FOR_TRAILERS);
      stream.on('wantTrailers', sendOkTrailers);
      stream.end(frame);
    } catch {
      stream.destroy(); // reset meanwhile: nobody to answer
    }
  }

  private failed(stream: http2.ServerHttp2Stream, e: Error): void {
    if (!(e instanceof GrpcError)) this.opts.onError?.(e);
    this.trailersOnly(stream, e instanceof GrpcError ? e.code : GrpcStatus.INTERNAL, e instanceof GrpcError ? e.message : 'internal error');
  }

  /** Binds host:port (port 0: any); resolves to the bound port. */
  listen(host: string, port: number): Promise<number> {
    return new Promise((resolve, reject) => {
      const onError = (e: Error) => reject(e);
      this.server.once('error', onError);
      this.server.listen(port, host, () => {
        this.server.off('error', onError);
        resolve((this.server.address() as net.AddressInfo).port);
      });
    });
  }

  /** Stops accepting, lets calls in flight finish (GOAWAY), then closes what remains after 2s. */
  close(): Promise<void> {
    return new Promise((resolve) => {
      if (!this.server.listening) return resolve();
      const t = setTimeout(() => {
        for (const s of this.sessions) s.destroy();
      }, 2000);
      t.unref();
      this.server.close(() => {
        clearTimeout(t);
        resolve();
      });
      for (const s of this.sessions) s.close();
    });
  }
}

/**
 * Whether a stream can still be answered. A stream the peer reset is `closed` before it is
 * `destroyed`, and respond() on it throws (seen under load, when Envoy's timeout fired first).
 */
function open(stream: http2.ServerHttp2Stream): boolean {
  return !stream.destroyed && !stream.closed && !stream.headersSent;
}

function secureContextOf(m: ServerTlsMaterial): tls.SecureContextOptions {
  return { cert: m.cert, key: m.key, ca: m.clientCa };
}
