"""The leaderboard as one self-contained HTML page (``index.html``).

Everything the page needs is inline: CSS in a ``<style>`` element, a few lines of JavaScript in a
``<script>`` element, and the plots as inline SVG drawn here in Python. No file, font or script is
fetched, so the page opens offline, from an e-mail attachment or a CI artifact alike.

What the page offers over the Markdown:

* sortable tables: click a column header to sort by it (again to reverse); cells sort by their
  numeric value, missing cells last;
* one accuracy-vs-IPC plot per table (dataset, protocol, eval network): one line per method
  configuration, error bars of ± one std, IPC on a log axis when it spans more than one value;
* filters by dataset and by protocol that hide the other sections and cost rows;
* a provenance footer with the versions found in the rows, the generating environment and the
  generation time (the only non-deterministic part of the leaderboard, which is why it is here and
  not in the Markdown).
"""

from __future__ import annotations

import datetime
import html
import math
import platform
from collections.abc import Sequence
from typing import Any

from distillbench.leaderboard.markdown import INTRO, TUNING_INTRO, format_bytes, format_hours
from distillbench.leaderboard.stats import ALPHA, MIN_SEEDS
from distillbench.leaderboard.tables import (
    BIAS_METRICS,
    LONGTAIL_METRICS,
    MARK,
    MISSING,
    Board,
    CostRow,
    Provenance,
    Table,
    TuningRow,
    config_label,
    distinct_reported,
    unequal_budgets,
)

PALETTE = (
    "#1f77b4",
    "#d62728",
    "#2ca02c",
    "#ff7f0e",
    "#9467bd",
    "#8c564b",
    "#e377c2",
    "#17becf",
    "#7f7f7f",
    "#bcbd22",
)
ENVIRONMENT_PACKAGES = ("distillbench", "numpy", "pandas", "pyarrow", "scipy", "PyYAML")

_CSS = """
:root { --fg: #1b1f24; --muted: #57606a; --line: #d0d7de; --head: #f6f8fa; --best: #fff8c5; --accent: #0969da; }
* { box-sizing: border-box; }
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: var(--fg);
       margin: 0 auto; max-width: 1200px; padding: 16px 24px 48px; }
h1 { font-size: 26px; margin: 8px 0 4px; }
h2 { font-size: 19px; margin: 28px 0 8px; border-bottom: 1px solid var(--line); padding-bottom: 4px; }
h3 { font-size: 15px; margin: 18px 0 6px; }
p.muted, .muted { color: var(--muted); }
.filters { position: sticky; top: 0; background: #fff; padding: 8px 0; border-bottom: 1px solid var(--line);
           display: flex; gap: 16px; align-items: center; z-index: 2; flex-wrap: wrap; }
.filters select { font: inherit; padding: 2px 6px; }
.quick { background: #fff1e5; border-left: 4px solid #fb8500; padding: 6px 10px; margin: 8px 0; }
.board { display: grid; grid-template-columns: minmax(0, 1fr); gap: 6px; }
.scroll { overflow-x: auto; }
table { border-collapse: collapse; margin: 6px 0; font-variant-numeric: tabular-nums; }
th, td { border: 1px solid var(--line); padding: 4px 8px; vertical-align: top; }
th { background: var(--head); text-align: left; white-space: nowrap; }
th.sortable { cursor: pointer; user-select: none; }
th.sortable::after { content: " \\2195"; color: var(--muted); font-size: 11px; }
th[aria-sort="ascending"]::after { content: " \\25B2"; color: var(--accent); }
th[aria-sort="descending"]::after { content: " \\25BC"; color: var(--accent); }
td.num { text-align: right; white-space: nowrap; }
td.best { background: var(--best); font-weight: 600; }
.n { color: var(--muted); font-size: 12px; }
.rep { display: block; color: var(--muted); font-size: 12px; font-weight: normal; }
.flag { color: #bc4c00; font-weight: 600; }
.mark { color: var(--accent); font-weight: 700; }
svg.plot { max-width: 100%; height: auto; border: 1px solid var(--line); background: #fff; }
svg.plot text { font: 11px system-ui, sans-serif; fill: var(--fg); }
svg.plot .grid { stroke: #eaeef2; }
svg.plot .axis { stroke: #57606a; }
footer { margin-top: 36px; border-top: 1px solid var(--line); padding-top: 8px; color: var(--muted); font-size: 12px; }
code { background: var(--head); padding: 0 3px; border-radius: 3px; }
.hidden { display: none !important; }
"""

