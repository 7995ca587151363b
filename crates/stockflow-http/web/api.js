// The only way the pages talk to the server: the public HTTP API and the
// live stream. Also the few DOM helpers every view uses.

/** An answer other than 2xx, with the API's `{code, message}`. */
export class ApiError extends Error {
  constructor(status, code, message, body) {
    super(message);
    this.status = status;
    this.code = code;
    this.body = body;
  }
}

// The token the console signed in with, kept for this browser tab's
// session only (sessionStorage: gone when the tab closes).
const TOKEN = 'stockflow.token';
export const token = {
  get: () => sessionStorage.getItem(TOKEN),
  set: (secret) => sessionStorage.setItem(TOKEN, secret),
  clear: () => sessionStorage.removeItem(TOKEN),
};

/**
 * Who the console is signed in as: `{name, roles, authentication}` from
 * GET /v1/session. `authentication` false: the server asks for no token.
 */
export const session = { name: null, roles: [], authentication: false };

/** Whether the session's token has `role`. */
export const can = (role) => session.roles.includes(role);

/** Fetches `path` and returns the JSON answer, or throws an ApiError. A
 * 401 on a server that asks for tokens signs the console out. */
export async function api(path, { method = 'GET', body, raw, type } = {}) {
  const init = { method, headers: {} };
  const secret = token.get();
  if (secret) init.headers.authorization = `Bearer ${secret}`;
  if (body !== undefined) {
    init.headers['content-type'] = 'application/json';
    init.body = JSON.stringify(body);
  } else if (raw !== undefined) {
    // A body as it is (`type`: its media type), e.g. an empty one.
    init.headers['content-type'] = type;
    init.body = raw;
  }
  let response;
  try {
    response = await fetch(path, init);
  } catch (error) {
    throw new ApiError(0, 'unreachable', `the server cannot be reached (${error.message})`);
  }
  const text = await response.text();
  let data = null;
  try { data = text ? JSON.parse(text) : null; } catch { data = null; }
  if (response.status === 401 && session.authentication) {
    window.dispatchEvent(new CustomEvent('stockflow:signed-out', { detail: data?.message }));
  }
  if (!response.ok) {
    throw new ApiError(response.status, data?.code ?? 'error', data?.message ?? (text || response.statusText), data);
  }
  return data;
}

/** A query string of the defined, non-empty values of `params`. */
export function query(params) {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) {
    if (v !== undefined && v !== null && v !== '' && v !== false) q.set(k, String(v));
  }
  const text = q.toString();
  return text ? `?${text}` : '';
}

const status = () => document.getElementById('live');

/**
 * Subscribes to /v1/stream with `filter` ({sku, locationId, kinds}).
 * `handlers.stock|alerts|orders(data)` get each message; `handlers.reload()`
 * runs when the server says messages were missed (gap or resync), so the
 * view re-reads its state from the REST API. The browser reconnects by
 * itself and sends Last-Event-ID, which resumes without gaps.
 * Returns a function that closes the stream.
 */
export function live(filter, handlers) {
  let source = null;
  let closed = false;
  let lastId = null;
  let retry = null;
  // Refused reopenings wait longer each time (1 s, 2 s, … 30 s), so a
  // cookie the server keeps refusing costs a request now and then.
  let wait = 1000;
  const again = () => {
    retry = setTimeout(open, wait);
    wait = Math.min(wait * 2, 30000);
  };
  // A server that asks for tokens opens the stream to a cookie (an
  // EventSource cannot send the token); it is asked for before each
  // connection the browser does not make by itself.
  const open = async () => {
    if (closed) return;
    if (session.authentication) {
      try {
        await api('/v1/session/stream', { method: 'POST', body: {} });
      } catch (error) {
        if (error.status === 403) {
          status().textContent = '○ no live updates for this token';
          return;
        }
        status().textContent = '○ reconnecting…';
        again();
        return;
      }
    }
    if (closed) return;
    source = new EventSource(`/v1/stream${query({ ...filter, lastEventId: lastId })}`);
    for (const kind of ['stock', 'alerts', 'orders']) {
      if (handlers[kind]) {
        source.addEventListener(kind, (e) => { lastId = e.lastEventId || lastId; handlers[kind](JSON.parse(e.data)); });
      }
    }
    const reload = () => handlers.reload?.();
    source.addEventListener('gap', reload);
    source.addEventListener('resync', reload);
    source.onopen = () => { status().textContent = '● live'; wait = 1000; };
    source.onerror = () => {
      status().textContent = '○ reconnecting…';
      // Refused (a cookie that expired, a restarted server): the browser
      // gives up; start again with a new cookie, from the last message.
      if (source.readyState === EventSource.CLOSED) {
        source = null;
        again();
      }
    };
  };
  open();
  return () => { closed = true; clearTimeout(retry); source?.close(); };
}

