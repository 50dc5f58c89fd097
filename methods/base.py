"""The contract every distillation method implements.

A method is one file in ``methods/`` holding one class decorated with ``@register_method(name)``
(the name is the file stem). The class declares:

Required:
    distill(data, ipc, ctx) -> DistilledSet: produce ``ipc`` samples per class from ``data.train``
        (or another count, if the method documents it), using only ``ctx.generator`` for randomness.

Optional hooks:
    validate(info, ipc): reject a dataset or ipc the method cannot handle, before anything runs.
    num_samples(info, ipc): how many samples ``distill`` returns (default ``ipc * num_classes``;
        ``None`` when only the loaded data tells, as for ``full``).
    shrink_for_oom(params) (classmethod): smaller parameters to retry with once after running out of
        memory, or ``None``; the default halves ``batch_real`` (dm, dc, dsa) while it is above 1.

Class attributes:
    Params: frozen dataclass of hyperparameters, defaults from the method's paper.
    modalities: data modalities the method handles (``{"image"}``, or ``{"image", "text"}``).
    accepts_weights: whether ``ctx.weights`` (sample weights of the real data) are used.
    replayable: whether the sets carry learned inner steps (``extras["lrs"]``) that replay
        protocols such as ``dd-replay-v1`` train through.
    uses_randomness: False for a method whose output does not depend on the seed (``full``).
    test_config: small ``Params`` overrides that make the method run in seconds on CPU; the
        conformance tests run every registered method with them.
"""

from __future__ import annotations

import abc
import dataclasses
from typing import Any, ClassVar

from distillbench.harness.errors import ConfigError, IncompatibleError
from distillbench.harness.params import NoParams
from distillbench.harness.types import Context, DataBundle, DatasetInfo, DistilledSet


class DistillationMethod(abc.ABC):
    """Base class of distillation methods; see the module docstring for the contract."""

    name: ClassVar[str] = ""
    Params: ClassVar[type] = NoParams
    modalities: ClassVar[frozenset[str]] = frozenset({"image"})
    accepts_weights: ClassVar[bool] = False
    replayable: ClassVar[bool] = False
    uses_randomness: ClassVar[bool] = True
    test_config: ClassVar[dict[str, Any]] = {}

    def __init__(self, params: Any | None = None) -> None:
        self.params = params if params is not None else self.Params()

    def validate(self, info: DatasetInfo, ipc: int) -> None:
        """Raise ``ConfigError`` / ``IncompatibleError`` if this method cannot run on ``info`` at ``ipc``."""
        if info.modality not in self.modalities:
            raise IncompatibleError(
                f"method {self.name!r} handles {'/'.join(sorted(self.modalities))} data, "
                f"but dataset {info.name!r} is {info.modality}; choose a method that lists "
                f"{info.modality!r} in its modalities (distillbench ls methods)"
            )
        if ipc < 1:
            raise ConfigError(f"ipc must be at least 1, got {ipc}")

    @classmethod
    def shrink_for_oom(cls, params: Any) -> Any | None:
        """Parameters that need less memory, for one retry after an out-of-memory error; ``None`` if none.

        The default halves ``batch_real`` (real images per class per step) when the parameters have
        one above 1; methods with other memory knobs override this.
        """
        batch = getattr(params, "batch_real", None)
        if dataclasses.is_dataclass(params) and isinstance(batch, int) and batch > 1:
            return dataclasses.replace(params, batch_real=batch // 2)
        return None

    def num_samples(self, info: DatasetInfo, ipc: int) -> int | None:
        """Number of samples ``distill`` returns (``None``: it depends on the loaded data)."""
        return ipc * info.num_classes

    @abc.abstractmethod
    def distill(self, data: DataBundle, ipc: int, ctx: Context) -> DistilledSet:
        """Produce the distilled set."""

    def check_network_and_augmentation(self, info: DatasetInfo, net: str, strategy: str = "none") -> None:
        """Validate a method's network spec and DSA strategy on ``info`` before any work runs.

        Raises:
            ConfigError: the network cannot take the data (e.g. a ConvNet too deep for 8x8 inputs)
                or the strategy names unknown augmentation families.
        """
        from distillbench.harness.augment import DSA
        from distillbench.harness.networks import resolve_network

        resolve_network(net).validate(info)
        try:
            DSA(strategy)
        except ValueError as exc:
            raise ConfigError(f"method {self.name!r} on {info.name!r}: {exc}") from None
