"""The SLURM template (docs/slurm/distillbench.sbatch, shown in docs/cluster.md): syntax and a dry run.

No SLURM cluster is available here, so the dry run puts stand-in ``scontrol``, ``srun``, ``ray``,
``hostname``, ``sleep`` and ``distillbench`` commands first on PATH. Each appends a line to a log, and
``srun`` runs its command with the node it was sent to, so the test sees which node started what, in
which order. The stand-in ``ray status`` answers only from its Nth call, to exercise the wait loop.
"""

from __future__ import annotations

import re
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

from .conftest import REPO

SCRIPT = REPO / "docs" / "slurm" / "distillbench.sbatch"
NODES = ("node1", "node2", "node3")

pytestmark = pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")

STUBS = {
    "scontrol": 'if [ "$1 $2" = "show hostnames" ]; then printf "%s\\n" $STUB_NODES; else exit 1; fi',
    "hostname": 'echo "10.0.0.1 fe80::1"',
    # srun OPTIONS... COMMAND...: note the node, then run the command there (here: in this process).
    "srun": """
        node=batch
        while [ "$#" -gt 0 ] && [ "${1#--}" != "$1" ]; do
          case "$1" in --nodelist=*) node=${1#--nodelist=} ;; esac
          shift
        done
        echo "srun@$node $*" >> "$CALLS"
        STUB_NODE=$node exec "$@"
    """,
    "ray": """
        echo "ray@${STUB_NODE:-batch} $*" >> "$CALLS"
        if [ "$1" = status ]; then
          n=$(( $(cat "$CALLS.status" 2>/dev/null || echo 0) + 1 )); echo "$n" > "$CALLS.status"
          if [ "$n" -ge "$STUB_READY_AFTER" ]; then echo "ray@batch status answered" >> "$CALLS"; exit 0; fi
          exit 1
        fi
    """,
    "sleep": 'echo "sleep $*" >> "$CALLS"',
    # The grid "runs" until every worker has started (at most 10 s), as a real grid outlasts their start-up;
    # otherwise the script's clean-up could end a worker's srun before it logged anything.
    "distillbench": """
        echo "distillbench $*" >> "$CALLS"
        for _ in $(seq 200); do
          [ "$(grep -c ' start --address=' "$CALLS")" -ge "$STUB_WORKERS" ] && break
          /bin/sleep 0.05
        done
        exit "${STUB_RC:-0}"
    """,
}


def stub_path(tmp_path: Path) -> Path:
    """A folder of the stand-in commands."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, body in STUBS.items():
        path = bin_dir / name
        path.write_text("#!/usr/bin/env bash\n" + body + "\n")
        path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return bin_dir


def dry_run(tmp_path: Path, *args: str, ready_after: int = 2, rc: int = 0) -> tuple[int, list[str], str]:
    """Run the template with the stand-ins; returns its exit status, the call log and stderr."""
    calls = tmp_path / "calls.log"
    env = {
        "PATH": f"{stub_path(tmp_path)}:/usr/bin:/bin",
        "HOME": str(tmp_path),
        "CALLS": str(calls),
        "STUB_NODES": " ".join(NODES),
        "STUB_READY_AFTER": str(ready_after),
        "STUB_WORKERS": str(len(NODES) - 1),
        "STUB_RC": str(rc),
        "SLURM_JOB_NODELIST": "node[1-3]",
        "SLURM_JOB_NUM_NODES": "3",
        "SLURM_CPUS_PER_TASK": "8",
        "SLURM_GPUS_ON_NODE": "4",
        "SLURM_JOB_ID": "42",
    }
    proc = subprocess.run(
        ["bash", str(SCRIPT), *args], env=env, capture_output=True, text=True, timeout=60, cwd=tmp_path
    )
    lines = calls.read_text().splitlines() if calls.exists() else []
    return proc.returncode, lines, proc.stderr


class TestTemplate:
    """The file parses, and docs/cluster.md shows exactly this file."""

    def test_bash_syntax(self):
        proc = subprocess.run(["bash", "-n", str(SCRIPT)], capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr

    def test_docs_show_the_file(self):
        """The sbatch block in docs/cluster.md is the file, byte for byte (one source, no drift)."""
        doc = (REPO / "docs" / "cluster.md").read_text()
        blocks = re.findall(r"```bash\n(#!/usr/bin/env bash\n#SBATCH.*?)```", doc, re.S)
        assert blocks == [SCRIPT.read_text()]


class TestDryRun:
    """The template with stand-in commands: who starts what, where, and in which order."""

    def test_head_workers_grid_stop(self, tmp_path):
        code, calls, err = dry_run(tmp_path, "grid.yaml", "/shared/results/g", "--data-root", "/shared/data")
        assert code == 0, err
        starts = [c for c in calls if c.startswith("ray@") and " start " in c]
        heads = [c for c in starts if "--head" in c]
        assert heads == [
            "ray@node1 start --head --node-ip-address=10.0.0.1 --port=6379 --num-cpus=8 --num-gpus=4 --block"
        ]
        workers = sorted(c for c in starts if "--head" not in c)
        assert workers == [
            f"ray@{node} start --address=10.0.0.1:6379 --num-cpus=8 --num-gpus=4 --block" for node in NODES[1:]
        ]
        answered = calls.index("ray@batch status answered")
        assert calls.count("sleep 2") == 1, "the stand-in head answers on the second poll"
        assert all(calls.index(w) > answered for w in workers), "a worker started before the head answered"
        grid = [c for c in calls if c.startswith("distillbench")]
        expected = "distillbench run grid.yaml --address auto --results /shared/results/g --data-root /shared/data"
        assert grid == [expected]
        assert calls[-1] == "ray@batch stop", "ray is stopped after the grid"

    def test_grid_status_is_the_job_status(self, tmp_path):
        """Failed trials (distillbench exits 1) fail the job, and Ray is still stopped."""
        code, calls, _ = dry_run(tmp_path, "grid.yaml", "s3://bucket/g", rc=1)
        assert code == 1 and calls[-1] == "ray@batch stop"

    def test_head_that_never_answers(self, tmp_path):
        """No grid, no workers, a one-line reason and a failed job when the head does not come up."""
        code, calls, err = dry_run(tmp_path, "grid.yaml", "/shared/r", ready_after=10_000)
        assert code == 1 and "did not answer within 2 minutes" in err
        assert not [c for c in calls if c.startswith("distillbench") or " start --address=" in c]
        assert calls.count("sleep 2") == 59 and calls[-1] == "ray@batch stop"

    def test_usage(self, tmp_path):
        code, calls, err = dry_run(tmp_path, "grid.yaml")
        assert code == 2 and err.startswith("usage: sbatch distillbench.sbatch GRID RESULTS") and calls == []
