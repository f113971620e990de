// IR for JWT checks: which listeners ask the ext_authz service, and which policies each route
// names. Plain data; no Envoy types.

/** The external authorization check of a listener. */
export interface IRExtAuthz {
  /** The cluster that reaches Signalbox's ext_authz service. */
  cluster: string;
  /** How long Envoy waits for a decision before it fails closed. */
  timeoutMs: number;
  /** Request headers the service needs (token headers, cookie); only these are sent. */
  headers: string[];
}

/** A route's JWT check: the policies it must satisfy, in name order; empty: no check on this route. */
export interface IRRouteJwt {
  policies: string[];
}

/** The ext_authz context extension that names a route's policies (comma-separated, name order). */
export const JWT_POLICIES_KEY = 'signalbox.jwt.policies';
