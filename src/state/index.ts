// Shared state for several replicas (`--state consul`): opened from the flags every command that
// touches the CA or tokens takes. Nothing here knows about xDS: ca/ and cli/ use this folder, never
// the other way round.
import { ErrorCode, SignalboxError } from '../errors.js';
import { consulConnectionFromEnv } from '../sources/consul/config.js';
import { StateKey } from './seal.js';
import { SharedState, type StateLog } from './shared.js';

export { SharedState, checkStatePrefix, type RecordData, type StateLog } from './shared.js';
export { StateKey } from './seal.js';

/** The record that proves a replica holds the state key the others use (a sealed known text). */
export const KEY_CHECK_RECORD = 'state-key';

/**
 * Connects to the shared state: the Consul connection from `consulAddr` plus the CONSUL_*
 * environment (TLS, ACL token), the key from `keyFile` or SIGNALBOX_STATE_KEY. Checks the key
 * before anything else is read or made: the first replica seals a known text under the prefix,
 * and a replica whose key does not open it stops here, so a wrong key never makes a record of
 * its own. A wrong address or token stops the start with a message here too.
 */
export async function openSharedState(opts: {
  consulAddr: string;
  datacenter?: string;
  prefix: string;
  keyFile?: string;
  logger?: StateLog;
  env?: NodeJS.ProcessEnv;
}): Promise<SharedState> {
  const env = opts.env ?? process.env;
  const key = StateKey.load(opts.keyFile, env);
  const conn = consulConnectionFromEnv(opts.consulAddr, opts.datacenter, env);
  const shared = new SharedState({ conn, prefix: opts.prefix, key, logger: opts.logger });
  try {
    const { data } = await shared.readOrCreate(KEY_CHECK_RECORD, async () => ({ check: 'signalbox shared state', keyId: key.id }), ['check']);
    if (data.check !== 'signalbox shared state')
      throw new SignalboxError(ErrorCode.STATE, `${shared.keyOf(KEY_CHECK_RECORD)} in Consul KV does not hold the expected text`);
  } catch (e) {
    shared.close();
    throw e;
  }
  return shared;
}
