// The ext_authz gRPC service: envoy.service.auth.v3.Authorization/Check (see grpc-h2.ts), with
// Envoy's own messages (protobufjs, from the registry package's protos). It runs inside
// `signalbox serve` on its own port, or alone (`signalbox authz`) for separate scaling; both feed
// it the same compiled model.
//
// Transport: TLS with a certificate from the mesh CA (its SAN holds the SPIFFE ID
// spiffe://<trust domain>/signalbox/authz, which proxies verify), and a client certificate that
// chains to the mesh trust bundle is required in the handshake: only proxies Signalbox gave an
// identity can ask for a Check or a fast-path check, or post a report. Plain text only when asked
// for (`serve --xds-insecure`, `authz --insecure`).
import { X509Certificate } from 'node:crypto';
import { performance } from 'node:perf_hooks';
import type client from 'prom-client';
import type { Model } from '../model/model.js';
import type { Logger } from '../observability/logger.js';
import { lookupType } from '../xds/resources/protos.js';
import { AuthzEngine, type Decision } from './engine.js';
import { AuthzMetrics } from './metrics.js';
import { JWT_POLICIES_KEY } from '../ir/jwt.js';
import { GrpcError, GrpcStatus, UnaryGrpcServer } from './grpc-h2.js';
import type http2 from 'node:http2';
import { fastPathAnswer, policyOfPath } from './fast-path.js';
import { FAST_PATH_HTTP } from '../xds/translator/filters/jwt-fast.js';
import { withSpan } from '../observability/tracing.js';

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
  const code = d.status === 503 ? GRPC_UNAVAILABLE : d.status === 403 ? GRPC_PERMISSION_DENIED : GRPC_UNAUTHENTICATED;
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
  certificate: { readonly certPem: string; readonly keyPem: string; on(event: 'changed', listener: () => void): unknown; off(event: 'changed', listener: () => void): unknown };
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
    const ext = request.attributes?.context_extensions?.[JWT_POLICIES_KEY];
    // Continues the trace of the Check call (Envoy's tracer puts its span in the gRPC metadata),
    // else the one the checked request itself carries.
    return withSpan(
      'signalbox.authz.check',
      { 'signalbox.jwt_policies': ext ?? '' },
      async (span) => {
        const d = await this.engine.check({
          headers: http?.headers ?? {},
          path: http?.path ?? '/',
          policies: ext === undefined ? undefined : ext.split(',').filter((s) => s !== ''),
        });
        span.setAttributes({ 'signalbox.authz.allow': d.allow, 'signalbox.authz.reason': d.reason });
        return d;
      },
      trace ?? http?.headers,
    );
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
    const req = lookupType('envoy.service.auth.v3.CheckRequest');
    const res = lookupType('envoy.service.auth.v3.CheckResponse');
    const server = new UnaryGrpcServer(
      [
        {
          path: CHECK_PATH,
          handle: async (bytes, headers) => {
            const t0 = performance.now();
            let request: CheckRequestShape;
            try {
              request = req.decode(bytes) as unknown as CheckRequestShape;
            } catch {
              throw new GrpcError(GrpcStatus.INVALID_ARGUMENT, 'request does not decode as a CheckRequest');
            }
            const d = await this.check(request, traceHeaders(headers));
            this.metrics?.checkSeconds.observe({ result: d.allow ? 'allow' : 'deny' }, (performance.now() - t0) / 1000);
            return res.encode(res.fromObject(checkResponse(d))).finish();
          },
        },
      ],
      {
        onError: (e) => this.opts.logger.error({ err: { message: e.message } }, 'ext_authz: Check failed'),
        plain: (stream, headers) => this.onFastPath(stream, headers),
        tls: tls ? material() : undefined,
        // Debug only: anyone can knock; what matters is that nothing without a mesh certificate gets in.
        onTlsError: (e, remote) => this.opts.logger.debug({ peer: remote, reason: e.message }, 'ext_authz: TLS handshake refused (a caller needs a certificate from the mesh CA)'),
      },
    );
    const port = await server.listen(m[1]!, Number(m[2]));
    if (tls && !hasSelfSignedRoot(tls.clientCaPem)) {
      this.opts.logger.warn('the mesh trust bundle holds no root (self-signed) certificate, e.g. --ca-cert is an intermediate: the ext_authz service (Node TLS) cannot verify proxy certificates that do not chain to a root, so checks will fail closed; add the root with --ca-bundle');
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
      if (stream.destroyed || stream.headersSent) return;
      stream.respond({ ':status': status, 'content-type': 'text/plain; charset=utf-8' });
      stream.end(body);
    };
    if (headers[':method'] === 'POST' && path === FAST_PATH_HTTP.reports) return this.onReport(stream, headers, reply);
    stream.resume(); // no body is read
    if (headers[':method'] !== 'POST') return reply(405);
    const reported = policyOfPath(path, FAST_PATH_HTTP.report);
    if (reported !== undefined) {
      const n = Number(headers[FAST_PATH_HTTP.countHeader]);
      if (Number.isSafeInteger(n) && n > 0 && n <= 1e9) this.metrics?.fastPathAllows.inc({ policy: this.engine.policyNames().includes(reported) ? reported : 'unknown' }, n);
      return reply(204);
    }
    const policy = policyOfPath(path, FAST_PATH_HTTP.check);
    if (policy === undefined) return reply(404);
    const t0 = performance.now();
    const header = this.engine.tokenHeaderOf(policy);
    // Repeated values joined with "," as Envoy's ext_authz filter joins them (the script sends one).
    const raw = header === undefined ? undefined : headers[header];
    const value = Array.isArray(raw) ? raw.join(',') : raw;
    this.check({ attributes: { request: { http: { headers: header !== undefined && value !== undefined ? { [header]: value } : {}, path: '/' } }, context_extensions: { [JWT_POLICIES_KEY]: policy } } }, traceHeaders(headers)).then(
      (d) => {
        this.metrics?.checkSeconds.observe({ result: d.allow ? 'allow' : 'deny' }, (performance.now() - t0) / 1000);
        reply(200, fastPathAnswer(d));
      },
      (e: Error) => {
        this.opts.logger.error({ err: { message: e.message } }, 'ext_authz: fast-path check failed');
        reply(500);
      },
    );
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
