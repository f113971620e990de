// Every `signalbox` command's flag table (see flags.ts): what it parses, what `--help` prints, what
// the README's CLI table must show (test/unit/docs-coverage.test.ts).
import { AUTHZ_SETTINGS, RATELIMIT_SETTINGS, SERVE_SETTINGS } from '../config/settings.js';
import {
  ACCESS_LOG_SAMPLING,
  ADMIN_TOKEN_FILE,
  type CommandSpec,
  DATA_DIR,
  GATEWAY,
  INSTANCE,
  JSON_FLAG,
  JWT_FAST_PATH,
  POLICIES,
  PROXY_GROUP,
  SERVICE,
  settingFlag,
  STATE_FLAGS,
  TTL,
} from './flags.js';

/** --strict as serve reads it (SIGNALBOX_STRICT too), for the commands that read policies without serving them. */
const STRICT = settingFlag(SERVE_SETTINGS.strict);

const POSITIONAL_DIR =
  'DIR: the policy directory may also be given as the first argument, as before --policies existed (both, naming different directories, is a usage error).';

export const SERVE_COMMAND: CommandSpec = {
  name: 'serve',
  usage: ['serve [flags]'],
  summary:
    'Run the control plane: load and watch the policy directory, serve xDS to the proxies and the admin API. Every flag can also be given as its environment variable.',
  flags: Object.values(SERVE_SETTINGS).map((s) => settingFlag(s)),
};

export const VALIDATE_COMMAND: CommandSpec = {
  name: 'validate',
  usage: ['validate [--policies DIR | DIR] [--format text|json|github] [--envoy [PATH]] [--strict]'],
  summary: 'Check a policy directory as serve would load it; exit 1 on any error.',
  flags: [
    POLICIES,
    {
      name: 'format',
      value: 'text|json|github',
      default: 'text',
      help: 'text; json; github: GitHub Actions annotations (::error file=F,line=N::...) on standard output',
    },
    { ...JSON_FLAG, help: 'the same as --format json' },
    {
      name: 'envoy',
      value: '[PATH]',
      env: 'SIGNALBOX_ENVOY_BIN',
      default: 'envoy on PATH',
      custom: true,
      help: 'also have a real Envoy check every proxy group, as it would before accepting the configuration (the word after --envoy is PATH unless it is a directory)',
    },
    STRICT,
  ],
  notes: [POSITIONAL_DIR, "The reading limits are serve's: SIGNALBOX_MAX_POLICY_FILE_BYTES, SIGNALBOX_MAX_POLICY_DIR_BYTES, SIGNALBOX_MAX_POLICY_FILES."],
};

export const COMPILE_COMMAND: CommandSpec = {
  name: 'compile',
  usage: ['compile [--policies DIR | DIR] [--group G] [--access-log-sampling P|off] [--jwt-fast-path on|module|off] [--strict]'],
  summary:
    'Print the Envoy resources each proxy group gets (JSON), as serve with the same flags sends them (secrets redacted). Exit 1 when the directory is invalid or the group unknown.',
  flags: [
    POLICIES,
    { name: 'group', value: 'G', help: 'only this proxy group (gateway/NAME or sidecar/SERVICE/APP/IN/OUT)' },
    ACCESS_LOG_SAMPLING,
    JWT_FAST_PATH,
    STRICT,
  ],
  notes: [POSITIONAL_DIR],
};

export const EXPLAIN_COMMAND: CommandSpec = {
  name: 'explain',
  usage: ['explain [--policies DIR | DIR] --proxy GROUP [--route NAME] [--json] [--access-log-sampling P|off] [--jwt-fast-path on|module|off]'],
  summary: "Each listener's, route's and cluster's effective settings for one proxy group, and the file and document each came from.",
  flags: [
    POLICIES,
    { ...PROXY_GROUP, help: `${PROXY_GROUP.help} (required)` },
    { name: 'route', value: 'NAME', help: 'only this route' },
    JSON_FLAG,
    ACCESS_LOG_SAMPLING,
    JWT_FAST_PATH,
  ],
  notes: [POSITIONAL_DIR],
};

export const DIFF_COMMAND: CommandSpec = {
  name: 'diff',
  usage: [
    'diff OLD_DIR NEW_DIR [--proxy GROUP] [--json] [--access-log-sampling P|off] [--jwt-fast-path on|module|off]',
    'diff OLD_DIR NEW_DIR [--old-access-log-sampling P|off] [--new-access-log-sampling P|off]',
  ],
  summary:
    'The Envoy resources each proxy group would gain, lose or change between two policy directories, as serve with those flags sends them (both sides, or --old-/--new- for one).',
  flags: [
    PROXY_GROUP,
    JSON_FLAG,
    ACCESS_LOG_SAMPLING,
    JWT_FAST_PATH,
    { name: 'old-access-log-sampling', value: 'P|off', help: '--access-log-sampling for OLD_DIR only' },
    { name: 'new-access-log-sampling', value: 'P|off', help: '--access-log-sampling for NEW_DIR only' },
  ],
  notes: ['Exit 0 when identical, 1 when different; 2 also when a side does not compile or --proxy names no group on either side.'],
};

