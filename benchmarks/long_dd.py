"""Full-length ``dd`` / soft-label ``dd`` runs with an accuracy curve, resumable across sessions (issue 20).

MNIST mode (``--only``): runs one setting of ``benchmarks/fidelity_dd.py`` (0: DD 10 images fixed
init; 1: soft-label DD 10 images; 2: soft-label DD 5 images) at the papers' full run length, converted
to outer iterations on the dataset's training split as ``fidelity_dd.spec_for`` does, and evaluates
the set with ``dd-replay-v1`` every ``--every`` outer iterations (default 2000).

Text mode (``--text``): runs text DD (Sucholutsky & Schonlau) with the settings of
``benchmarks/fidelity_text.py`` (``PAPER_DD`` plus ``net=textcnn[dropout=0.0],init=fixed``, its
evidence run; ``--dd`` overrides any of them) on one text dataset, hard or soft labels (``--labels``),
``--ipc`` sentences per class, for ``--epochs`` epochs over the train split (default the paper's 100:
600 outer iterations on SST-2's 6,920 train sentences, 800 on MR's 8,636, real batch 1024, as
``fidelity_text.dd_options`` counts them), and evaluates the set with ``text-v1``
every ``--every`` outer iterations (default 60). Once per (dataset, ipc, seed) it also writes the
``random`` baseline at that ipc under ``text-v1`` (``OUT/text-<dataset>-random-<ipc>-seed<S>.json``,
through ``run_trial`` as fidelity_text does); ``--baselines`` adds the full train split
(``OUT/text-<dataset>-full.json``, ``--full-epochs`` epochs, ``--full-models`` models).

In both modes a milestone is rounded up to whole epochs, because ``dd`` checkpoints at epoch ends.

Resuming: the loop state is checkpointed in ``OUT/<slug>.ckpt`` at every epoch end and the curve is
appended to ``OUT/<slug>.jsonl`` point by point (slugs: ``dd-10-fixed-seed0``, ...,
``text-sst2-soft-10-seed0``), so re-running the same command after an interruption continues from the
last epoch. Going from one milestone to the next re-enters ``dd`` with a larger ``epochs``: nothing in
its loop depends on ``epochs`` except where it stops (the Adam-rate decay has its own interval), so the
curve's points are those of one uninterrupted run (the distillation seed derives from the full-length
spec; the dd generator is checkpointed, the global torch RNG is not, so this holds for networks that draw
nothing from it in the inner steps: LeNet and ``textcnn[dropout=0.0]`` do not, a dropout TextCNN does).

Usage (the issue-20 runs; 1.2-1.9 h each on one thread)::

    nice -n 19 python benchmarks/long_dd.py --only 1 --out /tmp/long/dd > /tmp/long/dd/sldd10.log 2>&1 &

Text usage (the eight text runs; ``--data-root`` defaults to ``../shared/data``; measured at ipc 10, soft
labels, one thread on the busy 2-core machine: about 0.5 s per outer iteration on SST-2 and on MR, so
5 and 7 minutes, 0.3-0.4 s per text-v1 evaluation, 30-40 s for the random baseline)::

    python benchmarks/long_dd.py --text sst2 --labels hard --ipc 1 --out /tmp/long/text
    python benchmarks/long_dd.py --text sst2 --labels hard --ipc 10 --out /tmp/long/text
    python benchmarks/long_dd.py --text sst2 --labels soft --ipc 1 --out /tmp/long/text
    python benchmarks/long_dd.py --text sst2 --labels soft --ipc 10 --out /tmp/long/text
    python benchmarks/long_dd.py --text mr --labels hard --ipc 1 --out /tmp/long/text
    python benchmarks/long_dd.py --text mr --labels hard --ipc 10 --out /tmp/long/text
    python benchmarks/long_dd.py --text mr --labels soft --ipc 1 --out /tmp/long/text
    python benchmarks/long_dd.py --text mr --labels soft --ipc 10 --out /tmp/long/text

(add ``--baselines`` to one run per dataset for the full-split reference). A smoke run on the fixtures::

    python benchmarks/long_dd.py --text sst2 --labels soft --ipc 1 --data-root tests/fixtures_text \\
        --dataset-options "vocab_size=50,max_len=6,embeddings=tests/fixtures_text/glove.txt" \\
        --dd "net=textcnn[filters=4],batch_size=4" --epochs 4 --every 2 --out /tmp/long-smoke
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fidelity_dd import PAPER_ITERATIONS_PER_EPOCH, SETTINGS, load, spec_for  # noqa: E402
from fidelity_text import (  # noqa: E402
    dd_options,
    full_split_row,
    load_data,
    parse_options,
    random_row,
    spec_of,
)

from distillbench.harness.checkpoint import Checkpointer  # noqa: E402
from distillbench.harness.errors import ConfigError, one_line_errors  # noqa: E402
from distillbench.harness.evaluate import evaluate  # noqa: E402
from distillbench.harness.plugins import METHODS, PROTOCOLS  # noqa: E402
from distillbench.harness.seeding import derive_seed, torch_generator  # noqa: E402
from distillbench.harness.types import Context, DataBundle  # noqa: E402

SLUGS = ("dd-10-fixed", "sldd-10-fixed", "sldd-5-fixed")

# fidelity_text.py's evidence run distils with these on top of PAPER_DD (see the dropout note there).
TEXT_DD = "net=textcnn[dropout=0.0],init=fixed"
TEXT_EPOCHS = 100  # the paper's run length in epochs over the data (100 epochs of IMDB)


def milestones_of(full_epochs: int, every: int, per_epoch: int) -> list[int]:
    """The epochs at which the curve is evaluated: every ``every`` outer iterations, rounded up to epochs."""
    step = max(1, math.ceil(every / per_epoch))
    return [*range(step, full_epochs, step), full_epochs]


def run_curve(
    *,
    data: DataBundle,
    ipc: int,
    protocol: Any,
    out: Path,
    slug: str,
    seed: int,
    seed_salt: str,
    full_spec: str,
    dataset_spec: str,
    spec_at: Callable[[int], str],
    milestones: list[int],
    header: Callable[[int], str],
    point: Callable[[int, Any, float, int], dict[str, Any]],
    line: Callable[[int, Any, float, int], str],
) -> int:
    """Run one ``dd`` curve to its last milestone, resuming from ``OUT/<slug>.ckpt`` and ``OUT/<slug>.jsonl``.

    Each milestone not yet in the curve file re-enters ``dd`` with that many ``epochs`` (``spec_at``),
    continuing the checkpoint of the last epoch end; every leg distils with the seed
    ``derive_seed(seed, seed_salt, full_spec)``, so the legs make up one run of ``full_spec``. The set is
    evaluated with ``protocol`` (evaluation seed ``seed``) and the JSON line ``point(epochs, result,
    seconds, leg_epochs)`` appended (``seconds``: the distillation time of this leg, ``leg_epochs``:
    the epochs it ran); ``header(points_done)`` and ``line(...)`` (same arguments) are printed.
    Returns the number of points added. Raises ``ConfigError`` when the curve file holds points of another
    run (another ``full_spec`` or ``dataset_spec``), before any work.
    """
    run = {"spec": full_spec, "dataset_spec": dataset_spec}
    curve_path = out / f"{slug}.jsonl"
    lines = curve_path.read_text().splitlines() if curve_path.exists() else []
    done = {json.loads(text)["epochs"] for text in lines}
    for text in lines:  # points of another run (another dataset or run length) would join this curve
        other = {k: v for k, v in json.loads(text).items() if k in run}
        if other != {k: v for k, v in run.items() if k in other}:
            raise ConfigError(
                f"{curve_path} holds a curve of another run ({other}), not of {run}; "
                "pass another --out or move the file (and its .ckpt) away"
            )
    checkpoint = Checkpointer(out / f"{slug}.ckpt", every=1)
    print(header(len(done)), flush=True)
    # The seed of the full-length spec, so every milestone continues the same run.
    ctx_seed = derive_seed(seed, seed_salt, full_spec)
    added = 0
    for epochs in milestones:
        if epochs in done:
            continue
        configured = METHODS.resolve(spec_at(epochs))
        method = configured.obj(configured.params)
        ctx = Context(torch.device("cpu"), torch_generator(ctx_seed), ctx_seed, checkpoint=checkpoint)
        t0 = time.perf_counter()
        dset = method.distill(data, ipc, ctx)
        seconds = time.perf_counter() - t0
        leg_epochs = epochs - (checkpoint.resumed_from or 0)  # None: this leg started from scratch
        result = evaluate(protocol, dset, data, seed=seed, device="cpu")
        with curve_path.open("a") as fh:
            fh.write(json.dumps(point(epochs, result, seconds, leg_epochs)) + "\n")
        print(line(epochs, result, seconds, leg_epochs), flush=True)
        added += 1
    return added


def run_mnist(args: argparse.Namespace) -> int:
    """One setting of fidelity_dd.py at the papers' full length (the issue-20 runs)."""
    setting = SETTINGS[args.only]
    slug = f"{SLUGS[args.only]}-seed{args.seed}"
    data = load(args.dataset, (args.data_root or Path("../shared/data/mnist-10k")).expanduser())
    per_epoch = max(1, len(data.train) // min(1024, len(data.train)))
    full_spec, full_epochs, decay = spec_for(setting, args.net, args.epochs, per_epoch)
    milestones = milestones_of(full_epochs, 2000 if args.every is None else args.every, per_epoch)
    run_curve(
        data=data,
        ipc=1,
        protocol=PROTOCOLS.get("dd-replay-v1"),
        out=args.out,
        slug=slug,
        seed=args.seed,
        seed_salt="fidelity_dd",
        full_spec=full_spec,
        dataset_spec=args.dataset,
        spec_at=lambda epochs: spec_for(setting, args.net, epochs, per_epoch)[0],
        milestones=milestones,
        header=lambda done: (
            f"{setting.label} {setting.setting}, seed {args.seed}: {full_epochs} epochs x {per_epoch} iterations "
            f"= {full_epochs * per_epoch} outer iterations "
            f"(paper {setting.paper_epochs * PAPER_ITERATIONS_PER_EPOCH}), "
            f"decay every {decay} epochs; points at {milestones}; {done} already done"
        ),
        point=lambda epochs, result, seconds, _: {
            "setting": f"{setting.label} {setting.setting}",
            "seed": args.seed,
            "epochs": epochs,
            "iterations": epochs * per_epoch,
            "acc": result.acc_mean,
            "distill_seconds_this_leg": round(seconds, 1),
            "reported": setting.reported,
            "spec": full_spec,
            "dataset_spec": args.dataset,
            "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
        },
        line=lambda epochs, result, seconds, _: (
            f"  {epochs * per_epoch:>6} iterations: {100 * result.acc_mean:.2f}% ({seconds:.0f} s this leg)"
        ),
    )
    return 0


def _write_json(path: Path, payload: dict[str, Any]) -> None:
    """Write ``payload`` atomically (two runs of one dataset may write the same baseline file)."""
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(payload, indent=2, default=str) + "\n")
    tmp.replace(path)


