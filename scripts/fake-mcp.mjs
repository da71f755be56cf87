#!/usr/bin/env node
// A small MCP server for trying and testing agents' MCP tools without any
// package: JSON-RPC 2.0 with `initialize`, `notifications/initialized`,
// `ping`, `tools/list` and `tools/call` (MCP revision 2025-03-26, 2024-11-05
// and 2025-06-18 accepted).
//
//   node scripts/fake-mcp.mjs            stdio: one JSON message a line
//   node scripts/fake-mcp.mjs --http [port]
//                                        streamable HTTP on 127.0.0.1 at /mcp
//                                        (prints its URL as the first line)
//
// Its tools: `echo` {text}, `add` {a, b}, `delete_everything` {} (a tool
// operators are meant to deny), `env_names` {} (the names of the variables
// in its environment), `hang` {} (never answers), `big` {bytes} (that much
// text), `crash` {} (writes a line that is not JSON and a message on stderr,
// then exits with status 3).
//
// With FAKE_MCP_LOG set, every `tools/call` it receives is appended to that
// file as a JSON line {name, arguments, authorization}, so a test can tell
// what reached the server. With FAKE_MCP_AUTH set (HTTP), a request whose
// `authorization` header differs is refused with 401.

import fs from 'node:fs';
import http from 'node:http';
import readline from 'node:readline';

const VERSIONS = ['2025-06-18', '2025-03-26', '2024-11-05'];

const TOOLS = [
  { name: 'echo', description: 'Echoes the text back',
    inputSchema: { type: 'object', properties: { text: { type: 'string' } }, required: ['text'] } },
  { name: 'add', description: 'Adds two numbers',
    inputSchema: { type: 'object', properties: { a: { type: 'number' }, b: { type: 'number' } }, required: ['a', 'b'] } },
  { name: 'delete_everything', description: 'Deletes every file it can reach',
    inputSchema: { type: 'object', properties: {} } },
  { name: 'env_names', description: 'Names of the variables in the server environment',
    inputSchema: { type: 'object', properties: {} } },
  { name: 'hang', description: 'Never answers', inputSchema: { type: 'object', properties: {} } },
  { name: 'big', description: 'Answers with that many bytes of text',
    inputSchema: { type: 'object', properties: { bytes: { type: 'integer' } }, required: ['bytes'] } },
  { name: 'crash', description: 'Writes garbage and exits', inputSchema: { type: 'object', properties: {} } },
];

function logCall(name, args, authorization) {
  const file = process.env.FAKE_MCP_LOG;
  if (file) fs.appendFileSync(file, `${JSON.stringify({ name, arguments: args, authorization: authorization || null })}\n`);
}

const text = (t) => ({ content: [{ type: 'text', text: t }] });

/// The answer to one message: a JSON-RPC response, null for a notification,
/// or 'hang' / 'crash' for the tools that misbehave.
function handle(msg, authorization) {
  if (!msg || msg.jsonrpc !== '2.0' || typeof msg.method !== 'string') {
    return { jsonrpc: '2.0', id: msg && msg.id !== undefined ? msg.id : null, error: { code: -32600, message: 'invalid request' } };
  }
  const isRequest = msg.id !== undefined && msg.id !== null;
  const ok = (result) => ({ jsonrpc: '2.0', id: msg.id, result });
  const fail = (code, message) => ({ jsonrpc: '2.0', id: msg.id, error: { code, message } });
  switch (msg.method) {
    case 'initialize': {
      const asked = msg.params && msg.params.protocolVersion;
      return ok({ protocolVersion: VERSIONS.includes(asked) ? asked : '2025-03-26',
        capabilities: { tools: { listChanged: false } }, serverInfo: { name: 'fake-mcp', version: '1.0.0' } });
    }
    case 'ping': return ok({});
    case 'tools/list': return ok({ tools: TOOLS });
    case 'tools/call': {
      const p = msg.params || {};
      const args = p.arguments || {};
      logCall(p.name, args, authorization);
      switch (p.name) {
        case 'echo': return ok(text(`echo: ${args.text}`));
        case 'add': return ok({ ...text(String(Number(args.a) + Number(args.b))), structuredContent: { sum: Number(args.a) + Number(args.b) } });
        case 'delete_everything': return ok(text('deleted everything'));
        case 'env_names': return ok(text(Object.keys(process.env).sort().join(',')));
        case 'hang': return 'hang';
        case 'big': return ok(text('x'.repeat(Math.max(0, Number(args.bytes) || 0))));
        case 'crash': return 'crash';
        default: return ok({ ...text(`no tool named ${p.name}`), isError: true });
      }
    }
    default:
      return isRequest ? fail(-32601, `method not found: ${msg.method}`) : null;
  }
}

function stdio() {
  const rl = readline.createInterface({ input: process.stdin, crlfDelay: Infinity });
  rl.on('line', (line) => {
    if (!line.trim()) return;
    let msg;
    try { msg = JSON.parse(line); } catch {
      process.stdout.write(`${JSON.stringify({ jsonrpc: '2.0', id: null, error: { code: -32700, message: 'parse error' } })}\n`);
      return;
    }
    const out = handle(msg, null);
    if (out === 'hang' || out === null) return;
    if (out === 'crash') {
      process.stdout.write('this is not JSON {{{\n');
      process.stderr.write('fatal: crashed on purpose\n', () => process.exit(3));
      return;
    }
    process.stdout.write(`${JSON.stringify(out)}\n`);
  });
  rl.on('close', () => process.exit(0));
}

function httpServer(port) {
  const server = http.createServer((req, res) => {
    if (req.url !== '/mcp') { res.writeHead(404); res.end(); return; }
    if (process.env.FAKE_MCP_AUTH && req.headers.authorization !== process.env.FAKE_MCP_AUTH) {
      res.writeHead(401, { 'content-type': 'application/json' });
      res.end(JSON.stringify({ error: 'unauthorized' }));
      return;
    }
    if (req.method === 'GET') { res.writeHead(405); res.end(); return; }
    if (req.method === 'DELETE') { res.writeHead(200); res.end(); return; }
    let data = '';
    req.on('data', (c) => { data += c; });
    req.on('end', () => {
      let msg;
      try { msg = JSON.parse(data); } catch {
        res.writeHead(400, { 'content-type': 'application/json' });
        res.end(JSON.stringify({ jsonrpc: '2.0', id: null, error: { code: -32700, message: 'parse error' } }));
        return;
      }
      const out = handle(msg, req.headers.authorization);
      if (out === 'hang') return;
      if (out === null) { res.writeHead(202); res.end(); return; }
      if (out === 'crash') {
        res.writeHead(200, { 'content-type': 'application/json' });
        res.end('this is not JSON {{{');
        return;
      }
      const headers = { 'content-type': 'application/json' };
      if (msg.method === 'initialize') headers['mcp-session-id'] = 'fake-session-1';
      res.writeHead(200, headers);
      res.end(JSON.stringify(out));
    });
  });
  server.listen(port, '127.0.0.1', () => {
    process.stdout.write(`http://127.0.0.1:${server.address().port}/mcp\n`);
  });
}

const http_ = process.argv.indexOf('--http');
if (http_ >= 0) {
  httpServer(Number(process.argv[http_ + 1] || 0));
} else {
  stdio();
}
