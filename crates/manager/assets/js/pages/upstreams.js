// Upstreams: the list at #/upstreams, the editor at #/upstreams/new and
// #/upstreams/edit/<name>, and the detail at #/upstreams/view/<name> with each
// target's live health (polled every few seconds) and the live traffic.

import { ApiError, del, enc, get, getAll, getVersioned, post, put } from '../api.js';
import {
  changedFields, clone, control, crumbs, duration, FieldErrors, readInto, report, section, showStale, showWhen,
} from '../forms.js';
import { revisionToast, stack } from '../widgets.js';
import { subscribe, onEvents } from '../live.js';
import { historyCharts } from '../history.js';
import {
  attempt, badge, clearErrors, confirm, h, mount, ms, num, pct, search, severityBadge,
  stateBadge, table, targetBadge, time, toast,
} from '../ui.js';

// Target health is read again on every event of the upstream (a target down or
// up, a breaker change) and otherwise this often while the page is visible: the
// dashboard's own calls must leave room in the session's API allowance.
const HEALTH_EVERY_MS = 15000;

export async function render(main, ctx, params) {
  if (params[0] === 'new') return editor(main, ctx, null);
  if (params[0] === 'edit' && params[1]) return editor(main, ctx, params[1]);
  if (params[0] === 'view' && params[1]) return detail(main, ctx, params[1]);
  return list(main, ctx);
}

const DEFAULTS = {
  name: '', targets: [{ url: '', weight: 1 }], load_balancing: 'round_robin', hash_on: 'ip',
  health_check: { active: null, passive: null },
  circuit_breaker: { enabled: true, failure_rate_percent: 50, min_requests: 10, window_ms: 10_000, open_ms: 30_000, half_open_requests: 3 },
  timeouts: { connect_ms: 5000, request_ms: 30_000, idle_ms: 60_000, read_ms: 60_000, send_ms: 60_000 },
  retries: { attempts: 1, on: ['connect_error', 502, 503, 504], budget_percent: 20 },
  tls: { verify: true, sni: null, ca_pem: null },
};
const DEFAULT_ACTIVE = { path: '/health', interval_ms: 5000, timeout_ms: 2000, healthy_threshold: 2, unhealthy_threshold: 3, expected_statuses: [200] };
const DEFAULT_PASSIVE = { max_failures: 5, eject_ms: 30_000 };

const LB = [['round_robin', 'Round robin'], ['least_connections', 'Least connections'], ['weighted', 'Weighted'], ['consistent_hash', 'Consistent hash']];
const lbLabel = (v) => (LB.find(([k]) => k === v) || [v, v])[1];

function healthBadges(u) {
  const out = [];
  if (u.health_check.active) out.push(badge(`active ${u.health_check.active.path} every ${duration(u.health_check.active.interval_ms)}`, 'info'));
  if (u.health_check.passive) out.push(badge(`passive: eject after ${u.health_check.passive.max_failures} failures`, 'info'));
  return out.length ? out : h('span', { class: 'muted' }, 'none');
}

/// A short summary of targets' health: `healthy`, `1 of 3 down`, `all down`,
/// or `not probed` when no check has run.
export function healthSummary(targets) {
  if (!targets || !targets.length) return badge('no targets', 'muted');
  const down = targets.filter((t) => t.state !== 'healthy').length;
  const probed = targets.some((t) => t.last_check || t.state !== 'healthy');
  if (!probed) return badge('not probed', 'muted');
  if (!down) return badge('healthy', 'ok');
  return badge(down === targets.length ? 'all down' : `${down} of ${targets.length} down`, down === targets.length ? 'bad' : 'warn');
}

function breakerText(b) {
  if (!b.enabled) return 'off';
  return `opens at ${b.failure_rate_percent}% of ≥${b.min_requests} req in ${duration(b.window_ms)}, for ${duration(b.open_ms)}`;
}

export function breakerBadge(state) {
  return state ? stateBadge(state) : badge('no traffic yet', 'muted');
}

