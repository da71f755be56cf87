// A live line chart in SVG: a fixed number of samples per series, redrawn in place.

const NS = 'http://www.w3.org/2000/svg';

function svg(tag, attrs) {
  const el = document.createElementNS(NS, tag);
  for (const [k, v] of Object.entries(attrs || {})) el.setAttribute(k, v);
  return el;
}

export class LineChart {
  /// series: [{label, format(v)}]; capacity: samples kept.
  constructor(series, { capacity = 120, height = 180, label = 'chart' } = {}) {
    this.series = series.map((s) => ({ ...s, values: [] }));
    this.capacity = capacity;
    this.height = height;
    this.el = svg('svg', { class: 'chart', viewBox: `0 0 600 ${height}`, preserveAspectRatio: 'none',
      role: 'img', 'aria-label': label });
    this.legend = document.createElement('div');
    this.legend.className = 'legend';
    this.draw();
  }

  push(values) {
    this.series.forEach((s, i) => {
      s.values.push(values[i] ?? null);
      if (s.values.length > this.capacity) s.values.shift();
    });
    this.draw();
  }

  draw() {
    const w = 600;
    const h = this.height;
    const pad = 18;
    const all = this.series.flatMap((s) => s.values).filter((v) => v !== null && Number.isFinite(v));
    const max = Math.max(1e-9, ...all) * 1.15;
    this.el.replaceChildren();
    for (let i = 0; i <= 3; i += 1) {
      const y = pad + ((h - 2 * pad) * i) / 3;
      this.el.append(svg('line', { class: 'grid-line', x1: 0, x2: w, y1: y, y2: y }));
    }
    const top = svg('text', { class: 'axis', x: 4, y: pad - 6 });
    top.textContent = this.series[0].format ? this.series[0].format(max) : max.toFixed(1);
    this.el.append(top);
    this.series.forEach((s, i) => {
      let d = '';
      const n = this.capacity;
      s.values.forEach((v, j) => {
        if (v === null || !Number.isFinite(v)) return;
        const x = (w * (n - s.values.length + j)) / (n - 1);
        const y = h - pad - ((h - 2 * pad) * v) / max;
        d += `${d ? 'L' : 'M'}${x.toFixed(1)},${y.toFixed(1)}`;
      });
      this.el.append(svg('path', { d, class: `c${i}` }));
    });
    this.legend.replaceChildren(...this.series.map((s, i) => {
      const span = document.createElement('span');
      span.className = `c${i}`;
      const last = s.values[s.values.length - 1];
      span.textContent = `${s.label}: ${last === null || last === undefined ? '—' : (s.format ? s.format(last) : last)}`;
      return span;
    }));
  }
}
