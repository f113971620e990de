// The one catalogue of Signalbox error codes. Codes are stable: scripts and dashboards may match
// on them. Messages are for people and may change.
export const ErrorCode = {
  YAML_SYNTAX: 'SB_YAML_SYNTAX',
  SCHEMA: 'SB_SCHEMA',
  UNKNOWN_KIND: 'SB_UNKNOWN_KIND',
  UNSUPPORTED_KIND: 'SB_UNSUPPORTED_KIND',
  DUPLICATE_NAME: 'SB_DUPLICATE_NAME',
  UNKNOWN_REFERENCE: 'SB_UNKNOWN_REFERENCE',
  CONFLICT: 'SB_CONFLICT',
  FILE_READ: 'SB_FILE_READ',
  NO_POLICIES: 'SB_NO_POLICIES',
  BAD_FLAG: 'SB_BAD_FLAG',
  CA: 'SB_CA',
  TOKEN: 'SB_TOKEN',
  /** Shared state (`--state consul`): Consul KV unreachable or refusing, a value that does not decrypt or parse. */
  STATE: 'SB_STATE',
  /** `validate --envoy`: the real Envoy refused what the policies compile to. */
  ENVOY_REJECTED: 'SB_ENVOY_REJECTED',
  /**
   * A YAML document in the policy directory that is not a Signalbox document (another apiVersion,
   * or neither apiVersion nor kind): a warning, the document skipped; an error under --strict.
   */
  NOT_SIGNALBOX: 'SB_NOT_SIGNALBOX',
  /**
   * A valid model could not be compiled for one proxy group (translation threw, or the result
   * failed the consistency check): reported on each policy document the group is built from,
   * naming the group. That group keeps its last good configuration; the other groups apply.
   */
  TRANSLATE: 'SB_TRANSLATE',
} as const;
export type ErrorCode = (typeof ErrorCode)[keyof typeof ErrorCode];

/** A policy problem tied to a place: file, document (1-based), field path and line. */
export interface PolicyError {
  code: ErrorCode;
  file: string;
  doc?: number;
  path?: string;
  line?: number;
  message: string;
  /** The proxy group it is about, for errors of one group's compilation (SB_TRANSLATE). */
  group?: string;
}

export function formatPolicyError(e: PolicyError): string {
  const where = e.doc !== undefined ? `${e.file}#${e.doc}` : e.file;
  const field = e.path ? ` ${e.path}` : '';
  const line = e.line !== undefined ? ` (line ${e.line})` : '';
  return `${where}${field}: ${e.message}${line}`;
}

export class SignalboxError extends Error {
  constructor(
    readonly code: ErrorCode,
    message: string,
  ) {
    super(message);
    this.name = 'SignalboxError';
  }
}
