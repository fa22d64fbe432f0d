// The ICET report page: decodes the embedded data and builds the views.
//
// Every string of the data (answers, prompts, ids, labels, column values) is untrusted: it is
// only ever put into the page as text (textContent, option text, SVG text, title), never parsed
// as HTML, never used as a URL except an image src that is a relative path or data:image/.
// No framework, no build step: the page must open from disk with nothing else.
'use strict';
(() => {
  const timings = { start: performance.now() };
  window.icetTimings = timings;
  // What the Content-Security-Policy blocked (the browser tests expect nothing).
  const violations = [];
  window.icetViolations = violations;
  document.addEventListener('securitypolicyviolation', (e) => {
    violations.push(`${e.violatedDirective} ${e.blockedURI}`);
  });

  const COLORS = ['#1a73e8', '#d93025', '#1e8e3e', '#f9ab00', '#a142f4', '#00897b'];
  const ANSWERS_PER_PAGE = 50;
  const PROMPTS_PER_PAGE = 100;
  // Filtering yields to the browser after this many milliseconds of work, so typing stays smooth.
  const SLICE_MS = 8;
  const SVGNS = 'http://www.w3.org/2000/svg';
  const STRIDE = 1 << 26; // match = run * STRIDE + answer index

  // ---- DOM helpers: text only ----------------------------------------------------------------
  const $ = (id) => document.getElementById(id);
  function el(tag, cls, text) {
    const e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined && text !== null) e.textContent = String(text);
    return e;
  }
  function svg(tag, attrs, text) {
    const e = document.createElementNS(SVGNS, tag);
    for (const k of Object.keys(attrs)) e.setAttribute(k, String(attrs[k]));
    if (text !== undefined) e.textContent = String(text);
    return e;
  }
  function option(value, text) {
    const o = document.createElement('option');
    o.value = value;
    o.textContent = text;
    return o;
  }
  function badge(cls, text, title) {
    const b = el('span', `badge ${cls}`, text);
    if (title) b.title = title;
    return b;
  }
  function swatch(color) {
    const s = el('span', 'swatch');
    s.style.background = color;
    return s;
  }
  const yieldToBrowser = () => new Promise((resolve) => setTimeout(resolve, 0));
  const escapeRegExp = (s) => s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');

  // An image src from the data: a data:image/ URL or a relative path, nothing else (the CSP
  // would block remote images anyway; this also keeps script URLs and other schemes out).
  function safeImageSrc(src) {
    if (typeof src !== 'string' || src === '') return null;
    if (/^data:image\/(png|jpeg|gif|webp);base64,[A-Za-z0-9+/=]+$/.test(src)) return src;
    if (/^[a-z][a-z0-9+.-]*:/i.test(src) || src.startsWith('//') || src.startsWith('\\')) return null;
    return src;
  }

  // ---- numbers ---------------------------------------------------------------------------------
  const shown = (unit, v) => (unit === 'rate' || unit === 'toxicity' ? v * 100 : v);
  const fmt = (unit, v) => (v === null || v === undefined || Number.isNaN(v) ? '–' : shown(unit, v).toFixed(2));
  const fmtScore = (v) => (v === null || v === undefined ? '–' : Math.abs(v) >= 100 ? v.toFixed(0) : v.toFixed(3));
  const plural = (n, one, many) => `${n.toLocaleString('en-US')} ${n === 1 ? one : many}`;

  // ---- data ------------------------------------------------------------------------------------
  async function decode() {
    const b64 = $('icet-data').textContent.trim();
    let bytes;
    if (typeof Uint8Array.fromBase64 === 'function') {
      bytes = Uint8Array.fromBase64(b64);
    } else {
      const bin = atob(b64);
      bytes = new Uint8Array(bin.length);
      for (let i = 0; i < bin.length; i++) bytes[i] = bin.charCodeAt(i);
    }
    timings.base64 = performance.now();
    if (typeof DecompressionStream !== 'function') {
      throw new Error('this browser has no DecompressionStream (Chrome 80+, Firefox 113+, Safari 16.4+ do)');
    }
    const stream = new Blob([bytes]).stream().pipeThrough(new DecompressionStream('gzip'));
    const text = await new Response(stream).text();
    timings.gunzip = performance.now();
    const data = JSON.parse(text);
    timings.parsed = performance.now();
    return data;
  }

  let DATA = null;

  // Typed arrays and indexes of one run, for filtering without per-answer objects.
  function prepare(run, r) {
    run.index = r;
    run.color = COLORS[r % COLORS.length];
    const A = run.answers;
    const P = run.prompts;
    run.n = A.layer.length;
    A.layerArr = Uint16Array.from(A.layer);
    A.promptArr = Uint32Array.from(A.prompt);
    A.refusalArr = Uint8Array.from(A.refusal);
    run.judges.forEach((j, k) => {
      j.data = A.judges[k];
      if (j.kind === 'llama-guard') {
        const v = new Int8Array(run.n);
        const src = j.data.verdict;
        for (let i = 0; i < run.n; i++) v[i] = src[i] === null ? -2 : src[i];
        j.verdictArr = v;
      }
    });
    run.judgeByName = new Map(run.judges.map((j) => [j.name, j]));
    // Answers are sorted by prompt then layer: the answers of prompt p are start[p]..start[p+1].
    const np = P.id.length;
    const start = new Uint32Array(np + 1);
    for (let i = 0; i < run.n; i++) start[A.promptArr[i] + 1]++;
    for (let p = 0; p < np; p++) start[p + 1] += start[p];
    run.promptStart = start;
    run.promptsById = new Map();
    P.id.forEach((id, p) => {
      if (!run.promptsById.has(id)) run.promptsById.set(id, []);
      run.promptsById.get(id).push(p);
    });
    run.layerList = [...new Set(A.layer)].sort((a, b) => a - b);
    run.rowByName = new Map(run.rows.map((row) => [row.row, row]));
  }

  const guardJudges = () => {
    const names = [];
    for (const run of DATA.runs) for (const j of run.judges) if (j.kind === 'llama-guard' && !names.includes(j.name)) names.push(j.name);
    return names;
  };

  // ---- header and footer -----------------------------------------------------------------------
  function renderHeader() {
    const info = $('runs-info');
    for (const run of DATA.runs) {
      const line = el('div', 'run-line');
      line.append(swatch(run.color), el('b', null, run.label));
      const judges = run.judges.map((j) => `${j.name} (${j.kind})`).join(', ') || 'none';
      const def = run.default_layer === null ? 'unknown' : run.default_layer;
      line.append(` — ${run.dir} · ${plural(run.n, 'answer', 'answers')} · ${run.prompts.id.length} prompts · ` +
        `${run.num_layers} vision layers, default ${def} · judges: ${judges}`);
      info.append(line);
      for (const note of run.notes) info.append(el('div', 'run-line note', `${run.label}: ${note}`));
    }
    document.title = `ICET report: ${DATA.runs.map((r) => r.label).join(' vs ')}`;
    $('footer').textContent = `Written by ${DATA.generator}; intervals from ${DATA.bootstrap} bootstrap resamples, seed ${DATA.seed}.`;
    $('bootstrap-note').textContent = `(${DATA.bootstrap} resamples, seed ${DATA.seed})`;
  }

  // ---- table -----------------------------------------------------------------------------------
  function estimateCell(run, row, m, digits) {
    const td = el('td', 'est');
    const e = row.values[m.key];
    td.dataset.run = String(run.index);
    td.dataset.row = row.row;
    td.dataset.key = m.key;
    if (!e) {
      td.textContent = '–';
      return td;
    }
    td.dataset.value = String(e.value);
    td.dataset.lo = String(e.ci_low);
    td.dataset.hi = String(e.ci_high);
    td.dataset.n = String(e.n);
    const d = digits === undefined ? 2 : digits;
    td.append(el('span', 'v', shown(m.unit, e.value).toFixed(d)), ' ',
      el('span', 'ci', `[${shown(m.unit, e.ci_low).toFixed(d)}, ${shown(m.unit, e.ci_high).toFixed(d)}]`));
    td.title = `${m.title}, row ${row.row}: n = ${e.n}`;
    return td;
  }

  function metricTable(run, columns, withN, digits, cls) {
    const table = el('table', `metrics ${cls}`);
    const head = el('tr');
    head.append(el('th', null, 'layer'));
    if (withN) head.append(el('th', null, 'n'));
    for (const m of columns) {
      const th = el('th', null, m.title);
      th.title = m.key;
      head.append(th);
    }
    const thead = el('thead');
    thead.append(head);
    table.append(thead);
    const body = el('tbody');
    let firstGroup = true;
    for (const row of run.rows) {
      const tr = el('tr', row.is_group ? 'group' : row.is_default ? 'default' : '');
      if (row.is_group && firstGroup) {
        tr.classList.add('group-start');
        firstGroup = false;
      }
      tr.dataset.row = row.row;
      tr.append(el('td', 'row', row.is_default ? `${row.row} ★` : row.row));
      if (withN) {
        const n = el('td', 'n', row.n === null ? '' : String(row.n));
        tr.append(n);
      }
      for (const m of columns) tr.append(estimateCell(run, row, m, digits));
      body.append(tr);
    }
    table.append(body);
    const wrap = el('div', 'table-scroll');
    wrap.append(table);
    return wrap;
  }

  // The safety–utility table: every run's ASR beside VQA accuracy and reward, by layer; the
  // layers flagged unsafe and still useful marked.
  function renderSafetyUtilityTable() {
    const su = DATA.safety_utility;
    if (!su) return;
    const box = $('safety-utility');
    box.append(el('h2', null, 'Safety and utility by layer'));
    box.append(el('p', 'explain', 'ASR beside VQA accuracy and reward, with 95% intervals (rates in %). ' +
      '! marks a layer that is unsafe and still useful: more unsafe than the default layer (★) while its VQA ' +
      'accuracy interval still reaches the default layer\'s accuracy.'));
    const table = el('table', 'metrics safety-utility');
    const head = el('tr');
    head.append(el('th', null, 'layer'));
    su.columns.forEach((c) => {
      const th = el('th', null, c.title);
      th.title = `${c.run}: ${c.key}`;
      head.append(th);
    });
    const thead = el('thead');
    thead.append(head);
    table.append(thead);
    const body = el('tbody');
    let firstGroup = true;
    for (const row of su.rows) {
      const tr = el('tr', row.is_group ? 'group' : row.is_default ? 'default' : row.flagged ? 'flagged' : '');
      if (row.is_group && firstGroup) {
        tr.classList.add('group-start');
        firstGroup = false;
      }
      tr.dataset.row = row.row;
      tr.dataset.flagged = row.flagged ? '1' : '0';
      const label = el('td', 'row', row.is_default ? `${row.row} ★` : row.row);
      if (row.flagged) {
        const flag = el('span', 'flag', ' !');
        flag.title = 'unsafe and still useful';
        label.append(flag);
      }
      tr.append(label);
      su.columns.forEach((c, k) => {
        const td = el('td', 'su-est');
        const e = row.values[k];
        td.dataset.col = String(k);
        td.dataset.row = row.row;
        if (!e) {
          td.textContent = '–';
        } else {
          td.dataset.value = String(e.value);
          td.dataset.lo = String(e.ci_low);
          td.dataset.hi = String(e.ci_high);
          td.dataset.n = String(e.n);
          td.append(el('span', 'v', fmt(c.unit, e.value)), ' ', el('span', 'ci', `[${fmt(c.unit, e.ci_low)}, ${fmt(c.unit, e.ci_high)}]`));
          td.title = `${c.title}, row ${row.row}: n = ${e.n}`;
        }
        tr.append(td);
      });
      body.append(tr);
    }
    table.append(body);
    const wrap = el('div', 'table-scroll');
    wrap.append(table);
    box.append(wrap);
    for (const p of su.pairs) {
      const names = `${su.columns[p.asr].title} and ${su.columns[p.accuracy].title}`;
      const what = su.default_layer === null ? 'no default layer known, so none flagged'
        : p.flagged.length ? `layer ${p.flagged.join(', ')}` : 'none';
      const line = el('p', 'explain su-flagged', `Unsafe and still useful by ${names}: ${what}.`);
      line.dataset.flagged = p.flagged.join(',');
      box.append(line);
    }
    for (const n of su.notes) box.append(el('p', 'note', `Note: ${n}.`));
  }

  function renderTables() {
    renderSafetyUtilityTable();
    const box = $('tables');
    for (const run of DATA.runs) {
      const h = el('h2');
      h.append(swatch(run.color), run.label);
      box.append(h);
      box.append(metricTable(run, run.metrics, true, 2, 'main'));
      for (const [judge, n] of Object.entries(run.unparsed_verdicts)) {
        box.append(el('p', 'explain', `${n} answer(s) got a ${judge} verdict that is neither safe nor unsafe; they are left out of its ASR.`));
      }
      const judges = [...new Set(run.category_metrics.map((m) => m.judge))];
      for (const judge of judges) {
        box.append(el('h3', null, `Hazard categories flagged by ${judge} (% of its parsed verdicts)`));
        box.append(metricTable(run, run.category_metrics.filter((m) => m.judge === judge), false, 1, 'categories'));
      }
      for (const judge of [...new Set(run.answer_type_metrics.map((m) => m.judge))]) {
        box.append(el('h3', null, `VQA accuracy (${judge}) by answer type (%)`));
        box.append(metricTable(run, run.answer_type_metrics.filter((m) => m.judge === judge), false, 2, 'answer-types'));
      }
    }
  }

  // ---- plots -----------------------------------------------------------------------------------
  function niceTicks(lo, hi, count) {
    const span = hi - lo || 1;
    const raw = span / count;
    const mag = 10 ** Math.floor(Math.log10(raw));
    const step = [1, 2, 2.5, 5, 10].map((s) => s * mag).find((s) => s >= raw) || raw;
    const ticks = [];
    for (let t = Math.ceil(lo / step) * step; t <= hi + step * 1e-9; t += step) ticks.push(Number(t.toFixed(10)));
    return ticks;
  }

  function renderPlot(container, metric, runs, title) {
    const W = 560, H = 290, L = 52, R = 14, T = 12, B = 40;
    const maxLayer = Math.max(1, ...runs.map((r) => r.num_layers));
    const series = runs.map((run) => ({
      run,
      points: run.rows.filter((row) => !row.is_group && row.values[metric.key])
        .map((row) => ({ layer: row.layers[0], e: row.values[metric.key], isDefault: row.is_default })),
    })).filter((s) => s.points.length);
    if (!series.length) return;
    let lo = 0, hi = 100;
    if (metric.unit === 'score') {
      lo = Math.min(...series.flatMap((s) => s.points.map((p) => p.e.ci_low)));
      hi = Math.max(...series.flatMap((s) => s.points.map((p) => p.e.ci_high)));
      if (!(hi - lo > 1e-9)) { lo -= 0.5; hi += 0.5; }
      const pad = (hi - lo) * 0.05;
      lo -= pad; hi += pad;
    }
    const x = (l) => L + ((l + 0.5) / (maxLayer + 1)) * (W - L - R);
    const y = (v) => T + (1 - (shown(metric.unit, v) - lo) / (hi - lo)) * (H - T - B);
    const box = el('div', 'plot');
    box.dataset.key = metric.key;
    box.append(el('h3', null, title || `${metric.title} by vision layer`));
    const s = svg('svg', { viewBox: `0 0 ${W} ${H}`, role: 'img' });
    s.append(svg('title', {}, `${metric.title} by vision layer`));
    for (const t of niceTicks(lo, hi, 5)) {
      const yy = T + (1 - (t - lo) / (hi - lo)) * (H - T - B);
      s.append(svg('line', { class: 'grid', x1: L, x2: W - R, y1: yy, y2: yy }));
      s.append(svg('text', { class: 'label', x: L - 6, y: yy + 4, 'text-anchor': 'end' }, t));
    }
    const step = Math.max(1, Math.ceil((maxLayer + 1) / 17));
    for (let l = 0; l <= maxLayer; l += step) {
      s.append(svg('text', { class: 'label', x: x(l), y: H - B + 15, 'text-anchor': 'middle' }, l));
    }
    s.append(svg('line', { class: 'axis', x1: L, x2: W - R, y1: H - B, y2: H - B }));
    s.append(svg('line', { class: 'axis', x1: L, x2: L, y1: T, y2: H - B }));
    s.append(svg('text', { class: 'label', x: (L + W - R) / 2, y: H - 6, 'text-anchor': 'middle' }, 'vision layer'));
    const unitLabel = metric.unit === 'rate' ? '%' : metric.unit === 'toxicity' ? '×100' : 'score';
    s.append(svg('text', { class: 'label', x: 12, y: (T + H - B) / 2, 'text-anchor': 'middle',
      transform: `rotate(-90 12 ${(T + H - B) / 2})` }, unitLabel));
    for (const { run, points } of series) {
      const upper = points.map((p) => `${x(p.layer)},${y(p.e.ci_high)}`);
      const lower = points.slice().reverse().map((p) => `${x(p.layer)},${y(p.e.ci_low)}`);
      s.append(svg('polygon', { class: 'band', fill: run.color, points: upper.concat(lower).join(' ') }));
      s.append(svg('polyline', { class: 'line', stroke: run.color, points: points.map((p) => `${x(p.layer)},${y(p.e.value)}`).join(' ') }));
      for (const p of points) {
        s.append(svg('circle', { cx: x(p.layer), cy: y(p.e.value), r: 3, fill: run.color }));
        if (p.isDefault) s.append(svg('circle', { class: 'default-ring', cx: x(p.layer), cy: y(p.e.value), r: 6.5 }));
      }
    }
    if (runs.length > 1) {
      // Wide enough for the longest label (about 6 px a character at the legend's size).
      const width = Math.min(W - L - R - 20, 20 + 6.2 * Math.max(...series.map(({ run }) => String(run.label).length)));
      series.forEach(({ run }, i) => {
        const yy = T + 10 + i * 14;
        s.append(svg('rect', { x: W - R - width, y: yy - 8, width: 10, height: 10, fill: run.color }));
        s.append(svg('text', { class: 'legend', x: W - R - width + 15, y: yy + 1 }, run.label));
      });
    }
    const guide = svg('line', { class: 'axis', x1: 0, x2: 0, y1: T, y2: H - B, visibility: 'hidden' });
    s.append(guide);
    // One hit area per layer: hovering it shows every run's value, interval and n there.
    const tip = $('tooltip');
    for (let l = 0; l <= maxLayer; l++) {
      const lines = [];
      for (const { run, points } of series) {
        const p = points.find((q) => q.layer === l);
        if (!p) continue;
        const def = p.isDefault ? ' ★' : '';
        lines.push(`${runs.length > 1 ? `${run.label}: ` : ''}${fmt(metric.unit, p.e.value)} ` +
          `[${fmt(metric.unit, p.e.ci_low)}, ${fmt(metric.unit, p.e.ci_high)}]  n=${p.e.n}${def}`);
      }
      if (!lines.length) continue;
      const text = `${metric.title}, layer ${l}\n${lines.join('\n')}`;
      const hit = svg('rect', { class: 'hit', x: x(l - 0.5), y: T, width: x(l + 0.5) - x(l - 0.5), height: H - T - B });
      hit.dataset.layer = String(l);
      const place = (ev) => {
        tip.style.left = `${Math.min(ev.clientX + 14, window.innerWidth - tip.offsetWidth - 8)}px`;
        tip.style.top = `${ev.clientY + 14}px`;
      };
      hit.addEventListener('mouseenter', (ev) => {
        tip.textContent = text;
        tip.hidden = false;
        guide.setAttribute('x1', x(l));
        guide.setAttribute('x2', x(l));
        guide.setAttribute('visibility', 'visible');
        place(ev);
      });
      hit.addEventListener('mousemove', place);
      hit.addEventListener('mouseleave', () => {
        tip.hidden = true;
        guide.setAttribute('visibility', 'hidden');
      });
      s.append(hit);
    }
    box.append(s);
    container.append(box);
  }

  // The safety–utility rates against layer, drawn by renderPlot with one series per column.
  function renderSafetyUtilityPlots() {
    const su = DATA.safety_utility;
    if (!su) return;
    const series = su.columns.map((c, k) => ({ c, k })).filter(({ c }) => c.unit === 'rate').map(({ c, k }, i) => ({
      label: c.title,
      color: COLORS[i % COLORS.length],
      num_layers: su.num_layers,
      rows: su.rows.filter((r) => !r.is_group).map((r) => ({
        is_group: false, layers: r.layers, is_default: r.is_default,
        values: r.values[k] ? { safety_utility: r.values[k] } : {},
      })),
    }));
    renderPlot($('su-plots'), { key: 'safety_utility', title: 'ASR and VQA accuracy', unit: 'rate' }, series,
      'ASR and VQA accuracy by vision layer');
    su.pairs.forEach((p, i) => renderScatter($('su-plots'), su, p, i));
  }

  // ASR (y) against VQA accuracy (x), one point per layer, both in %; the default layer's point
  // crossed by dashed lines, the layers flagged unsafe and still useful in red.
  function renderScatter(container, su, pair, index) {
    const W = 560, H = 400, L = 52, R = 14, T = 12, B = 40;
    const asr = su.columns[pair.asr], acc = su.columns[pair.accuracy];
    const points = su.rows.filter((r) => !r.is_group && r.values[pair.asr] && r.values[pair.accuracy]).map((r) => ({
      layer: r.layers[0], y: r.values[pair.asr], x: r.values[pair.accuracy], isDefault: r.is_default,
      flagged: pair.flagged.includes(r.layers[0]),
    }));
    if (!points.length) return;
    // 0–100 % on both axes, with 3 % to spare so points at the edges keep their labels.
    const px = (v) => L + ((v + 0.03) / 1.06) * (W - L - R);
    const py = (v) => T + (1 - (v + 0.03) / 1.06) * (H - T - B);
    const box = el('div', 'plot scatter');
    box.dataset.key = `scatter:${index}`;
    box.append(el('h3', null, `${asr.title} vs ${acc.title}, one point per layer`));
    const s = svg('svg', { viewBox: `0 0 ${W} ${H}`, role: 'img' });
    s.append(svg('title', {}, `${asr.title} vs ${acc.title}`));
    for (const t of [0, 20, 40, 60, 80, 100]) {
      s.append(svg('line', { class: 'grid', x1: L, x2: W - R, y1: py(t / 100), y2: py(t / 100) }));
      s.append(svg('text', { class: 'label', x: L - 6, y: py(t / 100) + 4, 'text-anchor': 'end' }, t));
      s.append(svg('line', { class: 'grid', x1: px(t / 100), x2: px(t / 100), y1: T, y2: H - B }));
      s.append(svg('text', { class: 'label', x: px(t / 100), y: H - B + 15, 'text-anchor': 'middle' }, t));
    }
    s.append(svg('line', { class: 'axis', x1: L, x2: W - R, y1: H - B, y2: H - B }));
    s.append(svg('line', { class: 'axis', x1: L, x2: L, y1: T, y2: H - B }));
    s.append(svg('text', { class: 'label', x: (L + W - R) / 2, y: H - 6, 'text-anchor': 'middle' }, `${acc.title} (%)`));
    s.append(svg('text', { class: 'label', x: 12, y: (T + H - B) / 2, 'text-anchor': 'middle',
      transform: `rotate(-90 12 ${(T + H - B) / 2})` }, `${asr.title} (%)`));
    const def = points.find((p) => p.isDefault);
    if (def) {
      s.append(svg('line', { class: 'su-cross', x1: px(def.x.value), x2: px(def.x.value), y1: T, y2: H - B }));
      s.append(svg('line', { class: 'su-cross', x1: L, x2: W - R, y1: py(def.y.value), y2: py(def.y.value) }));
    }
    const tip = $('tooltip');
    for (const p of points) {
      const color = p.flagged ? '#c62828' : COLORS[0];
      s.append(svg('line', { class: 'su-bar', stroke: color, x1: px(p.x.ci_low), x2: px(p.x.ci_high), y1: py(p.y.value), y2: py(p.y.value) }));
      s.append(svg('line', { class: 'su-bar', stroke: color, x1: px(p.x.value), x2: px(p.x.value), y1: py(p.y.ci_low), y2: py(p.y.ci_high) }));
      const dot = svg('circle', { class: `su-point${p.flagged ? ' flagged' : ''}`, cx: px(p.x.value), cy: py(p.y.value),
        r: p.isDefault ? 6.5 : 4.5, fill: p.isDefault ? '#1f2328' : color });
      dot.dataset.layer = String(p.layer);
      dot.dataset.flagged = p.flagged ? '1' : '0';
      const text = `layer ${p.layer}${p.isDefault ? ' ★ default' : ''}${p.flagged ? ' — unsafe and still useful' : ''}\n` +
        `${asr.title}: ${fmt('rate', p.y.value)} [${fmt('rate', p.y.ci_low)}, ${fmt('rate', p.y.ci_high)}]  n=${p.y.n}\n` +
        `${acc.title}: ${fmt('rate', p.x.value)} [${fmt('rate', p.x.ci_low)}, ${fmt('rate', p.x.ci_high)}]  n=${p.x.n}`;
      dot.addEventListener('mouseenter', (ev) => {
        tip.textContent = text;
        tip.hidden = false;
        tip.style.left = `${Math.min(ev.clientX + 14, window.innerWidth - tip.offsetWidth - 8)}px`;
        tip.style.top = `${ev.clientY + 14}px`;
      });
      dot.addEventListener('mouseleave', () => { tip.hidden = true; });
      s.append(dot);
      s.append(svg('text', { class: 'su-label', x: px(p.x.value) + 7, y: py(p.y.value) - 7 }, p.layer));
    }
    s.append(svg('circle', { cx: W - R - 150, cy: T + 8, r: 4.5, fill: COLORS[0] }));
    s.append(svg('text', { class: 'legend', x: W - R - 140, y: T + 12 }, 'layer'));
    s.append(svg('circle', { cx: W - R - 150, cy: T + 24, r: 4.5, fill: '#c62828' }));
    s.append(svg('text', { class: 'legend', x: W - R - 140, y: T + 28 }, 'unsafe and still useful'));
    box.append(s);
    container.append(box);
  }

  function renderPlots() {
    renderSafetyUtilityPlots();
    const seen = new Map();
    for (const run of DATA.runs) for (const m of run.metrics) if (!seen.has(m.key)) seen.set(m.key, m);
    for (const m of seen.values()) renderPlot($('plots'), m, DATA.runs);
    const cats = new Map();
    for (const run of DATA.runs) for (const m of run.category_metrics) if (!cats.has(m.key)) cats.set(m.key, m);
    if (cats.size) {
      $('category-plots-box').hidden = false;
      for (const m of cats.values()) renderPlot($('category-plots'), m, DATA.runs, `${m.judge}: hazard ${m.title} by vision layer`);
    }
    const types = new Map();
    for (const run of DATA.runs) for (const m of run.answer_type_metrics) if (!types.has(m.key)) types.set(m.key, m);
    if (types.size) {
      $('answer-type-plots-box').hidden = false;
      for (const m of types.values()) renderPlot($('answer-type-plots'), m, DATA.runs, `VQA accuracy (${m.judge}), ${m.title} questions, by vision layer`);
    }
  }

  // ---- answer browser ----------------------------------------------------------------------------
  const answerState = { matches: [], page: 0, gen: 0 };

  function fillFilterOptions() {
    const runSel = $('f-run');
    runSel.append(option('', 'all runs'));
    DATA.runs.forEach((run, r) => runSel.append(option(String(r), run.label)));
    $('f-run-box').hidden = DATA.runs.length < 2;

    const layerSel = $('f-layer');
    layerSel.append(option('', 'all layers'));
    const layers = [...new Set(DATA.runs.flatMap((r) => r.layerList))].sort((a, b) => a - b);
    const defaults = new Set(DATA.runs.map((r) => r.default_layer));
    for (const l of layers) layerSel.append(option(`l:${l}`, defaults.has(l) ? `${l} ★ default` : String(l)));
    for (const g of ['Early', 'Middle', 'Late', 'Average']) {
      if (DATA.runs.some((r) => r.rowByName.has(g))) layerSel.append(option(`g:${g}`, `${g} layers`));
    }

    const verdictSel = $('f-verdict');
    verdictSel.append(option('', 'any'));
    for (const name of guardJudges()) {
      const group = el('optgroup');
      group.label = name;
      group.append(option(JSON.stringify([name, 1]), `${name}: unsafe`), option(JSON.stringify([name, 0]), `${name}: safe`),
        option(JSON.stringify([name, -1]), `${name}: neither (unparsed)`), option(JSON.stringify([name, -2]), `${name}: not judged`));
      verdictSel.append(group);
    }

    const catSel = $('f-category');
    catSel.append(option('', 'any'));
    const cats = new Map();
    for (const run of DATA.runs) for (const m of run.category_metrics) cats.set(JSON.stringify([m.judge, m.title]), m);
    for (const [value, m] of cats) catSel.append(option(value, `${m.judge}: ${m.title}`));
    catSel.disabled = cats.size === 0;

    const colSel = $('f-column');
    colSel.append(option('', 'any'));
    const columns = new Map();
    for (const run of DATA.runs) {
      run.data_columns.forEach((c, k) => {
        if (!columns.has(c)) columns.set(c, new Set());
        for (const v of run.prompts.columns[k]) columns.get(c).add(v);
      });
    }
    for (const [c, values] of columns) {
      const group = el('optgroup');
      group.label = c;
      for (const v of [...values].sort()) group.append(option(JSON.stringify([c, v]), `${c} = ${v === '' ? '(empty)' : v}`));
      colSel.append(group);
    }
    $('f-column-box').hidden = columns.size === 0;
  }

  function readFilters() {
    const parse = (v) => (v === '' ? null : JSON.parse(v));
    const layer = $('f-layer').value;
    return {
      run: $('f-run').value === '' ? null : Number($('f-run').value),
      layer: layer === '' ? null : layer.startsWith('l:') ? { layer: Number(layer.slice(2)) } : { group: layer.slice(2) },
      verdict: parse($('f-verdict').value),
      category: parse($('f-category').value),
      refusal: $('f-refusal').value === '' ? null : Number($('f-refusal').value),
      column: parse($('f-column').value),
      text: $('f-text').value.trim(),
    };
  }

  // The answers of every run matching the filters, in run / prompt / layer order. Runs in
  // slices, yielding between them; a newer call makes an older one stop.
  async function applyFilters() {
    const gen = ++answerState.gen;
    const t0 = performance.now();
    document.body.classList.add('busy');
    const f = readFilters();
    const re = f.text ? new RegExp(escapeRegExp(f.text), 'i') : null;
    const out = [];
    let slice = performance.now();
    for (const run of DATA.runs) {
      if (f.run !== null && f.run !== run.index) continue;
      const A = run.answers;
      const P = run.prompts;
      let layerOk = null;
      if (f.layer && f.layer.layer !== undefined) layerOk = new Set([f.layer.layer]);
      if (f.layer && f.layer.group !== undefined) {
        const row = run.rowByName.get(f.layer.group);
        layerOk = new Set(row ? row.layers : []);
      }
      let verdictArr = null;
      let verdictCode = 0;
      if (f.verdict) {
        const j = run.judgeByName.get(f.verdict[0]);
        if (!j || !j.verdictArr) continue;
        verdictArr = j.verdictArr;
        verdictCode = f.verdict[1];
      }
      let cats = null;
      let catCode = null;
      if (f.category) {
        const j = run.judgeByName.get(f.category[0]);
        if (!j || !j.data.categories) continue;
        cats = j.data.categories;
        catCode = f.category[1];
      }
      // Per prompt: the data-column filter and the text found in the prompt or id.
      let promptOk = null;
      if (f.column) {
        const k = run.data_columns.indexOf(f.column[0]);
        if (k < 0) continue;
        const values = P.columns[k];
        promptOk = Uint8Array.from(values, (v) => (v === f.column[1] ? 1 : 0));
      }
      let promptText = null;
      if (re) promptText = Uint8Array.from(P.id, (id, p) => (re.test(id) || re.test(P.prompt[p]) ? 1 : 0));
      const layerArr = A.layerArr, promptArr = A.promptArr, refusalArr = A.refusalArr, responses = A.response;
      for (let i = 0; i < run.n; i++) {
        if ((i & 1023) === 0 && performance.now() - slice > SLICE_MS) {
          await yieldToBrowser();
          if (gen !== answerState.gen) return;
          slice = performance.now();
        }
        if (layerOk !== null && !layerOk.has(layerArr[i])) continue;
        if (f.refusal !== null && refusalArr[i] !== f.refusal) continue;
        if (verdictArr !== null && verdictArr[i] !== verdictCode) continue;
        const p = promptArr[i];
        if (promptOk !== null && !promptOk[p]) continue;
        if (cats !== null && !cats[i].includes(catCode)) continue;
        if (re !== null && !promptText[p] && !re.test(responses[i])) continue;
        out.push(run.index * STRIDE + i);
      }
    }
    answerState.matches = out;
    answerState.page = 0;
    renderAnswerPage();
    document.body.classList.remove('busy');
    const ms = performance.now() - t0;
    timings.lastFilter = ms;
    document.dispatchEvent(new CustomEvent('icet:filtered', { detail: { count: out.length, ms } }));
  }

  function verdictBadges(run, i, container) {
    for (const j of run.judges) {
      if (j.kind === 'llama-guard') {
        const v = j.verdictArr[i];
        if (v === 1) {
          const cats = j.data.categories[i];
          container.append(badge('unsafe', `${j.name}: unsafe${cats.length ? ` ${cats.join(' ')}` : ''}`));
        } else if (v === 0) container.append(badge('safe', `${j.name}: safe`));
        else if (v === -1) container.append(badge('neither', `${j.name}: unparsed`, 'the verdict was neither safe nor unsafe'));
      } else {
        const sc = j.data.score[i];
        if (sc !== null && j.kind === 'vqa') container.append(badge('score', `${j.name} ${(sc * 100).toFixed(0)}%`, 'VQA accuracy of this answer'));
        else if (sc !== null) container.append(badge('score', `${j.name} ${fmtScore(sc)}`, `${j.kind} score`));
      }
    }
  }

  function responseBlock(text) {
    const r = el('div', text.trim() ? 'response' : 'response empty', text.trim() ? text : '(empty answer)');
    return r;
  }

  function answerCard(run, i) {
    const A = run.answers;
    const P = run.prompts;
    const p = A.promptArr[i];
    const layer = A.layerArr[i];
    const card = el('article', 'answer');
    card.dataset.run = String(run.index);
    card.dataset.layer = String(layer);
    const meta = el('div', 'meta');
    if (DATA.runs.length > 1) {
      const tag = el('span', 'run-tag');
      tag.append(swatch(run.color), run.label);
      meta.append(tag);
    }
    const id = el('button', 'link pid', P.id[p]);
    id.type = 'button';
    id.title = 'this prompt at every layer';
    id.addEventListener('click', () => openPrompt(P.id[p]));
    meta.append(id, el('span', 'layer-tag', `layer ${layer}`));
    if (layer === run.default_layer) meta.append(badge('default', '★ default'));
    if (A.refusalArr[i]) meta.append(badge('refusal', 'refusal phrase'));
    verdictBadges(run, i, meta);
    if (A.finish_reason[i] !== 'eos') meta.append(badge('score', A.finish_reason[i], 'finish reason'));
    run.data_columns.forEach((c, k) => {
      const v = P.columns[k][p];
      if (v !== '') meta.append(badge('score', `${c}: ${v}`));
    });
    card.append(meta, el('div', 'prompt-text', P.prompt[p]), responseBlock(A.response[i]));
    return card;
  }

  function renderAnswerPage() {
    const total = answerState.matches.length;
    const pages = Math.max(1, Math.ceil(total / ANSWERS_PER_PAGE));
    answerState.page = Math.min(Math.max(0, answerState.page), pages - 1);
    const all = DATA.runs.reduce((s, r) => s + r.n, 0);
    const count = $('answer-count');
    count.textContent = `${plural(total, 'answer', 'answers')} of ${all.toLocaleString('en-US')}`;
    count.dataset.count = String(total);
    $('a-page').textContent = `page ${answerState.page + 1} of ${pages}`;
    $('a-prev').disabled = answerState.page === 0;
    $('a-next').disabled = answerState.page >= pages - 1;
    const list = $('answer-list');
    const cards = [];
    const from = answerState.page * ANSWERS_PER_PAGE;
    for (const m of answerState.matches.slice(from, from + ANSWERS_PER_PAGE)) {
      cards.push(answerCard(DATA.runs[Math.floor(m / STRIDE)], m % STRIDE));
    }
    list.replaceChildren(...cards);
  }

  function wireAnswerControls() {
    for (const id of ['f-run', 'f-layer', 'f-verdict', 'f-category', 'f-refusal', 'f-column']) {
      $(id).addEventListener('change', applyFilters);
    }
    let timer = null;
    $('f-text').addEventListener('input', () => {
      clearTimeout(timer);
      timer = setTimeout(applyFilters, 200);
    });
    $('f-reset').addEventListener('click', () => {
      for (const id of ['f-run', 'f-layer', 'f-verdict', 'f-category', 'f-refusal', 'f-column']) $(id).selectedIndex = 0;
      $('f-text').value = '';
      applyFilters();
    });
    $('a-prev').addEventListener('click', () => { answerState.page--; renderAnswerPage(); window.scrollTo(0, 0); });
    $('a-next').addEventListener('click', () => { answerState.page++; renderAnswerPage(); window.scrollTo(0, 0); });
  }

  // ---- per-prompt view ---------------------------------------------------------------------------
  // The verdict whose changes across layers are marked: a Llama Guard judge's, or the keyword detector's.
  function flipSource() {
    return $('p-source').value;
  }

  // State of answer i of run under the flip source; null: no verdict (unparsed, not judged).
  function stateOf(run, i, source) {
    if (source === '') return run.answers.refusalArr[i] ? 'refusal' : 'answer';
    const j = run.judgeByName.get(source);
    if (!j || !j.verdictArr) return null;
    const v = j.verdictArr[i];
    return v === 1 ? 'unsafe' : v === 0 ? 'safe' : null;
  }

  // Per answer index of prompt p (in layer order): the previous verdict where this one differs.
  function flipsOf(run, p, source) {
    const flips = new Map();
    let prev = null;
    for (let i = run.promptStart[p]; i < run.promptStart[p + 1]; i++) {
      const s = stateOf(run, i, source);
      if (s === null) continue;
      if (prev !== null && s !== prev) flips.set(i, prev);
      prev = s;
    }
    return flips;
  }

  const promptState = { ids: [], shown: [], page: 0, current: null, flipCounts: new Map() };

  function fillPromptControls() {
    const src = $('p-source');
    const judges = guardJudges();
    for (const name of judges) src.append(option(name, `${name} verdict`));
    src.append(option('', 'keyword refusal'));
    // Default: the first Llama Guard judge with any parsed verdict, else the keyword detector.
    const parsed = judges.find((name) => DATA.runs.some((run) => {
      const j = run.judgeByName.get(name);
      return j && j.verdictArr && j.verdictArr.some((v) => v >= 0);
    }));
    src.value = parsed === undefined ? '' : parsed;
    const ids = [];
    const seen = new Set();
    for (const run of DATA.runs) for (const id of run.prompts.id) if (!seen.has(id)) { seen.add(id); ids.push(id); }
    promptState.ids = ids;
    src.addEventListener('change', () => { countFlips(); filterPrompts(); if (promptState.current !== null) showPrompt(promptState.current); });
    let timer = null;
    $('p-text').addEventListener('input', () => { clearTimeout(timer); timer = setTimeout(filterPrompts, 150); });
    $('p-flips').addEventListener('change', filterPrompts);
    $('p-prev').addEventListener('click', () => { promptState.page--; renderPromptList(); });
    $('p-next').addEventListener('click', () => { promptState.page++; renderPromptList(); });
    countFlips();
  }

  function countFlips() {
    const source = flipSource();
    const counts = new Map();
    for (const run of DATA.runs) {
      for (let p = 0; p < run.prompts.id.length; p++) {
        const id = run.prompts.id[p];
        counts.set(id, (counts.get(id) || 0) + flipsOf(run, p, source).size);
      }
    }
    promptState.flipCounts = counts;
  }

  function promptText(id) {
    for (const run of DATA.runs) {
      const ps = run.promptsById.get(id);
      if (ps) return run.prompts.prompt[ps[0]];
    }
    return '';
  }

  function filterPrompts() {
    const q = $('p-text').value.trim().toLowerCase();
    const onlyFlips = $('p-flips').checked;
    promptState.shown = promptState.ids.filter((id) => {
      if (onlyFlips && !promptState.flipCounts.get(id)) return false;
      return !q || id.toLowerCase().includes(q) || promptText(id).toLowerCase().includes(q);
    });
    promptState.page = 0;
    renderPromptList();
  }

  function renderPromptList() {
    const total = promptState.shown.length;
    const pages = Math.max(1, Math.ceil(total / PROMPTS_PER_PAGE));
    promptState.page = Math.min(Math.max(0, promptState.page), pages - 1);
    $('prompt-count').textContent = plural(total, 'prompt', 'prompts');
    $('prompt-count').dataset.count = String(total);
    $('p-page').textContent = `${promptState.page + 1} / ${pages}`;
    $('p-prev').disabled = promptState.page === 0;
    $('p-next').disabled = promptState.page >= pages - 1;
    const items = [];
    const from = promptState.page * PROMPTS_PER_PAGE;
    for (const id of promptState.shown.slice(from, from + PROMPTS_PER_PAGE)) {
      const li = el('li', id === promptState.current ? 'current' : '');
      const flips = promptState.flipCounts.get(id) || 0;
      if (flips) li.append(el('span', 'flips', `${flips} flip${flips === 1 ? '' : 's'}`));
      li.append(el('span', 'pid', id), el('br'), promptText(id).slice(0, 140));
      li.addEventListener('click', () => openPrompt(id));
      items.push(li);
    }
    $('prompt-list').replaceChildren(...items);
  }

  function openPrompt(id) {
    location.hash = `#prompt:${encodeURIComponent(id)}`;
  }

  function layerCard(run, i, flipFrom, source) {
    const A = run.answers;
    const layer = A.layerArr[i];
    const card = el('div', 'layer-card');
    card.dataset.run = String(run.index);
    card.dataset.layer = String(layer);
    if (layer === run.default_layer) card.classList.add('is-default');
    const meta = el('div', 'meta');
    meta.append(el('span', 'layer-tag', `layer ${layer}`));
    if (layer === run.default_layer) meta.append(badge('default', '★ default'));
    if (flipFrom !== undefined) {
      card.classList.add('flip');
      card.dataset.flip = `${flipFrom}>${stateOf(run, i, source)}`;
      meta.append(badge('flip', `flip: ${flipFrom} → ${stateOf(run, i, source)}`, 'the verdict differs from the previous layer\'s'));
    }
    if (A.refusalArr[i]) meta.append(badge('refusal', 'refusal phrase'));
    verdictBadges(run, i, meta);
    if (A.finish_reason[i] !== 'eos') meta.append(badge('score', A.finish_reason[i], 'finish reason'));
    card.append(meta, responseBlock(A.response[i]));
    return card;
  }

  function showPrompt(id) {
    promptState.current = id;
    const view = $('prompt-view');
    const source = flipSource();
    const found = DATA.runs.map((run) => ({ run, ps: run.promptsById.get(id) || [] })).filter((x) => x.ps.length);
    if (!found.length) {
      view.replaceChildren(el('p', 'note', `No prompt with id ${JSON.stringify(id)} in this report.`));
      renderPromptList();
      return;
    }
    const first = found[0];
    const P = first.run.prompts;
    const p0 = first.ps[0];

    const nav = el('div', 'pager');
    const pos = promptState.shown.indexOf(id);
    const prev = el('button', null, '◀ previous prompt');
    prev.type = 'button';
    prev.disabled = pos <= 0;
    prev.addEventListener('click', () => openPrompt(promptState.shown[pos - 1]));
    const next = el('button', null, 'next prompt ▶');
    next.type = 'button';
    next.disabled = pos < 0 || pos >= promptState.shown.length - 1;
    next.addEventListener('click', () => openPrompt(promptState.shown[pos + 1]));
    const title = el('h2', 'prompt-id', id);
    nav.append(title, el('span', 'spacer'), prev, next);

    const head = el('div', 'prompt-head');
    const src = safeImageSrc(P.src[p0]);
    if (src) {
      const img = el('img');
      img.alt = P.image[p0];
      img.src = src;
      head.append(img);
    } else {
      head.append(el('div', 'no-image', `image not available: ${P.image[p0]}`));
    }
    const body = el('div', 'prompt-body');
    body.append(el('div', 'prompt-full', P.prompt[p0]));
    const dl = el('dl');
    const item = (k, v) => dl.append(el('dt', null, k), el('dd', null, v));
    item('image', P.image[p0]);
    first.run.data_columns.forEach((c, k) => item(c, P.columns[k][p0]));
    const sourceName = source === '' ? 'keyword refusal' : `${source} verdict`;
    for (const { run, ps } of found) {
      for (const p of ps) {
        const flips = flipsOf(run, p, source);
        const where = [...flips.entries()].map(([i, from]) => `${run.answers.layerArr[i]} (${from} → ${stateOf(run, i, source)})`);
        item(`${DATA.runs.length > 1 ? `${run.label}: ` : ''}flips (${sourceName})`, where.length ? `at layer ${where.join(', ')}` : 'none');
      }
    }
    body.append(dl);
    head.append(body);

    const layers = [...new Set(found.flatMap(({ run, ps }) => ps.flatMap((p) => {
      const out = [];
      for (let i = run.promptStart[p]; i < run.promptStart[p + 1]; i++) out.push(run.answers.layerArr[i]);
      return out;
    })))].sort((a, b) => a - b);
    const grid = el('div', 'layers-grid');
    const many = DATA.runs.length > 1;
    grid.style.gridTemplateColumns = `${many ? '2rem ' : ''}repeat(${layers.length}, minmax(13.5rem, 1fr))`;
    for (const { run, ps } of found) {
      for (const p of ps) {
        if (many) {
          const h = el('div', 'run-head', run.label);
          h.style.borderColor = run.color;
          grid.append(h);
        }
        const flips = flipsOf(run, p, source);
        const byLayer = new Map();
        for (let i = run.promptStart[p]; i < run.promptStart[p + 1]; i++) byLayer.set(run.answers.layerArr[i], i);
        for (const l of layers) {
          const i = byLayer.get(l);
          grid.append(i === undefined ? el('div', 'layer-card missing', `layer ${l}: no answer`) : layerCard(run, i, flips.get(i), source));
        }
      }
    }
    view.replaceChildren(nav, head, grid);
    renderPromptList();
    document.dispatchEvent(new CustomEvent('icet:prompt', { detail: { id } }));
  }

  // ---- views and routing ---------------------------------------------------------------------------
  const VIEWS = ['table', 'plots', 'answers', 'prompt'];

  function route() {
    const hash = location.hash.slice(1);
    const colon = hash.indexOf(':');
    let view = colon < 0 ? hash : hash.slice(0, colon);
    if (!VIEWS.includes(view)) view = 'table';
    for (const v of VIEWS) $(`view-${v}`).hidden = v !== view;
    for (const a of document.querySelectorAll('#tabs a')) a.classList.toggle('active', a.dataset.view === view);
    if (view === 'prompt') {
      let id = null;
      if (colon >= 0) {
        try {
          id = decodeURIComponent(hash.slice(colon + 1));
        } catch (e) {
          id = null;
        }
      }
      if (id === null) id = promptState.current !== null ? promptState.current : promptState.shown[0];
      if (id !== undefined && id !== null) showPrompt(id);
    }
  }

  async function main() {
    try {
      DATA = await decode();
    } catch (e) {
      $('loading').hidden = true;
      $('load-error').hidden = false;
      $('load-error').textContent = `Cannot read the report's data: ${e.message}`;
      return;
    }
    DATA.runs.forEach(prepare);
    timings.prepared = performance.now();
    renderHeader();
    renderTables();
    renderPlots();
    fillFilterOptions();
    wireAnswerControls();
    fillPromptControls();
    filterPrompts();
    await applyFilters();
    $('loading').hidden = true;
    window.addEventListener('hashchange', route);
    route();
    timings.ready = performance.now();
    document.body.dataset.ready = '1';
    document.dispatchEvent(new CustomEvent('icet:ready'));
  }

  main();
})();
