"""The page `graphir view` writes: HTML, CSS and script, inlined into one file (no server, no
network). Kept here as Python strings so they ship with the package like any module.

Placeholders: {{TITLE}}, {{STYLE}}, {{SVG}} (Graphviz's layout), {{DATA}} (the report rows as
JSON: title, summary, color_by, legend, rows), {{SCRIPT}}. The script finds a node's SVG group by
its id `t<tensor id>` (set in the DOT source) and fills the panel's <dd data-field="..."> cells.
"""

PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>graphir view: {{TITLE}}</title>
<style>{{STYLE}}</style>
</head>
<body>
<header>
  <b>graphir view</b>
  <span id="title">{{TITLE}}</span>
  <span class="tools">
    <input id="search" type="search" placeholder="search a node by name (Enter: next match)" size="34"
           autocomplete="off">
    <span id="count"></span>
    <select id="layer" title="show one layer"><option value="">all layers</option></select>
    <button id="zoom-out" title="zoom out">&minus;</button>
    <button id="zoom-in" title="zoom in">+</button>
    <button id="zoom-reset" title="actual size">1:1</button>
  </span>
  <span id="legend"></span>
</header>
<ul id="results" hidden></ul>
<main>
  <div id="graph">{{SVG}}</div>
  <aside id="panel"><p class="hint">Click a node, or search one by name.</p><p id="summary"></p></aside>
</main>
<script type="application/json" id="graph-data">{{DATA}}</script>
<script>{{SCRIPT}}</script>
</body>
</html>
"""

CSS = """
* { box-sizing: border-box; }
body { margin: 0; font: 13px system-ui, sans-serif; display: flex; flex-direction: column; height: 100vh; }
header { padding: 6px 10px; border-bottom: 1px solid #ccc; display: flex; gap: 12px; align-items: center;
         flex-wrap: wrap; background: #f7f7f7; }
header .tools { display: flex; gap: 6px; align-items: center; }
#title { color: #444; }
#legend span.sw { display: inline-block; width: 12px; height: 12px; border: 1px solid #999;
                  vertical-align: middle; margin: 0 3px 0 8px; }
main { flex: 1; display: flex; min-height: 0; }
#graph { flex: 1; overflow: auto; background: #fcfcfc; }
#panel { width: 380px; overflow: auto; border-left: 1px solid #ccc; padding: 8px 10px; }
#panel h2 { font-size: 15px; margin: 4px 0 8px; word-break: break-all; }
#panel h3 { font-size: 13px; margin: 12px 0 4px; color: #333; }
#panel dl { display: grid; grid-template-columns: max-content 1fr; gap: 3px 10px; margin: 0;
            font-family: ui-monospace, monospace; font-size: 12px; }
#panel dt { color: #666; }
#panel dd { margin: 0; word-break: break-all; }
#panel a { color: #0645ad; cursor: pointer; text-decoration: underline; }
.hint { color: #777; }
#results { position: fixed; z-index: 5; max-height: 50vh; overflow: auto;
           margin: 0; padding: 0; list-style: none; background: #fff; border: 1px solid #bbb;
           box-shadow: 0 2px 6px rgba(0,0,0,.2); font-family: ui-monospace, monospace; font-size: 12px; }
