// The one place that lists the xDS type URLs Signalbox serves, in make-before-break order.
export const TYPE_PREFIX = 'type.googleapis.com/';

export const TypeUrl = {
  Cluster: 'type.googleapis.com/envoy.config.cluster.v3.Cluster',
  Endpoint: 'type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment',
  Listener: 'type.googleapis.com/envoy.config.listener.v3.Listener',
  Route: 'type.googleapis.com/envoy.config.route.v3.RouteConfiguration',
  Secret: 'type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret',
} as const;

export type TypeUrl = (typeof TypeUrl)[keyof typeof TypeUrl];

/**
 * Push order: clusters, then their endpoints and secrets, then listeners, then routes
 * (Envoy's documented make-before-break sequence for ADS). Removals follow the reverse order.
 */
export const PUSH_ORDER: readonly TypeUrl[] = [TypeUrl.Cluster, TypeUrl.Endpoint, TypeUrl.Secret, TypeUrl.Listener, TypeUrl.Route];

export const SHORT_NAME: Record<TypeUrl, string> = {
  [TypeUrl.Cluster]: 'cluster',
  [TypeUrl.Endpoint]: 'endpoint',
  [TypeUrl.Listener]: 'listener',
  [TypeUrl.Route]: 'route',
  [TypeUrl.Secret]: 'secret',
};

const KNOWN = new Set<string>(PUSH_ORDER);
export function isKnownTypeUrl(url: string): url is TypeUrl {
  return KNOWN.has(url);
}

/** Fully qualified message name of a type URL (without the type.googleapis.com/ prefix). */
export function messageName(url: string): string {
  return url.slice(url.lastIndexOf('/') + 1);
}
