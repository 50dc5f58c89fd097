"""The trajectory-matching loop shared by ``mtt``, ``ftd`` and ``datm`` (METHODS-trajectory.md sections 1-4).

Expert networks are trained on the real data once (:mod:`distillbench.methods._experts`: a cached,
content-addressed buffer of parameter snapshots after every epoch). The synthetic set is then learned
so that a student trained on it for ``syn_steps`` SGD steps, from an expert's parameters at epoch
``s``, lands near the same expert's parameters at epoch ``s + expert_epochs``. One iteration:

1. Draw an expert (uniformly, from ``ctx.generator``) and a start epoch ``s`` in the start window
   (``[0, max_start_epoch)`` for MTT and FTD; DATM's window moves, :class:`StartWindow`).
2. From ``theta_0 = expert[s]``, take ``syn_steps`` differentiable SGD steps on mini-batches of
   ``batch_syn`` synthetic samples (a fresh permutation whenever one is used up; all of them by
   default), each batch DSA-augmented with parameters per sample:
   ``theta_{i+1} = theta_i - syn_lr * grad CE(f(x_i; theta_i), y_i)``.
3. Loss ``||theta_N - expert[s + E]||^2 / ||theta_0 - expert[s + E]||^2``; one SGD(momentum 0.5)
   step on the images (``lr_img``) and on the learned step size ``syn_lr`` (``lr_lr``; initialised to
   ``lr_teacher``), and, for DATM, on the label logits (``lr_y``, momentum 0.9).

Memory and speed. The student is the network as a pure function of one flat parameter vector
(``torch.func.functional_call``; MTT's ``ReparamModule``), so no module is copied per step; the
graph of the unrolled steps lives from the first step to the backward pass of the same iteration
and is freed by it; gradients are taken only with respect to what is learned (never the expert's
start point). Memory still grows linearly with ``syn_steps``: ``tesla=true`` switches to TESLA's
constant-memory gradient (Cui et al. 2023): a first pass without graphs stores each step's
parameters, batch and augmentation draw, the closed form of the loss in the summed gradients gives
``d loss / d syn_lr``, and a second pass rebuilds one step's graph at a time. As in TESLA's code each
step's parameters are treated as constants there, which drops the terms through which an early batch
changes later gradients: an approximation of full backpropagation (exact for ``syn_steps=1``),
stated in the set's metadata.

Deviations from the official code, all deliberate:

* Experts and start epochs are drawn uniformly at random each iteration (MTT's ``--load_all``) rather
  than by cycling through shuffled buffer files: the files are a storage detail here.
* The returned set is the final one. The papers report the best accuracy over periodic test-set
  evaluations during distillation; choosing a checkpoint on the test split is exactly what a
  benchmark must not do (the protocol evaluates the final set once).
* All randomness (expert, start epoch, batches, augmentation, noise initialisation) comes from
  ``ctx.generator``; the reference seeds from the wall clock.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Literal

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from distillbench.harness.augment import DSA
from distillbench.harness.errors import ConfigError
from distillbench.harness.networks import build_network
from distillbench.harness.seeding import derive_seed, torch_generator
from distillbench.harness.types import Context, DataBundle, DatasetInfo, DistilledSet
from distillbench.methods._loop import LossTracker
from distillbench.methods._synthetic import init_synthetic
from distillbench.methods.base import DistillationMethod

if TYPE_CHECKING:
    from distillbench.methods._experts import ExpertBuffer, ExpertRecipe


def _field(default: Any, text: str) -> Any:
    return dataclasses.field(default=default, metadata={"help": text})


@dataclasses.dataclass(frozen=True)
class TrajectoryParams:
    """Hyperparameters of trajectory matching, named as in MTT's ``distill.py`` and ``buffer.py``.

    Defaults are MTT's argparse defaults; the per-dataset settings of the papers are in
    ``configs/trajectory-gpu.yaml`` (METHODS-trajectory.md section 1.4).
    """

    iterations: int = _field(5000, "updates of the synthetic set (MTT's Iteration)")
    syn_steps: int = _field(20, "student SGD steps on the synthetic set per iteration")
    expert_epochs: int = _field(3, "expert epochs the student's steps must cover")
    max_start_epoch: int = _field(25, "start epochs are drawn from [0, max_start_epoch)")
    lr_img: float = _field(1000.0, "SGD learning rate of the synthetic images")
    lr_lr: float = _field(1e-5, "SGD learning rate of the learned student step size syn_lr")
    lr_teacher: float = _field(0.01, "initial student step size syn_lr")
    momentum: float = _field(0.5, "SGD momentum of the image and step-size optimisers")
    batch_syn: int | None = _field(None, "synthetic samples per student step; none = all of them")
    pix_init: Literal["real", "noise"] = _field("real", "initialise from random real images or N(0, 1) noise")
    dsa: bool = _field(True, "DSA augmentation of the student's batches (and of the experts' training)")
    dsa_strategy: str | None = _field(None, "DSA families joined by '_'; none = the dataset's own strategy")
    net: str = _field("convnet", "network of the experts and the student")
    num_experts: int = _field(100, "expert trajectories in the buffer")
    train_epochs: int = _field(50, "epochs each expert is trained (the buffer holds train_epochs + 1 snapshots)")
    expert_lr: float = _field(0.01, "SGD learning rate of the experts (buffer.py's lr_teacher)")
    expert_batch: int = _field(256, "mini-batch of the experts' training (buffer.py's batch_train)")
    expert_seed: int = _field(0, "seed of the experts' training (part of the buffer's identity)")
    tesla: bool = _field(False, "TESLA's constant-memory gradient (approximate; see the module docstring)")

    def __post_init__(self) -> None:
        for name in ("iterations", "syn_steps", "expert_epochs", "max_start_epoch", "num_experts", "train_epochs"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.expert_batch < 1:
            raise ValueError(f"expert_batch must be at least 1, got {self.expert_batch}")
        if self.batch_syn is not None and self.batch_syn < 1:
            raise ValueError(f"batch_syn must be at least 1 (or none for all samples), got {self.batch_syn}")
        for name in ("lr_img", "lr_lr", "lr_teacher", "expert_lr"):
            value = getattr(self, name)
            if not (value > 0 and math.isfinite(value)):
                raise ValueError(f"{name} must be a positive finite number, got {value}")
        if not 0.0 <= self.momentum < 1.0:
            raise ValueError(f"momentum must be in [0, 1), got {self.momentum}")
        if self.dsa_strategy is not None:
            DSA(self.dsa_strategy)  # raises ValueError naming unknown families


@dataclasses.dataclass(frozen=True)
class FlatExpertParams:
    """FTD's flat (sharpness-aware, GSAM) experts; DATM trains its buffers the same way."""

    rho: float = _field(0.01, "GSAM perturbation radius of the experts' training (FTD run_buffer.sh, DATM README)")
    alpha: float = _field(0.3, "GSAM weight of the orthogonal gradient (DATM README; FTD Table 7 CIFAR-10 IPC 1/10)")

    def __post_init__(self) -> None:
        if not (self.rho > 0 and math.isfinite(self.rho)):
            raise ValueError(f"rho must be a positive finite number, got {self.rho}")
        if not (self.alpha >= 0 and math.isfinite(self.alpha)):
            raise ValueError(f"alpha must be a non-negative finite number, got {self.alpha}")


