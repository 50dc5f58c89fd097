"""Image datasets in their canonical layouts: loading, splits, long tail, checks, downloads and ``data fetch``.

Every test builds a tiny fake tree of the canonical distribution in ``tmp_path`` (IDX files, CIFAR
pickles, SVHN ``.mat``); downloads go through a replaced ``_files.fetch_url``, so nothing touches the
network. Only ``TestRealData`` reads ``../shared/data`` and is skipped when it is absent.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import pickle
import shutil
import struct
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision.datasets as tvd

from distillbench.datasets import _files
from distillbench.datasets._longtail import (
    VAL_CAP,
    LongTailParams,
    long_tail_counts,
    long_tail_subsample,
    stratified_holdout,
    validation_size,
)
from distillbench.harness.cli import main
from distillbench.harness.errors import DataError
from distillbench.harness.plugins import DATASETS

from .conftest import SHARED_DATA, needs_shared_data

MNIST_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


def dataset(spec: str):
    """An instance of a registered dataset spec such as ``mnist[imbalance=10]``."""
    configured = DATASETS.resolve(spec)
    return configured.obj(configured.params)


def labelled_images(per_class: int, num_classes: int, shape: tuple[int, ...], offset: int = 0):
    """uint8 images whose first two pixels encode a unique id (offset + position); labels cycle by class."""
    n = per_class * num_classes
    images = np.full((n, *shape), 100, dtype=np.uint8)
    ids = np.arange(n) + offset
    flat = images.reshape(n, -1)
    flat[:, 0] = ids % 256
    flat[:, 1] = ids // 256
    flat[:, -1] = 255  # a known pixel value to check the normalisation
    labels = np.arange(n) % num_classes
    return images, labels


def decode_ids(split, mean: float, std: float) -> list[int]:
    """Recover the ids written by ``labelled_images`` from normalised images."""
    flat = split.x.reshape(len(split), -1)[:, :2] * std + mean
    pixels = torch.round(flat * 255).to(torch.int64)
    return (pixels[:, 0] + 256 * pixels[:, 1]).tolist()


def idx_bytes(array: np.ndarray) -> bytes:
    """An IDX file (uint8) holding ``array``."""
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + np.ascontiguousarray(array, dtype=np.uint8).tobytes()


def write_mnist_tree(root: Path, folder: str = "MNIST", *, per_class: int = 20, gz: bool = False) -> Path:
    """A fake MNIST-format tree: ``per_class`` train and 5 test images per class (ids: train 0.., test 10000..)."""
    raw = root / folder / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    x_train, y_train = labelled_images(per_class, 10, (28, 28))
    x_test, y_test = labelled_images(5, 10, (28, 28), offset=10000)
    for name, array in zip(MNIST_FILES, (x_train, y_train, x_test, y_test), strict=True):
        if gz:
            (raw / f"{name}.gz").write_bytes(gzip.compress(idx_bytes(array), mtime=0))
        else:
            (raw / name).write_bytes(idx_bytes(array))
    return raw


def cifar_batch(images: np.ndarray, labels: np.ndarray, label_key: str) -> bytes:
    return pickle.dumps({"data": images.reshape(len(images), -1), label_key: labels.tolist()})


def write_cifar10_tree(root: Path, per_class_per_batch: int = 2) -> Path:
    """A fake ``cifar-10-batches-py``: five train batches of 20 images, a test batch of 20, a meta file."""
    base = root / "cifar-10-batches-py"
    base.mkdir(parents=True, exist_ok=True)
    for i in range(1, 6):
        x, y = labelled_images(per_class_per_batch, 10, (3, 32, 32), offset=100 * i)
        (base / f"data_batch_{i}").write_bytes(cifar_batch(x, y, "labels"))
    x, y = labelled_images(2, 10, (3, 32, 32), offset=10000)
    (base / "test_batch").write_bytes(cifar_batch(x, y, "labels"))
    (base / "batches.meta").write_bytes(pickle.dumps({"label_names": ["airplane"] * 10}))
    return base


def write_cifar100_tree(root: Path) -> Path:
    """A fake ``cifar-100-python``: 3 train and 1 test image per fine class."""
    base = root / "cifar-100-python"
    base.mkdir(parents=True, exist_ok=True)
    x, y = labelled_images(3, 100, (3, 32, 32))
    (base / "train").write_bytes(cifar_batch(x, y, "fine_labels"))
    x, y = labelled_images(1, 100, (3, 32, 32), offset=10000)
    (base / "test").write_bytes(cifar_batch(x, y, "fine_labels"))
    (base / "meta").write_bytes(pickle.dumps({"fine_label_names": ["x"] * 100}))
    return base


def write_svhn_tree(root: Path) -> Path:
    """A fake ``svhn/`` with train (20 per class) and test (3 per class) in the .mat format (digit 0 as 10)."""
    from scipy.io import savemat

    base = root / "svhn"
    base.mkdir(parents=True, exist_ok=True)
    for name, per_class, offset in (("train_32x32.mat", 20, 0), ("test_32x32.mat", 3, 10000)):
        x, y = labelled_images(per_class, 10, (3, 32, 32), offset=offset)
        mat_y = np.where(y == 0, 10, y).astype(np.uint8).reshape(-1, 1)
        savemat(base / name, {"X": np.transpose(x, (2, 3, 1, 0)), "y": mat_y})
    return base


def md5(data: bytes) -> str:
    return hashlib.md5(data, usedforsecurity=False).hexdigest()


@pytest.fixture
def no_network(monkeypatch):
    """Any attempt to download fails the test."""

    def fetch(url, dest, **kwargs):
        raise AssertionError(f"unexpected download of {url}")

    monkeypatch.setattr(_files, "fetch_url", fetch)


class TestLongTailProfile:
    def test_balanced_counts_give_the_cifar10_lt_profile(self):
        """On 5,000 per class and imbalance 100 the targets are Cao et al.'s CIFAR-10-LT counts."""
        assert long_tail_counts([5000] * 10, 100.0) == [5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50]

    def test_profile_is_exponential_in_the_class_index(self):
        """n_c = floor(n_max * imbalance^(-c/(C-1))), computed here with exp/log rather than powers of r."""
        counts = [1000] * 5
        expected = [int(np.floor(1000 * np.exp(-np.log(10.0) * c / 4) + 1e-9)) for c in range(5)]
        assert long_tail_counts(counts, 10.0) == expected

    def test_n_max_is_capped_so_every_class_supplies_its_target(self):
        """A small tail class lowers n_max so the ratio stays exact instead of truncating the tail."""
        counts = [100] * 9 + [5]
        targets = long_tail_counts(counts, 10.0)
        assert targets[0] == 50 and targets[-1] == 5
        assert all(t <= have for t, have in zip(targets, counts, strict=True))

    def test_imbalance_one_keeps_everything(self):
        """imbalance=1 returns the counts unchanged."""
        assert long_tail_counts([7, 3, 5], 1.0) == [7, 3, 5]

    def test_every_non_empty_class_keeps_one_sample(self):
        """An extreme ratio on tiny classes still keeps a sample of each class; empty classes stay empty."""
        assert long_tail_counts([3, 3, 3, 0], 1000.0) == [3, 1, 1, 0]

    def test_subsample_is_seeded(self):
        """Same seed: same counts and same indices; another seed: other indices, same counts."""
        labels = np.repeat(np.arange(4), 50)
        a = long_tail_subsample(labels, 4, 10.0, seed=0)
        b = long_tail_subsample(labels, 4, 10.0, seed=0)
        c = long_tail_subsample(labels, 4, 10.0, seed=1)
        assert np.array_equal(a.indices, b.indices) and a.counts == b.counts == c.counts
        assert not np.array_equal(a.indices, c.indices)
        assert np.bincount(labels[a.indices]).tolist() == a.counts == [50, 23, 10, 5]

    def test_params_reject_ratios_below_one(self):
        """imbalance < 1 (or NaN) is a parameter error."""
        with pytest.raises(ValueError, match="imbalance must be"):
            LongTailParams(imbalance=0.5)
        with pytest.raises(ValueError, match="imbalance must be"):
            LongTailParams(imbalance=float("nan"))


