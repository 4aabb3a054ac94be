"""A config dataclass's one typed schema: its annotations (a number's kind, a ``Literal``'s choices, ``None``
allowed or not) and an :class:`Arg` in the ``Annotated`` metadata of each command-line field. From it come the
argparse options (:func:`add_options`, parsed by :mod:`..cli_types`' ``number``), the check of a config's
values (:func:`check`) and the strict pydantic validator of a stored config (:func:`strict_validator`)::

    lr: Annotated[float, Arg("initial learning rate", "protocol", gt=0)] = 0.1
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import types
import typing
from dataclasses import dataclass
from typing import Annotated, Any, Literal

import pydantic
from typing_extensions import TypedDict

from ..cli_types import number, out_of_range

__all__ = ["Arg", "Field", "add_options", "arg_type", "check", "fields", "strict_validator"]


@dataclass(frozen=True)
class Arg:
    """A field's option: its ``help``, its argument ``group``, a number's bounds (``ge`` / ``gt`` / ``le`` /
    ``lt``, as pydantic's) and, for a bool that defaults to ``True``, the ``flag`` that turns it off (a bool
    that defaults to ``False`` is ``--field-name``, which turns it on)."""

    help: str
    group: str = "run"
    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None
    flag: str | None = None

    @property
    def bounds(self) -> dict[str, Any]:
        """:func:`..cli_types.out_of_range`'s keywords."""
        low, high = (self.ge if self.gt is None else self.gt), (self.le if self.lt is None else self.lt)
        return {"low": low, "high": high, "low_open": self.gt is not None, "high_open": self.lt is not None}


@dataclass(frozen=True)
class Field:
    """One field: its number ``kind`` (``int``, ``float``, ``None``), its ``Literal`` ``words``, whether ``None``
    is allowed, whether it is a bool, and its :class:`Arg` (``None``: not on the command line)."""

    name: str
    kind: type | None
    words: tuple
    optional: bool
    boolean: bool
    arg: Arg | None


def _parts(hint) -> list:
    """The alternatives of a type: ``Annotated`` stripped, unions flattened."""
    origin = typing.get_origin(hint)
    if origin is Annotated:
        return _parts(typing.get_args(hint)[0])
    if origin in (typing.Union, types.UnionType):
        return [p for a in typing.get_args(hint) for p in _parts(a)]
    return [hint]


@functools.cache
def fields(cls: type) -> dict[str, Field]:
    """The schema of dataclass ``cls``, field by field in declaration order."""
    hints = typing.get_type_hints(cls, include_extras=True)
    out = {}
    for f in dataclasses.fields(cls):
        hint, parts = hints[f.name], _parts(hints[f.name])
        meta = hint.__metadata__ if typing.get_origin(hint) is Annotated else ()
        out[f.name] = Field(
            f.name,
            kind=next((k for k in (int, float) if k in parts), None),
            words=tuple(w for p in parts if typing.get_origin(p) is Literal for w in typing.get_args(p)),
            optional=type(None) in parts,
            boolean=parts == [bool],
            arg=next((m for m in meta if isinstance(m, Arg)), None),
        )
    return out


def problem(f: Field, value: Any) -> str | None:
    """What is wrong with ``value`` for field ``f`` (not one of its ``Literal``'s choices; a number not finite,
    out of its bounds or not an integer), or ``None``. Strings and bools are pydantic's to type-check."""
    if (value is None and f.optional) or (isinstance(value, str) and value in f.words):
        return None
    if f.kind is None:
        return f"must be one of {f.words + ((None,) if f.optional else ())}, got {value!r}" if f.words else None
    wrong = out_of_range(value, **(f.arg.bounds if f.arg else {}))
    if wrong is None and f.kind is int and not isinstance(value, int):
        wrong = f"must be an integer, got {value!r}"
    return wrong


def check(config: Any) -> None:
    """``ValueError`` naming the first field of ``config`` whose value its schema does not allow."""
    for f in fields(type(config)).values():
        wrong = problem(f, getattr(config, f.name))
        if wrong:
            raise ValueError(f"{f.name} {wrong}")


def arg_type(f: Field):
    """The argparse ``type=`` of a numeric field: its kind within its bounds, or one of its ``Literal``'s words
    (``--eps auto``)."""
    parse = number(f.kind, **f.arg.bounds, name=f.name.replace("_", "-"))
    if not f.words:
        return parse

    def parse_or_word(text: str):
        if text.strip().lower() in f.words:
            return text.strip().lower()
        try:
            return parse(text)
        except argparse.ArgumentTypeError as e:
            if not str(e).startswith("expected "):  # a number, but not finite or out of bounds
                raise
            raise argparse.ArgumentTypeError(
                f"must be a number or {' or '.join(map(repr, f.words))}, got {text!r}"
            ) from None

    parse_or_word.__name__ = parse.__name__
    return parse_or_word


def add_options(cls: type, groups: dict[str, Any]) -> None:
    """An option for each field of ``cls`` with an :class:`Arg`, in ``groups[arg.group]``: a number parsed within
    its bounds, a ``Literal`` as choices, a bool as a flag. Only the options given reach the namespace
    (``argparse.SUPPRESS``); the help says the field's default."""
    defaults = cls()
    for f in fields(cls).values():
        if f.arg is None:
            continue
        default, help = getattr(defaults, f.name), f.arg.help
        if f.boolean:
            kw = {"action": "store_false" if default else "store_true"}
        else:
            kw = {"type": arg_type(f)} if f.kind else {"choices": f.words} if f.words else {}
            help += "" if default is None or "default" in help else f" (default {default})"
        flag = f.arg.flag or "--" + f.name.replace("_", "-")
        groups[f.arg.group].add_argument(flag, dest=f.name, default=argparse.SUPPRESS, help=help, **kw)


def strict_validator(cls: type) -> pydantic.TypeAdapter:
    """Pydantic's strict check of a dict of ``cls``'s fields against their annotations: ``"no"`` is not a bool,
    ``"2"`` not an int (a ``TypedDict``: pydantic checks a dataclass strictly only as an instance)."""
    hints = typing.get_type_hints(cls, include_extras=True)
    strict = pydantic.with_config(pydantic.ConfigDict(strict=True))
    return pydantic.TypeAdapter(strict(TypedDict(f"{cls.__name__}Fields", hints, total=False)))
