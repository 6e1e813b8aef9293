"""The checks of settings, one set for the whole library.

Each check raises ValueError with one line that names the setting as its reader knows it:
the caller passes the name, an argument (``tau_min``) in the library, a flag
(``--tau-min``) on the command line. A check returns the value it accepts, as a Python
number, so a constructor can keep what it checked.

>>> number("tau", 0.2, above=0)
0.2
>>> whole("--epochs", 0, low=1)
Traceback (most recent call last):
ValueError: --epochs must be positive, got 0
"""

from __future__ import annotations

import argparse
import math
import numbers
import typing
from collections.abc import Sequence

__all__ = ["ArgumentParser", "at_most", "boolean", "choice", "number", "whole"]


class ArgumentParser(argparse.ArgumentParser):
    """argparse with usage errors as one line on stderr and exit code 2, like every other
    bad input of the command line."""

    def error(self, message: str) -> typing.NoReturn:
        self.exit(2, f"error: {message} (see {self.prog} --help)\n")


def whole(name: str, value: object, *, low: int | None = None, high: int | None = None) -> int:
    """A whole number (not a bool, not a float) in [low, high].

    >>> whole("--seed", 3, low=0)
    3
    >>> whole("subset", 2.0)
    Traceback (most recent call last):
    ValueError: subset must be a whole number, got 2.0
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(f"{name} must be a whole number, got {value!r}")
    if low is not None and value < low:
        bound = "positive" if low == 1 else f"at least {low}"
        raise ValueError(f"{name} must be {bound}, got {value}")
    if high is not None and value > high:
        raise ValueError(f"{name} must be at most {high}, got {value}")
    return int(value)


def number(
    name: str,
    value: object,
    *,
    low: float | None = None,
    high: float | None = None,
    above: float | None = None,
    below: float | None = None,
) -> float:
    """A finite real number (not a bool), as a float, in [low, high] and (above, below).

    >>> number("--momentum", 0.9, low=0, below=1)
    0.9
    >>> number("--momentum", 1, low=0, below=1)
    Traceback (most recent call last):
    ValueError: --momentum must be in [0, 1), got 1.0
    >>> number("rate", float("nan"))
    Traceback (most recent call last):
    ValueError: rate must be a finite number, got nan
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    lower = upper = None  # (bound, bracket, relation, holds)
    if above is not None:
        lower = (above, "(", ">", value > above)
    elif low is not None:
        lower = (low, "[", ">=", value >= low)
    if below is not None:
        upper = (below, ")", "<", value < below)
    elif high is not None:
        upper = (high, "]", "<=", value <= high)
    if all(end is None or end[3] for end in (lower, upper)):
        return value
    if lower is not None and upper is not None:
        bound = f"in {lower[1]}{lower[0]:g}, {upper[0]:g}{upper[1]}"
    else:
        end = lower or upper
        bound = f"{end[2]} {end[0]:g}"
    raise ValueError(f"{name} must be {bound}, got {value}")


def at_most(name: str, value: float, limit_name: str, limit: float, note: str = "") -> None:
    """Two settings in order, ``value <= limit``; ``note`` says what the limit is.

    >>> at_most("tau_min", 0.3, "tau_max", 0.2)
    Traceback (most recent call last):
    ValueError: tau_min must be <= tau_max, got tau_min=0.3 > tau_max=0.2
    """
    if value > limit:
        raise ValueError(
            f"{name} must be <= {limit_name}{note}, got {name}={value} > {limit_name}={limit}"
        )


def boolean(name: str, value: object) -> bool:
    """True or False, nothing else (not 1, not "yes").

    >>> boolean("reweight", 1)
    Traceback (most recent call last):
    ValueError: reweight must be True or False, got 1
    """
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be True or False, got {value!r}")
    return value


def choice(name: str, value: object, known: Sequence[str]) -> str:
    """One of the names ``known``.

    >>> choice("--amp", "fp8", ("auto", "bf16", "fp16", "off"))
    Traceback (most recent call last):
    ValueError: unknown --amp 'fp8'; choose one of auto, bf16, fp16, off
    """
    if not isinstance(value, str) or value not in known:
        raise ValueError(f"unknown {name} {value!r}; choose one of {', '.join(known)}")
    return value
