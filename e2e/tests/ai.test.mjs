// The AI area (#/ai) against a local OpenAI-shaped fake provider (never the
// internet): an operator adds the provider through the form (a bad base URL is
// refused on its field), creates a budget, prices the fake's model, creates an
// agent, moves it through its lifecycle, runs it and reads the step trace and
// cost; a request through an ai route shows in the usage and the budget's
// spend. Each tab is checked for sideways overflow at 390 px and shot at 1280
// and 390 px. A viewer sees the area without its forms.

import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { launch, login, newPage, overflow, screenshot, startFleetgate, until } from '../lib/harness.mjs';
import { FAKE_KEY, FAKE_MODEL, startFakeLlm } from '../../scripts/fake-llm.mjs';

let fg; let browser; let fake;

before(async () => {
  [fg, browser, fake] = await Promise.all([startFleetgate(), launch(), startFakeLlm()]);
  // Agent tools on loopback are allowed by this setting.
  await fg.api('PUT', '/api/v1/settings', { webhooks: { allow_private_targets: true } });
  await fg.api('POST', '/api/v1/agent-tools', {
    name: 'lookup', description: 'Finds the address of a host', url: `${fake.url}/tools/lookup`,
    input_schema: { type: 'object', properties: { host: { type: 'string' } }, required: ['host'] },
  });
});

after(async () => {
  await browser?.close();
  await fg?.stop();
  await fake?.stop();
});

async function fits(page, name) {
  assert.deepEqual(await overflow(page), [], `${name} overflows`);
}

