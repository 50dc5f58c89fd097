"""Tests of the leaderboard build: pooling, bold, significance, reported numbers, bias / long-tail / cost
tables, Markdown / HTML / CSV outputs, failures, filters, determinism, robustness and the CLI."""

from __future__ import annotations

import contextlib
import csv
import hashlib
import json
import math
import random
import re
import statistics
import subprocess
import sys
import webbrowser
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from distillbench.harness.cli import main as cli_main
from distillbench.harness.errors import DataError, DistillBenchError
from distillbench.harness.store import SCHEMA, SCHEMA_VERSION, make_row, write_row, write_rows
from distillbench.leaderboard import LeaderboardResult, build_leaderboard
from distillbench.leaderboard.reported import load_reported
from distillbench.leaderboard.stats import welch_p

GOLDEN = Path(__file__).parent / "golden"


def row(
    *,
    method: str = "dm",
    ipc: int = 1,
    seed: int = 0,
    accs: list[float] | None = None,
    dataset: str = "digits",
    protocol: str = "quick-v1",
    protocol_version: int = 1,
    eval_network: str = "convnet",
    weighting: str = "none",
    labels: str = "native",
    grid: str = "demo",
    status: str = "ok",
    error: str | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """A valid row dict for ``store.write_row``; the trial id is a hash of the identity fields."""
    identity = [grid, dataset, method, weighting, labels, ipc, seed, protocol, protocol_version, eval_network]
    trial_id = hashlib.sha256(json.dumps(identity).encode()).hexdigest()[:16]
    accs = [0.5, 0.6, 0.7] if accs is None and status == "ok" else accs
    values: dict[str, Any] = {
        "trial_id": trial_id,
        "distill_id": trial_id[:8],
        "grid": grid,
        "dataset": dataset,
        "dataset_params": "{}",
        "method": method,
        "method_name": method.split("[")[0],
        "method_params": "{}",
        "weighting": weighting,
        "labels": labels,
        "ipc": ipc,
        "seed": seed,
        "protocol": protocol,
        "protocol_version": protocol_version,
        "eval_network": eval_network,
        "acc_mean": statistics.fmean(accs) if accs else None,
        "acc_std": statistics.pstdev(accs) if accs else None,
        "acc_per_model": accs,
        "n_eval_models": len(accs) if accs else None,
        "status": status,
        "error": error,
        "distill_seconds": 1.0,
        "eval_seconds": 2.0,
    }
    values.update(extra)
    return values


def write_all(results: Path, rows: list[dict[str, Any]]) -> None:
    for values in rows:
        write_row(results, values)


def build(results: Path | list[Path], out: Path, **filters: Any) -> LeaderboardResult:
    dirs = results if isinstance(results, list) else [results]
    return build_leaderboard(dirs, out, **filters)


def basic_rows() -> list[dict[str, Any]]:
    """The rows behind tests/golden/leaderboard_basic.md."""
    return [
        row(method="dm[iterations=200]", ipc=1, seed=0, accs=[0.80, 0.82, 0.81]),
        row(method="dm[iterations=200]", ipc=1, seed=1, accs=[0.79, 0.83, 0.84]),
        row(method="dm[iterations=200]", ipc=10, seed=0, accs=[0.95, 0.96, 0.97]),
        row(method="random", ipc=1, seed=0, accs=[0.60, 0.62, 0.64]),
        row(method="random", ipc=10, seed=0, accs=[0.90, 0.91, 0.92]),
        row(method="random", ipc=50, seed=0, accs=[0.97, 0.97, 0.98]),
        row(method="herding", ipc=1, seed=0, weighting="kde", labels="teacher", accs=[0.70, 0.71, 0.72]),
        row(method="dm[iterations=200]", ipc=50, seed=0, status="error", error="RuntimeError: boom\n  at x"),
        row(method="random", ipc=1, seed=0, protocol="convnet-v1", accs=[0.65, 0.66]),
    ]


def table_for(result: LeaderboardResult, protocol: str = "quick-v1") -> Any:
    matches = [t for t in result.tables if t.protocol == protocol]
    assert len(matches) == 1
    return matches[0]


class TestPooling:
    def test_mean_std_and_n_pool_all_models_of_all_seeds(self, tmp_path: Path) -> None:
        """A cell pools every evaluation model of every seed, in percent, with ddof=0."""
        seed0, seed1 = [0.80, 0.82, 0.81], [0.79, 0.83, 0.84]
        write_all(tmp_path / "r", [row(seed=0, accs=seed0), row(seed=1, accs=seed1)])
        result = build(tmp_path / "r", tmp_path / "out")
        pooled = [100 * a for a in seed0 + seed1]
        cell = table_for(result).cell("dm", 1)
        assert cell.n == 6
        assert cell.n_seeds == 2
        assert cell.mean == pytest.approx(statistics.fmean(pooled))
        assert cell.std == pytest.approx(statistics.pstdev(pooled))
        expected = f"{statistics.fmean(pooled):.2f} ± {statistics.pstdev(pooled):.2f} (n=6, seeds=2)"
        assert expected in result.markdown_path.read_text()

    def test_pooling_is_not_the_mean_of_seed_means(self, tmp_path: Path) -> None:
        """Seeds with different numbers of models weigh by model count, not equally."""
        write_all(tmp_path / "r", [row(seed=0, accs=[1.0]), row(seed=1, accs=[0.0, 0.0, 0.0])])
        cell = table_for(build(tmp_path / "r", tmp_path / "out")).cell("dm", 1)
        assert cell.mean == pytest.approx(25.0)
        assert cell.std == pytest.approx(statistics.pstdev([100.0, 0.0, 0.0, 0.0]))
        assert (cell.n, cell.n_seeds) == (4, 2)

    def test_acc_mean_used_when_per_model_list_is_missing(self, tmp_path: Path) -> None:
        """A row with only ``acc_mean`` contributes one accuracy."""
        write_all(tmp_path / "r", [row(accs=[], acc_mean=0.9, acc_per_model=None)])
        cell = table_for(build(tmp_path / "r", tmp_path / "out")).cell("dm", 1)
        assert (cell.mean, cell.std, cell.n) == (pytest.approx(90.0), 0.0, 1)

    def test_csv_has_one_line_per_configuration_and_ipc(self, tmp_path: Path) -> None:
        """leaderboard.csv lists mean and std in percent, n and n_seeds for every cell."""
        write_all(tmp_path / "r", basic_rows())
        result = build(tmp_path / "r", tmp_path / "out")
        lines = list(csv.DictReader(result.csv_path.open()))
        assert len(lines) == 7  # 6 quick-v1 cells + 1 convnet-v1 cell
        dm1 = next(r for r in lines if r["method"] == "dm[iterations=200]" and r["ipc"] == "1")
        pooled = [80, 82, 81, 79, 83, 84]
        assert float(dm1["mean"]) == pytest.approx(statistics.fmean(pooled), abs=1e-4)
        assert float(dm1["std"]) == pytest.approx(statistics.pstdev(pooled), abs=1e-4)
        assert (dm1["n"], dm1["n_seeds"], dm1["protocol_version"]) == ("6", "2", "1")
        herding = next(r for r in lines if r["method"] == "herding")
        assert (herding["weighting"], herding["labels"]) == ("kde", "teacher")


class TestBestInBold:
    def test_best_mean_per_ipc_column_is_bold(self, tmp_path: Path) -> None:
        """Each IPC column bolds its own best mean."""
        write_all(
            tmp_path / "r",
            [
                row(method="a", ipc=1, accs=[0.9]),
                row(method="b", ipc=1, accs=[0.8]),
                row(method="a", ipc=10, accs=[0.5]),
                row(method="b", ipc=10, accs=[0.6]),
            ],
        )
        table = table_for(build(tmp_path / "r", tmp_path / "out"))
        assert table.cell("a", 1).best and not table.cell("b", 1).best
        assert table.cell("b", 10).best and not table.cell("a", 10).best

    def test_ties_are_all_bold(self, tmp_path: Path) -> None:
        """Equal means at the shown precision are all bold."""
        write_all(
            tmp_path / "r",
            [row(method="a", accs=[0.9]), row(method="b", accs=[0.89999]), row(method="c", accs=[0.5])],
        )
        result = build(tmp_path / "r", tmp_path / "out")
        table = table_for(result)
        assert [table.cell(m, 1).best for m in "abc"] == [True, True, False]
        assert result.markdown_path.read_text().count("**90.00 ±") == 2


class TestLayout:
    def test_ipc_columns_sorted_numerically_and_methods_naturally(self, tmp_path: Path) -> None:
        """IPC 2 comes before IPC 10, and dm2 before dm10."""
        write_all(
            tmp_path / "r",
            [row(method=m, ipc=i) for m in ("dm10", "dm2", "Random") for i in (10, 2, 1)],
        )
        result = build(tmp_path / "r", tmp_path / "out")
        table = table_for(result)
        assert table.ipcs == (1, 2, 10)
        assert [r.label for r in table.rows] == ["dm2", "dm10", "Random"]
        assert "| Method | IPC 1 | IPC 2 | IPC 10 |" in result.markdown_path.read_text()

    def test_missing_cell_is_an_en_dash(self, tmp_path: Path) -> None:
        """A configuration without a result at some IPC shows an en dash."""
        write_all(tmp_path / "r", [row(method="a", ipc=1), row(method="b", ipc=10)])
        text = build(tmp_path / "r", tmp_path / "out").markdown_path.read_text()
        assert "| a | **60.00 ± 8.16 (n=3, seeds=1)** | – |" in text

    def test_row_label_names_weighting_and_labels(self, tmp_path: Path) -> None:
        """Rows are ``method + weighting / labels=<labels>``; none and native are omitted."""
        write_all(
            tmp_path / "r",
            [
                row(method="dm"),
                row(method="dm", weighting="kde"),
                row(method="dm", labels="teacher"),
                row(method="dm", weighting="kde", labels="teacher"),
            ],
        )
        labels = [r.label for r in table_for(build(tmp_path / "r", tmp_path / "out")).rows]
        assert labels == ["dm", "dm / labels=teacher", "dm + kde", "dm + kde / labels=teacher"]

    def test_one_table_per_dataset_protocol_version_and_network(self, tmp_path: Path) -> None:
        """Rows of different protocol versions or eval networks are never compared in one table."""
        write_all(
            tmp_path / "r",
            [
                row(),
                row(protocol_version=2),
                row(eval_network="mlp"),
                row(dataset="digits[imbalance=10.0]"),
            ],
        )
        result = build(tmp_path / "r", tmp_path / "out")
        keys = [(t.dataset, t.protocol_id, t.eval_network) for t in result.tables]
        assert keys == [
            ("digits", "quick-v1@1", "convnet"),
            ("digits", "quick-v1@1", "mlp"),
            ("digits", "quick-v1@2", "convnet"),
            ("digits[imbalance=10.0]", "quick-v1@1", "convnet"),
        ]
        text = result.markdown_path.read_text()
        assert "## Dataset digits, protocol quick-v1@2, eval network convnet" in text


class TestFailures:
    def test_failures_are_left_out_of_tables_counted_and_listed(self, tmp_path: Path) -> None:
        """Rows with status error / diverged appear only under Failures, with the first error line."""
        write_all(
            tmp_path / "r",
            [
                row(seed=0, accs=[0.9]),
                row(seed=1, status="error", error="\nValueError: bad lr\nTraceback ..."),
                row(seed=2, status="diverged", error="loss is nan"),
            ],
        )
        result = build(tmp_path / "r", tmp_path / "out")
        assert (result.n_rows, result.n_ok) == (3, 1)
        assert [(f["status"], f["seed"], f["error"]) for f in result.failures] == [
            ("error", 1, "ValueError: bad lr"),
            ("diverged", 2, "loss is nan"),
        ]
        assert table_for(result).cell("dm", 1).n_seeds == 1
        text = result.markdown_path.read_text()
        assert "## Failures (2)" in text
        assert "- **error** digits, dm, ipc 1, seed 1, quick-v1@1: `ValueError: bad lr`" in text
        assert "Traceback" not in text

    def test_ok_row_without_accuracy_is_listed_as_a_failure(self, tmp_path: Path) -> None:
        """A row marked ok but holding no accuracy cannot be pooled, so it is listed, not dropped silently."""
        write_all(tmp_path / "r", [row(accs=[], acc_per_model=None), row(seed=1)])
        result = build(tmp_path / "r", tmp_path / "out")
        assert result.n_ok == 1
        assert [(f["status"], f["seed"]) for f in result.failures] == [("ok", 0)]
        assert "holds no accuracy" in result.failures[0]["error"]

    def test_only_failures_still_writes_failure_section(self, tmp_path: Path) -> None:
        """With no ok row the Markdown says so and still lists the failures."""
        write_all(tmp_path / "r", [row(status="error", error="boom")])
        result = build(tmp_path / "r", tmp_path / "out")
        text = result.markdown_path.read_text()
        assert result.tables == []
        assert "No results to show." in text
        assert "## Failures (1)" in text


class TestFilters:
    @pytest.mark.parametrize(
        ("filters", "expected"),
        [
            ({"grid": "g1"}, {"a"}),
            ({"grid": "g*"}, {"a", "b"}),
            ({"dataset": "digits"}, {"a", "c"}),
            ({"dataset": "digits[imbalance=10.0]"}, {"b"}),
            ({"dataset": "digits*"}, {"a", "b", "c"}),
            ({"protocol": "convnet-v1"}, {"c"}),
            ({"protocol": "quick-v1@1"}, {"a", "b"}),
            ({"protocol": "*-v1", "grid": "g2"}, {"b"}),
        ],
    )
    def test_filters_select_rows(self, tmp_path: Path, filters: dict[str, str], expected: set[str]) -> None:
        """grid, dataset and protocol filters take exact names or fnmatch patterns."""
        write_all(
            tmp_path / "r",
            [
                row(method="a", grid="g1"),
                row(method="b", grid="g2", dataset="digits[imbalance=10.0]"),
                row(method="c", grid="other", protocol="convnet-v1"),
            ],
        )
        result = build(tmp_path / "r", tmp_path / "out", **filters)
        assert {r.method for t in result.tables for r in t.rows} == expected

    def test_filter_matching_nothing_says_so(self, tmp_path: Path) -> None:
        """A filter without matches gives a Markdown naming the filter and saying nothing matched."""
        write_all(tmp_path / "r", [row()])
        text = build(tmp_path / "r", tmp_path / "out", grid="nope").markdown_path.read_text()
        assert "Filters: grid=`nope`." in text
        assert "No results match the filters." in text


class TestDeterminism:
    def test_identical_across_write_order_and_directory_order(self, tmp_path: Path) -> None:
        """Same rows, written in other orders and split over two directories in either order: same bytes."""
        rows = basic_rows()
        write_all(tmp_path / "one", rows)
        write_all(tmp_path / "rev", list(reversed(rows)))
        write_all(tmp_path / "a", rows[::2])
        write_all(tmp_path / "b", rows[1::2])
        outputs = [
            build(tmp_path / "one", tmp_path / "o1"),
            build(tmp_path / "rev", tmp_path / "o2"),
            build([tmp_path / "a", tmp_path / "b"], tmp_path / "o3"),
            build([tmp_path / "b", tmp_path / "a"], tmp_path / "o4"),
        ]
        markdowns = {r.markdown_path.read_bytes() for r in outputs}
        csvs = {r.csv_path.read_bytes() for r in outputs}
        assert len(markdowns) == 1 and len(csvs) == 1

    def test_golden_file(self, tmp_path: Path) -> None:
        """The Markdown of the basic rows equals tests/golden/leaderboard_basic.md byte for byte."""
        write_all(tmp_path / "r", basic_rows())
        text = build(tmp_path / "r", tmp_path / "out").markdown_path.read_text(encoding="utf-8")
        assert text == (GOLDEN / "leaderboard_basic.md").read_text(encoding="utf-8")

    def test_trial_in_two_directories_counts_once(self, tmp_path: Path) -> None:
        """A trial copied into two results directories is pooled once, and an ok copy beats an error."""
        write_all(tmp_path / "a", [row(seed=0), row(seed=1, status="error", error="oom")])
        write_all(tmp_path / "b", [row(seed=0), row(seed=1)])
        result = build([tmp_path / "a", tmp_path / "b"], tmp_path / "out")
        cell = table_for(result).cell("dm", 1)
        assert (cell.n, cell.n_seeds, result.n_rows, result.n_ok) == (6, 2, 4, 2)
        assert result.failures == []


class TestRobustness:
    def test_corrupt_parquet_is_skipped_and_reported(self, tmp_path: Path) -> None:
        """Garbage in rows/x.parquet is reported in skipped_files and the other rows still count."""
        write_all(tmp_path / "r", [row()])
        (tmp_path / "r" / "rows" / "x.parquet").write_bytes(b"this is not parquet")
        result = build(tmp_path / "r", tmp_path / "out")
        assert [Path(p).name for p, _ in result.skipped_files] == ["x.parquet"]
        assert "Parquet" in result.skipped_files[0][1]
        assert result.n_ok == 1
        assert "Skipped 1 unreadable or foreign file(s): `x.parquet`." in result.markdown_path.read_text()

    def test_empty_results_write_a_no_results_markdown(self, tmp_path: Path) -> None:
        """An empty results directory gives a Markdown saying there are no results, and a header-only CSV."""
        (tmp_path / "r").mkdir()
        result = build(tmp_path / "r", tmp_path / "out" / "nested")
        assert (result.n_rows, result.n_ok, result.tables, result.failures) == (0, 0, [], [])
        assert "No results to show." in result.markdown_path.read_text()
        assert result.csv_path.read_text().count("\n") == 1

    def test_out_dir_that_is_a_file_is_a_user_error(self, tmp_path: Path) -> None:
        """An existing file as output directory raises DistillBenchError with one line."""
        (tmp_path / "r").mkdir()
        (tmp_path / "out").write_text("x")
        with pytest.raises(DistillBenchError, match="is an existing file") as info:
            build(tmp_path / "r", tmp_path / "out")
        assert "\n" not in str(info.value)

    def test_missing_results_dir_is_a_user_error(self, tmp_path: Path) -> None:
        """A results path that does not exist is named in a DistillBenchError, not an empty leaderboard."""
        with pytest.raises(DistillBenchError, match="does not exist"):
            build(tmp_path / "typo", tmp_path / "out")

    def test_no_temporary_files_left_behind(self, tmp_path: Path) -> None:
        """Atomic writes leave only the three output files."""
        write_all(tmp_path / "r", [row()])
        build(tmp_path / "r", tmp_path / "out")
        build(tmp_path / "r", tmp_path / "out")
        assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
            "index.html",
            "leaderboard.csv",
            "leaderboard.md",
        ]

    def test_leaderboard_imports_neither_torch_nor_ray(self) -> None:
        """Building a leaderboard must stay light: no torch or ray import."""
        code = (
            "import sys, distillbench.leaderboard.build, distillbench.leaderboard.html\n"
            "assert 'torch' not in sys.modules and 'ray' not in sys.modules, sorted(sys.modules)"
        )
        subprocess.run([sys.executable, "-c", code], check=True)


