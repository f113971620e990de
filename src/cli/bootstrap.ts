// `signalbox bootstrap`: the Envoy bootstrap that connects a proxy to Signalbox over ADS: over
// TLS, verifying the server's name against the CA `signalbox serve` wrote, and presenting the
// proxy's token as a client certificate read from files (so no secret sits in the bootstrap
// Envoy shows in /config_dump).
import { existsSync, readFileSync } from 'node:fs';
import { isIP } from 'node:net';
import path from 'node:path';
import YAML from 'yaml';
import { ErrorCode, SignalboxError } from '../errors.js';
import { SERVE_SETTINGS } from '../config/settings.js';
import { BOOTSTRAP_COMMAND } from './commands.js';
import { DATA_DIR, flagValue, parseFlags } from './flags.js';
import { writeStateFileSync } from '../util/files.js';
import { JWT_MODULE } from '../xds/translator/filters/jwt-fast.js';

export interface BootstrapOptions {
  /** A gateway proxy (`--gateway NAME`)... */
  gateway?: string;
  /** ...or a sidecar (`--service NAME --instance ID --app-port N --inbound-port N`). */
  sidecar?: { service: string; instance?: string; appPort: number; inboundPort: number; outboundPort?: number };
  /** A gateway's replica (`--instance ID`); a sidecar's is in `sidecar`. */
  instance?: string;
  /**
   * TLS to the control plane (the default): the CA that signed the xDS server certificate, and
   * the proxy's token as a client certificate and key (`signalbox token --out DIR`), all files.
   */
  tls?: { caFile: string; certFile: string; keyFile: string };
  /** Plain text only (`--xds-insecure`): a token sent inline as gRPC metadata. */
  insecureToken?: string;
  /**
   * Where the proxy reaches Signalbox: HOST:PORT, or several (comma-separated) for several
   * replicas; a DNS name that resolves to several addresses counts for each of them.
   */
  xdsAddress: string;
  delta?: boolean;
  adminPort?: number;
  adminAddress?: string;
  id?: string;
  /** The proxy's Envoy loads Signalbox's compiled JWT filter (see docs/jwt.md). */
  jwtModule?: boolean;
}

/** Where `signalbox serve` writes the CA proxies verify the xDS server with (in its data directory). */
export const XDS_CA_FILE = 'xds-ca.pem';

export function splitHostPort(hp: string): { host: string; port: number } {
  const m = /^\[?([^\]]+?)\]?:(\d+)$/.exec(hp);
  if (!m) throw new Error(`--xds-address must be HOST:PORT, got "${hp}"`);
  const port = Number(m[2]);
  if (port < 1 || port > 65535) throw new Error(`--xds-address port out of range: ${m[2]}`);
  return { host: m[1]!, port };
}

/**
 * The node id a proxy gets without `--id`: the gateway or service name, so that a lone proxy's id
 * is the name the user gave; with `--instance ID` (several replicas), NAME-ID, or ID alone when it
 * already starts with NAME- (`--service orders --instance orders-v1` is `orders-v1`). Replicas
 * stay apart as long as their instances do.
 */
export function defaultNodeId(name: string, instance?: string): string {
  if (instance === undefined || instance === name) return name;
  return instance.startsWith(`${name}-`) ? instance : `${name}-${instance}`;
}

/** The node id a bootstrap written with these options names. */
export function nodeIdOf(o: Pick<BootstrapOptions, 'gateway' | 'sidecar' | 'instance' | 'id'>): string {
  if (o.id !== undefined) return o.id;
  if (o.sidecar) return defaultNodeId(o.sidecar.service, o.sidecar.instance);
  if (o.gateway) return defaultNodeId(o.gateway, o.instance);
  throw new Error('give --gateway NAME, or --service NAME --app-port N --inbound-port N');
}

/** An instance as the xDS server accepts it in a node's metadata: 1 to 256 printable characters, no spaces. */
export function checkInstance(instance: string): void {
  if (!/^[\x21-\x7e]{1,256}$/.test(instance)) throw new SignalboxError(ErrorCode.BAD_FLAG, '--instance must be 1 to 256 printable characters without spaces');
}

