// Offline compilation: a policy directory to the Envoy resources of every proxy group, as printable
// JSON (secrets redacted). Used by `signalbox compile` and the golden tests.
import type { PolicyError } from '../errors.js';
import { buildModel } from '../model/model.js';
import { EndpointStore, staticInstances } from '../sources/endpoints.js';
import { loadPolicyDir } from '../sources/files/loader.js';
import { translate } from '../translate/gateway.js';
import { EncodeCache } from '../xds/resources/resource.js';
import { PUSH_ORDER, SHORT_NAME, TypeUrl } from '../xds/resources/type-urls.js';
import { configResources, endpointsResource } from '../xds/translator/index.js';

export type CompiledGroups = Record<string, Record<string, { name: string; version: string; resource: unknown }[]>>;

export async function compileDir(dir: string, sidecarGroups: Iterable<string> = [], opts: { jwtFastPathModule?: boolean } = {}): Promise<{ ok: true; groups: CompiledGroups } | { ok: false; errors: PolicyError[] }> {
  const loaded = await loadPolicyDir(dir);
  if (loaded.errors.length) return { ok: false, errors: loaded.errors };
  const built = await buildModel(loaded.docs, dir);
  if (!built.model) return { ok: false, errors: built.errors };
  const store = new EndpointStore();
  for (const s of built.model.services.values()) store.set(s.name, staticInstances(s), 'static', { quiet: true });
  const enc = new EncodeCache();
  const groups: CompiledGroups = {};
  for (const [group, ir] of translate(built.model, sidecarGroups, { jwtFastPathModule: opts.jwtFastPathModule })) {
    const res = configResources(ir, enc);
    const eds = res.get(TypeUrl.Endpoint)!;
    for (const c of ir.clusters) if (!c.static) eds.set(c.name, endpointsResource(c, store.get(c.service), enc));
    const out: CompiledGroups[string] = {};
    for (const t of PUSH_ORDER) {
      const list = [...res.get(t)!.values()].sort((a, b) => (a.name < b.name ? -1 : 1));
      out[SHORT_NAME[t]] = list.map((r) => ({ name: r.name, version: r.version, resource: r.printable }));
    }
    groups[group] = out;
  }
  return { ok: true, groups };
}
