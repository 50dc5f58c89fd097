"""Fair tuning (tune: in a grid block): parsing, every bad input, budgets, seeds, probes, resume, leaderboard."""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import textwrap
from pathlib import Path

import pytest
import yaml

from distillbench.harness.errors import ConfigError
from distillbench.harness.tuning import (
    Budget,
    Search,
    SearchState,
    SearchTrial,
    parse_distribution,
    parse_tune,
    space_hash,
    tuning_seed,
)

BLOCK = {
    "dataset": ["digits"],
    "method": ["dm[iterations=4,batch_real=8,net=convnet[width=8]]", "dc[iterations=2,net=convnet[width=8]]"],
    "ipc": [1],
    "seed": [0, 1],
}
TUNE = {
    "objective": "val_acc_mean",
    "budget": {"trials": 4},
    "search": "random",
    "space": {"dm": {"lr_img": "loguniform(0.1, 100)"}, "dc": {"lr_img": "loguniform(0.01, 1)"}},
}


def _grid(tmp_path: Path, tune: dict | None = None, block: dict | None = None, **top) -> Path:
    document = {"name": "tuned", "protocol": "quick-v1", **top, "grid": {**(block or BLOCK), "tune": tune or TUNE}}
    path = tmp_path / "grid.yaml"
    path.write_text(yaml.safe_dump(document))
    return path


def _cli(*argv: str) -> tuple[int, str, str]:
    from distillbench.harness.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(list(argv))
    return code, out.getvalue(), err.getvalue()


class TestDistributions:
    def test_each_kind_parses_to_a_canonical_text(self):
        """Every distribution parses; bounds become floats (or ints for the integer kinds)."""
        cases = {
            "uniform(0, 1)": ("uniform", (0.0, 1.0)),
            "loguniform(0.1, 1e2)": ("loguniform", (0.1, 100.0)),
            "quniform(0, 1, 0.25)": ("quniform", (0.0, 1.0, 0.25)),
            "randint(10, 60)": ("randint", (10, 60)),
            "lograndint(1, 64)": ("lograndint", (1, 64)),
            "choice(64, 128, real, true, none)": ("choice", (64, 128, "real", True, None)),
            "choice(convnet, 'convnet[width=64,depth=2]')": ("choice", ("convnet", "convnet[width=64,depth=2]")),
        }
        for text, (kind, args) in cases.items():
            dist = parse_distribution(text, "here")
            assert (dist.kind, dist.args) == (kind, args), text
            assert parse_distribution(dist.text, "here") == dist, dist.text  # the canonical text round-trips
        assert parse_distribution("uniform(0, 1)", "x").text == "uniform(0.0, 1.0)"

    def test_a_yaml_list_is_a_choice(self):
        assert parse_distribution([64, 128], "here").text == "choice(64, 128)"

    @pytest.mark.parametrize(
        ("text", "message"),
        [
            ("lognormal(0, 1)", "unknown distribution 'lognormal'"),
            ("loguniformm(1, 2)", "Did you mean loguniform?"),
            ("loguniform(0, 10)", "positive low bound"),
            ("uniform(5, 1)", "needs low < high"),
            ("randint(1.5, 4)", "whole numbers"),
            ("randint(4, 1)", "low bound above its high bound"),
            ("quniform(0, 1)", "takes 3 numbers"),
            ("uniform(a, b)", "takes numbers"),
            ("choice(1, 1)", "lists a value twice"),
            ("__import__('os')", "unknown distribution '__import__'"),
            ("os.system('true')", "not a distribution"),
            (3.5, "expected a distribution"),
        ],
    )
    def test_bad_distributions_name_the_problem(self, text, message):
        with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace("?", r"\?")):
            parse_distribution(text, "tune.space.dm.lr_img")

    def test_flow_style_yaml_is_rejoined(self, tmp_path):
        """YAML splits ``{lr: loguniform(0.1, 100)}`` at its comma; the grid loader puts the call back together."""
        from distillbench.harness.spec import open_grid_file

        path = tmp_path / "grid.yaml"
        method = "dm[iterations=4,net=convnet[width=8]]"
        path.write_text(
            f'name: flow\nprotocol: quick-v1\ngrid:\n  dataset: digits\n  method: ["{method}"]\n  ipc: 1\n'
            "  tune:\n    budget: {trials: 2}\n    space:\n"
            "      dm: {lr_img: loguniform(0.1, 100), batch_real: choice(8, 16, 32), momentum: uniform(0, 0.9)}\n"
        )
        settings = open_grid_file(path).tunes[0]
        assert dict(settings.method_space("dm")) == {
            "batch_real": parse_distribution("choice(8, 16, 32)", "x"),
            "lr_img": parse_distribution("loguniform(0.1, 100)", "x"),
            "momentum": parse_distribution("uniform(0, 0.9)", "x"),
        }


