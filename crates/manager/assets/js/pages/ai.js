// AI (#/ai/...): the providers Fleetgate calls (keys shown masked, each one's
// health), the AI gateway's budgets with what they spent, its usage by key or
// model over a range, the price table requests are metered with (built-in list
// prices and operators' overrides), and agents (#/ai/agents, in agents.js).
// Viewers see everything; the forms and buttons are for the roles the API
// lets change things (admins for providers, budgets and prices).

import { get, post, put, del, enc } from '../api.js';
import { h, mount, table, field, values, badge, time, num, ms, toast, attempt, confirm } from '../ui.js';
import { formDialog, fieldError, tabs, stack, segmented, etagOf } from '../widgets.js';
import { renderAgents, renderAgent } from './agents.js';

const TABS = [
  ['providers', 'Providers'],
  ['budgets', 'Budgets'],
  ['usage', 'Usage'],
  ['prices', 'Prices'],
  ['agents', 'Agents'],
];

export async function render(main, ctx, params) {
  const tab = TABS.some(([id]) => id === params[0]) ? params[0] : 'providers';
  const body = h('div', { id: `ai-tab-${tab}` });
  mount(main,
    h('div', { class: 'toolbar' }, h('h1', { class: 'grow' }, 'AI')),
    tabs(TABS.map(([id, label]) => ({ id, label, href: `#/ai/${id}` })), tab, 'AI sections'),
    body);
  if (tab === 'budgets') return renderBudgets(body, ctx);
  if (tab === 'usage') return renderUsage(body, ctx);
  if (tab === 'prices') return renderPrices(body, ctx);
  if (tab === 'agents') return params[1] ? renderAgent(body, ctx, params[1]) : renderAgents(body, ctx);
  return renderProviders(body, ctx);
}

/// USD with six decimals shown with as few as make sense ("0.002100" → "$0.0021").
export function usd(v) {
  if (v === null || v === undefined || v === '') return '—';
  const [whole, frac = ''] = String(v).split('.');
  const trimmed = frac.replace(/0+$/, '');
  return `$${whole}.${trimmed.length < 2 ? trimmed.padEnd(2, '0') : trimmed}`;
}

// ---------------------------------------------------------------- providers

const KINDS = [['openai', 'OpenAI'], ['anthropic', 'Anthropic'], ['gemini', 'Google Gemini'],
  ['openai_compatible', 'OpenAI-compatible (any base URL)']];

function healthBadge(hl) {
  if (!hl) return badge('checking…', 'muted');
  const kind = { ok: 'ok', error: 'bad', disabled: 'muted', unconfigured: 'warn' }[hl.status] || 'muted';
  const text = hl.status === 'ok' ? `ok · ${ms(hl.latency_ms)}` : hl.status;
  const b = badge(text, kind);
  if (hl.error) b.title = `${hl.code || ''} ${hl.error}`.trim();
  return h('span', {}, b, hl.status === 'error' && hl.error
    ? h('div', { class: 'muted small wrap' }, `${hl.code ? `${hl.code}: ` : ''}${hl.error}`) : null);
}

function providerDialog(p) {
  const fields = [
    field({ name: 'name', label: 'Name', required: true, value: p ? p.name : '',
      help: 'Unique; routes of type ai and agents name the provider by it.' }),
    field({ name: 'kind', label: 'Kind', type: 'select', options: KINDS, value: p ? p.kind : 'openai_compatible' }),
    field({ name: 'base_url', label: 'Base URL', value: p ? p.base_url || '' : '', placeholder: 'http://127.0.0.1:11434/v1',
      help: 'Required for OpenAI-compatible servers; the vendor\'s endpoint is used when left empty for the others.' }),
    field({ name: 'api_key', label: 'API key', type: 'password', autocomplete: 'new-password',
      placeholder: p && p.api_key_set ? `unchanged (${p.api_key_masked})` : '',
      help: 'Stored encrypted and never shown again; only a masked hint is kept.' }),
    field({ name: 'default_model', label: 'Default model', value: p ? p.default_model : '',
      placeholder: 'gpt-4o-mini', help: 'Asked for when a request names no model (required for OpenAI-compatible servers).' }),
    field({ name: 'enabled', label: 'Enabled', type: 'checkbox', value: p ? p.enabled : true }),
    field({ name: 'is_default', label: 'Default provider', type: 'checkbox', value: p ? p.is_default : false,
      help: 'Used when neither the request nor the caller\'s preferences name a provider.' }),
  ];
  if (p && p.api_key_set) fields.splice(4, 0, field({ name: 'remove_key', label: 'Remove the stored key', type: 'checkbox' }));
  return formDialog(p ? `Edit provider ${p.name}` : 'Add an AI provider', fields, (form) => {
    const v = values(form);
    const body = { name: v.name.trim(), kind: v.kind, enabled: v.enabled, is_default: v.is_default };
    const url = v.base_url.trim();
    if (url) body.base_url = url;
    else if (p) body.base_url = null;
    if (v.default_model.trim()) body.default_model = v.default_model.trim();
    if (v.api_key) body.api_key = v.api_key;
    else if (v.remove_key) body.api_key = null;
    return p ? put(`/api/v1/ai/providers/${enc(p.id)}`, body, { etag: etagOf(p.version) }) : post('/api/v1/ai/providers', body);
  }, { submit: p ? 'Save' : 'Add provider' });
}

