import type { IRHttpListener } from '../../ir/types.js';
import { httpFilters } from './filters/index.js';
import { ADS_SOURCE, typed } from './util.js';

export function statPrefix(name: string): string {
  return name.replace(/[^A-Za-z0-9_-]/g, '_');
}

export function listenerResource(l: IRHttpListener): Record<string, unknown> {
  const hcm = typed('envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager', {
    stat_prefix: statPrefix(l.name),
    codec_type: 'AUTO',
    rds: { route_config_name: l.routeConfig.name, config_source: ADS_SOURCE },
    http_filters: httpFilters(l),
    use_remote_address: { value: true },
    normalize_path: { value: true },
    merge_slashes: true,
    path_with_escaped_slashes_action: 'UNESCAPE_AND_REDIRECT',
    strip_any_host_port: true,
  });
  const chain: Record<string, unknown> = { filters: [{ name: 'envoy.filters.network.http_connection_manager', typed_config: hcm }] };
  if (l.tls) {
    chain.transport_socket = {
      name: 'envoy.transport_sockets.tls',
      typed_config: typed('envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext', {
        common_tls_context: {
          alpn_protocols: ['h2', 'http/1.1'],
          tls_certificate_sds_secret_configs: [{ name: l.tls.secretName, sds_config: ADS_SOURCE }],
        },
      }),
    };
  }
  return {
    name: l.name,
    address: { socket_address: { address: l.address, port_value: l.port } },
    filter_chains: [chain],
    per_connection_buffer_limit_bytes: { value: 32768 },
  };
}
