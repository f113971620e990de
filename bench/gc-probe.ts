// A garbage probe for benchmarks, preloaded into a child process (NODE_OPTIONS="--import
// file://.../dist/bench/gc-probe.js", output folder in SIGNALBOX_GC_PROBE_DIR). Not shipped: only
// the benchmarks load it.
//
// Each SIGUSR2 toggles a measurement. The first starts V8's sampling heap profiler (every
// allocation sampled about once per SAMPLING_BYTES, objects that die young kept in the profile,
// so the profile estimates every byte allocated, garbage included) and notes the garbage
// collections so far; the second stops it and writes `<n>.json` in the folder: bytes allocated,
// the collections by kind (count and ms, from PerformanceObserver 'gc' entries) and where the
// bytes were allocated: by the allocating function, and by the first frame of the stack in this
// project's code or in a dependency (node_modules), or else in Node itself; and, per young
// collection (v8.GCProfiler), the new space in use before it, what survived it and what it
// promoted to the old space (a scavenge's cost grows with what survives, not with the garbage).
//
// Why this and not latency: on a machine shared with other work, the bytes per request and the
// collections per request do not move with the load, where p99 does.
import inspector from 'node:inspector';
import { writeFileSync } from 'node:fs';
import path from 'node:path';
import { PerformanceObserver, constants } from 'node:perf_hooks';
import v8 from 'node:v8';

const SAMPLING_BYTES = 4096;
const dir = process.env.SIGNALBOX_GC_PROBE_DIR;

interface CallFrame {
  functionName: string;
  url: string;
  lineNumber: number;
}
interface ProfileNode {
  callFrame: CallFrame;
  selfSize: number;
  children: ProfileNode[];
}

const KINDS: Record<number, string> = {
  [constants.NODE_PERFORMANCE_GC_MINOR]: 'minor',
  [constants.NODE_PERFORMANCE_GC_MAJOR]: 'major',
  [constants.NODE_PERFORMANCE_GC_INCREMENTAL]: 'incremental',
  [constants.NODE_PERFORMANCE_GC_WEAKCB]: 'weakcb',
};
const gc: Record<string, { count: number; ms: number; maxMs: number }> = {};

interface SpaceStats {
  spaceName: string;
  spaceUsedSize: number;
}
interface GcStat {
  gcType: string;
  cost: number;
  beforeGC: { heapSpaceStatistics: SpaceStats[] };
  afterGC: { heapSpaceStatistics: SpaceStats[] };
}

/** Averages over the scavenges of a GCProfiler run: bytes in the new space before, survived, promoted; cost in ms. */
function scavenges(stats: GcStat[]): { count: number; newSpaceBefore: number; survived: number; promoted: number; costMs: number } {
  const used = (s: SpaceStats[], name: string) => s.find((x) => x.spaceName === name)?.spaceUsedSize ?? 0;
  const list = stats.filter((s) => s.gcType === 'Scavenge');
  const avg = (f: (s: GcStat) => number) => (list.length ? list.reduce((a, s) => a + f(s), 0) / list.length : 0);
  return {
    count: list.length,
    newSpaceBefore: avg((s) => used(s.beforeGC.heapSpaceStatistics, 'new_space')),
    survived: avg((s) => used(s.afterGC.heapSpaceStatistics, 'new_space')),
    promoted: avg((s) => used(s.afterGC.heapSpaceStatistics, 'old_space') - used(s.beforeGC.heapSpaceStatistics, 'old_space')),
    costMs: avg((s) => s.cost / 1000),
  };
}

