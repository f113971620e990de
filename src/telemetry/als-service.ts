// envoy.service.accesslog.v3.AccessLogService/StreamAccessLogs: every proxy streams its HTTP
// access logs here (over the same bootstrap cluster and gRPC server as ADS, so it works wherever
// the proxy can reach the control plane). Records are decoded narrowly and aggregated at once;
// nothing per request is kept.
import * as grpc from '@grpc/grpc-js';
import { performance } from 'node:perf_hooks';
import client from 'prom-client';
import type { Logger } from '../observability/logger.js';
import { parseLogName } from '../protocol/access-log.js';
import { decodeAccessLogMessage, type DecodedMessage } from './als-decode.js';
import { TrafficStore, type ProxyRef } from './traffic-store.js';

export const ALS_SERVICE = '/envoy.service.accesslog.v3.AccessLogService';

class Undecodable {
  constructor(readonly message: string) {}
}

/** `onDecode` gets the seconds each message took to decode (the larger part of the cost). */
export function alsDefinition(onDecode?: (seconds: number) => void): grpc.ServiceDefinition {
  return {
    StreamAccessLogs: {
      path: `${ALS_SERVICE}/StreamAccessLogs`,
      requestStream: true,
      responseStream: false,
      requestSerialize: () => Buffer.alloc(0), // never sent by a server
      requestDeserialize: (bytes: Buffer): DecodedMessage | Undecodable => {
        const t0 = performance.now();
        try {
          return decodeAccessLogMessage(bytes);
        } catch (e) {
          return new Undecodable((e as Error).message);
        } finally {
          onDecode?.((performance.now() - t0) / 1000);
        }
      },
      responseSerialize: () => Buffer.alloc(0), // StreamAccessLogsResponse has no fields
      responseDeserialize: () => ({}),
    },
  };
}

export interface AlsMetrics {
  streams: client.Gauge;
  entries: client.Counter;
  messages: client.Counter;
  processSeconds: client.Counter;
}

export function alsMetrics(registry: client.Registry): AlsMetrics {
  return {
    streams: new client.Gauge({ name: 'signalbox_access_log_streams', help: 'Access log streams (gRPC ALS) open now.', registers: [registry] }),
    entries: new client.Counter({
      name: 'signalbox_access_log_entries_total',
      help: 'Access log entries received, by result (recorded, unknown_proxy, tcp).',
      labelNames: ['result'],
      registers: [registry],
    }),
    messages: new client.Counter({
      name: 'signalbox_access_log_messages_total',
      help: 'Access log stream messages received, by result (ok, undecodable).',
      labelNames: ['result'],
      registers: [registry],
    }),
    processSeconds: new client.Counter({
      name: 'signalbox_access_log_process_seconds_total',
      help: 'Time the event loop spent decoding and aggregating access logs (the cost of traffic reporting).',
      registers: [registry],
    }),
  };
}

export interface AccessLogServiceOptions {
  store: TrafficStore;
  /** Who a node id is: only proxies with a live xDS stream are counted. */
  resolveProxy: (nodeId: string) => ProxyRef | undefined;
  logger: Logger;
  metrics?: AlsMetrics;
}

export class AccessLogService {
  private open = 0;

  constructor(private readonly opts: AccessLogServiceOptions) {}

  get openStreams(): number {
    return this.open;
  }

  implementation(): grpc.UntypedServiceImplementation {
    return {
      StreamAccessLogs: (call: grpc.ServerReadableStream<DecodedMessage | Undecodable, unknown>, callback: grpc.sendUnaryData<unknown>) =>
        this.handle(call, callback),
    };
  }

  private handle(call: grpc.ServerReadableStream<DecodedMessage | Undecodable, unknown>, callback: grpc.sendUnaryData<unknown>): void {
    const { store, logger, metrics } = this.opts;
    let nodeId = '';
    let sample = 100;
    let proxy: ProxyRef | undefined;
    let done = false;
    this.open++;
    metrics?.streams.inc();
    const finish = (err?: grpc.ServiceError) => {
      if (done) return;
      done = true;
      this.open--;
      metrics?.streams.dec();
      if (err) callback(err);
      else callback(null, {});
    };
    call.on('data', (msg: DecodedMessage | Undecodable) => {
      if (msg instanceof Undecodable) {
        metrics?.messages.inc({ result: 'undecodable' });
        logger.warn({ peer: call.getPeer(), proxy: nodeId || undefined }, `access log stream closed: message does not decode: ${msg.message}`);
        finish({
          name: 'Error',
          message: 'undecodable StreamAccessLogsMessage',
          code: grpc.status.INVALID_ARGUMENT,
          details: msg.message,
          metadata: new grpc.Metadata(),
        });
        return;
      }
      const t0 = performance.now();
      metrics?.messages.inc({ result: 'ok' });
      if (msg.identifier) {
        nodeId = msg.identifier.nodeId;
        sample = parseLogName(msg.identifier.logName).sample;
        proxy = undefined;
      }
      if (msg.tcp) metrics?.entries.inc({ result: 'tcp' }, msg.tcp);
      if (!proxy && nodeId) proxy = this.opts.resolveProxy(nodeId);
      if (!proxy) {
        if (msg.http.length) metrics?.entries.inc({ result: 'unknown_proxy' }, msg.http.length);
        return;
      }
      const now = Date.now();
      for (const rec of msg.http) {
        const weight = TrafficStore.weightOf(rec, sample);
        store.record(proxy, rec, weight, now);
      }
      metrics?.entries.inc({ result: 'recorded' }, msg.http.length);
      metrics?.processSeconds.inc((performance.now() - t0) / 1000);
    });
    call.on('end', () => finish());
    call.on('error', () => finish());
    call.on('cancelled', () => finish());
  }
}
