// Pure functions: Consul health answers -> Signalbox instances. Nothing here does I/O, so every
// rule is unit-tested directly.
//
//   Consul                                   Instance
//   Node.Node + "/" + Service.ID          -> id
//   Service.Address (else Node.Address)   -> address (must be an IP literal)
//   Service.Port                          -> port (1..65535)
//   Service.Tags  "canary"                -> labels { canary: "true" }
//                 "version=v2"            -> labels { version: "v2" }
//   Service.Meta  { version: v2 }         -> labels { version: "v2" }  (Meta wins over tags)
//   Checks (node's and the service's):    -> health
//     any _node_maintenance / _service_maintenance:<id> check -> DRAINING
//     else any critical (or unknown status)                   -> UNHEALTHY
//     else any warning                                        -> DEGRADED (or HEALTHY, option)
//     else                                                    -> HEALTHY
//   zone / region from Service.Meta, else Node.Meta (`zone`, `region`,
//   `topology.kubernetes.io/zone`, `topology.kubernetes.io/region`)
//                                          -> locality { region, zone, subZone: Node.Node }
//   a connect-proxy registration (Kind "connect-proxy") whose Proxy.DestinationServiceID is the
//   instance's Service.ID on the same node -> sidecar { address, port }; the instance's health is
//   the worse of its own and its sidecar's.
import { isIP } from 'node:net';
import type { Health, Instance } from '../../ir/types.js';
import { ConsulError } from './client.js';

export type SkipReason = 'invalid_entry' | 'invalid_address' | 'invalid_port' | 'duplicate_id' | 'duplicate_endpoint' | 'invalid_sidecar';

export interface Skipped {
  reason: SkipReason;
  /** Which registration (node/service id when known) and why, for logs. */
  detail: string;
}

export type WarningAs = 'DEGRADED' | 'HEALTHY';

export interface MapOptions {
  warningAs?: WarningAs;
}

/** One instance as Consul described it, before tag filtering and sidecar matching. */
export interface ConsulInstance extends Instance {
  node: string;
  serviceId: string;
  tags: string[];
}

export interface SidecarInfo {
  node: string;
  proxyId: string;
  destinationId: string;
  address: string;
  port: number;
  health: Health;
}

const RANK: Record<Health, number> = { HEALTHY: 0, UNKNOWN: 1, DEGRADED: 2, DRAINING: 3, UNHEALTHY: 4 };

export function worstHealth(a: Health, b: Health): Health {
  return RANK[a] >= RANK[b] ? a : b;
}

type Obj = Record<string, unknown>;
const isObj = (v: unknown): v is Obj => typeof v === 'object' && v !== null && !Array.isArray(v);
const str = (v: unknown): string | undefined => (typeof v === 'string' ? v : undefined);

export function isMaintenanceCheck(checkId: string): boolean {
  return checkId === '_node_maintenance' || checkId.startsWith('_service_maintenance:');
}

/** Health of an instance from all the checks that apply to it (its node's and its own). */
export function healthOf(checks: unknown, opts: MapOptions = {}): Health {
  let maintenance = false;
  let critical = false;
  let warning = false;
  for (const c of Array.isArray(checks) ? checks : []) {
    if (!isObj(c)) {
      critical = true; // a check we cannot read is not a passing check
      continue;
    }
    const id = str(c.CheckID) ?? '';
    const status = str(c.Status);
    if (isMaintenanceCheck(id) || status === 'maintenance') maintenance = true;
    else if (status === 'passing') continue;
    else if (status === 'warning') warning = true;
    else critical = true; // critical, or a status this version does not know
  }
  if (maintenance) return 'DRAINING';
  if (critical) return 'UNHEALTHY';
  if (warning) return opts.warningAs ?? 'DEGRADED';
  return 'HEALTHY';
}

