// Deployments (#/deployments): the apps this host runs from a compose.yml and a
// service.yml, each with its status, services and domains, read again every 5 s.
// A new one (#/deployments/_new): the two files checked by the API, each problem
// listed under its file with its line marked. One deployment (#/deployments/{name}):
// its services and resource use (read again every 3 s while the page is visible),
// the release serving, its live instance and those still draining, its releases
// (each one's files on demand; operators roll back to one that served),
// start/stop/restart/delete, the gateway proxy of its domains, its files (saved
// with If-Match) and its logs, as a tail or followed live.

import { ApiError, api, get, post, del, enc, getVersioned } from '../api.js';
import { h, mount, table, field, values, badge, time, toast, attempt, confirm, showErrors, clearErrors } from '../ui.js';
import { fact, stack } from '../widgets.js';
import { codeEditor } from '../code.js';

const LIST_REFRESH_MS = 5000;
const DETAIL_REFRESH_MS = 3000;
/// The most log lines kept in the page: older ones are dropped as new ones come.
const MAX_LOG_LINES = 2000;
/// The create form's address. A deployment name is a-z, 0-9 and '-', so it can
/// never be "_new".
const NEW = '_new';

const EXAMPLE_COMPOSE = `services:
  web:
    command: ["python3", "-u", "-m", "http.server", "8000", "--bind", "127.0.0.1"]
    restart: always
`;

const EXAMPLE_SERVICE = `domains: [app.example.com]
port: 8000
`;

export async function render(main, ctx, params) {
  if (params[0] === NEW) return renderCreate(main, ctx);
  if (params[0]) return renderOne(main, ctx, params[0]);
  return renderList(main, ctx);
}

const STATUS_KIND = { running: 'ok', starting: 'info', degraded: 'warn', failed: 'bad', stopped: 'muted' };
const RELEASE_KIND = { live: 'ok', deploying: 'info', failed: 'bad', replaced: 'muted' };
const SERVICE_KIND = { running: 'ok', starting: 'info', unhealthy: 'warn', restarting: 'warn', failed: 'bad',
  exited: 'muted', stopped: 'muted' };

function statusBadge(status) {
  const b = badge(status, STATUS_KIND[status] || 'muted');
  b.dataset.status = status;
  return b;
}

function serviceBadge(s, withName = false) {
  const b = badge(withName ? `${s.name} ${s.state}` : s.state, SERVICE_KIND[s.state] || 'muted');
  b.dataset.state = s.state;
  if (s.last_error) b.title = s.last_error;
  return b;
}

function domainLinks(d) {
  if (!d.domains.length) return h('span', { class: 'muted' }, 'none');
  const scheme = d.ssl ? 'https' : 'http';
  return h('span', { class: 'domains' }, d.domains.map((name, i) => [i ? ', ' : '',
    h('a', { href: `${scheme}://${name}/`, target: '_blank', rel: 'noopener noreferrer' }, name)]));
}

/// "3h 12m" from seconds.
function duration(s) {
  if (s === null || s === undefined || s < 0) return '—';
  s = Math.floor(s);
  if (s < 60) return `${s}s`;
  if (s < 3600) return `${Math.floor(s / 60)}m ${s % 60}s`;
  if (s < 86400) return `${Math.floor(s / 3600)}h ${Math.floor((s % 3600) / 60)}m`;
  return `${Math.floor(s / 86400)}d ${Math.floor((s % 86400) / 3600)}h`;
}

/// Bytes as KiB/MiB/GiB.
export function bytes(n) {
  if (n === null || n === undefined) return '—';
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let v = n;
  let i = 0;
  while (v >= 1024 && i < units.length - 1) { v /= 1024; i++; }
  return `${i ? v.toFixed(1) : v} ${units[i]}`;
}

/// The live instance: its key, the local port the gateway sends traffic to
/// (each service's port in the title) and since when it runs.
function instanceFact(i) {
  if (!i) return h('span', { id: 'deployment-instance', class: 'muted' }, 'none');
  const ports = Object.entries(i.ports || {}).map(([s, p]) => `${s}: ${p}`).join(', ');
  return h('span', { id: 'deployment-instance', dataset: { key: i.key, target: String(i.target ?? '') },
    title: ports ? `Services' ports: ${ports}` : undefined },
  h('code', {}, i.key), ' ', h('span', { class: 'instance-port' }, i.target ? `port ${i.target}` : 'no port'),
  h('span', { class: 'muted small' }, ' · started ', time(i.started_at)));
}

// ---------------------------------------------------------------------------
// The list

