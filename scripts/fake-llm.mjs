#!/usr/bin/env node
// A local, OpenAI-shaped model provider for trying the AI gateway and agents
// without an account or the internet: `GET /v1/models` lists one model, and
// `POST /v1/chat/completions` answers with fixed token counts (1,000 prompt
// and 200 generated tokens per call, so costs are easy to check). A request
// that offers a `lookup` tool, and has no tool result yet, gets a call of
// that tool; otherwise the answer is text echoing the last user message.
// `stream: true` answers as server-sent events. `POST /tools/lookup` is an
// HTTP tool agents may call (it answers `{"host", "address"}`).
//
// Run it:  node scripts/fake-llm.mjs [port]   (default 8089, key `sk-fake-local`)
// The browser tests import `startFakeLlm()`.

import http from 'node:http';
import { fileURLToPath } from 'node:url';

export const FAKE_KEY = 'sk-fake-local';
export const FAKE_MODEL = 'house-llm';
const USAGE = { prompt_tokens: 1000, completion_tokens: 200, total_tokens: 1200 };

function readBody(req) {
  return new Promise((resolve) => {
    let data = '';
    req.on('data', (c) => { data += c; });
    req.on('end', () => resolve(data));
  });
}

function send(res, status, body) {
  res.writeHead(status, { 'content-type': 'application/json' });
  res.end(JSON.stringify(body));
}

function answer(body) {
  const messages = Array.isArray(body.messages) ? body.messages : [];
  const offersLookup = (body.tools || []).some((t) => t.function && t.function.name === 'lookup');
  const hasResult = messages.some((m) => m.role === 'tool');
  const lastUser = [...messages].reverse().find((m) => m.role === 'user');
  const text = lastUser ? (typeof lastUser.content === 'string' ? lastUser.content : JSON.stringify(lastUser.content)) : '';
  if (offersLookup && !hasResult) {
    return { role: 'assistant', content: null,
      tool_calls: [{ id: 'call_1', type: 'function', function: { name: 'lookup', arguments: JSON.stringify({ host: 'db.internal' }) } }] };
  }
  const tool = messages.find((m) => m.role === 'tool');
  return { role: 'assistant', content: tool ? `Looked it up: ${tool.content}` : `You said: ${text}` };
}

/// Starts the fake on `port` (0: any free one); resolves to {url, requests, stop()}.
export async function startFakeLlm(port = 0) {
  const requests = [];
  const server = http.createServer(async (req, res) => {
    const raw = await readBody(req);
    let body = {};
    try { body = raw ? JSON.parse(raw) : {}; } catch { return send(res, 400, { error: { message: 'invalid JSON' } }); }
    requests.push({ method: req.method, path: req.url, body });
    if (req.url === '/tools/lookup' && req.method === 'POST') {
      return send(res, 200, { host: body.host || null, address: '10.0.0.7' });
    }
    if (req.headers.authorization !== `Bearer ${FAKE_KEY}`) {
      return send(res, 401, { error: { message: 'invalid API key', type: 'invalid_request_error' } });
    }
    if (req.url === '/v1/models' && req.method === 'GET') {
      return send(res, 200, { object: 'list', data: [{ id: FAKE_MODEL, object: 'model', owned_by: 'local' }] });
    }
    if (req.url === '/v1/chat/completions' && req.method === 'POST') {
      const message = answer(body);
      const model = body.model || FAKE_MODEL;
      const finish = message.tool_calls ? 'tool_calls' : 'stop';
      if (body.stream) {
        res.writeHead(200, { 'content-type': 'text/event-stream' });
        const chunk = (delta, extra = {}) => `data: ${JSON.stringify({ id: 'chatcmpl-fake', object: 'chat.completion.chunk',
          created: Math.floor(Date.now() / 1000), model, choices: [{ index: 0, delta, finish_reason: null }], ...extra })}\n\n`;
        for (const word of String(message.content || '').split(/(?<= )/)) res.write(chunk({ content: word }));
        res.write(`data: ${JSON.stringify({ id: 'chatcmpl-fake', object: 'chat.completion.chunk', created: Math.floor(Date.now() / 1000),
          model, choices: [{ index: 0, delta: {}, finish_reason: finish }], usage: USAGE })}\n\n`);
        res.end('data: [DONE]\n\n');
        return undefined;
      }
      return send(res, 200, { id: 'chatcmpl-fake', object: 'chat.completion', created: Math.floor(Date.now() / 1000), model,
        choices: [{ index: 0, message, finish_reason: finish }], usage: USAGE });
    }
    return send(res, 404, { error: { message: `no route ${req.method} ${req.url}` } });
  });
  await new Promise((r) => server.listen(port, '127.0.0.1', r));
  return {
    url: `http://127.0.0.1:${server.address().port}`,
    requests,
    stop: () => new Promise((r) => { server.closeAllConnections(); server.close(r); }),
  };
}

if (process.argv[1] === fileURLToPath(import.meta.url)) {
  const fake = await startFakeLlm(Number(process.argv[2] || 8089));
  console.log(`fake OpenAI-shaped provider on ${fake.url}/v1 (key ${FAKE_KEY}, model ${FAKE_MODEL})`);
}
