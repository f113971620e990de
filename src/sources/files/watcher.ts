// Watches the policy directory and calls back once per burst of changes.
import { watch, type FSWatcher } from 'chokidar';

export function watchPolicies(dir: string, debounceMs: number, onChange: () => void): { close(): Promise<void> } {
  let timer: NodeJS.Timeout | undefined;
  const watcher: FSWatcher = watch(dir, { ignoreInitial: true, awaitWriteFinish: false, ignored: (p) => /(^|\/)\.[^/]+$/.test(p) && p !== dir });
  const fire = () => {
    clearTimeout(timer);
    timer = setTimeout(onChange, debounceMs);
  };
  watcher.on('all', fire);
  return {
    close: async () => {
      clearTimeout(timer);
      await watcher.close();
    },
  };
}