class TestValidationSplit:
    def test_holdout_is_exact_stratified_and_disjoint(self):
        """The hold-out has exactly the requested size, in class proportion, disjoint from the rest."""
        labels = np.array([0] * 60 + [1] * 30 + [2] * 10)
        kept, held = stratified_holdout(labels, 10, seed=0)
        assert len(held) == 10 and np.bincount(labels[held]).tolist() == [6, 3, 1]
        assert set(kept).isdisjoint(held) and len(kept) + len(held) == len(labels)

    def test_size_is_ten_percent_capped(self):
        """10% of the official train split, at most 5,000."""
        assert validation_size(8000) == 800
        assert validation_size(60000) == VAL_CAP == 5000


MNIST_LIKE = [("mnist", "MNIST", 0.1307, 0.3081), ("fashion_mnist", "FashionMNIST", 0.2861, 0.3530)]
MNIST_LIKE += [("kmnist", "KMNIST", 0.1918, 0.3483)]


class TestMNISTFormat:
    @pytest.mark.parametrize(("name", "folder", "mean", "std"), MNIST_LIKE)
    def test_loads_a_fake_tree(self, tmp_path, no_network, name, folder, mean, std):
        """Shapes, dtypes, normalisation with the stated statistics, official test split kept whole."""
        write_mnist_tree(tmp_path, folder)
        ds = dataset(name)
        ds.prepare(tmp_path)
        bundle = ds.load(tmp_path)
        assert bundle.info.name == name and bundle.info.mean == (mean,) and bundle.info.std == (std,)
        assert bundle.train.x.shape == (180, 1, 28, 28) and bundle.train.x.dtype == torch.float32
        assert bundle.val.x.shape == (20, 1, 28, 28) and bundle.test.x.shape == (50, 1, 28, 28)
        assert bundle.train.y.dtype == torch.int64
        assert bundle.train.x[0, 0, -1, -1].item() == pytest.approx((1.0 - mean) / std, rel=1e-5)
        assert sorted(decode_ids(bundle.test, mean, std)) == list(range(10000, 10050))

    def test_splits_are_disjoint_stratified_and_cover_train(self, tmp_path):
        """Validation is 2 per class here; train and validation partition the official train split."""
        write_mnist_tree(tmp_path)
        bundle = dataset("mnist").load(tmp_path)
        train_ids = decode_ids(bundle.train, 0.1307, 0.3081)
        val_ids = decode_ids(bundle.val, 0.1307, 0.3081)
        assert set(train_ids).isdisjoint(val_ids) and sorted(train_ids + val_ids) == list(range(200))
        assert bundle.val.class_counts(10) == [2] * 10
        assert bundle.meta["val_size"] == 20 and bundle.meta["split_seed"] == 0

    def test_loading_is_deterministic(self, tmp_path):
        """Two loads give identical tensors."""
        write_mnist_tree(tmp_path)
        a, b = dataset("mnist").load(tmp_path), dataset("mnist").load(tmp_path)
        assert torch.equal(a.train.x, b.train.x) and torch.equal(a.val.y, b.val.y)

    def test_gz_only_tree_loads_the_same(self, tmp_path):
        """The official ``.gz`` files load without being extracted."""
        write_mnist_tree(tmp_path / "plain")
        write_mnist_tree(tmp_path / "gz", gz=True)
        a, b = dataset("mnist").load(tmp_path / "plain"), dataset("mnist").load(tmp_path / "gz")
        assert torch.equal(a.train.x, b.train.x) and torch.equal(a.test.y, b.test.y)

    def test_imbalance_follows_the_profile_and_keeps_val_test_balanced(self, tmp_path):
        """mnist[imbalance=10]: train counts as computed independently, val and test untouched, display name."""
        write_mnist_tree(tmp_path)
        bundle = dataset("mnist[imbalance=10]").load(tmp_path)
        expected = [int(np.floor(18 * 10.0 ** (-c / 9) + 1e-9)) for c in range(10)]
        assert bundle.train.class_counts(10) == [max(1, e) for e in expected]
        assert bundle.meta["train_class_counts"] == bundle.train.class_counts(10)
        assert bundle.val.class_counts(10) == [2] * 10 and bundle.test.class_counts(10) == [5] * 10
        assert bundle.info.name == "mnist[imbalance=10.0]"
        again = dataset("mnist[imbalance=10]").load(tmp_path)
        assert decode_ids(bundle.train, 0.1307, 0.3081) == decode_ids(again.train, 0.1307, 0.3081)

    def test_missing_files_name_the_path_and_the_address(self, tmp_path, no_network):
        """Offline and missing: one line naming the expected files, the mirror and the fix."""
        with pytest.raises(DataError) as info:
            dataset("mnist").prepare(tmp_path)
        message = str(info.value)
        assert "\n" not in message
        assert str(tmp_path / "MNIST" / "raw" / "train-images-idx3-ubyte") in message
        assert tvd.MNIST.mirrors[0] in message
        assert "distillbench data fetch mnist" in message and "download: true" in message

    def test_load_without_prepare_reports_missing_files(self, tmp_path):
        """``load`` on an empty root raises the same DataError (not a FileNotFoundError)."""
        with pytest.raises(DataError, match="KMNIST/raw/t10k-labels-idx1-ubyte"):
            dataset("kmnist").load(tmp_path)

    def test_bad_magic_number_names_the_file(self, tmp_path):
        """A file that is not IDX is reported by path."""
        raw = write_mnist_tree(tmp_path)
        (raw / "train-labels-idx1-ubyte").write_bytes(b"<html>not found</html>")
        with pytest.raises(DataError, match=r"train-labels-idx1-ubyte is not an IDX file \(bad magic number"):
            dataset("mnist").load(tmp_path)

    def test_truncated_file_names_the_file(self, tmp_path):
        """A payload shorter than the header declares is reported by path."""
        raw = write_mnist_tree(tmp_path)
        path = raw / "t10k-images-idx3-ubyte"
        path.write_bytes(path.read_bytes()[:-10])
        with pytest.raises(DataError, match="t10k-images-idx3-ubyte has 39190 bytes of data but its header"):
            dataset("mnist").load(tmp_path)

    def test_mismatched_label_file_is_reported(self, tmp_path):
        """Images and labels of different lengths are an error naming both files."""
        raw = write_mnist_tree(tmp_path)
        (raw / "train-labels-idx1-ubyte").write_bytes(idx_bytes(np.zeros(7, dtype=np.uint8)))
        with pytest.raises(DataError, match="do not belong together"):
            dataset("mnist").load(tmp_path)


