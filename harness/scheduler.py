"""Ray Tune scheduling of a grid; the only module that imports Ray.

The Parquet rows are the source of truth for what is done: a run skips every trial whose id
already has a row, and schedules the rest as one Tune experiment (a "wave") under a fresh name.
Re-running a grid is therefore the resume button and never duplicates a row. Rows are written by
the driver as each trial reports (a Tune callback), so an interrupted run keeps every finished row.

One run per trial: two drivers on the same grid and results directory (two people, a re-submitted job;
one machine or several sharing an NFS path or ``s3://`` prefix) never execute one trial twice. A worker
takes the trial's claim ``<results>/claims/<trial_id>.json`` (:class:`artefacts.Claim`) before it starts,
refreshes it while the trial runs, and the driver removes it once the row is written; a trial whose claim
another live run holds is skipped here and reported as claimed elsewhere, and a claim whose heartbeat
stopped (a dead driver) is taken over. Before scheduling, the driver leaves out trials it already sees
claimed, with the same rule the workers apply.

Nothing a callback raises reaches Tune (which would end the driver and every running trial): a row that
cannot be written becomes a recorded failure of that trial, and a store that takes no more writes (disk
full, read-only, no permission) stops the run cleanly with one message; finished rows stay.

Ray traps handled here (see the Ray notes in the design documents): a relative ``storage_path``
fails, so paths are absolute; reused actors make short trials ~50x cheaper; Ray's own progress
output is replaced by one status line; SIGTERM is turned into SIGINT so Tune stops cleanly.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import inspect
import ipaddress
import logging
import math
import os
import signal
import socket
import sys
import time
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TextIO

from distillbench.harness import artefacts, store, tuning
from distillbench.harness.errors import DistillBenchError
from distillbench.harness.progress import Event, LiveTrials, TrialReporter, fit, from_report, trial_label
from distillbench.harness.progress import format_clock as _clock
from distillbench.harness.spec import ResolvedTrial

# Ray reads these when it is imported or initialised: quiet output, no usage reporting by default.
os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
os.environ.setdefault("RAY_DEDUP_LOGS", "0")

import ray  # noqa: E402
from ray import tune  # noqa: E402
from ray.tune.schedulers import AsyncHyperBandScheduler  # noqa: E402
from ray.tune.search import Searcher  # noqa: E402
from ray.tune.stopper import Stopper  # noqa: E402

LOOPBACK = "127.0.0.1"
# Least seconds between two progress reports of a running trial (a phase change is reported at once). Each
# report is one Tune result the worker waits on; a large cluster may want fewer (DISTILLBENCH_REPORT_INTERVAL).
REPORT_INTERVAL_S = 2.0
# Without a terminal, a running trial's progress is printed at most this often (plus at each phase change).
LINE_INTERVAL_S = 10.0


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
    interrupted: bool = False
    seconds: float = 0.0
    errors: list[str] = dataclasses.field(default_factory=list)
    #: trials another run of the grid had claimed (running or finished there), so not run here
    elsewhere: int = 0
    #: why the run stopped early because the store takes no more writes (one line: path, reason, fix)
    stopped: str | None = None
    #: further lines for the summary (trials claimed elsewhere, callbacks that failed)
    notes: list[str] = dataclasses.field(default_factory=list)
    #: what the searches of tuned blocks did (:class:`TuningOutcome`), when the grid has any
    tuning: Any = None

    @property
    def pending(self) -> int:
        """Trials still without a row here (interrupted or lost), not counting those claimed elsewhere."""
        return self.total - self.skipped - self.ok - self.failed - self.elsewhere


def _claim_target(results: str, trial_id: str) -> store.Location:
    return store.location(results) / "claims" / f"{trial_id}.json"


def _holder_text(holder: dict[str, Any]) -> str:
    beat = holder.get("time")
    age = f", last heartbeat {time.time() - beat:.0f} s ago" if isinstance(beat, (int, float)) else ""
    driver = holder.get("driver") or "another driver"
    return f"claimed by the run of {driver} (worker {holder.get('host')} pid {holder.get('pid')}{age})"


def _trainable(config: dict[str, Any]) -> None:
    """The Tune function trainable: run one trial and report its row (a JSON string)."""
    import torch

    from distillbench.harness.plugins import load_plugin_modules
    from distillbench.harness.runner import run_trial

    # Plugins named by the grid register themselves in this worker process too.
    load_plugin_modules(config.get("plugins", []))
    trial = config["trial"]
    claim = None
    if config.get("claim_owner") and trial.get("trial_id"):
        claim = artefacts.Claim(
            _claim_target(config["results"], trial["trial_id"]),
            owner=config["claim_owner"],
            info={key: config.get(key) for key in _driver()},
        )
        holder = claim.try_acquire()
        if holder is not None:
            tune.report({"elsewhere": _holder_text(holder)})
            return
        if store.row_stamp(config["results"], trial["trial_id"]) != trial.get("row_stamp"):
            # Another run wrote this trial's row after this driver looked (and then released its claim):
            # the trial ran there, whatever its status. Running it again is the double work claims prevent.
            claim.release()
            tune.report({"elsewhere": "run by another driver while this one was starting"})
            return
        claim.start_heartbeat()
    torch.set_num_threads(max(1, int(trial.get("cpu", 1))))
    # Progress goes to Tune as intermediate results (phase, iteration x of y, loss, ...), at a bounded rate;
    # they carry no rows_json, so the row writer waits for the final one.
    reporter = TrialReporter(tune.report, interval=float(config.get("report_interval", REPORT_INTERVAL_S)))
    # A search trial under ASHA: its method reports probes (validation accuracy of its set so far) as progress.
    probe = tuning.AshaSettings(**trial["probe"]) if trial.get("probe") else None
    try:
        rows = run_trial(
            trial["spec"],
            results=config["results"],
            data_root=Path(config["data_root"]),
            download=bool(config.get("download", False)),
            artefacts=config.get("artefacts"),
            progress=reporter,
            probe=probe,
        )
    finally:
        if claim is not None:
            # Stop refreshing before reporting: the driver removes the claim once the row is written, and
            # a refresh after that must not leave it behind. If no row comes, the claim expires.
            claim.stop_heartbeat()
    status = store.trial_status(r["status"] for r in rows)
    # The final result: the rows for the driver's writer, and the tracked scalars (acc_mean, seconds, peak
    # memory, ...) as numbers that Tune's loggers record.
    tune.report({"rows_json": store.rows_to_json(rows), "status": status, **store.tracked_values(rows)})


class _RowWriter(tune.Callback):
    """Driver-side: writes each trial's row as soon as it reports; records infrastructure failures."""

    def __init__(self, results: str, progress: _Progress, owner: str | None = None) -> None:
        self.results = results
        self.progress = progress
        self.owner = owner

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        expected = trial.config.get("trial", {}).get("trial_id")
        if "elsewhere" in result:
            self.progress.claimed_elsewhere(trial.trial_id, expected, result["elsewhere"])
            return
        text = result.get("rows_json")
        if text is None:  # an intermediate result: the trial's progress
            event = from_report(result)
            if event is not None:
                self.progress.trial_progress(
                    trial.trial_id, trial_label(trial.config.get("trial", {}).get("spec", {})), event
                )
            return
        try:
            rows = store.rows_from_json(text)
            if expected and rows[0]["trial_id"] is None:
                # The worker could not even resolve the spec (its error says why): keep that error under the
                # driver's identity so the row counts, instead of a nameless row the store must refuse.
                rows = [{**self._skew_row(trial, None, rows[0].get("node")), "error": rows[0].get("error")}]
            elif expected and rows[0]["trial_id"] != expected:
                # The worker resolved the spec to another id: its code (distillbench or a plugin) is not
                # the driver's. Its row would never count as done, so the grid would re-run it forever.
                rows = [self._skew_row(trial, rows[0]["trial_id"], rows[0].get("node"))]
            # Columns only the driver knows (a tuned trial's budget, space hash and parameters).
            extra = trial.config.get("trial", {}).get("columns") or {}
            store.write_rows(self.results, [{**row, **extra} for row in rows])
        except Exception as exc:
            self._not_written(trial, expected, exc)
            return
        self._release(expected)
        status = store.trial_status(r["status"] for r in rows)
        self.progress.finished(trial.trial_id, status, next((r["error"] for r in rows if r["status"] == status), None))

    def _not_written(self, trial: Any, trial_id: str | None, exc: Exception) -> None:
        """A row that could not be written: stop the run if the store is full or read-only, else record it."""
        message = store.write_problem_message(store.location(self.results) / "rows", exc)
        if store.storage_problem(exc) is not None:
            # Every further row would fail the same way: stop scheduling (the stopper reads this), keep
            # the rows already written; this trial runs again next time.
            self.progress.stop(message)
            self.progress.finished(trial.trial_id, "not written", message)
            self._release(trial_id)
            return
        # A problem of this row, not of the store (a value the schema refuses, a bug): an error row says
        # so where the results are read, and a re-run runs the trial again.
        error = (
            f"RowNotWritten: the driver could not write this trial's row ({type(exc).__name__}: {exc}); "
            "run the grid again to retry it"
        )
        if trial_id:
            self.progress.unwritten.add(trial_id)
        try:
            from distillbench.harness.runner import identity_columns
            from distillbench.harness.spec import TrialSpec

            resolved = TrialSpec.from_dict(trial.config["trial"]["spec"]).resolve()
            store.write_row(self.results, {**identity_columns(resolved), "status": "error", "error": error})
        except Exception as second:  # the error row fails too: the summary still counts the failure
            logging.getLogger(__name__).warning("no error row for trial %s either: %s", trial_id, second)
        self._release(trial_id)
        self.progress.finished(trial.trial_id, "error", error)

    def _release(self, trial_id: str | None) -> None:
        if not (self.owner and trial_id):
            return
        try:
            artefacts.release_claim(_claim_target(self.results, trial_id), self.owner)
        except Exception as exc:  # an unreachable store: the claim expires on its own
            logging.getLogger(__name__).warning("cannot remove the claim of trial %s: %s", trial_id, exc)

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
        self.progress.started(trial.trial_id, trial_label(trial.config.get("trial", {}).get("spec", {})))

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        # The worker died or raised outside run_trial (which catches trial errors) and retries are
        # exhausted: keep an error row so the grid's state is visible and a re-run retries it.
        spec = trial.config.get("trial", {}).get("spec", {})
        trial_id = trial.config.get("trial", {}).get("trial_id")
        error = f"trial failed in Ray after retries: {getattr(trial, 'error_file', None) or 'worker lost'}"
        message = _ray_error_text(trial) or error
        try:
            from distillbench.harness.runner import identity_columns
            from distillbench.harness.spec import TrialSpec

            resolved = TrialSpec.from_dict(spec).resolve()
            store.write_row(self.results, {**identity_columns(resolved), "status": "error", "error": message})
        except Exception as exc:
            if store.storage_problem(exc) is not None:
                self.progress.stop(store.write_problem_message(store.location(self.results) / "rows", exc))
            elif trial_id:
                self.progress.unwritten.add(trial_id)
        finally:
            self._release(trial_id)
            self.progress.finished(trial.trial_id, "error", message)

    def on_step_end(self, iteration: int, trials: list, **info: Any) -> None:
        # Tune does not announce every start when it reuses actors; its trial list is the truth.
        self.progress.running = {t.trial_id for t in trials if t.status == "RUNNING"} - self.progress.finished_ids
        self.progress.tick()