export const SCHEMA_COMMAND: CommandSpec = {
  name: 'schema',
  usage: ['schema [--kind KIND] [--out DIR [--check]]'],
  summary: 'The JSON Schema (draft-07) of any policy document, or of one kind (committed in schemas/; editors: docs/editors.md).',
  flags: [
    { name: 'kind', value: 'KIND', help: 'only this kind' },
    { name: 'out', value: 'DIR', help: 'write DIR/v1alpha1/all.json and one file per kind' },
    { name: 'check', help: 'with --out: compare DIR with the schemas instead, and exit 1 when it is stale' },
  ],
};

export const AUTHZ_COMMAND: CommandSpec = {
  name: 'authz',
  usage: ['authz [--policies DIR] [flags]'],
  summary:
    'Run the ext_authz service (JWTPolicy checks) on its own, over mTLS with the mesh CA; point the proxies at it with serve --authz-address-for-proxies.',
  flags: Object.values(AUTHZ_SETTINGS).map((s) => (s.flag === 'policies' ? POLICIES : s.flag === 'data-dir' ? DATA_DIR : settingFlag(s))),
};

export const RATELIMIT_COMMAND: CommandSpec = {
  name: 'ratelimit',
  usage: ['ratelimit [--policies DIR] [flags]'],
  summary:
    'Run the rate-limit service (global RateLimitPolicy limits, counted in Redis) on its own, over mTLS with the mesh CA; point the proxies at it with serve --ratelimit-address-for-proxies.',
  flags: Object.values(RATELIMIT_SETTINGS).map((s) => (s.flag === 'policies' ? POLICIES : s.flag === 'data-dir' ? DATA_DIR : settingFlag(s))),
};

export const BOOTSTRAP_COMMAND: CommandSpec = {
  name: 'bootstrap',
  usage: [
    'bootstrap --gateway NAME [--instance ID] [--xds-address HOST:PORT[,HOST:PORT...]] [--delta] [--jwt-module] [--envoy-admin-port N] [--id ID] [--out FILE]',
    'bootstrap --service NAME [--instance ID] --app-port N --inbound-port N [--outbound-port N] ...',
    'bootstrap ... --xds-insecure [--token-file F]',
  ],
  summary:
    'Print an Envoy bootstrap (YAML) for a gateway or a sidecar: TLS to the control plane, verified with --xds-ca, presenting the token certificate in --credentials (default: a new token for this proxy from --data-dir, written to DATA_DIR/proxies/). The node id it chose is printed on standard error.',
  flags: [
    GATEWAY,
    SERVICE,
    INSTANCE,
    {
      name: 'id',
      value: 'ID',
      help: 'the node id; default: the gateway or service name, or NAME-INSTANCE with --instance (the instance alone when it already starts with NAME-)',
    },
    { name: 'app-port', value: 'N', help: "sidecar: the port of the service's own process" },
    { name: 'inbound-port', value: 'N', help: 'sidecar: the port the sidecar takes mesh traffic on' },
    { name: 'outbound-port', value: 'N', default: '15001', help: 'sidecar: the port the application sends its outbound calls to' },
    {
      name: 'xds-address',
      value: 'HOST:PORT',
      env: 'SIGNALBOX_XDS_ADDRESS_FOR_PROXIES',
      default: '127.0.0.1:18000',
      help: 'where the proxy reaches the xDS server (HOST must be in its certificate: serve --xds-san); several replicas: HOST:PORT,HOST:PORT,... or one DNS name resolving to each of them; Envoy checks each with a TCP connect and its stream moves to a live one when a replica dies',
    },
    { name: 'credentials', value: 'DIR', help: 'the token certificate and key (signalbox token --out DIR)' },
    { name: 'xds-ca', value: 'FILE', default: 'DATA_DIR/xds-ca.pem', help: 'the CA the xDS server certificate is verified with' },
    DATA_DIR,
    ...STATE_FLAGS,
    TTL,
    {
      ...settingFlag(SERVE_SETTINGS.xdsInsecure),
      help: 'plain text to the control plane, for a server run with --xds-insecure (the token then sits in the bootstrap)',
    },
    { name: 'token-file', value: 'FILE', help: 'with --xds-insecure: the token (JWT) to send; default: a new one from --data-dir' },
    { name: 'delta', help: 'incremental xDS (DELTA_GRPC) instead of state of the world' },
    { name: 'jwt-module', help: "the proxy's Envoy loads Signalbox's compiled JWT filter (docs/jwt.md)" },
    { name: 'envoy-admin-port', value: 'N', default: '9901', help: "the port of the Envoy's own admin interface" },
    { name: 'envoy-admin-address', value: 'ADDRESS', default: '127.0.0.1', help: "the address of the Envoy's own admin interface" },
    { name: 'admin-port', value: 'N', help: "the old name of --envoy-admin-port (serve's --admin-port is the control plane's admin API)" },
    { name: 'admin-address', value: 'ADDRESS', help: "the old name of --envoy-admin-address (serve's --admin-address is the control plane's admin API)" },
    { name: 'out', value: 'FILE', help: 'write the bootstrap to FILE (0600) instead of standard output' },
  ],
};

