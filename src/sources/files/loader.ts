// Reads a policy directory: every *.yaml / *.yml file, every YAML document in it. Each document is
// validated against the schema of its kind; every problem is collected (not just the first) with
// the file, the document index (1-based), the field path and the line it sits on.
//
// A document that is not a Signalbox document at all (an Envoy bootstrap saved next to the
// policies, a Kubernetes manifest) is skipped with a warning naming its file and index, so the rest
// of the directory still applies; with `strict` it is an error instead (see notSignalbox()).
//
// Reading is bounded and total: only regular files are opened (a FIFO, device or socket could
// block or never end), sizes are checked before anything is read, YAML nesting, aliases and
// document counts are capped before the parser's recursive and quadratic paths can be reached,
// and any exception while reading or parsing becomes an error for that file, never a crash.
import { constants as fsc, promises as fs, closeSync, fstatSync, lstatSync, openSync, readSync, realpathSync, type Stats } from 'node:fs';
import path from 'node:path';
import { Composer, isMap, isNode, isPair, isScalar, isSeq, Lexer, LineCounter, Parser, visit, type Document } from 'yaml';
import type { z } from 'zod';
import { API_VERSION, KINDS, PLANNED_KINDS, type Kind, type PolicyMap } from '../../api/v1alpha1/index.js';
import { ErrorCode, type PolicyError } from '../../errors.js';
import { formatPath, type LoadedDoc, type SourceRef } from '../../api/documents.js';
import { didYouMean, editDistance } from '../../util/did-you-mean.js';

// The documents the loader produces are plain data owned by api/documents.ts.
export { formatPath, type LoadedDoc, type SourceRef };

export interface LoadResult {
  dir: string;
  docs: LoadedDoc[];
  errors: PolicyError[];
  /**
   * Documents skipped because they are not Signalbox documents (SB_NOT_SIGNALBOX), one per
   * document. They never make a load invalid; under `strict` they are errors instead and this is empty.
   */
  warnings: PolicyError[];
  /** Every file read, with a content hash, so that a reload can tell what changed. */
  files: string[];
}

const KiB = 1024;
const MiB = 1024 * KiB;

/** Bounds on what one load reads. Each can be changed with a `serve` flag (or its environment twin). */
export interface PolicyLimits {
  /** Largest policy file, in bytes (--max-policy-file-bytes, SIGNALBOX_MAX_POLICY_FILE_BYTES). */
  maxFileBytes: number;
  /** Largest total of all policy files, in bytes (--max-policy-dir-bytes, SIGNALBOX_MAX_POLICY_DIR_BYTES). */
  maxDirBytes: number;
  /** Most policy files in the directory and its folders (--max-policy-files, SIGNALBOX_MAX_POLICY_FILES). */
  maxFiles: number;
}

/**
 * Far above real policy sets (the benchmark's 1,000 routes and 200 services: 420 KiB in 403 files)
 * and below what the process can hold: a valid directory stays in memory as parsed YAML, about 40
 * bytes of heap per byte of dense YAML, so 16 MiB is ~650 MB where 64 MiB (~2.5 GB) could exhaust
 * Node's default heap. A file can be 4 MiB (long inline keys or certificates are cheap), but parsing
 * is also bounded by YAML_LIMITS.maxTokens (about 1 MiB of dense YAML).
 */
export const DEFAULT_POLICY_LIMITS: Readonly<PolicyLimits> = Object.freeze({ maxFileBytes: 4 * MiB, maxDirBytes: 16 * MiB, maxFiles: 10_000 });

/**
 * Fixed bounds on the YAML inside one file. The yaml library recurses per nesting level (a few
 * thousand levels abort the process with a fatal V8 error that no try/catch sees), expands aliases
 * (an "alias bomb" grows exponentially) and keeps every document in memory, so these are enforced
 * while tokens stream in, before any of that can happen.
 */
export const YAML_LIMITS = Object.freeze({
  /** Nesting of collections (block or flow); a policy document needs about 10. */
  maxDepth: 64,
  /**
   * Lexical tokens in one file (typical policy YAML has one per 2-3 bytes, so about 1 MiB of it;
   * long strings such as inline certificates cost one token each). Parsing costs 3-10 µs and up to
   * 1 KB of memory per token, whatever the bytes: this bounds one file to a few seconds.
   */
  maxTokens: 500_000,
  /** YAML documents in one file. */
  maxDocuments: 50_000,
  /** The yaml library's own measure of alias expansion per document (its default, stated here). */
  maxAliasCount: 100,
  /** Errors listed for one file; more would only bury the first ones (and cost memory). */
  maxErrorsPerFile: 100,
});

/** Errors listed for a whole load (files with errors each add up to maxErrorsPerFile). */
const MAX_ERRORS_PER_LOAD = 1_000;

/** How a load treats documents that are not Signalbox documents. */
export interface LoadOptions {
  /**
   * Such a document is an error (SB_NOT_SIGNALBOX) and the directory is invalid, as a CI check
   * wants (`--strict`); by default it is skipped with a warning and the rest applies.
   */
  strict?: boolean;
}