_JS = """
(function () {
  "use strict";
  function key(cell) {
    if (!cell) { return null; }
    var raw = cell.getAttribute("data-sort");
    if (raw === null) { raw = cell.textContent.trim(); }
    if (raw === "") { return null; }
    var num = Number(raw);
    return isNaN(num) ? raw.toLowerCase() : num;
  }
  function sortTable(th) {
    var table = th.closest("table");
    var body = table.tBodies[0];
    var index = Array.prototype.indexOf.call(th.parentNode.children, th);
    var ascending = th.getAttribute("aria-sort") !== "ascending";
    var rows = Array.prototype.slice.call(body.rows);
    rows.sort(function (a, b) {
      var ka = key(a.cells[index]), kb = key(b.cells[index]);
      if (ka === null && kb === null) { return 0; }
      if (ka === null) { return 1; }
      if (kb === null) { return -1; }
      if (typeof ka !== typeof kb) { ka = String(ka); kb = String(kb); }
      var order = ka < kb ? -1 : (ka > kb ? 1 : 0);
      return ascending ? order : -order;
    });
    rows.forEach(function (row) { body.appendChild(row); });
    Array.prototype.forEach.call(th.parentNode.children, function (other) { other.removeAttribute("aria-sort"); });
    th.setAttribute("aria-sort", ascending ? "ascending" : "descending");
  }
  document.querySelectorAll("table.sortable th").forEach(function (th) {
    th.classList.add("sortable");
    th.setAttribute("title", "click to sort");
    th.addEventListener("click", function () { sortTable(th); });
  });
  var dataset = document.getElementById("filter-dataset");
  var protocol = document.getElementById("filter-protocol");
  function applyFilters() {
    var d = dataset.value, p = protocol.value, shown = 0;
    document.querySelectorAll("[data-dataset]").forEach(function (el) {
      var keep = (d === "" || el.getAttribute("data-dataset") === d) &&
                 (p === "" || el.getAttribute("data-protocol") === p);
      el.classList.toggle("hidden", !keep);
      if (keep && el.classList.contains("board")) { shown += 1; }
    });
    var count = document.getElementById("filter-count");
    if (count) { count.textContent = shown + " table(s) shown"; }
  }
  if (dataset && protocol) {
    dataset.addEventListener("change", applyFilters);
    protocol.addEventListener("change", applyFilters);
    applyFilters();
  }
})();
"""


def render_html(board: Board, *, generated_at: str | None = None) -> str:
    """The leaderboard as one self-contained HTML page; ``generated_at`` is the time shown (default: now, UTC)."""
    tables, failures, filters, skipped_files = board.tables, board.failures, board.filters, board.skipped_files
    n_rows, n_ok, cost, provenance, tuning = board.n_rows, board.n_ok, board.cost, board.provenance, board.tuning
    generated_at = generated_at or datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
    datasets = sorted({t.dataset for t in tables} | {c.dataset for c in cost})
    protocols = sorted({t.protocol_id for t in tables} | {c.protocol_id for c in cost})
    out: list[str] = [
        "<!DOCTYPE html>",
        '<html lang="en">',
        "<head>",
        '<meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        "<title>distillbench leaderboard</title>",
        f"<style>{_CSS}</style>",
        "</head>",
        "<body>",
        "<h1>Leaderboard</h1>",
        f'<p class="muted">Rows read: {n_rows}; in the tables: {n_ok}; failed: {len(failures)}.',
    ]
    if filters:
        out.append(
            " Built with filters: "
            + ", ".join(f"{_e(k)}=<code>{_e(v)}</code>" for k, v in sorted(filters.items()))
            + "."
        )
    if skipped_files:
        names = ", ".join(f"<code>{_e(n)}</code>" for n in sorted(skipped_files))
        out.append(f" Skipped {len(skipped_files)} unreadable or foreign file(s): {names}.")
    out.append("</p>")
    out.append(
        '<div class="filters"><label>Dataset <select id="filter-dataset"><option value="">all</option>'
        + "".join(f'<option value="{_e(d)}">{_e(d)}</option>' for d in datasets)
        + '</select></label><label>Protocol <select id="filter-protocol"><option value="">all</option>'
        + "".join(f'<option value="{_e(p)}">{_e(p)}</option>' for p in protocols)
        + '</select></label><span id="filter-count" class="muted"></span></div>'
    )
    if not tables:
        out.append("<p>No results" + (" match the filters." if filters else " to show.") + "</p>")
    else:
        out.append(f'<p class="muted">{_inline_md(INTRO)}</p>')
    for index, table in enumerate(tables):
        out += _table_section(table, index)
    if tuning:
        out += _tuning_section(tuning)
    if cost:
        out += _cost_section(cost)
    numbers = distinct_reported(tables)
    if numbers:
        sources = sorted({n.source.key: n.source for n in numbers}.values(), key=lambda s: s.key)
        out.append("<h2>Reported numbers: sources</h2><ul>")
        out += [f"<li><b>[{_e(s.key)}]</b> {_e(s.citation)}</li>" for s in sources]
        out.append("</ul>")
    if failures:
        out.append(f"<h2>Failures ({len(failures)})</h2><ul>")
        for f in failures:
            label = config_label(f["method"], f["weighting"], f["labels"])
            where = f"{f['dataset']}, {label}, ipc {f['ipc']}, seed {f['seed']}, {f['protocol']}"
            out.append(
                f'<li data-dataset="{_e(f["dataset"])}" data-protocol="{_e(f["protocol"])}"><b>{_e(f["status"])}</b> '
                f"{_e(where)}: <code>{_e(f['error'])}</code></li>"
            )
        out.append("</ul>")
    out += _footer(provenance, generated_at)
    out += [f"<script>{_JS}</script>", "</body>", "</html>", ""]
    return "\n".join(out)


