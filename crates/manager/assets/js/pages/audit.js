// Audit log (#/audit): every change and sign-in, newest first, filtered by actor,
// action, object type and time; each entry opens to what it changed (before and
// after side by side, and the changed fields). The filters live in the URL
// (#/audit?actor=admin&action=route.update), so a filtered view can be shared.

import { get } from '../api.js';
import { h, mount, table, field, values, badge, time, num } from '../ui.js';
import { pager, stack } from '../widgets.js';
import { sideBySide } from '../diff.js';
import { pointerList } from './revisions.js';

const LIMIT = 50;
const FILTERS = ['actor', 'action', 'target_type', 'since', 'until'];

function readFilters() {
  const q = location.hash.split('?')[1] || '';
  const p = new URLSearchParams(q);
  const out = {};
  for (const k of FILTERS) if (p.get(k)) out[k] = p.get(k);
  out.offset = Number.parseInt(p.get('offset') || '0', 10) || 0;
  return out;
}

function hashOf(f) {
  const p = new URLSearchParams();
  for (const k of FILTERS) if (f[k]) p.set(k, f[k]);
  if (f.offset) p.set('offset', String(f.offset));
  const q = p.toString();
  return q ? `#/audit?${q}` : '#/audit';
}

/// A datetime-local value (local time) as RFC 3339 UTC, or '' when empty.
function toRfc3339(local) {
  if (!local) return '';
  const d = new Date(local);
  return Number.isNaN(d.getTime()) ? '' : d.toISOString();
}

function toLocalInput(rfc) {
  if (!rfc) return '';
  const d = new Date(rfc);
  if (Number.isNaN(d.getTime())) return '';
  const pad = (n) => String(n).padStart(2, '0');
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())}T${pad(d.getHours())}:${pad(d.getMinutes())}`;
}

function entryDetail(e) {
  const parts = [];
  if (e.changes && e.changes.length) {
    parts.push(pointerList(e.changes, 100));
  }
  if (e.before !== null && e.before !== undefined && e.after !== null && e.after !== undefined) {
    parts.push(sideBySide(JSON.stringify(e.before, null, 2), JSON.stringify(e.after, null, 2),
      { leftTitle: 'Before', rightTitle: 'After' }).el);
  } else if (e.after !== null && e.after !== undefined) {
    parts.push(h('h3', {}, 'After'), h('pre', { class: 'code' }, JSON.stringify(e.after, null, 2)));
  } else if (e.before !== null && e.before !== undefined) {
    parts.push(h('h3', {}, 'Before'), h('pre', { class: 'code' }, JSON.stringify(e.before, null, 2)));
  }
  if (!parts.length) parts.push(h('p', { class: 'muted' }, 'This entry records no values.'));
  return parts;
}

export async function render(main) {
  const f = readFilters();
  const box = h('div', { id: 'audit' });
  const detailBox = h('section', { class: 'panel', id: 'audit-entry', hidden: true });

  const form = h('form', { class: 'filters', 'aria-label': 'Filter the audit log' },
    field({ name: 'actor', label: 'Actor', value: f.actor || '', placeholder: 'admin' }),
    field({ name: 'action', label: 'Action', value: f.action || '', placeholder: 'route.update' }),
    field({ name: 'target_type', label: 'Object type', value: f.target_type || '', placeholder: 'route' }),
    field({ name: 'since', label: 'From', type: 'datetime-local', value: toLocalInput(f.since) }),
    field({ name: 'until', label: 'To', type: 'datetime-local', value: toLocalInput(f.until) }),
    h('div', { class: 'form-actions' },
      h('button', { type: 'submit', class: 'primary' }, 'Filter'),
      h('a', { class: 'button', href: '#/audit' }, 'Clear')));
  form.addEventListener('submit', (ev) => {
    ev.preventDefault();
    const v = values(form);
    location.hash = hashOf({ actor: v.actor.trim(), action: v.action.trim(), target_type: v.target_type.trim(),
      since: toRfc3339(v.since), until: toRfc3339(v.until), offset: 0 });
  });

  const q = new URLSearchParams();
  for (const k of FILTERS) if (f[k]) q.set(k, f[k]);
  q.set('limit', String(LIMIT));
  q.set('offset', String(f.offset));
  const page = await get(`/api/v1/audit?${q}`);

  function open(e, row) {
    for (const r of box.querySelectorAll('tr[aria-selected="true"]')) r.setAttribute('aria-selected', 'false');
    row?.setAttribute('aria-selected', 'true');
    detailBox.hidden = false;
    mount(detailBox,
      h('div', { class: 'panel-head' },
        h('h2', {}, `${e.action} `, e.target_id ? h('code', {}, e.target_id) : null),
        h('span', { class: 'muted small' }, `#${e.id} by ${e.actor} · `, time(e.at), e.request_id ? ` · request ${e.request_id}` : '')),
      entryDetail(e));
    detailBox.scrollIntoView({ block: 'nearest' });
  }

  const cols = [
    { label: 'When', render: (e) => time(e.at) },
    { label: 'Actor', render: (e) => h('strong', {}, e.actor) },
    { label: 'Action', render: (e) => h('code', {}, e.action) },
    { label: 'Object', render: (e) => [badge(e.target_type, 'muted'), e.target_id ? [' ', h('span', {}, e.target_id)] : null] },
    { label: 'Changes', class: 'hide-narrow num', render: (e) => num((e.changes || []).length) },
    { label: 'Client IP', class: 'hide-narrow', render: (e) => e.client_ip || h('span', { class: 'muted' }, '—') },
    { label: '', class: 'actions', render: (e) => h('button', { type: 'button', class: 'small', 'aria-label': `Show audit entry ${e.id}`,
      onclick: (ev) => open(e, ev.target.closest('tr')) }, 'Show') },
  ];
  mount(box, stack(table(cols, page.items, {
    empty: Object.keys(f).some((k) => k !== 'offset' && f[k]) ? 'No entry matches these filters.' : 'Nothing audited yet.',
    rowAttrs: (e) => ({ dataset: { id: String(e.id), action: e.action } }),
  })), pager(page.total, f.offset, LIMIT, (offset) => { location.hash = hashOf({ ...f, offset }); }));

  mount(main,
    h('div', { class: 'toolbar' }, h('h1', { class: 'grow' }, 'Audit log'),
      h('span', { class: 'muted' }, `${num(page.total)} entr${page.total === 1 ? 'y' : 'ies'}`)),
    h('p', { class: 'muted intro' }, 'Every change made through the API or this dashboard, and every sign-in, with who made it, '
      + 'from where and what it changed. Secrets never appear here.'),
    h('section', { class: 'panel' }, form),
    h('section', { class: 'panel' }, box),
    detailBox);
}
