"""Distilled sets in the formats of the field's repositories: read them, check them, import them.

One reader per format turns an artefact into tensors plus what the artefact says about itself; one
pipeline (:func:`import_set`) then checks those against the dataset the set will be evaluated on and
converts the values into that dataset's space. ``docs/formats.md`` is the user's guide.

=================  ======================================================================================
format             what it reads (layout as the official code writes it; METHODS-trajectory.md section 7)
=================  ======================================================================================
``distillbench``   ``<name>.safetensors`` + ``<name>.json`` (``distill --out``, ``<results>/sets/``)
``dc-res``         VICO-UoE/DatasetCondensation ``res_{DC|DSA|DM}_{dataset}_{model}_{ipc}ipc.pt``: a dict
                   ``data`` = list of ``[images, labels]`` per experiment, ``accs_all_exps`` = accuracies
``mtt``            MTT / FTD / TESLA ``images_{best|it}.pt`` + ``labels_{best|it}.pt`` (FTD: ``ema_`` too)
``datm``           DATM ``Normal/images_best.pt``, ``labels_best.pt`` (logits), ``lr_best.pt``
``image-folder``   class subfolders of image files (SRe2L ``new000/``, RDED ``00000/``, ImageFolder)
``hf``             a Hugging Face dataset folder: Parquet (or ``save_to_disk`` Arrow) files, README card
=================  ======================================================================================

What each artefact declares is kept apart from what is checked:

* the **space** of the values (:class:`Space`): pixels in [0, 1] or [0, 255], mean/std-normalised
  (with which statistics), or ZCA-whitened. A reader *detects* it where the artefact tells (image
  files hold pixels; DATM whitens in every configuration; MTT writes ``images_zca_*.pt`` only for
  ZCA runs; the DC repository normalises with its per-dataset statistics); the user *declares* it
  otherwise (``--space``, ``--mean``/``--std``, ``--pixel-max``). Neither known: a one-line error.
* the **checks** against the evaluation dataset, each a one-line error naming both sides: the
  dataset the artefact names, image shape and channels, number of classes, ZCA on one side only,
  values outside the declared pixel range, and values whose statistics contradict the declared space
  (all non-negative where the dataset's samples are mostly negative, or a spread 5x off).
* the **conversion**, only where it is exact arithmetic: pixels (``/ 255`` for 8-bit) to the
  dataset's ``(pixels - mean) / std``, and one mean/std normalisation to another (MTT normalises
  CIFAR-100 with CIFAR-10's statistics). ZCA is never converted to or from: it must match.

Loading never runs code from the artefact: ``.pt`` files go through ``torch.load(weights_only=True)``
(a file that pickles any other object is refused, naming the object), images through PIL, Parquet and
Arrow through pyarrow; a dataset folder's loading script is never imported.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import hashlib
import io
import json
import re
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from distillbench.harness.errors import ConfigError, DataError, IncompatibleError
from distillbench.harness.types import DistilledSet

__all__ = [
    "FORMATS",
    "Artefact",
    "Declared",
    "ImportedTrial",
    "Space",
    "detect_format",
    "import_set",
    "imported_trial",
    "load_pt",
    "read_artefact",
]

FORMATS: dict[str, str] = {
    "distillbench": "a set written by distillbench (.safetensors + .json)",
    "dc-res": "VICO-UoE/DatasetCondensation res_{DC,DSA,DM}_{dataset}_{model}_{ipc}ipc.pt",
    "mtt": "MTT/FTD/TESLA images_{best,IT}.pt + labels_{best,IT}.pt (FTD: ema_images_*.pt)",
    "datm": "DATM Normal/images_best.pt, labels_best.pt (logits), lr_best.pt",
    "image-folder": "class subfolders of image files (SRe2L, RDED, torchvision ImageFolder)",
    "hf": "a Hugging Face dataset folder (Parquet or save_to_disk Arrow files; no loading script is run)",
}

SPACES = ("pixels", "normalised", "zca")

# ------------------------------------------------------------------------------ normalisation constants
# METHODS.md "Data preprocessing (DC repo)" and METHODS-trajectory.md section 1.1.
_IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
_CIFAR10_DC = ((0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010))
#: Statistics the DC/DSA/DM repository normalises each dataset with, by its dataset name (lower case).
DC_STATS: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "mnist": ((0.1307,), (0.3081,)),
    "fashionmnist": ((0.2861,), (0.3530,)),
    "svhn": ((0.4377, 0.4438, 0.4728), (0.1980, 0.2010, 0.1970)),
    "cifar10": _CIFAR10_DC,
    "cifar100": ((0.5071, 0.4866, 0.4409), (0.2673, 0.2564, 0.2762)),
    "tinyimagenet": _IMAGENET,
}
#: MTT, FTD and DATM: CIFAR-100 too is normalised with CIFAR-10's statistics; Tiny and ImageNet with ImageNet's.
MTT_STATS: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "cifar10": _CIFAR10_DC,
    "cifar100": _CIFAR10_DC,
    "tiny": _IMAGENET,
    "tinyimagenet": _IMAGENET,
    "imagenet": _IMAGENET,
}
#: The repositories' dataset names that are a distillbench dataset (the key is lower case without _ and -).
_SOURCE_TO_OURS = {
    "mnist": "mnist",
    "fashionmnist": "fashion_mnist",
    "kmnist": "kmnist",
    "svhn": "svhn",
    "cifar10": "cifar10",
    "cifar100": "cifar100",
}

_STD_FACTOR = 5.0  # a set's spread this far from the data's (either way) contradicts the declared space
_PIXEL_SLACK = 0.1  # pixel values may overshoot [0, max] by this fraction of max (unclipped pixel-space sets)
_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff", ".gif", ".ppm", ".pgm")


def _key(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", name.lower())


# ----------------------------------------------------------------------------------------- data types
@dataclasses.dataclass(frozen=True)
class Space:
    """How a set's values relate to pixels.

    Attributes:
        kind: ``pixels`` (``pixel_max`` is white), ``normalised`` (``(pixels - mean) / std`` per channel)
            or ``zca`` (kornia ZCA of [0, 1] pixels, as MTT/FTD/DATM whiten).
        mean, std: the statistics of a ``normalised`` space; ``None``: the evaluation dataset's own.
        pixel_max: the value of white for ``pixels`` (1 or 255).
        how: where this came from: ``declared (...)`` or ``detected: ...``.
    """

    kind: str
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    pixel_max: float = 1.0
    how: str = ""

    def describe(self) -> str:
        if self.kind == "pixels":
            return f"pixels in [0, {self.pixel_max:g}]"
        if self.kind == "zca":
            return "ZCA-whitened pixels"
        if self.mean is None:
            return "normalised with the dataset's own mean/std"
        return f"normalised with mean {list(self.mean)} and std {list(self.std or ())}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "mean": list(self.mean) if self.mean is not None else None,
            "std": list(self.std) if self.std is not None else None,
            "pixel_max": self.pixel_max if self.kind == "pixels" else None,
            "how": self.how,
            "description": self.describe(),
        }


@dataclasses.dataclass(frozen=True)
class Declared:
    """What the user declares about a foreign set (CLI ``--space``, ``--mean``/``--std``, ``--pixel-max``).

    Attributes:
        space: ``pixels``, ``normalised`` or ``zca``; ``None`` leaves it to detection.
        mean, std: the statistics a ``normalised`` set was normalised with (default: detected, else the
            evaluation dataset's own).
        pixel_max: white in a ``pixels`` set (1 or 255; default 1, 255 for 8-bit image files).
        check_values: run the statistical checks of the values against the dataset (on by default).
    """

    space: str | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    pixel_max: float | None = None
    check_values: bool = True

    def __post_init__(self) -> None:
        if self.space is not None and self.space not in SPACES:
            raise ConfigError(f"--space must be one of {', '.join(SPACES)}, got {self.space!r}")
        if (self.mean is None) != (self.std is None):
            raise ConfigError("--mean and --std go together: pass both (one value per channel, comma-separated)")
        if self.mean is not None:
            if self.space not in (None, "normalised"):
                raise ConfigError(f"--mean/--std describe a normalised set; they contradict --space {self.space}")
            if len(self.mean) != len(self.std or ()):
                raise ConfigError(f"--mean has {len(self.mean)} values but --std has {len(self.std or ())}")
            if any(s <= 0 for s in self.std or ()):
                raise ConfigError(f"--std values must be positive, got {list(self.std or ())}")
        if self.pixel_max is not None:
            if self.space not in (None, "pixels"):
                raise ConfigError(f"--pixel-max describes a pixel set; it contradicts --space {self.space}")
            if self.pixel_max not in (1.0, 255.0):
                raise ConfigError(f"--pixel-max must be 1 or 255, got {self.pixel_max:g}")

    @property
    def anything(self) -> bool:
        return self.space is not None or self.mean is not None or self.pixel_max is not None

    def flags(self) -> list[str]:
        out = [f"--space {self.space}"] if self.space else []
        if self.mean is not None:
            out.append(
                f"--mean {','.join(f'{v:g}' for v in self.mean)} --std {','.join(f'{v:g}' for v in self.std or ())}"
            )
        if self.pixel_max is not None:
            out.append(f"--pixel-max {self.pixel_max:g}")
        return out


def parse_floats(text: str | None, flag: str) -> tuple[float, ...] | None:
    """``"0.1,0.2"`` -> ``(0.1, 0.2)`` for ``--mean``/``--std``; one-line ``ConfigError`` otherwise."""
    if text is None:
        return None
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        raise ConfigError(f"{flag} takes comma-separated numbers such as 0.4914,0.4822,0.4465; got {text!r}") from None
    if not values or not all(np.isfinite(values)):
        raise ConfigError(f"{flag} takes finite numbers, got {text!r}")
    return values


@dataclasses.dataclass
class Artefact:
    """What a reader found, before any check against a dataset.

    Attributes:
        x: images ``[n, channels, H, W]``, float (any space) or uint8 (8-bit pixels).
        y: hard labels ``[n]`` (int64) or soft labels ``[n, C]`` (float probabilities).
        files: the files read (their checksums go into the import's provenance).
        root: the folder ``files`` are shown relative to.
        space: the detected space, or ``None`` (then ``unknown_space`` says why).
        stats: detected statistics a ``normalised`` declaration uses by default, with how they were found.
        source_dataset: the dataset the artefact names (file name, folder), as it names it.
        source_method: the method it names (``DM``, ``MTT``, ...).
        class_names: the names of the class folders or label feature, when the format has them.
        labels_note: how the labels were made from the stored ones.
        facts: anything else worth keeping (checkpoint, experiment index, reported accuracies, ...).
        extras: extra tensors kept with the set (``syn_lr``: a learned step size; evaluation ignores it).
    """

    x: torch.Tensor
    y: torch.Tensor
    files: list[Path]
    root: Path
    space: Space | None = None
    unknown_space: str = ""
    stats: tuple[tuple[float, ...], tuple[float, ...], str] | None = None
    source_dataset: str | None = None
    source_method: str | None = None
    class_names: tuple[str, ...] | None = None
    labels_note: str = "hard labels as stored"
    facts: dict[str, Any] = dataclasses.field(default_factory=dict)
    extras: dict[str, torch.Tensor] = dataclasses.field(default_factory=dict)


# ------------------------------------------------------------------------------------- safe loading
@contextlib.contextmanager
def _numpy_scalars_allowed() -> Iterator[None]:
    """Let ``weights_only`` loads build numpy scalars and dtypes (the DC repository pickles accuracies so).

    ``numpy ... scalar(dtype, bytes)`` rebuilds a number from its bytes and ``numpy.dtype`` a type
    descriptor; neither runs code. Files pickled under numpy < 2 name ``numpy.core``, newer ones
    ``numpy._core``: both spellings are allowed.
    """
    safe_globals = getattr(torch.serialization, "safe_globals", None)
    if safe_globals is None:  # torch < 2.5: such files are refused like any other pickled object
        yield
        return
    core = getattr(np, "_core", None) or np.core
    scalar = core.multiarray.scalar
    allowed: list[Any] = [scalar, np.dtype]
    allowed += [getattr(np.dtypes, n) for n in dir(getattr(np, "dtypes", object())) if n.endswith("DType")]
    if tuple(int(p) for p in re.findall(r"\d+", torch.__version__)[:2]) >= (2, 6):  # (object, name) pairs: 2.6+
        allowed += [(scalar, f"numpy.{core}.multiarray.scalar") for core in ("core", "_core")]
    with safe_globals(allowed):
        yield


def load_pt(path: Path, *, numpy_scalars: bool = False) -> Any:
    """``torch.load(path, weights_only=True)`` on the CPU, with every failure as one ``DataError`` line.

    A file that pickles anything but tensors, numbers, strings and containers of them is refused before
    any of it is built: the message names the objects (read without unpickling, by
    ``torch.serialization.get_unsafe_globals_in_checkpoint``) and says how to re-save the tensors alone.

    Args:
        path: the ``.pt`` / ``.pth`` / ``.tar`` file.
        numpy_scalars: also allow numpy scalars and dtypes (DC ``res_*.pt`` accuracies; see
            :func:`_numpy_scalars_allowed`).
    """
    import pickle

    if not path.is_file():
        raise DataError(f"{path}: no such file")
    try:
        with _numpy_scalars_allowed() if numpy_scalars else contextlib.nullcontext():
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        names = _unsafe_globals(path)
        what = f" ({', '.join(names[:4])}{', ...' if len(names) > 4 else ''})" if names else ""
        raise DataError(
            f"{path}: refused: the file pickles Python objects{what} that loading would have to construct, which "
            "can run arbitrary code; distillbench loads .pt files only with torch.load(weights_only=True) "
            "(tensors, numbers, strings, lists and dicts): re-save the tensors alone, e.g. "
            "torch.save({'images': x, 'labels': y}, path)"
        ) from None
    except Exception as exc:  # a truncated zip, a text file, ...: name it in one line
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise DataError(f"{path}: not a readable torch file ({type(exc).__name__}: {first[:200]})") from None


def _unsafe_globals(path: Path) -> list[str]:
    """The globals a pickled file would import (scanned with pickletools; nothing is built or run)."""
    scan = getattr(torch.serialization, "get_unsafe_globals_in_checkpoint", None)
    if scan is None:
        return []
    try:
        return list(scan(path))
    except Exception:
        return []


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _tensor(value: Any, what: str) -> torch.Tensor:
    if not isinstance(value, torch.Tensor):
        raise DataError(f"{what} holds a {type(value).__name__}, not a tensor")
    return value.detach().cpu()


# ------------------------------------------------------------------------------------ format options
_OPTIONS: dict[str, dict[str, tuple[type, str]]] = {
    "distillbench": {},
    "dc-res": {"experiment": (int, "which experiment of 'data' (default -1: the last, as DC-Bench loads)")},
    "mtt": {
        "checkpoint": (str, "'best' (default) or an iteration: images_{checkpoint}.pt"),
        "ema": (bool, "read FTD's EMA set ema_images_*.pt (default: only when no plain images_*.pt exists)"),
    },
    "datm": {"checkpoint": (str, "'best' (default) or an iteration: images_/labels_/lr_{checkpoint}.pt")},
    "image-folder": {"soft_labels": (str, "a .pt/.safetensors tensor [n, C] of probabilities, in reading order")},
    "hf": {
        "split": (str, "the split to read (default train)"),
        "image_column": (str, "column of images (default: the image feature, or 'image'/'img')"),
        "label_column": (str, "column of class ids (default: label, labels, class_id, class, target)"),
        "soft_label_column": (str, "column of probability vectors (default: soft_label when present)"),
    },
}


def parse_format(text: str) -> tuple[str, dict[str, Any]]:
    """``'dc-res[experiment=0]'`` -> ``('dc-res', {'experiment': 0})``; one-line errors for bad names and options."""
    from distillbench.harness.params import parse_spec

    name, raw = parse_spec(text)
    if name == "auto":
        if raw:
            raise ConfigError("--format auto takes no options; name the format to pass options")
        return name, {}
    if name not in FORMATS:
        import difflib

        close = difflib.get_close_matches(name, list(FORMATS), n=2, cutoff=0.5)
        hint = f" Did you mean: {', '.join(close)}?" if close else ""
        raise ConfigError(f"unknown format {name!r}.{hint} Formats: auto, {', '.join(FORMATS)}")
    allowed = _OPTIONS[name]
    options: dict[str, Any] = {}
    for key, value in raw.items():
        if key not in allowed:
            listed = ", ".join(f"{k} ({h})" for k, (_, h) in allowed.items()) or "none"
            raise ConfigError(f"format {name!r} has no option {key!r}; its options: {listed}")
        kind = allowed[key][0]
        if kind is int:
            try:
                options[key] = int(value)
            except ValueError:
                raise ConfigError(f"format option {key} takes an integer, got {value!r}") from None
        elif kind is bool:
            if value.lower() not in ("true", "false", "1", "0", "yes", "no"):
                raise ConfigError(f"format option {key} takes true or false, got {value!r}")
            options[key] = value.lower() in ("true", "1", "yes")
        else:
            options[key] = value
    return name, options


# ------------------------------------------------------------------------------------------ detection
def detect_format(path: Path) -> str:
    """The format of ``path`` from its names alone (no file is unpickled); one-line ``DataError`` if unclear."""
    if not path.exists():
        raise DataError(f"{path}: no such file or folder")
    if path.is_file():
        name = path.name
        if name.endswith(".safetensors") or (name.endswith(".json") and path.with_suffix(".safetensors").is_file()):
            return "distillbench"
        if re.fullmatch(r"res_.+_\d+ipc\.pt", name):
            return "dc-res"
        match = re.fullmatch(r"(ema_)?images_(\w+)\.pt", name)
        if match:
            return "datm" if (path.parent / f"lr_{match.group(2)}.pt").is_file() else "mtt"
        if name.endswith((".parquet", ".arrow")):
            return "hf"
        raise DataError(f"{path}: cannot tell its format from the name; pass --format ({', '.join(FORMATS)})")
    entries = {p.name for p in path.iterdir()}
    if (path / "Normal").is_dir() or any(re.fullmatch(r"lr_\w+\.pt", n) for n in entries):
        return "datm"
    if any(re.fullmatch(r"(ema_)?images_\w+\.pt", n) for n in entries):
        return "mtt"
    if [n for n in entries if re.fullmatch(r"res_.+_\d+ipc\.pt", n)]:
        return "dc-res"
    tables = [p for pattern in ("*.parquet", "*.arrow", "*/*.parquet", "*/*.arrow") for p in path.glob(pattern)]
    if tables:
        return "hf"
    if _class_dirs(path):
        return "image-folder"
    if (path / "README.md").is_file():
        return "hf"  # a dataset card without data files: the hf reader says what is missing
    raise DataError(f"{path}: cannot tell which format this folder is in; pass --format ({', '.join(FORMATS)})")


# ---------------------------------------------------------------------------------------------- readers
def read_dc_res(path: Path, options: Mapping[str, Any]) -> Artefact:
    """DC/DSA/DM (VICO-UoE/DatasetCondensation): ``res_{METHOD}_{dataset}_{model}_{ipc}ipc.pt``."""
    if path.is_dir():
        found = sorted(p for p in path.iterdir() if re.fullmatch(r"res_.+_\d+ipc\.pt", p.name))
        if len(found) != 1:
            names = ", ".join(p.name for p in found) or "none"
            raise DataError(f"{path}: expected one res_*_<ipc>ipc.pt file in the folder, found {names}; pass the file")
        path = found[0]
    match = re.fullmatch(r"res_([^_]+)_(.+)_([^_]+)_(\d+)ipc\.pt", path.name)
    if match is None:
        raise DataError(
            f"{path}: not named like the DC repository's results "
            "(res_{DC|DSA|DM}_{dataset}_{model}_{ipc}ipc.pt)"
        )
    method, source, model, ipc = match.groups()
    obj = load_pt(path, numpy_scalars=True)
    if not isinstance(obj, dict) or not isinstance(obj.get("data"), list | tuple) or not obj["data"]:
        raise DataError(f"{path}: not a DC results dict (expected a dict whose 'data' lists [images, labels] pairs)")
    experiments = obj["data"]
    index = int(options.get("experiment", -1))
    if not -len(experiments) <= index < len(experiments):
        raise ConfigError(f"{path}: experiment={index} is out of range; the file holds {len(experiments)} experiments")
    pair = experiments[index]
    if not isinstance(pair, list | tuple) or len(pair) != 2:
        raise DataError(f"{path}: data[{index}] is not an [images, labels] pair")
    x = _tensor(pair[0], f"{path}: data[{index}][0]")
    y = _tensor(pair[1], f"{path}: data[{index}][1]")
    facts: dict[str, Any] = {
        "experiment": index if index >= 0 else len(experiments) + index,
        "experiments": len(experiments),
        "model": model,
        "ipc_in_name": int(ipc),
    }
    reported = _reported_accuracies(obj.get("accs_all_exps"))
    if reported:
        facts["reported_accuracy"] = reported
    stats = DC_STATS.get(_key(source))
    return Artefact(
        x=x,
        y=y,
        files=[path],
        root=path.parent,
        space=(
            Space(
                "normalised", stats[0], stats[1], how=f"detected: the DC repository's {source} statistics (file name)"
            )
            if stats
            else None
        ),
        unknown_space=(
            ""
            if stats
            else f"the file name names dataset {source!r}, whose DC-repository normalisation distillbench does not know"
        ),
        source_dataset=source,
        source_method=method,
        facts=facts,
    )


def _reported_accuracies(accs: Any) -> dict[str, dict[str, float]]:
    """``accs_all_exps`` (eval model -> accuracies as fractions) as mean/std in %, for provenance."""
    out: dict[str, dict[str, float]] = {}
    if not isinstance(accs, Mapping):
        return out
    for model, values in accs.items():
        try:
            arr = np.asarray([float(v) for v in values], dtype=np.float64)
        except (TypeError, ValueError):
            continue
        if arr.size:
            out[str(model)] = {
                "mean_percent": round(100 * float(arr.mean()), 4),
                "std_percent": round(100 * float(arr.std()), 4),
                "n": int(arr.size),
            }
    return out


def _logged_dataset(path: Path) -> str | None:
    """The dataset folder of MTT/FTD/DATM's ``logged_files/{dataset}/...`` layout, if the path has one."""
    parts = path.resolve().parts
    for marker in ("logged_files", "ema_logged_files"):
        if marker in parts:
            i = len(parts) - 1 - parts[::-1].index(marker)
            if i + 1 < len(parts):
                return parts[i + 1]
    return None


def _trajectory_files(path: Path, options: Mapping[str, Any], fmt: str) -> tuple[Path, Path, str, bool]:
    """(images file, labels file, checkpoint, ema) of an MTT/FTD/DATM run folder or images file."""
    if path.is_file():
        match = re.fullmatch(r"(ema_)?images_(\w+)\.pt", path.name)
        if match is None or match.group(2).startswith("zca_"):
            raise DataError(
                f"{path}: expected an images_{{best|IT}}.pt file (images_zca_*.pt is the de-whitened copy MTT keeps "
                "for viewing; read images_*.pt instead)"
            )
        ema, checkpoint = bool(match.group(1)), match.group(2)
        folder = path.parent
    else:
        folder = path / "Normal" if fmt == "datm" and (path / "Normal").is_dir() else path
        checkpoint = str(options.get("checkpoint", "best"))
        plain = (folder / f"images_{checkpoint}.pt").is_file()
        ema = bool(options.get("ema", not plain and (folder / f"ema_images_{checkpoint}.pt").is_file()))
    prefix = "ema_" if ema else ""
    images = folder / f"{prefix}images_{checkpoint}.pt"
    labels = folder / f"{prefix}labels_{checkpoint}.pt"
    if not images.is_file():
        found = sorted(
            m.group(2)
            for p in folder.glob(f"{prefix}images_*.pt")
            if (m := re.fullmatch(r"(ema_)?images_(\w+)\.pt", p.name)) and not m.group(2).startswith("zca_")
        )
        listed = ", ".join(found) or "none"
        raise DataError(
            f"{folder}: no {images.name}; checkpoints there: {listed} (choose one: --format '{fmt}[checkpoint=...]')"
        )
    if not labels.is_file():
        raise DataError(f"{images}: no {labels.name} beside it; {fmt} writes the labels next to the images")
    return images, labels, checkpoint, ema


def _stats_of(source: str | None) -> tuple[tuple[float, ...], tuple[float, ...], str] | None:
    stats = MTT_STATS.get(_key(source)) if source else None
    if stats is None:
        return None
    note = " (CIFAR-10's, as MTT normalises CIFAR-100)" if _key(source or "") == "cifar100" else ""
    return stats[0], stats[1], f"detected: MTT's statistics for {source}{note} (logged_files folder)"


def read_mtt(path: Path, options: Mapping[str, Any]) -> Artefact:
    """MTT / FTD / TESLA: ``images_{best|IT}.pt`` + ``labels_{best|IT}.pt`` (FTD's EMA: ``ema_`` prefix)."""
    images, labels, checkpoint, ema = _trajectory_files(path, options, "mtt")
    x = _tensor(load_pt(images), str(images))
    y = _tensor(load_pt(labels), str(labels))
    note = "hard labels as stored"
    if y.is_floating_point() and y.dim() == 2:
        ok = bool((y >= 0).all()) and bool(
            torch.allclose(y.double().sum(1), torch.ones(len(y), dtype=torch.float64), atol=1e-3)
        )
        if not ok:
            raise DataError(
                f"{labels}: float labels [n, C] whose rows are not probability distributions (logits?); TESLA stores "
                "probabilities, DATM logits: read DATM sets with --format datm"
            )
        note = "soft labels as stored (probabilities, TESLA --teacher_label)"
    folder = images.parent
    prefix = "ema_" if ema else ""
    zca_copies = sorted(p.name for p in folder.glob(f"{prefix}images_zca_*.pt")) + sorted(
        p.name for p in folder.glob("images_zca_*.pt") if ema
    )
    source = _logged_dataset(folder)
    files = [images, labels]
    extras: dict[str, torch.Tensor] = {}
    facts: dict[str, Any] = {"checkpoint": checkpoint, "ema": ema}
    lr_file = folder / f"lr_{checkpoint}.pt"
    if lr_file.is_file():  # MTT does not save syn_lr; a file beside the images is kept, not used
        extras["syn_lr"] = _tensor(load_pt(lr_file), str(lr_file)).reshape(-1).float()
        facts["syn_lr"] = float(extras["syn_lr"][0])
        files.append(lr_file)
    return Artefact(
        x=x,
        y=y,
        files=files,
        root=folder,
        space=(
            Space("zca", how=f"detected: {zca_copies[0]} beside it (MTT and FTD write images_zca_* only in ZCA runs)")
            if zca_copies
            else None
        ),
        unknown_space=(
            "no images_zca_*.pt beside it, but MTT writes those only for ZCA runs with ipc < 50, so their absence "
            "does not show the set is unwhitened"
        ),
        stats=_stats_of(source),
        source_dataset=source,
        source_method="FTD" if ema else "MTT",
        labels_note=note,
        facts=facts,
        extras=extras,
    )


def read_datm(path: Path, options: Mapping[str, Any]) -> Artefact:
    """DATM: ``Normal/images_best.pt``, ``labels_best.pt`` (float logits ``[n, C]``), ``lr_best.pt``."""
    images, labels, checkpoint, _ = _trajectory_files(path, options, "datm")
    x = _tensor(load_pt(images), str(images))
    raw = _tensor(load_pt(labels), str(labels))  # saved from a tensor that required grad: detached
    if raw.is_floating_point() and raw.dim() == 2:
        # DATM trains on softmax(labels) with a soft cross-entropy at temperature 1 (evaluation.py), as
        # distillbench's engine does with probabilities: the softmax is the set's labels.
        y = torch.softmax(raw.double(), dim=1).float()
        note = "softmax of DATM's stored logits (DATM's soft cross-entropy at temperature 1)"
    else:
        y, note = raw, "hard labels as stored"
    folder = images.parent
    files = [images, labels]
    extras: dict[str, torch.Tensor] = {}
    facts: dict[str, Any] = {"checkpoint": checkpoint}
    lr_file = folder / f"lr_{checkpoint}.pt"
    if lr_file.is_file():
        extras["syn_lr"] = _tensor(load_pt(lr_file), str(lr_file)).reshape(-1).float()
        facts["syn_lr"] = float(extras["syn_lr"][0])
        files.append(lr_file)
    source = _logged_dataset(folder)
    return Artefact(
        x=x,
        y=y,
        files=files,
        root=folder,
        space=Space("zca", how="detected: DATM whitens in every configuration (configs/*/ConvIN/*.yaml)"),
        stats=_stats_of(source),
        source_dataset=source,
        source_method="DATM",
        labels_note=note,
        facts=facts,
        extras=extras,
    )


def _class_dirs(path: Path) -> list[Path]:
    return sorted(p for p in path.iterdir() if p.is_dir() and not p.name.startswith("."))


def _decode_image(data: bytes | Path, where: str) -> np.ndarray:
    """One image file (or its bytes) as uint8 ``[channels, H, W]``: L -> 1 channel, RGB (and palette) -> 3."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data) if isinstance(data, bytes) else data) as img:
            img.load()
            mode = img.mode
            if mode == "P":
                img = img.convert("RGBA" if "transparency" in img.info else "RGB")
                mode = img.mode
            if mode == "1":
                img, mode = img.convert("L"), "L"
            if mode not in ("L", "RGB"):
                raise DataError(
                    f"{where}: image mode {mode!r}; distillbench reads 8-bit grey (L) and colour (RGB) images, "
                    "so an alpha channel or other modes would have to be dropped or guessed: convert the files first"
                )
            arr = np.asarray(img, dtype=np.uint8)
    except (UnidentifiedImageError, OSError) as exc:
        raise DataError(f"{where}: not a readable image ({type(exc).__name__}: {str(exc)[:200]})") from None
    return arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)


def _stack_images(arrays: list[np.ndarray], where: list[str]) -> torch.Tensor:
    shapes = {a.shape for a in arrays}
    if len(shapes) > 1:
        first = arrays[0].shape
        other = next(i for i, a in enumerate(arrays) if a.shape != first)
        raise DataError(
            f"images differ in size or channels: {where[0]} is {'x'.join(map(str, first))} but {where[other]} is "
            f"{'x'.join(map(str, arrays[other].shape))} (channels x height x width); distillbench does not resize"
        )
    return torch.from_numpy(np.stack(arrays)).contiguous()


def _soft_labels_file(text: str, base: Path) -> tuple[torch.Tensor, Path]:
    path = Path(text).expanduser()
    path = path if path.is_absolute() else base / path
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            tensors = load_file(str(path))
        except Exception as exc:
            raise DataError(f"{path}: not a readable safetensors file ({type(exc).__name__})") from None
        if len(tensors) != 1:
            raise DataError(
                f"{path}: holds {len(tensors)} tensors ({', '.join(tensors)}); soft labels need exactly one"
            )
        value = next(iter(tensors.values()))
    else:
        value = load_pt(path)
    y = _tensor(value, f"{path}")
    if y.dim() != 2 or not y.is_floating_point():
        raise DataError(f"{path}: soft labels must be a float tensor [n, classes], got {y.dtype} {tuple(y.shape)}")
    return y.float(), path


def read_image_folder(path: Path, options: Mapping[str, Any]) -> Artefact:
    """Class subfolders of image files (SRe2L ``new000/``, RDED ``00000/``, torchvision ImageFolder).

    Classes are the subfolders in sorted order (as ImageFolder and DD-Ranking index them), unless the
    folder names are exactly the dataset's class names (then mapped by name, at the check). Images are
    read in sorted file-name order within each class; other files are ignored.
    """
    if not path.is_dir():
        raise DataError(f"{path}: an image-folder set is a folder of class subfolders")
    classes = _class_dirs(path)
    if not classes:
        raise DataError(f"{path}: no class subfolders (expected e.g. 00000/, 00001/ ... holding image files)")
    arrays: list[np.ndarray] = []
    labels: list[int] = []
    files: list[Path] = []
    for index, folder in enumerate(classes):
        for file in sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in _IMAGE_SUFFIXES):
            arrays.append(_decode_image(file, str(file)))
            labels.append(index)
            files.append(file)
    if not arrays:
        raise DataError(f"{path}: its class subfolders hold no image files ({', '.join(_IMAGE_SUFFIXES)})")
    x = _stack_images(arrays, [str(f) for f in files])
    y = torch.tensor(labels, dtype=torch.int64)
    note = "hard labels from the class folder of each image"
    if "soft_labels" in options:
        y, soft_file = _soft_labels_file(str(options["soft_labels"]), path)
        files.append(soft_file)
        if y.shape[0] != x.shape[0]:
            raise DataError(f"{soft_file}: {y.shape[0]} soft labels for {x.shape[0]} images in {path}")
        note = f"soft labels from {soft_file.name} (one row per image in reading order)"
    return Artefact(
        x=x,
        y=y,
        files=files,
        root=path,
        space=Space("pixels", pixel_max=255.0, how="detected: image files hold 8-bit pixels"),
        class_names=tuple(c.name for c in classes),
        labels_note=note,
        facts={"class_folders": [c.name for c in classes]},
    )


def _front_matter(readme: Path) -> dict[str, Any]:
    import yaml

    if not readme.is_file():
        return {}
    text = readme.read_text(encoding="utf-8", errors="replace")
    match = re.match(r"\A---\s*\n(.*?)\n---\s*(\n|\Z)", text, re.S)
    if not match:
        return {}
    try:
        data = yaml.safe_load(match.group(1))
    except yaml.YAMLError as exc:
        raise DataError(f"{readme}: its YAML front matter does not parse ({str(exc).splitlines()[0]})") from None
    return data if isinstance(data, dict) else {}


def _hf_data_files(path: Path, card: Mapping[str, Any], split: str) -> list[Path]:
    """The split's data files: the card's ``configs`` entry, else the hub's naming conventions."""
    root = path.resolve()
    patterns: list[str] = []
    for config in card.get("configs") or []:
        if not isinstance(config, Mapping) or config.get("config_name", "default") != "default":
            continue
        files = config.get("data_files")
        for entry in files if isinstance(files, list) else [files]:
            if isinstance(entry, Mapping) and entry.get("split", "train") == split:
                got = entry.get("path")
                patterns += got if isinstance(got, list) else [got]
            elif isinstance(entry, str) and split == "train":
                patterns.append(entry)
    if not patterns:
        patterns = [f"data/{split}-*.parquet", f"data/{split}/*.parquet", f"{split}-*.parquet", f"{split}/*.parquet"]
        patterns += [f"{split}/data-*.arrow", "data-*.arrow"]
    found: list[Path] = []
    for pattern in patterns:
        if not isinstance(pattern, str) or pattern.startswith("/") or ".." in Path(pattern).parts:
            raise DataError(f"{path}: data file pattern {pattern!r} points outside the folder")
        found += sorted(p for p in path.glob(pattern) if p.is_file() and p.resolve().is_relative_to(root))
    if not found:
        found = sorted(path.rglob("*.parquet"))
    return list(dict.fromkeys(found))


def _read_table(files: list[Path]) -> Any:
    import pyarrow as pa
    import pyarrow.parquet as pq

    tables = []
    for file in files:
        try:
            if file.suffix == ".arrow":  # datasets' save_to_disk writes Arrow IPC streams
                with pa.memory_map(str(file)) as source:
                    try:
                        tables.append(pa.ipc.open_stream(source).read_all())
                    except pa.ArrowInvalid:
                        tables.append(pa.ipc.open_file(source).read_all())
            else:
                tables.append(pq.read_table(file))
        except (pa.ArrowInvalid, OSError) as exc:
            raise DataError(f"{file}: not a readable Parquet/Arrow file ({str(exc).splitlines()[0][:200]})") from None
    try:
        return pa.concat_tables(tables, promote_options="default")
    except (pa.ArrowInvalid, TypeError) as exc:
        raise DataError(f"{files[0].parent}: the data files have different columns ({str(exc)[:200]})") from None


def _nested_to_numpy(column: Any, where: str) -> np.ndarray:
    """A column of nested equal-length lists (HF ``ArrayND``/``List``) as one numpy array ``[n, ...]``."""
    import pyarrow as pa

    array = column.combine_chunks() if hasattr(column, "combine_chunks") else column
    if isinstance(array.type, pa.ExtensionType):
        array = array.storage
    if array.null_count:
        raise DataError(f"{where}: {array.null_count} rows are empty")
    shape = [len(array)]
    while pa.types.is_list(array.type) or pa.types.is_large_list(array.type) or pa.types.is_fixed_size_list(array.type):
        if pa.types.is_fixed_size_list(array.type):
            width = array.type.list_size
        else:
            lengths = np.asarray(array.value_lengths())
            if lengths.size and (lengths != lengths[0]).any():
                raise DataError(f"{where}: rows hold arrays of different sizes")
            width = int(lengths[0]) if lengths.size else 0
        shape.append(width)
        array = array.flatten()
    return np.array(array.to_numpy(zero_copy_only=False)).reshape(shape)  # a writable copy


def read_hf(path: Path, options: Mapping[str, Any]) -> Artefact:
    """A Hugging Face dataset folder: its Parquet (or ``save_to_disk`` Arrow) files, read with pyarrow.

    A distillbench export (:mod:`~distillbench.harness.hub`) has an exact ``x`` column and a card that
    declares its space; other folders have an image column (HF ``Image``: PNG/JPEG bytes) and a class
    id column. A loading script in the folder is never run: a folder that has only a script is refused.
    """
    if path.is_file():
        files, card, root = [path], {}, path.parent
    else:
        root = path
        card = _front_matter(path / "README.md")
        files = _hf_data_files(path, card, str(options.get("split", "train")))
        if not files:
            scripts = sorted(p.name for p in path.glob("*.py"))
            if scripts:
                raise DataError(
                    f"{path}: no Parquet or Arrow data files, only a loading script ({', '.join(scripts)}); "
                    "distillbench runs no code from dataset folders: convert the data to Parquet first"
                )
            raise DataError(f"{path}: no Parquet or Arrow data files for split {options.get('split', 'train')!r}")
    table = _read_table(files)
    if table.num_rows == 0:
        raise DataError(f"{path}: the data files hold no rows")
    ours = card.get("distillbench") if isinstance(card.get("distillbench"), Mapping) else None
    columns = table.column_names
    facts: dict[str, Any] = {"rows": table.num_rows, "data_files": [str(f.relative_to(root)) for f in files]}
    space: Space | None
    unknown = ""
    if "x" in columns and ours is not None:
        x = torch.from_numpy(_nested_to_numpy(table.column("x"), f"{path}: column 'x'"))
        norm = ours.get("normalisation") if isinstance(ours.get("normalisation"), Mapping) else {}
        space = _space_from_card(norm, bool(ours.get("zca")))
        unknown = "" if space else "its card's distillbench.normalisation names no space"
        source_dataset = str((ours.get("dataset") or {}).get("spec") or "") or None
        source_method = str((ours.get("method") or {}).get("spec") or "") or None
        facts["card"] = {k: ours.get(k) for k in ("distill_id", "ipc", "seed") if k in ours}
    else:
        image_col = options.get("image_column") or _image_column(table)
        if image_col not in columns:
            raise DataError(
                f"{path}: no image column {image_col!r}; columns: {', '.join(columns)} "
                "(--format 'hf[image_column=...]')"
            )
        x = _hf_images(table.column(image_col), root, f"{path}: column {image_col!r}")
        space = Space("pixels", pixel_max=255.0, how="detected: an image column (8-bit image files)")
        source_dataset = source_method = None
    label_col, soft_col = options.get("label_column"), options.get("soft_label_column")
    if soft_col is None and label_col is None and "soft_label" in columns:
        soft_col = "soft_label"
    if soft_col is not None:
        if soft_col not in columns:
            raise DataError(f"{path}: no column {soft_col!r}; columns: {', '.join(columns)}")
        y = torch.from_numpy(
            _nested_to_numpy(table.column(soft_col), f"{path}: column {soft_col!r}").astype(np.float32)
        )
        note = f"soft labels from column {soft_col!r}"
    else:
        label_col = label_col or next(
            (c for c in ("label", "labels", "class_id", "class", "target") if c in columns), None
        )
        if label_col is None or label_col not in columns:
            raise DataError(
                f"{path}: no label column ({label_col or 'label, labels, class_id, class, target'}); columns: "
                f"{', '.join(columns)} (--format 'hf[label_column=...]')"
            )
        values = table.column(label_col).to_numpy(zero_copy_only=False)
        if values.dtype.kind not in "iu":
            raise DataError(f"{path}: label column {label_col!r} holds {values.dtype}, not class ids (integers)")
        y = torch.from_numpy(values.astype(np.int64))
        note = f"hard labels from column {label_col!r}"
    return Artefact(
        x=x,
        y=y,
        files=files,
        root=root,
        space=space,
        unknown_space=unknown,
        stats=None,
        source_dataset=source_dataset,
        source_method=source_method,
        class_names=_class_label_names(card),
        labels_note=note,
        facts=facts,
    )


def _space_from_card(norm: Mapping[str, Any], zca: bool) -> Space | None:
    how = "detected: the dataset card's distillbench.normalisation"
    if zca:
        return Space("zca", how=how)
    kind = norm.get("space")
    if kind == "pixels":
        return Space("pixels", pixel_max=float(norm.get("pixel_max", 1.0)), how=how)
    if kind == "normalised":
        mean, std = norm.get("mean"), norm.get("std")
        if mean and std:
            return Space("normalised", tuple(map(float, mean)), tuple(map(float, std)), how=how)
        return Space("normalised", how=how + " (the dataset's own statistics)")
    return None


def _class_label_names(card: Mapping[str, Any]) -> tuple[str, ...] | None:
    info = card.get("dataset_info")
    features = info.get("features") if isinstance(info, Mapping) else None
    for feature in features if isinstance(features, list) else []:
        dtype = feature.get("dtype") if isinstance(feature, Mapping) else None
        names = dtype.get("class_label", {}).get("names") if isinstance(dtype, Mapping) else None
        if isinstance(names, Mapping):
            return tuple(str(names[k]) for k in sorted(names, key=lambda k: int(k)))
    return None


def _image_column(table: Any) -> str:
    import pyarrow as pa

    for field in table.schema:
        if pa.types.is_struct(field.type) and {f.name for f in field.type} >= {"bytes", "path"}:
            return field.name
    for name in ("image", "img"):
        if name in table.column_names:
            return name
    return "image"


def _hf_images(column: Any, root: Path, where: str) -> torch.Tensor:
    """An HF ``Image`` column (structs of PNG/JPEG ``bytes`` and a ``path``) as uint8 ``[n, channels, H, W]``."""
    arrays, names = [], []
    base = root.resolve()
    for i, cell in enumerate(column.to_pylist()):
        if isinstance(cell, Mapping):
            data, rel = cell.get("bytes"), cell.get("path")
        else:
            data, rel = cell, None
        if data is None and rel:
            file = (root / rel).resolve()
            if not file.is_relative_to(base):
                raise DataError(f"{where}: row {i} points at {rel!r}, outside the dataset folder; refused")
            data = file.read_bytes()
        if not isinstance(data, bytes | bytearray):
            raise DataError(f"{where}: row {i} holds no image bytes")
        arrays.append(_decode_image(bytes(data), f"{where} row {i}"))
        names.append(f"{where} row {i}")
    return _stack_images(arrays, names)


_READERS = {
    "dc-res": read_dc_res,
    "mtt": read_mtt,
    "datm": read_datm,
    "image-folder": read_image_folder,
    "hf": read_hf,
}


def read_artefact(path: Path, fmt: str, options: Mapping[str, Any] | None = None) -> Artefact:
    """Read ``path`` in foreign format ``fmt`` (one of :data:`FORMATS` but ``distillbench``)."""
    if not path.exists():
        raise DataError(f"{path}: no such file or folder")
    artefact = _READERS[fmt](path, options or {})
    if artefact.x.dim() != 4 or artefact.x.shape[0] == 0:
        raise DataError(
            f"{path}: images must be [n, channels, height, width] with n >= 1, got {tuple(artefact.x.shape)}"
        )
    if not (artefact.x.is_floating_point() or artefact.x.dtype == torch.uint8):
        raise DataError(f"{path}: images are {artefact.x.dtype}; expected float or 8-bit pixels")
    if artefact.y.dim() not in (1, 2) or artefact.y.shape[0] != artefact.x.shape[0]:
        raise DataError(
            f"{path}: {artefact.x.shape[0]} images but labels of shape {tuple(artefact.y.shape)}; labels must be "
            "[n] or [n, classes]"
        )
    return artefact


# ------------------------------------------------------------------------------------------ checking
def _shape(shape: Sequence[int]) -> str:
    return "x".join(str(int(s)) for s in shape)


def _check_source(path: Path, artefact: Artefact, configured: Any, fmt: str) -> None:
    """The artefact's own dataset name, where it maps to one of ours, must be the evaluation dataset's."""
    source = artefact.source_dataset
    if not source:
        return
    ours = _SOURCE_TO_OURS.get(_key(source))
    name = configured.name
    if ours is not None and ours != name:
        raise IncompatibleError(
            f"{path}: the {fmt} artefact was distilled on {source} (named in its path) but is evaluated on dataset "
            f"{configured.display!r}; pass --dataset {ours} (with its options), or rename the file if the name is wrong"
        )


def _check_shape(path: Path, x: torch.Tensor, info: Any) -> None:
    got, want = tuple(x.shape[1:]), tuple(info.shape)
    if got == want:
        return
    if got[0] != want[0]:
        hint = f"{got[0]} channel(s) where the dataset has {want[0]}"
    else:
        hint = f"{_shape(got[1:])} pixels where the dataset has {_shape(want[1:])} (distillbench does not resize)"
    raise IncompatibleError(
        f"{path}: holds {x.shape[0]} images of shape {_shape(got)} but dataset {info.name!r} has samples of shape "
        f"{_shape(want)}: {hint}"
    )


def _map_classes(path: Path, artefact: Artefact, info: Any) -> torch.Tensor:
    """Labels in the dataset's class indices; one-line errors when the class counts or ids disagree."""
    y, names = artefact.y, artefact.class_names
    c = info.num_classes
    if y.dim() == 2:
        if y.shape[1] != c:
            raise IncompatibleError(
                f"{path}: soft labels have {y.shape[1]} columns (classes) but dataset {info.name!r} has {c} classes"
            )
        if not y.is_floating_point() or not bool(torch.isfinite(y).all()):
            raise DataError(f"{path}: soft labels must be finite floats")
        return y.float()
    if y.is_floating_point() or y.dtype == torch.bool:
        raise DataError(f"{path}: hard labels must be integers, got {y.dtype}")
    y = y.long()
    if names is not None:
        if len(names) != c:
            raise IncompatibleError(
                f"{path}: {len(names)} classes ({', '.join(names[:5])}{', ...' if len(names) > 5 else ''}) but "
                f"dataset {info.name!r} has {c} classes"
            )
        if set(names) == set(info.class_names) and list(names) != list(info.class_names):
            order = torch.tensor([list(info.class_names).index(n) for n in names], dtype=torch.long)
            artefact.labels_note += " (folders mapped to the dataset's classes by name)"
            return order[y]
    lo, hi = int(y.min()), int(y.max())
    if lo < 0 or hi >= c:
        raise IncompatibleError(
            f"{path}: labels range over [{lo}, {hi}] but dataset {info.name!r} has {c} classes (0..{c - 1})"
        )
    return y


def _with_zca(name: str, zca: bool) -> str:
    from distillbench.harness.evaluate import _with_zca as with_zca

    return with_zca(name, zca)


def _resolve_space(path: Path, artefact: Artefact, declared: Declared, fmt: str) -> Space:
    detected = artefact.space
    if declared.space is None and declared.mean is None and declared.pixel_max is None:
        if detected is None:
            raise DataError(
                f"{path}: cannot tell the space of the {fmt} values "
                f"({artefact.unknown_space or 'the format does not say'});"
                " declare it: --space zca, --space normalised [--mean M --std S], or --space pixels [--pixel-max 255]"
            )
        return detected
    kind = declared.space or ("normalised" if declared.mean is not None else "pixels")
    if artefact.x.dtype == torch.uint8 and kind != "pixels":
        raise ConfigError(f"{path}: image files hold pixels; --space {kind} cannot apply to them")
    note = (
        f" (overrides {detected.how.removeprefix('detected: ')}: {detected.describe()})"
        if (detected is not None and detected.kind != kind)
        else ""
    )
    flags = " ".join(declared.flags())
    if kind == "pixels":
        pixel_max = declared.pixel_max or (
            detected.pixel_max if detected is not None and detected.kind == "pixels" else 1.0
        )
        return Space("pixels", pixel_max=pixel_max, how=f"declared ({flags}){note}")
    if kind == "zca":
        return Space("zca", how=f"declared ({flags}){note}")
    if declared.mean is not None:
        return Space("normalised", declared.mean, declared.std, how=f"declared ({flags}){note}")
    if detected is not None and detected.kind == "normalised" and detected.mean is not None:
        return dataclasses.replace(detected, how=f"declared ({flags}); statistics {detected.how}")
    if artefact.stats is not None:
        mean, std, how = artefact.stats
        return Space("normalised", mean, std, how=f"declared ({flags}); statistics {how}")
    return Space("normalised", how=f"declared ({flags}): the dataset's own statistics{note}")


def _check_zca(path: Path, space: Space, info: Any) -> None:
    set_zca, data_zca = space.kind == "zca", bool(getattr(info, "zca", False))
    if set_zca == data_zca:
        return
    if set_zca:
        raise IncompatibleError(
            f"{path}: the set is ZCA-whitened ({space.how}) but dataset {info.name!r} is not, so its accuracy would "
            f"be meaningless; evaluate it on {_with_zca(info.name, True)!r}"
        )
    raise IncompatibleError(
        f"{path}: the set is {space.describe()} ({space.how}) but dataset {info.name!r} is ZCA-whitened, so its "
        f"accuracy would be meaningless; evaluate it on {_with_zca(info.name, False)!r} (or declare --space zca if "
        "the set is whitened)"
    )


def _per_channel(values: Sequence[float], channels: int, what: str, path: Path) -> torch.Tensor:
    if len(values) not in (1, channels):
        raise IncompatibleError(f"{path}: {what} has {len(values)} values but the images have {channels} channels")
    return torch.tensor(values, dtype=torch.float32).reshape(1, -1, 1, 1)


def _convert(path: Path, x: torch.Tensor, space: Space, info: Any) -> tuple[torch.Tensor, str]:
    """``x`` in the dataset's space (float32) and what was done, in words; only exact arithmetic."""
    channels = x.shape[1]
    target_mean, target_std = tuple(info.mean), tuple(info.std)
    if space.kind == "zca":
        return x.float(), "none (ZCA-whitened values used as they are)"
    if space.kind == "pixels":
        pixels = x.float() / space.pixel_max if space.pixel_max != 1.0 else x.float()
        scale = f"/ {space.pixel_max:g}, " if space.pixel_max != 1.0 else ""
        if not target_mean:
            return pixels, f"{scale}none further (the dataset's samples are pixels in [0, 1])".lstrip(", ")
        m = _per_channel(target_mean, channels, "the dataset's mean", path)
        s = _per_channel(target_std, channels, "the dataset's std", path)
        return (
            pixels - m
        ) / s, f"{scale}(pixels - {list(target_mean)}) / {list(target_std)} (the dataset's statistics)"
    if space.mean is None or (tuple(space.mean) == target_mean and tuple(space.std or ()) == target_std):
        return x.float(), "none (normalised with the dataset's own statistics)"
    m1 = _per_channel(space.mean, channels, "--mean", path)
    s1 = _per_channel(space.std or (), channels, "--std", path)
    pixels = x.float() * s1 + m1
    if not target_mean:
        return pixels, f"pixels = x * {list(space.std or ())} + {list(space.mean)} (the dataset's samples are pixels)"
    m2 = _per_channel(target_mean, channels, "the dataset's mean", path)
    s2 = _per_channel(target_std, channels, "the dataset's std", path)
    return (pixels - m2) / s2, (
        f"renormalised: pixels = x * {list(space.std or ())} + {list(space.mean)}, then (pixels - {list(target_mean)}) "
        f"/ {list(target_std)} (the dataset's statistics)"
    )


def _check_values(path: Path, raw: torch.Tensor, x: torch.Tensor, space: Space, data: Any) -> None:
    """Values that contradict the declared space: out of the pixel range, or statistics far from the data's."""
    if not bool(torch.isfinite(x).all()):
        bad = int((~torch.isfinite(x)).sum())
        raise DataError(f"{path}: {bad} values are NaN or infinite; the set cannot be evaluated")
    fix = (
        "declare the right space (--space pixels|normalised|zca), or pass --skip-value-check if the values are meant so"
    )
    if space.kind == "pixels":
        lo, hi = float(raw.min()), float(raw.max())
        slack = _PIXEL_SLACK * space.pixel_max
        if lo < -slack or hi > space.pixel_max + slack:
            looks_8bit = space.pixel_max == 1.0 and lo >= -slack and 2 < hi <= 255 * (1 + _PIXEL_SLACK)
            more = " (pixels in [0, 255]? pass --pixel-max 255)" if looks_8bit else ""
            raise IncompatibleError(
                f"{path}: values range over [{lo:.3g}, {hi:.3g}] but the set is {space.describe()} "
                f"({space.how}){more}; {fix}"
            )
        return
    real = data.train.x[:: max(1, len(data.train.x) // 5000)]  # an evenly spaced subsample is plenty (CIFAR: 5,000)
    negative_data = float((real < 0).sum()) / max(1, real.numel())
    if float(x.min()) >= 0 and negative_data > 0.2:
        raise IncompatibleError(
            f"{path}: every value is >= 0, like pixels, but the set is declared {space.describe()} ({space.how}) and "
            f"{100 * negative_data:.0f} % of dataset {data.info.name!r}'s values in that space are negative; {fix}"
        )
    set_std, data_std = float(x.float().std()), float(real.float().std())
    if data_std > 0 and not (1 / _STD_FACTOR <= set_std / data_std <= _STD_FACTOR):
        raise IncompatibleError(
            f"{path}: the values spread with std {set_std:.3g} but dataset {data.info.name!r}'s samples in its space "
            f"have std {data_std:.3g} ({set_std / data_std:.2g}x), which contradicts {space.describe()} "
            f"({space.how}); {fix}"
        )


# ---------------------------------------------------------------------------------------- the pipeline
@dataclasses.dataclass(frozen=True)
class _Named:
    name: str
    display: str


@dataclasses.dataclass(frozen=True)
class ImportedTrial:
    """What ``distillbench evaluate`` needs of an imported set: the same attributes a ``ResolvedTrial`` has.

    An imported set was not distilled by a distillbench method, so it has no method spec to resolve;
    ``method`` only names it (``"dc-res import of DM"``). ``dataset`` and ``protocol`` are resolved.
    """

    spec: Any  # TrialSpec (dataset spec, a method label, ipc, seed, protocol)
    dataset: Any  # Configured
    method: _Named
    protocol: Any
    info: Any


def _imported_trial(dataset_spec: str, method: str, ipc: int, protocol: str | None) -> ImportedTrial:
    from distillbench.harness.plugins import DATASETS, PROTOCOLS
    from distillbench.harness.spec import TrialSpec, _Resolver

    configured = DATASETS.resolve(dataset_spec)
    info = configured.obj(configured.params).info()
    proto = PROTOCOLS.resolve(protocol or "convnet-v1").obj
    if getattr(proto, "engine", "train") == "replay":
        raise IncompatibleError(
            f"protocol {proto.name!r} replays learned inner steps that only distillbench's dd records; an imported "
            "set is evaluated with a training protocol (convnet-v1, quick-v1)"
        )
    _Resolver._check_network(proto, info)
    spec = TrialSpec(dataset=dataset_spec, method=method, ipc=ipc, seed=0, protocol=proto.name, grid="import")
    return ImportedTrial(spec=spec, dataset=configured, method=_Named(method, method), protocol=proto, info=info)


def imported_trial(set_file: str, meta: Mapping[str, Any], *, protocol: str | None = None) -> ImportedTrial:
    """The trial view of an imported set's metadata (what ``cli._set_spec`` returns for such a set)."""
    block = meta.get("imported")
    if not isinstance(block, Mapping) or not isinstance(block.get("dataset"), str):
        raise DataError(f"{set_file}: metadata 'imported' lacks the dataset spec; import the set again")
    try:
        return _imported_trial(
            block["dataset"], str(meta.get("method") or "imported"), int(meta.get("ipc") or 1), protocol
        )
    except (ConfigError, IncompatibleError) as exc:
        raise type(exc)(f"{set_file}: {exc}") from None


def _ipc(y: torch.Tensor, num_classes: int) -> int:
    if y.dim() == 1:
        return max(1, int(torch.bincount(y, minlength=num_classes).max()))
    return max(1, -(-y.shape[0] // num_classes))


def import_set(
    path: str | Path,
    fmt: str = "auto",
    *,
    dataset: str | None,
    declared: Declared | None = None,
    data_root: Path | None = None,
) -> tuple[DistilledSet, dict[str, Any]]:
    """Read a set in any supported format, check it against ``dataset`` and convert it into its space.

    Args:
        path: the artefact (file or folder).
        fmt: a format of :data:`FORMATS`, with options (``"dc-res[experiment=0]"``), or ``"auto"``.
        dataset: the dataset spec the set is evaluated on (``"cifar10"``, ``"cifar10[zca=true]"``);
            required for every format but ``distillbench`` (whose sets name theirs).
        declared: what the user declares about the values (overrides detection).
        data_root: where the dataset's files are (its statistics and, for ZCA, its fit come from there).

    Returns:
        ``(set, metadata)`` as :func:`distillbench.harness.store.load_set` returns them; for a foreign
        format the metadata's ``imported`` block records the source, its checksums, the space (declared
        or detected, and how), the conversion and the labels.

    Raises:
        DistillBenchError: one line naming both sides for every mismatch (see the module docstring).
    """
    from distillbench.harness import store

    path = Path(path).expanduser()
    declared = declared or Declared()
    name, options = parse_format(fmt)
    if name == "auto":
        name = detect_format(path)
    if name == "distillbench":
        if declared.anything or dataset is not None:
            raise ConfigError(
                "--dataset, --space, --mean/--std and --pixel-max apply to foreign formats; a distillbench set names "
                "its dataset and space in its .json (pass --format to read another format)"
            )
        return store.load_set(path)
    if dataset is None:
        raise ConfigError(
            f"--format {name} needs --dataset: the dataset the set is evaluated on, e.g. --dataset cifar10 or "
            "--dataset 'cifar10[zca=true]'"
        )
    from distillbench.harness.plugins import DATASETS
    from distillbench.harness.runner import load_data

    configured = DATASETS.resolve(dataset)
    static = configured.obj(configured.params).info()
    if static.modality != "image":
        raise IncompatibleError(f"dataset {configured.display!r} is {static.modality}; foreign set formats hold images")
    artefact = read_artefact(path, name, options)
    _check_source(path, artefact, configured, name)
    _check_shape(path, artefact.x, static)
    y = _map_classes(path, artefact, static)
    space = _resolve_space(path, artefact, declared, name)
    _check_zca(path, space, static)
    method = f"{name} import" + (f" of {artefact.source_method}" if artefact.source_method else "")
    trial = _imported_trial(dataset, method, _ipc(y, static.num_classes), None)
    data = load_data(trial, Path(data_root) if data_root is not None else _default_root())
    x, conversion = _convert(path, artefact.x, space, data.info)
    if declared.check_values:
        _check_values(path, artefact.x.float(), x, space, data)
    files = {_rel(f, artefact.root): _sha256(f) for f in artefact.files}
    combined = hashlib.sha256("".join(f"{k}\0{v}\n" for k, v in sorted(files.items())).encode()).hexdigest()
    from distillbench.harness.runner import provenance

    versions = {k: v for k, v in provenance().items() if k in ("package_version", "git_sha")}
    block = {
        "format": name,
        "options": dict(options),
        "source": str(path.resolve()),
        "files": files,
        "sha256": next(iter(files.values())) if len(files) == 1 else combined,
        "sha256_of": "the file" if len(files) == 1 else "the sorted 'path\\0sha256' lines of the files",
        "dataset": dataset,
        "source_dataset": artefact.source_dataset,
        "source_method": artefact.source_method,
        "space": space.to_dict(),
        "conversion": conversion,
        "labels": artefact.labels_note,
        "value_check": "passed" if declared.check_values else "skipped (--skip-value-check)",
        "facts": artefact.facts,
        "imported_at": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        **versions,
    }
    dset = DistilledSet(
        x.contiguous(),
        y.contiguous(),
        {k: v.contiguous() for k, v in artefact.extras.items()},
        {"zca": space.kind == "zca", "imported": name},
    )
    meta = {
        "imported": block,
        "dataset": trial.dataset.display,
        "method": method,
        "ipc": trial.spec.ipc,
        "seed": 0,
        "zca": space.kind == "zca",
        **versions,
    }
    return dset, json.loads(json.dumps(meta, default=str))


def _rel(file: Path, root: Path) -> str:
    try:
        return str(file.resolve().relative_to(root.resolve()))
    except ValueError:
        return str(file.resolve())


def _default_root() -> Path:
    from distillbench.harness.runner import default_data_root

    return default_data_root().resolve()
