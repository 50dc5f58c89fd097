"""Live progress and trackers: progress events and their text, rate limits, tracked metrics, loggers.

The unit tests need no Ray. The Ray tests run a two-trial grid through the command line and read back what
reached the trackers: TensorBoard event files (with tensorboardX's own protobufs, so no TensorBoard install
is needed) and, when MLflow is installed, the runs in MLflow's default SQLite store.
"""

from __future__ import annotations

import dataclasses
import io
import math
import os
import re
import struct
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from distillbench.harness import progress, store
from distillbench.harness.errors import ConfigError, DistillBenchError, UnknownNameError
from distillbench.harness.progress import (
    Event,
    LiveTrials,
    TerminalLine,
    TrialReporter,
    describe,
    emit,
    from_report,
    in_phase,
    to_report,
)
from distillbench.harness.seeding import torch_generator
from distillbench.harness.types import Context


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


# ------------------------------------------------------------------------------------- callbacks
class TestEmit:
    def test_two_argument_callbacks_get_only_coarse_events_and_no_values(self):
        """An old-style callback sees exactly what it saw before: coarse events, two arguments."""
        calls = []
        callback = lambda fraction, message: calls.append((fraction, message))  # noqa: E731
        emit(callback, 0.5, "coarse", iteration=5, iterations=10)
        emit(callback, 0.6, "fine", fine=True, iteration=6, iterations=10)
        assert calls == [(0.5, "coarse")]

    def test_value_callbacks_get_every_event_with_its_numbers(self):
        calls = []

        def callback(fraction, message, **values):
            calls.append((fraction, message, values))

        emit(callback, 0.5, "coarse", iteration=5)
        emit(callback, 0.6, "fine", fine=True, iteration=6)
        emit(None, 0.7, "nobody listens")
        assert calls == [(0.5, "coarse", {"iteration": 5}), (0.6, "fine", {"iteration": 6})]

    def test_in_phase_adds_the_phase_and_leaves_two_argument_callbacks_alone(self):
        calls = []

        def callback(fraction, message, **values):
            calls.append(values)

        emit(in_phase(callback, "distill"), 0.1, "x", loss=2.0)
        assert calls == [{"loss": 2.0, "phase": "distill"}]
        plain = lambda fraction, message: None  # noqa: E731
        assert in_phase(plain, "distill") is plain and in_phase(None, "load") is None

    def test_context_report_passes_values_through(self):
        calls = []
        ctx = Context(torch.device("cpu"), torch_generator(0), 0, progress=lambda f, m, **v: calls.append(v))
        ctx.report(0.5, "m", iteration=1, iterations=2)
        ctx.report(0.5, "m", fine=True, iteration=1)
        assert calls == [{"iteration": 1, "iterations": 2}, {"iteration": 1}]


class TestLoops:
    """The real loops report numbers: a method's iterations (LossTracker) and the evaluation's models and epochs."""

    def test_loss_tracker_reports_every_iteration_to_value_callbacks_and_windows_to_the_others(self):
        from distillbench.methods._loop import LossTracker

        values, plain = [], []
        rich = Context(torch.device("cpu"), torch_generator(0), 0, progress=lambda f, m, **v: values.append(v))
        old = Context(torch.device("cpu"), torch_generator(0), 0, progress=lambda f, m: plain.append(f))
        for ctx in (rich, old):
            tracker = LossTracker("toy", 300, ctx, "")
            for it in range(300):
                tracker.step(torch.tensor(float(it)))
        assert len(plain) == 1 + 100, "two-argument callbacks: the start and one event per 1% window"
        assert len(values) == 1 + 300, "value callbacks: the start and every iteration"
        assert values[0] == {"iteration": 0, "iterations": 300}
        assert values[1] == {"iteration": 1, "iterations": 300}, "no loss before the first window closed"
        # Windows of 3 iterations: iteration 4 shows the mean of the last closed window (iterations 1-3, losses
        # 0, 1, 2), so reading the loss never waits for a GPU; iteration 6 closes the next window (3, 4, 5).
        assert values[4] == {"iteration": 4, "iterations": 300, "loss": 1.0}
        assert values[6] == {"iteration": 6, "iterations": 300, "loss": 4.0}, "a window's own event has its mean"

    def test_evaluation_reports_models_and_epochs(self, digits, tiny_protocol):
        from distillbench.harness.evaluate import evaluate
        from distillbench.harness.types import DistilledSet

        protocol = dataclasses.replace(tiny_protocol, epochs=3)
        dset = DistilledSet(x=digits.train.x[:20], y=digits.train.y[:20])
        events = []
        evaluate(protocol, dset, digits, seed=0, progress=lambda f, m, **v: events.append((round(f, 4), v)))
        epochs = [(f, v) for f, v in events if "epoch" in v]
        assert [v["epoch"] for _, v in epochs] == [1, 2, 3, 1, 2, 3]
        assert epochs[0] == (round(1 / 6, 4), {"model": 1, "models": 2, "epoch": 1, "epochs": 3})
        done = [(f, v) for f, v in events if "epoch" not in v]
        assert done == [(0.5, {"model": 1, "models": 2}), (1.0, {"model": 2, "models": 2})]


