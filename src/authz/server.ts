// The ext_authz gRPC service: envoy.service.auth.v3.Authorization/Check (see src/grpc/), with
// Envoy's own messages (protobufjs, from the registry package's protos). It runs inside
// `signalbox serve` on its own port, or alone (`signalbox authz`) for separate scaling; both feed
// it the same compiled model.
//
// Per call, the work is kept to what the answer needs (measured with `npm run bench:authz`, see
// check-codec.ts and jws.ts): the request is read by a narrow decoder (protobufjs only for odd
// messages), the decision is made synchronously when the keys are loaded (no promise per policy,
// no span wrapper unless tracing is on), and the answer is written by hand, byte-identical to
// protobufjs's encoding.
//
// Transport: TLS with a certificate from the mesh CA (its SAN holds the SPIFFE ID
// spiffe://<trust domain>/signalbox/authz, which proxies verify), and a client certificate that
// chains to the mesh trust bundle is required in the handshake: only proxies Signalbox gave an
// identity can ask for a Check or a fast-path check, or post a report. Plain text only when asked
// for (`serve --xds-insecure`, `authz --insecure`).
//
// The fast path's requests and answers (onFastPath, onReport) follow docs/jwt-fast-path-protocol.md.
import { X509Certificate } from 'node:crypto';
import { performance } from 'node:perf_hooks';
import type client from 'prom-client';
import type { Model } from '../model/model.js';
import type { Logger } from '../observability/logger.js';
import { lookupType } from '../xds/resources/protos.js';
import { AuthzEngine, type Decision } from './engine.js';
import { AuthzMetrics } from './metrics.js';
import { JWT_POLICIES_KEY } from '../ir/jwt.js';
import { GrpcError, GrpcStatus, UnaryGrpcServer } from '../grpc/unary-server.js';
import type http2 from 'node:http2';
import { fastPathAnswer, policyOfPath } from './fast-path.js';
import { FAST_PATH_HTTP } from '../protocol/jwt-fast-path.js';
import { tracingActive, withSpan } from '../observability/tracing.js';
import { decodeCheckRequest, encodeCheckResponse, type CheckAnswer, type CheckRequestView } from './check-codec.js';

const CHECK_PATH = '/envoy.service.auth.v3.Authorization/Check';

const GRPC_OK = 0;
const GRPC_PERMISSION_DENIED = 7;
const GRPC_UNAVAILABLE = 14;
const GRPC_UNAUTHENTICATED = 16;
/** The largest fast-path report read, and how many report ids are remembered (to count each once). */
const REPORT_MAX_BYTES = 65_536;
const REPORT_IDS_KEPT = 10_000;

interface CheckRequestShape {
  attributes?: {
    request?: { http?: { headers?: Record<string, string>; path?: string } };
    context_extensions?: Record<string, string>;
  };
}

/** The gRPC status of a refusal: 503 UNAVAILABLE, 403 PERMISSION_DENIED, else UNAUTHENTICATED. */
function grpcCodeOf(status: number): number {
  return status === 503 ? GRPC_UNAVAILABLE : status === 403 ? GRPC_PERMISSION_DENIED : GRPC_UNAUTHENTICATED;
}

/** A decision as check-codec.ts encodes it (the same message checkResponse describes). */
export function checkAnswer(d: Decision): CheckAnswer {
  return d.allow
    ? { allow: true, headers: d.headers, removeHeaders: d.removeHeaders }
    : { allow: false, grpcCode: grpcCodeOf(d.status), httpStatus: d.status, headers: d.headers, body: d.body };
}

/** Turns a decision into an envoy.service.auth.v3.CheckResponse (plain object). */
export function checkResponse(d: Decision): Record<string, unknown> {
  if (d.allow) {
    return {
      status: { code: GRPC_OK },
      ok_response: {
        // append false: replace whatever the client sent under that name.
        headers: d.headers.map((h) => ({ header: { key: h.name, value: h.value }, append: { value: false } })),
        headers_to_remove: d.removeHeaders,
      },
    };
  }
  const code = grpcCodeOf(d.status);
  return {
    status: { code },
    denied_response: {
      status: { code: d.status },
      headers: d.headers.map((h) => ({ header: { key: h.name, value: h.value }, append: { value: false } })),
      body: d.body,
    },
  };
}