test('an operator adds a provider, a budget, a price and an agent, runs it and reads its trace and cost', async () => {
  const page = await newPage(browser, { width: 1280, height: 900 });
  await login(page, fg);

  // The provider: a URL that is not http(s) is refused next to its field.
  await page.getByRole('link', { name: 'AI', exact: true }).click();
  await page.locator('#ai-providers').waitFor();
  await page.locator('#add-provider').click();
  const dlg = page.getByRole('dialog');
  await dlg.getByLabel('Name').fill('local');
  await dlg.getByLabel('Kind').selectOption('openai_compatible');
  await dlg.getByLabel('Base URL').fill('ftp://127.0.0.1/v1');
  await dlg.getByLabel('API key').fill(FAKE_KEY);
  await dlg.getByLabel('Default model').fill(FAKE_MODEL);
  await dlg.getByRole('button', { name: 'Add provider' }).click();
  const urlError = dlg.locator('[data-field="base_url"] .error');
  await until('the base URL error', async () => (await urlError.textContent()).includes('http'));
  assert.match(await urlError.textContent(), /http:\/\/ or https:\/\//);
  await dlg.getByLabel('Base URL').fill(`${fake.url}/v1`);
  await dlg.getByRole('button', { name: 'Add provider' }).click();
  const row = page.locator('tr[data-provider="local"]');
  await row.waitFor();
  const rowText = await row.textContent();
  assert.ok(!rowText.includes(FAKE_KEY), 'the key is shown masked');
  assert.match(rowText, /…/);
  await until('the provider to be healthy', async () => (await row.locator('[data-health]').textContent()).startsWith('ok'));
  await screenshot(page, 'ai-providers-1280');

  // A budget; a bad limit is refused on its field first.
  await page.getByRole('link', { name: 'Budgets' }).click();
  await page.locator('#new-budget').click();
  await dlg.getByLabel('Name').fill('team');
  await dlg.getByLabel('Limit (USD)').fill('five');
  await dlg.getByRole('button', { name: 'Create budget' }).click();
  await until('the limit error', async () => (await dlg.locator('[data-field="limit_usd"] .error').textContent()) !== '');
  await dlg.getByLabel('Limit (USD)').fill('5');
  await dlg.getByRole('button', { name: 'Create budget' }).click();
  await page.locator('tr[data-budget="team"]').waitFor();
  assert.match(await page.locator('tr[data-budget="team"]').textContent(), /\$0\.00 of \$5\.00/);

  // The fake's model has no list price: the operator sets one.
  await page.getByRole('link', { name: 'Prices' }).click();
  await page.locator('#ai-prices tr[data-model="gpt-4o"]').waitFor();
  await page.locator('#new-price').click();
  await dlg.getByLabel('Model', { exact: true }).fill(FAKE_MODEL);
  await dlg.getByLabel('Input (USD per million tokens)', { exact: true }).fill('1');
  await dlg.getByLabel('Output (USD per million tokens)', { exact: true }).fill('-2');
  await dlg.getByRole('button', { name: 'Save price' }).click();
  await until('the output rate error', async () => (await dlg.locator('[data-field="output_usd_per_million"] .error').textContent()) !== '');
  await dlg.getByLabel('Output (USD per million tokens)', { exact: true }).fill('2');
  await dlg.getByRole('button', { name: 'Save price' }).click();
  const priced = page.locator(`tr[data-model="${FAKE_MODEL}"]`);
  await priced.waitFor();
  assert.match(await priced.textContent(), /override/);
  assert.match(await priced.textContent(), /\$1\.00/);

  // An agent using the provider and the lookup tool.
  await page.getByRole('link', { name: 'Agents' }).click();
  await page.locator('#new-agent').click();
  await dlg.getByLabel('Name').fill('helper');
  await dlg.getByLabel('Model', { exact: true }).fill(FAKE_MODEL);
  await dlg.getByLabel('Provider').selectOption({ label: 'local (openai_compatible)' });
  await dlg.getByLabel('Tools').fill('lookup');
  await dlg.getByRole('button', { name: 'Create agent' }).click();
  await page.locator('#lifecycle').waitFor();
  const moves = async () => page.locator('#lifecycle button').evaluateAll((bs) => bs.map((b) => b.dataset.to));
  assert.deepEqual(await moves(), ['testing', 'archived']);
  await page.locator('#lifecycle button[data-to="testing"]').click();
  await until('testing', async () => (await moves()).includes('active'));
  assert.deepEqual(await moves(), ['draft', 'active', 'archived']);
  await page.locator('#lifecycle button[data-to="active"]').click();
  await until('active', async () => (await moves()).includes('suspended'));
  assert.deepEqual(await moves(), ['suspended', 'archived']);
  assert.match(await page.locator('#agent-versions').textContent(), /v1\s*promoted/);

  // A run: model call, tool call, model call; 2 × (1,000 × $1/M + 200 × $2/M).
  await page.locator('#run-form').getByLabel('Message').fill('Where is the database?');
  await page.locator('#run-form').getByRole('button', { name: 'Run' }).click();
  const result = page.locator('#run-result .run-trace');
  await result.waitFor();
  assert.deepEqual(await result.locator('tbody tr').evaluateAll((rs) => rs.map((r) => r.dataset.step)), ['model', 'tool', 'model']);
  assert.equal(await result.locator('.run-cost').textContent(), '$0.0028');
  assert.match(await result.textContent(), /succeeded/);
  assert.match(await result.textContent(), /Looked it up/);
  assert.match(await result.locator('tbody tr').first().textContent(), /1,000 \/ 200/);
  await page.locator('#agent-runs tbody tr').first().waitFor();
  assert.match(await page.locator('#agent-runs').textContent(), /\$0\.0028/);
  // The stored run's trace opens from the runs list too.
  await page.locator('#agent-runs button', { hasText: 'Steps' }).first().click();
  await page.locator('#run-trace .run-trace').waitFor();
  await screenshot(page, 'ai-agent-1280');

  // A request through an ai route shows in the usage and the budget's spend.
  const key = (await fg.api('POST', '/api/v1/api-keys', { name: 'caller', role: 'viewer' })).key;
  await fg.api('POST', '/api/v1/routes', { id: 'llm', path: '/v1', ai: { provider: 'local', models: [FAKE_MODEL], budgets: ['team'] } });
  await until('the gateway to relay', async () => {
    const r = await fetch(`${fg.gw}/v1/chat/completions`, {
      method: 'POST', headers: { authorization: `Bearer ${key}`, 'content-type': 'application/json' },
      body: JSON.stringify({ model: FAKE_MODEL, messages: [{ role: 'user', content: 'hello' }], max_tokens: 300 }),
    });
    return r.status === 200;
  });
  await page.getByRole('link', { name: 'Usage' }).click();
  await until('the usage', async () => {
    await page.locator('#ai-usage').waitFor();
    if ((await page.locator('#usage-cost .value').textContent()) === '$0.0014') return true;
    await page.getByRole('button', { name: 'Last 24 h' }).click();
    return false;
  });
  assert.match(await page.locator('#ai-usage').textContent(), new RegExp(FAKE_MODEL));
  await page.getByRole('link', { name: 'Budgets' }).click();
  await until('the spend', async () => {
    await page.locator('tr[data-budget="team"]').waitFor();
    if (/\$0\.0014 of \$5\.00/.test(await page.locator('tr[data-budget="team"]').textContent())) return true;
    await page.reload();
    return false;
  });

  // Every tab at both widths.
  const agentHash = new URL(page.url()).hash;
  assert.ok(agentHash.startsWith('#/ai/'));
  for (const width of [1280, 390]) {
    await page.setViewportSize({ width, height: 900 });
    for (const tab of ['providers', 'budgets', 'usage', 'prices', 'agents']) {
      await page.goto(`${fg.url}/#/ai/${tab}`);
      await page.locator(`#ai-tab-${tab} table, #ai-tab-${tab} .grid`).first().waitFor();
      await page.waitForLoadState('networkidle').catch(() => {});
      await fits(page, `#/ai/${tab} at ${width}`);
      await screenshot(page, `ai-${tab}-${width}`);
    }
    await page.locator('#agents a', { hasText: 'helper' }).click();
    await page.locator('#agent-runs button', { hasText: 'Steps' }).first().click();
    await page.locator('#run-trace .run-trace').waitFor();
    await fits(page, `the agent at ${width}`);
    await screenshot(page, `ai-agent-detail-${width}`);
  }
  page.assertClean(['409', '400', '401']);
  await page.context().close();
});

test('a viewer sees the AI area without its forms, and the API refuses the viewer', async () => {
  await fg.api('POST', '/api/v1/users', { username: 'aiwatcher', password: 'watcher-password-123', role: 'viewer' });
  const page = await newPage(browser, { width: 1280, height: 900 });
  await login(page, fg, 'aiwatcher', 'watcher-password-123');
  await page.goto(`${fg.url}/#/ai/providers`);
  await page.locator('tr[data-provider="local"]').waitFor();
  assert.equal(await page.locator('#add-provider').count(), 0);
  assert.equal(await page.locator('#ai-providers button', { hasText: 'Edit' }).count(), 0);
  await page.goto(`${fg.url}/#/ai/budgets`);
  await page.locator('tr[data-budget="team"]').waitFor();
  assert.equal(await page.locator('#new-budget').count(), 0);
  await page.goto(`${fg.url}/#/ai/prices`);
  await page.locator(`tr[data-model="${FAKE_MODEL}"]`).waitFor();
  assert.equal(await page.locator('#new-price').count(), 0);
  await page.goto(`${fg.url}/#/ai/agents`);
  await page.locator('#agents a', { hasText: 'helper' }).click();
  await page.locator('#agent-versions').waitFor();
  assert.equal(await page.locator('#lifecycle').count(), 0);
  assert.equal(await page.locator('#run-form').count(), 0);
  // The server refuses the viewer's changes whatever the page shows.
  const refused = await page.evaluate(async () => {
    const csrf = decodeURIComponent((document.cookie.match(/(?:^|; )csrf_token=([^;]*)/) || [])[1] || '');
    const r = await fetch('/api/v1/ai/prices/house-llm', { method: 'DELETE', headers: { 'x-csrf-token': csrf } });
    return r.status;
  });
  assert.equal(refused, 403);
  page.assertClean(['403']);
  await page.context().close();
});
