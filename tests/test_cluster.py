"""Cluster-grade behaviour: node loss, out-of-memory retries, workers without the data.

The node-loss test uses ``ray.cluster_utils.Cluster``: a head (no CPUs: only the driver runs there)
and two 1-CPU worker nodes as separate raylets on this machine; ``remove_node`` kills one of them
with its running trial, and Tune retries the trial on the survivor (``retries:`` in the grid).
"""

from __future__ import annotations

import dataclasses
import io
import json
import socket
import textwrap
import threading
import time

import pytest
import torch

from distillbench.harness import store
from distillbench.methods.base import DistillationMethod
from distillbench.methods.random import random_per_class

from .conftest import temp_plugin

PLUGIN = textwrap.dedent(
    '''
    """Slow trials that log every attempt with the node it ran on (driver and workers import this)."""
    import dataclasses
    import os
    import time
    import uuid

    import ray

    from distillbench.harness.plugins import register_method, register_protocol
    from distillbench.harness.protocols import QUICK_V1
    from distillbench.methods.random import RandomReal

    ATTEMPTS = {attempts!r}

    register_protocol(
        dataclasses.replace(QUICK_V1, name="cluster-test", networks=("convnet[width=8]",), epochs=1, n_models=1)
    )


    @register_method("node_logging_random")
    class NodeLoggingRandom(RandomReal):
        """Random real samples after a pause; each attempt leaves a file naming its node."""

        name = "node_logging_random"

        def distill(self, data, ipc, ctx):
            node = ray.get_runtime_context().get_node_id()
            open(os.path.join(ATTEMPTS, f"{{node}}-{{uuid.uuid4().hex}}"), "w").close()
            time.sleep(3.0)
            return super().distill(data, ipc, ctx)
    '''
)
N_TRIALS = 4


@pytest.fixture
def cheap_protocol():
    """A one-model, one-epoch protocol registered for the duration of a test."""
    from distillbench.harness.protocols import QUICK_V1

    protocol = dataclasses.replace(QUICK_V1, name="cluster-unit", networks=("convnet[width=8]",), epochs=1, n_models=1)
    with temp_plugin("protocols", "cluster-unit", protocol):
        yield protocol


@dataclasses.dataclass(frozen=True)
class BatchParams:
    batch_real: int = 64


@dataclasses.dataclass(frozen=True)
class NoBatchParams:
    width: int = 8


class FakeOOM(DistillationMethod):
    """Runs out of memory while ``batch_real`` is above ``fits`` (or always, without a batch_real)."""

    name = "fake_oom"
    Params = BatchParams
    fits = 32
    calls: list = []

    def distill(self, data, ipc, ctx):
        batch = getattr(self.params, "batch_real", None)
        type(self).calls.append(batch)
        if batch is None or batch > self.fits:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        idx = random_per_class(data, ipc, ctx.generator, self.name)
        from distillbench.harness.types import DistilledSet

        return DistilledSet(data.train.x[idx], data.train.y[idx])


def _run(method_cls, method_spec, results, tmp_path):
    from distillbench.harness.runner import run_trial
    from distillbench.harness.spec import TrialSpec

    method_cls.calls = []
    with temp_plugin("methods", "fake_oom", method_cls):
        spec = TrialSpec(dataset="digits", method=method_spec, ipc=1, protocol="cluster-unit")
        (row,) = run_trial(spec, results=results, data_root=tmp_path)
    return row


class TestOutOfMemory:
    """An out-of-memory trial is retried once with the method's smaller batch, and the row says so."""

    def test_retried_with_half_the_batch(self, cheap_protocol, tmp_path):
        """First call OOMs at batch_real=64; the retry at 32 fits: ok row, effective params and a note."""
        row = _run(FakeOOM, "fake_oom", tmp_path / "results", tmp_path)
        assert row["status"] == "ok", row["error"]
        assert FakeOOM.calls == [64, 32]
        assert json.loads(row["method_params"]) == {"batch_real": 64}, "the identity keeps the requested params"
        assert json.loads(row["effective_method_params"]) == {"batch_real": 32}
        assert "out of memory with batch_real=64" in row["notes"] and "retried once with batch_real=32" in row["notes"]
        # The saved set carries the record, so a trial that reuses it reports the same.
        reused = _run(FakeOOM, "fake_oom", tmp_path / "results", tmp_path)
        assert reused["set_reused"] and FakeOOM.calls == []
        assert reused["notes"] == row["notes"]

    def test_still_too_big_after_the_retry(self, cheap_protocol, tmp_path):
        """Both attempts OOM: an error row naming the out-of-memory and the retry."""
        tight = type("TightOOM", (FakeOOM,), {"fits": 8})
        row = _run(tight, "fake_oom", None, tmp_path)
        assert row["status"] == "error" and tight.calls == [64, 32]
        assert row["error"].startswith("TrialOutOfMemory: out of memory in method 'fake_oom'")
        assert "again after retrying with batch_real=32" in row["error"]

    def test_method_that_cannot_shrink(self, cheap_protocol, tmp_path):
        """No batch to halve: one attempt, an error row that names the OOM and the fix."""
        fixed = type("FixedOOM", (FakeOOM,), {"Params": NoBatchParams})
        row = _run(fixed, "fake_oom", None, tmp_path)
        assert row["status"] == "error" and fixed.calls == [None]
        assert "out of memory in method 'fake_oom' (OutOfMemoryError: CUDA out of memory" in row["error"]
        assert "cannot shrink its batch" in row["error"] and "resources.per_method" in row["error"]

    def test_shrink_for_oom_defaults(self):
        """dm, dc and dsa halve batch_real; at 1 (or without one) there is nothing left to shrink."""
        from distillbench.harness.plugins import METHODS

        for name in ("dm", "dc", "dsa"):
            cls = METHODS.get(name)
            assert cls.shrink_for_oom(cls.Params(batch_real=256)).batch_real == 128
            assert cls.shrink_for_oom(cls.Params(batch_real=1)) is None
        assert METHODS.get("random").shrink_for_oom(METHODS.get("random").Params()) is None


