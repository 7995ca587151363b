// Alerts with filters; new ones matching the filters appear live.

import { api, query, live, coalesce, h, fill, num, time, table, problem } from '../api.js';

const KINDS = ['LOW_STOCK', 'OUT_OF_STOCK', 'BACK_IN_STOCK', 'NEGATIVE_ON_HAND', 'PRICE_DROP', 'STALE', 'RESERVATION_REJECTED'];

function row(a) {
  return h('tr', { 'data-testid': 'alert-row' },
    h('td', {}, time(a.at)),
    h('td', {}, h('span', { class: `badge ${a.severity}` }, a.kind.replaceAll('_', ' '))),
    h('td', {}, a.state),
    h('td', {}, h('a', { href: `#/items/${encodeURIComponent(a.sku)}` }, a.sku)),
    h('td', {}, a.locationId ?? ''),
    h('td', { class: 'num' }, a.available ?? ''),
    h('td', { class: 'num' }, a.threshold ?? ''));
}

export function mount(main) {
  const kind = h('select', { id: 'alert-kind' }, h('option', { value: '' }, 'any'), KINDS.map((k) => h('option', { value: k }, k)));
  const sku = h('input', { id: 'alert-sku', type: 'search', autocomplete: 'off' });
  const location = h('input', { id: 'alert-location', type: 'search', autocomplete: 'off' });
  const active = h('input', { id: 'alert-active', type: 'checkbox' });
  const body = h('tbody', {});
  const more = h('button', { type: 'button' }, 'Load more');
  const errors = h('div', {});
  fill(main, h('h1', {}, 'Alerts'),
    h('form', { class: 'bar', onsubmit: (e) => { e.preventDefault(); load(); } },
      h('label', { for: 'alert-kind' }, 'Kind', kind), h('label', { for: 'alert-sku' }, 'SKU', sku),
      h('label', { for: 'alert-location' }, 'Location', location),
      h('label', { class: 'inline', for: 'alert-active' }, active, 'active only'),
      h('button', { type: 'submit', class: 'primary' }, 'Apply')),
    errors,
    h('div', { class: 'scroll' }, h('table', {},
      h('thead', {}, h('tr', {}, ['When', 'Kind', 'State', 'SKU', 'Location', 'Available', 'Threshold']
        .map((c, i) => h('th', { scope: 'col', class: i >= 5 ? 'num' : null }, c)))), body)),
    more);

  let after = null;
  let filters = {};
  // Answers can come back out of order (a slow first load after a quick
  // "Apply"): only the latest request's answer is drawn.
  let latest = 0;
  const page = async (append) => {
    const mine = append ? latest : ++latest;
    try {
      const answer = await api('/v1/alerts' + query({ ...filters, limit: 100, after: append ? after : undefined }));
      if (mine !== latest) return;
      if (!append) fill(body);
      body.append(...answer.alerts.map(row));
      if (!append && answer.alerts.length === 0) body.append(h('tr', {}, h('td', { colspan: 7, class: 'muted' }, 'No alerts match.')));
      after = answer.nextAfter;
      more.hidden = !after;
      fill(errors);
    } catch (error) { if (mine === latest) fill(errors, problem(error)); }
  };
  const load = () => {
    filters = { kind: kind.value, sku: sku.value.trim(), locationId: location.value.trim(), active: active.checked ? 'true' : '' };
    return page(false);
  };
  more.addEventListener('click', () => page(true));

  let arrived = [];
  // Checked again when drawn: an alert that arrived under the filters
  // before "Apply" must not land in the list of the new ones.
  const flush = coalesce(() => {
    const fresh = arrived.filter(matches);
    arrived = [];
    if (fresh.length === 0) return;
    body.querySelector('td.muted')?.parentElement.remove();
    body.prepend(...fresh.reverse().map(row));
  });
  const matches = (a) => (!filters.kind || a.kind === filters.kind) && (!filters.sku || a.sku === filters.sku)
    && (!filters.locationId || a.locationId === filters.locationId) && (!filters.active || a.state !== 'cleared');
  const stop = live({ kinds: 'alerts' }, {
    alerts: (a) => { if (matches(a)) { arrived.push(a); flush(); } },
    reload: load,
  });
  load();
  return stop;
}
