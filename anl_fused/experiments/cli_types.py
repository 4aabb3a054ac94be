"""Shared argparse ``type=`` validators for the ``anl-fused`` subcommands, and the parser class that
makes every ``type=float`` option reject ``nan`` and ``inf``.

A bad number is a usage error (argparse prints the usage and ``argument --lr: must be > 0, got
'-1'``, exit code 2), never a traceback or a silent run::

    p.add_argument("--lr", type=cli_types.positive_float, default=0.1)
    p.add_argument("--epochs", type=cli_types.nonneg_int, default=10)
    p.add_argument("--momentum", type=cli_types.number(float, low=0.0, high=1.0, high_open=True))
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable

__all__ = [
    "ArgumentParser",
    "finite_float",
    "fraction",
    "nonneg_float",
    "nonneg_int",
    "number",
    "out_of_range",
    "positive_float",
    "positive_int",
]


def out_of_range(
    value: float | int,
    *,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
) -> str | None:
    """What is wrong with ``value`` (not finite, or outside ``[low, high]``; ``low_open`` /
    ``high_open`` exclude that end), or ``None``. Shared by the parsers and the configs."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return f"must be a number, got {value!r}"
    if not math.isfinite(value):
        return f"must be a finite number, got {value!r}"
    below = low is not None and (value <= low if low_open else value < low)
    above = high is not None and (value >= high if high_open else value > high)
    if below or above:
        bounds = " and ".join(
            f"{op} {b:g}"
            for op, b in (((">" if low_open else ">="), low), (("<" if high_open else "<="), high))
            if b is not None
        )
        return f"must be {bounds}, got {value!r}"
    return None


def number(
    kind: type = float,
    *,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
    name: str | None = None,
) -> Callable[[str], float | int]:
    """A ``type=`` function parsing ``kind`` (``int`` or ``float``, always finite) within
    ``[low, high]`` (``low_open`` / ``high_open``: excluding that end; ``None``: unbounded)."""

    def parse(text: str) -> float | int:
        try:
            value = kind(text)
        except (TypeError, ValueError):
            raise argparse.ArgumentTypeError(
                f"expected {'an integer' if kind is int else 'a number'}, got {text!r}"
            ) from None
        problem = out_of_range(value, low=low, high=high, low_open=low_open, high_open=high_open)
        if problem:
            raise argparse.ArgumentTypeError(problem.rsplit(", got ", 1)[0] + f", got {text!r}")
        return value

    parse.__name__ = name or kind.__name__
    return parse


finite_float = number(float, name="finite_float")
positive_float = number(float, low=0.0, low_open=True, name="positive_float")
nonneg_float = number(float, low=0.0, name="nonneg_float")
fraction = number(float, low=0.0, high=1.0, name="fraction")  # [0, 1]
positive_int = number(int, low=1, name="positive_int")
nonneg_int = number(int, low=0, name="nonneg_int")


class ArgumentParser(argparse.ArgumentParser):
    """``argparse.ArgumentParser`` whose ``type=float`` options reject ``nan`` and ``inf`` (what
    ``float()`` accepts); subparsers inherit the class, so this holds for every subcommand."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.register("type", float, finite_float)
