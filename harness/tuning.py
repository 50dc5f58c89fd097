"""Fair tuning: the ``tune:`` section of a grid block, parsed, validated and expanded into searches.

A grid block may carry a ``tune:`` section. Every (dataset, method, ipc, weighting, labels, protocol) of
the block then gets its own *search*: up to a budget of search trials, each a full trial of the method
with parameters drawn from the block's space, scored on the **validation split**; the configuration with
the best objective is chosen from the search rows, and the *final* trials run it on the block's seeds
under the block's protocol. Only the final trials are results; search rows are the audit trail::

    grids:
      - dataset: [digits]
        method: ["dm[iterations=200]", dc]
        ipc: [1, 10]
        seed: [0, 1, 2]                # the seeds of the final, reported trials
        tune:
          objective: val_acc_mean      # a validation metric only
          budget: {trials: 16}         # or {trial_hours: 2.5}; one budget for every method of the block
          search: optuna               # random | optuna (TPE) | hyperopt
          scheduler: asha              # or none, or {name: asha, grace_period: 1, reduction_factor: 2, probes: 3}
          seed: 0                      # of the search algorithm and of the tuning seeds
          concurrency: 2               # search trials at once (default: as many as the resources allow)
          space:
            dm: {lr_img: loguniform(0.1, 100), batch_real: choice(64, 128, 256)}
            dc: {lr_img: loguniform(0.01, 1)}

Rules, each enforced here before anything runs (a violation is a :class:`ConfigError`, one line):

* **Validation only.** The objective must be a column of the ``validation`` family of the row schema
  (:data:`distillbench.harness.store.COLUMNS`); a test metric is refused.
* **One budget per block**, so every method (and every cell) of the block gets the same: ``trials`` search
  trials, or ``trial_hours`` of search-trial wall time. A search trial that early stopping (ASHA) ended
  counts as one trial, or with the hours it actually ran; a trial that failed with an error is not a result
  and does not count (the search runs another in its place, at most ``budget`` replacements per run).
* **Tuning seeds are not final seeds.** Each search runs every configuration on one tuning seed,
  ``derive_seed("tune", seed, <cell>)`` (31 bits), re-derived while it collides with one of the block's
  seeds; configurations compete on the same seed, and the reported numbers come from seeds the search
  never saw.
* **Spaces fit the method.** A space names bare method names of the block; each parameter must be one of
  the method's ``Params``, not fixed in the block's method spec, with a distribution of its type whose
  bounds (and every choice) the method accepts.

Distributions are parsed without ``eval``: ``uniform(a, b)``, ``loguniform(a, b)`` (``a > 0``),
``quniform(a, b, q)``, ``randint(a, b)`` and ``lograndint(a, b)`` (integers, **both bounds included**), and
``choice(v1, v2, ...)`` (numbers, ``true``/``false``, ``none``, or text such as ``convnet[width=64]``).

Nothing here imports Ray or torch: :mod:`distillbench.harness.scheduler` turns a :class:`Search` into a
Tune search; the probe (the cheap intermediate evaluation early stopping needs) is
:mod:`distillbench.harness.probe`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import json
import math
import re
import types
import typing
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from distillbench.harness.errors import ConfigError, DistillBenchError, UnknownNameError
from distillbench.harness.params import INT64_MAX, format_value, parse_spec

if TYPE_CHECKING:
    from distillbench.harness.spec import TrialSpec

SEARCHES = ("random", "optuna", "hyperopt")
# pip package of each search library (the import name is the same).
SEARCH_PACKAGES = {"optuna": "optuna", "hyperopt": "hyperopt"}
SCHEDULERS = ("none", "asha")
TUNE_KEYS = ("objective", "budget", "search", "scheduler", "seed", "concurrency", "space")
ASHA_KEYS = ("name", "grace_period", "reduction_factor", "probes", "probe_epochs")
DISTRIBUTIONS = ("uniform", "loguniform", "quniform", "randint", "lograndint", "choice")
# A search beyond this many trials is a typo (or several grids); a time budget beyond a year of trial time too.
MAX_TRIALS = 100_000
MAX_TRIAL_HOURS = 24 * 365.0
ROLES = ("search", "final")


# ------------------------------------------------------------------------------------- distributions
@dataclasses.dataclass(frozen=True)
class Distribution:
    """One parameter's search distribution.

    Attributes:
        kind: one of :data:`DISTRIBUTIONS`.
        args: the bounds (and step ``q``) of numeric kinds, or the values of ``choice``.
        text: the canonical spelling, e.g. ``loguniform(0.1, 100.0)`` (what the space hash covers).
    """

    kind: str
    args: tuple[Any, ...]
    text: str

    @property
    def integer(self) -> bool:
        """Whether the values are integers."""
        return self.kind in ("randint", "lograndint")

    @property
    def numeric(self) -> bool:
        return self.kind != "choice"

    def edges(self) -> tuple[Any, ...]:
        """The values whose validity implies every value's: the bounds, or each choice."""
        return self.args if self.kind == "choice" else self.args[:2]


