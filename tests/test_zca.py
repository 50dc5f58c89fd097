"""``zca=true``: ZCA whitening of image datasets as MTT / DATM / FTD use it (kornia, eps 0.1, train-only fit).

What users rely on: the arithmetic is the field's (so published ZCA sets and numbers are comparable),
the fit never sees validation or test data, ``zca`` is part of the dataset's identity without
changing the ids of existing results, and a set is never evaluated in the other space silently.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from distillbench.datasets._zca import EPS, ZCA, fit_zca, to_pixels, whiten_bundle, zca_for, zca_of
from distillbench.harness.cli import main
from distillbench.harness.errors import ConfigError, DataError, IncompatibleError
from distillbench.harness.evaluate import ZCAMismatchError, evaluate
from distillbench.harness.params import build_params, format_spec, params_to_dict
from distillbench.harness.plugins import DATASETS
from distillbench.harness.spec import TrialSpec
from distillbench.harness.types import DataBundle, DatasetInfo, DistilledSet, Split

from .test_datasets import write_mnist_tree

pytestmark = pytest.mark.usefixtures("one_thread")

IMAGE_DATASETS = (
    "digits",
    "mnist",
    "fashion_mnist",
    "kmnist",
    "svhn",
    "cifar10",
    "cifar100",
    "colored_mnist",
    "bg_fmnist",
    "corrupted_cifar10",
    "bffhq",
)


def dataset(spec: str):
    """An instance of a registered dataset spec such as ``digits[zca=true]``."""
    configured = DATASETS.resolve(spec)
    return configured.obj(configured.params)


def random_pixels(n: int, shape: tuple[int, ...], seed: int) -> torch.Tensor:
    """Correlated images in [0, 1] (a random mixing of uniform noise), so whitening has work to do."""
    gen = torch.Generator().manual_seed(seed)
    d = int(np.prod(shape))
    mix = torch.rand(d, d, generator=gen, dtype=torch.float64)
    x = torch.rand(n, d, generator=gen, dtype=torch.float64) @ mix
    x = (x - x.min()) / (x.max() - x.min())
    return x.reshape(n, *shape).float()


def toy_bundle(train: torch.Tensor, val: torch.Tensor, test: torch.Tensor, mean=(0.5,), std=(0.25,)) -> DataBundle:
    """A bundle of normalised images ``(pixels - mean) / std``, labels all 0, as datasets return them."""
    info = DatasetInfo("toy", "image", 2, tuple(train.shape[1:]), ("a", "b"), mean=mean, std=std)

    def split(pixels: torch.Tensor) -> Split:
        return Split((pixels - mean[0]) / std[0], torch.zeros(len(pixels), dtype=torch.int64))

    return DataBundle(info, split(train), split(val), split(test), meta={"source": "toy"})


class TestArithmetic:
    """The transform is kornia's ZCAWhitening(eps=0.1) as MTT / DATM / FTD fit it."""

    def test_matches_reference_formula(self):
        """W = U diag((S + 0.1)^-1/2) U^T of the unbiased covariance; eps is absolute, not trace-relative."""
        x = random_pixels(300, (3, 2, 2), seed=0)
        fit = fit_zca(x)
        flat = x.reshape(300, -1).double().numpy()
        cov = np.cov(flat, rowvar=False)  # unbiased, like kornia's
        u, s, _ = np.linalg.svd(cov)
        w = u @ np.diag(1.0 / np.sqrt(s + 0.1)) @ u.T
        assert fit.eps == EPS == 0.1
        assert np.allclose(fit.mean.numpy(), flat.mean(axis=0), atol=1e-12), "mu is not the per-feature mean"
        assert np.allclose(fit.matrix.numpy(), w, atol=1e-10), "W differs from U diag((S+0.1)^-1/2) U^T"
        z = fit.whiten(x).reshape(300, -1).double().numpy()
        assert np.allclose(z, (flat - flat.mean(axis=0)) @ w, atol=1e-4), "whiten() is not (x - mu) W"

    def test_round_trip(self):
        """unwhiten(whiten(x)) gives the pixels back (the inverse used to look at ZCA images)."""
        x = random_pixels(200, (1, 4, 4), seed=1)
        fit = fit_zca(x)
        z = fit.whiten(x)
        assert z.shape == x.shape and z.dtype == torch.float32
        assert torch.allclose(fit.unwhiten(z), x, atol=1e-5), "the inverse does not undo the whitening"
        assert torch.allclose(fit.matrix @ fit.inverse_matrix, torch.eye(16, dtype=torch.float64), atol=1e-9)

    def test_whitened_train_covariance(self):
        """The whitened train split has covariance U diag(S / (S + eps)) U^T (identity up to eps)."""
        x = random_pixels(400, (2, 3, 3), seed=2)
        fit = fit_zca(x)
        z = fit.whiten(x).reshape(400, -1).double()
        u, s = fit.eigenvectors, fit.eigenvalues
        expected = (u * (s / (s + fit.eps))) @ u.T
        assert torch.allclose(torch.cov(z.T), expected, atol=1e-4), "whitened covariance is not U S/(S+eps) U^T"
        assert z.mean(dim=0).abs().max() < 1e-4, "whitened train split is not centred"

    def test_rejects_too_few_samples_and_wrong_shapes(self):
        """One image cannot give a covariance; samples of another shape are refused with both shapes named."""
        with pytest.raises(DataError, match="at least 2 training images"):
            fit_zca(torch.rand(1, 1, 2, 2))
        fit = fit_zca(torch.rand(10, 1, 2, 2))
        with pytest.raises(ValueError, match=r"\(1, 3, 3\).*\(1, 2, 2\)"):
            fit.whiten(torch.rand(4, 1, 3, 3))

    def test_against_kornia_when_installed(self):
        """Same numbers as kornia.enhance.ZCAWhitening(eps=0.1) (skipped where kornia is absent)."""
        kornia = pytest.importorskip("kornia")
        x = random_pixels(256, (3, 2, 2), seed=3)
        ref = kornia.enhance.ZCAWhitening(eps=0.1, compute_inv=True)
        ref.fit(x.double())
        fit = fit_zca(x)
        assert torch.allclose(fit.whiten(x).double(), ref(x.double()), atol=1e-4), "differs from kornia's whitening"
        z = fit.whiten(x)
        assert torch.allclose(fit.unwhiten(z).double(), ref.inverse_transform(z.double()), atol=1e-4)


