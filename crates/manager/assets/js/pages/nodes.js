// Nodes (#/nodes): the fleet's edges and relays with their connection state,
// software version and configuration revisions; create (the registration token is
// shown once), a new token, edit and delete. One node (#/nodes/{id}): its live
// stats and health from the dashboard feed (`dashboard_update`), its flows, its
// config sync, and a box to send it a command.

import { get, post, put, del, enc, getAll, getVersioned } from '../api.js';
import { subscribe } from '../live.js';
import { LineChart } from '../chart.js';
import { h, mount, table, field, values, badge, time, num, toast, attempt, confirm, parseJsonField } from '../ui.js';
import { formDialog, fieldError, pager, showSecret, fact, etagOf, stack } from '../widgets.js';

const LIMIT = 50;
const TTLS = [['3600', '1 hour'], ['86400', '24 hours'], ['604800', '7 days'], ['2592000', '30 days']];

export async function render(main, ctx, params) {
  if (params[0]) return renderOne(main, ctx, params[0]);
  return renderList(main, ctx);
}

function statusBadge(status) {
  return badge(status, { online: 'ok', offline: 'warn', pending: 'info' }[status] || 'muted');
}

/// Bits per second, scaled.
export function bps(v) {
  if (v === null || v === undefined || Number.isNaN(Number(v))) return '—';
  const n = Number(v);
  if (n >= 1e9) return `${num(n / 1e9, 2)} Gb/s`;
  if (n >= 1e6) return `${num(n / 1e6, 2)} Mb/s`;
  if (n >= 1e3) return `${num(n / 1e3, 1)} kb/s`;
  return `${num(n)} b/s`;
}

function duration(secs) {
  if (secs === null || secs === undefined) return '—';
  const s = Math.max(0, Math.floor(Number(secs)));
  const d = Math.floor(s / 86400);
  const hh = Math.floor((s % 86400) / 3600);
  const mm = Math.floor((s % 3600) / 60);
  if (d) return `${d}d ${hh}h`;
  if (hh) return `${hh}h ${mm}m`;
  if (mm) return `${mm}m ${s % 60}s`;
  return `${s}s`;
}

function configCell(n) {
  const c = n.config;
  if (!c) return h('span', { class: 'muted' }, '—');
  return [`${c.desired_revision ?? '—'} / ${c.applied_revision ?? '—'} `,
    c.last_error ? badge('refused', 'bad') : badge(c.in_sync ? 'in sync' : 'behind', c.in_sync ? 'ok' : 'warn')];
}

async function deviceTypes() {
  try {
    return (await get('/api/v1/device-types')).device_types;
  } catch {
    return [{ device_type: 'edge', display_name: 'Edge', supported_commands: [] },
      { device_type: 'relay', display_name: 'Relay', supported_commands: [] }];
  }
}

function createDialog(types) {
  return formDialog('New node', [
    field({ name: 'name', label: 'Name', required: true, placeholder: 'edge-paris-1',
      help: '1 to 128 characters; shown in the dashboard and in events.' }),
    field({ name: 'description', label: 'Description', type: 'textarea', rows: 2 }),
    field({ name: 'device_type', label: 'Device type', type: 'select', value: 'edge',
      options: types.map((t) => [t.device_type, t.display_name]) }),
    field({ name: 'token_ttl_secs', label: 'Token valid for', type: 'select', value: '86400', options: TTLS,
      help: 'The registration token works once, within this time.' }),
  ], (form) => {
    const v = values(form);
    if (!v.name.trim()) throw fieldError('name', 'a name is required');
    const body = { name: v.name.trim(), device_type: v.device_type, token_ttl_secs: Number(v.token_ttl_secs) };
    if (v.description.trim()) body.description = v.description.trim();
    return post('/api/v1/nodes', body);
  }, { submit: 'Create node' });
}

function editDialog(n, etag) {
  return formDialog(`Edit ${n.name}`, [
    field({ name: 'name', label: 'Name', required: true, value: n.name }),
    field({ name: 'description', label: 'Description', type: 'textarea', rows: 2, value: n.description || '',
      help: 'Leave empty to clear it.' }),
  ], (form) => {
    const v = values(form);
    const body = { name: v.name.trim(), description: v.description.trim() || null };
    return put(`/api/v1/nodes/${enc(n.id)}`, body, { etag: etag || etagOf(n.version) });
  });
}

