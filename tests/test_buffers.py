"""Expert trajectories as a cached, content-addressed artefact (methods/_experts.py, harness/artefacts.py)."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
import torch

from distillbench.harness import artefacts
from distillbench.harness.cli import main
from distillbench.harness.errors import ConfigError, DataError
from distillbench.harness.networks import build_network
from distillbench.harness.seeding import derive_seed, torch_generator
from distillbench.harness.store import location
from distillbench.harness.types import DataBundle, Split
from distillbench.methods import _experts
from distillbench.methods._experts import (
    ExpertRecipe,
    buffer_id,
    get_buffer,
    gsam_direction,
    gsam_perturbation,
    gsam_step,
    list_buffers,
    load_buffer,
)
from distillbench.methods.base import DistillationMethod

from .conftest import temp_plugin

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny networks on a shared machine (conftest.py)

TINY = ExpertRecipe(net="convnet[width=8]", num_experts=2, epochs=2)


@pytest.fixture(autouse=True)
def _fresh_memo():
    """Every test reads trajectories from the files, as a new process would."""
    _experts._MEMO.clear()
    yield
    _experts._MEMO.clear()


def _with_splits(data: DataBundle, **splits: Split) -> DataBundle:
    return dataclasses.replace(data, **splits)


def _noise_like(split: Split, seed: int) -> Split:
    gen = torch_generator(seed)
    return Split(torch.randn(split.x.shape, generator=gen), split.y.flip(0))


def _trajectories(buffer) -> list[torch.Tensor]:
    return [buffer.trajectory(i) for i in range(buffer.num_experts)]


# --------------------------------------------------------------------------------------------- recipe
class TestRecipe:
    """Validation and the content address."""

    @pytest.mark.parametrize(
        ("field", "value", "message"),
        [
            ("num_experts", 0, "num_experts must be a positive integer, got 0"),
            ("epochs", 1.5, "epochs must be a positive integer, got 1.5"),
            ("batch_size", True, "batch_size must be a positive integer, got True"),
            ("lr", float("nan"), "lr must be a finite number > 0, got nan"),
            ("lr", 0.0, "lr must be a finite number > 0, got 0.0"),
            ("momentum", 1.0, "momentum must be in [0, 1), got 1.0"),
            ("weight_decay", -1e-4, "weight_decay must be a finite number >= 0"),
            ("augment", "kornia", "augment must be 'dsa' or 'none', got 'kornia'"),
            ("flat", "yes", "flat must be true or false"),
            ("rho", float("inf"), "rho must be a finite number > 0"),
            ("alpha", -0.1, "alpha must be a finite number >= 0"),
            ("net", "", "net must be a network spec"),
        ],
    )
    def test_bad_fields_are_value_errors(self, field, value, message):
        """Each bad field is a ValueError (a ConfigError) naming the field, the value and what is valid."""
        with pytest.raises(ValueError, match="^" + re.escape(f"expert recipe: {message}")):
            ExpertRecipe(**{field: value})
        assert issubclass(ConfigError, ValueError)

    def test_id_depends_on_data_and_recipe(self, digits):
        """Same inputs, same id; the seed, the optimiser (flat), dataset params and train tensors change it."""
        from distillbench.harness.plugins import DATASETS

        base = buffer_id(digits, TINY)
        assert base == buffer_id(digits, ExpertRecipe(net="convnet[width=8]", num_experts=2, epochs=2))
        assert len(base) == 16
        assert buffer_id(digits, dataclasses.replace(TINY, seed=1)) != base
        assert buffer_id(digits, dataclasses.replace(TINY, lr=0.02)) != base
        flat = dataclasses.replace(TINY, flat=True)
        assert buffer_id(digits, flat) != base
        assert buffer_id(digits, dataclasses.replace(flat, alpha=0.3)) != buffer_id(digits, flat)
        configured = DATASETS.resolve("digits[imbalance=10]")
        assert buffer_id(configured.obj(configured.params).load(Path(".")), TINY) != base
        assert buffer_id(_with_splits(digits, train=_noise_like(digits.train, 0)), TINY) != base

    def test_id_ignores_what_cannot_change_the_experts(self, digits):
        """Validation/test data, GSAM knobs without flat, and equivalent network spellings share one id."""
        base = buffer_id(digits, TINY)
        changed = _with_splits(digits, val=_noise_like(digits.val, 1), test=_noise_like(digits.test, 2))
        assert buffer_id(changed, TINY) == base
        assert buffer_id(digits, dataclasses.replace(TINY, alpha=0.9, rho=0.5)) == base
        default_width = ExpertRecipe(net="convnet", num_experts=2, epochs=2)
        assert buffer_id(digits, default_width) == buffer_id(
            digits, dataclasses.replace(default_width, net="convnet[width=128]")
        )

    def test_recipe_that_does_not_fit_the_data(self, digits):
        """An unknown network or one too deep for 8x8 inputs fails before any training."""
        with pytest.raises(KeyError, match="nonet"):
            get_buffer(digits, dataclasses.replace(TINY, net="nonet"))
        with pytest.raises(ConfigError):
            get_buffer(digits, dataclasses.replace(TINY, net="convnet[width=8,depth=5]"))


# ---------------------------------------------------------------------------------------------- build
class TestBuild:
    """What a built buffer holds, and that it is built once."""

    def test_shapes_and_snapshot_zero_is_the_init(self, digits, tmp_path):
        """[epochs + 1, num_params] float32 per expert; row 0 is build_network's init from the expert's seed."""
        buffer = get_buffer(digits, TINY, results=tmp_path)
        net = build_network(TINY.net, digits.info, torch_generator(derive_seed(TINY.seed, "expert", 1)))
        assert buffer.param_shapes == [(n, tuple(p.shape)) for n, p in net.named_parameters()]
        assert buffer.num_params == sum(p.numel() for p in net.parameters())
        assert (buffer.num_experts, buffer.epochs) == (2, 2)
        traj = buffer.trajectory(1)
        assert traj.shape == (3, buffer.num_params) and traj.dtype == torch.float32 and traj.device.type == "cpu"
        assert torch.equal(traj[0], torch.cat([p.detach().reshape(-1) for p in net.parameters()]))
        assert not torch.equal(traj[1], traj[0]) and not torch.equal(traj[2], traj[1]), "every epoch moves"
        assert not torch.equal(buffer.trajectory(0)[0], traj[0]), "experts start from different inits"
        with pytest.raises(IndexError, match="experts 0..1"):
            buffer.trajectory(2)

    def test_layout_and_sidecar(self, digits, tmp_path):
        """<results>/buffers/<id>/expert_NNN.safetensors + buffer.json with what the set metadata needs."""
        messages: list[tuple[float, str]] = []
        buffer = get_buffer(digits, TINY, results=tmp_path, progress=lambda f, m: messages.append((f, m)))
        folder = tmp_path / "buffers" / buffer.id
        assert sorted(p.name for p in folder.iterdir()) == [
            "buffer.json",
            "expert_000.safetensors",
            "expert_001.safetensors",
        ]
        meta = json.loads((folder / "buffer.json").read_text())
        assert meta["id"] == buffer.id and meta["dataset"] == "digits" and meta["recipe"]["net"] == "convnet[width=8]"
        assert meta["data_fingerprint"] == artefacts.data_fingerprint(digits)
        assert meta["experts_reused"] == 0 and meta["device"] == "cpu" and meta["builder"]["pid"] == os.getpid()
        assert [e["expert"] for e in meta["experts"]] == [0, 1]
        assert all(0.0 <= e["val_acc"] <= 1.0 and e["seconds"] > 0 for e in meta["experts"])
        assert "package_version" in meta and meta["param_shapes"][0] == ["features.0.weight", [8, 1, 3, 3]]
        assert messages[-1] == (1.0, f"buffer {buffer.id}: expert 2/2, epoch 2/2")
        assert messages[0] == (0.25, f"buffer {buffer.id}: expert 1/2, epoch 1/2")
        ref = buffer.reference()
        json.dumps(ref)
        assert ref["id"] == buffer.id and ref["uri"] == str(folder) and ref["build_seconds"] == buffer.build_seconds
        assert ref["expert_val_acc"] == [e["val_acc"] for e in meta["experts"]] and ref["recipe"]["num_experts"] == 2

    def test_second_call_reuses(self, digits, tmp_path):
        """The second get_buffer builds nothing (build_seconds 0.0) and reads the same tensors."""
        first = get_buffer(digits, TINY, results=tmp_path)
        assert first.build_seconds > 0
        files = sorted((tmp_path / "buffers" / first.id).iterdir())
        stamps = [f.stat().st_mtime_ns for f in files]
        _experts._MEMO.clear()
        again = get_buffer(digits, TINY, results=tmp_path, progress=lambda f, m: pytest.fail(f"no progress: {m}"))
        assert again.build_seconds == 0.0 and again.id == first.id and again.meta == first.meta
        assert [f.stat().st_mtime_ns for f in files] == stamps
        for a, b in zip(_trajectories(first), _trajectories(again), strict=True):
            assert torch.equal(a, b)
        loaded = load_buffer(tmp_path / "buffers" / first.id)
        assert loaded.recipe == TINY and torch.equal(loaded.trajectory(1), first.trajectory(1))

    def test_reproducible_and_train_split_only(self, digits, tmp_path):
        """Two builds agree bit for bit; other validation and test data change neither the id nor the trajectories."""
        first = get_buffer(digits, TINY, results=tmp_path / "a")
        changed = _with_splits(digits, val=_noise_like(digits.val, 1), test=_noise_like(digits.test, 2))
        second = get_buffer(changed, TINY, results=tmp_path / "b")
        assert second.id == first.id and second.build_seconds > 0
        for a, b in zip(_trajectories(first), _trajectories(second), strict=True):
            assert torch.equal(a, b)

    def test_flat_experts_differ_from_sgd(self, digits, tmp_path):
        """flat=True (GSAM) is another buffer: same init, other steps."""
        sgd = get_buffer(digits, TINY, results=tmp_path)
        flat = get_buffer(digits, dataclasses.replace(TINY, flat=True), results=tmp_path)
        assert flat.id != sgd.id and flat.meta["recipe"]["flat"] is True
        assert torch.equal(flat.trajectory(0)[0], sgd.trajectory(0)[0])
        assert not torch.allclose(flat.trajectory(0)[-1], sgd.trajectory(0)[-1])
        assert {e["optimizer"] for e in list_buffers(tmp_path)} == {"sgd", "flat"}

    def test_default_location_is_the_user_cache(self, digits, tmp_path, monkeypatch):
        """results=None: $DISTILLBENCH_CACHE/buffers."""
        monkeypatch.setenv("DISTILLBENCH_CACHE", str(tmp_path / "cache"))
        buffer = get_buffer(digits, dataclasses.replace(TINY, num_experts=1, epochs=1))
        assert (tmp_path / "cache" / "buffers" / buffer.id / "buffer.json").is_file()
        assert [e["id"] for e in list_buffers()] == [buffer.id]

    def test_threads_build_once(self, digits, tmp_path, monkeypatch):
        """Two threads of one worker asking at once: one trains, the other waits and loads."""
        calls: list[int] = []
        real = _experts.train_expert

        def slow(*args, **kwargs):
            calls.append(1)
            time.sleep(0.2)
            return real(*args, **kwargs)

        monkeypatch.setattr(_experts, "train_expert", slow)
        got = []
        threads = [
            threading.Thread(target=lambda: got.append(get_buffer(digits, TINY, results=tmp_path))) for _ in range(2)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert len(calls) == 2, "2 experts trained once, not twice each"
        assert sorted(b.build_seconds > 0 for b in got) == [False, True]

    def test_foreign_or_broken_sidecar_is_a_clear_error(self, digits, tmp_path):
        """A buffer.json that names another id says which folder to delete."""
        buffer = get_buffer(digits, TINY, results=tmp_path)
        sidecar = tmp_path / "buffers" / buffer.id / "buffer.json"
        sidecar.write_text(json.dumps({**buffer.meta, "id": "0123456789abcdef"}))
        with pytest.raises(DataError, match="delete the folder"):
            get_buffer(digits, TINY, results=tmp_path)
        with pytest.raises(DataError, match="no complete expert buffer"):
            load_buffer(tmp_path / "buffers" / "missing")


# ----------------------------------------------------------------------------------- processes, kills
_PRELUDE = textwrap.dedent(
    """
    import json, os, signal, sys, time
    from pathlib import Path
    import torch
    torch.set_num_threads(1)
    from distillbench.harness.plugins import DATASETS
    from distillbench.methods import _experts as X
    c = DATASETS.resolve("digits")
    data = c.obj(c.params).load(Path("."))
    recipe = X.ExpertRecipe(net="convnet[width=8]", num_experts=2, epochs=2)
    """
)

_TWO_BUILDERS = _PRELUDE + textwrap.dedent(
    """
    results, counter, ready, folder = sys.argv[1:5]
    real = X.train_expert
    def counting(*args, **kwargs):
        with open(counter, "a") as f:
            f.write(f"{os.getpid()}\\n")
        time.sleep(1.0)  # hold the lock long enough that the other process must wait
        return real(*args, **kwargs)
    X.train_expert = counting
    Path(ready).touch()
    while len(list(Path(folder).glob("ready*"))) < 2:  # start asking together
        time.sleep(0.01)
    messages = []
    b = X.get_buffer(data, recipe, results=results, progress=lambda f, m: messages.append(m))
    waited = any("waiting for another process" in m for m in messages)
    print(json.dumps({"id": b.id, "build_seconds": b.build_seconds, "pid": os.getpid(), "waited": waited}))
    """
)

_KILLED = _PRELUDE + textwrap.dedent(
    """
    def progress(fraction, message):
        if "expert 2/2" in message:  # expert 1 is written; die as a killed driver would
            os.kill(os.getpid(), signal.SIGKILL)
    X.get_buffer(data, recipe, results=sys.argv[1], progress=progress)
    """
)


def _python(script: str, *args: object) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-c", script, *map(str, args)], env=env, stdout=subprocess.PIPE, text=True)


class TestProcesses:
    """Several processes, and processes that die."""

    def test_two_processes_asking_at_once_build_once(self, digits, tmp_path):
        """Both get the same id; one trained (build_seconds > 0, named as builder), the other waited and loaded."""
        results, counter = tmp_path / "results", tmp_path / "count.txt"
        procs = [_python(_TWO_BUILDERS, results, counter, tmp_path / f"ready{i}", tmp_path) for i in range(2)]
        outs = [p.communicate(timeout=180)[0] for p in procs]
        assert [p.returncode for p in procs] == [0, 0]
        reports = [json.loads(out.strip().splitlines()[-1]) for out in outs]
        assert reports[0]["id"] == reports[1]["id"] == buffer_id(digits, TINY)
        builders = [r for r in reports if r["build_seconds"] > 0]
        assert len(builders) == 1, reports
        waiter = next(r for r in reports if r["build_seconds"] == 0.0)
        assert waiter["waited"], "the second process found the lock held and waited"
        trained = counter.read_text().split()
        assert trained == [str(builders[0]["pid"])] * 2, "2 experts trained once, all by the builder"
        meta = json.loads((results / "buffers" / reports[0]["id"] / "buffer.json").read_text())
        assert meta["builder"]["pid"] == builders[0]["pid"] and meta["experts_reused"] == 0

    def test_killed_build_resumes_with_finished_experts(self, digits, tmp_path, capsys):
        """A driver killed after expert 1 leaves it complete; the next call trains only expert 2, same tensors."""
        results = tmp_path / "results"
        proc = _python(_KILLED, results)
        proc.communicate(timeout=120)
        assert proc.returncode == -signal.SIGKILL
        folder = results / "buffers" / buffer_id(digits, TINY)
        assert sorted(p.name for p in folder.iterdir() if not p.name.startswith(".")) == ["expert_000.safetensors"]
        [partial] = list_buffers(results)
        assert partial["status"] == "partial" and partial["experts_written"] == 1
        assert (partial["dataset"], partial["num_experts"], partial["optimizer"]) == ("digits", 2, "sgd")
        assert partial["claimed_by"] is None, "local builds hold a file lock, not a claim"
        assert main(["buffers", "--results", str(results)]) == 0
        assert "partial (1/2)" in capsys.readouterr().out

        resumed = get_buffer(digits, TINY, results=results)  # the dead process's lock is gone with it
        assert resumed.build_seconds > 0 and resumed.meta["experts_reused"] == 1
        clean = get_buffer(digits, TINY, results=tmp_path / "clean")
        for a, b in zip(_trajectories(resumed), _trajectories(clean), strict=True):
            assert torch.equal(a, b)
        assert resumed.val_accuracies() == clean.val_accuracies()

    def test_foreign_expert_file_is_trained_again(self, digits, tmp_path, caplog):
        """A left-over expert file that does not belong to this buffer is replaced, not trusted."""
        folder = tmp_path / "buffers" / buffer_id(digits, TINY)
        folder.mkdir(parents=True)
        (folder / "expert_000.safetensors").write_bytes(b"not a safetensors file")
        with caplog.at_level(logging.WARNING):
            buffer = get_buffer(digits, TINY, results=tmp_path)
        assert buffer.meta["experts_reused"] == 0 and "training it again" in caplog.text
        assert buffer.trajectory(0).shape == (3, buffer.num_params)


# ----------------------------------------------------------------------------------------------- GSAM
class TestGSAM:
    """FTD's GSAM step on a quadratic, where every gradient is known in closed form."""

    H = torch.tensor([[3.0, 0.5, 0.0], [0.5, 1.0, 0.2], [0.0, 0.2, 2.0]], dtype=torch.float64)
    B = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)

    class Quadratic(torch.nn.Module):
        """L(w) = 0.5 w'Hw - b'w over w = (u, v): two parameters, so the norms must span both."""

        def __init__(self) -> None:
            super().__init__()
            self.u = torch.nn.Parameter(torch.tensor([0.7, -1.3], dtype=torch.float64))
            self.v = torch.nn.Parameter(torch.tensor([2.1], dtype=torch.float64))

    def loss(self, model: Quadratic) -> torch.Tensor:
        w = torch.cat([model.u, model.v])
        return 0.5 * w @ self.H @ w - self.B @ w

    def grad(self, w: torch.Tensor) -> torch.Tensor:
        return self.H @ w - self.B

    @pytest.mark.parametrize("alpha", [0.0, 0.4, 1.0])
    def test_direction_matches_the_formula(self, alpha):
        """d = g_p - alpha * g_perp with e = rho g w^2 / ||(|w| g)||, g_p = grad(w + e); w restored exactly."""
        rho = 0.05
        model = self.Quadratic()
        w = torch.cat([model.u, model.v]).detach().clone()
        g = self.grad(w)
        e = rho * g * w**2 / (torch.linalg.vector_norm(w.abs() * g) + 1e-12)
        gp = self.grad(w + e)
        g_perp = g - (g @ gp) / (g.norm() * gp.norm()) * g.norm() * gp / gp.norm()
        expected = gp - alpha * g_perp
        assert abs(float(g_perp @ gp)) < 1e-12, "g_perp is orthogonal to g_p"

        loss = gsam_step(model, lambda: self.loss(model), rho, alpha)
        got = torch.cat([model.u.grad, model.v.grad])
        torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)
        assert torch.equal(torch.cat([model.u, model.v]).detach(), w), "parameters restored bit for bit"
        assert float(loss) == pytest.approx(float(0.5 * w @ self.H @ w - self.B @ w))

        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        opt.step()
        torch.testing.assert_close(torch.cat([model.u, model.v]).detach(), w - 0.1 * expected)

    def test_pieces(self):
        """The perturbation's norm runs over all parameters; alpha 0 leaves the perturbed gradient."""
        params = [torch.tensor([1.0, -2.0]), torch.tensor([3.0])]
        grads = [torch.tensor([0.5, 0.5]), torch.tensor([-1.0])]
        norm = torch.linalg.vector_norm(torch.tensor([0.5, 1.0, 3.0]))
        e = gsam_perturbation(params, grads, rho=0.1)
        torch.testing.assert_close(e[0], 0.1 * torch.tensor([0.5, 2.0]) / norm)
        torch.testing.assert_close(e[1], 0.1 * torch.tensor([-9.0]) / norm)
        perturbed = [torch.tensor([1.0, 0.0]), torch.tensor([0.0])]
        assert torch.equal(gsam_direction(grads, perturbed, 0.0)[0], perturbed[0])
        d = gsam_direction(grads, perturbed, 1.0)  # g_perp = g minus its component along g_p = (0, .5, -1)
        torch.testing.assert_close(torch.cat(d), torch.tensor([1.0, -0.5, 1.0]))