class TestFitOnTrainOnly:
    """The fit sees the train split only and is applied to train, validation and test alike."""

    def test_val_and_test_do_not_change_the_fit(self):
        """Replacing validation and test data leaves the fit and the whitened train split unchanged."""
        train = random_pixels(120, (1, 3, 3), seed=4)
        a = whiten_bundle(toy_bundle(train, random_pixels(20, (1, 3, 3), 5), random_pixels(20, (1, 3, 3), 6)))
        b = whiten_bundle(toy_bundle(train, random_pixels(30, (1, 3, 3), 7), random_pixels(40, (1, 3, 3), 8)))
        assert torch.equal(zca_of(a).matrix, zca_of(b).matrix), "validation or test data changed the fit"
        assert torch.equal(a.train.x, b.train.x)
        assert a.meta["zca"]["fit_samples"] == 120 and a.meta["zca"]["fit_split"] == "train"

    def test_every_split_uses_the_train_fit_on_pixels(self):
        """Each split is un-normalised with info.mean/std, then whitened with the train split's fit."""
        train, val, test = (random_pixels(n, (1, 3, 3), seed) for n, seed in ((100, 9), (15, 10), (25, 11)))
        bundle = toy_bundle(train, val, test)
        out = whiten_bundle(bundle)
        fit = fit_zca(train)
        for name, pixels in (("train", train), ("val", val), ("test", test)):
            got = getattr(out, name).x
            assert torch.allclose(got, fit.whiten(pixels), atol=1e-4), f"{name} split not whitened with the train fit"
        assert torch.allclose(to_pixels(bundle.val.x, (0.5,), (0.25,)), val, atol=1e-6)

    def test_records_what_was_done_and_keeps_the_input(self):
        """meta["zca"] says eps and fitting samples; info.zca is set; the bundle given is not modified."""
        bundle = toy_bundle(
            random_pixels(50, (1, 2, 2), 12), random_pixels(5, (1, 2, 2), 13), random_pixels(5, (1, 2, 2), 14)
        )
        before = bundle.train.x.clone()
        out = whiten_bundle(bundle)
        assert out.info.zca and not bundle.info.zca
        assert out.meta["zca"]["eps"] == 0.1 and out.meta["zca"]["fit_samples"] == 50
        assert out.meta["source"] == "toy" and "zca" not in bundle.meta
        assert torch.equal(bundle.train.x, before), "whiten_bundle changed the bundle it was given"

    def test_fit_is_cached_per_process(self):
        """Two loads of the same train data share one fit object (the CIFAR fit is 3072 x 3072)."""
        train = random_pixels(60, (1, 2, 2), 15)
        a = whiten_bundle(toy_bundle(train, train[:5], train[:5]))
        b = whiten_bundle(toy_bundle(train, train[5:9], train[5:9]))
        assert zca_of(a) is zca_of(b)


