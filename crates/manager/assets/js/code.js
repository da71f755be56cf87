// A plain-text editor for the YAML files of a form (a deployment's compose.yml
// and service.yml): a textarea with a line-number gutter, the lines a check found
// problems on marked behind the text and in the gutter, and the list of those
// problems under it ("line 5, column 9 — services.web.ports[0]: ..."), each of
// which selects its line. Lines do not wrap, so each number stays beside its line.

import { h, mount } from './ui.js';

/// Pixels per line: the gutter, the marks and the textarea share it (app.css).
const LINE = 18;
/// The textarea's top padding in pixels (app.css `.code-text`).
const PAD = 6;

let seq = 0;

/// One editor. spec: {name, label, value, rows, help}. Returns {el, area,
/// setProblems(list), clear(), selectLine(n)}; `el` is a `.field` carrying
/// data-field=name, so ui.showErrors can place messages without a line there too.
export function codeEditor(spec) {
  const id = `code${++seq}`;
  const gutter = h('div', { class: 'code-gutter', 'aria-hidden': 'true' });
  const marks = h('div', { class: 'code-marks', 'aria-hidden': 'true' });
  const area = h('textarea', {
    id, name: spec.name, class: 'mono code-text', rows: spec.rows || 14, wrap: 'off',
    spellcheck: 'false', autocapitalize: 'off', autocomplete: 'off',
    'aria-describedby': `${id}-problems${spec.help ? ` ${id}-help` : ''}`,
  });
  area.value = spec.value ?? '';
  const list = h('ul', { class: 'code-problems', id: `${id}-problems`, 'aria-live': 'polite' });
  const el = h('div', { class: 'field code-field', dataset: { field: spec.name } },
    h('label', { for: id }, spec.label),
    h('div', { class: 'code' }, gutter, h('div', { class: 'code-body' }, marks, area)),
    spec.help && h('div', { class: 'help', id: `${id}-help` }, spec.help),
    h('div', { class: 'error', role: 'alert' }),
    list);
  // Line number -> the messages about it, from the last check.
  let bad = new Map();
  let drawnLines = -1;

  function drawGutter(force = false) {
    const n = area.value.split('\n').length;
    if (n === drawnLines && !force) return;
    drawnLines = n;
    const rows = [];
    for (let i = 1; i <= n; i++) {
      const msgs = bad.get(i);
      rows.push(h('div', { class: msgs ? 'bad' : undefined, title: msgs ? msgs.join('\n') : undefined,
        dataset: { line: i } }, String(i)));
    }
    mount(gutter, rows);
    sync();
  }

  function sync() {
    gutter.scrollTop = area.scrollTop;
    marks.style.transform = `translate(${-area.scrollLeft}px, ${-area.scrollTop}px)`;
  }

  /// Selects line `n` (1-based) and scrolls it into the middle of the textarea.
  function selectLine(n) {
    const lines = area.value.split('\n');
    const line = Math.min(Math.max(n, 1), lines.length);
    let start = 0;
    for (let i = 0; i < line - 1; i++) start += lines[i].length + 1;
    area.focus();
    area.setSelectionRange(start, start + lines[line - 1].length);
    area.scrollTop = Math.max(0, (line - 1) * LINE - area.clientHeight / 2);
    sync();
  }

  function clear() {
    bad = new Map();
    mount(marks);
    mount(list);
    el.classList.remove('invalid');
    el.querySelector('.error').textContent = '';
    drawGutter(true);
  }

  /// Shows `problems` ({line, column, field, message}, of this file): listed under
  /// the editor, their lines marked.
  function setProblems(problems) {
    clear();
    if (!problems.length) return;
    el.classList.add('invalid');
    for (const p of problems) {
      if (p.line > 0) bad.set(p.line, [...(bad.get(p.line) || []), describe(p)]);
    }
    // Positioned through the CSSOM: the CSP refuses inline style attributes.
    mount(marks, [...bad.keys()].map((line) => {
      const m = h('div', { class: 'code-mark' });
      m.style.top = `${PAD + (line - 1) * LINE}px`;
      return m;
    }));
    mount(list, problems.map((p) => h('li', { dataset: { line: p.line } },
      p.line > 0
        ? h('button', { type: 'button', class: 'link', onclick: () => selectLine(p.line) },
          `line ${p.line}, column ${p.column}`)
        : h('span', { class: 'strong' }, 'the whole file'),
      ` — ${describe(p)}`)));
    drawGutter(true);
  }

  area.addEventListener('input', () => drawGutter());
  area.addEventListener('scroll', sync);
  drawGutter(true);
  return { el, area, setProblems, clear, selectLine };
}

/// "field: message", or the message alone when the problem is of no field.
function describe(p) {
  return p.field ? `${p.field}: ${p.message}` : p.message;
}
