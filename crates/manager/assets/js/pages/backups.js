// Backup & restore (#/backups, admins): consistent backups of the whole store
// (create, list, download), and the configuration as one document: exported to a
// file, or imported from one after a dry run shows what it would change.

import { api, get, post, enc } from '../api.js';
import { h, mount, table, field, values, time, num, toast, confirm, showErrors, clearErrors } from '../ui.js';
import { formDialog, stack } from '../widgets.js';
import { pointerList, summarize, summaryList } from './revisions.js';

function size(bytes) {
  if (bytes >= 1 << 20) return `${(bytes / (1 << 20)).toFixed(1)} MiB`;
  if (bytes >= 1 << 10) return `${(bytes / (1 << 10)).toFixed(1)} KiB`;
  return `${bytes} B`;
}

/// Offers `blob` to the browser as a download named `name`.
function saveAs(blob, name) {
  const url = URL.createObjectURL(blob);
  const a = h('a', { href: url, download: name, hidden: true });
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10_000);
}

export async function render(main) {
  const backupsBox = h('div', { class: 'table-wrap', id: 'backups' });

  async function loadBackups() {
    const r = await get('/api/v1/settings/backups');
    mount(backupsBox, stack(table([
      { label: 'Name', render: (b) => h('strong', {}, b.name) },
      { label: 'File', class: 'hide-narrow', render: (b) => h('code', {}, b.file) },
      { label: 'Size', class: 'num', render: (b) => size(b.size_bytes) },
      { label: 'Taken', render: (b) => time(b.created_at) },
      { label: 'Actions', class: 'actions', render: (b) => h('a', {
        class: 'button small', href: `/api/v1/settings/backups/${enc(b.name)}`, download: b.file,
        'aria-label': `Download backup ${b.name}` }, 'Download') },
    ], r.items, { empty: 'No backups yet.', rowAttrs: (b) => ({ dataset: { name: b.name } }) })));
  }

  async function createBackup() {
    const done = await formDialog('Take a backup', [
      field({ name: 'name', label: 'Name', placeholder: 'before-upgrade',
        help: 'Optional: 1 to 64 letters, digits, _ - and .; fleetgate-<time> otherwise.' }),
    ], (form) => {
      const v = values(form);
      return post('/api/v1/settings/backup', v.name ? { name: v.name } : {});
    }, { submit: 'Take backup', intro: 'A consistent copy of the whole store (configuration, users, keys, events), '
      + 'written under the data directory\'s backups/ folder. Secrets in it stay sealed.' });
    if (done) { toast(`Backup ${done.name} written (${size(done.size_bytes)}).`); await loadBackups(); }
  }

  async function exportConfig() {
    const r = await api('GET', '/api/v1/export', undefined, { raw: true });
    const blob = await r.blob();
    const stamp = new Date().toISOString().replace(/[-:]/g, '').slice(0, 15);
    saveAs(blob, `fleetgate-config-${stamp}.json`);
    toast('Configuration exported.');
  }

  // ------------------------------------------------------------ import
  const fileInput = h('input', { type: 'file', id: 'import-file', accept: 'application/json,.json' });
  const text = h('textarea', { id: 'import-text', name: 'document', rows: 8, spellcheck: 'false',
    placeholder: '{"format_version": 1, "settings": {…}, "upstreams": […], "routes": […]}' });
  const preview = h('div', { id: 'import-preview', 'aria-live': 'polite' });
  const applyBtn = h('button', { type: 'button', class: 'danger', id: 'import-apply', disabled: true }, 'Import');
  const importForm = h('form', { class: 'import-form', 'aria-label': 'Import a configuration', novalidate: true },
    h('div', { class: 'form-error', role: 'alert' }),
    h('div', { class: 'field wide', dataset: { field: 'file' } },
      h('label', { for: 'import-file' }, 'Configuration file'), fileInput,
      h('div', { class: 'help' }, 'A document exported from Fleetgate (or written by hand), JSON.'),
      h('div', { class: 'error' })),
    h('div', { class: 'field wide', dataset: { field: 'document' } },
      h('label', { for: 'import-text' }, 'Or paste it'), text, h('div', { class: 'error' })),
    h('div', { class: 'form-actions' },
      h('button', { type: 'submit', class: 'primary', id: 'import-preview-button' }, 'Preview changes'), applyBtn),
    preview);
  let checked = null;

  fileInput.addEventListener('change', async () => {
    const f = fileInput.files && fileInput.files[0];
    if (!f) return;
    text.value = await f.text();
    checked = null;
    applyBtn.disabled = true;
    mount(preview);
  });
  text.addEventListener('input', () => { checked = null; applyBtn.disabled = true; });

  function parse() {
    try {
      return JSON.parse(text.value);
    } catch (e) {
      const err = new Error(`The document is not JSON: ${e.message}`);
      err.errors = [{ field: 'document', message: `not JSON: ${e.message}` }];
      throw err;
    }
  }

  importForm.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    clearErrors(importForm);
    checked = null;
    applyBtn.disabled = true;
    mount(preview, h('p', { class: 'muted' }, 'Checking…'));
    try {
      const doc = parse();
      const [r, current] = await Promise.all([post('/api/v1/import?dry_run=true', doc), get('/api/v1/export')]);
      const items = summarize(current, doc);
      mount(preview,
        h('h3', {}, r.changes.length ? `${num(r.changes.length)} change${r.changes.length === 1 ? '' : 's'} would be made` : 'Nothing would change'),
        summaryList(items, { verb: 'future' }),
        r.changes.length ? h('details', { class: 'raw-changes' }, h('summary', {}, 'As JSON Pointers'),
          pointerList(r.changes, 100)) : null);
      checked = { doc, changes: r.changes.length };
      applyBtn.disabled = r.changes.length === 0;
    } catch (e) {
      mount(preview);
      showErrors(importForm, e);
    }
  });

  applyBtn.addEventListener('click', async () => {
    if (!checked) return;
    if (!await confirm(`Import this configuration? It replaces the live routes, upstreams and settings in one revision (${num(checked.changes)} changes).`,
      { action: 'Import' })) return;
    clearErrors(importForm);
    try {
      const r = await post('/api/v1/import', checked.doc);
      checked = null;
      applyBtn.disabled = true;
      mount(preview, r.revision
        ? h('p', {}, 'Imported as ', h('a', { href: `#/revisions/${r.revision}`, id: 'import-revision' }, `revision #${r.revision}`),
          ` (${num(r.changes.length)} changes).`)
        : h('p', {}, 'Nothing differed; no revision was made.'));
      toast(r.revision ? `Imported as revision #${r.revision}.` : 'Nothing differed.');
    } catch (e) {
      showErrors(importForm, e);
    }
  });

  mount(main,
    h('div', { class: 'toolbar' }, h('h1', { class: 'grow' }, 'Backup & restore')),
    h('section', { class: 'panel' },
      h('div', { class: 'panel-head' }, h('h2', {}, 'Backups'),
        h('button', { type: 'button', class: 'primary', id: 'new-backup', onclick: createBackup }, 'Take backup')),
      h('p', { class: 'muted' }, 'On SQLite a backup is a complete database file: Fleetgate runs on a copy of it as it is. '
        + 'On PostgreSQL it is a JSON dump of every table.'),
      backupsBox),
    h('section', { class: 'panel' },
      h('div', { class: 'panel-head' }, h('h2', {}, 'Export'),
        h('button', { type: 'button', id: 'export-config', onclick: exportConfig }, 'Download configuration')),
      h('p', { class: 'muted' }, 'Routes, upstreams and settings as one JSON document, the same that import reads.')),
    h('section', { class: 'panel' }, h('h2', {}, 'Import'),
      h('p', { class: 'muted' }, 'Nothing changes until you have seen the changes and pressed Import; the import is one revision, '
        + 'so it can be rolled back like any other.'),
      importForm));
  await loadBackups();
}
