// Agents (#/ai/agents, #/ai/agents/{id}): the list with a create form; one
// agent with its lifecycle (only the transitions the API allows from its
// status are offered), its versions with promote and rollback, a run form,
// and its runs, each with its step trace: every model and tool call with its
// tokens, latency and cost.

import { get, post, put, del, enc } from '../api.js';
import { h, mount, table, field, values, badge, time, num, ms, toast, attempt, confirm, showErrors, clearErrors } from '../ui.js';
import { formDialog, fieldError, stack, fact, lines, etagOf, pager } from '../widgets.js';

const RUNS = 10;

function statusBadge(s) {
  return badge(s, { active: 'ok', testing: 'info', draft: 'muted', suspended: 'warn', archived: 'muted' }[s] || 'muted');
}

function runBadge(s) {
  return badge(s, { succeeded: 'ok', running: 'info', failed: 'bad', max_steps: 'warn', budget_exceeded: 'warn' }[s] || 'muted');
}

/// Micro-USD as dollars with as many decimals as needed (at least two).
function dollars(micros) {
  let t = ((Number(micros) || 0) / 1e6).toFixed(6).replace(/0+$/, '');
  if (t.endsWith('.')) t += '00';
  else if (t.split('.')[1].length < 2) t += '0';
  return `$${t}`;
}

async function agentDialog(a) {
  let providers = [];
  try { providers = (await get('/api/v1/ai/providers')).items; } catch { /* shown as the default only */ }
  const fields = [
    field({ name: 'name', label: 'Name', required: true, value: a ? a.name : '' }),
    field({ name: 'model', label: 'Model', required: true, value: a ? a.model : '', placeholder: 'gpt-4o-mini' }),
    field({ name: 'provider', label: 'Provider', type: 'select', value: a ? a.provider_id || '' : '',
      options: [['', 'the default provider'], ...providers.map((p) => [p.id, `${p.name} (${p.kind})`])] }),
    field({ name: 'system_prompt', label: 'System prompt', type: 'textarea', rows: 4, wide: true, value: a ? a.system_prompt : '' }),
    field({ name: 'tools', label: 'Tools', type: 'textarea', rows: 2, value: a ? a.tools.join('\n') : '',
      help: 'Names of HTTP tools (/api/v1/agent-tools), one per line.' }),
    field({ name: 'max_steps', label: 'Most model calls per run', type: 'number', min: 1, max: 50, value: a ? a.max_steps : 10 }),
    field({ name: 'budget_limit_usd', label: 'Budget (USD per period)', value: a && a.budget ? a.budget.limit_usd.replace(/\.?0+$/, '') : '',
      help: 'Empty: no budget. Runs stop before a model call once the period\'s spend reaches it.' }),
    field({ name: 'budget_period', label: 'Budget period', type: 'select', options: ['day', 'week', 'month'],
      value: a && a.budget ? a.budget.period : 'day' }),
    field({ name: 'tags', label: 'Tags', value: a ? a.tags.join(', ') : '', help: 'Separated by commas.' }),
    field({ name: 'description', label: 'Description', type: 'textarea', rows: 2, value: a ? a.description : '' }),
  ];
  if (a) fields.push(field({ name: 'promote', label: 'Promote the new version at once', type: 'checkbox',
    help: 'A change of model, provider, prompt or tools makes a new version; without this it waits to be promoted.' }));
  return formDialog(a ? `Edit agent ${a.name}` : 'New agent', fields, (form) => {
    const v = values(form);
    const steps = Number(v.max_steps);
    if (!Number.isInteger(steps)) throw fieldError('max_steps', 'must be a whole number from 1 to 50');
    const body = { name: v.name.trim(), model: v.model.trim(), provider: v.provider || null, system_prompt: v.system_prompt,
      tools: lines(v.tools), max_steps: steps, tags: lines(v.tags), description: v.description };
    body.budget = v.budget_limit_usd.trim() ? { period: v.budget_period, limit_usd: v.budget_limit_usd.trim() } : null;
    if (a) body.promote = v.promote;
    return a ? put(`/api/v1/agents/${enc(a.id)}`, body, { etag: etagOf(a.version) }) : post('/api/v1/agents', body);
  }, { submit: a ? 'Save' : 'Create agent', wide: true });
}

