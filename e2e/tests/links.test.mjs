// Status and links where people look: the routes list and the route editor show
// the upstream's target health and breaker state beside it, a save's toast links the
// revision it made, and routes are enabled, disabled and deleted in bulk.

import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { launch, login, newPage, startFleetgate, startUpstream, until } from '../lib/harness.mjs';

let fg; let browser; let upstream;

before(async () => {
  [fg, browser, upstream] = await Promise.all([startFleetgate(), launch(), startUpstream()]);
  await fg.api('POST', '/api/v1/upstreams', {
    name: 'checked', targets: [{ url: upstream.url, weight: 1 }, { url: 'http://127.0.0.1:9', weight: 1 }],
    health_check: { active: { path: '/', interval_ms: 300, timeout_ms: 250, healthy_threshold: 1, unhealthy_threshold: 1, expected_statuses: [200] } },
  });
  await fg.api('POST', '/api/v1/routes', { id: 'checked', path: '/checked', upstream: 'checked' });
  await until('both targets probed', async () => {
    const h = await fg.api('GET', '/api/v1/upstreams/checked/health');
    return h.length === 2 && h.every((t) => t.last_check);
  });
});

after(async () => {
  await browser?.close();
  await fg?.stop();
  await upstream?.stop();
});

test('the routes list and the editor show the upstream\'s health and breaker; a save links its revision', async () => {
  const page = await newPage(browser);
  await login(page, fg);
  await page.goto(`${fg.url}/#/routes`);
  const row = page.locator('tr[data-route="checked"]');
  await row.locator('.upstream-status').getByText('1 of 2 down').waitFor();

  await page.goto(`${fg.url}/#/routes/edit/checked`);
  const line = page.locator('[data-field="upstream"] .upstream-status-line');
  await line.getByText('1 of 2 down').waitFor();
  await line.getByText('breaker').waitFor();
  await line.getByRole('link', { name: 'checked' }).waitFor();

  await page.locator('[data-field="description"] textarea').fill('health shown');
  await page.getByRole('button', { name: 'Save changes' }).click();
  const link = page.locator('.toast a.toast-link');
  await link.waitFor();
  const revisions = await fg.api('GET', '/api/v1/revisions?limit=1');
  assert.equal(await link.textContent(), `revision #${revisions.items[0].number}`);
  assert.equal(await link.getAttribute('href'), `#/revisions/${revisions.items[0].number}`);
  page.assertClean();
  await page.context().close();
});

test('routes are disabled, enabled and deleted in bulk from the list', async () => {
  for (const id of ['bulk-1', 'bulk-2', 'bulk-3']) {
    await fg.api('POST', '/api/v1/routes', { id, path: `/${id}`, upstream: 'checked' });
  }
  const page = await newPage(browser);
  await login(page, fg);
  await page.goto(`${fg.url}/#/routes`);
  await page.getByLabel('Select route bulk-1').check();
  await page.getByLabel('Select route bulk-2').check();
  const bar = page.locator('#routes-bulk');
  await bar.getByText('2 selected').waitFor();
  await bar.getByRole('button', { name: 'Disable' }).click();
  await page.locator('.toast').filter({ hasText: '2 routes disabled.' }).waitFor();
  for (const id of ['bulk-1', 'bulk-2']) assert.equal((await fg.api('GET', `/api/v1/routes/${id}`)).enabled, false);
  assert.equal((await fg.api('GET', '/api/v1/routes/bulk-3')).enabled, true);

  await page.getByLabel('Select route bulk-1').check();
  await page.getByLabel('Select route bulk-2').check();
  await bar.getByRole('button', { name: 'Enable' }).click();
  await page.locator('.toast').filter({ hasText: '2 routes enabled.' }).waitFor();
  for (const id of ['bulk-1', 'bulk-2']) assert.equal((await fg.api('GET', `/api/v1/routes/${id}`)).enabled, true);

  await page.getByLabel('Select route bulk-1').check();
  await page.getByLabel('Select route bulk-3').check();
  await bar.getByRole('button', { name: 'Delete' }).click();
  await page.getByRole('dialog').getByRole('button', { name: 'Delete routes' }).click();
  await page.locator('.toast').filter({ hasText: '2 routes deleted.' }).waitFor();
  await page.locator('tr[data-route="bulk-1"]').waitFor({ state: 'detached' });
  const left = (await fg.api('GET', '/api/v1/routes')).items.map((r) => r.id);
  assert.ok(left.includes('bulk-2') && !left.includes('bulk-1') && !left.includes('bulk-3'), left.join(','));
  page.assertClean();
  await page.context().close();
});
