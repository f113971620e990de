import type { Instance, IRCluster } from '../../ir/types.js';
import { ADS_SOURCE, duration, typed } from './util.js';
import { clusterPolicyFields } from './cluster-policy.js';
import { meshCommonTls } from './listener.js';
import type { envoy, google } from '../resources/envoy-types.gen.js';

type Cluster = envoy.config.cluster.v3.Cluster;

/** Endpoint metadata that selects the mTLS transport socket (an instance reached at its sidecar). */
const MTLS_MATCH: google.protobuf.Struct = { fields: { 'signalbox.mtls': { boolValue: true } } };

export function clusterResource(c: IRCluster): Cluster {
  const discovery: Cluster = c.static
    ? {
        type: 'STATIC',
        load_assignment: {
          cluster_name: c.name,
          endpoints: [{ lb_endpoints: [{ endpoint: { address: { socket_address: { address: c.static.address, port_value: c.static.port } } } }] }],
        },
      }
    : { type: 'EDS', eds_cluster_config: { eds_config: ADS_SOURCE } };
  const out: Cluster = {
    name: c.name,
    ...discovery,
    connect_timeout: duration(c.connectTimeoutMs),
    lb_policy: 'ROUND_ROBIN',
    // Endpoints a discovery source reports as degraded still take traffic, after healthy ones.
    common_lb_config: { healthy_panic_threshold: { value: 0 } },
  };
  if (c.upstreamIdentity) {
    // Instances with a sidecar are reached over mTLS (verifying the service's SPIFFE ID); the rest in plain text.
    out.transport_socket_matches = [
      {
        name: 'mesh-mtls',
        match: MTLS_MATCH,
        transport_socket: {
          name: 'envoy.transport_sockets.tls',
          typed_config: typed('envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext', {
            common_tls_context: meshCommonTls({ spiffeId: c.upstreamIdentity }),
            sni: c.service,
          }),
        },
      },
    ];
  }
  if (c.upstreamTls) {
    // A server of Signalbox's (the ext_authz service): the proxy's identity, the server's SPIFFE ID verified.
    out.transport_socket = {
      name: 'envoy.transport_sockets.tls',
      typed_config: typed('envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext', {
        common_tls_context: {
          ...meshCommonTls({ spiffeId: c.upstreamTls.spiffeId }),
          ...(c.protocol === 'http2' || c.protocol === 'grpc' ? { alpn_protocols: ['h2'] } : {}),
        },
      }),
    };
  }
  if (c.protocol === 'http2' || c.protocol === 'grpc') {
    out.typed_extension_protocol_options = {
      'envoy.extensions.upstreams.http.v3.HttpProtocolOptions': typed('envoy.extensions.upstreams.http.v3.HttpProtocolOptions', {
        explicit_http_config: { http2_protocol_options: {} },
      }),
    };
  }
  Object.assign(out, clusterPolicyFields(c));
  return out;
}

export function selectInstances(c: IRCluster, instances: readonly Instance[]): Instance[] {
  if (!c.subset) return [...instances];
  const want = Object.entries(c.subset.labels);
  return instances.filter((i) => want.every(([k, v]) => i.labels[k] === v));
}

/** The ClusterLoadAssignment of a cluster, from the instances of its service (sorted). */
export function endpointResource(c: IRCluster, instances: readonly Instance[]): envoy.config.endpoint.v3.ClusterLoadAssignment {
  const byLocality = new Map<string, Instance[]>();
  for (const i of selectInstances(c, instances)) {
    const key = JSON.stringify([i.locality?.region ?? '', i.locality?.zone ?? '', i.locality?.subZone ?? '']);
    byLocality.set(key, [...(byLocality.get(key) ?? []), i]);
  }
  const endpoints = [...byLocality.keys()].sort().map((key) => {
    const [region, zone, subZone] = JSON.parse(key) as string[];
    const list = byLocality.get(key)!.sort((a, b) => (`${a.address}:${a.port}` < `${b.address}:${b.port}` ? -1 : 1));
    const locality: envoy.config.core.v3.Locality = {};
    if (region) locality.region = region;
    if (zone) locality.zone = zone;
    if (subZone) locality.sub_zone = subZone;
    return {
      ...(Object.keys(locality).length ? { locality } : {}),
      lb_endpoints: list.map((i) => {
        // An instance with a sidecar is always reached through it; over mTLS when the mesh has it on.
        const at = i.sidecar ?? i;
        const viaSidecar = c.upstreamIdentity !== undefined && i.sidecar !== undefined;
        return {
          endpoint: { address: { socket_address: { address: at.address, port_value: at.port } } },
          health_status: i.health,
          ...(viaSidecar ? { metadata: { filter_metadata: { 'envoy.transport_socket_match': MTLS_MATCH } } } : {}),
        };
      }),
    };
  });
  return { cluster_name: c.name, endpoints };
}