class TestBadInputViaCli:
    """Every bad tune: section stops ``run`` (here --dry-run) with exit 2 and one line, before anything runs."""

    @pytest.mark.parametrize(
        ("change", "message"),
        [
            ({"space": {"dm": {"lr_img": "lognormal(0, 1)"}, "dc": TUNE["space"]["dc"]}}, "unknown distribution"),
            (
                {"space": {"dm": {"lr_imgg": "uniform(1, 2)"}, "dc": TUNE["space"]["dc"]}},
                "method 'dm' has no parameter 'lr_imgg'; its parameters: batch_real,",
            ),
            (
                {"space": {"dm": {"momentum": "uniform(0.5, 1.5)"}, "dc": TUNE["space"]["dc"]}},
                "the bound 1.5 of uniform(0.5, 1.5) is outside what parameter 'momentum' (float) of method 'dm' "
                "accepts (momentum must be in [0, 1)",
            ),
            (
                {"space": {"dm": TUNE["space"]["dm"], "dc": {"batch_train": "uniform(8, 64)"}}},
                "does not fit parameter 'batch_train' (int) of method 'dc': it is an integer parameter",
            ),
            (
                {"space": {"dm": {"iterations": "randint(2, 8)"}, "dc": TUNE["space"]["dc"]}},
                "'iterations' is both fixed in",
            ),
            ({"space": {"dm": TUNE["space"]["dm"]}}, "method 'dc[iterations=2,net=convnet[width=8]]' has no space"),
            ({"space": {**TUNE["space"], "mtt": {"lr_img": "loguniform(10, 100)"}}}, "the block has no method 'mtt'"),
            ({"budget": {"trials": 0}}, "budget.trials must be positive, got 0"),
            ({"budget": {"trial_hours": -1}}, "budget.trial_hours must be positive"),
            ({"budget": {"dm": {"trials": 4}}}, "one budget for every method of the block"),
            ({"objective": "acc_mean"}, "'acc_mean' is measured on the test split"),
            ({"objective": "acc_worst_group"}, "is measured on the test split"),
            ({"objective": "loss"}, "objective must be a validation metric (val_acc_mean)"),
            ({"search": "grid"}, "search must be one of random, optuna, hyperopt"),
            ({"scheduler": "hyperband"}, "scheduler must be one of none, asha"),
            ({"scheduler": {"name": "asha", "grace_period": 5, "probes": 3}}, "ASHA would never stop a trial"),
            ({"seeds": 3}, "unknown keys ['seeds']"),
        ],
    )
    def test_one_line_exit_2(self, tmp_path, change, message):
        code, out, err = _cli("run", str(_grid(tmp_path, {**TUNE, **change})), "--dry-run")
        assert code == 2
        assert err.count("\n") == 1 and err.startswith("error: ") and "Traceback" not in err
        assert message in err, err
        assert "combinations" not in out  # nothing was listed: the grid failed before its trials

    def test_search_library_missing(self, tmp_path, monkeypatch):
        """A search whose library is not installed names the pip package (the check runs before anything)."""
        import importlib.util

        from distillbench.harness import tuning

        real = importlib.util.find_spec
        monkeypatch.setattr(tuning.importlib.util, "find_spec", lambda name: None if name == "optuna" else real(name))
        code, _, err = _cli("run", str(_grid(tmp_path, {**TUNE, "search": "optuna"})), "--dry-run")
        assert code == 2 and err.count("\n") == 1
        assert "needs the optuna package, which is not installed: pip install optuna" in err

    def test_a_choice_the_data_cannot_run_is_refused(self, tmp_path):
        """A network too deep for 8x8 digits, as a choice: refused when the cells are resolved, naming the value."""
        space = {"dm": {"net": "choice(convnet[width=8], 'convnet[width=8,depth=4]')"}, "dc": TUNE["space"]["dc"]}
        block = {**BLOCK, "method": ["dm[iterations=4,batch_real=8]", BLOCK["method"][1]]}
        code, out, err = _cli("run", str(_grid(tmp_path, {**TUNE, "space": space}, block)), "--dry-run")
        assert code == 2 and err.count("\n") == 1
        assert "tune.space.dm.net: convnet[width=8,depth=4]" in err


