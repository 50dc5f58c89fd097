"""The results store: one Parquet row per trial, and distilled sets as safetensors plus JSON.

Layout of a results directory::

    <results>/rows/<trial_id>.parquet       one row, schema SCHEMA (written atomically)
    <results>/sets/<distill_id>.safetensors the distilled set (x, y, extras)
    <results>/sets/<distill_id>.json        its metadata (spec, method, dataset, cost)

The schema is declared once, here. Metric column names are fixed because scripts and other tools
read them. Every write goes to a temporary file in the same directory and is renamed into place,
so a crash never leaves half a row or half a set; rows are keyed by ``trial_id``, so writing the
same trial twice replaces the row instead of duplicating it.
"""

from __future__ import annotations

import datetime
import json
import os
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from distillbench.harness.errors import DataError, DistillBenchError

SCHEMA_VERSION = 1

_F = pa.float64()
_LF = pa.list_(pa.float64())
_LI = pa.list_(pa.int64())
_S = pa.string()
_I = pa.int64()
_TS = pa.timestamp("us", tz="UTC")

# (name, type, meaning). Order is the column order of every row file.
COLUMNS: tuple[tuple[str, pa.DataType, str], ...] = (
    # identity
    ("trial_id", _S, "hash of the canonical, fully resolved trial spec"),
    ("distill_id", _S, "hash of the part of the spec that determines the distilled set"),
    ("grid", _S, "name of the grid that ran the trial"),
    ("dataset", _S, "dataset display name with non-default parameters, e.g. digits"),
    ("dataset_params", _S, "all dataset parameters as JSON"),
    ("method", _S, "method display name with non-default parameters, e.g. dm[iterations=200]"),
    ("method_name", _S, "bare method name, e.g. dm"),
    ("method_params", _S, "all method parameters as JSON"),
    ("weighting", _S, "weighting display name (none, kde[...])"),
    ("labels", _S, "label stage display name (native, teacher, adsa)"),
    ("ipc", _I, "samples per class asked for"),
    ("seed", _I, "distillation seed; evaluation seeds derive from it"),
    ("protocol", _S, "evaluation protocol name"),
    ("protocol_version", _I, "evaluation protocol version"),
    ("eval_network", _S, "network spec trained by the protocol"),
    ("spec_json", _S, "the full resolved trial spec as canonical JSON"),
    # metrics (fractions in [0, 1]; null where they do not apply)
    ("acc_mean", _F, "mean test accuracy over the K evaluation models"),
    ("acc_std", _F, "std (ddof=0) of the test accuracy over the K models"),
    ("acc_per_model", _LF, "test accuracy of each evaluation model"),
    ("acc_per_class", _LF, "per-class test accuracy, averaged over the models"),
    ("val_acc_mean", _F, "mean validation-split accuracy over the models"),
    ("acc_aligned", _F, "accuracy on bias-aligned test samples (biased datasets)"),
    ("acc_conflicting", _F, "accuracy on bias-conflicting test samples (biased datasets)"),
    ("acc_worst_group", _F, "worst accuracy over (class, bias attribute) groups"),
    ("acc_many", _F, "accuracy on many-shot classes (long-tailed data)"),
    ("acc_medium", _F, "accuracy on medium-shot classes (long-tailed data)"),
    ("acc_few", _F, "accuracy on few-shot classes (long-tailed data)"),
    ("n_eval_models", _I, "K, the number of evaluation models"),
    ("train_class_counts", _LI, "training samples per class of the real data"),
    ("n_distilled", _I, "number of samples in the distilled set"),
    ("soft_labels", pa.bool_(), "whether the distilled set carries soft labels"),
    ("label_tau", _F, "logit-adjustment tau chosen by the adsa label stage (null for other label stages)"),
    # cost
    ("distill_seconds", _F, "wall time of distillation (0 when the set was reused)"),
    ("eval_seconds", _F, "wall time of the evaluation"),
    ("peak_memory_bytes", _I, "peak resident memory of the trial process (CPU) or peak CUDA memory"),
    ("device", _S, "device of the computation, e.g. cpu or cuda:0 (NVIDIA H100)"),
    ("set_bytes", _I, "bytes of the distilled set's tensors"),
    ("set_reused", pa.bool_(), "the set was loaded from the store instead of distilled again"),
    ("set_path", _S, "path of the distilled set relative to the results directory"),
    # provenance
    ("package_version", _S, "distillbench version"),
    ("git_sha", _S, "git commit of the code (with -dirty if modified), when known"),
    ("torch_version", _S, "torch version"),
    ("ray_version", _S, "ray version, when run under Ray"),
    ("python_version", _S, "Python version"),
    ("node", _S, "host name of the node that ran the trial"),
    ("start_time", _TS, "trial start (UTC)"),
    ("end_time", _TS, "trial end (UTC)"),
    ("schema_version", _I, "version of this schema"),
    # status
    ("status", _S, "ok, error or diverged"),
    ("error", _S, "error text when status is not ok"),
)