function tokenWarning(name, expires) {
  const until = expires ? ` It is valid until ${new Date(expires).toLocaleString()}, for one registration.` : '';
  return `this registration token for ${name} is shown only now and won't be shown again.${until} `
    + 'Start the node with it, e.g. fleetgate edge --manager wss://<manager host>:3443 --token <token> '
    + '(3443 is the default port of the node listener).';
}

async function newToken(n) {
  if (!await confirm(`Issue a new registration token for ${n.name}? An unused earlier token stops working; `
    + 'a node already registered keeps connecting with its secret.', { action: 'New token', danger: false })) return false;
  const t = await attempt(() => post(`/api/v1/nodes/${enc(n.id)}/token`));
  if (!t) return false;
  await showSecret(`Registration token for ${n.name}`, 'Registration token', t.registration_token,
    tokenWarning(n.name, t.registration_token_expires_at));
  return true;
}

async function remove(n) {
  if (!await confirm(`Delete node ${n.name}? Its connection is closed and it can no longer connect.`,
    { action: 'Delete' })) return false;
  return await attempt(() => del(`/api/v1/nodes/${enc(n.id)}`), `Node ${n.name} deleted.`) !== undefined;
}

async function renderList(main, ctx) {
  const box = h('div', { class: 'table-wrap', id: 'nodes' });
  const pagerBox = h('div');
  const types = await deviceTypes();
  const typeName = (t) => (types.find((d) => d.device_type === t) || {}).display_name || t;
  let offset = 0;
  let shown = [];

  async function load() {
    const r = await get(`/api/v1/nodes?limit=${LIMIT}&offset=${offset}`);
    shown = r.items;
    const cols = [
      { label: 'Name', render: (n) => h('a', { href: `#/nodes/${enc(n.id)}`, class: 'strong' }, n.name) },
      { label: 'Device type', render: (n) => typeName(n.device_type) },
      { label: 'Status', render: (n) => statusBadge(n.status) },
      { label: 'Software version', render: (n) => n.software_version || '—' },
      { label: 'Config (desired / applied)', render: configCell },
      { label: 'Last seen', render: (n) => (n.last_seen_at ? time(n.last_seen_at) : h('span', { class: 'muted' }, 'never')) },
    ];
    if (ctx.canEdit) {
      cols.push({ label: 'Actions', class: 'actions', render: (n) => [
        h('button', { type: 'button', class: 'small', 'aria-label': `Edit ${n.name}`, onclick: async () => {
          if (await editDialog(n)) { toast('Node saved.'); load(); }
        } }, 'Edit'), ' ',
        h('button', { type: 'button', class: 'small', 'aria-label': `New token for ${n.name}`, onclick: async () => {
          if (await newToken(n)) load();
        } }, 'New token'), ' ',
        h('button', { type: 'button', class: 'small danger', 'aria-label': `Delete ${n.name}`, onclick: async () => {
          if (await remove(n)) load();
        } }, 'Delete')] });
    }
    mount(box, stack(table(cols, r.items, {
      empty: 'No nodes yet. Create one, then start the node with its registration token.',
      rowAttrs: (n) => ({ dataset: { id: n.id, status: n.status } }),
    })));
    mount(pagerBox, pager(r.total, offset, LIMIT, (o) => { offset = o; load(); }));
  }

  async function create() {
    const created = await createDialog(types);
    if (!created) return;
    await load();
    await showSecret(`Node ${created.name} created`, 'Registration token', created.registration_token,
      tokenWarning(created.name, created.registration_token_expires_at));
  }

  mount(main,
    h('div', { class: 'toolbar' }, h('h1', { class: 'grow' }, 'Nodes'),
      ctx.canEdit ? h('button', { type: 'button', class: 'primary', id: 'new-node', onclick: create }, 'New node') : null),
    h('p', { class: 'muted intro' }, 'Edges and relays managed by this instance. A node registers once with its '
      + 'token over the node listener (/ws/node, TLS) and reconnects with the secret it is given.'),
    h('section', { class: 'panel' }, box, pagerBox));
  await load();
  // A node going online or offline shows without a reload: the list is read
  // again when the connected nodes change from one update to the next (or, at
  // the first update, differ from the list).
  let before = null;
  const off = subscribe('dashboard_update', (u) => {
    const online = new Set((u.nodes || []).map((n) => n.node_id));
    const key = [...online].sort().join(' ');
    const changed = before === null
      ? shown.some((n) => (n.status === 'online') !== online.has(n.id))
      : key !== before;
    before = key;
    if (changed) load().catch(() => {});
  });
  return off;
}

