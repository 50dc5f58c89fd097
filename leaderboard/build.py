"""Build the leaderboard (Markdown and CSV) from the Parquet rows of one or more results directories.

The leaderboard is generated, never edited by hand: for the same rows it is byte-identical whatever
the order of the row files or of the results directories, and it carries no timestamps, so CI can
regenerate it and compare it with the committed file.

Layout of the Markdown:

* one table per (dataset, protocol ``name@version``, evaluation network), because rows are only
  comparable within one protocol version and one evaluation network;
* one table row per method configuration, labelled ``<method>[ + <weighting>][ / labels=<labels>]``
  (the weighting is omitted when it is ``none``, the label stage when it is ``native``);
* one column per IPC, in numeric order;
* each cell is the test accuracy in percent, mean ± std (ddof=0) pooled over every evaluation model of
  every seed, with ``n`` (accuracies pooled) and the number of seeds; the best mean of each IPC column,
  compared at the shown precision, is bold (ties: all bold); a missing cell is an en dash;
* a table whose protocol is registered as ``quick`` carries a note that its numbers are a short
  demo/CI recipe, not comparable to papers (a protocol unknown to the registry counts as not quick);
* rows whose status is not ``ok`` are left out of the tables and listed under "Failures".

The CSV ``leaderboard.csv`` holds the same cells, one line per (dataset, protocol, protocol_version,
eval_network, method, weighting, labels, ipc).

Example::

    from distillbench.leaderboard import build_leaderboard

    result = build_leaderboard([Path("results")], Path("leaderboard_out"), protocol="quick-v1")
    print(result.markdown_path, result.n_ok, len(result.failures))
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

MARKDOWN_NAME = "leaderboard.md"
CSV_NAME = "leaderboard.csv"
MISSING = "\u2013"  # en dash
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
    """

    mean: float
    std: float
    n: int
    n_seeds: int
    best: bool = False

    def format(self) -> str:
        """``97.12 ± 0.45 (n=6, seeds=2)``, bold when best."""
        text = f"{self.mean:.2f} \u00b1 {self.std:.2f} (n={self.n}, seeds={self.n_seeds})"
        return f"**{text}**" if self.best else text


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
    """

    dataset: str
    protocol: str
    protocol_version: int
    eval_network: str
    quick: bool
    ipcs: tuple[int, ...]
    rows: tuple[TableRow, ...]

    @property
    def protocol_id(self) -> str:
        """``name@version``."""
        return f"{self.protocol}@{self.protocol_version}"

    @property
    def title(self) -> str:
        """Heading naming the dataset, protocol version and evaluation network."""
        return f"Dataset {self.dataset}, protocol {self.protocol_id}, eval network {self.eval_network}"

    def cell(self, label: str, ipc: int) -> Cell | None:
        """The cell of row ``label`` at ``ipc``, or None when there is no result."""
        for row in self.rows:
            if row.label == label:
                return row.cells.get(ipc)
        return None


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
    """

    markdown_path: Path
    csv_path: Path
    n_rows: int
    n_ok: int
    failures: list[dict[str, Any]]
    skipped_files: list[tuple[str, str]]
    tables: list[Table]
    n_selected: int = 0


# ------------------------------------------------------------------------------------- the build
def build_leaderboard(
    results: Sequence[Path],
    out_dir: Path,
    *,
    grid: str | None = None,
    dataset: str | None = None,
    protocol: str | None = None,
) -> LeaderboardResult:
    """Read the rows of ``results`` and write ``leaderboard.md`` and ``leaderboard.csv`` to ``out_dir``.

    Args:
        results: results directories (each holding ``rows/*.parquet``).
        out_dir: output directory, created when missing.
        grid: keep rows whose grid matches this ``fnmatch`` pattern (or equals it).
        dataset: keep rows whose dataset display name matches this pattern (or equals it; a name with
            parameters such as ``digits[imbalance=10.0]`` is matched literally too).
        protocol: keep rows whose protocol name or ``name@version`` matches this pattern.

    Returns:
        The paths written, the counts, the failures, the skipped files and the tables.

    Raises:
        DistillBenchError: ``out_dir`` is an existing file or cannot be created, or a results path
            does not exist or is not a directory.
        DataError: a row file was written by a newer distillbench.
    """
    from distillbench.harness.store import read_rows

    out_dir = Path(out_dir)
    _check_out_dir(out_dir)
    result_dirs = [Path(p) for p in results]
    for path in result_dirs:
        if not path.is_dir():
            what = "is not a directory" if path.exists() else "does not exist"
            raise DistillBenchError(
                f"results path {str(path)!r} {what}; pass a results directory written by 'distillbench run'"
            )

    skipped: list[tuple[str, str]] = []
    frame = read_rows(result_dirs, columns=_READ_COLUMNS, on_bad=lambda p, r: skipped.append((str(p), r)))
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

    tables = build_tables(ok_rows)
    filters = {k: v for k, v in (("grid", grid), ("dataset", dataset), ("protocol", protocol)) if v}
    markdown = render_markdown(
        tables,
        failures=failures,
        n_rows=n_rows,
        n_ok=len(ok_rows),
        skipped_files=[Path(p).name for p, _ in skipped],
        filters=filters,
    )
    markdown_path = out_dir / MARKDOWN_NAME
    csv_path = out_dir / CSV_NAME
    _atomic_write_text(markdown_path, markdown)
    _atomic_write_text(csv_path, render_csv(tables))
    return LeaderboardResult(
        markdown_path=markdown_path,
        csv_path=csv_path,
        n_rows=n_rows,
        n_ok=len(ok_rows),
        failures=failures,
        skipped_files=skipped,
        tables=tables,
        n_selected=len(selected),
    )


