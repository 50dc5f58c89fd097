"""Malformed inputs against the command line: does each keep the promise?

The promise: bad input gets one line ``error: ...`` on stderr and exit status 2, never a traceback,
and nothing is written or scheduled. Each case below builds its inputs in a fresh temporary folder
(tiny grids, tiny sets of the embedded ``digits`` data, hand-made row files), runs
``distillbench.harness.cli.main`` in that folder in-process (one torch import for all cases), and
compares the folder's listing before and after. ``run`` cases use ``--dry-run``, so Ray never starts.

Usage::

    python benchmarks/bad_inputs.py            # prints a Markdown table and the count that keep the promise

It is run by hand, not by the test suite; ``tests/test_hardening.py`` pins a representative subset.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import sys
import tempfile
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from distillbench.harness.cli import main

Setup = Callable[[Path], list[str]]
GOOD_GRID = {"name": "g", "protocol": "quick-v1", "grid": {"dataset": "digits", "method": "random", "ipc": 1}}


def grid(**changes: Any) -> Setup:
    """A case that writes a grid (``GOOD_GRID`` with top-level or ``grid_<axis>`` changes) and dry-runs it."""

    def setup(tmp: Path) -> list[str]:
        doc = json.loads(json.dumps(GOOD_GRID))
        for key, value in changes.items():
            if key.startswith("grid_"):
                doc["grid"][key.removeprefix("grid_")] = value
            else:
                doc[key] = value
        (tmp / "grid.yaml").write_text(yaml.safe_dump(doc))
        return ["run", "grid.yaml", "--dry-run"]

    return setup


def grid_text(text: str | bytes, *extra: str) -> Setup:
    """A case that writes the grid file verbatim (text or bytes) and dry-runs it with ``extra`` arguments."""

    def setup(tmp: Path) -> list[str]:
        target = tmp / "grid.yaml"
        target.write_bytes(text if isinstance(text, bytes) else text.encode())
        return ["run", "grid.yaml", "--dry-run", *extra]

    return setup


def good_grid_with(*extra: str, prepare: Callable[[Path], None] | None = None) -> Setup:
    """The good grid, dry-run with extra arguments, after ``prepare`` made the folder's bad part."""

    def setup(tmp: Path) -> list[str]:
        (tmp / "grid.yaml").write_text(yaml.safe_dump(GOOD_GRID))
        if prepare is not None:
            prepare(tmp)
        return ["run", "grid.yaml", "--dry-run", *extra]

    return setup


def argv(*args: str, prepare: Callable[[Path], None] | None = None) -> Setup:
    """A case that runs ``args`` after ``prepare`` made its inputs."""

    def setup(tmp: Path) -> list[str]:
        if prepare is not None:
            prepare(tmp)
        return list(args)

    return setup


SPEC = {"spec": {"dataset": "digits", "method": "random", "ipc": 1, "seed": 0}}


def write_set(name: str = "set", x: Any = None, y: Any = None, meta: Any = SPEC, raw_meta: bytes | None = None) -> Any:
    """A ``prepare`` that writes a tiny set (``x`` [10, 1, 8, 8] float, ``y`` 0..9 by default) and its JSON."""

    def prepare(tmp: Path) -> None:
        import torch
        from safetensors.torch import save

        xs = torch.rand(10, 1, 8, 8) if x is None else x()
        ys = torch.arange(10) if y is None else y()
        (tmp / f"{name}.safetensors").write_bytes(save({"x": xs, "y": ys}))
        (tmp / f"{name}.json").write_bytes(raw_meta if raw_meta is not None else json.dumps(meta).encode())

    return prepare


def evaluate(**kwargs: Any) -> Setup:
    """``evaluate set.safetensors`` on a set written by :func:`write_set` with ``kwargs``."""
    return argv("evaluate", "set.safetensors", "--protocol", "quick-v1", prepare=write_set(**kwargs))


def make_file(name: str, data: bytes = b"x") -> Callable[[Path], None]:
    """A ``prepare`` that writes one file."""
    return lambda tmp: (tmp / name).write_bytes(data)


def make_dir(name: str) -> Callable[[Path], None]:
    """A ``prepare`` that makes one folder."""
    return lambda tmp: (tmp / name).mkdir(parents=True)


