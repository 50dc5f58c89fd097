"""The leaderboard's data model: rows pooled into cells, cells into tables, plus cost and provenance.

Rows are comparable only within one protocol version and one evaluation network, so a :class:`Table`
is one (dataset, protocol ``name@version``, evaluation network). A table row is one method
configuration (method, weighting, label stage); a :class:`Cell` pools the accuracies of every
evaluation model of every seed of one IPC, with the Welch test against the best cell of its column
(:mod:`distillbench.leaderboard.stats`) and the matching published number, if any
(:mod:`distillbench.leaderboard.reported`). Rendering is in :mod:`distillbench.leaderboard.markdown`
and :mod:`distillbench.leaderboard.html`; reading rows and writing files in
:mod:`distillbench.leaderboard.build`.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from decimal import Decimal
from typing import Any

from distillbench.harness.errors import DistillBenchError
from distillbench.harness.registry import natural_key
from distillbench.harness.store import columns
from distillbench.leaderboard.reported import ReportedNumber, match
from distillbench.leaderboard.stats import ALPHA, MIN_SEEDS, Summary, seed_means, summarize, welch_p

MISSING = "\u2013"  # en dash
MARK = "\u2020"  # dagger: not significantly worse than the best of the column
# (column, header label) pairs, in row order, from the schema declaration (harness/store.py).
BIAS_METRICS = tuple((c.name, c.label) for c in columns(family="bias"))
LONGTAIL_METRICS = tuple((c.name, c.label) for c in columns(family="long_tail"))
PROVENANCE_COLUMNS = tuple((c.name, c.label) for c in columns(family="versions"))


# ------------------------------------------------------------------------------------- data model
@dataclasses.dataclass(frozen=True)
class Cell:
    """One leaderboard cell: accuracies of one configuration at one IPC, pooled over seeds and models.

    Attributes:
        mean: mean accuracy in percent.
        std: standard deviation (ddof=0) in percent.
        n: number of accuracies pooled (evaluation models of all seeds).
        n_seeds: number of distinct seeds.
        best: the mean is the best of its IPC column (at the shown precision).
        seed_means: mean accuracy (percent) of each seed, the samples of the significance test.
        p_value: two-sided Welch p-value against the best of the column; None when not tested (the
            cell is best, or a side has fewer than two seeds).
        not_worse: tested and not significantly worse than the best (``p_value >= ALPHA``): marked †.
        reported: the published number matched to this cell, if any.
        extra: per-trial metric summaries (percent) of the bias and long-tail columns, by column name.
        distill_seconds: distillation seconds summed over the cell's trials (a reused set counts 0).
        eval_seconds: evaluation seconds summed over the cell's rows.
        set_bytes_mean: mean bytes of the distilled sets, when recorded.
    """

    mean: float
    std: float
    n: int
    n_seeds: int
    best: bool = False
    seed_means: tuple[float, ...] = ()
    p_value: float | None = None
    not_worse: bool = False
    reported: ReportedNumber | None = None
    extra: Mapping[str, Summary] = dataclasses.field(default_factory=dict)
    distill_seconds: float = 0.0
    eval_seconds: float = 0.0
    set_bytes_mean: float | None = None

    @property
    def diff(self) -> float | None:
        """Reproduced minus reported mean, in percentage points; None without a reported number."""
        return None if self.reported is None else self.mean - self.reported.value

    def format(self, *, html_break: str = "<br>") -> str:
        """``97.12 ± 0.45 (n=6, seeds=2)``, bold when best, † when not significantly worse, plus reported."""
        text = f"{self.mean:.2f} \u00b1 {self.std:.2f} (n={self.n}, seeds={self.n_seeds})"
        text = f"**{text}**" if self.best else text
        if self.not_worse:
            text += f" {MARK}"
        if self.reported is not None:
            text += html_break + reported_text(self.reported, self.mean)
        return text


@dataclasses.dataclass(frozen=True)
class TableRow:
    """One method configuration of a table.

    Attributes:
        label: the row name shown in the table (see the module docstring for the convention).
        method: method display name, e.g. ``dm[iterations=200]``.
        weighting: weighting display name (``none`` when unweighted).
        labels: label stage display name (``native`` when unchanged).
        cells: cell per IPC; IPCs without results are absent.
    """

    label: str
    method: str
    weighting: str
    labels: str
    cells: Mapping[int, Cell]


@dataclasses.dataclass(frozen=True)
class Table:
    """All comparable results of one dataset, protocol version and evaluation network.

    Attributes:
        dataset: dataset display name.
        protocol: protocol name.
        protocol_version: protocol version.
        eval_network: evaluation network spec.
        quick: the protocol is registered as a quick demo/CI recipe.
        ipcs: IPC columns in numeric order.
        rows: method configurations in natural order.
        untested: per IPC, why some cells were not tested (empty when every comparison was made).
    """

    dataset: str
    protocol: str
    protocol_version: int
    eval_network: str
    quick: bool
    ipcs: tuple[int, ...]
    rows: tuple[TableRow, ...]
    untested: Mapping[int, str] = dataclasses.field(default_factory=dict)

    @property
    def protocol_id(self) -> str:
        """``name@version``."""
        return f"{self.protocol}@{self.protocol_version}"

    @property
    def title(self) -> str:
        """Heading naming the dataset, protocol version and evaluation network."""
        return f"Dataset {self.dataset}, protocol {self.protocol_id}, eval network {self.eval_network}"

    @property
    def compared(self) -> bool:
        """Some IPC column holds at least two configurations, so the significance legend applies."""
        return any(sum(ipc in row.cells for row in self.rows) >= 2 for ipc in self.ipcs)

    def cell(self, label: str, ipc: int) -> Cell | None:
        """The cell of row ``label`` at ``ipc``, or None when there is no result."""
        for row in self.rows:
            if row.label == label:
                return row.cells.get(ipc)
        return None

    def has_metrics(self, metrics: Sequence[tuple[str, str]]) -> bool:
        """Whether any cell carries one of ``metrics`` (the bias or the long-tail columns)."""
        return any(name in cell.extra for row in self.rows for cell in row.cells.values() for name, _ in metrics)

    @property
    def reported_numbers(self) -> list[ReportedNumber]:
        """The reported numbers attached to the table's cells, in table order."""
        return [c.reported for r in self.rows for c in r.cells.values() if c.reported is not None]


