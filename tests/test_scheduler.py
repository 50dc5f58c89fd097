"""Grids through Ray Tune: rows land in the store, failures become rows, re-runs skip finished trials."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import textwrap

import pytest
import yaml

from distillbench.harness import store
from distillbench.harness.spec import load_grid_file

pytestmark = pytest.mark.ray

PLUGIN = textwrap.dedent(
    '''
    """Test plugins for the scheduler tests (imported by the driver and by every Ray worker)."""
    import dataclasses

    from distillbench.harness.plugins import register_method, register_protocol
    from distillbench.harness.protocols import QUICK_V1
    from distillbench.methods.base import DistillationMethod

    register_protocol(
        dataclasses.replace(QUICK_V1, name="sched-test", networks=("convnet[width=8]",), epochs=5, n_models=2)
    )


    @register_method("always_fails")
    class AlwaysFails(DistillationMethod):
        """Fails every time, like a buggy plugin."""

        name = "always_fails"

        def distill(self, data, ipc, ctx):
            raise RuntimeError("planned failure in a plugin")
    '''
)


@pytest.fixture
def grid_file(tmp_path):
    (tmp_path / "sched_plugin.py").write_text(PLUGIN)
    document = {
        "name": "sched",
        "protocol": "sched-test",
        "plugins": ["sched_plugin.py"],
        "grid": {"dataset": "digits", "method": ["random", "always_fails"], "ipc": [1, 2], "seed": [0]},
    }
    path = tmp_path / "grid.yaml"
    path.write_text(yaml.safe_dump(document))
    return path


RAY_INIT = {"num_cpus": 2, "object_store_memory": 100 * 2**20}


class TestResources:
    """Per-trial CPUs and (fractional) GPUs from the grid, overridable per method."""

    def test_per_method_override(self):
        """A method listed under per_method gets its own amounts; missing keys fall back to the defaults."""
        from distillbench.harness.spec import parse_resources, trial_resources

        res = parse_resources({"cpu": 1, "gpu": 0.25, "per_method": {"dc": {"cpu": 2, "gpu": 0.5}, "dm": {"cpu": 3}}})
        assert trial_resources(res, "dc") == {"cpu": 2, "gpu": 0.5}
        assert trial_resources(res, "dm") == {"cpu": 3, "gpu": 0.25}
        assert trial_resources(res, "random") == {"cpu": 1, "gpu": 0.25}
        assert parse_resources(None) == {"cpu": 1, "gpu": 0}

    @pytest.mark.parametrize(
        ("block", "message"),
        [
            ({"cpu": 0}, "resources.cpu must be positive"),
            ({"gpu": 1.5}, "resources.gpu must be a fraction up to 1 or a whole number of GPUs"),
            ({"mem": 4}, "resources: unknown keys ['mem']; valid keys: cpu, gpu"),
            ({"per_method": {"dcc": {"cpu": 2}}}, "resources.per_method: unknown method 'dcc'. Did you mean: dc?"),
            ({"per_method": {"dc": {"gpus": 1}}}, "resources.per_method.dc: unknown keys ['gpus']"),
            ({"per_method": {"dc": 2}}, "resources.per_method.dc must be a mapping such as {cpu: 1, gpu: 0.25}"),
            ({"per_method": {"dm[iterations=5]": {"cpu": 2}}}, "per_method keys are bare method names"),
            ({"per_method": {"dc": {"gpu": -1}}}, "resources.per_method.dc.gpu must be a non-negative number"),
        ],
    )
    def test_invalid_blocks_are_clear_errors(self, block, message):
        """Each malformed resources block is a one-line error naming the key."""
        from distillbench.harness.errors import DistillBenchError
        from distillbench.harness.spec import parse_resources

        with pytest.raises(DistillBenchError) as info:
            parse_resources(block)
        assert message in str(info.value)

    def test_placement_bundle(self):
        """The Tune placement is one bundle with the trial's CPUs, plus GPUs only when asked for."""
        from distillbench.harness.scheduler import _placement

        assert _placement({"trial": {"cpu": 2, "gpu": 0.5}}).required_resources == {"CPU": 2.0, "GPU": 0.5}
        assert _placement({"trial": {"cpu": 1, "gpu": 0}}).required_resources == {"CPU": 1.0}


