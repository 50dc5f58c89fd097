"""Time the KDE part of the ``kde`` weighting on 60,000 samples (the size of MNIST's training split).

The embeddings are synthetic: 10 classes of 6,000 points in ``--dim`` dimensions (default 32, the
SupCon projection size of ``kde``), each class an aligned cluster plus 5% points drawn around other
classes' centres (bias-conflicting), all L2-normalised like the SupCon embedding. The encoder is not
timed (it is a network forward/training pass, GPU work at full size); only the leave-one-out
per-class densities, bandwidth rule, clipping and normalisation are::

    python benchmarks/kde_weights.py --threads 2

Prints the wall time, the process CPU time (on a shared machine the wall time includes waiting for
a core; CPU time / threads is the wall time on idle cores) and the conflicting/aligned mean-weight
ratio of the synthetic data.
"""

from __future__ import annotations

import argparse
import contextlib
import time

import torch

from distillbench.methods.kde import kde_weights


def synthetic(n: int, classes: int, dim: int, conflict: float, seed: int) -> tuple[torch.Tensor, ...]:
    """Embeddings, labels and an aligned mask: per class a tight cluster, ``conflict`` of it elsewhere."""
    gen = torch.Generator().manual_seed(seed)
    centres = torch.nn.functional.normalize(torch.randn(classes, dim, generator=gen), dim=1)
    labels = torch.arange(n) % classes
    aligned = torch.rand(n, generator=gen) >= conflict
    other = (labels + torch.randint(1, classes, (n,), generator=gen)) % classes
    centre = torch.where(aligned, labels, other)
    z = centres[centre] + 0.15 * torch.randn(n, dim, generator=gen)
    return torch.nn.functional.normalize(z, dim=1), labels, aligned


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=60000, help="number of samples")
    parser.add_argument("--dim", type=int, default=32, help="embedding dimensions")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--bandwidth", default="median", help="median, scott, silverman or a number")
    parser.add_argument("--chunk", type=int, default=2048, help="rows per block of pairwise distances")
    args = parser.parse_args()
    if min(args.n, args.dim, args.threads, args.chunk) < 1:
        parser.error("--n, --dim, --threads and --chunk must be at least 1")
    torch.set_num_threads(args.threads)
    bandwidth: float | str = args.bandwidth
    with contextlib.suppress(ValueError):
        bandwidth = float(args.bandwidth)
    z, labels, aligned = synthetic(args.n, 10, args.dim, 0.05, seed=0)
    start, cpu_start = time.perf_counter(), time.process_time()
    w = kde_weights(z, labels, 10, bandwidth=bandwidth, chunk=args.chunk)
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
    ratio = float(w[~aligned].mean() / w[aligned].mean())
    print(
        f"kde weights: n={args.n} dim={args.dim} threads={args.threads} bandwidth={args.bandwidth} "
        f"chunk={args.chunk}: {seconds:.2f} s wall, {cpu_seconds:.2f} s CPU (all threads); "
        f"conflicting/aligned mean weight {ratio:.2f}"
    )


if __name__ == "__main__":
    main()
