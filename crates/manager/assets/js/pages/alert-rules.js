// Alert rules: event rules (N matching events within a window) and metric rules
// (a live metric against a threshold for a duration). A firing rule opens an
// incident; editing needs the admin role.

import { get, getVersioned, post, put, del, enc } from '../api.js';
import {
  h, mount, table, field, values, showErrors, confirm, dialog, attempt, severityBadge, badge,
} from '../ui.js';

const METRICS = [
  ['error_rate', 'Error rate (0–1)'],
  ['requests_per_second', 'Requests per second'],
  ['latency_p50_ms', 'p50 latency (ms)'],
  ['latency_p95_ms', 'p95 latency (ms)'],
  ['latency_p99_ms', 'p99 latency (ms)'],
  ['rate_limited_per_second', 'Rate-limited requests per second'],
  ['upstream_failure_rate', 'Upstream failure rate (0–1)'],
];

function describe(c) {
  if (c.kind === 'event') {
    const scope = Object.entries(c.filter || {}).map(([k, v]) => `${k}=${v}`).join(', ');
    return `${c.count}× ${c.event_type} within ${c.window_secs}s${scope ? ` (${scope})` : ''}`;
  }
  const scope = c.route ? ` of route ${c.route}` : c.upstream ? ` of upstream ${c.upstream}` : '';
  return `${c.metric}${scope} ${c.op} ${c.threshold} for ${c.duration_secs}s`;
}

export async function render(main, ctx) {
  const box = h('div', { id: 'alert-rules' });
  const canManage = ctx.atLeast('admin');
  const load = async () => {
    const page = await get('/api/v1/alert-rules?limit=500');
    mount(box, table([
      { label: 'Rule', render: (r) => h('span', {}, h('strong', {}, r.name), r.description ? h('div', { class: 'help' }, r.description) : null) },
      { label: 'Condition', render: (r) => h('code', {}, describe(r.condition)) },
      { label: 'Severity', render: (r) => severityBadge(r.severity) },
      { label: 'State', render: (r) => (!r.enabled ? badge('disabled', 'muted')
        : r.active_incident_id ? h('a', { href: `#/incidents/${enc(r.active_incident_id)}` }, badge('firing', 'bad'))
          : badge('quiet', 'ok')) },
      canManage && { label: '', class: 'actions', render: (r) => [
        h('button', { class: 'small', type: 'button', onclick: () => edit(r.id, load) }, 'Edit'), ' ',
        h('button', { class: 'small danger', type: 'button', onclick: async () => {
          if (await confirm(`Delete the alert rule "${r.name}"?`, { action: 'Delete' })) {
            await attempt(async () => { await del(`/api/v1/alert-rules/${enc(r.id)}`); await load(); }, 'Rule deleted');
          }
        } }, 'Delete')] },
    ].filter(Boolean), page.items, { empty: 'No alert rules yet.' }));
  };
  mount(main,
    h('p', {}, h('a', { href: '#/incidents' }, '← Incidents')),
    h('div', { class: 'toolbar' }, h('h1', { class: 'grow' }, 'Alert rules'),
      canManage && h('button', { class: 'primary', type: 'button', onclick: () => edit(null, load) }, 'New rule')),
    h('section', { class: 'panel' }, box));
  await load();
}

async function edit(id, done) {
  let rule = { name: '', description: '', enabled: true, severity: 'warning',
    condition: { kind: 'event', event_type: '', count: 5, window_secs: 60 } };
  let etag = null;
  if (id) ({ data: rule, etag } = await getVersioned(`/api/v1/alert-rules/${enc(id)}`));
  const c = rule.condition;
  const eventPart = h('div', { class: 'form-grid' },
    field({ name: 'condition.event_type', label: 'Event type or pattern', value: c.event_type || '', placeholder: 'circuit_breaker.opened or proxy.*', wide: true }),
    field({ name: 'condition.count', label: 'At least this many events', type: 'number', min: 1, value: c.count ?? 5 }),
    field({ name: 'condition.window_secs', label: 'Within (seconds)', type: 'number', min: 1, value: c.window_secs ?? 60 }),
    field({ name: 'condition.filter.route_id', label: 'Only route (optional)', value: c.filter?.route_id || '' }),
    field({ name: 'condition.filter.upstream', label: 'Only upstream (optional)', value: c.filter?.upstream || '' }));
  const metricPart = h('div', { class: 'form-grid' },
    field({ name: 'condition.metric', label: 'Metric', type: 'select', options: METRICS, value: c.metric || 'error_rate', wide: true }),
    field({ name: 'condition.op', label: 'Comparison', type: 'select', options: ['>', '>=', '<', '<='], value: c.op || '>' }),
    field({ name: 'condition.threshold', label: 'Threshold', type: 'number', step: 'any', value: c.threshold ?? 0.05 }),
    field({ name: 'condition.duration_secs', label: 'For (seconds)', type: 'number', min: 1, value: c.duration_secs ?? 60 }),
    field({ name: 'condition.route', label: 'Route (optional)', value: c.route || '' }),
    field({ name: 'condition.upstream', label: 'Upstream (optional)', value: c.upstream || '' }));
  const kind = field({ name: 'condition.kind', label: 'Fires on', type: 'select', value: c.kind,
    options: [['event', 'Events'], ['metric', 'A metric']] });
  const form = h('form', { id: 'rule-form' },
    h('div', { class: 'form-error', role: 'alert' }),
    h('div', { class: 'form-grid' },
      field({ name: 'name', label: 'Name', value: rule.name, required: true }),
      field({ name: 'severity', label: 'Severity', type: 'select', value: rule.severity,
        options: [['critical', 'Critical'], ['warning', 'Warning'], ['info', 'Info']] }),
      field({ name: 'description', label: 'Description', value: rule.description, wide: true }),
      field({ name: 'enabled', label: 'Enabled', type: 'checkbox', value: rule.enabled })),
    kind, eventPart, metricPart);
  const sync = () => {
    const isEvent = form.querySelector('[name="condition.kind"]').value === 'event';
    eventPart.hidden = !isEvent;
    metricPart.hidden = isEvent;
  };
  kind.addEventListener('change', sync);
  sync();
  const d = dialog(id ? `Edit ${rule.name}` : 'New alert rule', form, [
    h('button', { type: 'button', onclick: () => d.close() }, 'Cancel'),
    h('button', { type: 'submit', class: 'primary', form: 'rule-form' }, 'Save'),
  ]);
  form.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    const v = values(form);
    const opt = (s) => (s.trim() ? s.trim() : undefined);
    const condition = v['condition.kind'] === 'event'
      ? { kind: 'event', event_type: v['condition.event_type'].trim(), count: Number(v['condition.count']),
        window_secs: Number(v['condition.window_secs']) }
      : { kind: 'metric', metric: v['condition.metric'], op: v['condition.op'],
        threshold: Number(v['condition.threshold']), duration_secs: Number(v['condition.duration_secs']),
        route: opt(v['condition.route']), upstream: opt(v['condition.upstream']) };
    if (condition.kind === 'event') {
      const filter = { route_id: opt(v['condition.filter.route_id']), upstream: opt(v['condition.filter.upstream']) };
      if (filter.route_id || filter.upstream) condition.filter = filter;
    }
    const body = { name: v.name, description: v.description, severity: v.severity, enabled: v.enabled, condition };
    try {
      if (id) await put(`/api/v1/alert-rules/${enc(id)}`, body, { etag });
      else await post('/api/v1/alert-rules', body);
      d.close();
      await done();
    } catch (e) {
      showErrors(form, e);
    }
  });
}
