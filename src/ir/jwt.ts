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
  /** Set when Envoy applies remembered answers itself, asking the service only about new tokens. */
  fast?: IRJwtFastCheck;
  /** Why a route with policies has no fast path (shown by `signalbox explain`). */
  slowReason?: string;
}

/** The ext_authz context extension that names a route's policies (comma-separated, name order). */
export const JWT_POLICIES_KEY = 'signalbox.jwt.policies';

/**
 * The fast path of one JWTPolicy on a route: a small script in Envoy remembers the service's
 * answers for tokens it allowed (until their time claims say otherwise) and applies them itself;
 * anything it has not seen allowed, it asks the service about (see jwt-fast.ts).
 */
export interface IRJwtFastCheck {
  policy: string;
  /** The one request header the policy reads its token from (lower case). */
  header: string;
  /**
   * A digest of the policy's settings and current keys. Remembered answers are kept under it, so
   * a change of either starts with nothing remembered.
   */
  version: string;
}