async function list(main, ctx) {
  const [upstreams, routes, snap] = await Promise.all([
    getAll('/api/v1/upstreams'),
    getAll('/api/v1/routes'),
    get('/api/v1/metrics').catch(() => null),
  ]);
  let text = '';
  const live = new Map();
  const cells = new Map();
  const box = h('div', { class: 'panel', id: 'upstreams-table' });
  const countEl = h('span', { class: 'muted' }, String(upstreams.length));
  const usedBy = (name) => routes.filter((r) => r.upstream === name).map((r) => r.id);

  function liveCells(name) {
    const t = live.get(name);
    return [
      t ? breakerBadge(t.breaker) : breakerBadge(null),
      t ? `${num(t.requests_per_second, 1)}/s${t.failure_rate ? ` · ${pct(t.failure_rate)} failed` : ''}` : '—',
    ];
  }

  async function remove(u) {
    const users = usedBy(u.name);
    if (users.length) {
      toast(`Upstream ${u.name} is used by route${users.length > 1 ? 's' : ''} ${users.join(', ')}; change ${users.length > 1 ? 'them' : 'it'} first.`, 'bad');
      return;
    }
    const ok = await confirm(h('span', {}, 'Delete upstream ', h('strong', {}, u.name), ` and its ${u.targets.length} target${u.targets.length === 1 ? '' : 's'}?`),
      { action: 'Delete upstream' });
    if (!ok) return;
    const done = await attempt(() => del(`/api/v1/upstreams/${enc(u.name)}`), `Upstream ${u.name} deleted.`);
    if (done !== undefined) {
      upstreams.splice(upstreams.indexOf(u), 1);
      draw();
    }
  }

  function draw() {
    cells.clear();
    const shown = upstreams.filter((u) => !text || [u.name, ...u.targets.map((t) => t.url)].join(' ').toLowerCase().includes(text));
    if (!upstreams.length) {
      mount(box, h('p', { class: 'empty' }, 'No upstreams yet. ',
        ctx.canEdit ? h('a', { href: '#/upstreams/new' }, 'Create one') : null,
        ctx.canEdit ? ' to give routes a pool of targets with health checks and a circuit breaker.' : null));
      return;
    }
    mount(box, stack(table([
      { label: 'Name', sort: (u) => u.name, render: (u) => h('a', { href: `#/upstreams/view/${enc(u.name)}`, class: 'strong' }, u.name) },
      { label: 'Targets', render: (u) => h('div', {}, u.targets.slice(0, 3).map((t) => h('div', {}, h('code', {}, t.url),
        u.load_balancing === 'weighted' ? h('span', { class: 'muted small' }, ` ×${t.weight}`) : null)),
      u.targets.length > 3 ? h('div', { class: 'muted small' }, `and ${u.targets.length - 3} more`) : null) },
      { label: 'Balancing', class: 'hide-narrow', sort: (u) => lbLabel(u.load_balancing), render: (u) => lbLabel(u.load_balancing) },
      { label: 'Health checks', class: 'hide-narrow', render: (u) => h('div', { class: 'badges' }, healthBadges(u)) },
      { label: 'Breaker', sort: (u) => live.get(u.name)?.breaker, render: (u) => { const c = h('span', {}, liveCells(u.name)[0]); cells.set(`${u.name}:b`, c); return c; } },
      { label: 'Traffic', class: 'hide-narrow', sort: (u) => live.get(u.name)?.requests_per_second, render: (u) => { const c = h('span', {}, liveCells(u.name)[1]); cells.set(`${u.name}:t`, c); return c; } },
      { label: 'Routes', class: 'hide-narrow', render: (u) => {
        const ids = usedBy(u.name);
        return ids.length ? ids.map((id, i) => [i ? ', ' : '', h('a', { href: `#/routes/edit/${enc(id)}` }, id)]) : h('span', { class: 'muted' }, 'none');
      } },
      { label: h('span', { class: 'sr-only' }, 'Actions'), class: 'actions', render: (u) => (ctx.canEdit ? [
        h('a', { class: 'button small', href: `#/upstreams/edit/${enc(u.name)}`, 'aria-label': `Edit upstream ${u.name}` }, 'Edit'), ' ',
        h('button', { type: 'button', class: 'small danger', 'aria-label': `Delete upstream ${u.name}`, onclick: () => remove(u) }, 'Delete'),
      ] : h('a', { class: 'button small', href: `#/upstreams/view/${enc(u.name)}` }, 'Details')) },
    ], shown, { empty: 'No upstream matches the search.', rowAttrs: (u) => ({ dataset: { upstream: u.name } }) })));
  }

  function update(s) {
    live.clear();
    for (const u of s.upstreams || []) live.set(u.upstream, u);
    for (const u of upstreams) {
      const [b, t] = liveCells(u.name);
      cells.get(`${u.name}:b`)?.replaceChildren(b);
      cells.get(`${u.name}:t`)?.replaceChildren(t);
    }
  }

  mount(main,
    h('div', { class: 'toolbar' },
      h('h1', { class: 'grow' }, 'Upstreams ', countEl),
      ctx.canEdit ? h('a', { class: 'button primary', href: '#/upstreams/new' }, 'New upstream') : null),
    h('div', { class: 'filters' }, search('Search upstreams and targets', (t) => { text = t; draw(); })),
    box);
  if (snap) update(snap);
  draw();
  // Changes made elsewhere show up here.
  const reload = async () => {
    try {
      const [fresh, freshRoutes] = await Promise.all([getAll('/api/v1/upstreams'), getAll('/api/v1/routes')]);
      upstreams.splice(0, upstreams.length, ...fresh);
      routes.splice(0, routes.length, ...freshRoutes);
      countEl.textContent = String(upstreams.length);
      draw();
    } catch { /* the next change tries again */ }
  };
  const offs = [
    subscribe('metrics', update),
    onEvents((e) => e.type === 'config.changed', reload),
  ];
  return () => offs.forEach((off) => off());
}

