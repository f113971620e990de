// `signalbox bootstrap`: the Envoy bootstrap that connects a proxy to Signalbox over ADS.
import os from 'node:os';
import { isIP } from 'node:net';
import YAML from 'yaml';
import { JWT_MODULE } from '../xds/translator/filters/jwt-fast.js';

export interface BootstrapOptions {
  /** A gateway proxy (`--gateway NAME`)... */
  gateway?: string;
  /** ...or a sidecar (`--service NAME --instance ID --app-port N --inbound-port N`). */
  sidecar?: { service: string; instance: string; appPort: number; inboundPort: number; outboundPort?: number };
  /** A token from `signalbox token`, sent as gRPC metadata on the xDS stream. */
  token?: string;
  xdsAddress: string;
  delta?: boolean;
  adminPort?: number;
  adminAddress?: string;
  id?: string;
  /** The proxy's Envoy loads Signalbox's compiled JWT filter (see docs/jwt.md). */
  jwtModule?: boolean;
}

export function splitHostPort(hp: string): { host: string; port: number } {
  const m = /^\[?([^\]]+?)\]?:(\d+)$/.exec(hp);
  if (!m) throw new Error(`--xds-address must be HOST:PORT, got "${hp}"`);
  const port = Number(m[2]);
  if (port < 1 || port > 65535) throw new Error(`--xds-address port out of range: ${m[2]}`);
  return { host: m[1]!, port };
}

export function bootstrapConfig(o: BootstrapOptions): Record<string, unknown> {
  const { host, port } = splitHostPort(o.xdsAddress);
  const ads = { ads: {}, resource_api_version: 'V3' };
  let node: Record<string, unknown>;
  if (o.sidecar) {
    const sc = o.sidecar;
    node = {
      id: o.id ?? sc.instance,
      cluster: sc.service,
      metadata: {
        'signalbox.role': 'sidecar',
        'signalbox.service': sc.service,
        'signalbox.instance': sc.instance,
        'signalbox.app_port': String(sc.appPort),
        'signalbox.inbound_port': String(sc.inboundPort),
        'signalbox.outbound_port': String(sc.outboundPort ?? 15001),
      },
    };
  } else if (o.gateway) {
    node = { id: o.id ?? `${o.gateway}-${os.hostname()}`, cluster: o.gateway, metadata: { 'signalbox.role': 'gateway', 'signalbox.gateway': o.gateway } };
  } else {
    throw new Error('give --gateway NAME, or --service NAME --instance ID --app-port N --inbound-port N');
  }
  if (o.jwtModule) (node.metadata as Record<string, string>)['signalbox.jwt_module'] = JWT_MODULE.name;
  return {
    node,
    admin: { address: { socket_address: { address: o.adminAddress ?? '127.0.0.1', port_value: o.adminPort ?? 9901 } } },
    dynamic_resources: {
      ads_config: {
        api_type: o.delta ? 'DELTA_GRPC' : 'GRPC',
        transport_api_version: 'V3',
        set_node_on_first_message_only: true,
        grpc_services: [
          {
            envoy_grpc: {
              cluster_name: 'signalbox-xds',
              // Reconnect quickly after a control-plane restart.
              retry_policy: { retry_back_off: { base_interval: '0.25s', max_interval: '2s' } },
            },
            ...(o.token ? { initial_metadata: [{ key: 'x-signalbox-token', value: o.token }] } : {}),
          },
        ],
      },
      cds_config: ads,
      lds_config: ads,
    },
    static_resources: {
      clusters: [
        {
          name: 'signalbox-xds',
          type: isIP(host) ? 'STATIC' : 'STRICT_DNS',
          connect_timeout: '1s',
          typed_extension_protocol_options: {
            'envoy.extensions.upstreams.http.v3.HttpProtocolOptions': {
              '@type': 'type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions',
              explicit_http_config: { http2_protocol_options: { connection_keepalive: { interval: '15s', timeout: '5s' } } },
            },
          },
          load_assignment: {
            cluster_name: 'signalbox-xds',
            endpoints: [{ lb_endpoints: [{ endpoint: { address: { socket_address: { address: host, port_value: port } } } }] }],
          },
        },
      ],
    },
  };
}

export function bootstrapYaml(o: BootstrapOptions): string {
  return YAML.stringify(bootstrapConfig(o));
}
