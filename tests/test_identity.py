"""Trial ids stay what they were: a re-run of a grid after an upgrade finds its stored rows.

A grid run skips the trials whose ids already have rows, so an id that changes orphans every stored
row of it and runs the trial again. Ids hash the fully resolved spec, so a parameter added to a plugin
changes the ids of all its trials unless it is declared with ``metadata={"since": ...}``
(``harness/params.py``), which leaves it out of the hash while it holds its default. This test keeps
one trial id per registered plugin at its defaults in ``tests/golden/trial_ids.json``.

When the change is meant (a default that changes results must change the ids), regenerate the file:

    DISTILLBENCH_UPDATE_GOLDEN=1 pytest tests/test_identity.py
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from distillbench.harness.errors import DistillBenchError
from distillbench.harness.plugins import DATASETS, LABELS, METHODS, WEIGHTINGS
from distillbench.harness.spec import TrialSpec

GOLDEN = Path(__file__).parent / "golden" / "trial_ids.json"

# Specs tried in order for each plugin; the first that resolves gives its id.
IMAGE, TEXT = ("convnet-v1",), ("text-v1",)


def _first(candidates: list[tuple]) -> str:
    errors = []
    for args in candidates:
        try:
            return TrialSpec(*args).resolve().trial_id
        except DistillBenchError as exc:
            errors.append(str(exc))
    raise AssertionError(f"no spec of {candidates} resolves: {errors}")


def _built_in(registry) -> list[str]:
    """The registry's built-in names (not those a test, a benchmark script or a plugin file added)."""
    # A built-in is declared "built-in distillbench.<module>:<class>" and, once loaded, named by its module.
    return [name for name in registry if registry.origin(name).startswith(("built-in ", "distillbench."))]


def current_ids() -> dict[str, str]:
    """One trial id per built-in plugin, at its default parameters."""
    ids = {}
    for name in _built_in(METHODS):
        ids[f"method {name}"] = _first([("digits", name, 10, 0), ("sst2", name, 10, 0, "none", "native", *TEXT)])
    for name in _built_in(DATASETS):
        ids[f"dataset {name}"] = _first([(name, "random", 10, 0), (name, "random", 10, 0, "none", "native", *TEXT)])
    for name in _built_in(WEIGHTINGS):
        ids[f"weighting {name}"] = _first([("colored_mnist", "dm", 10, 0, name)])
    for name in _built_in(LABELS):
        ids[f"labels {name}"] = _first([("digits", "dm", 10, 0, "none", name)])
    return ids


def test_trial_ids_of_every_plugin_are_unchanged() -> None:
    ids = current_ids()
    if os.environ.get("DISTILLBENCH_UPDATE_GOLDEN"):
        GOLDEN.write_text(json.dumps(ids, indent=1, sort_keys=True) + "\n")
    golden = json.loads(GOLDEN.read_text())
    changed = sorted(k for k in golden if k in ids and ids[k] != golden[k])
    assert not changed, (
        f"the trial ids of {changed} changed, so every stored row of them would be run again: declare a "
        "parameter added since with metadata={'since': ...} (harness/params.py), or, if the change must re-run "
        "them, regenerate tests/golden/trial_ids.json (see this module's docstring)"
    )
    missing, gone = sorted(set(ids) - set(golden)), sorted(set(golden) - set(ids))
    assert not missing, f"plugins without a recorded id: {missing}; regenerate tests/golden/trial_ids.json"
    assert not gone, f"recorded plugins no longer built in: {gone}; regenerate tests/golden/trial_ids.json"
