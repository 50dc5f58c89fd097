"""Speed of the harness against faithful re-statements of the reference loops, measured side by side.

Every operation runs its baseline (``benchmarks/reference_loops.py``) and our code alternately in one
process, ``--repeats`` times each, and reports the **best** (minimum) time of each: on a shared
machine the minimum is the run least disturbed by other processes, and alternating exposes both to
the same load. The ratio is ``baseline_s / ours_s`` (above 1: ours is faster).

Operations (``--ops``):

* ``eval``: one evaluation model, ConvNet-3 width 128 on MNIST-shaped IPC 10 data (100 images), DSA,
  batch 256. Baseline: the reference ``evaluate_synset`` training loop (``epochs + 1`` epochs); ours:
  :func:`~distillbench.harness.evaluate.train_on_set` for the same number of epochs.
* ``eval_compiled``: as ``eval``, ours compiled (``torch.compile``; what a thousand-epoch CPU protocol
  gets by itself); the compile is the untimed first call, reported as ``first_call_s``.
* ``eval_batched``: K eval models of one trial. Baseline: our sequential engine, K models one after
  another; ours: the batched engine (:mod:`~distillbench.harness.batched`), all K in one vmapped step.
* ``dm``: DM iterations (ConvNet-3, ``batch_real`` 256 per class, 10 classes, DSA, IPC 10). Baseline:
  per-class forward passes; ours: ``dm``'s ``distill`` (its setup time included).
* ``dm_bias``: DM at the bias settings (issue 20): ``colored_mnist[conflict=0.05]`` (28x28x3), ConvNet-3
  of width 32 or 128, ``batch_real`` 64 or 256 per class, IPC 10 or 50, DSA, sample weights (the
  ``kde`` path; random weights, the arithmetic is the same). Baseline: ``dm``'s loop before issue 20,
  frozen in ``reference_loops.dm_eager_before_issue20``; ours: ``dm``'s ``distill`` compiled
  (``DISTILLBENCH_COMPILE=on``, what a run of 1,000 iterations or more gets; the compile is the untimed
  first call, ``first_call_s``). Also reported: the largest difference between the two sets, and the
  FLOP-bound limit (the convolution FLOPs of an iteration and this machine's time for those
  convolutions alone, measured layer by layer at the iteration's shapes).
* ``dc``: one DC iteration (fresh network, ``outer_loop`` image updates with ``inner_loop`` network
  epochs between them, IPC 10, batch_real 256). Baseline: per-class matching; ours: ``dc``'s ``distill``.
* ``eval_agreement``: not a timing. K models trained on one IPC-10 set by the sequential and by the
  batched engine (``DISTILLBENCH_EVAL_ENGINE``), their test accuracies and a Welch t-test: the batched
  engine must give statistically the same accuracy as the straightforward path on this device.
* ``trial_overhead``: a trivial trial (``random``, IPC 1, on digits, evaluated by a one-model,
  zero-epoch protocol) through ``run_trial`` (spec resolution, cached dataset, provenance, row and
  set writing) vs the same work called directly; and, with ``--ray``, per trial through the Ray scheduler.

Data: MNIST from ``--data-root`` (default ``../shared/data/mnist-10k``) if it is there, else random
tensors of MNIST's shape; the JSON says which.

    python benchmarks/run.py --quick --json
    python benchmarks/run.py --ops eval,dm --epochs 100 --repeats 5
    python benchmarks/run.py --ops dm_bias --threads 1 --dm-iterations 3 --repeats 3
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from reference_loops import (  # noqa: E402
    dm_eager_before_issue20,
    reference_dc_iteration,
    reference_dm_iteration,
    reference_train_eval_model,
)

from distillbench.harness import microbatch  # noqa: E402
from distillbench.harness.batched import ENGINE_ENV, train_models_batched  # noqa: E402
from distillbench.harness.compiled import COMPILE_ENV  # noqa: E402
from distillbench.harness.evaluate import evaluate, train_on_set  # noqa: E402
from distillbench.harness.plugins import DATASETS, METHODS, PROTOCOLS  # noqa: E402
from distillbench.harness.protocols import CONVNET_V1  # noqa: E402
from distillbench.harness.seeding import torch_generator  # noqa: E402
from distillbench.harness.types import Context, DataBundle, DatasetInfo, DistilledSet, Split  # noqa: E402

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist-10k"
OPS = ("eval", "eval_compiled", "eval_batched", "eval_agreement", "dm", "dm_bias", "dc", "trial_overhead")
# dm_bias cells, width x batch_real x ipc: the CPU runs of docs/bias.md (width 32) and the paper's width 128.
DM_BIAS_SETTINGS = "32x64x10,32x64x50,32x256x10,32x256x50,128x64x10,128x64x50,128x256x10,128x256x50"
TRIVIAL = "bench-trivial"

# The trivial trial's protocol: one tiny model, zero epochs (registered on import, so Ray workers that
# import this file as a plugin know it too).
if TRIVIAL not in PROTOCOLS:
    PROTOCOLS.add(
        TRIVIAL,
        dataclasses.replace(CONVNET_V1, name=TRIVIAL, networks=("convnet[width=8]",), epochs=0, n_models=1, quick=True),
        origin="benchmarks/run.py",
    )


def machine(device: torch.device) -> str:
    """One line describing where the numbers come from."""
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)}, torch {torch.__version__}"
    return (
        f"{os.cpu_count()}-core CPU ({platform.processor() or platform.machine()}), no GPU, torch {torch.__version__}"
    )


def _load_or_shaped(
    root: Path, spec: str, label: str, channels: int, train_per_class: int, test_per_class: int
) -> tuple[DataBundle, str]:
    """Dataset ``spec`` from ``root`` if MNIST is there, else random tensors of its shape (10 classes, 28x28)."""
    if (root / "MNIST" / "raw").is_dir():
        configured = DATASETS.resolve(spec)
        dataset = configured.obj(configured.params)
        dataset.prepare(root, download=False)
        return dataset.load(root), f"{spec} from {root}"
    g = torch.Generator().manual_seed(0)
    info = DatasetInfo(f"{label}-shaped", "image", 10, (channels, 28, 28), tuple(map(str, range(10))))
    info = dataclasses.replace(info, dsa_strategy="color_crop_cutout_scale_rotate")

    def split(per_class: int) -> Split:
        y = torch.arange(10).repeat_interleave(per_class)
        return Split(torch.randn(len(y), channels, 28, 28, generator=g), y)

    empty = split(0)
    return DataBundle(info=info, train=split(train_per_class), val=empty, test=split(test_per_class)), (
        f"random tensors of {spec}'s shape"
    )


def load_mnist(root: Path) -> tuple[DataBundle, str]:
    """MNIST from ``root`` if present, else random tensors of MNIST's shape (8000 train, 1000 test)."""
    return _load_or_shaped(root, "mnist", "mnist", 1, 800, 100)