# ------------------------------------------------------------------------------- events and text
class TestText:
    @pytest.mark.parametrize(
        ("event", "text"),
        [
            (
                Event("distill", 0.06, "", {"iteration": 1200, "iterations": 20000, "loss": 0.5312}),
                "distill 1200/20000 loss 0.5312",
            ),
            (
                Event("evaluate", 0.3, "", {"model": 2, "models": 5, "epoch": 120, "epochs": 300}),
                "evaluate model 2/5 epoch 120/300",
            ),
            (Event("evaluate", 0.4, "", {"models": 20, "epoch": 7, "epochs": 1000}), "evaluate 20 models epoch 7/1000"),
            (Event("load", 0.0, "digits"), "load digits"),
            (Event("distill", 0.3, "rded: class 3/10 selected"), "distill 30% rded: class 3/10 selected"),
            (
                Event("evaluate", 0.5, "", {"model": 1, "models": 2, "val_acc": 0.81234}),
                "evaluate model 1/2 val_acc 0.8123",
            ),
        ],
    )
    def test_describe(self, event, text):
        assert describe(event) == text

    def test_report_round_trip_uses_flat_phase_keys(self):
        """Tune results carry `<phase>/<name>` numbers; a new number is just a new key."""
        event = Event("distill", 0.25, "dm: iteration 5/20", {"iteration": 5, "iterations": 20, "loss": 0.5})
        report = to_report(event)
        assert report == {
            "phase": "distill",
            "message": "dm: iteration 5/20",
            "distill/fraction": 0.25,
            "distill/iteration": 5,
            "distill/iterations": 20,
            "distill/loss": 0.5,
        }
        assert from_report(report) == event
        assert from_report({"rows_json": "[]", "status": "ok", "acc_mean": 0.9}) is None

    def test_event_of_drops_reserved_keys_and_non_numbers(self):
        values = {"phase": "evaluate", "force": True, "fraction": 0.9, "epoch": 3, "note": "text", "bad": math.nan}
        event = Event.of(0.5, "m", {**values, "acc": np.float32(0.5), "t": torch.tensor(1.0), "flag": True})
        assert event == Event("evaluate", 0.5, "m", {"epoch": 3, "acc": 0.5})
        assert type(event.values["acc"]) is float and to_report(event)["evaluate/fraction"] == 0.5

    def test_trial_label(self):
        spec = {"method": "dm", "dataset": "digits", "ipc": 10, "seed": 0, "weighting": "none", "labels": "native"}
        assert progress.trial_label(spec) == "dm digits ipc10 seed0"
        assert progress.trial_label({**spec, "weighting": "kde", "labels": "teacher"}) == (
            "dm digits ipc10 seed0 kde labels=teacher"
        )


