"""Grid files and trial specs: parse, validate, expand, and hash into trial ids.

A grid file is YAML. Its ``grid:`` block (or each block of ``grids:``) maps axes to a value or a
list of values; each block is crossed on its own and the blocks are concatenated, so
incompatible axes are never crossed::

    name: quickstart
    protocol: quick-v1
    grid:
      dataset: [digits]
      method: [random, herding, "dm[iterations=200]"]
      ipc: [1, 10]
      seed: [0, 1]

Every trial is validated before anything is scheduled: unknown plugin names (with close matches),
unknown or mistyped parameters, ipc or seed out of range, a grid name that is not a plain folder name,
and combinations the plugins declare incompatible are errors that name the grid block and the value.
Integer axes are canonicalised (``seed: "7"`` is ``seed: 7``, one trial id).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import itertools
import json
import math
import re
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from distillbench.harness.errors import ConfigError, DistillBenchError, IncompatibleError, UnknownNameError
from distillbench.harness.params import INT64_MAX, canonical_int, params_to_dict, resolve_auto
from distillbench.harness.progress import check_loggers
from distillbench.harness.tuning import identity as tuning_identity
from distillbench.harness.workflow import DEFAULT_PROTOCOL

AXES = ("dataset", "method", "ipc", "seed", "weighting", "labels", "protocol")
DEFAULTS = {"weighting": "none", "labels": "native", "seed": 0}
TOP_LEVEL_KEYS = (
    "name",
    "description",
    "protocol",
    "data_root",
    "artefacts",
    "download",
    "resources",
    "retries",
    "plugins",
    "loggers",
    "grid",
    "grids",
)


@dataclasses.dataclass(frozen=True)
class TrialSpec:
    """One trial: which data, which method with which options, how many samples, which seed, which protocol.

    The plugin fields hold spec strings (``"dm[iterations=200]"``). ``trial_id`` and ``distill_id``
    are hashes of the *resolved* specs (every parameter, defaults included), so two spellings of
    the same configuration share an id, and a changed default gives a new one.
    """

    dataset: str
    method: str
    ipc: int
    seed: int = 0
    weighting: str = "none"
    labels: str = "native"
    protocol: str = DEFAULT_PROTOCOL
    grid: str = "adhoc"
    # "<tuning_id>:search:<n>" or "<tuning_id>:final" for the trials of a tune: section (harness/tuning.py);
    # part of the trial id (a search trial is not the reported trial of the same configuration), not of the
    # distill id; None, and absent from the canonical spec, for every other trial.
    tuning: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TrialSpec:
        return cls(**{f.name: data[f.name] for f in dataclasses.fields(cls) if f.name in data})

    def resolve(self) -> ResolvedTrial:
        """Look up every plugin and validate parameters and combinations (see :func:`resolve_trial`)."""
        return resolve_trial(self)


@dataclasses.dataclass(frozen=True)
class ResolvedTrial:
    """A trial spec with every plugin looked up and every parameter validated."""

    spec: TrialSpec
    dataset: Any  # Configured
    method: Any
    weighting: Any
    labels: Any
    protocol: Any  # EvalProtocol
    info: Any  # DatasetInfo

    def canonical(self, *, with_protocol: bool = True) -> dict[str, Any]:
        """The fully resolved spec as plain data (what ids hash and rows store)."""
        doc: dict[str, Any] = {
            "dataset": {"name": self.dataset.name, "params": params_to_dict(self.dataset.params)},
            "method": {"name": self.method.name, "params": params_to_dict(self.method.params)},
            "weighting": {"name": self.weighting.name, "params": params_to_dict(self.weighting.params)},
            "labels": {"name": self.labels.name, "params": params_to_dict(self.labels.params)},
            "ipc": self.spec.ipc,
            "seed": self.spec.seed,
        }
        if with_protocol:
            doc["protocol"] = {"name": self.protocol.name, "version": self.protocol.version}
            # Like the protocol, the tuning role does not change the distilled set: not in the distill id.
            tuning = tuning_identity(self.spec.tuning)
            if tuning is not None:
                doc["tuning"] = tuning
        return doc

    @functools.cached_property
    def trial_id(self) -> str:
        # Cached: a dry-run asks for it to deduplicate, to mark done trials and to print it.
        return _hash(self.canonical())

    @property
    def distill_id(self) -> str:
        return _hash(self.canonical(with_protocol=False))


def _hash(doc: Mapping[str, Any]) -> str:
    text = json.dumps(doc, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


# Upper bounds of the integer axes. A seed is stored as int64 (larger ones would pass validation and then
# fail in the row writer); no dataset has anywhere near 100,000 samples per class, and a larger ipc only
# overflows later; a retry count beyond 100 is a typo, not a policy.
MAX_SEED = INT64_MAX
MAX_IPC = 100_000
MAX_RETRIES = 100
MAX_GRID_NAME = 100  # bytes: the name is a folder name, and file systems allow 255 per component
_GRID_NAME = re.compile(r"[\w][\w.+=@-]*")


def _check_int(value: Any, what: str, minimum: int, maximum: int = INT64_MAX) -> int:
    """``value`` as a canonical int in ``[minimum, maximum]`` (``"7"`` and ``7`` are the same value)."""
    try:
        number = canonical_int(value)
    except ValueError:
        if isinstance(value, int) and not isinstance(value, bool):  # an int too large for int64
            raise ConfigError(f"{what} must be at most {maximum}, got {value}") from None
        raise ConfigError(f"{what} must be an integer, got {value!r}") from None
    if number < minimum:
        hint = " (samples per class)" if what == "ipc" else ""
        raise ConfigError(f"{what} must be at least {minimum}{hint}, got {number}")
    if number > maximum:
        raise ConfigError(f"{what} must be at most {maximum}, got {number}")
    return number


def check_grid_name(name: Any, *, from_file: bool = False) -> str:
    """A grid name that is safe as one folder name (``results/<name>``) and as a row value.

    Raises:
        ConfigError: not a string, empty, containing a path separator, ``..`` or other characters than
            letters, digits and ``. _ - + = @``, starting with a dot, or longer than 100 bytes.
    """
    where = "the grid file's name" if from_file else "grid name"
    fix = "add a 'name:' such as 'my-grid' to the grid" if from_file else "use a name such as 'my-grid'"
    if isinstance(name, bool) or not isinstance(name, str | int):
        raise ConfigError(f"{where} must be a plain name such as 'my-grid', got {name!r}")
    text = str(name)
    if not text:
        raise ConfigError(f"{where} is empty; {fix}")
    if len(text.encode()) > MAX_GRID_NAME:
        raise ConfigError(f"{where} is {len(text.encode())} bytes long; at most {MAX_GRID_NAME} are allowed; {fix}")
    if "/" in text or "\\" in text or ".." in text or text.startswith(".") or not _GRID_NAME.fullmatch(text):
        raise ConfigError(
            f"{where} {text!r} is not a plain name: it becomes a folder under the results directory, so it may "
            f"hold only letters, digits and . _ - + = @ (no path separators, no '..', no leading dot); {fix}"
        )
    return text


def resolve_trial(spec: TrialSpec) -> ResolvedTrial:
    """Resolve and validate one trial.

    Raises:
        UnknownNameError: a plugin name is unknown (the message lists close matches).
        ConfigError: a parameter is unknown or mistyped, or ipc/seed are out of range.
        IncompatibleError: the plugins cannot work together.
    """
    return _Resolver().resolve(spec)


_MISSING = object()


class _Resolver:
    """Resolves trials, remembering what repeats across the combinations of a grid.

    A grid of 10^5 trials names a handful of plugin spec strings and far fewer distinct (method, dataset,
    ipc) combinations than trials (the seed axis alone multiplies them). Parsing a spec string, building
    a dataset's info and each compatibility check run once per distinct input instead of once per trial:
    about 50 instead of 265 microseconds per trial on digits here (what is left is building the trial and
    hashing its id). Only successes are remembered: a failure raises
    and ends the grid. The checks run in the same order as for a lone trial, so a trial with two faults
    reports the same one either way. Keys are the spec strings as written; two spellings of one
    configuration miss the cache once each and still resolve to one trial id.
    """

    def __init__(self) -> None:
        self._plugins: dict[tuple[str, str], Any] = {}
        self._infos: dict[str, Any] = {}
        self._methods: dict[str, Any] = {}
        self._checked: set[tuple[Any, ...]] = set()

    def _plugin(self, registry: Any, text: Any) -> Any:
        if not isinstance(text, str):  # a malformed value: let the registry word the error
            return registry.resolve(text)
        key = (registry.kind, text)
        configured = self._plugins.get(key)
        if configured is None:
            configured = self._plugins[key] = registry.resolve(text)
        return configured

    @staticmethod
    def _memo(cache: dict[Any, Any], key: tuple[Any, ...], build: Any) -> Any:
        """``cache[key]``, built by ``build()`` the first time (an unhashable key is built every time)."""
        try:
            value = cache.get(key, _MISSING)
        except TypeError:
            return build()
        if value is _MISSING:
            value = cache[key] = build()
        return value

    def _once(self, key: tuple[Any, ...], check: Any) -> None:
        """Run ``check()`` unless it already passed for ``key`` (an unhashable key runs it every time)."""
        try:
            if key in self._checked:
                return
        except TypeError:
            check()
            return
        check()
        self._checked.add(key)

    def resolve(self, spec: TrialSpec) -> ResolvedTrial:
        """Resolve and validate ``spec`` (see :func:`resolve_trial`)."""
        from distillbench.harness.plugins import DATASETS, LABELS, METHODS, PROTOCOLS, WEIGHTINGS

        ipc = _check_int(spec.ipc, "ipc", 1, MAX_IPC)
        seed = _check_int(spec.seed, "seed", 0, MAX_SEED)
        tuning_identity(spec.tuning)  # a malformed tuning reference is a ConfigError here, not when hashing
        dataset = self._plugin(DATASETS, spec.dataset)
        method = self._plugin(METHODS, spec.method)
        weighting = self._plugin(WEIGHTINGS, spec.weighting)
        labels = self._plugin(LABELS, spec.labels)
        protocol = self._plugin(PROTOCOLS, spec.protocol).obj

        info = self._memo(self._infos, (spec.dataset,), lambda: dataset.obj(dataset.params).info())
        # "auto" parameters (dd's net) become the dataset's concrete choice here, so ids hash what runs.
        method = method._replace(params=resolve_auto(method.params, info.modality))
        method_obj = self._memo(self._methods, (spec.method, info.modality), lambda: method.obj(method.params))
        self._once(("validate", spec.method, spec.dataset, ipc), lambda: method_obj.validate(info, ipc))
        if not getattr(weighting.obj, "identity", False) and not getattr(method.obj, "accepts_weights", False):
            raise IncompatibleError(
                f"weighting {weighting.display!r} cannot be combined with method {method.display!r}: the method "
                "ignores sample weights; use weighting none, or a method that accepts weights "
                "(distillbench describe METHOD says)"
            )
        check = getattr(labels.obj, "check", None)
        if check is not None:
            self._once(("labels", spec.labels, spec.method, spec.dataset), lambda: check(method.obj, info))
        if getattr(protocol, "engine", "train") == "replay":
            # Replay protocols train the set's own network through its learned steps: only methods
            # that learn steps (dd) produce such sets; dd validates its network itself.
            if not getattr(method.obj, "replayable", False):
                raise IncompatibleError(
                    f"protocol {protocol.name!r} replays learned inner steps; method {method.display!r} learns "
                    "none. Use method dd, or a training protocol (convnet-v1, quick-v1)"
                )
        else:
            self._once(("network", spec.protocol, spec.dataset), lambda: self._check_network(protocol, info))
        return ResolvedTrial(
            spec=dataclasses.replace(spec, ipc=ipc, seed=seed),  # canonical ints, so "7" and 7 share one trial id
            dataset=dataset,
            method=method,
            weighting=weighting,
            labels=labels,
            protocol=protocol,
            info=info,
        )

    @staticmethod
    def _check_network(protocol: Any, info: Any) -> None:
        from distillbench.harness.networks import resolve_network

        try:
            resolve_network(protocol.network).validate(info)
        except DistillBenchError as exc:
            raise IncompatibleError(f"protocol {protocol.name!r} cannot evaluate on {info.name!r}: {exc}") from None


# ------------------------------------------------------------------------------------- grid files
@dataclasses.dataclass(frozen=True, kw_only=True)
class GridSettings:
    """The run settings of a grid file, declared once for the :class:`GridPlan` and the :class:`Grid` made from it."""

    name: str
    data_root: str | None = None
    download: bool = False
    # {"cpu": n, "gpu": g}, plus "per_method": {name: {"cpu": n, "gpu": g}} when the grid overrides some.
    resources: Mapping[str, Any] = dataclasses.field(default_factory=lambda: {"cpu": 1, "gpu": 0})
    retries: int = 0
    path: str | None = None
    plugins: tuple[str, ...] = ()
    # Where cached artefacts shared by trials (expert buffers, teachers) live, when not beside the rows:
    # a folder or URI several grids share, so a later grid reuses what an earlier one built.
    artefacts: str | None = None
    # Ray Tune logger callbacks to attach (tensorboard, mlflow, wandb; see harness/progress.py LOGGERS).
    loggers: tuple[str, ...] = ()

    def settings(self) -> dict[str, Any]:
        """The settings as keyword arguments (what a :class:`Grid` takes over from its plan)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(GridSettings)}