/** TLS for the service: its certificate (followed on renewal) and the roots callers must chain to. */
export interface AuthzTls {
  /** A ServerCertificate (src/ca/server-tls.ts): emits `changed` when renewed. */
  certificate: {
    readonly certPem: string;
    readonly keyPem: string;
    on(event: 'changed', listener: () => void): unknown;
    off(event: 'changed', listener: () => void): unknown;
  };
  /** The mesh trust bundle: a caller's certificate must chain to it. */
  clientCaPem: string;
}

export interface AuthzServerOptions {
  logger: Logger;
  /** Where the service's metrics go (the control plane's registry when embedded). */
  registry?: client.Registry;
  now?: () => number;
  /** See AuthzEngine: called when any policy's keys changed. */
  onKeysChanged?: () => void;
}

export class AuthzServer {
  readonly engine: AuthzEngine;
  readonly metrics?: AuthzMetrics;
  private server?: UnaryGrpcServer;
  private stopFollowing?: () => void;
  private readonly reportIds = new Set<string>();
  private readonly policyLists = new Map<string, readonly string[]>();
  port?: number;

  constructor(private readonly opts: AuthzServerOptions) {
    this.metrics = opts.registry ? new AuthzMetrics(opts.registry) : undefined;
    this.engine = new AuthzEngine({ logger: opts.logger, metrics: this.metrics, now: opts.now, onKeysChanged: opts.onKeysChanged });
  }

  /** Takes the JWT policies of a newly applied model. */
  update(model: Pick<Model, 'jwt'>): void {
    this.engine.update(model.jwt);
  }

  /** Answers one Check (exposed for tests and the benchmark). */
  async check(request: CheckRequestShape, trace?: Record<string, string>): Promise<Decision> {
    const http = request.attributes?.request?.http;
    return this.decide(http?.headers, http?.path, request.attributes?.context_extensions?.[JWT_POLICIES_KEY], trace);
  }

  /**
   * The decision for one checked request: synchronous when no policy has to wait for keys.
   * `ext`: the route's context extension (the policy names, comma-separated).
   */
  private decide(
    headers: Record<string, string> | undefined,
    path: string | undefined,
    ext: string | undefined,
    trace: Record<string, string> | undefined,
  ): Decision | Promise<Decision> {
    const input = { headers: headers ?? {}, path: path ?? '/', policies: ext === undefined ? undefined : this.policiesOf(ext) };
    if (!tracingActive()) return this.engine.checkNow(input);
    // Continues the trace of the Check call (Envoy's tracer puts its span in the gRPC metadata),
    // else the one the checked request itself carries.
    return withSpan(
      'signalbox.authz.check',
      { 'signalbox.jwt_policies': ext ?? '' },
      async (span) => {
        const d = await this.engine.checkNow(input);
        span.setAttributes({ 'signalbox.authz.allow': d.allow, 'signalbox.authz.reason': d.reason });
        return d;
      },
      trace ?? headers,
    );
  }

  /** A route's policy names, split once per distinct extension value (a handful: one per route kind). */
  private policiesOf(ext: string): readonly string[] {
    let names = this.policyLists.get(ext);
    if (!names) {
      if (this.policyLists.size >= 1_000) this.policyLists.clear();
      names = Object.freeze(ext.split(',').filter((s) => s !== ''));
      this.policyLists.set(ext, names);
    }
    return names;
  }

  /** One Check call's bytes to the answer's bytes (synchronous when the decision is). */
  private handleCheck(bytes: Uint8Array, headers: http2.IncomingHttpHeaders): Uint8Array | Promise<Uint8Array> {
    const t0 = performance.now();
    let view: CheckRequestView;
    try {
      view = decodeCheckRequest(bytes);
    } catch {
      view = this.decodeSlow(bytes);
    }
    const d = this.decide(view.headers, view.path, view.contextExtensions?.[JWT_POLICIES_KEY], traceHeaders(headers));
    const answer = (d: Decision) => {
      this.metrics?.checkSeconds.observe({ result: d.allow ? 'allow' : 'deny' }, (performance.now() - t0) / 1000);
      return encodeCheckResponse(checkAnswer(d));
    };
    return d instanceof Promise ? d.then(answer) : answer(d);
  }

