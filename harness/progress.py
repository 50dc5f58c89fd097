"""Live progress of a trial and the experiment trackers a grid can log to (pure: imports neither torch nor ray).

Progress callbacks. Long work calls ``progress(fraction, message)`` (:data:`~distillbench.harness.types.ProgressFn`).
A callback that also takes keyword arguments, ``def cb(fraction, message, **values)``, receives the event's
numbers as well:

- ``phase``: ``load``, ``distill`` or ``evaluate`` (added by the runner);
- ``iteration``, ``iterations`` and ``loss`` from iterative methods (the loss is the mean of the last report
  window, so reading it never waits for a GPU);
- ``model``, ``models``, ``epoch`` and ``epochs`` from the evaluation;
- any further number a method or stage adds (shown and reported under its own name);
- ``force=True`` asks rate-limited consumers to pass this event on at once (for a number a Tune scheduler
  acts on, such as an intermediate validation accuracy).

Such callbacks also receive *fine* events between the coarse ones (every iteration, every epoch); they
rate-limit on their own (:class:`TrialReporter`, :class:`TerminalLine`). Two-argument callbacks receive only
the coarse events, as before (one per report window of a method, one per evaluation model), so existing
callbacks see no change. :func:`emit` is the one place that makes this distinction.

In a grid, :class:`TrialReporter` turns the events of a trial into Tune results (:func:`to_report`): flat
keys ``phase`` and ``message`` plus ``<phase>/<name>`` numbers, e.g. ``distill/iteration``,
``distill/loss``, ``evaluate/epoch``, ``evaluate/fraction``; a new number is a new key, with no schema to change.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import inspect
import math
import numbers
import shutil
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any, TextIO

from distillbench.harness.errors import ConfigError, DistillBenchError, UnknownNameError

#: keys of ``values`` that are not reported as numbers: they steer the progress machinery, or (``fraction``)
#: name the positional argument in reports
RESERVED = ("phase", "force", "fraction")
#: longest message a Tune result carries (the status line shows far less)
MAX_MESSAGE = 200


# ----------------------------------------------------------------------------------- callbacks
@functools.lru_cache(maxsize=512)
def _takes_values_cached(fn: Callable[..., Any]) -> bool:
    return _signature_takes_values(fn)


def _signature_takes_values(fn: Callable[..., Any]) -> bool:
    try:
        parameters = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):  # a builtin without a signature: call it the plain way
        return False
    return any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters)


def takes_values(fn: Callable[..., Any]) -> bool:
    """Whether ``fn`` accepts keyword values (``**values``), i.e. wants structured and fine events."""
    try:
        return _takes_values_cached(fn)
    except TypeError:  # unhashable (a bound method of an unhashable object): no caching
        return _signature_takes_values(fn)


def emit(fn: Callable[..., Any] | None, fraction: float, message: str, *, fine: bool = False, **values: Any) -> None:
    """Send one progress event to ``fn``: with its values if ``fn`` takes them, else only a coarse event, plainly.

    Args:
        fn: the callback, or None (nothing happens).
        fraction: share of the current unit of work done, in [0, 1].
        message: a short human-readable line.
        fine: an in-between event (every iteration or epoch) that two-argument callbacks never see.
        values: numbers describing the event (see the module docstring).
    """
    if fn is None:
        return
    if takes_values(fn):
        fn(fraction, message, **values)
    elif not fine:
        fn(fraction, message)


def in_phase(fn: Callable[..., Any] | None, phase: str) -> Callable[..., Any] | None:
    """``fn`` with ``phase=phase`` added to every event; a two-argument ``fn`` is returned as it is."""
    if fn is None or not takes_values(fn):
        return fn

    def forward(fraction: float, message: str, **values: Any) -> None:
        fn(fraction, message, **{**values, "phase": phase})

    return forward


# ---------------------------------------------------------------------------------- the events
@dataclasses.dataclass(frozen=True)
class Event:
    """One progress event as a consumer sees it.

    Attributes:
        phase: ``load``, ``distill``, ``evaluate`` (or empty when no runner named it).
        fraction: share of the phase done, in [0, 1].
        message: the human-readable line.
        values: the event's numbers, without the reserved keys.
    """

    phase: str
    fraction: float
    message: str = ""
    values: Mapping[str, float] = dataclasses.field(default_factory=dict)

    @classmethod
    def of(cls, fraction: float, message: str, values: Mapping[str, Any]) -> Event:
        """The event of one callback call (``values`` as the callback received them)."""
        numbers = {k: _plain(v) for k, v in values.items() if k not in RESERVED and _is_number(v)}
        return cls(str(values.get("phase") or ""), float(fraction), message, numbers)


def _is_number(value: Any) -> bool:
    # numbers.Real takes numpy scalars too; a tensor is refused (reading it could wait for a GPU).
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


def _plain(value: Any) -> int | float:
    return value if isinstance(value, int) else float(value)


# The counters describe() puts into words; any other number is shown as "name value".
_COUNTERS = ("iteration", "iterations", "model", "models", "epoch", "epochs", "loss")


def describe(event: Event) -> str:
    """One short line: ``distill 1200/20000 loss 0.53``, ``evaluate model 2/5 epoch 120/300``, ``load digits``."""
    v = event.values
    parts = [event.phase or "running"]
    if "iterations" in v:
        parts.append(f"{int(v.get('iteration', 0))}/{int(v['iterations'])}")
    if "models" in v:
        parts.append(f"model {int(v['model'])}/{int(v['models'])}" if "model" in v else f"{int(v['models'])} models")
    if "epochs" in v:
        parts.append(f"epoch {int(v.get('epoch', 0))}/{int(v['epochs'])}")
    if "loss" in v:
        parts.append(f"loss {v['loss']:.4g}")
    parts.extend(f"{key} {value:.4g}" for key, value in v.items() if key not in _COUNTERS)
    if len(parts) == 1:  # no counters: the share done and the message say where the work is
        if event.fraction > 0:
            parts.append(f"{100 * event.fraction:.0f}%")
        if event.message:
            parts.append(event.message)
    return " ".join(parts)


def to_report(event: Event) -> dict[str, Any]:
    """The Tune result of an intermediate event: ``phase``, ``message`` and ``<phase>/<name>`` numbers."""
    phase = event.phase or "run"
    report: dict[str, Any] = {"phase": phase, "message": event.message[:MAX_MESSAGE]}
    report[f"{phase}/fraction"] = event.fraction
    report.update({f"{phase}/{key}": value for key, value in event.values.items()})
    return report


def from_report(result: Mapping[str, Any]) -> Event | None:
    """The event behind a Tune result written by :func:`to_report`; None for any other result."""
    phase = result.get("phase")
    if not isinstance(phase, str):
        return None
    prefix = f"{phase}/"
    values = {k[len(prefix) :]: v for k, v in result.items() if k.startswith(prefix) and _is_number(v)}
    fraction = values.pop("fraction", 0.0)
    return Event(phase, float(fraction), str(result.get("message") or ""), values)


# ------------------------------------------------------------------------------------ consumers
class TrialReporter:
    """A worker's progress callback: passes events to ``send`` (``tune.report``) at a bounded rate.

    Within a phase, at most one event goes out every ``interval`` seconds; an event of a new phase goes out
    as soon as ``interval / 4`` seconds have passed since the last report (at once on a slow phase change,
    while a trial whose phases take milliseconds does not report each of them); ``force=True`` among the
    values sends at once. An event held back is kept if it is the newest of its phase: when the next event
    goes out, the held last states of the phases before it go out first, so a tracker records each phase's
    final state (``distill 20000/20000 loss 0.41``); :meth:`flush` sends what is held.

    Each ``tune.report`` is one Tune result that the worker waits on until the driver takes it, so the
    bound keeps both the result stream and the waiting small.

    Args:
        send: called with the report dict (:func:`to_report`).
        interval: least seconds between two reports of one phase (0: report every event).
        clock: monotonic seconds (tests pass a fake one).
    """

    def __init__(
        self, send: Callable[[dict[str, Any]], None], interval: float = 2.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.send, self.interval, self.clock = send, interval, clock
        self._phase: str | None = None
        self._sent = -math.inf
        self._held: dict[str, Event] = {}  # the newest unsent event of each phase, oldest phase first

    def __call__(self, fraction: float, message: str, **values: Any) -> None:
        event = Event.of(fraction, message, values)
        now = self.clock()
        wait = self.interval if event.phase == self._phase else self.interval / 4
        if now - self._sent < wait and not values.get("force"):
            self._held.pop(event.phase, None)  # re-inserted last: phases stay in the order they ran
            self._held[event.phase] = event
            return
        self._held.pop(event.phase, None)  # this event is newer
        self.flush()
        self._phase, self._sent = event.phase, now
        self.send(to_report(event))

    def flush(self) -> None:
        """Send the events held back (the newest of each phase), oldest phase first."""
        held, self._held = list(self._held.values()), {}
        for event in held:
            self.send(to_report(event))


class TerminalLine:
    """Progress of one trial on a terminal, redrawn in place: ``distill 1200/20000 loss 0.53 | 01:12``.

    For ``distillbench distill`` and ``evaluate`` when stderr is a terminal; :meth:`close` clears the line.

    Args:
        stream: the terminal (stderr).
        min_interval: least seconds between two redraws within a phase.
        clock: monotonic seconds.
    """

    def __init__(self, stream: TextIO, min_interval: float = 0.2, clock: Callable[[], float] = time.monotonic) -> None:
        self.stream, self.min_interval, self.clock = stream, min_interval, clock
        self.start = clock()
        self._phase: str | None = None
        self._drawn = -math.inf
        self.shown = False

    def __call__(self, fraction: float, message: str, **values: Any) -> None:
        event = Event.of(fraction, message, values)
        now = self.clock()
        if event.phase == self._phase and now - self._drawn < self.min_interval:
            return
        self._phase, self._drawn = event.phase, now
        text = f"{describe(event)} | {format_clock(now - self.start)}"
        self.stream.write("\r\033[K" + fit(text))
        self.stream.flush()
        self.shown = True

    def close(self) -> None:
        """Clear the line, so what is printed next starts on a clean line."""
        if self.shown:
            self.stream.write("\r\033[K")
            self.stream.flush()
            self.shown = False


@dataclasses.dataclass
class _TrialView:
    label: str
    since: float
    event: Event | None = None
    printed: float = -math.inf
    printed_phase: str | None = None


class LiveTrials:
    """The running trials of a grid and their latest progress, as the driver's status display shows them.

    On a terminal the display redraws :meth:`lines` under the status line. Elsewhere (a log file, a pipe,
    a batch job's output) :meth:`update` returns a line to print when a trial entered a new phase or
    ``line_interval`` seconds have passed since its last line, and :meth:`quiet` one for each trial that
    reported nothing for ``repeat`` seconds (a step without progress events, a stalled worker), so a long
    run is never silent and a log does not fill with redraws.

    Args:
        line_interval: least seconds between two printed lines of one trial within a phase.
        shown: at most this many trials in :meth:`lines`; the rest are counted.
        repeat: seconds after which a trial without a printed line gets one again, as it stands.
        clock: monotonic seconds.
    """

    def __init__(
        self,
        line_interval: float = 10.0,
        shown: int = 8,
        repeat: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.line_interval, self.shown, self.repeat, self.clock = line_interval, shown, repeat, clock
        self.trials: dict[str, _TrialView] = {}

    def start(self, key: str, label: str) -> None:
        """A trial started (its clock starts now)."""
        self.trials.setdefault(key, _TrialView(label, self.clock()))

    def drop(self, key: str) -> None:
        """A trial ended."""
        self.trials.pop(key, None)

    def update(self, key: str, label: str, event: Event) -> str | None:
        """Record a trial's progress; return the line to print without a terminal now, or None."""
        self.start(key, label)
        view = self.trials[key]
        view.event = event
        now = self.clock()
        if event.phase == view.printed_phase and now - view.printed < self.line_interval:
            return None
        view.printed, view.printed_phase = now, event.phase
        return self.line(key)

    def quiet(self) -> list[str]:
        """Lines for the trials without a printed line (or, never printed, a start) for ``repeat`` seconds."""
        now, out = self.clock(), []
        for key, view in self.trials.items():
            if now - max(view.printed, view.since) >= self.repeat:
                view.printed = now
                out.append(self.line(key))
        return out

    def line(self, key: str) -> str:
        """``  dm digits ipc10 seed0: distill 1200/20000 loss 0.53 | 01:02`` (time since the trial started)."""
        view = self.trials[key]
        state = describe(view.event) if view.event is not None else "starting"
        return f"  {view.label}: {state} | {format_clock(self.clock() - view.since)}"

    def lines(self) -> list[str]:
        """One line per running trial, oldest first, at most ``shown`` of them and a count of the rest."""
        keys = list(self.trials)
        out = [self.line(key) for key in keys[: self.shown]]
        if len(keys) > self.shown:
            out.append(f"  ... and {len(keys) - self.shown} more running")
        return out


def fit(text: str, width: int | None = None) -> str:
    """``text`` cut to the terminal's width (a wrapped line cannot be redrawn in place)."""
    width = width or shutil.get_terminal_size(fallback=(120, 24)).columns
    return text if len(text) < width else text[: max(1, width - 2)] + "…"


def format_clock(seconds: float) -> str:
    """``mm:ss``, or ``h:mm:ss`` from one hour on."""
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes:02d}:{secs:02d}"