# ------------------------------------------------------------------------------------------------- S3
_PREFIXES = iter(range(10**6))


@pytest.fixture
def s3_results(s3_endpoint, monkeypatch):
    """A fresh prefix in the fake bucket; the claim's settle wait shortened (one process, no race to separate)."""
    monkeypatch.setattr(artefacts, "CLAIM_SETTLE_S", 0.05)
    return f"s3://bench/b{next(_PREFIXES)}?endpoint_override={s3_endpoint}&scheme=http&region=us-east-1"


class TestObjectStore:
    """The same buffer on S3 (moto): built, listed, loaded; claims instead of file locks."""

    def test_build_reuse_list_and_load(self, digits, tmp_path, s3_results):
        """Built on S3 equals built locally; the claim object is gone afterwards; a second call reuses."""
        remote = get_buffer(digits, TINY, results=s3_results)
        local = get_buffer(digits, TINY, results=tmp_path)
        assert remote.id == local.id and remote.build_seconds > 0
        folder = location(s3_results) / "buffers" / remote.id
        assert [f.name for f in folder.files("")] == ["buffer.json", "expert_000.safetensors", "expert_001.safetensors"]
        _experts._MEMO.clear()
        again = get_buffer(digits, TINY, results=s3_results)
        assert again.build_seconds == 0.0
        for a, b in zip(_trajectories(again), _trajectories(local), strict=True):
            assert torch.equal(a, b)
        [entry] = list_buffers(s3_results)
        assert entry["id"] == remote.id and entry["status"] == "built" and entry["size_bytes"] > 0
        assert "?" not in again.reference()["uri"], "no endpoint or options in the reference"
        assert torch.equal(load_buffer(folder).trajectory(0), local.trajectory(0))

    @pytest.mark.parametrize("holder", ["expired", "dead-local-process"])
    def test_stale_claim_is_taken_over_at_once(self, digits, s3_results, holder):
        """A claim whose heartbeat is older than the expiry, or whose process on this host is gone, blocks nobody."""
        if holder == "expired":
            claim = {"owner": "x", "host": "elsewhere", "pid": 1, "time": time.time() - 2 * artefacts.CLAIM_EXPIRY_S}
        else:
            gone = subprocess.Popen([sys.executable, "-c", "pass"])
            gone.wait()
            claim = {"owner": "x", "host": socket.gethostname(), "pid": gone.pid, "time": time.time()}
        bid = buffer_id(digits, TINY)
        artefacts.write_json(location(s3_results) / "buffers" / bid / "claim.json", claim)
        start = time.monotonic()
        buffer = get_buffer(digits, TINY, results=s3_results)
        assert buffer.build_seconds > 0 and time.monotonic() - start < 30
        assert artefacts.claim_holder(location(s3_results) / "buffers", bid) is None

    def test_live_claim_makes_others_wait_until_it_expires(self, digits, s3_results, monkeypatch):
        """A foreign claim that stops beating is waited on for CLAIM_EXPIRY_S (shortened here), then taken over."""
        monkeypatch.setattr(artefacts, "CLAIM_EXPIRY_S", 1.5)
        monkeypatch.setattr(artefacts, "POLL_S", 0.1)
        bid = buffer_id(digits, TINY)
        claim = {"owner": "x", "host": "another-node", "pid": 1, "time": time.time()}
        artefacts.write_json(location(s3_results) / "buffers" / bid / "claim.json", claim)
        [entry] = list_buffers(s3_results)
        assert entry["status"] == "partial" and entry["claimed_by"] == "another-node:1"
        messages: list[str] = []
        start = time.monotonic()
        buffer = get_buffer(digits, TINY, results=s3_results, progress=lambda f, m: messages.append(m))
        assert time.monotonic() - start >= 1.5
        assert buffer.build_seconds > 0
        assert messages[0] == f"buffer {bid}: waiting for another process building it (0/2 experts written)"


