import { mkdirSync, readFileSync, statSync, unlinkSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';

// Ports for test servers that someone else binds later (Envoy's admin and listeners, Signalbox,
// Redis, Consul). Asking the kernel for port 0 and closing it again hands out a port from the
// ephemeral range, where any outgoing connection of a load client may take it before the real
// server binds it: CI once failed with Envoy's "cannot bind '127.0.0.1:44781': Address already in
// use". So ports come from below the ephemeral range (outgoing connections never use those), and
// each is claimed with an exclusive file create shared by every test process, released when the
// process exits; a claim left by a killed process expires after STALE_MS.

const CLAIMS = path.join(os.tmpdir(), 'signalbox-test-ports');
const STALE_MS = 30 * 60_000;
const LOWEST = 10_000;

/** The first port of the kernel's ephemeral range (32768 when it cannot be read). */
function ephemeralLow(): number {
  try {
    const low = Number(readFileSync('/proc/sys/net/ipv4/ip_local_port_range', 'utf8').trim().split(/\s+/)[0]);
    return Number.isInteger(low) && low > LOWEST + 1000 ? low : 32_768;
  } catch {
    return 32_768;
  }
}

/** Ports this process holds a claim on. */
const given = new Set<number>();
let releaseHooked = false;

function claim(port: number): boolean {
  const file = path.join(CLAIMS, String(port));
  try {
    writeFileSync(file, String(process.pid), { flag: 'wx' });
    return true;
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code !== 'EEXIST') throw e;
  }
  try {
    if (Date.now() - statSync(file).mtimeMs < STALE_MS) return false;
    unlinkSync(file);
    writeFileSync(file, String(process.pid), { flag: 'wx' });
    return true;
  } catch {
    return false; // another process took the stale claim first
  }
}

function bindable(port: number): Promise<boolean> {
  return new Promise<boolean>((resolve) => {
    const s = net.createServer();
    s.once('error', () => resolve(false));
    s.listen({ port, host: '127.0.0.1', exclusive: true }, () => s.close(() => resolve(true)));
  });
}

/**
 * A loopback TCP port that no other test process has been given and that nothing listens on,
 * outside the kernel's ephemeral range. Never the same port twice in one process.
 */
export async function freePort(): Promise<number> {
  mkdirSync(CLAIMS, { recursive: true });
  if (!releaseHooked) {
    releaseHooked = true;
    process.once('exit', () => {
      for (const p of given) {
        try {
          unlinkSync(path.join(CLAIMS, String(p)));
        } catch {
          // already gone
        }
      }
    });
  }
  const high = ephemeralLow();
  for (let attempt = 0; attempt < 2000; attempt++) {
    const port = LOWEST + Math.floor(Math.random() * (high - LOWEST));
    if (given.has(port) || !claim(port)) continue;
    given.add(port); // claimed: kept until exit even if something else listens there now
    if (await bindable(port)) return port;
  }
  throw new Error(`no free loopback port found in ${LOWEST}-${high - 1}`);
}

/** Polls `check` until it returns true (no fixed sleeps); throws after timeoutMs. */
export async function waitFor(check: () => Promise<boolean> | boolean, opts: { timeoutMs?: number; intervalMs?: number; what?: string } = {}): Promise<void> {
  const deadline = Date.now() + (opts.timeoutMs ?? 10_000);
  let lastError: unknown;
  for (;;) {
    try {
      if (await check()) return;
    } catch (e) {
      lastError = e;
      if ((e as Error).message?.startsWith('envoy exited early')) throw e;
    }
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${opts.what ?? 'condition'}${lastError ? `: ${(lastError as Error).message}` : ''}`);
    await new Promise((r) => setTimeout(r, opts.intervalMs ?? 50));
  }
}

/** One HTTP request through a proxy; never throws for HTTP statuses. */
export async function httpGet(url: string, init: RequestInit = {}): Promise<{ status: number; headers: Headers; body: string; json<T = any>(): T }> {
  const res = await fetch(url, { redirect: 'manual', ...init });
  const body = await res.text();
  return { status: res.status, headers: res.headers, body, json: <T>() => JSON.parse(body) as T };
}
