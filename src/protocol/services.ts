// How proxies reach Signalbox's own gRPC services (ext_authz for JWTPolicies, rate limits for global
// RateLimitPolicy limits), and what the rate-limit calls carry: shared by the translate step that
// puts the clusters and descriptors into each group's configuration and by the services that
// listen and answer.

/** Where proxies reach the ext_authz service (an IP address; the cluster is STATIC). */
export interface AuthzEndpoint {
  address: string;
  port: number;
  /**
   * The service speaks TLS and wants the proxy's identity certificate; `serverId` is the SPIFFE
   * ID its certificate carries (what the proxy verifies). Absent: plain text (--xds-insecure).
   */
  tls?: { serverId: string };
}

/** Where proxies reach the rate-limit service (an IP address; the cluster is STATIC). */
export interface RateLimitEndpoint {
  address: string;
  port: number;
  /** TLS, the proxy presenting its identity; `serverId` is the SPIFFE ID the service's certificate carries. Absent: plain text. */
  tls?: { serverId: string };
}

/** The port the rate-limit service takes when --ratelimit-port is not given. */
export const DEFAULT_RATELIMIT_PORT = 18004;

/** The domain of every rate-limit call; the service refuses others. */
export const RATELIMIT_DOMAIN = 'signalbox';

/** The descriptor entry that names the limit (its value: `<policy>/<index>`). */
export const LIMIT_ENTRY = 'signalbox_limit';
