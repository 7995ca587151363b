// The single page: picks a view by the URL's #fragment and mounts it.
// Every view exports mount(container, args) and returns a function that
// stops its timers and streams when the user navigates away.

import { h, fill, problem } from './api.js';
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
    fill(main, h('h1', {}, 'Not found'), h('p', {}, 'No such page. ', h('a', { href: '#/' }, 'Back to the overview')));
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

window.addEventListener('hashchange', () => {
  route();
  document.getElementById('view').focus({ preventScroll: true });
});
route();
