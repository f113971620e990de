// A small, raw ADS client for tests and benchmarks: SotW and Delta streams over @grpc/grpc-js,
// encoded with the same protobufjs Envoy types the server uses. It can send arbitrary requests
// (including raw bytes), await responses with a timeout, ACK/NACK explicitly or automatically,
// and follow dependencies the way Envoy does (CDS -> EDS names, LDS -> RDS names).
//
// Lightweight by design, so that one process can simulate many proxies: one AdsClient holds one
// gRPC channel (one HTTP/2 connection) shared by any number of streams; resources stay encoded
// (an Any's bytes) unless a caller decodes them; `keep: false` stops a stream from buffering
// responses (they are then only emitted as `response` events and handed to waiters).
import * as grpc from '@grpc/grpc-js';
import { EventEmitter } from 'node:events';
import protobuf from 'protobufjs';
import { lookupType } from '../../src/xds/resources/protos.js';
import { messageName, SHORT_NAME, TypeUrl } from '../../src/xds/resources/type-urls.js';

const SERVICE = '/envoy.service.discovery.v3.AggregatedDiscoveryService';

export interface AnyMsg {
  type_url: string;
  value: Uint8Array;
}

export interface WireNodeSpec {
  id?: string;
  cluster?: string;
  metadata?: { fields: Record<string, { stringValue: string }> };
  user_agent_name?: string;
  user_agent_version?: string;
}

export interface ErrorDetail {
  code?: number;
  message?: string;
}

export interface DiscoveryRequest {
  version_info?: string;
  node?: WireNodeSpec | null;
  resource_names?: string[];
  type_url?: string;
  response_nonce?: string;
  error_detail?: ErrorDetail | null;
}

export interface DiscoveryResponse {
  version_info: string;
  resources: AnyMsg[];
  type_url: string;
  nonce: string;
}

export interface DeltaDiscoveryRequest {
  node?: WireNodeSpec | null;
  type_url?: string;
  resource_names_subscribe?: string[];
  resource_names_unsubscribe?: string[];
  initial_resource_versions?: Record<string, string>;
  response_nonce?: string;
  error_detail?: ErrorDetail | null;
}

export interface DeltaResource {
  name: string;
  version: string;
  resource?: AnyMsg | null;
}

export interface DeltaDiscoveryResponse {
  system_version_info: string;
  resources: DeltaResource[];
  type_url: string;
  removed_resources: string[];
  nonce: string;
}

export interface NodeOptions {
  id: string;
  /** signalbox.role; `null` leaves it out. Default "gateway". */
  role?: string | null;
  /** signalbox.gateway; `null` leaves it out. */
  gateway?: string | null;
  cluster?: string;
  /** Further metadata string fields. */
  metadata?: Record<string, string>;
}

/** An Envoy Node as Signalbox's bootstrap writes it (Struct fields in protobufjs's camelCase). */
export function makeNode(o: NodeOptions): WireNodeSpec {
  const fields: Record<string, { stringValue: string }> = {};
  if (o.role !== null) fields['signalbox.role'] = { stringValue: o.role ?? 'gateway' };
  if (o.gateway !== null && o.gateway !== undefined) fields['signalbox.gateway'] = { stringValue: o.gateway };
  for (const [k, v] of Object.entries(o.metadata ?? {})) fields[k] = { stringValue: v };
  return { id: o.id, cluster: o.cluster ?? 'signalbox-test', metadata: { fields }, user_agent_name: 'signalbox-xds-client', user_agent_version: '1' };
}

/** A gateway node: the common case. */
export function gatewayNode(id: string, gateway: string): WireNodeSpec {
  return makeNode({ id, gateway });
}

// ---------------------------------------------------------------------------------------------
// Codecs

function codec<T extends object>(name: string) {
  const type = lookupType(name);
  return {
    type,
    /** Objects are encoded; a Buffer is sent as it is (for garbage-in tests). */
    serialize: (v: T | Buffer): Buffer => (Buffer.isBuffer(v) ? v : Buffer.from(type.encode(v).finish())),
    deserialize: (b: Buffer): T => type.decode(b) as unknown as T,
  };
}