async function renderList(main, ctx) {
  const box = h('div', { class: 'table-wrap', id: 'deployments' });
  let drawn = null;
  let alive = true;

  async function load(force = true) {
    const r = await get('/api/v1/deployments');
    if (!alive) return;
    // The periodic reading redraws only what changed.
    const key = JSON.stringify(r.items);
    if (!force && key === drawn) return;
    drawn = key;
    mount(box, stack(table([
      { label: 'Name', render: (d) => h('a', { href: `#/deployments/${enc(d.name)}`, class: 'strong' }, d.name) },
      { label: 'Status', render: (d) => statusBadge(d.status) },
      { label: 'Desired', render: (d) => d.desired },
      { label: 'Driver', render: (d) => d.driver },
      { label: 'Services', render: (d) => h('div', { class: 'services-cell' },
        h('span', { class: 'muted' }, d.services.length === 1 ? '1 service ' : `${d.services.length} services `),
        h('span', { class: 'badges' }, d.services.map((s) => serviceBadge(s, true)))) },
      { label: 'Domains', render: domainLinks },
      { label: 'Version', render: (d) => String(d.version) },
      { label: 'Updated', render: (d) => time(d.updated_at) },
    ], r.items, {
      empty: 'No deployments yet.',
      rowAttrs: (d) => ({ dataset: { name: d.name, status: d.status } }),
    })));
  }

  mount(main,
    h('div', { class: 'toolbar' }, h('h1', { class: 'grow' }, 'Deployments'),
      ctx.canEdit ? h('button', { type: 'button', class: 'primary', id: 'new-deployment',
        onclick: () => { location.hash = `#/deployments/${NEW}`; } }, 'New deployment') : null),
    h('p', { class: 'muted intro' }, 'Apps this host runs from a compose.yml, each with a service.yml naming the '
      + 'domains the gateway routes to it. Read again every 5 s.'),
    h('section', { class: 'panel' }, box));
  await load();
  let busy = false;
  const timer = setInterval(async () => {
    if (busy || document.hidden) return;
    busy = true;
    try { await load(false); } catch { /* shown again at the next reading */ } finally { busy = false; }
  }, LIST_REFRESH_MS);
  return () => { alive = false; clearInterval(timer); };
}

// ---------------------------------------------------------------------------
// Problems of the files, shown where they are

/// Shows a 400's problems: each file's under its editor, the name's next to the
/// name field, the rest in the form's error box. Returns whether it did.
function showProblems(form, editors, e) {
  const problems = e instanceof ApiError && Array.isArray(e.details.problems) ? e.details.problems : null;
  if (!problems) return false;
  clearErrors(form);
  for (const ed of Object.values(editors)) ed.clear();
  const leftover = [];
  const byFile = {};
  for (const p of problems) {
    const file = String(p.file || '').replace(/\.yml$/, '');
    if (editors[file]) (byFile[file] = byFile[file] || []).push(p);
    else if (p.field === 'name' && form.querySelector('[data-field="name"]')) {
      const f = form.querySelector('[data-field="name"]');
      f.classList.add('invalid');
      f.querySelector('.error').textContent = p.message;
    } else leftover.push(p.field ? `${p.field}: ${p.message}` : p.message);
  }
  for (const [file, list] of Object.entries(byFile)) editors[file].setProblems(list);
  const count = problems.length;
  const summary = count === 1 ? 'The deployment has a problem: see below.'
    : `The deployment has ${count} problems: see below.`;
  form.querySelector('.form-error').textContent = leftover.length ? `${summary} ${leftover.join(' · ')}` : summary;
  // The first problem's line selected, so the cursor is where the fix goes.
  const first = problems[0];
  const file = String(first.file || '').replace(/\.yml$/, '');
  if (editors[file] && first.line > 0) editors[file].selectLine(first.line);
  else if (first.field === 'name') form.querySelector('[data-field="name"] input')?.focus();
  return true;
}

// ---------------------------------------------------------------------------
// Create

async function renderCreate(main, ctx) {
  const head = h('div', { class: 'toolbar' },
    h('h1', { class: 'grow' }, h('a', { href: '#/deployments', class: 'crumb' }, 'Deployments'), ' / New deployment'));
  if (!ctx.canEdit) {
    mount(main, head, h('p', { class: 'form-error', role: 'alert' }, 'Only operators and admins can create deployments.'));
    return undefined;
  }
  const editors = {
    compose: codeEditor({ name: 'compose', label: 'compose.yml', value: EXAMPLE_COMPOSE, rows: 14,
      help: 'The services to run: each one\'s command (or image, with the Docker driver), environment, '
        + 'ports, health check and restart policy.' }),
    service: codeEditor({ name: 'service', label: 'service.yml', value: EXAMPLE_SERVICE, rows: 8,
      help: 'The domains the gateway routes to the deployment and the port their traffic goes to; '
        + 'optionally TLS, a health check and a rate limit. Leave it empty for a deployment not routed.' }),
  };
  const save = h('button', { type: 'submit', class: 'primary' }, 'Create deployment');
  const form = h('form', { class: 'deployment-form', id: 'deployment-create', novalidate: true },
    h('div', { class: 'form-error', role: 'alert' }),
    field({ name: 'name', label: 'Name', required: true, placeholder: 'my-app',
      help: '1 to 48 of a-z, 0-9 and \'-\', not starting or ending with \'-\'.' }),
    editors.compose.el,
    editors.service.el,
    field({ name: 'start', label: 'Start it now', type: 'checkbox', value: true }),
    h('div', { class: 'form-actions' }, save, h('a', { href: '#/deployments', class: 'button' }, 'Cancel')));
  form.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    clearErrors(form);
    for (const ed of Object.values(editors)) ed.clear();
    const v = values(form);
    const name = v.name.trim();
    if (!name) {
      showErrors(form, new ApiError(400, { error: 'name: a name is required',
        details: { errors: [{ field: 'name', message: 'a name is required' }] } }));
      return;
    }
    save.disabled = true;
    try {
      await post('/api/v1/deployments', { name, compose: v.compose, service: v.service, start: v.start });
      toast(v.start ? `Deployment ${name} created; it is starting.` : `Deployment ${name} created (stopped).`);
      location.hash = `#/deployments/${enc(name)}`;
    } catch (e) {
      if (showProblems(form, editors, e)) return;
      if (e.details && e.details.created) {
        // Created, but it could not start (its driver refused it, or the Docker
        // engine is unavailable): it is left stopped; its page says more.
        toast(`Deployment ${name} was created but could not start: ${e.message}`, 'bad');
        location.hash = `#/deployments/${enc(name)}`;
        return;
      }
      if (e.status === 409) e.errors = [{ field: 'name', message: e.message }];
      showErrors(form, e);
    } finally {
      save.disabled = false;
    }
  });
  mount(main, head,
    h('p', { class: 'muted intro' }, 'Both files are checked before anything is created; each problem is listed '
      + 'under its file with its line and column, and its line is marked.'),
    h('section', { class: 'panel' }, form));
  form.querySelector('input[name="name"]').focus();
  return undefined;
}