class TestPlan:
    def test_equal_budgets_and_fresh_tuning_seeds(self, tmp_path):
        """One search per cell, each with the block's budget; tuning seeds are never a final seed."""
        from distillbench.harness.spec import open_grid_file

        plan = open_grid_file(_grid(tmp_path, {**TUNE, "budget": {"trials": 7}}, {**BLOCK, "ipc": [1, 2]}))
        searches = plan.searches()
        assert len(searches) == 4  # 2 methods x 2 ipc
        assert {s.budget for s in searches} == {Budget(trials=7)}
        assert {s.method_name for s in searches} == {"dm", "dc"}
        for s in searches:
            assert s.final_seeds == (0, 1) and s.tuning_seed not in s.final_seeds
        assert list(plan.trials()) == []  # a tuned block has no trials of its own: its searches decide them

    def test_tuning_seed_avoids_a_final_seed(self):
        settings = parse_tune(TUNE, "grid")
        cell = {"dataset": "digits"}
        first = tuning_seed(settings, cell, [])
        assert tuning_seed(settings, cell, [first]) != first

    def test_trial_identity(self, tmp_path):
        """Search trials and final trials get ids of their own; untuned trials' ids and sets are unchanged."""
        from distillbench.harness.spec import TrialSpec, open_grid_file

        search = open_grid_file(_grid(tmp_path)).searches()[0]
        params = {"lr_img": 3.5}
        one, two = search.trial(params, 0).resolve(), search.trial(params, 1).resolve()
        assert one.trial_id != two.trial_id  # the same configuration drawn twice is two search trials
        assert one.distill_id == two.distill_id  # ... sharing one distilled set
        final = search.finals(params)[0].resolve()
        plain = TrialSpec(**{**dataclasses.asdict(search.finals(params)[0]), "tuning": None}).resolve()
        assert final.trial_id != plain.trial_id and final.distill_id == plain.distill_id
        assert "tuning" not in plain.canonical()
        assert final.canonical()["tuning"] == {"id": search.tuning_id, "role": "final"}
        with pytest.raises(ConfigError, match="malformed tuning reference"):
            TrialSpec(dataset="digits", method="random", ipc=1, tuning="nonsense").resolve()

    def test_space_hash_depends_on_the_space_only(self):
        a = (("lr_img", parse_distribution("loguniform(0.1, 100)", "x")),)
        b = (("lr_img", parse_distribution("loguniform(0.1, 10)", "x")),)
        assert space_hash(a) == space_hash(a) != space_hash(b)


def _state(search: Search, *trials: tuple[str, float | None, float]) -> SearchState:
    return SearchState(
        search,
        tuple(
            SearchTrial(ordinal=i, trial_id=f"t{i}", params={"lr_img": i}, status=s, objective=o, seconds=sec)
            for i, (s, o, sec) in enumerate(trials)
        ),
    )


class TestBudgetAccounting:
    def test_trials_budget(self, tmp_path):
        """Stopped and diverged trials count one trial each; errors do not; the best is the earliest top one."""
        from distillbench.harness.spec import open_grid_file

        search = open_grid_file(_grid(tmp_path)).searches()[0]
        state = _state(search, ("ok", 0.5, 10), ("stopped", None, 2), ("error", None, 1), ("ok", 0.7, 9))
        assert state.spent == 3 and not state.finished and state.stopped == 1 and state.next_ordinal == 4
        state = _state(search, *state_trials(("ok", 0.7, 5), ("diverged", None, 5), ("ok", 0.7, 5), ("ok", 0.2, 5)))
        assert state.finished and state.best().ordinal == 0

    def test_hours_budget(self, tmp_path):
        """A time budget counts each counted trial's hours (a stopped one with the hours it ran)."""
        from distillbench.harness.spec import open_grid_file

        search = open_grid_file(_grid(tmp_path, {**TUNE, "budget": {"trial_hours": 0.001}})).searches()[0]
        state = _state(search, ("ok", 0.5, 1.8), ("stopped", None, 1.8), ("error", None, 100.0))
        assert state.spent == pytest.approx(3.6 / 3600) and state.finished
        assert not _state(search, ("ok", 0.5, 1.0)).finished


