// The few Consul KV and session calls shared state needs, on the `consul` package: reads (plain
// and blocking), check-and-set writes, sessions and their locks. Connection settings (address,
// TLS, ACL token) are those of discovery (CONSUL_* variables); the token travels in a header and
// never appears in an error.
import { EventEmitter } from 'node:events';
import http from 'node:http';
import https from 'node:https';
import Consul from 'consul';
import type { ConsulConnection } from '../sources/consul/config.js';
import { ErrorCode, SignalboxError } from '../errors.js';

export interface KvEntry {
  value: string;
  modifyIndex: number;
  /** The session holding the key's lock, if any. */
  session?: string;
}

interface RawItem {
  Key: string;
  Value: string | null;
  ModifyIndex: number;
  Session?: string;
}

type Ctx = EventEmitter & { includeResponse?: boolean };

/** An error of a Consul call, with what was being done; Consul's own short text (never the token). */
function failure(what: string, e: unknown): SignalboxError {
  const err = e as { message?: string; statusCode?: number; response?: { statusCode?: number } };
  const status = err.statusCode ?? err.response?.statusCode;
  const hint = status === 403 || status === 401 ? ' (the Consul ACL token lacks a permission: see the policy in docs/ha.md)' : '';
  const msg = (err.message ?? String(e)).replace(/\s+/g, ' ').slice(0, 200);
  return new SignalboxError(ErrorCode.STATE, `Consul ${what} failed: ${msg}${hint}`);
}

export class ConsulKv {
  private readonly consul: Consul;
  private readonly agent: http.Agent;

  constructor(readonly conn: ConsulConnection) {
    const base = new URL(conn.baseUrl);
    const opts = { keepAlive: true, maxSockets: Infinity };
    const t = conn.tls;
    this.agent =
      base.protocol === 'https:'
        ? new https.Agent({ ...opts, ca: t?.ca, cert: t?.cert, key: t?.key, servername: t?.serverName, rejectUnauthorized: t?.rejectUnauthorized ?? true })
        : new http.Agent(opts);
    const defaults: Record<string, string> = {};
    if (conn.token) defaults.token = conn.token;
    if (conn.datacenter) defaults.dc = conn.datacenter;
    this.consul = new Consul({ baseUrl: `${conn.baseUrl}/v1`, agent: this.agent, defaults } as ConstructorParameters<typeof Consul>[0]);
  }

  /**
   * Reads `key`. With `index`, a blocking query: answers when the key's index passes `index` or
   * after `waitMs`. `index` in the answer is the one to pass next time.
   */
  async get(key: string, opts: { index?: number; waitMs?: number; signal?: AbortSignal } = {}): Promise<{ entry?: KvEntry; index: number }> {
    const ctx: Ctx = Object.assign(new EventEmitter(), { includeResponse: true });
    const onAbort = () => ctx.emit('cancel');
    opts.signal?.addEventListener('abort', onAbort, { once: true });
    try {
      const q: Record<string, unknown> = { key, ctx, consistent: true, timeout: (opts.waitMs ?? 0) + 10_000 };
      if (opts.index !== undefined) {
        delete q.consistent; // a blocking query on the agent's view; the index orders it
        q.index = String(opts.index);
        q.wait = `${Math.ceil((opts.waitMs ?? 30_000) / 1000)}s`;
      }
      const [res, item] = (await this.consul.kv.get(q as never)) as unknown as [{ headers: Record<string, string | undefined> }, RawItem | undefined];
      const index = Number(res?.headers?.['x-consul-index'] ?? 0);
      if (!item) return { index };
      return { entry: { value: item.Value ?? '', modifyIndex: item.ModifyIndex, session: item.Session }, index };
    } catch (e) {
      if (opts.signal?.aborted) throw new SignalboxError(ErrorCode.STATE, 'stopped');
      throw failure(`read of ${key}`, e);
    } finally {
      opts.signal?.removeEventListener('abort', onAbort);
    }
  }

  /** Every key under `prefix` with its value. */
  async list(prefix: string): Promise<Array<{ key: string } & KvEntry>> {
    try {
      const items = (await this.consul.kv.get({ key: prefix, recurse: true })) as unknown as RawItem[] | RawItem | null | undefined;
      const list = !items ? [] : Array.isArray(items) ? items : [items];
      return list.map((i) => ({ key: i.Key, value: i.Value ?? '', modifyIndex: i.ModifyIndex, session: i.Session }));
    } catch (e) {
      throw failure(`list of ${prefix}`, e);
    }
  }

