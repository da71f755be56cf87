// Routes, upstreams, circuit breakers and rate limits in the dashboard: an upstream
// and a route made through the forms carry real traffic (seen on the overview and
// on #/breakers), the API's validation messages land next to their fields, a stale
// edit is refused with a clear message, a breaker opens live, and a viewer gets no
// edit controls while the server refuses a forced change.

import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import {
  launch, login, newPage, screenshot, startFleetgate, startUpstream, until,
} from '../lib/harness.mjs';

let fg; let browser; let upstream; let flaky;

before(async () => {
  [fg, browser, upstream, flaky] = await Promise.all([startFleetgate(), launch(), startUpstream(), startUpstream()]);
  // The test upstreams are on loopback, which the reachability test (like webhooks)
  // refuses unless the setting allows private destinations.
  const settings = await fg.api('GET', '/api/v1/settings');
  settings.webhooks.allow_private_targets = true;
  await fg.api('PUT', '/api/v1/settings', settings);
});

after(async () => {
  await browser?.close();
  await fg?.stop();
  await upstream?.stop();
  await flaky?.stop();
});

// Chromium logs every 4xx answer of fetch() as a console error; these are the
// refusals a test provokes on purpose.
const expected = (...statuses) => statuses.map((s) => `status of ${s}`);

/// Sends requests to the gateway until the returned function is called.
function traffic(path, pauseMs = 20) {
  let sending = true;
  const loop = (async () => {
    while (sending) {
      await fetch(`${fg.gw}${path}`).then((r) => r.arrayBuffer()).catch(() => {});
      await new Promise((r) => setTimeout(r, pauseMs));
    }
  })();
  return async () => { sending = false; await loop; };
}

test('an upstream and a route made through the forms carry traffic, seen on the overview and on #/breakers', async () => {
  const page = await newPage(browser);
  await login(page, fg);

  // The upstream, from the list's "New upstream" button.
  await page.getByRole('link', { name: 'Upstreams' }).click();
  await page.getByText('No upstreams yet.').waitFor();
  await page.getByRole('link', { name: 'New upstream' }).click();
  await page.getByLabel('Name', { exact: true }).fill('shop');
  await page.getByLabel('Target 1 URL').fill(upstream.url);
  // The target answers the manager's reachability test.
  await page.getByRole('button', { name: 'Test target 1' }).click();
  await page.locator('.test-result').filter({ hasText: 'Reachable' }).waitFor();
  await page.getByLabel('Extra attempts (0–5)').fill('0');
  await screenshot(page, 'upstream-form');
  await page.getByRole('button', { name: 'Create upstream' }).click();

  // Its detail page: the target's live health.
  await page.getByRole('heading', { name: 'Upstream shop' }).waitFor();
  await page.locator('#target-health tr[data-state="healthy"]').waitFor();
  const saved = await fg.api('GET', '/api/v1/upstreams/shop');
  assert.deepEqual(saved.targets, [{ url: upstream.url, weight: 1 }]);
  assert.equal(saved.retries.attempts, 0);

  // The route, with a rate limit low enough for the traffic below to hit it.
  await page.getByRole('link', { name: 'Routes' }).click();
  await page.getByRole('link', { name: 'New route' }).click();
  await page.getByLabel('ID', { exact: true }).fill('shop');
  await page.getByLabel('Path', { exact: true }).fill('/shop');
  await page.getByLabel('Upstream', { exact: true }).fill('shop');
  await page.getByLabel('Tags').fill('public, store');
  await page.getByLabel('GET', { exact: true }).check();
  await page.getByLabel('Limit the request rate of this route').check();
  await page.getByLabel('Requests allowed').fill('20');
  await page.getByLabel('Per window (ms)').fill('10000');
  await page.getByLabel('Set on the response').fill('X-Served-By: fleetgate');
  await screenshot(page, 'route-form');
  await page.getByRole('button', { name: 'Create route' }).click();
  await page.locator('#routes-table tr[data-route="shop"]').waitFor();
  const route = await fg.api('GET', '/api/v1/routes/shop');
  assert.equal(route.path, '/shop');
  assert.deepEqual(route.methods, ['GET']);
  assert.deepEqual(route.tags, ['public', 'store']);
  assert.deepEqual(route.rate_limit, { enabled: true, max: 20, window_ms: 10000, message: 'Too many requests, please try again later.', key: 'ip' });
  assert.deepEqual(route.response_headers.set, { 'X-Served-By': 'fleetgate' });

  // Traffic through the gateway reaches the upstream.
  const first = await until('the gateway to serve the new route', async () => {
    const r = await fetch(`${fg.gw}/shop/item`);
    return r.status === 200 ? r : null;
  });
  assert.equal(first.headers.get('x-served-by'), 'fleetgate');
  const stop = traffic('/shop/item');
  try {
    // The list shows the route's live traffic.
    await until('traffic in the routes list', async () => /\/s/.test(await page.locator('tr[data-route="shop"] td.num').textContent()));
    await screenshot(page, 'routes-list');

    await page.getByRole('link', { name: 'Overview' }).click();
    await until('requests/s on the overview', async () => Number((await page.locator('#stat-rps').textContent()).replace(/,/g, '')) > 0);
    await page.locator('#top-routes').getByRole('link', { name: 'shop' }).waitFor();
    await screenshot(page, 'gateway-overview');

    // #/breakers: the upstream's breaker, closed, and the route's rejections.
    await page.getByRole('link', { name: 'Breakers & limits' }).click();
    await page.locator('#breakers-table tr[data-upstream="shop"][data-state="closed"]').waitFor();
    await until('rate-limited requests of the route', async () => {
      const text = await page.locator('#rate-limits-table tr[data-route="shop"] td:nth-child(3)').textContent();
      return Number(text.replace(/,/g, '')) > 0;
    }, 15_000);
    assert.match(await page.locator('#rate-limits-table tr[data-route="shop"]').textContent(), /20 \/ 10 s per ip/);
    assert.equal(await page.locator('#live-status').textContent(), 'live');
    // The aggregated rate_limit.exceeded event arrives within its 10 s window.
    await page.locator('#transitions tr[data-type="rate_limit.exceeded"]').first().waitFor({ timeout: 15_000 });
    await screenshot(page, 'breakers-traffic');
  } finally {
    await stop();
  }
  page.assertClean();
  await page.context().close();
});