@dataclasses.dataclass(frozen=True)
class CostRow:
    """Compute spent on one (dataset, protocol, configuration, IPC) on one device (ok rows only).

    Attributes:
        dataset: dataset display name.
        protocol_id: ``name@version``.
        label: configuration label (see :func:`config_label`).
        ipc: samples per class.
        device: device of the computation (``unknown`` when not recorded).
        trials: distinct trials.
        distill_hours: distillation hours, each trial counted once (a reused set counts 0).
        eval_hours: evaluation hours summed over every row (every evaluation network).
        set_bytes: distinct sizes of the distilled sets in bytes, sorted.
    """

    dataset: str
    protocol_id: str
    label: str
    ipc: int
    device: str
    trials: int
    distill_hours: float
    eval_hours: float
    set_bytes: tuple[int, ...]


@dataclasses.dataclass(frozen=True)
class Provenance:
    """What the rows say about the code and libraries that produced them (deterministic).

    Attributes:
        versions: per provenance column label (``distillbench``, ``git sha``, ...), the distinct values
            found in the selected rows, sorted (``not recorded`` stands for null).
        protocols: ``(name@version, quick)`` of every protocol in the selected rows, sorted.
    """

    versions: tuple[tuple[str, tuple[str, ...]], ...]
    protocols: tuple[tuple[str, bool], ...]