def build_tables(rows: Iterable[Mapping[str, Any]]) -> list[Table]:
    """Group ok rows into tables and pool their accuracies into cells.

    Args:
        rows: rows (dicts with the store's column names) whose status is ``ok``.

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
        configs = groups[key]
        ipcs = tuple(sorted({ipc for by_ipc in configs.values() for ipc in by_ipc}))
        pooled = {config: {ipc: _pool(rs) for ipc, rs in by_ipc.items()} for config, by_ipc in configs.items()}
        best = {ipc: _best_mean(cells.get(ipc) for cells in pooled.values()) for ipc in ipcs}
        table_rows = []
        for config in sorted(configs, key=_config_sort_key):
            cells = {
                ipc: dataclasses.replace(cell, best=_shown(cell.mean) == best[ipc])
                for ipc, cell in sorted(pooled[config].items())
            }
            table_rows.append(TableRow(config_label(*config), *config, cells=cells))
        tables.append(Table(dataset, protocol, version, network, _is_quick(protocol), ipcs, tuple(table_rows)))
    return tables


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
) -> str:
    """The leaderboard as Markdown (deterministic; no timestamps).

    Args:
        tables: tables from :func:`build_tables`.
        failures: failure dicts as in :class:`LeaderboardResult`, already sorted.
        n_rows: rows read, for the summary line.
        n_ok: rows in the tables, for the summary line.
        skipped_files: names of skipped unreadable files.
        filters: filters applied, shown in the summary.

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
        lines += [
            "Cells: test accuracy in percent, mean \u00b1 std (ddof=0) pooled over every evaluation model of "
            "every seed; n = accuracies pooled, seeds = distinct seeds. The best mean of each IPC column is "
            f"in **bold** (ties: all bold); {MISSING} = no result. Row names: `method + weighting / "
            "labels=<label stage>`, where weighting `none` and labels `native` are omitted. Numbers are "
            "comparable only within one table (same dataset, protocol version and eval network).",
            "",
        ]
        for table in tables:
            lines += _render_table(table)

    if failures:
        lines += [f"## Failures ({len(failures)})", ""]
        lines += [_render_failure(f) for f in failures]
        lines.append("")
    return "\n".join(lines).rstrip("\n") + "\n"


def render_csv(tables: Sequence[Table]) -> str:
    """The cells of ``tables`` as CSV, one line per configuration and IPC (mean and std in percent).

    Args:
        tables: tables from :func:`build_tables`.

    Returns:
        CSV text with the header :data:`CSV_COLUMNS`.
    """
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for table in tables:
        for row in table.rows:
            for ipc, cell in row.cells.items():
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
                    ]
                )
    return buffer.getvalue()


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
    """One row per trial id: a trial copied into two results directories counts once.

    The kept row is chosen by content (ok first, then the latest end time), never by read order, so
    the output does not depend on the order of files or directories.
    """
    by_id: dict[str, dict[str, Any]] = {}
    for row in rows:
        current = by_id.get(row["trial_id"])
        if current is None or _preference(row) > _preference(current):
            by_id[row["trial_id"]] = row
    return [by_id[trial_id] for trial_id in sorted(by_id)]


def _preference(row: Mapping[str, Any]) -> tuple[bool, str, str]:
    return row["status"] == "ok", row["end_time"], json.dumps(row, sort_keys=True, default=str)


def _accuracies(row: Mapping[str, Any]) -> list[float]:
    """The accuracies of a row's evaluation models; ``[acc_mean]`` when only the mean was stored."""
    if row.get("acc_per_model"):
        return list(row["acc_per_model"])
    return [row["acc_mean"]] if row.get("acc_mean") is not None else []


def _pool(rows: Sequence[Mapping[str, Any]]) -> Cell:
    # Sorted values and fsum make the result independent of the order in which rows were read.
    values = sorted(100.0 * v for row in rows for v in _accuracies(row))
    mean = math.fsum(values) / len(values)
    std = math.sqrt(math.fsum((v - mean) ** 2 for v in values) / len(values))
    return Cell(mean=mean, std=std, n=len(values), n_seeds=len({row["seed"] for row in rows}))


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
