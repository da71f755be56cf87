// Configuration revisions: the history at #/revisions (paginated; pick any two to
// compare), one revision at #/revisions/<n> compared with the one before, or with
// any other at #/revisions/<n>/against/<m> (side by side), and rollback (admins)
// after a confirmation listing what will change.

import { get, post } from '../api.js';
import { crumbs } from '../forms.js';
import { sideBySide } from '../diff.js';
import { subscribe } from '../live.js';
import {
  attempt, badge, dialog, h, mount, num, table, time, toast,
} from '../ui.js';

const PAGE = 25;
let pageOffset = 0;

export async function render(main, ctx, params) {
  if (params[0] && /^\d+$/.test(params[0])) {
    const n = Number(params[0]);
    const against = params[1] === 'against' && /^\d+$/.test(params[2] || '') ? Number(params[2]) : n - 1;
    return detail(main, ctx, n, against);
  }
  return history(main, ctx);
}

async function latestNumber() {
  const page = await get('/api/v1/revisions?limit=1');
  return page.items.length ? page.items[0].number : 0;
}

// ---------------------------------------------------------------- history

async function history(main, ctx) {
  const canRollback = ctx.atLeast('admin');
  const box = h('div', { class: 'panel', id: 'revisions-table' });
  const pager = h('div', { class: 'pager' });
  const picked = new Set();
  const compareButton = h('button', { type: 'button', class: 'primary', disabled: true, onclick: compare }, 'Compare selected');
  const pickHint = h('span', { class: 'muted small', id: 'compare-hint' }, 'Select two revisions to compare them side by side.');
  let page = null;
  let latest = 0;

  function compare() {
    const [a, b] = [...picked].sort((x, y) => x - y);
    location.hash = `#/revisions/${b}/against/${a}`;
  }

  function syncPick() {
    compareButton.disabled = picked.size !== 2;
    pickHint.textContent = picked.size === 2
      ? `Compare #${[...picked].sort((x, y) => x - y).join(' with #')}.`
      : picked.size === 1 ? 'Select one more revision.' : 'Select two revisions to compare them side by side.';
    for (const cb of box.querySelectorAll('input[type="checkbox"]')) {
      cb.disabled = picked.size >= 2 && !cb.checked;
    }
  }

  async function load() {
    page = await get(`/api/v1/revisions?limit=${PAGE}&offset=${pageOffset}`);
    if (pageOffset === 0) latest = page.items.length ? page.items[0].number : 0;
    else if (!latest) latest = await latestNumber();
    draw();
  }

  function draw() {
    mount(box, table([
      { label: h('span', { class: 'sr-only' }, 'Compare'), render: (r) => h('input', {
        type: 'checkbox', checked: picked.has(r.number), 'aria-label': `Select revision ${r.number} to compare`,
        onchange: (e) => { if (e.target.checked) picked.add(r.number); else picked.delete(r.number); syncPick(); },
      }) },
      { label: 'Revision', render: (r) => [h('a', { href: `#/revisions/${r.number}`, class: 'strong' }, `#${r.number}`),
        r.number === latest ? [' ', badge('current', 'ok')] : null] },
      { label: 'Change', render: (r) => h('span', {}, r.message) },
      { label: 'By', class: 'hide-narrow', key: 'author' },
      { label: 'When', render: (r) => time(r.created_at) },
      { label: h('span', { class: 'sr-only' }, 'Actions'), class: 'actions', render: (r) => [
        h('a', { class: 'button small hide-narrow', href: `#/revisions/${r.number}`, 'aria-label': `Changes of revision ${r.number}` }, 'Changes'),
        canRollback && r.number !== latest ? [' ', h('button', { type: 'button', class: 'small', 'aria-label': `Roll back to revision ${r.number}`,
          onclick: () => rollback(r.number, latest, () => load()) }, 'Roll back')] : null,
      ] },
    ], page.items, { empty: 'No revisions yet: every change to routes, upstreams or settings is recorded here.',
      rowAttrs: (r) => ({ dataset: { revision: r.number } }) }));
    const from = page.total ? pageOffset + 1 : 0;
    const to = pageOffset + page.items.length;
    mount(pager,
      h('button', { type: 'button', disabled: pageOffset === 0, onclick: () => { pageOffset = Math.max(0, pageOffset - PAGE); load(); } }, '← Newer'),
      h('span', { class: 'muted' }, `${num(from)}–${num(to)} of ${num(page.total)}`),
      h('button', { type: 'button', disabled: to >= page.total, onclick: () => { pageOffset += PAGE; load(); } }, 'Older →'));
    syncPick();
  }

  mount(main,
    h('div', { class: 'toolbar' }, h('h1', { class: 'grow' }, 'Revisions')),
    h('p', { class: 'lead muted' }, 'Every change to the configuration is a numbered revision. Open one to see what it changed; ',
      canRollback ? 'roll back to put an older configuration back in force (as a new revision).' : 'admins can roll back to an older one.'),
    h('div', { class: 'filters' }, compareButton, pickHint),
    box, pager);
  await load();
  // New revisions (from anyone) appear at the top of the first page.
  let timer = null;
  const off = subscribe('event', (e) => {
    if (e.type !== 'config.changed' || pageOffset !== 0) return;
    clearTimeout(timer);
    timer = setTimeout(() => load().catch(() => {}), 250);
  });
  return () => { clearTimeout(timer); off(); };
}

