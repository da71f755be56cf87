// Redirects and pages: namespaces and their projects (#/redirects), and per project
// (#/redirects/{ns}/{project}/{tab}) the redirects and pages as drafts, CSV import
// and export, the unpublished changes with publish and discard, the version
// history, the agents that sync the project and their tokens.

import { api, get, post, put, del, getAll, enc } from '../api.js';
import {
  h, mount, table, field, values, badge, time, num, toast, attempt, confirm, dialog,
  clearErrors, showErrors,
} from '../ui.js';
import {
  formDialog, fieldError, tabs, segmented, pager, showSecret, debounce, lines, fact, etagOf, stack,
} from '../widgets.js';

const REDIRECT_TYPES = [
  ['BASIC', 'BASIC: exact path and query'],
  ['BASIC_HOST', 'BASIC_HOST: exact host and path'],
  ['REGEX', 'REGEX: regex over the path'],
  ['REGEX_HOST', 'REGEX_HOST: regex over host and path'],
];
const STATUSES = [
  ['MOVED_PERMANENT', '301 Moved Permanently'],
  ['FOUND', '302 Found'],
  ['TEMPORARY_REDIRECT', '307 Temporary Redirect'],
  ['PERMANENT_REDIRECT', '308 Permanent Redirect'],
];
const STATUS_CODE = { MOVED_PERMANENT: 301, FOUND: 302, TEMPORARY_REDIRECT: 307, PERMANENT_REDIRECT: 308 };
const PAGE_TYPES = [['BASIC', 'BASIC: exact path'], ['BASIC_HOST', 'BASIC_HOST: exact host and path']];
const CONTENT_TYPES = [['TEXT_PLAIN', 'text/plain'], ['XML', 'application/xml']];
const SOURCE_HINT = {
  BASIC: '/old-page?x=1',
  BASIC_HOST: 'example.com/old-page',
  REGEX: '^/blog/(\\d+)$',
  REGEX_HOST: '^(www\\.)?example\\.com/shop/(.*)$',
};
const LIMIT = 50;

export async function render(main, ctx, params) {
  if (params.length >= 2 && params[0] && params[1]) {
    return renderProject(main, ctx, params[0], params[1], params[2] || 'redirects');
  }
  return renderNamespaces(main, ctx);
}

// ------------------------------------------------------------------ namespaces

async function renderNamespaces(main, ctx) {
  const admin = ctx.atLeast('admin');
  const list = h('div', { id: 'namespaces' });

  async function load() {
    const namespaces = await getAll('/api/v1/namespaces');
    const projects = await Promise.all(
      namespaces.map((n) => getAll(`/api/v1/namespaces/${enc(n.name)}/projects`)));
    if (!namespaces.length) {
      mount(list, h('section', { class: 'panel' }, h('p', { class: 'empty' },
        'No namespaces yet. A namespace groups projects; a project holds the redirects and pages '
        + 'that agents and the gateway serve for its hosts.'),
      admin ? h('button', { type: 'button', class: 'primary', onclick: createNamespace }, 'New namespace') : null));
      return;
    }
    mount(list, namespaces.map((n, i) => namespacePanel(n, projects[i])));
  }

  function namespacePanel(n, items) {
    const base = `/api/v1/namespaces/${enc(n.name)}`;
    return h('section', { class: 'panel', dataset: { namespace: n.name } },
      h('div', { class: 'panel-head' },
        h('div', { class: 'grow' },
          h('h2', {}, n.name),
          n.description ? h('p', { class: 'muted' }, n.description) : null),
        ctx.canEdit && admin ? h('div', { class: 'actions' },
          h('button', { type: 'button', class: 'small primary', onclick: () => createProject(n.name) }, 'New project'),
          h('button', { type: 'button', class: 'small', 'aria-label': `Edit namespace ${n.name}`,
            onclick: () => editNamespace(n) }, 'Edit'),
          h('button', { type: 'button', class: 'small danger', 'aria-label': `Delete namespace ${n.name}`,
            onclick: async () => {
              if (items.length) {
                toast(`Namespace ${n.name} still has ${items.length} project(s); delete them first.`, 'bad');
                return;
              }
              if (!await confirm(`Delete namespace ${n.name}?`, { action: 'Delete' })) return;
              if (await attempt(() => del(base), `Namespace ${n.name} deleted.`) !== undefined) load();
            } }, 'Delete')) : null),
      h('div', { class: 'table-wrap' }, stack(table([
        { label: 'Project', render: (p) => h('a', { href: `#/redirects/${enc(n.name)}/${enc(p.name)}` }, p.name) },
        { label: 'Hosts', class: 'hide-narrow', render: (p) => (p.hosts.length ? p.hosts.join(', ') : h('span', { class: 'muted' }, 'none')) },
        // A new project is at version 1 before its first publish (as Flecto's).
        { label: 'Published', render: (p) => (p.published_at ? badge(`v${p.version}`, 'info') : badge('never', 'muted')) },
        { label: 'Last publish', class: 'hide-narrow', render: (p) => time(p.published_at) },
        { label: 'Description', class: 'hide-narrow', render: (p) => p.description || '—' },
      ], items, { empty: 'No projects in this namespace yet.' }))));
  }

  async function createNamespace() {
    const saved = await formDialog('New namespace', [
      field({ name: 'name', label: 'Name', required: true, placeholder: 'acme',
        help: '1 to 50 characters of a-z, 0-9, _ and -. It cannot be changed later.' }),
      field({ name: 'description', label: 'Description', type: 'textarea', rows: 2 }),
    ], (form) => post('/api/v1/namespaces', values(form)), { submit: 'Create' });
    if (saved) { toast(`Namespace ${saved.name} created.`); load(); }
  }

  async function editNamespace(n) {
    const saved = await formDialog(`Namespace ${n.name}`, [
      field({ name: 'description', label: 'Description', type: 'textarea', rows: 2, value: n.description }),
    ], (form) => put(`/api/v1/namespaces/${enc(n.name)}`, values(form), { etag: etagOf(n.version) }));
    if (saved) { toast('Namespace saved.'); load(); }
  }

  async function createProject(ns) {
    const saved = await projectDialog(ns, null);
    if (saved) {
      toast(`Project ${saved.name} created.`);
      location.hash = `#/redirects/${enc(ns)}/${enc(saved.name)}`;
    }
  }

  mount(main,
    h('div', { class: 'toolbar' },
      h('h1', { class: 'grow' }, 'Redirects and pages'),
      ctx.canEdit && admin ? h('button', { type: 'button', class: 'primary', onclick: createNamespace }, 'New namespace') : null),
    h('p', { class: 'muted intro' },
      'Each project holds redirects and static pages for its hosts. Changes are drafts until you publish '
      + 'them; the gateway and the Flecto agents then serve the new version.'),
    list);
  await load();
}