# ------------------------------------------------------------------------------------------------ CLI
class _TinyTrajectoryMethod(DistillationMethod):
    """A throwaway trajectory-matching method: only its expert recipe matters here."""

    name = "tiny_tm"

    def expert_recipe(self, info):
        return TINY

    def distill(self, data, ipc, ctx):  # pragma: no cover - never distils in these tests
        raise NotImplementedError


class TestCLI:
    """distillbench buffers [build]."""

    def test_build_then_list(self, tmp_path, capsys):
        """build trains once (exit 0), again finds it built; the list shows it as a table row."""
        results = str(tmp_path / "results")
        args = ["buffers", "build", "--dataset", "digits", "--method", "tiny_tm", "--results", results]
        with temp_plugin("methods", "tiny_tm", _TinyTrajectoryMethod):
            assert main([*args, "--device", "cpu"]) == 0
            first = capsys.readouterr().out
            assert main(args) == 0
            second = capsys.readouterr().out
        assert "built in" in first and "2 experts x 2 epochs, sgd" in first
        assert "already built" in second
        assert main(["buffers", "--results", results]) == 0
        table = capsys.readouterr().out.splitlines()
        assert table[0] == f"expert buffers under {tmp_path / 'results' / 'buffers'}"
        assert table[1].split() == ["id", "dataset", "net", "experts", "x", "epochs", "opt", "MB", "age", "status"]
        row = table[2].split()
        assert row[:6] == [row[0], "digits", "convnet[width=8]", "2", "x", "2"] and row[6] == "sgd"
        assert row[-1] == "built" and len(row[0]) == 16

    def test_empty_list(self, tmp_path, capsys):
        """No buffers is not an error."""
        assert main(["buffers", "list", "--results", str(tmp_path)]) == 0
        assert capsys.readouterr().out.startswith("no expert buffers under")

    @pytest.mark.parametrize(
        ("args", "message"),
        [
            (["--dataset", "digits", "--method", "random"], "error: method 'random' trains on no expert trajectories"),
            (["--dataset", "digits"], "error: 'buffers build' needs --dataset and --method"),
            (["--dataset", "nodata", "--method", "tiny_tm"], "error: unknown dataset 'nodata'"),
            (["--dataset", "digits", "--method", "tiny_tm", "--device", "gpu0"], "error: --device 'gpu0' is not a"),
        ],
    )
    def test_errors_exit_2_with_one_line(self, tmp_path, capsys, args, message):
        """Bad input: exit status 2 and one line starting with error:, nothing built."""
        with temp_plugin("methods", "tiny_tm", _TinyTrajectoryMethod):
            assert main(["buffers", "build", "--results", str(tmp_path), *args]) == 2
        err = capsys.readouterr().err
        assert err.startswith(message) and err.count("\n") == 1
        assert not (tmp_path / "buffers").exists()

    def test_build_flags_without_build_are_refused(self, capsys):
        """--dataset on the list action is a mistake worth saying."""
        assert main(["buffers", "--dataset", "digits"]) == 2
        assert capsys.readouterr().err == "error: --dataset applies to 'buffers build' only\n"
