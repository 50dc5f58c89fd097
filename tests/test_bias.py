"""Bias benchmark: colour / background / corruption / BFFHQ datasets, their groups, and the ``kde`` weighting.

Everything runs offline: the colour datasets use ``base=digits``; Corrupted CIFAR-10 reads a tiny
fake CIFAR tree; BFFHQ a tiny fake folder of PNGs written here. Only ``TestRealData`` reads
``../shared/data`` (skipped when absent).
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from distillbench.datasets._biased import biased_attributes, unbiased_attributes
from distillbench.datasets._corruptions import CORRUPTIONS
from distillbench.datasets.colored import COLORS
from distillbench.harness.errors import ConfigError, DataError, IncompatibleError
from distillbench.harness.plugins import DATASETS, WEIGHTINGS
from distillbench.harness.spec import TrialSpec, resolve_trial
from distillbench.harness.types import Context
from distillbench.methods import kde as kde_module
from distillbench.methods.kde import KDEParams, bandwidth_rule, kde_weights, loo_log_density, supcon_loss

from .conftest import SHARED_DATA, needs_shared_data
from .test_datasets import write_cifar10_tree, write_mnist_tree


@contextlib.contextmanager
def one_thread():
    """Train encoders on one thread: on a shared 2-core machine a second thread mostly waits."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def dataset(spec: str):
    """An instance of a registered dataset spec."""
    configured = DATASETS.resolve(spec)
    return configured.obj(configured.params)


def load(spec: str, root: Path = Path(".")):
    return dataset(spec).load(root)


def rgb(split, info) -> torch.Tensor:
    """Un-normalised images of a split (values in [0, 1])."""
    m = torch.tensor(info.mean).view(1, -1, 1, 1)
    s = torch.tensor(info.std).view(1, -1, 1, 1)
    return split.x * s + m


def check_groups(bundle) -> None:
    """Every split has int64 ``bias`` in [0, C) and bool ``aligned`` == (bias == label)."""
    for split in (bundle.train, bundle.val, bundle.test):
        bias, aligned = split.groups["bias"], split.groups["aligned"]
        assert bias.dtype == torch.int64 and aligned.dtype == torch.bool
        assert len(bias) == len(aligned) == len(split)
        assert int(bias.min()) >= 0 and int(bias.max()) < bundle.info.num_classes
        assert torch.equal(aligned, bias == split.y)


@pytest.fixture(scope="module")
def colored():
    return load("colored_mnist[base=digits,conflict=0.05]")