let codecs: ReturnType<typeof makeCodecs> | undefined;
function makeCodecs() {
  return {
    sotwReq: codec<DiscoveryRequest>('envoy.service.discovery.v3.DiscoveryRequest'),
    sotwRes: codec<DiscoveryResponse>('envoy.service.discovery.v3.DiscoveryResponse'),
    deltaReq: codec<DeltaDiscoveryRequest>('envoy.service.discovery.v3.DeltaDiscoveryRequest'),
    deltaRes: codec<DeltaDiscoveryResponse>('envoy.service.discovery.v3.DeltaDiscoveryResponse'),
  };
}
function getCodecs() {
  codecs ??= makeCodecs();
  return codecs;
}

/** Encodes a request message to bytes (e.g. to corrupt it on purpose). */
export function encodeSotwRequest(req: DiscoveryRequest): Buffer {
  return getCodecs().sotwReq.serialize(req);
}
export function encodeDeltaRequest(req: DeltaDiscoveryRequest): Buffer {
  return getCodecs().deltaReq.serialize(req);
}

/** Decodes an Any into plain JSON-shaped data (nested Anys unpacked with "@type"). */
export function decodeAny<T = Record<string, any>>(any: AnyMsg): T {
  const t = lookupType(messageName(any.type_url));
  return t.toObject(t.decode(any.value), { json: true, enums: String, longs: Number, defaults: false }) as T;
}

/**
 * The name of an encoded xDS resource without decoding it: field 1 is the name in Cluster,
 * ClusterLoadAssignment (cluster_name), Listener, RouteConfiguration and Secret.
 */
export function resourceName(any: AnyMsg): string {
  const r = protobuf.Reader.create(any.value);
  while (r.pos < r.len) {
    const tag = r.uint32();
    if (tag >>> 3 === 1 && (tag & 7) === 2) return r.string();
    r.skipType(tag & 7);
  }
  return '';
}

/** The route configuration names a Listener's HTTP connection managers load over RDS. */
export function routeConfigNames(listener: AnyMsg): string[] {
  const l = decodeAny<{ filter_chains?: { filters?: { typed_config?: { rds?: { route_config_name?: string } } }[] }[]; default_filter_chain?: unknown }>(
    listener,
  );
  const out = new Set<string>();
  for (const fc of l.filter_chains ?? [])
    for (const f of fc.filters ?? []) if (f.typed_config?.rds?.route_config_name) out.add(f.typed_config.rds.route_config_name);
  return [...out].sort();
}

/** The names of the EDS clusters in a Cluster resource list. */
function edsClusterNames(resources: AnyMsg[]): string[] {
  const out: string[] = [];
  for (const any of resources) {
    const c = decodeAny<{ name: string; type?: string; eds_cluster_config?: unknown }>(any);
    if (c.type === 'EDS' || c.eds_cluster_config) out.push(c.name);
  }
  return out.sort();
}

export function shortType(typeUrl: string): string {
  return (SHORT_NAME as Record<string, string>)[typeUrl] ?? typeUrl;
}

// ---------------------------------------------------------------------------------------------
// Streams

export interface StreamOptions {
  node: WireNodeSpec;
  /** ACK every response as soon as it arrives. */
  autoAck?: boolean;
  /** Behave like Envoy: subscribe EDS to the clusters of each CDS response, RDS to the route
   * configurations of each LDS response (before ACKing them when autoAck is on). */
  follow?: boolean;
  /** Keep unconsumed responses for next()/drain() and all in `history` (default true). */
  keep?: boolean;
  /** Send the node on every request instead of only the first (Envoy's default is first only). */
  nodeOnEveryRequest?: boolean;
  /** Default timeout of next() (ms). */
  timeoutMs?: number;
  metadata?: grpc.Metadata;
}

