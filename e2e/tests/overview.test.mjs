// Sign-in, the overview's live traffic from real requests through the gateway,
// a circuit breaker opening live, and the phone-width layout.

import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import {
  launch, login, newPage, screenshot, startFleetgate, startUpstream, until,
} from '../lib/harness.mjs';

let fg; let browser; let upstream;

before(async () => {
  [fg, browser, upstream] = await Promise.all([startFleetgate(), launch(), startUpstream()]);
});

after(async () => {
  await browser?.close();
  await fg?.stop();
  await upstream?.stop();
});

test('a wrong password is refused and the right one signs in', async () => {
  const page = await newPage(browser);
  await page.goto(fg.url + '/');
  await page.getByLabel('Username').fill('admin');
  await page.getByLabel('Password').fill('not-the-password');
  await page.getByRole('button', { name: 'Sign in' }).click();
  await page.getByText('Wrong username or password.').waitFor();
  await login(page, fg);
  assert.equal(await page.locator('#who-role').textContent(), 'super_admin');
  await screenshot(page, 'overview-empty');
  // Signing out ends the session: the API refuses it afterwards.
  await page.getByRole('button', { name: 'Sign out' }).click();
  await page.getByRole('button', { name: 'Sign in' }).waitFor();
  const status = await page.evaluate(async () => (await fetch('/api/v1/auth/me')).status);
  assert.equal(status, 401);
  // The login failure is an expected 401 in the console; nothing else may fail.
  page.assertClean(['401']);
  await page.context().close();
});

test('traffic through the gateway shows on the overview, and a breaker opens live', async () => {
  await fg.api('POST', '/api/v1/upstreams', {
    name: 'svc', targets: [{ url: upstream.url }], retries: { attempts: 0 },
  });
  await fg.api('POST', '/api/v1/routes', { id: 'api', path: '/', upstream: 'svc' });
  const page = await newPage(browser);
  await login(page, fg);
  await page.locator('#live-status').filter({ hasText: 'live' }).waitFor();
  // Steady traffic while the page watches.
  let sending = true;
  const load = (async () => {
    while (sending) {
      await fetch(`${fg.gw}/hello`).then((r) => r.arrayBuffer()).catch(() => {});
      await new Promise((r) => setTimeout(r, 20));
    }
  })();
  await until('requests/s on the overview', async () => {
    const text = await page.locator('#stat-rps').textContent();
    return Number(text.replace(/,/g, '')) > 0;
  });
  await page.locator('#top-routes').getByRole('link', { name: 'api' }).waitFor();
  await until('a p50 latency', async () => (await page.locator('#stat-p50').textContent()).includes('ms'));
  await screenshot(page, 'overview-traffic');

  // The upstream fails: the breaker opens (≥50% of ≥10 requests) and shows at once.
  upstream.state.status = 500;
  await page.locator('#breakers').getByText('open', { exact: true }).waitFor({ timeout: 15_000 });
  await until('an error rate', async () => (await page.locator('#stat-error-rate').textContent()) !== '0.0%');
  // The breaker's event arrives over the live feed.
  await page.locator('#recent-events').getByText('circuit_breaker.opened').waitFor({ timeout: 10_000 });
  await screenshot(page, 'overview-breaker-open');
  sending = false;
  await load;
  upstream.state.status = 200;
  page.assertClean();
  await page.context().close();
});

test('the overview is usable at phone width', async () => {
  const page = await newPage(browser, { width: 390, height: 844 });
  await login(page, fg);
  await page.locator('#stat-rps').waitFor();
  // Navigation is behind the menu button.
  await page.getByRole('button', { name: 'Menu' }).click();
  await page.getByRole('link', { name: 'Overview' }).waitFor();
  const overflow = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
  assert.ok(overflow <= 1, `the page scrolls sideways by ${overflow}px`);
  await screenshot(page, 'overview-phone');
  page.assertClean();
  await page.context().close();
});
