// Certificates (#/certificates): what the gateway's TLS listener serves, by SNI
// name, with status (valid, expiring within 30 days, expired), issuer, expiry and
// the last renewal error; uploads of PEM, replacement, deletion, ACME requests and
// renewals for admins. Private keys are never shown: the API does not return them.

import { api, post, del, enc, getAll, getVersioned } from '../api.js';
import { h, mount, table, field, values, badge, time, toast, attempt, confirm } from '../ui.js';
import { formDialog, stack } from '../widgets.js';

const STATUS = { valid: 'ok', expiring: 'warn', expired: 'bad' };

function statusBadge(c) {
  const left = c.days_left < 0 ? `${-c.days_left} d ago` : `${c.days_left} d left`;
  return h('span', { class: 'cert-status', dataset: { status: c.status } }, badge(c.status, STATUS[c.status] || 'muted'),
    ' ', h('span', { class: 'muted small' }, left));
}

function pemFields(required) {
  return [
    field({ name: 'cert_pem', label: 'Certificate chain (PEM)', type: 'textarea', rows: 6, required,
      placeholder: '-----BEGIN CERTIFICATE-----', help: 'The leaf first, then its intermediates.' }),
    field({ name: 'key_pem', label: 'Private key (PEM)', type: 'textarea', rows: 6, required,
      placeholder: '-----BEGIN PRIVATE KEY-----',
      help: 'PKCS#8, PKCS#1 or SEC1. Stored encrypted and never shown again.' }),
  ];
}

export async function render(main, ctx) {
  const admin = ctx.atLeast('admin');
  const box = h('div', { class: 'table-wrap', id: 'certificates' });

  async function load() {
    const certs = await getAll('/api/v1/certificates');
    const cols = [
      { label: 'Name', sort: (c) => c.name, render: (c) => h('strong', {}, c.name) },
      { label: 'SNI names', render: (c) => (c.sans.length ? c.sans.map((s, i) => [i ? ', ' : '', h('code', {}, s)])
        : h('span', { class: 'muted' }, c.subject)) },
      { label: 'Status', sort: (c) => c.days_left, render: statusBadge },
      { label: 'Expires', class: 'hide-narrow', sort: (c) => Date.parse(c.not_after), render: (c) => h('span', { title: c.not_after }, new Date(c.not_after).toLocaleDateString()) },
      { label: 'Issuer', class: 'hide-narrow', sort: (c) => (c.self_signed ? '' : c.issuer), render: (c) => (c.self_signed ? h('span', { class: 'muted' }, 'self-signed') : c.issuer) },
      { label: 'Source', class: 'hide-narrow', render: (c) => [badge(c.source === 'acme' ? 'ACME' : 'upload', 'muted'),
        c.renew_after ? h('div', { class: 'muted small' }, 'renews from ', time(c.renew_after)) : null] },
      { label: 'Renewal', render: (c) => (c.renewal_error
        ? h('span', { class: 'error-text', title: c.renewal_error_at || '' }, c.renewal_error)
        : h('span', { class: 'muted' }, '—')) },
    ];
    if (admin) {
      cols.push({ label: 'Actions', class: 'actions', render: (c) => [
        c.source === 'acme'
          ? h('button', { type: 'button', class: 'small', 'aria-label': `Renew ${c.name}`, onclick: () => renew(c) }, 'Renew')
          : h('button', { type: 'button', class: 'small', 'aria-label': `Replace ${c.name}`, onclick: () => replace(c) }, 'Replace'),
        ' ',
        h('button', { type: 'button', class: 'small danger', 'aria-label': `Delete ${c.name}`, onclick: () => remove(c) }, 'Delete'),
      ] });
    }
    mount(box, stack(table(cols, certs, {
      empty: 'No certificates yet. The gateway serves HTTPS once one is uploaded or issued.',
      rowAttrs: (c) => ({ dataset: { name: c.name, status: c.status } }),
    })));
  }

  async function upload() {
    const done = await formDialog('Upload a certificate', [
      field({ name: 'name', label: 'Name', required: true, placeholder: 'shop-example-com',
        help: '1 to 64 letters, digits, _ - and .' }),
      ...pemFields(true),
    ], (form) => post('/api/v1/certificates', values(form)), { submit: 'Upload', wide: true });
    if (done) { toast(`Certificate ${done.name} uploaded; it is served for ${done.sans.join(', ') || done.subject}.`); await load(); }
  }

  async function replace(c) {
    const { etag } = await getVersioned(`/api/v1/certificates/${enc(c.name)}`);
    const done = await formDialog(`Replace certificate ${c.name}`, pemFields(true),
      (form) => api('PUT', `/api/v1/certificates/${enc(c.name)}`, values(form), { etag }), { submit: 'Replace', wide: true });
    if (done) { toast(`Certificate ${c.name} replaced.`); await load(); }
  }

  async function request() {
    const done = await formDialog('Request a certificate through ACME', [
      field({ name: 'domains', label: 'Domains', required: true, placeholder: 'shop.example.com, www.shop.example.com',
        help: 'Fully qualified names, separated by commas. Each must reach this gateway on port 80 (HTTP-01).' }),
      field({ name: 'email', label: 'Contact email', type: 'email', help: 'Optional; the acme.email setting otherwise.' }),
      field({ name: 'name', label: 'Name', help: 'Optional; the first domain otherwise.' }),
    ], (form) => {
      const v = values(form);
      const body = { domains: v.domains.split(',').map((d) => d.trim()).filter(Boolean) };
      if (v.email) body.email = v.email;
      if (v.name) body.name = v.name;
      return post('/api/v1/certificates/request', body);
    }, { submit: 'Request', intro: 'The CA is asked now; this takes as long as its validation.' });
    if (done) { toast(`Certificate ${done.name} issued by ${done.issuer}.`); await load(); }
  }

  async function renew(c) {
    const r = await attempt(() => post('/api/v1/certificates/renew', { name: c.name }));
    if (r === undefined) return;
    const failed = (r.results || []).filter((x) => x.error);
    if (failed.length) toast(`Renewal of ${c.name} failed: ${failed[0].error}`, 'bad');
    else toast(`Certificate ${c.name} renewed.`);
    await load();
  }

  async function remove(c) {
    if (!await confirm(`Delete certificate ${c.name}? HTTPS requests for ${c.sans.join(', ') || c.subject} get no certificate from then on.`,
      { action: 'Delete' })) return;
    if (await attempt(() => del(`/api/v1/certificates/${enc(c.name)}`), `Certificate ${c.name} deleted.`) !== undefined) await load();
  }

  mount(main,
    h('div', { class: 'toolbar' }, h('h1', { class: 'grow' }, 'Certificates'),
      admin ? h('button', { type: 'button', id: 'request-certificate', onclick: request }, 'Request through ACME') : null,
      admin ? h('button', { type: 'button', class: 'primary', id: 'upload-certificate', onclick: upload }, 'Upload certificate') : null),
    h('p', { class: 'muted intro' }, 'The certificates the gateway\'s HTTPS listener serves, chosen by the SNI name a client asks for. '
      + 'Expiring means 30 days or less left; ACME certificates renew by themselves from their renewal date.'),
    h('section', { class: 'panel' }, box));
  await load();
}