async function renderProviders(box, ctx) {
  const admin = ctx.canEdit && ctx.atLeast('admin');
  const list = h('div', { class: 'table-wrap', id: 'ai-providers' });
  const healthLine = h('p', { class: 'muted', id: 'ai-health', 'aria-live': 'polite' });
  let health = {};

  async function load() {
    const r = await get('/api/v1/ai/providers');
    const cols = [
      { label: 'Name', render: (p) => [h('strong', {}, p.name), p.is_default ? [' ', badge('default', 'ok')] : null] },
      { label: 'Kind', key: 'kind' },
      { label: 'Endpoint', class: 'hide-narrow', render: (p) => h('code', { class: 'wrap' }, p.endpoint || '—') },
      { label: 'Key', render: (p) => (p.api_key_set ? h('code', {}, p.api_key_masked) : h('span', { class: 'muted' }, 'none')) },
      { label: 'Model', render: (p) => p.default_model || '—' },
      { label: 'State', render: (p) => (p.enabled ? badge('enabled', 'ok') : badge('disabled', 'muted')) },
      { label: 'Health', render: (p) => h('span', { dataset: { health: p.id } }, healthBadge(health[p.id])) },
    ];
    if (admin) {
      cols.push({ label: 'Actions', class: 'actions', render: (p) => [
        h('button', { type: 'button', class: 'small', 'aria-label': `Edit ${p.name}`,
          onclick: async () => { if (await providerDialog(p)) { toast('Provider saved.'); await load(); check(); } } }, 'Edit'),
        ' ',
        h('button', { type: 'button', class: 'small danger', 'aria-label': `Delete ${p.name}`, onclick: async () => {
          if (!await confirm(`Delete provider ${p.name}? Routes and agents that name it stop working.`, { action: 'Delete' })) return;
          if (await attempt(() => del(`/api/v1/ai/providers/${enc(p.id)}`), 'Provider deleted.') !== undefined) await load();
        } }, 'Delete')] });
    }
    mount(list, stack(table(cols, r.items, {
      empty: 'No AI provider yet. Add one: OpenAI, Anthropic, Gemini, or any OpenAI-compatible server.',
      rowAttrs: (p) => ({ dataset: { provider: p.name } }) })));
  }

  async function check() {
    healthLine.textContent = 'Checking each provider…';
    try {
      const r = await get('/api/v1/ai/health?timeout_ms=3000');
      health = Object.fromEntries(r.providers.map((p) => [p.id, p]));
      mount(healthLine, `Health: ${r.status}, checked `, time(r.checked_at), '.');
    } catch (e) {
      healthLine.textContent = `Health could not be checked: ${e.message}`;
    }
    for (const el of list.querySelectorAll('[data-health]')) mount(el, healthBadge(health[el.dataset.health]));
  }

  mount(box,
    h('div', { class: 'toolbar' },
      h('p', { class: 'muted grow' }, 'The model providers Fleetgate calls for AI routes, agents and AI assistance. Keys are stored encrypted.'),
      h('button', { type: 'button', onclick: check }, 'Check health'),
      admin ? h('button', { type: 'button', class: 'primary', id: 'add-provider', onclick: async () => {
        if (await providerDialog(null)) { toast('Provider added.'); await load(); check(); }
      } }, 'Add provider') : null),
    healthLine,
    h('section', { class: 'panel' }, list));
  await load();
  check();
}

// ---------------------------------------------------------------- budgets

const PERIODS = ['hourly', 'daily', 'weekly', 'monthly'];
const ACTIONS = [['block', 'block: refuse what does not fit'], ['throttle', 'throttle: one at a time past the threshold'],
  ['alert_only', 'alert only: never refuse']];

