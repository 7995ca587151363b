// Storefront (after the KartShoppe demo): the catalog with live
// availability at the web shop's location, a cart, and a checkout that
// places an order with a hold and shows what was reserved.

import { api, all, live, coalesce, h, fill, num, time, problem } from '../api.js';

const PAGE = 60;
const HOLD_SECONDS = 900;
const THRESHOLD_DEFAULT = 10;

function availabilityText(available, threshold) {
  if (available <= 0) return [h('span', { class: 'badge out' }, 'Out of stock')];
  if (available < threshold) return [h('span', { class: 'badge low' }, `Only ${available} left`)];
  return [h('span', { class: 'badge ok' }, 'In stock'), ` ${num(available)} available`];
}

export function mount(main) {
  const errors = h('div', {});
  const grid = h('div', { class: 'products', 'aria-label': 'Products' });
  const cartList = h('ul', { class: 'feed' });
  const checkout = h('button', { type: 'button', class: 'primary', 'data-testid': 'checkout', 'data-needs': 'orders' }, 'Check out');
  const result = h('div', { 'aria-live': 'polite', 'data-testid': 'order-result' });
  const where = h('select', { id: 'shop-location' });
  const search = h('input', { id: 'shop-search', type: 'search', placeholder: 'name or SKU', autocomplete: 'off' });
  fill(main,
    h('h1', {}, 'Storefront'),
    h('form', { class: 'bar', onsubmit: (e) => e.preventDefault() },
      h('label', { for: 'shop-location' }, 'Selling from', where),
      h('label', { for: 'shop-search' }, 'Find a product', search)),
    errors,
    h('div', { class: 'shop' },
      h('section', {}, grid),
      h('aside', { class: 'panel', 'aria-label': 'Cart' }, h('h2', {}, 'Cart'), cartList, checkout,
        h('p', { class: 'muted', 'data-lacks': 'orders' }, 'Checking out needs a token with the orders role.'), result)));

  let location = null;
  let products = [];
  const stock = new Map(); // sku -> available at `location`
  const cards = new Map(); // sku -> {status, button, product}
  const cart = new Map(); // sku -> quantity

  const renderCart = () => {
    const lines = [...cart.entries()];
    fill(cartList, lines.length === 0 ? h('li', { class: 'muted' }, 'Your cart is empty.')
      : lines.map(([sku, quantity]) => {
        const p = products.find((x) => x.sku === sku);
        return h('li', { 'data-testid': 'cart-line' }, `${quantity} × ${p?.name ?? sku} `,
          h('button', { type: 'button', 'aria-label': `Remove one ${p?.name ?? sku}`,
            onclick: () => { if (cart.get(sku) > 1) cart.set(sku, cart.get(sku) - 1); else cart.delete(sku); renderCart(); renderCard(sku); } }, '−'));
      }));
    checkout.disabled = lines.length === 0;
  };

  const renderCard = (sku) => {
    const card = cards.get(sku);
    if (!card) return;
    const available = stock.get(sku) ?? 0;
    fill(card.status, availabilityText(available, card.product.lowStockThreshold ?? THRESHOLD_DEFAULT));
    // Nothing left, or all that is left is already in the cart.
    card.button.disabled = available <= 0 || (cart.get(sku) ?? 0) >= available;
  };

  // A page of cards at a time keeps a big catalog light; "Show more" adds one.
  let showing = PAGE;
  const renderGrid = () => {
    const text = search.value.trim().toLowerCase();
    const shown = products.filter((p) => !text || p.sku.toLowerCase().includes(text) || p.name.toLowerCase().includes(text));
    cards.clear();
    fill(grid, shown.slice(0, showing).map((p) => {
      const status = h('p', { class: 'availability', 'data-testid': 'availability' });
      const button = h('button', { type: 'button', class: 'primary', onclick: () => {
        cart.set(p.sku, (cart.get(p.sku) ?? 0) + 1);
        renderCart();
        renderCard(p.sku);
      } }, 'Add to cart');
      cards.set(p.sku, { status, button, product: p });
      const card = h('article', { class: 'card product', 'data-sku': p.sku },
        h('div', { class: 'name' }, p.name), h('div', { class: 'muted' }, `${p.sku} · ${p.category ?? ''}`),
        h('div', { class: 'price' }, p.price != null ? `$${p.price.toFixed(2)}` : ''),
        status, button);
      renderCard(p.sku);
      return card;
    }), shown.length > showing ? h('p', { class: 'more' }, `Showing ${showing} of ${shown.length}. `,
      h('button', { type: 'button', onclick: () => { showing += PAGE; renderGrid(); } }, 'Show more')) : null);
  };

  const loadStock = async () => {
    stock.clear();
    for (const l of await all(`/v1/locations/${encodeURIComponent(location)}/stock`, 'levels').catch((e) => (e.status === 404 ? [] : Promise.reject(e)))) {
      stock.set(l.sku, l.available);
    }
  };

  let stopLive = () => {};
  let loading = true;
  const pending = new Map();
  const paint = coalesce(() => {
    if (loading) return;
    for (const [sku, available] of pending) { stock.set(sku, available); renderCard(sku); }
    pending.clear();
  });
  const open = async () => {
    stopLive();
    loading = true;
    pending.clear();
    stopLive = live({ locationId: location, kinds: 'stock' }, {
      stock: (m) => { pending.set(m.sku, m.available); paint(); },
      reload: async () => { await loadStock(); renderGrid(); },
    });
    await loadStock();
    renderGrid();
    loading = false;
    paint();
  };

  checkout.addEventListener('click', async () => {
    checkout.disabled = true;
    const orderId = `web-${Date.now().toString(36)}-${Math.random().toString(36).slice(2, 8)}`;
    const lines = [...cart.entries()].map(([sku, quantity]) => ({ sku, locationId: location, quantity }));
    try {
      const order = await api('/v1/orders', { method: 'POST', body: { orderId, lines, mode: 'all_or_nothing', holdSeconds: HOLD_SECONDS } });
      const ok = order.status === 'reserved';
      fill(result,
        h('p', { class: ok ? 'ok' : 'error', 'data-testid': 'order-status' },
          ok ? `Reserved: order ${order.orderId}` : `Not reserved (${order.status.replaceAll('_', ' ')}): order ${order.orderId}`),
        h('ul', {}, order.lines.map((l) => h('li', {}, `${l.sku}: ${l.reserved} of ${l.requested} reserved`,
          l.reason ? ` (${l.reason.replaceAll('_', ' ')})` : ''))),
        order.expiresAt ? h('p', { class: 'muted' }, `Held until ${time(order.expiresAt)}.`) : null);
      const bought = [...cart.keys()];
      if (ok) cart.clear();
      renderCart();
      bought.forEach(renderCard);
    } catch (error) {
      fill(result, problem(error));
      checkout.disabled = false;
    }
  });
  search.addEventListener('input', () => { showing = PAGE; renderGrid(); });
  where.addEventListener('change', () => { location = where.value; cart.clear(); renderCart(); open(); });

  (async () => {
    try {
      const [catalog, locations] = await Promise.all([all('/v1/products', 'products'), all('/v1/locations', 'locations')]);
      products = catalog;
      // Web shops first; any location can be sold from.
      locations.sort((a, b) => (b.type === 'online') - (a.type === 'online') || a.locationId.localeCompare(b.locationId));
      fill(where, locations.map((l) => h('option', { value: l.locationId }, `${l.name ?? l.locationId} (${l.locationId})`)));
      location = locations[0]?.locationId ?? 'ONLINE';
      where.value = location;
      renderCart();
      if (products.length === 0) fill(grid, h('p', { class: 'muted' }, 'The catalog is empty: POST /v1/products, or run `stockflow demo`.'));
      await open();
    } catch (error) { fill(errors, problem(error)); }
  })();
  return () => stopLive();
}
