// Starts a real `fleetgate serve` (SQLite in a temporary directory, free loopback
// ports), a local upstream, and headless Chromium; collects console errors and
// screenshots. Nothing here reaches the internet. While working on the dashboard,
// FLEETGATE_E2E_ASSETS=../crates/manager/assets makes the browser load its files
// from that directory instead of those compiled into the binary (no rebuild for
// each change); the tests are meant to pass without it.

import { spawn } from 'node:child_process';
import crypto from 'node:crypto';
import { mkdtempSync, mkdirSync, readFileSync, rmSync } from 'node:fs';
import http from 'node:http';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import tls from 'node:tls';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';

const here = path.dirname(fileURLToPath(import.meta.url));
export const ROOT = path.resolve(here, '..', '..');
export const ARTIFACTS = path.join(ROOT, 'e2e', 'artifacts');
export const TOKEN = 'e2e-bootstrap-token-0123456789abcdef';
export const ADMIN_PASSWORD = 'admin-password-123';

const BIN = process.env.FLEETGATE_BIN || path.join(ROOT, 'target', 'debug', 'fleetgate');
const CHROMIUM = process.env.FLEETGATE_CHROMIUM || '/usr/bin/chromium';

export function freePort() {
  return new Promise((resolve, reject) => {
    const s = net.createServer();
    s.once('error', reject);
    s.listen(0, '127.0.0.1', () => {
      const { port } = s.address();
      s.close(() => resolve(port));
    });
  });
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/// A running Fleetgate: `url` (manager and dashboard), `gw` (gateway), `nodeUrl`
/// (its node listener, for `startEdge`), `dir` (its data directory), `api()`.
export async function startFleetgate(extraEnv = {}) {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'fleetgate-e2e-'));
  const port = await freePort();
  const gwPort = await freePort();
  const nodePort = await freePort();
  const env = Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith('FLEETGATE_')));
  Object.assign(env, {
    FLEETGATE_DATA_DIR: dir,
    FLEETGATE_BOOTSTRAP_TOKEN: TOKEN,
    FLEETGATE_ADMIN_PASSWORD: ADMIN_PASSWORD,
    FLEETGATE_LOG_LEVEL: 'warn',
    FLEETGATE_MANAGER_NODE_LISTEN: `127.0.0.1:${nodePort}`,
    ...extraEnv,
  });
  const child = spawn(BIN, ['serve', '--listen', `127.0.0.1:${port}`,
    '--gateway-listen', `127.0.0.1:${gwPort}`, '--gateway-tls-listen', '127.0.0.1:0'],
  { env, stdio: ['ignore', 'pipe', 'pipe'] });
  let log = '';
  child.stdout.on('data', (d) => { log += d; });
  child.stderr.on('data', (d) => { log += d; });
  const url = `http://127.0.0.1:${port}`;
  const fg = {
    url,
    gw: `http://127.0.0.1:${gwPort}`,
    nodeUrl: `wss://localhost:${nodePort}`,
    dir,
    log: () => log,
    async api(method, p, body) {
      const r = await fetch(url + p, {
        method,
        headers: { authorization: `Bearer ${TOKEN}`, ...(body ? { 'content-type': 'application/json' } : {}) },
        body: body ? JSON.stringify(body) : undefined,
      });
      const text = await r.text();
      let json = null;
      try { json = JSON.parse(text); } catch { /* not JSON */ }
      if (!r.ok) throw new Error(`${method} ${p}: ${r.status} ${text}`);
      return json;
    },
    async stop() {
      child.kill('SIGTERM');
      await new Promise((r) => { if (child.exitCode !== null) r(); else child.once('exit', r); });
      rmSync(dir, { recursive: true, force: true });
    },
  };
  const deadline = Date.now() + 30_000;
  for (;;) {
    try {
      const r = await fetch(`${url}/health`);
      if (r.ok) break;
    } catch { /* not up yet */ }
    if (child.exitCode !== null || Date.now() > deadline) {
      throw new Error(`fleetgate did not start (${BIN}):\n${log}`);
    }
    await sleep(50);
  }
  return fg;
}

