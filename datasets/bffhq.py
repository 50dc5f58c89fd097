"""``bffhq``: biased FFHQ (Lee et al., NeurIPS 2021, "DisEnt"): faces, target age, spurious attribute gender.

Local folder only: BFFHQ is derived from FFHQ and is distributed by its authors, not by a public
mirror with a checksum, so it is never downloaded; a missing folder is a one-line ``DataError``.

Layout assumed (the one the DisEnt release unpacks to, and which public re-implementations read)::

    ROOT/bffhq/0.5pct/align/<target>/<idx>_<target>_<bias>.png      training, bias-aligned
    ROOT/bffhq/0.5pct/conflict/<target>/<idx>_<target>_<bias>.png   training, bias-conflicting
    ROOT/bffhq/valid/<idx>_<target>_<bias>.png
    ROOT/bffhq/test/<idx>_<target>_<bias>.png

with ``target`` 0 = young, 1 = old and ``bias`` 0 = female, 1 = male; a sample is bias-aligned when
``bias == target`` (young women, old men). Labels and groups come from the file names; in the
training folders the ``<target>`` folder must agree with the name. ``0.5pct`` (0.5% conflicting) is
the released training set; ``pct=`` reads another such folder if a user built one. All of a split's
files are used (DisEnt's own code evaluates on the test set's conflicting half; here the evaluation
reports aligned, conflicting and worst-group accuracy from ``groups``).

Images are read with Pillow, converted to RGB and resized to ``size x size`` (bilinear); the default
``size=32`` matches the 32x32 ConvNet protocols and keeps distillation affordable (the released
images are 128x128; ``size=128`` keeps them). Normalisation: ImageNet's statistics, as DisEnt's
code normalises BFFHQ.
"""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from distillbench.datasets._biased import bias_meta, with_groups
from distillbench.datasets._files import normalise_images
from distillbench.datasets._longtail import torch_labels
from distillbench.datasets._zca import zca_field
from distillbench.datasets.base import Dataset
from distillbench.harness.errors import DataError
from distillbench.harness.params import format_spec
from distillbench.harness.plugins import register_dataset
from distillbench.harness.types import DataBundle, DatasetInfo, Split

__all__ = ["BFFHQ", "BFFHQParams"]

_NAME = re.compile(r"^(\d+)_([01])_([01])\.png$", re.IGNORECASE)
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)


@dataclasses.dataclass(frozen=True)
class BFFHQParams:
    """Options of ``bffhq``."""

    size: int = dataclasses.field(default=32, metadata={"help": "images are resized to size x size (released: 128)"})
    pct: str = dataclasses.field(
        default="0.5pct", metadata={"help": "training folder under bffhq/ (the release has 0.5pct)"}
    )
    zca: bool = zca_field()

    def __post_init__(self) -> None:
        if not 4 <= self.size <= 1024:
            raise ValueError(f"size must be from 4 to 1024 pixels, got {self.size}")
        if not self.pct or "/" in self.pct or "\\" in self.pct or self.pct.startswith("."):
            raise ValueError(f"pct must be a folder name under bffhq/ such as '0.5pct', got {self.pct!r}")


@register_dataset("bffhq")
class BFFHQ(Dataset):
    """Biased FFHQ (DisEnt): young vs old faces, gender as the bias; local copy only."""

    name = "bffhq"
    Params = BFFHQParams
    test_config: ClassVar[dict[str, Any]] = {"size": 8}

    def info(self) -> DatasetInfo:
        return DatasetInfo(
            name=format_spec(self.name, self.params),
            modality="image",
            num_classes=2,
            shape=(3, self.params.size, self.params.size),
            class_names=("young", "old"),
            mean=MEAN,
            std=STD,
        )

    def folders(self, root: Path) -> dict[str, list[Path]]:
        """The folders of each split."""
        base = Path(root) / "bffhq"
        train = base / self.params.pct
        return {"train": [train / "align", train / "conflict"], "val": [base / "valid"], "test": [base / "test"]}

    def prepare(self, root: Path, *, download: bool = False) -> None:
        """Check that every split folder exists (BFFHQ is never downloaded).

        Raises:
            DataError: a folder is missing; the message names it and says the data is obtained manually.
        """
        for paths in self.folders(root).values():
            for path in paths:
                if not path.is_dir():
                    raise DataError(
                        f"dataset 'bffhq': folder {path} not found; BFFHQ cannot be downloaded (FFHQ licence): "
                        f"obtain it manually from the DisEnt authors (Lee et al. 2021) and unpack it into {root}"
                    )

    def _read(self, folder: Path, *, nested: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        from PIL import Image, UnidentifiedImageError

        files = sorted(folder.glob("*/*.png" if nested else "*.png"))
        if not files:
            raise DataError(f"dataset 'bffhq': no .png files in {folder}; is the copy complete?")
        size = self.params.size
        images = np.empty((len(files), 3, size, size), dtype=np.uint8)
        targets = np.empty(len(files), dtype=np.int64)
        bias = np.empty(len(files), dtype=np.int64)
        for i, path in enumerate(files):
            match = _NAME.match(path.name)
            if match is None:
                raise DataError(f"dataset 'bffhq': {path} is not named <idx>_<target>_<bias>.png with 0/1 values")
            targets[i], bias[i] = int(match.group(2)), int(match.group(3))
            if nested and path.parent.name != match.group(2):
                raise DataError(
                    f"dataset 'bffhq': {path} is named with target {match.group(2)} but lies in folder "
                    f"{path.parent.name!r}; move it to the folder of its target"
                )
            try:
                with Image.open(path) as img:
                    rgb = img.convert("RGB").resize((size, size), Image.Resampling.BILINEAR)
            except (OSError, UnidentifiedImageError) as exc:
                raise DataError(f"dataset 'bffhq': cannot read {path} ({exc}); replace it") from None
            images[i] = np.asarray(rgb).transpose(2, 0, 1)
        return images, targets, bias

    def load(self, root: Path) -> DataBundle:
        """Read and resize every split; labels and bias groups come from the file names.

        Raises:
            DataError: a folder is missing, empty, or holds a misnamed or unreadable file.
        """
        self.prepare(root)
        info = self.info()
        splits: dict[str, Split] = {}
        for name, folders in self.folders(root).items():
            parts = [self._read(f, nested=name == "train") for f in folders]
            x, y, b = (np.concatenate(a) for a in zip(*parts, strict=True))
            splits[name] = with_groups(Split(normalise_images(x, MEAN, STD), torch_labels(y)), b)
        measured = 1.0 - float(splits["train"].groups["aligned"].float().mean())
        meta = {
            **bias_meta("gender", measured, splits, pct=self.params.pct),
            "source": str(Path(root) / "bffhq"),
            "normalisation": f"(x / 255 - {list(MEAN)}) / {list(STD)} (ImageNet statistics)",
            "resize": f"bilinear to {self.params.size}x{self.params.size}",
        }
        return DataBundle(info, splits["train"], splits["val"], splits["test"], meta=meta)
