// Webhooks (#/webhooks): the list with create, edit, delete and a test delivery;
// one webhook (#/webhooks/{id}) with its delivery log, every attempt, and redelivery.

import { get, post, put, del, enc } from '../api.js';
import { h, mount, table, field, values, badge, time, num, toast, attempt, confirm } from '../ui.js';
import { formDialog, fieldError, pager, showSecret, lines, fact, etagOf, stack } from '../widgets.js';

const LIMIT = 25;

export async function render(main, ctx, params) {
  if (params[0]) return renderOne(main, ctx, params[0]);
  return renderList(main, ctx);
}

function enabledBadge(w) {
  if (w.enabled) return badge('enabled', 'ok');
  return badge(w.disabled_reason ? 'disabled automatically' : 'disabled', w.disabled_reason ? 'bad' : 'muted');
}

function statusBadge(status) {
  return badge(status, { success: 'ok', failed: 'bad', pending: 'warn' }[status] || 'muted');
}

/// Parses `Name: value` lines into an object, or throws a field error.
function parseHeaders(text) {
  const out = {};
  for (const [i, raw] of String(text).split('\n').entries()) {
    const line = raw.trim();
    if (!line) continue;
    const at = line.indexOf(':');
    if (at < 1) throw fieldError('headers', `line ${i + 1} must be "Name: value"`);
    out[line.slice(0, at).trim()] = line.slice(at + 1).trim();
  }
  return out;
}

function webhookDialog(w) {
  const fields = [
    field({ name: 'url', label: 'URL', required: true, value: w ? w.url : '', type: 'url',
      placeholder: 'https://hooks.example.com/fleetgate',
      help: 'Deliveries are POSTed here as JSON, signed with the secret (X-Webhook-Signature).' }),
    field({ name: 'events', label: 'Events', type: 'textarea', rows: 3, value: w ? w.events.join('\n') : '*',
      help: 'One pattern per line: * for every event, a prefix such as circuit_breaker.*, or an exact type such as health.target_down.' }),
    field({ name: 'secret', label: 'Signing secret', type: 'password', autocomplete: 'new-password',
      placeholder: w ? 'unchanged' : 'generated when left empty',
      help: w ? 'Leave empty to keep the current secret.' : '8 to 256 characters. Leave empty and Fleetgate generates one and shows it once.' }),
    field({ name: 'headers', label: 'Extra headers', type: 'textarea', rows: 3,
      placeholder: 'Authorization: Bearer …',
      help: w && w.headers.length
        ? `Now set: ${w.headers.join(', ')} (values are never shown). Leave empty to keep them; enter lines to replace them all.`
        : 'One "Name: value" per line; values are stored encrypted.' }),
    field({ name: 'enabled', label: 'Enabled', type: 'checkbox', value: w ? w.enabled : true,
      help: w && w.disabled_reason ? `Disabled automatically: ${w.disabled_reason}. Enabling it clears the failure streak.` : undefined }),
  ];
  if (w && w.headers.length) {
    fields.splice(4, 0, field({ name: 'clear_headers', label: 'Remove all extra headers', type: 'checkbox' }));
  }
  return formDialog(w ? 'Edit webhook' : 'New webhook', fields, (form) => {
    const v = values(form);
    const body = { url: v.url.trim(), events: lines(v.events), enabled: v.enabled };
    if (v.secret) body.secret = v.secret;
    const headers = parseHeaders(v.headers);
    if (Object.keys(headers).length) body.headers = headers;
    else if (!w || v.clear_headers) body.headers = {};
    return w ? put(`/api/v1/webhooks/${enc(w.id)}`, body, { etag: etagOf(w.version) }) : post('/api/v1/webhooks', body);
  }, { submit: w ? 'Save' : 'Create webhook' });
}

async function afterCreate(created) {
  if (created.secret) {
    await showSecret('Webhook created', 'Signing secret', created.secret,
      'this signing secret is shown only now. Use it to verify the X-Webhook-Signature of deliveries.');
  } else {
    toast('Webhook created.');
  }
}

