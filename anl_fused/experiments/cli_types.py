"""Shared argparse ``type=`` parsers of the ``anl-fused`` subcommands: a value is read as its annotation says, by
pydantic (lax: ``"3"`` is an int; numbers finite, within their bounds; a ``Literal``'s words), a bad one is a usage
error (``argument --lr: Input should be greater than 0, got '-1'``, exit code 2)::

    p.add_argument("--momentum", type=cli_types.number(float, ge=0, lt=1))

:class:`ArgumentParser` makes every ``type=float`` option reject ``nan`` and ``inf``.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Annotated, Any

import annotated_types
import pydantic


def parser(annotation: Any) -> Callable[[str], Any]:
    """A ``type=`` function reading the text (stripped, lower-cased) as ``annotation``."""
    adapter = pydantic.TypeAdapter(annotation, config=pydantic.ConfigDict(allow_inf_nan=False))

    def parse(text: str) -> Any:
        try:
            return adapter.validate_python(text.strip().lower())
        except pydantic.ValidationError as e:
            wants = " or ".join(dict.fromkeys(er["msg"] for er in e.errors(include_url=False)))
            raise argparse.ArgumentTypeError(f"{wants}, got {text!r}") from None

    return parse


def number(kind: type = float, **bounds: float) -> Callable[[str], Any]:
    """A ``type=`` function parsing ``kind`` (``int`` or ``float``, finite) within ``bounds`` (``ge`` / ``gt`` /
    ``le`` / ``lt``)."""
    return parser(Annotated[kind, annotated_types.Interval(**bounds)])


finite_float = number(float)
positive_float = number(float, gt=0)
nonneg_float = number(float, ge=0)
fraction = number(float, ge=0, le=1)
positive_int = number(int, ge=1)
nonneg_int = number(int, ge=0)


class ArgumentParser(argparse.ArgumentParser):
    """``argparse.ArgumentParser`` whose ``type=float`` options reject ``nan`` and ``inf`` (what ``float()``
    accepts); subparsers inherit the class, so this holds for every subcommand."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.register("type", float, finite_float)
