"""``benchmarks/gpu_campaign.py``: the plan (dry run), its checks, and the run path on the CPU (``--smoke``).

The plan and the input checks run in-process in a second or two. A cell runs in-process on digits with
tiny settings; the whole campaign (parent, speed child, cell children) runs as ``--smoke`` in the slow tests,
since every child process imports torch (seconds each on the 2-core development machine).
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import time
from pathlib import Path
from types import ModuleType

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "benchmarks" / "gpu_campaign.py"


@pytest.fixture(scope="module")
def campaign() -> ModuleType:
    """The campaign script as a module."""
    spec = importlib.util.spec_from_file_location("gpu_campaign", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_campaign"] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


def run_main(campaign: ModuleType, capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    try:
        rc = campaign.main(list(argv))
    except SystemExit as exc:
        rc = exc.code
    out, err = capsys.readouterr()
    return rc, out, err


class TestDryRun:
    def test_plan_fits_and_writes_nothing(
        self, campaign: ModuleType, capsys: pytest.CaptureFixture[str], tmp_path: Path
    ) -> None:
        """The default plan prints every cell with estimated times, fits 540 s, and writes no file."""
        out = tmp_path / "results.json"
        rc, text, _ = run_main(campaign, capsys, "--dry-run", "--out", str(out))
        assert rc == 0, text
        assert "budget 540 s" in text and "(fits)" in text
        assert "speed" in text and "issue 9" in text
        for name in campaign.CELL_NAMES:
            assert name in text
        assert list(tmp_path.iterdir()) == []

    def test_json_plan_is_consistent(self, campaign: ModuleType, capsys: pytest.CaptureFixture[str]) -> None:
        """Every planned cell starts after the speed phase and ends by the deadline; ids are the registry's."""
        from distillbench.harness.spec import TrialSpec

        rc, text, _ = run_main(campaign, capsys, "--dry-run", "--json")
        plan = json.loads(text)
        assert rc == 0 and plan["fits"] and plan["total_s"] <= plan["budget_s"]
        planned = [c for c in plan["cells"] if c["skipped"] is None]
        assert planned, "no cell planned"
        assert plan["cells"][0]["name"] == "dm-kde-ipc50" and plan["cells"][0]["skipped"] is None
        for cell in plan["cells"]:
            spec = {k: v for k, v in cell["spec"].items() if k != "tuning"}
            assert TrialSpec(**spec).resolve().trial_id == cell["trial_id"]
        for cell in planned:
            assert plan["cells_start_s"] <= cell["start_s"] and cell["end_s"] <= plan["deadline_s"] + 1e-6
            assert 0 < cell["iterations"] <= cell["limit"]
        lanes: dict[int, list[tuple[float, float]]] = {}
        for cell in planned:
            lanes.setdefault(cell["lane"], []).append((cell["start_s"], cell["end_s"]))
        for spans in lanes.values():  # cells of one lane never overlap
            spans.sort()
            assert all(a[1] <= b[0] + 1e-6 for a, b in zip(spans, spans[1:], strict=False))

    def test_curve_reach_grows_with_time(self, campaign: ModuleType) -> None:
        """A curve cell's estimated reach grows with its time and stops at the paper's 20,000 iterations."""
        settings = campaign.Settings(data_root="/x", data_note="")
        cell = campaign.CELLS[0]
        reach = [campaign.curve_reach(cell, settings, "paper", s, 1.0, 20000) for s in (100, 400, 1000, 10_000)]
        assert reach == sorted(reach) and reach[0] > 0 and reach[-1] == 20000

    def test_without_mnist_every_cell_has_a_valid_digits_variant(
        self, campaign: ModuleType, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
    ) -> None:
        """With no MNIST anywhere the campaign says so and plans each cell's digits variant (specs resolved)."""
        monkeypatch.setattr(campaign, "ROOT", tmp_path / "checkout")
        monkeypatch.delenv("DISTILLBENCH_DATA", raising=False)
        root, note = campaign.find_data_root(None)
        assert root is None and "no MNIST found" in note and "digits" in note
        plan = campaign.make_plan(campaign.Settings(data_root=None, data_note=note))
        assert plan.fits
        assert {p.variant for p in plan.cells} == {"digits (no MNIST data)"}
        assert all("mnist" not in p.spec["dataset"] or "base=digits" in p.spec["dataset"] for p in plan.cells)

    def test_budget_too_small(self, campaign: ModuleType, capsys: pytest.CaptureFixture[str]) -> None:
        """A budget that leaves no cell room after the speed phase is refused with exit 2."""
        rc, text, err = run_main(campaign, capsys, "--dry-run", "--budget-s", "100")
        assert rc == 2
        assert "SKIPPED" in text and "fits no cell in the budget of 100 s" in err

    @pytest.mark.parametrize(
        ("argv", "message"),
        [
            (["--cells", "dm-kde-ipc50,dm-kde"], "unknown dm-kde; valid: dm-kde-ipc50"),
            (["--slots", "0"], "--slots must be a finite number >= 1"),
            (["--budget-s", "nan"], "--budget-s must be a finite number"),
            (["--data-root", "/nonexistent/data"], "no MNIST in torchvision's layout"),
            (["--device", "tpu"], "--device must be cpu, cuda or cuda:N"),
        ],
    )
    def test_bad_input_one_line_exit_2(
        self, campaign: ModuleType, capsys: pytest.CaptureFixture[str], argv: list[str], message: str
    ) -> None:
        """Each bad input is one line on stderr and exit status 2."""
        rc, _, err = run_main(campaign, capsys, "--dry-run", *argv)
        assert rc == 2
        assert message in err and len(err.strip().splitlines()) == 1, err

    def test_specs_are_validated(
        self, campaign: ModuleType, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """A cell whose method has an unknown parameter fails the dry run, naming the cell and the parameter."""
        import dataclasses

        at = next(i for i, c in enumerate(campaign.CELLS) if c.name == "dc-mnist-ipc1")
        broken = dataclasses.replace(campaign.CELLS[at], method="dc[iteratoins=5]")
        monkeypatch.setattr(campaign, "CELLS", (*campaign.CELLS[:at], broken, *campaign.CELLS[at + 1 :]))
        rc, _, err = run_main(campaign, capsys, "--dry-run")
        assert rc == 2 and "cell 'dc-mnist-ipc1'" in err and "iteratoins" in err


class TestDeadline:
    def test_curve_points_stop_with_a_last_point(self, campaign: ModuleType, monkeypatch: pytest.MonkeyPatch) -> None:
        """Milestones are evaluated as reached; when the deadline nears, one more point, then OutOfTime."""
        clock = [1000.0]
        monkeypatch.setattr(campaign.time, "time", lambda: clock[0])
        seen: list[int] = []
        hook = campaign.CurvePoints([2, 5, 9], lambda i, syn, s: seen.append(i), deadline=1010.0, eval_s=1.0)
        syn = torch.zeros(2)
        assert hook.resume(syn=syn) == 0
        with pytest.raises(campaign.OutOfTime) as stop:
            for iteration in range(1, 20):
                clock[0] += 1.0  # one second per iteration: the deadline (less 1.5 eval + 2 s) comes at 6.5 s
                hook.maybe_save(iteration, syn=syn)
        assert stop.value.iteration == 7
        assert seen == [2, 5, 7]

    def test_guard_stops_trial(self, campaign: ModuleType, monkeypatch: pytest.MonkeyPatch) -> None:
        """A trial's guard lets iterations pass until evaluating would not fit, then raises with the count."""
        clock = [0.0]
        monkeypatch.setattr(campaign.time, "time", lambda: clock[0])
        guard = campaign.DeadlineGuard(deadline=10.0, eval_s=2.0)
        guard.maybe_save(1)
        clock[0] = 5.1  # 5.1 + 1.5 * 2 + 2 >= 10
        with pytest.raises(campaign.OutOfTime) as stop:
            guard.maybe_save(2)
        assert stop.value.iteration == 2 and guard.iteration == 2


class TestRunCell:
    """One cell in this process, on digits with tiny settings (what a child process runs)."""

    @pytest.fixture(autouse=True)
    def _no_compile(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setenv("DISTILLBENCH_COMPILE", "off")  # as a --smoke child sets it: compiling takes a minute

    @staticmethod
    def smoke_settings(campaign: ModuleType) -> object:
        return campaign.Settings(device="cpu", smoke=True, data_note="smoke")

    def test_trial_cell_records_a_point(self, campaign: ModuleType, tmp_path: Path) -> None:
        """dc's smoke cell distils 3 iterations and evaluates once; the file holds the final record."""
        cell = next(c for c in campaign.CELLS if c.name == "dc-mnist-ipc1")
        out = tmp_path / "dc.json"
        rc = campaign.run_cell(cell, self.smoke_settings(campaign), out, time.time() + 600, tmp_path)
        record = json.loads(out.read_text())
        assert rc == 0 and record["status"] == "ok", record.get("error")
        (point,) = record["points"]
        assert point["iteration"] == 3 and record["iterations_done"] == 3
        assert 0.0 <= point["acc_mean"] <= 1.0 and len(point["acc_per_model"]) == 1
        assert record["seconds_per_iteration"] > 0 and record["protocol"]["epochs"] == 2

    def test_curve_cell_stops_at_deadline(self, campaign: ModuleType, tmp_path: Path) -> None:
        """A curve whose deadline has passed evaluates the set it has after one iteration and stops there."""
        cell = next(c for c in campaign.CELLS if c.name == "dm-kde-ipc10")
        out = tmp_path / "dm.json"
        rc = campaign.run_cell(cell, self.smoke_settings(campaign), out, time.time(), tmp_path)
        record = json.loads(out.read_text())
        assert rc == 0 and record["status"] == "stopped_at_deadline", record.get("error")
        assert [p["iteration"] for p in record["points"]] == [1] and record["stopped_at"] == 1
        assert record["points"][0]["acc_conflicting"] is not None  # the bias columns of colored_mnist


def smoke(tmp_path: Path, *argv: str, timeout: float = 400) -> dict:
    out = tmp_path / "campaign.json"
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--smoke", "--out", str(out), *argv],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return json.loads(out.read_text())


@pytest.mark.slow
class TestSmokeRun:
    def test_whole_campaign_on_cpu(self, tmp_path: Path) -> None:
        """Parent, speed child and two packed cell children: every phase lands in the one JSON file."""
        doc = smoke(tmp_path, "--cells", "dm-kde-ipc10,dc-mnist-ipc1", "--budget-s", "150", "--grace-s", "30")
        assert doc["status"] == "done" and doc["elapsed_s"] < 150 + 30
        speed = doc["speed"]
        assert speed["status"] == "ok" and speed["sequential_s"] > 0
        assert [v["options"] for v in speed["variants"]][:2] == ["none", "prefetch"]
        assert all(v["ratio"] > 0 for v in speed["variants"] if "seconds" in v)
        assert speed["not_implemented"], "the missing remedies are listed"
        curve, trial = doc["cells"]["dm-kde-ipc10"], doc["cells"]["dc-mnist-ipc1"]
        assert curve["status"] == "stopped_at_deadline", curve
        iterations = [p["iteration"] for p in curve["points"]]
        assert iterations[:2] == [2, 5] and iterations[-1] == curve["stopped_at"] > 5
        assert trial["status"] == "ok" and trial["points"][0]["iteration"] == 3
        assert trial["alongside"] == ["dm-kde-ipc10"] or curve["alongside"] == ["dc-mnist-ipc1"]
        assert not Path(doc["workdir"]).exists(), "the children's temporary folder is removed"

    def test_speed_timeout_keeps_going(self, tmp_path: Path) -> None:
        """A speed phase past its limit is killed and recorded as such; the cells still run."""
        doc = smoke(
            tmp_path, "--cells", "dc-mnist-ipc1", "--speed-timeout-s", "1", "--grace-s", "0", "--budget-s", "150"
        )
        assert doc["speed"]["status"] in ("timeout", "not_started") and "killed_after_s" in doc["speed"]
        assert doc["cells"]["dc-mnist-ipc1"]["status"] == "ok"
