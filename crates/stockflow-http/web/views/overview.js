// Overview: throughput and commit latency over time, stock totals, the
// live feed of alerts, when each source was last heard from, and the
// state of the links to other systems (RabbitMQ queues) and of the
// sinks (PostgreSQL, the Parquet lake), if any.

import { api, all, live, every, coalesce, h, fill, num, ago, time, table, problem } from '../api.js';
import { lineChart } from '../chart.js';

const FEED_MAX = 50;
/** Source groups shown before "Show all". */
const SOURCES_SHOWN = 6;
const SEVERITIES = [['CRITICAL', 'act now: out of stock or negative'], ['WARNING', 'soon: low stock, refused reservations'], ['INFO', 'for the record: back in stock, price drops']];

/** Sources grouped by name whatever its case ("erp" and "ERP" are one
 * system), each with its newest event, its locations and which of them
 * went quiet; stale groups first. */
function groupSources(sources) {
  const groups = new Map();
  for (const s of sources) {
    const key = s.sourceSystem.toUpperCase();
    const g = groups.get(key) ?? { name: key, last: null, events: 0, locations: [], stale: [] };
    g.events += s.events;
    g.locations.push(s.locationId);
    if (!g.last || s.lastReceivedAt > g.last) g.last = s.lastReceivedAt;
    if (s.stale) g.stale.push(s.locationId);
    groups.set(key, g);
  }
  return [...groups.values()].sort((a, b) => (b.stale.length > 0) - (a.stale.length > 0) || b.stale.length - a.stale.length
    || a.name.localeCompare(b.name));
}

function card(label, value, testid) {
  return h('div', { class: 'card' }, h('div', { class: 'label' }, label),
    h('div', { class: 'value', 'data-testid': testid }, value));
}

function alertItem(a) {
  const where = a.locationId ? ` at ${a.locationId}` : '';
  return h('li', {},
    h('span', { class: `badge ${a.severity}` }, a.kind.replaceAll('_', ' ')), ' ',
    a.state === 'cleared' ? h('span', { class: 'muted' }, 'cleared ') : null,
    h('a', { href: `#/items/${encodeURIComponent(a.sku)}` }, a.sku), where,
    a.available !== undefined && a.available !== null ? ` · available ${num(a.available)}` : '',
    a.kind === 'PRICE_DROP' ? ` · ${a.previousPrice} → ${a.price} (−${a.dropPercent}%)` : '',
    h('span', { class: 'muted' }, ` · ${time(a.at)}`));
}

