// States the dashboard must not embellish: a target no check has probed is "not
// probed", an open breaker whose trial time has passed is "waiting for traffic"
// (not a next trial in the past), and the instance's name from the settings is
// in the window title and the brand, updated when the setting is saved.

import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { launch, login, newPage, startFleetgate, startUpstream, until } from '../lib/harness.mjs';

let fg; let browser; let upstream;

before(async () => {
  [fg, browser, upstream] = await Promise.all([startFleetgate(), launch(), startUpstream()]);
});

after(async () => {
  await browser?.close();
  await fg?.stop();
  await upstream?.stop();
});

test('a target never probed is "not probed"; with an active check it becomes healthy', async () => {
  await fg.api('POST', '/api/v1/upstreams', { name: 'quiet', targets: [{ url: upstream.url, weight: 1 }] });
  const page = await newPage(browser);
  await login(page, fg);
  await page.goto(`${fg.url}/#/upstreams/view/quiet`);
  const cell = page.locator(`#target-health tr[data-target="${upstream.url}"]`);
  await cell.getByText('not probed', { exact: true }).waitFor();
  assert.match(await cell.locator('.badge').first().getAttribute('title'), /No active health check/);

  // An active check probes it: healthy, with its last check.
  const u = await fg.api('GET', '/api/v1/upstreams/quiet');
  await fg.api('PUT', '/api/v1/upstreams/quiet', { ...u, health_check: { ...u.health_check,
    active: { path: '/', interval_ms: 500, timeout_ms: 400, healthy_threshold: 1, unhealthy_threshold: 1, expected_statuses: [200] } } });
  await until('the first active check', async () => {
    const h = await fg.api('GET', '/api/v1/upstreams/quiet/health');
    return h[0] && h[0].last_check;
  });
  await page.reload();
  await cell.getByText('healthy', { exact: true }).waitFor();
  page.assertClean();
  await page.context().close();
});

test('an open breaker past its trial time says "waiting for traffic"', async () => {
  await fg.api('POST', '/api/v1/upstreams', {
    name: 'broken', targets: [{ url: upstream.url }], retries: { attempts: 0 },
    circuit_breaker: { enabled: true, failure_rate_percent: 50, min_requests: 4, window_ms: 10_000, open_ms: 1_000, half_open_requests: 1 },
  });
  await fg.api('POST', '/api/v1/routes', { id: 'broken', path: '/broken', upstream: 'broken' });
  await until('the gateway to serve /broken', async () => (await fetch(`${fg.gw}/broken`)).status === 200);
  upstream.state.status = 500;
  try {
    await until('the breaker to open', async () => {
      await fetch(`${fg.gw}/broken`).then((r) => r.arrayBuffer());
      const list = await fg.api('GET', '/api/v1/circuit-breakers');
      const b = (list.items || list).find((x) => x.upstream === 'broken');
      return b && b.state === 'open';
    });
  } finally {
    upstream.state.status = 200;
  }
  // No traffic from here on: once the open time has passed, the breaker only
  // waits for a request to try.
  await new Promise((r) => setTimeout(r, 1_500));
  const page = await newPage(browser);
  await login(page, fg);
  await page.goto(`${fg.url}/#/breakers`);
  const row = page.locator('#breakers-table tr[data-upstream="broken"][data-state="open"]');
  await row.waitFor();
  await row.getByText('waiting for traffic').waitFor();
  assert.doesNotMatch(await row.textContent(), / ago$/);
  page.assertClean();
  await page.context().close();
});

test('the instance name is in the title and the brand, and follows the setting', async () => {
  const settings = await fg.api('GET', '/api/v1/settings');
  await fg.api('PUT', '/api/v1/settings', { ...settings, general: { ...settings.general, instance_name: 'edge-eu-1' } });
  const page = await newPage(browser);
  await login(page, fg);
  await page.locator('.side .brand .name').getByText('edge-eu-1').waitFor();
  assert.equal(await page.title(), 'edge-eu-1 · Fleetgate');
  assert.ok(await page.locator('.side .brand .sub').isVisible());

  await page.goto(`${fg.url}/#/settings`);
  const name = page.locator('#settings-general').getByLabel('Instance name');
  await name.fill('edge-us-2');
  await page.locator('#settings-general').getByRole('button', { name: 'Save' }).click();
  await page.locator('.side .brand .name').getByText('edge-us-2').waitFor();
  assert.equal(await page.title(), 'edge-us-2 · Fleetgate');
  page.assertClean();
  await page.context().close();
});
