// The decision maker behind the ext_authz service. It holds the compiled JWTPolicies of the current
// model and answers one question per request: may it pass the policies its route names (every one
// of them), and with which upstream headers? Transport-free: the gRPC server (server.ts) feeds it.
//
// Updates keep what did not change: a policy whose settings are unchanged keeps its verified-token
// cache, and one whose key source is unchanged keeps its keys. A policy that leaves the model is
// kept for a grace period, so that proxies still running the previous configuration get its
// answers instead of "unknown policy" while the new configuration reaches them.
import { performance } from 'node:perf_hooks';
import type { JWK } from 'jose';
import { policySettingsKey, type JwtModel, type JwtPolicyModel } from '../model/jwt.js';
import type { Logger } from '../observability/logger.js';
import { JwksCache, type JwksStatus } from './jwks.js';
import type { AuthzMetrics, DecisionReason } from './metrics.js';
import { CompiledPolicy, type PolicyResult, type Rfc6750Error } from './policy.js';
import type { RequestView } from './extract.js';

/** How long a removed policy still answers for proxies on the previous configuration. */
export const RETIRED_GRACE_MS = 60_000;
/** The longest a check waits for keys before it answers "unavailable" (below Envoy's timeout). */
export const KEY_WAIT_BUDGET_MS = 1_500;

export type Decision =
  | {
      allow: true;
      reason: 'ok' | 'no_token_optional';
      headers: { name: string; value: string }[];
      removeHeaders: string[];
      /** Set when every policy judged a token: the same tokens get this answer from <= now < until (Unix seconds). */
      window?: { from?: number; until: number };
    }
  | { allow: false; status: 400 | 401 | 403 | 503; reason: DecisionReason; policy?: string; headers: { name: string; value: string }[]; body: string };

export interface CheckInput extends RequestView {
  /** Names of the policies the route must satisfy (from the route's context extension). */
  policies: readonly string[] | undefined;
}

/** Whether two versions of a policy load their keys from the same place (and may share them). */
function sameKeySource(a: JwtPolicyModel, b: JwtPolicyModel): boolean {
  return JSON.stringify(a.jwks) === JSON.stringify(b.jwks);
}

function quote(s: string): string {
  return `"${s.replace(/["\\]/g, '')}"`;
}

/** The WWW-Authenticate challenge of RFC 6750 for a refused request. */
export function challenge(error: Rfc6750Error | undefined, description: string, scope?: string): string {
  const params = [
    error ? `error=${quote(error)}` : undefined,
    error ? `error_description=${quote(description)}` : undefined,
    scope ? `scope=${quote(scope)}` : undefined,
  ].filter(Boolean);
  return params.length ? `Bearer ${params.join(', ')}` : 'Bearer';
}

export function denial(r: Extract<PolicyResult, { ok: false }>, policy?: string): Extract<Decision, { allow: false }> {
  const headers: { name: string; value: string }[] = [
    { name: 'content-type', value: 'application/json' },
    { name: 'cache-control', value: 'no-store' },
  ];
  if (r.status !== 503) headers.push({ name: 'www-authenticate', value: challenge(r.error, r.description, r.scope) });
  else headers.push({ name: 'retry-after', value: '5' });
  const body = JSON.stringify(
    r.error ? { error: r.error, error_description: r.description } : { error: 'temporarily_unavailable', error_description: r.description },
  );
  return { allow: false, status: r.status, reason: r.reason, ...(policy ? { policy } : {}), headers, body };
}

interface Entry {
  policy: CompiledPolicy;
  key: string;
}

/** What the policies of one check allowed so far. */
interface Accumulated {
  headers: Map<string, string> | undefined;
  forwarded: Set<string> | undefined;
  reason: 'ok' | 'no_token_optional';
  window: { from?: number; until: number } | undefined;
  everyTokenJudged: boolean;
}

function allowed(acc: Accumulated): Decision {
  const headers = acc.headers;
  return {
    allow: true,
    reason: acc.reason,
    headers: headers ? [...headers].map(([name, value]) => ({ name, value })) : [],
    // Client-supplied copies of forwarded headers never reach the upstream.
    removeHeaders: acc.forwarded ? [...acc.forwarded].filter((h) => !headers?.has(h)).sort() : [],
    ...(acc.everyTokenJudged && acc.window ? { window: acc.window } : {}),
  };
}

