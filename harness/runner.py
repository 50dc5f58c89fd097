"""``run_trial``: distil and evaluate one trial, without Ray.

The runner is the whole life of a trial: load the data, compute sample weights, distil (or reuse a
set already in the store), apply the label stage, evaluate under the protocol, and return one row.
It never raises for a failing trial: a method error becomes a row with status ``error`` and the
error text, a NaN/inf loss a row with status ``diverged``, so one bad trial never stops a grid.
It imports no Ray: the scheduler calls it inside Ray workers, the CLI and the tests call it directly.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import functools
import gc
import importlib.metadata
import json
import platform
import resource
import socket
import subprocess
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from distillbench.harness import store
from distillbench.harness.checkpoint import Checkpointer
from distillbench.harness.errors import DataError, DistillBenchError, DivergedError
from distillbench.harness.progress import emit, in_phase
from distillbench.harness.seeding import derive_seed, torch_generator
from distillbench.harness.spec import ResolvedTrial, TrialSpec
from distillbench.harness.types import Context, DataBundle, DistilledSet

DEFAULT_DATA_ROOT = "~/.cache/distillbench"


def default_data_root() -> Path:
    """``$DISTILLBENCH_DATA`` or ``~/.cache/distillbench``."""
    import os

    return Path(os.environ.get("DISTILLBENCH_DATA") or DEFAULT_DATA_ROOT).expanduser()


def pick_device(device: str | torch.device | None = None) -> torch.device:
    """``device`` if given, else the first CUDA device if there is one, else the CPU."""
    if device is not None:
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


@functools.lru_cache(maxsize=1)
def provenance() -> dict[str, Any]:
    """Versions and code identity, computed once per process."""

    def version(dist: str) -> str | None:
        try:
            return importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            return None

    return {
        "package_version": version("distillbench"),
        "git_sha": _git_sha(),
        "torch_version": torch.__version__,
        "ray_version": version("ray"),
        "python_version": platform.python_version(),
        "node": socket.gethostname(),
    }


def _git_sha() -> str | None:
    """The commit of the source tree this package runs from (``-dirty`` if modified), if it is a checkout."""
    source = Path(__file__).resolve().parent.parent
    try:
        sha = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=source, capture_output=True, text=True, timeout=5, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=source,
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return f"{sha}-dirty" if dirty else sha


# Loading is the slow part of short trials; a worker process that runs many trials (Ray reuses
# actors) loads each configured dataset once.
@functools.lru_cache(maxsize=4)
def _load_cached(dataset_spec: str, root: str, download: bool) -> DataBundle:
    from distillbench.harness.plugins import DATASETS

    configured = DATASETS.resolve(dataset_spec)
    dataset = configured.obj(configured.params)
    dataset.prepare(Path(root), download=download)
    return dataset.load(Path(root))


def load_data(resolved: ResolvedTrial, data_root: Path, *, download: bool = False) -> DataBundle:
    """The trial's dataset (cached per process).

    Raises:
        DataError: the data is missing or unreadable here; the message names this node, the data
            root and the fix (on a cluster, every node needs the data at the same path).
    """
    root = Path(data_root).expanduser().resolve()
    try:
        return _load_cached(resolved.spec.dataset, str(root), download)
    except DataError as exc:
        state = "does not exist" if not root.exists() else "is incomplete"
        raise DataError(
            f"on node {socket.gethostname()!r} the data root {root} {state}: {exc} (on a cluster every node "
            f"needs the data under {root}: mount it at that path on every node, or set 'download: true' in the "
            "grid and each node downloads it once, under a file lock)"
        ) from None


class TrialOutOfMemory(DistillBenchError):
    """A trial ran out of (GPU or host) memory and its method could not shrink enough to fit."""


_OOM_ERRORS = (torch.OutOfMemoryError, MemoryError)


def _release_memory(device: torch.device) -> None:
    """Free what a finished (or failed) trial left behind, so the next trial on a reused worker starts clean."""
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def _distill_or_shrink(resolved: ResolvedTrial, data: DataBundle, **kwargs: Any) -> DistilledSet:
    """``distill_set``; after an out-of-memory error, once more with the method's smaller parameters.

    The set then records ``meta["effective_method_params"]`` and ``meta["notes"]`` (the row shows both).
    """
    from distillbench.harness.params import params_to_dict

    try:
        return distill_set(resolved, data, **kwargs)
    except _OOM_ERRORS as exc:
        first = f"{type(exc).__name__}: {(str(exc).strip().splitlines() or ['out of memory'])[0]}"
    _release_memory(kwargs["device"])
    smaller = resolved.method.obj.shrink_for_oom(resolved.method.params)
    if smaller is None:
        raise TrialOutOfMemory(
            f"out of memory in method {resolved.method.display!r} ({first}); the method cannot shrink its "
            "batch: give its trials more GPU (resources.per_method in the grid) or lower its batch parameters"
        )
    before, after = params_to_dict(resolved.method.params), params_to_dict(smaller)
    changed = ", ".join(f"{k}={after[k]}" for k in sorted(after) if after[k] != before.get(k))
    was = ", ".join(f"{k}={before[k]}" for k in sorted(after) if after[k] != before.get(k))
    checkpoint = kwargs.get("checkpoint")
    if checkpoint is not None:
        checkpoint.clear()  # its state belongs to the larger batch
    retry = dataclasses.replace(resolved, method=resolved.method._replace(params=smaller))
    try:
        dset = distill_set(retry, data, **kwargs)
    except _OOM_ERRORS as exc:
        raise TrialOutOfMemory(
            f"out of memory in method {resolved.method.display!r} ({first}), and again after retrying with "
            f"{changed} ({type(exc).__name__}); give its trials more GPU (resources.per_method) or lower its "
            "batch parameters"
        ) from None
    dset.meta["effective_method_params"] = after
    dset.meta["notes"] = f"out of memory with {was} ({first}); retried once with {changed}"
    return dset


def _reset_peak_memory(device: torch.device) -> bool:
    """Start a new peak-memory measurement for this trial; whether the CPU peak could be reset.

    CUDA keeps its own peak counter. On the CPU, Linux (4.0 and later) resets the process's peak
    resident set (``VmHWM``) when 5 is written to ``/proc/self/clear_refs``; without that (another
    OS, a locked-down /proc) the peak is the process's since it started, which in a worker that
    runs many trials is the largest trial's so far.
    """
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return True
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return False
    return True


def _peak_memory(device: torch.device, since_reset: bool) -> int:
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    if since_reset:
        try:
            with open("/proc/self/status") as f:
                for line in f:
                    if line.startswith("VmHWM:"):
                        return int(line.split()[1]) * 1024  # "VmHWM:  123708 kB"
        except OSError:
            pass
    # ru_maxrss is in KiB on Linux; it is the process's peak so far (a reused worker keeps its maximum).
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


def _error_text(exc: BaseException) -> str:
    if isinstance(exc, DistillBenchError | DivergedError):
        return f"{type(exc).__name__}: {exc}"
    tail = "".join(traceback.format_exception(exc)[-6:])
    return f"{type(exc).__name__}: {exc}\n{tail}"


def distill_set(
    resolved: ResolvedTrial,
    data: DataBundle,
    *,
    device: torch.device,
    checkpoint: Any = None,
    progress: Callable[[float, str], None] | None = None,
    cache_dir: Path | None = None,
    base: DistilledSet | None = None,
    results: Path | str | None = None,
    probe: Any = None,
) -> DistilledSet:
    """Weighting, distillation and the label stage of one trial.

    The method's seed comes from the trial *without* its label stage, so ``labels: teacher`` or
    ``adsa`` relabel exactly the images of the ``native`` trial; ``base`` is that native set when
    it is already stored (then only the label stage runs). ``cache_dir`` is where teachers are kept,
    ``results`` the results directory whose cached artefacts (expert buffers) the method may share.
    ``probe`` (``tuning.AshaSettings``) makes iterative methods report a cheap validation score of their
    set at a few iterations (:mod:`~distillbench.harness.probe`); the set itself does not change.
    """
    native = _with_native_labels(resolved)
    seed = derive_seed(resolved.spec.seed, "distill", (native or resolved).distill_id)
    ctx = Context(
        device=device,
        generator=torch_generator(seed),
        seed=seed,
        progress=progress,
        cache_dir=cache_dir,
        results=results,
    )
    if checkpoint is not None:  # a Checkpointer: the method's loop resumes from it
        ctx.checkpoint = checkpoint
    if probe is not None:
        from distillbench.harness.probe import Probe

        ctx.probe = Probe(probe.probes, probe.probe_epochs, data, resolved.protocol, seed=seed, device=device)
    if base is not None:
        dset = base
    else:
        weighting = resolved.weighting.obj(resolved.weighting.params)
        # The weights belong to (data, weighting, trial seed), not to the method or the IPC: every
        # trial of a seed that reweights the same data sees the same weights, and a process that
        # already computed them (kde's encoder) reuses them.
        wseed = derive_seed(resolved.spec.seed, "weighting", resolved.dataset.display, resolved.weighting.display)
        wctx = Context(device=device, generator=torch_generator(wseed), seed=wseed, progress=progress)
        ctx.weights = weighting.compute(data, wctx)
        method = resolved.method.obj(resolved.method.params)
        dset = method.distill(data, resolved.spec.ipc, ctx)
    stage = resolved.labels.obj(resolved.labels.params)
    dset = stage.apply(dset, data, ctx)
    if not torch.isfinite(dset.x).all():
        raise DivergedError(f"method {resolved.method.display!r} produced non-finite samples")
    # The space the samples live in travels with the set: evaluating it against data in the other
    # space (ZCA-whitened or not) is refused instead of giving a silently wrong number.
    dset.meta["zca"] = bool(data.info.zca)
    return dset


def _with_native_labels(resolved: ResolvedTrial) -> ResolvedTrial | None:
    """The same trial with label stage ``native`` (``None`` if it already has it)."""
    import dataclasses

    from distillbench.harness.plugins import LABELS

    if getattr(resolved.labels.obj, "identity", False):
        return None
    spec = dataclasses.replace(resolved.spec, labels="native")
    return dataclasses.replace(resolved, spec=spec, labels=LABELS.resolve("native"))


def _teacher_dir(results: Path | str | None) -> Path | None:
    """``<results>/teachers`` for a local results directory, else ``None`` (the user cache)."""
    if results is None or "://" in str(results):
        return None
    return Path(results).expanduser() / "teachers"


def _set_metadata(resolved: ResolvedTrial, distill_seconds: float) -> dict[str, Any]:
    return {
        "distill_id": resolved.distill_id,
        "spec": resolved.spec.to_dict(),
        "resolved": resolved.canonical(with_protocol=False),
        "dataset": resolved.dataset.display,
        "method": resolved.method.display,
        "weighting": resolved.weighting.display,
        "labels": resolved.labels.display,
        "ipc": resolved.spec.ipc,
        "seed": resolved.spec.seed,
        "distill_seconds": distill_seconds,
        "zca": bool(getattr(resolved.info, "zca", False)),
        **{k: v for k, v in provenance().items() if k in ("package_version", "git_sha")},
    }


def run_trial(
    spec: TrialSpec | dict[str, Any],
    *,
    results: Path | str | None = None,
    data_root: Path | None = None,
    download: bool = False,
    device: str | torch.device | None = None,
    reuse_sets: bool = True,
    set_path: Path | None = None,
    progress: Callable[[float, str], None] | None = None,
    artefacts: Path | str | None = None,
    networks: Sequence[str] | None = None,
    probe: Any = None,
) -> list[dict[str, Any]]:
    """Distil and evaluate one trial; return its result rows (never raises for a failing trial).

    Args:
        spec: the trial (a ``TrialSpec`` or its dict form).
        results: results directory (a local path or a URI such as ``s3://bucket/prefix``); when given,
            the distilled set is saved under ``sets/`` (and reused by later trials that differ only in
            the protocol).
        data_root: where datasets live (default: ``$DISTILLBENCH_DATA`` or ``~/.cache/distillbench``).
        download: allow datasets to download missing files.
        device: computation device (default: CUDA if available, else CPU).
        reuse_sets: load an existing set with the same ``distill_id`` instead of distilling again.
        set_path: also save the set at this path (``.safetensors``, with ``.json`` metadata beside it).
        progress: optional callback ``(fraction, message)``; one that also takes ``**values`` gets each
            event's numbers, with ``phase=`` ``load``, ``distill`` or ``evaluate`` (see
            :mod:`~distillbench.harness.progress`).
        artefacts: where cached artefacts shared by trials live (``buffers/``, ``teachers/``); default
            ``results`` (then the user cache without one). Several grids pointed at one folder or URI
            reuse each other's expert buffers and teachers.
        networks: evaluate on these of the protocol's networks only (default: every one of them).
        probe: early-stopping probes for a search trial (``tuning.AshaSettings``): iterative methods report
            the validation accuracy of a cheap evaluation of their set to ``progress`` (``probe``,
            ``probe_val_acc``) at a few iterations; the set and the final evaluation are unchanged.

    Returns:
        One row per evaluation network of the protocol (one row for most protocols; a failure
        before evaluation gives a single row), each a dict with every column of
        :data:`distillbench.harness.store.SCHEMA`.
    """
    start = dt.datetime.now(dt.UTC)
    spec = spec if isinstance(spec, TrialSpec) else TrialSpec.from_dict(spec)
    device = pick_device(device)
    row: dict[str, Any] = {
        "grid": spec.grid,
        "dataset": spec.dataset,
        "method": spec.method,
        "weighting": spec.weighting,
        "labels": spec.labels,
        "ipc": spec.ipc,
        "seed": spec.seed,
        "protocol": spec.protocol,
        "spec_json": json.dumps(spec.to_dict(), sort_keys=True),
        "device": _device_name(device),
        "start_time": start,
        **provenance(),
    }
    peak_reset = _reset_peak_memory(device)
    shared = artefacts if artefacts is not None else results
    try:
        resolved = spec.resolve()
        row.update(identity_columns(resolved))
        # Each phase's events carry phase=load/distill/evaluate for callbacks that take values (live progress).
        emit(in_phase(progress, "load"), 0.0, resolved.dataset.display, fine=True)
        data = load_data(resolved, data_root or default_data_root(), download=download)
        row["train_class_counts"] = data.train.class_counts(data.info.num_classes)
        dset, distill_seconds, reused = None, 0.0, False
        existing = store.find_set(results, resolved.distill_id) if (results is not None and reuse_sets) else None
        if existing is not None:
            dset, _ = store.load_set(existing)
            reused = True
        else:
            t0 = time.perf_counter()
            checkpoint = Checkpointer.for_trial(results, resolved.distill_id) if results is not None else None
            native = _with_native_labels(resolved) if (results is not None and reuse_sets) else None
            found = store.find_set(results, native.distill_id) if native is not None else None
            base = store.load_set(found)[0] if found is not None else None
            emit(in_phase(progress, "distill"), 0.0, "starting", fine=True)
            dset = _distill_or_shrink(
                resolved,
                data,
                checkpoint=checkpoint,
                device=device,
                progress=in_phase(progress, "distill"),
                cache_dir=_teacher_dir(shared),
                base=base,
                results=shared,
                probe=probe,
            )
            distill_seconds = time.perf_counter() - t0
            if results is not None:
                meta = _set_metadata(resolved, distill_seconds)
                existing = store.save_set(store.sets_dir(results), resolved.distill_id, dset, meta)
                checkpoint.clear()  # the set is saved: nothing left to resume
        if set_path is not None:
            _save_at(Path(set_path), dset, _set_metadata(resolved, distill_seconds))
        row.update(
            distill_seconds=distill_seconds,
            set_reused=reused,
            set_bytes=dset.nbytes(),
            n_distilled=len(dset),
            soft_labels=dset.soft,
            effective_method_params=(
                json.dumps(dset.meta["effective_method_params"], sort_keys=True)
                if "effective_method_params" in dset.meta
                else None
            ),
            notes=dset.meta.get("notes"),
            label_tau=dset.meta.get("label_tau"),
            # Seconds this trial spent building the cached artefact its method trains on (expert
            # trajectories); 0 when it was reused, null for methods without one.
            buffer_seconds=(0.0 if reused else dset.meta["buffer"]["build_seconds"]) if "buffer" in dset.meta else None,
            set_path=store.set_relpath(resolved.distill_id) if (existing is not None and results is not None) else None,
        )
        rows = []
        for network in resolved.protocol.networks if networks is None else networks:
            rows.append(
                {
                    **row,
                    **evaluate_set(
                        resolved.protocol,
                        dset,
                        data,
                        seed=spec.seed,
                        device=device,
                        progress=in_phase(progress, "evaluate"),
                        network=network,
                    ),
                    "status": "ok",
                }
            )
    except DivergedError as exc:
        rows = [{**row, "status": "diverged", "error": _error_text(exc)}]
    except Exception as exc:  # one failing trial must not stop the grid; the row carries the error
        rows = [{**row, "status": "error", "error": _error_text(exc)}]
    end = dt.datetime.now(dt.UTC)
    peak = _peak_memory(device, peak_reset)
    if device.type == "cuda":  # per-trial peak (reset at the start) and a clean device for the next trial
        _release_memory(device)
    return [store.make_row({**r, "peak_memory_bytes": peak, "end_time": end}) for r in rows]


def _save_at(path: Path, dset: DistilledSet, meta: dict[str, Any]) -> None:
    """Save a set at an explicit path (``distillbench distill --out``)."""
    path = path if path.suffix == ".safetensors" else path.with_suffix(".safetensors")
    store.save_set(path.parent, path.stem, dset, meta)


def identity_columns(resolved: ResolvedTrial) -> dict[str, Any]:
    """The identity columns of a trial's rows (the same for every row and every outcome)."""
    from distillbench.harness.params import params_to_dict
    from distillbench.harness.protocols import replays_method

    return {
        "grid": resolved.spec.grid,
        "ipc": resolved.spec.ipc,
        "seed": resolved.spec.seed,
        "trial_id": resolved.trial_id,
        "distill_id": resolved.distill_id,
        "dataset": resolved.dataset.display,
        "dataset_params": json.dumps(params_to_dict(resolved.dataset.params), sort_keys=True),
        "method": resolved.method.display,
        "method_name": resolved.method.name,
        "method_params": json.dumps(params_to_dict(resolved.method.params), sort_keys=True),
        "weighting": resolved.weighting.display,
        "labels": resolved.labels.display,
        "protocol": resolved.protocol.name,
        "protocol_version": resolved.protocol.version,
        # Replayed sets train their own network; name it even on rows that fail before evaluation.
        "eval_network": (
            getattr(resolved.method.params, "net", resolved.protocol.network)
            if replays_method(resolved.protocol, resolved.method.obj)
            else resolved.protocol.network
        ),
        "spec_json": json.dumps(resolved.canonical(), sort_keys=True),
        "n_eval_models": resolved.protocol.n_models,
        # Which search a tuned trial belongs to and its role, on every row (error rows too); the other tuning
        # columns come from the driver, which knows the search (harness/scheduler.py).
        **_tuning_columns(resolved.spec.tuning),
    }