# ------------------------------------------------------------------------------------ construction
class TestColoredConstruction:
    def test_conflict_fraction_per_class(self, colored):
        """Per class, exactly round(conflict * n_c) training samples carry another colour."""
        y, aligned = colored.train.y, colored.train.groups["aligned"]
        for c in range(10):
            members = y == c
            assert int((~aligned[members]).sum()) == round(0.05 * int(members.sum()))
        assert colored.meta["conflict_measured"]["train"] == pytest.approx(0.05, abs=0.005)

    def test_validation_is_biased_like_train(self, colored):
        """The validation split is biased with the same conflict ratio (documented choice)."""
        assert 1 - colored.val.groups["aligned"].float().mean() == pytest.approx(0.05, abs=0.02)

    def test_test_split_is_unbiased(self, colored):
        """Within every test class each colour appears floor or ceil of n_c / 10 times."""
        for c in range(10):
            bias = colored.test.groups["bias"][colored.test.y == c]
            counts = torch.bincount(bias, minlength=10)
            n = len(bias)
            assert set(counts.tolist()) <= {n // 10, -(-n // 10)}

    def test_groups_present_and_consistent(self, colored):
        """Every split records bias (the colour index) and aligned (colour == label's colour)."""
        check_groups(colored)
        assert colored.meta["bias_attribute"] == "color" and colored.meta["conflict"] == 0.05

    def test_digit_takes_its_colour(self, colored):
        """The foreground is intensity x colour: each image's RGB is proportional to COLORS[bias]."""
        images = rgb(colored.train, colored.info)
        palette = torch.tensor(COLORS)
        for i in range(0, len(images), 97):
            expected = palette[colored.train.groups["bias"][i]]
            brightest = images[i].flatten(1).max(dim=1).values
            assert torch.allclose(brightest / brightest.max(), expected / expected.max(), atol=1e-3)

    def test_shape_and_normalisation(self, colored):
        """Three channels, the base's size, and per-channel mean 0 / std 1 on the train split."""
        assert colored.train.x.shape[1:] == (3, 8, 8) == colored.info.shape
        flat = colored.train.x.transpose(0, 1).reshape(3, -1)
        assert torch.allclose(flat.mean(dim=1), torch.zeros(3), atol=1e-4)
        assert torch.allclose(flat.std(dim=1, correction=0), torch.ones(3), atol=1e-4)

    def test_deterministic_across_loads(self, colored):
        """A second load (a fresh instance) gives identical images and groups."""
        again = load("colored_mnist[base=digits,conflict=0.05]")
        assert torch.equal(again.train.x, colored.train.x)
        assert torch.equal(again.test.groups["bias"], colored.test.groups["bias"])

    def test_different_conflict_gives_different_data(self, colored):
        """conflict=0.02 changes the training colours; the unbiased test split is the same draw."""
        other = load("colored_mnist[base=digits,conflict=0.02]")
        assert not torch.equal(other.train.x, colored.train.x)
        assert torch.equal(other.test.groups["bias"], colored.test.groups["bias"])

    @pytest.mark.parametrize(("conflict", "aligned_share"), [(0.0, 1.0), (1.0, 0.0)])
    def test_extreme_ratios(self, conflict, aligned_share):
        """conflict=0 aligns every training sample; conflict=1 none."""
        bundle = load(f"colored_mnist[base=digits,conflict={conflict}]")
        assert float(bundle.train.groups["aligned"].float().mean()) == aligned_share

    def test_background_variant(self):
        """bg_fmnist colours the background: dark pixels take the colour, the brightest turn white."""
        bundle = load("bg_fmnist[base=digits]")
        check_groups(bundle)
        assert bundle.meta["bias_attribute"] == "background"
        images = rgb(bundle.train, bundle.info)
        palette = torch.tensor(COLORS)
        corner = images[:, :, 0, 0]  # digits' corners are blank: pure background
        assert torch.allclose(corner, palette[bundle.train.groups["bias"]], atol=1e-3)

    def test_info_needs_no_disk(self):
        """info() of colored_mnist on MNIST works without any file: 3 x 28 x 28, 10 classes."""
        info = dataset("colored_mnist").info()
        assert info.shape == (3, 28, 28) and info.num_classes == 10

    def test_mnist_base_on_a_fake_tree(self, tmp_path):
        """base=mnist reads torchvision's layout (here a fake tree) and keeps its splits."""
        write_mnist_tree(tmp_path, per_class=20)
        ds = dataset("colored_mnist[conflict=0.1]")
        ds.prepare(tmp_path)
        bundle = ds.load(tmp_path)
        check_groups(bundle)
        assert bundle.train.x.shape[1:] == (3, 28, 28) and len(bundle.test) == 50

    def test_long_tail_option(self):
        """imbalance= is passed to the base dataset."""
        bundle = load("colored_mnist[base=digits,imbalance=10]")
        counts = bundle.train.class_counts(10)
        assert counts[0] > 5 * counts[-1]


class TestAttributeDraws:
    def test_conflicting_values_are_other_values(self):
        """A conflicting sample never gets its own class's value, and the draw is seeded."""
        y = np.repeat(np.arange(10), 100)
        bias = biased_attributes(y, 10, 0.3, seed=1)
        assert np.array_equal(bias, biased_attributes(y, 10, 0.3, seed=1))
        conflicting = bias != y
        assert conflicting.sum() == 300
        assert set(np.unique(bias[conflicting] - y[conflicting]) % 10) <= set(range(1, 10))

    def test_unbiased_is_exactly_even(self):
        """unbiased_attributes spreads every class evenly over all values."""
        y = np.repeat(np.arange(3), 31)
        bias = unbiased_attributes(y, 3, seed=0)
        for c in range(3):
            assert sorted(np.bincount(bias[y == c], minlength=3)) == [10, 10, 11]


# -------------------------------------------------------------------------------------- corruptions
def smooth_images(n: int = 4, size: int = 32) -> torch.Tensor:
    """Images with structure (gradients and a square) so blurs and warps change them."""
    gen = torch.Generator().manual_seed(0)
    t = torch.linspace(0, 1, size)
    x = (0.2 + 0.6 * t.view(1, 1, 1, -1) * t.view(1, 1, -1, 1)).repeat(n, 3, 1, 1)
    x = x * torch.rand((n, 3, 1, 1), generator=gen)
    x[:, :, 8:20, 10:22] = 0.9
    return x.clamp(0, 1)


ALL_CORRUPTIONS = [(kind, i, name) for kind, table in CORRUPTIONS.items() for i, (name, _) in enumerate(table)]


class TestCorruptions:
    @pytest.mark.parametrize(("kind", "index", "name"), ALL_CORRUPTIONS, ids=[c[2] for c in ALL_CORRUPTIONS])
    def test_changes_image_and_is_deterministic(self, kind, index, name):
        """Each corruption changes the image (except 'original'), stays in [0, 1] and repeats with a seed."""
        fn = CORRUPTIONS[kind][index][1]
        x = smooth_images()
        a = fn(x.clone(), 3, torch.Generator().manual_seed(5))
        b = fn(x.clone(), 3, torch.Generator().manual_seed(5))
        assert a.shape == x.shape and torch.equal(a, b)
        assert float(a.min()) >= 0.0 and float(a.max()) <= 1.0
        change = float((a - x).abs().mean())
        assert change == 0.0 if name == "original" else change > 1e-3

    def test_severity_increases_change(self):
        """Severity 5 changes an image more than severity 1 (checked on gaussian noise and contrast)."""
        x = smooth_images()
        for fn in (CORRUPTIONS[1][0][1], CORRUPTIONS[0][4][1]):
            mild = (fn(x, 1, torch.Generator().manual_seed(0)) - x).abs().mean()
            strong = (fn(x, 5, torch.Generator().manual_seed(0)) - x).abs().mean()
            assert strong > mild


@pytest.fixture
def cifar_root(tmp_path):
    write_cifar10_tree(tmp_path, per_class_per_batch=4)
    return tmp_path


class TestCorruptedCIFAR:
    def test_loads_with_groups_and_cache(self, cifar_root):
        """Fake CIFAR-10: groups filled, unbiased test, cache written atomically and read back identically."""
        ds = dataset("corrupted_cifar10[type=1,severity=2,conflict=0.1]")
        ds.prepare(cifar_root)
        first = ds.load(cifar_root)
        check_groups(first)
        assert first.meta["bias_attribute"] == "corruption" and first.meta["corruptions"][9] == "original"
        cache = Path(first.meta["cache"])
        assert cache.is_file() and cache.parent == cifar_root / "corrupted_cifar10"
        assert not [p for p in cache.parent.iterdir() if p.name.endswith(".part")]
        second = ds.load(cifar_root)
        assert torch.equal(second.train.x, first.train.x) and torch.equal(second.val.y, first.val.y)
        assert torch.equal(second.test.groups["bias"], first.test.groups["bias"])

    def test_conflict_and_unbiased_test(self, cifar_root):
        """Per class round(conflict * n_c) training samples conflict; test corruptions are even per class."""
        bundle = dataset("corrupted_cifar10[conflict=0.25]").load(cifar_root)
        aligned, y = bundle.train.groups["aligned"], bundle.train.y
        for c in range(10):
            assert int((~aligned[y == c]).sum()) == round(0.25 * int((y == c).sum()))
        for c in range(10):
            counts = torch.bincount(bundle.test.groups["bias"][bundle.test.y == c], minlength=10)
            assert int(counts.max()) - int(counts.min()) <= 1

    def test_corruption_matches_bias(self, cifar_root):
        """A sample whose bias is 'original' (type 1, index 9) is the clean image; others differ."""
        clean = dataset("cifar10").load(cifar_root)
        bundle = dataset("corrupted_cifar10[type=1,conflict=0.0]").load(cifar_root)
        original = bundle.train.groups["bias"] == 9
        assert torch.allclose(bundle.train.x[original], clean.train.x[original], atol=1e-5)
        assert not torch.allclose(bundle.train.x[~original], clean.train.x[~original], atol=1e-3)

    def test_missing_cifar_names_the_files(self, tmp_path):
        """Without CIFAR-10 files the error names the missing batch and the fetch command."""
        with pytest.raises(DataError, match=r"cifar-10-batches-py.*data fetch"):
            dataset("corrupted_cifar10").load(tmp_path)

    def test_info_needs_no_disk(self):
        """info(): 3 x 32 x 32, CIFAR-10's class names and statistics."""
        info = dataset("corrupted_cifar10").info()
        assert info.shape == (3, 32, 32) and info.class_names[0] == "airplane" and len(info.mean) == 3


# -------------------------------------------------------------------------------------------- BFFHQ
def write_bffhq(root: Path, per_group: int = 3) -> Path:
    """A fake BFFHQ tree with the published layout (tiny 12x12 PNGs)."""
    from PIL import Image

    base = root / "bffhq"
    idx = 0

    def put(folder: Path, target: int, bias: int) -> None:
        nonlocal idx
        folder.mkdir(parents=True, exist_ok=True)
        value = 40 + 150 * target + 30 * bias
        Image.fromarray(np.full((12, 12, 3), value, dtype=np.uint8)).save(folder / f"{idx}_{target}_{bias}.png")
        idx += 1

    for target in (0, 1):
        for _ in range(per_group * 4):
            put(base / "0.5pct" / "align" / str(target), target, target)
        for _ in range(per_group):
            put(base / "0.5pct" / "conflict" / str(target), target, 1 - target)
        for bias in (0, 1):
            for _ in range(per_group):
                put(base / "valid", target, bias)
                put(base / "test", target, bias)
    return base


class TestBFFHQ:
    def test_loads_fake_tree(self, tmp_path):
        """Labels and groups come from the file names; images are resized to size x size."""
        write_bffhq(tmp_path)
        ds = dataset("bffhq[size=8]")
        ds.prepare(tmp_path)
        bundle = ds.load(tmp_path)
        check_groups(bundle)
        assert bundle.train.x.shape == (30, 3, 8, 8) and len(bundle.test) == 12
        assert int((~bundle.train.groups["aligned"]).sum()) == 6
        assert bundle.meta["bias_attribute"] == "gender" and bundle.meta["conflict"] == pytest.approx(0.2)
        old = rgb(bundle.train, bundle.info)[bundle.train.y == 1]
        assert float(old.mean()) > 0.6  # target 1 images were written brighter

    def test_missing_folder_is_one_line(self, tmp_path):
        """A missing copy is a one-line DataError naming the folder and the manual route."""
        with pytest.raises(DataError) as info:
            dataset("bffhq").prepare(tmp_path)
        message = str(info.value)
        assert "\n" not in message and str(tmp_path / "bffhq") in message and "manually" in message

    def test_misnamed_file(self, tmp_path):
        """A file not named <idx>_<target>_<bias>.png is reported by path."""
        base = write_bffhq(tmp_path)
        next((base / "test").glob("*.png")).rename(base / "test" / "face.png")
        with pytest.raises(DataError, match="face.png"):
            dataset("bffhq[size=8]").load(tmp_path)


# ---------------------------------------------------------------------------------------- bad input
class TestBadInput:
    @pytest.mark.parametrize("value", ["-0.1", "1.5"])
    def test_conflict_out_of_range(self, value):
        """conflict outside [0, 1] is a ConfigError that states the valid range."""
        with pytest.raises(ConfigError, match=r"conflict must be a fraction in \[0, 1\]"):
            DATASETS.resolve(f"colored_mnist[conflict={value}]")

    def test_base_not_grey_scale(self):
        """A colour base is rejected, naming the grey-scale datasets to use instead."""
        with pytest.raises(ConfigError, match=r"base 'cifar10' is not a grey-scale image dataset.*digits"):
            DATASETS.resolve("colored_mnist[base=cifar10]")

    def test_unknown_base(self):
        """An unknown base lists the close matches."""
        with pytest.raises(ConfigError, match="unknown dataset 'mnsit'"):
            DATASETS.resolve("bg_fmnist[base=mnsit]")

    @pytest.mark.parametrize("spec", ["corrupted_cifar10[type=2]", "corrupted_cifar10[severity=6]"])
    def test_corruption_options(self, spec):
        """type must be 0 or 1, severity 1-5."""
        with pytest.raises(ConfigError, match="type must be 0 or 1|severity must be"):
            DATASETS.resolve(spec)

    @pytest.mark.parametrize("spec", ["kde[bandwidth=-1]", "kde[bandwidth=wide]", "kde[clip=0.5]"])
    def test_kde_parameters(self, spec):
        """A bad bandwidth or clip is a ConfigError."""
        with pytest.raises(ConfigError):
            WEIGHTINGS.resolve(spec)

    @pytest.mark.parametrize("method", ["random", "herding", "dd", "kcenter"])
    def test_kde_needs_a_weighted_method(self, method):
        """kde with a method that ignores weights is rejected at validation, naming the pair."""
        spec = TrialSpec("colored_mnist[base=digits]", method, 10, weighting="kde", protocol="quick-v1")
        with pytest.raises(IncompatibleError, match=rf"weighting 'kde' cannot be combined with method '{method}'"):
            resolve_trial(spec)

    @pytest.mark.parametrize("method", ["dm", "dc", "dsa"])
    def test_kde_composes_with_matching_methods(self, method):
        """kde validates with every method that accepts weights."""
        spec = TrialSpec("colored_mnist[base=digits]", method, 1, weighting="kde", protocol="quick-v1")
        assert resolve_trial(spec).weighting.display == "kde"


# --------------------------------------------------------------------------------------------- kde
@pytest.fixture(scope="module")
def default_weights(colored):
    """The default kde weights of colored digits (SupCon encoder, median bandwidth)."""
    kde_module._CACHE.clear()
    configured = WEIGHTINGS.resolve("kde")
    ctx = Context(device=torch.device("cpu"), generator=torch.Generator().manual_seed(0), seed=0)
    with one_thread():
        return configured.obj(configured.params).compute(colored, ctx)


class TestKDEBehaviour:
    def test_conflicting_samples_weigh_more(self, colored, default_weights):
        """With the defaults, bias-conflicting samples get clearly higher mean weight than aligned ones."""
        aligned = colored.train.groups["aligned"]
        ratio = float(default_weights[~aligned].mean() / default_weights[aligned].mean())
        assert ratio > 3.0
        # The point of the default weight map (power 3): the few conflicting samples carry most of
        # their classes' weight, so a weighted real mean is no longer dominated by the bias.
        share = float(default_weights[~aligned].sum() / default_weights.sum())
        assert share > 0.5, f"conflicting samples carry only {share:.0%} of the weight"

    def test_weights_finite_positive_mean_one_per_class(self, colored, default_weights):
        """Weights are finite, positive, at most clip x the mean, and average 1 within every class."""
        w = default_weights.to(torch.float64)
        assert w.shape == (len(colored.train),) and bool(torch.isfinite(w).all()) and bool((w > 0).all())
        for c in range(10):
            assert float(w[colored.train.y == c].mean()) == pytest.approx(1.0, abs=1e-5)
        assert float(w.max()) <= KDEParams().clip + 1e-4

    def test_process_cache_returns_equal_copies(self, colored, default_weights):
        """A second compute with the same (dataset, params, seed) is served from the cache, as a copy."""
        configured = WEIGHTINGS.resolve("kde")
        ctx = Context(device=torch.device("cpu"), generator=torch.Generator(), seed=0)
        again = configured.obj(configured.params).compute(colored, ctx)
        assert torch.equal(again, default_weights) and again.data_ptr() != default_weights.data_ptr()

    def test_deterministic_without_cache(self, colored):
        """Recomputing (cache cleared) gives the same weights: randomness comes from the seed only."""
        configured = WEIGHTINGS.resolve("kde[encoder=random]")
        ctx = Context(device=torch.device("cpu"), generator=torch.Generator(), seed=3)
        with one_thread():
            kde_module._CACHE.clear()
            first = configured.obj(configured.params).compute(colored, ctx)
            kde_module._CACHE.clear()
            assert torch.equal(configured.obj(configured.params).compute(colored, ctx), first)

    def test_chunked_equals_unchunked_and_brute_force(self):
        """Chunked leave-one-out log densities equal one block and a direct float64 evaluation."""
        gen = torch.Generator().manual_seed(0)
        z = torch.randn(37, 5, generator=gen, dtype=torch.float64)
        h = 0.8
        chunked = loo_log_density(z, h, chunk=4)
        whole = loo_log_density(z, h, chunk=1000)
        diff = z[:, None, :] - z[None, :, :]
        kernel = torch.exp(-(diff**2).sum(-1) / (2 * h**2)) / (2 * math.pi * h**2) ** 2.5
        kernel.fill_diagonal_(0.0)
        direct = torch.log(kernel.sum(1) / 36)
        assert torch.allclose(chunked, whole, atol=1e-5)
        assert torch.allclose(chunked, direct, atol=1e-4)

    def test_no_underflow_in_high_dimension(self):
        """Far-apart points in 2,000 dimensions still give finite log densities and weights."""
        z = torch.randn(50, 2000, generator=torch.Generator().manual_seed(1)) * 10
        assert bool(torch.isfinite(loo_log_density(z, 0.5)).all())
        w = kde_weights(z, torch.zeros(50, dtype=torch.long), 1, bandwidth=0.5)
        assert bool(torch.isfinite(w).all()) and float(w.mean()) == pytest.approx(1.0)

    def test_bandwidth_rules(self):
        """median, Scott and Silverman follow their stated formulas."""
        z = torch.tensor([[0.0], [1.0], [3.0]])
        assert bandwidth_rule(z, "median") == pytest.approx(2.0)
        z = torch.randn(400, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
        s = float(z.var(dim=0).mean().sqrt())
        assert bandwidth_rule(z, "scott") == pytest.approx(s * 400 ** (-1 / 7))
        assert bandwidth_rule(z, "silverman") == pytest.approx(s * (4 / 5) ** (1 / 7) * 400 ** (-1 / 7))

    def test_normalisations_and_clip(self):
        """class_sum sums to 1 per class, global_mean averages 1, and clip bounds max / mean."""
        gen = torch.Generator().manual_seed(2)
        z = torch.cat([torch.randn(60, 4, generator=gen) * 0.1, torch.randn(5, 4, generator=gen) + 3])
        y = torch.tensor([0] * 30 + [1] * 30 + [0] * 5)
        w = kde_weights(z, y, 2, normalize="class_sum", bandwidth=0.5)
        assert float(w[y == 0].sum()) == pytest.approx(1.0) and float(w[y == 1].sum()) == pytest.approx(1.0)
        w = kde_weights(z, y, 2, normalize="global_mean", bandwidth=0.5, clip=3.0)
        assert float(w.mean()) == pytest.approx(1.0) and float(w.max()) == pytest.approx(3.0, rel=1e-6)
        unclipped = kde_weights(z, y, 2, bandwidth=0.5, clip=None)
        assert float(unclipped[60:].min()) > float(unclipped[:30].max())  # the outliers weigh most

    def test_power_zero_is_uniform(self):
        """power=0 gives every sample weight 1."""
        z = torch.randn(20, 3, generator=torch.Generator().manual_seed(0))
        w = kde_weights(z, torch.arange(20) % 2, 2, power=0.0)
        assert torch.allclose(w, torch.ones(20, dtype=torch.float64))

    def test_supcon_loss_prefers_class_clusters(self):
        """The SupCon loss is lower when same-class embeddings coincide than when classes are mixed."""
        y = torch.tensor([0, 0, 1, 1])
        tight = torch.nn.functional.normalize(torch.tensor([[1.0, 0], [1, 0.01], [0, 1], [0.01, 1]]), dim=1)
        mixed = tight[[0, 2, 1, 3]]
        assert float(supcon_loss(tight, y, 0.1)) < float(supcon_loss(mixed, y, 0.1))


# ------------------------------------------------------------------ groups (the oracle weighting)
class TestGroupsWeighting:
    @pytest.mark.parametrize("share", [0.0, 0.3, 0.5, 1.0])
    def test_share_of_each_class_on_conflicting(self, colored, share):
        """groups[share=s] puts s of each class's weight on its conflicting samples, mean 1 per class."""
        configured = WEIGHTINGS.resolve(f"groups[share={share}]")
        ctx = Context(device=torch.device("cpu"), generator=torch.Generator(), seed=0)
        w = configured.obj(configured.params).compute(colored, ctx).double()
        aligned, y = colored.train.groups["aligned"], colored.train.y
        for c in range(colored.info.num_classes):
            in_class = y == c
            assert float(w[in_class].mean()) == pytest.approx(1.0), f"class {c} mean weight"
            got = float(w[in_class & ~aligned].sum() / w[in_class].sum())
            assert got == pytest.approx(share), f"class {c}: conflicting share {got:.3f}, asked {share}"
            # even within each group: the oracle knows groups, nothing finer
            assert len(set(w[in_class & aligned].tolist())) == 1

    def test_a_class_with_one_group_stays_uniform(self):
        """A class without conflicting samples keeps weight 1 (nothing to rebalance, no division by 0)."""
        from distillbench.methods.groups import group_weights

        y = torch.tensor([0, 0, 0, 1, 1, 1])
        aligned = torch.tensor([True, True, False, True, True, True])
        w = group_weights(y, aligned, 2, share=0.5)
        assert w[3:].tolist() == [1.0, 1.0, 1.0]
        assert w[2].item() == pytest.approx(1.5) and w[0].item() == pytest.approx(0.75)

    def test_needs_a_dataset_with_groups(self):
        """On a dataset without bias groups the error names the weighting and the datasets that have them."""
        configured = WEIGHTINGS.resolve("groups")
        ctx = Context(device=torch.device("cpu"), generator=torch.Generator(), seed=0)
        with pytest.raises(ConfigError, match=r"weighting 'groups' needs a dataset with bias groups; 'digits'"):
            configured.obj(configured.params).compute(load("digits"), ctx)

    @pytest.mark.parametrize("share", ["-0.1", "1.5"])
    def test_share_out_of_range_is_a_config_error(self, share):
        with pytest.raises(ConfigError, match="share must be in"):
            WEIGHTINGS.resolve(f"groups[share={share}]")


class TestDMWeightMode:
    def test_sample_mode_draws_in_proportion_to_the_weights(self):
        """weight_mode=sample: zero-weight samples are never drawn; the rest in proportion to their weight."""
        from distillbench.methods.dm import _WeightedSampler

        members = [torch.arange(0, 4), torch.arange(4, 8)]
        weights = torch.tensor([0.0, 3.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0])  # class 1: all zero
        idx = _WeightedSampler(members, weights)(4000, torch.Generator().manual_seed(0)).view(2, -1)
        first = idx[0].bincount(minlength=8)
        assert first[0] == 0 and first[3] == 0, "a zero-weight sample was drawn"
        assert float(first[1] / first[2]) == pytest.approx(3.0, rel=0.15)
        assert set(idx[1].tolist()) == {4, 5, 6, 7}, "an all-zero class must fall back to uniform draws"

    def test_sample_mode_changes_the_set_and_default_mode_keeps_the_spec(self, colored, tiny_protocol):
        """dm[weight_mode=sample] gives another set than the weighted mean; the default stays out of the spec."""
        from distillbench.harness.runner import distill_set

        sets = {}
        for mode in ("mean", "sample"):
            spec = TrialSpec(
                "colored_mnist[base=digits,conflict=0.05]",
                f"dm[iterations=3,batch_real=16,net=convnet[width=8],weight_mode={mode}]",
                1,
                weighting="groups[share=0.9]",
                protocol="tiny-test",
            )
            resolved = resolve_trial(spec)
            with one_thread():
                sets[mode] = distill_set(resolved, colored, device=torch.device("cpu")).x
            if mode == "mean":
                assert "weight_mode" not in resolved.method.display, "the default must keep existing trial ids"
        assert torch.isfinite(sets["sample"]).all()
        assert not torch.allclose(sets["mean"], sets["sample"])


@pytest.fixture(scope="module")
def analysis():
    """``benchmarks/kde_analysis.py`` imported as a module."""
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "kde_analysis.py"
    spec = importlib.util.spec_from_file_location("kde_analysis", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules["kde_analysis"] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


class TestWeightStats:
    """``benchmarks/kde_analysis.py``'s weight-map statistics, which docs/bias.md quotes, mean what they say."""

    def test_uniform_weights(self, analysis, colored):
        stats = analysis.weight_stats(torch.ones(len(colored.train)), colored, 16, torch.Generator().manual_seed(0))
        conflict = 1.0 - float(colored.train.groups["aligned"].float().mean())
        assert stats["conflicting_share"] == pytest.approx(conflict, abs=0.02)
        assert stats["auc"] == pytest.approx(0.5) and stats["ess_class"] == pytest.approx(1.0)
        assert stats["ess_batch"] == pytest.approx(16.0) and stats["weightless_batches"] == 0.0

    def test_oracle_weights(self, analysis, colored):
        from distillbench.methods.groups import group_weights

        aligned = colored.train.groups["aligned"]
        w = group_weights(colored.train.y, aligned, colored.info.num_classes, share=1.0)
        stats = analysis.weight_stats(w, colored, 16, torch.Generator().manual_seed(0))
        assert stats["conflicting_share"] == pytest.approx(1.0) and stats["auc"] == pytest.approx(1.0)
        # only the conflicting samples carry weight: the class ESS is their share of the class
        assert stats["ess_class"] == pytest.approx(1.0 - float(aligned.float().mean()), abs=0.02)
        assert 0.0 < stats["weightless_batches"] < 1.0, "some batches of 16 hold no conflicting sample"


# -------------------------------------------------------------------------------------- end to end
class TestEndToEnd:
    def test_dm_with_kde_on_colored_digits(self, tiny_protocol):
        """colored_mnist[base=digits] + dm + kde runs through run_trial and reports the biased dataset."""
        from distillbench.harness.runner import run_trial

        spec = TrialSpec(
            "colored_mnist[base=digits,conflict=0.05]",
            "dm[iterations=5,batch_real=16,net=convnet[width=16]]",
            1,
            weighting="kde[epochs=1]",
            protocol="tiny-test",
        )
        with one_thread():
            (row,) = run_trial(spec)
        assert row["status"] == "ok", row["error"]
        assert row["weighting"] == "kde[epochs=1]" and 0.0 <= row["acc_mean"] <= 1.0
        for column in ("acc_aligned", "acc_conflicting", "acc_worst_group"):
            if row.get(column) is not None:  # filled once the evaluation reads groups
                assert 0.0 <= row[column] <= 1.0


@pytest.mark.realdata
@needs_shared_data("mnist-10k")
class TestRealData:
    def test_colored_mnist_10k(self):
        """../shared/data/mnist-10k: colored_mnist keeps the split sizes and the conflict ratio."""
        bundle = dataset("colored_mnist").load(SHARED_DATA / "mnist-10k")
        check_groups(bundle)
        assert len(bundle.train) + len(bundle.val) == 8000 and len(bundle.test) == 2000
        assert bundle.meta["conflict_measured"]["train"] == pytest.approx(0.05, abs=0.002)

    @pytest.mark.slow
    def test_kde_default_on_colored_mnist_10k(self):
        """The default kde weighting up-weights conflicting samples on the real-data copy too."""
        bundle = dataset("colored_mnist").load(SHARED_DATA / "mnist-10k")
        configured = WEIGHTINGS.resolve("kde")
        ctx = Context(device=torch.device("cpu"), generator=torch.Generator(), seed=0)
        with one_thread():
            w = configured.obj(configured.params).compute(bundle, ctx)
        aligned = bundle.train.groups["aligned"]
        assert float(w[~aligned].mean() / w[aligned].mean()) > 3.0


def test_params_are_documented():
    """Every kde, groups and biased-dataset parameter carries a help text."""
    weightings = (WEIGHTINGS.get(n).Params for n in ("kde", "groups"))
    for cls in (*weightings, *(DATASETS.get(n).Params for n in ("colored_mnist", "bffhq"))):
        for f in dataclasses.fields(cls):
            assert f.metadata.get("help"), f"{cls.__name__}.{f.name} has no help"
