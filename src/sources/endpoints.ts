// Where the instances of each service come from: static endpoints in policy files, or a discovery
// source such as Consul. The store only keeps the latest set per service and says what changed.
import { EventEmitter } from 'node:events';
import type { Instance } from '../ir/types.js';
import type { ServiceModel } from '../model/model.js';

function sameInstances(a: readonly Instance[], b: readonly Instance[]): boolean {
  return a.length === b.length && JSON.stringify(a) === JSON.stringify(b);
}

export function sortInstances(list: Instance[]): Instance[] {
  return list.sort((a, b) => (a.id < b.id ? -1 : a.id > b.id ? 1 : 0));
}

export class EndpointStore extends EventEmitter<{ change: [string[], string] }> {
  private readonly sets = new Map<string, readonly Instance[]>();

  get(service: string): readonly Instance[] {
    return this.sets.get(service) ?? [];
  }

  has(service: string): boolean {
    return this.sets.has(service);
  }

  /** Replaces a service's instances. Returns whether anything changed; emits `change` if so. */
  set(service: string, instances: Instance[], source: string, opts: { quiet?: boolean } = {}): boolean {
    const next = sortInstances([...instances]);
    const prev = this.sets.get(service);
    if (prev && sameInstances(prev, next)) return false;
    this.sets.set(service, next);
    if (!opts.quiet) this.emit('change', [service], source);
    return true;
  }

  delete(service: string): void {
    this.sets.delete(service);
  }

  services(): string[] {
    return [...this.sets.keys()].sort();
  }
}

/** Instances of a Service given by static `endpoints` in its policy file. */
export function staticInstances(svc: ServiceModel): Instance[] {
  return (svc.endpoints ?? []).map((e) => ({
    id: `${e.address}:${e.port}`,
    address: e.address,
    port: e.port,
    labels: { ...(e.labels ?? {}) },
    health: 'HEALTHY' as const,
    ...(e.sidecarPort ? { sidecar: { address: e.address, port: e.sidecarPort } } : {}),
  }));
}
