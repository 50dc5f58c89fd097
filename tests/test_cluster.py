"""A simulated multi-node Ray cluster: losing a worker node mid-grid still gives one ok row per trial.

``ray.cluster_utils.Cluster`` starts a head (no CPUs: only the driver runs there) and two 1-CPU worker
nodes as separate raylets on this machine; ``remove_node`` kills one of them with its running trial.
Tune sees the actor die with its node and retries the trial on the survivor (``retries:`` in the grid).
"""

from __future__ import annotations

import io
import textwrap
import threading
import time

import pytest

from distillbench.harness import store

pytestmark = [pytest.mark.ray, pytest.mark.slow]

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