@dataclasses.dataclass(frozen=True, kw_only=True)
class Grid(GridSettings):
    """A parsed grid file: its settings and the expanded, validated trials."""

    trials: tuple[ResolvedTrial, ...]
    # The searches of the tuned blocks (harness/tuning.Search); their final trials are not in ``trials``.
    searches: tuple[Any, ...] = ()


# The most trials one grid may expand to. Tune's grid_search holds every pending trial in the driver and
# schedules about 45 trivial trials per second here (RAY.md, reuse_actors=True), so 100,000 trials are
# already ~40 minutes of pure scheduling; a larger sweep is several grid files run one after another,
# which also resume separately.
MAX_GRID_TRIALS = 100_000


@dataclasses.dataclass(frozen=True, kw_only=True)
class GridPlan(GridSettings):
    """A grid file whose settings and shape are checked and whose size is counted; trials are not resolved.

    :meth:`trials` resolves them one at a time, so ``run --dry-run`` lists the first trials at once and
    keeps only their ids; :meth:`grid` resolves them all (what ``run`` needs before scheduling anything).
    """

    # (where, {axis: [values]}) per block, ``where`` naming the block in messages ("grid block 2").
    blocks: tuple[tuple[str, Mapping[str, list[Any]]], ...]
    combinations: int  # the sum over blocks of the product of their axis lengths, before duplicates collapse
    label: str | None = None  # prefixed to errors found while resolving (the grid file's path)
    # Per block, its parsed tune: section (harness/tuning.TuneSettings) or None; empty when no block is tuned.
    # A tuned block yields no trials of its own: its searches (searches()) decide its final trials.
    tunes: tuple[Any, ...] = ()

    def tuned(self, index: int) -> Any:
        """The tune settings of block ``index`` (0-based), or None."""
        return self.tunes[index] if self.tunes else None

    def searches(self) -> list[Any]:
        """One :class:`~distillbench.harness.tuning.Search` per cell of each tuned block, in block order.

        Raises:
            UnknownNameError, ConfigError, IncompatibleError: a cell (or an edge of its space) is invalid.
        """
        from distillbench.harness.tuning import expand_searches

        resolver = _Resolver()
        found: dict[str, Any] = {}
        for index, (where, values) in enumerate(self.blocks):
            settings = self.tuned(index)
            if settings is None:
                continue
            try:
                for search in expand_searches(settings, values, self.name, resolver, where):
                    found.setdefault(search.tuning_id, search)
            except DistillBenchError as exc:
                message = str(exc) if str(exc).startswith(where) else f"{where}: {exc}"
                raise type(exc)(f"{self.label}: {message}" if self.label else message) from None
        return list(found.values())

    def trials(self) -> Iterator[ResolvedTrial]:
        """Resolve and yield each distinct trial, block by block, in the order of the cross product.

        A trial whose id was already yielded (the same configuration spelled twice) is skipped. Only the
        ids are kept: a set of 16-character strings, about 100 bytes each in CPython, so 10 MB at
        :data:`MAX_GRID_TRIALS`.

        Raises:
            UnknownNameError, ConfigError, IncompatibleError: a trial is invalid (see :func:`resolve_trial`);
                the trials before it have been yielded already.
        """
        resolver = _Resolver()
        seen: set[str] = set()
        for index, (where, values) in enumerate(self.blocks):
            if self.tuned(index) is not None:
                continue  # its final trials follow from its searches
            for combo in itertools.product(*(values[a] for a in AXES)):
                spec = TrialSpec(grid=self.name, **dict(zip(AXES, combo, strict=True)))
                try:
                    resolved = resolver.resolve(spec)
                except DistillBenchError as exc:
                    message = f"{where}: {exc}"
                    raise type(exc)(f"{self.label}: {message}" if self.label else message) from None
                trial_id = resolved.trial_id
                if trial_id not in seen:
                    seen.add(trial_id)
                    yield resolved

    def grid(self) -> Grid:
        """Resolve every trial (see :meth:`trials`) into a :class:`Grid`."""
        return Grid(trials=tuple(self.trials()), searches=tuple(self.searches()), **self.settings())