/** What parsing one file gave. */
export interface ParsedFile {
  docs: LoadedDoc[];
  errors: PolicyError[];
  /** Documents skipped as not Signalbox documents (empty under `strict`: they are errors then). */
  warnings: PolicyError[];
}

/** Sizes as people read them: "4 MiB", "1.5 MiB", "512 KiB", "300 bytes". */
export function formatBytes(n: number): string {
  const unit = (u: number, name: string) => `${Number.isInteger(n / u) ? n / u : (n / u).toFixed(1)} ${name}`;
  if (n >= MiB) return unit(MiB, 'MiB');
  if (n >= KiB) return unit(KiB, 'KiB');
  return `${n} bytes`;
}

/** `child` is `parent` or lies below it (both absolute and normalized). */
function within(parent: string, child: string): boolean {
  const rel = path.relative(parent, child);
  return rel === '' || (rel !== '..' && !rel.startsWith(`..${path.sep}`) && !path.isAbsolute(rel));
}

/** How a path is shown in errors: relative to the working directory when it lies below it. */
export function displayPath(file: string): string {
  const rel = path.relative(process.cwd(), file);
  return rel && !rel.startsWith('..') && !path.isAbsolute(rel) ? rel : file;
}

const POLICY_FILE = /\.ya?ml$/;

/**
 * Every *.yaml / *.yml name below `dir`, sorted, whatever kind of file it is (the read decides:
 * a folder or FIFO with such a name is an error for that name). Hidden names are skipped and
 * symlinked folders are not followed (no loops, no walking out of the directory). Stops once more
 * than `maxFiles` names are found. A sub-folder that cannot be read is an error for that folder.
 */
async function listPolicyFiles(dir: string, maxFiles: number, errors: PolicyError[]): Promise<{ files: string[]; tooMany: boolean }> {
  const out: string[] = [];
  let tooMany = false;
  const walk = async (d: string): Promise<void> => {
    // opendir streams entries: a folder of a million unrelated files is never held in memory at once.
    for await (const e of await fs.opendir(d)) {
      if (e.name.startsWith('.')) continue;
      const full = path.join(d, e.name);
      if (POLICY_FILE.test(e.name)) {
        if (out.length >= maxFiles) {
          tooMany = true;
          return; // leaving the loop closes the folder
        }
        out.push(full);
      } else if (e.isDirectory()) {
        try {
          await walk(full);
        } catch (err) {
          errors.push({ code: ErrorCode.FILE_READ, file: displayPath(full), message: `cannot read this folder: ${errnoOf(err)}` });
        }
        if (tooMany) return;
      }
    }
  };
  await walk(dir);
  return { files: out.sort(), tooMany };
}

function errnoOf(e: unknown): string {
  return (
    (e as NodeJS.ErrnoException)?.code ??
    String((e as Error)?.message ?? e)
      .split('\n')[0]!
      .slice(0, 200)
  );
}

function kindOf(st: Stats): string {
  if (st.isDirectory()) return 'a directory';
  if (st.isFIFO()) return 'a named pipe (FIFO)';
  if (st.isCharacterDevice()) return 'a character device';
  if (st.isBlockDevice()) return 'a block device';
  if (st.isSocket()) return 'a socket';
  return 'not a regular file';
}

/** A policy file that passed the checks made before reading: the path to open and what it was then. */
interface Checked {
  file: string;
  real: string;
  stat: Stats;
}

/**
 * lstat, not open: opening a FIFO blocks until a writer appears and a device may never end. A
 * symlink is followed only to a regular file inside the (real) policy directory.
 */
function checkPolicyFile(file: string, realRoot: string): Checked | string {
  let st: Stats;
  try {
    st = lstatSync(file);
  } catch (e) {
    return `cannot read: ${errnoOf(e)}`;
  }
  let real = file;
  if (st.isSymbolicLink()) {
    try {
      real = realpathSync(file);
    } catch (e) {
      return `is a symbolic link that does not resolve (${errnoOf(e)})`;
    }
    if (!within(realRoot, real)) return 'is a symbolic link leading outside the policy directory; links are followed only to regular files inside it';
    try {
      st = lstatSync(real);
    } catch (e) {
      return `cannot read: ${errnoOf(e)}`;
    }
  }
  if (!st.isFile()) return `is ${kindOf(st)}${real !== file ? ' (through a symbolic link)' : ''}, not a regular file: only regular files are read`;
  return { file, real, stat: st };
}

const fileLimitNote = '--max-policy-file-bytes, SIGNALBOX_MAX_POLICY_FILE_BYTES';
const dirLimitNote = '--max-policy-dir-bytes, SIGNALBOX_MAX_POLICY_DIR_BYTES';
const utf8 = new TextDecoder('utf-8', { fatal: true });

/**
 * Reads a checked file, at most `maxBytes` of it. The file can be swapped between the check and the
 * open: O_NONBLOCK keeps a FIFO put in its place from blocking, O_NOFOLLOW refuses a symlink, and
 * the inode must still be the one checked. Synchronous on purpose: for regular files this is a
 * few microseconds each (400 small files: ~10 ms, where fs.promises took 80-200 ms on a busy
 * 2-core machine), and the size was bounded before.
 */