export interface EngineOptions {
  logger?: Logger;
  metrics?: AuthzMetrics;
  now?: () => number;
  /** Called when any policy's keys changed (the fast path's route versions follow the keys). */
  onKeysChanged?: () => void;
}

export class AuthzEngine {
  private current = new Map<string, Entry>();
  private retired = new Map<string, { entry: Entry; until: number }>();
  /** Bumped on every update that changed something; shown in status. */
  generation = 0;
  /** Unknown policy names last logged (at most once a minute each). */
  private readonly unknownLogged = new Map<string, number>();

  constructor(private readonly opts: EngineOptions = {}) {
    if (opts.metrics) {
      opts.metrics.ages = () => {
        const out = new Map<string, number>();
        for (const [name, e] of this.current) {
          const age = e.policy.jwks.ageSeconds();
          if (age !== undefined) out.set(name, age);
        }
        return out;
      };
    }
  }

  private now(): number {
    return (this.opts.now ?? Date.now)();
  }

  /** Replaces the policies with those of a newly applied model. */
  update(jwt: JwtModel | undefined): void {
    const now = this.now();
    const next = new Map<string, Entry>();
    let changed = false;
    for (const [name, model] of jwt?.policies ?? []) {
      const key = policySettingsKey(model);
      const old = this.current.get(name) ?? this.retired.get(name)?.entry;
      if (old && old.key === key) {
        next.set(name, old);
        continue;
      }
      changed = true;
      const sameKeys = old && sameKeySource(old.policy.model, model) ? old.policy.jwks : undefined;
      const jwks =
        sameKeys ??
        new JwksCache(model.jwks, {
          policy: name,
          metrics: this.opts.metrics,
          logger: this.opts.logger,
          now: this.opts.now,
          onChange: this.opts.onKeysChanged,
        });
      if (!sameKeys) {
        jwks.start();
        old?.policy.jwks.close();
      }
      next.set(name, { policy: new CompiledPolicy(model, jwks, { metrics: this.opts.metrics, now: this.opts.now }), key });
    }
    for (const [name, entry] of this.current) {
      if (!next.has(name)) {
        changed = true;
        this.retire(name, entry, now);
      }
    }
    for (const name of next.keys()) this.retired.delete(name);
    this.current = next;
    this.sweep(now);
    if (changed) {
      this.generation++;
      this.unknownLogged.clear();
      this.opts.logger?.info({ policies: [...next.keys()] }, 'ext_authz: JWT policies updated');
    }
  }

  private retire(name: string, entry: Entry, now: number): void {
    this.retired.set(name, { entry, until: now + RETIRED_GRACE_MS });
    setTimeout(() => this.sweep(this.now()), RETIRED_GRACE_MS + 1_000).unref();
  }

  private sweep(now: number): void {
    for (const [name, r] of this.retired) {
      if (r.until > now) continue;
      this.retired.delete(name);
      if (![...this.current.values()].some((e) => e.policy.jwks === r.entry.policy.jwks)) r.entry.policy.jwks.close();
    }
  }

  private lookup(name: string): CompiledPolicy | undefined {
    const e = this.current.get(name);
    if (e) return e.policy;
    const r = this.retired.get(name);
    if (r && r.until > this.now()) return r.entry.policy;
    return undefined;
  }

  /**
   * The keys a policy verifies with now: undefined when none are loaded, or when this service
   * does not have the policy with that key source yet (it will call onKeysChanged once it has).
   */
  keysOf(policy: JwtPolicyModel): readonly JWK[] | undefined {
    const e = this.current.get(policy.name);
    if (!e || !sameKeySource(e.policy.model, policy)) return undefined;
    return e.policy.jwks.keys();
  }

  /** The one header a policy reads its token from, when it reads it from exactly one header. */
  tokenHeaderOf(name: string): string | undefined {
    const from = this.lookup(name)?.model.from;
    return from?.length === 1 && 'header' in from[0]! ? from[0].header : undefined;
  }

  policyNames(): string[] {
    return [...this.current.keys()];
  }

  /** Every policy must pass; the first refusal (in name order) is the answer. */
  check(input: CheckInput): Promise<Decision> {
    const d = this.checkNow(input);
    return d instanceof Promise ? d : Promise.resolve(d);
  }