// ---------------------------------------------------------------------------
// One deployment

async function renderOne(main, ctx, name) {
  const base = `/api/v1/deployments/${enc(name)}`;
  let { data: d, etag } = await getVersioned(base);
  let stats = null;
  let proxy = null;
  let alive = true;
  const cleanups = [];

  const head = h('div');
  const facts = h('div', { class: 'facts', id: 'deployment-facts' });
  const servicesBox = h('div', { class: 'table-wrap', id: 'deployment-services' });
  const proxyBox = h('div', { id: 'deployment-proxy' });
  const updated = h('span', { class: 'muted', id: 'deployment-updated' });
  const buttons = {};
  let busy = false;

  async function action(verb, done) {
    if (busy) return;
    busy = true;
    for (const b of Object.values(buttons)) b.disabled = true;
    try {
      const r = await attempt(() => post(`${base}/${verb}`), done);
      if (r) await refresh();
    } finally {
      busy = false;
      drawHead(true);
    }
  }

  async function remove() {
    if (!await confirm(`Delete deployment ${d.name}? Its services are stopped, the gateway stops routing `
      + `${d.domains.length ? d.domains.join(', ') : 'it'}, and its files are removed (its logs are kept).`,
    { action: 'Delete' })) return;
    busy = true;
    for (const b of Object.values(buttons)) b.disabled = true;
    const r = await attempt(() => del(base).then(() => true), `Deployment ${d.name} deleted.`);
    busy = false;
    if (r) location.hash = '#/deployments';
    else drawHead(true);
  }

  let headKey = null;
  function drawHead(force = false) {
    const key = JSON.stringify([d.status, d.desired]);
    if (!force && key === headKey) return;
    headKey = key;
    const make = (id, label, onclick, cls = '') => {
      buttons[id] = h('button', { type: 'button', id: `deployment-${id}`, class: cls, onclick, disabled: busy }, label);
      return buttons[id];
    };
    const stopped = d.desired === 'stopped';
    mount(head,
      h('div', { class: 'toolbar' },
        h('h1', { class: 'grow' }, h('a', { href: '#/deployments', class: 'crumb' }, 'Deployments'), ' / ',
          h('span', { id: 'deployment-name' }, d.name),
          h('span', { class: 'title-badge', id: 'deployment-status' }, statusBadge(d.status))),
        ctx.canEdit ? [
          make('start', 'Start', () => action('start', `Deployment ${d.name} started.`), stopped ? 'primary' : ''),
          make('stop', 'Stop', () => action('stop', `Deployment ${d.name} stopped.`)),
          make('restart', 'Restart', () => action('restart', `Deployment ${d.name} restarted.`)),
          make('delete', 'Delete', remove, 'danger'),
        ] : null));
  }

  function drawFacts() {
    mount(facts,
      fact('Status', statusBadge(d.status)),
      fact('Desired', d.desired),
      fact('Driver', d.driver),
      fact('Domains', domainLinks(d)),
      fact('Port', d.port ? String(d.port) : '—'),
      fact('Release', h('span', { id: 'deployment-release', dataset: { release: String(d.release) } },
        d.release ? `#${d.release}` : h('span', { class: 'muted' }, 'none yet'))),
      fact('Strategy', h('span', { id: 'deployment-strategy' }, d.strategy)),
      fact('Live instance', instanceFact(d.instance)),
      fact('Draining', h('span', { id: 'deployment-draining', dataset: { count: String(d.draining.length) } },
        d.draining.length ? h('span', { class: 'badges' }, d.draining.map((k) => badge(k, 'warn')))
          : h('span', { class: 'muted' }, 'none'))),
      fact('CPU', h('span', { id: 'deployment-cpu' }, stats ? `${stats.cpu_percent.toFixed(1)} %` : '—')),
      fact('Memory', h('span', { id: 'deployment-memory' }, stats ? bytes(stats.memory_bytes) : '—')),
      fact('Version', String(d.version)),
      fact('Created', time(d.created_at)),
      fact('Updated', time(d.updated_at)));
  }

  function drawServices() {
    const byName = new Map(((stats && stats.services) || []).map((s) => [s.name, s]));
    mount(servicesBox, stack(table([
      { label: 'Service', render: (s) => h('strong', {}, s.name) },
      { label: 'State', render: (s) => serviceBadge(s) },
      { label: 'PID', render: (s) => h('span', { class: 'pid' }, s.pid ? String(s.pid) : '—') },
      { label: 'Restarts', render: (s) => String(s.restarts) },
      { label: 'Uptime', render: (s) => (s.started_at && ['running', 'starting', 'unhealthy'].includes(s.state)
        ? duration((Date.now() - s.started_at) / 1000) : '—') },
      { label: 'Exit code', render: (s) => (s.exit_code === null || s.exit_code === undefined ? '—' : String(s.exit_code)) },
      { label: 'CPU', render: (s) => (byName.has(s.name) ? `${byName.get(s.name).cpu_percent.toFixed(1)} %` : '—') },
      { label: 'Memory', render: (s) => (byName.has(s.name) ? bytes(byName.get(s.name).memory_bytes) : '—') },
      { label: 'Last error', render: (s) => (s.last_error
        ? h('span', { class: 'error-text last-error' }, s.last_error) : h('span', { class: 'muted' }, 'none')) },
    ], d.services, { rowAttrs: (s) => ({ dataset: { service: s.name, state: s.state } }) })));
  }

  function drawProxy() {
    if (!proxy) {
      mount(proxyBox, h('p', { class: 'muted' }, 'Reading the proxy status…'));
      return;
    }
    const controls = ctx.canEdit ? h('div', { class: 'actions' },
      h('button', { type: 'button', id: 'proxy-setup', onclick: setupProxy },
        proxy.configured ? 'Set up again' : 'Set up proxy'),
      proxy.configured ? h('button', { type: 'button', class: 'danger', id: 'proxy-remove', onclick: removeProxy },
        'Remove proxy') : null) : null;
    mount(proxyBox,
      h('div', { class: 'panel-head' },
        h('div', { class: 'grow' }, h('h2', {}, 'Gateway proxy'),
          h('p', { class: 'muted' }, 'Whether the gateway routes the deployment\'s domains as its service.yml '
            + 'says (route and upstream ', h('code', {}, proxy.route_id), ').')),
        controls),
      h('div', { class: 'facts' },
        fact('Configured', h('span', { id: 'proxy-configured' },
          badge(proxy.configured ? 'configured' : 'not configured', proxy.configured ? 'ok' : 'muted'))),
        fact('Up to date', h('span', { id: 'proxy-up-to-date' },
          badge(proxy.up_to_date ? 'up to date' : 'out of date', proxy.up_to_date ? 'ok' : 'warn'))),
        fact('Domains', domainLinks(proxy)),
        fact('Port', proxy.port ? String(proxy.port) : '—'),
        fact('TLS', proxy.ssl ? 'yes' : 'no')));
  }

  async function setupProxy() {
    const r = await attempt(() => post(`/api/v1/proxy/setup/${enc(name)}`), 'The gateway routes the deployment\'s domains.');
    if (r) { proxy = r; drawProxy(); }
  }

  async function removeProxy() {
    if (!await confirm(`Stop routing ${proxy.domains.join(', ') || 'the deployment'} through the gateway? `
      + 'The deployment keeps running.', { action: 'Remove proxy' })) return;
    const r = await attempt(() => del(`/api/v1/proxy/${enc(name)}`).then(() => true), 'The gateway no longer routes the deployment.');
    if (r) await readProxy();
  }

  async function readProxy() {
    try {
      proxy = await get(`/api/v1/proxy/status/${enc(name)}`);
      if (alive) drawProxy();
    } catch (e) {
      if (alive) mount(proxyBox, h('h2', {}, 'Gateway proxy'), h('p', { class: 'form-error' }, `Cannot read the proxy status: ${e.message}`));
    }
  }

  async function readStats() {
    try {
      stats = await get(`${base}/stats`);
    } catch { stats = null; }
  }

  async function refresh() {
    try {
      const r = await getVersioned(base);
      if (!alive) return;
      d = r.data;
      etag = r.etag;
      await readStats();
      if (!alive) return;
      drawHead();
      drawFacts();
      drawServices();
      await releases.load(false);
      mount(updated, `Updated ${new Date().toLocaleTimeString()}`);
    } catch (e) {
      if (!alive) return;
      if (e.status === 404) {
        toast(`Deployment ${name} no longer exists.`, 'bad');
        location.hash = '#/deployments';
      } else mount(updated, h('span', { class: 'error-text' }, `Could not read it again: ${e.message}`));
    }
  }

  await readStats();
  drawHead(true);
  drawFacts();
  drawServices();
  drawProxy();
  mount(updated, `Updated ${new Date().toLocaleTimeString()}`);

  const logs = logsPanel(base, d);
  cleanups.push(logs.stop);
  // A rollback changes the files: the editor shows them unless it holds edits
  // not saved yet (their save is then refused as made on an older version).
  const releases = releasesPanel(base, ctx, () => d, async () => {
    if (files) await files.reload({ keepEdits: true }).catch(() => {});
    await refresh();
  });
  const files = ctx.canEdit && typeof d.compose === 'string'
    ? filesPanel(base, d, () => etag, (next) => {
      d = next.data;
      etag = next.etag;
      drawHead();
      drawFacts();
      drawServices();
      readProxy();
      releases.load();
    })
    : null;

  mount(main, head, facts,
    h('section', { class: 'panel' },
      h('div', { class: 'panel-head' }, h('h2', { class: 'grow' }, 'Services'), updated),
      h('p', { class: 'muted' }, 'Each service\'s state and resource use, read again every 3 s.'),
      servicesBox),
    releases.el,
    h('section', { class: 'panel' }, proxyBox),
    logs.el,
    files && files.el);
  readProxy();
  logs.load();
  await releases.load();

  let ticking = false;
  const timer = setInterval(async () => {
    if (ticking || document.hidden || !alive) return;
    ticking = true;
    try { await refresh(); } finally { ticking = false; }
  }, DETAIL_REFRESH_MS);
  // The proxy status changes only with the configuration: read less often.
  const proxyTimer = setInterval(() => { if (!document.hidden && alive) readProxy(); }, DETAIL_REFRESH_MS * 5);
  return () => {
    alive = false;
    clearInterval(timer);
    clearInterval(proxyTimer);
    for (const c of cleanups) c();
  };
}

