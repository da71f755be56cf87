// The admin API as the dashboard calls it: the browser session cookie, the CSRF
// token echoed on every change, and the error envelope turned into ApiError.

export class ApiError extends Error {
  constructor(status, body) {
    super((body && body.error) || `HTTP ${status}`);
    this.status = status;
    this.code = body && body.code;
    this.details = (body && body.details) || {};
    // Field-level messages: [{field, message}].
    this.errors = Array.isArray(this.details.errors) ? this.details.errors : [];
    if (!this.errors.length && this.details.field) {
      this.errors = [{ field: this.details.field, message: this.message }];
    }
  }
}

export function cookie(name) {
  for (const part of document.cookie.split(';')) {
    const [k, ...v] = part.trim().split('=');
    if (k === name) return decodeURIComponent(v.join('='));
  }
  return null;
}

const SAFE = new Set(['GET', 'HEAD']);

// How often a request answered 429 is asked again, and the longest wait.
const RETRIES_429 = 3;
const MAX_WAIT_S = 60;

async function waitRetryAfter(r) {
  let secs = Number.parseInt(r.headers.get('retry-after') || '', 10);
  if (!Number.isFinite(secs) || secs < 1) secs = 1;
  secs = Math.min(secs, MAX_WAIT_S);
  window.dispatchEvent(new CustomEvent('fg:ratelimited', { detail: { seconds: secs } }));
  await new Promise((resolve) => setTimeout(resolve, secs * 1000));
}

/// Calls the API; resolves to parsed JSON (or text), or throws ApiError.
/// Options: headers, raw (the Response itself), etag (sent as If-Match).
export async function api(method, path, body, opts = {}) {
  const headers = { ...(opts.headers || {}) };
  let payload = body;
  if (body !== undefined && typeof body !== 'string' && !(body instanceof Blob)) {
    headers['content-type'] = 'application/json';
    payload = JSON.stringify(body);
  }
  if (!SAFE.has(method)) {
    const token = cookie('csrf_token');
    if (token) headers['x-csrf-token'] = token;
  }
  if (opts.etag) headers['if-match'] = opts.etag;
  let r;
  for (let attempt = 0; ; attempt += 1) {
    try {
      r = await fetch(path, { method, headers, body: payload, credentials: 'same-origin' });
    } catch (e) {
      throw new ApiError(0, { error: `cannot reach Fleetgate: ${e.message}` });
    }
    // A 429 was not acted on: wait as long as it says and ask again, keeping
    // the page as it is (a few times, then the error is shown).
    if (r.status !== 429 || attempt >= RETRIES_429) break;
    await waitRetryAfter(r);
  }
  if (r.status === 401 && !path.startsWith('/api/v1/auth/login')) {
    window.dispatchEvent(new CustomEvent('fg:unauthorized'));
  }
  if (!r.ok) {
    let b = null;
    try { b = await r.json(); } catch { b = { error: `${r.status} ${r.statusText}` }; }
    throw new ApiError(r.status, b);
  }
  if (opts.raw) return r;
  if (r.status === 204) return null;
  const type = r.headers.get('content-type') || '';
  return type.includes('json') ? r.json() : r.text();
}

export const get = (path) => api('GET', path);
export const post = (path, body, opts) => api('POST', path, body, opts);
export const put = (path, body, opts) => api('PUT', path, body, opts);
export const patch = (path, body, opts) => api('PATCH', path, body, opts);
export const del = (path, opts) => api('DELETE', path, undefined, opts);

/// GET with the resource's ETag, for an edit that must not overwrite a newer one.
export async function getVersioned(path) {
  const r = await api('GET', path, undefined, { raw: true });
  return { data: await r.json(), etag: r.headers.get('etag') };
}

/// Every item of a paginated listing (up to `max`).
export async function getAll(path, max = 5000) {
  const items = [];
  const sep = path.includes('?') ? '&' : '?';
  for (let offset = 0; offset < max; offset += 500) {
    const page = await get(`${path}${sep}limit=500&offset=${offset}`);
    items.push(...page.items);
    if (items.length >= page.total || page.items.length === 0) break;
  }
  return items;
}

export const enc = encodeURIComponent;
