"""Accuracy of DM's synthetic set along its iterations, with and without a weighting (issue 5).

Issue 5 asks why DM+KDE falls short of the paper's effect (23.8% -> 91.5% on Colored MNIST, 5%
conflicting, IPC 50, 20,000 iterations) at the reduced iteration counts a CPU affords. This script
measures the curve instead of guessing it: one DM run per weighting, the synthetic set captured at
chosen iterations (iteration 0 is the real-image initialisation), each snapshot evaluated under the
protocol with the bias columns (aligned, conflicting, worst group).

A snapshot at iteration n is the set DM returns when run for n iterations from the same seed
(``tests/test_methods.py::TestTruncation``): DM has no schedule that depends on the total, each
iteration's network comes from ``(seed, iteration)`` and its batches from one generator. (A grid
trial ``dm[iterations=n]`` gets another seed, since trial seeds derive from the parameters.) Exactly
so only in the same arithmetic: with ``DISTILLBENCH_COMPILE=auto`` a CPU run of 1,000 iterations or
more compiles DM's embedding (issue 20) and a shorter one does not, and the two drift apart from
rounding; set ``DISTILLBENCH_COMPILE=on`` (or ``off``) for both to compare sets exactly.

    python benchmarks/bias_curve.py --data-root ../shared/data/mnist-10k --at 0,200,1000,3000 \\
        --weighting kde --threads 1 --json > kde.json

Long curves (DM's 20,000 iterations take about an hour a run on one CPU thread) take
``--checkpoint FILE``: the loop state and the points so far are saved every ``--checkpoint-s``
seconds, and the same command run again after an interruption continues from there.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from distillbench.harness.checkpoint import Checkpointer, NoCheckpoint
from distillbench.harness.errors import DistillBenchError, one_line_errors
from distillbench.harness.runner import distill_set, evaluate_set, load_data
from distillbench.harness.spec import TrialSpec
from distillbench.harness.types import DistilledSet

COLUMNS = ("acc_mean", "acc_std", "acc_aligned", "acc_conflicting", "acc_worst_group")


class Snapshots(NoCheckpoint):
    """Stands in for the trial's checkpoint and evaluates the synthetic set at chosen iterations.

    Evaluating inside the loop (rather than after it) leaves the run's randomness alone: DM draws
    only from its own generators, evaluation from generators seeded by the trial seed. It also
    means a run stopped part-way has already reported its earlier points.

    With a ``saver`` (a :class:`Checkpointer`), DM's loop state is saved on the saver's schedule
    together with the curve so far (its points, the distillation seconds spent, the run it belongs
    to), and a restarted run continues from it instead of from iteration 0. ``run`` is the trial id,
    which covers everything that shapes the curve (dataset, method and its parameters, weighting,
    IPC, seed, protocol); ``label`` is its readable form for messages.
    """

    def __init__(
        self,
        at: list[int],
        evaluate: Callable[[int, torch.Tensor, float], None],
        run: str = "",
        saver: NoCheckpoint | None = None,
        label: str = "",
    ) -> None:
        self.at = set(at)
        self.evaluate = evaluate
        self.run, self.label = run, label or run
        self.saver = saver or NoCheckpoint()
        self.points: list[dict[str, Any]] = []
        self._t0 = time.perf_counter()
        self._paused = 0.0  # evaluation time, kept out of the distillation time
        self._before = 0.0  # distillation seconds spent before a resume

    def seconds(self) -> float:
        return self._before + time.perf_counter() - self._t0 - self._paused

    def _point(self, iteration: int, syn: torch.Tensor) -> None:
        if iteration in self.at:
            t = time.perf_counter()
            self.evaluate(iteration, syn.detach().cpu().clone(), self.seconds())
            self._paused += time.perf_counter() - t

    # The curve travels in the checkpoint file as one more object with a state dict.
    def state_dict(self) -> dict[str, Any]:
        return {"run": self.run, "label": self.label, "points": list(self.points), "seconds": self.seconds()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state["run"] != self.run:
            raise DistillBenchError(
                f"the checkpoint holds a curve of another run ({state.get('label', state['run'])}), not of "
                f"{self.label}; delete it or pass another --checkpoint"
            )
        self.points[:] = state["points"]
        self._before = float(state["seconds"])

    def resume(self, **objects: Any) -> int:
        start = self.saver.resume(**objects, curve=self)
        self._t0 = time.perf_counter()
        self._paused = 0.0
        if start == 0:
            self._point(0, objects["syn"])
        return start

    def maybe_save(self, iteration: int, **objects: Any) -> bool:
        self._point(iteration, objects["syn"])
        return self.saver.maybe_save(iteration, **objects, curve=self)


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.2f}"  # bias columns are None on unbiased data


def run_curve(
    dataset: str,
    data_root: str | Path,
    weighting: str,
    ipc: int,
    at: list[int],
    dm: str = "",
    protocol: str = "convnet-v1-cpu-reduced",
    seed: int = 0,
    device: str = "cpu",
    checkpoint: NoCheckpoint | None = None,
) -> dict[str, Any]:
    """One DM run of ``at[-1]`` iterations, its set evaluated at the iterations ``at`` (sorted).

    Returns the run's facts and its ``points``; prints a line per point to stderr as it goes.
    Raises ``DistillBenchError`` for a bad spec or a missing dataset before any work is done.
    With a ``checkpoint`` (a :class:`Checkpointer`), the run continues from the state saved there
    by an interrupted run of the same curve, and deletes the file once it is complete.
    """
    method = f"dm[iterations={at[-1]},{dm}]" if dm else f"dm[iterations={at[-1]}]"
    spec = TrialSpec(dataset, method, ipc, seed, weighting, protocol=protocol)
    resolved = spec.resolve()
    data = load_data(resolved, Path(data_root))
    dev = torch.device(device)
    labels = torch.arange(data.info.num_classes).repeat_interleave(ipc)

    def evaluate(iteration: int, syn: torch.Tensor, distill_s: float) -> None:
        cols = evaluate_set(resolved.protocol, DistilledSet(x=syn, y=labels, meta={}), data, seed=seed, device=dev)
        point = {"iteration": iteration, "distill_seconds": round(distill_s, 1), **{k: cols[k] for k in COLUMNS}}
        snapshots.points.append(point)
        print(
            f"{resolved.weighting.display:>10} it={iteration:>6} {distill_s:8.1f} s  "
            + "  ".join(f"{k[4:]}={_percent(point[k])}" for k in COLUMNS if k != "acc_std"),
            file=sys.stderr,
            flush=True,
        )

    label = (
        f"{resolved.dataset.display} {resolved.method.display} {resolved.weighting.display} ipc={ipc} seed={seed} "
        f"protocol={resolved.protocol.name}"
    )
    snapshots = Snapshots(at, evaluate, run=resolved.trial_id, saver=checkpoint, label=label)
    distill_set(resolved, data, device=dev, checkpoint=snapshots)
    snapshots.saver.clear()
    return {
        "dataset": resolved.dataset.display,
        "method": resolved.method.display,
        "weighting": resolved.weighting.display,
        "ipc": ipc,
        "seed": seed,
        "protocol": resolved.protocol.name,
        "device": str(dev),
        "points": snapshots.points,
    }


@one_line_errors("bias_curve")  # an unknown name, a bad parameter, a missing dataset: one line
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="colored_mnist", help="dataset spec (default: 5%% conflicting)")
    parser.add_argument("--data-root", required=True, help="dataset root, e.g. ../shared/data/mnist-10k")
    parser.add_argument("--weighting", default="kde", help="weighting spec (default: kde)")
    parser.add_argument("--ipc", type=int, default=10)
    parser.add_argument("--at", default="0,200,1000,3000", help="iterations to evaluate, comma-separated")
    parser.add_argument("--dm", default="batch_real=64,net=convnet[width=32]", help="further dm parameters")
    parser.add_argument("--protocol", default="convnet-v1-cpu-reduced")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, help="torch CPU threads")
    parser.add_argument("--json", action="store_true", help="print one JSON object at the end")
    parser.add_argument(
        "--checkpoint",
        help="file for DM's loop state and the curve so far; a rerun with the same arguments continues from it",
    )
    parser.add_argument("--checkpoint-s", type=float, default=300.0, help="seconds between saves (default 300)")
    args = parser.parse_args(argv)

    try:
        at = sorted({int(a) for a in args.at.split(",")})
    except ValueError:
        parser.error(f"--at must be comma-separated integers, got {args.at!r}")
    if at[0] < 0 or at[-1] < 1:
        parser.error(f"--at needs iterations >= 0 and at least one >= 1, got {args.at!r}")
    if args.threads:
        torch.set_num_threads(args.threads)

    saver = Checkpointer(Path(args.checkpoint), every_s=args.checkpoint_s) if args.checkpoint else None
    if saver is not None:
        saver.check_writable()
    result = run_curve(
        args.dataset,
        args.data_root,
        args.weighting,
        args.ipc,
        at,
        args.dm,
        args.protocol,
        args.seed,
        args.device,
        checkpoint=saver,
    )
    if args.json:
        print(json.dumps(result))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