test('the API\'s validation messages appear next to the fields they name', async () => {
  const page = await newPage(browser);
  await login(page, fg);
  await page.goto(`${fg.url}/#/routes/new`);
  await page.getByLabel('ID', { exact: true }).fill('broken');
  await page.getByLabel('Path', { exact: true }).fill('/api/(v1');
  await page.getByLabel('Match', { exact: true }).selectOption('regex');
  await page.getByLabel('Upstream', { exact: true }).fill('shop');
  await page.getByLabel('Allow only').fill('10.0.0.0/8\n10.0.0.0/33');
  await page.getByRole('button', { name: 'Create route' }).click();
  const pathError = page.locator('[data-field="path"] .error');
  await pathError.filter({ hasText: 'invalid regular expression' }).waitFor();
  await page.locator('[data-field="ip_allow"] .error').filter({ hasText: '"10.0.0.0/33" is not an IP address or CIDR block' }).waitFor();
  assert.ok(await page.locator('[data-field="path"]').evaluate((el) => el.classList.contains('invalid')));
  // The first invalid field has the focus; nothing was created.
  assert.equal(await page.evaluate(() => document.activeElement.closest('[data-field]')?.dataset.field), 'path');
  await screenshot(page, 'route-validation');
  await assert.rejects(fg.api('GET', '/api/v1/routes/broken'), /404/);

  // Fixed, it saves.
  await page.getByLabel('Path', { exact: true }).fill('^/api/(v1|v2)/');
  await page.getByLabel('Allow only').fill('10.0.0.0/8\n127.0.0.1');
  await page.getByRole('button', { name: 'Create route' }).click();
  await page.locator('#routes-table tr[data-route="broken"]').waitFor();

  // The upstream form places messages on the target they name.
  await page.goto(`${fg.url}/#/upstreams/new`);
  await page.getByLabel('Name', { exact: true }).fill('bad-targets');
  await page.getByLabel('Target 1 URL').fill('http://127.0.0.1:1');
  await page.getByRole('button', { name: 'Add target' }).click();
  await page.getByLabel('Target 2 URL').fill('ftp://files.example.com');
  await page.getByLabel('Target 2 weight').fill('5000');
  await page.getByLabel('Window (ms)').fill('5');
  await page.getByRole('button', { name: 'Create upstream' }).click();
  await page.locator('[data-field="targets[1].url"] .error').filter({ hasText: 'must start with http:// or https://' }).waitFor();
  await page.locator('[data-field="targets[1].weight"] .error').filter({ hasText: 'between 0 and 1000' }).waitFor();
  await page.locator('[data-field="circuit_breaker.window_ms"] .error').filter({ hasText: 'between 100 and 3600000' }).waitFor();
  assert.equal(await page.locator('[data-field="targets[0].url"] .error').textContent(), '');
  await screenshot(page, 'upstream-validation');
  page.assertClean(expected(400));
  await page.context().close();
});

