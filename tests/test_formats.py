"""The field's released sets in (each format, written here in its repository's layout) and sets out (export, push).

Equality checks: every artefact holds the same tensors as a distillbench set of the same dataset, and
evaluating it (``evaluate --format ...``) gives exactly the same per-model accuracies as evaluating the
native set. Mismatches exit 2 with one line naming both sides. A ``.pt`` that pickles an object is refused
before anything in it runs. Export is loaded back with ``datasets``; push talks to a local stand-in hub,
since no hub is reachable from the development machines.
"""

from __future__ import annotations

import base64
import hashlib
import http.server
import io
import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from distillbench.harness import formats, store
from distillbench.harness.cli import main
from distillbench.harness.types import DistilledSet

pytestmark = pytest.mark.usefixtures("one_thread")
IPC = 2


def run_cli(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def accuracies(capsys, *argv):
    code, out, err = run_cli(capsys, "evaluate", *argv, "--protocol", "tiny-test", "--json")
    assert code == 0, err
    return json.loads(out)["acc_per_model"]


def one_line_error(capsys, *argv, expect):
    code, out, err = run_cli(capsys, *argv)
    assert code == 2, (out, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    for words in [expect] if isinstance(expect, str) else expect:
        assert words in lines[0], lines[0]
    return lines[0]


def save_native(folder, x, y, dataset, zca=False):
    meta = {"spec": {"dataset": dataset, "method": "random", "ipc": IPC, "seed": 0}}
    return store.save_set(folder, "native", DistilledSet(x, y, meta={"zca": zca}), meta)


@pytest.fixture(scope="module")
def real(digits):
    """IPC real digits per class, class-major (the order DC, MTT and DATM keep), in digits' normalised space."""
    idx = torch.cat([torch.nonzero(digits.train.y == c)[:IPC, 0] for c in range(10)])
    return digits.train.x[idx].clone(), digits.train.y[idx].clone(), digits.info


@pytest.fixture(scope="module")
def native(real, tiny_protocol, tmp_path_factory):
    """The real set saved as a distillbench set."""
    x, y, _ = real
    return save_native(tmp_path_factory.mktemp("native"), x, y, "digits")


_NATIVE: dict[str, list[float]] = {}


def native_accuracies(capsys, path):
    """Per-model accuracies of a native set (each evaluated once per session)."""
    if str(path) not in _NATIVE:
        _NATIVE[str(path)] = accuracies(capsys, path)
    return _NATIVE[str(path)]


# ----------------------------------------------------------------------------------- DC / DSA / DM
def write_dc_res(folder, x, y, name="res_DM_digits_ConvNet_2ipc.pt"):
    """VICO-UoE/DatasetCondensation main.py / main_DM.py: data = [[images, labels]] per experiment."""
    accs = {"ConvNet": [np.float64(0.5), np.float64(0.75)]}  # numpy scalars, as the repository pickles them
    path = folder / name
    torch.save({"data": [[torch.zeros_like(x), y], [x.clone(), y.clone()]], "accs_all_exps": accs}, path)
    return path


def test_dc_res_equals_native_and_import_records_provenance(tmp_path, capsys, real, native):
    x, y, _ = real
    want = native_accuracies(capsys, native)
    res = write_dc_res(tmp_path, x, y)
    got = accuracies(capsys, res, "--format", "dc-res", "--dataset", "digits", "--space", "normalised")
    assert got == want
    # import, then evaluate the imported set as any distillbench set
    out = tmp_path / "imported.safetensors"
    code, text, err = run_cli(
        capsys, "import", res, "--format", "auto", "--dataset", "digits", "--space", "normalised", "--out", out
    )
    assert code == 0, err
    assert "20 images (2 per class, hard labels)" in text and "set: " in text
    dset, meta = store.load_set(out)
    assert torch.equal(dset.x, x) and torch.equal(dset.y, y)
    block = meta["imported"]
    assert block["format"] == "dc-res" and block["source"] == str(res.resolve())
    assert block["sha256"] == hashlib.sha256(res.read_bytes()).hexdigest()
    assert block["facts"]["experiment"] == 1 and block["facts"]["reported_accuracy"]["ConvNet"]["mean_percent"] == 62.5
    assert block["space"]["kind"] == "normalised" and block["space"]["how"].startswith("declared")
    assert accuracies(capsys, out) == want


def test_dc_res_detects_the_repository_statistics_and_converts_exactly(tmp_path):
    """res_DM_CIFAR10...: DC's CIFAR-10 statistics are detected; another mean/std is converted exactly."""
    x = torch.rand(10, 3, 4, 4)
    res = write_dc_res(tmp_path, x, torch.arange(10), name="res_DSA_CIFAR10_ConvNet_1ipc.pt")
    art = formats.read_artefact(res, "dc-res")
    assert art.space.kind == "normalised" and art.space.mean == formats.DC_STATS["cifar10"][0]
    assert art.source_dataset == "CIFAR10" and art.source_method == "DSA"
    # A file pickled under numpy 1.x names numpy.core.multiarray.scalar; it loads under numpy 2 too.
    scalar = (getattr(np, "_core", None) or np.core).multiarray.scalar
    module = scalar.__module__
    try:
        scalar.__module__ = "numpy.core.multiarray"
        old = write_dc_res(tmp_path, x, torch.arange(10), name="res_DM_CIFAR10_ConvNet_1ipc.pt")
    finally:
        scalar.__module__ = module
    assert "numpy.core.multiarray.scalar" in torch.serialization.get_unsafe_globals_in_checkpoint(old)
    assert formats.read_artefact(old, "dc-res").facts["reported_accuracy"]["ConvNet"]["n"] == 2

    class Info:
        mean, std = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)

    converted, words = formats._convert(res, x, art.space, Info)
    mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in formats.DC_STATS["cifar10"])
    pixels = x * std + mean
    assert torch.allclose(converted, (pixels - 0.5) / 0.25, atol=1e-6) and words.startswith("renormalised")


