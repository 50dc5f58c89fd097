"""One run per trial (claims), and a row writer or callback that fails never kills the grid."""

from __future__ import annotations

import errno
import io
import multiprocessing
import os
import re
import shutil
import socket
import subprocess
import sys
import textwrap
import time

import pyarrow as pa
import pytest
import yaml

from distillbench.harness import artefacts, store
from distillbench.harness.errors import DistillBenchError
from distillbench.harness.spec import load_grid_file

PLUGIN = textwrap.dedent(
    '''
    """Trials that log each execution (imported by the driver and by every Ray worker)."""
    import dataclasses
    import os
    import time

    from distillbench.harness.plugins import register_method, register_protocol
    from distillbench.harness.protocols import QUICK_V1
    from distillbench.methods.random import RandomReal

    register_protocol(
        dataclasses.replace(QUICK_V1, name="claims-test", networks=("convnet[width=8]",), epochs=1, n_models=1)
    )


    @register_method("logged_random")
    class LoggedRandom(RandomReal):
        """Random real samples; appends one line per execution to the log the test counts."""

        name = "logged_random"

        def distill(self, data, ipc, ctx):
            with open(LOG, "a") as fh:
                fh.write(f"{ctx.seed} {os.getpid()}\\n")
            time.sleep(PAUSE)
            return super().distill(data, ipc, ctx)
    '''
)
RAY_INIT = {"num_cpus": 2, "object_store_memory": 100 * 2**20}


def _grid(tmp_path, seeds: int, pause: float = 0.0):
    log = tmp_path / "executions.log"
    source = PLUGIN + f"\nLOG = {str(log)!r}\nPAUSE = {pause}\n"
    (tmp_path / "claims_plugin.py").write_text(source)
    document = {
        "name": "claims",
        "protocol": "claims-test",
        "plugins": ["claims_plugin.py"],
        "resources": {"cpu": 1, "gpu": 0},
        "grid": {"dataset": "digits", "method": "logged_random", "ipc": 1, "seed": list(range(seeds))},
    }
    path = tmp_path / "grid.yaml"
    path.write_text(yaml.safe_dump(document))
    return path, log


def _executions(log) -> int:
    return len(log.read_text().splitlines()) if log.exists() else 0


# ------------------------------------------------------------------------------------------ primitives
@pytest.fixture(params=["local", "s3"])
def claims_dir(request, tmp_path, monkeypatch):
    """A fresh claims folder: local, or a prefix in the fake S3 bucket (short read-back wait)."""
    if request.param == "local":
        return store.location(tmp_path / "claims")
    endpoint = request.getfixturevalue("s3_endpoint")
    monkeypatch.setattr(artefacts, "CLAIM_SETTLE_S", 0.05)
    prefix = f"c{time.monotonic_ns()}"
    return store.location(f"s3://bench/{prefix}/claims?endpoint_override={endpoint}&scheme=http&region=us-east-1")


class TestClaimPrimitives:
    """Take, refuse, expire, take over and release a claim, on a local folder and on S3."""

    def test_exclusive_and_release(self, claims_dir):
        """A held claim refuses another owner, names its holder, and is free again once released."""
        target = claims_dir / "t1.json"
        first = artefacts.Claim(target, owner="run-a", info={"driver": "host-a pid 1"})
        assert first.try_acquire() is None
        holder = artefacts.Claim(target, owner="run-b").try_acquire()
        assert holder is not None and holder["owner"] == "run-a" and holder["driver"] == "host-a pid 1"
        first.release()
        assert artefacts.read_json(target) is None
        assert artefacts.Claim(target, owner="run-b").try_acquire() is None

    def test_same_owner_takes_its_own_claim(self, claims_dir):
        """A retry of the same run (a Tune retry after a worker died) takes the claim its earlier attempt left."""
        target = claims_dir / "t2.json"
        assert artefacts.Claim(target, owner="run-a").try_acquire() is None
        assert artefacts.Claim(target, owner="run-a").try_acquire() is None
        assert not artefacts.release_claim(target, "run-b"), "another owner must not remove it"
        assert artefacts.release_claim(target, "run-a")
        assert artefacts.read_json(target) is None

    def test_expiry_heartbeat_and_takeover(self, claims_dir):
        """A heartbeat keeps a claim; once it stops, the claim expires and another owner takes it over."""
        target = claims_dir / "t3.json"
        # Margins: the heartbeat (every 0.1 s) must keep the claim fresh for longer than the 4 s expiry,
        # also when a loaded machine or the S3 stand-in stalls a heartbeat write (0.1 s heartbeats
        # against a 0.5 s expiry failed once that way on S3, and against a 2 s expiry once at load 15).
        holder = artefacts.Claim(target, owner="run-a", heartbeat_s=0.1)
        assert holder.try_acquire() is None
        holder.start_heartbeat()
        time.sleep(5.0)
        assert artefacts.Claim(target, owner="run-b", expiry_s=4.0).try_acquire() is not None, "live claim taken"
        holder.stop_heartbeat()
        time.sleep(4.5)
        taker = artefacts.Claim(target, owner="run-b", expiry_s=4.0)
        assert taker.try_acquire() is None, "an expired claim must be taken over"
        assert artefacts.read_json(target)["owner"] == "run-b"
        holder.release()  # the old holder no longer holds it: nothing removed
        assert artefacts.read_json(target)["owner"] == "run-b"

    def test_dead_process_on_this_host_frees_the_claim(self, claims_dir):
        """A claim naming a process of this machine that has exited is free at once (a killed driver)."""
        dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
        document = {
            "owner": "gone",
            "token": "x",
            "host": socket.gethostname(),
            "pid": int(dead.stdout),
            "time": time.time(),
        }
        artefacts.write_json(claims_dir / "t4.json", document)
        assert artefacts.claim_is_free(document, owner="run-b")
        assert not artefacts.claim_is_free({**document, "host": "elsewhere"}, owner="run-b")
        assert artefacts.Claim(claims_dir / "t4.json", owner="run-b").try_acquire() is None

    def test_live_worker_of_a_dead_driver_frees_the_claim(self, claims_dir):
        """A worker still running after its driver was killed (Ray's processes outlive a SIGKILLed driver for a
        while) holds a claim whose row can never be written: the driver writes rows. A rerun takes it at once;
        a worker whose driver lives, or whose driver is on another machine, keeps it."""
        dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
        here = socket.gethostname()
        document = {"owner": "gone", "token": "x", "host": here, "pid": os.getpid(), "time": time.time()}
        orphan = {**document, "driver_host": here, "driver_pid": int(dead.stdout)}
        assert artefacts.claim_is_free(orphan, owner="run-b")
        assert not artefacts.claim_is_free({**orphan, "driver_pid": os.getpid()}, owner="run-b")
        assert not artefacts.claim_is_free({**orphan, "driver_host": "elsewhere"}, owner="run-b")
        assert not artefacts.claim_is_free(document, owner="run-b")  # a claim without a driver: as before