class TestQuickProtocolNote:
    def test_quick_protocol_table_carries_the_note(self, tmp_path: Path) -> None:
        """A quick-v1 table says it is a demo/CI recipe; a convnet-v1 table does not."""
        write_all(tmp_path / "r", [row(protocol="quick-v1"), row(protocol="convnet-v1")])
        result = build(tmp_path / "r", tmp_path / "out")
        assert {t.protocol: t.quick for t in result.tables} == {"quick-v1": True, "convnet-v1": False}
        text = result.markdown_path.read_text()
        assert text.count("not comparable to papers") == 1
        quick_section = text.split("## Dataset digits, protocol quick-v1@1")[1]
        assert "short demo/CI recipe" in quick_section

    def test_unknown_protocol_is_not_quick_and_does_not_crash(self, tmp_path: Path) -> None:
        """Rows of a protocol no longer installed still get a table, without the quick note."""
        write_all(tmp_path / "r", [row(protocol="gone-plugin-v3", protocol_version=3)])
        result = build(tmp_path / "r", tmp_path / "out")
        assert [(t.protocol_id, t.quick) for t in result.tables] == [("gone-plugin-v3@3", False)]
        assert "not comparable to papers" not in result.markdown_path.read_text()


# ------------------------------------------------------------------------------------- issue 8 fixtures
def realistic_rows() -> list[dict[str, Any]]:
    """Several datasets, methods, IPCs and seeds; one failure; one biased and one long-tailed dataset.

    Accuracies are deterministic pseudo-random numbers around a per-method level, so the tables have
    clear winners, ties within noise, and 1-seed cells.
    """
    rng = random.Random(8)
    rows: list[dict[str, Any]] = []

    def accs(level: float, k: int, spread: float = 0.01) -> list[float]:
        return [round(min(0.999, max(0.0, rng.gauss(level, spread))), 4) for _ in range(k)]

    common = {"package_version": "0.1.0", "git_sha": "c220961", "torch_version": "2.14.1", "python_version": "3.11.9"}
    levels = {"random": (0.55, 0.85, 0.93), "herding": (0.62, 0.87, 0.93), "dm[iterations=200]": (0.70, 0.90, 0.94)}
    for method, by_ipc in levels.items():
        for ipc, level in zip((1, 10, 50), by_ipc, strict=True):
            for seed in range(3):
                rows.append(
                    row(
                        method=method,
                        ipc=ipc,
                        seed=seed,
                        accs=accs(level, 3),
                        device="cpu",
                        set_bytes=512 * ipc * 10,
                        distill_seconds=3.0 * ipc,
                        eval_seconds=20.0,
                        **common,
                    )
                )
    mnist = {"dc": (0.917, 0.972), "dsa": (0.887, 0.976), "dm": (0.897, 0.975)}
    for method, by_ipc in mnist.items():
        for ipc, level in zip((1, 10), by_ipc, strict=True):
            for seed in range(2):
                rows.append(
                    row(
                        dataset="mnist",
                        protocol="convnet-v1",
                        method=method,
                        ipc=ipc,
                        seed=seed,
                        accs=accs(level, 5, 0.004),
                        device="cuda:0 (NVIDIA H100 80GB HBM3)",
                        set_bytes=3136 * ipc * 10,
                        distill_seconds=900.0 * ipc,
                        eval_seconds=2400.0,
                        **common,
                    )
                )
    for method, weighting, level, conflicting in (("dm", "none", 0.25, 0.17), ("dm", "kde", 0.88, 0.86)):
        for ipc in (10, 50):
            for seed in range(2):
                rows.append(
                    row(
                        dataset="colored_mnist[conflict=0.05]",
                        protocol="convnet-v1",
                        method=method,
                        weighting=weighting,
                        ipc=ipc,
                        seed=seed,
                        accs=accs(level, 3),
                        acc_aligned=0.99,
                        acc_conflicting=conflicting,
                        acc_worst_group=conflicting - 0.05,
                        device="cpu",
                        distill_seconds=600.0,
                        eval_seconds=900.0,
                        **common,
                    )
                )
    for labels, level in (("native", 0.40), ("teacher", 0.46)):
        for seed in range(2):
            rows.append(
                row(
                    dataset="cifar10[imbalance=100.0]",
                    protocol="convnet-v1",
                    method="dm",
                    labels=labels,
                    ipc=10,
                    seed=seed,
                    accs=accs(level, 3),
                    acc_many=level + 0.2,
                    acc_medium=level,
                    acc_few=level - 0.25,
                    device="cpu",
                    **common,
                )
            )
    rows.append(row(method="herding", ipc=50, seed=3, status="error", error="RuntimeError: CUDA out of memory"))
    return rows


