"""The README's promises: its plugin example works as printed, and its two commands are the real ones."""

from __future__ import annotations

import json
import re

from distillbench.harness.cli import main

from .conftest import REPO

README = (REPO / "README.md").read_text()


def test_plugin_example_runs(tmp_path, capsys, tiny_protocol):
    """The complete plugin example in the README registers and distils through the CLI."""
    block = re.search(r"```python\n(# nearest_mean\.py\n.*?)```", README, re.S)
    assert block, "README lost its plugin example"
    plugin = tmp_path / "nearest_mean.py"
    plugin.write_text(block.group(1))
    code = main(
        [
            "distill",
            "nearest_mean[normalise=false]",
            "digits",
            "--ipc",
            "2",
            "--protocol",
            "tiny-test",
            "--json",
            "--plugin",
            str(plugin),
        ]
    )
    out = capsys.readouterr().out
    assert code == 0, out
    row = json.loads(out)
    assert row["status"] == "ok" and row["n_distilled"] == 20 and row["acc_mean"] > 0.3


def test_two_commands_are_documented():
    """The install+quickstart command and the test command that CI runs are in the README."""
    assert "pip install -e '.[test]' && distillbench run configs/quickstart.yaml" in README
    assert "python -m pytest\n" in README
    assert "python -m pytest" in (REPO / ".ci" / "run").read_text()
