// What the proxies' access loggers (configured by the xDS translator) and the access log service
// (which reads them) agree on: the cluster the logs go to, the log name that carries the sampling
// rate, and which requests are always reported.

/** The bootstrap's static cluster for the control plane: ADS and the access log service share it. */
export const ALS_CLUSTER = 'signalbox-xds';

/**
 * Envoy response flags (short names) whose requests are always reported, whatever the sampling:
 * circuit-breaker overflow, resets, connection failures, no route, rate limited, external authz
 * denial, timeouts, no healthy upstream, retry limit exceeded.
 */
export const ALWAYS_LOGGED_FLAGS = ['UO', 'UR', 'UC', 'UF', 'LR', 'NR', 'RL', 'UAEX', 'UT', 'UH', 'URX'] as const;

/** Requests with a status at or above this are always reported. */
export const ALWAYS_LOGGED_MIN_STATUS = 400;

export const LOG_NAME_PREFIX = 'signalbox';

/** The log name of an access logger reporting `successSamplePercent` % of successful requests. */
export function logName(successSamplePercent: number): string {
  return `${LOG_NAME_PREFIX}?sample=${successSamplePercent}`;
}

/** The percent of successful requests a stream's proxy reports (100 when not said). */
export function parseLogName(name: string): { sample: number } {
  const m = /[?&]sample=([0-9.]+)/.exec(name);
  const v = m ? Number(m[1]) : 100;
  return { sample: Number.isFinite(v) && v > 0 && v <= 100 ? v : 100 };
}
