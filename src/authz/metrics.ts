// Prometheus series of the ext_authz service, registered on the registry it is given (the control
// plane's own in `signalbox serve`). Label values are bounded: policy names from the policy
// directory (anything else is "unknown"), fixed result and reason words. Never tokens or claims.
import client from 'prom-client';

export const DECISION_REASONS = [
  'ok',
  'no_token_optional',
  'missing_token',
  'multiple_tokens',
  'token_too_large',
  'malformed',
  'alg_not_allowed',
  'unknown_kid',
  'bad_signature',
  'expired',
  'not_yet_valid',
  'issued_in_future',
  'missing_exp',
  'wrong_issuer',
  'wrong_audience',
  'claim_mismatch',
  'jwks_unavailable',
  'unknown_policy',
  'no_policy',
  'internal_error',
] as const;
export type DecisionReason = (typeof DECISION_REASONS)[number];

export class AuthzMetrics {
  readonly decisions: client.Counter<'policy' | 'result' | 'reason'>;
  readonly checkSeconds: client.Histogram<'result'>;
  readonly jwksFetches: client.Counter<'policy' | 'result'>;
  readonly jwksKeys: client.Gauge<'policy'>;
  readonly jwksAge: client.Gauge<'policy'>;
  readonly tokenCache: client.Counter<'result'>;
  readonly fastPathAllows: client.Counter<'policy'>;
  /** Read at scrape time: seconds since each policy's key set was loaded. */
  ages?: () => Map<string, number>;

  constructor(registry: client.Registry) {
    const registers = [registry];
    this.decisions = new client.Counter({
      name: 'signalbox_authz_decisions_total',
      help: 'JWT policy decisions of the ext_authz service, by policy, result (allow, deny) and reason.',
      labelNames: ['policy', 'result', 'reason'],
      registers,
    });
    this.checkSeconds = new client.Histogram({
      name: 'signalbox_authz_check_duration_seconds',
      help: 'Time to answer one ext_authz Check (all policies of the route), by result.',
      labelNames: ['result'],
      buckets: [0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1, 2.5],
      registers,
    });
    this.jwksFetches = new client.Counter({
      name: 'signalbox_authz_jwks_fetches_total',
      help: 'Key set loads (uri fetches, file reads), by policy and result (ok, unchanged, error).',
      labelNames: ['policy', 'result'],
      registers,
    });
    this.jwksKeys = new client.Gauge({
      name: 'signalbox_authz_jwks_keys',
      help: 'Verification keys held now, by policy (0: none, checks answer jwks_unavailable).',
      labelNames: ['policy'],
      registers,
    });
    const ages = () => this.ages?.() ?? new Map<string, number>();
    this.jwksAge = new client.Gauge({
      name: 'signalbox_authz_jwks_age_seconds',
      help: 'Seconds since the key set of a policy was last loaded successfully.',
      labelNames: ['policy'],
      registers,
      collect() {
        this.reset();
        for (const [policy, seconds] of ages()) this.set({ policy }, seconds);
      },
    });
    this.fastPathAllows = new client.Counter({
      name: 'signalbox_authz_fast_path_allows_total',
      help: "Requests Envoy let through on a JWTPolicy's fast path by repeating an earlier allow of the service for the same token (no call), by policy, as the proxies report them (about once a second).",
      labelNames: ['policy'],
      registers,
    });
    this.tokenCache = new client.Counter({
      name: 'signalbox_authz_token_cache_total',
      help: 'Verified-token cache lookups, by result (hit, miss).',
      labelNames: ['result'],
      registers,
    });
  }
}
