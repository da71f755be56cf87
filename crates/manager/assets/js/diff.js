// Side-by-side text diff (Myers' O(ND) algorithm on lines) rendered as a table,
// with unchanged stretches folded, and the changed part of paired lines marked.

import { h } from './ui.js';

const CONTEXT = 3;
const MAX_D = 4000;

/// The edit script from a to b: [{op: 'eq'|'del'|'ins', a, b}] with line indexes.
export function diffLines(a, b) {
  // Common prefix and suffix first: revisions usually differ in a few places.
  let start = 0;
  while (start < a.length && start < b.length && a[start] === b[start]) start += 1;
  let endA = a.length;
  let endB = b.length;
  while (endA > start && endB > start && a[endA - 1] === b[endB - 1]) { endA -= 1; endB -= 1; }
  const mid = myers(a.slice(start, endA), b.slice(start, endB));
  const ops = [];
  for (let i = 0; i < start; i += 1) ops.push({ op: 'eq', a: i, b: i });
  for (const o of mid) ops.push({ op: o.op, a: o.a === undefined ? undefined : o.a + start, b: o.b === undefined ? undefined : o.b + start });
  for (let i = 0; i < a.length - endA; i += 1) ops.push({ op: 'eq', a: endA + i, b: endB + i });
  return ops;
}

function myers(a, b) {
  const n = a.length;
  const m = b.length;
  if (!n) return b.map((_, j) => ({ op: 'ins', b: j }));
  if (!m) return a.map((_, i) => ({ op: 'del', a: i }));
  const max = n + m;
  const off = max;
  const v = new Int32Array(2 * max + 2);
  // trace[d]: v before round d, for k in -(d+1)..d+1 (O(D²) memory in all).
  const trace = [];
  let found = -1;
  for (let d = 0; d <= Math.min(max, MAX_D); d += 1) {
    trace.push(v.slice(off - d - 1 < 0 ? 0 : off - d - 1, off + d + 2));
    for (let k = -d; k <= d; k += 2) {
      let x = (k === -d || (k !== d && v[off + k - 1] < v[off + k + 1])) ? v[off + k + 1] : v[off + k - 1] + 1;
      let y = x - k;
      while (x < n && y < m && a[x] === b[y]) { x += 1; y += 1; }
      v[off + k] = x;
      if (x >= n && y >= m) { found = d; break; }
    }
    if (found >= 0) break;
  }
  if (found < 0) {
    // Too different to be worth aligning: everything replaced.
    return [...a.map((_, i) => ({ op: 'del', a: i })), ...b.map((_, j) => ({ op: 'ins', b: j }))];
  }
  const at = (d, k) => trace[d][k + d + 1];
  const out = [];
  let x = n;
  let y = m;
  for (let d = found; d > 0; d -= 1) {
    const k = x - y;
    const prevK = (k === -d || (k !== d && at(d, k - 1) < at(d, k + 1))) ? k + 1 : k - 1;
    const prevX = at(d, prevK);
    const prevY = prevX - prevK;
    while (x > prevX && y > prevY) { x -= 1; y -= 1; out.push({ op: 'eq', a: x, b: y }); }
    if (x === prevX) { y -= 1; out.push({ op: 'ins', b: y }); } else { x -= 1; out.push({ op: 'del', a: x }); }
  }
  while (x > 0 && y > 0) { x -= 1; y -= 1; out.push({ op: 'eq', a: x, b: y }); }
  return out.reverse();
}

/// Rows of a side-by-side view: {kind: 'eq'|'chg'|'fold', left, right}.
function rowsOf(a, b, ops) {
  const rows = [];
  let i = 0;
  while (i < ops.length) {
    if (ops[i].op === 'eq') {
      rows.push({ kind: 'eq', left: ops[i].a, right: ops[i].b });
      i += 1;
      continue;
    }
    const dels = [];
    const inss = [];
    while (i < ops.length && ops[i].op !== 'eq') {
      if (ops[i].op === 'del') dels.push(ops[i].a); else inss.push(ops[i].b);
      i += 1;
    }
    for (let j = 0; j < Math.max(dels.length, inss.length); j += 1) {
      rows.push({ kind: 'chg', left: dels[j], right: inss[j] });
    }
  }
  return rows;
}

function marked(text, other, cls) {
  if (other === undefined) return [text];
  let p = 0;
  while (p < text.length && p < other.length && text[p] === other[p]) p += 1;
  let s = 0;
  while (s < text.length - p && s < other.length - p && text[text.length - 1 - s] === other[other.length - 1 - s]) s += 1;
  const middle = text.slice(p, text.length - s);
  if (!middle) return [text];
  return [text.slice(0, p), h('mark', { class: cls }, middle), text.slice(text.length - s)];
}

/// A side-by-side diff of two texts. Returns {el, changed} (changed: lines that differ).
export function sideBySide(leftText, rightText, { leftTitle, rightTitle } = {}) {
  const a = leftText.split('\n');
  const b = rightText.split('\n');
  const rows = rowsOf(a, b, diffLines(a, b));
  const changed = rows.filter((r) => r.kind === 'chg').length;
  const body = h('tbody', {});
  const line = (r) => {
    const l = r.left === undefined ? undefined : a[r.left];
    const rt = r.right === undefined ? undefined : b[r.right];
    const chg = r.kind === 'chg';
    return h('tr', { class: chg ? 'chg' : '' },
      h('td', { class: 'ln' }, r.left === undefined ? '' : String(r.left + 1)),
      h('td', { class: `code${chg && l !== undefined ? ' del' : ''}${l === undefined ? ' blank' : ''}` },
        l === undefined ? '' : (chg ? marked(l, rt, 'del') : l)),
      h('td', { class: 'ln' }, r.right === undefined ? '' : String(r.right + 1)),
      h('td', { class: `code${chg && rt !== undefined ? ' add' : ''}${rt === undefined ? ' blank' : ''}` },
        rt === undefined ? '' : (chg ? marked(rt, l, 'add') : rt)));
  };
  // Unchanged stretches longer than twice the context are folded.
  let i = 0;
  while (i < rows.length) {
    if (rows[i].kind !== 'eq') { body.append(line(rows[i])); i += 1; continue; }
    let j = i;
    while (j < rows.length && rows[j].kind === 'eq') j += 1;
    const head = i === 0 ? 0 : CONTEXT;
    const tail = j === rows.length ? 0 : CONTEXT;
    if (j - i > head + tail + 1) {
      for (let k = i; k < i + head; k += 1) body.append(line(rows[k]));
      const hidden = rows.slice(i + head, j - tail);
      const fold = h('tr', { class: 'fold' }, h('td', { colspan: 4 },
        h('button', { type: 'button', class: 'link', onclick: () => fold.replaceWith(...hidden.map(line)) },
          `⋯ ${hidden.length} unchanged line${hidden.length === 1 ? '' : 's'} (show)`)));
      body.append(fold);
      for (let k = j - tail; k < j; k += 1) body.append(line(rows[k]));
    } else {
      for (let k = i; k < j; k += 1) body.append(line(rows[k]));
    }
    i = j;
  }
  const el = h('div', { class: 'sbs-wrap' }, h('table', { class: 'sbs' },
    h('colgroup', {}, h('col', { class: 'ln' }), h('col', {}), h('col', { class: 'ln' }), h('col', {})),
    h('thead', {}, h('tr', {}, h('th', { colspan: 2, scope: 'col' }, leftTitle || 'Before'), h('th', { colspan: 2, scope: 'col' }, rightTitle || 'After'))),
    body));
  return { el, changed };
}
