"""Build the leaderboard (Markdown, HTML and CSV) from the Parquet rows of one or more results directories.

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

Example::

    from distillbench.leaderboard import build_leaderboard

    result = build_leaderboard([Path("results")], Path("leaderboard_out"), protocol="quick-v1")
    print(result.markdown_path, result.html_path, result.n_ok, len(result.failures))
"""

from __future__ import annotations

import csv
import dataclasses
import fnmatch
import io
import json
import math
import os
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from decimal import Decimal
from pathlib import Path
from typing import Any

from distillbench.harness.errors import DistillBenchError
from distillbench.harness.registry import natural_key
from distillbench.leaderboard.reported import ReportedNumber, load_reported, match
from distillbench.leaderboard.stats import ALPHA, MIN_SEEDS, Summary, seed_means, summarize, welch_p

MARKDOWN_NAME = "leaderboard.md"
CSV_NAME = "leaderboard.csv"
HTML_NAME = "index.html"
MISSING = "\u2013"  # en dash
MARK = "\u2020"  # dagger: not significantly worse than the best of the column
BIAS_METRICS = (("acc_aligned", "Aligned"), ("acc_conflicting", "Conflicting"), ("acc_worst_group", "Worst group"))
LONGTAIL_METRICS = (("acc_many", "Many"), ("acc_medium", "Medium"), ("acc_few", "Few"))
PROVENANCE_COLUMNS = (
    ("package_version", "distillbench"),
    ("git_sha", "git sha"),
    ("torch_version", "torch"),
    ("ray_version", "ray"),
    ("python_version", "Python"),
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
    "distill_hours",
    "eval_hours",
    "set_bytes_mean",
    "reported",
    "reported_std",
    "reported_diff",
    "reported_source",
    "reported_verification",
)
_READ_COLUMNS = [
    "trial_id",
    "grid",
    "dataset",
    "method",
    "weighting",
    "labels",
    "ipc",
    "seed",
    "protocol",
    "protocol_version",
    "eval_network",
    "acc_mean",
    "acc_per_model",
    *(name for name, _ in BIAS_METRICS + LONGTAIL_METRICS),
    "distill_seconds",
    "eval_seconds",
    "device",
    "set_bytes",
    "set_reused",
    *(name for name, _ in PROVENANCE_COLUMNS),
    "status",
    "error",
    "end_time",
]
_MAX_ERROR_CHARS = 300


# ------------------------------------------------------------------------------------- data model
@dataclasses.dataclass(frozen=True)
class Cell:
    """One leaderboard cell: accuracies of one configuration at one IPC, pooled over seeds and models.

    Attributes:
        mean: mean accuracy in percent.
        std: standard deviation (ddof=0) in percent.
        n: number of accuracies pooled (evaluation models of all seeds).
        n_seeds: number of distinct seeds.
        best: the mean is the best of its IPC column (at the shown precision).
        seed_means: mean accuracy (percent) of each seed, the samples of the significance test.
        p_value: two-sided Welch p-value against the best of the column; None when not tested (the
            cell is best, or a side has fewer than two seeds).
        not_worse: tested and not significantly worse than the best (``p_value >= ALPHA``): marked †.
        reported: the published number matched to this cell, if any.
        extra: per-trial metric summaries (percent) of the bias and long-tail columns, by column name.
        distill_seconds: distillation seconds summed over the cell's trials (a reused set counts 0).
        eval_seconds: evaluation seconds summed over the cell's rows.
        set_bytes_mean: mean bytes of the distilled sets, when recorded.
    """

    mean: float
    std: float
    n: int
    n_seeds: int
    best: bool = False
    seed_means: tuple[float, ...] = ()
    p_value: float | None = None
    not_worse: bool = False
    reported: ReportedNumber | None = None
    extra: Mapping[str, Summary] = dataclasses.field(default_factory=dict)
    distill_seconds: float = 0.0
    eval_seconds: float = 0.0
    set_bytes_mean: float | None = None

    @property
    def diff(self) -> float | None:
        """Reproduced minus reported mean, in percentage points; None without a reported number."""
        return None if self.reported is None else self.mean - self.reported.value

    def format(self, *, html_break: str = "<br>") -> str:
        """``97.12 ± 0.45 (n=6, seeds=2)``, bold when best, † when not significantly worse, plus reported."""
        text = f"{self.mean:.2f} \u00b1 {self.std:.2f} (n={self.n}, seeds={self.n_seeds})"
        text = f"**{text}**" if self.best else text
        if self.not_worse:
            text += f" {MARK}"
        if self.reported is not None:
            text += html_break + reported_text(self.reported, self.mean)
        return text


