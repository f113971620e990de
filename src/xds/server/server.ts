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
import { SharedResponses } from './responses.js';
import { installPreframedWrites, preframe } from './framing.js';
import { SotwStream, type SotwRequest, type SotwResponse } from './sotw.js';
import type { TokenCheck, TokenVerifier } from '../../ca/tokens.js';
import type { IdentityManager } from '../../ca/identities.js';
import { GrpcCode, StreamError, type XdsStream } from './stream.js';
import type { TypeUrl } from '../resources/type-urls.js';
import { setLongTimeout, type LongTimeout } from '../../util/timers.js';

const SERVICE = '/envoy.service.discovery.v3.AggregatedDiscoveryService';

/**
 * Streams pushed to per turn of the event loop when a group's snapshot changes. A push is ~20 us of
 * JavaScript per stream (the response is shared and framed once), so a slice of 100 holds the loop
 * ~2 ms; the turn between two slices was measured at 7-24 ms (the writes of the slice before and the
 * rest of the reload), which a group of 100 streams no longer waits for half of its proxies.
 */
const FANOUT_SLICE = 100;

/** Requests of one stream handled per turn of the event loop (Envoy sends a few at a time). */
const REQUESTS_PER_TURN = 16;

/** A request whose bytes do not decode. Handed to the stream handler (instead of letting grpc-js
 * end the call on its own) so that it is counted, logged and closed like any other bad request. */
class Undecodable {
  constructor(readonly message: string) {}
}

/** Each response object's encoding, for as long as the object lives (shared responses live in SharedResponses). */
const encoded = new WeakMap<object, Buffer>();

