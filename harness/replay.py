"""The replay engine: score a DD set by re-applying the inner SGD steps it was distilled with.

Dataset Distillation (Wang et al. 2018) and soft-label DD learn, besides the samples, one step size
per inner gradient step, and they are evaluated the way they were trained (METHODS.md section 1,
"Evaluation protocol"): start from the network's initial weights ``w`` and, for ``t = 0 .. T-1``,

    w <- w - lrs[t] * grad_w loss(f(x_s; w), y_s),   s = t mod S,

where ``(x_s, y_s)`` are the samples of data step ``s`` (``extras["step_of_sample"] == s``, in set
order) with the set's own labels: cross-entropy for hard labels, the soft-label loss
``-(y * log_softmax(f)).sum(1).mean()`` with unnormalised labels for soft ones (METHODS.md pitfall
2). Test accuracy is measured after the last step. Inner steps run in train mode, the test in eval
mode, as in the DD code (the same function for LeNet and AlexCifarNet, which have neither dropout
nor batch norm).

Which network and which initial weights:

* the network is the set's own, ``meta["net"]`` (a network spec); a replay protocol names the
  placeholder ``"from-set"`` in ``networks`` and the result reports the set's network;
* ``meta["init"] == "fixed"`` (DD's ``known_init``): the one initialisation the set was distilled
  for, rebuilt exactly with ``build_network(meta["net"], info, torch_generator(meta["init_seed"]))``.
  The replay is deterministic, so it runs once: K = 1 whatever ``protocol.n_models`` says;
* ``meta["init"] == "random"`` (``unknown_init``): ``protocol.n_models`` fresh initialisations, model
  ``k`` from ``derive_seed(seed, "eval", protocol.name, protocol.version, k)`` as in the training engine.

:func:`unroll` is also the inner loop of ``methods/dd.py`` (with ``create_graph=True``), so the
steps replayed here are, operation for operation, the steps the method differentiated through.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from distillbench.harness.errors import ConfigError
from distillbench.harness.evaluate import EvalResult, Scorer, _check_inputs
from distillbench.harness.networks import build_network, resolve_network
from distillbench.harness.progress import emit
from distillbench.harness.protocols import FROM_SET, LEARNED_STEP_EXTRAS, EvalProtocol
from distillbench.harness.seeding import derive_seed, torch_generator
from distillbench.harness.types import DataBundle, DistilledSet

REQUIRED_EXTRAS = LEARNED_STEP_EXTRAS
INITS = ("fixed", "random")


def inner_loss(logits: torch.Tensor, target: torch.Tensor, soft: bool) -> torch.Tensor:
    """The loss of one inner step: hard-label cross-entropy, or the soft-label loss.

    Args:
        logits: ``[m, C]`` network outputs.
        target: ``[m]`` class indices (hard) or ``[m, C]`` label vectors (soft).
        soft: whether ``target`` holds label vectors.

    Returns:
        The mean loss. Soft labels are used as given (not normalised, possibly negative):
        ``sum_c y_c * CE(logits, c) = -(y * log_softmax(logits)).sum(1)``, averaged over the batch.
    """
    if soft:
        return -(target * F.log_softmax(logits, dim=1)).sum(1).mean()
    return F.cross_entropy(logits, target)


def unroll(
    module: nn.Module,
    params: Mapping[str, torch.Tensor],
    xs: list[torch.Tensor],
    targets: list[torch.Tensor],
    lrs: torch.Tensor,
    *,
    soft: bool,
    create_graph: bool = False,
) -> dict[str, torch.Tensor]:
    """Apply ``len(lrs)`` plain gradient steps to ``params``, cycling over the data steps.

    Args:
        module: the network structure; it is run with :func:`torch.func.functional_call` on
            ``params`` (its own parameters are never read or written), in train mode.
        params: the initial weights by parameter name. With ``create_graph`` they must require grad.
        xs: the samples of each data step, ``S`` tensors ``[m_s, *shape]``.
        targets: the labels of each data step (class indices or label vectors).
        lrs: ``[T]`` step sizes; step ``t`` uses data step ``t mod S``.
        soft: soft-label loss (see :func:`inner_loss`) instead of cross-entropy.
        create_graph: keep the graph of every step, so the result is differentiable with respect to
            ``xs``, ``targets``, ``lrs`` and ``params`` (exact backpropagation through the unrolled
            steps, what DD trains with). Without it every step is detached: a plain replay.

    Returns:
        The weights after the last step, by parameter name.
    """
    if len(xs) != len(targets) or not xs:
        raise ValueError(f"unroll needs one target per data step and at least one step; got {len(xs)} / {len(targets)}")
    module.train()
    names = list(params)
    current = dict(params)
    with torch.enable_grad():  # a replay may be called under no_grad; its steps still need gradients
        for t in range(lrs.shape[0]):
            s = t % len(xs)
            if not create_graph:
                current = {k: v.detach().requires_grad_(True) for k, v in current.items()}
            loss = inner_loss(functional_call(module, current, (xs[s],)), targets[s], soft)
            grads = torch.autograd.grad(loss, [current[k] for k in names], create_graph=create_graph, allow_unused=True)
            current = {
                k: current[k] if g is None else current[k] - lrs[t] * g for k, g in zip(names, grads, strict=True)
            }
    if not create_graph:
        current = {k: v.detach() for k, v in current.items()}
    return current


def check_replayable(protocol_id: str, dset: DistilledSet) -> None:
    """Raise ``ConfigError`` unless ``dset`` carries what a replay needs (a DD / soft-label DD set)."""
    missing = [k for k in REQUIRED_EXTRAS if k not in dset.extras]
    if missing:
        have = ", ".join(sorted(dset.extras)) or "none"
        raise ConfigError(
            f"protocol {protocol_id} replays learned inner steps, so it needs a set with learned steps "
            f"(extras {' and '.join(repr(k) for k in REQUIRED_EXTRAS)}, as method 'dd' writes them); this set "
            f"has extras: {have} (missing {', '.join(missing)}). Evaluate it under a training protocol such as "
            "convnet-v1 or quick-v1 instead"
        )
    meta = dset.meta
    if not isinstance(meta.get("net"), str) or meta.get("init") not in INITS:
        raise ConfigError(
            f"protocol {protocol_id} needs the set's meta 'net' (a network spec) and 'init' (fixed or random); "
            f"got net={meta.get('net')!r}, init={meta.get('init')!r}"
        )
    if meta["init"] == "fixed" and not isinstance(meta.get("init_seed"), int):
        raise ConfigError(
            f"protocol {protocol_id}: a fixed-init set needs meta 'init_seed' (int) to rebuild its initial "
            f"network; got {meta.get('init_seed')!r}"
        )
    lrs, steps = dset.extras["lrs"], dset.extras["step_of_sample"]
    if lrs.dim() != 1 or lrs.numel() == 0 or not lrs.is_floating_point():
        raise ConfigError(f"extras 'lrs' must be a non-empty float vector [T], got {tuple(lrs.shape)} {lrs.dtype}")
    if steps.shape != (len(dset),) or steps.is_floating_point():
        raise ConfigError(
            f"extras 'step_of_sample' must be integers of shape [{len(dset)}], got {tuple(steps.shape)} {steps.dtype}"
        )
    counts = torch.bincount(steps.long()) if steps.numel() and int(steps.min()) >= 0 else None
    if counts is None or bool((counts == 0).any()):
        raise ConfigError("extras 'step_of_sample' must number the data steps 0..S-1, each with at least one sample")


def split_steps(dset: DistilledSet, device: torch.device) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """The samples and labels of each data step, in set order, on ``device``."""
    steps = dset.extras["step_of_sample"].long()
    x = dset.x.detach().to(device=device, dtype=torch.float32)
    y = dset.y.detach().to(device=device, dtype=torch.float32 if dset.soft else torch.long)
    xs, ys = [], []
    for s in range(int(steps.max()) + 1):
        idx = torch.nonzero(steps == s, as_tuple=True)[0].to(device)
        xs.append(x[idx])
        ys.append(y[idx])
    return xs, ys


def replay(
    protocol: EvalProtocol,
    dset: DistilledSet,
    data: DataBundle,
    *,
    seed: int,
    device: torch.device | str = "cpu",
    progress: Callable[[float, str], None] | None = None,
    network: str | None = None,
) -> EvalResult:
    """Score ``dset`` by replaying its learned steps (see the module docstring).

    Args:
        protocol: a protocol with ``engine="replay"`` (``dd-replay-v1``) or ``"replay_or_train"`` (``text-v1``).
        dset: a set distilled by ``dd`` (extras ``lrs`` and ``step_of_sample``; meta ``net``, ``init``
            and, for a fixed init, ``init_seed``).
        data: the real dataset; test accuracy on ``data.test``, validation accuracy on ``data.val``.
        seed: the trial seed (used for the K fresh initialisations of a random-init set).
        device: where to replay and test.
        progress: optional callback ``(fraction_done, message)``, called after each model; one that also
            takes ``**values`` gets ``model=`` and ``models=``.
        network: ``None``, an entry of ``protocol.networks`` (``"from-set"``) or the set's own network.

    Returns:
        The same :class:`EvalResult` as the training engine; ``network`` is the set's ``meta["net"]``.

    Raises:
        ConfigError: the set has no learned steps (not a DD set) or its metadata is incomplete.
        ValueError: the set does not fit the dataset, or ``network`` names another network.
    """
    start_time = time.perf_counter()
    check_replayable(protocol.id, dset)
    info = data.info
    _check_inputs(protocol, dset, info)
    net = dset.meta["net"]
    if network is not None and network not in protocol.networks and network != net:
        raise ValueError(
            f"protocol {protocol.id} replays a set on its own network {net!r}; got network={network!r} "
            f"(valid: {', '.join(protocol.networks)} or {net!r})"
        )
    resolve_network(net).validate(info)
    device = torch.device(device)
    xs, ys = split_steps(dset, device)
    lrs = dset.extras["lrs"].detach().to(device=device, dtype=torch.float32)
    scorer = Scorer(data, device)

    fixed = dset.meta["init"] == "fixed"
    n_models = 1 if fixed else protocol.n_models
    for k in range(n_models):
        init_seed = dset.meta["init_seed"] if fixed else derive_seed(seed, "eval", protocol.name, protocol.version, k)
        model = build_network(net, info, torch_generator(init_seed)).to(device)
        final = unroll(model, dict(model.named_parameters()), xs, ys, lrs, soft=dset.soft)
        with torch.no_grad():
            for name, param in model.named_parameters():
                param.copy_(final[name])
        acc = scorer.add(model)
        emit(
            progress,
            (k + 1) / n_models,
            f"replay model {k + 1}/{n_models}: test acc {acc:.4f}",
            model=k + 1,
            models=n_models,
        )
    return scorer.result(net, time.perf_counter() - start_time)


__all__ = ["FROM_SET", "check_replayable", "inner_loss", "replay", "split_steps", "unroll"]
