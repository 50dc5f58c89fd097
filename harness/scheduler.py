"""Ray Tune scheduling of a grid; the only module that imports Ray.

The Parquet rows are the source of truth for what is done: a run skips every trial whose id
already has a row, and schedules the rest as one Tune experiment (a "wave") under a fresh name.
Re-running a grid is therefore the resume button and never duplicates a row. Rows are written by
the driver as each trial reports (a Tune callback), so an interrupted run keeps every finished row.

Ray traps handled here (see the Ray notes in the design documents): a relative ``storage_path``
fails, so paths are absolute; reused actors make short trials ~50x cheaper; Ray's own progress
output is replaced by one status line; SIGTERM is turned into SIGINT so Tune stops cleanly.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import ipaddress
import logging
import os
import signal
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TextIO

from distillbench.harness import store
from distillbench.harness.spec import ResolvedTrial

# Ray reads these when it is imported or initialised: quiet output, no usage reporting by default.
os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
os.environ.setdefault("RAY_DEDUP_LOGS", "0")

import ray  # noqa: E402
from ray import tune  # noqa: E402

LOOPBACK = "127.0.0.1"


def _init_local_ray(kwargs: dict[str, Any]) -> None:
    """Start a local Ray whose servers (GCS, raylet, workers, driver) listen on the loopback address only.

    A local run needs no other machine, and Ray's services accept unauthenticated RPCs from anyone who
    can reach their ports. Ray 2.60 binds its gRPC servers to 127.0.0.1 only when the node IP is exactly
    127.0.0.1, but ``ray.init(_node_ip_address="127.0.0.1")`` deliberately rewrites a loopback address
    to the machine's public one. The node IP is 127.0.0.1 in Ray's single-machine mode (its default on
    macOS and Windows, ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``); that switch is read once when Ray is
    imported, so it is turned off here for the start only. If a Ray version lacks it, Ray starts as
    before and a warning says so.
    """
    from ray._private import ray_constants

    log = logging.getLogger(__name__)
    if not isinstance(getattr(ray_constants, "ENABLE_RAY_CLUSTER", None), bool):
        ray.init(**kwargs)
    else:
        saved = ray_constants.ENABLE_RAY_CLUSTER
        ray_constants.ENABLE_RAY_CLUSTER = False
        try:
            ray.init(**kwargs)
        finally:
            ray_constants.ENABLE_RAY_CLUSTER = saved
    node_ip = ray.util.get_node_ip_address()
    if not ipaddress.ip_address(node_ip).is_loopback:
        log.warning(
            "local Ray listens on %s, not only on %s: this Ray version ignores the loopback setting; "
            "firewall its ports or run on a trusted network",
            node_ip,
            LOOPBACK,
        )


@dataclasses.dataclass
class GridOutcome:
    """What a scheduled run did."""

    total: int
    skipped: int
    ok: int = 0
    failed: int = 0
    lost: int = 0
    interrupted: bool = False
    seconds: float = 0.0
    errors: list[str] = dataclasses.field(default_factory=list)

    @property
    def pending(self) -> int:
        """Trials still without a row (interrupted or lost)."""
        return self.total - self.skipped - self.ok - self.failed


def _trainable(config: dict[str, Any]) -> None:
    """The Tune function trainable: run one trial and report its row (a JSON string)."""
    import torch

    from distillbench.harness.plugins import load_plugin_modules
    from distillbench.harness.runner import run_trial

    # Plugins named by the grid register themselves in this worker process too.
    load_plugin_modules(config.get("plugins", []))
    trial = config["trial"]
    torch.set_num_threads(max(1, int(trial.get("cpu", 1))))
    rows = run_trial(
        trial["spec"],
        results=config["results"],
        data_root=Path(config["data_root"]),
        download=bool(config.get("download", False)),
        artefacts=config.get("artefacts"),
    )
    status = "ok" if all(r["status"] == "ok" for r in rows) else next(r["status"] for r in rows if r["status"] != "ok")
    tune.report({"rows_json": store.rows_to_json(rows), "status": status})


class _RowWriter(tune.Callback):
    """Driver-side: writes each trial's row as soon as it reports; records infrastructure failures."""

    def __init__(self, results: str, progress: _Progress) -> None:
        self.results = results
        self.progress = progress

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        text = result.get("rows_json")
        if text is None:
            return
        rows = store.rows_from_json(text)
        expected = trial.config.get("trial", {}).get("trial_id")
        if expected and rows[0]["trial_id"] is None:
            # The worker could not even resolve the spec (its error says why): keep that error under the
            # driver's identity so the row counts, instead of a nameless row the store must refuse.
            rows = [{**self._skew_row(trial, None, rows[0].get("node")), "error": rows[0].get("error")}]
        elif expected and rows[0]["trial_id"] != expected:
            # The worker resolved the spec to another id: its code (distillbench or a plugin) is not
            # the driver's. Its row would never count as done, so the grid would re-run it forever.
            rows = [self._skew_row(trial, rows[0]["trial_id"], rows[0].get("node"))]
        store.write_rows(self.results, rows)
        failed = [r for r in rows if r["status"] != "ok"]
        self.progress.finished(
            trial.trial_id, failed[0]["status"] if failed else "ok", failed[0]["error"] if failed else None
        )

    @staticmethod
    def _skew_row(trial: Any, got: str, node: str | None) -> dict[str, Any]:
        from distillbench.harness.runner import identity_columns
        from distillbench.harness.spec import TrialSpec

        resolved = TrialSpec.from_dict(trial.config["trial"]["spec"]).resolve()
        message = (
            f"the worker on node {node!r} computed trial id {got} for this trial, the driver {resolved.trial_id}: "
            "the node runs different code (distillbench, a plugin or a default changed). Install the same "
            "version on every node (or restart the run after editing the code), then run the grid again"
        )
        return {**identity_columns(resolved), "status": "error", "error": message, "node": node}

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.progress.started(trial.trial_id)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        # The worker died or raised outside run_trial (which catches trial errors) and retries are
        # exhausted: keep an error row so the grid's state is visible and a re-run retries it.
        spec = trial.config.get("trial", {}).get("spec", {})
        error = f"trial failed in Ray after retries: {getattr(trial, 'error_file', None) or 'worker lost'}"
        message = _ray_error_text(trial) or error
        try:
            from distillbench.harness.runner import identity_columns
            from distillbench.harness.spec import TrialSpec

            resolved = TrialSpec.from_dict(spec).resolve()
            store.write_row(self.results, {**identity_columns(resolved), "status": "error", "error": message})
        finally:
            self.progress.finished(trial.trial_id, "error", message)

    def on_step_end(self, iteration: int, trials: list, **info: Any) -> None:
        # Tune does not announce every start when it reuses actors; its trial list is the truth.
        self.progress.running = {t.trial_id for t in trials if t.status == "RUNNING"} - self.progress.finished_ids
        self.progress.tick()


