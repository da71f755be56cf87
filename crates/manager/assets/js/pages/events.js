// Events (#/events): unacknowledged counts, a filtered, paginated list that new
// events join live (from /ws/dashboard) when they match the filters, and
// acknowledgement of one event, of a selection, or of everything the filter selects.

import { get, post, enc, getAll } from '../api.js';
import { subscribe } from '../live.js';
import { h, mount, badge, time, num, toast, attempt, confirm, severityBadge, field, values } from '../ui.js';
import { pager, debounce, stack, stackRow, formDialog } from '../widgets.js';
import { crumbs } from '../forms.js';

const LIMIT = 50;
const SINCE = [
  ['', 'Any time'],
  ['1h', 'Last hour'],
  ['24h', 'Last 24 hours'],
  ['7d', 'Last 7 days'],
  ['30d', 'Last 30 days'],
];
const SINCE_MS = { '1h': 3600e3, '24h': 86400e3, '7d': 7 * 86400e3, '30d': 30 * 86400e3 };

// Kept while the dashboard is open, so coming back shows the same selection.
const filters = { severity: '', category: '', type: '', acknowledged: '', since: '' };

export async function render(main, ctx, params = []) {
  if (params[0]) return detail(main, ctx, params[0]);
  const canAck = ctx.canEdit;
  let offset = 0;
  let items = [];
  let total = 0;
  let sinceMs = null;
  let loadSeq = 0;
  const selected = new Set();
  let alive = true;

  const countsBox = h('div', { class: 'grid counts', id: 'event-counts' });
  const listBox = h('div', { class: 'table-wrap', id: 'events-list' });
  const pagerBox = h('div');
  const bulk = h('div', { class: 'bulk', id: 'events-bulk' });
  const liveBadge = badge('connecting', 'muted');
  liveBadge.id = 'live-status';

  function query(extra = {}) {
    const qs = new URLSearchParams();
    for (const k of ['severity', 'category', 'type']) if (filters[k]) qs.set(k, filters[k]);
    if (filters.acknowledged) qs.set('acknowledged', filters.acknowledged);
    if (sinceMs) qs.set('since', new Date(sinceMs).toISOString());
    for (const [k, v] of Object.entries(extra)) qs.set(k, v);
    return qs;
  }

  async function load() {
    sinceMs = filters.since ? Date.now() - SINCE_MS[filters.since] : null;
    const seq = ++loadSeq;
    const r = await get(`/api/v1/events?${query({ limit: String(LIMIT), offset: String(offset) })}`);
    if (!alive || seq !== loadSeq) return; // a newer filter's answer wins
    items = r.items;
    total = r.total;
    selected.clear();
    clearButton.hidden = !anyFilter();
    draw();
  }

  async function loadCounts() {
    try {
      const c = await get('/api/v1/events/count');
      if (alive) drawCounts(c);
    } catch { /* shown on the next change */ }
  }
  const refreshCounts = debounce(loadCounts, 300);

  function drawCounts(c) {
    const card = (sev, label, value, kind) => h('button', {
      type: 'button', class: `card count-card ${kind}`, id: `count-${sev || 'total'}`,
      'aria-label': `${label}: ${value} unacknowledged; show them`,
      onclick: () => {
        filters.severity = sev;
        filters.acknowledged = 'false';
        offset = 0;
        drawFilters();
        load();
      },
    }, h('div', { class: 'label' }, label), h('div', { class: 'value' }, num(value)));
    mount(countsBox,
      card('critical', 'Critical', c.critical, c.critical ? 'bad' : ''),
      card('warning', 'Warning', c.warning, c.warning ? 'warn' : ''),
      card('info', 'Info', c.info, ''),
      card('', 'All unacknowledged', c.total, ''));
  }

  function matches(e) {
    if (filters.severity && e.severity !== filters.severity) return false;
    if (filters.category && e.category !== filters.category) return false;
    if (filters.type && e.type !== filters.type) return false;
    const acked = !!e.acknowledged_at;
    if (filters.acknowledged === 'true' && !acked) return false;
    if (filters.acknowledged === 'false' && acked) return false;
    return true;
  }

  function detailsOf(e) {
    const facts = [
      ['Source', e.source], ['Category', e.category], ['Route', e.route_id], ['Upstream', e.upstream],
      ['Node', e.node_id], ['Flow', e.flow_id], ['Event id', h('a', { href: `#/events/${enc(e.id)}` }, String(e.id))],
      ['Acknowledged', e.acknowledged_at ? `${new Date(e.acknowledged_at).toLocaleString()} by ${e.acknowledged_by}` : null],
    ].filter(([, v]) => v !== null && v !== undefined && v !== '');
    const hasDetails = e.details && typeof e.details === 'object' && Object.keys(e.details).length;
    return h('details', { class: 'event-details' },
      h('summary', {}, e.message),
      h('dl', {}, facts.map(([k, v]) => [h('dt', {}, k), h('dd', {}, v instanceof Node ? v : String(v))])),
      hasDetails ? h('pre', {}, JSON.stringify(e.details, null, 2)) : null);
  }

  function row(e, fresh = false) {
    const acked = !!e.acknowledged_at;
    const cls = [acked ? 'acked' : 'unacked', fresh ? 'fresh' : ''].join(' ').trim();
    return h('tr', { class: cls, dataset: { id: e.id } },
      canAck ? h('td', { class: 'select' }, acked ? null : h('input', {
        type: 'checkbox', 'aria-label': `Select event ${e.id}`, checked: selected.has(e.id),
        onchange: (ev) => { if (ev.target.checked) selected.add(e.id); else selected.delete(e.id); drawBulk(); },
      })) : null,
      h('td', {}, severityBadge(e.severity)),
      h('td', { class: 'hide-narrow' }, h('code', {}, e.type)),
      h('td', { class: 'message' }, h('code', { class: 'show-narrow' }, e.type), detailsOf(e)),
      h('td', {}, time(e.created_at)),
      h('td', { class: 'actions' }, acked
        ? h('span', { class: 'muted', title: `by ${e.acknowledged_by}` }, '✓ acknowledged')
        : (canAck ? h('button', { type: 'button', class: 'small', 'aria-label': `Acknowledge event ${e.id}`,
          onclick: () => ackOne(e) }, 'Acknowledge') : h('span', { class: 'muted' }, 'open')),
      canAck ? [' ', h('button', { type: 'button', class: 'small', 'aria-label': `Incident for event ${e.id}`,
        onclick: () => toIncident(e) }, 'Incident…')] : null));
  }

  /// Opens an incident from an event, or adds the event to an active one.
  async function toIncident(e) {
    const active = (await getAll('/api/v1/incidents?status=open').catch(() => []))
      .concat(await getAll('/api/v1/incidents?status=acknowledged').catch(() => []));
    const NEW = '';
    const done = await formDialog(`Event ${e.id} and incidents`, [
      field({ name: 'incident', label: 'Incident', type: 'select', value: NEW,
        options: [[NEW, 'Open a new incident'], ...active.map((i) => [i.id, `Add to: ${i.title}`])] }),
      field({ name: 'title', label: 'Title of a new incident', value: e.message.slice(0, 200),
        help: 'Only for a new incident.' }),
      field({ name: 'severity', label: 'Severity of a new incident', type: 'select', value: e.severity,
        options: [['critical', 'Critical'], ['warning', 'Warning'], ['info', 'Info']] }),
    ], async (form) => {
      const v = values(form);
      if (v.incident === NEW) {
        const created = await post('/api/v1/incidents', { title: v.title, severity: v.severity, event_ids: [e.id] });
        return { id: created.id, created: true };
      }
      await post(`/api/v1/incidents/${enc(v.incident)}/events`, { event_id: e.id });
      return { id: v.incident, created: false };
    }, { submit: 'Save' });
    if (!done) return;
    toast(done.created ? 'Incident opened.' : 'Event added to the incident.');
    location.hash = `#/incidents/${enc(done.id)}`;
  }

  function draw() {
    if (!items.length) {
      mount(listBox, h('p', { class: 'empty' }, anyFilter() ? 'No events match these filters.' : 'No events yet.'));
    } else {
      const openOnPage = items.filter((e) => !e.acknowledged_at).map((e) => e.id);
      const all = canAck && openOnPage.length ? h('input', { type: 'checkbox', 'aria-label': 'Select all on this page',
        checked: openOnPage.every((id) => selected.has(id)),
        onchange: (ev) => {
          for (const id of openOnPage) { if (ev.target.checked) selected.add(id); else selected.delete(id); }
          draw();
        } }) : null;
      mount(listBox, stack(h('table', { class: 'events' },
        h('thead', {}, h('tr', {},
          canAck ? h('th', { class: 'select', scope: 'col' }, all) : null,
          h('th', { scope: 'col' }, 'Severity'),
          h('th', { scope: 'col', class: 'hide-narrow' }, 'Type'),
          h('th', { scope: 'col' }, 'Message'),
          h('th', { scope: 'col' }, 'When'),
          h('th', { scope: 'col', class: 'actions' }, h('span', { class: 'sr-only' }, 'Actions')))),
        h('tbody', {}, items.map((e) => row(e))))));
    }
    mount(pagerBox, pager(total, offset, LIMIT, (o) => { offset = o; load(); }));
    drawBulk();
  }

  function drawBulk() {
    if (!canAck) { mount(bulk); return; }
    const n = selected.size;
    mount(bulk,
      h('button', { type: 'button', id: 'ack-selected', disabled: !n, onclick: ackSelected },
        n ? `Acknowledge ${n} selected` : 'Acknowledge selected'),
      h('button', { type: 'button', id: 'ack-matching', disabled: filters.acknowledged === 'true',
        onclick: ackMatching }, anyFilter() ? 'Acknowledge all matching' : 'Acknowledge all'));
  }

  function anyFilter() {
    return Object.values(filters).some(Boolean);
  }

  function replace(updated) {
    items = items.map((e) => (e.id === updated.id ? updated : e));
    if (filters.acknowledged === 'false') {
      items = items.filter((e) => !e.acknowledged_at);
      total = Math.max(0, total - 1);
    }
  }

  async function ackOne(e) {
    const r = await attempt(() => post(`/api/v1/events/${e.id}/ack`));
    if (!r) return;
    selected.delete(e.id);
    replace(r);
    draw();
    loadCounts();
  }

  async function ackSelected() {
    const ids = [...selected];
    const r = await attempt(() => post('/api/v1/events/ack', { ids }));
    if (!r) return;
    selected.clear();
    const skipped = ids.length - r.acknowledged;
    toast(`Acknowledged ${num(r.acknowledged)} event${r.acknowledged === 1 ? '' : 's'}`
      + `${skipped > 0 ? ` (${skipped} already were)` : ''}.`);
    await load();
    loadCounts();
  }

  async function ackMatching() {
    // How many unacknowledged events the filter selects, for the question.
    let open;
    try {
      const qs = query({ limit: '1', offset: '0' });
      qs.set('acknowledged', 'false');
      open = (await get(`/api/v1/events?${qs}`)).total;
    } catch (err) {
      toast(err.message, 'bad');
      return;
    }
    if (!open) { toast('No unacknowledged events match.'); return; }
    const what = anyFilter() ? 'that match the filters' : '';
    if (!await confirm(`Acknowledge ${num(open)} unacknowledged event${open === 1 ? '' : 's'} ${what}?`.replace(/ \?$/, '?'),
      { action: 'Acknowledge', danger: false })) return;
    const body = {};
    for (const k of ['severity', 'category', 'type']) if (filters[k]) body[k] = filters[k];
    if (sinceMs) body.since = Math.floor(sinceMs);
    const r = await attempt(() => post('/api/v1/events/ack', body));
    if (!r) return;
    toast(`Acknowledged ${num(r.acknowledged)} event${r.acknowledged === 1 ? '' : 's'}.`);
    await load();
    loadCounts();
  }

  // Filters.
  const filterBox = h('form', { class: 'filters', id: 'event-filters', role: 'search', 'aria-label': 'Event filters',
    onsubmit: (e) => e.preventDefault() });
  const sel = (name, label, options) => {
    const s = h('select', { id: `filter-${name}`, name,
      onchange: () => { filters[name] = s.value; offset = 0; load(); } },
    options.map(([v, t]) => h('option', { value: v, selected: filters[name] === v }, t)));
    return h('div', { class: 'filter' }, h('label', { for: `filter-${name}` }, label), s);
  };
  const text = (name, label, placeholder) => {
    const changed = debounce(() => { offset = 0; load(); }, 350);
    const i = h('input', { type: 'search', id: `filter-${name}`, name, value: filters[name], placeholder,
      list: `${name}-options`,
      oninput: () => { filters[name] = i.value.trim(); changed(); } });
    return h('div', { class: 'filter' }, h('label', { for: `filter-${name}` }, label), i,
      h('datalist', { id: `${name}-options` }));
  };
  const clearButton = h('button', { type: 'button', class: 'small clear', onclick: () => {
    Object.keys(filters).forEach((k) => { filters[k] = ''; });
    offset = 0;
    drawFilters();
    load();
  } }, 'Clear filters');
  function drawFilters() {
    mount(filterBox,
      sel('severity', 'Severity', [['', 'All'], ['critical', 'Critical'], ['warning', 'Warning'], ['info', 'Info']]),
      sel('acknowledged', 'Status', [['', 'All'], ['false', 'Unacknowledged'], ['true', 'Acknowledged']]),
      text('category', 'Category', 'e.g. circuit_breaker'),
      text('type', 'Type', 'e.g. auth.login_failed'),
      sel('since', 'Time', SINCE),
      clearButton);
    clearButton.hidden = !anyFilter();
    suggest();
  }
  /// Category and type suggestions from the events on screen.
  function suggest() {
    for (const k of ['category', 'type']) {
      const dl = filterBox.querySelector(`#${k}-options`);
      if (dl) mount(dl, [...new Set(items.map((e) => e[k]))].sort().map((v) => h('option', { value: v })));
    }
  }

  // Open incidents, above the events that may have caused them (#/incidents).
  const incidents = h('section', { id: 'incidents', class: 'panel', hidden: true, 'aria-label': 'Open incidents' });
  const loadIncidents = async () => {
    const open = await get('/api/v1/incidents?status=open&limit=5');
    incidents.hidden = open.total === 0;
    mount(incidents,
      h('h2', {}, h('a', { href: '#/incidents' }, `Open incidents (${num(open.total)})`)),
      h('ul', { class: 'change-list' }, open.items.map((i) => h('li', { class: 'change' },
        severityBadge(i.severity), ' ', h('a', { href: `#/incidents/${encodeURIComponent(i.id)}` }, i.title), ' ',
        time(i.created_at)))));
  };

  mount(main,
    h('div', { class: 'toolbar' }, h('h1', { class: 'grow' }, 'Events'), liveBadge),
    incidents,
    h('h2', { class: 'section-title' }, 'Unacknowledged'),
    countsBox,
    h('section', { class: 'panel' },
      filterBox,
      h('div', { class: 'toolbar list-tools' }, bulk, h('span', { class: 'grow' }), pagerBox),
      listBox));

  drawFilters();
  await Promise.all([load(), loadCounts(), loadIncidents()]);
  suggest();

  const offs = [
    subscribe('event', (e) => {
      refreshCounts();
      if (e.type.startsWith('alert.')) loadIncidents().catch(() => {});
      if (offset !== 0 || !matches(e)) return;
      if (sinceMs && Date.parse(e.created_at) < sinceMs) return;
      if (items.some((x) => x.id === e.id)) return;
      items = [e, ...items].slice(0, LIMIT);
      total += 1;
      const tbody = listBox.querySelector('tbody');
      if (tbody && items.length > 1) {
        const heads = [...listBox.querySelectorAll('thead th')].map((th) => (
          th.classList.contains('actions') || th.classList.contains('select') ? '' : th.textContent.trim()));
        tbody.prepend(stackRow(row(e, true), heads));
        while (tbody.children.length > LIMIT) tbody.lastChild.remove();
        mount(pagerBox, pager(total, offset, LIMIT, (o) => { offset = o; load(); }));
      } else {
        draw();
      }
    }),
    subscribe('status', (s) => {
      liveBadge.textContent = s;
      liveBadge.className = `badge ${s === 'live' ? 'ok' : 'warn'}`;
    }),
  ];
  return () => { alive = false; refreshCounts.cancel(); offs.forEach((off) => off()); };
}


