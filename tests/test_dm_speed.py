"""DM's compiled CPU path (issue 20) computes the set the eager path computes.

``dm`` compiles its embedding on CPU runs of 1,000 iterations or more (``methods/dm.py``,
``FastEmbed``). These tests pin what that may change and what it may not:

* the eager path is still the loop ``benchmarks/run.py --ops dm_bias`` times as its baseline
  (``benchmarks/reference_loops.py``), exactly;
* the compiled path's plumbing (probe compile, micro-batched synthetic side, channels-last, dynamic
  batch size) draws nothing from the random stream and changes no arithmetic: with ``torch.compile``
  replaced by the identity it gives the eager set bit for bit;
* a compiler that fails falls back to the eager set, with a warning;
* really compiled (slow: it compiles), the set equals the eager one within float tolerance, with and
  without sample weights.
"""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path
from typing import Any

import pytest
import torch

from distillbench.harness import compiled
from distillbench.harness.plugins import DATASETS, METHODS, WEIGHTINGS
from distillbench.harness.seeding import torch_generator
from distillbench.harness.types import Context, DataBundle, DistilledSet

pytestmark = pytest.mark.usefixtures("one_thread")

SPEC = "dm[iterations=4,batch_real=16,net=convnet[width=16]]"
IPC = 2
WEIGHTS_SEED = 5


def reference_loops() -> Any:
    """``benchmarks/reference_loops.py`` as a module (benchmarks/ is not a package)."""
    path = Path(__file__).resolve().parent.parent / "benchmarks" / "reference_loops.py"
    spec = importlib.util.spec_from_file_location("reference_loops", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def distill(data: DataBundle, weights: torch.Tensor | None = None, spec: str = SPEC) -> DistilledSet:
    configured = METHODS.resolve(spec)
    method = configured.obj(configured.params)
    method.validate(data.info, IPC)
    return method.distill(data, IPC, Context(torch.device("cpu"), torch_generator(0), 0, weights=weights))


@pytest.fixture(scope="module")
def colored() -> DataBundle:
    configured = DATASETS.resolve("colored_mnist[base=digits,conflict=0.05]")
    return configured.obj(configured.params).load(Path("."))


@pytest.fixture(scope="module")
def kde_weights(colored: DataBundle) -> torch.Tensor:
    """``kde`` weights of colored digits (random encoder: no encoder training in a unit test)."""
    configured = WEIGHTINGS.resolve("kde[encoder=random]")
    return configured.obj(configured.params).compute(colored, Context(torch.device("cpu"), torch_generator(1), 1))


def identity_compile(fn: Any, **_kwargs: Any) -> Any:
    return fn


class TestEagerPath:
    def test_eager_dm_is_the_benchmark_baseline(self, digits: DataBundle, monkeypatch: pytest.MonkeyPatch) -> None:
        """dm with DISTILLBENCH_COMPILE=off is the frozen pre-issue-20 loop, bit for bit (weighted too)."""
        monkeypatch.setenv(compiled.COMPILE_ENV, "off")
        weights = torch.rand(len(digits.train), generator=torch_generator(WEIGHTS_SEED))
        for w in (None, weights):
            ours = distill(digits, w)
            frozen = reference_loops().dm_eager_before_issue20(
                digits,
                IPC,
                iterations=4,
                batch_real=16,
                network="convnet[width=16]",
                seed=0,
                generator=torch_generator(0),
                weights=w,
            )
            assert "compiled" not in ours.meta
            assert torch.equal(ours.x, frozen), "the eager dm no longer runs the loop benchmarks/run.py times"

    def test_short_runs_stay_eager(self, digits: DataBundle, monkeypatch: pytest.MonkeyPatch) -> None:
        """Under 'auto' a run below harness.compiled.MIN_STEPS iterations never compiles."""
        monkeypatch.delenv(compiled.COMPILE_ENV, raising=False)
        monkeypatch.setattr(compiled, "have_cxx", lambda: True)
        monkeypatch.setattr(torch, "compile", lambda *_a, **_k: pytest.fail("a short dm run compiled"))
        assert "compiled" not in distill(digits).meta


class TestCompiledPlumbing:
    @pytest.mark.parametrize("data_name", ["digits", "colored"])
    def test_identity_compiler_gives_the_eager_set(
        self, data_name: str, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """With torch.compile = identity the compiled path's set is the eager set exactly.

        So the compile probe draws nothing from ctx.generator and the micro-batched synthetic side
        computes what the whole batch does; only the compiler's own arithmetic may differ.
        """
        data = request.getfixturevalue(data_name)
        weights = request.getfixturevalue("kde_weights") if data_name == "colored" else None
        monkeypatch.setattr(compiled, "have_cxx", lambda: True)
        monkeypatch.setenv(compiled.COMPILE_ENV, "off")
        eager = distill(data, weights)
        monkeypatch.setenv(compiled.COMPILE_ENV, "on")
        monkeypatch.setattr(torch, "compile", identity_compile)
        # Two samples per micro-batch: the synthetic side (20 images) really is split.
        monkeypatch.setenv("DISTILLBENCH_MICROBATCH", "2")
        split = distill(data, weights)
        assert split.meta["compiled"] is True and split.meta["compile_seconds"] is not None
        assert torch.equal(split.x, eager.x)

    def test_failed_compile_runs_eagerly(
        self, digits: DataBundle, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
    ) -> None:
        """A compiler that fails on the probe leaves dm eager (same set) and says why."""

        def broken(_fn: Any, **_kwargs: Any) -> Any:
            def call(*_args: Any) -> torch.Tensor:
                raise RuntimeError("no compiler today")

            return call

        monkeypatch.setattr(compiled, "have_cxx", lambda: True)
        monkeypatch.setenv(compiled.COMPILE_ENV, "off")
        eager = distill(digits)
        monkeypatch.setenv(compiled.COMPILE_ENV, "on")
        monkeypatch.setattr(torch, "compile", broken)
        with caplog.at_level(logging.WARNING):
            out = distill(digits)
        assert out.meta["compiled"] is False
        assert torch.equal(out.x, eager.x)
        assert "torch.compile failed (RuntimeError: no compiler today); dm runs eagerly" in caplog.text


@pytest.mark.slow  # compiles two graphs: 10-20 s with a warm Inductor cache, 30-90 s with an empty one
class TestCompiledEqualsEager:
    @pytest.mark.parametrize("data_name", ["digits", "colored"])
    def test_sets_agree(self, data_name: str, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
        """Compiled and eager sets agree to float rounding after a few iterations (weighted on colored).

        Inductor sums in another order than oneDNN and ATen's group norm: embeddings differ by about 1e-6
        relative; four iterations keep the sets within 1e-5 (measured: 7e-7 on digits).
        """
        data = request.getfixturevalue(data_name)
        weights = request.getfixturevalue("kde_weights") if data_name == "colored" else None
        monkeypatch.setenv(compiled.COMPILE_ENV, "off")
        eager = distill(data, weights)
        monkeypatch.setenv(compiled.COMPILE_ENV, "on")
        out = distill(data, weights)
        assert out.meta["compiled"] is True, "dm did not compile (see the warning in the log)"
        torch.testing.assert_close(out.x, eager.x, rtol=1e-5, atol=1e-5)