def _ray_error_text(trial: Any) -> str | None:
    path = getattr(trial, "error_file", None) or getattr(getattr(trial, "run_metadata", None), "error_filename", None)
    try:
        if path and Path(path).is_file():
            lines = Path(path).read_text().strip().splitlines()
            return "\n".join(lines[-6:])
    except OSError:
        return None
    return None


class _Progress:
    """One status line: trials done / running / failed, elapsed time and an estimate of the rest."""

    def __init__(self, total: int, skipped: int, stream: TextIO, enabled: bool) -> None:
        self.total, self.skipped = total, skipped
        self.pending = total - skipped
        self.stream = stream
        self.enabled = enabled
        self.tty = enabled and getattr(stream, "isatty", lambda: False)()
        self.running: set[str] = set()
        self.finished_ids: set[str] = set()
        self.ok = self.failed = 0
        self.start = time.monotonic()
        self._last_draw = 0.0
        self.errors: list[str] = []

    def __getstate__(self) -> dict[str, Any]:
        # Tune pickles its callbacks into the experiment state; the stream (a terminal, or a test's
        # capture buffer) stays behind: a restored copy draws nothing.
        return {**self.__dict__, "stream": None, "enabled": False, "tty": False}

    def started(self, trial_id: str) -> None:
        self.running.add(trial_id)
        self.draw()

    def finished(self, trial_id: str, status: str, error: str | None) -> None:
        self.running.discard(trial_id)
        self.finished_ids.add(trial_id)
        if status == "ok":
            self.ok += 1
        else:
            self.failed += 1
            first = (error or "").strip().splitlines()[0] if error else status
            self.errors.append(first)
        self.draw(force=True)

    def tick(self) -> None:
        if self.tty and time.monotonic() - self._last_draw >= 1.0:
            self.draw()

    def line(self) -> str:
        elapsed = time.monotonic() - self.start
        finished = self.ok + self.failed
        left = self.pending - finished
        eta = f"~{_clock(elapsed / finished * left)} left" if finished else "estimating"
        return (
            f"[{finished + self.skipped}/{self.total}] {self.ok} done, {len(self.running)} running, "
            f"{self.failed} failed, {left} to go ({self.skipped} skipped) | {_clock(elapsed)} elapsed, {eta}"
        )

    def draw(self, force: bool = False) -> None:
        if not self.enabled:
            return
        self._last_draw = time.monotonic()
        if self.tty:
            self.stream.write("\r\033[K" + self.line())
        elif force:
            self.stream.write(self.line() + "\n")
        self.stream.flush()

    def close(self) -> None:
        if self.enabled and self.tty:
            self.stream.write("\n")
            self.stream.flush()


