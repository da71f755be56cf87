// Settings (#/settings): one form per settings section, built from the settings in
// force and their schema in the OpenAPI document (labels, help, bounds), so a new
// setting shows up here without a dashboard change. A save sends the whole
// settings object with If-Match; field errors are shown next to their inputs.

import { api, get } from '../api.js';
import { h, mount, field, toast, clearErrors, showErrors } from '../ui.js';
import { fieldError } from '../widgets.js';

const SECTION_TITLES = {
  general: ['General', 'How this Fleetgate instance presents itself.'],
  security: ['Security', 'Sign-in sessions and the login failure limit.'],
  api: ['API', 'Limits of the admin API.'],
  audit: ['Audit log', 'How long changes and logins are kept in the audit log.'],
  webhooks: ['Webhooks', 'Delivery retries, automatic disabling and allowed destinations.'],
  redirects: ['Redirects and pages', 'Page size, agent staleness and how agents authenticate.'],
  events: ['Events', 'How many events are kept, and for how long.'],
  metrics: ['Metrics', 'Retention of the stored traffic series.'],
};

// Words kept as they are written when a field name becomes a label.
const WORDS = { ttl: 'TTL', secs: '(seconds)', ms: '(ms)', bytes: '(bytes)', api: 'API', url: 'URL', ip: 'IP', id: 'ID', ids: 'IDs' };

function labelOf(name) {
  const words = name.split('_').map((w) => WORDS[w] || w);
  const text = words.join(' ');
  return text.charAt(0).toUpperCase() + text.slice(1);
}

function titleOf(name) {
  return SECTION_TITLES[name] || [labelOf(name), ''];
}

/// The schema of a section, following `$ref`, `oneOf` and `allOf` wrappers.
function resolve(spec, schema) {
  let s = schema || {};
  for (let i = 0; i < 5; i += 1) {
    if (s.$ref) s = lookup(spec, s.$ref);
    else if (s.oneOf && s.oneOf.length === 1) s = { ...s, ...resolve(spec, s.oneOf[0]), oneOf: undefined };
    else if (s.allOf && s.allOf.length === 1) s = { ...s, ...resolve(spec, s.allOf[0]), allOf: undefined };
    else break;
  }
  return s;
}