#results li { padding: 2px 8px; cursor: pointer; }
#results li:hover { background: #e8f0ff; }
g.node { cursor: pointer; }
g.node.match > polygon, g.node.match > path { stroke: #ff7a00; stroke-width: 3px; }
g.node.selected > polygon, g.node.selected > path { stroke: #0057ff; stroke-width: 5px; }
g.node.dim, g.edge.dim { opacity: 0.12; }
"""

JS = r"""
(function () {
  'use strict';
  const data = JSON.parse(document.getElementById('graph-data').textContent);
  const rows = new Map(data.rows.map(r => [r.id, r]));
  const svg = document.querySelector('#graph svg');
  const box = document.getElementById('graph');
  const panel = document.getElementById('panel');
  const search = document.getElementById('search');
  const results = document.getElementById('results');
  const nodeEl = id => document.getElementById('t' + id);
  const consumers = new Map();
  for (const r of data.rows) for (const s of r.src) if (s !== null) {
    if (!consumers.has(s)) consumers.set(s, []);
    consumers.get(s).push(r.id);
  }
  let matches = [], cursor = -1, selected = null;

  const show = v => (v === null || v === undefined) ? '-' : (typeof v === 'object' ? JSON.stringify(v) : String(v));
  const num = v => {
    if (v === null || v === undefined) return '-';
    v = Number(v);
    return v === 0 ? '0' : (Math.abs(v) < 1e-3 || Math.abs(v) >= 1e6 ? v.toExponential(2) : v.toPrecision(3));
  };
  const si = (v, unit) => {
    for (const [d, p] of [[1e12, 'T'], [1e9, 'G'], [1e6, 'M'], [1e3, 'k']]) if (Math.abs(v) >= d) return (v / d).toPrecision(3) + p + unit;
    return v + unit;
  };
  const label = id => { const r = rows.get(id); return (r ? r.name : data.names[id]) || '#' + id; };

  function link(id) {
    const a = document.createElement('a');
    a.textContent = label(id) + ' (#' + id + ')';
    a.dataset.id = id;
    a.addEventListener('click', () => select(id));
    return a;
  }

  function add(dl, key, title, value) {
    const dt = document.createElement('dt');
    dt.textContent = title;
    const dd = document.createElement('dd');
    dd.dataset.field = key;
    if (value instanceof Node) dd.appendChild(value); else dd.textContent = value;
    dl.append(dt, dd);
  }

  function links(ids) {
    const span = document.createElement('span');
    ids.forEach((id, i) => { if (i) span.append(', '); span.append(id === null ? '-' : link(id)); });
    if (!ids.length) span.textContent = '-';
    return span;
  }

  function section(title) {
    const h = document.createElement('h3');
    h.textContent = title;
    const dl = document.createElement('dl');
    panel.append(h, dl);
    return dl;
  }

  function render(r) {
    panel.replaceChildren();
    const h = document.createElement('h2');
    h.id = 'panel-title';
    h.textContent = (r.name || '#' + r.id);
    panel.append(h);
    const dl = document.createElement('dl');
    panel.append(dl);
    add(dl, 'id', 'id', String(r.id));
    add(dl, 'name', 'name', r.name || '-');
    add(dl, 'op', 'op', r.op);
    add(dl, 'kind', 'kind', r.kind);
    add(dl, 'type', 'type', r.type);
    add(dl, 'ne', 'ne', JSON.stringify(r.ne));
    add(dl, 'nb', 'nb', JSON.stringify(r.nb));
    add(dl, 'params', 'params', Object.keys(r.params).length ? JSON.stringify(r.params) : '-');
    add(dl, 'view', 'view of', r.view_src === null ? '-' : links([r.view_src]));
    add(dl, 'view_offs', 'view offset', r.view_src === null ? '-' : String(r.view_offs));
    add(dl, 'src', 'sources', links(r.src));
    add(dl, 'consumers', 'consumers', links(consumers.get(r.id) || []));
    add(dl, 'backend', 'backend', show(r.backend));
    add(dl, 'split', 'split', show(r.split));
    add(dl, 'offset', 'offset', show(r.offset));
    add(dl, 'flags', 'flags', r.flags.length ? r.flags.join(', ') : '-');
    add(dl, 'layer', 'layer', show(r.layer));
    add(dl, 'flops', 'FLOPs', si(r.flops, ''));
    add(dl, 'bytes', 'bytes', si(r.bytes, 'B'));
    if (r.compare) {
      const c = section('compare');
      add(c, 'cmp-status', 'status', r.compare.status + (r.compare.first ? ' (FIRST beyond its bound)' : ''));
      add(c, 'cmp-nmse', 'NMSE', num(r.compare.nmse));
      add(c, 'cmp-local', 'isolated NMSE', num(r.compare.local_nmse));
      add(c, 'cmp-bound', 'bound', num(r.compare.bound));
      add(c, 'cmp-max', 'max |diff|', num(r.compare.max_abs));
      add(c, 'cmp-naninf', 'NaN / inf', r.compare.nan + ' / ' + r.compare.inf);
    }
    if (r.profile) {
      const p = section('profile');
      add(p, 'prof-us', 'time', r.profile.us.toFixed(1) + ' us');
      add(p, 'prof-share', 'share', (100 * r.profile.share).toFixed(1) + ' %');
      const s = r.profile.us / 1e6;
      add(p, 'prof-gbs', 'GB/s', r.bytes && s ? (r.bytes / s / 1e9).toFixed(2) : '-');
      add(p, 'prof-gflops', 'GFLOP/s', r.flops && s ? (r.flops / s / 1e9).toFixed(2) : '-');
    }
  }

  function select(id) {
    const r = rows.get(id);
    if (!r) return;
    if (selected !== null && nodeEl(selected)) nodeEl(selected).classList.remove('selected');
    selected = id;
    const el = nodeEl(id);
    if (el) {
      el.classList.add('selected');
      el.scrollIntoView({block: 'center', inline: 'center'});
    }
    render(r);
    results.hidden = true;
  }

  svg.addEventListener('click', e => {
    const g = e.target.closest('g.node');
    const m = g && /^t(\d+)(?:_\d+)?$/.exec(g.id);  // t<id>, or t<id>_<k>: a copy of a shared leaf
    if (m) select(Number(m[1]));
  });

  // ---- search ----
  function find(q) {
    document.querySelectorAll('g.node.match').forEach(g => g.classList.remove('match'));
    q = q.trim().toLowerCase();
    if (!q) { matches = []; results.hidden = true; document.getElementById('count').textContent = ''; return; }
    const hits = data.rows.filter(r => r.name && r.name.toLowerCase().includes(q));
    hits.sort((a, b) => (b.name.toLowerCase() === q) - (a.name.toLowerCase() === q) || a.id - b.id);
    matches = hits.map(r => r.id);
    cursor = -1;
    matches.forEach(id => { const el = nodeEl(id); if (el) el.classList.add('match'); });
    document.getElementById('count').textContent = matches.length + ' match' + (matches.length === 1 ? '' : 'es');
    results.replaceChildren(...hits.slice(0, 100).map(r => {
      const li = document.createElement('li');
      li.textContent = r.name + '  ' + r.op + ' ' + JSON.stringify(r.ne);
      li.dataset.id = r.id;
      li.addEventListener('click', () => select(r.id));
      return li;
    }));
    const at = search.getBoundingClientRect();
    results.style.top = at.bottom + 2 + 'px';
    results.style.left = at.left + 'px';
    results.hidden = hits.length === 0;
  }
  search.addEventListener('input', () => find(search.value));
  search.addEventListener('keydown', e => {
    if (e.key === 'Enter' && matches.length) { cursor = (cursor + 1) % matches.length; select(matches[cursor]); }
    if (e.key === 'Escape') results.hidden = true;
  });

  // ---- layer filter ----
  const layers = [...new Set(data.rows.map(r => r.layer).filter(l => l !== null))].sort((a, b) => a - b);
  const layerSel = document.getElementById('layer');
  for (const l of layers) { const o = document.createElement('option'); o.value = l; o.textContent = 'layer ' + l; layerSel.append(o); }
  layerSel.addEventListener('change', () => {
    const l = layerSel.value === '' ? null : Number(layerSel.value);
    const keep = id => l === null || (rows.get(id) && rows.get(id).layer === l);
    document.querySelectorAll('g.node').forEach(g => g.classList.toggle('dim', !keep(parseInt(g.id.slice(1)))));
    document.querySelectorAll('g.edge').forEach(g => {
      const m = /^t(\d+)(?:_\d+)?->t(\d+)$/.exec(g.querySelector('title').textContent);
      g.classList.toggle('dim', !!m && !(keep(Number(m[1])) && keep(Number(m[2]))));
    });
    const first = data.rows.find(r => l !== null && r.layer === l && nodeEl(r.id));
    if (first) nodeEl(first.id).scrollIntoView({block: 'center', inline: 'center'});
  });

  // ---- zoom ----
  const w0 = parseFloat(svg.getAttribute('width')), h0 = parseFloat(svg.getAttribute('height'));
  let zoom = 1;
  function setZoom(z) {
    zoom = Math.min(4, Math.max(0.05, z));
    svg.setAttribute('width', (w0 * zoom) + 'pt');
    svg.setAttribute('height', (h0 * zoom) + 'pt');
  }
  document.getElementById('zoom-in').addEventListener('click', () => setZoom(zoom * 1.25));
  document.getElementById('zoom-out').addEventListener('click', () => setZoom(zoom / 1.25));
  document.getElementById('zoom-reset').addEventListener('click', () => setZoom(1));
  box.addEventListener('wheel', e => { if (e.ctrlKey) { e.preventDefault(); setZoom(zoom * (e.deltaY < 0 ? 1.1 : 1 / 1.1)); } },
                       {passive: false});

  // ---- legend and summary ----
  const legend = document.getElementById('legend');
  const legends = {
    compare: 'colour: green within the bound, red beyond it (thick border: the first), purple NaN/inf',
    profile: 'colour: time of the node (white to red)',
  };
  if (legends[data.color_by]) legend.textContent = legends[data.color_by];
  else for (const [b, c] of Object.entries(data.legend)) {
    const sw = document.createElement('span'); sw.className = 'sw'; sw.style.background = c;
    legend.append(sw, b);
  }
  document.getElementById('summary').textContent = data.summary.plan || '';
  window.graphirView = {select, find, rows};
})();
"""
