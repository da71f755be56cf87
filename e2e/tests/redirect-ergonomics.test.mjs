// Operator ergonomics, continued: the routes list orders by its columns; a
// project's redirects have a "drafts only" filter, bulk deletion of a selection,
// hit counts from the gateway and a "what does this URL do" tester; an admin
// resets an open circuit breaker from the upstream page (a viewer sees no button
// and is refused); a webhook delivery's event is a link to that event's page.

import assert from 'node:assert/strict';
import http from 'node:http';
import { after, before, test } from 'node:test';
import {
  launch, login, newPage, screenshot, startFleetgate, startUpstream, until,
} from '../lib/harness.mjs';

let fg; let browser; let flaky; let receiver;
const P = '/api/v1/namespaces/web/projects/site';

before(async () => {
  [fg, browser, flaky, receiver] = await Promise.all([startFleetgate(), launch(), startUpstream(), startUpstream()]);
  const settings = await fg.api('GET', '/api/v1/settings');
  settings.webhooks.allow_private_targets = true;
  await fg.api('PUT', '/api/v1/settings', settings);
  await fg.api('POST', '/api/v1/upstreams', { name: 'flaky-pool', targets: [{ url: flaky.url, weight: 1 }],
    retries: { attempts: 0 }, circuit_breaker: { open_ms: 600_000 } });
  for (const [id, path] of [['b-orders', '/zeta'], ['a-users', '/beta'], ['c-flaky', '/alpha']]) {
    await fg.api('POST', '/api/v1/routes', { id, path, upstream: 'flaky-pool' });
  }
  await fg.api('POST', '/api/v1/namespaces', { name: 'web' });
  await fg.api('POST', '/api/v1/namespaces/web/projects', { name: 'site', hosts: ['site.test'] });
  for (const source of ['/a', '/b', '/c']) {
    await fg.api('POST', `${P}/redirects`, { type: 'BASIC', source, target: `/new${source}` });
  }
  await fg.api('POST', `${P}/redirects`, { type: 'REGEX', source: '^/blog/(\\d+)$', target: '/posts/$1', status: 'MOVED_PERMANENT' });
  await fg.api('POST', `${P}/publish`);
});

after(async () => {
  await browser?.close();
  await fg?.stop();
  await flaky?.stop();
  await receiver?.stop();
});

// Chromium logs every 4xx answer of fetch() as a console error; these are the
// refusals a test provokes on purpose.
const expected = (...statuses) => statuses.map((s) => `status of ${s}`);

/// A request to the gateway with a Host header; resolves to the status.
function gateway(host, path) {
  const { hostname, port } = new URL(fg.gw);
  return new Promise((resolve, reject) => {
    const req = http.request({ hostname, port, path, headers: { host } }, (res) => {
      res.resume();
      res.on('end', () => resolve(res.statusCode));
    });
    req.on('error', reject);
    req.end();
  });
}

const order = (page) => page.locator('#routes-table tbody tr').evaluateAll((rows) => rows.map((r) => r.dataset.route));

test('the routes list orders by a column, again to reverse', async () => {
  const page = await newPage(browser);
  await login(page, fg);
  await page.goto(`${fg.url}/#/routes`);
  await page.locator('#routes-table tbody tr').first().waitFor();
  // The header button's name ends with its arrow (↕, ↑ or ↓).
  const head = (name) => page.locator('#routes-table thead th').filter({ has: page.getByRole('button', { name: new RegExp(`^${name}\\b`) }) });
  await head('Match').getByRole('button').click();
  assert.deepEqual(await order(page), ['c-flaky', 'a-users', 'b-orders'], 'by path: /alpha, /beta, /zeta');
  assert.equal(await head('Match').getAttribute('aria-sort'), 'ascending');
  await head('Route').getByRole('button').click();
  assert.deepEqual(await order(page), ['a-users', 'b-orders', 'c-flaky']);
  assert.equal(await head('Route').getAttribute('aria-sort'), 'ascending');
  assert.equal(await head('Match').getAttribute('aria-sort'), 'none');
  await head('Route').getByRole('button').click();
  assert.deepEqual(await order(page), ['c-flaky', 'b-orders', 'a-users']);
  assert.equal(await head('Route').getAttribute('aria-sort'), 'descending');
  await head('Match').getByRole('button').click();
  await head('Match').getByRole('button').click();
  assert.deepEqual(await order(page), ['b-orders', 'a-users', 'c-flaky'], 'by path, reversed');
  assert.equal(await head('Match').getAttribute('aria-sort'), 'descending');
  // The order survives a filter.
  await page.getByRole('searchbox', { name: 'Search routes' }).fill('-');
  assert.deepEqual(await order(page), ['b-orders', 'a-users', 'c-flaky']);
  await screenshot(page, 'routes-sorted');
  page.assertClean();
  await page.context().close();

  const phone = await newPage(browser, { width: 390, height: 844 });
  await login(phone, fg);
  await phone.goto(`${fg.url}/#/routes`);
  await phone.locator('#routes-table tbody tr').first().waitFor();
  await screenshot(phone, 'routes-sorted-phone');
  phone.assertClean();
  await phone.context().close();
});

