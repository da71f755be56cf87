// Form building blocks for the configuration editors (routes, upstreams): controls
// bound to a path of the edited object ('rate_limit.max', 'targets[0].url'), read
// back into a copy of it, and sections that can be switched off. Each control's
// wrapper carries the path as data-field, so ui.showErrors places the API's field
// messages next to it.

import { h, showErrors } from './ui.js';
import { lines } from './widgets.js';

let seq = 0;

/// The value at a path such as 'a.b' (arrays are handled by the callers).
export function getPath(obj, path) {
  return path.split('.').reduce((o, k) => (o === null || o === undefined ? undefined : o[k]), obj);
}

export function setPath(obj, path, value) {
  const keys = path.split('.');
  let o = obj;
  for (const k of keys.slice(0, -1)) {
    if (o[k] === null || typeof o[k] !== 'object') o[k] = {};
    o = o[k];
  }
  o[keys[keys.length - 1]] = value;
}

export function clone(v) {
  return v === undefined ? undefined : JSON.parse(JSON.stringify(v));
}

/// A field error shaped like the API's, so showErrors can place it.
export class FieldErrors extends Error {
  constructor(errors) {
    super(errors.length === 1 ? `${errors[0].field}: ${errors[0].message}` : 'Some fields need attention.');
    this.errors = errors;
  }
}

function wrap(spec, id, input, extra) {
  return h('div', { class: `field${spec.wide ? ' wide' : ''}`, dataset: { field: spec.path, ...(spec.alias ? { alias: spec.alias } : {}) } },
    spec.kind === 'bool'
      ? h('label', { class: 'check', for: id }, input, spec.label)
      : h('label', { for: id }, spec.label),
    spec.kind === 'bool' ? null : input,
    extra,
    spec.help && h('div', { class: 'help', id: `${id}-help` }, spec.help),
    h('div', { class: 'error', role: 'alert' }));
}

const METHOD_LIST = ['GET', 'HEAD', 'POST', 'PUT', 'PATCH', 'DELETE', 'OPTIONS', 'TRACE', 'CONNECT'];