test('an edit of a route someone else changed meanwhile is refused with a clear message', async () => {
  const page = await newPage(browser);
  await login(page, fg);
  await page.goto(`${fg.url}/#/routes/edit/shop`);
  await page.getByLabel('Priority').fill('7');
  // Another operator saves first.
  await fg.api('PUT', '/api/v1/routes/shop', { ...(await fg.api('GET', '/api/v1/routes/shop')), description: 'changed elsewhere' });
  await page.getByRole('button', { name: 'Save changes' }).click();
  await page.locator('.form-error').filter({ hasText: 'changed by someone else' }).waitFor();
  await page.locator('.form-error').filter({ hasText: 'Changed meanwhile: description.' }).waitFor();
  await screenshot(page, 'route-stale-edit');
  assert.equal((await fg.api('GET', '/api/v1/routes/shop')).priority, 0);
  // Loading the current version, then saving again, works.
  await page.getByRole('button', { name: 'Load the current version' }).click();
  await until('the current version in the form', async () => (await page.getByLabel('Description').inputValue()) === 'changed elsewhere');
  assert.equal(await page.locator('.form-error').textContent(), '');
  await page.getByLabel('Priority').fill('7');
  await page.getByRole('button', { name: 'Save changes' }).click();
  await page.locator('#routes-table tr[data-route="shop"]').waitFor();
  const r = await fg.api('GET', '/api/v1/routes/shop');
  assert.equal(r.priority, 7);
  assert.equal(r.description, 'changed elsewhere');
  page.assertClean(expected(412));
  await page.context().close();
});

test('a route is edited as JSON, with JSON mistakes shown before anything is sent', async () => {
  const page = await newPage(browser);
  await login(page, fg);
  await page.goto(`${fg.url}/#/routes/edit/broken`);
  await page.getByRole('button', { name: 'Edit as JSON' }).click();
  const area = page.getByLabel('Route as JSON');
  const doc = JSON.parse(await area.inputValue());
  assert.equal(doc.id, 'broken');
  assert.equal(doc.match, 'regex');
  await area.fill('{ "id": "broken", ');
  await page.getByRole('button', { name: 'Save changes' }).click();
  await page.locator('[data-field="_json"] .error').filter({ hasText: 'not valid JSON' }).waitFor();
  await area.fill(JSON.stringify({ ...doc, priority: 42, hosts: ['api.example.com'], description: 'from JSON' }, null, 2));
  await screenshot(page, 'route-json');
  await page.getByRole('button', { name: 'Save changes' }).click();
  await page.locator('#routes-table tr[data-route="broken"]').waitFor();
  const saved = await fg.api('GET', '/api/v1/routes/broken');
  assert.equal(saved.priority, 42);
  assert.deepEqual(saved.hosts, ['api.example.com']);
  assert.equal(saved.description, 'from JSON');
  // Back in the form, JSON edits show in the fields.
  await page.goto(`${fg.url}/#/routes/edit/broken`);
  await page.getByRole('button', { name: 'Edit as JSON' }).click();
  await area.fill(JSON.stringify({ ...saved, priority: 3 }));
  await page.getByRole('button', { name: 'Edit as form' }).click();
  assert.equal(await page.getByLabel('Priority').inputValue(), '3');
  page.assertClean();
  await page.context().close();
});

