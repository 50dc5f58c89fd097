from __future__ import annotations

import dataclasses
import importlib
import subprocess
import sys
import textwrap

import pytest

from distillbench.harness.errors import DistillBenchError, DuplicateNameError, UnknownNameError
from distillbench.harness.params import NoParams
from distillbench.harness.plugins import METHODS, REGISTRIES
from distillbench.harness.registry import Registry


def _plugin(name: str):
    return type(name, (), {"Params": NoParams, "__module__": "tests.fake"})


class TestRegistryBasics:
    def test_register_and_get(self):
        """A decorated class is returned by get() under its name and its aliases."""
        reg = Registry("widget", group="distillbench_test.none")

        @reg.register("knob", "dial")
        class Knob:
            pass

        assert reg.get("knob") is Knob
        assert reg.get("dial") is Knob
        assert "knob" in reg and "slider" not in reg

    def test_names_natural_sort_and_pattern(self):
        """names() sorts naturally (net2 before net10) and filters with wildcards."""
        reg = Registry("widget", group="distillbench_test.none")
        for name in ("net10", "net2", "mlp", "net1"):
            reg.add(name, _plugin(name))
        assert reg.names() == ["mlp", "net1", "net2", "net10"]
        assert reg.names("net*") == ["net1", "net2", "net10"]

    def test_builtins_are_lazy(self):
        """Listing the built-ins imports none of their modules (ls must stay fast)."""
        code = (
            "import sys; from distillbench.harness.plugins import METHODS; METHODS.names(); "
            "print('torch' in sys.modules, 'distillbench.methods.dm' in sys.modules)"
        )
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
        assert out.split() == ["False", "False"], "listing plugin names imported heavy modules"

    def test_every_builtin_loads(self):
        """Every declared built-in of every kind imports and is registered under its declared name."""
        for kind, reg in REGISTRIES.items():
            for name in reg.names():
                assert reg.get(name) is not None, f"{kind} {name} did not load"
            assert not reg.broken, f"broken built-in {kind}: {reg.broken}"


class TestRegistryCollisions:
    def test_two_objects_one_name(self):
        """Registering a different object under a taken name names both origins."""
        reg = Registry("widget", group="distillbench_test.none")
        reg.add("knob", _plugin("A"), origin="package a")
        with pytest.raises(DuplicateNameError) as info:
            reg.add("knob", _plugin("B"), origin="package b")
        assert str(info.value) == "widget 'knob' is registered twice: by package a and by package b; rename one of them"

    def test_same_object_twice_is_fine(self):
        """Re-registering the same object (a reloaded module) is not an error."""
        reg = Registry("widget", group="distillbench_test.none")
        obj = _plugin("A")
        reg.add("knob", obj)
        reg.add("knob", obj)
        assert reg.get("knob") is obj

    def test_clash_with_a_builtin(self):
        """A new class registered under a built-in's name is refused."""
        with pytest.raises(DuplicateNameError, match="method 'dm' is registered twice"):
            METHODS.add("dm", _plugin("MyDM"), origin="my_package.dm:MyDM")

    def test_plugin_without_frozen_params(self):
        """A method plugin must declare a frozen Params dataclass."""

        @dataclasses.dataclass
        class Loose:
            x: int = 1

        with pytest.raises(DistillBenchError, match="must be a frozen dataclass"):
            METHODS.add("loose_params_test", type("M", (), {"Params": Loose}))


class TestUnknownNames:
    @pytest.fixture
    def reg(self):
        reg = Registry("method", group="distillbench_test.none")
        for name in ("dm", "dc", "herding", "random"):
            reg.add(name, _plugin(name))
        return reg

    def test_message_with_close_matches(self, reg):
        """The error names the request, close matches and every valid name."""
        with pytest.raises(UnknownNameError) as info:
            reg.get("dn")
        assert str(info.value) == "unknown method 'dn'. Did you mean: dm, dc? Available: dc, dm, herding, random"

    def test_message_without_close_matches(self, reg):
        """Without a close match the hint is left out."""
        with pytest.raises(UnknownNameError) as info:
            reg.get("zzz")
        assert str(info.value) == "unknown method 'zzz'. Available: dc, dm, herding, random"

    def test_is_a_key_error(self):
        """UnknownNameError is a KeyError for generic callers."""
        with pytest.raises(KeyError):
            METHODS.get("nope")


@pytest.fixture
def fake_distribution(tmp_path, monkeypatch):
    """A fake installed distribution with one good and one broken plugin in a test entry-point group."""
    site = tmp_path / "site"
    dist = site / "fakeplug-0.1.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: fakeplug\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(
        textwrap.dedent(
            """
            [distillbench_test.methods]
            good = fakeplug_good:Good
            bad = fakeplug_bad:Bad
            """
        )
    )
    (site / "fakeplug_good.py").write_text(
        "from distillbench.harness.params import NoParams\nclass Good:\n    Params = NoParams\n"
    )
    (site / "fakeplug_bad.py").write_text("raise ImportError('missing dependency foo')\n")
    monkeypatch.syspath_prepend(str(site))
    importlib.invalidate_caches()
    return site


class TestEntryPoints:
    def test_discovered_lazily(self, fake_distribution):
        """Entry points are listed without importing them; get() imports on demand."""
        reg = Registry("method", group="distillbench_test.methods")
        assert "good" in reg.names() and "bad" in reg.names()
        assert "fakeplug_good" not in sys.modules
        assert reg.get("good").__name__ == "Good"
        assert "fakeplug" in reg.origin("good")

    def test_broken_plugin_is_reported_not_fatal(self, fake_distribution):
        """A plugin that fails to import is reported with the reason; the others still work."""
        reg = Registry("method", group="distillbench_test.methods")
        with pytest.raises(DistillBenchError, match="method 'bad' is broken: .*missing dependency foo"):
            reg.get("bad")
        assert "bad" in reg.broken and "bad" not in reg.names()
        assert reg.get("good").__name__ == "Good"

    def test_entry_point_clashing_with_builtin(self, fake_distribution):
        """An entry point reusing a declared name is reported as a duplicate naming both origins."""
        reg = Registry("method", group="distillbench_test.methods")
        reg.add_lazy("good", "somewhere.else:Good", origin="built-in somewhere.else:Good")
        with pytest.raises(DuplicateNameError, match="registered twice: by built-in somewhere.else:Good and by entry"):
            reg.get("good")

    def test_cli_lists_third_party_plugins(self, tmp_path):
        """`distillbench ls methods` shows an installed third-party method and reports a broken one."""
        site = tmp_path / "site"
        dist = site / "thirdparty-0.1.dist-info"
        dist.mkdir(parents=True)
        (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: thirdparty\nVersion: 0.1\n")
        (dist / "entry_points.txt").write_text(
            "[distillbench.methods]\nmymethod = thirdparty_mod:Mine\nbroken = thirdparty_missing:Nope\n"
        )
        (site / "thirdparty_mod.py").write_text("Mine = None\n")
        env = {**__import__("os").environ, "PYTHONPATH": str(site)}
        proc = subprocess.run(
            [sys.executable, "-m", "distillbench.harness.cli", "ls", "methods", "--check"],
            capture_output=True,
            text=True,
            env=env,
        )
        assert proc.returncode == 0, proc.stderr
        assert "mymethod" in proc.stdout.split() and "dm" in proc.stdout.split()
        assert "broken" not in proc.stdout.split(), "a plugin that fails to import was listed as usable"
        assert "broken  [broken: failed to load entry point 'broken'" in proc.stderr
