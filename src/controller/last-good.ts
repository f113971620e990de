// The last good configuration, kept across restarts. Each time the pipeline applies a valid policy
// directory it saves that configuration's inputs in the data directory: the policy files' text and
// the text of every file they name (gateway certificates and keys, JWKS files). A start whose policy
// directory is invalid rebuilds the model from them through the same parse -> model -> translate
// code, so proxies get byte-identical resources under the same versions as before the restart.
// (A JWKS file's saved text only lets the rebuilt model validate: the authz service reads the file
// in the policy directory live, before a restart as after, so a key rotation is never undone.)
//
// Inputs, not compiled resources, because resources alone cannot serve what the process has not
// compiled yet: a sidecar group is built when its first proxy asks, endpoint sets move with Consul,
// JWT fast-path versions follow the keys the authz service loads, and the ext_authz service and the
// xDS server's identity checks need the model itself. Same inputs, same model, same resources.
//
// The file holds the gateways' private keys when policies name them, so it is written like the
// CA's files (atomically, 0600, in the 0700 data directory), never served by the admin API and
// never logged. A checksum tells a damaged file from a good one: a file that fails it is reported
// by name and not served.
import { createHash } from 'node:crypto';
import { promises as fs } from 'node:fs';
import path from 'node:path';
import { z } from 'zod';
import type { Gateway, JWTPolicy } from '../api/v1alpha1/index.js';
import { ErrorCode, formatPolicyError, type PolicyError } from '../errors.js';
import type { Model } from '../model/model.js';
import { policyFileReader } from '../sources/files/policy-files.js';
import { buildModel } from './build-model.js';
import { displayPath, parsePolicyText, PolicyParseCache, type LoadedDoc, type LoadOptions, type ParsedFile } from '../sources/files/loader.js';
import { writeStateFile } from '../util/files.js';

/** The saved configuration, in the data directory. */
export const LAST_GOOD_FILE = 'last-good.json';
/**
 * Where a restore lays the named files out for the model to read them with the usual confinement
 * rules; it exists only while the model is built (it holds private keys).
 */
const SCRATCH_DIR = 'last-good.files';
const FORMAT = 'signalbox.last-good/v1';

/** A path relative to the policy directory that stays inside it (a damaged file must not write elsewhere). */
const insidePath = z
  .string()
  .min(1)
  .refine(
    (p) => !p.includes('\0') && !path.isAbsolute(p) && !path.win32.isAbsolute(p) && !p.split(/[\\/]/).includes('..'),
    'must be a relative path inside the policy directory',
  );
const SavedFile = z.strictObject({ file: insidePath, text: z.string() });
const Saved = z.strictObject({
  /** When this configuration was applied from the policy directory. */
  appliedAt: z.string().refine((s) => !Number.isNaN(Date.parse(s)), 'must be a date'),
  /** The policy directory it came from (absolute): another directory's configuration is not served. */
  policyDir: z.string().min(1),
  /** Every policy file, relative to the policy directory, in the loader's order. */
  files: z.array(SavedFile),
  /** Every file a policy names (relative to the policy directory, as written), with the text the model used. */
  references: z.array(SavedFile),
  /** Each proxy group's snapshot version when saved, to check a restore against. */
  groups: z.record(z.string(), z.string()),
});
export type SavedConfig = z.infer<typeof Saved>;
const Envelope = z.strictObject({ format: z.literal(FORMAT), sha256: z.string().regex(/^[0-9a-f]{64}$/), config: z.unknown() });

const sha256 = (s: string) => createHash('sha256').update(s, 'utf8').digest('hex');

export type RestoreResult =
  | { kind: 'none' }
  | { kind: 'error'; error: PolicyError }
  | { kind: 'restored'; model: Model; appliedAt: Date; groups: Record<string, string> };

export type SaveResult = 'saved' | 'unchanged' | 'changed-underneath';

