"""The results store: one Parquet row per trial, and distilled sets as safetensors plus JSON.

Layout of a results directory::

    <results>/rows/<trial_id>.parquet       one row, schema SCHEMA (written atomically)
    <results>/rows/compacted-<uuid>.parquet many trials' rows, merged by compact() (see latest_rows)
    <results>/sets/<distill_id>.safetensors the distilled set (x, y, extras)
    <results>/sets/<distill_id>.json        its metadata (spec, method, dataset, cost)

The schema is declared once, here. Metric column names are fixed because scripts and other tools
read them. Every write goes to a temporary file in the same directory and is renamed into place,
so a crash never leaves half a row or half a set; rows are keyed by ``trial_id``, so writing the
same trial twice replaces the row instead of duplicating it (also after compaction: the newer copy wins).

A results directory is a local path, an NFS path or an object-store URI (``s3://bucket/prefix``):
every read and write goes through one :class:`Location` on a ``pyarrow.fs`` file system. On object
stores, which cannot rename, a file is one whole-object PUT (atomic per object) instead.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import errno
import functools
import json
import os
import tempfile
import uuid
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from distillbench.harness.errors import ConfigError, DataError, DistillBenchError

SCHEMA_VERSION = 1

_F = pa.float64()
_LF = pa.list_(pa.float64())
_LI = pa.list_(pa.int64())
_S = pa.string()
_I = pa.int64()
_TS = pa.timestamp("us", tz="UTC")

GROUPS = ("identity", "metrics", "cost", "provenance", "status")
# Finer sets inside a group that code selects together. accuracy, validation, bias and long_tail are what an
# evaluation measures (each an attribute of ``EvalResult`` of the same name); validation holds the metrics of
# the validation split, the only ones a search may optimise (harness/tuning.py); versions are the provenance
# the leaderboard summarises; tuning the columns of searched and tuned trials.
FAMILIES = ("accuracy", "validation", "bias", "long_tail", "versions", "tuning")


@dataclasses.dataclass(frozen=True)
class Column:
    """One column of the row schema.

    Attributes:
        name: the Parquet column name; fixed, because scripts and other tools read it.
        type: the pyarrow type.
        description: what the column holds.
        group: one of :data:`GROUPS`.
        label: what the leaderboard's CSV, HTML and Markdown headers show; the name when not given.
        family: one of :data:`FAMILIES`, or None.
        tracked: a scalar metric a trial reports to Ray Tune (and so to its TensorBoard, MLflow and W&B
            loggers) when it ends; see :func:`tracked_values`.
    """

    name: str
    type: pa.DataType
    description: str
    group: str
    label: str = ""
    family: str | None = None
    tracked: bool = False

    def __post_init__(self) -> None:
        if self.group not in GROUPS or (self.family is not None and self.family not in FAMILIES):
            raise ValueError(f"column {self.name!r}: unknown group {self.group!r} or family {self.family!r}")
        if self.tracked and not (pa.types.is_floating(self.type) or pa.types.is_integer(self.type)):
            raise ValueError(f"column {self.name!r}: only a number can be tracked, not {self.type}")
        if not self.label:
            object.__setattr__(self, "label", self.name)


_identity = functools.partial(Column, group="identity")
_metric = functools.partial(Column, group="metrics")
_cost = functools.partial(Column, group="cost")
_provenance = functools.partial(Column, group="provenance")
_status = functools.partial(Column, group="status")

# The one declaration of the row schema; everything else derives from it. Order is the column order of
# every row file.
COLUMNS: tuple[Column, ...] = (
    _identity("trial_id", _S, "hash of the canonical, fully resolved trial spec"),
    _identity("distill_id", _S, "hash of the part of the spec that determines the distilled set"),
    _identity("grid", _S, "name of the grid that ran the trial"),
    _identity("dataset", _S, "dataset display name with non-default parameters, e.g. digits"),
    _identity("dataset_params", _S, "all dataset parameters as JSON"),
    _identity("method", _S, "method display name with non-default parameters, e.g. dm[iterations=200]"),
    _identity("method_name", _S, "bare method name, e.g. dm"),
    _identity("method_params", _S, "all method parameters as JSON"),
    _identity("weighting", _S, "weighting display name (none, kde[...])"),
    _identity("labels", _S, "label stage display name (native, teacher, adsa)"),
    _identity("ipc", _I, "samples per class asked for"),
    _identity("seed", _I, "distillation seed; evaluation seeds derive from it"),
    _identity("protocol", _S, "evaluation protocol name"),
    _identity("protocol_version", _I, "evaluation protocol version"),
    _identity("eval_network", _S, "network spec trained by the protocol"),
    _identity("spec_json", _S, "the full resolved trial spec as canonical JSON"),
    # tuning (harness/tuning.py): null for trials that no tune: section made
    _identity(
        "tuning_id", _S, "the search this trial belongs to (hash of the cell, tune settings and space)", family="tuning"
    ),
    _identity(
        "tune_role",
        _S,
        "search (a trial of the search, not a result) or final (the chosen configuration)",
        family="tuning",
    ),
    _identity(
        "tune_budget",
        _S,
        "the search budget of every cell of the block, e.g. 16 trials or 2.5 trial-hours",
        family="tuning",
    ),
    _identity(
        "tune_budget_spent",
        _F,
        "final rows: budget the search used, in the budget's unit (an early-stopped trial counts as one trial, or "
        "with the hours it ran; an error does not count); null on search rows",
        family="tuning",
    ),
    _identity("tune_space_hash", _S, "hash of the method's search space", family="tuning"),
    _identity(
        "tune_params", _S, "search rows: the sampled parameters; final rows: the chosen ones (JSON)", family="tuning"
    ),
    # metrics (fractions in [0, 1]; null where they do not apply)
    _metric("acc_mean", _F, "mean test accuracy over the K evaluation models", family="accuracy", tracked=True),
    _metric("acc_std", _F, "std (ddof=0) of the test accuracy over the K models", family="accuracy", tracked=True),
    _metric("acc_per_model", _LF, "test accuracy of each evaluation model", family="accuracy"),
    _metric("acc_per_class", _LF, "per-class test accuracy, averaged over the models", family="accuracy"),
    _metric("val_acc_mean", _F, "mean validation-split accuracy over the models", family="validation", tracked=True),
    _metric(
        "acc_aligned",
        _F,
        "accuracy on bias-aligned test samples (biased datasets)",
        label="Aligned",
        family="bias",
        tracked=True,
    ),
    _metric(
        "acc_conflicting",
        _F,
        "accuracy on bias-conflicting test samples (biased datasets)",
        label="Conflicting",
        family="bias",
        tracked=True,
    ),
    _metric(
        "acc_worst_group",
        _F,
        "worst accuracy over (class, bias attribute) groups",
        label="Worst group",
        family="bias",
        tracked=True,
    ),
    _metric(
        "acc_many",
        _F,
        "accuracy on many-shot classes (long-tailed data)",
        label="Many",
        family="long_tail",
        tracked=True,
    ),
    _metric(
        "acc_medium",
        _F,
        "accuracy on medium-shot classes (long-tailed data)",
        label="Medium",
        family="long_tail",
        tracked=True,
    ),
    _metric(
        "acc_few", _F, "accuracy on few-shot classes (long-tailed data)", label="Few", family="long_tail", tracked=True
    ),
    _metric("n_eval_models", _I, "K, the number of evaluation models"),
    _metric("train_class_counts", _LI, "training samples per class of the real data"),
    _metric("n_distilled", _I, "number of samples in the distilled set"),
    _metric("soft_labels", pa.bool_(), "whether the distilled set carries soft labels"),
    _metric("label_tau", _F, "logit-adjustment tau chosen by the adsa label stage (null for other label stages)"),
    _cost("distill_seconds", _F, "wall time of distillation (0 when the set was reused)", tracked=True),
    _cost(
        "buffer_seconds",
        _F,
        "wall time this trial spent building the cached expert trajectories its method trains on (0 when they "
        "were reused, null for methods without them); included in distill_seconds",
    ),
    _cost("eval_seconds", _F, "wall time of the evaluation", tracked=True),
    _cost(
        "peak_memory_bytes",
        _I,
        "peak CUDA memory, or peak resident memory of the process during the trial (CPU)",
        tracked=True,
    ),
    _cost("device", _S, "device of the computation, e.g. cpu or cuda:0 (NVIDIA H100)"),
    _cost("set_bytes", _I, "bytes of the distilled set's tensors"),
    _cost("set_reused", pa.bool_(), "the set was loaded from the store instead of distilled again"),
    _cost("set_path", _S, "path of the distilled set relative to the results directory"),
    _provenance("package_version", _S, "distillbench version", label="distillbench", family="versions"),
    _provenance(
        "git_sha",
        _S,
        "git commit of the code (with -dirty if modified), when known",
        label="git sha",
        family="versions",
    ),
    _provenance("torch_version", _S, "torch version", label="torch", family="versions"),
    _provenance("ray_version", _S, "ray version, when run under Ray", label="ray", family="versions"),
    _provenance("python_version", _S, "Python version", label="Python", family="versions"),
    _provenance("node", _S, "host name of the node that ran the trial"),
    _provenance("start_time", _TS, "trial start (UTC)"),
    _provenance("end_time", _TS, "trial end (UTC)"),
    _provenance("schema_version", _I, "version of this schema"),
    _status("status", _S, "ok, error, diverged, or stopped (a search trial ended early by ASHA)"),
    _status("error", _S, "error text when status is not ok"),
    _status(
        "effective_method_params",
        _S,
        "method parameters actually used, as JSON, when they differ from method_params (a smaller batch "
        "after running out of memory); null otherwise",
    ),
    _status("notes", _S, "what the harness changed while running the trial (an out-of-memory retry); null otherwise"),
)


def columns(*, group: str | None = None, family: str | Iterable[str] | None = None) -> tuple[Column, ...]:
    """The declared columns in row order, optionally only those of one group and of the given families.

    Raises:
        ValueError: an unknown group or family (a typo would otherwise select nothing).
    """
    families = (family,) if isinstance(family, str) else None if family is None else tuple(family)
    unknown = ({group} - set(GROUPS) if group is not None else set()) | (set(families or ()) - set(FAMILIES))
    if unknown:
        raise ValueError(f"unknown column group or family {sorted(unknown)}; groups {GROUPS}, families {FAMILIES}")
    return tuple(
        c for c in COLUMNS if (group is None or c.group == group) and (families is None or c.family in families)
    )


def column_names(*, group: str | None = None, family: str | Iterable[str] | None = None) -> tuple[str, ...]:
    """The names of :func:`columns` (same arguments)."""
    return tuple(c.name for c in columns(group=group, family=family))


SCHEMA = pa.schema([pa.field(c.name, c.type) for c in COLUMNS])
COLUMN_NAMES = column_names()
# stopped: a search trial that early stopping (ASHA) ended before its evaluation; a result of the search
# (it used budget, it is not run again) that holds no accuracy.
STATUSES = ("ok", "error", "diverged", "stopped")
_TIME_COLUMNS = tuple(c.name for c in COLUMNS if pa.types.is_timestamp(c.type))


def trial_status(statuses: Iterable[str]) -> str:
    """The status of a trial from the statuses of its rows (one row per evaluation network of its protocol).

    The worst row decides: ``ok`` only if every row is ok, ``error`` if any row is error (or holds a status
    this version does not know), else ``diverged``. Error outranks diverged because an error row means that
    network has no result yet, so the trial must run again; a diverged row is a result. The order of the
    rows never matters. ``stopped`` (a search trial ended early, which has one row) is the status only when
    every row says so; mixed with others it counts as ``diverged`` (a result without every accuracy).

    Raises:
        ValueError: ``statuses`` is empty (a trial without rows has no status).

    Example:
        >>> trial_status(["ok", "diverged", "ok"])
        'diverged'
        >>> trial_status(["diverged", "error"])
        'error'
    """
    seen = set(statuses)
    if not seen:
        raise ValueError("a trial without rows has no status")
    if seen <= {"ok"}:
        return "ok"
    if seen == {"stopped"}:
        return "stopped"
    return "diverged" if seen <= {"ok", "diverged", "stopped"} else "error"


# ------------------------------------------------------------------------------------- locations
@dataclasses.dataclass(frozen=True)
class Location:
    """A file or directory on a local, network (NFS) or object-store file system, through ``pyarrow.fs``.

    Attributes:
        fs: the pyarrow file system.
        path: the path inside ``fs`` (no scheme, no trailing slash).
        uri: what users and other processes are given: an absolute local path, or
            ``scheme://bucket/prefix`` with the query (``?endpoint_override=...&region=...``) kept, so
            a Ray worker that receives it reaches the same store.
    """

    fs: Any
    path: str
    uri: str

    @property
    def local(self) -> bool:
        """Whether this is a local (or NFS-mounted) path, where files can be renamed atomically."""
        return isinstance(self.fs, pafs.LocalFileSystem)

    @property
    def name(self) -> str:
        return self.path.rsplit("/", 1)[-1]

    def __truediv__(self, part: str) -> Location:
        base, sep, query = self.uri.partition("?")
        return Location(self.fs, f"{self.path}/{part}", f"{base.rstrip('/')}/{part}{sep}{query}")

    def __str__(self) -> str:
        # Without the query: messages never show endpoints or credentials passed in the URI.
        return self.uri.partition("?")[0]

    def native(self) -> Path | str:
        """A ``Path`` for a local location, else the URI (what callers outside the store expect)."""
        return Path(self.path) if self.local else self.uri

    def exists(self) -> bool:
        return self.fs.get_file_info(self.path).type != pafs.FileType.NotFound

    def is_file(self) -> bool:
        return self.fs.get_file_info(self.path).type == pafs.FileType.File

    def is_dir(self) -> bool:
        return self.fs.get_file_info(self.path).type == pafs.FileType.Directory

    def files(self, suffix: str) -> list[Location]:
        """Complete files directly in this directory whose names end with ``suffix``, sorted by name.

        Hidden names (a local write in progress is ``.<name>.<random>.tmp``) are left out.
        """
        infos = self.fs.get_file_info(pafs.FileSelector(self.path, allow_not_found=True))
        names = sorted(
            i.base_name
            for i in infos
            if i.type == pafs.FileType.File and i.base_name.endswith(suffix) and not i.base_name.startswith(".")
        )
        return [self / n for n in names]

    def read_bytes(self) -> bytes:
        with self.fs.open_input_stream(self.path) as stream:
            return stream.read()

    def write_bytes(self, data: bytes) -> None:
        """Write the whole file atomically: readers see the old file, the new one, or nothing.

        Local and NFS paths: a temporary file in the same directory, renamed into place. Object
        stores have no rename, but a single PUT of a whole object is atomic per object; the bytes
        are built in memory first and sent as one object, so no partial object is ever visible.
        """
        if self.local:
            atomic_write(Path(self.path), lambda tmp: Path(tmp).write_bytes(data))
            return
        parent = self.path.rsplit("/", 1)[0]
        if self.fs.type_name not in ("s3", "gcs"):  # object stores have no directories to create
            self.fs.create_dir(parent, recursive=True)
        with self.fs.open_output_stream(self.path) as stream:
            stream.write(data)

    def delete(self) -> None:
        """Remove the file if it exists."""
        with contextlib.suppress(FileNotFoundError):
            self.fs.delete_file(self.path)


@functools.lru_cache(maxsize=16)
def _filesystem(uri: str) -> tuple[Any, str]:
    # One file-system object per URI and process: an S3 client is expensive to create, rows are many.
    return pafs.FileSystem.from_uri(uri)


def location(where: str | Path | Location) -> Location:
    """The :class:`Location` of a results directory or file: a local path, an NFS path or a URI.

    ``s3://bucket/prefix`` (and any other URI pyarrow knows) goes through
    ``pyarrow.fs.FileSystem.from_uri``; S3 options ride in the query, e.g.
    ``s3://bucket/prefix?region=eu-west-1&endpoint_override=http://127.0.0.1:9000&scheme=http``.
    Credentials come from the usual AWS variables or files. Anything else is a local path
    (``~`` expanded, made absolute).

    Raises:
        DistillBenchError: the URI cannot be opened (unknown scheme, malformed query).
    """
    if isinstance(where, Location):
        return where
    text = str(where)
    if "://" in text and not text.startswith("file://"):
        try:
            fs, path = _filesystem(text)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError, OSError, ValueError) as exc:
            raise DistillBenchError(
                f"cannot open results location {text.partition('?')[0]!r}: {exc}; pass a local path or a URI "
                "such as s3://bucket/prefix"
            ) from None
        path = path.rstrip("/")
        if not path:
            raise DistillBenchError(f"results location {text!r} names no bucket or folder")
        return Location(fs, path, text)
    local = Path(text.removeprefix("file://")).expanduser().resolve()
    return Location(_LOCAL_FS, str(local), str(local))


_LOCAL_FS = pafs.LocalFileSystem()


def rows_dir(results: str | Path | Location) -> Path | str:
    """``<results>/rows``: a ``Path`` for local results, else a URI."""
    return (location(results) / "rows").native()


def sets_dir(results: str | Path | Location) -> Path | str:
    """``<results>/sets``: a ``Path`` for local results, else a URI."""
    return (location(results) / "sets").native()


def check_results_dir(results: str | Path) -> Path | str:
    """Resolve ``results`` and make sure it can hold results (not an existing file).

    Local paths come back resolved (a ``Path``); URIs come back as they are, after the store was
    reached (so a wrong bucket or endpoint fails here, before anything runs).
    """
    loc = location(results)
    if not loc.local:
        try:
            info = loc.fs.get_file_info(loc.path)
        except OSError as exc:
            raise DistillBenchError(f"cannot reach results location {str(loc)!r}: {exc}") from None
        if info.type == pafs.FileType.File:
            raise DistillBenchError(f"results location {str(loc)!r} is an object, not a prefix; pass a folder")
        bucket = loc.path.split("/", 1)[0]
        if loc.fs.type_name in ("s3", "gcs") and loc.fs.get_file_info(bucket).type == pafs.FileType.NotFound:
            raise DistillBenchError(
                f"bucket {bucket!r} of results location {str(loc)!r} does not exist (or these credentials cannot "
                "see it); create it first or fix the URI"
            )
        return loc.uri
    path = Path(loc.path)
    if path.exists() and not path.is_dir():
        raise DistillBenchError(f"results path {str(path)!r} is an existing file; pass a directory with --results")
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise DistillBenchError(f"results path {str(path)!r} is inside a file ({parent})")
            break
    return path


def _umask() -> int:
    """The process umask, read without changing it where possible.

    ``/proc/self/status`` (Linux 4.7+) shows it directly. Elsewhere the only way is to set a umask and put
    the old one back, which other threads can observe; setting ``0o077`` for that instant can only make a
    file another thread creates meanwhile more private, never more open (``os.umask(0)`` could make it
    world-writable). Read on every write, not once at import, so a umask set later (by the user's
    launcher, a test) is respected.
    """
    with contextlib.suppress(OSError, ValueError), open("/proc/self/status", encoding="ascii", errors="replace") as fh:
        for line in fh:
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    previous = os.umask(0o077)
    os.umask(previous)
    return previous


def atomic_write(path: Path, write: Any) -> None:
    """Call ``write(tmp_path)`` on a temporary file beside ``path``, then rename it onto ``path``.

    Readers see the old file or the whole new one, never a part: the one way local files are written
    (rows, sets, teachers, leaderboards). The file gets the mode a plain ``open(path, "w")`` would give
    (``0o666`` less the umask): ``mkstemp`` creates it ``0o600``, which would hide results from the
    group that shares a results directory.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_umask())
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