def load_grid_file(path: str | Path) -> Grid:
    """Read, validate and expand a grid YAML file.

    Raises:
        ConfigError: the file is missing, is not valid YAML, or its content is invalid (a grid above
            :data:`MAX_GRID_TRIALS` trials included).
        UnknownNameError, IncompatibleError: see :func:`resolve_trial`.
    """
    return open_grid_file(path).grid()


def open_grid_file(path: str | Path) -> GridPlan:
    """Read a grid YAML file and check everything but its trials, which :meth:`GridPlan.trials` resolves.

    Raises:
        ConfigError: the file is missing, is not valid YAML, its settings or shape are invalid, or it has
            more than :data:`MAX_GRID_TRIALS` trials.
        UnknownNameError: ``resources.per_method`` names an unknown method.
    """
    import yaml

    path = Path(path)
    if not path.exists():
        raise ConfigError(
            f"grid file {str(path)!r} not found; pass the path of a YAML grid such as configs/quickstart.yaml"
        )
    if not path.is_file():
        raise ConfigError(f"grid file {str(path)!r} is a directory; pass a YAML file")
    try:
        document = yaml.load(path.read_text(), Loader=_unique_key_loader())  # a SafeLoader subclass
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"grid file {str(path)!r} is not valid YAML{where}: {problem}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"grid file {str(path)!r} is not a text file") from None
    try:
        plan = plan_grid(document, default_name=path.stem, path=str(path))
    except DistillBenchError as exc:
        raise type(exc)(f"{path}: {exc}") from None
    return dataclasses.replace(plan, label=str(path))