def _file_worker_row(results, worker_values):
    """Hand the driver-side row writer one row as a worker reported it; returns (driver's trial id, stored row)."""
    import types

    from distillbench.harness.scheduler import _Progress, _RowWriter
    from distillbench.harness.spec import TrialSpec

    resolved = TrialSpec(dataset="digits", method="random", ipc=1, protocol="quick-v1").resolve()
    trial = types.SimpleNamespace(
        trial_id="t0", config={"trial": {"spec": resolved.spec.to_dict(), "trial_id": resolved.trial_id}}
    )
    writer = _RowWriter(str(results), _Progress(1, 0, io.StringIO(), False))
    writer.on_trial_result(0, [], trial, {"rows_json": store.rows_to_json([store.make_row(worker_values)])})
    (row,) = store.read_rows([results]).to_dict("records")
    return resolved.trial_id, row


def test_row_from_a_worker_with_other_code_becomes_an_error_row(tmp_path):
    """A worker whose code resolves a trial to another id (version skew) leaves an error row under the driver's id."""
    expected, row = _file_worker_row(tmp_path, {"trial_id": "0123456789abcdef", "status": "ok", "node": "node-7"})
    assert row["trial_id"] == expected and row["status"] == "error"
    assert "node 'node-7' computed trial id 0123456789abcdef" in row["error"]
    assert "Install the same version on every node" in row["error"]
    assert store.existing_trial_ids(tmp_path) == {expected}


def test_nameless_row_from_a_worker_keeps_its_error_under_the_driver_id(tmp_path):
    """A worker that cannot resolve the spec reports a row without trial id; the driver files it, error kept."""
    expected, row = _file_worker_row(
        tmp_path, {"status": "error", "error": "ImportError: half-written module", "node": "n1"}
    )
    assert (row["trial_id"], row["status"]) == (expected, "error")
    assert row["error"] == "ImportError: half-written module", "the worker's own error must be kept"


