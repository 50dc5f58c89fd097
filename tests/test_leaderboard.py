"""Tests of the leaderboard build: pooling, bold, failures, filters, determinism and robustness."""

from __future__ import annotations

import csv
import hashlib
import json
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from distillbench.harness.errors import DistillBenchError
from distillbench.harness.store import write_row
from distillbench.leaderboard import LeaderboardResult, build_leaderboard

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
        """Atomic writes leave only the two output files."""
        write_all(tmp_path / "r", [row()])
        build(tmp_path / "r", tmp_path / "out")
        build(tmp_path / "r", tmp_path / "out")
        assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["leaderboard.csv", "leaderboard.md"]

    def test_leaderboard_imports_neither_torch_nor_ray(self) -> None:
        """Building a leaderboard must stay light: no torch or ray import."""
        code = (
            "import sys, distillbench.leaderboard.build\n"
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