# --------------------------------------------------------------------------------------- MTT / FTD
def write_mtt(folder, x, y, *, zca_copy=False, ema=False):
    """MTT distill.py: logged_files/{dataset}/{run}/images_{best|it}.pt + labels_*.pt (FTD: ema_ prefix)."""
    run = folder / "logged_files" / "digits" / "run-1"
    run.mkdir(parents=True)
    prefix = "ema_" if ema else ""
    torch.save(x.clone(), run / f"{prefix}images_best.pt")
    torch.save(y.clone(), run / f"{prefix}labels_best.pt")
    torch.save(torch.zeros_like(x), run / f"{prefix}images_1000.pt")
    torch.save(y.clone(), run / f"{prefix}labels_1000.pt")
    if zca_copy:
        torch.save(x.clone(), run / f"{prefix}images_zca_1000.pt")  # the de-whitened copy of a ZCA run
    return run


def test_mtt_equals_native(tmp_path, capsys, real, native):
    x, y, _ = real
    want = native_accuracies(capsys, native)
    run = write_mtt(tmp_path, x, y)
    assert formats.detect_format(run) == "mtt"
    assert accuracies(capsys, run, "--format", "auto", "--dataset", "digits", "--space", "normalised") == want
    assert (
        accuracies(capsys, run / "images_best.pt", "--format", "mtt", "--dataset", "digits", "--space", "normalised")
        == want
    )
    ftd = write_mtt(tmp_path / "ftd", x, y, ema=True)
    assert accuracies(capsys, ftd, "--format", "mtt", "--dataset", "digits", "--space", "normalised") == want


def test_mtt_space_must_be_declared_or_detected(tmp_path, capsys, real):
    x, y, _ = real
    run = write_mtt(tmp_path, x, y)
    one_line_error(
        capsys,
        "evaluate",
        run,
        "--format",
        "mtt",
        "--dataset",
        "digits",
        expect=["cannot tell the space", "--space zca"],
    )
    one_line_error(
        capsys,
        "evaluate",
        run,
        "--format",
        "mtt[checkpoint=500]",
        "--dataset",
        "digits",
        "--space",
        "normalised",
        expect="checkpoints there: 1000, best",
    )
    zca_run = write_mtt(tmp_path / "z", x, y, zca_copy=True)  # images_zca_* beside it: a ZCA run
    one_line_error(
        capsys,
        "evaluate",
        zca_run,
        "--format",
        "mtt",
        "--dataset",
        "digits",
        expect=["ZCA-whitened (detected: images_zca_1000.pt", "dataset 'digits' is not", "'digits[zca=true]'"],
    )


