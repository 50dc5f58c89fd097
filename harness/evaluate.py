"""The evaluation engine: train K fresh networks on a distilled set and test each on the real test split.

This is how every row's accuracy is produced, so it follows the reference recipe
(``utils.evaluate_synset`` of the DC/DSA/DM code) as a :class:`~distillbench.harness.protocols.EvalProtocol`
describes it: SGD with momentum and weight decay, one learning-rate drop, DSA augmentation with
parameters drawn per sample, and ``n_models`` independently initialised networks.

These choices differ from the reference code on purpose:

* **Tensors stay on the device; no DataLoader.** The distilled set, the validation split and the test
  split are moved to the device once. Each epoch draws one ``torch.randperm`` permutation and slices it
  into mini-batches (the airbench fast path), so a model never waits for a worker process or a host
  copy. Sets smaller than the batch size are one batch; the last batch of an epoch may be smaller.
* **Seeds are derived, never global.** Model ``k`` gets the seed
  ``derive_seed(seed, "eval", protocol.name, protocol.version, k)`` and one CPU ``torch.Generator``
  from it, which draws its initial weights, its batch order and its augmentation parameters. Nothing
  here calls ``torch.manual_seed``, so a result depends only on the trial seed and the protocol, not on
  what ran before in the process, and the random draws are the same on every device. The reference
  trains ``epochs + 1`` epochs and drops the rate after ``epochs // 2 + 1``; here a protocol's
  ``epochs`` are exactly what runs, and the rate drops once ``int(epochs * lr_decay_at)`` are done.

* **Micro-batches on the CPU.** For networks that declare themselves samplewise (the bundled ones
  without batch norm), each CPU batch is back-propagated in cache-sized pieces whose gradients add up to
  the batch's (:mod:`~distillbench.harness.microbatch`; about 1.4x faster per step on the development
  machine). The batch, its order and its augmentation are drawn whole, as before. Long CPU runs
  (convnet-v1's thousand epochs) also compile the model (:mod:`~distillbench.harness.compiled`).
* **Two engines, one math.** ``sequential`` trains the K models one after another
  (:func:`train_on_set`); ``batched`` (:mod:`~distillbench.harness.batched`) trains them together,
  one vmapped step over stacked parameters, each model drawing from its own generator exactly as
  sequentially. ``DISTILLBENCH_EVAL_ENGINE=batched|sequential`` picks one; the default is batched on
  CUDA and sequential on the CPU. Networks with batch norm or dropout, and online relabelling, always
  train sequentially (the reason goes to the progress callback).

``dset.extras`` (for example DD's learned step sizes) are ignored by this engine; protocols that replay
them are separate.
"""

from __future__ import annotations

import dataclasses
import math
import statistics
import time
from collections.abc import Callable

import torch
from torch import nn

from distillbench.harness import compiled, microbatch, store
from distillbench.harness.augment import DSA
from distillbench.harness.batched import maybe_train_batched
from distillbench.harness.errors import ConfigError, IncompatibleError
from distillbench.harness.metrics import BIAS_COLUMNS, bias_metrics, has_bias_groups, is_long_tailed, shot_metrics
from distillbench.harness.networks import build_network
from distillbench.harness.params import parse_spec
from distillbench.harness.progress import emit, takes_values
from distillbench.harness.protocols import EvalProtocol, replays_set
from distillbench.harness.seeding import derive_seed, torch_generator
from distillbench.harness.types import DataBundle, DatasetInfo, DistilledSet, Split

AUGMENTATIONS = ("dsa", "none")
#: The row columns an :class:`EvalResult` fills, each from its attribute of the same name.
RESULT_COLUMNS = store.column_names(family=("accuracy", "validation", "bias", "long_tail"))


@dataclasses.dataclass
class EvalResult:
    """What one evaluation of a distilled set measured.

    Attributes:
        network: the protocol's network spec.
        acc_per_model: test accuracy (a fraction in [0, 1]) of each of the K models, in seed order.
        acc_per_class: per-class test accuracy averaged over the K models (length C; ``nan`` for a
            class absent from the test split).
        val_acc_per_model: validation-split accuracy of each model (``nan`` if the split is empty).
        seconds: wall time of the whole evaluation.
        acc_aligned, acc_conflicting, acc_worst_group: bias-group accuracies averaged over the models,
            for test splits with bias groups (``None`` otherwise); see :mod:`~distillbench.harness.metrics`.
        acc_many, acc_medium, acc_few: shot-group accuracies for long-tailed data (``None`` otherwise).
    """

    network: str
    acc_per_model: list[float]
    acc_per_class: list[float]
    val_acc_per_model: list[float]
    seconds: float
    acc_aligned: float | None = None
    acc_conflicting: float | None = None
    acc_worst_group: float | None = None
    acc_many: float | None = None
    acc_medium: float | None = None
    acc_few: float | None = None

    @property
    def acc_mean(self) -> float:
        """Mean test accuracy over the K models."""
        return statistics.fmean(self.acc_per_model)

    @property
    def acc_std(self) -> float:
        """Population standard deviation (ddof=0, as ``np.std`` in the reference code) over the K models."""
        return statistics.pstdev(self.acc_per_model)

    @property
    def val_acc_mean(self) -> float:
        """Mean validation accuracy over the K models."""
        return statistics.fmean(self.val_acc_per_model)