interface Waiter<Res> {
  pred: (r: Res) => boolean;
  resolve: (r: Res) => void;
  reject: (e: Error) => void;
  timer: NodeJS.Timeout;
}

type Events<Res> = { response: [Res]; status: [grpc.StatusObject] };

abstract class BaseStream<Req extends object, Res extends { type_url: string; nonce: string }> extends EventEmitter<Events<Res>> {
  /** Every response received, in order (when keep is on). */
  readonly history: Res[] = [];
  /** Requests sent, in order (decoded form; raw bytes are recorded as a Buffer). */
  readonly sent: (Req | Buffer)[] = [];
  /** Resolves with the final gRPC status of the stream. */
  readonly status: Promise<grpc.StatusObject>;
  finalStatus?: grpc.StatusObject;
  protected readonly backlog: Res[] = [];
  private readonly waiters: Waiter<Res>[] = [];
  private nodeSent = false;
  protected readonly call: grpc.ClientDuplexStream<Req | Buffer, Res>;

  /** This stream's own copy of its options (setAutoAck changes it, not the caller's object). */
  protected readonly opts: StreamOptions;

  constructor(client: grpc.Client, method: string, opts: StreamOptions, serialize: (v: Req | Buffer) => Buffer, deserialize: (b: Buffer) => Res) {
    super();
    this.opts = { ...opts };
    this.call = client.makeBidiStreamRequest(`${SERVICE}/${method}`, serialize, deserialize, opts.metadata ?? new grpc.Metadata(), {});
    this.status = new Promise((resolve) => {
      this.call.on('status', (s: grpc.StatusObject) => {
        this.finalStatus = s;
        const err = new Error(`stream ended with status ${grpc.status[s.code] ?? s.code}: ${s.details}; received ${this.summary()}`);
        for (const w of this.waiters.splice(0)) {
          clearTimeout(w.timer);
          w.reject(err);
        }
        this.emit('status', s);
        resolve(s);
      });
    });
    this.call.on('error', () => undefined); // reported through `status`
    this.call.on('data', (r: Res) => this.onData(r));
  }

  get ended(): boolean {
    return this.finalStatus !== undefined;
  }

  private onData(r: Res): void {
    if (this.opts.keep !== false) this.history.push(r);
    this.react(r);
    this.emit('response', r);
    const i = this.waiters.findIndex((w) => w.pred(r));
    if (i >= 0) {
      const [w] = this.waiters.splice(i, 1);
      clearTimeout(w!.timer);
      w!.resolve(r);
    } else if (this.opts.keep !== false) this.backlog.push(r);
  }

  /** Protocol reaction to a response (following, auto ACK). */
  protected abstract react(r: Res): void;

  /** Turns automatic ACKs on or off from now on (a test that answers by hand after syncing). */
  setAutoAck(on: boolean): void {
    this.opts.autoAck = on;
  }

  /** Adds the node to a request when it is the first one (or on every request if asked). */
  protected withNode(req: Req): Req {
    if (this.opts.nodeOnEveryRequest || !this.nodeSent) {
      this.nodeSent = true;
      return { node: this.opts.node, ...req };
    }
    return req;
  }

  /** Writes any request (or raw bytes) exactly as given. */
  sendRaw(req: Req | Buffer): void {
    if (!Buffer.isBuffer(req) && 'node' in req && req.node) this.nodeSent = true;
    this.sent.push(req);
    if (!this.ended) this.call.write(req);
  }

  /** The first unconsumed response matching `pred` (from the backlog, else the next to come). */
  next(pred: (r: Res) => boolean = () => true, timeoutMs = this.opts.timeoutMs ?? 5000): Promise<Res> {
    const i = this.backlog.findIndex(pred);
    if (i >= 0) return Promise.resolve(this.backlog.splice(i, 1)[0]!);
    if (this.ended) return Promise.reject(new Error(`stream already ended (${grpc.status[this.finalStatus!.code]}: ${this.finalStatus!.details})`));
    return new Promise((resolve, reject) => {
      const w: Waiter<Res> = {
        pred,
        resolve,
        reject,
        timer: setTimeout(() => {
          this.waiters.splice(this.waiters.indexOf(w), 1);
          reject(new Error(`no matching xDS response within ${timeoutMs} ms; received ${this.summary()}`));
        }, timeoutMs),
      };
      this.waiters.push(w);
    });
  }

