"""Cached artefacts shared by trials: content ids, build-once locks, files written whole, sidecar last.

Trained long-tail teachers (``methods/teacher.py``) and expert trajectories (``methods/_experts.py``)
follow the same four rules, which live here so the project states each of them once:

* **Content-addressed.** An artefact's id is :func:`content_id` of a JSON document naming what it was
  made from: the dataset's display name with its parameters, :func:`data_fingerprint` of the training
  tensors (two copies that share a display name, such as the full MNIST and the 10k-image development
  copy, stay apart) and the recipe. Equal inputs give equal ids on every machine.
* **Built once.** :func:`exclusive` admits one builder per id across threads, processes and nodes; the
  others wait, then find the finished artefact. Local and NFS paths use a ``filelock.FileLock`` on
  ``<dir>/<id>.lock`` (the kernel releases it when its holder dies). Object stores have no locks, so the
  builder writes a claim object ``<dir>/<id>/claim.json`` (owner, host, pid, time) and refreshes it with
  a heartbeat; a claim whose heartbeat stopped is stale and taken over (see :func:`exclusive`).
* **Written whole.** Every file is written atomically (:meth:`Location.write_bytes`: a renamed temporary
  file locally, one PUT on object stores), so a crash never leaves half a file under its final name.
* **Sidecar last.** An artefact counts as built only when its JSON sidecar exists, and the sidecar is
  written after everything it describes.

Artefacts live beside the rows of a results directory (``<results>/teachers``, ``<results>/buffers``)
or, without one, in the user cache :func:`cache_root` (``$DISTILLBENCH_CACHE`` or ``~/.cache/distillbench``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from distillbench.harness.store import Location, location

if TYPE_CHECKING:
    from distillbench.harness.types import DataBundle

log = logging.getLogger(__name__)

CACHE_ENV = "DISTILLBENCH_CACHE"
DEFAULT_CACHE = "~/.cache/distillbench"

# Object-store claims. A live builder rewrites its claim every HEARTBEAT_S; a claim not refreshed for
# CLAIM_EXPIRY_S is stale (its builder died or lost the store), so a dead builder blocks others for at
# most this long. Ten minutes is far above any heartbeat gap a busy but live process shows.
CLAIM_EXPIRY_S = 600.0
HEARTBEAT_S = 30.0
# After writing a claim the builder waits this long and reads it back: two builders that both saw no
# claim both write one, the store keeps the last, and only the writer of that one goes on. The window
# it closes is between one builder's read and its write (milliseconds), far below this.
CLAIM_SETTLE_S = 2.0
# How often a waiting caller looks again (and reports that it waits).
POLL_S = 1.0


def cache_root() -> Path:
    """Where artefacts built outside a results directory go: ``$DISTILLBENCH_CACHE`` or ``~/.cache/distillbench``."""
    return Path(os.environ.get(CACHE_ENV) or DEFAULT_CACHE).expanduser()


def data_fingerprint(data: DataBundle) -> str:
    """A short hash of the training tensors (samples and labels); validation and test do not enter it."""
    digest = hashlib.sha256()
    for t in (data.train.x, data.train.y):
        t = t.detach().cpu().contiguous()
        digest.update(f"{t.dtype}{tuple(t.shape)}".encode())
        digest.update(t.numpy().tobytes())
    return digest.hexdigest()[:16]


def content_id(document: Mapping[str, Any]) -> str:
    """The id of an artefact made from ``document``: 16 hex digits of the sha256 of its canonical JSON.

    Example:
        >>> content_id({"b": 1, "a": [2]}) == content_id({"a": [2], "b": 1})
        True
    """
    text = json.dumps(document, sort_keys=True, separators=(",", ":"), default=_jsonable)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _jsonable(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    if isinstance(value, (tuple, set, frozenset)):
        return list(value)
    raise TypeError(f"{type(value).__name__} is not JSON-serialisable in an artefact document")


def write_json(target: Location | str | Path, document: Mapping[str, Any]) -> None:
    """Write ``document`` as indented JSON to ``target``, whole or not at all (a sidecar, a claim)."""
    text = json.dumps(document, indent=2, sort_keys=True, default=_jsonable)
    location(target).write_bytes(text.encode())


def read_json(target: Location | str | Path) -> dict[str, Any] | None:
    """The JSON object at ``target``, or ``None`` if it is absent or not a readable JSON object."""
    loc = location(target)
    try:
        value = json.loads(loc.read_bytes())
    except (FileNotFoundError, ValueError, OSError):
        return None
    return value if isinstance(value, dict) else None


@contextlib.contextmanager
def exclusive(
    directory: Location | str | Path, key: str, *, on_wait: Callable[[], None] | None = None
) -> Iterator[None]:
    """Hold the build lock of artefact ``key`` in ``directory`` for the ``with`` block.

    Callers check whether the artefact is built *inside* the block (another builder may have finished
    while they waited) and build it only if not.

    Local and NFS directories: a ``filelock.FileLock`` on ``<directory>/<key>.lock``; the kernel drops it
    when the holder exits or is killed. Object stores (``s3://``): a claim object
    ``<directory>/<key>/claim.json`` holding owner, host, pid and time, refreshed every
    :data:`HEARTBEAT_S` by a background thread and deleted on exit. A waiter treats a claim as stale,
    and takes it over, when its heartbeat time is older than :data:`CLAIM_EXPIRY_S`, when its content
    has not changed for that long on the waiter's own clock (safe against skewed clocks), or at once
    when it names a dead process on this host (a restarted driver). Object stores have no atomic
    create-if-absent through ``pyarrow.fs``, so the claim is best effort: two builders that race are
    separated by writing, waiting :data:`CLAIM_SETTLE_S` and reading back. Should two builders ever both
    build, they write the same deterministic files, so the artefact is still correct.

    Args:
        directory: where the artefacts of this kind live (``<results>/buffers``).
        key: the artefact id.
        on_wait: called about every :data:`POLL_S` seconds while another builder holds the lock
            (progress reporting).
    """
    loc = location(directory)
    if loc.local:
        with _file_lock(Path(loc.path) / f"{key}.lock", on_wait):
            yield
        return
    claim = _Claim(loc / key / "claim.json")
    claim.acquire(on_wait)
    try:
        yield
    finally:
        claim.release()


@contextlib.contextmanager
def _file_lock(path: Path, on_wait: Callable[[], None] | None) -> Iterator[None]:
    from filelock import FileLock, Timeout

    path.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(path))
    while True:
        try:
            lock.acquire(timeout=POLL_S)
            break
        except Timeout:
            if on_wait is not None:
                on_wait()
    try:
        yield
    finally:
        lock.release()


def claim_holder(directory: Location | str | Path, key: str) -> dict[str, Any] | None:
    """The claim document of artefact ``key`` on an object store (who builds it), or ``None``."""
    loc = location(directory)
    return None if loc.local else read_json(loc / key / "claim.json")


class _Claim:
    """A claim object with a heartbeat (see :func:`exclusive`)."""

    def __init__(self, target: Location) -> None:
        self.target = target
        self.owner = uuid.uuid4().hex
        self.host = socket.gethostname()
        self.started = time.time()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _document(self) -> dict[str, Any]:
        now = time.time()
        return {"owner": self.owner, "host": self.host, "pid": os.getpid(), "started": self.started, "time": now}

    def _stale(self, current: dict[str, Any] | None, unchanged_since: float) -> bool:
        if current is None:  # absent, or not a claim we can read: nobody holds it
            return True
        pid = current.get("pid")
        if current.get("host") == self.host and isinstance(pid, int) and not _alive(pid):
            return True  # its builder on this machine is gone (a killed driver): no need to wait out the expiry
        heartbeat = current.get("time")
        if not isinstance(heartbeat, (int, float)) or time.time() - heartbeat > CLAIM_EXPIRY_S:
            return True
        return time.monotonic() - unchanged_since > CLAIM_EXPIRY_S

    def acquire(self, on_wait: Callable[[], None] | None) -> None:
        seen: tuple[str, float] | None = None  # (content, monotonic time it was first seen)
        while True:
            current = read_json(self.target)
            text = json.dumps(current, sort_keys=True)
            if seen is None or seen[0] != text:
                seen = (text, time.monotonic())
            if self._stale(current, seen[1]):
                if current is not None:
                    log.warning("taking over the stale build claim %s (%s)", self.target, current)
                write_json(self.target, self._document())
                time.sleep(CLAIM_SETTLE_S)
                back = read_json(self.target)
                if back is not None and back.get("owner") == self.owner:
                    break
                seen = None  # another builder wrote after us: it holds the claim now
                continue
            if on_wait is not None:
                on_wait()
            time.sleep(POLL_S)
        self._thread = threading.Thread(target=self._beat, name=f"claim {self.target.name}", daemon=True)
        self._thread.start()

    def _beat(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            current = read_json(self.target)
            if current is not None and current.get("owner") != self.owner:
                log.warning("build claim %s was taken over by %s; finishing anyway", self.target, current)
                return
            with contextlib.suppress(OSError):
                write_json(self.target, self._document())

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        current = read_json(self.target)
        if current is not None and current.get("owner") == self.owner:
            self.target.delete()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


__all__ = [
    "CACHE_ENV",
    "CLAIM_EXPIRY_S",
    "DEFAULT_CACHE",
    "HEARTBEAT_S",
    "cache_root",
    "claim_holder",
    "content_id",
    "data_fingerprint",
    "exclusive",
    "read_json",
    "write_json",
]