def _unique_key_loader() -> type:
    """A ``yaml.SafeLoader`` that refuses a key given twice in one mapping.

    Plain YAML keeps the last value silently, so a grid with two ``method:`` lines would run only one
    of them without a word.

    It also rejoins the distributions of a tune space written in flow style: in ``{lr: loguniform(0.1, 100)}``
    YAML splits the call at its comma into ``lr: "loguniform(0.1"`` and a key ``"100)"`` without a value.
    A plain value with an unclosed ``(`` followed by such keys is put back together from their source text.
    """
    import yaml

    class UniqueKeyLoader(yaml.SafeLoader):
        def construct_mapping(self, node: Any, deep: bool = False) -> dict[Any, Any]:
            node.value = _rejoin_calls(node.value, yaml)
            seen: set[Any] = set()
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key = self.construct_object(key_node, deep=deep)
                if isinstance(key, list | dict):
                    continue  # unhashable; SafeLoader reports it
                if key in seen:
                    raise yaml.constructor.ConstructorError(
                        None, None, f"key {key!r} is given twice (the second would silently win)", key_node.start_mark
                    )
                seen.add(key)
            return super().construct_mapping(node, deep=deep)

    return UniqueKeyLoader


def _rejoin_calls(pairs: list[Any], yaml: Any) -> list[Any]:
    """Undo YAML's flow-style split of ``f(a, b)`` (see :func:`_unique_key_loader`) in a mapping's node pairs."""

    def open_parens(text: str) -> int:
        return text.count("(") - text.count(")")

    out, i = [], 0
    while i < len(pairs):
        key, value = pairs[i]
        i += 1
        plain = isinstance(value, yaml.ScalarNode) and value.style is None
        if plain and open_parens(value.value) > 0:
            text, j = value.value, i
            while open_parens(text) > 0 and j < len(pairs):
                part, empty = pairs[j]
                if not (
                    isinstance(part, yaml.ScalarNode)
                    and part.style is None
                    and isinstance(empty, yaml.ScalarNode)
                    and empty.tag == "tag:yaml.org,2002:null"
                    and not empty.value
                ):
                    break
                text, j = f"{text}, {part.value}", j + 1
            if open_parens(text) == 0:
                value = yaml.ScalarNode("tag:yaml.org,2002:str", text, value.start_mark, pairs[j - 1][0].end_mark)
                i = j
        out.append((key, value))
    return out


