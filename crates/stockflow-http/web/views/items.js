// Item view: find a product by SKU or name; its totals and per-location
// levels updating live (changed cells flash), roll-ups by region and
// location type, a history chart for one location, and an as-of picker.

import { api, query, live, coalesce, throttle, flash, h, fill, num, time, table, problem, notFound, remembered, remember, sortHeads } from '../api.js';
import { lineChart } from '../chart.js';

const FIELDS = ['onHand', 'reserved', 'available', 'inTransit'];
const LABELS = { onHand: 'On hand', reserved: 'Reserved', available: 'Available', inTransit: 'In transit' };

const ITEMS_PAGE = 50;
const COLUMNS = [
  { label: 'SKU', value: (p) => p.sku },
  { label: 'Name', value: (p) => p.name },
  { label: 'Category', value: (p) => p.category },
  { label: 'Price', num: true, value: (p) => p.price },
];

function search(main) {
  // The search, its page and its sort are kept for the tab: back from an
  // item, the list is where it was.
  const place = { q: '', cursors: [null], key: 0, dir: 1, ...remembered('items') };
  const input = h('input', { type: 'search', id: 'item-search', name: 'q', value: place.q, autocomplete: 'off',
    placeholder: 'e.g. SKU-00001 or headlamp' });
  // Not a live region: a table read aloud at each keystroke is noise.
  // The page line below says, politely, what was found.
  const results = h('div', {});
  const prev = h('button', { type: 'button', onclick: () => { place.cursors.pop(); run(); } }, '← Previous');
  const next = h('button', { type: 'button' }, 'Next →');
  const info = h('span', { class: 'muted', role: 'status', 'data-testid': 'items-page' });
  let timer;
  let asked = 0;
  let products = [];
  const draw = (q) => {
    if (products.length === 0) {
      fill(results, h('p', { class: 'muted' }, q ? [`No product matches “${q}”. You can still open `,
        h('a', { href: `#/items/${encodeURIComponent(q)}` }, q), ' as a SKU.'] : 'The catalog is empty.'));
      return;
    }
    const { heads, sorted } = sortHeads(COLUMNS, place, () => { remember('items', place); draw(q); });
    const shown = sorted(products);
    fill(results, h('div', { class: 'scroll tall' }, h('table', { 'data-testid': 'products' }, h('thead', {}, h('tr', {}, heads)),
      h('tbody', {}, shown.map((p) => h('tr', {},
        h('th', { scope: 'row' }, h('a', { href: `#/items/${encodeURIComponent(p.sku)}` }, p.sku)),
        h('td', {}, p.name), h('td', {}, p.category ?? ''),
        h('td', { class: 'num' }, p.price != null ? p.price.toFixed(2) : '–')))))));
  };
  const run = async () => {
    const ask = ++asked;
    const q = input.value.trim();
    place.q = input.value;
    try {
      const after = place.cursors[place.cursors.length - 1] ?? undefined;
      const page = await api('/v1/products' + query({ q, limit: ITEMS_PAGE, after }));
      if (ask !== asked) return;
      products = page.products;
      draw(q);
      prev.disabled = place.cursors.length <= 1;
      next.disabled = !page.nextAfter;
      next.onclick = () => { place.cursors.push(page.nextAfter); run(); };
      info.textContent = products.length ? `Page ${place.cursors.length}: ${products.length} products${page.nextAfter ? ', more on the next page' : ''}. Sorting orders this page.` : '';
      remember('items', place);
    } catch (error) { fill(results, problem(error)); }
  };
  input.addEventListener('input', () => { clearTimeout(timer); place.cursors = [null]; timer = setTimeout(run, 200); });
  const form = h('form', { class: 'bar', role: 'search', onsubmit: (e) => { e.preventDefault(); place.cursors = [null]; run(); } },
    h('label', { for: 'item-search' }, 'Search products by SKU or name', input),
    h('button', { type: 'submit' }, 'Search'));
  fill(main, h('h1', {}, 'Items'), form, results, h('div', { class: 'pager' }, prev, next, info));
  run();
  input.focus();
}

function totalsCards(totals) {
  return FIELDS.map((f) => h('div', { class: 'card' }, h('div', { class: 'label' }, LABELS[f]),
    h('div', { class: 'value', 'data-testid': `item-total-${f}` }, num(totals[f]))));
}

/** A roll-up table; with `total`, a row for what no group holds (e.g.
 * locations without a region), so that the rows add up to the total. */
