// The demo mesh, in one place: `npm run demo` runs it as local processes, docker-compose.yml runs
// it as containers sharing one network namespace (so the same loopback addresses and ports of
// policies/ work in both), and test/unit/compose.test.ts checks that the two agree.
import { chownSync, existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { issueTokenCredentials } from '../src/ca/tokens.js';
import { XDS_CA_FILE } from '../src/cli/bootstrap.js';
import { run } from '../src/cli/main.js';

export interface DemoGateway {
  kind: 'gateway';
  gateway: string;
  id: string;
  /** The Gateway listener port (policies/gateway.yaml). */
  listenPort: number;
  envoyAdminPort: number;
}

export interface DemoSidecar {
  kind: 'sidecar';
  service: string;
  instance: string;
  /** The app's port (policies/services.yaml endpoint port). */
  appPort: number;
  /** The sidecar's mTLS port (policies/services.yaml sidecarPort). */
  inboundPort: number;
  outboundPort: number;
  envoyAdminPort: number;
}

export type DemoProxy = DemoGateway | DemoSidecar;

export const DEMO = {
  policies: 'policies',
  xdsPort: 18000,
  adminPort: 18001,
  authzPort: 18002,
  gateway: { kind: 'gateway', gateway: 'public', id: 'public-demo', listenPort: 8080, envoyAdminPort: 9901 } satisfies DemoGateway,
  sidecars: [
    { kind: 'sidecar', service: 'orders', instance: 'orders-v1', appPort: 9001, inboundPort: 21001, outboundPort: 15001, envoyAdminPort: 9911 },
    { kind: 'sidecar', service: 'orders', instance: 'orders-v2', appPort: 9002, inboundPort: 21002, outboundPort: 15002, envoyAdminPort: 9912 },
    { kind: 'sidecar', service: 'catalog', instance: 'catalog', appPort: 9003, inboundPort: 21003, outboundPort: 15003, envoyAdminPort: 9913 },
  ] satisfies DemoSidecar[],
  /** The docker-compose extras (not run by `npm run demo`). */
  consulPort: 8500,
  /** The dashboard for a browser in compose (the admin API there requires a bearer token). */
  dashboardPort: 18081,
  prometheusPort: 9090,
  grafanaPort: 3000,
  otlpGrpcPort: 4317,
  otlpHttpPort: 4318,
} as const;

export function demoProxies(): DemoProxy[] {
  return [DEMO.gateway, ...DEMO.sidecars];
}

export function proxyId(p: DemoProxy): string {
  return p.kind === 'gateway' ? p.id : p.instance;
}

/** The token subject a proxy presents (`signalbox token --gateway NAME | --service NAME`). */
export function tokenArgs(p: DemoProxy): string[] {
  return p.kind === 'gateway' ? ['--gateway', p.gateway] : ['--service', p.service];
}

/** The identity of a proxy's token: `gateway/<name>` or `service/<name>`. */
export function tokenSubject(p: DemoProxy): string {
  return p.kind === 'gateway' ? `gateway/${p.gateway}` : `service/${p.service}`;
}

/**
 * The exact `signalbox bootstrap` arguments of a demo proxy: TLS to the control plane, verified
 * with `xdsCa`, presenting the token certificate in `credentials` (`signalbox token --out DIR`).
 */
export function bootstrapArgs(p: DemoProxy, o: { adminPort?: number; credentials: string; xdsCa: string; xdsAddress?: string }): string[] {
  const common = [
    '--xds-address',
    o.xdsAddress ?? `127.0.0.1:${DEMO.xdsPort}`,
    '--envoy-admin-port',
    String(o.adminPort ?? p.envoyAdminPort),
    '--credentials',
    o.credentials,
    '--xds-ca',
    o.xdsCa,
  ];
  if (p.kind === 'gateway') return ['bootstrap', '--gateway', p.gateway, '--id', p.id, ...common];
  return [
    'bootstrap',
    '--service',
    p.service,
    '--instance',
    p.instance,
    '--app-port',
    String(p.appPort),
    '--inbound-port',
    String(p.inboundPort),
    '--outbound-port',
    String(p.outboundPort),
    ...common,
  ];
}

export interface WriteBootstrapOptions {
  /** Envoy's admin port (default: the proxy's fixed one, which Prometheus scrapes in compose). */
  adminPort?: number;
  /** Hand the files Envoy reads to this user (compose: the Envoy image runs Envoy as uid 101). */
  owner?: { uid: number; gid: number };
}

/**
 * Writes, for one proxy, what `signalbox token ... --out <dir>/<proxy id>` writes (token.crt and
 * token.key, 0600, signed with the token key in `dataDir`), `<dir>/xds-ca.pem` (the CA `signalbox
 * serve` wrote to `dataDir` for proxies to verify the xDS server with; serve must have started)
 * and `<dir>/<proxy id>.yaml` from `signalbox bootstrap --credentials ... --xds-ca ...`, as the
 * compose file's one-shot `bootstrap` service does. Returns the bootstrap YAML.
 */
export async function writeBootstrap(p: DemoProxy, dir: string, dataDir: string, o: WriteBootstrapOptions = {}): Promise<string> {
  mkdirSync(dir, { recursive: true });
  const id = proxyId(p);
  const servedCa = path.join(dataDir, XDS_CA_FILE);
  if (!existsSync(servedCa))
    throw new Error(`${servedCa} is missing: start \`signalbox serve --data-dir ${dataDir}\` first (it writes the CA proxies verify the xDS server with)`);
  const xdsCa = path.join(dir, XDS_CA_FILE);
  writeFileSync(xdsCa, readFileSync(servedCa), { mode: 0o644 });
  const credentials = path.join(dir, id);
  const cred = await issueTokenCredentials(dataDir, tokenSubject(p), undefined, credentials);
  const out = path.join(dir, `${id}.yaml`);
  const args = bootstrapArgs(p, { adminPort: o.adminPort, credentials, xdsCa });
  const code = await run([...args, '--out', out]);
  if (code !== 0) throw new Error(`signalbox ${args.join(' ')} exited ${code}`);
  if (o.owner) for (const f of [credentials, cred.certFile, cred.keyFile, out]) chownSync(f, o.owner.uid, o.owner.gid);
  return readFileSync(out, 'utf8');
}
