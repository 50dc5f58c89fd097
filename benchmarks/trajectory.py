"""Per-iteration time and peak memory of trajectory matching (mtt), full backpropagation against TESLA.

One MTT iteration is ``syn_steps`` differentiable student steps on the synthetic set, the matching
loss and one backward pass; this script times exactly that (methods/_trajectory.py's
``_unrolled_gradients`` and ``_tesla_gradients``) on random data of the configured shape with a
random start and target, which cost what real ones cost. Each configuration runs in its own process,
so its peak resident memory (Linux ``VmHWM``) is its own; the table reports the peak and its growth
over the process after set-up (data, network, start and target), which is what the unrolled graph
holds.

Settings (``--preset``):

* ``cpu``: the reduced CPU settings used for the evidence in docs/trajectory.md (ConvNet-3 width 32 on
  28x28x1 MNIST-like data, IPC 1 and 10, ``syn_steps`` 10).
* ``paper``: CIFAR-10 IPC 10 at MTT's paper settings (ConvNet-3 width 128, 32x32x3, 100 images,
  ``syn_steps`` 30, full batch, DSA), plus ``syn_steps`` 5 and 10 so the memory's linear growth can
  be read off where 30 steps do not fit the machine.

Usage::

    python benchmarks/trajectory.py --preset cpu --iterations 5 --agreement
    python benchmarks/trajectory.py --preset paper --iterations 2 --json
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

PRESETS = {
    "cpu": [
        {"shape": [1, 28, 28], "width": 32, "ipc": 1, "syn_steps": 10},
        {"shape": [1, 28, 28], "width": 32, "ipc": 10, "syn_steps": 10},
    ],
    "paper": [
        {"shape": [3, 32, 32], "width": 128, "ipc": 10, "syn_steps": 5},
        {"shape": [3, 32, 32], "width": 128, "ipc": 10, "syn_steps": 10},
        {"shape": [3, 32, 32], "width": 128, "ipc": 10, "syn_steps": 30},
    ],
}


def _vm(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    return 0


def _problem(config: dict, threads: int) -> tuple:
    """One mtt iteration's inputs for ``config``, random: the gradient functions' arguments up to the generator."""
    import torch

    from distillbench.harness.augment import DSA
    from distillbench.harness.networks import build_network
    from distillbench.harness.seeding import torch_generator
    from distillbench.harness.types import DatasetInfo
    from distillbench.methods._trajectory import FlatModel

    torch.set_num_threads(threads)
    shape = tuple(config["shape"])
    info = DatasetInfo("bench", "image", 10, shape, tuple(str(i) for i in range(10)))
    net = build_network(f"convnet[width={config['width']}]", info, torch_generator(0))
    student = FlatModel(net, [(n, tuple(p.shape)) for n, p in net.named_parameters()])
    theta0 = torch.cat([p.detach().reshape(-1) for p in net.parameters()])
    target = theta0 + 0.01 * torch.randn(theta0.shape, generator=torch_generator(1))
    n = 10 * config["ipc"]
    syn = torch.randn((n, *shape), generator=torch_generator(2)).requires_grad_(True)
    labels = torch.arange(10).repeat_interleave(config["ipc"])
    syn_lr = torch.tensor(0.01, requires_grad=True)
    batches = [torch.arange(n)] * config["syn_steps"]
    aug = DSA("color_crop_cutout_flip_scale_rotate")
    return student, theta0, target, syn, syn_lr, [syn], lambda idx: labels[idx], batches, aug


def measure(config: dict, tesla: bool, iterations: int, threads: int) -> dict:
    """Time ``iterations`` MTT iterations of one configuration in this process."""
    from distillbench.harness.seeding import torch_generator
    from distillbench.methods._trajectory import _tesla_gradients, _unrolled_gradients

    args = _problem(config, threads)
    theta0 = args[1]
    gen = torch_generator(3)
    fn = _tesla_gradients if tesla else _unrolled_gradients
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset the peak: what follows is the iterations' own memory
    base = _vm("VmRSS")
    times = []
    for _ in range(iterations):
        t0 = time.perf_counter()
        loss, grads = fn(*args, gen)
        times.append(time.perf_counter() - t0)
        del loss, grads
    peak = _vm("VmHWM")
    return {
        **config,
        "tesla": tesla,
        "params": int(theta0.numel()),
        "iterations": iterations,
        "seconds_per_iteration": sum(times[1:] or times) / len(times[1:] or times),
        "first_iteration_s": times[0],
        "peak_rss_mb": peak / 2**20,
        "growth_mb": (peak - base) / 2**20,
        "threads": threads,
    }


def agreement(config: dict, threads: int) -> dict:
    """Cosine between TESLA's image gradient and full backpropagation's, on one random problem of ``config``.

    TESLA drops the terms through which an early batch changes later gradients (methods/_trajectory.py);
    this measures how far that moves the gradient at the configuration's number of steps.
    """
    import torch

    from distillbench.harness.seeding import torch_generator
    from distillbench.methods._trajectory import _tesla_gradients, _unrolled_gradients

    args = _problem(config, threads)
    _, exact = _unrolled_gradients(*args, torch_generator(3))
    _, tesla = _tesla_gradients(*args, torch_generator(3))
    cos = torch.nn.functional.cosine_similarity(exact[0].flatten(), tesla[0].flatten(), dim=0)
    ratio = tesla[0].norm() / exact[0].norm()
    return {
        **config,
        "cosine_images": float(cos),
        "norm_ratio_images": float(ratio),
        "syn_lr_ratio": float(tesla[1] / exact[1]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", choices=sorted(PRESETS), default="cpu")
    parser.add_argument("--iterations", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", action="store_true", help="print one JSON object per configuration")
    parser.add_argument(
        "--max-gb",
        type=float,
        default=16.0,
        help="skip a backpropagation run whose peak, extrapolated linearly in syn_steps from the smaller runs, "
        "would exceed this (default 16)",
    )
    parser.add_argument("--one", help=argparse.SUPPRESS)  # a configuration, run in this process
    parser.add_argument("--tesla", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument(
        "--agreement", action="store_true", help="also compare TESLA's gradient with full backpropagation's"
    )
    args = parser.parse_args()
    if args.iterations < 1 or args.threads < 1:
        parser.error(f"--iterations and --threads must be at least 1, got {args.iterations} and {args.threads}")
    if args.one:
        print(json.dumps(measure(json.loads(args.one), args.tesla, args.iterations, args.threads)))
        return
    rows: list[dict] = []
    for config in PRESETS[args.preset]:
        for tesla in (False, True):
            projected = None if tesla else _projected_peak_gb(rows, config)
            if projected is not None and projected > args.max_gb:
                row = {**config, "tesla": tesla, "error": f"skipped: projected peak {projected:.1f} GB > --max-gb"}
                rows.append(row)
                print(json.dumps(row) if args.json else _line(row), flush=True)
                continue
            cmd = [sys.executable, __file__, "--one", json.dumps(config), "--iterations", str(args.iterations)]
            cmd += ["--threads", str(args.threads)] + (["--tesla"] if tesla else [])
            proc = subprocess.run(cmd, capture_output=True, text=True)
            if proc.returncode != 0:
                tail = (proc.stderr.strip().splitlines() or ["killed"])[-1]
                row = {**config, "tesla": tesla, "error": f"exit {proc.returncode}: {tail}"}
            else:
                row = json.loads(proc.stdout.strip().splitlines()[-1])
            rows.append(row)
            print(json.dumps(row) if args.json else _line(row), flush=True)
        if args.agreement:
            row = agreement(config, args.threads)
            text = (
                f"  tesla vs bptt image gradient: cosine {row['cosine_images']:.4f}, norm ratio "
                f"{row['norm_ratio_images']:.3f}; syn_lr gradient ratio {row['syn_lr_ratio']:.3f}"
            )
            print(json.dumps(row) if args.json else text, flush=True)


def _projected_peak_gb(rows: list[dict], config: dict) -> float | None:
    """The peak of ``config`` under backpropagation, extrapolated from two measured runs with fewer steps."""
    same = [
        r
        for r in rows
        if not r["tesla"] and "error" not in r and all(r[k] == config[k] for k in ("shape", "width", "ipc"))
    ]
    if len(same) < 2:
        return None
    a, b = same[-2], same[-1]
    per_step = (b["growth_mb"] - a["growth_mb"]) / (b["syn_steps"] - a["syn_steps"])
    base = b["peak_rss_mb"] - b["growth_mb"]
    return (base + b["growth_mb"] + per_step * (config["syn_steps"] - b["syn_steps"])) / 1024


def _line(row: dict) -> str:
    what = f"{'x'.join(map(str, row['shape']))} width {row['width']} ipc {row['ipc']} syn_steps {row['syn_steps']}"
    how = "tesla" if row["tesla"] else "bptt "
    if "error" in row:
        return f"{what} {how}: {row['error']}"
    return (
        f"{what} {how}: {row['seconds_per_iteration']:.3f} s/iteration, peak RSS {row['peak_rss_mb']:.0f} MB "
        f"(+{row['growth_mb']:.0f} MB over set-up)"
    )


if __name__ == "__main__":
    main()
