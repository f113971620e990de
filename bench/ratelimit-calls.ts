// `npm run bench:ratelimit-calls`: the rate-limit service's own CPU per ShouldRateLimit call,
// without Envoy: the service in a child process (plain h2c, a real Redis), a Node HTTP/2 client
// here calling it at a fixed rate, and the child's CPU read from /proc between blocks of calls.
// Two kinds of call: `global` (a limit per key, far above the load: counted in Redis) and `flood`
// (a limit of 10 per minute: after the first 10, answered from the cache of keys over their
// limit). Not a test; Linux only (/proc).
//
// With `--against DIR` (the root of another built checkout, e.g. the commit before a change) a
// second child runs that tree's service, and blocks alternate between the two (order swapped
// every block), so drift in what else the machine is doing falls on both alike: on a shared
// machine this is how a change of a few hundredths of a millisecond per call shows.
//
// Flags: --blocks N (8) --seconds S per block (3) --rate R calls/s (1000) --against DIR
import { spawn, type ChildProcess } from 'node:child_process';
import { readFileSync } from 'node:fs';
import http2 from 'node:http2';
import path from 'node:path';
import { performance } from 'node:perf_hooks';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { freePort } from '../test/helpers/net.js';
import { startRedis } from '../test/helpers/redis.js';
import { lookupType } from '../src/xds/resources/protos.js';

const { values: flags } = parseArgs({
  options: { blocks: { type: 'string' }, seconds: { type: 'string' }, rate: { type: 'string' }, against: { type: 'string' }, serve: { type: 'string' } },
});
const BLOCKS = Math.min(30, Math.max(1, Number(flags.blocks ?? 8)));
const SECONDS = Math.min(30, Math.max(1, Number(flags.seconds ?? 3)));
const RATE = Math.min(5_000, Math.max(10, Number(flags.rate ?? 1000)));
const MODES = ['global', 'flood'] as const;
type Mode = (typeof MODES)[number];

/** This checkout's root (the built file is dist/bench/ratelimit-calls.js). */
const HERE = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');

/** The child: `--serve ROOT,PORT,REDIS_URL` runs ROOT's rate-limit service on PORT. */
async function serve(spec: string): Promise<void> {
  const [root, port, redisUrl] = spec.split(',');
  const { RateLimitService } = await import(path.join(root!, 'dist/src/ratelimit/service.js'));
  const { createLogger } = await import(path.join(root!, 'dist/src/observability/logger.js'));
  const prom = (await import('prom-client')).default;
  const svc = new RateLimitService({ logger: createLogger({ level: 'silent' }), redis: { url: redisUrl }, registry: new prom.Registry() });
  // The two policies as the model holds them (what limitTable reads).
  svc.update({
    policies: {
      globalRateLimits: new Map([
        [
          'global',
          {
            policy: 'global',
            failureMode: 'allow',
            limits: [{ id: 'global/0', requests: 1e9, unit: 'minute', windowMs: 60_000, by: { header: 'x-api-key' } }],
          },
        ],
        ['flood', { policy: 'flood', failureMode: 'allow', limits: [{ id: 'flood/0', requests: 10, unit: 'minute', windowMs: 60_000 }] }],
      ]),
    },
  });
  await svc.listen(`127.0.0.1:${port}`);
  process.stdout.write('ready\n');
}

interface Child {
  name: string;
  proc: ChildProcess;
  session: http2.ClientHttp2Session;
}

async function startChild(name: string, root: string, redisUrl: string): Promise<Child> {
  const port = await freePort();
  const proc = spawn(process.execPath, [fileURLToPath(import.meta.url), '--serve', `${root},${port},${redisUrl}`], { stdio: ['ignore', 'pipe', 'inherit'] });
  await new Promise<void>((resolve, reject) => {
    proc.stdout!.on('data', (d: Buffer) => d.toString().includes('ready') && resolve());
    proc.once('exit', (code) => reject(new Error(`the ${name} service exited (${code})`)));
  });
  return { name, proc, session: http2.connect(`http://127.0.0.1:${port}`) };
}