/**
 * Where a proxy's token files live when `bootstrap` issues them (no --credentials), and where
 * `signalbox token --instance ID` without --out writes them: DATA_DIR/proxies/<gateway|service>-<node id>.
 */
export function proxyCredentialsDir(dataDir: string, p: { gateway: string; instance?: string } | { service: string; instance?: string }): string {
  const folder = 'gateway' in p ? `gateway-${defaultNodeId(p.gateway, p.instance)}` : `service-${defaultNodeId(p.service, p.instance)}`;
  return path.join(dataDir, 'proxies', folder.replace(/[^A-Za-z0-9._-]/g, '_'));
}

/** `--xds-address`: one HOST:PORT or several, comma-separated (replicas); the same address twice is an error. */
export function splitXdsAddresses(text: string): Array<{ host: string; port: number }> {
  const list = text
    .split(',')
    .map((a) => a.trim())
    .filter(Boolean);
  if (!list.length) throw new Error('--xds-address must be HOST:PORT or several HOST:PORT separated by commas');
  const out = list.map(splitHostPort);
  const seen = new Set<string>();
  for (const a of out) {
    const k = `${a.host.toLowerCase()}:${a.port}`;
    if (seen.has(k)) throw new Error(`--xds-address names ${a.host}:${a.port} twice`);
    seen.add(k);
  }
  return out;
}

export function bootstrapConfig(o: BootstrapOptions): Record<string, unknown> {
  const addresses = splitXdsAddresses(o.xdsAddress);
  const { host } = addresses[0]!;
  // Several replicas (several addresses, or a DNS name that may resolve to several): Envoy checks
  // each with a TCP connect and leaves a dead one out at once, so a broken stream reconnects to a
  // live replica instead of retrying the dead one.
  const replicas = addresses.length > 1 || !isIP(host);
  const ads = { ads: {}, resource_api_version: 'V3' };
  let node: Record<string, unknown>;
  if (o.sidecar) {
    const sc = o.sidecar;
    node = {
      id: nodeIdOf(o),
      cluster: sc.service,
      metadata: {
        'signalbox.role': 'sidecar',
        'signalbox.service': sc.service,
        'signalbox.instance': sc.instance ?? sc.service,
        'signalbox.app_port': String(sc.appPort),
        'signalbox.inbound_port': String(sc.inboundPort),
        'signalbox.outbound_port': String(sc.outboundPort ?? 15001),
      },
    };
  } else if (o.gateway) {
    node = {
      id: nodeIdOf(o),
      cluster: o.gateway,
      metadata: { 'signalbox.role': 'gateway', 'signalbox.gateway': o.gateway, ...(o.instance !== undefined ? { 'signalbox.instance': o.instance } : {}) },
    };
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
            ...(!o.tls && o.insecureToken ? { initial_metadata: [{ key: 'x-signalbox-token', value: o.insecureToken }] } : {}),
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
          type: addresses.every((a) => isIP(a.host)) ? 'STATIC' : 'STRICT_DNS',
          connect_timeout: '1s',
          ...(replicas
            ? {
                health_checks: [
                  { timeout: '1s', interval: '1s', unhealthy_threshold: 1, healthy_threshold: 1, no_traffic_interval: '1s', tcp_health_check: {} },
                ],
                // Never fall back to a replica known dead because too few are alive: a live one always takes the stream.
                common_lb_config: { healthy_panic_threshold: { value: 0 } },
              }
            : {}),
          typed_extension_protocol_options: {
            'envoy.extensions.upstreams.http.v3.HttpProtocolOptions': {
              '@type': 'type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions',
              explicit_http_config: { http2_protocol_options: { connection_keepalive: { interval: '15s', timeout: '5s' } } },
            },
          },
          ...(o.tls
            ? {
                transport_socket: xdsTransportSocket(
                  addresses.map((a) => a.host),
                  o.tls,
                ),
              }
            : {}),
          load_assignment: {
            cluster_name: 'signalbox-xds',
            endpoints: [{ lb_endpoints: addresses.map((a) => ({ endpoint: { address: { socket_address: { address: a.host, port_value: a.port } } } })) }],
          },
        },
      ],
    },
  };
}

