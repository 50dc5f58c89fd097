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
"""

from __future__ import annotations

import copy
import logging
import os
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, stack_module_state, vmap

from distillbench.harness.augment import DSA
from distillbench.harness.microbatch import soft_cross_entropy
from distillbench.harness.networks import build_network
from distillbench.harness.protocols import EvalProtocol
from distillbench.harness.seeding import torch_generator
from distillbench.harness.types import DatasetInfo, DistilledSet

ENGINE_ENV = "DISTILLBENCH_EVAL_ENGINE"
EVAL_ENGINES = ("sequential", "batched")

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
) -> list[nn.Module]:
    """Train ``len(generators)`` fresh networks on ``dset`` together; model ``k`` draws only from ``generators[k]``.

    Args:
        protocol: the recipe (network, optimiser, schedule, augmentation).
        dset: the distilled set (hard or soft labels), already checked against ``info`` and ``protocol``.
        info: the dataset's facts.
        generators: one CPU generator per model, as :func:`~distillbench.harness.evaluate.train_on_set` takes.
        device: where the models and the set live while training.
        network: network spec; defaults to the protocol's primary network.

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
    params = {k: v.detach().to(device).requires_grad_(True) for k, v in params.items()}
    buffers = {k: v.to(device) for k, v in buffers.items()}
    template = copy.deepcopy(models[0]).to("meta")

    x = dset.x.detach().to(device=device, dtype=torch.float32)
    y = dset.y.detach().to(device=device, dtype=torch.float32 if dset.soft else torch.long)
    criterion = soft_cross_entropy if dset.soft else F.cross_entropy

    def one_loss(p: dict, b: dict, xb: torch.Tensor, yb: torch.Tensor) -> torch.Tensor:
        return criterion(functional_call(template, (p, b), (xb,)), yb)

    losses = vmap(one_loss, in_dims=(0, 0, 0, 0))
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
        # Each model's order from its own generator, on the CPU, then one copy to the device.
        order = torch.stack([torch.randperm(n, generator=g) for g in generators]).to(device)
        for start in range(0, n, batch):
            idx = order[:, start : start + batch]
            xb = augment.per_sample_many(x[idx], generators)
            loss = losses(params, buffers, xb, y[idx]).sum()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

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
            protocol, dset, info, generators=[torch_generator(s, "cpu") for s in seeds], device=device, network=network
        )
    except NotImplementedError as exc:
        message = (
            f"batched evaluation engine unavailable for {network or protocol.network}: {exc}; training sequentially"
        )
        log.info(message)
        if progress is not None:
            progress(0.0, message)
        return None
