// The `signalbox` command.
import { statSync } from 'node:fs';
import path from 'node:path';
import { resolvePolicyLimits, resolveServeConfig, resolveStrict } from '../config/settings.js';
import { formatPolicyError, SignalboxError, type PolicyError } from '../errors.js';
import { buildModel } from '../controller/build-model.js';
import type { Model } from '../model/model.js';
import type { PreflightError } from '../preflight/envoy.js';
import { loadPolicyDir } from '../sources/files/loader.js';
import { bootstrapCommand, checkInstance, proxyCredentialsDir } from './bootstrap.js';
import { COMMANDS, commandSpec, SERVE_COMMAND, TOKEN_COMMAND, VALIDATE_COMMAND } from './commands.js';
import { compileCommand, compileModel } from './compile.js';
import { diffCommand } from './diff.js';
import { explainCommand } from './explain.js';
import { githubAnnotation } from './annotations.js';
import { asksForHelp, commandHelp, EXIT_CODES, flagValue, DATA_DIR, parseFlags } from './flags.js';
import { policyDirArg } from './policies-flag.js';
import { schemaCommand } from './schema.js';

/** `signalbox --help`: each command's synopsis and summary, from the same tables as `signalbox COMMAND --help`. */
export function mainHelp(): string {
  const lines = ['signalbox: a service-mesh control plane for Envoy', '', 'Usage:'];
  for (const c of COMMANDS) {
    for (const u of c.usage) lines.push(`  signalbox ${u}`);
    lines.push(`      ${c.summary.split(/(?<=\.) /)[0]}`);
  }
  lines.push('', 'signalbox COMMAND --help lists the flags of COMMAND, with their defaults and environment variables.', EXIT_CODES);
  return `${lines.join('\n')}\n`;
}

/** parseArgs' own errors: an unknown flag, a flag without its value, an argument where none is taken. */
const USAGE_ERROR_CODES = new Set(['ERR_PARSE_ARGS_UNKNOWN_OPTION', 'ERR_PARSE_ARGS_INVALID_OPTION_VALUE', 'ERR_PARSE_ARGS_UNEXPECTED_POSITIONAL']);

export async function run(argv: string[]): Promise<number> {
  const [command, ...rest] = argv;
  const spec = command === undefined ? undefined : commandSpec(command);
  if (spec && asksForHelp(rest)) {
    process.stdout.write(commandHelp(spec));
    return 0;
  }
  try {
    switch (command) {
      case 'serve':
        return await serve(rest);
      case 'validate':
        return await validate(rest);
      case 'compile':
        return await compileCommand(rest);
      case 'explain':
        return await explainCommand(rest);
      case 'diff':
        return await diffCommand(rest);
      case 'schema':
        return await schemaCommand(rest);
      case 'bootstrap':
        return await bootstrapCommand(rest);
      case 'token':
        return await token(rest);
      case 'status':
        return await (await import('./status.js')).status(rest);
      case 'ca':
        return await (await import('./ca.js')).caCommand(rest);
      case 'authz':
        return await (await import('./authz.js')).authzCommand(rest);
      case 'ratelimit':
        return await (await import('./ratelimit.js')).ratelimitCommand(rest);
      case undefined:
      case 'help':
      case '--help':
      case '-h':
        if (command === undefined) {
          process.stderr.write(mainHelp());
          return 2;
        }
        process.stdout.write(mainHelp());
        return 0;
      default:
        process.stderr.write(`signalbox: unknown command "${command.slice(0, 100)}"\n\n${mainHelp()}`);
        return 2;
    }
  } catch (e) {
    if (e instanceof SignalboxError || USAGE_ERROR_CODES.has((e as { code?: string }).code ?? '')) {
      process.stderr.write(`signalbox ${command}: ${(e as Error).message}\n(signalbox ${command} --help lists its flags)\n`);
      return 2;
    }
    throw e;
  }
}

async function serve(args: string[]): Promise<number> {
  const { values } = parseFlags(SERVE_COMMAND.flags, args);
  const cfg = resolveServeConfig(values);
  const { startServer } = await import('./serve.js');
  let server: Awaited<ReturnType<typeof startServer>>;
  try {
    server = await startServer(cfg);
  } catch (e) {
    // Some listeners may already be open; a half-started control plane must not linger.
    process.stderr.write(`signalbox serve: cannot start: ${(e as Error).message}\n`);
    process.exit(1);
  }
  await new Promise<void>((resolve) => {
    const stop = (sig: string) => {
      server.logger.info({ signal: sig }, 'shutting down');
      void server.stop().then(resolve);
    };
    process.once('SIGINT', () => stop('SIGINT'));
    process.once('SIGTERM', () => stop('SIGTERM'));
  });
  return 0;
}

