from __future__ import annotations

from pathlib import Path

import pytest
import torch

from distillbench.harness import store
from distillbench.harness.errors import DivergedError
from distillbench.harness.runner import run_trial
from distillbench.harness.spec import TrialSpec
from distillbench.methods.base import DistillationMethod

from .conftest import temp_plugin


class Exploding(DistillationMethod):
    """Raises inside distill, like a buggy plugin."""

    name = "exploding"

    def distill(self, data, ipc, ctx):
        raise RuntimeError("boom from plugin")


class Diverging(DistillationMethod):
    """Raises DivergedError, like a method whose loss became NaN."""

    name = "diverging"

    def distill(self, data, ipc, ctx):
        raise DivergedError("loss is nan at iteration 3")


class Hungry(DistillationMethod):
    """Touches 400 MB before returning random real samples, like a memory-hungry method."""

    name = "hungry"

    def distill(self, data, ipc, ctx):
        from distillbench.methods.random import RandomReal

        block = torch.ones(100_000_000)  # 400 MB, written so the pages are resident
        del block
        return RandomReal().distill(data, ipc, ctx)


class TestRunTrial:
    def test_ok_row_has_every_column(self, tiny_protocol, tmp_path):
        """A successful trial returns a complete row with metrics, cost and provenance, and saves its set."""
        spec = TrialSpec("digits", "random", ipc=2, seed=0, protocol="tiny-test", grid="t")
        (row,) = run_trial(spec, results=tmp_path)
        assert row["status"] == "ok", row["error"]
        assert set(row) == set(store.COLUMN_NAMES)
        assert 0.0 <= row["acc_mean"] <= 1.0 and len(row["acc_per_model"]) == tiny_protocol.n_models
        assert len(row["acc_per_class"]) == 10 and row["val_acc_mean"] is not None
        assert row["n_distilled"] == 20 and row["set_bytes"] == 20 * 64 * 4 + 20 * 8
        assert row["train_class_counts"] == [124, 128, 124, 128, 127, 127, 127, 125, 121, 126]
        assert row["torch_version"] == torch.__version__ and row["end_time"] >= row["start_time"]
        assert row["trial_id"] == spec.resolve().trial_id
        assert (tmp_path / row["set_path"]).is_file()

    def test_deterministic(self, tiny_protocol):
        """The same spec gives the same accuracies (seeds are derived, never global)."""
        spec = TrialSpec("digits", "random", ipc=1, seed=3, protocol="tiny-test")
        torch.manual_seed(123)  # global state must not matter
        first = run_trial(spec)[0]["acc_per_model"]
        torch.manual_seed(999)
        assert run_trial(spec)[0]["acc_per_model"] == first

    def test_set_reused_across_protocols(self, tiny_protocol, tmp_path):
        """A set already in the store is evaluated again without distilling it again."""
        (first,) = run_trial(TrialSpec("digits", "random", 1, protocol="tiny-test"), results=tmp_path)
        (again,) = run_trial(TrialSpec("digits", "random", 1, protocol="tiny-test"), results=tmp_path)
        assert not first["set_reused"] and again["set_reused"] and again["distill_seconds"] == 0.0
        assert again["acc_per_model"] == first["acc_per_model"]

    @pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="per-trial CPU peaks need Linux /proc")
    def test_cpu_peak_memory_is_per_trial(self, tiny_protocol):
        """In one process, a small trial after a 400 MB one reports its own peak, not the process's."""
        with temp_plugin("methods", "hungry", Hungry):
            (big,) = run_trial(TrialSpec("digits", "hungry", 1, protocol="tiny-test"), device="cpu")
        (small,) = run_trial(TrialSpec("digits", "random", 1, protocol="tiny-test"), device="cpu")
        assert big["status"] == small["status"] == "ok", (big["error"], small["error"])
        assert big["peak_memory_bytes"] > small["peak_memory_bytes"] + 300e6, (
            f"peaks {big['peak_memory_bytes'] / 1e6:.0f} MB (400 MB trial) and "
            f"{small['peak_memory_bytes'] / 1e6:.0f} MB (small trial after it): it inherited the process's peak"
        )

    def test_plugin_error_becomes_error_row(self, tiny_protocol):
        """An exception inside a method ends the trial with status error and the message, not a crash."""
        with temp_plugin("methods", "exploding", Exploding):
            (row,) = run_trial(TrialSpec("digits", "exploding", 1, protocol="tiny-test"))
        assert row["status"] == "error"
        assert row["error"].startswith("RuntimeError: boom from plugin")
        assert row["acc_mean"] is None and row["trial_id"]

    def test_divergence_becomes_diverged_row(self, tiny_protocol):
        """A DivergedError ends the trial with status diverged."""
        with temp_plugin("methods", "diverging", Diverging):
            (row,) = run_trial(TrialSpec("digits", "diverging", 1, protocol="tiny-test"))
        assert row["status"] == "diverged" and "loss is nan" in row["error"]

    def test_invalid_spec_becomes_error_row(self):
        """run_trial never raises: even an unknown method is reported in the row."""
        (row,) = run_trial(TrialSpec("digits", "nosuch", 1, protocol="quick-v1"))
        assert row["status"] == "error" and "unknown method 'nosuch'" in row["error"]

    @pytest.mark.parametrize("method", ["herding[train_epochs=1]", "dm[iterations=5,batch_real=16]"])
    def test_builtin_methods_end_to_end(self, tiny_protocol, method):
        """Herding and DM run through the runner and are scored above chance on digits."""
        (row,) = run_trial(TrialSpec("digits", method, ipc=1, protocol="tiny-test"))
        assert row["status"] == "ok", row["error"]
        assert row["acc_mean"] > 0.2, f"{method}: accuracy {row['acc_mean']:.3f} is near chance (0.1)"


