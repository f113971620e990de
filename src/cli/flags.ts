// One table per `signalbox` command: its flags, each with the value it takes, its environment
// variable and its default. The same table gives parseArgs its options and `--help` its text, so
// a flag cannot be accepted without being listed, and flags shared by several commands are one
// object here (same name, same variable, same default, same meaning).
import { parseArgs } from 'node:util';
import { SERVE_SETTINGS, type Setting } from '../config/settings.js';
import { DEFAULT_TOKEN_TTL } from '../ca/tokens.js';

export interface Flag {
  /** Without the leading `--`. */
  name: string;
  /** What the flag takes (`DIR`, `N`); absent: a flag without a value (a boolean). */
  value?: string;
  /** The environment variable read when the flag is not given. */
  env?: string;
  /** The value used when neither the flag nor its variable is given; absent or '': none. */
  default?: string;
  help: string;
  /** Parsed by the command itself rather than by parseArgs (an optional value). */
  custom?: boolean;
}

export interface CommandSpec {
  name: string;
  /** Synopsis lines, each after `signalbox `. */
  usage: string[];
  summary: string;
  flags: Flag[];
  /** Extra lines after the flags (positional arguments, exit codes particular to the command). */
  notes?: string[];
}

/** The exit codes every command keeps. */
export const EXIT_CODES =
  'Exit codes: 0 success, 1 findings (policy errors, differences, a proxy group or proxy not found), 2 a usage error (an unknown flag, a bad value, a missing argument)';

/** A placeholder for a serve-style setting's value, from its name. */
function placeholderOf(flag: string): string {
  if (/-ms$/.test(flag)) return 'MS';
  if (/port$/.test(flag)) return 'N';
  if (/-bytes$|-files$/.test(flag)) return 'N';
  if (/(-file|-cert|-key|-ca|-bundle)$/.test(flag)) return 'FILE';
  if (/(^policies|-dir)$/.test(flag)) return 'DIR';
  if (/address-for-proxies$/.test(flag)) return 'IP:PORT';
  if (/address$|-addr$/.test(flag)) return 'ADDRESS';
  if (flag === 'redis-url') return 'URL';
  if (flag === 'preflight-envoy') return 'PATH';
  if (flag === 'state-stale-max') return 'DURATION';
  return 'VALUE';
}

/** A `serve` setting (SERVE_SETTINGS, AUTHZ_SETTINGS) as a flag of the table. */
export function settingFlag(s: Setting, help = s.help): Flag {
  return { name: s.flag, ...(s.boolean ? {} : { value: placeholderOf(s.flag) }), env: s.env, default: s.boolean ? undefined : s.default, help };
}

// Flags several commands take: one object each.
export const POLICIES: Flag = settingFlag(SERVE_SETTINGS.policies, 'policy directory to read (as serve reads it)');
export const DATA_DIR: Flag = settingFlag(SERVE_SETTINGS.dataDir, "the control plane's data folder: the mesh CA, the token signing key, xds-ca.pem");
export const JSON_FLAG: Flag = { name: 'json', help: 'print JSON instead of text' };
export const ACCESS_LOG_SAMPLING: Flag = { ...settingFlag(SERVE_SETTINGS.accessLogSampling), value: 'P|off' };
export const JWT_FAST_PATH: Flag = {
  ...settingFlag(SERVE_SETTINGS.jwtFastPath),
  value: 'on|module|off',
  help: 'the JWT fast path as serve compiles it: on (a Lua script), module (the compiled filter) or off',
};
export const PROXY_GROUP: Flag = { name: 'proxy', value: 'GROUP', help: 'a proxy group: a gateway name, gateway/NAME or sidecar/SERVICE/APP/IN/OUT' };
export const GATEWAY: Flag = { name: 'gateway', value: 'NAME', help: 'a gateway proxy of the Gateway NAME' };
export const SERVICE: Flag = { name: 'service', value: 'NAME', help: 'a sidecar proxy of the Service NAME' };
export const INSTANCE: Flag = {
  name: 'instance',
  value: 'ID',
  help: "which replica of that gateway or service the proxy is (e.g. a pod or host name); it names the node id (see --id) and the folder DATA_DIR/proxies/ that holds the proxy's token",
};
/** --state and its companions, as serve reads them: commands that issue or revoke tokens reach the same shared state. */
export const STATE_FLAGS: Flag[] = [SERVE_SETTINGS.state, SERVE_SETTINGS.statePrefix, SERVE_SETTINGS.stateKeyFile, SERVE_SETTINGS.consulAddr].map((s) =>
  settingFlag(s),
);
export const TTL: Flag = { name: 'ttl', value: 'DURATION', default: DEFAULT_TOKEN_TTL, help: 'lifetime of a token issued (e.g. 24h)' };
export const ADMIN_TOKEN_FILE: Flag = settingFlag(SERVE_SETTINGS.adminTokenFile, "file holding the admin API's bearer token (serve's --admin-token-file)");
export const HELP: Flag = { name: 'help', help: 'print this help and exit' };