function meter(spent, limit) {
  const share = limit > 0 ? Math.min(1, spent / limit) : 0;
  const fill = h('span', { class: 'fill' });
  fill.style.width = `${Math.round(share * 100)}%`;
  return h('span', { class: `meter${share >= 1 ? ' over' : ''}`, role: 'img', 'aria-label': `${Math.round(share * 100)}% spent` }, fill);
}

async function budgetDialog(b) {
  let keys = [];
  try { keys = (await get('/api/v1/api-keys?limit=200')).items; } catch { /* listed when allowed */ }
  const fields = [
    field({ name: 'name', label: 'Name', required: true, value: b ? b.name : '',
      help: 'Letters, digits, _ - . (routes name budgets by it in ai.budgets).' }),
    field({ name: 'period', label: 'Period', type: 'select', options: PERIODS, value: b ? b.period : 'monthly' }),
    field({ name: 'limit_usd', label: 'Limit (USD)', required: true, value: b ? b.limit_usd.replace(/\.?0+$/, '') : '',
      placeholder: '50.00', help: 'At most six decimals.' }),
    field({ name: 'alert_threshold', label: 'Alert at (share of the limit)', value: b ? String(b.alert_threshold) : '0.8',
      help: 'A fraction (0.8) or a percentage (80): an ai.budget.threshold event is raised there.' }),
    field({ name: 'action_on_exceed', label: 'On exceed', type: 'select', options: ACTIONS, value: b ? b.action_on_exceed : 'block' }),
    field({ name: 'api_key_id', label: 'Only this API key', type: 'select', value: b ? b.api_key_id || '' : '',
      options: [['', 'every caller'], ...keys.map((k) => [k.id, `${k.name} (${k.prefix || k.id})`])] }),
    field({ name: 'description', label: 'Description', type: 'textarea', rows: 2, value: b ? b.description : '' }),
  ];
  return formDialog(b ? `Edit budget ${b.name}` : 'New budget', fields, (form) => {
    const v = values(form);
    const threshold = Number(v.alert_threshold);
    if (v.alert_threshold.trim() === '' || !Number.isFinite(threshold)) throw fieldError('alert_threshold', 'must be a number such as 0.8');
    const body = { name: v.name.trim(), period: v.period, limit_usd: v.limit_usd.trim(), alert_threshold: threshold,
      action_on_exceed: v.action_on_exceed, description: v.description };
    if (v.api_key_id) body.api_key_id = v.api_key_id;
    return b ? put(`/api/v1/ai/budgets/${enc(b.id)}`, body, { etag: etagOf(b.version) }) : post('/api/v1/ai/budgets', body);
  }, { submit: b ? 'Save' : 'Create budget' });
}

async function renderBudgets(box, ctx) {
  const admin = ctx.canEdit && ctx.atLeast('admin');
  const list = h('div', { class: 'table-wrap', id: 'ai-budgets' });
  async function load() {
    const r = await get('/api/v1/ai/budgets');
    const cols = [
      { label: 'Name', render: (b) => [h('strong', {}, b.name), b.description ? h('div', { class: 'muted small' }, b.description) : null] },
      { label: 'Period', key: 'period' },
      { label: 'Spent', render: (b) => h('span', { class: 'meter-cell' }, meter(b.spent_micros, b.limit_micros),
        ` ${usd(b.spent_usd)} of ${usd(b.limit_usd)}`) },
      { label: 'Left', render: (b) => usd(b.remaining_usd) },
      { label: 'Resets', render: (b) => time(b.resets_at) },
      { label: 'On exceed', class: 'hide-narrow', render: (b) => badge(b.action_on_exceed, b.action_on_exceed === 'block' ? 'warn' : 'muted') },
      { label: 'Alert at', class: 'hide-narrow', render: (b) => `${Math.round(b.alert_threshold * 100)}%` },
    ];
    if (admin) {
      cols.push({ label: 'Actions', class: 'actions', render: (b) => [
        h('button', { type: 'button', class: 'small', 'aria-label': `Edit ${b.name}`,
          onclick: async () => { if (await budgetDialog(b)) { toast('Budget saved.'); load(); } } }, 'Edit'),
        ' ',
        h('button', { type: 'button', class: 'small danger', 'aria-label': `Delete ${b.name}`, onclick: async () => {
          if (!await confirm(`Delete budget ${b.name}? Routes naming it refuse requests until it exists again.`, { action: 'Delete' })) return;
          if (await attempt(() => del(`/api/v1/ai/budgets/${enc(b.id)}`), 'Budget deleted.') !== undefined) load();
        } }, 'Delete')] });
    }
    mount(list, stack(table(cols, r.items, { empty: 'No budgets yet. A budget caps what ai routes spend per period.',
      rowAttrs: (b) => ({ dataset: { budget: b.name } }) })));
  }
  mount(box,
    h('div', { class: 'toolbar' },
      h('p', { class: 'muted grow' }, 'Caps on what the AI gateway spends per period. Each request reserves its worst-case cost before it is sent.'),
      admin ? h('button', { type: 'button', class: 'primary', id: 'new-budget', onclick: async () => {
        if (await budgetDialog(null)) { toast('Budget created.'); load(); }
      } }, 'New budget') : null),
    h('section', { class: 'panel' }, list));
  await load();
  // Live: what the budgets spent, read again every 10 s unless a dialog is open.
  const timer = setInterval(() => {
    if (!document.querySelector('dialog[open]')) load().catch(() => {});
  }, 10_000);
  return () => clearInterval(timer);
}

