"""Bookkeeping shared by iterative methods: loss curve, progress, divergence and the time budget.

The loss is summed on the device and read back once per report window (about 1% of the run), so a
GPU loop does not wait for the host every iteration, and a NaN/inf loss is still caught within a
window and turned into :class:`DivergedError` (the trial then ends with status ``diverged``).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

import torch

from distillbench.harness.errors import DivergedError
from distillbench.harness.progress import takes_values
from distillbench.harness.types import Context


class LossTracker:
    """Follow one iterative distillation run.

    Args:
        method: method name for messages (``"dm"``).
        total: planned number of iterations.
        ctx: the trial context (progress callback and time budget).
        hint: what to lower when the loss diverges, e.g. ``"(lr_img=1.0); lower lr_img"``.
        current: returns the synthetic set as it is now, ``(x, y)``; with it, a probe the runner put in
            ``ctx.probe`` (a search with early stopping, :mod:`distillbench.harness.probe`) evaluates the set at
            a few iterations. The one place every iterative method's intermediate evaluation goes through.

    Example:
        >>> tracker = LossTracker("dm", 100, ctx, "(lr_img=1.0); lower lr_img")  # doctest: +SKIP
        >>> for it in range(100):  # doctest: +SKIP
        ...     if tracker.step(loss):
        ...         break
    """

    def __init__(
        self,
        method: str,
        total: int,
        ctx: Context,
        hint: str,
        start_message: str = "starting",
        current: Callable[[], tuple[torch.Tensor, torch.Tensor]] | None = None,
    ) -> None:
        self.method, self.total, self.ctx, self.hint = method, total, ctx, hint
        # Probing costs nothing unless the runner asked for it (ctx.probe) and the method can show its set.
        self.probe = ctx.probe if current is not None else None
        self.current = current
        self.report_every = max(1, total // 100)
        self.window_sum: torch.Tensor | float = 0.0
        self.window_start = 0
        self.done = 0
        self.last: torch.Tensor | float = float("nan")
        self.curve: list[list[float]] = []
        self.stopped_early = False
        self.start = time.monotonic()
        # Callbacks that take values also get each iteration (a fine event; they rate-limit themselves), so a
        # slow loop shows its progress between the report windows; the others only see the windows.
        self.fine = ctx.progress is not None and takes_values(ctx.progress)
        ctx.report(0.0, f"{method}: {start_message}", iteration=0, iterations=total)

    def step(self, loss: torch.Tensor | float, note: str = "") -> bool:
        """Record one iteration's loss; return True when the time budget is spent and the run must stop.

        Raises:
            DivergedError: the mean loss of the window is not finite.
        """
        self.done += 1
        self.last = loss.detach() if isinstance(loss, torch.Tensor) else loss
        self.window_sum = self.window_sum + self.last
        budget = self.ctx.time_budget_s
        out_of_time = budget is not None and time.monotonic() - self.start >= budget
        if self.done % self.report_every == 0 or self.done == self.total or out_of_time:
            mean = float(self.window_sum) / (self.done - self.window_start)
            if not math.isfinite(mean):
                first = self.window_start + 1
                where = f"iteration {self.done}" if self.done == first else f"iterations {first}-{self.done}"
                raise DivergedError(f"{self.method} diverged: the loss became {mean} at {where} {self.hint}")
            self.curve.append([self.done, mean])
            suffix = f" ({note})" if note else ""
            self.ctx.report(
                self.done / self.total,
                f"{self.method}: iteration {self.done}/{self.total}{suffix}, loss {mean:.4g}",
                iteration=self.done,
                iterations=self.total,
                loss=mean,
            )
            self.window_sum = 0.0
            self.window_start = self.done
        elif self.fine:
            # The loss shown is the last window's mean: reading this iteration's would wait for the GPU.
            loss = {"loss": self.curve[-1][1]} if self.curve else {}
            self.ctx.report(
                self.done / self.total,
                f"{self.method}: iteration {self.done}/{self.total}",
                fine=True,
                iteration=self.done,
                iterations=self.total,
                **loss,
            )
        if self.probe is not None:
            self.probe.after(self.done, self.total, self.current, self.ctx)
        if out_of_time and self.done < self.total:
            self.stopped_early = True
            return True
        return False

    def state_dict(self) -> dict[str, Any]:
        """The progress so far, for a checkpoint (:mod:`distillbench.harness.checkpoint`)."""
        keys = ("done", "window_sum", "window_start", "last", "curve", "stopped_early")
        return {key: getattr(self, key) for key in keys}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from :meth:`state_dict` (the time budget counts from the resume)."""
        for key, value in state.items():
            setattr(self, key, value)

    def meta(self) -> dict[str, Any]:
        """Iterations planned and done, early stop, last loss and the loss curve, for ``DistilledSet.meta``."""
        return {
            "iterations": self.total,
            "iterations_done": self.done,
            "stopped_early": self.stopped_early,
            "final_loss": float(self.last),
            "loss_curve": self.curve,
        }
