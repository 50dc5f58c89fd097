"""The Python API, for notebooks and scripts: ``import distillbench as db``.

The command line's work as functions that return values instead of printing them::

    >>> import distillbench as db
    >>> db.list_methods("d*")
    ['datm', 'dc', 'dd', 'dm', 'dsa']
    >>> db.create_method("dm", iterations=10).params.iterations
    10
    >>> row = db.distill("dm[iterations=10]", "digits", ipc=1, protocol="quick-v1")  # doctest: +SKIP
    >>> outcome = db.run("configs/quickstart.yaml")  # doctest: +SKIP
    >>> frame = db.load_results("results/quickstart")  # doctest: +SKIP

Bad input raises the :class:`~distillbench.harness.errors.DistillBenchError` subclasses the command
line reports, with the same one-line messages (an unknown name lists close matches: "Did you mean"),
before any work starts; both go through :mod:`distillbench.harness.workflow`. A trial that fails while
it runs is a row with status ``error`` or ``diverged``, as in a grid. Importing this module imports
neither torch nor Ray; each function imports what it needs.
"""

from __future__ import annotations

import dataclasses
import os
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from distillbench.harness.errors import ConfigError, DistillBenchError
from distillbench.harness.workflow import DEFAULT_PROTOCOL

if TYPE_CHECKING:
    import pandas as pd
    import torch

    from distillbench.harness.scheduler import GridOutcome
    from distillbench.methods.base import DistillationMethod

PathLike = str | os.PathLike[str]


# ----------------------------------------------------------------------------------------------- run
@dataclasses.dataclass(frozen=True)
class RunResult:
    """What :func:`run` did.

    Attributes:
        grid: the grid's name.
        results: the results directory (a local ``Path``) or URI; :func:`load_results` reads it.
        trials: every trial of the grid, one dict each (``trial_id``, ``dataset``, ``method``,
            ``weighting``, ``labels``, ``ipc``, ``seed``, ``protocol``), with ``state``: ``done`` if it
            had a result before this run, else ``pending``.
        outcome: what the scheduler did (``ok``, ``failed``, ``skipped``, ``pending``, ``errors``,
            ``seconds``, ``interrupted``, and ``stopped``: why the store took no more rows, if it did);
            None for a dry run, which runs and writes nothing.
        leaderboard: the ``leaderboard.md`` written at the end (``index.html`` and ``leaderboard.csv``
            are beside it); None when none was built.
    """

    grid: str
    results: Path | str
    trials: tuple[dict[str, Any], ...]
    outcome: GridOutcome | None
    leaderboard: Path | None = None


