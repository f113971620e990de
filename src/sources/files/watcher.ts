// Watches the policy directory and calls back once per burst of changes, with the paths it saw.
//
// The first change after a quiet spell goes out almost at once (after SETTLE_MS, which is enough
// for a write and its rename to land together); only changes that keep coming are coalesced over
// the debounce. Editors' temporary and backup files are not watched, so a save-then-rename is one
// change of the policy file.
import path from 'node:path';
import { watch, type FSWatcher } from 'chokidar';

/** What changed in a burst: the paths seen, and whether only a full read can tell (folders, errors). */
export interface PolicyChanges {
  /** Absolute paths of files added, changed or removed. */
  paths: Set<string>;
  /** A folder came or went, or the watcher failed: the paths alone do not say what is there. */
  full: boolean;
}

/** How long the first change after a quiet spell waits for the events that come with it. */
export const SETTLE_MS = 10;

/** Dot-files (editors' locks, atomic writers' temporaries), and editors' temporary and backup files. */
const IGNORED_NAME = /^\.|~$|\.sw[a-p]$|\.tmp$|___jb_(tmp|old)___$|^4913$/;

export function isIgnoredName(name: string): boolean {
  return IGNORED_NAME.test(name);
}

/**
 * `ready` resolves once the watcher sees every later change (its first scan is done): read the
 * directory after it, or an edit made in between is neither read nor reported.
 * `onError` hears the watcher's own failures (a folder that cannot be read, the system's limit on
 * watches reached). Without a listener an 'error' event would be thrown and end the process; by
 * default a failure triggers a full reload instead, whose load reports whatever is wrong with the files.
 */
export function watchPolicies(
  dir: string,
  debounceMs: number,
  onChange: (changes: PolicyChanges) => void,
  onError?: (err: Error) => void,
): { ready: Promise<void>; close(): Promise<void> } {
  const settle = Math.min(SETTLE_MS, debounceMs);
  let timer: NodeJS.Timeout | undefined;
  let pending: PolicyChanges = { paths: new Set(), full: false };
  /** When the last callback ran, and when the burst being gathered began. */
  let lastFire = -Infinity;
  let burstStart = 0;
  const watcher: FSWatcher = watch(dir, {
    ignoreInitial: true,
    awaitWriteFinish: false,
    // Symlinks are watched as links, never followed: a link to / or to a folder above would have the
    // watcher walk the whole file system (the loader reads only links to files inside the directory).
    followSymlinks: false,
    ignored: (p) => p !== dir && isIgnoredName(path.basename(p)),
  });
  const fire = () => {
    timer = undefined;
    lastFire = performance.now();
    const changes = pending;
    pending = { paths: new Set(), full: false };
    onChange(changes);
  };
  const seen = (p: string | undefined, full: boolean) => {
    if (p !== undefined) pending.paths.add(path.resolve(p));
    if (full) pending.full = true;
    const now = performance.now();
    if (!timer) burstStart = now;
    // Quiet before: settle briefly. Still coming: wait out the debounce after the last event, but
    // never past one debounce after the burst began.
    const quiet = now - lastFire >= debounceMs && now - burstStart < debounceMs;
    const at = quiet ? now + settle : Math.min(now + debounceMs, burstStart + debounceMs);
    clearTimeout(timer);
    timer = setTimeout(fire, Math.max(0, at - now));
  };
  watcher.on('all', (event, p) => seen(p, event === 'addDir' || event === 'unlinkDir'));
  // chokidar re-attaches its watch of a file after a rename replaced it; a second rename onto the
  // same name within that window produces no 'change' (measured: 14 of 400 renames 40 ms apart
  // were never reported, so those edits were never loaded). The raw events of the directory's own
  // watch still name the file: each is treated as a change of it (the debounce merges doubles).
  watcher.on('raw', (_event, name, details) => {
    const watched = (details as { watchedPath?: string } | undefined)?.watchedPath;
    if (!watched || !name) return;
    const full = path.basename(watched) === name ? watched : path.join(watched, name);
    if (full !== dir && !isIgnoredName(path.basename(full))) seen(full, false);
  });
  // Until its first scan is done the watcher may miss a change: a caller reads the directory after
  // this, so an edit made before is in that read and one made after is reported.
  const ready = new Promise<void>((resolve) => {
    watcher.once('ready', () => resolve());
    watcher.once('error', () => resolve());
  });
  watcher.on('error', (err) => (onError ? onError(err as Error) : seen(undefined, true)));
  return {
    ready,
    close: async () => {
      clearTimeout(timer);
      await watcher.close();
    },
  };
}
