from __future__ import annotations

import dataclasses
from typing import Literal

import pytest

from distillbench.harness.errors import ConfigError
from distillbench.harness.params import build_params, format_spec, parse_spec


@dataclasses.dataclass(frozen=True)
class P:
    iterations: int = 10
    lr: float = 1.0
    dsa: bool = True
    init: Literal["real", "noise"] = "real"
    net: str = "convnet"
    depth: int | None = None
    hidden: tuple[int, ...] = (128, 128)

    def __post_init__(self) -> None:
        if self.iterations < 0:
            raise ValueError("iterations must be >= 0")


class TestParseSpec:
    def test_plain_name(self):
        """A bare name has no parameters."""
        assert parse_spec("dm") == ("dm", {})

    def test_parameters_in_order(self):
        """Key/value pairs are split on commas and stripped."""
        assert parse_spec("dm[lr_img=1.0, iterations=200]") == ("dm", {"lr_img": "1.0", "iterations": "200"})

    def test_nested_brackets(self):
        """A value may itself be a spec with brackets and commas."""
        name, raw = parse_spec("dm[net=convnet[depth=2,width=64],iterations=5]")
        assert name == "dm"
        assert raw == {"net": "convnet[depth=2,width=64]", "iterations": "5"}

    @pytest.mark.parametrize(
        ("text", "fragment"),
        [
            ("dm[iterations=5", "closing"),
            ("dm[iterations]", "not 'key=value'"),
            ("dm[a=1,a=2]", "given twice"),
            ("dm[a=1,,b=2]", "empty item"),
            ("[a=1]", "malformed"),
            ("dm]", "malformed"),
        ],
    )
    def test_malformed(self, text, fragment):
        """Malformed specs raise ConfigError saying what is wrong."""
        with pytest.raises(ConfigError, match=fragment):
            parse_spec(text)


class TestBuildParams:
    def test_conversion_of_every_type(self):
        """Strings from a spec become the declared types."""
        p = build_params(
            P,
            {"iterations": "20", "lr": "0.5", "dsa": "false", "init": "noise", "depth": "none", "hidden": "64/32"},
            owner="method 'x'",
        )
        assert p == P(iterations=20, lr=0.5, dsa=False, init="noise", depth=None, hidden=(64, 32))

    def test_yaml_scalars(self):
        """Native YAML scalars are accepted where they fit the type (int for float, not bool for int)."""
        assert build_params(P, {"lr": 2, "iterations": 3, "dsa": True}, owner="m").lr == 2.0
        with pytest.raises(ConfigError, match="'iterations' of m must be int"):
            build_params(P, {"iterations": True}, owner="m")

    def test_unknown_key_lists_valid_keys(self):
        """An unknown key names the owner and every valid key."""
        with pytest.raises(ConfigError) as info:
            build_params(P, {"iters": "3"}, owner="method 'dm'")
        assert str(info.value) == (
            "unknown parameter 'iters' for method 'dm'; valid parameters: depth, dsa, hidden, init, iterations, lr, net"
        )

    @pytest.mark.parametrize(
        ("key", "value", "expected"),
        [
            ("iterations", "2.5", "must be int"),
            ("lr", "fast", "must be float"),
            ("dsa", "maybe", "must be bool"),
            ("init", "zeros", "must be 'real' | 'noise'"),
            ("lr", "nan", "must be float"),
        ],
    )
    def test_wrong_type(self, key, value, expected):
        """A value of the wrong type is an error naming the expected type and the value."""
        with pytest.raises(ConfigError, match=expected):
            build_params(P, {key: value}, owner="m")

    def test_range_check_in_post_init(self):
        """A __post_init__ ValueError becomes a ConfigError."""
        with pytest.raises(ConfigError, match="iterations must be >= 0"):
            build_params(P, {"iterations": "-1"}, owner="m")

    def test_params_are_frozen(self):
        """Parameters cannot be changed after validation."""
        p = build_params(P, {}, owner="m")
        with pytest.raises(dataclasses.FrozenInstanceError):
            p.iterations = 5  # type: ignore[misc]


class TestFormatSpec:
    def test_defaults_omitted_and_sorted(self):
        """The display form shows only changed parameters, sorted by key."""
        assert format_spec("dm", P()) == "dm"
        assert format_spec("dm", P(lr=0.5, dsa=False)) == "dm[dsa=false,lr=0.5]"

    def test_round_trip(self):
        """Formatting then parsing gives the same parameters back."""
        p = P(iterations=7, hidden=(3, 4), depth=2, init="noise")
        name, raw = parse_spec(format_spec("dm", p))
        assert build_params(P, raw, owner="m") == p
