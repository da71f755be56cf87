#!/usr/bin/env node
// A local model provider for trying the AI gateway and agents without an
// account or the internet. It speaks three formats, with fixed token counts
// (1,000 prompt and 200 generated tokens per call, so costs are easy to check):
//
// - OpenAI (`Authorization: Bearer`): `GET /v1/models`, `POST /v1/chat/completions`;
// - Anthropic (`x-api-key`, `anthropic-version`): `GET /v1/models`, `POST /v1/messages`;
// - Gemini (`x-goog-api-key`): `GET /v1beta/models`,
//   `POST /v1beta/models/{model}:generateContent` and `:streamGenerateContent?alt=sse`.
//
// A request that offers a `lookup` tool (OpenAI format), and has no tool
// result yet, gets a call of that tool; otherwise the answer is text echoing
// the last user message. Streams (`stream: true`, or Gemini's stream method)
// are server-sent events in the format's own shape. Two words in the last user
// message change a stream, to try what the gateway does then: `#cut` breaks
// the connection halfway through, `#error` sends the format's error event
// halfway through and ends the stream. `POST /tools/lookup` is an HTTP tool
// agents may call (it answers `{"host", "address"}`).
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

/// The last user message's text, in any of the three formats.
function lastUserText(body) {
  if (Array.isArray(body.contents)) {
    const last = [...body.contents].reverse().find((c) => c.role === 'user' || !c.role);
    return last ? (last.parts || []).map((p) => p.text || '').join('') : '';
  }
  const messages = Array.isArray(body.messages) ? body.messages : [];
  const last = [...messages].reverse().find((m) => m.role === 'user');
  if (!last) return '';
  return typeof last.content === 'string' ? last.content : JSON.stringify(last.content);
}

/// Writes `events` as a stream, a few milliseconds apart; `mode` (from the
/// prompt) cuts it or replaces its second half with `errorEvent`.
function stream(res, events, mode, errorEvent) {
  res.writeHead(200, { 'content-type': 'text/event-stream', 'cache-control': 'no-cache' });
  const half = Math.max(1, Math.floor(events.length / 2));
  const out = mode ? events.slice(0, half) : events;
  let i = 0;
  const next = () => {
    if (i < out.length) {
      res.write(out[i++]);
      setTimeout(next, 5);
    } else if (mode === 'cut') {
      setTimeout(() => res.socket && res.socket.destroy(), 50);
    } else {
      res.end(mode === 'error' ? errorEvent : undefined);
    }
  };
  next();
}

function modeOf(body) {
  const text = lastUserText(body);
  return text.includes('#cut') ? 'cut' : text.includes('#error') ? 'error' : null;
}

/// The echo cut in words, each piece of a stream.
function words(text) {
  return String(text).split(/(?<= )/).filter((w) => w.length > 0);
}

function anthropic(res, body) {
  const model = body.model || FAKE_MODEL;
  const text = `You said: ${lastUserText(body)}`;
  const usage = { input_tokens: USAGE.prompt_tokens, output_tokens: USAGE.completion_tokens };
  if (!body.stream) {
    return send(res, 200, { id: 'msg_fake', type: 'message', role: 'assistant', model,
      content: [{ type: 'text', text }], stop_reason: 'end_turn', stop_sequence: null, usage });
  }
  const ev = (name, data) => `event: ${name}\ndata: ${JSON.stringify(data)}\n\n`;
  const events = [
    ev('message_start', { type: 'message_start', message: { id: 'msg_fake', type: 'message', role: 'assistant', model,
      content: [], stop_reason: null, usage: { input_tokens: usage.input_tokens, output_tokens: 1 } } }),
    ev('content_block_start', { type: 'content_block_start', index: 0, content_block: { type: 'text', text: '' } }),
    ev('ping', { type: 'ping' }),
    ...words(text).map((w) => ev('content_block_delta', { type: 'content_block_delta', index: 0, delta: { type: 'text_delta', text: w } })),
    ev('content_block_stop', { type: 'content_block_stop', index: 0 }),
    ev('message_delta', { type: 'message_delta', delta: { stop_reason: 'end_turn', stop_sequence: null }, usage: { output_tokens: usage.output_tokens } }),
    ev('message_stop', { type: 'message_stop' }),
  ];
  stream(res, events, modeOf(body), ev('error', { type: 'error', error: { type: 'overloaded_error', message: 'Overloaded' } }));
  return undefined;
}

