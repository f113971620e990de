// A policy document as the pipeline passes it on: its kind, name and validated value, and where it
// came from. Plain data, owned here rather than by the file loader that produces most of them, so
// that the model, the IR and everything that reports a source (explain, errors, NACK attribution)
// can name a document without depending on how it was read (a file, Consul's import, the saved
// last good configuration).
import type { Kind, PolicyMap } from './v1alpha1/index.js';

/** Where a document came from: its file (or a pseudo-file such as `consul-import:web`) and its 1-based index there. */
export interface SourceRef {
  file: string;
  doc: number;
}

export interface LoadedDoc<K extends Kind = Kind> {
  kind: K;
  name: string;
  source: SourceRef;
  value: PolicyMap[K];
  /** Line of a field path inside the document, for errors found after schema validation. */
  lineOf(path: (string | number)[]): number | undefined;
}

/** A field path as errors show it: `spec.rules[0].matches`. */
export function formatPath(p: readonly PropertyKey[]): string {
  let out = '';
  for (const seg of p) {
    if (typeof seg === 'number') out += `[${seg}]`;
    else out += out ? `.${String(seg)}` : String(seg);
  }
  return out;
}

/**
 * A file a document names, as read for the model: its text, refused (outside the policy directory,
 * not a regular file, too large, forbidden: one answer whatever the reason), or another error code.
 */
export type PolicyFileResult = { text: string } | { refused: true } | { error: string };