export function mount(main) {
  const cards = h('div', { class: 'cards' });
  const throughput = h('div', { class: 'panel' });
  const latency = h('div', { class: 'panel' });
  // Not a live region: a busy feed read aloud would never stop talking.
  const feed = h('ul', { class: 'feed', 'data-testid': 'alert-feed' });
  const alertKinds = h('p', { class: 'kinds', 'data-testid': 'alert-kinds' });
  let showAllSources = false;
  const sources = h('div', {});
  const links = h('section', { class: 'panel', hidden: true, 'data-testid': 'links' });
  const sinks = h('section', { class: 'panel', hidden: true, 'data-testid': 'sinks' });
  const errors = h('div', {});
  fill(main,
    h('h1', {}, 'Overview'),
    errors,
    cards,
    h('div', { class: 'two' },
      h('section', {}, h('h2', {}, 'Events per second'), throughput),
      h('section', {}, h('h2', {}, 'Commit latency'), latency)),
    h('div', { class: 'two aligned' },
      h('section', { class: 'panel' }, h('h2', {}, 'Alerts: active, then live'),
        h('p', { class: 'legend', 'data-testid': 'severity-legend' }, SEVERITIES.map(([s, meaning]) =>
          h('span', {}, h('span', { class: `badge ${s}` }, s.toLowerCase()), ` ${meaning}`))),
        alertKinds, feed, h('p', {}, h('a', { href: '#/alerts' }, 'All alerts, grouped →'))),
      h('section', { class: 'panel' }, h('h2', {}, 'Source freshness'), sources)),
    links,
    sinks);

  let activity = null;
  let totals = null;
  let activeAlerts = '–';

  const renderCards = () => {
    const seconds = activity?.seconds ?? [];
    // The current second is still filling: show the last complete one.
    const last = seconds.length > 1 ? seconds[seconds.length - 2] : seconds[0];
    fill(cards,
      card('Events/s', num(last?.accepted ?? 0), 'events-per-second'),
      card('Commit p99', last?.commitP99Ms != null ? `${last.commitP99Ms.toFixed(1)} ms` : '–', 'commit-p99'),
      card('On hand', num(totals?.onHand), 'total-on-hand'),
      card('Reserved', num(totals?.reserved), 'total-reserved'),
      card('Available', num(totals?.available), 'total-available'),
      card('In transit', num(totals?.inTransit), 'total-in-transit'),
      card('Active alerts', activeAlerts, 'active-alerts'));
  };

  const renderActivity = () => {
    const seconds = activity.seconds;
    const at = (s) => Date.parse(s.at);
    fill(throughput, lineChart({
      label: 'Events per second over the last five minutes',
      series: [
        { name: 'accepted', color: '#0b5cad', points: seconds.map((s) => [at(s), s.accepted]) },
        { name: 'duplicates', color: '#8250df', points: seconds.map((s) => [at(s), s.duplicates]) },
        { name: 'rejected', color: '#a40e26', points: seconds.map((s) => [at(s), s.rejected]) },
      ],
    }));
    fill(latency, lineChart({
      label: 'Commit latency p50 and p99 in milliseconds over the last five minutes',
      unit: ' ms',
      series: [
        { name: 'p50', color: '#116329', points: seconds.map((s) => [at(s), s.commitP50Ms]) },
        { name: 'p99', color: '#bc4c00', points: seconds.map((s) => [at(s), s.commitP99Ms]) },
      ],
    }));
    const groups = groupSources(activity.sources);
    const shown = showAllSources ? groups : groups.slice(0, SOURCES_SHOWN);
    const quiet = (g) => (g.stale.length === 0 ? h('span', { class: 'muted' }, 'all recent')
      : h('span', {}, `${g.stale.length} of ${g.locations.length}: `, g.stale.slice(0, 3).map((id, i) => [i ? ', ' : '',
        h('a', { href: `#/locations/${encodeURIComponent(id)}` }, id)]), g.stale.length > 3 ? ` and ${g.stale.length - 3} more` : ''));
    fill(sources,
      h('p', { class: 'muted' }, `Highlighted: a location not heard from for ${activity.staleAfterSeconds} s or more.`),
      groups.length === 0 ? h('p', { class: 'muted' }, 'No events received since the server started.')
        : table([{ label: 'Source' }, { label: 'Last received' }, { label: 'Locations', num: true }, { label: 'Quiet' }, { label: 'Events', num: true }],
          shown.map((g) => h('tr', { class: g.stale.length ? 'stale' : null, 'data-testid': 'source-row' },
            h('td', {}, g.name), h('td', { title: g.last }, ago(g.last)),
            // A few locations are named; many are counted.
            h('td', { class: 'num', title: g.locations.slice(0, 50).join(', ') }, g.locations.length <= 3 ? g.locations.sort().join(', ') : num(g.locations.length)),
            h('td', {}, quiet(g)), h('td', { class: 'num' }, num(g.events))))),
      groups.length > SOURCES_SHOWN ? h('button', { type: 'button', 'data-testid': 'sources-all',
        onclick: () => { showAllSources = !showAllSources; renderActivity(); } },
      showAllSources ? 'Show fewer' : `Show all ${groups.length} sources`) : null);
    renderCards();
  };

  const loadAlerts = async () => {
    const page = await api('/v1/alerts?active=true&limit=' + FEED_MAX);
    fill(feed, page.alerts.length ? page.alerts.map(alertItem) : h('li', { class: 'muted' }, 'No active alerts.'));
    renderCards();
  };
  // What is active, by kind: the count tells more than a scrolling feed.
  const renderKinds = (active) => {
    const counts = new Map();
    for (const a of active) counts.set(a.kind, { n: (counts.get(a.kind)?.n ?? 0) + 1, severity: a.severity });
    fill(alertKinds, counts.size === 0 ? null : [...counts].sort((a, b) => b[1].n - a[1].n).map(([kind, { n, severity }]) =>
      h('a', { class: `badge ${severity}`, href: `#/alerts/${encodeURIComponent(kind)}` }, `${kind.replaceAll('_', ' ').toLowerCase()} × ${num(n)}`)));
  };

  const stopActivity = every(1000, async () => {
    try {
      activity = await api('/v1/activity?seconds=300');
      renderActivity();
      fill(errors);
    } catch (error) { fill(errors, problem(error)); }
  });
  const stopTotals = every(2000, async () => {
    const locations = await all('/v1/locations', 'locations');
    const sum = { onHand: 0, reserved: 0, available: 0, inTransit: 0 };
    for (const l of locations) for (const k of Object.keys(sum)) sum[k] += l.totals[k];
    totals = sum;
    const active = await api('/v1/alerts?active=true&limit=1000');
    activeAlerts = active.nextAfter ? '1,000+' : num(active.alerts.length);
    renderKinds(active.alerts);
    renderCards();
  });
  const stopLinks = every(2000, async () => {
    const { links: list } = await api('/v1/links');
    links.hidden = list.length === 0;
    const badge = { connected: 'ok', connecting: 'low', disconnected: 'out' };
    fill(links, h('h2', {}, 'RabbitMQ queues'),
      table([{ label: 'Queue' }, { label: 'Format' }, { label: 'Broker' }, { label: 'State' },
        { label: 'Messages', num: true }, { label: 'Refused', num: true }, { label: 'Last error' }],
      list.map((l) => h('tr', { 'data-testid': 'link-row' },
        h('td', {}, l.name), h('td', {}, l.format), h('td', {}, l.peer),
        h('td', { title: l.since }, h('span', { class: `badge ${badge[l.state]}` }, l.state), ' ', h('span', { class: 'muted' }, ago(l.since))),
        h('td', { class: 'num' }, num(l.messages)), h('td', { class: 'num' }, num(l.refused)),
        h('td', { class: 'muted' }, l.lastError ?? '')))));
  });
  const stopSinks = every(2000, async () => {
    const { sinks: list } = await api('/v1/sinks');
    sinks.hidden = list.length === 0;
    const badge = { connected: 'ok', connecting: 'low', disconnected: 'out' };
    const kinds = { postgres: 'PostgreSQL', lake: 'Parquet lake' };
    // Kafka mode counts history-topic records, the embedded mode bytes.
    const behind = (s) => {
      const n = s.behindRecords ?? s.behindBytes;
      if (n === 0) return 'caught up';
      return s.behindRecords == null ? `${num(Math.ceil(n / 1024))} KiB` : `${num(n)} records`;
    };
    fill(sinks, h('h2', {}, 'Sinks'),
      table([{ label: 'Sink' }, { label: 'Target' }, { label: 'State' },
        { label: 'Behind', num: true }, { label: 'Rows', num: true }, { label: 'Last commit' }, { label: 'Last error' }],
      list.map((s) => h('tr', { 'data-testid': 'sink-row' },
        h('td', {}, kinds[s.kind] ?? s.kind), h('td', {}, s.target),
        h('td', { title: s.since }, h('span', { class: `badge ${badge[s.state]}` }, s.state), ' ', h('span', { class: 'muted' }, ago(s.since))),
        h('td', { class: 'num', 'data-testid': 'sink-behind' }, behind(s)),
        h('td', { class: 'num' }, num(s.rows)),
        h('td', { class: 'muted' }, s.lastCommitAt ? ago(s.lastCommitAt) : 'none yet'),
        h('td', { class: 'muted' }, s.lastError ?? '')))));
  });
  loadAlerts().catch((error) => fill(errors, problem(error)));
  // Alerts arriving in a burst are added once per frame.
  let arrived = [];
  const flush = coalesce(() => {
    feed.querySelector('.muted')?.remove();
    feed.prepend(...arrived.slice(-FEED_MAX).reverse().map(alertItem));
    arrived = [];
    while (feed.children.length > FEED_MAX) feed.lastChild.remove();
  });
  const stopLive = live({ kinds: 'alerts' }, {
    alerts: (a) => { arrived.push(a); flush(); },
    reload: () => loadAlerts().catch(() => {}),
  });
  return () => { stopActivity(); stopTotals(); stopLinks(); stopSinks(); stopLive(); };
}
