// Generates the benchmark's policy directory: S services with static endpoints on 127.0.0.1, one
// HTTPRoute per service with R/S rules each (R routes in all), and G gateways. Every route attaches
// to the first gateway; every fourth service's route also to the others, so a change to service 0's
// route reaches every gateway (and so every simulated client).
import { mkdirSync, writeFileSync } from 'node:fs';
import path from 'node:path';

export interface PolicyShape {
  services: number;
  routes: number;
  gateways: number;
  /** Distinct hostnames the routes are spread over (virtual hosts per route configuration). */
  hostnames: number;
}

export const DEFAULT_SHAPE: PolicyShape = { services: 200, routes: 1000, gateways: 2, hostnames: 20 };

const pad = (i: number) => String(i).padStart(3, '0');
export const svcName = (i: number) => `svc-${pad(i)}`;
export const gatewayName = (g: number) => (g === 0 ? 'edge' : `partner-${g}`);

function service(i: number): string {
  const base = 20000 + i * 3;
  return `apiVersion: signalbox.dev/v1alpha1
kind: Service
metadata: { name: ${svcName(i)} }
spec:
  protocol: http
  port: 8080
  endpoints:
    - { address: 127.0.0.1, port: ${base}, labels: { version: v1 } }
    - { address: 127.0.0.1, port: ${base + 1}, labels: { version: v1 } }
    - { address: 127.0.0.1, port: ${base + 2}, labels: { version: v2 } }
  subsets:
    - { name: v1, labels: { version: v1 } }
    - { name: v2, labels: { version: v2 } }
`;
}

/** One rule of a route; `k` picks one of five shapes so the config exercises most features. */
function rule(i: number, k: number, shape: PolicyShape, timeoutMs: number): string {
  const s = svcName(i);
  const other = svcName((i + 1) % shape.services);
  switch (k % 5) {
    case 0:
      return `    - name: canary-${k}
      matches:
        - path: { type: PathPrefix, value: /${s}/r${k} }
          headers: [ { name: x-canary, type: Exact, value: "true" } ]
      backendRefs: [ { name: ${s}, subset: v2 } ]
`;
    case 1:
      return `    - name: split-${k}
      matches:
        - path: { type: PathPrefix, value: /${s}/r${k} }
      backendRefs:
        - { name: ${s}, subset: v1, weight: 90 }
        - { name: ${s}, subset: v2, weight: 10 }
      timeout: ${timeoutMs}ms
      retries: { attempts: 2, perTryTimeout: 1s, retryOn: [connect-failure, reset, 5xx] }
      filters:
        - { type: ResponseHeaderModifier, responseHeaderModifier: { add: [ { name: x-served-by, value: signalbox } ] } }
`;
    case 2:
      return `    - name: health-${k}
      matches:
        - path: { type: Exact, value: /${s}/r${k}/health }
          method: GET
      backendRefs: [ { name: ${s} } ]
`;
    case 3:
      return `    - name: items-${k}
      matches:
        - path: { type: RegularExpression, value: "/${s}/r${k}/items/[0-9]+" }
      backendRefs: [ { name: ${s}, subset: v1 } ]
      filters:
        - { type: RequestHeaderModifier, requestHeaderModifier: { set: [ { name: x-env, value: bench } ], remove: [x-debug] } }
`;
    default:
      return `    - name: api-${k}
      matches:
        - path: { type: PathPrefix, value: /${s}/r${k}/api }
          queryParams: [ { name: tenant, type: Present } ]
      backendRefs: [ { name: ${other} } ]
      timeout: 3s
      filters:
        - { type: URLRewrite, urlRewrite: { path: { replacePrefixMatch: /api } } }
`;
  }
}

/** The HTTPRoute file of service i; `timeoutMs` is the timeout of its first weighted rule (what the benchmark edits). */
export function routeFile(i: number, shape: PolicyShape, timeoutMs = 5000): string {
  const perService = Math.floor(shape.routes / shape.services) + (i < shape.routes % shape.services ? 1 : 0);
  const parents = [gatewayName(0)];
  if (i % 4 === 0) for (let g = 1; g < shape.gateways; g++) parents.push(gatewayName(g));
  const host = `api-${i % shape.hostnames}.example.com`;
  let out = `apiVersion: signalbox.dev/v1alpha1
kind: HTTPRoute
metadata: { name: ${svcName(i)} }
spec:
  parentRefs: [ ${parents.map((p) => `{ kind: Gateway, name: ${p} }`).join(', ')} ]
  hostnames: [ ${host} ]
  rules:
`;
  for (let k = 0; k < perService; k++) out += rule(i, k, shape, timeoutMs);
  return out;
}

function gateway(g: number): string {
  return `apiVersion: signalbox.dev/v1alpha1
kind: Gateway
metadata: { name: ${gatewayName(g)} }
spec:
  listeners:
    - { name: http, port: ${8080 + g}, protocol: HTTP, hostnames: ["*.example.com"] }
`;
}

/** Writes the directory; returns the path of the file the benchmark edits (service 0's route). */
export function writePolicyDir(dir: string, shape: PolicyShape): { changeFile: string } {
  mkdirSync(path.join(dir, 'services'), { recursive: true });
  mkdirSync(path.join(dir, 'routes'), { recursive: true });
  writeFileSync(
    path.join(dir, 'mesh.yaml'),
    `apiVersion: signalbox.dev/v1alpha1
kind: Mesh
metadata: { name: default }
spec:
  defaults:
    timeout: 15s
    retries: { attempts: 1, retryOn: [connect-failure, reset] }
`,
  );
  for (let g = 0; g < shape.gateways; g++) writeFileSync(path.join(dir, `gateway-${gatewayName(g)}.yaml`), gateway(g));
  for (let i = 0; i < shape.services; i++) {
    writeFileSync(path.join(dir, 'services', `${svcName(i)}.yaml`), service(i));
    writeFileSync(path.join(dir, 'routes', `${svcName(i)}.yaml`), routeFile(i, shape));
  }
  return { changeFile: path.join(dir, 'routes', `${svcName(0)}.yaml`) };
}
