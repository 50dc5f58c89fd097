"""distillbench: benchmark dataset distillation methods from Python.

This is the top-level ``distillbench`` package. Its source lives in ``harness/_distillbench/`` because
the repository keeps the top-level folders it was specified with; ``pyproject.toml`` maps it, next to
``distillbench.harness``, ``distillbench.methods``, ``distillbench.datasets`` and
``distillbench.leaderboard``.

Example:
    >>> import distillbench as db
    >>> db.list_protocols("quick*")
    ['quick-v1', 'quick-v1-relabel']
    >>> row = db.distill("dm[iterations=100]", "digits", ipc=10, protocol="quick-v1")  # doctest: +SKIP

The functions are documented in :mod:`distillbench.harness.api`. They are imported on first use, so
``import distillbench`` is cheap and imports neither torch, Ray nor pandas.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from distillbench.harness.api import (
        RunResult,
        create_method,
        distill,
        evaluate,
        list_datasets,
        list_label_stages,
        list_methods,
        list_networks,
        list_protocols,
        list_weightings,
        load_results,
        run,
    )
    from distillbench.harness.errors import (
        ConfigError,
        DataError,
        DistillBenchError,
        DuplicateNameError,
        IncompatibleError,
        UnknownNameError,
    )

    __version__: str

_API = "distillbench.harness.api"
_ERRORS = "distillbench.harness.errors"
# name -> the module that defines it; imported when the name is first used.
_EXPORTS = {
    "run": _API,
    "RunResult": _API,
    "load_results": _API,
    "distill": _API,
    "evaluate": _API,
    "create_method": _API,
    "list_methods": _API,
    "list_datasets": _API,
    "list_networks": _API,
    "list_protocols": _API,
    "list_weightings": _API,
    "list_label_stages": _API,
    "DistillBenchError": _ERRORS,
    "ConfigError": _ERRORS,
    "UnknownNameError": _ERRORS,
    "DuplicateNameError": _ERRORS,
    "IncompatibleError": _ERRORS,
    "DataError": _ERRORS,
}
_SUBPACKAGES = ("harness", "methods", "datasets", "leaderboard")

__all__ = [
    "ConfigError",
    "DataError",
    "DistillBenchError",
    "DuplicateNameError",
    "IncompatibleError",
    "RunResult",
    "UnknownNameError",
    "__version__",
    "create_method",
    "distill",
    "evaluate",
    "list_datasets",
    "list_label_stages",
    "list_methods",
    "list_networks",
    "list_protocols",
    "list_weightings",
    "load_results",
    "run",
]


def _version() -> str:
    """The installed distribution's version; pyproject.toml's when there is no package metadata."""
    import importlib.metadata

    try:
        return importlib.metadata.version("distillbench")
    except importlib.metadata.PackageNotFoundError:
        pass
    # A source tree on sys.path without an install: read the version beside it (harness/_distillbench/ ->
    # the repository root). A checkout without pyproject.toml has no version to tell.
    import tomllib
    from pathlib import Path

    pyproject = Path(__file__).resolve().parents[2] / "pyproject.toml"
    try:
        project = tomllib.loads(pyproject.read_text()).get("project", {})
    except (OSError, tomllib.TOMLDecodeError):
        return "0+unknown"
    return str(project["version"]) if project.get("name") == "distillbench" and "version" in project else "0+unknown"


def __getattr__(name: str) -> Any:
    if name == "__version__":
        value: Any = _version()
    elif name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
    elif name in _SUBPACKAGES:
        value = importlib.import_module(f"{__name__}.{name}")
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value  # the next access is a plain attribute lookup
    return value


def __dir__() -> list[str]:
    return sorted({*__all__, *_SUBPACKAGES})
