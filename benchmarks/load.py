"""Harness overhead under load: N trivial trials through distillbench versus plain Ray Tune, in one Ray session.

Three runs share one ``ray.init`` (``--cpus`` CPUs, no dashboard), one CPU per trial (so the same
concurrency) and ``reuse_actors=True``:

* ``tune-noop``: plain Tune, a function trainable that only reports a number (Tune's own floor);
* ``tune-trial``: plain Tune, a trainable that runs the same trivial distillbench trial
  (``run_trial``: random real samples of digits, one 1-epoch width-8 ConvNet, set saved) and reports
  its status; no rows are written;
* ``distillbench``: ``run_grid`` on the same trials (skip check, driver-side Parquet rows, status
  line, final count), trial ids disjoint from ``tune-trial``'s by the seed range.

The harness overhead is ``distillbench`` against ``tune-trial`` (same work per trial); the target is
a ratio within 2x. Grid parsing (resolving and hashing N specs) is timed separately.

Usage::

    python benchmarks/load.py --trials 1000

Measured (Ray 2.60, the 2-core development VM while other jobs kept its load average near 10)::

    1000 trivial trials, 2 CPUs, 1 CPU per trial, reuse_actors=True
    run             total s  ms/trial  trials/s
    tune-noop          46.9      46.9      21.3
    tune-trial         88.7      88.7      11.3
    distillbench      109.7     109.7       9.1
    grid parsing (resolve + hash 1000 specs): 0.87 s
    distillbench / tune-trial: 1.24x (target <= 2x)
"""

from __future__ import annotations

import argparse
import io
import json
import os
import tempfile
import textwrap
import time
from pathlib import Path

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")

PLUGIN = textwrap.dedent(
    '''
    """The trivial protocol of the load benchmark (driver and workers import this)."""
    import dataclasses

    from distillbench.harness.plugins import register_protocol
    from distillbench.harness.protocols import QUICK_V1

    register_protocol(
        dataclasses.replace(
            QUICK_V1, name="load-v1", networks=("convnet[width=8]",), epochs=1, n_models=1, augment="none"
        )
    )
    '''
)


def noop(config: dict) -> None:
    from ray import tune

    tune.report({"done": 1})


def one_trial(config: dict) -> None:
    import torch
    from ray import tune

    from distillbench.harness.plugins import load_plugin_modules
    from distillbench.harness.runner import run_trial

    load_plugin_modules(config["plugins"])
    torch.set_num_threads(1)
    rows = run_trial(config["trial"], results=config["results"], data_root=Path(config["data_root"]))
    tune.report({"status": rows[0]["status"]})


def plain_tune(trainable, points: list, *, name: str, storage: Path, extra: dict) -> float:
    from ray import tune

    start = time.perf_counter()
    tuner = tune.Tuner(
        tune.with_resources(trainable, {"cpu": 1}),
        param_space={"trial": tune.grid_search(points), **extra},
        tune_config=tune.TuneConfig(reuse_actors=True),
        run_config=tune.RunConfig(
            name=name,
            storage_path=str(storage),
            verbose=0,
            checkpoint_config=tune.CheckpointConfig(num_to_keep=2),
        ),
    )
    grid = tuner.fit()
    seconds = time.perf_counter() - start
    bad = [r for r in grid if r.error is not None or (r.metrics or {}).get("status", "ok") != "ok"]
    if len(grid) != len(points) or bad:
        raise SystemExit(f"{name}: {len(grid)} results for {len(points)} trials, {len(bad)} failed")
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=1000)
    parser.add_argument("--cpus", type=int, default=2)
    parser.add_argument("--json", action="store_true", help="print the figures as one JSON object")
    args = parser.parse_args()

    import ray

    from distillbench.harness import scheduler, store
    from distillbench.harness.spec import parse_grid

    n = args.trials
    work = Path(tempfile.mkdtemp(prefix="distillbench-load-"))
    plugin = work / "load_plugin.py"
    plugin.write_text(PLUGIN)

    # Tune's end-of-run summary looks for per-trial JSON logs, which the harness turns off; quiet it.
    import logging

    logging.getLogger("ray.tune.analysis.experiment_analysis").setLevel(logging.ERROR)
    document = {"name": "load", "protocol": "load-v1", "plugins": [str(plugin)]}
    parse_grid({**document, "grid": {"dataset": "digits", "method": "random", "ipc": 1}})  # imports, plugin
    t0 = time.perf_counter()
    harness_grid = parse_grid(
        {**document, "grid": {"dataset": "digits", "method": "random", "ipc": 1, "seed": list(range(n))}}
    )
    parse_seconds = time.perf_counter() - t0
    plain_grid = parse_grid(
        {**document, "grid": {"dataset": "digits", "method": "random", "ipc": 1, "seed": list(range(n, 2 * n))}}
    )

    ray.init(
        num_cpus=args.cpus,
        include_dashboard=False,
        object_store_memory=100 * 2**20,
        logging_level="WARNING",
        log_to_driver=False,
    )
    try:
        figures = {}
        figures["tune-noop"] = plain_tune(noop, list(range(n)), name="noop", storage=work / "ray", extra={})
        results_plain = work / "plain-results"
        figures["tune-trial"] = plain_tune(
            one_trial,
            [t.spec.to_dict() for t in plain_grid.trials],
            name="trial",
            storage=work / "ray",
            extra={"plugins": [str(plugin)], "results": str(results_plain), "data_root": str(work)},
        )
        results = work / "results"
        start = time.perf_counter()
        outcome = scheduler.run_grid(
            harness_grid.trials,
            results=results,
            data_root=work,
            grid_name="load",
            plugins=harness_grid.plugins,
            stream=io.StringIO(),
        )
        figures["distillbench"] = time.perf_counter() - start
        if (outcome.ok, outcome.failed) != (n, 0) or len(store.existing_trial_ids(results)) != n:
            raise SystemExit(f"distillbench: {outcome}")
    finally:
        ray.shutdown()

    ratio = figures["distillbench"] / figures["tune-trial"]
    if args.json:
        print(json.dumps({"trials": n, "seconds": figures, "parse_seconds": parse_seconds, "ratio": ratio}))
        return
    print(f"{n} trivial trials, {args.cpus} CPUs, 1 CPU per trial, reuse_actors=True (work dir {work})")
    print(f"{'run':14} {'total s':>8} {'ms/trial':>9} {'trials/s':>9}")
    for name, seconds in figures.items():
        print(f"{name:14} {seconds:8.1f} {1000 * seconds / n:9.1f} {n / seconds:9.1f}")
    print(f"grid parsing (resolve + hash {n} specs): {parse_seconds:.2f} s")
    print(f"distillbench / tune-trial: {ratio:.2f}x (target <= 2x)")


if __name__ == "__main__":
    main()
