"""Markdown and CSV rendering of the leaderboard tables (:mod:`distillbench.leaderboard.tables`).

The leaderboard is generated, never edited by hand: for the same rows the Markdown and the CSV are
byte-identical whatever the order of the row files or of the results directories, and they carry no
timestamps or facts about the generating machine, so CI can regenerate them and compare them with the
committed files. Only ``index.html`` states when and where it was generated.

Layout of the Markdown:

* one table per (dataset, protocol ``name@version``, evaluation network), because rows are only
  comparable within one protocol version and one evaluation network;
* one table row per method configuration, labelled ``<method>[ + <weighting>][ / labels=<labels>]``
  (the weighting is omitted when it is ``none``, the label stage when it is ``native``);
* one column per IPC, in numeric order;
* each cell is the test accuracy in percent, mean ± std (ddof=0) pooled over every evaluation model of
  every seed, with ``n`` (accuracies pooled) and the number of seeds; the best mean of each IPC column,
  compared at the shown precision, is bold (ties: all bold); a missing cell is an en dash;
* a cell marked † is not significantly worse than the best of its column: a two-sided Welch t-test over
  seed means gives p >= 0.05 (see :mod:`distillbench.leaderboard.stats`); cells that cannot be tested
  (fewer than two seeds on either side) are named under the table and never marked;
* a cell with a published number (``leaderboard/reported.yaml``, matched by the rule in
  :mod:`distillbench.leaderboard.reported`) shows it, its source and the difference reproduced - reported;
* a table whose protocol is registered as ``quick`` carries a note that its numbers are a short
  demo/CI recipe, not comparable to papers (a protocol unknown to the registry counts as not quick);
* bias tables (aligned / conflicting / worst-group accuracy) and long-tail tables (many / medium / few)
  follow a table whose rows carry those metrics;
* a cost section (distillation and evaluation hours by device, distilled-set bytes), the sources of
  the reported numbers shown, the failures (rows whose status is not ``ok``, left out of the tables)
  and a provenance section (versions, git shas and protocol ids found in the rows).

The CSV ``leaderboard.csv`` holds the same cells, one line per (dataset, protocol, protocol_version,
eval_network, method, weighting, labels, ipc), with the bias, long-tail, cost, test and reported
columns. ``index.html`` (:mod:`distillbench.leaderboard.html`) is one self-contained page with
sortable tables, accuracy-vs-IPC plots and filters.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Mapping, Sequence
from typing import Any

from distillbench.harness.registry import natural_key
from distillbench.leaderboard.reported import ReportedNumber
from distillbench.leaderboard.stats import ALPHA, MIN_SEEDS, Summary
from distillbench.leaderboard.tables import (
    BIAS_METRICS,
    LONGTAIL_METRICS,
    MARK,
    MISSING,
    CostRow,
    Provenance,
    Table,
    TuningRow,
    _config_sort_key,
    config_label,
    distinct_reported,
    unequal_budgets,
)

CSV_COLUMNS = (
    "dataset",
    "protocol",
    "protocol_version",
    "eval_network",
    "quick",
    "method",
    "weighting",
    "labels",
    "ipc",
    "mean",
    "std",
    "n",
    "n_seeds",
    "best",
    "p_vs_best",
    "not_significantly_worse",
    *(name for name, _ in BIAS_METRICS + LONGTAIL_METRICS),
    "label_tau",
    "distill_hours",
    "eval_hours",
    "set_bytes_mean",
    "reported",
    "reported_std",
    "reported_diff",
    "reported_source",
    "reported_verification",
)


# ------------------------------------------------------------------------------------- rendering
def render_markdown(
    tables: Sequence[Table],
    *,
    failures: Sequence[Mapping[str, Any]] = (),
    n_rows: int = 0,
    n_ok: int = 0,
    skipped_files: Sequence[str] = (),
    filters: Mapping[str, str] | None = None,
    cost: Sequence[CostRow] = (),
    provenance: Provenance | None = None,
    tuning: Sequence[TuningRow] = (),
) -> str:
    """The leaderboard as Markdown (deterministic; no timestamps, nothing about the generating machine).

    Args:
        tables: tables from :func:`build_tables`.
        failures: failure dicts as in :class:`LeaderboardResult`, already sorted.
        n_rows: rows read, for the summary line.
        n_ok: rows in the tables, for the summary line.
        skipped_files: names of skipped unreadable files.
        filters: filters applied, shown in the summary.
        cost: rows of the cost table, from :func:`build_cost`.
        provenance: versions and protocols of the rows, from :func:`build_provenance`.
        tuning: the searches of tuned blocks, from :func:`build_tuning`.

    Returns:
        The Markdown text, ending with a newline.
    """
    lines = [
        "# Leaderboard",
        "",
        "<!-- Generated by distillbench.leaderboard.build from the results store; do not edit by hand. -->",
        "",
        f"Rows read: {n_rows}; in the tables: {n_ok}; failed: {len(failures)}.",
    ]
    if filters:
        lines.append("Filters: " + ", ".join(f"{k}={_code(v)}" for k, v in sorted(filters.items())) + ".")
    if skipped_files:
        names = ", ".join(_code(name) for name in sorted(skipped_files))
        lines.append(f"Skipped {len(skipped_files)} unreadable or foreign file(s): {names}.")
    lines.append("")

    if not tables:
        lines += ["No results" + (" match the filters." if filters else " to show."), ""]
    else:
        lines += [f"{INTRO}", ""]
        for table in tables:
            lines += _render_table(table)
    if tuning:
        lines += _render_tuning(tuning)
    if cost:
        lines += _render_cost(cost)
    numbers = distinct_reported(tables)
    if numbers:
        lines += _render_sources(numbers)
    if failures:
        lines += [f"## Failures ({len(failures)})", ""]
        lines += [_render_failure(f) for f in failures]
        lines.append("")
    if provenance is not None and (tables or failures):
        lines += _render_provenance(provenance)
    return "\n".join(lines).rstrip("\n") + "\n"


INTRO = (
    "Cells: test accuracy in percent, mean \u00b1 std (ddof=0) pooled over every evaluation model of every "
    "seed; n = accuracies pooled, seeds = distinct seeds. The best mean of each IPC column is in **bold** "
    f"(ties: all bold); {MARK} = not significantly worse than the best of its column (two-sided Welch t-test "
    f"over seed means, p \u2265 {ALPHA}); {MISSING} = no result. Row names: `method + weighting / "
    "labels=<label stage>`, where weighting `none` and labels `native` are omitted. Numbers are comparable "
    "only within one table (same dataset, protocol version and eval network). Reported numbers come from "
    "`leaderboard/reported.yaml` and appear only in tables of the protocol they were measured under (never in "
    "quick protocols); diff = reproduced \u2212 reported, in points; UNVERIFIED and secondary numbers are not "
    "confirmed from a primary source."
)


def render_csv(tables: Sequence[Table]) -> str:
    """The cells of ``tables`` as CSV, one line per configuration and IPC (accuracies in percent).

    Args:
        tables: tables from :func:`build_tables`.

    Returns:
        CSV text with the header :data:`CSV_COLUMNS`; empty fields where a value does not apply.
    """
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for table in tables:
        for row in table.rows:
            for ipc, cell in row.cells.items():
                number = cell.reported
                tested = cell.p_value is not None
                writer.writerow(
                    [
                        table.dataset,
                        table.protocol,
                        table.protocol_version,
                        table.eval_network,
                        str(table.quick).lower(),
                        row.method,
                        row.weighting,
                        row.labels,
                        ipc,
                        f"{cell.mean:.4f}",
                        f"{cell.std:.4f}",
                        cell.n,
                        cell.n_seeds,
                        str(cell.best).lower(),
                        f"{cell.p_value:.6g}" if tested else "",
                        str(cell.not_worse).lower() if tested else "",
                        *(_csv_float(cell.extra[name].mean) if name in cell.extra else "" for name, _ in BIAS_METRICS),
                        *(
                            _csv_float(cell.extra[name].mean) if name in cell.extra else ""
                            for name, _ in LONGTAIL_METRICS
                        ),
                        _csv_float(cell.extra["label_tau"].mean) if "label_tau" in cell.extra else "",
                        f"{cell.distill_seconds / 3600.0:.6f}",
                        f"{cell.eval_seconds / 3600.0:.6f}",
                        "" if cell.set_bytes_mean is None else f"{cell.set_bytes_mean:.0f}",
                        "" if number is None else _csv_float(number.value),
                        "" if number is None or number.std is None else _csv_float(number.std),
                        "" if cell.diff is None else _csv_float(cell.diff),
                        "" if number is None else number.source.key,
                        "" if number is None else number.verification,
                    ]
                )
    return buffer.getvalue()


def _csv_float(value: float) -> str:
    return f"{value:.4f}"


def _render_table(table: Table) -> list[str]:
    lines = [f"## {_escape_text(table.title)}", ""]
    if table.quick:
        lines += [
            f"> **Quick protocol:** {_code(table.protocol)} is a short demo/CI recipe; these numbers are not "
            "comparable to papers.",
            "",
        ]
    lines.append("| Method | " + " | ".join(f"IPC {ipc}" for ipc in table.ipcs) + " |")
    lines.append("|---|" + "---:|" * len(table.ipcs))
    for row in table.rows:
        cells = [row.cells[ipc].format() if ipc in row.cells else MISSING for ipc in table.ipcs]
        lines.append(f"| {_escape(row.label)} | " + " | ".join(cells) + " |")
    lines.append("")
    if table.compared:
        legend = (
            f"{MARK} not significantly worse than the best of its IPC column: two-sided Welch t-test over seed "
            f"means (the mean of each seed's evaluation models), p \u2265 {ALPHA}."
        )
        if table.untested:
            notes = "; ".join(f"IPC {ipc}: {_escape_text(note)}" for ipc, note in sorted(table.untested.items()))
            legend += f" No test possible (a test needs {MIN_SEEDS} seeds on both sides), so no mark: {notes}."
        lines += [legend, ""]
    for kind, metrics in (("Bias", BIAS_METRICS), ("Long tail", LONGTAIL_METRICS)):
        if table.has_metrics(metrics):
            lines += _render_metric_table(table, kind, metrics)
    return lines


def _render_metric_table(table: Table, kind: str, metrics: Sequence[tuple[str, str]]) -> list[str]:
    what = (
        "accuracy on bias-aligned and bias-conflicting test samples, and the worst (class, bias) group"
        if kind == "Bias"
        else "accuracy on many-, medium- and few-shot classes of the long-tailed training set"
    )
    lines = [
        f"### {kind}: {_escape_text(f'{table.dataset}, {table.protocol_id}, {table.eval_network}')}",
        "",
        f"{what.capitalize()}; percent, mean \u00b1 std (ddof=0) over trials (seeds), each the mean of its "
        "evaluation models; n = trials. Overall = the main table's cell.",
        "",
    ]
    # The tau ADSA chose (label stage adsa) sits beside the shot accuracies it is meant to move.
    with_tau = kind == "Long tail" and any("label_tau" in c.extra for r in table.rows for c in r.cells.values())
    titles = [title for _, title in metrics] + (["\u03c4 (adsa)"] if with_tau else [])
    lines += ["| Method | IPC | Overall | " + " | ".join(titles) + " |", "|---|---:|---:|" + "---:|" * len(titles)]
    for row in table.rows:
        for ipc, cell in row.cells.items():
            if not any(name in cell.extra for name, _ in metrics):
                continue
            values = [_format_summary(cell.extra.get(name)) for name, _ in metrics]
            if with_tau:
                tau = cell.extra.get("label_tau")
                values.append(MISSING if tau is None else f"{tau.mean:.2f}")
            overall = f"{cell.mean:.2f} \u00b1 {cell.std:.2f}"
            lines.append(f"| {_escape(row.label)} | {ipc} | {overall} | " + " | ".join(values) + " |")
    lines.append("")
    return lines


def _format_summary(summary: Summary | None) -> str:
    if summary is None:
        return MISSING
    return f"{summary.mean:.2f} \u00b1 {summary.std:.2f} (n={summary.n})"


def format_hours(hours: float) -> str:
    """Hours with four decimals (0.0001 h = 0.36 s)."""
    return f"{hours:.4f}"


def format_bytes(sizes: Sequence[int]) -> str:
    """Distinct set sizes: ``30.0 KiB`` or a range ``1.2 KiB\u20132.0 KiB``; an en dash when unknown."""
    if not sizes:
        return MISSING
    parts = [_human_bytes(sizes[0])] if len(sizes) == 1 else [_human_bytes(sizes[0]), _human_bytes(sizes[-1])]
    return "\u2013".join(parts)


def _human_bytes(size: int) -> str:
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024.0 or unit == "GiB":
            return f"{size} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024.0
    return f"{size} B"  # pragma: no cover


TUNING_INTRO = (
    "Rows named `method (tuned, budget)` ran the configuration a search chose for that cell: every method of a "
    "tuned block searched with the same budget, each configuration scored by its validation accuracy on one "
    "tuning seed; the test split was never read. The final trials ran on the block's seeds, which the search "
    "never used. Search trials are not in the tables. Spent: budget used (a trial stopped early by ASHA counts "
    "as one trial, or with the hours it ran; a trial that failed with an error does not count). Val: the chosen "
    "configuration's validation accuracy in the search (percent). Hours: wall time of the trials, start to end."
)


def _render_tuning(tuning: Sequence[TuningRow]) -> list[str]:
    lines = [
        "## Tuning",
        "",
        TUNING_INTRO,
        "",
        "| Dataset | Protocol | Method | IPC | Budget | Spent | Search trials | Stopped early | Failed | Chosen | "
        "Val | Search h | Final h |",
        "|---|---|---|---:|---|---:|---:|---:|---:|---|---:|---:|---:|",
    ]
    for t in tuning:
        spent = MISSING if t.spent is None else f"{t.spent:g}"
        val = MISSING if t.objective is None else f"{t.objective:.2f}"
        chosen = _code(t.chosen) if t.chosen else "(search not finished)"
        lines.append(
            f"| {_escape(t.dataset)} | {_escape(t.protocol_id)} | {_escape(t.label)} | {t.ipc} | {_escape(t.budget)} | "
            f"{spent} | {t.trials} | {t.stopped} | {t.failed} | {chosen} | {val} | {format_hours(t.search_hours)} | "
            f"{format_hours(t.final_hours)} |"
        )
    lines.append("")
    for line in unequal_budgets(tuning):
        lines += [f"> **Unequal budgets:** {_escape_text(line)}.", ""]
    return lines


def _render_cost(cost: Sequence[CostRow]) -> list[str]:
    lines = [
        "## Cost",
        "",
        "Compute of the rows in the tables, by device: distillation hours count each trial once (0 when the "
        "set was reused from the store); evaluation hours sum every evaluation network; set size = bytes of "
        "the distilled set's tensors.",
        "",
        "| Dataset | Protocol | Method | IPC | Device | Trials | Distillation h | Evaluation h | Set size |",
        "|---|---|---|---:|---|---:|---:|---:|---:|",
    ]
    for c in cost:
        lines.append(
            f"| {_escape(c.dataset)} | {_escape(c.protocol_id)} | {_escape(c.label)} | {c.ipc} | {_escape(c.device)} | "
            f"{c.trials} | {format_hours(c.distill_hours)} | {format_hours(c.eval_hours)} | "
            f"{format_bytes(c.set_bytes)} |"
        )
    lines.append("")
    return lines


def _render_sources(numbers: Sequence[ReportedNumber]) -> list[str]:
    lines = [
        "## Reported numbers: sources",
        "",
        "From `leaderboard/reported.yaml`. primary = confirmed from the official code, README, project page or "
        "paper; secondary = quoted by a third-party paper or page; UNVERIFIED = not confirmed, or its mapping to "
        "a distillbench setting is assumed.",
        "",
    ]
    sources = sorted({n.source.key: n.source for n in numbers}.values(), key=lambda s: s.key)
    lines += [f"- **[{s.key}]** {_escape_text(s.citation)}" for s in sources]
    grouped: dict[tuple[str, str, str, str, str, str], set[int]] = {}
    for n in numbers:
        if n.note or not n.verified:
            grouped.setdefault((n.dataset, n.method, n.weighting, n.labels, n.verification, n.note), set()).add(n.ipc)
    if grouped:
        lines += ["", "Notes:", ""]
        order = sorted(grouped, key=lambda k: (natural_key(k[0]), k[0], _config_sort_key((k[1], k[2], k[3])), k[4:]))
        for dataset, method, weighting, labels, verification, note in order:
            ipcs = ", ".join(str(i) for i in sorted(grouped[(dataset, method, weighting, labels, verification, note)]))
            where = f"{dataset}, {config_label(method, weighting, labels)}, IPC {ipcs}"
            flag = {"primary": "", "secondary": "secondary", "unverified": "UNVERIFIED"}[verification]
            text = "; ".join(t for t in (flag, note) if t)
            lines.append(f"- {_escape_text(where)}: {_escape_text(text)}")
    lines.append("")
    return lines


def _render_provenance(provenance: Provenance) -> list[str]:
    lines = ["## Provenance", "", "Found in the rows (the generation time and environment are in index.html):", ""]
    for label, values in provenance.versions:
        lines.append(f"- {label}: " + ", ".join(_code(v) if v != "not recorded" else v for v in values))
    protocols = ", ".join(_code(p) + (" (quick)" if quick else "") for p, quick in provenance.protocols)
    lines += [f"- protocols: {protocols}", ""]
    return lines


def _render_failure(failure: Mapping[str, Any]) -> str:
    config = config_label(failure["method"], failure["weighting"], failure["labels"])
    where = f"{failure['dataset']}, {config}, ipc {failure['ipc']}, seed {failure['seed']}, {failure['protocol']}"
    return f"- **{_escape_text(failure['status'])}** {_escape_text(where)}: {_code(failure['error'])}"


# Text from rows (method parameters, dataset names, errors, versions) is data that anyone who can write a
# row file controls; in Markdown it must render as that same text, never as HTML, emphasis, a link, a new
# table cell or a new line. GitHub sanitises HTML, but other Markdown renderers do not.
_SPECIAL = str.maketrans({"\\": "\\\\", "`": "\\`", "*": "\\*", "_": "\\_", "&": "&amp;", "<": "&lt;", ">": "&gt;"})


def _one_line(text: Any) -> str:
    # A line break would end a table row or list item and let the rest start its own block.
    return " ".join(str(text).splitlines())


def _escape_text(text: Any) -> str:
    r"""Inline text shown literally: HTML characters as entities, Markdown emphasis and code escaped, one line.

    ``](`` becomes ``]\(`` so no link or image can be formed; bracketed parameters such as
    ``dm[iterations=200]`` stay as they are.
    """
    return _one_line(text).translate(_SPECIAL).replace("](", "]\\(")


def _escape(text: Any) -> str:
    """Escape a table cell: as :func:`_escape_text`, and a pipe would end the cell."""
    return _escape_text(text).replace("|", "\\|")


def _code(text: Any) -> str:
    """Text in a code span (shown verbatim, HTML included); a backtick would end the span, so it becomes '."""
    return "`" + _one_line(text).replace("`", "'") + "`"
