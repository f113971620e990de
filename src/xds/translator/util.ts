// Small helpers for writing Envoy resources as plain objects (snake_case, as protobufjs expects).
export function duration(ms: number): { seconds: number; nanos: number } {
  const seconds = Math.floor(ms / 1000);
  return { seconds, nanos: Math.round((ms - seconds * 1000) * 1e6) };
}

/** A percentage (0-100, fractions allowed) as Envoy's FractionalPercent over a million. */
export function fractionalPercent(percent: number): { numerator: number; denominator: string } {
  return { numerator: Math.round(percent * 10_000), denominator: 'MILLION' };
}

export function typed(typeName: string, body: Record<string, unknown>): Record<string, unknown> {
  return { '@type': `type.googleapis.com/${typeName}`, ...body };
}

export const ADS_SOURCE = { ads: {}, resource_api_version: 'V3' };
