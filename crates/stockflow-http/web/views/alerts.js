// Alerts with filters, as a list (new ones matching the filters appear
// live) or grouped by kind, SKU or location with counts. An active alert
// can be acknowledged, and the alerts of a kind, SKU or location muted
// for a while: both are recorded with who did it, on the server.

import { api, all, query, live, coalesce, h, fill, num, time, ago, table, problem, can } from '../api.js';

const KINDS = ['LOW_STOCK', 'OUT_OF_STOCK', 'BACK_IN_STOCK', 'NEGATIVE_ON_HAND', 'PRICE_DROP', 'STALE', 'RESERVATION_REJECTED'];

/** What the alert is about, in the words of its kind: a threshold only
 * where there is one. */
function detail(a) {
  const has = (v) => v !== undefined && v !== null;
  switch (a.kind) {
    case 'LOW_STOCK': return `available ${num(a.available)}${has(a.threshold) ? `, below ${num(a.threshold)}` : ''}`;
    case 'OUT_OF_STOCK': case 'BACK_IN_STOCK': return has(a.available) ? `available ${num(a.available)}` : '';
    case 'NEGATIVE_ON_HAND': return has(a.onHand) ? `on hand ${num(a.onHand)}` : '';
    case 'PRICE_DROP': return `${a.previousPrice} → ${a.price} (−${a.dropPercent}%)`;
    default: return has(a.available) ? `available ${num(a.available)}` : '';
  }
}

/** Who acknowledged the alert, or its Acknowledge button (for an alert
 * that is raised: only an active one can be). */
function owner(a, acknowledge) {
  if (a.acknowledged) {
    const note = a.acknowledged.note ? ` · “${a.acknowledged.note}”` : '';
    return h('span', { 'data-testid': 'alert-acknowledged', title: time(a.acknowledged.at) },
      `Acknowledged by ${a.acknowledged.by} ${ago(a.acknowledged.at)}${note}`);
  }
  if (a.state !== 'raised' || !can('admin')) return '';
  return h('button', { type: 'button', 'data-testid': 'alert-acknowledge', onclick: (e) => acknowledge(a, e.target) }, 'Acknowledge');
}

function row(a, acknowledge) {
  const muted = a.muted ? h('span', { class: 'badge muted-badge', title: `until ${time(a.muted.until)}${a.muted.reason ? ` · ${a.muted.reason}` : ''}` }, `muted by ${a.muted.by}`) : '';
  return h('tr', { 'data-testid': 'alert-row', class: a.acknowledged || a.muted ? 'quiet' : '' },
    h('td', {}, time(a.at)),
    h('td', {}, h('span', { class: `badge ${a.severity}` }, a.kind.replaceAll('_', ' '))),
    h('td', {}, a.state),
    h('td', {}, h('a', { href: `#/items/${encodeURIComponent(a.sku)}` }, a.sku)),
    h('td', {}, a.locationId ? h('a', { href: `#/locations/${encodeURIComponent(a.locationId)}` }, a.locationId) : ''),
    h('td', { 'data-testid': 'alert-detail', class: muted ? 'wrap' : '' }, detail(a), muted ? ' ' : '', muted),
    h('td', { 'data-testid': 'alert-owner', class: 'wrap' }, owner(a, acknowledge)));
}

/** A mute's scope in words: "low stock of SKU-1 at S001". */
function scope(m) {
  const parts = [];
  parts.push(m.kind ? m.kind.replaceAll('_', ' ').toLowerCase() : 'every alert');
  if (m.sku) parts.push(`of ${m.sku}`);
  if (m.locationId) parts.push(`at ${m.locationId}`);
  return parts.join(' ');
}

const DURATIONS = [[60, '1 hour'], [480, '8 hours'], [1440, '24 hours'], [10080, '7 days']];

const RANK = { CRITICAL: 3, WARNING: 2, INFO: 1 };
/** Most alerts a grouping reads. */
const GROUPED_MAX = 5000;
const GROUPS = { kind: ['Kind', (a) => a.kind], sku: ['SKU', (a) => a.sku], locationId: ['Location', (a) => a.locationId ?? '(product-wide)'] };

