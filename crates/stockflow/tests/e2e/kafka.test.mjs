// The web UI served by a Kafka-mode instance, in headless Debian Chromium,
// driven by Playwright. Run by `cargo test` (tests/it/kafka.rs), which
// starts a broker and one instance and passes its URL in STOCKFLOW_URL.
// Every number the pages show here went through the broker: levels from
// their owners, an item's totals from its SKU's home partition, the
// overview from the members' activity, the order through a saga.

import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { URL, SHOTS, launch } from './browser.mjs';

let browser;
let page;
let pageErrors = [];

async function api(path, { method = 'GET', body } = {}) {
  const response = await fetch(URL + path, body === undefined ? { method } : {
    method, headers: { 'content-type': 'application/json' }, body: JSON.stringify(body),
  });
  const data = await response.json();
  assert.ok(response.ok, `${method} ${path}: ${response.status} ${JSON.stringify(data)}`);
  return data;
}

async function open(hash, ready) {
  await page.goto(`${URL}/#/${hash}`);
  await page.locator(ready).first().waitFor({ timeout: 20000 });
}

before(async () => {
  await api('/v1/locations/KWEB', { method: 'PUT', body: { name: 'Web shop', type: 'online', region: 'north' } });
  await api('/v1/locations/KSTORE', { method: 'PUT', body: { name: 'High Street', type: 'store', region: 'south' } });
  await api('/v1/products/KSKU-1', { method: 'PUT', body: { name: 'Kafka mug', price: 9.5 } });
  await api('/v1/events?wait=applied', {
    method: 'POST',
    body: [
      { eventId: 'ui-k1', eventType: 'RECEIPT', sku: 'KSKU-1', locationId: 'KWEB', quantity: 20, sourceSystem: 'pos' },
      { eventId: 'ui-k2', eventType: 'RECEIPT', sku: 'KSKU-1', locationId: 'KSTORE', quantity: 7, sourceSystem: 'pos' },
    ],
  });
  ({ browser, page, pageErrors } = await launch());
});

after(async () => {
  await browser?.close();
  // Every view the suite opened loaded without a failed request.
  assert.deepEqual(pageErrors, []);
});

test('the overview shows the cluster\'s totals and who sent events', async () => {
  await open('', '[data-testid="events-per-second"]');
  await page.waitForFunction(() => document.querySelector('[data-testid="total-on-hand"]').textContent.replace(/,/g, '') === '27',
    null, { timeout: 20000 });
  const row = page.locator('[data-testid="source-row"]', { hasText: 'KWEB' });
  await row.waitFor({ timeout: 20000 });
  // Sources are grouped by name whatever its case: "pos" shows as POS.
  assert.match(await row.textContent(), /POS/);
  await page.screenshot({ path: `${SHOTS}/kafka-overview.png`, fullPage: true });
});

test("an item shows its levels, its roll-up, a location's history and the stock as of a time", async () => {
  await open('items/KSKU-1', '[data-testid="levels"] tr[data-location="KSTORE"]');
  assert.equal(await page.locator('[data-testid="levels"] tbody tr').count(), 2);
  await page.waitForFunction(() => document.querySelector('[data-testid="item-total-onHand"]').textContent.replace(/,/g, '') === '27',
    null, { timeout: 20000 });
  // History comes from the level's owner, whichever instance serves the page.
  await page.selectOption('#history-location', 'KSTORE');
  await page.locator('figure.chart svg[aria-label*="KSKU-1 at KSTORE"]').waitFor({ timeout: 20000 });
  // As of a minute from now: everything sent so far, gathered from every member.
  const pad = (n) => String(n).padStart(2, '0');
  const d = new Date(Date.now() + 60000);
  const later = `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())}T${pad(d.getHours())}:${pad(d.getMinutes())}`;
  await page.fill('#as-of', later);
  await page.click('button:has-text("Show stock as of then")');
  const total = page.locator('[data-testid="as-of-total"] [data-field="onHand"]');
  await total.waitFor({ timeout: 20000 });
  assert.equal(Number((await total.textContent()).replace(/,/g, '')), 27);
  await page.screenshot({ path: `${SHOTS}/kafka-item.png`, fullPage: true });
});

test('checking out in the storefront reserves through the order saga', async () => {
  await open('shop', '.product[data-sku="KSKU-1"]');
  const card = page.locator('.product[data-sku="KSKU-1"]');
  await page.waitForFunction(() => /\d/.test(document.querySelector('.product[data-sku="KSKU-1"] [data-testid="availability"]').textContent),
    null, { timeout: 20000 });
  // The button says "Added ✓ (1 in cart)" for a moment, and adds again.
  await card.locator('button').click();
  await card.locator('button', { hasText: 'Added ✓ (1 in cart)' }).click();
  await page.click('[data-testid="checkout"]');
  await page.locator('[data-testid="order-status"]').waitFor({ timeout: 20000 });
  assert.match(await page.textContent('[data-testid="order-status"]'), /^Reserved/);
  // The line's owner applies the reservation within a cycle of the answer.
  let level;
  for (let i = 0; i < 100; i += 1) {
    level = await api('/v1/stock/KSKU-1/KWEB');
    if (level.reserved === 2) break;
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
  assert.equal(level.reserved, 2);
  assert.equal(level.available, 18);
  await page.screenshot({ path: `${SHOTS}/kafka-storefront.png`, fullPage: true });
});

test('the simulator runs the controlled scenario and random traffic through the cluster', async () => {
  await open('simulator', '[data-testid="run-scenario"]');
  await page.click('[data-testid="run-scenario"]');
  await page.locator('[data-testid="scenario-verdict"]').waitFor({ timeout: 30000 });
  assert.match(await page.textContent('[data-testid="scenario-verdict"]'), /Every level is as expected/);
  assert.equal(await page.locator('[data-testid="scenario-row"] td.ok').count(), 4);
  await page.screenshot({ path: `${SHOTS}/kafka-simulator.png`, fullPage: true });
  // Random events go to the canonical topic like POST /v1/events.
  const sent = await api('/v1/simulator/send', { method: 'POST', body: { count: 500 } });
  assert.equal(sent.accepted + sent.duplicates + sent.rejected, 500);
  assert.ok(sent.accepted > 400, JSON.stringify(sent));
  // The scenario's 15 lines, then the 500.
  assert.equal((await api('/v1/simulator')).sent, 15 + 500);
});
