"""Interrupting a grid and running the same command again: no lost rows, no duplicates, no re-runs."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest
import yaml

pytestmark = pytest.mark.ray

PLUGIN = textwrap.dedent(
    '''
    """Slow trials for the resume tests (imported by the driver and by every Ray worker)."""
    import dataclasses
    import time

    from distillbench.harness.plugins import register_method, register_protocol
    from distillbench.harness.protocols import QUICK_V1
    from distillbench.methods.random import RandomReal

    register_protocol(
        dataclasses.replace(QUICK_V1, name="resume-test", networks=("convnet[width=8]",), epochs=2, n_models=1)
    )


    @register_method("slow_random")
    class SlowRandom(RandomReal):
        """Random real samples, after a pause that makes a grid interruptible mid-way."""

        name = "slow_random"

        def distill(self, data, ipc, ctx):
            time.sleep(1.5)
            return super().distill(data, ipc, ctx)
    '''
)
N_TRIALS = 8


@pytest.fixture
def grid_file(tmp_path):
    (tmp_path / "resume_plugin.py").write_text(PLUGIN)
    document = {
        "name": "resume",
        "protocol": "resume-test",
        "plugins": ["resume_plugin.py"],
        "resources": {"cpu": 1, "gpu": 0},
        "grid": {"dataset": "digits", "method": "slow_random", "ipc": 1, "seed": list(range(N_TRIALS))},
    }
    path = tmp_path / "grid.yaml"
    path.write_text(yaml.safe_dump(document))
    return path


def _rows(results):
    folder = results / "rows"
    return {p.name: p.stat().st_mtime_ns for p in folder.iterdir()} if folder.is_dir() else {}


@pytest.mark.parametrize(
    "how",
    # SIGINT in the default run; SIGTERM (a scheduler's preemption) and SIGKILL (a lost driver) with -m slow.
    ["SIGINT", pytest.param("SIGTERM", marks=pytest.mark.slow), pytest.param("SIGKILL", marks=pytest.mark.slow)],
)
def test_interrupt_then_rerun_completes_exactly_the_missing_trials(grid_file, tmp_path, how):
    """After an interrupt, the same command runs only the missing trials: every trial has one row."""
    results = tmp_path / "results"
    command = [sys.executable, "-m", "distillbench.harness.cli", "run", str(grid_file), "--results", str(results)]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 180
        while len(_rows(results)) < 2 and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.2)
        assert len(_rows(results)) >= 2, "no trial finished before the interrupt"
        if how == "SIGKILL":
            os.killpg(proc.pid, signal.SIGKILL)  # the driver and the Ray processes it started
        else:
            proc.send_signal(getattr(signal, how))
        proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    before = _rows(results)
    assert 2 <= len(before) < N_TRIALS, f"the interrupt came too late to test anything ({len(before)} rows)"
    assert not [n for n in before if n.startswith(".")], "an interrupted write left a temporary file"

    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    after = _rows(results)
    assert len(after) == N_TRIALS, f"expected one row per trial, got {len(after)}; the rerun said:\n{done.stdout}"
    assert all(after[name] == mtime for name, mtime in before.items()), "a finished trial was run again"
    assert f"{len(before)} already done" in done.stdout, done.stdout
