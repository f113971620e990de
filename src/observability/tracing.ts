// OpenTelemetry tracing of the control plane itself: spans for compile (policy reload), push
// (one snapshot change fanned out to a group's streams), ext_authz check (continuing the trace of
// the request Envoy is checking) and Consul sync (one blocking-query answer applied).
//
// Off by default. It turns on with the standard environment: OTEL_TRACES_EXPORTER (e.g. `otlp`,
// `console`) or OTEL_EXPORTER_OTLP_ENDPOINT / OTEL_EXPORTER_OTLP_TRACES_ENDPOINT; the exporter,
// protocol, headers, sampler and service name (OTEL_SERVICE_NAME, default `signalbox`) come from
// the usual OTEL_* variables read by @opentelemetry/sdk-node. OTEL_SDK_DISABLED=true wins. When
// off, the SDK is not even loaded and the span helpers call their function directly (no span, no
// context switch, attributes not even computed when given as a function).
import { context, INVALID_SPAN_CONTEXT, propagation, SpanStatusCode, trace, type Attributes, type Span } from '@opentelemetry/api';
import type { Logger } from './logger.js';

const tracer = () => trace.getTracer('signalbox');

export function tracingEnabled(env: NodeJS.ProcessEnv = process.env): boolean {
  if ((env.OTEL_SDK_DISABLED ?? '').toLowerCase() === 'true') return false;
  const exporters = env.OTEL_TRACES_EXPORTER;
  if (exporters !== undefined) return exporters.split(',').some((e) => e.trim() !== '' && e.trim() !== 'none');
  return Boolean(env.OTEL_EXPORTER_OTLP_ENDPOINT || env.OTEL_EXPORTER_OTLP_TRACES_ENDPOINT);
}

export interface Tracing {
  stop(): Promise<void>;
}

let running: Tracing | undefined;

/** Handed to span callbacks while tracing is off: records nothing. */
const NO_SPAN: Span = trace.wrapSpanContext(INVALID_SPAN_CONTEXT);

/** Span attributes, or a function computing them (called only when tracing is on). */
export type SpanAttributes = Attributes | (() => Attributes);

const attrs = (a: SpanAttributes): Attributes => (typeof a === 'function' ? a() : a);

/** Whether spans are recorded (the SDK was started in this process). */
export function tracingActive(): boolean {
  return running !== undefined;
}

/** Starts the OpenTelemetry SDK when the environment asks for it (once per process). */
export async function startTracing(logger: Logger, env: NodeJS.ProcessEnv = process.env): Promise<Tracing | undefined> {
  if (running) return running;
  if (!tracingEnabled(env)) return undefined;
  // Traces only: metrics stay on /metrics (Prometheus), logs on stdout.
  env.OTEL_METRICS_EXPORTER ??= 'none';
  env.OTEL_LOGS_EXPORTER ??= 'none';
  env.OTEL_SERVICE_NAME ??= 'signalbox';
  if (!env.OTEL_TRACES_EXPORTER) env.OTEL_TRACES_EXPORTER = 'otlp';
  const { NodeSDK } = await import('@opentelemetry/sdk-node');
  const sdk = new NodeSDK({ instrumentations: [] });
  sdk.start();
  logger.info(
    { exporter: env.OTEL_TRACES_EXPORTER, endpoint: env.OTEL_EXPORTER_OTLP_TRACES_ENDPOINT ?? env.OTEL_EXPORTER_OTLP_ENDPOINT, service: env.OTEL_SERVICE_NAME },
    'OpenTelemetry tracing on',
  );
  running = {
    stop: async () => {
      running = undefined;
      await sdk.shutdown().catch((e: Error) => logger.warn({ err: { message: e.message } }, 'OpenTelemetry shutdown failed'));
    },
  };
  return running;
}

function fail(span: Span, e: unknown): void {
  span.recordException(e as Error);
  span.setStatus({ code: SpanStatusCode.ERROR, message: (e as Error)?.message });
}

/**
 * Runs `fn` in a span. `parentHeaders`: HTTP headers carrying a W3C trace context (e.g. the
 * request ext_authz checks) to continue; otherwise the active context is the parent.
 */
export async function withSpan<T>(
  name: string,
  attributes: SpanAttributes,
  fn: (span: Span) => Promise<T>,
  parentHeaders?: Record<string, string>,
): Promise<T> {
  if (!running) return fn(NO_SPAN);
  const parent = parentHeaders ? propagation.extract(context.active(), parentHeaders) : context.active();
  return tracer().startActiveSpan(name, { attributes: attrs(attributes) }, parent, async (span) => {
    try {
      return await fn(span);
    } catch (e) {
      fail(span, e);
      throw e;
    } finally {
      span.end();
    }
  });
}

/** The synchronous twin of withSpan. */
export function withSpanSync<T>(name: string, attributes: SpanAttributes, fn: (span: Span) => T): T {
  if (!running) return fn(NO_SPAN);
  return tracer().startActiveSpan(name, { attributes: attrs(attributes) }, (span) => {
    try {
      return fn(span);
    } catch (e) {
      fail(span, e);
      throw e;
    } finally {
      span.end();
    }
  });
}
