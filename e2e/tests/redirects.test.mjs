// Redirects and pages in the dashboard: a namespace and project made in the UI, a
// CSV import whose bad line is named and then fixed, publishing (the version goes
// up), a draft edit shown as a diff, type filters and search, a page, a project
// token shown once, an agent's loaded version and staleness, and the phone layout.

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

const BAD_CSV = [
  'type,source,target,status',
  'BASIC,/old-home,/home,MOVED_PERMANENT',
  'BASIC,/old-about,/about,MOVED_TEMPORARILY',
  'REGEX,^/blog/(\\d+)$,/posts/$1,FOUND',
].join('\n');

test('namespace and project made in the UI; CSV import names the bad line; publish bumps the version', async () => {
  const page = await newPage(browser);
  await login(page, fg);
  await page.goto(`${fg.url}/#/redirects`);
  await page.getByText('No namespaces yet.').waitFor();

  // A namespace, then a project in it.
  await page.getByRole('button', { name: 'New namespace' }).first().click();
  let dlg = page.getByRole('dialog');
  await dlg.getByLabel('Name').fill('Bad Name');
  await dlg.getByRole('button', { name: 'Create' }).click();
  // The API's field message lands next to the input.
  await dlg.locator('[data-field="name"] .error').filter({ hasText: 'a-z, 0-9' }).waitFor();
  await dlg.getByLabel('Name').fill('acme');
  await dlg.getByLabel('Description').fill('Acme Corp sites');
  await dlg.getByRole('button', { name: 'Create' }).click();
  await page.locator('[data-namespace="acme"]').waitFor();
  await page.getByRole('button', { name: 'New project' }).click();
  dlg = page.getByRole('dialog');
  await dlg.getByLabel('Name').fill('web');
  await dlg.getByLabel('Hosts').fill('acme.test\nwww.acme.test');
  await dlg.getByRole('button', { name: 'Create' }).click();
  await page.waitForURL(/#\/redirects\/acme\/web$/);
  await page.locator('#project-version').filter({ hasText: 'not published yet' }).waitFor();

  // Import with one bad line: the dry run names it and nothing is imported.
  await page.getByRole('button', { name: 'Import CSV' }).click();
  dlg = page.getByRole('dialog', { name: 'Import redirects' });
  await dlg.locator('#import-text').fill(BAD_CSV);
  await dlg.getByRole('button', { name: 'Check' }).click();
  const errors = dlg.locator('.import-errors');
  await errors.getByText('line 3', { exact: true }).waitFor();
  assert.match(await errors.textContent(), /status/);
  assert.match(await errors.textContent(), /MOVED_TEMPORARILY/);
  assert.ok(await dlg.locator('#import-run').isHidden(), 'no import button before a clean check');
  await screenshot(page, 'redirects-import-error');

  // Fixed: the check passes, then the import runs.
  await dlg.locator('#import-text').fill(BAD_CSV.replace('MOVED_TEMPORARILY', 'FOUND'));
  await dlg.getByRole('button', { name: 'Check' }).click();
  await dlg.getByText('All 3 rows are valid.').waitFor();
  await dlg.getByRole('button', { name: 'Import 3 rows' }).click();
  await dlg.waitFor({ state: 'detached' });
  await page.getByText('Imported 3 rows: 3 new').waitFor();
  const rows = page.locator('#redirects-table tbody tr');
  await until('three redirects', async () => (await rows.count()) === 3);
  await page.locator('#drafts-count').filter({ hasText: '3' }).waitFor();

  // Publish: version 2 (a new project is at version 1, as Flecto's).
  await page.locator('#publish').click();
  await page.getByRole('dialog').getByRole('button', { name: 'Publish' }).click();
  await page.locator('#project-version').filter({ hasText: 'v2' }).waitFor();
  await page.locator('#drafts-count').filter({ hasText: 'none' }).waitFor();
  assert.equal((await fg.api('GET', '/api/v1/namespaces/acme/projects/web')).version, 2);

  // A draft edit shows as a diff, then publishes as version 3.
  await page.getByRole('button', { name: 'Edit /old-home' }).click();
  dlg = page.getByRole('dialog');
  await dlg.getByLabel('Target').fill('/welcome');
  await dlg.getByRole('button', { name: 'Save draft' }).click();
  await page.locator('#redirects-table').getByText('/welcome').waitFor();
  await page.locator('#redirects-table').getByText('changed').waitFor();
  await page.locator('#tab-changes').click();
  const changes = page.locator('#changes');
  await changes.locator('del', { hasText: '/home' }).waitFor();
  await changes.locator('ins', { hasText: '/welcome' }).waitFor();
  await screenshot(page, 'redirects-changes');
  await page.locator('#publish').click();
  await page.getByRole('dialog').getByRole('button', { name: 'Publish' }).click();
  await page.locator('#project-version').filter({ hasText: 'v3' }).waitFor();
  await page.getByText('No unpublished changes').waitFor();
  await page.locator('#tab-history').click();
  await page.locator('#versions > li').nth(1).waitFor();
  assert.match(await page.locator('#versions > li').first().textContent(), /v3/);
  page.assertClean(['400']);
  await page.context().close();
});

test('type filters, search, a page, a token shown once and an agent behind the published version', async () => {
  const page = await newPage(browser);
  await login(page, fg);
  await page.goto(`${fg.url}/#/redirects/acme/web`);
  const rows = page.locator('#redirects-table tbody tr');
  await until('the imported redirects', async () => (await rows.count()) === 3);

  // Type filter and search run on the server.
  await page.getByRole('group', { name: 'Type' }).getByRole('button', { name: 'REGEX', exact: true }).click();
  await until('only the regex', async () => (await rows.count()) === 1);
  assert.match(await rows.first().textContent(), /posts/);
  await page.getByRole('group', { name: 'Type' }).getByRole('button', { name: 'All' }).click();
  await until('all types again', async () => (await rows.count()) === 3);
  await page.locator('#redirects-search').fill('about');
  await until('the search result', async () => (await rows.count()) === 1);
  assert.match(await rows.first().textContent(), /old-about/);
  await page.locator('#redirects-search').fill('nothing-like-this');
  await page.getByText('No redirects match.').waitFor();
  await page.locator('#redirects-search').fill('');

  // Add a redirect with an invalid regex: the field error shows in the dialog.
  await page.getByRole('button', { name: 'Add redirect' }).click();
  let dlg = page.getByRole('dialog');
  await dlg.getByLabel('Type').selectOption('REGEX');
  await dlg.getByLabel('Source').fill('^/(unclosed');
  await dlg.getByLabel('Target').fill('/x');
  await dlg.getByRole('button', { name: 'Add' }).click();
  await dlg.locator('[data-field="source"] .error').filter({ hasText: 'regex' }).waitFor();
  await dlg.getByLabel('Source').fill('^/shop/(.*)$');
  await dlg.getByRole('button', { name: 'Add' }).click();
  await dlg.waitFor({ state: 'detached' });
  await until('four redirects', async () => (await rows.count()) === 4);

  // A page.
  await page.locator('#tab-pages').click();
  await page.getByRole('button', { name: 'Add page' }).click();
  dlg = page.getByRole('dialog');
  await dlg.getByLabel('Path').fill('/robots.txt');
  await dlg.getByLabel('Content', { exact: true }).fill('User-agent: *\nDisallow: /admin');
  await dlg.getByRole('button', { name: 'Add' }).click();
  await page.locator('#pages-table').getByText('/robots.txt').waitFor();
  await page.locator('#tab-changes .count').filter({ hasText: '2' }).waitFor();

  // A token, shown once.
  await page.locator('#tab-tokens').click();
  await page.getByRole('button', { name: 'New token' }).click();
  dlg = page.getByRole('dialog');
  await dlg.getByLabel('Name').fill('edge-1');
  await dlg.getByRole('button', { name: 'Create token' }).click();
  const secret = page.getByRole('dialog').locator('.secret-value');
  await secret.waitFor();
  const token = await secret.inputValue();
  assert.match(token, /^flecto_/);
  await screenshot(page, 'redirects-token-once');
  await page.getByRole('button', { name: 'I have stored it' }).click();
  await page.locator('#tokens').getByText('edge-1').waitFor();
  assert.equal(await page.getByText(token).count(), 0, 'the token is not shown again');

  // An agent reports version 1 while version 3 is published: it is behind.
  const r = await fetch(`${fg.url}/api/namespace/acme/project/web/agents`, {
    method: 'POST',
    headers: { authorization: `Bearer ${token}`, 'content-type': 'application/json' },
    body: JSON.stringify({ name: 'edge-eu-1', type: 'traefik', version: 1, status: 'success', load_duration: '8ms' }),
  });
  assert.equal(r.status, 200);
  await page.locator('#tab-agents').click();
  const agent = page.locator('#agents tbody tr', { hasText: 'edge-eu-1' });
  await agent.waitFor();
  assert.match(await agent.textContent(), /v1/);
  assert.match(await agent.textContent(), /of v3/);
  assert.match(await agent.textContent(), /stale: behind/);
  await screenshot(page, 'redirects-agents');

  // Revoking the token locks the agent out.
  await page.locator('#tab-tokens').click();
  await page.getByRole('button', { name: 'Revoke token edge-1' }).click();
  await page.getByRole('dialog').getByRole('button', { name: 'Revoke' }).click();
  await page.getByText('No tokens.').waitFor();
  const refused = await fetch(`${fg.url}/api/namespace/acme/project/web/version`, {
    headers: { authorization: `Bearer ${token}` },
  });
  assert.equal(refused.status, 401);
  page.assertClean(['400']);
  await page.context().close();
});

test('discarding drafts, and the project page at phone width', async () => {
  const page = await newPage(browser, { width: 390, height: 844 });
  await login(page, fg);
  await page.goto(`${fg.url}/#/redirects/acme/web`);
  await page.locator('#drafts-count').filter({ hasText: '2' }).waitFor();
  const overflow = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
  assert.ok(overflow <= 1, `the page scrolls sideways by ${overflow}px`);
  await screenshot(page, 'redirects-phone');
  // The export link downloads the working set as CSV, as import takes it.
  const href = await page.getByRole('link', { name: 'Export CSV' }).getAttribute('href');
  const csv = await page.evaluate(async (u) => (await fetch(u)).text(), href);
  assert.match(csv, /^type,source,target,status\n/);
  assert.match(csv, /BASIC,\/old-home,\/welcome,MOVED_PERMANENT/);
  assert.match(csv, /shop/, 'drafts are in the working set');
  await page.locator('#discard').click();
  await page.getByRole('dialog').getByRole('button', { name: 'Discard' }).click();
  await page.locator('#drafts-count').filter({ hasText: 'none' }).waitFor();
  await page.getByText('Discarded 2 changes.').waitFor();
  const rows = page.locator('#redirects-table tbody tr');
  await until('the published redirects only', async () => (await rows.count()) === 3);
  page.assertClean();
  await page.context().close();
});
