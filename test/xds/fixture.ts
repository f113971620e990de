// A real Signalbox (startServer) on a temporary policy directory, with helpers to edit policies,
// read the admin API and metrics, and to fence a stream (a "barrier") so that tests can assert
// that nothing else was pushed without sleeping.
import { mkdirSync, mkdtempSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { startServer, type RunningServer } from '../../src/cli/serve.js';
import { resolveServeConfig } from '../../src/config/settings.js';
import { TypeUrl } from '../../src/xds/resources/type-urls.js';
import { waitFor } from '../helpers/net.js';
import { signTokenSync, subjectOf, xdsCa } from '../helpers/credentials.js';
import {
  AdsClient,
  decodeAny,
  resourceName,
  shortType,
  type DeltaClientStream,
  type DeltaDiscoveryResponse,
  type DiscoveryResponse,
  type SotwClientStream,
} from '../helpers/xds-client.js';

export { TypeUrl };
export const CDS = TypeUrl.Cluster;
export const EDS = TypeUrl.Endpoint;
export const LDS = TypeUrl.Listener;
export const RDS = TypeUrl.Route;
export const SDS = TypeUrl.Secret;

export const SERVICES = `apiVersion: signalbox.dev/v1alpha1
kind: Service
metadata: { name: orders }
spec:
  port: 8080
  endpoints:
    - { address: 127.0.0.1, port: 9001 }
    - { address: 127.0.0.1, port: 9002 }
---
apiVersion: signalbox.dev/v1alpha1
kind: Service
metadata: { name: catalog }
spec:
  port: 8080
  endpoints: [ { address: 127.0.0.1, port: 9003 } ]
---
apiVersion: signalbox.dev/v1alpha1
kind: Service
metadata: { name: catalog2 }
spec:
  port: 8080
  endpoints: [ { address: 127.0.0.2, port: 9004 } ]
---
apiVersion: signalbox.dev/v1alpha1
kind: Service
metadata: { name: status }
spec:
  port: 8080
  endpoints: [ { address: 127.0.0.1, port: 9005 } ]
`;

export interface PolicyKnobs {
  /** Timeout of the /orders rule. */
  ordersTimeout?: string;
  /** Backend of the /catalog rule. */
  catalogBackend?: string;
  /** Whether the gateway has its second listener "ops" (and the route "status" on it). */
  ops?: boolean;
  /** A comment line: changes the file's bytes, not its meaning. */
  comment?: string;
}

/** The gateway "edge" (listeners web:8080 and ops:8081), its routes, in one file. */
export function policies(k: PolicyKnobs = {}): string {
  const ops = k.ops ?? true;
  return `${k.comment ? `# ${k.comment}\n` : ''}apiVersion: signalbox.dev/v1alpha1
kind: Gateway
metadata: { name: edge }
spec:
  listeners:
    - { name: web, port: 8080, protocol: HTTP, hostnames: ["*"] }
${ops ? '    - { name: ops, port: 8081, protocol: HTTP, hostnames: ["*"] }\n' : ''}---
apiVersion: signalbox.dev/v1alpha1
kind: HTTPRoute
metadata: { name: shop }
spec:
  parentRefs: [ { kind: Gateway, name: edge, sectionName: web } ]
  rules:
    - name: orders
      matches: [ { path: { type: PathPrefix, value: /orders } } ]
      backendRefs: [ { name: orders } ]
      timeout: ${k.ordersTimeout ?? '5s'}
    - name: catalog
      matches: [ { path: { type: PathPrefix, value: /catalog } } ]
      backendRefs: [ { name: ${k.catalogBackend ?? 'catalog'} } ]
${
  ops
    ? `---
apiVersion: signalbox.dev/v1alpha1
kind: HTTPRoute
metadata: { name: status }
spec:
  parentRefs: [ { kind: Gateway, name: edge, sectionName: ops } ]
  rules:
    - name: status
      matches: [ { path: { type: PathPrefix, value: /status } } ]
      backendRefs: [ { name: status } ]
`
    : ''
}`;
}

export interface ProxyJson {
  id: string;
  protocol: string;
  state: 'SYNCED' | 'PENDING' | 'NACKED';
  types: Record<
    string,
    { sentVersion?: string; ackedVersion?: string; pushes: number; lastNack?: { version: string; message: string; resources: string[]; sources: string[] } }
  >;
}

export interface Signalbox {
  server: RunningServer;
  dir: string;
  /** The control plane's data directory (its CA, token key, the xDS server's CA file). */
  dataDir: string;
  target: string;
  ads: AdsClient;
  /** Rewrites a policy file atomically and waits until the reload it causes has finished. */
  writePolicy(file: string, text: string): Promise<void>;
  get<T = any>(p: string): Promise<T>;
  metricsText(): Promise<string>;
  metric(name: string, labels?: Record<string, string>): Promise<number>;
  proxy(id: string): Promise<ProxyJson | undefined>;
  stop(): Promise<void>;
}

/** Starts Signalbox (xDS and admin on ephemeral loopback ports) on a fresh policy directory. */
export async function startSignalbox(
  files: Record<string, string> = { 'services.yaml': SERVICES, 'policies.yaml': policies() },
  flags: Record<string, string> = {},
): Promise<Signalbox> {
  const root = mkdtempSync(path.join(os.tmpdir(), 'signalbox-xds-'));
  const dir = path.join(root, 'policies');
  const dataDir = path.join(root, 'data');
  mkdirSync(dir);
  mkdirSync(dataDir);
  for (const [f, text] of Object.entries(files)) writeFileSync(path.join(dir, f), text);
  const server = await startServer(
    resolveServeConfig(
      {
        policies: dir,
        'data-dir': dataDir,
        'xds-address': '127.0.0.1',
        'xds-port': '0',
        'admin-address': '127.0.0.1',
        'admin-port': '0',
        'log-level': process.env.SIGNALBOX_TEST_LOG_LEVEL ?? 'silent',
        'watch-debounce-ms': '20',
        ...flags,
      },
      {},
    ),
  );
  if (!server.pipeline.ready) throw new Error(`test policies are invalid: ${JSON.stringify(server.pipeline.errors)}`);
  let reloads = 0;
  server.pipeline.on('applied', () => reloads++);
  server.pipeline.on('rejected', () => reloads++);
  const base = `http://127.0.0.1:${server.adminPort}`;
  const target = `127.0.0.1:${server.xdsPort}`;
  // Every stream presents a token for the node it claims, over TLS, as a proxy would.
  const ads = new AdsClient(target, {}, { ca: xdsCa(dataDir), token: (node) => tokenFor(dataDir, node) });
  let tmp = 0;
  const get = async <T>(p: string): Promise<T> => {
    const res = await fetch(base + p);
    if (!res.ok) throw new Error(`GET ${p}: ${res.status} ${await res.text()}`);
    return (await res.json()) as T;
  };
  const metricsText = async () => (await fetch(`${base}/metrics`)).text();
  return {
    server,
    dir,
    dataDir,
    target,
    ads,
    async writePolicy(file, text) {
      const before = reloads;
      const t = path.join(dir, `.tmp-${++tmp}`);
      writeFileSync(t, text);
      renameSync(t, path.join(dir, file)); // atomic: a reload never reads half a file
      await waitFor(() => reloads > before, { timeoutMs: 10_000, what: `the reload after rewriting ${file}` });
      if (server.pipeline.errors.length) throw new Error(`edited policies were rejected: ${JSON.stringify(server.pipeline.errors)}`);
    },
    get,
    metricsText,
    async metric(name, labels = {}) {
      return metricValue(await metricsText(), name, labels);
    },
    async proxy(id) {
      const { proxies } = await get<{ proxies: ProxyJson[] }>('/api/proxies');
      return proxies.find((p) => p.id === id);
    },
    async stop() {
      ads.close();
      await server.stop();
      // (A save of the last good configuration may still be finishing in the data directory.)
      rmSync(root, { recursive: true, force: true, maxRetries: 5, retryDelay: 50 });
    },
  };
}

/** A token for the identity a node claims (none for a node that claims none). */
export function tokenFor(dataDir: string, node: Parameters<typeof subjectOf>[0]): string | undefined {
  const subject = subjectOf(node);
  return subject ? signTokenSync(dataDir, subject) : undefined;
}

/** The value of one Prometheus sample (0 when the series does not exist yet). */
export function metricValue(text: string, name: string, labels: Record<string, string> = {}): number {
  let total = 0;
  for (const line of text.split('\n')) {
    if (!line.startsWith(name)) continue;
    const m = /^([a-zA-Z_:][\w:]*)(\{([^}]*)\})?\s+(\S+)/.exec(line);
    if (!m || m[1] !== name) continue;
    const have: Record<string, string> = {};
    for (const kv of (m[3] ?? '').matchAll(/(\w+)="((?:[^"\\]|\\.)*)"/g)) have[kv[1]!] = kv[2]!;
    if (Object.entries(labels).every(([k, v]) => have[k] === v)) total += Number(m[4]);
  }
  return total;
}