/// One control. spec: {path, label, kind, help, placeholder, emptyText (shown
/// when read-only and empty), options, nullable,
/// wide, readonly, list (a datalist id), rows}. kind is one of text, textarea,
/// int, bool, select, list (comma/newline separated), lines (one per line),
/// ints, retry_on, headers ("Name: value" lines), methods, json.
/// Returns {el, path, read(target, errors)}.
export function control(spec, value) {
  const id = `fc${++seq}`;
  // Read-only, an example placeholder could pass for a value: say it is empty instead.
  const placeholder = spec.readonly ? (spec.emptyText ?? '—') : spec.placeholder;
  const common = { id, 'aria-describedby': spec.help ? `${id}-help` : undefined, placeholder,
    readonly: spec.readonly, required: spec.required };
  let input;
  let read;
  switch (spec.kind) {
    case 'bool':
      input = h('input', { ...common, type: 'checkbox', checked: !!value });
      read = () => input.checked;
      break;
    case 'select':
      input = h('select', { ...common, readonly: undefined, disabled: spec.readonly },
        spec.options.map((o) => {
          const [v, label] = Array.isArray(o) ? o : [o, o];
          return h('option', { value: v, selected: String(value ?? '') === String(v) }, label);
        }));
      read = () => input.value;
      break;
    case 'int':
      input = h('input', { ...common, type: 'number', step: 1, min: spec.min, inputmode: 'numeric',
        value: value === null || value === undefined ? '' : String(value) });
      read = (errors) => {
        if (input.validity.badInput) {
          errors.push({ field: spec.path, message: 'must be a whole number' });
          return undefined;
        }
        const t = input.value.trim();
        if (!t) {
          if (spec.nullable) return null;
          errors.push({ field: spec.path, message: 'is required' });
          return undefined;
        }
        const n = Number(t);
        if (!Number.isInteger(n)) {
          errors.push({ field: spec.path, message: 'must be a whole number' });
          return undefined;
        }
        return n;
      };
      break;
    case 'textarea':
    case 'lines':
    case 'headers':
    case 'json': {
      input = h('textarea', { ...common, rows: spec.rows || (spec.kind === 'json' ? 8 : 3), spellcheck: 'false',
        class: spec.kind === 'textarea' ? undefined : 'mono' });
      if (spec.kind === 'lines') input.value = (value || []).join('\n');
      else if (spec.kind === 'headers') input.value = Object.entries(value || {}).map(([k, v]) => `${k}: ${v}`).join('\n');
      else if (spec.kind === 'json') input.value = value === null || value === undefined ? '' : JSON.stringify(value, null, 2);
      else input.value = value ?? '';
      read = (errors) => {
        if (spec.kind === 'lines') return lines(input.value, { commas: false });
        if (spec.kind === 'headers') {
          const out = {};
          for (const line of lines(input.value, { commas: false })) {
            const i = line.indexOf(':');
            if (i <= 0) {
              errors.push({ field: spec.path, message: `"${line}" is not "Name: value"` });
              continue;
            }
            out[line.slice(0, i).trim()] = line.slice(i + 1).trim();
          }
          return out;
        }
        if (spec.kind === 'json') {
          if (!input.value.trim()) return spec.nullable ? null : undefined;
          try { return JSON.parse(input.value); } catch (e) {
            errors.push({ field: spec.path, message: `not valid JSON (${e.message})` });
            return undefined;
          }
        }
        const t = input.value;
        return !t.trim() && spec.nullable ? null : t;
      };
      break;
    }
    case 'methods': {
      const chosen = new Set((value || []).map((m) => m.toUpperCase()));
      const boxes = METHOD_LIST.map((m) => h('input', { type: 'checkbox', value: m, checked: chosen.has(m),
        disabled: spec.readonly, 'aria-label': m }));
      const group = h('div', { class: 'methods', role: 'group', 'aria-labelledby': `${id}-label`, id },
        boxes.map((b) => h('label', { class: 'check method' }, b, b.value)));
      const el = h('div', { class: `field${spec.wide ? ' wide' : ''}`, dataset: { field: spec.path } },
        h('div', { class: 'label', id: `${id}-label` }, spec.label),
        group,
        spec.help && h('div', { class: 'help' }, spec.help),
        h('div', { class: 'error', role: 'alert' }));
      return { el, path: spec.path, spec, read: (target) => setPath(target, spec.path, boxes.filter((b) => b.checked).map((b) => b.value)) };
    }
    default: {
      // text, list, ints, retry_on
      let shown = value;
      if (['list', 'ints', 'retry_on'].includes(spec.kind)) shown = (value || []).join(', ');
      input = h('input', { ...common, type: 'text', value: shown ?? '', autocomplete: 'off', list: spec.list,
        spellcheck: 'false' });
      read = (errors) => {
        const t = input.value.trim();
        if (spec.kind === 'list') return lines(t);
        if (spec.kind === 'ints' || spec.kind === 'retry_on') {
          const out = [];
          for (const item of lines(t)) {
            if (/^\d+$/.test(item)) out.push(Number(item));
            else if (spec.kind === 'retry_on') out.push(item);
            else errors.push({ field: spec.path, message: `"${item}" is not a number` });
          }
          return out;
        }
        return !t && spec.nullable ? null : t;
      };
    }
  }
  if (spec.readonly && input.tagName === 'INPUT' && input.type === 'checkbox') input.disabled = true;
  return {
    el: wrap(spec, id, input),
    input,
    path: spec.path,
    spec,
    read: (target, errors) => {
      const v = read(errors);
      if (v !== undefined) setPath(target, spec.path, v);
      return v;
    },
  };
}