def seeds(method: str, seed_accs: list[list[float]], **extra: Any) -> list[dict[str, Any]]:
    """One row per seed, with the given per-model accuracies."""
    return [row(method=method, seed=s, accs=a, **extra) for s, a in enumerate(seed_accs)]


REPORTED_YAML = """
sources:
  T: Test source, a table.
numbers:
  - {dataset: digits, method: dm, ipc: 1, protocol: convnet-v1@1, eval_network: convnet, value: 50.0, std: 1.5,
     source: T, verification: primary}
  - {dataset: digits, method: random, ipc: 1, protocol: convnet-v1@1, eval_network: convnet, value: 40.0,
     source: T, verification: unverified, note: mapping assumed}
  - {dataset: digits, method: dm, ipc: 1, protocol: quick-v1@1, eval_network: convnet, value: 10.0,
     source: T, verification: primary}
  - {dataset: digits, method: herding, ipc: 1, protocol: null, eval_network: convnet, value: 10.0,
     source: T, verification: secondary}
"""


class TestSignificance:
    def test_welch_p_over_seed_means_matches_hand_computation(self, tmp_path: Path) -> None:
        """Seed means 90/92/94 vs 86/88/90: t^2 = 6, df = 4, p = 1 - x (1 + (1 - x^2) / 2) = 0.0705, x^2 = 0.6.

        For 4 degrees of freedom P(|T| < t) = x (1 + (1 - x^2) / 2) with x^2 = t^2 / (4 + t^2).
        """
        best = seeds("a", [[0.89, 0.91], [0.91, 0.93], [0.93, 0.95]])  # two models per seed: means 90, 92, 94
        close = seeds("b", [[0.86], [0.88], [0.90]])
        write_all(tmp_path / "r", best + close)
        result = build(tmp_path / "r", tmp_path / "out")
        cell = table_for(result).cell("b", 1)
        assert table_for(result).cell("a", 1).seed_means == pytest.approx((90.0, 92.0, 94.0))
        assert cell.p_value == pytest.approx(1 - 1.2 * math.sqrt(0.6), rel=1e-9)
        assert cell.not_worse
        text = result.markdown_path.read_text()
        assert "| b | 88.00 ± 1.63 (n=3, seeds=3) † |" in text
        assert "† not significantly worse than the best of its IPC column: two-sided Welch t-test over seed" in text

    def test_significantly_worse_cell_is_not_marked(self, tmp_path: Path) -> None:
        """Seed means 80/82/84 vs 90/92/94: t^2 = 37.5, df = 4, x^2 = t^2 / (4 + t^2), p = 0.0036 -> no mark."""
        write_all(tmp_path / "r", seeds("a", [[0.90], [0.92], [0.94]]) + seeds("b", [[0.80], [0.82], [0.84]]))
        result = build(tmp_path / "r", tmp_path / "out")
        cell = table_for(result).cell("b", 1)
        x = math.sqrt(37.5 / 41.5)
        assert cell.p_value == pytest.approx(1 - x * (1 + (1 - x * x) / 2), rel=1e-9)
        assert not cell.not_worse
        assert "| b | 82.00 ± 1.63 (n=3, seeds=3) |" in result.markdown_path.read_text()

    def test_single_seed_cell_is_not_tested_and_says_so(self, tmp_path: Path) -> None:
        """A configuration with one seed gets no test and no mark, and the note under the table names it."""
        write_all(tmp_path / "r", seeds("a", [[0.90], [0.92]]) + seeds("b", [[0.91, 0.5]]))
        result = build(tmp_path / "r", tmp_path / "out")
        cell = table_for(result).cell("b", 1)
        assert (cell.p_value, cell.not_worse) == (None, False)
        assert (
            "No test possible (a test needs 2 seeds on both sides), so no mark: IPC 1: fewer than 2 seeds for b."
            in (result.markdown_path.read_text())
        )

    def test_single_seed_best_means_no_test_in_the_column(self, tmp_path: Path) -> None:
        """When the best has one seed, nothing in its column is tested."""
        write_all(tmp_path / "r", seeds("a", [[0.95]]) + seeds("b", [[0.90], [0.91]]))
        result = build(tmp_path / "r", tmp_path / "out")
        assert table_for(result).cell("b", 1).p_value is None
        assert "IPC 1: the best (a) has 1 seed." in result.markdown_path.read_text()

    def test_constant_equal_samples_count_as_not_worse(self) -> None:
        """Zero-variance samples: equal means give p = 1, different means p = 0 (scipy would give nan / 0)."""
        assert welch_p([90.0, 90.0], [90.0, 90.0]) == 1.0
        assert welch_p([80.0, 80.0], [90.0, 90.0]) == 0.0
        assert welch_p([80.0], [90.0, 91.0]) is None

    def test_single_configuration_has_no_legend(self, tmp_path: Path) -> None:
        """A table where no column compares two configurations does not print the † legend."""
        write_all(tmp_path / "r", seeds("a", [[0.9], [0.8]]))
        assert "† not significantly worse" not in build(tmp_path / "r", tmp_path / "out").markdown_path.read_text()


