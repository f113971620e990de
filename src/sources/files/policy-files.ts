// Reads the files a policy names (TLS certificates and keys, JWKS files) under the rules that keep
// policy authors away from the control plane's own files. The file source owns every read of the
// policy directory; the model gets what this returns (see PolicyFiles in src/model/model.ts).
import { constants as fsc, promises as fs, type Stats } from 'node:fs';
import path from 'node:path';
import type { PolicyFileResult } from '../../api/documents.js';

export type { PolicyFileResult };

/** Where files a policy names may not be read from (see policyFileReader). */
export interface PolicyFileRules {
  /** The control plane's data directory (CA and token keys). */
  dataDir?: string;
  /** More files or folders no policy may read (the CA key, the xDS server key, the admin token file...). */
  forbidden?: string[];
}

/** Largest file (certificate chain, private key) a policy may name. */
export const POLICY_FILE_MAX_BYTES = 1024 * 1024;
const REFUSED = { refused: true } as const;

/** `child` is `parent` or lies below it (both absolute and normalized). */
function within(parent: string, child: string): boolean {
  const rel = path.relative(parent, child);
  return rel === '' || (rel !== '..' && !rel.startsWith(`..${path.sep}`) && !path.isAbsolute(rel));
}

async function realOr(p: string): Promise<string> {
  try {
    return await fs.realpath(p);
  } catch {
    return p;
  }
}

/**
 * Returns a reader for files a policy names (relative to `baseDir`, the policy directory). Policy
 * authors are not trusted with the control plane's own files: what gets read is sent to proxies. A
 * reference is refused, with one message whatever the reason, unless it is relative without `..`,
 * resolves (symlinks followed) to a regular file of at most 1 MiB inside the real policy directory,
 * and not under `opts.dataDir` nor any of `opts.forbidden` (nor another link to a forbidden file).
 * Only a file that is plainly missing inside the policy directory gets its own error (ENOENT), since
 * that reveals nothing outside it.
 */
export function policyFileReader(baseDir: string, opts: PolicyFileRules = {}): (rel: string) => Promise<PolicyFileResult> {
  let roots: Promise<{ base?: string; banned: string[]; bannedFiles: Set<string> }> | undefined;
  const getRoots = () =>
    (roots ??= (async () => {
      const base = await fs.realpath(baseDir).catch(() => undefined);
      // Both spellings of each: it may not exist yet, or be reached through a symlink.
      const named = [...(opts.dataDir === undefined ? [] : [opts.dataDir]), ...(opts.forbidden ?? [])].filter((p) => p !== '').map((p) => path.resolve(p));
      const banned = [...new Set([...named, ...(await Promise.all(named.map(realOr)))])];
      // A forbidden file may also have a hard link inside the policy directory: refuse its inode too.
      const bannedFiles = new Set<string>();
      for (const p of named) {
        const st = await fs.stat(p).catch(() => undefined);
        if (st?.isFile()) bannedFiles.add(`${st.dev}:${st.ino}`);
      }
      return { base, banned, bannedFiles };
    })());

  return async (rel) => {
    // Lexical checks first: an absolute or climbing path is refused before any file system call.
    if (rel === '' || rel.includes('\0') || path.isAbsolute(rel) || path.win32.isAbsolute(rel) || rel.split(/[\\/]/).includes('..')) return REFUSED;
    const { base, banned, bannedFiles } = await getRoots();
    if (!base) return REFUSED;
    const allowed = (real: string, self = false) => within(base, real) && (self || real !== base) && !banned.some((b) => within(b, real));
    const lexical = path.join(base, rel);

    let real: string;
    try {
      real = await fs.realpath(lexical);
    } catch {
      return (await missingInside(lexical, base, allowed)) ? { error: 'ENOENT' } : REFUSED;
    }
    if (!allowed(real)) return REFUSED;

    // lstat, not open: opening a FIFO blocks until a writer appears, and a device may never end.
    let st: Stats;
    try {
      st = await fs.lstat(real);
    } catch {
      return REFUSED;
    }
    if (!st.isFile() || st.size > POLICY_FILE_MAX_BYTES || bannedFiles.has(`${st.dev}:${st.ino}`)) return REFUSED;

    // The file can be swapped between lstat and open: O_NONBLOCK keeps a FIFO put in its place from
    // blocking, O_NOFOLLOW refuses a symlink, and the inode must still be the one checked above.
    let handle: fs.FileHandle;
    try {
      handle = await fs.open(real, fsc.O_RDONLY | (fsc.O_NONBLOCK ?? 0) | (fsc.O_NOFOLLOW ?? 0));
    } catch (e) {
      // Name the cause (EACCES, say) only if the path still leads to the file checked above: after a
      // swap it could be about a file elsewhere.
      const code = (e as NodeJS.ErrnoException).code;
      const still = await fs.realpath(lexical).catch(() => undefined);
      return still === real && code !== 'ELOOP' && code !== 'ENXIO' ? { error: code ?? 'error' } : REFUSED;
    }
    try {
      const now = await handle.stat();
      if (!now.isFile() || now.dev !== st.dev || now.ino !== st.ino) return REFUSED;
      // Read at most one byte past the limit, so a file that grew since the check is caught, not read whole.
      const buf = Buffer.alloc(POLICY_FILE_MAX_BYTES + 1);
      let n = 0;
      for (;;) {
        const { bytesRead } = await handle.read(buf, n, buf.length - n, null);
        if (bytesRead === 0) break;
        n += bytesRead;
        if (n > POLICY_FILE_MAX_BYTES) return REFUSED;
      }
      return { text: buf.toString('utf8', 0, n) };
    } catch (e) {
      return { error: (e as NodeJS.ErrnoException).code ?? 'error' };
    } finally {
      await handle.close();
    }
  };
}

/**
 * After realpath failed: is `lexical` simply missing inside the policy directory? Only when its first
 * missing component is absent (not a dangling symlink, whose target could be anywhere) and the
 * existing directory above it resolves to an allowed place. Otherwise an ENOENT would tell whether
 * something outside exists.
 */
async function missingInside(lexical: string, base: string, allowed: (real: string, self?: boolean) => boolean): Promise<boolean> {
  for (let p = lexical; p.length > base.length; p = path.dirname(p)) {
    try {
      await fs.lstat(p);
      return false;
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'ENOENT') return false;
    }
    const parent = await fs.realpath(path.dirname(p)).catch(() => undefined);
    if (parent !== undefined) return allowed(parent, true);
  }
  return false;
}