def test_hyperopt_resumes_with_its_finished_trials(tmp_path):
    """A resumed hyperopt search is handed its finished trials (ok ones, with their objectives) and keeps
    suggesting inside the space: a choice, an integer and a log-scale rate."""
    from distillbench.harness import scheduler
    from distillbench.harness.spec import open_grid_file

    space = {"dm": {"lr_img": "loguniform(0.1, 100)", "batch_real": "randint(2, 8)", "init": ["real", "noise"]}}
    tune = {**TUNE, "search": "hyperopt", "budget": {"trials": 9}, "space": space}
    block = {**BLOCK, "method": ["dm[iterations=4,net=convnet[width=8]]"]}
    search = open_grid_file(_grid(tmp_path, tune, block)).searches()[0]
    drawn = [(0.5, 3, "real", "ok", 0.31), (20.0, 8, "noise", "ok", 0.12), (2.0, 5, "real", "stopped", None)]
    drawn += [(4.0, 2, "noise", "error", None), (9.0, 6, "real", "ok", 0.40)]
    state = SearchState(
        search,
        tuple(
            SearchTrial(i, f"t{i}", {"lr_img": lr, "batch_real": b, "init": init}, status, objective, 1.0)
            for i, (lr, b, init, status, objective) in enumerate(drawn)
        ),
    )
    algorithm = scheduler._search_algorithm(search, state, "val_acc_mean")
    history = algorithm.get_state()["hyperopt_trials"]
    assert sorted(history.losses()) == [-0.40, -0.31, -0.12], "the finished trials were not handed to hyperopt"
    assert [t["misc"]["vals"]["init"] for t in history.trials] == [[0], [1], [0]]  # a choice by its index
    for n in range(4):
        config = algorithm.suggest(f"next{n}")
        assert 0.1 <= config["lr_img"] <= 100 and 2 <= config["batch_real"] <= 8, config
        assert config["init"] in ("real", "noise"), config


@pytest.mark.parametrize("search", ["optuna", "hyperopt"])
def test_unfinished_and_failed_trials_are_told_without_a_result(tmp_path, search):
    """A trial ASHA stopped or that diverged reaches the search algorithm without an objective (Tune hands
    over its last probe result). Optuna records it as pruned, HyperOpt as failed; neither raises, and a result
    is still recorded with its objective. Before, HyperOptSearch raised on the missing metric."""
    from distillbench.harness import scheduler
    from distillbench.harness.spec import open_grid_file

    search_ = open_grid_file(_grid(tmp_path, {**TUNE, "search": search, "budget": {"trials": 6}})).searches()[0]
    algorithm = scheduler._search_algorithm(search_, SearchState(search_, ()), "val_acc_mean")
    told = {
        "stopped": ("stopped", {"distill/probe_val_acc": 0.3}),
        "diverged": ("diverged", {"status": "diverged"}),
        "error": ("error", {"status": "error"}),
        "ok": ("ok", {"status": "ok", "val_acc_mean": 0.42}),
    }
    for name, (status, result) in told.items():
        algorithm.suggest(name)
        outcome = scheduler._outcome(status, result.get("val_acc_mean"))
        scheduler._tell(algorithm, search, name, outcome, "val_acc_mean", result.get("val_acc_mean"))
    if search == "optuna":
        states = [t.state.name for t in algorithm._ot_study.trials]
        assert states == ["PRUNED", "PRUNED", "FAIL", "COMPLETE"], states
        assert algorithm._ot_study.trials[-1].value == 0.42
    else:
        from hyperopt import JOB_STATE_DONE, JOB_STATE_ERROR

        history = algorithm._hpopt_trials  # .trials leaves out the failed ones, TPE's view
        states = [t["state"] for t in history._dynamic_trials]
        assert states == [JOB_STATE_ERROR] * 3 + [JOB_STATE_DONE], states
        assert history.losses() == [-0.42]


def state_trials(*trials):
    return trials


def test_stopped_is_a_status_of_its_own():
    """A stopped search trial is a result (not retried) without accuracy; mixed with others it is not ok."""
    from distillbench.harness.store import make_row, trial_status

    assert trial_status(["stopped"]) == "stopped"
    assert trial_status(["ok", "stopped"]) == "diverged"
    assert trial_status(["stopped", "error"]) == "error"
    assert make_row({"trial_id": "x", "status": "stopped"})["status"] == "stopped"


class TestProbe:
    def test_probes_report_validation_accuracy_and_leave_the_set_unchanged(self, digits, tiny_protocol):
        """With a probe, dm reports probes at 1/4, 2/4, 3/4 of its iterations; its set is bit-identical."""
        import torch

        from distillbench.harness.runner import distill_set
        from distillbench.harness.spec import TrialSpec
        from distillbench.harness.tuning import AshaSettings

        resolved = TrialSpec(
            dataset="digits", method="dm[iterations=8,batch_real=4,net=convnet[width=8]]", ipc=1, protocol="tiny-test"
        ).resolve()
        events = []

        def progress(fraction, message, **values):
            if "probe" in values:
                events.append((values["probe"], values["probe_val_acc"], values.get("force")))

        device = torch.device("cpu")
        with_probe = distill_set(
            resolved, digits, device=device, progress=progress, probe=AshaSettings(probes=3, probe_epochs=2)
        )
        assert [e[0] for e in events] == [1, 2, 3] and all(0 <= e[1] <= 1 and e[2] for e in events)
        events.clear()
        without = distill_set(resolved, digits, device=device, progress=progress)
        assert events == []
        assert torch.equal(with_probe.x, without.x)