function projectDialog(ns, p) {
  const fields = [
    field({ name: 'name', label: 'Name', required: true, value: p ? p.name : '', placeholder: 'website',
      help: p ? 'Project names cannot be changed.' : '1 to 50 characters of a-z, 0-9, _ and -.' }),
    field({ name: 'hosts', label: 'Hosts', type: 'textarea', rows: 3, value: p ? p.hosts.join('\n') : '',
      placeholder: 'example.com\nwww.example.com',
      help: 'One per line. The gateway answers requests for these hosts with this project\'s published rules.' }),
    field({ name: 'description', label: 'Description', type: 'textarea', rows: 2, value: p ? p.description : '' }),
  ];
  if (p) fields[0].querySelector('input').readOnly = true;
  return formDialog(p ? `Project ${ns}/${p.name}` : `New project in ${ns}`, fields, (form) => {
    const v = values(form);
    const body = { name: v.name.trim(), description: v.description, hosts: lines(v.hosts) };
    return p
      ? put(`/api/v1/namespaces/${enc(ns)}/projects/${enc(p.name)}`, body, { etag: etagOf(p.record_version) })
      : post(`/api/v1/namespaces/${enc(ns)}/projects`, body);
  }, { submit: p ? 'Save' : 'Create' });
}

// --------------------------------------------------------------------- project

async function renderProject(main, ctx, ns, name, tab) {
  const base = `/api/v1/namespaces/${enc(ns)}/projects/${enc(name)}`;
  const href = (t) => `#/redirects/${enc(ns)}/${enc(name)}/${t}`;
  const operator = ctx.canEdit && ctx.atLeast('operator');
  const admin = ctx.canEdit && ctx.atLeast('admin');
  let [project, drafts] = await Promise.all([get(base), get(`${base}/drafts`)]);

  const head = h('div', { class: 'project-head' });
  const tabBar = h('div');
  const body = h('div', { id: 'tab-body' });
  let alive = true;

  function drawHead() {
    const pending = drafts.total;
    mount(head,
      h('div', { class: 'toolbar' },
        h('h1', { class: 'grow' }, h('a', { href: '#/redirects', class: 'crumb' }, 'Redirects'), ' / ',
          h('span', {}, ns), ' / ', h('span', {}, name)),
        operator ? h('button', { type: 'button', class: 'primary', id: 'publish', disabled: !pending,
          title: pending ? undefined : 'Nothing to publish', onclick: publish },
        pending ? `Publish ${pending} change${pending === 1 ? '' : 's'}` : 'Publish') : null,
        operator && pending ? h('button', { type: 'button', class: 'danger', id: 'discard', onclick: discard },
          'Discard changes') : null,
        admin ? h('button', { type: 'button', onclick: editProject }, 'Edit project') : null,
        admin ? h('button', { type: 'button', class: 'danger', onclick: deleteProject }, 'Delete project') : null),
      h('div', { class: 'facts' },
        fact('Published version', h('span', { id: 'project-version' },
          project.published_at ? `v${project.version}` : `not published yet (v${project.version})`)),
        fact('Unpublished changes', h('span', { id: 'drafts-count' }, pending
          ? h('a', { href: href('changes') }, num(pending)) : 'none')),
        fact('Last publish', time(project.published_at)),
        fact('Hosts', project.hosts.length ? project.hosts.join(', ') : h('span', { class: 'muted' }, 'none (agents only)'))),
      project.description ? h('p', { class: 'muted' }, project.description) : null);
    mount(tabBar, tabs([
      { id: 'redirects', label: 'Redirects', href: href('redirects') },
      { id: 'pages', label: 'Pages', href: href('pages') },
      { id: 'changes', label: 'Changes', href: href('changes'), count: pending },
      { id: 'history', label: 'History', href: href('history') },
      { id: 'agents', label: 'Agents', href: href('agents') },
      { id: 'tokens', label: 'Tokens', href: href('tokens') },
    ], tab, 'Project sections'));
  }

  /// After any change: the header's counts and version.
  async function refreshHead() {
    try {
      [project, drafts] = await Promise.all([get(base), get(`${base}/drafts`)]);
      if (alive) drawHead();
    } catch { /* the next change shows it */ }
  }

  async function publish() {
    const n = drafts.total;
    const ok = await confirm(
      `Publish ${n} change${n === 1 ? '' : 's'} as version ${project.version + 1}? The gateway serves it at once; agents load it at their next sync.`,
      { action: 'Publish', danger: false });
    if (!ok) return;
    const r = await attempt(() => post(`${base}/publish`));
    if (r) {
      toast(`Published version ${r.version}.`);
      await refreshHead();
      await reloadTab();
    }
  }

  async function discard() {
    const n = drafts.total;
    if (!await confirm(`Discard ${n} unpublished change${n === 1 ? '' : 's'}? The working set goes back to version ${project.version}.`,
      { action: 'Discard' })) return;
    const r = await attempt(() => post(`${base}/discard`));
    if (r) {
      toast(`Discarded ${r.discarded} change${r.discarded === 1 ? '' : 's'}.`);
      await refreshHead();
      await reloadTab();
    }
  }

  async function editProject() {
    const saved = await projectDialog(ns, project);
    if (saved) { toast('Project saved.'); await refreshHead(); }
  }

  async function deleteProject() {
    if (!await confirm(`Delete project ${ns}/${name} with all its redirects, pages, tokens and agents? Agents will no longer get rules from it.`,
      { action: 'Delete project' })) return;
    if (await attempt(() => del(base), `Project ${ns}/${name} deleted.`) !== undefined) location.hash = '#/redirects';
  }

  const pctx = { ctx, ns, name, base, operator, admin, body, refreshHead,
    project: () => project, drafts: () => drafts };
  const TABS = { redirects: redirectsTab, pages: pagesTab, changes: changesTab, history: historyTab,
    agents: agentsTab, tokens: tokensTab };
  const show = TABS[tab] || redirectsTab;
  let stopTab = null;
  async function reloadTab() {
    if (typeof stopTab === 'function') stopTab();
    stopTab = await show(pctx);
  }

  drawHead();
  mount(main, head, tabBar, body);
  await reloadTab();
  return () => { alive = false; if (typeof stopTab === 'function') stopTab(); };
}

