// The console on a server that asks for tokens (`serve --auth-file`), in
// headless Chromium: it asks for a token, refuses one the server does not
// know, shows a read-only token no write control, streams live changes
// through its stream cookie, signs out, and shows an admin everything.
// Run by tests/it/ui.rs with the tokens in STOCKFLOW_TOKENS.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { URL, SHOTS, number, launch } from './browser.mjs';

const TOKENS = JSON.parse(process.env.STOCKFLOW_TOKENS ?? '{}');
let browser;
let page;
let pageErrors;

let cookieRequests = 0;

before(async () => {
  ({ browser, page, pageErrors } = await launch());
  page.on('request', (r) => {
    if (r.method() === 'POST' && r.url().endsWith('/v1/session/stream')) cookieRequests += 1;
  });
});

after(async () => { await browser?.close(); });

/** A write with the ingest token, as a till would send it. */
async function ingest(body) {
  const response = await fetch(`${URL}/v1/events`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', authorization: `Bearer ${TOKENS.ingest}` },
    body: JSON.stringify(body),
  });
  assert.ok(response.ok, `${response.status} ${await response.text()}`);
}

async function signIn(secret) {
  await page.fill('#token', secret);
  await page.click('form.signin button[type="submit"]');
}

test('the console asks for a token and shows only what it allows', async () => {
  await ingest({ eventId: 'ui-auth-1', eventType: 'RECEIPT', sku: 'AUTH-1', locationId: 'S1', quantity: 5 });
  // A malformed event: a dead letter the viewer may see but not replay.
  await fetch(`${URL}/v1/events`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', authorization: `Bearer ${TOKENS.ingest}` },
    body: '{"eventId": "ui-auth-bad", "eventType": "RECEIPT"}',
  });

  await page.goto(`${URL}/#/items/AUTH-1`);
  await page.getByRole('heading', { name: 'Sign in' }).waitFor();
  await signIn('sf_not-a-token');
  await page.getByText('This server does not know that token.').waitFor();

  await signIn(TOKENS.viewer);
  await page.locator('[data-testid="signed-in-as"]').waitFor();
  assert.equal(await page.textContent('[data-testid="signed-in-as"]'), 'viewer');
  // The page the URL named, with its numbers.
  await page.waitForFunction(() => document.querySelector('[data-testid="item-total-onHand"]')?.textContent === '5');
  assert.equal(await page.getByRole('link', { name: 'Simulator' }).isVisible(), false, 'no simulator for a viewer');

  // Live: a change made elsewhere shows up without a reload.
  await ingest({ eventId: 'ui-auth-2', eventType: 'RECEIPT', sku: 'AUTH-1', locationId: 'S1', quantity: 1000 });
  await page.waitForFunction(() => document.querySelector('[data-testid="item-total-onHand"]')?.textContent === '1,005',
    null, { timeout: 10000 });
  assert.equal(await page.textContent('#live'), '● live');
  await page.screenshot({ path: `${SHOTS}/auth-viewer-item.png` });

  await page.goto(`${URL}/#/dead-letters`);
  await page.locator('[data-testid="dead-letter-row"]').first().waitFor();
  const replay = page.locator('button', { hasText: 'Replay' });
  assert.ok(await replay.count() > 0, 'the letters are listed');
  assert.equal(await replay.first().isVisible(), false, 'but a viewer sees no Replay');
  assert.equal(await page.locator('button', { hasText: 'Discard' }).first().isVisible(), false);

  await page.goto(`${URL}/#/shop`);
  await page.locator('[data-testid="checkout"]').waitFor({ state: 'attached' });
  assert.equal(await page.locator('[data-testid="checkout"]').isVisible(), false, 'no checkout for a viewer');
  assert.ok(await page.getByText('Checking out needs a token with the orders role.').isVisible());

  await page.getByRole('button', { name: 'Sign out' }).click();
  await page.getByRole('heading', { name: 'Sign in' }).waitFor();
  assert.equal(await page.locator('[data-testid="signed-in-as"]').count(), 0);

  await signIn(TOKENS.admin);
  await page.locator('[data-testid="signed-in-as"]').waitFor();
  assert.equal(await page.textContent('[data-testid="signed-in-as"]'), 'admin');
  assert.ok(await page.getByRole('link', { name: 'Simulator' }).isVisible());
  await page.goto(`${URL}/#/dead-letters`);
  await page.locator('[data-testid="dead-letter-row"]').first().waitFor();
  assert.ok(await page.getByRole('button', { name: 'Replay' }).first().isVisible());
  await page.goto(`${URL}/#/shop`);
  await page.locator('[data-testid="checkout"]').waitFor({ state: 'attached' });
  assert.ok(await page.locator('[data-testid="checkout"]').isVisible());
  assert.equal(await page.getByText('Checking out needs a token with the orders role.').isVisible(), false);
  await page.screenshot({ path: `${SHOTS}/auth-admin-shop.png` });
  assert.deepEqual(pageErrors.filter((e) => !/401|403/.test(e)), []);
  // One cookie per live view opened (four of them here), not a storm of
  // retries.
  assert.ok(cookieRequests >= 1 && cookieRequests <= 8, `${cookieRequests} cookie requests`);
});