export function mount(main, [preset]) {
  const kind = h('select', { id: 'alert-kind' }, h('option', { value: '' }, 'any'), KINDS.map((k) => h('option', { value: k }, k)));
  const group = h('select', { id: 'alert-group' }, h('option', { value: '' }, 'nothing: newest first'),
    Object.entries(GROUPS).map(([k, [label]]) => h('option', { value: k }, label)));
  const grouped = h('div', { hidden: true, 'data-testid': 'alert-groups' });
  const sku = h('input', { id: 'alert-sku', type: 'search', autocomplete: 'off' });
  const location = h('input', { id: 'alert-location', type: 'search', autocomplete: 'off' });
  const active = h('input', { id: 'alert-active', type: 'checkbox' });
  const hideMuted = h('input', { id: 'alert-hide-muted', type: 'checkbox', checked: true });
  const hideAcknowledged = h('input', { id: 'alert-hide-acknowledged', type: 'checkbox' });
  const mutes = h('section', { 'data-testid': 'alert-mutes', 'aria-label': 'Mutes in force' });
  const minutes = h('select', { id: 'mute-minutes' }, DURATIONS.map(([m, label]) => h('option', { value: m }, label)));
  const reason = h('input', { id: 'mute-reason', type: 'text', maxlength: 512, autocomplete: 'off', placeholder: 'optional' });
  const said = h('p', { class: 'muted', role: 'status', 'data-testid': 'alert-said' });
  const body = h('tbody', {});
  const more = h('button', { type: 'button' }, 'Load more');
  const errors = h('div', {});
  fill(main, h('h1', {}, 'Alerts'),
    h('form', { class: 'bar', onsubmit: (e) => { e.preventDefault(); load(); } },
      h('label', { for: 'alert-kind' }, 'Kind', kind), h('label', { for: 'alert-sku' }, 'SKU', sku),
      h('label', { for: 'alert-location' }, 'Location', location),
      h('label', { class: 'inline', for: 'alert-active' }, active, 'active only'),
      h('label', { class: 'inline', for: 'alert-hide-muted' }, hideMuted, 'hide muted'),
      h('label', { class: 'inline', for: 'alert-hide-acknowledged' }, hideAcknowledged, 'hide acknowledged'),
      h('label', { for: 'alert-group' }, 'Group by', group),
      h('button', { type: 'submit', class: 'primary' }, 'Apply')),
    can('admin') ? h('form', { class: 'bar', 'data-testid': 'mute-form', onsubmit: (e) => { e.preventDefault(); muteFilters(); } },
      h('label', { for: 'mute-minutes' }, 'Mute what the filters match for', minutes),
      h('label', { for: 'mute-reason' }, 'Reason', reason),
      h('button', { type: 'submit' }, 'Mute')) : '',
    said,
    errors,
    mutes,
    grouped,
    h('div', { class: 'scroll tall', 'data-testid': 'alert-list' }, h('table', {},
      h('thead', {}, h('tr', {}, ['When', 'Kind', 'State', 'SKU', 'Location', 'Detail', 'Owner']
        .map((c) => h('th', { scope: 'col' }, c)))), body)),
    more);
  const list = main.querySelector('[data-testid="alert-list"]');
  if (preset && KINDS.includes(preset)) { kind.value = preset; active.checked = true; group.value = 'sku'; }

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
      body.append(...answer.alerts.map((a) => row(a, acknowledge)));
      if (!append && answer.alerts.length === 0) body.append(h('tr', {}, h('td', { colspan: 7, class: 'muted' }, 'No alerts match.')));
      after = answer.nextAfter;
      more.hidden = !after;
      fill(errors);
    } catch (error) { if (mine === latest) fill(errors, problem(error)); }
  };
  // Grouped: the newest GROUPED_MAX matching alerts counted per group,
  // worst severity and newest first; a group opens as a filtered list.
  const showGroups = async () => {
    const mine = ++latest;
    const [label, keyOf] = GROUPS[group.value];
    try {
      const alerts = await all('/v1/alerts', 'alerts', filters, GROUPED_MAX);
      if (mine !== latest) return;
      const groups = new Map();
      for (const a of alerts) {
        const key = keyOf(a);
        const g = groups.get(key) ?? { key, n: 0, kinds: new Set(), severity: 'INFO', at: a.at };
        g.n += 1;
        g.kinds.add(a.kind);
        if (RANK[a.severity] > RANK[g.severity]) g.severity = a.severity;
        if (a.at > g.at) g.at = a.at;
        groups.set(key, g);
      }
      const rows = [...groups.values()].sort((a, b) => RANK[b.severity] - RANK[a.severity] || b.n - a.n || a.key.localeCompare(b.key));
      const open = (g) => {
        const field = { kind: kind, sku, locationId: location }[group.value];
        field.value = g.key === '(product-wide)' ? '' : g.key;
        group.value = '';
        load();
      };
      fill(grouped,
        h('p', { class: 'muted', 'data-testid': 'alert-groups-said' }, `${num(alerts.length)} alerts${alerts.length >= GROUPED_MAX ? ' (the newest)' : ''} in ${num(rows.length)} groups by ${label.toLowerCase()}.`),
        rows.length === 0 ? h('p', { class: 'muted' }, 'No alerts match.')
          : table([{ label }, { label: 'Alerts', num: true }, { label: 'Kinds' }, { label: 'Newest' }, { label: '' }],
            rows.map((g) => h('tr', { 'data-testid': 'alert-group' },
              h('td', {}, h('span', { class: `badge ${g.severity}` }, g.severity.toLowerCase()), ' ', g.key.replaceAll('_', ' ')),
              h('td', { class: 'num', 'data-testid': 'alert-group-count' }, num(g.n)),
              h('td', {}, [...g.kinds].map((k) => k.replaceAll('_', ' ').toLowerCase()).join(', ')),
              h('td', { title: g.at }, ago(g.at)),
              h('td', {}, h('button', { type: 'button', onclick: () => open(g) }, 'Show'),
                can('admin') && g.key !== '(product-wide)' ? [' ', h('button', { type: 'button', 'data-testid': 'alert-group-mute', onclick: () => mute({ ...scopeOfFilters(), [group.value]: g.key }) }, 'Mute')] : '')))));
      fill(errors);
    } catch (error) { if (mine === latest) fill(errors, problem(error)); }
  };
  // The mutes in force, each with who muted, until when, and Unmute.
  let inForce = [];
  const showMutes = async () => {
    try {
      inForce = (await api('/v1/alerts/mutes')).mutes;
      fill(mutes, inForce.length === 0 ? '' : [h('h2', {}, `Muted (${num(inForce.length)})`),
        h('ul', { class: 'plain' }, inForce.map((m) => h('li', { 'data-testid': 'alert-mute' },
          h('strong', {}, scope(m)), ` · by ${m.by}, until ${time(m.until)}`, m.reason ? ` · ${m.reason}` : '', ' ',
          can('admin') ? h('button', { type: 'button', 'data-testid': 'alert-unmute', onclick: () => unmute(m) }, 'Unmute') : '')))]);
    } catch (error) { fill(errors, problem(error)); }
  };
  const scopeOfFilters = () => {
    const s = {};
    if (kind.value) s.kind = kind.value;
    if (sku.value.trim()) s.sku = sku.value.trim();
    if (location.value.trim()) s.locationId = location.value.trim();
    return s;
  };
  const mute = async (what) => {
    try {
      const m = await api('/v1/alerts/mutes', { method: 'POST', body: { ...what, minutes: Number(minutes.value), reason: reason.value.trim() || undefined } });
      said.textContent = `Muted ${scope(m)} until ${time(m.until)}.`;
      fill(errors);
      await showMutes();
      load();
    } catch (error) { fill(errors, problem(error)); }
  };
  const muteFilters = () => {
    const what = scopeOfFilters();
    if (Object.keys(what).length === 0) {
      fill(errors, problem('Choose a kind, SKU or location to mute: muting every alert would hide them all.'));
      return;
    }
    mute(what);
  };
  const unmute = async (m) => {
    try {
      await api(`/v1/alerts/mutes/${encodeURIComponent(m.id)}`, { method: 'DELETE' });
      said.textContent = `Unmuted ${scope(m)}.`;
      fill(errors);
      await showMutes();
      load();
    } catch (error) { fill(errors, problem(error)); }
  };
  const acknowledge = async (a, button) => {
    button.disabled = true;
    try {
      // Kind, SKU and location too: alerts rebuilt at a restart can share an id.
      const which = query({ kind: a.kind, sku: a.sku, locationId: a.locationId });
      const done = await api(`/v1/alerts/${encodeURIComponent(a.id)}/acknowledge${which}`, { method: 'POST', body: {} });
      button.closest('td').replaceChildren(owner(done, acknowledge));
      said.textContent = `Acknowledged ${a.kind.replaceAll('_', ' ').toLowerCase()} of ${a.sku}${a.locationId ? ` at ${a.locationId}` : ''}.`;
      fill(errors);
    } catch (error) {
      button.disabled = false;
      fill(errors, problem(error));
    }
  };
  const load = () => {
    filters = {
      kind: kind.value, sku: sku.value.trim(), locationId: location.value.trim(), active: active.checked ? 'true' : '',
      muted: hideMuted.checked ? 'false' : '', acknowledged: hideAcknowledged.checked ? 'false' : '',
    };
    const byGroup = Boolean(group.value);
    grouped.hidden = !byGroup;
    list.hidden = byGroup;
    more.hidden = true;
    return byGroup ? showGroups() : page(false);
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
    body.prepend(...fresh.reverse().map((a) => row(a, acknowledge)));
  });
  const coverOf = (a) => inForce.find((m) => Date.parse(m.until) > Date.now() && (!m.kind || m.kind === a.kind)
    && (!m.sku || m.sku === a.sku) && (!m.locationId || m.locationId === a.locationId)) ?? null;
  const covered = (a) => coverOf(a) !== null;
  const matches = (a) => (!filters.kind || a.kind === filters.kind) && (!filters.sku || a.sku === filters.sku)
    && (!filters.locationId || a.locationId === filters.locationId) && (!filters.active || a.state !== 'cleared')
    && !(filters.muted === 'false' && covered(a));
  const stop = live({ kinds: 'alerts' }, {
    alerts: (a) => { if (!group.value && matches(a)) { arrived.push({ ...a, muted: coverOf(a) }); flush(); } },
    reload: load,
  });
  showMutes();
  load();
  return stop;
}
