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

// How a Secret is printed (the private key redacted) is the resources' business: src/xds/resources/redact.ts.
export { REDACTED, redactSecret } from '../resources/redact.js';
