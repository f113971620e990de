// Reload work in process, phase by phase: what a one-route edit costs the compile (read, parse,
// model, translate, hash, encode), with no xDS server and no clients, so the figure is the
// reload's own. Runs at 1,000 and 10,000 routes by default; bounded in count (--edits) and time.
// Wall time and this process's CPU time (user + system) per reload are both reported: on a shared
// machine the wall time includes waiting for a CPU, the CPU time does not.
//
//   npm run bench:reload [-- --routes "1000 10000" --edits 30 --last-good --json FILE]
import { mkdtempSync, rmSync, writeFileSync, renameSync } from 'node:fs';
import { loadavg, tmpdir } from 'node:os';
import path from 'node:path';
import { performance } from 'node:perf_hooks';
import { parseArgs } from 'node:util';
import { Pipeline } from '../src/controller/pipeline.js';
import { createLogger } from '../src/observability/logger.js';
import { SnapshotCache } from '../src/xds/cache/snapshot-cache.js';
import { DEFAULT_SHAPE, routeFile, writePolicyDir } from './policy-gen.js';

const { values: flags } = parseArgs({
  options: {
    routes: { type: 'string', default: '1000 10000' },
    edits: { type: 'string', default: '30' },
    json: { type: 'string' },
    // As `serve` runs it: a data directory, and the last good configuration saved after each apply.
    'last-good': { type: 'boolean', default: false },
  },
});
const sizes = flags.routes!.split(/\s+/).filter(Boolean).map(Number);
const edits = Math.min(Math.max(Number(flags.edits), 5), 500);

function pct(xs: number[], p: number): number {
  const s = [...xs].sort((a, b) => a - b);
  const i = (s.length - 1) * p;
  const lo = Math.floor(i);
  return s[lo]! + (s[Math.ceil(i)]! - s[lo]!) * (i - lo);
}

const results: Record<string, unknown>[] = [];
const load = () =>
  loadavg()
    .map((x) => x.toFixed(2))
    .join(' ');
console.log(`load average at the start: ${load()}`);
for (const routes of sizes) {
  const shape = { ...DEFAULT_SHAPE, routes, services: Math.max(200, Math.round(routes / 5)), gateways: 1 };
  const dir = mkdtempSync(path.join(tmpdir(), 'sb-reload-'));
  const dataDir = flags['last-good'] ? mkdtempSync(path.join(tmpdir(), 'sb-reload-data-')) : undefined;
  try {
    const { changeFile } = writePolicyDir(dir, shape);
    const cache = new SnapshotCache();
    const pipeline = new Pipeline({
      policyDir: dir,
      cache,
      logger: createLogger({ level: 'silent' }),
      ...(dataDir ? { dataDir, persistLastGood: true } : {}),
    });
    const t0 = performance.now();
    const cold = await pipeline.reload();
    if (!cold.applied) throw new Error(`the generated policies were rejected: ${JSON.stringify(cold.errors.slice(0, 3))}`);
    const coldMs = performance.now() - t0;
    const times: number[] = [];
    const cpus: number[] = [];
    for (let i = 0; i < edits; i++) {
      const tmp = path.join(path.dirname(changeFile), `.next-${i}.yaml`);
      writeFileSync(tmp, routeFile(0, shape, 6000 + i));
      renameSync(tmp, changeFile);
      const c0 = process.cpuUsage();
      const r = await pipeline.reload({ paths: new Set([changeFile]), full: false });
      const c = process.cpuUsage(c0);
      if (!r.applied) throw new Error('an edit was rejected');
      times.push(r.durationMs);
      cpus.push((c.user + c.system) / 1000);
    }
    const skip = Math.min(5, times.length - 1);
    const warm = times.slice(skip);
    const warmCpu = cpus.slice(skip);
    const row = {
      routes,
      services: shape.services,
      coldMs: Math.round(coldMs),
      p50: +pct(warm, 0.5).toFixed(1),
      p90: +pct(warm, 0.9).toFixed(1),
      max: +Math.max(...warm).toFixed(1),
      cpuP50: +pct(warmCpu, 0.5).toFixed(1),
      cpuP90: +pct(warmCpu, 0.9).toFixed(1),
      edits: warm.length,
    };
    results.push(row);
    console.log(
      `routes ${routes} (services ${shape.services}): cold ${row.coldMs} ms; one-route edit, warm (${row.edits} edits): wall p50 ${row.p50} ms, p90 ${row.p90} ms, max ${row.max} ms; CPU p50 ${row.cpuP50} ms, p90 ${row.cpuP90} ms`,
    );
  } finally {
    rmSync(dir, { recursive: true, force: true });
    if (dataDir) rmSync(dataDir, { recursive: true, force: true });
  }
}
console.log(`load average at the end: ${load()}`);
if (flags.json) writeFileSync(flags.json, JSON.stringify({ node: process.version, load: loadavg(), results }, null, 2));
