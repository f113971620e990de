// Watches the policy directory and calls back once per burst of changes.
import { watch, type FSWatcher } from 'chokidar';

/**
 * `onError` hears the watcher's own failures (a folder that cannot be read, the system's limit on
 * watches reached). Without a listener an 'error' event would be thrown and end the process; by
 * default a failure triggers a reload instead, whose load reports whatever is wrong with the files.
 */
export function watchPolicies(dir: string, debounceMs: number, onChange: () => void, onError?: (err: Error) => void): { close(): Promise<void> } {
  let timer: NodeJS.Timeout | undefined;
  const watcher: FSWatcher = watch(dir, {
    ignoreInitial: true,
    awaitWriteFinish: false,
    // Symlinks are watched as links, never followed: a link to / or to a folder above would have the
    // watcher walk the whole file system (the loader reads only links to files inside the directory).
    followSymlinks: false,
    ignored: (p) => /(^|\/)\.[^/]+$/.test(p) && p !== dir,
  });
  const fire = () => {
    clearTimeout(timer);
    timer = setTimeout(onChange, debounceMs);
  };
  watcher.on('all', fire);
  watcher.on('error', (err) => (onError ? onError(err as Error) : fire()));
  return {
    close: async () => {
      clearTimeout(timer);
      await watcher.close();
    },
  };
}
