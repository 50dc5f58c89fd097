"""Published ("reported") numbers, and the rule that attaches them to leaderboard cells.

The numbers live in ``leaderboard/reported.yaml`` (shipped as package data), each with the key of its
source and how well it is verified. Their origin is the project's method research notes
(``METHODS.md``), which cite the official repositories, project pages and papers.

Matching rule: a reported number is shown in a cell only when **all** of these hold:

* the table's protocol is the paper protocol the number was measured under: the entry's
  ``protocol`` equals the table's ``name@version`` (an entry with ``protocol: null`` has no
  distillbench protocol yet and is never shown);
* the protocol is not a quick protocol (``quick-v1`` and the like never carry paper numbers, even if
  an entry named one);
* the table's evaluation network equals the entry's ``eval_network``;
* the dataset display name is equal (``mnist`` is not ``mnist[imbalance=10.0]``);
* the method display name is equal, so a method run with non-default (non-paper) hyperparameters,
  e.g. ``dm[iterations=200]``, never borrows the paper number of ``dm``;
* weighting and label stage are equal (defaults ``none`` and ``native``), and so is the IPC.

The difference shown is reproduced minus reported, in percentage points.

Example::

    >>> numbers = load_reported()
    >>> match(numbers, dataset="mnist", protocol_id="convnet-v1@1", quick=False, eval_network="convnet",
    ...       method="dc", weighting="none", labels="native", ipc=10).value
    97.4
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from importlib import resources
from pathlib import Path
from typing import Any

from distillbench.harness.errors import DataError

VERIFICATIONS = ("primary", "secondary", "unverified")
"""``primary``: confirmed from the official code, README, project page or paper; ``secondary``: quoted
by a third-party paper or page; ``unverified``: not confirmed (or the mapping to a distillbench
dataset, method or protocol is an assumption). Everything but ``primary`` is flagged in the output."""

_REQUIRED = ("dataset", "method", "ipc", "protocol", "eval_network", "value", "source", "verification")
_OPTIONAL = ("weighting", "labels", "std", "note")


@dataclasses.dataclass(frozen=True)
class Source:
    """A citation.

    Attributes:
        key: short key used by the entries, e.g. ``DC-readme``.
        citation: full reference (authors, title, venue or repository at a commit, table).
    """

    key: str
    citation: str


@dataclasses.dataclass(frozen=True)
class ReportedNumber:
    """One published accuracy (percent) with the setting it was measured in.

    Attributes:
        dataset: dataset display name, e.g. ``mnist`` or ``colored_mnist[conflict=0.05]``.
        method: method display name with the paper's non-default parameters, e.g. ``dd[distill_steps=1]``.
        weighting: weighting display name (``none`` when unweighted).
        labels: label stage display name (``native`` when unchanged).
        ipc: samples per class.
        protocol: ``name@version`` of the distillbench protocol that follows the paper's evaluation,
            or None when there is none yet (then the number is never attached).
        eval_network: the evaluation network of that protocol.
        value: reported mean accuracy in percent.
        std: reported standard deviation in percent, when given.
        source: citation.
        verification: one of :data:`VERIFICATIONS`.
        note: caveats (approximate value, differing recipe, ...).
    """

    dataset: str
    method: str
    weighting: str
    labels: str
    ipc: int
    protocol: str | None
    eval_network: str
    value: float
    std: float | None
    source: Source
    verification: str
    note: str = ""

    @property
    def verified(self) -> bool:
        """Whether the number comes from a primary source."""
        return self.verification == "primary"

    @property
    def flag(self) -> str:
        """``""`` for primary numbers, else ``UNVERIFIED`` or ``secondary``, as shown in the tables."""
        return {"primary": "", "secondary": "secondary", "unverified": "UNVERIFIED"}[self.verification]

    def format_value(self) -> str:
        """``97.4`` or ``28.3 ± 0.5``."""
        text = _number(self.value)
        return text if self.std is None else f"{text} \u00b1 {_number(self.std)}"


def default_path() -> Path:
    """The ``reported.yaml`` shipped with the package."""
    return Path(str(resources.files("distillbench.leaderboard").joinpath("reported.yaml")))


def load_reported(path: Path | None = None) -> list[ReportedNumber]:
    """Read and validate a reported-numbers YAML file (default: the packaged ``reported.yaml``).

    Args:
        path: a YAML file with ``sources`` (key -> citation) and ``numbers`` (a list of entries).

    Returns:
        The entries in file order.

    Raises:
        DataError: the file is missing, is not valid YAML, or an entry is malformed (the message
            names the entry index and the problem).
    """
    import yaml

    path = default_path() if path is None else Path(path)
    try:
        document = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise DataError(f"cannot read reported numbers {str(path)!r}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise DataError(f"reported numbers {str(path)!r} are not UTF-8 text; pass a YAML file") from None
    except yaml.YAMLError as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise DataError(f"reported numbers {str(path)!r} are not valid YAML: {first}") from None
    if not isinstance(document, Mapping) or not isinstance(document.get("numbers"), list):
        raise DataError(f"reported numbers {str(path)!r} must be a mapping with 'sources' and a 'numbers' list")
    sources = {str(k): Source(str(k), " ".join(str(v).split())) for k, v in (document.get("sources") or {}).items()}
    return [_entry(path, i, raw, sources) for i, raw in enumerate(document["numbers"])]


def match(
    numbers: Sequence[ReportedNumber],
    *,
    dataset: str,
    protocol_id: str,
    quick: bool,
    eval_network: str,
    method: str,
    weighting: str,
    labels: str,
    ipc: int,
) -> ReportedNumber | None:
    """The reported number for one cell under the module's matching rule, or None.

    Args:
        numbers: entries from :func:`load_reported`.
        dataset: dataset display name of the table.
        protocol_id: ``name@version`` of the table's protocol.
        quick: whether that protocol is a quick one (then nothing matches).
        eval_network: evaluation network of the table.
        method: method display name of the row.
        weighting: weighting display name of the row.
        labels: label stage display name of the row.
        ipc: IPC of the column.

    Returns:
        The first matching entry in file order.
    """
    if quick:
        return None
    for number in numbers:
        if (
            number.protocol is not None
            and number.protocol == protocol_id
            and number.eval_network == eval_network
            and number.dataset == dataset
            and number.method == method
            and number.weighting == weighting
            and number.labels == labels
            and number.ipc == ipc
        ):
            return number
    return None


def _entry(path: Path, index: int, raw: Any, sources: Mapping[str, Source]) -> ReportedNumber:
    where = f"reported numbers {str(path)!r}, entry {index}"
    if not isinstance(raw, Mapping):
        raise DataError(f"{where}: expected a mapping, got {type(raw).__name__}")
    missing = [k for k in _REQUIRED if k not in raw]
    unknown = sorted(set(raw) - set(_REQUIRED) - set(_OPTIONAL))
    if missing or unknown:
        raise DataError(f"{where}: missing keys {missing}, unknown keys {unknown}")
    if raw["source"] not in sources:
        raise DataError(f"{where}: source {raw['source']!r} is not listed under 'sources'")
    if raw["verification"] not in VERIFICATIONS:
        raise DataError(f"{where}: verification must be one of {VERIFICATIONS}, got {raw['verification']!r}")
    protocol = raw["protocol"]
    if protocol is not None and "@" not in str(protocol):
        raise DataError(f"{where}: protocol must be 'name@version' (e.g. convnet-v1@1) or null, got {protocol!r}")
    try:
        value = float(raw["value"])
        std = None if raw.get("std") is None else float(raw["std"])
        ipc = int(raw["ipc"])
    except (TypeError, ValueError) as exc:
        raise DataError(f"{where}: value, std and ipc must be numbers ({exc})") from None
    if not (math.isfinite(value) and 0.0 <= value <= 100.0):
        raise DataError(f"{where}: value must be an accuracy in percent, got {value}")
    return ReportedNumber(
        dataset=str(raw["dataset"]),
        method=str(raw["method"]),
        weighting=str(raw.get("weighting") or "none"),
        labels=str(raw.get("labels") or "native"),
        ipc=ipc,
        protocol=None if protocol is None else str(protocol),
        eval_network=str(raw["eval_network"]),
        value=value,
        std=std,
        source=sources[raw["source"]],
        verification=str(raw["verification"]),
        note=" ".join(str(raw.get("note") or "").split()),
    )


def _number(value: float) -> str:
    """Up to two decimals without trailing zeros: ``97.4``, ``25.01``, ``96``."""
    text = f"{value:.2f}".rstrip("0").rstrip(".")
    return text if text != "-0" else "0"
