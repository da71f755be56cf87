// Administration in the dashboard: an API key shown once (and working), a webhook
// whose test delivery reaches a local receiver and shows in its delivery log,
// settings with a field error, users and roles, and a viewer who sees no edit
// controls and whose forced request is refused.

import assert from 'node:assert/strict';
import http from 'node:http';
import { after, before, test } from 'node:test';
import { ADMIN_PASSWORD, launch, login, newPage, screenshot, startFleetgate, until } from '../lib/harness.mjs';

let fg; let browser; let receiver; const received = [];

before(async () => {
  [fg, browser] = await Promise.all([startFleetgate(), launch()]);
  receiver = http.createServer((req, res) => {
    let body = '';
    req.on('data', (d) => { body += d; });
    req.on('end', () => {
      received.push({ headers: req.headers, body });
      res.writeHead(204);
      res.end();
    });
  });
  await new Promise((r) => receiver.listen(0, '127.0.0.1', r));
});

after(async () => {
  await browser?.close();
  await fg?.stop();
  await new Promise((r) => (receiver ? receiver.close(r) : r()));
});

test('an API key is shown once, with a copy button, and works', async () => {
  const page = await newPage(browser);
  await login(page, fg);
  await page.goto(`${fg.url}/#/keys`);
  await page.locator('#keys').getByText('bootstrap', { exact: true }).first().waitFor();
  await page.getByRole('button', { name: 'New API key' }).click();
  const dlg = page.getByRole('dialog');
  await dlg.getByLabel('Name').fill('ci-deploy');
  await dlg.getByLabel('Role').selectOption('operator');
  await dlg.getByRole('button', { name: 'Create key' }).click();
  const shown = page.getByRole('dialog', { name: 'API key ci-deploy' });
  const secret = shown.locator('.secret-value');
  await secret.waitFor();
  const key = await secret.inputValue();
  assert.match(key, /^fgk_/);
  await shown.getByText('shown only now').waitFor();
  await shown.getByRole('button', { name: 'Copy' }).waitFor();
  await screenshot(page, 'admin-key-once');
  await shown.getByRole('button', { name: 'I have stored it' }).click();
  await shown.waitFor({ state: 'detached' });
  // Listed by its prefix only; the key itself is nowhere on the page any more.
  const row = page.locator('#keys tbody tr', { hasText: 'ci-deploy' });
  await row.waitFor();
  assert.match(await row.textContent(), new RegExp(key.slice(0, 12)));
  assert.equal(await page.getByText(key).count(), 0);
  assert.ok(!(await page.content()).includes(key), 'the key is not in the page');
  // The key works, with its role.
  const me = await (await fetch(`${fg.url}/api/v1/auth/me`, { headers: { authorization: `Bearer ${key}` } })).json();
  assert.equal(me.role, 'operator');

  // Revoked: refused from then on.
  await row.getByRole('button', { name: 'Revoke key ci-deploy' }).click();
  await page.getByRole('dialog').getByRole('button', { name: 'Revoke' }).click();
  await row.waitFor({ state: 'detached' });
  const after = await fetch(`${fg.url}/api/v1/auth/me`, { headers: { authorization: `Bearer ${key}` } });
  assert.equal(after.status, 401);
  page.assertClean();
  await page.context().close();
});

