// The intermediate representation: plain, serialisable data describing what each proxy should do.
// It holds no Envoy types; the xDS translator turns it into Envoy resources.
import type { SourceRef } from '../model/model.js';

export type Health = 'HEALTHY' | 'UNHEALTHY' | 'DRAINING' | 'DEGRADED' | 'UNKNOWN';

/** One reachable instance of a service, from static endpoints or a discovery source. */
export interface Instance {
  id: string;
  address: string;
  port: number;
  labels: Record<string, string>;
  health: Health;
  /** Where the instance's sidecar accepts mTLS, when it has one. */
  sidecar?: { address: string; port: number };
  locality?: { region?: string; zone?: string; subZone?: string };
}

export interface IRStringMatch {
  type: 'Exact' | 'RegularExpression' | 'Present';
  name: string;
  value?: string;
}

export interface IRRouteMatch {
  path: { type: 'Exact' | 'PathPrefix' | 'RegularExpression'; value: string };
  method?: string;
  headers: IRStringMatch[];
  queryParams: IRStringMatch[];
}

export interface IRRetry {
  attempts: number;
  perTryTimeoutMs?: number;
  retryOn: string[];
  retriableStatusCodes?: number[];
  backoff?: { baseIntervalMs: number; maxIntervalMs?: number };
}

export interface IRHeaderMods {
  set: { name: string; value: string }[];
  add: { name: string; value: string }[];
  remove: string[];
}

export interface IRFault {
  delay?: { fixedMs: number; percent: number };
  abort?: { httpStatus: number; percent: number };
}

export interface IRForward {
  kind: 'forward';
  backends: { cluster: string; weight: number }[];
  timeoutMs: number;
  retry?: IRRetry;
  rewrite?: { prefix?: string; fullPath?: string; hostname?: string };
}

export interface IRRedirect {
  kind: 'redirect';
  scheme?: 'http' | 'https';
  hostname?: string;
  port?: number;
  path?: { prefix?: string; fullPath?: string };
  statusCode: 301 | 302 | 303 | 307 | 308;
}

export interface IRRoute {
  /** `<HTTPRoute>/<rule name or rule-N>/<match-N>`: stable and readable in stats and dumps. */
  name: string;
  match: IRRouteMatch;
  action: IRForward | IRRedirect;
  requestHeaders?: IRHeaderMods;
  responseHeaders?: IRHeaderMods;
  fault?: IRFault;
  source: SourceRef;
}

export interface IRVirtualHost {
  name: string;
  domains: string[];
  routes: IRRoute[];
}

export interface IRHttpListener {
  name: string;
  address: string;
  port: number;
  tls?: { secretName: string };
  routeConfig: { name: string; virtualHosts: IRVirtualHost[] };
  /** HTTP filters the listener needs besides the router, by name from the filter order table. */
  httpFilters: string[];
  source: SourceRef;
}

export interface IRCluster {
  name: string;
  service: string;
  subset?: { name: string; labels: Record<string, string> };
  protocol: 'http' | 'http2' | 'grpc' | 'tcp';
  connectTimeoutMs: number;
  source: SourceRef;
}

export interface IRSecret {
  name: string;
  certificatePem: string;
  privateKeyPem: string;
  source: SourceRef;
}

/** Everything one group of identical proxies (e.g. every Envoy of one gateway) receives. */
export interface IRProxyConfig {
  group: string;
  listeners: IRHttpListener[];
  clusters: IRCluster[];
  secrets: IRSecret[];
}

/** Proxy groups are keyed `gateway/<name>` (and later `sidecar/<service>`). */
export function gatewayGroup(name: string): string {
  return `gateway/${name}`;
}
