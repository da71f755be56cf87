// Alert rules and incidents: a rule made in the dashboard opens an incident from
// real failed logins; the operator acknowledges it (no reopen until resolved), adds
// a note and resolves it; Alert rules are in the navigation, and an event row opens
// an incident or adds its event to one.

import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { launch, login, newPage, screenshot, startFleetgate, until } from '../lib/harness.mjs';

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
  const link = page.locator('#incident-list a[href^="#/incidents/"]').filter({ hasText: 'Password guessing' });
  await link.waitFor({ timeout: 10_000 });
  await link.click();
  await page.locator('#incident-title').waitFor();
  assert.equal(await page.locator('#timeline code').filter({ hasText: 'auth.login_failed' }).count(), 3);
  // The source names the rule, not its id.
  await page.locator('.card').filter({ hasText: 'Source' }).getByRole('link', { name: 'alert rule Password guessing' }).waitFor();
  await page.getByRole('button', { name: 'Acknowledge' }).click();
  await page.locator('.toolbar .badge').filter({ hasText: 'acknowledged' }).first().waitFor();
  // Acknowledged is not resolved: nothing to reopen.
  assert.equal(await page.getByRole('button', { name: 'Reopen' }).count(), 0);
  await page.getByLabel('Add a note').fill('Blocked the address at the firewall');
  await page.getByRole('button', { name: 'Add note' }).click();
  await page.locator('#notes').getByText('Blocked the address at the firewall').waitFor();
  await screenshot(page, 'incident-acknowledged');
  await page.getByRole('button', { name: 'Resolve' }).click();
  await page.locator('h1 + .badge, .toolbar .badge').filter({ hasText: 'resolved' }).first().waitFor();
  await page.getByRole('button', { name: 'Reopen' }).waitFor();
  const incidents = await fg.api('GET', '/api/v1/incidents');
  assert.equal(incidents.items[0].status, 'resolved');
  page.assertClean(['400']);
  await page.context().close();
});

test('Alert rules are in the navigation; an event row opens an incident or adds to one', async () => {
  // Two configuration changes: two events to work with.
  await fg.api('POST', '/api/v1/upstreams', { name: 'inc-a', targets: [{ url: 'http://127.0.0.1:9', weight: 1 }] });
  await fg.api('POST', '/api/v1/upstreams', { name: 'inc-b', targets: [{ url: 'http://127.0.0.1:9', weight: 1 }] });
  // Events are written behind the request: wait until the last one is stored.
  const latest = (await fg.api('GET', '/api/v1/revisions?limit=1')).items[0].number;
  const events = await until('two config.changed events', async () => {
    const page = await fg.api('GET', '/api/v1/events?type=config.changed&limit=2');
    return page.items.length === 2 && page.items[0].message.endsWith(`revision ${latest}`) ? page : null;
  });
  const [second, first] = events.items;
  const page = await newPage(browser);
  await login(page, fg);
  await page.locator('.side nav').getByRole('link', { name: 'Alert rules' }).click();
  await page.waitForURL(/#\/alert-rules$/);

  await page.goto(`${fg.url}/#/events`);
  await page.getByRole('button', { name: `Incident for event ${first.id}` }).click();
  let dlg = page.getByRole('dialog');
  assert.equal(await dlg.getByLabel('Title of a new incident').inputValue(), first.message.slice(0, 200));
  await dlg.getByLabel('Title of a new incident').fill('Someone is guessing user names');
  await dlg.getByRole('button', { name: 'Save' }).click();
  await page.locator('#incident-title').filter({ hasText: 'Someone is guessing user names' }).waitFor();
  const id = decodeURIComponent(page.url().split('#/incidents/')[1]);
  let inc = await fg.api('GET', `/api/v1/incidents/${encodeURIComponent(id)}`);
  assert.deepEqual(inc.timeline.filter((t) => t.event_id).map((t) => t.event_id), [first.id]);

  await page.goto(`${fg.url}/#/events`);
  await page.getByRole('button', { name: `Incident for event ${second.id}` }).click();
  dlg = page.getByRole('dialog');
  await dlg.getByLabel('Incident', { exact: true }).selectOption(id);
  await dlg.getByRole('button', { name: 'Save' }).click();
  await page.locator('#incident-title').filter({ hasText: 'Someone is guessing user names' }).waitFor();
  inc = await fg.api('GET', `/api/v1/incidents/${encodeURIComponent(id)}`);
  assert.deepEqual(inc.timeline.filter((t) => t.event_id).map((t) => t.event_id).sort(), [first.id, second.id].sort());
  page.assertClean();
  await page.context().close();
});
