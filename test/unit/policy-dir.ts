// Helpers for unit tests that need a policy directory on disk: throwaway temp dirs, policy
// documents written in a few lines, and the load -> model -> IR steps run in one call.
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { buildModel } from '../../src/controller/build-model.js';
import type { Model } from '../../src/model/model.js';
import type { PolicyError } from '../../src/errors.js';
import { loadPolicyDir } from '../../src/sources/files/loader.js';

const made: string[] = [];

/** Writes `files` (relative path -> text) into a fresh temp dir and returns its path. */
export function policyDir(files: Record<string, string>): string {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'signalbox-unit-'));
  made.push(dir);
  for (const [rel, text] of Object.entries(files)) {
    const full = path.join(dir, rel);
    mkdirSync(path.dirname(full), { recursive: true });
    writeFileSync(full, text);
  }
  return dir;
}

/** Removes every dir policyDir made (call from `after`). */
export function removePolicyDirs(): void {
  for (const d of made.splice(0)) rmSync(d, { recursive: true, force: true });
}

/** One policy document. `spec` is YAML indented by two spaces (or a flow mapping). */
export function doc(kind: string, name: string, spec: string): string {
  const body = spec.startsWith('{') ? ` ${spec}` : `\n${spec.replace(/^\n/, '').replace(/\s+$/, '')}`;
  return `apiVersion: signalbox.dev/v1alpha1\nkind: ${kind}\nmetadata: { name: ${name} }\nspec:${body}\n`;
}

/** Joins documents into one multi-document YAML file. */
export function docs(...list: string[]): string {
  return list.join('---\n');
}

/** Loads and cross-references a directory as `signalbox validate` does. */
export async function validateDir(dir: string): Promise<{ errors: PolicyError[]; model?: Model; documents: number }> {
  const loaded = await loadPolicyDir(dir);
  if (loaded.errors.length) return { errors: loaded.errors, documents: loaded.docs.length };
  const built = await buildModel(loaded.docs, dir);
  return { errors: built.errors, model: built.model, documents: loaded.docs.length };
}
