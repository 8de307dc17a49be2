"""Style and script of the classify report, kept as strings so the package ships them with its code.

The script renders only the current page of cards: 10,000 results are 10,000 small objects in memory,
but the document holds at most one page of cards (and their images) at a time, so filtering, searching
and sorting stay instant. Text from the results (file names, labels) only ever goes in through
``textContent`` and attributes, never parsed as HTML.
"""

CLASSIFY_CSS = """
nav#controls { display: flex; flex-wrap: wrap; gap: 10px 18px; align-items: center; padding-top: 8px;
  padding-bottom: 8px; position: sticky; top: 0; background: var(--bg); border-bottom: 1px solid var(--line);
  z-index: 2; }
nav#controls input[type=search] { width: 16em; }
.pager button { margin: 0 4px; }
#grid { display: grid; grid-template-columns: repeat(auto-fill, minmax(190px, 1fr)); gap: 12px; padding-top: 12px;
  padding-bottom: 12px; }
.card { background: var(--card); border: 1px solid var(--line); border-radius: 6px; padding: 8px; cursor: pointer; }
.card:focus, .card:hover { outline: 2px solid var(--accent); }
.card .thumb { height: 132px; display: flex; align-items: center; justify-content: center; }
.card .thumb img { max-width: 100%; max-height: 132px; }
.card .thumb .missing { color: var(--bad); font-size: 12px; text-align: center; }
.card .name { font-size: 12px; overflow: hidden; text-overflow: ellipsis; white-space: nowrap; margin: 4px 0; }
.card .has-plan { font-size: 11px; color: var(--accent); }
ol.topk { list-style: none; margin: 0; padding: 0; font-size: 12px; }
ol.topk li { display: grid; grid-template-columns: minmax(0, 1fr) 64px 3.4em; gap: 6px; align-items: center; }
ol.topk li:first-child { font-weight: 600; }
ol.topk .lab { overflow: hidden; text-overflow: ellipsis; white-space: nowrap; }
ol.topk .bar { height: 8px; background: var(--line); border-radius: 4px; overflow: hidden; }
ol.topk .bar span { display: block; height: 100%; background: var(--bar); }
ol.topk .val { text-align: right; font-variant-numeric: tabular-nums; }
.margin { font-size: 11px; color: var(--muted); margin-top: 2px; }
.empty { padding: 24px 0; color: var(--muted); }
#errors table { margin-bottom: 24px; }
dialog#detail { max-width: min(960px, 96vw); width: 960px; border: 1px solid var(--line); border-radius: 8px;
  background: var(--card); color: var(--fg); padding: 12px 16px; }
dialog#detail::backdrop { background: rgba(0, 0, 0, 0.45); }
dialog#detail .close { float: right; }
.detail { display: flex; flex-wrap: wrap; gap: 16px; }
.stage { position: relative; width: min(560px, 90vw); line-height: 0; }
.stage img { width: 100%; height: auto; display: block; }
.stage svg { position: absolute; inset: 0; width: 100%; height: 100%; }
.stage .box { fill: none; stroke: #ffd400; stroke-width: 2; }
.stage .window { fill: none; stroke: #00e5ff; stroke-width: 2; stroke-dasharray: 5 3; }
.stage .grid-area { fill: none; stroke: #fff; stroke-width: 1; stroke-dasharray: 2 3; opacity: 0.8; }
.detail .side { flex: 1; min-width: 240px; }
.detail .legend .swatch { display: inline-block; width: 14px; height: 3px; vertical-align: middle; margin-right: 4px; }
.detail dl { display: grid; grid-template-columns: auto 1fr; gap: 2px 10px; font-size: 13px; }
.detail dt { color: var(--muted); }
.detail dd { margin: 0; word-break: break-all; }
"""