class TestCIFAR:
    def test_cifar10_loads(self, tmp_path, no_network):
        """Five batches are concatenated; channel-major rows become [N, 3, 32, 32]; DC statistics."""
        write_cifar10_tree(tmp_path)
        ds = dataset("cifar10")
        ds.prepare(tmp_path)
        bundle = ds.load(tmp_path)
        assert bundle.info.shape == (3, 32, 32) and bundle.info.class_names[0] == "airplane"
        assert bundle.train.x.shape == (90, 3, 32, 32) and bundle.val.x.shape == (10, 3, 32, 32)
        assert bundle.test.x.shape == (20, 3, 32, 32) and bundle.val.class_counts(10) == [1] * 10
        mean, std = bundle.info.mean, bundle.info.std
        assert bundle.train.x[0, 2, -1, -1].item() == pytest.approx((1.0 - mean[2]) / std[2], rel=1e-5)
        assert bundle.train.x[0, 0, 0, 2].item() == pytest.approx((100 / 255 - mean[0]) / std[0], rel=1e-5)
        ids = decode_ids(bundle.train, mean[0], std[0]) + decode_ids(bundle.val, mean[0], std[0])
        assert sorted(ids) == sorted(100 * i + j for i in range(1, 6) for j in range(20))

    def test_cifar100_uses_fine_labels(self, tmp_path):
        """CIFAR-100 has 100 classes from ``fine_labels``; the class names are the archive's order."""
        write_cifar100_tree(tmp_path)
        bundle = dataset("cifar100").load(tmp_path)
        assert bundle.info.num_classes == 100 and len(set(bundle.info.class_names)) == 100
        assert bundle.info.class_names[:3] == ("apple", "aquarium_fish", "baby")
        assert len(bundle.train) + len(bundle.val) == 300 and bundle.test.class_counts(100) == [1] * 100

    def test_corrupt_batch_names_the_file(self, tmp_path):
        """A batch that does not unpickle is reported by path."""
        base = write_cifar10_tree(tmp_path)
        (base / "data_batch_3").write_bytes(b"garbage")
        with pytest.raises(DataError, match="data_batch_3 as a CIFAR batch"):
            dataset("cifar10").load(tmp_path)

    def test_missing_names_the_archive_address(self, tmp_path, no_network):
        """The message names the missing batch and the official archive address."""
        with pytest.raises(DataError) as info:
            dataset("cifar100").prepare(tmp_path)
        assert str(tmp_path / "cifar-100-python" / "train") in str(info.value)
        assert tvd.CIFAR100.url in str(info.value)