# ----------------------------------------------------------------------------------- rate limits
class TestRateLimits:
    def test_trial_reporter_bounds_the_rate_and_keeps_each_phase_last_state(self):
        clock, sent = FakeClock(), []
        reporter = TrialReporter(sent.append, interval=2.0, clock=clock)
        reporter(0.0, "digits", phase="load")  # the first event goes out
        clock.now += 0.25
        reporter(0.0, "dm", phase="distill")  # a new phase 0.25 s later: held (phases 0.5 s apart go out)
        for it in range(1, 20):  # 19 iterations 0.25 s apart: one every 2 s goes out
            clock.now += 0.25
            reporter(it / 100, f"it {it}", phase="distill", iteration=it, iterations=100)
        clock.now += 0.25
        reporter(0.2, "forced", phase="distill", iteration=20, iterations=100, force=True)
        clock.now += 0.25
        reporter(0.21, "held", phase="distill", iteration=21, iterations=100)
        reporter(0.0, "e", phase="evaluate", model=1, models=2)  # 0.25 s after the last report: held
        clock.now += 0.25
        reporter(0.5, "e", phase="evaluate", model=1, models=2, epoch=2, epochs=4)  # goes out, held distill first
        clock.now += 0.25
        reporter(1.0, "e", phase="evaluate", model=2, models=2)
        assert [(r["phase"], r.get("distill/iteration"), r.get("evaluate/epoch")) for r in sent] == [
            ("load", None, None),
            ("distill", 1, None),  # 0.5 s after the load report: the new phase goes out
            ("distill", 9, None),
            ("distill", 17, None),
            ("distill", 20, None),  # forced
            ("distill", 21, None),  # the last state of the distillation
            ("evaluate", None, 2),
        ]
        assert "force" not in sent[4] and sent[4]["message"] == "forced"
        reporter.flush()  # what is held goes out on request
        reporter.flush()
        assert [r.get("evaluate/model") for r in sent[7:]] == [2]

    def test_trial_reporter_with_no_interval_reports_every_event(self):
        sent = []
        reporter = TrialReporter(sent.append, interval=0.0, clock=FakeClock())
        for it in range(5):
            reporter(it / 5, "m", phase="distill", iteration=it)
        assert [r["distill/iteration"] for r in sent] == [0, 1, 2, 3, 4]

    def test_live_trials_print_a_line_per_phase_change_and_at_most_every_interval(self):
        clock = FakeClock()
        live = LiveTrials(line_interval=10.0, shown=2, clock=clock)
        live.start("a", "dm digits ipc1 seed0")
        printed = [live.update("a", "dm digits ipc1 seed0", Event("load", 0.0, "digits"))]
        for step in range(1, 25):  # 2 s apart for 48 s: a line every 10 s at most
            clock.now += 2.0
            printed.append(live.update("a", "x", Event("distill", 0.0, "", {"iteration": step, "iterations": 24})))
        clock.now += 1.0
        printed.append(live.update("a", "x", Event("evaluate", 0.0, "", {"model": 1, "models": 2})))
        lines = [p for p in printed if p is not None]
        assert lines[0] == "  dm digits ipc1 seed0: load digits | 00:00"
        assert lines[1] == "  dm digits ipc1 seed0: distill 1/24 | 00:02"
        assert [line.split(": ", 1)[1] for line in lines[2:-1]] == [
            "distill 6/24 | 00:12",
            "distill 11/24 | 00:22",
            "distill 16/24 | 00:32",
            "distill 21/24 | 00:42",
        ]
        assert lines[-1] == "  dm digits ipc1 seed0: evaluate model 1/2 | 00:49", "a phase change is printed at once"

    def test_live_trials_repeat_a_silent_trial_every_minute(self):
        clock = FakeClock()
        live = LiveTrials(line_interval=10.0, repeat=60.0, clock=clock)
        live.start("a", "quiet trial")
        live.start("b", "busy trial")
        clock.now += 59.0
        assert live.quiet() == []
        live.update("b", "busy trial", Event("distill", 0.5, "", {"iteration": 5, "iterations": 10}))
        clock.now += 1.0
        assert live.quiet() == ["  quiet trial: starting | 01:00"], "a minute without a line"
        clock.now += 59.0
        assert live.quiet() == ["  busy trial: distill 5/10 | 01:59"], "a minute after its last line"
        assert live.quiet() == []

    def test_live_trials_lines_show_a_few_trials_and_count_the_rest(self):
        live = LiveTrials(shown=2, clock=FakeClock())
        for key in "abc":
            live.start(key, f"trial {key}")
        live.update("b", "trial b", Event("distill", 0.5, "", {"iteration": 1, "iterations": 2}))
        assert live.lines() == [
            "  trial a: starting | 00:00",
            "  trial b: distill 1/2 | 00:00",
            "  ... and 1 more running",
        ]
        live.drop("a")
        assert len(live.lines()) == 2

    def test_terminal_line_redraws_in_place_at_a_bounded_rate_and_clears(self):
        clock, stream = FakeClock(), io.StringIO()
        line = TerminalLine(stream, min_interval=0.2, clock=clock)
        line(0.0, "m", phase="distill", iteration=0, iterations=100)
        clock.now += 0.1
        line(0.01, "m", phase="distill", iteration=1, iterations=100, loss=0.5)  # too soon: not drawn
        clock.now += 0.2
        line(0.02, "m", phase="distill", iteration=2, iterations=100, loss=0.5)
        line(0.0, "m", phase="evaluate", model=1, models=2)  # a new phase: drawn at once
        line.close()
        assert stream.getvalue() == (
            "\r\033[Kdistill 0/100 | 00:00"
            "\r\033[Kdistill 2/100 loss 0.5 | 00:00"
            "\r\033[Kevaluate model 1/2 | 00:00"
            "\r\033[K"
        )

    def test_fit_cuts_to_the_terminal_width(self):
        assert progress.fit("x" * 50, width=20) == "x" * 18 + "…"
        assert progress.fit("short", width=20) == "short"