def ipc_set(data: DataBundle, ipc: int) -> DistilledSet:
    """``ipc`` real images per class (what an IPC-10 distilled set looks like to the trainer)."""
    g = torch.Generator().manual_seed(1)
    chosen = torch.cat([m[torch.randperm(len(m), generator=g)[:ipc]] for m in data.class_indices()])
    return DistilledSet(data.train.x[chosen].clone(), data.train.y[chosen].clone())


def _sync() -> None:
    # CUDA work is asynchronous: a host clock read before the queue drains would time the launches only.
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def side_by_side(
    baseline: Callable[[], object], ours: Callable[[], object], repeats: int, warmup: bool = False
) -> dict[str, float]:
    """Best-of-``repeats`` seconds of each, run alternately (baseline first), and their ratio.

    ``warmup`` runs each side once untimed first (on CUDA: kernel selection, cuDNN autotuning, the
    allocator's first growth), as every CUDA measurement here does.
    """
    if warmup:
        baseline()
        ours()
        _sync()
    base_times, our_times = [], []
    for _ in range(repeats):
        for fn, times in ((baseline, base_times), (ours, our_times)):
            _sync()
            start = time.perf_counter()
            fn()
            _sync()
            times.append(time.perf_counter() - start)
    best_base, best_ours = min(base_times), min(our_times)
    return {
        "baseline_s": round(best_base, 4),
        "ours_s": round(best_ours, 4),
        "ratio": round(best_base / best_ours, 3),
        "baseline_all_s": [round(t, 4) for t in base_times],
        "ours_all_s": [round(t, 4) for t in our_times],
    }