/**
 * TLS to Signalbox: verify its certificate names a host dialled (any of them, with several
 * replicas), present the token certificate. SNI is the host name when there is one name.
 */
function xdsTransportSocket(hosts: string[], tls: NonNullable<BootstrapOptions['tls']>): Record<string, unknown> {
  const names = [...new Set(hosts)];
  const dns = names.filter((h) => isIP(h) === 0);
  return {
    name: 'envoy.transport_sockets.tls',
    typed_config: {
      '@type': 'type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext',
      ...(dns.length === 1 ? { sni: dns[0] } : {}),
      common_tls_context: {
        alpn_protocols: ['h2'],
        // TLS 1.3: the client certificate travels encrypted too (Envoy's upstream default stops at 1.2).
        tls_params: { tls_minimum_protocol_version: 'TLSv1_2', tls_maximum_protocol_version: 'TLSv1_3' },
        tls_certificates: [{ certificate_chain: { filename: tls.certFile }, private_key: { filename: tls.keyFile } }],
        validation_context: {
          trusted_ca: { filename: tls.caFile },
          match_typed_subject_alt_names: names.map((h) => ({ san_type: isIP(h) ? 'IP_ADDRESS' : 'DNS', matcher: { exact: h } })),
        },
      },
    },
  };
}

export function bootstrapYaml(o: BootstrapOptions): string {
  return YAML.stringify(bootstrapConfig(o));
}