export interface LastGoodOptions {
  dataDir: string;
  policyDir: string;
  /** The pipeline's forbidden paths: the model rebuilt must be the one the pipeline would build. */
  forbidden?: string[];
}

/**
 * The pipeline's parse cache, also remembering which text each file's documents came from: a save
 * takes the very text that was applied, with no second read of the policy directory (which could
 * race an edit, or meet a file swapped for a FIFO or a huge one that the loader's checks refused).
 */
export class TextKeepingParseCache extends PolicyParseCache {
  private readonly texts = new Map<string, { text: string; docs: LoadedDoc[] }>();

  override parse(text: string, file: string, opts: LoadOptions = {}): ParsedFile {
    const r = super.parse(text, file, opts);
    this.texts.set(file, { text, docs: r.docs });
    return r;
  }

  override retain(files: Set<string>): void {
    super.retain(files);
    for (const f of this.texts.keys()) if (!files.has(f)) this.texts.delete(f);
  }

  /** The text last parsed for `file` (as the loader names it) and the documents it gave. */
  textOf(file: string): { text: string; docs: LoadedDoc[] } | undefined {
    return this.texts.get(file);
  }
}

export class LastGoodStore {
  readonly file: string;
  private readonly dataDir: string;
  private readonly policyDir: string;
  /** Digest of the last saved configuration without its date: an apply of the same inputs does not rewrite it. */
  private lastKey?: string;
  /**
   * Each policy file's entry of the saved file as JSON, by the name the loader gives it, with the
   * text it was written from: a save after a one-file edit escapes that file's text only (and
   * works out one relative path), not every file's. Valid for one working directory (the names
   * the loader gives are relative to it).
   */
  private entries = new Map<string, { text: string; json: string }>();
  private entriesCwd = '';

  constructor(private readonly opts: LastGoodOptions) {
    this.dataDir = path.resolve(opts.dataDir);
    this.policyDir = path.resolve(opts.policyDir);
    this.file = path.join(this.dataDir, LAST_GOOD_FILE);
  }

  /** The saved file as errors and logs show paths (relative to the working directory when below it). */
  get displayFile(): string {
    return displayPath(this.file);
  }

  /**
   * Saves the inputs of a configuration just applied. `files` and `fileDocs` are what the load read
   * and made of them; `textOf` gives the text each file's documents were parsed from (the
   * pipeline's TextKeepingParseCache). A text is taken only if its documents are the very ones the
   * load produced, so the saved texts always rebuild the applied model; otherwise nothing is saved
   * ('changed-underneath') and the next applied load saves.
   */
  async save(input: {
    files: readonly string[];
    fileDocs: readonly LoadedDoc[];
    textOf: (file: string) => { text: string; docs: LoadedDoc[] } | undefined;
    model: Model;
    groups: Record<string, string>;
  }): Promise<SaveResult> {
    const applied = new Set(input.fileDocs);
    const files: string[] = [];
    let seen = 0;
    if (this.entriesCwd !== process.cwd()) {
      this.entries = new Map();
      this.entriesCwd = process.cwd();
    }
    const entries = new Map<string, { text: string; json: string }>();
    for (const shown of input.files) {
      const got = input.textOf(shown);
      if (!got || got.docs.some((d) => !applied.has(d))) return 'changed-underneath';
      // A file that gave no Signalbox document (an Envoy bootstrap saved in the directory, whose
      // text may hold a token; an empty file) adds nothing to the configuration: not copied.
      if (got.docs.length === 0) continue;
      seen += got.docs.length;
      let entry = this.entries.get(shown);
      if (entry?.text !== got.text) {
        const file: SavedConfig['files'][number] = { file: path.relative(this.policyDir, path.resolve(shown)), text: got.text };
        entry = { text: got.text, json: JSON.stringify(file) };
      }
      entries.set(shown, entry);
      files.push(entry.json);
    }
    if (seen !== input.fileDocs.length) return 'changed-underneath';
    const references = await this.references(input.fileDocs, input.model);
    if (!references) return 'changed-underneath';
    this.entries = entries;
    // The saved file as JSON.stringify writes it ({format, sha256, config}, config's keys in
    // SavedConfig's order), put together from the kept entries: without the date for the key, with
    // it for the file and its checksum. No text is escaped twice.
    const undated = `{"policyDir":${JSON.stringify(this.policyDir)},"files":[${files.join(',')}],"references":${JSON.stringify(references)},"groups":${JSON.stringify(input.groups)}}`;
    const key = sha256(undated);
    if (key === this.lastKey) return 'unchanged';
    const body = `{"appliedAt":${JSON.stringify(new Date().toISOString())},${undated.slice(1)}`;
    await writeStateFile(this.file, `{"format":${JSON.stringify(FORMAT)},"sha256":"${sha256(body)}","config":${body}}\n`, 0o600);
    this.lastKey = key;
    return 'saved';
  }