def _race(path: str, owner: str, start: float, queue, done) -> None:
    time.sleep(max(0.0, start - time.time()))
    queue.put(artefacts.Claim(store.location(path), owner=owner).try_acquire() is None)
    done.wait(30)  # stay alive: a claim whose process on this host has exited is free (by design)


def test_local_claim_has_one_winner_among_racing_processes(tmp_path):
    """Eight processes that try the same free claim at the same instant: exactly one takes it."""
    context = multiprocessing.get_context("fork")
    queue, done = context.Queue(), context.Event()
    start = time.time() + 0.5
    target = str(tmp_path / "claims" / "t.json")
    procs = [context.Process(target=_race, args=(target, f"run-{i}", start, queue, done)) for i in range(8)]
    for proc in procs:
        proc.start()
    wins = [queue.get(timeout=30) for _ in procs]
    done.set()
    for proc in procs:
        proc.join(timeout=30)
    assert sum(wins) == 1, wins


# ------------------------------------------------------------------------------------- two drivers
@pytest.mark.ray
def test_two_drivers_execute_each_trial_once(tmp_path):
    """Two `distillbench run` on one grid and results folder at the same time: executions == trials, all ok."""
    n_trials = 6
    grid, log = _grid(tmp_path, n_trials, pause=1.0)
    results = tmp_path / "results"
    command = [sys.executable, "-m", "distillbench.harness.cli", "run", str(grid), "--results", str(results)]
    command.append("--no-leaderboard")
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    drivers = [
        subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in "ab"
    ]
    outputs = [d.communicate(timeout=240) for d in drivers]
    for driver, (out, err) in zip(drivers, outputs, strict=True):
        assert driver.returncode == 0, out + err
    assert _executions(log) == n_trials, f"{_executions(log)} executions for {n_trials} trials\n{outputs}"
    frame = store.read_rows([results])
    assert len(frame) == n_trials and set(frame["status"]) == {"ok"}
    ok = [int(re.search(r": (\d+) ok", out).group(1)) for out, _ in outputs]
    assert sum(ok) == n_trials, outputs
    assert not list((results / "claims").glob("*.json")), "claims left behind after both drivers finished"
    again = subprocess.run([*command, "--dry-run"], capture_output=True, text=True, env=env, timeout=120)
    assert f"0 to run, {n_trials} done" in again.stdout, again.stdout


# --------------------------------------------------------------------------------- failing writers
@pytest.fixture(scope="module")
def ray_session():
    """One local Ray for the in-process grids of this module (each run_grid would otherwise start its own)."""
    import ray

    from distillbench.harness import scheduler

    if ray.is_initialized():
        yield
        return
    scheduler._init_local_ray({**RAY_INIT, "include_dashboard": False, "logging_level": "WARNING"})
    yield
    ray.shutdown()


def _run(grid_path, results, **kwargs):
    from distillbench.harness.scheduler import run_grid

    grid = load_grid_file(grid_path)
    stream = io.StringIO()
    outcome = run_grid(
        grid.trials,
        results=results,
        data_root=grid_path.parent,
        grid_name=grid.name,
        resources=grid.resources,
        plugins=grid.plugins,
        stream=stream,
        **kwargs,
    )
    return grid, outcome, stream.getvalue()