/**
 * `--envoy` takes an optional PATH: `validate DIR --envoy /opt/envoy` or `validate --envoy` alone.
 * The word after it is the Envoy binary unless it is a directory (then it is DIR: `validate --envoy policies`).
 */
function envoyFlag(args: string[]): { args: string[]; envoy?: string } {
  const rest: string[] = [];
  let envoy: string | undefined;
  for (let i = 0; i < args.length; i++) {
    const a = args[i]!;
    if (a.startsWith('--envoy=')) envoy = a.slice('--envoy='.length);
    else if (a === '--envoy') {
      const next = args[i + 1];
      if (next !== undefined && !next.startsWith('-') && !isDirectory(next)) {
        envoy = next;
        i++;
      } else envoy = '';
    } else rest.push(a);
  }
  return { args: rest, envoy: envoy === '' ? process.env.SIGNALBOX_ENVOY_BIN || 'envoy' : envoy };
}

function isDirectory(p: string): boolean {
  try {
    return statSync(p).isDirectory();
  } catch {
    return false;
  }
}

const VALIDATE_FORMATS = ['text', 'json', 'github'] as const;

async function validate(argv: string[]): Promise<number> {
  const { args, envoy } = envoyFlag(argv);
  const flags = parseFlags(VALIDATE_COMMAND.flags, args, true);
  const values = { format: flags.str('format'), json: flags.bool('json'), policies: flags.str('policies'), strict: flags.bool('strict') || undefined };
  const positionals = flags.positionals;
  const format = values.format ?? (values.json ? 'json' : 'text');
  if (!VALIDATE_FORMATS.includes(format as (typeof VALIDATE_FORMATS)[number]))
    throw new SignalboxError('SB_BAD_FLAG', `--format: unknown format "${format.slice(0, 100)}"; expected one of ${VALIDATE_FORMATS.join(', ')}`);
  if (values.json && values.format !== undefined && values.format !== 'json')
    throw new SignalboxError('SB_BAD_FLAG', `--json is --format json; it cannot be combined with --format ${format}`);
  const dir = policyDirArg(positionals, values.policies);
  // The reading limits and strictness `serve` would apply (its SIGNALBOX_MAX_POLICY_* and
  // SIGNALBOX_STRICT variables, else the defaults); --strict here as on serve.
  const loaded = await loadPolicyDir(path.resolve(dir), undefined, resolvePolicyLimits({}), undefined, { strict: resolveStrict({ strict: values.strict }) });
  const { warnings } = loaded;
  const skipped = warnings.length ? `; ${warnings.length} document(s) skipped, not Signalbox documents` : '';
  let errors: (PolicyError | PreflightError)[] = loaded.errors;
  let model: Model | undefined;
  if (errors.length === 0) ({ errors, model } = await buildModel(loaded.docs, path.resolve(dir)));
  // Compiled as `serve` would (every Gateway and every Service's sidecar), each resource checked
  // to decode as written: a translator fault is reported here rather than by a proxy.
  if (model && errors.length === 0) {
    const { sidecarGroupsOf } = await import('../preflight/envoy.js');
    const compiled = compileModel(model, sidecarGroupsOf(model));
    if (!compiled.ok) errors = compiled.errors;
  }
  // Envoy checks only what the schema and the model accept: their errors are the cheaper ones to fix.
  const preflight =
    envoy !== undefined && model && errors.length === 0
      ? await (await import('../preflight/envoy.js')).preflightModel(model, loaded.docs, { envoy })
      : undefined;
  if (preflight) errors = preflight.errors;
  const checked = preflight
    ? ` checked by Envoy ${preflight.envoy.version}: ${preflight.groups.length} proxy group(s) in ${preflight.ms} ms (${Math.round(preflight.groups.reduce((n, g) => n + g.checkMs, 0) / Math.max(1, preflight.groups.length))} ms per group)`
    : '';
  if (format === 'json') {
    process.stdout.write(
      `${JSON.stringify({ valid: errors.length === 0, documents: loaded.docs.length, errors, warnings, ...(preflight ? { envoy: { ...preflight.envoy, ms: preflight.ms, groups: preflight.groups } } : {}) }, null, 2)}\n`,
    );
  } else {
    // Warnings (documents skipped as not Signalbox's) never fail the check; --strict makes them errors.
    if (format === 'github') {
      // Workflow commands are read from standard output; the summary goes to the log as usual.
      for (const e of errors) process.stdout.write(`${githubAnnotation(e)}\n`);
      for (const w of warnings) process.stdout.write(`${githubAnnotation(w, 'warning')}\n`);
    } else {
      for (const e of errors) process.stderr.write(`${formatPolicyError(e as PolicyError)}\n`);
      for (const w of warnings) process.stderr.write(`warning: ${formatPolicyError(w)}\n`);
    }
    if (errors.length) process.stderr.write(`${errors.length} error(s) in ${dir}${skipped}${checked}\n`);
    else {
      const kinds = new Map<string, number>();
      for (const d of loaded.docs) kinds.set(d.kind, (kinds.get(d.kind) ?? 0) + 1);
      process.stdout.write(`${dir}: valid (${loaded.docs.length} documents: ${[...kinds].map(([k, n]) => `${n} ${k}`).join(', ')}${skipped})${checked}\n`);
    }
  }
  return errors.length ? 1 : 0;
}