function lookup(spec, ref) {
  return ref.replace(/^#\//, '').split('/').reduce((o, k) => (o ? o[k] : undefined), spec) || {};
}

function plain(text) {
  return (text || '').replace(/`([^`]*)`/g, '$1');
}

export async function render(main, ctx) {
  const editable = ctx.canEdit && ctx.atLeast('admin');
  const [first, spec] = await Promise.all([
    api('GET', '/api/v1/settings', undefined, { raw: true }),
    get('/api/v1/openapi.json').catch(() => ({})),
  ]);
  let settings = await first.json();
  let etag = first.headers.get('etag');
  const root = resolve(spec, (((spec.components || {}).schemas) || {}).Settings);
  const props = root.properties || {};

  function sectionForm(name) {
    const schema = resolve(spec, props[name]);
    const fieldsSchema = schema.properties || {};
    const current = settings[name] || {};
    const keys = Object.keys(current);
    for (const k of Object.keys(fieldsSchema)) if (!keys.includes(k)) keys.push(k);
    const [title, intro] = titleOf(name);
    const inputs = keys.map((k) => {
      const s = resolve(spec, fieldsSchema[k]);
      const v = current[k] ?? s.default;
      const path = `${name}.${k}`;
      const help = plain(s.description);
      const kind = s.type || typeof v;
      let f;
      if (kind === 'boolean') {
        f = field({ name: path, label: labelOf(k), type: 'checkbox', value: !!v, help });
      } else if (kind === 'integer' || kind === 'number') {
        f = field({ name: path, label: labelOf(k), type: 'number', value: v, help, min: s.minimum, max: s.maximum,
          step: kind === 'integer' ? 1 : 'any', required: true });
      } else if (kind === 'string' || v === undefined) {
        f = field({ name: path, label: labelOf(k), value: v ?? '', help, required: (s.minLength || 0) > 0 });
      } else {
        // Lists and objects: edited as JSON.
        f = field({ name: path, label: labelOf(k), type: 'textarea', rows: 3, value: JSON.stringify(v, null, 2), help });
        f.dataset.json = 'true';
      }
      f.dataset.kind = kind;
      const input = f.querySelector('input, select, textarea');
      input.disabled = !editable;
      return f;
    });
    const save = editable ? h('button', { type: 'submit', class: 'primary' }, 'Save') : null;
    const status = h('span', { class: 'muted save-status', 'aria-live': 'polite' });
    const form = h('form', { class: 'panel settings-section', id: `settings-${name}`, novalidate: true,
      'aria-labelledby': `settings-${name}-title` },
    h('h2', { id: `settings-${name}-title` }, title),
    intro ? h('p', { class: 'muted' }, intro) : null,
    h('div', { class: 'form-error', role: 'alert' }),
    h('div', { class: 'form-grid' }, inputs),
    editable ? h('div', { class: 'form-actions' }, save, status) : null);

    form.addEventListener('submit', async (ev) => {
      ev.preventDefault();
      clearErrors(form);
      let section;
      try {
        section = readSection(inputs, name);
      } catch (e) {
        showErrors(form, e);
        return;
      }
      save.disabled = true;
      try {
        const r = await api('PUT', '/api/v1/settings', { ...settings, [name]: section }, { raw: true, etag });
        settings = await r.json();
        window.dispatchEvent(new CustomEvent('fg:instance', { detail: settings.general.instance_name }));
        etag = r.headers.get('etag');
        status.textContent = 'Saved.';
        setTimeout(() => { status.textContent = ''; }, 4000);
        toast(`${title} settings saved.`);
      } catch (e) {
        if (e.status === 412) {
          showErrors(form, new Error('Someone else changed the settings meanwhile. Reload the page to see their change, then save again.'));
        } else {
          // Field paths are relative to the settings object: `security.login_window_secs`.
          showErrors(form, e);
        }
      } finally {
        save.disabled = false;
      }
    });
    return form;
  }

  function readSection(inputs, name) {
    const out = {};
    const errors = [];
    for (const f of inputs) {
      const path = f.dataset.field;
      const key = path.slice(name.length + 1);
      const input = f.querySelector('input, select, textarea');
      if (f.dataset.kind === 'boolean') {
        out[key] = input.checked;
      } else if (f.dataset.kind === 'integer' || f.dataset.kind === 'number') {
        if (input.value.trim() === '' || Number.isNaN(Number(input.value))) {
          errors.push({ field: path, message: 'must be a number' });
        } else {
          out[key] = Number(input.value);
        }
      } else if (f.dataset.json) {
        try { out[key] = JSON.parse(input.value); } catch (e) { errors.push({ field: path, message: `not valid JSON (${e.message})` }); }
      } else {
        out[key] = input.value;
      }
    }
    if (errors.length) {
      const e = fieldError(errors[0].field, errors[0].message);
      e.errors = errors;
      throw e;
    }
    return out;
  }

  const order = Object.keys(settings);
  for (const k of Object.keys(props)) if (!order.includes(k)) order.push(k);
  const forms = order.filter((n) => settings[n] && typeof settings[n] === 'object').map(sectionForm);
  mount(main,
    h('div', { class: 'toolbar' }, h('h1', { class: 'grow' }, 'Settings')),
    h('p', { class: 'muted intro' }, editable
      ? 'Settings take effect at once, without a restart, and each save is a configuration revision.'
      : 'Only admins can change settings.'),
    h('nav', { class: 'toc', 'aria-label': 'Settings sections' },
      order.filter((n) => settings[n] && typeof settings[n] === 'object').map((n) => h('a', { href: '#/settings',
        onclick: (e) => {
          e.preventDefault();
          const el = document.getElementById(`settings-${n}`);
          el.scrollIntoView({ block: 'start' });
          const input = el.querySelector('input, select, textarea');
          if (input) input.focus({ preventScroll: true });
        } }, titleOf(n)[0]))),
    forms);
}
