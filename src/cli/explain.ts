// `signalbox explain [--policies DIR | DIR] --proxy GROUP|GATEWAY [--route NAME] [--json]`: compiles a policy directory
// offline, as `serve` would (compileGroups, with serve's flags that change what proxies get), and
// prints, for one proxy group, every listener's, route's and cluster's effective settings with the
// file and document each value came from (or "default", or the control-plane setting).
import path from 'node:path';
import { formatPolicyError, SignalboxError } from '../errors.js';
import { explainGroup, explainText, resolveGroup } from '../explain/provenance.js';
import { buildModel } from '../controller/build-model.js';
import { loadPolicyDir } from '../sources/files/loader.js';
import { compileGroupsSettled } from '../controller/compile-groups.js';
import { EXPLAIN_COMMAND } from './commands.js';
import { compileGroupsOptions, serveLikeOptions } from './compile.js';
import { parseFlags } from './flags.js';
import { policyDirArg } from './policies-flag.js';

export async function explainCommand(
  args: string[],
  out: NodeJS.WritableStream = process.stdout,
  err: NodeJS.WritableStream = process.stderr,
): Promise<number> {
  const flags = parseFlags(EXPLAIN_COMMAND.flags, args, true);
  const positionals = flags.positionals;
  const values = { proxy: flags.str('proxy'), route: flags.str('route'), json: flags.bool('json'), policies: flags.str('policies') };
  if (!values.proxy) throw new SignalboxError('SB_BAD_FLAG', '--proxy GROUP is required (a gateway name, gateway/NAME or sidecar/SERVICE/APP/IN/OUT)');
  const dir = path.resolve(policyDirArg(positionals, values.policies));
  const loaded = await loadPolicyDir(dir);
  const built = loaded.errors.length ? { errors: loaded.errors, model: undefined } : await buildModel(loaded.docs, dir);
  if (!built.model) {
    for (const e of built.errors) err.write(`${formatPolicyError(e)}\n`);
    return 1;
  }
  // (sidecar groups and +jwt-module variants are built on request; another group's failure does not matter here)
  const settled = compileGroupsSettled(built.model, { ...compileGroupsOptions(serveLikeOptions(flags.values)), groups: [values.proxy] });
  const groups = settled.groups;
  const group = resolveGroup(values.proxy, [...groups.keys(), ...settled.failed.keys()]);
  const failed = group === undefined ? undefined : settled.failed.get(group);
  if (failed) {
    for (const e of failed.errors) err.write(`signalbox explain: ${formatPolicyError(e)}\n`);
    return 1;
  }
  if (!group) {
    err.write(`signalbox explain: no proxy group "${values.proxy}" (have: ${[...groups.keys()].join(', ') || 'none'})\n`);
    return 1;
  }
  const explained = explainGroup(built.model, groups.get(group)!.ir, { route: values.route });
  if (values.route && explained.routes.length === 0) {
    err.write(`signalbox explain: no route "${values.route}" in ${group}\n`);
    return 1;
  }
  out.write(values.json ? `${JSON.stringify(explained, null, 2)}\n` : explainText(explained));
  return 0;
}