def _clock(seconds: float) -> str:
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes:02d}:{secs:02d}"


def _placement(config: dict[str, Any]) -> Any:
    """Per-trial resources for ``tune.with_resources``: one bundle with the trial's CPUs and GPUs."""
    trial = config["trial"]
    bundle = {"CPU": float(trial.get("cpu", 1))}
    if trial.get("gpu"):
        bundle["GPU"] = float(trial["gpu"])
    return tune.PlacementGroupFactory([bundle])


def run_grid(
    trials: Sequence[ResolvedTrial],
    *,
    results: Path | str,
    data_root: Path,
    grid_name: str,
    resources: Mapping[str, Any] | None = None,
    retries: int = 0,
    download: bool = False,
    artefacts: Path | str | None = None,
    address: str | None = None,
    ray_init: Mapping[str, Any] | None = None,
    show_progress: bool = True,
    stream: TextIO | None = None,
    plugins: Sequence[str] = (),
    callbacks: Sequence[Any] = (),
) -> GridOutcome:
    """Run every trial that has no row yet under Ray Tune; rows land in ``<results>/rows``.

    Args:
        trials: validated trials (``Grid.trials``).
        results: results directory: a local or NFS path, or a URI such as ``s3://bucket/prefix``.
        data_root: absolute data root, visible at the same path on every node.
        grid_name: used to name the Tune experiment (a fresh name per run).
        resources: per-trial ``{"cpu": n, "gpu": g}`` (fractional GPUs allowed), optionally with
            ``per_method: {method: {"cpu": n, "gpu": g}}`` overrides (see ``spec.trial_resources``).
        retries: Tune retries of a trial whose worker fails (trial errors are rows, not retried).
        download: let datasets download missing files.
        artefacts: where cached artefacts shared by trials live (expert buffers, teachers), when not in
            ``results``: a folder or URI that several grids share.
        address: join a running cluster (``auto`` or ``host:port``); default starts local Ray.
        ray_init: extra ``ray.init`` keyword arguments (tests pass a small object store).
        show_progress: print the status line.
        stream: where the status line goes (default stderr).
        plugins: plugin modules or absolute ``.py`` paths each worker imports before its trial.
        callbacks: further Tune callbacks (tests use them to watch placements).
    """
    from distillbench.harness.spec import trial_resources

    stream = stream or sys.stderr
    where = store.location(results)
    # Rows are our record, so Tune's per-trial JSON/CSV loggers are off; its end-of-run summary then
    # warns once per trial that it found no result.json. The local token-auth notice is Ray's default
    # and needs no action. Neither is useful to a user reading the status line.
    for name in ("ray.tune.analysis.experiment_analysis", "ray._private.authentication.authentication_token_setup"):
        logging.getLogger(name).setLevel(logging.ERROR)
    # Rows with status ok or diverged are results; an error row means "no result yet" and is retried.
    done = store.existing_trial_ids(where, status=("ok", "diverged"))
    pending = [t for t in trials if t.trial_id not in done]
    outcome = GridOutcome(total=len(trials), skipped=len(trials) - len(pending))
    if not pending:
        return outcome
    resources = dict(resources or {"cpu": 1, "gpu": 0})
    points = [
        {"spec": t.spec.to_dict(), **trial_resources(resources, t.method.name), "trial_id": t.trial_id} for t in pending
    ]
    progress = _Progress(len(trials), outcome.skipped, stream, show_progress)
    started_here = False
    if not ray.is_initialized():
        kwargs: dict[str, Any] = {"include_dashboard": False, "logging_level": "WARNING", "log_to_driver": False}
        address = address or os.environ.get("RAY_ADDRESS")
        if address:
            kwargs["address"] = address
        else:
            kwargs["num_cpus"] = os.cpu_count() or 1
        kwargs.update(ray_init or {})
        if address or "_node_ip_address" in kwargs:
            ray.init(**kwargs)  # joining a cluster, or an explicit node address: the user's choice
        else:
            _init_local_ray(kwargs)
        started_here = True
    previous = signal.getsignal(signal.SIGTERM)
    if _in_main_thread():
        # Tune only catches SIGINT; a cluster scheduler's SIGTERM would otherwise kill the driver
        # before it saves state. Finished rows are on disk either way.
        signal.signal(signal.SIGTERM, lambda *_: os.kill(os.getpid(), signal.SIGINT))
    start = time.monotonic()
    try:
        experiment = f"{_slug(grid_name)}-{dt.datetime.now(dt.UTC).strftime('%Y%m%d-%H%M%S-%f')}"
        trainable = tune.with_resources(_trainable, _placement)
        tuner = tune.Tuner(
            trainable,
            param_space={
                "trial": tune.grid_search(points),
                "results": where.uri,
                "data_root": str(Path(data_root).expanduser().resolve()),
                "download": download,
                "artefacts": store.location(artefacts).uri if artefacts is not None else None,
                "plugins": list(plugins),
            },
            tune_config=tune.TuneConfig(reuse_actors=True),
            run_config=tune.RunConfig(
                name=experiment,
                storage_path=(where / "ray").uri,
                verbose=0,
                failure_config=tune.FailureConfig(max_failures=retries),
                checkpoint_config=tune.CheckpointConfig(num_to_keep=2),
                callbacks=[_RowWriter(where.uri, progress), *callbacks],
            ),
        )
        tuner.fit()
    finally:
        progress.close()
        if _in_main_thread():
            signal.signal(signal.SIGTERM, previous)
        if started_here:
            ray.shutdown()
    outcome.seconds = time.monotonic() - start
    rows = store.read_rows([where], columns=["trial_id", "status"])
    statuses = dict(zip(rows["trial_id"], rows["status"], strict=True))
    ids = [t.trial_id for t in pending]
    outcome.ok = sum(1 for i in ids if statuses.get(i) == "ok")
    outcome.failed = sum(1 for i in ids if i in statuses and statuses[i] != "ok")
    outcome.interrupted = outcome.pending > 0
    outcome.errors = progress.errors
    return outcome


def _in_main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


def _slug(text: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_" else "-" for ch in text)[:60] or "grid"
