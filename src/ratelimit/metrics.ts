// Prometheus series of the rate-limit service, on the registry it is given (the control plane's
// own in `signalbox serve`). Label values are bounded: policy names from the policy directory
// (anything else is "unknown"), fixed words for results and reasons. Never keys, headers or the
// Redis URL.
//
// The per-call series (decisions, calls, cache hits) are counted in plain numbers and handed to
// prom-client when the registry is read: prom-client hashes the label values on every inc(), child
// or not, which the rate-limit service would otherwise pay on each call.
import client from 'prom-client';

export const DECISION_RESULTS = ['allowed', 'limited', 'failure_allowed', 'failure_denied'] as const;
export type DecisionResult = (typeof DECISION_RESULTS)[number];

export const CALL_RESULTS = ['ok', 'over_limit', 'unavailable', 'error'] as const;
export type CallResult = (typeof CALL_RESULTS)[number];

/** Counts per label value, one slot per result. */
type Tally<K extends string> = Record<K, number>;

const zeroDecisions = (): Tally<DecisionResult> => ({ allowed: 0, limited: 0, failure_allowed: 0, failure_denied: 0 });

export class RateLimitMetrics {
  readonly decisions: client.Counter<'policy' | 'result'>;
  readonly calls: client.Counter<'result'>;
  readonly cacheHits: client.Counter;
  /** Decisions per policy name since start (a policy's series stays after it is removed, as a counter's does). */
  private readonly decisionTally = new Map<string, Tally<DecisionResult>>();
  private readonly callTally: Tally<CallResult> = { ok: 0, over_limit: 0, unavailable: 0, error: 0 };
  private cacheHitTally = 0;
  readonly redisSeconds: client.Histogram<'result'>;
  readonly redisErrors: client.Counter<'reason'>;
  readonly redisUp: client.Gauge;
  readonly failureMode: client.Gauge<'policy' | 'failure_mode'>;

  constructor(registry: client.Registry) {
    const registers = [registry];
    this.decisions = new client.Counter({
      name: 'signalbox_ratelimit_decisions_total',
      help: 'Global rate-limit decisions per limit checked, by policy and result: allowed, limited, failure_allowed (Redis unreachable, failureMode allow) or failure_denied (Redis unreachable, failureMode deny: 503).',
      labelNames: ['policy', 'result'],
      registers,
      collect: () => {
        this.decisions.reset();
        for (const [policy, t] of this.decisionTally)
          for (const result of DECISION_RESULTS) if (t[result] > 0) this.decisions.inc({ policy, result }, t[result]);
      },
    });
    this.calls = new client.Counter({
      name: 'signalbox_ratelimit_calls_total',
      help: 'ShouldRateLimit calls from the proxies, by overall answer (ok, over_limit, unavailable, error).',
      labelNames: ['result'],
      registers,
      collect: () => {
        this.calls.reset();
        for (const result of CALL_RESULTS) if (this.callTally[result] > 0) this.calls.inc({ result }, this.callTally[result]);
      },
    });
    this.cacheHits = new client.Counter({
      name: 'signalbox_ratelimit_local_cache_hits_total',
      help: 'Descriptors answered over the limit from the local cache of keys already over it (no Redis command).',
      registers,
      collect: () => {
        this.cacheHits.reset();
        this.cacheHits.inc(this.cacheHitTally);
      },
    });
    this.redisSeconds = new client.Histogram({
      name: 'signalbox_ratelimit_redis_duration_seconds',
      help: 'Time for one Redis command (the counting script of one call), by result (ok, error).',
      labelNames: ['result'],
      buckets: [0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25],
      registers,
    });
    this.redisErrors = new client.Counter({
      name: 'signalbox_ratelimit_redis_errors_total',
      help: 'Redis commands that failed, by reason (timeout, connection, auth, server, other).',
      labelNames: ['reason'],
      registers,
    });
    this.redisUp = new client.Gauge({
      name: 'signalbox_ratelimit_redis_up',
      help: '1 while the rate-limit service is connected to Redis, else 0 (global limits then answer by their failureMode).',
      registers,
    });
    this.failureMode = new client.Gauge({
      name: 'signalbox_ratelimit_policy_failure_mode',
      help: 'One series per RateLimitPolicy with a global section: its failureMode (allow or deny) as a label, value 1.',
      labelNames: ['policy', 'failure_mode'],
      registers,
    });
  }

  /** One decision for one limit of `policy`. */
  decided(policy: string, result: DecisionResult): void {
    let t = this.decisionTally.get(policy);
    if (!t) {
      t = zeroDecisions();
      this.decisionTally.set(policy, t);
    }
    t[result]++;
  }

  /** One call answered (or refused). */
  called(result: CallResult): void {
    this.callTally[result]++;
  }

  /** One descriptor answered from the cache of keys over their limit. */
  cacheHit(): void {
    this.cacheHitTally++;
  }
}
