import { IDENTITY_SECRET, TRUST_BUNDLE_SECRET, type IRHttpListener } from '../../ir/types.js';
import { httpFilters } from './filters/index.js';
import { accessLogs, tracingConfig } from './access-log.js';
import { ADS_SOURCE, typed } from './util.js';
import type { envoy } from '../resources/envoy-types.gen.js';

type Listener = envoy.config.listener.v3.Listener;
type FilterChain = envoy.config.listener.v3.FilterChain;
type TransportSocket = envoy.config.core.v3.TransportSocket;

export function statPrefix(name: string): string {
  return name.replace(/[^A-Za-z0-9_-]/g, '_');
}

export function listenerResource(l: IRHttpListener): Listener {
  const hcm = typed('envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager', {
    stat_prefix: statPrefix(l.name),
    codec_type: 'AUTO',
    rds: { route_config_name: l.routeConfig.name, config_source: ADS_SOURCE },
    http_filters: httpFilters(l),
    // The edge sees real clients; sidecars trust the hop before them.
    use_remote_address: { value: l.direction !== 'inbound' && l.direction !== 'outbound' },
    ...(l.forwardClientCert ? { forward_client_cert_details: 'SANITIZE_SET', set_current_client_cert_details: { uri: true } } : {}),
    normalize_path: { value: true },
    merge_slashes: true,
    path_with_escaped_slashes_action: 'UNESCAPE_AND_REDIRECT',
    strip_any_host_port: true,
    ...(l.accessLog ? { access_log: accessLogs(l.accessLog) } : {}),
    ...(l.tracing ? { tracing: tracingConfig(l.tracing) } : {}),
  });
  const chain: FilterChain = { filters: [{ name: 'envoy.filters.network.http_connection_manager', typed_config: hcm }] };
  if (l.meshTls) {
    const tlsChain: FilterChain = { ...chain, transport_socket: meshDownstreamTls() };
    if (l.meshTls.mode === 'strict') {
      return { ...base(l), filter_chains: [tlsChain] };
    }
    // Permissive: TLS clients get mTLS, plain-text clients the same HTTP chain without it.
    return {
      ...base(l),
      listener_filters: [
        { name: 'envoy.filters.listener.tls_inspector', typed_config: typed('envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector', {}) },
      ],
      filter_chains: [
        { ...tlsChain, name: 'mtls', filter_chain_match: { transport_protocol: 'tls' } },
        { ...chain, name: 'plaintext', filter_chain_match: { transport_protocol: 'raw_buffer' } },
      ],
    };
  }
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
  return { ...base(l), filter_chains: [chain] };
}

function base(l: IRHttpListener): Listener {
  return {
    name: l.name,
    address: { socket_address: { address: l.address, port_value: l.port } },
    per_connection_buffer_limit_bytes: { value: 32768 },
  };
}

/** The SDS-backed context every mesh TLS socket shares: own identity plus the mesh trust bundle. */
export function meshCommonTls(verify?: { spiffeId: string }): envoy.extensions.transport_sockets.tls.v3.CommonTlsContext {
  return {
    tls_certificate_sds_secret_configs: [{ name: IDENTITY_SECRET, sds_config: ADS_SOURCE }],
    combined_validation_context: {
      default_validation_context: verify ? { match_typed_subject_alt_names: [{ san_type: 'URI', matcher: { exact: verify.spiffeId } }] } : {},
      validation_context_sds_secret_config: { name: TRUST_BUNDLE_SECRET, sds_config: ADS_SOURCE },
    },
  };
}

function meshDownstreamTls(): TransportSocket {
  return {
    name: 'envoy.transport_sockets.tls',
    typed_config: typed('envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext', {
      common_tls_context: meshCommonTls(),
      require_client_certificate: { value: true },
    }),
  };
}
