// Incidents: the list (status and severity filters), a manual incident, and one
// incident's page with its timeline of status changes and related events, notes,
// and the acknowledge / resolve / reopen (of a resolved one) actions. Alert rules open and resolve
// incidents by themselves (#/alert-rules).

import { get, getAll, post, patch, del, enc } from '../api.js';
import { onEvents } from '../live.js';
import {
  h, mount, table, field, values, showErrors, confirm, dialog, toast, attempt, time,
  severityBadge, badge,
} from '../ui.js';

const STATUS_KIND = { open: 'bad', acknowledged: 'warn', resolved: 'ok' };

function statusBadge(s) {
  return badge(s, STATUS_KIND[s] || 'muted');
}

export async function render(main, ctx, params) {
  if (params[0]) return renderOne(main, ctx, params[0]);
  return renderList(main, ctx);
}

async function renderList(main, ctx) {
  const filters = { status: '', severity: '' };
  const listBox = h('div', { id: 'incident-list' });
  const load = async () => {
    const q = new URLSearchParams({ limit: '100' });
    if (filters.status) q.set('status', filters.status);
    if (filters.severity) q.set('severity', filters.severity);
    const [page, rules] = await Promise.all([get(`/api/v1/incidents?${q}`), ruleNames()]);
    mount(listBox, table([
      { label: 'Incident', render: (i) => h('a', { href: `#/incidents/${enc(i.id)}` }, i.title) },
      { label: 'Status', render: (i) => statusBadge(i.status) },
      { label: 'Severity', render: (i) => severityBadge(i.severity) },
      { label: 'From', render: (i) => (i.rule_id ? h('a', { href: '#/alert-rules' }, `rule ${rules.get(i.rule_id) || i.rule_id}`) : 'manual'), class: 'hide-narrow' },
      { label: 'Opened', render: (i) => time(i.created_at) },
      { label: 'Updated', render: (i) => time(i.updated_at), class: 'hide-narrow' },
    ], page.items, { empty: 'No incidents match.' }),
    page.total > page.items.length ? h('p', { class: 'empty' }, `Showing ${page.items.length} of ${page.total}.`) : null);
  };
  const select = (name, label, options) => h('select', { 'aria-label': label,
    onchange: (e) => { filters[name] = e.target.value; load(); } },
  options.map(([v, l]) => h('option', { value: v }, l)));
  mount(main,
    h('div', { class: 'toolbar' },
      h('h1', { class: 'grow' }, 'Incidents'),
      select('status', 'Status', [['', 'Any status'], ['open', 'Open'], ['acknowledged', 'Acknowledged'], ['resolved', 'Resolved']]),
      select('severity', 'Severity', [['', 'Any severity'], ['critical', 'Critical'], ['warning', 'Warning'], ['info', 'Info']]),
      h('a', { class: 'button', href: '#/alert-rules' }, 'Alert rules'),
      ctx.canEdit && h('button', { class: 'primary', type: 'button', onclick: () => createDialog() }, 'Open incident')),
    h('section', { class: 'panel' }, listBox));
  await load();
  // Rules open and resolve incidents: follow their events live.
  return onEvents((e) => e.type.startsWith('alert.'), () => load().catch(() => {}), 200);
}

function createDialog() {
  const form = h('form', { id: 'incident-form' },
    h('div', { class: 'form-error', role: 'alert' }),
    field({ name: 'title', label: 'Title', required: true }),
    field({ name: 'severity', label: 'Severity', type: 'select', value: 'warning',
      options: [['critical', 'Critical'], ['warning', 'Warning'], ['info', 'Info']] }),
    field({ name: 'note', label: 'First note', type: 'textarea', rows: 3 }));
  const d = dialog('Open an incident', form, [
    h('button', { type: 'button', onclick: () => d.close() }, 'Cancel'),
    h('button', { type: 'submit', class: 'primary', form: 'incident-form' }, 'Open incident'),
  ]);
  form.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    const v = values(form);
    try {
      const created = await post('/api/v1/incidents', {
        title: v.title, severity: v.severity, ...(v.note.trim() ? { note: v.note } : {}),
      });
      d.close();
      location.hash = `#/incidents/${enc(created.id)}`;
    } catch (e) {
      showErrors(form, e);
    }
  });
}

async function renderOne(main, ctx, id) {
  await showOne(main, ctx, id);
  // Events linked while the rule fires, and its resolution, show up live (not
  // while the operator is typing a note).
  return onEvents(() => true, () => {
    if (!main.querySelector('form textarea:focus, form input:focus')) showOne(main, ctx, id).catch(() => {});
  }, 500);
}

/// Alert rules' names by id (incidents name their rule by id).
async function ruleNames() {
  try {
    return new Map((await getAll('/api/v1/alert-rules')).map((r) => [r.id, r.name]));
  } catch {
    return new Map();
  }
}