export async function renderAgents(box, ctx) {
  const operator = ctx.canEdit && ctx.atLeast('operator');
  const list = h('div', { class: 'table-wrap', id: 'agents' });
  async function load() {
    const r = await get('/api/v1/agents?limit=200');
    const cols = [
      { label: 'Name', render: (a) => [h('a', { href: `#/ai/agents/${enc(a.id)}` }, a.name),
        a.description ? h('div', { class: 'muted small' }, a.description) : null] },
      { label: 'Status', render: (a) => statusBadge(a.status) },
      { label: 'Model', render: (a) => h('code', {}, a.model) },
      { label: 'Version', render: (a) => `v${a.promoted_version}${a.latest_version !== a.promoted_version ? ` (latest v${a.latest_version})` : ''}` },
      { label: 'Budget', class: 'hide-narrow', render: (a) => (a.budget ? `${a.budget.spent_usd} of ${a.budget.limit_usd} / ${a.budget.period}` : '—') },
      { label: 'Tags', class: 'hide-narrow', render: (a) => a.tags.map((t) => [badge(t, 'muted'), ' ']) },
    ];
    mount(list, stack(table(cols, r.items, { empty: 'No agents yet. An agent is a model with a prompt and tools, run on demand or on a schedule.',
      rowAttrs: (a) => ({ dataset: { agent: a.name } }) })));
  }
  mount(box,
    h('div', { class: 'toolbar' },
      h('p', { class: 'muted grow' }, 'Agents move from draft to testing to active; each change of model, prompt or tools is a version.'),
      operator ? h('button', { type: 'button', class: 'primary', id: 'new-agent', onclick: async () => {
        const created = await agentDialog(null);
        if (created) { toast('Agent created (draft).'); location.hash = `#/ai/agents/${enc(created.id)}`; }
      } }, 'New agent') : null),
    h('section', { class: 'panel' }, list));
  await load();
}

function json(v) {
  return h('pre', {}, typeof v === 'string' ? v : JSON.stringify(v, null, 2));
}

/// A run's step trace: one row per model or tool call; its input and output open below.
function trace(run) {
  const steps = run.steps || [];
  const cols = [
    { label: '#', key: 'seq' },
    { label: 'Step', render: (s) => [badge(s.kind, s.kind === 'model' ? 'info' : 'muted'), ' ', h('code', {}, s.name)] },
    { label: 'Status', render: (s) => badge(s.status, s.status === 'ok' ? 'ok' : 'bad') },
    { label: 'Tokens in/out', render: (s) => (s.kind === 'model' ? `${num(s.input_tokens)} / ${num(s.output_tokens)}` : '—') },
    { label: 'Latency', render: (s) => ms(s.latency_ms) },
    { label: 'Cost', render: (s) => dollars(s.cost_micro_usd) },
    { label: 'Details', render: (s) => h('details', { class: 'event-details' }, h('summary', {}, s.error ? `error: ${s.error}` : 'input and output'),
      h('dl', {}, h('dt', {}, 'Input'), h('dd', {}, json(s.input)), h('dt', {}, 'Output'), h('dd', {}, json(s.output)))) },
  ];
  return h('div', { class: 'run-trace', dataset: { run: run.id } },
    h('p', {}, runBadge(run.status), ` v${run.agent_version} · ${run.steps_count} steps · `,
      `${num(run.input_tokens)} tokens in, ${num(run.output_tokens)} out · cost `, h('strong', { class: 'run-cost' }, dollars(run.cost_micro_usd)),
      run.error ? h('div', { class: 'form-error' }, run.error) : null),
    run.output ? h('div', { class: 'run-output' }, h('strong', {}, 'Answer: '), h('span', { class: 'pre-line' }, run.output)) : null,
    h('div', { class: 'table-wrap' }, stack(table(cols, steps, { empty: 'No steps.', rowAttrs: (s) => ({ dataset: { step: s.kind } }) }))));
}