CLASSIFY_JS = r"""
"use strict";
(function () {
  const data = JSON.parse(document.getElementById("absclip-data").textContent);
  const items = data.items;
  for (const it of items) it.key = it.path.toLowerCase();
  const state = { label: "", query: "", sort: "file", page: 0, size: data.pageSize };
  const $ = (id) => document.getElementById(id);
  const SVG = "http://www.w3.org/2000/svg";

  function el(tag, props, children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(props || {})) {
      if (v === null || v === undefined) continue;
      if (k === "text") node.textContent = v;
      else if (k === "cls") node.className = v;
      else node.setAttribute(k, v);
    }
    for (const c of children || []) node.appendChild(c);
    return node;
  }
  function svgEl(tag, attrs) {
    const node = document.createElementNS(SVG, tag);
    for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
    return node;
  }
  const fmt = (x) => (x === null || x === undefined ? "–" : x.toFixed(3));
  const pct = (x) => Math.max(0, Math.min(100, 100 * x)).toFixed(1) + "%";

  const sorters = {
    "file": (a, b) => a.i - b.i,
    "confidence-desc": (a, b) => b.score - a.score || a.i - b.i,
    "confidence-asc": (a, b) => a.score - b.score || a.i - b.i,
    "margin-asc": (a, b) => a.margin - b.margin || a.i - b.i,
    "margin-desc": (a, b) => b.margin - a.margin || a.i - b.i,
  };

  function selected() {
    const q = state.query.trim().toLowerCase();
    const out = items.filter((it) => (!state.label || it.label === state.label) && (!q || it.key.includes(q)));
    return out.sort(sorters[state.sort] || sorters.file);
  }

  function topList(topk) {
    return el("ol", { cls: "topk" }, topk.map(([lab, s]) => {
      const bar = el("span", { cls: "bar" }, [el("span", { style: "width:" + pct(s) })]);
      return el("li", { title: lab + ": " + s.toFixed(4) },
        [el("span", { cls: "lab", text: lab }), bar, el("span", { cls: "val", text: fmt(s) })]);
    }));
  }

  function picture(it) {
    if (it.thumb) return el("img", { src: it.thumb, alt: it.name, decoding: "async" });
    return el("div", { cls: "missing", text: "no preview: " + (it.thumbError || "image not found") });
  }

  function card(it) {
    const node = el("article", { cls: "card", tabindex: "0", "data-path": it.path, "data-label": it.label,
      "data-score": String(it.score), "data-margin": String(it.margin) }, [
      el("div", { cls: "thumb" }, [picture(it)]),
      el("div", { cls: "name", title: it.path, text: it.name }),
      topList(it.topk),
      el("div", { cls: "margin", text: "margin " + fmt(it.margin) }),
    ]);
    if (it.plan) node.appendChild(el("div", { cls: "has-plan", text: it.plan.boxes.length + " crops — click to see" }));
    node.addEventListener("click", () => openDetail(it));
    node.addEventListener("keydown", (e) => {
      if (e.key === "Enter" || e.key === " ") { e.preventDefault(); openDetail(it); }
    });
    return node;
  }

  function render() {
    const list = selected();
    const pages = Math.max(1, Math.ceil(list.length / state.size));
    state.page = Math.min(state.page, pages - 1);
    const start = state.page * state.size;
    const shown = list.slice(start, start + state.size);
    const grid = $("grid");
    grid.replaceChildren(...shown.map(card));
    if (!shown.length) grid.appendChild(el("p", { cls: "empty", text: "No image matches." }));
    $("page-info").textContent = "page " + (state.page + 1) + " of " + pages;
    $("prev").disabled = state.page === 0;
    $("next").disabled = state.page >= pages - 1;
    $("count").textContent = list.length ? "showing " + (start + 1) + "–" + (start + shown.length) + " of " +
      list.length + (list.length < items.length ? " (of " + items.length + ")" : "") : "0 of " + items.length;
  }

  function openDetail(it) {
    const body = $("detail-body");
    const stage = el("div", { cls: "stage" }, [it.thumb ? el("img", { src: it.thumb, alt: it.name }) :
      el("p", { cls: "missing", text: "no preview: " + (it.thumbError || "image not found") })]);
    // as wide as fits, but never taller than most of the window (portrait images would push the controls off)
    const shape = it.plan ? [it.plan.width, it.plan.height] : it.size || [1, 1];
    stage.style.width = "min(560px, 90vw, " + (70 * shape[0] / shape[1]).toFixed(2) + "vh)";
    const side = el("div", { cls: "side" }, [el("h2", { text: it.name }), topList(it.topk)]);
    const facts = [["path", it.path], ["margin", fmt(it.margin)]];
    if (it.size) facts.push(["size", it.size[0] + " × " + it.size[1] + " px"]);
    const p = it.plan;
    if (p && it.thumb) {
      const svg = svgEl("svg", { viewBox: "0 0 " + p.width + " " + p.height, preserveAspectRatio: "none",
        id: "overlay" });
      if (p.gridArea) {
        const [x0, y0, x1, y1] = p.gridArea;
        svg.appendChild(svgEl("rect", { class: "grid-area", x: x0, y: y0, width: x1 - x0, height: y1 - y0,
          "vector-effect": "non-scaling-stroke" }));
      }
      const boxes = svgEl("g", { id: "boxes" });
      const windows = svgEl("g", { id: "windows" });
      p.boxes.forEach(([x0, y0, x1, y1], k) => boxes.appendChild(svgEl("rect", { class: "box", "data-k": k,
        x: x0, y: y0, width: x1 - x0, height: y1 - y0, "vector-effect": "non-scaling-stroke" })));
      p.windows.forEach(([x0, y0, x1, y1], k) => windows.appendChild(svgEl("rect", { class: "window", "data-k": k,
        x: x0, y: y0, width: x1 - x0, height: y1 - y0, "vector-effect": "non-scaling-stroke" })));
      svg.append(windows, boxes);
      stage.appendChild(svg);
      const n = Math.max(p.boxes.length, p.windows.length);
      const count = el("input", { type: "range", id: "crop-count", min: "1", max: String(n),
        value: String(Math.min(n, 20)) });
      const countLabel = el("span", { id: "crop-count-label" });
      const showBoxes = el("input", { type: "checkbox", id: "show-boxes", checked: "" });
      const showWindows = el("input", { type: "checkbox", id: "show-windows", checked: "" });
      const update = () => {
        const k = Number(count.value);
        countLabel.textContent = "first " + k + " of " + n + " crops";
        const show = (layer, on) => {
          for (const r of layer.children) r.style.display = on && Number(r.dataset.k) < k ? "" : "none";
        };
        show(boxes, showBoxes.checked);
        show(windows, showWindows.checked);
      };
      for (const c of [count, showBoxes, showWindows]) c.addEventListener("input", update);
      side.append(
        el("p", { cls: "legend" }, [
          el("label", {}, [showBoxes, el("span", { cls: "swatch", style: "background:#ffd400" }),
            document.createTextNode("raw boxes (" + p.boxes.length + ")")]), el("br"),
          el("label", {}, [showWindows, el("span", { cls: "swatch", style: "background:#00e5ff" }),
            document.createTextNode("feature windows (" + p.windows.length + ", on the " + (p.grid || "–") + "×" +
              (p.grid || "–") + " token grid)")]), el("br"),
          el("label", { cls: "crop-count" }, [countLabel, el("br"), count]),
        ]),
        el("p", { cls: "muted", text: "Dotted white: the square the model sees (resize shortest side, centre " +
          "crop); windows are drawn on it. The saliency map is not stored in plans; `absclip visualize` draws it." }));
      facts.push(["sampler", p.sampler], ["seed", String(p.seed)]);
      update();
    } else if (!p) {
      side.appendChild(el("p", { cls: "muted", text: "No crop plan for this image (pass the plans that " +
        "classify saved with --save-plans to see its crops)." }));
    }
    side.appendChild(el("dl", {}, facts.flatMap(([k, v]) => [el("dt", { text: k }), el("dd", { text: v })])));
    if (it.href) side.appendChild(el("p", {}, [el("a", { href: it.href, target: "_blank", rel: "noopener",
      text: "open the original" })]));
    body.replaceChildren(el("div", { cls: "detail" }, [stage, side]));
    const dialog = $("detail");
    if (!dialog.open) dialog.showModal();
  }

  function setup() {
    const n = items.length;
    const parts = [n + " classified", data.errors.length + " unreadable"];
    if (data.withPlans) parts.push(data.withPlans + " with crop plans");
    if (data.unmatchedPlans) parts.push(data.unmatchedPlans + " plans matching no image");
    $("summary").textContent = data.results + ": " + parts.join(" · ");
    const filter = $("label-filter");
    filter.appendChild(el("option", { value: "", text: "all labels (" + n + ")" }));
    for (const [lab, c] of data.labels) filter.appendChild(el("option", { value: lab, text: lab + " (" + c + ")" }));
    const size = $("page-size");
    if (![...size.options].some((o) => Number(o.value || o.text) === state.size))
      size.appendChild(el("option", { text: String(state.size) }));
    size.value = String(state.size);
    filter.addEventListener("change", () => { state.label = filter.value; state.page = 0; render(); });
    $("search").addEventListener("input", (e) => { state.query = e.target.value; state.page = 0; render(); });
    $("sort").addEventListener("change", (e) => { state.sort = e.target.value; state.page = 0; render(); });
    size.addEventListener("change", () => { state.size = Number(size.value); state.page = 0; render(); });
    $("prev").addEventListener("click", () => { state.page -= 1; render(); window.scrollTo(0, 0); });
    $("next").addEventListener("click", () => { state.page += 1; render(); window.scrollTo(0, 0); });
    const errors = $("errors");
    if (data.errors.length) {
      const row = (cells, tag) => el("tr", {}, cells.map((c) => el(tag, { text: c })));
      errors.append(el("h2", { text: "Unreadable images (" + data.errors.length + ")" }),
        el("table", {}, [el("thead", {}, [row(["path", "error"], "th")]),
          el("tbody", {}, data.errors.map((e) => row([e.path, e.error], "td")))]));
    }
    render();
  }
  setup();
})();
"""