class TestReported:
    def reported(self, tmp_path: Path) -> Path:
        path = tmp_path / "reported.yaml"
        path.write_text(REPORTED_YAML)
        return path

    def test_reported_number_and_difference_shown_for_its_protocol(self, tmp_path: Path) -> None:
        """A convnet-v1 cell with a published number shows it, its source and reproduced - reported."""
        write_all(tmp_path / "r", [row(method="dm", protocol="convnet-v1", accs=[0.52, 0.53])])
        result = build(tmp_path / "r", tmp_path / "out", reported=self.reported(tmp_path))
        cell = table_for(result, "convnet-v1").cell("dm", 1)
        assert cell.reported is not None and cell.reported.value == 50.0
        assert cell.diff == pytest.approx(2.5)
        text = result.markdown_path.read_text()
        assert "<br>reported 50 ± 1.5 [T], diff +2.50 |" in text
        assert "- **[T]** Test source, a table." in text

    def test_quick_protocol_never_gets_reported_numbers(self, tmp_path: Path) -> None:
        """Even an entry naming quick-v1@1 is not attached to a quick table."""
        write_all(tmp_path / "r", [row(method="dm", protocol="quick-v1")])
        result = build(tmp_path / "r", tmp_path / "out", reported=self.reported(tmp_path))
        assert table_for(result).cell("dm", 1).reported is None
        assert "reported" not in result.markdown_path.read_text().split("## Dataset")[1]

    @pytest.mark.parametrize(
        "changes",
        [
            {"method": "dm[iterations=200]"},
            {"protocol_version": 2},
            {"eval_network": "mlp"},
            {"dataset": "digits[imbalance=10.0]"},
            {"weighting": "kde"},
            {"labels": "teacher"},
            {"ipc": 10},
            {"method": "herding"},  # its entry has protocol null: listed, never attached
        ],
    )
    def test_no_number_when_any_identity_field_differs(self, tmp_path: Path, changes: dict[str, Any]) -> None:
        """Method parameters, protocol version, network, dataset, weighting, labels and IPC must all match."""
        values = {"method": "dm", "protocol": "convnet-v1", **changes}
        write_all(tmp_path / "r", [row(**values)])
        result = build(tmp_path / "r", tmp_path / "out", reported=self.reported(tmp_path))
        assert all(c.reported is None for t in result.tables for r in t.rows for c in r.cells.values())

    def test_unverified_number_is_flagged(self, tmp_path: Path) -> None:
        """An unverified entry says UNVERIFIED in the cell and its note is listed with the sources."""
        write_all(tmp_path / "r", [row(method="random", protocol="convnet-v1", accs=[0.41])])
        text = build(tmp_path / "r", tmp_path / "out", reported=self.reported(tmp_path)).markdown_path.read_text()
        assert "<br>reported 40 UNVERIFIED [T], diff +1.00 |" in text
        assert "- digits, random, IPC 1: UNVERIFIED; mapping assumed" in text

    def test_packaged_numbers_attach_to_convnet_v1(self, tmp_path: Path) -> None:
        """The shipped reported.yaml gives DC on MNIST at IPC 10 the readme's 97.4."""
        write_all(tmp_path / "r", [row(dataset="mnist", method="dc", ipc=10, protocol="convnet-v1", accs=[0.97])])
        text = build(tmp_path / "r", tmp_path / "out").markdown_path.read_text()
        assert "<br>reported 97.4 [DC-readme], diff -0.40 |" in text
        assert "VICO-UoE/DatasetCondensation official repository" in text

    def test_malformed_yaml_is_a_one_line_data_error(self, tmp_path: Path) -> None:
        """An entry without a source is refused, naming the file and the entry."""
        path = tmp_path / "bad.yaml"
        path.write_text("sources: {}\nnumbers:\n  - {dataset: digits, method: dm, ipc: 1}\n")
        with pytest.raises(DataError, match=r"entry 0: missing keys \['protocol', 'eval_network'") as info:
            load_reported(path)
        assert "\n" not in str(info.value)

    def test_packaged_yaml_is_valid_and_uses_canonical_names(self) -> None:
        """Every shipped entry loads, and registered method / dataset names are in canonical display form."""
        from distillbench.harness.errors import UnknownNameError
        from distillbench.harness.plugins import DATASETS, METHODS

        numbers = load_reported()
        assert len(numbers) > 40
        assert {n.verification for n in numbers} == {"primary", "secondary", "unverified"}
        for number in numbers:
            for registry, name in ((METHODS, number.method), (DATASETS, number.dataset)):
                # A plugin that does not exist yet (colored_mnist, sre2l) is skipped: kept for when it does.
                with contextlib.suppress(UnknownNameError):
                    assert registry.resolve(name).display == name
            assert number.protocol is None or not number.protocol.startswith("quick")


