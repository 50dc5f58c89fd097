"""ZCA whitening of image datasets: the ``zca=true`` option every image dataset accepts.

What it is: the whitening MTT, FTD, DATM and TESLA apply to CIFAR before distilling (kornia's
``ZCAWhitening(eps=0.1)``; METHODS-trajectory.md section 6). This module is our own implementation of
the same arithmetic:

1. Samples are mapped back to pixels in [0, 1]: our datasets return ``(pixels - mean) / std`` per
   channel, so ``pixels = x * info.std + info.mean`` (the field whitens unnormalised pixels).
2. Each image is flattened to D features; ``mu`` is the per-feature mean over the **train split
   only**, ``Sigma = (X - mu)^T (X - mu) / (N - 1)`` (unbiased), in float64.
3. ``Sigma = U diag(S) U^T`` (symmetric eigendecomposition, float64; tiny negative eigenvalues from
   rounding are set to 0) and ``W = U diag((S + eps)^-1/2) U^T`` with ``eps = 0.1`` added to the
   eigenvalues as an **absolute** amount (kornia's, not KIP's trace-relative regulariser).
4. ``x_zca = (x_flat - mu) W``, reshaped back, for the train, validation and test splits alike.

The inverse, for looking at whitened images, is ``pixels = x_zca U diag((S + eps)^1/2) U^T + mu``
(:meth:`ZCA.unwhiten`). After whitening, ``DatasetInfo.mean`` / ``std`` still describe the
normalisation that was undone in step 1; they no longer map samples to pixels (use the inverse).

Fits are cached per process, keyed by a hash of the training tensor (the CIFAR fit is a 3072 x 3072
eigendecomposition), so every trial of a worker that loads the same data reuses one fit.

Interface:
    ``fit_zca(pixels)`` -> :class:`ZCA`; ``ZCA.whiten`` / ``ZCA.unwhiten``;
    ``whiten_bundle(bundle)`` (what ``zca=true`` runs after ``load``; see ``datasets/base.py``);
    ``zca_of(bundle)``: the fit behind a whitened bundle of this process;
    ``zca_for(dataset, root)``: the fit of a configured dataset (loads it without whitening).
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import hashlib
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from distillbench.harness.errors import DataError
from distillbench.harness.types import DataBundle, Split

if TYPE_CHECKING:
    from distillbench.datasets.base import Dataset

__all__ = ["EPS", "ZCA", "fit_zca", "to_pixels", "whiten_bundle", "zca_field", "zca_for", "zca_of"]

EPS = 0.1
"""kornia's ``ZCAWhitening(eps=0.1)`` as MTT / FTD / DATM use it: added to every eigenvalue."""

SINCE = "0.2"
"""The release that added ``zca``: ids of configurations without it are those of 0.1 (see ``harness.params``)."""

_CHUNK = 4096  # rows per float64 block when accumulating the covariance (bounds memory on CIFAR-size data)
_CACHE_SIZE = 4  # fits kept per process (a CIFAR fit is about 110 MB)
_FITS: collections.OrderedDict[str, ZCA] = collections.OrderedDict()
_LOCK = threading.Lock()


def zca_field() -> Any:
    """The ``zca`` field of an image dataset's parameter dataclass (declared once here, used by every one)."""
    return dataclasses.field(
        default=False,
        metadata={
            "help": "ZCA-whiten the images as MTT/DATM/FTD do (kornia, eps 0.1; fitted on the train split)",
            "since": SINCE,
        },
    )


