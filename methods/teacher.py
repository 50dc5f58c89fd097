"""Teachers: networks trained on the real (possibly long-tailed) training split, shared by every trial.

The teacher is what the ``teacher`` and ``adsa`` label stages, the ``sre2l`` method and online
relabelling (``EvalProtocol.relabel = "online"``) ask for soft labels. It is trained once per

    (dataset display name with its parameters, a fingerprint of the training tensors, recipe)

where the recipe (:class:`TeacherRecipe`) holds the network spec, the training schedule and the seed.
The fingerprint keeps two copies that share a display name apart (``mnist`` from the full MNIST and
from the 10k-image development copy). Each key is trained once:

* in-process, a memo returns the same trained network to every later trial of the worker;
* on disk, ``<cache_dir>/<key>.safetensors`` (the ``state_dict``, BatchNorm running statistics
  included) and ``<key>.json`` (recipe, dataset, class counts, validation accuracy, training time)
  are written to temporary files and renamed into place, under a file lock (``<key>.lock``), so
  concurrent Ray workers wait for the first one instead of training it again.

The key, the data fingerprint, the lock and the sidecar-last writes are the rules of every cached
artefact, stated once in :mod:`distillbench.harness.artefacts`.

``cache_dir`` is ``<results>/teachers`` when the runner knows a (local) results directory
(``Context.cache_dir``), else ``$DISTILLBENCH_CACHE/teachers`` or ``~/.cache/distillbench/teachers``.

Recipe defaults (chosen to be cheap on CPU for digits and the 10k-image MNIST, and stated here
because every teacher-based row depends on them): ConvNet with batch norm (``convnet[norm=batchnorm,
width=32]``; batch norm because SRe2L's recovery matches BatchNorm statistics; auto depth, i.e. 2
blocks on 8x8 digits and 3 on 28x28 MNIST), SGD lr 0.01 momentum 0.9 weight decay 5e-4, batch 64,
20 epochs or as many as give at least 1,000 SGD steps (small splits), the rate x0.1 after half, DSA
augmentation with the dataset's strategy (parameters per sample), plain cross-entropy on the
long-tailed data (the teacher is deliberately as biased as the data: that bias is what ADSA
corrects). Its accuracy on the balanced validation split is recorded.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from distillbench.harness.artefacts import (
    CACHE_ENV,  # noqa: F401 - re-exported: the teacher cache honours the same variable
    DEFAULT_CACHE,  # noqa: F401
    cache_root,
    content_id,
    data_fingerprint,
    exclusive,
    write_json,
)
from distillbench.harness.errors import DataError
from distillbench.harness.store import atomic_write
from distillbench.harness.types import DataBundle, DatasetInfo

DEFAULT_TEACHER_NET = "convnet[norm=batchnorm,width=32]"
DEFAULT_TEACHER_EPOCHS = 20
# Small long-tailed splits (digits-LT: 300-560 images, 5-9 batches an epoch) would get only 100-200
# SGD steps in 20 epochs; measured on digits[imbalance=10], such a teacher reached 77% validation
# accuracy, below a model trained on 10 random real images per class. At least this many steps:
DEFAULT_MIN_STEPS = 1000


@dataclasses.dataclass(frozen=True)
class TeacherRecipe:
    """How a teacher is trained (every field is part of the cache key)."""

    net: str = DEFAULT_TEACHER_NET
    epochs: int = DEFAULT_TEACHER_EPOCHS
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 5e-4
    batch_size: int = 64
    lr_decay_at: float = 0.5
    augment: Literal["dsa", "none"] = "dsa"
    seed: int = 0
    min_steps: int = DEFAULT_MIN_STEPS

    def __post_init__(self) -> None:
        if self.epochs < 1:
            raise ValueError(f"teacher epochs must be at least 1, got {self.epochs}")
        if self.batch_size < 1:
            raise ValueError(f"teacher batch_size must be at least 1, got {self.batch_size}")
        if not self.lr > 0:
            raise ValueError(f"teacher lr must be positive, got {self.lr}")
        if self.min_steps < 0:
            raise ValueError(f"teacher min_steps must be non-negative, got {self.min_steps}")


@dataclasses.dataclass
class Teacher:
    """A trained teacher and what it was trained on.

    Attributes:
        model: the network, in eval mode, parameters frozen (CPU copy; see :meth:`on`).
        key: the cache key.
        path: the ``.safetensors`` file holding it.
        recipe: how it was trained.
        dataset: display name of the dataset it was trained on.
        class_counts: training samples per class (the prior of ADSA).
        val_acc: accuracy on the dataset's validation split (``nan`` if the split is empty).
    """

    model: nn.Module
    key: str
    path: Path
    recipe: TeacherRecipe
    dataset: str
    class_counts: list[int]
    val_acc: float
    _copies: dict[str, nn.Module] = dataclasses.field(default_factory=dict, repr=False)

    def on(self, device: torch.device | str) -> nn.Module:
        """The model on ``device`` (one copy per device, made once)."""
        device = torch.device(device)
        if device.type == "cpu":
            return self.model
        key = str(device)
        if key not in self._copies:
            self._copies[key] = _frozen(_copy_module(self.model).to(device))
        return self._copies[key]

    def log_prior(self) -> torch.Tensor:
        """``log pi_y``: log class frequencies of the training split (a count of 0 counts as 1)."""
        counts = torch.tensor(self.class_counts, dtype=torch.float64).clamp_min(1.0)
        return (counts / counts.sum()).log().float()

    @torch.no_grad()
    def logits(self, x: torch.Tensor, *, device: torch.device | str = "cpu", batch_size: int = 512) -> torch.Tensor:
        """Teacher logits ``[n, C]`` (float32, CPU) of samples ``x``."""
        model = self.on(device)
        out = [
            model(x[i : i + batch_size].to(device=device, dtype=torch.float32)).float().cpu()
            for i in range(0, x.shape[0], batch_size)
        ]
        return torch.cat(out) if out else torch.zeros(0, len(self.class_counts))

    def reference(self) -> dict[str, Any]:
        """What a distilled set records in ``meta["teacher"]`` so evaluation can find the teacher again."""
        return {
            "key": self.key,
            "path": str(self.path),
            "net": self.recipe.net,
            "dataset": self.dataset,
            "val_acc": self.val_acc,
            "class_counts": list(self.class_counts),
        }


# In-process memo: (cache file) -> Teacher. A worker that runs many trials trains or loads each once.
_MEMO: dict[str, Teacher] = {}


def default_cache_dir() -> Path:
    """``$DISTILLBENCH_CACHE/teachers`` or ``~/.cache/distillbench/teachers``."""
    return cache_root() / "teachers"


def teacher_key(data: DataBundle, recipe: TeacherRecipe) -> str:
    """The cache key of the teacher for ``data`` trained with ``recipe``."""
    return content_id({"dataset": data.info.name, "data": data_fingerprint(data), "recipe": dataclasses.asdict(recipe)})


def get_teacher(
    data: DataBundle,
    recipe: TeacherRecipe | None = None,
    *,
    cache_dir: Path | None = None,
    device: torch.device | str = "cpu",
) -> Teacher:
    """The teacher for ``data`` and ``recipe``: from the memo, else from ``cache_dir``, else trained and saved.

    Args:
        data: the dataset; the teacher trains on ``data.train`` and is scored on ``data.val``.
        recipe: the training recipe (default :class:`TeacherRecipe`).
        cache_dir: where teachers are stored (default :func:`default_cache_dir`).
        device: where to train if it has to be trained.

    Raises:
        DataError: a cached file exists but cannot be read.
    """
    recipe = recipe or TeacherRecipe()
    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    key = teacher_key(data, recipe)
    path = (cache_dir / f"{key}.safetensors").resolve()
    memo_key = str(path)
    if memo_key in _MEMO:
        return _MEMO[memo_key]
    cache_dir.mkdir(parents=True, exist_ok=True)
    # One trainer per key across processes: the others wait here, then find the finished files.
    with exclusive(cache_dir, key):
        if path.is_file() and path.with_suffix(".json").is_file():
            teacher = load_teacher(path, data.info)
        else:
            teacher = _train_and_save(data, recipe, key, path, torch.device(device))
    _MEMO[memo_key] = teacher
    return teacher


def load_teacher(path: Path | str, info: DatasetInfo) -> Teacher:
    """Load a teacher saved by :func:`get_teacher` (its ``.safetensors`` and ``.json`` beside it).

    Raises:
        DataError: a file is missing or unreadable.
    """
    from safetensors.torch import load_file

    from distillbench.harness.networks import build_network
    from distillbench.harness.seeding import torch_generator

    path = Path(path)
    memo = _MEMO.get(str(path.resolve()))
    if memo is not None:
        return memo
    sidecar = path.with_suffix(".json")
    if not path.is_file() or not sidecar.is_file():
        raise DataError(
            f"teacher {str(path)!r} (or its .json) not found; the set was labelled with a teacher cached on "
            "another machine or in a removed cache: re-run the trial, or copy the teachers/ folder with it"
        )
    try:
        meta = json.loads(sidecar.read_text())
        state = load_file(str(path))
        recipe = TeacherRecipe(**meta["recipe"])
        model = build_network(recipe.net, info, torch_generator(0))
        model.load_state_dict(state)
    except Exception as exc:
        raise DataError(f"cannot read teacher {str(path)!r}: {type(exc).__name__}: {exc}") from None
    teacher = Teacher(
        model=_frozen(model),
        key=meta["key"],
        path=path.resolve(),
        recipe=recipe,
        dataset=meta["dataset"],
        class_counts=list(meta["class_counts"]),
        val_acc=float(meta["val_acc"]),
    )
    _MEMO[str(path.resolve())] = teacher
    return teacher


def _frozen(model: nn.Module) -> nn.Module:
    model.eval()
    model.requires_grad_(False)
    return model


def _copy_module(model: nn.Module) -> nn.Module:
    import copy

    return copy.deepcopy(model)


def _train_and_save(data: DataBundle, recipe: TeacherRecipe, key: str, path: Path, device: torch.device) -> Teacher:
    from safetensors.torch import save_file

    start = time.perf_counter()
    model = train_teacher(data, recipe, device)
    seconds = time.perf_counter() - start
    model = _frozen(model.cpu())
    val_acc = _accuracy(model, data.val.x, data.val.y)
    counts = data.train.class_counts(data.info.num_classes)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    sidecar = {
        "key": key,
        "dataset": data.info.name,
        "data_fingerprint": data_fingerprint(data),
        "recipe": dataclasses.asdict(recipe),
        "class_counts": counts,
        "val_acc": val_acc,
        "epochs_trained": teacher_epochs(recipe, len(data.train)),
        "train_seconds": seconds,
        "device": str(device),
    }
    atomic_write(path, lambda tmp: save_file(state, tmp))
    # The JSON goes last: a teacher counts as cached only when both files are complete.
    write_json(path.with_suffix(".json"), sidecar)
    return Teacher(model, key, path, recipe, data.info.name, counts, val_acc)


@torch.no_grad()
def _accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    if y.numel() == 0:
        return float("nan")
    pred = torch.cat([model(x[i : i + 512].float()).argmax(1) for i in range(0, x.shape[0], 512)])
    return float((pred == y).double().mean())


def teacher_epochs(recipe: TeacherRecipe, n: int) -> int:
    """Epochs actually trained on ``n`` samples: ``recipe.epochs``, or more to reach ``recipe.min_steps`` steps."""
    per_epoch = math.ceil(n / min(recipe.batch_size, max(n, 1))) if n > 0 else 1
    return max(recipe.epochs, math.ceil(recipe.min_steps / per_epoch))


def train_teacher(data: DataBundle, recipe: TeacherRecipe, device: torch.device | str = "cpu") -> nn.Module:
    """Train a fresh ``recipe.net`` on ``data.train`` with cross-entropy (see the module docstring).

    All randomness (initial weights, batch order, augmentation) comes from one CPU generator seeded
    with ``recipe.seed``, so a teacher is the same on every run of the same recipe and data.
    """
    from distillbench.harness.augment import DSA
    from distillbench.harness.networks import build_network
    from distillbench.harness.seeding import derive_seed, torch_generator

    device = torch.device(device)
    info = data.info
    gen = torch_generator(derive_seed("teacher", recipe.seed), "cpu")
    model = build_network(recipe.net, info, gen).to(device)
    x = data.train.x.to(device=device, dtype=torch.float32)
    y = data.train.y.to(device=device, dtype=torch.long)
    augment = DSA(info.dsa_strategy if recipe.augment == "dsa" else "none")
    opt = torch.optim.SGD(model.parameters(), lr=recipe.lr, momentum=recipe.momentum, weight_decay=recipe.weight_decay)
    n = x.shape[0]
    batch = min(recipe.batch_size, n)
    epochs = teacher_epochs(recipe, n)
    decay_epoch = int(epochs * recipe.lr_decay_at)
    model.train()
    for epoch in range(epochs):
        if epoch == decay_epoch:
            for group in opt.param_groups:
                group["lr"] = recipe.lr * 0.1
        order = torch.randperm(n, generator=gen).to(device)
        for start in range(0, n, batch):
            idx = order[start : start + batch]
            if idx.numel() < 2 and any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules()):
                continue  # batch norm cannot train on a single sample
            loss = F.cross_entropy(model(augment.per_sample(x[idx], gen)), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    return model


__all__ = [
    "DEFAULT_TEACHER_NET",
    "Teacher",
    "TeacherRecipe",
    "default_cache_dir",
    "get_teacher",
    "load_teacher",
    "teacher_key",
    "train_teacher",
]


@dataclasses.dataclass(frozen=True)
class TeacherOptions:
    """Options shared by everything that uses a teacher (label stages ``teacher``/``adsa``, method ``sre2l``).

    The teacher fields enter the identity of the sets made with them.
    """

    temperature: float = dataclasses.field(default=1.0, metadata={"help": "softmax temperature of the soft labels"})
    teacher_net: str = dataclasses.field(default=DEFAULT_TEACHER_NET, metadata={"help": "network spec of the teacher"})
    teacher_epochs: int = dataclasses.field(
        default=DEFAULT_TEACHER_EPOCHS, metadata={"help": "training epochs of the teacher"}
    )
    teacher_seed: int = dataclasses.field(default=0, metadata={"help": "seed of the teacher's training"})
    teacher_min_steps: int = dataclasses.field(
        default=DEFAULT_MIN_STEPS, metadata={"help": "at least this many teacher SGD steps (more epochs on small data)"}
    )

    def __post_init__(self) -> None:
        if not (self.temperature > 0 and math.isfinite(self.temperature)):
            raise ValueError(f"temperature must be a positive number, got {self.temperature}; use e.g. temperature=1")
        if self.teacher_epochs < 1:
            raise ValueError(f"teacher_epochs must be at least 1, got {self.teacher_epochs}")
        if self.teacher_min_steps < 0:
            raise ValueError(f"teacher_min_steps must be non-negative, got {self.teacher_min_steps}")

    def recipe(self) -> TeacherRecipe:
        """The teacher's training recipe."""
        return TeacherRecipe(
            net=self.teacher_net, epochs=self.teacher_epochs, seed=self.teacher_seed, min_steps=self.teacher_min_steps
        )