def trial_label(spec: Mapping[str, Any]) -> str:
    """A short name of a trial for status lines and tracker runs: ``dm digits ipc10 seed0`` (+ weighting, labels)."""
    parts = [str(spec.get("method", "?")), str(spec.get("dataset", "?")), f"ipc{spec.get('ipc', '?')}"]
    parts.append(f"seed{spec.get('seed', 0)}")
    if spec.get("weighting") not in (None, "none"):
        parts.append(str(spec["weighting"]))
    if spec.get("labels") not in (None, "native"):
        parts.append(f"labels={spec['labels']}")
    return " ".join(parts)


# ------------------------------------------------------------------------------------- trackers
#: Ray Tune logger callbacks a grid can attach (``loggers:`` or ``run --logger``): name -> (import name, pip name)
LOGGERS: dict[str, tuple[str, str]] = {
    "tensorboard": ("tensorboardX", "tensorboardX"),
    "mlflow": ("mlflow", "mlflow"),
    "wandb": ("wandb", "wandb"),
}


def check_loggers(names: Any, where: str = "loggers") -> tuple[str, ...]:
    """Validate logger names (a list, or one name); return them without repeats, in order.

    Raises:
        ConfigError: not a list of strings.
        UnknownNameError: an unknown name (the message lists close matches and the valid names).
    """
    items = list(names) if isinstance(names, list | tuple) else [names]
    if not all(isinstance(n, str) for n in items):
        raise ConfigError(f"{where} must be a list of names such as [tensorboard, mlflow], got {names!r}")
    for name in items:
        if name not in LOGGERS:
            close = difflib.get_close_matches(name, list(LOGGERS), n=2, cutoff=0.5)
            hint = f" Did you mean: {', '.join(close)}?" if close else ""
            raise UnknownNameError(f"{where}: unknown logger {name!r}.{hint} Available: {', '.join(LOGGERS)}")
    return tuple(dict.fromkeys(items))


