"""Results on a local path or on S3 through one code path (pyarrow file systems); S3 is a local moto server."""

from __future__ import annotations

import dataclasses
import textwrap

import pytest
import torch
import yaml

from distillbench.harness import store
from distillbench.harness.types import DistilledSet

from .conftest import temp_plugin

PLUGIN = textwrap.dedent(
    '''
    """A tiny protocol for the storage tests (imported by the driver and by every Ray worker)."""
    import dataclasses

    from distillbench.harness.plugins import register_protocol
    from distillbench.harness.protocols import QUICK_V1

    register_protocol(
        dataclasses.replace(QUICK_V1, name="storage-test", networks=("convnet[width=8]",), epochs=2, n_models=1)
    )
    '''
)


_COUNTER = iter(range(10**6))


@pytest.fixture(params=["local", "s3"])
def results(request, tmp_path):
    """A fresh results location: a local directory, or a fresh prefix in the fake S3 bucket."""
    if request.param == "local":
        return str(tmp_path / "results")
    endpoint = request.getfixturevalue("s3_endpoint")
    return f"s3://bench/r{next(_COUNTER)}?endpoint_override={endpoint}&scheme=http&region=us-east-1"


def _row(trial_id: str, **values):
    return {"trial_id": trial_id, "grid": "g", "status": "ok", **values}


class TestOneCodePath:
    def test_rows_round_trip_and_replace(self, results):
        """Rows written, listed by status, read back; writing a trial again replaces its row."""
        store.write_row(results, _row("a", acc_mean=0.1))
        store.write_row(results, _row("b", status="error", error="boom"))
        store.write_row(results, _row("a", acc_mean=0.2))
        assert store.existing_trial_ids(results) == {"a", "b"}
        assert store.existing_trial_ids(results, status=("ok", "diverged")) == {"a"}
        frame = store.read_rows([results]).sort_values("trial_id")
        assert list(frame["trial_id"]) == ["a", "b"] and list(frame["acc_mean"])[0] == 0.2
        loc = store.location(results) / "rows"
        assert [f.name for f in loc.files("")] == ["a.parquet", "b.parquet"], "no temporary objects left behind"

    def test_sets_round_trip(self, results):
        """A set saved in a results location is found by distill_id and loads back identically."""
        dset = DistilledSet(torch.randn(4, 1, 8, 8), torch.tensor([0, 0, 1, 1]), {"lrs": torch.ones(3)}, {"k": 1})
        assert store.find_set(results, "abc") is None
        store.save_set(store.sets_dir(results), "abc", dset, {"spec": {"ipc": 2}})
        found = store.find_set(results, "abc")
        assert found is not None
        loaded, meta = store.load_set(found)
        assert torch.equal(loaded.x, dset.x) and torch.equal(loaded.extras["lrs"], dset.extras["lrs"])
        assert meta["spec"] == {"ipc": 2} and loaded.meta == {"k": 1}

    def test_empty_location(self, results):
        """A location with nothing in it has no rows (and reading it is not an error)."""
        assert store.existing_trial_ids(results) == set()
        assert len(store.read_rows([results])) == 0


class TestS3Location:
    def test_messages_hide_the_query(self, s3_endpoint):
        """Printed locations drop the query (endpoints, possibly credentials); workers get the full URI."""
        uri = f"s3://bench/x?endpoint_override={s3_endpoint}&scheme=http&region=us-east-1"
        loc = store.location(uri)
        assert str(loc / "rows") == "s3://bench/x/rows"
        assert (loc / "rows").uri.endswith(f"x/rows?endpoint_override={s3_endpoint}&scheme=http&region=us-east-1")

    def test_missing_bucket_is_a_clear_error(self, s3_endpoint):
        """A results URI in a bucket that does not exist fails before anything runs, naming the bucket."""
        from distillbench.harness.errors import DistillBenchError

        uri = f"s3://no-such-bucket/x?endpoint_override={s3_endpoint}&scheme=http&region=us-east-1"
        with pytest.raises(
            DistillBenchError, match="bucket 'no-such-bucket' of results location 's3://no-such-bucket/x'"
        ):
            store.check_results_dir(uri)
        assert store.check_results_dir(uri.replace("no-such-bucket", "bench")).startswith("s3://bench/x?")

    def test_set_reuse_from_s3(self, s3_endpoint):
        """A second trial with the same distill_id loads the set saved on S3 instead of distilling again."""
        from distillbench.harness.protocols import QUICK_V1
        from distillbench.harness.runner import run_trial
        from distillbench.harness.spec import TrialSpec

        protocol = dataclasses.replace(
            QUICK_V1, name="storage-unit", networks=("convnet[width=8]",), epochs=2, n_models=1
        )
        uri = f"s3://bench/reuse?endpoint_override={s3_endpoint}&scheme=http&region=us-east-1"
        spec = TrialSpec(dataset="digits", method="random", ipc=1, protocol="storage-unit")
        with temp_plugin("protocols", "storage-unit", protocol):
            (first,) = run_trial(spec, results=uri)
            (second,) = run_trial(spec, results=uri)
        assert first["status"] == "ok" and second["status"] == "ok", first["error"]
        assert (first["set_reused"], second["set_reused"]) == (False, True)
        assert second["set_path"] == f"sets/{first['distill_id']}.safetensors"


@pytest.mark.ray
def test_cli_run_status_leaderboard_on_s3(s3_endpoint, tmp_path, capsys):
    """`run --results s3://...` writes rows and sets to S3; `status` and `leaderboard` read them; a re-run skips."""
    from distillbench.harness.cli import main

    (tmp_path / "storage_plugin.py").write_text(PLUGIN)
    grid = tmp_path / "grid.yaml"
    grid.write_text(
        yaml.safe_dump(
            {
                "name": "s3grid",
                "protocol": "storage-test",
                "plugins": ["storage_plugin.py"],
                "grid": {"dataset": "digits", "method": "random", "ipc": 1, "seed": [0, 1]},
            }
        )
    )
    uri = f"s3://bench/cli?endpoint_override={s3_endpoint}&scheme=http&region=us-east-1"
    board = tmp_path / "board"
    assert main(["run", str(grid), "--results", uri, "--no-leaderboard"]) == 0
    out = capsys.readouterr().out
    assert "2 ok, 0 failed" in out and "rows: s3://bench/cli/rows" in out, out
    assert "endpoint_override" not in out
    frame = store.read_rows([uri])
    assert sorted(frame["seed"]) == [0, 1] and set(frame["status"]) == {"ok"}
    assert all(store.find_set(uri, d) is not None for d in frame["distill_id"]), "sets were not saved on S3"

    assert main(["status", uri]) == 0
    assert "s3grid" in capsys.readouterr().out
    assert main(["leaderboard", uri, "--out", str(board)]) == 0
    assert "2 ok rows" in capsys.readouterr().out
    assert "random" in (board / "leaderboard.md").read_text()

    assert main(["run", str(grid), "--results", uri, "--no-leaderboard"]) == 0
    assert "0 to run, 2 already done" in capsys.readouterr().out