function metricCards(m) {
  const label = (name) => name.replace(/_(bps|secs)$/, '').replace(/_/g, ' ').replace(/^./, (c) => c.toUpperCase());
  const value = (name, v) => {
    if (name.endsWith('_bps')) return bps(v);
    if (name === 'uptime_secs') return duration(v);
    if (name.startsWith('total_bytes')) return `${num(v)} B`;
    return typeof v === 'number' ? num(v) : String(v);
  };
  return (m || []).map(([name, v]) => h('div', { class: 'card', dataset: { metric: name } },
    h('div', { class: 'label' }, label(name)), h('div', { class: 'value' }, value(name, v))));
}

function kvList(obj) {
  const entries = Object.entries(obj || {});
  if (!entries.length) return h('p', { class: 'empty' }, 'Nothing reported.');
  return h('dl', { class: 'kv' }, entries.map(([k, v]) => [h('dt', {}, k),
    h('dd', {}, v === null || v === undefined ? '—' : typeof v === 'object' ? h('code', { class: 'wrap' }, JSON.stringify(v)) : String(v))]));
}

function flowsTable(flows) {
  if (!flows.length) return h('p', { class: 'empty' }, 'The node reports no flows.');
  const rows = [];
  for (const f of flows) {
    const input = f.input || {};
    rows.push(h('tr', { class: 'flow', dataset: { flow: f.flow_id } },
      h('td', {}, h('strong', {}, f.flow_name || f.flow_id), f.flow_name ? h('div', { class: 'muted' }, f.flow_id) : null),
      h('td', {}, `in: ${input.input_type || '—'}`),
      h('td', {}, badge(f.state || '—', f.state === 'running' ? 'ok' : 'muted'),
        f.health ? [' ', badge(f.health, f.health === 'healthy' ? 'ok' : f.health === 'warning' ? 'warn' : 'bad')] : null),
      h('td', { class: 'num' }, num(input.packets_received)),
      h('td', { class: 'num' }, bps(input.bitrate_bps)),
      h('td', { class: 'num' }, num(input.packets_lost), ' lost')));
    for (const o of f.outputs || []) {
      rows.push(h('tr', { class: 'output', dataset: { output: o.output_id } },
        h('td', {}, '↳ ', o.output_name || o.output_id),
        h('td', {}, `out: ${o.output_type || '—'}`),
        h('td', {}, badge(o.state || '—', 'muted')),
        h('td', { class: 'num' }, num(o.packets_sent)),
        h('td', { class: 'num' }, bps(o.bitrate_bps)),
        h('td', { class: 'num' }, num(o.packets_dropped), ' dropped')));
    }
  }
  return h('table', { id: 'flows-table' },
    h('thead', {}, h('tr', {}, ['Flow / output', 'Type', 'State', 'Packets', 'Bitrate', 'Lost / dropped']
      .map((t, i) => h('th', { scope: 'col', class: i >= 3 ? 'num' : undefined }, t)))),
    h('tbody', {}, rows));
}

function syncPanel(n) {
  const c = n.config;
  if (!c) {
    return h('p', { class: 'empty' }, 'No config sync reported: the node is not a Fleetgate edge, or has not connected since this manager started.');
  }
  return h('dl', { class: 'kv', id: 'config-sync' },
    h('dt', {}, 'Desired revision'), h('dd', { dataset: { key: 'desired' } }, c.desired_revision ?? '—'),
    h('dt', {}, 'Applied revision'), h('dd', { dataset: { key: 'applied' } }, c.applied_revision ?? '—'),
    h('dt', {}, 'State'), h('dd', {}, c.in_sync ? badge('in sync', 'ok') : badge('not in sync', 'warn')),
    h('dt', {}, 'Last sent'), h('dd', {}, c.sent_revision ?? '—'),
    h('dt', {}, 'Last error'), h('dd', { class: c.last_error ? 'error-text' : undefined },
      c.last_error ? `revision ${c.error_revision}: ${c.last_error}` : 'none'),
    h('dt', {}, 'Reported'), h('dd', {}, time(c.updated_at)));
}

