// The dashboard's live feed (/ws/dashboard), shared by every view: one socket,
// reconnected with backoff, fanned out to subscribers by message type. Besides
// the `{type, data}` frames, the socket carries `dashboard_update` as a bare
// object (the connected nodes, every 5 s); its subscribers get the whole object.

const handlers = { metrics: new Set(), event: new Set(), status: new Set(), dashboard_update: new Set() };
let socket = null;
let retry = 0;
let timer = null;
let wanted = false;
// The socket's last status, told at once to a view that subscribes later.
let lastStatus = null;
// The latest node list, told at once to a view that subscribes later.
let lastFleet = null;

function connect() {
  timer = null;
  const scheme = location.protocol === 'https:' ? 'wss' : 'ws';
  socket = new WebSocket(`${scheme}://${location.host}/ws/dashboard`);
  socket.addEventListener('open', () => { retry = 0; emit('status', 'live'); });
  socket.addEventListener('message', (m) => {
    let msg;
    try { msg = JSON.parse(m.data); } catch { return; }
    if (msg.type === 'dashboard_update') emit(msg.type, msg);
    else emit(msg.type, msg.data);
  });
  socket.addEventListener('close', () => {
    socket = null;
    lastFleet = null;
    emit('status', 'reconnecting');
    if (!wanted) return;
    retry = Math.min(retry + 1, 6);
    timer = setTimeout(connect, 500 * 2 ** retry);
  });
}

function emit(type, data) {
  if (type === 'status') lastStatus = data;
  if (type === 'dashboard_update') lastFleet = data;
  for (const fn of handlers[type] || []) {
    try { fn(data); } catch (e) { console.warn('live handler failed', e); }
  }
}

/// Calls `fn(data)` for each message of `type` ('metrics', 'event', 'status' or
/// 'dashboard_update'); returns the function that unsubscribes.
export function subscribe(type, fn) {
  handlers[type].add(fn);
  if (!socket && !timer) { wanted = true; connect(); }
  if (type === 'status' && lastStatus && socket) {
    try { fn(lastStatus); } catch (e) { console.warn('live handler failed', e); }
  }
  if (type === 'dashboard_update' && lastFleet && socket) {
    try { fn(lastFleet); } catch (e) { console.warn('live handler failed', e); }
  }
  return () => handlers[type].delete(fn);
}

/// Closes the socket (on sign-out).
export function stop() {
  wanted = false;
  lastFleet = null;
  clearTimeout(timer);
  timer = null;
  if (socket) socket.close();
}

/// Calls `fn()` once, `ms` after the last live event that `match(event)` accepts
/// (a burst of changes reloads a view once); returns the function that
/// unsubscribes and cancels a pending call.
export function onEvents(match, fn, ms = 250) {
  let timer = null;
  const off = subscribe('event', (e) => {
    if (!match(e)) return;
    clearTimeout(timer);
    timer = setTimeout(fn, ms);
  });
  return () => { clearTimeout(timer); off(); };
}