class _Guarded(tune.Callback):
    """Runs another callback's hooks; what one raises is recorded for the summary, never raised into Tune.

    Tune lets a callback's exception end ``fit()``, which kills every running trial and, before rows
    were written per trial, lost finished work; a bug in a callback is one line in the summary instead.
    """

    def __init__(self, inner: Any, progress: _Progress) -> None:
        self.inner = inner
        self.progress = progress

    def _call(self, hook: str, info: dict[str, Any]) -> None:
        try:
            getattr(self.inner, hook)(**info)
        except Exception as exc:
            self.progress.callback_failed(f"{type(self.inner).__name__}.{hook}", exc)


def _guarded_hook(hook: str) -> Any:
    def call(self: _Guarded, **info: Any) -> None:
        self._call(hook, info)

    call.__name__ = hook
    return call


for _hook in [name for name in vars(tune.Callback) if name.startswith("on_") or name == "setup"]:
    setattr(_Guarded, _hook, _guarded_hook(_hook))


class _StopWhenStoreFails(Stopper):
    """Stops the whole experiment once the row writer found the store full or read-only."""

    def __init__(self, progress: _Progress) -> None:
        self.progress = progress

    def __call__(self, trial_id: str, result: dict[str, Any]) -> bool:
        return False

    def stop_all(self) -> bool:
        return self.progress.stopped is not None


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
    """The status display: trials done, running and failed, elapsed time, an estimate of the rest, and progress.

    Each running trial's progress (phase, iteration x of y, loss) comes from its intermediate Tune results
    (:class:`~distillbench.harness.progress.LiveTrials`). On a terminal the summary line and one line per
    running trial are redrawn in place. Elsewhere the summary is printed when a trial ends, and a trial's
    progress at each phase change and at most every ``LINE_INTERVAL_S`` seconds between, so a log shows a
    long run moving.
    """

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
        self.elsewhere: dict[str, str] = {}  # our trial id -> who holds its claim
        self.unwritten: set[str] = set()  # trials whose row (and error row) the driver could not write
        self.stopped: str | None = None
        self.callback_errors: dict[str, tuple[int, str]] = {}  # "Class.hook" -> (count, first error)
        self.live = LiveTrials(line_interval=LINE_INTERVAL_S)
        self._drawn_lines = 0  # lines of the block last drawn on a terminal

    def __getstate__(self) -> dict[str, Any]:
        # Tune pickles its callbacks into the experiment state; the stream (a terminal, or a test's
        # capture buffer) stays behind: a restored copy draws nothing.
        return {**self.__dict__, "stream": None, "enabled": False, "tty": False}

    def started(self, trial_id: str, label: str | None = None) -> None:
        self.running.add(trial_id)
        if label is not None:
            self.live.start(trial_id, label)
        self.draw()

    def trial_progress(self, trial_id: str, label: str, event: Event) -> None:
        """A running trial reported its progress."""
        line = self.live.update(trial_id, label, event)
        if not self.enabled:
            return
        if self.tty:
            if time.monotonic() - self._last_draw >= 0.25:
                self.draw()
        elif line is not None:
            self.stream.write(line + "\n")
            self.stream.flush()

    def finished(self, trial_id: str, status: str, error: str | None) -> None:
        self.running.discard(trial_id)
        self.finished_ids.add(trial_id)
        self.live.drop(trial_id)
        if status == "ok":
            self.ok += 1
        else:
            self.failed += 1
            first = (error or "").strip().splitlines()[0] if error else status
            self.errors.append(first)
        self.draw(force=True)

    def claimed_elsewhere(self, tune_id: str, trial_id: str | None, holder: str) -> None:
        self.running.discard(tune_id)
        self.finished_ids.add(tune_id)
        self.live.drop(tune_id)
        self.elsewhere[trial_id or tune_id] = holder
        self.draw(force=True)

    def stop(self, message: str) -> None:
        if self.stopped is None:
            self.stopped = message

    def callback_failed(self, where: str, exc: Exception) -> None:
        count, first = self.callback_errors.get(where, (0, f"{type(exc).__name__}: {exc}"))
        self.callback_errors[where] = (count + 1, first)
        if count == 0:  # a logger that fails at every result says so once; the summary counts the rest
            logging.getLogger(__name__).warning("Tune callback %s failed (skipped): %s", where, exc)

    def tick(self) -> None:
        if self.tty and time.monotonic() - self._last_draw >= 1.0:
            self.draw()
        elif self.enabled and not self.tty:
            for line in self.live.quiet():  # trials that reported nothing for a minute: still running
                self.stream.write(line + "\n")
                self.stream.flush()

    def line(self) -> str:
        elapsed = time.monotonic() - self.start
        finished = self.ok + self.failed
        elsewhere = len(self.elsewhere)
        left = self.pending - finished - elsewhere
        eta = f"~{_clock(elapsed / finished * left)} left" if finished else "estimating"
        other = f", {elsewhere} claimed elsewhere" if elsewhere else ""
        return (
            f"[{finished + elsewhere + self.skipped}/{self.total}] {self.ok} done, {len(self.running)} running, "
            f"{self.failed} failed{other}, {left} to go ({self.skipped} skipped) | {_clock(elapsed)} elapsed, {eta}"
        )

    def draw(self, force: bool = False) -> None:
        if not self.enabled:
            return
        self._last_draw = time.monotonic()
        if self.tty:
            # Back to the first line of the block drawn last, clear to the end of the screen, draw anew; each
            # line is cut to the terminal's width, since a wrapped line would shift the block.
            up = "\033[F" * max(0, self._drawn_lines - 1)
            block = [fit(line) for line in [self.line(), *self.live.lines()]]
            self.stream.write("\r" + up + "\033[J" + "\n".join(block))
            self._drawn_lines = len(block)
        elif force:
            self.stream.write(self.line() + "\n")
        self.stream.flush()

    def close(self) -> None:
        if self.enabled and self.tty:
            self.stream.write("\n")
            self.stream.flush()


