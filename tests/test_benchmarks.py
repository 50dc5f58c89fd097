"""Smoke tests of benchmark scripts that have no test module of their own (``benchmarks/long_dd.py``)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType

import pytest

pytestmark = pytest.mark.usefixtures("one_thread")

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "fixtures_text"


def script(name: str) -> ModuleType:
    """``benchmarks/<name>.py`` as a module (benchmarks/ is not a package)."""
    spec = importlib.util.spec_from_file_location(name, ROOT / "benchmarks" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # as an import would: dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_long_dd_text_curve_resumes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Text mode on the fixtures: 2 milestones, one curve line each; a rerun adds none."""
    long_dd = script("long_dd")
    argv = [
        "--text", "sst2", "--labels", "soft", "--ipc", "1", "--data-root", str(FIXTURES),
        "--dataset-options", f"vocab_size=50,max_len=6,embeddings={FIXTURES / 'glove.txt'}",
        "--dd", "net=textcnn[filters=4],batch_size=4", "--epochs", "4", "--every", "2", "--out", str(tmp_path),
    ]  # fmt: skip
    assert long_dd.main(argv) == 0
    curve = tmp_path / "text-sst2-soft-1-seed0.jsonl"
    points = [json.loads(line) for line in curve.read_text().splitlines()]
    assert [p["epochs"] for p in points] == [2, 4]
    assert {p["dataset"] for p in points} == {"sst2"} and {p["labels"] for p in points} == {"soft"}
    assert all(p["spec"].endswith("epochs=4,soft_labels=true]") for p in points)
    assert (tmp_path / "text-sst2-soft-1-seed0.ckpt").is_file()
    baseline = json.loads((tmp_path / "text-sst2-random-1-seed0.json").read_text())
    assert baseline["method"] == "random" and baseline["protocol"] == "text-v1"
    capsys.readouterr()
    assert long_dd.main(argv) == 0
    assert len(curve.read_text().splitlines()) == 2
    assert "2 already done" in capsys.readouterr().out


def test_long_dd_mnist_mode_keeps_its_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """MNIST mode (runs in progress resume with it): same slug, JSON keys and seed; a rerun adds nothing."""
    long_dd = script("long_dd")
    argv = ["--only", "0", "--dataset", "digits", "--data-root", str(tmp_path / "empty"), "--epochs", "2"]
    assert long_dd.main([*argv, "--every", "1", "--out", str(tmp_path)]) == 0
    curve = tmp_path / "dd-10-fixed-seed0.jsonl"
    points = [json.loads(line) for line in curve.read_text().splitlines()]
    assert [p["epochs"] for p in points] == [1, 2]
    assert list(points[0]) == [
        "setting", "seed", "epochs", "iterations", "acc", "distill_seconds_this_leg", "reported", "spec",
        "dataset_spec", "time",
    ]  # fmt: skip
    assert points[0]["spec"].startswith("dd[distill_steps=1,distill_epochs=3,distill_lr=0.02,lr=0.01,epochs=2,")
    capsys.readouterr()
    assert long_dd.main([*argv, "--every", "1", "--out", str(tmp_path)]) == 0
    assert len(curve.read_text().splitlines()) == 2
    assert "points at [1, 2]; 2 already done" in capsys.readouterr().out
    # Another run length (or dataset) in the same folder would add its points to this curve: refused, one line.
    assert long_dd.main([*argv[:-1], "3", "--every", "1", "--out", str(tmp_path)]) == 2
    assert "holds a curve of another run" in capsys.readouterr().err
    assert len(curve.read_text().splitlines()) == 2


def test_bias_curve_continues_an_interrupted_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tiny_protocol: object
) -> None:
    """A curve killed part-way continues from its checkpoint: the same points, the done ones not redone."""
    from distillbench.harness.checkpoint import Checkpointer
    from distillbench.harness.errors import DistillBenchError

    bias_curve = script("bias_curve")
    args = ("digits", tmp_path, "none", 2, [0, 2, 4], "batch_real=16,net=convnet[width=8]", "tiny-test")
    whole = bias_curve.run_curve(*args)

    evaluate_set, calls = bias_curve.evaluate_set, []

    def lost_at_third_point(*a: object, **k: object) -> object:
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("node lost")
        return evaluate_set(*a, **k)

    ckpt = tmp_path / "curve.pt"
    monkeypatch.setattr(bias_curve, "evaluate_set", lost_at_third_point)
    with pytest.raises(RuntimeError, match="node lost"):
        bias_curve.run_curve(*args, checkpoint=Checkpointer(ckpt, every=2))
    assert ckpt.is_file(), "no checkpoint was left by the interrupted curve"

    with pytest.raises(DistillBenchError, match="another run"):
        bias_curve.run_curve(*args, seed=1, checkpoint=Checkpointer(ckpt, every=2))
    with pytest.raises(DistillBenchError, match="another run .* protocol=tiny-test.*protocol=quick-v1"):
        bias_curve.run_curve(*args[:-1], "quick-v1", checkpoint=Checkpointer(ckpt, every=2))  # points would mix

    calls.clear()
    resumed = bias_curve.run_curve(*args, checkpoint=Checkpointer(ckpt, every=2))
    assert len(calls) == 1, f"the resumed curve evaluated {len(calls)} points; only iteration 4 was left"

    def columns(result: dict) -> list[dict]:
        return [{k: v for k, v in p.items() if k != "distill_seconds"} for p in result["points"]]

    assert columns(resumed) == columns(whole), "the resumed curve differs from the uninterrupted one"
    assert not ckpt.exists(), "the checkpoint of a finished curve was not deleted"


def test_bias_curve_refuses_an_unwritable_checkpoint(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A checkpoint that cannot be written is one line and exit 2 before any work, not a traceback later."""
    (tmp_path / "file").write_text("")
    argv = ["--dataset", "digits", "--data-root", str(tmp_path), "--weighting", "none", "--at", "0,2"]
    assert script("bias_curve").main([*argv, "--checkpoint", str(tmp_path / "file" / "curve.pt")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("bias_curve: cannot write the checkpoint") and err.count("\n") == 1, err


@pytest.mark.parametrize(
    ("name", "argv"),
    [
        ("bias_curve", ["--dataset", "mnist"]),
        ("long_dd", ["--only", "0", "--dataset", "mnist", "--out", "{tmp}/out"]),
        ("fidelity", ["--dataset", "mnist", "--methods", "random"]),
        ("fidelity_dd", ["--dataset", "mnist"]),
        ("fidelity_text", ["--datasets", "sst2"]),
        ("kde_analysis", ["weights"]),
        ("serial_grid", ["{tmp}/missing.yaml", "--results", "{tmp}/results"]),
    ],
)
def test_a_missing_input_is_one_line_and_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], name: str, argv: list[str]
) -> None:
    """Each benchmark script that reads data reports a missing dataset (or grid file) as one line naming it and
    exits 2, before any work (fidelity once, not as a table of failed trials)."""
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    assert script(name).main([*argv, "--data-root", str(tmp_path / "nothing")]) == 2
    out, err = capsys.readouterr()
    assert err.count("\n") == 1 and err.startswith(f"{name}: ") and ("missing" in err or "not found" in err), err
    assert "|" not in out, f"{name} printed a table for a run that could not start:\n{out}"
