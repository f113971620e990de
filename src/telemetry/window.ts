// Bounded per-series traffic statistics: cumulative totals, a one-minute sliding window of
// per-second counters (rates, sparklines) and of latency histograms (percentiles). Memory per
// series is fixed (about 8 KB), whatever the request rate.

/** Counter fields, in the order they are stored. */
export const FIELDS = ['requests', 'c2xx', 'c3xx', 'c4xx', 'c5xx', 'retries', 'rateLimited', 'authzDenied', 'overflow', 'resets'] as const;
export type Field = (typeof FIELDS)[number];
export const NF = FIELDS.length;
export const F = Object.fromEntries(FIELDS.map((f, i) => [f, i])) as Record<Field, number>;

/** Seconds the window spans (one slot per second). */
export const WINDOW_SECONDS = 60;
/** Latency histograms are kept per slice of this many seconds. */
const HIST_SLICE_SECONDS = 5;
const HIST_SLICES = WINDOW_SECONDS / HIST_SLICE_SECONDS;

/** Latency bucket upper bounds, ms: 0.1 ms to ~60 s in steps of 25%, then +Inf. */
export const LATENCY_BOUNDS_MS: number[] = (() => {
  const out: number[] = [];
  for (let b = 0.1; b < 60_000; b *= 1.25) out.push(Math.round(b * 1000) / 1000);
  return out;
})();
const NB = LATENCY_BOUNDS_MS.length + 1;

/** Prometheus histogram buckets (seconds) for the exported series. */
export const PROM_BUCKETS_S = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10];

export function latencyBucket(ms: number): number {
  // Binary search over the bounds: the first bound >= ms.
  let lo = 0;
  let hi = LATENCY_BOUNDS_MS.length;
  while (lo < hi) {
    const mid = (lo + hi) >>> 1;
    if (LATENCY_BOUNDS_MS[mid]! >= ms) hi = mid;
    else lo = mid + 1;
  }
  return lo;
}

function promBucket(seconds: number): number {
  let i = 0;
  while (i < PROM_BUCKETS_S.length && PROM_BUCKETS_S[i]! < seconds) i++;
  return i;
}

/** What one request adds to a series. */
export interface Sample {
  /** Counter increments by field index (length NF). */
  counts: Float64Array;
  latencyMs: number;
  /** How many requests this sample stands for (1 / sampling rate). */
  weight: number;
}

export interface WindowStats {
  /** Requests per second over the last 10 complete seconds. */
  rps: number;
  /** Counts over the window (60 s). */
  window: Record<Field, number>;
  p50?: number;
  p90?: number;
  p99?: number;
  /** Requests per second, one point per second, oldest first. */
  spark: number[];
}

export class Series {
  /** Cumulative counts since the series was created. */
  readonly totals = new Float64Array(NF);
  /** Cumulative Prometheus-style latency buckets (non-cumulative per bucket; summed on export). */
  readonly promBuckets = new Float64Array(PROM_BUCKETS_S.length + 1);
  latencySumSeconds = 0;
  private readonly slots = new Float64Array(WINDOW_SECONDS * NF);
  private readonly slotSecond = new Float64Array(WINDOW_SECONDS).fill(-1);
  private readonly hist = new Float32Array(HIST_SLICES * NB);
  private readonly histSlice = new Float64Array(HIST_SLICES).fill(-1);
  lastSeen = 0;

  constructor(
    readonly key: string,
    readonly withLatency = true,
  ) {}

  add(s: Sample, nowMs: number): void {
    const sec = Math.floor(nowMs / 1000);
    const slot = sec % WINDOW_SECONDS;
    const base = slot * NF;
    if (this.slotSecond[slot] !== sec) {
      this.slots.fill(0, base, base + NF);
      this.slotSecond[slot] = sec;
    }
    for (let i = 0; i < NF; i++) {
      const v = s.counts[i]!;
      if (v === 0) continue;
      this.slots[base + i]! += v * s.weight;
      this.totals[i]! += v * s.weight;
    }
    this.lastSeen = nowMs;
    if (!this.withLatency) return;
    const slice = Math.floor(sec / HIST_SLICE_SECONDS);
    const hs = slice % HIST_SLICES;
    const hbase = hs * NB;
    if (this.histSlice[hs] !== slice) {
      this.hist.fill(0, hbase, hbase + NB);
      this.histSlice[hs] = slice;
    }
    this.hist[hbase + latencyBucket(s.latencyMs)]! += s.weight;
    this.promBuckets[promBucket(s.latencyMs / 1000)]! += s.weight;
    this.latencySumSeconds += (s.latencyMs / 1000) * s.weight;
  }