def test_tesla_probabilities_are_soft_labels_and_logits_are_refused(tmp_path, real):
    x, _, _ = real
    run = tmp_path / "run"
    run.mkdir()
    torch.save(x, run / "images_best.pt")
    torch.save(torch.softmax(torch.randn(len(x), 10), 1), run / "labels_best.pt")
    assert formats.read_artefact(run, "mtt").y.shape == (len(x), 10)
    torch.save(torch.randn(len(x), 10), run / "labels_best.pt")
    with pytest.raises(formats.DataError, match="logits"):
        formats.read_artefact(run, "mtt")


# -------------------------------------------------------------------------------------------- DATM
def test_datm_equals_native(tmp_path, capsys, real, digits):
    """ZCA-space images, float logits saved with requires_grad, and the learned lr; soft labels = softmax."""
    from distillbench.datasets._zca import whiten_bundle

    _, y, _ = real
    white = whiten_bundle(digits)
    idx = torch.cat([torch.nonzero(digits.train.y == c)[:IPC, 0] for c in range(10)])
    xz = white.train.x[idx].clone()
    noise = torch.randn(len(idx), 10, generator=torch.Generator().manual_seed(0))
    logits = (4 * torch.nn.functional.one_hot(y, 10) + noise).requires_grad_()  # learned logits favour the class
    normal = tmp_path / "logged_files" / "digits" / "2" / "ConvNet" / "run" / "Normal"
    normal.mkdir(parents=True)
    torch.save(xz, normal / "images_best.pt")
    torch.save(logits, normal / "labels_best.pt")
    torch.save(torch.tensor(0.0123), normal / "lr_best.pt")
    soft = torch.softmax(logits.detach().double(), 1).float()
    native = save_native(tmp_path, xz, soft, "digits[zca=true]", zca=True)
    want = accuracies(capsys, native)
    assert formats.detect_format(normal.parent) == formats.detect_format(normal / "images_best.pt") == "datm"
    assert accuracies(capsys, normal.parent, "--format", "datm", "--dataset", "digits[zca=true]") == want
    out = tmp_path / "datm.safetensors"
    code, _, err = run_cli(capsys, "import", normal.parent, "--dataset", "digits[zca=true]", "--out", out)
    assert code == 0, err
    dset, meta = store.load_set(out)
    assert torch.equal(dset.y, soft) and float(dset.extras["syn_lr"]) == pytest.approx(0.0123)
    assert meta["imported"]["space"]["how"].startswith("detected: DATM") and dset.meta["zca"] is True
    one_line_error(
        capsys, "evaluate", normal.parent, "--format", "datm", "--dataset", "digits", expect="'digits[zca=true]'"
    )


# ---------------------------------------------------------------------------------- image folders
def to_u8(x, info):
    return torch.round((x * info.std[0] + info.mean[0]).clamp(0, 1) * 255).to(torch.uint8)


def from_u8(u8, info):
    """What any 8-bit pixel set means in digits' space: (pixels / 255 - mean) / std (the converter's arithmetic)."""
    m = torch.tensor(info.mean, dtype=torch.float32).view(1, -1, 1, 1)
    s = torch.tensor(info.std, dtype=torch.float32).view(1, -1, 1, 1)
    return (u8.float() / 255.0 - m) / s


def png(u8_image):
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(u8_image[0].numpy(), mode="L").save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def pixels(real, tmp_path_factory, tiny_protocol):
    """The real set as 8-bit images, and a native set of what those pixels are in digits' space."""
    x, y, info = real
    u8 = to_u8(x, info)
    path = save_native(tmp_path_factory.mktemp("px"), from_u8(u8, info), y, "digits")
    return u8, y, path


def write_folder(root, u8, y, style="rded"):
    """RDED ``{c:05d}/class{c:05d}_id{j:05d}.jpg`` (PNG here: lossless), SRe2L ``new{c:03d}/class{c:03d}_id{k:03d}``."""
    for i, (img, label) in enumerate(zip(u8, y.tolist(), strict=True)):
        c = int(label)
        folder = root / (f"{c:05d}" if style == "rded" else f"new{c:03d}")
        folder.mkdir(parents=True, exist_ok=True)
        name = f"class{c:05d}_id{i:05d}.png" if style == "rded" else f"class{c:03d}_id{i:03d}.png"
        (folder / name).write_bytes(png(img))
    (root / "notes.txt").write_text("ignored")
    return root