  /** protobufjs's reading of a message the narrow decoder did not expect (INVALID_ARGUMENT if it fails too). */
  private decodeSlow(bytes: Uint8Array): CheckRequestView {
    let request: CheckRequestShape;
    try {
      request = lookupType('envoy.service.auth.v3.CheckRequest').decode(bytes) as unknown as CheckRequestShape;
    } catch {
      throw new GrpcError(GrpcStatus.INVALID_ARGUMENT, 'request does not decode as a CheckRequest');
    }
    const http = request.attributes?.request?.http;
    return { headers: http?.headers, path: http?.path, contextExtensions: request.attributes?.context_extensions };
  }

  /** Whether the service is listening over TLS. */
  get secure(): boolean {
    return this.server?.secure ?? false;
  }

  /**
   * Binds `address` (HOST:PORT, port 0 for any); resolves to the bound port. With `tls`: TLS, and
   * callers must present a certificate that chains to `tls.clientCaPem`.
   */
  async listen(address: string, tls?: AuthzTls): Promise<number> {
    const m = /^\[?([^\]]*?)\]?:(\d+)$/.exec(address);
    if (!m) throw new Error(`authz address must be HOST:PORT, got "${address}"`);
    if (this.server) throw new Error('the ext_authz service is listening already');
    const material = () => ({ cert: tls!.certificate.certPem, key: tls!.certificate.keyPem, clientCa: tls!.clientCaPem });
    lookupType('envoy.service.auth.v3.CheckRequest'); // loaded now, not on the first odd message
    const server = new UnaryGrpcServer([{ path: CHECK_PATH, handle: (bytes, headers) => this.handleCheck(bytes, headers) }], {
      onError: (e) => this.opts.logger.error({ err: { message: e.message } }, 'ext_authz: Check failed'),
      plain: (stream, headers) => this.onFastPath(stream, headers),
      tls: tls ? material() : undefined,
      // Debug only: anyone can knock; what matters is that nothing without a mesh certificate gets in.
      onTlsError: (e, remote) =>
        this.opts.logger.debug({ peer: remote, reason: e.message }, 'ext_authz: TLS handshake refused (a caller needs a certificate from the mesh CA)'),
    });
    const port = await server.listen(m[1]!, Number(m[2]));
    if (tls && !hasSelfSignedRoot(tls.clientCaPem)) {
      this.opts.logger.warn(
        'the mesh trust bundle holds no root (self-signed) certificate, e.g. --ca-cert is an intermediate: the ext_authz service (Node TLS) cannot verify proxy certificates that do not chain to a root, so checks will fail closed; add the root with --ca-bundle',
      );
    }
    if (tls) {
      const follow = () => server.setSecureContext(material());
      tls.certificate.on('changed', follow);
      this.stopFollowing = () => tls.certificate.off('changed', follow);
    }
    this.server = server;
    this.port = port;
    return port;
  }

  /** The JWT fast path's requests (see fast-path.ts); anything else: 404. */
  private onFastPath(stream: http2.ServerHttp2Stream, headers: http2.IncomingHttpHeaders): void {
    stream.on('error', () => undefined);
    const path = String(headers[':path'] ?? '');
    const reply = (status: number, body = '') => {
      // A stream the caller reset (its timeout, say, under load) is closed before it is destroyed:
      // answering it would throw, and a throw here would take the whole process down.
      if (stream.destroyed || stream.closed || stream.headersSent) return;
      try {
        stream.respond({ ':status': status, 'content-type': 'text/plain; charset=utf-8' });
        stream.end(body);
      } catch {
        stream.destroy();
      }
    };
    if (headers[':method'] === 'POST' && path === FAST_PATH_HTTP.reports) {
      this.onReport(stream, headers, reply);
      return;
    }
    stream.resume(); // no body is read
    if (headers[':method'] !== 'POST') {
      reply(405);
      return;
    }
    const reported = policyOfPath(path, FAST_PATH_HTTP.report);
    if (reported !== undefined) {
      const n = Number(headers[FAST_PATH_HTTP.countHeader]);
      if (Number.isSafeInteger(n) && n > 0 && n <= 1e9)
        this.metrics?.fastPathAllows.inc({ policy: this.engine.policyNames().includes(reported) ? reported : 'unknown' }, n);
      reply(204);
      return;
    }
    const policy = policyOfPath(path, FAST_PATH_HTTP.check);
    if (policy === undefined) {
      reply(404);
      return;
    }
    const t0 = performance.now();
    const header = this.engine.tokenHeaderOf(policy);
    // Repeated values joined with "," as Envoy's ext_authz filter joins them (the script sends one).
    const raw = header === undefined ? undefined : headers[header];
    const value = Array.isArray(raw) ? raw.join(',') : raw;
    const answer = (d: Decision) => {
      this.metrics?.checkSeconds.observe({ result: d.allow ? 'allow' : 'deny' }, (performance.now() - t0) / 1000);
      reply(200, fastPathAnswer(d));
    };
    const failed = (e: Error) => {
      this.opts.logger.error({ err: { message: e.message } }, 'ext_authz: fast-path check failed');
      reply(500);
    };
    let d: Decision | Promise<Decision>;
    try {
      d = this.decide(header !== undefined && value !== undefined ? { [header]: value } : {}, '/', policy, traceHeaders(headers));
    } catch (e) {
      failed(e as Error);
      return;
    }
    if (d instanceof Promise) d.then(answer, failed);
    else answer(d);
  }

  /**
   * The compiled filter's report: "<policy> <count>" lines for every policy it repeated allows of.
   * A report cut off on its way is sent again under the same id; an id seen lately counts once.
   */
  private onReport(stream: http2.ServerHttp2Stream, headers: http2.IncomingHttpHeaders, reply: (status: number) => void): void {
    const id = String(headers[FAST_PATH_HTTP.reportId] ?? '');
    const chunks: Buffer[] = [];
    let size = 0;
    stream.on('data', (b: Buffer) => {
      size += b.length;
      if (size <= REPORT_MAX_BYTES) chunks.push(b);
    });
    stream.on('end', () => {
      if (size > REPORT_MAX_BYTES || !/^[0-9a-f]{1,16}-\d{1,20}$/.test(id)) return reply(400);
      if (this.reportIds.has(id)) return reply(200);
      this.reportIds.add(id);
      if (this.reportIds.size > REPORT_IDS_KEPT) this.reportIds.delete(this.reportIds.values().next().value!);
      const known = new Set(this.engine.policyNames());
      for (const line of Buffer.concat(chunks).toString('utf8').split('\n')) {
        const m = /^(\S+) (\d{1,10})$/.exec(line);
        if (!m) continue;
        const policy = policyOfPath(m[1]!, '');
        const n = Number(m[2]);
        if (policy !== undefined && n > 0 && n <= 1e9) this.metrics?.fastPathAllows.inc({ policy: known.has(policy) ? policy : 'unknown' }, n);
      }
      reply(200);
    });
  }

  async close(): Promise<void> {
    this.engine.close();
    const server = this.server;
    this.server = undefined;
    this.stopFollowing?.();
    this.stopFollowing = undefined;
    await server?.close();
  }
}

/** Whether a PEM bundle holds a self-signed certificate (a chain can end there). */
export function hasSelfSignedRoot(pem: string): boolean {
  for (const block of pem.match(/-----BEGIN CERTIFICATE-----[\s\S]+?-----END CERTIFICATE-----/g) ?? []) {
    try {
      const x = new X509Certificate(block);
      if (x.checkIssued(x) && x.verify(x.publicKey)) return true;
    } catch {
      // not a certificate: look at the next block
    }
  }
  return false;
}

/** The W3C trace context of a gRPC call (its metadata are HTTP/2 headers), if it has one. */
function traceHeaders(headers: Record<string, string | string[] | undefined>): Record<string, string> | undefined {
  const tp = headers.traceparent;
  if (typeof tp !== 'string') return undefined;
  const out: Record<string, string> = { traceparent: tp };
  if (typeof headers.tracestate === 'string') out.tracestate = headers.tracestate;
  return out;
}