function stateBadgeOf(state) {
  const [text, kind] = {
    published: ['published', 'muted'], created: ['new draft', 'ok'], updated: ['changed', 'warn'],
    deleted: ['deleted', 'bad'],
  }[state] || [state, 'muted'];
  return badge(text, kind);
}

/// A table of rules with type filter, search, paging and add/edit/delete.
function ruleList(p, spec) {
  const st = { type: '', q: '', offset: 0, deleted: false, drafts: false, seq: 0 };
  const tableBox = h('div', { class: 'table-wrap', id: `${spec.kind}-table` });
  const pagerBox = h('div');
  // Rules picked for a bulk deletion (ids on the page shown), and that page's rows.
  const selected = new Set();
  let rows = [];
  const bulkBox = h('div', { class: 'bulk', id: `${spec.kind}-bulk` });

  function drawBulk() {
    const n = selected.size;
    if (!p.operator || !n) { mount(bulkBox); return; }
    mount(bulkBox, h('span', { class: 'muted' }, `${n} selected`),
      h('button', { type: 'button', class: 'small danger', onclick: bulkDelete }, 'Delete'),
      h('button', { type: 'button', class: 'small', onclick: () => { selected.clear(); load(); } }, 'Clear'));
  }

  /// Deletes the selected rules in the draft, one request each, and says how many
  /// succeeded and what failed (a rule with no enabled flag has no enable/disable).
  async function bulkDelete() {
    const picked = rows.filter((r) => selected.has(r.id));
    const n = picked.length;
    const fresh = picked.filter((r) => r.state === 'created').length;
    if (!await confirm(`Delete ${n} ${spec.noun}${n === 1 ? '' : 's'} in the draft (${picked.map((r) => r[spec.key]).join(', ')})? `
      + `${fresh ? `${fresh} never published ${fresh === 1 ? 'is' : 'are'} dropped; ` : ''}published ones stay served until you publish.`,
    { action: `Delete ${spec.noun}s` })) return;
    const failed = [];
    let done = 0;
    for (const r of picked) {
      try {
        await del(`${p.base}/${spec.kind}/${r.id}`);
        selected.delete(r.id);
        done += 1;
      } catch (e) {
        failed.push(`${r[spec.key]}: ${e.message}`);
      }
    }
    toast(failed.length ? `${done} deleted; ${failed.length} failed: ${failed.join('; ')}`
      : `${done} ${spec.noun}${done === 1 ? '' : 's'} deleted in the draft.`, failed.length ? 'bad' : '');
    await load();
    p.refreshHead();
  }

  async function load() {
    const qs = new URLSearchParams({ limit: String(LIMIT), offset: String(st.offset) });
    if (st.type) qs.set('type', st.type);
    if (st.q) qs.set('q', st.q);
    if (st.deleted) qs.set('include_deleted', 'true');
    if (st.drafts) qs.set('drafts', 'true');
    const seq = ++st.seq;
    const r = await get(`${p.base}/${spec.kind}?${qs}`);
    if (seq !== st.seq) return undefined; // a newer filter's answer wins
    if (r.items.length === 0 && st.offset > 0 && r.total > 0) {
      st.offset = Math.max(0, Math.floor((r.total - 1) / LIMIT) * LIMIT);
      return load();
    }
    rows = r.items;
    for (const id of [...selected]) if (!rows.some((x) => x.id === id && x.state !== 'deleted')) selected.delete(id);
    const selectable = rows.filter((x) => x.state !== 'deleted');
    const cols = [...spec.columns, { label: 'State', render: (row) => stateBadgeOf(row.state) }];
    if (p.operator && selectable.length) {
      const all = h('input', { type: 'checkbox', 'aria-label': `Select all ${spec.noun}s shown`,
        checked: selectable.every((x) => selected.has(x.id)),
        onchange: (ev) => {
          for (const x of selectable) { if (ev.target.checked) selected.add(x.id); else selected.delete(x.id); }
          for (const box of tableBox.querySelectorAll('input[data-pick]')) box.checked = ev.target.checked;
          drawBulk();
        } });
      cols.unshift({ label: all, class: 'select', render: (row) => (row.state === 'deleted' ? '' : h('input', {
        type: 'checkbox', 'aria-label': `Select ${row[spec.key]}`, checked: selected.has(row.id), dataset: { pick: '1' },
        onchange: (ev) => { if (ev.target.checked) selected.add(row.id); else selected.delete(row.id); drawBulk(); } })) });
    }
    if (p.operator) {
      cols.push({ label: 'Actions', class: 'actions', render: (row) => (row.state === 'deleted' ? '' : [
        h('button', { type: 'button', class: 'small', 'aria-label': `Edit ${row[spec.key]}`,
          onclick: () => edit(row) }, 'Edit'), ' ',
        h('button', { type: 'button', class: 'small danger', 'aria-label': `Delete ${row[spec.key]}`,
          onclick: () => remove(row) }, 'Delete')]) });
    }
    const filtered = st.type || st.q || st.drafts;
    drawBulk();
    mount(tableBox, stack(table(cols, r.items, {
      empty: filtered ? `No ${spec.noun}s match.` : `No ${spec.noun}s yet.`,
      rowAttrs: (row) => ({ class: row.state === 'deleted' ? 'deleted' : undefined, dataset: { id: row.id } }),
    })));
    mount(pagerBox, pager(r.total, st.offset, LIMIT, (o) => { st.offset = o; load(); }));
  }

  async function edit(row) {
    const saved = await spec.dialog(row);
    if (saved) { toast(`${spec.title} saved as a draft.`); await load(); p.refreshHead(); }
  }

  async function add() {
    const saved = await spec.dialog(null);
    if (saved) { toast(`${spec.title} added as a draft; publish to serve it.`); await load(); p.refreshHead(); }
  }

  async function remove(row) {
    const what = row[spec.key];
    const msg = row.state === 'created'
      ? `Delete the new ${spec.noun} ${what}? It was never published.`
      : `Delete ${spec.noun} ${what}? It stays served until you publish.`;
    if (!await confirm(msg, { action: 'Delete' })) return;
    if (await attempt(() => del(`${p.base}/${spec.kind}/${row.id}`)) !== undefined) {
      toast(`${spec.title} deleted in the draft.`);
      await load();
      p.refreshHead();
    }
  }

  const onSearch = debounce((text) => { st.q = text; st.offset = 0; load(); }, 250);
  const searchBox = h('input', { type: 'search', id: `${spec.kind}-search`, placeholder: spec.searchLabel,
    'aria-label': spec.searchLabel, oninput: (e) => onSearch(e.target.value.trim()) });
  const deletedBox = h('label', { class: 'check' },
    h('input', { type: 'checkbox', onchange: (e) => { st.deleted = e.target.checked; st.offset = 0; load(); } }),
    'Show deleted drafts');
  const draftsBox = h('label', { class: 'check' },
    h('input', { type: 'checkbox', id: `${spec.kind}-drafts-only`,
      onchange: (e) => { st.drafts = e.target.checked; st.offset = 0; load(); } }),
    'Drafts only');
  const el = h('section', { class: 'panel' },
    h('div', { class: 'panel-head' },
      h('h2', { class: 'grow' }, spec.heading),
      h('div', { class: 'actions' },
        spec.extra || null,
        p.operator ? h('button', { type: 'button', class: 'primary', onclick: add }, `Add ${spec.noun}`) : null)),
    h('div', { class: 'toolbar filters-row' },
      segmented('Type', [['', 'All'], ...spec.types.map(([t]) => [t, t])], '', (t) => {
        st.type = t; st.offset = 0; load();
      }),
      searchBox, draftsBox, deletedBox),
    bulkBox, tableBox, pagerBox);
  return { el, load };
}