function readChecked(c: Checked, maxBytes: number): { text: string; bytes: number } | { error: string } {
  let fd: number;
  try {
    fd = openSync(c.real, fsc.O_RDONLY | (fsc.O_NONBLOCK ?? 0) | (fsc.O_NOFOLLOW ?? 0));
  } catch (e) {
    return { error: `cannot read: ${errnoOf(e)}` };
  }
  try {
    const now = fstatSync(fd);
    if (!now.isFile() || now.dev !== c.stat.dev || now.ino !== c.stat.ino)
      return { error: 'was replaced while it was read; it is read again at the next reload' };
    // Sized from fstat, grown if the file grew; one byte past the limit tells "too big" without reading it all.
    let buf = Buffer.allocUnsafe(Math.min(now.size, maxBytes) + 1);
    let n = 0;
    for (;;) {
      if (n === buf.length) {
        if (n > maxBytes) return { error: `grew past the limit of ${formatBytes(maxBytes)} per policy file while it was read (${fileLimitNote})` };
        const bigger = Buffer.allocUnsafe(Math.min(buf.length * 2, maxBytes + 1));
        buf.copy(bigger, 0, 0, n);
        buf = bigger;
      }
      const got = readSync(fd, buf, n, buf.length - n, null);
      if (got === 0) break;
      n += got;
    }
    if (n > maxBytes) return { error: `grew past the limit of ${formatBytes(maxBytes)} per policy file while it was read (${fileLimitNote})` };
    try {
      return { text: utf8.decode(buf.subarray(0, n)), bytes: n };
    } catch {
      return { error: 'is not UTF-8 text (a binary file?)' };
    }
  } catch (e) {
    return { error: `cannot read: ${errnoOf(e)}` };
  } finally {
    closeSync(fd);
  }
}

function lineFinder(doc: Document, counter: LineCounter) {
  return (p: (string | number)[]): number | undefined => {
    let node: unknown = doc.contents;
    let last: number | undefined = isNode(node) && node.range ? node.range[0] : undefined;
    for (const seg of p) {
      if (!isNode(node) || !('items' in node)) break;
      const items = (node as { items: unknown[] }).items;
      if (isMap(node)) {
        const pair = items.find((it) => isPair(it) && isScalar(it.key) && String(it.key.value) === String(seg));
        if (!isPair(pair)) break;
        if (isNode(pair.key) && pair.key.range) last = pair.key.range[0];
        node = pair.value;
      } else if (typeof seg === 'number') {
        node = items[seg];
        if (isNode(node) && node.range) last = node.range[0];
      } else break;
    }
    return last === undefined ? undefined : counter.linePos(last).line;
  };
}

function zodMessage(issue: z.core.$ZodIssue): string {
  switch (issue.code) {
    case 'invalid_type':
      if ((issue as { input?: unknown }).input === undefined) return 'required';
      return issue.message.startsWith('Invalid input') ? `expected ${issue.expected}` : issue.message;
    case 'invalid_value':
      return `must be one of ${issue.values.map((v) => JSON.stringify(v)).join(', ')}`;
    case 'invalid_union': {
      const note = (issue as { note?: string }).note;
      if (note === 'No matching discriminator') return `unknown or missing "${(issue as { discriminator?: string }).discriminator ?? 'type'}"`;
      return issue.message;
    }
    default:
      return issue.message;
  }
}

/** The API group of Signalbox's documents (`signalbox.dev` of `signalbox.dev/v1alpha1`). */
const API_GROUP = API_VERSION.slice(0, API_VERSION.indexOf('/'));

/** A value as messages quote it: JSON (control characters show), cut to 100 characters. */
function quoted(v: string): string {
  return JSON.stringify(v.length > 100 ? `${v.slice(0, 100)}...` : v);
}

/**
 * An apiVersion that is Signalbox's, or meant to be: its group is signalbox.dev (any version: a
 * wrong version is an error, not a reason to skip), it names Signalbox, or it is a near miss of
 * Signalbox's (a typo must be reported, not skipped).
 */
function signalboxApiVersion(v: string): boolean {
  const slash = v.indexOf('/');
  const group = slash < 0 ? v : v.slice(0, slash);
  return group === API_GROUP || /signalbox/i.test(v) || editDistance(v.slice(0, 200), API_VERSION) <= 3 || editDistance(group.slice(0, 200), API_GROUP) <= 2;
}

/**
 * Why a parsed document is not a Signalbox document, or undefined when it is one or may be one
 * (then it is validated, and what is wrong with it is an error). Read from the YAML tree, before
 * the document is turned into data: a document skipped is never converted.
 *
 * Not Signalbox's: a mapping with neither `apiVersion` nor `kind` at its top (an Envoy bootstrap,
 * a docker compose file), or whose `apiVersion` is a string of another API group (`v1`, `apps/v1`,
 * `gateway.networking.k8s.io/v1`). Everything else is taken as Signalbox's: a document with a
 * `kind` and no `apiVersion`, an apiVersion that is not a string or is Signalbox's or close to it
 * (signalboxApiVersion), a repeated apiVersion key, and a document that is not a mapping.
 */
