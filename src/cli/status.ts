// `signalbox status`: every connected proxy in one terminal table, like `istioctl proxy-status`:
// id, role, per-type versions (what it ACKed; `*` when a newer version was sent and not ACKed yet),
// SYNCED / PENDING / NACKED (PROXY_STATES, the admin API's words), and when its certificate expires. NACKed proxies are followed by
// Envoy's message and the policy files behind the rejected resources. With --admin-token-file
// (or SIGNALBOX_ADMIN_TOKEN_FILE, the variable `serve` reads) it sends the admin API's bearer token.
// It asks for `/api/proxies?scope=all`: with `--state consul` any replica answers for every live
// replica (their proxies as published in Consul), and a REPLICA column names the one holding each
// proxy; with one replica (file state) the answer and the table are as they always were.
import { readFileSync } from 'node:fs';
import { ErrorCode, SignalboxError } from '../errors.js';
import { PROXY_STATES, type ProxyState } from '../xds/server/proxy-status.js';
import { STATUS_COMMAND } from './commands.js';
import { ADMIN_TOKEN_FILE, flagValue, parseFlags } from './flags.js';

interface TypeJson {
  sentVersion?: string;
  ackedVersion?: string;
  sentAt?: string;
  lastNack?: { version: string; message: string; sources: string[]; resources: string[]; culprit?: { doc: number; path: string; line?: number } };
}

export interface ProxyJson {
  id: string;
  role: string;
  name: string;
  group: string;
  protocol: string;
  state: ProxyState;
  types: Record<string, TypeJson>;
  certificate?: { identity?: string; notAfter?: string };
  /** With --state consul: the replica holding its stream. */
  replica?: string;
  /** Its replica's record was full: published without versions (see docs/ha.md). */
  brief?: boolean;
}

/** `/api/proxies?scope=all` with --state consul: the replicas, and why some are missing when Consul could not be read. */
export interface ReplicasJson {
  self: string;
  leader?: string;
  replicas: { id: string; alive: boolean; leader: boolean; proxies: number }[];
  error?: string;
}

const COLUMNS: [string, string][] = [
  ['cluster', 'CDS'],
  ['endpoint', 'EDS'],
  ['listener', 'LDS'],
  ['route', 'RDS'],
  ['secret', 'SDS'],
];

/** SYNCED, PENDING (sent, not ACKed yet) or NACKED: the admin API's words (PROXY_STATES). */
export function statusWord(p: ProxyJson): ProxyState {
  return p.state;
}

export function untilText(iso: string | undefined, now = Date.now()): string {
  if (!iso) return '-';
  const sec = Math.round((Date.parse(iso) - now) / 1000);
  if (sec <= 0) return 'EXPIRED';
  const d = Math.floor(sec / 86400);
  const h = Math.floor((sec % 86400) / 3600);
  const m = Math.floor((sec % 3600) / 60);
  if (d > 0) return `${d}d${h}h`;
  if (h > 0) return `${h}h${m}m`;
  return `${m}m${sec % 60}s`;
}

function versionCell(t: TypeJson | undefined): string {
  if (!t || (!t.sentVersion && !t.ackedVersion)) return '-';
  const acked = t.ackedVersion ? t.ackedVersion.slice(0, 8) : 'none';
  if (t.lastNack && t.lastNack.version === t.sentVersion) return `${acked}!`;
  return t.sentVersion !== t.ackedVersion ? `${acked}*` : acked;
}

/** The table, as text. Pure: tests call it with fixed input. With `replicas` (--state consul), a REPLICA column and a line naming them. */
export function renderStatus(proxies: ProxyJson[], now = Date.now(), replicas?: ReplicasJson): string {
  const header = ['PROXY', 'ROLE', ...(replicas ? ['REPLICA'] : []), 'XDS', ...COLUMNS.map(([, h]) => h), 'STATUS', 'CERT EXPIRES'];
  const rows = proxies.map((p) => [
    p.id,
    `${p.role}/${p.name}`,
    ...(replicas ? [p.replica ?? '?'] : []),
    p.protocol,
    ...COLUMNS.map(([t]) => (p.brief ? '?' : versionCell(p.types[t]))),
    statusWord(p),
    untilText(p.certificate?.notAfter, now),
  ]);
  const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i]!.length)));
  const line = (cells: string[]) => cells.map((c, i) => (i === cells.length - 1 ? c : c.padEnd(widths[i]!))).join('  ');
  const out = [line(header), ...rows.map(line)];
  const counts = Object.fromEntries(PROXY_STATES.map((s) => [s, 0])) as Record<ProxyState, number>;
  for (const p of proxies) counts[statusWord(p)]++;
  if (replicas) {
    const named = replicas.replicas.map(
      (r) =>
        `${r.id}${r.id === replicas.self ? ' (asked)' : ''}${r.leader ? ' leader' : ''}${r.alive ? '' : ' DOWN'}: ${r.proxies} ${r.proxies === 1 ? 'proxy' : 'proxies'}`,
    );
    out.push('', `replicas: ${named.length ? named.join(', ') : '(none listed)'}`);
    if (replicas.error) out.push(`warning: ${replicas.error}`);
    if (proxies.some((p) => p.brief)) out.push("? a replica's record in Consul was full: these proxies are listed without versions (ask that replica)");
  }
  out.push(
    '',
    `${proxies.length} proxies: ${counts.SYNCED} synced, ${counts.PENDING} pending, ${counts.NACKED} NACKed   (versions: ACKed; * newer sent, not ACKed yet; ! newest NACKed)`,
  );
  for (const p of proxies) {
    for (const [t, s] of Object.entries(p.types)) {
      if (!s.lastNack || s.lastNack.version !== s.sentVersion) continue;
      out.push(
        '',
        `${p.id}${replicas && p.replica ? ` (on ${p.replica})` : ''}: ${t} ${s.lastNack.version.slice(0, 8)} NACKED${s.lastNack.sources.length ? ` (from ${s.lastNack.sources.join(', ')}${culpritOf(s.lastNack)})` : ''}`,
        `  ${s.lastNack.message.replace(/\s+/g, ' ').slice(0, 500)}`,
      );
    }
  }
  return `${out.join('\n')}\n`;
}