test('routes are filtered, switched off and on from the list, and deleted after a confirmation', async () => {
  const page = await newPage(browser);
  await login(page, fg);
  await page.goto(`${fg.url}/#/routes`);
  const rows = page.locator('#routes-table tbody tr');
  await page.locator('tr[data-route="shop"]').waitFor();
  // A route added elsewhere appears in the open list, its tag in the filter.
  await fg.api('POST', '/api/v1/routes', { id: 'old-api', path: '/old', upstream: 'shop', tags: ['legacy'] });
  await page.locator('tr[data-route="old-api"]').waitFor();
  await page.getByLabel('Filter by tag').locator('option[value="legacy"]').waitFor({ state: 'attached' });
  assert.equal(await rows.count(), 3);

  // Search, tag and upstream filters.
  await page.getByLabel('Search routes').fill('old');
  await until('the search to apply', async () => (await rows.count()) === 1);
  await page.getByLabel('Search routes').fill('');
  await page.getByLabel('Filter by tag').selectOption('store');
  await until('the tag filter to apply', async () => (await rows.count()) === 1 && (await rows.first().getAttribute('data-route')) === 'shop');
  await page.getByLabel('Filter by tag').selectOption('');
  await page.getByLabel('Filter by upstream').selectOption('shop');
  await until('the upstream filter to apply', async () => (await rows.count()) === 3);

  // Disable, from the switch: the gateway stops serving the route.
  const sw = page.getByRole('switch', { name: 'Route shop enabled' });
  assert.equal(await sw.getAttribute('aria-checked'), 'true');
  await sw.click();
  await page.locator('.toast').filter({ hasText: 'Route shop disabled.' }).waitFor();
  assert.equal(await sw.getAttribute('aria-checked'), 'false');
  assert.equal((await fg.api('GET', '/api/v1/routes/shop')).enabled, false);
  await page.getByLabel('Filter by state').selectOption('off');
  await until('the state filter to apply', async () => (await rows.count()) === 1);
  await screenshot(page, 'routes-disabled');
  await until('the gateway to stop serving /shop', async () => (await fetch(`${fg.gw}/shop/x`)).status === 404);
  await page.getByLabel('Filter by state').selectOption('');
  await page.getByRole('switch', { name: 'Route shop enabled' }).click();
  await page.locator('.toast').filter({ hasText: 'Route shop enabled.' }).waitFor();
  assert.equal((await fg.api('GET', '/api/v1/routes/shop')).enabled, true);

  // Delete: cancelled first, then confirmed.
  await page.getByRole('button', { name: 'Delete route old-api' }).click();
  const dialog = page.getByRole('dialog');
  await dialog.getByText('Requests it matches will no longer be forwarded').waitFor();
  await screenshot(page, 'route-delete-confirm');
  await dialog.getByRole('button', { name: 'Cancel' }).click();
  await fg.api('GET', '/api/v1/routes/old-api');
  await page.getByRole('button', { name: 'Delete route old-api' }).click();
  await page.getByRole('dialog').getByRole('button', { name: 'Delete route' }).click();
  await page.locator('tr[data-route="old-api"]').waitFor({ state: 'detached' });
  await assert.rejects(fg.api('GET', '/api/v1/routes/old-api'), /404/);

  // An upstream in use cannot be deleted; the list says by whom.
  await page.goto(`${fg.url}/#/upstreams`);
  await page.getByRole('button', { name: 'Delete upstream shop' }).click();
  await page.locator('.toast').filter({ hasText: 'used by routes' }).waitFor();
  page.assertClean();
  await page.context().close();
});