/** Tags and Meta as labels: `k=v` tags give `k: v`, bare tags give `tag: "true"`; Meta wins. */
export function labelsOf(tags: string[], meta: unknown): Record<string, string> {
  const out: Record<string, string> = {};
  for (const t of tags) {
    const eq = t.indexOf('=');
    if (eq > 0) out[t.slice(0, eq)] = t.slice(eq + 1);
    else if (t !== '') out[t] = 'true';
  }
  if (isObj(meta)) for (const [k, v] of Object.entries(meta)) if (typeof v === 'string' && k !== '') out[k] = v;
  return out;
}

function localityOf(node: Obj, service: Obj): Instance['locality'] | undefined {
  const pick = (keys: string[]) => {
    for (const m of [service.Meta, node.Meta]) {
      if (!isObj(m)) continue;
      for (const k of keys) if (typeof m[k] === 'string' && m[k] !== '') return m[k] as string;
    }
    return undefined;
  };
  const zone = pick(['zone', 'topology.kubernetes.io/zone']);
  const region = pick(['region', 'topology.kubernetes.io/region']);
  if (!zone && !region) return undefined;
  const nodeName = str(node.Node);
  return { ...(region ? { region } : {}), ...(zone ? { zone } : {}), ...(nodeName ? { subZone: nodeName } : {}) };
}

function validPort(p: unknown): p is number {
  return typeof p === 'number' && Number.isInteger(p) && p >= 1 && p <= 65535;
}

function addressOf(node: Obj, service: Obj): string {
  const a = str(service.Address);
  return a && a !== '' ? a : (str(node.Address) ?? '');
}

function entryName(node: Obj | undefined, service: Obj | undefined): string {
  return `${str(node?.Node) ?? '?'}/${str(service?.ID) ?? '?'}`;
}

/** The top of a health answer must be a JSON array; anything else makes the whole answer unusable. */
export function assertArray(body: unknown, what: string): unknown[] {
  if (!Array.isArray(body)) throw new ConsulError('malformed', `${what}: expected a JSON array, got ${body === null ? 'null' : typeof body}`);
  return body;
}

/** /v1/health/service/<name> -> instances; bad entries are skipped (and reported), never fatal. */
export function mapHealthEntries(body: unknown, opts: MapOptions = {}): { instances: ConsulInstance[]; skipped: Skipped[] } {
  const entries = assertArray(body, 'health answer');
  const skipped: Skipped[] = [];
  const candidates: ConsulInstance[] = [];
  for (const e of entries) {
    const node = isObj(e) && isObj(e.Node) ? e.Node : undefined;
    const service = isObj(e) && isObj(e.Service) ? e.Service : undefined;
    const nodeName = str(node?.Node);
    const serviceId = str(service?.ID);
    if (!node || !service || !nodeName || !serviceId) {
      skipped.push({ reason: 'invalid_entry', detail: `${entryName(node, service)}: entry lacks Node.Node or Service.ID` });
      continue;
    }
    const address = addressOf(node, service);
    if (isIP(address) === 0) {
      skipped.push({ reason: 'invalid_address', detail: `${nodeName}/${serviceId}: address ${JSON.stringify(address)} is not an IP address` });
      continue;
    }
    if (!validPort(service.Port)) {
      skipped.push({ reason: 'invalid_port', detail: `${nodeName}/${serviceId}: port ${JSON.stringify(service.Port)} is not a port from 1 to 65535` });
      continue;
    }
    const tags = Array.isArray(service.Tags) ? service.Tags.filter((t): t is string => typeof t === 'string') : [];
    const locality = localityOf(node, service);
    candidates.push({
      id: `${nodeName}/${serviceId}`,
      address,
      port: service.Port,
      labels: labelsOf(tags, service.Meta),
      health: healthOf(isObj(e) ? e.Checks : undefined, opts),
      ...(locality ? { locality } : {}),
      node: nodeName,
      serviceId,
      tags,
    });
  }
  return dedupe(candidates, skipped);
}