def run(
    grid: PathLike | Mapping[str, Any],
    *,
    results: PathLike | None = None,
    artefacts: PathLike | None = None,
    data_root: PathLike | None = None,
    address: str | None = None,
    plugins: Sequence[str] = (),
    dry_run: bool = False,
    leaderboard: bool = True,
    show_progress: bool = True,
    ray_init: Mapping[str, Any] | None = None,
) -> RunResult:
    """Run a grid under Ray Tune, as ``distillbench run`` does; trials that already have a result are skipped.

    Args:
        grid: the path of a YAML grid file, or the same document as a dict. A dict's relative
            ``data_root``, ``artefacts`` and ``plugins`` paths are relative to the working directory,
            and its name defaults to ``grid``.
        results: results directory or URI such as ``s3://bucket/prefix`` (default ``results/<grid name>``).
        artefacts: folder or URI for cached artefacts shared by grids: expert buffers, teachers
            (default: the grid's ``artefacts``, else the results directory).
        data_root: dataset root (default: the grid's ``data_root``, ``$DISTILLBENCH_DATA``,
            ``~/.cache/distillbench``).
        address: join a running Ray cluster (``auto`` or ``host:port``; default ``$RAY_ADDRESS`` or a
            local Ray).
        plugins: plugin modules or ``.py`` files imported first, here and on every worker (``--plugin``).
        dry_run: resolve and list the trials; run and write nothing.
        leaderboard: rebuild the leaderboard at the end.
        show_progress: print the status line on stderr while the grid runs.
        ray_init: further ``ray.init`` keyword arguments when a local Ray is started (``num_cpus``).

    Returns:
        The trials and the outcome; rows are in ``results`` (:func:`load_results`).

    Raises:
        ConfigError: the grid is malformed (any trial invalid: nothing is scheduled).
        UnknownNameError, IncompatibleError: a trial names an unknown plugin, or plugins that do not fit.
        DistillBenchError: a location is unreachable or not writable, or a plugin failed to import.

    Example:
        >>> result = db.run({"name": "demo", "protocol": "quick-v1",  # doctest: +SKIP
        ...                  "grid": {"dataset": "digits", "method": ["random", "herding"], "ipc": [1, 10]}})
        >>> result.outcome.ok  # doctest: +SKIP
        4
    """
    from distillbench.harness import store, workflow
    from distillbench.harness.plugins import load_plugin_modules
    from distillbench.harness.spec import open_grid_file, plan_grid, trial_table

    if plugins:
        load_plugin_modules(list(plugins), base=os.getcwd())
    if isinstance(grid, Mapping):
        base = Path.cwd()
        plan = plan_grid(_absolute_plugins(dict(grid), base), default_name="grid")
    elif isinstance(grid, str | os.PathLike):
        base = Path(grid).resolve().parent
        plan = open_grid_file(grid)
    else:
        raise ConfigError(f"grid must be the path of a YAML grid file or a dict, got {type(grid).__name__}")
    resolved = None if dry_run else plan.grid()  # every trial validated before anything is scheduled
    settings = workflow.run_settings(plan, base=base, results=results, artefacts=artefacts, data_root_arg=data_root)
    done = store.existing_trial_ids(
        settings.results, status=("ok", "diverged"), on_bad=_warn_skipped("its trial runs again")
    )
    listed = trial_table(plan.trials() if resolved is None else resolved.trials)
    trials = tuple({**t, "state": "done" if t["trial_id"] in done else "pending"} for t in listed)
    if resolved is None:
        return RunResult(grid=plan.name, results=settings.results, trials=trials, outcome=None)
    outcome = workflow.schedule(
        resolved, settings, address=address, plugins=plugins, show_progress=show_progress, ray_init=ray_init
    )
    board = None
    if leaderboard and outcome.stopped is None:
        board = workflow.build_board([settings.results], workflow.board_dir(settings.results, plan.name))
    return RunResult(
        grid=plan.name,
        results=settings.results,
        trials=trials,
        outcome=outcome,
        leaderboard=Path(board.markdown_path) if board is not None else None,
    )


def _absolute_plugins(document: dict[str, Any], base: Path) -> dict[str, Any]:
    """A dict grid's relative ``.py`` plugins made absolute, so Ray workers (in their own folder) find them."""
    entries = document.get("plugins")
    if isinstance(entries, list):
        document["plugins"] = [
            str((base / p).resolve()) if isinstance(p, str) and p.endswith(".py") else p for p in entries
        ]
    return document


def _warn_skipped(consequence: str) -> Callable[[Any, str], None]:
    """An ``on_bad`` for the store's readers: a corrupt or foreign row file is a warning, as the CLI prints."""

    def skip(path: Any, reason: str) -> None:
        warnings.warn(f"skipped {str(path).rsplit('/', 1)[-1]}: {reason} ({consequence})", stacklevel=3)

    return skip


# ------------------------------------------------------------------------------------------- results
def load_results(*results: PathLike, columns: Sequence[str] | None = None) -> pd.DataFrame:
    """The rows of one or more results directories (local paths or URIs such as ``s3://bucket/prefix``).

    Each trial appears once: within a directory its newest copy (a trial re-run after its rows were
    compacted, for example), as ``status`` and ``leaderboard`` read it; across directories the copy the
    leaderboard keeps (per trial and evaluation network an ``ok`` row over a failed one, then the latest
    ``end_time``). A corrupt or foreign row file is skipped with a warning, as the CLI skips it.

    Args:
        results: results directories written by :func:`run` or ``distillbench run``.
        columns: read only these columns (faster on large stores; the schema is
            ``distillbench.harness.store.COLUMN_NAMES``).

    Returns:
        One row per trial and evaluation network, with the columns of the row schema.

    Raises:
        DistillBenchError: no directory given, or one does not exist or has no ``rows/`` folder.
        ConfigError: ``columns`` names a column the schema does not have.
        DataError: a row was written by a newer distillbench.

    Example:
        >>> frame = db.load_results("results/quickstart")  # doctest: +SKIP
        >>> frame.groupby(["method", "ipc"])["acc_mean"].mean()  # doctest: +SKIP
    """
    from distillbench.harness import store, workflow

    if not results:
        raise ConfigError("load_results needs a results directory, e.g. load_results('results/quickstart')")
    locations = workflow.results_locations(results)
    for loc in locations:
        if not (loc / "rows").is_dir():  # e.g. the parent of several grids' folders: not silently empty
            raise DistillBenchError(f"{str(loc)!r} has no rows/ folder; pass the --results directory of a run")
    several = len(locations) > 1
    wanted = list(columns) if columns is not None else None
    keys = ("trial_id", "eval_network", "status", "end_time")
    read = wanted + [k for k in keys if k not in wanted] if (wanted is not None and several) else wanted
    frame = store.read_rows(locations, columns=read, on_bad=_warn_skipped("its rows are not included"))
    if several:
        frame = _one_copy_per_trial(frame)
    if wanted is not None:
        frame = frame[wanted]
    return frame.reset_index(drop=True)