def reported_text(number: ReportedNumber, mean: float) -> str:
    """``reported 97.4 [DC-readme], diff -0.28`` (with ``UNVERIFIED`` or ``secondary`` when flagged)."""
    flag = f" {number.flag}" if number.flag else ""
    return f"reported {number.format_value()}{flag} [{number.source.key}], diff {mean - number.value:+.2f}"


@dataclasses.dataclass(frozen=True)
class TableRow:
    """One method configuration of a table.

    Attributes:
        label: the row name shown in the table (see the module docstring for the convention).
        method: method display name, e.g. ``dm[iterations=200]``.
        weighting: weighting display name (``none`` when unweighted).
        labels: label stage display name (``native`` when unchanged).
        cells: cell per IPC; IPCs without results are absent.
    """

    label: str
    method: str
    weighting: str
    labels: str
    cells: Mapping[int, Cell]


@dataclasses.dataclass(frozen=True)
class Table:
    """All comparable results of one dataset, protocol version and evaluation network.

    Attributes:
        dataset: dataset display name.
        protocol: protocol name.
        protocol_version: protocol version.
        eval_network: evaluation network spec.
        quick: the protocol is registered as a quick demo/CI recipe.
        ipcs: IPC columns in numeric order.
        rows: method configurations in natural order.
        untested: per IPC, why some cells were not tested (empty when every comparison was made).
    """

    dataset: str
    protocol: str
    protocol_version: int
    eval_network: str
    quick: bool
    ipcs: tuple[int, ...]
    rows: tuple[TableRow, ...]
    untested: Mapping[int, str] = dataclasses.field(default_factory=dict)

    @property
    def protocol_id(self) -> str:
        """``name@version``."""
        return f"{self.protocol}@{self.protocol_version}"

    @property
    def title(self) -> str:
        """Heading naming the dataset, protocol version and evaluation network."""
        return f"Dataset {self.dataset}, protocol {self.protocol_id}, eval network {self.eval_network}"

    @property
    def compared(self) -> bool:
        """Some IPC column holds at least two configurations, so the significance legend applies."""
        return any(sum(ipc in row.cells for row in self.rows) >= 2 for ipc in self.ipcs)

    def cell(self, label: str, ipc: int) -> Cell | None:
        """The cell of row ``label`` at ``ipc``, or None when there is no result."""
        for row in self.rows:
            if row.label == label:
                return row.cells.get(ipc)
        return None

    def has_metrics(self, metrics: Sequence[tuple[str, str]]) -> bool:
        """Whether any cell carries one of ``metrics`` (the bias or the long-tail columns)."""
        return any(name in cell.extra for row in self.rows for cell in row.cells.values() for name, _ in metrics)

    @property
    def reported_numbers(self) -> list[ReportedNumber]:
        """The reported numbers attached to the table's cells, in table order."""
        return [c.reported for r in self.rows for c in r.cells.values() if c.reported is not None]


@dataclasses.dataclass(frozen=True)
class CostRow:
    """Compute spent on one (dataset, protocol, configuration, IPC) on one device (ok rows only).

    Attributes:
        dataset: dataset display name.
        protocol_id: ``name@version``.
        label: configuration label (see :func:`config_label`).
        ipc: samples per class.
        device: device of the computation (``unknown`` when not recorded).
        trials: distinct trials.
        distill_hours: distillation hours, each trial counted once (a reused set counts 0).
        eval_hours: evaluation hours summed over every row (every evaluation network).
        set_bytes: distinct sizes of the distilled sets in bytes, sorted.
    """

    dataset: str
    protocol_id: str
    label: str
    ipc: int
    device: str
    trials: int
    distill_hours: float
    eval_hours: float
    set_bytes: tuple[int, ...]


