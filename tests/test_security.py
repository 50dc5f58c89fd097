"""Hardening: planted data files, grid plugins, Ray's listening address, file modes and leaderboard escaping."""

from __future__ import annotations

import contextlib
import ipaddress
import os
import pickle
import re
import struct
from pathlib import Path

import numpy as np
import pytest

from distillbench.harness.errors import DataError

from .test_datasets import dataset, labelled_images, write_cifar10_tree


class _Planted:
    """An object whose unpickling calls ``func(*args)``: what a planted batch file would hold."""

    def __init__(self, func, *args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


def _py2_str(raw: bytes) -> bytes:
    """A Python 2 ``str`` as cPickle protocol 2 writes it (``SHORT_BINSTRING`` or ``BINSTRING``)."""
    if len(raw) < 256:
        return b"U" + bytes([len(raw)]) + raw
    return b"T" + struct.pack("<I", len(raw)) + raw


def _py2_int(value: int) -> bytes:
    return b"K" + bytes([value]) if value < 256 else b"J" + struct.pack("<i", value)


def py2_cifar_batch(images: np.ndarray, labels: np.ndarray, label_key: str) -> bytes:
    """A batch in the byte layout of the official archives: a Python 2 numpy array pickled with protocol 2.

    Written opcode by opcode because Python 3 pickles ``bytes`` and numpy arrays differently
    (``_codecs.encode``, ``_frombuffer``); the official files name only ``_reconstruct``, ``ndarray`` and
    ``dtype`` and hold the pixels and keys as Python 2 strings.
    """
    data = np.ascontiguousarray(images.reshape(len(images), -1), dtype=np.uint8)
    rows, cols = data.shape
    out = b"\x80\x02}q\x00("
    out += _py2_str(b"data")
    out += b"cnumpy.core.multiarray\n_reconstruct\nq\x01cnumpy\nndarray\nq\x02K\x00\x85" + _py2_str(b"b") + b"\x87R("
    out += b"K\x01" + _py2_int(rows) + _py2_int(cols) + b"\x86"
    out += b"cnumpy\ndtype\nq\x03" + _py2_str(b"u1") + b"K\x00K\x01\x87R("
    out += b"K\x03" + _py2_str(b"|") + b"NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb"
    out += b"\x89" + _py2_str(data.tobytes()) + b"tb"
    out += _py2_str(label_key.encode()) + b"](" + b"".join(_py2_int(int(v)) for v in labels) + b"e"
    out += _py2_str(b"batch_label") + _py2_str(b"training batch 1 of 5")
    return out + b"u."


class TestCifarUnpickling:
    """CIFAR batches are unpickled by an allow-list: data loads, code does not run."""

    @pytest.mark.parametrize(
        "payload",
        [
            pytest.param(lambda marker: _Planted(os.system, f"touch {marker}"), id="os.system"),
            pytest.param(lambda marker: _Planted(eval, f"open({str(marker)!r}, 'w').close()"), id="eval"),
            pytest.param(
                lambda marker: {
                    "data": np.zeros((1, 3072), np.uint8),
                    "labels": [_Planted(os.system, f"touch {marker}")],
                },
                id="nested-in-a-real-batch",
            ),
        ],
    )
    def test_planted_batch_is_refused_and_runs_nothing(self, tmp_path, payload):
        """A batch whose pickle would run a command is refused by name, and the command never runs."""
        base = write_cifar10_tree(tmp_path / "data")
        marker = tmp_path / "marker"
        (base / "data_batch_2").write_bytes(pickle.dumps(payload(marker)))
        with pytest.raises(DataError) as info:
            dataset("cifar10").load(tmp_path / "data")
        message = str(info.value)
        assert not marker.exists()
        assert "data_batch_2 contains a pickled object of type " in message
        assert "not a CIFAR batch: delete it and run `distillbench data fetch cifar10`" in message
        assert "\n" not in message

    def test_names_the_refused_global(self, tmp_path):
        """The message names the global the pickle asked for, e.g. ``builtins.eval``."""
        base = write_cifar10_tree(tmp_path)
        (base / "test_batch").write_bytes(pickle.dumps(_Planted(eval, "1")))
        with pytest.raises(DataError, match=r"test_batch contains a pickled object of type builtins\.eval;"):
            dataset("cifar10").load(tmp_path)

    @pytest.mark.parametrize("protocol", [2, pickle.HIGHEST_PROTOCOL])
    def test_python3_batches_still_load(self, tmp_path, protocol):
        """Batches re-pickled by Python 3 (``_codecs.encode`` under protocol 2, ``_frombuffer`` under 5) load."""
        base = write_cifar10_tree(tmp_path)
        x, y = labelled_images(2, 10, (3, 32, 32), offset=10000)
        batch = {"data": x.reshape(len(x), -1), "labels": y.tolist(), "filenames": ["a.png"] * len(x)}
        (base / "test_batch").write_bytes(pickle.dumps(batch, protocol=protocol))
        bundle = dataset("cifar10").load(tmp_path)
        assert bundle.test.x.shape == (20, 3, 32, 32) and bundle.test.y.tolist() == y.tolist()

    def test_official_python2_layout_loads(self, tmp_path):
        """A batch in the official archives' byte layout (Python 2, protocol 2) loads with its pixels intact."""
        base = write_cifar10_tree(tmp_path)
        x, y = labelled_images(2, 10, (3, 32, 32), offset=10000)
        raw = py2_cifar_batch(x, y, "labels")
        assert pickle.loads(raw, encoding="latin1")["data"].tobytes() == x.tobytes()  # the helper is faithful
        (base / "test_batch").write_bytes(raw)
        bundle = dataset("cifar10").load(tmp_path)
        assert bundle.test.y.tolist() == y.tolist()
        mean, std = bundle.info.mean[0], bundle.info.std[0]
        pixels = bundle.test.x[:, 0, 0, :2] * std + mean
        assert (pixels * 255).round().to(int).tolist() == x[:, 0, 0, :2].astype(int).tolist()


def _grid_with_plugin(tmp_path, plugin_source: str, protocol: str = "quick-v1"):
    """A valid grid naming one plugin file (``grid_plugin.py`` beside it) that holds ``plugin_source``."""
    import yaml

    (tmp_path / "grid_plugin.py").write_text(plugin_source)
    grid = {
        "name": "g",
        "protocol": protocol,
        "plugins": ["grid_plugin.py"],
        "grid": {"dataset": ["digits"], "method": ["random"], "ipc": [1]},
    }
    path = tmp_path / "grid.yaml"
    path.write_text(yaml.safe_dump(grid))
    return path


PLUGIN_FAILURES = [
    pytest.param("import sys\nsys.exit(0)\n", "exited while being imported (SystemExit: 0)", id="exit-0"),
    pytest.param("raise SystemExit\n", "exited while being imported (SystemExit: None)", id="bare-SystemExit"),
    pytest.param("import sys\nsys.exit('bye')\n", "exited while being imported (SystemExit: 'bye')", id="exit-str"),
    pytest.param("raise GeneratorExit('odd')\n", "failed to import: GeneratorExit: odd", id="other-BaseException"),
    pytest.param("import no_such_module_xyz\n", "failed to import: ModuleNotFoundError: ", id="import-error"),
    pytest.param("1/0\n", "failed to import: ZeroDivisionError: division by zero", id="exception"),
]


class TestPluginFailures:
    """A grid plugin or ``--plugin`` that exits or fails to import is one ``error: plugin ...`` line and exit 2."""

    @pytest.mark.parametrize(("source", "expected"), PLUGIN_FAILURES)
    @pytest.mark.parametrize("command", ["run --dry-run", "status --grid"])
    def test_grid_plugin(self, tmp_path, capsys, command, source, expected):
        """``run --dry-run`` and ``status --grid`` import a grid's plugins; a failure is reported, never exit 0."""
        from distillbench.harness.cli import main

        grid = _grid_with_plugin(tmp_path, source)
        if command == "run --dry-run":
            argv = ["run", str(grid), "--dry-run", "--results", str(tmp_path / "results")]
        else:
            (tmp_path / "results" / "rows").mkdir(parents=True)  # an empty results directory
            argv = ["status", str(tmp_path / "results"), "--grid", str(grid)]
        code = main(argv)
        out, err = capsys.readouterr()
        plugin = str((tmp_path / "grid_plugin.py").resolve())
        assert code == 2 and out == ""
        # Grid errors are prefixed with the grid file: "error: <grid>: plugin '<file>' exited ...".
        assert err.startswith(f"error: {grid}: plugin {plugin!r} {expected}"), err
        assert err.count("\n") == 1

    @pytest.mark.parametrize(("source", "expected"), PLUGIN_FAILURES[:2])
    def test_command_line_plugin(self, tmp_path, capsys, source, expected):
        """``--plugin FILE`` that exits is an error too."""
        from distillbench.harness.cli import main

        (tmp_path / "grid_plugin.py").write_text(source)
        code = main(["ls", "methods", "--plugin", str(tmp_path / "grid_plugin.py")])
        _, err = capsys.readouterr()
        assert code == 2 and err.startswith(f"error: plugin {str(tmp_path / 'grid_plugin.py')!r} {expected}"), err

    def test_module_plugin(self, capsys):
        """A ``--plugin`` module name that does not import names the module."""
        from distillbench.harness.cli import main

        code = main(["ls", "methods", "--plugin", "no_such_plugin_pkg.methods"])
        _, err = capsys.readouterr()
        assert code == 2
        assert err.startswith("error: plugin 'no_such_plugin_pkg.methods' failed to import: ModuleNotFoundError"), err

    def test_keyboard_interrupt_passes_through(self, tmp_path):
        """Ctrl-C while a plugin imports is not swallowed as a plugin error."""
        from distillbench.harness.plugins import load_plugin_modules

        (tmp_path / "slow_plugin.py").write_text("raise KeyboardInterrupt\n")
        with pytest.raises(KeyboardInterrupt):
            load_plugin_modules([str(tmp_path / "slow_plugin.py")])


def _descendants(root: int) -> set[int]:
    """``root`` and every process below it (Ray's GCS and raylet are the driver's children, workers the raylet's)."""
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as fh:
                    parents[int(entry)] = int(fh.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue  # the process ended while being listed
    found, frontier = {root}, [root]
    while frontier:
        parent = frontier.pop()
        children = [pid for pid, ppid in parents.items() if ppid == parent and pid not in found]
        found.update(children)
        frontier.extend(children)
    return found


def _proc_address(hex_address: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    """An address as ``/proc/net/tcp{,6}`` writes it: 32-bit words in host (little-endian) byte order."""
    raw = bytes.fromhex(hex_address)
    raw = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
    address = ipaddress.ip_address(raw)
    return getattr(address, "ipv4_mapped", None) or address


def listening_sockets(pids: set[int]) -> list[tuple[int, str, int]]:
    """(pid, local address, port) of every TCP socket in LISTEN state held by one of ``pids``."""
    inodes: dict[str, int] = {}
    for pid in pids:
        try:
            for fd in os.listdir(f"/proc/{pid}/fd"):
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
                if target.startswith("socket:["):
                    inodes[target[8:-1]] = pid
        except OSError:
            continue
    found = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as fh:
            for line in fh.readlines()[1:]:
                fields = line.split()
                local, state, inode = fields[1], fields[3], fields[9]
                if state == "0A" and inode in inodes:  # 0A: TCP_LISTEN
                    host, port = local.split(":")
                    found.append((inodes[inode], str(_proc_address(host)), int(port, 16)))
    return found


class TestRayBinding:
    """A local Ray listens on the loopback address only; joining a cluster keeps the user's address."""

    def _fake_init(self, monkeypatch):
        """Replace ``ray.init`` by a recorder that stops ``run_grid`` right after the call."""
        import ray
        from ray._private import ray_constants

        from distillbench.harness import scheduler

        calls = []

        def fake_init(**kwargs):
            calls.append((kwargs, ray_constants.ENABLE_RAY_CLUSTER))
            raise _StopAfterInit

        monkeypatch.setattr(scheduler.ray, "init", fake_init)
        monkeypatch.setattr(ray, "is_initialized", lambda: False)
        monkeypatch.delenv("RAY_ADDRESS", raising=False)
        return scheduler, calls, ray_constants

    def _trials(self, tmp_path):
        from distillbench.harness.spec import load_grid_file

        return load_grid_file(_grid_with_plugin(tmp_path, "")).trials

    def test_local_start_uses_single_machine_mode(self, tmp_path, monkeypatch):
        """Without an address, Ray starts in its single-machine mode (node IP 127.0.0.1); the switch is restored."""
        scheduler, calls, ray_constants = self._fake_init(monkeypatch)
        before = ray_constants.ENABLE_RAY_CLUSTER
        with pytest.raises(_StopAfterInit):
            scheduler.run_grid(self._trials(tmp_path), results=tmp_path / "r", data_root=tmp_path, grid_name="g")
        assert calls[0][1] is False and "address" not in calls[0][0]
        assert before == ray_constants.ENABLE_RAY_CLUSTER

    @pytest.mark.parametrize("how", ["argument", "RAY_ADDRESS"])
    def test_cluster_keeps_the_users_choice(self, tmp_path, monkeypatch, how):
        """``--address`` or ``RAY_ADDRESS`` joins the cluster with Ray's own node address logic untouched."""
        scheduler, calls, ray_constants = self._fake_init(monkeypatch)
        kwargs = {"address": "10.0.0.5:6379"} if how == "argument" else {}
        if how == "RAY_ADDRESS":
            monkeypatch.setenv("RAY_ADDRESS", "10.0.0.5:6379")
        with pytest.raises(_StopAfterInit):
            scheduler.run_grid(
                self._trials(tmp_path), results=tmp_path / "r", data_root=tmp_path, grid_name="g", **kwargs
            )
        assert calls[0][0]["address"] == "10.0.0.5:6379"
        assert calls[0][1] is ray_constants.ENABLE_RAY_CLUSTER is True

    @pytest.mark.ray
    def test_local_ray_listens_on_loopback_only(self, tmp_path):
        """During a one-trial local run, every listening socket of the driver, GCS, raylet and workers is loopback."""
        import io

        from ray import tune

        from distillbench.harness.scheduler import run_grid
        from distillbench.harness.spec import load_grid_file

        seen: list[tuple[int, str, int]] = []

        class Snapshot(tune.Callback):
            def on_trial_complete(self, iteration, trials, trial, **info):
                seen.extend(listening_sockets(_descendants(os.getpid())))

        grid = load_grid_file(_grid_with_plugin(tmp_path, TINY_PROTOCOL_PLUGIN, protocol="security-tiny"))
        outcome = run_grid(
            grid.trials,
            results=tmp_path / "results",
            data_root=tmp_path,
            grid_name=grid.name,
            plugins=grid.plugins,
            ray_init={"num_cpus": 1, "object_store_memory": 100 * 2**20},
            stream=io.StringIO(),
            callbacks=[Snapshot()],
        )
        assert outcome.ok == 1
        assert seen, "no listening socket found: the snapshot did not see Ray's processes"
        exposed = [s for s in seen if not ipaddress.ip_address(s[1]).is_loopback]
        assert not exposed, f"Ray ports listening beyond loopback (pid, address, port): {exposed}"


class _StopAfterInit(Exception):
    """Raised by the fake ``ray.init``: the test has what it needs."""


TINY_PROTOCOL_PLUGIN = """
import dataclasses

from distillbench.harness.plugins import register_protocol
from distillbench.harness.protocols import QUICK_V1

register_protocol(
    dataclasses.replace(QUICK_V1, name="security-tiny", networks=("convnet[width=8]",), epochs=2, n_models=1)
)
"""


@contextlib.contextmanager
def umask(mask: int):
    """Run a block under ``mask``, then restore the previous umask."""
    previous = os.umask(mask)
    try:
        yield
    finally:
        os.umask(previous)


class TestFileModes:
    """Rows, sets and leaderboard files get ``0o666`` less the umask, like any file the user creates."""

    @pytest.mark.parametrize(("mask", "mode"), [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
    def test_modes_follow_the_umask(self, tmp_path, mask, mode):
        """A row, a set (tensors and JSON) and leaderboard.md / .csv / index.html all get the umask's mode."""
        import stat

        import torch

        from distillbench.harness import store
        from distillbench.harness.types import DistilledSet
        from distillbench.leaderboard import build_leaderboard

        from .test_leaderboard import row

        results = tmp_path / "results"
        with umask(mask):
            written = [Path(store.write_row(results, row()))]
            dset = DistilledSet(torch.zeros(2, 1, 4, 4), torch.zeros(2, dtype=torch.long))
            tensors = Path(store.save_set(store.sets_dir(results), "abc", dset, {}))
            written += [tensors, tensors.with_suffix(".json")]
            build_leaderboard([results], tmp_path / "board", generated_at="2026-01-01T00:00:00Z")
            written += [tmp_path / "board" / n for n in ("leaderboard.md", "leaderboard.csv", "index.html")]
        modes = {p.name: oct(stat.S_IMODE(p.stat().st_mode)) for p in written}
        assert modes == {p.name: oct(mode) for p in written}

    def test_rewrite_takes_the_current_umask(self, tmp_path):
        """The umask is read at each write, not once per process."""
        import stat

        from distillbench.harness.store import atomic_write

        target = tmp_path / "f.txt"
        for mask, mode in ((0o077, 0o600), (0o022, 0o644)):
            with umask(mask):
                atomic_write(target, lambda tmp: Path(tmp).write_text("x"))
            assert stat.S_IMODE(target.stat().st_mode) == mode


class TestMarkdownEscaping:
    """Text from rows reaches leaderboard.md as text: no HTML, no broken tables, no code-span escapes."""

    PAYLOAD = "<script>alert(1)</script>|x"

    def _board(self, tmp_path) -> str:
        from distillbench.harness import store
        from distillbench.leaderboard import build_leaderboard

        from .test_leaderboard import row

        results = tmp_path / "results"
        for ipc in (1, 10):
            store.write_row(results, row(method=f"dm[note={self.PAYLOAD}]", ipc=ipc))
        store.write_row(results, row(method="random", dataset="digits<img src=x onerror=alert(2)>", ipc=1))
        store.write_row(results, row(method="random", ipc=1, eval_network="convnet`<b>x</b>`"))
        store.write_row(results, row(method="random", device="gpu|<i>x</i>", ipc=10))
        store.write_row(
            results,
            row(
                method="dm[x=[a](javascript:alert(3))]",
                ipc=50,
                status="error",
                accs=None,
                error="boom` <script>alert(4)</script>\n\n<script>alert(5)</script>",
            ),
        )
        build_leaderboard([results], tmp_path / "board", generated_at="2026-01-01T00:00:00Z")
        return (tmp_path / "board" / "leaderboard.md").read_text(encoding="utf-8")

    def test_no_raw_html_from_rows(self, tmp_path):
        """Every ``<`` outside a code span is an entity; the only raw tag is the generator's own comment."""
        text = self._board(tmp_path)
        outside_code = re.sub(r"`[^`\n]*`", "", text).replace(
            "<!-- Generated by distillbench.leaderboard.build from the results store; do not edit by hand. -->", ""
        )
        assert "<" not in outside_code and ">" not in outside_code.replace("> **Quick protocol:**", "")
        assert "dm[note=&lt;script&gt;alert(1)&lt;/script&gt;\\|x]" in text
        assert "digits&lt;img src=x onerror=alert(2)&gt;" in text

    def test_tables_keep_their_columns(self, tmp_path):
        """A ``|`` in a parameter value or a device name does not add a column."""
        text = self._board(tmp_path)
        for block in re.findall(r"(?:^\|.*\|\n)+", text, flags=re.M):
            lines = block.splitlines()
            widths = {len(re.findall(r"(?<!\\)\|", line)) for line in lines}
            assert len(widths) == 1, lines

    def test_error_text_stays_in_its_code_span(self, tmp_path):
        """A backtick or blank line in an error cannot end the code span and start raw HTML."""
        text = self._board(tmp_path)
        failure = next(line for line in text.splitlines() if line.startswith("- **error**"))
        assert failure.endswith(": `boom' <script>alert(4)</script>`")  # the build keeps an error's first line
        assert failure.count("`") == 2
        assert not any(line.lstrip().startswith("<script") for line in text.splitlines())
        assert "\\[a\\](javascript" not in failure and "[a]\\(javascript:alert(3))" in failure

    def test_backticks_in_labels_are_escaped(self, tmp_path):
        """A backtick in a row's eval network cannot open a code span in a heading."""
        text = self._board(tmp_path)
        assert "eval network convnet\\`&lt;b&gt;x&lt;/b&gt;\\`" in text