def test_image_folder_equals_native(tmp_path, capsys, pixels, real):
    u8, y, path = pixels
    want = native_accuracies(capsys, path)
    rded = write_folder(tmp_path / "exp" / "syn_data", u8, y)
    assert formats.detect_format(rded) == "image-folder"
    assert accuracies(capsys, rded, "--format", "image-folder", "--dataset", "digits") == want
    sre2l = write_folder(tmp_path / "sre2l" / "syn_data", u8, y, style="sre2l")
    soft = torch.softmax(torch.randn(len(y), 10), 1)
    torch.save(soft, tmp_path / "soft.pt")
    out = tmp_path / "sre2l.safetensors"
    code, _, err = run_cli(
        capsys,
        "import",
        sre2l,
        "--format",
        f"image-folder[soft_labels={tmp_path / 'soft.pt'}]",
        "--dataset",
        "digits",
        "--out",
        out,
    )
    assert code == 0, err
    dset, meta = store.load_set(out)
    assert torch.equal(dset.x, store.load_set(path)[0].x) and torch.equal(dset.y, soft)
    assert meta["imported"]["space"]["kind"] == "pixels" and set(meta["imported"]["files"]) >= {
        "new000/class000_id000.png"
    }


def test_image_folder_mismatches(tmp_path, capsys, pixels):
    u8, y, _ = pixels
    rgb = write_folder(tmp_path / "rgb", u8, y)
    from PIL import Image

    for file in rgb.rglob("*.png"):
        Image.open(file).convert("RGB").save(file)
    one_line_error(
        capsys,
        "evaluate",
        rgb,
        "--format",
        "image-folder",
        "--dataset",
        "digits",
        expect=["shape 3x8x8", "1x8x8", "channel"],
    )
    nine = write_folder(tmp_path / "nine", u8[y < 9], y[y < 9])
    one_line_error(
        capsys,
        "evaluate",
        nine,
        "--format",
        "image-folder",
        "--dataset",
        "digits",
        expect=["9 classes", "has 10 classes"],
    )
    good = write_folder(tmp_path / "good", u8, y)
    one_line_error(
        capsys,
        "evaluate",
        good,
        "--format",
        "image-folder",
        "--dataset",
        "digits",
        "--space",
        "zca",
        expect="image files hold pixels",
    )


# --------------------------------------------------------------------------------- Hugging Face folders
def write_hf(root, u8, y):
    """rethinkdc on the hub: data/train-000NN-of-000MM.parquet, columns image (HF Image) and class_id."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    (root / "data").mkdir(parents=True)
    struct = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    images = pa.array([{"bytes": png(img), "path": None} for img in u8], type=struct)
    half = len(y) // 2
    for i, part in enumerate((slice(0, half), slice(half, None))):
        table = pa.table({"image": images[part], "class_id": pa.array(y[part].numpy())})
        pq.write_table(table, root / "data" / f"train-{i:05d}-of-00002-abc.parquet")
    (root / "README.md").write_text(
        "---\nconfigs:\n- config_name: default\n  data_files:\n  - split: train\n    path: data/train-*\n---\n# set\n"
    )
    return root


def test_hf_folder_equals_native_and_runs_no_script(tmp_path, capsys, pixels):
    u8, y, path = pixels
    want = native_accuracies(capsys, path)
    hf = write_hf(tmp_path / "hf", u8, y)
    assert formats.detect_format(hf) == "hf"
    assert accuracies(capsys, hf, "--format", "hf", "--dataset", "digits") == want
    scripted = tmp_path / "scripted"
    scripted.mkdir()
    (scripted / "scripted.py").write_text("raise SystemExit('a loading script must never run')\n")
    (scripted / "README.md").write_text("# a scripted dataset\n")
    one_line_error(capsys, "evaluate", scripted, "--format", "hf", "--dataset", "digits", expect="runs no code")


# ----------------------------------------------------------------------------------------- safety
class Payload:
    """Unpickling this would create a folder (a stand-in for arbitrary code)."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


def test_pickled_object_is_refused_and_nothing_runs(tmp_path, capsys, real):
    x, y, _ = real
    marker = tmp_path / "payload-ran"
    run = tmp_path / "run"
    run.mkdir()
    torch.save({"images": x, "hook": Payload(marker)}, run / "images_best.pt")
    torch.save(y, run / "labels_best.pt")
    line = one_line_error(
        capsys,
        "evaluate",
        run,
        "--format",
        "mtt",
        "--dataset",
        "digits",
        "--space",
        "normalised",
        expect=["refused", "mkdir", "weights_only=True"],
    )
    assert not marker.exists(), line
    # The payload is live: an unsafe load would have run it.
    torch.load(run / "images_best.pt", weights_only=False)
    assert marker.is_dir()