function code(text, cls = '') {
  return h('code', { class: `wrap ${cls}`.trim() }, text);
}

async function redirectsTab(p) {
  const extra = [
    p.operator ? h('button', { type: 'button', id: 'import', onclick: () => importDialog(p, list.load) }, 'Import CSV') : null,
    h('a', { class: 'button', href: `${p.base}/redirects/export`, download: `${p.ns}-${p.name}-redirects.csv` }, 'Export CSV'),
  ];
  const list = ruleList(p, {
    kind: 'redirects', noun: 'redirect', title: 'Redirect', heading: 'Redirects', key: 'source', types: REDIRECT_TYPES,
    searchLabel: 'Search source or target', extra,
    columns: [
      { label: 'Type', render: (r) => badge(r.type, 'muted') },
      { label: 'Source', render: (r) => code(r.source) },
      { label: 'Target', render: (r) => [code(r.target),
        r.published && r.state === 'updated' && (r.published.target !== r.target || r.published.source !== r.source)
          ? h('div', { class: 'was' }, 'published: ', code(`${r.published.source} → ${r.published.target}`)) : null] },
      { label: 'Status', render: (r) => h('span', { title: r.status }, String(STATUS_CODE[r.status] || r.status)) },
      hitsColumn,
    ],
    dialog: (row) => redirectDialog(p, row),
  });
  mount(p.body, urlTester(p), list.el);
  await list.load();
}

/// Requests the gateway answered with the published rule (since it started).
const hitsColumn = { label: 'Hits', class: 'num', render: (r) => {
  if (r.hits === undefined) return h('span', { class: 'muted', title: 'No gateway runs in this process' }, '—');
  if (r.hits === null) return h('span', { class: 'muted', title: 'Not published yet' }, '—');
  return h('span', { title: 'Requests the gateway answered with the published rule since it started' }, num(r.hits));
} };

