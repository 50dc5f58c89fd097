"""Reading and fetching the files of canonical dataset distributions.

What lives here: the one function that touches the network (:func:`fetch_url`, which tests replace),
checksummed atomic downloads (:func:`download`), a per-dataset inter-process lock
(:func:`dataset_lock`), archive extraction, IDX parsing (:func:`read_idx`) and the conversion of
uint8 images to normalised float tensors (:func:`normalise_images`).

Checksum policy (shared by every dataset in this package): md5 sums are verified when files are
downloaded and whenever ``prepare(root, download=True)`` runs (which is what ``distillbench data
fetch`` does). When existing files are loaded without ``download``, they are only checked to parse
(IDX magic numbers and sizes, pickle keys, ``.mat`` variables). This is deliberate: a re-split or
subset copy in the canonical layout (such as ``../shared/data/mnist-10k``) is a legitimate input that
can never match the official sums, while a truncated or foreign file still fails with a
:class:`~distillbench.harness.errors.DataError` naming it.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import http.client
import os
import shutil
import struct
import tarfile
import tempfile
import urllib.request
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch

from distillbench.harness.errors import DataError

# Some hosts (the Toronto CIFAR server among them) reject urllib's default agent string.
_USER_AGENT = "distillbench (dataset download; https://pypi.org/project/distillbench)"
_CHUNK = 1 << 20


def fix_hint(name: str, root: Path) -> str:
    """The standard 'how to fix' tail of a missing-data message."""
    return f"run 'distillbench data fetch {name} --data-root {root}', or set 'download: true' in the grid"


def md5sum(path: Path) -> str:
    """Hex md5 of a file, read in 1 MiB chunks (md5 because that is what the dataset authors publish)."""
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(_CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def check_md5(path: Path, expected: str, *, dataset: str) -> None:
    """Raise ``DataError`` naming ``path`` if its md5 is not ``expected``.

    Raises:
        DataError: checksum mismatch; the message says how to replace or keep the file.
    """
    got = md5sum(path)
    if got != expected:
        raise DataError(
            f"dataset {dataset!r}: {path} does not match its official md5 (got {got}, expected {expected}); "
            f"the file is corrupt or not the official release: delete it and run 'distillbench data fetch "
            f"{dataset}', or load it as it is without download (checksums are only verified when downloading)"
        )


def fetch_url(url: str, dest: Path, *, timeout: float = 60.0) -> None:
    """Copy the bytes at ``url`` into ``dest`` without any check.

    This is the only function in the package that opens a network connection, so tests replace it
    (``monkeypatch.setattr(_files, "fetch_url", fake)``) and never download.

    Raises:
        OSError: any network or HTTP failure (``urllib.error.URLError`` is an ``OSError``).
    """
    request = urllib.request.Request(url, headers={"User-Agent": _USER_AGENT})
    with urllib.request.urlopen(request, timeout=timeout) as response, open(dest, "wb") as out:
        shutil.copyfileobj(response, out, _CHUNK)


def download(urls: Sequence[str], dest: Path, *, md5: str, dataset: str) -> Path:
    """Download ``dest`` from the first of ``urls`` that yields the expected md5; atomic.

    The bytes go to a temporary file beside ``dest`` and are renamed into place only after the
    checksum matched, so an interrupted or corrupt transfer never leaves a file under the final name.
    The caller holds :func:`dataset_lock`, so two processes do not fetch the same file at once.

    Args:
        urls: mirrors, tried in order.
        dest: final path of the file.
        md5: expected hex md5 of the file.
        dataset: dataset name, for messages.

    Returns:
        ``dest``.

    Raises:
        DataError: every mirror failed (network error or checksum mismatch); the message names
            ``dest``, each address and its failure.
    """
    dest.parent.mkdir(parents=True, exist_ok=True)
    failures: list[str] = []
    for url in urls:
        fd, tmp_name = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
        os.close(fd)
        tmp = Path(tmp_name)
        try:
            fetch_url(url, tmp)
            got = md5sum(tmp)
            if got != md5:
                failures.append(f"{url}: md5 mismatch (got {got}, expected {md5})")
                continue
            os.replace(tmp, dest)
            return dest
        except (OSError, http.client.HTTPException) as exc:  # URLError and timeouts are OSErrors
            failures.append(f"{url}: {exc}")
        finally:
            tmp.unlink(missing_ok=True)
    raise DataError(
        f"dataset {dataset!r}: could not download {dest} ({'; '.join(failures)}); check the network and run "
        f"'distillbench data fetch {dataset}' again, or download the file by hand to {dest}"
    )


@contextlib.contextmanager
def dataset_lock(root: Path, name: str) -> Iterator[None]:
    """Hold an exclusive inter-process lock for downloading ``name`` under ``root``.

    Uses ``filelock`` (installed with Ray), whose lock is released by the OS when a process dies,
    so a crashed download never leaves a stale lock behind. The lock file is ``root/.NAME.lock``.
    """
    from filelock import FileLock

    lock_path = root / f".{name}.lock"
    try:
        root.mkdir(parents=True, exist_ok=True)
        lock = FileLock(str(lock_path))
        lock.acquire()
    except OSError as exc:
        raise DataError(
            f"dataset {name!r}: cannot write to {root} to download it ({exc}); pass a writable --data-root "
            "(or set DISTILLBENCH_DATA)"
        ) from None
    try:
        yield
    finally:
        lock.release()


def gunzip(src: Path, dest: Path, *, dataset: str) -> Path:
    """Decompress ``src`` to ``dest`` atomically (temporary file, then rename).

    Raises:
        DataError: ``src`` is not a valid gzip file.
    """
    fd, tmp_name = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as out, gzip.open(src, "rb") as fh:
            shutil.copyfileobj(fh, out, _CHUNK)
        os.replace(tmp, dest)
    except (OSError, EOFError) as exc:
        raise DataError(f"dataset {dataset!r}: cannot decompress {src} ({exc}); delete it and fetch it again") from None
    finally:
        tmp.unlink(missing_ok=True)
    return dest


def extract_tar(archive: Path, root: Path, folder: str, *, dataset: str) -> Path:
    """Extract ``folder`` of a tar archive into ``root``, adding only files that are missing there.

    Extraction goes to a temporary directory under ``root`` first; each file is then renamed into
    ``root/folder``, so a reader never sees a half-written file and files already present (perhaps
    a user's own) are left untouched. The ``data`` filter rejects absolute paths and links out of
    the archive.

    Returns:
        ``root / folder``.

    Raises:
        DataError: the archive cannot be read or does not contain ``folder``.
    """
    target = root / folder
    with tempfile.TemporaryDirectory(dir=root, prefix=f".{folder}.") as tmp:
        try:
            with tarfile.open(archive, "r:*") as tar:
                tar.extractall(tmp, filter="data")
        except (OSError, EOFError, tarfile.TarError) as exc:
            raise DataError(
                f"dataset {dataset!r}: cannot extract {archive} ({exc}); delete it and fetch it again"
            ) from None
        extracted = Path(tmp) / folder
        if not extracted.is_dir():
            raise DataError(f"dataset {dataset!r}: {archive} has no folder {folder!r}; is it the right archive?")
        target.mkdir(parents=True, exist_ok=True)
        for path in sorted(extracted.iterdir()):
            if path.is_file() and not (target / path.name).exists():
                os.replace(path, target / path.name)
    return target


# IDX element types (http://yann.lecun.com/exdb/mnist/, "THE IDX FILE FORMAT").
_IDX_DTYPES: dict[int, str] = {0x08: "u1", 0x09: "i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: Path, *, dataset: str) -> np.ndarray:
    """Parse an IDX file (plain or ``.gz``) into an array of its declared shape.

    The header is two zero bytes, a type code, the number of dimensions and one big-endian uint32
    per dimension; the payload must be exactly as long as the dimensions say.

    Raises:
        DataError: unreadable file, bad magic number or a payload of the wrong size; names ``path``.
    """
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as fh:
                data = fh.read()
        else:
            data = path.read_bytes()
    except (OSError, EOFError) as exc:
        raise DataError(f"dataset {dataset!r}: cannot read {path} ({exc}); delete it and fetch it again") from None
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _IDX_DTYPES:
        raise DataError(
            f"dataset {dataset!r}: {path} is not an IDX file (bad magic number {data[:4].hex() or 'empty'}); "
            "replace it with the original file"
        )
    ndim = data[3]
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DataError(f"dataset {dataset!r}: {path} is truncated inside its IDX header; replace it")
    dims = struct.unpack(f">{ndim}I", data[4:header])
    dtype = np.dtype(_IDX_DTYPES[data[2]])
    expected = int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
    if len(data) - header != expected:
        raise DataError(
            f"dataset {dataset!r}: {path} has {len(data) - header} bytes of data but its header {tuple(dims)} "
            f"declares {expected}; the file is truncated or corrupt: replace it"
        )
    return np.frombuffer(data, dtype=dtype, offset=header).reshape(dims)


def normalise_images(images: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """uint8 images ``[N, C, H, W]`` -> float32 ``(x / 255 - mean) / std`` per channel, contiguous."""
    # One converting copy: the source may be a read-only view of a file buffer or a transposed array.
    x = torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32)).div_(255.0)
    m = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
    return x.sub_(m).div_(s).contiguous()