// ---------------------------------------------------------------------------
// Releases

/// Each start of new files is a release; when one fails, the server's text is
/// "release N of deployment X was dropped: <why>". The why alone.
function dropReason(e) {
  return String(e.message || '').replace(/^release \d+ of deployment \S+ was dropped: /, '');
}

/// Who serves now, said after a release was dropped.
function stillServes(d) {
  return d.instance ? `Release ${d.instance.release} still serves.` : 'No release serves the deployment now.';
}

/// The releases panel: the deployment's releases, newest first, with their
/// state, times, strategy, the error of a failed one and the release a rollback
/// restored; for operators, each one's files on demand and a rollback to each
/// earlier release that served (confirmed first). A rollback's failure is told
/// in the panel with the server's reason. `current()` is the deployment as the
/// page last read it; `onChanged()` reads it again after a rollback changed its
/// files.
function releasesPanel(base, ctx, current, onChanged) {
  const box = h('div', { class: 'table-wrap', id: 'deployment-releases' });
  const error = h('div', { class: 'form-error', id: 'releases-error', role: 'alert', tabindex: '-1' });
  const status = h('span', { class: 'muted', id: 'releases-status' });
  let items = null;
  let drawn = null;
  // The release a rollback to is under way, if any.
  let rolling = null;
  // The rows whose files are shown: number -> {files} | {error} | {} (reading).
  const open = new Map();
  let openSeq = 0;

  async function load(force = true) {
    try {
      const r = await get(`${base}/releases`);
      items = r.items;
      if (rolling === null) mount(status);
      draw(force);
    } catch (e) {
      // A deployment gone is the page's to tell.
      if (e.status !== 404) mount(status, h('span', { class: 'error-text' }, `Cannot read the releases: ${e.message}`));
    }
  }

  function draw(force = true) {
    if (!items) return;
    const d = current();
    const key = JSON.stringify([items, d.release, d.desired, Boolean(d.instance), rolling, openSeq]);
    if (!force && key === drawn) return;
    drawn = key;
    const serving = d.release;
    const canRollBack = (r) => ctx.canEdit && r.live_at && r.number < serving;
    const columns = [
      { label: 'Release', render: (r) => [h('strong', {}, `#${r.number}`),
        r.number === serving && d.instance ? [' ', badge('serving', 'ok')] : null] },
      { label: 'State', render: (r) => {
        const b = badge(r.state, RELEASE_KIND[r.state] || 'muted');
        b.dataset.state = r.state;
        return b;
      } },
      { label: 'Version', class: 'num', render: (r) => String(r.version) },
      { label: 'Strategy', class: 'nowrap', render: (r) => r.strategy },
      { label: 'Started', class: 'nowrap', render: (r) => time(r.created_at) },
      { label: 'Live', class: 'nowrap', render: (r) => time(r.live_at) },
      { label: 'Ended', class: 'nowrap', render: (r) => time(r.ended_at) },
      { label: 'Notes', class: 'notes', render: (r) => h('div', { class: 'release-notes' },
        r.rollback_of ? h('span', { class: 'release-rollback-of' }, `rollback of #${r.rollback_of}`) : null,
        r.error ? h('span', { class: 'error-text release-error' }, r.error) : null,
        !r.rollback_of && !r.error ? h('span', { class: 'muted' }, '—') : null) },
    ];
    if (ctx.canEdit) {
      columns.push({ label: h('span', { class: 'sr-only' }, 'Actions'), class: 'actions', render: (r) => [
        h('button', { type: 'button', class: 'small release-files-toggle', 'aria-expanded': String(open.has(r.number)),
          onclick: () => toggleFiles(r.number) },
        open.has(r.number) ? 'Hide files' : 'Files', h('span', { class: 'sr-only' }, ` of release ${r.number}`)),
        canRollBack(r) ? [' ', h('button', { type: 'button', class: 'small release-rollback', disabled: rolling !== null,
          onclick: () => rollback(r) },
        rolling === r.number ? 'Rolling back…' : 'Roll back to this release',
        h('span', { class: 'sr-only' }, ` (release ${r.number})`))] : null,
      ] });
    }
    const t = table(columns, items, {
      empty: 'No releases yet: one is made each time the deployment starts with new files.',
      rowAttrs: (r) => ({ dataset: { release: String(r.number), state: r.state } }),
    });
    if (t.tagName === 'TABLE') {
      for (const [n, shown] of open) {
        const tr = t.querySelector(`tbody tr[data-release="${n}"]`);
        if (tr) tr.after(filesRow(n, shown, columns.length));
      }
    }
    mount(box, stack(t));
  }

  function filesRow(n, shown, span) {
    let body;
    if (shown.error) body = h('p', { class: 'error-text' }, `Cannot read the files of release ${n}: ${shown.error}`);
    else if (!shown.files) body = h('p', { class: 'muted' }, 'Reading the files…');
    else {
      const f = shown.files;
      const file = (name, text, digest) => h('figure', { dataset: { file: name } },
        h('figcaption', {}, `${name}.yml `, h('span', { class: 'muted', title: `sha256 ${digest}` },
          `sha256 ${digest.slice(0, 12)}…`)),
        text ? h('pre', { class: 'mono' }, text) : h('p', { class: 'muted' }, 'empty'));
      body = h('div', { class: 'release-files' },
        file('compose', f.compose, f.compose_sha256), file('service', f.service, f.service_sha256));
    }
    return h('tr', { class: 'release-files-row', dataset: { filesOf: String(n) } },
      h('td', { colspan: String(span), dataset: { label: '' } }, body));
  }

  async function toggleFiles(n) {
    if (open.has(n)) {
      open.delete(n);
      openSeq++;
      draw();
      return;
    }
    open.set(n, {});
    openSeq++;
    draw();
    let shown;
    try {
      // A release's files never change: read once.
      shown = { files: await get(`${base}/releases/${n}`) };
    } catch (e) {
      shown = { error: e.message };
    }
    if (!open.has(n)) return;
    open.set(n, shown);
    openSeq++;
    draw();
  }

  function showError(n, e) {
    let text;
    if (e.code === 'RELEASE_FAILED') {
      const made = e.details.release ? `release ${e.details.release}, made from its files,` : 'the release made from its files';
      text = `The rollback to release ${n} was dropped: ${made} did not become ready. ${stillServes(current())} `
        + `${e.details.saved ? `The deployment's files are now those of release ${n}. ` : ''}Reason: ${dropReason(e)}`;
    } else if (e.code === 'NO_ROLLBACK') {
      text = `Nothing to roll back to: ${e.message}.`;
    } else {
      text = `Cannot roll back to release ${n}: ${e.message}.`;
    }
    error.dataset.code = e.code || String(e.status);
    mount(error, text);
    error.focus();
  }

  async function rollback(r) {
    if (rolling !== null) return;
    const d = current();
    const what = 'its files (command or image, environment, domains, certificate) become the deployment\'s again';
    const message = d.desired === 'running'
      ? `Roll back ${d.name} to release ${r.number}? ${what[0].toUpperCase()}${what.slice(1)} and start as a new `
        + `release; ${d.instance ? `release ${d.instance.release}` : 'the release serving'} serves until that one `
        + 'is ready, and serves on if it does not become ready.'
      : `Roll back ${d.name} to release ${r.number}? ${what[0].toUpperCase()}${what.slice(1)}; the deployment `
        + 'is stopped, so they serve when it starts.';
    if (!await confirm(message, { action: 'Roll back' })) return;
    rolling = r.number;
    mount(error);
    delete error.dataset.code;
    mount(status, `Rolling back to release ${r.number}…`);
    draw();
    try {
      const after = await post(`${base}/rollback`, { release: r.number });
      mount(status);
      toast(after.desired === 'running'
        ? `Rolled back: release ${after.release} serves the files of release ${r.number}.`
        : `The files of release ${r.number} are the deployment's again; they serve when it starts.`);
      await onChanged();
    } catch (e) {
      mount(status);
      // Saved, though not served: the page shows the files now in force.
      if (e.details && e.details.saved) await onChanged();
      showError(r.number, e);
    } finally {
      rolling = null;
      await load();
    }
  }

  const el = h('section', { class: 'panel', id: 'deployment-releases-panel' },
    h('div', { class: 'panel-head' }, h('h2', { class: 'grow' }, 'Releases'), status),
    h('p', { class: 'muted' }, 'Each start of new files is a release; the one serving is replaced only once the new '
      + 'one is ready.', ctx.canEdit ? ' Rolling back makes an earlier release\'s files the deployment\'s again, '
      + 'started as a new release.' : ''),
    error,
    box);
  return { el, load, draw };
}

