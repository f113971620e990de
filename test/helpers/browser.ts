// A headless Chromium (Debian's, provisioned by scripts/provision-chromium.sh) driven by
// playwright-core, for the dashboard's browser tests. Fails loudly when it cannot be had.
import { execFile } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import { chromium, type BrowserContext, type Page } from 'playwright-core';
import { repoRoot } from './envoy.js';

const run = promisify(execFile);

/** Debian's Chromium (scripts/provision-chromium.sh); fails loudly when it cannot be had. */
export async function chromiumPath(): Promise<string> {
  if (process.env.SIGNALBOX_CHROMIUM_BIN) return process.env.SIGNALBOX_CHROMIUM_BIN;
  try {
    const { stdout } = await run('bash', [path.join(repoRoot(), 'scripts/provision-chromium.sh')], { maxBuffer: 1 << 20 });
    return stdout.trim().split('\n').pop()!;
  } catch (e) {
    throw new Error(`Chromium could not be provisioned: ${(e as { stderr?: string }).stderr ?? (e as Error).message}`);
  }
}

export interface Browser {
  context: BrowserContext;
  page: Page;
  /** Script errors the page logged. */
  consoleErrors: string[];
  close(): Promise<void>;
}

/** A headless Chromium with a throwaway profile and one page. */
export async function openBrowser(): Promise<Browser> {
  const executablePath = await chromiumPath();
  const profile = mkdtempSync(path.join(os.tmpdir(), 'sb-chromium-'));
  const context = await chromium.launchPersistentContext(profile, {
    executablePath,
    headless: true,
    args: [
      '--headless',
      '--no-sandbox',
      '--disable-gpu',
      '--disable-quic',
      '--no-first-run',
      '--disable-background-networking',
      '--disable-component-update',
      '--disable-sync',
    ],
    viewport: { width: 1400, height: 1000 },
    timeout: 60_000,
  });
  const page = context.pages()[0] ?? (await context.newPage());
  const consoleErrors: string[] = [];
  page.on('console', (m) => m.type() === 'error' && consoleErrors.push(m.text()));
  page.on('pageerror', (e) => consoleErrors.push(e.message));
  return {
    context,
    page,
    consoleErrors,
    close: async () => {
      await context.close();
      rmSync(profile, { recursive: true, force: true });
    },
  };
}
