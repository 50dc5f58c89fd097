from __future__ import annotations

import pytest
import yaml

from distillbench.harness.errors import ConfigError, IncompatibleError, UnknownNameError
from distillbench.harness.spec import TrialSpec, load_grid_file, parse_grid
from distillbench.harness.stages import Weighting

from .conftest import temp_plugin

BASE = {"name": "g", "protocol": "quick-v1", "grid": {"dataset": "digits", "method": ["random"], "ipc": [1]}}


def grid(**overrides):
    doc = {**BASE, "grid": {**BASE["grid"], **overrides}}
    return parse_grid(doc)


class TestExpansion:
    def test_cross_product(self):
        """A block is the cross product of its axes; optional axes default to none/native/seed 0."""
        g = grid(method=["random", "herding"], ipc=[1, 10], seed=[0, 1, 2])
        assert len(g.trials) == 12
        assert {t.spec.weighting for t in g.trials} == {"none"}
        assert {t.spec.labels for t in g.trials} == {"native"}

    def test_blocks_are_crossed_separately(self):
        """`grids:` blocks are expanded on their own and concatenated."""
        doc = {
            "name": "g",
            "protocol": "quick-v1",
            "grids": [
                {"dataset": "digits", "method": "random", "ipc": [1, 10]},
                {"dataset": "digits", "method": "dm", "ipc": 1, "seed": [0, 1]},
            ],
        }
        trials = parse_grid(doc).trials
        assert [(t.spec.method, t.spec.ipc, t.spec.seed) for t in trials] == [
            ("random", 1, 0),
            ("random", 10, 0),
            ("dm", 1, 0),
            ("dm", 1, 1),
        ]

    def test_duplicates_collapse(self):
        """The same resolved trial listed twice (even spelled differently) runs once."""
        g = grid(method=["dm", "dm[iterations=20000]"])
        assert len(g.trials) == 1

    def test_settings(self):
        """Top-level settings are parsed and checked."""
        doc = {**BASE, "resources": {"cpu": 2, "gpu": 0.5}, "retries": 2, "download": True, "data_root": "/d"}
        g = parse_grid(doc)
        assert (dict(g.resources), g.retries, g.download, g.data_root) == ({"cpu": 2, "gpu": 0.5}, 2, True, "/d")


class TestTrialIds:
    def test_stable_and_spelling_independent(self):
        """Ids hash the resolved spec: defaults written out give the same id, other values a different one."""
        a = TrialSpec("digits", "dm", 10, protocol="quick-v1").resolve()
        b = TrialSpec("digits", "dm[iterations=20000,lr_img=1.0]", 10, protocol="quick-v1").resolve()
        c = TrialSpec("digits", "dm[iterations=100]", 10, protocol="quick-v1").resolve()
        assert a.trial_id == b.trial_id
        assert a.trial_id != c.trial_id
        assert len(a.trial_id) == 16

    def test_grid_name_is_not_identity(self):
        """The same experiment run from two grid files is one trial."""
        a = TrialSpec("digits", "random", 1, grid="one", protocol="quick-v1").resolve()
        b = TrialSpec("digits", "random", 1, grid="two", protocol="quick-v1").resolve()
        assert a.trial_id == b.trial_id

    def test_distill_id_ignores_protocol(self):
        """Sets are shared between protocols: distill_id excludes the protocol, trial_id does not."""
        a = TrialSpec("digits", "random", 1, protocol="quick-v1").resolve()
        b = TrialSpec("digits", "random", 1, protocol="convnet-v1").resolve()
        assert a.distill_id == b.distill_id and a.trial_id != b.trial_id


