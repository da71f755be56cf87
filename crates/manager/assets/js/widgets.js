// Building blocks shared by the operations views (redirects, events, webhooks,
// settings, keys, users): form dialogs, tabs, a pager, filter buttons, a
// shown-once secret with a copy button.

import { ApiError, get } from './api.js';
import { h, mount, dialog, showErrors, clearErrors, toast, stackRow } from './ui.js';

let formSeq = 0;

/// A dialog holding a form. `fields` are elements (from ui.field); `onSubmit(form)`
/// saves and may throw an ApiError, whose field messages are placed next to the
/// inputs. Resolves to onSubmit's result, or undefined when cancelled.
export function formDialog(title, fields, onSubmit, { submit = 'Save', intro, wide = false } = {}) {
  return new Promise((resolve) => {
    const id = `dlg-form-${++formSeq}`;
    let result;
    const save = h('button', { class: 'primary', type: 'submit', form: id }, submit);
    const form = h('form', { id, class: 'dialog-form', novalidate: true },
      intro ? h('p', { class: 'help-text' }, intro) : null,
      h('div', { class: 'form-error', role: 'alert' }),
      fields);
    const d = dialog(title, form, [
      h('button', { type: 'button', onclick: () => d.close() }, 'Cancel'),
      save,
    ]);
    if (wide) d.el.classList.add('wide');
    form.addEventListener('submit', async (ev) => {
      ev.preventDefault();
      clearErrors(form);
      save.disabled = true;
      try {
        result = await onSubmit(form);
        d.close();
      } catch (e) {
        showErrors(form, e);
      } finally {
        save.disabled = false;
      }
    });
    d.el.addEventListener('close', () => resolve(result));
    const first = form.querySelector('input:not([type="hidden"]):not([disabled]), select, textarea');
    if (first) first.focus();
  });
}

/// An error that names one field, for checks done before calling the API.
export function fieldError(field, message) {
  return new ApiError(400, { error: `${field}: ${message}`, details: { field, errors: [{ field, message }] } });
}

/// Tab links addressed by the URL fragment; `current` is the active id.
export function tabs(items, current, label = 'Sections') {
  return h('nav', { class: 'tabs', 'aria-label': label },
    items.map((t) => h('a', {
      href: t.href, id: `tab-${t.id}`,
      'aria-current': t.id === current ? 'page' : undefined,
    }, t.label, t.count ? h('span', { class: 'count' }, String(t.count)) : null)));
}

/// Buttons of which one is pressed (a filter); calls onChange(value).
export function segmented(label, options, value, onChange) {
  const group = h('div', { class: 'segmented', role: 'group', 'aria-label': label });
  const draw = (v) => mount(group, options.map(([val, text]) => h('button', {
    type: 'button', class: 'small', 'aria-pressed': String(val === v), dataset: { value: val },
    onclick: () => { draw(val); onChange(val); },
  }, text)));
  draw(value);
  return group;
}

/// "1–50 of 230" with Previous/Next; calls onPage(offset).
export function pager(total, offset, limit, onPage) {
  if (total <= limit && offset === 0) {
    return h('div', { class: 'pager' }, h('span', { class: 'muted' }, total === 1 ? '1 item' : `${total} items`));
  }
  const last = Math.min(offset + limit, total);
  return h('div', { class: 'pager' },
    h('span', { class: 'muted' }, `${total ? offset + 1 : 0}–${last} of ${total}`),
    h('button', { type: 'button', class: 'small', disabled: offset === 0,
      onclick: () => onPage(Math.max(0, offset - limit)) }, 'Previous'),
    h('button', { type: 'button', class: 'small', disabled: last >= total,
      onclick: () => onPage(offset + limit) }, 'Next'));
}

/// Copies text to the clipboard, falling back to selecting it.
export async function copyText(text, el) {
  try {
    await navigator.clipboard.writeText(text);
    toast('Copied to the clipboard.');
  } catch {
    if (el) {
      el.focus();
      if (el.select) el.select();
    }
    toast('Select the text and copy it with Ctrl+C / ⌘C.');
  }
}

/// A secret shown this once: the value in a read-only input, a copy button and a
/// warning that it cannot be shown again.
export function secretOnce(label, value, warning) {
  const input = h('input', { type: 'text', readonly: true, value, class: 'mono secret-value',
    'aria-label': label, onfocus: (e) => e.target.select() });
  return h('div', { class: 'secret-once', role: 'region', 'aria-label': label },
    h('p', { class: 'warn-text' }, h('strong', {}, 'Copy it now: '), warning),
    h('div', { class: 'copy-row' }, input,
      h('button', { type: 'button', class: 'primary copy', onclick: () => copyText(value, input) }, 'Copy')));
}

/// Shows a shown-once secret in a dialog; resolves when it is closed.
export function showSecret(title, label, value, warning) {
  return new Promise((resolve) => {
    const d = dialog(title, secretOnce(label, value, warning),
      [h('button', { type: 'button', class: 'primary', onclick: () => d.close() }, 'I have stored it')]);
    d.el.classList.add('secret-dialog');
    d.el.addEventListener('close', () => resolve());
    d.el.querySelector('.copy').focus();
  });
}

/// Delays calls until `ms` passed without another.
export function debounce(fn, ms = 250) {
  let t = null;
  const wrapped = (...args) => {
    clearTimeout(t);
    t = setTimeout(() => fn(...args), ms);
  };
  wrapped.cancel = () => clearTimeout(t);
  return wrapped;
}

/// Splits a textarea's value into trimmed, non-empty lines (commas also separate).
export function lines(text, { commas = true } = {}) {
  return String(text || '').split(commas ? /[\n,]/ : /\n/).map((s) => s.trim()).filter(Boolean);
}

/// A labelled read-only fact for detail headers.
export function fact(label, value) {
  return h('div', { class: 'fact' }, h('div', { class: 'label' }, label), h('div', { class: 'value' }, value));
}

/// The version an ETag names, as If-Match wants it.
export const etagOf = (version) => `"${version}"`;

/// Lets a table turn into one card per row at phone width: each cell gets its
/// column's name (shown before it by the CSS of `table.stack`). `el` is the table or
/// the element whose direct children include it.
export function stack(el) {
  const tables = el.tagName === 'TABLE' ? [el] : [...el.children].filter((c) => c.tagName === 'TABLE');
  for (const t of tables) {
    t.classList.add('stack');
    const heads = [...t.querySelectorAll(':scope > thead > tr > th')].map((th) => (
      th.classList.contains('actions') || th.classList.contains('select') ? '' : th.textContent.trim()));
    for (const tr of t.querySelectorAll(':scope > tbody > tr')) stackRow(tr, heads);
  }
  return el;
}

/// One row of a stacked table (also for rows added later).
export { stackRow };

/// A toast after a configuration change, linking the revision it made: the
/// newest revision whose message names `subject` (a route id, an upstream name).
export async function revisionToast(text, subject) {
  let link = null;
  try {
    const r = await get('/api/v1/revisions?limit=5');
    const rev = (r.items || []).find((x) => (x.message || '').includes(subject));
    if (rev) link = h('a', { href: `#/revisions/${rev.number}`, class: 'toast-link' }, `revision #${rev.number}`);
  } catch { /* the toast goes without its link */ }
  toast(link ? h('span', {}, `${text} `, '(', link, ')') : text);
}
