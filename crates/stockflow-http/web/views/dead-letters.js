// Dead letters: rejected input with its reason and raw payload, filtered
// by source and reason; each can be replayed as is or discarded.

import { api, query, h, fill, time, problem } from '../api.js';

export function mount(main) {
  const source = h('input', { id: 'dl-source', type: 'search', placeholder: 'e.g. http:/v1/events or pos', autocomplete: 'off' });
  const reason = h('input', { id: 'dl-reason', type: 'search', placeholder: 'e.g. quantity', autocomplete: 'off' });
  const body = h('tbody', {});
  const more = h('button', { type: 'button' }, 'Load more');
  const errors = h('div', { 'aria-live': 'polite' });
  fill(main, h('h1', {}, 'Dead letters'),
    h('p', { class: 'muted' }, 'Input that was refused, kept verbatim with the reason. Fix the sender, or replay a letter once the cause is fixed.'),
    h('form', { class: 'bar', onsubmit: (e) => { e.preventDefault(); load(); } },
      h('label', { for: 'dl-source' }, 'Source', source), h('label', { for: 'dl-reason' }, 'Reason contains', reason),
      h('button', { type: 'submit', class: 'primary' }, 'Apply')),
    errors,
    h('div', { class: 'scroll' }, h('table', {},
      h('thead', {}, h('tr', {}, ['Received', 'Source', 'Event', 'Reason', 'Payload', ''].map((c) => h('th', { scope: 'col' }, c)))), body)),
    more);

  const act = async (letter, method, path, tr) => {
    try {
      const answer = await api(path, { method });
      tr.replaceChildren(h('td', { colspan: 6, class: 'ok' },
        method === 'DELETE' ? `Dead letter ${letter.id} discarded.` : `Dead letter ${letter.id} replayed: ${answer.accepted} accepted, ${answer.rejected} rejected again.`));
    } catch (error) { fill(errors, problem(error)); }
  };
  const row = (l) => {
    const tr = h('tr', { 'data-testid': 'dead-letter-row' });
    tr.append(h('td', {}, time(l.receivedAt)), h('td', {}, l.source), h('td', {}, l.eventId ?? ''),
      h('td', {}, l.reason), h('td', {}, h('pre', {}, l.payload.length > 400 ? `${l.payload.slice(0, 400)}…` : l.payload)),
      h('td', {},
        h('button', { type: 'button', 'data-needs': 'admin', onclick: () => act(l, 'POST', `/v1/dead-letters/${l.id}/replay`, tr) }, 'Replay'), ' ',
        h('button', { type: 'button', 'data-needs': 'admin', onclick: () => act(l, 'DELETE', `/v1/dead-letters/${l.id}`, tr) }, 'Discard')));
    return tr;
  };
  let after = null;
  let filters = {};
  // Only the latest request's answer is drawn (see the alerts view).
  let latest = 0;
  const page = async (append) => {
    const mine = append ? latest : ++latest;
    try {
      const answer = await api('/v1/dead-letters' + query({ ...filters, limit: 100, after: append ? after : undefined }));
      if (mine !== latest) return;
      if (!append) fill(body);
      body.append(...answer.deadLetters.map(row));
      if (!append && answer.deadLetters.length === 0) body.append(h('tr', {}, h('td', { colspan: 6, class: 'muted' }, 'No dead letters match.')));
      after = answer.nextAfter;
      more.hidden = !after;
      fill(errors);
    } catch (error) { if (mine === latest) fill(errors, problem(error)); }
  };
  const load = () => {
    filters = { source: source.value.trim(), reason: reason.value.trim() };
    return page(false);
  };
  more.addEventListener('click', () => page(true));
  load();
  return undefined;
}