def _torch(expr: str) -> Callable[[], Any]:
    def build() -> Any:
        import torch

        return eval(expr, {"torch": torch})  # the expressions are the fixed literals below

    return build


CASES: list[tuple[str, Setup]] = [
    # run: values that used to pass validation and crash later
    ("run: seed 2**64", grid(grid_seed=[2**64])),
    ("run: seed -1", grid(grid_seed=[-1])),
    ("run: seed 'abc'", grid(grid_seed=["abc"])),
    ("run: seed 1.5", grid(grid_seed=[1.5])),
    ("run: seed true", grid(grid_seed=[True])),
    ("run: seed '²' (a non-ASCII digit)", grid(grid_seed=["²"])),
    ("run: ipc 10**29", grid(grid_ipc=10**29)),
    ("run: ipc 0", grid(grid_ipc=0)),
    ("run: ipc [] (no values)", grid(grid_ipc=[])),
    ("run: dm iterations=10**23", grid(grid_method="dm[iterations=100000000000000000000000]")),
    ("run: dm lr_img=inf", grid(grid_method="dm[lr_img=inf]")),
    ("run: dm lr_img=nan", grid(grid_method="dm[lr_img=nan]")),
    ("run: dm lr_img=1e400 (overflows to inf)", grid(grid_method="dm[lr_img=1e400]")),
    ("run: dm lr_img=-inf", grid(grid_method="dm[lr_img=-inf]")),
    ("run: dm iterations=2.5", grid(grid_method="dm[iterations=2.5]")),
    ("run: dm unknown parameter", grid(grid_method="dm[iters=5]")),
    ("run: malformed spec 'dm[iterations=1'", grid(grid_method="dm[iterations=1")),
    ("run: unknown method", grid(grid_method="dn")),
    ("run: unknown dataset", grid(grid_dataset="digitz")),
    ("run: method is a number", grid(grid_method=5)),
    # run: grid names become folders
    ("run: name /etc", grid(name="/etc")),
    ("run: name ../escape", grid(name="../escape")),
    ("run: name of 300 characters", grid(name="a" * 300)),
    ("run: name .hidden", grid(name=".hidden")),
    ("run: name with a space", grid(name="my grid")),
    ("run: name a\\b", grid(name="a\\b")),
    ("run: name is a list", grid(name=["a"])),
    ("run: name is empty", grid(name="")),
    # run: the grid file itself
    (
        "run: duplicate key in YAML",
        grid_text(
            "name: g\nprotocol: quick-v1\ngrid:\n  dataset: digits\n  method: random\n  method: herding\n  ipc: 1\n"
        ),
    ),
    ("run: invalid YAML", grid_text("grid: [unclosed\n")),
    ("run: binary grid file", grid_text(bytes(range(256)))),
    ("run: empty grid file", grid_text("")),
    ("run: grid file is a list", grid_text("- a\n- b\n")),
    ("run: unknown top-level key", grid(colour="red")),
    ("run: unknown axis", grid(grid_colour="red")),
    ("run: missing grid file", argv("run", "nope.yaml", "--dry-run")),
    ("run: grid path is a folder", argv("run", "d", "--dry-run", prepare=make_dir("d"))),
    ("run: retries 10**30", grid(retries=10**30)),
    ("run: retries -1", grid(retries=-1)),
    ("run: resources cpu 0", grid(resources={"cpu": 0})),
    ("run: download 'yes' (a string)", grid(download="yes")),
    ("run: artefacts ''", grid(artefacts="")),
    ("run: --results is an existing file", good_grid_with("--results", "f", prepare=make_file("f"))),
    ("run: --results under a file", good_grid_with("--results", "f/sub", prepare=make_file("f"))),
    ("run: --results component of 300 bytes", good_grid_with("--results", "r/" + "b" * 300)),
    ("run: unknown flag", good_grid_with("--colour", "red")),
    # distill
    (
        "distill: --out under an existing file",
        argv(
            "distill",
            "random",
            "digits",
            "--ipc",
            "1",
            "--protocol",
            "quick-v1",
            "--out",
            "f/set.safetensors",
            prepare=make_file("f"),
        ),
    ),
    (
        "distill: --out is a folder",
        argv(
            "distill", "random", "digits", "--ipc", "1", "--protocol", "quick-v1", "--out", "d", prepare=make_dir("d")
        ),
    ),
    (
        "distill: missing data root (mnist)",
        argv("distill", "random", "mnist", "--ipc", "1", "--protocol", "quick-v1", "--data-root", "no-data"),
    ),
    ("distill: --ipc 0", argv("distill", "random", "digits", "--ipc", "0", "--protocol", "quick-v1")),
    ("distill: --ipc abc", argv("distill", "random", "digits", "--ipc", "abc")),
    ("distill: --seed -1", argv("distill", "random", "digits", "--ipc", "1", "--seed", "-1", "--protocol", "quick-v1")),
    (
        "distill: --seed 2**64",
        argv("distill", "random", "digits", "--ipc", "1", "--seed", str(2**64), "--protocol", "quick-v1"),
    ),
    ("distill: dm[lr_img=inf]", argv("distill", "dm[lr_img=inf]", "digits", "--ipc", "1", "--protocol", "quick-v1")),
    ("distill: unknown protocol", argv("distill", "random", "digits", "--ipc", "1", "--protocol", "quick-v9")),
    # evaluate
    ("evaluate: metadata is []", evaluate(meta=[])),
    ("evaluate: metadata is a string", evaluate(meta="hello")),
    ("evaluate: metadata is not JSON", evaluate(raw_meta=b"{not json")),
    ("evaluate: spec is a string", evaluate(meta={"spec": "digits"})),
    ("evaluate: spec lacks method and ipc", evaluate(meta={"spec": {"dataset": "digits"}})),
    (
        "evaluate: spec names an unknown dataset",
        evaluate(meta={"spec": {"dataset": "digitz", "method": "random", "ipc": 1}}),
    ),
    (
        "evaluate: spec has ipc 'many'",
        evaluate(meta={"spec": {"dataset": "digits", "method": "random", "ipc": "many"}}),
    ),
    ("evaluate: x of the wrong sample shape", evaluate(x=_torch("torch.rand(10, 3, 32, 32)"))),
    ("evaluate: x is a scalar", evaluate(x=_torch("torch.tensor(1.0)"))),
    ("evaluate: labels out of range", evaluate(y=_torch("torch.arange(10) + 5"))),
    ("evaluate: 5 labels for 10 samples", evaluate(y=_torch("torch.arange(5)"))),
    ("evaluate: float hard labels", evaluate(y=_torch("torch.arange(10).float()"))),
    ("evaluate: soft labels with 3 columns", evaluate(y=_torch("torch.rand(10, 3)"))),
    ("evaluate: empty x", evaluate(x=_torch("torch.rand(0, 1, 8, 8)"), y=_torch("torch.zeros(0, dtype=torch.long)"))),
    ("evaluate: all-NaN x", evaluate(x=_torch("torch.full((10, 1, 8, 8), float('nan'))"))),
    ("evaluate: int64 pixels", evaluate(x=_torch("torch.randint(0, 255, (10, 1, 8, 8))"))),
    ("evaluate: missing set file", argv("evaluate", "none.safetensors")),
    ("evaluate: set without its JSON", argv("evaluate", "s.safetensors", prepare=make_file("s.safetensors"))),
    (
        "evaluate: corrupt safetensors",
        argv(
            "evaluate",
            "s.safetensors",
            prepare=lambda t: (make_file("s.safetensors", b"junk")(t), make_file("s.json", b"{}")(t)),
        ),
    ),
    (
        "evaluate: --seed -5",
        argv("evaluate", "set.safetensors", "--protocol", "quick-v1", "--seed", "-5", prepare=write_set()),
    ),
    ("evaluate: unknown protocol", argv("evaluate", "set.safetensors", "--protocol", "nope", prepare=write_set())),
    # leaderboard
    ("leaderboard: results folder missing", argv("leaderboard", "nope")),
    (
        "leaderboard: --reported is a binary file",
        argv(
            "leaderboard",
            "r",
            "--reported",
            "bin.yaml",
            prepare=lambda t: (make_dir("r/rows")(t), make_file("bin.yaml", bytes(range(256)))(t)),
        ),
    ),
    (
        "leaderboard: --reported missing",
        argv("leaderboard", "r", "--reported", "none.yaml", prepare=make_dir("r/rows")),
    ),
    (
        "leaderboard: --reported is a list",
        argv(
            "leaderboard",
            "r",
            "--reported",
            "l.yaml",
            prepare=lambda t: (make_dir("r/rows")(t), make_file("l.yaml", b"- 1\n")(t)),
        ),
    ),
    (
        "leaderboard: --out is a file",
        argv("leaderboard", "r", "--out", "f", prepare=lambda t: (make_dir("r/rows")(t), make_file("f")(t))),
    ),
    # status
    ("status: results folder missing", argv("status", "nope")),
    ("status: folder without rows/", argv("status", "r", prepare=make_dir("r"))),
    ("status: --grid missing", argv("status", "r", "--grid", "none.yaml", prepare=make_dir("r/rows"))),
    (
        "status: --grid with name /etc",
        argv(
            "status",
            "r",
            "--grid",
            "g.yaml",
            prepare=lambda t: (
                make_dir("r/rows")(t),
                make_file("g.yaml", yaml.safe_dump({**GOOD_GRID, "name": "/etc"}).encode())(t),
            ),
        ),
    ),
    # describe, ls, buffers
    ("describe: unknown name", argv("describe", "dnn")),
    ("describe: unknown kind prefix", argv("describe", "colours:dm")),
    ("ls: unknown kind", argv("ls", "colours")),
    ("buffers: build without --dataset", argv("buffers", "build", "--method", "mtt")),
    ("buffers: list with --dataset", argv("buffers", "list", "--dataset", "digits")),
    (
        "buffers: build for a method without experts",
        argv("buffers", "build", "--dataset", "digits", "--method", "random"),
    ),
    (
        "buffers: build with --device bogus",
        argv("buffers", "build", "--dataset", "digits", "--method", "mtt", "--device", "bogus"),
    ),
    ("buffers: unknown action", argv("buffers", "burn")),
    ("buffers: --results is a file", argv("buffers", "list", "--results", "f", prepare=make_file("f"))),
]