# ------------------------------------------------------------------------------ tracked metrics
class TestTrackedValues:
    def test_the_scalar_metrics_are_marked_in_the_schema(self):
        tracked = {c.name for c in store.COLUMNS if c.tracked}
        assert tracked == {
            "acc_mean",
            "acc_std",
            "val_acc_mean",
            "acc_aligned",
            "acc_conflicting",
            "acc_worst_group",
            "acc_many",
            "acc_medium",
            "acc_few",
            "distill_seconds",
            "eval_seconds",
            "peak_memory_bytes",
        }
        with pytest.raises(ValueError, match="only a number can be tracked"):
            store.Column("x", store.SCHEMA.field("method").type, "text", "identity", tracked=True)

    def test_rows_become_numbers_primary_network_plain_others_suffixed(self):
        first = store.make_row({"status": "ok", "acc_mean": 0.9, "acc_std": 0.01, "eval_seconds": 3.0, "acc_few": None})
        second = store.make_row(
            {"status": "ok", "acc_mean": 0.8, "eval_network": "resnet[width=8]", "val_acc_mean": math.nan}
        )
        values = store.tracked_values([first, second])
        assert values == {"acc_mean": 0.9, "acc_std": 0.01, "eval_seconds": 3.0, "acc_mean/resnet_width_8": 0.8}


# ----------------------------------------------------------------------------------- loggers
class TestLoggerChecks:
    def test_names(self):
        assert progress.check_loggers(["tensorboard", "mlflow", "tensorboard"]) == ("tensorboard", "mlflow")
        assert progress.check_loggers("wandb") == ("wandb",)
        with pytest.raises(UnknownNameError) as info:
            progress.check_loggers(["tensorbord"])
        assert str(info.value) == (
            "loggers: unknown logger 'tensorbord'. Did you mean: tensorboard? Available: tensorboard, mlflow, wandb"
        )
        with pytest.raises(ConfigError, match="loggers must be a list of names"):
            progress.check_loggers([{"tensorboard": True}])

    def test_grid_key(self):
        from distillbench.harness.spec import plan_grid

        block = {"dataset": "digits", "method": "random", "ipc": 1, "protocol": "quick-v1"}
        assert plan_grid({"grid": block, "loggers": ["tensorboard"]}).grid().loggers == ("tensorboard",)
        assert plan_grid({"grid": block}).loggers == ()
        with pytest.raises(UnknownNameError, match="unknown logger 'tb'"):
            plan_grid({"grid": block, "loggers": ["tb"]})

    def test_missing_package_is_named(self, monkeypatch):
        monkeypatch.setitem(progress.LOGGERS, "wandb", ("distillbench_no_such_module", "wandb-not-here"))
        with pytest.raises(DistillBenchError) as info:
            progress.check_logger_packages(["wandb"], results_dir="/r", environ={})
        assert str(info.value) == (
            "logger 'wandb' needs the Python package 'wandb-not-here', which is not installed; "
            "pip install wandb-not-here (or drop wandb from loggers / --logger)"
        )

    def test_mlflow_destination(self):
        assert progress.mlflow_tracking_uri("/r/out", {}) == "sqlite:////r/out/logs/mlflow.db"
        assert progress.mlflow_tracking_uri(None, {"MLFLOW_TRACKING_URI": "http://h:5000"}) == "http://h:5000"
        with pytest.raises(DistillBenchError, match="set MLFLOW_TRACKING_URI"):
            progress.mlflow_tracking_uri(None, {})

    def test_cli_refuses_bad_loggers_in_one_line_before_anything_runs(self, tmp_path, capsys, monkeypatch):
        from distillbench.harness.cli import main

        grid = tmp_path / "grid.yaml"
        grid.write_text(
            yaml.safe_dump({"grid": {"dataset": "digits", "method": "random", "ipc": 1}, "protocol": "quick-v1"})
        )
        results = tmp_path / "results"
        assert main(["run", str(grid), "--results", str(results), "--logger", "tensorbaord"]) == 2
        err = capsys.readouterr().err
        assert err == (
            "error: --logger: unknown logger 'tensorbaord'. Did you mean: tensorboard? "
            "Available: tensorboard, mlflow, wandb\n"
        )
        monkeypatch.setitem(progress.LOGGERS, "mlflow", ("distillbench_no_such_module", "mlflow"))
        assert main(["run", str(grid), "--results", str(results), "--logger", "mlflow"]) == 2
        out, err = capsys.readouterr()
        assert err.startswith("error: logger 'mlflow' needs the Python package 'mlflow'") and err.count("\n") == 1
        assert out == "" and not results.exists(), "nothing may run or be written"
        grid.write_text(grid.read_text() + "loggers: [tensorboard, mlfow]\n")
        assert main(["run", str(grid), "--results", str(results)]) == 2
        assert "unknown logger 'mlfow'. Did you mean: mlflow?" in capsys.readouterr().err


