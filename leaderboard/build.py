"""Build the leaderboard (Markdown, HTML and CSV) from the Parquet rows of one or more results directories.

Reads the rows, keeps the selected and de-duplicated ones, builds the tables
(:mod:`~distillbench.leaderboard.tables`), renders them (:mod:`~distillbench.leaderboard.markdown`,
:mod:`~distillbench.leaderboard.html`) and writes the three files atomically. The layout of the output
is described in :mod:`distillbench.leaderboard.markdown`.

Example::

    from distillbench.leaderboard import build_leaderboard

    result = build_leaderboard([Path("results")], Path("leaderboard_out"), protocol="quick-v1")
    print(result.markdown_path, result.html_path, result.n_ok, len(result.failures))
"""

from __future__ import annotations

import dataclasses
import fnmatch
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from distillbench.harness.errors import DistillBenchError
from distillbench.harness.registry import natural_key
from distillbench.harness.store import atomic_write, column_names
from distillbench.leaderboard.markdown import render_csv, render_markdown
from distillbench.leaderboard.reported import ReportedNumber, load_reported
from distillbench.leaderboard.tables import (
    BIAS_METRICS,
    LONGTAIL_METRICS,
    PROVENANCE_COLUMNS,
    Board,
    CostRow,
    Provenance,
    Table,
    TuningRow,
    _accuracies,
    _config_sort_key,
    _deduplicate,
    _normalise,
    build_cost,
    build_provenance,
    build_tables,
    build_tuning,
    tuned_label,
)

MARKDOWN_NAME = "leaderboard.md"


CSV_NAME = "leaderboard.csv"


HTML_NAME = "index.html"


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
    "label_tau",
    "distill_seconds",
    "eval_seconds",
    "device",
    "set_bytes",
    "set_reused",
    *(name for name, _ in PROVENANCE_COLUMNS),
    "status",
    "error",
    "end_time",
    # tuning (harness/tuning.py): search rows leave the tables, final rows are marked as tuned
    "val_acc_mean",
    "start_time",
    *column_names(family="tuning"),
]


_MAX_ERROR_CHARS = 300


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
        tuning: one row per search of a tuned block (its search rows are not in the tables).
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
    tuning: list[TuningRow] = dataclasses.field(default_factory=list)


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
    _check_out_dir(out_dir, create=False)  # refuse an existing file early; create only once the inputs are read
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
    # Search trials of tuned blocks are the search's record, not results: they leave the tables (and the
    # failures); the tuning section summarises them. Final trials show as "method (tuned, budget)".
    selected = _without_superseded_finals(selected)
    tuning = build_tuning(
        [r for r in selected if r.get("tune_role") == "search"], [r for r in selected if r.get("tune_role") == "final"]
    )
    selected = [r for r in selected if r.get("tune_role") != "search"]
    for rec in selected:
        if rec.get("tune_role") == "final":
            rec["method"] = tuned_label(rec)

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
    board = Board(
        tables=tables,
        failures=failures,
        n_rows=n_rows,
        n_ok=len(ok_rows),
        skipped_files=[Path(p).name for p, _ in skipped],
        filters=filters,
        cost=cost,
        provenance=provenance,
        tuning=tuning,
    )
    markdown = render_markdown(board)
    _check_out_dir(out_dir)
    markdown_path = out_dir / MARKDOWN_NAME
    csv_path = out_dir / CSV_NAME
    html_path = out_dir / HTML_NAME
    _atomic_write_text(markdown_path, markdown)
    _atomic_write_text(csv_path, render_csv(tables))
    html = render_html(board, generated_at=generated_at)
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
        tuning=tuning,
    )


def _without_superseded_finals(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``rows`` without final rows of a search whose newer final rows chose other parameters.

    That happens only when search rows were removed and the search ran again and chose anew: the latest
    choice of a tuning id (the parameters of its last final row to end) is its result.
    """
    latest: dict[str, tuple[tuple[str, str], Any]] = {}
    for row in rows:
        if row.get("tune_role") == "final":
            key = (row["end_time"], row["trial_id"])
            if row["tuning_id"] not in latest or key > latest[row["tuning_id"]][0]:
                latest[row["tuning_id"]] = (key, row.get("tune_params"))
    return [r for r in rows if r.get("tune_role") != "final" or r.get("tune_params") == latest[r["tuning_id"]][1]]


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


# ------------------------------------------------------------------------------------- files
def _check_out_dir(out_dir: Path, *, create: bool = True) -> None:
    """Refuse an output path that is a file; with ``create``, make the directory (missing parents too)."""
    if out_dir.exists() and not out_dir.is_dir():
        raise DistillBenchError(
            f"leaderboard output {str(out_dir)!r} is an existing file; pass a directory (it is created when missing)"
        )
    if not create:
        return
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DistillBenchError(
            f"cannot create leaderboard output directory {str(out_dir)!r}: {exc.strerror or exc}"
        ) from None


def _atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` (UTF-8, LF line ends) atomically."""
    atomic_write(path, lambda tmp: Path(tmp).write_bytes(text.encode("utf-8")))