def _as_list(value: Any) -> list[Any]:
    return list(value) if isinstance(value, list | tuple) else [value]


def parse_grid(document: Any, *, default_name: str = "grid", path: str | None = None) -> Grid:
    """Validate and expand a grid document (the parsed YAML)."""
    return plan_grid(document, default_name=default_name, path=path).grid()


def plan_grid(document: Any, *, default_name: str = "grid", path: str | None = None) -> GridPlan:
    """Check a grid document's settings and shape and count its trials, resolving none of them.

    Raises:
        ConfigError: a setting, axis or value is malformed, or the grid has more than
            :data:`MAX_GRID_TRIALS` trials (counted as the product of each block's axis lengths).
        UnknownNameError: ``resources.per_method`` names an unknown method, or ``loggers`` an unknown logger.
    """
    if document is None:
        raise ConfigError("grid is empty: define a 'grid:' block with at least dataset, method and ipc")
    if not isinstance(document, dict):
        raise ConfigError(f"a grid file must be a mapping with a 'grid:' block, got {type(document).__name__}")
    unknown = sorted(set(document) - set(TOP_LEVEL_KEYS))
    if unknown:
        raise ConfigError(f"unknown grid keys {unknown}; valid keys: {', '.join(TOP_LEVEL_KEYS)}")
    given = document.get("name")
    name = check_grid_name(given if given is not None else default_name, from_file=given is None)
    plugins = _as_list(document.get("plugins") or [])
    if not all(isinstance(p, str) for p in plugins):
        raise ConfigError(f"plugins must be a list of module names or .py paths, got {document.get('plugins')!r}")
    if plugins:
        from distillbench.harness.plugins import load_plugin_modules

        base = str(Path(path).resolve().parent) if path else None
        # Absolute paths, so Ray workers (which run in their own working directory) find the files.
        plugins = [str((Path(base) / p).resolve()) if (p.endswith(".py") and base) else p for p in plugins]
        load_plugin_modules(plugins, base=base)
    if "grid" in document and "grids" in document:
        raise ConfigError("use either 'grid:' (one block) or 'grids:' (a list of blocks), not both")
    blocks = document.get("grids") if "grids" in document else [document.get("grid")]
    if not isinstance(blocks, list) or not blocks or any(b is None for b in blocks):
        raise ConfigError("grid is empty: define a 'grid:' block with at least dataset, method and ipc")
    shared_protocol = document.get("protocol")
    planned: list[tuple[str, dict[str, list[Any]]]] = []
    tunes: list[Any] = []  # per block: its TuneSettings, or None
    for number, block in enumerate(blocks, start=1):
        where = f"grid block {number}" if len(blocks) > 1 else "grid"
        if not isinstance(block, dict):
            raise ConfigError(f"{where} must be a mapping of axis to values, got {type(block).__name__}")
        bad = sorted(set(block) - set(AXES) - {"tune"})
        if bad:
            raise ConfigError(f"{where}: unknown axes {bad}; valid axes: {', '.join(AXES)} (and tune:)")
        axes = {**DEFAULTS, **({"protocol": shared_protocol} if shared_protocol is not None else {}), **block}
        for required in ("dataset", "method", "ipc", "protocol"):
            if required not in axes:
                raise ConfigError(f"{where}: missing axis {required!r} (protocol may also be set at the top level)")
        values = {axis: _as_list(axes[axis]) for axis in AXES}
        for axis, items in values.items():
            if not items:
                raise ConfigError(f"grid is empty: {where} has no values for {axis!r}")
        for axis in ("dataset", "method", "weighting", "labels", "protocol"):
            for value in values[axis]:
                if not isinstance(value, str):
                    raise ConfigError(f"{where}: {axis} values must be names like 'dm[iterations=200]', got {value!r}")
        planned.append((where, values))
        settings = None
        if "tune" in block:
            from distillbench.harness.tuning import check_space, parse_tune

            settings = parse_tune(block["tune"], where)
            check_space(settings, values["method"], where)
        tunes.append(settings)
    resources = parse_resources(document.get("resources"))
    retries = _check_int(document.get("retries", 0), "retries", 0, MAX_RETRIES)
    download = document.get("download", False)
    if not isinstance(download, bool):
        raise ConfigError(f"download must be true or false, got {download!r}")
    data_root = document.get("data_root")
    artefacts = document.get("artefacts")
    if artefacts is not None and (not isinstance(artefacts, str) or not artefacts.strip()):
        raise ConfigError(f"artefacts must be a folder or a URI such as s3://bucket/cache, got {artefacts!r}")
    loggers = check_loggers(document.get("loggers") or [])
    combinations = sum(math.prod(len(values[axis]) for axis in AXES) for _, values in planned)
    if combinations > MAX_GRID_TRIALS:
        raise ConfigError(
            f"grid {name!r} has {combinations:,} trials, above the cap of {MAX_GRID_TRIALS:,}: split it into several "
            f"grid files of at most {MAX_GRID_TRIALS:,} trials (a block has the product of its axis lengths) and run "
            "them one after another"
        )
    return GridPlan(
        name=name,
        blocks=tuple(planned),
        combinations=combinations,
        data_root=str(data_root) if data_root is not None else None,
        download=download,
        resources=resources,
        retries=retries,
        path=path,
        plugins=tuple(plugins),
        artefacts=artefacts,
        loggers=loggers,
        tunes=tuple(tunes) if any(t is not None for t in tunes) else (),
    )