@pytest.mark.ray
def test_row_writer_exception_is_a_failure_of_that_trial(tmp_path, monkeypatch, ray_session):
    """A row that cannot be written (ArrowInvalid) fails that trial only; a re-run completes it."""
    grid_path, _ = _grid(tmp_path, 3)
    grid = load_grid_file(grid_path)
    victim = grid.trials[0].trial_id
    real = store.write_rows

    def failing(results, rows):
        if rows[0].get("trial_id") == victim:
            raise pa.ArrowInvalid("planned failure writing this row")
        return real(results, rows)

    monkeypatch.setattr(store, "write_rows", failing)
    results = tmp_path / "results"
    _, outcome, progress = _run(grid_path, results)
    assert (outcome.ok, outcome.failed, outcome.pending, outcome.stopped) == (2, 1, 0, None), progress
    assert any("ArrowInvalid: planned failure writing this row" in e for e in outcome.errors), outcome.errors
    assert store.existing_trial_ids(results) == {t.trial_id for t in grid.trials} - {victim}

    monkeypatch.setattr(store, "write_rows", real)
    _, again, _ = _run(grid_path, results)
    assert (again.skipped, again.ok, again.failed) == (2, 1, 0)
    assert store.existing_trial_ids(results, status=("ok",)) == {t.trial_id for t in grid.trials}


@pytest.mark.ray
def test_full_disk_while_running_stops_cleanly(tmp_path, monkeypatch, ray_session):
    """ENOSPC at a row write stops the grid without a traceback; rows written before it stay."""
    grid_path, _ = _grid(tmp_path, 4, pause=0.5)
    real = store.write_rows
    calls = []

    def filling(results, rows):
        calls.append(rows[0]["trial_id"])
        if len(calls) > 1:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(results, rows)

    monkeypatch.setattr(store, "write_rows", filling)

    class Broken:
        """A callback with a bug: must be reported, not end the grid."""

        def on_trial_start(self, **info):
            raise KeyError("bug in a callback")

    from ray import tune

    broken = type("BrokenCallback", (Broken, tune.Callback), {})()
    results = tmp_path / "results"
    _, outcome, _ = _run(grid_path, results, callbacks=[broken])
    assert outcome.stopped is not None and "no space left on the device" in outcome.stopped
    assert str(results / "rows") in outcome.stopped and "rows already written are kept" in outcome.stopped
    assert len(store.existing_trial_ids(results)) == 1
    assert any("BrokenCallback.on_trial_start" in n and "bug in a callback" in n for n in outcome.notes)
    assert not list((results / "claims").glob("*.json")), "a stopped run must free its claims"


# ----------------------------------------------------------------------------- store before Ray starts
def test_check_writable_local(tmp_path):
    """A writable folder passes (and keeps no probe file); a file in the way is a one-line error."""
    store.check_writable(tmp_path / "ok")
    assert list((tmp_path / "ok" / "rows").iterdir()) == []
    (tmp_path / "blocked").mkdir()
    (tmp_path / "blocked" / "rows").write_text("not a folder")
    with pytest.raises(DistillBenchError, match="cannot write rows to .*blocked/rows"):
        store.check_writable(tmp_path / "blocked")


def _in_small_mount(tmp_path, options: str, script: str) -> subprocess.CompletedProcess:
    """Run ``script`` in a private mount namespace where ``tmp_path/mnt`` is a tmpfs with ``options``."""
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        pytest.skip("needs root and unshare(1) to mount a read-only or full tmpfs")
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    shell = f"mount -t tmpfs -o {options} tmpfs {mnt} && {script}"
    proc = subprocess.run(["unshare", "-m", "sh", "-c", shell], capture_output=True, text=True, timeout=120)
    if "mount:" in proc.stderr:
        pytest.skip(f"cannot mount a tmpfs here: {proc.stderr.strip()}")
    return proc


@pytest.mark.parametrize(
    ("options", "prepare", "reason"),
    [
        ("ro,size=1m", "true", "the file system is read-only"),
        ("size=256k", "(head -c 1000000 /dev/zero > {mnt}/filler 2>/dev/null || true)", "no space left on the device"),
    ],
)
def test_cli_run_on_read_only_or_full_results_fails_before_ray(tmp_path, options, prepare, reason):
    """A read-only or full results folder: one line naming path and fix, exit 2, and Ray never started."""
    grid, log = _grid(tmp_path, 1)
    results = tmp_path / "mnt" / "results"
    run = " ".join([sys.executable, "-m", "distillbench.harness.cli", "run", str(grid), "--results", str(results)])
    proc = _in_small_mount(tmp_path, options, f"{prepare.format(mnt=tmp_path / 'mnt')} && {run}; echo rc=$?")
    assert "rc=2" in proc.stdout, proc.stdout + proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    # cmd_run's own path check may refuse a read-only folder first, in its words; either way one line.
    assert lines[0].startswith("error: ") and str(results) in lines[0], lines[0]
    assert reason in lines[0] or "is not writable" in lines[0], lines[0]
    assert "pass" in lines[0], "the line must say how to fix it"
    assert _executions(log) == 0
