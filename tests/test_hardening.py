"""Hardening (issue 17): values are canonicalised before anything starts, and bad input keeps the promise.

The promise: one line ``error: ...`` on stderr, exit status 2, no traceback, nothing written.
``benchmarks/bad_inputs.py`` runs a longer list by hand; these are a representative subset.
"""

from __future__ import annotations

import dataclasses
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
import yaml
from safetensors.torch import save

from distillbench.harness import store
from distillbench.harness.cli import main
from distillbench.harness.errors import ConfigError
from distillbench.harness.params import build_params, canonical_int
from distillbench.harness.spec import TrialSpec, check_grid_name, parse_grid

GOOD = {"name": "g", "protocol": "quick-v1", "grid": {"dataset": "digits", "method": "random", "ipc": 1}}
SPEC = {"spec": {"dataset": "digits", "method": "random", "ipc": 1, "seed": 0}}


def grid_doc(**changes):
    doc = json.loads(json.dumps(GOOD))
    for key, value in changes.items():
        if key.startswith("grid_"):
            doc["grid"][key.removeprefix("grid_")] = value
        else:
            doc[key] = value
    return doc


def write_set(tmp, x=None, y=None, meta=SPEC):
    x = torch.rand(10, 1, 8, 8) if x is None else x
    y = torch.arange(10) if y is None else y
    (tmp / "set.safetensors").write_bytes(save({"x": x, "y": y}))
    (tmp / "set.json").write_text(json.dumps(meta))


def _grid(**changes):
    def setup(tmp):
        (tmp / "grid.yaml").write_text(yaml.safe_dump(grid_doc(**changes)))
        return ["run", "grid.yaml", "--dry-run"]

    return setup


def _evaluate(**kwargs):
    def setup(tmp):
        write_set(tmp, **kwargs)
        return ["evaluate", "set.safetensors", "--protocol", "quick-v1"]

    return setup


def _args(*argv, files=None, dirs=()):
    def setup(tmp):
        for name in dirs:
            (tmp / name).mkdir(parents=True)
        for name, data in (files or {}).items():
            (tmp / name).write_bytes(data)
        return list(argv)

    return setup


BAD = {
    "seed 2**64": _grid(grid_seed=[2**64]),
    "seed 'abc'": _grid(grid_seed=["abc"]),
    "ipc 10**29": _grid(grid_ipc=10**29),
    "iterations 10**23": _grid(grid_method="dm[iterations=100000000000000000000000]"),
    "lr_img inf": _grid(grid_method="dm[lr_img=inf]"),
    "lr_img 1e400": _grid(grid_method="dm[lr_img=1e400]"),
    "name /etc": _grid(name="/etc"),
    "name ../x": _grid(name="../x"),
    "name 300 chars": _grid(name="a" * 300),
    "retries 10**30": _grid(retries=10**30),
    "duplicate YAML key": _args("run", "grid.yaml", "--dry-run", files={"grid.yaml": b"grid:\n  ipc: 1\n  ipc: 2\n"}),
    "results component too long": _args(
        "run",
        "grid.yaml",
        "--dry-run",
        "--results",
        "r/" + "b" * 300,
        files={"grid.yaml": yaml.safe_dump(GOOD).encode()},
    ),
    "distill --out under a file": _args(
        "distill",
        "random",
        "digits",
        "--ipc",
        "1",
        "--protocol",
        "quick-v1",
        "--out",
        "f/s.safetensors",
        files={"f": b"x"},
    ),
    "distill missing data root": _args(
        "distill", "random", "mnist", "--ipc", "1", "--protocol", "quick-v1", "--data-root", "no-data"
    ),
    "evaluate metadata []": _evaluate(meta=[]),
    "evaluate metadata string": _evaluate(meta="hello"),
    "evaluate spec malformed": _evaluate(meta={"spec": "digits"}),
    "evaluate spec incomplete": _evaluate(meta={"spec": {"dataset": "digits"}}),
    "evaluate wrong shape": _evaluate(x=torch.rand(10, 3, 32, 32)),
    "evaluate labels out of range": _evaluate(y=torch.arange(10) + 5),
    "evaluate label count": _evaluate(y=torch.arange(5)),
    "evaluate empty x": _evaluate(x=torch.rand(0, 1, 8, 8), y=torch.zeros(0, dtype=torch.long)),
    "evaluate NaN x": _evaluate(x=torch.full((10, 1, 8, 8), float("nan"))),
    "evaluate int64 pixels": _evaluate(x=torch.randint(0, 255, (10, 1, 8, 8))),
    "leaderboard --reported binary": _args(
        "leaderboard", "r", "--reported", "b.yaml", "--out", "out", dirs=["r/rows"], files={"b.yaml": bytes(range(256))}
    ),
    "status without rows": _args("status", "r", dirs=["r"]),
    "buffers --results is a file": _args("buffers", "list", "--results", "f", files={"f": b"x"}),
    "describe unknown": _args("describe", "dnn"),
}


def _listing(root):
    return {p.relative_to(root) for p in root.rglob("*")}