_CALL = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_]*)\s*\((.*)\)\s*$", re.DOTALL)


def _split_args(body: str) -> list[str]:
    """Split ``body`` at top-level commas (brackets and quotes nest: ``convnet[width=64,depth=2]``)."""
    parts, depth, quote, start = [], 0, "", 0
    for i, ch in enumerate(body):
        if quote:
            quote = "" if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch in "[(":
            depth += 1
        elif ch in "])":
            depth -= 1
        elif ch == "," and depth == 0:
            parts.append(body[start:i])
            start = i + 1
    parts.append(body[start:])
    return [p.strip() for p in parts]


def _scalar(text: str) -> Any:
    """A literal from a distribution's argument list: int, float, bool, none, or text (quotes optional)."""
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"":
        return text[1:-1]
    lowered = text.lower()
    if lowered in ("true", "false"):
        return lowered == "true"
    if lowered in ("none", "null"):
        return None
    if re.fullmatch(r"[+-]?[0-9][0-9_]*", text):
        return int(text.replace("_", ""))
    try:
        value = float(text.replace("_", ""))
    except ValueError:
        return text
    return value if math.isfinite(value) else text


def parse_distribution(value: Any, where: str) -> Distribution:
    """Parse one distribution of a space (a YAML list is a ``choice``).

    The kinds: ``uniform(a, b)``, ``loguniform(a, b)``, ``quniform(a, b, q)``, ``randint(a, b)``,
    ``lograndint(a, b)`` and ``choice(v, ...)``.

    Raises:
        ConfigError: an unknown distribution, a malformed argument list, or bounds that define no range.
    """
    if isinstance(value, list):
        if not value:
            raise ConfigError(f"{where}: an empty list has nothing to choose from; list at least one value")
        args: list[Any] = list(value)
        kind = "choice"
    else:
        if not isinstance(value, str):
            raise ConfigError(
                f"{where}: expected a distribution such as loguniform(0.1, 100) or choice(64, 128), got {value!r}"
            )
        match = _CALL.match(value)
        if not match:
            raise ConfigError(
                f"{where}: {value!r} is not a distribution; write one of "
                f"{', '.join(d + '(...)' for d in DISTRIBUTIONS)}"
            )
        kind, body = match.group(1), match.group(2)
        if kind not in DISTRIBUTIONS:
            import difflib

            close = difflib.get_close_matches(kind, DISTRIBUTIONS, n=1)
            hint = f" Did you mean {close[0]}?" if close else ""
            raise ConfigError(
                f"{where}: unknown distribution {kind!r}.{hint} Valid distributions: {', '.join(DISTRIBUTIONS)}"
            )
        raw = _split_args(body)
        if any(not a for a in raw):
            raise ConfigError(f"{where}: {value!r} has an empty argument")
        args = [_scalar(a) for a in raw]
    if kind == "choice":
        keyed = [json.dumps(a, sort_keys=True) for a in args]
        if len(set(keyed)) != len(keyed):
            raise ConfigError(f"{where}: choice(...) lists a value twice; list each value once")
        return Distribution(kind, tuple(args), f"choice({', '.join(_text(a) for a in args)})")
    arity = 3 if kind == "quniform" else 2
    if len(args) != arity:
        shape = "(low, high, q)" if arity == 3 else "(low, high)"
        raise ConfigError(f"{where}: {kind} takes {arity} numbers {shape}, got {len(args)} in {value!r}")
    for a in args:
        if isinstance(a, bool) or not isinstance(a, int | float):
            raise ConfigError(f"{where}: {kind} takes numbers, got {a!r} in {value!r}")
    if kind in ("randint", "lograndint"):
        if any(not isinstance(a, int) for a in args):
            raise ConfigError(f"{where}: {kind} takes whole numbers (both bounds included), got {value!r}")
        low, high = args
        if low > high:
            raise ConfigError(f"{where}: {kind}({low}, {high}) has its low bound above its high bound")
        if kind == "lograndint" and low < 1:
            raise ConfigError(f"{where}: lograndint needs a low bound of at least 1, got {low}")
        if high >= INT64_MAX:
            raise ConfigError(f"{where}: {kind} bound {high} does not fit a 64-bit integer")
    else:
        low, high = float(args[0]), float(args[1])
        if not low < high:
            raise ConfigError(f"{where}: {kind}({args[0]}, {args[1]}) needs low < high")
        if kind == "loguniform" and low <= 0:
            raise ConfigError(f"{where}: loguniform needs a positive low bound, got {args[0]}")
        if kind == "quniform" and not float(args[2]) > 0:
            raise ConfigError(f"{where}: quniform needs a positive step q, got {args[2]}")
        args = [float(a) for a in args]
    return Distribution(kind, tuple(args), f"{kind}({', '.join(_text(a) for a in args)})")