def _worker_config(
    where: store.Location, data_root: Any, download: bool, artefacts: Any, plugins: Sequence[str], run_id: str
) -> dict[str, Any]:
    """What every trial's worker needs besides its spec: one place for grid runs and searches alike."""
    return {
        "results": where.uri,
        "data_root": str(Path(data_root).expanduser().resolve()),
        "download": download,
        "artefacts": store.location(artefacts).uri if artefacts is not None else None,
        "plugins": list(plugins),
        "claim_owner": run_id,
        **_driver(),
        "report_interval": _report_interval(),
    }


def _driver() -> dict[str, Any]:
    """This driver, as a trial's claim names it.

    For messages, and for ``claim_is_free``, which frees the claim of a worker whose driver died on the same
    host (the driver writes the rows: that worker's work is lost).
    """
    return {
        "driver": f"{socket.gethostname()} pid {os.getpid()}",
        "driver_host": socket.gethostname(),
        "driver_pid": os.getpid(),
    }


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
    loggers: Sequence[str] = (),
    row_columns: Mapping[str, Mapping[str, Any]] | None = None,
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
        loggers: Ray Tune logger callbacks to attach: ``tensorboard``, ``mlflow``, ``wandb``
            (:func:`_logger_callbacks` says where each writes).
        row_columns: further columns of some trials' rows, by trial id, set by the driver when it writes them
            (the tuning columns of final trials; :func:`run_tuned_grid`).

    Raises:
        DistillBenchError: an unknown logger, a logger whose package is missing, or a logger that cannot
            write where the results are (before anything runs).
    """
    from distillbench.harness.progress import check_loggers
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
    # A full disk, a read-only mount or a missing permission fails here in one line, before Ray starts.
    store.check_writable(where)
    # So does a logger that cannot work (unknown, its package missing, nowhere to write).
    loggers = check_loggers(list(loggers), "loggers")
    logger_callbacks = _logger_callbacks(loggers, where=where, grid_name=grid_name)
    progress = _Progress(len(trials), outcome.skipped, stream, show_progress)
    run_id = uuid.uuid4().hex
    # Trials another live run has claimed are left out now; the workers' claims settle any that race.
    progress.elsewhere.update(_claimed_elsewhere(where, [t.trial_id for t in pending], run_id))
    pending = [t for t in pending if t.trial_id not in progress.elsewhere]
    stamps = store.row_stamps(where)
    resources = dict(resources or {"cpu": 1, "gpu": 0})
    points = [
        {
            "spec": t.spec.to_dict(),
            **trial_resources(resources, t.method.name),
            "trial_id": t.trial_id,
            "row_stamp": stamps.get(t.trial_id),
            **({"columns": dict(row_columns[t.trial_id])} if row_columns and t.trial_id in row_columns else {}),
        }
        for t in pending
    ]
    if not points:
        return _summarise(outcome, where, [], progress)
    started_here = _start_ray(address, ray_init)
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
                **_worker_config(where, data_root, download, artefacts, plugins, run_id),
            },
            # Readable trial names and folders (dm-digits-ipc10-seed0-<id>): TensorBoard, MLflow and W&B show them.
            tune_config=tune.TuneConfig(
                reuse_actors=True, trial_name_creator=_trial_name, trial_dirname_creator=_trial_name
            ),
            run_config=tune.RunConfig(
                name=experiment,
                storage_path=(where / "ray").uri,
                verbose=0,
                failure_config=tune.FailureConfig(max_failures=retries),
                checkpoint_config=tune.CheckpointConfig(num_to_keep=2),
                stop=_StopWhenStoreFails(progress),
                callbacks=[
                    _Guarded(cb, progress)
                    for cb in (_RowWriter(where.uri, progress, run_id), *logger_callbacks, *callbacks)
                ],
            ),
        )
        _fit(tuner, progress, where)
    finally:
        progress.close()
        if _in_main_thread():
            signal.signal(signal.SIGTERM, previous)
        if started_here:
            ray.shutdown()
        # Trials this run claimed but did not finish (stopped, interrupted) are free for the next run at
        # once; a killed driver cannot do this, and its claims expire instead.
        _release_claims(where, [t.trial_id for t in pending], run_id)
    outcome.seconds = time.monotonic() - start
    return _compact(_summarise(outcome, where, [t.trial_id for t in pending], progress), where)


def _trial_name(trial: Any) -> str:
    """A trial's Tune name and folder: its label and the start of its id, ``dm-digits-ipc10-seed0-1a2b3c4d``."""
    config = trial.config.get("trial", {})
    spec = config.get("spec", {})
    method = str(spec.get("method", ""))
    # A long method spec is cut, never the dataset, IPC and seed after it.
    rest = trial_label(spec).removeprefix(method).strip().replace(" ", "-")
    return f"{_slug(method)[:30]}-{_slug(rest)}-{str(config.get('trial_id') or trial.trial_id)[:8]}"