// ---------------------------------------------------------------- one revision

/// The document of revision n (0: the configuration before any change, rebuilt
/// from the diff since the API has no revision 0 to fetch).
async function documentOf(n, fallbackFrom) {
  if (n > 0) return (await get(`/api/v1/revisions/${n}`)).document;
  const d = await get(`/api/v1/revisions/${fallbackFrom.number}/diff?against=0`);
  return unapply(fallbackFrom.document, d.changes);
}

function pointer(path) {
  return path.split('/').slice(1).map((s) => s.replace(/~1/g, '/').replace(/~0/g, '~'));
}

/// Undoes JSON-Pointer changes (op, path, before, after) on a copy of `doc`.
function unapply(doc, changes) {
  const out = JSON.parse(JSON.stringify(doc));
  for (const c of [...changes].reverse()) {
    const keys = pointer(c.path);
    if (!keys.length) return c.before;
    let parent = out;
    for (const k of keys.slice(0, -1)) parent = parent[k];
    const last = keys[keys.length - 1];
    if (c.op === 'add') {
      if (Array.isArray(parent)) parent.splice(Number(last), 1); else delete parent[last];
    } else {
      parent[Array.isArray(parent) ? Number(last) : last] = c.before;
    }
  }
  return out;
}

function keyed(list, key) {
  return new Map((list || []).map((x) => [x[key], x]));
}

function changedKeys(a, b) {
  const keys = new Set([...Object.keys(a || {}), ...Object.keys(b || {})]);
  return [...keys].filter((k) => JSON.stringify(a?.[k]) !== JSON.stringify(b?.[k]));
}

/// What differs between two documents, by resource: [{op, kind, name, fields}].
export function summarize(before, after) {
  const out = [];
  for (const [kind, list, key, label] of [['route', 'routes', 'id', 'Route'], ['upstream', 'upstreams', 'name', 'Upstream']]) {
    const a = keyed(before[list], key);
    const b = keyed(after[list], key);
    for (const [name, x] of a) {
      if (!b.has(name)) out.push({ op: 'remove', kind, label, name, value: x });
      else {
        const fields = changedKeys(x, b.get(name));
        if (fields.length) out.push({ op: 'replace', kind, label, name, fields, before: x, after: b.get(name) });
      }
    }
    for (const [name, x] of b) if (!a.has(name)) out.push({ op: 'add', kind, label, name, value: x });
  }
  for (const group of changedKeys(before.settings, after.settings)) {
    out.push({ op: 'replace', kind: 'settings', label: 'Settings', name: group,
      fields: changedKeys(before.settings?.[group], after.settings?.[group]) });
  }
  for (const k of changedKeys(before, after).filter((x) => !['routes', 'upstreams', 'settings'].includes(x))) {
    out.push({ op: 'replace', kind: 'document', label: 'Document', name: k, fields: [] });
  }
  return out;
}

