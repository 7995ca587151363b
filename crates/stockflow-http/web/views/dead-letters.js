// Dead letters: refused input with its reason and raw payload, filtered
// by source and reason. Each letter is a card: what was refused and why,
// its actions always in view, its payload folded; a JSON payload opens
// pretty-printed and editable, checked as it is typed, so it can be
// corrected before it is replayed. A replay says what became of it.

import { api, query, h, fill, time, problem } from '../api.js';

/** The payload as JSON (`null`: it is not JSON, e.g. a CSV row). */
function parsed(text) {
  try { return JSON.parse(text); } catch { return null; }
}

export function mount(main) {
  const source = h('input', { id: 'dl-source', type: 'search', placeholder: 'e.g. http:/v1/events or pos', autocomplete: 'off' });
  const reason = h('input', { id: 'dl-reason', type: 'search', placeholder: 'e.g. quantity', autocomplete: 'off' });
  const list = h('div', { class: 'letters', 'data-testid': 'dead-letters' });
  const more = h('button', { type: 'button' }, 'Load more');
  const errors = h('div', { 'aria-live': 'polite' });
  fill(main, h('h1', {}, 'Dead letters'),
    h('p', { class: 'muted' }, 'Input that was refused, kept verbatim with the reason. Fix the sender, or correct a letter and replay it.'),
    h('form', { class: 'bar', onsubmit: (e) => { e.preventDefault(); load(); } },
      h('label', { for: 'dl-source' }, 'Source', source), h('label', { for: 'dl-reason' }, 'Reason contains', reason),
      h('button', { type: 'submit', class: 'primary' }, 'Apply')),
    errors, list, more);

  const card = (l) => {
    const json = parsed(l.payload);
    const outcome = h('p', { class: 'outcome', 'data-testid': 'dead-letter-outcome', role: 'status' });
    const article = h('article', { class: 'letter', 'data-testid': 'dead-letter-row' });
    const editor = json === null ? null : h('textarea', {
      class: 'payload', spellcheck: 'false', rows: 8, 'aria-label': `Payload of dead letter ${l.id}`,
    });
    const check = h('span', { class: 'muted', 'data-testid': 'payload-check' });
    let valid = true;
    if (editor) {
      editor.value = JSON.stringify(json, null, 2);
      editor.addEventListener('input', () => {
        valid = parsed(editor.value) !== null;
        check.textContent = valid ? 'valid JSON' : 'not valid JSON yet';
        check.className = valid ? 'ok' : 'bad';
        replay.disabled = !valid;
      });
    }
    const done = (text) => {
      article.classList.add('done');
      fill(outcome, text);
      outcome.className = 'outcome ok';
      for (const b of article.querySelectorAll('button, textarea')) b.disabled = true;
    };
    const act = async (method, path, body) => {
      fill(outcome);
      try {
        // No correction: an empty body replays the letter as stored.
        const send = method === 'POST' && body === undefined ? { raw: '', type: 'application/json' } : { body };
        const answer = await api(path, { method, ...send });
        if (method === 'DELETE') return done(`Dead letter ${l.id} discarded.`);
        const r = answer.receipt;
        const counts = `${r.accepted} accepted, ${r.duplicates} already applied`;
        done(answer.resolved ? `Replayed: ${counts}. The letter is resolved.` : `Replayed: ${counts}, ${r.rejected} refused.`);
      } catch (error) {
        outcome.className = 'outcome bad';
        fill(outcome, error.code === 'still_invalid' ? `Still refused: ${error.message.replace(/^still refused, so /, '')}` : problem(error));
      }
    };
    const edited = () => editor && parsed(editor.value) !== null && JSON.stringify(parsed(editor.value)) !== JSON.stringify(json);
    const replay = h('button', {
      type: 'button', class: 'primary', 'data-needs': 'admin',
      onclick: () => act('POST', `/v1/dead-letters/${l.id}/replay`, edited() ? parsed(editor.value) : undefined),
    }, 'Replay');
    const discard = h('button', { type: 'button', 'data-needs': 'admin', onclick: () => act('DELETE', `/v1/dead-letters/${l.id}`) }, 'Discard');
    const payload = editor
      ? h('details', {}, h('summary', {}, 'Payload (edit it to replay a correction)'), editor, check)
      : h('details', {}, h('summary', {}, 'Payload'), h('pre', {}, l.payload));
    article.append(
      h('header', {},
        h('span', { class: 'id' }, `#${l.id}`), ' ', h('span', { class: 'muted' }, time(l.receivedAt)),
        ' · ', h('span', {}, l.source), l.eventId ? h('span', {}, ` · ${l.eventId}`) : ''),
      h('p', { class: 'reason' }, l.reason),
      h('div', { class: 'actions' }, replay, ' ', discard),
      payload, outcome);
    return article;
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
      if (!append) fill(list);
      list.append(...answer.deadLetters.map(card));
      if (!append && answer.deadLetters.length === 0) list.append(h('p', { class: 'muted', 'data-testid': 'no-letters' }, 'No dead letters match.'));
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