def _rows(tmp_path):
    from distillbench.harness import store

    base = {
        "grid": "g",
        "dataset": "digits",
        "protocol": "quick-v1",
        "protocol_version": 1,
        "eval_network": "convnet",
        "weighting": "none",
        "labels": "native",
        "ipc": 1,
        "start_time": "2026-01-01T00:00:00+00:00",
        "end_time": "2026-01-01T00:01:00+00:00",
    }
    rows = []
    for seed, acc in ((0, 0.80), (1, 0.82)):
        rows.append({**base, "trial_id": f"d{seed}", "method": "dm", "seed": seed, "status": "ok", "acc_mean": acc})
    tuned = {"tuning_id": "T1", "tune_budget": "4 trials", "tune_space_hash": "h", "tune_params": '{"lr_img":3.0}'}
    for seed, acc in ((0, 0.90), (1, 0.91)):
        rows.append(
            {
                **base,
                **tuned,
                "trial_id": f"f{seed}",
                "method": "dm[lr_img=3.0]",
                "seed": seed,
                "status": "ok",
                "acc_mean": acc,
                "tune_role": "final",
                "tune_budget_spent": 4.0,
            }
        )
    searched = [("ok", '{"lr_img":3.0}', 0.95), ("stopped", '{"lr_img":0.2}', None), ("error", '{"lr_img":50.0}', None)]
    for i, (status, params, val) in enumerate(searched):
        rows.append(
            {
                **base,
                **tuned,
                "trial_id": f"s{i}",
                "method": f"dm[lr_img={json.loads(params)['lr_img']}]",
                "seed": 99,
                "status": status,
                "acc_mean": 0.5 if status == "ok" else None,
                "val_acc_mean": val,
                "tune_role": "search",
                "tune_params": params,
                "error": "boom" if status == "error" else None,
            }
        )
    results = tmp_path / "results"
    for row in rows:
        store.write_row(results, row)
    return results


class TestLeaderboard:
    def test_tuned_rows_marked_search_rows_left_out(self, tmp_path):
        """Default and tuned side by side; search rows neither in the tables nor among the failures."""
        from distillbench.leaderboard.build import build_leaderboard

        board = build_leaderboard([_rows(tmp_path)], tmp_path / "board")
        (table,) = board.tables
        assert [r.label for r in table.rows] == ["dm", "dm (tuned, 4 trials)"]
        assert table.cell("dm (tuned, 4 trials)", 1).n_seeds == 2
        assert board.failures == []  # the search's error row is the search's record, not a result
        (tuning,) = board.tuning
        assert (tuning.trials, tuning.stopped, tuning.failed, tuning.spent) == (3, 1, 1, 4.0)
        assert tuning.chosen == '{"lr_img":3.0}' and tuning.objective == pytest.approx(95.0)
        markdown = board.markdown_path.read_text()
        assert "## Tuning" in markdown and "| dm (tuned, 4 trials) | 1 | 4 trials | 4 | 3 | 1 | 1 |" in markdown
        assert "dm (tuned, 4 trials)" in board.csv_path.read_text()
        assert "<h2>Tuning</h2>" in board.html_path.read_text()

    def test_unequal_budgets_are_reported(self):
        from distillbench.leaderboard.tables import TuningRow, unequal_budgets

        row = TuningRow(
            "digits", "quick-v1@1", "dm (tuned, 4 trials)", 1, "4 trials", 4.0, 4, 0, 0, "{}", None, 0, 0, 1
        )
        other = dataclasses.replace(row, label="dc (tuned, 8 trials)", budget="8 trials")
        assert unequal_budgets([row]) == []
        assert unequal_budgets([row, other]) == [
            "digits, quick-v1@1: tuned with unequal budgets (dc (tuned, 8 trials): 8 trials, dm (tuned, 4 trials): "
            "4 trials)"
        ]


