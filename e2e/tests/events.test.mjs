// Events in the dashboard: a failed login raises a warning that shows in the counts
// and the list; acknowledging it makes the count drop; new events join the list
// live when they match the filters; a selection and everything matching a filter
// are acknowledged at once.

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

/// A failed login: the manager stores an `auth.login_failed` warning.
async function failLogin(username) {
  const r = await fetch(`${fg.url}/api/v1/auth/login`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ username, password: 'not-the-password' }),
  });
  assert.equal(r.status, 401);
}

const count = async (page, id) => Number((await page.locator(`#${id} .value`).textContent()).replace(/,/g, ''));

test('acknowledging a failed-login warning makes the count drop', async () => {
  await failLogin('mallory');
  const page = await newPage(browser);
  await login(page, fg);
  await page.goto(`${fg.url}/#/events`);
  const row = page.locator('#events-list tbody tr', { hasText: 'failed login for "mallory"' });
  await row.waitFor();
  assert.match(await row.textContent(), /warning/);
  assert.match(await row.textContent(), /auth\.login_failed/);
  const warnings = await count(page, 'count-warning');
  const total = await count(page, 'count-total');
  assert.ok(warnings >= 1, `warnings: ${warnings}`);
  await screenshot(page, 'events-before-ack');

  await row.getByRole('button', { name: /Acknowledge event/ }).click();
  await row.locator('td.actions', { hasText: 'acknowledged' }).waitFor();
  await until('the warning count to drop', async () => (await count(page, 'count-warning')) === warnings - 1);
  assert.equal(await count(page, 'count-total'), total - 1);
  const stored = await fg.api('GET', '/api/v1/events?type=auth.login_failed');
  assert.equal(stored.items[0].acknowledged_by, 'admin');

  // The details of an event open from its message.
  await row.locator('summary').click();
  await row.getByText('"client_ip"').waitFor();
  await screenshot(page, 'events-after-ack');
  page.assertClean();
  await page.context().close();
});

test('new events join a filtered list live; a selection and all matching are acknowledged', async () => {
  const page = await newPage(browser);
  await login(page, fg);
  await page.goto(`${fg.url}/#/events`);
  await page.locator('#live-status').filter({ hasText: 'live' }).waitFor();
  await page.locator('#filter-acknowledged').selectOption('false');
  await page.locator('#filter-type').fill('auth.login_failed');
  const rows = page.locator('#events-list tbody tr');
  await page.getByText('No events match these filters.').waitFor();

  // Two failed logins while the page is open: both arrive over the live feed.
  await failLogin('eve');
  await failLogin('trudy');
  await until('two live events', async () => (await rows.count()) === 2);
  assert.match(await rows.first().textContent(), /trudy/);
  // An event the filter does not select (a configuration change) stays out.
  await fg.api('PUT', '/api/v1/settings', await fg.api('GET', '/api/v1/settings'));
  await new Promise((r) => setTimeout(r, 800));
  assert.equal(await rows.count(), 2);
  await screenshot(page, 'events-live');

  // Select one and acknowledge it.
  await rows.filter({ hasText: 'for "eve"' }).getByRole('checkbox').check();
  await page.locator('#ack-selected').filter({ hasText: 'Acknowledge 1 selected' }).click();
  await until('the selection acknowledged', async () => (await rows.count()) === 1);

  // Everything else that matches the filter.
  await page.locator('#ack-matching').click();
  const dlg = page.getByRole('dialog');
  await dlg.getByText('Acknowledge 1 unacknowledged event').waitFor();
  await dlg.getByRole('button', { name: 'Acknowledge' }).click();
  await page.getByText('No events match these filters.').waitFor();
  const left = await fg.api('GET', '/api/v1/events?type=auth.login_failed&acknowledged=false');
  assert.equal(left.total, 0);

  // Clearing the filters shows them again, acknowledged.
  await page.getByRole('button', { name: 'Clear filters' }).click();
  await page.locator('#events-list tbody tr', { hasText: 'trudy' }).locator('td.actions', { hasText: 'acknowledged' }).waitFor();
  page.assertClean();
  await page.context().close();
});

test('the events page at phone width', async () => {
  const page = await newPage(browser, { width: 390, height: 844 });
  await login(page, fg);
  await page.goto(`${fg.url}/#/events`);
  await page.locator('#events-list tbody tr').first().waitFor();
  const overflow = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
  assert.ok(overflow <= 1, `the page scrolls sideways by ${overflow}px`);
  await screenshot(page, 'events-phone');
  page.assertClean();
  await page.context().close();
});