  /** The next unconsumed response of a type. */
  nextOf(typeUrl: string, timeoutMs?: number): Promise<Res> {
    return this.next((r) => r.type_url === typeUrl, timeoutMs);
  }

  /** Removes and returns every unconsumed response (optionally only those matching). */
  drain(pred: (r: Res) => boolean = () => true): Res[] {
    const out: Res[] = [];
    for (let i = 0; i < this.backlog.length; ) {
      if (pred(this.backlog[i]!)) out.push(...this.backlog.splice(i, 1));
      else i++;
    }
    return out;
  }

  /** Unconsumed responses, without consuming them. */
  peek(pred: (r: Res) => boolean = () => true): Res[] {
    return this.backlog.filter(pred);
  }

  /** Resolves when the stream ends, or rejects after timeoutMs. */
  closed(timeoutMs = this.opts.timeoutMs ?? 5000): Promise<grpc.StatusObject> {
    let timer: NodeJS.Timeout;
    return Promise.race([
      this.status.finally(() => clearTimeout(timer)),
      new Promise<never>((_, reject) => {
        timer = setTimeout(() => reject(new Error(`stream still open after ${timeoutMs} ms; received ${this.summary()}`)), timeoutMs);
      }),
    ]);
  }

  /** Half-closes the stream (the client sends no more requests). */
  end(): void {
    if (!this.ended) this.call.end();
  }

  /**
   * Cancels the stream (as a proxy that goes away does). Beware a grpc-js client race: a call
   * cancelled in the same tick it was created reports CANCELLED here, yet its HTTP/2 stream may
   * still open, deliver the queued requests and never be reset, so the server keeps it. Cancel
   * once the server has seen the stream (e.g. after a response) to simulate a disconnect.
   */
  cancel(): void {
    if (!this.ended) this.call.cancel();
  }

  /** A one-line description of what was received, for failure messages. */
  summary(): string {
    const list = this.history.map((r) => this.describe(r));
    return list.length ? list.join(', ') : 'nothing';
  }

  protected abstract describe(r: Res): string;
}

/** A State-of-the-World ADS stream. */
export class SotwClientStream extends BaseStream<DiscoveryRequest, DiscoveryResponse> {
  /** The current subscription per type ([] is wildcard for LDS/CDS). */
  readonly subscriptions = new Map<string, string[]>();
  /** The last version accepted (ACKed) per type. */
  readonly accepted = new Map<string, string>();
  /** The last nonce received per type. */
  readonly lastNonce = new Map<string, string>();

  constructor(client: grpc.Client, opts: StreamOptions) {
    const c = getCodecs();
    super(client, 'StreamAggregatedResources', opts, c.sotwReq.serialize, c.sotwRes.deserialize);
  }

  /** Sends a (new or changed) subscription for a type, carrying the last version and nonce as Envoy does. */
  request(typeUrl: string, names: string[] = [], extra: Partial<DiscoveryRequest> = {}): void {
    this.subscriptions.set(typeUrl, [...names]);
    this.sendRaw(
      this.withNode({
        type_url: typeUrl,
        resource_names: names,
        version_info: this.accepted.get(typeUrl) ?? '',
        response_nonce: this.lastNonce.get(typeUrl) ?? '',
        ...extra,
      }),
    );
  }

  /** ACKs a response: its version and nonce, with the current subscription of its type. */
  ack(r: DiscoveryResponse): void {
    this.accepted.set(r.type_url, r.version_info);
    this.sendRaw(
      this.withNode({ type_url: r.type_url, version_info: r.version_info, response_nonce: r.nonce, resource_names: this.subscriptions.get(r.type_url) ?? [] }),
    );
  }

