// The printable form of resources that carry keys. Here with the encoding, because every Resource
// is made with its printable JSON beside its bytes: whoever makes a Secret (the translator for a
// gateway's certificate, the xDS server for an instance's own identity) redacts it the same way.

export const REDACTED = '[redacted]';

/** The printable form of a Secret: the certificate stays, the private key never leaves. */
export function redactSecret(json: Record<string, unknown>): Record<string, unknown> {
  const tls = json.tls_certificate as Record<string, unknown> | undefined;
  if (!tls) return json;
  return { ...json, tls_certificate: { ...tls, private_key: { inline_string: REDACTED } } };
}
