// The policy directory of the commands that read one without serving it (validate, compile,
// explain): `--policies DIR`, as `serve` and `authz` take it, with the same environment variable
// and default; the positional DIR these commands took first is still accepted.
import { SERVE_SETTINGS } from '../config/settings.js';
import { SignalboxError } from '../errors.js';

/**
 * The directory to read: `--policies DIR`, else the positional DIR, else $SIGNALBOX_POLICIES, else
 * `policies` (serve's default). Both flag and positional, naming different directories, or more
 * than one positional, is a usage error rather than a silent choice.
 */
export function policyDirArg(positionals: string[], flag: string | undefined, env: NodeJS.ProcessEnv = process.env): string {
  if (positionals.length > 1)
    throw new SignalboxError(
      'SB_BAD_FLAG',
      `one policy directory, not ${positionals.length} (${positionals
        .slice(0, 3)
        .map((p) => JSON.stringify(p.slice(0, 100)))
        .join(', ')}); give it as --policies DIR`,
    );
  const positional = positionals[0];
  if (flag !== undefined && positional !== undefined && flag !== positional) {
    throw new SignalboxError(
      'SB_BAD_FLAG',
      `two policy directories: --policies ${JSON.stringify(flag.slice(0, 100))} and ${JSON.stringify(positional.slice(0, 100))}; give one`,
    );
  }
  if (flag === '') throw new SignalboxError('SB_BAD_FLAG', '--policies needs a directory');
  return flag ?? positional ?? env[SERVE_SETTINGS.policies.env] ?? SERVE_SETTINGS.policies.default;
}