@dataclasses.dataclass(frozen=True)
class Provenance:
    """What the rows say about the code and libraries that produced them (deterministic).

    Attributes:
        versions: per provenance column label (``distillbench``, ``git sha``, ...), the distinct values
            found in the selected rows, sorted (``not recorded`` stands for null).
        protocols: ``(name@version, quick)`` of every protocol in the selected rows, sorted.
    """

    versions: tuple[tuple[str, tuple[str, ...]], ...]
    protocols: tuple[tuple[str, bool], ...]


@dataclasses.dataclass
class LeaderboardResult:
    """What :func:`build_leaderboard` wrote and found.

    Attributes:
        markdown_path: the Markdown file.
        csv_path: the CSV file.
        n_rows: rows read from the results directories, before filters and de-duplication.
        n_ok: rows with status ``ok`` that made it into the tables.
        failures: selected rows whose status is not ``ok`` (or that hold no accuracy), as dicts with
            ``trial_id``, ``dataset``, ``method``, ``weighting``, ``labels``, ``ipc``, ``seed``,
            ``protocol``, ``status`` and ``error`` (first line only).
        skipped_files: ``(path, reason)`` of unreadable or foreign Parquet files, which were skipped.
        tables: one table per (dataset, protocol@version, eval network).
        n_selected: rows left after the filters, counting a trial present in several directories once.
        html_path: the self-contained HTML page.
        cost: cost rows, in the order of the cost table.
        provenance: versions and protocols found in the selected rows.
    """

    markdown_path: Path
    csv_path: Path
    n_rows: int
    n_ok: int
    failures: list[dict[str, Any]]
    skipped_files: list[tuple[str, str]]
    tables: list[Table]
    n_selected: int = 0
    html_path: Path | None = None
    cost: list[CostRow] = dataclasses.field(default_factory=list)
    provenance: Provenance | None = None