class TestMetricTables:
    def test_bias_table_only_for_rows_with_bias_columns(self, tmp_path: Path) -> None:
        """Aligned / conflicting / worst-group means over seeds appear for the biased dataset only."""
        bias = {"acc_aligned": 0.99, "acc_conflicting": 0.2, "acc_worst_group": 0.1}
        write_all(
            tmp_path / "r",
            [row(dataset="cmnist", seed=s, **bias) for s in range(2)] + [row(dataset="digits")],
        )
        text = build(tmp_path / "r", tmp_path / "out").markdown_path.read_text()
        assert text.count("### Bias:") == 1
        assert "### Bias: cmnist, quick-v1@1, convnet" in text
        assert "| dm | 1 | 60.00 ± 8.16 | 99.00 ± 0.00 (n=2) | 20.00 ± 0.00 (n=2) | 10.00 ± 0.00 (n=2) |" in text
        assert "### Long tail" not in text

    def test_long_tail_table_only_for_rows_with_long_tail_columns(self, tmp_path: Path) -> None:
        """Many / medium / few appear for the long-tailed dataset only, with their CSV columns."""
        write_all(
            tmp_path / "r",
            [row(dataset="lt", acc_many=0.8, acc_medium=0.5, acc_few=0.2), row(dataset="digits")],
        )
        result = build(tmp_path / "r", tmp_path / "out")
        text = result.markdown_path.read_text()
        assert text.count("### Long tail:") == 1 and "### Bias" not in text
        assert "| dm | 1 | 60.00 ± 8.16 | 80.00 ± 0.00 (n=1) | 50.00 ± 0.00 (n=1) | 20.00 ± 0.00 (n=1) |" in text
        lines = {r["dataset"]: r for r in csv.DictReader(result.csv_path.open())}
        assert (lines["lt"]["acc_many"], lines["lt"]["acc_few"], lines["digits"]["acc_many"]) == (
            "80.0000",
            "20.0000",
            "",
        )

    def test_adsa_tau_shown_beside_the_shot_accuracies(self, tmp_path: Path) -> None:
        """Rows of the adsa label stage carry tau: the long-tail table and the CSV show it, other rows a dash."""
        write_all(
            tmp_path / "r",
            [
                row(dataset="lt", labels="adsa", acc_many=0.7, acc_medium=0.5, acc_few=0.4, label_tau=0.85),
                row(dataset="lt", acc_many=0.8, acc_medium=0.5, acc_few=0.2),
            ],
        )
        result = build(tmp_path / "r", tmp_path / "out")
        text = result.markdown_path.read_text()
        assert "| Method | IPC | Overall | Many | Medium | Few | \u03c4 (adsa) |" in text
        assert "| dm / labels=adsa | 1 | " in text and "| 0.85 |" in text
        assert "| 20.00 ± 0.00 (n=1) | \u2013 |" in text, "the native row has no tau"
        taus = {r["labels"]: r["label_tau"] for r in csv.DictReader(result.csv_path.open())}
        assert taus == {"adsa": "0.8500", "native": ""}