function notSignalbox(doc: Document.Parsed): string | undefined {
  const top = doc.contents;
  if (!isMap(top)) return undefined;
  const apiVersions: unknown[] = [];
  let hasKind = false;
  for (const pair of top.items) {
    if (!isScalar(pair.key)) continue;
    if (pair.key.value === 'apiVersion') apiVersions.push(isScalar(pair.value) ? pair.value.value : pair.value);
    else if (pair.key.value === 'kind') hasKind = true;
  }
  if (apiVersions.length === 0) return hasKind ? undefined : 'it has neither apiVersion nor kind';
  const v = apiVersions[0];
  if (apiVersions.length > 1 || typeof v !== 'string' || signalboxApiVersion(v)) return undefined;
  return `its apiVersion is ${quoted(v)}`;
}

/** The warning (or, under strict, the error) for a document notSignalbox() turned away. */
function notSignalboxProblem(reason: string, source: SourceRef, line: number | undefined, strict: boolean): PolicyError {
  const what = `not a Signalbox document (${reason}; Signalbox documents have apiVersion: ${API_VERSION})`;
  const message = strict
    ? `${what}: refused under --strict; keep other YAML out of the policy directory`
    : `${what}: skipped; keep other YAML out of the policy directory (--strict refuses it)`;
  return { code: ErrorCode.NOT_SIGNALBOX, file: source.file, doc: source.doc, line, message };
}

/** Validates one parsed document; pushes errors and returns the typed value when valid. */
function validateDoc(raw: unknown, source: SourceRef, lineOf: LoadedDoc['lineOf'], errors: PolicyError[]): LoadedDoc | undefined {
  const at = (p: (string | number)[], code: ErrorCode, message: string) =>
    errors.push({ code, file: source.file, doc: source.doc, path: formatPath(p), line: lineOf(p), message });
  if (typeof raw !== 'object' || raw === null || Array.isArray(raw)) {
    at([], ErrorCode.SCHEMA, 'a policy document must be a mapping with apiVersion, kind, metadata and spec');
    return undefined;
  }
  const obj = raw as Record<string, unknown>;
  const kind = obj.kind;
  if (typeof kind !== 'string') {
    at(['kind'], ErrorCode.SCHEMA, `required: the kind of policy, one of ${Object.keys(KINDS).join(', ')}`);
    return undefined;
  }
  if (!(kind in KINDS)) {
    if ((PLANNED_KINDS as readonly string[]).includes(kind)) {
      at(
        ['kind'],
        ErrorCode.UNSUPPORTED_KIND,
        `kind ${kind} is part of the policy language but not enforced by this version of Signalbox; it is refused rather than ignored`,
      );
    } else {
      // JSON-quoted and cut: control characters show (a NUL made "Service" look like a known kind) and a huge value stays short.
      at(
        ['kind'],
        ErrorCode.UNKNOWN_KIND,
        `unknown kind ${JSON.stringify(kind.length > 100 ? `${kind.slice(0, 100)}...` : kind)}${didYouMean(kind, Object.keys(KINDS))}; expected one of ${Object.keys(KINDS).join(', ')}`,
      );
    }
    return undefined;
  }
  if (obj.apiVersion !== API_VERSION) {
    at(['apiVersion'], ErrorCode.SCHEMA, `must be "${API_VERSION}"`);
  }
  const result = KINDS[kind as Kind].safeParse(raw, { reportInput: true }); // input: tells "missing" from "wrong type"
  if (!result.success) {
    for (const issue of result.error.issues) {
      const p = issue.path.filter((s): s is string | number => typeof s !== 'symbol');
      if (p.length === 1 && p[0] === 'apiVersion') continue; // reported above
      if (issue.code === 'unrecognized_keys') {
        for (const key of issue.keys) at([...p, key], ErrorCode.SCHEMA, `unknown field "${key}"`);
      } else {
        at(p, ErrorCode.SCHEMA, zodMessage(issue));
      }
    }
    return undefined;
  }
  if (errors.some((e) => e.file === source.file && e.doc === source.doc)) return undefined;
  const value = result.data as PolicyMap[Kind];
  return { kind: kind as Kind, name: value.metadata.name, source, value, lineOf };
}

/** A YAML limit was reached; the file is refused with this message. */
class YamlLimitError extends Error {
  constructor(
    message: string,
    readonly line?: number,
  ) {
    super(message);
  }
}

/**
 * Lexes, parses and composes `text` the way the yaml library's parseAllDocuments does, one token at
 * a time, so that nesting depth and the document count are checked before the composer (which
 * recurses per level) sees anything. Duplicate keys are not checked here: the library's check is
 * quadratic in a mapping's size (20,000 keys: 10 s), see duplicateKeys().
 */