# ------------------------------------------------------------------------------------- mismatches
def mismatch_cases(tmp_path, x, y):
    res = write_dc_res(tmp_path, x, y)
    cifar = write_dc_res(tmp_path, x, y, name="res_DM_CIFAR10_ConvNet_2ipc.pt")
    wide = write_dc_res(tmp_path, x.repeat(1, 3, 1, 1), y, name="res_DC_rgb_ConvNet_2ipc.pt")
    big = write_dc_res(tmp_path, x, y + 2, name="res_DC_big_ConvNet_2ipc.pt")
    px = write_dc_res(tmp_path, (x - x.min()) / (x.max() - x.min()), y, name="res_DC_px_ConvNet_2ipc.pt")
    loud = write_dc_res(tmp_path, x * 100, y, name="res_DC_loud_ConvNet_2ipc.pt")
    d = ("--format", "dc-res", "--dataset", "digits")
    return [
        ((wide, *d, "--space", "normalised"), ["shape 3x8x8", "'digits'", "1x8x8"]),
        ((big, *d, "--space", "normalised"), ["labels range over [2, 11]", "10 classes"]),
        ((cifar, *d, "--space", "normalised"), ["distilled on CIFAR10", "evaluated on dataset 'digits'"]),
        ((res, *d, "--space", "pixels"), ["values range over", "pixels in [0, 1]"]),
        ((px, *d, "--space", "normalised"), ["every value is >= 0, like pixels", "'digits'"]),
        ((loud, *d, "--space", "normalised"), ["spread with std", "'digits'"]),
        ((res, *d, "--space", "zca"), ["ZCA-whitened", "'digits' is not"]),
        ((res, "--format", "dc-res", "--dataset", "digits[zca=true]", "--space", "normalised"), ["is ZCA-whitened"]),
        ((res, *d, "--mean", "0.5"), ["--mean and --std go together"]),
        ((res, "--dataset", "digits"), ["apply to foreign formats"]),
        ((res, "--format", "dc-res", "--space", "normalised"), ["needs --dataset"]),
        ((res, "--format", "dc-rez", "--dataset", "digits"), ["unknown format 'dc-rez'", "dc-res"]),
        ((res, "--format", "dc-res[exp=1]", "--dataset", "digits"), ["no option 'exp'", "experiment"]),
        ((res, *d, "--space", "normalised", "--protocol", "dd-replay-v1"), ["replays"]),
    ]


def test_mismatches_are_one_line_errors_naming_both_sides(tmp_path, capsys, real):
    x, y, _ = real
    for argv, expect in mismatch_cases(tmp_path, x, y):
        one_line_error(capsys, "evaluate", *argv, expect=expect)
    # an explicit escape hatch for values meant so
    px = tmp_path / "res_DC_px_ConvNet_2ipc.pt"
    code, _, err = run_cli(
        capsys,
        "import",
        px,
        "--dataset",
        "digits",
        "--space",
        "normalised",
        "--skip-value-check",
        "--out",
        tmp_path / "o",
    )
    assert code == 0, err


# ------------------------------------------------------------------------------------ export, push
@pytest.fixture(scope="module")
def hf_datasets():
    """Hugging Face's ``datasets`` (in the test extra), imported as a user would, from the repository root."""
    return pytest.importorskip("datasets", reason="datasets (Hugging Face) is in the test extra")


@pytest.mark.parametrize("installed", [True, False])
def test_import_datasets_in_a_checkout_is_hugging_face(installed):
    """From the repository root, ``import datasets`` gives Hugging Face's package, not our datasets/ folder
    (which Python would find first on sys.path); without it installed, the usual ModuleNotFoundError."""
    from .conftest import REPO

    flags = [] if installed else ["-S"]  # -S: no site-packages, so no Hugging Face datasets
    if installed:
        pytest.importorskip("datasets", reason="datasets (Hugging Face) is in the test extra")
    code = "import datasets; print(datasets.__file__); print(hasattr(datasets, 'load_dataset'))"
    proc = subprocess.run([sys.executable, *flags, "-c", code], cwd=REPO, capture_output=True, text=True)
    if installed:
        assert proc.returncode == 0, proc.stderr
        path, loads = proc.stdout.split()
        assert Path(path).resolve().parent != REPO / "datasets" and loads == "True", proc.stdout
    else:
        assert proc.returncode == 1 and "ModuleNotFoundError: No module named 'datasets'" in proc.stderr, proc.stderr