/** parseArgs options for a table (flags parsed by the command itself left out). */
export function parseOptions(flags: readonly Flag[]): Record<string, { type: 'string' | 'boolean' }> {
  const options: Record<string, { type: 'string' | 'boolean' }> = {};
  for (const f of flags) if (!f.custom) options[f.name] = { type: f.value === undefined ? 'boolean' : 'string' };
  return options;
}

export interface ParsedFlags {
  values: Record<string, string | boolean | undefined>;
  positionals: string[];
  /** A flag with a value, as given (undefined when absent). */
  str(name: string): string | undefined;
  /** A flag without a value: given or not. */
  bool(name: string): boolean;
}

/** parseArgs with the table's options: an unknown flag or a missing value is a usage error (exit 2). */
export function parseFlags(flags: readonly Flag[], args: string[], allowPositionals = false): ParsedFlags {
  const { values, positionals } = parseArgs({ args, options: parseOptions(flags), allowPositionals, strict: true });
  const known = (name: string) => {
    if (!flags.some((f) => f.name === name)) throw new Error(`internal: --${name} is not in the flag table`);
  };
  const flat = values as Record<string, string | boolean | undefined>;
  return {
    values: flat,
    positionals,
    str: (name) => {
      known(name);
      const v = flat[name];
      return typeof v === 'string' ? v : undefined;
    },
    bool: (name) => {
      known(name);
      return flat[name] === true;
    },
  };
}

/** A flag's value: the flag, else its variable, else its default. */
export function flagValue(f: Flag, values: Record<string, unknown>, env: NodeJS.ProcessEnv = process.env): string | undefined {
  const v = values[f.name];
  if (typeof v === 'string') return v;
  return (f.env ? env[f.env] : undefined) ?? (f.default || undefined);
}

function wrap(text: string, width: number, indent: string): string {
  const words = text.split(/\s+/).filter(Boolean);
  const lines: string[] = [];
  let line = '';
  for (const w of words) {
    if (line && line.length + 1 + w.length > width) {
      lines.push(line);
      line = w;
    } else line = line ? `${line} ${w}` : w;
  }
  if (line) lines.push(line);
  return lines.join(`\n${indent}`);
}

/** `signalbox COMMAND --help`. */
export function commandHelp(c: CommandSpec): string {
  const out = ['Usage:', ...c.usage.map((u) => `  signalbox ${u}`), '', wrap(c.summary, 98, ''), '', 'Flags:'];
  const left = (f: Flag) => `--${f.name}${f.value ? ` ${f.value}` : ''}`;
  const all = [...c.flags, HELP];
  const width = Math.min(34, Math.max(...all.map((f) => left(f).length)) + 2);
  const indent = ' '.repeat(width + 2);
  for (const f of all) {
    const extra = [f.default ? `default ${f.default}` : '', f.env ? `env ${f.env}` : ''].filter(Boolean).join('; ');
    const text = wrap(`${f.help}${extra ? ` (${extra})` : ''}`, 100 - indent.length, indent);
    const l = left(f);
    out.push(l.length + 2 > width ? `  ${l}\n${indent}${text}` : `  ${l.padEnd(width)}${text}`);
  }
  if (c.notes?.length) out.push('', ...c.notes.map((n) => wrap(n, 98, '')));
  out.push('', wrap(EXIT_CODES, 98, ''));
  return `${out.join('\n')}\n`;
}

/** `--help` or `-h` among the arguments (before a `--`). */
export function asksForHelp(args: readonly string[]): boolean {
  for (const a of args) {
    if (a === '--') return false;
    if (a === '--help' || a === '-h') return true;
  }
  return false;
}