def tracked_values(rows: list[Mapping[str, Any]]) -> dict[str, float]:
    """A trial's tracked scalar metrics (columns declared ``tracked=True``) as numbers for Tune and its loggers.

    The first row (the protocol's primary network) gives the plain column names, e.g. ``acc_mean``; a
    further row, of another evaluation network, gives ``<name>/<network>`` (the network spec with characters
    trackers refuse in names replaced by ``_``). Nulls and NaN (a metric that does not apply) are left out.
    """
    import re

    out: dict[str, float] = {}
    for i, row in enumerate(rows):
        suffix = "" if i == 0 else "/" + re.sub(r"[^\w.\-]+", "_", str(row.get("eval_network"))).strip("_")
        for column in COLUMNS:
            value = row.get(column.name) if column.tracked else None
            if isinstance(value, int | float) and not isinstance(value, bool) and value == value:  # not NaN
                out[column.name + suffix] = value
    return out


def write_rows(results: str | Path | Location, rows: list[Mapping[str, Any]]) -> Path | str:
    """Write one trial's rows (one per evaluation network) to ``<results>/rows/<trial_id>.parquet`` atomically.

    ``results`` is a local path, an NFS path or a URI (see :func:`location`); the file appears whole or not at all.
    """
    complete = [make_row(r) for r in rows]
    ids = {r["trial_id"] for r in complete}
    if len(ids) != 1 or not next(iter(ids)):
        raise ValueError(f"the rows of one file must share one non-empty trial_id, got {sorted(map(str, ids))}")
    table = pa.Table.from_pylist(complete, schema=SCHEMA)
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    target = location(results) / "rows" / f"{complete[0]['trial_id']}.parquet"
    target.write_bytes(sink.getvalue().to_pybytes())
    return target.native()


