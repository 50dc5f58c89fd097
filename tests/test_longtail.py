"""Long-tailed benchmark: the shared teacher cache, the teacher / adsa label stages, sre2l, online relabelling."""

from __future__ import annotations

import dataclasses
import math
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

from distillbench.harness.errors import ConfigError, DataError, IncompatibleError
from distillbench.harness.plugins import DATASETS, LABELS, METHODS
from distillbench.harness.seeding import torch_generator
from distillbench.harness.types import Context, DataBundle, DatasetInfo, DistilledSet
from distillbench.methods import teacher as teacher_mod
from distillbench.methods.relabel import (
    calibrate,
    confidence_spread,
    online_relabeler,
    search_tau,
    tau_grid,
)
from distillbench.methods.teacher import TeacherRecipe, get_teacher, teacher_key
from tests.conftest import SHARED_DATA, needs_shared_data, temp_plugin

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny networks on a shared machine (conftest.py)

# A teacher small enough for unit tests (about a second on digits).
TINY_TEACHER = "teacher_net=convnet[norm=batchnorm,width=8],teacher_epochs=2,teacher_min_steps=0"
TINY_RECIPE = TeacherRecipe(net="convnet[norm=batchnorm,width=8]", epochs=2, min_steps=0)
SRE2L = f"sre2l[iterations=10,ipc_per_batch=2,{TINY_TEACHER}]"


@pytest.fixture(scope="module")
def digits_lt() -> DataBundle:
    configured = DATASETS.resolve("digits[imbalance=10]")
    return configured.obj(configured.params).load(Path("."))


