"""``dm``: Distribution Matching (Zhao & Bilen, WACV 2023; arXiv 2110.04181).

DM learns synthetic images whose mean embedding, under randomly initialised networks, matches the
mean embedding of real images of the same class (METHODS.md section 3):

1. Initialise ``ipc`` synthetic images per class from random real images (``init="real"``) or
   N(0, 1) in the normalised space (``init="noise"``); labels stay fixed and hard.
2. Every iteration: draw a fresh random network (never trained, parameters frozen, train mode),
   sample ``batch_real`` real images per class, apply Siamese DSA (one augmentation draw per class,
   shared by that class's real and synthetic images), embed, and minimise
   ``sum_c || mean phi(real_c) - mean phi(syn_c) ||^2`` with SGD(momentum) on the synthetic images.
   The real side carries no gradient.

Implementation notes:

* All classes go through one augmentation call and one forward pass per side, instead of the
  reference's loop over classes (see the comment in :meth:`DistributionMatching.distill`).
* Each iteration's network comes from a generator derived from ``(ctx.seed, iteration)``; real
  batches, DSA draws and noise initialisation come from ``ctx.generator``.
* The loss is checked for NaN/inf once per progress window (about 1% of the iterations) rather than
  every iteration, so a GPU run is not forced to synchronise with the host at every step; a
  divergence is still reported (``DivergedError``) within 1% of the run.
* ``meta["loss_curve"]`` holds ``[iteration, mean loss over the preceding window]`` pairs (about 100
  of them), ``meta["final_loss"]`` the loss of the last iteration.
* With ``ctx.weights`` (one weight per real training sample), the real mean of a class is the
  weighted mean over its sampled batch, weights normalised within the batch (``weight_mode=mean``,
  the reconstruction in METHODS.md section 4). ``weight_mode=sample`` instead draws the batch with
  replacement, each sample with probability proportional to its weight, and takes the plain mean:
  the same expected target, but when a few samples hold most of a class's weight (``kde`` gives
  the 5% conflicting samples of Colored MNIST 74% of it) the batch holds many of them rather than
  the 3 of 64 a uniform batch holds, so the target's variance is far lower. The paper does not say
  which it uses; ``docs/bias.md`` compares the two.
* On the CPU, runs of 1,000 iterations or more compile the embedding network (:class:`FastEmbed`):
  about 2x faster per iteration at the bias settings (issue 20), the same arithmetic up to float
  rounding; shorter runs, and every run with ``DISTILLBENCH_COMPILE=off``, run the eager loop.
* A class with fewer than ``batch_real`` images is sampled with replacement, so every class
  contributes a full batch and the joint forward pass has a fixed per-class shape; larger classes
  are sampled without replacement, as in the reference. (The reference instead uses all images of
  such a class, a smaller batch; its BN branch assumes full batches and would fail there.)
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import time
from typing import Any, ClassVar, Literal

import torch

from distillbench.harness import microbatch
from distillbench.harness.augment import DSA
from distillbench.harness.compiled import should_compile
from distillbench.harness.errors import ConfigError
from distillbench.harness.networks import resolve_network
from distillbench.harness.plugins import register_method
from distillbench.harness.seeding import derive_seed, torch_generator
from distillbench.harness.types import Context, DataBundle, DatasetInfo, DistilledSet
from distillbench.methods._loop import LossTracker
from distillbench.methods._synthetic import init_synthetic
from distillbench.methods.base import DistillationMethod

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class DMParams:
    """DM hyperparameters; defaults are the paper's (``main_DM.py``)."""

    iterations: int = dataclasses.field(default=20000, metadata={"help": "updates of the synthetic set"})
    lr_img: float = dataclasses.field(
        default=1.0, metadata={"help": "SGD learning rate of the synthetic images (paper: 1; 10 for ipc >= 100)"}
    )
    momentum: float = dataclasses.field(default=0.5, metadata={"help": "SGD momentum of the synthetic images"})
    batch_real: int = dataclasses.field(default=256, metadata={"help": "real images sampled per class per iteration"})
    init: Literal["real", "noise"] = dataclasses.field(
        default="real", metadata={"help": "initialise from random real images or from N(0, 1) noise"}
    )
    dsa: bool = dataclasses.field(default=True, metadata={"help": "Siamese DSA augmentation inside the matching"})
    dsa_strategy: str | None = dataclasses.field(
        default=None, metadata={"help": "DSA families joined by '_'; none = the dataset's own strategy"}
    )
    net: str = dataclasses.field(default="convnet", metadata={"help": "network spec of the random embedding networks"})
    weight_mode: Literal["mean", "sample"] = dataclasses.field(
        default="mean",
        metadata={
            "help": "how sample weights enter: mean = weighted mean of a uniform batch; "
            "sample = batch drawn with probability proportional to the weight",
            # Added after trials of dm were stored: at its default it stays out of the ids (harness/params.py).
            "since": "0.2",
        },
    )

    def __post_init__(self) -> None:
        if self.iterations < 1:
            raise ValueError(f"iterations must be at least 1, got {self.iterations}")
        if not self.lr_img > 0:
            raise ValueError(f"lr_img must be positive, got {self.lr_img}")
        if not 0.0 <= self.momentum < 1.0:
            raise ValueError(f"momentum must be in [0, 1), got {self.momentum}")
        if self.batch_real < 1:
            raise ValueError(f"batch_real must be at least 1, got {self.batch_real}")
        if self.dsa_strategy is not None:
            DSA(self.dsa_strategy)  # raises ValueError naming unknown families