/** CPU time (user + system) of a process so far, in ms (/proc ticks, 10 ms). */
function cpuMs(pid: number): number {
  const fields = readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1]!.split(' ');
  return (Number(fields[11]) + Number(fields[12])) * 10;
}

const Req = lookupType('envoy.service.ratelimit.v3.RateLimitRequest');
function frames(mode: Mode): Buffer[] {
  return Array.from({ length: 100 }, (_, i) => {
    const entries =
      mode === 'global'
        ? [
            { key: 'signalbox_limit', value: 'global/0' },
            { key: 'header', value: `key-${i}` },
          ]
        : [{ key: 'signalbox_limit', value: 'flood/0' }];
    const m = Req.encode(Req.fromObject({ domain: 'signalbox', descriptors: [{ entries }] })).finish();
    const f = Buffer.alloc(5 + m.length);
    f.writeUInt32BE(m.length, 1);
    f.set(m, 5);
    return f;
  });
}

function call(session: http2.ClientHttp2Session, body: Buffer): Promise<void> {
  return new Promise((resolve) => {
    const r = session.request({
      ':method': 'POST',
      ':path': '/envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit',
      'content-type': 'application/grpc',
      te: 'trailers',
    });
    r.on('data', () => undefined);
    r.on('close', resolve);
    r.on('error', () => resolve());
    r.end(body);
  });
}

/** One block of calls at RATE; the child's CPU per call in ms. */
async function block(c: Child, mode: Mode, seconds: number): Promise<number> {
  const bodies = frames(mode);
  const total = Math.round(seconds * RATE);
  const c0 = cpuMs(c.proc.pid!);
  const t0 = performance.now();
  const pending: Promise<void>[] = [];
  let sent = 0;
  while (sent < total) {
    const due = Math.min(total, Math.floor(((performance.now() - t0) * RATE) / 1000));
    for (; sent < due; sent++) pending.push(call(c.session, bodies[sent % bodies.length]!));
    await new Promise((r) => setTimeout(r, 1));
  }
  await Promise.all(pending);
  await new Promise((r) => setTimeout(r, 200)); // let the child finish its accounting
  return (cpuMs(c.proc.pid!) - c0) / total;
}

const median = (xs: number[]) => {
  const s = [...xs].sort((a, b) => a - b);
  const mid = Math.floor(s.length / 2);
  return s.length % 2 ? s[mid]! : (s[mid - 1]! + s[mid]!) / 2;
};

async function main(): Promise<void> {
  const redis = await startRedis();
  const children: Child[] = [];
  try {
    children.push(await startChild('this tree', HERE, redis.url));
    if (flags.against) children.push(await startChild(`against ${flags.against}`, path.resolve(flags.against), redis.url));
    for (const mode of MODES) for (const c of children) await block(c, mode, 1); // warm-up
    const results = new Map(children.map((c) => [c, { global: [] as number[], flood: [] as number[] }]));
    for (let b = 0; b < BLOCKS; b++) {
      for (const mode of MODES) {
        for (const c of b % 2 ? [...children].reverse() : children) results.get(c)![mode].push(await block(c, mode, SECONDS));
      }
    }
    console.log(`CPU per call of the rate-limit service (plain h2c, ${RATE} calls/s, ${BLOCKS} blocks of ${SECONDS} s per kind; median, then each block):`);
    for (const c of children) {
      for (const mode of MODES) {
        const xs = results.get(c)![mode];
        console.log(`  ${c.name.padEnd(12)} ${mode.padEnd(6)} ${median(xs).toFixed(3)} ms  [${xs.map((x) => x.toFixed(3)).join(' ')}]`);
      }
    }
  } finally {
    for (const c of children) {
      c.session.destroy();
      c.proc.kill();
    }
    await redis.stop();
  }
}

if (flags.serve) {
  serve(flags.serve).catch((e: Error) => {
    console.error(e);
    process.exit(1);
  });
} else {
  main().then(
    () => process.exit(0),
    (e: Error) => {
      console.error(e);
      process.exit(1);
    },
  );
}