/// "What does this URL do": a URL tried against the draft or the published
/// rules, answered with the rule that matches and what it sends back.
function urlTester(p) {
  const out = h('div', { id: 'url-test-result', 'aria-live': 'polite' });
  const input = h('input', { type: 'text', name: 'url', id: 'url-test-url', required: true, autocomplete: 'off',
    placeholder: `http://${p.project().hosts[0] || 'example.com'}/old-page`, 'aria-label': 'URL to test' });
  const which = h('select', { name: 'which', id: 'url-test-which', 'aria-label': 'Rules to test against' },
    h('option', { value: 'draft' }, 'Draft (with unpublished changes)'),
    h('option', { value: 'published' }, 'Published (served now)'));
  async function run(ev) {
    ev.preventDefault();
    const url = input.value.trim();
    if (!url) return;
    let r;
    try {
      r = await get(`${p.base}/test?${new URLSearchParams({ url, which: which.value })}`);
    } catch (e) {
      mount(out, h('p', { class: 'error-text', role: 'alert' }, e.message));
      return;
    }
    const where = h('span', { class: 'muted' }, ` (${r.which}, as Host `, h('code', {}, r.host || '(none)'), ' and ', h('code', {}, r.uri), ')');
    if (!r.matched) {
      mount(out, h('p', {}, badge('no match', 'muted'), ' No rule answers this URL; the request goes on to the routes.', where));
      return;
    }
    const rule = r.rule;
    const ruleText = [rule.kind === 'page' ? 'page ' : 'redirect ', badge(rule.type, 'muted'), ' ', code(rule.source),
      h('span', { class: 'muted' }, ` #${rule.id}`)];
    mount(out,
      h('p', {}, badge(String(r.status), r.status === 200 ? 'ok' : 'info'), ' ',
        r.location !== null && r.location !== undefined ? ['→ ', code(r.location, 'location')] : `${r.content_type} page`, where),
      h('p', {}, 'Matched by ', ruleText),
      r.content !== null && r.content !== undefined ? h('pre', { class: 'preview' }, r.content) : null,
      r.skipped ? h('p', { class: 'muted small' }, `${r.skipped} rule${r.skipped === 1 ? '' : 's'} could not be compiled and ${r.skipped === 1 ? 'was' : 'were'} left out.`) : null);
  }
  return h('section', { class: 'panel', id: 'url-tester' },
    h('h2', {}, 'What does this URL do?'),
    h('form', { class: 'toolbar filters-row', onsubmit: run },
      input, which, h('button', { type: 'submit', class: 'primary' }, 'Test URL')),
    out);
}

function redirectDialog(p, row) {
  const typeField = field({ name: 'type', label: 'Type', type: 'select', options: REDIRECT_TYPES,
    value: row ? row.type : 'BASIC' });
  const sourceField = field({ name: 'source', label: 'Source', required: true, value: row ? row.source : '',
    placeholder: SOURCE_HINT[row ? row.type : 'BASIC'],
    help: 'BASIC: the path and query as requested. *_HOST: the host followed by the path. REGEX: a regular expression (RE2).' });
  const select = typeField.querySelector('select');
  select.addEventListener('change', () => {
    sourceField.querySelector('input').placeholder = SOURCE_HINT[select.value];
  });
  return formDialog(row ? `Redirect ${row.source}` : 'Add redirect', [
    typeField,
    sourceField,
    field({ name: 'target', label: 'Target', required: true, value: row ? row.target : '',
      placeholder: 'https://example.com/new-page', help: 'A path or URL; $1 to $9 take the regex\'s groups.' }),
    field({ name: 'status', label: 'Status', type: 'select', options: STATUSES, value: row ? row.status : 'FOUND' }),
  ], (form) => {
    const v = values(form);
    const body = { type: v.type, source: v.source.trim(), target: v.target.trim(), status: v.status };
    return row ? put(`${p.base}/redirects/${row.id}`, body) : post(`${p.base}/redirects`, body);
  }, { submit: row ? 'Save draft' : 'Add' });
}

async function pagesTab(p) {
  const list = ruleList(p, {
    kind: 'pages', noun: 'page', title: 'Page', heading: 'Pages', key: 'path', types: PAGE_TYPES,
    searchLabel: 'Search path or content',
    columns: [
      { label: 'Type', render: (r) => badge(r.type, 'muted') },
      { label: 'Path', render: (r) => code(r.path) },
      { label: 'Content type', class: 'hide-narrow', render: (r) => (r.content_type === 'XML' ? 'application/xml' : 'text/plain') },
      { label: 'Size', class: 'hide-narrow', render: (r) => bytes(new TextEncoder().encode(r.content).length) },
      { label: 'Content', class: 'hide-narrow', render: (r) => h('span', { class: 'preview' }, r.content.slice(0, 80)) },
      hitsColumn,
    ],
    dialog: (row) => pageDialog(p, row),
  });
  mount(p.body, list.el);
  await list.load();
}

function bytes(n) {
  if (n < 1024) return `${n} B`;
  if (n < 1024 * 1024) return `${(n / 1024).toFixed(1)} KiB`;
  return `${(n / 1024 / 1024).toFixed(1)} MiB`;
}