@register_method("dm")
class DistributionMatching(DistillationMethod):
    """Distribution Matching: match mean embeddings of real and synthetic images under random networks."""

    name = "dm"
    Params = DMParams
    modalities: ClassVar[frozenset[str]] = frozenset({"image"})
    accepts_weights = True
    test_config: ClassVar[dict[str, Any]] = {"iterations": 10, "batch_real": 16, "net": "convnet[width=32]"}

    def strategy(self, info: DatasetInfo) -> str:
        """The DSA strategy used on ``info`` (``"none"`` when DSA is off)."""
        if not self.params.dsa:
            return "none"
        return self.params.dsa_strategy if self.params.dsa_strategy is not None else info.dsa_strategy

    def validate(self, info: DatasetInfo, ipc: int) -> None:
        super().validate(info, ipc)
        self.check_network_and_augmentation(info, self.params.net, self.strategy(info))

    def distill(self, data: DataBundle, ipc: int, ctx: Context) -> DistilledSet:
        p = self.params
        info = data.info
        num_classes = info.num_classes
        device = torch.device(ctx.device)
        gen = ctx.generator
        members = [m.to(gen.device) for m in data.class_indices(required_by=self.name)]
        weights = _check_weights(ctx.weights, len(data.train), device)
        sampler = _WeightedSampler(members, weights) if weights is not None and p.weight_mode == "sample" else None
        x_train = data.train.x.to(device=device, dtype=torch.float32)

        syn, meta = init_synthetic(data, ipc, p.init, gen, self.name, x_train=x_train)
        meta["dsa_strategy"] = self.strategy(info)
        syn.requires_grad_(True)
        opt = torch.optim.SGD([syn], lr=p.lr_img, momentum=p.momentum)
        aug = DSA(self.strategy(info))
        factory = resolve_network(p.net)  # parse the spec once, build a fresh network every iteration

        batch = p.batch_real
        # Group indices stay with the generator (the host): DSA's per-group bookkeeping then never
        # reads back from the device.
        real_groups = torch.arange(num_classes, device=gen.device).repeat_interleave(batch)
        syn_groups = torch.arange(num_classes, device=gen.device).repeat_interleave(ipc)
        # Compiling decides on the planned iteration count, not on what is left after a resume, so a
        # resumed run continues in the arithmetic it started with.
        fast = FastEmbed(device, compiled=should_compile(device, p.iterations))
        if fast.compiled:
            # A network of its own (its seed is no iteration's), built from a derived generator: the
            # compile leaves ctx.generator's stream alone.
            probe = factory.build(info, torch_generator(derive_seed(ctx.seed, "dm", "compile-probe")))
            rows = torch.arange(num_classes * batch, device=device) % len(x_train)
            fast.warm_up(fast.prepare(probe).requires_grad_(False), x_train[rows], syn)
        meta.update(fast.meta())

        labels = torch.arange(num_classes).repeat_interleave(ipc)
        tracker = LossTracker(
            "dm", p.iterations, ctx, f"(lr_img={p.lr_img}); lower lr_img", current=lambda: (syn, labels)
        )
        start = ctx.checkpoint.resume(syn=syn, opt=opt, gen=gen, tracker=tracker)

        for it in range(start, p.iterations):
            net = fast.prepare(factory.build(info, torch_generator(derive_seed(ctx.seed, "dm", "net", it))))
            net.requires_grad_(False)
            net.train()  # as the reference: BN (if any) normalises with batch statistics

            if sampler is not None:
                idx = sampler(batch, gen).to(device)
            else:
                idx = _sample_real(members, batch, gen).to(device)
            real = x_train[idx]
            syn_in = syn
            if aug:
                # One call for all classes: group c (class c) gets one family and one parameter draw,
                # shared by its real and its synthetic images (Siamese augmentation).
                real, syn_in = aug.siamese([real, syn], [real_groups, syn_groups], num_classes, gen)

            # One forward pass for the real images of all classes and one for the synthetic ones.
            # With instance norm (the default ConvNet: GroupNorm with one group per channel) every
            # sample is normalised on its own, so these batched passes are mathematically identical
            # to the reference's per-class passes (up to floating-point summation order). With batch
            # norm they are what the reference's BN branch does: all classes in one joint batch.
            # The real side is a fixed target: no graph, no gradient; on the CPU in cache-sized
            # micro-batches (harness/microbatch.py: 1.8x faster there for 2,560 images, same math).
            emb_real = fast.embed_real(net, real).view(num_classes, batch, -1)
            emb_syn = fast.embed_syn(net, syn_in).view(num_classes, ipc, -1)

            w = weights[idx].view(num_classes, batch) if weights is not None and sampler is None else None
            loss = mean_embedding_loss(emb_real, emb_syn, w)

            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if tracker.step(loss):
                break
            ctx.checkpoint.maybe_save(it + 1, syn=syn, opt=opt, gen=gen, tracker=tracker)

        meta.update(tracker.meta())
        return DistilledSet(
            x=syn.detach().cpu(),
            y=labels,
            meta=meta,
        )