class ZCAMismatchError(IncompatibleError, ValueError):
    """A set distilled in ZCA-whitened space evaluated on plain data, or the reverse.

    A ``ValueError`` like the other input checks, and a user error, so the CLI prints one line.
    """


def _with_zca(name: str, zca: bool) -> str:
    """``name`` (a display spec such as ``digits[imbalance=10.0]``) with ``zca=true`` added or removed."""
    try:
        base, raw = parse_spec(name)
    except ConfigError:
        return f"{name} {'with' if zca else 'without'} zca=true"
    raw.pop("zca", None)
    if zca:
        raw["zca"] = "true"
    return f"{base}[{','.join(f'{k}={v}' for k, v in sorted(raw.items()))}]" if raw else base


def _check_space(dset: DistilledSet, info: DatasetInfo) -> None:
    """Refuse a set whose space (ZCA-whitened or not) differs from the data's.

    Sets saved before ``zca`` existed carry no ``meta["zca"]``; they were never whitened, so a
    missing key means False.
    """
    set_zca, data_zca = bool(dset.meta.get("zca", False)), bool(getattr(info, "zca", False))
    if set_zca == data_zca:
        return
    if set_zca:
        raise ZCAMismatchError(
            f"the distilled set is ZCA-whitened (distilled on a zca=true dataset) but dataset {info.name!r} is "
            f"not, so its accuracy would be meaningless; evaluate it on {_with_zca(info.name, True)!r}"
        )
    raise ZCAMismatchError(
        f"the distilled set is in plain pixel space (distilled without zca) but dataset {info.name!r} is "
        f"ZCA-whitened, so its accuracy would be meaningless; evaluate it on {_with_zca(info.name, False)!r}"
    )


def _check_inputs(protocol: EvalProtocol, dset: DistilledSet, info: DatasetInfo) -> None:
    """Raise ``ValueError`` if the set cannot be evaluated under ``protocol`` on ``info``'s data."""
    if protocol.augment not in AUGMENTATIONS:
        raise ValueError(
            f"protocol {protocol.id} has augment={protocol.augment!r}; valid values: {', '.join(AUGMENTATIONS)}"
        )
    if protocol.n_models < 1 or protocol.epochs < 0 or protocol.batch_size < 1:
        raise ValueError(
            f"protocol {protocol.id} needs n_models >= 1, epochs >= 0 and batch_size >= 1; got "
            f"n_models={protocol.n_models}, epochs={protocol.epochs}, batch_size={protocol.batch_size}"
        )
    sample_shape = tuple(dset.x.shape[1:])
    allowed = {tuple(info.shape)}
    if info.modality == "text" and getattr(info, "embeddings", None) is not None:
        # Text sets hold token ids [n, L] (real sentences) or embedding-space sentences [n, L, D].
        allowed.add((*info.shape, int(info.embeddings.shape[1])))
    if dset.x.dim() < 1 or sample_shape not in allowed:
        raise ValueError(
            f"distilled set samples have shape {sample_shape} (x is {tuple(dset.x.shape)}), but dataset "
            f"{info.name!r} has samples of shape {tuple(info.shape)}; x must be [n, *{tuple(info.shape)}]"
        )
    _check_space(dset, info)
    n = dset.x.shape[0]
    if n == 0:
        raise ValueError("the distilled set is empty; nothing to train on")
    token_ids = info.modality == "text" and sample_shape == tuple(info.shape)
    if token_ids:
        if dset.x.is_floating_point() or dset.x.is_complex() or dset.x.dtype == torch.bool:
            raise ValueError(f"a text set of shape [n, {info.shape[0]}] holds token ids: integers, got {dset.x.dtype}")
    elif not dset.x.is_floating_point():
        # Integer pixels (0-255 bytes, say) would be cast and trained on as if normalised: a silent wrong score.
        raise ValueError(
            f"samples must be floating point in the dataset's normalised space, got dtype {dset.x.dtype}; "
            "save x as float32 (normalised with the dataset's mean and std)"
        )
    elif not bool(torch.isfinite(dset.x).all()):
        bad = int((~torch.isfinite(dset.x)).sum())
        raise ValueError(
            f"{bad} of {dset.x.numel()} sample values are NaN or infinite (what a diverged distillation leaves); "
            "distil the set again, e.g. with a lower learning rate"
        )
    if dset.y.shape[0] != n:
        raise ValueError(f"the distilled set has {n} samples but {dset.y.shape[0]} labels")
    num_classes = info.num_classes
    if dset.soft:
        if dset.y.shape[1] != num_classes:
            raise ValueError(
                f"soft labels have {dset.y.shape[1]} columns, but dataset {info.name!r} has "
                f"{num_classes} classes; y must be [n, {num_classes}]"
            )
        if dset.y.is_complex() or not dset.y.is_floating_point():
            raise ValueError(f"soft labels must be floating point, got dtype {dset.y.dtype}")
        if not bool(torch.isfinite(dset.y).all()):
            raise ValueError("soft labels contain NaN or infinite values; distil the set again")
    elif dset.y.dim() == 1:
        if dset.y.is_floating_point() or dset.y.is_complex() or dset.y.dtype == torch.bool:
            raise ValueError(f"hard labels must be integers (int64), got dtype {dset.y.dtype}")
        lo, hi = int(dset.y.min()), int(dset.y.max())
        if lo < 0 or hi >= num_classes:
            raise ValueError(
                f"hard labels range over [{lo}, {hi}], but dataset {info.name!r} has {num_classes} "
                f"classes; labels must lie in [0, {num_classes - 1}]"
            )
    else:
        raise ValueError(f"labels must be [n] (hard) or [n, C] (soft), got shape {tuple(dset.y.shape)}")