_RESOURCE_KEYS = ("cpu", "gpu")


def _check_amounts(block: Any, where: str, default: Mapping[str, float]) -> dict[str, float]:
    """``{"cpu": n, "gpu": g}`` from a YAML mapping, missing keys from ``default``."""
    if not isinstance(block, dict):
        raise ConfigError(f"{where} must be a mapping such as {{cpu: 1, gpu: 0.25}}, got {block!r}")
    unknown = sorted(set(block) - set(_RESOURCE_KEYS))
    if unknown:
        raise ConfigError(f"{where}: unknown keys {unknown}; valid keys: cpu, gpu")
    out = {key: block.get(key, default[key]) for key in _RESOURCE_KEYS}
    for key, value in out.items():
        if isinstance(value, bool) or not isinstance(value, int | float) or not value >= 0:
            raise ConfigError(f"{where}.{key} must be a non-negative number, got {value!r}")
    if out["cpu"] <= 0:
        raise ConfigError(f"{where}.cpu must be positive: every trial needs at least part of a CPU")
    if out["gpu"] > 1 and out["gpu"] != int(out["gpu"]):
        raise ConfigError(
            f"{where}.gpu must be a fraction up to 1 or a whole number of GPUs (Ray cannot split "
            f"several GPUs), got {out['gpu']}"
        )
    return out