@dataclasses.dataclass(frozen=True)
class FlatTrajectoryParams(FlatExpertParams, TrajectoryParams):
    """Trajectory matching on flat experts (``ftd``, ``datm``): MTT's parameters and GSAM's."""

    def __post_init__(self) -> None:
        TrajectoryParams.__post_init__(self)
        FlatExpertParams.__post_init__(self)


class TrajectoryMethod(DistillationMethod):
    """Base of the trajectory-matching methods: validation and the expert recipe from the parameters."""

    flat_experts: bool = False

    def strategy(self, info: DatasetInfo) -> str:
        """The DSA strategy used on ``info`` (``"none"`` when DSA is off)."""
        p = self.params
        if not p.dsa:
            return "none"
        return p.dsa_strategy if p.dsa_strategy is not None else info.dsa_strategy

    def expert_recipe(self, info: DatasetInfo) -> ExpertRecipe:
        """How this method's experts are trained (the buffer's identity)."""
        from distillbench.methods._experts import ExpertRecipe

        p = self.params
        flat = {"flat": True, "rho": p.rho, "alpha": p.alpha} if self.flat_experts else {}
        return ExpertRecipe(
            net=p.net,
            num_experts=p.num_experts,
            epochs=p.train_epochs,
            lr=p.expert_lr,
            batch_size=p.expert_batch,
            augment="dsa" if p.dsa else "none",
            seed=p.expert_seed,
            **flat,
        )

    def validate(self, info: DatasetInfo, ipc: int) -> None:
        super().validate(info, ipc)
        self.check_network_and_augmentation(info, self.params.net, self.strategy(info))
        p = self.params
        if p.max_start_epoch + p.expert_epochs > p.train_epochs:
            raise ConfigError(
                f"method {self.name!r}: max_start_epoch + expert_epochs = {p.max_start_epoch} + {p.expert_epochs} = "
                f"{p.max_start_epoch + p.expert_epochs} goes beyond the buffer's train_epochs={p.train_epochs}; "
                "lower max_start_epoch or expert_epochs, or raise train_epochs"
            )