def text_baselines(args: argparse.Namespace, name: str, dataset: str, data: DataBundle) -> None:
    """``random`` at this ipc under text-v1 (and with ``--baselines`` the full train split), once each."""
    random_path = args.out / f"text-{name}-random-{args.ipc}-seed{args.seed}.json"
    if not random_path.exists():
        t0 = time.perf_counter()
        row = random_row(name, dataset, args.ipc, [args.seed], "text-v1", args.data_root)
        print(f"  random ipc {args.ipc} (text-v1): {100 * row['acc_mean']:.2f}% ({time.perf_counter() - t0:.0f} s)")
        _write_json(random_path, {**row, "protocol": "text-v1", "time": time.strftime("%Y-%m-%dT%H:%M:%S")})
    full_path = args.out / f"text-{name}-full.json"
    if args.baselines and not full_path.exists():
        row = full_split_row(name, data, args.full_epochs, args.full_models)
        _write_json(full_path, {**row, "time": time.strftime("%Y-%m-%dT%H:%M:%S")})


def run_text(args: argparse.Namespace) -> int:
    """Text DD on one dataset, hard or soft labels, ``--ipc`` sentences per class, with its text-v1 curve."""
    if args.labels is None or args.ipc is None:
        raise ConfigError("--text needs --labels and --ipc")
    if "epochs" in parse_options(args.dd):
        raise ConfigError("set the run length with --epochs, not --dd epochs=...")
    name = args.text
    args.data_root = str(args.data_root or Path("../shared/data"))
    dataset_options = parse_options(args.dataset_options)
    dataset = spec_of(name, dataset_options)
    data = load_data(name, dataset_options, args.data_root)
    # dd_options with 0 iterations: PAPER_DD + the evidence settings + --dd, epochs=1, and so per_epoch.
    options, per_epoch = dd_options(argparse.Namespace(dd=f"{TEXT_DD},{args.dd}", iterations=0), len(data.train))
    full_epochs = TEXT_EPOCHS if args.epochs is None else args.epochs
    labels = {"soft_labels": "true"} if args.labels == "soft" else {}

    def spec_at(epochs: int) -> str:
        return spec_of("dd", {**options, "epochs": epochs, **labels})

    full_spec = spec_at(full_epochs)
    milestones = milestones_of(full_epochs, 60 if args.every is None else args.every, per_epoch)
    slug = f"text-{name}-{args.labels}-{args.ipc}-seed{args.seed}"
    protocol = PROTOCOLS.get("text-v1")
    print(
        f"{dataset}: {len(data.train)} train / {len(data.val)} val / {len(data.test)} test sentences; {slug}",
        flush=True,
    )
    text_baselines(args, name, dataset, data)
    run_curve(
        data=data,
        ipc=args.ipc,
        protocol=protocol,
        out=args.out,
        slug=slug,
        seed=args.seed,
        seed_salt="long_dd_text",
        full_spec=full_spec,
        dataset_spec=dataset,
        spec_at=spec_at,
        milestones=milestones,
        header=lambda done: (
            f"{full_spec}, ipc {args.ipc}, seed {args.seed}: {full_epochs} epochs x {per_epoch} iterations "
            f"= {full_epochs * per_epoch} outer iterations, decay every {options['decay_epochs']} epochs; "
            f"points at {milestones}; {done} already done"
        ),
        point=lambda epochs, result, seconds, leg_epochs: {
            "dataset": name,
            "labels": args.labels,
            "ipc": args.ipc,
            "seed": args.seed,
            "epochs": epochs,
            "iterations": epochs * per_epoch,
            "acc": result.acc_mean,
            "distill_seconds_this_leg": round(seconds, 1),
            "iterations_this_leg": leg_epochs * per_epoch,
            "eval_seconds": round(result.seconds, 1),
            "protocol": protocol.name,
            "dataset_spec": dataset,
            "spec": full_spec,
            "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
        },
        line=lambda epochs, result, seconds, leg_epochs: (
            f"  {epochs * per_epoch:>6} iterations: {100 * result.acc_mean:.2f}% ({seconds:.0f} s this leg, "
            f"{seconds / max(1, leg_epochs * per_epoch):.2f} s/iteration; eval {result.seconds:.0f} s)"
        ),
    )
    return 0