  /** Writes `value` if the key's ModifyIndex is still `modifyIndex` (0: only if the key does not exist). */
  async cas(key: string, value: string, modifyIndex: number): Promise<boolean> {
    try {
      return (await this.consul.kv.set({ key, value, cas: modifyIndex })) === true;
    } catch (e) {
      throw failure(`write of ${key}`, e);
    }
  }

  /** The keys under `prefix` (no values). */
  async keys(prefix: string): Promise<string[]> {
    try {
      const keys = (await this.consul.kv.keys({ key: prefix })) as unknown;
      return Array.isArray(keys) ? keys.filter((k): k is string => typeof k === 'string') : [];
    } catch (e) {
      if ((e as { statusCode?: number }).statusCode === 404) return [];
      throw failure(`list of ${prefix}`, e);
    }
  }

  /** Deletes every key under `prefix` (it must end with "/"). */
  async deleteTree(prefix: string): Promise<void> {
    if (!prefix.endsWith('/')) throw new Error(`deleteTree needs a folder, got ${prefix}`);
    try {
      await this.consul.kv.del({ key: prefix, recurse: true });
    } catch (e) {
      throw failure(`delete of ${prefix}`, e);
    }
  }

  /** Deletes `key` if its ModifyIndex is still `modifyIndex`. */
  async deleteCas(key: string, modifyIndex: number): Promise<boolean> {
    try {
      return (await this.consul.kv.del({ key, cas: modifyIndex })) === true;
    } catch (e) {
      throw failure(`delete of ${key}`, e);
    }
  }

  /**
   * A session tied to the agent's node and to the checks named (it ends the moment one turns
   * critical or goes away), whose locks are released when it ends, with no lock delay: a lock it
   * held can be taken again at once (what the lock guards is safe to redo, see leader.ts).
   */
  async createSession(name: string, checks: string[]): Promise<string> {
    try {
      return (await this.consul.session.create({ name, checks, behavior: 'release', lockdelay: '0s' } as never)).ID;
    } catch (e) {
      throw failure('session create', e);
    }
  }

  /** Whether Consul still knows the session (false once a check it is tied to went critical). */
  async sessionAlive(id: string): Promise<boolean> {
    try {
      const r = (await this.consul.session.info(id)) as unknown;
      return Array.isArray(r) ? r.length > 0 : !!r;
    } catch (e) {
      if ((e as { statusCode?: number }).statusCode === 404) return false;
      throw failure('session read', e);
    }
  }

  /**
   * Registers (again: the same id replaces) a service on the local agent with one TTL check,
   * passing from the start (a session cannot be tied to a critical check). The agent removes the
   * service and its check `deregisterAfter` after the check turned critical (a dead process's
   * registration does not pile up).
   */
  async registerTtlService(o: {
    id: string;
    name: string;
    checkId: string;
    checkName: string;
    ttlS: number;
    deregisterAfter: string;
    meta: Record<string, string>;
  }): Promise<void> {
    try {
      await this.consul.agent.service.register({
        id: o.id,
        name: o.name,
        meta: o.meta,
        check: { checkid: o.checkId, name: o.checkName, ttl: `${o.ttlS}s`, status: 'passing', deregistercriticalserviceafter: o.deregisterAfter },
      } as never);
    } catch (e) {
      throw failure(`service registration of ${o.id}`, e);
    }
  }

  /** Marks a TTL check passing; false when the agent does not know it (it restarted, or reaped it). */
  async passCheck(id: string): Promise<boolean> {
    try {
      await this.consul.agent.check.pass(id);
      return true;
    } catch (e) {
      const status = (e as { statusCode?: number }).statusCode;
      if (status === 404 || /unknown check|does not have associated TTL|not found/i.test((e as Error).message ?? '')) return false;
      throw failure(`check update of ${id}`, e);
    }
  }

  async deregisterService(id: string): Promise<void> {
    try {
      await this.consul.agent.service.deregister(id);
    } catch (e) {
      throw failure(`service deregistration of ${id}`, e);
    }
  }

  async destroySession(id: string): Promise<void> {
    try {
      await this.consul.session.destroy(id);
    } catch (e) {
      throw failure('session destroy', e);
    }
  }

  /** Takes the lock on `key` for `session`, writing `value`; false if another session holds it. */
  async acquire(key: string, value: string, session: string): Promise<boolean> {
    try {
      return (await this.consul.kv.set({ key, value, acquire: session })) === true;
    } catch (e) {
      throw failure(`lock of ${key}`, e);
    }
  }

  async release(key: string, value: string, session: string): Promise<boolean> {
    try {
      return (await this.consul.kv.set({ key, value, release: session })) === true;
    } catch (e) {
      throw failure(`unlock of ${key}`, e);
    }
  }

  close(): void {
    this.agent.destroy();
  }
}
