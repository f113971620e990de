// What the JWT fast path's pieces agree on: the Envoy configuration the xDS translator writes (the
// Lua script, the compiled module's filter config), the ext_authz service that answers the
// script's checks and counts its reports, the xDS server that recognizes a proxy loading the
// module, and `signalbox bootstrap`. Names and numbers only; each side keeps its own logic.

/** The cluster that reaches the ext_authz service: a dot cannot appear in a Service name, so it never clashes with one. */
export const AUTHZ_CLUSTER = 'signalbox.authz';

/** Envoy's deadline for one decision; past it the request fails closed (503). */
export const EXT_AUTHZ_TIMEOUT_MS = 2_000;

/** The service's plain-HTTP endpoints for the script (beside the gRPC Check on the same port). */
export const FAST_PATH_HTTP = {
  check: '/signalbox.jwt/check/',
  report: '/signalbox.jwt/report/',
  countHeader: 'x-signalbox-allows',
  reports: '/signalbox.jwt/report',
  reportId: 'x-signalbox-report-id',
} as const;

/** The compiled filter: Envoy loads lib<name>.so from ENVOY_DYNAMIC_MODULES_SEARCH_PATH. */
export const JWT_MODULE = { name: 'signalbox_jwt_check', filter: 'jwt_check' } as const;