def _tuning_columns(tuning: str | None) -> dict[str, Any]:
    from distillbench.harness.tuning import parse_tuning

    parsed = parse_tuning(tuning)
    return {} if parsed is None else {"tuning_id": parsed[0], "tune_role": parsed[1]}


def evaluate_set(
    protocol: Any,
    dset: DistilledSet,
    data: DataBundle,
    *,
    seed: int,
    device: torch.device,
    progress: Callable[[float, str], None] | None = None,
    network: str | None = None,
) -> dict[str, Any]:
    """Evaluate ``dset`` under ``protocol`` (on ``network``, default its primary one); metric and cost columns."""
    from distillbench.harness.evaluate import RESULT_COLUMNS, evaluate

    result = evaluate(protocol, dset, data, seed=seed, device=device, progress=progress, network=network)
    return {
        **{name: getattr(result, name) for name in RESULT_COLUMNS},
        "eval_seconds": result.seconds,
        "n_eval_models": len(result.acc_per_model),
        "eval_network": result.network,
    }


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        return f"cuda:{index} ({torch.cuda.get_device_name(index)})"
    return f"cpu ({platform.processor() or platform.machine()})"


__all__ = ["run_trial", "distill_set", "evaluate_set", "load_data", "pick_device", "default_data_root"]