async function sendTest(w) {
  const d = await attempt(() => post(`/api/v1/webhooks/${enc(w.id)}/test`));
  if (!d) return null;
  if (d.status === 'success') toast(`Test delivered: HTTP ${d.last_status_code} in ${d.last_latency_ms} ms.`);
  else toast(`Test failed: ${d.last_error || `HTTP ${d.last_status_code}`}`, 'bad');
  return d;
}

async function renderList(main, ctx) {
  const admin = ctx.canEdit && ctx.atLeast('admin');
  const operator = ctx.canEdit && ctx.atLeast('operator');
  const box = h('div', { class: 'table-wrap', id: 'webhooks' });

  async function load() {
    const r = await get('/api/v1/webhooks');
    const cols = [
      { label: 'URL', render: (w) => h('a', { href: `#/webhooks/${enc(w.id)}`, class: 'wrap' }, w.url) },
      { label: 'Events', render: (w) => w.events.map((e) => h('code', { class: 'pattern' }, e)) },
      { label: 'State', render: (w) => enabledBadge(w) },
      { label: 'Failures in a row', class: 'hide-narrow', render: (w) => num(w.consecutive_failures) },
      { label: 'Updated', class: 'hide-narrow', render: (w) => time(w.updated_at) },
    ];
    cols.push({ label: 'Actions', class: 'actions', render: (w) => [
      h('a', { class: 'button small', href: `#/webhooks/${enc(w.id)}`, 'aria-label': `Deliveries of ${w.url}` }, 'Deliveries'),
      operator ? [' ', h('button', { type: 'button', class: 'small', 'aria-label': `Send a test to ${w.url}`,
        onclick: () => sendTest(w) }, 'Send test')] : null,
      admin ? [' ', h('button', { type: 'button', class: 'small', 'aria-label': `Edit ${w.url}`,
        onclick: async () => { if (await webhookDialog(w)) { toast('Webhook saved.'); load(); } } }, 'Edit'),
      ' ', h('button', { type: 'button', class: 'small danger', 'aria-label': `Delete ${w.url}`,
        onclick: () => remove(w, load) }, 'Delete')] : null] });
    mount(box, stack(table(cols, r.items, { empty: 'No webhooks yet. A webhook POSTs each matching event to a URL.' })));
  }

  mount(main,
    h('div', { class: 'toolbar' }, h('h1', { class: 'grow' }, 'Webhooks'),
      admin ? h('button', { type: 'button', class: 'primary', onclick: async () => {
        const created = await webhookDialog(null);
        if (created) { await load(); await afterCreate(created); }
      } }, 'New webhook') : null),
    h('p', { class: 'muted intro' }, 'Events are delivered to each enabled webhook whose patterns match, '
      + 'retried with backoff on failure; a webhook that keeps failing is disabled.'),
    h('section', { class: 'panel' }, box));
  await load();
}

async function remove(w, then) {
  if (!await confirm(`Delete the webhook to ${w.url} and its delivery log?`, { action: 'Delete' })) return;
  if (await attempt(() => del(`/api/v1/webhooks/${enc(w.id)}`), 'Webhook deleted.') !== undefined) then();
}