@dataclasses.dataclass(frozen=True, eq=False)
class ZCA:
    """A fitted ZCA whitening of images of one shape.

    Attributes:
        mean: ``mu``, the per-feature mean of the fitting samples, ``[D]`` float64.
        eigenvectors: ``U`` of the covariance, ``[D, D]`` float64 (columns).
        eigenvalues: ``S``, ``[D]`` float64, ascending, non-negative.
        eps: the absolute amount added to the eigenvalues.
        n_samples: number of samples the fit used (the train split).
        shape: shape of one image, e.g. ``(3, 32, 32)``.
    """

    mean: torch.Tensor
    eigenvectors: torch.Tensor
    eigenvalues: torch.Tensor
    eps: float
    n_samples: int
    shape: tuple[int, ...]

    @functools.cached_property
    def matrix(self) -> torch.Tensor:
        """``W = U diag((S + eps)^-1/2) U^T`` (float64)."""
        u = self.eigenvectors
        return (u * (self.eigenvalues + self.eps).rsqrt()) @ u.T

    @functools.cached_property
    def inverse_matrix(self) -> torch.Tensor:
        """``W^-1 = U diag((S + eps)^1/2) U^T`` (float64)."""
        u = self.eigenvectors
        return (u * (self.eigenvalues + self.eps).sqrt()) @ u.T

    @functools.cached_property
    def _apply(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        # Applying in float32 (as kornia does) halves the time of the big matmuls; the fit stays float64.
        return self.mean.float(), self.matrix.float(), self.inverse_matrix.float()

    def _check(self, x: torch.Tensor, what: str) -> None:
        if tuple(x.shape[1:]) != self.shape:
            raise ValueError(
                f"{what} got samples of shape {tuple(x.shape[1:])}; this ZCA was fitted on images of shape "
                f"{self.shape}: pass [n, *{self.shape}]"
            )

    def whiten(self, pixels: torch.Tensor) -> torch.Tensor:
        """``(x_flat - mu) W`` reshaped back; ``pixels`` are ``[n, *shape]`` in [0, 1] (float32, CPU result)."""
        self._check(pixels, "ZCA.whiten")
        mu, w, _ = self._apply
        return _blockwise(pixels, lambda flat: (flat - mu) @ w)

    def unwhiten(self, whitened: torch.Tensor) -> torch.Tensor:
        """The inverse, ``x_zca W^-1 + mu``: pixels in [0, 1] (float32, CPU), to look at whitened images."""
        self._check(whitened, "ZCA.unwhiten")
        mu, _, w_inv = self._apply
        return _blockwise(whitened, lambda flat: flat @ w_inv + mu)

    def facts(self) -> dict[str, Any]:
        """JSON-able record of the fit, for ``DataBundle.meta["zca"]``."""
        return {
            "eps": self.eps,
            "eps_kind": "absolute, added to the covariance eigenvalues (kornia ZCAWhitening, as MTT/DATM/FTD)",
            "fit_split": "train",
            "fit_samples": self.n_samples,
            "features": int(self.mean.numel()),
            "input": "pixels in [0, 1] (the dataset's mean/std normalisation undone first)",
            "applied_to": ["train", "val", "test"],
        }


def _blockwise(x: torch.Tensor, fn: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """``fn`` on ``[rows, D]`` float32 blocks of ``x`` flattened, reshaped back (bounds temporaries on CIFAR)."""
    flat = x.detach().reshape(len(x), -1)
    out = torch.empty(flat.shape, dtype=torch.float32)
    for start in range(0, len(flat), _CHUNK):
        out[start : start + _CHUNK] = fn(flat[start : start + _CHUNK].to(device="cpu", dtype=torch.float32))
    return out.reshape(x.shape)


def fit_zca(pixels: torch.Tensor, eps: float = EPS) -> ZCA:
    """Fit ZCA whitening on images (the module docstring gives the arithmetic).

    Args:
        pixels: the fitting images ``[N, *shape]``, in [0, 1]; only the train split should be passed.
        eps: amount added to every eigenvalue of the covariance (kornia / MTT: 0.1).

    Returns:
        The fit; ``fit.whiten(x)`` applies it, ``fit.unwhiten(z)`` inverts it.

    Raises:
        DataError: fewer than 2 samples (the unbiased covariance needs 2).
    """
    n = int(pixels.shape[0])
    if n < 2:
        raise DataError(f"zca=true needs at least 2 training images to estimate a covariance, got {n}")
    flat = pixels.detach().reshape(n, -1).cpu()
    mu = flat.sum(dim=0, dtype=torch.float64) / n
    d = mu.numel()
    cov = torch.zeros(d, d, dtype=torch.float64)
    for start in range(0, n, _CHUNK):
        block = flat[start : start + _CHUNK].to(torch.float64) - mu
        cov.addmm_(block.T, block)
    cov /= n - 1
    eigenvalues, eigenvectors = torch.linalg.eigh(cov)
    return ZCA(mu, eigenvectors, eigenvalues.clamp_(min=0.0), float(eps), n, tuple(pixels.shape[1:]))


def to_pixels(x: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """Undo per-channel ``(pixels - mean) / std``; without statistics the samples are taken as they are."""
    if not mean and not std:
        return x
    channels = x.shape[1]
    m = torch.as_tensor(mean, dtype=x.dtype).reshape(1, -1, *([1] * (x.dim() - 2)))
    s = torch.as_tensor(std, dtype=x.dtype).reshape(1, -1, *([1] * (x.dim() - 2)))
    if m.shape[1] not in (1, channels) or s.shape[1] not in (1, channels):
        raise DataError(
            f"zca=true cannot undo the normalisation: {len(mean)} mean / {len(std)} std values for "
            f"{channels}-channel images; the dataset's info must give one value per channel"
        )
    return x * s + m


def _key(x: torch.Tensor, eps: float) -> str:
    """Hash of the normalised training tensor (and eps): two loads of the same data share one fit."""
    t = x.detach().cpu().contiguous()
    digest = hashlib.blake2b(f"{t.dtype}{tuple(t.shape)}{eps!r}".encode(), digest_size=16)
    digest.update(t.numpy().reshape(-1).view("uint8").data)
    return digest.hexdigest()


def _fit_cached(bundle: DataBundle, eps: float) -> tuple[str, ZCA]:
    info = bundle.info
    # The hash covers the normalised tensor; the statistics undone before fitting are part of the key too.
    key = _key(bundle.train.x, eps) + f"|{list(info.mean)}|{list(info.std)}"
    with _LOCK:
        fit = _FITS.get(key)
        if fit is not None:
            _FITS.move_to_end(key)
            return key, fit
    fit = fit_zca(to_pixels(bundle.train.x, info.mean, info.std), eps)
    with _LOCK:
        _FITS[key] = fit
        while len(_FITS) > _CACHE_SIZE:
            _FITS.popitem(last=False)
    return key, fit


def whiten_bundle(bundle: DataBundle, eps: float = EPS) -> DataBundle:
    """ZCA-whiten every split of a loaded image dataset with a fit on its train split only.

    The samples are first mapped back to pixels in [0, 1] with ``bundle.info.mean`` / ``std`` (our
    datasets return mean/std-normalised tensors). The bundle given is not changed (loaders may cache it).

    Returns:
        A new bundle: whitened splits (labels and groups as they were), ``info.zca`` true and
        ``meta["zca"]`` recording eps, the number of fitting samples and the fit's cache key.

    Raises:
        DataError: the dataset is not an image dataset or has fewer than 2 training images.
    """
    info = bundle.info
    if info.modality != "image":
        raise DataError(f"zca=true whitens images; dataset {info.name!r} is {info.modality}: remove zca")
    key, fit = _fit_cached(bundle, eps)

    def whiten(split: Split) -> Split:
        return Split(fit.whiten(to_pixels(split.x, info.mean, info.std)), split.y, dict(split.groups))

    return dataclasses.replace(
        bundle,
        info=dataclasses.replace(info, zca=True),
        train=whiten(bundle.train),
        val=whiten(bundle.val),
        test=whiten(bundle.test),
        meta={**bundle.meta, "zca": {**fit.facts(), "fit_key": key}},
    )


def zca_of(bundle: DataBundle) -> ZCA:
    """The fit behind a bundle whitened in this process (e.g. to view a distilled set as pixels).

    Raises:
        DataError: the bundle is not whitened, or its fit has left the per-process cache (then use
            :func:`zca_for`, which refits from the data).
    """
    record = bundle.meta.get("zca")
    if not bundle.info.zca or not isinstance(record, dict):
        raise DataError(f"dataset {bundle.info.name!r} is not ZCA-whitened; load it with zca=true")
    with _LOCK:
        fit = _FITS.get(record.get("fit_key", ""))
    if fit is None:
        raise DataError(
            f"the ZCA fit of {bundle.info.name!r} is no longer cached in this process; "
            "get it with distillbench.datasets._zca.zca_for(dataset, root)"
        )
    return fit


def zca_for(dataset: Dataset, root: Path, eps: float = EPS) -> ZCA:
    """The ZCA fit of a configured image dataset (its train split, loaded without whitening; cached).

    Example:
        >>> fit = zca_for(CIFAR10(LongTailParams(zca=True)), root)  # doctest: +SKIP
        >>> pixels = fit.unwhiten(distilled.x)  # doctest: +SKIP
    """
    params = dataset.params
    plain = type(dataset)(dataclasses.replace(params, zca=False)) if getattr(params, "zca", False) else dataset
    return _fit_cached(plain.load(Path(root)), eps)[1]