class TestCost:
    def test_hours_by_device_and_set_size(self, tmp_path: Path) -> None:
        """Distillation and evaluation hours are summed per device; set sizes are shown in KiB."""
        write_all(
            tmp_path / "r",
            [
                row(seed=0, device="cpu", distill_seconds=3600.0, eval_seconds=1800.0, set_bytes=2048),
                row(seed=1, device="cpu", distill_seconds=3600.0, eval_seconds=1800.0, set_bytes=2048),
                row(seed=2, device="cuda:0 (H100)", distill_seconds=36.0, eval_seconds=72.0, set_bytes=2048),
            ],
        )
        result = build(tmp_path / "r", tmp_path / "out")
        assert [(c.device, c.trials, c.distill_hours, c.eval_hours) for c in result.cost] == [
            ("cpu", 2, 2.0, 1.0),
            ("cuda:0 (H100)", 1, 0.01, 0.02),
        ]
        text = result.markdown_path.read_text()
        assert "| digits | quick-v1@1 | dm | 1 | cpu | 2 | 2.0000 | 1.0000 | 2.0 KiB |" in text
        assert "| digits | quick-v1@1 | dm | 1 | cuda:0 (H100) | 1 | 0.0100 | 0.0200 | 2.0 KiB |" in text

    def test_distillation_counted_once_per_trial_across_eval_networks(self, tmp_path: Path) -> None:
        """A cross-architecture trial has one row per network; both are kept, its distillation counts once."""
        base = row(distill_seconds=3600.0, eval_seconds=360.0, device="cpu")
        other = {**base, "eval_network": "mlp", "acc_per_model": [0.3]}
        write_rows(tmp_path / "r", [base, other])
        result = build(tmp_path / "r", tmp_path / "out")
        assert [t.eval_network for t in result.tables] == ["convnet", "mlp"]
        assert [(c.trials, c.distill_hours, c.eval_hours) for c in result.cost] == [(1, 1.0, 0.2)]