def mean_embedding_loss(
    emb_real: torch.Tensor, emb_syn: torch.Tensor, weights: torch.Tensor | None = None
) -> torch.Tensor:
    """``sum_c || mean emb_real[c] - mean emb_syn[c] ||^2`` over the classes of class-major embeddings.

    Args:
        emb_real: ``[C, batch, D]`` real embeddings.
        emb_syn: ``[C, ipc, D]`` synthetic embeddings.
        weights: optional ``[C, batch]`` sample weights; a class's real mean is then the weighted mean,
            weights normalised within the class (all-zero weights fall back to the plain mean).
    """
    if weights is None:
        mean_real = emb_real.mean(dim=1)
    else:
        total = weights.sum(dim=1, keepdim=True)
        w = torch.where(total > 0, weights / total.clamp_min(1e-30), torch.full_like(weights, 1.0 / weights.shape[1]))
        mean_real = (w.unsqueeze(-1) * emb_real).sum(dim=1)
    return ((mean_real - emb_syn.mean(dim=1)) ** 2).sum()


class FastEmbed:
    """How DM runs its embedding networks on ``device``: eager or compiled, and in which layout and precision.

    Eager (the default, and every run whose compile would not pay): channels-last everywhere, bf16
    autocast on CUDA. Channels-last (NHWC) convolutions are the fast layout of both cuDNN's
    tensor-core kernels and oneDNN on the CPU. DM's cost is the forward pass of ``batch_real`` real
    images per class, without a backward pass; measured on the 2-core development machine (ConvNet-3
    width 128, 256 MNIST images, one thread), that forward took 1.39-1.68 s in NHWC against 1.72-2.12 s
    in NCHW, while a training step (forward and backward) was slower in NHWC (5.1-5.6 s against
    4.1-4.5 s), so only DM uses it on the CPU. bf16 autocast (the loss and the images stay float32) is
    CUDA only: it would change the CPU results, which are float32 everywhere else.

    Compiled (``compiled=True``: CPU runs of 1,000 iterations or more, or ``DISTILLBENCH_COMPILE=on``;
    see :mod:`~distillbench.harness.compiled`): ``net.embed`` under ``torch.compile`` for the real side
    (no gradient) and the synthetic side (gradient to the images only), both in cache-sized
    micro-batches. An eager CPU iteration at the bias settings (ConvNet-3 width 32, 28x28x3, 64 real
    images per class, IPC 10; torch.profiler, one thread) spends less than a third of its time in
    convolutions: channels-last group norm 28%, its backward 10%, ReLU and its backward 14%, pooling
    6%, convolutions 28%. Inductor fuses norm, ReLU and pooling into one loop per block and
    direction; compiled, the convolutions are about 70% and the real side's forward pass comes within
    1.2-1.3x of its convolutions alone (``benchmarks/README.md``, "DM at the bias settings"). The
    graphs take the network's parameters as inputs, so every iteration's fresh network reuses them;
    they are compiled once per process, network structure and grad mode (``warm_up``), with a dynamic
    batch size. The compile took 3-15 s with a warm Inductor cache and 73-140 s with an empty one
    (widths 32 and 128, loaded machine; ``meta["compile_seconds"]``).
    Dynamo keeps at most 8 compiled variants of one function and each network structure needs 2-4
    (grad mode, and oneDNN's batch-size ranges), so a process that distils with several structures
    runs the later ones eagerly, with Dynamo's warning: the eager path's results at eager speed.

    The compiled embedding equals the eager one up to floating-point summation order (about 1e-6
    relative), and so does a short run's set (``tests/test_dm_speed.py``). DM amplifies such
    differences, though: at the bias settings two runs that differ only in rounding drift apart (1e-6
    after 2 iterations, 4e-4 after 5, 5% of the images' movement after 200, measured), into sets of
    the same loss curve (11.982 against 11.983 after 200 iterations) but not the same pixels. The eager path itself is
    bit-reproducible across thread counts and micro-batch sizes (measured), so the exact set of a
    compiled run is reproduced with the same ``DISTILLBENCH_COMPILE`` setting, or ``off`` for the
    eager one.
    """

    def __init__(self, device: torch.device, compiled: bool = False) -> None:
        self.device = device
        self.cuda = device.type == "cuda"
        self.compiled = compiled
        self.compile_requested = compiled  # stays set when compiling failed: the metadata says so
        self._compiled_embed: Any = None
        self.compile_seconds: float | None = None

    def meta(self) -> dict[str, Any]:
        """What the fast path changed, for the set's metadata."""
        out: dict[str, Any] = {"autocast": "bf16" if self.cuda else None, "channels_last": True}
        if self.compile_requested:
            out["compiled"] = self._compiled_embed is not None
            out["compile_seconds"] = self.compile_seconds
        return out

    def prepare(self, net: torch.nn.Module) -> torch.nn.Module:
        """``net`` on the device, in channels-last layout."""
        return net.to(self.device).to(memory_format=torch.channels_last)

    def embed(self, net: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
        """``net.embed(x)`` in float32 (computed under bf16 autocast on CUDA)."""
        x = x.contiguous(memory_format=torch.channels_last)
        if self._compiled_embed is not None:
            # Dynamic batch size from the first call on: micro-batches of different sizes share a graph
            # instead of each compiling its own. (oneDNN's convolution backend still depends on the
            # batch size, below or above 16 samples; warm_up compiles both before the loop.)
            torch._dynamo.maybe_mark_dynamic(x, 0)
            return self._compiled_embed(net, x)
        if not self.cuda:
            return net.embed(x)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            out = net.embed(x)
        return out.float()

    def warm_up(self, net: torch.nn.Module, real: torch.Tensor, syn: torch.Tensor) -> None:
        """Compile (when ``compiled``) on the loop's micro-batch sizes; on any failure warn and stay eager.

        Both graphs (real: no gradient; synthetic: forward and backward) are compiled here, before the
        loop, for every micro-batch size the loop will meet, so a compiler failure falls back cleanly
        instead of surfacing inside an iteration's backward pass. ``net`` is a probe network (no
        iteration's); ``real`` and ``syn`` are batches of the loop's sizes whose values do not matter
        (the synthetic side runs on a copy: the set, its optimiser and the random stream are untouched).
        """
        if not self.compiled or self._compiled_embed is not None:
            return
        start = time.perf_counter()
        self._compiled_embed = torch.compile(_embed)
        try:
            # One call per micro-batch size the loop will use (a full one and the last, shorter one).
            with torch.no_grad():
                for n in _chunk_sizes(net, real):
                    self.embed(net, real[:n])
            for n in _chunk_sizes(net, syn):
                self.embed(net, syn[:n].detach().clone().requires_grad_(True)).sum().backward()
        except Exception as exc:  # noqa: BLE001 - any compiler failure: run eagerly, say why
            log.warning("torch.compile failed (%s: %s); dm runs eagerly", type(exc).__name__, exc)
            self._compiled_embed = None
            self.compiled = False
            return
        self.compile_seconds = round(time.perf_counter() - start, 1)

    def embed_real(self, net: torch.nn.Module, real: torch.Tensor) -> torch.Tensor:
        """``[n, D]`` embeddings of the real images, without gradient, in micro-batches on the CPU."""
        chunk = microbatch.chunk_size(net, real)
        return microbatch.forward_no_grad(functools.partial(self.embed, net), real, chunk).flatten(1)

    def embed_syn(self, net: torch.nn.Module, syn: torch.Tensor) -> torch.Tensor:
        """``[n, D]`` embeddings of the synthetic images, differentiable with respect to them.

        Eager: the whole batch in one pass, as before issue 20 (split eagerly, 100 images of width 32
        measured slower: 189-227 ms against 153 ms). Compiled: micro-batches, concatenated; the
        autograd engine runs each micro-batch's backward as one compiled call.
        """
        chunk = microbatch.chunk_size(net, syn) if self._compiled_embed is not None else None
        if chunk is None:
            return self.embed(net, syn).flatten(1)
        return torch.cat([self.embed(net, part) for part in syn.split(chunk)]).flatten(1)


def _chunk_sizes(net: torch.nn.Module, x: torch.Tensor) -> set[int]:
    """The sizes of the micro-batches ``x`` is split into (see :func:`microbatch.chunk_size`)."""
    chunk = microbatch.chunk_size(net, x)
    return {len(x)} if chunk is None else {chunk, len(x) % chunk} - {0}


def _embed(net: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``net.embed(x)``: the function DM compiles (the network is an input, so every iteration's fits)."""
    return net.embed(x)


def _check_weights(weights: torch.Tensor | None, n: int, device: torch.device) -> torch.Tensor | None:
    """``weights`` as float32 on ``device``, after checking shape and values; ``None`` stays ``None``."""
    if weights is None:
        return None
    w = torch.as_tensor(weights).detach().to(device=device, dtype=torch.float32).flatten()
    if w.numel() != n:
        raise ConfigError(f"method 'dm' needs one weight per real training sample ({n}), got {w.numel()}")
    if not bool(torch.isfinite(w).all()) or bool((w < 0).any()):
        raise ConfigError("method 'dm' needs finite, non-negative sample weights")
    return w


class _WeightedSampler:
    """Draws ``batch`` training indices per class with replacement, proportionally to the weights."""

    def __init__(self, members: list[torch.Tensor], weights: torch.Tensor) -> None:
        self.members = members
        self.probs = []
        for m in members:
            w = weights.to(m.device)[m].double()
            # A class whose weights are all zero is drawn uniformly, as mean_embedding_loss falls
            # back to the plain mean for an all-zero batch.
            self.probs.append(w if float(w.sum()) > 0 else torch.ones_like(w))

    def __call__(self, batch: int, gen: torch.Generator) -> torch.Tensor:
        draws = zip(self.members, self.probs, strict=True)
        return torch.cat([m[torch.multinomial(p, batch, replacement=True, generator=gen)] for m, p in draws])


def _sample_real(members: list[torch.Tensor], batch: int, gen: torch.Generator) -> torch.Tensor:
    """``batch`` training indices per class, class-major; with replacement only for small classes."""
    parts = []
    for m in members:
        n = len(m)
        if n >= batch:
            pos = torch.randperm(n, generator=gen, device=gen.device)[:batch]
        else:
            pos = torch.randint(n, (batch,), generator=gen, device=gen.device)
        parts.append(m[pos])
    return torch.cat(parts)
