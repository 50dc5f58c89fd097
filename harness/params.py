"""``name[key=value,...]`` plugin specs and typed, frozen parameter dataclasses.

A configured plugin is written ``dm[lr_img=1.0,iterations=200]`` in grids and on the command line.
Values may themselves be specs (``dm[net=convnet[depth=2]]``): brackets nest. Each plugin declares
its parameters as a frozen dataclass; :func:`build_params` checks keys and converts values to the
declared types, so ``iterations=2e3`` or ``unknown=1`` are errors, not silent surprises.

Two declarations on a parameter dataclass shape identity and validation:

* A field added after a release carries ``metadata={"since": "<version>"}`` (it must have a default).
  :func:`params_to_dict`, which trial ids, distill ids and rows are built from, leaves such a field
  out while it holds its default, so adding an option never changes the id of a configuration that
  does not use it (results already on disk are still found and not re-run). A non-default value is
  included, so configurations that use the option get ids of their own.
* A field whose default is ``"auto"`` may declare ``metadata={"auto": {"image": "lenet", "text": "textcnn"}}``:
  the value ``auto`` stands for the entry of the dataset's modality. The trial resolver replaces it by
  that value (:func:`resolve_auto`) before ids are hashed, so ``dd`` on digits keeps the id it had
  when ``lenet`` was the literal default, and :func:`format_spec` shows these values as the default.
* ``refused_params: ClassVar[dict[str, str]]`` names keys the plugin deliberately does not take,
  each with the message to show (``{owner}`` is replaced by e.g. ``dataset 'sst2'``); without it an
  unknown key gets the generic "unknown parameter" message.

Values are canonicalised as they are converted, so one configuration has one trial id however it is
spelled: ``"7"``, ``"+7"`` and ``7`` become the int ``7``; ``"1e-3"`` and ``0.001`` the float
``0.001``. Integers must fit int64 (rows store them as int64; a larger value would pass
validation and fail when its row is written). Floats must be finite: ``inf`` or ``nan`` would pass
validation and then poison a whole run, so a field that really means "unbounded" opts in with
``metadata={"allow_inf": True}``; NaN is never a valid setting.
"""

from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from collections.abc import Mapping
from typing import Any, Literal

from distillbench.harness.errors import ConfigError

_TRUE = {"true", "yes", "on", "1"}
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
ALLOW_INF = "allow_inf"
"""Field metadata key of a float parameter for which ``inf`` / ``-inf`` is a meaningful value."""
_FALSE = {"false", "no", "off", "0"}


@dataclasses.dataclass(frozen=True)
class NoParams:
    """Parameters of a plugin that takes none."""


def parse_spec(text: str) -> tuple[str, dict[str, str]]:
    """Split ``name[k=v,...]`` into the name and the raw (string) values.

    Args:
        text: the spec, e.g. ``"dm[iterations=200,net=convnet[depth=2]]"``.

    Returns:
        The name and an ordered mapping of key to raw value string.

    Raises:
        ConfigError: unbalanced brackets, a missing ``=``, an empty name or a repeated key.
    """
    if not isinstance(text, str):
        raise ConfigError(f"expected a plugin name such as 'dm' or 'dm[iterations=200]', got {text!r}")
    text = text.strip()
    if "[" not in text:
        if "]" in text or not text:
            raise ConfigError(f"malformed plugin spec {text!r}: expected 'name' or 'name[key=value,...]'")
        return text, {}
    name, _, rest = text.partition("[")
    name = name.strip()
    if not name or not rest.endswith("]"):
        raise ConfigError(f"malformed plugin spec {text!r}: expected 'name[key=value,...]' with a closing ']'")
    body = rest[:-1]
    items: list[str] = []
    depth, start = 0, 0
    for i, ch in enumerate(body):
        if ch == "[":
            depth += 1
        elif ch == "]":
            depth -= 1
            if depth < 0:
                raise ConfigError(f"malformed plugin spec {text!r}: unbalanced ']'")
        elif ch == "," and depth == 0:
            items.append(body[start:i])
            start = i + 1
    if depth != 0:
        raise ConfigError(f"malformed plugin spec {text!r}: unbalanced '['")
    items.append(body[start:])
    raw: dict[str, str] = {}
    for item in items:
        if not item.strip():
            if len(items) == 1:
                continue  # "name[]" is just the name
            raise ConfigError(f"malformed plugin spec {text!r}: empty item between commas")
        key, eq, value = item.partition("=")
        key = key.strip()
        if not eq or not key:
            raise ConfigError(f"malformed plugin spec {text!r}: item {item.strip()!r} is not 'key=value'")
        if key in raw:
            raise ConfigError(f"malformed plugin spec {text!r}: key {key!r} given twice")
        raw[key] = value.strip()
    return name, raw


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return " | ".join(repr(a) for a in typing.get_args(tp))
    if origin in (typing.Union, types.UnionType):
        return " | ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is tuple:
        args = typing.get_args(tp)
        return f"tuple[{_type_name(args[0])}, ...]" if args else "tuple"
    if tp is type(None):
        return "none"
    return getattr(tp, "__name__", str(tp))


