/**
 * Headless Chromium for the end-to-end tests of the report and the dashboard (playwright-core with Debian's
 * chromium; nothing is downloaded). Test support only: playwright-core is a development dependency.
 */
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import type { BrowserContext, Page } from 'playwright-core';

/** Where the tests look for Chromium. */
export const CHROMIUM_PATH = process.env.DYNN_CHROMIUM ?? '/usr/bin/chromium';

/** Where tests write screenshots (relative to the working directory). */
export const ARTIFACTS_DIR = '.artifacts';

/** Why browser tests are skipped here, or false when Chromium is present. */
export function browserSkipReason(): string | false {
  return existsSync(CHROMIUM_PATH) ? false : `Chromium not found at ${CHROMIUM_PATH} (install Debian's chromium, or set DYNN_CHROMIUM): browser tests skipped`;
}

/** Flags for a machine without network: no background connections that would fail noisily. */
const FLAGS = ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync', '--disable-dev-shm-usage'];

/** A running headless browser with a fresh profile; `close` removes the profile. */
export interface TestBrowser {
  context: BrowserContext;
  /** A new page whose console errors and page errors are collected in `errors`. */
  page(): Promise<{ page: Page; errors: string[] }>;
  close(): Promise<void>;
}

/** Launches Chromium with a fresh user-data-dir. */
export async function launchBrowser(): Promise<TestBrowser> {
  const { chromium } = await import('playwright-core');
  const profile = mkdtempSync(path.join(os.tmpdir(), 'dynn-chromium-'));
  const context = await chromium.launchPersistentContext(profile, { executablePath: CHROMIUM_PATH, args: FLAGS, headless: true, viewport: { width: 1280, height: 900 } });
  return {
    context,
    async page() {
      const page = await context.newPage();
      const errors: string[] = [];
      page.on('console', (m) => {
        if (m.type() === 'error') errors.push(m.text());
      });
      page.on('pageerror', (e) => errors.push(e.message));
      return { page, errors };
    },
    async close() {
      await context.close();
      rmSync(profile, { recursive: true, force: true });
    },
  };
}

export type { Page };
