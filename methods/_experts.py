"""Expert trajectories: networks trained on the real data, one parameter snapshot per epoch, cached and shared.

Trajectory-matching methods (``mtt``, ``ftd``, ``datm``) distil by steering a student along the
training runs of *experts*. The experts depend only on the data and an :class:`ExpertRecipe`, so they
are trained once per

    (dataset display name with its parameters, fingerprint of the train tensors, recipe)

and stored, content-addressed, beside the rows (the rules of :mod:`distillbench.harness.artefacts`):

    <results>/buffers/<id>/expert_000.safetensors ... expert_<N-1>.safetensors
    <results>/buffers/<id>/buffer.json          (the sidecar, written last: only then is the buffer built)

``<results>`` may be a local path, an NFS path or an object-store URI (``s3://bucket/prefix``); without
one the user cache is used (``$DISTILLBENCH_CACHE/buffers`` or ``~/.cache/distillbench/buffers``).
Each expert file holds one float32 tensor ``trajectory`` of shape ``[epochs + 1, num_params]``: row 0 is
the initialisation, row ``e`` the parameters after epoch ``e``, each flattened in ``named_parameters()``
order (what MTT's ``ReparamModule`` works on; buffers such as BatchNorm statistics are not stored, as in
MTT). Its safetensors header carries the expert's validation accuracy and training seconds, so a build
that was killed resumes from the experts already written (the sidecar counts them as
``experts_reused``). Tensors are never pickled.

Training follows MTT's ``buffer.py``: for expert ``i`` a fresh ``recipe.net`` initialised from
``derive_seed(recipe.seed, "expert", i)``, SGD (``lr``, ``momentum``, ``weight_decay``; constant rate),
``epochs`` shuffled passes over the *train* split in batches of ``batch_size`` (the last batch may be
smaller), each batch augmented by DSA with per-sample parameters from the dataset's strategy, plain
cross-entropy. With ``flat=True`` each step is FTD's GSAM step instead (:func:`gsam_step`), and the id
differs. Batch order and augmentation draw from a second generator derived from the same seed and
index, so a buffer is the same on every run (on one device type). Each expert's accuracy on the
*validation* split is recorded; the test split is never touched.

Several trials or processes asking for one buffer at once build it once: the first holds the build
lock (:func:`distillbench.harness.artefacts.exclusive`), the others wait and load.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import logging
import math
import os
import socket
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from distillbench.harness.artefacts import (
    cache_root,
    claim_holder,
    content_id,
    data_fingerprint,
    exclusive,
    read_json,
    write_json,
)
from distillbench.harness.errors import ConfigError, DataError, DivergedError
from distillbench.harness.store import Location, location
from distillbench.harness.types import DataBundle, DatasetInfo

log = logging.getLogger(__name__)

FORMAT_VERSION = 1  # of the files; part of the id, so a format change never reads old buffers wrongly
SIDECAR = "buffer.json"
TENSOR = "trajectory"
_HEADER_KEY = "distillbench.expert"
# Trajectories read in this process are kept, least recently used dropped beyond this many bytes (a
# 100-expert CIFAR-10 buffer is 6.5 GB; a Ray worker per GPU must not hold all of it).
MEMO_BYTES = 2 << 30
_GSAM_EPS = 1e-12


@dataclasses.dataclass(frozen=True)
class ExpertRecipe:
    """How the experts of a buffer are trained; every field is part of the buffer id.

    ``rho`` and ``alpha`` act only with ``flat=True``; an SGD recipe's id ignores them, so recipes that
    differ only there share one buffer.

    Attributes:
        net: network spec (:mod:`distillbench.harness.networks`), e.g. ``convnet`` or ``convnet[width=32]``.
        num_experts: how many experts (independent training runs).
        epochs: epochs per expert (MTT's ``train_epochs``); an expert has ``epochs + 1`` snapshots.
        lr: SGD learning rate (MTT's ``lr_teacher``), constant.
        momentum: SGD momentum.
        weight_decay: SGD weight decay.
        batch_size: training batch (MTT's ``batch_train``).
        augment: ``dsa`` (per-sample DSA with the dataset's strategy) or ``none``.
        flat: train with FTD's GSAM (sharpness-aware, flat minima) instead of plain SGD.
        rho: GSAM perturbation radius (constant, as FTD's schedule is with a constant rate).
        alpha: GSAM weight of the surrogate-gap term.
        seed: seed from which every expert's randomness is derived.
    """

    net: str = "convnet"
    num_experts: int = 100
    epochs: int = 50
    lr: float = 0.01
    momentum: float = 0.0
    weight_decay: float = 0.0
    batch_size: int = 256
    augment: Literal["dsa", "none"] = "dsa"
    flat: bool = False
    rho: float = 0.01
    alpha: float = 0.4
    seed: int = 0

    def __post_init__(self) -> None:
        if not isinstance(self.net, str) or not self.net.strip():
            raise ConfigError(f"expert recipe: net must be a network spec such as 'convnet', got {self.net!r}")
        for name in ("num_experts", "epochs", "batch_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"expert recipe: {name} must be a positive integer, got {value!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise ConfigError(f"expert recipe: seed must be an integer, got {self.seed!r}")
        if not _finite(self.lr) or self.lr <= 0:
            raise ConfigError(f"expert recipe: lr must be a finite number > 0, got {self.lr!r}; MTT uses 0.01")
        if not _finite(self.momentum) or not 0 <= self.momentum < 1:
            raise ConfigError(f"expert recipe: momentum must be in [0, 1), got {self.momentum!r}")
        if not _finite(self.weight_decay) or self.weight_decay < 0:
            raise ConfigError(f"expert recipe: weight_decay must be a finite number >= 0, got {self.weight_decay!r}")
        if self.augment not in ("dsa", "none"):
            raise ConfigError(f"expert recipe: augment must be 'dsa' or 'none', got {self.augment!r}")
        if not isinstance(self.flat, bool):
            raise ConfigError(f"expert recipe: flat must be true or false, got {self.flat!r}")
        if not _finite(self.rho) or self.rho <= 0:
            raise ConfigError(f"expert recipe: rho must be a finite number > 0, got {self.rho!r}; FTD uses 0.01")
        if not _finite(self.alpha) or self.alpha < 0:
            raise ConfigError(f"expert recipe: alpha must be a finite number >= 0, got {self.alpha!r}; FTD uses 0.4")

    @property
    def optimizer(self) -> str:
        """``"flat"`` (GSAM) or ``"sgd"``."""
        return "flat" if self.flat else "sgd"


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


# ----------------------------------------------------------------------------------------- identity
def buffer_id(data: DataBundle, recipe: ExpertRecipe) -> str:
    """The content address of the buffer of ``recipe`` on ``data`` (16 hex digits)."""
    from distillbench.harness.plugins import NETWORKS

    fields = dataclasses.asdict(recipe)
    # Equivalent spellings of one network (``convnet`` and ``convnet[width=128]``) name one buffer.
    fields["net"] = NETWORKS.resolve(recipe.net).display
    if not recipe.flat:
        del fields["rho"], fields["alpha"]  # they change nothing without GSAM
    return content_id(
        {
            "artefact": "expert-buffer",
            "format": FORMAT_VERSION,
            "dataset": data.info.name,
            "data": data_fingerprint(data),
            "recipe": fields,
        }
    )


def buffers_location(results: str | Path | Location | None = None) -> Location:
    """``<results>/buffers``, or the user cache's ``buffers`` folder when ``results`` is ``None``."""
    if results is None:
        return location(cache_root() / "buffers")
    return location(results) / "buffers"


_EXT = ".safetensors"


def _expert_name(index: int) -> str:
    return f"expert_{index:03d}{_EXT}"


# ------------------------------------------------------------------------------------------- buffer
class ExpertBuffer:
    """A built buffer of expert trajectories (see the module docstring).

    Attributes:
        id: the content address.
        recipe: how the experts were trained.
        location: the buffer's folder (a :class:`~distillbench.harness.store.Location`).
        meta: the sidecar (``buffer.json``).
        build_seconds: seconds *this* :func:`get_buffer` call spent building it (0.0 when it was found
            built, also after waiting for another process to build it).
        num_experts: number of experts.
        epochs: epochs per expert (``epochs + 1`` snapshots).
        param_shapes: ``(name, shape)`` of each parameter in ``named_parameters()`` order.
        num_params: length of one snapshot.
    """

    def __init__(
        self, id: str, recipe: ExpertRecipe, location: Location, meta: dict[str, Any], build_seconds: float = 0.0
    ) -> None:
        self.id = id
        self.recipe = recipe
        self.location = location
        self.meta = meta
        self.build_seconds = float(build_seconds)
        self.num_experts = int(meta["num_experts"])
        self.epochs = int(meta["epochs"])
        self.param_shapes: list[tuple[str, tuple[int, ...]]] = [
            (str(name), tuple(int(s) for s in shape)) for name, shape in meta["param_shapes"]
        ]
        self.num_params = int(meta["num_params"])

    def __repr__(self) -> str:
        return (
            f"ExpertBuffer(id={self.id!r}, {self.meta.get('dataset')}, {self.recipe.net}, "
            f"{self.num_experts} experts x {self.epochs} epochs, {self.recipe.optimizer})"
        )

    def trajectory(self, expert: int) -> torch.Tensor:
        """Expert ``expert``'s snapshots, ``[epochs + 1, num_params]`` float32 on the CPU (row 0: the init).

        Read on first use and kept in a per-process memo (least recently used dropped beyond
        :data:`MEMO_BYTES`); treat the tensor as read-only.

        Raises:
            IndexError: ``expert`` is not in ``0 .. num_experts - 1``.
            DataError: the file is missing or does not hold the expected tensor.
        """
        if isinstance(expert, bool) or not 0 <= int(expert) < self.num_experts:
            raise IndexError(f"buffer {self.id} has experts 0..{self.num_experts - 1}, asked for {expert!r}")
        target = self.location / _expert_name(int(expert))
        cached = _MEMO.get(target.uri)
        if cached is not None:
            return cached
        tensor = _read_trajectory(target)
        expected = (self.epochs + 1, self.num_params)
        if tuple(tensor.shape) != expected:
            raise DataError(
                f"{target}: trajectory has shape {tuple(tensor.shape)}, the sidecar says {expected}; delete the "
                f"buffer folder {self.location} and build it again"
            )
        _MEMO.put(target.uri, tensor)
        return tensor

    def val_accuracies(self) -> list[float | None]:
        """Each expert's final accuracy on the validation split (``None`` without one)."""
        return [e.get("val_acc") for e in self.meta.get("experts", [])]

    def reference(self) -> dict[str, Any]:
        """What a distilled set records about the buffer it was made with (JSON-able).

        ``uri`` leaves out any query (endpoints, options); ``relpath`` is the folder relative to the
        results directory.
        """
        return {
            "id": self.id,
            "uri": str(self.location),
            "relpath": f"buffers/{self.id}",
            "dataset": self.meta.get("dataset"),
            "recipe": dataclasses.asdict(self.recipe),
            "num_experts": self.num_experts,
            "epochs": self.epochs,
            "build_seconds": self.build_seconds,
            "expert_val_acc": self.val_accuracies(),
        }


class _Memo:
    """A thread-safe LRU of trajectories, bounded in bytes."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._items: collections.OrderedDict[str, torch.Tensor] = collections.OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: str) -> torch.Tensor | None:
        with self._lock:
            value = self._items.get(key)
            if value is not None:
                self._items.move_to_end(key)
            return value

    def put(self, key: str, value: torch.Tensor) -> None:
        with self._lock:
            self._items[key] = value
            self._items.move_to_end(key)
            total = sum(t.numel() * t.element_size() for t in self._items.values())
            while total > self.limit and len(self._items) > 1:
                _, dropped = self._items.popitem(last=False)
                total -= dropped.numel() * dropped.element_size()

    def clear(self) -> None:
        with self._lock:
            self._items.clear()


_MEMO = _Memo(MEMO_BYTES)


def _read_trajectory(target: Location) -> torch.Tensor:
    from safetensors.torch import load

    try:
        tensors = load(target.read_bytes())
    except FileNotFoundError:
        raise DataError(f"expert file {target} is missing; delete the buffer folder and build it again") from None
    except Exception as exc:
        raise DataError(f"cannot read expert file {target}: {type(exc).__name__}: {exc}") from None
    if TENSOR not in tensors:
        raise DataError(f"{target} holds no {TENSOR!r} tensor; it is not an expert file written by distillbench")
    return tensors[TENSOR]


def _read_header(target: Location) -> dict[str, Any] | None:
    """The distillbench metadata in a safetensors header (read without the tensor data), or ``None``."""
    try:
        with target.fs.open_input_file(target.path) as stream:
            size = int.from_bytes(stream.read(8), "little")
            if not 0 < size < 1 << 24:
                return None
            header = json.loads(stream.read(size))
        return json.loads(header["__metadata__"][_HEADER_KEY])
    except (OSError, ValueError, KeyError, TypeError):
        return None


# ------------------------------------------------------------------------------------------- public
def get_buffer(
    data: DataBundle,
    recipe: ExpertRecipe,
    *,
    results: str | Path | Location | None = None,
    device: torch.device | str = "cpu",
    progress: Callable[[float, str], None] | None = None,
) -> ExpertBuffer:
    """The buffer of ``recipe`` on ``data``: loaded if built, else built once (waiting for another builder).

    Args:
        data: the dataset; experts train on ``data.train`` and are scored on ``data.val``.
        recipe: how the experts are trained.
        results: the results directory (local, NFS or ``s3://...``) whose ``buffers/`` folder holds it;
            ``None`` for the user cache.
        device: where experts are trained if they must be.
        progress: called as ``progress(fraction, "buffer <id>: expert i/N, epoch e/E")`` while building,
            and with a waiting message while another process builds it.

    Raises:
        ConfigError: the recipe does not fit the data (unknown network, DSA on text).
        DataError: a stored buffer cannot be read.
        DivergedError: an expert's parameters became non-finite (lower ``lr``).
    """
    _check_fits(data.info, recipe)
    bid = buffer_id(data, recipe)
    root = buffers_location(results)
    folder = root / bid
    meta = _load_sidecar(folder, bid)
    if meta is not None:
        return ExpertBuffer(bid, recipe, folder, meta, 0.0)
    last_report = [0.0]

    def waiting() -> None:
        if progress is None or time.monotonic() - last_report[0] < 5.0:
            return
        last_report[0] = time.monotonic()
        done = len(folder.files(".safetensors"))
        message = f"buffer {bid}: waiting for another process building it ({done}/{recipe.num_experts} experts written)"
        progress(done / recipe.num_experts, message)

    with exclusive(root, bid, on_wait=waiting):
        meta = _load_sidecar(folder, bid)  # built by the process we waited for
        if meta is not None:
            return ExpertBuffer(bid, recipe, folder, meta, 0.0)
        meta = _build(data, recipe, bid, folder, torch.device(device), progress)
    return ExpertBuffer(bid, recipe, folder, meta, meta["build_seconds"])


def load_buffer(folder: str | Path | Location) -> ExpertBuffer:
    """A built buffer from its folder (``<results>/buffers/<id>``), without the data it was made from.

    Raises:
        DataError: the folder holds no complete buffer.
    """
    loc = location(folder)
    meta = _load_sidecar(loc, loc.name)
    if meta is None:
        raise DataError(
            f"{loc} holds no complete expert buffer (no readable {SIDECAR}); it may still be building, or "
            "was interrupted: build it with 'distillbench buffers build' or by running the trial again"
        )
    return ExpertBuffer(loc.name, ExpertRecipe(**meta["recipe"]), loc, meta, 0.0)


def list_buffers(results: str | Path | Location | None = None) -> list[dict[str, Any]]:
    """The buffers under ``<results>/buffers`` (or the user cache), built and partial, sorted by id.

    Each entry: ``id``, ``status`` (``built`` or ``partial``), ``uri``, ``dataset``, ``net``,
    ``num_experts``, ``epochs``, ``experts_written``, ``optimizer`` (``sgd`` or ``flat``), ``size_bytes``,
    ``created`` (Unix time of the sidecar, or of the newest file of a partial buffer), ``age_s`` and
    ``claimed_by`` (object stores: ``host:pid`` of the process whose build claim is on a partial buffer).
    Fields a partial buffer cannot tell are ``None``.
    """
    import pyarrow.fs as pafs

    root = buffers_location(results)
    infos = root.fs.get_file_info(pafs.FileSelector(root.path, allow_not_found=True))
    entries = []
    for info in sorted(infos, key=lambda i: i.base_name):
        if info.type != pafs.FileType.Directory or info.base_name.startswith("."):
            continue
        folder = root / info.base_name
        files = [
            f
            for f in folder.fs.get_file_info(pafs.FileSelector(folder.path, allow_not_found=True))
            if f.type == pafs.FileType.File and not f.base_name.startswith(".")
        ]
        experts = sorted(f.base_name for f in files if f.base_name.startswith("expert_") and f.base_name.endswith(_EXT))
        meta = _load_sidecar(folder, info.base_name)
        described = meta if meta is not None else (_read_header(folder / experts[0]) if experts else None) or {}
        recipe = described.get("recipe") or {}
        mtimes = [f.mtime.timestamp() for f in files if f.mtime is not None]
        created = meta.get("created") if meta is not None else (max(mtimes) if mtimes else None)
        entries.append(
            {
                "id": info.base_name,
                "status": "built" if meta is not None else "partial",
                "uri": str(folder),
                "dataset": described.get("dataset"),
                "net": recipe.get("net"),
                "num_experts": recipe.get("num_experts"),
                "epochs": recipe.get("epochs"),
                "experts_written": len(experts),
                "optimizer": None if not recipe else ("flat" if recipe.get("flat") else "sgd"),
                "size_bytes": int(sum(f.size or 0 for f in files)),
                "created": created,
                "age_s": None if created is None else max(0.0, time.time() - created),
                "claimed_by": _claimed_by(root, info.base_name) if meta is None else None,
            }
        )
    return entries


def _claimed_by(root: Location, bid: str) -> str | None:
    holder = claim_holder(root, bid)
    return None if holder is None else f"{holder.get('host')}:{holder.get('pid')}"


# ------------------------------------------------------------------------------------------ building
def _check_fits(info: DatasetInfo, recipe: ExpertRecipe) -> None:
    from distillbench.harness.networks import resolve_network

    if recipe.augment == "dsa" and info.modality != "image":
        raise ConfigError(
            f"expert recipe: augment='dsa' needs image data, but {info.name!r} is {info.modality}; use augment='none'"
        )
    resolve_network(recipe.net).validate(info)


def _load_sidecar(folder: Location, bid: str) -> dict[str, Any] | None:
    meta = read_json(folder / SIDECAR)
    if meta is None:
        return None
    if meta.get("id") != bid or meta.get("format") != FORMAT_VERSION:
        raise DataError(
            f"{folder / SIDECAR} describes buffer {meta.get('id')!r} in format {meta.get('format')!r}, not {bid!r} in "
            f"format {FORMAT_VERSION}; delete the folder {folder} and build it again"
        )
    return meta


def _build(
    data: DataBundle,
    recipe: ExpertRecipe,
    bid: str,
    folder: Location,
    device: torch.device,
    progress: Callable[[float, str], None] | None,
) -> dict[str, Any]:
    from safetensors.torch import save

    from distillbench.harness.networks import build_network
    from distillbench.harness.runner import provenance
    from distillbench.harness.seeding import derive_seed, torch_generator

    start = time.perf_counter()
    fingerprint = data_fingerprint(data)
    shape_net = build_network(recipe.net, data.info, torch_generator(derive_seed(recipe.seed, "expert", 0)))
    param_shapes = [(name, tuple(p.shape)) for name, p in shape_net.named_parameters()]
    num_params = sum(math.prod(shape) for _, shape in param_shapes)
    describe = {"dataset": data.info.name, "recipe": dataclasses.asdict(recipe), "buffer": bid}
    experts: list[dict[str, Any]] = []
    reused = 0
    for index in range(recipe.num_experts):
        target = folder / _expert_name(index)
        done = _reusable(target, bid, recipe, num_params)
        if done is not None:
            experts.append(done)
            reused += 1
            continue

        def on_epoch(epoch: int, index: int = index) -> None:
            if progress is not None:
                fraction = (index + epoch / recipe.epochs) / recipe.num_experts
                progress(
                    fraction, f"buffer {bid}: expert {index + 1}/{recipe.num_experts}, epoch {epoch}/{recipe.epochs}"
                )

        expert_start = time.perf_counter()
        trajectory, model = train_expert(data, recipe, index, device=device, on_epoch=on_epoch)
        record = {
            "expert": index,
            "val_acc": _accuracy(model, data.val.x, data.val.y, device),
            "seconds": time.perf_counter() - expert_start,
            "device": _device_name(device),
        }
        header = {_HEADER_KEY: json.dumps({**record, **describe, "shape": list(trajectory.shape)})}
        # Each expert is written (whole) as soon as it is trained: a killed build keeps it.
        target.write_bytes(save({TENSOR: trajectory.contiguous()}, metadata=header))
        experts.append(record)
    seconds = time.perf_counter() - start
    meta = {
        "id": bid,
        "format": FORMAT_VERSION,
        "dataset": data.info.name,
        "data_fingerprint": fingerprint,
        "recipe": dataclasses.asdict(recipe),
        "num_experts": recipe.num_experts,
        "epochs": recipe.epochs,
        "param_shapes": [[name, list(shape)] for name, shape in param_shapes],
        "num_params": num_params,
        "experts": experts,
        "experts_reused": reused,
        "train_seconds": sum(float(e["seconds"]) for e in experts),
        "build_seconds": seconds,
        "device": _device_name(device),
        "builder": {"host": socket.gethostname(), "pid": os.getpid()},
        "created": time.time(),
        **{k: provenance()[k] for k in ("package_version", "git_sha", "torch_version")},
    }
    write_json(folder / SIDECAR, meta)  # last: from now on the buffer counts as built
    return meta


def _reusable(target: Location, bid: str, recipe: ExpertRecipe, num_params: int) -> dict[str, Any] | None:
    """The record of an expert file a killed build left complete, or ``None`` to train it (again)."""
    if not target.is_file():
        return None
    header = _read_header(target)
    if header is None or header.get("buffer") != bid or header.get("shape") != [recipe.epochs + 1, num_params]:
        log.warning("expert file %s is unreadable or belongs to another buffer; training it again", target)
        return None
    return {k: header[k] for k in ("expert", "val_acc", "seconds", "device")}


def _device_name(device: torch.device) -> str:
    if device.type == "cuda" and torch.cuda.is_available():
        return f"{device} ({torch.cuda.get_device_name(device)})"
    return str(device)


@torch.no_grad()
def _accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, device: torch.device) -> float | None:
    if y.numel() == 0:
        return None
    model.eval()
    correct = 0
    for i in range(0, x.shape[0], 512):
        pred = model(x[i : i + 512].to(device=device, dtype=torch.float32)).argmax(1).cpu()
        correct += int((pred == y[i : i + 512]).sum())
    return correct / int(y.numel())


def flatten_parameters(params: Sequence[torch.Tensor]) -> torch.Tensor:
    """One float32 CPU vector of ``params`` in order (a snapshot)."""
    return torch.cat([p.detach().reshape(-1) for p in params]).float().cpu()


def train_expert(
    data: DataBundle,
    recipe: ExpertRecipe,
    index: int,
    *,
    device: torch.device | str = "cpu",
    on_epoch: Callable[[int], None] | None = None,
) -> tuple[torch.Tensor, nn.Module]:
    """Train expert ``index`` of ``recipe`` on ``data.train`` (see the module docstring).

    Returns:
        The trajectory ``[epochs + 1, num_params]`` (float32, CPU) and the trained network.

    Raises:
        DivergedError: the parameters became non-finite.
    """
    from distillbench.harness.augment import DSA
    from distillbench.harness.networks import build_network
    from distillbench.harness.seeding import derive_seed, torch_generator

    device = torch.device(device)
    info = data.info
    model = build_network(recipe.net, info, torch_generator(derive_seed(recipe.seed, "expert", index))).to(device)
    # Batch order and DSA draws: a CPU generator of their own, so the init above is exactly the spec's
    # and the draws do not depend on the training device.
    gen = torch_generator(derive_seed(recipe.seed, "expert", index, "train"))
    params = [p for _, p in model.named_parameters()]
    trajectory = torch.empty(recipe.epochs + 1, sum(p.numel() for p in params))
    trajectory[0] = flatten_parameters(params)
    opt = torch.optim.SGD(params, lr=recipe.lr, momentum=recipe.momentum, weight_decay=recipe.weight_decay)
    augment = DSA(info.dsa_strategy if recipe.augment == "dsa" else "none")
    x = data.train.x.to(device=device, dtype=torch.float32)
    y = data.train.y.to(device=device, dtype=torch.long)
    n = x.shape[0]
    batch = min(recipe.batch_size, max(n, 1))
    batch_norm = any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
    model.train()
    for epoch in range(1, recipe.epochs + 1):
        order = torch.randperm(n, generator=gen).to(device)
        for start in range(0, n, batch):
            idx = order[start : start + batch]
            if idx.numel() < 2 and batch_norm:
                continue  # batch norm cannot train on a single sample
            xb, yb = augment.per_sample(x[idx], gen), y[idx]
            if recipe.flat:
                gsam_step(model, lambda xb=xb, yb=yb: F.cross_entropy(model(xb), yb), recipe.rho, recipe.alpha)
            else:
                opt.zero_grad(set_to_none=True)
                F.cross_entropy(model(xb), yb).backward()
            opt.step()
        trajectory[epoch] = flatten_parameters(params)
        if not torch.isfinite(trajectory[epoch]).all():
            raise DivergedError(
                f"expert {index} of {recipe.net} diverged in epoch {epoch} (lr={recipe.lr}); lower the expert lr"
            )
        if on_epoch is not None:
            on_epoch(epoch)
    return trajectory, model


# -------------------------------------------------------------------------------------------- GSAM
def gsam_perturbation(params: Sequence[torch.Tensor], grads: Sequence[torch.Tensor], rho: float) -> list[torch.Tensor]:
    """GSAM's adaptive ascent step ``e = rho * g * w^2 / (||(|w| * g)|| + 1e-12)`` (norm over all parameters)."""
    norm = torch.linalg.vector_norm(
        torch.stack([torch.linalg.vector_norm(p.abs() * g) for p, g in zip(params, grads, strict=True)])
    )
    scale = rho / (norm + _GSAM_EPS)
    return [scale * g * p.pow(2) for p, g in zip(params, grads, strict=True)]


def gsam_direction(
    grads: Sequence[torch.Tensor], perturbed: Sequence[torch.Tensor], alpha: float
) -> list[torch.Tensor]:
    """GSAM's update direction ``d = g_p - alpha * g_perp`` from the gradient ``g`` and the perturbed one ``g_p``.

    ``g_perp = g - cos(g, g_p) * ||g|| * g_p / ||g_p||`` is the part of ``g`` orthogonal to ``g_p``
    (norms and the cosine over all parameters together).
    """
    inner = sum((g * gp).sum() for g, gp in zip(grads, perturbed, strict=True))
    norm_g = torch.sqrt(sum(g.pow(2).sum() for g in grads))
    norm_gp = torch.sqrt(sum(gp.pow(2).sum() for gp in perturbed))
    cosine = inner / (norm_g * norm_gp + _GSAM_EPS)
    return [
        gp - alpha * (g - cosine * norm_g * gp / (norm_gp + _GSAM_EPS)) for g, gp in zip(grads, perturbed, strict=True)
    ]


def gsam_step(model: nn.Module, loss_fn: Callable[[], torch.Tensor], rho: float, alpha: float) -> torch.Tensor:
    """Set each parameter's ``.grad`` to FTD's GSAM direction; the caller's optimiser then steps with it.

    ``loss_fn`` computes the loss of one fixed batch (already augmented) with the model's current
    parameters; it is called twice: at ``w`` and at ``w + e`` (:func:`gsam_perturbation`). The
    parameters are restored exactly (copies, not ``w + e - e``), and buffers such as BatchNorm
    running statistics are left as the first pass set them (FTD freezes them in the second pass).

    Returns:
        The loss at ``w`` (detached).
    """
    params = [p for p in model.parameters() if p.requires_grad]
    loss = loss_fn()
    grads = torch.autograd.grad(loss, params)
    saved = [p.detach().clone() for p in params]
    buffers = [b.detach().clone() for b in model.buffers()]
    with torch.no_grad():
        for p, e in zip(params, gsam_perturbation(saved, grads, rho), strict=True):
            p.add_(e)
    perturbed = torch.autograd.grad(loss_fn(), params)
    with torch.no_grad():
        for p, w in zip(params, saved, strict=True):
            p.copy_(w)
        for b, kept in zip(model.buffers(), buffers, strict=True):
            b.copy_(kept)
    for p, d in zip(params, gsam_direction(grads, perturbed, alpha), strict=True):
        p.grad = d.detach()
    return loss.detach()


__all__ = [
    "ExpertBuffer",
    "ExpertRecipe",
    "buffer_id",
    "buffers_location",
    "get_buffer",
    "gsam_direction",
    "gsam_perturbation",
    "gsam_step",
    "list_buffers",
    "load_buffer",
    "train_expert",
]
