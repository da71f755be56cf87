// Tunnels in the dashboard, against scripted nodes (two edges and a relay) that
// answer the manager's commands: a relay tunnel created in the UI (a field left
// empty and an address the API refuses are shown on their fields) reaches its
// nodes and goes active with each leg pushed, and shows what the entry edge
// reports of it live; the secrets never reach the page. A second tunnel on the
// same port and protocol is refused with the clash shown in the dialog; on UDP it
// is created, and the exit edge's refusal shows as that leg's error. Disable,
// enable, edit and delete reach the nodes; a node's page lists its tunnels. A
// direct tunnel's clash on the exit edge's address shows on that field. A viewer
// sees no controls; the views fit a phone's width.

import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { connectNode, launch, login, newPage, screenshot, startFleetgate, until } from '../lib/harness.mjs';

let fg; let browser;
const fleet = {};

/// A scripted node of `device_type`, registered and answering every command
/// with `verdict(command)` (success unless it says otherwise).
async function scripted(name, deviceType, verdict = () => true) {
  const created = await fg.api('POST', '/api/v1/nodes', { name, device_type: deviceType });
  const node = await connectNode(fg);
  const reply = await node.auth({ registration_token: created.registration_token, software_version: '0.5.3', protocol_version: 1 });
  assert.equal(reply.type, 'register_ack', JSON.stringify(reply));
  node.send('health', { status: 'ok', version: '0.5.3', uptime_secs: 0, active_flows: 0, total_flows: 0,
    api_addr: '127.0.0.1:8080', monitor_addr: null });
  node.answer(verdict);
  node.id = reply.payload.node_id;
  return node;
}

const actions = (node, type) => node.commands.filter((c) => c.action.type === type).map((c) => c.action);

before(async () => {
  [fg, browser] = await Promise.all([startFleetgate(), launch()]);
  fleet.entry = await scripted('edge-a', 'edge');
  // The exit edge refuses the tunnel named media-b.
  fleet.exit = await scripted('edge-b', 'edge', (c) => (
    c.action.type === 'create_tunnel' && c.action.tunnel.name === 'media-b' ? 'port 22 unreachable' : true));
  fleet.relay = await scripted('relay-1', 'relay');
});

after(async () => {
  for (const n of Object.values(fleet)) n.close();
  await browser?.close();
  await fg?.stop();
});

async function openNewTunnel(page) {
  await page.getByRole('button', { name: 'New tunnel' }).click();
  const dlg = page.getByRole('dialog', { name: 'New tunnel' });
  await dlg.waitFor();
  return dlg;
}

async function fillRelayTunnel(dlg, { name, protocol = 'tcp', port = '2222', relayAddr = 'relay.example:4433' }) {
  await dlg.getByLabel('Name', { exact: true }).fill(name);
  await dlg.getByLabel('Protocol').selectOption(protocol);
  await dlg.getByLabel('Mode').selectOption('relay');
  await dlg.getByLabel('Entry edge').selectOption(fleet.entry.id);
  await dlg.getByLabel('Listen port').fill(port);
  await dlg.getByLabel('Exit edge', { exact: true }).selectOption(fleet.exit.id);
  await dlg.getByLabel('Forward to').fill('127.0.0.1:22');
  await dlg.getByLabel('Relay node').selectOption(fleet.relay.id);
  await dlg.getByLabel('Relay address').fill(relayAddr);
}

const leg = (page, key) => page.locator(`#tunnel-legs tbody tr[data-leg="${key}"]`);