// ---------------------------------------------------------------- detail

async function detail(main, ctx, name) {
  const [u, routes, snap, events] = await Promise.all([
    get(`/api/v1/upstreams/${enc(name)}`),
    getAll('/api/v1/routes'),
    get('/api/v1/metrics').catch(() => null),
    get(`/api/v1/events?upstream=${enc(name)}&limit=10`).catch(() => ({ items: [] })),
  ]);
  const users = routes.filter((r) => r.upstream === name);
  const healthBox = h('div', { id: 'target-health' }, h('p', { class: 'empty' }, 'Loading target health…'));
  const updated = h('span', { class: 'muted small', id: 'health-updated', 'aria-live': 'off' });
  const stat = (id) => h('div', { class: 'value', id });
  const cards = { breaker: stat('up-breaker'), rps: stat('up-rps'), failures: stat('up-failure-rate'), p99: stat('up-p99'), retries: stat('up-retries') };
  const card = (label, el) => h('div', { class: 'card' }, h('div', { class: 'label' }, label), el);
  const eventsBox = h('div', { id: 'upstream-events' });
  let recent = events.items;
  let lastHealth = null;
  // Admins may close the breaker by hand (audited); others do not see the button.
  const canReset = ctx.canEdit && ctx.atLeast('admin');
  const resetButton = canReset ? h('button', { type: 'button', class: 'small', id: 'reset-breaker',
    title: 'Close the circuit breaker now: requests flow to the upstream again', onclick: resetBreaker }, 'Reset breaker') : null;
  function showBreaker(state) {
    cards.breaker.replaceChildren(breakerBadge(state));
    if (resetButton) {
      const closed = (state && typeof state === 'object' ? state.state : state) === 'closed';
      resetButton.disabled = closed;
      resetButton.title = closed ? 'The breaker is closed' : 'Close the circuit breaker now: requests flow to the upstream again';
    }
  }
  async function resetBreaker() {
    const ok = await confirm(h('span', {}, 'Reset the circuit breaker of ', h('strong', {}, name), '? ',
      'It closes at once and requests go to the upstream again, failing or not. The reset is recorded in the audit log.'),
    { action: 'Reset breaker' });
    if (!ok) return;
    const r = await attempt(() => post(`/api/v1/circuit-breakers/${enc(name)}/reset`));
    if (!r) return;
    toast(r.changed ? `Circuit breaker of ${name} reset (was ${r.was.replace('_', '-')}).` : `The breaker of ${name} was already closed.`);
    showBreaker(r.breaker.state);
  }

  async function refreshHealth() {
    try {
      const targets = await get(`/api/v1/upstreams/${enc(name)}/health`);
      lastHealth = Date.now();
      const weights = new Map(u.targets.map((t) => [t.url, t.weight]));
      mount(healthBox, stack(table([
        { label: 'Target', render: (t) => h('code', {}, t.url) },
        { label: 'Health', render: (t) => targetBadge(t, u.health_check && u.health_check.active) },
        { label: 'Weight', class: 'hide-narrow num', render: (t) => num(weights.get(t.url)) },
        { label: 'Failures in a row', class: 'hide-narrow num', render: (t) => num(t.consecutive_failures) },
        { label: 'Connections', class: 'hide-narrow num', render: (t) => num(t.active_connections) },
        { label: 'Last check', class: 'hide-narrow', render: (t) => time(t.last_check) },
        { label: 'Last error', render: (t) => (t.last_error ? h('span', { class: 'error-text' }, t.last_error) : h('span', { class: 'muted' }, '—')) },
      ], targets, { empty: 'The gateway has not loaded this upstream yet.', rowAttrs: (t) => ({ dataset: { target: t.url, state: t.state } }) })));
    } catch (e) {
      if (e instanceof ApiError && e.status === 401) return;
      mount(healthBox, h('p', { class: 'empty' }, e.code === 'NO_DATA_PLANE'
        ? 'No gateway runs in this process, so there is no target health to show.'
        : `Target health is unavailable: ${e.message}`));
    }
    tick();
  }
  function tick() {
    updated.textContent = lastHealth ? `updated ${Math.round((Date.now() - lastHealth) / 1000)} s ago · every ${HEALTH_EVERY_MS / 1000} s` : '';
  }

  const history = historyCharts([
    { title: 'Latency', series: [
      { metric: 'latency_p50_ms', label: 'p50', format: (v) => ms(v) },
      { metric: 'latency_p99_ms', label: 'p99', format: (v) => ms(v) },
    ] },
    { title: 'Failed attempts', series: [{ metric: 'upstream_failure_rate', label: 'failure rate', format: (v) => pct(v) }] },
  ], { upstream: name }, { id: 'upstream-history' });

  function update(s) {
    const t = (s.upstreams || []).find((x) => x.upstream === name);
    const b = (s.breakers || []).find((x) => x.upstream === name);
    if (t) history.push(Date.now(), [[t.latency_ms ? t.latency_ms.p50 : null, t.latency_ms ? t.latency_ms.p99 : null], [t.failure_rate]]);
    showBreaker(b ? b.state : t && t.breaker);
    cards.rps.textContent = t ? num(t.requests_per_second, 1) : '—';
    cards.failures.textContent = t ? pct(t.failure_rate) : '—';
    cards.p99.textContent = t && t.latency_ms ? ms(t.latency_ms.p99) : '—';
    cards.retries.textContent = t ? num(t.retries) : '—';
  }

  function renderEvents() {
    mount(eventsBox, table([
      { label: 'Severity', render: (e) => severityBadge(e.severity) },
      { label: 'Type', render: (e) => h('code', {}, e.type) },
      { label: 'Message', class: 'hide-narrow', key: 'message' },
      { label: 'When', render: (e) => time(e.created_at) },
    ], recent, { empty: 'No events for this upstream.' }));
  }

  async function remove() {
    if (users.length) {
      toast(`Upstream ${name} is used by ${users.map((r) => r.id).join(', ')}; change those routes first.`, 'bad');
      return;
    }
    const ok = await confirm(h('span', {}, 'Delete upstream ', h('strong', {}, name), '?'), { action: 'Delete upstream' });
    if (!ok) return;
    const done = await attempt(() => del(`/api/v1/upstreams/${enc(name)}`), `Upstream ${name} deleted.`);
    if (done !== undefined) location.hash = '#/upstreams';
  }

  const a = u.health_check.active;
  const p = u.health_check.passive;
  const r = u.retries;
  const dl = (rows) => h('dl', { class: 'kv' }, rows.map(([k, v]) => [h('dt', {}, k), h('dd', {}, v)]));
  mount(main,
    crumbs(['Upstreams', '#/upstreams'], name),
    h('div', { class: 'toolbar' },
      h('h1', { class: 'grow' }, `Upstream ${name}`),
      ctx.canEdit ? [
        h('a', { class: 'button', href: `#/upstreams/edit/${enc(name)}` }, 'Edit'),
        h('button', { type: 'button', class: 'danger', onclick: remove }, 'Delete'),
      ] : null),
    h('div', { class: 'grid' },
      h('div', { class: 'card' }, h('div', { class: 'label' }, 'Circuit breaker'), cards.breaker, resetButton),
      card('Requests/s', cards.rps), card('Failed attempts', cards.failures),
      card('p99 latency', cards.p99), card('Retries (10 s)', cards.retries)),
    history.el,
    h('section', { class: 'panel' },
      h('div', { class: 'panel-head' }, h('h2', {}, 'Targets'), updated),
      healthBox),
    h('div', { class: 'two' },
      h('section', { class: 'panel' }, h('h2', {}, 'Configuration'), dl([
        ['Load balancing', `${lbLabel(u.load_balancing)}${u.load_balancing === 'consistent_hash' ? ` on ${u.hash_on}` : ''}`],
        ['Active health check', a ? `GET ${a.path} every ${duration(a.interval_ms)} (timeout ${duration(a.timeout_ms)}); healthy after ${a.healthy_threshold}, unhealthy after ${a.unhealthy_threshold}; expects ${a.expected_statuses.join(', ')}` : 'off'],
        ['Passive health check', p ? `eject for ${duration(p.eject_ms)} after ${p.max_failures} failures in a row` : 'off'],
        ['Circuit breaker', breakerText(u.circuit_breaker)],
        ['Timeouts', `connect ${duration(u.timeouts.connect_ms)}, response ${duration(u.timeouts.request_ms)}, idle ${duration(u.timeouts.idle_ms)}`],
        ['Retries', r.attempts ? `${r.attempts} on ${r.on.join(', ') || 'nothing'} (budget ${r.budget_percent}%)` : 'none'],
        ['TLS', `${u.tls.verify ? 'verify certificates' : 'no verification'}${u.tls.sni ? `, SNI ${u.tls.sni}` : ''}${u.tls.ca_pem ? ', custom CA' : ''}`],
      ])),
      h('section', { class: 'panel' }, h('h2', {}, 'Routes using it'),
        users.length ? h('ul', { class: 'plain-list' }, users.map((x) => h('li', {},
          h('a', { href: `#/routes/edit/${enc(x.id)}` }, x.id), ' ', h('code', {}, x.path),
          x.enabled ? null : [' ', badge('disabled', 'muted')])))
          : h('p', { class: 'empty' }, 'No route sends traffic here.'))),
    h('section', { class: 'panel' }, h('h2', {}, 'Recent events'), eventsBox));

  await history.load();
  if (snap) update(snap);
  renderEvents();
  await refreshHealth();
  const timer = setInterval(() => { if (!document.hidden) refreshHealth(); }, HEALTH_EVERY_MS);
  const ticker = setInterval(tick, 1000);
  let soon = null;
  const offs = [
    subscribe('metrics', update),
    subscribe('event', (e) => {
      if (e.upstream !== name) return;
      recent = [e, ...recent].slice(0, 10);
      renderEvents();
      clearTimeout(soon);
      soon = setTimeout(refreshHealth, 250);
    }),
  ];
  return () => { clearInterval(timer); clearInterval(ticker); clearTimeout(soon); offs.forEach((off) => off()); };
}