async function showOne(main, ctx, id) {
  const [inc, rules] = await Promise.all([get(`/api/v1/incidents/${enc(id)}`), ruleNames()]);
  const reload = () => showOne(main, ctx, id);
  const setStatus = (status) => attempt(async () => {
    await patch(`/api/v1/incidents/${enc(id)}`, { status });
    await reload();
  }, `Incident ${status}`);
  const actions = [];
  if (ctx.canEdit) {
    if (inc.status === 'open') actions.push(h('button', { class: 'primary', type: 'button', onclick: () => setStatus('acknowledged') }, 'Acknowledge'));
    if (inc.status !== 'resolved') actions.push(h('button', { type: 'button', onclick: () => setStatus('resolved') }, 'Resolve'));
    if (inc.status === 'resolved') actions.push(h('button', { type: 'button', onclick: () => setStatus('open') }, 'Reopen'));
    if (ctx.atLeast('admin')) {
      actions.push(h('button', { class: 'danger', type: 'button', onclick: async () => {
        if (await confirm(`Delete the incident "${inc.title}" and its timeline?`, { action: 'Delete' })) {
          await attempt(async () => { await del(`/api/v1/incidents/${enc(id)}`); location.hash = '#/incidents'; }, 'Incident deleted');
        }
      } }, 'Delete'));
    }
  }
  const entry = (e) => h('li', {},
    h('strong', {}, time(e.at)), ' ',
    e.kind === 'event' ? badge('event', 'info') : e.kind === 'status' ? statusBadge(e.status || 'status') : badge('note', 'muted'),
    ' ', e.event_type ? h('code', {}, e.event_type) : null, ' ', e.message,
    e.actor ? h('span', { class: 'help' }, ` — ${e.actor}`) : null);
  const noteForm = ctx.canEdit && h('form', { id: 'note-form' },
    h('div', { class: 'form-error', role: 'alert' }),
    field({ name: 'message', label: 'Add a note', type: 'textarea', rows: 2, required: true }),
    h('button', { class: 'primary', type: 'submit' }, 'Add note'));
  if (noteForm) {
    noteForm.addEventListener('submit', async (ev) => {
      ev.preventDefault();
      try {
        await post(`/api/v1/incidents/${enc(id)}/notes`, { message: values(noteForm).message });
        toast('Note added');
        await reload();
      } catch (e) { showErrors(noteForm, e); }
    });
  }
  const linkForm = ctx.canEdit && h('form', { id: 'link-form', class: 'toolbar' },
    h('input', { name: 'event_id', type: 'number', min: 1, placeholder: 'Event id', 'aria-label': 'Event id to link', required: true }),
    h('button', { type: 'submit' }, 'Link event'));
  if (linkForm) {
    linkForm.addEventListener('submit', async (ev) => {
      ev.preventDefault();
      await attempt(async () => {
        await post(`/api/v1/incidents/${enc(id)}/events`, { event_id: Number(values(linkForm).event_id) });
        await reload();
      }, 'Event linked');
    });
  }
  mount(main,
    h('p', {}, h('a', { href: '#/incidents' }, '← Incidents')),
    h('div', { class: 'toolbar' },
      h('h1', { class: 'grow', id: 'incident-title' }, inc.title),
      statusBadge(inc.status), severityBadge(inc.severity), ...actions),
    h('div', { class: 'grid' },
      h('div', { class: 'card' }, h('div', { class: 'label' }, 'Opened'), h('div', {}, time(inc.created_at))),
      h('div', { class: 'card' }, h('div', { class: 'label' }, 'Acknowledged'),
        h('div', {}, inc.acknowledged_at ? [time(inc.acknowledged_at), ` by ${inc.acknowledged_by}`] : '—')),
      h('div', { class: 'card' }, h('div', { class: 'label' }, 'Resolved'),
        h('div', {}, inc.resolved_at ? [time(inc.resolved_at), ` by ${inc.resolved_by || 'its rule'}`] : '—')),
      h('div', { class: 'card' }, h('div', { class: 'label' }, 'Source'),
        h('div', {}, inc.rule_id ? h('a', { href: '#/alert-rules', title: inc.rule_id }, `alert rule ${rules.get(inc.rule_id) || inc.rule_id}`) : 'opened by hand'))),
    h('div', { class: 'two' },
      h('section', { class: 'panel' }, h('h2', {}, 'Timeline'),
        inc.timeline.length ? h('ul', { class: 'diff-list', id: 'timeline' }, inc.timeline.map(entry)) : h('p', { class: 'empty' }, 'Nothing yet.'),
        linkForm),
      h('section', { class: 'panel' }, h('h2', {}, 'Notes'),
        inc.notes.length ? h('ul', { class: 'diff-list', id: 'notes' }, inc.notes.map(entry)) : h('p', { class: 'empty' }, 'No notes yet.'),
        noteForm)),
    h('section', { class: 'panel' }, h('h2', {}, 'Analysis'),
      h('p', { class: 'empty' }, inc.analysis ? JSON.stringify(inc.analysis) : 'No analysis attached to this incident.')));
}