def write_row(results: str | Path | Location, values: Mapping[str, Any]) -> Path | str:
    """Write a trial with a single row; see :func:`write_rows`."""
    return write_rows(results, [values])


def row_stamps(results: str | Path | Location) -> dict[str, int | None]:
    """The stamp of every trial's rows, by trial id: the store's modification time (ns) of its row file.

    A scheduler compares a stamp taken when it started with one taken later to tell whether another run
    wrote the trial's row meanwhile (the times are the store's, so no clocks are compared). A compacted
    trial keeps the stamp of the small file it came from, so a compaction in between changes no stamp.
    """
    table = read_table([results], columns=["trial_id"], on_bad=lambda path, reason: None, _internal=True)
    return dict(zip(table.column("trial_id").to_pylist(), table.column(_STAMP).to_pylist(), strict=True))


def row_stamp(results: str | Path | Location, trial_id: str) -> int | None:
    """The stamp of one trial's rows, or ``None`` if it has no row (see :func:`row_stamps`).

    Its small file's time when there is one (newer than any compacted copy), else the stamp its compacted
    rows carry: only the compacted files are read, and only their ``trial_id`` and stamp columns.
    """
    import pyarrow.dataset as ds

    rows = location(results) / "rows"
    info = rows.fs.get_file_info(f"{rows.path}/{trial_id}.parquet")
    if info.type == pafs.FileType.File:
        return info.mtime_ns
    compacted = [f.loc.path for f in _list_row_files(rows) if f.compacted]
    if not compacted:
        return None
    try:
        dataset = ds.FileSystemDataset.from_paths(
            compacted, schema=_READ_SCHEMA, format=ds.ParquetFileFormat(), filesystem=rows.fs
        )
        stamps = dataset.to_table(columns=[_STAMP], filter=ds.field("trial_id") == trial_id).column(_STAMP)
    except (OSError, pa.ArrowException):
        # A compacted file removed meanwhile (merged by another compaction) or unreadable: the full read
        # re-lists and skips bad files.
        return row_stamps(results).get(trial_id)
    return max(stamps.to_pylist()) if len(stamps) else None


