"""How ``status``, ``leaderboard`` and the skip check of ``run`` scale with the number of rows in a results store.

For each size (default 1,000, 10,000 and 100,000 trials) synthesises valid rows (``store.make_row``: 6 methods x
5 datasets x 3 ipc values x seeds; 92 % ok, 5 % error, 3 % diverged; one row per trial) in a temporary results
directory, written as small files (``rows/<trial_id>.parquet``, as runs write them) and compacted by
``store.compact`` after every 10,000 files (as the end of each grid does). Then times, each in its own
subprocess, side by side in one run:

* ``distillbench status RESULTS``
* ``distillbench leaderboard RESULTS --out TMP``
* the skip check of ``run``: ``store.existing_trial_ids(RESULTS, status=("ok", "diverged"))``

and prints a Markdown table: rows, layout, operation, seconds, peak RSS of that child (``os.wait4`` in a tiny
launcher, so only that process) and the ratio to the same operation on the smallest size. The 10,000-row store is
also measured before its compaction (10,000 small files), to show what compaction gains. Every subprocess time
includes the Python start and imports (about a second), as a user's command does.

Usage::

    nice -n 15 python benchmarks/store.py                        # 1,000 / 10,000 / 100,000
    nice -n 15 python benchmarks/store.py --sizes 1000 10000     # skip the largest

The small files are written with ``pyarrow.parquet.write_table`` directly (one slice of one table per file,
not atomic): the benchmark only, to make 100,000 files in minutes. Run by hand, not by the test suite;
``tests/test_compaction.py`` pins the behaviour on small stores.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from distillbench.harness import store

METHODS = ("dm", "dc", "mtt", "random", "kcenter", "gradmatch")
DATASETS = ("digits", "cifar10", "cifar100", "mnist", "tiny_imagenet")
IPCS = (1, 10, 50)
BATCH = 10_000
SKIP_CHECK = (
    "import sys; from distillbench.harness import store; "
    "print(len(store.existing_trial_ids(sys.argv[1], status=('ok', 'diverged'))))"
)


def synth_rows(n: int) -> pa.Table:
    """``n`` valid one-row trials as one table in the row schema."""
    start = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
    rows = []
    for i in range(n):
        method, dataset, ipc = METHODS[i % 6], DATASETS[(i // 6) % 5], IPCS[(i // 30) % 3]
        seed = i // 90
        status = "error" if i % 20 == 7 else "diverged" if i % 33 == 5 else "ok"
        acc = None if status == "error" else 0.3 + (i % 97) / 200
        spec = {"method": method, "dataset": dataset, "ipc": ipc, "seed": seed, "protocol": "quick-v1"}
        rows.append(
            store.make_row(
                {
                    "trial_id": f"{i:016x}",
                    "distill_id": f"d{i:015x}",
                    "grid": f"grid{i % 4}",
                    "dataset": dataset,
                    "dataset_params": "{}",
                    "method": method,
                    "method_name": method,
                    "method_params": "{}",
                    "weighting": "none",
                    "labels": "native",
                    "ipc": ipc,
                    "seed": seed,
                    "protocol": "quick-v1",
                    "protocol_version": 1,
                    "eval_network": "convnet",
                    "spec_json": json.dumps(spec, sort_keys=True),
                    "acc_mean": acc,
                    "acc_std": None if acc is None else 0.01,
                    "acc_per_model": None if acc is None else [acc - 0.01, acc + 0.01],
                    "n_eval_models": 2,
                    "distill_seconds": 1.0 + i % 7,
                    "eval_seconds": 2.0,
                    "device": "cpu",
                    "package_version": "0.1.0",
                    "python_version": "3.12",
                    "node": "bench",
                    "start_time": start + dt.timedelta(seconds=i),
                    "end_time": start + dt.timedelta(seconds=i + 3),
                    "status": status,
                    "error": "RuntimeError: synthetic" if status == "error" else None,
                }
            )
        )
    return pa.Table.from_pylist(rows, schema=store.SCHEMA)


def write_store(results: Path, table: pa.Table, *, compact_every: int | None) -> float:
    """Write ``table`` as one small file per trial, compacting after every ``compact_every`` files; seconds."""
    rows = results / "rows"
    rows.mkdir(parents=True, exist_ok=True)
    ids = table.column("trial_id").to_pylist()
    start = time.perf_counter()
    for i, trial_id in enumerate(ids):
        pq.write_table(table.slice(i, 1), rows / f"{trial_id}.parquet")
        if compact_every and (i + 1) % compact_every == 0:
            store.compact(results)
    if compact_every:
        store.compact(results)
    return time.perf_counter() - start


# Linux carries a process's peak RSS across exec (and a spawned child starts from its parent's memory map), so
# a child of this benchmark, which holds the synthesised table, would report at least this process's size. A
# tiny launcher (a bare Python, ~10 MB) starts the operation instead and reports that child's own peak.
LAUNCHER = """
import os, sys
pid = os.fork()
if pid == 0:
    os.execv(sys.argv[1], sys.argv[1:])
