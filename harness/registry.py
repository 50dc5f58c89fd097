"""Typed registries of plugins with lazy built-ins and entry-point discovery.

One :class:`Registry` exists per plugin kind (methods, datasets, networks, protocols, weightings,
label stages; see :mod:`distillbench.harness.plugins`). Built-ins are declared as ``"module:attr"``
strings and imported on first use, so ``distillbench ls`` imports neither torch nor ray. Third-party
packages add plugins through the entry-point group named by the registry (for example
``distillbench.methods``); a plugin that fails to import is reported by ``ls`` and by the error for
its name, and never breaks the other plugins.
"""

from __future__ import annotations

import contextlib
import difflib
import fnmatch
import importlib
import importlib.metadata
import re
import threading
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Generic, NamedTuple, TypeVar

from distillbench.harness.errors import ConfigError, DistillBenchError, DuplicateNameError, UnknownNameError
from distillbench.harness.params import NoParams, build_params, format_spec, parse_spec

T = TypeVar("T")
_NAME_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_.\-]*$")


def natural_key(text: str) -> list[Any]:
    """Sort key that orders ``convnet2`` before ``convnet10``."""
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", text)]


class Configured(NamedTuple):
    """A plugin with validated parameters, as written ``name[key=value,...]``."""

    kind: str
    name: str
    obj: Any
    params: Any

    @property
    def display(self) -> str:
        """Canonical short form: the name plus the parameters that differ from the defaults."""
        return format_spec(self.name, self.params)


def _origin_of(obj: Any) -> str:
    module = getattr(obj, "__module__", None) or type(obj).__module__
    qual = getattr(obj, "__qualname__", None) or type(obj).__qualname__
    return f"{module}:{qual}"