# ------------------------------------------------------------------------------------ Ray runs
PLUGIN = textwrap.dedent(
    '''
    """A tiny evaluation protocol for the progress tests (imported by the driver and every Ray worker)."""
    import dataclasses

    from distillbench.harness.plugins import register_protocol
    from distillbench.harness.protocols import QUICK_V1

    register_protocol(
        dataclasses.replace(QUICK_V1, name="progress-test", networks=("convnet[width=8]",), epochs=4, n_models=2)
    )
    '''
)


METHOD = "dm[iterations=12,batch_real=16,net=convnet[width=16]]"


def _grid(tmp_path: Path, **extra) -> Path:
    (tmp_path / "progress_plugin.py").write_text(PLUGIN)
    document = {
        "name": "progress",
        "protocol": "progress-test",
        "plugins": ["progress_plugin.py"],
        "grid": {"dataset": "digits", "method": METHOD, "ipc": 1, "seed": [0, 1]},
        **extra,
    }  # fmt: skip
    path = tmp_path / "grid.yaml"
    path.write_text(yaml.safe_dump(document))
    return path


def _run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "distillbench.harness.cli", "run", *args]
    # Every progress event becomes a Tune result (no rate limit), so what reaches the trackers does not depend on
    # how fast this machine runs the trials.
    environ = {**os.environ, "PYTHONUNBUFFERED": "1", "DISTILLBENCH_REPORT_INTERVAL": "0", **(env or {})}
    return subprocess.run(command, capture_output=True, text=True, env=environ, timeout=300)


def read_scalars(path: Path) -> dict[str, list[tuple[int, float]]]:
    """Scalars of a TensorBoard event file: tag -> [(step, value)], read with tensorboardX's protobufs.

    An event file is a sequence of records: length (uint64), its masked CRC (uint32), the serialized
    ``Event``, its masked CRC; the CRCs are not checked here (a torn record fails to parse).
    """
    from tensorboardX.proto.event_pb2 import Event as TBEvent

    scalars: dict[str, list[tuple[int, float]]] = {}
    data = path.read_bytes()
    at = 0
    while at < len(data):
        (length,) = struct.unpack("<Q", data[at : at + 8])
        event = TBEvent.FromString(data[at + 12 : at + 12 + length])
        at += 12 + length + 4
        for value in event.summary.value:
            scalars.setdefault(value.tag, []).append((event.step, value.simple_value))
    return scalars


