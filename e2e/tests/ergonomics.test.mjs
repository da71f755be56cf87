// Operator ergonomics: the dark theme follows the system and a choice made in
// the side bar (remembered), and "/" opens a search across routes, upstreams,
// redirect rules and events whose results lead to the object.

import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { launch, login, newPage, screenshot, startFleetgate } from '../lib/harness.mjs';

let fg; let browser;

before(async () => {
  [fg, browser] = await Promise.all([startFleetgate(), launch()]);
  await fg.api('POST', '/api/v1/upstreams', { name: 'billing-pool', targets: [{ url: 'http://127.0.0.1:9', weight: 1 }] });
  await fg.api('POST', '/api/v1/routes', { id: 'billing-api', path: '/billing', upstream: 'billing-pool' });
  await fg.api('POST', '/api/v1/namespaces', { name: 'web' });
  await fg.api('POST', '/api/v1/namespaces/web/projects', { name: 'site', hosts: ['site.test'] });
  await fg.api('POST', '/api/v1/namespaces/web/projects/site/redirects', { type: 'BASIC', source: '/billing-old', target: '/billing' });
});

after(async () => {
  await browser?.close();
  await fg?.stop();
});

const rootBackground = (page) => page.evaluate(() => getComputedStyle(document.documentElement).backgroundColor);

test('the theme follows the system, and a choice in the side bar wins and is remembered', async () => {
  const page = await newPage(browser);
  await page.emulateMedia({ colorScheme: 'dark' });
  await login(page, fg);
  const dark = await rootBackground(page);
  assert.equal(dark, 'rgb(13, 17, 23)', 'dark by the system');
  await screenshot(page, 'overview-dark');
  const toggle = page.locator('#theme-toggle');
  assert.equal(await toggle.textContent(), 'Theme: auto');
  await toggle.click(); // dark
  await toggle.click(); // light
  assert.equal(await toggle.textContent(), 'Theme: light');
  assert.equal(await rootBackground(page), 'rgb(246, 248, 250)', 'light by choice over a dark system');
  await page.reload();
  await page.locator('#theme-toggle').waitFor();
  assert.equal(await page.locator('#theme-toggle').textContent(), 'Theme: light');
  assert.equal(await rootBackground(page), 'rgb(246, 248, 250)');
  await page.locator('#theme-toggle').click(); // auto again
  assert.equal(await rootBackground(page), dark);
  page.assertClean();
  await page.context().close();
});

test('"/" opens a search across routes, upstreams, redirects and events', async () => {
  const page = await newPage(browser);
  await login(page, fg);
  await page.goto(`${fg.url}/#/overview`);
  await page.locator('main h1').first().waitFor();
  await page.keyboard.press('/');
  const input = page.locator('#global-search');
  await input.waitFor();
  await input.fill('billing');
  const results = page.locator('.search-results');
  await results.locator('section[data-kind="routes"]').getByRole('link', { name: 'billing-api' }).waitFor();
  await results.locator('section[data-kind="upstreams"]').getByRole('link', { name: 'billing-pool' }).waitFor();
  await results.locator('section[data-kind="redirects"]').getByRole('link', { name: '/billing-old' }).waitFor();
  await screenshot(page, 'global-search');
  await input.fill('made revision');
  await results.locator('section[data-kind="events"]').getByRole('link', { name: /made revision/ }).first().waitFor();
  await input.fill('billing');
  await results.locator('section[data-kind="upstreams"]').getByRole('link', { name: 'billing-pool' }).click();
  await page.getByRole('heading', { name: 'Upstream billing-pool' }).waitFor();

  // Typed into a field, "/" is just a character.
  await page.goto(`${fg.url}/#/routes`);
  const box = page.getByRole('searchbox', { name: 'Search routes' });
  await box.fill('a/b');
  assert.equal(await box.inputValue(), 'a/b');
  assert.equal(await page.locator('#global-search').count(), 0);
  page.assertClean();
  await page.context().close();
});