@pytest.fixture(scope="module")
def distilled(tmp_path_factory, tiny_protocol):
    """A set in a results directory with its row (random, digits, IPC 2, tiny-test)."""
    from distillbench.harness.runner import run_trial

    results = tmp_path_factory.mktemp("results")
    rows = run_trial(
        {"dataset": "digits", "method": "random", "ipc": IPC, "protocol": "tiny-test", "grid": "t"}, results=results
    )
    assert rows[0]["status"] == "ok", rows[0]["error"]
    store.write_rows(results, rows)  # as the scheduler does
    return results / "sets" / f"{rows[0]['distill_id']}.safetensors", rows[0]


def test_export_loads_with_datasets_and_round_trips(tmp_path, capsys, distilled, hf_datasets):
    datasets = hf_datasets
    import yaml

    set_file, row = distilled
    out = tmp_path / "hf"
    code, text, err = run_cli(capsys, "export", set_file, "--out", out)
    assert code == 0, err
    assert "1 result rows" in text
    ds = datasets.load_dataset(str(out), split="train", cache_dir=str(tmp_path / "cache")).with_format("numpy")
    dset, _ = store.load_set(set_file)
    assert np.array_equal(ds["x"][:], dset.x.numpy()) and ds["x"][:].dtype == np.float32
    assert np.array_equal(ds["label"][:], dset.y.numpy())
    assert ds.features["label"].names == [str(i) for i in range(10)] and "image" in ds.column_names
    card = yaml.safe_load((out / "README.md").read_text().split("---\n")[1])["distillbench"]
    assert card["method"]["name"] == "random" and card["dataset"]["spec"] == "digits" and card["ipc"] == IPC
    assert card["normalisation"]["space"] == "normalised" and card["zca"] is False
    assert card["provenance"]["distill_id"] == row["distill_id"]
    (result,) = card["results"]
    assert result["protocol"] == "tiny-test" and result["acc_mean"] == pytest.approx(row["acc_mean"])
    for name, digest in card["checksums"]["sha256"].items():
        assert hashlib.sha256((out / name).read_bytes()).hexdigest() == digest
    assert (out / "set.safetensors").read_bytes() == set_file.read_bytes()
    # The exported folder is an hf-format set: evaluating it gives the set's own accuracies.
    assert accuracies(capsys, out, "--format", "hf", "--dataset", "digits") == accuracies(capsys, set_file)
    one_line_error(capsys, "export", set_file, "--out", out, expect="not an empty folder")


def test_export_soft_and_zca_sets(tmp_path, capsys, hf_datasets):
    datasets = hf_datasets
    x = torch.randn(6, 1, 8, 8)
    soft = torch.softmax(torch.randn(6, 10), 1)
    meta = {"spec": {"dataset": "digits[zca=true]", "method": "random", "ipc": 1, "seed": 0}}
    path = store.save_set(tmp_path, "soft", DistilledSet(x, soft, meta={"zca": True}), meta)
    code, _, err = run_cli(capsys, "export", path, "--out", tmp_path / "out")
    assert code == 0, err
    ds = datasets.load_dataset(str(tmp_path / "out"), split="train", cache_dir=str(tmp_path / "c")).with_format("numpy")
    assert np.array_equal(ds["soft_label"][:], soft.numpy()) and np.array_equal(ds["x"][:], x.numpy())
    assert "image" not in ds.column_names  # no pixel preview of whitened values
    back = formats.read_artefact(tmp_path / "out", "hf")
    assert back.space.kind == "zca" and torch.equal(back.y, soft)