const FAILURES = {
  400: 'Invalid command',
  403: 'Not allowed',
  404: 'No such node',
  413: 'Too large',
  422: 'Refused by the node',
  502: 'Node not connected',
  504: 'No answer from the node within 10 s',
};

function commandBox(n, types) {
  const type = types.find((t) => t.device_type === n.device_type);
  const commands = type ? type.supported_commands : [];
  const result = h('div', { id: 'command-result', role: 'status', 'aria-live': 'polite' });
  const help = h('div', { class: 'help' });
  const form = h('form', { class: 'form-grid', 'aria-label': 'Send a command to the node', novalidate: true },
    h('div', { class: 'form-error', role: 'alert' }),
    field({ name: 'action', label: 'Action', type: 'select',
      options: commands.map((c) => [c.name, c.name]) }),
    field({ name: 'params', label: 'Parameters (JSON object)', type: 'textarea', rows: 4, value: '{}', wide: true,
      help: 'Sent with the command: {"type": "<command>", ...parameters}, e.g. {"flow_id": "f1"}.' }),
    h('div', { class: 'form-actions wide' }, h('button', { type: 'submit', class: 'primary' }, 'Send command')));
  const select = form.querySelector('select');
  select.closest('.field').append(help);
  select.classList.add('mono');
  form.querySelector('textarea').classList.add('mono');
  const describe = () => {
    const c = commands.find((x) => x.name === select.value);
    help.textContent = c ? c.description : '';
  };
  select.addEventListener('change', describe);
  describe();
  form.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    const v = values(form);
    let params;
    try {
      params = parseJsonField(v.params, 'params') ?? {};
      if (typeof params !== 'object' || Array.isArray(params)) throw fieldError('params', 'must be a JSON object');
    } catch (e) {
      mount(result, h('p', { class: 'error-text' }, e.message));
      return;
    }
    const button = form.querySelector('button[type="submit"]');
    button.disabled = true;
    mount(result, h('p', { class: 'muted' }, `Sent ${v.action}; waiting for the node…`));
    const started = performance.now();
    try {
      const r = await post(`/api/v1/nodes/${enc(n.id)}/command`, { action: { ...params, type: v.action } });
      const took = Math.round(performance.now() - started);
      mount(result,
        h('p', {}, badge('ack', 'ok'), ` ${v.action} carried out (HTTP 200, ${took} ms), command ${r.command_id}`),
        r.data !== undefined ? h('pre', { class: 'command-data' }, JSON.stringify(r.data, null, 2)) : null);
    } catch (e) {
      const meaning = FAILURES[e.status] || (e.status ? `HTTP ${e.status}` : 'Not sent');
      const nodeError = e.details && e.details.node_error;
      mount(result,
        h('p', {}, badge('error', 'bad'), ` ${meaning} (HTTP ${e.status || '—'}): `, h('span', { class: 'error-text' }, e.message)),
        nodeError ? h('p', {}, 'The node said: ', h('code', {}, nodeError)) : null);
    } finally {
      button.disabled = false;
    }
  });
  if (!commands.length) return h('p', { class: 'empty' }, 'This kind of node takes no commands.');
  return h('div', {}, form, result);
}

