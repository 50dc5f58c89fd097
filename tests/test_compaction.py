"""Compaction of the row store: small row files merged into compacted ones, every row seen exactly once."""

from __future__ import annotations

import os
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from distillbench.harness import store
from distillbench.harness.cli import main


def row(trial_id, *, status="ok", acc=0.5, network="convnet", **values):
    return {
        "trial_id": trial_id,
        "grid": "g",
        "dataset": "digits",
        "method": values.pop("method", "dm"),
        "method_name": "dm",
        "ipc": 10,
        "seed": values.pop("seed", 0),
        "protocol": "quick-v1",
        "eval_network": network,
        "status": status,
        "error": None if status == "ok" else "boom",
        "acc_mean": acc,
        "acc_per_model": [acc, acc],
        **values,
    }


def fill(results, n=6):
    for i in range(n):
        rows = [row(f"t{i}", seed=i, acc=0.1 * i), row(f"t{i}", seed=i, acc=0.1 * i, network="mlp")]
        if i == 5:
            rows[1] = row(f"t{i}", seed=i, status="error", network="mlp")
        store.write_rows(results, rows)


def names(results):
    return sorted(p.name for p in (Path(results) / "rows").iterdir())


def answers(results):
    """What readers see: every row (sorted), the statuses and the done trials."""
    frame = store.read_rows([results], columns=["trial_id", "eval_network", "acc_mean", "status"])
    rows = sorted(map(tuple, frame.itertuples(index=False)))
    return rows, store.trial_statuses(results), store.existing_trial_ids(results, status=("ok", "diverged"))


class TestCompact:
    def test_merges_and_removes_small_files(self, tmp_path):
        fill(tmp_path)
        before = answers(tmp_path)
        done = store.compact(tmp_path)
        files = names(tmp_path)
        assert len(files) == 1 and files[0].startswith(store.COMPACTED_PREFIX)
        assert (done.merged_files, done.removed_files, done.trials, done.rows) == (6, 6, 6, 12)
        assert answers(tmp_path) == before
        assert "_row_stamp" not in store.read_rows([tmp_path]).columns

    def test_twice_is_idempotent_and_merges_compacted_files(self, tmp_path):
        fill(tmp_path)
        before = answers(tmp_path)
        store.compact(tmp_path)
        first = names(tmp_path)
        assert store.compact(tmp_path).compacted is None  # one compacted file, no small one: nothing to do
        assert names(tmp_path) == first and answers(tmp_path) == before
        store.write_rows(tmp_path, [row("t9", acc=0.9)])
        store.compact(tmp_path)  # the old compacted file and the new small one become one file
        files = names(tmp_path)
        assert len(files) == 1 and files != first
        assert len(answers(tmp_path)[0]) == len(before[0]) + 1

    def test_reader_during_compaction_sees_each_row_once(self, tmp_path, monkeypatch):
        fill(tmp_path)
        before = answers(tmp_path)
        # Compacted file written, small files not deleted yet: both copies on disk.
        with monkeypatch.context() as m:
            m.setattr(store.Location, "delete", lambda self: None)
            store.compact(tmp_path)
        assert len(names(tmp_path)) == 7
        assert answers(tmp_path) == before
        store.compact(tmp_path)
        assert len(names(tmp_path)) == 1 and answers(tmp_path) == before

    def test_reader_whose_listing_went_stale_lists_again(self, tmp_path, monkeypatch):
        """Listed before a compaction, read after it removed the small files: no row lost, none twice."""
        fill(tmp_path)
        before = answers(tmp_path)
        stale = store._list_row_files(store.location(tmp_path) / "rows")
        store.compact(tmp_path)
        real = store._list_row_files
        calls = []

        def listing(rows):
            calls.append(1)
            return stale if len(calls) == 1 else real(rows)

        monkeypatch.setattr(store, "_list_row_files", listing)
        assert answers(tmp_path)[0] == before[0]
        assert len(calls) >= 2

    def test_newer_small_row_wins_over_its_compacted_copy(self, tmp_path):
        fill(tmp_path)
        store.compact(tmp_path)
        store.write_rows(tmp_path, [row("t5", acc=0.99), row("t5", acc=0.99, network="mlp")])  # re-run: now ok
        frame = store.read_rows([tmp_path])
        t5 = frame[frame["trial_id"] == "t5"]
        assert len(t5) == 2 and set(t5["acc_mean"]) == {0.99}
        assert store.trial_statuses(tmp_path)["t5"] == "ok"
        store.compact(tmp_path)  # and keeps winning once merged
        t5 = store.read_rows([tmp_path]).query("trial_id == 't5'")
        assert len(names(tmp_path)) == 1 and len(t5) == 2 and set(t5["acc_mean"]) == {0.99}

    def test_small_file_rewritten_during_compaction_is_kept(self, tmp_path, monkeypatch):
        fill(tmp_path, n=3)
        real = store.atomic_write

        def write_then_rerun(path, write):
            real(path, write)
            if path.name.startswith(store.COMPACTED_PREFIX):
                # t1 is re-run after the compaction read it, before the small files are removed.
                os.utime(store.write_rows(tmp_path, [row("t1", acc=0.77)]), ns=(1, 2**62))

        monkeypatch.setattr(store, "atomic_write", write_then_rerun)
        done = store.compact(tmp_path)
        monkeypatch.undo()
        assert (done.merged_files, done.removed_files) == (3, 2) and "t1.parquet" in names(tmp_path)
        t1 = store.read_rows([tmp_path]).query("trial_id == 't1'")
        assert list(t1["acc_mean"]) == [0.77]

    def test_bad_files_are_reported_and_kept(self, tmp_path):
        fill(tmp_path, n=2)
        (tmp_path / "rows" / "junk.parquet").write_bytes(b"not parquet")
        pq.write_table(pa.table({"x": [1]}), tmp_path / "rows" / "foreign.parquet")
        seen = []
        store.compact(tmp_path, on_bad=lambda path, reason: seen.append(Path(path).name))
        assert sorted(seen) == ["foreign.parquet", "junk.parquet"]
        assert {"junk.parquet", "foreign.parquet"} <= set(names(tmp_path)) and len(names(tmp_path)) == 3
        with pytest.raises(store.DataError, match="(junk|foreign).parquet"):
            store.read_rows([tmp_path])

    def test_row_stamps_survive_compaction(self, tmp_path):
        fill(tmp_path, n=3)
        stamps = store.row_stamps(tmp_path)
        assert stamps["t1"] == store.row_stamp(tmp_path, "t1")
        store.compact(tmp_path)
        assert store.row_stamps(tmp_path) == stamps
        assert store.row_stamp(tmp_path, "t1") == stamps["t1"] and store.row_stamp(tmp_path, "nope") is None

    def test_s3(self, s3_endpoint):
        uri = f"s3://bench/compact?endpoint_override={s3_endpoint}&scheme=http&region=us-east-1"
        fill(uri)
        before = answers(uri)
        done = store.compact(uri)
        assert (done.merged_files, done.removed_files) == (6, 6)
        listed = (store.location(uri) / "rows").files(".parquet")
        assert len(listed) == 1 and listed[0].name.startswith(store.COMPACTED_PREFIX)
        assert answers(uri) == before
        store.write_rows(uri, [row("t0", acc=0.42)])
        assert list(store.read_rows([uri]).query("trial_id == 't0'")["acc_mean"]) == [0.42]


