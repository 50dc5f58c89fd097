"""The Python API (``import distillbench as db``): each function, its return types, and the CLI's errors."""

from __future__ import annotations

import dataclasses
import importlib.metadata
import json
import re
import subprocess
import sys
import textwrap
import tomllib
import warnings
from pathlib import Path

import pandas as pd
import pytest
import yaml

import distillbench as db
from distillbench.harness import errors, store
from distillbench.harness.cli import main
from distillbench.harness.errors import ConfigError, DataError, DistillBenchError, UnknownNameError

from .conftest import REPO, temp_plugin

GRID = {"name": "api", "protocol": "quick-v1", "grid": {"dataset": "digits", "method": ["random", "herding"], "ipc": 1}}


def cli_error(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    """The one-line message the CLI prints for ``argv`` (without ``error: ``); it must exit 2."""
    code = main(list(argv))
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: ") and err.count("\n") == 1, err
    return err.removeprefix("error: ").rstrip("\n")


class TestPackage:
    def test_import_is_cheap(self):
        """import distillbench, listing and creating specs import neither torch, Ray nor pandas."""
        code = (
            "import sys, distillbench as db; db.list_methods(); db.list_protocols('quick*'); db.__version__; "
            "print(sorted(m for m in ('torch', 'ray', 'pandas') if m in sys.modules))"
        )
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
        assert out.strip() == "[]"

    def test_version_is_the_installed_one(self):
        """__version__ comes from the package metadata."""
        assert db.__version__ == importlib.metadata.version("distillbench")

    def test_version_without_metadata_is_pyproject_s(self, monkeypatch):
        """Without package metadata (a source tree on sys.path), the version is pyproject.toml's."""
        import distillbench

        def missing(name):
            raise importlib.metadata.PackageNotFoundError(name)

        monkeypatch.setattr(importlib.metadata, "version", missing)
        expected = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
        assert distillbench._version() == expected

    def test_readme_example_uses_the_api(self):
        """The README's Python API example exists and calls only exported names."""
        readme = (REPO / "README.md").read_text()
        section = readme.partition("## Python API")[2].partition("\n## ")[0]
        assert "import distillbench as db" in section, "README lost its Python API example"
        used = set(re.findall(r"\bdb\.(\w+)", section))
        assert used and used <= set(db.__all__), used - set(db.__all__)

    def test_one_list_of_exports(self):
        """The package exports exactly the API module's __all__ and every DistillBenchError class, and the
        static imports type checkers read (under TYPE_CHECKING) name the same: a function added to the API
        module, or an error class added, cannot be left out of ``import distillbench``."""
        import ast
        import inspect

        import distillbench
        from distillbench.harness import api

        error_classes = {
            name
            for name, value in vars(errors).items()
            if inspect.isclass(value) and issubclass(value, errors.DistillBenchError)
        }
        exports = distillbench._EXPORTS
        assert {n for n, m in exports.items() if m == distillbench._API} == set(api.__all__), "api.__all__ differs"
        assert {n for n, m in exports.items() if m == distillbench._ERRORS} == error_classes, "errors differ"
        source = ast.parse(Path(distillbench.__file__).read_text())
        static = {
            alias.name
            for node in ast.walk(source)
            if isinstance(node, ast.If) and ast.unparse(node.test) == "TYPE_CHECKING"
            for child in node.body
            if isinstance(child, ast.ImportFrom)
            for alias in child.names
        }
        assert static == set(exports), f"TYPE_CHECKING imports differ from _EXPORTS: {static ^ set(exports)}"

    def test_exports(self):
        """Every name in __all__ resolves; unknown names raise AttributeError; subpackages load on access."""
        import distillbench

        assert set(distillbench.__all__) == {*distillbench._EXPORTS, "__version__"}
        for name in distillbench.__all__:
            assert getattr(db, name) is not None
            assert name in dir(db)
        assert db.UnknownNameError is UnknownNameError and issubclass(db.ConfigError, db.DistillBenchError)
        assert db.DuplicateNameError is errors.DuplicateNameError
        assert db.harness.store is store
        with pytest.raises(AttributeError, match="has no attribute 'distil'"):
            db.distil  # noqa: B018


class TestRegistries:
    @pytest.mark.parametrize(
        ("function", "kind", "pattern"),
        [
            ("list_methods", "methods", None),
            ("list_methods", "methods", "d*"),
            ("list_datasets", "datasets", "*mnist"),
            ("list_networks", "networks", None),
            ("list_protocols", "protocols", "quick*"),
            ("list_weightings", "weightings", None),
            ("list_label_stages", "labels", None),
        ],
    )
    def test_lists_are_what_ls_prints(self, capsys, function, kind, pattern):
        """Each list_* returns what `distillbench ls KIND [PATTERN]` prints, as a list of str."""
        names = getattr(db, function)(pattern)
        assert main(["ls", kind, *([pattern] if pattern else [])]) == 0
        assert names == capsys.readouterr().out.split() and names and all(isinstance(n, str) for n in names)

    def test_list_methods_is_sorted_and_filtered(self):
        """Wildcards filter, natural sort orders."""
        assert db.list_methods("d*") == ["datm", "dc", "dd", "dm", "dsa"]
        assert db.list_methods("no-such-*") == []

    def test_create_method_spec_and_keywords_agree(self):
        """Keywords and the spec string give the same validated, typed parameters."""
        from distillbench.methods.base import DistillationMethod

        by_keyword = db.create_method("dm", iterations=10, net="convnet[width=16]", dsa=False)
        by_spec = db.create_method("dm[iterations=10,net=convnet[width=16],dsa=false]")
        mixed = db.create_method("dm[iterations=10]", net="convnet[width=16]", dsa="false")
        assert isinstance(by_keyword, DistillationMethod) and by_keyword.name == "dm"
        assert by_keyword.params == by_spec.params == mixed.params
        assert by_keyword.params.iterations == 10 and by_keyword.params.dsa is False
        assert db.create_method("dm", iterations="20").params.iterations == 20, "strings convert as in a spec"
        assert db.create_method("dm").params == type(by_spec.params)(), "no parameters: the defaults"
        with pytest.raises(ConfigError, match="parameter 'iterations' of method 'dm' must be int"):
            db.create_method("dm", iterations=2.5)  # a float is not a count, whichever way it is given

    @pytest.mark.parametrize(
        ("call", "argv"),
        [
            (lambda: db.create_method("dn"), ["distill", "dn", "digits", "--ipc", "1"]),
            (lambda: db.create_method("dm", iters=5), ["distill", "dm[iters=5]", "digits", "--ipc", "1"]),
            (
                lambda: db.create_method("dm", iterations="many"),
                ["distill", "dm[iterations=many]", "digits", "--ipc", "1"],
            ),
            (lambda: db.create_method("dm[iterations=5"), ["distill", "dm[iterations=5", "digits", "--ipc", "1"]),
        ],
        ids=["unknown name", "unknown parameter", "mistyped", "malformed"],
    )
    def test_errors_are_the_cli_s(self, capsys, call, argv):
        """create_method raises the registry's error with the message the CLI prints for the same spec."""
        with pytest.raises(DistillBenchError) as info:
            call()
        assert str(info.value) == cli_error(capsys, *argv)

    def test_unknown_name_suggests(self):
        """An unknown name is an UnknownNameError (a KeyError too) with close matches."""
        with pytest.raises(UnknownNameError, match=r"unknown method 'dn'\. Did you mean: dm, dd, dc\?") as info:
            db.create_method("dn")
        assert isinstance(info.value, KeyError)

    def test_parameter_given_twice(self):
        """A key in the spec and as a keyword is an error, not a silent override."""
        with pytest.raises(ConfigError, match="parameter 'iterations' of method 'dm' is given twice"):
            db.create_method("dm[iterations=10]", iterations=20)


@pytest.fixture
def api_protocol():
    """A registered protocol small enough to distil and evaluate several times in a test (2 models, 5 epochs)."""
    from distillbench.harness.protocols import QUICK_V1

    protocol = dataclasses.replace(QUICK_V1, name="api-test", networks=("convnet[width=8]",), epochs=5, n_models=2)
    with temp_plugin("protocols", "api-test", protocol):
        yield protocol


class TestDistillEvaluate:
    def test_distill_and_evaluate_give_the_cli_s_rows(self, tmp_path, capsys, api_protocol):
        """distill returns the row `distill --json` prints; evaluate returns what `evaluate --json` prints."""
        out = tmp_path / "set.safetensors"
        row = db.distill("random", "digits", ipc=1, protocol="api-test", out=out)
        assert isinstance(row, dict) and row["status"] == "ok", row.get("error")
        assert row["grid"] == "api" and row["method"] == "random" and len(row["acc_per_model"]) == 2
        assert set(row) == set(store.COLUMN_NAMES)
        assert out.is_file() and out.with_suffix(".json").is_file()

        assert main(["distill", "random", "digits", "--ipc", "1", "--protocol", "api-test", "--json"]) == 0
        cli_row = json.loads(capsys.readouterr().out)
        assert cli_row["trial_id"] == row["trial_id"] and cli_row["acc_per_model"] == row["acc_per_model"]
        assert set(cli_row) == set(json.loads(store.row_to_json(row)))

        result = db.evaluate(out, protocol="api-test")
        assert result["acc_per_model"] == row["acc_per_model"], "re-evaluating the same set with the same seed"
        assert main(["evaluate", str(out), "--protocol", "api-test", "--json"]) == 0
        cli_result = json.loads(capsys.readouterr().out)
        timing = {"eval_seconds"}
        assert {k: v for k, v in cli_result.items() if k not in timing} == {
            k: v for k, v in json.loads(json.dumps(result)).items() if k not in timing
        }
        other_seed = db.evaluate(str(out), protocol="api-test", seed=5)
        assert other_seed["seed"] == 5 and other_seed["acc_per_model"] != row["acc_per_model"]

    @pytest.mark.parametrize(
        ("kwargs", "argv"),
        [
            ({"method": "random", "dataset": "digitz", "ipc": 1}, ["random", "digitz", "--ipc", "1"]),
            (
                {"method": "random", "dataset": "digits", "ipc": 1, "protocol": "quick-v2"},
                ["random", "digits", "--ipc", "1", "--protocol", "quick-v2"],
            ),
            ({"method": "random", "dataset": "digits", "ipc": 0}, ["random", "digits", "--ipc", "0"]),
            (
                {"method": "herding", "dataset": "digits", "ipc": 1, "weighting": "kde"},
                ["herding", "digits", "--ipc", "1", "--weighting", "kde"],
            ),
            (
                {"method": "random", "dataset": "digits", "ipc": 1, "labels": "teachr"},
                ["random", "digits", "--ipc", "1", "--labels", "teachr"],
            ),
        ],
        ids=["unknown dataset", "unknown protocol", "ipc 0", "incompatible weighting", "unknown label stage"],
    )
    def test_distill_errors_are_the_cli_s(self, capsys, kwargs, argv):
        """Bad input raises before any work, with the message `distillbench distill` prints."""
        with pytest.raises(DistillBenchError) as info:
            db.distill(**kwargs)
        assert str(info.value) == cli_error(capsys, "distill", *argv)

    def test_evaluate_errors_are_the_cli_s(self, tmp_path, capsys):
        """A missing set and an unknown protocol: the CLI's messages."""
        missing = str(tmp_path / "nothing.safetensors")
        with pytest.raises(DataError) as info:
            db.evaluate(missing, protocol="quick-v1")
        assert str(info.value) == cli_error(capsys, "evaluate", missing, "--protocol", "quick-v1")
        with pytest.raises(UnknownNameError) as info:
            db.evaluate(missing, protocol="quick-v2")
        assert str(info.value) == cli_error(capsys, "evaluate", missing, "--protocol", "quick-v2")

    def test_out_is_a_directory(self, tmp_path, capsys):
        """The message names the keyword (out) where the CLI names its option (--out)."""
        with pytest.raises(DistillBenchError) as info:
            db.distill("random", "digits", ipc=1, protocol="quick-v1", out=tmp_path)
        cli = cli_error(
            capsys, "distill", "random", "digits", "--ipc", "1", "--protocol", "quick-v1", "--out", str(tmp_path)
        )
        assert "out" + cli.removeprefix("--out") == str(info.value)

    def test_cross_architecture_protocol_needs_a_network(self, tmp_path):
        """A protocol with several networks: name one (its row is returned), or get a one-line error."""
        from distillbench.harness.protocols import QUICK_V1

        protocol = dataclasses.replace(
            QUICK_V1, name="xarch-test", networks=("convnet[width=8]", "mlp[hidden=32]"), epochs=2, n_models=1
        )
        with temp_plugin("protocols", "xarch-test", protocol):
            with pytest.raises(ConfigError, match=r"evaluates on 2 networks \(convnet\[width=8\], mlp\[hidden=32\]\)"):
                db.distill("random", "digits", ipc=1, protocol="xarch-test")
            with pytest.raises(ConfigError, match="network 'lenet' is not one of them"):
                db.distill("random", "digits", ipc=1, protocol="xarch-test", network="lenet")
            row = db.distill(
                "random", "digits", ipc=1, protocol="xarch-test", network="mlp[hidden=32]", out=tmp_path / "s"
            )
            assert row["status"] == "ok" and row["eval_network"] == "mlp[hidden=32]"
            result = db.evaluate(tmp_path / "s.safetensors", protocol="xarch-test", network="convnet[width=8]")
            assert result["eval_network"] == "convnet[width=8]"


def _row(trial_id: str, **values):
    return {"trial_id": trial_id, "grid": "g", "method": "random", "eval_network": "convnet", **values}


class TestLoadResults:
    def test_one_copy_per_trial(self, tmp_path):
        """Within a directory the newest copy wins (also over a compacted one); across directories ok wins."""
        a, b = tmp_path / "a", tmp_path / "b"
        store.write_row(a, _row("t1", status="ok", acc_mean=0.1))
        store.compact(a)
        store.write_row(a, _row("t1", status="ok", acc_mean=0.2))  # re-run after compaction: newer
        store.write_row(a, _row("t2", status="error", error="boom"))
        store.write_row(b, _row("t2", status="ok", acc_mean=0.5))
        store.write_row(b, _row("t3", status="ok", acc_mean=0.7))

        only_a = db.load_results(a)
        assert isinstance(only_a, pd.DataFrame)
        assert sorted(only_a["trial_id"]) == ["t1", "t2"]
        assert only_a.set_index("trial_id").loc["t1", "acc_mean"] == 0.2, "the newer copy must win"

        both = db.load_results(a, str(b))
        assert sorted(both["trial_id"]) == ["t1", "t2", "t3"], "one row per trial across directories"
        assert both.set_index("trial_id").loc["t2", "status"] == "ok", "an ok copy wins over a failed one"
        assert list(both.index) == list(range(len(both)))

        narrow = db.load_results(a, b, columns=["trial_id", "acc_mean"])
        assert list(narrow.columns) == ["trial_id", "acc_mean"] and len(narrow) == 3

    def test_skips_a_corrupt_file_with_a_warning(self, tmp_path):
        """A file that is not a row file is skipped with a warning, as status and leaderboard skip it."""
        store.write_row(tmp_path, _row("t1", status="ok"))
        (tmp_path / "rows" / "junk.parquet").write_bytes(b"not parquet")
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            frame = db.load_results(tmp_path)
        assert list(frame["trial_id"]) == ["t1"]
        assert any("skipped junk.parquet" in str(w.message) for w in caught)

    def test_errors(self, tmp_path, capsys):
        """No directory, a missing one, one without rows and an unknown column: the CLI's one-line errors."""
        with pytest.raises(ConfigError, match="load_results needs a results directory"):
            db.load_results()
        missing = str(tmp_path / "nope")
        with pytest.raises(DistillBenchError) as info:
            db.load_results(missing)
        assert str(info.value) == cli_error(capsys, "leaderboard", missing)
        with pytest.raises(DistillBenchError) as info:
            db.load_results(tmp_path)  # exists, but holds no rows/ (the parent of results folders, say)
        assert str(info.value) == cli_error(capsys, "status", str(tmp_path))
        store.write_row(tmp_path, _row("t1", status="ok"))
        with pytest.raises(ConfigError, match=r"unknown row columns \['acc'\]\. Did you mean: acc_few, acc_std\?"):
            db.load_results(tmp_path, columns=["trial_id", "acc"])

    def test_reads_s3(self, s3_endpoint):
        """An s3:// results location reads like a local one."""
        uri = f"s3://bench/api?endpoint_override={s3_endpoint}&scheme=http&region=us-east-1"
        store.write_row(uri, _row("t1", status="ok", acc_mean=0.9))
        frame = db.load_results(uri)
        assert list(frame["trial_id"]) == ["t1"] and frame["acc_mean"].tolist() == [0.9]


class TestRun:
    def test_dry_run_of_a_dict_grid(self, tmp_path):
        """A dict grid, dry run: every trial listed with its state, nothing run or written."""
        results = tmp_path / "results"
        done = db.run(GRID, results=results, dry_run=True)
        assert isinstance(done, db.RunResult) and done.outcome is None and done.leaderboard is None
        assert done.grid == "api" and done.results == results
        assert [(t["method"], t["state"]) for t in done.trials] == [("random", "pending"), ("herding", "pending")]
        assert not results.exists()

    def test_grid_file_errors_are_the_cli_s(self, tmp_path, capsys):
        """A bad grid file raises what `distillbench run` prints; nothing is written."""
        path = tmp_path / "grid.yaml"
        path.write_text(yaml.safe_dump({**GRID, "grid": {**GRID["grid"], "method": "dn"}}))
        with pytest.raises(UnknownNameError) as info:
            db.run(path, results=tmp_path / "r")
        assert str(info.value) == cli_error(capsys, "run", str(path), "--results", str(tmp_path / "r"))
        assert not (tmp_path / "r").exists()
        with pytest.raises(ConfigError, match="grid must be the path of a YAML grid file or a dict, got int"):
            db.run(42)  # type: ignore[arg-type]
        with pytest.raises(ConfigError, match="unknown grid keys"):
            db.run({**GRID, "gird": {}}, dry_run=True)

    @pytest.mark.ray
    def test_run_then_load_results(self, tmp_path):
        """A dict grid runs under Ray: outcome, rows and leaderboard; a second run skips every trial."""
        plugin = tmp_path / "api_plugin.py"
        plugin.write_text(
            textwrap.dedent(
                """
                import dataclasses

                from distillbench.harness.plugins import register_protocol
                from distillbench.harness.protocols import QUICK_V1

                register_protocol(
                    dataclasses.replace(QUICK_V1, name="api-test", networks=("convnet[width=8]",), epochs=5, n_models=2)
                )
                """
            )
        )
        grid = {**GRID, "protocol": "api-test", "plugins": [str(plugin)]}
        ray_init = {"num_cpus": 2, "object_store_memory": 100 * 2**20}
        first = db.run(grid, results=tmp_path / "results", ray_init=ray_init, show_progress=False)
        assert first.outcome is not None
        assert (first.outcome.ok, first.outcome.failed, first.outcome.pending) == (2, 0, 0), first.outcome.errors
        assert first.leaderboard == tmp_path / "results" / "leaderboard" / "leaderboard.md"
        assert first.leaderboard.is_file()
        frame = db.load_results(first.results)
        assert sorted(frame["method"]) == ["herding", "random"] and set(frame["status"]) == {"ok"}

        again = db.run(grid, results=tmp_path / "results", ray_init=ray_init, show_progress=False, leaderboard=False)
        assert again.outcome is not None and again.outcome.skipped == 2 and again.leaderboard is None
        assert {t["state"] for t in again.trials} == {"done"}
