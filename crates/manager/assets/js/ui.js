// Small DOM helpers: element building, tables, forms with field errors, dialogs,
// toasts and formatting. No framework; every view renders into a container.

export function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith('on') && typeof v === 'function') el.addEventListener(k.slice(2), v);
    else if (k === 'class') el.className = v;
    else if (k === 'dataset') Object.assign(el.dataset, v);
    else if (k === 'value' && 'value' in el) el.value = v;
    else if (k === 'checked') el.checked = !!v;
    else el.setAttribute(k, v === true ? '' : v);
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const c of children.flat(Infinity)) {
    if (c === undefined || c === null || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
}

export function mount(container, ...children) {
  container.replaceChildren();
  append(container, children);
  return container;
}

/// A table; columns: [{label, render(row) | key, class, sort}]. A column with
/// `sort` (true for its `key`, or a function of the row giving the value to
/// order by) gets a header button that orders the rows, again to reverse.
export function table(columns, rows, { empty = 'Nothing here yet.', rowAttrs } = {}) {
  if (!rows.length) return h('p', { class: 'empty' }, empty);
  const body = h('tbody', {});
  const fill = (list) => {
    body.replaceChildren(...list.map((r) => h('tr', rowAttrs ? rowAttrs(r) : {},
      columns.map((c) => h('td', { class: c.class }, c.render ? c.render(r) : fmt(r[c.key]))))));
    // A table stacked as cards on a phone (widgets.stack) keeps its labels.
    const t = body.parentElement;
    if (t && t.classList.contains('stack')) {
      const heads = [...t.querySelectorAll(':scope > thead > tr > th')].map((th) => (
        th.classList.contains('actions') || th.classList.contains('select') ? '' : th.textContent.trim()));
      for (const tr of body.children) stackRow(tr, heads);
    }
  };
  let by = null;
  let dir = 1;
  const heads = columns.map((c, i) => {
    if (!c.sort) return h('th', { class: c.class, scope: 'col' }, c.label);
    const key = typeof c.sort === 'function' ? c.sort : (r) => r[c.key];
    const th = h('th', { class: c.class, scope: 'col', 'aria-sort': 'none' });
    th.append(h('button', { type: 'button', class: 'sort', onclick: () => {
      dir = by === i ? -dir : 1;
      by = i;
      for (const x of th.parentElement.children) x.setAttribute('aria-sort', 'none');
      th.setAttribute('aria-sort', dir === 1 ? 'ascending' : 'descending');
      const sorted = [...rows].sort((a, b) => dir * compare(key(a), key(b)));
      fill(sorted);
    } }, c.label));
    return th;
  });
  const t = h('table', {}, h('thead', {}, h('tr', {}, heads)), body);
  fill(rows);
  return t;
}

/// Orders numbers as numbers, the rest as text; empty values last.
export function compare(a, b) {
  const empty = (v) => v === null || v === undefined || v === '';
  if (empty(a) || empty(b)) return empty(a) - empty(b);
  if (typeof a === 'number' && typeof b === 'number') return a - b;
  return String(a).localeCompare(String(b), undefined, { numeric: true, sensitivity: 'base' });
}

/// One row of a table stacked as cards: each cell labelled with its column.
export function stackRow(tr, heads) {
  [...tr.children].forEach((td, i) => {
    if (td.dataset.label !== undefined) return;
    td.dataset.label = heads[i] || '';
    const inner = document.createElement('div');
    inner.className = 'cell';
    inner.append(...td.childNodes);
    td.append(inner);
  });
  return tr;
}

function fmt(v) {
  if (v === undefined || v === null || v === '') return '—';
  if (Array.isArray(v)) return v.join(', ') || '—';
  return String(v);
}

export function badge(text, kind = 'muted') {
  return h('span', { class: `badge ${kind}` }, text);
}

let fieldSeq = 0;

/// One labelled input. spec: {name, label, type, value, options, help, placeholder,
/// required, rows, wide}. The element carries data-field for error placement.
export function field(spec) {
  const id = `f${++fieldSeq}`;
  const common = { id, name: spec.name, required: spec.required, placeholder: spec.placeholder,
    'aria-describedby': spec.help ? `${id}-help` : undefined };
  let input;
  if (spec.type === 'select') {
    input = h('select', common, (spec.options || []).map((o) => {
      const [value, label] = Array.isArray(o) ? o : [o, o];
      return h('option', { value, selected: String(spec.value ?? '') === String(value) }, label);
    }));
  } else if (spec.type === 'textarea') {
    input = h('textarea', { ...common, rows: spec.rows || 4 });
    input.value = spec.value ?? '';
  } else if (spec.type === 'checkbox') {
    input = h('input', { ...common, type: 'checkbox', checked: !!spec.value });
    return h('div', { class: `field${spec.wide ? ' wide' : ''}`, dataset: { field: spec.name } },
      h('label', { class: 'check', for: id }, input, spec.label),
      spec.help && h('div', { class: 'help', id: `${id}-help` }, spec.help),
      h('div', { class: 'error', role: 'alert' }));
  } else {
    input = h('input', { ...common, type: spec.type || 'text', value: spec.value ?? '',
      min: spec.min, max: spec.max, step: spec.step, autocomplete: spec.autocomplete || 'off' });
  }
  return h('div', { class: `field${spec.wide ? ' wide' : ''}`, dataset: { field: spec.name } },
    h('label', { for: id }, spec.label),
    input,
    spec.help && h('div', { class: 'help', id: `${id}-help` }, spec.help),
    h('div', { class: 'error', role: 'alert' }));
}

/// Values of a form's named inputs: checkboxes as booleans, the rest as strings.
export function values(form) {
  const out = {};
  for (const el of form.querySelectorAll('[name]')) {
    out[el.name] = el.type === 'checkbox' ? el.checked : el.value;
  }
  return out;
}

/// Puts an ApiError's field messages next to their inputs (matching the longest
/// field path prefix), the rest in the form's error box.
export function showErrors(form, err) {
  clearErrors(form);
  const box = form.querySelector('.form-error');
  const fields = [...form.querySelectorAll('[data-field]')];
  const leftover = [];
  for (const e of err.errors || []) {
    const path = String(e.field || '');
    const target = fields
      .filter((f) => path === f.dataset.field || path.startsWith(`${f.dataset.field}.`)
        || path.startsWith(`${f.dataset.field}[`)
        || (f.dataset.alias || '').split(' ').includes(path))
      .sort((a, b) => b.dataset.field.length - a.dataset.field.length)[0];
    if (target) {
      target.classList.add('invalid');
      const slot = target.querySelector('.error');
      slot.textContent = slot.textContent ? `${slot.textContent}; ${e.message}` : e.message;
    } else {
      leftover.push(e.field ? `${e.field}: ${e.message}` : e.message);
    }
  }
  if (!err.errors || !err.errors.length) leftover.push(err.message);
  if (box) box.textContent = leftover.join(' · ');
  const first = form.querySelector('.invalid input, .invalid select, .invalid textarea');
  if (first) first.focus();
}

export function clearErrors(form) {
  for (const f of form.querySelectorAll('.invalid')) f.classList.remove('invalid');
  for (const e of form.querySelectorAll('.field .error')) e.textContent = '';
  const box = form.querySelector('.form-error');
  if (box) box.textContent = '';
}

/// A modal dialog; resolves when closed. `build(close)` returns the body; actions
/// are footer buttons.
export function dialog(title, body, actions = []) {
  const dlg = h('dialog', { 'aria-label': title });
  const close = () => { dlg.close(); };
  mount(dlg,
    h('div', { class: 'dialog-head' }, h('h2', {}, title),
      h('button', { class: 'small', type: 'button', 'aria-label': 'Close', onclick: close }, '×')),
    h('div', { class: 'dialog-body' }, body),
    actions.length ? h('div', { class: 'dialog-foot' }, actions) : null);
  dlg.addEventListener('close', () => dlg.remove());
  document.body.append(dlg);
  dlg.showModal();
  return { el: dlg, close };
}

/// Asks before something irreversible; resolves true when confirmed.
export function confirm(message, { action = 'Confirm', danger = true } = {}) {
  return new Promise((resolve) => {
    let answer = false;
    const yes = h('button', { type: 'button', class: danger ? 'danger solid' : 'primary',
      onclick: () => { answer = true; d.close(); } }, action);
    const d = dialog('Please confirm', h('p', {}, message),
      [h('button', { type: 'button', onclick: () => d.close() }, 'Cancel'), yes]);
    d.el.addEventListener('close', () => resolve(answer));
    yes.focus();
  });
}

export function toast(message, kind = '') {
  const t = h('div', { class: `toast ${kind}` }, message);
  document.getElementById('toasts').append(t);
  setTimeout(() => t.remove(), kind === 'bad' ? 8000 : 4000);
}

/// Runs an action from a button, reporting failures as a toast.
export async function attempt(fn, okMessage) {
  try {
    const r = await fn();
    if (okMessage) toast(okMessage);
    return r;
  } catch (e) {
    toast(e.message || String(e), 'bad');
    return undefined;
  }
}

export function time(value) {
  if (!value) return '—';
  const d = new Date(value);
  return h('time', { datetime: d.toISOString(), title: d.toISOString() }, ago(d));
}

export function ago(d) {
  const s = Math.round((Date.now() - d.getTime()) / 1000);
  if (s < 0) return `in ${human(-s)}`;
  if (s < 5) return 'just now';
  return `${human(s)} ago`;
}

function human(s) {
  if (s < 60) return `${s}s`;
  if (s < 3600) return `${Math.floor(s / 60)}m`;
  if (s < 86400) return `${Math.floor(s / 3600)}h`;
  return `${Math.floor(s / 86400)}d`;
}

export function num(v, digits = 0) {
  if (v === null || v === undefined || Number.isNaN(v)) return '—';
  return Number(v).toLocaleString('en-US', { maximumFractionDigits: digits, minimumFractionDigits: digits });
}

export function pct(v) {
  return v === null || v === undefined ? '—' : `${(v * 100).toFixed(1)}%`;
}

export function ms(v) {
  return v === null || v === undefined ? '—' : `${v < 10 ? v.toFixed(2) : v.toFixed(0)} ms`;
}

export function severityBadge(s) {
  return badge(s, s === 'critical' ? 'bad' : s === 'warning' ? 'warn' : 'info');
}

export function stateBadge(state) {
  const kind = { closed: 'ok', healthy: 'ok', valid: 'ok', online: 'ok', open: 'bad', unhealthy: 'bad',
    expired: 'bad', half_open: 'warn', expiring: 'warn', stale: 'warn' }[state] || 'muted';
  return badge(state, kind);
}

/// A target's health as the data plane reports it, truthfully: a target no
/// active check has probed yet is "not probed", not healthy.
export function targetBadge(t, activeCheck) {
  if (t.state === 'healthy' && !t.last_check) {
    const b = badge('not probed', 'muted');
    b.title = activeCheck
      ? 'The first active health check has not run yet.'
      : 'No active health check is configured: only failed requests (passive checks) would mark it down.';
    return b;
  }
  return stateBadge(t.state);
}

/// When an open breaker lets trial requests through. Once that time has passed
/// the breaker only waits for the next request, which is the trial.
export function nextTrial(b) {
  if (b.state === 'open' && b.next_trial_at && Date.parse(b.next_trial_at) <= Date.now()) {
    const d = new Date(b.next_trial_at);
    return h('span', { class: 'muted', title: `Trial requests allowed since ${d.toISOString()}` }, 'waiting for traffic');
  }
  return time(b.next_trial_at);
}

/// A search box that calls `onInput(text)` as the user types.
export function search(placeholder, onInput) {
  return h('input', { type: 'search', placeholder, 'aria-label': placeholder,
    oninput: (e) => onInput(e.target.value.trim().toLowerCase()) });
}

/// A JSON text area's value parsed, or an error naming the field.
export function parseJsonField(text, fieldName) {
  if (!text.trim()) return undefined;
  try {
    return JSON.parse(text);
  } catch (e) {
    const err = new Error(`${fieldName}: not valid JSON (${e.message})`);
    err.errors = [{ field: fieldName, message: `not valid JSON (${e.message})` }];
    throw err;
  }
}