class TestBadInputKeepsThePromise:
    @pytest.mark.parametrize("case", sorted(BAD))
    def test_one_error_line_exit_2_nothing_written(self, case, tmp_path, monkeypatch, capsys):
        """Each malformed input exits 2 with one 'error: ' line, no traceback, and leaves the folder as it was."""
        monkeypatch.chdir(tmp_path)
        argv = BAD[case](tmp_path)
        before = _listing(tmp_path)
        code = main(argv)
        out, err = capsys.readouterr()
        lines = [line for line in err.splitlines() if line.strip()]
        assert code == 2, (out, err)
        assert len(lines) == 1 and lines[0].startswith("error: "), err
        assert "Traceback" not in err
        assert _listing(tmp_path) == before


class TestCanonicalValues:
    def test_seed_string_and_int_share_a_trial_id(self):
        """seed "7" and seed 7 resolve to the same int and so to one trial id."""
        as_text = TrialSpec(dataset="digits", method="random", ipc="1", seed="7", protocol="quick-v1").resolve()
        as_int = TrialSpec(dataset="digits", method="random", ipc=1, seed=7, protocol="quick-v1").resolve()
        assert as_text.trial_id == as_int.trial_id
        assert as_text.spec.seed == 7 and isinstance(as_text.spec.seed, int)
        assert as_text.spec.ipc == 1 and isinstance(as_text.spec.ipc, int)

    def test_grid_with_both_spellings_has_one_trial(self):
        """A grid listing "7" and 7 expands to one trial, not two with the same display."""
        grid = parse_grid(grid_doc(grid_seed=["7", 7]))
        assert len(grid.trials) == 1

    def test_int64_bound(self):
        """Integers must fit int64, the type rows store; one past the bound is refused."""
        assert canonical_int(str(2**63 - 1)) == 2**63 - 1
        assert canonical_int(" +7 ") == 7
        for bad in (2**63, -(2**63) - 1, "²", True, 2.0, "1e3"):
            with pytest.raises(ValueError):
                canonical_int(bad)

    def test_float_parameters_refuse_inf_unless_allowed(self):
        """inf, -inf and nan are refused; a field with metadata allow_inf takes inf."""

        @dataclasses.dataclass(frozen=True)
        class P:
            lr: float = 1.0
            budget: float = dataclasses.field(default=1.0, metadata={"allow_inf": True})
            steps: int = 1

        for bad in ("inf", "-inf", "nan", "1e400", float("inf"), 10**400):
            with pytest.raises(ConfigError, match="finite number"):
                build_params(P, {"lr": bad}, owner="method 'p'")
        assert build_params(P, {"budget": "inf"}, owner="method 'p'").budget == float("inf")
        assert build_params(P, {"lr": "7"}, owner="m") == build_params(P, {"lr": 7}, owner="m")
        assert build_params(P, {"steps": "7"}, owner="m") == build_params(P, {"steps": 7}, owner="m")
        with pytest.raises(ConfigError, match="fits 64 bits"):
            build_params(P, {"steps": 10**23}, owner="m")

    @pytest.mark.parametrize("name", ["quickstart", "mtt_zca-v2", "a.b", "grid+1", "实验"])
    def test_plain_grid_names_pass(self, name):
        """Letters (any script), digits and . _ - + = @ make a plain name."""
        assert check_grid_name(name) == name


class TestRowsAreReadDefensively:
    def test_key_columns_only_and_integer_trial_id(self, tmp_path):
        """A row with only the key columns reads with every column (null); an integer trial_id is refused."""
        rows = tmp_path / "rows"
        rows.mkdir()
        pq.write_table(pa.table({"trial_id": ["a"], "status": ["ok"], "schema_version": [1]}), rows / "a.parquet")
        pq.write_table(pa.table({"trial_id": [5], "status": ["ok"], "schema_version": [1]}), rows / "5.parquet")
        (rows / "c.parquet").write_bytes(b"junk")
        bad = []
        frame = store.read_rows([tmp_path], on_bad=lambda path, reason: bad.append(reason))
        assert list(frame["trial_id"]) == ["a"] and "grid" in frame.columns
        assert any("'trial_id' holds int64" in reason for reason in bad) and len(bad) == 2

    def test_run_skips_a_corrupt_row(self, tmp_path, monkeypatch, capsys):
        """A corrupt row file is reported and skipped: run --dry-run still lists the grid, exit 0."""
        monkeypatch.chdir(tmp_path)
        (tmp_path / "grid.yaml").write_text(yaml.safe_dump(GOOD))
        (tmp_path / "r" / "rows").mkdir(parents=True)
        (tmp_path / "r" / "rows" / "c.parquet").write_bytes(b"junk")
        code = main(["run", "grid.yaml", "--dry-run", "--results", "r"])
        out, err = capsys.readouterr()
        assert code == 0 and "1 to run" in out
        assert "skipped c.parquet: not a readable Parquet file" in err

    def test_status_and_leaderboard_on_key_column_rows(self, tmp_path, capsys):
        """status and leaderboard read rows holding only trial_id, status and schema_version."""
        (tmp_path / "rows").mkdir()
        pq.write_table(
            pa.table({"trial_id": ["a"], "status": ["ok"], "schema_version": [1]}), tmp_path / "rows" / "a.parquet"
        )
        assert main(["status", str(tmp_path)]) == 0
        assert main(["leaderboard", str(tmp_path), "--out", str(tmp_path / "board")]) == 0
        assert "(no grid)" in capsys.readouterr().out
