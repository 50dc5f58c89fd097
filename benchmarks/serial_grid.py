"""Run a grid's pending trials in this process, one after another, without Ray.

For a lone GPU machine that has torch but not Ray (the evidence runs of issues 5 and 9 were made on
such a lent machine, where nothing could be installed). ``--shard i/n`` takes every n-th pending trial
starting at the i-th, so n processes started side by side share one GPU without running a trial
twice. Rows and sets go where ``distillbench run`` would put them (``run_trial`` writes the set, this
script the rows, both atomically), so ``distillbench leaderboard`` reads them as any other rows.

    python benchmarks/serial_grid.py configs/bias-gpu.yaml --results results/bias-gpu --shard 0/4
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

from distillbench.harness import store
from distillbench.harness.errors import one_line_errors
from distillbench.harness.runner import run_trial
from distillbench.harness.spec import load_grid_file
from distillbench.harness.workflow import data_root as resolve_data_root


@one_line_errors("serial_grid")  # a missing or bad grid file, a missing dataset: one line
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("grid", help="YAML grid file")
    parser.add_argument("--results", required=True, help="results directory")
    parser.add_argument("--data-root", help="dataset root (default: the grid's data_root, as distillbench run)")
    parser.add_argument("--shard", default="0/1", help="i/n: run pending trials i, i+n, i+2n, ... (default 0/1)")
    parser.add_argument("--device", help="cuda or cpu (default: cuda if available)")
    parser.add_argument("--threads", type=int, help="torch CPU threads of this process")
    args = parser.parse_args(argv)

    index, _, count = args.shard.partition("/")
    if not (index.isdigit() and count.isdigit() and int(index) < int(count)):
        parser.error(f"--shard must be i/n with 0 <= i < n, got {args.shard!r}")
    if args.threads:
        torch.set_num_threads(args.threads)
    grid = load_grid_file(args.grid)
    data_root = resolve_data_root(args.data_root, grid.data_root, base=Path(args.grid).resolve().parent)
    results = store.check_results_dir(args.results)
    done = store.existing_trial_ids(results, status=("ok", "diverged"))
    pending = [t for t in grid.trials if t.trial_id not in done][int(index) :: int(count)]
    print(f"shard {args.shard}: {len(pending)} trials of {len(grid.trials)}", flush=True)
    failed = 0
    for n, trial in enumerate(pending, 1):
        t0 = time.perf_counter()
        shown = [-1]

        def progress(fraction: float, message: str, t0: float = t0, shown: list[int] = shown) -> None:
            # One line per tenth of the work, so a log shows how far a long trial got.
            if int(fraction * 10) > shown[0]:
                shown[0] = int(fraction * 10)
                print(f"  [{args.shard}] {time.perf_counter() - t0:7.1f} s  {message}", flush=True)

        rows = run_trial(trial.spec, results=results, data_root=data_root, device=args.device, progress=progress)
        store.write_rows(results, rows)
        status = rows[0]["status"]
        failed += status != "ok"
        accs = " ".join(f"{r['acc_mean']:.4f}" for r in rows if r.get("acc_mean") is not None)
        print(
            f"[{args.shard} {n}/{len(pending)}] {status} {time.perf_counter() - t0:7.1f} s  {trial.spec.dataset} "
            f"{trial.spec.method} w={trial.spec.weighting} ipc={trial.spec.ipc} {trial.spec.protocol} acc={accs}"
            + (f"  error: {rows[0]['error']}" if status != "ok" else ""),
            flush=True,
        )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