export async function renderAgent(box, ctx, id) {
  const operator = ctx.canEdit && ctx.atLeast('operator');
  const base = `/api/v1/agents/${enc(id)}`;
  const head = h('div');
  const versionsBox = h('div', { class: 'table-wrap', id: 'agent-versions' });
  const runsBox = h('div', { class: 'table-wrap', id: 'agent-runs' });
  const runsPager = h('div');
  const runTrace = h('div', { id: 'run-trace' });
  const lastRun = h('div', { id: 'run-result', 'aria-live': 'polite' });
  let agent;
  let offset = 0;
  let running = false;

  async function loadHead() {
    agent = await get(base);
    const a = agent;
    mount(head,
      h('div', { class: 'toolbar' },
        h('h2', { class: 'grow' }, h('a', { href: '#/ai/agents', class: 'crumb' }, 'Agents'), ' / ', a.name, ' ', statusBadge(a.status)),
        operator ? h('span', { class: 'lifecycle', id: 'lifecycle' }, a.allowed_transitions.map((to) => [h('button', {
          type: 'button', class: to === 'archived' ? 'small danger' : 'small', dataset: { to },
          onclick: () => transition(to) }, `Move to ${to}`), ' '])) : null,
        operator ? h('button', { type: 'button', class: 'small', id: 'edit-agent', onclick: async () => {
          if (await agentDialog(agent)) { toast('Agent saved.'); await reload(); }
        } }, 'Edit') : null,
        operator ? h('button', { type: 'button', class: 'small danger', onclick: async () => {
          if (!await confirm(`Delete agent ${a.name} with its versions, runs and schedules?`, { action: 'Delete' })) return;
          if (await attempt(() => del(base), 'Agent deleted.') !== undefined) location.hash = '#/ai/agents';
        } }, 'Delete') : null),
      h('div', { class: 'facts' },
        fact('Model', h('code', {}, a.model)),
        fact('Promoted version', `v${a.promoted_version} of ${a.latest_version}`),
        fact('Tools', a.tools.length ? a.tools.join(', ') : 'none'),
        fact('Most model calls', String(a.max_steps)),
        fact('Budget', a.budget ? `${a.budget.spent_usd} of ${a.budget.limit_usd} this ${a.budget.period}${Number(a.budget.reserved_usd) > 0 ? ` (${a.budget.reserved_usd} held by model calls under way)` : ''}, resets ${new Date(a.budget.resets_at).toUTCString()}` : 'none'),
        a.split ? fact('A/B split', `v${a.split.a} / v${a.split.b} (${a.split.percent_b}% to v${a.split.b})`) : null),
      a.system_prompt ? h('details', { class: 'event-details' }, h('summary', {}, 'System prompt'), json(a.system_prompt)) : null);
  }

  async function transition(to) {
    if (to === 'archived' && !await confirm(`Archive agent ${agent.name}? An archived agent never runs again.`, { action: 'Archive' })) return;
    if (await attempt(() => post(`${base}/lifecycle`, { status: to }), `Agent is ${to}.`) !== undefined) await reload();
  }

  async function loadVersions() {
    const r = await get(`${base}/versions`);
    const cols = [
      { label: 'Version', render: (v) => [`v${v.number}`, v.promoted ? [' ', badge('promoted', 'ok')] : null] },
      { label: 'Model', render: (v) => h('code', {}, v.model) },
      { label: 'Tools', class: 'hide-narrow', render: (v) => v.tools.join(', ') || '—' },
      { label: 'By', class: 'hide-narrow', key: 'created_by' },
      { label: 'Created', render: (v) => time(v.created_at) },
    ];
    if (operator) {
      cols.push({ label: 'Actions', class: 'actions', render: (v) => (v.promoted ? null : h('button', {
        type: 'button', class: 'small', 'aria-label': `Promote version ${v.number}`, onclick: async () => {
          if (await attempt(() => post(`${base}/versions/${v.number}/promote`), `Version ${v.number} promoted.`) !== undefined) await reload();
        } }, 'Promote')) });
    }
    mount(versionsBox, stack(table(cols, [...r.items].reverse(), { rowAttrs: (v) => ({ dataset: { version: String(v.number) } }) })));
  }

  async function loadRuns() {
    const r = await get(`${base}/runs?limit=${RUNS}&offset=${offset}`);
    const cols = [
      { label: 'Started', render: (x) => time(x.started_at) },
      { label: 'Status', render: (x) => runBadge(x.status) },
      { label: 'Version', render: (x) => `v${x.agent_version}${x.split_arm ? ` (${x.split_arm})` : ''}` },
      { label: 'Steps', render: (x) => num(x.steps_count) },
      { label: 'Tokens in/out', class: 'hide-narrow', render: (x) => `${num(x.input_tokens)} / ${num(x.output_tokens)}` },
      { label: 'Cost', render: (x) => dollars(x.cost_micro_usd) },
      { label: 'Trigger', class: 'hide-narrow', render: (x) => `${x.trigger} · ${x.created_by}` },
      { label: 'Trace', class: 'actions', render: (x) => h('button', { type: 'button', class: 'small',
        'aria-label': `Step trace of run ${x.id}`, onclick: async () => {
          const full = await attempt(() => get(`/api/v1/runs/${enc(x.id)}`));
          if (!full) return;
          mount(runTrace, h('div', { class: 'panel-head' }, h('h3', {}, `Run of ${new Date(full.started_at).toUTCString()}`),
            h('button', { type: 'button', class: 'small', onclick: () => runTrace.replaceChildren() }, 'Close')), trace(full));
          runTrace.scrollIntoView({ block: 'nearest' });
        } }, 'Steps') },
    ];
    mount(runsBox, stack(table(cols, r.items, { empty: 'No runs yet.', rowAttrs: (x) => ({ dataset: { run: x.id } }) })));
    mount(runsPager, pager(r.total, offset, RUNS, (o) => { offset = o; loadRuns(); }));
  }

  async function reload() {
    await Promise.all([loadHead(), loadVersions(), loadRuns()]);
  }

  const runForm = h('form', { id: 'run-form', novalidate: true },
    h('div', { class: 'form-error', role: 'alert' }),
    field({ name: 'input', label: 'Message', type: 'textarea', rows: 3, wide: true, required: true,
      help: 'Sent to the agent as the user\'s message; the run waits for the answer.' }),
    field({ name: 'run_key', label: 'Run key (optional)', help: 'With an A/B split, the same key always gets the same version.' }),
    h('button', { type: 'submit', class: 'primary' }, 'Run'));
  runForm.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    clearErrors(runForm);
    const v = values(runForm);
    const button = runForm.querySelector('button[type="submit"]');
    button.disabled = true;
    running = true;
    mount(lastRun, h('p', { class: 'muted' }, 'Running…'));
    try {
      if (!v.input.trim()) throw fieldError('input', 'write a message for the agent');
      const body = { input: v.input };
      if (v.run_key.trim()) body.run_key = v.run_key.trim();
      const run = await post(`${base}/runs`, body);
      mount(lastRun, h('h3', {}, 'This run'), trace(run));
      offset = 0;
      await Promise.all([loadRuns(), loadHead()]);
    } catch (e) {
      lastRun.replaceChildren();
      showErrors(runForm, e);
    } finally {
      button.disabled = false;
      running = false;
    }
  });

  mount(box, head,
    operator ? h('section', { class: 'panel' }, h('h2', {}, 'Run'), runForm, lastRun) : null,
    h('section', { class: 'panel' }, h('div', { class: 'panel-head' }, h('h2', {}, 'Versions'),
      operator ? h('button', { type: 'button', class: 'small', id: 'rollback', onclick: async () => {
        if (await attempt(() => post(`${base}/rollback`), 'Rolled back to the previously promoted version.') !== undefined) await reload();
      } }, 'Roll back') : null), versionsBox),
    h('section', { class: 'panel' }, h('h2', {}, 'Runs'), runsBox, runsPager, runTrace));
  await reload();
  // Live: the status, budget and runs (scheduled ones too) are read again every
  // few seconds, except while a run or a dialog is open.
  const timer = setInterval(() => {
    if (running || document.querySelector('dialog[open]')) return;
    Promise.all([loadHead(), loadRuns()]).catch(() => {});
  }, 5000);
  return () => clearInterval(timer);
}