class TestDatasets:
    """Every image dataset takes zca=true through one hook; the result loads and evaluates."""

    @pytest.mark.parametrize("name", IMAGE_DATASETS)
    def test_every_image_dataset_accepts_zca(self, name):
        """info() of NAME[zca=true] reports zca and the option in its name, without reading any data."""
        info = dataset(f"{name}[zca=true]").info()
        assert info.zca, f"{name}[zca=true].info().zca is False"
        assert "zca=true" in info.name, f"{name}: display name {info.name!r} does not show zca"
        assert not dataset(name).info().zca

    def test_digits_loads_whitened_and_evaluates(self, tiny_protocol):
        """digits[zca=true] loads in ZCA space, inverts to its pixels, and a set drawn from it evaluates."""
        data = dataset("digits[zca=true]").load(Path("."))
        plain = dataset("digits").load(Path("."))
        assert data.info.name == "digits[zca=true]" and data.info.zca
        assert data.meta["zca"]["fit_samples"] == len(data.train) == len(plain.train)
        assert not torch.allclose(data.test.x, plain.test.x)
        assert torch.equal(data.test.y, plain.test.y)
        flat = data.train.x.reshape(len(data.train), -1).double()
        assert flat.mean(dim=0).abs().max() < 1e-4, "whitened train split is not centred"
        fit = zca_of(data)
        pixels = to_pixels(plain.test.x, plain.info.mean, plain.info.std)
        assert torch.allclose(fit.unwhiten(data.test.x), pixels, atol=1e-4), "the inverse does not give the pixels"
        idx = torch.cat([torch.nonzero(data.train.y == c)[:10, 0] for c in range(10)])
        dset = DistilledSet(data.train.x[idx], data.train.y[idx], meta={"zca": True})
        result = evaluate(tiny_protocol, dset, data, seed=0)
        # tiny-test trains 20 epochs: plain digits reaches 0.38 with the same images, ZCA 0.37 (chance: 0.1).
        assert result.acc_mean > 0.25, f"digits[zca=true] with 10 real images per class reached {result.acc_mean}"

    def test_nested_dataset_is_whitened_once(self):
        """colored_mnist (which loads its base through load()) is whitened once, after colouring."""
        data = dataset("colored_mnist[base=digits,zca=true]").load(Path("."))
        assert data.info.zca and data.info.name == "colored_mnist[base=digits,zca=true]"
        assert data.meta["base"] == "digits", "the base dataset was loaded with zca"
        z = data.train.x.reshape(len(data.train), -1).double()
        fit = zca_of(data)
        u, s = fit.eigenvectors, fit.eigenvalues
        expected = (u * (s / (s + fit.eps))) @ u.T
        assert torch.allclose(torch.cov(z.T), expected, atol=1e-3), "colored_mnist was whitened twice or not at all"
        assert set(data.train.groups) == set(dataset("colored_mnist[base=digits]").load(Path(".")).train.groups)

    def test_mnist_files_with_zca(self, tmp_path):
        """A file-based dataset (fake MNIST IDX files) loads with zca=true, fitted on its train split."""
        write_mnist_tree(tmp_path)
        data = dataset("mnist[zca=true]").load(tmp_path)
        plain = dataset("mnist").load(tmp_path)
        assert data.info.zca and data.info.name == "mnist[zca=true]" and data.info.shape == (1, 28, 28)
        assert data.train.x.shape == plain.train.x.shape and data.train.x.dtype == torch.float32
        assert data.meta["zca"]["fit_samples"] == len(plain.train) and data.meta["zca"]["features"] == 784
        fit = zca_for(dataset("mnist[zca=true]"), tmp_path)
        for name in ("train", "val", "test"):
            pixels = to_pixels(getattr(plain, name).x, plain.info.mean, plain.info.std)
            assert torch.allclose(getattr(data, name).x, fit.whiten(pixels), atol=1e-4), f"{name} split differs"
        assert isinstance(fit, ZCA) and fit.n_samples == len(plain.train)