/// The node's stored history (GET /nodes/{id}/history): one metric at a time,
/// its average and maximum per interval, the interval in progress last.
function historyPanel(base) {
  const box = h('div', { id: 'node-history' });
  const metric = h('select', { 'aria-label': 'Metric', id: 'node-history-metric' });
  const resolution = h('select', { 'aria-label': 'Resolution', id: 'node-history-resolution' },
    h('option', { value: '60' }, 'per minute, last 3 hours'),
    h('option', { value: '3600' }, 'per hour, last 7 days'));
  let points = [];

  function draw() {
    const name = metric.value;
    if (!points.length || !name) {
      mount(box, h('p', { class: 'empty' }, 'No history yet: it is kept while the node is connected.'));
      return;
    }
    const fmt = (v) => num(v, 1);
    const chart = new LineChart([{ label: `${name} avg`, format: fmt }, { label: `${name} max`, format: fmt }],
      { capacity: Math.max(points.length, 2), height: 160, label: `History of ${name}` });
    for (const p of points) {
      const m = p.metrics[name];
      chart.push(m ? [m.avg, m.max] : [null, null]);
    }
    const first = points[0].ts;
    const last = points[points.length - 1];
    mount(box, chart.el, chart.legend,
      h('p', { class: 'muted' }, `${points.length} interval(s) from ${time(first)}`,
        last.partial ? ' (the last one still in progress)' : ''));
  }

  async function load() {
    const r = await attempt(() => get(`${base}/history?resolution=${resolution.value}`));
    if (!r) return;
    points = r.points || [];
    const names = [...new Set(points.flatMap((p) => Object.keys(p.metrics)))].sort();
    const keep = names.includes(metric.value) ? metric.value
      : (names.find((x) => x === 'flows.input_bitrate_bps') || names[0] || '');
    mount(metric, ...names.map((x) => h('option', { value: x }, x)));
    metric.value = keep;
    draw();
  }

  metric.addEventListener('change', draw);
  resolution.addEventListener('change', load);
  const el = h('section', { class: 'panel' },
    h('div', { class: 'panel-head' }, h('h2', { class: 'grow' }, 'History'), metric, resolution), box);
  return { el, load, empty: () => points.length === 0 };
}

/// The tunnels this node is part of (entry, exit or relay), each linked to its page.
async function tunnelsPanel(id) {
  const box = h('div', { id: 'node-tunnels' });
  let all;
  try {
    all = await getAll('/api/v1/tunnels');
  } catch {
    return mount(box, h('p', { class: 'empty' }, 'The tunnels could not be read.'));
  }
  const roles = (t) => [
    t.ingress_node_id === id ? `entry, port ${t.ingress_listen_port}/${t.protocol}` : null,
    t.egress_node_id === id ? 'exit' : null,
    t.relay_node_id === id ? 'relay' : null].filter(Boolean);
  const mine = all.filter((t) => roles(t).length);
  if (!mine.length) return mount(box, h('p', { class: 'empty' }, 'No tunnel goes through this node.'));
  const kind = { active: 'ok', pending: 'info', error: 'bad' };
  return mount(box, h('ul', { class: 'plain-list' }, mine.map((t) => h('li', { dataset: { tunnel: t.id } },
    h('a', { href: `#/tunnels/${enc(t.id)}`, class: 'strong' }, t.name), ' ',
    badge(t.status, kind[t.status] || 'muted'), ' ', h('span', { class: 'muted' }, roles(t).join(', '))))));
}

