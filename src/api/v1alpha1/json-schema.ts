// JSON Schemas of the policy language, generated from the zod schemas of this folder by zod's own
// converter (z.toJSONSchema), so the two cannot drift: one file per kind and one for any document,
// selecting the kind's schema by `kind`. `signalbox schema` prints or writes them; `schemas/` holds
// the committed copies editors and CI point at (a unit test fails when they are stale).
//
// The schemas describe what a user writes (zod's "input" side: defaults make fields optional,
// transforms are not applied). They are draft-07, the draft every YAML editor and validator reads.
// What zod checks in code (refinements: cross-field rules, RE2 syntax, duplicate names) has no
// JSON Schema form and is left out, so the model is stricter than the schema there; docs/editors.md
// lists where.
import { z } from 'zod';
import { API_VERSION } from './common.js';
import { KINDS, type Kind } from './index.js';

type JsonSchema = Record<string, unknown>;

const DRAFT_07 = 'http://json-schema.org/draft-07/schema#';

/** One line per kind, shown by editors when hovering over a document. */
const KIND_DESCRIPTIONS: Record<Kind, string> = {
  Mesh: 'Mesh-wide settings: trust domain, mTLS, default timeouts and retries, tracing (at most one per directory).',
  Service: 'A destination: its protocol, port, and static endpoints or Consul discovery.',
  Gateway: 'An edge listener set, served by Envoy proxies started with --gateway NAME.',
  HTTPRoute: 'HTTP routing on a Gateway (edge) or a Service (mesh traffic between sidecars).',
  AccessPolicy: 'Which identities may call a Service, enforced at its sidecars.',
  TrafficPolicy: 'How to talk to a destination Service: timeouts, retries, load balancing, circuit breaking, health checks.',
  RateLimitPolicy: 'Local (per-proxy) token buckets on a Gateway, an HTTPRoute or a Service.',
  JWTPolicy: "JWT checks made by Signalbox's ext_authz service.",
};

/**
 * The formats draft-07 defines. zod also writes checks of its own as formats (`.startsWith('/')`
 * becomes format "starts_with" beside a pattern saying the same); validators reject or ignore
 * those, so they are dropped and the pattern stays.
 */
const DRAFT_07_FORMATS = new Set([
  'date-time',
  'date',
  'time',
  'email',
  'idn-email',
  'hostname',
  'idn-hostname',
  'ipv4',
  'ipv6',
  'uri',
  'uri-reference',
  'iri',
  'iri-reference',
  'uri-template',
  'json-pointer',
  'relative-json-pointer',
  'regex',
]);

/** Where the schemas are written, relative to the output directory. */
export function schemaFileName(kind: Kind | 'all'): string {
  return `${API_VERSION.split('/')[1]}/${kind === 'all' ? 'all' : kind.toLowerCase()}.json`;
}

/** The JSON Schema of one kind's document (apiVersion, kind, metadata, spec). */
export function kindJsonSchema(kind: Kind): JsonSchema {
  const generated = z.toJSONSchema(KINDS[kind], {
    target: 'draft-7',
    io: 'input',
    unrepresentable: 'any',
    override: ({ jsonSchema }) => {
      if (typeof jsonSchema.format === 'string' && !DRAFT_07_FORMATS.has(jsonSchema.format)) delete jsonSchema.format;
    },
  }) as JsonSchema;
  // The combined schema embeds this one; a $ref inside (zod writes them only for cycles) would point nowhere there.
  if (JSON.stringify(generated).includes('"$ref"')) throw new Error(`the ${kind} schema has a $ref; embed its definitions before combining`);
  const { $schema: _drop, ...rest } = generated;
  return { $schema: DRAFT_07, title: `Signalbox ${kind} (${API_VERSION})`, description: KIND_DESCRIPTIONS[kind], ...rest };
}

/** The JSON Schema of any Signalbox document: `kind` selects the kind's schema. */
export function combinedJsonSchema(): JsonSchema {
  const kinds = Object.keys(KINDS) as Kind[];
  const definitions: Record<string, JsonSchema> = {};
  for (const kind of kinds) {
    const { $schema: _drop, ...rest } = kindJsonSchema(kind);
    definitions[kind] = rest;
  }
  return {
    $schema: DRAFT_07,
    title: `Signalbox policy document (${API_VERSION})`,
    description: `Any Signalbox policy document; its kind (${kinds.join(', ')}) selects the schema it is checked against.`,
    type: 'object',
    required: ['apiVersion', 'kind'],
    properties: {
      apiVersion: { const: API_VERSION },
      kind: { enum: kinds },
    },
    // if/then rather than oneOf: an editor then reports the one kind's errors, not every kind's.
    // biome-ignore lint/suspicious/noThenProperty: JSON Schema's if/then keywords, not a thenable
    allOf: kinds.map((kind) => ({ if: { properties: { kind: { const: kind } }, required: ['kind'] }, then: { $ref: `#/definitions/${kind}` } })),
    definitions,
  };
}

/** Every schema file as it is committed under schemas/: path relative to that folder, and text. */
export function schemaFiles(): Map<string, string> {
  const text = (s: JsonSchema) => `${JSON.stringify(s, null, 2)}\n`;
  const files = new Map<string, string>();
  files.set(schemaFileName('all'), text(combinedJsonSchema()));
  for (const kind of Object.keys(KINDS) as Kind[]) files.set(schemaFileName(kind), text(kindJsonSchema(kind)));
  return files;
}
