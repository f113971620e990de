// Writing the control plane's state files. Every file under the data directory, and every file
// `signalbox token` or `signalbox bootstrap` writes, goes through these: a temporary file in the
// same folder, fsync, rename (write-file-atomic), so a crash or a full disk leaves the old file or
// the new one, never half of one. Files are 0600 unless the caller says they are public.
import { chmodSync, mkdirSync, promises as fs } from 'node:fs';
import path from 'node:path';
import writeFileAtomic from 'write-file-atomic';

/** Writes `data` to `file` atomically with the given mode (default 0600), creating its folder (0700). */
export async function writeStateFile(file: string, data: string | Buffer, mode = 0o600): Promise<void> {
  await fs.mkdir(path.dirname(file), { recursive: true, mode: 0o700 });
  await writeFileAtomic(file, data, { mode, fsync: true });
  await fs.chmod(file, mode); // an existing file's mode is otherwise kept
}

/** The synchronous twin, for CLI commands that write a file and exit. */
export function writeStateFileSync(file: string, data: string | Buffer, mode = 0o600): void {
  mkdirSync(path.dirname(file), { recursive: true, mode: 0o700 });
  writeFileAtomic.sync(file, data, { mode, fsync: true });
  chmodSync(file, mode);
}
