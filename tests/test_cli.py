"""The command line: bad input exits 2 with one line and writes nothing; good input does the work."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import yaml

from distillbench.harness.cli import main
from distillbench.harness.stages import Weighting

from .conftest import REPO, temp_plugin

GOOD = {"name": "g", "protocol": "quick-v1", "grid": {"dataset": ["digits"], "method": ["random"], "ipc": [1]}}


def write_grid(tmp_path, document=None, text=None):
    path = tmp_path / "grid.yaml"
    path.write_text(text if text is not None else yaml.safe_dump(document))
    return path


def run_cli(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def with_grid(**overrides):
    return {**GOOD, "grid": {**GOOD["grid"], **overrides}}


class Uniform(Weighting):
    """A test weighting that gives every sample weight 1."""

    def compute(self, data, ctx):
        return None


BAD_GRIDS = [
    (
        "unknown method",
        with_grid(method=["dn"]),
        "unknown method 'dn'. Did you mean: dm, dd, dc? Available: datm, dc, dd, dm, dsa, ",
    ),
    ("unknown dataset", with_grid(dataset=["digitz"]), "unknown dataset 'digitz'. Did you mean: digits?"),
    ("unknown network", with_grid(method=["dm[net=convnett]"]), "unknown network 'convnett'. Did you mean: convnet?"),
    ("unknown protocol", {**GOOD, "protocol": "quick-v2"}, "unknown protocol 'quick-v2'. Did you mean: quick-v1"),
    ("unknown parameter", with_grid(method=["dm[iters=5]"]), "unknown parameter 'iters' for method 'dm'; valid"),
    (
        "mistyped parameter",
        with_grid(method=["dm[iterations=many]"]),
        "parameter 'iterations' of method 'dm' must be int",
    ),
    ("ipc below 1", with_grid(ipc=[0]), "ipc must be at least 1 (samples per class), got 0"),
    ("empty grid", {"name": "g", "protocol": "quick-v1"}, "grid is empty"),
    ("network too deep", with_grid(method=["dm[net=convnet[depth=6]]"]), "convnet depth 6 is too deep for 8x8"),
    (
        "trajectory segment beyond the buffer",
        with_grid(method=["mtt[max_start_epoch=48,expert_epochs=3]"]),
        "max_start_epoch + expert_epochs = 48 + 3 = 51 goes beyond the buffer's train_epochs=50",
    ),
    ("no student steps", with_grid(method=["mtt[syn_steps=0]"]), "syn_steps must be at least 1, got 0"),
    ("datm window upside down", with_grid(method=["datm[min_start_epoch=30]"]), "min_start_epoch must be in [0, "),
    (
        "rded observer too deep",
        with_grid(method=["rded[teacher_net=convnet[depth=5]]"]),
        "method 'rded': observer teacher_net='convnet[depth=5]': convnet depth 5 is too deep for 8x8",
    ),
    ("zca on text", with_grid(dataset=["sst2[zca=true]"]), "zca=true whitens images; dataset 'sst2' is text"),
    (
        "incompatible weighting",
        with_grid(method=["herding"], weighting=["uniformtest"]),
        "weighting 'uniformtest' cannot be combined with method 'herding'",
    ),
]


class TestBadInput:
    @pytest.mark.parametrize(("case", "document", "message"), BAD_GRIDS, ids=[c[0] for c in BAD_GRIDS])
    def test_bad_grid(self, tmp_path, capsys, case, document, message):
        """Each bad grid exits 2 with one 'error:' line naming the problem, and writes nothing."""
        grid = write_grid(tmp_path, document)
        results = tmp_path / "results"
        with temp_plugin("weightings", "uniformtest", Uniform):
            code, out, err = run_cli(capsys, "run", str(grid), "--results", str(results))
        assert code == 2, f"{case}: exit {code}, stderr {err!r}"
        assert err.count("\n") == 1 and err.startswith("error: "), f"{case}: not one line: {err!r}"
        assert message in err, f"{case}: {err!r} does not contain {message!r}"
        assert not results.exists(), f"{case}: something was written"

    def test_malformed_yaml(self, tmp_path, capsys):
        """Invalid YAML is one line naming the file and the position."""
        grid = write_grid(tmp_path, text="name: g\ngrid: {dataset: [digits\n")
        code, _, err = run_cli(capsys, "run", str(grid))
        assert code == 2 and err.startswith(f"error: grid file '{grid}' is not valid YAML at line ")
        assert err.count("\n") == 1

    def test_missing_grid_file(self, tmp_path, capsys):
        """A missing grid file names the path."""
        code, _, err = run_cli(capsys, "run", str(tmp_path / "missing.yaml"))
        assert code == 2
        assert (
            err == f"error: grid file '{tmp_path / 'missing.yaml'}' not found; pass the path of a YAML grid "
            "such as configs/quickstart.yaml\n"
        )

    def test_results_path_is_a_file(self, tmp_path, capsys):
        """A results path that is an existing file is refused and left untouched."""
        grid = write_grid(tmp_path, GOOD)
        target = tmp_path / "results.txt"
        target.write_text("keep me")
        code, _, err = run_cli(capsys, "run", str(grid), "--results", str(target))
        assert code == 2 and "is an existing file; pass a directory with --results" in err
        assert target.read_text() == "keep me"

    @pytest.mark.parametrize(
        ("argv", "message"),
        [
            (["distill", "dn", "digits", "--ipc", "1"], "unknown method 'dn'"),
            (["distill", "dm", "digits", "--ipc", "0"], "ipc must be at least 1"),
            (["distill", "dm", "digits", "--ipc", "x"], "argument --ipc: invalid int value: 'x'"),
            (["distill", "dm", "digits"], "the following arguments are required: --ipc"),
            (["ls", "gadgets"], "unknown plugin kind 'gadgets'"),
            (["describe", "dmm"], "no plugin named 'dmm'. Did you mean: dm?"),
            (["evaluate", "nothere.safetensors", "--protocol", "quick-v1"], "does not exist"),
            (["leaderboard", "no-such-dir"], "results directory 'no-such-dir' does not exist"),
            (["frobnicate"], "invalid choice: 'frobnicate'"),
        ],
    )
    def test_bad_arguments(self, capsys, argv, message):
        """Bad command-line arguments exit 2 with one line."""
        with pytest.raises(SystemExit) as info:
            code = main(argv)
            raise SystemExit(code)
        err = capsys.readouterr().err
        assert info.value.code == 2, err
        assert err.count("\n") == 1 and message in err, err

    def test_no_traceback_from_console_script(self, tmp_path):
        """The installed console script prints one line and no traceback for bad input."""
        grid = write_grid(tmp_path, with_grid(method=["dn"]))
        exe = REPO.parent / "venv" / "bin" / "distillbench"
        command = [str(exe)] if exe.exists() else [sys.executable, "-m", "distillbench.harness.cli"]
        proc = subprocess.run([*command, "run", str(grid)], capture_output=True, text=True, cwd=tmp_path)
        assert proc.returncode == 2
        assert "Traceback" not in proc.stderr and proc.stderr.count("\n") == 1, proc.stderr


class TestCommands:
    def test_dry_run_writes_nothing(self, tmp_path, capsys):
        """--dry-run lists the trials, schedules nothing and writes nothing."""
        grid = write_grid(tmp_path, with_grid(method=["random", "herding"], ipc=[1, 10]))
        results = tmp_path / "r"
        code, out, _ = run_cli(capsys, "run", str(grid), "--results", str(results), "--dry-run")
        assert code == 0 and "4 trials, 4 to run" in out and out.count(" pending ") == 4
        assert not results.exists()

    def test_ls_and_pattern(self, capsys):
        """ls lists names naturally sorted and filters with a wildcard."""
        methods = [
            "datm",
            "dc",
            "dd",
            "dm",
            "dsa",
            "ftd",
            "full",
            "herding",
            "kcenter",
            "mtt",
            "random",
            "rded",
            "sre2l",
        ]
        assert run_cli(capsys, "ls", "methods")[1].split() == methods
        assert run_cli(capsys, "ls", "methods", "d*")[1].split() == ["datm", "dc", "dd", "dm", "dsa"]
        listed = run_cli(capsys, "ls", "protocols")[1].split()
        # tests/conftest.py registers "tiny-test" for the whole session; the rest are the built-ins
        assert [p for p in listed if p != "tiny-test"] == [
            "convnet-v1",
            "convnet-v1-cpu-reduced",
            "dd-replay-v1",
            "lt-cpu-v1",
            "lt-cpu-v1-relabel",
            "quick-v1",
            "quick-v1-relabel",
            "text-v1",
        ]

    def test_describe_shows_parameters(self, capsys):
        """describe prints the docstring and typed parameters with defaults."""
        code, out, _ = run_cli(capsys, "describe", "dm")
        assert code == 0
        assert "iterations: int = 20000" in out and "lr_img: float = 1.0" in out
        code, out, _ = run_cli(capsys, "describe", "quick-v1")
        assert "quick = True" in out and "QUICK" in out

    def test_help_has_examples(self):
        """Every sub-command's --help shows an example."""
        for command in ("run", "ls", "describe", "distill", "evaluate", "leaderboard"):
            proc = subprocess.run(
                [sys.executable, "-m", "distillbench.harness.cli", command, "--help"], capture_output=True, text=True
            )
            assert proc.returncode == 0 and "example:\n  distillbench " + command in proc.stdout, command

    def test_data_root_help_states_its_default(self):
        """Every command that takes --data-root says where data is looked for when it is not given."""
        from distillbench.harness.cli import build_parser

        commands = next(a for a in build_parser()._actions if a.dest == "command").choices
        taking = {
            name: action.help
            for name, sub in commands.items()
            for action in sub._actions
            if "--data-root" in action.option_strings
        }
        assert len(taking) >= 9, sorted(taking)
        missing = [name for name, text in taking.items() if "$DISTILLBENCH_DATA or ~/.cache/distillbench" not in text]
        assert not missing, f"--data-root without its default in: {missing}"

    def test_distill_json_then_evaluate(self, tmp_path, capsys, tiny_protocol):
        """distill --json prints one JSON row; the saved set can be evaluated again."""
        out_file = tmp_path / "set.safetensors"
        code, out, _ = run_cli(
            capsys,
            "distill",
            "random",
            "digits",
            "--ipc",
            "1",
            "--protocol",
            "tiny-test",
            "--json",
            "--out",
            str(out_file),
        )
        assert code == 0
        row = json.loads(out)
        assert row["status"] == "ok" and row["method"] == "random" and len(row["acc_per_model"]) == 2
        assert out_file.is_file() and out_file.with_suffix(".json").is_file()
        code, out, _ = run_cli(capsys, "evaluate", str(out_file), "--protocol", "tiny-test", "--json")
        assert code == 0
        again = json.loads(out)
        assert again["acc_per_model"] == row["acc_per_model"], "re-evaluating the same set with the same seed differs"


class TestStatus:
    def test_counts_and_error_summary(self, tmp_path, capsys):
        """status counts done / failed / pending per grid (pending from the grid file) and groups errors."""
        from distillbench.harness import store
        from distillbench.harness.spec import load_grid_file

        grid_path = write_grid(tmp_path, with_grid(method=["random", "herding"], ipc=[1, 10]))
        trials = load_grid_file(grid_path).trials
        results = tmp_path / "results"
        store.write_row(results, {"trial_id": trials[0].trial_id, "grid": "g", "status": "ok"})
        for t in trials[1:3]:
            store.write_row(results, {"trial_id": t.trial_id, "grid": "g", "status": "error", "error": "OOM\nlong"})
        code, out, _ = run_cli(capsys, "status", str(results), "--grid", str(grid_path))
        assert code == 0
        line = next(line for line in out.splitlines() if line.startswith("g "))
        assert line.split() == ["g", "1", "0", "2", "3"], out
        assert "2 x OOM" in out

    def test_not_a_results_directory(self, tmp_path, capsys):
        """A folder without rows/ is a one-line error."""
        code, _, err = run_cli(capsys, "status", str(tmp_path))
        assert code == 2 and "has no rows/ folder" in err and err.count("\n") == 1