def _search_rows(results: Path, search: Search, trials: int) -> None:
    """Rows of ``trials`` finished search trials of ``search``, as the driver writes them (no Ray)."""
    from distillbench.harness import store

    for ordinal in range(trials):
        params = {"lr_img": 0.5 + ordinal}
        resolved = search.trial(params, ordinal).resolve()
        store.write_row(
            results,
            {
                "trial_id": resolved.trial_id,
                "grid": "tuned",
                "dataset": "digits",
                "method": resolved.spec.method,
                "ipc": 1,
                "seed": search.tuning_seed,
                "status": "ok",
                "val_acc_mean": 0.5,
                "spec_json": json.dumps(resolved.canonical(), sort_keys=True),
                "start_time": "2026-01-01T00:00:00+00:00",
                "end_time": "2026-01-01T00:01:00+00:00",
                **search.columns(params),
                "tuning_id": search.tuning_id,
                "tune_role": "search",
            },
        )


class TestStatus:
    """``status --grid`` of a tuned grid lists its searches as ``run --dry-run`` does and says what pending covers."""

    NOTE = "grid 'tuned': pending counts its untuned trials only; 2 searches and up to 4 final trials follow"

    def test_empty_store_lists_every_search_as_pending(self, tmp_path):
        from distillbench.harness.spec import open_grid_file

        grid = _grid(tmp_path)
        searches = open_grid_file(grid).searches()
        (tmp_path / "results" / "rows").mkdir(parents=True)
        code, out, err = _cli("status", str(tmp_path / "results"), "--grid", str(grid))
        assert code == 0, err
        lines = out.splitlines()
        assert lines[1].split() == ["tuned", "0", "0", "0", "0"]  # a tuned block has no untuned trials
        assert self.NOTE in lines
        assert "tuned: up to 4 search trials per (dataset, method, ipc, weighting, labels), then final trials" in lines
        for search in searches:
            (line,) = [x for x in lines if f"search {search.tuning_id}  " in x]
            assert f"search {search.tuning_id}  pending  digits" in line and ": 0 of 4 trials spent" in line
        assert out.count("then 2 final trials with the chosen configuration (seeds 0, 1)") == 2
        code, out, _ = _cli("status", str(tmp_path / "results"))  # without --grid nothing is known of searches
        assert code == 0 and "search " not in out and "pending counts" not in out

    def test_partial_and_finished_searches(self, tmp_path):
        """Rows of 2 of 4 search trials: pending, 2 spent; all 4: done, while the other search stays pending."""
        from distillbench.harness.spec import open_grid_file

        grid = _grid(tmp_path)
        first, second = open_grid_file(grid).searches()
        results = tmp_path / "results"
        _search_rows(results, first, 2)
        code, out, err = _cli("status", str(results), "--grid", str(grid))
        assert code == 0, err
        assert self.NOTE in out.splitlines()
        (line,) = [x for x in out.splitlines() if f"search {first.tuning_id}  " in x]
        assert f"search {first.tuning_id}  pending  " in line and ": 2 of 4 trials spent" in line
        _search_rows(results, first, 4)
        code, out, err = _cli("status", str(results), "--grid", str(grid))
        assert code == 0, err
        lines = out.splitlines()
        (line,) = [x for x in lines if f"search {first.tuning_id}  " in x]
        assert f"search {first.tuning_id}  done     " in line and ": 4 of 4 trials spent" in line
        (line,) = [x for x in lines if f"search {second.tuning_id}  " in x]
        assert f"search {second.tuning_id}  pending  " in line and ": 0 of 4 trials spent" in line
        assert lines[1].split()[:2] == ["tuned", "4"]  # the search trials' rows are counted as done


# ---------------------------------------------------------------------------------------------- Ray
PLUGIN = textwrap.dedent(
    '''
    """Plugins of the tuning tests, imported by the driver and by every Ray worker."""
    import dataclasses
    import os
    import pathlib

    import torch

    from distillbench.datasets.digits import Digits
    from distillbench.harness.plugins import register_dataset, register_method, register_protocol
    from distillbench.harness.protocols import QUICK_V1
    from distillbench.harness.types import Split
    from distillbench.methods.dm import DistributionMatching

    register_protocol(
        dataclasses.replace(QUICK_V1, name="tuning-test", networks=("convnet[width=8]",), epochs=15, n_models=1)
    )
    LOG = pathlib.Path(__file__).with_name("executions.log")


    @register_method("counted_dm")
    class CountedDM(DistributionMatching):
        """DM that logs each distillation it runs (the tests count executions)."""

        name = "counted_dm"

        def distill(self, data, ipc, ctx):
            with open(LOG, "a") as f:
                f.write(f"{self.params.lr_img!r} {os.getpid()}\\n")
            return super().distill(data, ipc, ctx)


    @register_dataset("permdigits")
    class PermutedDigits(Digits):
        """digits whose test labels are permuted when the data root holds a file 'permute-test-labels'."""

        name = "permdigits"

        def load(self, root):
            bundle = super().load(root)
            if (pathlib.Path(root) / "permute-test-labels").exists():
                order = torch.randperm(len(bundle.test), generator=torch.Generator().manual_seed(0))
                bundle.test = Split(bundle.test.x, bundle.test.y[order], dict(bundle.test.groups))
            return bundle
    '''
)


