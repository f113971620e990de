// The ext_authz gRPC service: envoy.service.auth.v3.Authorization/Check on @grpc/grpc-js, with
// Envoy's own messages (protobufjs, from the registry package's protos). It runs inside
// `signalbox serve` on its own port, or alone (`signalbox authz`) for separate scaling; both feed
// it the same compiled model.
import * as grpc from '@grpc/grpc-js';
import { performance } from 'node:perf_hooks';
import type client from 'prom-client';
import type { Model } from '../model/model.js';
import type { Logger } from '../observability/logger.js';
import { lookupType } from '../xds/resources/protos.js';
import { AuthzEngine, type Decision } from './engine.js';
import { AuthzMetrics } from './metrics.js';
import { JWT_POLICIES_KEY } from '../ir/jwt.js';

const SERVICE = '/envoy.service.auth.v3.Authorization';

const GRPC_OK = 0;
const GRPC_PERMISSION_DENIED = 7;
const GRPC_UNAVAILABLE = 14;
const GRPC_UNAUTHENTICATED = 16;

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

function definition(): grpc.ServiceDefinition {
  const req = lookupType('envoy.service.auth.v3.CheckRequest');
  const res = lookupType('envoy.service.auth.v3.CheckResponse');
  return {
    Check: {
      path: `${SERVICE}/Check`,
      requestStream: false,
      responseStream: false,
      requestSerialize: (v: object) => Buffer.from(req.encode(req.fromObject(v)).finish()),
      requestDeserialize: (b: Buffer) => req.decode(b),
      responseSerialize: (v: object) => Buffer.from(res.encode(res.fromObject(v)).finish()),
      responseDeserialize: (b: Buffer) => res.toObject(res.decode(b), { enums: String, longs: Number, defaults: false }),
    },
  };
}

export interface AuthzServerOptions {
  logger: Logger;
  /** Where the service's metrics go (the control plane's registry when embedded). */
  registry?: client.Registry;
  now?: () => number;
}

export class AuthzServer {
  readonly engine: AuthzEngine;
  readonly metrics?: AuthzMetrics;
  private server?: grpc.Server;
  port?: number;

  constructor(private readonly opts: AuthzServerOptions) {
    this.metrics = opts.registry ? new AuthzMetrics(opts.registry) : undefined;
    this.engine = new AuthzEngine({ logger: opts.logger, metrics: this.metrics, now: opts.now });
  }

  /** Takes the JWT policies of a newly applied model. */
  update(model: Pick<Model, 'jwt'>): void {
    this.engine.update(model.jwt);
  }

  /** Answers one Check (exposed for tests and the benchmark). */
  async check(request: CheckRequestShape): Promise<Decision> {
    const http = request.attributes?.request?.http;
    const ext = request.attributes?.context_extensions?.[JWT_POLICIES_KEY];
    return this.engine.check({
      headers: http?.headers ?? {},
      path: http?.path ?? '/',
      policies: ext === undefined ? undefined : ext.split(',').filter((s) => s !== ''),
    });
  }

  /** Binds `address` (HOST:PORT, port 0 for any); resolves to the bound port. */
  async listen(address: string): Promise<number> {
    const server = new grpc.Server({
      'grpc.max_receive_message_length': 4 * 1024 * 1024,
      'grpc.keepalive_time_ms': 30_000,
      'grpc.keepalive_timeout_ms': 10_000,
      'grpc.http2.min_ping_interval_without_data_ms': 5_000,
      'grpc.keepalive_permit_without_calls': 1,
    });
    server.addService(definition(), {
      Check: (call: grpc.ServerUnaryCall<CheckRequestShape, Record<string, unknown>>, callback: grpc.sendUnaryData<Record<string, unknown>>) => {
        const t0 = performance.now();
        this.check(call.request).then(
          (d) => {
            this.metrics?.checkSeconds.observe({ result: d.allow ? 'allow' : 'deny' }, (performance.now() - t0) / 1000);
            callback(null, checkResponse(d));
          },
          (e: Error) => {
            this.opts.logger.error({ err: { message: e.message } }, 'ext_authz: Check failed');
            callback({ code: grpc.status.INTERNAL, details: 'internal error' });
          },
        );
      },
    });
    const port = await new Promise<number>((resolve, reject) => server.bindAsync(address, grpc.ServerCredentials.createInsecure(), (err, p) => (err ? reject(err) : resolve(p))));
    this.server = server;
    this.port = port;
    return port;
  }

  async close(): Promise<void> {
    this.engine.close();
    const server = this.server;
    if (!server) return;
    this.server = undefined;
    await new Promise<void>((resolve) => {
      const t = setTimeout(() => {
        server.forceShutdown();
        resolve();
      }, 2000);
      server.tryShutdown(() => {
        clearTimeout(t);
        resolve();
      });
    });
  }
}