test('an upstream is edited (targets, balancing, health check) and deleted from its own page', async () => {
  await fg.api('POST', '/api/v1/upstreams', { name: 'spare', targets: [{ url: upstream.url }] });
  const page = await newPage(browser);
  await login(page, fg);
  await page.goto(`${fg.url}/#/upstreams/view/spare`);
  await page.locator('#target-health tr[data-state]').first().waitFor();
  await page.getByRole('link', { name: 'Edit', exact: true }).click();
  await page.getByRole('button', { name: 'Add target' }).click();
  await page.getByLabel('Target 2 URL').fill(flaky.url);
  await page.getByLabel('Target 2 weight').fill('3');
  await page.getByLabel('Load balancing').selectOption('weighted');
  await page.getByLabel('Probe every target on a schedule').check();
  await page.getByLabel('Every (ms)').fill('1000');
  await page.getByRole('button', { name: 'Save changes' }).click();
  await page.getByRole('heading', { name: 'Upstream spare' }).waitFor();
  await until('both targets in the health table', async () => (await page.locator('#target-health tr[data-state]').count()) === 2);
  await page.getByText('GET /health every 1 s').waitFor();
  const u = await fg.api('GET', '/api/v1/upstreams/spare');
  assert.equal(u.load_balancing, 'weighted');
  assert.deepEqual(u.targets, [{ url: upstream.url, weight: 1 }, { url: flaky.url, weight: 3 }]);
  assert.equal(u.health_check.active.interval_ms, 1000);
  assert.equal(u.health_check.active.path, '/health');
  // The active checks run: each target gets a last-check time.
  await until('an active check of each target', async () => (await page.locator('#target-health time').count()) === 2, 15_000);
  await screenshot(page, 'upstream-edited');

  await page.getByRole('button', { name: 'Delete', exact: true }).click();
  await page.getByRole('dialog').getByRole('button', { name: 'Delete upstream' }).click();
  await page.locator('#upstreams-table').waitFor();
  await assert.rejects(fg.api('GET', '/api/v1/upstreams/spare'), /404/);
  assert.equal(await page.locator('tr[data-upstream="spare"]').count(), 0);
  page.assertClean();
  await page.context().close();
});

test('a circuit breaker opens live on #/breakers and on the upstream\'s page', async () => {
  await fg.api('POST', '/api/v1/upstreams', { name: 'flaky', targets: [{ url: flaky.url }], retries: { attempts: 0 } });
  await fg.api('POST', '/api/v1/routes', { id: 'flaky', path: '/flaky', upstream: 'flaky' });
  const page = await newPage(browser);
  await login(page, fg);
  await page.goto(`${fg.url}/#/breakers`);
  await page.locator('#live-status').filter({ hasText: 'live' }).waitFor();
  const row = page.locator('#breakers-table tr[data-upstream="flaky"]');
  await row.waitFor();
  await until('the gateway to serve /flaky', async () => (await fetch(`${fg.gw}/flaky`)).status === 200);
  const stop = traffic('/flaky');
  try {
    await page.locator('#breakers-table tr[data-upstream="flaky"][data-state="closed"]').waitFor();
    flaky.state.status = 500;
    // ≥50% of ≥10 requests fail: the breaker opens, and the page shows it without a reload.
    await page.locator('#breakers-table tr[data-upstream="flaky"][data-state="open"]').waitFor({ timeout: 15_000 });
    await page.locator('#transitions tr[data-type="circuit_breaker.opened"]').waitFor({ timeout: 10_000 });
    assert.match(await page.locator('#transitions tr[data-type="circuit_breaker.opened"]').first().textContent(), /flaky/);
    assert.notEqual(await page.locator('#stat-open').textContent(), '0');
    await screenshot(page, 'breakers-open');

    await page.goto(`${fg.url}/#/upstreams/view/flaky`);
    await page.locator('#up-breaker').getByText('open', { exact: true }).waitFor();
    await page.locator('#upstream-events').getByText('circuit_breaker.opened').waitFor();
    await screenshot(page, 'upstream-breaker-open');
  } finally {
    await stop();
    flaky.state.status = 200;
  }
  page.assertClean();
  await page.context().close();
});

test('the gateway views are usable at phone width', async () => {
  const page = await newPage(browser, { width: 390, height: 844 });
  await login(page, fg);
  for (const [view, ready, name] of [
    ['routes', '#routes-table tr[data-route="shop"]', 'routes-phone'],
    ['routes/edit/shop', '[data-field="path"] input', 'route-form-phone'],
    ['upstreams/view/shop', '#target-health tbody tr', 'upstream-phone'],
    ['upstreams/edit/shop', '.target-row input', 'upstream-form-phone'],
    ['breakers', '#breakers-table tr[data-upstream="shop"]', 'breakers-phone'],
  ]) {
    await page.goto(`${fg.url}/#/${view}`);
    await page.locator(ready).first().waitFor();
    const overflow = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
    assert.ok(overflow <= 1, `#/${view} scrolls sideways by ${overflow}px`);
    await screenshot(page, name);
  }
  // Navigation is behind the menu, and reachable by keyboard.
  await page.getByRole('button', { name: 'Menu' }).focus();
  await page.keyboard.press('Enter');
  await page.getByRole('link', { name: 'Revisions' }).waitFor();
  page.assertClean();
  await page.context().close();
});