# ------------------------------------------------------------------------------------- the build
def build_leaderboard(
    results: Sequence[Path],
    out_dir: Path,
    *,
    grid: str | None = None,
    dataset: str | None = None,
    protocol: str | None = None,
    reported: str | Path | Sequence[ReportedNumber] | None = None,
    generated_at: str | None = None,
) -> LeaderboardResult:
    """Read the rows of ``results`` and write ``leaderboard.md``, ``leaderboard.csv`` and ``index.html``.

    Args:
        results: results directories (each holding ``rows/*.parquet``).
        out_dir: output directory, created when missing.
        grid: keep rows whose grid matches this ``fnmatch`` pattern (or equals it).
        dataset: keep rows whose dataset display name matches this pattern (or equals it; a name with
            parameters such as ``digits[imbalance=10.0]`` is matched literally too).
        protocol: keep rows whose protocol name or ``name@version`` matches this pattern.
        reported: published numbers: a YAML file in the format of ``leaderboard/reported.yaml``, or
            loaded entries; default the packaged ``reported.yaml``.
        generated_at: generation time shown in the HTML (default: now, UTC, ISO 8601).

    Returns:
        The paths written, the counts, the failures, the skipped files, the tables, cost and provenance.

    Raises:
        DistillBenchError: ``out_dir`` is an existing file or cannot be created, or a results path
            does not exist or is not a directory.
        DataError: a row file was written by a newer distillbench, or the reported numbers are malformed.
    """
    from distillbench.harness.store import read_rows
    from distillbench.leaderboard.html import render_html

    out_dir = Path(out_dir)
    _check_out_dir(out_dir)
    result_dirs = [Path(p) for p in results]
    for path in result_dirs:
        if not path.is_dir():
            what = "is not a directory" if path.exists() else "does not exist"
            raise DistillBenchError(
                f"results path {str(path)!r} {what}; pass a results directory written by 'distillbench run'"
            )
    numbers = load_reported(reported) if reported is None or isinstance(reported, str | Path) else list(reported)

    skipped: list[tuple[str, str]] = []
    frame = read_rows(result_dirs, on_bad=lambda p, r: skipped.append((str(p), r)))
    frame = frame.reindex(columns=_READ_COLUMNS)  # files of older writers may lack a column
    records = [_normalise(rec) for rec in frame.to_dict("records")]
    n_rows = len(records)
    selected = _deduplicate(r for r in records if _selected(r, grid=grid, dataset=dataset, protocol=protocol))

    ok_rows, failures = [], []
    for rec in selected:
        if rec["status"] != "ok":
            failures.append(_failure(rec, rec["error"]))
        elif not _accuracies(rec):
            failures.append(_failure(rec, "status is ok but the row holds no accuracy (acc_per_model, acc_mean)"))
        elif rec["ipc"] is None:
            failures.append(_failure(rec, "status is ok but the row has no ipc"))
        else:
            ok_rows.append(rec)
    failures.sort(key=_failure_sort_key)
    skipped.sort()

    tables = build_tables(ok_rows, reported=numbers)
    cost = build_cost(ok_rows)
    provenance = build_provenance(selected)
    filters = {k: v for k, v in (("grid", grid), ("dataset", dataset), ("protocol", protocol)) if v}
    summary = {
        "failures": failures,
        "n_rows": n_rows,
        "n_ok": len(ok_rows),
        "skipped_files": [Path(p).name for p, _ in skipped],
        "filters": filters,
    }
    markdown = render_markdown(tables, cost=cost, provenance=provenance, **summary)
    markdown_path = out_dir / MARKDOWN_NAME
    csv_path = out_dir / CSV_NAME
    html_path = out_dir / HTML_NAME
    _atomic_write_text(markdown_path, markdown)
    _atomic_write_text(csv_path, render_csv(tables))
    html = render_html(tables, cost=cost, provenance=provenance, generated_at=generated_at, **summary)
    _atomic_write_text(html_path, html)
    return LeaderboardResult(
        markdown_path=markdown_path,
        csv_path=csv_path,
        n_rows=n_rows,
        n_ok=len(ok_rows),
        failures=failures,
        skipped_files=skipped,
        tables=tables,
        n_selected=len(selected),
        html_path=html_path,
        cost=cost,
        provenance=provenance,
    )


def build_tables(rows: Iterable[Mapping[str, Any]], *, reported: Sequence[ReportedNumber] | None = None) -> list[Table]:
    """Group ok rows into tables, pool their accuracies into cells, test against the best, attach reported.

    Args:
        rows: rows (dicts with the store's column names) whose status is ``ok``.
        reported: published numbers to attach (default: none).

    Returns:
        Tables in natural order of dataset, protocol, version and evaluation network.
    """
    groups: dict[tuple[str, str, int, str], dict[tuple[str, str, str], dict[int, list[Mapping[str, Any]]]]] = {}
    for row in rows:
        key = (row["dataset"], row["protocol"], row["protocol_version"], row["eval_network"])
        config = (row["method"], row["weighting"], row["labels"])
        groups.setdefault(key, {}).setdefault(config, {}).setdefault(row["ipc"], []).append(row)

    tables = []
    for key in sorted(groups, key=lambda k: (natural_key(k[0]), k[0], natural_key(k[1]), k[1], k[2], k[3])):
        dataset, protocol, version, network = key
        quick = _is_quick(protocol)
        configs = groups[key]
        order = sorted(configs, key=_config_sort_key)
        ipcs = tuple(sorted({ipc for by_ipc in configs.values() for ipc in by_ipc}))
        pooled = {config: {ipc: _pool(rs) for ipc, rs in by_ipc.items()} for config, by_ipc in configs.items()}
        untested: dict[int, str] = {}
        for ipc in ipcs:
            column = [(config_label(*c), c, pooled[c][ipc]) for c in order if ipc in pooled[c]]
            untested_note = _test_column(column, pooled, ipc)
            if untested_note:
                untested[ipc] = untested_note
        table_rows = []
        for config in order:
            cells = {}
            for ipc, cell in sorted(pooled[config].items()):
                number = None
                if reported:
                    number = match(
                        reported,
                        dataset=dataset,
                        protocol_id=f"{protocol}@{version}",
                        quick=quick,
                        eval_network=network,
                        method=config[0],
                        weighting=config[1],
                        labels=config[2],
                        ipc=ipc,
                    )
                cells[ipc] = dataclasses.replace(cell, reported=number)
            table_rows.append(TableRow(config_label(*config), *config, cells=cells))
        tables.append(Table(dataset, protocol, version, network, quick, ipcs, tuple(table_rows), untested))
    return tables