/// One event at #/events/<id>: its message, facts, details and acknowledgement,
/// the address webhook deliveries and other pages link to.
async function detail(main, ctx, id) {
  let e;
  try {
    e = await get(`/api/v1/events/${enc(id)}`);
  } catch (err) {
    mount(main, crumbs(['Events', '#/events'], `Event ${id}`),
      h('h1', {}, `Event ${id}`), h('p', { class: 'error-text', role: 'alert' }, err.message));
    return undefined;
  }
  const box = h('section', { class: 'panel', id: 'event-detail' });
  const link = (label, href, text) => (text ? [h('dt', {}, label), h('dd', {}, h('a', { href }, text))] : null);
  const fact = (label, v) => (v === null || v === undefined || v === '' ? null : [h('dt', {}, label), h('dd', {}, String(v))]);
  function draw() {
    const acked = !!e.acknowledged_at;
    const hasDetails = e.details && typeof e.details === 'object' && Object.keys(e.details).length;
    mount(box,
      h('p', { class: 'event-message' }, severityBadge(e.severity), ' ', e.message),
      h('dl', { class: 'facts' },
        fact('Type', e.type), fact('Category', e.category), fact('Source', e.source),
        [h('dt', {}, 'When'), h('dd', {}, time(e.created_at))],
        link('Route', `#/routes/edit/${enc(e.route_id)}`, e.route_id),
        link('Upstream', `#/upstreams/view/${enc(e.upstream)}`, e.upstream),
        fact('Node', e.node_id), fact('Flow', e.flow_id),
        [h('dt', {}, 'Status'), h('dd', {}, acked
          ? `acknowledged ${new Date(e.acknowledged_at).toLocaleString()} by ${e.acknowledged_by}`
          : 'unacknowledged')]),
      hasDetails ? h('pre', {}, JSON.stringify(e.details, null, 2)) : null,
      !acked && ctx.canEdit ? h('button', { type: 'button', id: 'ack-event', onclick: async () => {
        const r = await attempt(() => post(`/api/v1/events/${enc(e.id)}/ack`), 'Event acknowledged.');
        if (r) { e = r; draw(); }
      } }, 'Acknowledge') : null);
  }
  draw();
  mount(main,
    crumbs(['Events', '#/events'], `Event ${e.id}`),
    h('h1', {}, `Event ${e.id}: `, h('code', {}, e.type)),
    box);
  return undefined;
}