async function renderOne(main, ctx, id) {
  const base = `/api/v1/nodes/${enc(id)}`;
  const types = await deviceTypes();
  let { data: n, etag } = await getVersioned(base);
  let alive = true;
  const head = h('div');
  const liveBadge = badge('waiting for data', 'muted');
  liveBadge.id = 'node-live';
  const metricsBox = h('div', { class: 'grid', id: 'node-metrics' });
  const healthBox = h('div', { id: 'node-health' });
  const flowsBox = h('div', { class: 'table-wrap', id: 'node-flows' });
  const syncBox = h('div', { id: 'node-sync' });
  const updated = h('span', { class: 'muted', id: 'node-updated' });

  function drawHead() {
    mount(head,
      h('div', { class: 'toolbar' },
        h('h1', { class: 'grow' }, h('a', { href: '#/nodes', class: 'crumb' }, 'Nodes'), ' / ', h('span', { id: 'node-name' }, n.name)),
        ctx.canEdit ? [
          h('button', { type: 'button', onclick: async () => {
            if (await editDialog(n, etag)) { toast('Node saved.'); await refresh(); }
          } }, 'Edit'),
          h('button', { type: 'button', onclick: async () => { if (await newToken(n)) await refresh(); } }, 'New token'),
          h('button', { type: 'button', class: 'danger', onclick: async () => {
            if (await remove(n)) location.hash = '#/nodes';
          } }, 'Delete')] : null),
      n.description ? h('p', { class: 'muted intro' }, n.description) : null,
      h('div', { class: 'facts' },
        fact('Status', h('span', { id: 'node-status' }, statusBadge(n.status))),
        fact('Device type', n.device_type),
        fact('Software version', n.software_version || '—'),
        fact('Protocol version', n.protocol_version ?? '—'),
        fact('Connected since', n.connected_since ? time(n.connected_since) : '—'),
        fact('Last seen', n.last_seen_at ? time(n.last_seen_at) : 'never'),
        fact('Registered', n.registered_at ? time(n.registered_at) : 'not yet'),
        n.token_expires_at ? fact('Token expires', time(n.token_expires_at)) : null));
    mount(syncBox, syncPanel(n));
  }

  async function refresh() {
    try {
      ({ data: n, etag } = await getVersioned(base));
      if (alive) drawHead();
    } catch (e) {
      if (e.status === 404 && alive) location.hash = '#/nodes';
    }
  }

  function showLive(u) {
    const entry = (u.nodes || []).find((x) => x.node_id === id);
    const wasOnline = n.status === 'online';
    if (!entry) {
      mount(liveBadge, 'not connected');
      liveBadge.className = 'badge muted';
      mount(metricsBox);
      mount(healthBox, h('p', { class: 'empty' }, 'No live data: the node is not connected.'));
      mount(flowsBox, h('p', { class: 'empty' }, 'No live data: the node is not connected.'));
    } else {
      mount(liveBadge, 'live');
      liveBadge.className = 'badge ok';
      mount(metricsBox, metricCards(entry.driver_metrics && entry.driver_metrics.metrics),
        h('div', { class: 'card', dataset: { metric: 'connected' } }, h('div', { class: 'label' }, 'Connected for'),
          h('div', { class: 'value' }, duration(entry.uptime_secs))));
      mount(healthBox, entry.health ? kvList(entry.health) : h('p', { class: 'empty' }, 'No health message yet.'));
      const items = entry.device_type === 'edge'
        ? ((entry.stats && entry.stats.flows) || []) : null;
      mount(flowsBox, items ? flowsTable(items)
        : h('p', { class: 'empty' }, `${(entry.driver_metrics.items || []).length} tunnel(s) reported.`));
    }
    mount(updated, `Updated ${new Date().toLocaleTimeString()}`);
    // A node that just connected has history as soon as it reports.
    if (entry && history.empty()) history.load();
    // Revisions and status come from the node API; read it again with each update.
    if (wasOnline !== !!entry || n.config) refresh();
  }

  drawHead();
  const tunnels = await tunnelsPanel(id);
  const history = historyPanel(base);
  history.load();
  const historyTimer = setInterval(() => { if (alive) history.load(); }, 60_000);
  mount(main, head,
    h('section', { class: 'panel' },
      h('div', { class: 'panel-head' }, h('h2', { class: 'grow' }, 'Live stats ', liveBadge), updated),
      metricsBox),
    h('div', { class: 'two' },
      h('section', { class: 'panel' }, h('h2', {}, 'Health'), healthBox),
      h('section', { class: 'panel' }, h('h2', {}, 'Config sync'), syncBox)),
    h('section', { class: 'panel' }, h('h2', {}, 'Flows'), flowsBox),
    history.el,
    h('section', { class: 'panel' }, h('h2', {}, 'Tunnels'), tunnels),
    h('section', { class: 'panel', id: 'node-command' }, h('h2', {}, 'Command'),
      ctx.canEdit ? commandBox(n, types)
        : h('p', { class: 'empty' }, 'Sending commands needs the operator role.')));
  mount(healthBox, h('p', { class: 'empty' }, 'Waiting for the live feed…'));
  mount(flowsBox, h('p', { class: 'empty' }, 'Waiting for the live feed…'));
  const off = subscribe('dashboard_update', showLive);
  return () => { alive = false; off(); clearInterval(historyTimer); };
}