class TestOutputs:
    def test_csv_columns(self, tmp_path: Path) -> None:
        """leaderboard.csv has the identity, statistics, test, metric, cost and reported columns."""
        write_all(tmp_path / "r", basic_rows())
        header = build(tmp_path / "r", tmp_path / "out").csv_path.read_text().splitlines()[0].split(",")
        assert header == [
            "dataset", "protocol", "protocol_version", "eval_network", "quick", "method", "weighting", "labels",
            "ipc", "mean", "std", "n", "n_seeds", "best", "p_vs_best", "not_significantly_worse",
            "acc_aligned", "acc_conflicting", "acc_worst_group", "acc_many", "acc_medium", "acc_few", "label_tau",
            "distill_hours", "eval_hours", "set_bytes_mean",
            "reported", "reported_std", "reported_diff", "reported_source", "reported_verification",
        ]  # fmt: skip

    def test_html_is_self_contained(self, tmp_path: Path) -> None:
        """index.html has inline CSS, JS and SVG, and references no external resource."""
        write_all(tmp_path / "r", realistic_rows())
        page = build(tmp_path / "r", tmp_path / "out").html_path.read_text()
        assert "http://" not in page and "https://" not in page
        assert re.search(r"\b(src|href)\s*=", page) is None
        assert "<link" not in page and "@import" not in page and "url(" not in page
        assert page.count("<svg") == 4 and "<style>" in page and "<script>" in page
        assert 'id="filter-dataset"' in page and 'id="filter-protocol"' in page

    def test_generation_time_only_in_html(self, tmp_path: Path) -> None:
        """The generation time goes to index.html; the Markdown stays byte-identical."""
        write_all(tmp_path / "r", basic_rows())
        first = build(tmp_path / "r", tmp_path / "a", generated_at="2030-01-01T00:00:00+00:00")
        second = build(tmp_path / "r", tmp_path / "b", generated_at="2031-02-02T00:00:00+00:00")
        assert "2030-01-01T00:00:00+00:00" in first.html_path.read_text()
        assert first.markdown_path.read_bytes() == second.markdown_path.read_bytes()
        assert "2030" not in first.markdown_path.read_text()

    def test_provenance_lists_versions_and_protocols_of_the_rows(self, tmp_path: Path) -> None:
        """The Markdown footer names the package, git sha and torch versions found, and the protocol ids."""
        write_all(
            tmp_path / "r",
            [
                row(seed=0, package_version="0.1.0", git_sha="abc1234", torch_version="2.14.1"),
                row(seed=1, package_version="0.2.0", git_sha="def5678-dirty", torch_version="2.14.1"),
                row(seed=2, protocol="convnet-v1"),
            ],
        )
        text = build(tmp_path / "r", tmp_path / "out").markdown_path.read_text()
        provenance = text.split("## Provenance")[1]
        assert "- distillbench: `0.1.0`, `0.2.0`, not recorded" in provenance
        assert "- git sha: `abc1234`, `def5678-dirty`, not recorded" in provenance
        assert "- protocols: `convnet-v1@1`, `quick-v1@1` (quick)" in provenance

    def test_realistic_rows_are_byte_identical_in_any_order(self, tmp_path: Path) -> None:
        """The full-featured Markdown and CSV do not depend on the order rows were written."""
        rows = realistic_rows()
        write_all(tmp_path / "a", rows)
        write_all(tmp_path / "b", list(reversed(rows)))
        one, two = build(tmp_path / "a", tmp_path / "o1"), build(tmp_path / "b", tmp_path / "o2")
        assert one.markdown_path.read_bytes() == two.markdown_path.read_bytes()
        assert one.csv_path.read_bytes() == two.csv_path.read_bytes()