def build_tables(rows: Iterable[Mapping[str, Any]], *, reported: Sequence[ReportedNumber] | None = None) -> list[Table]:
    """Group ok rows into tables, pool their accuracies into cells, test against the best, attach reported.

    Args:
        rows: rows (dicts with the store's column names) whose status is ``ok``.
        reported: published numbers to attach (default: none).

    Returns:
        Tables in natural order of dataset, protocol, version and evaluation network.
    """
    groups: dict[tuple[str, str, int, str], dict[tuple[str, str, str], dict[int, list[Mapping[str, Any]]]]] = {}
    for row in rows:
        key = (row["dataset"], row["protocol"], row["protocol_version"], row["eval_network"])
        config = (row["method"], row["weighting"], row["labels"])
        groups.setdefault(key, {}).setdefault(config, {}).setdefault(row["ipc"], []).append(row)

    tables = []
    for key in sorted(groups, key=lambda k: (natural_key(k[0]), k[0], natural_key(k[1]), k[1], k[2], k[3])):
        dataset, protocol, version, network = key
        quick = _is_quick(protocol)
        configs = groups[key]
        order = sorted(configs, key=_config_sort_key)
        ipcs = tuple(sorted({ipc for by_ipc in configs.values() for ipc in by_ipc}))
        pooled = {config: {ipc: _pool(rs) for ipc, rs in by_ipc.items()} for config, by_ipc in configs.items()}
        untested: dict[int, str] = {}
        for ipc in ipcs:
            column = [(config_label(*c), c, pooled[c][ipc]) for c in order if ipc in pooled[c]]
            untested_note = _test_column(column, pooled, ipc)
            if untested_note:
                untested[ipc] = untested_note
        table_rows = []
        for config in order:
            cells = {}
            for ipc, cell in sorted(pooled[config].items()):
                number = None
                if reported:
                    number = match(
                        reported,
                        dataset=dataset,
                        protocol_id=f"{protocol}@{version}",
                        quick=quick,
                        eval_network=network,
                        method=config[0],
                        weighting=config[1],
                        labels=config[2],
                        ipc=ipc,
                    )
                cells[ipc] = dataclasses.replace(cell, reported=number)
            table_rows.append(TableRow(config_label(*config), *config, cells=cells))
        tables.append(Table(dataset, protocol, version, network, quick, ipcs, tuple(table_rows), untested))
    return tables


def _test_column(
    column: list[tuple[str, tuple[str, str, str], Cell]],
    pooled: dict[tuple[str, str, str], dict[int, Cell]],
    ipc: int,
) -> str:
    """Mark the best cells of one IPC column and test the others against the best; say what was not tested.

    Updates ``pooled`` in place. The reference of the test is the best cell by exact pooled mean among the
    bold ones (the first in row order on an exact tie).
    """
    best_shown = _best_mean(cell for _, _, cell in column)
    bold = [(label, config, cell) for label, config, cell in column if _shown(cell.mean) == best_shown]
    for _, config, cell in bold:
        pooled[config][ipc] = dataclasses.replace(cell, best=True)
    others = [(label, config, cell) for label, config, cell in column if _shown(cell.mean) != best_shown]
    if not bold or not others:
        return ""
    ref_label, _, ref = max(bold, key=lambda item: item[2].mean)  # max keeps the first of exact ties
    if len(ref.seed_means) < MIN_SEEDS:
        return f"the best ({ref_label}) has 1 seed"
    untested = []
    for label, config, cell in others:
        p = welch_p(cell.seed_means, ref.seed_means)
        if p is None:
            untested.append(label)
            continue
        pooled[config][ipc] = dataclasses.replace(cell, p_value=p, not_worse=p >= ALPHA)
    return f"fewer than {MIN_SEEDS} seeds for {', '.join(untested)}" if untested else ""


