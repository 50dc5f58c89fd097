"""The batched evaluation engine: the K models of a trial trained together, one vmapped step for all.

:func:`~distillbench.harness.evaluate.train_on_set` trains one model at a time. On a GPU a ConvNet on a
few hundred images leaves most of the device idle, so here the K models' parameters are stacked
(``torch.func.stack_module_state``), one forward/backward runs all of them (``torch.func.functional_call``
under ``torch.func.vmap``: a convolution with stacked weights becomes one grouped convolution), and one
SGD optimiser updates the stacked tensors.

The math per model is that of the sequential path, step for step:

* model ``k`` is built and initialised from its own generator (the same seed as the sequential path);
* every epoch, model ``k`` draws its own batch order from its generator, and every batch its own DSA
  family and per-sample parameters (:meth:`~distillbench.harness.augment.DSA.per_sample_many`, which
  draws exactly what ``per_sample`` would and applies each family once to all models that picked it);
* the loss is the sum of the K per-model losses, so each model's gradient is that of its own loss, and
  SGD with momentum and weight decay acts elementwise, so a stacked update is K independent updates.

Only floating-point summation order differs (grouped vs plain convolutions), so accuracies are
statistically the same as the sequential engine's (``tests/test_batched.py``).

Which engine runs (:func:`eval_engine`): ``DISTILLBENCH_EVAL_ENGINE=batched|sequential`` if set, else
``batched`` on CUDA and ``sequential`` on the CPU (where a grouped convolution is no faster than K plain
ones). Networks the engine cannot vmap faithfully fall back to the sequential path with a reason
(:func:`unsupported_reason`): batch norm (running statistics are buffers updated in place) and dropout
(its randomness comes from the global stream, not from the model's generator); protocols with online
relabelling also train sequentially.

How the batched step runs (``DISTILLBENCH_BATCHED``: prefetched draws, channels-last, bf16 autocast,
``torch.compile``) is :class:`BatchedOptions`; ``benchmarks/gpu_campaign.py`` measures each on a GPU.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import functools
import logging
import os
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, stack_module_state, vmap

from distillbench.harness import compiled
from distillbench.harness.augment import DSA, FamilyGroup
from distillbench.harness.microbatch import soft_cross_entropy
from distillbench.harness.networks import build_network
from distillbench.harness.progress import emit
from distillbench.harness.protocols import EvalProtocol
from distillbench.harness.seeding import torch_generator
from distillbench.harness.types import DatasetInfo, DistilledSet

ENGINE_ENV = "DISTILLBENCH_EVAL_ENGINE"
EVAL_ENGINES = ("sequential", "batched")
OPTIONS_ENV = "DISTILLBENCH_BATCHED"
#: what :class:`BatchedOptions` can switch on, in the order labels list them
BATCHED_OPTIONS = ("prefetch", "channels_last", "bf16", "compile")

log = logging.getLogger(__name__)


def eval_engine(device: torch.device | str) -> str:
    """The engine for ``device``: ``$DISTILLBENCH_EVAL_ENGINE`` if set, else batched on CUDA, sequential elsewhere.

    Raises:
        ValueError: the environment variable names no engine.
    """
    value = os.environ.get(ENGINE_ENV, "").strip().lower()
    if value:
        if value not in EVAL_ENGINES:
            raise ValueError(f"{ENGINE_ENV}={value!r} is not an engine; valid: {', '.join(EVAL_ENGINES)}")
        return value
    return "batched" if torch.device(device).type == "cuda" else "sequential"


@dataclasses.dataclass(frozen=True)
class BatchedOptions:
    """How the batched step runs; ``$DISTILLBENCH_BATCHED`` picks them (:meth:`from_env`).

    Issue 9 profiled the batched step on an H100 as memory-bound, with ~45 host-device synchronisations
    per step; these are its remedies, each measured by ``benchmarks/gpu_campaign.py``:

    * ``prefetch`` (default on): each model's batch order and DSA parameters for a whole epoch are drawn
      on the host, from the model's own generator in the order the sequential engine draws them, and
      shipped in one pinned, non-blocking copy per dtype, instead of a blocking copy per family and step.
      Same random stream, same math: the trained models equal those without it (``tests/test_batched.py``).
    * ``channels_last``: the images, and the stacked convolution weights, laid out so that vmap's grouped
      convolutions see NHWC tensors (the layout of cuDNN's tensor-core kernels). Same math up to
      summation order.
    * ``bf16``: the forward and backward passes under bf16 autocast (parameters, optimiser and loss stay
      float32). Changes the arithmetic: off by default until its accuracy is shown to match on a GPU.
    * ``compile``: ``torch.compile`` over the vmapped loss, so Inductor can fuse norm, ReLU and pooling;
      costs a compile per process and shape, and falls back to eager with a warning if compiling fails.
    """

    prefetch: bool = True
    channels_last: bool = False
    bf16: bool = False
    compile: bool = False

    @classmethod
    def parse(cls, text: str) -> BatchedOptions:
        """Options from ``"prefetch,bf16"``-style text; ``""`` gives the defaults, ``"none"`` switches all off.

        Raises:
            ValueError: a name that is not one of :data:`BATCHED_OPTIONS`.
        """
        text = text.strip().lower()
        if not text:
            return cls()
        names = [] if text == "none" else [part.strip() for part in text.split(",") if part.strip()]
        unknown = [name for name in names if name not in BATCHED_OPTIONS]
        if unknown:
            raise ValueError(
                f"{OPTIONS_ENV}={text!r}: unknown option(s) {', '.join(unknown)}; valid: 'none' or a comma-separated "
                f"list of {', '.join(BATCHED_OPTIONS)}"
            )
        return cls(**{name: name in names for name in BATCHED_OPTIONS})

    @classmethod
    def from_env(cls) -> BatchedOptions:
        """The options ``$DISTILLBENCH_BATCHED`` names (unset: the defaults)."""
        return cls.parse(os.environ.get(OPTIONS_ENV, ""))

    @property
    def label(self) -> str:
        """The options that are on, comma-separated (``none`` if none is)."""
        return ",".join(name for name in BATCHED_OPTIONS if getattr(self, name)) or "none"


def _ship(tensors: list[torch.Tensor], device: torch.device) -> list[torch.Tensor]:
    """``tensors`` on ``device`` through one copy per dtype (pinned and non-blocking on CUDA: the host never waits)."""
    out: list[torch.Tensor] = list(tensors)
    by_dtype: dict[torch.dtype, list[int]] = {}
    for i, tensor in enumerate(tensors):
        by_dtype.setdefault(tensor.dtype, []).append(i)
    cuda = device.type == "cuda"
    for indices in by_dtype.values():
        flat = torch.cat([tensors[i].reshape(-1) for i in indices])
        # A pinned source lets the copy run asynchronously; PyTorch's pinned allocator keeps the buffer
        # alive until the copy is done.
        moved = (flat.pin_memory() if cuda else flat).to(device, non_blocking=cuda)
        offset = 0
        for i in indices:
            size = tensors[i].numel()
            out[i] = moved[offset : offset + size].view(tensors[i].shape)
            offset += size
    return out


def _draw_epoch(
    augment: DSA, generators: Sequence[torch.Generator], n: int, batch: int, size: int, device: torch.device
) -> tuple[torch.Tensor, list[list[FamilyGroup]]]:
    """One epoch's batch orders ``[K, n]`` and, per batch, its DSA draws grouped by family, on ``device``.

    Per generator the draws come in the order of the per-step path (its permutation, then each batch's
    family and parameters), so the random stream, and with it every model, is unchanged.
    """
    order = torch.stack([torch.randperm(n, generator=g) for g in generators])
    steps: list[list[FamilyGroup]] = []
    for start in range(0, n, batch):
        rows = min(batch, n - start)
        draws = [augment.draw_per_sample(rows, size, g) for g in generators] if augment else []
        steps.append(augment.group_draws(draws, rows) if augment else [])
    host = [order]
    for groups in steps:
        for group in groups:
            host.extend(group.params.values())
            if group.rows is not None:
                host.append(group.rows)
    moved = iter(_ship(host, device))
    order = next(moved)
    shipped = []
    for groups in steps:
        shipped.append(
            [
                FamilyGroup(g.family, {k: next(moved) for k in g.params}, next(moved) if g.rows is not None else None)
                for g in groups
            ]
        )
    return order, shipped


def _nhwc(t: torch.Tensor) -> torch.Tensor:
    """``t`` ``[K, n, C, H, W]`` (or stacked conv weights ``[K, O, I, h, w]``) laid out K-inner, channels last.

    vmap turns a convolution over stacked models into one grouped convolution on ``[n, K * C, H, W]``;
    with this layout (n, H, W, K, C in memory) that tensor is a channels-last view, with no copy.
    """
    return t.permute(1, 3, 4, 0, 2).contiguous().permute(3, 0, 4, 1, 2)


def _vmapped_losses(template: nn.Module, soft: bool) -> Callable[..., torch.Tensor]:
    """``losses(params, buffers, x, y)``: each stacked model's loss on its own batch, ``[K]``, by vmap.

    ``template`` (a model on the meta device) gives only the structure; the values come from ``params``.
    """
    criterion = soft_cross_entropy if soft else F.cross_entropy

    def one_loss(p: dict, b: dict, xb: torch.Tensor, yb: torch.Tensor) -> torch.Tensor:
        return criterion(functional_call(template, (p, b), (xb,)), yb)

    return vmap(one_loss, in_dims=(0, 0, 0, 0))


# Compiled losses of this process, by (network spec, sample shape, classes, soft labels).
_COMPILED_LOSSES: dict[tuple[str, tuple[int, ...], int, bool], Callable[..., torch.Tensor]] = {}


def _compiled_losses(network: str, info: DatasetInfo, soft: bool) -> Callable[..., torch.Tensor]:
    """:func:`_vmapped_losses` under ``torch.compile``, built once per process and architecture.

    A new closure per evaluation would miss Dynamo's guards and compile again for every trial; one
    compiled function per (network, data shape, label kind) is reused by every evaluation of the process.
    """
    key = (network, tuple(info.shape), info.num_classes, soft)
    if key not in _COMPILED_LOSSES:
        template = build_network(network, info, torch.Generator().manual_seed(0)).to("meta")
        _COMPILED_LOSSES[key] = compiled.first_call_fallback(_vmapped_losses(template, soft))
    return _COMPILED_LOSSES[key]


def unsupported_reason(model: nn.Module) -> str | None:
    """Why the batched engine cannot train ``model`` exactly as the sequential path would (``None``: it can)."""
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            return f"{type(module).__name__} updates running statistics in place, which vmap cannot batch"
        if isinstance(module, nn.modules.dropout._DropoutNd):
            return f"{type(module).__name__} draws from the global random stream, not the model's generator"
    return None


def train_models_batched(
    protocol: EvalProtocol,
    dset: DistilledSet,
    info: DatasetInfo,
    *,
    generators: Sequence[torch.Generator],
    device: torch.device | str,
    network: str | None = None,
    progress: Callable[..., None] | None = None,
    options: BatchedOptions | None = None,
) -> list[nn.Module]:
    """Train ``len(generators)`` fresh networks on ``dset`` together; model ``k`` draws only from ``generators[k]``.

    Args:
        protocol: the recipe (network, optimiser, schedule, augmentation).
        dset: the distilled set (hard or soft labels), already checked against ``info`` and ``protocol``.
        info: the dataset's facts.
        generators: one CPU generator per model, as :func:`~distillbench.harness.evaluate.train_on_set` takes.
        device: where the models and the set live while training.
        network: network spec; defaults to the protocol's primary network.
        progress: optional callback; one that takes ``**values`` gets ``models=``, ``epoch=`` and ``epochs=``
            after each epoch (fine events, :func:`distillbench.harness.progress.emit`).
        options: how the step runs (default: :meth:`BatchedOptions.from_env`).

    Returns:
        The trained models, on ``device``, in eval mode, in generator order.

    Raises:
        NotImplementedError: the network cannot be batched (see :func:`unsupported_reason`).
    """
    device = torch.device(device)
    models = [build_network(network or protocol.network, info, g) for g in generators]
    reason = unsupported_reason(models[0])
    if reason is not None:
        raise NotImplementedError(reason)
    params, buffers = stack_module_state(models)
    options = options if options is not None else BatchedOptions.from_env()
    params = {k: v.detach().to(device) for k, v in params.items()}
    if options.channels_last:
        params = {k: _nhwc(v) if v.dim() == 5 else v for k, v in params.items()}  # stacked conv weights
    params = {k: v.requires_grad_(True) for k, v in params.items()}
    buffers = {k: v.to(device) for k, v in buffers.items()}

    x = dset.x.detach().to(device=device, dtype=torch.float32)
    y = dset.y.detach().to(device=device, dtype=torch.float32 if dset.soft else torch.long)
    if options.compile:
        losses = _compiled_losses(network or protocol.network, info, dset.soft)
    else:
        losses = _vmapped_losses(copy.deepcopy(models[0]).to("meta"), dset.soft)
    # bf16 autocast on the device's own autocast (CPU autocast too, so the option is testable there).
    amp = (
        functools.partial(torch.autocast, device.type, dtype=torch.bfloat16) if options.bf16 else contextlib.nullcontext
    )
    augment = DSA(info.dsa_strategy) if protocol.augment == "dsa" else DSA("none")
    optimizer = torch.optim.SGD(
        list(params.values()), lr=protocol.lr, momentum=protocol.momentum, weight_decay=protocol.weight_decay
    )
    decay_epoch = int(protocol.epochs * protocol.lr_decay_at)
    n = x.shape[0]
    batch = min(protocol.batch_size, n)
    for epoch in range(protocol.epochs):
        if epoch == decay_epoch:
            for group in optimizer.param_groups:
                group["lr"] = protocol.lr * protocol.lr_decay_factor
        steps = None
        if options.prefetch:
            order, steps = _draw_epoch(augment, generators, n, batch, x.shape[-1], device)
        else:
            # Each model's order from its own generator, on the CPU, then one copy to the device.
            order = torch.stack([torch.randperm(n, generator=g) for g in generators]).to(device)
        for step, start in enumerate(range(0, n, batch)):
            idx = order[:, start : start + batch]
            if steps is not None:
                xb = augment.apply_groups(x[idx], steps[step])
            else:
                xb = augment.per_sample_many(x[idx], generators)
            if options.channels_last and xb.dim() == 5:
                xb = _nhwc(xb)
            with amp():
                loss = losses(params, buffers, xb, y[idx]).sum()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        emit(
            progress,
            (epoch + 1) / protocol.epochs,
            f"{len(models)} models, epoch {epoch + 1}/{protocol.epochs}",
            fine=True,
            models=len(models),
            epoch=epoch + 1,
            epochs=protocol.epochs,
        )

    with torch.no_grad():
        for k, model in enumerate(models):
            model.to(device)
            for name, tensor in model.named_parameters():
                tensor.copy_(params[name][k])
    return [m.eval() for m in models]


def maybe_train_batched(
    protocol: EvalProtocol,
    dset: DistilledSet,
    info: DatasetInfo,
    *,
    seeds: Sequence[int],
    device: torch.device | str,
    network: str | None = None,
    progress: Callable[[float, str], None] | None = None,
) -> list[nn.Module] | None:
    """The K trained models if the batched engine applies to this evaluation, else ``None``.

    ``None`` means: train sequentially. That is the case when :func:`eval_engine` picks ``sequential``,
    and when the network cannot be batched; the reason is then logged and passed to ``progress``.
    """
    if eval_engine(device) != "batched":
        return None
    try:
        if getattr(protocol, "relabel", "none") != "none":
            # Online relabelling queries a teacher per augmented batch inside train_on_set.
            raise NotImplementedError(f"relabel={protocol.relabel!r} runs inside the sequential training loop")
        return train_models_batched(
            protocol,
            dset,
            info,
            generators=[torch_generator(s, "cpu") for s in seeds],
            device=device,
            network=network,
            progress=progress,
        )
    except NotImplementedError as exc:
        message = (
            f"batched evaluation engine unavailable for {network or protocol.network}: {exc}; training sequentially"
        )
        log.info(message)
        if progress is not None:
            progress(0.0, message)
        return None