def train_on_set(
    protocol: EvalProtocol,
    dset: DistilledSet,
    info: DatasetInfo,
    *,
    generator: torch.Generator,
    device: torch.device | str,
    network: str | None = None,
    progress: Callable[..., None] | None = None,
) -> nn.Module:
    """Train one freshly initialised network (``network``, default ``protocol.network``) on ``dset``.

    Args:
        protocol: the recipe (network, optimiser, schedule, augmentation).
        dset: the distilled set; hard labels train with cross-entropy, soft labels with the soft
            cross-entropy ``-(y * log_softmax(logits)).sum(1).mean()``.
        info: the dataset's facts (input shape, number of classes, DSA strategy).
        generator: a CPU generator, the model's only randomness: initial weights, batch order and
            augmentation parameters are drawn from it in that order.
        device: where the model and the set live while training.
        network: network spec to train; defaults to the protocol's primary network.
        progress: optional callback; one that takes ``**values`` gets ``epoch=`` and ``epochs=`` after each
            epoch (fine events, :func:`distillbench.harness.progress.emit`).

    Returns:
        The trained model, on ``device``, in eval mode.

    Raises:
        ValueError: if the set does not fit ``info`` or the protocol, or ``generator`` is not a CPU generator.
    """
    _check_inputs(protocol, dset, info)
    if generator.device.type != "cpu":
        # Networks are built on the CPU and initialised from the generator before moving to the device.
        raise ValueError(f"train_on_set needs a CPU torch.Generator, got one on {generator.device}")
    device = torch.device(device)
    model = build_network(network or protocol.network, info, generator).to(device)
    # Detached: a set fresh from a method may still require grad, and evaluation must not write into it.
    x = dset.x.detach().to(device=device, dtype=torch.float32)
    y = dset.y.detach().to(device=device, dtype=torch.float32 if dset.soft else torch.long)
    augment = DSA(info.dsa_strategy) if protocol.augment == "dsa" else DSA("none")
    relabel = None
    if getattr(protocol, "relabel", "none") == "online":
        from distillbench.methods.relabel import online_relabeler

        relabel = online_relabeler(dset, info, device)  # soft labels of each augmented batch from the set's teacher

    optimizer = torch.optim.SGD(
        model.parameters(), lr=protocol.lr, momentum=protocol.momentum, weight_decay=protocol.weight_decay
    )
    decay_epoch = int(protocol.epochs * protocol.lr_decay_at)
    n = x.shape[0]
    batch = min(protocol.batch_size, n)
    soft = relabel is not None or dset.soft
    forward = compiled.training_forward(model, device, protocol.epochs * math.ceil(n / batch))
    model.train()
    chunk = microbatch.chunk_size(model, x[:batch])  # CPU micro-batches (harness/microbatch.py)
    for epoch in range(protocol.epochs):
        if epoch == decay_epoch:
            for group in optimizer.param_groups:
                group["lr"] = protocol.lr * protocol.lr_decay_factor
        # The permutation is drawn on the CPU generator so batch order does not depend on the device.
        order = torch.randperm(n, generator=generator).to(device)
        for start in range(0, n, batch):
            idx = order[start : start + batch]
            xb = augment.per_sample(x[idx], generator)
            target = relabel(xb) if relabel is not None else y[idx]
            optimizer.zero_grad(set_to_none=True)
            microbatch.backward_mean_loss(forward, xb, target, soft=soft, chunk=chunk)
            optimizer.step()
        emit(
            progress,
            (epoch + 1) / protocol.epochs,
            f"epoch {epoch + 1}/{protocol.epochs}",
            fine=True,
            epoch=epoch + 1,
            epochs=protocol.epochs,
        )
    return model.eval()