// ---------------------------------------------------------------- usage

const RANGES = [['1h', 'Last hour', 3600_000], ['24h', 'Last 24 h', 86_400_000], ['7d', 'Last 7 days', 7 * 86_400_000],
  ['30d', 'Last 30 days', 30 * 86_400_000]];
const GROUPS = [['key', 'By API key'], ['model', 'By model'], ['route', 'By route'], ['provider', 'By provider'], ['day', 'By day']];

async function renderUsage(box) {
  let range = '24h';
  let group = 'model';
  const out = h('div', { id: 'ai-usage' });
  async function load() {
    const span = RANGES.find(([id]) => id === range)[2];
    const from = new Date(Date.now() - span).toISOString();
    const r = await get(`/api/v1/ai/usage?from=${enc(from)}&group_by=${group}&limit=20`);
    const t = r.totals;
    const sumsCols = [
      { label: GROUPS.find(([id]) => id === group)[1].replace('By ', ''), render: (s) => h('code', { class: 'wrap' }, s.key || '—') },
      { label: 'Requests', render: (s) => num(s.requests), sort: (s) => s.requests },
      { label: 'Input tokens', render: (s) => num(s.input_tokens), sort: (s) => s.input_tokens },
      { label: 'Output tokens', render: (s) => num(s.output_tokens), sort: (s) => s.output_tokens },
      { label: 'Cost', render: (s) => usd(s.cost_usd), sort: (s) => s.cost_micros },
    ];
    const recentCols = [
      { label: 'When', render: (u) => time(u.at) },
      { label: 'Model', render: (u) => h('code', {}, u.model) },
      { label: 'Tokens in/out', render: (u) => `${num(u.input_tokens)} / ${num(u.output_tokens)}` },
      { label: 'Cost', render: (u) => usd(u.cost_usd) },
      { label: 'Outcome', render: (u) => badge(`${u.outcome} ${u.status}`, u.outcome === 'ok' ? 'ok' : 'warn') },
      { label: 'Latency', class: 'hide-narrow', render: (u) => ms(u.latency_ms) },
    ];
    mount(out,
      h('div', { class: 'grid' },
        stat('Requests', num(t.requests)), stat('Input tokens', num(t.input_tokens)),
        stat('Output tokens', num(t.output_tokens)), stat('Cost', usd(t.cost_usd), 'usage-cost')),
      h('section', { class: 'panel' }, h('h2', {}, GROUPS.find(([id]) => id === group)[1]),
        h('div', { class: 'table-wrap' }, stack(table(sumsCols, r.groups, { empty: 'No requests in this range.' })))),
      h('section', { class: 'panel' }, h('h2', {}, 'Latest requests'),
        h('div', { class: 'table-wrap' }, stack(table(recentCols, r.recent, { empty: 'No requests in this range.' })))));
  }
  mount(box,
    h('div', { class: 'toolbar' },
      segmented('Range', RANGES.map(([id, label]) => [id, label]), range, (v) => { range = v; load(); }),
      segmented('Group', GROUPS, group, (v) => { group = v; load(); })),
    h('p', { class: 'muted' }, 'Tokens and cost of the requests relayed by ai routes, summed by whole hours.'),
    out);
  await load();
}

function stat(label, value, id) {
  return h('div', { class: 'card stat', id }, h('div', { class: 'label muted' }, label), h('div', { class: 'value' }, value));
}

// ---------------------------------------------------------------- prices

const RATES = [['input', 'Input'], ['cached_input', 'Cached input'], ['cache_write_input', 'Cache write'],
  ['output', 'Output'], ['reasoning', 'Reasoning']];