SCHEMA = pa.schema([pa.field(name, tp) for name, tp, _ in COLUMNS])
COLUMN_NAMES = tuple(name for name, _, _ in COLUMNS)
METRIC_COLUMNS = (
    "acc_mean",
    "acc_std",
    "acc_per_model",
    "acc_per_class",
    "val_acc_mean",
    "acc_aligned",
    "acc_conflicting",
    "acc_worst_group",
    "acc_many",
    "acc_medium",
    "acc_few",
)
STATUSES = ("ok", "error", "diverged")
_TIME_COLUMNS = ("start_time", "end_time")


def rows_dir(results: Path) -> Path:
    return Path(results) / "rows"


def sets_dir(results: Path) -> Path:
    return Path(results) / "sets"


def check_results_dir(results: Path) -> Path:
    """Resolve ``results`` and make sure it can hold results (not an existing file)."""
    results = Path(results).expanduser().resolve()
    if results.exists() and not results.is_dir():
        raise DistillBenchError(f"results path {str(results)!r} is an existing file; pass a directory with --results")
    for parent in results.parents:
        if parent.exists():
            if not parent.is_dir():
                raise DistillBenchError(f"results path {str(results)!r} is inside a file ({parent})")
            break
    return results


def _atomic_write(path: Path, write: Any) -> None:
    """Call ``write(tmp_path)`` and rename the temporary file onto ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def make_row(values: Mapping[str, Any]) -> dict[str, Any]:
    """A complete row: every schema column present (missing ones null), unknown keys rejected."""
    unknown = set(values) - set(COLUMN_NAMES)
    if unknown:
        raise ValueError(f"unknown row columns {sorted(unknown)}; the schema is declared in harness/store.py")
    row = {name: values.get(name) for name in COLUMN_NAMES}
    row["schema_version"] = SCHEMA_VERSION
    for key in _TIME_COLUMNS:
        if isinstance(row[key], str):
            row[key] = datetime.datetime.fromisoformat(row[key])
    if row["status"] not in STATUSES:
        raise ValueError(f"row status must be one of {STATUSES}, got {row['status']!r}")
    return row


def row_to_json(row: Mapping[str, Any]) -> str:
    """A row as JSON (timestamps as ISO 8601), for sending it from a worker to the driver."""
    return json.dumps(
        {k: (v.isoformat() if isinstance(v, datetime.datetime) else v) for k, v in row.items()}, sort_keys=True
    )


def row_from_json(text: str) -> dict[str, Any]:
    """Inverse of :func:`row_to_json`; the result is a complete row."""
    return make_row(json.loads(text))


def rows_to_json(rows: list[Mapping[str, Any]]) -> str:
    """A trial's rows as one JSON array (see :func:`row_to_json`)."""
    return "[" + ",".join(row_to_json(r) for r in rows) + "]"


def rows_from_json(text: str) -> list[dict[str, Any]]:
    """Inverse of :func:`rows_to_json`."""
    return [make_row(r) for r in json.loads(text)]


def write_rows(results: Path, rows: list[Mapping[str, Any]]) -> Path:
    """Write one trial's rows (one per evaluation network) to ``<results>/rows/<trial_id>.parquet`` atomically."""
    complete = [make_row(r) for r in rows]
    ids = {r["trial_id"] for r in complete}
    if len(ids) != 1 or not next(iter(ids)):
        raise ValueError(f"the rows of one file must share one non-empty trial_id, got {sorted(map(str, ids))}")
    table = pa.Table.from_pylist(complete, schema=SCHEMA)
    path = rows_dir(results) / f"{complete[0]['trial_id']}.parquet"
    _atomic_write(path, lambda tmp: pq.write_table(table, tmp))
    return path


def write_row(results: Path, values: Mapping[str, Any]) -> Path:
    """Write a trial with a single row; see :func:`write_rows`."""
    return write_rows(results, [values])


def existing_trial_ids(results: Path, *, status: Iterable[str] | None = None) -> set[str]:
    """Trial ids that already have a row (optionally only rows with one of the given statuses)."""
    directory = rows_dir(results)
    if not directory.is_dir():
        return set()
    ids = {p.stem for p in directory.glob("*.parquet") if not p.name.startswith(".")}
    if status is None:
        return ids
    wanted = set(status)
    frame = read_rows([results], columns=["trial_id", "status"])
    # A trial counts when every one of its rows (one per evaluation network) has a wanted status.
    done = frame.groupby("trial_id")["status"].agg(lambda s: set(s) <= wanted)
    return {str(t) for t, ok in done.items() if ok}


