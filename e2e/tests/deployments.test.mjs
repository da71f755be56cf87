// Deployments in the dashboard, against a real `fleetgate serve` running real
// processes: an app (python3's http.server) created from the form with a domain
// in its service.yml shows running in the list and on its page (its service with
// a pid), its logs panel follows the server's lines as a request goes through
// the gateway with that Host, and stop, start and delete work from the page. A
// compose.yml with a bad port has that problem shown under it with its line, the
// line marked, and nothing is created; a bad name is shown next to the name;
// files the driver cannot start create a stopped deployment whose page opens. The
// files editor saves with If-Match, shows problems on their lines, and reloads a
// version changed meanwhile (412). Releases (bench/lib/release_app.py, deployed
// blue-green): redeployed over the API, listed with their states, one's files
// shown; a rollback from the page makes the gateway answer with the restored
// release while the replaced instance drains; files saved from the page whose
// release fails its health check say that release was dropped and which one
// still serves; a rollback whose release fails says so in the panel. A viewer
// sees deployments and their releases but no controls to change them.

import assert from 'node:assert/strict';
import crypto from 'node:crypto';
import { copyFileSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import http from 'node:http';
import os from 'node:os';
import path from 'node:path';
import { after, before, test } from 'node:test';
import { ROOT, TOKEN, freePort, launch, login, newPage, screenshot, startFleetgate, until } from '../lib/harness.mjs';

let fg; let browser; let site;

before(async () => {
  [fg, browser] = await Promise.all([startFleetgate(), launch()]);
  site = mkdtempSync(path.join(os.tmpdir(), 'fleetgate-e2e-site-'));
  writeFileSync(path.join(site, 'index.html'), 'hello from the e2e app');
});

after(async () => {
  // Whatever a failed test left running is stopped with the deployments.
  try {
    const { items } = await fg.api('GET', '/api/v1/deployments');
    for (const d of items) await fg.api('DELETE', `/api/v1/deployments/${d.name}`);
  } catch { /* the server may be gone */ }
  await browser?.close();
  await fg?.stop();
  if (site) rmSync(site, { recursive: true, force: true });
});

/// GET through the gateway with a Host header (fetch() would not send our Host).
function viaGateway(host, p) {
  const u = new URL(fg.gw);
  return new Promise((resolve, reject) => {
    const req = http.request({ host: u.hostname, port: u.port, path: p, headers: { host } }, (res) => {
      let body = '';
      res.on('data', (c) => { body += c; });
      res.on('end', () => resolve({ status: res.statusCode, body }));
    });
    req.on('error', reject);
    req.end();
  });
}

/// A WebSocket through the gateway with a Host header, left open (the raw socket
/// after the upgrade: `destroy()` closes it).
function openWebSocket(host) {
  const u = new URL(fg.gw);
  return new Promise((resolve, reject) => {
    const req = http.request({ host: u.hostname, port: u.port, path: '/ws', headers: { host,
      connection: 'Upgrade', upgrade: 'websocket', 'sec-websocket-version': '13',
      'sec-websocket-key': crypto.randomBytes(16).toString('base64') } });
    req.on('upgrade', (_res, socket) => resolve(socket));
    req.on('response', (res) => reject(new Error(`no upgrade: ${res.statusCode}`)));
    req.on('error', reject);
    req.end();
  });
}

/// Replaces a textarea's text (fill() on a code editor's textarea).
async function setText(page, selector, text) {
  await page.locator(selector).fill(text);
}

const row = (page, name) => page.locator(`#deployments tbody tr[data-name="${name}"]`);

test('an app created from the form runs, is routed, logs, stops, starts and is deleted', async () => {
  const port = await freePort();
  const compose = `services:
  web:
    command: ["python3", "-u", "-m", "http.server", "${port}", "--bind", "127.0.0.1", "--directory", "${site}"]
    restart: always
`;
  const service = `domains: [app.e2e.test]\nport: ${port}\n`;
  const page = await newPage(browser);
  await login(page, fg);
  await page.goto(`${fg.url}/#/deployments`);
  await page.getByText('No deployments yet.').waitFor();
  assert.equal(await page.locator('.side nav a[data-view="deployments"]').textContent(), 'Deployments');

  await page.getByRole('button', { name: 'New deployment' }).click();
  await page.waitForURL(/#\/deployments\/_new$/);
  const form = page.locator('#deployment-create');
  // Prefilled with a small example.
  assert.match(await form.getByLabel('compose.yml').inputValue(), /services:/);
  assert.ok(await form.getByLabel('Start it now').isChecked());
  await form.getByLabel('Name').fill('web-app');
  await setText(page, '#deployment-create textarea[name="compose"]', compose);
  await setText(page, '#deployment-create textarea[name="service"]', service);
  await screenshot(page, 'deployments-create');
  await form.getByRole('button', { name: 'Create deployment' }).click();

  // Its page: the service running with a pid.
  await page.waitForURL(/#\/deployments\/web-app$/);
  await page.locator('#deployment-name', { hasText: 'web-app' }).waitFor();
  await page.locator('#deployment-status [data-status="running"]').waitFor({ timeout: 20_000 });
  const svc = page.locator('#deployment-services tbody tr[data-service="web"]');
  await svc.locator('.badge[data-state="running"]').waitFor({ timeout: 10_000 });
  const pid = Number(await svc.locator('.pid').textContent());
  assert.ok(Number.isInteger(pid) && pid > 1, `a pid: ${pid}`);
  const api = await fg.api('GET', '/api/v1/deployments/web-app');
  assert.equal(api.services[0].pid, pid);
  // Resource use is read while the page is open.
  await until('the memory to show', async () => /iB$/.test(await page.locator('#deployment-memory').textContent()));
  // The proxy: configured and up to date for its domain.
  await page.locator('#proxy-configured', { hasText: 'configured' }).waitFor();
  await page.locator('#proxy-up-to-date', { hasText: 'up to date' }).waitFor();
  assert.match(await page.locator('#deployment-proxy').textContent(), /app\.e2e\.test/);

  // The list shows it running, with its service, domain (a link) and version.
  await page.goto(`${fg.url}/#/deployments`);
  const r = row(page, 'web-app');
  await r.locator('[data-status="running"]').waitFor();
  const text = await r.textContent();
  assert.match(text, /process/);
  assert.match(text, /1 service/);
  assert.match(text, /web running/);
  assert.equal(await r.getByRole('link', { name: 'app.e2e.test' }).getAttribute('href'), 'http://app.e2e.test/');
  await screenshot(page, 'deployments-list');

  // Logs, followed: a request through the gateway with the app's Host shows up.
  await r.getByRole('link', { name: 'web-app' }).click();
  await page.locator('#deployment-status [data-status="running"]').waitFor();
  await page.getByRole('button', { name: 'Follow' }).click();
  await page.locator('#logs-status', { hasText: 'Following' }).waitFor();
  // The driver's own note that it started the service is in the tail.
  await page.locator('#deployment-logs .log-line.fleetgate').first().waitFor();
  await until('the gateway to route app.e2e.test', async () => {
    const res = await viaGateway('app.e2e.test', '/index.html');
    return res.status === 200 && res.body === 'hello from the e2e app';
  }, 15_000);
  const res = await viaGateway('app.e2e.test', '/?followed-by-e2e');
  assert.equal(res.status, 200);
  const line = page.locator('#deployment-logs .log-line', { hasText: 'followed-by-e2e' });
  await line.waitFor({ timeout: 10_000 });
  // http.server writes its request lines to stderr.
  assert.equal(await line.getAttribute('data-stream'), 'stderr');
  assert.match(await line.textContent(), /GET \/\?followed-by-e2e HTTP\/1\.1" 200/);
  await screenshot(page, 'deployments-logs');

  // Stop: stopped; start: running again.
  await page.getByRole('button', { name: 'Stop', exact: true }).click();
  await page.locator('#deployment-status [data-status="stopped"]').waitFor({ timeout: 20_000 });
  await svc.locator('.badge[data-state="stopped"]').waitFor();
  assert.equal((await fg.api('GET', '/api/v1/deployments/web-app')).desired, 'stopped');
  await page.getByRole('button', { name: 'Start', exact: true }).click();
  await page.locator('#deployment-status [data-status="running"]').waitFor({ timeout: 20_000 });
  await svc.locator('.badge[data-state="running"]').waitFor();
  assert.notEqual(Number(await svc.locator('.pid').textContent()), pid, 'a new process');
  await screenshot(page, 'deployments-detail');

  // Delete, confirmed: back to the list, gone.
  await page.getByRole('button', { name: 'Delete', exact: true }).click();
  await page.getByRole('dialog').getByRole('button', { name: 'Delete' }).click();
  await page.waitForURL(/#\/deployments$/);
  await page.getByText('No deployments yet.').waitFor();
  assert.equal((await fg.api('GET', '/api/v1/deployments')).total, 0);
  assert.equal((await viaGateway('app.e2e.test', '/index.html')).status, 404);
  page.assertClean();
  await page.context().close();
});

test('a bad port is shown under compose.yml on its line, a bad name by the name, and nothing is created; one that cannot start opens the stopped deployment', async () => {
  const page = await newPage(browser);
  await login(page, fg);
  await page.goto(`${fg.url}/#/deployments/_new`);
  const form = page.locator('#deployment-create');
  await form.getByLabel('Name').fill('bad-port');
  await setText(page, '#deployment-create textarea[name="compose"]',
    'services:\n  web:\n    command: ["true"]\n    ports:\n      - "8080:99999"\n');
  await setText(page, '#deployment-create textarea[name="service"]', '');
  await form.getByRole('button', { name: 'Create deployment' }).click();

  const problem = form.locator('[data-field="compose"] .code-problems li');
  await problem.first().waitFor();
  assert.equal(await problem.count(), 1);
  const text = await problem.textContent();
  assert.match(text, /^line 5, column \d+ — services\.web\.ports\[0\]: /);
  // Line 5 is marked in the gutter, and selected in the textarea.
  await form.locator('[data-field="compose"] .code-gutter [data-line="5"].bad').waitFor();
  assert.equal(await form.locator('[data-field="compose"] .code-gutter .bad').count(), 1);
  assert.equal(await form.locator('[data-field="compose"] .code-mark').count(), 1);
  const selected = await form.locator('textarea[name="compose"]').evaluate((a) => a.value.slice(a.selectionStart, a.selectionEnd));
  assert.equal(selected, '      - "8080:99999"');
  assert.equal(await form.locator('[data-field="service"] .code-problems li').count(), 0);
  assert.match(await form.locator('.form-error').textContent(), /a problem/);
  await screenshot(page, 'deployments-create-problem');
  assert.equal((await fg.api('GET', '/api/v1/deployments')).total, 0);

  // A name the API refuses: said next to the name, the files' problems gone.
  await setText(page, '#deployment-create textarea[name="compose"]', 'services:\n  web:\n    command: ["true"]\n');
  await form.getByLabel('Name').fill('Bad_Name');
  await form.getByRole('button', { name: 'Create deployment' }).click();
  await form.locator('[data-field="name"].invalid .error', { hasText: 'is not a deployment name' }).waitFor();
  assert.equal(await form.locator('.code-problems li').count(), 0);
  assert.equal((await fg.api('GET', '/api/v1/deployments')).total, 0);

  // Files that check but cannot start (an image only: the Docker driver, and no
  // engine answers here, 503): the deployment is created stopped, the error told
  // with the engine's absence, and its page opened.
  await form.getByLabel('Name').fill('image-only');
  await setText(page, '#deployment-create textarea[name="compose"]', 'services:\n  db:\n    image: postgres:16\n');
  await form.getByRole('button', { name: 'Create deployment' }).click();
  await page.locator('#toasts .toast.bad', { hasText: 'was created but could not start' }).waitFor();
  assert.match(await page.locator('#toasts .toast.bad').last().innerText(), /Docker engine is unavailable/);
  await page.waitForURL(/#\/deployments\/image-only$/);
  await page.locator('#deployment-status [data-status="stopped"]').waitFor();
  assert.equal((await fg.api('GET', '/api/v1/deployments/image-only')).desired, 'stopped');
  await fg.api('DELETE', '/api/v1/deployments/image-only');
  // 503: the create's start and the page's stats, both needing the engine.
  page.assertClean(['400', '503']);
  await page.context().close();
});

test('a viewer sees deployments but no controls to change them', async () => {
  await fg.api('POST', '/api/v1/users', { username: 'dwatcher', password: 'Password-123', role: 'viewer' });
  await fg.api('POST', '/api/v1/deployments', { name: 'watched',
    compose: 'services:\n  sleeper:\n    command: ["sleep", "600"]\n', start: true });
  // A second release: the first one served, so an operator could roll back to it.
  const v = await fg.api('PUT', '/api/v1/deployments/watched', {
    compose: 'services:\n  sleeper:\n    command: ["sleep", "601"]\n' });
  assert.equal(v.release, 2);
  const { items } = await fg.api('GET', '/api/v1/deployments/watched/releases');
  assert.deepEqual(items.map((r) => [r.number, r.state]), [[2, 'live'], [1, 'replaced']]);
  assert.ok(items[1].live_at, 'release 1 served');
  const page = await newPage(browser);
  await login(page, fg, 'dwatcher', 'Password-123');
  await page.goto(`${fg.url}/#/deployments`);
  const r = row(page, 'watched');
  await r.locator('[data-status="running"]').waitFor({ timeout: 15_000 });
  assert.equal(await page.getByRole('button', { name: 'New deployment' }).count(), 0);
  await r.getByRole('link', { name: 'watched' }).click();
  await page.locator('#deployment-services tbody tr[data-service="sleeper"] .badge[data-state="running"]').waitFor();
  for (const name of ['Start', 'Stop', 'Restart', 'Delete', 'Set up proxy', 'Remove proxy', 'Save']) {
    assert.equal(await page.getByRole('button', { name, exact: true }).count(), 0, `no ${name} button`);
  }
  // The releases are listed, with no rollback (nor their files, which may hold
  // secrets).
  const releases = page.locator('#deployment-releases tbody tr[data-release]');
  await page.locator('#deployment-releases tbody tr[data-release="1"][data-state="replaced"]').waitFor();
  assert.equal(await releases.count(), 2);
  assert.equal(await page.locator('#deployment-release').getAttribute('data-release'), '2');
  assert.equal(await page.getByRole('button', { name: /Roll back/ }).count(), 0, 'no rollback button');
  assert.equal(await page.locator('#deployment-releases button').count(), 0, 'no button in the releases');
  // The files (their environment may hold secrets) are not shown to viewers.
  assert.equal(await page.locator('#deployment-files-panel').count(), 0);
  assert.equal(await page.locator('textarea').count(), 0);
  // The logs can be read.
  await page.locator('#deployment-logs .log-line').first().waitFor();
  // The create form says it is not theirs.
  await page.goto(`${fg.url}/#/deployments/_new`);
  await page.getByText('Only operators and admins can create deployments.').waitFor();
  await screenshot(page, 'deployments-viewer');
  page.assertClean();
  await page.context().close();
});

test('the files editor saves with If-Match, shows problems on their lines, and reloads a newer version', async () => {
  await fg.api('POST', '/api/v1/deployments', { name: 'editable',
    compose: 'services:\n  job:\n    command: ["sleep", "700"]\n', start: false });
  const page = await newPage(browser);
  await login(page, fg);
  await page.goto(`${fg.url}/#/deployments/editable`);
  const files = page.locator('#deployment-files');
  const compose = files.locator('textarea[name="compose"]');
  await compose.waitFor();
  assert.match(await compose.inputValue(), /"700"/);

  // Saved: version 2.
  await compose.fill('services:\n  job:\n    command: ["sleep", "701"]\n');
  await files.getByRole('button', { name: 'Save' }).click();
  await page.locator('#toasts .toast', { hasText: 'Files saved.' }).waitFor();
  await page.locator('#deployment-facts', { hasText: /Version2/ }).waitFor();
  assert.match((await fg.api('GET', '/api/v1/deployments/editable')).compose, /"701"/);

  // A problem: under compose.yml, on its line; nothing saved.
  await compose.fill('services:\n  job:\n    command: ["sleep", "702"]\n    ports:\n      - "70000"\n');
  await files.getByRole('button', { name: 'Save' }).click();
  await files.locator('[data-field="compose"] .code-problems li', { hasText: /^line 5, column/ }).waitFor();
  await files.locator('[data-field="compose"] .code-gutter [data-line="5"].bad').waitFor();
  assert.equal((await fg.api('GET', '/api/v1/deployments/editable')).version, 2);
  await screenshot(page, 'deployments-files-problem');

  // Changed by someone else meanwhile: told, and the current files loaded.
  const r = await fetch(`${fg.url}/api/v1/deployments/editable`, { method: 'PUT',
    headers: { authorization: `Bearer ${TOKEN}`, 'content-type': 'application/json', 'if-match': '"2"' },
    body: JSON.stringify({ compose: 'services:\n  job:\n    command: ["sleep", "800"]\n' }) });
  assert.equal(r.status, 200, await r.text());
  await compose.fill('services:\n  job:\n    command: ["sleep", "900"]\n');
  await files.getByRole('button', { name: 'Save' }).click();
  await files.locator('.form-error', { hasText: 'changed by someone else' }).waitFor();
  await until('the current files to be loaded', async () => /"800"/.test(await compose.inputValue()));
  assert.equal(await files.locator('.code-problems li').count(), 0);
  assert.match((await fg.api('GET', '/api/v1/deployments/editable')).compose, /"800"/);
  // Saved again on top of the version now shown.
  await compose.fill('services:\n  job:\n    command: ["sleep", "901"]\n');
  await files.getByRole('button', { name: 'Save' }).click();
  await page.locator('#deployment-facts', { hasText: /Version4/ }).waitFor();
  assert.match((await fg.api('GET', '/api/v1/deployments/editable')).compose, /"901"/);
  page.assertClean(['400', '412']);
  await page.context().close();
});

test('releases are listed, rolled back from the page, and a dropped release is told where it happened', async () => {
  // The app of the release tests, copied so its processes are this test's.
  const dir = mkdtempSync(path.join(os.tmpdir(), 'fleetgate-e2e-rel-'));
  const script = path.join(dir, 'release_app.py');
  copyFileSync(path.join(ROOT, 'bench', 'lib', 'release_app.py'), script);
  // While this file exists, a newly started instance fails its health check.
  const marker = path.join(dir, 'fail-health');
  const host = 'rel.e2e.test';
  const port = await freePort();
  const compose = (release, env = '') => `services:
  web:
    command: ["sh", "-c", "test -e '${marker}' && export FAIL_HEALTH=1; exec python3 -u '${script}' $PORT"]
    environment:
      RELEASE: "${release}"
      GRACE: "2"
${env}`;
  // A failing release is dropped after health_timeout: long enough for a busy
  // machine to start the app, short enough for the test.
  const service = `domains: [${host}]
port: ${port}
healthcheck:
  path: /health
  interval: 1s
  timeout: 1s
deploy:
  health_timeout: 6s
  drain_timeout: 30s
`;
  const answers = (release) => until(`the gateway to answer release ${release}`, async () => {
    const res = await viaGateway(host, '/');
    return res.status === 200 && res.body === `release ${release}`;
  }, 20_000);

  try {
    // Deployed and redeployed twice over the API: three releases, blue-green.
    let v = await fg.api('POST', '/api/v1/deployments', { name: 'rel-app', compose: compose(1), service });
    assert.equal(v.release, 1);
    assert.equal(v.strategy, 'blue-green');
    await answers(1);
    for (const n of [2, 3]) {
      v = await fg.api('PUT', '/api/v1/deployments/rel-app', { compose: compose(n) });
      assert.equal(v.release, n);
    }
    await answers(3);

    const page = await newPage(browser);
    await login(page, fg);
    await page.goto(`${fg.url}/#/deployments/rel-app`);
    const rel = (n) => page.locator(`#deployment-releases tbody tr[data-release="${n}"]`);
    // The serving release, the strategy and the live instance with its port.
    await page.locator('#deployment-release[data-release="3"]').waitFor();
    assert.equal(await page.locator('#deployment-release').textContent(), '#3');
    assert.equal(await page.locator('#deployment-strategy').textContent(), 'blue-green');
    const instance = page.locator('#deployment-instance');
    assert.equal(await instance.getAttribute('data-key'), v.instance.key);
    assert.match(await instance.textContent(), new RegExp(`^${v.instance.key.replace('.', '\\.')} port ${v.instance.target} `));
    // The releases, newest first, with their states; the serving one marked.
    await rel(1).waitFor();
    assert.deepEqual(await page.locator('#deployment-releases tbody tr[data-release]').evaluateAll(
      (rows) => rows.map((r) => [r.dataset.release, r.dataset.state])), [['3', 'live'], ['2', 'replaced'], ['1', 'replaced']]);
    assert.match(await rel(3).textContent(), /serving/);
    assert.match(await rel(3).textContent(), /blue-green/);
    // A rollback to each earlier release that served, none to the serving one.
    const rollbackTo = (n) => rel(n).getByRole('button', { name: 'Roll back to this release' });
    assert.equal(await rollbackTo(3).count(), 0);
    assert.equal(await rollbackTo(2).count(), 1);
    assert.equal(await rollbackTo(1).count(), 1);
    await screenshot(page, 'deployments-releases');

    // A release's files, on demand.
    await rel(2).getByRole('button', { name: 'Files' }).click();
    const files2 = page.locator('#deployment-releases tr[data-files-of="2"]');
    await files2.locator('figure[data-file="compose"] pre', { hasText: 'RELEASE: "2"' }).waitFor();
    assert.match(await files2.locator('figure[data-file="service"] pre').textContent(), /rel\.e2e\.test/);
    await screenshot(page, 'deployments-release-files');
    await rel(2).getByRole('button', { name: 'Hide files' }).click();
    await files2.waitFor({ state: 'detached' });

    // Roll back to release 1 from the page, with a WebSocket open to release
    // 3's instance: it drains while release 4 (release 1's files) serves.
    const socket = await openWebSocket(host);
    const replaced = v.instance.key;
    await rollbackTo(1).click();
    const dialog = page.getByRole('dialog');
    assert.match(await dialog.textContent(), /Roll back rel-app to release 1\?.*release 3 serves until/);
    await dialog.getByRole('button', { name: 'Roll back' }).click();
    await page.locator('#toasts .toast', { hasText: 'Rolled back: release 4 serves the files of release 1.' }).waitFor({ timeout: 20_000 });
    await page.locator('#deployment-release[data-release="4"]').waitFor();
    await answers(1);
    await rel(4).locator('[data-state="live"]').waitFor();
    assert.match(await rel(4).textContent(), /rollback of #1/);
    assert.match(await rel(4).textContent(), /serving/);
    await rel(3).locator('[data-state="replaced"]').waitFor();
    assert.equal(await rollbackTo(3).count(), 1, 'release 3 served: it can be rolled back to');
    const now = await fg.api('GET', '/api/v1/deployments/rel-app');
    assert.equal(now.release, 4);
    assert.notEqual(now.instance.key, replaced);
    assert.equal(await page.locator('#deployment-instance').getAttribute('data-key'), now.instance.key);
    await page.locator('#deployment-draining .badge', { hasText: replaced }).waitFor();
    // The editor shows the files now in force: release 1's.
    const editor = page.locator('#deployment-files textarea[name="compose"]');
    assert.match(await editor.inputValue(), /RELEASE: "1"/);
    await screenshot(page, 'deployments-rollback');
    socket.destroy();
    await page.locator('#deployment-draining[data-count="0"]').waitFor({ timeout: 15_000 });

    // New files saved from the page whose release fails its health check: the
    // release is dropped, release 4 serves on, and the form says so.
    await editor.fill(compose(5, '      FAIL_HEALTH: "1"\n'));
    await page.locator('#deployment-files').getByRole('button', { name: 'Save' }).click();
    const formError = page.locator('#deployment-files .form-error');
    await formError.filter({ hasText: 'was dropped' }).waitFor({ timeout: 20_000 });
    const said = await formError.textContent();
    assert.match(said, /^The files were saved, but their new release 5 was dropped: it did not become ready\. Release 4 still serves\. Reason: /);
    assert.match(said, /503/);
    await rel(5).locator('[data-state="failed"]').waitFor();
    assert.match(await rel(5).locator('.release-error').textContent(), /503/);
    assert.equal(await rollbackTo(5).count(), 0, 'release 5 never served');
    assert.equal(await page.locator('#deployment-release').getAttribute('data-release'), '4');
    assert.equal((await viaGateway(host, '/')).body, 'release 1');
    await screenshot(page, 'deployments-release-dropped');

    // A rollback whose release does not become ready: told in the panel, and
    // release 4 serves on.
    writeFileSync(marker, '');
    await rollbackTo(2).click();
    await page.getByRole('dialog').getByRole('button', { name: 'Roll back' }).click();
    const panelError = page.locator('#releases-error');
    await panelError.filter({ hasText: 'was dropped' }).waitFor({ timeout: 20_000 });
    assert.equal(await panelError.getAttribute('data-code'), 'RELEASE_FAILED');
    const told = await panelError.textContent();
    assert.match(told, /^The rollback to release 2 was dropped: release 6, made from its files, did not become ready\. Release 4 still serves\. /);
    assert.match(told, /Reason: .*503/);
    await rel(6).locator('[data-state="failed"]').waitFor();
    assert.match(await rel(6).textContent(), /rollback of #2/);
    assert.equal(await page.locator('#deployment-release').getAttribute('data-release'), '4');
    assert.equal((await viaGateway(host, '/')).body, 'release 1');
    // The files are release 2's now (saved, not served): the editor shows them,
    // and what it said of the earlier save is gone.
    assert.match(await editor.inputValue(), /RELEASE: "2"/);
    assert.equal(await formError.textContent(), '');
    await screenshot(page, 'deployments-rollback-dropped');
    // The failed fetches of the 422s are logged by the browser.
    page.assertClean(['422']);
    await page.context().close();
  } finally {
    await fg.api('DELETE', '/api/v1/deployments/rel-app').catch(() => {});
    rmSync(dir, { recursive: true, force: true });
  }
});