def _test_column(
    column: list[tuple[str, tuple[str, str, str], Cell]],
    pooled: dict[tuple[str, str, str], dict[int, Cell]],
    ipc: int,
) -> str:
    """Mark the best cells of one IPC column and test the others against the best; say what was not tested.

    Updates ``pooled`` in place. The reference of the test is the best cell by exact pooled mean among the
    bold ones (the first in row order on an exact tie).
    """
    best_shown = _best_mean(cell for _, _, cell in column)
    bold = [(label, config, cell) for label, config, cell in column if _shown(cell.mean) == best_shown]
    for _, config, cell in bold:
        pooled[config][ipc] = dataclasses.replace(cell, best=True)
    others = [(label, config, cell) for label, config, cell in column if _shown(cell.mean) != best_shown]
    if not bold or not others:
        return ""
    ref_label, _, ref = max(bold, key=lambda item: item[2].mean)  # max keeps the first of exact ties
    if len(ref.seed_means) < MIN_SEEDS:
        return f"the best ({ref_label}) has 1 seed"
    untested = []
    for label, config, cell in others:
        p = welch_p(cell.seed_means, ref.seed_means)
        if p is None:
            untested.append(label)
            continue
        pooled[config][ipc] = dataclasses.replace(cell, p_value=p, not_worse=p >= ALPHA)
    return f"fewer than {MIN_SEEDS} seeds for {', '.join(untested)}" if untested else ""


def build_cost(rows: Iterable[Mapping[str, Any]]) -> list[CostRow]:
    """Cost per (dataset, protocol, configuration, IPC, device) of the ok rows.

    Distillation time is counted once per trial (a trial evaluated on several networks has one row
    per network, each repeating the distillation time); evaluation time is summed over all rows.

    Args:
        rows: rows whose status is ``ok``.

    Returns:
        Cost rows in natural order of dataset, protocol, configuration, IPC and device.
    """
    groups: dict[tuple[str, str, tuple[str, str, str], int, str], list[Mapping[str, Any]]] = {}
    for row in rows:
        protocol_id = f"{row['protocol']}@{row['protocol_version']}"
        config = (row["method"], row["weighting"], row["labels"])
        device = row.get("device") or "unknown"
        groups.setdefault((row["dataset"], protocol_id, config, row["ipc"], device), []).append(row)

    def order(key: tuple[str, str, tuple[str, str, str], int, str]) -> tuple[Any, ...]:
        return (natural_key(key[0]), key[0], natural_key(key[1]), _config_sort_key(key[2]), key[3], key[4])

    cost = []
    for key in sorted(groups, key=order):
        dataset, protocol_id, config, ipc, device = key
        members = groups[key]
        distill = _distill_seconds_once(members)
        evals = math.fsum(sorted(float(r.get("eval_seconds") or 0.0) for r in members))
        sizes = tuple(sorted({int(r["set_bytes"]) for r in members if r.get("set_bytes") is not None}))
        cost.append(
            CostRow(
                dataset=dataset,
                protocol_id=protocol_id,
                label=config_label(*config),
                ipc=ipc,
                device=device,
                trials=len({r["trial_id"] for r in members}),
                distill_hours=distill / 3600.0,
                eval_hours=evals / 3600.0,
                set_bytes=sizes,
            )
        )
    return cost