  /** NACKs a response: the previous accepted version, its nonce and an error_detail. */
  nack(r: DiscoveryResponse, message: string, code = grpc.status.INVALID_ARGUMENT): void {
    this.sendRaw(
      this.withNode({
        type_url: r.type_url,
        version_info: this.accepted.get(r.type_url) ?? '',
        response_nonce: r.nonce,
        resource_names: this.subscriptions.get(r.type_url) ?? [],
        error_detail: { code, message },
      }),
    );
  }

  protected react(r: DiscoveryResponse): void {
    this.lastNonce.set(r.type_url, r.nonce);
    if (this.opts.follow) {
      let dep: string | undefined;
      let names: string[] = [];
      if (r.type_url === TypeUrl.Cluster) {
        dep = TypeUrl.Endpoint;
        names = edsClusterNames(r.resources);
      } else if (r.type_url === TypeUrl.Listener) {
        dep = TypeUrl.Route;
        names = [...new Set(r.resources.flatMap(routeConfigNames))].sort();
      }
      const now = dep ? this.subscriptions.get(dep) : undefined;
      if (dep && (now === undefined ? names.length > 0 : now.join('\n') !== names.join('\n'))) this.request(dep, names);
    }
    if (this.opts.autoAck) this.ack(r);
  }

  protected describe(r: DiscoveryResponse): string {
    return `${shortType(r.type_url)}(v=${r.version_info.slice(0, 8)} nonce=${r.nonce} n=${r.resources.length})`;
  }
}

/** An incremental (Delta) ADS stream. */
export class DeltaClientStream extends BaseStream<DeltaDiscoveryRequest, DeltaDiscoveryResponse> {
  /** What the client holds per type: name -> version (updated from every response). */
  readonly have = new Map<string, Map<string, string>>();
  /** Explicit subscriptions per type. */
  readonly subscribed = new Map<string, Set<string>>();
  private readonly edsClusters = new Set<string>();
  private readonly listenerRoutes = new Map<string, string[]>();

  constructor(client: grpc.Client, opts: StreamOptions) {
    const c = getCodecs();
    super(client, 'DeltaAggregatedResources', opts, c.deltaReq.serialize, c.deltaRes.deserialize);
  }

  holding(typeUrl: string): Map<string, string> {
    let m = this.have.get(typeUrl);
    if (!m) {
      m = new Map();
      this.have.set(typeUrl, m);
    }
    return m;
  }

  /** Subscribes names (or '*'); with `initialVersions` on a type's first request. */
  subscribe(typeUrl: string, names: string[], extra: Partial<DeltaDiscoveryRequest> = {}): void {
    let s = this.subscribed.get(typeUrl);
    if (!s) {
      s = new Set();
      this.subscribed.set(typeUrl, s);
    }
    for (const n of names) s.add(n);
    this.sendRaw(this.withNode({ type_url: typeUrl, resource_names_subscribe: names, ...extra }));
  }

  unsubscribe(typeUrl: string, names: string[]): void {
    const s = this.subscribed.get(typeUrl);
    const h = this.have.get(typeUrl);
    for (const n of names) {
      s?.delete(n);
      h?.delete(n);
    }
    this.sendRaw(this.withNode({ type_url: typeUrl, resource_names_unsubscribe: names }));
  }

  ack(r: DeltaDiscoveryResponse): void {
    this.sendRaw(this.withNode({ type_url: r.type_url, response_nonce: r.nonce }));
  }

  nack(r: DeltaDiscoveryResponse, message: string, code = grpc.status.INVALID_ARGUMENT): void {
    this.sendRaw(this.withNode({ type_url: r.type_url, response_nonce: r.nonce, error_detail: { code, message } }));
  }