/** `signalbox bootstrap`: flags in, Envoy bootstrap YAML out (stdout or --out FILE, 0600). */
export async function bootstrapCommand(args: string[]): Promise<number> {
  const flags = parseFlags(BOOTSTRAP_COMMAND.flags, args);
  const v = (name: string) => flags.str(name);
  const values = {
    gateway: v('gateway'),
    service: v('service'),
    instance: v('instance'),
    'app-port': v('app-port'),
    'inbound-port': v('inbound-port'),
    'outbound-port': v('outbound-port'),
    credentials: v('credentials'),
    'xds-ca': v('xds-ca'),
    // As serve reads it: the flag, else SIGNALBOX_XDS_INSECURE=true.
    'xds-insecure': flags.bool('xds-insecure') || process.env[SERVE_SETTINGS.xdsInsecure.env] === 'true',
    'token-file': v('token-file'),
    ttl: v('ttl'),
    delta: flags.bool('delta'),
    'jwt-module': flags.bool('jwt-module'),
    // serve's --admin-port is the control plane's admin API: here the Envoy's is --envoy-admin-port (the old names still work).
    'admin-port': v('envoy-admin-port') ?? v('admin-port'),
    'admin-address': v('envoy-admin-address') ?? v('admin-address'),
    id: v('id'),
    out: v('out'),
  };
  const bad = (m: string) => new SignalboxError(ErrorCode.BAD_FLAG, m);
  if (!values.gateway === !values.service) throw bad('give either --gateway NAME or --service NAME (a sidecar)');
  const portFlag = (name: string, v: string | undefined, fallback?: number): number => {
    const n = v === undefined ? fallback : Number(v);
    if (n === undefined || !Number.isInteger(n) || n < 1 || n > 65535) throw bad(`--${name} must be a port from 1 to 65535`);
    return n;
  };
  if (values.instance !== undefined) checkInstance(values.instance);
  const sidecar = values.service
    ? {
        service: values.service,
        instance: values.instance,
        appPort: portFlag('app-port', values['app-port']),
        inboundPort: portFlag('inbound-port', values['inbound-port']),
        outboundPort: portFlag('outbound-port', values['outbound-port'], 15001),
      }
    : undefined;
  const xdsAddress = flagValue(BOOTSTRAP_COMMAND.flags.find((f) => f.name === 'xds-address')!, flags.values)!;
  const adminPort = values['admin-port'] ? Number(values['admin-port']) : undefined;
  if (adminPort !== undefined && (!Number.isInteger(adminPort) || adminPort < 0 || adminPort > 65535))
    throw bad(`--${v('envoy-admin-port') !== undefined ? 'envoy-admin-port' : 'admin-port'} must be a port`);
  const dataDir = path.resolve(flagValue(DATA_DIR, flags.values)!);
  const subject = sidecar ? `service/${sidecar.service}` : `gateway/${values.gateway}`;
  let tls: BootstrapOptions['tls'];
  let insecureToken: string | undefined;
  const { issueToken, issueTokenCredentials } = await import('../ca/tokens.js');
  // --state consul: the token is signed with the replicas' shared key, and the CA proxies verify
  // the xDS server with is the shared one (written to DATA_DIR/xds-ca.pem, as serve writes it).
  const { sharedStateFromFlags } = await import('./state.js');
  const shared = await sharedStateFromFlags(flags.values);
  const store = shared ?? dataDir;
  if (shared && !values['xds-insecure'] && !values['xds-ca']) {
    const { CertificateAuthority } = await import('../ca/ca.js');
    const { BUILTIN_DEFAULTS } = await import('../model/model.js');
    const ca = await CertificateAuthority.open({ dataDir, trustDomain: BUILTIN_DEFAULTS.trustDomain, shared });
    writeStateFileSync(path.join(dataDir, XDS_CA_FILE), ca.trustBundlePem, 0o644);
  }
  if (values['xds-insecure']) {
    if (values.credentials || values['xds-ca']) throw bad('--xds-insecure cannot go with --credentials or --xds-ca');
    insecureToken = values['token-file'] ? readFileSync(values['token-file'], 'utf8').trim() : (await issueToken(store, subject, values.ttl)).token;
    process.stderr.write('signalbox bootstrap: --xds-insecure: the proxy talks to the control plane in plain text and its token sits in this bootstrap\n');
  } else {
    if (values['token-file']) throw bad('--token-file is for --xds-insecure; over TLS the proxy presents --credentials DIR (signalbox token --out DIR)');
    let dir = values.credentials ? path.resolve(values.credentials) : undefined;
    if (!dir) {
      // Out of the box: a control plane on this machine shares its data directory; the proxy gets
      // a token of its own there, in files only this user can read.
      dir = proxyCredentialsDir(
        dataDir,
        sidecar ? { service: sidecar.service, instance: sidecar.instance } : { gateway: values.gateway!, instance: values.instance },
      );
      const c = await issueTokenCredentials(store, subject, values.ttl, dir);
      process.stderr.write(
        `signalbox bootstrap: token ${c.id} for ${c.subject}, valid until ${c.expiresAt.toISOString()}, in ${dir} (revoke: signalbox token revoke ${c.id})\n`,
      );
    }
    const certFile = path.join(dir, 'token.crt');
    const keyFile = path.join(dir, 'token.key');
    const caFile = path.resolve(values['xds-ca'] ?? path.join(dataDir, XDS_CA_FILE));
    for (const [f, what] of [
      [certFile, 'the token certificate'],
      [keyFile, 'the token key'],
      [caFile, 'the CA of the xDS server (--xds-ca; `signalbox serve` writes it to its data directory)'],
    ] as const) {
      if (!existsSync(f)) throw bad(`${what} is missing: ${f}`);
    }
    tls = { caFile, certFile, keyFile };
  }
  shared?.close();
  const options: BootstrapOptions = {
    gateway: values.gateway,
    sidecar,
    instance: sidecar ? undefined : values.instance,
    tls,
    insecureToken,
    xdsAddress,
    delta: values.delta,
    jwtModule: values['jwt-module'],
    adminPort,
    adminAddress: values['admin-address'],
    id: values.id,
  };
  let yaml: string;
  try {
    yaml = bootstrapYaml(options);
  } catch (e) {
    throw bad((e as Error).message);
  }
  // On standard error, so that standard output stays a bootstrap Envoy can read.
  const id = nodeIdOf(options);
  process.stderr.write(
    `signalbox bootstrap: node id ${id}${values.id === undefined ? ` (the ${sidecar ? 'service' : 'gateway'} name${(sidecar?.instance ?? values.instance) !== undefined ? ' and --instance' : ''}; --id overrides it)` : ''}; the admin API has it at /api/proxies/${id}\n`,
  );
  // 0600: with --xds-insecure the bootstrap holds a token; otherwise it names key files.
  if (values.out) writeStateFileSync(path.resolve(values.out), yaml, 0o600);
  else process.stdout.write(yaml);
  return 0;
}