def build_provenance(rows: Iterable[Mapping[str, Any]]) -> Provenance:
    """Distinct versions, git shas and protocol ids of ``rows`` (sorted; deterministic).

    Args:
        rows: the selected rows (ok or not).

    Returns:
        The provenance summary.
    """
    rows = list(rows)
    versions = []
    for column, label in PROVENANCE_COLUMNS:
        values = {str(r.get(column)) if r.get(column) not in (None, "") else "not recorded" for r in rows}
        versions.append((label, tuple(sorted(values, key=lambda v: (natural_key(v), v)))))
    protocols = {f"{r['protocol']}@{r['protocol_version']}" for r in rows}
    return Provenance(
        versions=tuple(versions),
        protocols=tuple(
            (p, _is_quick(p.rsplit("@", 1)[0])) for p in sorted(protocols, key=lambda p: (natural_key(p), p))
        ),
    )


def config_label(method: str, weighting: str, labels: str) -> str:
    """Row name of a method configuration: ``method[ + weighting][ / labels=labels]``.

    Example:
        >>> config_label("dm[iterations=200]", "kde", "teacher")
        'dm[iterations=200] + kde / labels=teacher'
        >>> config_label("dm", "none", "native")
        'dm'
    """
    label = method
    if weighting != "none":
        label += f" + {weighting}"
    if labels != "native":
        label += f" / labels={labels}"
    return label


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
        lines.append("Filters: " + ", ".join(f"{k}=`{v}`" for k, v in sorted(filters.items())) + ".")
    if skipped_files:
        names = ", ".join(f"`{name}`" for name in sorted(skipped_files))
        lines.append(f"Skipped {len(skipped_files)} unreadable or foreign file(s): {names}.")
    lines.append("")

    if not tables:
        lines += ["No results" + (" match the filters." if filters else " to show."), ""]
    else:
        lines += [f"{INTRO}", ""]
        for table in tables:
            lines += _render_table(table)
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
    lines = [f"## {table.title}", ""]
    if table.quick:
        lines += [
            f"> **Quick protocol:** `{table.protocol}` is a short demo/CI recipe; these numbers are not "
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
        f"### {kind}: {table.dataset}, {table.protocol_id}, {table.eval_network}",
        "",
        f"{what.capitalize()}; percent, mean \u00b1 std (ddof=0) over trials (seeds), each the mean of its "
        "evaluation models; n = trials. Overall = the main table's cell.",
        "",
        "| Method | IPC | Overall | " + " | ".join(title for _, title in metrics) + " |",
        "|---|---:|---:|" + "---:|" * len(metrics),
    ]
    for row in table.rows:
        for ipc, cell in row.cells.items():
            if not any(name in cell.extra for name, _ in metrics):
                continue
            values = [_format_summary(cell.extra.get(name)) for name, _ in metrics]
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
            f"| {_escape(c.dataset)} | {c.protocol_id} | {_escape(c.label)} | {c.ipc} | {_escape(c.device)} | "
            f"{c.trials} | {format_hours(c.distill_hours)} | {format_hours(c.eval_hours)} | "
            f"{format_bytes(c.set_bytes)} |"
        )
    lines.append("")
    return lines


def distinct_reported(tables: Sequence[Table]) -> list[ReportedNumber]:
    """The reported numbers attached anywhere in ``tables``, each once, in table order."""
    seen: dict[int, ReportedNumber] = {}
    for table in tables:
        for number in table.reported_numbers:
            seen.setdefault(id(number), number)
    return list(seen.values())


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
        lines.append(f"- {label}: " + ", ".join(f"`{v}`" if v != "not recorded" else v for v in values))
    protocols = ", ".join(f"`{p}`" + (" (quick)" if quick else "") for p, quick in provenance.protocols)
    lines += [f"- protocols: {protocols}", ""]
    return lines


