"""Style and script of the eval report: sortable tables and the class filter; the rest is static HTML."""

EVAL_CSS = """
section.dataset { border-top: 1px solid var(--line); margin-top: 16px; }
h3 { font-size: 15px; margin: 20px 0 8px; }
h4 { font-size: 13px; margin: 8px 0 4px; }
.scroll { max-height: 520px; overflow: auto; display: inline-block; border: 1px solid var(--line); }
.confusion-grid { display: flex; flex-wrap: wrap; gap: 16px; }
.cases { display: grid; grid-template-columns: repeat(auto-fill, minmax(170px, 1fr)); gap: 10px; }
.case { margin: 0; background: var(--card); border: 1px solid var(--line); border-radius: 6px; padding: 6px; }
.case-stage { position: relative; line-height: 0; }
.case-stage img { width: 100%; height: auto; }
.case-stage svg { position: absolute; inset: 0; width: 100%; height: 100%; }
.case-stage .box { fill: none; stroke: #ffd400; stroke-width: 1.5; }
.case-stage .window { fill: none; stroke: #00e5ff; stroke-width: 1.5; stroke-dasharray: 4 2; }
.case-stage .grid-area { fill: none; stroke: #fff; stroke-width: 1; stroke-dasharray: 2 3; }
.case .name { font-size: 12px; overflow: hidden; text-overflow: ellipsis; white-space: nowrap; }
.case ul { margin: 2px 0 0; padding-left: 16px; font-size: 12px; }
.case .right { color: var(--good); }
.case .wrong { color: var(--bad); }
.missing { color: var(--bad); font-size: 12px; line-height: 1.3; }
tr.hidden { display: none; }
"""

EVAL_JS = r"""
"use strict";
(function () {
  // click a header to sort its table (again to reverse); numbers sort by their data-sort value
  for (const th of document.querySelectorAll("th.sortable")) {
    th.addEventListener("click", () => {
      const table = th.closest("table");
      const body = table.tBodies[0];
      const col = [...th.parentNode.children].indexOf(th);
      const numeric = th.dataset.type === "num";
      const dir = th.dataset.dir === "asc" ? -1 : 1;
      for (const other of th.parentNode.children) delete other.dataset.dir;
      th.dataset.dir = dir === 1 ? "asc" : "desc";
      const key = (row) => {
        const cell = row.children[col];
        const raw = cell.dataset.sort !== undefined ? cell.dataset.sort : cell.textContent;
        return numeric ? Number(raw) : raw.toLowerCase();
      };
      const rows = [...body.rows].sort((a, b) => {
        const x = key(a), y = key(b);
        return (x < y ? -1 : x > y ? 1 : 0) * dir;
      });
      body.replaceChildren(...rows);
    });
  }
  for (const input of document.querySelectorAll("input.class-filter")) {
    const table = input.closest("section").querySelector("table.per-class");
    input.addEventListener("input", () => {
      const q = input.value.trim().toLowerCase();
      for (const row of table.tBodies[0].rows)
        row.classList.toggle("hidden", q !== "" && !row.dataset.class.toLowerCase().includes(q));
    });
  }
})();
"""