function gemini(res, body, model, streamed) {
  const text = `You said: ${lastUserText(body)}`;
  const chunk = (piece, last) => {
    const candidate = { content: { role: 'model', parts: [{ text: piece }] }, index: 0 };
    if (last) candidate.finishReason = 'STOP';
    return { candidates: [candidate], modelVersion: model, responseId: 'fake-response',
      usageMetadata: { promptTokenCount: USAGE.prompt_tokens, candidatesTokenCount: USAGE.completion_tokens,
        totalTokenCount: USAGE.total_tokens } };
  };
  if (!streamed) return send(res, 200, chunk(text, true));
  const pieces = words(text);
  const events = pieces.map((w, i) => `data: ${JSON.stringify(chunk(w, i + 1 === pieces.length))}\r\n\r\n`);
  stream(res, events, modeOf(body),
    `data: ${JSON.stringify({ error: { code: 503, message: 'The model is overloaded.', status: 'UNAVAILABLE' } })}\r\n\r\n`);
  return undefined;
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
    const url = new URL(req.url, 'http://fake');
    if (req.headers['x-api-key'] !== undefined) {
      // Anthropic's format.
      if (req.headers['x-api-key'] !== FAKE_KEY) {
        return send(res, 401, { type: 'error', error: { type: 'authentication_error', message: 'invalid x-api-key' } });
      }
      if (!req.headers['anthropic-version']) {
        return send(res, 400, { type: 'error', error: { type: 'invalid_request_error', message: 'anthropic-version: header is required' } });
      }
      if (url.pathname === '/v1/models' && req.method === 'GET') {
        return send(res, 200, { data: [{ type: 'model', id: FAKE_MODEL, display_name: FAKE_MODEL }], has_more: false });
      }
      if (url.pathname === '/v1/messages' && req.method === 'POST') return anthropic(res, body);
      return send(res, 404, { type: 'error', error: { type: 'not_found_error', message: `no route ${req.method} ${url.pathname}` } });
    }
    if (url.pathname.startsWith('/v1beta/')) {
      // Gemini's format.
      if (req.headers['x-goog-api-key'] !== FAKE_KEY) {
        return send(res, 400, { error: { code: 400, message: 'API key not valid. Please pass a valid API key.', status: 'INVALID_ARGUMENT' } });
      }
      if (url.pathname === '/v1beta/models' && req.method === 'GET') {
        return send(res, 200, { models: [{ name: `models/${FAKE_MODEL}`, supportedGenerationMethods: ['generateContent'] }] });
      }
      const m = /^\/v1beta\/models\/([^/:]+):(generateContent|streamGenerateContent)$/.exec(url.pathname);
      if (m && req.method === 'POST') {
        const streamed = m[2] === 'streamGenerateContent';
        if (streamed && url.searchParams.get('alt') !== 'sse') {
          return send(res, 400, { error: { code: 400, message: 'this fake streams only with alt=sse', status: 'INVALID_ARGUMENT' } });
        }
        return gemini(res, body, m[1], streamed);
      }
      return send(res, 404, { error: { code: 404, message: `no route ${req.method} ${url.pathname}`, status: 'NOT_FOUND' } });
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
  console.log(`fake provider: OpenAI-shaped on ${fake.url}/v1, Anthropic and Gemini on ${fake.url} (key ${FAKE_KEY}, model ${FAKE_MODEL})`);
}
