from __future__ import annotations

import datetime as dt
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from distillbench.harness import store
from distillbench.harness.errors import DataError, DistillBenchError
from distillbench.harness.types import DistilledSet


def row(trial_id="t1", **values):
    return {"trial_id": trial_id, "status": "ok", "acc_mean": 0.5, "acc_per_model": [0.4, 0.6], **values}


class TestSchema:
    def test_fixed_metric_columns(self):
        """The metric column names other tools read are present with their types."""
        fields = {f.name: f.type for f in store.SCHEMA}
        for name in (
            "acc_mean",
            "acc_std",
            "val_acc_mean",
            "acc_aligned",
            "acc_conflicting",
            "acc_worst_group",
            "acc_many",
            "acc_medium",
            "acc_few",
        ):
            assert fields[name] == pa.float64(), name
        assert fields["acc_per_model"] == pa.list_(pa.float64())
        assert fields["acc_per_class"] == pa.list_(pa.float64())
        assert fields["status"] == pa.string() and fields["error"] == pa.string()

    def test_identity_cost_provenance_columns(self):
        """Identity, cost and provenance columns of the design are declared."""
        names = set(store.COLUMN_NAMES)
        required = {
            "trial_id",
            "grid",
            "dataset",
            "dataset_params",
            "method",
            "method_params",
            "weighting",
            "labels",
            "ipc",
            "seed",
            "protocol",
            "protocol_version",
            "eval_network",
            "distill_seconds",
            "eval_seconds",
            "peak_memory_bytes",
            "device",
            "set_bytes",
            "package_version",
            "git_sha",
            "torch_version",
            "ray_version",
            "node",
            "start_time",
            "end_time",
        }
        assert required <= names, f"missing columns: {sorted(required - names)}"

    def test_every_column_documented_once(self):
        """Each column is declared exactly once, with a description, a group and a display label."""
        assert len(store.COLUMN_NAMES) == len(set(store.COLUMN_NAMES))
        assert all(c.description and c.label and c.group in store.GROUPS for c in store.COLUMNS)
        assert [c.group for c in store.COLUMNS] == sorted((c.group for c in store.COLUMNS), key=store.GROUPS.index)

    def test_derived_lists_follow_the_declaration(self):
        """SCHEMA, COLUMN_NAMES and the metric lists of metrics, evaluate and the leaderboard come from COLUMNS."""
        from distillbench.harness import evaluate, metrics
        from distillbench.leaderboard import markdown, tables

        assert [(f.name, f.type) for f in store.SCHEMA] == [(c.name, c.type) for c in store.COLUMNS]
        assert tuple(c.name for c in store.COLUMNS) == store.COLUMN_NAMES
        declared = {c.name: c for c in store.COLUMNS}
        assert metrics.BIAS_COLUMNS == ("acc_aligned", "acc_conflicting", "acc_worst_group")
        assert metrics.SHOT_COLUMNS == ("acc_many", "acc_medium", "acc_few")
        assert tuple((n, declared[n].label) for n in metrics.BIAS_COLUMNS) == tables.BIAS_METRICS
        assert tuple((n, declared[n].label) for n in metrics.SHOT_COLUMNS) == tables.LONGTAIL_METRICS
        assert [n for n, _ in tables.PROVENANCE_COLUMNS] == list(store.column_names(family="versions"))
        assert set(metrics.BIAS_COLUMNS + metrics.SHOT_COLUMNS) <= set(markdown.CSV_COLUMNS)
        assert all(declared[n].group == "metrics" for n in evaluate.RESULT_COLUMNS)

    def test_eval_result_metrics_are_declared(self):
        """Every EvalResult attribute named like a column is a declared metric that the runner copies into rows."""
        import dataclasses

        from distillbench.harness.evaluate import RESULT_COLUMNS, EvalResult

        attributes = {f.name for f in dataclasses.fields(EvalResult)} | {
            name for name, value in vars(EvalResult).items() if isinstance(value, property)
        }
        assert set(RESULT_COLUMNS) <= attributes
        groups = {c.name: c.group for c in store.COLUMNS}
        for name in attributes & set(store.COLUMN_NAMES):
            assert groups[name] == "metrics" and name in RESULT_COLUMNS, name

    def test_unknown_group_or_family_rejected(self):
        """A misspelt group or family raises instead of selecting no columns."""
        with pytest.raises(ValueError, match="unknown column group or family \\['metric'\\]"):
            store.columns(group="metric")
        with pytest.raises(ValueError, match="longtail"):
            store.column_names(family="longtail")

    def test_unknown_column_rejected(self):
        """A row with a column outside the schema is a bug, reported by name."""
        with pytest.raises(ValueError, match="unknown row columns \\['acc'\\]"):
            store.make_row({"trial_id": "x", "status": "ok", "acc": 1.0})

    def test_status_values(self):
        """Status must be ok, error or diverged."""
        with pytest.raises(ValueError, match="status must be one of"):
            store.make_row({"trial_id": "x", "status": "done"})