function pageDialog(p, row) {
  const content = field({ name: 'content', label: 'Content', type: 'textarea', rows: 12, value: row ? row.content : '',
    help: 'The whole response body, served as it is.' });
  content.querySelector('textarea').classList.add('mono');
  return formDialog(row ? `Page ${row.path}` : 'Add page', [
    h('div', { class: 'form-grid' },
      field({ name: 'type', label: 'Type', type: 'select', options: PAGE_TYPES, value: row ? row.type : 'BASIC' }),
      field({ name: 'content_type', label: 'Content type', type: 'select', options: CONTENT_TYPES,
        value: row ? row.content_type : 'TEXT_PLAIN' })),
    field({ name: 'path', label: 'Path', required: true, value: row ? row.path : '', placeholder: '/robots.txt',
      help: 'BASIC: the path as requested. BASIC_HOST: the host followed by the path (example.com/robots.txt).' }),
    content,
  ], (form) => {
    const v = values(form);
    const body = { type: v.type, path: v.path.trim(), content: v.content, content_type: v.content_type };
    return row ? put(`${p.base}/pages/${row.id}`, body) : post(`${p.base}/pages`, body);
  }, { submit: row ? 'Save draft' : 'Add', wide: true });
}

// ---------------------------------------------------------------- CSV import

function importDialog(p, reload) {
  const form = h('form', { class: 'import-form', novalidate: true });
  const fileInput = h('input', { type: 'file', id: 'import-file', accept: '.csv,.json,text/csv,application/json,text/plain' });
  const text = h('textarea', { id: 'import-text', rows: 8, class: 'mono', spellcheck: 'false',
    placeholder: 'type,source,target,status\nBASIC,/old,/new,MOVED_PERMANENT\nREGEX,^/blog/(\\d+)$,/posts/$1,FOUND' });
  const mode = h('select', { id: 'import-mode', name: 'mode' },
    h('option', { value: 'merge' }, 'Merge: add new sources, update existing ones'),
    h('option', { value: 'replace' }, 'Replace: also delete redirects not in the file'));
  const result = h('div', { id: 'import-result', 'aria-live': 'polite' });
  const check = h('button', { type: 'submit', class: 'primary', id: 'import-check' }, 'Check');
  const run = h('button', { type: 'button', class: 'primary', id: 'import-run', hidden: true }, 'Import');
  let checked = null; // the text and mode the dry run accepted

  fileInput.addEventListener('change', async () => {
    const f = fileInput.files[0];
    if (!f) return;
    text.value = await f.text();
    reset();
  });
  text.addEventListener('input', reset);
  mode.addEventListener('change', reset);
  function reset() {
    checked = null;
    run.hidden = true;
    check.hidden = false;
    mount(result);
  }

  const send = (dry) => {
    const body = text.value;
    const json = /^\s*\[/.test(body);
    const qs = new URLSearchParams({ mode: mode.value });
    if (dry) qs.set('dry_run', 'true');
    return api('POST', `${p.base}/redirects/import?${qs}`, body,
      { headers: { 'content-type': json ? 'application/json' : 'text/csv' } });
  };

  form.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    clearErrors(form);
    if (!text.value.trim()) {
      showErrors(form, fieldError('body', 'choose a file or paste CSV rows first'));
      return;
    }
    check.disabled = true;
    try {
      const r = await send(true);
      checked = { text: text.value, mode: mode.value };
      mount(result, h('div', { class: 'import-ok', role: 'status' },
        `All ${num(r.rows)} row${r.rows === 1 ? '' : 's'} are valid.`,
        mode.value === 'replace' ? ' Redirects not in the file will be deleted in the draft.' : '',
        ' Nothing is published until you publish.'));
      run.textContent = `Import ${num(r.rows)} row${r.rows === 1 ? '' : 's'}`;
      run.hidden = false;
      check.hidden = true;
      run.focus();
    } catch (e) {
      showImportErrors(e);
    } finally {
      check.disabled = false;
    }
  });

  function showImportErrors(e) {
    const rows = (e.errors || []).filter((x) => x.line !== undefined);
    if (!rows.length) {
      showErrors(form, e);
      return;
    }
    const invalid = e.details.invalid_rows || rows.length;
    mount(result, h('div', { class: 'import-errors', role: 'alert' },
      h('p', {}, h('strong', {}, `${num(invalid)} row${invalid === 1 ? ' is' : 's are'} invalid; nothing was imported.`),
        ' Fix the lines below and check again.'),
      h('div', { class: 'table-wrap' }, table([
        { label: 'Line', render: (x) => h('span', { class: 'line-no' }, `line ${x.line}`) },
        { label: 'Field', render: (x) => h('code', {}, x.field) },
        { label: 'Problem', render: (x) => h('span', { class: 'pre-line' }, x.message) },
      ], rows)),
      invalid > rows.length ? h('p', { class: 'muted' }, `Only the first ${rows.length} are listed.`) : null,
      markLines(rows)));
  }

  /// The pasted text's bad lines, as a reminder of what they hold.
  function markLines(rows) {
    const all = text.value.split(/\r?\n/);
    const shown = [...new Set(rows.map((x) => x.line))].slice(0, 10)
      .filter((n) => n >= 1 && n <= all.length && !/^\s*\[/.test(text.value));
    if (!shown.length) return null;
    return h('pre', { class: 'bad-lines' }, shown.map((n) => `${String(n).padStart(5)} │ ${all[n - 1]}\n`).join(''));
  }

  run.addEventListener('click', async () => {
    if (!checked || checked.text !== text.value || checked.mode !== mode.value) { reset(); return; }
    run.disabled = true;
    try {
      const r = await send(false);
      d.close();
      toast(`Imported ${num(r.rows)} rows: ${r.created} new, ${r.updated} updated, ${r.unchanged} unchanged`
        + `${r.deleted ? `, ${r.deleted} deleted` : ''}. Publish to serve them.`);
      await reload();
      p.refreshHead();
    } catch (e) {
      reset();
      showImportErrors(e);
    } finally {
      run.disabled = false;
    }
  });

  mount(form,
    h('p', { class: 'help-text' }, 'Rows are ', h('code', {}, 'type,source,target,status'),
      ' (a header line is optional; an empty status means 302). A JSON array of redirects works too. ',
      'The file is checked first; all rows are imported or none.'),
    h('div', { class: 'form-error', role: 'alert' }),
    h('div', { class: 'field' }, h('label', { for: 'import-file' }, 'File'), fileInput),
    h('div', { class: 'field', dataset: { field: 'body' } },
      h('label', { for: 'import-text' }, 'Or paste rows'), text, h('div', { class: 'error', role: 'alert' })),
    h('div', { class: 'field', dataset: { field: 'mode' } },
      h('label', { for: 'import-mode' }, 'Mode'), mode, h('div', { class: 'error', role: 'alert' })),
    result);
  form.id = 'import-form';
  check.setAttribute('form', 'import-form');
  const d = dialog('Import redirects', form, [
    h('button', { type: 'button', onclick: () => d.close() }, 'Cancel'), check, run]);
  d.el.classList.add('wide');
  fileInput.focus();
}

