// Routes: the list (search, filters by state, upstream and tag, live traffic,
// enable/disable, delete) at #/routes, and the editor at #/routes/new and
// #/routes/edit/<id>. Updates send the ETag of the version they started from.

import { ApiError, del, enc, get, getAll, getVersioned, post, put } from '../api.js';
import {
  changedFields, clone, control, crumbs, duration, FieldErrors, readInto, report, section, showStale,
} from '../forms.js';
import { revisionToast, stack } from '../widgets.js';
import { subscribe, onEvents } from '../live.js';
import { historyCharts } from '../history.js';
import { breakerBadge, healthSummary } from './upstreams.js';
import {
  attempt, badge, clearErrors, compare, confirm, h, mount, ms, num, pct, search, toast,
} from '../ui.js';

export async function render(main, ctx, params) {
  if (params[0] === 'new') return editor(main, ctx, null);
  if (params[0] === 'edit' && params[1]) return editor(main, ctx, params[1]);
  return list(main, ctx);
}

// Filters survive leaving the list and coming back.
const filters = { text: '', enabled: '', upstream: '', tag: '' };
// The column the list is ordered by (null: the API's order) and its direction.
const order = { by: null, dir: 1 };

const DEFAULT_LIMIT = { enabled: true, max: 100, window_ms: 60_000, message: 'Too many requests, please try again later.', key: 'ip' };
const DEFAULT_CORS = {
  allow_origins: ['*'], allow_methods: ['GET', 'POST', 'PUT', 'PATCH', 'DELETE', 'OPTIONS'],
  allow_headers: ['*'], expose_headers: [], allow_credentials: false, max_age_secs: 600,
};

function newRoute() {
  return {
    id: '', path: '/', match: 'prefix', upstream: '', methods: [], hosts: [], strip_path: false,
    enabled: true, priority: 0, rate_limit: null, description: '', tags: [],
    request_headers: { set: {}, remove: [] }, response_headers: { set: {}, remove: [] },
    cors: null, ip_allow: [], ip_deny: [], max_body_bytes: null, websocket: true, https_redirect: false,
  };
}

export function limitText(rl) {
  if (!rl) return '';
  return `${num(rl.max)} / ${duration(rl.window_ms)} per ${rl.key}`;
}

function isUrl(s) {
  return String(s).includes('://');
}

export function upstreamLink(name) {
  return isUrl(name) ? h('code', {}, name) : h('a', { href: `#/upstreams/view/${enc(name)}` }, name);
}

function matchCell(r) {
  return h('div', { class: 'match' },
    r.methods.length ? r.methods.map((m) => badge(m, 'info')) : null,
    h('code', {}, r.path),
    r.match !== 'prefix' ? badge(r.match, 'muted') : null,
    r.hosts.length ? h('div', { class: 'hosts muted small' }, r.hosts.join(', ')) : null);
}

function features(r) {
  const out = [];
  if (r.rate_limit) out.push(badge(`limit ${limitText(r.rate_limit)}`, r.rate_limit.enabled ? 'warn' : 'muted'));
  if (r.cors) out.push(badge('CORS', 'muted'));
  if (r.ip_allow.length || r.ip_deny.length) out.push(badge('IP rules', 'muted'));
  if (r.strip_path) out.push(badge('strip path', 'muted'));
  if (r.https_redirect) out.push(badge('→ HTTPS', 'muted'));
  if (!r.websocket) out.push(badge('no WebSocket', 'muted'));
  if (r.max_body_bytes !== null && r.max_body_bytes !== undefined) out.push(badge(`body ≤ ${num(r.max_body_bytes)} B`, 'muted'));
  for (const t of r.tags) out.push(badge(`#${t}`, 'tag'));
  return out.length ? out : h('span', { class: 'muted' }, '—');
}

