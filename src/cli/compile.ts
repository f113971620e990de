// Offline compilation: a policy directory to the Envoy resources of every proxy group, as printable
// JSON (secrets redacted), through compileGroups, the function `serve` compiles with: the same
// access logging (on by default, `--access-log-sampling` as serve), Mesh tracing, JWT checks,
// trust bundle and consistency check. Used by `signalbox compile`, `signalbox diff` and the golden
// tests.
import path from 'node:path';
import { resolveServeConfig, resolveStrict, SERVE_SETTINGS } from '../config/settings.js';
import { compileGroupsSettled, printedGroup, routeFaultFromEnv, type CompileGroupsOptions, type PrintedGroup } from '../controller/compile-groups.js';
import { formatPolicyError, type PolicyError } from '../errors.js';
import { buildModel } from '../controller/build-model.js';
import type { Model } from '../model/model.js';
import { loadPolicyDir } from '../sources/files/loader.js';
import { EncodeCache } from '../xds/resources/resource.js';
import { DEFAULT_AUTHZ_ENDPOINT } from '../translate/jwt.js';
import { COMPILE_COMMAND } from './commands.js';
import { parseFlags } from './flags.js';
import { policyDirArg } from './policies-flag.js';

export type CompiledGroups = Record<string, PrintedGroup>;

/**
 * What an offline compile shows in place of the mesh CA's certificates (the trust bundle secret),
 * which only the serving control plane's data directory holds.
 */
export const TRUST_BUNDLE_PLACEHOLDER = "(the mesh CA's trust bundle, as the serving control plane holds it)";

/** `serve`'s settings that change what proxies get, as `compile` and `diff` take them. */
export interface ServeLikeOptions {
  /** Percent of successful requests reported; 'off': no access logging. Default: serve's (100). */
  accessLogSampling?: number | 'off';
  jwtFastPath?: boolean;
  jwtFastPathModule?: boolean;
  /** Default DEFAULT_AUTHZ_ENDPOINT (serve's, for its default ports). */
  authz?: CompileGroupsOptions['authz'];
  jwtKeys?: CompileGroupsOptions['jwtKeys'];
  /** Default TRUST_BUNDLE_PLACEHOLDER. */
  trustBundlePem?: string;
  /** serve's --strict: a document that is not a Signalbox document is an error (default: skipped, a warning). */
  strict?: boolean;
}

/** Serve's default access-log sampling, parsed as serve parses it. */
const SERVE_DEFAULTS = resolveServeConfig({}, {});

export function compileGroupsOptions(opts: ServeLikeOptions = {}): CompileGroupsOptions {
  const sampling = opts.accessLogSampling ?? SERVE_DEFAULTS.accessLogSampling ?? 'off';
  return {
    accessLog: sampling === 'off' ? undefined : { successSamplePercent: sampling },
    authz: opts.authz ?? DEFAULT_AUTHZ_ENDPOINT,
    jwtKeys: opts.jwtKeys,
    jwtFastPath: opts.jwtFastPath ?? SERVE_DEFAULTS.jwtFastPath,
    jwtFastPathModule: opts.jwtFastPathModule ?? SERVE_DEFAULTS.jwtFastPathModule,
    trustBundlePem: opts.trustBundlePem ?? TRUST_BUNDLE_PLACEHOLDER,
    // Tests only: the translation fault serve can be given (SIGNALBOX_FAULT_TRANSLATE_ROUTE), so the tools fail as serve would.
    beforeGroup: routeFaultFromEnv(),
  };
}

export async function compileDir(
  dir: string,
  sidecarGroups: Iterable<string> = [],
  opts: ServeLikeOptions = {},
): Promise<{ ok: true; groups: CompiledGroups; warnings: PolicyError[] } | { ok: false; errors: PolicyError[] }> {
  const loaded = await loadPolicyDir(dir, undefined, undefined, undefined, { strict: opts.strict });
  if (loaded.errors.length) return { ok: false, errors: loaded.errors };
  const built = await buildModel(loaded.docs, dir);
  if (!built.model) return { ok: false, errors: built.errors };
  const compiled = compileModel(built.model, sidecarGroups, opts);
  return compiled.ok ? { ...compiled, warnings: loaded.warnings } : compiled;
}

/**
 * A valid model's groups as `compile` prints them. Every resource is decoded again and compared
 * with what the translator wrote (EncodeCache roundTrip), whatever SIGNALBOX_STRICT_ENCODE says:
 * what `compile`, `diff` and `validate` show is what Envoy would get, or an error naming the field.
 * A group that cannot be compiled (a translation error, an inconsistent result or a resource that
 * does not survive encoding) is reported on its own documents (SB_TRANSLATE), every failing group
 * at once; a partial result is never printed.
 */
export function compileModel(
  model: Model,
  sidecarGroups: Iterable<string> = [],
  opts: ServeLikeOptions = {},
): { ok: true; groups: CompiledGroups } | { ok: false; errors: PolicyError[] } {
  const settled = compileGroupsSettled(model, { ...compileGroupsOptions(opts), groups: sidecarGroups, encoder: new EncodeCache({ roundTrip: true }) });
  if (settled.failed.size) return { ok: false, errors: [...settled.failed.values()].flatMap((f) => f.errors) };
  const groups: CompiledGroups = {};
  for (const [group, g] of settled.groups) groups[group] = printedGroup(g);
  return { ok: true, groups };
}

/**
 * Those flags' values as serve reads them: the flag, else its environment twin, else serve's
 * default (same parsing, same errors).
 */
export function serveLikeOptions(flags: Record<string, string | boolean | undefined>, env: NodeJS.ProcessEnv = process.env): ServeLikeOptions {
  const twins = [SERVE_SETTINGS.accessLogSampling, SERVE_SETTINGS.jwtFastPath];
  const picked: Record<string, string | undefined> = {};
  for (const s of twins) picked[s.flag] = typeof flags[s.flag] === 'string' ? (flags[s.flag] as string) : undefined;
  const cfg = resolveServeConfig(picked, Object.fromEntries(twins.flatMap((s) => (env[s.env] !== undefined ? [[s.env, env[s.env]]] : []))));
  return { accessLogSampling: cfg.accessLogSampling ?? 'off', jwtFastPath: cfg.jwtFastPath, jwtFastPathModule: cfg.jwtFastPathModule };
}

/** `signalbox compile`: exit 0 with the JSON, 1 when the directory is invalid or the group unknown. */
export async function compileCommand(
  args: string[],
  out: NodeJS.WritableStream = process.stdout,
  err: NodeJS.WritableStream = process.stderr,
): Promise<number> {
  const flags = parseFlags(COMPILE_COMMAND.flags, args, true);
  const values = { group: flags.str('group') };
  const result = await compileDir(path.resolve(policyDirArg(flags.positionals, flags.str('policies'))), values.group ? [values.group] : [], {
    ...serveLikeOptions(flags.values),
    strict: resolveStrict({ strict: flags.bool('strict') || undefined }),
  });
  if (!result.ok) {
    for (const e of result.errors) err.write(`${formatPolicyError(e)}\n`);
    return 1;
  }
  for (const w of result.warnings) err.write(`warning: ${formatPolicyError(w)}\n`);
  if (values.group && !result.groups[values.group]) {
    err.write(`signalbox compile: no proxy group "${values.group}" (have: ${Object.keys(result.groups).join(', ')})\n`);
    return 1;
  }
  const groups = values.group ? { [values.group]: result.groups[values.group] } : result.groups;
  out.write(`${JSON.stringify(groups, null, 2)}\n`);
  return 0;
}