function plural(n, word) {
  return `${num(n)} ${word}${n === 1 ? '' : 's'}`;
}

/// A JSON value in one line of at most `max` characters.
function short(v, max = 80) {
  const s = JSON.stringify(v);
  return s === undefined ? '—' : s.length > max ? `${s.slice(0, max - 3)}…` : s;
}

/// JSON-Pointer changes (op, path, before, after) as a list; an empty path is
/// the document's root, shown as `/`.
export function pointerList(changes, max = 80) {
  return h('ul', { class: 'diff-list' }, changes.map((c) => h('li', { class: `op-${c.op}` },
    h('code', {}, `${c.op} ${c.path || '/'}`), ' ',
    h('span', { class: 'muted' }, c.op === 'add' ? short(c.after, max) : c.op === 'remove' ? short(c.before, max)
      : `${short(c.before, max)} → ${short(c.after, max)}`))));
}

/// A readable list of what changes from `before` to `after`.
export function summaryList(items, { verb = 'past' } = {}) {
  if (!items.length) return h('p', { class: 'empty' }, 'No differences.');
  const words = verb === 'past'
    ? { add: 'added', remove: 'removed', replace: 'changed' }
    : { add: 'will be added', remove: 'will be removed', replace: 'will change' };
  const sign = { add: '+', remove: '−', replace: '~' };
  return h('ul', { class: 'change-list' }, items.map((c) => h('li', { class: `op-${c.op}`, dataset: { kind: c.kind, name: c.name, op: c.op } },
    h('span', { class: 'sign', 'aria-hidden': 'true' }, sign[c.op]),
    h('span', {}, `${c.label} `, h('strong', {}, c.name), ` ${words[c.op]}`,
      c.kind === 'route' && c.value ? h('span', { class: 'muted' }, ` (${c.value.path} → ${c.value.upstream})`) : null,
      c.fields && c.fields.length ? h('span', { class: 'fields' }, ': ', c.fields.map((f, i) => [i ? ', ' : '',
        h('code', {}, f),
        c.before && c.after && typeof c.before[f] !== 'object' && typeof c.after[f] !== 'object'
          ? h('span', { class: 'muted' }, ` ${short(c.before[f])} → ${short(c.after[f])}`) : null])) : null))));
}

