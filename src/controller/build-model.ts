// The model of a policy directory: the documents cross-referenced, with the files they name read by
// the file source under its confinement rules. The one place that wires the two stages together
// for every caller (serve's pipeline, the last good configuration, the command line).
import type { LoadedDoc } from '../api/documents.js';
import { resolveModel, type BuildOptions, type BuildResult } from '../model/model.js';
import { policyFileReader } from '../sources/files/policy-files.js';

/** Cross-references `docs`; files they name resolve in `baseDir`, the policy directory, and may not leave it. */
export function buildModel(docs: LoadedDoc[], baseDir: string, opts: BuildOptions = {}): Promise<BuildResult> {
  return resolveModel(docs, { dir: baseDir, read: policyFileReader(baseDir, opts) }, opts);
}
