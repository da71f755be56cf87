// Circuit breakers and rate limits (#/breakers): each upstream's breaker state and
// each rate-limited route's rejections, both updated every second from the live
// feed, and the recent breaker transitions and rate-limit events.

import { enc, get, getAll } from '../api.js';
import { duration } from '../forms.js';
import { subscribe } from '../live.js';
import {
  badge, h, mount, nextTrial, num, pct, severityBadge, stateBadge, table, time,
} from '../ui.js';
import { limitText } from './routes.js';

const RECENT = 40;

export async function render(main) {
  const [breakers, upstreams, routes, snap, cbEvents, rlEvents] = await Promise.all([
    get('/api/v1/circuit-breakers').catch((e) => (e.code === 'NO_DATA_PLANE' ? null : Promise.reject(e))),
    getAll('/api/v1/upstreams'),
    getAll('/api/v1/routes'),
    get('/api/v1/metrics').catch(() => null),
    get(`/api/v1/events?category=circuit_breaker&limit=${RECENT}`),
    get(`/api/v1/events?type=rate_limit.exceeded&limit=${RECENT}`),
  ]);
  const configs = new Map(upstreams.map((u) => [u.name, u.circuit_breaker]));
  const limited = routes.filter((r) => r.rate_limit);
  let state = breakers || [];
  let traffic = new Map();
  let upTraffic = new Map();
  let events = mergeEvents([...cbEvents.items, ...rlEvents.items]);

  const liveBadge = badge('connecting', 'muted');
  liveBadge.id = 'live-status';
  const stat = (id) => h('div', { class: 'value', id });
  const cards = { open: stat('stat-open'), half: stat('stat-half-open'), limitedRate: stat('stat-limited-rate'), limited: stat('stat-limited') };
  const card = (label, el) => h('div', { class: 'card' }, h('div', { class: 'label' }, label), el);
  const breakersBox = h('div', { id: 'breakers-table' });
  const limitsBox = h('div', { id: 'rate-limits-table' });
  const eventsBox = h('div', { id: 'transitions' });

  function rows() {
    // Every upstream, with the data plane's state where it has one.
    const byName = new Map(state.map((b) => [b.upstream, b]));
    const names = [...new Set([...upstreams.map((u) => u.name), ...state.map((b) => b.upstream)])].sort();
    return names.map((n) => ({ upstream: n, config: configs.get(n), ...(byName.get(n) || { state: null }) }));
  }

  function failureCell(b) {
    if (b.failure_rate === undefined) return h('span', { class: 'muted' }, '—');
    const threshold = b.config ? b.config.failure_rate_percent : null;
    const fill = h('span', { class: 'fill' });
    // A CSSOM property, which the CSP allows (an inline style attribute it would not).
    fill.style.width = `${Math.min(100, Math.max(0, b.failure_rate * 100))}%`;
    const bar = h('span', { class: `meter${threshold !== null && b.failure_rate * 100 >= threshold ? ' over' : ''}`, 'aria-hidden': 'true' }, fill);
    return h('span', { class: 'meter-cell' }, bar, ` ${pct(b.failure_rate)}`,
      threshold !== null ? h('span', { class: 'muted small' }, ` / ${threshold}%`) : null);
  }

  function drawBreakers() {
    const all = rows();
    cards.open.textContent = num(all.filter((b) => b.state === 'open').length);
    cards.half.textContent = num(all.filter((b) => b.state === 'half_open').length);
    if (breakers === null) {
      mount(breakersBox, h('p', { class: 'empty' }, 'No gateway runs in this process, so there are no breakers to show.'));
      return;
    }
    mount(breakersBox, table([
      { label: 'Upstream', render: (b) => upstreamCell(b.upstream) },
      { label: 'State', render: (b) => (b.config && !b.config.enabled ? badge('disabled', 'muted')
        : b.state ? stateBadge(b.state) : badge('no traffic yet', 'muted')) },
      { label: 'Failure rate', render: failureCell },
      { label: 'Requests in window', class: 'num hide-narrow', render: (b) => num(b.requests_in_window) },
      { label: 'Rejected (10 s)', class: 'num hide-narrow', render: (b) => num(upTraffic.get(b.upstream)?.breaker_rejections ?? 0) },
      { label: 'Opened', class: 'hide-narrow', render: (b) => time(b.opened_at) },
      { label: 'Next trial', class: 'hide-narrow', render: nextTrial },
      { label: 'Opens at', class: 'hide-narrow', render: (b) => (b.config ? (b.config.enabled
        ? `${b.config.failure_rate_percent}% of ≥${b.config.min_requests} in ${duration(b.config.window_ms)}; open ${duration(b.config.open_ms)}`
        : 'breaker off') : '—') },
    ], all, {
      empty: 'No upstreams yet.',
      rowAttrs: (b) => ({ dataset: { upstream: b.upstream, state: b.state || 'none' }, class: b.state === 'open' ? 'row-bad' : b.state === 'half_open' ? 'row-warn' : '' }),
    }));
  }

  function drawLimits() {
    let total = 0;
    let rate = 0;
    for (const t of traffic.values()) { total += t.rate_limited || 0; rate += t.rate_limited_per_second || 0; }
    cards.limited.textContent = num(total);
    cards.limitedRate.textContent = num(rate, 1);
    mount(limitsBox, table([
      { label: 'Route', render: (r) => h('a', { href: `#/routes/edit/${enc(r.id)}` }, r.id) },
      { label: 'Limit', render: (r) => h('span', {}, limitText(r.rate_limit), r.rate_limit.enabled ? null : [' ', badge('off', 'muted')]) },
      { label: 'Limited (10 s)', class: 'num', render: (r) => {
        const n = traffic.get(r.id)?.rate_limited || 0;
        return n ? badge(num(n), 'warn') : '0';
      } },
      { label: 'Limited/s', class: 'num hide-narrow', render: (r) => num(traffic.get(r.id)?.rate_limited_per_second || 0, 1) },
      { label: 'Requests/s', class: 'num hide-narrow', render: (r) => num(traffic.get(r.id)?.requests_per_second || 0, 1) },
      { label: 'Share limited', class: 'num hide-narrow', render: (r) => {
        const t = traffic.get(r.id);
        return t && t.requests ? pct(t.rate_limited / t.requests) : '—';
      } },
    ], limited, { empty: 'No route has a rate limit.', rowAttrs: (r) => ({ dataset: { route: r.id } }) }));
  }

  function drawEvents() {
    mount(eventsBox, table([
      { label: 'When', render: (e) => time(e.created_at) },
      { label: 'Severity', class: 'hide-narrow', render: (e) => severityBadge(e.severity) },
      { label: 'Change', render: (e) => transition(e) },
      { label: 'Where', render: (e) => (e.upstream ? upstreamCell(e.upstream)
        : e.route_id ? h('a', { href: `#/routes/edit/${enc(e.route_id)}` }, e.route_id) : '—') },
      { label: 'Details', class: 'hide-narrow', key: 'message' },
    ], events, { empty: 'No breaker transitions or rate-limit events yet.', rowAttrs: (e) => ({ dataset: { type: e.type } }) }));
  }

  mount(main,
    h('div', { class: 'toolbar' }, h('h1', { class: 'grow' }, 'Circuit breakers and rate limits'), liveBadge),
    h('div', { class: 'grid' },
      card('Breakers open', cards.open), card('Half-open', cards.half),
      card('Rate limited/s', cards.limitedRate), card('Rate limited (10 s)', cards.limited)),
    h('section', { class: 'panel' }, h('h2', {}, 'Circuit breakers by upstream'), breakersBox),
    h('section', { class: 'panel' }, h('h2', {}, 'Rate limits by route'), limitsBox),
    h('section', { class: 'panel' }, h('h2', {}, 'Recent transitions'), eventsBox));

  function update(s) {
    if (breakers !== null && s.breakers) state = s.breakers;
    traffic = new Map((s.routes || []).map((r) => [r.route, r]));
    upTraffic = new Map((s.upstreams || []).map((u) => [u.upstream, u]));
    drawBreakers();
    drawLimits();
  }
  if (snap) update(snap);
  else { drawBreakers(); drawLimits(); }
  drawEvents();

  const offs = [
    subscribe('metrics', update),
    subscribe('event', (e) => {
      if (e.category !== 'circuit_breaker' && e.type !== 'rate_limit.exceeded') return;
      events = mergeEvents([e, ...events]);
      drawEvents();
    }),
    subscribe('status', (s) => {
      liveBadge.textContent = s;
      liveBadge.className = `badge ${s === 'live' ? 'ok' : 'warn'}`;
    }),
  ];
  return () => offs.forEach((off) => off());
}