@contextlib.contextmanager
def environment(name: str, value: str) -> Iterator[None]:
    """``os.environ[name] = value`` inside the block, restored after."""
    before = os.environ.get(name)
    os.environ[name] = value
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = before


def bench_eval(data: DataBundle, device: torch.device, epochs: int, repeats: int) -> dict[str, object]:
    """One eval model: the reference loop (``epochs + 1`` epochs) vs ``train_on_set`` (same count), eager."""
    dset = ipc_set(data, 10)
    protocol = dataclasses.replace(CONVNET_V1, epochs=epochs + 1)
    with environment(COMPILE_ENV, "off"):  # eager at any --epochs; eval_compiled measures compiling
        out = side_by_side(
            lambda: reference_train_eval_model(
                dset.x, dset.y, data.info, epochs=epochs, generator=torch_generator(0), device=device
            ),
            lambda: train_on_set(protocol, dset, data.info, generator=torch_generator(0), device=device),
            repeats,
            warmup=device.type == "cuda",
        )
    out["setting"] = (
        f"one eval model: convnet (ConvNet-3 width 128, instance norm) on {data.info.name} IPC 10 (100 images), "
        f"DSA {data.info.dsa_strategy}, SGD batch 256, {epochs + 1} epochs each (the full protocol runs 1001)"
    )
    return out


def bench_eval_compiled(data: DataBundle, device: torch.device, epochs: int, repeats: int) -> dict[str, object]:
    """As ``eval``, with our model compiled (``DISTILLBENCH_COMPILE=on``); the compile is timed apart.

    A protocol of a thousand epochs compiles by itself (``harness/compiled.py``); the benchmark's few
    epochs would not, so the setting is forced. The first call of ours compiles (or loads Inductor's
    cache) and is reported as ``first_call_s``; the timed runs reuse the compiled code, as every
    later model of a process does.
    """
    dset = ipc_set(data, 10)
    protocol = dataclasses.replace(CONVNET_V1, epochs=epochs + 1)

    def ours() -> None:
        train_on_set(protocol, dset, data.info, generator=torch_generator(0), device=device)

    with environment(COMPILE_ENV, "on"):
        start = time.perf_counter()
        ours()
        first_call = time.perf_counter() - start
        out = side_by_side(
            lambda: reference_train_eval_model(
                dset.x, dset.y, data.info, epochs=epochs, generator=torch_generator(0), device=device
            ),
            ours,
            repeats,
        )
    out["first_call_s"] = round(first_call, 2)
    saved_per_epoch = (out["baseline_s"] - out["ours_s"]) / (epochs + 1)
    if saved_per_epoch > 0:
        out["break_even_epochs"] = round((first_call - out["ours_s"]) / saved_per_epoch)
    out["setting"] = (
        f"as eval ({epochs + 1} epochs), ours compiled with torch.compile (Inductor, CPU); first_call_s is the "
        "untimed first run that compiles; break_even_epochs is where compiling pays for itself"
    )
    return out


def bench_eval_batched(data: DataBundle, device: torch.device, epochs: int, k: int, repeats: int) -> dict[str, object]:
    """K eval models: our sequential engine vs the batched engine."""
    dset = ipc_set(data, 10)
    protocol = dataclasses.replace(CONVNET_V1, epochs=epochs, n_models=k)

    def sequential() -> None:
        for s in range(k):
            train_on_set(protocol, dset, data.info, generator=torch_generator(s), device=device)

    def together() -> None:
        train_models_batched(
            protocol, dset, data.info, generators=[torch_generator(s) for s in range(k)], device=device
        )

    out = side_by_side(sequential, together, repeats, warmup=device.type == "cuda")
    out["setting"] = f"K={k} eval models, {epochs} epochs each, otherwise as eval; baseline = our sequential engine"
    return out


