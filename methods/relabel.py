"""Label stages ``teacher`` and ``adsa``, and online relabelling during evaluation.

Both stages replace the labels of any method's images (random, herding, dm, dc, sre2l, ...) by the
soft labels of a teacher trained on the real, possibly long-tailed, training split
(:mod:`~distillbench.methods.teacher`; one training per dataset and recipe, shared by all trials):

* ``teacher[temperature=T]``: ``softmax(f(x) / T)``.
* ``adsa[...]``: ADSA (Jiang et al., NeurIPS 2025; METHODS.md section 5). The tempered teacher logits
  are shifted by ``-tau * log(pi)``, with ``pi`` the class frequencies of the training split, so the
  head-class bias the long tail put into the teacher is taken out in logit space (the relations
  between the non-target classes are kept)::

      p(y | x; tau) = softmax_y( f_y(x) / T - tau * log pi_y )
      m_i(tau)      = mean over the set's images x of class i of p(y = i | x; tau)
      tau*          = argmin over the grid of std_i m_i(tau)

  The grid is ``tau_min, tau_min + tau_step, ..., tau_max`` (default 0 to 3 in steps of 0.05, 61
  values; the paper's search range is not public, METHODS.md marks it UNVERIFIED). Ties (within
  1e-7) go to the smaller tau, so a uniform prior, whose shift changes nothing, gives tau* = 0.
  The std is the population std over the classes that have images in the set. The shift acts on
  the tempered logits, i.e. on the logits of the labels actually stored, so tau is found for them.

The class of an image is ``meta["image_class"]`` when the method recorded it (sre2l, whose labels
are already soft), else its hard label, else the arg-max of its soft label.

Both stages record ``meta["teacher"]`` (cache key, file, temperature, class counts) and ``adsa``
also ``meta["label_tau"]`` (the runner copies it into the row's ``label_tau`` column) and
``meta["adsa"]`` (grid and spread before / after). With them a protocol with ``relabel="online"``
relabels every augmented batch during evaluation with the same teacher, temperature and tau
(:func:`online_relabeler`), as SRe2L's evaluation does.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any, ClassVar

import torch

from distillbench.harness.errors import ConfigError, IncompatibleError
from distillbench.harness.plugins import register_label_stage
from distillbench.harness.stages import LabelStage
from distillbench.harness.types import Context, DataBundle, DatasetInfo, DistilledSet
from distillbench.methods.teacher import (
    TeacherOptions,
    get_teacher,
    load_teacher,
)

TIE_TOLERANCE = 1e-7


@dataclasses.dataclass(frozen=True)
class TeacherLabelParams(TeacherOptions):
    """Options of the ``teacher`` label stage (the teacher fields enter the set's identity)."""


@dataclasses.dataclass(frozen=True)
class ADSAParams(TeacherLabelParams):
    """Options of the ``adsa`` label stage: the teacher's, plus the tau grid."""

    tau_min: float = dataclasses.field(default=0.0, metadata={"help": "first tau of the search grid"})
    tau_max: float = dataclasses.field(default=3.0, metadata={"help": "last tau of the search grid"})
    tau_step: float = dataclasses.field(default=0.05, metadata={"help": "spacing of the search grid"})

    def __post_init__(self) -> None:
        super().__post_init__()
        tau_grid(self.tau_min, self.tau_max, self.tau_step)  # raises ConfigError (a ValueError) if empty

    def grid(self) -> torch.Tensor:
        return tau_grid(self.tau_min, self.tau_max, self.tau_step)


# ------------------------------------------------------------------------------------ ADSA maths
def tau_grid(tau_min: float, tau_max: float, tau_step: float) -> torch.Tensor:
    """The tau values ``tau_min, tau_min + tau_step, ..., <= tau_max`` (float64).

    Raises:
        ConfigError: the grid is empty (``tau_max < tau_min``, a step <= 0 or a non-finite bound).
    """
    if not all(math.isfinite(v) for v in (tau_min, tau_max, tau_step)) or tau_step <= 0 or tau_max < tau_min:
        raise ConfigError(
            f"the ADSA tau grid is empty (tau_min={tau_min}, tau_max={tau_max}, tau_step={tau_step}); "
            "use tau_min <= tau_max and tau_step > 0, e.g. adsa[tau_min=0,tau_max=3,tau_step=0.05]"
        )
    count = int(math.floor((tau_max - tau_min) / tau_step + 1e-9)) + 1
    return tau_min + tau_step * torch.arange(count, dtype=torch.float64)


def calibrate(logits: torch.Tensor, log_prior: torch.Tensor, tau: float, temperature: float = 1.0) -> torch.Tensor:
    """ADSA soft labels ``softmax(logits / temperature - tau * log_prior)`` ``[n, C]``."""
    z = logits.double() / temperature - float(tau) * log_prior.double().to(logits.device)
    return torch.softmax(z, dim=1).to(logits.dtype)


def confidence_spread(probs: torch.Tensor, classes: torch.Tensor, num_classes: int) -> float:
    """Population std over classes of each class's mean self-confidence ``m_i`` (classes without images skipped)."""
    means = [probs[classes == c, c].double().mean() for c in range(num_classes) if bool((classes == c).any())]
    if len(means) < 2:
        return 0.0
    return float(torch.stack(means).std(unbiased=False))


@dataclasses.dataclass(frozen=True)
class TauSearch:
    """The outcome of :func:`search_tau`: the chosen tau and the spread at every grid point."""

    tau: float
    grid: list[float]
    spreads: list[float]

    @property
    def spread_at_zero(self) -> float:
        """The spread of the uncalibrated labels (tau = 0), if 0 is on the grid, else of the first tau."""
        return self.spreads[self.grid.index(0.0)] if 0.0 in self.grid else self.spreads[0]

    @property
    def spread(self) -> float:
        return self.spreads[self.grid.index(self.tau)]


def search_tau(
    logits: torch.Tensor,
    classes: torch.Tensor,
    log_prior: torch.Tensor,
    grid: torch.Tensor,
    *,
    temperature: float = 1.0,
) -> TauSearch:
    """ADSA's 1-D search: the tau of ``grid`` that minimises :func:`confidence_spread`.

    Args:
        logits: teacher logits of the distilled images ``[n, C]``.
        classes: the class each image stands for ``[n]``.
        log_prior: ``log pi`` of the training split ``[C]``.
        grid: candidate taus (see :func:`tau_grid`).
        temperature: softmax temperature of the stored labels.

    Raises:
        ConfigError: ``grid`` is empty.
    """
    if grid.numel() == 0:
        raise ConfigError("the ADSA tau grid is empty; give at least one tau (tau_min <= tau_max, tau_step > 0)")
    num_classes = logits.shape[1]
    values = [float(t) for t in grid.tolist()]
    if float(log_prior.max() - log_prior.min()) < 1e-12:
        # A uniform prior shifts every logit equally: the labels cannot change, tau is moot.
        spread = confidence_spread(calibrate(logits, log_prior, 0.0, temperature), classes, num_classes)
        return TauSearch(tau=min(values, key=abs), grid=values, spreads=[spread] * len(values))
    spreads = [confidence_spread(calibrate(logits, log_prior, t, temperature), classes, num_classes) for t in values]
    best = min(spreads)
    tau = next(t for t, s in zip(values, spreads, strict=True) if s <= best + TIE_TOLERANCE)
    return TauSearch(tau=tau, grid=values, spreads=spreads)


# ------------------------------------------------------------------------------------ the stages
def image_classes(dset: DistilledSet) -> torch.Tensor:
    """The class each image of ``dset`` stands for (see the module docstring)."""
    if "image_class" in dset.meta:
        return torch.as_tensor(dset.meta["image_class"], dtype=torch.long)
    return dset.y.argmax(dim=1) if dset.soft else dset.y.long()


def _check_images(dset: DistilledSet, info: DatasetInfo, stage: str) -> None:
    if info.modality != "image" or tuple(dset.x.shape[1:]) != tuple(info.shape) or len(dset) == 0:
        raise IncompatibleError(
            f"label stage {stage!r} relabels images of shape {tuple(info.shape)} with a teacher network, but the "
            f"set holds samples of shape {tuple(dset.x.shape)} from {info.name!r}; use labels native for this method"
        )


class _TeacherStageBase(LabelStage):
    """Shared checks of the teacher-based stages."""

    @classmethod
    def check(cls, method: Any, info: DatasetInfo) -> None:
        """Refuse datasets the teacher cannot take (called at grid validation)."""
        if info.modality != "image" or "image" not in getattr(method, "modalities", {"image"}):
            raise IncompatibleError(
                f"label stage {cls.name!r} needs image data for its ConvNet teacher, but dataset {info.name!r} is "
                f"{info.modality}; use labels native"
            )

    def _teacher_logits(self, dset: DistilledSet, data: DataBundle, ctx: Context) -> tuple[Any, torch.Tensor]:
        _check_images(dset, data.info, self.name)
        teacher = get_teacher(data, self.params.recipe(), cache_dir=ctx.cache_dir, device=ctx.device)
        return teacher, teacher.logits(dset.x.detach(), device=ctx.device)

    def _meta(self, dset: DistilledSet, teacher: Any, **extra: Any) -> dict[str, Any]:
        return {
            **dset.meta,
            "image_class": image_classes(dset).tolist(),
            "teacher": {**teacher.reference(), "temperature": self.params.temperature},
            "label_stage": self.name,
            **extra,
        }


@register_label_stage("teacher")
class TeacherLabels(_TeacherStageBase):
    """Soft labels from a teacher trained on the real training split: ``softmax(f(x) / T)``."""

    name = "teacher"
    Params = TeacherLabelParams
    identity: ClassVar[bool] = False

    def apply(self, dset: DistilledSet, data: DataBundle, ctx: Context) -> DistilledSet:
        teacher, logits = self._teacher_logits(dset, data, ctx)
        y = torch.softmax(logits.double() / self.params.temperature, dim=1).float()
        return DistilledSet(dset.x, y, dict(dset.extras), self._meta(dset, teacher, label_tau=None))


@register_label_stage("adsa")
class ADSALabels(_TeacherStageBase):
    """ADSA: teacher soft labels shifted by ``-tau * log(prior)`` with tau fitted on the set (module docstring)."""

    name = "adsa"
    Params = ADSAParams
    identity: ClassVar[bool] = False

    def apply(self, dset: DistilledSet, data: DataBundle, ctx: Context) -> DistilledSet:
        teacher, logits = self._teacher_logits(dset, data, ctx)
        classes = image_classes(dset)
        log_prior = teacher.log_prior()
        T = self.params.temperature
        found = search_tau(logits, classes, log_prior, self.params.grid(), temperature=T)
        y = calibrate(logits, log_prior, found.tau, T).float()
        adsa = {
            "grid": [self.params.tau_min, self.params.tau_max, self.params.tau_step],
            "spread_tau0": found.spread_at_zero,
            "spread": found.spread,
        }
        return DistilledSet(dset.x, y, dict(dset.extras), self._meta(dset, teacher, label_tau=found.tau, adsa=adsa))


# ------------------------------------------------------------------------------- online relabel
def online_relabeler(
    dset: DistilledSet, info: DatasetInfo, device: torch.device
) -> Callable[[torch.Tensor], torch.Tensor]:
    """A function ``augmented batch -> soft labels`` from the teacher the set records (``meta["teacher"]``).

    The labels are ``softmax(f(x) / T - tau * log pi)`` with the set's temperature and
    ``meta["label_tau"]`` (0 for plain teacher labels), the same calibration as the stored labels.

    Raises:
        ConfigError: the set records no teacher (its labels did not come from a teacher stage or sre2l).
        DataError: the teacher file is gone.
    """
    ref = dset.meta.get("teacher")
    if not isinstance(ref, dict) or "path" not in ref:
        raise ConfigError(
            "online relabelling needs the set's teacher (meta['teacher']), but this set records none; "
            "use labels teacher or adsa (or method sre2l), or a protocol without relabel"
        )
    teacher = load_teacher(ref["path"], info)
    model = teacher.on(device)
    temperature = float(ref.get("temperature", 1.0))
    shift = float(dset.meta.get("label_tau") or 0.0) * teacher.log_prior().to(device)

    def relabel(xb: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return torch.softmax(model(xb).float() / temperature - shift, dim=1)

    return relabel


__all__ = [
    "ADSALabels",
    "ADSAParams",
    "TauSearch",
    "TeacherLabelParams",
    "TeacherLabels",
    "calibrate",
    "confidence_spread",
    "image_classes",
    "online_relabeler",
    "search_tau",
    "tau_grid",
]