// ---------------------------------------------------------------- editor

function targetsEditor(targets, { readonly, canTest }) {
  const rows = h('div', { class: 'target-rows' });
  const wrapper = h('div', { class: 'field wide', dataset: { field: 'targets' } },
    h('div', { class: 'label', id: 'targets-label' }, 'Targets'),
    h('div', { class: 'target-head', 'aria-hidden': 'true' }, h('span', {}, 'URL'), h('span', {}, 'Weight')),
    rows,
    readonly ? null : h('button', { type: 'button', class: 'small', onclick: () => { add({ url: '', weight: 1 }); renumber(); rows.lastChild.querySelector('input').focus(); } }, 'Add target'),
    h('div', { class: 'help' }, 'http://host:port or https://host:port, optionally with a path prefix. Weight 0 drains a target; weights count for weighted balancing.'),
    h('div', { class: 'error', role: 'alert' }));

  function add(t) {
    const url = h('input', { type: 'text', value: t.url, placeholder: 'http://10.0.0.5:8080', readonly, spellcheck: 'false', autocomplete: 'off' });
    const weight = h('input', { type: 'number', min: 0, max: 1000, step: 1, value: String(t.weight ?? 1), readonly, inputmode: 'numeric' });
    const result = h('div', { class: 'test-result small', 'aria-live': 'polite' });
    const row = h('div', { class: 'target-row' },
      h('div', { class: 'field url' }, url, h('div', { class: 'error', role: 'alert' })),
      h('div', { class: 'field weight' }, weight, h('div', { class: 'error', role: 'alert' })),
      h('div', { class: 'row-actions' },
        canTest ? h('button', { type: 'button', class: 'small', onclick: () => test(url.value, result) }, 'Test') : null,
        readonly ? null : h('button', { type: 'button', class: 'small danger', onclick: () => { row.remove(); renumber(); } }, 'Remove')),
      result);
    row.inputs = { url, weight };
    rows.append(row);
  }

  function renumber() {
    [...rows.children].forEach((row, i) => {
      const [urlField, weightField] = row.querySelectorAll('.field');
      urlField.dataset.field = `targets[${i}].url`;
      weightField.dataset.field = `targets[${i}].weight`;
      row.inputs.url.setAttribute('aria-label', `Target ${i + 1} URL`);
      row.inputs.weight.setAttribute('aria-label', `Target ${i + 1} weight`);
      const btns = row.querySelectorAll('.row-actions button');
      btns.forEach((b) => b.setAttribute('aria-label', `${b.textContent} target ${i + 1}`));
    });
  }

  async function test(url, out) {
    out.textContent = 'Testing…';
    out.className = 'test-result small';
    try {
      const rep = await post('/api/v1/troubleshooting/test-upstream', { url, timeout_ms: 3000 });
      const failed = ['dns', 'connect', 'tls', 'http'].map((k) => [k, rep[k]]).find(([, s]) => s && s.status === 'error');
      out.textContent = rep.reachable
        ? `Reachable in ${ms(rep.total_ms)}${rep.http && rep.http.details && rep.http.details.status ? ` (HTTP ${rep.http.details.status})` : ''}`
        : `Not reachable${failed ? `: ${failed[0]} failed: ${failed[1].error}` : ''}`;
      out.classList.add(rep.reachable ? 'ok-text' : 'error-text');
    } catch (e) {
      out.textContent = e.message;
      out.classList.add('error-text');
    }
  }

  (targets.length ? targets : [{ url: '', weight: 1 }]).forEach(add);
  renumber();
  return {
    el: wrapper,
    path: 'targets',
    read(target, errors) {
      target.targets = [...rows.children].map((row, i) => {
        const w = row.inputs.weight;
        let weight = Number(w.value);
        if (w.validity.badInput || !Number.isInteger(weight) || w.value.trim() === '') {
          errors.push({ field: `targets[${i}].weight`, message: 'must be a whole number' });
          weight = 1;
        }
        return { url: row.inputs.url.value.trim(), weight };
      });
      if (!target.targets.length) errors.push({ field: 'targets', message: 'needs at least one target' });
    },
  };
}