def bench_eval_agreement(data: DataBundle, device: torch.device, epochs: int, k: int) -> dict[str, object]:
    """Test accuracy of K models from each engine on one set, and whether they differ (Welch t-test)."""
    from scipy.stats import ttest_ind

    dset = ipc_set(data, 10)
    protocol = dataclasses.replace(CONVNET_V1, epochs=epochs, n_models=k)
    accs: dict[str, list[float]] = {}
    for engine in ("sequential", "batched"):
        with environment(ENGINE_ENV, engine):
            # Seed 0 for one engine and 1 for the other: independent models, so the t-test asks whether
            # the two engines draw from one accuracy distribution (same seeds would give equal models).
            seed = 0 if engine == "sequential" else 1
            accs[engine] = list(evaluate(protocol, dset, data, seed=seed, device=device).acc_per_model)
    test = ttest_ind(accs["sequential"], accs["batched"], equal_var=False)
    mean = {e: sum(a) / len(a) for e, a in accs.items()}
    return {
        "sequential_acc": [round(a, 4) for a in accs["sequential"]],
        "batched_acc": [round(a, 4) for a in accs["batched"]],
        "sequential_mean": round(mean["sequential"], 4),
        "batched_mean": round(mean["batched"], 4),
        "welch_p": round(float(test.pvalue), 4),
        "same": bool(test.pvalue > 0.01),
        "setting": f"K={k} models per engine, {epochs} epochs, IPC 10 real images of {data.info.name}; not a timing",
    }


def _real_by_class(data: DataBundle) -> list[torch.Tensor]:
    return [data.train.x[m] for m in data.class_indices()]


def bench_dm(data: DataBundle, device: torch.device, iterations: int, repeats: int) -> dict[str, object]:
    """DM iterations: reference per-class loop vs ``dm``'s ``distill`` (setup included)."""
    ipc, batch_real = 10, 256
    real = [x.to(device) for x in _real_by_class(data)]
    method = METHODS.resolve(f"dm[iterations={iterations},batch_real={batch_real}]")

    def baseline() -> None:
        g = torch_generator(0)
        syn = torch.cat([x[:ipc] for x in real]).clone().requires_grad_(True)
        opt = torch.optim.SGD([syn], lr=1.0, momentum=0.5)
        for it in range(iterations):
            reference_dm_iteration(
                syn,
                opt,
                real,
                data.info,
                ipc=ipc,
                batch_real=batch_real,
                generator=g,
                net_generator=torch_generator(it),
            )

    def ours() -> None:
        ctx = Context(device=device, generator=torch_generator(0), seed=0)
        method.obj(method.params).distill(data, ipc, ctx)

    out = side_by_side(baseline, ours, repeats, warmup=device.type == "cuda")
    for key in ("baseline_s", "ours_s"):
        out[f"{key[:-2]}_per_iteration_s"] = round(out[key] / iterations, 4)
    out["setting"] = (
        f"{iterations} DM iterations: ConvNet-3 width 128, batch_real {batch_real} per class, 10 classes, IPC {ipc}, "
        f"DSA {data.info.dsa_strategy}; times are for all {iterations}"
    )
    return out


def load_colored(root: Path) -> tuple[DataBundle, str]:
    """``colored_mnist[conflict=0.05]`` from ``root`` if MNIST is there, else random tensors of its shape."""
    return _load_or_shaped(root, "colored_mnist[conflict=0.05]", "colored-mnist", 3, 720, 0)


