// The dashboard shell: sign-in, the navigation, and the views addressed by the URL
// fragment (#/routes, #/routes/edit/api, ...). Each view module exports
// `render(main, ctx, params)` and may return a function that stops its live parts.

import { api, ApiError, get, post } from './api.js';
import { h, mount, field, values, showErrors, toast } from './ui.js';
import { stop as stopLive } from './live.js';
import { installSearchKey, openSearch } from './search.js';

const VIEWS = [
  { path: 'overview', label: 'Overview', module: './pages/overview.js' },
  { path: 'routes', label: 'Routes', module: './pages/routes.js' },
  { path: 'upstreams', label: 'Upstreams', module: './pages/upstreams.js' },
  { path: 'breakers', label: 'Breakers & limits', module: './pages/breakers.js' },
  { path: 'redirects', label: 'Redirects & pages', module: './pages/redirects.js' },
  { path: 'nodes', label: 'Nodes', module: './pages/nodes.js' },
  { path: 'tunnels', label: 'Tunnels', module: './pages/tunnels.js' },
  { path: 'deployments', label: 'Deployments', module: './pages/deployments.js' },
  { path: 'ai', label: 'AI', module: './pages/ai.js' },
  { path: 'events', label: 'Events', module: './pages/events.js' },
  { path: 'incidents', label: 'Incidents', module: './pages/incidents.js' },
  { path: 'alert-rules', label: 'Alert rules', module: './pages/alert-rules.js' },
  { path: 'webhooks', label: 'Webhooks', module: './pages/webhooks.js' },
  { path: 'revisions', label: 'Revisions', module: './pages/revisions.js' },
  { path: 'certificates', label: 'Certificates', module: './pages/certificates.js' },
  { path: 'audit', label: 'Audit log', module: './pages/audit.js' },
  { path: 'backups', label: 'Backup & restore', module: './pages/backups.js', min: 'admin' },
  { path: 'settings', label: 'Settings', module: './pages/settings.js' },
  { path: 'keys', label: 'API keys', module: './pages/keys.js' },
  { path: 'users', label: 'Users', module: './pages/users.js', min: 'admin' },
];

const state = { user: null, role: null, cleanup: null, instance: null };

function canEdit(role) {
  return role && role !== 'viewer';
}

function atLeast(role, wanted) {
  const order = ['viewer', 'operator', 'admin', 'super_admin'];
  return order.indexOf(role) >= order.indexOf(wanted);
}

// The colour theme: the system's (auto), or light or dark as chosen here,
// remembered by this browser.
const THEMES = ['auto', 'dark', 'light'];

function theme() {
  const t = localStorage.getItem('fg-theme');
  return THEMES.includes(t) ? t : 'auto';
}

function applyTheme(t) {
  if (t === 'auto') document.documentElement.removeAttribute('data-theme');
  else document.documentElement.setAttribute('data-theme', t);
}

applyTheme(theme());

function themeButton() {
  const b = h('button', { type: 'button', class: 'theme-toggle small', id: 'theme-toggle' });
  const label = () => { b.textContent = `Theme: ${theme()}`; b.setAttribute('aria-label', `Colour theme: ${theme()} (change)`); };
  b.addEventListener('click', () => {
    const next = THEMES[(THEMES.indexOf(theme()) + 1) % THEMES.length];
    localStorage.setItem('fg-theme', next);
    applyTheme(next);
    label();
  });
  label();
  return b;
}

// One notice per burst of rate-limited calls, not one per call.
let limitedUntil = 0;

async function boot() {
  installSearchKey();
  window.addEventListener('fg:instance', (ev) => showInstance(ev.detail));
  window.addEventListener('fg:ratelimited', (ev) => {
    const now = Date.now();
    if (now < limitedUntil) return;
    limitedUntil = now + ev.detail.seconds * 1000;
    toast(`The API's rate limit was reached; retrying in ${ev.detail.seconds} s.`);
  });
  window.addEventListener('fg:unauthorized', () => {
    if (state.user !== null) {
      state.user = null;
      showLogin('Your session ended; sign in again.');
    }
  });
  try {
    // Answers whether this browser is signed in without a 401.
    const status = await get('/api/v1/auth/status');
    if (status.me) signedIn(status.me);
    else showLogin();
  } catch (e) {
    mount(document.getElementById('app'), h('p', { class: 'boot' }, `Fleetgate is not reachable: ${e.message}`));
  }
}

function showLogin(message) {
  stopView();
  const error = h('div', { class: 'form-error', role: 'alert' }, message || '');
  const form = h('form', { class: 'login', 'aria-label': 'Sign in' },
    h('h1', {}, h('img', { src: '/assets/favicon.svg', alt: '', width: 24, height: 24 }), 'Fleetgate'),
    error,
    field({ name: 'username', label: 'Username', autocomplete: 'username', required: true }),
    field({ name: 'password', label: 'Password', type: 'password', autocomplete: 'current-password', required: true }),
    h('button', { class: 'primary', type: 'submit' }, 'Sign in'));
  form.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    const v = values(form);
    try {
      await post('/api/v1/auth/login', { username: v.username, password: v.password });
      signedIn(await get('/api/v1/auth/me'));
    } catch (e) {
      showErrors(form, e.status === 401 ? new Error('Wrong username or password.') : e);
    }
  });
  mount(document.getElementById('app'), form);
  form.querySelector('input').focus();
}