def read_rows(results: Iterable[Path], *, columns: list[str] | None = None, on_bad: Any = None):  # noqa: ANN201
    """All rows of one or more results directories as one pandas DataFrame.

    Args:
        results: results directories.
        columns: subset of columns to read.
        on_bad: called as ``on_bad(path, reason)`` for an unreadable or foreign Parquet file, which
            is then skipped; without it such a file raises ``DataError``.
    """
    import pandas as pd

    tables = []
    for result_dir in results:
        directory = rows_dir(Path(result_dir))
        if not directory.is_dir():
            continue
        for path in sorted(directory.glob("*.parquet")):
            if path.name.startswith("."):
                continue  # an unfinished temporary file of a write in progress
            try:
                table = pq.read_table(path)
            except Exception as exc:
                reason = f"not a readable Parquet file ({type(exc).__name__}: {exc})"
                if on_bad is None:
                    raise DataError(f"{path}: {reason}") from None
                on_bad(path, reason)
                continue
            missing = [n for n in ("trial_id", "status", "schema_version") if n not in table.column_names]
            if missing:
                reason = f"not a distillbench row (missing columns {missing})"
                if on_bad is None:
                    raise DataError(f"{path}: {reason}")
                on_bad(path, reason)
                continue
            version = max(table.column("schema_version").to_pylist() or [0])
            if version > SCHEMA_VERSION:
                raise DataError(
                    f"{path}: row schema version {version} is newer than this distillbench understands "
                    f"({SCHEMA_VERSION}); upgrade distillbench to read it"
                )
            table = table.select([c for c in COLUMN_NAMES if c in table.column_names])
            tables.append(table.cast(pa.schema([SCHEMA.field(c) for c in table.column_names])))
    if not tables:
        frame = SCHEMA.empty_table().to_pandas()
    else:
        frame = pa.concat_tables(tables, promote_options="default").to_pandas()
    if columns is not None:
        frame = frame[columns]
    return frame if isinstance(frame, pd.DataFrame) else pd.DataFrame(frame)


# ------------------------------------------------------------------------------- distilled sets
def save_set(directory: Path, stem: str, dset: Any, meta: Mapping[str, Any]) -> Path:
    """Save a DistilledSet as ``<directory>/<stem>.safetensors`` plus ``.json`` metadata, atomically.

    In a results directory the set goes to ``sets_dir(results)`` under its ``distill_id``. The JSON
    is written last, so a set counts as present only when both files are complete.
    """
    from safetensors.torch import save_file

    tensors = {"x": dset.x.detach().cpu().contiguous(), "y": dset.y.detach().cpu().contiguous()}
    for key, value in dset.extras.items():
        tensors[f"extra.{key}"] = value.detach().cpu().contiguous()
    base = Path(directory) / stem
    tensor_path = base.with_suffix(".safetensors")
    _atomic_write(tensor_path, lambda tmp: save_file(tensors, tmp))
    document = {"set_meta": dset.meta, **meta}
    text = json.dumps(document, indent=2, sort_keys=True, default=str)
    _atomic_write(base.with_suffix(".json"), lambda tmp: Path(tmp).write_text(text))
    return tensor_path


def find_set(results: Path, distill_id: str) -> Path | None:
    """The tensor file of a complete saved set, or None."""
    base = sets_dir(results) / distill_id
    tensor_path = base.with_suffix(".safetensors")
    return tensor_path if tensor_path.is_file() and base.with_suffix(".json").is_file() else None


def load_set(path: Path) -> tuple[Any, dict[str, Any]]:
    """Load a set saved by :func:`save_set`: ``(DistilledSet, metadata)``.

    Raises:
        DataError: the file or its JSON metadata is missing or unreadable.
    """
    from safetensors.torch import load_file

    from distillbench.harness.types import DistilledSet

    path = Path(path)
    if path.suffix == ".json":
        path = path.with_suffix(".safetensors")
    meta_path = path.with_suffix(".json")
    if not path.is_file():
        raise DataError(f"distilled set {str(path)!r} does not exist; pass the .safetensors file written by a run")
    if not meta_path.is_file():
        raise DataError(f"distilled set {str(path)!r} has no metadata file {meta_path.name!r} beside it")
    try:
        tensors = load_file(str(path))
        meta = json.loads(meta_path.read_text())
    except Exception as exc:
        raise DataError(f"cannot read distilled set {str(path)!r}: {type(exc).__name__}: {exc}") from None
    if "x" not in tensors or "y" not in tensors:
        raise DataError(f"{str(path)!r} is not a distilled set (tensors 'x' and 'y' missing)")
    extras = {k.removeprefix("extra."): v for k, v in tensors.items() if k.startswith("extra.")}
    return DistilledSet(tensors["x"], tensors["y"], extras, dict(meta.get("set_meta", {}))), meta
