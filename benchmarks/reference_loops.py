"""Faithful re-statements of the reference loops (DC/DSA/DM code), the baselines of ``benchmarks/run.py``.

Written from the description in ``../shared/METHODS.md`` section 3 (not from the reference code), with
the same network class as the harness (:mod:`distillbench.harness.networks`) and the same DSA
transformations (:func:`distillbench.harness.augment._apply`), so that a speed ratio measures only the
loop around them:

* :func:`reference_train_eval_model` is ``utils.evaluate_synset``'s training: a ``TensorDataset`` and a
  shuffling ``DataLoader`` (batch 256), per-batch DSA with one family per batch and parameters drawn per
  sample on the host, SGD lr 0.01 momentum 0.9 weight decay 5e-4, ``epochs + 1`` epochs with the learning
  rate x0.1 after epoch ``epochs // 2 + 1``, eager NCHW float32.
* :func:`reference_dm_iteration` is one iteration of ``main_DM.py``: a freshly sampled ConvNet with frozen
  parameters in train mode; for every class, a real batch and the class's synthetic images get Siamese
  DSA from one seed (the parameters are drawn twice from that seed, once per batch, as the reference
  reseeds), each is embedded in its own forward pass (the real one detached afterwards), and the squared
  distance of the mean embeddings is summed over classes; one SGD step on the images.
* :func:`dm_eager_before_issue20` is not a reference loop but a frozen copy of ``dm``'s own loop as it
  was before issue 20 compiled its embedding (eager, channels-last, real side in micro-batches, one DSA
  call for all classes): the baseline of ``run.py --ops dm_bias``, which times our current ``dm``
  against it. With ``DISTILLBENCH_COMPILE=off`` today's ``dm`` still runs exactly this loop.
* :func:`reference_dc_iteration` is one outer iteration of ``main.py --method DC``: a fresh network, then
  ``outer_loop`` times: for every class, the real and the synthetic gradient of the cross-entropy
  (``torch.autograd.grad``, the synthetic one with ``create_graph``), their layer-wise distance summed
  into one loss and one backward, one SGD step on the images, and (except after the last) ``inner_loop``
  epochs of training the network on the synthetic set through a shuffling ``DataLoader``.

These are deliberately the straightforward eager loops; none is slowed down on purpose.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, TensorDataset

from distillbench.harness import microbatch
from distillbench.harness.augment import DSA, _apply, _draw, parse_strategy
from distillbench.harness.networks import build_network, resolve_network
from distillbench.harness.seeding import derive_seed, torch_generator
from distillbench.harness.types import DataBundle, DatasetInfo
from distillbench.methods._synthetic import init_synthetic
from distillbench.methods.dm import _sample_real, mean_embedding_loss


def reference_diffaug(x: torch.Tensor, strategy: str, seed: int, generator: torch.Generator) -> torch.Tensor:
    """DSA as the reference calls it: ``seed == -1`` draws per-sample parameters, else one shared draw.

    With a seed, a fresh host generator seeded with it picks the family and one parameter draw that every
    image of ``x`` shares (calling this twice with one seed gives the Siamese pair). Without, the family
    and the per-sample parameters come from ``generator`` on the host.
    """
    families = parse_strategy(strategy)
    gen = generator if seed == -1 else torch.Generator().manual_seed(seed)
    family = families[int(torch.randint(len(families), (1,), generator=gen))]
    n = x.shape[0] if seed == -1 else 1
    params = _draw(family, n, x.shape[-1], gen, torch.device("cpu"))
    if seed != -1:
        params = {k: v.expand(x.shape[0]) for k, v in params.items()}
    return _apply(family, x, {k: v.to(x.device) for k, v in params.items()})


def reference_train_eval_model(
    x: torch.Tensor,
    y: torch.Tensor,
    info: DatasetInfo,
    *,
    epochs: int,
    generator: torch.Generator,
    network: str = "convnet",
    strategy: str | None = None,
    lr: float = 0.01,
    batch_size: int = 256,
    device: torch.device | str = "cpu",
) -> torch.nn.Module:
    """Train one evaluation model the way ``utils.evaluate_synset`` does (see the module docstring)."""
    device = torch.device(device)
    strategy = info.dsa_strategy if strategy is None else strategy
    net = build_network(network, info, generator).to(device)
    net.train()
    optimizer = torch.optim.SGD(net.parameters(), lr=lr, momentum=0.9, weight_decay=5e-4)
    loader = DataLoader(TensorDataset(x.cpu(), y.cpu()), batch_size=batch_size, shuffle=True, num_workers=0)
    lr_drop = epochs // 2 + 1
    for ep in range(epochs + 1):
        for xb, yb in loader:
            xb, yb = xb.to(device), yb.to(device)
            if strategy not in ("", "none"):
                xb = reference_diffaug(xb, strategy, -1, generator)
            loss = F.cross_entropy(net(xb), yb)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        if ep == lr_drop:
            for group in optimizer.param_groups:
                group["lr"] = lr * 0.1
    return net.eval()


def _per_class(x_train: torch.Tensor, y_train: torch.Tensor, num_classes: int) -> list[torch.Tensor]:
    return [x_train[y_train == c] for c in range(num_classes)]


def _sample(images: torch.Tensor, n: int, generator: torch.Generator) -> torch.Tensor:
    return images[torch.randperm(len(images), generator=generator)[:n]]


def reference_dm_iteration(
    syn: torch.Tensor,
    optimizer: torch.optim.Optimizer,
    real_by_class: list[torch.Tensor],
    info: DatasetInfo,
    *,
    ipc: int,
    batch_real: int,
    generator: torch.Generator,
    net_generator: torch.Generator,
    network: str = "convnet",
    strategy: str | None = None,
) -> float:
    """One DM iteration as ``main_DM.py`` runs it (one forward per class and side); returns the loss."""
    strategy = info.dsa_strategy if strategy is None else strategy
    net = build_network(network, info, net_generator).to(syn.device)
    net.train()
    for p in net.parameters():
        p.requires_grad_(False)
    loss = torch.zeros((), device=syn.device)
    for c, images in enumerate(real_by_class):
        real = _sample(images, batch_real, generator).to(syn.device)
        syn_c = syn[c * ipc : (c + 1) * ipc]
        if strategy not in ("", "none"):
            seed = int(torch.randint(0, 10**9, (1,), generator=generator))
            real = reference_diffaug(real, strategy, seed, generator)
            syn_c = reference_diffaug(syn_c, strategy, seed, generator)
        out_real = net.embed(real).detach()
        out_syn = net.embed(syn_c)
        loss = loss + ((out_real.mean(dim=0) - out_syn.mean(dim=0)) ** 2).sum()
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    return loss.item()


def dm_eager_before_issue20(
    data: DataBundle,
    ipc: int,
    *,
    iterations: int,
    batch_real: int,
    network: str,
    seed: int,
    generator: torch.Generator,
    weights: torch.Tensor | None = None,
    lr_img: float = 1.0,
    momentum: float = 0.5,
) -> torch.Tensor:
    """``dm``'s CPU loop as it was before issue 20 (frozen copy; ``init=real``, DSA on); returns the set.

    Same draws as ``dm``'s ``distill`` with ``Context(seed=seed, generator=generator)``: the set equals
    ``dm`` run with ``DISTILLBENCH_COMPILE=off`` exactly, and the compiled ``dm`` up to float rounding.
    """
    info = data.info
    num_classes = info.num_classes
    members = data.class_indices()
    x_train = data.train.x.to(dtype=torch.float32)
    syn, _ = init_synthetic(data, ipc, "real", generator, "dm", x_train=x_train)
    syn.requires_grad_(True)
    opt = torch.optim.SGD([syn], lr=lr_img, momentum=momentum)
    aug = DSA(info.dsa_strategy)
    factory = resolve_network(network)
    real_groups = torch.arange(num_classes).repeat_interleave(batch_real)
    syn_groups = torch.arange(num_classes).repeat_interleave(ipc)
    for it in range(iterations):
        net = factory.build(info, torch_generator(derive_seed(seed, "dm", "net", it)))
        net = net.to(memory_format=torch.channels_last).requires_grad_(False)
        net.train()
        idx = _sample_real(members, batch_real, generator)
        real, syn_in = aug.siamese([x_train[idx], syn], [real_groups, syn_groups], num_classes, generator)

        def embed(x: torch.Tensor, net: torch.nn.Module = net) -> torch.Tensor:
            return net.embed(x.contiguous(memory_format=torch.channels_last))

        chunk = microbatch.chunk_size(net, real)
        emb_real = microbatch.forward_no_grad(embed, real, chunk).flatten(1).view(num_classes, batch_real, -1)
        emb_syn = embed(syn_in).flatten(1).view(num_classes, ipc, -1)
        w = weights[idx].view(num_classes, batch_real) if weights is not None else None
        loss = mean_embedding_loss(emb_real, emb_syn, w)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return syn.detach()


def _match_loss(g_real: list[torch.Tensor], g_syn: list[torch.Tensor]) -> torch.Tensor:
    """DC's layer-wise distance ("ours"): per output row ``1 - cos``, 1-D tensors ignored."""
    total = torch.zeros((), device=g_syn[0].device)
    for gr, gs in zip(g_real, g_syn, strict=True):
        if gr.dim() == 1:
            continue
        a, b = gr.reshape(gr.shape[0], -1), gs.reshape(gs.shape[0], -1)
        total = total + (1 - (a * b).sum(-1) / (a.norm(dim=-1) * b.norm(dim=-1) + 1e-6)).sum()
    return total