def _one_copy_per_trial(frame: pd.DataFrame) -> pd.DataFrame:
    """The leaderboard's rule for a trial in several directories: per (trial, network) ok first, then newest."""
    ranked = frame.assign(_ok=frame["status"].eq("ok"), _end=frame["end_time"])
    ranked = ranked.sort_values(["_ok", "_end"], ascending=False, kind="stable", na_position="last")
    kept = ranked.drop_duplicates(["trial_id", "eval_network"], keep="first").sort_index()
    return kept.drop(columns=["_ok", "_end"])


# --------------------------------------------------------------------------------------- one trial
def distill(
    method: str,
    dataset: str,
    *,
    ipc: int,
    seed: int = 0,
    protocol: str = DEFAULT_PROTOCOL,
    weighting: str = "none",
    labels: str = "native",
    data_root: PathLike | None = None,
    out: PathLike | None = None,
    device: str | torch.device | None = None,
    progress: Callable[[float, str], None] | None = None,
    network: str | None = None,
) -> dict[str, Any]:
    """Distil and evaluate one trial without Ray, as ``distillbench distill --json`` does.

    Args:
        method: method spec, e.g. ``"dm"`` or ``"dm[iterations=100]"``.
        dataset: dataset spec, e.g. ``"digits"`` or ``"cifar10[zca=true]"``.
        ipc: samples per class.
        seed: distillation seed.
        protocol: evaluation protocol (``list_protocols()``).
        weighting: sample weighting (``list_weightings()``).
        labels: label stage (``list_label_stages()``).
        data_root: dataset root (default ``$DISTILLBENCH_DATA`` or ``~/.cache/distillbench``).
        out: also save the distilled set here (``.safetensors``, with ``.json`` metadata beside it);
            :func:`evaluate` reads it.
        device: where to compute (default: the first CUDA device, else the CPU).
        progress: called as ``progress(fraction, message)`` while the trial runs.
        network: for a protocol that evaluates on several networks (one row each), the one to evaluate
            on; may be left out when the protocol has one network, as every built-in protocol has.

    Returns:
        The row: the trial's identity, ``status`` (``ok``, ``error`` or ``diverged``, with ``error``),
        metrics such as ``acc_mean``, ``acc_std`` and ``acc_per_model``, cost and provenance; the
        columns of ``distillbench.harness.store.SCHEMA``.

    Raises:
        UnknownNameError: a plugin name is unknown (the message lists close matches).
        ConfigError: a parameter, ``ipc``, ``seed`` or ``network`` is invalid.
        IncompatibleError: the plugins cannot work together.
        DataError: the dataset is not under the data root.
        DistillBenchError: ``out`` is a folder or cannot be written.

    Example:
        >>> row = db.distill("dm[iterations=100]", "digits", ipc=10, protocol="quick-v1")  # doctest: +SKIP
        >>> row["status"], row["acc_mean"]  # doctest: +SKIP
        ('ok', 0.93...)
    """
    from distillbench.harness import workflow
    from distillbench.harness.spec import TrialSpec

    spec = TrialSpec(
        dataset=dataset,
        method=method,
        ipc=ipc,
        seed=seed,
        weighting=weighting,
        labels=labels,
        protocol=protocol,
        grid="api",
    )
    rows = workflow.distill_rows(
        spec,
        data_root_arg=data_root,
        out=out,
        device=device,
        progress=progress,
        network=network,
        single=True,
        out_name="out",
    )
    return rows[0]