/**
 * Wraps `render` so that any number of calls within one animation frame
 * run it once: a burst of 1,000 updates a second repaints at most at the
 * screen's rate.
 */
export function coalesce(render) {
  let queued = false;
  return () => {
    if (queued) return;
    queued = true;
    requestAnimationFrame(() => {
      queued = false;
      render();
    });
  };
}

/** Runs `tick` now and every `ms` until the returned stop is called. */
export function every(ms, tick) {
  let stopped = false;
  let timer;
  const run = async () => {
    try { await tick(); } catch (error) { console.warn(error); }
    if (!stopped) timer = setTimeout(run, ms);
  };
  run();
  return () => { stopped = true; clearTimeout(timer); };
}

/**
 * Builds an element: h('td', {class: 'num'}, 12). Children are text or
 * nodes; text is never parsed as HTML, so data from the server cannot
 * inject markup.
 */
export function h(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs ?? {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith('on')) node.addEventListener(k.slice(2), v);
    else if (k === 'class') node.className = v;
    else if (v === true) node.setAttribute(k, '');
    else node.setAttribute(k, v);
  }
  for (const child of children.flat()) {
    if (child === undefined || child === null || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

/** Replaces the children of `node`. */
export function fill(node, ...children) {
  node.replaceChildren();
  for (const child of children.flat()) {
    if (child === undefined || child === null || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

export const num = (n) => (n === null || n === undefined ? '–' : Number(n).toLocaleString('en-US'));

export function ago(iso) {
  if (!iso) return '–';
  const s = Math.max(0, Math.round((Date.now() - Date.parse(iso)) / 1000));
  if (s < 60) return `${s}s ago`;
  if (s < 3600) return `${Math.floor(s / 60)}m ago`;
  if (s < 86400) return `${Math.floor(s / 3600)}h ago`;
  return `${Math.floor(s / 86400)}d ago`;
}

export const time = (iso) => (iso ? new Date(iso).toLocaleString() : '–');

/** An error as a line in the page. */
export const problem = (error) => h('p', { class: 'error', role: 'alert' }, error.message ?? String(error));

/** What a view shows when what its URL names does not exist: said plainly,
 * with the way back (`back`: [href, text]). */
export const notFound = (title, said, [href, text]) => [h('h1', {}, title),
  h('p', { 'data-testid': 'not-found' }, said), h('p', {}, h('a', { href }, text))];

/** A table: columns [{label, num, sort}] and rows of cells. */
export function table(columns, rows, { caption } = {}) {
  return h('div', { class: rows.length > 20 ? 'scroll tall' : 'scroll' },
    h('table', {},
      caption ? h('caption', { class: 'muted' }, caption) : null,
      h('thead', {}, h('tr', {}, columns.map((c) => h('th', { scope: 'col', class: c.num ? 'num' : null }, c.label)))),
      h('tbody', {}, rows)));
}

/** What this tab remembers for a page (its sort, filter, page), so that
 * coming back to it finds it as it was left. */
export const remembered = (key) => {
  try { return JSON.parse(sessionStorage.getItem(`stockflow:${key}`)) ?? undefined; } catch { return undefined; }
};
export const remember = (key, value) => {
  try { sessionStorage.setItem(`stockflow:${key}`, JSON.stringify(value)); } catch { /* private mode: not kept */ }
};

/** Orders two cell values: numbers as numbers (missing ones first), the
 * rest as text. */
const compare = (x, y) => (typeof x === 'number' || typeof y === 'number'
  ? (x ?? -Infinity) - (y ?? -Infinity) : String(x ?? '').localeCompare(String(y ?? '')));

/**
 * Header cells that sort: a click on one orders by its column (again: the
 * other way round) and calls `changed`. `state` is {key: the column's
 * index, dir: 1 or -1}; columns are [{label, num, value: (row) => what
 * sorts}]. `sorted(rows)` gives the rows in that order and marks the
 * headers (aria-sort) as the state is now.
 */
export function sortHeads(columns, state, changed) {
  const heads = columns.map((c, i) => h('th', { scope: 'col', class: c.num ? 'num' : null },
    h('button', { type: 'button', onclick: () => { state.dir = state.key === i ? -state.dir : 1; state.key = i; changed(); } }, c.label)));
  const sorted = (rows) => {
    heads.forEach((th, i) => th.setAttribute('aria-sort', i === state.key ? (state.dir > 0 ? 'ascending' : 'descending') : 'none'));
    const value = columns[state.key]?.value ?? columns[0].value;
    return [...rows].sort((a, b) => state.dir * compare(value(a), value(b)));
  };
  return { heads, sorted };
}

/**
 * A table sorted by any column (see [sortHeads]) and filtered by text,
 * its header row kept in view while it scrolls.
 * columns: [{label, num, value: (row) => what sorts, cell: (row) => text
 * or node}]; filter: {label, text: (row) => what the filter searches};
 * `keep` names what the tab remembers (see [remembered]).
 */
export function sortable({ columns, rows, filter, keep, testid, rowAttrs = () => ({}) }) {
  const state = { key: 0, dir: 1, text: '', ...remembered(keep) };
  const input = h('input', { type: 'search', id: `${keep}-filter`, value: state.text, autocomplete: 'off' });
  const body = h('tbody', {});
  const count = h('span', { class: 'muted', 'data-testid': `${keep}-count` });
  const { heads, sorted } = sortHeads(columns, state, () => render());
  const render = () => {
    state.text = input.value;
    const text = state.text.trim().toLowerCase();
    const shown = sorted(rows.filter((r) => !text || filter.text(r).toLowerCase().includes(text)));
    fill(body, shown.map((r) => h('tr', rowAttrs(r), columns.map((c, i) => h(i === 0 ? 'th' : 'td',
      { scope: i === 0 ? 'row' : null, class: c.num ? 'num' : null }, c.cell(r))))));
    count.textContent = text ? `${num(shown.length)} of ${num(rows.length)} shown` : `${num(rows.length)} in all`;
    remember(keep, state);
  };
  input.addEventListener('input', render);
  render();
  return h('div', {},
    h('form', { class: 'bar', onsubmit: (e) => e.preventDefault() }, h('label', { for: input.id }, filter.label, input), count),
    h('div', { class: 'scroll tall' }, h('table', { 'data-testid': testid }, h('thead', {}, h('tr', {}, heads)), body)));
}

/** Fetches every page of a paginated list (up to `max` items). */
export async function all(path, key, params = {}, max = 5000) {
  const out = [];
  let after;
  do {
    const page = await api(path + query({ ...params, limit: 1000, after }));
    out.push(...page[key]);
    after = page.nextAfter;
  } while (after && out.length < max);
  return out;
}

/**
 * Wraps `run` so that calls run it at most once per `ms`: the first call
 * at once, later ones once more at the end of the window.
 */
export function throttle(ms, run) {
  let last = 0;
  let timer = null;
  return () => {
    if (timer) return;
    const wait = Math.max(0, last + ms - Date.now());
    timer = setTimeout(() => {
      timer = null;
      last = Date.now();
      run();
    }, wait);
  };
}

/**
 * Highlights a cell whose value just changed. The Web Animations API
 * restarts the highlight without forcing a layout, so a thousand changes
 * a second cost no reflow each.
 */
export function flash(cell) {
  cell.dataset.changed = String(Date.now());
  cell.animate([{ backgroundColor: '#fff8c5' }, { backgroundColor: 'transparent' }], { duration: 1500, easing: 'ease-out' });
}
