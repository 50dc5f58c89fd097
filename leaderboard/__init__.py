"""Generated leaderboards: Parquet rows of the results store in; Markdown, self-contained HTML and CSV out.

Use :func:`build_leaderboard` (or ``distillbench leaderboard``); never edit the output by hand.
Published numbers shown beside the reproduced ones live in ``reported.yaml`` (see
:mod:`distillbench.leaderboard.reported`); the significance test is in :mod:`distillbench.leaderboard.stats`.
"""

from __future__ import annotations

from distillbench.leaderboard.build import LeaderboardResult, build_leaderboard
from distillbench.leaderboard.reported import ReportedNumber, load_reported
from distillbench.leaderboard.tables import Cell, CostRow, Provenance, Table, TableRow

__all__ = [
    "Cell",
    "CostRow",
    "LeaderboardResult",
    "Provenance",
    "ReportedNumber",
    "Table",
    "TableRow",
    "build_leaderboard",
    "load_reported",
]
