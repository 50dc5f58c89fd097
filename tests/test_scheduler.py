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


def test_grid_rows_failures_and_resume(grid_file, tmp_path):
    """Every trial leaves one row (errors included); a re-run skips the finished ones and retries errors."""
    from distillbench.harness.scheduler import run_grid

    grid = load_grid_file(grid_file)
    results = tmp_path / "results"
    stream = io.StringIO()
    outcome = run_grid(
        grid.trials,
        results=results,
        data_root=tmp_path,
        grid_name=grid.name,
        plugins=grid.plugins,
        ray_init=RAY_INIT,
        stream=stream,
    )
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