def correct_mask(model: nn.Module, split: Split, *, device: torch.device | str, batch_size: int = 1024) -> torch.Tensor:
    """Bool ``[n]`` on ``device``: whether ``model`` classifies each sample of ``split`` correctly."""
    device = torch.device(device)
    x = split.x.to(device=device, dtype=torch.float32)
    y = split.y.to(device=device, dtype=torch.long)
    model.eval()
    out = torch.zeros(y.shape[0], dtype=torch.bool, device=device)
    with torch.no_grad():
        for start in range(0, y.shape[0], batch_size):
            pred = model(x[start : start + batch_size]).argmax(dim=1)
            out[start : start + batch_size] = pred == y[start : start + batch_size]
    return out


def _accuracy_from_mask(correct: torch.Tensor, y: torch.Tensor, num_classes: int) -> tuple[float, list[float]]:
    if y.numel() == 0:
        return math.nan, [math.nan] * num_classes
    y = y.to(device=correct.device, dtype=torch.long)
    hits = torch.bincount(y[correct], minlength=num_classes)
    total = torch.bincount(y, minlength=num_classes)
    per_class = [c / t if t > 0 else math.nan for c, t in zip(hits.tolist(), total.tolist(), strict=True)]
    return int(hits.sum()) / int(y.numel()), per_class


def accuracy(
    model: nn.Module,
    split: Split,
    num_classes: int,
    *,
    device: torch.device | str,
    batch_size: int = 1024,
) -> tuple[float, list[float]]:
    """Top-1 accuracy of ``model`` on ``split``, overall and per class.

    Args:
        model: a trained network (switched to eval mode here).
        split: samples and integer labels; moved to ``device`` if they are not there already.
        num_classes: C, the length of the per-class list.
        device: where to run the forward passes.
        batch_size: samples per forward pass.

    Returns:
        The fraction of correct predictions and, for each class, the fraction of its samples predicted
        correctly (``nan`` for a class without samples; everything ``nan`` for an empty split).
    """
    correct = correct_mask(model, split, device=device, batch_size=batch_size)
    return _accuracy_from_mask(correct, split.y, num_classes)


class Scorer:
    """Tests trained models on a dataset's test and validation splits and gathers every metric.

    Both engines (training here, replay in :mod:`~distillbench.harness.replay`) feed it one model at a
    time, so a metric is defined once for all protocols.
    """

    def __init__(self, data: DataBundle, device: torch.device) -> None:
        self.num_classes = data.info.num_classes
        self.device = device
        # Move the real splits once; every model then finds them on the device.
        self.test = Split(data.test.x.to(device), data.test.y.to(device), dict(data.test.groups))
        self.val = Split(data.val.x.to(device), data.val.y.to(device))
        self.bias = has_bias_groups(data.test)
        self.train_counts = data.train.class_counts(self.num_classes) if is_long_tailed(data.meta) else None
        self.acc_per_model: list[float] = []
        self.val_acc_per_model: list[float] = []
        self._per_class: list[list[float]] = []
        self._bias: list[dict[str, float]] = []

    def add(self, model: nn.Module) -> float:
        """Test one trained model; returns its test accuracy."""
        correct = correct_mask(model, self.test, device=self.device)
        acc, per_class = _accuracy_from_mask(correct, self.test.y, self.num_classes)
        val_acc, _ = accuracy(model, self.val, self.num_classes, device=self.device)
        self.acc_per_model.append(acc)
        self.val_acc_per_model.append(val_acc)
        self._per_class.append(per_class)
        if self.bias:
            self._bias.append(bias_metrics(correct, self.test))
        return acc

    def result(self, network: str, seconds: float) -> EvalResult:
        """The :class:`EvalResult` over the models added so far."""
        n = len(self.acc_per_model)
        acc_per_class = [sum(col) / n for col in zip(*self._per_class, strict=True)]
        extra: dict[str, float] = {}
        if self._bias:
            extra |= {key: statistics.fmean(m[key] for m in self._bias) for key in BIAS_COLUMNS}
        if self.train_counts is not None:
            extra |= shot_metrics(acc_per_class, self.train_counts)
        return EvalResult(
            network=network,
            acc_per_model=self.acc_per_model,
            acc_per_class=acc_per_class,
            val_acc_per_model=self.val_acc_per_model,
            seconds=seconds,
            **extra,
        )


