"""The gradient-matching loop shared by ``dc`` and ``dsa`` (Zhao et al. ICLR 2021; Zhao & Bilen ICML 2021).

Synthetic images are learned so that, on networks met along a training trajectory, the gradient of
the classification loss on a class's synthetic images matches the gradient on its real images
(METHODS.md section 3). One *iteration* of :func:`run_gradient_matching`:

1. Build a fresh network (parameters from a generator derived from ``ctx.seed`` and the iteration)
   and a plain SGD optimiser on it (``lr_net``).
2. Repeat ``outer_loop`` times:

   a. Networks with batch norm: set the BN statistics from ``16`` real images per class and freeze
      them (BN layers in eval mode) for the matching, so every per-class pass is normalised alike.
   b. For each class ``c``: sample ``batch_real`` real images of ``c``; with DSA, augment them and
      the class's synthetic images with one shared draw (Siamese); compute the real gradient of the
      cross-entropy (detached: a fixed target) and the synthetic gradient (kept in the graph), and
      add their distance :func:`gradient_distance` to the loss. (:func:`match_all_classes` does this
      for all classes at once: one Siamese call, one vmapped real-side pass; see below.)
   c. One SGD(momentum) step on the synthetic images with the summed loss.
   d. Except after the last outer step: train the network ``inner_loop`` epochs on the (detached)
      synthetic set, batches of ``batch_train``, per-sample DSA when augmentation is on.

The ``(outer_loop, inner_loop)`` schedule depends on the IPC (:data:`PAPER_LOOPS`); see
:func:`resolve_loops` for IPCs the paper does not list.

Deviations from the reference code, all deliberate:

* BN statistics are the exact statistics of the 16-per-class real batch (running statistics reset,
  cumulative averaging for that one pass). The reference runs one train-mode forward pass with
  momentum 0.1, which blends the batch statistics into the previous running values.
* Each class's distance is back-propagated on its own (the total loss is a sum over classes, so the
  image gradient is the same), which frees each double-backward graph before the next class instead
  of holding all ``C`` of them; the gradient is taken with respect to the images only, so no
  second-order gradient of the network parameters is computed.
* The real side of all classes is computed together (:func:`real_class_gradients`: ``torch.func``
  ``vmap`` over ``grad``, the class as a batch dimension) on CUDA, and one Siamese call draws every
  class's augmentation; the math per class is the reference's (``tests/test_batched.py``), but the random
  draws come in another order than a per-class loop's. Ragged class batches (a class smaller than
  ``batch_real``) and networks whose samples interact (BN in train mode, dropout) use a per-class loop.
* With ``ctx.weights`` the real-side loss is the weighted cross-entropy, weights normalised within
  the sampled class batch (the host form of KDE reweighting, METHODS.md section 4).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call, grad, vmap

from distillbench.harness import microbatch
from distillbench.harness.augment import DSA
from distillbench.harness.errors import ConfigError
from distillbench.harness.microbatch import samples_independent
from distillbench.harness.networks import resolve_network
from distillbench.harness.seeding import derive_seed, torch_generator
from distillbench.harness.types import Context, DataBundle, DistilledSet
from distillbench.methods._loop import LossTracker
from distillbench.methods._synthetic import init_synthetic

if TYPE_CHECKING:
    from distillbench.methods.dc import DCParams

DIS_METRICS: tuple[str, ...] = ("ours", "mse", "cos")

#: ``ipc -> (outer_loop, inner_loop)`` of the DC reference code (``get_loops``).
PAPER_LOOPS: dict[int, tuple[int, int]] = {
    1: (1, 1),
    10: (10, 50),
    20: (20, 25),
    30: (30, 20),
    40: (40, 15),
    50: (50, 10),
}

#: Real images per class used to set batch-norm statistics before matching (reference ``BNSizePC``).
BN_IMAGES_PER_CLASS = 16

_EPS = 1e-6


def resolve_loops(ipc: int, outer_loop: int | None = None, inner_loop: int | None = None) -> tuple[int, int, str]:
    """The ``(outer_loop, inner_loop)`` schedule for ``ipc`` and where it comes from.

    The paper's table (:data:`PAPER_LOOPS`) covers IPC 1, 10, 20, 30, 40 and 50; the reference code
    refuses any other IPC. Here another IPC takes the entry of the *nearest lower* listed IPC (2-9
    use IPC 1's ``(1, 1)``, 11-19 use IPC 10's ``(10, 50)``, 100 uses IPC 50's ``(50, 10)``): the
    schedule of a listed, smaller budget is known to work, while interpolating would invent one.
    Explicit values override the table one by one.

    Args:
        ipc: images per class, at least 1.
        outer_loop: explicit number of image updates per network, or ``None`` for the table.
        inner_loop: explicit number of network epochs between image updates, or ``None``.

    Returns:
        ``(outer_loop, inner_loop, source)``; ``source`` is ``"paper"``, ``"explicit"`` or e.g.
        ``"nearest lower paper entry (ipc 10)"`` (with ``" + explicit"`` if one value was given).

    Example:
        >>> resolve_loops(10)
        (10, 50, 'paper')
        >>> resolve_loops(15)
        (10, 50, 'nearest lower paper entry (ipc 10)')
    """
    if ipc < 1:
        raise ConfigError(f"ipc must be at least 1, got {ipc}")
    entry = max(k for k in PAPER_LOOPS if k <= ipc)
    table_outer, table_inner = PAPER_LOOPS[entry]
    source = "paper" if entry == ipc else f"nearest lower paper entry (ipc {entry})"
    if outer_loop is not None and inner_loop is not None:
        return outer_loop, inner_loop, "explicit"
    if outer_loop is not None or inner_loop is not None:
        source += " + explicit"
    return (
        outer_loop if outer_loop is not None else table_outer,
        inner_loop if inner_loop is not None else table_inner,
        source,
    )


def layer_distance(g_real: torch.Tensor, g_syn: torch.Tensor) -> torch.Tensor:
    """The DC layer-wise distance of one parameter tensor's gradients ("ours").

    The gradient is reshaped to ``[out, rest]`` (one row per output unit: a conv filter, a linear
    row) and the distance is ``sum_rows (1 - cos(row_real, row_syn))`` with ``eps = 1e-6`` added to
    the product of the norms. One-dimensional tensors (biases, normalisation affine terms) contribute
    ``0``: the reference ignores them, and a bias row of one number would only measure its sign.

    Args:
        g_real: gradient of the real-side loss.
        g_syn: gradient of the synthetic-side loss, same shape.

    Returns:
        A scalar tensor.
    """
    if g_real.dim() <= 1:
        return torch.zeros((), device=g_real.device, dtype=g_real.dtype)
    a = g_real.reshape(g_real.shape[0], -1)
    b = g_syn.reshape(g_syn.shape[0], -1)
    cos = (a * b).sum(dim=-1) / (a.norm(dim=-1) * b.norm(dim=-1) + _EPS)
    return (1.0 - cos).sum()


def gradient_distance(g_real: Sequence[torch.Tensor], g_syn: Sequence[torch.Tensor], metric: str) -> torch.Tensor:
    """Distance between two gradients of a network, one tensor per parameter.

    Args:
        g_real: the real-side gradient (normally detached).
        g_syn: the synthetic-side gradient, same shapes, in the graph when images are optimised.
        metric: ``"ours"`` (sum of :func:`layer_distance` over parameters), ``"mse"`` (squared L2
            distance of the whole flattened gradients) or ``"cos"`` (``1 - cos`` of the whole
            flattened gradients, eps ``1e-6``). ``mse`` and ``cos`` include 1-D parameters.

    Returns:
        A scalar tensor.

    Raises:
        ValueError: an unknown ``metric`` or gradients of different lengths.
    """
    if len(g_real) != len(g_syn):
        raise ValueError(f"gradients of {len(g_real)} and {len(g_syn)} parameters cannot be compared")
    if metric == "ours":
        return torch.stack([layer_distance(r, s) for r, s in zip(g_real, g_syn, strict=True)]).sum()
    if metric not in DIS_METRICS:
        raise ValueError(f"unknown gradient distance {metric!r}; valid: {', '.join(DIS_METRICS)}")
    a = torch.cat([g.reshape(-1) for g in g_real])
    b = torch.cat([g.reshape(-1) for g in g_syn])
    if metric == "mse":
        return ((a - b) ** 2).sum()
    return 1.0 - (a * b).sum() / (a.norm() * b.norm() + _EPS)


def weighted_cross_entropy(logits: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor | None) -> torch.Tensor:
    """Cross-entropy, plain mean or weighted by ``weights`` normalised to sum 1 over the batch.

    A batch whose weights are all zero falls back to the plain mean (as ``dm`` does), so a class
    the weighting silenced in one batch still gives a defined gradient.
    """
    if weights is None:
        return F.cross_entropy(logits, labels)
    per_sample = F.cross_entropy(logits, labels, reduction="none")
    return (cross_entropy_coefficients(weights, len(labels), logits.device) * per_sample).sum()


def class_distance(
    net: nn.Module,
    real: torch.Tensor,
    syn: torch.Tensor,
    label: int,
    metric: str,
    aug: DSA,
    generator: torch.Generator,
    weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """The matching loss of one class: distance of the real and the synthetic gradient.

    Args:
        net: the network (its BN layers, if any, already in the mode the matching wants).
        real: real images of the class ``[n, C, H, W]``.
        syn: synthetic images of the class ``[m, C, H, W]``; the result is differentiable in them.
        label: the class index.
        metric: see :func:`gradient_distance`.
        aug: DSA; when active, ``real`` and ``syn`` get one shared family and parameter draw.
        generator: randomness of the augmentation.
        weights: optional per-sample weights of ``real`` (see :func:`weighted_cross_entropy`).

    Returns:
        A scalar tensor; gradients flow to ``syn`` (not to ``real``).
    """
    if aug:
        # One group: the real and the synthetic batch of this class see the same transformation.
        groups = [torch.zeros(len(real), dtype=torch.int64), torch.zeros(len(syn), dtype=torch.int64)]
        real, syn = aug.siamese([real, syn], groups, 1, generator)
    params = [p for p in net.parameters() if p.requires_grad]
    y_real = torch.full((len(real),), label, dtype=torch.int64, device=real.device)
    y_syn = torch.full((len(syn),), label, dtype=torch.int64, device=syn.device)
    loss_real = weighted_cross_entropy(net(real), y_real, weights)
    # The real gradient is a fixed target: no graph is kept and nothing flows back through it.
    g_real = [g.detach() for g in torch.autograd.grad(loss_real, params)]
    loss_syn = F.cross_entropy(net(syn), y_syn)
    g_syn = torch.autograd.grad(loss_syn, params, create_graph=True)
    return gradient_distance(g_real, g_syn, metric)


def real_class_gradients(
    net: nn.Module,
    real: list[torch.Tensor],
    labels: list[int],
    weights: list[torch.Tensor] | None = None,
    vmapped: bool | None = None,
) -> list[list[torch.Tensor]]:
    """The detached gradient of each class's real cross-entropy, one list of tensors per class.

    When every class batch has the same size and the network treats samples independently
    (:func:`samples_independent`), all classes can go through one vmapped forward and backward
    (``torch.func.vmap`` over ``torch.func.grad``), which is the per-class computation with the class
    as a batch dimension; otherwise one ``torch.autograd.grad`` per class. Either way no graph is kept.
    ``vmapped=None`` (the default) takes the vmapped form on CUDA only: on the CPU the per-class
    weight gradients under vmap become grouped convolutions, measured 2x slower than the loop
    (ConvNet-3 width 128, 10 classes x 64 MNIST images, one thread: 16-19 s against 8-9 s).

    Args:
        net: the network; the gradient is taken with respect to its parameters that require grad.
        real: per class, its (augmented) real images ``[n_c, C, H, W]``.
        labels: per class, its label.
        weights: per class, optional per-sample weights (see :func:`weighted_cross_entropy`).
    """
    named = [(n, p) for n, p in net.named_parameters() if p.requires_grad]
    params = [p for _, p in named]
    sizes = {len(r) for r in real}
    if vmapped is None:
        vmapped = real[0].device.type == "cuda"
    if vmapped and len(sizes) == 1 and samples_independent(net):
        n = sizes.pop()
        frozen = {name: t for name, t in net.named_parameters() if not t.requires_grad}
        frozen |= dict(net.named_buffers())

        def loss(p: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor, w: torch.Tensor | None) -> torch.Tensor:
            return weighted_cross_entropy(functional_call(net, (p, frozen), (x,)), y, w)

        x = torch.stack(real)
        y = torch.tensor(labels, dtype=torch.int64).repeat_interleave(n).view(len(real), n).to(x.device)
        w = torch.stack(weights) if weights is not None else None
        per_class = vmap(grad(loss), in_dims=(None, 0, 0, 0 if w is not None else None))(
            {name: t.detach() for name, t in named}, x, y, w
        )
        return [[per_class[name][c] for name, _ in named] for c in range(len(real))]
    out = []
    for c, (x, label) in enumerate(zip(real, labels, strict=True)):
        y = torch.full((len(x),), label, dtype=torch.int64, device=x.device)
        w = weights[c] if weights is not None else None
        chunk = microbatch.chunk_size(net, x)
        if chunk is None:
            out.append([g.detach() for g in torch.autograd.grad(weighted_cross_entropy(net(x), y, w), params)])
        else:  # CPU: cache-sized micro-batches, gradients summed (harness/microbatch.py)
            coefficients = cross_entropy_coefficients(w, len(x), x.device)
            out.append(microbatch.weighted_grad(net, params, x, y, coefficients, chunk))
    return out


def cross_entropy_coefficients(weights: torch.Tensor | None, n: int, device: torch.device) -> torch.Tensor:
    """Per-sample coefficients ``a`` with ``weighted_cross_entropy = sum_i a_i CE_i`` (they sum to one)."""
    uniform = torch.full((n,), 1.0 / n, device=device)
    if weights is None:
        return uniform
    total = weights.sum()
    # torch.where instead of an ``if`` on the total: no host synchronisation per class on a GPU.
    return torch.where(total > 0, weights / total.clamp_min(1e-30), uniform)


def match_all_classes(
    net: nn.Module,
    x_train: torch.Tensor,
    idx_by_class: list[torch.Tensor],
    syn: torch.Tensor,
    ipc: int,
    metric: str,
    aug: DSA,
    generator: torch.Generator,
    weights: torch.Tensor | None = None,
    vmapped: bool | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The matching distance of every class and its gradient with respect to the synthetic images.

    The same loss as :func:`class_distance` summed over classes, computed with the real side batched:
    one Siamese augmentation call for all classes (class ``c``'s real and synthetic images share one
    draw) and the real gradients of all classes from :func:`real_class_gradients`. The synthetic side
    stays per class (each class's second-order graph is freed before the next).

    Args:
        net: the network.
        x_train: the real training images (on the device).
        idx_by_class: per class, the indices of its sampled real images.
        syn: the synthetic images, class-major, ``ipc`` per class.
        ipc: synthetic images per class.
        metric: see :func:`gradient_distance`.
        aug: DSA (inactive for plain DC).
        generator: randomness of the augmentation.
        weights: optional per-sample weights of the whole training set.
        vmapped: the real side's form (see :func:`real_class_gradients`; default: vmapped on CUDA).

    Returns:
        The ``[C]`` distances (detached) and the gradient of their sum with respect to ``syn``.
    """
    num_classes = len(idx_by_class)
    device = syn.device
    leaf = syn.detach().requires_grad_(True)
    idx = torch.cat(idx_by_class).to(device)
    real_all = x_train[idx]
    syn_in = leaf
    if aug:
        gen_dev = generator.device
        sizes = torch.tensor([len(i) for i in idx_by_class], device=gen_dev)
        real_groups = torch.arange(num_classes, device=gen_dev).repeat_interleave(sizes)
        syn_groups = torch.arange(num_classes, device=gen_dev).repeat_interleave(ipc)
        real_all, syn_in = aug.siamese([real_all, leaf], [real_groups, syn_groups], num_classes, generator)
    real = list(real_all.split([len(i) for i in idx_by_class]))
    w = list(weights[idx].split([len(i) for i in idx_by_class])) if weights is not None else None
    g_real = real_class_gradients(net, real, list(range(num_classes)), w, vmapped)
    params = [p for p in net.parameters() if p.requires_grad]
    grad_syn = torch.zeros_like(syn)
    dists = []
    for c in range(num_classes):
        syn_c = syn_in[c * ipc : (c + 1) * ipc]
        y_syn = torch.full((ipc,), c, dtype=torch.int64, device=device)
        g_syn = torch.autograd.grad(F.cross_entropy(net(syn_c), y_syn), params, create_graph=True)
        dist = gradient_distance(g_real[c], g_syn, metric)
        # The augmentation graph of the whole synthetic batch is shared by the classes: keep it until the last.
        (g,) = torch.autograd.grad(dist, leaf, retain_graph=bool(aug) and c < num_classes - 1)
        grad_syn += g
        dists.append(dist.detach())
    return torch.stack(dists), grad_syn


def has_batchnorm(net: nn.Module) -> bool:
    """Whether ``net`` contains batch-norm layers (their statistics need the real-data treatment)."""
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in net.modules())