class TestCli:
    def test_open_calls_webbrowser_with_the_file_url(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        """``leaderboard --open`` builds the page and opens its file:// URL."""
        opened: list[str] = []
        monkeypatch.setattr(webbrowser, "open", lambda url, *a, **k: opened.append(url) or True)
        write_all(tmp_path / "r", [row()])
        assert cli_main(["leaderboard", str(tmp_path / "r"), "--out", str(tmp_path / "out"), "--open"]) == 0
        assert opened == [(tmp_path / "out" / "index.html").resolve().as_uri()]

    def test_without_open_no_browser(self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        """Without --open the browser is left alone, and all three files are written."""
        monkeypatch.setattr(webbrowser, "open", lambda *a, **k: pytest.fail("webbrowser.open called"))
        write_all(tmp_path / "r", [row()])
        assert cli_main(["leaderboard", str(tmp_path / "r"), "--out", str(tmp_path / "out")]) == 0
        assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
            "index.html",
            "leaderboard.csv",
            "leaderboard.md",
        ]

    def test_newer_schema_row_exits_2_with_one_line(self, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
        """A row written by a newer distillbench is refused: exit status 2 and a one-line error."""
        write_all(tmp_path / "r", [row()])
        newer = make_row(row(seed=9))
        newer["schema_version"] = SCHEMA_VERSION + 1
        pq.write_table(pa.Table.from_pylist([newer], schema=SCHEMA), tmp_path / "r" / "rows" / "newer.parquet")
        assert cli_main(["leaderboard", str(tmp_path / "r"), "--out", str(tmp_path / "out")]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1
        assert err.startswith("error: ") and "newer.parquet: row schema version 2 is newer than" in err
        assert "upgrade distillbench" in err

    def test_filters_pass_through(self, tmp_path: Path) -> None:
        """--dataset and --protocol reach the build."""
        write_all(tmp_path / "r", [row(), row(dataset="mnist", protocol="convnet-v1")])
        out = tmp_path / "out"
        assert cli_main(["leaderboard", str(tmp_path / "r"), "--out", str(out), "--dataset", "mnist"]) == 0
        assert "Filters: dataset=`mnist`." in (out / "leaderboard.md").read_text()
        assert "## Dataset digits" not in (out / "leaderboard.md").read_text()

    def test_reported_flag_takes_a_yaml_file(self, tmp_path: Path) -> None:
        """--reported replaces the packaged numbers."""
        (tmp_path / "numbers.yaml").write_text(REPORTED_YAML)
        write_all(tmp_path / "r", [row(method="dm", protocol="convnet-v1", accs=[0.52])])
        out = tmp_path / "out"
        argv = ["leaderboard", str(tmp_path / "r"), "--out", str(out), "--reported", str(tmp_path / "numbers.yaml")]
        assert cli_main(argv) == 0
        assert "<br>reported 50 ± 1.5 [T], diff +2.00 |" in (out / "leaderboard.md").read_text()
