// Shared state for several replicas (`--state consul`): named records in Consul KV under one
// prefix, each a small JSON document. Fields that hold private keys are sealed (seal.ts) before
// they leave the process; the rest (certificates, token ids) is public. Every write is a
// check-and-set on the record's ModifyIndex, so two replicas never overwrite each other: a
// record made once (the CA) is made with "only if absent" and the loser reads the winner's.
import { ErrorCode, SignalboxError } from '../errors.js';
import type { ConsulConnection } from '../sources/consul/config.js';
import { ConsulKv } from './consul-kv.js';
import type { StateKey } from './seal.js';

export type RecordData = Record<string, unknown>;

interface Stored {
  v: 1;
  data: RecordData;
  /** Names of the fields in `data` that are sealed. */
  sealed: string[];
}

export interface ReadRecord {
  data: RecordData;
  modifyIndex: number;
}

const PREFIX_FORM = /^[A-Za-z0-9._-]+(\/[A-Za-z0-9._-]+)*$/;
const CAS_TRIES = 20;

export function checkStatePrefix(prefix: string): string {
  const p = prefix.replace(/^\/+|\/+$/g, '');
  if (!PREFIX_FORM.test(p) || p.split('/').some((s) => s === '.' || s === '..'))
    throw new SignalboxError(
      ErrorCode.BAD_FLAG,
      `--state-prefix must be a Consul KV path such as "signalbox" or "mesh/prod/signalbox" (letters, digits, ".", "_", "-", "/"), got "${prefix.slice(0, 100)}"`,
    );
  return p;
}

export interface StateLog {
  info(o: object, msg: string): void;
  warn(o: object, msg: string): void;
  error(o: object, msg: string): void;
}

export class SharedState {
  readonly kv: ConsulKv;
  readonly prefix: string;
  /**
   * Set by `serve` (see leader.ts): records made once are then made by the leader only, and a
   * follower waits for them. Commands without it (token, bootstrap) make what is missing
   * themselves, still "only if absent".
   */
  leadership?: { readonly isLeader: boolean };
  /** How long a follower waits for the leader to make a record before giving up. */
  followerWaitMs = 60_000;
  private readonly stops = new Set<AbortController>();

  constructor(opts: { conn: ConsulConnection; prefix: string; key: StateKey; logger?: StateLog }) {
    this.kv = new ConsulKv(opts.conn);
    this.prefix = checkStatePrefix(opts.prefix);
    this.key = opts.key;
    this.logger = opts.logger;
  }

  private readonly key: StateKey;
  readonly logger?: StateLog;

  /** Where the state lives, for messages: `consul:<prefix>`. */
  get location(): string {
    return `Consul KV ${this.prefix}/`;
  }

  /** The full KV key of record `name`. */
  keyOf(name: string): string {
    return `${this.prefix}/${name}`;
  }

  private decode(name: string, value: string): RecordData {
    let s: Stored;
    try {
      s = JSON.parse(value) as Stored;
    } catch {
      throw new SignalboxError(
        ErrorCode.STATE,
        `${this.keyOf(name)} in Consul KV is not JSON: it was written by something else or damaged; restore it from a backup`,
      );
    }
    if (s?.v !== 1 || typeof s.data !== 'object' || s.data === null || !Array.isArray(s.sealed))
      throw new SignalboxError(ErrorCode.STATE, `${this.keyOf(name)} in Consul KV is not a Signalbox state record (version 1)`);
    const data: RecordData = { ...s.data };
    for (const f of s.sealed) {
      if (typeof data[f] !== 'string') throw new SignalboxError(ErrorCode.STATE, `${this.keyOf(name)} in Consul KV: the sealed field ${f} is missing`);
      data[f] = this.key.open(data[f] as string, `${name}#${f}`, `${this.keyOf(name)}#${f}`);
    }
    return data;
  }

  private encode(name: string, data: RecordData, sealed: string[]): string {
    const out: RecordData = { ...data };
    for (const f of sealed) {
      if (typeof out[f] !== 'string') throw new Error(`sealed field ${f} must be a string`);
      out[f] = this.key.seal(out[f] as string, `${name}#${f}`);
    }
    const stored: Stored = { v: 1, data: out, sealed: [...sealed].sort() };
    return JSON.stringify(stored);
  }

  /** Record `name`, or undefined when it does not exist. */
  async read(name: string): Promise<ReadRecord | undefined> {
    const { entry } = await this.kv.get(this.keyOf(name));
    if (!entry) return undefined;
    return { data: this.decode(name, entry.value), modifyIndex: entry.modifyIndex };
  }