@pytest.fixture(scope="module")
def ray_session():
    """One local Ray for this module's grids (each run would otherwise start its own)."""
    import ray

    from distillbench.harness import scheduler

    if ray.is_initialized():
        yield
        return
    scheduler._init_local_ray(
        {"num_cpus": 2, "object_store_memory": 100 * 2**20, "include_dashboard": False, "logging_level": "WARNING"}
    )
    yield
    ray.shutdown()


def _tuned_grid(
    folder: Path, plugin: Path, *, budget: int = 3, scheduler: str = "none", search: str = "random"
) -> Path:
    """A tuned grid in ``folder`` using the plugin file ``plugin`` (one per test: a second copy of the same
    plugin in one process would register its method twice)."""
    folder.mkdir(parents=True, exist_ok=True)
    if not plugin.exists():
        plugin.write_text(PLUGIN)
    document = {
        "name": "tuning-test",
        "protocol": "tuning-test",
        "plugins": [str(plugin)],
        "grid": {
            "dataset": "permdigits",
            "method": "counted_dm[iterations=6,batch_real=4,net=convnet[width=8]]",
            "ipc": 1,
            "seed": [0],
            "tune": {
                "budget": {"trials": budget},
                "search": search,
                "scheduler": scheduler,
                "concurrency": 1,
                "space": {"counted_dm": {"lr_img": "loguniform(0.1, 100)"}},
            },
        },
    }
    path = folder / "grid.yaml"
    path.write_text(yaml.safe_dump(document))
    return path


def _executions(plugin: Path) -> int:
    log = plugin.with_name("executions.log")
    return len(log.read_text().splitlines()) if log.exists() else 0


def _read(results: Path):
    from distillbench.harness import store

    return store.read_rows([results])


@pytest.mark.ray
def test_search_resume_and_finished_search(tmp_path, ray_session):
    """A search runs its budget, picks by validation accuracy, runs the final trial; a re-run after losing a
    search row runs exactly that many search trials again; a finished search runs nothing."""
    plugin = tmp_path / "tuning_plugin.py"
    grid = _tuned_grid(tmp_path / "g", plugin)
    results = tmp_path / "results"
    run = ("run", str(grid), "--results", str(results), "--data-root", str(tmp_path), "--no-leaderboard")
    code, out, err = _cli(*run, "--logger", "tensorboard")
    assert code == 0, out + err
    assert _executions(plugin) == 4  # 3 search trials + 1 final trial
    rows = _read(results)
    search, final = rows[rows.tune_role == "search"], rows[rows.tune_role == "final"]
    assert len(search) == 3 and len(final) == 1 and set(search.tuning_id) == set(final.tuning_id)
    # The tracker sees every configuration tried, not only the final trial: one event file per trial.
    logged = {p.parent.name.rsplit("-", 1)[1] for p in (results / "ray").glob("*/*/events.out.tfevents.*")}
    assert logged == {t[:8] for t in rows.trial_id}, f"trials with TensorBoard events: {sorted(logged)}"
    best = search.loc[search.val_acc_mean.idxmax()]
    assert final.tune_params.iloc[0] == best.tune_params and final.tune_budget_spent.iloc[0] == 3.0
    assert set(search.seed) != {0} and final.seed.iloc[0] == 0  # tuning seed, then the block's seed
    assert "chose" in out

    # Interrupted during a search trial other than the chosen one: neither its set nor its row was written.
    lost = search[search.trial_id != best.trial_id].iloc[0]
    (results / "rows" / f"{lost.trial_id}.parquet").unlink()
    for path in (results / "sets").glob(f"{lost.distill_id}.*"):
        path.unlink()
    code, out, err = _cli(*run)
    assert code == 0, out + err
    assert _executions(plugin) == 5  # one search trial again; the final trial already had its row
    code, out, err = _cli(*run)
    assert code == 0 and _executions(plugin) == 5  # a finished search is not run again