function rollup(title, groups, total, rest) {
  const rows = { ...(groups ?? {}) };
  if (total) {
    const held = Object.fromEntries(FIELDS.map((f) => [f, Object.values(rows).reduce((sum, g) => sum + (g[f] ?? 0), 0)]));
    const left = Object.fromEntries(FIELDS.map((f) => [f, (total[f] ?? 0) - held[f]]));
    if (FIELDS.some((f) => left[f] !== 0) || (total.levels ?? 0) > Object.values(rows).reduce((sum, g) => sum + (g.levels ?? 0), 0)) rows[rest] = left;
  }
  const names = Object.keys(rows);
  if (names.length === 0) return null;
  return h('section', { class: 'panel' }, h('h2', {}, title),
    table([{ label: title.replace('By ', '') }, ...FIELDS.map((f) => ({ label: LABELS[f], num: true }))],
      names.map((n) => h('tr', { 'data-group': n }, h('td', {}, n), FIELDS.map((f) => h('td', { class: 'num' }, num(rows[n][f])))))));
}

export function mount(main, [sku]) {
  if (!sku) return search(main);
  const head = h('div', {});
  const cards = h('div', { class: 'cards' });
  const body = h('tbody', {});
  const rollups = h('div', { class: 'two' });
  const historyPanel = h('div', {});
  const asOfOut = h('div', { 'aria-live': 'polite' });
  const errors = h('div', {});
  const picker = h('select', { id: 'history-location' });
  const asOfInput = h('input', { type: 'datetime-local', id: 'as-of', step: 1 });
  fill(main,
    h('p', {}, h('a', { href: '#/items' }, '← All items')),
    head, errors, cards,
    h('section', { class: 'panel' }, h('h2', {}, 'By location (live)'),
      h('div', { class: 'scroll' }, h('table', { 'data-testid': 'levels' },
        h('thead', {}, h('tr', {}, h('th', { scope: 'col' }, 'Location'),
          FIELDS.map((f) => h('th', { scope: 'col', class: 'num' }, LABELS[f])), h('th', { scope: 'col' }, 'Updated'))),
        body))),
    rollups,
    h('section', { class: 'panel' }, h('h2', {}, 'History'),
      h('div', { class: 'bar' }, h('label', { for: 'history-location' }, 'Location', picker)),
      historyPanel),
    h('section', { class: 'panel' }, h('h2', {}, 'As of a past time'),
      h('form', { class: 'bar', onsubmit: (e) => { e.preventDefault(); showAsOf(); } },
        h('label', { for: 'as-of' }, 'Date and time (your time zone)', asOfInput),
        h('button', { type: 'submit' }, 'Show stock as of then')),
      asOfOut));

  const rows = new Map(); // locationId -> {row, cells, level}
  const rowFor = (level) => {
    let entry = rows.get(level.locationId);
    if (!entry) {
      const cells = Object.fromEntries(FIELDS.map((f) => [f, h('td', { class: 'num', 'data-field': f })]));
      const updated = h('td', { class: 'muted' });
      const row = h('tr', { 'data-location': level.locationId },
        h('th', { scope: 'row' }, h('a', { href: `#/locations/${encodeURIComponent(level.locationId)}` }, level.locationId)),
        FIELDS.map((f) => cells[f]), updated);
      entry = { row, cells, updated, level: {} };
      rows.set(level.locationId, entry);
      const after = [...body.children].find((r) => r.dataset.location > level.locationId);
      body.insertBefore(row, after ?? null);
      picker.append(h('option', { value: level.locationId }, level.locationId));
    }
    return entry;
  };
  const show = (level, highlight) => {
    const entry = rowFor(level);
    for (const f of FIELDS) {
      if (entry.level[f] !== level[f]) {
        entry.cells[f].textContent = num(level[f]);
        if (highlight) {
          flash(entry.cells[f]);
        }
      }
    }
    // A live change without its time is stamped when it arrived, so the
    // cell ages like the others.
    entry.updated.textContent = time(level.updatedAt ?? new Date().toISOString());
    entry.level = { ...entry.level, ...level };
  };
  const renderTotals = () => {
    const totals = Object.fromEntries(FIELDS.map((f) => [f, 0]));
    for (const { level } of rows.values()) for (const f of FIELDS) totals[f] += level[f] ?? 0;
    fill(cards, totalsCards(totals));
  };

  const load = async () => {
    try {
      const [item, stock] = await Promise.all([
        api(`/v1/items/${encodeURIComponent(sku)}`),
        api(`/v1/stock/${encodeURIComponent(sku)}`).catch((e) => (e.status === 404 ? { locations: [] } : Promise.reject(e))),
      ]);
      const p = item.product;
      fill(head, h('h1', {}, p?.name ? `${p.name} ` : '', h('span', { class: 'muted' }, sku)),
        p ? h('p', { class: 'muted' }, [p.category, p.price != null ? `${p.price.toFixed(2)} ${p.currency ?? ''}` : null,
          `low-stock threshold ${p.lowStockThreshold ?? 'default'}`].filter(Boolean).join(' · ')) : null);
      for (const level of stock.locations) show(level, false);
      renderTotals();
      fill(rollups, rollup('By region', item.byRegion, item.totals, '(no region)'), rollup('By location type', item.byType));
      fill(errors);
    } catch (error) {
      if (error.status === 404) {
        gone = true;
        fill(main, notFound('Item not found', `No item “${sku}”: it is not in the catalog and no event has named it.`,
          ['#/items', '← All items']));
        return;
      }
      fill(errors, problem(error));
    }
  };
  let gone = false;

  const showHistory = async () => {
    const location = picker.value;
    if (gone) return undefined;
    if (!location) return fill(historyPanel, h('p', { class: 'muted' }, 'No location yet.'));
    try {
      const page = await api(`/v1/stock/${encodeURIComponent(sku)}/${encodeURIComponent(location)}/history?limit=500`);
      const events = [...page.events].reverse();
      const at = (e) => Date.parse(e.processedAt);
      fill(historyPanel, lineChart({
        label: `On hand and available of ${sku} at ${location}, last ${events.length} events`,
        step: true,
        series: [
          // Often equal: the dashed line stays visible on the solid one.
          { name: 'on hand', color: '#0b5cad', width: 3, points: events.map((e) => [at(e), e.level.onHand]) },
          { name: 'available', color: '#bc4c00', dash: '6 4', points: events.map((e) => [at(e), e.level.available]) },
        ],
      }), h('p', { class: 'muted' }, `${events.length} most recent events at ${location}.`));
    } catch (error) { fill(historyPanel, problem(error)); }
  };
  picker.addEventListener('change', showHistory);

  const showAsOf = async () => {
    if (!asOfInput.value) return fill(asOfOut, h('p', { class: 'error' }, 'Choose a date and time first.'));
    const at = new Date(asOfInput.value).toISOString();
    try {
      const then = await api(`/v1/stock/${encodeURIComponent(sku)}${query({ asOf: at })}`);
      fill(asOfOut, h('p', {}, `As of ${time(at)}:`),
        table([{ label: 'Location' }, ...FIELDS.map((f) => ({ label: LABELS[f], num: true }))],
          [...then.locations.map((l) => h('tr', {}, h('td', {}, l.locationId), FIELDS.map((f) => h('td', { class: 'num' }, num(l[f]))))),
            h('tr', { 'data-testid': 'as-of-total' }, h('th', { scope: 'row' }, 'Total'),
              FIELDS.map((f) => h('th', { class: 'num', 'data-field': f }, num(then.totals[f]))))]));
    } catch (error) { fill(asOfOut, problem(error)); }
  };

  // Live: keep the newest message per location; paint once per frame.
  // Messages that arrive while the page reads its state wait for it, and
  // then win: each carries the level after a change, so the newest one
  // per location is the current state.
  const pending = new Map();
  let loading = true;
  const paint = coalesce(() => {
    if (loading) return;
    for (const level of pending.values()) show(level, true);
    pending.clear();
    renderTotals();
  });
  // The chart and roll-ups are re-read, so at most every two seconds.
  const refreshHistory = throttle(2000, showHistory);
  const refreshRollups = throttle(2000, async () => {
    try {
      const item = await api(`/v1/items/${encodeURIComponent(sku)}`);
      fill(rollups, rollup('By region', item.byRegion, item.totals, '(no region)'), rollup('By location type', item.byType));
    } catch { /* the next change retries */ }
  });
  const stop = live({ sku, kinds: 'stock' }, {
    stock: (m) => {
      pending.set(m.locationId, m);
      paint();
      if (m.locationId === picker.value) refreshHistory();
      refreshRollups();
    },
    reload: load,
  });
  load().then(() => { loading = false; paint(); showHistory(); });
  return stop;
}