class TestIdentity:
    """zca is part of the dataset's identity, and ids of configurations without it are unchanged."""

    def test_plain_trial_ids_unchanged(self):
        """A digits trial hashes exactly the dict of release 0.1 (no zca key): its id is what it was."""
        resolved = TrialSpec(dataset="digits", method="random", ipc=1, protocol="quick-v1").resolve()
        canonical = resolved.canonical()
        assert canonical["dataset"] == {"name": "digits", "params": {"imbalance": 1.0}}, "zca leaked into the id"
        old = {
            "dataset": {"name": "digits", "params": {"imbalance": 1.0}},
            "method": canonical["method"],
            "weighting": {"name": "none", "params": {}},
            "labels": {"name": "native", "params": {}},
            "ipc": 1,
            "seed": 0,
            "protocol": {"name": "quick-v1", "version": resolved.protocol.version},
        }
        assert canonical == old
        text = json.dumps(old, sort_keys=True, separators=(",", ":"))
        assert resolved.trial_id == hashlib.sha256(text.encode()).hexdigest()[:16]
        # Pinned before zca existed (git 22d971f); a change here would re-run every user's digits trials.
        assert resolved.trial_id == "9d7970dc23b79e00"
        assert resolved.distill_id == "ed84ea4357dfd2d5"

    @pytest.mark.parametrize(
        ("spec", "trial_id"),
        [
            ("mnist", "85b51d498a154c0b"),
            ("cifar10", "367f093f03861a92"),
            ("colored_mnist", "a0c073f8f5597bce"),
            ("corrupted_cifar10", "e0114fc8d3f5cfe4"),
            ("bffhq", "c79df7ccf6b9c200"),
        ],
    )
    def test_other_plain_ids_unchanged(self, spec, trial_id):
        """Trial ids of every other image dataset without zca are those pinned before zca existed."""
        resolved = TrialSpec(dataset=spec, method="random", ipc=1, protocol="quick-v1").resolve()
        assert resolved.trial_id == trial_id, f"{spec}: trial id changed, existing results would re-run"
        assert "zca" not in resolved.canonical()["dataset"]["params"]

    def test_zca_ids_differ(self):
        """digits[zca=true] has its own trial and distill ids; zca=false is the plain configuration."""
        plain = TrialSpec(dataset="digits", method="random", ipc=1, protocol="quick-v1").resolve()
        zca = TrialSpec(dataset="digits[zca=true]", method="random", ipc=1, protocol="quick-v1").resolve()
        off = TrialSpec(dataset="digits[zca=false]", method="random", ipc=1, protocol="quick-v1").resolve()
        assert zca.trial_id != plain.trial_id and zca.distill_id != plain.distill_id
        assert zca.canonical()["dataset"]["params"] == {"imbalance": 1.0, "zca": True}
        assert off.trial_id == plain.trial_id and zca.dataset.display == "digits[zca=true]"

    def test_since_fields_leave_identity_at_default(self):
        """The general rule: a field marked {"since": ...} is omitted while default, included otherwise."""

        @dataclasses.dataclass(frozen=True)
        class Params:
            old: int = 1
            new: tuple[int, ...] = dataclasses.field(default=(), metadata={"since": "0.2"})

        assert params_to_dict(Params()) == {"old": 1}
        assert params_to_dict(Params(new=(2, 3))) == {"old": 1, "new": [2, 3]}
        assert params_to_dict(Params(old=5)) == {"old": 5}
        assert format_spec("p", Params(new=(2,))) == "p[new=2]"