def test_worker_without_the_data_gives_an_error_row_naming_node_path_and_fix(cheap_protocol, tmp_path):
    """A trial whose data root does not exist on its node ends as an error row that says where and how to fix."""
    from distillbench.harness.runner import run_trial
    from distillbench.harness.spec import TrialSpec

    root = tmp_path / "no-data-here"
    (row,) = run_trial(TrialSpec(dataset="mnist", method="random", ipc=1, protocol="cluster-unit"), data_root=root)
    assert row["status"] == "error"
    first = row["error"].splitlines()[0]
    assert first.startswith(f"DataError: on node {socket.gethostname()!r} the data root {root} does not exist")
    assert "distillbench data fetch mnist" in first and "download: true" in first


@pytest.fixture
def two_node_cluster():
    import ray
    from ray.cluster_utils import Cluster

    cluster = Cluster(
        initialize_head=True,
        head_node_args={
            "num_cpus": 0,
            "include_dashboard": False,
            "object_store_memory": 80 * 2**20,
            # Detect a dead node in about 1.5 s instead of the default half minute.
            "_system_config": {
                "health_check_initial_delay_ms": 0,
                "health_check_period_ms": 500,
                "health_check_failure_threshold": 3,
            },
        },
    )
    workers = [cluster.add_node(num_cpus=1, object_store_memory=80 * 2**20) for _ in range(2)]
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, logging_level="WARNING", log_to_driver=False)
    try:
        yield cluster, workers
    finally:
        ray.shutdown()
        cluster.shutdown()


@pytest.mark.ray
@pytest.mark.slow
def test_worker_node_lost_mid_grid_every_trial_completes(two_node_cluster, tmp_path):
    """A worker node dies with a trial on it; the trial is retried on the survivor: N ok rows, no duplicates."""
    from distillbench.harness.scheduler import run_grid
    from distillbench.harness.spec import parse_grid

    cluster, (survivor, victim) = two_node_cluster
    attempts = tmp_path / "attempts"
    attempts.mkdir()
    plugin = tmp_path / "cluster_plugin.py"
    plugin.write_text(PLUGIN.format(attempts=str(attempts)))
    grid = parse_grid(
        {
            "name": "cluster",
            "protocol": "cluster-test",
            "plugins": [str(plugin)],
            "retries": 3,
            "grid": {"dataset": "digits", "method": "node_logging_random", "ipc": 1, "seed": list(range(N_TRIALS))},
        }
    )
    results = tmp_path / "results"
    box: dict[str, object] = {}

    def run() -> None:
        try:
            box["outcome"] = run_grid(
                grid.trials,
                results=results,
                data_root=tmp_path,
                grid_name=grid.name,
                retries=grid.retries,
                plugins=grid.plugins,
                stream=io.StringIO(),
            )
        except BaseException as exc:  # surfaced by the assertion below
            box["error"] = exc

    start = time.monotonic()
    thread = threading.Thread(target=run)
    thread.start()
    deadline = time.monotonic() + 120
    while not any(p.name.startswith(victim.node_id) for p in attempts.iterdir()) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert any(p.name.startswith(victim.node_id) for p in attempts.iterdir()), "no trial reached the victim node"
    time.sleep(1.0)  # the victim's trial is mid-way through its 3 s distillation
    rows_before = len(store.existing_trial_ids(results))
    cluster.remove_node(victim, allow_graceful=False)
    thread.join(timeout=240)
    assert not thread.is_alive(), "the grid did not finish after the node loss"
    assert "error" not in box, box.get("error")
    outcome = box["outcome"]
    print(f"node-loss grid: {time.monotonic() - start:.1f} s, {len(list(attempts.iterdir()))} attempts")

    assert rows_before < N_TRIALS, "the node was removed after the grid had finished"
    assert (outcome.ok, outcome.failed, outcome.pending) == (N_TRIALS, 0, 0)
    frame = store.read_rows([results])
    assert sorted(frame["trial_id"]) == sorted(t.trial_id for t in grid.trials), "a trial is missing or duplicated"
    assert set(frame["status"]) == {"ok"}
    tried = [p.name for p in attempts.iterdir()]
    assert len(tried) > N_TRIALS, "no trial was retried after the node loss"
    assert any(n.startswith(survivor.node_id) for n in tried)