def _render_failure(failure: Mapping[str, Any]) -> str:
    config = config_label(failure["method"], failure["weighting"], failure["labels"])
    error = str(failure["error"]).replace("`", "'")
    where = f"{failure['dataset']}, {config}, ipc {failure['ipc']}, seed {failure['seed']}, {failure['protocol']}"
    return f"- **{failure['status']}** {_escape_text(where)}: `{error}`"


def _escape(text: str) -> str:
    """Escape a table cell (a pipe would end the cell)."""
    return text.replace("|", "\\|")


def _escape_text(text: str) -> str:
    return text.replace("*", "\\*").replace("_", "\\_")


# ------------------------------------------------------------------------------------- row helpers
def _normalise(record: Mapping[str, Any]) -> dict[str, Any]:
    """Plain Python values: None for nulls, int / float / str scalars, list of floats for accuracies."""
    out: dict[str, Any] = {}
    for key, value in record.items():
        if key == "end_time":
            # A timestamp, None or NaT (which is not equal to itself); only used to pick among duplicates.
            out[key] = "" if value is None or value != value else str(value)
            continue
        if key == "acc_per_model":
            out[key] = None if value is None else [float(v) for v in value]
            continue
        if hasattr(value, "item") and not isinstance(value, str):
            value = value.item()  # numpy scalar
        if isinstance(value, float) and math.isnan(value):
            value = None
        out[key] = value
    for key in ("ipc", "seed", "protocol_version"):
        if out.get(key) is not None:
            out[key] = int(out[key])
    out.setdefault("end_time", "")
    for key, default in (("weighting", "none"), ("labels", "native")):
        out[key] = out.get(key) or default
    for key in ("grid", "dataset", "method", "protocol", "eval_network", "status", "error"):
        out[key] = "" if out.get(key) is None else str(out[key])
    for key in ("device", *(name for name, _ in PROVENANCE_COLUMNS)):
        out[key] = None if out.get(key) in (None, "") else str(out[key])
    out["protocol_version"] = out["protocol_version"] if out.get("protocol_version") is not None else 0
    return out


def _matches(value: str, pattern: str | None) -> bool:
    # Equality first: display names such as "digits[imbalance=10.0]" are fnmatch character classes.
    return pattern is None or value == pattern or fnmatch.fnmatchcase(value, pattern)


def _selected(row: Mapping[str, Any], *, grid: str | None, dataset: str | None, protocol: str | None) -> bool:
    protocol_id = f"{row['protocol']}@{row['protocol_version']}"
    return (
        _matches(row["grid"], grid)
        and _matches(row["dataset"], dataset)
        and (_matches(row["protocol"], protocol) or _matches(protocol_id, protocol))
    )