# errno values after which no further write to the store can succeed: retrying, or writing the next
# trial's row, only fails again, so a run stops instead.
_FULL_OR_READ_ONLY = {
    errno.ENOSPC: "no space left on the device: free space there, or pass another --results",
    errno.EDQUOT: "the disk quota is exhausted: free space there, or pass another --results",
    errno.EROFS: "the file system is read-only: remount it writable, or pass a writable --results",
    errno.EACCES: "permission denied: let this user write there, or pass another --results",
    errno.EPERM: "operation not permitted: let this user write there, or pass another --results",
}
# The same conditions as object stores and pyarrow word them (their OSErrors carry no errno).
_FULL_OR_READ_ONLY_TEXT = {
    "No space left on device": errno.ENOSPC,
    "Disk quota exceeded": errno.EDQUOT,
    "Read-only file system": errno.EROFS,
    "Permission denied": errno.EACCES,
    "AccessDenied": errno.EACCES,
}


def storage_problem(exc: BaseException) -> str | None:
    """What is wrong with the store and how to fix it, when ``exc`` says it takes no more writes; else ``None``.

    Disk full, quota exhausted, read-only file system and permission denied count (an ``OSError`` with that
    errno anywhere in the exception's chain, or pyarrow's wording of it); anything else is ``None``: a
    problem of one row, not of the store.
    """
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, OSError) and current.errno in _FULL_OR_READ_ONLY:
            return _FULL_OR_READ_ONLY[current.errno]
        text = str(current)
        for words, code in _FULL_OR_READ_ONLY_TEXT.items():
            if words in text:
                return _FULL_OR_READ_ONLY[code]
        current = current.__cause__ or current.__context__
    return None


