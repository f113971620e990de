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
  /** Set when Envoy can decide a valid token itself; the ext_authz service decides everything else. */
  fast?: IRJwtFastCheck;
  /** Why a route with policies has no fast path (shown by `signalbox explain`). */
  slowReason?: string;
}

/** The ext_authz context extension that names a route's policies (comma-separated, name order). */
export const JWT_POLICIES_KEY = 'signalbox.jwt.policies';

/**
 * Envoy-side verification of one JWTPolicy (the fast path): Envoy's jwt_authn filter checks the
 * signature with keys Signalbox hands it, a small check script in Envoy re-checks everything else
 * the policy says, and only requests that do not pass both reach the ext_authz service.
 */
export interface IRJwtProvider {
  policy: string;
  /** A JSON Web Key Set with every key pinned (`alg`) to one of the policy's algorithms. */
  jwks: string;
  /** Where the token is: one request header, and the text before the token in it. */
  header: string;
  prefix?: string;
  /** jwt_authn's own time check: never stricter than the policy (the script applies the real one). */
  clockSkewSeconds: number;
}

/** The check script's parameters for a route: everything the policy checks besides the signature. */
export interface IRJwtFastCheck {
  policy: string;
  header: string;
  prefix: string;
  maxBytes: number;
  issuer: string;
  audiences: string[];
  skewSeconds: number;
  /** The key set has a key without a `kid`: only tokens without one may pass here. */
  kidless: boolean;
  require: { claim: string; op: 'contains' | 'in' | 'equals'; value: string | number | boolean | (string | number | boolean)[] }[];
  forward: { claim: string; header: string }[];
}