class TestMismatch:
    """A set is only evaluated in the space it was distilled in."""

    def test_zca_set_on_plain_data(self, digits, tiny_protocol):
        """A ZCA set against plain digits is a one-line error naming both sides and the fix."""
        dset = DistilledSet(digits.train.x[:10], digits.train.y[:10], meta={"zca": True})
        with pytest.raises(ZCAMismatchError) as excinfo:
            evaluate(tiny_protocol, dset, digits, seed=0)
        message = str(excinfo.value)
        assert "ZCA-whitened" in message and "'digits'" in message and "'digits[zca=true]'" in message
        assert "\n" not in message
        assert isinstance(excinfo.value, ValueError) and isinstance(excinfo.value, IncompatibleError)

    def test_plain_set_on_zca_data(self, tiny_protocol):
        """A plain set (or one saved before zca existed: no key) against zca data is refused too."""
        data = dataset("digits[imbalance=2,zca=true]").load(Path("."))
        for meta in ({"zca": False}, {}):
            dset = DistilledSet(data.train.x[:10], data.train.y[:10], meta=meta)
            with pytest.raises(ZCAMismatchError) as excinfo:
                evaluate(tiny_protocol, dset, data, seed=0)
            message = str(excinfo.value)
            assert "plain pixel space" in message and "'digits[imbalance=2.0,zca=true]'" in message
            assert "evaluate it on 'digits[imbalance=2.0]'" in message

    def test_cli_evaluate_exits_2_with_one_line(self, tmp_path, capsys, tiny_protocol):
        """distill digits[zca=true] --out, evaluate works; a set claiming the other space exits 2 with one line."""
        out_file = tmp_path / "set.safetensors"
        argv = ["distill", "random", "digits[zca=true]", "--ipc", "1", "--protocol", "tiny-test", "--json"]
        assert main([*argv, "--out", str(out_file)]) == 0
        capsys.readouterr()
        meta_file = out_file.with_suffix(".json")
        meta = json.loads(meta_file.read_text())
        assert meta["zca"] is True and meta["set_meta"]["zca"] is True
        assert main(["evaluate", str(out_file), "--protocol", "tiny-test", "--json"]) == 0
        capsys.readouterr()
        meta["spec"]["dataset"] = "digits"  # the set now claims plain data: its ZCA tensors must be refused
        meta_file.write_text(json.dumps(meta))
        code = main(["evaluate", str(out_file), "--protocol", "tiny-test"])
        err = capsys.readouterr().err
        assert code == 2, "a space mismatch must exit 2"
        assert err.count("\n") == 1 and err.startswith("error: ") and "the distilled set is ZCA-whitened" in err, err


class TestTextRefused:
    """zca on a text dataset is refused at validation, before anything runs."""

    def test_resolve_refuses_with_one_line(self):
        """sst2[zca=true] says why (text has no pixels) and how to fix it."""
        with pytest.raises(ConfigError) as excinfo:
            DATASETS.resolve("sst2[zca=true]")
        assert str(excinfo.value) == "zca=true whitens images; dataset 'sst2' is text: remove zca"

    def test_other_unknown_keys_keep_the_generic_message(self):
        """The refusal is specific to zca; other unknown keys still list the valid ones."""
        cls = DATASETS.get("sst2").Params
        with pytest.raises(ConfigError, match="unknown parameter 'zcaa'.*valid parameters"):
            build_params(cls, {"zcaa": "true"}, owner="dataset 'sst2'")

    def test_cli_exits_2(self, tmp_path, capsys):
        """distill and run --dry-run print one error line and exit 2."""
        assert main(["distill", "random", "mr[zca=true]", "--ipc", "1", "--protocol", "text-v1"]) == 2
        err = capsys.readouterr().err
        assert err == "error: zca=true whitens images; dataset 'mr' is text: remove zca\n"
        grid = tmp_path / "grid.yaml"
        grid.write_text("protocol: text-v1\ngrid:\n  dataset: ['sst2[zca=true]']\n  method: [random]\n  ipc: [1]\n")
        assert main(["run", str(grid), "--dry-run"]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "zca=true whitens images; dataset 'sst2' is text: remove zca" in err