class Registry(Generic[T]):
    """A named collection of plugins of one kind.

    Args:
        kind: singular noun used in messages (``"method"``).
        group: entry-point group scanned for third-party plugins (``"distillbench.methods"``).
        check: optional validation of a registered object; raises ``TypeError`` with the reason.

    Example:
        >>> reg = Registry("widget", group="example.widgets")
        >>> @reg.register("knob")
        ... class Knob:
        ...     pass
        >>> reg.get("knob") is Knob
        True
    """

    def __init__(self, kind: str, *, group: str, check: Callable[[Any], None] | None = None) -> None:
        self.kind = kind
        self.group = group
        self._check = check
        self._objects: dict[str, T] = {}
        self._origins: dict[str, str] = {}
        self._lazy: dict[str, tuple[str, str]] = {}  # name -> (target "module:attr", origin text)
        self._broken: dict[str, str] = {}
        self._entry_points_scanned = False
        self._lock = threading.RLock()

    # ----------------------------------------------------------------------------------- registration
    def register(self, name: str, *aliases: str) -> Callable[[T], T]:
        """Decorator registering an object under ``name`` (and aliases).

        Raises:
            DuplicateNameError: a different object already holds one of the names.
        """

        def decorator(obj: T) -> T:
            for n in (name, *aliases):
                self.add(n, obj)
            return obj

        return decorator

    def add(self, name: str, obj: T, *, origin: str | None = None) -> None:
        """Register ``obj`` under ``name``; see :meth:`register`."""
        if not _NAME_RE.match(name):
            raise DistillBenchError(
                f"invalid {self.kind} name {name!r}: use letters, digits, '_', '-' or '.', starting with a letter"
            )
        origin = origin or _origin_of(obj)
        with self._lock:
            if name in self._objects:
                old = self._objects[name]
                # Re-registering the very same definition (e.g. a module reloaded) is harmless.
                if old is obj or self._origins[name] == origin:
                    self._objects[name] = obj
                    return
                raise DuplicateNameError(
                    f"{self.kind} {name!r} is registered twice: by {self._origins[name]} and by {origin}; "
                    "rename one of them"
                )
            lazy = self._lazy.get(name)
            if lazy is not None and not self._same_target(lazy[0], obj):
                raise DuplicateNameError(
                    f"{self.kind} {name!r} is registered twice: by {lazy[1]} and by {origin}; rename one of them"
                )
            self._store(name, obj, origin)

    def _store(self, name: str, obj: T, origin: str) -> None:
        """Validate ``obj`` with the registry's check and record it (caller holds the lock)."""
        if self._check is not None:
            try:
                self._check(obj)
            except TypeError as exc:
                raise DistillBenchError(f"cannot register {self.kind} {name!r} ({origin}): {exc}") from None
        self._objects[name] = obj
        self._origins[name] = origin

    @staticmethod
    def _same_target(target: str, obj: Any) -> bool:
        module, _, attr = target.partition(":")
        return getattr(obj, "__module__", None) == module and getattr(obj, "__qualname__", None) == attr

    def add_lazy(self, name: str, target: str, *, origin: str | None = None) -> None:
        """Declare a plugin imported on first use from ``target`` (``"package.module:Attr"``)."""
        with self._lock:
            if name in self._lazy and self._lazy[name][0] != target:
                raise DuplicateNameError(
                    f"{self.kind} {name!r} is registered twice: by {self._lazy[name][1]} and by {origin or target}"
                )
            self._lazy[name] = (target, origin or target)

    def unregister(self, name: str) -> None:
        """Remove a decorated registration (for tests and interactive sessions; built-ins stay declared)."""
        with self._lock:
            self._objects.pop(name, None)
            self._origins.pop(name, None)
            self._broken.pop(name, None)

    # ------------------------------------------------------------------------------ entry points
    def _scan_entry_points(self) -> None:
        if self._entry_points_scanned:
            return
        with self._lock:
            if self._entry_points_scanned:
                return
            self._entry_points_scanned = True
            try:
                eps = importlib.metadata.entry_points(group=self.group)
            except Exception as exc:  # a corrupt installed distribution must not break the tool
                self._broken["<entry points>"] = f"could not read entry points of group {self.group!r}: {exc}"
                return
            for ep in eps:
                dist = getattr(getattr(ep, "dist", None), "name", None) or "unknown distribution"
                origin = f"entry point {ep.name!r} = {ep.value!r} of {dist}"
                existing = self._lazy.get(ep.name)
                if (existing and existing[0] != ep.value) or (
                    ep.name in self._objects and not self._same_target(ep.value, self._objects[ep.name])
                ):
                    first = existing[1] if existing else self._origins[ep.name]
                    self._broken[ep.name] = (
                        f"{self.kind} {ep.name!r} is registered twice: by {first} and by {origin}; "
                        "uninstall or rename one of them"
                    )
                    continue
                self._lazy[ep.name] = (ep.value, origin)

    def _load(self, name: str) -> T:
        target, origin = self._lazy[name]
        module_name, _, attr = target.partition(":")
        try:
            module = importlib.import_module(module_name)
            obj: Any = module
            for part in attr.split(".") if attr else []:
                obj = getattr(obj, part)
        except Exception as exc:
            with self._lock:
                self._broken[name] = f"failed to load {origin}: {type(exc).__name__}: {exc}"
            raise DistillBenchError(f"{self.kind} {name!r} is broken: {self._broken[name]}") from exc
        with self._lock:
            if name not in self._objects:
                # Loaded from its declared target, so it is by definition the declared plugin.
                self._store(name, obj, origin)
        return self._objects[name]

    # ------------------------------------------------------------------------------------ lookup
    def get(self, name: str) -> T:
        """The plugin registered as ``name``.

        Raises:
            UnknownNameError: the name is unknown; the message lists close matches and valid names.
            DuplicateNameError: two plugins claim the name.
            DistillBenchError: the plugin failed to import.
        """
        if name in self._objects:
            return self._objects[name]
        self._scan_entry_points()
        if name in self._broken:
            message = self._broken[name]
            if "registered twice" in message:
                raise DuplicateNameError(message)
            raise DistillBenchError(f"{self.kind} {name!r} is broken: {message}")
        if name in self._lazy:
            return self._load(name)
        raise UnknownNameError(self.unknown_message(name))

    def unknown_message(self, name: str) -> str:
        """``Unknown method 'dn'. Did you mean: dm, dc? Available: ...``."""
        names = self.names()
        close = difflib.get_close_matches(name, names, n=3, cutoff=0.5)
        hint = f" Did you mean: {', '.join(close)}?" if close else ""
        return f"unknown {self.kind} {name!r}.{hint} Available: {', '.join(names) or '(none)'}"

    def __contains__(self, name: object) -> bool:
        if not isinstance(name, str):
            return False
        self._scan_entry_points()
        return name in self._objects or (name in self._lazy and name not in self._broken)

    def names(self, pattern: str | None = None) -> list[str]:
        """Registered names (built-in, decorated and entry points), naturally sorted, ``fnmatch``-filtered."""
        self._scan_entry_points()
        names = (set(self._objects) | set(self._lazy)) - set(self._broken)
        if pattern:
            names = {n for n in names if fnmatch.fnmatchcase(n, pattern)}
        return sorted(names, key=natural_key)

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def origin(self, name: str) -> str:
        """Where ``name`` was registered (module and class, or entry point and distribution)."""
        if name in self._origins:
            return self._origins[name]
        self._scan_entry_points()
        if name in self._lazy:
            return self._lazy[name][1]
        raise UnknownNameError(self.unknown_message(name))

    @property
    def broken(self) -> dict[str, str]:
        """Plugins that could not be loaded, with the reason."""
        self._scan_entry_points()
        return dict(self._broken)

    def load_all(self) -> None:
        """Import every declared plugin (used by ``ls --load`` and the conformance tests)."""
        for name in self.names():
            with contextlib.suppress(DistillBenchError):
                self.get(name)

    # ---------------------------------------------------------------------------------- configure
    def resolve(self, spec: str, params: Mapping[str, Any] | None = None) -> Configured:
        """Parse ``name[key=value,...]`` and validate its parameters against the plugin's ``Params``.

        Args:
            spec: ``name`` or ``name[key=value,...]``.
            params: further parameters as Python values (``{"iterations": 10}``), checked and converted
                exactly as the spec's strings are; a key may be given in ``spec`` or here, not in both.

        Raises:
            UnknownNameError: the name is unknown (the message lists close matches).
            ConfigError: the spec is malformed, or a parameter is unknown, mistyped, out of range or
                given twice.
        """
        name, raw = parse_spec(spec)
        obj = self.get(name)
        owner = f"{self.kind} {name!r}"
        both = sorted(set(raw) & set(params or {}))
        if both:
            raise ConfigError(
                f"parameter {both[0]!r} of {owner} is given twice: in {spec.strip()!r} and as a keyword; give it once"
            )
        params_cls = getattr(obj, "Params", NoParams)
        return Configured(self.kind, name, obj, build_params(params_cls, {**raw, **(params or {})}, owner=owner))
