import type { IRSecret } from '../../ir/types.js';

export function secretResource(s: IRSecret): Record<string, unknown> {
  return {
    name: s.name,
    tls_certificate: {
      certificate_chain: { inline_string: s.certificatePem },
      private_key: { inline_string: s.privateKeyPem },
    },
  };
}

export const REDACTED = '[redacted]';

/** The printable form of a Secret: the certificate stays, the private key never leaves. */
export function redactSecret(json: Record<string, unknown>): Record<string, unknown> {
  const tls = json.tls_certificate as Record<string, unknown> | undefined;
  if (!tls) return json;
  return { ...json, tls_certificate: { ...tls, private_key: { inline_string: REDACTED } } };
}