def check_logger_packages(names: Iterable[str], *, results_dir: str | None, environ: Mapping[str, str]) -> None:
    """Refuse, in one line, a logger that cannot work here (before anything runs).

    A logger's package must be installed; MLflow needs somewhere to write (:func:`mlflow_tracking_uri`), and
    its default ``sqlite:`` store also needs SQLAlchemy and Alembic (the ``mlflow`` package brings both,
    ``mlflow-skinny`` does not).

    Args:
        names: validated logger names (:func:`check_loggers`).
        results_dir: the local results folder, or None for results at a URI.
        environ: the environment (``MLFLOW_TRACKING_URI``).

    Raises:
        DistillBenchError: naming the logger, the missing package and the install command, or MLflow's
            missing destination.
    """
    import importlib.util

    for name in names:
        module, package = LOGGERS[name]
        needed = [(module, package)]
        if name == "mlflow" and mlflow_tracking_uri(results_dir, environ).startswith("sqlite:"):
            needed += [("sqlalchemy", "sqlalchemy"), ("alembic", "alembic")]
        for module, package in needed:
            if importlib.util.find_spec(module) is None:
                raise DistillBenchError(
                    f"logger {name!r} needs the Python package {package!r}, which is not installed; "
                    f"pip install {package} (or drop {name} from loggers / --logger)"
                )