  /**
   * The files the policies name, with the text the model was built from: gateway TLS material from
   * the model itself (what went into the Secret resources); a JWKS file read again through the
   * policy directory's confinement (the model keeps only its path: the authz service reads it).
   * undefined when one cannot be had (it changed or vanished: the next reload saves).
   */
  private async references(docs: readonly LoadedDoc[], model: Model): Promise<SavedConfig['references'] | undefined> {
    const out = new Map<string, string>();
    const read = policyFileReader(this.policyDir, { dataDir: this.dataDir, forbidden: this.opts.forbidden });
    for (const d of docs) {
      if (d.kind === 'Gateway') {
        const spec = (d.value as Gateway).spec;
        for (const l of spec.listeners) {
          if (!l.tls) continue;
          const tls = model.gateways.get(d.name)?.listeners.find((m) => m.name === l.name)?.tls;
          if (!tls) return undefined;
          if (!out.has(l.tls.certificateFile)) out.set(l.tls.certificateFile, tls.certificatePem);
          if (!out.has(l.tls.privateKeyFile)) out.set(l.tls.privateKeyFile, tls.privateKeyPem);
        }
      } else if (d.kind === 'JWTPolicy') {
        const file = (d.value as JWTPolicy).spec.jwks.file;
        if (file === undefined || out.has(file)) continue;
        const got = await read(file);
        if (!('text' in got)) return undefined;
        try {
          JSON.parse(got.text); // changed since the model checked it: the restore would refuse it
        } catch {
          return undefined;
        }
        out.set(file, got.text);
      }
    }
    return [...out].sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0)).map(([file, text]) => ({ file, text }));
  }

  /** Reads and checks the saved file: undefined when there is none; throws a message when it is damaged. */
  async read(): Promise<SavedConfig | undefined> {
    let text: string;
    try {
      text = await fs.readFile(this.file, 'utf8');
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
      throw new Error(`cannot read it (${(e as NodeJS.ErrnoException).code ?? (e as Error).message})`);
    }
    let raw: unknown;
    try {
      raw = JSON.parse(text);
    } catch {
      throw new Error('it is not JSON (damaged or truncated)');
    }
    const env = Envelope.safeParse(raw);
    if (!env.success) throw new Error(`it is not a saved configuration of this version of Signalbox (expected format "${FORMAT}" with a sha256)`);
    if (sha256(JSON.stringify(env.data.config)) !== env.data.sha256) throw new Error('its checksum does not match its content (damaged or edited)');
    const cfg = Saved.safeParse(env.data.config);
    if (!cfg.success) {
      const issue = cfg.error.issues[0]!;
      throw new Error(`it is malformed: ${issue.path.join('.') || '(top)'}: ${issue.message}`);
    }
    return cfg.data;
  }

  /**
   * Rebuilds the saved configuration's model, as the pipeline built it from the policy directory:
   * the same documents (under the names the loader gives the files now) through `docsHook` (the
   * pipeline's extraDocs) and buildModel with the pipeline's options. Problems come back as one
   * error naming the saved file; nothing is served then.
   */
  async restore(docsHook?: (docs: LoadedDoc[]) => LoadedDoc[]): Promise<RestoreResult> {
    const fail = (message: string): RestoreResult => ({
      kind: 'error',
      error: { code: ErrorCode.FILE_READ, file: this.displayFile, message: `the last good configuration saved here cannot be served: ${message}` },
    });
    let saved: SavedConfig | undefined;
    try {
      saved = await this.read();
    } catch (e) {
      return fail((e as Error).message);
    }
    if (!saved) return { kind: 'none' };
    if (path.resolve(saved.policyDir) !== this.policyDir) return fail(`it was saved for the policy directory ${saved.policyDir}, not ${this.policyDir}`);

    const docs: LoadedDoc[] = [];
    const problems: PolicyError[] = [];
    for (const f of saved.files) {
      // Not strict, whatever serve's --strict now: a document that is not Signalbox's gave nothing
      // when this was applied, so skipping it rebuilds the same model.
      const r = parsePolicyText(f.text, displayPath(path.join(this.policyDir, f.file)), { strict: false });
      docs.push(...r.docs);
      problems.push(...r.errors);
    }
    if (problems.length > 0) return fail(`its policy files no longer validate (${problems.length} error(s)), first: ${formatPolicyError(problems[0]!)}`);

    // The named files are laid out in a scratch folder and read from there with the usual rules.
    // The data directory's other entries (CA key, token key...) stay forbidden, by path and inode.
    // Without named files nothing is written (a read-only data directory can still be restored from).
    const scratch = path.join(this.dataDir, SCRATCH_DIR);
    let built: Awaited<ReturnType<typeof buildModel>>;
    try {
      if (saved.references.length > 0) {
        await fs.rm(scratch, { recursive: true, force: true });
        for (const r of saved.references) await writeStateFile(path.join(scratch, r.file), r.text, 0o600);
      }
      const siblings = (await fs.readdir(this.dataDir)).filter((n) => n !== SCRATCH_DIR).map((n) => path.join(this.dataDir, n));
      built = await buildModel(docsHook ? docsHook(docs) : docs, scratch, { forbidden: [...(this.opts.forbidden ?? []), ...siblings] });
    } catch (e) {
      return fail(`its files could not be laid out in ${displayPath(scratch)}: ${(e as NodeJS.ErrnoException).code ?? (e as Error).message}`);
    } finally {
      await fs.rm(scratch, { recursive: true, force: true }).catch(() => undefined);
    }
    if (built.errors.length > 0 || !built.model)
      return fail(`its policies no longer build (${built.errors.length} error(s)), first: ${formatPolicyError(built.errors[0]!)}`);
    this.pointJwksAtPolicyDir(built.model);
    this.lastKey = sha256(JSON.stringify({ ...saved, appliedAt: undefined }));
    return { kind: 'restored', model: built.model, appliedAt: new Date(saved.appliedAt), groups: saved.groups };
  }

  /**
   * A JWKS file's path and confinement are part of its policy's settings, and so of the JWT fast
   * path's versions; and the authz service reads that file live (a rotation is picked up without a
   * reload, before a restart as after). So a restored policy names the file in the policy
   * directory, with the confinement buildModel gives it there (see resolveJwtPolicies), not the
   * scratch copy that was only read to validate it.
   */
  private pointJwksAtPolicyDir(model: Model): void {
    const { forbidden } = this.opts;
    const confine = {
      policyDir: this.policyDir,
      dataDir: this.dataDir,
      ...(forbidden?.length ? { forbidden: forbidden.map((f) => path.resolve(f)) } : {}),
    };
    for (const p of model.jwt?.policies.values() ?? []) {
      if (p.jwks.kind === 'file') p.jwks = { ...p.jwks, path: path.resolve(this.policyDir, p.jwks.file), confine };
    }
  }
}