def _best_of(fn: Callable[[], object], repeats: int) -> float:
    """Best time of ``repeats`` calls of ``fn``, after one untimed call."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def conv_costs(net_spec: str, info: DatasetInfo, repeats: int = 10) -> dict[str, float]:
    """Convolution FLOPs per sample of ``net_spec``'s embedding, and this machine's seconds per sample for them.

    Every conv layer is timed on its own at DM's real-side micro-batch shape (``microbatch.chunk_size``
    for 2,560 samples): its forward pass in NCHW and in NHWC (the faster one counts), and its backward
    pass to the input only (``output_mask``: the synthetic images need it, the frozen weights need no
    gradient). Best of ``repeats`` calls each.
    """
    from distillbench.harness.networks import build_network

    net = build_network(net_spec, info, torch_generator(0)).requires_grad_(False)
    x = torch.randn(2560, *info.shape)
    chunk = microbatch.chunk_size(net, x) or len(x)
    inputs: list[tuple[torch.nn.Conv2d, tuple[int, ...]]] = []
    convs = [m for m in net.modules() if isinstance(m, torch.nn.Conv2d)]
    hooks = [m.register_forward_hook(lambda mod, inp, _out: inputs.append((mod, inp[0].shape[1:]))) for m in convs]
    with torch.no_grad():
        net.embed(x[:1])
    for h in hooks:
        h.remove()

    flops = fwd_s = bwd_s = 0.0
    for conv, shape in inputs:
        inp = torch.randn(chunk, *shape)
        with torch.no_grad():
            out = conv(inp)
        kh, kw = conv.kernel_size
        flops += 2.0 * out[0].numel() * (conv.in_channels // conv.groups) * kh * kw
        layer_fwd, layer_bwd = [], []
        for fmt in (torch.contiguous_format, torch.channels_last):
            i, w = inp.contiguous(memory_format=fmt), conv.weight.contiguous(memory_format=fmt)
            g = torch.randn_like(out).contiguous(memory_format=fmt)
            forward = functools.partial(
                torch.nn.functional.conv2d, i, w, conv.bias, conv.stride, conv.padding, conv.dilation, conv.groups
            )
            backward = functools.partial(
                torch.ops.aten.convolution_backward,
                g,
                i,
                w,
                None,
                conv.stride,
                conv.padding,
                conv.dilation,
                False,
                [0, 0],
                conv.groups,
                [True, False, False],
            )
            with torch.no_grad():
                layer_fwd.append(_best_of(forward, repeats))
                layer_bwd.append(_best_of(backward, repeats))
        fwd_s += min(layer_fwd) / chunk
        bwd_s += min(layer_bwd) / chunk
    return {"flops": flops, "fwd_s": fwd_s, "bwd_s": bwd_s}


def conv_floor(costs: dict[str, float], n_real: int, n_syn: int) -> dict[str, float]:
    """One DM iteration's convolution GFLOP and its FLOP-bound limit: the time of its convolutions alone.

    The real side needs the forward pass only; the synthetic side the forward pass and the backward
    pass to its images, which costs the forward pass's FLOPs again. ``limit_s`` is what an iteration
    would take at :func:`conv_costs`' measured rates if everything but the convolutions were free.
    """
    flops = costs["flops"] * (n_real + 2 * n_syn)
    limit = costs["fwd_s"] * (n_real + n_syn) + costs["bwd_s"] * n_syn
    return {"gflop": round(flops / 1e9, 3), "limit_s": round(limit, 4), "gflops_per_s": round(flops / limit / 1e9, 1)}


def _dm_bias_cell(
    data: DataBundle,
    device: torch.device,
    iterations: int,
    repeats: int,
    width: int,
    batch_real: int,
    ipc: int,
    weights: torch.Tensor,
) -> dict[str, Any]:
    """One dm_bias cell: the frozen pre-issue-20 loop vs ``dm`` compiled, side by side."""
    net = f"convnet[width={width}]"
    method = METHODS.resolve(f"dm[iterations={iterations},batch_real={batch_real},net={net}]")
    sets: dict[str, Any] = {}

    def baseline() -> None:
        sets["baseline"] = dm_eager_before_issue20(
            data,
            ipc,
            iterations=iterations,
            batch_real=batch_real,
            network=net,
            seed=0,
            generator=torch_generator(0),
            weights=weights,
        )

    def ours() -> None:
        ctx = Context(device=device, generator=torch_generator(0), seed=0, weights=weights)
        out = method.obj(method.params).distill(data, ipc, ctx)
        sets["ours"], sets["meta"] = out.x, out.meta

    with environment(COMPILE_ENV, "on"):
        start = time.perf_counter()
        ours()
        first_call = time.perf_counter() - start
        out: dict[str, Any] = side_by_side(baseline, ours, repeats)
    if not sets["meta"].get("compiled"):
        out["warning"] = "dm did not compile (see the log): ours ran eagerly"
    out["first_call_s"] = round(first_call, 2)
    out["compile_s"] = sets["meta"].get("compile_seconds")
    for key in ("baseline_s", "ours_s"):
        out[f"{key[:-2]}_per_iteration_s"] = round(out[key] / iterations, 4)
    out["max_abs_diff"] = float(f"{(sets['ours'] - sets['baseline']).abs().max().item():.3g}")
    return out


def bench_dm_bias(
    data: DataBundle, device: torch.device, iterations: int, repeats: int, settings: str
) -> dict[str, object]:
    """DM at the bias settings: the frozen pre-issue-20 loop vs ``dm`` compiled, per (width, batch_real, ipc)."""
    weights = torch.rand(len(data.train), generator=torch_generator(1))
    cells: dict[str, dict[str, Any]] = {}
    costs: dict[int, dict[str, float]] = {}  # per width: measured once, so every cell's limit uses the same rates
    for cell in settings.split(","):
        width, batch_real, ipc = (int(v) for v in cell.split("x"))
        out = _dm_bias_cell(data, device, iterations, repeats, width, batch_real, ipc, weights)
        if width not in costs:
            costs[width] = conv_costs(f"convnet[width={width}]", data.info)
        num_classes = data.info.num_classes
        out["conv_floor"] = conv_floor(costs[width], num_classes * batch_real, num_classes * ipc)
        cells[cell] = out
        print(
            f"  dm_bias width {width:3d} batch_real {batch_real:3d} ipc {ipc:2d}: "
            f"{out['baseline_per_iteration_s']:.3f} -> {out['ours_per_iteration_s']:.3f} s/it "
            f"(x{out['ratio']:.2f}), FLOP limit {out['conv_floor']['limit_s']:.3f} s/it, "
            f"max |diff| {out['max_abs_diff']:.2g}",
            file=sys.stderr,
            flush=True,
        )
    return {
        "cells": cells,
        "baseline_s": round(sum(c["baseline_s"] for c in cells.values()), 4),
        "ours_s": round(sum(c["ours_s"] for c in cells.values()), 4),
        "ratio": min(c["ratio"] for c in cells.values()),
        "setting": (
            f"{iterations} DM iterations per cell (width x batch_real x ipc) on {data.info.name}, DSA "
            f"{data.info.dsa_strategy}, random sample weights; baseline = dm before issue 20 (frozen copy), ours = dm "
            "compiled, setup included; baseline_s/ours_s sum the cells, ratio is the smallest cell ratio"
        ),
    }


def bench_dc(data: DataBundle, device: torch.device, outer: int, inner: int, repeats: int) -> dict[str, object]:
    """One DC iteration: reference per-class loop vs ``dc``'s ``distill`` with one iteration."""
    ipc, batch_real = 10, 256
    real = [x.to(device) for x in _real_by_class(data)]
    method = METHODS.resolve(f"dc[iterations=1,batch_real={batch_real},outer_loop={outer},inner_loop={inner}]")

    def baseline() -> None:
        g = torch_generator(0)
        syn = torch.randn(10 * ipc, *data.info.shape, generator=g).to(device).requires_grad_(True)
        opt = torch.optim.SGD([syn], lr=0.1, momentum=0.5)
        reference_dc_iteration(
            syn,
            opt,
            real,
            data.info,
            ipc=ipc,
            batch_real=batch_real,
            outer_loop=outer,
            inner_loop=inner,
            generator=g,
            net_generator=torch_generator(1),
        )

    def ours() -> None:
        ctx = Context(device=device, generator=torch_generator(0), seed=0)
        method.obj(method.params).distill(data, ipc, ctx)

    out = side_by_side(baseline, ours, repeats, warmup=device.type == "cuda")
    out["setting"] = (
        f"one DC iteration: ConvNet-3 width 128, IPC {ipc}, batch_real {batch_real} per class, outer_loop {outer}, "
        f"inner_loop {inner} (paper IPC 10: 10 x 50), no augmentation"
    )
    return out


