// Faults of the data directory as messages that say what is wrong, where, and what to do.
// Node reports a recursive mkdir under a read-only or unwritable parent as ENOENT on the deepest
// folder ("ENOENT: mkdir .data/ca"), which sends people looking for a missing folder; here the
// component that cannot be created is found and its own error (EROFS, EACCES, ENOTDIR...) is told.
// Nothing here ever prints a file's content, so key files can go through it.
import { promises as fs, statSync } from 'node:fs';
import path from 'node:path';
import { SignalboxError, type ErrorCode } from '../errors.js';
import { writeStateFile } from './files.js';

const CAUSES: Record<string, string> = {
  EACCES: 'permission denied',
  EPERM: 'operation not permitted',
  EROFS: 'read-only file system',
  ENOSPC: 'no space left on device',
  EDQUOT: 'disk quota exceeded',
  ENOTDIR: 'a part of the path is a file, not a folder',
  EISDIR: 'it is a folder, not a file',
  EEXIST: 'it exists and is not a folder',
  EIO: 'input/output error (a failing disk?)',
  EMFILE: 'too many open files',
  ENOENT: 'no such file or folder',
};

const codeOf = (e: unknown): string => (e as NodeJS.ErrnoException)?.code ?? 'error';

/** "EROFS (read-only file system)", or the system's own message for codes not listed. */
export function causeOf(e: unknown): string {
  const code = codeOf(e);
  const known = CAUSES[code];
  if (known) return `${code} (${known})`;
  return (e as Error)?.message ? `${(e as Error).message.split(',')[0]}` : code;
}

/** What to do about `code` for files in `folder`; empty when there is nothing general to say. */
export function remedyFor(code: string, folder: string, access: 'read' | 'write' = 'write'): string {
  switch (code) {
    case 'EACCES':
    case 'EPERM':
      return `let the user Signalbox runs as${typeof process.getuid === 'function' ? ` (uid ${process.getuid()})` : ''} ${access} ${folder}${access === 'write' ? ', or give another --data-dir' : ''}`;
    case 'EROFS':
      return `remount ${folder} read-write or give a writable --data-dir`;
    case 'ENOSPC':
    case 'EDQUOT':
      return `free space on the file system holding ${folder}, then start again`;
    case 'ENOTDIR':
      return `give another --data-dir, or move ${folder} away if it is in the way`;
    default:
      return '';
  }
}

/**
 * The true reason `dir` cannot be created: the deepest existing ancestor, and the error its next
 * component gives when created alone (no `recursive`, which would hide it behind ENOENT).
 */
async function folderFault(dir: string, first: unknown): Promise<{ where: string; code: string; cause: string }> {
  let existing = dir;
  const missing: string[] = [];
  for (;;) {
    try {
      const st = await fs.stat(existing);
      if (!st.isDirectory()) return { where: existing, code: 'ENOTDIR', cause: `${existing} is a file, not a folder` };
      break;
    } catch (e) {
      const parent = path.dirname(existing);
      if ((codeOf(e) !== 'ENOENT' && codeOf(e) !== 'ENOTDIR') || parent === existing)
        return { where: existing, code: codeOf(e), cause: `${existing}: ${causeOf(e)}` };
      missing.unshift(path.basename(existing));
      existing = parent;
    }
  }
  if (missing.length) {
    const next = path.join(existing, missing[0]!);
    try {
      await fs.mkdir(next, { mode: 0o700 });
    } catch (e) {
      if (codeOf(e) !== 'EEXIST') return { where: existing, code: codeOf(e), cause: `creating ${next} failed with ${causeOf(e)}` };
    }
  }
  return { where: existing, code: codeOf(first), cause: causeOf(first) };
}

/** Creates `dir` (0700) and its parents, or throws an error naming the folder that fails and why. */
export async function ensureFolder(dir: string, errorCode: ErrorCode): Promise<void> {
  try {
    await fs.mkdir(dir, { recursive: true, mode: 0o700 });
  } catch (e) {
    const f = await folderFault(dir, e);
    const remedy = remedyFor(f.code, f.where);
    throw new SignalboxError(errorCode, `cannot create the folder ${dir}: ${f.cause}${remedy ? `; ${remedy}` : ''}`);
  }
}

/** The first component of `p`'s path that exists but is a file (what an ENOTDIR is about). */
function fileOnPath(p: string): string | undefined {
  for (let dir = path.dirname(p); path.dirname(dir) !== dir; dir = path.dirname(dir)) {
    try {
      if (!statSync(dir).isDirectory()) return dir;
    } catch {
      // missing or itself under a file: look further up
    }
  }
  return undefined;
}

/** The error for a failed read of `file` (`what`: "the CA certificate"...), with the cause in words. */
export function readError(errorCode: ErrorCode, what: string, file: string, e: unknown): SignalboxError {
  if (codeOf(e) === 'ENOTDIR') {
    const blocker = fileOnPath(file);
    if (blocker) return new SignalboxError(errorCode, `cannot read ${what} ${file}: ${blocker} is a file, not a folder; ${remedyFor('ENOTDIR', blocker)}`);
  }
  const remedy = remedyFor(codeOf(e), codeOf(e) === 'EACCES' || codeOf(e) === 'EPERM' ? file : path.dirname(file), 'read');
  return new SignalboxError(errorCode, `cannot read ${what} ${file}: ${causeOf(e)}${remedy ? `; ${remedy}` : ''}`);
}

/**
 * writeStateFile (atomic: temporary file, fsync, rename) with a true message on failure: the file,
 * the cause, and what to do. The old file, if any, is left untouched by a failed write.
 */
export async function writeDataFile(file: string, data: string | Buffer, mode: number, errorCode: ErrorCode): Promise<void> {
  const dir = path.dirname(file);
  await ensureFolder(dir, errorCode);
  try {
    await writeStateFile(file, data, mode);
  } catch (e) {
    const remedy = remedyFor(codeOf(e), dir);
    throw new SignalboxError(errorCode, `cannot write ${file}: ${causeOf(e)}${remedy ? `; ${remedy}` : ''}`);
  }
}
