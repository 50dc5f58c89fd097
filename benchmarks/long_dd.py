"""Full-length ``dd`` / soft-label ``dd`` runs with an accuracy curve, resumable across sessions (issue 20).

Runs one setting of ``benchmarks/fidelity_dd.py`` (0: DD 10 images fixed init; 1: soft-label DD 10
images; 2: soft-label DD 5 images) at the papers' full run length, converted to outer iterations on
the dataset's training split as ``fidelity_dd.spec_for`` does, and evaluates the set with
``dd-replay-v1`` every ``--every`` outer iterations (a milestone is rounded up to whole epochs, because
``dd`` checkpoints at epoch ends).

Resuming: the loop state is checkpointed in ``OUT/<setting>-seed<S>.ckpt`` at every epoch end and the
curve is appended to ``OUT/<setting>-seed<S>.jsonl`` point by point, so re-running the same command
after an interruption continues from the last epoch. Going from one milestone to the next re-enters
``dd`` with a larger ``epochs``: nothing in its loop depends on ``epochs`` except where it stops
(the Adam-rate decay has its own interval), so the curve's points are those of one uninterrupted run.

Usage (the issue-20 runs; 1.2-1.9 h each on one thread)::

    nice -n 19 python benchmarks/long_dd.py --only 1 --out /tmp/long/dd > /tmp/long/dd/sldd10.log 2>&1 &
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fidelity_dd import PAPER_ITERATIONS_PER_EPOCH, SETTINGS, load, spec_for  # noqa: E402

from distillbench.harness.checkpoint import Checkpointer  # noqa: E402
from distillbench.harness.evaluate import evaluate  # noqa: E402
from distillbench.harness.plugins import METHODS, PROTOCOLS  # noqa: E402
from distillbench.harness.seeding import derive_seed, torch_generator  # noqa: E402
from distillbench.harness.types import Context  # noqa: E402

SLUGS = ("dd-10-fixed", "sldd-10-fixed", "sldd-5-fixed")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", type=int, required=True, choices=range(len(SETTINGS)), help="setting index (0-2)")
    parser.add_argument("--data-root", type=Path, default=Path("../shared/data/mnist-10k"))
    parser.add_argument("--dataset", default="mnist")
    parser.add_argument("--net", default="lenet")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--every", type=int, default=2000, help="evaluate every this many outer iterations")
    parser.add_argument("--epochs", type=int, default=None, help="stop early at this many epochs (default: paper's)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)

    setting = SETTINGS[args.only]
    slug = f"{SLUGS[args.only]}-seed{args.seed}"
    data = load(args.dataset, args.data_root.expanduser())
    per_epoch = max(1, len(data.train) // min(1024, len(data.train)))
    _, full_epochs, decay = spec_for(setting, args.net, args.epochs, per_epoch)
    step = max(1, math.ceil(args.every / per_epoch))
    milestones = [*range(step, full_epochs, step), full_epochs]
    curve_path = args.out / f"{slug}.jsonl"
    lines = curve_path.read_text().splitlines() if curve_path.exists() else []
    done = {json.loads(line)["epochs"] for line in lines}
    checkpoint = Checkpointer(args.out / f"{slug}.ckpt", every=1)
    protocol = PROTOCOLS.get("dd-replay-v1")
    print(
        f"{setting.label} {setting.setting}, seed {args.seed}: {full_epochs} epochs x {per_epoch} iterations "
        f"= {full_epochs * per_epoch} outer iterations (paper {setting.paper_epochs * PAPER_ITERATIONS_PER_EPOCH}), "
        f"decay every {decay} epochs; points at {milestones}; {len(done)} already done",
        flush=True,
    )
    for epochs in milestones:
        if epochs in done:
            continue
        spec, _, _ = spec_for(setting, args.net, epochs, per_epoch)
        configured = METHODS.resolve(spec)
        method = configured.obj(configured.params)
        # The seed of the full-length spec, so every milestone continues the same run.
        full_spec, _, _ = spec_for(setting, args.net, args.epochs, per_epoch)
        ctx_seed = derive_seed(args.seed, "fidelity_dd", full_spec)
        ctx = Context(torch.device("cpu"), torch_generator(ctx_seed), ctx_seed, checkpoint=checkpoint)
        t0 = time.perf_counter()
        dset = method.distill(data, 1, ctx)
        seconds = time.perf_counter() - t0
        result = evaluate(protocol, dset, data, seed=args.seed, device="cpu")
        point = {
            "setting": f"{setting.label} {setting.setting}",
            "seed": args.seed,
            "epochs": epochs,
            "iterations": epochs * per_epoch,
            "acc": result.acc_mean,
            "distill_seconds_this_leg": round(seconds, 1),
            "reported": setting.reported,
            "spec": full_spec,
            "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
        }
        with curve_path.open("a") as fh:
            fh.write(json.dumps(point) + "\n")
        print(
            f"  {epochs * per_epoch:>6} iterations: {100 * result.acc_mean:.2f}% ({seconds:.0f} s this leg)", flush=True
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