  /**
   * Record `name` as it is, or as `make` makes it if it does not exist yet. Written only if still
   * absent: when another replica wrote it first, theirs is returned and `make`'s is dropped.
   */
  async readOrCreate(name: string, make: () => Promise<RecordData>, sealed: string[]): Promise<{ data: RecordData; created: boolean }> {
    const deadline = Date.now() + this.followerWaitMs;
    let told = false;
    for (let i = 0; i < CAS_TRIES; ) {
      const have = await this.read(name);
      if (have) return { data: have.data, created: false };
      if (this.leadership && !this.leadership.isLeader) {
        // A follower: the leader makes it. Wait on the key (a blocking query answers when it is written).
        if (Date.now() > deadline)
          throw new SignalboxError(
            ErrorCode.STATE,
            `${this.keyOf(name)} is still missing in Consul KV after ${Math.round(this.followerWaitMs / 1000)} s and this replica does not lead: is another replica's start stuck? (the leader is named in ${this.keyOf('leader')})`,
          );
        if (!told) this.logger?.info({ key: this.keyOf(name) }, 'waiting for the leader to create shared state');
        told = true;
        const { index } = await this.kv.get(this.keyOf(name));
        await this.kv.get(this.keyOf(name), { index: Math.max(index, 1), waitMs: 1_000 });
        continue;
      }
      i++;
      const data = await make();
      if (await this.kv.cas(this.keyOf(name), this.encode(name, data, sealed), 0)) return { data, created: true };
    }
    throw new SignalboxError(ErrorCode.STATE, `could not create ${this.keyOf(name)} in Consul KV: it kept changing`);
  }

  /**
   * Changes record `name` with check-and-set: `change` gets the current data (undefined if none)
   * and returns the new data, or undefined to leave it (`sealed` may depend on what is written). Retried when another replica wrote between
   * the read and the write.
   */
  async update(
    name: string,
    change: (current: RecordData | undefined) => RecordData | undefined,
    sealed: string[] | ((next: RecordData) => string[]) = [],
  ): Promise<RecordData | undefined> {
    for (let i = 0; i < CAS_TRIES; i++) {
      const have = await this.read(name);
      const next = change(have?.data);
      if (next === undefined) return have?.data;
      const fields = typeof sealed === 'function' ? sealed(next) : sealed;
      if (await this.kv.cas(this.keyOf(name), this.encode(name, next, fields), have?.modifyIndex ?? 0)) return next;
    }
    throw new SignalboxError(ErrorCode.STATE, `could not update ${this.keyOf(name)} in Consul KV: other writers kept changing it`);
  }

  /**
   * Follows record `name` with blocking queries: `onChange` gets each new content (undefined when
   * the record is absent), the first at once. A value that does not decode goes to `onError`
   * (and the watch goes on: the next write may fix it); Consul being unreachable is retried with
   * a backoff and told once per outage.
   */
  watch(name: string, onChange: (data: RecordData | undefined) => void, onError: (e: Error) => void, opts: { waitMs?: number } = {}): () => void {
    const ac = new AbortController();
    this.stops.add(ac);
    void (async () => {
      let index = 0;
      let lastModify = -1;
      let backoff = 100;
      let down = false;
      while (!ac.signal.aborted) {
        try {
          const r = await this.kv.get(this.keyOf(name), { index, waitMs: opts.waitMs ?? 30_000, signal: ac.signal });
          if (down) this.logger?.info({ key: this.keyOf(name) }, 'Consul reachable again: following shared state');
          down = false;
          backoff = 100;
          // An index that goes backwards (Consul restored or restarted) starts over.
          index = r.index < index ? 0 : r.index;
          const modify = r.entry?.modifyIndex ?? 0;
          if (modify === lastModify) continue;
          lastModify = modify;
          let data: RecordData | undefined;
          try {
            data = r.entry ? this.decode(name, r.entry.value) : undefined;
          } catch (e) {
            onError(e as Error);
            continue;
          }
          onChange(data);
        } catch (e) {
          if (ac.signal.aborted) break;
          if (!down)
            this.logger?.warn(
              { key: this.keyOf(name), err: (e as Error).message },
              'cannot follow shared state in Consul; keeping what was read last and retrying',
            );
          down = true;
          index = 0;
          await new Promise((r) => setTimeout(r, backoff).unref());
          backoff = Math.min(backoff * 2, 5_000);
        }
      }
    })();
    return () => {
      ac.abort();
      this.stops.delete(ac);
    };
  }

  close(): void {
    for (const ac of this.stops) ac.abort();
    this.stops.clear();
    this.kv.close();
  }
}
