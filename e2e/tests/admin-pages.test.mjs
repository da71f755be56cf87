// The administration pages the API already served: certificates (upload, status
// valid/expiring, SNI names, sortable columns, a refused upload shown on its field, delete), the
// audit log (filters in the URL, before/after of an entry), backup & restore
// (take, list, download; export; import after a dry-run diff, refused documents
// shown on their field) and the API reference linked from the navigation.

import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { after, before, test } from 'node:test';
import { launch, login, newPage, screenshot, startFleetgate } from '../lib/harness.mjs';

let fg; let browser; let dir;

before(async () => {
  [fg, browser] = await Promise.all([startFleetgate(), launch()]);
  dir = mkdtempSync(path.join(tmpdir(), 'fg-certs-'));
});

after(async () => {
  await browser?.close();
  await fg?.stop();
  if (dir) rmSync(dir, { recursive: true, force: true });
});

/// A self-signed certificate for `names`, valid for `days` days: {cert, key}.
function selfSigned(name, names, days) {
  const key = path.join(dir, `${name}.key`);
  const cert = path.join(dir, `${name}.crt`);
  execFileSync('openssl', ['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1',
    '-nodes', '-keyout', key, '-out', cert, '-days', String(days), '-subj', `/CN=${names[0]}`,
    '-addext', `subjectAltName=${names.map((n) => `DNS:${n}`).join(',')}`], { stdio: 'ignore' });
  return { cert: readFileSync(cert, 'utf8'), key: readFileSync(key, 'utf8') };
}

// Chromium logs every 4xx answer of fetch() as a console error; these are the
// refusals the tests provoke on purpose.
const expected = (...statuses) => statuses.map((s) => `status of ${s}`);

test('certificates: upload, valid and expiring status with SNI names, a refused upload, delete', async () => {
  const page = await newPage(browser);
  await login(page, fg);
  await page.getByRole('link', { name: 'Certificates' }).click();
  await page.getByText('No certificates yet.').waitFor();

  const shop = selfSigned('shop', ['shop.example.test', 'www.shop.example.test'], 365);
  await page.getByRole('button', { name: 'Upload certificate' }).click();
  let dlg = page.getByRole('dialog');
  await dlg.getByLabel('Name').fill('shop');
  await dlg.getByLabel('Certificate chain (PEM)').fill(shop.cert);
  await dlg.getByLabel('Private key (PEM)').fill(shop.key);
  await dlg.getByRole('button', { name: 'Upload' }).click();
  const row = page.locator('#certificates tr[data-name="shop"]');
  await row.waitFor();
  assert.equal(await row.getAttribute('data-status'), 'valid');
  assert.match(await row.textContent(), /shop\.example\.test, www\.shop\.example\.test/);
  assert.match(await row.textContent(), /self-signed/);

  const soon = selfSigned('soon', ['soon.example.test'], 10);
  await page.getByRole('button', { name: 'Upload certificate' }).click();
  dlg = page.getByRole('dialog');
  await dlg.getByLabel('Name').fill('soon');
  await dlg.getByLabel('Certificate chain (PEM)').fill(soon.cert);
  await dlg.getByLabel('Private key (PEM)').fill(soon.key);
  await dlg.getByRole('button', { name: 'Upload' }).click();
  const soonRow = page.locator('#certificates tr[data-name="soon"]');
  await soonRow.waitFor();
  assert.equal(await soonRow.getAttribute('data-status'), 'expiring');
  assert.match(await soonRow.textContent(), /expiring/);
  await screenshot(page, 'certificates');

  // Columns sort: by expiry, then reversed.
  const order = () => page.locator('#certificates tbody tr').evaluateAll((rs) => rs.map((r) => r.dataset.name));
  const expires = page.locator('#certificates th').filter({ hasText: 'Expires' });
  await expires.getByRole('button').click();
  assert.deepEqual(await order(), ['soon', 'shop']);
  assert.equal(await expires.getAttribute('aria-sort'), 'ascending');
  await expires.getByRole('button').click();
  assert.deepEqual(await order(), ['shop', 'soon']);
  assert.equal(await expires.getAttribute('aria-sort'), 'descending');

  // A key that does not match its certificate: the API's error lands on the key field.
  await page.getByRole('button', { name: 'Upload certificate' }).click();
  dlg = page.getByRole('dialog');
  await dlg.getByLabel('Name').fill('mismatch');
  await dlg.getByLabel('Certificate chain (PEM)').fill(shop.cert);
  await dlg.getByLabel('Private key (PEM)').fill(soon.key);
  await dlg.getByRole('button', { name: 'Upload' }).click();
  await dlg.locator('[data-field="key_pem"].invalid').waitFor();
  assert.ok((await dlg.locator('[data-field="key_pem"] .error').textContent()).length > 0);
  await dlg.getByRole('button', { name: 'Cancel' }).click();
  // The private keys never appear on the page once their dialogs are gone.
  const html = await page.content();
  for (const k of [shop.key, soon.key]) {
    const body = k.split('\n').filter((l) => l && !l.startsWith('-----')).join('');
    assert.ok(body.length > 40 && !html.includes(body.slice(0, 40)), 'a private key is on the page');
  }

  await soonRow.getByRole('button', { name: 'Delete soon' }).click();
  await page.getByRole('dialog').getByRole('button', { name: 'Delete' }).click();
  await soonRow.waitFor({ state: 'detached' });
  const listed = await fg.api('GET', '/api/v1/certificates');
  assert.deepEqual(listed.items.map((c) => c.name), ['shop']);

  // At phone width the list stays usable.
  await page.setViewportSize({ width: 390, height: 800 });
  await screenshot(page, 'certificates-narrow');
  page.assertClean(expected(400));
  await page.context().close();
});