def mlflow_tracking_uri(results_dir: str | None, environ: Mapping[str, str]) -> str:
    """Where MLflow runs go: ``$MLFLOW_TRACKING_URI``, else ``sqlite:///<results>/logs/mlflow.db``.

    Args:
        results_dir: the local results folder, or None for results at a URI (``s3://``), where an
            SQLite file cannot live.

    Raises:
        DistillBenchError: results at a URI and no ``MLFLOW_TRACKING_URI``.
    """
    if environ.get("MLFLOW_TRACKING_URI"):
        return environ["MLFLOW_TRACKING_URI"]
    if results_dir is None:
        raise DistillBenchError(
            "logger 'mlflow': the results are not a local folder, so there is no default place for MLflow's "
            "database; set MLFLOW_TRACKING_URI (a tracking server such as http://host:5000, or "
            "sqlite:////abs/path/mlflow.db)"
        )
    return f"sqlite:///{results_dir.rstrip('/')}/logs/mlflow.db"


__all__ = [
    "Event",
    "LOGGERS",
    "TerminalLine",
    "TrialReporter",
    "check_logger_packages",
    "check_loggers",
    "describe",
    "emit",
    "from_report",
    "in_phase",
    "mlflow_tracking_uri",
    "takes_values",
    "to_report",
    "trial_label",
]