class TestSVHN:
    def test_loads_and_maps_label_10_to_0(self, tmp_path, no_network):
        """``.mat`` [32, 32, 3, N] becomes [N, 3, 32, 32]; digit 0 (stored as 10) is class 0."""
        write_svhn_tree(tmp_path)
        ds = dataset("svhn")
        ds.prepare(tmp_path)
        bundle = ds.load(tmp_path)
        assert bundle.train.x.shape == (180, 3, 32, 32) and bundle.test.x.shape == (30, 3, 32, 32)
        assert bundle.test.class_counts(10) == [3] * 10
        mean, std = bundle.info.mean, bundle.info.std
        test_ids = decode_ids(bundle.test, mean[0], std[0])
        # labelled_images gives id i the label i % 10; the round trip through 10 -> 0 must preserve it.
        assert [(i - 10000) % 10 for i in test_ids] == bundle.test.y.tolist()

    def test_unreadable_mat_names_the_file(self, tmp_path):
        """A file that is not MATLAB format is reported by path."""
        base = write_svhn_tree(tmp_path)
        (base / "test_32x32.mat").write_bytes(b"nope")
        with pytest.raises(DataError, match="test_32x32.mat as an SVHN .mat file"):
            dataset("svhn").load(tmp_path)


def serve(files: dict[str, bytes], calls: list[str]):
    """A fake ``fetch_url`` serving ``files`` by URL and recording the URLs asked for."""

    def fetch(url, dest, **kwargs):
        calls.append(url)
        if url not in files:
            raise OSError(f"HTTP Error 404: {url}")
        Path(dest).write_bytes(files[url])

    return fetch


