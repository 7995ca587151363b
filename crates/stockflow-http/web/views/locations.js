// Location view: every location with its totals; one location's levels,
// a page at a time (so 100k SKUs never reach the page at once), sortable,
// filterable by stock status and SKU, low and out of stock highlighted,
// visible rows updating live.

import { api, all, query, live, coalesce, flash, h, fill, num, problem, sortable, sortHeads, notFound, remembered, remember } from '../api.js';

const FIELDS = ['onHand', 'reserved', 'available', 'inTransit'];
const LABELS = { onHand: 'On hand', reserved: 'Reserved', available: 'Available', inTransit: 'In transit' };
const PAGE = 200;

async function list(main) {
  const out = h('div', {}, h('p', {}, 'Loading…'));
  fill(main, h('h1', {}, 'Locations'), out);
  try {
    const locations = await all('/v1/locations', 'locations');
    fill(out, sortable({
      keep: 'locations',
      testid: 'locations',
      rows: locations,
      rowAttrs: (l) => ({ 'data-location': l.locationId }),
      filter: { label: 'Filter by id, name, type or region', text: (l) => [l.locationId, l.name, l.type, l.region].join(' ') },
      columns: [
        { label: 'Location', value: (l) => l.locationId, cell: (l) => h('a', { href: `#/locations/${encodeURIComponent(l.locationId)}` }, l.locationId) },
        { label: 'Name', value: (l) => l.name, cell: (l) => l.name ?? '' },
        // A location only seen in events has no master data yet.
        { label: 'Type', value: (l) => l.type, cell: (l) => (l.type === 'unknown'
          ? h('span', { class: 'muted', title: 'Seen in events only: describe it with PUT /v1/locations/{id}' }, 'not described') : l.type) },
        { label: 'Region', value: (l) => l.region, cell: (l) => l.region ?? '' },
        ...FIELDS.map((f) => ({ label: LABELS[f], num: true, value: (l) => l.totals[f], cell: (l) => num(l.totals[f]) })),
        { label: 'Below threshold', num: true, value: (l) => l.totals.belowThreshold, cell: (l) => num(l.totals.belowThreshold) },
      ],
    }),
    // Why Available can exceed On hand: say how the totals are made.
    h('p', { class: 'muted', 'data-testid': 'totals-note' },
      'On hand adds every level as it is, negative ones included (sold before they were received); Available counts each level from 0, so it can be higher.'));
  } catch (error) { fill(out, problem(error)); }
}

// Negative on hand (sold before it was received) is its own state, not
// "out of stock".
const statusOf = (l) => (l.onHand < 0 ? 'negative' : l.available <= 0 ? 'out' : l.available < l.lowStockThreshold ? 'low' : null);
const BADGES = { negative: 'negative', out: 'out of stock', low: 'low' };