def _text(value: Any) -> str:
    text = format_value(value)
    return json.dumps(text) if isinstance(value, str) and ("," in text or "(" in text or text != text.strip()) else text


# ------------------------------------------------------------------------------------- settings
@dataclasses.dataclass(frozen=True)
class Budget:
    """The search budget of every cell of a block: ``trials`` search trials, or ``trial_hours`` of them."""

    trials: int | None = None
    trial_hours: float | None = None

    @property
    def unit(self) -> str:
        return "trials" if self.trials is not None else "trial-hours"

    @property
    def amount(self) -> float:
        return float(self.trials) if self.trials is not None else float(self.trial_hours or 0.0)

    @property
    def text(self) -> str:
        """``16 trials`` or ``2.5 trial-hours`` (the ``tune_budget`` column)."""
        return f"{self.trials} trials" if self.trials is not None else f"{format_value(self.trial_hours)} trial-hours"


@dataclasses.dataclass(frozen=True)
class AshaSettings:
    """Early stopping of search trials by ASHA on the probe's validation accuracy.

    A probe is a cheap evaluation of the synthetic set while it is distilled (:mod:`~distillbench.harness.probe`):
    ``probes`` of them, evenly spaced (after 1/(probes+1), 2/(probes+1), ... of the iterations), each
    training one small network for ``probe_epochs`` epochs and scoring it on the validation split.
    ASHA's time unit is the probe index: its rungs are at ``grace_period * reduction_factor**k`` probes.
    """

    grace_period: int = 1
    reduction_factor: int = 2
    probes: int = 3
    probe_epochs: int = 50


@dataclasses.dataclass(frozen=True)
class TuneSettings:
    """A block's parsed ``tune:`` section (see the module docstring)."""

    objective: str
    budget: Budget
    search: str
    scheduler: AshaSettings | None
    seed: int
    space: tuple[tuple[str, tuple[tuple[str, Distribution], ...]], ...]  # (method, ((param, dist), ...)), sorted
    concurrency: int | None = None

    def method_space(self, method: str) -> tuple[tuple[str, Distribution], ...]:
        return dict(self.space).get(method, ())

    def identity(self) -> dict[str, Any]:
        """What makes two searches the same search (the space is hashed per method, see :func:`space_hash`)."""
        return {
            "objective": self.objective,
            "budget": dataclasses.asdict(self.budget),
            "search": self.search,
            "scheduler": dataclasses.asdict(self.scheduler) if self.scheduler else None,
            "seed": self.seed,
        }


