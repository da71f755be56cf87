// Overview: traffic (requests/s, error rate, p50/p99 latency) from the stored series
// for a picked range, moving live every second,
// breakers that are not closed, unacknowledged events, recent events and revisions.

import { get } from '../api.js';
import { historyCharts } from '../history.js';
import { stack } from '../widgets.js';
import { subscribe } from '../live.js';
import { h, mount, table, num, pct, ms, time, badge, severityBadge, stateBadge, nextTrial } from '../ui.js';

export async function render(main, ctx) {
  const [snap, counts, events, revisions] = await Promise.all([
    get('/api/v1/metrics'),
    get('/api/v1/events/count'),
    get('/api/v1/events?limit=8'),
    get('/api/v1/revisions?limit=5'),
  ]);

  const cards = {
    rps: h('div', { class: 'value', id: 'stat-rps' }),
    errors: h('div', { class: 'value', id: 'stat-error-rate' }),
    p50: h('div', { class: 'value', id: 'stat-p50' }),
    p99: h('div', { class: 'value', id: 'stat-p99' }),
    requests: h('div', { class: 'value', id: 'stat-requests' }),
  };
  const card = (label, el) => h('div', { class: 'card' }, h('div', { class: 'label' }, label), el);
  const history = historyCharts([
    { title: 'Requests per second', series: [{ metric: 'requests_per_second', label: 'requests/s', format: (v) => num(v, 1) }] },
    { title: 'Latency', series: [
      { metric: 'latency_p50_ms', label: 'p50', format: (v) => ms(v) },
      { metric: 'latency_p99_ms', label: 'p99', format: (v) => ms(v) },
    ] },
    { title: 'Error rate', series: [{ metric: 'error_rate', label: 'error rate', format: (v) => pct(v) }] },
  ], {}, { id: 'overview-history' });
  const liveBadge = badge('connecting', 'muted');
  liveBadge.id = 'live-status';
  const breakersBox = h('div', { id: 'breakers' });
  const routesBox = h('div', { id: 'top-routes' });
  const countsBox = h('div', { class: 'grid', id: 'event-counts' });
  const eventsBox = h('div', { id: 'recent-events' });
  let recent = events.items;

  function renderCounts(c) {
    mount(countsBox,
      card('Critical', h('div', { class: 'value' }, num(c.critical))),
      card('Warning', h('div', { class: 'value' }, num(c.warning))),
      card('Info', h('div', { class: 'value' }, num(c.info))));
  }

  function renderEvents() {
    mount(eventsBox, stack(table([
      { label: 'Severity', render: (e) => severityBadge(e.severity) },
      { label: 'Type', render: (e) => h('code', {}, e.type) },
      { label: 'Message', key: 'message' },
      { label: 'When', render: (e) => time(e.created_at) },
    ], recent, { empty: 'No events yet.' })));
  }

  function update(s) {
    const t = s.totals;
    cards.rps.textContent = num(t.requests_per_second, 1);
    cards.errors.textContent = pct(t.error_rate);
    cards.p50.textContent = ms(t.latency_ms.p50);
    cards.p99.textContent = ms(t.latency_ms.p99);
    cards.requests.textContent = num(t.requests);
    history.push(Date.now(), [[t.requests_per_second], [t.latency_ms.p50, t.latency_ms.p99], [t.error_rate]]);
    const notClosed = (s.breakers || []).filter((b) => b.state !== 'closed');
    mount(breakersBox, notClosed.length
      ? stack(table([
        { label: 'Upstream', render: (b) => h('a', { href: `#/upstreams/view/${encodeURIComponent(b.upstream)}` }, b.upstream) },
        { label: 'State', render: (b) => stateBadge(b.state) },
        { label: 'Failure rate', render: (b) => pct(b.failure_rate) },
        { label: 'Next trial', render: nextTrial },
      ], notClosed))
      : h('p', { class: 'empty' }, s.data_plane ? 'All circuit breakers are closed.' : 'No data plane runs in this process.'));
    mount(routesBox, stack(table([
      { label: 'Route', render: (r) => h('a', { href: `#/routes/edit/${encodeURIComponent(r.route)}` }, r.route) },
      { label: 'Req/s', render: (r) => num(r.requests_per_second, 1) },
      { label: 'Errors', render: (r) => pct(r.error_rate) },
      { label: 'p99', render: (r) => ms(r.latency_ms.p99) },
      { label: 'Limited', render: (r) => num(r.rate_limited) },
    ], s.routes.slice(0, 8), { empty: 'No traffic in the last seconds.' })));
  }

  mount(main,
    h('div', { class: 'toolbar' }, h('h1', { class: 'grow' }, 'Overview'), liveBadge),
    h('div', { class: 'grid' },
      card('Requests/s', cards.rps), card('Error rate', cards.errors),
      card('p50 latency', cards.p50), card('p99 latency', cards.p99),
      card('Requests (10 s)', cards.requests)),
    history.el,
    h('section', { class: 'panel' }, h('h2', {}, 'Circuit breakers not closed'), breakersBox),
    h('section', { class: 'panel' }, h('h2', {}, 'Busiest routes'), routesBox),
    h('h2', {}, 'Unacknowledged events'),
    countsBox,
    h('div', { class: 'two' },
      h('section', { class: 'panel' }, h('h2', {}, h('a', { href: '#/events' }, 'Recent events')), eventsBox),
      h('section', { class: 'panel' }, h('h2', {}, h('a', { href: '#/revisions' }, 'Recent configuration changes')),
        stack(table([
          { label: '#', render: (r) => h('a', { href: `#/revisions/${r.number}` }, `#${r.number}`) },
          { label: 'Change', key: 'message' },
          { label: 'By', key: 'author' },
          { label: 'When', render: (r) => time(r.created_at) },
        ], revisions.items, { empty: 'No revisions yet.' })))));

  await history.load();
  update(snap);
  renderCounts(counts);
  renderEvents();
  let countsTimer = null;
  const refreshCounts = () => {
    clearTimeout(countsTimer);
    countsTimer = setTimeout(async () => {
      try { renderCounts(await get('/api/v1/events/count')); } catch { /* shown on next change */ }
    }, 300);
  };
  const offs = [
    subscribe('metrics', update),
    subscribe('event', (e) => {
      recent = [e, ...recent].slice(0, 8);
      renderEvents();
      refreshCounts();
    }),
    subscribe('status', (s) => {
      liveBadge.textContent = s;
      liveBadge.className = `badge ${s === 'live' ? 'ok' : 'warn'}`;
    }),
  ];
  return () => { offs.forEach((off) => off()); clearTimeout(countsTimer); };
}