class TestDownload:
    @pytest.fixture
    def mnist_remote(self, tmp_path, monkeypatch):
        """Fake MNIST .gz files with their md5s installed in torchvision's table; returns {url: bytes}."""
        source = write_mnist_tree(tmp_path / "source", gz=True)
        blobs = {f"{n}.gz": (source / f"{n}.gz").read_bytes() for n in MNIST_FILES}
        monkeypatch.setattr(tvd.MNIST, "mirrors", ["https://a.invalid/mnist/", "https://b.invalid/mnist/"])
        monkeypatch.setattr(tvd.MNIST, "resources", [(k, md5(v)) for k, v in blobs.items()])
        return {f"https://b.invalid/mnist/{k}": v for k, v in blobs.items()}

    def test_download_falls_back_to_the_next_mirror_and_extracts(self, tmp_path, monkeypatch, mnist_remote):
        """The first mirror fails, the second serves; .gz files are kept and extracted; no temp files left."""
        calls: list[str] = []
        monkeypatch.setattr(_files, "fetch_url", serve(mnist_remote, calls))
        root = tmp_path / "root"
        dataset("mnist").prepare(root, download=True)
        raw = root / "MNIST" / "raw"
        assert sorted(p.name for p in raw.iterdir()) == sorted([*MNIST_FILES, *(f"{n}.gz" for n in MNIST_FILES)])
        assert calls[0] == "https://a.invalid/mnist/train-images-idx3-ubyte.gz" and len(calls) == 8
        assert len(dataset("mnist").load(root).test) == 50
        calls.clear()
        dataset("mnist").prepare(root, download=True)  # idempotent: present and verified, nothing fetched
        assert calls == []

    def test_concurrent_fetches_download_each_file_once(self, tmp_path, monkeypatch, mnist_remote):
        """Two fetches at once: the lock makes the second wait and find the files; each is fetched once."""
        import threading
        import time

        calls: list[str] = []
        fetch = serve(mnist_remote, calls)

        def slow_fetch(url, dest, **kwargs):
            time.sleep(0.05)  # widen the window in which an unlocked second fetch would start
            fetch(url, dest)

        monkeypatch.setattr(_files, "fetch_url", slow_fetch)
        root = tmp_path / "root"
        errors: list[BaseException] = []

        def work():
            try:
                dataset("mnist").prepare(root, download=True)
            except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
                errors.append(exc)

        threads = [threading.Thread(target=work) for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert errors == []
        assert sorted(c for c in calls if c.startswith("https://b.")) == sorted(mnist_remote)

    def test_checksum_mismatch_on_download_names_the_file(self, tmp_path, monkeypatch, mnist_remote):
        """Served bytes with the wrong md5 are rejected and never land under the final name."""
        corrupt = {url: data[:-1] + b"x" for url, data in mnist_remote.items()}
        monkeypatch.setattr(_files, "fetch_url", serve(corrupt, []))
        root = tmp_path / "root"
        with pytest.raises(DataError) as info:
            dataset("mnist").prepare(root, download=True)
        message = str(info.value)
        assert "md5 mismatch" in message and str(root / "MNIST" / "raw" / "train-images-idx3-ubyte.gz") in message
        assert list((root / "MNIST" / "raw").iterdir()) == []

    def test_present_corrupt_file_is_reported_not_replaced(self, tmp_path, no_network, mnist_remote):
        """With download on, a present .gz that fails its md5 is a DataError naming it (a user's file is kept)."""
        raw = write_mnist_tree(tmp_path / "root", gz=True)
        (raw / "t10k-labels-idx1-ubyte.gz").write_bytes(gzip.compress(b"other"))
        with pytest.raises(DataError, match=r"t10k-labels-idx1-ubyte.gz does not match its official md5"):
            dataset("mnist").prepare(tmp_path / "root", download=True)
        assert (raw / "t10k-labels-idx1-ubyte.gz").exists()

    def test_checksums_are_not_required_without_download(self, tmp_path, no_network):
        """A re-split copy with the right layout but other contents loads when download is off."""
        write_mnist_tree(tmp_path, gz=True)
        dataset("mnist").prepare(tmp_path, download=False)
        assert len(dataset("mnist").load(tmp_path).train) == 180

    def test_cifar10_archive_is_downloaded_verified_and_extracted(self, tmp_path, monkeypatch):
        """The tar.gz is fetched, checked, extracted; each batch then matches its md5."""
        base = write_cifar10_tree(tmp_path / "source")
        buffer = io.BytesIO()
        with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
            tar.add(base, arcname="cifar-10-batches-py")
        archive = buffer.getvalue()
        sums = {p.name: md5(p.read_bytes()) for p in base.iterdir()}
        monkeypatch.setattr(tvd.CIFAR10, "url", "https://c.invalid/cifar-10-python.tar.gz")
        monkeypatch.setattr(tvd.CIFAR10, "tgz_md5", md5(archive))
        monkeypatch.setattr(
            tvd.CIFAR10, "train_list", [[f"data_batch_{i}", sums[f"data_batch_{i}"]] for i in range(1, 6)]
        )
        monkeypatch.setattr(tvd.CIFAR10, "test_list", [["test_batch", sums["test_batch"]]])
        monkeypatch.setattr(tvd.CIFAR10, "meta", {**tvd.CIFAR10.meta, "md5": sums["batches.meta"]})
        calls: list[str] = []
        monkeypatch.setattr(_files, "fetch_url", serve({"https://c.invalid/cifar-10-python.tar.gz": archive}, calls))
        root = tmp_path / "root"
        dataset("cifar10").prepare(root, download=True)
        assert calls == ["https://c.invalid/cifar-10-python.tar.gz"]
        assert sorted(p.name for p in (root / "cifar-10-batches-py").iterdir()) == sorted(sums)
        assert len(dataset("cifar10").load(root).test) == 20
        assert not [p for p in root.iterdir() if p.name.startswith(".cifar-10-batches-py")]  # temp dir removed

    def test_svhn_download_with_checksum_mismatch(self, tmp_path, monkeypatch):
        """An SVHN file served with the wrong bytes is rejected with the file and the address named."""
        table = {k: list(v) for k, v in tvd.SVHN.split_list.items()}
        table["train"] = ["https://s.invalid/train_32x32.mat", "train_32x32.mat", md5(b"expected")]
        table["test"] = ["https://s.invalid/test_32x32.mat", "test_32x32.mat", md5(b"expected")]
        monkeypatch.setattr(tvd.SVHN, "split_list", table)
        served = {"https://s.invalid/train_32x32.mat": b"something else"}
        monkeypatch.setattr(_files, "fetch_url", serve(served, []))
        with pytest.raises(DataError) as info:
            dataset("svhn").prepare(tmp_path, download=True)
        message = str(info.value)
        assert str(tmp_path / "svhn" / "train_32x32.mat") in message and "https://s.invalid/train_32x32.mat" in message
        assert "md5 mismatch" in message

    def test_fetch_url_failure_names_every_address(self, tmp_path, monkeypatch, mnist_remote):
        """When every mirror fails the error lists each address with its reason and the manual fix."""
        monkeypatch.setattr(_files, "fetch_url", serve({}, []))
        with pytest.raises(DataError) as info:
            dataset("mnist").prepare(tmp_path, download=True)
        message = str(info.value)
        assert "https://a.invalid/mnist/train-images-idx3-ubyte.gz: HTTP Error 404" in message
        assert (
            "https://b.invalid/mnist/train-images-idx3-ubyte.gz" in message and "download the file by hand" in message
        )


class TestDigits:
    def test_display_name_uses_format_spec(self, no_network):
        """``digits[imbalance=10]`` is displayed as the registry's canonical spec."""
        assert dataset("digits[imbalance=10]").info().name == "digits[imbalance=10.0]"
        assert dataset("digits").info().name == "digits"

    def test_long_tail_uses_the_shared_profile(self):
        """The digits long tail equals the shared helper's targets on its balanced-ish train counts."""
        full = dataset("digits").load(Path("."))
        tail = dataset("digits[imbalance=10]").load(Path("."))
        assert tail.train.class_counts(10) == long_tail_counts(full.train.class_counts(10), 10.0)
        assert tail.test.class_counts(10) == full.test.class_counts(10)


class TestTestConfig:
    @pytest.mark.parametrize("name", ["mnist", "fashion_mnist", "kmnist", "svhn", "cifar10", "cifar100"])
    def test_test_config_resolves(self, name):
        """Each image dataset declares a ``test_config`` that its ``Params`` accept."""
        cls = DATASETS.get(name)
        options = ",".join(f"{k}={v}" for k, v in cls.test_config.items())
        configured = DATASETS.resolve(f"{name}[{options}]")
        assert configured.params.imbalance == cls.test_config["imbalance"]


@pytest.mark.realdata
@needs_shared_data("mnist-10k")
class TestRealData:
    def test_mnist_10k_loads(self):
        """../shared/data/mnist-10k: 8,000 train (+val) and 2,000 test with the README's class counts."""
        root = SHARED_DATA / "mnist-10k"
        ds = dataset("mnist")
        ds.prepare(root)
        bundle = ds.load(root)
        train_val = torch.cat([bundle.train.y, bundle.val.y])
        assert len(train_val) == 8000 and len(bundle.test) == 2000 and len(bundle.val) == 800
        assert torch.bincount(train_val, minlength=10).tolist() == [773, 905, 834, 803, 788, 723, 756, 813, 787, 818]
        assert abs(bundle.train.x.mean().item()) < 0.05 and abs(bundle.train.x.std().item() - 1) < 0.05


class TestDataCommand:
    def test_fetch_digits_needs_nothing(self, capsys, no_network):
        """``data fetch digits`` exits 0 and says no download is needed."""
        assert main(["data", "fetch", "digits"]) == 0
        assert "nothing to download" in capsys.readouterr().out

    def test_fetch_failure_is_one_line_and_exit_2(self, tmp_path, capsys, monkeypatch):
        """A failing download gives exit status 2 and one ``error:`` line naming the file."""
        monkeypatch.setattr(_files, "fetch_url", serve({}, []))
        code = main(["data", "fetch", "mnist", "--data-root", str(tmp_path)])
        err = capsys.readouterr().err
        assert code == 2 and err.count("\n") == 1 and err.startswith("error: dataset 'mnist': could not download")
        assert str(tmp_path / "MNIST" / "raw" / "train-images-idx3-ubyte.gz") in err

    def test_fetch_prints_where_the_files_are(self, tmp_path, capsys, monkeypatch):
        """A successful fetch prints the data root and each file."""
        source = write_mnist_tree(tmp_path / "source", gz=True)
        blobs = {f"{n}.gz": (source / f"{n}.gz").read_bytes() for n in MNIST_FILES}
        monkeypatch.setattr(tvd.KMNIST, "mirrors", ["https://k.invalid/"])
        monkeypatch.setattr(tvd.KMNIST, "resources", [(k, md5(v)) for k, v in blobs.items()])
        monkeypatch.setattr(_files, "fetch_url", serve({f"https://k.invalid/{k}": v for k, v in blobs.items()}, []))
        root = tmp_path / "root"
        assert main(["data", "fetch", "kmnist", "--data-root", str(root)]) == 0
        out = capsys.readouterr().out
        assert f"kmnist: ready under {root}" in out and str(root / "KMNIST" / "raw" / "train-images-idx3-ubyte") in out
        shutil.rmtree(root)