async function renderOne(main, ctx, id) {
  const admin = ctx.canEdit && ctx.atLeast('admin');
  const operator = ctx.canEdit && ctx.atLeast('operator');
  const base = `/api/v1/webhooks/${enc(id)}`;
  let w = await get(base);
  let offset = 0;
  let timer = null;
  let alive = true;
  const head = h('div');
  const log = h('div', { class: 'table-wrap', id: 'deliveries' });
  const pagerBox = h('div');

  function drawHead() {
    mount(head,
      h('div', { class: 'toolbar' },
        h('h1', { class: 'grow' }, h('a', { href: '#/webhooks', class: 'crumb' }, 'Webhooks'), ' / ',
          h('span', { class: 'wrap' }, w.url)),
        operator ? h('button', { type: 'button', class: 'primary', id: 'send-test', onclick: async () => {
          if (await sendTest(w)) { offset = 0; await loadLog(); w = await get(base); drawHead(); }
        } }, 'Send test') : null,
        admin ? h('button', { type: 'button', onclick: async () => {
          if (await webhookDialog(w)) { toast('Webhook saved.'); w = await get(base); drawHead(); }
        } }, 'Edit') : null,
        admin ? h('button', { type: 'button', class: 'danger', onclick: () => remove(w, () => { location.hash = '#/webhooks'; }) },
          'Delete') : null),
      h('div', { class: 'facts' },
        fact('State', enabledBadge(w)),
        fact('Events', w.events.map((e) => h('code', { class: 'pattern' }, e))),
        fact('Extra headers', w.headers.length ? w.headers.join(', ') : 'none'),
        fact('Failures in a row', num(w.consecutive_failures))),
      w.disabled_reason ? h('div', { class: 'form-error', role: 'alert' }, `Disabled automatically: ${w.disabled_reason}`) : null);
  }

  function attemptsOf(d) {
    if (!d.attempt_log.length) return h('span', { class: 'muted' }, 'not attempted yet');
    return h('details', {}, h('summary', {}, `${d.attempts} attempt${d.attempts === 1 ? '' : 's'}`),
      h('table', { class: 'attempts' },
        h('thead', {}, h('tr', {}, ['#', 'At', 'Status', 'Latency', 'Error'].map((t) => h('th', { scope: 'col' }, t)))),
        h('tbody', {}, d.attempt_log.map((a) => h('tr', {},
          h('td', {}, String(a.attempt)), h('td', {}, time(a.at)),
          h('td', {}, a.status_code ? String(a.status_code) : '—'),
          h('td', {}, `${a.latency_ms} ms`), h('td', { class: 'wrap' }, a.error || '—'))))));
  }

  async function loadLog() {
    const r = await get(`${base}/deliveries?limit=${LIMIT}&offset=${offset}`);
    if (!alive) return;
    const cols = [
      { label: 'Created', render: (d) => time(d.created_at) },
      { label: 'Event', render: (d) => [h('code', {}, d.type), d.event_id ? h('div', { class: 'muted' }, h('a', { href: `#/events/${encodeURIComponent(d.event_id)}`, 'aria-label': `Event ${d.event_id}` }, `event ${d.event_id}`)) : null] },
      { label: 'Status', render: (d) => statusBadge(d.status) },
      { label: 'HTTP', render: (d) => (d.last_status_code ? String(d.last_status_code) : '—') },
      { label: 'Latency', render: (d) => (d.last_latency_ms !== null && d.last_latency_ms !== undefined ? `${d.last_latency_ms} ms` : '—') },
      { label: 'Error', class: 'wrap', render: (d) => d.last_error || '—' },
      { label: 'Next attempt', render: (d) => (d.next_attempt_at ? time(d.next_attempt_at) : '—') },
      { label: 'Attempts', render: attemptsOf },
    ];
    if (operator) {
      cols.push({ label: 'Actions', class: 'actions', render: (d) => h('button', { type: 'button', class: 'small',
        'aria-label': `Redeliver ${d.id}`, onclick: async () => {
          const r2 = await attempt(() => post(`${base}/deliveries/${enc(d.id)}/redeliver`), 'Queued for redelivery.');
          if (r2) loadLog();
        } }, 'Redeliver') });
    }
    mount(log, stack(table(cols, r.items, {
      empty: 'No deliveries yet. Send a test, or wait for an event that matches.',
      rowAttrs: (d) => ({ dataset: { id: d.id, status: d.status } }),
    })));
    mount(pagerBox, pager(r.total, offset, LIMIT, (o) => { offset = o; loadLog(); }));
    // While deliveries are pending, follow them.
    clearTimeout(timer);
    if (r.items.some((d) => d.status === 'pending')) {
      timer = setTimeout(() => { loadLog().catch(() => {}); }, 3000);
    }
  }

  drawHead();
  mount(main, head,
    h('section', { class: 'panel' },
      h('div', { class: 'panel-head' }, h('h2', { class: 'grow' }, 'Delivery log'),
        h('button', { type: 'button', class: 'small', id: 'refresh-log', onclick: () => loadLog() }, 'Refresh')),
      log, pagerBox));
  await loadLog();
  return () => { alive = false; clearTimeout(timer); };
}