// ---------------------------------------------------------- changes (drafts)

const FIELD_NAMES = {
  redirect: { type: 'type', key: 'source', value: 'target', flavor: 'status' },
  page: { type: 'type', key: 'path', value: 'content', flavor: 'content type' },
};

function changeItem(c) {
  const names = FIELD_NAMES[c.kind] || FIELD_NAMES.redirect;
  const rule = c.after || c.before || {};
  const rows = [];
  for (const k of ['type', 'key', 'value', 'flavor']) {
    const before = c.before ? c.before[k] : undefined;
    const after = c.after ? c.after[k] : undefined;
    if (c.action === 'update' && before === after) continue;
    rows.push(h('div', { class: 'change-field' },
      h('span', { class: 'fname' }, names[k]),
      before !== undefined && c.action !== 'create' ? h('del', { class: 'op-remove' }, clip(before)) : null,
      before !== undefined && after !== undefined && c.action === 'update' ? h('span', { class: 'arrow' }, '→') : null,
      after !== undefined && c.action !== 'delete' ? h('ins', { class: 'op-add' }, clip(after)) : null));
  }
  const label = { create: ['add', 'ok'], update: ['change', 'warn'], delete: ['delete', 'bad'] }[c.action] || [c.action, 'muted'];
  return h('li', { class: `change ${c.action}` },
    h('div', { class: 'change-head' }, badge(label[0], label[1]), ' ', h('span', { class: 'muted' }, c.kind), ' ',
      h('code', { class: 'wrap' }, rule.key)),
    h('div', { class: 'change-body' }, rows));
}

function clip(v) {
  const s = String(v);
  return s.length > 300 ? `${s.slice(0, 300)}…` : s;
}

function counts(c) {
  const parts = [];
  if (c.created) parts.push(`${c.created} added`);
  if (c.updated) parts.push(`${c.updated} changed`);
  if (c.deleted) parts.push(`${c.deleted} deleted`);
  return parts.join(', ') || 'no changes';
}

async function changesTab(p) {
  const d = await get(`${p.base}/drafts`);
  mount(p.body, h('section', { class: 'panel', id: 'changes' },
    h('div', { class: 'panel-head' },
      h('h2', { class: 'grow' }, d.total ? `Unpublished changes since v${d.published_version}` : 'No unpublished changes'),
      p.operator && d.total ? h('button', { type: 'button', class: 'primary',
        onclick: () => document.getElementById('publish').click() }, 'Publish…') : null),
    d.total ? h('p', { class: 'muted' }, `Redirects: ${counts(d.redirects)}. Pages: ${counts(d.pages)}.`) : null,
    d.total
      ? h('ul', { class: 'change-list' }, d.changes.map(changeItem))
      : h('p', { class: 'empty' }, 'The working set is what agents are served. Edits, imports and deletions show here until they are published.'),
    d.changes.length < d.total ? h('p', { class: 'muted' }, `The first ${d.changes.length} of ${d.total} changes are listed.`) : null));
}

// --------------------------------------------------------------------- history

async function historyTab(p) {
  let offset = 0;
  const box = h('div');
  async function load() {
    const r = await get(`${p.base}/versions?limit=20&offset=${offset}`);
    mount(box, r.items.length
      ? h('ol', { class: 'versions', id: 'versions' }, r.items.map((v) => h('li', {},
        h('div', { class: 'version-head' },
          badge(`v${v.version}`, v.version === p.project().version ? 'info' : 'muted'),
          ' ', time(v.published_at), ' by ', h('strong', {}, v.author),
          h('span', { class: 'muted' }, ` · redirects ${counts(v.summary.redirects || {})}; pages ${counts(v.summary.pages || {})}`)),
        (v.summary.changes || []).length ? h('details', {},
          h('summary', {}, `What changed (${v.summary.changes.length}${v.summary.truncated ? '+' : ''})`),
          h('ul', { class: 'change-list' }, v.summary.changes.map(changeItem))) : null)))
      : h('p', { class: 'empty' }, 'Nothing published yet.'),
    pager(r.total, offset, 20, (o) => { offset = o; load(); }));
  }
  mount(p.body, h('section', { class: 'panel' }, h('h2', {}, 'Published versions'), box));
  await load();
}

// ---------------------------------------------------------------------- agents