  protected react(r: DeltaDiscoveryResponse): void {
    const h = this.holding(r.type_url);
    for (const x of r.resources) h.set(x.name, x.version);
    for (const n of r.removed_resources) h.delete(n);
    if (this.opts.follow) {
      let dep: string | undefined;
      let want: Set<string> | undefined;
      if (r.type_url === TypeUrl.Cluster) {
        for (const x of r.resources) {
          if (x.resource && edsClusterNames([x.resource]).length) this.edsClusters.add(x.name);
          else this.edsClusters.delete(x.name);
        }
        for (const n of r.removed_resources) this.edsClusters.delete(n);
        dep = TypeUrl.Endpoint;
        want = this.edsClusters;
      } else if (r.type_url === TypeUrl.Listener) {
        for (const x of r.resources) this.listenerRoutes.set(x.name, x.resource ? routeConfigNames(x.resource) : []);
        for (const n of r.removed_resources) this.listenerRoutes.delete(n);
        dep = TypeUrl.Route;
        want = new Set([...this.listenerRoutes.values()].flat());
      }
      if (dep && want) {
        const cur = this.subscribed.get(dep) ?? new Set<string>();
        const add = [...want].filter((n) => !cur.has(n)).sort();
        const drop = [...cur].filter((n) => !want.has(n)).sort();
        if (drop.length) this.unsubscribe(dep, drop);
        if (add.length) this.subscribe(dep, add);
      }
    }
    if (this.opts.autoAck) this.ack(r);
  }

  protected describe(r: DeltaDiscoveryResponse): string {
    return `${shortType(r.type_url)}(+${r.resources.map((x) => x.name).join('|')} -${r.removed_resources.join('|')} nonce=${r.nonce})`;
  }
}

/**
 * How a client reaches a TLS xDS server: the CA to verify it with, optionally a client
 * certificate, and the token (gRPC metadata) each stream presents for the node it claims.
 */
export interface AdsAuth {
  ca: Buffer;
  cert?: { certChain: Buffer; privateKey: Buffer };
  token?: (node: WireNodeSpec) => string | undefined;
}

/** One gRPC channel to an ADS server, shared by any number of SotW and Delta streams. */
export class AdsClient {
  readonly client: grpc.Client;
  private readonly streams = new Set<SotwClientStream | DeltaClientStream>();

  constructor(
    target: string,
    options: grpc.ChannelOptions = {},
    private readonly auth?: AdsAuth,
  ) {
    // A distinct channel per AdsClient (not the process-wide subchannel pool), so that N clients
    // really are N connections when a benchmark wants that.
    const creds = auth ? grpc.credentials.createSsl(auth.ca, auth.cert?.privateKey ?? null, auth.cert?.certChain ?? null) : grpc.credentials.createInsecure();
    this.client = new grpc.Client(target, creds, { 'grpc.use_local_subchannel_pool': 1, 'grpc.max_receive_message_length': 64 * 1024 * 1024, ...options });
  }

  /** The stream's metadata: as given, else the token for its node (when the client has a token source). */
  private withToken(opts: StreamOptions): StreamOptions {
    if (opts.metadata || !this.auth?.token) return opts;
    const token = this.auth.token(opts.node);
    if (token === undefined) return opts;
    const metadata = new grpc.Metadata();
    metadata.set('x-signalbox-token', token);
    return { ...opts, metadata };
  }

  sotw(opts: StreamOptions): SotwClientStream {
    const s = new SotwClientStream(this.client, this.withToken(opts));
    this.track(s);
    return s;
  }

  delta(opts: StreamOptions): DeltaClientStream {
    const s = new DeltaClientStream(this.client, this.withToken(opts));
    this.track(s);
    return s;
  }

  private track(s: SotwClientStream | DeltaClientStream): void {
    this.streams.add(s);
    void s.status.then(() => this.streams.delete(s));
  }

  get openStreams(): number {
    return this.streams.size;
  }

  /** Cancels every open stream and closes the channel. */
  close(): void {
    for (const s of this.streams) s.cancel();
    this.streams.clear();
    this.client.close();
  }
}