def build_cost(rows: Iterable[Mapping[str, Any]]) -> list[CostRow]:
    """Cost per (dataset, protocol, configuration, IPC, device) of the ok rows.

    Distillation time is counted once per trial (a trial evaluated on several networks has one row
    per network, each repeating the distillation time); evaluation time is summed over all rows.

    Args:
        rows: rows whose status is ``ok``.

    Returns:
        Cost rows in natural order of dataset, protocol, configuration, IPC and device.
    """
    groups: dict[tuple[str, str, tuple[str, str, str], int, str], list[Mapping[str, Any]]] = {}
    for row in rows:
        protocol_id = f"{row['protocol']}@{row['protocol_version']}"
        config = (row["method"], row["weighting"], row["labels"])
        device = row.get("device") or "unknown"
        groups.setdefault((row["dataset"], protocol_id, config, row["ipc"], device), []).append(row)

    def order(key: tuple[str, str, tuple[str, str, str], int, str]) -> tuple[Any, ...]:
        return (natural_key(key[0]), key[0], natural_key(key[1]), _config_sort_key(key[2]), key[3], key[4])

    cost = []
    for key in sorted(groups, key=order):
        dataset, protocol_id, config, ipc, device = key
        members = groups[key]
        distill = _distill_seconds_once(members)
        evals = math.fsum(sorted(float(r.get("eval_seconds") or 0.0) for r in members))
        sizes = tuple(sorted({int(r["set_bytes"]) for r in members if r.get("set_bytes") is not None}))
        cost.append(
            CostRow(
                dataset=dataset,
                protocol_id=protocol_id,
                label=config_label(*config),
                ipc=ipc,
                device=device,
                trials=len({r["trial_id"] for r in members}),
                distill_hours=distill / 3600.0,
                eval_hours=evals / 3600.0,
                set_bytes=sizes,
            )
        )
    return cost


def build_provenance(rows: Iterable[Mapping[str, Any]]) -> Provenance:
    """Distinct versions, git shas and protocol ids of ``rows`` (sorted; deterministic).

    Args:
        rows: the selected rows (ok or not).

    Returns:
        The provenance summary.
    """
    rows = list(rows)
    versions = []
    for column, label in PROVENANCE_COLUMNS:
        values = {str(r.get(column)) if r.get(column) not in (None, "") else "not recorded" for r in rows}
        versions.append((label, tuple(sorted(values, key=lambda v: (natural_key(v), v)))))
    protocols = {f"{r['protocol']}@{r['protocol_version']}" for r in rows}
    return Provenance(
        versions=tuple(versions),
        protocols=tuple(
            (p, _is_quick(p.rsplit("@", 1)[0])) for p in sorted(protocols, key=lambda p: (natural_key(p), p))
        ),
    )


def config_label(method: str, weighting: str, labels: str) -> str:
    """Row name of a method configuration: ``method[ + weighting][ / labels=labels]``.

    Example:
        >>> config_label("dm[iterations=200]", "kde", "teacher")
        'dm[iterations=200] + kde / labels=teacher'
        >>> config_label("dm", "none", "native")
        'dm'
    """
    label = method
    if weighting != "none":
        label += f" + {weighting}"
    if labels != "native":
        label += f" / labels={labels}"
    return label


def distinct_reported(tables: Sequence[Table]) -> list[ReportedNumber]:
    """The reported numbers attached anywhere in ``tables``, each once, in table order."""
    seen: dict[int, ReportedNumber] = {}
    for table in tables:
        for number in table.reported_numbers:
            seen.setdefault(id(number), number)
    return list(seen.values())


