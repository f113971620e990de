// Messages between bench/xds.ts (the parent) and bench/xds-clients.ts (the simulated proxies).
import { performance } from 'node:perf_hooks';

export type Mode = 'sotw' | 'delta';

export interface ConnectMsg {
  cmd: 'connect';
  /** xDS addresses ("host:port") of the replicas: client i connects to targets[i % targets.length]. */
  targets: string[];
  mode: Mode;
  clients: number;
  /** Gateway of client i: gateways[i % gateways.length]. */
  gateways: string[];
  /** Token per gateway name (gRPC metadata x-signalbox-token), as a real bootstrap would carry. */
  tokens: Record<string, string>;
  /**
   * The CA (PEM) the xDS server's certificate is verified with (`<data-dir>/xds-ca.pem`): the
   * clients connect over TLS. Absent: plain text (a server run with `--xds-insecure`).
   */
  ca?: string;
  /** Streams opened and syncing at the same time. */
  concurrency: number;
  timeoutMs: number;
}
export type ParentMsg = ConnectMsg | { cmd: 'arm' } | { cmd: 'wait'; t0: number; timeoutMs: number } | { cmd: 'close' };

export type ChildMsg =
  | { type: 'connected'; ms: number; streams: number; failed: number; cpuMs: number }
  | { type: 'armed' }
  | { type: 'converged'; latenciesMs: number[]; missing: number; versions: Record<string, number>; cpuMs: number }
  | { type: 'closed' }
  | { type: 'error'; message: string };

/** Wall-clock milliseconds with sub-millisecond resolution, comparable across processes. */
export const wallNow = (): number => performance.timeOrigin + performance.now();