// ---------------------------------------------------------------------------
// Files

/// The files editor: both files, saved with If-Match (a running deployment
/// starts them as a new release). `etagNow()` is the version the page last
/// read; `onSaved({data, etag})` tells the page of the saved deployment.
/// Returns {el, reload({keepEdits})}: `reload` shows the current files (with
/// `keepEdits`, only when the editors hold no change of the user's, and the
/// form's message of an earlier save cleared).
function filesPanel(base, d, etagNow, onSaved) {
  const editors = {
    compose: codeEditor({ name: 'compose', label: 'compose.yml', value: d.compose, rows: 14 }),
    service: codeEditor({ name: 'service', label: 'service.yml', value: d.service, rows: 8 }),
  };
  // The version the editors show: a save must not overwrite a newer one.
  let shown = etagNow();
  // The files as read or saved, to tell the user's edits.
  let loaded = { compose: d.compose, service: d.service };
  const edited = () => editors.compose.area.value !== loaded.compose
    || editors.service.area.value !== loaded.service;
  const save = h('button', { type: 'submit', class: 'primary', id: 'files-save' }, 'Save');
  const form = h('form', { id: 'deployment-files', novalidate: true },
    h('div', { class: 'form-error', role: 'alert' }),
    editors.compose.el, editors.service.el,
    h('div', { class: 'form-actions' }, save,
      h('span', { class: 'muted' }, d.desired !== 'running'
        ? 'The deployment is stopped; the new files are used when it starts.'
        : d.strategy === 'recreate'
          ? 'Saving starts the new files as a new release; with recreate, the running instance stops first.'
          : 'Saving starts the new files as a new release; the one serving serves until it is ready, and serves on '
            + 'if it does not become ready.')));

  /// Reads the current files into the editors; resolves to the deployment.
  async function reload({ keepEdits = false } = {}) {
    if (keepEdits && edited()) return null;
    const r = await getVersioned(base);
    // Changed elsewhere (a rollback): what the form said of an earlier save
    // is no longer about the files shown.
    if (keepEdits) clearErrors(form);
    editors.compose.area.value = r.data.compose;
    editors.service.area.value = r.data.service;
    editors.compose.clear();
    editors.service.clear();
    loaded = { compose: r.data.compose, service: r.data.service };
    shown = r.etag;
    onSaved(r);
    return r.data;
  }

  form.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    clearErrors(form);
    editors.compose.clear();
    editors.service.clear();
    save.disabled = true;
    try {
      const r = await api('PUT', base, { compose: editors.compose.area.value, service: editors.service.area.value },
        { etag: shown, raw: true });
      const data = await r.json();
      shown = r.headers.get('etag');
      loaded = { compose: data.compose, service: data.service };
      toast(data.desired === 'running' ? `Files saved; release ${data.release} serves them.` : 'Files saved.');
      onSaved({ data, etag: shown });
    } catch (e) {
      if (showProblems(form, editors, e)) return;
      if (e.status === 412) {
        form.querySelector('.form-error').textContent = 'These files were changed by someone else after you opened '
          + 'them, so yours were not saved. The current files are loaded now: make your change again.';
        try { await reload(); } catch (e2) { toast(`Cannot read the current files: ${e2.message}`, 'bad'); }
        return;
      }
      if (e.details && e.details.saved) {
        let now = null;
        try { now = await reload(); } catch { /* the page's next reading shows it */ }
        const box = form.querySelector('.form-error');
        if (e.code === 'RELEASE_FAILED') {
          // Saved, but the release made from them did not become ready: it was
          // dropped, and what served before serves on.
          const serves = now ? ` ${stillServes(now)}` : '';
          box.textContent = `The files were saved, but their new release${e.details.release ? ` ${e.details.release}` : ''} `
            + `was dropped: it did not become ready.${serves} Reason: ${dropReason(e)}`;
        } else {
          // Saved, but it could not start again.
          box.textContent = `Saved, but the deployment could not start: ${e.message}`;
        }
        return;
      }
      showErrors(form, e);
    } finally {
      save.disabled = false;
    }
  });
  const el = h('section', { class: 'panel', id: 'deployment-files-panel' },
    h('h2', {}, 'Files'),
    h('p', { class: 'muted' }, 'Checked when saved: each problem is listed under its file and its line marked.'),
    form);
  return { el, reload };
}