@pytest.mark.ray
def test_grid_logs_progress_and_metrics_to_tensorboard_and_prints_progress_lines(tmp_path):
    """Two trials with `loggers: [tensorboard]`: each trial's event file holds its acc_mean and its progress;
    without a terminal the run prints progress lines between its start and its end."""
    results = tmp_path / "results"
    proc = _run_cli(str(_grid(tmp_path, loggers=["tensorboard"])), "--results", str(results), "--no-leaderboard")
    assert proc.returncode == 0, f"{proc.stdout}\n{proc.stderr}"
    rows = {r["trial_id"][:8]: r for r in store.read_rows([results]).to_dict("records")}
    assert sorted(r["seed"] for r in rows.values()) == [0, 1] and {r["status"] for r in rows.values()} == {"ok"}

    # Without a terminal: a line per trial and phase (more within a long phase), between start and end.
    # (A slow machine prints a further line within a phase that lasts over 10 s.)
    lines = proc.stderr.splitlines()
    first_done = next(i for i, line in enumerate(lines) if line.startswith("[") and " 1 done," in line)
    for seed in (0, 1):
        label = f"{METHOD} digits ipc1 seed{seed}"
        mine = [i for i, line in enumerate(lines) if line.startswith(f"  {label}: ")]
        phases = [lines[i].split(": ", 1)[1].split()[0] for i in mine]
        assert list(dict.fromkeys(phases)) == ["load", "distill", "evaluate"], lines
        assert len(phases) < 10, f"a line per phase change or per 10 s, not per report: {lines}"
        assert re.fullmatch(rf"  {re.escape(label)}: load digits \| \d\d:\d\d", lines[mine[0]]), lines
    assert min(i for i, line in enumerate(lines) if line.startswith("  dm[")) < first_done, "progress before the end"

    events = sorted((results / "ray").glob("progress-*/*/events.out.tfevents.*"))
    assert len(events) == 2, f"one event file per trial: {events}"
    for path in events:
        trial_dir = path.parent.name  # named after the trial, so TensorBoard's run names say which it is
        row = rows[trial_dir.rsplit("-", 1)[1]]
        assert trial_dir.startswith(f"dm-iterations-12-batch_real-16-digits-ipc1-seed{row['seed']}-"), trial_dir
        scalars = read_scalars(path)
        (step, acc), *_ = scalars["ray/tune/acc_mean"]
        assert acc == pytest.approx(row["acc_mean"], abs=1e-6), "the final scalar is the row's number"
        assert scalars["ray/tune/eval_seconds"][0][1] == pytest.approx(row["eval_seconds"], rel=1e-5)
        assert "ray/tune/peak_memory_bytes" in scalars and "ray/tune/val_acc_mean" in scalars
        progress_tags = {t for t in scalars if t.startswith(("ray/tune/distill/", "ray/tune/evaluate/"))}
        assert {"ray/tune/distill/iterations", "ray/tune/evaluate/fraction"} <= progress_tags, sorted(scalars)
        assert all(s < step for s, _ in scalars["ray/tune/distill/iterations"]), "progress comes before the end"


@pytest.mark.ray
@pytest.mark.slow  # MLflow creates its SQLite schema (about 10 s) and writes every metric in a transaction
def test_grid_logs_to_mlflow_in_the_default_sqlite_store(tmp_path):
    """`--logger mlflow` without MLFLOW_TRACKING_URI: one run per trial in <results>/logs/mlflow.db."""
    pytest.importorskip("mlflow", reason="mlflow is not installed (pip install mlflow-skinny, in the test extra)")
    pytest.importorskip("sqlalchemy", reason="sqlalchemy is not installed (MLflow's SQLite store needs it)")
    from mlflow.tracking import MlflowClient

    results = tmp_path / "results"
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    proc = _run_cli(str(_grid(tmp_path)), "--results", str(results), "--no-leaderboard", "--logger", "mlflow", env=env)
    assert proc.returncode == 0, f"{proc.stdout}\n{proc.stderr}"
    rows = {r["trial_id"][:8]: r for r in store.read_rows([results]).to_dict("records")}
    client = MlflowClient(f"sqlite:///{results}/logs/mlflow.db")
    experiment = client.get_experiment_by_name("progress")
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == 2
    for run in runs:
        row = rows[run.info.run_name.rsplit("-", 1)[1]]
        assert run.data.metrics["acc_mean"] == pytest.approx(row["acc_mean"], abs=1e-6)
        history = client.get_metric_history(run.info.run_id, "distill/iteration")
        assert history and max(m.value for m in history) <= 12, "progress reached MLflow as a metric history"