class TestCommands:
    def test_status_and_leaderboard_same_before_and_after(self, tmp_path, capsys):
        fill(tmp_path)
        assert main(["status", str(tmp_path)]) == 0
        status_before = capsys.readouterr().out
        assert main(["leaderboard", str(tmp_path), "--out", str(tmp_path / "b1")]) == 0
        capsys.readouterr()
        assert main(["compact", str(tmp_path)]) == 0
        out = capsys.readouterr().out
        assert "6 row files merged into" in out and "6 removed" in out
        assert main(["status", str(tmp_path)]) == 0
        assert capsys.readouterr().out == status_before
        assert main(["leaderboard", str(tmp_path), "--out", str(tmp_path / "b2")]) == 0
        csv = [(tmp_path / b / "leaderboard.csv").read_text() for b in ("b1", "b2")]
        assert csv[0] == csv[1]
        assert main(["compact", str(tmp_path)]) == 0
        assert "nothing to compact" in capsys.readouterr().out

    def test_compact_errors_exit_2(self, tmp_path, capsys):
        assert main(["compact", str(tmp_path)]) == 2
        err = capsys.readouterr().err
        assert "has no rows/ folder" in err and len(err.strip().splitlines()) == 1
        assert main(["compact", "bogus://x/y"]) == 2
        assert "cannot open results location" in capsys.readouterr().err


def test_end_of_grid_compaction_failure_is_a_note(tmp_path, monkeypatch):
    from distillbench.harness import scheduler

    def fail(*args, **kwargs):
        raise OSError("disk on fire")

    monkeypatch.setattr(store, "compact", fail)
    outcome = scheduler._compact(scheduler.GridOutcome(total=1, skipped=0), store.location(tmp_path))
    assert "disk on fire" in outcome.notes[0] and "distillbench compact" in outcome.notes[0]


def test_end_of_grid_compacts_once_enough_small_files_wait(tmp_path, monkeypatch):
    from distillbench.harness import scheduler

    fill(tmp_path, n=3)
    monkeypatch.setattr(scheduler, "AUTO_COMPACT_FILES", 4)
    scheduler._compact(scheduler.GridOutcome(total=1, skipped=0), store.location(tmp_path))
    assert len(names(tmp_path)) == 3, "three small files wait"
    fill(tmp_path, n=4)
    outcome = scheduler._compact(scheduler.GridOutcome(total=1, skipped=0), store.location(tmp_path))
    assert len(names(tmp_path)) == 1 and not outcome.notes
