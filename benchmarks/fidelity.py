"""Reproduced vs reported accuracy of the image methods, one table.

Runs each method on a dataset named on the command line, evaluates every set, and prints the
reproduced accuracy next to the number the method's paper reports (../shared/METHODS.md), with
the settings actually used. Paper settings are GPU work (DESIGN.md, Cost); on a CPU pass reduced
settings and they are printed in the table, never hidden:

    python benchmarks/fidelity.py --dataset mnist --data-root ../shared/data/mnist-10k \\
        --ipc 1 10 --seeds 0 --reduced

``--reduced`` evaluates with a narrower, shorter copy of convnet-v1 (stated as ``eval`` in the table)
and shortens DC / DSA / DM (stated per row). Without it, every method runs at its paper defaults
under convnet-v1 (K = 20 models, 1000 epochs).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

from distillbench.harness.errors import one_line_errors
from distillbench.harness.protocols import CPU_REDUCED_V1
from distillbench.harness.runner import default_data_root, load_data, run_trial
from distillbench.harness.spec import TrialSpec

# Reported test accuracy (%) with ConvNet under the DC/DSA/DM protocol, from ../shared/METHODS.md
# section 3 "Reported numbers" (DC/DSA: the DC repository readme; DM on MNIST: UNVERIFIED there).
REPORTED: dict[tuple[str, str, int], tuple[float, str]] = {
    ("mnist", "dc", 1): (91.7, "DC readme"),
    ("mnist", "dc", 10): (97.4, "DC readme"),
    ("mnist", "dc", 50): (98.8, "DC readme"),
    ("mnist", "dsa", 1): (88.7, "DSA readme"),
    ("mnist", "dsa", 10): (97.8, "DSA readme"),
    ("mnist", "dsa", 50): (99.2, "DSA readme"),
    ("mnist", "dm", 1): (89.7, "UNVERIFIED, often cited"),
    ("mnist", "dm", 10): (97.5, "UNVERIFIED, often cited"),
    ("mnist", "dm", 50): (98.6, "UNVERIFIED, often cited"),
    ("cifar10", "dc", 1): (28.3, "DC readme"),
    ("cifar10", "dc", 10): (44.9, "DC readme"),
    ("cifar10", "dsa", 1): (28.8, "DSA readme"),
    ("cifar10", "dsa", 10): (52.1, "DSA readme"),
    ("cifar10", "dm", 1): (26.0, "DM paper Table 1"),
    ("cifar10", "dm", 10): (48.9, "DM paper Table 1"),
    ("cifar10", "random", 1): (14.4, "secondary, UNVERIFIED"),
    ("cifar10", "random", 10): (26.0, "secondary, UNVERIFIED"),
    ("cifar10", "herding", 1): (21.5, "secondary, UNVERIFIED"),
    ("cifar10", "herding", 10): (31.6, "secondary, UNVERIFIED"),
    ("cifar10", "kcenter", 1): (23.3, "secondary, UNVERIFIED"),
    ("cifar10", "kcenter", 10): (36.4, "secondary, UNVERIFIED"),
}

# Reduced settings for a CPU run: same algorithms, fewer iterations / smaller batches (stated in the table).
REDUCED = {
    "random": "random",
    "herding": "herding[train_epochs=5]",
    "kcenter": "kcenter[train_epochs=5]",
    "dm": "dm[batch_real=64,iterations=200,net=convnet[width=32]]",
    "dc": "dc[batch_real=64,iterations=20,net=convnet[width=32]]",
    "dsa": "dsa[batch_real=64,iterations=20,net=convnet[width=32]]",
}
PAPER = {name: name for name in REDUCED}


def reduced_protocol() -> str:
    """The built-in CPU stand-in for convnet-v1 (ConvNet-3 width 32, 100 epochs, K=3)."""
    return CPU_REDUCED_V1.name


@one_line_errors("fidelity")
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="mnist")
    parser.add_argument("--data-root", default=None)
    parser.add_argument("--methods", nargs="+", default=list(REDUCED))
    parser.add_argument("--ipc", nargs="+", type=int, default=[1, 10])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--reduced", action="store_true", help="CPU settings (stated in the table)")
    parser.add_argument("--spec", action="append", default=[], help="override a method spec, e.g. dm=dm[iterations=50]")
    parser.add_argument("--threads", type=int, default=max(1, torch.get_num_threads()))
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    specs = dict(REDUCED if args.reduced else PAPER)
    for item in args.spec:
        key, _, value = item.partition("=")
        specs[key] = value
    protocol = reduced_protocol() if args.reduced else "convnet-v1"
    unknown = sorted(set(args.methods) - set(specs))
    if unknown:
        parser.error(f"no spec for --methods {', '.join(unknown)}; known: {', '.join(specs)} (or add one with --spec)")
    # The data once up front: a missing dataset is one line now, not a table of failed trials later.
    first = TrialSpec(args.dataset, specs[args.methods[0]], ipc=args.ipc[0], protocol=protocol, grid="fidelity")
    load_data(first.resolve(), Path(args.data_root) if args.data_root else default_data_root())
    rows = []
    for method in args.methods:
        for ipc in args.ipc:
            accs, secs, errors = [], 0.0, []
            for seed in args.seeds:
                start = time.perf_counter()
                (row,) = run_trial(
                    TrialSpec(args.dataset, specs[method], ipc=ipc, seed=seed, protocol=protocol, grid="fidelity"),
                    data_root=Path(args.data_root) if args.data_root else None,
                )
                secs += time.perf_counter() - start
                if row["status"] == "ok":
                    accs.extend(row["acc_per_model"])
                else:
                    errors.append(str(row["error"]).splitlines()[0])
            mean = 100 * statistics.fmean(accs) if accs else float("nan")
            std = 100 * statistics.pstdev(accs) if accs else float("nan")
            reported = REPORTED.get((args.dataset.split("[")[0], method, ipc))
            rows.append((specs[method], ipc, mean, std, len(accs), reported, secs, errors))
            print(f"  done {specs[method]} ipc {ipc}: {mean:.2f} ({secs:.0f} s)", file=sys.stderr, flush=True)

    print(f"\nDataset {args.dataset} (data root {args.data_root}), eval protocol {protocol}, seeds {args.seeds}\n")
    print("| method (settings used) | IPC | reproduced % (mean ± std, n) | reported % (source) | diff | wall s |")
    print("|---|---:|---:|---:|---:|---:|")
    for spec, ipc, mean, std, n, reported, secs, errors in rows:
        rep = f"{reported[0]:.1f} ({reported[1]})" if reported else "–"
        diff = f"{mean - reported[0]:+.1f}" if reported and n else "–"
        cell = f"{mean:.2f} ± {std:.2f} (n={n})" if n else f"failed: {errors[0] if errors else '?'}"
        print(f"| {spec} | {ipc} | {cell} | {rep} | {diff} | {secs:.0f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
