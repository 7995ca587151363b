// A small SVG line chart: no library, so the page works offline and the
// whole UI stays a few kilobytes.

import { h } from './api.js';

const NS = 'http://www.w3.org/2000/svg';
const W = 600;
const H = 180;
const PAD = { left: 48, right: 8, top: 8, bottom: 22 };

function svg(tag, attrs = {}, text) {
  const node = document.createElementNS(NS, tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  if (text !== undefined) node.textContent = text;
  return node;
}

const short = (n) => (Math.abs(n) >= 1e6 ? `${(n / 1e6).toFixed(1)}M`
  : Math.abs(n) >= 1e4 ? `${(n / 1e3).toFixed(0)}k`
    : Number.isInteger(n) ? String(n) : n.toFixed(n < 10 ? 2 : 1));

/**
 * A chart element for `series` [{name, color, points: [[x, y], …]}] where
 * x is a time in ms. `label` describes it for screen readers.
 * Step lines suit stock levels (`step: true`).
 */
export function lineChart({ label, series, step = false, unit = '' }) {
  const root = h('figure', { class: 'chart' });
  const chart = svg('svg', { viewBox: `0 0 ${W} ${H}`, role: 'img', 'aria-label': label, preserveAspectRatio: 'none' });
  const xs = series.flatMap((s) => s.points.map((p) => p[0]));
  const ys = series.flatMap((s) => s.points.map((p) => p[1])).filter((y) => y !== null && Number.isFinite(y));
  if (xs.length === 0 || ys.length === 0) {
    chart.append(svg('text', { x: W / 2, y: H / 2, 'text-anchor': 'middle', fill: '#57606a' }, 'no data yet'));
  } else {
    const [x0, x1] = [Math.min(...xs), Math.max(...xs)];
    let [y0, y1] = [Math.min(0, ...ys), Math.max(...ys)];
    if (y1 === y0) y1 = y0 + 1;
    const sx = (x) => PAD.left + ((x - x0) / Math.max(1, x1 - x0)) * (W - PAD.left - PAD.right);
    const sy = (y) => H - PAD.bottom - ((y - y0) / (y1 - y0)) * (H - PAD.top - PAD.bottom);
    for (const y of [y0, (y0 + y1) / 2, y1]) {
      chart.append(svg('line', { x1: PAD.left, x2: W - PAD.right, y1: sy(y), y2: sy(y), stroke: '#d0d7de' }));
      chart.append(svg('text', { x: PAD.left - 4, y: sy(y) + 4, 'text-anchor': 'end', 'font-size': 11, fill: '#57606a' }, short(y) + unit));
    }
    for (const [x, anchor] of [[x0, 'start'], [x1, 'end']]) {
      chart.append(svg('text', { x: sx(x), y: H - 6, 'text-anchor': anchor, 'font-size': 11, fill: '#57606a' },
        new Date(x).toLocaleTimeString()));
    }
    for (const s of series) {
      let d = '';
      let pen = 'M';
      let last = null;
      for (const [x, y] of s.points) {
        if (y === null || !Number.isFinite(y)) { pen = 'M'; continue; }
        if (step && last !== null && pen === 'L') d += `L${sx(x).toFixed(1)},${sy(last).toFixed(1)}`;
        d += `${pen}${sx(x).toFixed(1)},${sy(y).toFixed(1)}`;
        pen = 'L';
        last = y;
      }
      chart.append(svg('path', { d, fill: 'none', stroke: s.color, 'stroke-width': 2, 'vector-effect': 'non-scaling-stroke' }));
    }
  }
  root.append(chart);
  root.append(h('figcaption', { class: 'legend' },
    series.map((s) => h('span', { style: `--c:${s.color}` }, s.name))));
  return root;
}