def _deduplicate(rows: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (trial id, evaluation network): a trial copied into two results directories counts once.

    A trial evaluated under a cross-architecture protocol has one row per network, all with its trial
    id, so the network is part of the key. The kept row is chosen by content (ok first, then the latest
    end time), never by read order, so the output does not depend on the order of files or directories.
    """
    by_id: dict[tuple[str, str], dict[str, Any]] = {}
    for row in rows:
        key = (row["trial_id"], row["eval_network"])
        current = by_id.get(key)
        if current is None or _preference(row) > _preference(current):
            by_id[key] = row
    return [by_id[key] for key in sorted(by_id)]


def _preference(row: Mapping[str, Any]) -> tuple[bool, str, str]:
    return row["status"] == "ok", row["end_time"], json.dumps(row, sort_keys=True, default=str)


def _accuracies(row: Mapping[str, Any]) -> list[float]:
    """The accuracies of a row's evaluation models; ``[acc_mean]`` when only the mean was stored."""
    if row.get("acc_per_model"):
        return list(row["acc_per_model"])
    return [row["acc_mean"]] if row.get("acc_mean") is not None else []


def _pool(rows: Sequence[Mapping[str, Any]]) -> Cell:
    """Pool the rows of one configuration at one IPC into a cell (order-independent)."""
    values = sorted(100.0 * v for row in rows for v in _accuracies(row))
    total = summarize(values)
    assert total is not None  # rows without accuracies are failures, never pooled
    extra = {}
    for name, _ in BIAS_METRICS + LONGTAIL_METRICS:
        summary = summarize(100.0 * row[name] for row in rows if row.get(name) is not None)
        if summary is not None:
            extra[name] = summary
    sizes = sorted(int(row["set_bytes"]) for row in rows if row.get("set_bytes") is not None)
    return Cell(
        mean=total.mean,
        std=total.std,
        n=total.n,
        n_seeds=len({row["seed"] for row in rows}),
        seed_means=seed_means(rows, _accuracies),
        extra=extra,
        distill_seconds=_distill_seconds_once(rows),
        eval_seconds=math.fsum(sorted(float(row.get("eval_seconds") or 0.0) for row in rows)),
        set_bytes_mean=math.fsum(sizes) / len(sizes) if sizes else None,
    )


def _distill_seconds_once(rows: Iterable[Mapping[str, Any]]) -> float:
    """Distillation seconds of the distinct trials of ``rows`` (one row per evaluation network repeats them)."""
    per_trial: dict[str, float] = {}
    for row in rows:
        seconds = float(row.get("distill_seconds") or 0.0)
        per_trial[row["trial_id"]] = max(per_trial.get(row["trial_id"], 0.0), seconds)
    return math.fsum(sorted(per_trial.values()))


def _shown(value: float) -> Decimal | None:
    """A mean at the precision shown in the table (ties are judged on what the reader sees)."""
    return Decimal(f"{value:.2f}") if math.isfinite(value) else None


def _best_mean(cells: Iterable[Cell | None]) -> Decimal | None:
    shown = [s for s in (_shown(c.mean) for c in cells if c is not None) if s is not None]
    return max(shown) if shown else None


def _config_sort_key(config: tuple[str, str, str]) -> tuple[Any, ...]:
    method, weighting, labels = config
    # "none" / "native" first, then the others naturally; raw strings break case-only ties.
    return (
        natural_key(method),
        weighting != "none",
        natural_key(weighting),
        labels != "native",
        natural_key(labels),
        config,
    )


def _failure(row: Mapping[str, Any], error: str) -> dict[str, Any]:
    first = next((line.strip() for line in (error or "").splitlines() if line.strip()), "(no error text)")
    if len(first) > _MAX_ERROR_CHARS:
        first = first[: _MAX_ERROR_CHARS - 1] + "\u2026"
    return {
        "trial_id": row["trial_id"],
        "dataset": row["dataset"],
        "method": row["method"],
        "weighting": row["weighting"],
        "labels": row["labels"],
        "ipc": row["ipc"],
        "seed": row["seed"],
        "protocol": f"{row['protocol']}@{row['protocol_version']}",
        "status": row["status"],
        "error": first,
    }


def _failure_sort_key(failure: Mapping[str, Any]) -> tuple[Any, ...]:
    return (
        natural_key(failure["dataset"]),
        _config_sort_key((failure["method"], failure["weighting"], failure["labels"])),
        failure["ipc"] if failure["ipc"] is not None else -1,
        failure["seed"] if failure["seed"] is not None else -1,
        failure["status"],
        failure["trial_id"],
    )


def _is_quick(protocol: str) -> bool:
    """Whether the registry marks ``protocol`` quick; unknown or broken protocols count as not quick."""
    from distillbench.harness.plugins import PROTOCOLS

    try:
        return bool(getattr(PROTOCOLS.get(protocol), "quick", False))
    except DistillBenchError:  # a plugin no longer installed must not break the leaderboard
        return False


# ------------------------------------------------------------------------------------- files
def _check_out_dir(out_dir: Path) -> None:
    if out_dir.exists() and not out_dir.is_dir():
        raise DistillBenchError(
            f"leaderboard output {str(out_dir)!r} is an existing file; pass a directory (it is created when missing)"
        )
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DistillBenchError(
            f"cannot create leaderboard output directory {str(out_dir)!r}: {exc.strerror or exc}"
        ) from None


def _atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` (UTF-8, LF line ends) to a temporary file beside ``path`` and rename it."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(text.encode("utf-8"))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
