// The xDS server: Envoy's AggregatedDiscoveryService (SotW and Delta) on @grpc/grpc-js. Streams
// see only the snapshot cache; a bad request closes that one stream, never the server.
import * as grpc from '@grpc/grpc-js';
import { withSpanSync } from '../../observability/tracing.js';
import { SHORT_NAME } from '../resources/type-urls.js';
import type { Logger } from '../../observability/logger.js';
import type { Metrics } from '../../observability/metrics.js';
import type { SnapshotCache } from '../cache/snapshot-cache.js';
import { lookupType } from '../resources/protos.js';
import type { ServerContext } from './context.js';
import { DeltaStream, type DeltaRequest, type DeltaResponse } from './delta.js';
import { ProxyRegistry } from './proxy-status.js';
import { SotwStream, type SotwRequest, type SotwResponse } from './sotw.js';
import type { TokenVerifier } from '../../ca/tokens.js';
import { StreamError, type XdsStream } from './stream.js';
import type { TypeUrl } from '../resources/type-urls.js';

const SERVICE = '/envoy.service.discovery.v3.AggregatedDiscoveryService';

/** Streams pushed to per turn of the event loop when a group's snapshot changes. */
const FANOUT_SLICE = 50;

/** A request whose bytes do not decode. Handed to the stream handler (instead of letting grpc-js
 * end the call on its own) so that it is counted, logged and closed like any other bad request. */
class Undecodable {
  constructor(readonly message: string) {}
}

function codec<T>(typeName: string) {
  const type = lookupType(typeName);
  return {
    serialize: (value: T): Buffer => {
      const bytes = type.encode(value as object).finish();
      // protobufjs already returns a Buffer under Node: wrap, never copy (a response carries every resource's bytes).
      return Buffer.isBuffer(bytes) ? bytes : Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);
    },
    deserialize: (bytes: Buffer): T => {
      try {
        return type.decode(bytes) as unknown as T;
      } catch (e) {
        return new Undecodable((e as Error).message) as unknown as T;
      }
    },
  };
}

function adsDefinition(): grpc.ServiceDefinition {
  const sotwReq = codec<SotwRequest>('envoy.service.discovery.v3.DiscoveryRequest');
  const sotwRes = codec<SotwResponse>('envoy.service.discovery.v3.DiscoveryResponse');
  const deltaReq = codec<DeltaRequest>('envoy.service.discovery.v3.DeltaDiscoveryRequest');
  const deltaRes = codec<DeltaResponse>('envoy.service.discovery.v3.DeltaDiscoveryResponse');
  return {
    StreamAggregatedResources: {
      path: `${SERVICE}/StreamAggregatedResources`,
      requestStream: true,
      responseStream: true,
      requestSerialize: sotwReq.serialize,
      requestDeserialize: sotwReq.deserialize,
      responseSerialize: sotwRes.serialize,
      responseDeserialize: sotwRes.deserialize,
    },
    DeltaAggregatedResources: {
      path: `${SERVICE}/DeltaAggregatedResources`,
      requestStream: true,
      responseStream: true,
      requestSerialize: deltaReq.serialize,
      requestDeserialize: deltaReq.deserialize,
      responseSerialize: deltaRes.serialize,
      responseDeserialize: deltaRes.deserialize,
    },
  };
}

export interface XdsServerOptions {
  cache: SnapshotCache;
  metrics: Metrics;
  logger: Logger;
  registry?: ProxyRegistry;
  tokens?: TokenVerifier;
  requireToken?: 'secrets' | 'all';
}

export class XdsServer {
  readonly registry: ProxyRegistry;
  private readonly ctx: ServerContext;
  private readonly streams = new Map<string, Set<XdsStream>>();
  private server?: grpc.Server;

  constructor(opts: XdsServerOptions) {
    this.registry = opts.registry ?? new ProxyRegistry();
    this.ctx = { cache: opts.cache, metrics: opts.metrics, logger: opts.logger, registry: this.registry, tokens: opts.tokens, requireToken: opts.requireToken };
    opts.cache.on('change', ({ group, types }) =>
      withSpanSync('signalbox.xds.push', () => ({ 'signalbox.group': group, 'signalbox.types': types.map((t) => SHORT_NAME[t]), 'signalbox.streams': this.streams.get(group)?.size ?? 0 }), () => this.fanOut(group, types)),
    );
  }

