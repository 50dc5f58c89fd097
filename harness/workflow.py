"""The work behind the command line and the Python API, shared by both; prints nothing.

``distillbench run | distill | evaluate | leaderboard`` (:mod:`distillbench.harness.cli`) and
``distillbench.run | distill | evaluate | load_results`` (:mod:`distillbench.harness.api`) resolve paths,
check their input and call the runner, the scheduler and the store through these functions. A bad input
is therefore the same one-line :class:`~distillbench.harness.errors.DistillBenchError` in both, found
before any work starts, and the two cannot drift apart. The CLI adds the printing, the API the types
and the return values. Nothing here imports torch or Ray when this module is imported.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from distillbench.harness.errors import ConfigError, DistillBenchError

if TYPE_CHECKING:
    import torch

    from distillbench.harness import store
    from distillbench.harness.scheduler import GridOutcome
    from distillbench.harness.spec import Grid, GridPlan, ResolvedTrial, TrialSpec

DEFAULT_PROTOCOL = "convnet-v1"
"""The protocol of ``distill`` and ``evaluate`` when none is named (the papers' recipe)."""


# ----------------------------------------------------------------------------------------- locations
def data_root(arg: str | os.PathLike[str] | None, grid_root: str | None = None, *, base: Path | None = None) -> Path:
    """The dataset root: ``arg``, else a grid's ``data_root`` (relative to ``base``), else the default.

    The default is ``$DISTILLBENCH_DATA`` or ``~/.cache/distillbench``.
    """
    from distillbench.harness.runner import default_data_root

    if arg:
        return Path(arg).expanduser().resolve()
    if grid_root:
        path = Path(grid_root).expanduser()
        # A relative data_root in a grid file is relative to the grid file, not to the caller's cwd.
        return (path if path.is_absolute() else (base or Path.cwd()) / path).resolve()
    return default_data_root().resolve()


def artefacts_location(value: str | os.PathLike[str] | None, *, base: Path) -> Path | str | None:
    """The shared artefact location of a run: a URI as it is, a local folder (relative to ``base``) checked."""
    from distillbench.harness import store

    if not value:
        return None
    value = str(value)
    if "://" not in value:
        value = str(base / Path(value).expanduser())  # an absolute path stays absolute
    return store.check_results_dir(value)


def check_path_writable(path: Path | str, what: str) -> None:
    """Refuse a local output folder that could not be created or written, without writing anything.

    Runs for a dry run too, so a path that would fail after Ray started (a name longer than the file
    system allows, a read-only or foreign folder) fails first, in one line.

    Raises:
        DistillBenchError: a path component is too long, or the folder (or its first existing parent)
            is not writable.
    """
    if not isinstance(path, Path):
        return  # a URI: check_results_dir has reached the store already
    for part in path.parts:
        if len(part.encode()) > 255:
            raise DistillBenchError(
                f"{what} path {str(path)!r} has a component of {len(part.encode())} bytes; file systems allow 255; "
                "pass a shorter path"
            )
    existing = next((p for p in (path, *path.parents) if p.exists()), None)
    if existing is not None and not os.access(existing, os.W_OK | os.X_OK):
        raise DistillBenchError(
            f"{what} path {str(path)!r} is not writable ({existing} does not allow it); pass a folder you can write"
        )


def results_locations(results: Iterable[str | os.PathLike[str]]) -> list[store.Location]:
    """The locations of existing results directories (local paths or URIs), in the order given.

    Raises:
        DistillBenchError: one of them does not exist (the message shows it as given, without a URI's
            query, which may hold an endpoint or credentials).
    """
    from distillbench.harness import store

    given = [str(r) for r in results]
    locations = [store.location(r) for r in given]
    for text, loc in zip(given, locations, strict=True):
        if not loc.is_dir():
            raise DistillBenchError(
                f"results directory {text.partition('?')[0]!r} does not exist; pass the --results of a run"
            )
    return locations


def build_board(results: Sequence[Any], out: Path, **kwargs: Any) -> Any:
    """Build the leaderboard; rows of remote results (URIs) are read into a local temporary copy first."""
    import tempfile

    from distillbench.harness import store
    from distillbench.leaderboard import build_leaderboard

    with tempfile.TemporaryDirectory(prefix="distillbench-rows-") as tmp:
        dirs = []
        for i, where in enumerate(results):
            loc = store.location(where)
            dirs.append(Path(loc.path) if loc.local else store.copy_rows(loc, Path(tmp) / str(i)))
        return build_leaderboard(dirs, out, **kwargs)


# ----------------------------------------------------------------------------------------------- run
@dataclasses.dataclass(frozen=True)
class RunSettings:
    """Where a grid run reads and writes: checked, nothing created yet.

    Attributes:
        results: the results directory (a local ``Path``) or URI (``s3://bucket/prefix``).
        data_root: the absolute dataset root.
        artefacts: where cached artefacts shared by grids live (expert buffers, teachers), or None for
            the results directory.
    """

    results: Path | str
    data_root: Path
    artefacts: Path | str | None


def run_settings(
    plan: GridPlan,
    *,
    base: Path,
    results: str | os.PathLike[str] | None = None,
    artefacts: str | os.PathLike[str] | None = None,
    data_root_arg: str | os.PathLike[str] | None = None,
) -> RunSettings:
    """Resolve and check where a grid run writes, before anything is scheduled or written.

    Args:
        plan: the grid (settings checked, trials not yet resolved).
        base: the folder the grid's relative ``data_root`` and ``artefacts`` are relative to (the grid
            file's folder; the working directory for a grid given as a dict).
        results: results directory or URI (default ``results/<grid name>``).
        artefacts: shared artefacts folder or URI; relative to the working directory (default: the
            grid's ``artefacts``, else the results directory).
        data_root_arg: dataset root (default: the grid's ``data_root``, else the default root).

    Raises:
        DistillBenchError: a location is a file, unreachable or not writable.
    """
    from distillbench.harness import store

    where = store.check_results_dir(results if results else Path("results") / plan.name)
    root = data_root(data_root_arg, plan.data_root, base=base)
    # An explicit artefacts location is relative to where the command runs, a grid's to the grid file.
    shared = (
        artefacts_location(artefacts, base=Path.cwd()) if artefacts else artefacts_location(plan.artefacts, base=base)
    )
    check_path_writable(where, "results")
    if isinstance(shared, Path):
        check_path_writable(shared, "artefacts")
    return RunSettings(results=where, data_root=root, artefacts=shared)


def schedule(
    grid: Grid,
    settings: RunSettings,
    *,
    address: str | None = None,
    plugins: Sequence[str] = (),
    loggers: Sequence[str] = (),
    **kwargs: Any,
) -> GridOutcome:
    """Run the grid's pending trials under Ray Tune (see :func:`distillbench.harness.scheduler.run_grid`).

    Args:
        grid: the resolved grid.
        settings: from :func:`run_settings`.
        address: a running Ray cluster to join (``auto`` or ``host:port``); default ``$RAY_ADDRESS`` or a
            local Ray.
        plugins: further plugin modules or ``.py`` files (relative to the working directory) every
            worker imports, besides the grid's own ``plugins:``.
        loggers: further Ray Tune loggers (``tensorboard``, ``mlflow``, ``wandb``), besides the grid's own
            ``loggers:``.
        kwargs: passed to ``run_grid`` (``ray_init``, ``show_progress``, ``stream``, ``callbacks``).
    """
    from distillbench.harness.scheduler import run_grid, run_tuned_grid

    extra = tuple(str(Path(p).resolve()) if p.endswith(".py") else p for p in plugins)
    arguments = dict(
        results=settings.results,
        data_root=settings.data_root,
        grid_name=grid.name,
        resources=grid.resources,
        retries=grid.retries,
        download=grid.download,
        artefacts=settings.artefacts,
        address=address,
        plugins=grid.plugins + extra,
        loggers=(*grid.loggers, *loggers),
        **kwargs,
    )
    if grid.searches:
        # Tuned blocks (tune:): their searches run first, then the grid's trials and the searches' final trials.
        return run_tuned_grid(grid.trials, grid.searches, **arguments)
    return run_grid(grid.trials, **arguments)


def board_dir(results: Path | str, grid_name: str) -> Path:
    """Where a run writes its leaderboard: ``<results>/leaderboard``, or ``./leaderboard/<grid>`` for a URI."""
    return results / "leaderboard" if isinstance(results, Path) else Path("leaderboard") / grid_name


# ------------------------------------------------------------------------------------ one-off trials
def check_networks(protocol: Any, network: str | None, *, single: bool = False) -> tuple[str, ...] | None:
    """``(network,)`` when it is one of the protocol's networks, None (every network) when not given.

    Args:
        protocol: the evaluation protocol.
        network: one of its networks, or None for every one.
        single: one network is wanted: ``network`` may be left out only when the protocol has one.

    Raises:
        ConfigError: ``network`` is not one of the protocol's networks, or ``single`` and it is left out
            while the protocol has several.
    """
    if network is None:
        if single and len(protocol.networks) > 1:
            raise ConfigError(
                f"protocol {protocol.name!r} evaluates on {len(protocol.networks)} networks "
                f"({', '.join(protocol.networks)}), one row each; name one with network=..., or run a grid for all"
            )
        return None
    if network not in protocol.networks:
        raise ConfigError(
            f"protocol {protocol.name!r} evaluates on {', '.join(protocol.networks)}; network {network!r} is not "
            "one of them"
        )
    return (network,)


def distill_rows(
    spec: TrialSpec,
    *,
    data_root_arg: str | os.PathLike[str] | None = None,
    out: str | os.PathLike[str] | None = None,
    device: str | torch.device | None = None,
    progress: Callable[[float, str], None] | None = None,
    network: str | None = None,
    single: bool = False,
    out_name: str = "--out",
) -> list[dict[str, Any]]:
    """Distil and evaluate one trial without Ray; its rows, one per evaluation network.

    Bad input (an unknown name, a bad parameter, an ``out`` that cannot be written, missing data)
    raises before any work; a trial that fails while it runs is a row with status ``error`` or
    ``diverged``, as in a grid.

    Args:
        spec: the trial.
        data_root_arg: dataset root (default ``$DISTILLBENCH_DATA`` or ``~/.cache/distillbench``).
        out: also save the set here (``.safetensors``, with ``.json`` metadata beside it).
        device: where to compute (default: the first CUDA device, else the CPU).
        progress: called as ``progress(fraction, message)`` while the trial runs.
        network: evaluate on this one of the protocol's networks only (default: every one).
        single: one row is wanted (see :func:`check_networks`).
        out_name: how messages name ``out`` (``--out`` on the command line).

    Raises:
        UnknownNameError, ConfigError, IncompatibleError: the trial is invalid.
        DataError: the dataset is not under the data root.
        DistillBenchError: ``out`` is a folder or cannot be written.
    """
    from distillbench.harness.runner import run_trial

    resolved = spec.resolve()
    networks = check_networks(resolved.protocol, network, single=single)
    out_path = Path(out) if out is not None else None
    if out_path is not None and out_path.exists() and out_path.is_dir():
        raise DistillBenchError(
            f"{out_name} {str(out_path)!r} is a directory; pass a file name such as set.safetensors"
        )
    if out_path is not None:
        blocker = next((p for p in out_path.parents if p.exists() and not p.is_dir()), None)
        if blocker is not None:
            raise DistillBenchError(
                f"{out_name} {str(out_path)!r} is under {str(blocker)!r}, a file; pass a path in a folder"
            )
        check_path_writable(out_path.parent, out_name)
    root = data_root(data_root_arg)
    # Missing data is the user's to fix: one line now, not an error row after the set-up.
    dataset = resolved.dataset.obj(resolved.dataset.params)
    dataset.prepare(root, download=False)
    return run_trial(spec, data_root=root, set_path=out_path, progress=progress, device=device, networks=networks)


def saved_set_path(out: str | os.PathLike[str]) -> Path:
    """The tensor file :func:`distill_rows` writes for ``out`` (``.safetensors`` added or swapped in)."""
    path = Path(out)
    return path if path.suffix == ".safetensors" else path.with_suffix(".safetensors")


def set_spec(set_file: str | os.PathLike[str], meta: dict[str, Any], *, protocol: str | None = None) -> ResolvedTrial:
    """The resolved trial a saved set's metadata describes; one-line ``DataError`` when it cannot be one.

    An imported set (``distillbench import``; metadata with an ``imported`` block) was distilled by no
    distillbench method: its view names the dataset, the protocol and the source (harness/formats.py).
    """
    from distillbench.harness.errors import DataError
    from distillbench.harness.spec import TrialSpec

    if isinstance(meta.get("imported"), dict):
        from distillbench.harness.formats import imported_trial

        return imported_trial(str(set_file), meta, protocol=protocol)
    raw = meta.get("spec")
    if raw is None:
        raise DataError(f"{set_file}: metadata has no 'spec'; was it written by distillbench?")
    if not isinstance(raw, dict):
        raise DataError(
            f"{set_file}: metadata 'spec' is a JSON {type(raw).__name__}, not an object; write sets with "
            "'distillbench distill --out' or a run"
        )
    missing = [key for key in ("dataset", "method", "ipc") if key not in raw]
    if missing:
        raise DataError(f"{set_file}: metadata 'spec' lacks {', '.join(missing)}; was it written by distillbench?")
    spec = TrialSpec.from_dict({**raw, **({"protocol": protocol} if protocol else {})})
    try:
        return spec.resolve()
    except DistillBenchError as exc:
        raise type(exc)(f"{set_file}: metadata 'spec': {exc}") from None


def evaluate_rows(
    set_file: str | os.PathLike[str],
    *,
    protocol: str = DEFAULT_PROTOCOL,
    seed: Any = None,
    data_root_arg: str | os.PathLike[str] | None = None,
    device: str | torch.device | None = None,
    network: str | None = None,
    single: bool = False,
    seed_name: str = "--seed",
    progress: Callable[..., None] | None = None,
    fmt: str = "distillbench",
    dataset: str | None = None,
    declared: Any = None,
) -> Iterator[tuple[str, dict[str, Any]]]:
    """Evaluate a saved set under ``protocol``: one result per evaluation network, each as it is done.

    Every input is checked before the first network trains (the generator raises on its first
    ``next``), so a bad input costs nothing.

    Args:
        set_file: a ``.safetensors`` file written by ``distill --out`` or by a run (a path or a URI).
        protocol: the protocol name.
        seed: evaluation seed (default: the set's distillation seed).
        data_root_arg: dataset root (default ``$DISTILLBENCH_DATA`` or ``~/.cache/distillbench``).
        device: where to compute (default: the first CUDA device, else the CPU).
        network: evaluate on this one of the protocol's networks only (default: every one).
        single: one result is wanted (see :func:`check_networks`).
        seed_name: how messages name the seed (``--seed`` on the command line).
        progress: called as ``progress(fraction, message)`` while the models train; one that also takes
            ``**values`` gets ``phase``, ``model``, ``epoch`` and the other numbers of each event.
        fmt: the set's format (``distillbench``, ``auto``, ``dc-res``, ``mtt``, ``datm``, ``image-folder``,
            ``hf``; options as ``dc-res[experiment=0]``); see :mod:`distillbench.harness.formats`.
        dataset: the dataset a foreign set is evaluated on (required for every format but distillbench).
        declared: a :class:`~distillbench.harness.formats.Declared` (space, mean/std, pixel range) of a
            foreign set; default: what the format detects.

    Yields:
        ``(network, result)``: the protocol's network (as the protocol names it) and the result, which
        holds the set's identity (``set_file``, ``dataset``, ``method``, ``ipc``), the protocol, the seed
        and the metric columns of a row.

    Raises:
        UnknownNameError: the protocol is unknown.
        DataError: the file is missing or unreadable, or does not fit its dataset or the protocol.
        ConfigError: the seed or the network is invalid.
    """
    from distillbench.harness import store
    from distillbench.harness.errors import DataError
    from distillbench.harness.evaluate import _check_inputs
    from distillbench.harness.plugins import PROTOCOLS
    from distillbench.harness.progress import emit, in_phase
    from distillbench.harness.runner import evaluate_set, load_data, pick_device
    from distillbench.harness.spec import MAX_SEED, _check_int

    chosen = PROTOCOLS.resolve(protocol).obj
    networks = check_networks(chosen, network, single=single) or chosen.networks
    if fmt == "distillbench" and dataset is None and declared is None:
        dset, meta = store.load_set(set_file)
    else:  # a foreign artefact: read, checked against the dataset and converted (harness/formats.py)
        from distillbench.harness.formats import import_set

        dset, meta = import_set(set_file, fmt, dataset=dataset, declared=declared, data_root=data_root(data_root_arg))
    resolved = set_spec(set_file, meta, protocol=protocol)
    spec = resolved.spec
    try:
        _check_inputs(chosen, dset, resolved.info)
    except ValueError as exc:  # the set file does not fit its dataset or the protocol: the user's input
        raise DataError(f"{set_file}: {exc}") from None
    eval_seed = _check_int(seed, seed_name, 0, MAX_SEED) if seed is not None else spec.seed
    emit(in_phase(progress, "load"), 0.0, resolved.dataset.display, fine=True)
    data = load_data(resolved, data_root(data_root_arg))
    target = pick_device(device)
    for name in networks:  # one result per evaluation network of the protocol
        metrics = evaluate_set(
            chosen, dset, data, seed=eval_seed, device=target, network=name, progress=in_phase(progress, "evaluate")
        )
        yield (
            name,
            {
                "set_file": str(set_file),
                "dataset": resolved.dataset.display,
                "method": resolved.method.display,
                "ipc": spec.ipc,
                "protocol": chosen.name,
                "protocol_version": chosen.version,
                "seed": eval_seed,
                **metrics,
            },
        )
