"""``dd``: Dataset Distillation (Wang, Zhu, Torralba, Efros 2018; arXiv 1811.10959), and soft-label DD.

DD learns synthetic samples *and* the step sizes of a short training run on them, so that a network
trained by those few gradient steps does well on real data (METHODS.md section 1):

1. Learned state: ``S = distill_steps`` data steps of ``m`` samples each, initialised N(0, 1) in the
   normalised input space; ``T = distill_steps * distill_epochs`` step sizes, one per inner step,
   stored raw and mapped through softplus, the raw value initialised to softplus^-1(``distill_lr``).
2. Every outer iteration (one real batch of ``batch_size``): for each of ``n_nets`` networks, start
   from its initial weights ``w0``, take the T inner steps ``w <- w - softplus(raw[t]) * grad_w
   loss(f(x_s; w), y_s)`` with ``s = t mod S``, then score ``w_T`` on the real batch with
   cross-entropy. Backpropagate *exactly* through all T steps (autograd with ``create_graph=True``;
   the official code does the same backward pass by hand with Hessian-vector products) and update the
   samples and raw step sizes with Adam (``lr``, ``betas``), the gradient averaged over the networks.
   The Adam rate is multiplied by ``decay_factor`` every ``decay_epochs`` epochs over the real data.
3. ``init="fixed"`` (DD's ``known_init``): one initialisation ``w0``, drawn once from a generator
   seeded with ``derive_seed(ctx.seed, "dd", "init")`` and recorded as ``meta["init_seed"]``, so the
   replay protocol rebuilds exactly that network. ``init="random"`` (``unknown_init``): every network
   of every iteration is fresh, from ``derive_seed(ctx.seed, "dd", "net", iteration, j)``.

Soft labels (Sucholutsky & Schonlau; ``dd[soft_labels=true]``; METHODS.md section 2): each sample
also gets an unconstrained label vector of length C, initialised one-hot and learned by the same Adam
at the same rate. The inner loss becomes ``-(labels * log_softmax(logits)).sum(1).mean()`` with the
labels used as they are (not normalised; entries may go negative: METHODS.md pitfall 2); the outer,
real-data loss stays hard-label cross-entropy. ``num_samples`` and ``init_labels`` give fewer samples
than classes (the paper's 5 images for 10 MNIST classes: ``num_samples=5,init_labels=0/1/2/3/4``).

How ``ipc`` maps to the data steps: ``ipc`` counts images per class over *all* steps, so
``ipc = distill_steps * k`` with ``k`` the DD code's ``distilled_images_per_class_per_step``; ``ipc``
must be a multiple of ``distill_steps``. The code default (10 steps, k = 1) is ``ipc=10``; the fixed-init
MNIST recipe of the README (1 step of 10 images, 3 epochs) is ``dd[distill_steps=1]`` at ``ipc=1``.
With ``num_samples`` (soft labels only) the set has ``num_samples`` samples in total, at most
``ipc * C`` and a multiple of ``distill_steps``, ``num_samples / distill_steps`` per step.

Order of the samples: step by step (``extras["step_of_sample"]`` says which step each belongs to).
Within a step, hard-label runs are class-major (k copies of class 0, then class 1, ..., as in the DD
code) and soft-label runs class-interleaved, the initial classes ``init_labels`` (default 0, 1, ...,
C-1, truncated to the step size) repeated (``[c1..cM]`` k times, as in the SLDD code).

Output: ``x`` ``[n, *shape]``; ``y`` hard int64 ``[n]`` or the learned label vectors ``[n, C]``;
extras ``lrs`` (softplus of the raw step sizes, ``[T]``) and ``step_of_sample`` (``[n]`` int64);
meta ``net``, ``init``, ``init_seed`` (``None`` for random init), ``distill_steps``,
``distill_epochs``, ``soft_labels``, ``init_labels`` (the initial classes of one step), the loss curve
and the iteration counts. ``dd-replay-v1`` replays the learned steps; the training protocols
(``convnet-v1``, ``quick-v1``) train on ``x``/``y`` like any other set.

Code defaults versus documents (METHODS.md "Pitfalls" 1): ``distill_lr`` defaults to 0.02, the code's
``base_options.py`` value; ``docs/advanced.md`` says 0.001 and the README CIFAR-10 command passes
0.001 (the SLDD MNIST runs use 0.01). ``n_nets`` defaults to 1 as in the code (the docs claim 4).
METHODS.md does not record the code's default ``train_nets_type``; ``init`` defaults to ``fixed``,
the setting of the headline numbers. Real CIFAR batches were augmented during distillation in the
DD code (pad 4 reflect, random crop, flip); ``real_augment=auto`` does that for ``cifar*`` datasets.
Binary tasks use two logits with cross-entropy (the DD code used one logit with BCE).

Text (METHODS.md section 2, TDD): on a text dataset the samples live in embedding space, each a
``[max_len, D]`` tensor initialised N(0, 1) (D the dataset's word-vector width), and the network
(``textcnn`` by default: ``net=auto`` is ``lenet`` on images and ``textcnn`` on text; or ``birnn``,
``bilstm``) consumes them directly instead of looking up token ids;
the real batches stay token ids. ``distillbench show SET_FILE`` prints the nearest vocabulary words.

Implementation notes: every random draw comes from ``ctx.generator`` (initial samples, real batch
order, real-batch augmentation) or from generators derived from ``ctx.seed`` (networks). An epoch is
``len(train) // batch_size`` real batches (the incomplete last batch is dropped, so every outer step
sees ``batch_size`` real images; a train split smaller than ``batch_size`` is one batch). The loss is
checked for NaN/inf once per progress window (about 1% of the iterations), as in ``dm``.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, ClassVar, Literal

import torch
import torch.nn.functional as F
from torch.func import functional_call

from distillbench.harness.errors import ConfigError, DivergedError
from distillbench.harness.networks import resolve_network
from distillbench.harness.params import resolve_auto
from distillbench.harness.plugins import register_method
from distillbench.harness.replay import unroll
from distillbench.harness.seeding import derive_seed, torch_generator
from distillbench.harness.types import Context, DataBundle, DatasetInfo, DistilledSet
from distillbench.methods._loop import LossTracker
from distillbench.methods.base import DistillationMethod


@dataclasses.dataclass(frozen=True)
class DDParams:
    """DD / soft-label DD hyperparameters; defaults are the DD code's (``base_options.py``)."""

    epochs: int = dataclasses.field(default=400, metadata={"help": "passes over the real training data"})
    decay_epochs: int = dataclasses.field(default=40, metadata={"help": "epochs between Adam-rate decays"})
    decay_factor: float = dataclasses.field(default=0.5, metadata={"help": "Adam-rate multiplier at each decay"})
    lr: float = dataclasses.field(default=0.01, metadata={"help": "Adam rate of samples, step sizes and labels"})
    betas: tuple[float, ...] = dataclasses.field(default=(0.5, 0.999), metadata={"help": "Adam betas (two values)"})
    distill_lr: float = dataclasses.field(
        default=0.02, metadata={"help": "initial inner step size (code 0.02; docs 0.001; SLDD MNIST 0.01)"}
    )
    distill_steps: int = dataclasses.field(
        default=10, metadata={"help": "S, distinct data steps; ipc must be a multiple of it"}
    )
    distill_epochs: int = dataclasses.field(
        default=3, metadata={"help": "passes over the S data steps; T = S * distill_epochs inner steps"}
    )
    batch_size: int = dataclasses.field(default=1024, metadata={"help": "real images per outer iteration"})
    n_nets: int = dataclasses.field(default=1, metadata={"help": "networks per outer iteration (gradient averaged)"})
    init: Literal["fixed", "random"] = dataclasses.field(
        default="fixed", metadata={"help": "fixed: one initial network (known_init); random: fresh ones (unknown_init)"}
    )
    # "auto" resolves per modality before ids are hashed (harness/params.py), so image trials keep the
    # ids they had when lenet was the literal default.
    net: str = dataclasses.field(
        default="auto",
        metadata={
            "help": "network spec trained by the inner steps; auto = lenet on images, textcnn on text",
            "auto": {"image": "lenet", "text": "textcnn"},
        },
    )
    soft_labels: bool = dataclasses.field(
        default=False, metadata={"help": "learn one label vector per sample (Sucholutsky & Schonlau)"}
    )
    num_samples: int | None = dataclasses.field(
        default=None, metadata={"help": "total samples (soft labels only; <= ipc * classes); none = ipc * classes"}
    )
    init_labels: tuple[int, ...] | None = dataclasses.field(
        default=None, metadata={"help": "initial classes within a step, repeated (soft labels only); none = 0..C-1"}
    )
    real_augment: Literal["auto", "none", "crop_flip"] = dataclasses.field(
        default="auto", metadata={"help": "real-batch augmentation; auto = crop_flip on cifar* datasets (DD code)"}
    )

    def __post_init__(self) -> None:
        for name in ("epochs", "decay_epochs", "distill_steps", "distill_epochs", "batch_size", "n_nets"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        if not 0.0 < self.decay_factor <= 1.0:
            raise ValueError(f"decay_factor must be in (0, 1], got {self.decay_factor}")
        if not self.lr > 0:
            raise ValueError(f"lr must be positive, got {self.lr}")
        if not self.distill_lr > 0:
            raise ValueError(f"distill_lr must be positive (it is mapped through softplus^-1), got {self.distill_lr}")
        if len(self.betas) != 2 or not all(0.0 <= b < 1.0 for b in self.betas):
            raise ValueError(f"betas must be two values in [0, 1), e.g. betas=0.5/0.999; got {self.betas}")
        if not self.soft_labels and (self.num_samples is not None or self.init_labels is not None):
            raise ValueError(
                "num_samples and init_labels choose the initial classes of learnable labels; they need soft_labels=true"
            )
        if self.num_samples is not None and self.num_samples < 1:
            raise ValueError(f"num_samples must be at least 1, got {self.num_samples}")
        if self.init_labels is not None and len(self.init_labels) == 0:
            raise ValueError("init_labels must name at least one class (or be none)")


@dataclasses.dataclass(frozen=True)
class _Layout:
    """How the samples are arranged: ``steps`` data steps of ``per_step`` samples with these initial classes."""

    steps: int
    per_step: int
    classes: tuple[int, ...]  # initial class of each sample of one step (the same in every step)


def softplus_inverse(value: float) -> float:
    """The raw value whose softplus is ``value`` (> 0): ``log(exp(value) - 1)``.

    Example:
        >>> round(float(torch.nn.functional.softplus(torch.tensor(softplus_inverse(0.02)))), 6)
        0.02
    """
    if value > 20.0:  # expm1 would overflow for huge values; log(exp(v) - 1) = v + log(1 - exp(-v))
        return value + math.log1p(-math.exp(-value))
    return math.log(math.expm1(value))


@register_method("dd")
class DatasetDistillation(DistillationMethod):
    """Dataset Distillation: learn samples and inner step sizes by backpropagating through training."""

    name = "dd"
    Params = DDParams
    modalities: ClassVar[frozenset[str]] = frozenset({"image", "text"})
    accepts_weights = False
    # The sets carry learned inner steps (extras "lrs", "step_of_sample"), so replay protocols
    # (engine "replay", dd-replay-v1) can score them; trial validation may check this flag.
    replayable: ClassVar[bool] = True
    test_config: ClassVar[dict[str, Any]] = {
        "epochs": 2,
        "batch_size": 256,
        "distill_steps": 1,
        "distill_epochs": 2,
    }

    def num_samples(self, info: DatasetInfo, ipc: int) -> int:
        """``num_samples`` if set, else ``ipc * num_classes``."""
        return self.params.num_samples if self.params.num_samples is not None else ipc * info.num_classes

    def layout(self, info: DatasetInfo, ipc: int) -> _Layout:
        """The data steps and the initial classes of one step (see the module docstring).

        Raises:
            ConfigError: ``ipc`` / ``num_samples`` do not split into the data steps, ``num_samples``
                exceeds ``ipc * classes``, or ``init_labels`` has the wrong length or unknown classes.
        """
        p = self.params
        num_classes = info.num_classes
        steps = p.distill_steps
        if p.num_samples is None:
            if ipc % steps:
                fits = [d for d in range(1, ipc + 1) if ipc % d == 0]
                raise ConfigError(
                    f"method 'dd': ipc {ipc} is not a multiple of distill_steps {steps}; ipc counts images per "
                    f"class over all data steps (ipc = distill_steps x images per class per step). Use "
                    f"distill_steps in {fits} (distill_steps=1 is the fixed-init recipe) or an ipc that is a "
                    f"multiple of {steps}"
                )
            total = ipc * num_classes
        else:
            total = p.num_samples
            if total > ipc * num_classes:
                raise ConfigError(
                    f"method 'dd': num_samples {total} exceeds classes x ipc = {num_classes} x {ipc} = "
                    f"{ipc * num_classes}; lower num_samples or raise ipc"
                )
            if total % steps:
                raise ConfigError(
                    f"method 'dd': num_samples {total} does not split into distill_steps {steps} equal steps; "
                    "use a multiple of distill_steps"
                )
        per_step = total // steps
        if not p.soft_labels:
            k = per_step // num_classes
            classes = tuple(c for c in range(num_classes) for _ in range(k))  # class-major, as the DD code
        else:
            cycle = p.init_labels if p.init_labels is not None else tuple(c % num_classes for c in range(per_step))
            bad = [c for c in cycle if not 0 <= c < num_classes]
            if bad:
                raise ConfigError(
                    f"method 'dd': init_labels {list(cycle)} has classes {bad} outside 0..{num_classes - 1} "
                    f"of {info.name!r}"
                )
            if len(cycle) > per_step or per_step % len(cycle):
                raise ConfigError(
                    f"method 'dd': init_labels has {len(cycle)} classes, but each of the {steps} data steps holds "
                    f"{per_step} samples; give {per_step} classes (or a divisor of {per_step}: the list repeats)"
                )
            classes = tuple(cycle[i % len(cycle)] for i in range(per_step))  # class-interleaved, as the SLDD code
        return _Layout(steps=steps, per_step=per_step, classes=classes)

    def network(self, info: DatasetInfo) -> str:
        """The network spec trained on ``info``: ``net``, with ``auto`` resolved for the dataset's modality."""
        return resolve_auto(self.params, info.modality).net

    def validate(self, info: DatasetInfo, ipc: int) -> None:
        super().validate(info, ipc)
        resolve_network(self.network(info)).validate(info)
        self.layout(info, ipc)

    def distill(self, data: DataBundle, ipc: int, ctx: Context) -> DistilledSet:
        p = self.params
        info = data.info
        num_classes = info.num_classes
        layout = self.layout(info, ipc)
        steps, per_step = layout.steps, layout.per_step
        inner_steps = steps * p.distill_epochs
        device = torch.device(ctx.device)
        gen = ctx.generator
        net = self.network(info)
        factory = resolve_network(net)
        x_train = data.train.x.to(device=device, dtype=torch.float32)
        y_train = data.train.y.to(device=device, dtype=torch.long)
        n_train = len(data.train)
        if n_train == 0:
            raise ConfigError(f"method 'dd' needs real training samples; {info.name!r} has none")
        augment = (
            p.real_augment if p.real_augment != "auto" else ("crop_flip" if info.name.startswith("cifar") else "none")
        )

        # Learned state: samples [S, m, *shape], raw step sizes [T], label vectors [S, m, C] (soft only).
        shape = sample_shape(info)
        images = torch.randn((steps, per_step, *shape), generator=gen, device=gen.device).to(device)
        images.requires_grad_(True)
        raw_lrs = torch.full((inner_steps,), softplus_inverse(p.distill_lr), device=device, requires_grad=True)
        init_classes = torch.tensor(layout.classes, device=device).expand(steps, per_step)
        leaves = [images, raw_lrs]
        if p.soft_labels:
            labels = F.one_hot(init_classes, num_classes).to(torch.float32).clone().requires_grad_(True)
            leaves.append(labels)
        else:
            labels = init_classes.clone()
        opt = torch.optim.Adam(leaves, lr=p.lr, betas=(p.betas[0], p.betas[1]))
        sched = torch.optim.lr_scheduler.StepLR(opt, step_size=p.decay_epochs, gamma=p.decay_factor)

        init_seed: int | None = None
        fixed: tuple[torch.nn.Module, dict[str, torch.Tensor]] | None = None
        if p.init == "fixed":
            init_seed = derive_seed(ctx.seed, "dd", "init")
            module = factory.build(info, torch_generator(init_seed)).to(device)
            # Leaves that require grad (the inner gradients are taken with respect to them) but are
            # never updated: the fixed initialisation is not learned.
            fixed = (module, {k: v.detach().clone().requires_grad_(True) for k, v in module.named_parameters()})

        batch = min(p.batch_size, n_train)
        per_epoch = max(1, n_train // batch)
        total = p.epochs * per_epoch
        tracker = LossTracker(
            "dd",
            total,
            ctx,
            f"(lr={p.lr}, distill_lr={p.distill_lr}); lower lr or distill_lr",
            current=lambda: (
                images.detach().reshape(steps * per_step, *shape),
                labels.detach().reshape(steps * per_step, num_classes) if p.soft_labels else labels.reshape(-1),
            ),
        )
        stopped_early = False

        state = {"images": images, "raw_lrs": raw_lrs, "labels": labels, "opt": opt, "sched": sched, "gen": gen}
        for epoch in range(ctx.checkpoint.resume(**state, tracker=tracker), p.epochs):
            order = torch.randperm(n_train, generator=gen, device=gen.device).to(device)
            for b in range(per_epoch):
                idx = order[b * batch : (b + 1) * batch]
                x_real, y_real = x_train[idx], y_train[idx]
                if augment == "crop_flip":
                    x_real = crop_flip(x_real, gen)
                xs = list(images.unbind(0))
                targets = list(labels.unbind(0))
                lrs = F.softplus(raw_lrs)
                loss = torch.zeros((), device=device)
                for j in range(p.n_nets):
                    if fixed is not None:
                        module, w0 = fixed
                    else:
                        module = factory.build(
                            info, torch_generator(derive_seed(ctx.seed, "dd", "net", tracker.done, j))
                        )
                        module = module.to(device)
                        w0 = dict(module.named_parameters())
                    w_final = unroll(module, w0, xs, targets, lrs, soft=p.soft_labels, create_graph=True)
                    module.eval()  # as the DD code: the real-data loss is taken in eval mode
                    loss = loss + F.cross_entropy(functional_call(module, w_final, (x_real,)), y_real) / p.n_nets
                # Gradients only for the learned leaves: the initial weights (leaves too) need none.
                grads = torch.autograd.grad(loss, leaves)
                for leaf, grad in zip(leaves, grads, strict=True):
                    leaf.grad = grad
                opt.step()
                if tracker.step(loss, note=f"epoch {epoch + 1}"):
                    stopped_early = True
                    break
            sched.step()
            if stopped_early:
                break
            ctx.checkpoint.maybe_save(epoch + 1, **state, tracker=tracker)  # at epoch ends: no mid-epoch order

        x_out = images.detach().reshape(steps * per_step, *shape).cpu()
        if not bool(torch.isfinite(x_out).all()):
            raise DivergedError("dd diverged: the distilled samples contain NaN or inf; lower lr")
        if p.soft_labels:
            y_out = labels.detach().reshape(steps * per_step, num_classes).cpu()
        else:
            y_out = labels.reshape(-1).to(torch.int64).cpu()
        return DistilledSet(
            x=x_out,
            y=y_out,
            extras={
                "lrs": F.softplus(raw_lrs.detach()).cpu(),
                "step_of_sample": torch.arange(steps).repeat_interleave(per_step),
            },
            meta={
                "net": net,
                "init": p.init,
                "init_seed": init_seed,
                "distill_steps": steps,
                "distill_epochs": p.distill_epochs,
                "inner_steps": inner_steps,
                "samples_per_step": per_step,
                "soft_labels": p.soft_labels,
                "init_labels": list(layout.classes),
                "label_order": "class-interleaved" if p.soft_labels else "class-major",
                "distill_lr": p.distill_lr,
                "real_augment": augment,
                "epochs": p.epochs,
                **tracker.meta(),
            },
        )


def sample_shape(info: DatasetInfo) -> tuple[int, ...]:
    """Shape of one learned sample: ``info.shape``, or ``(max_len, D)`` for text (embedding space).

    Raises:
        ConfigError: a text dataset whose ``info`` carries no word vectors (not loaded).
    """
    if info.modality != "text":
        return tuple(info.shape)
    embeddings = getattr(info, "embeddings", None)
    if embeddings is None:
        raise ConfigError(f"method 'dd' distils text in embedding space; {info.name!r} carries no word vectors")
    return (*info.shape, int(embeddings.shape[1]))


def crop_flip(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Pad 4 (reflect), crop back to the input size at a random offset, flip half: one draw per image.

    This is the real-batch augmentation of the DD code on CIFAR (METHODS.md pitfall 1).
    """
    n, _, h, w = x.shape
    padded = F.pad(x, (4, 4, 4, 4), mode="reflect")
    dy = torch.randint(0, 9, (n,), generator=gen, device=gen.device).to(x.device)
    dx = torch.randint(0, 9, (n,), generator=gen, device=gen.device).to(x.device)
    flip = (torch.rand(n, generator=gen, device=gen.device) < 0.5).to(x.device)
    rows = (dy[:, None] + torch.arange(h, device=x.device)[None]).view(n, 1, h, 1)
    cols = (dx[:, None] + torch.arange(w, device=x.device)[None]).view(n, 1, 1, w)
    # Mirror the column index of flipped images instead of flipping a copy.
    cols = torch.where(flip.view(n, 1, 1, 1), dx.view(n, 1, 1, 1) + (w - 1) - (cols - dx.view(n, 1, 1, 1)), cols)
    channel = torch.arange(x.shape[1], device=x.device).view(1, -1, 1, 1)
    return padded[torch.arange(n, device=x.device).view(n, 1, 1, 1), channel, rows, cols]