function composeBounded(text: string, counter: LineCounter): { docs: Document.Parsed[]; streamErrors: { message: string; pos: [number, number] }[] } {
  const parser = new Parser(counter.addNewLine);
  const composer = new Composer({ uniqueKeys: false, prettyErrors: false });
  const docs: Document.Parsed[] = [];
  const line = () => counter.lineStarts.length;
  const take = (doc: Document.Parsed) => {
    if (docs.length >= YAML_LIMITS.maxDocuments)
      throw new YamlLimitError(`YAML: more than ${YAML_LIMITS.maxDocuments} documents in one file; split it`, line());
    docs.push(doc);
  };
  counter.addNewLine(0); // as Parser.parse() does before the first token
  let tokens = 0;
  for (const lexeme of new Lexer().lex(text)) {
    if (++tokens > YAML_LIMITS.maxTokens)
      throw new YamlLimitError(`YAML: more than ${YAML_LIMITS.maxTokens} tokens in one file (about 1 MiB of policy YAML); split it`, line());
    for (const token of parser.next(lexeme)) for (const doc of composer.next(token)) take(doc);
    if (parser.stack.length > YAML_LIMITS.maxDepth + 1) throw new YamlLimitError(`YAML: nested more than ${YAML_LIMITS.maxDepth} levels deep`, line()); // +1: the document itself
  }
  for (const token of parser.end()) for (const doc of composer.next(token)) take(doc);
  for (const doc of composer.end()) take(doc);
  return { docs, streamErrors: docs.length === 0 ? composer.streamInfo().errors : [] };
}

/**
 * Offsets of keys that repeat an earlier key of the same mapping (scalar keys compared by value,
 * as the yaml library's uniqueKeys does), in linear time and without recursion.
 */
function duplicateKeys(doc: Document.Parsed): number[] {
  const found: number[] = [];
  const stack: unknown[] = [doc.contents];
  while (stack.length > 0) {
    const node = stack.pop();
    if (isMap(node)) {
      const seen = new Set<unknown>();
      for (const pair of node.items) {
        const key = isScalar(pair.key) ? pair.key.value : pair.key;
        if (seen.has(key)) found.push(isNode(pair.key) && pair.key.range ? pair.key.range[0] : (node.range?.[0] ?? 0));
        seen.add(key);
        stack.push(pair.key, pair.value);
      }
    } else if (isSeq(node)) {
      for (const item of node.items) stack.push(item);
    }
  }
  return found.sort((a, b) => a - b);
}

/** For an alias expansion refused: the line of the document's first alias, where the reader can start looking. */
function firstAliasLine(doc: Document.Parsed, e: unknown, lineAt: (offset: number) => number): number | undefined {
  if (!(e instanceof ReferenceError)) return undefined;
  let offset: number | undefined;
  visit(doc, {
    Alias(_key, node) {
      offset = node.range?.[0];
      return visit.BREAK;
    },
  });
  return offset === undefined ? undefined : lineAt(offset);
}

/** What an exception thrown while turning a document into data means, for people. */
function thrownMessage(e: unknown): string {
  if (e instanceof ReferenceError && /alias/i.test(e.message)) {
    return `YAML: aliases expand too much (more than the limit of ${YAML_LIMITS.maxAliasCount}; an "alias bomb"?): ${e.message}`;
  }
  if (e instanceof RangeError) return 'YAML: the document is too deeply nested or too large to read';
  return `YAML: cannot be read: ${errnoOf(e)}`;
}

/**
 * Parses and validates one file's text. Never throws: every problem is an error naming the file.
 * Documents that are not Signalbox documents are warnings, or errors under `opts.strict`.
 */
export function parsePolicyText(text: string, file: string, opts: LoadOptions = {}): ParsedFile {
  const errors: PolicyError[] = [];
  const warnings: PolicyError[] = [];
  let skipped = 0;
  const docs: LoadedDoc[] = [];
  const counter = new LineCounter();
  const lineAt = (offset: number) => counter.linePos(offset).line;
  try {
    let parsed: ReturnType<typeof composeBounded>;
    // The yaml library makes an Error per problem; a broken file can have hundreds of thousands,
    // and their stack traces (never shown) were most of the time and memory spent on it.
    const stackTraceLimit = Error.stackTraceLimit;
    Error.stackTraceLimit = 0;
    try {
      parsed = composeBounded(text, counter);
    } catch (e) {
      if (e instanceof YamlLimitError) errors.push({ code: ErrorCode.YAML_SYNTAX, file, line: e.line, message: e.message });
      else errors.push({ code: ErrorCode.YAML_SYNTAX, file, message: thrownMessage(e) });
      return { docs, errors, warnings };
    } finally {
      Error.stackTraceLimit = stackTraceLimit;
    }
    for (const err of parsed.streamErrors)
      errors.push({ code: ErrorCode.YAML_SYNTAX, file, line: lineAt(err.pos[0]), message: `YAML: ${err.message.split('\n')[0]}` });
    for (const [i, doc] of parsed.docs.entries()) {
      if (errors.length > YAML_LIMITS.maxErrorsPerFile) break;
      const source = { file, doc: i + 1 };
      try {
        if (doc.errors.length > 0) {
          for (const err of doc.errors.slice(0, YAML_LIMITS.maxErrorsPerFile + 1)) {
            const line = err.linePos?.[0]?.line ?? (err.pos ? lineAt(err.pos[0]) : undefined);
            errors.push({ code: ErrorCode.YAML_SYNTAX, file, doc: i + 1, line, message: `YAML: ${err.message.split('\n')[0]}` });
          }
          continue;
        }
        if (doc.contents === null || (isScalar(doc.contents) && doc.contents.value === null)) continue; // an empty document (e.g. a trailing ---)
        // Someone else's document: neither its keys nor its values are Signalbox's to judge.
        const foreign = notSignalbox(doc);
        if (foreign !== undefined) {
          const line = doc.contents?.range ? lineAt(doc.contents.range[0]) : undefined;
          if (opts.strict) errors.push(notSignalboxProblem(foreign, source, line, true));
          else if (++skipped <= YAML_LIMITS.maxErrorsPerFile) warnings.push(notSignalboxProblem(foreign, source, line, false));
          continue;
        }
        const dups = duplicateKeys(doc);
        if (dups.length > 0) {
          for (const at of dups.slice(0, YAML_LIMITS.maxErrorsPerFile + 1))
            errors.push({ code: ErrorCode.YAML_SYNTAX, file, doc: i + 1, line: lineAt(at), message: 'YAML: Map keys must be unique' });
          continue;
        }
        const loaded = validateDoc(doc.toJS({ maxAliasCount: YAML_LIMITS.maxAliasCount }), source, lineFinder(doc, counter), errors);
        if (loaded) docs.push(loaded);
      } catch (e) {
        errors.push({ code: ErrorCode.YAML_SYNTAX, file, doc: i + 1, line: firstAliasLine(doc, e, lineAt), message: thrownMessage(e) });
      }
    }
  } catch (e) {
    // Nothing above should throw; if something does, it is still this file's error, not the caller's.
    errors.push({ code: ErrorCode.YAML_SYNTAX, file, message: thrownMessage(e) });
  }
  if (skipped > warnings.length) {
    warnings.push({
      code: ErrorCode.NOT_SIGNALBOX,
      file,
      message: `${skipped - warnings.length} more documents that are not Signalbox documents were skipped (${skipped} in all)`,
    });
  }
  return { docs, errors: capErrors(errors, YAML_LIMITS.maxErrorsPerFile, file), warnings };
}