  /**
   * Pushes a group's change to its streams FANOUT_SLICE at a time, yielding to the event loop in
   * between: each push serialises a whole response (a 1,000-route RouteConfiguration is ~125 kB),
   * so one synchronous loop over 1,000 streams would hold every buffer at once and block ACKs,
   * admin and ext_authz for the whole fan-out. The first slice is pushed at once. A stream reached
   * late composes from the then-current snapshot; a later change finds it up to date.
   */
  private fanOut(group: string, types: TypeUrl[]): void {
    const streams = [...(this.streams.get(group) ?? [])];
    const step = (from: number): void => {
      const end = Math.min(streams.length, from + FANOUT_SLICE);
      for (let i = from; i < end; i++) {
        try {
          streams[i]!.onChange(types);
        } catch (e) {
          this.ctx.logger.error({ err: e, group }, 'push failed');
        }
      }
      if (end < streams.length) setImmediate(step, end);
    };
    step(0);
  }

  private handle<Req, Res>(call: grpc.ServerDuplexStream<Req, Res>, make: (send: (r: Res) => void) => XdsStream & { onRequest(r: Req): void }): void {
    const { logger, metrics } = this.ctx;
    const stream = make((r) => {
      if (!call.writableEnded && !call.destroyed) call.write(r);
    });
    let group: string | undefined;
    const finish = () => {
      if (group) this.streams.get(group)?.delete(stream);
      stream.close();
    };
    // The token (gRPC metadata) is checked once, before the stream's first request is handled.
    // Requests arriving before that wait, in order; afterwards (once none wait) each is handled as
    // it arrives, without a promise and a microtask per request (an ACK for every push).
    const token = call.metadata.get('x-signalbox-token')[0];
    let verified = !this.ctx.tokens;
    let waiting = 0;
    let queue: Promise<void> = this.ctx.tokens
      ? this.ctx.tokens.verify(token === undefined ? undefined : String(token)).then((a) => {
          stream.auth = a;
          verified = true;
        })
      : Promise.resolve();
    call.on('data', (req: Req) => {
      if (verified && waiting === 0) return onData(req);
      waiting++;
      queue = queue.then(() => {
        waiting--;
        onData(req);
      });
    });
    const onData = (req: Req): void => {
      if (stream.closed) return; // a refused stream reads nothing more
      try {
        if (req instanceof Undecodable) throw new StreamError('undecodable', `request does not decode as ${stream.protocol === 'sotw' ? 'DiscoveryRequest' : 'DeltaDiscoveryRequest'}: ${req.message}`);
        stream.onRequest(req);
        if (!group && stream.status) {
          group = stream.status.node.group;
          let set = this.streams.get(group);
          if (!set) this.streams.set(group, (set = new Set()));
          set.add(stream);
        }
      } catch (e) {
        const reason = e instanceof StreamError ? e.reason : 'internal';
        metrics.streamErrors.inc({ reason });
        logger.warn({ peer: stream.peer, proxy: stream.status?.node.id, reason, err: e instanceof StreamError ? undefined : e }, `xDS stream closed: ${(e as Error).message}`);
        finish();
        // Bytes that do not parse are INTERNAL (gRPC's code for a request that fails to parse);
        // a well-formed request that breaks the protocol is INVALID_ARGUMENT; our own bug INTERNAL.
        const code = e instanceof StreamError && e.reason !== 'undecodable' ? grpc.status.INVALID_ARGUMENT : grpc.status.INTERNAL;
        call.emit('error', { code, details: (e as Error).message });
      }
    };
    call.on('end', () => {
      finish();
      call.end();
    });
    call.on('error', (e) => {
      logger.debug({ err: e, peer: stream.peer }, 'xDS stream error');
      finish();
    });
    call.on('cancelled', finish);
    call.on('close', finish);
  }

  async listen(address: string): Promise<number> {
    const server = new grpc.Server({
      'grpc.max_send_message_length': 64 * 1024 * 1024,
      'grpc.max_receive_message_length': 16 * 1024 * 1024,
      'grpc.keepalive_time_ms': 30_000,
      'grpc.keepalive_timeout_ms': 10_000,
      'grpc.http2.min_ping_interval_without_data_ms': 5_000,
      'grpc.keepalive_permit_without_calls': 1,
    });
    server.addService(adsDefinition(), {
      StreamAggregatedResources: (call: grpc.ServerDuplexStream<SotwRequest, SotwResponse>) =>
        this.handle(call, (send) => new SotwStream(this.ctx, call.getPeer(), send)),
      DeltaAggregatedResources: (call: grpc.ServerDuplexStream<DeltaRequest, DeltaResponse>) =>
        this.handle(call, (send) => new DeltaStream(this.ctx, call.getPeer(), send)),
    });
    this.server = server;
    return new Promise((resolve, reject) =>
      server.bindAsync(address, grpc.ServerCredentials.createInsecure(), (err, port) => (err ? reject(err) : resolve(port))),
    );
  }

  /** Registers extra gRPC services (e.g. ext_authz) on the same port. */
  addService(def: grpc.ServiceDefinition, impl: grpc.UntypedServiceImplementation): void {
    this.server?.addService(def, impl);
  }

  async close(): Promise<void> {
    const server = this.server;
    if (!server) return;
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
