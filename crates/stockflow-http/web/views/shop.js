// Storefront (after the KartShoppe demo): the catalog with live
// availability at the web shop's location, a cart, and a checkout that
// places an order with a hold and shows what was reserved.

import { api, all, live, coalesce, h, fill, num, time, problem } from '../api.js';

const money = (n) => `$${n.toFixed(2)}`;

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
  const cartList = h('ul', { class: 'cart-lines', 'data-testid': 'cart-lines' });
  const subtotal = h('p', { class: 'subtotal', 'data-testid': 'cart-subtotal' });
  const cartPanel = h('aside', { class: 'panel', id: 'cart', 'aria-label': 'Cart', tabindex: '-1' });
  // Said once per add, politely: a screen reader hears it, nothing chatters.
  const said = h('p', { class: 'sr-only', 'aria-live': 'polite', 'data-testid': 'cart-said' });
  const barText = h('span', { 'data-testid': 'cart-bar-text' });
  const bar = h('div', { class: 'cartbar', 'data-testid': 'cart-bar' }, barText,
    h('button', { type: 'button', onclick: () => { cartPanel.scrollIntoView({ block: 'start' }); cartPanel.focus({ preventScroll: true }); } }, 'View cart'));
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
      fill(cartPanel, h('h2', {}, 'Cart'), cartList, subtotal, checkout,
        h('p', { class: 'muted', 'data-lacks': 'orders' }, 'Checking out needs a token with the orders role.'), result)),
    said, bar);
  main.classList.add('has-cartbar');

  let location = null;
  let products = [];
  const stock = new Map(); // sku -> available at `location`
  const cards = new Map(); // sku -> {status, button, product}
  const cart = new Map(); // sku -> quantity

  const productOf = (sku) => products.find((x) => x.sku === sku);
  const setQuantity = (sku, quantity) => {
    if (quantity > 0) cart.set(sku, quantity); else cart.delete(sku);
    renderCart();
    renderCard(sku);
  };
  const renderCart = () => {
    const lines = [...cart.entries()];
    let count = 0;
    let sum = 0;
    fill(cartList, lines.length === 0 ? h('li', { class: 'muted' }, 'Your cart is empty.')
      : lines.map(([sku, quantity]) => {
        const p = productOf(sku);
        const name = p?.name ?? sku;
        count += quantity;
        sum += (p?.price ?? 0) * quantity;
        const most = stock.get(sku) ?? 0;
        return h('li', { 'data-testid': 'cart-line', 'data-sku': sku },
          h('span', {}, name, h('br', {}), h('span', { class: 'muted' }, p?.price != null ? `${money(p.price)} each` : sku)),
          h('span', { class: 'num' }, p?.price != null ? money(p.price * quantity) : ''),
          h('span', { class: 'qty' },
            h('button', { type: 'button', 'aria-label': `One fewer ${name}`, onclick: () => setQuantity(sku, quantity - 1) }, '−'),
            h('span', { 'data-testid': 'cart-quantity', 'aria-label': `${quantity} in cart` }, String(quantity)),
            h('button', { type: 'button', 'aria-label': `One more ${name}`, disabled: quantity >= most, onclick: () => setQuantity(sku, quantity + 1) }, '+')));
      }));
    const items = `${count} ${count === 1 ? 'item' : 'items'}`;
    fill(subtotal, lines.length === 0 ? null : [h('span', {}, `Subtotal (${items})`), h('span', {}, money(sum))]);
    barText.textContent = lines.length === 0 ? 'Your cart is empty' : `Cart: ${items} · ${money(sum)}`;
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
        setQuantity(p.sku, (cart.get(p.sku) ?? 0) + 1);
        // Seen where the user looks: the button says it, for a moment.
        const inCart = cart.get(p.sku);
        button.textContent = `Added ✓ (${inCart} in cart)`;
        button.classList.add('added');
        clearTimeout(button.reset);
        button.reset = setTimeout(() => { button.textContent = 'Add to cart'; button.classList.remove('added'); }, 1500);
        said.textContent = `Added ${p.name} to the cart: ${inCart} in cart.`;
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
    if ([...pending.keys()].some((sku) => cart.has(sku))) renderCart();
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
      const priced = (l) => (productOf(l.sku)?.price ?? 0) * l.reserved;
      fill(result,
        h('p', { class: ok ? 'ok' : 'error', 'data-testid': 'order-status' },
          ok ? `Reserved: order ${order.orderId}` : `Not reserved (${order.status.replaceAll('_', ' ')}): order ${order.orderId}`),
        h('ul', { 'data-testid': 'order-lines' }, order.lines.map((l) => h('li', {},
          `${productOf(l.sku)?.name ?? l.sku}: ${l.reserved} of ${l.requested} reserved`,
          l.reserved > 0 && productOf(l.sku)?.price != null ? `, ${money(priced(l))}` : '',
          l.reason ? ` (${l.reason.replaceAll('_', ' ')})` : ''))),
        ok ? h('p', {}, `Total ${money(order.lines.reduce((sum, l) => sum + priced(l), 0))}`) : null,
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
      // Web shops first; any described location can be sold from. One
      // only seen in events (type unknown: no name, no address) is not a
      // place a shopper could choose, unless no location is described.
      const known = locations.filter((l) => l.type !== 'unknown');
      const described = known.length > 0 ? known : locations;
      described.sort((a, b) => (b.type === 'online') - (a.type === 'online') || a.locationId.localeCompare(b.locationId));
      fill(where, described.map((l) => h('option', { value: l.locationId }, `${l.name ?? l.locationId} (${l.locationId})`)));
      location = described[0]?.locationId ?? 'ONLINE';
      where.value = location;
      renderCart();
      if (products.length === 0) fill(grid, h('p', { class: 'muted' }, 'The catalog is empty: POST /v1/products, or run `stockflow demo`.'));
      await open();
    } catch (error) { fill(errors, problem(error)); }
  })();
  return () => { stopLive(); main.classList.remove('has-cartbar'); };
}
