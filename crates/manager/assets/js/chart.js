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

/// A line chart over time: points are `[ms, value]`, placed by their time on an
/// x axis from `from` to `to` (ticks labelled with the time of day, or the day
/// for ranges over a day). `slide(now)` moves a live window on.
export class TimeChart {
  /// series: [{label, format(v)}].
  constructor(series, { height = 180, label = 'chart' } = {}) {
    this.series = series.map((s) => ({ ...s, points: [] }));
    this.height = height;
    this.from = Date.now() - 15 * 60_000;
    this.to = Date.now();
    this.el = svg('svg', { class: 'chart time-chart', viewBox: `0 0 600 ${height}`, preserveAspectRatio: 'none',
      role: 'img', 'aria-label': label });
    this.legend = document.createElement('div');
    this.legend.className = 'legend';
    this.axis = document.createElement('div');
    this.axis.className = 'time-axis';
    this.draw();
  }

  /// Replaces every series' points (from a stored series) and the range.
  set(from, to, pointsPerSeries) {
    this.from = from;
    this.to = to;
    this.series.forEach((s, i) => { s.points = (pointsPerSeries[i] || []).filter(([t]) => t >= from && t <= to); });
    this.draw();
  }

  /// Appends one live sample at `t` and slides the window to end there.
  push(t, values) {
    const span = this.to - this.from;
    this.to = Math.max(this.to, t);
    this.from = this.to - span;
    this.series.forEach((s, i) => {
      s.points.push([t, values[i] ?? null]);
      while (s.points.length && s.points[0][0] < this.from) s.points.shift();
    });
    this.draw();
  }

  draw() {
    const w = 600;
    const h = this.height;
    const pad = 18;
    const span = Math.max(1, this.to - this.from);
    const all = this.series.flatMap((s) => s.points.map(([, v]) => v)).filter((v) => v !== null && Number.isFinite(v));
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
      const pts = s.points.map(([t, v]) => (v === null || !Number.isFinite(v) ? null
        : [(w * (t - this.from)) / span, h - pad - ((h - 2 * pad) * v) / max]));
      pts.forEach((p, j) => {
        if (!p) return;
        const joined = j > 0 && pts[j - 1];
        d += `${joined ? 'L' : 'M'}${p[0].toFixed(1)},${p[1].toFixed(1)}`;
        // A point with no neighbour (a lone step with requests) is drawn as a
        // dot rather than not at all.
        if (!joined && !pts[j + 1]) d += 'h0.01';
      });
      this.el.append(svg('path', { d, class: `c${i}` }));
    });
    // Five ticks under the chart, as HTML so that the text is not stretched.
    const long = span > 36 * 3600_000;
    const ticks = [];
    for (let i = 0; i <= 4; i += 1) {
      const t = new Date(this.from + (span * i) / 4);
      const span2 = document.createElement('span');
      span2.textContent = long
        ? t.toLocaleDateString(undefined, { month: 'short', day: 'numeric' })
        : t.toLocaleTimeString(undefined, { hour: '2-digit', minute: '2-digit' });
      ticks.push(span2);
    }
    this.axis.replaceChildren(...ticks);
    this.legend.replaceChildren(...this.series.map((s, i) => {
      const span3 = document.createElement('span');
      span3.className = `c${i}`;
      const last = [...s.points].reverse().find(([, v]) => v !== null && Number.isFinite(v));
      span3.textContent = `${s.label}: ${last ? (s.format ? s.format(last[1]) : last[1]) : '—'}`;
      return span3;
    }));
  }
}
