// API keys (#/keys): the caller's keys (every key for admins), a new key shown
// exactly once with a copy button, and revocation.

import { get, post, del, enc, getAll } from '../api.js';
import { h, mount, table, field, values, badge, time, toast, attempt, confirm } from '../ui.js';
import { formDialog, showSecret, stack } from '../widgets.js';

const ROLES = ['viewer', 'operator', 'admin', 'super_admin'];
const LIMIT = 50;

export async function render(main, ctx) {
  const box = h('div', { class: 'table-wrap', id: 'keys' });
  const mine = ctx.role;
  const myRank = ROLES.indexOf(mine);
  const admin = ctx.atLeast('admin');
  let owners = new Map();
  if (admin) {
    try {
      owners = new Map((await getAll('/api/v1/users')).map((u) => [u.id, u.username]));
    } catch { /* the owner column shows ids */ }
  }

  async function load() {
    const r = await get(`/api/v1/api-keys?limit=${LIMIT}&offset=0`);
    const cols = [
      { label: 'Name', sort: (k) => k.name, render: (k) => h('strong', {}, k.name) },
      { label: 'Key', render: (k) => h('code', {}, `${k.prefix}…`) },
      { label: 'Role', sort: (k) => ROLES.indexOf(k.role), render: (k) => badge(k.role, 'muted') },
    ];
    if (admin) {
      cols.push({ label: 'Owner', class: 'hide-narrow', render: (k) => (k.user_id
        ? (owners.get(k.user_id) || k.user_id) : h('span', { class: 'muted' }, 'bootstrap')) });
    }
    cols.push(
      { label: 'Created', class: 'hide-narrow', sort: (k) => Date.parse(k.created_at), render: (k) => time(k.created_at) },
      { label: 'Last used', sort: (k) => (k.last_used_at ? Date.parse(k.last_used_at) : null), render: (k) => (k.last_used_at ? time(k.last_used_at) : h('span', { class: 'muted' }, 'never')) },
    );
    if (ctx.canEdit) {
      cols.push({ label: 'Actions', class: 'actions', render: (k) => (ROLES.indexOf(k.role) > myRank ? '' : h('button', {
        type: 'button', class: 'small danger', 'aria-label': `Revoke key ${k.name}`,
        onclick: async () => {
          const extra = k.user_id ? '' : ' This is the bootstrap key from the server configuration.';
          if (!await confirm(`Revoke API key ${k.name} (${k.prefix}…)? Anything using it is refused from now on.${extra}`,
            { action: 'Revoke' })) return;
          if (await attempt(() => del(`/api/v1/api-keys/${enc(k.id)}`), `Key ${k.name} revoked.`) !== undefined) load();
        },
      }, 'Revoke')) });
    }
    mount(box, stack(table(cols, r.items, { empty: 'No API keys yet.' })),
      r.total > r.items.length ? h('p', { class: 'muted' }, `The first ${r.items.length} of ${r.total} keys are listed.`) : null);
  }

  async function create() {
    const created = await formDialog('New API key', [
      field({ name: 'name', label: 'Name', required: true, placeholder: 'ci-deploy',
        help: 'What the key is for; shown in the audit log.' }),
      field({ name: 'role', label: 'Role', type: 'select', value: mine,
        options: ROLES.slice(0, myRank + 1).map((r) => [r, r]),
        help: 'At most your own role. Prefer the least a script needs: viewer to read, operator to change routes and redirects.' }),
    ], (form) => post('/api/v1/api-keys', values(form)), { submit: 'Create key' });
    if (!created) return;
    await load();
    await showSecret(`API key ${created.name}`, 'API key', created.key,
      'this key is shown only now and cannot be shown again. Send it as "Authorization: Bearer <key>".');
  }

  mount(main,
    h('div', { class: 'toolbar' }, h('h1', { class: 'grow' }, 'API keys'),
      ctx.canEdit ? h('button', { type: 'button', class: 'primary', id: 'new-key', onclick: create }, 'New API key') : null),
    h('p', { class: 'muted intro' }, admin
      ? 'Every API key of this instance. A key acts with its own role, and stops working when its owner is disabled or deleted.'
      : 'Your API keys. A key acts with its role, which is at most yours.'),
    h('section', { class: 'panel' }, box));
  await load();
}