def test_grid_rows_failures_and_resume(grid_file, tmp_path):
    """Every trial leaves one row (errors included); a re-run skips the finished ones and retries errors.

    The grid also overrides resources for one method: its trials ask Ray for half a (logical) GPU.
    """
    from ray import tune

    from distillbench.harness.scheduler import run_grid

    document = yaml.safe_load(grid_file.read_text())
    document["resources"] = {"cpu": 1, "per_method": {"always_fails": {"cpu": 1, "gpu": 0.5}}}
    mixed = grid_file.with_name("mixed.yaml")
    mixed.write_text(yaml.safe_dump(document))
    grid = load_grid_file(mixed)
    results = tmp_path / "results"
    stream = io.StringIO()

    class PlacementRecorder(tune.Callback):
        """Driver side: each trial's method and the resources it asked Ray for."""

        def __init__(self) -> None:
            self.seen: dict[str, dict[str, float]] = {}

        def on_trial_start(self, iteration, trials, trial, **info):
            spec = trial.config["trial"]["spec"]
            self.seen[f"{spec['method']}-{spec['ipc']}"] = dict(trial.placement_group_factory.required_resources)

    recorder = PlacementRecorder()
    outcome = run_grid(
        grid.trials,
        results=results,
        data_root=tmp_path,
        grid_name=grid.name,
        resources=grid.resources,
        plugins=grid.plugins,
        ray_init={**RAY_INIT, "num_gpus": 1},
        stream=stream,
        callbacks=[recorder],
    )
    assert recorder.seen == {
        "random-1": {"CPU": 1.0},
        "random-2": {"CPU": 1.0},
        "always_fails-1": {"CPU": 1.0, "GPU": 0.5},
        "always_fails-2": {"CPU": 1.0, "GPU": 0.5},
    }
    assert (outcome.total, outcome.ok, outcome.failed, outcome.pending) == (4, 2, 2, 0), stream.getvalue()
    frame = store.read_rows([results])
    assert sorted(frame["trial_id"]) == sorted(t.trial_id for t in grid.trials), "one row per trial"
    by_method = frame.groupby("method")["status"].apply(set).to_dict()
    assert by_method == {"random": {"ok"}, "always_fails": {"error"}}
    errors = frame.loc[frame["status"] == "error", "error"]
    assert all(e.startswith("RuntimeError: planned failure in a plugin") for e in errors)
    assert all(len(a) == 2 for a in frame.loc[frame["status"] == "ok", "acc_per_model"])
    assert "[4/4] 2 done, 0 running, 2 failed" in stream.getvalue(), stream.getvalue()
    ok_mtimes = {p.name: p.stat().st_mtime_ns for p in store.rows_dir(results).iterdir()}

    again = run_grid(
        grid.trials,
        results=results,
        data_root=tmp_path,
        grid_name=grid.name,
        plugins=grid.plugins,
        ray_init=RAY_INIT,
        stream=io.StringIO(),
    )
    assert (again.skipped, again.failed, again.ok) == (2, 2, 0), "ok rows must be skipped, error rows retried"
    rows_after = {p.name: p.stat().st_mtime_ns for p in store.rows_dir(results).iterdir()}
    assert len(rows_after) == 4, "a re-run duplicated or lost rows"
    ok_ids = {f"{t}.parquet" for t in frame.loc[frame["status"] == "ok", "trial_id"]}
    assert all(rows_after[name] == ok_mtimes[name] for name in ok_ids), "a finished trial was run again"


def test_cli_run_end_to_end(grid_file, tmp_path):
    """`distillbench run` prints progress and the paths of rows and leaderboard; a re-run runs nothing."""
    results = tmp_path / "out"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    command = [sys.executable, "-m", "distillbench.harness.cli", "run", str(grid_file), "--results", str(results)]
    proc = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 1, f"failures must give exit 1\n{proc.stdout}\n{proc.stderr}"
    assert "2 ok, 2 failed, 0 skipped" in proc.stdout, proc.stdout
    assert f"rows: {results / 'rows'}" in proc.stdout
    assert f"leaderboard: {results / 'leaderboard' / 'leaderboard.md'}" in proc.stdout
    assert "done," in proc.stderr and "failed" in proc.stderr, "no progress line"
    board = (results / "leaderboard" / "leaderboard.md").read_text()
    assert "random" in board and "Failures (2)" in board

    proc = subprocess.run([*command, "--dry-run"], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0 and "4 trials, 2 to run, 2 done" in proc.stdout, proc.stdout


def test_run_searches_takes_every_run_grid_argument_a_tuned_grid_shares():
    """run_tuned_grid hands run_searches each run_grid argument it also takes: the two signatures differ only
    by the arguments that belong to one of them, so a new run option cannot silently skip the searches."""
    import inspect

    from distillbench.harness.scheduler import run_grid, run_searches

    grid_only = {"trials", "row_columns"}  # the final trials' tuning columns come from the searches
    searches_only = {"searches", "outcome"}
    grid = inspect.signature(run_grid).parameters
    searches = inspect.signature(run_searches).parameters
    assert set(grid) - grid_only == set(searches) - searches_only, (
        f"run_grid only: {sorted(set(grid) - set(searches) - grid_only)}; "
        f"run_searches only: {sorted(set(searches) - set(grid) - searches_only)}"
    )
    for name in set(grid) & set(searches):
        assert grid[name].default == searches[name].default, f"{name}: the two defaults differ"