function codec<T>(typeName: string) {
  const type = lookupType(typeName);
  return {
    serialize: (value: T): Buffer => {
      // A response shared by the streams of a group (responses.ts) is encoded once, for all of them.
      const memo = encoded.get(value as object);
      if (memo) return memo;
      // Framed once here (framing.ts): grpc-js then writes the same bytes to every stream, where
      // it would copy them into a new framed buffer per stream.
      const out = preframe(type.encode(value as object).finish());
      encoded.set(value as object, out);
      return out;
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
  identities?: IdentityManager;
  identityOf?: (group: string) => string | undefined;
  declares?: (role: 'gateway' | 'sidecar', name: string) => boolean | undefined;
  /** Longest a listener or route change waits for the clusters it names to warm on the proxy (default 5 s; 0: no waiting). */
  warmWaitMs?: number;
  /** How long clusters the routes left stay on the proxy after the routes moved away (default 5 s; 0: removed at once). */
  clusterDrainMs?: number;
}

/** Defaults of the wait for warm clusters and of the cluster drain (`serve --warm-wait-ms`, `--cluster-drain-ms`). */
export const DEFAULT_WARM_WAIT_MS = 5000;
export const DEFAULT_CLUSTER_DRAIN_MS = 5000;

/** The client certificate a TLS peer presented and the server verified (DER), if any. */
function peerCertificate(call: { getAuthContext?: () => { sslPeerCertificate?: { raw?: Buffer } } | null }): Buffer | undefined {
  return call.getAuthContext?.()?.sslPeerCertificate?.raw;
}

export class XdsServer {
  readonly registry: ProxyRegistry;
  private readonly ctx: ServerContext;
  private readonly streams = new Map<string, Set<XdsStream>>();
  /** Open streams by the id of the token they authenticated with: revocation closes them. */
  private readonly byToken = new Map<string, Set<(why: string) => void>>();
  private server?: grpc.Server;

  constructor(opts: XdsServerOptions) {
    this.registry = opts.registry ?? new ProxyRegistry();
    this.ctx = {
      cache: opts.cache,
      metrics: opts.metrics,
      logger: opts.logger,
      registry: this.registry,
      tokens: opts.tokens,
      requireToken: opts.requireToken ?? 'all',
      identities: opts.identities,
      identityOf: opts.identityOf,
      declares: opts.declares,
      responses: new SharedResponses(),
      warmWaitMs: opts.warmWaitMs ?? DEFAULT_WARM_WAIT_MS,
      clusterDrainMs: opts.clusterDrainMs ?? DEFAULT_CLUSTER_DRAIN_MS,
    };
    opts.tokens?.on('revoked', (ids: Set<string>) => {
      for (const id of ids) for (const kill of [...(this.byToken.get(id) ?? [])]) kill(`token ${id} was revoked`);
    });
    opts.cache.on('change', ({ group, types }) =>
      withSpanSync(
        'signalbox.xds.push',
        () => ({ 'signalbox.group': group, 'signalbox.types': types.map((t) => SHORT_NAME[t]), 'signalbox.streams': this.streams.get(group)?.size ?? 0 }),
        () => this.fanOut(group, types),
      ),
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
    /** Adds a bound stream to its group's set, once; true the first time. */
    const join = (): boolean => {
      if (group || !stream.status) return false;
      group = stream.status.node.group;
      let set = this.streams.get(group);
      if (!set) {
        set = new Set();
        this.streams.set(group, set);
      }
      set.add(stream);
      return true;
    };
    const finish = () => {
      if (group) this.leave(group, stream);
      untrack?.();
      stream.close();
    };
    // The proxy authenticates once, before its first request is handled: with the client
    // certificate `signalbox token --out` wrote (what Envoy's bootstrap presents), else with a
    // token in gRPC metadata. Requests arriving before that wait, in order; afterwards (once none
    // wait) each is handled as it arrives, without a promise and a microtask per request.
    let verified = !this.ctx.tokens;
    let waiting = 0;
    let untrack: (() => void) | undefined;
    const refuse = (code: number, reason: string, message: string) => {
      if (stream.closed) return;
      metrics.streamErrors.inc({ reason });
      logger.warn({ peer: stream.peer, proxy: stream.status?.node.id, reason }, `xDS stream refused: ${message}`);
      finish();
      call.emit('error', { code, details: message });
    };
    let queue: Promise<void> = this.ctx.tokens
      ? this.authenticate(call).then((a) => {
          stream.auth = a;
          verified = true;
          if (!a.ok && this.ctx.requireToken !== 'secrets') return refuse(GrpcCode.UNAUTHENTICATED, 'unauthenticated', `unauthenticated: ${a.reason}`);
          if (a.ok) untrack = this.track(a, (why) => refuse(GrpcCode.UNAUTHENTICATED, 'revoked', why));
        })
      : Promise.resolve();
    // At most REQUESTS_PER_TURN requests of one stream per turn of the event loop: past that the
    // call pauses, grpc-js stops reading its HTTP/2 stream and flow control holds the sender, so a
    // burst (a proxy NACKing 1,000 times) is decoded and handled a slice at a time between other work.
    let thisTurn = 0;
    call.on('data', (req: Req) => {
      if (++thisTurn === REQUESTS_PER_TURN) {
        call.pause();
        setImmediate(() => {
          thisTurn = 0;
          if (!call.destroyed) call.resume();
        });
      }
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
        if (req instanceof Undecodable)
          throw new StreamError(
            'undecodable',
            `request does not decode as ${stream.protocol === 'sotw' ? 'DiscoveryRequest' : 'DeltaDiscoveryRequest'}: ${req.message}`,
          );
        stream.onRequest(req);
        if (join()) {
          // A group the compiler will not build (its limit on proxy groups): the proxy hears why.
          // Nothing was sent before: a group not compiled gets no response.
          const refusal = this.ctx.cache.refusal(group!);
          if (refusal) throw new StreamError('group-limit', refusal, grpc.status.RESOURCE_EXHAUSTED);
        }
      } catch (e) {
        join(); // bound by a request that then failed: it still leaves its group in finish()
        const reason = e instanceof StreamError ? e.reason : 'internal';
        metrics.streamErrors.inc({ reason });
        logger.warn(
          { peer: stream.peer, proxy: stream.status?.node.id, reason, err: e instanceof StreamError ? undefined : e },
          `xDS stream closed: ${(e as Error).message}`,
        );
        finish();
        // Bytes that do not parse are INTERNAL (gRPC's code for a request that fails to parse);
        // a well-formed request that breaks the protocol is INVALID_ARGUMENT; a refused identity
        // says why (UNAUTHENTICATED, PERMISSION_DENIED, NOT_FOUND); our own bug INTERNAL.
        const code =
          e instanceof StreamError && e.code !== undefined
            ? e.code
            : e instanceof StreamError && e.reason !== 'undecodable'
              ? grpc.status.INVALID_ARGUMENT
              : grpc.status.INTERNAL;
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

  /**
   * Removes a finished stream from its group; when it was the group's last, the cache hears the
   * group is idle (the pipeline then stops compiling a requested group after a grace period).
   */
  private leave(group: string, stream: XdsStream): void {
    const set = this.streams.get(group);
    if (!set?.delete(stream) || set.size > 0) return;
    this.streams.delete(group);
    this.ctx.cache.release(group);
  }

  /** Checks the client certificate the peer presented, else the token in the call's metadata. */
  async authenticate(call: { metadata: grpc.Metadata }): Promise<TokenCheck> {
    const tokens = this.ctx.tokens;
    if (!tokens) return { ok: false, reason: 'no token verifier configured' };
    const der = peerCertificate(call as never);
    if (der) return tokens.verifyCertificate(der);
    const token = call.metadata.get('x-signalbox-token')[0];
    // (TLS drops a client certificate this control plane's token CA did not sign before we see it.)
    if (token === undefined)
      return {
        ok: false,
        reason:
          'no token: present a token certificate from `signalbox token --out` (one signed by another control plane does not count) or an x-signalbox-token',
      };
    return tokens.verify(String(token));
  }

  /** Closes the stream when its token is revoked or expires. Returns the undo. */
  private track(a: Extract<TokenCheck, { ok: true }>, kill: (why: string) => void): () => void {
    const { id, expiresAt } = a.claims;
    let set = this.byToken.get(id);
    if (!set) {
      set = new Set();
      this.byToken.set(id, set);
    }
    set.add(kill);
    let timer: LongTimeout | undefined;
    if (expiresAt) {
      const left = expiresAt.getTime() - Date.now();
      if (left <= 0) kill(`token ${id} expired`);
      else timer = setLongTimeout(() => kill(`token ${id} expired`), left);
    }
    return () => {
      timer?.clear();
      set.delete(kill);
      if (set.size === 0) this.byToken.delete(id);
    };
  }

  async listen(address: string, credentials: grpc.ServerCredentials = grpc.ServerCredentials.createInsecure()): Promise<number> {
    if (!installPreframedWrites()) this.ctx.logger.warn('grpc-js changed: xDS responses are framed once per stream again (slower fan-out)');
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
    return new Promise((resolve, reject) => server.bindAsync(address, credentials, (err, port) => (err ? reject(err) : resolve(port))));
  }

  /**
   * Registers an extra gRPC service (the access log service) on the same port. Its calls
   * authenticate as xDS streams do: a call without a valid token is refused before its handler
   * sees a message (a stream's messages wait, unread, until the check is done).
   */
  addService(def: grpc.ServiceDefinition, impl: grpc.UntypedServiceImplementation): void {
    const guarded: grpc.UntypedServiceImplementation = {};
    for (const [name, handler] of Object.entries(impl)) {
      guarded[name] = ((call: { metadata: grpc.Metadata; emit(e: string, v: unknown): boolean }, callback?: grpc.sendUnaryData<unknown>) => {
        if (!this.ctx.tokens || this.ctx.requireToken === 'secrets') return (handler as (...a: unknown[]) => void)(call, callback);
        void this.authenticate(call).then((a) => {
          if (a.ok) return (handler as (...a: unknown[]) => void)(call, callback);
          this.ctx.metrics.streamErrors.inc({ reason: 'unauthenticated' });
          const err = { code: grpc.status.UNAUTHENTICATED, details: `unauthenticated: ${a.reason}` };
          if (callback) callback(err as grpc.ServiceError, null);
          else call.emit('error', err);
        });
      }) as grpc.UntypedHandleCall;
    }
    this.server?.addService(def, guarded);
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