# ------------------------------------------------------------------------------------- row helpers
def _normalise(record: Mapping[str, Any]) -> dict[str, Any]:
    """Plain Python values: None for nulls, int / float / str scalars, list of floats for accuracies."""
    out: dict[str, Any] = {}
    for key, value in record.items():
        if key in ("end_time", "start_time"):
            # A timestamp, None or NaT (which is not equal to itself); end_time picks among duplicates, both
            # give the wall time of tuning's search and final trials.
            out[key] = "" if value is None or value != value else str(value)
            continue
        if key == "acc_per_model":
            out[key] = None if value is None else [float(v) for v in value]
            continue
        if hasattr(value, "item") and not isinstance(value, str):
            value = value.item()  # numpy scalar
        if isinstance(value, float) and math.isnan(value):
            value = None
        out[key] = value
    for key in ("ipc", "seed", "protocol_version"):
        if out.get(key) is not None:
            out[key] = int(out[key])
    out.setdefault("end_time", "")
    for key, default in (("weighting", "none"), ("labels", "native")):
        out[key] = out.get(key) or default
    for key in ("grid", "dataset", "method", "protocol", "eval_network", "status", "error"):
        out[key] = "" if out.get(key) is None else str(out[key])
    for key in ("device", *(name for name, _ in PROVENANCE_COLUMNS)):
        out[key] = None if out.get(key) in (None, "") else str(out[key])
    out["protocol_version"] = out["protocol_version"] if out.get("protocol_version") is not None else 0
    return out


