// A small SVG line chart: no library, so the page works offline and the
// whole UI stays a few kilobytes.

import { h } from './api.js';

const NS = 'http://www.w3.org/2000/svg';
const W = 600;
const H = 180;
const PAD = { left: 48, right: 8, top: 8, bottom: 22 };
/** The newest points the scale follows when an older burst dwarfs them. */
const RECENT = 60;
/** How much taller than recent traffic a burst must be to be cut off. */
const BURST = 3;

function svg(tag, attrs = {}, text) {
  const node = document.createElementNS(NS, tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  if (text !== undefined) node.textContent = text;
  return node;
}

const short = (n) => (Math.abs(n) >= 1e6 ? `${(n / 1e6).toFixed(1)}M`
  : Math.abs(n) >= 1e4 ? `${(n / 1e3).toFixed(0)}k`
    : Number.isInteger(n) ? String(n) : n.toFixed(n < 10 ? 2 : 1));
const full = (n) => (Number.isInteger(n) ? n.toLocaleString('en-US') : n.toFixed(n < 10 ? 2 : 1));
const clock = (x) => new Date(x).toLocaleTimeString([], { hour: '2-digit', minute: '2-digit', second: '2-digit' });
const finite = (y) => y !== null && y !== undefined && Number.isFinite(y);

/** The top of the scale: the highest value, unless an older burst is
 * more than BURST times what the newest RECENT points reach (a seeding
 * spike would flatten today's traffic into a line): then those. */
function top(series) {
  const all = series.flatMap((s) => s.points.map((p) => p[1])).filter(finite);
  const recent = series.flatMap((s) => s.points.slice(-RECENT).map((p) => p[1])).filter(finite);
  const most = Math.max(...all);
  const lately = recent.length ? Math.max(...recent) : most;
  return lately > 0 && most > BURST * lately ? { y1: lately * 1.25, cut: most } : { y1: most, cut: null };
}

/**
 * A chart element for `series` [{name, color, points: [[x, y], …], dash,
 * width}] where x is a time in ms. `label` describes it for screen
 * readers. Step lines suit stock levels (`step: true`). Hovering (or
 * touching) shows the values at that time.
 */
export function lineChart({ label, series, step = false, unit = '' }) {
  const root = h('figure', { class: 'chart' });
  const chart = svg('svg', { viewBox: `0 0 ${W} ${H}`, role: 'img', 'aria-label': label, preserveAspectRatio: 'none' });
  const xs = series.flatMap((s) => s.points.map((p) => p[0]));
  const ys = series.flatMap((s) => s.points.map((p) => p[1])).filter(finite);
  const tip = h('div', { class: 'tip', hidden: true, 'data-testid': 'chart-tip' });
  let note = null;
  if (xs.length === 0 || ys.length === 0) {
    chart.append(svg('text', { x: W / 2, y: H / 2, 'text-anchor': 'middle', fill: '#57606a' }, 'no data yet'));
  } else {
    const [x0, x1] = [Math.min(...xs), Math.max(...xs)];
    const scale = top(series);
    let [y0, y1] = [Math.min(0, ...ys), scale.y1];
    if (y1 === y0) y1 = y0 + 1;
    const sx = (x) => PAD.left + ((x - x0) / Math.max(1, x1 - x0)) * (W - PAD.left - PAD.right);
    // Values above the scale are drawn at its top.
    const sy = (y) => H - PAD.bottom - ((Math.min(y, y1) - y0) / (y1 - y0)) * (H - PAD.top - PAD.bottom);
    for (const y of [y0, (y0 + y1) / 2, y1]) {
      chart.append(svg('line', { x1: PAD.left, x2: W - PAD.right, y1: sy(y), y2: sy(y), stroke: '#d0d7de' }));
      chart.append(svg('text', { x: PAD.left - 4, y: sy(y) + 4, 'text-anchor': 'end', 'font-size': 11, fill: '#57606a' }, short(y) + unit));
    }
    const ticks = x1 > x0 ? 4 : 0;
    for (let i = 0; i <= ticks; i += 1) {
      const x = x0 + ((x1 - x0) * i) / Math.max(1, ticks);
      const anchor = i === 0 ? 'start' : i === ticks ? 'end' : 'middle';
      chart.append(svg('text', { x: sx(x), y: H - 6, 'text-anchor': anchor, 'font-size': 11, fill: '#57606a' }, clock(x)));
    }
    for (const s of series) {
      let d = '';
      let pen = 'M';
      let last = null;
      for (const [x, y] of s.points) {
        if (!finite(y)) { pen = 'M'; continue; }
        if (step && last !== null && pen === 'L') d += `L${sx(x).toFixed(1)},${sy(last).toFixed(1)}`;
        d += `${pen}${sx(x).toFixed(1)},${sy(y).toFixed(1)}`;
        pen = 'L';
        last = y;
      }
      chart.append(svg('path', { d, fill: 'none', stroke: s.color, 'stroke-width': s.width ?? 2,
        'stroke-dasharray': s.dash ?? 'none', 'vector-effect': 'non-scaling-stroke' }));
    }
    if (scale.cut !== null) note = h('span', { class: 'muted', 'data-testid': 'chart-cut' }, `scaled to recent values; an earlier peak of ${full(scale.cut)}${unit} is cut off`);

    // Hover: a rule at the nearest time and the values there.
    const rule = svg('line', { y1: PAD.top, y2: H - PAD.bottom, stroke: '#57606a', 'stroke-dasharray': '2 2', visibility: 'hidden' });
    chart.append(rule);
    const times = [...new Set(xs)].sort((a, b) => a - b);
    const at = (event) => {
      const box = chart.getBoundingClientRect();
      const vx = ((event.clientX - box.left) / box.width) * W;
      const want = x0 + ((vx - PAD.left) / (W - PAD.left - PAD.right)) * (x1 - x0);
      let best = times[0];
      for (const t of times) if (Math.abs(t - want) < Math.abs(best - want)) best = t;
      rule.setAttribute('x1', sx(best));
      rule.setAttribute('x2', sx(best));
      rule.setAttribute('visibility', 'visible');
      const values = series.map((s) => {
        // The step line's value at `best`: the newest point not after it.
        let v = null;
        for (const [x, y] of s.points) { if (x <= best) v = y; else break; }
        return h('div', {}, h('span', { class: 'swatch', style: `--c:${s.color}` }), `${s.name}: ${finite(v) ? full(v) + unit : '–'}`);
      });
      tip.replaceChildren(h('div', { class: 'muted' }, clock(best)), ...values);
      tip.hidden = false;
      const left = ((sx(best) / W) * box.width);
      tip.style.left = `${Math.min(Math.max(0, left - 60), box.width - 130)}px`;
    };
    chart.addEventListener('pointermove', at);
    chart.addEventListener('pointerdown', at);
    chart.addEventListener('pointerleave', () => { tip.hidden = true; rule.setAttribute('visibility', 'hidden'); });
  }
  root.append(chart, tip);
  root.append(h('figcaption', { class: 'legend' },
    series.map((s) => h('span', { class: s.dash ? 'dashed' : null, style: `--c:${s.color}` }, s.name)), note));
  return root;
}
