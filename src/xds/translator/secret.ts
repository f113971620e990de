import type { IRSecret } from '../../ir/types.js';
import type { envoy } from '../resources/envoy-types.gen.js';

type Secret = envoy.extensions.transport_sockets.tls.v3.Secret;

export function secretResource(s: IRSecret): Secret {
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
export function redactSecret(json: Secret): Secret {
  const tls = json.tls_certificate;
  if (!tls) return json;
  return { ...json, tls_certificate: { ...tls, private_key: { inline_string: REDACTED } } };
}