async function token(args: string[]): Promise<number> {
  const flags = parseFlags(TOKEN_COMMAND.flags, args, true);
  const positionals = flags.positionals;
  const values = {
    service: flags.str('service'),
    gateway: flags.str('gateway'),
    instance: flags.str('instance'),
    ttl: flags.str('ttl'),
    out: flags.str('out'),
  };
  const dataDir = path.resolve(flagValue(DATA_DIR, flags.values)!);
  const { issueToken, issueTokenCredentials, revokeToken } = await import('../ca/tokens.js');
  // --state consul: keys and revocations in the replicas' shared state instead of the data directory.
  const { sharedStateFromFlags } = await import('./state.js');
  const shared = await sharedStateFromFlags(flags.values);
  try {
    return await tokenWith(shared ?? dataDir, dataDir, positionals, values, { issueToken, issueTokenCredentials, revokeToken });
  } finally {
    shared?.close();
  }
}

async function tokenWith(
  store: import('../ca/tokens.js').TokenStore,
  dataDir: string,
  positionals: string[],
  values: { service?: string; gateway?: string; instance?: string; ttl?: string; out?: string },
  { issueToken, issueTokenCredentials, revokeToken }: Pick<typeof import('../ca/tokens.js'), 'issueToken' | 'issueTokenCredentials' | 'revokeToken'>,
): Promise<number> {
  if (positionals[0] === 'revoke') {
    if (!positionals[1] || positionals.length > 2) throw new SignalboxError('SB_BAD_FLAG', 'usage: signalbox token revoke TOKEN_ID');
    await revokeToken(store, positionals[1]);
    process.stderr.write(
      `revoked ${positionals[1]} (${typeof store === 'string' ? 'a running control plane refuses it within a second' : 'every replica refuses it within about a second'})\n`,
    );
    return 0;
  }
  if (positionals.length > 0) throw new SignalboxError('SB_BAD_FLAG', `unexpected argument "${positionals[0]!.slice(0, 100)}"; see signalbox token --help`);
  if (!values.service === !values.gateway) throw new SignalboxError('SB_BAD_FLAG', 'give either --service NAME or --gateway NAME');
  if (values.instance !== undefined) checkInstance(values.instance);
  const subject = values.service ? `service/${values.service}` : `gateway/${values.gateway}`;
  // --instance without --out: the folder `bootstrap` with the same flags names (renewing that proxy's token in place).
  if (values.out === undefined && values.instance !== undefined) {
    values.out = proxyCredentialsDir(
      dataDir,
      values.service ? { service: values.service, instance: values.instance } : { gateway: values.gateway!, instance: values.instance },
    );
  }
  if (values.out !== undefined) {
    const outDir = path.resolve(values.out);
    const cred = await issueTokenCredentials(store, subject, values.ttl, outDir);
    // The JWT twin (same id and expiry) for clients that cannot present a certificate.
    const { token: jwt } = await issueToken(store, subject, undefined, { id: cred.id, expiresAt: cred.expiresAt });
    const jwtFile = path.join(outDir, 'token.jwt');
    const { writeStateFile } = await import('../util/files.js');
    await writeStateFile(jwtFile, `${jwt}\n`, 0o600);
    process.stderr.write(
      `token ${cred.id} for ${subject}${values.instance !== undefined ? ` (instance ${values.instance})` : ''}, expires ${cred.expiresAt.toISOString()} (revoke: signalbox token revoke ${cred.id})\n` +
        `  client certificate: ${cred.certFile}\n  key:                ${cred.keyFile}\n  JWT:                ${jwtFile}\n`,
    );
    return 0;
  }
  const { token: jwt, id, expiresAt } = await issueToken(store, subject, values.ttl);
  process.stdout.write(`${jwt}\n`);
  process.stderr.write(`token ${id} for ${subject}, expires ${expiresAt.toISOString()} (revoke: signalbox token revoke ${id})\n`);
  return 0;
}