test('redirects: hit counts, drafts only, bulk delete and the URL tester', async () => {
  // Traffic on the published rules: 3 × /a, 2 × /blog/…
  for (const p of ['/a', '/a', '/a', '/blog/1', '/blog/2']) {
    assert.equal(await gateway('site.test', p), p.startsWith('/blog') ? 301 : 302);
  }
  // Drafts: /d is new, /c is changed.
  await fg.api('POST', `${P}/redirects`, { type: 'BASIC', source: '/d', target: '/new/d' });
  const rows = await fg.api('GET', `${P}/redirects`);
  const c = rows.items.find((r) => r.source === '/c');
  await fg.api('PUT', `${P}/redirects/${c.id}`, { type: 'BASIC', source: '/c', target: '/changed/c' });

  const page = await newPage(browser);
  await login(page, fg);
  await page.goto(`${fg.url}/#/redirects/web/site/redirects`);
  const table = page.locator('#redirects-table');
  const row = (source) => table.locator('tbody tr').filter({ has: page.getByText(source, { exact: true }) });
  await row('/a').waitFor();
  const hitsCell = async (source) => (await row(source).locator('td.num').last().textContent()).trim();
  assert.equal(await hitsCell('/a'), '3');
  assert.equal(await hitsCell('^/blog/(\\d+)$'), '2');
  assert.equal(await hitsCell('/b'), '0');
  assert.equal(await hitsCell('/d'), '—', 'never published');
  await screenshot(page, 'redirects-hits');

  // Drafts only: the new and the changed rule.
  await page.locator('#redirects-drafts-only').check();
  await until('drafts only', async () => (await table.locator('tbody tr').count()) === 2);
  assert.equal(await row('/d').count(), 1);
  assert.equal(await row('/c').count(), 1);
  await screenshot(page, 'redirects-drafts-only');

  // Bulk: select both drafts and delete them in the draft.
  await page.getByRole('checkbox', { name: 'Select all redirects shown' }).check();
  const bulk = page.locator('#redirects-bulk');
  await bulk.getByText('2 selected').waitFor();
  await bulk.getByRole('button', { name: 'Delete' }).click();
  await page.getByRole('dialog').getByRole('button', { name: 'Delete redirects' }).click();
  await page.locator('.toast', { hasText: '2 redirects deleted in the draft.' }).waitFor();
  // /d was never published and is gone; /c is a deletion waiting for publish.
  await table.getByText('No redirects match.').waitFor();
  await page.locator('#redirects-drafts-only').uncheck();
  await row('/a').waitFor();
  assert.equal(await row('/d').count(), 0);
  assert.equal(await row('/c').count(), 0);
  const left = await fg.api('GET', `${P}/redirects?include_deleted=true&drafts=true`);
  assert.deepEqual(left.items.map((r) => [r.source, r.state]), [['/c', 'deleted']]);
  await page.locator('#publish', { hasText: 'Publish 1 change' }).waitFor();

  // One by one with a selection, too: pick /b, then clear.
  await row('/b').getByRole('checkbox').check();
  await bulk.getByText('1 selected').waitFor();
  await bulk.getByRole('button', { name: 'Clear' }).click();
  await until('selection cleared', async () => (await bulk.textContent()) === '');

  // The tester: the published rule, then the draft, then no match.
  const tester = page.locator('#url-tester');
  const result = page.locator('#url-test-result');
  await tester.getByLabel('URL to test').fill('http://site.test/blog/7');
  await tester.getByLabel('Rules to test against').selectOption('published');
  await tester.getByRole('button', { name: 'Test URL' }).click();
  await result.getByText('Matched by').waitFor();
  assert.match(await result.textContent(), /301/);
  assert.equal(await result.locator('code.location').textContent(), '/posts/7');
  assert.match(await result.textContent(), /\^\/blog\/\(\\d\+\)\$/);
  await screenshot(page, 'redirects-url-tester');
  await tester.getByLabel('URL to test').fill('/c');
  await tester.getByRole('button', { name: 'Test URL' }).click();
  await until('published /c', async () => (await result.locator('code.location').textContent().catch(() => '')) === '/new/c');
  await tester.getByLabel('Rules to test against').selectOption('draft');
  await tester.getByRole('button', { name: 'Test URL' }).click();
  await result.getByText('No rule answers this URL').waitFor();
  await tester.getByLabel('URL to test').fill('ftp://x');
  await tester.getByRole('button', { name: 'Test URL' }).click();
  await result.getByRole('alert').getByText(/http:\/\/ or https:\/\//).waitFor();
  page.assertClean(expected(400));
  await page.context().close();

  const phone = await newPage(browser, { width: 390, height: 844 });
  await login(phone, fg);
  await phone.goto(`${fg.url}/#/redirects/web/site/redirects`);
  await phone.locator('#url-tester').waitFor();
  await phone.locator('#redirects-table tbody tr').first().waitFor();
  const overflow = await phone.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
  assert.ok(overflow <= 1, `the project page scrolls sideways by ${overflow}px`);
  await screenshot(phone, 'redirects-ergonomics-phone');
  phone.assertClean();
  await phone.context().close();
});

test('an admin resets an open breaker from the upstream page; a viewer cannot', async () => {
  flaky.state.status = 500;
  await until('breaker open', async () => {
    await fetch(`${fg.gw}/alpha`).then((r) => r.arrayBuffer()).catch(() => {});
    const b = await fg.api('GET', '/api/v1/circuit-breakers');
    return b.find((x) => x.upstream === 'flaky-pool')?.state === 'open';
  });
  flaky.state.status = 200;

  const page = await newPage(browser);
  await login(page, fg);
  await page.goto(`${fg.url}/#/upstreams/view/flaky-pool`);
  const reset = page.locator('#reset-breaker');
  await until('reset enabled', async () => (await reset.count()) === 1 && !(await reset.isDisabled()));
  // The badge and the button are drawn from separate answers: wait for the badge too.
  await until('open badge', async () => /open/.test(await page.locator('#up-breaker').textContent()));
  await screenshot(page, 'upstream-breaker-open');
  await reset.click();
  await page.getByRole('dialog').getByRole('button', { name: 'Reset breaker' }).click();
  await page.locator('.toast', { hasText: 'Circuit breaker of flaky-pool reset (was open).' }).waitFor();
  await until('closed badge', async () => /closed/.test(await page.locator('#up-breaker').textContent()));
  assert.ok(await reset.isDisabled(), 'a closed breaker has nothing to reset');
  assert.equal((await fetch(`${fg.gw}/alpha`)).status, 200, 'traffic flows again');
  const audit = await fg.api('GET', '/api/v1/audit?action=circuit_breaker.reset');
  assert.equal(audit.items[0].actor, 'admin');
  assert.equal(audit.items[0].target_id, 'flaky-pool');
  await screenshot(page, 'upstream-breaker-reset');
  page.assertClean();
  await page.context().close();

  await fg.api('POST', '/api/v1/users', { username: 'vic', password: 'vic-password-1', role: 'viewer' });
  const viewer = await newPage(browser, { width: 390, height: 844 });
  await login(viewer, fg, 'vic', 'vic-password-1');
  await viewer.goto(`${fg.url}/#/upstreams/view/flaky-pool`);
  await viewer.locator('#up-breaker').waitFor();
  await viewer.waitForTimeout(300);
  assert.equal(await viewer.locator('#reset-breaker').count(), 0, 'no reset button for a viewer');
  const status = await viewer.evaluate(async () => {
    const csrf = document.cookie.split('; ').find((x) => x.startsWith('csrf_token=')).split('=')[1];
    const r = await fetch('/api/v1/circuit-breakers/flaky-pool/reset', {
      method: 'POST', headers: { 'x-csrf-token': decodeURIComponent(csrf) },
    });
    return r.status;
  });
  assert.equal(status, 403);
  await screenshot(viewer, 'upstream-viewer-phone');
  viewer.assertClean(expected(403));
  await viewer.context().close();
});

test('a webhook delivery links to its event, which has its own page', async () => {
  const hook = await fg.api('POST', '/api/v1/webhooks', { url: `${receiver.url}/hook`, events: ['config.*'] });
  // A change raises config.changed, delivered to the hook.
  await fg.api('POST', '/api/v1/upstreams', { name: 'later-pool', targets: [{ url: flaky.url, weight: 1 }] });
  const delivery = await until('a delivery of an event', async () => {
    const d = await fg.api('GET', `/api/v1/webhooks/${hook.id}/deliveries`);
    return d.items.find((x) => x.event_id && x.status === 'success');
  }, 20_000);

  for (const width of [1280, 390]) {
    const page = await newPage(browser, { width, height: 860 });
    await login(page, fg);
    await page.goto(`${fg.url}/#/webhooks/${hook.id}`);
    const link = page.locator('#deliveries').getByRole('link', { name: `Event ${delivery.event_id}` });
    await link.waitFor();
    if (width === 1280) await screenshot(page, 'webhook-delivery-event-link');
    await link.click();
    await page.waitForURL(new RegExp(`#/events/${delivery.event_id}$`));
    const detail = page.locator('#event-detail');
    await detail.waitFor();
    assert.match(await page.locator('main h1').textContent(), new RegExp(`Event ${delivery.event_id}: ${delivery.type}`));
    assert.match(await detail.textContent(), /unacknowledged|acknowledged/);
    await screenshot(page, width === 1280 ? 'event-detail' : 'event-detail-phone');
    if (width === 1280) {
      await detail.getByRole('button', { name: 'Acknowledge' }).click();
      await detail.getByText(/acknowledged .* by admin/).waitFor();
      // An unknown event says so.
      await page.goto(`${fg.url}/#/events/999999999`);
      await page.locator('main [role="alert"]').waitFor();
      page.assertClean(expected(404));
    } else {
      page.assertClean();
    }
    await page.context().close();
  }
});
