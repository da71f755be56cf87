// The dashboard and the admin API's rate limit: five live pages of one session
// open for two minutes under traffic get no 429 and show no error panel, and a
// call that is refused with 429 is asked again after its Retry-After while the
// page stays as it was.

import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { launch, login, newPage, startFleetgate, startUpstream } from '../lib/harness.mjs';

let fg; let browser; let upstream;

before(async () => {
  [fg, browser, upstream] = await Promise.all([startFleetgate(), launch(), startUpstream()]);
  await fg.api('POST', '/api/v1/upstreams', { name: 'shop', targets: [{ url: upstream.url, weight: 1 }] });
  await fg.api('POST', '/api/v1/upstreams', { name: 'spare', targets: [{ url: upstream.url, weight: 1 }] });
  await fg.api('POST', '/api/v1/routes', { id: 'shop', path: '/shop', upstream: 'shop' });
});

after(async () => {
  await browser?.close();
  await fg?.stop();
  await upstream?.stop();
});

/// Another tab of `page`'s browser context (the same session), recording what
/// `page` records.
async function tab(page, hash) {
  const p = await page.context().newPage();
  p.on('console', (m) => { if (m.type() === 'error') page.problems.push(`console (${hash}): ${m.text()}`); });
  p.on('pageerror', (e) => page.problems.push(`exception (${hash}): ${e.message}`));
  await p.goto(`${fg.url}/${hash}`);
  return p;
}

test('five live pages of one session for two minutes: no 429 and no error panel', async () => {
  const first = await newPage(browser);
  await login(first, fg);
  const statuses = new Map();
  first.context().on('response', (r) => {
    if (!new URL(r.url()).pathname.startsWith('/api/')) return;
    statuses.set(r.status(), (statuses.get(r.status()) || 0) + 1);
  });
  await first.goto(`${fg.url}/#/overview`);
  const pages = [first];
  for (const hash of ['#/upstreams/view/shop', '#/upstreams/view/spare', '#/events', '#/deployments']) {
    pages.push(await tab(first, hash));
  }
  await pages[1].locator('#target-health tr[data-target]').first().waitFor();

  // Traffic through the gateway meanwhile, so that the live parts update.
  let sending = true;
  const load = (async () => {
    while (sending) {
      await fetch(`${fg.gw}/shop`).then((r) => r.arrayBuffer()).catch(() => {});
      await new Promise((r) => setTimeout(r, 50));
    }
  })();
  await new Promise((r) => setTimeout(r, 120_000));
  sending = false;
  await load;

  const calls = [...statuses.values()].reduce((a, b) => a + b, 0);
  assert.ok(calls > 20, `the pages called the API (${calls} calls)`);
  assert.equal(statuses.get(429) || 0, 0, `no 429 among ${JSON.stringify([...statuses])}`);
  for (const p of pages) {
    const errors = await p.locator('.form-error[role=alert]:not(:empty)').count();
    assert.equal(errors, 0, `no error panel on ${p.url()}`);
  }
  first.assertClean();
  await first.context().close();
});

test('a call refused with 429 is asked again after Retry-After and the page is kept', async () => {
  const page = await newPage(browser);
  await login(page, fg);
  let refused = 0;
  let served = 0;
  // The first two health readings of the upstream are refused as the API's
  // limit refuses them, with a one-second Retry-After.
  await page.route('**/api/v1/upstreams/shop/health', async (route) => {
    if (refused < 2) {
      refused += 1;
      await route.fulfill({
        status: 429,
        headers: { 'retry-after': '1', 'content-type': 'application/json' },
        body: JSON.stringify({ error: 'rate limit of 100 requests per minute exceeded; retry in 1 s', code: 'RATE_LIMITED', details: {} }),
      });
      return;
    }
    served += 1;
    await route.continue();
  });
  const started = Date.now();
  await page.goto(`${fg.url}/#/upstreams/view/shop`);
  await page.getByRole('heading', { name: 'Upstream shop' }).waitFor();
  await page.locator('#target-health tr[data-target]').first().waitFor();
  assert.equal(refused, 2);
  assert.ok(served >= 1);
  assert.ok(Date.now() - started >= 2000, 'it waited out both Retry-Afters');
  await page.locator('.toast', { hasText: "The API's rate limit was reached; retrying in 1 s." }).first().waitFor();
  assert.equal(await page.locator('.form-error[role=alert]:not(:empty)').count(), 0);
  assert.equal(await page.getByText('Target health is unavailable').count(), 0);
  page.assertClean(['status of 429']);
  await page.context().close();
});