def _int(value: Any, where: str, minimum: int, maximum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{where} must be a whole number, got {value!r}")
    if not minimum <= value <= maximum:
        raise ConfigError(f"{where} must be between {minimum} and {maximum}, got {value}")
    return value


def parse_budget(value: Any, where: str) -> Budget:
    """``{trials: N}`` or ``{trial_hours: H}``; zero or negative is an error."""
    if not isinstance(value, dict) or len(value) != 1 or next(iter(value)) not in ("trials", "trial_hours"):
        raise ConfigError(
            f"{where}.budget must be {{trials: N}} or {{trial_hours: H}} (one budget for every method of the block), "
            f"got {value!r}"
        )
    key, amount = next(iter(value.items()))
    if isinstance(amount, bool) or not isinstance(amount, int | float) or not math.isfinite(amount):
        raise ConfigError(f"{where}.budget.{key} must be a number, got {amount!r}")
    if amount <= 0:
        raise ConfigError(f"{where}.budget.{key} must be positive, got {amount}: a search needs at least one trial")
    if key == "trials":
        return Budget(trials=_int(amount, f"{where}.budget.trials", 1, MAX_TRIALS))
    if amount > MAX_TRIAL_HOURS:
        raise ConfigError(f"{where}.budget.trial_hours must be at most {MAX_TRIAL_HOURS:g}, got {amount}")
    return Budget(trial_hours=float(amount))


def parse_scheduler(value: Any, where: str) -> AshaSettings | None:
    """``none``, ``asha`` or ``{name: asha, grace_period, reduction_factor, probes, probe_epochs}``."""
    if value is None or value == "none":
        return None
    if value == "asha":
        return AshaSettings()
    if isinstance(value, str):
        raise ConfigError(f"{where}.scheduler must be one of {', '.join(SCHEDULERS)}, got {value!r}")
    if not isinstance(value, dict) or value.get("name") not in SCHEDULERS:
        raise ConfigError(
            f"{where}.scheduler must be none, asha or {{name: asha, grace_period: 1, reduction_factor: 2, probes: 3, "
            f"probe_epochs: 50}}, got {value!r}"
        )
    unknown = sorted(set(value) - set(ASHA_KEYS))
    if unknown:
        raise ConfigError(f"{where}.scheduler: unknown keys {unknown}; valid keys: {', '.join(ASHA_KEYS)}")
    if value["name"] == "none":
        if len(value) > 1:
            raise ConfigError(f"{where}.scheduler: settings {sorted(set(value) - {'name'})} need name: asha")
        return None
    d = AshaSettings()
    settings = AshaSettings(
        grace_period=_int(value.get("grace_period", d.grace_period), f"{where}.scheduler.grace_period", 1, 1000),
        reduction_factor=_int(
            value.get("reduction_factor", d.reduction_factor), f"{where}.scheduler.reduction_factor", 2, 1000
        ),
        probes=_int(value.get("probes", d.probes), f"{where}.scheduler.probes", 1, 1000),
        probe_epochs=_int(value.get("probe_epochs", d.probe_epochs), f"{where}.scheduler.probe_epochs", 1, 100_000),
    )
    if settings.grace_period > settings.probes:
        raise ConfigError(
            f"{where}.scheduler: grace_period {settings.grace_period} is after the last of {settings.probes} probes, "
            "so ASHA would never stop a trial; lower grace_period or raise probes"
        )
    return settings


def validation_objectives() -> tuple[str, ...]:
    """The row columns a search may optimise: the ``validation`` family of the schema."""
    from distillbench.harness.store import column_names

    return column_names(family="validation")


def parse_objective(value: Any, where: str) -> str:
    """A validation metric; a test metric (any other metric column) is refused."""
    from distillbench.harness.store import COLUMNS

    allowed = validation_objectives()
    if value in allowed:
        return str(value)
    metric = next((c for c in COLUMNS if c.name == value and c.group == "metrics"), None)
    if metric is not None:
        raise ConfigError(
            f"{where}.objective {value!r} is measured on the test split, which a search must never see (choosing "
            f"by it would report a tuned-on-test number); use a validation metric: {', '.join(allowed)}"
        )
    raise ConfigError(f"{where}.objective must be a validation metric ({', '.join(allowed)}), got {value!r}")


def check_search_library(search: str, where: str) -> None:
    """Raise unless the library behind ``search`` is importable here (random needs none)."""
    package = SEARCH_PACKAGES.get(search)
    if package is not None and importlib.util.find_spec(package) is None:
        raise ConfigError(
            f"{where}.search {search!r} needs the {package} package, which is not installed: pip install {package} "
            "(or pip install 'distillbench[tune]'), or use search: random"
        )


def parse_tune(value: Any, where: str) -> TuneSettings:
    """Parse a block's ``tune:`` section (the space is checked against the methods by :func:`check_space`).

    Raises:
        ConfigError: an unknown key, a test metric as objective, a zero or negative budget, an unknown search
            or scheduler, a search library that is not installed, or a malformed space.
    """
    where = f"{where}: tune"
    if not isinstance(value, dict):
        raise ConfigError(f"{where} must be a mapping with objective, budget, search and space, got {value!r}")
    unknown = sorted(set(value) - set(TUNE_KEYS))
    if unknown:
        raise ConfigError(f"{where}: unknown keys {unknown}; valid keys: {', '.join(TUNE_KEYS)}")
    for required in ("budget", "space"):
        if required not in value:
            raise ConfigError(f"{where}: missing {required!r}; a search needs a budget and a space")
    objective = parse_objective(value.get("objective", "val_acc_mean"), where)
    budget = parse_budget(value["budget"], where)
    search = value.get("search", "random")
    if search not in SEARCHES:
        raise ConfigError(f"{where}.search must be one of {', '.join(SEARCHES)}, got {search!r}")
    check_search_library(search, where)
    scheduler = parse_scheduler(value.get("scheduler"), where)
    seed = _int(value.get("seed", 0), f"{where}.seed", 0, INT64_MAX)
    concurrency = value.get("concurrency")
    if concurrency is not None:
        concurrency = _int(concurrency, f"{where}.concurrency", 1, 100_000)
    space = value["space"]
    if not isinstance(space, dict) or not space:
        raise ConfigError(f"{where}.space must map bare method names to {{parameter: distribution}}, got {space!r}")
    parsed = []
    for method, params in space.items():
        if not isinstance(method, str) or "[" in method:
            raise ConfigError(f"{where}.space keys are bare method names such as dm or mtt, got {method!r}")
        if not isinstance(params, dict) or not params:
            raise ConfigError(
                f"{where}.space.{method} must map parameters to distributions, e.g. {{lr_img: loguniform(0.1, 100)}}, "
                f"got {params!r}"
            )
        dists = []
        for name, dist in params.items():
            if not isinstance(name, str):
                raise ConfigError(f"{where}.space.{method}: parameter names are text, got {name!r}")
            dists.append((name, parse_distribution(dist, f"{where}.space.{method}.{name}")))
        parsed.append((method, tuple(sorted(dists))))
    return TuneSettings(
        objective=objective,
        budget=budget,
        search=search,
        scheduler=scheduler,
        seed=seed,
        space=tuple(sorted(parsed)),
        concurrency=concurrency,
    )


# ------------------------------------------------------------------------------------- method checks
def _base_type(tp: Any) -> tuple[Any, bool]:
    """``(type without None, whether None is allowed)``."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        optional = len(args) != len(typing.get_args(tp))
        return (args[0] if len(args) == 1 else typing.Union[tuple(args)]), optional  # noqa: UP007
    return tp, False


def _kind_fits(dist: Distribution, tp: Any) -> str | None:
    """Why ``dist`` cannot produce values of type ``tp``, or None when it can."""
    base, _ = _base_type(tp)
    if dist.kind == "choice":
        return None  # each value is checked by building the parameters
    if base is float:
        return None
    if base is int:
        if dist.integer:
            return None
        return "is an integer parameter; use randint(a, b), lograndint(a, b) or choice(...)"
    return "takes no numeric range; use choice(...) with its values"


def check_space(settings: TuneSettings, methods: Iterable[str], where: str) -> None:
    """Check the space against the block's methods (spec strings such as ``dm[iterations=200]``).

    Every method of the block needs a space (a search with nothing to search is not tuning), every space a
    method of the block; each parameter must be one of the method's ``Params``, not fixed in the method's
    spec, and every edge of its distribution (both bounds, or each choice) must be a value the method accepts
    together with the spec's other parameters.

    Raises:
        ConfigError, UnknownNameError: the first problem, naming the parameter, its type or range and the method.
    """
    from distillbench.harness.params import _type_name
    from distillbench.harness.plugins import METHODS

    where = f"{where}: tune.space"
    specs = list(dict.fromkeys(methods))
    names = {}
    for spec in specs:
        try:
            names[spec] = parse_spec(spec)[0]
        except ConfigError:
            continue  # resolving the trials words this error
    spaced = dict(settings.space)
    for method in spaced:
        try:
            METHODS.get(method)
        except UnknownNameError as exc:
            raise UnknownNameError(f"{where}: {exc}") from None
        if method not in names.values():
            raise ConfigError(
                f"{where}.{method}: the block has no method {method!r} (its methods: {', '.join(specs)}); remove the "
                "space or add the method"
            )
    for spec, name in names.items():
        if name not in spaced:
            raise ConfigError(
                f"{where}: method {spec!r} has no space; every method of a tuned block is tuned with the same budget, "
                f"so give tune.space.{name} at least one parameter (or move the method to a block without tune:)"
            )
        cls = METHODS.get(name)
        params_cls = getattr(cls, "Params", None)
        fields = {f.name: f for f in dataclasses.fields(params_cls)} if params_cls is not None else {}
        hints = typing.get_type_hints(params_cls) if params_cls is not None else {}
        _, fixed = parse_spec(spec)
        for param, dist in spaced[name]:
            if param not in fields or not fields[param].init:
                valid = ", ".join(sorted(f for f in fields if fields[f].init)) or "(none)"
                raise ConfigError(
                    f"{where}.{name}.{param}: method {name!r} has no parameter {param!r}; its parameters: {valid}"
                )
            if param in fixed:
                raise ConfigError(
                    f"{where}.{name}.{param}: {param!r} is both fixed in {spec!r} and searched; remove one of them"
                )
            type_text = _type_name(hints[param])
            problem = _kind_fits(dist, hints[param])
            if problem:
                raise ConfigError(
                    f"{where}.{name}.{param}: {dist.text} does not fit parameter {param!r} ({type_text}) of method "
                    f"{name!r}: it {problem}"
                )
            for edge in dist.edges():
                try:
                    METHODS.resolve(spec, {param: edge})
                except DistillBenchError as exc:
                    what = "the choice" if dist.kind == "choice" else "the bound"
                    raise ConfigError(
                        f"{where}.{name}.{param}: {what} {format_value(edge)} of {dist.text} is outside what parameter "
                        f"{param!r} ({type_text}) of method {name!r} accepts ({_reason(exc)}); narrow the distribution"
                    ) from None


def _reason(exc: Exception) -> str:
    text = str(exc)
    return text.split(": ", 1)[1] if text.startswith("invalid parameters for ") and ": " in text else text


def space_hash(space: Iterable[tuple[str, Distribution]]) -> str:
    """A short hash of one method's space (parameter names and canonical distributions)."""
    doc = [[name, dist.text] for name, dist in sorted(space, key=lambda item: item[0])]
    return hashlib.sha256(json.dumps(doc, separators=(",", ":")).encode()).hexdigest()[:16]


# ------------------------------------------------------------------------------------- searches
@dataclasses.dataclass(frozen=True)
class Search:
    """The search of one (dataset, method, ipc, weighting, labels, protocol) of a tuned block.

    Attributes:
        tuning_id: hash of the cell (resolved, with the tuning seed), the settings and the method's space.
        settings: the block's tune settings.
        base: the cell as a trial spec: the block's method spec (before tuning) and the tuning seed.
        space: this method's ``(parameter, distribution)`` pairs.
        space_hash: :func:`space_hash` of ``space``.
        final_seeds: the block's seeds, on which the chosen configuration runs.
        method_name: the bare method name.
    """

    tuning_id: str
    settings: TuneSettings
    base: TrialSpec
    space: tuple[tuple[str, Distribution], ...]
    space_hash: str
    final_seeds: tuple[int, ...]
    method_name: str

    @property
    def budget(self) -> Budget:
        return self.settings.budget

    @property
    def tuning_seed(self) -> int:
        return self.base.seed

    def label(self) -> str:
        """``digits dm[iterations=200] ipc=1`` plus non-default weighting and labels, for messages."""
        extra = "".join(
            f" {axis}={value}"
            for axis, value, default in (
                ("weighting", self.base.weighting, "none"),
                ("labels", self.base.labels, "native"),
            )
            if value != default
        )
        return f"{self.base.dataset} {self.base.method} ipc={self.base.ipc}{extra} ({self.base.protocol})"

    def trial(self, params: Mapping[str, Any], ordinal: int) -> TrialSpec:
        """The search trial ``ordinal`` (0, 1, ...) with ``params``, on the tuning seed."""
        return dataclasses.replace(
            self.base, method=with_params(self.base.method, params), tuning=f"{self.tuning_id}:search:{ordinal}"
        )

    def finals(self, params: Mapping[str, Any]) -> list[TrialSpec]:
        """The final trials: the chosen ``params`` on each of the block's seeds."""
        method = with_params(self.base.method, params)
        return [
            dataclasses.replace(self.base, method=method, seed=seed, tuning=f"{self.tuning_id}:final")
            for seed in self.final_seeds
        ]

    def columns(self, params: Mapping[str, Any], spent: float | None = None) -> dict[str, Any]:
        """The tuning columns a search or final row gets from the driver (identity columns come from the spec)."""
        return {
            "tune_budget": self.budget.text,
            "tune_space_hash": self.space_hash,
            "tune_params": params_json(params),
            "tune_budget_spent": spent,
        }


def params_json(params: Mapping[str, Any]) -> str:
    """Parameters as canonical JSON (the ``tune_params`` column)."""
    return json.dumps(dict(params), sort_keys=True, separators=(",", ":"))


def with_params(method: str, params: Mapping[str, Any]) -> str:
    """``method`` (a spec string) with ``params`` added: ``dm[iterations=200]`` -> ``dm[iterations=200,lr_img=3.1]``."""
    name, raw = parse_spec(method)
    merged = {**raw, **{k: format_value(v) for k, v in sorted(params.items())}}
    return f"{name}[{','.join(f'{k}={v}' for k, v in merged.items())}]" if merged else name


def parse_tuning(text: str | None) -> tuple[str, str, int | None] | None:
    """``(tuning_id, role, ordinal)`` from a trial spec's ``tuning`` field (``id:search:3`` or ``id:final``)."""
    if not text:
        return None
    parts = text.split(":")
    if len(parts) == 3 and parts[1] == "search" and parts[2].isdigit():
        return parts[0], "search", int(parts[2])
    if len(parts) == 2 and parts[1] == "final":
        return parts[0], "final", None
    raise ConfigError(f"malformed tuning reference {text!r}: expected '<tuning_id>:search:<n>' or '<tuning_id>:final'")


def identity(text: str | None) -> dict[str, Any] | None:
    """The ``tuning`` part of a trial's canonical spec (None for a trial that is not tuned)."""
    parsed = parse_tuning(text)
    if parsed is None:
        return None
    tuning_id, role, ordinal = parsed
    return {"id": tuning_id, "role": role, **({"trial": ordinal} if ordinal is not None else {})}


def tuning_seed(settings: TuneSettings, cell: Mapping[str, Any], final_seeds: Iterable[int]) -> int:
    """The seed of every search trial of a cell: derived from the settings' seed and the cell, never a final seed."""
    from distillbench.harness.seeding import derive_seed

    taken = set(final_seeds)
    seed = derive_seed("tune", settings.seed, json.dumps(cell, sort_keys=True))
    while seed in taken:
        seed = derive_seed("tune", "again", seed)
    return seed


def expand_searches(
    settings: TuneSettings, values: Mapping[str, list[Any]], grid: str, resolver: Any, where: str
) -> list[Search]:
    """One :class:`Search` per (dataset, method, ipc, weighting, labels, protocol) of a tuned block.

    Each cell is resolved as a trial (so a bad dataset or an incompatible pair fails here, naming the block),
    and so is the cell with every edge of every distribution (a network choice too deep for the data, say).

    Raises:
        ConfigError, UnknownNameError, IncompatibleError: as :func:`distillbench.harness.spec.resolve_trial`.
    """
    import itertools

    from distillbench.harness.spec import TrialSpec

    final_seeds = tuple(dict.fromkeys(values["seed"]))
    searches: dict[str, Search] = {}
    cell_axes = ("dataset", "method", "ipc", "weighting", "labels", "protocol")
    for combo in itertools.product(*(values[a] for a in cell_axes)):
        cell = dict(zip(cell_axes, combo, strict=True))
        probe = resolver.resolve(TrialSpec(grid=grid, seed=0, **cell))
        seeds = tuple(resolver.resolve(TrialSpec(grid=grid, seed=s, **cell)).spec.seed for s in final_seeds)
        name = probe.method.name
        space = settings.method_space(name)
        for param, dist in space:
            for edge in dist.edges():
                try:
                    resolver.resolve(
                        TrialSpec(grid=grid, seed=0, **{**cell, "method": with_params(cell["method"], {param: edge})})
                    )
                except DistillBenchError as exc:
                    raise type(exc)(
                        f"{where}: tune.space.{name}.{param}: {format_value(edge)} of {dist.text} cannot run "
                        f"here: {exc}"
                    ) from None
        doc = probe.canonical()
        doc.pop("seed")
        seed = tuning_seed(settings, doc, seeds)
        base = dataclasses.replace(probe.spec, seed=seed)
        hashed = space_hash(space)
        tuning_id = hashlib.sha256(
            json.dumps({"cell": doc, "tune": settings.identity(), "space": hashed}, sort_keys=True).encode()
        ).hexdigest()[:16]
        if tuning_id not in searches:
            searches[tuning_id] = Search(
                tuning_id=tuning_id,
                settings=settings,
                base=base,
                space=space,
                space_hash=hashed,
                final_seeds=seeds,
                method_name=name,
            )
    return list(searches.values())


# ------------------------------------------------------------------------------------- state from rows
@dataclasses.dataclass(frozen=True)
class SearchTrial:
    """One finished search trial, as its rows say."""

    ordinal: int
    trial_id: str
    params: dict[str, Any]
    status: str
    objective: float | None
    seconds: float
    probes: tuple[float, ...] = ()

    @property
    def counts(self) -> bool:
        """Whether it used budget: a result (ok, diverged) or stopped early; an error did not."""
        return self.status in ("ok", "diverged", "stopped")


@dataclasses.dataclass(frozen=True)
class SearchState:
    """What the rows of one search say: its finished trials, spent budget and best configuration."""

    search: Search
    trials: tuple[SearchTrial, ...]

    @property
    def counted(self) -> tuple[SearchTrial, ...]:
        return tuple(t for t in self.trials if t.counts)

    @property
    def spent(self) -> float:
        """Budget used so far, in the budget's unit (trials, or trial-hours)."""
        if self.search.budget.trials is not None:
            return float(len(self.counted))
        return math.fsum(t.seconds for t in self.counted) / 3600.0

    @property
    def finished(self) -> bool:
        return self.spent >= self.search.budget.amount

    @property
    def next_ordinal(self) -> int:
        return max((t.ordinal for t in self.trials), default=-1) + 1

    @property
    def stopped(self) -> int:
        return sum(1 for t in self.trials if t.status == "stopped")

    def best(self) -> SearchTrial | None:
        """The ok trial with the highest objective; the earliest on a tie; None without one."""
        scored = [t for t in self.trials if t.status == "ok" and t.objective is not None and math.isfinite(t.objective)]
        return max(scored, key=lambda t: (t.objective, -t.ordinal)) if scored else None


ROW_COLUMNS = ["trial_id", "tuning_id", "tune_role", "tune_params", "spec_json", "status", "start_time", "end_time"]


def search_states(searches: Iterable[Search], frame: Any) -> dict[str, SearchState]:
    """The :class:`SearchState` of each search from rows (a DataFrame with :data:`ROW_COLUMNS` and the objectives)."""
    from distillbench.harness.store import trial_status

    wanted = {s.tuning_id: s for s in searches}
    by_trial: dict[str, list[dict[str, Any]]] = {}
    if frame is not None and len(frame):
        for row in frame.to_dict("records"):
            if row.get("tune_role") == "search" and row.get("tuning_id") in wanted:
                by_trial.setdefault(row["trial_id"], []).append(row)
    found: dict[str, list[SearchTrial]] = {tid: [] for tid in wanted}
    for trial_id, rows in by_trial.items():
        first = rows[0]
        search = wanted[first["tuning_id"]]
        spec = json.loads(first.get("spec_json") or "{}")
        ordinal = (spec.get("tuning") or {}).get("trial")
        if not isinstance(ordinal, int):
            continue
        status = trial_status(r["status"] for r in rows)
        values = [r.get(search.settings.objective) for r in rows if r.get(search.settings.objective) is not None]
        values = [float(v) for v in values if not (isinstance(v, float) and math.isnan(v))]
        start, end = first.get("start_time"), first.get("end_time")
        seconds = _seconds(start, end)
        found[first["tuning_id"]].append(
            SearchTrial(
                ordinal=ordinal,
                trial_id=trial_id,
                params=json.loads(first.get("tune_params") or "{}"),
                status=status,
                objective=sum(values) / len(values) if values else None,
                seconds=seconds,
            )
        )
    return {
        tid: SearchState(wanted[tid], tuple(sorted(trials, key=lambda t: t.ordinal))) for tid, trials in found.items()
    }


def _seconds(start: Any, end: Any) -> float:
    try:
        value = (end - start).total_seconds()
    except (TypeError, AttributeError):
        return 0.0
    return float(value) if math.isfinite(value) and value > 0 else 0.0


def read_states(results: Any, searches: Iterable[Search], *, on_bad: Any = None) -> dict[str, SearchState]:
    """:func:`search_states` from the rows of ``results`` (a results directory or URI)."""
    from distillbench.harness.store import read_rows

    searches = list(searches)
    if not searches:
        return {}
    objectives = sorted({s.settings.objective for s in searches})
    frame = read_rows([results], columns=ROW_COLUMNS + objectives, on_bad=on_bad or (lambda path, reason: None))
    return search_states(searches, frame)