test('a relay tunnel created in the UI reaches its nodes; clash, refusal, disable, enable, edit and delete', async () => {
  const page = await newPage(browser);
  await login(page, fg);
  await page.goto(`${fg.url}/#/tunnels`);
  await page.getByText('No tunnels yet.').waitFor();
  assert.equal(await page.locator('.side nav a[data-view="tunnels"]').textContent(), 'Tunnels');

  let dlg = await openNewTunnel(page);
  // The mode shows the relay's fields or the exit edge's address, not both.
  await dlg.getByLabel('Mode').selectOption('direct');
  assert.ok(await dlg.getByLabel('Exit edge address').isVisible());
  assert.ok(!await dlg.getByLabel('Relay address').isVisible());
  assert.ok(!await dlg.getByLabel('Relay node').isVisible());
  await dlg.getByLabel('Mode').selectOption('relay');
  assert.ok(!await dlg.getByLabel('Exit edge address').isVisible());
  assert.ok(await dlg.getByLabel('Relay address').isVisible());

  // Empty: said next to the fields before anything is sent.
  await dlg.getByRole('button', { name: 'Create tunnel' }).click();
  await dlg.locator('[data-field="name"] .error', { hasText: 'a name is required' }).waitFor();
  await dlg.locator('[data-field="ingress_listen_port"] .error', { hasText: 'from 1 to 65535' }).waitFor();

  // An address the API refuses: its message on that field.
  await fillRelayTunnel(dlg, { name: 'ssh-b', relayAddr: 'relay.example' });
  await dlg.getByRole('button', { name: 'Create tunnel' }).click();
  const relayError = dlg.locator('[data-field="relay_addr"].invalid .error');
  await relayError.waitFor();
  assert.match(await relayError.textContent(), /not host:port/);
  assert.equal(await dlg.locator('[data-field="name"] .error').textContent(), '');
  await screenshot(page, 'tunnels-field-error');
  assert.equal((await fg.api('GET', '/api/v1/tunnels')).total, 0);

  // Corrected: created, and its page shows it going active as the nodes answer.
  await dlg.getByLabel('Relay address').fill('relay.example:4433');
  await dlg.getByRole('button', { name: 'Create tunnel' }).click();
  await page.waitForURL(/#\/tunnels\/[0-9a-f-]{36}$/);
  const id = page.url().split('/').pop();
  await page.locator('#tunnel-name', { hasText: 'ssh-b' }).waitFor();
  await page.locator('#tunnel-status', { hasText: 'active' }).waitFor({ timeout: 15_000 });
  for (const key of ['ingress', 'egress', 'relay']) {
    await leg(page, key).locator('.badge', { hasText: 'pushed' }).waitFor();
  }
  assert.equal(await page.locator('#tunnel-legs tbody tr').count(), 3);
  assert.match(await leg(page, 'ingress').textContent(), /edge-a/);
  assert.match(await leg(page, 'egress').textContent(), /edge-b/);
  assert.match(await leg(page, 'relay').textContent(), /relay-1/);
  const facts = await page.locator('.facts').textContent();
  assert.match(facts, /port 2222\/tcp/);
  assert.match(facts, /127\.0\.0\.1:22/);
  assert.match(facts, /relay\.example:4433/);

  // What the nodes were sent: the relay authorised it, each edge got its side.
  assert.equal(actions(fleet.relay, 'authorize_tunnel')[0].tunnel_id, id);
  const entrySide = actions(fleet.entry, 'create_tunnel')[0].tunnel;
  assert.equal(entrySide.direction, 'egress');
  assert.equal(entrySide.local_addr, '0.0.0.0:2222');
  assert.equal(actions(fleet.exit, 'create_tunnel')[0].tunnel.local_addr, '127.0.0.1:22');
  // The secrets are stated as never shown, and are not in the page.
  await page.locator('#tunnel-secrets', { hasText: 'never shown' }).waitFor();
  const html = await page.content();
  for (const secret of [entrySide.tunnel_bind_secret, entrySide.tunnel_encryption_key]) {
    assert.ok(secret && secret.length === 64, 'the edge got the secret');
    assert.ok(!html.includes(secret), 'a secret is in the page');
  }

  // The entry edge reports the tunnel: its live state shows with the next reading.
  fleet.entry.send('stats', { uptime_secs: 10, active_flows: 0, total_flows: 0, flows: [],
    tunnels: [{ id, state: 'connected' }] });
  await leg(page, 'ingress').getByText('connected').waitFor({ timeout: 12_000 });
  assert.match(await leg(page, 'egress').textContent(), /not reported/);
  await screenshot(page, 'tunnels-detail-active');

  // The same port and protocol on the same edge: the clash, named, in the dialog.
  await page.goto(`${fg.url}/#/tunnels`);
  const row = page.locator('#tunnels tbody tr', { hasText: 'ssh-b' });
  await row.locator('.badge', { hasText: 'active' }).waitFor();
  assert.match(await row.textContent(), /edge-a :2222 → edge-b/);
  assert.match(await row.textContent(), /relay-1/);
  assert.equal(await row.locator('.legs .badge').count(), 3);
  dlg = await openNewTunnel(page);
  await fillRelayTunnel(dlg, { name: 'media-b' });
  await dlg.getByRole('button', { name: 'Create tunnel' }).click();
  const clash = dlg.locator('[data-field="ingress_listen_port"].invalid .error');
  await clash.getByText('already listens').waitFor();
  const clashText = await clash.textContent();
  assert.match(clashText, /edge-a already listens on tcp port 2222 for tunnel ssh-b/);
  assert.ok(!clashText.includes(fleet.entry.id), 'the node is named, not its id');
  await clash.evaluate((el) => new Promise((resolve) => setTimeout(resolve, 300)));
  assert.ok(await dlg.getByLabel('Listen port').evaluate((el) => {
    const r = el.getBoundingClientRect();
    const d = el.closest('.dialog-body').getBoundingClientRect();
    return r.top >= d.top && r.bottom <= d.bottom;
  }), 'the port with the clash is scrolled into view');
  await screenshot(page, 'tunnels-clash');

  // On UDP it is another listener: created, and the exit edge's refusal shows.
  await dlg.getByLabel('Protocol').selectOption('udp');
  await dlg.getByRole('button', { name: 'Create tunnel' }).click();
  await page.waitForURL((u) => /#\/tunnels\/[0-9a-f-]{36}$/.test(u.hash) && !u.hash.endsWith(id));
  const mediaId = page.url().split('/').pop();
  await page.locator('#tunnel-status', { hasText: 'error' }).waitFor({ timeout: 15_000 });
  await leg(page, 'egress').locator('.push-error', { hasText: 'port 22 unreachable' }).waitFor();
  await leg(page, 'egress').locator('.badge', { hasText: 'failed' }).waitFor();
  await leg(page, 'ingress').locator('.badge', { hasText: 'pushed' }).waitFor();
  await page.locator('#tunnel-status-text', { hasText: 'refused' }).waitFor();
  await screenshot(page, 'tunnels-refused-leg');
  await page.goto(`${fg.url}/#/tunnels`);
  const mediaRow = page.locator('#tunnels tbody tr', { hasText: 'media-b' });
  await mediaRow.locator('.badge', { hasText: 'error' }).waitFor();
  const failed = mediaRow.locator('.legs .badge[data-leg="egress"]');
  assert.equal(await failed.textContent(), 'exit failed');
  assert.equal(await failed.getAttribute('title'), 'port 22 unreachable');
  assert.equal(await mediaRow.locator('.leg-error').textContent(), 'exit: port 22 unreachable');
  await screenshot(page, 'tunnels-list');

  // Disabled: withdrawn from the nodes; enabled: sent again, active again.
  await page.goto(`${fg.url}/#/tunnels/${id}`);
  await page.locator('#tunnel-status', { hasText: 'active' }).waitFor();
  await page.getByRole('button', { name: 'Disable' }).click();
  await page.getByRole('dialog').getByRole('button', { name: 'Disable' }).click();
  await page.locator('#tunnel-status', { hasText: 'disabled' }).waitFor();
  await leg(page, 'relay').getByText('not sent (disabled)').waitFor();
  await until('the relay to revoke it', () => actions(fleet.relay, 'revoke_tunnel').some((a) => a.tunnel_id === id));
  await until('the edges to delete it', () => [fleet.entry, fleet.exit]
    .every((n) => actions(n, 'delete_tunnel').some((a) => a.tunnel_id === id)));
  assert.equal((await fg.api('GET', `/api/v1/tunnels/${id}`)).enabled, false);
  const sentBefore = actions(fleet.entry, 'create_tunnel').length;
  await page.getByRole('button', { name: 'Enable' }).click();
  await page.locator('#tunnel-status', { hasText: 'active' }).waitFor({ timeout: 15_000 });
  assert.ok(actions(fleet.entry, 'create_tunnel').length > sentBefore, 'sent to the entry edge again');

  // Edited: the new port goes to the entry edge, and the tunnel is active again.
  await page.getByRole('button', { name: 'Edit' }).click();
  const edit = page.getByRole('dialog', { name: 'Edit ssh-b' });
  await edit.getByLabel('Listen port').fill('2223');
  await edit.getByRole('button', { name: 'Save' }).click();
  await edit.waitFor({ state: 'detached' });
  await page.locator('.facts', { hasText: 'port 2223/tcp' }).waitFor();
  await page.locator('#tunnel-status', { hasText: 'active' }).waitFor({ timeout: 15_000 });
  await until('the entry edge to get port 2223', () => actions(fleet.entry, 'create_tunnel')
    .some((a) => a.tunnel.id === id && a.tunnel.local_addr === '0.0.0.0:2223'));

  // Deleted: back to the list, the nodes told.
  await page.getByRole('button', { name: 'Delete' }).click();
  await page.getByRole('dialog').getByRole('button', { name: 'Delete' }).click();
  await page.waitForURL(/#\/tunnels$/);
  await page.locator('#tunnels tbody tr', { hasText: 'media-b' }).waitFor();
  assert.equal(await page.locator('#tunnels tbody tr', { hasText: 'ssh-b' }).count(), 0);
  const left = await fg.api('GET', '/api/v1/tunnels');
  assert.deepEqual(left.items.map((t) => t.id), [mediaId]);
  await until('the relay to revoke it again', () => actions(fleet.relay, 'revoke_tunnel')
    .filter((a) => a.tunnel_id === id).length >= 2);

  // A node's page lists the tunnels through it, linked.
  await page.goto(`${fg.url}/#/nodes/${fleet.relay.id}`);
  const through = page.locator(`#node-tunnels li[data-tunnel="${mediaId}"]`);
  await through.waitFor();
  assert.match(await through.textContent(), /media-b error relay/);
  await page.goto(`${fg.url}/#/nodes/${fleet.entry.id}`);
  await through.getByText('entry, port 2222/udp').waitFor();
  assert.equal(await page.locator('#node-tunnels li').count(), 1);
  await through.getByRole('link', { name: 'media-b' }).click();
  await page.waitForURL(new RegExp(`#/tunnels/${mediaId}$`));
  await page.locator('#tunnel-name', { hasText: 'media-b' }).waitFor();
  page.assertClean(['400', '409']);
  await page.context().close();
});

test('a viewer sees tunnels and their legs but no controls to change them', async () => {
  await fg.api('POST', '/api/v1/users', { username: 'watcher', password: 'Password-123', role: 'viewer' });
  const t = await fg.api('POST', '/api/v1/tunnels', { name: 'watched', protocol: 'tcp', mode: 'direct',
    ingress_node_id: fleet.entry.id, ingress_listen_port: 2400, egress_node_id: fleet.exit.id,
    egress_forward_addr: '127.0.0.1:8080', egress_peer_addr: '127.0.0.1:4434' });
  const page = await newPage(browser);
  await login(page, fg, 'watcher', 'Password-123');
  await page.goto(`${fg.url}/#/tunnels`);
  const row = page.locator('#tunnels tbody tr', { hasText: 'watched' });
  await row.waitFor();
  assert.match(await row.textContent(), /direct to 127\.0\.0\.1:4434/);
  assert.equal(await page.getByRole('button', { name: 'New tunnel' }).count(), 0);
  assert.equal(await page.locator('#tunnels button').count(), 0);
  await row.getByRole('link', { name: 'watched' }).click();
  await page.locator('#tunnel-status', { hasText: 'active' }).waitFor({ timeout: 15_000 });
  // Direct: two legs, no relay.
  assert.equal(await page.locator('#tunnel-legs tbody tr').count(), 2);
  await page.locator('#tunnel-secrets', { hasText: 'never shown' }).waitFor();
  assert.equal(await page.locator('main button').count(), 0, 'no buttons on the tunnel\'s page');
  // The API refuses anyway.
  const status = await page.evaluate(async (tid) => {
    const csrf = document.cookie.split('; ').find((c) => c.startsWith('csrf_token='))?.split('=')[1];
    const r = await fetch(`/api/v1/tunnels/${tid}`, { method: 'DELETE', headers: { 'x-csrf-token': decodeURIComponent(csrf || '') } });
    return r.status;
  }, t.id);
  assert.equal(status, 403);
  page.assertClean(['403']);
  await page.context().close();
});

test('a direct tunnel made in the UI: a clash on the exit edge\'s address is shown on that field', async () => {
  const page = await newPage(browser);
  await login(page, fg);
  await page.goto(`${fg.url}/#/tunnels`);
  const dlg = await openNewTunnel(page);
  await dlg.getByLabel('Name', { exact: true }).fill('direct-c');
  await dlg.getByLabel('Mode').selectOption('direct');
  await dlg.getByLabel('Entry edge').selectOption(fleet.entry.id);
  await dlg.getByLabel('Listen port').fill('2500');
  await dlg.getByLabel('Exit edge', { exact: true }).selectOption(fleet.exit.id);
  await dlg.getByLabel('Forward to').fill('127.0.0.1:9000');
  // The exit edge already listens on UDP 4434 for the tunnel "watched".
  await dlg.getByLabel('Exit edge address').fill('127.0.0.1:4434');
  await dlg.getByRole('button', { name: 'Create tunnel' }).click();
  const clash = dlg.locator('[data-field="egress_peer_addr"].invalid .error');
  await clash.getByText('edge-b already listens on udp port 4434 for tunnel watched').waitFor();
  assert.equal(await dlg.locator('[data-field="ingress_listen_port"] .error').textContent(), '');
  await dlg.getByLabel('Exit edge address').fill('127.0.0.1:4435');
  await dlg.getByRole('button', { name: 'Create tunnel' }).click();
  await page.waitForURL(/#\/tunnels\/[0-9a-f-]{36}$/);
  const id = page.url().split('/').pop();
  await page.locator('#tunnel-status', { hasText: 'active' }).waitFor({ timeout: 15_000 });
  assert.equal(await page.locator('#tunnel-legs tbody tr').count(), 2);
  assert.match(await page.locator('.facts').textContent(), /Exit edge address127\.0\.0\.1:4435/);
  const exitSide = actions(fleet.exit, 'create_tunnel').find((a) => a.tunnel.id === id).tunnel;
  assert.equal(exitSide.direct_listen_addr, '0.0.0.0:4435');
  const entrySide = actions(fleet.entry, 'create_tunnel').find((a) => a.tunnel.id === id).tunnel;
  assert.equal(entrySide.peer_addr, '127.0.0.1:4435');
  assert.ok(!(await page.content()).includes(entrySide.tunnel_psk), 'the pre-shared key is not in the page');
  page.assertClean(['409']);
  await page.context().close();
});

test('the tunnels views at phone width', async () => {
  const { items } = await fg.api('GET', '/api/v1/tunnels');
  const media = items.find((t) => t.name === 'media-b');
  const page = await newPage(browser, { width: 390, height: 844 });
  await login(page, fg);
  for (const [view, ready] of [['tunnels', '#tunnels tbody tr'], [`tunnels/${media.id}`, '#tunnel-legs tbody tr']]) {
    await page.goto(`${fg.url}/#/${view}`);
    await page.locator(ready).first().waitFor({ timeout: 10_000 });
    await page.waitForTimeout(600);
    const overflow = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
    assert.ok(overflow <= 1, `#/${view} scrolls sideways by ${overflow}px`);
    await screenshot(page, `tunnels-phone${view.includes('/') ? '-one' : ''}`);
  }
  // The create dialog fits too, in either mode.
  await page.goto(`${fg.url}/#/tunnels`);
  const dlg = await openNewTunnel(page);
  await dlg.getByLabel('Mode').selectOption('direct');
  const wide = await dlg.evaluate((d) => d.scrollWidth - d.clientWidth);
  assert.ok(wide <= 1, `the dialog scrolls sideways by ${wide}px`);
  const overflow = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
  assert.ok(overflow <= 1, `the page scrolls sideways by ${overflow}px with the dialog open`);
  await screenshot(page, 'tunnels-phone-create');
  page.assertClean();
  await page.context().close();
});