/** Duplicate ids (one registration listed twice) and duplicate address:port pairs keep the first. */
function dedupe(list: ConsulInstance[], skipped: Skipped[]): { instances: ConsulInstance[]; skipped: Skipped[] } {
  const ids = new Set<string>();
  const endpoints = new Map<string, string>();
  const instances: ConsulInstance[] = [];
  for (const i of list) {
    if (ids.has(i.id)) {
      skipped.push({ reason: 'duplicate_id', detail: `${i.id}: listed more than once; the first entry is kept` });
      continue;
    }
    ids.add(i.id);
    const ep = `${i.address}:${i.port}`;
    const first = endpoints.get(ep);
    if (first !== undefined) {
      skipped.push({ reason: 'duplicate_endpoint', detail: `${i.id}: ${ep} is already instance ${first}` });
      continue;
    }
    endpoints.set(ep, i.id);
    instances.push(i);
  }
  return { instances, skipped };
}

/** /v1/health/connect/<name> -> the connect-proxy sidecars of the service's instances. */
export function mapConnectEntries(body: unknown, destination: string, opts: MapOptions = {}): { sidecars: SidecarInfo[]; skipped: Skipped[] } {
  const entries = assertArray(body, 'connect answer');
  const sidecars: SidecarInfo[] = [];
  const skipped: Skipped[] = [];
  for (const e of entries) {
    const node = isObj(e) && isObj(e.Node) ? e.Node : undefined;
    const service = isObj(e) && isObj(e.Service) ? e.Service : undefined;
    if (!node || !service) {
      skipped.push({ reason: 'invalid_sidecar', detail: `${entryName(node, service)}: entry lacks Node or Service` });
      continue;
    }
    if (service.Kind !== 'connect-proxy') continue; // connect-native instances are the service itself
    const proxy = isObj(service.Proxy) ? service.Proxy : undefined;
    const destName = str(proxy?.DestinationServiceName);
    const destId = str(proxy?.DestinationServiceID) || destName;
    const nodeName = str(node.Node);
    const proxyId = str(service.ID);
    if (!nodeName || !proxyId || !destId) {
      skipped.push({
        reason: 'invalid_sidecar',
        detail: `${entryName(node, service)}: connect-proxy without Node.Node, Service.ID or Proxy.DestinationServiceID`,
      });
      continue;
    }
    if (destName !== undefined && destName !== destination) continue;
    const address = addressOf(node, service);
    if (isIP(address) === 0 || !validPort(service.Port)) {
      skipped.push({
        reason: 'invalid_sidecar',
        detail: `${nodeName}/${proxyId}: sidecar address ${JSON.stringify(address)} port ${JSON.stringify(service.Port)} is not usable`,
      });
      continue;
    }
    sidecars.push({
      node: nodeName,
      proxyId,
      destinationId: destId,
      address,
      port: service.Port,
      health: healthOf(e && isObj(e) ? e.Checks : undefined, opts),
    });
  }
  return { sidecars, skipped };
}

/**
 * The instances one policy Service gets: those carrying every wanted tag, each joined with its
 * sidecar (when one is registered on the same node for that instance).
 */
export function selectInstances(instances: readonly ConsulInstance[], sidecars: readonly SidecarInfo[], tags: readonly string[] = []): Instance[] {
  const byDest = new Map<string, SidecarInfo>();
  // Several proxies for one instance: the healthiest, then the smallest proxy id, deterministically.
  const sorted = [...sidecars].sort((a, b) => RANK[a.health] - RANK[b.health] || (a.proxyId < b.proxyId ? -1 : a.proxyId > b.proxyId ? 1 : 0));
  for (const s of sorted) {
    const key = `${s.node}/${s.destinationId}`;
    if (!byDest.has(key)) byDest.set(key, s);
  }
  const out: Instance[] = [];
  for (const i of instances) {
    if (!tags.every((t) => i.tags.includes(t))) continue;
    const sc = byDest.get(i.id);
    const inst: Instance = { id: i.id, address: i.address, port: i.port, labels: { ...i.labels }, health: i.health };
    if (i.locality) inst.locality = { ...i.locality };
    if (sc) {
      inst.sidecar = { address: sc.address, port: sc.port };
      inst.health = worstHealth(i.health, sc.health);
    }
    out.push(inst);
  }
  return out.sort((a, b) => (a.id < b.id ? -1 : a.id > b.id ? 1 : 0));
}
