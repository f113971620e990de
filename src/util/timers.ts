// Timers longer than Node allows. Node keeps a timer's delay in a signed 32-bit integer: a delay of
// 2^31 ms (about 24.8 days) or more makes it print a TimeoutOverflowWarning and fire after 1 ms
// instead. Certificates renewed at two thirds of a long life (a Mesh certTTL above ~37 days, a
// long-lived --xds-cert) would then renew at once, again and again. setLongTimeout waits in steps
// of at most that bound until the deadline, then calls once.

/** The longest delay Node's setTimeout honours. */
export const MAX_TIMEOUT_MS = 2 ** 31 - 1;

export interface LongTimeout {
  /** Cancels it; calling it again, or after it fired, does nothing. */
  clear(): void;
}

/**
 * Calls `fn` once, `ms` from now (a negative or non-finite delay: as soon as possible), whatever
 * the length. Unreferenced by default: it does not keep the process alive on its own.
 */
export function setLongTimeout(fn: () => void, ms: number, opts: { ref?: boolean } = {}): LongTimeout {
  const due = Date.now() + (Number.isFinite(ms) ? Math.max(0, ms) : 0);
  let timer: NodeJS.Timeout | undefined;
  let cleared = false;
  const arm = () => {
    const left = due - Date.now();
    timer = left > MAX_TIMEOUT_MS ? setTimeout(arm, MAX_TIMEOUT_MS) : setTimeout(() => !cleared && fn(), Math.max(0, left));
    if (!opts.ref) timer.unref();
  };
  arm();
  return {
    clear: () => {
      cleared = true;
      clearTimeout(timer);
    },
  };
}