/// A route whose upstream is a URL gets a one-target pool named route:<id>.
function upstreamCell(name) {
  const route = name.startsWith('route:') ? name.slice(6) : null;
  if (route !== null) {
    return h('span', {}, h('a', { href: `#/routes/edit/${enc(route)}` }, route), h('span', { class: 'muted small' }, ' (URL of the route)'));
  }
  return h('a', { href: `#/upstreams/view/${enc(name)}` }, name);
}

function mergeEvents(list) {
  const seen = new Set();
  return list.filter((e) => (seen.has(e.id) ? false : seen.add(e.id)))
    .sort((a, b) => (b.created_at > a.created_at ? 1 : b.created_at < a.created_at ? -1 : b.id - a.id))
    .slice(0, RECENT);
}

function transition(e) {
  const map = {
    'circuit_breaker.opened': ['opened', 'bad'],
    'circuit_breaker.half_open': ['half-open', 'warn'],
    'circuit_breaker.closed': ['closed', 'ok'],
    'rate_limit.exceeded': ['rate limited', 'warn'],
  };
  const [text, kind] = map[e.type] || [e.type, 'muted'];
  const count = e.type === 'rate_limit.exceeded' && e.details && (e.details.count ?? e.details.rejected);
  return h('span', {}, badge(text, kind), count ? h('span', { class: 'muted small' }, ` ×${num(count)}`) : null,
    h('code', { class: 'hide-narrow small muted' }, ` ${e.type}`));
}