function frameName(f: CallFrame): string {
  const file = f.url.replace(/^file:\/\//, '');
  const short = file.includes('/node_modules/')
    ? file.slice(file.lastIndexOf('/node_modules/') + 14)
    : file.includes('/dist/')
      ? file.slice(file.indexOf('/dist/') + 6)
      : file;
  return `${f.functionName || '(anonymous)'} ${short || '(native)'}:${f.lineNumber + 1}`;
}

/** Where an allocation is charged: the innermost frame of this project's code or a dependency. */
function owner(stack: CallFrame[]): string {
  for (let i = stack.length - 1; i >= 0; i--) {
    const u = stack[i]!.url;
    if (u.includes('/node_modules/')) {
      const rest = u.slice(u.lastIndexOf('/node_modules/') + 14).split('/');
      return `dependency ${rest[0]!.startsWith('@') ? `${rest[0]}/${rest[1]}` : rest[0]}: ${frameName(stack[i]!)}`;
    }
    if (u.includes('/dist/')) return `signalbox: ${frameName(stack[i]!)}`;
  }
  const leaf = stack.at(-1);
  return `node only: ${leaf ? frameName(leaf) : '(root)'}`;
}

function summarise(root: ProfileNode): { bytes: number; byFunction: [string, number][]; byOwner: [string, number][] } {
  const byFunction = new Map<string, number>();
  const byOwner = new Map<string, number>();
  let bytes = 0;
  const walk = (n: ProfileNode, stack: CallFrame[]) => {
    stack.push(n.callFrame);
    if (n.selfSize > 0) {
      bytes += n.selfSize;
      const f = frameName(n.callFrame);
      byFunction.set(f, (byFunction.get(f) ?? 0) + n.selfSize);
      const o = owner(stack);
      byOwner.set(o, (byOwner.get(o) ?? 0) + n.selfSize);
    }
    for (const c of n.children) walk(c, stack);
    stack.pop();
  };
  walk(root, []);
  const top = (m: Map<string, number>) => [...m].sort((a, b) => b[1] - a[1]).slice(0, 40);
  return { bytes, byFunction: top(byFunction), byOwner: top(byOwner) };
}

if (dir) {
  new PerformanceObserver((list) => {
    for (const e of list.getEntries()) {
      const kind = KINDS[(e as { detail?: { kind?: number } }).detail?.kind ?? -1] ?? 'other';
      gc[kind] ??= { count: 0, ms: 0, maxMs: 0 };
      const g = gc[kind];
      g.count++;
      g.ms += e.duration;
      g.maxMs = Math.max(g.maxMs, e.duration);
    }
  }).observe({ entryTypes: ['gc'] });
  const session = new inspector.Session();
  session.connect();
  const post = <T>(method: string, params?: object) =>
    new Promise<T>((resolve, reject) => session.post(method, params, (err, res) => (err ? reject(err) : resolve(res as T))));
  let running: { gc: string; at: number; profiler: v8.GCProfiler } | undefined;
  let n = 0;
  process.on('SIGUSR2', () => {
    if (!running) {
      for (const g of Object.values(gc)) g.maxMs = 0;
      const profiler = new v8.GCProfiler();
      profiler.start();
      running = { gc: JSON.stringify(gc), at: performance.now(), profiler };
      void post('HeapProfiler.enable').then(() =>
        post('HeapProfiler.startSampling', {
          samplingInterval: SAMPLING_BYTES,
          // SIGNALBOX_GC_PROBE_LIVE=1: only what is still in the heap when the probe stops (what
          // survived, or was promoted and waits for a major collection), instead of every byte.
          includeObjectsCollectedByMajorGC: !process.env.SIGNALBOX_GC_PROBE_LIVE,
          includeObjectsCollectedByMinorGC: !process.env.SIGNALBOX_GC_PROBE_LIVE,
        }),
      );
      return;
    }
    const before = JSON.parse(running.gc) as typeof gc;
    const seconds = (performance.now() - running.at) / 1000;
    const young = scavenges((running.profiler.stop() as unknown as { statistics: GcStat[] }).statistics);
    running = undefined;
    void post<{ profile: { head: ProfileNode } }>('HeapProfiler.stopSampling').then(({ profile }) => {
      const collections: typeof gc = {};
      for (const [k, g] of Object.entries(gc)) {
        const b = before[k] ?? { count: 0, ms: 0, maxMs: 0 };
        collections[k] = { count: g.count - b.count, ms: g.ms - b.ms, maxMs: g.maxMs };
      }
      if (process.env.SIGNALBOX_GC_PROBE_RAW) writeFileSync(path.join(dir, `${n}.heapprofile`), JSON.stringify(profile));
      writeFileSync(path.join(dir, `${n++}.json`), JSON.stringify({ seconds, collections, young, ...summarise(profile.head) }));
    });
  });
}
