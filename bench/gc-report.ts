// The benchmarks' side of bench/gc-probe.ts: the probe runs inside `serve` (preloaded), is switched
// on and off with SIGUSR2 and writes one JSON report per phase; this reads those reports. Shared
// by bench:ratelimit and bench:authz, which both measure `serve`'s garbage per request.
import { existsSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { waitFor } from '../test/helpers/net.js';

/** What bench/gc-probe.ts writes for one phase. */
export interface Garbage {
  seconds: number;
  bytes: number;
  collections: Record<string, { count: number; ms: number; maxMs: number }>;
  /** Per scavenge, averages: new space in use before, survived, promoted (bytes), cost (ms). */
  young: { count: number; newSpaceBefore: number; survived: number; promoted: number; costMs: number };
  byFunction: [string, number][];
  byOwner: [string, number][];
}

/** Toggles serve's garbage probe (SIGUSR2); on the second toggle, waits for and reads its report. */
export async function toggleProbe(pid: number, dir: string, n: number, stop: boolean): Promise<Garbage | undefined> {
  process.kill(pid, 'SIGUSR2');
  if (!stop) {
    await new Promise((r) => setTimeout(r, 200));
    return undefined;
  }
  const file = path.join(dir, `${n}.json`);
  await waitFor(async () => existsSync(file), { what: 'the garbage probe report', timeoutMs: 30_000 });
  await new Promise((r) => setTimeout(r, 100));
  return JSON.parse(readFileSync(file, 'utf8')) as Garbage;
}
