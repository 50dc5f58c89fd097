"""How long ``distillbench run GRID --dry-run`` takes on large grids, how soon it prints, how much memory it holds.

Writes grids of 10^4, 10^5 and 10^6 trials (``digits`` x ``random`` x 10 ipc values x N/10 seeds, protocol
``quick-v1``) to a temporary folder, runs ``distillbench run GRID --dry-run`` on each in a subprocess, and
prints a Markdown table: trials, seconds to the first trial line, total seconds, peak RSS of the child,
exit code and the first line it printed (stdout and stderr merged, so a refusal shows its error line).

The peak RSS comes from ``os.wait4`` on that one child (``ru_maxrss``), not from ``RUSAGE_CHILDREN``, which
is the maximum over every child waited for so far. Ten ipc values make ten distinct (method, dataset, ipc)
validations, so the table measures the per-trial cost of a grid whose plugins repeat, as real grids do.

Usage::

    nice -n 15 python benchmarks/dry_run.py                       # 10^4, 10^5, 10^6
    nice -n 15 python benchmarks/dry_run.py --sizes 10000 100000  # skip the largest
    nice -n 15 python benchmarks/dry_run.py --timeout 120         # give up on a size after 120 s

Run by hand, not by the test suite; ``tests/test_dry_run.py`` pins the behaviour on small grids.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

IPCS = list(range(1, 11))
TRIAL_LINE = re.compile(r"^  [0-9a-f]{16}  ")


def write_grid(folder: Path, trials: int) -> Path:
    """A one-block grid of ``trials`` trials (a multiple of 10): 10 ipc values times ``trials / 10`` seeds."""
    path = folder / f"grid-{trials}.yaml"
    block = {"dataset": "digits", "method": "random", "ipc": IPCS, "seed": list(range(trials // len(IPCS)))}
    path.write_text(yaml.safe_dump({"name": f"dry-{trials}", "protocol": "quick-v1", "grid": block}))
    return path


def measure(grid: Path, results: Path, timeout: float) -> dict[str, object]:
    """Run one dry-run and time its output as it arrives."""
    command = [sys.executable, "-m", "distillbench.harness.cli", "run", str(grid), "--dry-run"]
    start = time.perf_counter()
    proc = subprocess.Popen(
        [*command, "--results", str(results)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    first_line = first_trial = None
    lines = 0
    timed_out = False
    assert proc.stdout is not None
    for line in proc.stdout:
        lines += 1
        if first_line is None:
            first_line = line.rstrip("\n")
        if first_trial is None and TRIAL_LINE.match(line):
            first_trial = time.perf_counter() - start
        if time.perf_counter() - start > timeout:
            proc.kill()
            timed_out = True
            break
    # wait4 on this child alone: its own peak RSS (kilobytes on Linux).
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    return {
        "first_trial_s": first_trial,
        "total_s": time.perf_counter() - start,
        "peak_mb": usage.ru_maxrss / 1024,
        "exit": "timeout" if timed_out else proc.returncode,
        "lines": lines,
        "first_line": first_line or "",
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--timeout", type=float, default=900, help="seconds before one size is given up (killed)")
    args = parser.parse_args(argv)
    if min(args.sizes) < 1:
        parser.error(f"--sizes must be at least 1, got {min(args.sizes)}")
    print("| trials | first trial line (s) | total (s) | peak RSS (MB) | exit | lines | first line printed |")
    print("|---:|---:|---:|---:|---|---:|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for size in args.sizes:
            grid = write_grid(Path(tmp), size)
            row = measure(grid, Path(tmp) / "results", args.timeout)
            first = "-" if row["first_trial_s"] is None else f"{row['first_trial_s']:.2f}"
            text = str(row["first_line"])[:110].replace("|", "\\|")
            print(
                f"| {size:,} | {first} | {row['total_s']:.1f} | {row['peak_mb']:.0f} | {row['exit']} | "
                f"{row['lines']:,} | `{text}` |",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