/** The admin API's bearer token from --admin-token-file (or SIGNALBOX_ADMIN_TOKEN_FILE, as `serve` reads it): the file's trimmed content. */
export function readStatusToken(file: string): string {
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch (e) {
    throw new SignalboxError(ErrorCode.BAD_FLAG, `--admin-token-file ${file}: cannot read it (${(e as NodeJS.ErrnoException).code ?? (e as Error).message})`);
  }
  const token = text.trim();
  if (!token) throw new SignalboxError(ErrorCode.BAD_FLAG, `--admin-token-file ${file} is empty`);
  return token;
}

/** Where `status` writes (tests pass their own). */
export interface StatusOutput {
  out(text: string): void;
  err(text: string): void;
}

const STDIO: StatusOutput = { out: (t) => void process.stdout.write(t), err: (t) => void process.stderr.write(t) };

export async function status(args: string[], io: StatusOutput = STDIO): Promise<number> {
  const flags = parseFlags(STATUS_COMMAND.flags, args);
  const values = { role: flags.str('role'), json: flags.bool('json') };
  const base = flagValue(STATUS_COMMAND.flags[0]!, flags.values)!.replace(/\/+$/, '');
  if (!/^https?:\/\/[^/]+$/.test(base)) throw new SignalboxError(ErrorCode.BAD_FLAG, `--admin must be a URL like http://127.0.0.1:18001, got "${base}"`);
  const tokenFile = flagValue(ADMIN_TOKEN_FILE, flags.values) || undefined;
  const headers: Record<string, string> = tokenFile ? { authorization: `Bearer ${readStatusToken(tokenFile)}` } : {};
  let res: Response;
  try {
    res = await fetch(`${base}/api/proxies?scope=all`, { headers, signal: AbortSignal.timeout(10_000) });
  } catch (e) {
    io.err(`signalbox status: cannot reach the admin API at ${base}: ${(e as Error).message}\n`);
    return 2;
  }
  if (!res.ok) {
    const hint =
      res.status === 401
        ? tokenFile
          ? ': the token in --admin-token-file is not the one the control plane has'
          : ': the admin API requires a bearer token; give --admin-token-file FILE (or SIGNALBOX_ADMIN_TOKEN_FILE)'
        : res.status === 421
          ? ': the admin API does not answer to that host name; use a loopback address or the one it binds'
          : '';
    io.err(`signalbox status: ${base}/api/proxies answered ${res.status}${hint}\n`);
    return 2;
  }
  const body = (await res.json()) as { proxies: ProxyJson[]; scope?: string } & Partial<ReplicasJson>;
  let proxies = body.proxies;
  // Only an answer for all replicas (--state consul) names them; one replica's answer is as before.
  const replicas: ReplicasJson | undefined =
    body.scope === 'all' ? { self: String(body.self ?? ''), leader: body.leader, replicas: body.replicas ?? [], error: body.error } : undefined;
  if (values.role) proxies = proxies.filter((p) => p.role === values.role);
  if (values.json)
    io.out(
      `${JSON.stringify(
        proxies.map((p) => ({
          id: p.id,
          role: p.role,
          name: p.name,
          ...(replicas ? { replica: p.replica } : {}),
          status: statusWord(p),
          types: p.types,
          certificate: p.certificate,
        })),
        null,
        2,
      )}\n`,
    );
  else io.out(renderStatus(proxies, Date.now(), replicas));
  if (replicas?.error) {
    io.err(`signalbox status: ${replicas.error}\n`);
    return 1;
  }
  return proxies.every((p) => p.state === 'SYNCED') ? 0 : 1;
}

/** The document and field a narrowed-down NACK names: `#2 spec.rules[0].matches[0].path.value (line 18)`. */
function culpritOf(n: NonNullable<TypeJson['lastNack']>): string {
  const c = n.culprit;
  if (!c || n.sources.length !== 1) return '';
  return `#${c.doc} ${c.path}${c.line ? ` (line ${c.line})` : ''}`;
}
