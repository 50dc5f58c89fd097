"""``torch.compile`` for the CPU evaluation engine, where it pays.

On the CPU, what remains of an evaluation step after the convolutions is memory traffic: instance
norm, ReLU and average pooling, forward and backward, each a pass over the activations. Inductor
fuses them into a few generated kernels. Measured on the 2-core development machine (ConvNet-3
width 128, 100 MNIST images per step, micro-batches of 25, two threads), one training step:
eager 0.30 s, compiled 0.25 s. The cost is compiling, once per process and network
shape. On this machine that took 30-90 s with an empty Inductor cache and 3-13 s with a warm one
(``/tmp/torchinductor_<user>``). That pays off over a protocol's thousand-step runs, but not over a
test's ten steps.

``DISTILLBENCH_COMPILE`` controls it: ``auto`` (default) compiles on the CPU when one model trains at
least :data:`MIN_STEPS` steps and a C++ compiler is on the PATH (Inductor needs one); ``on`` compiles
whenever the model is on the CPU; ``off`` never compiles. CUDA evaluation is not compiled here:
the batched engine owns the GPU path. If compiling fails at the first step, the model trains eagerly
and a warning says why.
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from distillbench.harness.errors import ConfigError

COMPILE_ENV = "DISTILLBENCH_COMPILE"
COMPILE_SETTINGS = ("auto", "on", "off")
# A thousand steps save ~50-100 s against a cold compile of 30-90 s (figures in the docstring).
MIN_STEPS = 1000

log = logging.getLogger(__name__)


def compile_setting() -> str:
    """``$DISTILLBENCH_COMPILE`` (``auto`` if unset); raises ``ConfigError`` for anything else."""
    value = os.environ.get(COMPILE_ENV, "").strip().lower() or "auto"
    if value not in COMPILE_SETTINGS:
        raise ConfigError(f"{COMPILE_ENV}={value!r} is not valid; use {', '.join(COMPILE_SETTINGS)}")
    return value


def have_cxx() -> bool:
    """Whether a C++ compiler Inductor can call is on the PATH (``$CXX``, ``c++``, ``g++`` or ``clang++``)."""
    names = [os.environ.get("CXX", ""), "c++", "g++", "clang++"]
    return any(name and shutil.which(name) for name in names)


def should_compile(device: torch.device, steps: int) -> bool:
    """Whether a model on ``device`` training ``steps`` steps is compiled (see the module docstring)."""
    setting = compile_setting()
    if setting == "off" or device.type != "cpu":
        return False
    if setting == "on":
        if not have_cxx():
            raise ConfigError(f"{COMPILE_ENV}=on needs a C++ compiler on the PATH (set CXX or install g++)")
        return True
    return steps >= MIN_STEPS and have_cxx()


class _FirstCallFallback:
    """Calls the compiled module (or function); if its first call raises, warns and runs eagerly from then on."""

    def __init__(self, model: Callable[..., Any]) -> None:
        self.model = model
        self.compiled: Callable[..., Any] | None = torch.compile(model)
        self.tried = False

    def __call__(self, *args: Any) -> Any:
        if self.compiled is None:
            return self.model(*args)
        if self.tried:
            return self.compiled(*args)
        self.tried = True
        try:
            return self.compiled(*args)
        except Exception as exc:  # noqa: BLE001 - any compiler failure: fall back, say why
            log.warning("torch.compile failed (%s: %s); training this model eagerly", type(exc).__name__, exc)
            self.compiled = None
            return self.model(*args)


def first_call_fallback(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``torch.compile(fn)``, run eagerly instead (with a warning) if its first call fails to compile.

    For the batched engine's vmapped loss (:mod:`~distillbench.harness.batched`, option ``compile``),
    which compiles on any device; :func:`training_forward` decides for the sequential engine.
    """
    return _FirstCallFallback(fn)


def training_forward(model: nn.Module, device: torch.device, steps: int) -> Callable[[torch.Tensor], torch.Tensor]:
    """The callable that computes ``model``'s logits while training: compiled if it pays, else the model."""
    return _FirstCallFallback(model) if should_compile(device, steps) else model