async function detail(main, ctx, n, against) {
  const [rev, latest] = await Promise.all([get(`/api/v1/revisions/${n}`), latestNumber()]);
  const [other, apiDiff] = await Promise.all([
    documentOf(against, rev),
    get(`/api/v1/revisions/${n}/diff?against=${against}`),
  ]);
  // The older revision on the left.
  const leftN = Math.min(n, against);
  const rightN = Math.max(n, against);
  const leftDoc = against <= n ? other : rev.document;
  const rightDoc = against <= n ? rev.document : other;
  const items = summarize(leftDoc, rightDoc);
  const sbs = sideBySide(JSON.stringify(leftDoc, null, 2), JSON.stringify(rightDoc, null, 2), {
    leftTitle: leftN === 0 ? 'Empty configuration (#0)' : `Revision #${leftN}`,
    rightTitle: `Revision #${rightN}${rightN === latest ? ' (current)' : ''}`,
  });

  const input = h('input', { type: 'number', min: 0, max: latest, step: 1, value: String(against), id: 'against', inputmode: 'numeric' });
  const compareForm = h('form', { class: 'inline-form', 'aria-label': 'Compare with another revision',
    onsubmit: (e) => {
      e.preventDefault();
      const m = Number(input.value);
      if (Number.isInteger(m) && m >= 0 && m !== n) location.hash = `#/revisions/${n}/against/${m}`;
    } },
  h('label', { for: 'against' }, 'Compare with revision'), input, h('button', { type: 'submit' }, 'Compare'),
  n > 1 && against !== n - 1 ? h('a', { href: `#/revisions/${n}`, class: 'small' }, `previous (#${n - 1})`) : null,
  latest !== n && against !== latest ? h('a', { href: `#/revisions/${n}/against/${latest}`, class: 'small' }, `current (#${latest})`) : null);

  const canRollback = ctx.atLeast('admin') && n !== latest;
  mount(main,
    crumbs(['Revisions', '#/revisions'], `#${n}`),
    h('div', { class: 'toolbar' },
      h('h1', { class: 'grow' }, `Revision #${n}`, n === latest ? h('span', { class: 'title-badge' }, badge('current', 'ok')) : null),
      n > 1 ? h('a', { class: 'button', href: `#/revisions/${n - 1}`, 'aria-label': 'Older revision' }, '← Older') : null,
      n < latest ? h('a', { class: 'button', href: `#/revisions/${n + 1}`, 'aria-label': 'Newer revision' }, 'Newer →') : null,
      canRollback ? h('button', { type: 'button', class: 'danger', id: 'rollback',
        onclick: () => rollback(n, latest, (r) => { location.hash = r.revision ? `#/revisions/${r.revision}` : '#/revisions'; }) },
      `Roll back to #${n}`) : null),
    h('section', { class: 'panel meta' },
      h('dl', { class: 'kv' },
        h('dt', {}, 'Change'), h('dd', {}, rev.message),
        h('dt', {}, 'By'), h('dd', {}, rev.author),
        h('dt', {}, 'When'), h('dd', {}, time(rev.created_at), ' ', h('span', { class: 'muted small' }, new Date(rev.created_at).toLocaleString())),
        h('dt', {}, 'Contents'), h('dd', {}, `${plural((rev.document.routes || []).length, 'route')}, ${plural((rev.document.upstreams || []).length, 'upstream')}`))),
    h('section', { class: 'panel', id: 'change-summary' },
      h('div', { class: 'panel-head' },
        h('h2', {}, against === n - 1 ? `What #${n} changed` : `From #${leftN} to #${rightN}`),
        compareForm),
      summaryList(items),
      apiDiff.changes.length ? h('details', { class: 'raw-changes' },
        h('summary', {}, `${num(apiDiff.changes.length)} change${apiDiff.changes.length === 1 ? '' : 's'} as JSON Pointers (from #${apiDiff.from} to #${apiDiff.to})`),
        pointerList(apiDiff.changes)) : null),
    h('section', { class: 'panel', id: 'side-by-side' },
      h('div', { class: 'panel-head' }, h('h2', {}, 'Side by side'),
        h('span', { class: 'muted small' }, sbs.changed ? `${num(sbs.changed)} line${sbs.changed === 1 ? '' : 's'} differ` : 'identical')),
      sbs.el));
  return undefined;
}

// ---------------------------------------------------------------- rollback

/// Shows what rolling back to revision n would change, and does it when confirmed.
async function rollback(n, latestHint, after) {
  const latest = await latestNumber().catch(() => latestHint);
  let target;
  let current;
  try {
    [target, current] = await Promise.all([get(`/api/v1/revisions/${n}`), get(`/api/v1/revisions/${latest}`)]);
  } catch (e) {
    toast(e.message, 'bad');
    return;
  }
  const items = summarize(current.document, target.document);
  if (!items.length) {
    toast(`Revision #${n} has the same configuration as the current one (#${latest}); nothing to roll back.`);
    return;
  }
  const confirmButton = h('button', { type: 'button', class: 'danger solid', onclick: go }, `Roll back to #${n}`);
  const d = dialog(`Roll back to revision #${n}?`, h('div', { class: 'rollback-preview' },
    h('p', {}, 'The configuration of ', h('strong', {}, `#${n}`), ` (“${target.message}”, ${new Date(target.created_at).toLocaleString()}) `,
      'goes back in force as a new revision. Compared with the current configuration ', h('strong', {}, `#${latest}`), ':'),
    summaryList(items, { verb: 'future' }),
    h('p', { class: 'muted small' }, 'The gateway applies it at once. You can roll forward again from the history.')),
  [h('button', { type: 'button', onclick: () => d.close() }, 'Cancel'), confirmButton]);
  confirmButton.focus();

  async function go() {
    confirmButton.disabled = true;
    const r = await attempt(() => post(`/api/v1/revisions/${n}/rollback`));
    d.close();
    if (!r) return;
    toast(r.revision ? `Rolled back to #${n}: now revision #${r.revision} (${r.changes.length} changes).` : `Nothing differed from #${n}.`);
    after(r);
  }
}