export const TOKEN_COMMAND: CommandSpec = {
  name: 'token',
  usage: [
    'token --service NAME | --gateway NAME [--instance ID] [--ttl 720h] [--data-dir DIR] [--out DIR]',
    'token revoke TOKEN_ID [--data-dir DIR | --state consul]',
  ],
  summary:
    "Issue a token a proxy presents to the control plane. With --out, write DIR/token.crt and DIR/token.key (Envoy's TLS client certificate, key 0600) and DIR/token.jwt; with --instance and no --out, write them to the folder `signalbox bootstrap` with the same --gateway/--service and --instance uses (DATA_DIR/proxies/...); otherwise print the JWT. `token revoke ID`: a running control plane closes that proxy's stream within a second.",
  flags: [SERVICE, GATEWAY, INSTANCE, TTL, DATA_DIR, ...STATE_FLAGS, { name: 'out', value: 'DIR', help: 'write the token files to DIR (created 0700)' }],
};

export const STATUS_COMMAND: CommandSpec = {
  name: 'status',
  usage: ['status [--admin URL] [--admin-token-file FILE] [--role gateway|sidecar] [--json]'],
  summary:
    'Every connected proxy: versions per type, SYNCED / PENDING / NACKED, certificate expiry. Exit 1 when a proxy is not SYNCED; 2 when the admin API cannot be reached.',
  flags: [
    { name: 'admin', value: 'URL', env: 'SIGNALBOX_ADMIN_URL', default: 'http://127.0.0.1:18001', help: "the control plane's admin API" },
    ADMIN_TOKEN_FILE,
    { name: 'role', value: 'gateway|sidecar', help: 'only proxies of this role' },
    JSON_FLAG,
  ],
};

export const CA_COMMAND: CommandSpec = {
  name: 'ca',
  usage: [
    'ca rotate --phase start|switch|finish [--force] --state consul [--consul-addr ADDRESS] [--state-prefix PREFIX]',
    'ca status --state consul [--json]',
  ],
  summary:
    'Rotate the mesh root of replicas sharing their state in Consul (--state consul), without a restart: `ca rotate --phase start`, then `switch`, then `finish`; the leader carries out each phase and this waits for it (up to 30 s). `ca status`: the phase, the roots, and what each replica holds. Exit 1 when the leader refuses a phase or has not carried it out in time.',
  flags: [
    {
      name: 'phase',
      value: 'start|switch|finish',
      help: 'rotate: start (make the next root, trusted beside the current), switch (the next root signs; certificates re-issued), finish (the previous root leaves the trust bundle)',
    },
    {
      name: 'force',
      help: 'rotate: switch or finish even though a replica is not ready (proxies whose certificates are still from the previous root then fail mTLS until renewed)',
    },
    JSON_FLAG,
    ...STATE_FLAGS,
  ],
  notes: ['Steps, and how long to wait between them: docs/ha.md (CA rotation). With one replica and --data-dir: docs/mtls.md.'],
};

/** Every command, in the order `signalbox --help` lists them. */
export const COMMANDS: readonly CommandSpec[] = [
  SERVE_COMMAND,
  VALIDATE_COMMAND,
  COMPILE_COMMAND,
  EXPLAIN_COMMAND,
  DIFF_COMMAND,
  SCHEMA_COMMAND,
  AUTHZ_COMMAND,
  RATELIMIT_COMMAND,
  BOOTSTRAP_COMMAND,
  TOKEN_COMMAND,
  CA_COMMAND,
  STATUS_COMMAND,
];

export function commandSpec(name: string): CommandSpec | undefined {
  return COMMANDS.find((c) => c.name === name);
}