// ---------------------------------------------------------------------------
// Logs

/// Reads a server-sent events response body, calling `onEvent(type, data)` for
/// each event. fetch() rather than EventSource: EventSource reconnects by itself
/// to the same address (which would send the tail again) and hides the HTTP
/// status of a refusal.
async function readEvents(response, onEvent) {
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buf = '';
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buf += value;
    let end;
    while ((end = buf.indexOf('\n\n')) >= 0) {
      const block = buf.slice(0, end);
      buf = buf.slice(end + 2);
      let type = 'message';
      const data = [];
      for (const raw of block.split('\n')) {
        const line = raw.replace(/\r$/, '');
        if (!line || line.startsWith(':')) continue;
        const colon = line.indexOf(':');
        const key = colon < 0 ? line : line.slice(0, colon);
        const val = colon < 0 ? '' : line.slice(colon + 1).replace(/^ /, '');
        if (key === 'event') type = val;
        else if (key === 'data') data.push(val);
      }
      if (data.length) onEvent(type, data.join('\n'));
    }
  }
}

function clock(ms) {
  const t = new Date(ms);
  const p = (n, w = 2) => String(n).padStart(w, '0');
  return `${p(t.getHours())}:${p(t.getMinutes())}:${p(t.getSeconds())}.${p(t.getMilliseconds(), 3)}`;
}