async function signedIn(me) {
  state.user = me.user ? me.user.username : 'api key';
  state.role = me.role;
  try {
    state.instance = (await get('/api/v1/settings')).general.instance_name;
  } catch { state.instance = null; }
  renderShell();
  route();
}

/// The instance's name (settings: general.instance_name) in the brand and the
/// window title, when it is not the default.
function showInstance(name) {
  state.instance = name;
  const named = name && name !== 'fleetgate';
  document.title = named ? `${name} · Fleetgate` : 'Fleetgate';
  const brand = document.querySelector('.side .brand .name');
  if (brand) brand.textContent = named ? name : 'Fleetgate';
  const sub = document.querySelector('.side .brand .sub');
  if (sub) sub.hidden = !named;
}

function renderShell() {
  const nav = h('nav', { 'aria-label': 'Sections' },
    VIEWS.filter((v) => !v.hidden && (!v.min || atLeast(state.role, v.min)))
      .map((v) => h('a', { href: `#/${v.path}`, dataset: { view: v.path } }, v.label)));
  const side = h('aside', { class: 'side' },
    h('div', { class: 'brand' }, h('img', { src: '/assets/favicon.svg', alt: '' }),
      h('span', { class: 'brand-text' }, h('span', { class: 'name' }, 'Fleetgate'), h('span', { class: 'sub', hidden: true }, 'Fleetgate'))),
    h('button', { class: 'menu-toggle small', type: 'button', 'aria-label': 'Menu',
      onclick: () => side.classList.toggle('open') }, 'Menu'),
    h('button', { type: 'button', class: 'search-open small', id: 'search-open', onclick: () => openSearch(),
      title: 'Search everything (press /)' }, 'Search', h('kbd', {}, '/')),
    nav,
    h('a', { class: 'api-docs', href: '/api/v1/docs', target: '_blank', rel: 'noopener' }, 'API reference ↗'),
    h('div', { class: 'who' },
      h('div', {}, 'Signed in as ', h('strong', { id: 'who-user' }, state.user)),
      h('div', {}, 'Role: ', h('span', { id: 'who-role' }, state.role)),
      h('button', { type: 'button', id: 'logout', onclick: logout }, 'Sign out'),
      themeButton()));
  nav.addEventListener('click', () => side.classList.remove('open'));
  mount(document.getElementById('app'),
    h('a', { class: 'skip', href: '#main' }, 'Skip to content'),
    h('div', { class: 'shell' }, side, h('main', { id: 'main', tabindex: '-1' })));
  showInstance(state.instance);
}

async function logout() {
  try { await api('POST', '/api/v1/auth/logout'); } catch { /* the session may be gone already */ }
  state.user = null;
  stopLive();
  showLogin('Signed out.');
}

function stopView() {
  if (typeof state.cleanup === 'function') {
    try { state.cleanup(); } catch { /* nothing to do */ }
  }
  state.cleanup = null;
}

async function route() {
  if (state.user === null) return;
  // A view may keep its filters after a `?` (#/audit?actor=admin).
  const raw = location.hash.replace(/^#\/?/, '').split('?')[0] || 'overview';
  const parts = raw.split('/').map(decodeURIComponent);
  const view = VIEWS.find((v) => v.path === parts[0]) || VIEWS[0];
  for (const a of document.querySelectorAll('.side nav a')) {
    if (a.dataset.view === view.path) a.setAttribute('aria-current', 'page');
    else a.removeAttribute('aria-current');
  }
  stopView();
  const main = document.getElementById('main');
  if (!main) return;
  // Each visit renders into its own container: a slower view that was left
  // before it finished renders into a detached element, not over the next one.
  const container = h('div', { class: 'view' }, h('p', { class: 'empty' }, 'Loading…'));
  mount(main, container);
  const ctx = { user: state.user, role: state.role, canEdit: canEdit(state.role),
    atLeast: (r) => atLeast(state.role, r) };
  const token = Symbol('view');
  state.token = token;
  try {
    const mod = await import(view.module);
    const cleanup = await mod.render(container, ctx, parts.slice(1));
    if (state.token === token) state.cleanup = cleanup;
    else if (typeof cleanup === 'function') cleanup();
  } catch (e) {
    if (e instanceof ApiError && e.status === 401) return;
    mount(container, h('h1', {}, view.label), h('div', { class: 'form-error', role: 'alert' }, e.message || String(e)));
  }
}

window.addEventListener('hashchange', route);
boot();
