// Envoy's HTTP RBAC filter, from an inbound listener's access rules: one DENY filter for the deny
// rules, then one ALLOW filter listing who may call when the default is Deny. Peers are matched on
// the SPIFFE ID (URI SAN) of their verified client certificate.
import type { IRHttpListener, IRRbacPolicy } from '../../../ir/types.js';
import type { envoy } from '../../resources/envoy-types.gen.js';
import { typed } from '../util.js';
import type { HttpFilterModule } from './index.js';

type Permission = envoy.config.rbac.v3.Permission;

function pathRule(p: { type: 'Exact' | 'PathPrefix' | 'RegularExpression'; value: string }): Permission[] {
  if (p.type === 'Exact') return [{ url_path: { path: { exact: p.value } } }];
  if (p.type === 'RegularExpression') return [{ url_path: { path: { safe_regex: { regex: p.value } } } }];
  if (p.value === '/' || p.value.endsWith('/')) return [{ url_path: { path: { prefix: p.value } } }];
  // Whole segments, as routes match: "/charge" and "/charge/...", not "/chargeback".
  return [{ url_path: { path: { exact: p.value } } }, { url_path: { path: { prefix: `${p.value}/` } } }];
}

function permission(op: NonNullable<IRRbacPolicy['permissions']>[number]): Permission {
  const rules: Permission[] = [];
  if (op.methods?.length) rules.push({ or_rules: { rules: op.methods.map((m) => ({ header: { name: ':method', string_match: { exact: m } } })) } });
  if (op.paths?.length) rules.push({ or_rules: { rules: op.paths.flatMap(pathRule) } });
  return rules.length ? { and_rules: { rules } } : { any: true };
}

function policies(list: IRRbacPolicy[]): { [name: string]: envoy.config.rbac.v3.Policy } {
  const out: { [name: string]: envoy.config.rbac.v3.Policy } = {};
  for (const p of list) {
    out[p.name] = {
      principals: p.principals.map((id) => ({ authenticated: { principal_name: { exact: id } } })),
      permissions: p.permissions?.length ? p.permissions.map(permission) : [{ any: true }],
    };
  }
  return out;
}

export const rbacDeny: HttpFilterModule = {
  envoyName: 'signalbox.rbac.deny',
  hcmEntry: (l: IRHttpListener) =>
    l.rbac?.deny.length
      ? {
          name: 'signalbox.rbac.deny',
          typed_config: typed('envoy.extensions.filters.http.rbac.v3.RBAC', { rules: { action: 'DENY', policies: policies(l.rbac.deny) } }),
        }
      : undefined,
};

export const rbacAllow: HttpFilterModule = {
  envoyName: 'signalbox.rbac.allow',
  hcmEntry: (l: IRHttpListener) =>
    l.rbac?.defaultDeny
      ? {
          name: 'signalbox.rbac.allow',
          typed_config: typed('envoy.extensions.filters.http.rbac.v3.RBAC', { rules: { action: 'ALLOW', policies: policies(l.rbac.allow) } }),
        }
      : undefined,
};