/** The first `max` errors, and one more saying how many were left out. */
function capErrors(errors: PolicyError[], max: number, where: string): PolicyError[] {
  if (errors.length <= max) return errors;
  return [...errors.slice(0, max), { code: errors[max]!.code, file: where, message: `more errors than the ${max} listed; fix these first` }];
}

/** The first `max` warnings of a load, and one more saying how many were left out. */
function capWarnings(warnings: PolicyError[], max: number, where: string): PolicyError[] {
  if (warnings.length <= max) return warnings;
  return [...warnings.slice(0, max), { code: ErrorCode.NOT_SIGNALBOX, file: where, message: `more warnings than the ${max} listed` }];
}

/**
 * Parse results by file, so that a reload re-parses and re-validates only the files whose text
 * changed: on a large directory (1,000 routes) YAML parsing and schema validation are most of a
 * reload. Results are shared between loads; later stages only read them. One per watched directory.
 */
export class PolicyParseCache {
  private entries = new Map<string, { text: string; strict: boolean; result: ParsedFile }>();
  /**
   * The last load that listed and read the whole directory without a directory-wide problem: each
   * file's size and what it gave. A load told which files changed starts from it (see LoadHint).
   */
  last?: CompleteLoad;

  parse(text: string, file: string, opts: LoadOptions = {}): ParsedFile {
    const strict = opts.strict === true;
    const hit = this.entries.get(file);
    if (hit && hit.text === text && hit.strict === strict) return hit.result;
    const result = parsePolicyText(text, file, { strict });
    this.entries.set(file, { text, strict, result });
    return result;
  }

  /** Forgets the files a load did not see (deleted or renamed). */
  retain(files: Set<string>): void {
    for (const f of this.entries.keys()) if (!files.has(f)) this.entries.delete(f);
  }
}

/** What one file of a complete load gave (the errors include those found before reading it). */
interface FileOutcome {
  size: number;
  docs: LoadedDoc[];
  errors: PolicyError[];
  warnings: PolicyError[];
}

interface Gathered {
  docs: LoadedDoc[];
  errors: PolicyError[];
  warnings: PolicyError[];
  /** Each file's first document's index in `docs`. */
  docStart: Map<string, number>;
}

interface CompleteLoad {
  dir: string;
  realRoot: string;
  limits: PolicyLimits;
  /** LoadOptions.strict of that load: a load with the other setting reads every file again. */
  strict: boolean;
  /** In the order the load read them (sorted). */
  files: string[];
  /**
   * The same files as errors show them (displayPath), and the working directory that was computed
   * against: a hinted load hands them out again instead of one `path.relative` per file.
   */
  shown: string[];
  cwd: string;
  /** The sum of the outcomes' sizes. */
  total: number;
  /** The outcomes gathered in file order, once a hinted load has gathered them (see loadChanged). */
  flat?: Gathered;
  /** Each file by its absolute path (the watcher's paths are resolved before they are looked up). */
  byAbsolute: Map<string, string>;
  outcomes: Map<string, FileOutcome>;
}

/**
 * Which files changed since the last load, as the watcher saw them (absolute paths). Only
 * modifications of files the last load read: a file added or removed, a folder event, or a
 * watcher error calls for a full load (no hint).
 */
export interface LoadHint {
  changed: ReadonlySet<string>;
}

/** Gives the event loop a turn (admin API, xDS streams) between files of a long load. */
const YIELD_AFTER_MS = 20;

