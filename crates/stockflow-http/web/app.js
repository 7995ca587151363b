// The single page: picks a view by the URL's #fragment and mounts it.
// Every view exports mount(container, args) and returns a function that
// stops its timers and streams when the user navigates away.

import { h, fill, problem, api, session, token, ApiError } from './api.js';
import * as overview from './views/overview.js';
import * as items from './views/items.js';
import * as locations from './views/locations.js';
import * as shop from './views/shop.js';
import * as simulator from './views/simulator.js';
import * as alerts from './views/alerts.js';
import * as deadLetters from './views/dead-letters.js';

const ROUTES = {
  '': [overview, 'Overview'],
  items: [items, 'Items'],
  locations: [locations, 'Locations'],
  shop: [shop, 'Storefront'],
  simulator: [simulator, 'Simulator'],
  alerts: [alerts, 'Alerts'],
  'dead-letters': [deadLetters, 'Dead letters'],
};

let unmount = () => {};

function route() {
  const path = location.hash.replace(/^#\/?/, '');
  const [name, ...rest] = path.split('/');
  const args = rest.map(decodeURIComponent);
  const [view, title] = ROUTES[name] ?? [null, 'Not found'];
  for (const link of document.querySelectorAll('.top nav a')) {
    const target = link.getAttribute('href').replace(/^#\/?/, '');
    if (target === name) link.setAttribute('aria-current', 'page');
    else link.removeAttribute('aria-current');
  }
  unmount();
  unmount = () => {};
  const main = document.getElementById('view');
  document.title = `${title} · stockflow`;
  if (!view) {
    fill(main, h('h1', {}, 'Page not found'),
      h('p', { 'data-testid': 'not-found' }, 'There is no page at ', h('code', {}, location.hash || '#/'), '. The pages are:'),
      h('ul', {}, Object.entries(ROUTES).map(([path, [, label]]) => h('li', {}, h('a', { href: `#/${path}` }, label)))));
    return;
  }
  fill(main);
  document.getElementById('live').textContent = '';
  try {
    unmount = view.mount(main, args) ?? (() => {});
  } catch (error) {
    fill(main, problem(error));
  }
}

/** Shows who is signed in, with a way out (only on a server that asks
 * for tokens), and lets CSS hide what the token's roles do not allow. */
function showSession() {
  document.body.dataset.roles = session.roles.join(' ');
  const who = document.getElementById('who');
  if (!session.authentication || !session.name) {
    fill(who);
    return;
  }
  fill(who, h('span', { 'data-testid': 'signed-in-as' }, session.name), ' ',
    h('button', { type: 'button', class: 'link', onclick: signOut }, 'Sign out'));
}

async function signOut() {
  // The stream cookie goes too: the next person at this browser gets
  // nothing from it.
  try { await api('/v1/session/stream', { method: 'DELETE' }); } catch { /* signed out anyway */ }
  token.clear();
  Object.assign(session, { name: null, roles: [], authentication: true });
  unmount();
  unmount = () => {};
  showSession();
  askForToken();
}

/** The sign-in form: the token's secret, kept for this tab's session. */
function askForToken(reason) {
  const main = document.getElementById('view');
  document.title = 'Sign in · stockflow';
  const input = h('input', { id: 'token', type: 'password', autocomplete: 'off', required: true, spellcheck: 'false', size: 48 });
  const said = h('p', { class: 'error', role: 'alert' }, reason ?? '');
  fill(main,
    h('h1', {}, 'Sign in'),
    h('p', {}, 'This server asks for a token. Paste the secret that ',
      h('code', {}, 'stockflow token create'), ' printed for you; it is kept only until this tab closes.'),
    h('form', {
      class: 'signin',
      onsubmit: async (e) => {
        e.preventDefault();
        token.set(input.value.trim());
        try {
          Object.assign(session, await api('/v1/session'));
        } catch (error) {
          token.clear();
          said.textContent = error.status === 401 ? 'This server does not know that token.' : error.message;
          input.focus();
          return;
        }
        showSession();
        route();
      },
    }, h('label', { for: 'token' }, 'Token'), input, h('button', { type: 'submit', class: 'primary' }, 'Sign in')),
    said);
  input.focus();
}

/** Starts the console: who the session is (asking for a token if the
 * server wants one), then the page the URL names. */
async function start() {
  try {
    Object.assign(session, await api('/v1/session'));
  } catch (error) {
    if (error instanceof ApiError && error.status === 401) {
      Object.assign(session, { name: null, roles: [], authentication: true });
      showSession();
      askForToken(token.get() ? 'The token of this session is no longer accepted.' : null);
      token.clear();
      return;
    }
    fill(document.getElementById('view'), problem(error));
    return;
  }
  showSession();
  route();
}

window.addEventListener('stockflow:signed-out', (e) => {
  if (!session.name) return;
  token.clear();
  Object.assign(session, { name: null, roles: [], authentication: true });
  unmount();
  unmount = () => {};
  showSession();
  askForToken(`Signed out: ${e.detail ?? 'the token is no longer accepted'}.`);
});

// Phones: the menu button folds the navigation; choosing a page folds it again.
const menu = document.getElementById('menu');
const setMenu = (open) => {
  menu.setAttribute('aria-expanded', String(open));
  document.querySelector('header.top').classList.toggle('open', open);
};
menu.addEventListener('click', () => setMenu(menu.getAttribute('aria-expanded') !== 'true'));
document.addEventListener('keydown', (e) => { if (e.key === 'Escape' && menu.getAttribute('aria-expanded') === 'true') { setMenu(false); menu.focus(); } });

window.addEventListener('hashchange', () => {
  setMenu(false);
  if (session.authentication && !session.name) return;
  route();
  document.getElementById('view').focus({ preventScroll: true });
});
start();