  /**
   * check without a promise when no policy has to wait for keys (the steady state): the answer,
   * or a promise of it when some policy must wait.
   */
  checkNow(input: CheckInput): Decision | Promise<Decision> {
    const names = input.policies;
    if (!names || names.length === 0) {
      // The filter only calls for routes that name policies; anything else is a misconfiguration.
      this.opts.metrics?.decisions.inc({ policy: 'none', result: 'deny', reason: 'no_policy' });
      return denial({ ok: false, reason: 'no_policy', status: 403, description: 'no policy for this route' });
    }
    const acc: Accumulated = { headers: undefined, forwarded: undefined, reason: 'no_token_optional', window: undefined, everyTokenJudged: true };
    return this.run(input, names, 0, acc, performance.now() + KEY_WAIT_BUDGET_MS);
  }

  /** Checks policies `from` on, synchronously while no policy has to wait; `deadline` is shared by every wait. */
  private run(input: CheckInput, names: readonly string[], from: number, acc: Accumulated, deadline: number): Decision | Promise<Decision> {
    for (let i = from; i < names.length; i++) {
      const name = names[i]!;
      const policy = this.lookup(name);
      if (!policy) return this.unknownPolicy(name);
      let r: PolicyResult | undefined;
      try {
        r = policy.checkNow(input);
      } catch (e) {
        r = this.failed(name, e);
      }
      if (r === undefined) return this.runWaiting(input, names, i, policy, acc, deadline);
      const refusal = this.take(name, policy, r, acc);
      if (refusal) return refusal;
    }
    return allowed(acc);
  }

  private async runWaiting(
    input: CheckInput,
    names: readonly string[],
    i: number,
    policy: CompiledPolicy,
    acc: Accumulated,
    deadline: number,
  ): Promise<Decision> {
    const name = names[i]!;
    let r: PolicyResult;
    try {
      r = await policy.checkWaiting(input, Math.max(0, deadline - performance.now()));
    } catch (e) {
      r = this.failed(name, e);
    }
    return this.take(name, policy, r, acc) ?? this.run(input, names, i + 1, acc, deadline);
  }

  private failed(name: string, e: unknown): PolicyResult {
    this.opts.logger?.error({ policy: name, err: { message: (e as Error).message } }, 'ext_authz: check failed');
    return { ok: false, reason: 'internal_error', status: 503, description: 'internal error' };
  }

  private unknownPolicy(name: string): Decision {
    this.opts.metrics?.decisions.inc({ policy: 'unknown', result: 'deny', reason: 'unknown_policy' });
    const at = this.now();
    if ((this.unknownLogged.get(name) ?? -Infinity) < at - 60_000 && this.unknownLogged.size < 1000) {
      this.unknownLogged.set(name, at);
      this.opts.logger?.warn(
        { policy: name.slice(0, 63) },
        'ext_authz: a route names a policy this service does not have (configuration skew?); answering 503',
      );
    }
    return denial({ ok: false, reason: 'unknown_policy', status: 503, description: 'policy not loaded yet' });
  }

  /** Adds one policy's result to the answer; the refusal when it refuses. */
  private take(name: string, policy: CompiledPolicy, r: PolicyResult, acc: Accumulated): Decision | undefined {
    this.opts.metrics?.decisions.inc({ policy: name, result: r.ok ? 'allow' : 'deny', reason: r.reason });
    if (!r.ok) return denial(r, name);
    if (r.reason === 'ok') acc.reason = 'ok';
    if (!r.window) acc.everyTokenJudged = false;
    else if (!acc.window) acc.window = r.window;
    else {
      const from = Math.max(acc.window.from ?? -Infinity, r.window.from ?? -Infinity);
      acc.window = { ...(from > -Infinity ? { from } : {}), until: Math.min(acc.window.until, r.window.until) };
    }
    if (policy.forwardHeaders.length) {
      acc.forwarded ??= new Set();
      for (const h of policy.forwardHeaders) acc.forwarded.add(h);
    }
    if (r.headers.length) {
      acc.headers ??= new Map();
      for (const h of r.headers) acc.headers.set(h.name, h.value);
    }
    return undefined;
  }

  status(): { generation: number; policies: Record<string, JwksStatus> } {
    return { generation: this.generation, policies: Object.fromEntries([...this.current].map(([n, e]) => [n, e.policy.jwks.status()])) };
  }

  close(): void {
    for (const e of this.current.values()) e.policy.jwks.close();
    for (const r of this.retired.values()) r.entry.policy.jwks.close();
    this.current.clear();
    this.retired.clear();
  }
}