/**
 * The result of a load that read its files: errors and warnings capped, and a directory whose
 * files hold documents but not one Signalbox document is an error. Applying it would take every
 * route and cluster away from every proxy, and it is far likelier a --policies pointing at the
 * wrong folder (Envoy's, a Kubernetes one) than a wish to empty the mesh.
 */
function finished(dir: string, docs: LoadedDoc[], errors: PolicyError[], warnings: PolicyError[], shown: string[]): LoadResult {
  if (docs.length === 0 && errors.length === 0 && warnings.length > 0) {
    errors.push({
      code: ErrorCode.NO_POLICIES,
      file: displayPath(dir),
      message:
        'no Signalbox documents: every document found is not a Signalbox document (see the warnings), so nothing is applied; is --policies the right directory?',
    });
  }
  return {
    dir,
    docs,
    errors: capErrors(errors, MAX_ERRORS_PER_LOAD, displayPath(dir)),
    warnings: capWarnings(warnings, MAX_ERRORS_PER_LOAD, displayPath(dir)),
    files: shown,
  };
}

/**
 * Loads every policy file below `dir`, within `limits` (defaults: DEFAULT_POLICY_LIMITS). Never
 * throws and never hangs: problems, including limits reached, become errors naming the file.
 * Documents that are not Signalbox documents are skipped with a warning, or are errors under
 * `opts.strict`.
 */
export async function loadPolicyDir(
  dir: string,
  cache?: PolicyParseCache,
  limits: Partial<PolicyLimits> = {},
  hint?: LoadHint,
  opts: LoadOptions = {},
): Promise<LoadResult> {
  const lim: PolicyLimits = { ...DEFAULT_POLICY_LIMITS, ...limits };
  const strict = opts.strict === true;
  if (hint && cache?.last) {
    const r = loadChanged(dir, cache, lim, strict, cache.last, hint);
    if (r) return r;
  }
  const errors: PolicyError[] = [];
  const warnings: PolicyError[] = [];
  const docs: LoadedDoc[] = [];
  let files: string[] = [];
  let shown: string[] | undefined;
  if (cache) cache.last = undefined;
  try {
    let realRoot: string;
    try {
      realRoot = await fs.realpath(dir);
      const listed = await listPolicyFiles(dir, lim.maxFiles, errors);
      files = listed.files;
      if (listed.tooMany) {
        errors.push({
          code: ErrorCode.FILE_READ,
          file: displayPath(dir),
          message: `more than ${lim.maxFiles} policy files, the limit (--max-policy-files, SIGNALBOX_MAX_POLICY_FILES); nothing was read`,
        });
        return { dir, docs, errors, warnings, files: files.map(displayPath) };
      }
    } catch (e) {
      errors.push({ code: ErrorCode.FILE_READ, file: displayPath(dir), message: `cannot read the policy directory: ${errnoOf(e)}` });
      return { dir, docs, errors, warnings, files: files.map(displayPath) };
    }
    if (files.length === 0 && errors.length === 0) {
      errors.push({ code: ErrorCode.NO_POLICIES, file: displayPath(dir), message: 'no *.yaml or *.yml policy files found' });
    }
    // Every check before anything is read: kinds, links, then sizes (each file, then their total).
    const readable: Checked[] = [];
    let total = 0;
    // Kept as the starting point of the next hinted load if nothing directory-wide goes wrong.
    let complete = cache !== undefined && errors.length === 0;
    const outcomes = new Map<string, FileOutcome>();
    let linked = false;
    for (const file of files) {
      const c = checkPolicyFile(file, realRoot);
      const refused =
        typeof c === 'string'
          ? c
          : c.stat.size > lim.maxFileBytes
            ? `is ${formatBytes(c.stat.size)}, over the limit of ${formatBytes(lim.maxFileBytes)} per policy file (${fileLimitNote}); not read`
            : undefined;
      if (refused !== undefined) {
        const e: PolicyError = { code: ErrorCode.FILE_READ, file: displayPath(file), message: refused };
        errors.push(e);
        outcomes.set(file, { size: 0, docs: [], errors: [e], warnings: [] });
      } else {
        readable.push(c as Checked);
        total += (c as Checked).stat.size;
        if ((c as Checked).real !== file) linked = true;
      }
    }
    if (total > lim.maxDirBytes) {
      errors.push({
        code: ErrorCode.FILE_READ,
        file: displayPath(dir),
        message: `policy files total ${formatBytes(total)}, over the limit of ${formatBytes(lim.maxDirBytes)} per policy directory (${dirLimitNote}); nothing was read`,
      });
      return { dir, docs, errors: capErrors(errors, MAX_ERRORS_PER_LOAD, displayPath(dir)), warnings, files: files.map(displayPath) };
    }
    let read = 0;
    let lastYield = performance.now();
    for (const c of readable) {
      if (performance.now() - lastYield > YIELD_AFTER_MS) {
        await new Promise((resolve) => setImmediate(resolve));
        lastYield = performance.now();
      }
      const shown = displayPath(c.file);
      const got = readChecked(c, lim.maxFileBytes);
      if ('error' in got) {
        const e: PolicyError = { code: ErrorCode.FILE_READ, file: shown, message: got.error };
        errors.push(e);
        outcomes.set(c.file, { size: 0, docs: [], errors: [e], warnings: [] });
        continue;
      }
      read += got.bytes;
      if (read > lim.maxDirBytes) {
        errors.push({
          code: ErrorCode.FILE_READ,
          file: displayPath(dir),
          message: `policy files grew past the limit of ${formatBytes(lim.maxDirBytes)} per policy directory while they were read (${dirLimitNote})`,
        });
        complete = false;
        break;
      }
      const r = cache ? cache.parse(got.text, shown, { strict }) : parsePolicyText(got.text, shown, { strict });
      outcomes.set(c.file, { size: got.bytes, docs: r.docs, errors: r.errors, warnings: r.warnings });
      docs.push(...r.docs);
      errors.push(...r.errors);
      warnings.push(...r.warnings);
    }
    shown = files.map(displayPath);
    cache?.retain(new Set(shown));
    // A symbolic link's target can change without an event for the link: such a directory is always read whole.
    if (cache)
      cache.last =
        complete && !linked && outcomes.size === files.length
          ? {
              dir,
              realRoot,
              limits: lim,
              strict,
              files,
              shown,
              cwd: process.cwd(),
              total: read,
              byAbsolute: new Map(files.map((f) => [path.resolve(f), f])),
              outcomes,
            }
          : undefined;
  } catch (e) {
    // A bug above must not take the control plane down: it is reported like any unreadable input.
    errors.push({ code: ErrorCode.FILE_READ, file: displayPath(dir), message: `the policy directory could not be loaded: ${errnoOf(e)}` });
  }
  return finished(dir, docs, errors, warnings, shown ?? files.map(displayPath));
}