# ------------------------------------------------------------------------------------- sections
def _table_section(table: Table, index: int) -> list[str]:
    attrs = f'data-dataset="{_e(table.dataset)}" data-protocol="{_e(table.protocol_id)}"'
    out = [f'<section class="board" id="table-{index}" {attrs}>', f"<h2>{_e(table.title)}</h2>"]
    if table.quick:
        out.append(
            f'<div class="quick"><b>Quick protocol:</b> <code>{_e(table.protocol)}</code> is a short demo/CI '
            "recipe; these numbers are not comparable to papers.</div>"
        )
    out.append(plot_svg(table))
    head = "".join(f"<th>IPC {ipc}</th>" for ipc in table.ipcs)
    out.append(f'<div class="scroll"><table class="sortable main"><thead><tr><th>Method</th>{head}</tr></thead><tbody>')
    for row in table.rows:
        tds = [f"<td>{_e(row.label)}</td>"]
        for ipc in table.ipcs:
            cell = row.cells.get(ipc)
            if cell is None:
                tds.append(f'<td class="num" data-sort="">{MISSING}</td>')
                continue
            classes = "num best" if cell.best else "num"
            title = f"p = {cell.p_value:.3g} vs the best (Welch, seed means)" if cell.p_value is not None else ""
            text = f"{cell.mean:.2f} \u00b1 {cell.std:.2f}"
            if cell.not_worse:
                text += f' <span class="mark">{MARK}</span>'
            text += f' <span class="n">(n={cell.n}, seeds={cell.n_seeds})</span>'
            if cell.reported is not None:
                rep = cell.reported
                flag = f' <span class="flag">{_e(rep.flag)}</span>' if rep.flag else ""
                text += (
                    f'<span class="rep">reported {_e(rep.format_value())}{flag} [{_e(rep.source.key)}], '
                    f"diff {cell.mean - rep.value:+.2f}</span>"
                )
            tds.append(f'<td class="{classes}" data-sort="{cell.mean:.6f}" title="{_e(title)}">{text}</td>')
        out.append("<tr>" + "".join(tds) + "</tr>")
    out.append("</tbody></table></div>")
    if table.compared:
        legend = (
            f"{MARK} not significantly worse than the best of its IPC column: two-sided Welch t-test over "
            f"seed means, p \u2265 {ALPHA}."
        )
        if table.untested:
            notes = "; ".join(f"IPC {ipc}: {note}" for ipc, note in sorted(table.untested.items()))
            legend += f" No test possible (a test needs {MIN_SEEDS} seeds on both sides), so no mark: {notes}."
        out.append(f'<p class="muted">{_e(legend)}</p>')
    for kind, metrics in (("Bias", BIAS_METRICS), ("Long tail", LONGTAIL_METRICS)):
        if table.has_metrics(metrics):
            out += _metric_table(table, kind, metrics)
    out.append("</section>")
    return out