@torch.no_grad()
def freeze_batchnorm_statistics(net: nn.Module, real: torch.Tensor) -> None:
    """Set every BN layer's running statistics to those of ``real`` and put BN layers in eval mode.

    Running statistics are reset and accumulated with cumulative averaging (``momentum=None``) for
    one forward pass, so they equal the statistics of ``real`` exactly; the layers then normalise
    with them (eval mode) until the network is put back into train mode.
    """
    bns = [m for m in net.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None
    net.train()
    net(real)
    for m, momentum in zip(bns, saved, strict=True):
        m.momentum = momentum
        m.eval()


def train_on_synthetic(
    net: nn.Module,
    opt: torch.optim.Optimizer,
    x: torch.Tensor,
    y: torch.Tensor,
    epochs: int,
    batch: int,
    aug: DSA,
    generator: torch.Generator,
) -> None:
    """Train ``net`` in place for ``epochs`` epochs on ``(x, y)`` (the inner loop of DC / DSA).

    Batches are slices of one permutation per epoch (the reference's shuffled ``DataLoader``); with
    DSA every batch gets per-sample augmentation, as the reference's ``epoch(..., aug=True)``.
    """
    net.train()
    n = len(y)
    chunk = microbatch.chunk_size(net, x[:batch])  # CPU micro-batches (harness/microbatch.py)
    for _ in range(epochs):
        perm = torch.randperm(n, generator=generator, device=generator.device).to(x.device)
        for start in range(0, n, batch):
            idx = perm[start : start + batch]
            xb = x[idx]
            if aug:
                xb = aug.per_sample(xb, generator)
            opt.zero_grad(set_to_none=True)
            microbatch.backward_mean_loss(net, xb, y[idx], chunk=chunk)
            opt.step()


def check_weights(weights: torch.Tensor | None, n: int, device: torch.device, method: str) -> torch.Tensor | None:
    """``weights`` as float32 on ``device`` after checking length and values; ``None`` stays ``None``.

    Raises:
        ConfigError: not one weight per training sample, or a negative / non-finite weight.
    """
    if weights is None:
        return None
    w = torch.as_tensor(weights).detach().to(device=device, dtype=torch.float32).flatten()
    if w.numel() != n:
        raise ConfigError(f"method {method!r} needs one weight per real training sample ({n}), got {w.numel()}")
    if not bool(torch.isfinite(w).all()) or bool((w < 0).any()):
        raise ConfigError(f"method {method!r} needs finite, non-negative sample weights")
    return w


def _sample_class(members: torch.Tensor, n: int, generator: torch.Generator) -> torch.Tensor:
    """Up to ``n`` distinct members drawn at random; a smaller class is used whole (as the reference)."""
    perm = torch.randperm(len(members), generator=generator, device=generator.device)[:n]
    return members[perm]


def run_gradient_matching(
    method: str, p: DCParams, data: DataBundle, ipc: int, ctx: Context, strategy: str
) -> DistilledSet:
    """Distill ``data`` by gradient matching (see the module docstring).

    Args:
        method: the calling method's name (messages, progress, derived seeds).
        p: the hyperparameters (``DCParams`` or a subclass).
        data: the dataset; ``data.train`` is the real data.
        ipc: synthetic images per class.
        ctx: device, generator, seed, optional sample weights, progress and time budget.
        strategy: DSA strategy, ``"none"`` for plain DC.

    Returns:
        ``ipc`` synthetic images per class (class-major) with hard labels; ``meta`` records the
        schedule, the loss curve (mean distance per class and outer step, per window of about 1%
        of the iterations), the final loss and the iterations done.

    Raises:
        DivergedError: the matching loss became NaN or infinite.
        ConfigError: a class without training images, or malformed weights.
    """
    info = data.info
    num_classes = info.num_classes
    device = torch.device(ctx.device)
    gen = ctx.generator
    members = [m.to(gen.device) for m in data.class_indices(required_by=method)]
    weights = check_weights(ctx.weights, len(data.train), device, method)
    x_train = data.train.x.to(device=device, dtype=torch.float32)
    outer_loop, inner_loop, schedule = resolve_loops(ipc, p.outer_loop, p.inner_loop)

    syn, meta = init_synthetic(data, ipc, p.init, gen, method, x_train=x_train)
    meta |= {
        "dsa_strategy": strategy,
        "outer_loop": outer_loop,
        "inner_loop": inner_loop,
        "schedule": schedule,
        "dis_metric": p.dis_metric,
    }
    syn.requires_grad_(True)
    labels = torch.arange(num_classes, device=device).repeat_interleave(ipc)
    opt_img = torch.optim.SGD([syn], lr=p.lr_img, momentum=p.momentum)
    aug = DSA(strategy)
    factory = resolve_network(p.net)  # parse the spec once, build a fresh network every iteration

    tracker = LossTracker(
        method,
        p.iterations,
        ctx,
        f"(lr_img={p.lr_img}, lr_net={p.lr_net}); lower the learning rates",
        start_message=f"starting ({outer_loop} outer x {inner_loop} inner steps per iteration)",
        current=lambda: (syn, labels),
    )

    start = ctx.checkpoint.resume(syn=syn, opt=opt_img, gen=gen, tracker=tracker)
    for it in range(start, p.iterations):
        net = factory.build(info, torch_generator(derive_seed(ctx.seed, method, "net", it))).to(device)
        opt_net = torch.optim.SGD(net.parameters(), lr=p.lr_net)
        bn = has_batchnorm(net)
        net.train()
        it_loss = torch.zeros((), device=device)
        for ol in range(outer_loop):
            if bn:
                bn_idx = torch.cat([_sample_class(m, BN_IMAGES_PER_CLASS, gen) for m in members]).to(device)
                freeze_batchnorm_statistics(net, x_train[bn_idx])
            idx_by_class = [_sample_class(members[c], p.batch_real, gen) for c in range(num_classes)]
            dists, grad_syn = match_all_classes(net, x_train, idx_by_class, syn, ipc, p.dis_metric, aug, gen, weights)
            it_loss += dists.detach().sum()
            opt_img.zero_grad(set_to_none=True)
            syn.grad = grad_syn
            opt_img.step()
            if ol == outer_loop - 1:
                break  # the reference does not train the network after its last image update
            train_on_synthetic(net, opt_net, syn.detach(), labels, inner_loop, p.batch_train, aug, gen)

        # Mean matching distance per (outer step, class); the tracker reads it once per report window.
        if tracker.step(it_loss / (outer_loop * num_classes)):
            break
        ctx.checkpoint.maybe_save(it + 1, syn=syn, opt=opt_img, gen=gen, tracker=tracker)

    meta.update(tracker.meta())
    return DistilledSet(x=syn.detach().cpu(), y=labels.cpu(), meta=meta)
