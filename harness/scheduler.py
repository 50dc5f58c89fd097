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
import ipaddress
import logging
import os
import signal
import socket
import sys
import time
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TextIO

from distillbench.harness import artefacts, store
from distillbench.harness.spec import ResolvedTrial

# Ray reads these when it is imported or initialised: quiet output, no usage reporting by default.
os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
os.environ.setdefault("RAY_DEDUP_LOGS", "0")

import ray  # noqa: E402
from ray import tune  # noqa: E402
from ray.tune.stopper import Stopper  # noqa: E402

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
    interrupted: bool = False
    seconds: float = 0.0
    errors: list[str] = dataclasses.field(default_factory=list)
    #: trials another run of the grid had claimed (running or finished there), so not run here
    elsewhere: int = 0
    #: why the run stopped early because the store takes no more writes (one line: path, reason, fix)
    stopped: str | None = None
    #: further lines for the summary (trials claimed elsewhere, callbacks that failed)
    notes: list[str] = dataclasses.field(default_factory=list)

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
            info={"driver": config.get("driver")},
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
    try:
        rows = run_trial(
            trial["spec"],
            results=config["results"],
            data_root=Path(config["data_root"]),
            download=bool(config.get("download", False)),
            artefacts=config.get("artefacts"),
        )
    finally:
        if claim is not None:
            # Stop refreshing before reporting: the driver removes the claim once the row is written, and
            # a refresh after that must not leave it behind. If no row comes, the claim expires.
            claim.stop_heartbeat()
    status = store.trial_status(r["status"] for r in rows)
    tune.report({"rows_json": store.rows_to_json(rows), "status": status})


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
        if text is None:
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
            store.write_rows(self.results, rows)
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
        self.progress.started(trial.trial_id)

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
        self.elsewhere: dict[str, str] = {}  # our trial id -> who holds its claim
        self.unwritten: set[str] = set()  # trials whose row (and error row) the driver could not write
        self.stopped: str | None = None
        self.callback_errors: dict[str, tuple[int, str]] = {}  # "Class.hook" -> (count, first error)

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

    def claimed_elsewhere(self, tune_id: str, trial_id: str | None, holder: str) -> None:
        self.running.discard(tune_id)
        self.finished_ids.add(tune_id)
        self.elsewhere[trial_id or tune_id] = holder
        self.draw(force=True)

    def stop(self, message: str) -> None:
        if self.stopped is None:
            self.stopped = message

    def callback_failed(self, where: str, exc: Exception) -> None:
        count, first = self.callback_errors.get(where, (0, f"{type(exc).__name__}: {exc}"))
        self.callback_errors[where] = (count + 1, first)
        logging.getLogger(__name__).warning("Tune callback %s failed (skipped): %s", where, exc)

    def tick(self) -> None:
        if self.tty and time.monotonic() - self._last_draw >= 1.0:
            self.draw()

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
    # A full disk, a read-only mount or a missing permission fails here in one line, before Ray starts.
    store.check_writable(where)
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
        }
        for t in pending
    ]
    if not points:
        return _summarise(outcome, where, [], progress)
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
                "claim_owner": run_id,
                "driver": f"{socket.gethostname()} pid {os.getpid()}",
            },
            tune_config=tune.TuneConfig(reuse_actors=True),
            run_config=tune.RunConfig(
                name=experiment,
                storage_path=(where / "ray").uri,
                verbose=0,
                failure_config=tune.FailureConfig(max_failures=retries),
                checkpoint_config=tune.CheckpointConfig(num_to_keep=2),
                stop=_StopWhenStoreFails(progress),
                callbacks=[_Guarded(cb, progress) for cb in (_RowWriter(where.uri, progress, run_id), *callbacks)],
            ),
        )
        try:
            tuner.fit()
        except Exception as exc:
            # A store that takes no more writes also fails Tune's own state files under <results>/ray
            # (a TuneError around the OSError): the same problem, said once, without a traceback.
            if store.storage_problem(exc) is None:
                raise
            progress.stop(store.write_problem_message(where / "ray", exc))
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
