// Global search (the "/" key anywhere outside a field, or the side bar's
// Search button): routes, upstreams, redirect rules of every project and recent
// events that contain the words typed, each a link to where it lives.

import { get, getAll, enc } from './api.js';
import { h, mount, dialog, badge } from './ui.js';
import { debounce } from './widgets.js';

const PER_KIND = 8;
// Projects whose rules are searched at most (each is one API call).
const MAX_PROJECTS = 20;

function words(q) {
  return q.toLowerCase().split(/\s+/).filter(Boolean);
}

function hit(hay, ws) {
  const s = hay.join(' ').toLowerCase();
  return ws.every((w) => s.includes(w));
}

async function projects() {
  const out = [];
  const namespaces = await getAll('/api/v1/namespaces').catch(() => []);
  for (const n of namespaces) {
    const ps = await getAll(`/api/v1/namespaces/${enc(n.name)}/projects`).catch(() => []);
    for (const p of ps) out.push([n.name, p.name]);
    if (out.length >= MAX_PROJECTS) break;
  }
  return out.slice(0, MAX_PROJECTS);
}

async function find(q) {
  const ws = words(q);
  const [routes, upstreams, events, projectList] = await Promise.all([
    getAll('/api/v1/routes').catch(() => []),
    getAll('/api/v1/upstreams').catch(() => []),
    get('/api/v1/events?limit=200').then((r) => r.items).catch(() => []),
    projects(),
  ]);
  const redirects = (await Promise.all(projectList.map(async ([ns, p]) => {
    const r = await get(`/api/v1/namespaces/${enc(ns)}/projects/${enc(p)}/redirects?q=${enc(q)}&limit=${PER_KIND}`).catch(() => ({ items: [] }));
    return r.items.map((x) => ({ ns, project: p, rule: x }));
  }))).flat();
  return [
    ['Routes', routes.filter((r) => hit([r.id, r.path, r.upstream, r.description, ...r.hosts, ...r.tags], ws)).slice(0, PER_KIND)
      .map((r) => [`#/routes/edit/${enc(r.id)}`, r.id, `${r.path} → ${r.upstream}`])],
    ['Upstreams', upstreams.filter((u) => hit([u.name, ...u.targets.map((t) => t.url)], ws)).slice(0, PER_KIND)
      .map((u) => [`#/upstreams/view/${enc(u.name)}`, u.name, u.targets.map((t) => t.url).join(', ')])],
    ['Redirects', redirects.slice(0, PER_KIND)
      .map(({ ns, project, rule }) => [`#/redirects/${enc(ns)}/${enc(project)}`, rule.source || rule.path || rule.id,
        `${ns}/${project}${rule.destination ? ` → ${rule.destination}` : ''}`])],
    ['Events', events.filter((e) => hit([e.type, e.message, e.route_id || '', e.upstream || '', e.node_id || ''], ws)).slice(0, PER_KIND)
      .map((e) => [`#/events/${e.id}`, e.message, e.type])],
  ];
}

/// Opens the search dialog.
export function openSearch() {
  const input = h('input', { type: 'search', id: 'global-search', placeholder: 'Routes, upstreams, redirects, events…',
    'aria-label': 'Search everything', autocomplete: 'off' });
  const results = h('div', { class: 'search-results', 'aria-live': 'polite' });
  let seq = 0;
  const d = dialog('Search', h('div', {}, input, results), []);
  const run = debounce(async () => {
    const q = input.value.trim();
    const mine = ++seq;
    if (q.length < 2) { mount(results, h('p', { class: 'muted' }, 'Type two characters or more.')); return; }
    mount(results, h('p', { class: 'muted' }, 'Searching…'));
    const groups = await find(q);
    if (mine !== seq) return;
    const shown = groups.filter(([, items]) => items.length);
    mount(results, shown.length ? shown.map(([title, items]) => h('section', { dataset: { kind: title.toLowerCase() } },
      h('h3', {}, title, ' ', badge(String(items.length), 'muted')),
      h('ul', { class: 'plain-list' }, items.map(([href, name, detail]) => h('li', {},
        h('a', { href, onclick: () => d.close() }, name), ' ', h('span', { class: 'muted small' }, detail))))))
      : h('p', { class: 'empty' }, `Nothing matches “${q}”.`));
  }, 200);
  input.addEventListener('input', run);
  input.focus();
  return d;
}

/// "/" opens the search unless the key is typed into a field.
export function installSearchKey() {
  document.addEventListener('keydown', (ev) => {
    if (ev.key !== '/' || ev.ctrlKey || ev.metaKey || ev.altKey) return;
    const t = ev.target;
    if (t && (t.isContentEditable || ['INPUT', 'TEXTAREA', 'SELECT'].includes(t.tagName))) return;
    if (document.querySelector('dialog[open]')) return;
    ev.preventDefault();
    openSearch();
  });
}