/// A titled group of controls; with `toggle` it has a switch that hides its body
/// when off. Returns {el, controls, on()}.
export function section(title, controls, { toggle, note, id, readonly } = {}) {
  let checkbox = null;
  const body = h('div', { class: 'form-grid section-body' }, controls.map((c) => c.el));
  const head = h('legend', {}, title);
  const el = h('fieldset', { class: 'section', id }, head,
    note && h('p', { class: 'help section-note' }, note));
  if (toggle) {
    const tid = `fc${++seq}`;
    checkbox = h('input', { type: 'checkbox', id: tid, checked: !!toggle.on, disabled: readonly,
      onchange: () => el.classList.toggle('off', !checkbox.checked) });
    el.append(h('div', { class: 'field toggle', dataset: { field: toggle.path || '' } },
      h('label', { class: 'check', for: tid }, checkbox, toggle.label),
      toggle.help && h('div', { class: 'help' }, toggle.help),
      h('div', { class: 'error', role: 'alert' })));
    el.classList.toggle('off', !toggle.on);
  }
  el.append(body);
  return { el, controls, on: () => (checkbox ? checkbox.checked : true), checkbox };
}

/// Reads controls into `target`; collects client-side problems into `errors`.
export function readInto(target, controls, errors) {
  for (const c of controls) c.read(target, errors);
  return target;
}

/// Hides a control's wrapper unless `when()` holds; re-checked on `watch`'s changes.
export function showWhen(ctrl, watch, when) {
  const sync = () => { ctrl.el.hidden = !when(); };
  watch.addEventListener('change', sync);
  watch.addEventListener('input', sync);
  sync();
}

/// 1500 → "1.5 s", 60000 → "1 min", 3600000 → "1 h".
export function duration(msValue) {
  if (msValue === null || msValue === undefined) return '—';
  const units = [[3_600_000, 'h'], [60_000, 'min'], [1000, 's']];
  for (const [size, unit] of units) {
    if (msValue >= size) {
      const v = msValue / size;
      return `${Number.isInteger(v) ? v : v.toFixed(1)} ${unit}`;
    }
  }
  return `${msValue} ms`;
}

/// "Routes / api" above a page title.
export function crumbs(...parts) {
  return h('nav', { class: 'crumbs', 'aria-label': 'Breadcrumb' },
    parts.map((p, i) => [i ? h('span', { 'aria-hidden': 'true' }, ' / ') : null,
      Array.isArray(p) ? h('a', { href: p[1] }, p[0]) : h('span', { 'aria-current': 'page' }, p)]));
}

/// Top-level fields whose values differ between two objects.
export function changedFields(a, b) {
  const keys = new Set([...Object.keys(a || {}), ...Object.keys(b || {})]);
  return [...keys].filter((k) => JSON.stringify(a?.[k]) !== JSON.stringify(b?.[k]));
}

/// A 412 from an update: explains it in the form's error box (with the fields
/// changed meanwhile, when known) and offers to load the current version.
export function showStale(form, what, reload, changed = []) {
  const box = form.querySelector('.form-error');
  box.replaceChildren(
    `This ${what} was changed by someone else after you opened it, so your changes were not saved.`,
    changed.length ? h('span', {}, ' Changed meanwhile: ', changed.map((f, i) => [i ? ', ' : '', h('code', {}, f)]), '.') : '',
    ' ',
    h('button', { type: 'button', class: 'small', onclick: reload }, 'Load the current version'),
    ' (your edits here will be discarded).');
  box.scrollIntoView({ block: 'nearest' });
}

/// showErrors, plus a line at the top of the form when every message went next
/// to a field (which may be scrolled out of view).
export function report(form, err) {
  showErrors(form, err);
  const box = form.querySelector('.form-error');
  const placed = form.querySelectorAll('.field.invalid').length;
  if (box && !box.textContent && placed) {
    box.textContent = placed === 1
      ? 'One field needs attention: see the message next to it.'
      : `${placed} fields need attention: see the messages next to them.`;
  }
}