function priceDialog(row) {
  const model = field({ name: 'model', label: 'Model', required: true, value: row ? row.model : '',
    placeholder: 'my-local-model', help: 'As the provider names it; a dated snapshot (gpt-4o-2024-08-06) is priced as its family (gpt-4o).' });
  if (row) model.querySelector('input').readOnly = true;
  const rates = RATES.map(([k, label]) => field({ name: `${k}_usd_per_million`, label: `${label} (USD per million tokens)`,
    value: row ? row[`${k}_usd_per_million`].replace(/\.?0+$/, '') || '0' : '',
    required: k === 'input' || k === 'output',
    help: k === 'input' || k === 'output' ? undefined : `Empty: as ${k === 'reasoning' ? 'output' : 'input'}.` }));
  return formDialog(row ? `Price of ${row.model}` : 'Set a model price', [model, ...rates], (form) => {
    const v = values(form);
    const name = v.model.trim();
    if (!name) throw fieldError('model', 'name the model');
    const body = {};
    for (const [k] of RATES) {
      const x = v[`${k}_usd_per_million`].trim();
      if (x !== '') body[`${k}_usd_per_million`] = x;
    }
    if (row && row.tiers.length) {
      body.tiers = row.tiers.map((t) => {
        const tier = { above_input_tokens: t.above_input_tokens };
        for (const [k] of RATES) tier[`${k}_usd_per_million`] = t[`${k}_usd_per_million`];
        return tier;
      });
    }
    return put(`/api/v1/ai/prices/${enc(name)}`, body);
  }, { submit: 'Save price',
    intro: 'An override replaces the built-in price of the model (or prices a model Fleetgate does not know) from the next request and agent run.' });
}

async function renderPrices(box, ctx) {
  const admin = ctx.canEdit && ctx.atLeast('admin');
  const list = h('div', { class: 'table-wrap', id: 'ai-prices' });
  let filter = '';
  let rows = [];
  function draw() {
    const shown = rows.filter((r) => r.model.includes(filter.toLowerCase()));
    const cols = [
      { label: 'Model', render: (r) => h('code', {}, r.model), sort: (r) => r.model },
      { label: 'Source', render: (r) => (r.source === 'override'
        ? badge(r.replaces_builtin ? 'override (replaces built-in)' : 'override', 'warn') : badge('built-in', 'muted')) },
      { label: 'Input', render: (r) => usd(r.input_usd_per_million), sort: (r) => Number(r.input_usd_per_million) },
      { label: 'Cached input', class: 'hide-narrow', render: (r) => usd(r.cached_input_usd_per_million) },
      { label: 'Output', render: (r) => usd(r.output_usd_per_million), sort: (r) => Number(r.output_usd_per_million) },
      { label: 'Long prompts', class: 'hide-narrow', render: (r) => (r.tiers.length
        ? r.tiers.map((t) => h('div', { class: 'small' }, `above ${num(t.above_input_tokens)}: ${usd(t.input_usd_per_million)} / ${usd(t.output_usd_per_million)}`))
        : '—') },
    ];
    if (admin) {
      cols.push({ label: 'Actions', class: 'actions', render: (r) => [
        h('button', { type: 'button', class: 'small', 'aria-label': `Set the price of ${r.model}`,
          onclick: async () => { if (await priceDialog(r)) { toast('Price saved.'); load(); } } }, r.source === 'override' ? 'Edit' : 'Override'),
        r.source === 'override' ? [' ', h('button', { type: 'button', class: 'small danger', 'aria-label': `Drop the override of ${r.model}`,
          onclick: async () => {
            if (!await confirm(`Drop the price override of ${r.model}?${r.replaces_builtin ? ' The built-in price holds again.' : ' The model has no price again.'}`, { action: 'Drop' })) return;
            if (await attempt(() => del(`/api/v1/ai/prices/${enc(r.model)}`), 'Override dropped.') !== undefined) load();
          } }, 'Drop')] : null] });
    }
    mount(list, stack(table(cols, shown, { empty: 'No model matches.', rowAttrs: (r) => ({ dataset: { model: r.model } }) })));
  }
  async function load() {
    rows = (await get('/api/v1/ai/prices')).items;
    draw();
  }
  const search = h('input', { type: 'search', placeholder: 'Filter models', 'aria-label': 'Filter models',
    oninput: (ev) => { filter = ev.target.value.trim(); draw(); } });
  mount(box,
    h('div', { class: 'toolbar' },
      h('p', { class: 'muted grow' }, 'What tokens cost, in USD per million: requests through ai routes and agent runs are priced with this table.'),
      search,
      admin ? h('button', { type: 'button', class: 'primary', id: 'new-price', onclick: async () => {
        if (await priceDialog(null)) { toast('Price saved.'); load(); }
      } }, 'Set a price') : null),
    h('section', { class: 'panel' }, list));
  await load();
}
