"""Generated leaderboards: Parquet rows of the results store in, Markdown and CSV out.

Use :func:`build_leaderboard` (or ``distillbench leaderboard``); never edit the output by hand.
"""

from __future__ import annotations

from distillbench.leaderboard.build import Cell, LeaderboardResult, Table, TableRow, build_leaderboard

__all__ = ["Cell", "LeaderboardResult", "Table", "TableRow", "build_leaderboard"]
