// Users (#/users, admins and up): the list, create, edit (role, disabled, profile,
// password reset), delete, and what each role may do.

import { get, post, put, del, enc } from '../api.js';
import { h, mount, table, field, values, badge, time, toast, attempt, confirm } from '../ui.js';
import { formDialog, pager, etagOf, stack } from '../widgets.js';

const ROLES = [
  ['viewer', 'Viewer', 'Sees everything in the dashboard and the API; changes nothing.'],
  ['operator', 'Operator', 'Runs the edge day to day: routes, upstreams, redirects and pages (and publishing them), '
    + 'project tokens, acknowledging events, webhook tests and redelivery, their own API keys.'],
  ['admin', 'Admin', 'Everything an operator does, plus users (except super admins), settings, webhooks, '
    + 'certificates, namespaces and projects, backups, configuration import and rollback.'],
  ['super_admin', 'Super admin', 'Everything, including managing other super admins.'],
];
const LIMIT = 50;

function roleBadge(role) {
  return badge(role, { super_admin: 'bad', admin: 'warn', operator: 'info' }[role] || 'muted');
}

export async function render(main, ctx) {
  const superAdmin = ctx.role === 'super_admin';
  const manageable = (role) => superAdmin || role !== 'super_admin';
  const roleOptions = ROLES.filter(([r]) => manageable(r)).map(([r, label]) => [r, label]);
  const box = h('div', { class: 'table-wrap', id: 'users' });
  const pagerBox = h('div');
  let offset = 0;

  async function load() {
    const r = await get(`/api/v1/users?limit=${LIMIT}&offset=${offset}`);
    const cols = [
      { label: 'User', render: (u) => [h('strong', {}, u.username),
        u.username === ctx.user ? h('span', { class: 'muted' }, ' (you)') : null,
        u.display_name ? h('div', { class: 'muted' }, u.display_name) : null] },
      { label: 'Email', class: 'hide-narrow', render: (u) => u.email || '—' },
      { label: 'Role', render: (u) => roleBadge(u.role) },
      { label: 'State', render: (u) => (u.disabled ? badge('disabled', 'bad') : badge('active', 'ok')) },
      { label: 'Last sign-in', class: 'hide-narrow', render: (u) => (u.last_login_at ? time(u.last_login_at) : h('span', { class: 'muted' }, 'never')) },
    ];
    if (ctx.canEdit) {
      cols.push({ label: 'Actions', class: 'actions', render: (u) => (manageable(u.role) ? [
        h('button', { type: 'button', class: 'small', 'aria-label': `Edit ${u.username}`, onclick: () => edit(u) }, 'Edit'),
        ' ',
        u.username === ctx.user ? null : h('button', { type: 'button', class: 'small danger', 'aria-label': `Delete ${u.username}`,
          onclick: () => remove(u) }, 'Delete'),
      ] : h('span', { class: 'muted' }, 'super admins only')) });
    }
    mount(box, stack(table(cols, r.items, { empty: 'No users.', rowAttrs: (u) => ({ dataset: { username: u.username } }) })));
    mount(pagerBox, pager(r.total, offset, LIMIT, (o) => { offset = o; load(); }));
  }

  async function create() {
    const created = await formDialog('New user', [
      h('div', { class: 'form-grid' },
        field({ name: 'username', label: 'Username', required: true, autocomplete: 'off',
          help: '1 to 64 characters of A-Z, a-z, 0-9, _ . @ -' }),
        field({ name: 'role', label: 'Role', type: 'select', value: 'viewer', options: roleOptions }),
        field({ name: 'password', label: 'Password', type: 'password', required: true, autocomplete: 'new-password',
          help: '8 to 256 characters. Tell the user to change it.' }),
        field({ name: 'display_name', label: 'Display name' }),
        field({ name: 'email', label: 'Email', type: 'email', wide: true })),
    ], (form) => {
      const v = values(form);
      const body = { username: v.username.trim(), password: v.password, role: v.role };
      if (v.display_name.trim()) body.display_name = v.display_name.trim();
      if (v.email.trim()) body.email = v.email.trim();
      return post('/api/v1/users', body);
    }, { submit: 'Create user' });
    if (created) { toast(`User ${created.username} created.`); load(); }
  }

  async function edit(u) {
    const self = u.username === ctx.user;
    const fields = [
      h('div', { class: 'form-grid' },
        field({ name: 'role', label: 'Role', type: 'select', value: u.role, options: roleOptions,
          help: self ? 'Lowering your own role takes effect at once.' : undefined }),
        field({ name: 'display_name', label: 'Display name', value: u.display_name }),
        field({ name: 'email', label: 'Email', type: 'email', value: u.email || '' }),
        field({ name: 'password', label: 'New password', type: 'password', autocomplete: 'new-password',
          help: 'Leave empty to keep the current password.' }),
        field({ name: 'disabled', label: 'Disabled', type: 'checkbox', value: u.disabled, wide: true,
          help: 'A disabled user cannot sign in, and their API keys stop working.' })),
    ];
    const saved = await formDialog(`Edit ${u.username}`, fields, (form) => {
      const v = values(form);
      const body = { role: v.role, display_name: v.display_name.trim(), disabled: v.disabled,
        email: v.email.trim() ? v.email.trim() : null };
      if (v.password) body.password = v.password;
      return put(`/api/v1/users/${enc(u.id)}`, body, { etag: etagOf(u.version) });
    });
    if (saved) { toast(`User ${saved.username} saved.`); load(); }
  }

  async function remove(u) {
    if (!await confirm(`Delete user ${u.username}? Their sessions end and their API keys are revoked.`, { action: 'Delete user' })) return;
    if (await attempt(() => del(`/api/v1/users/${enc(u.id)}`, { etag: etagOf(u.version) }), `User ${u.username} deleted.`) !== undefined) load();
  }

  mount(main,
    h('div', { class: 'toolbar' }, h('h1', { class: 'grow' }, 'Users'),
      ctx.canEdit ? h('button', { type: 'button', class: 'primary', id: 'new-user', onclick: create }, 'New user') : null),
    h('section', { class: 'panel' }, box, pagerBox),
    h('section', { class: 'panel roles', id: 'roles' },
      h('h2', {}, 'Roles'),
      h('dl', { class: 'role-list' }, ROLES.map(([r, label, text]) => [
        h('dt', {}, roleBadge(r), ' ', label), h('dd', {}, text)]))));
  await load();
}

