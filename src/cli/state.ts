// The shared state a command other than serve reaches with --state consul (token, token revoke,
// bootstrap): the same flags and variables as serve, so a command run next to a replica finds its
// state without repeating them.
import { ErrorCode, SignalboxError } from '../errors.js';
import { SERVE_SETTINGS } from '../config/settings.js';
import type { SharedState } from '../state/index.js';
import { flagValue, STATE_FLAGS } from './flags.js';

const flag = (name: string) => STATE_FLAGS.find((f) => f.name === name)!;

/** The shared state the flags name, or undefined for --state file (the data directory). */
export async function sharedStateFromFlags(values: Record<string, unknown>, env: NodeJS.ProcessEnv = process.env): Promise<SharedState | undefined> {
  const kind = flagValue(flag(SERVE_SETTINGS.state.flag), values, env) ?? 'file';
  if (kind === 'file') return undefined;
  if (kind !== 'consul') throw new SignalboxError(ErrorCode.BAD_FLAG, `--state must be "file" or "consul", got "${kind.slice(0, 100)}"`);
  const consulAddr = flagValue(flag(SERVE_SETTINGS.consulAddr.flag), values, env);
  if (!consulAddr) throw new SignalboxError(ErrorCode.BAD_FLAG, '--state consul needs --consul-addr (or CONSUL_HTTP_ADDR)');
  const { openSharedState } = await import('../state/index.js');
  return openSharedState({
    consulAddr,
    prefix: flagValue(flag(SERVE_SETTINGS.statePrefix.flag), values, env)!,
    keyFile: flagValue(flag(SERVE_SETTINGS.stateKeyFile.flag), values, env),
    env,
  });
}
