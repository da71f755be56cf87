// Alert rules and incidents: a rule made in the dashboard opens an incident from
// real failed logins; the operator acknowledges it, adds a note and resolves it.

import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { launch, login, newPage, screenshot, startFleetgate } from '../lib/harness.mjs';

let fg; let browser;

before(async () => {
  [fg, browser] = await Promise.all([startFleetgate(), launch()]);
});

after(async () => {
  await browser?.close();
  await fg?.stop();
});

test('an alert rule opens an incident that is worked to resolution', async () => {
  const page = await newPage(browser);
  await login(page, fg);
  await page.goto(`${fg.url}/#/alert-rules`);
  await page.getByRole('button', { name: 'New rule' }).click();
  const form = page.locator('#rule-form');
  await form.getByLabel('Name').fill('Password guessing');
  await form.getByLabel('Severity').selectOption('critical');
  // A rule on alert events could trigger itself: the API refuses it, and the
  // message sits next to its field.
  await form.getByLabel('Event type or pattern').fill('alert.*');
  await page.getByRole('button', { name: 'Save' }).click();
  const typeError = form.locator('[data-field="condition.event_type"] .error');
  await typeError.filter({ hasText: /./ }).waitFor();
  await screenshot(page, 'alert-rule-invalid');
  await form.getByLabel('Event type or pattern').fill('auth.login_failed');
  await form.getByLabel('At least this many events').fill('3');
  await form.getByLabel('Within (seconds)').fill('600');
  await page.getByRole('button', { name: 'Save' }).click();
  await page.locator('#alert-rules').getByText('Password guessing').waitFor();
  await page.locator('#alert-rules').getByText('quiet').waitFor();

  // Three failed logins from outside the page fire the rule.
  for (let i = 0; i < 3; i += 1) {
    const r = await fetch(`${fg.url}/api/v1/auth/login`, {
      method: 'POST', headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ username: 'admin', password: `wrong-${i}` }),
    });
    assert.equal(r.status, 401);
  }
  await page.goto(`${fg.url}/#/incidents`);
  const link = page.locator('#incident-list').getByRole('link', { name: 'Password guessing' });
  await link.waitFor({ timeout: 10_000 });
  await link.click();
  await page.locator('#incident-title').waitFor();
  assert.equal(await page.locator('#timeline code').filter({ hasText: 'auth.login_failed' }).count(), 3);
  await page.getByRole('button', { name: 'Acknowledge' }).click();
  await page.getByRole('button', { name: 'Reopen' }).waitFor();
  await page.getByLabel('Add a note').fill('Blocked the address at the firewall');
  await page.getByRole('button', { name: 'Add note' }).click();
  await page.locator('#notes').getByText('Blocked the address at the firewall').waitFor();
  await screenshot(page, 'incident-acknowledged');
  await page.getByRole('button', { name: 'Resolve' }).click();
  await page.locator('h1 + .badge, .toolbar .badge').filter({ hasText: 'resolved' }).first().waitFor();
  const incidents = await fg.api('GET', '/api/v1/incidents');
  assert.equal(incidents.items[0].status, 'resolved');
  page.assertClean(['400']);
  await page.context().close();
});