/// A `fleetgate edge` process registering with `fg`'s node listener with `token`
/// (trusting the certificate the manager generated); `stop()` ends it.
export async function startEdge(fg, token) {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'fleetgate-e2e-edge-'));
  const gwPort = await freePort();
  const env = Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith('FLEETGATE_')));
  env.FLEETGATE_LOG_LEVEL = 'warn';
  env.FLEETGATE_EDGE_TOKEN = token;
  const child = spawn(BIN, ['edge', '--data-dir', dir, '--manager', fg.nodeUrl,
    '--manager-ca-cert', path.join(fg.dir, 'node-tls.crt'),
    '--gateway-listen', `127.0.0.1:${gwPort}`, '--gateway-tls-listen', '127.0.0.1:0'],
  { env, stdio: ['ignore', 'pipe', 'pipe'] });
  let log = '';
  child.stdout.on('data', (d) => { log += d; });
  child.stderr.on('data', (d) => { log += d; });
  return {
    log: () => log,
    async stop() {
      if (child.exitCode === null) {
        child.kill('SIGTERM');
        await new Promise((r) => { if (child.exitCode !== null) r(); else child.once('exit', r); });
      }
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

/// A node under the test's control speaking Bilbycast's `/ws/node` protocol (as
/// an edge that reports flows would) to `fg`'s node listener over TLS: a minimal
/// WebSocket client for text frames. `auth(payload)` sends the auth frame and
/// resolves to the reply; `send(type, payload)` sends an enveloped message;
/// `close()` drops the connection. Every `command` the manager sends is kept in
/// `commands` (its payload: `command_id`, `action`); once `answer(fn)` is set,
/// each is answered with a `command_ack` built from `fn(payload)`: `true` or
/// `undefined` for success, `false` or a string (the error) for a refusal, an
/// object for the ack's other fields, `null` for no answer at all.
export async function connectNode(fg) {
  const port = Number(fg.nodeUrl.split(':').pop());
  const sock = tls.connect({ host: '127.0.0.1', port, servername: 'localhost',
    ca: readFileSync(path.join(fg.dir, 'node-tls.crt')) });
  await new Promise((resolve, reject) => { sock.once('secureConnect', resolve); sock.once('error', reject); });
  const key = crypto.randomBytes(16).toString('base64');
  sock.write(`GET /ws/node HTTP/1.1\r\nHost: localhost:${port}\r\nUpgrade: websocket\r\n`
    + `Connection: Upgrade\r\nSec-WebSocket-Key: ${key}\r\nSec-WebSocket-Version: 13\r\n\r\n`);
  let buf = Buffer.alloc(0);
  let upgraded = false;
  const texts = [];
  const waiting = [];
  const frame = (opcode, payload) => {
    const mask = crypto.randomBytes(4);
    const n = payload.length;
    const head = n < 126 ? Buffer.from([0x80 | opcode, 0x80 | n])
      : n < 65536 ? Buffer.from([0x80 | opcode, 0x80 | 126, n >> 8, n & 255])
        : Buffer.concat([Buffer.from([0x80 | opcode, 0x80 | 127]), (() => {
          const b = Buffer.alloc(8); b.writeBigUInt64BE(BigInt(n)); return b;
        })()]);
    const body = Buffer.from(payload.map((b, i) => b ^ mask[i % 4]));
    sock.write(Buffer.concat([head, mask, body]));
  };
  const commands = [];
  let answerer = null;
  const deliver = (text) => {
    let msg = null;
    try { msg = JSON.parse(text); } catch { /* not JSON: queued as it is */ }
    if (msg && msg.type === 'command' && msg.payload) {
      commands.push(msg.payload);
      if (answerer) answerCommand(msg.payload);
      return;
    }
    const w = waiting.shift();
    if (w) w(text); else texts.push(text);
  };
  const answerCommand = (cmd) => {
    const verdict = answerer(cmd);
    if (verdict === null) return;
    let ack = { success: true, error: null };
    if (verdict === false) ack = { success: false, error: 'refused' };
    else if (typeof verdict === 'string') ack = { success: false, error: verdict };
    else if (verdict && typeof verdict === 'object') ack = { ...ack, ...verdict };
    sendText(JSON.stringify({ type: 'command_ack', timestamp: new Date().toISOString(),
      payload: { command_id: cmd.command_id, ...ack } }));
  };
  const upgrade = new Promise((resolve, reject) => {
    sock.on('data', (d) => {
      buf = Buffer.concat([buf, d]);
      if (!upgraded) {
        const end = buf.indexOf('\r\n\r\n');
        if (end < 0) return;
        const status = buf.subarray(0, end).toString().split('\r\n')[0];
        if (!status.includes(' 101 ')) { reject(new Error(`no upgrade: ${status}`)); return; }
        upgraded = true;
        buf = buf.subarray(end + 4);
        resolve();
      }
      for (;;) {
        if (buf.length < 2) return;
        const opcode = buf[0] & 0x0f;
        let len = buf[1] & 0x7f;
        let at = 2;
        if (len === 126) { if (buf.length < 4) return; len = buf.readUInt16BE(2); at = 4; }
        else if (len === 127) { if (buf.length < 10) return; len = Number(buf.readBigUInt64BE(2)); at = 10; }
        if (buf.length < at + len) return;
        const payload = buf.subarray(at, at + len);
        buf = buf.subarray(at + len);
        if (opcode === 1) deliver(payload.toString());
        else if (opcode === 9) frame(10, [...payload]);
      }
    });
    sock.once('error', reject);
  });
  await upgrade;
  const sendText = (text) => frame(1, [...Buffer.from(text)]);
  const next = () => new Promise((resolve) => {
    if (texts.length) resolve(texts.shift()); else waiting.push(resolve);
  });
  return {
    commands,
    /// Answers every later command (and those received but not answered yet).
    answer(fn) {
      const first = answerer === null;
      answerer = fn;
      if (first) for (const c of commands) answerCommand(c);
    },
    async auth(payload) {
      sendText(JSON.stringify({ type: 'auth', payload }));
      return JSON.parse(await next());
    },
    send(type, payload) {
      sendText(JSON.stringify({ type, timestamp: new Date().toISOString(), payload }));
    },
    close() { sock.destroy(); },
  };
}

/// A local upstream answering every request with `state.status`.
export async function startUpstream() {
  const state = { status: 200, hits: 0 };
  const server = http.createServer((req, res) => {
    state.hits += 1;
    res.writeHead(state.status, { 'content-type': 'application/json' });
    res.end(JSON.stringify({ path: req.url, status: state.status }));
  });
  await new Promise((r) => server.listen(0, '127.0.0.1', r));
  return {
    state,
    url: `http://127.0.0.1:${server.address().port}`,
    stop: () => new Promise((r) => server.close(r)),
  };
}

export async function launch() {
  return chromium.launch({
    executablePath: CHROMIUM,
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking'],
  });
}

/// A page that records console errors and uncaught exceptions; `assertClean()`
/// fails the test if the page logged any.
export async function newPage(browser, { width = 1280, height = 860 } = {}) {
  const context = await browser.newContext({ viewport: { width, height } });
  if (process.env.FLEETGATE_E2E_ASSETS) {
    // Development only: the dashboard's files from this directory instead of those
    // compiled into the binary (no rebuild for each change to them).
    const dir = path.resolve(process.env.FLEETGATE_E2E_ASSETS);
    await context.route('**/assets/**', (route) => {
      const rel = new URL(route.request().url()).pathname.replace(/^\/assets\//, '');
      const file = path.join(dir, rel);
      if (!file.startsWith(dir + path.sep)) return route.continue();
      const type = rel.endsWith('.js') ? 'text/javascript' : rel.endsWith('.css') ? 'text/css'
        : rel.endsWith('.svg') ? 'image/svg+xml' : 'text/html';
      try {
        return route.fulfill({ status: 200, contentType: type, body: readFileSync(file) });
      } catch {
        return route.continue();
      }
    });
  }
  const page = await context.newPage();
  const problems = [];
  page.on('console', (m) => {
    if (m.type() === 'error') problems.push(`console: ${m.text()}`);
  });
  page.on('pageerror', (e) => problems.push(`exception: ${e.message}`));
  page.assertClean = (allow = []) => {
    const left = problems.filter((p) => !allow.some((a) => p.includes(a)));
    if (left.length) throw new Error(`the page logged errors:\n${left.join('\n')}`);
  };
  page.problems = problems;
  return page;
}

export async function screenshot(page, name) {
  mkdirSync(ARTIFACTS, { recursive: true });
  await page.screenshot({ path: path.join(ARTIFACTS, `${name}.png`), fullPage: true });
}

/// Elements sticking out to the right of the viewport, by a short description.
export async function overflow(page) {
  return page.evaluate(() => {
    const width = document.documentElement.clientWidth;
    const out = [];
    if (document.documentElement.scrollWidth > width + 1) out.push(`page scrolls sideways (${document.documentElement.scrollWidth} > ${width})`);
    for (const el of document.querySelectorAll('main .panel, main .card, main .toolbar, main table:not(.table-wrap table)')) {
      const r = el.getBoundingClientRect();
      if (r.width && r.right > width + 1) {
        out.push(`${el.tagName.toLowerCase()}.${[...el.classList].join('.')}#${el.id} ends at ${Math.round(r.right)} > ${width}`);
      }
    }
    return out;
  });
}

export async function login(page, fg, username = 'admin', password = ADMIN_PASSWORD) {
  await page.goto(fg.url + '/');
  await page.getByLabel('Username').fill(username);
  await page.getByLabel('Password').fill(password);
  await page.getByRole('button', { name: 'Sign in' }).click();
  await page.locator('#who-user').waitFor({ state: 'attached' });
}

/// Polls `fn` until it returns a truthy value.
export async function until(what, fn, timeoutMs = 10_000) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const v = await fn();
    if (v) return v;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await sleep(100);
  }
}