class TestCrossArchitecture:
    def test_one_row_per_network(self, tiny_protocol, tmp_path):
        """A protocol with several networks gives one row per network, all in the trial's one file."""
        import dataclasses

        from distillbench.harness.plugins import PROTOCOLS

        cross = dataclasses.replace(tiny_protocol, name="tiny-cross", networks=("convnet[width=16]", "mlp[hidden=32]"))
        with temp_plugin("protocols", "tiny-cross", cross):
            rows = run_trial(TrialSpec("digits", "random", 1, protocol="tiny-cross"), results=tmp_path)
            assert [r["eval_network"] for r in rows] == ["convnet[width=16]", "mlp[hidden=32]"]
            assert len({r["trial_id"] for r in rows}) == 1 and all(r["status"] == "ok" for r in rows)
            store.write_rows(tmp_path, rows)
            assert len(store.read_rows([tmp_path])) == 2
            assert store.existing_trial_ids(tmp_path, status=("ok",)) == {rows[0]["trial_id"]}
        assert "tiny-cross" not in PROTOCOLS


class TestWeightingSeed:
    """Sample weights depend on the data, the weighting and the trial seed, not on the method or IPC."""

    def test_same_weights_across_methods_and_ipcs(self, tiny_protocol):
        from distillbench.harness.runner import distill_set, load_data
        from distillbench.harness.spec import resolve_trial
        from distillbench.harness.stages import Weighting

        seen: list[int] = []

        class Recording(Weighting):
            name = "recording"

            def compute(self, data, ctx):
                seen.append(ctx.seed)
                return torch.ones(len(data.train))

        with temp_plugin("weightings", "recording", Recording):
            for method, ipc, seed in (
                ("dm[iterations=1]", 1, 0),
                ("dc[iterations=1]", 2, 0),
                ("dm[iterations=1]", 1, 1),
            ):
                resolved = resolve_trial(TrialSpec("digits", method, ipc, weighting="recording", seed=seed))
                distill_set(resolved, load_data(resolved, "."), device=torch.device("cpu"))
        assert seen[0] == seen[1], (
            "trials of one seed with other method parameters and IPC must see the same weighting seed"
        )
        assert seen[2] != seen[0], "another trial seed must give the weighting another seed"
