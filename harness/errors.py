"""User-facing errors.

Every error a user can cause with bad input (a grid file, a CLI argument, a plugin name or
parameter) derives from :class:`DistillBenchError`. The CLI prints such an error as one line and
exits with status 2; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable

# The exit status of bad input, for the CLI and every script.
EXIT_USAGE = 2


class DistillBenchError(Exception):
    """Base class of errors caused by user input; the message says what is wrong and how to fix it."""


class ConfigError(DistillBenchError, ValueError):
    """A grid, spec or parameter value is malformed or out of range."""


class UnknownNameError(DistillBenchError, KeyError):
    """A registry was asked for a name it does not hold.

    Subclasses ``KeyError`` so code that looks names up generically can catch it, but overrides
    ``__str__`` because ``KeyError`` would quote the whole message.
    """

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class DuplicateNameError(DistillBenchError, ValueError):
    """Two different objects were registered under one name."""


class IncompatibleError(DistillBenchError):
    """Two plugins in one trial cannot work together (e.g. a weighting with a method that ignores weights)."""


class DataError(DistillBenchError):
    """A dataset is missing, corrupt or unusable; the message names the path and the fix."""


class DivergedError(RuntimeError):
    """Raised by a method when its loss became NaN or infinite; the trial ends with status ``diverged``."""


def one_line_errors(prog: str) -> Callable[[Callable[..., int]], Callable[..., int]]:
    """Decorate a script's ``main(argv) -> int`` to report bad input as the CLI does.

    A :class:`DistillBenchError` (a missing dataset, an unknown name, a bad option) becomes the line
    ``<prog>: <message>`` on stderr and exit status 2; any other exception is a bug and keeps its traceback.
    The benchmark scripts use it; so can a plugin's own scripts.
    """

    def decorate(main: Callable[..., int]) -> Callable[..., int]:
        @functools.wraps(main)
        def wrapped(*args: object, **kwargs: object) -> int:
            try:
                return main(*args, **kwargs)
            except DistillBenchError as exc:
                print(f"{prog}: {exc}", file=sys.stderr)
                return EXIT_USAGE

        return wrapped

    return decorate
