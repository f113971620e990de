// Envoy's ext_authz HTTP filter, asking Signalbox's ext_authz service (JWTPolicy) over gRPC, on
// listeners with routes that have no fast path (see jwt-fast.ts).
// - The listener entry points at the authz cluster, fails closed (no answer in time, or the
//   service unreachable: 503) and sends only the request headers the policies read tokens from.
// - Every route of such a listener carries ExtAuthzPerRoute: the names of the policies it must
//   satisfy as a context extension (the service enforces exactly those), or `disabled` when no
//   policy covers it or its policy's fast path checks it, so that those routes skip the filter.
import type { IRHttpListener } from '../../../ir/types.js';
import { JWT_POLICIES_KEY } from '../../../ir/jwt.js';
import { duration, typed } from '../util.js';
import type { HttpFilterModule } from './index.js';

export const EXT_AUTHZ_FILTER = 'signalbox.ext_authz';

export const extAuthz: HttpFilterModule = {
  envoyName: EXT_AUTHZ_FILTER,
  wanted: (l: IRHttpListener) => l.extAuthz !== undefined,
  routeFacet: (l) => (l.extAuthz ? 'ext-authz' : ''),
  // The policies to check, or the check switched off.
  perRouteConfig: (l, r) => {
    if (!r.jwt || !l.extAuthz) return undefined;
    const perRoute =
      r.jwt.policies.length && !r.jwt.fast ? { check_settings: { context_extensions: { [JWT_POLICIES_KEY]: r.jwt.policies.join(',') } } } : { disabled: true };
    return typed('envoy.extensions.filters.http.ext_authz.v3.ExtAuthzPerRoute', perRoute);
  },
  hcmEntry: (l: IRHttpListener) => {
    const a = l.extAuthz;
    if (!a) return undefined;
    return {
      name: EXT_AUTHZ_FILTER,
      typed_config: typed('envoy.extensions.filters.http.ext_authz.v3.ExtAuthz', {
        grpc_service: { envoy_grpc: { cluster_name: a.cluster }, timeout: duration(a.timeoutMs) },
        transport_api_version: 'V3',
        failure_mode_allow: false,
        status_on_error: { code: 'ServiceUnavailable' },
        stat_prefix: 'jwt',
        ...(a.headers.length ? { allowed_headers: { patterns: a.headers.map((h) => ({ exact: h })) } } : {}),
      }),
    };
  },
};