async function agentsTab(p) {
  const box = h('div', { class: 'table-wrap', id: 'agents' });
  const published = p.project().version;
  async function load() {
    const r = await get(`${p.base}/agents`);
    const cols = [
      { label: 'Agent', render: (a) => h('strong', {}, a.name) },
      { label: 'Type', class: 'hide-narrow', key: 'type' },
      { label: 'Loaded version', render: (a) => [badge(`v${a.version}`, a.version < published ? 'warn' : 'ok'),
        a.version < published ? h('span', { class: 'muted' }, ` of v${published}`) : null] },
      { label: 'Status', render: (a) => [
        a.status ? badge(a.status, a.status === 'success' ? 'ok' : 'bad') : badge('heartbeat only', 'muted'),
        a.error ? h('div', { class: 'agent-error' }, a.error) : null] },
      { label: 'Load time', class: 'hide-narrow', render: (a) => (a.load_duration_ns ? `${num(a.load_duration_ms, 1)} ms` : '—') },
      { label: 'Last seen', render: (a) => time(a.last_hit_at) },
      { label: 'Freshness', render: (a) => (a.stale
        ? badge(a.stale_reason === 'silent' ? 'stale: silent' : 'stale: behind', 'warn')
        : badge('current', 'ok')) },
    ];
    if (p.operator) {
      cols.push({ label: 'Actions', class: 'actions', render: (a) => h('button', { type: 'button', class: 'small danger',
        'aria-label': `Forget agent ${a.name}`,
        onclick: async () => {
          if (!await confirm(`Forget agent ${a.name}? It reappears when it reports again.`, { action: 'Forget' })) return;
          if (await attempt(() => del(`${p.base}/agents/${enc(a.name)}`), `Agent ${a.name} forgotten.`) !== undefined) load();
        } }, 'Forget') });
    }
    mount(box, stack(table(cols, r.items, { empty: 'No agent has reported yet.' })));
  }
  const sync = `${location.origin}/api/namespace/${p.ns}/project/${p.name}`;
  mount(p.body, h('section', { class: 'panel' },
    h('div', { class: 'panel-head' }, h('h2', { class: 'grow' }, 'Agents'),
      h('button', { type: 'button', class: 'small', onclick: () => load() }, 'Refresh')),
    h('p', { class: 'muted' }, 'Flecto agents sync this project from ', h('code', { class: 'wrap' }, sync),
      ' with a project token. An agent is stale when it runs an older version than the published one, ',
      'or has not reported for longer than the agent staleness setting.'),
    box));
  await load();
  const timer = setInterval(() => { load().catch(() => {}); }, 15000);
  return () => clearInterval(timer);
}

// ---------------------------------------------------------------------- tokens

const PRESETS = {
  agent: { label: 'Agent: read redirects and pages, report status (default)', scopes: null },
  read: { label: 'Read only: redirects and pages', scopes: [{ resource: 'redirect', action: 'read' }, { resource: 'page', action: 'read' }] },
  write: { label: 'Editor: read and write redirects and pages, report status',
    scopes: [{ resource: 'redirect', action: '*' }, { resource: 'page', action: '*' }, { resource: 'agent', action: 'write' }] },
};

async function tokensTab(p) {
  const box = h('div', { class: 'table-wrap', id: 'tokens' });
  async function load() {
    const r = await get(`${p.base}/tokens`);
    const cols = [
      { label: 'Name', render: (t) => h('strong', {}, t.name) },
      { label: 'Token', render: (t) => h('code', {}, t.preview) },
      { label: 'Scopes', class: 'hide-narrow', render: (t) => t.scopes.map((s) => badge(`${s.resource}:${s.action}`, 'muted')) },
      { label: 'Created', class: 'hide-narrow', render: (t) => time(t.created_at) },
      { label: 'Expires', render: (t) => (t.expires_at ? time(t.expires_at) : 'never') },
      { label: 'Last used', render: (t) => time(t.last_used_at) },
    ];
    if (p.operator) {
      cols.push({ label: 'Actions', class: 'actions', render: (t) => h('button', { type: 'button', class: 'small danger',
        'aria-label': `Revoke token ${t.name}`,
        onclick: async () => {
          if (!await confirm(`Revoke token ${t.name}? Agents using it can no longer sync.`, { action: 'Revoke' })) return;
          if (await attempt(() => del(`${p.base}/tokens/${enc(t.id)}`), `Token ${t.name} revoked.`) !== undefined) load();
        } }, 'Revoke') });
    }
    mount(box, stack(table(cols, r.items, { empty: 'No tokens. Agents need a token to sync this project.' })));
  }
  async function create() {
    const created = await formDialog('New project token', [
      field({ name: 'name', label: 'Name', required: true, placeholder: 'edge-eu-1' }),
      field({ name: 'preset', label: 'Access', type: 'select', options: Object.entries(PRESETS).map(([k, v]) => [k, v.label]) }),
      field({ name: 'expires_at', label: 'Expires', type: 'datetime-local', help: 'Leave empty for a token that does not expire.' }),
    ], (form) => {
      const v = values(form);
      const body = { name: v.name };
      if (PRESETS[v.preset].scopes) body.scopes = PRESETS[v.preset].scopes;
      if (v.expires_at) {
        const t = new Date(v.expires_at);
        if (Number.isNaN(t.getTime())) throw fieldError('expires_at', 'is not a valid time');
        body.expires_at = t.toISOString();
      }
      return post(`${p.base}/tokens`, body);
    }, { submit: 'Create token' });
    if (!created) return;
    await load();
    await showSecret(`Token ${created.name}`, 'Project token', created.token,
      'this token is shown only now. Configure the agent with it; if it is lost, revoke it and create another.');
  }
  mount(p.body, h('section', { class: 'panel' },
    h('div', { class: 'panel-head' }, h('h2', { class: 'grow' }, 'Project tokens'),
      p.operator ? h('button', { type: 'button', class: 'primary', onclick: create }, 'New token') : null),
    box));
  await load();
}