def _metric_table(table: Table, kind: str, metrics: Sequence[tuple[str, str]]) -> list[str]:
    if kind == "Long tail" and any("label_tau" in c.extra for r in table.rows for c in r.cells.values()):
        metrics = (*metrics, ("label_tau", "\u03c4 (adsa)"))  # the tau ADSA chose, beside the shots it moves
    head = "".join(f"<th>{_e(title)}</th>" for _, title in metrics)
    out = [
        f"<h3>{_e(kind)}: {_e(table.dataset)}, {_e(table.protocol_id)}, {_e(table.eval_network)}</h3>",
        '<p class="muted">Percent, mean \u00b1 std over trials (seeds); n = trials. Overall = the main cell.</p>',
        f'<div class="scroll"><table class="sortable {"bias" if kind == "Bias" else "longtail"}">'
        f"<thead><tr><th>Method</th><th>IPC</th><th>Overall</th>{head}</tr></thead><tbody>",
    ]
    for row in table.rows:
        for ipc, cell in row.cells.items():
            if not any(name in cell.extra for name, _ in metrics):
                continue
            tds = [
                f"<td>{_e(row.label)}</td>",
                f'<td class="num">{ipc}</td>',
                f'<td class="num" data-sort="{cell.mean:.6f}">{cell.mean:.2f} \u00b1 {cell.std:.2f}</td>',
            ]
            for name, _ in metrics:
                summary = cell.extra.get(name)
                if summary is None:
                    tds.append('<td class="num" data-sort="">\u2013</td>')
                else:
                    tds.append(
                        f'<td class="num" data-sort="{summary.mean:.6f}">{summary.mean:.2f} \u00b1 '
                        f'{summary.std:.2f} <span class="n">(n={summary.n})</span></td>'
                    )
            out.append("<tr>" + "".join(tds) + "</tr>")
    out.append("</tbody></table></div>")
    return out


def _tuning_section(tuning: Sequence[TuningRow]) -> list[str]:
    out = [
        "<h2>Tuning</h2>",
        f'<p class="muted">{_inline_md(TUNING_INTRO)}</p>',
        '<div class="scroll"><table class="sortable tuning"><thead><tr><th>Dataset</th><th>Protocol</th>'
        "<th>Method</th><th>IPC</th><th>Budget</th><th>Spent</th><th>Search trials</th><th>Stopped early</th>"
        "<th>Failed</th><th>Chosen</th><th>Val</th><th>Search h</th><th>Final h</th></tr></thead><tbody>",
    ]
    for t in tuning:
        spent = MISSING if t.spent is None else f"{t.spent:g}"
        val = MISSING if t.objective is None else f"{t.objective:.2f}"
        out.append(
            f'<tr data-dataset="{_e(t.dataset)}" data-protocol="{_e(t.protocol_id)}">'
            f"<td>{_e(t.dataset)}</td><td>{_e(t.protocol_id)}</td><td>{_e(t.label)}</td>"
            f'<td class="num">{t.ipc}</td><td>{_e(t.budget)}</td><td class="num">{spent}</td>'
            f'<td class="num">{t.trials}</td><td class="num">{t.stopped}</td><td class="num">{t.failed}</td>'
            f'<td><code>{_e(t.chosen or "(search not finished)")}</code></td><td class="num">{val}</td>'
            f'<td class="num">{format_hours(t.search_hours)}</td>'
            f'<td class="num">{format_hours(t.final_hours)}</td></tr>'
        )
    out.append("</tbody></table></div>")
    out += [f"<p><b>Unequal budgets:</b> {_e(line)}.</p>" for line in unequal_budgets(tuning)]
    return out