_, status, usage = os.wait4(pid, 0)
print(f"PEAK_KB {usage.ru_maxrss}", file=sys.stderr)
sys.exit(os.waitstatus_to_exitcode(status))
"""


def measure(argv: list[str], timeout: float) -> tuple[float, float, int, str]:
    """Seconds, peak RSS (MB) of the operation's process only, exit code and its last output line."""
    start = time.perf_counter()
    try:
        proc = subprocess.run(
            [sys.executable, "-S", "-c", LAUNCHER, *argv], capture_output=True, text=True, timeout=timeout
        )
    except subprocess.TimeoutExpired:
        return time.perf_counter() - start, float("nan"), -9, "timed out"
    seconds = time.perf_counter() - start
    peak = [line for line in proc.stderr.splitlines() if line.startswith("PEAK_KB ")]
    out = [line for line in (proc.stdout + proc.stderr).strip().splitlines() if not line.startswith("PEAK_KB ")]
    return seconds, int(peak[-1].split()[1]) / 1024 if peak else float("nan"), proc.returncode, out[-1] if out else ""


def operations(results: Path, board: Path) -> dict[str, list[str]]:
    cli = [sys.executable, "-m", "distillbench.harness.cli"]
    return {
        "status": [*cli, "status", str(results)],
        "leaderboard": [*cli, "leaderboard", str(results), "--out", str(board)],
        "skip check": [sys.executable, "-c", SKIP_CHECK, str(results)],
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1_000, 10_000, 100_000])
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds per operation before it is killed")
    args = parser.parse_args()
    if min(args.sizes) < 1:
        parser.error(f"--sizes must be at least 1, got {min(args.sizes)}")
    results_table = []
    base: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="distillbench-store-bench-") as tmp:
        for n in args.sizes:
            table = synth_rows(n)
            layouts = [("compacted", BATCH)]
            if n == 10_000:
                layouts.insert(0, ("small files", None))
            for layout, every in layouts:
                results = Path(tmp) / f"r{n}-{layout.replace(' ', '-')}"
                built = write_store(results, table, compact_every=every)
                files = len(list((results / "rows").iterdir()))
                print(f"# {n} rows as {files} files ({layout}), written in {built:.1f} s", file=sys.stderr, flush=True)
                for name, argv in operations(results, Path(tmp) / f"board-{n}").items():
                    seconds, peak, code, last = measure(argv, args.timeout)
                    if layout == "compacted":
                        base.setdefault(name, seconds)
                    ratio = seconds / base[name] if name in base else float("nan")
                    results_table.append((n, layout, files, name, seconds, peak, ratio, code, last))
                    print(
                        f"#   {name}: {seconds:.2f} s, {peak:.0f} MB, exit {code}: {last}", file=sys.stderr, flush=True
                    )
    print("| rows | layout | files | operation | seconds | peak MB | ratio to first size | exit |")
    print("|---:|---|---:|---|---:|---:|---:|---:|")
    for n, layout, files, name, seconds, peak, ratio, code, _ in results_table:
        print(f"| {n:,} | {layout} | {files:,} | {name} | {seconds:.2f} | {peak:.0f} | {ratio:.2f} | {code} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
