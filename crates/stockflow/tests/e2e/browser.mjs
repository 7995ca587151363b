// What both browser suites share: where the server and Chromium are, where
// screenshots go, and a page that records script errors. Set by
// tests/it/ui.rs (`run_browser_tests`).

import { mkdirSync } from 'node:fs';
import { chromium } from 'playwright-core';

export const URL = process.env.STOCKFLOW_URL ?? 'http://127.0.0.1:8080';
export const SHOTS = process.env.STOCKFLOW_SCREENSHOTS ?? 'screenshots';
const CHROMIUM = process.env.CHROMIUM ?? '/usr/bin/chromium';
mkdirSync(SHOTS, { recursive: true });

/** A number as a page shows it ("1,234" → 1234). */
export const number = (text) => Number(String(text).replace(/[^0-9-]/g, ''));

/** Headless Chromium with one desktop-sized page; `pageErrors` collects
 * its uncaught errors and console errors. */
export async function launch() {
  const browser = await chromium.launch({
    executablePath: CHROMIUM,
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking'],
  });
  const page = await browser.newPage({ viewport: { width: 1280, height: 900 } });
  const pageErrors = [];
  page.on('pageerror', (error) => pageErrors.push(String(error)));
  page.on('console', (m) => { if (m.type() === 'error') pageErrors.push(m.text()); });
  return { browser, page, pageErrors };
}
