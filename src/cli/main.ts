// The `signalbox` command.
import { writeFileSync } from 'node:fs';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { SERVE_SETTINGS, resolveServeConfig } from '../config/settings.js';
import { formatPolicyError, SignalboxError } from '../errors.js';
import { buildModel } from '../model/model.js';
import { loadPolicyDir } from '../sources/files/loader.js';
import { bootstrapYaml } from './bootstrap.js';
import { compileDir } from './compile.js';

const USAGE = `signalbox: a service-mesh control plane for Envoy

Usage:
  signalbox serve [flags]              run the control plane
  signalbox validate DIR               check a policy directory; exit 1 on any error
  signalbox compile DIR [--group G]    print the Envoy resources each proxy group gets (JSON)
  signalbox bootstrap --gateway NAME --xds-address HOST:PORT [--delta] [--admin-port N] [--id ID] [--out FILE]
                                       print an Envoy bootstrap (YAML) for a gateway proxy

serve flags (each also read from its environment variable):
${Object.values(SERVE_SETTINGS)
  .map((s) => `  --${s.flag.padEnd(20)} ${s.env.padEnd(28)} ${s.help} (default ${s.default})`)
  .join('\n')}
`;

export async function run(argv: string[]): Promise<number> {
  const [command, ...rest] = argv;
  try {
    switch (command) {
      case 'serve':
        return await serve(rest);
      case 'validate':
        return await validate(rest);
      case 'compile':
        return await compile(rest);
      case 'bootstrap':
        return bootstrap(rest);
      case undefined:
      case 'help':
      case '--help':
      case '-h':
        process.stdout.write(USAGE);
        return command === undefined ? 2 : 0;
      default:
        process.stderr.write(`signalbox: unknown command "${command}"\n\n${USAGE}`);
        return 2;
    }
  } catch (e) {
    if (e instanceof SignalboxError || (e as { code?: string }).code === 'ERR_PARSE_ARGS_UNKNOWN_OPTION' || (e as { code?: string }).code === 'ERR_PARSE_ARGS_INVALID_OPTION_VALUE') {
      process.stderr.write(`signalbox ${command}: ${(e as Error).message}\n`);
      return 2;
    }
    throw e;
  }
}

async function serve(args: string[]): Promise<number> {
  const options = Object.fromEntries(Object.values(SERVE_SETTINGS).map((s) => [s.flag, { type: 'string' as const }]));
  const { values } = parseArgs({ args, options, allowPositionals: false });
  const cfg = resolveServeConfig(values);
  const { startServer } = await import('./serve.js');
  const server = await startServer(cfg);
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

async function validate(args: string[]): Promise<number> {
  const { positionals, values } = parseArgs({ args, options: { json: { type: 'boolean' } }, allowPositionals: true });
  const dir = positionals[0] ?? 'policies';
  const loaded = await loadPolicyDir(path.resolve(dir));
  let errors = loaded.errors;
  if (errors.length === 0) errors = (await buildModel(loaded.docs, path.resolve(dir))).errors;
  if (values.json) {
    process.stdout.write(JSON.stringify({ valid: errors.length === 0, documents: loaded.docs.length, errors }, null, 2) + '\n');
  } else if (errors.length) {
    for (const e of errors) process.stderr.write(formatPolicyError(e) + '\n');
    process.stderr.write(`${errors.length} error(s) in ${dir}\n`);
  } else {
    const kinds = new Map<string, number>();
    for (const d of loaded.docs) kinds.set(d.kind, (kinds.get(d.kind) ?? 0) + 1);
    process.stdout.write(`${dir}: valid (${loaded.docs.length} documents: ${[...kinds].map(([k, n]) => `${n} ${k}`).join(', ')})\n`);
  }
  return errors.length ? 1 : 0;
}

async function compile(args: string[]): Promise<number> {
  const { positionals, values } = parseArgs({ args, options: { group: { type: 'string' } }, allowPositionals: true });
  const result = await compileDir(path.resolve(positionals[0] ?? 'policies'));
  if (!result.ok) {
    for (const e of result.errors) process.stderr.write(formatPolicyError(e) + '\n');
    return 1;
  }
  const groups = values.group ? { [values.group]: result.groups[values.group] } : result.groups;
  if (values.group && !result.groups[values.group]) {
    process.stderr.write(`signalbox compile: no proxy group "${values.group}" (have: ${Object.keys(result.groups).join(', ')})\n`);
    return 1;
  }
  process.stdout.write(JSON.stringify(groups, null, 2) + '\n');
  return 0;
}

function bootstrap(args: string[]): number {
  const { values } = parseArgs({
    args,
    options: {
      gateway: { type: 'string' },
      'xds-address': { type: 'string' },
      delta: { type: 'boolean' },
      'admin-port': { type: 'string' },
      'admin-address': { type: 'string' },
      id: { type: 'string' },
      out: { type: 'string' },
    },
  });
  if (!values.gateway) throw new SignalboxError('SB_BAD_FLAG', '--gateway NAME is required');
  const xdsAddress = values['xds-address'] ?? process.env.SIGNALBOX_XDS_ADDRESS_FOR_PROXIES ?? '127.0.0.1:18000';
  const adminPort = values['admin-port'] ? Number(values['admin-port']) : undefined;
  if (adminPort !== undefined && (!Number.isInteger(adminPort) || adminPort < 0 || adminPort > 65535)) throw new SignalboxError('SB_BAD_FLAG', '--admin-port must be a port');
  let yaml: string;
  try {
    yaml = bootstrapYaml({ gateway: values.gateway, xdsAddress, delta: values.delta, adminPort, adminAddress: values['admin-address'], id: values.id });
  } catch (e) {
    throw new SignalboxError('SB_BAD_FLAG', (e as Error).message);
  }
  if (values.out) writeFileSync(values.out, yaml);
  else process.stdout.write(yaml);
  return 0;
}