@one_line_errors("long_dd")  # a missing dataset, a bad option, another run's curve: one line
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--only", type=int, choices=range(len(SETTINGS)), help="MNIST: setting index (0-2)")
    mode.add_argument("--text", help="text mode: the text dataset (sst2, mr)")
    parser.add_argument(
        "--data-root", type=Path, default=None, help="default ../shared/data/mnist-10k (MNIST), ../shared/data (text)"
    )
    parser.add_argument("--dataset", default="mnist", help="MNIST mode: the dataset spec")
    parser.add_argument("--net", default="lenet", help="MNIST mode: the network spec")
    parser.add_argument("--labels", choices=("hard", "soft"), help="text mode: hard or learned soft labels")
    parser.add_argument("--ipc", type=int, help="text mode: distilled sentences per class")
    parser.add_argument("--dataset-options", default="", help="text mode: dataset options, e.g. vocab_size=5000")
    parser.add_argument("--dd", default="", help=f"text mode: dd option overrides on PAPER_DD + {TEXT_DD}")
    parser.add_argument("--baselines", action="store_true", help="text mode: also the full-train-split reference")
    parser.add_argument("--full-epochs", type=int, default=20, help="text mode: epochs of the full-split reference")
    parser.add_argument("--full-models", type=int, default=3, help="text mode: models of the full-split reference")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--every", type=int, default=None, help="evaluate every this many outer iterations (MNIST 2000, text 60)"
    )
    parser.add_argument(
        "--epochs", type=int, default=None, help="stop early at this many epochs (default: paper's; text 100)"
    )
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    return run_text(args) if args.text is not None else run_mnist(args)


if __name__ == "__main__":
    sys.exit(main())
