// Telemetry in the HCM: the access logger that reports each request to the control plane's gRPC access log service
// (over the bootstrap's own control-plane cluster). Errors, rejections and failed upstreams are
// always reported; successful requests are sampled at the IR's percent, consistently per
// x-request-id so a sampled request is reported by every proxy on its path.
import type { IRHttpListener } from '../../ir/types.js';
import { ALS_CLUSTER, ALWAYS_LOGGED_FLAGS, ALWAYS_LOGGED_MIN_STATUS, logName } from '../../protocol/access-log.js';
import type { envoy } from '../resources/envoy-types.gen.js';
import { fractionalPercent, typed } from './util.js';

export function accessLogs(a: NonNullable<IRHttpListener['accessLog']>): envoy.config.accesslog.v3.AccessLog[] {
  const percent = Math.min(100, Math.max(0, a.successSamplePercent));
  const logger: envoy.config.accesslog.v3.AccessLog = {
    name: 'envoy.access_loggers.http_grpc',
    typed_config: typed('envoy.extensions.access_loggers.grpc.v3.HttpGrpcAccessLogConfig', {
      common_config: {
        log_name: logName(percent),
        grpc_service: { envoy_grpc: { cluster_name: ALS_CLUSTER } },
        transport_api_version: 'V3',
        buffer_flush_interval: { seconds: 1, nanos: 0 },
        buffer_size_bytes: { value: 16384 },
      },
    }),
  };
  if (percent < 100) {
    logger.filter = {
      or_filter: {
        filters: [
          {
            status_code_filter: {
              comparison: { op: 'GE', value: { default_value: ALWAYS_LOGGED_MIN_STATUS, runtime_key: 'signalbox.access_log.min_status' } },
            },
          },
          { response_flag_filter: { flags: [...ALWAYS_LOGGED_FLAGS] } },
          { runtime_filter: { runtime_key: 'signalbox.access_log.success_sample', percent_sampled: fractionalPercent(percent) } },
        ],
      },
    };
  }
  return [logger];
}

/** The HCM tracing block for Mesh.spec.tracing: Envoy's OpenTelemetry tracer, OTLP over gRPC. */
export function tracingConfig(
  t: NonNullable<IRHttpListener['tracing']>,
): envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager.Tracing {
  return {
    random_sampling: { value: t.samplingPercent },
    provider: {
      name: 'envoy.tracers.opentelemetry',
      typed_config: typed('envoy.config.trace.v3.OpenTelemetryConfig', {
        grpc_service: { envoy_grpc: { cluster_name: t.cluster }, timeout: { seconds: 2, nanos: 0 } },
        service_name: t.serviceName,
      }),
    },
  };
}
