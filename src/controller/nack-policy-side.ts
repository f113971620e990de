// The policy side of NACK attribution (src/xds/server/nack-blame.ts), wired by `serve`: the xDS
// server knows resources and the files they came from; reading those files, finding a route's
// document and field in them and having an Envoy check a route configuration belong to the file
// source and preflight, which the server may not import.
import { readFileSync, statSync } from 'node:fs';
import path from 'node:path';
import { envoyVersion, isolateRefusedRoute, routeValueSource } from '../preflight/envoy.js';
import { parsePolicyText } from '../sources/files/loader.js';
import type { NackPolicySide } from '../xds/server/nack-blame.js';

/** Larger policy files are not read for attribution (the file is still blamed, without document and field). */
const MAX_POLICY_TEXT = 4 << 20;

export const nackPolicySide: NackPolicySide = {
  policyText(file) {
    try {
      const full = path.resolve(file);
      if (statSync(full).size > MAX_POLICY_TEXT) return undefined;
      return readFileSync(full, 'utf8');
    } catch {
      return undefined;
    }
  },
  parse: (text, file) => parsePolicyText(text, file).docs,
  routeValueSource,
  envoyVersion,
  isolateRefusedRoute,
};
