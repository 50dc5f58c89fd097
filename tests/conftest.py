"""Shared fixtures: quiet, offline Ray settings, the digits dataset, a tiny protocol, throwaway plugins."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

# Ray reads these at import/init time; set them before any test imports the scheduler.
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")

REPO = Path(__file__).resolve().parent.parent
SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.fixture(autouse=True)
def _isolate_registries():
    """Plugins a test registers (directly or by importing a plugin file) do not leak into other tests."""
    from distillbench.harness.plugins import REGISTRIES

    before = {kind: set(reg._objects) for kind, reg in REGISTRIES.items()}
    yield
    for kind, reg in REGISTRIES.items():
        for name in set(reg._objects) - before[kind]:
            if not reg._lazy.get(name):
                reg.unregister(name)


@pytest.fixture(autouse=True, scope="session")
def _teacher_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Teachers trained by tests go to a temporary cache, not the user's ``~/.cache/distillbench``."""
    before = os.environ.get("DISTILLBENCH_CACHE")
    os.environ["DISTILLBENCH_CACHE"] = str(tmp_path_factory.mktemp("cache"))
    yield
    if before is None:
        os.environ.pop("DISTILLBENCH_CACHE", None)
    else:
        os.environ["DISTILLBENCH_CACHE"] = before


@pytest.fixture(scope="module")
def one_thread() -> Iterator[None]:
    """One intra-op thread for a module of tiny networks (``pytestmark = usefixtures("one_thread")``).

    On the shared 2-core test machine a second thread only contends: it made test_methods.py about
    3x slower (55 s instead of 16 s, measured).
    """
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def digits():
    """The real digits dataset (embedded in scikit-learn)."""
    from distillbench.harness.plugins import DATASETS

    configured = DATASETS.resolve("digits")
    return configured.obj(configured.params).load(Path("."))


@pytest.fixture(scope="session")
def tiny_protocol():
    """A registered protocol small enough for unit tests (a few epochs, 2 narrow models)."""
    from distillbench.harness.plugins import PROTOCOLS
    from distillbench.harness.protocols import QUICK_V1

    protocol = dataclasses.replace(
        QUICK_V1,
        name="tiny-test",
        networks=("convnet[width=16]",),
        epochs=20,
        n_models=2,
        description="unit-test protocol",
    )
    if "tiny-test" not in PROTOCOLS:
        PROTOCOLS.add("tiny-test", protocol, origin="tests/conftest.py")
    return protocol


@contextlib.contextmanager
def temp_plugin(kind: str, name: str, obj: object) -> Iterator[object]:
    """Register ``obj`` as plugin ``name`` of ``kind`` for the duration of a ``with`` block."""
    from distillbench.harness.plugins import registry

    reg = registry(kind)
    reg.add(name, obj, origin=f"tests ({name})")
    try:
        yield obj
    finally:
        reg.unregister(name)


def needs_shared_data(sub: str) -> pytest.MarkDecorator:
    """Skip (with a reason) when ../shared/data/<sub> is absent."""
    path = SHARED_DATA / sub
    return pytest.mark.skipif(not path.exists(), reason=f"real data not found at {path} (../shared/data)")


MOTO_MISSING = "moto[server] is not installed (pip install 'moto[server]', part of the test extra); S3 tests skipped"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def s3_endpoint():
    """A moto S3 server on 127.0.0.1 (free port) with a bucket ``bench``; dummy credentials in the environment."""
    server_mod = pytest.importorskip("moto.server", reason=MOTO_MISSING)
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    port = _free_port()
    server = server_mod.ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    with pytest.MonkeyPatch.context() as mp:
        # Ray workers started by this process inherit these, and reach the same fake S3.
        mp.setenv("AWS_ACCESS_KEY_ID", "testing")
        mp.setenv("AWS_SECRET_ACCESS_KEY", "testing")
        mp.setenv("AWS_EC2_METADATA_DISABLED", "true")
        import pyarrow.fs as pafs

        fs = pafs.S3FileSystem(
            endpoint_override=f"127.0.0.1:{port}",
            scheme="http",
            region="us-east-1",
            access_key="testing",
            secret_key="testing",
            allow_bucket_creation=True,
        )
        fs.create_dir("bench")
        yield f"127.0.0.1:{port}"
    server.stop()
