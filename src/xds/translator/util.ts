// Small helpers for writing Envoy resources as plain objects (snake_case, as protobufjs expects),
// typed by src/xds/resources/envoy-types.gen.ts.
import type { AnyTypes, envoy, PackedAny } from '../resources/envoy-types.gen.js';

export function duration(ms: number): { seconds: number; nanos: number } {
  const seconds = Math.floor(ms / 1000);
  return { seconds, nanos: Math.round((ms - seconds * 1000) * 1e6) };
}

/** A percentage (0-100, fractions allowed) as Envoy's FractionalPercent over a million. */
export function fractionalPercent(percent: number): { numerator: number; denominator: 'MILLION' } {
  return { numerator: Math.round(percent * 10_000), denominator: 'MILLION' };
}

/**
 * A message packed as a google.protobuf.Any (protobufjs's `@type` form). The name must be one of
 * AnyTypes (scripts/gen-envoy-types.ts lists them) and the body is checked against its type.
 */
export function typed<K extends keyof AnyTypes>(typeName: K, body: AnyTypes[K]): PackedAny {
  return { '@type': `type.googleapis.com/${typeName}`, ...body } as unknown as PackedAny;
}

export const ADS_SOURCE: envoy.config.core.v3.ConfigSource = { ads: {}, resource_api_version: 'V3' };
