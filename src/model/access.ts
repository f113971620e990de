// AccessPolicy: which identities may call a Service. Several policies on one Service are merged;
// two that disagree on `default` conflict.
import type { AccessPolicy } from '../api/v1alpha1/index.js';
import { ErrorCode } from '../errors.js';
import type { LoadedDoc, SourceRef } from '../api/documents.js';
import { didYouMean } from '../util/did-you-mean.js';

export interface AccessRuleModel {
  from: { kind: 'service' | 'gateway'; name: string }[];
  action: 'Allow' | 'Deny';
  to?: NonNullable<AccessPolicy['spec']['rules'][number]['to']>;
  source: SourceRef;
}

export interface AccessModel {
  service: string;
  default: 'Allow' | 'Deny';
  rules: AccessRuleModel[];
  sources: SourceRef[];
}

type Report = (d: LoadedDoc, path: (string | number)[], code: ErrorCode, message: string) => void;

export function resolveAccessPolicies(
  docs: LoadedDoc<'AccessPolicy'>[],
  services: ReadonlySet<string>,
  gateways: ReadonlySet<string>,
  err: Report,
): Map<string, AccessModel> {
  const out = new Map<string, AccessModel>();
  const firstDefault = new Map<string, LoadedDoc>();
  for (const d of docs) {
    const spec = (d.value as AccessPolicy).spec;
    const target = spec.targetRef.name;
    if (!services.has(target)) {
      err(d, ['spec', 'targetRef', 'name'], ErrorCode.UNKNOWN_REFERENCE, `unknown Service "${target}"${didYouMean(target, services)}`);
      continue;
    }
    for (const [ri, r] of spec.rules.entries()) {
      for (const [fi, f] of r.from.entries()) {
        if (f.service && !services.has(f.service))
          err(d, ['spec', 'rules', ri, 'from', fi, 'service'], ErrorCode.UNKNOWN_REFERENCE, `unknown Service "${f.service}"${didYouMean(f.service, services)}`);
        if (f.gateway && !gateways.has(f.gateway))
          err(d, ['spec', 'rules', ri, 'from', fi, 'gateway'], ErrorCode.UNKNOWN_REFERENCE, `unknown Gateway "${f.gateway}"${didYouMean(f.gateway, gateways)}`);
      }
    }
    const existing = out.get(target);
    if (existing && existing.default !== spec.default) {
      const other = firstDefault.get(target)!;
      err(
        d,
        ['spec', 'default'],
        ErrorCode.CONFLICT,
        `conflicts with AccessPolicy "${other.name}" in ${other.source.file}#${other.source.doc}, which sets default ${existing.default} for Service "${target}"`,
      );
      continue;
    }
    const model = existing ?? { service: target, default: spec.default, rules: [], sources: [] };
    if (!existing) firstDefault.set(target, d);
    model.sources.push(d.source);
    for (const r of spec.rules) {
      model.rules.push({
        from: r.from.map((f) => (f.service ? { kind: 'service' as const, name: f.service } : { kind: 'gateway' as const, name: f.gateway! })),
        action: r.action,
        to: r.to,
        source: d.source,
      });
    }
    out.set(target, model);
  }
  return out;
}

/** Whether `caller` could ever be allowed to reach `service` (decides which clusters a sidecar gets). */
export function mayReach(access: ReadonlyMap<string, AccessModel>, caller: { kind: 'service' | 'gateway'; name: string }, service: string): boolean {
  const a = access.get(service);
  if (!a || a.default === 'Allow') return true;
  return a.rules.some((r) => r.action === 'Allow' && r.from.some((f) => f.kind === caller.kind && f.name === caller.name));
}