def _cost_section(cost: Sequence[CostRow]) -> list[str]:
    out = [
        "<h2>Cost</h2>",
        '<p class="muted">Distillation hours count each trial once (0 when the set was reused); evaluation hours '
        "sum every evaluation network; set size = bytes of the distilled set's tensors.</p>",
        '<div class="scroll"><table class="sortable cost"><thead><tr><th>Dataset</th><th>Protocol</th>'
        "<th>Method</th><th>IPC</th><th>Device</th><th>Trials</th><th>Distillation h</th><th>Evaluation h</th>"
        "<th>Set size</th></tr></thead><tbody>",
    ]
    for c in cost:
        size_key = str(c.set_bytes[-1]) if c.set_bytes else ""
        out.append(
            f'<tr data-dataset="{_e(c.dataset)}" data-protocol="{_e(c.protocol_id)}">'
            f"<td>{_e(c.dataset)}</td><td>{_e(c.protocol_id)}</td><td>{_e(c.label)}</td>"
            f'<td class="num">{c.ipc}</td><td>{_e(c.device)}</td><td class="num">{c.trials}</td>'
            f'<td class="num" data-sort="{c.distill_hours:.9f}">{format_hours(c.distill_hours)}</td>'
            f'<td class="num" data-sort="{c.eval_hours:.9f}">{format_hours(c.eval_hours)}</td>'
            f'<td class="num" data-sort="{size_key}">{_e(format_bytes(c.set_bytes))}</td></tr>'
        )
    out.append("</tbody></table></div>")
    return out


def _footer(provenance: Provenance | None, generated_at: str) -> list[str]:
    out = ["<footer>", "<b>Provenance.</b> Found in the rows: "]
    if provenance is not None:
        parts = [f"{_e(label)} {', '.join(_e(v) for v in values)}" for label, values in provenance.versions]
        protocols = ", ".join(_e(p) + (" (quick)" if quick else "") for p, quick in provenance.protocols)
        out.append("; ".join(parts) + f"; protocols {protocols or 'none'}.")
    env = "; ".join(f"{_e(name)} {_e(version)}" for name, version in environment())
    out.append(f"<br>Generated at {_e(generated_at)} by: {env}.")
    out.append("<br>Generated from the results store by distillbench.leaderboard; do not edit by hand.")
    out.append("</footer>")
    return out


def environment() -> list[tuple[str, str]]:
    """Versions of Python and of the packages of the generating environment (``not installed`` if absent)."""
    from importlib.metadata import PackageNotFoundError, version

    found = [("Python", platform.python_version()), ("platform", platform.platform(terse=True))]
    for name in ENVIRONMENT_PACKAGES:
        try:
            found.append((name, version(name)))
        except PackageNotFoundError:
            found.append((name, "not installed"))
    return found


