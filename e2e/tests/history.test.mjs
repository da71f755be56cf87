// Charts with history: the overview's charts start from the stored series (not
// empty on every load), with a time axis and a range picker (15 min / 1 h / 24 h
// / 7 d), and a route's and an upstream's pages chart their own latency and
// errors.

import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { launch, login, newPage, screenshot, startFleetgate, startUpstream, until } from '../lib/harness.mjs';

let fg; let browser; let upstream;

before(async () => {
  [fg, browser, upstream] = await Promise.all([startFleetgate(), launch(), startUpstream()]);
  await fg.api('POST', '/api/v1/upstreams', { name: 'shop', targets: [{ url: upstream.url, weight: 1 }] });
  await fg.api('POST', '/api/v1/routes', { id: 'shop', path: '/shop', upstream: 'shop' });
  await until('the gateway to serve /shop', async () => (await fetch(`${fg.gw}/shop`)).status === 200);
  // Traffic until the store holds a point of it (series are written every 10 s).
  await until('a stored point of traffic', async () => {
    for (let i = 0; i < 20; i += 1) await fetch(`${fg.gw}/shop`).then((r) => r.arrayBuffer());
    const s = await fg.api('GET', '/api/v1/metrics/series?metric=requests&route=shop');
    return s.points.some((p) => p.value > 0);
  }, 40_000);
});

after(async () => {
  await browser?.close();
  await fg?.stop();
  await upstream?.stop();
});

/// Lengths of the drawn paths of the charts inside `sel`.
async function drawn(page, sel) {
  return page.locator(`${sel} svg.time-chart path`).evaluateAll((ps) => ps.map((p) => (p.getAttribute('d') || '').length));
}

test('the overview charts start from the stored series and follow the range picked', async () => {
  const page = await newPage(browser);
  const asked = [];
  page.on('request', (r) => { if (r.url().includes('/api/v1/metrics/series')) asked.push(new URL(r.url())); });
  await login(page, fg);
  await page.goto(`${fg.url}/#/overview`);
  await page.locator('#overview-history').waitFor();
  // Drawn at once from history, before any live sample could fill it.
  await until('a drawn requests chart', async () => (await drawn(page, '#overview-history [data-chart="requests_per_second"]'))[0] > 0);
  assert.ok(asked.some((u) => u.searchParams.get('metric') === 'requests_per_second'));
  const ticks = await page.locator('#overview-history .time-axis').first().locator('span').allTextContents();
  assert.equal(ticks.length, 5);
  assert.match(ticks[4], /\d{1,2}:\d{2}/);
  await screenshot(page, 'overview-history');

  asked.length = 0;
  await page.locator('#overview-history-range').getByRole('button', { name: '7 d' }).click();
  await until('the 7-day series', async () => asked.some((u) => Number(u.searchParams.get('to')) - Number(u.searchParams.get('from')) === 7 * 86_400_000));
  await until('day ticks', async () => {
    const t = await page.locator('#overview-history .time-axis').first().locator('span').allTextContents();
    return t.length === 5 && !/\d{1,2}:\d{2}/.test(t[4]);
  });
  assert.equal(await page.locator('#overview-history-range [aria-pressed="true"]').textContent(), '7 d');
  await until('the 7-day chart drawn', async () => (await drawn(page, '#overview-history [data-chart="requests_per_second"]'))[0] > 0);
  page.assertClean();
  await page.context().close();
});

test('a route and an upstream chart their own latency and errors', async () => {
  const page = await newPage(browser);
  const asked = [];
  page.on('request', (r) => { if (r.url().includes('/api/v1/metrics/series')) asked.push(new URL(r.url())); });
  await login(page, fg);
  await page.goto(`${fg.url}/#/routes/edit/shop`);
  await page.locator('#route-history').waitFor();
  await until('the route latency drawn', async () => (await drawn(page, '#route-history [data-chart="latency_p50_ms latency_p99_ms"]')).some((n) => n > 0));
  assert.ok(asked.some((u) => u.searchParams.get('route') === 'shop' && u.searchParams.get('metric') === 'latency_p99_ms'));
  assert.ok(asked.some((u) => u.searchParams.get('route') === 'shop' && u.searchParams.get('metric') === 'error_rate'));

  await page.goto(`${fg.url}/#/upstreams/view/shop`);
  await page.locator('#upstream-history').waitFor();
  await until('the upstream latency drawn', async () => (await drawn(page, '#upstream-history [data-chart="latency_p50_ms latency_p99_ms"]')).some((n) => n > 0));
  assert.ok(asked.some((u) => u.searchParams.get('upstream') === 'shop' && u.searchParams.get('metric') === 'upstream_failure_rate'));
  await screenshot(page, 'upstream-history');
  page.assertClean();
  await page.context().close();
});

test('on a phone the route editor does not take the focus', async () => {
  const page = await newPage(browser, { width: 390, height: 800 });
  await login(page, fg);
  await page.goto(`${fg.url}/#/routes/edit/shop`);
  await page.locator('[data-field="path"] input').waitFor();
  const focused = await page.evaluate(() => document.activeElement && document.activeElement.tagName);
  assert.notEqual(focused, 'INPUT');
  page.assertClean();
  await page.context().close();
});
