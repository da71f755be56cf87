// Nodes in the dashboard: a node created in the UI shows its registration token
// once; a real `fleetgate edge` registers with it and the node goes online with
// live stats and health (from dashboard_update on /ws/dashboard); a get_config
// command is answered, a command the edge does not carry out shows as refused;
// the node is deleted. A node reporting flows (a scripted Bilbycast-style edge)
// shows per-flow and per-output packets, bitrate and drops. A viewer sees no
// create, delete or command controls.

import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { connectNode, launch, login, newPage, screenshot, startEdge, startFleetgate, until } from '../lib/harness.mjs';

let fg; let browser; const edges = [];

before(async () => {
  [fg, browser] = await Promise.all([startFleetgate(), launch()]);
});

after(async () => {
  for (const e of edges) await e.stop();
  await browser?.close();
  await fg?.stop();
});

test('a node created in the UI registers with its one-time token, goes live, answers commands and is deleted', async () => {
  const page = await newPage(browser);
  await login(page, fg);
  await page.goto(`${fg.url}/#/nodes`);
  await page.getByText('No nodes yet.').waitFor();
  await page.getByRole('button', { name: 'New node' }).click();
  const dlg = page.getByRole('dialog');
  await dlg.getByLabel('Name').fill('edge-e2e');
  await dlg.getByLabel('Device type').selectOption('edge');
  await dlg.getByRole('button', { name: 'Create node' }).click();

  // The token, once, with a copy button and a warning.
  const shown = page.getByRole('dialog', { name: 'Node edge-e2e created' });
  const secret = shown.locator('.secret-value');
  await secret.waitFor();
  const token = await secret.inputValue();
  assert.ok(token.length >= 20, token);
  await shown.getByText("won't be shown again").waitFor();
  await shown.getByRole('button', { name: 'Copy' }).waitFor();
  await screenshot(page, 'nodes-token-once');
  await shown.getByRole('button', { name: 'I have stored it' }).click();
  await shown.waitFor({ state: 'detached' });
  assert.ok(!(await page.content()).includes(token), 'the token is not in the page any more');
  const row = page.locator('#nodes tbody tr', { hasText: 'edge-e2e' });
  await row.locator('.badge', { hasText: 'pending' }).waitFor();

  // A real edge registers with the token: the list follows the live feed.
  const edge = await startEdge(fg, token);
  edges.push(edge);
  await row.locator('.badge', { hasText: 'online' }).waitFor({ timeout: 20_000 })
    .catch((e) => { throw new Error(`${e.message}\nedge log:\n${edge.log()}\nmanager log:\n${fg.log()}`); });
  const nodes = (await fg.api('GET', '/api/v1/nodes')).items;
  const id = nodes.find((n) => n.name === 'edge-e2e').id;
  assert.match(await row.textContent(), /\d+\.\d+\.\d+/, 'the software version is listed');

  // Its page: live stats and health from dashboard_update, config sync.
  await row.getByRole('link', { name: 'edge-e2e' }).click();
  await page.waitForURL(new RegExp(`#/nodes/${id}$`));
  await page.locator('#node-live', { hasText: 'live' }).waitFor({ timeout: 10_000 });
  await page.locator('#node-metrics [data-metric="active_flows"]').waitFor();
  await page.locator('#node-metrics [data-metric="uptime_secs"]').waitFor();
  await page.locator('#node-health dt', { hasText: 'version' }).waitFor();
  assert.match(await page.locator('#node-health').textContent(), /ok/);
  await page.locator('#node-flows').getByText('The node reports no flows.').waitFor();
  // Its history: the minute in progress, charted for a metric it reports.
  await page.locator('#node-history svg.chart').waitFor({ timeout: 15_000 });
  const metrics = await page.locator('#node-history-metric option').allTextContents();
  assert.ok(metrics.includes('health.ok') && metrics.includes('uptime_secs'), metrics.join(','));
  await page.locator('#node-history-metric').selectOption('health.ok');
  await page.locator('#node-history', { hasText: 'health.ok avg: 1' }).waitFor();
  assert.match(await page.locator('#node-history').textContent(), /still in progress/);
  await until('the edge to apply the configuration', async () =>
    /in sync/.test(await page.locator('#node-sync').textContent()), 20_000);
  const applied = await page.locator('#config-sync [data-key="applied"]').textContent();
  assert.match(applied, /^\d+$/);
  await screenshot(page, 'nodes-detail-live');

  // get_config is answered with the edge's configuration.
  const box = page.locator('#node-command');
  await box.getByLabel('Action', { exact: true }).selectOption('get_config');
  await box.getByLabel('Parameters (JSON object)').fill('{}');
  await box.getByRole('button', { name: 'Send command' }).click();
  const result = page.locator('#command-result');
  await result.getByText('get_config carried out (HTTP 200').waitFor({ timeout: 15_000 });
  assert.match(await result.locator('pre').textContent(), /"revision"/);
  await screenshot(page, 'nodes-command-answer');

  // A command this edge does not carry out: refused, and said so.
  await box.getByLabel('Action', { exact: true }).selectOption('stop_flow');
  await box.getByLabel('Parameters (JSON object)').fill('{"flow_id": "no-such-flow"}');
  await box.getByRole('button', { name: 'Send command' }).click();
  await result.getByText('Refused by the node (HTTP 422)').waitFor({ timeout: 15_000 });
  // Parameters that are not JSON are caught before sending.
  await box.getByLabel('Parameters (JSON object)').fill('{flow_id');
  await box.getByRole('button', { name: 'Send command' }).click();
  await result.getByText('not valid JSON').waitFor();

  // Deleted: back to the list, which no longer has it; the edge is disconnected.
  await page.getByRole('button', { name: 'Delete' }).click();
  await page.getByRole('dialog').getByRole('button', { name: 'Delete' }).click();
  await page.waitForURL(/#\/nodes$/);
  await page.getByText('No nodes yet.').waitFor();
  assert.equal((await fg.api('GET', '/api/v1/nodes')).total, 0);
  page.assertClean(['422']);
  await page.context().close();
});

test('a node reporting flows shows per-flow and per-output packets, bitrate and drops, live', async () => {
  const created = await fg.api('POST', '/api/v1/nodes', { name: 'edge-flows' });
  const node = await connectNode(fg);
  const reply = await node.auth({ registration_token: created.registration_token, software_version: '0.5.3', protocol_version: 1 });
  assert.equal(reply.type, 'register_ack', JSON.stringify(reply));
  node.send('health', { status: 'ok', version: '0.5.3', uptime_secs: 0, active_flows: 1, total_flows: 1,
    api_addr: '127.0.0.1:8080', monitor_addr: null });
  const stats = (packets) => ({ uptime_secs: 30, active_flows: 1, total_flows: 1, tunnels: [], flows: [{
    flow_id: 'cam-1', flow_name: 'Camera 1', state: 'running', health: 'healthy', uptime_secs: 30,
    input: { input_type: 'srt', state: 'connected', packets_received: packets, bytes_received: packets * 1316,
      bitrate_bps: 4_000_000, packets_lost: 7 },
    outputs: [{ output_id: 'out-1', output_name: 'Studio RTP', output_type: 'rtp', state: 'sending',
      packets_sent: packets - 7, bytes_sent: (packets - 7) * 1316, bitrate_bps: 3_990_000, packets_dropped: 2 }] }] });
  node.send('stats', stats(12_000));

  const page = await newPage(browser);
  await login(page, fg);
  await page.goto(`${fg.url}/#/nodes/${reply.payload.node_id}`);
  await page.locator('#node-live', { hasText: 'live' }).waitFor({ timeout: 10_000 });
  const flow = page.locator('#flows-table tr.flow[data-flow="cam-1"]');
  await flow.waitFor();
  const flowText = await flow.textContent();
  assert.match(flowText, /Camera 1/);
  assert.match(flowText, /12,000/);
  assert.match(flowText, /4\.00 Mb\/s/);
  assert.match(flowText, /7 lost/);
  const output = page.locator('#flows-table tr.output[data-output="out-1"]');
  const outText = await output.textContent();
  assert.match(outText, /Studio RTP/);
  assert.match(outText, /11,993/);
  assert.match(outText, /3\.99 Mb\/s/);
  assert.match(outText, /2 dropped/);
  assert.match(await page.locator('#node-metrics [data-metric="total_bitrate_bps"]').textContent(), /4\.00 Mb\/s/);
  await screenshot(page, 'nodes-flows');

  // New stats show with the next update; gone, the node shows as not connected.
  node.send('stats', stats(15_000));
  await until('the next update', async () => /15,000/.test(await flow.textContent()), 8_000);
  node.close();
  await page.locator('#node-live', { hasText: 'not connected' }).waitFor({ timeout: 8_000 });
  await page.locator('#node-status', { hasText: 'offline' }).waitFor();
  page.assertClean();
  await page.context().close();
});

test('a viewer sees nodes but no controls to create, delete or command them', async () => {
  await fg.api('POST', '/api/v1/users', { username: 'watcher', password: 'Password-123', role: 'viewer' });
  const node = await fg.api('POST', '/api/v1/nodes', { name: 'edge-watched' });
  const page = await newPage(browser);
  await login(page, fg, 'watcher', 'Password-123');
  await page.goto(`${fg.url}/#/nodes`);
  const row = page.locator('#nodes tbody tr', { hasText: 'edge-watched' });
  await row.waitFor();
  assert.equal(await page.getByRole('button', { name: 'New node' }).count(), 0);
  assert.equal(await row.getByRole('button').count(), 0);
  await row.getByRole('link', { name: 'edge-watched' }).click();
  await page.getByText('Sending commands needs the operator role.').waitFor();
  assert.equal(await page.getByRole('button', { name: 'Delete' }).count(), 0);
  assert.equal(await page.getByRole('button', { name: 'Send command' }).count(), 0);
  await page.locator('#node-live', { hasText: 'not connected' }).waitFor({ timeout: 10_000 });
  // The API refuses anyway.
  const r = await page.evaluate(async (id) => {
    const csrf = document.cookie.split('; ').find((c) => c.startsWith('csrf_token='))?.split('=')[1];
    const res = await fetch(`/api/v1/nodes/${id}`, { method: 'DELETE', headers: { 'x-csrf-token': csrf || '' } });
    return res.status;
  }, node.id);
  assert.equal(r, 403);
  page.assertClean(['403']);
  await page.context().close();
});

test('the nodes views at phone width', async () => {
  const created = await fg.api('POST', '/api/v1/nodes', { name: 'edge-phone', description: 'A node seen on a phone' });
  const node = await connectNode(fg);
  const reply = await node.auth({ registration_token: created.registration_token, software_version: '0.5.3', protocol_version: 1 });
  node.send('health', { status: 'ok', version: '0.5.3', uptime_secs: 0, active_flows: 1, total_flows: 1,
    api_addr: '127.0.0.1:8080', monitor_addr: null });
  node.send('stats', { uptime_secs: 5, active_flows: 1, total_flows: 1, tunnels: [], flows: [{
    flow_id: 'cam-2', flow_name: 'Camera 2 with a rather long name', state: 'running', health: 'warning',
    input: { input_type: 'rtp', packets_received: 1_234_567, bitrate_bps: 12_500_000, packets_lost: 0 },
    outputs: [{ output_id: 'o', output_name: 'Backup SRT', output_type: 'srt', state: 'connecting',
      packets_sent: 0, bitrate_bps: 0, packets_dropped: 0 }] }] });
  const page = await newPage(browser, { width: 390, height: 844 });
  await login(page, fg);
  for (const [view, ready] of [['nodes', '#nodes'], [`nodes/${reply.payload.node_id}`, '#flows-table']]) {
    await page.goto(`${fg.url}/#/${view}`);
    await page.locator(ready).waitFor({ timeout: 10_000 });
    await page.waitForTimeout(600);
    const overflow = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
    assert.ok(overflow <= 1, `#/${view} scrolls sideways by ${overflow}px`);
    await screenshot(page, `nodes-phone-${view.split('/')[0]}${view.includes('/') ? '-one' : ''}`);
  }
  node.close();
  page.assertClean();
  await page.context().close();
});