/**
 * A load that re-reads only the files the watcher saw change, and takes every other file's
 * outcome from the last complete load: a one-route edit in a directory of 4,000 files costs one
 * lstat, one read and one parse instead of 4,000 of each, and nothing per unchanged file (its
 * display path, the total size and the gathered documents are kept from the last load). Undefined (a full load is needed) when
 * the hint names a file that load did not read, a changed file is gone or is not a regular file
 * any more, the limits or the strictness moved, or the total passes the directory limit (the full
 * load reports it). Unchanged files keep their warnings as well as their documents and errors.
 */
function loadChanged(dir: string, cache: PolicyParseCache, lim: PolicyLimits, strict: boolean, last: CompleteLoad, hint: LoadHint): LoadResult | undefined {
  if (last.dir !== dir || last.strict !== strict || last.cwd !== process.cwd() || JSON.stringify(last.limits) !== JSON.stringify(lim)) return undefined;
  if (hint.changed.size > last.files.length / 2) return undefined;
  const fresh = new Map<string, FileOutcome>();
  const changed = new Set<string>();
  for (const p of hint.changed) {
    const f = last.byAbsolute.get(path.resolve(p));
    if (f === undefined) return undefined;
    changed.add(f);
  }
  let total = last.total;
  for (const f of changed) total -= last.outcomes.get(f)!.size;
  for (const file of changed) {
    const c = checkPolicyFile(file, last.realRoot);
    if (typeof c === 'string') return undefined;
    if (c.stat.size > lim.maxFileBytes) return undefined;
    total += c.stat.size;
    if (total > lim.maxDirBytes) return undefined;
    const shown = displayPath(file);
    const got = readChecked(c, lim.maxFileBytes);
    if ('error' in got) return undefined;
    const r = cache.parse(got.text, shown, { strict });
    fresh.set(file, { size: got.bytes, docs: r.docs, errors: r.errors, warnings: r.warnings });
  }
  // The last load's documents with the changed files' ones put in their place, when each changed
  // file gave as many documents as before and, before and after, no error or warning (nothing
  // else moves); otherwise every file's outcome is gathered again, in file order.
  const outcomes = last.outcomes;
  let flat = last.flat;
  for (const [f, o] of fresh) {
    const was = outcomes.get(f)!;
    if (o.docs.length !== was.docs.length || o.errors.length + o.warnings.length + was.errors.length + was.warnings.length > 0) flat = undefined;
    outcomes.set(f, o);
  }
  if (flat) {
    const docs = flat.docs.slice();
    for (const [f, o] of fresh) {
      const at = flat.docStart.get(f)!;
      for (let i = 0; i < o.docs.length; i++) docs[at + i] = o.docs[i]!;
    }
    flat = { ...flat, docs };
  } else flat = gather(last.files, outcomes);
  cache.last = { ...last, total, outcomes, flat };
  return finished(dir, flat.docs.slice(), flat.errors.slice(), flat.warnings.slice(), last.shown.slice());
}

/** Every file's documents, errors and warnings, in file order, and where each file's documents begin. */
function gather(files: readonly string[], outcomes: ReadonlyMap<string, FileOutcome>): Gathered {
  const docs: LoadedDoc[] = [];
  const errors: PolicyError[] = [];
  const warnings: PolicyError[] = [];
  const docStart = new Map<string, number>();
  for (const f of files) {
    const o = outcomes.get(f)!;
    docStart.set(f, docs.length);
    for (const d of o.docs) docs.push(d);
    for (const e of o.errors) errors.push(e);
    for (const w of o.warnings) warnings.push(w);
  }
  return { docs, errors, warnings, docStart };
}