class StandInHub(http.server.BaseHTTPRequestHandler):
    """Answers the hub endpoints create_repo and upload_folder call, and records each request."""

    requests: list[tuple[str, str, dict, bytes]] = []

    def log_message(self, *args):
        pass

    def _reply(self, obj, status=200):
        body = json.dumps(obj).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _body(self):
        if self.headers.get("Transfer-Encoding") == "chunked":
            data = b""
            while size := int(self.rfile.readline().strip(), 16):
                data += self.rfile.read(size)
                self.rfile.readline()
            self.rfile.readline()
            return data
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def do_GET(self):
        self.requests.append(("GET", self.path, dict(self.headers), b""))
        self._reply({"error": "not in the stand-in"}, 404)

    def do_POST(self):
        body = self._body()
        self.requests.append(("POST", self.path, {k.lower(): v for k, v in self.headers.items()}, body))
        base = f"http://127.0.0.1:{self.server.server_address[1]}"
        if self.path == "/api/repos/create":
            doc = json.loads(body)
            return self._reply({"url": f"{base}/datasets/{doc.get('organization')}/{doc['name']}"})
        if self.path == "/api/validate-yaml":
            return self._reply({"errors": [], "warnings": []})
        if "/preupload/" in self.path:
            files = json.loads(body)["files"]
            return self._reply(
                {"files": [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False} for f in files]}
            )
        if "/commit/" in self.path:
            oid = "0" * 40
            return self._reply({"commitUrl": f"{base}/datasets/me/digits-random/commit/{oid}", "commitOid": oid})
        return self._reply({"error": "not in the stand-in"}, 404)


@pytest.fixture
def hub(monkeypatch):
    pytest.importorskip("huggingface_hub", reason="huggingface_hub is in the test extra")
    StandInHub.requests = []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), StandInHub)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    monkeypatch.setenv("HF_ENDPOINT", url)  # what push passes to HfApi(endpoint=...)
    # huggingface_hub reads HF_ENDPOINT once, at import: older releases parse the repository URL against that.
    monkeypatch.setattr("huggingface_hub.constants.ENDPOINT", url, raising=False)
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
    yield StandInHub.requests
    server.shutdown()


def committed_files(requests):
    (commit,) = [body for method, path, _, body in requests if "/commit/" in path]
    files = {}
    for line in commit.decode().splitlines():
        item = json.loads(line)
        if item["key"] == "file":
            files[item["value"]["path"]] = base64.b64decode(item["value"]["content"])
    return files


def test_push_makes_the_hub_requests(tmp_path, capsys, distilled, hub):
    set_file, _ = distilled
    code, out, err = run_cli(capsys, "push", set_file, "me/digits-random", "--private", "--token", "hf_test_token")
    assert code == 0, err
    assert "pushed to http://127.0.0.1" in out
    posts = [(path, headers, body) for method, path, headers, body in hub if method == "POST"]  # GETs: hub metadata
    assert posts[0][0] == "/api/repos/create" and posts[-1][0] == "/api/datasets/me/digits-random/commit/main"
    create = json.loads(posts[0][2])
    assert create["name"] == "digits-random" and create["organization"] == "me" and create["type"] == "dataset"
    assert create.get("private") is True or create.get("visibility") == "private"
    assert all(headers.get("authorization") == "Bearer hf_test_token" for _, headers, _ in posts)
    files = committed_files(hub)
    assert set(files) == {"README.md", "data/train-00000-of-00001.parquet", "set.safetensors", "set.json"}
    assert files["set.safetensors"] == set_file.read_bytes()
    import yaml

    card = yaml.safe_load(files["README.md"].decode().split("---\n")[1])
    for name, digest in card["distillbench"]["checksums"]["sha256"].items():
        assert hashlib.sha256(files[name]).hexdigest() == digest
    validated = [json.loads(body)["content"] for _, path, _, body in hub if path == "/api/validate-yaml"]
    assert validated and set(validated) == {files["README.md"].decode()}  # hub 0.25 validates it twice
    # An exported folder is pushed byte for byte.
    hub.clear()
    run_cli(capsys, "export", set_file, "--out", tmp_path / "folder")
    code, _, err = run_cli(capsys, "push", tmp_path / "folder", "me/digits-random", "--token", "hf_test_token")
    assert code == 0, err
    assert (
        committed_files(hub) == {name: (tmp_path / "folder" / name).read_bytes() for name in committed_files(hub)}
        and len(committed_files(hub)) == 4
    )


def test_push_errors(tmp_path, capsys, distilled, monkeypatch):
    set_file, _ = distilled
    monkeypatch.setitem(__import__("sys").modules, "huggingface_hub", None)
    one_line_error(capsys, "push", set_file, "me/x", expect=["huggingface_hub", "pip install huggingface_hub"])
    monkeypatch.undo()
    pytest.importorskip("huggingface_hub")
    one_line_error(capsys, "push", set_file, "me/../x", expect="not of the form 'owner/name'")
    one_line_error(capsys, "push", tmp_path, "me/x", expect="not a folder written by 'distillbench export'")