# ------------------------------------------------------------------------------------- the plot
def plot_svg(table: Table, *, width: int = 720, height: int = 300) -> str:
    """Accuracy vs IPC of one table as inline SVG: a line per configuration, ± std error bars.

    Args:
        table: the table to draw.
        width: width of the SVG in pixels (the legend takes the right part).
        height: height in pixels.

    Returns:
        An ``<svg>`` element.
    """
    left, right, top, bottom = 52, 220, 16, 40
    plot_w, plot_h = width - left - right, height - top - bottom
    ipcs = list(table.ipcs)
    log = len(ipcs) > 1 and min(ipcs) > 0
    xs_raw = [math.log10(i) if log else float(i) for i in ipcs]
    x_lo, x_hi = (min(xs_raw), max(xs_raw)) if len(ipcs) > 1 else (xs_raw[0] - 1, xs_raw[0] + 1)

    def x_of(ipc: int) -> float:
        raw = math.log10(ipc) if log else float(ipc)
        return left + plot_w * (0.06 + 0.88 * (raw - x_lo) / (x_hi - x_lo or 1.0))

    cells = [cell for row in table.rows for cell in row.cells.values()]
    lo = min((c.mean - c.std for c in cells), default=0.0)
    hi = max((c.mean + c.std for c in cells), default=100.0)
    y_lo, y_hi, step = _nice_range(max(0.0, lo), min(100.0, hi))

    def y_of(value: float) -> float:
        return top + plot_h * (1.0 - (value - y_lo) / (y_hi - y_lo))

    title = f"Accuracy vs IPC: {table.dataset}, {table.protocol_id}, {table.eval_network}"
    out = [
        f'<svg class="plot" role="img" aria-label="{_e(title)}" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}">',
        f"<title>{_e(title)}</title>",
    ]
    tick = y_lo
    while tick <= y_hi + 1e-9:
        y = y_of(tick)
        out.append(f'<line class="grid" x1="{left}" x2="{left + plot_w}" y1="{y:.1f}" y2="{y:.1f}"/>')
        out.append(f'<text x="{left - 6}" y="{y + 4:.1f}" text-anchor="end">{tick:g}</text>')
        tick += step
    out.append(f'<line class="axis" x1="{left}" x2="{left}" y1="{top}" y2="{top + plot_h}"/>')
    out.append(f'<line class="axis" x1="{left}" x2="{left + plot_w}" y1="{top + plot_h}" y2="{top + plot_h}"/>')
    for ipc in ipcs:
        x = x_of(ipc)
        out.append(f'<line class="axis" x1="{x:.1f}" x2="{x:.1f}" y1="{top + plot_h}" y2="{top + plot_h + 4}"/>')
        out.append(f'<text x="{x:.1f}" y="{top + plot_h + 16}" text-anchor="middle">{ipc}</text>')
    axis = "IPC (log scale)" if log else "IPC"
    out.append(f'<text x="{left + plot_w / 2:.1f}" y="{height - 6}" text-anchor="middle">{axis}</text>')
    out.append(
        f'<text x="14" y="{top + plot_h / 2:.1f}" text-anchor="middle" '
        f'transform="rotate(-90 14 {top + plot_h / 2:.1f})">accuracy (%)</text>'
    )
    for index, row in enumerate(table.rows):
        color = PALETTE[index % len(PALETTE)]
        points = [(x_of(ipc), cell) for ipc, cell in sorted(row.cells.items())]
        out.append(f'<g class="series" data-label="{_e(row.label)}">')
        if len(points) > 1:
            path = " ".join(f"{x:.1f},{y_of(c.mean):.1f}" for x, c in points)
            out.append(f'<polyline fill="none" stroke="{color}" stroke-width="2" points="{path}"/>')
        for (x, cell), ipc in zip(points, sorted(row.cells), strict=True):
            y1, y2 = y_of(min(y_hi, cell.mean + cell.std)), y_of(max(y_lo, cell.mean - cell.std))
            out.append(
                f'<line stroke="{color}" stroke-width="1.5" x1="{x:.1f}" x2="{x:.1f}" y1="{y1:.1f}" y2="{y2:.1f}"/>'
            )
            for y in (y1, y2):
                out.append(
                    f'<line stroke="{color}" stroke-width="1.5" x1="{x - 4:.1f}" x2="{x + 4:.1f}" '
                    f'y1="{y:.1f}" y2="{y:.1f}"/>'
                )
            tip = f"{row.label}, IPC {ipc}: {cell.mean:.2f} \u00b1 {cell.std:.2f} (n={cell.n}, seeds={cell.n_seeds})"
            out.append(
                f'<circle cx="{x:.1f}" cy="{y_of(cell.mean):.1f}" r="3.5" fill="{color}">'
                f"<title>{_e(tip)}</title></circle>"
            )
        out.append("</g>")
        ly = top + 8 + 16 * index
        lx = left + plot_w + 16
        out.append(f'<line stroke="{color}" stroke-width="3" x1="{lx}" x2="{lx + 18}" y1="{ly}" y2="{ly}"/>')
        out.append(f'<text x="{lx + 24}" y="{ly + 4}">{_e(_short(row.label))}</text>')
    out.append("</svg>")
    return "".join(out)


def _nice_range(lo: float, hi: float) -> tuple[float, float, float]:
    """Axis limits on a round step (1, 2, 5, 10, ... percent) covering ``[lo, hi]``."""
    if hi - lo < 1e-9:
        lo, hi = lo - 1.0, hi + 1.0
    span = hi - lo
    step = 10 ** math.floor(math.log10(span / 5))
    for factor in (1, 2, 5, 10):
        if span / (step * factor) <= 6:
            step *= factor
            break
    return math.floor(lo / step) * step, math.ceil(hi / step) * step, float(step)


def _short(label: str, limit: int = 30) -> str:
    return label if len(label) <= limit else label[: limit - 1] + "\u2026"


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _inline_md(text: str) -> str:
    """The few Markdown constructs of the intro (``**bold**``, backticks) as HTML."""
    escaped = _e(text)
    parts = escaped.split("**")
    escaped = "".join(f"<b>{p}</b>" if i % 2 else p for i, p in enumerate(parts))
    parts = escaped.split("`")
    return "".join(f"<code>{p}</code>" if i % 2 else p for i, p in enumerate(parts))
