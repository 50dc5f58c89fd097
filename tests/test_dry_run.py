"""Large grids (issue 17): the trial cap, the streamed trials and what ``run --dry-run`` prints as it goes.

``benchmarks/dry_run.py`` measures the same on grids of 10^4 to 10^6 trials.
"""

from __future__ import annotations

import io
import itertools
import sys

import pytest
import yaml

from distillbench.harness import spec as spec_module
from distillbench.harness.cli import main
from distillbench.harness.errors import ConfigError, UnknownNameError
from distillbench.harness.spec import AXES, DEFAULTS, MAX_GRID_TRIALS, TrialSpec, parse_grid, plan_grid, resolve_trial

BASE = {"name": "g", "protocol": "quick-v1"}
GOOD_BLOCK = {"dataset": "digits", "method": ["random", "herding"], "ipc": [1, 10]}
BAD_BLOCK = {"dataset": "digits", "method": "dn", "ipc": 1}


def write(tmp_path, document):
    path = tmp_path / "grid.yaml"
    path.write_text(yaml.safe_dump(document))
    return path


@pytest.fixture
def no_resolving(monkeypatch):
    """Fail the test if any trial is resolved."""

    def refuse(self, spec):
        raise AssertionError(f"resolved {spec} although the grid is above the cap")

    monkeypatch.setattr(spec_module._Resolver, "resolve", refuse)


class TestCap:
    def test_above_the_cap_is_one_line_exit_2_without_resolving(self, tmp_path, capsys, no_resolving):
        """A 10^6-trial grid is refused from its axis lengths alone: one error line, exit 2, nothing printed."""
        block = {"dataset": "digits", "method": "random", "ipc": list(range(1, 1001)), "seed": list(range(1000))}
        grid = write(tmp_path, {**BASE, "grid": block})
        for argv in (["run", str(grid), "--dry-run"], ["run", str(grid), "--results", str(tmp_path / "r")]):
            code = main(argv)
            out, err = capsys.readouterr()
            assert code == 2 and out == ""
            assert err == (
                f"error: {grid}: grid 'g' has 1,000,000 trials, above the cap of 100,000: split it into several grid "
                "files of at most 100,000 trials (a block has the product of its axis lengths) and run them one "
                "after another\n"
            )
        assert not (tmp_path / "r").exists()

    def test_blocks_add_up(self, no_resolving):
        """The count is the sum over blocks of the product of their axis lengths, duplicates included."""
        block = {**GOOD_BLOCK, "seed": list(range(MAX_GRID_TRIALS // 4))}  # 2 x 2 x 25,000: exactly the cap
        assert plan_grid({**BASE, "grid": block}).combinations == MAX_GRID_TRIALS
        with pytest.raises(ConfigError, match=r"has 200,000 trials, above the cap of 100,000"):
            plan_grid({**BASE, "grids": [block, block]})


class TestStream:
    DOC = {
        **BASE,
        "grids": [
            {**GOOD_BLOCK, "seed": [0, 1]},
            {"dataset": "digits", "method": ["dm", "dm[iterations=20000]", "random"], "ipc": [1, "1"], "seed": [1]},
        ],
    }

    def test_same_ids_in_the_same_order_as_resolving_each_combination(self):
        """The stream yields what resolving every combination on its own and keeping first ids gives."""
        expected: dict[str, None] = {}
        for block in self.DOC["grids"]:
            axes = {**DEFAULTS, "protocol": "quick-v1", **block}
            values = [axes[a] if isinstance(axes[a], list) else [axes[a]] for a in AXES]
            for combo in itertools.product(*values):
                trial = resolve_trial(TrialSpec(grid="g", **dict(zip(AXES, combo, strict=True))))
                expected.setdefault(trial.trial_id, None)
        streamed = [t.trial_id for t in plan_grid(self.DOC).trials()]
        # block 2 adds one dm trial: its random trial (ipc 1, seed 1) is block 1's, and is yielded there only
        assert streamed == list(expected) and len(streamed) == 8 + 1
        assert [t.trial_id for t in parse_grid(self.DOC).trials] == streamed

    def test_duplicates_are_yielded_once(self):
        """Two spellings of one configuration (dm and its default written out, "1" and 1) give one trial."""
        block = {"dataset": "digits", "method": ["dm", "dm[iterations=20000]"], "ipc": [1, "1"], "seed": ["7", 7]}
        trials = list(plan_grid({**BASE, "grid": block}).trials())
        assert len(trials) == 1 and trials[0].spec.seed == 7

    def test_lazy_until_the_invalid_block(self):
        """Trials before an invalid one are yielded; the error, naming its block, comes when it is reached."""
        stream = plan_grid({**BASE, "grids": [GOOD_BLOCK, BAD_BLOCK]}).trials()
        assert len(list(itertools.islice(stream, 4))) == 4
        with pytest.raises(UnknownNameError, match=r"^grid block 2: unknown method 'dn'"):
            next(stream)


class TestDryRunOutput:
    def test_prints_trials_before_the_grid_is_resolved(self, tmp_path, monkeypatch):
        """Each trial line is out before the next trial is resolved, and the counts follow the trials."""
        grid = write(tmp_path, {**BASE, "grid": {**GOOD_BLOCK, "seed": [0, 1, 2]}})
        buffer = io.StringIO()
        monkeypatch.setattr(sys, "stdout", buffer)
        printed_at_resolve: list[int] = []
        resolve = spec_module._Resolver.resolve

        def watching(self, spec):
            printed_at_resolve.append(buffer.getvalue().count(" pending "))
            return resolve(self, spec)

        monkeypatch.setattr(spec_module._Resolver, "resolve", watching)
        assert main(["run", str(grid), "--dry-run", "--results", str(tmp_path / "r")]) == 0
        assert printed_at_resolve == list(range(12))
        lines = buffer.getvalue().splitlines()
        assert lines[0] == "grid 'g': 12 combinations; listing each trial as it validates"
        assert lines[-2] == "grid 'g': 12 trials, 12 to run, 0 done"
        assert lines[-1].endswith("nothing was run or written (--dry-run)")
        assert not (tmp_path / "r").exists()

    def test_later_error_after_listed_trials_exits_2(self, tmp_path, capsys):
        """A dry-run lists the valid trials before an invalid block, then stops with one error line, exit 2."""
        grid = write(tmp_path, {**BASE, "grids": [GOOD_BLOCK, BAD_BLOCK]})
        code = main(["run", str(grid), "--dry-run", "--results", str(tmp_path / "r")])
        out, err = capsys.readouterr()
        assert code == 2 and out.count(" pending ") == 4 and "trials," not in out
        assert err.startswith(f"error: {grid}: grid block 2: unknown method 'dn'") and err.count("\n") == 1
        assert not (tmp_path / "r").exists()

    def test_run_validates_the_whole_grid_before_anything(self, tmp_path, capsys, monkeypatch):
        """``run`` resolves every trial first: an invalid last block schedules nothing and prints no trial."""
        from distillbench.harness import scheduler

        def never(*args, **kwargs):
            raise AssertionError("run_grid was called for an invalid grid")

        monkeypatch.setattr(scheduler, "run_grid", never)
        grid = write(tmp_path, {**BASE, "grids": [GOOD_BLOCK, BAD_BLOCK]})
        code = main(["run", str(grid), "--results", str(tmp_path / "r")])
        out, err = capsys.readouterr()
        assert code == 2 and out == ""
        assert err.startswith(f"error: {grid}: grid block 2: unknown method 'dn'") and err.count("\n") == 1
        assert not (tmp_path / "r").exists()