def _listing(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def run_case(setup: Setup) -> dict[str, Any]:
    """Run one case in a fresh folder: its exit code, stderr lines, whether it raised, what it wrote."""
    cwd = os.getcwd()
    with tempfile.TemporaryDirectory(prefix="distillbench-bad-") as tmp:
        root = Path(tmp)
        os.chdir(root)
        try:
            args = setup(root)
            before = _listing(root)
            out, err = io.StringIO(), io.StringIO()
            raised = False
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                try:
                    code = main(args)
                except SystemExit as exc:  # argparse's own exits
                    code = exc.code if isinstance(exc.code, int) else 1
                except BaseException:  # noqa: BLE001 - a traceback is what this script counts
                    traceback.print_exc()
                    raised, code = True, 1
            written = sorted(_listing(root) - before)
        finally:
            os.chdir(cwd)
    lines = [line for line in err.getvalue().splitlines() if line.strip()]
    traced = raised or "Traceback (most recent call last)" in err.getvalue()
    one_line = len(lines) == 1 and lines[0].startswith("error: ")
    return {
        "code": code,
        "traceback": traced,
        "written": written,
        "message": lines[-1] if lines else "",
        "kept": code == 2 and one_line and not traced and not written,
    }


def main_table() -> int:
    """Run every case and print the Markdown table; returns 0 when every case keeps the promise."""
    print("| # | input | exit | traceback | wrote | promise kept | message |")
    print("|---|---|---|---|---|---|---|")
    kept = 0
    for number, (label, setup) in enumerate(CASES, start=1):
        result = run_case(setup)
        kept += result["kept"]
        message = result["message"][:110].replace("|", "\\|")
        print(
            f"| {number} | {label} | {result['code']} | {'yes' if result['traceback'] else 'no'} | "
            f"{'yes' if result['written'] else 'no'} | {'yes' if result['kept'] else '**no**'} | `{message}` |"
        )
    print(
        f"\n{kept} of {len(CASES)} malformed inputs keep the promise (exit 2, one 'error:' line, no traceback, "
        "nothing written)"
    )
    return 0 if kept == len(CASES) else 1


if __name__ == "__main__":
    sys.exit(main_table())