async function list(main, ctx) {
  const [routes, snap] = await Promise.all([
    getAll('/api/v1/routes'),
    get('/api/v1/metrics').catch(() => null),
  ]);
  const traffic = new Map();
  const trafficCells = new Map();
  // Breaker state (live) and target health beside each named upstream.
  const breakers = new Map();
  const health = new Map();
  const statusCells = new Map();
  const named = [...new Set(routes.map((r) => r.upstream).filter((u) => !isUrl(u)))];
  async function loadHealth() {
    // One reading per upstream; a large installation shows breakers only.
    if (named.length > 30) return;
    await Promise.all(named.map(async (u) => {
      try { health.set(u, await get(`/api/v1/upstreams/${enc(u)}/health`)); } catch { health.delete(u); }
    }));
    drawStatus();
  }
  function statusOf(name) {
    if (isUrl(name)) return null;
    return h('span', { class: 'upstream-status' },
      health.has(name) ? healthSummary(health.get(name)) : null, ' ',
      breakers.has(name) ? breakerBadge(breakers.get(name)) : null);
  }
  function drawStatus() {
    for (const [name, cells] of statusCells) for (const c of cells) c.replaceChildren(statusOf(name) || '');
  }
  const countEl = h('span', { class: 'muted', id: 'route-count' });
  const tableBox = h('div', { class: 'panel', id: 'routes-table' });

  const upstreamNames = () => [...new Set(routes.map((r) => r.upstream))].sort();
  const tagNames = () => [...new Set(routes.flatMap((r) => r.tags))].sort();
  if (filters.upstream && !upstreamNames().includes(filters.upstream)) filters.upstream = '';
  if (filters.tag && !tagNames().includes(filters.tag)) filters.tag = '';

  const setOptions = (el, key, options) => {
    el.replaceChildren(...options.map(([v, l]) => h('option', { value: v, selected: filters[key] === v }, l)));
  };
  const select = (label, key, options) => {
    const el = h('select', { 'aria-label': label, onchange: () => { filters[key] = el.value; draw(); } });
    setOptions(el, key, options);
    return el;
  };
  const searchBox = search('Search routes', (t) => { filters.text = t; draw(); });
  searchBox.value = filters.text;

  function matches(r) {
    if (filters.enabled === 'on' && !r.enabled) return false;
    if (filters.enabled === 'off' && r.enabled) return false;
    if (filters.upstream && r.upstream !== filters.upstream) return false;
    if (filters.tag && !r.tags.includes(filters.tag)) return false;
    if (!filters.text) return true;
    const hay = [r.id, r.path, r.upstream, r.description, ...r.hosts, ...r.tags, ...r.methods].join(' ').toLowerCase();
    return filters.text.split(/\s+/).every((w) => hay.includes(w));
  }

  function trafficText(id) {
    const t = traffic.get(id);
    if (!t) return '—';
    return h('span', {}, `${num(t.requests_per_second, 1)}/s`,
      t.error_rate ? h('span', { class: 'error-text' }, ` · ${pct(t.error_rate)} err`) : null);
  }

  function stateControl(r) {
    if (!ctx.canEdit) return badge(r.enabled ? 'enabled' : 'disabled', r.enabled ? 'ok' : 'muted');
    const sw = h('button', {
      type: 'button', class: 'switch', role: 'switch', 'aria-checked': String(r.enabled),
      'aria-label': `Route ${r.id} enabled`, title: r.enabled ? 'Enabled: click to disable' : 'Disabled: click to enable',
      onclick: async () => {
        sw.disabled = true;
        const done = await attempt(async () => {
          const { data, etag } = await getVersioned(`/api/v1/routes/${enc(r.id)}`);
          const saved = await put(`/api/v1/routes/${enc(r.id)}`, { ...data, enabled: !data.enabled }, { etag });
          Object.assign(r, saved);
          return saved;
        }, undefined);
        if (done) toast(`Route ${r.id} ${done.enabled ? 'enabled' : 'disabled'}.`);
        draw();
      },
    }, h('span', { class: 'knob' }));
    return sw;
  }

  async function remove(r) {
    const ok = await confirm(h('span', {}, 'Delete route ', h('strong', {}, r.id), ` (${r.path} → ${r.upstream})? `,
      'Requests it matches will no longer be forwarded. The deletion is recorded as a revision and can be rolled back.'),
    { action: 'Delete route' });
    if (!ok) return;
    const done = await attempt(() => del(`/api/v1/routes/${enc(r.id)}`), `Route ${r.id} deleted.`);
    if (done !== undefined) {
      routes.splice(routes.indexOf(r), 1);
      draw();
    }
  }

  // Routes picked for a bulk action, by id.
  const selected = new Set();
  const bulkBox = h('div', { class: 'bulk', id: 'routes-bulk' });

  function drawBulk() {
    for (const id of [...selected]) if (!routes.some((r) => r.id === id)) selected.delete(id);
    const n = selected.size;
    if (!ctx.canEdit || !n) { mount(bulkBox); return; }
    mount(bulkBox, h('span', { class: 'muted' }, `${n} selected`),
      h('button', { type: 'button', class: 'small', onclick: () => bulk('enable') }, 'Enable'),
      h('button', { type: 'button', class: 'small', onclick: () => bulk('disable') }, 'Disable'),
      h('button', { type: 'button', class: 'small danger', onclick: () => bulk('delete') }, 'Delete'),
      h('button', { type: 'button', class: 'small', onclick: () => { selected.clear(); draw(); } }, 'Clear'));
  }

  /// Enables, disables or deletes the selected routes, one change each (each
  /// a revision), and says how many succeeded and what failed.
  async function bulk(action) {
    const ids = [...selected];
    if (action === 'delete' && !await confirm(`Delete ${ids.length} route${ids.length === 1 ? '' : 's'} (${ids.join(', ')})? `
      + 'Each deletion is a revision and can be rolled back.', { action: 'Delete routes' })) return;
    const failed = [];
    let done = 0;
    for (const id of ids) {
      try {
        if (action === 'delete') {
          await del(`/api/v1/routes/${enc(id)}`);
          routes.splice(routes.findIndex((r) => r.id === id), 1);
        } else {
          const { data, etag } = await getVersioned(`/api/v1/routes/${enc(id)}`);
          const want = action === 'enable';
          if (data.enabled !== want) {
            const saved = await put(`/api/v1/routes/${enc(id)}`, { ...data, enabled: want }, { etag });
            Object.assign(routes.find((r) => r.id === id), saved);
          }
        }
        selected.delete(id);
        done += 1;
      } catch (e) {
        failed.push(`${id}: ${e.message}`);
      }
    }
    const verb = { enable: 'enabled', disable: 'disabled', delete: 'deleted' }[action];
    toast(failed.length ? `${done} ${verb}; ${failed.length} failed: ${failed.join('; ')}` : `${done} route${done === 1 ? '' : 's'} ${verb}.`,
      failed.length ? 'bad' : '');
    draw();
  }

  // What each sortable column orders by.
  const sortKeys = {
    state: (r) => (r.enabled ? 0 : 1),
    route: (r) => r.id,
    match: (r) => r.path,
    upstream: (r) => r.upstream,
    traffic: (r) => traffic.get(r.id)?.requests_per_second ?? null,
  };
  /// A column header that orders the list by `key` (again to reverse).
  function sortHead(label, key, cls) {
    const sort = order.by === key ? (order.dir === 1 ? 'ascending' : 'descending') : 'none';
    return h('th', { scope: 'col', class: cls, 'aria-sort': sort },
      h('button', { type: 'button', class: 'sort', onclick: () => {
        order.dir = order.by === key ? -order.dir : 1;
        order.by = key;
        draw();
      } }, label));
  }

  function draw() {
    drawBulk();
    const shown = routes.filter(matches);
    if (order.by && sortKeys[order.by]) {
      const key = sortKeys[order.by];
      shown.sort((a, b) => order.dir * compare(key(a), key(b)));
    }
    statusCells.clear();
    countEl.textContent = shown.length === routes.length
      ? `${routes.length} route${routes.length === 1 ? '' : 's'}`
      : `${shown.length} of ${routes.length} routes`;
    trafficCells.clear();
    if (!routes.length) {
      mount(tableBox, h('p', { class: 'empty' }, 'No routes yet. ',
        ctx.canEdit ? h('a', { href: '#/routes/new' }, 'Create the first route') : null,
        ctx.canEdit ? ' to forward requests to an upstream.' : null));
      return;
    }
    if (!shown.length) {
      mount(tableBox, h('p', { class: 'empty' }, 'No route matches these filters. ',
        h('button', { type: 'button', class: 'small', onclick: reset }, 'Clear filters')));
      return;
    }
    mount(tableBox, stack(h('table', { class: 'routes' },
      h('thead', {}, h('tr', {},
        ctx.canEdit ? h('th', { scope: 'col', class: 'select' }, h('input', { type: 'checkbox', 'aria-label': 'Select all shown routes',
          checked: shown.every((r) => selected.has(r.id)),
          onchange: (ev) => { for (const r of shown) { if (ev.target.checked) selected.add(r.id); else selected.delete(r.id); } draw(); } })) : null,
        sortHead('State', 'state'), sortHead('Route', 'route'),
        sortHead('Match', 'match'), sortHead('Upstream', 'upstream', 'hide-narrow'),
        h('th', { scope: 'col', class: 'hide-narrow' }, 'Policies'), sortHead('Traffic', 'traffic', 'hide-narrow'),
        h('th', { scope: 'col', class: 'actions' }, h('span', { class: 'sr-only' }, 'Actions')))),
      h('tbody', {}, shown.map((r) => {
        const tspan = h('span', {}, trafficText(r.id));
        const tcell = h('td', { class: 'hide-narrow num' }, tspan);
        trafficCells.set(r.id, tspan);
        return h('tr', { dataset: { route: r.id }, class: r.enabled ? '' : 'disabled' },
          ctx.canEdit ? h('td', { class: 'select' }, h('input', { type: 'checkbox', 'aria-label': `Select route ${r.id}`,
            checked: selected.has(r.id),
            onchange: (ev) => { if (ev.target.checked) selected.add(r.id); else selected.delete(r.id); drawBulk(); } })) : null,
          h('td', {}, stateControl(r)),
          h('td', {}, h('a', { href: `#/routes/edit/${enc(r.id)}`, class: 'strong' }, r.id),
            r.description ? h('div', { class: 'muted small' }, r.description) : null),
          h('td', {}, matchCell(r), h('div', { class: 'show-narrow muted small' }, '→ ', r.upstream)),
          h('td', { class: 'hide-narrow' }, upstreamLink(r.upstream), (() => {
            const c = h('div', { class: 'small' }, statusOf(r.upstream) || '');
            if (!statusCells.has(r.upstream)) statusCells.set(r.upstream, []);
            statusCells.get(r.upstream).push(c);
            return c;
          })()),
          h('td', { class: 'hide-narrow' }, h('div', { class: 'badges' }, features(r))),
          tcell,
          h('td', { class: 'actions' }, ctx.canEdit ? [
            h('a', { class: 'button small', href: `#/routes/edit/${enc(r.id)}`, 'aria-label': `Edit route ${r.id}` }, 'Edit'),
            ' ',
            h('button', { type: 'button', class: 'small danger', 'aria-label': `Delete route ${r.id}`, onclick: () => remove(r) }, 'Delete'),
          ] : h('a', { class: 'button small', href: `#/routes/edit/${enc(r.id)}`, 'aria-label': `View route ${r.id}` }, 'View')));
      })))));
  }

  const enabledSel = select('Filter by state', 'enabled', [['', 'Any state'], ['on', 'Enabled'], ['off', 'Disabled']]);
  const upstreamOptions = () => [['', 'Any upstream'], ...upstreamNames().map((u) => [u, u])];
  const tagOptions = () => [['', 'Any tag'], ...tagNames().map((t) => [t, t])];
  const upstreamSel = select('Filter by upstream', 'upstream', upstreamOptions());
  const tagSel = select('Filter by tag', 'tag', tagOptions());
  function reset() {
    Object.assign(filters, { text: '', enabled: '', upstream: '', tag: '' });
    searchBox.value = ''; enabledSel.value = ''; upstreamSel.value = ''; tagSel.value = '';
    draw();
  }

  mount(main,
    h('div', { class: 'toolbar' },
      h('h1', { class: 'grow' }, 'Routes ', countEl),
      ctx.canEdit ? h('a', { class: 'button primary', href: '#/routes/new' }, 'New route') : null),
    h('div', { class: 'filters' }, searchBox, enabledSel, upstreamSel, tagSel),
    bulkBox,
    tableBox);

  const updateTraffic = (s) => {
    traffic.clear();
    for (const r of s.routes || []) traffic.set(r.route, r);
    for (const [id, cell] of trafficCells) cell.replaceChildren(trafficText(id));
    const before = JSON.stringify([...breakers]);
    breakers.clear();
    for (const u of s.upstreams || []) if (u.breaker) breakers.set(u.upstream, u.breaker);
    for (const b of s.breakers || []) breakers.set(b.upstream, b.state);
    if (JSON.stringify([...breakers]) !== before) drawStatus();
  };
  if (snap) updateTraffic(snap);
  draw();
  // Changes made elsewhere (another operator, the API, a rollback) show up here.
  const reload = async () => {
    try {
      const fresh = await getAll('/api/v1/routes');
      routes.splice(0, routes.length, ...fresh);
      setOptions(upstreamSel, 'upstream', upstreamOptions());
      setOptions(tagSel, 'tag', tagOptions());
      draw();
    } catch { /* the next change tries again */ }
  };
  loadHealth();
  const offs = [
    subscribe('metrics', updateTraffic),
    onEvents((e) => e.type === 'config.changed', reload),
    onEvents((e) => e.type.startsWith('health.'), loadHealth, 500),
  ];
  return () => offs.forEach((off) => off());
}