def evaluate(
    set_file: PathLike,
    *,
    protocol: str = DEFAULT_PROTOCOL,
    seed: int | None = None,
    data_root: PathLike | None = None,
    device: str | torch.device | None = None,
    network: str | None = None,
) -> dict[str, Any]:
    """Evaluate a saved distilled set under a protocol, as ``distillbench evaluate --json`` does.

    Args:
        set_file: a ``.safetensors`` file written by :func:`distill` (``out=``), ``distillbench distill
            --out`` or a run (``<results>/sets/``); a local path or a URI.
        protocol: evaluation protocol (``list_protocols()``).
        seed: evaluation seed (default: the set's distillation seed).
        data_root: dataset root (default ``$DISTILLBENCH_DATA`` or ``~/.cache/distillbench``).
        device: where to compute (default: the first CUDA device, else the CPU).
        network: for a protocol that evaluates on several networks, the one to evaluate on (see
            :func:`distill`).

    Returns:
        ``set_file``, ``dataset``, ``method``, ``ipc``, ``protocol``, ``protocol_version``, ``seed`` and the
        metric columns of a row (``acc_mean``, ``acc_std``, ``acc_per_model``, ``eval_seconds``, ...).

    Raises:
        UnknownNameError: the protocol is unknown.
        DataError: the file is missing or unreadable, or does not fit its dataset or the protocol.
        ConfigError: the seed or the network is invalid.
    """
    from distillbench.harness import workflow

    results = workflow.evaluate_rows(
        set_file,
        protocol=protocol,
        seed=seed,
        data_root_arg=data_root,
        device=device,
        network=network,
        single=True,
        seed_name="seed",
    )
    _, result = next(results)
    return result


# ---------------------------------------------------------------------------------------- registries
def create_method(spec: str, /, **params: Any) -> DistillationMethod:
    """A configured method: its parameters validated and converted to their declared types.

    Parameters come in the spec string, as in a grid, or as keywords with Python values; both are
    checked the same way (unknown keys, wrong types, ranges), and a key may be given once.

    Args:
        spec: the method's name or spec, e.g. ``"dm"`` or ``"dm[iterations=10]"``.
        params: parameters as keywords, e.g. ``iterations=10`` or ``net="convnet[width=16]"``.

    Returns:
        The method instance; ``.params`` is its frozen parameter dataclass.

    Raises:
        UnknownNameError: the name is unknown (the message lists close matches: "Did you mean").
        ConfigError: the spec is malformed, or a parameter is unknown, mistyped, out of range or given twice.

    Example:
        >>> db.create_method("dm", iterations=10).params == db.create_method("dm[iterations=10]").params
        True
    """
    from distillbench.harness.plugins import METHODS

    configured = METHODS.resolve(spec, params)
    return configured.obj(configured.params)


def _names(kind: str, pattern: str | None) -> list[str]:
    from distillbench.harness.plugins import REGISTRIES

    return REGISTRIES[kind].names(pattern)


def list_methods(pattern: str | None = None) -> list[str]:
    """Registered method names, naturally sorted, filtered by a wildcard ``pattern`` such as ``"d*"``."""
    return _names("methods", pattern)


def list_datasets(pattern: str | None = None) -> list[str]:
    """Registered dataset names, naturally sorted, filtered by a wildcard ``pattern`` such as ``"*mnist"``."""
    return _names("datasets", pattern)


def list_networks(pattern: str | None = None) -> list[str]:
    """Registered network names, naturally sorted, filtered by a wildcard ``pattern``."""
    return _names("networks", pattern)


def list_protocols(pattern: str | None = None) -> list[str]:
    """Registered evaluation protocol names, naturally sorted, filtered by a wildcard ``pattern``."""
    return _names("protocols", pattern)


def list_weightings(pattern: str | None = None) -> list[str]:
    """Registered sample weighting names, naturally sorted, filtered by a wildcard ``pattern``."""
    return _names("weightings", pattern)


def list_label_stages(pattern: str | None = None) -> list[str]:
    """Registered label stage names (``native``, ``teacher``, ...), naturally sorted, filtered by ``pattern``."""
    return _names("labels", pattern)


__all__ = [
    "RunResult",
    "create_method",
    "distill",
    "evaluate",
    "list_datasets",
    "list_label_stages",
    "list_methods",
    "list_networks",
    "list_protocols",
    "list_weightings",
    "load_results",
    "run",
]
