"""Why DM + ``kde`` falls short of the paper on Colored MNIST: measurements (issue 20).

Three parts, each its own sub-command, on ``colored_mnist[conflict=0.05]`` over a real MNIST copy:

``weights``
    The weight map itself, for the encoders, powers, clips and bandwidths of ``kde``: the share of a
    class's weight on its bias-conflicting samples (the quantity that moves DM's real mean), the
    AUC with which the weights rank conflicting above aligned samples (what the embedding and the
    bandwidth decide; the power does not change the ranking), the effective sample size
    ``(sum w)^2 / sum w^2`` of a class and of a uniform batch of ``--batch`` real images (what the
    weighted mean of DM actually rests on; a batch of zero total weight counts 0, and the share of
    such batches is given too), and the largest weight (over the class mean). The ``groups`` oracle is
    listed beside them. Cheap: one encoder training per encoder, no DM.

``ablate``
    DM at one fixed iteration count (``--iterations``) per weighting / DM variant, each set
    evaluated under ``--protocol`` with the bias columns. One JSON line per variant is appended to
    ``--out``; variants already there are skipped, so an interrupted run continues.

``subsets``
    The data's own ceiling: the evaluation protocol trained on real training subsets (all
    conflicting images, a group-balanced subset, the aligned ones) rather than on a distilled set.
    If all 36 conflicting images per class already fall short of 91.5%, the data caps any method.

Usage (one thread each; the weights take minutes, each ablation variant about 3-5 minutes at
1,000 iterations and IPC 10 on an idle core)::

    python benchmarks/kde_analysis.py weights --data-root ../shared/data/mnist-10k --json > w.json
    nice -n 19 python benchmarks/kde_analysis.py ablate --data-root ../shared/data/mnist-10k \\
        --iterations 1000 --out ablate.jsonl
    python benchmarks/kde_analysis.py subsets --data-root ../shared/data/mnist-10k
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bias_curve import COLUMNS, run_curve  # noqa: E402

from distillbench.harness.errors import one_line_errors  # noqa: E402
from distillbench.harness.plugins import DATASETS, PROTOCOLS, WEIGHTINGS  # noqa: E402
from distillbench.harness.runner import evaluate_set  # noqa: E402
from distillbench.harness.stages import Weighting  # noqa: E402
from distillbench.harness.types import Context, DataBundle, DistilledSet  # noqa: E402
from distillbench.methods.groups import group_weights  # noqa: E402
from distillbench.methods.kde import KDEParams, bandwidth_rule, embed, kde_weights, loo_log_density  # noqa: E402


@dataclasses.dataclass(frozen=True)
class LowestParams:
    fraction: float = dataclasses.field(default=0.05, metadata={"help": "share of each class kept (lowest density)"})


class KDELowest(Weighting):
    """A threshold map on ``kde``'s densities (benchmark-only): the lowest-density ``fraction`` of each
    class shares the class's weight evenly, the rest gets 0. It asks whether a map that spreads the
    weight over the rare samples, instead of ``density ** -power`` (which piles it on the rarest few),
    brings ``kde`` to the ``groups`` oracle. Same SupCon encoder and median bandwidth as ``kde``."""

    name = "kde_lowest"
    Params = LowestParams

    def compute(self, data: DataBundle, ctx: Context) -> torch.Tensor:
        z = embed(data, KDEParams(), ctx.seed, torch.device("cpu"))
        return lowest_weights(z, data.train.y, data.info.num_classes, self.params.fraction)


def lowest_weights(z: torch.Tensor, labels: torch.Tensor, num_classes: int, fraction: float) -> torch.Tensor:
    """Weight ``1 / fraction`` on the lowest-density ``fraction`` of each class (median bandwidth), 0 elsewhere."""
    w = torch.zeros(len(labels))
    for c in range(num_classes):
        idx = torch.nonzero(labels == c, as_tuple=True)[0]
        log_p = loo_log_density(z[idx], bandwidth_rule(z[idx], "median"))
        keep = idx[torch.argsort(log_p)[: max(1, round(fraction * len(idx)))]]
        w[keep] = len(idx) / len(keep)
    return w


WEIGHTINGS.add("kde_lowest", KDELowest, origin="benchmarks/kde_analysis.py")


# (label, weighting, further dm parameters): the ablation of issue 20, at one iteration count.
VARIANTS: tuple[tuple[str, str, str], ...] = (  # the most telling first: a stopped run has them
    ("none", "none", ""),
    ("kde (default: supcon, median, power 3, clip 100)", "kde", ""),
    ("kde, batch drawn by weight", "kde", "weight_mode=sample"),
    ("groups share 0.74 (oracle at kde's share)", "groups[share=0.74]", ""),
    ("groups share 1 (oracle, conflicting only)", "groups[share=1.0]", ""),
    ("groups share 1, batch drawn by weight", "groups[share=1.0]", "weight_mode=sample"),
    ("kde, 256 real images per class", "kde", "batch_real=256"),
    ("kde power 5, batch drawn by weight", "kde[power=5]", "weight_mode=sample"),
    ("groups share 0.9 (oracle)", "groups[share=0.9]", ""),
    ("kde lowest 5% (threshold map, benchmark-only)", "kde_lowest[fraction=0.05]", ""),
    ("kde lowest 10% (threshold map, benchmark-only)", "kde_lowest[fraction=0.1]", ""),
    ("kde power 1, clip 10 (plain inverse density)", "kde[power=1,clip=10]", ""),
    ("kde power 2, no clip", "kde[power=2,clip=none]", ""),
    ("kde power 5", "kde[power=5]", ""),
    ("kde encoder random", "kde[encoder=random]", ""),
    ("kde encoder pixels", "kde[encoder=pixels]", ""),
    ("kde bandwidth scott", "kde[bandwidth=scott]", ""),
    ("kde bandwidth 0.5", "kde[bandwidth=0.5]", ""),
    ("groups share 0.5 (oracle, balanced)", "groups[share=0.5]", ""),
    ("groups share 0.74, batch drawn by weight", "groups[share=0.74]", "weight_mode=sample"),
)
DM_BASE = {"batch_real": "64", "net": "convnet[width=32]"}  # the CPU bias settings of docs/bias.md


def load(dataset: str, root: Path) -> DataBundle:
    configured = DATASETS.resolve(dataset)
    return configured.obj(configured.params).load(root)


def weight_stats(w: torch.Tensor, data: DataBundle, batch: int, gen: torch.Generator) -> dict[str, float]:
    """Conflicting share, ranking AUC, effective sample sizes and largest weight, averaged over classes."""
    aligned, y = data.train.groups["aligned"], data.train.y
    rows: list[dict[str, float]] = []
    for c in range(data.info.num_classes):
        wc, al = w[y == c].double(), aligned[y == c]
        conf, agree = wc[~al], wc[al]
        # AUC: probability that a random conflicting sample outweighs a random aligned one (ties half).
        greater = (conf[:, None] > agree[None, :]).double().mean()
        ties = (conf[:, None] == agree[None, :]).double().mean()
        draws = torch.stack([torch.randperm(len(wc), generator=gen)[:batch] for _ in range(200)])
        wb = wc[draws]
        rows.append(
            {
                "conflicting_share": float(conf.sum() / wc.sum()),
                "auc": float(greater + 0.5 * ties),
                "ess_class": float(wc.sum() ** 2 / (wc**2).sum() / len(wc)),
                # A batch whose weights are all zero (DM then takes its plain mean) counts as ESS 0 here:
                # the weights have no say in it. Its share is reported on its own.
                "ess_batch": float(torch.nan_to_num(wb.sum(1) ** 2 / (wb**2).sum(1)).mean()),
                "weightless_batches": float((wb.sum(1) == 0).double().mean()),
                "max_over_mean": float(wc.max() / wc.mean()),
            }
        )
    return {k: sum(r[k] for r in rows) / len(rows) for k in rows[0]}


def cmd_weights(args: argparse.Namespace) -> list[dict[str, Any]]:
    data = load(args.dataset, args.data_root)
    y, C = data.train.y, data.info.num_classes
    out: list[dict[str, Any]] = []

    def report(label: str, w: torch.Tensor, seconds: float = 0.0) -> None:
        stats = weight_stats(w, data, args.batch, torch.Generator().manual_seed(0))
        out.append({"weights": label, **{k: round(v, 4) for k, v in stats.items()}, "seconds": round(seconds, 1)})
        print(
            f"{label:<44} share={stats['conflicting_share']:.3f} auc={stats['auc']:.3f} "
            f"ess/n={stats['ess_class']:.3f} ess(batch {args.batch})={stats['ess_batch']:5.1f} "
            f"max={stats['max_over_mean']:7.1f} weightless={stats['weightless_batches']:.2f}",
            file=sys.stderr,
            flush=True,
        )

    report("uniform (none)", torch.ones(len(y)))
    for share in (0.5, 0.74, 1.0):
        report(f"groups[share={share}]", group_weights(y, data.train.groups["aligned"], C, share))
    grid = [dict(power=p, clip=c) for p, c in ((1, 10), (1, 100), (2, None), (2, 100), (3, 100), (5, 100))]
    for encoder in ("supcon", "random", "pixels"):
        t = time.perf_counter()
        z = embed(data, KDEParams(encoder=encoder), args.seed, torch.device("cpu"))
        embed_s = time.perf_counter() - t
        for bandwidth in ("median", "scott", "silverman", 0.1, 0.5):
            settings = grid if (encoder, bandwidth) == ("supcon", "median") else [dict(power=3, clip=100)]
            for s in settings:
                t = time.perf_counter()
                w = kde_weights(z, y, C, bandwidth=bandwidth, power=s["power"], clip=s["clip"])
                clip = "none" if s["clip"] is None else s["clip"]
                label = f"kde[encoder={encoder},bandwidth={bandwidth},power={s['power']},clip={clip}]"
                report(label, w, embed_s + time.perf_counter() - t)
                embed_s = 0.0  # the encoder's time is counted once, with its first weight map
        if encoder == "supcon":
            for fraction in (0.05, 0.1):
                report(f"kde_lowest[fraction={fraction}] (benchmark-only)", lowest_weights(z, y, C, fraction))
    return out


def cmd_ablate(args: argparse.Namespace) -> list[dict[str, Any]]:
    done: set[str] = set()
    if args.out.exists():
        done = {json.loads(line)["label"] for line in args.out.read_text().splitlines() if line.strip()}
    wanted = [v for v in VARIANTS if not args.only or any(o in v[0] for o in args.only)]
    rows = []
    for label, weighting, extra in wanted:
        if label in done:
            print(f"skip (done): {label}", file=sys.stderr)
            continue
        # A variant's own DM parameters override the base ones (batch_real=256 replaces 64).
        options = {**DM_BASE, **dict(o.split("=", 1) for o in extra.split(",") if o)}
        dm = ",".join(f"{k}={v}" for k, v in options.items())
        t = time.perf_counter()
        result = run_curve(
            args.dataset, args.data_root, weighting, args.ipc, [args.iterations], dm, args.protocol, args.seed
        )
        (point,) = result["points"]
        row = {
            "label": label,
            "seed": args.seed,
            "weighting": result["weighting"],
            "method": result["method"],
            "ipc": args.ipc,
            "iterations": args.iterations,
            "protocol": result["protocol"],
            **{k: point[k] for k in COLUMNS},
            "distill_seconds": point["distill_seconds"],
            "wall_seconds": round(time.perf_counter() - t, 1),
        }
        rows.append(row)
        with args.out.open("a") as f:  # one whole line per variant, so a stopped run keeps its finished ones
            f.write(json.dumps(row) + "\n")
    return rows


def cmd_subsets(args: argparse.Namespace) -> list[dict[str, Any]]:
    data = load(args.dataset, args.data_root)
    protocol = PROTOCOLS.get(args.protocol)
    aligned, y = data.train.groups["aligned"], data.train.y
    gen = torch.Generator().manual_seed(args.seed)
    conflicting = torch.nonzero(~aligned).flatten()
    per_class = [torch.nonzero((y == c) & aligned).flatten() for c in range(data.info.num_classes)]
    n_conf = [int(((y == c) & ~aligned).sum()) for c in range(data.info.num_classes)]
    balanced = torch.cat([m[torch.randperm(len(m), generator=gen)[:k]] for m, k in zip(per_class, n_conf, strict=True)])
    subsets = {
        f"all conflicting ({len(conflicting)})": conflicting,
        f"conflicting + as many aligned ({len(conflicting) + len(balanced)})": torch.cat([conflicting, balanced]),
        f"aligned only, as many ({len(balanced)})": balanced,
        f"10 conflicting per class ({10 * data.info.num_classes})": torch.cat(
            [
                torch.nonzero((y == c) & ~aligned).flatten()[:10]
                for c in range(data.info.num_classes)  # first 10: the order of the split is already random
            ]
        ),
    }
    rows = []
    for label, idx in subsets.items():
        t = time.perf_counter()
        dset = DistilledSet(x=data.train.x[idx], y=y[idx])
        cols = evaluate_set(protocol, dset, data, seed=args.seed, device=torch.device("cpu"))
        row = {
            "subset": label,
            "n": len(idx),
            **{k: cols[k] for k in COLUMNS},
            "seconds": round(time.perf_counter() - t),
        }
        rows.append(row)
        print(
            f"{label:<44} " + "  ".join(f"{k[4:]}={100 * row[k]:.2f}" for k in COLUMNS if k != "acc_std"),
            file=sys.stderr,
            flush=True,
        )
    return rows


@one_line_errors("kde_analysis")  # an unknown name, a bad parameter, a missing dataset: one line
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("command", choices=("weights", "ablate", "subsets"))
    parser.add_argument("--dataset", default="colored_mnist[conflict=0.05]")
    parser.add_argument("--data-root", type=Path, required=True)
    parser.add_argument("--ipc", type=int, default=10)
    parser.add_argument("--iterations", type=int, default=1000, help="ablate: DM iterations per variant")
    parser.add_argument("--batch", type=int, default=64, help="weights: batch size of the batch ESS")
    parser.add_argument("--protocol", default="convnet-v1-cpu-reduced")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--only", action="append", default=[], help="ablate: run the variants whose label contains this (repeatable)"
    )
    parser.add_argument("--out", type=Path, help="ablate: JSON-lines file (appended; finished variants skipped)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", action="store_true", help="print the rows as one JSON list at the end")
    args = parser.parse_args(argv)
    if args.command == "ablate" and args.out is None:
        parser.error("ablate needs --out (a JSON-lines file it appends to and resumes from)")
    torch.set_num_threads(args.threads)
    command = {"weights": cmd_weights, "ablate": cmd_ablate, "subsets": cmd_subsets}[args.command]
    rows = command(args)
    if args.json:
        print(json.dumps(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
