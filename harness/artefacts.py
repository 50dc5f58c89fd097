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
    claim = Claim(loc / key / "claim.json")
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


class Claim:
    """A claim on one key: a small JSON document naming its holder, kept alive by a heartbeat.

    The document holds ``owner`` (who may act for the claim: a build, or every worker of one grid run),
    ``token`` (this one claimant), ``host``, ``pid``, ``started`` and ``time`` (the last heartbeat), plus
    any ``info`` the caller adds. A claim is *free* for an owner (see :func:`claim_is_free`) when it is
    absent, is the owner's own (an earlier attempt, e.g. a Tune retry after a worker died), names a dead
    process on this host, or its heartbeat is older than ``expiry_s``.

    Local and NFS paths: every read-decide-write (take, heartbeat, release) happens under one
    ``filelock.FileLock`` per directory (``<directory>/.lock``), so two processes, on one machine or on
    two machines sharing the directory, cannot both take a claim. Object stores (``s3://``) have no lock
    and ``pyarrow.fs`` has no conditional PUT, so a claim is best effort: the claimant writes, waits
    ``settle_s`` and reads back; of two claimants that both saw the claim free within the same instant
    only the last writer keeps it. Two that write more than ``settle_s`` apart are both separated; two that
    write within the same few milliseconds *and* both read back before either write lands could both go
    on, which the read-back window makes unlikely but not impossible.

    Args:
        target: the claim document's location (``<dir>/<key>.json`` or ``<dir>/<key>/claim.json``).
        owner: shared by every claimant that may take over another's claim at once; a fresh id if not given.
        info: extra fields for the document (who started the work, for messages).
        expiry_s: a heartbeat older than this frees the claim (default :data:`CLAIM_EXPIRY_S`).
        heartbeat_s: how often :meth:`start_heartbeat` refreshes it (default :data:`HEARTBEAT_S`).
    """

    def __init__(
        self,
        target: Location,
        *,
        owner: str | None = None,
        info: Mapping[str, Any] | None = None,
        expiry_s: float | None = None,
        heartbeat_s: float | None = None,
    ) -> None:
        self.target = target
        self.owner = owner or uuid.uuid4().hex
        self.token = uuid.uuid4().hex
        self.info = dict(info or {})
        self.host = socket.gethostname()
        self.started = time.time()
        self.expiry_s = expiry_s
        self.heartbeat_s = heartbeat_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _document(self) -> dict[str, Any]:
        return {
            **self.info,
            "owner": self.owner,
            "token": self.token,
            "host": self.host,
            "pid": os.getpid(),
            "started": self.started,
            "time": time.time(),
        }

    def _expiry(self) -> float:
        return CLAIM_EXPIRY_S if self.expiry_s is None else self.expiry_s

    def try_acquire(self, unchanged_since: float | None = None) -> dict[str, Any] | None:
        """Take the claim if it is free; ``None`` on success, else the holder's document.

        Args:
            unchanged_since: monotonic time since which the caller has seen the current document unchanged
                (a waiter's clock, safe against skewed clocks); ``None`` for a single look.
        """
        if self.target.local:
            with _directory_lock(self.target):
                current = read_json(self.target)
                if not self._free(current, unchanged_since):
                    return current
                self._log_takeover(current)
                write_json(self.target, self._document())
                return None
        current = read_json(self.target)
        if not self._free(current, unchanged_since):
            return current
        self._log_takeover(current)
        write_json(self.target, self._document())
        time.sleep(CLAIM_SETTLE_S)
        back = read_json(self.target)
        if back is not None and back.get("token") == self.token:
            return None
        return back or {"owner": "unknown", "host": "unknown"}  # another claimant wrote after us

    def _free(self, current: dict[str, Any] | None, unchanged_since: float | None) -> bool:
        if current is not None and current.get("token") == self.token:
            return True
        if claim_is_free(current, owner=self.owner, expiry_s=self._expiry()):
            return True
        return unchanged_since is not None and time.monotonic() - unchanged_since > self._expiry()

    def _log_takeover(self, current: dict[str, Any] | None) -> None:
        if current is not None and current.get("owner") != self.owner:
            log.warning("taking over the stale claim %s (%s)", self.target, current)

    def acquire(self, on_wait: Callable[[], None] | None = None) -> None:
        """Wait until the claim is taken, calling ``on_wait`` about every :data:`POLL_S`; starts the heartbeat."""
        seen: tuple[str, float] | None = None  # (content, monotonic time it was first seen)
        while True:
            current = read_json(self.target)
            text = json.dumps(current, sort_keys=True)
            if seen is None or seen[0] != text:
                seen = (text, time.monotonic())
            if self.try_acquire(seen[1]) is None:
                break
            if on_wait is not None:
                on_wait()
            time.sleep(POLL_S)
        self.start_heartbeat()

    def start_heartbeat(self) -> None:
        """Refresh the claim every ``heartbeat_s`` from a daemon thread until :meth:`stop_heartbeat`."""
        self._stop.clear()
        self._thread = threading.Thread(target=self._beat, name=f"claim {self.target.name}", daemon=True)
        self._thread.start()

    def stop_heartbeat(self) -> None:
        """Stop refreshing; the claim stays until :meth:`release` or :func:`release_claim`, or until it expires."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def _beat(self) -> None:
        interval = HEARTBEAT_S if self.heartbeat_s is None else self.heartbeat_s
        while not self._stop.wait(interval):
            try:
                with _directory_lock(self.target) if self.target.local else contextlib.nullcontext():
                    current = read_json(self.target)
                    if current is None or current.get("token") != self.token:
                        # Released by the driver, or taken over after a long stall: never write it back.
                        if current is not None:
                            log.warning("claim %s was taken over by %s; finishing anyway", self.target, current)
                        return
                    write_json(self.target, self._document())
            except OSError as exc:  # a full or unreachable store: the next beat tries again
                log.warning("cannot refresh claim %s: %s", self.target, exc)

    def release(self) -> None:
        """Stop the heartbeat and remove the claim if this claimant still holds it."""
        self.stop_heartbeat()
        _remove_if(self.target, lambda doc: doc.get("token") == self.token)


def claim_is_free(
    document: Mapping[str, Any] | None, *, owner: str | None = None, expiry_s: float | None = None
) -> bool:
    """Whether a claim document leaves its key free for ``owner``.

    Free when there is no (readable) document, when it is ``owner``'s own, when it names a process on this
    host that no longer runs (a killed driver or worker: no need to wait out the expiry), when the driver
    it names (``driver_host``, ``driver_pid``: the one that would write a trial's row) is a process on this
    host that no longer runs (its worker may live on for a while, but its work can no longer land), or when
    its heartbeat is older than ``expiry_s`` (default :data:`CLAIM_EXPIRY_S`; clocks of the machines that
    share the store must agree to well within it). Drivers and workers decide with this one function, so a
    driver's look before scheduling and a worker's take agree.
    """
    if document is None:
        return True
    if owner is not None and document.get("owner") == owner:
        return True
    here = socket.gethostname()
    processes = ((document.get("host"), document.get("pid")), (document.get("driver_host"), document.get("driver_pid")))
    for host, pid in processes:
        if host == here and isinstance(pid, int) and not isinstance(pid, bool) and not _alive(pid):
            return True
    heartbeat = document.get("time")
    expiry = CLAIM_EXPIRY_S if expiry_s is None else expiry_s
    return not isinstance(heartbeat, (int, float)) or time.time() - heartbeat > expiry


def release_claim(target: Location | str | Path, owner: str) -> bool:
    """Remove the claim at ``target`` if ``owner`` holds it (a driver releasing its workers' claims).

    Returns:
        Whether a claim was removed.
    """
    return _remove_if(location(target), lambda doc: doc.get("owner") == owner)


def _remove_if(target: Location, held: Callable[[dict[str, Any]], bool]) -> bool:
    with _directory_lock(target) if target.local else contextlib.nullcontext():
        current = read_json(target)
        if current is not None and held(current):
            target.delete()
            return True
    return False


def _directory_lock(target: Location) -> Any:
    from filelock import FileLock

    # One lock per claims directory: each hold lasts one small read and write, so contention is negligible,
    # and the directory gets one lock file instead of one per key.
    parent = Path(target.path).parent
    parent.mkdir(parents=True, exist_ok=True)
    return FileLock(str(parent / ".lock"))


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
    "Claim",
    "DEFAULT_CACHE",
    "HEARTBEAT_S",
    "cache_root",
    "claim_holder",
    "claim_is_free",
    "content_id",
    "data_fingerprint",
    "exclusive",
    "read_json",
    "release_claim",
    "write_json",
]