// ---------------------------------------------------------------- editor

async function editor(main, ctx, id) {
  const [loaded, upstreams] = await Promise.all([
    id ? getVersioned(`/api/v1/routes/${enc(id)}`) : null,
    getAll('/api/v1/upstreams').catch(() => []),
  ]);
  let etag = loaded ? loaded.etag : null;
  const original = loaded ? loaded.data : newRoute();
  const readonly = !ctx.canEdit;
  const title = id ? `Route ${id}` : 'New route';

  const datalist = h('datalist', { id: 'upstream-names' }, upstreams.map((u) => h('option', { value: u.name })));
  const errorBox = h('div', { class: 'form-error', role: 'alert', tabindex: '-1' });
  const body = h('div', { class: 'sections' });
  const jsonBox = h('div', { class: 'json-edit', hidden: true });
  let mode = 'form';
  let parts = null;
  let hadLimit = false;

  function build(route) {
    const c = (spec) => control({ ...spec, readonly: readonly || spec.readonly }, spec.value !== undefined ? spec.value : valueAt(route, spec.path));
    const basics = section('Route', [
      c({ path: 'id', label: 'ID', readonly: !!id, placeholder: 'generated when empty',
        help: id ? 'The id of a route cannot change.' : 'Letters, digits, _ - . (1–64). Leave empty to generate one.' }),
      c({ path: 'tags', label: 'Tags', kind: 'list', placeholder: 'public, v2', help: 'Comma separated; used for filtering.' }),
      c({ path: 'description', label: 'Description', kind: 'textarea', wide: true, rows: 2 }),
      c({ path: 'enabled', label: 'Enabled (a disabled route matches nothing)', kind: 'bool', wide: true }),
    ]);
    const matchType = c({ path: 'match', label: 'Match', kind: 'select', options: [['prefix', 'Prefix'], ['exact', 'Exact'], ['regex', 'Regular expression']],
      help: 'Prefix: /api matches /api and /api/…; exact: only the path itself; regex: matched against the whole path.' });
    const matching = section('Match requests', [
      c({ path: 'path', label: 'Path', required: true, placeholder: '/api' }),
      matchType,
      c({ path: 'hosts', label: 'Hosts', kind: 'list', placeholder: 'api.example.com, *.example.com', emptyText: 'any host', help: 'Empty matches any host.' }),
      c({ path: 'priority', label: 'Priority', kind: 'int', help: 'Among equally specific matches, the higher priority wins.' }),
      c({ path: 'methods', label: 'Methods (none selected allows all)', kind: 'methods', wide: true }),
    ]);
    const forward = section('Forward to', [
      c({ path: 'upstream', label: 'Upstream', required: true, list: 'upstream-names', placeholder: 'an upstream name or http://host:port',
        help: 'The name of an upstream, or a URL for a single target.' }),
      c({ path: 'max_body_bytes', label: 'Maximum request body (bytes)', kind: 'int', nullable: true, min: 0, placeholder: 'no limit', emptyText: 'no limit' }),
      c({ path: 'strip_path', label: 'Strip the matched prefix before forwarding', kind: 'bool' }),
      c({ path: 'websocket', label: 'Allow WebSocket upgrades', kind: 'bool' }),
      c({ path: 'https_redirect', label: 'Redirect plain HTTP to HTTPS', kind: 'bool' }),
    ]);
    const rl = route.rate_limit || DEFAULT_LIMIT;
    const rate = section('Rate limit', [
      c({ path: 'rate_limit.max', label: 'Requests allowed', kind: 'int', min: 1, value: rl.max }),
      c({ path: 'rate_limit.window_ms', label: 'Per window (ms)', kind: 'int', min: 100, value: rl.window_ms, help: '60000 = one minute.' }),
      c({ path: 'rate_limit.key', label: 'Counted per', value: rl.key, placeholder: 'ip', list: 'limit-keys',
        help: 'ip, api_key or header:<name>.' }),
      c({ path: 'rate_limit.message', label: 'Message of the 429 answer', value: rl.message }),
    ], { toggle: { label: 'Limit the request rate of this route', on: !!(route.rate_limit && route.rate_limit.enabled), path: 'rate_limit',
      help: route.rate_limit && !route.rate_limit.enabled ? 'Configured but switched off.' : undefined }, readonly, id: 'section-rate-limit' });
    const headers = section('Headers', [
      c({ path: 'request_headers.set', label: 'Set on the request', kind: 'headers', placeholder: 'X-Forwarded-Prefix: /api', help: 'One "Name: value" per line.' }),
      c({ path: 'request_headers.remove', label: 'Remove from the request', kind: 'list', placeholder: 'Cookie, X-Debug' }),
      c({ path: 'response_headers.set', label: 'Set on the response', kind: 'headers', placeholder: 'Cache-Control: no-store', help: 'One "Name: value" per line.' }),
      c({ path: 'response_headers.remove', label: 'Remove from the response', kind: 'list', placeholder: 'Server' }),
    ]);
    const cors = route.cors || DEFAULT_CORS;
    const corsSection = section('CORS', [
      c({ path: 'cors.allow_origins', label: 'Allowed origins', kind: 'list', value: cors.allow_origins, help: '* for any origin.' }),
      c({ path: 'cors.allow_methods', label: 'Allowed methods', kind: 'list', value: cors.allow_methods }),
      c({ path: 'cors.allow_headers', label: 'Allowed headers', kind: 'list', value: cors.allow_headers }),
      c({ path: 'cors.expose_headers', label: 'Exposed headers', kind: 'list', value: cors.expose_headers }),
      c({ path: 'cors.max_age_secs', label: 'Preflight cache (seconds)', kind: 'int', min: 0, value: cors.max_age_secs }),
      c({ path: 'cors.allow_credentials', label: 'Allow credentials', kind: 'bool', value: cors.allow_credentials }),
    ], { toggle: { label: 'Answer CORS preflights and add CORS headers', on: !!route.cors, path: 'cors' }, readonly });
    const ip = section('Client IP rules', [
      c({ path: 'ip_allow', label: 'Allow only', kind: 'lines', placeholder: '10.0.0.0/8\n192.168.1.10', help: 'One address or CIDR block per line; empty allows all.' }),
      c({ path: 'ip_deny', label: 'Deny', kind: 'lines', placeholder: '203.0.113.0/24', help: 'Checked before the allow list.' }),
    ]);
    parts = { basics, matching, forward, rate, headers, corsSection, ip };
    hadLimit = !!route.rate_limit;
    mount(body, Object.values(parts).map((s) => s.el),
      h('datalist', { id: 'limit-keys' }, ['ip', 'api_key', 'header:X-API-Key'].map((v) => h('option', { value: v }))));
  }

  function valueAt(route, path) {
    return path.split('.').reduce((o, k) => (o === null || o === undefined ? undefined : o[k]), route);
  }

  /// The route the form describes; throws FieldErrors for what cannot be read.
  function gather() {
    const out = clone(original);
    const errors = [];
    const p = parts;
    for (const s of [p.basics, p.matching, p.forward, p.headers, p.ip]) readInto(out, s.controls, errors);
    // Switched off, a configured limit is kept (disabled) rather than dropped.
    if (p.rate.on() || hadLimit) {
      out.rate_limit = {};
      readInto(out, p.rate.controls, errors);
      out.rate_limit.enabled = p.rate.on();
    } else {
      out.rate_limit = null;
    }
    if (p.corsSection.on()) {
      out.cors = {};
      readInto(out, p.corsSection.controls, errors);
    } else {
      out.cors = null;
    }
    if (!out.id) delete out.id;
    if (errors.length) throw new FieldErrors(errors);
    return out;
  }

  const jsonArea = h('textarea', { class: 'mono', rows: 28, spellcheck: 'false', 'aria-label': 'Route as JSON', readonly });
  mount(jsonBox, h('div', { class: 'field wide', dataset: { field: '_json' } },
    h('p', { class: 'help' }, 'The route exactly as the API stores it. Field names are those of the API reference.'),
    jsonArea, h('div', { class: 'error', role: 'alert' })));

  const [asJson, asForm] = readonly ? ['Show as JSON', 'Show as form'] : ['Edit as JSON', 'Edit as form'];
  const modeButton = h('button', { type: 'button', class: 'small', 'aria-pressed': 'false', onclick: () => switchMode() }, asJson);
  function switchMode() {
    clearErrors(form);
    if (mode === 'form') {
      let route;
      try { route = gather(); } catch (e) { report(form, e); return; }
      jsonArea.value = JSON.stringify(route, null, 2);
      body.hidden = true; jsonBox.hidden = false; mode = 'json';
      modeButton.textContent = asForm; modeButton.setAttribute('aria-pressed', 'true');
      jsonArea.focus();
    } else {
      let route;
      try { route = JSON.parse(jsonArea.value); } catch (e) {
        report(form, new FieldErrors([{ field: '_json', message: `not valid JSON (${e.message})` }]));
        return;
      }
      build({ ...newRoute(), ...route });
      body.hidden = false; jsonBox.hidden = true; mode = 'form';
      modeButton.textContent = asJson; modeButton.setAttribute('aria-pressed', 'false');
    }
  }

  const saveButton = h('button', { type: 'submit', class: 'primary' }, id ? 'Save changes' : 'Create route');
  const form = h('form', { class: 'editor', novalidate: true, 'aria-label': title },
    errorBox,
    readonly ? h('p', { class: 'notice' }, `Read only: your role (${ctx.role}) can view this route but not change it.`) : null,
    body, jsonBox,
    h('div', { class: 'form-actions' },
      readonly ? null : saveButton,
      h('a', { class: 'button', href: '#/routes' }, readonly ? 'Back to routes' : 'Cancel'),
      h('span', { class: 'grow' }),
      modeButton,
      id && !readonly ? h('button', { type: 'button', class: 'danger', onclick: removeThis }, 'Delete') : null));

  async function removeThis() {
    const ok = await confirm(h('span', {}, 'Delete route ', h('strong', {}, id), '? Requests it matches will no longer be forwarded.'),
      { action: 'Delete route' });
    if (!ok) return;
    const done = await attempt(() => del(`/api/v1/routes/${enc(id)}`), `Route ${id} deleted.`);
    if (done !== undefined) location.hash = '#/routes';
  }

  form.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    if (readonly) return;
    clearErrors(form);
    let route;
    try {
      if (mode === 'json') {
        try { route = JSON.parse(jsonArea.value); } catch (e) {
          throw new FieldErrors([{ field: '_json', message: `not valid JSON (${e.message})` }]);
        }
        // Back to the form, so the API's field messages have their fields.
        build({ ...newRoute(), ...route });
        body.hidden = false; jsonBox.hidden = true; mode = 'form';
        modeButton.textContent = asJson; modeButton.setAttribute('aria-pressed', 'false');
      } else {
        route = gather();
      }
    } catch (e) {
      report(form, e);
      return;
    }
    saveButton.disabled = true;
    try {
      const saved = id
        ? await put(`/api/v1/routes/${enc(id)}`, route, { etag })
        : await post('/api/v1/routes', route);
      revisionToast(id ? `Route ${saved.id} saved.` : `Route ${saved.id} created.`, saved.id);
      location.hash = '#/routes';
    } catch (e) {
      if (e instanceof ApiError && e.status === 412) {
        const now = await get(`/api/v1/routes/${enc(id)}`).catch(() => null);
        showStale(form, 'route', reload, now ? changedFields(original, now) : []);
      } else if (e instanceof ApiError && e.status === 409 && !id) {
        report(form, new FieldErrors([{ field: 'id', message: e.message }]));
      } else {
        report(form, e);
      }
    } finally {
      saveButton.disabled = false;
    }
  });

  async function reload() {
    const fresh = await getVersioned(`/api/v1/routes/${enc(id)}`);
    etag = fresh.etag;
    Object.keys(original).forEach((k) => delete original[k]);
    Object.assign(original, fresh.data);
    clearErrors(form);
    build(original);
    upstreamStatus();
    toast('Loaded the current version.');
  }

  /// Health and breaker state of the upstream named in the form, under its field.
  async function upstreamStatus() {
    const f = form.querySelector('[data-field="upstream"]');
    const input = f && f.querySelector('input');
    if (!input) return;
    let line = f.querySelector('.upstream-status-line');
    if (!line) {
      line = h('div', { class: 'upstream-status-line small', 'aria-live': 'polite' });
      f.append(line);
      input.addEventListener('change', upstreamStatus);
    }
    const name = input.value.trim();
    if (!name || isUrl(name) || !upstreams.some((u) => u.name === name)) { mount(line); return; }
    const [targets, snap] = await Promise.all([
      get(`/api/v1/upstreams/${enc(name)}/health`).catch(() => null),
      get('/api/v1/metrics').catch(() => null),
    ]);
    const live = snap && (snap.upstreams || []).find((u) => u.upstream === name);
    const b = snap && (snap.breakers || []).find((x) => x.upstream === name);
    mount(line, 'Upstream ', upstreamLink(name), ': ', targets ? healthSummary(targets) : null, ' breaker ',
      breakerBadge(b ? b.state : live && live.breaker));
  }

  build(original);
  upstreamStatus();
  // An existing route's traffic: stored history, moving live.
  const history = id ? historyCharts([
    { title: 'Latency', series: [
      { metric: 'latency_p50_ms', label: 'p50', format: (v) => ms(v) },
      { metric: 'latency_p99_ms', label: 'p99', format: (v) => ms(v) },
    ] },
    { title: 'Errors', series: [{ metric: 'error_rate', label: 'error rate', format: (v) => pct(v) }] },
  ], { route: id }, { id: 'route-history' }) : null;
  mount(main,
    crumbs(['Routes', '#/routes'], id || 'New'),
    h('div', { class: 'toolbar' }, h('h1', { class: 'grow' }, title,
      id ? h('span', { class: 'title-badge' }, badge(original.enabled ? 'enabled' : 'disabled', original.enabled ? 'ok' : 'muted')) : null)),
    datalist,
    form,
    history ? history.el : null);
  // No keyboard popping up over the form on a phone.
  if (!readonly && window.matchMedia('(min-width: 900px)').matches) {
    const first = form.querySelector(id ? '[data-field="path"] input' : '[data-field="id"] input');
    if (first) first.focus({ preventScroll: true });
  }
  if (!history) return undefined;
  await history.load();
  return subscribe('metrics', (snap) => {
    const r = (snap.routes || []).find((x) => x.route === id);
    if (r) history.push(Date.now(), [[r.latency_ms.p50, r.latency_ms.p99], [r.error_rate]]);
  });
}
