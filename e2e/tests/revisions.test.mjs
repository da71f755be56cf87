// Configuration revisions in the dashboard: a change made in a form becomes a
// revision, any two revisions compare side by side, a rollback shows what it will
// change before it does it and the gateway then serves the older configuration,
// the history pages, and only admins get the rollback button.

import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import {
  launch, login, newPage, screenshot, startFleetgate, startUpstream, until,
} from '../lib/harness.mjs';

let fg; let browser; let upstream;

before(async () => {
  [fg, browser, upstream] = await Promise.all([startFleetgate(), launch(), startUpstream()]);
  await fg.api('POST', '/api/v1/upstreams', { name: 'svc', targets: [{ url: upstream.url }] }); // #1
  await fg.api('POST', '/api/v1/routes', { id: 'api', path: '/v1', upstream: 'svc' }); // #2
});

after(async () => {
  await browser?.close();
  await fg?.stop();
  await upstream?.stop();
});

const status = async (path) => (await fetch(`${fg.gw}${path}`)).status;

test('a change made in a form is a revision, and any two revisions compare side by side', async () => {
  const page = await newPage(browser);
  await login(page, fg);
  // #3: the route's path changed through the editor.
  await page.goto(`${fg.url}/#/routes/edit/api`);
  await page.getByLabel('Path', { exact: true }).fill('/v2');
  await page.getByRole('button', { name: 'Save changes' }).click();
  await page.locator('#routes-table tr[data-route="api"]').waitFor();

  await page.getByRole('link', { name: 'Revisions' }).click();
  const rows = page.locator('#revisions-table tr[data-revision]');
  await rows.first().waitFor();
  assert.equal(await rows.count(), 3);
  assert.match(await rows.first().textContent(), /#3\s*current.*update route api.*admin/);
  await screenshot(page, 'revisions-history');

  // What #3 changed: the summary by resource, and the documents side by side.
  await page.getByRole('link', { name: 'Changes of revision 3' }).click();
  const change = page.locator('#change-summary li[data-kind="route"][data-name="api"][data-op="replace"]');
  await change.waitFor();
  assert.match(await change.textContent(), /path\s*"\/v1" → "\/v2"/);
  const sbs = page.locator('#side-by-side');
  await sbs.locator('td.code.del').filter({ hasText: '"path": "/v1"' }).waitFor();
  await sbs.locator('td.code.add').filter({ hasText: '"path": "/v2"' }).waitFor();
  assert.equal(await sbs.locator('tr.chg').count(), 1);
  // The API's own change list is there too, as JSON Pointers.
  await page.getByText('1 change as JSON Pointers (from #2 to #3)').click();
  await page.locator('.raw-changes').getByText('replace /routes/0/path').waitFor();
  await screenshot(page, 'revision-diff');
  // Unchanged lines are folded and can be shown.
  const folds = sbs.locator('tr.fold');
  const before = await sbs.locator('tbody tr').count();
  await folds.first().getByRole('button').click();
  assert.ok(await sbs.locator('tbody tr').count() > before);

  // Two revisions picked in the history.
  await page.getByRole('link', { name: 'Revisions', exact: true }).first().click();
  await page.getByLabel('Select revision 1 to compare').check();
  await page.getByLabel('Select revision 3 to compare').check();
  assert.ok(await page.getByLabel('Select revision 2 to compare').isDisabled());
  await page.getByRole('button', { name: 'Compare selected' }).click();
  await page.waitForURL(/#\/revisions\/3\/against\/1$/);
  await page.locator('#change-summary li[data-kind="route"][data-name="api"][data-op="add"]').waitFor();
  assert.equal(await page.locator('#side-by-side thead').textContent(), 'Revision #1Revision #3 (current)');

  // Against the empty configuration (#0), from the compare box.
  await page.getByLabel('Compare with revision').fill('0');
  await page.getByRole('button', { name: 'Compare', exact: true }).click();
  await page.waitForURL(/#\/revisions\/3\/against\/0$/);
  await page.locator('#change-summary li[data-kind="upstream"][data-name="svc"][data-op="add"]').waitFor();
  await page.locator('#change-summary li[data-kind="route"][data-name="api"][data-op="add"]').waitFor();
  await screenshot(page, 'revision-against-empty');
  page.assertClean();
  await page.context().close();
});

test('a rollback shows what it will change, then the gateway serves the older configuration', async () => {
  await until('the gateway to serve /v2', async () => (await status('/v2/x')) === 200);
  const page = await newPage(browser);
  await login(page, fg);
  await page.goto(`${fg.url}/#/revisions`);
  await page.getByRole('button', { name: 'Roll back to revision 2' }).click();
  const dialog = page.getByRole('dialog', { name: 'Roll back to revision #2?' });
  const item = dialog.locator('li[data-kind="route"][data-name="api"]');
  await item.waitFor();
  assert.match(await item.textContent(), /Route api will change: path\s*"\/v2" → "\/v1"/);
  assert.equal(await dialog.locator('li').count(), 1);
  await screenshot(page, 'rollback-confirm');
  await dialog.getByRole('button', { name: 'Roll back to #2' }).click();
  await page.locator('.toast').filter({ hasText: 'Rolled back to #2: now revision #4' }).waitFor();
  const top = page.locator('#revisions-table tr[data-revision="4"]');
  await top.waitFor();
  assert.match(await top.textContent(), /current.*rollback to revision 2/);
  await screenshot(page, 'revisions-after-rollback');

  // The configuration changed, and the gateway follows it.
  assert.equal((await fg.api('GET', '/api/v1/routes/api')).path, '/v1');
  await until('the gateway to serve /v1 again', async () => (await status('/v1/x')) === 200);
  assert.equal(await status('/v2/x'), 404);
  await page.getByRole('link', { name: 'Routes' }).click();
  await page.locator('tr[data-route="api"]').getByText('/v1', { exact: true }).waitFor();

  // From a revision's own page; cancelled, nothing happens.
  await page.goto(`${fg.url}/#/revisions/1`);
  await page.getByRole('button', { name: 'Roll back to #1' }).click();
  const d1 = page.getByRole('dialog', { name: 'Roll back to revision #1?' });
  await d1.locator('li[data-kind="route"][data-name="api"][data-op="remove"]').waitFor();
  assert.match(await d1.textContent(), /Route api will be removed/);
  await d1.getByRole('button', { name: 'Cancel' }).click();
  await d1.waitFor({ state: 'detached' });
  assert.equal((await fg.api('GET', '/api/v1/revisions?limit=1')).items[0].number, 4);
  page.assertClean();
  await page.context().close();
});

test('the history pages through many revisions', async () => {
  const route = await fg.api('GET', '/api/v1/routes/api');
  for (let i = 1; i <= 27; i += 1) {
    await fg.api('PUT', '/api/v1/routes/api', { ...route, description: `change ${i}` });
  }
  const page = await newPage(browser);
  await login(page, fg);
  await page.goto(`${fg.url}/#/revisions`);
  const rows = page.locator('#revisions-table tr[data-revision]');
  await rows.first().waitFor();
  assert.equal(await rows.count(), 25);
  await page.locator('.pager').getByText('1–25 of 31').waitFor();
  await page.getByRole('button', { name: 'Older →' }).click();
  await page.locator('.pager').getByText('26–31 of 31').waitFor();
  assert.equal(await rows.count(), 6);
  assert.equal(await rows.last().getAttribute('data-revision'), '1');
  assert.ok(await page.getByRole('button', { name: 'Older →' }).isDisabled());
  await page.getByRole('button', { name: '← Newer' }).click();
  await page.locator('.pager').getByText('1–25 of 31').waitFor();
  page.assertClean();
  await page.context().close();
});

test('revisions are readable at phone width', async () => {
  const page = await newPage(browser, { width: 390, height: 844 });
  await login(page, fg);
  for (const [view, name] of [['revisions', 'revisions-phone'], ['revisions/3', 'revision-diff-phone']]) {
    await page.goto(`${fg.url}/#/${view}`);
    await page.locator(view === 'revisions' ? '#revisions-table tr[data-revision]' : '#side-by-side td.code').first().waitFor();
    const overflow = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
    assert.ok(overflow <= 1, `#/${view} scrolls sideways by ${overflow}px`);
    await screenshot(page, name);
  }
  page.assertClean();
  await page.context().close();
});

test('only admins get the rollback button, and the server agrees', async () => {
  await fg.api('POST', '/api/v1/users', { username: 'ops', password: 'operator-password-123', role: 'operator' });
  const page = await newPage(browser);
  await login(page, fg, 'ops', 'operator-password-123');
  await page.goto(`${fg.url}/#/revisions`);
  await page.locator('#revisions-table tr[data-revision]').first().waitFor();
  assert.equal(await page.getByRole('button', { name: /^Roll back/ }).count(), 0);
  assert.ok(await page.getByRole('link', { name: /^Changes of revision/ }).count() > 0);
  await page.goto(`${fg.url}/#/revisions/2`);
  await page.locator('#side-by-side').waitFor();
  assert.equal(await page.locator('#rollback').count(), 0);
  const forced = await page.evaluate(async () => {
    const csrf = document.cookie.split('; ').find((c) => c.startsWith('csrf_token='))?.split('=')[1];
    const r = await fetch('/api/v1/revisions/2/rollback', { method: 'POST', headers: { 'x-csrf-token': decodeURIComponent(csrf || '') } });
    return r.status;
  });
  assert.equal(forced, 403);
  page.assertClean(['status of 403']);
  await page.context().close();
});