test('a webhook made in the UI gets a test delivery, shown in its delivery log', async () => {
  // Loopback destinations are refused unless the setting allows them.
  const settings = await fg.api('GET', '/api/v1/settings');
  settings.webhooks.allow_private_targets = true;
  await fg.api('PUT', '/api/v1/settings', settings);
  const url = `http://127.0.0.1:${receiver.address().port}/hook`;

  const page = await newPage(browser);
  await login(page, fg);
  await page.goto(`${fg.url}/#/webhooks`);
  await page.getByText('No webhooks yet.').waitFor();
  await page.getByRole('button', { name: 'New webhook' }).click();
  let dlg = page.getByRole('dialog');
  await dlg.getByLabel('URL').fill(url);
  await dlg.getByLabel('Events').fill('auth.*\nwebhook.test');
  await dlg.getByLabel('Extra headers').fill('X-Team: edge');
  await dlg.getByRole('button', { name: 'Create webhook' }).click();
  // The generated signing secret is shown once.
  const shown = page.getByRole('dialog', { name: 'Webhook created' });
  assert.match(await shown.locator('.secret-value').inputValue(), /^whsec_/);
  await shown.getByRole('button', { name: 'I have stored it' }).click();

  await page.locator('#webhooks').getByRole('link', { name: url, exact: true }).click();
  await page.waitForURL(/#\/webhooks\/[0-9a-f-]+$/);
  await page.getByText('No deliveries yet.').waitFor();
  await page.locator('#send-test').click();
  await page.getByText('Test delivered: HTTP 204').waitFor();
  const delivery = page.locator('#deliveries tbody tr').first();
  await delivery.waitFor();
  const text = await delivery.textContent();
  assert.match(text, /webhook\.test/);
  assert.match(text, /success/);
  assert.match(text, /204/);
  assert.match(text, /\d+ ms/);
  await until('the receiver got it', async () => received.length === 1);
  assert.equal(received[0].headers['x-team'], 'edge');
  assert.ok(received[0].headers['x-webhook-signature'], 'signed');
  assert.equal(JSON.parse(received[0].body).type, 'webhook.test');

  // Redeliver queues it again; it is sent by the delivery worker.
  await delivery.getByRole('button', { name: /Redeliver/ }).click();
  await page.getByText('Queued for redelivery.').waitFor();
  await until('the redelivery', async () => received.length === 2, 15_000);
  await delivery.locator('details summary').click();
  await screenshot(page, 'admin-webhook-log');

  // A field error from the API shows next to its input.
  await page.getByRole('button', { name: 'Edit' }).click();
  dlg = page.getByRole('dialog');
  await dlg.getByLabel('Events').fill('Not A Pattern');
  await dlg.getByRole('button', { name: 'Save' }).click();
  await dlg.locator('[data-field="events"] .error').filter({ hasText: 'circuit_breaker.*' }).waitFor();
  await dlg.getByRole('button', { name: 'Cancel' }).click();
  page.assertClean(['400']);
  await page.context().close();
});

test('settings show field errors and save; users are created and edited with roles explained', async () => {
  const page = await newPage(browser);
  await login(page, fg);
  await page.goto(`${fg.url}/#/settings`);
  const security = page.locator('#settings-security');
  await security.getByLabel('Login window (seconds)').fill('1');
  await security.getByRole('button', { name: 'Save' }).click();
  await security.locator('[data-field="security.login_window_secs"] .error')
    .filter({ hasText: 'between 10 and 3600' }).waitFor();
  await screenshot(page, 'admin-settings-error');
  await security.getByLabel('Login window (seconds)').fill('120');
  await security.getByRole('button', { name: 'Save' }).click();
  await security.getByText('Saved.').waitFor();
  assert.equal((await fg.api('GET', '/api/v1/settings')).security.login_window_secs, 120);
  // Another section saves on top of that change (the ETag moved on).
  const general = page.locator('#settings-general');
  await general.getByLabel('Instance name').fill('edge-lab');
  await general.getByRole('button', { name: 'Save' }).click();
  await general.getByText('Saved.').waitFor();
  const saved = await fg.api('GET', '/api/v1/settings');
  assert.equal(saved.general.instance_name, 'edge-lab');
  assert.equal(saved.security.login_window_secs, 120);

  await page.goto(`${fg.url}/#/users`);
  await page.locator('#roles').getByText('Sees everything in the dashboard').waitFor();
  await page.getByRole('button', { name: 'New user' }).click();
  let dlg = page.getByRole('dialog');
  await dlg.getByLabel('Username').fill('olivia');
  await dlg.getByLabel('Password').fill('short');
  await dlg.getByLabel('Role').selectOption('operator');
  await dlg.getByRole('button', { name: 'Create user' }).click();
  await dlg.locator('[data-field="password"] .error').filter({ hasText: /8/ }).waitFor();
  await dlg.getByLabel('Password').fill('olivia-password-1');
  await dlg.getByRole('button', { name: 'Create user' }).click();
  const row = page.locator('#users tbody tr[data-username="olivia"]');
  await row.waitFor();
  assert.match(await row.textContent(), /operator/);
  await row.getByRole('button', { name: 'Edit olivia' }).click();
  dlg = page.getByRole('dialog');
  await dlg.getByLabel('Role').selectOption('viewer');
  await dlg.getByLabel('Disabled').check();
  await dlg.getByRole('button', { name: 'Save' }).click();
  await row.getByText('disabled').waitFor();
  assert.match(await row.textContent(), /viewer/);
  await screenshot(page, 'admin-users');
  page.assertClean(['400']);
  await page.context().close();
});

test('a viewer sees no edit controls, and a forced change is refused', async () => {
  await fg.api('POST', '/api/v1/users', { username: 'vera', password: 'vera-password-1', role: 'viewer' });
  await fg.api('POST', '/api/v1/namespaces', { name: 'acme' });
  await fg.api('POST', '/api/v1/namespaces/acme/projects', { name: 'web', hosts: ['acme.test'] });
  await fg.api('POST', '/api/v1/namespaces/acme/projects/web/redirects', { type: 'BASIC', source: '/a', target: '/b' });
  const page = await newPage(browser);
  await login(page, fg, 'vera', 'vera-password-1');
  assert.equal(await page.locator('#who-role').textContent(), 'viewer');
  // No Users section for viewers.
  assert.equal(await page.locator('.side nav a[data-view="users"]').count(), 0);

  const editLabels = /^(New|Add|Edit|Delete|Publish|Discard|Import|Revoke|Forget|Acknowledge|Send test|Redeliver|Save|Create)/;
  const views = ['redirects', 'redirects/acme/web', 'redirects/acme/web/pages', 'redirects/acme/web/changes',
    'redirects/acme/web/tokens', 'redirects/acme/web/agents', 'events', 'webhooks', 'settings', 'keys'];
  for (const v of views) {
    await page.goto(`${fg.url}/#/${v}`);
    await page.locator('main .view > :not(.empty)').first().waitFor();
    await page.waitForTimeout(600);
    const buttons = await page.locator('main button').evaluateAll((els) => els
      .filter((b) => b.offsetParent !== null).map((b) => (b.getAttribute('aria-label') || b.textContent).trim()));
    const offending = buttons.filter((b) => editLabels.test(b));
    assert.deepEqual(offending, [], `#/${v} shows edit controls to a viewer: ${offending.join(', ')}`);
    if (v === 'redirects/acme/web') await screenshot(page, 'viewer-project');
  }
  // Settings are shown read-only.
  await page.goto(`${fg.url}/#/settings`);
  assert.ok(await page.locator('#settings-security').getByLabel('Login window (seconds)').isDisabled());
  // The export link is a read and stays.
  await page.goto(`${fg.url}/#/redirects/acme/web`);
  await page.getByRole('link', { name: 'Export CSV' }).waitFor();
  // A forced request is refused by the server.
  const status = await page.evaluate(async () => {
    const csrf = document.cookie.split('; ').find((c) => c.startsWith('csrf_token=')).split('=')[1];
    const r = await fetch('/api/v1/namespaces/acme/projects/web/publish', {
      method: 'POST', headers: { 'x-csrf-token': decodeURIComponent(csrf) },
    });
    return r.status;
  });
  assert.equal(status, 403);
  page.assertClean(['403']);
  await page.context().close();
});

test('admin views at phone width', async () => {
  const page = await newPage(browser, { width: 390, height: 844 });
  await login(page, fg, 'admin', ADMIN_PASSWORD);
  for (const v of ['webhooks', 'keys', 'users', 'settings']) {
    await page.goto(`${fg.url}/#/${v}`);
    await page.locator('main .view > :not(.empty)').first().waitFor();
    await page.waitForTimeout(600);
    const overflow = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
    assert.ok(overflow <= 1, `#/${v} scrolls sideways by ${overflow}px`);
    await screenshot(page, `admin-phone-${v}`);
  }
  page.assertClean();
  await page.context().close();
});
