// Simulator control (the store simulator's modes): continuous random
// traffic at a rate, N random events at once, the controlled scenario
// with its expected results, and the messages sent.

import { api, every, h, fill, num, table, problem } from '../api.js';

export function mount(main) {
  const state = h('div', { class: 'cards' });
  const errors = h('div', { 'aria-live': 'polite' });
  const rate = h('input', { id: 'sim-rate', type: 'number', min: 1, max: 100000, value: 200, required: true });
  const count = h('input', { id: 'sim-count', type: 'number', min: 1, max: 100000, value: 100, required: true });
  const start = h('button', { type: 'submit', class: 'primary' }, 'Start');
  const stop = h('button', { type: 'button', onclick: () => act('/v1/simulator/stop') }, 'Stop');
  const scenarioOut = h('div', { 'aria-live': 'polite', 'data-testid': 'scenario-result' });
  const sentOut = h('div', { 'aria-live': 'polite' });
  const messages = h('div', {});
  fill(main,
    h('h1', {}, 'Simulator'),
    h('p', { class: 'muted' }, 'Generates POS sales and returns, WMS receipts and transfers, web reservations, ERP adjustments and counts, with about 1% redelivered duplicates, into this server.'),
    h('p', { class: 'muted', 'data-lacks': 'admin' }, 'Running the simulator needs a token with the admin role; this one can only watch.'),
    errors, state,
    h('div', { class: 'two', 'data-needs': 'admin' },
      h('section', { class: 'panel' }, h('h2', {}, 'Continuous traffic'),
        h('form', { class: 'bar', onsubmit: (e) => { e.preventDefault(); act('/v1/simulator/start', { rate: Number(rate.value) }); } },
          h('label', { for: 'sim-rate' }, 'Events per second', rate), start, stop)),
      h('section', { class: 'panel' }, h('h2', {}, 'Send a batch'),
        h('form', { class: 'bar', onsubmit: async (e) => {
          e.preventDefault();
          try {
            const r = await api('/v1/simulator/send', { method: 'POST', body: { count: Number(count.value) } });
            fill(sentOut, h('p', { 'data-testid': 'send-result' }, `Sent ${num(r.sent)}: ${num(r.accepted)} accepted, ${num(r.duplicates)} duplicates, ${num(r.rejected)} rejected.`));
            refresh();
          } catch (error) { fill(sentOut, problem(error)); }
        } }, h('label', { for: 'sim-count' }, 'Random events', count), h('button', { type: 'submit' }, 'Send')),
        sentOut)),
    h('section', { class: 'panel', 'data-needs': 'admin' }, h('h2', {}, 'Controlled scenario'),
      h('p', { class: 'muted' }, 'Fifteen fixed events (a duplicate, a reservation refused for stock, a transfer, a late count, a fractional quantity) with documented results. Re-running changes nothing.'),
      h('button', { type: 'button', 'data-testid': 'run-scenario', onclick: runScenario }, 'Run the controlled scenario'),
      scenarioOut),
    h('section', { class: 'panel' }, h('h2', {}, 'Messages sent (newest first)'), messages));

  async function act(path, body) {
    try {
      render(await api(path, { method: 'POST', body: body ?? {} }));
      fill(errors);
    } catch (error) { fill(errors, problem(error)); }
  }

  async function runScenario() {
    fill(scenarioOut, h('p', {}, 'Running…'));
    try {
      const r = await api('/v1/simulator/scenario', { method: 'POST', body: {} });
      const fields = ['onHand', 'reserved', 'inTransit'];
      const show = (n) => (n ? fields.map((f) => n[f]).join(' / ') : 'none');
      fill(scenarioOut,
        h('p', { class: r.passed ? 'ok' : 'error', 'data-testid': 'scenario-verdict' },
          r.passed ? 'Every level is as expected.' : 'Some levels differ from the expected results.',
          ` Receipt: ${r.receipt.accepted} accepted, ${r.receipt.duplicates} duplicates, ${r.receipt.rejected} rejected.`),
        table([{ label: 'SKU' }, { label: 'Location' }, { label: 'Expected on hand / reserved / in transit' }, { label: 'Actual' }, { label: 'Match' }],
          r.levels.map((l) => h('tr', { 'data-testid': 'scenario-row' }, h('td', {}, l.sku), h('td', {}, l.locationId),
            h('td', {}, show(l.expected)), h('td', {}, show(l.actual)), h('td', { class: l.ok ? 'ok' : 'error' }, l.ok ? '✓ yes' : '✗ no')))),
        r.receipt.errors.length ? h('p', { class: 'muted' }, 'Refused: ', r.receipt.errors.map((e) => `#${e.index} ${e.eventId ?? ''} ${e.reason}`).join('; ')) : null);
    } catch (error) { fill(scenarioOut, problem(error)); }
  }

  function render(s) {
    fill(state,
      [['State', s.enabled ? (s.running ? `running at ${num(s.rate)}/s` : 'stopped') : 'off on this server', 'sim-state'],
        ['Sent', num(s.sent), 'sim-sent'], ['Accepted', num(s.accepted), 'sim-accepted'],
        ['Duplicates', num(s.duplicates), 'sim-duplicates'], ['Rejected', num(s.rejected), 'sim-rejected']]
        .map(([label, value, id]) => h('div', { class: 'card' }, h('div', { class: 'label' }, label), h('div', { class: 'value', 'data-testid': id }, value))));
    if (!s.enabled) {
      fill(errors, h('p', { class: 'error' }, 'The simulator is off on this server: start it with `stockflow serve --simulator`, or run `stockflow demo`.'));
      for (const b of main.querySelectorAll('button')) b.disabled = true;
    }
    fill(messages, s.recent.length === 0 ? h('p', { class: 'muted' }, 'Nothing sent yet.')
      : table([{ label: 'Event' }, { label: 'Type' }, { label: 'SKU' }, { label: 'Location' }, { label: 'Qty', num: true }, { label: 'Source' }, { label: 'Outcome' }],
        s.recent.slice(0, 50).map(({ event: e, outcome }) => h('tr', {},
          h('td', {}, e?.eventId ?? '?'), h('td', {}, e?.eventType ?? ''), h('td', {}, e?.sku ?? ''), h('td', {}, e?.locationId ?? ''),
          h('td', { class: 'num' }, e?.quantity ?? ''), h('td', {}, e?.sourceSystem ?? ''), h('td', {}, outcome)))));
  }

  const refresh = async () => render(await api('/v1/simulator'));
  return every(1000, () => refresh().catch((error) => fill(errors, problem(error))));
}