@pytest.mark.ray
@pytest.mark.parametrize("search", ["optuna", "hyperopt"])
def test_model_based_search_runs_its_budget_and_keeps_the_best(tmp_path, ray_session, search):
    """OptunaSearch and HyperOptSearch, through the scheduler: the budget's suggestions, all inside the space and
    distinct, one final trial on the best validation score."""
    plugin = tmp_path / "tuning_plugin.py"
    grid = _tuned_grid(tmp_path / "g", plugin, budget=3, search=search)  # 1 random start, 2 model-based
    results = tmp_path / "results"
    code, out, err = _cli("run", str(grid), "--results", str(results), "--data-root", str(tmp_path), "--no-leaderboard")
    assert code == 0, out + err
    rows = _read(results)
    search_rows, final = rows[rows.tune_role == "search"], rows[rows.tune_role == "final"]
    assert len(search_rows) == 3 and len(final) == 1, f"{search}: {len(search_rows)} search rows, {len(final)} final"
    rates = [json.loads(p)["lr_img"] for p in search_rows.tune_params]
    assert all(0.1 <= r <= 100 for r in rates) and len(set(rates)) == 3, f"{search} suggested {rates}"
    best = search_rows.loc[search_rows.val_acc_mean.idxmax()]
    assert final.tune_params.iloc[0] == best.tune_params, f"{search}: the final trial is not the best search trial"
    assert _executions(plugin) == 4


@pytest.mark.ray  # two whole searches (about 50 s loaded): kept in the default run, it is issue 19's core promise
def test_permuted_test_labels_do_not_change_the_choice(tmp_path, ray_session):
    """The same search on digits and on digits with permuted test labels chooses the same configuration."""
    chosen, tests = [], []
    for permute in (False, True):
        folder = tmp_path / ("permuted" if permute else "plain")
        grid = _tuned_grid(folder, tmp_path / "tuning_plugin.py", budget=3)
        if permute:
            (folder / "permute-test-labels").write_text("")
        results = folder / "results"
        code, out, err = _cli(
            "run", str(grid), "--results", str(results), "--data-root", str(folder), "--no-leaderboard"
        )
        assert code == 0, out + err
        rows = _read(results)
        search = rows[rows.tune_role == "search"].sort_values("tune_params")
        chosen.append((rows[rows.tune_role == "final"].tune_params.iloc[0], list(search.val_acc_mean)))
        tests.append(list(search.acc_mean))
    assert chosen[0] == chosen[1]  # same configuration, same validation scores
    assert tests[0] != tests[1]  # while the test accuracies did change


@pytest.mark.ray
@pytest.mark.slow
def test_time_budget_counts_trial_hours(tmp_path, ray_session):
    """A trial-hours budget smaller than one trial: one search trial (concurrency 1), whose hours are the spend."""
    plugin = tmp_path / "tuning_plugin.py"
    grid = _tuned_grid(tmp_path / "g", plugin)
    document = yaml.safe_load(grid.read_text())
    document["grid"]["tune"]["budget"] = {"trial_hours": 0.0001}
    grid.write_text(yaml.safe_dump(document))
    results = tmp_path / "results"
    code, out, err = _cli("run", str(grid), "--results", str(results), "--data-root", str(tmp_path), "--no-leaderboard")
    assert code == 0, out + err
    rows = _read(results)
    search, final = rows[rows.tune_role == "search"], rows[rows.tune_role == "final"]
    assert len(search) == 1 and len(final) == 1
    hours = (search.end_time - search.start_time).dt.total_seconds().iloc[0] / 3600
    assert final.tune_budget.iloc[0] == "0.0001 trial-hours"
    assert final.tune_budget_spent.iloc[0] == pytest.approx(hours, rel=1e-3) and hours > 0.0001


@pytest.mark.ray
@pytest.mark.slow
@pytest.mark.parametrize("search", ["random", "optuna", "hyperopt"])
def test_asha_stops_trials_and_they_count(tmp_path, ray_session, search):
    """Under ASHA with probes, some search trials are stopped early; each has a 'stopped' row and counts."""
    grid = _tuned_grid(tmp_path / "g", tmp_path / "tuning_plugin.py", budget=6, scheduler="asha", search=search)
    results = tmp_path / "results"
    code, out, err = _cli("run", str(grid), "--results", str(results), "--data-root", str(tmp_path), "--no-leaderboard")
    assert code == 0, out + err
    rows = _read(results)
    search = rows[rows.tune_role == "search"]
    assert len(search) == 6 and (search.status == "stopped").sum() >= 1
    assert all("stopped early by ASHA" in n for n in search[search.status == "stopped"].notes)
    assert rows[rows.tune_role == "final"].tune_budget_spent.iloc[0] == 6.0
