// Charts with history: stored series (/api/v1/metrics/series) for a range the
// operator picks (15 min, 1 h, 24 h, 7 d), all traffic or one route or upstream,
// optionally kept moving by the live snapshots of /ws/dashboard.

import { get } from './api.js';
import { TimeChart } from './chart.js';
import { h } from './ui.js';
import { segmented } from './widgets.js';

export const RANGES = [['15m', '15 min', 15 * 60_000], ['1h', '1 h', 3600_000], ['24h', '24 h', 86_400_000], ['7d', '7 d', 7 * 86_400_000]];

/// charts: [{title, label, series: [{metric, label, format}]}];
/// scope: {route} or {upstream} or {} (all traffic).
/// Returns {el, picker, load(range), push(t, snapshotValuesPerChart)}.
export function historyCharts(charts, scope = {}, { range = '15m', id = 'history' } = {}) {
  const built = charts.map((c) => ({ ...c, chart: new TimeChart(c.series, { label: c.label || c.title }) }));
  let current = range;
  let seq = 0;
  const status = h('span', { class: 'muted small', 'aria-live': 'polite' });

  async function load(r = current) {
    current = r;
    const mine = ++seq;
    const span = RANGES.find(([k]) => k === r)[2];
    const to = Date.now();
    const from = to - span;
    const q = new URLSearchParams({ from: String(from), to: String(to) });
    if (scope.route) q.set('route', scope.route);
    if (scope.upstream) q.set('upstream', scope.upstream);
    status.textContent = 'loading…';
    try {
      const answers = await Promise.all(built.map((c) => Promise.all(c.series.map((s) => {
        const qs = new URLSearchParams(q);
        qs.set('metric', s.metric);
        return get(`/api/v1/metrics/series?${qs}`);
      }))));
      if (mine !== seq) return;
      built.forEach((c, i) => c.chart.set(from, to, answers[i].map((a) => a.points.map((p) => [p.ts, p.value]))));
      const res = answers[0] && answers[0][0] ? answers[0][0].step : null;
      status.textContent = res ? `one point per ${res >= 3600 ? `${res / 3600} h` : res >= 60 ? `${res / 60} min` : `${res} s`}` : '';
    } catch (e) {
      if (mine === seq) status.textContent = `history unavailable: ${e.message}`;
    }
  }

  const picker = segmented('Time range', RANGES.map(([k, label]) => [k, label]), current, (r) => load(r));
  picker.id = `${id}-range`;
  const el = h('div', { class: 'history', id },
    h('div', { class: 'panel-head history-head' }, h('h2', {}, 'History'), status, picker),
    h('div', { class: 'two' }, built.map((c) => h('section', { class: 'panel', dataset: { chart: c.series.map((s) => s.metric).join(' ') } },
      h('h3', {}, c.title), c.chart.el, c.chart.axis, c.chart.legend))));

  return {
    el,
    load,
    /// Appends live values: one array per chart, one value per series.
    push(t, valuesPerChart) {
      // Live samples every second suit the short ranges; longer ones move with
      // the stored series (read again on each pick).
      if (current !== '15m' && current !== '1h') return;
      built.forEach((c, i) => c.chart.push(t, valuesPerChart[i]));
    },
  };
}