test('a viewer sees no edit controls on routes, upstreams and revisions, and a forced change is refused', async () => {
  await fg.api('POST', '/api/v1/users', { username: 'watcher', password: 'watcher-password-123', role: 'viewer' });
  const page = await newPage(browser);
  await login(page, fg, 'watcher', 'watcher-password-123');
  assert.equal(await page.locator('#who-role').textContent(), 'viewer');
  const none = async (what) => {
    const controls = [/^New route$/, /^New upstream$/, /^Edit\b(?! as JSON)/, /^Delete/, /^Save changes$/, /^Create/,
      /^Roll back/, /^Add target$/, /^Test target/, /^Remove target/, /^Cancel$/];
    for (const name of controls) {
      const n = await page.getByRole('button', { name }).or(page.getByRole('link', { name })).count();
      assert.equal(n, 0, `${what} shows a "${name.source}" control to a viewer`);
    }
    assert.equal(await page.getByRole('switch').count(), 0, `${what} shows a switch to a viewer`);
    assert.equal(await page.locator('main input:not([readonly]):not([disabled]):not([type="search"]):not([type="checkbox"]):not(#against)').count(), 0,
      `${what} has an editable input`);
  };

  await page.goto(`${fg.url}/#/routes`);
  await page.locator('#routes-table tr[data-route="shop"]').waitFor();
  await none('#/routes');
  await screenshot(page, 'viewer-routes');
  // The route is readable but every control is read-only.
  await page.getByRole('link', { name: 'View route shop' }).click();
  await page.getByText('Read only: your role (viewer)').waitFor();
  assert.equal(await page.getByLabel('Path', { exact: true }).getAttribute('readonly'), '');
  await none('#/routes/edit/shop');
  await screenshot(page, 'viewer-route');

  await page.goto(`${fg.url}/#/upstreams`);
  await page.locator('#upstreams-table tr[data-upstream="shop"]').waitFor();
  await none('#/upstreams');
  await page.goto(`${fg.url}/#/upstreams/view/shop`);
  await page.locator('#target-health tr').first().waitFor();
  await none('#/upstreams/view/shop');

  await page.goto(`${fg.url}/#/revisions`);
  await page.locator('#revisions-table tr[data-revision]').first().waitFor();
  await none('#/revisions');
  const first = await page.locator('#revisions-table tr[data-revision]').last().getAttribute('data-revision');
  await page.goto(`${fg.url}/#/revisions/${first}`);
  await page.locator('#side-by-side').waitFor();
  await none(`#/revisions/${first}`);
  await screenshot(page, 'viewer-revision');

  // Forced from the page with the session and its CSRF token: refused.
  const statuses = await page.evaluate(async () => {
    const csrf = document.cookie.split('; ').find((c) => c.startsWith('csrf_token='))?.split('=')[1];
    const send = (method, path, body) => fetch(path, {
      method, credentials: 'same-origin',
      headers: { 'content-type': 'application/json', 'x-csrf-token': decodeURIComponent(csrf || '') },
      body: body ? JSON.stringify(body) : undefined,
    }).then((r) => r.status);
    return [
      await send('POST', '/api/v1/routes', { id: 'sneaky', path: '/sneaky', upstream: 'shop' }),
      await send('PUT', '/api/v1/routes/shop', { path: '/shop', upstream: 'shop', enabled: false }),
      await send('DELETE', '/api/v1/upstreams/flaky'),
      await send('POST', '/api/v1/revisions/1/rollback'),
    ];
  });
  assert.deepEqual(statuses, [403, 403, 403, 403]);
  assert.equal((await fg.api('GET', '/api/v1/routes/shop')).enabled, true);
  await assert.rejects(fg.api('GET', '/api/v1/routes/sneaky'), /404/);
  page.assertClean(expected(403));
  await page.context().close();
});