class TestValidation:
    @pytest.mark.parametrize(
        ("overrides", "error", "message"),
        [
            ({"method": ["dn"]}, UnknownNameError, "grid: unknown method 'dn'. Did you mean: dm, dd, dc?"),
            ({"dataset": ["digit"]}, UnknownNameError, "grid: unknown dataset 'digit'. Did you mean: digits?"),
            ({"ipc": [0]}, ConfigError, "grid: ipc must be at least 1 (samples per class), got 0"),
            ({"ipc": ["ten"]}, ConfigError, "grid: ipc must be an integer, got 'ten'"),
            ({"method": ["dm[iters=3]"]}, ConfigError, "grid: unknown parameter 'iters' for method 'dm'"),
            (
                {"method": ["dm[iterations=1.5]"]},
                ConfigError,
                "grid: parameter 'iterations' of method 'dm' must be int",
            ),
            ({"protocol": ["quick"]}, UnknownNameError, "grid: unknown protocol 'quick'. Did you mean: quick-v1?"),
            ({"method": ["dm[net=convnett]"]}, UnknownNameError, "grid: unknown network 'convnett'"),
            ({"ipc": []}, ConfigError, "grid is empty: grid has no values for 'ipc'"),
            ({"colour": ["red"]}, ConfigError, "grid: unknown axes ['colour']"),
        ],
    )
    def test_bad_values(self, overrides, error, message):
        """Each bad value is an error that names the block and the problem."""
        with pytest.raises(error) as info:
            grid(**overrides)
        assert str(info.value).startswith(message)

    @pytest.mark.parametrize(
        ("document", "message"),
        [
            (None, "grid is empty"),
            ({"name": "x"}, "grid is empty"),
            ({"grids": []}, "grid is empty"),
            ([1, 2], "a grid file must be a mapping"),
            ({**BASE, "colour": 1}, "unknown grid keys ['colour']"),
            ({**BASE, "resources": {"cpu": -1}}, "resources.cpu must be a non-negative number"),
            ({**BASE, "retries": -1}, "retries must be at least 0"),
        ],
    )
    def test_bad_documents(self, document, message):
        """Structural problems of the document are ConfigErrors."""
        with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
            parse_grid(document)

    def test_incompatible_weighting(self):
        """A non-identity weighting with a method that ignores weights is rejected, naming both."""

        class Uniform(Weighting):
            """Test weighting."""

            def compute(self, data, ctx):
                return None

        with temp_plugin("weightings", "uniformtest", Uniform):
            assert len(grid(method=["dm"], weighting=["uniformtest"]).trials) == 1
            with pytest.raises(IncompatibleError) as info:
                grid(method=["herding"], weighting=["uniformtest"])
        assert "weighting 'uniformtest' cannot be combined with method 'herding'" in str(info.value)

    def test_network_too_deep(self):
        """A network too deep for the dataset's input size fails at validation."""
        with pytest.raises(ConfigError, match="too deep for 8x8 inputs"):
            grid(method=["dm[net=convnet[depth=4]]"])


class TestGridFiles:
    def test_missing_file(self, tmp_path):
        """A missing grid file is a one-line ConfigError naming the path."""
        with pytest.raises(ConfigError, match="grid file '.*nope.yaml' not found"):
            load_grid_file(tmp_path / "nope.yaml")

    def test_malformed_yaml(self, tmp_path):
        """Invalid YAML names the file, the line and the problem."""
        path = tmp_path / "bad.yaml"
        path.write_text("name: x\ngrid:\n  method: [random\n  ipc: 1\n")
        with pytest.raises(ConfigError, match=r"is not valid YAML at line \d+, column \d+"):
            load_grid_file(path)

    def test_quickstart_is_valid(self):
        """The shipped quickstart grid parses: 3 methods x 2 IPCs x 2 seeds on digits."""
        from .conftest import REPO

        g = load_grid_file(REPO / "configs" / "quickstart.yaml")
        assert len(g.trials) == 12
        assert {t.spec.dataset for t in g.trials} == {"digits"}
        assert {t.protocol.name for t in g.trials} == {"quick-v1"}

    def test_file_name_prefixes_errors(self, tmp_path):
        """Errors from the content are prefixed with the file path."""
        path = tmp_path / "g.yaml"
        path.write_text(yaml.safe_dump({**BASE, "grid": {**BASE["grid"], "method": ["dn"]}}))
        with pytest.raises(UnknownNameError, match=r"g\.yaml: grid: unknown method 'dn'"):
            load_grid_file(path)


class TestIssue3Validation:
    def test_replay_protocol_needs_a_replayable_method(self):
        """dd-replay-v1 only scores sets with learned steps: other methods are rejected before running."""
        with pytest.raises(IncompatibleError, match="replays learned inner steps; method 'random' learns none"):
            grid(method=["random"], protocol=["dd-replay-v1"])
        assert len(grid(method=["dd[distill_steps=1,net=mlp]"], protocol=["dd-replay-v1"]).trials) == 1

    def test_text_data_to_an_image_method(self):
        """An image-only method given a text dataset fails at validation, naming both."""
        from distillbench.datasets.base import Dataset
        from distillbench.harness.types import DatasetInfo

        from .conftest import temp_plugin as plugin

        class FakeText(Dataset):
            """A text dataset stand-in."""

            name = "faketext"

            def info(self):
                return DatasetInfo("faketext", "text", 2, (16,), ("neg", "pos"))

            def load(self, root):
                raise AssertionError("validation must fail before loading")

        with (
            plugin("datasets", "faketext", FakeText),
            pytest.raises(IncompatibleError, match="method 'dm' handles image data, but dataset 'faketext' is text"),
        ):
            grid(dataset=["faketext"], method=["dm"])

    def test_dd_more_samples_than_classes_times_ipc(self):
        """Soft-label DD with more samples than classes x ipc is refused at validation."""
        with pytest.raises(ConfigError, match="num_samples"):
            grid(method=["dd[soft_labels=true,distill_steps=1,num_samples=11]"], ipc=[1])