def canonical_int(value: Any) -> int:
    """``value`` as an int within int64: an int, or a string of ASCII digits (``"7"``, ``"+7"``, ``"1_000"``).

    Raises:
        ValueError: not an integer (bools and floats included: ``2.5`` or ``True`` are not counts), or
            outside int64.
    """
    if isinstance(value, bool):
        raise ValueError("a boolean is not an integer")
    if isinstance(value, str):
        text = value.strip().replace("_", "")
        # ASCII digits only: str.isdigit() also accepts '²' and other digits int() then rejects.
        if not re.fullmatch(r"[+-]?[0-9]+", text):
            raise ValueError(f"{value!r} is not an integer")
        value = int(text, 10)
    if not isinstance(value, int):
        raise ValueError(f"{value!r} is not an integer")
    if not INT64_MIN <= value <= INT64_MAX:
        raise ValueError(f"{value} does not fit a 64-bit integer")
    return int(value)


def _convert(value: Any, tp: Any, *, allow_inf: bool = False) -> Any:
    """Convert ``value`` (a raw string or a YAML scalar) to ``tp``; raise ``ValueError`` if impossible."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if type(None) in args and (value is None or (isinstance(value, str) and value.lower() in {"none", "null"})):
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(value, arg, allow_inf=allow_inf)
            except ValueError:
                continue
        raise ValueError
    if origin is Literal:
        choices = typing.get_args(tp)
        for choice in choices:
            if value == choice or (isinstance(value, str) and str(choice) == value):
                return choice
        raise ValueError
    if origin is tuple:
        (inner, *_rest) = typing.get_args(tp) or (str,)
        if isinstance(value, str):
            parts = [p for p in value.replace(";", " ").replace("/", " ").split() if p]
        elif isinstance(value, list | tuple):
            parts = list(value)
        else:
            raise ValueError
        return tuple(_convert(p, inner, allow_inf=allow_inf) for p in parts)
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in _TRUE | _FALSE:
            return value.lower() in _TRUE
        raise ValueError
    if tp is int:
        return canonical_int(value)
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float | str):
            raise ValueError
        try:
            result = float(value.replace("_", "") if isinstance(value, str) else value)
        except OverflowError:  # float(10**400)
            raise ValueError from None
        # A finite-looking string can overflow too ("1e400" is inf).
        if math.isnan(result) or (math.isinf(result) and not allow_inf):
            raise ValueError
        return result
    if tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, int | float) and not isinstance(value, bool):
            return str(value)
        raise ValueError
    raise ValueError


def _range_hint(tp: Any, allow_inf: bool) -> str:
    """What else a value of type ``tp`` must satisfy, for the message of a refused value."""
    names = _type_name(tp).split(" | ")
    if "int" in names:
        return " (a whole number that fits 64 bits)"
    if "float" in names and not allow_inf:
        return " (a finite number: inf and nan are not settings)"
    return ""


def build_params(cls: type, raw: Mapping[str, Any], *, owner: str) -> Any:
    """Instantiate the frozen dataclass ``cls`` from raw values, checking keys and types.

    Args:
        cls: the parameter dataclass.
        raw: key to value (strings from a spec, or YAML scalars).
        owner: what the parameters belong to, for messages (e.g. ``"method 'dm'"``).

    Raises:
        ConfigError: unknown key (with the valid keys) or a value of the wrong type.
    """
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    kwargs: dict[str, Any] = {}
    refused: Mapping[str, str] = getattr(cls, "refused_params", {})
    for key, value in raw.items():
        if key not in fields and key in refused:
            raise ConfigError(refused[key].format(owner=owner))
        if key not in fields:
            valid = ", ".join(sorted(fields)) or "(none)"
            raise ConfigError(f"unknown parameter {key!r} for {owner}; valid parameters: {valid}")
        tp = hints[key]
        allow_inf = bool(fields[key].metadata.get(ALLOW_INF, False))
        try:
            kwargs[key] = _convert(value, tp, allow_inf=allow_inf)
        except (ValueError, TypeError):
            raise ConfigError(
                f"parameter {key!r} of {owner} must be {_type_name(tp)}{_range_hint(tp, allow_inf)}, got {value!r}"
            ) from None
    try:
        params = cls(**kwargs)
    except (ValueError, TypeError) as exc:  # raised by a dataclass __post_init__ range check
        raise ConfigError(f"invalid parameters for {owner}: {exc}") from None
    return params


SINCE = "since"
"""Field metadata key marking a parameter added after a release (see the module docstring)."""


def _default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return dataclasses.MISSING


def params_to_dict(params: Any) -> dict[str, Any]:
    """The fields of a parameter dataclass as plain JSON-able values (tuples become lists).

    This is the identity of a configuration (trial and distill ids hash it), so a field declared
    with ``metadata={"since": ...}`` is left out while it holds its default: the ids of
    configurations that do not use a later option stay what they were before it existed.
    """
    out: dict[str, Any] = {}
    for f in dataclasses.fields(params):
        value = getattr(params, f.name)
        if SINCE in f.metadata and value == _default(f):
            continue
        out[f.name] = list(value) if isinstance(value, tuple) else value
    return out


AUTO = "auto"
"""Field metadata key: ``{modality: value}`` that the value ``"auto"`` stands for (see the module docstring)."""


def resolve_auto(params: Any, modality: str) -> Any:
    """``params`` with every declared ``"auto"`` value replaced by its entry for ``modality``.

    Fields without the declaration, and modalities the declaration does not name, keep their value
    (the plugin's own validation then says what is missing). Returns ``params`` itself when nothing
    changes.

    Example:
        >>> @dataclasses.dataclass(frozen=True)
        ... class P:
        ...     net: str = dataclasses.field(default="auto", metadata={"auto": {"image": "lenet"}})
        >>> resolve_auto(P(), "image").net
        'lenet'
    """
    if not dataclasses.is_dataclass(params):
        return params
    changes = {
        f.name: f.metadata[AUTO][modality]
        for f in dataclasses.fields(params)
        if AUTO in f.metadata and getattr(params, f.name) == "auto" and modality in f.metadata[AUTO]
    }
    return dataclasses.replace(params, **changes) if changes else params


def format_value(value: Any) -> str:
    """A value as it is written inside a spec (round-trips through :func:`parse_spec`)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "none"
    if isinstance(value, tuple | list):
        return "/".join(format_value(v) for v in value)
    if isinstance(value, float):
        return repr(value)
    return str(value)


def format_spec(name: str, params: Any) -> str:
    """The display form of a configured plugin: only the parameters that differ from the defaults.

    A value that a declared ``"auto"`` resolves to counts as the default: ``dd`` on digits resolves
    ``net=auto`` to ``lenet`` and is still shown as ``dd``.
    """
    if params is None:
        return name
    defaults = type(params)()
    changed = [
        f"{f.name}={format_value(getattr(params, f.name))}"
        for f in dataclasses.fields(params)
        if getattr(params, f.name) != getattr(defaults, f.name)
        and getattr(params, f.name) not in f.metadata.get(AUTO, {}).values()
    ]
    return f"{name}[{','.join(sorted(changed))}]" if changed else name


def describe_params(cls: type) -> list[tuple[str, str, str, str]]:
    """(name, type, default, help) for each field of a parameter dataclass, for ``describe``."""
    hints = typing.get_type_hints(cls)
    rows = []
    for f in dataclasses.fields(cls):
        if f.default is not dataclasses.MISSING:
            default = format_value(f.default)
        elif f.default_factory is not dataclasses.MISSING:
            default = format_value(f.default_factory())
        else:
            default = "(required)"
        rows.append((f.name, _type_name(hints[f.name]), default, f.metadata.get("help", "")))
    return rows