async function editor(main, ctx, name) {
  const loaded = name ? await getVersioned(`/api/v1/upstreams/${enc(name)}`) : null;
  let etag = loaded ? loaded.etag : null;
  const original = loaded ? loaded.data : clone(DEFAULTS);
  const readonly = !ctx.canEdit;
  const title = name ? `Edit upstream ${name}` : 'New upstream';
  const body = h('div', { class: 'sections' });
  let parts = null;

  function build(u) {
    const c = (spec) => control({ ...spec, readonly: readonly || spec.readonly },
      spec.value !== undefined ? spec.value : spec.path.split('.').reduce((o, k) => (o == null ? undefined : o[k]), u));
    const lb = c({ path: 'load_balancing', label: 'Load balancing', kind: 'select', options: LB });
    const hashOn = c({ path: 'hash_on', label: 'Hash on', placeholder: 'ip', help: 'ip, header:<name> or cookie:<name>.' });
    const targets = targetsEditor(u.targets, { readonly, canTest: ctx.canEdit });
    const basics = section('Upstream', [
      c({ path: 'name', label: 'Name', readonly: !!name, required: true, placeholder: 'orders-api',
        help: name ? 'An upstream cannot be renamed.' : 'Letters, digits, _ - . (1–64); routes refer to it by this name.' }),
      lb, hashOn, targets,
    ]);
    showWhen(hashOn, lb.input, () => lb.input.value === 'consistent_hash');
    const act = u.health_check.active || DEFAULT_ACTIVE;
    const active = section('Active health check', [
      c({ path: 'health_check.active.path', label: 'Probe path', value: act.path }),
      c({ path: 'health_check.active.expected_statuses', label: 'Healthy statuses', kind: 'ints', value: act.expected_statuses }),
      c({ path: 'health_check.active.interval_ms', label: 'Every (ms)', kind: 'int', value: act.interval_ms }),
      c({ path: 'health_check.active.timeout_ms', label: 'Timeout (ms)', kind: 'int', value: act.timeout_ms }),
      c({ path: 'health_check.active.healthy_threshold', label: 'Healthy after successes', kind: 'int', value: act.healthy_threshold }),
      c({ path: 'health_check.active.unhealthy_threshold', label: 'Unhealthy after failures', kind: 'int', value: act.unhealthy_threshold }),
    ], { toggle: { label: 'Probe every target on a schedule', on: !!u.health_check.active, path: 'health_check.active' }, readonly });
    const pas = u.health_check.passive || DEFAULT_PASSIVE;
    const passive = section('Passive health check', [
      c({ path: 'health_check.passive.max_failures', label: 'Eject after failures in a row', kind: 'int', value: pas.max_failures }),
      c({ path: 'health_check.passive.eject_ms', label: 'Ejected for (ms)', kind: 'int', value: pas.eject_ms }),
    ], { toggle: { label: 'Eject targets that fail real traffic', on: !!u.health_check.passive, path: 'health_check.passive' }, readonly });
    const breaker = section('Circuit breaker', [
      c({ path: 'circuit_breaker.failure_rate_percent', label: 'Opens at failure rate (%)', kind: 'int' }),
      c({ path: 'circuit_breaker.min_requests', label: 'Minimum requests in the window', kind: 'int' }),
      c({ path: 'circuit_breaker.window_ms', label: 'Window (ms)', kind: 'int' }),
      c({ path: 'circuit_breaker.open_ms', label: 'Stays open for (ms)', kind: 'int' }),
      c({ path: 'circuit_breaker.half_open_requests', label: 'Trial requests when half-open', kind: 'int' }),
    ], { toggle: { label: 'Stop sending traffic while the upstream fails', on: u.circuit_breaker.enabled, path: 'circuit_breaker.enabled' }, readonly });
    const timeouts = section('Timeouts', [
      c({ path: 'timeouts.connect_ms', label: 'Connect (ms)', kind: 'int' }),
      c({ path: 'timeouts.request_ms', label: 'Response headers (ms)', kind: 'int' }),
      c({ path: 'timeouts.idle_ms', label: 'Idle keep-alive (ms)', kind: 'int' }),
      c({ path: 'timeouts.read_ms', label: 'Pause in a response body (ms)', kind: 'int' }),
      c({ path: 'timeouts.send_ms', label: 'Stalled request body write (ms)', kind: 'int' }),
    ]);
    const retries = section('Retries', [
      c({ path: 'retries.attempts', label: 'Extra attempts (0–5)', kind: 'int', min: 0 }),
      c({ path: 'retries.budget_percent', label: 'Retry budget (% of requests)', kind: 'int' }),
      c({ path: 'retries.on', label: 'Retry on', kind: 'retry_on', wide: true, alias: 'retries.on',
        help: 'connect_error, timeout, and statuses 429 or 5xx; comma separated.' }),
    ]);
    const tls = section('TLS to the targets', [
      c({ path: 'tls.verify', label: 'Verify the targets\' certificates', kind: 'bool', wide: true }),
      c({ path: 'tls.sni', label: 'Server name (SNI)', nullable: true, placeholder: 'the target\'s host', emptyText: 'the target\'s host' }),
      c({ path: 'tls.ca_pem', label: 'Extra CA certificates (PEM)', kind: 'textarea', nullable: true, wide: true, rows: 3,
        placeholder: '-----BEGIN CERTIFICATE-----' }),
    ]);
    parts = { basics, active, passive, breaker, timeouts, retries, tls };
    mount(body, Object.values(parts).map((s) => s.el));
  }

  function gather() {
    const out = clone(original);
    const errors = [];
    const p = parts;
    for (const s of [p.basics, p.breaker, p.timeouts, p.retries, p.tls]) readInto(out, s.controls, errors);
    out.circuit_breaker.enabled = p.breaker.on();
    out.health_check = out.health_check || {};
    if (p.active.on()) { out.health_check.active = {}; readInto(out, p.active.controls, errors); } else out.health_check.active = null;
    if (p.passive.on()) { out.health_check.passive = {}; readInto(out, p.passive.controls, errors); } else out.health_check.passive = null;
    if (errors.length) throw new FieldErrors(errors);
    return out;
  }

  const saveButton = h('button', { type: 'submit', class: 'primary' }, name ? 'Save changes' : 'Create upstream');
  const form = h('form', { class: 'editor', novalidate: true, 'aria-label': title },
    h('div', { class: 'form-error', role: 'alert', tabindex: '-1' }),
    readonly ? h('p', { class: 'notice' }, `Read only: your role (${ctx.role}) can view this upstream but not change it.`) : null,
    body,
    h('div', { class: 'form-actions' },
      readonly ? null : saveButton,
      h('a', { class: 'button', href: name ? `#/upstreams/view/${enc(name)}` : '#/upstreams' }, readonly ? 'Back' : 'Cancel')));

  form.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    if (readonly) return;
    clearErrors(form);
    let u;
    try { u = gather(); } catch (e) { report(form, e); return; }
    saveButton.disabled = true;
    try {
      const saved = name
        ? await put(`/api/v1/upstreams/${enc(name)}`, u, { etag })
        : await post('/api/v1/upstreams', u);
      revisionToast(name ? `Upstream ${saved.name} saved.` : `Upstream ${saved.name} created.`, saved.name);
      location.hash = `#/upstreams/view/${enc(saved.name)}`;
    } catch (e) {
      if (e instanceof ApiError && e.status === 412) {
        const now = await get(`/api/v1/upstreams/${enc(name)}`).catch(() => null);
        showStale(form, 'upstream', reload, now ? changedFields(original, now) : []);
      }
      else if (e instanceof ApiError && e.status === 409 && !name) report(form, new FieldErrors([{ field: 'name', message: e.message }]));
      else report(form, e);
    } finally {
      saveButton.disabled = false;
    }
  });

  async function reload() {
    const fresh = await getVersioned(`/api/v1/upstreams/${enc(name)}`);
    etag = fresh.etag;
    Object.keys(original).forEach((k) => delete original[k]);
    Object.assign(original, fresh.data);
    clearErrors(form);
    build(original);
    toast('Loaded the current version.');
  }

  build(original);
  mount(main,
    name ? crumbs(['Upstreams', '#/upstreams'], [name, `#/upstreams/view/${enc(name)}`], 'Edit') : crumbs(['Upstreams', '#/upstreams'], 'New'),
    h('div', { class: 'toolbar' }, h('h1', { class: 'grow' }, title)),
    form);
  if (!readonly) form.querySelector(name ? '.target-row input' : '[data-field="name"] input')?.focus();
  return undefined;
}