/**
 * Fences a stream: waits until the client has received, per type, exactly as many responses as
 * the server says (in /api/proxies) it sent on that stream. The server counts a push when it
 * writes it, synchronously with the request or reload that caused it, so once a reload has
 * finished (or a request has visibly been handled) this tells "everything pushed has arrived"
 * without sleeping. The responses received so far are then consumed (dropped from the backlog
 * that next() reads; `history` keeps them). Returns the server's view of the proxy.
 */
export async function fence(sb: Signalbox, s: SotwClientStream | DeltaClientStream, id: string): Promise<ProxyJson> {
  let last: ProxyJson | undefined;
  let counts = '';
  await waitFor(
    async () => {
      last = await sb.proxy(id);
      if (!last) return false;
      const got = new Map<string, number>();
      for (const r of s.history as { type_url: string }[]) got.set(shortType(r.type_url), (got.get(shortType(r.type_url)) ?? 0) + 1);
      counts = JSON.stringify({ server: Object.fromEntries(Object.entries(last.types).map(([k, v]) => [k, v.pushes])), client: Object.fromEntries(got) });
      const types = new Set([...Object.keys(last.types), ...got.keys()]);
      return [...types].every((t) => (last!.types[t]?.pushes ?? 0) === (got.get(t) ?? 0));
    },
    { timeoutMs: 10_000, what: `the responses of ${id} to arrive (${counts})` },
  );
  s.drain();
  return last!;
}