def bench_trial_overhead(device: torch.device, trials: int, use_ray: bool) -> dict[str, object]:
    """Per-trial harness overhead on a trivial trial, ``run_trial`` (and Ray) vs the work called directly."""
    from distillbench.harness.runner import load_data, run_trial
    from distillbench.harness.spec import TrialSpec

    protocol = PROTOCOLS.get(TRIVIAL)
    specs = [
        TrialSpec(dataset="digits", method="random", ipc=1, seed=s, protocol=TRIVIAL, grid="bench")
        for s in range(trials)
    ]
    tmp = Path(tempfile.mkdtemp(prefix="distillbench-bench-"))
    try:
        data = load_data(specs[0].resolve(), tmp)  # warm the per-process dataset cache, as a reused worker has
        method = METHODS.resolve("random")

        def direct() -> None:
            for s in range(trials):
                ctx = Context(device=device, generator=torch_generator(s), seed=s)
                dset = method.obj(method.params).distill(data, 1, ctx)
                evaluate(protocol, dset, data, seed=s, device=device)

        def harness() -> None:
            results = Path(tempfile.mkdtemp(dir=tmp))
            for spec in specs:
                rows = run_trial(spec, results=results, data_root=tmp, device=device)
                assert rows[0]["status"] == "ok", rows[0]["error"]

        # Warmed up once (first network build, provenance's git call): a reused worker has paid that already.
        out = side_by_side(direct, harness, 5, warmup=True)
        per = {
            "direct_per_trial_s": round(out["baseline_s"] / trials, 5),
            "run_trial_per_trial_s": round(out["ours_s"] / trials, 5),
            "overhead_per_trial_s": round((out["ours_s"] - out["baseline_s"]) / trials, 5),
        }
        out |= per
        out["ratio"] = round(out["ours_s"] / out["baseline_s"], 3)
        out["setting"] = (
            f"{trials} trivial trials (random, IPC 1, digits, one convnet[width=8] model, 0 epochs); "
            "baseline = distill + evaluate called directly, ours = run_trial (writes rows and sets); "
            "ratio = ours / baseline (the overhead factor, lower is better)"
        )
        if use_ray:
            out["ray"] = _ray_overhead(specs, tmp, out["baseline_s"] / trials)
        return out
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _ray_overhead(specs: list, tmp: Path, direct_per_trial: float) -> dict[str, object]:
    """Seconds per trivial trial through ``run_grid`` (Ray started once, outside the timing)."""
    import io

    import ray

    from distillbench.harness.scheduler import run_grid

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    ray.init(num_cpus=os.cpu_count() or 1, include_dashboard=False, log_to_driver=False)
    try:
        resolved = [s.resolve() for s in specs]
        # One wave to start the workers (actor start-up, imports), then the timed one with fresh ids.
        plugin = [str(Path(__file__).resolve())]
        quiet = io.StringIO()
        run_grid(resolved[:2], results=tmp / "ray-warm", data_root=tmp, grid_name="bench", stream=quiet, plugins=plugin)
        start = time.perf_counter()
        outcome = run_grid(
            resolved, results=tmp / "ray", data_root=tmp, grid_name="bench", stream=quiet, plugins=plugin
        )
        seconds = time.perf_counter() - start
    finally:
        ray.shutdown()
    return {
        "trials": len(resolved),
        "ok": outcome.ok,
        "per_trial_s": round(seconds / len(resolved), 4),
        "overhead_per_trial_s": round(seconds / len(resolved) - direct_per_trial, 4),
        "setting": "run_grid on a started local Ray (reused actors), workers warmed by an earlier wave",
    }


