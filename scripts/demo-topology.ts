// The demo mesh, in one place: `npm run demo` runs it as local processes, docker-compose.yml runs
// it as containers sharing one network namespace (so the same loopback addresses and ports of
// policies/ work in both), and test/unit/compose.test.ts checks that the two agree.
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { issueToken } from '../src/ca/tokens.js';
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

/** The exact `signalbox bootstrap` arguments of a demo proxy. */
export function bootstrapArgs(p: DemoProxy, o: { adminPort?: number; tokenFile: string; xdsAddress?: string }): string[] {
  const common = ['--xds-address', o.xdsAddress ?? `127.0.0.1:${DEMO.xdsPort}`, '--admin-port', String(o.adminPort ?? p.envoyAdminPort), '--token-file', o.tokenFile];
  if (p.kind === 'gateway') return ['bootstrap', '--gateway', p.gateway, '--id', p.id, ...common];
  return ['bootstrap', '--service', p.service, '--instance', p.instance, '--app-port', String(p.appPort), '--inbound-port', String(p.inboundPort), '--outbound-port', String(p.outboundPort), ...common];
}

/**
 * Writes `<dir>/<proxy id>.token` and `<dir>/<proxy id>.yaml` for one proxy, running the same
 * `signalbox token` (signed with the key in `dataDir`) and `signalbox bootstrap` commands as the
 * compose file. Returns the bootstrap YAML.
 */
export async function writeBootstrap(p: DemoProxy, dir: string, dataDir: string, adminPort?: number): Promise<string> {
  mkdirSync(dir, { recursive: true });
  const id = proxyId(p);
  const tokenFile = path.join(dir, `${id}.token`);
  const subject = p.kind === 'gateway' ? `gateway/${p.gateway}` : `service/${p.service}`;
  writeFileSync(tokenFile, (await issueToken(dataDir, subject)).token + '\n', { mode: 0o600 });
  const out = path.join(dir, `${id}.yaml`);
  const code = await run([...bootstrapArgs(p, { adminPort, tokenFile }), '--out', out]);
  if (code !== 0) throw new Error(`signalbox ${bootstrapArgs(p, { adminPort, tokenFile }).join(' ')} exited ${code}`);
  return readFileSync(out, 'utf8');
}