class FlatModel:
    """A network used as a pure function of one flat parameter vector (MTT's ``ReparamModule``).

    The vector holds the parameters in ``named_parameters()`` order, as the expert buffer stores them.
    The module's own parameters are never used; its buffers (BatchNorm statistics, if any) are.
    """

    def __init__(self, net: nn.Module, param_shapes: list[tuple[str, tuple[int, ...]]]) -> None:
        own = [(name, tuple(p.shape)) for name, p in net.named_parameters()]
        expected = [(name, tuple(shape)) for name, shape in param_shapes]
        if own != expected:
            raise ConfigError(
                "the expert buffer holds parameters of another network than the student's "
                f"({len(expected)} tensors vs {len(own)}); rebuild the buffer for this network"
            )
        self.net = net
        self.names = [name for name, _ in expected]
        self.shapes = [shape for _, shape in expected]
        self.numels = [math.prod(shape) for shape in self.shapes]

    def __call__(self, flat: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        tensors = flat.split(self.numels)
        params = {name: t.view(shape) for name, t, shape in zip(self.names, tensors, self.shapes, strict=True)}
        return functional_call(self.net, params, (x,))


@dataclasses.dataclass(frozen=True)
class StartWindow:
    """Where start epochs are drawn from at iteration ``it``: ``[lo, upper(it))``.

    MTT and FTD: ``[0, max_start_epoch)`` throughout. DATM with sequential generation: the upper bound
    grows linearly from ``current_max`` to ``max_start`` over the first ``expansion_end`` iterations
    (DATM's ``Sequential_Generation``).
    """

    lo: int
    max_start: int
    current_max: int | None = None
    expansion_end: int = 1

    def bounds(self, it: int) -> tuple[int, int]:
        if self.current_max is None:
            return self.lo, self.max_start
        grown = self.current_max + math.floor((self.max_start - self.current_max) * it / max(1, self.expansion_end))
        return self.lo, min(self.max_start, grown)


@dataclasses.dataclass
class LoopOptions:
    """What distinguishes the three methods inside the shared loop.

    Attributes:
        window: the start-epoch window.
        ema_decay: FTD's exponential moving average of the images (the EMA images are the set).
        learn_labels: DATM's learnable soft labels (logits trained with ``lr_y``, momentum ``momentum_y``).
        lr_y: the label logits' SGD learning rate.
        momentum_y: the label logits' SGD momentum.
        threshold: DATM's loss gate: iterations whose loss exceeds it update nothing.
        init: ``real``/``noise`` (:func:`init_synthetic`) or DATM's ``samples_predicted_correctly``.
    """

    window: StartWindow
    ema_decay: float | None = None
    learn_labels: bool = False
    lr_y: float = 0.0
    momentum_y: float = 0.9
    threshold: float | None = None
    init: str = "real"


def soft_cross_entropy(logits: torch.Tensor, target_logits: torch.Tensor) -> torch.Tensor:
    """``mean_i sum_c -softmax(target)_ic log softmax(logits)_ic`` (DATM's inner loss, temperature 1)."""
    return -(F.softmax(target_logits, dim=1) * F.log_softmax(logits, dim=1)).sum(dim=1).mean()


def run_trajectory_matching(
    method: DistillationMethod, data: DataBundle, ipc: int, ctx: Context, options: LoopOptions
) -> DistilledSet:
    """Distill ``data`` by trajectory matching (module docstring) with the method's parameters.

    Returns:
        ``ipc`` samples per class, class-major: hard labels (``mtt``, ``ftd``) or DATM's soft labels
        (``softmax`` of the learned logits, which also go to ``extras["label_logits"]``). ``extras["syn_lr"]``
        holds the learned step size; ``meta`` the buffer's reference (with the seconds this trial spent
        building it), the loss curve, the start epochs drawn, and how the gradient was computed.
    """
    from distillbench.methods._experts import get_buffer

    p = method.params
    info = data.info
    name = method.name
    device = torch.device(ctx.device)
    gen = ctx.generator
    buffer = get_buffer(data, method.expert_recipe(info), results=ctx.results, device=device, progress=ctx.report)
    student = FlatModel(
        build_network(p.net, info, torch_generator(derive_seed(ctx.seed, name, "student"))).to(device),
        buffer.param_shapes,
    )
    num_classes = info.num_classes
    labels = torch.arange(num_classes, device=device).repeat_interleave(ipc)

    x_train = data.train.x.to(device=device, dtype=torch.float32)
    if options.init == "samples_predicted_correctly":
        syn, label_logits, meta = _init_from_experts(data, ipc, buffer, student, x_train, gen, device, name)
    else:
        syn, meta = init_synthetic(data, ipc, options.init, gen, name, x_train=x_train)
        # DATM with real images: labels are the first expert's final logits (its cfg's pix_init: real).
        label_logits = _expert_logits(buffer, student, [0], syn)[0] if options.learn_labels else None
    syn.requires_grad_(True)
    syn_lr = torch.tensor(float(p.lr_teacher), device=device, requires_grad=True)
    opt_img = torch.optim.SGD([syn], lr=p.lr_img, momentum=p.momentum)
    opt_lr = torch.optim.SGD([syn_lr], lr=p.lr_lr, momentum=p.momentum)
    learned: list[torch.Tensor] = [syn]
    state: dict[str, Any] = {"syn": syn, "syn_lr": syn_lr, "opt_img": opt_img, "opt_lr": opt_lr}
    if label_logits is not None:
        label_logits = label_logits.clone().requires_grad_(True)
        learned.append(label_logits)
        state["label_logits"] = label_logits
        state["opt_y"] = torch.optim.SGD([label_logits], lr=options.lr_y, momentum=options.momentum_y)
    ema = syn.detach().clone() if options.ema_decay is not None else None
    if ema is not None:
        state["ema"] = ema
    start_counts = torch.zeros(p.train_epochs, dtype=torch.int64)
    skipped = torch.zeros((), dtype=torch.int64)

    aug = DSA(method.strategy(info))
    n = syn.shape[0]
    batch = min(p.batch_syn or n, n)
    tracker = LossTracker(
        name,
        p.iterations,
        ctx,
        f"(lr_img={p.lr_img}, lr_lr={p.lr_lr}); lower the learning rates",
        # The set as it would be returned now (the EMA images and DATM's soft labels where they apply).
        current=lambda: (
            ema if ema is not None else syn,
            F.softmax(label_logits.detach(), dim=1) if label_logits is not None else labels,
        ),
    )
    start = ctx.checkpoint.resume(**state, gen=gen, tracker=tracker, start_counts=start_counts, skipped=skipped)
    step_fn = _tesla_gradients if p.tesla else _unrolled_gradients
    for it in range(start, p.iterations):
        expert = int(torch.randint(buffer.num_experts, (1,), generator=gen, device=gen.device))
        lo, hi = options.window.bounds(it)
        s = int(torch.randint(lo, hi, (1,), generator=gen, device=gen.device))
        start_counts[s] += 1
        trajectory = buffer.trajectory(expert)
        theta0 = trajectory[s].to(device)
        target = trajectory[s + p.expert_epochs].to(device)
        batches = _batches(n, batch, p.syn_steps, gen, device)
        target_fn = (
            (lambda idx: label_logits[idx]) if label_logits is not None else (lambda idx: labels[idx])  # noqa: B023
        )
        loss, grads = step_fn(student, theta0, target, syn, syn_lr, learned, target_fn, batches, aug, gen)

        gated = options.threshold is not None and float(loss) > options.threshold
        if gated:
            skipped += 1  # DATM: a segment too far to match updates nothing
        else:
            for opt in (opt_img, opt_lr, state.get("opt_y")):
                if opt is not None:
                    opt.zero_grad(set_to_none=True)
            syn.grad = grads[0]
            syn_lr.grad = grads[1]
            if label_logits is not None:
                label_logits.grad = grads[2]
            opt_img.step()
            opt_lr.step()
            if label_logits is not None:
                state["opt_y"].step()
            if ema is not None:
                with torch.no_grad():
                    ema.mul_(options.ema_decay).add_(syn.detach(), alpha=1.0 - options.ema_decay)
        if tracker.step(loss.detach(), note=f"syn_lr {float(syn_lr.detach()):.4g}"):
            break
        ctx.checkpoint.maybe_save(it + 1, **state, gen=gen, tracker=tracker, start_counts=start_counts, skipped=skipped)

    meta.update(tracker.meta())
    meta.update(
        {
            "dsa_strategy": method.strategy(info),
            "buffer": {**buffer.reference(), "build_seconds": buffer.build_seconds},
            "syn_lr": float(syn_lr.detach()),
            "start_epoch_counts": start_counts.tolist(),
            "gradient": "tesla (approximate: cross-step terms dropped)" if p.tesla else "full backpropagation",
            "batch_syn": batch,
        }
    )
    if options.threshold is not None:
        meta["iterations_skipped_by_threshold"] = int(skipped)
    x = (ema if ema is not None else syn).detach().cpu()
    if ema is not None:
        meta["ema_decay"] = options.ema_decay
    extras = {"syn_lr": syn_lr.detach().cpu().reshape(())}
    if label_logits is not None:
        logits = label_logits.detach().cpu()
        extras["label_logits"] = logits
        meta["image_class"] = labels.cpu().tolist()
        return DistilledSet(x=x, y=F.softmax(logits, dim=1), extras=extras, meta=meta)
    return DistilledSet(x=x, y=labels.cpu(), extras=extras, meta=meta)


def _batches(n: int, batch: int, steps: int, gen: torch.Generator, device: torch.device) -> list[torch.Tensor]:
    """Indices of the synthetic samples of each student step: chunks of a permutation, a new one when used up."""
    if batch >= n:
        whole = torch.arange(n, device=device)
        return [whole] * steps  # full batch: the order does not matter (the loss is a mean)
    out: list[torch.Tensor] = []
    chunks: list[torch.Tensor] = []
    for _ in range(steps):
        if not chunks:
            chunks = list(torch.randperm(n, generator=gen, device=gen.device).to(device).split(batch))
        out.append(chunks.pop(0))
    return out


def _inner_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Cross-entropy to hard labels, or DATM's soft cross-entropy to label logits."""
    return soft_cross_entropy(logits, target) if target.dim() == 2 else F.cross_entropy(logits, target)


def _unrolled_gradients(
    student: FlatModel,
    theta0: torch.Tensor,
    target: torch.Tensor,
    syn: torch.Tensor,
    syn_lr: torch.Tensor,
    learned: list[torch.Tensor],
    target_fn: Callable[[torch.Tensor], torch.Tensor],
    batches: list[torch.Tensor],
    aug: DSA,
    gen: torch.Generator,
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """MTT's loss and its exact gradients by backpropagation through all ``syn_steps`` student steps.

    Returns:
        The loss and the gradients of ``[*learned[:1], syn_lr, *learned[1:]]`` (images, step size, labels).
    """
    theta = theta0.detach().requires_grad_(True)
    for idx in batches:
        x = syn[idx]
        if aug:
            x = aug.per_sample(x, gen)
        ce = _inner_loss(student(theta, x), target_fn(idx))
        (g,) = torch.autograd.grad(ce, theta, create_graph=True)
        theta = theta - syn_lr * g
    loss = ((theta - target) ** 2).sum() / ((theta0 - target) ** 2).sum()
    grads = torch.autograd.grad(loss, [learned[0], syn_lr, *learned[1:]])
    return loss.detach(), list(grads)


def _tesla_gradients(
    student: FlatModel,
    theta0: torch.Tensor,
    target: torch.Tensor,
    syn: torch.Tensor,
    syn_lr: torch.Tensor,
    learned: list[torch.Tensor],
    target_fn: Callable[[torch.Tensor], torch.Tensor],
    batches: list[torch.Tensor],
    aug: DSA,
    gen: torch.Generator,
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """TESLA's two-pass gradient: one step's graph at a time (module docstring); same loss as the unrolled one."""
    lr = syn_lr.detach()
    thetas, states = [], []
    theta = theta0.detach()
    total = torch.zeros_like(theta)
    for idx in batches:  # pass 1: no graph kept, only what pass 2 needs to rebuild each step
        states.append(gen.get_state() if aug else None)
        x = syn.detach()[idx]
        if aug:
            x = aug.per_sample(x, gen)
        leaf = theta.requires_grad_(True)
        (g,) = torch.autograd.grad(_inner_loss(student(leaf, x), target_fn(idx).detach()), leaf)
        thetas.append(theta.detach())
        total += g
        theta = (theta - lr * g).detach()
    scale = ((theta0 - target) ** 2).sum()
    # theta_N = theta_0 - syn_lr * G: the loss in closed form gives the step size's gradient directly.
    residual = theta0 - syn_lr * total - target
    loss = (residual**2).sum() / scale
    (grad_lr,) = torch.autograd.grad(loss, syn_lr)
    d_total = (-2.0 * lr * residual / scale).detach()  # d loss / d G
    grads = [torch.zeros_like(t) for t in learned]
    for idx, theta_i, saved in zip(batches, thetas, states, strict=True):  # pass 2: one step's graph at a time
        x = syn[idx]
        if aug:
            replay = torch.Generator(device=gen.device)
            replay.set_state(saved)
            x = aug.per_sample(x, replay)
        leaf = theta_i.requires_grad_(True)
        (g,) = torch.autograd.grad(_inner_loss(student(leaf, x), target_fn(idx)), leaf, create_graph=True)
        step = torch.autograd.grad((g * d_total).sum(), learned, allow_unused=True)
        for acc, part in zip(grads, step, strict=True):
            if part is not None:
                acc += part
    return loss.detach(), [grads[0], grad_lr, *grads[1:]]


def _expert_logits(
    buffer: ExpertBuffer, student: FlatModel, experts: list[int], x: torch.Tensor, chunk: int = 512
) -> torch.Tensor:
    """``[len(experts), n, C]`` logits of ``x`` under each expert's final snapshot (no graph)."""
    out = []
    with torch.no_grad():
        for e in experts:
            final = buffer.trajectory(e)[-1].to(x.device)
            out.append(torch.cat([student(final, x[i : i + chunk]) for i in range(0, x.shape[0], chunk)]))
    return torch.stack(out)


def _init_from_experts(
    data: DataBundle,
    ipc: int,
    buffer: ExpertBuffer,
    student: FlatModel,
    x_train: torch.Tensor,
    gen: torch.Generator,
    device: torch.device,
    method: str,
) -> tuple[torch.Tensor, torch.Tensor, dict[str, Any]]:
    """DATM's ``samples_predicted_correctly`` initialisation (``method``: the caller's name, for messages).

    Images: for each class, random real images that the first expert's final snapshot classifies
    correctly (a class with too few such images is filled with others, recorded). Labels: each image's
    logits averaged over the experts (final snapshots) that classify it correctly (all experts when none
    does).
    """
    chosen: list[torch.Tensor] = []
    filled: dict[str, int] = {}
    for c, members in enumerate(data.class_indices(required_by=method)):
        order = members[torch.randperm(len(members), generator=gen, device=gen.device).cpu()]
        pred = _expert_logits(buffer, student, [0], x_train[order.to(device)])[0].argmax(1).cpu()
        right, wrong = order[pred == c], order[pred != c]
        picked = torch.cat([right, wrong])[:ipc]
        if len(picked) < ipc:  # a class smaller than ipc: repeat its images (as init_synthetic does)
            extra = torch.randint(len(picked), (ipc - len(picked),), generator=gen, device=gen.device).cpu()
            picked = torch.cat([picked, picked[extra]])
        if len(right) < ipc:
            filled[str(c)] = int(len(right))
        chosen.append(picked)
    idx = torch.cat(chosen)
    syn = x_train[idx.to(device)].clone()
    labels = torch.arange(data.info.num_classes, device=device).repeat_interleave(ipc)
    logits = _expert_logits(buffer, student, list(range(buffer.num_experts)), syn)  # [E, n, C]
    correct = (logits.argmax(2) == labels).float()  # [E, n]
    weight = torch.where(correct.sum(0, keepdim=True) > 0, correct, torch.ones_like(correct))
    mean_logits = (logits * weight.unsqueeze(2)).sum(0) / weight.sum(0).unsqueeze(1)
    meta: dict[str, Any] = {"init": "samples_predicted_correctly", "init_indices": idx.tolist()}
    if filled:
        meta["classes_short_of_correct"] = filled  # class -> correctly classified images found
    return syn, mean_logits, meta