def reference_dc_iteration(
    syn: torch.Tensor,
    optimizer: torch.optim.Optimizer,
    real_by_class: list[torch.Tensor],
    info: DatasetInfo,
    *,
    ipc: int,
    batch_real: int,
    outer_loop: int,
    inner_loop: int,
    generator: torch.Generator,
    net_generator: torch.Generator,
    network: str = "convnet",
    lr_net: float = 0.01,
    batch_train: int = 256,
) -> float:
    """One DC iteration (fresh network, ``outer_loop`` image updates) as ``main.py`` runs it; returns the loss."""
    device = syn.device
    num_classes = len(real_by_class)
    net = build_network(network, info, net_generator).to(device)
    net.train()
    params = list(net.parameters())
    opt_net = torch.optim.SGD(net.parameters(), lr=lr_net)
    labels = torch.arange(num_classes, device=device).repeat_interleave(ipc)
    last = 0.0
    for ol in range(outer_loop):
        loss = torch.zeros((), device=device)
        for c, images in enumerate(real_by_class):
            real = _sample(images, batch_real, generator).to(device)
            syn_c = syn[c * ipc : (c + 1) * ipc]
            y_real = torch.full((len(real),), c, dtype=torch.long, device=device)
            y_syn = torch.full((ipc,), c, dtype=torch.long, device=device)
            g_real = [g.detach() for g in torch.autograd.grad(F.cross_entropy(net(real), y_real), params)]
            g_syn = torch.autograd.grad(F.cross_entropy(net(syn_c), y_syn), params, create_graph=True)
            loss = loss + _match_loss(g_real, list(g_syn))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        last = loss.item()
        if ol == outer_loop - 1:
            break
        loader = DataLoader(
            TensorDataset(syn.detach().cpu(), labels.cpu()), batch_size=batch_train, shuffle=True, num_workers=0
        )
        for _ in range(inner_loop):
            for xb, yb in loader:
                out = net(xb.to(device))
                loss_net = F.cross_entropy(out, yb.to(device))
                opt_net.zero_grad()
                loss_net.backward()
                opt_net.step()
    return last