def parse_resources(block: Any) -> dict[str, Any]:
    """Validate a grid's ``resources:`` block.

    Shape (every key optional)::

        resources:
          cpu: 1          # CPUs per trial (torch uses as many threads)
          gpu: 0.25       # GPUs per trial: a fraction up to 1, or a whole number
          per_method:     # overrides by bare method name; missing keys fall back to the defaults above
            dc: {cpu: 2, gpu: 0.5}

    Returns:
        ``{"cpu": n, "gpu": g}`` plus ``"per_method": {name: {"cpu": n, "gpu": g}}`` when given.

    Raises:
        ConfigError: an unknown key, a negative or non-numeric amount, a CPU count of zero, a
            fractional GPU count above 1, or ``per_method`` naming an unknown method.
    """
    if block is None:
        block = {}
    if not isinstance(block, dict):
        raise ConfigError(f"resources must be a mapping such as {{cpu: 1, gpu: 0.25}}, got {block!r}")
    per_method = block.get("per_method") or {}
    base = _check_amounts({k: v for k, v in block.items() if k != "per_method"}, "resources", {"cpu": 1, "gpu": 0})
    if not isinstance(per_method, dict):
        raise ConfigError(f"resources.per_method must map method names to {{cpu: n, gpu: g}}, got {per_method!r}")
    overrides: dict[str, dict[str, float]] = {}
    if per_method:
        from distillbench.harness.plugins import METHODS

        for name, amounts in per_method.items():
            if not isinstance(name, str) or "[" in name:
                raise ConfigError(f"resources.per_method keys are bare method names such as dm or dc, got {name!r}")
            try:
                METHODS.get(name)
            except UnknownNameError as exc:
                raise UnknownNameError(f"resources.per_method: {exc}") from None
            overrides[name] = _check_amounts(amounts, f"resources.per_method.{name}", base)
    return {**base, "per_method": overrides} if overrides else base


def trial_resources(resources: Mapping[str, Any], method_name: str) -> dict[str, float]:
    """The ``{"cpu": n, "gpu": g}`` one trial of ``method_name`` asks for (its override, else the default)."""
    own = (resources.get("per_method") or {}).get(method_name)
    chosen = own if own is not None else resources
    return {"cpu": chosen.get("cpu", 1), "gpu": chosen.get("gpu", 0)}


def trial_table(trials: Iterable[ResolvedTrial]) -> list[dict[str, Any]]:
    """One display dict per trial (for --dry-run and logs)."""
    return [
        {
            "trial_id": t.trial_id,
            "dataset": t.dataset.display,
            "method": t.method.display,
            "weighting": t.weighting.display,
            "labels": t.labels.display,
            "ipc": t.spec.ipc,
            "seed": t.spec.seed,
            "protocol": t.protocol.id,
        }
        for t in trials
    ]