test('the audit log filters by the URL and shows what an entry changed', async () => {
  await fg.api('POST', '/api/v1/upstreams', { name: 'audited', targets: [{ url: 'http://127.0.0.1:9', weight: 1 }] });
  const u = await fg.api('GET', '/api/v1/upstreams/audited');
  await fg.api('PUT', '/api/v1/upstreams/audited', { ...u, targets: [{ url: 'http://127.0.0.1:10', weight: 3 }] });

  const page = await newPage(browser);
  await login(page, fg);
  await page.getByRole('link', { name: 'Audit log' }).click();
  await page.locator('#audit tbody tr').first().waitFor();
  await page.getByLabel('Action').fill('upstream.update');
  await page.getByRole('button', { name: 'Filter' }).click();
  await page.waitForURL(/#\/audit\?action=upstream\.update/);
  const rows = page.locator('#audit tbody tr');
  await until(async () => (await rows.count()) === 1 && (await rows.first().getAttribute('data-action')) === 'upstream.update');
  await rows.first().getByRole('button', { name: /Show audit entry/ }).click();
  const entry = page.locator('#audit-entry');
  await entry.getByRole('heading', { name: /upstream\.update/ }).waitFor();
  const text = await entry.textContent();
  assert.match(text, /Before/);
  assert.match(text, /After/);
  assert.match(text, /127\.0\.0\.1:10/);
  assert.match(text, /127\.0\.0\.1:9/);
  await screenshot(page, 'audit-entry');

  // The filtered view is an address: opened fresh, it shows the same.
  await page.goto(`${fg.url}/#/audit?action=nothing.like.this`);
  await page.getByText('No entry matches these filters.').waitFor();
  assert.equal(await page.getByLabel('Action').inputValue(), 'nothing.like.this');
  page.assertClean();
  await page.context().close();
});

async function until(fn, timeoutMs = 10_000) {
  const deadline = Date.now() + timeoutMs;
  while (!(await fn())) {
    if (Date.now() > deadline) throw new Error('timed out');
    await new Promise((r) => setTimeout(r, 100));
  }
}

test('backup & restore: a backup taken and downloaded, the configuration exported, and imported after its diff', async () => {
  const page = await newPage(browser);
  await login(page, fg);
  await page.getByRole('link', { name: 'Backup & restore' }).click();
  await page.getByText('No backups yet.').waitFor();
  await page.getByRole('button', { name: 'Take backup' }).click();
  const dlg = page.getByRole('dialog');
  await dlg.getByLabel('Name').fill('before-import');
  await dlg.getByRole('button', { name: 'Take backup' }).click();
  const row = page.locator('#backups tr[data-name="before-import"]');
  await row.waitFor();
  const [download] = await Promise.all([
    page.waitForEvent('download'),
    row.getByRole('link', { name: 'Download backup before-import' }).click(),
  ]);
  assert.equal(download.suggestedFilename(), 'before-import.sqlite');
  const saved = readFileSync(await download.path());
  assert.equal(saved.subarray(0, 16).toString('latin1'), 'SQLite format 3\0');

  const [exported] = await Promise.all([
    page.waitForEvent('download'),
    page.getByRole('button', { name: 'Download configuration' }).click(),
  ]);
  const doc = JSON.parse(readFileSync(await exported.path(), 'utf8'));
  assert.equal(doc.format_version, 1);

  // Not JSON: refused on the field, nothing sent.
  await page.locator('#import-text').fill('{"format_version": 1,');
  await page.getByRole('button', { name: 'Preview changes' }).click();
  await page.locator('[data-field="document"].invalid').waitFor();
  assert.ok(await page.locator('#import-apply').isDisabled());

  // A document the API refuses: its error is shown, nothing changes.
  const bad = { ...doc, routes: [...(doc.routes || []), { id: 'imported', path: '/imported', upstream: 'missing-upstream' }] };
  await page.locator('#import-text').fill(JSON.stringify(bad));
  await page.getByRole('button', { name: 'Preview changes' }).click();
  await page.locator('.import-form .form-error').filter({ hasText: /missing-upstream|upstream/ }).waitFor();
  assert.ok(await page.locator('#import-apply').isDisabled());

  // A good one: the dry run lists the change, Import makes one revision.
  const good = {
    ...doc,
    upstreams: [...(doc.upstreams || []), { name: 'imported', targets: [{ url: 'http://127.0.0.1:9', weight: 1 }] }],
    routes: [...(doc.routes || []), { id: 'imported', path: '/imported', upstream: 'imported' }],
  };
  await page.locator('#import-text').fill(JSON.stringify(good));
  await page.getByRole('button', { name: 'Preview changes' }).click();
  await page.locator('#import-preview li[data-kind="route"][data-name="imported"][data-op="add"]').waitFor();
  await page.locator('#import-preview li[data-kind="upstream"][data-name="imported"][data-op="add"]').waitFor();
  await assert.rejects(fg.api('GET', '/api/v1/routes/imported'), /404/);
  await screenshot(page, 'import-preview');
  await page.locator('#import-apply').click();
  await page.getByRole('dialog').getByRole('button', { name: 'Import' }).click();
  const link = page.locator('#import-revision');
  await link.waitFor();
  const route = await fg.api('GET', '/api/v1/routes/imported');
  assert.equal(route.upstream, 'imported');
  await link.click();
  await page.waitForURL(/#\/revisions\/\d+$/);
  await page.getByText('Route imported added').waitFor();
  page.assertClean(expected(400));
  await page.context().close();
});

test('the API reference is linked from the navigation and has its icon', async () => {
  const page = await newPage(browser);
  await login(page, fg);
  const [docs] = await Promise.all([
    page.context().waitForEvent('page'),
    page.getByRole('link', { name: 'API reference ↗' }).click(),
  ]);
  const failed = [];
  docs.on('response', (r) => { if (r.status() >= 400) failed.push(`${r.status()} ${r.url()}`); });
  await docs.waitForLoadState('load');
  assert.match(await docs.title(), /Fleetgate API/);
  assert.equal(await docs.locator('link[rel="icon"]').getAttribute('href'), '/assets/favicon.svg');
  await docs.reload();
  await docs.waitForLoadState('load');
  assert.deepEqual(failed, []);
  page.assertClean();
  await page.context().close();
});