@pytest.fixture
def counted_training(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts calls of ``train_teacher`` (and empties the in-process memo first)."""
    calls: list[int] = []
    real = teacher_mod.train_teacher

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(teacher_mod, "train_teacher", counting)
    monkeypatch.setattr(teacher_mod, "_MEMO", {})
    return calls


def ctx(cache_dir: Path | None = None, seed: int = 0) -> Context:
    return Context(torch.device("cpu"), torch_generator(seed), seed, cache_dir=cache_dir)


def random_set(data: DataBundle, ipc: int = 5, seed: int = 0) -> DistilledSet:
    method = METHODS.resolve("random")
    return method.obj(method.params).distill(data, ipc, ctx(seed=seed))


def stage(spec: str):
    configured = LABELS.resolve(spec)
    return configured.obj(configured.params)


class TestTeacherCache:
    """One training per (dataset, data, recipe); later calls load it."""

    def test_second_call_loads_instead_of_training(self, digits_lt, tmp_path, counted_training):
        """The first call trains and writes .safetensors + .json; a fresh process state loads them unchanged."""
        first = get_teacher(digits_lt, TINY_RECIPE, cache_dir=tmp_path)
        assert counted_training == [1]
        assert first.path.is_file() and first.path.with_suffix(".json").is_file()
        mtime = first.path.stat().st_mtime_ns
        assert get_teacher(digits_lt, TINY_RECIPE, cache_dir=tmp_path) is first  # in-process memo
        teacher_mod._MEMO.clear()  # as a new worker process would start
        again = get_teacher(digits_lt, TINY_RECIPE, cache_dir=tmp_path)
        assert counted_training == [1]
        assert again is not first and again.path.stat().st_mtime_ns == mtime
        x = digits_lt.test.x[:16]
        assert torch.equal(first.logits(x), again.logits(x))
        assert again.val_acc == first.val_acc and again.class_counts == digits_lt.train.class_counts(10)

    def test_key_depends_on_seed_recipe_and_dataset_params(self, digits, digits_lt):
        """Another seed, recipe or imbalance gives another key; the same inputs the same key."""
        base = teacher_key(digits_lt, TINY_RECIPE)
        assert teacher_key(digits_lt, TINY_RECIPE) == base
        assert teacher_key(digits_lt, dataclasses.replace(TINY_RECIPE, seed=1)) != base
        assert teacher_key(digits_lt, dataclasses.replace(TINY_RECIPE, epochs=3)) != base
        assert teacher_key(digits, TINY_RECIPE) != base

    def test_small_splits_train_at_least_min_steps(self):
        """20 epochs of a 559-image split are 180 steps; min_steps=1000 raises them to 112 epochs."""
        from distillbench.methods.teacher import teacher_epochs

        assert teacher_epochs(TeacherRecipe(epochs=20, batch_size=64, min_steps=1000), 559) == 112
        assert teacher_epochs(TeacherRecipe(epochs=20, batch_size=64, min_steps=1000), 2840) == 23
        assert teacher_epochs(TeacherRecipe(epochs=20, min_steps=0), 559) == 20

    def test_concurrent_callers_train_once(self, digits_lt, tmp_path, counted_training, monkeypatch):
        """Two threads asking at once: one trains under the file lock, the other waits and loads."""
        real = teacher_mod.train_teacher

        def slow(*args, **kwargs):
            time.sleep(0.3)  # widen the window in which the second caller arrives
            return real(*args, **kwargs)

        monkeypatch.setattr(teacher_mod, "train_teacher", slow)
        got = []
        threads = [
            threading.Thread(target=lambda: got.append(get_teacher(digits_lt, TINY_RECIPE, cache_dir=tmp_path)))
            for _ in range(2)
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert len(got) == 2 and counted_training == [1]
        assert sorted(p.suffix for p in tmp_path.iterdir()) == [".json", ".lock", ".safetensors"]

    def test_failed_write_leaves_no_partial_file(self, digits_lt, tmp_path, counted_training, monkeypatch):
        """A crash while writing leaves neither a temporary nor a half-written teacher; the next call retrains."""
        import safetensors.torch

        def broken(tensors, path):
            Path(path).write_bytes(b"half")
            raise OSError("disk full")

        monkeypatch.setattr(safetensors.torch, "save_file", broken)
        with pytest.raises(OSError, match="disk full"):
            get_teacher(digits_lt, TINY_RECIPE, cache_dir=tmp_path)
        assert [p.suffix for p in tmp_path.iterdir()] == [".lock"]
        monkeypatch.undo()

    @pytest.mark.slow
    def test_two_processes_train_once(self, tmp_path):
        """Two processes started together (as two Ray workers) train the teacher once between them."""
        script = (
            "import sys, torch; from pathlib import Path\n"
            "from distillbench.harness.plugins import DATASETS\n"
            "from distillbench.methods import teacher as T\n"
            "real = T.train_teacher\n"
            "def counting(*a, **k):\n"
            "    with open(sys.argv[2], 'a') as f: f.write('x\\n')\n"
            "    return real(*a, **k)\n"
            "T.train_teacher = counting\n"
            "c = DATASETS.resolve('digits[imbalance=10]'); d = c.obj(c.params).load(Path('.'))\n"
            "r = T.TeacherRecipe(net='convnet[norm=batchnorm,width=8]', epochs=2, min_steps=0)\n"
            "T.get_teacher(d, r, cache_dir=Path(sys.argv[1]))\n"
        )
        counter = tmp_path / "count.txt"
        cache = tmp_path / "cache"
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        procs = [subprocess.Popen([sys.executable, "-c", script, str(cache), str(counter)], env=env) for _ in range(2)]
        assert [p.wait(timeout=120) for p in procs] == [0, 0]
        assert counter.read_text().count("x") == 1
        assert not [p for p in cache.iterdir() if p.name.startswith(".")]


class TestADSAMaths:
    """tau search and the logit shift, on hand-made logits."""

    PRIOR = torch.tensor([400.0, 120.0, 40.0, 10.0])

    def biased_logits(self, per_class: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits that favour head classes by ``0.8 * log prior`` on top of a correct signal."""
        gen = torch_generator(0)
        classes = torch.arange(4).repeat_interleave(per_class)
        logits = 2.0 * torch.nn.functional.one_hot(classes, 4).float() + 0.3 * torch.randn(
            len(classes), 4, generator=gen
        )
        log_prior = (self.PRIOR / self.PRIOR.sum()).log()
        return logits + 0.8 * log_prior, classes

    def test_uniform_prior_gives_tau_zero(self):
        """With equal class counts the shift is the same for every class, so tau = 0 and labels are unchanged."""
        logits, classes = self.biased_logits()
        uniform = torch.full((4,), 0.25).log()
        found = search_tau(logits, classes, uniform, tau_grid(0.0, 3.0, 0.05))
        assert found.tau == 0.0
        assert torch.allclose(calibrate(logits, uniform, 1.7), torch.softmax(logits, 1), atol=1e-6)

    def test_long_tail_prior_gives_positive_tau_and_smaller_spread(self):
        """Head-biased logits: tau > 0 and the std of the per-class mean confidence drops."""
        logits, classes = self.biased_logits()
        log_prior = (self.PRIOR / self.PRIOR.sum()).log()
        found = search_tau(logits, classes, log_prior, tau_grid(0.0, 3.0, 0.05))
        assert found.tau > 0
        assert 0.4 <= found.tau <= 1.4  # the bias put in was 0.8 * log prior
        assert found.spread < found.spread_at_zero
        assert confidence_spread(calibrate(logits, log_prior, found.tau), classes, 4) == pytest.approx(found.spread)

    def test_calibration_is_a_shift_in_logit_space(self):
        """log p(tau) - log p(0) = -tau * log prior + a per-row constant; equal-prior classes keep their ratio."""
        logits, _ = self.biased_logits()
        log_prior = torch.tensor([0.5, 0.5, 0.1, 0.1]).log()
        tau = 1.3
        diff = calibrate(logits, log_prior, tau).log() - torch.softmax(logits, 1).log()
        expected = -tau * log_prior
        centred = (diff - diff.mean(1, keepdim=True)) - (expected - expected.mean())
        assert centred.abs().max() < 1e-5
        before, after = torch.softmax(logits, 1), calibrate(logits, log_prior, tau)
        assert torch.allclose(before[:, 0] / before[:, 1], after[:, 0] / after[:, 1], rtol=1e-5)
        # a confident sample tied between two equal-prior classes keeps them tied and on top of the others
        balanced = torch.tensor([[4.0, 4.0, 0.0, 0.0]])
        assert calibrate(balanced, log_prior, tau).argmax().item() in (0, 1)
        # the temperature divides the logits before the shift
        assert torch.allclose(calibrate(logits, log_prior, 0.0, 2.0), torch.softmax(logits / 2, 1), atol=1e-6)

    def test_empty_grid_is_an_error(self):
        """A grid with no tau is refused with the parameters to fix."""
        with pytest.raises(ConfigError, match="tau grid is empty.*tau_min <= tau_max"):
            tau_grid(1.0, 0.0, 0.1)
        with pytest.raises(ConfigError, match="tau grid is empty"):
            LABELS.resolve("adsa[tau_step=0]")
        with pytest.raises(ConfigError, match="tau grid is empty"):
            search_tau(torch.zeros(2, 2), torch.tensor([0, 1]), torch.zeros(2), torch.zeros(0))
        assert tau_grid(0.0, 3.0, 0.05).numel() == 61


class TestLabelStages:
    """``teacher`` and ``adsa`` on the images of any method."""

    def test_teacher_soft_labels_are_distributions(self, digits_lt, tmp_path):
        """Teacher labels are [n, C], non-negative, sum to 1, and record the teacher; the images are unchanged."""
        dset = random_set(digits_lt)
        out = stage(f"teacher[{TINY_TEACHER}]").apply(dset, digits_lt, ctx(tmp_path))
        assert out.y.shape == (50, 10) and bool((out.y >= 0).all())
        assert torch.allclose(out.y.sum(1), torch.ones(50), atol=1e-5)
        assert torch.equal(out.x, dset.x)
        assert out.meta["teacher"]["temperature"] == 1.0 and Path(out.meta["teacher"]["path"]).is_file()
        assert out.meta["image_class"] == dset.y.tolist() and out.meta["label_tau"] is None
        sharper = stage(f"teacher[temperature=0.5,{TINY_TEACHER}]").apply(dset, digits_lt, ctx(tmp_path))
        assert bool((sharper.y.max(1).values >= out.y.max(1).values - 1e-6).all())

    def test_adsa_records_tau_and_evens_out_confidence(self, digits_lt, tmp_path):
        """adsa picks tau on the set, stores it, and its labels have a smaller class-confidence spread."""
        dset = random_set(digits_lt)
        out = stage(f"adsa[{TINY_TEACHER}]").apply(dset, digits_lt, ctx(tmp_path))
        tau = out.meta["label_tau"]
        assert tau is not None and 0.0 <= tau <= 3.0
        assert torch.allclose(out.y.sum(1), torch.ones(50), atol=1e-5)
        assert out.meta["adsa"]["spread"] <= out.meta["adsa"]["spread_tau0"]

    def test_bad_inputs_are_clear_errors(self, digits_lt):
        """temperature <= 0, a text dataset, and samples that are not images are refused with a fix."""
        with pytest.raises(ConfigError, match="temperature must be a positive number"):
            LABELS.resolve("teacher[temperature=0]")
        with pytest.raises(ConfigError, match="temperature must be a positive number"):
            LABELS.resolve("adsa[temperature=-1]")
        text = DatasetInfo(name="sst2", modality="text", num_classes=2, shape=(40,), class_names=("a", "b"))
        with pytest.raises(IncompatibleError, match="needs image data.*use labels native"):
            LABELS.get("adsa").check(METHODS.get("random"), text)
        tokens = DistilledSet(torch.zeros(4, 40), torch.tensor([0, 1, 0, 1]))
        with pytest.raises(IncompatibleError, match="relabels images of shape"):
            stage("teacher").apply(tokens, digits_lt, ctx())


class TestRunner:
    """Trial identity, reuse and the ``label_tau`` column."""

    def test_label_stages_get_their_own_set_but_the_same_images(self, tmp_path, tiny_protocol):
        """native / teacher / adsa sets have distinct distill ids; teacher never reuses the native set as is."""
        from distillbench.harness.runner import run_trial
        from distillbench.harness.spec import TrialSpec

        common = {"dataset": "digits[imbalance=10]", "method": "random", "ipc": 5, "protocol": "tiny-test"}
        rows = {
            labels: run_trial(TrialSpec(labels=labels, **common), results=tmp_path)[0]
            for labels in ("native", f"teacher[{TINY_TEACHER}]", f"adsa[{TINY_TEACHER}]")
        }
        assert all(r["status"] == "ok" for r in rows.values()), [r["error"] for r in rows.values()]
        assert len({r["distill_id"] for r in rows.values()}) == 3
        native, teacher, adsa = rows.values()
        assert (native["soft_labels"], teacher["soft_labels"], adsa["soft_labels"]) == (False, True, True)
        assert native["label_tau"] is None and teacher["label_tau"] is None
        assert adsa["label_tau"] is not None and adsa["label_tau"] >= 0
        assert not teacher["set_reused"] and not adsa["set_reused"]
        from distillbench.harness import store

        sets = {k: store.load_set(tmp_path / r["set_path"])[0] for k, r in rows.items()}
        xs = [s.x for s in sets.values()]
        assert torch.equal(xs[0], xs[1]) and torch.equal(xs[0], xs[2])  # same images, relabelled
        assert list((tmp_path / "teachers").glob("*.safetensors"))
        # the stored row carries the tau
        store.write_rows(tmp_path, [adsa])
        frame = store.read_rows([tmp_path], columns=["trial_id", "label_tau"])
        assert frame.set_index("trial_id").loc[adsa["trial_id"], "label_tau"] == pytest.approx(adsa["label_tau"])

    def test_images_are_the_same_without_a_stored_native_set(self, tiny_protocol):
        """Without a results dir, a teacher trial still relabels exactly the native trial's images."""
        from distillbench.harness.runner import distill_set, load_data
        from distillbench.harness.spec import TrialSpec

        specs = [
            TrialSpec("digits[imbalance=10]", "random", 3, labels=lab, protocol="tiny-test").resolve()
            for lab in ("native", f"teacher[{TINY_TEACHER}]")
        ]
        data = load_data(specs[0], Path("."))
        native, taught = (distill_set(r, data, device=torch.device("cpu")) for r in specs)
        assert torch.equal(native.x, taught.x) and taught.soft and not native.soft


class TestSRe2L:
    """Squeeze, recover, relabel."""

    def test_end_to_end_on_long_tailed_digits(self, tmp_path, tiny_protocol):
        """sre2l on digits[imbalance=10] under tiny-test: soft teacher labels natively, calibrated under adsa."""
        from distillbench.harness import store
        from distillbench.harness.runner import run_trial
        from distillbench.harness.spec import TrialSpec

        rows = [
            run_trial(TrialSpec("digits[imbalance=10]", SRE2L, 2, labels=lab, protocol="tiny-test"), results=tmp_path)[
                0
            ]
            for lab in ("native", f"adsa[{TINY_TEACHER}]")
        ]
        assert [r["status"] for r in rows] == ["ok", "ok"], [r["error"] for r in rows]
        native, adsa = rows
        assert native["soft_labels"] and native["n_distilled"] == 20 and native["label_tau"] is None
        assert adsa["label_tau"] is not None and adsa["acc_few"] is not None and native["acc_many"] is not None
        assert adsa["set_reused"] is False and 0 <= adsa["acc_mean"] <= 1
        s_native = store.load_set(tmp_path / native["set_path"])[0]
        s_adsa = store.load_set(tmp_path / adsa["set_path"])[0]
        assert torch.equal(s_native.x, s_adsa.x)  # adsa recalibrates sre2l's own images
        assert s_native.meta["image_class"] == s_adsa.meta["image_class"] == sorted(s_native.meta["image_class"])
        if adsa["label_tau"] > 0:
            assert not torch.allclose(s_native.y, s_adsa.y)

    def test_teacher_without_batchnorm_is_refused(self, digits):
        """SRe2L matches BatchNorm statistics: a teacher without BatchNorm is a config error."""
        method = METHODS.resolve("sre2l[teacher_net=convnet[width=8]]")
        with pytest.raises(ConfigError, match="no BatchNorm layer; use e.g. teacher_net=convnet"):
            method.obj(method.params).validate(digits.info, 1)


class TestOnlineRelabel:
    """Evaluation that relabels every augmented batch with the set's teacher."""

    def test_online_relabel_runs_and_differs_from_offline(self, digits_lt, tmp_path, tiny_protocol):
        """The online protocol trains on teacher labels of augmented images, so its models differ from offline's."""
        from distillbench.harness.evaluate import evaluate

        dset = stage(f"adsa[{TINY_TEACHER}]").apply(random_set(digits_lt), digits_lt, ctx(tmp_path))
        online = dataclasses.replace(tiny_protocol, name="tiny-test-relabel", relabel="online", n_models=1)
        offline = dataclasses.replace(online, relabel="none")
        with temp_plugin("protocols", "tiny-test-relabel", online):
            a = evaluate(online, dset, digits_lt, seed=0)
        b = evaluate(offline, dset, digits_lt, seed=0)
        assert a.acc_per_class != b.acc_per_class
        assert 0.0 <= a.acc_mean <= 1.0 and a.acc_few is not None

    def test_relabeler_applies_temperature_and_tau(self, digits_lt, tmp_path):
        """Online labels of the stored images equal the stored (calibrated) labels."""
        dset = stage(f"adsa[temperature=2.0,{TINY_TEACHER}]").apply(random_set(digits_lt), digits_lt, ctx(tmp_path))
        relabel = online_relabeler(dset, digits_lt.info, torch.device("cpu"))
        assert torch.allclose(relabel(dset.x), dset.y, atol=1e-5)

    def test_set_without_teacher_is_a_clear_error(self, digits_lt):
        """Online relabelling of a set with native labels names the fix."""
        with pytest.raises(ConfigError, match="records none; use labels teacher or adsa"):
            online_relabeler(random_set(digits_lt), digits_lt.info, torch.device("cpu"))
        gone = DistilledSet(torch.zeros(1, 1, 8, 8), torch.zeros(1, 10), meta={"teacher": {"path": "/nonexistent.st"}})
        with pytest.raises(DataError, match="not found"):
            online_relabeler(gone, digits_lt.info, torch.device("cpu"))


@pytest.mark.realdata
@needs_shared_data("mnist-10k")
def test_mnist_lt_teacher_stage(tmp_path):
    """adsa on the 10k MNIST copy made long-tailed (IF 10): tau found, labels valid."""
    configured = DATASETS.resolve("mnist[imbalance=10]")
    data = configured.obj(configured.params).load(SHARED_DATA / "mnist-10k")
    out = stage("adsa[teacher_net=convnet[norm=batchnorm,width=8],teacher_epochs=1,teacher_min_steps=0]").apply(
        random_set(data, ipc=2), data, ctx(tmp_path)
    )
    assert out.meta["label_tau"] is not None and not math.isnan(out.meta["teacher"]["val_acc"])