def _deduplicate(rows: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (trial id, evaluation network): a trial copied into two results directories counts once.

    A trial evaluated under a cross-architecture protocol has one row per network, all with its trial
    id, so the network is part of the key. The kept row is chosen by content (ok first, then the latest
    end time), never by read order, so the output does not depend on the order of files or directories.
    """
    by_id: dict[tuple[str, str], dict[str, Any]] = {}
    for row in rows:
        key = (row["trial_id"], row["eval_network"])
        current = by_id.get(key)
        if current is None or _preference(row) > _preference(current):
            by_id[key] = row
    return [by_id[key] for key in sorted(by_id)]


def _preference(row: Mapping[str, Any]) -> tuple[bool, str, str]:
    return row["status"] == "ok", row["end_time"], json.dumps(row, sort_keys=True, default=str)


def _accuracies(row: Mapping[str, Any]) -> list[float]:
    """The accuracies of a row's evaluation models; ``[acc_mean]`` when only the mean was stored."""
    if row.get("acc_per_model"):
        return list(row["acc_per_model"])
    return [row["acc_mean"]] if row.get("acc_mean") is not None else []


def _pool(rows: Sequence[Mapping[str, Any]]) -> Cell:
    """Pool the rows of one configuration at one IPC into a cell (order-independent)."""
    values = sorted(100.0 * v for row in rows for v in _accuracies(row))
    total = summarize(values)
    assert total is not None  # rows without accuracies are failures, never pooled
    extra = {}
    for name, _ in BIAS_METRICS + LONGTAIL_METRICS:
        summary = summarize(100.0 * row[name] for row in rows if row.get(name) is not None)
        if summary is not None:
            extra[name] = summary
    # ADSA's tau is a setting, not an accuracy: kept as it is.
    tau = summarize(float(row["label_tau"]) for row in rows if row.get("label_tau") is not None)
    if tau is not None:
        extra["label_tau"] = tau
    sizes = sorted(int(row["set_bytes"]) for row in rows if row.get("set_bytes") is not None)
    return Cell(
        mean=total.mean,
        std=total.std,
        n=total.n,
        n_seeds=len({row["seed"] for row in rows}),
        seed_means=seed_means(rows, _accuracies),
        extra=extra,
        distill_seconds=_distill_seconds_once(rows),
        eval_seconds=math.fsum(sorted(float(row.get("eval_seconds") or 0.0) for row in rows)),
        set_bytes_mean=math.fsum(sizes) / len(sizes) if sizes else None,
    )


def _distill_seconds_once(rows: Iterable[Mapping[str, Any]]) -> float:
    """Distillation seconds of the distinct trials of ``rows`` (one row per evaluation network repeats them)."""
    per_trial: dict[str, float] = {}
    for row in rows:
        seconds = float(row.get("distill_seconds") or 0.0)
        per_trial[row["trial_id"]] = max(per_trial.get(row["trial_id"], 0.0), seconds)
    return math.fsum(sorted(per_trial.values()))


def _shown(value: float) -> Decimal | None:
    """A mean at the precision shown in the table (ties are judged on what the reader sees)."""
    return Decimal(f"{value:.2f}") if math.isfinite(value) else None


def _best_mean(cells: Iterable[Cell | None]) -> Decimal | None:
    shown = [s for s in (_shown(c.mean) for c in cells if c is not None) if s is not None]
    return max(shown) if shown else None


def _config_sort_key(config: tuple[str, str, str]) -> tuple[Any, ...]:
    method, weighting, labels = config
    # "none" / "native" first, then the others naturally; raw strings break case-only ties.
    return (
        natural_key(method),
        weighting != "none",
        natural_key(weighting),
        labels != "native",
        natural_key(labels),
        config,
    )


def _is_quick(protocol: str) -> bool:
    """Whether the registry marks ``protocol`` quick; unknown or broken protocols count as not quick."""
    from distillbench.harness.plugins import PROTOCOLS

    try:
        return bool(getattr(PROTOCOLS.get(protocol), "quick", False))
    except DistillBenchError:  # a plugin no longer installed must not break the leaderboard
        return False


def reported_text(number: ReportedNumber, mean: float) -> str:
    """``reported 97.4 [DC-readme], diff -0.28`` (with ``UNVERIFIED`` or ``secondary`` when flagged)."""
    flag = f" {number.flag}" if number.flag else ""
    return f"reported {number.format_value()}{flag} [{number.source.key}], diff {mean - number.value:+.2f}"


# ------------------------------------------------------------------------------------- tuning
@dataclasses.dataclass(frozen=True)
class TuningRow:
    """One search of a tuned block and what came of it (search rows never enter the tables).

    Attributes:
        dataset: dataset display name.
        protocol_id: ``name@version``.
        label: the tuned configuration's row name in the tables, e.g. ``dm (tuned, 16 trials)``.
        ipc: samples per class.
        budget: the block's budget, e.g. ``16 trials``.
        spent: budget the search used (from its final rows; from its search rows while it has none).
        trials: search trials with a row; stopped: of those, stopped early by ASHA; failed: with an error.
        chosen: the chosen parameters (JSON), or None before the final trials ran.
        objective: validation accuracy (percent) of the chosen configuration in the search, when known.
        search_hours: wall hours of the search trials (start to end of each, summed).
        final_hours: wall hours of the final trials.
        final_trials: final trials with a row.
    """

    dataset: str
    protocol_id: str
    label: str
    ipc: int
    budget: str
    spent: float | None
    trials: int
    stopped: int
    failed: int
    chosen: str | None
    objective: float | None
    search_hours: float
    final_hours: float
    final_trials: int


def untuned_method(method: str, tune_params: str | None) -> str:
    """``method`` without the parameters a search chose: ``dm[iterations=200,lr_img=3.1]`` -> ``dm[iterations=200]``."""
    from distillbench.harness.params import parse_spec

    try:
        name, raw = parse_spec(method)
        chosen = set(json.loads(tune_params or "{}"))
    except (DistillBenchError, ValueError):
        return method
    kept = {k: v for k, v in raw.items() if k not in chosen}
    return f"{name}[{','.join(f'{k}={v}' for k, v in kept.items())}]" if kept else name


def tuned_label(row: Mapping[str, Any]) -> str:
    """The method name of a final row in the tables: ``dm (tuned, 16 trials)``, beside the untuned ``dm``."""
    return f"{untuned_method(row['method'], row.get('tune_params'))} (tuned, {row.get('tune_budget') or 'budget?'})"


def _hours(row: Mapping[str, Any]) -> float:
    import datetime

    try:
        start = datetime.datetime.fromisoformat(str(row.get("start_time")))
        end = datetime.datetime.fromisoformat(str(row.get("end_time")))
    except ValueError:
        return 0.0
    return max(0.0, (end - start).total_seconds()) / 3600.0


def build_tuning(search_rows: Iterable[Mapping[str, Any]], final_rows: Iterable[Mapping[str, Any]]) -> list[TuningRow]:
    """One :class:`TuningRow` per tuning id of ``search_rows`` and ``final_rows`` (normalised rows, any status)."""
    searches: dict[str, list[Mapping[str, Any]]] = {}
    finals: dict[str, list[Mapping[str, Any]]] = {}
    for row in search_rows:
        searches.setdefault(row["tuning_id"], []).append(row)
    for row in final_rows:
        finals.setdefault(row["tuning_id"], []).append(row)
    out = []
    for tuning_id in sorted(set(searches) | set(finals)):
        rows_s, rows_f = searches.get(tuning_id, []), finals.get(tuning_id, [])
        first = (rows_f or rows_s)[0]
        per_trial = {r["trial_id"]: r for r in rows_s}
        chosen = next((r.get("tune_params") for r in rows_f if r.get("tune_params")), None)
        picked = [r for r in per_trial.values() if chosen is not None and r.get("tune_params") == chosen]
        scored = [r["val_acc_mean"] for r in picked if r.get("status") == "ok" and r.get("val_acc_mean") is not None]
        spent = next((r["tune_budget_spent"] for r in rows_f if r.get("tune_budget_spent") is not None), None)
        out.append(
            TuningRow(
                dataset=first["dataset"],
                protocol_id=f"{first['protocol']}@{first['protocol_version']}",
                label=tuned_label(first),
                ipc=first["ipc"],
                budget=first.get("tune_budget") or "",
                spent=spent,
                trials=len(per_trial),
                stopped=sum(1 for r in per_trial.values() if r.get("status") == "stopped"),
                failed=sum(1 for r in per_trial.values() if r.get("status") == "error"),
                chosen=chosen,
                objective=100.0 * max(scored) if scored else None,
                search_hours=math.fsum(sorted(_hours(r) for r in per_trial.values())),
                final_hours=math.fsum(sorted(_hours(r) for r in {r["trial_id"]: r for r in rows_f}.values())),
                final_trials=len({r["trial_id"] for r in rows_f}),
            )
        )
    out.sort(key=lambda t: (natural_key(t.dataset), t.dataset, natural_key(t.protocol_id), natural_key(t.label), t.ipc))
    return out


def unequal_budgets(tuning: Sequence[TuningRow]) -> list[str]:
    """Lines naming each (dataset, protocol) whose tuned rows had different budgets (not a fair comparison)."""
    budgets: dict[tuple[str, str], dict[str, str]] = {}
    for t in tuning:
        budgets.setdefault((t.dataset, t.protocol_id), {})[t.label] = t.budget
    lines = []
    for (dataset, protocol_id), by_label in sorted(budgets.items()):
        if len(set(by_label.values())) > 1:
            shown = ", ".join(f"{label}: {budget}" for label, budget in sorted(by_label.items()))
            lines.append(f"{dataset}, {protocol_id}: tuned with unequal budgets ({shown})")
    return lines


# ------------------------------------------------------------------------------------- the page
@dataclasses.dataclass(frozen=True)
class Board:
    """What a leaderboard page shows, built once from the rows and rendered as Markdown and as HTML.

    Attributes:
        tables: from :func:`build_tables`.
        failures: failure dicts as in :class:`~distillbench.leaderboard.build.LeaderboardResult`, sorted.
        n_rows: rows read; n_ok: rows in the tables (the summary line).
        skipped_files: names of skipped unreadable or foreign files.
        filters: the filters applied when building, shown in the summary.
        cost: rows of the cost table, from :func:`build_cost`.
        provenance: versions and protocols of the rows, from :func:`build_provenance`.
        tuning: the searches of tuned blocks, from :func:`build_tuning`.
    """

    tables: Sequence[Table]
    failures: Sequence[Mapping[str, Any]] = ()
    n_rows: int = 0
    n_ok: int = 0
    skipped_files: Sequence[str] = ()
    filters: Mapping[str, str] = dataclasses.field(default_factory=dict)
    cost: Sequence[CostRow] = ()
    provenance: Provenance | None = None
    tuning: Sequence[TuningRow] = ()