class TestRows:
    def test_round_trip(self, tmp_path):
        """A written row reads back with its values, nulls for the rest, and the schema version."""
        start = dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.UTC)
        store.write_row(tmp_path, row(start_time=start, train_class_counts=[3, 4]))
        frame = store.read_rows([tmp_path])
        assert len(frame) == 1
        got = frame.iloc[0]
        assert got["trial_id"] == "t1" and got["acc_mean"] == 0.5 and list(got["acc_per_model"]) == [0.4, 0.6]
        assert list(got["train_class_counts"]) == [3, 4]
        assert got["start_time"] == start and got["schema_version"] == store.SCHEMA_VERSION
        assert frame["acc_few"].isna().all()

    def test_rewrite_replaces(self, tmp_path):
        """Writing the same trial again replaces its row: no duplicates."""
        store.write_row(tmp_path, row(acc_mean=0.1))
        store.write_row(tmp_path, row(acc_mean=0.2))
        frame = store.read_rows([tmp_path])
        assert list(frame["acc_mean"]) == [0.2]

    def test_failed_write_leaves_nothing(self, tmp_path, monkeypatch):
        """A crash while writing leaves neither a row nor a temporary file."""

        def boom(self, data):
            with open(self, "wb") as f:
                f.write(data[: len(data) // 2])
            raise OSError("disk full")

        # The row is serialised in memory and written in one go; the crash hits the file write.
        monkeypatch.setattr(Path, "write_bytes", boom)
        with pytest.raises(OSError, match="disk full"):
            store.write_row(tmp_path, row())
        assert list(store.rows_dir(tmp_path).iterdir()) == []

    def test_existing_ids_by_status(self, tmp_path):
        """existing_trial_ids filters by status (error rows are retried by a re-run)."""
        store.write_row(tmp_path, row("a"))
        store.write_row(tmp_path, row("b", status="error", error="x"))
        store.write_row(tmp_path, row("c", status="diverged"))
        assert store.existing_trial_ids(tmp_path) == {"a", "b", "c"}
        assert store.existing_trial_ids(tmp_path, status=("ok", "diverged")) == {"a", "c"}

    def test_trial_status_of_a_multi_row_trial(self, tmp_path):
        """A trial with one row per network is ok only if all are; a mixed error/diverged trial is error and retried."""
        store.write_rows(tmp_path, [row("a", eval_network=n) for n in ("convnet", "resnet")])
        store.write_rows(tmp_path, [row("b", eval_network="convnet"), row("b", eval_network="mlp", status="diverged")])
        mixed = [row("c", eval_network="convnet", status="diverged"), row("c", eval_network="mlp", status="error")]
        store.write_rows(tmp_path, mixed)
        store.write_rows(tmp_path, [row("d", eval_network="mlp", status="error"), row("d", eval_network="convnet")])
        assert store.trial_statuses(tmp_path) == {"a": "ok", "b": "diverged", "c": "error", "d": "error"}
        assert store.existing_trial_ids(tmp_path, status=("ok", "diverged")) == {"a", "b"}
        assert store.existing_trial_ids(tmp_path, status=("ok",)) == {"a"}

    def test_several_directories(self, tmp_path):
        """Rows of several results directories read as one frame."""
        store.write_row(tmp_path / "one", row("a"))
        store.write_row(tmp_path / "two", row("b"))
        assert sorted(store.read_rows([tmp_path / "one", tmp_path / "two"])["trial_id"]) == ["a", "b"]

    def test_newer_schema_refused(self, tmp_path):
        """A row from a newer schema version is refused with a message saying to upgrade."""
        values = store.make_row(row())
        values["schema_version"] = store.SCHEMA_VERSION + 1
        store.rows_dir(tmp_path).mkdir(parents=True)
        pq.write_table(pa.Table.from_pylist([values], schema=store.SCHEMA), store.rows_dir(tmp_path) / "t1.parquet")
        with pytest.raises(DataError, match="newer than this distillbench understands"):
            store.read_rows([tmp_path])

    def test_corrupt_file_reported(self, tmp_path):
        """A corrupt file raises DataError, or is reported and skipped with on_bad."""
        store.write_row(tmp_path, row("good"))
        (store.rows_dir(tmp_path) / "bad.parquet").write_bytes(b"not parquet")
        with pytest.raises(DataError, match="bad.parquet"):
            store.read_rows([tmp_path])
        seen = []
        frame = store.read_rows([tmp_path], on_bad=lambda p, r: seen.append(p.name))
        assert seen == ["bad.parquet"] and list(frame["trial_id"]) == ["good"]

    def test_json_round_trip(self):
        """Rows travel from workers to the driver as JSON and come back identical."""
        values = store.make_row(row(start_time=dt.datetime(2026, 1, 1, tzinfo=dt.UTC)))
        assert store.row_from_json(store.row_to_json(values)) == values

    def test_results_path_is_a_file(self, tmp_path):
        """A results path that is an existing file is refused."""
        path = tmp_path / "f"
        path.write_text("x")
        with pytest.raises(DistillBenchError, match="is an existing file"):
            store.check_results_dir(path)


class TestSets:
    def test_round_trip_with_soft_labels_and_extras(self, tmp_path):
        """Sets are safetensors + JSON, with soft labels and extra tensors preserved."""
        dset = DistilledSet(torch.randn(4, 1, 8, 8), torch.rand(4, 10), {"lrs": torch.ones(3)}, {"indices": [1, 2]})
        path = store.save_set(tmp_path, "abc", dset, {"spec": {"ipc": 1}})
        assert path.suffix == ".safetensors" and (tmp_path / "abc.json").is_file()
        loaded, meta = store.load_set(path)
        assert torch.equal(loaded.x, dset.x) and torch.equal(loaded.y, dset.y)
        assert torch.equal(loaded.extras["lrs"], dset.extras["lrs"])
        assert loaded.meta == {"indices": [1, 2]} and meta["spec"] == {"ipc": 1}
        assert store.find_set(tmp_path.parent, "abc") is None  # not under <results>/sets

    def test_missing_metadata(self, tmp_path):
        """A set without its JSON is refused with a message naming the missing file."""
        dset = DistilledSet(torch.zeros(1, 1, 2, 2), torch.zeros(1, dtype=torch.long))
        path = store.save_set(tmp_path, "s", dset, {})
        (tmp_path / "s.json").unlink()
        with pytest.raises(DataError, match="has no metadata file 's.json'"):
            store.load_set(path)
        with pytest.raises(DataError, match="does not exist"):
            store.load_set(tmp_path / "other.safetensors")


class TestTrialStatus:
    """store.trial_status: the one rule for a trial's status from its rows' statuses."""

    @pytest.mark.parametrize(
        ("statuses", "expected"),
        [
            (["ok"], "ok"),
            (["ok", "ok", "ok"], "ok"),
            (["diverged"], "diverged"),
            (["ok", "diverged"], "diverged"),
            (["diverged", "ok"], "diverged"),
            (["error"], "error"),
            (["ok", "error"], "error"),
            (["diverged", "error"], "error"),
            (["error", "diverged", "ok"], "error"),
            (["ok", "unknown"], "error"),
        ],
    )
    def test_worst_row_decides(self, statuses, expected):
        """Ok only if every row is ok; error (or an unknown status) outranks diverged; row order never matters."""
        assert store.trial_status(statuses) == expected
        assert store.trial_status(reversed(statuses)) == expected

    def test_no_rows_rejected(self):
        """A trial without rows has no status."""
        with pytest.raises(ValueError, match="without rows"):
            store.trial_status([])