def write_problem_message(where: str | Path | Location, exc: BaseException) -> str:
    """One line for a failed write to ``where``: the path, the reason, the fix, and that finished rows are kept."""
    reason = storage_problem(exc) or f"{type(exc).__name__}: {exc}"
    return (
        f"cannot write to {location(where)}: {reason}; rows already written are kept, and running the same "
        "command again afterwards finishes the rest"
    )


def check_writable(results: str | Path | Location) -> None:
    """Make sure ``<results>/rows`` takes a new file, before a run starts anything (call it before Ray starts).

    Writes and removes a small hidden probe file (64 KiB, synced to disk locally), so a read-only file
    system, missing permission or a full disk fails here in one line instead of at the first row.

    Raises:
        DistillBenchError: the rows folder cannot be written; the message names the path and the fix.
    """
    rows = location(results) / "rows"
    probe = rows / f".write-check-{uuid.uuid4().hex}.tmp"
    data = b"\0" * 65536
    try:
        if rows.local:
            Path(rows.path).mkdir(parents=True, exist_ok=True)
            fd = os.open(probe.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            try:
                os.write(fd, data)
                os.fsync(fd)
            finally:
                os.close(fd)
                Path(probe.path).unlink(missing_ok=True)
        else:
            probe.write_bytes(data)
            probe.delete()
    except OSError as exc:
        problem = storage_problem(exc) or f"{type(exc).__name__}: {exc}"
        raise DistillBenchError(f"cannot write rows to {rows}: {problem}") from None


def existing_trial_ids(
    results: str | Path | Location, *, status: Iterable[str] | None = None, on_bad: Any = None
) -> set[str]:
    """Trial ids that already have a row (optionally only trials whose :func:`trial_status` is one given).

    A corrupt or foreign row file is skipped (passed to ``on_bad(path, reason)`` when given): its trial
    counts as not done and runs again, which overwrites the file, so one bad file never blocks a resume.
    """
    if status is None:
        table = read_table([results], columns=["trial_id"], on_bad=on_bad or (lambda path, reason: None))
        return set(table.column("trial_id").to_pylist())
    wanted = set(status)
    return {t for t, s in trial_statuses(results, on_bad=on_bad).items() if s in wanted}


def trial_statuses(results: str | Path | Location, *, on_bad: Any = None) -> dict[str, str]:
    """The :func:`trial_status` of every trial with rows in ``results``, by trial id.

    A corrupt or foreign row file is skipped (passed to ``on_bad(path, reason)`` when given).
    """
    table = read_table([results], columns=["trial_id", "status"], on_bad=on_bad or (lambda path, reason: None))
    by_trial: dict[str, list[str]] = {}
    for trial_id, status in zip(table.column("trial_id").to_pylist(), table.column("status").to_pylist(), strict=True):
        by_trial.setdefault(trial_id, []).append(status)
    return {trial_id: trial_status(statuses) for trial_id, statuses in by_trial.items()}


def read_rows(results: Iterable[str | Path | Location], *, columns: list[str] | None = None, on_bad: Any = None):  # noqa: ANN201
    """All rows of one or more results directories (local paths or URIs) as one pandas DataFrame.

    Each trial's rows appear once per results directory (see :func:`latest_rows`), also while a
    compaction runs.

    Args:
        results: results directories.
        columns: subset of columns to read (only these are read from the files).
        on_bad: called as ``on_bad(path, reason)`` for an unreadable or foreign Parquet file, which
            is then skipped; without it such a file raises ``DataError``.
    """
    import pandas as pd

    table = read_table(results, columns=columns, on_bad=on_bad)
    frame = table.to_pandas()
    # A column no row holds (files of an older writer lack it) reads as None, not as pandas' NaN, as it always did.
    for name in table.column_names:
        if table.column(name).null_count == table.num_rows:
            frame[name] = None
    return frame if isinstance(frame, pd.DataFrame) else pd.DataFrame(frame)


# ---------------------------------------------------------------------------------- compaction
# Small files are ``<trial_id>.parquet`` (one trial, written by a run); compacted files are
# ``compacted-<uuid>.parquet`` (many trials, written by compact()). A trial id is a hex hash, so it never
# starts with this prefix.
COMPACTED_PREFIX = "compacted-"
# Hidden column of compacted files: for each row, the stamp (store mtime, ns) of the small file it came
# from. It orders copies of one trial (see latest_rows) and is never shown to readers.
_STAMP = "_row_stamp"
_FILE = "__filename"  # pyarrow.dataset's per-row source path
_KEY_COLUMNS = ("trial_id", "status", "schema_version")
_READ_SCHEMA = SCHEMA.append(pa.field(_STAMP, _I))
_READ_ATTEMPTS = 8
_SCAN_GROUP = 500


@dataclasses.dataclass(frozen=True)
class _RowFile:
    loc: Location
    mtime_ns: int
    compacted: bool


@dataclasses.dataclass
class Compaction:
    """What :func:`compact` did.

    Attributes:
        compacted: the compacted file written, or None when there was nothing to merge.
        merged_files: row files merged (small and older compacted ones).
        removed_files: of those, the files removed afterwards (a small file rewritten meanwhile is kept).
        trials: trials in the compacted file.
        rows: rows in the compacted file.
    """

    compacted: Path | str | None = None
    merged_files: int = 0
    removed_files: int = 0
    trials: int = 0
    rows: int = 0


class _Vanished(Exception):
    """A listed row file was gone when read: a compaction removed it; list again."""


def _list_row_files(rows: Location) -> list[_RowFile]:
    infos = rows.fs.get_file_info(pafs.FileSelector(rows.path, allow_not_found=True))
    return sorted(
        (
            _RowFile(rows / i.base_name, int(i.mtime_ns or 0), i.base_name.startswith(COMPACTED_PREFIX))
            for i in infos
            if i.type == pafs.FileType.File and i.base_name.endswith(".parquet") and not i.base_name.startswith(".")
        ),
        key=lambda f: f.loc.name,
    )


def latest_rows(table: Any) -> Any:
    """``table`` with each trial's rows from one source only: the newest copy. The one dedup rule of every reader.

    A trial can have several copies in one results directory: its compacted rows and its small file (a
    reader that lists while a compaction removes the small files, or a trial re-run after it was
    compacted), or two compacted files (two compactions at once). The copy with the newest stamp wins
    (the store's modification time of the small file the rows were written to, kept through compactions),
    then a small file over a compacted one (same stamp: the same write), then the later file name. Every
    row of the winning copy is kept (one per evaluation network).

    Args:
        table: rows with the columns ``trial_id``, ``_row_stamp`` (int, not null) and ``__filename``.
    """
    import pyarrow.compute as pc

    if table.num_rows == 0:
        return table
    names = table.column(_FILE)
    is_small = pc.cast(pc.invert(pc.match_substring(names, "/" + COMPACTED_PREFIX)), pa.int8())
    copies = (
        pa.table(
            {"trial_id": table.column("trial_id"), "stamp": table.column(_STAMP), "small": is_small, "file": names}
        )
        .group_by(["trial_id", "stamp", "small", "file"])
        .aggregate([])
        .to_pandas()
    )
    if not copies["trial_id"].duplicated().any():
        return table  # the usual case: every trial in one file
    copies = copies.sort_values(["trial_id", "stamp", "small", "file"], ascending=[True, False, False, False])
    copies = copies.drop_duplicates("trial_id")
    winners = pa.array([f"{t}\0{f}" for t, f in zip(copies["trial_id"], copies["file"], strict=True)])
    keys = pc.binary_join_element_wise(table.column("trial_id"), names, "\0")
    return table.filter(pc.is_in(keys, value_set=winners))


def read_table(
    results: Iterable[str | Path | Location],
    *,
    columns: list[str] | None = None,
    on_bad: Any = None,
    _internal: bool = False,
) -> Any:
    """The rows of one or more results directories as one ``pyarrow.Table``, each trial once per directory.

    Each directory's ``rows/`` is listed once and its files are read together through ``pyarrow.dataset``
    (in parallel, local or object store), only the columns asked for. Columns a file lacks (an older
    writer) read as null. A file that a compaction removed between the listing and the read makes the
    directory be listed and read again, so a reader never misses a row nor sees one twice.

    Args:
        results: results directories.
        columns: the schema columns to return (all when None).
        on_bad: called as ``on_bad(path, reason)`` for an unreadable or foreign Parquet file, which is then
            skipped; without it such a file raises ``DataError``.

    Raises:
        DataError: a bad file and no ``on_bad``, or a row written by a newer schema version.
        ConfigError: ``columns`` names a column the schema does not have.
    """
    wanted = list(columns) if columns is not None else list(COLUMN_NAMES)
    unknown = [c for c in wanted if c not in COLUMN_NAMES]
    if unknown:
        import difflib

        close = sorted({m for c in unknown for m in difflib.get_close_matches(c, COLUMN_NAMES, n=3, cutoff=0.6)})
        hint = f" Did you mean: {', '.join(close)}?" if close else ""
        # A ConfigError (a ValueError): the columns may come from a user (distillbench.load_results).
        raise ConfigError(f"unknown row columns {unknown}.{hint} The schema is declared in harness/store.py")
    extra = [_STAMP, _FILE] if _internal else []
    tables = []
    for result_dir in results:
        rows = location(result_dir) / "rows"
        for _ in range(_READ_ATTEMPTS):
            bad: list[tuple[str, str]] = []
            try:
                table = _scan(rows, _list_row_files(rows), wanted, bad)
            except _Vanished:
                continue
            break
        else:
            raise DataError(f"{rows}: row files kept disappearing while being read (compactions running?); try again")
        for path, reason in bad:
            if on_bad is None:
                raise DataError(f"{path}: {reason}")
            on_bad(path, reason)
        tables.append(latest_rows(table).select(wanted + extra))
    if not tables:
        return _READ_SCHEMA.empty_table().append_column(_FILE, pa.array([], _S)).select(wanted + extra)
    return pa.concat_tables(tables)


def _shown(loc: Location) -> Path | str:
    return loc.native() if loc.local else str(loc)


def _scan(rows: Location, files: list[_RowFile], wanted: list[str], bad: list[tuple[str, str]]) -> Any:
    """Read ``files`` (one listing of ``rows``) as one table with ``wanted``, the key columns, stamp and file name.

    Bad files are appended to ``bad`` as ``(path, reason)`` and left out. Raises ``_Vanished`` when a listed
    file is gone.
    """
    from concurrent.futures import ThreadPoolExecutor

    import pyarrow.compute as pc
    import pyarrow.dataset as ds

    fmt = ds.ParquetFileFormat()
    scan_columns = list(dict.fromkeys([*_KEY_COLUMNS, *wanted, _STAMP, _FILE]))
    empty = _READ_SCHEMA.empty_table().append_column(_FILE, pa.array([], _S)).select(scan_columns)
    if not files:
        return empty

    def footer(file: _RowFile) -> str | None:
        # Only the footer: the schema checks of the old per-file reader, without reading the data.
        try:
            schema = fmt.make_fragment(file.loc.path, filesystem=rows.fs).physical_schema
        except Exception as exc:
            if not file.loc.exists():
                raise _Vanished() from None
            return f"not a readable Parquet file ({type(exc).__name__}: {exc})"
        missing = [n for n in _KEY_COLUMNS if n not in schema.names]
        if missing:
            return f"not a distillbench row (missing columns {missing})"
        known = pa.schema([f for f in schema if f.name in COLUMN_NAMES or f.name == _STAMP])
        return _conform(known.empty_table().drop_columns([c for c in known.names if c == _STAMP]))[1]

    with ThreadPoolExecutor(max_workers=min(32, len(files))) as pool:
        reasons = list(pool.map(footer, files))
    good = []
    for file, reason in zip(files, reasons, strict=True):
        if reason is None:
            good.append(file)
        else:
            bad.append((_shown(file.loc), reason))

    def read(group: list[_RowFile]) -> Any:
        dataset = ds.FileSystemDataset.from_paths(
            [f.loc.path for f in group], schema=_READ_SCHEMA, format=fmt, filesystem=rows.fs
        )
        return dataset.to_table(columns=scan_columns, use_threads=True)

    parts = [empty]
    # In groups: a dataset scan holds about 150 KB per file until it ends (10,000 small files took 2 GB in
    # one scan); groups of _SCAN_GROUP files keep that bounded and lose no parallelism.
    for start in range(0, len(good), _SCAN_GROUP):
        group = good[start : start + _SCAN_GROUP]
        try:
            parts.append(read(group).combine_chunks())
            continue
        except Exception:
            if any(not f.loc.exists() for f in group):
                raise _Vanished() from None
        # A file whose values do not fit the schema (the footer looked fine): find it, as the old reader did.
        for file in group:
            try:
                parts.append(read([file]))
            except Exception as exc:
                if not file.loc.exists():
                    raise _Vanished() from None
                first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
                reason = f"column types do not match the row schema ({first}); not a distillbench row"
                bad.append((_shown(file.loc), reason))
    table = pa.concat_tables(parts).combine_chunks()
    # Row-level checks on the whole table at once: empty keys make a file foreign; a newer schema is an error.
    names = table.column(_FILE)
    broken = pc.or_(pc.is_null(table.column("trial_id")), pc.is_null(table.column("status")))
    if pc.any(broken).as_py():
        by_path = {f.loc.path: f.loc for f in good}
        for name in sorted(set(pc.filter(names, broken).to_pylist())):
            rows_of_file = table.filter(pc.equal(names, name))
            column = "trial_id" if rows_of_file.column("trial_id").null_count else "status"
            bad.append((_shown(by_path[name]), f"column {column!r} has empty values; not a distillbench row"))
        table = table.filter(pc.invert(pc.is_in(names, value_set=pc.filter(names, broken).unique())))
        names = table.column(_FILE)
    newest = pc.max(table.column("schema_version")).as_py()
    if newest is not None and newest > SCHEMA_VERSION:
        name = pc.filter(names, pc.greater(table.column("schema_version"), SCHEMA_VERSION))[0].as_py()
        raise DataError(
            f"{name}: row schema version {newest} is newer than this distillbench understands "
            f"({SCHEMA_VERSION}); upgrade distillbench to read it"
        )
    # Rows of small files carry the file's stamp; compacted rows carry the one they were written with.
    stamps = {f.loc.path: f.mtime_ns for f in good if not f.compacted}
    if stamps:
        from_file = pa.array([stamps.get(n, 0) for n in names.to_pylist()], _I)
        table = table.set_column(
            table.schema.get_field_index(_STAMP), _STAMP, pc.coalesce(table.column(_STAMP), from_file)
        )
    else:
        table = table.set_column(table.schema.get_field_index(_STAMP), _STAMP, pc.fill_null(table.column(_STAMP), 0))
    return table


def compact(results: str | Path | Location, *, on_bad: Any = None, min_small_files: int = 1) -> Compaction:
    """Merge the row files of ``results`` into one compacted file, then remove the merged files.

    Order keeps every row visible exactly once to any reader: the compacted file is written first
    (atomically), and the small files go only afterwards; a reader that sees both keeps one copy of each
    trial (:func:`latest_rows`). Older compacted files are merged too, so the folder ends with one. A small
    file rewritten after it was read (its trial re-run meanwhile) is kept, and its newer rows win. Bad
    files are skipped, reported through ``on_bad`` and kept. Runs may keep writing while this runs.

    Args:
        results: the results directory.
        on_bad: called as ``on_bad(path, reason)`` for a bad file; without it a bad file raises ``DataError``.
        min_small_files: do nothing while fewer small files than this wait (every compaction rewrites the
            compacted rows too, so compacting a few files after each small grid would rewrite a big store
            again and again for a gain of milliseconds).

    Raises:
        DataError: a bad file and no ``on_bad``.
        OSError: the compacted file cannot be written (nothing was removed then).
    """
    rows = location(results) / "rows"
    files = _list_row_files(rows)
    small = sum(1 for f in files if not f.compacted)
    if small < max(1, min_small_files) and (len(files) < 2 or min_small_files > 1):
        return Compaction()
    for _ in range(_READ_ATTEMPTS):
        bad: list[tuple[str, str]] = []
        try:
            table = _scan(rows, files, list(COLUMN_NAMES), bad)
            break
        except _Vanished:
            files = _list_row_files(rows)  # another compaction removed some: take its result as input
    else:
        raise DataError(f"{rows}: row files kept disappearing while being compacted (another compaction?); try again")
    for path, reason in bad:
        if on_bad is None:
            raise DataError(f"{path}: {reason}")
        on_bad(path, reason)
    bad_paths = {str(p) for p, _ in bad}
    merged = [f for f in files if str(_shown(f.loc)) not in bad_paths]
    table = latest_rows(table)
    # Sorted by trial id, so the row groups' statistics let a look-up of one trial (row_stamp) skip most.
    out = table.select([*COLUMN_NAMES, _STAMP]).cast(_READ_SCHEMA).sort_by("trial_id")
    target = rows / f"{COMPACTED_PREFIX}{uuid.uuid4().hex}.parquet"
    if target.local:
        atomic_write(Path(target.path), lambda tmp: pq.write_table(out, tmp, row_group_size=65536))
    else:
        sink = pa.BufferOutputStream()
        pq.write_table(out, sink, row_group_size=65536)
        target.write_bytes(sink.getvalue().to_pybytes())
    removed = 0
    for file in merged:
        info = file.loc.fs.get_file_info(file.loc.path)
        # A small file rewritten since it was read holds a re-run the compacted file lacks: keep it.
        if not file.compacted and info.type == pafs.FileType.File and int(info.mtime_ns or 0) != file.mtime_ns:
            continue
        file.loc.delete()
        removed += 1
    return Compaction(
        compacted=target.native(),
        merged_files=len(merged),
        removed_files=removed,
        trials=len(set(out.column("trial_id").to_pylist())),
        rows=out.num_rows,
    )


def _conform(table: Any) -> tuple[Any, str | None]:
    """``table`` cast to the row schema, or ``(table, reason)`` when a column cannot be one of our rows.

    A cast alone is not enough: Arrow turns any number into a string, so an integer ``trial_id``
    would become a row no grid ever looks up. Text columns must hold text, and the key columns
    must have a value in every row.
    """
    for name in table.column_names:
        expected, actual = SCHEMA.field(name).type, table.schema.field(name).type
        text = pa.types.is_string(expected) or pa.types.is_large_string(expected)
        if text and not (pa.types.is_string(actual) or pa.types.is_large_string(actual) or pa.types.is_null(actual)):
            return table, f"column {name!r} holds {actual}, not text; not a distillbench row"
    for name in ("trial_id", "status"):
        if table.column(name).null_count:
            return table, f"column {name!r} has empty values; not a distillbench row"
    try:
        return table.cast(pa.schema([SCHEMA.field(c) for c in table.column_names])), None
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        return table, f"column types do not match the row schema ({first}); not a distillbench row"


def copy_rows(results: str | Path | Location, dest: Path) -> Path:
    """Copy ``<results>/rows`` into the local directory ``dest/rows``; returns ``dest``.

    For tools that only read local folders (the leaderboard build); a local ``results`` is copied too.
    """
    target = Path(dest) / "rows"
    target.mkdir(parents=True, exist_ok=True)
    for file in (location(results) / "rows").files(".parquet"):
        (target / file.name).write_bytes(file.read_bytes())
    return Path(dest)


# ------------------------------------------------------------------------------- distilled sets
def save_set(directory: str | Path | Location, stem: str, dset: Any, meta: Mapping[str, Any]) -> Path | str:
    """Save a DistilledSet as ``<directory>/<stem>.safetensors`` plus ``.json`` metadata, atomically.

    In a results directory the set goes to ``sets_dir(results)`` under its ``distill_id``. The JSON
    is written last, so a set counts as present only when both files are complete. ``directory``
    may be a local path or a URI (see :func:`location`).
    """
    from safetensors.torch import save

    tensors = {"x": dset.x.detach().cpu().contiguous(), "y": dset.y.detach().cpu().contiguous()}
    for key, value in dset.extras.items():
        tensors[f"extra.{key}"] = value.detach().cpu().contiguous()
    base = location(directory)
    tensor_file = base / f"{stem}.safetensors"
    tensor_file.write_bytes(save(tensors))
    document = {"set_meta": dset.meta, **meta}
    text = json.dumps(document, indent=2, sort_keys=True, default=str)
    (base / f"{stem}.json").write_bytes(text.encode())
    return tensor_file.native()


def find_set(results: str | Path | Location, distill_id: str) -> Path | str | None:
    """The tensor file of a complete saved set (a ``Path``, or a URI for remote results), or None."""
    base = location(results) / "sets"
    tensor_file = base / f"{distill_id}.safetensors"
    return tensor_file.native() if tensor_file.is_file() and (base / f"{distill_id}.json").is_file() else None


def set_relpath(distill_id: str) -> str:
    """Where a results directory keeps a set, relative to it (the ``set_path`` column)."""
    return f"sets/{distill_id}.safetensors"


def load_set(path: str | Path | Location) -> tuple[Any, dict[str, Any]]:
    """Load a set saved by :func:`save_set`: ``(DistilledSet, metadata)``; ``path`` may be a URI.

    Raises:
        DataError: the file or its JSON metadata is missing or unreadable, the metadata is not a JSON
            object, or x and y do not describe a set (no samples, or a label count other than the
            sample count).
    """
    from safetensors.torch import load

    from distillbench.harness.types import DistilledSet

    loc = location(path)
    if loc.path.endswith(".json"):
        loc = _with_suffix(loc, ".safetensors")
    meta_loc = _with_suffix(loc, ".json")
    if not loc.is_file():
        raise DataError(f"distilled set {str(loc)!r} does not exist; pass the .safetensors file written by a run")
    if not meta_loc.is_file():
        raise DataError(f"distilled set {str(loc)!r} has no metadata file {meta_loc.name!r} beside it")
    try:
        tensors = load(loc.read_bytes())
        meta = json.loads(meta_loc.read_bytes())
    except Exception as exc:
        raise DataError(f"cannot read distilled set {str(loc)!r}: {type(exc).__name__}: {exc}") from None
    if "x" not in tensors or "y" not in tensors:
        raise DataError(f"{str(loc)!r} is not a distilled set (tensors 'x' and 'y' missing)")
    _check_set_file(str(loc), meta_loc.name, tensors["x"], tensors["y"], meta)
    extras = {k.removeprefix("extra."): v for k, v in tensors.items() if k.startswith("extra.")}
    return DistilledSet(tensors["x"], tensors["y"], extras, dict(meta.get("set_meta") or {})), meta


def _check_set_file(where: str, meta_name: str, x: Any, y: Any, meta: Any) -> None:
    """One-line ``DataError`` for a set file whose metadata or tensors cannot describe a distilled set.

    Only what holds for every set is checked here (types and how x and y agree); whether the set fits a
    dataset and a protocol is for the evaluator (``evaluate._check_inputs``), which knows the dataset.
    """
    if not isinstance(meta, dict):
        raise DataError(
            f"distilled set {where!r}: metadata {meta_name!r} holds a JSON {type(meta).__name__}, not an object; "
            "write sets with 'distillbench distill --out' or a run"
        )
    if not isinstance(meta.get("set_meta") or {}, dict):
        raise DataError(f"distilled set {where!r}: 'set_meta' in {meta_name!r} must be a JSON object")
    if x.dim() < 2:
        raise DataError(
            f"distilled set {where!r}: x has shape {tuple(x.shape)}; it must be [n, *sample shape] with n >= 1"
        )
    if x.shape[0] == 0:
        raise DataError(f"distilled set {where!r} is empty (x has shape {tuple(x.shape)}); nothing to evaluate")
    if y.dim() not in (1, 2) or y.shape[0] != x.shape[0]:
        raise DataError(
            f"distilled set {where!r}: {x.shape[0]} samples but labels of shape {tuple(y.shape)}; y must be [n] "
            f"(hard labels) or [n, classes] (soft labels) with n = {x.shape[0]}"
        )


def _with_suffix(loc: Location, suffix: str) -> Location:
    stem = loc.name.rsplit(".", 1)[0] if "." in loc.name else loc.name
    parent_path = loc.path.rsplit("/", 1)[0]
    base, sep, query = loc.uri.partition("?")
    return Location(loc.fs, f"{parent_path}/{stem}{suffix}", f"{base.rsplit('/', 1)[0]}/{stem}{suffix}{sep}{query}")