export function mount(main, [id]) {
  if (!id) { list(main); return undefined; }
  const head = h('div', {});
  const errors = h('div', {});
  const status = h('select', { id: 'status-filter' },
    h('option', { value: '' }, 'all'), h('option', { value: 'low' }, 'low stock'),
    h('option', { value: 'out' }, 'out of stock'), h('option', { value: 'negative' }, 'negative on hand'));
  const filter = h('input', { id: 'sku-filter', type: 'search', placeholder: 'SKU or part of it', autocomplete: 'off' });
  const body = h('tbody', {});
  const info = h('p', { class: 'muted', 'aria-live': 'polite' });
  const prev = h('button', { type: 'button' }, '← Previous');
  const next = h('button', { type: 'button' }, 'Next →');
  const sort = { key: 0, dir: 1 };
  const { heads: headers, sorted } = sortHeads([{ label: 'SKU', value: (l) => l.sku },
    ...FIELDS.map((f) => ({ label: LABELS[f], num: true, value: (l) => l[f] }))], sort, () => render());
  fill(main,
    h('p', {}, h('a', { href: '#/locations' }, '← All locations')),
    head, errors,
    h('form', { class: 'bar', onsubmit: (e) => e.preventDefault() },
      h('label', { for: 'status-filter' }, 'Show', status),
      h('label', { for: 'sku-filter' }, 'Filter this page by SKU', filter)),
    h('div', { class: 'scroll tall' }, h('table', { 'data-testid': 'location-levels' },
      h('thead', {}, h('tr', {}, headers)), body)),
    h('div', { class: 'bar' }, prev, next, info));

  let levels = [];
  // Where the user was on this location (page, sort, filters): kept for
  // the tab, so opening an item and coming back returns to it.
  const place = remembered(`location:${id}`) ?? {};
  let cursors = place.cursors ?? [undefined]; // `after` of each page visited
  cursors = cursors.map((c) => c ?? undefined);
  Object.assign(sort, place.sort ?? {});
  status.value = place.status ?? '';
  filter.value = place.filter ?? '';
  let nextAfter = null;
  const rows = new Map();

  const render = () => {
    const text = filter.value.trim().toLowerCase();
    const shown = sorted(levels.filter((l) => !text || l.sku.toLowerCase().includes(text)));
    rows.clear();
    fill(body, shown.map((l) => {
      const cells = Object.fromEntries(FIELDS.map((f) => [f, h('td', { class: 'num' }, num(l[f]))]));
      const badge = statusOf(l);
      const row = h('tr', { class: badge, 'data-sku': l.sku },
        h('th', { scope: 'row' }, h('a', { href: `#/items/${encodeURIComponent(l.sku)}` }, l.sku), ' ',
          badge ? h('span', { class: `badge ${badge}` }, BADGES[badge]) : null),
        FIELDS.map((f) => cells[f]));
      rows.set(l.sku, { row, cells, level: l });
      return row;
    }));
    info.textContent = `Page ${cursors.length}: ${shown.length} of ${levels.length} levels shown${nextAfter ? '; more on the next page' : ''}.`;
    prev.disabled = cursors.length <= 1;
    next.disabled = !nextAfter;
    remember(`location:${id}`, { cursors, sort, status: status.value, filter: filter.value });
  };

  const load = async () => {
    try {
      const after = cursors[cursors.length - 1];
      const [location, page] = await Promise.all([
        api(`/v1/locations/${encodeURIComponent(id)}`),
        api(`/v1/locations/${encodeURIComponent(id)}/stock${query({ status: status.value, limit: PAGE, after })}`),
      ]);
      const t = location.totals;
      fill(head, h('h1', {}, location.name ? `${location.name} ` : '', h('span', { class: 'muted' }, id)),
        h('p', { class: 'muted' }, [location.type, location.region, location.city].filter(Boolean).join(' · ')),
        h('div', { class: 'cards' }, [...FIELDS.map((f) => [LABELS[f], t[f], f]), ['Below threshold', t.belowThreshold, 'below'], ['At zero', t.atZero, 'zero']]
          .map(([label, value, key]) => h('div', { class: 'card' }, h('div', { class: 'label' }, label),
            h('div', { class: 'value', 'data-testid': `location-total-${key}` }, num(value))))));
      levels = page.levels;
      nextAfter = page.nextAfter;
      render();
      fill(errors);
    } catch (error) {
      if (error.status === 404) {
        fill(main, notFound('Location not found', `No location “${id}”: it is not in the location master and no event has named it.`,
          ['#/locations', '← All locations']));
        return;
      }
      fill(errors, problem(error));
    }
  };
  status.addEventListener('change', () => { cursors = [undefined]; load(); });
  filter.addEventListener('input', render);
  next.addEventListener('click', () => { cursors.push(nextAfter); load(); });
  prev.addEventListener('click', () => { cursors.pop(); load(); });

  // Live: only rows on this page change; painted once per frame. The
  // totals are re-read at most once a second.
  const pending = new Map();
  let loading = true;
  let totalsDue = false;
  const paint = coalesce(() => {
    if (loading) return;
    for (const m of pending.values()) {
      const entry = rows.get(m.sku);
      if (!entry) continue;
      for (const f of FIELDS) {
        if (entry.level[f] !== m[f]) {
          entry.level[f] = m[f];
          entry.cells[f].textContent = num(m[f]);
          flash(entry.cells[f]);
        }
      }
      entry.row.className = statusOf(entry.level) ?? '';
    }
    pending.clear();
  });
  const totals = setInterval(() => { if (totalsDue) { totalsDue = false; refreshTotals(); } }, 1000);
  const refreshTotals = async () => {
    try {
      const t = (await api(`/v1/locations/${encodeURIComponent(id)}`)).totals;
      for (const [key, value] of [...FIELDS.map((f) => [f, t[f]]), ['below', t.belowThreshold], ['zero', t.atZero]]) {
        const node = head.querySelector(`[data-testid="location-total-${key}"]`);
        if (node) node.textContent = num(value);
      }
    } catch { /* the next change retries */ }
  };
  const stop = live({ locationId: id, kinds: 'stock' }, {
    stock: (m) => { pending.set(m.sku, m); totalsDue = true; paint(); },
    reload: load,
  });
  load().then(() => { loading = false; paint(); });
  return () => { stop(); clearInterval(totals); };
}