def main(argv: list[str] | None = None) -> int:
    """Parse the arguments, run the chosen operations, print a table or one JSON object."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="short settings that finish in a few minutes")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    default_ops = "eval,eval_compiled,eval_batched,dm,dc,trial_overhead"
    parser.add_argument("--ops", default=default_ops, help=f"comma list of {OPS}")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")
    parser.add_argument("--data-root", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--repeats", type=int, default=None, help="measurements of each side (best is reported)")
    parser.add_argument("--epochs", type=int, default=None, help="eval epochs (the reference runs one more)")
    parser.add_argument("--dm-iterations", type=int, default=None)
    parser.add_argument("--dc-outer", type=int, default=2)
    parser.add_argument("--dc-inner", type=int, default=None)
    parser.add_argument("--k", type=int, default=None, help="models for eval_batched (quick 2, else 4)")
    parser.add_argument("--trials", type=int, default=None, help="trivial trials (quick 10, else 20)")
    parser.add_argument("--ray", action="store_true", help="also time trivial trials through the Ray scheduler")
    parser.add_argument(
        "--dm-bias-settings",
        default=None,
        help=f"dm_bias cells, width x batch_real x ipc (default {DM_BIAS_SETTINGS}; quick: the two width-32, "
        "batch-64 cells)",
    )
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's own)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    ops = [op.strip() for op in args.ops.split(",") if op.strip()]
    unknown = [op for op in ops if op not in OPS]
    if unknown:
        parser.error(f"unknown ops {unknown}; valid: {', '.join(OPS)}")
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    repeats = args.repeats or (2 if args.quick else 5)
    epochs = args.epochs or (5 if args.quick else 50)
    dm_iterations = args.dm_iterations or (2 if args.quick else 10)
    dc_inner = args.dc_inner or (2 if args.quick else 50)
    # On a GPU the batched engine's point is K = the protocol's models (convnet-v1: 20) side by side.
    k = args.k or (2 if args.quick else 4 if device.type == "cpu" else CONVNET_V1.n_models)
    trials = args.trials or (10 if args.quick else 20)

    needs_data = {"eval", "eval_compiled", "eval_batched", "eval_agreement", "dm", "dc"} & set(ops)
    data, source = load_mnist(args.data_root) if needs_data else (None, "")
    dm_bias_settings = args.dm_bias_settings or ("32x64x10,32x64x50" if args.quick else DM_BIAS_SETTINGS)
    report: dict[str, object] = {}
    for op in ops:
        if op == "eval":
            report[op] = bench_eval(data, device, epochs, repeats)
        elif op == "eval_compiled":
            report[op] = bench_eval_compiled(data, device, epochs, repeats)
        elif op == "eval_batched":
            report[op] = bench_eval_batched(data, device, epochs, k, repeats)
        elif op == "eval_agreement":
            report[op] = bench_eval_agreement(data, device, epochs, k)
        elif op == "dm":
            report[op] = bench_dm(data, device, dm_iterations, repeats)
        elif op == "dm_bias":
            colored, colored_source = load_colored(args.data_root)
            report[op] = bench_dm_bias(colored, device, dm_iterations, repeats, dm_bias_settings)
            report[op]["data"] = colored_source
        elif op == "dc":
            report[op] = bench_dc(data, device, args.dc_outer, dc_inner, repeats)
        elif op == "trial_overhead":
            report[op] = bench_trial_overhead(device, trials, args.ray)
        r = report[op]
        if op == "eval_agreement":
            line = (
                f"{op:15s} sequential {r['sequential_mean']:.4f}  batched {r['batched_mean']:.4f}  "
                f"Welch p {r['welch_p']:.3f}"
            )
            print(line, file=sys.stderr if args.json else sys.stdout, flush=True)
            continue
        line = f"{op:15s} baseline {r['baseline_s']:9.3f} s  ours {r['ours_s']:9.3f} s  ratio {r['ratio']:.2f}"
        print(line, file=sys.stderr if args.json else sys.stdout, flush=True)
    report["data"] = source
    report["timing"] = (
        f"baseline and ours alternate in one process; best of {repeats} runs each "
        "(trial_overhead: best of 5, after one warm-up)"
    )
    report["machine"] = machine(device)
    report["threads"] = torch.get_num_threads()
    if args.json:
        print(json.dumps(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
