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

// How a Secret is printed (the private key redacted) is the resources' business: src/xds/resources/redact.ts.
export { REDACTED, redactSecret } from '../resources/redact.js';
