// A narrow decoder for envoy.service.accesslog.v3.StreamAccessLogsMessage. It reads only the
// fields the traffic aggregation needs (node id, log name, route, upstream cluster, status, the
// response flags we count, duration, attempts, the peer's SPIFFE ID) and skips everything else
// without building objects for it. A full protobufjs decode of the same messages costs several
// times more per entry (see docs/observability.md), and access logs arrive at request rate.
import protobuf from 'protobufjs';

const { Reader } = protobuf;
type ReaderT = protobuf.Reader;

/** Response flags Signalbox counts, as bits. */
export const Flag = {
  /** UO: upstream overflow (circuit breaker). */
  Overflow: 1,
  /** UR: upstream remote reset. */
  RemoteReset: 2,
  /** UC: upstream connection termination. */
  ConnectionTermination: 4,
  /** UF: upstream connection failure. */
  ConnectionFailure: 8,
  /** LR: local reset. */
  LocalReset: 16,
  /** NR: no route found. */
  NoRoute: 32,
  /** RL: rate limited. */
  RateLimited: 64,
  /** UAEX: denied by an external authorization service. */
  Unauthorized: 128,
  /** UT: upstream request timeout. */
  Timeout: 256,
  /** UH: no healthy upstream. */
  NoHealthyUpstream: 512,
  /** FI: fault injected. */
  FaultInjected: 1024,
  /** URX: retry limit exceeded. */
  RetryLimitExceeded: 2048,
} as const;

/** ResponseFlags field number -> our bit. */
const FLAG_FIELDS: Record<number, number> = {
  2: Flag.NoHealthyUpstream,
  3: Flag.Timeout,
  4: Flag.LocalReset,
  5: Flag.RemoteReset,
  6: Flag.ConnectionFailure,
  7: Flag.ConnectionTermination,
  8: Flag.Overflow,
  9: Flag.NoRoute,
  11: Flag.FaultInjected,
  12: Flag.RateLimited,
  13: Flag.Unauthorized,
  16: Flag.RetryLimitExceeded,
};

/** One HTTP request as a proxy reported it. */
export interface AccessRecord {
  route: string;
  cluster: string;
  /** HTTP status (0 when none was sent, e.g. a downstream reset). */
  status: number;
  /** Bits of `Flag`. */
  flags: number;
  /** Request duration, milliseconds (start to last byte sent downstream). */
  durationMs: number;
  /** Upstream attempts (1 + retries); 0 when no upstream was tried. */
  attempts: number;
  /** SPIFFE ID (URI SAN) of the downstream peer's client certificate, if any. */
  peer: string;
}

export interface DecodedMessage {
  /** Present on the first message of a stream. */
  identifier?: { nodeId: string; nodeCluster: string; logName: string };
  http: AccessRecord[];
  /** TCP entries are counted, not aggregated. */
  tcp: number;
}

function end(r: ReaderT): number {
  return r.uint32() + r.pos;
}

function durationMs(r: ReaderT): number {
  const stop = end(r);
  let seconds = 0;
  let nanos = 0;
  while (r.pos < stop) {
    const tag = r.uint32();
    switch (tag >>> 3) {
      case 1:
        seconds = Number(r.int64());
        break;
      case 2:
        nanos = r.int32();
        break;
      default:
        r.skipType(tag & 7);
    }
  }
  return seconds * 1000 + nanos / 1e6;
}

function wrappedUint32(r: ReaderT): number {
  const stop = end(r);
  let v = 0;
  while (r.pos < stop) {
    const tag = r.uint32();
    if (tag >>> 3 === 1) v = r.uint32();
    else r.skipType(tag & 7);
  }
  return v;
}

function responseFlags(r: ReaderT): number {
  const stop = end(r);
  let bits = 0;
  while (r.pos < stop) {
    const tag = r.uint32();
    const field = tag >>> 3;
    const bit = FLAG_FIELDS[field];
    if (bit === undefined) {
      r.skipType(tag & 7);
    } else if (field === 13) {
      r.skipType(tag & 7); // Unauthorized { reason }: present means denied
      bits |= bit;
    } else if (r.bool()) {
      bits |= bit;
    }
  }
  return bits;
}