def _model_progress(progress: Callable[..., None] | None, k: int, n_models: int) -> Callable[..., None] | None:
    """The epoch events of model ``k`` (of ``n_models``) as events of the whole evaluation; None without a taker."""
    if progress is None or not takes_values(progress):
        return None  # two-argument callbacks get one event per model, not per epoch

    def forward(fraction: float, message: str, **values: object) -> None:
        progress(
            (k + fraction) / n_models,
            f"eval model {k + 1}/{n_models}, {message}",
            model=k + 1,
            models=n_models,
            **values,
        )

    return forward


def evaluate(
    protocol: EvalProtocol,
    dset: DistilledSet,
    data: DataBundle,
    *,
    seed: int,
    device: torch.device | str = "cpu",
    progress: Callable[[float, str], None] | None = None,
    network: str | None = None,
) -> EvalResult:
    """Score ``dset`` under ``protocol``: train ``protocol.n_models`` fresh networks on it, test each.

    Args:
        protocol: the sealed recipe.
        dset: the distilled set, in the dataset's normalised space.
        data: the real dataset; its test split gives the accuracies, its validation split ``val_acc``.
        seed: the trial seed; model ``k`` uses ``derive_seed(seed, "eval", protocol.name, protocol.version, k)``.
        device: where to train and test.
        progress: optional callback ``(fraction_done, message)``, called after each model; one that also
            takes ``**values`` gets ``model=``, ``models=`` and, after each epoch, ``epoch=``, ``epochs=``.
        network: which of ``protocol.networks`` to train (default: the primary one).

    Returns:
        Per-model test and validation accuracies, per-class test accuracy and the wall time.

    Raises:
        ValueError: if the set's sample shape differs from ``data.info.shape``, its labels do not match
            the number of classes, or the protocol is malformed.
        ZCAMismatchError: (a ``ValueError``) the set was distilled in ZCA-whitened space and the data
            is not, or the reverse (``dset.meta["zca"]`` against ``data.info.zca``; missing = False).

    Example:
        >>> from dataclasses import replace
        >>> from distillbench.harness.protocols import QUICK_V1
        >>> result = evaluate(replace(QUICK_V1, epochs=50), dset, data, seed=0)  # doctest: +SKIP
        >>> print(f"{result.acc_mean:.3f} +- {result.acc_std:.3f}")  # doctest: +SKIP
    """
    if replays_set(protocol, dset):
        # Replay protocols (dd-replay-v1), and text-v1 for sets with learned steps (dd), re-apply a
        # set's learned inner steps instead of training.
        from distillbench.harness.replay import replay

        return replay(protocol, dset, data, seed=seed, device=device, progress=progress, network=network)
    start_time = time.perf_counter()
    network = network or protocol.network
    if network not in protocol.networks:
        raise ValueError(f"network {network!r} is not one of protocol {protocol.id}'s networks {protocol.networks}")
    info = data.info
    _check_inputs(protocol, dset, info)
    device = torch.device(device)
    scorer = Scorer(data, device)
    seeds = [derive_seed(seed, "eval", protocol.name, protocol.version, k) for k in range(protocol.n_models)]
    models = maybe_train_batched(protocol, dset, info, seeds=seeds, device=device, network=network, progress=progress)
    n_models = protocol.n_models
    for k in range(n_models):
        if models is not None:
            model = models[k]
        else:
            generator = torch_generator(seeds[k], "cpu")
            model = train_on_set(
                protocol,
                dset,
                info,
                generator=generator,
                device=device,
                network=network,
                progress=_model_progress(progress, k, n_models),
            )
        acc = scorer.add(model)
        emit(
            progress,
            (k + 1) / n_models,
            f"eval model {k + 1}/{n_models}: test acc {acc:.4f}",
            model=k + 1,
            models=n_models,
        )
    return scorer.result(network, time.perf_counter() - start_time)