def _report_interval() -> float:
    """Seconds between two progress reports of a trial: ``$DISTILLBENCH_REPORT_INTERVAL``, else the default."""
    from distillbench.harness.errors import ConfigError

    text = os.environ.get("DISTILLBENCH_REPORT_INTERVAL", "").strip()
    if not text:
        return REPORT_INTERVAL_S
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not (value >= 0 and value < float("inf")):
        raise ConfigError(f"DISTILLBENCH_REPORT_INTERVAL must be a number of seconds >= 0, got {text!r}")
    return value


def _fit(tuner: Any, progress: Any, where: store.Location) -> None:
    """``tuner.fit()``; a store that takes no more writes stops ``progress`` with one line instead of raising.

    Such a store also fails Tune's own state files under ``<results>/ray`` (a TuneError around the OSError):
    the same problem as the rows', said once, without a traceback.
    """
    try:
        tuner.fit()
    except Exception as exc:
        if store.storage_problem(exc) is None:
            raise
        progress.stop(store.write_problem_message(where / "ray", exc))


def _logger_callbacks(names: Sequence[str], *, where: store.Location, grid_name: str) -> list[Any]:
    """Ray Tune's logger callbacks for ``names``; each trial is one run, named as :func:`_trial_name`.

    Where they write:

    - ``tensorboard``: event files in each trial's Tune folder, ``<results>/ray/<experiment>/<trial>/``
      (written on the driver and copied there during the run and at its end);
    - ``mlflow``: ``$MLFLOW_TRACKING_URI``, else the SQLite database ``<results>/logs/mlflow.db`` (experiment =
      grid name);
    - ``wandb``: the W&B project ``$WANDB_PROJECT`` (default ``distillbench``), group = grid name; with
      ``WANDB_MODE=offline`` the runs stay in ``<results>/ray/<experiment>/<trial>/wandb/`` for ``wandb sync``.

    Raises:
        DistillBenchError: a logger's package is missing, or MLflow has nowhere to write.
    """
    from distillbench.harness.progress import check_logger_packages, mlflow_tracking_uri

    results_dir = where.path if where.local else None
    check_logger_packages(names, results_dir=results_dir, environ=os.environ)
    mlflow_uri = mlflow_tracking_uri(results_dir, os.environ) if "mlflow" in names else ""
    callbacks: list[Any] = []
    for name in names:
        if name == "tensorboard":
            from ray.tune.logger import TBXLoggerCallback

            callbacks.append(TBXLoggerCallback())
        elif name == "mlflow":
            from ray.air.integrations.mlflow import MLflowLoggerCallback

            if mlflow_uri.startswith("sqlite:///") and where.local:
                Path(mlflow_uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
            callbacks.append(
                MLflowLoggerCallback(tracking_uri=mlflow_uri, experiment_name=grid_name, tags={"grid": grid_name})
            )
        elif name == "wandb":
            from ray.air.integrations.wandb import WandbLoggerCallback

            project = os.environ.get("WANDB_PROJECT") or "distillbench"
            callbacks.append(WandbLoggerCallback(project=project, group=grid_name))
    return callbacks


# Small row files that make the end of a grid compact the store: below this, reading them costs a few
# seconds at most, less than rewriting an already compacted store of a cluster's size after every small grid.
AUTO_COMPACT_FILES = 1000


def _compact(outcome: GridOutcome, where: store.Location) -> GridOutcome:
    """Merge the store's small row files (the next read is faster); a failure is a note, never fatal."""
    if outcome.stopped is not None:
        return outcome  # the store takes no more writes: compacting would only fail again
    try:
        # Bad files were reported when the run started; here they are left in place again.
        store.compact(where, on_bad=lambda path, reason: None, min_small_files=AUTO_COMPACT_FILES)
    except Exception as exc:
        outcome.notes.append(
            f"compacting the rows under {where / 'rows'} failed ({type(exc).__name__}: {exc}); every row is kept "
            f"as written, and 'distillbench compact {where}' merges them later"
        )
    return outcome


def _summarise(outcome: GridOutcome, where: store.Location, ids: list[str], progress: _Progress) -> GridOutcome:
    """Fill ``outcome`` from the rows of the trials this run scheduled (``ids``) and what the callbacks saw."""
    # A corrupt or foreign row file was reported when the run started (and its trial, if in this grid,
    # was run again); here it must not turn a finished grid into an error.
    statuses = store.trial_statuses(where)
    mine = [i for i in ids if i not in progress.elsewhere]
    outcome.ok = sum(1 for i in mine if statuses.get(i) == "ok")
    outcome.failed = sum(
        1 for i in mine if (i in statuses and statuses[i] != "ok") or (i not in statuses and i in progress.unwritten)
    )
    outcome.elsewhere = len(progress.elsewhere)
    outcome.stopped = progress.stopped
    outcome.interrupted = outcome.pending > 0 and outcome.stopped is None
    outcome.errors = progress.errors
    if progress.elsewhere:
        first = next(iter(progress.elsewhere.values()))
        outcome.notes.append(
            f"{outcome.elsewhere} trials were claimed by another run of this grid and not run here (first: {first}); "
            "run the same command again after that run ends to pick up any it did not finish"
        )
    for where_, (count, first) in progress.callback_errors.items():
        outcome.notes.append(f"Tune callback {where_} failed {count} time(s) and was skipped: {first}")
    return outcome


def _claimed_elsewhere(where: store.Location, trial_ids: list[str], owner: str) -> dict[str, str]:
    """Trials among ``trial_ids`` whose claim another live run holds, with who holds it."""
    wanted = set(trial_ids)
    held = {}
    for claim in (where / "claims").files(".json"):
        trial_id = claim.name.removesuffix(".json")
        if trial_id in wanted:
            document = artefacts.read_json(claim)
            if not artefacts.claim_is_free(document, owner=owner):
                held[trial_id] = _holder_text(document or {})
    return held


def _release_claims(where: store.Location, trial_ids: list[str], owner: str) -> None:
    wanted = set(trial_ids)
    try:
        for claim in (where / "claims").files(".json"):
            if claim.name.removesuffix(".json") in wanted:
                artefacts.release_claim(claim, owner)
    except Exception as exc:  # an unreachable store: the claims expire on their own
        logging.getLogger(__name__).warning("cannot remove this run's claims under %s: %s", where / "claims", exc)


def _in_main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


def _slug(text: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_" else "-" for ch in text)[:60] or "grid"


# ------------------------------------------------------------------------------------- fair tuning
# A grid block with a tune: section (harness/tuning.py) runs one search per cell, each a Tune experiment with
# a search algorithm and optionally ASHA, then the chosen configuration's final trials with the rest of the
# grid. The rows stay the record: a search reads its finished trials back from them (resume), is not run again
# once its budget is spent, and picks its configuration from them.

# Intermediate results of a search trial under ASHA: the probe index is ASHA's time, the probe's validation
# accuracy its metric (harness/probe.py sends them as progress values of the distill phase; to_report's keys).
PROBE_TIME = "distill/probe"
PROBE_METRIC = "distill/probe_val_acc"
_claims = artefacts  # the module, for functions whose ``artefacts`` argument (a folder) hides its name
# Invalid configurations a search may draw in a row (two searched parameters that do not fit together)
# before it gives up; each is told to the search algorithm as a failure and costs no budget.
MAX_REJECTED = 100


@dataclasses.dataclass
class TuningOutcome:
    """What the searches of a grid did, and the final trials they decided.

    Attributes:
        finals: the final trials of every finished search (the chosen configuration on the block's seeds).
        columns: tuning columns of the final trials' rows, by trial id.
        lines: one summary line per search.
        notes: what the user should know (searches claimed elsewhere, searches without a result).
        interrupted: a search was interrupted (Ctrl-C, SIGTERM) before its budget was spent.
        started_ray: Ray was started for a search (the caller shuts it down).
        stopped: the store took no more writes (one line).
        ran: search trials run now; stopped_early: of those, ended by ASHA; failed: with an error.
        seconds: wall time of the searches run now.
    """

    finals: list[ResolvedTrial] = dataclasses.field(default_factory=list)
    columns: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)
    lines: list[str] = dataclasses.field(default_factory=list)
    notes: list[str] = dataclasses.field(default_factory=list)
    interrupted: bool = False
    stopped: str | None = None
    ran: int = 0
    stopped_early: int = 0
    failed: int = 0
    seconds: float = 0.0
    started_ray: bool = False


def _plain(value: Any) -> Any:
    """A sampled value as a plain Python scalar (numpy's repr would end up in the spec string)."""
    return value.item() if hasattr(value, "item") and not isinstance(value, str) else value


def _domain(dist: Any) -> Any:
    """The Tune search-space domain of a :class:`~distillbench.harness.tuning.Distribution`."""
    a = dist.args
    if dist.kind == "uniform":
        return tune.uniform(a[0], a[1])
    if dist.kind == "loguniform":
        return tune.loguniform(a[0], a[1])
    if dist.kind == "quniform":
        return tune.quniform(a[0], a[1], a[2])
    if dist.kind == "randint":  # both bounds included in our spelling; Tune's upper bound is exclusive
        return tune.randint(a[0], a[1] + 1)
    if dist.kind == "lograndint":
        return tune.lograndint(a[0], a[1] + 1)
    return tune.choice(list(a))


class _SeededRandom(Searcher):
    """Random search over Tune's domains, one draw per suggestion from a generator seeded by (seed, draw number).

    Not Tune's ``BasicVariantGenerator``: that is a whole search algorithm of its own, which the budget,
    ordinal and resume logic of :class:`_SearchDriver` (a ``Searcher`` wrapper, like Tune's
    ``ConcurrencyLimiter``) cannot wrap. Seeding each draw by its number makes a resumed search continue
    the very sequence an uninterrupted one would have drawn.
    """

    def __init__(self, space: Mapping[str, Any], seed: int, start: int, metric: str, mode: str) -> None:
        super().__init__(metric=metric, mode=mode)
        self.space, self.seed, self.count = dict(space), seed, start

    def set_search_properties(self, metric: str | None, mode: str | None, config: dict, **spec: Any) -> bool:
        return True

    def suggest(self, trial_id: str) -> dict[str, Any]:
        import numpy as np

        rng = np.random.default_rng([self.seed, self.count])
        self.count += 1
        return {name: domain.sample(random_state=rng) for name, domain in self.space.items()}

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        pass


def _search_algorithm(search: Any, state: Any, metric: str) -> Any:
    """The seeded search algorithm of ``search``, warm-started from its finished trials where the library can."""
    from distillbench.harness.seeding import derive_seed

    settings = search.settings
    domains = {name: _domain(dist) for name, dist in search.space}
    done = len(state.trials)
    if settings.search == "random":
        seed = derive_seed("random", settings.seed, search.tuning_id)
        return _SeededRandom(domains, seed, state.next_ordinal, metric, "max")
    # A model-based search starts with random draws: a third of a trials budget (at most 10, Optuna's default),
    # so a 12-trial search is not all random (HyperOpt's own default of 20 would make it so).
    budget = settings.budget.trials
    startup = max(1, min(10, budget // 3)) if budget is not None else 10
    if settings.search == "optuna":
        import optuna
        from ray.tune.search.optuna import OptunaSearch

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        # A fresh seed per resume point: the same seed would draw the first suggestions again.
        sampler = optuna.samplers.TPESampler(
            seed=derive_seed("optuna", settings.seed, search.tuning_id, done), n_startup_trials=startup
        )
        algorithm = OptunaSearch(
            space=OptunaSearch.convert_search_space(domains), metric=metric, mode="max", sampler=sampler
        )
        # The study is rebuilt from the rows by the rule live trials are told by (_outcome).
        for trial in state.trials:
            outcome = _outcome(trial.status, trial.objective)
            if outcome == "result":
                algorithm.add_evaluated_point(trial.params, trial.objective)
            elif outcome == "unfinished":
                algorithm.add_evaluated_point(trial.params, None, pruned=True)
        return algorithm
    from ray.tune.search.hyperopt import HyperOptSearch

    algorithm = HyperOptSearch(
        space=HyperOptSearch.convert_search_space(domains),
        metric=metric,
        mode="max",
        n_initial_points=startup,
        random_state_seed=derive_seed("hyperopt", settings.seed, search.tuning_id, done),
    )
    # HyperOptSearch has no add_evaluated_point: its history (a hyperopt Trials) is rebuilt from the rows and
    # handed over through get_state/set_state, so a resumed search's TPE knows what it already tried.
    history = _hyperopt_history(search.space, state.trials)
    if history is not None:
        algorithm.set_state({**algorithm.get_state(), "hyperopt_trials": history})
    return algorithm


def _outcome(status: str | None, objective: Any) -> str:
    """How a finished search trial is told to the search algorithm: one rule for live and resumed searches.

    ``result``: an ok trial with a finite objective. ``unfinished``: a trial that used budget without a final
    objective (stopped by ASHA, diverged, or ok without the objective); Optuna records it as pruned, and
    HyperOpt, whose TPE learns from results only, as failed. ``failed``: an error, which taught nothing.
    """
    if status == "error":
        return "failed"
    finite = isinstance(objective, int | float) and not isinstance(objective, bool) and math.isfinite(objective)
    return "result" if status == "ok" and finite else "unfinished"


def _tell(algorithm: Any, search: str, inner_id: str, outcome: str, metric: str, objective: Any) -> None:
    """Report a live trial's ``_outcome`` to the ``search`` algorithm in the form its library understands.

    Tune hands a stopped trial's last (probe) result, and a diverged one's result without the objective;
    HyperOptSearch raises on a result without its metric, so only a result ever carries one.
    """
    if outcome == "result":
        algorithm.on_trial_complete(inner_id, result={metric: float(objective)})
    elif outcome == "unfinished" and search != "hyperopt":
        algorithm.on_trial_complete(inner_id, result=None, error=False)  # Optuna: pruned
    else:
        algorithm.on_trial_complete(inner_id, result=None, error=True)


def _hyperopt_history(space: Sequence[tuple[str, Any]], trials: Sequence[Any]) -> Any:
    """A hyperopt ``Trials`` of the search trials whose ``_outcome`` is a result; None without any.

    HyperOpt records a choice by its index and any other draw by its value. Unfinished and failed trials are
    left out: HyperOpt's TPE learns from results only (a live one is recorded as failed, which TPE ignores).
    """
    from hyperopt import JOB_STATE_DONE, STATUS_OK
    from hyperopt.fmin import generate_trials_to_calculate

    points, losses = [], []
    for trial in trials:
        if _outcome(trial.status, trial.objective) != "result" or any(name not in trial.params for name, _ in space):
            continue
        point = {}
        for name, dist in space:
            value = trial.params[name]
            if dist.kind == "choice":
                if value not in dist.args:
                    break
                value = list(dist.args).index(value)
            point[name] = value
        else:
            points.append(point)
            losses.append(-float(trial.objective))  # the objective is maximised, HyperOpt minimises
    if not points:
        return None
    history = generate_trials_to_calculate(points)
    history.refresh()  # its trials list is filled by a refresh; the docs are the stored ones
    for doc, loss in zip(history.trials, losses, strict=True):
        doc["state"] = JOB_STATE_DONE
        doc["result"] = {"loss": loss, "status": STATUS_OK}
    history.refresh()
    return history


class _SearchDriver(Searcher):
    """Wraps the search algorithm: numbers the trials, builds their specs, and keeps the budget.

    Each suggestion becomes search trial ``ordinal`` (its own trial id, on the tuning seed). The budget is
    counted the way :class:`~distillbench.harness.tuning.SearchState` counts it from the rows: a finished
    trial (ok or diverged) and one ASHA stopped count one trial or their hours; an error counts nothing, and
    the search draws another in its place (at most ``budget`` such replacements in one run). Trials running
    now count as if they will finish; once nothing runs and the budget is spent, the search is FINISHED.
    """

    def __init__(
        self,
        search: Any,
        state: Any,
        inner: Any,
        *,
        metric: str,
        resources: Mapping[str, Any],
        stamps: Mapping[str, int | None],
        stopped_ids: set[str],
    ) -> None:
        from distillbench.harness.spec import trial_resources

        super().__init__(metric=metric, mode="max")
        self.search, self.inner = search, inner
        self.ordinal = state.next_ordinal
        self.spent = state.spent
        self.resources = trial_resources(resources, search.method_name)
        self.stamps = stamps
        self.stopped_ids = stopped_ids  # filled by the scheduler when ASHA stops a trial
        self.live: dict[str, dict[str, Any]] = {}  # Tune trial id -> ordinal, params, inner id, start (wall s)
        self.finished = False
        self.errors = self.rejected = 0
        self.rejections: list[str] = []
        probe = search.settings.scheduler
        self.probe = dataclasses.asdict(probe) if probe is not None else None

    def set_search_properties(self, metric: str | None, mode: str | None, config: dict, **spec: Any) -> bool:
        return True  # the inner algorithm got its space and metric when it was built

    def save(self, checkpoint_path: str) -> None:
        pass  # the rows are the search's record: a resumed search is rebuilt from them, not from Tune's state

    def restore(self, checkpoint_path: str) -> None:
        pass

    def _committed(self) -> float:
        budget = self.search.budget
        if budget.trials is not None:
            return self.spent + len(self.live)
        now = time.time()
        return self.spent + sum(now - t["start"] for t in self.live.values() if t.get("start")) / 3600.0

    def suggest(self, trial_id: str) -> dict[str, Any] | str | None:
        budget = self.search.budget
        if self._committed() >= budget.amount or self.errors > max(1, int(budget.amount)):
            if self.live:
                return None  # a running trial may still fail and need a replacement
            self.finished = True
            return Searcher.FINISHED
        for attempt in range(MAX_REJECTED):
            inner_id = f"{trial_id}-{attempt}" if attempt else trial_id
            suggestion = self.inner.suggest(inner_id)
            if suggestion is None or suggestion == Searcher.FINISHED:
                return suggestion
            params = {name: _plain(suggestion[name]) for name, _ in self.search.space}
            spec = self.search.trial(params, self.ordinal)
            try:
                resolved = spec.resolve()
            except DistillBenchError as exc:
                # Two searched parameters that do not fit together: no trial, no budget; the algorithm learns it.
                self.inner.on_trial_complete(inner_id, None, error=True)
                self.rejected += 1
                if len(self.rejections) < 3:
                    self.rejections.append(f"{tuning.params_json(params)}: {exc}")
                continue
            self.live[trial_id] = {"ordinal": self.ordinal, "params": params, "inner": inner_id, "start": None}
            self.ordinal += 1
            point = {
                "spec": resolved.spec.to_dict(),
                **self.resources,
                "trial_id": resolved.trial_id,
                "row_stamp": self.stamps.get(resolved.trial_id),
                "probe": self.probe,
                "columns": self.search.columns(params),
            }
            return {"trial": point}
        self.finished = True
        return Searcher.FINISHED

    def started(self, trial_id: str) -> None:
        if trial_id in self.live and self.live[trial_id]["start"] is None:
            self.live[trial_id]["start"] = time.time()

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        pass  # intermediate results are the probes; ASHA reads them, the search algorithm only final ones

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        info = self.live.pop(trial_id, None)
        if info is None:
            return
        status = (result or {}).get("status")
        counts = not error and (status in ("ok", "diverged") or trial_id in self.stopped_ids)
        if counts:
            started = info["start"] or time.time()
            self.spent += 1.0 if self.search.budget.trials is not None else (time.time() - started) / 3600.0
        else:
            self.errors += 1
        objective = (result or {}).get(self.metric)
        outcome = "failed" if error else _outcome(status, objective)
        _tell(self.inner, self.search.settings.search, info["inner"], outcome, self.metric, objective)


class _RecordingASHA(AsyncHyperBandScheduler):
    """ASHA that remembers which trials it stopped (their rows say ``stopped``, and they count against the budget)."""

    def __init__(self, stopped_ids: set[str], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.stopped_ids = stopped_ids

    def on_trial_result(self, tune_controller: Any, trial: Any, result: dict) -> str:
        decision = super().on_trial_result(tune_controller, trial, result)
        if decision == self.STOP:
            self.stopped_ids.add(trial.trial_id)
        return decision


class _StoppedRows(tune.Callback):
    """Driver-side: the row of a search trial ASHA stopped (it reports no row of its own), and trial start times."""

    def __init__(self, results: str, driver: _SearchDriver, progress: _Progress, owner: str) -> None:
        self.results, self.driver, self.progress, self.owner = results, driver, progress, owner
        self.started_at: dict[str, dt.datetime] = {}

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.started_at.setdefault(trial.trial_id, dt.datetime.now(dt.UTC))
        self.driver.started(trial.trial_id)

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        self.on_trial_start(iteration, trials, trial)  # reused actors do not always announce a start

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        if trial.trial_id not in self.driver.stopped_ids:
            return
        from distillbench.harness.checkpoint import Checkpointer
        from distillbench.harness.runner import identity_columns, provenance
        from distillbench.harness.spec import TrialSpec

        config = trial.config.get("trial", {})
        last = trial.last_result or {}
        probes = (config.get("probe") or {}).get("probes")
        index, value = last.get(PROBE_TIME), last.get(PROBE_METRIC)
        note = (
            f"stopped early by ASHA after probe {index} of {probes} (validation accuracy of the probe: "
            f"{value:.4f}); no evaluation ran"
            if isinstance(value, int | float)
            else "stopped early by ASHA; no evaluation ran"
        )
        resolved = TrialSpec.from_dict(config["spec"]).resolve()
        row = {
            **{k: v for k, v in provenance().items() if k in store.COLUMN_NAMES},
            **identity_columns(resolved),
            **(config.get("columns") or {}),
            "status": "stopped",
            "notes": note,
            "start_time": self.started_at.get(trial.trial_id, dt.datetime.now(dt.UTC)),
            "end_time": dt.datetime.now(dt.UTC),
        }
        try:
            store.write_row(self.results, row)
            # Its loop checkpoint would only resume this very configuration on this seed: not worth keeping.
            Checkpointer.for_trial(self.results, resolved.distill_id).clear()
        except Exception as exc:
            if store.storage_problem(exc) is not None:
                self.progress.stop(store.write_problem_message(store.location(self.results) / "rows", exc))
            raise
        finally:
            if config.get("trial_id"):
                artefacts.release_claim(_claim_target(self.results, config["trial_id"]), self.owner)
        self.progress.finished(trial.trial_id, "stopped", None)


class _SearchProgress(_Progress):
    """The status line of one search: search trials done here, stopped early by ASHA, failed, and the budget."""

    def __init__(self, label: str, before: int, budget: str, stream: TextIO, enabled: bool) -> None:
        super().__init__(before, before, stream, enabled)
        self.label, self.budget, self.early = label, budget, 0

    def finished(self, trial_id: str, status: str, error: str | None) -> None:
        if status == "stopped":
            self.early += 1
            status = "ok"  # a result of the search: it used budget
        super().finished(trial_id, status, error)

    def line(self) -> str:
        return (
            f"search {self.label}: {self.ok + self.failed} trials done here ({self.early} stopped early, "
            f"{self.failed} failed), {len(self.running)} running, {self.skipped} before; budget {self.budget} | "
            f"{_clock(time.monotonic() - self.start)} elapsed"
        )


def _start_ray(address: str | None, ray_init: Mapping[str, Any] | None) -> bool:
    """Start (or join) Ray unless it runs already; whether it was started here (and must be shut down)."""
    if ray.is_initialized():
        return False
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
    return True


def run_searches(
    searches: Sequence[Any],
    *,
    results: Path | str,
    data_root: Path,
    grid_name: str,
    resources: Mapping[str, Any] | None = None,
    retries: int = 0,
    download: bool = False,
    artefacts: Path | str | None = None,
    plugins: Sequence[str] = (),
    show_progress: bool = True,
    stream: TextIO | None = None,
    address: str | None = None,
    ray_init: Mapping[str, Any] | None = None,
    outcome: TuningOutcome | None = None,
    callbacks: Sequence[Any] = (),
    loggers: Sequence[str] = (),
) -> TuningOutcome:
    """Run every unfinished search of ``searches``, then decide their final trials.

    Ray is started (or joined, ``address``) only when a search has trials left; ``outcome.started_ray`` says
    so, and the caller shuts it down (``outcome`` may be passed in, so it knows even when this raises).

    Each search is one Tune experiment: its search algorithm (seeded), ASHA on the probes when asked, the
    block's resources and retries, claims on every trial, and one claim on the search itself so two runs of
    the grid never search the same cell at once. Its trials reach the ``loggers`` and ``callbacks`` as
    :func:`run_grid`'s do (a tracker sees every configuration tried, not only the final trials). Finished
    search trials are read back from the rows first, so an interrupted search continues where it stopped
    and a finished one is not run again. The best configuration by the objective among the search rows (the
    earliest on a tie) gives the final trials.

    Raises:
        DistillBenchError: the results cannot be written, or a logger cannot work (before anything runs).
    """
    from distillbench.harness.progress import check_loggers

    stream = stream or sys.stderr
    where = store.location(results)
    outcome = outcome if outcome is not None else TuningOutcome()
    # As in run_grid: without Tune's per-trial loggers its end-of-run summary would warn once per trial.
    for name in ("ray.tune.analysis.experiment_analysis", "ray._private.authentication.authentication_token_setup"):
        logging.getLogger(name).setLevel(logging.ERROR)
    states = tuning.read_states(where.uri, searches)
    run_id = uuid.uuid4().hex
    start = time.monotonic()
    if not all(state.finished for state in states.values()):
        store.check_writable(where)
        loggers = check_loggers(list(loggers), "loggers")
    for search in searches:
        state = states[search.tuning_id]
        if not state.finished:
            claim = _claims.Claim(
                where / "claims" / f"tuning-{search.tuning_id}.json",
                owner=run_id,
                info=_driver(),
            )
            holder = claim.try_acquire()
            if holder is not None:
                outcome.notes.append(
                    f"search {search.label()} is {_holder_text(holder)}; not run here (its final trials wait for it)"
                )
                continue
            claim.start_heartbeat()
            try:
                outcome.started_ray = _start_ray(address, ray_init) or outcome.started_ray
                finished = _run_search(
                    search,
                    state,
                    outcome,
                    where=where,
                    data_root=data_root,
                    grid_name=grid_name,
                    resources=resources or {"cpu": 1, "gpu": 0},
                    retries=retries,
                    download=download,
                    artefacts=artefacts,
                    plugins=plugins,
                    run_id=run_id,
                    show_progress=show_progress,
                    stream=stream,
                    # Fresh logger callbacks per experiment: they keep per-experiment state (runs, files).
                    callbacks=[*_logger_callbacks(loggers, where=where, grid_name=grid_name), *callbacks],
                )
            finally:
                claim.release()
            state = tuning.read_states(where.uri, [search])[search.tuning_id]
            if outcome.stopped is not None or not finished:
                outcome.interrupted = outcome.stopped is None
                outcome.lines.append(_search_line(search, state, finished=False))
                break
        outcome.lines.append(_search_line(search, state, finished=True))
        best = state.best()
        if best is None:
            outcome.notes.append(
                f"search {search.label()} spent its budget without a configuration that finished (every trial "
                "diverged, failed or was stopped): no final trials; widen or move the space"
            )
            continue
        columns = search.columns(best.params, spent=round(state.spent, 6))
        for spec in search.finals(best.params):
            resolved = spec.resolve()
            outcome.finals.append(resolved)
            outcome.columns[resolved.trial_id] = columns
    outcome.seconds = time.monotonic() - start
    return outcome


def _search_line(search: Any, state: Any, *, finished: bool) -> str:
    budget = search.budget
    spent = f"{state.spent:g}" if budget.trials is not None else f"{state.spent:.3g}"
    failed = sum(1 for t in state.trials if t.status == "error")
    head = f"search {search.label()}: {spent} of {budget.text} ({state.stopped} stopped early by ASHA, {failed} failed)"
    best = state.best()
    if not finished:
        return f"{head}; interrupted, run the same command again to continue it"
    if best is None:
        return f"{head}; no configuration finished"
    return (
        f"{head}; chose {tuning.params_json(best.params)} ({search.settings.objective} {best.objective:.4f}, "
        f"search trial {best.ordinal})"
    )


def _run_search(
    search: Any,
    state: Any,
    outcome: TuningOutcome,
    *,
    where: store.Location,
    data_root: Path,
    grid_name: str,
    resources: Mapping[str, Any],
    retries: int,
    download: bool,
    artefacts: Path | str | None,
    plugins: Sequence[str],
    run_id: str,
    show_progress: bool,
    stream: TextIO,
    callbacks: Sequence[Any] = (),
) -> bool:
    """One search as one Tune experiment; whether its budget was spent (False: interrupted or store full)."""
    settings = search.settings
    metric = settings.objective
    stopped_ids: set[str] = set()
    driver = _SearchDriver(
        search,
        state,
        _search_algorithm(search, state, metric),
        metric=metric,
        resources=resources,
        stamps=store.row_stamps(where),
        stopped_ids=stopped_ids,
    )
    budget = search.budget
    remaining = max(0, int(math.ceil(budget.amount - state.spent))) if budget.trials is not None else tuning.MAX_TRIALS
    progress = _SearchProgress(search.label(), len(state.trials), budget.text, stream, show_progress)
    scheduler = None
    if settings.scheduler is not None:
        scheduler = _RecordingASHA(
            stopped_ids,
            time_attr=PROBE_TIME,
            metric=PROBE_METRIC,
            mode="max",
            max_t=settings.scheduler.probes + 1,  # probes run before the end: no trial reaches max_t
            grace_period=settings.scheduler.grace_period,
            reduction_factor=settings.scheduler.reduction_factor,
            stop_last_trials=False,
        )
    # Intermediate results (progress, probes) carry other keys than the final one the search algorithm reads.
    os.environ["TUNE_DISABLE_STRICT_METRIC_CHECKING"] = "1"
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%d-%H%M%S-%f")
    experiment = f"{_slug(grid_name)}-search-{search.tuning_id[:8]}-{stamp}"
    tuner = tune.Tuner(
        tune.with_resources(_trainable, _placement),
        param_space=_worker_config(where, data_root, download, artefacts, plugins, run_id),
        tune_config=tune.TuneConfig(
            search_alg=driver,
            scheduler=scheduler,
            # The driver ends the search (FINISHED); this only bounds it: the budget plus as many replacements.
            num_samples=remaining + max(1, int(budget.amount)) + 1,
            max_concurrent_trials=settings.concurrency,
            reuse_actors=True,
            trial_name_creator=_trial_name,
            trial_dirname_creator=_trial_name,
        ),
        run_config=tune.RunConfig(
            name=experiment,
            storage_path=(where / "ray").uri,
            verbose=0,
            failure_config=tune.FailureConfig(max_failures=retries),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=2),
            stop=_StopWhenStoreFails(progress),
            callbacks=[
                _Guarded(_RowWriter(where.uri, progress, run_id), progress),
                _Guarded(_StoppedRows(where.uri, driver, progress, run_id), progress),
                *(_Guarded(cb, progress) for cb in callbacks),
            ],
        ),
    )
    try:
        _fit(tuner, progress, where)
    finally:
        progress.close()
    outcome.ran += progress.ok + progress.failed
    outcome.stopped_early += progress.early
    outcome.failed += progress.failed
    outcome.stopped = outcome.stopped or progress.stopped
    if driver.rejected:
        outcome.notes.append(
            f"search {search.label()}: {driver.rejected} drawn configurations could not run and were skipped "
            f"(first: {driver.rejections[0]})"
        )
    for where_, (count, first) in progress.callback_errors.items():
        outcome.notes.append(f"Tune callback {where_} failed {count} time(s) and was skipped: {first}")
    return driver.finished and progress.stopped is None


def run_tuned_grid(
    trials: Sequence[ResolvedTrial],
    searches: Sequence[Any],
    *,
    results: Path | str,
    data_root: Path,
    grid_name: str,
    address: str | None = None,
    ray_init: Mapping[str, Any] | None = None,
    show_progress: bool = True,
    stream: TextIO | None = None,
    **kwargs: Any,
) -> GridOutcome:
    """:func:`run_searches`, then :func:`run_grid` over ``trials`` plus the searches' final trials, on one Ray.

    ``kwargs`` are :func:`run_grid`'s further arguments (resources, retries, download, artefacts, plugins, ...).
    The outcome counts the grid's trials and the final trials; the searches' lines and notes are among its notes.
    An interrupted search stops the run before any trial of the grid (run the command again).
    """
    tuned = TuningOutcome()
    try:
        # Every run_grid argument the searches also take reaches them (a hand-kept list once dropped the
        # loggers); tests/test_scheduler.py holds the two signatures to the same arguments.
        searched = inspect.signature(run_searches).parameters
        shared = {k: v for k, v in kwargs.items() if k in searched}
        run_searches(
            searches,
            results=results,
            data_root=data_root,
            grid_name=grid_name,
            show_progress=show_progress,
            stream=stream,
            address=address,
            ray_init=ray_init,
            outcome=tuned,
            **shared,
        )
        if tuned.interrupted or tuned.stopped:
            outcome = GridOutcome(total=len(trials), skipped=0, interrupted=tuned.interrupted, stopped=tuned.stopped)
        else:
            outcome = run_grid(
                [*trials, *tuned.finals],
                results=results,
                data_root=data_root,
                grid_name=grid_name,
                address=address,
                ray_init=ray_init,
                show_progress=show_progress,
                stream=stream,
                row_columns=tuned.columns,
                **kwargs,
            )
    finally:
        if tuned.started_ray:
            ray.shutdown()
    outcome.tuning = tuned
    outcome.seconds += tuned.seconds
    outcome.notes[:0] = [*tuned.lines, *tuned.notes]
    return outcome