function logsPanel(base, d) {
  const out = h('div', { class: 'log-lines mono', id: 'deployment-logs', role: 'log', tabindex: '0',
    'aria-label': 'Log lines' });
  const status = h('span', { class: 'muted', id: 'logs-status' });
  const service = h('select', { id: 'logs-service', 'aria-label': 'Service' },
    h('option', { value: '' }, 'All services'),
    d.services.map((s) => h('option', { value: s.name }, s.name)));
  const tail = h('input', { id: 'logs-tail', type: 'number', min: 0, max: 10000, step: 1, value: '200',
    'aria-label': 'Lines to show', class: 'tail' });
  const followBtn = h('button', { type: 'button', id: 'logs-follow', 'aria-pressed': 'false' }, 'Follow');
  const reloadBtn = h('button', { type: 'button', id: 'logs-reload' }, 'Reload');
  const clearBtn = h('button', { type: 'button', id: 'logs-clear' }, 'Clear');

  let following = false;
  let controller = null;
  let retryTimer = null;
  // The newest line's time, and the lines at that time (a reconnection asks for
  // lines since then and skips those already shown).
  let lastAt = null;
  let atLast = new Set();
  let pending = [];
  let flushTimer = null;

  function query(extra) {
    const q = new URLSearchParams();
    if (service.value) q.set('service', service.value);
    for (const [k, v] of Object.entries(extra)) q.set(k, v);
    return `${base}/logs?${q}`;
  }

  function tailCount() {
    const n = Number(tail.value);
    return Number.isInteger(n) && n >= 0 && n <= 10000 ? n : 200;
  }

  function note(text, kind = 'fleetgate') {
    push({ at: Date.now(), service: '', stream: kind, line: text, note: true });
  }

  function push(line) {
    if (!line.note) {
      if (lastAt !== null && line.at < lastAt) return;
      const key = `${line.service}\u0000${line.stream}\u0000${line.line}`;
      if (line.at === lastAt) {
        if (atLast.has(key)) return;
        atLast.add(key);
      } else {
        lastAt = line.at;
        atLast = new Set([key]);
      }
    }
    pending.push(line);
    // Lines arrive in bursts: drawn together, at most every 60 ms.
    if (!flushTimer) flushTimer = setTimeout(flush, 60);
  }

  function flush() {
    flushTimer = null;
    if (!pending.length) return;
    const atBottom = out.scrollHeight - out.scrollTop - out.clientHeight < 24;
    const frag = document.createDocumentFragment();
    for (const l of pending.splice(0, pending.length).slice(-MAX_LOG_LINES)) {
      frag.append(h('div', { class: `log-line ${l.stream}${l.note ? ' note' : ''}`, dataset: { stream: l.stream, service: l.service } },
        h('span', { class: 'log-time' }, clock(l.at)),
        l.service ? h('span', { class: 'log-service' }, l.service) : null,
        h('span', { class: 'log-text' }, l.line)));
    }
    out.append(frag);
    while (out.childElementCount > MAX_LOG_LINES) out.firstElementChild.remove();
    if (atBottom) out.scrollTop = out.scrollHeight;
  }

  function reset() {
    clearTimeout(flushTimer);
    flushTimer = null;
    pending = [];
    lastAt = null;
    atLast = new Set();
    mount(out);
  }

  async function load() {
    stopFollowing();
    reset();
    mount(status, 'Reading…');
    try {
      const r = await get(query({ tail: tailCount() }));
      for (const l of r.items) push(l);
      flush();
      out.scrollTop = out.scrollHeight;
      mount(status, r.items.length ? `The last ${r.items.length} lines.` : 'No lines yet.');
    } catch (e) {
      mount(status, h('span', { class: 'error-text' }, `Cannot read the logs: ${e.message}`));
    }
  }

  async function connect(first) {
    controller = new AbortController();
    const mine = controller;
    const params = { follow: 'true' };
    if (first || lastAt === null) params.tail = tailCount();
    else { params.since = String(lastAt); params.tail = 10000; }
    try {
      const r = await fetch(query(params), { headers: { accept: 'text/event-stream' }, credentials: 'same-origin',
        signal: mine.signal });
      if (!r.ok) {
        let b = null;
        try { b = await r.json(); } catch { b = { error: `${r.status} ${r.statusText}` }; }
        throw new ApiError(r.status, b);
      }
      mount(status, h('span', { class: 'live' }, 'Following: new lines appear as they are written.'));
      await readEvents(r, (type, data) => {
        if (type === 'log') {
          try { push(JSON.parse(data)); } catch { /* not a line */ }
        } else if (type === 'lagged') {
          let n = '';
          try { n = JSON.parse(data).missed; } catch { /* unknown */ }
          note(`… ${n} lines were missed: the page fell behind.`);
        }
      });
      if (mine !== controller || !following) return;
      // The server ended the stream (it restarted, say): follow again from here.
      mount(status, 'The stream ended; following again…');
    } catch (e) {
      if (mine !== controller || !following || e.name === 'AbortError') return;
      if (e instanceof ApiError && e.status >= 400 && e.status < 500) {
        mount(status, h('span', { class: 'error-text' }, `Cannot follow the logs: ${e.message}`));
        setFollowing(false);
        return;
      }
      mount(status, h('span', { class: 'error-text' }, `The stream broke (${e.message}); following again in 2 s…`));
    }
    retryTimer = setTimeout(() => { if (following && mine === controller) connect(false); }, 2000);
  }

  function stopFollowing() {
    clearTimeout(retryTimer);
    retryTimer = null;
    if (controller) controller.abort();
    controller = null;
    setFollowing(false);
  }

  function setFollowing(on) {
    following = on;
    followBtn.setAttribute('aria-pressed', String(on));
    followBtn.classList.toggle('primary', on);
    followBtn.textContent = on ? 'Following' : 'Follow';
    followBtn.setAttribute('aria-label', 'Follow');
    reloadBtn.disabled = on;
  }

  function startFollowing() {
    stopFollowing();
    reset();
    setFollowing(true);
    mount(status, 'Connecting…');
    connect(true);
  }

  followBtn.addEventListener('click', () => {
    if (following) {
      stopFollowing();
      mount(status, 'Stopped following.');
    } else startFollowing();
  });
  reloadBtn.addEventListener('click', load);
  clearBtn.addEventListener('click', () => { clearTimeout(flushTimer); flushTimer = null; pending = []; mount(out); });
  // A new filter or tail applies at once, to what is followed too.
  const again = () => (following ? startFollowing() : load());
  service.addEventListener('change', again);
  tail.addEventListener('change', again);

  const el = h('section', { class: 'panel', id: 'deployment-logs-panel' },
    h('div', { class: 'panel-head' }, h('h2', { class: 'grow' }, 'Logs'), status),
    h('div', { class: 'toolbar log-tools' },
      h('label', { class: 'inline' }, 'Service ', service),
      h('label', { class: 'inline' }, 'Lines ', tail),
      followBtn, reloadBtn, clearBtn,
      h('span', { class: 'log-legend muted' },
        h('span', { class: 'log-key stdout' }, 'stdout'), h('span', { class: 'log-key stderr' }, 'stderr'),
        h('span', { class: 'log-key fleetgate' }, 'fleetgate'))),
    out,
    h('p', { class: 'muted small' }, `At most ${MAX_LOG_LINES} lines are kept here; older ones are dropped.`));
  return { el, load, stop: stopFollowing };
}