  /** True when nothing was recorded within the window. */
  idle(nowMs: number): boolean {
    return nowMs - this.lastSeen > WINDOW_SECONDS * 1000;
  }

  stats(nowMs: number): WindowStats {
    const sec = Math.floor(nowMs / 1000);
    const window = Object.fromEntries(FIELDS.map((f) => [f, 0])) as Record<Field, number>;
    const spark: number[] = [];
    let recent = 0;
    for (let back = WINDOW_SECONDS - 1; back >= 0; back--) {
      const s = sec - back;
      const slot = ((s % WINDOW_SECONDS) + WINDOW_SECONDS) % WINDOW_SECONDS;
      const live = this.slotSecond[slot] === s;
      const base = slot * NF;
      const req = live ? this.slots[base]! : 0;
      spark.push(req);
      if (back >= 1 && back <= 10) recent += req;
      if (!live) continue;
      for (let i = 0; i < NF; i++) window[FIELDS[i]!] += this.slots[base + i]!;
    }
    const out: WindowStats = { rps: recent / 10, window, spark };
    if (this.withLatency) Object.assign(out, this.percentiles(sec));
    return out;
  }

  private percentiles(sec: number): { p50?: number; p90?: number; p99?: number } {
    const merged = new Float64Array(NB);
    const slice = Math.floor(sec / HIST_SLICE_SECONDS);
    let total = 0;
    for (let hs = 0; hs < HIST_SLICES; hs++) {
      const which = this.histSlice[hs]!;
      if (which < 0 || slice - which >= HIST_SLICES) continue;
      const base = hs * NB;
      for (let b = 0; b < NB; b++) {
        merged[b]! += this.hist[base + b]!;
        total += this.hist[base + b]!;
      }
    }
    if (total === 0) return {};
    const q = (p: number): number => {
      const rank = p * total;
      let acc = 0;
      for (let b = 0; b < NB; b++) {
        const c = merged[b]!;
        if (acc + c >= rank && c > 0) {
          // Interpolate inside the bucket (geometric bounds, so linear is a fair approximation).
          const lo = b === 0 ? 0 : LATENCY_BOUNDS_MS[b - 1]!;
          const hi = b < LATENCY_BOUNDS_MS.length ? LATENCY_BOUNDS_MS[b]! : lo * 1.25;
          const v = lo + ((rank - acc) / c) * (hi - lo);
          return Math.round(v * 100) / 100;
        }
        acc += c;
      }
      return LATENCY_BOUNDS_MS[LATENCY_BOUNDS_MS.length - 1]!;
    };
    return { p50: q(0.5), p90: q(0.9), p99: q(0.99) };
  }

  totalsObject(): Record<Field, number> {
    return Object.fromEntries(FIELDS.map((f, i) => [f, Math.round(this.totals[i]!)])) as Record<Field, number>;
  }
}

/** A capped set of series: new keys beyond the cap go to one overflow series. */
export class SeriesSet {
  private readonly map = new Map<string, Series>();
  overflowed = 0;

  constructor(
    readonly max: number,
    readonly withLatency = true,
    readonly overflowKey = '(other)',
  ) {}

  get(key: string): Series {
    let s = this.map.get(key);
    if (s) return s;
    if (this.map.size >= this.max) {
      this.overflowed++;
      key = this.overflowKey;
      s = this.map.get(key);
      if (s) return s;
    }
    s = new Series(key, this.withLatency);
    this.map.set(key, s);
    return s;
  }

  peek(key: string): Series | undefined {
    return this.map.get(key);
  }

  values(): IterableIterator<Series> {
    return this.map.values();
  }

  get size(): number {
    return this.map.size;
  }

  /** Drops series idle for longer than `idleMs` (their totals go with them). */
  sweep(nowMs: number, idleMs: number): void {
    for (const [k, s] of this.map) if (nowMs - s.lastSeen > idleMs) this.map.delete(k);
  }
}
