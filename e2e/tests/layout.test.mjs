// Every page of the navigation at 1280 and 390 px wide, with some data in it:
// nothing wider than the screen (no sideways scrolling, no panel sticking out),
// table cells not cut, the menu readable when open; a screenshot of each under
// e2e/artifacts (screen-<page>-<width>.png).

import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { launch, login, newPage, overflow, screenshot, startFleetgate, startUpstream, until } from '../lib/harness.mjs';

let fg; let browser; let upstream;

const PAGES = ['overview', 'routes', 'upstreams', 'upstreams/view/shop', 'breakers', 'redirects', 'nodes', 'tunnels',
  'deployments', 'events', 'incidents', 'alert-rules', 'webhooks', 'revisions', 'certificates', 'audit', 'backups',
  'settings', 'keys', 'users', 'ai/providers', 'ai/budgets', 'ai/usage', 'ai/prices', 'ai/agents'];

before(async () => {
  [fg, browser, upstream] = await Promise.all([startFleetgate(), launch(), startUpstream()]);
  await fg.api('POST', '/api/v1/upstreams', { name: 'shop', targets: [{ url: upstream.url, weight: 1 }, { url: 'http://127.0.0.1:9', weight: 2 }] });
  await fg.api('POST', '/api/v1/routes', {
    id: 'shop-with-a-rather-long-route-name', path: '/shop/with/a/long/path/prefix', upstream: 'shop', methods: ['GET', 'POST'],
  });
  await fg.api('POST', '/api/v1/routes', {
    id: 'shop-hosts', path: '/', upstream: 'shop', hosts: ['shop.example.test', 'www.shop.example.test'],
  });
  await until('the gateway to serve the route', async () => (await fetch(`${fg.gw}/shop/with/a/long/path/prefix`)).status === 200);
  for (let i = 0; i < 50; i += 1) await fetch(`${fg.gw}/shop/with/a/long/path/prefix`).then((r) => r.arrayBuffer());
  await fg.api('POST', '/api/v1/incidents', { title: 'A long incident title that wraps across the narrow screen of a phone', severity: 'critical' });
});

after(async () => {
  await browser?.close();
  await fg?.stop();
  await upstream?.stop();
});

for (const width of [1280, 390]) {
  test(`every page fits ${width} px`, async () => {
    const page = await newPage(browser, { width, height: 900 });
    await login(page, fg);
    const problems = [];
    for (const p of PAGES) {
      await page.goto(`${fg.url}/#/${p}`);
      await page.locator('main .view h1').first().waitFor();
      await page.waitForLoadState('networkidle').catch(() => {});
      for (const o of await overflow(page)) problems.push(`#/${p}: ${o}`);
      await screenshot(page, `screen-${p.replace(/\//g, '-')}-${width}`);
    }
    assert.deepEqual(problems, []);
    page.assertClean();
    await page.context().close();
  });
}

test('at phone width the open menu is readable and badges keep their size', async () => {
  const page = await newPage(browser, { width: 390, height: 800 });
  await login(page, fg);
  await page.goto(`${fg.url}/#/overview`);
  const toggle = page.getByRole('button', { name: 'Menu' });
  await toggle.click();
  await page.locator('.side.open nav').waitFor();
  const colours = await toggle.evaluate((b) => {
    const s = getComputedStyle(b);
    return [s.color, s.backgroundColor];
  });
  assert.notEqual(colours[0], colours[1], `the Menu button's text and background differ (${colours})`);
  await screenshot(page, 'screen-menu-open-390');
  await toggle.click();

  await page.goto(`${fg.url}/#/incidents`);
  const badge = page.locator('#incident-list .badge').filter({ hasText: 'critical' }).first();
  await badge.waitFor();
  const box = await badge.boundingBox();
  assert.ok(box.height < 40, `the critical badge is ${box.height} px high`);
  assert.ok(box.width < 120, `the critical badge is ${box.width} px wide`);
  page.assertClean();
  await page.context().close();
});