/** Names of the resources of a SotW response (decoded from field 1). */
export function namesOf(r: DiscoveryResponse): string[] {
  return r.resources.map(resourceName).sort();
}

/** Decoded resources of a SotW response, by name. */
export function byName(r: DiscoveryResponse): Map<string, any> {
  return new Map(r.resources.map((a) => [resourceName(a), decodeAny(a)]));
}

/** Decoded resources of a Delta response, by name. */
export function deltaByName(r: DeltaDiscoveryResponse): Map<string, any> {
  return new Map(r.resources.map((x) => [x.name, x.resource ? decodeAny(x.resource) : undefined]));
}

/** The route (decoded RouteConfiguration JSON) whose prefix match is `prefix`. */
export function routeByPrefix(rc: any, prefix: string): any {
  for (const vh of rc.virtual_hosts ?? [])
    for (const r of vh.routes ?? []) if (r.match?.prefix === prefix || r.match?.path_separated_prefix === prefix) return r;
  return undefined;
}

/** Seconds of a decoded google.protobuf.Duration (JSON text "5s" or {seconds, nanos}). */
export function seconds(d: unknown): number | undefined {
  if (d === undefined || d === null) return undefined;
  if (typeof d === 'string') return Number(d.replace(/s$/, ''));
  const o = d as { seconds?: number | string; nanos?: number };
  return Number(o.seconds ?? 0) + (o.nanos ?? 0) / 1e9;
}

/** The upstream endpoints (address:port) of a decoded ClusterLoadAssignment. */
export function endpointsOf(cla: any): string[] {
  return (cla.endpoints ?? [])
    .flatMap((l: any) => l.lb_endpoints ?? [])
    .map((e: any) => `${e.endpoint.address.socket_address.address}:${e.endpoint.address.socket_address.port_value}`)
    .sort();
}

/** Waits (polling the admin API) until a proxy has ACKed everything it was sent. */
export async function waitSynced(sb: Signalbox, id: string, types: string[] = ['cluster', 'endpoint', 'listener', 'route']): Promise<ProxyJson> {
  let last: ProxyJson | undefined;
  await waitFor(
    async () => {
      last = await sb.proxy(id);
      return !!last && types.every((t) => last!.types[t]?.sentVersion !== undefined && last!.types[t]!.ackedVersion === last!.types[t]!.sentVersion);
    },
    { timeoutMs: 10_000, what: `proxy ${id} to ACK ${types.join(', ')} (last: ${JSON.stringify(last?.types)})` },
  );
  return last!;
}