/** TLSProperties -> the first URI SAN of the peer certificate. */
function peerUri(r: ReaderT): string {
  const stop = end(r);
  let uri = '';
  while (r.pos < stop) {
    const tag = r.uint32();
    if (tag >>> 3 !== 5) {
      r.skipType(tag & 7);
      continue;
    }
    const certEnd = end(r); // CertificateProperties
    while (r.pos < certEnd) {
      const t2 = r.uint32();
      if (t2 >>> 3 !== 1 || uri) {
        r.skipType(t2 & 7);
        continue;
      }
      const sanEnd = end(r); // SubjectAltName { oneof uri = 1, dns = 2 }
      while (r.pos < sanEnd) {
        const t3 = r.uint32();
        if (t3 >>> 3 === 1) uri = r.string();
        else r.skipType(t3 & 7);
      }
    }
  }
  return uri;
}

function common(r: ReaderT, rec: AccessRecord): void {
  const stop = end(r);
  let total = -1;
  let lastTx = 0;
  while (r.pos < stop) {
    const tag = r.uint32();
    switch (tag >>> 3) {
      case 4:
        rec.peer = peerUri(r);
        break;
      case 12:
        lastTx = durationMs(r);
        break;
      case 15:
        rec.cluster = r.string();
        break;
      case 16:
        rec.flags = responseFlags(r);
        break;
      case 19:
        rec.route = r.string();
        break;
      case 23:
        total = durationMs(r);
        break;
      case 24:
        rec.attempts = r.uint32();
        break;
      default:
        r.skipType(tag & 7);
    }
  }
  rec.durationMs = total >= 0 ? total : lastTx;
}

function response(r: ReaderT, rec: AccessRecord): void {
  const stop = end(r);
  while (r.pos < stop) {
    const tag = r.uint32();
    if (tag >>> 3 === 1) rec.status = wrappedUint32(r);
    else r.skipType(tag & 7);
  }
}

function httpEntry(r: ReaderT): AccessRecord {
  const stop = end(r);
  const rec: AccessRecord = { route: '', cluster: '', status: 0, flags: 0, durationMs: 0, attempts: 0, peer: '' };
  while (r.pos < stop) {
    const tag = r.uint32();
    switch (tag >>> 3) {
      case 1:
        common(r, rec);
        break;
      case 4:
        response(r, rec);
        break;
      default:
        r.skipType(tag & 7);
    }
  }
  return rec;
}

function identifier(r: ReaderT): DecodedMessage['identifier'] {
  const stop = end(r);
  const out = { nodeId: '', nodeCluster: '', logName: '' };
  while (r.pos < stop) {
    const tag = r.uint32();
    const field = tag >>> 3;
    if (field === 1) {
      const nodeEnd = end(r);
      while (r.pos < nodeEnd) {
        const t2 = r.uint32();
        if (t2 >>> 3 === 1) out.nodeId = r.string();
        else if (t2 >>> 3 === 2) out.nodeCluster = r.string();
        else r.skipType(t2 & 7);
      }
    } else if (field === 2) {
      out.logName = r.string();
    } else {
      r.skipType(tag & 7);
    }
  }
  return out;
}

/** Decodes one StreamAccessLogsMessage. Throws on malformed bytes. */
export function decodeAccessLogMessage(bytes: Uint8Array): DecodedMessage {
  const r = Reader.create(bytes);
  const out: DecodedMessage = { http: [], tcp: 0 };
  while (r.pos < r.len) {
    const tag = r.uint32();
    switch (tag >>> 3) {
      case 1:
        out.identifier = identifier(r);
        break;
      case 2: {
        const stop = end(r);
        while (r.pos < stop) {
          const t2 = r.uint32();
          if (t2 >>> 3 === 1) out.http.push(httpEntry(r));
          else r.skipType(t2 & 7);
        }
        break;
      }
      case 3: {
        const stop = end(r);
        while (r.pos < stop) {
          const t2 = r.uint32();
          if (t2 >>> 3 === 1) out.tcp++;
          r.skipType(t2 & 7);
        }
        break;
      }
      default:
        r.skipType(tag & 7);
    }
  }
  if (r.pos !== r.len) throw new Error('truncated message');
  return out;
}

/** Flags whose requests proxies always report (the bits of ALWAYS_LOGGED_FLAGS in src/protocol/access-log.ts). */
export const ALWAYS_LOGGED_MASK =
  Flag.Overflow |
  Flag.RemoteReset |
  Flag.ConnectionTermination |
  Flag.ConnectionFailure |
  Flag.LocalReset |
  Flag.NoRoute |
  Flag.RateLimited |
  Flag.Unauthorized |
  Flag.Timeout |
  Flag.NoHealthyUpstream |
  Flag.RetryLimitExceeded;
